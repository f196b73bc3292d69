//! `dc-agent node`: the agent of one host. It registers with its cell, converges on the task
//! list the cell assigns, and keeps running that list whenever the cell is unreachable.

#[cfg(test)]
pub mod conformance;
pub mod executor;
pub mod health;
pub mod limits;
pub mod logs;
pub mod sim;
mod usage;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchyard_proto::MAX_MESSAGE_BYTES;
use switchyard_proto::node::v1 as nodepb;
use switchyard_proto::node::v1::node_link_client::NodeLinkClient;
use switchyard_tls::Role;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;

use crate::backoff::Backoff;
use crate::config::{NodeArgs, NodeConfig};
use crate::convert;
use crate::error::AgentError;
use crate::persist::{self, FORMAT_VERSION};
use crate::shutdown::{AbortOnDrop, Shutdown, os_signal};
use executor::{Executor, StatusBoard, TaskContext, TaskExecutor};

/// Time between SIGTERM and SIGKILL when a task is stopped.
pub const STOP_GRACE: Duration = Duration::from_secs(5);
/// Heartbeats wait this long after a task change so a burst of changes becomes one message.
const HEARTBEAT_DEBOUNCE: Duration = Duration::from_millis(100);
/// Messages queued towards the cell; the stream applies backpressure beyond that.
const OUTBOUND_QUEUE: usize = 8;
/// Retry interval for a `tasks.json` write that failed.
const PID_FILE_RETRY: Duration = Duration::from_secs(1);

/// `tasks.json` in the work directory: the processes this node runs and their specs, so that
/// the next start of this node adopts them (a crashed or upgraded node agent does not take its
/// tasks down) and an outside tool can clean up. Every pid is also the id of the task's
/// process group.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PidFile {
    pub version: u32,
    pub node_id: String,
    pub tasks: Vec<PidEntry>,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PidEntry {
    pub task_id: String,
    pub pid: i64,
    /// What the task runs with; entries without one are killed rather than adopted.
    #[serde(default)]
    pub spec: Option<nodepb::TaskSpec>,
}

pub fn pid_file_path(work_dir: &Path) -> PathBuf {
    work_dir.join("tasks.json")
}

#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("cannot connect: {0}")]
    Connect(#[from] crate::grpc::ConnectError),
    #[error("stream failed: {0}")]
    Stream(#[from] tonic::Status),
}

/// Runs a node until SIGTERM or SIGINT, then stops its tasks.
pub async fn run_node(args: NodeArgs) -> Result<(), AgentError> {
    run_node_until(args, os_signal()).await
}

/// Runs a node until `shutdown` completes, then stops every task (SIGTERM, SIGKILL after
/// [`STOP_GRACE`]) and returns. Errors only for problems found before the node is up.
pub async fn run_node_until(
    args: NodeArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AgentError> {
    let cfg = args.validate()?;
    let bundle = cfg.tls.load()?;
    let me = bundle.identity(&cfg.tls.cert)?;
    if me.role != Role::Node || me.name != format!("{}/{}", cfg.site, cfg.node_id) {
        return Err(AgentError::WrongIdentity(format!(
            "{} holds identity {me}; node {} of site {} needs a certificate for node:{}/{}",
            cfg.tls.cert.display(),
            cfg.node_id,
            cfg.site,
            cfg.site,
            cfg.node_id
        )));
    }
    let endpoint = crate::grpc::endpoint(&cfg.cell, &bundle)
        .map_err(|source| AgentError::TlsSetup { cert: cfg.tls.cert.clone(), source })?;
    let tasks_dir = cfg.work_dir.join("tasks");
    std::fs::create_dir_all(&tasks_dir).map_err(|source| AgentError::Io { path: tasks_dir.clone(), source })?;
    let work_dir =
        std::fs::canonicalize(&cfg.work_dir).map_err(|source| AgentError::Io { path: cfg.work_dir.clone(), source })?;
    if let Some(root) = &cfg.cgroup_root {
        limits::prepare_root(root).map_err(AgentError::Limits)?;
        tracing::info!(root = %root.display(), "tasks are confined to their requests with cgroup v2");
    }
    // A simulated node has no processes to adopt, and must not signal pids from a pid file.
    let adopted = if cfg.simulate { Vec::new() } else { recover_leftovers(&work_dir) };
    if let Some(addr) = cfg.metrics_listen {
        let handle = switchyard_telemetry::init_metrics().map_err(|e| AgentError::Metrics(e.to_string()))?;
        let bound = switchyard_telemetry::serve_metrics(addr, handle)
            .await
            .map_err(|e| AgentError::Metrics(format!("{e:#}")))?;
        tracing::info!(%bound, "metrics endpoint up");
    }

    let ctx = Arc::new(TaskContext {
        node_id: cfg.node_id.clone(),
        site: cfg.site.clone(),
        address: cfg.address,
        work_dir: work_dir.clone(),
        bin_dir: cfg.bin_dir.clone(),
        stop_grace: STOP_GRACE,
        cgroup_root: cfg.cgroup_root.clone(),
        max_open_files: cfg.max_open_files,
    });
    let executor: Arc<dyn TaskExecutor> = if cfg.simulate {
        Arc::new(sim::SimExecutor::new(sim::SimTiming::default(), cfg.bin_dir.clone()))
    } else {
        Arc::new(Executor::start_adopting(ctx, adopted))
    };
    let shutdown = Shutdown::from_future(shutdown);
    let log_keeper = (!cfg.simulate)
        .then(|| AbortOnDrop(tokio::spawn(log_loop(executor.board().clone(), work_dir.join("tasks"), cfg.logs))));
    let pid_writer = (!cfg.simulate).then(|| {
        AbortOnDrop(tokio::spawn(pid_file_loop(executor.board().clone(), work_dir.clone(), cfg.node_id.clone())))
    });
    tracing::info!(node = %cfg.node_id, site = %cfg.site, cell = %cfg.cell.url, simulated = cfg.simulate, "node started");

    tokio::select! {
        () = link_loop(&cfg, &endpoint, executor.as_ref(), &shutdown) => {}
        () = shutdown.wait() => {}
    }
    tracing::info!(node = %cfg.node_id, "stopping all tasks");
    executor.shutdown().await;
    drop(log_keeper);
    if pid_writer.is_some() {
        drop(pid_writer);
        let _ = write_pid_file(&work_dir, &cfg.node_id, &[]);
    }
    tracing::info!(node = %cfg.node_id, "node stopped");
    Ok(())
}

async fn link_loop(cfg: &NodeConfig, endpoint: &Endpoint, executor: &dyn TaskExecutor, shutdown: &Shutdown) {
    let applied_generation = Arc::new(AtomicU64::new(0));
    let mut backoff = Backoff::new(200, 5000);
    while !shutdown.is_set() {
        match attach_once(cfg, endpoint, executor, &applied_generation, &mut backoff).await {
            Ok(()) => tracing::warn!(cell = %cfg.cell.url, "cell closed the node link; tasks keep running"),
            Err(e) => tracing::warn!(cell = %cfg.cell.url, error = %e, "node link down; tasks keep running"),
        }
        metrics::gauge!("node_cell_connected").set(0.0);
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

fn register_message(cfg: &NodeConfig) -> nodepb::NodeMessage {
    let register = nodepb::NodeRegister {
        node_id: cfg.node_id.clone(),
        address: cfg.address.to_string(),
        resources: Some(convert::resources_to_proto(&cfg.capacity)),
        port_min: u32::from(cfg.port_min),
        port_max: u32::from(cfg.port_max),
        attributes: cfg.attributes.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    };
    nodepb::NodeMessage { body: Some(nodepb::node_message::Body::Register(register)) }
}

async fn attach_once(
    cfg: &NodeConfig,
    endpoint: &Endpoint,
    executor: &dyn TaskExecutor,
    applied_generation: &Arc<AtomicU64>,
    backoff: &mut Backoff,
) -> Result<(), LinkError> {
    let channel = crate::grpc::connect(endpoint).await?;
    let mut client = NodeLinkClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
    tx.send(register_message(cfg)).await.expect("the receiver is still held here");
    let _heartbeats = AbortOnDrop(tokio::spawn(heartbeat_loop(
        cfg.node_id.clone(),
        executor.board().clone(),
        applied_generation.clone(),
        tx,
        cfg.heartbeat,
    )));
    let mut inbound = client.attach(ReceiverStream::new(rx)).await?.into_inner();
    tracing::info!(cell = %cfg.cell.url, "node link up");
    metrics::gauge!("node_cell_connected").set(1.0);
    backoff.reset();
    // A restarted cell numbers generations from scratch, so the first assignment on a stream
    // is taken whatever its generation.
    let mut first = true;
    while let Some(msg) = inbound.message().await? {
        let Some(nodepb::cell_to_node::Body::Assignment(a)) = msg.body else { continue };
        if !first && a.generation <= applied_generation.load(Ordering::Acquire) {
            tracing::debug!(generation = a.generation, "ignoring an assignment older than the applied one");
            continue;
        }
        if let Err(problems) = convert::check_assignment(&a) {
            tracing::warn!(generation = a.generation, %problems, "assignment rejected; keeping the current tasks");
            metrics::counter!("node_assignments_rejected_total").increment(1);
            continue;
        }
        first = false;
        tracing::info!(generation = a.generation, epoch = a.epoch, tasks = a.tasks.len(), "assignment received");
        executor.apply(a.tasks).await;
        applied_generation.store(a.generation, Ordering::Release);
        executor.board().touch();
    }
    Ok(())
}

async fn heartbeat_loop(
    node_id: String,
    board: Arc<StatusBoard>,
    applied_generation: Arc<AtomicU64>,
    tx: mpsc::Sender<nodepb::NodeMessage>,
    interval: Duration,
) {
    let mut changes = board.subscribe();
    loop {
        changes.borrow_and_update();
        let tasks = board.snapshot();
        metrics::gauge!("node_tasks").set(tasks.len() as f64);
        let usage = board
            .pids()
            .into_iter()
            .filter_map(|(task_id, pid)| {
                let (cpu_seconds, rss_bytes) = usage::of_process(pid)?;
                Some(nodepb::TaskUsage { task_id, cpu_seconds, rss_bytes })
            })
            .collect();
        let hb = nodepb::NodeHeartbeat {
            node_id: node_id.clone(),
            tasks,
            applied_generation: applied_generation.load(Ordering::Acquire),
            usage,
        };
        if tx.send(nodepb::NodeMessage { body: Some(nodepb::node_message::Body::Heartbeat(hb)) }).await.is_err() {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            r = changes.changed() => {
                if r.is_err() {
                    return;
                }
                tokio::time::sleep(HEARTBEAT_DEBOUNCE).await;
            }
        }
    }
}

fn write_pid_file(work_dir: &Path, node_id: &str, running: &[(nodepb::TaskSpec, i64)]) -> bool {
    let file = PidFile {
        version: FORMAT_VERSION,
        node_id: node_id.to_string(),
        tasks: running
            .iter()
            .map(|(spec, pid)| PidEntry { task_id: spec.task_id.clone(), pid: *pid, spec: Some(spec.clone()) })
            .collect(),
    };
    match persist::write_json_atomic(&pid_file_path(work_dir), &file) {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(error = %e, dir = %work_dir.display(), "cannot write tasks.json; retrying");
            false
        }
    }
}

async fn pid_file_loop(board: Arc<StatusBoard>, work_dir: PathBuf, node_id: String) {
    let mut changes = board.subscribe();
    let mut written: Option<Vec<(nodepb::TaskSpec, i64)>> = None;
    loop {
        changes.borrow_and_update();
        let pids = board.running();
        if written.as_ref() != Some(&pids) {
            let (dir, id, p) = (work_dir.clone(), node_id.clone(), pids.clone());
            let ok = tokio::task::spawn_blocking(move || write_pid_file(&dir, &id, &p)).await.unwrap_or(false);
            if ok {
                written = Some(pids);
            } else {
                // Not durable: a crash now would orphan the tasks started since; try again soon.
                tokio::time::sleep(PID_FILE_RETRY).await;
                continue;
            }
        }
        if changes.changed().await.is_err() {
            return;
        }
        tokio::time::sleep(HEARTBEAT_DEBOUNCE).await;
    }
}

/// Finds the task processes a previous run of this node left running (it crashed, was killed
/// with SIGKILL, or is being upgraded) and returns those to adopt. A pid is only trusted while
/// its working directory is still the task's directory, so a recycled pid of an unrelated
/// process is never adopted or signalled; a trusted process without a recorded spec is killed.
fn recover_leftovers(work_dir: &Path) -> Vec<(nodepb::TaskSpec, u32)> {
    let path = pid_file_path(work_dir);
    let file = match persist::read_json::<PidFile>(&path) {
        Ok(Some(f)) => f,
        Ok(None) => return Vec::new(),
        Err(e) => {
            tracing::warn!(error = %e, "ignoring unreadable tasks.json");
            return Vec::new();
        }
    };
    let mut adopt = Vec::new();
    let mut killed = BTreeMap::new();
    for entry in file.tasks {
        let Ok(raw) = i32::try_from(entry.pid) else { continue };
        let Ok(cwd) = std::fs::read_link(format!("/proc/{raw}/cwd")) else { continue };
        if cwd != work_dir.join("tasks").join(&entry.task_id) {
            continue;
        }
        match entry.spec {
            Some(spec) if spec.task_id == entry.task_id => adopt.push((spec, raw.unsigned_abs())),
            _ => {
                let pid = nix::unistd::Pid::from_raw(raw);
                if nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL).is_err() {
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                }
                killed.insert(entry.task_id, raw);
            }
        }
    }
    if !killed.is_empty() {
        tracing::warn!(?killed, "killed task processes left behind without a spec");
    }
    adopt
}

/// How often task logs are checked for rotation.
const LOG_CHECK: Duration = Duration::from_secs(2);

async fn log_loop(board: Arc<StatusBoard>, tasks_dir: PathBuf, policy: logs::LogPolicy) {
    loop {
        tokio::time::sleep(LOG_CHECK).await;
        let running: Vec<String> = board.snapshot().into_iter().map(|s| s.task_id).collect();
        let dir = tasks_dir.clone();
        let done =
            tokio::task::spawn_blocking(move || logs::maintain(&dir, &running, &policy, std::time::SystemTime::now()))
                .await;
        if let Ok((rotated, removed)) = done
            && rotated + removed > 0
        {
            tracing::info!(rotated, removed, "task logs maintained");
            metrics::counter!("node_task_logs_rotated_total").increment(rotated as u64);
        }
    }
}
