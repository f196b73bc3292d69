//! Runs the node's tasks as real OS processes. One supervisor per task launches it, restarts it
//! with backoff when it exits or fails its health check, and stops it with SIGTERM then SIGKILL.
//! An actor owns the set of supervisors so that assignments, exits and shutdown never race.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::future::Future;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use switchyard_proto::common::v1::TaskState;
use switchyard_proto::node::v1 as nodepb;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::health::http_check;
use crate::backoff::Backoff;
use crate::convert;

/// A task that stays up this long has its restart backoff reset.
const STABLE_AFTER: Duration = Duration::from_secs(10);
const RESTART_BACKOFF_INITIAL_MS: u64 = 500;
const RESTART_BACKOFF_MAX_MS: u64 = 30_000;
/// How often finished supervisors are cleaned up.
const REAP_INTERVAL: Duration = Duration::from_millis(500);
/// Commands queued towards the executor actor.
const COMMAND_QUEUE: usize = 16;

/// What every task of this node shares.
#[derive(Clone, Debug)]
pub struct TaskContext {
    pub node_id: String,
    pub site: String,
    pub address: IpAddr,
    /// Absolute; tasks live in `<work_dir>/tasks/<task_id>/`.
    pub work_dir: PathBuf,
    pub bin_dir: Option<PathBuf>,
    /// Time between SIGTERM and SIGKILL.
    pub stop_grace: Duration,
    /// A prepared cgroup v2 root: each task is confined to its requests there.
    pub cgroup_root: Option<PathBuf>,
    /// RLIMIT_NOFILE of every task; `None` keeps the node's own.
    pub max_open_files: Option<u64>,
}

impl TaskContext {
    pub fn task_dir(&self, task_id: &str) -> PathBuf {
        self.work_dir.join("tasks").join(task_id)
    }
}

/// Latest status of every task, read by heartbeats and the pid file writer.
pub struct StatusBoard {
    tasks: Mutex<BTreeMap<String, nodepb::TaskStatus>>,
    /// The spec each reported task runs with, persisted so a restarted node can adopt it.
    specs: Mutex<BTreeMap<String, nodepb::TaskSpec>>,
    changed: watch::Sender<u64>,
}

impl StatusBoard {
    pub(crate) fn new() -> Self {
        Self { tasks: Mutex::new(BTreeMap::new()), specs: Mutex::new(BTreeMap::new()), changed: watch::channel(0).0 }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, nodepb::TaskStatus>> {
        self.tasks.lock().expect("status board mutex poisoned by a panic")
    }

    fn poke(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    pub(crate) fn update(&self, spec: &nodepb::TaskSpec, f: impl FnOnce(&mut nodepb::TaskStatus)) {
        self.specs.lock().expect("status board mutex poisoned by a panic").insert(spec.task_id.clone(), spec.clone());
        let changed = {
            let mut tasks = self.lock();
            let entry = tasks.entry(spec.task_id.clone()).or_insert_with(|| nodepb::TaskStatus {
                task_id: spec.task_id.clone(),
                group: spec.group.clone(),
                app: spec.app.clone(),
                port: spec.port,
                ..Default::default()
            });
            let before = entry.clone();
            entry.group.clone_from(&spec.group);
            entry.app.clone_from(&spec.app);
            entry.port = spec.port;
            entry.version.clone_from(&spec.version);
            f(entry);
            *entry != before
        };
        if changed {
            self.poke();
        }
    }

    pub(crate) fn remove(&self, task_id: &str) {
        self.specs.lock().expect("status board mutex poisoned by a panic").remove(task_id);
        if self.lock().remove(task_id).is_some() {
            self.poke();
        }
    }

    pub fn snapshot(&self) -> Vec<nodepb::TaskStatus> {
        self.lock().values().cloned().collect()
    }

    /// `(task_id, pid)` of every task with a live process.
    pub fn pids(&self) -> Vec<(String, i64)> {
        self.lock().values().filter(|s| s.pid > 0).map(|s| (s.task_id.clone(), s.pid)).collect()
    }

    /// `(spec, pid)` of every task with a live process.
    pub fn running(&self) -> Vec<(nodepb::TaskSpec, i64)> {
        let specs = self.specs.lock().expect("status board mutex poisoned by a panic");
        self.lock()
            .values()
            .filter(|s| s.pid > 0)
            .filter_map(|s| specs.get(&s.task_id).map(|spec| (spec.clone(), s.pid)))
            .collect()
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Asks watchers to look again (e.g. the applied generation changed).
    pub fn touch(&self) {
        self.poke();
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Control {
    Run(Box<nodepb::TaskSpec>),
    Stop,
}

enum ExecCommand {
    Apply(Vec<nodepb::TaskSpec>),
    Shutdown(oneshot::Sender<()>),
}

/// Runs a node's tasks. Two implementations: [`Executor`] (real OS processes) and
/// [`super::sim::SimExecutor`] (no processes, for scale tests); [`super::conformance`] holds
/// the one battery both pass.
pub trait TaskExecutor: Send + Sync {
    /// Latest status of every task.
    fn board(&self) -> &Arc<StatusBoard>;
    /// Converges on exactly `tasks`: starts new ones, stops the rest. Idempotent.
    fn apply(&self, tasks: Vec<nodepb::TaskSpec>) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + '_>>;
    /// Stops every task and waits for them.
    fn shutdown(&self) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

impl TaskExecutor for Executor {
    fn board(&self) -> &Arc<StatusBoard> {
        Executor::board(self)
    }

    fn apply(&self, tasks: Vec<nodepb::TaskSpec>) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(Executor::apply(self, tasks))
    }

    fn shutdown(&self) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(Executor::shutdown(self))
    }
}

/// Handle to the executor actor.
pub struct Executor {
    tx: mpsc::Sender<ExecCommand>,
    board: Arc<StatusBoard>,
}

struct Supervised {
    ctl: watch::Sender<Control>,
    handle: JoinHandle<()>,
}

impl Executor {
    pub fn start(ctx: Arc<TaskContext>) -> Self {
        Self::start_adopting(ctx, Vec::new())
    }

    /// Starts the executor supervising `adopted` processes (left running by a previous run of
    /// this node) as if it had launched them; the next assignment decides whether they stay.
    pub fn start_adopting(ctx: Arc<TaskContext>, adopted: Vec<(nodepb::TaskSpec, u32)>) -> Self {
        let board = Arc::new(StatusBoard::new());
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let tasks = adopted
            .into_iter()
            .map(|(spec, pid)| {
                tracing::info!(task = %spec.task_id, pid, "adopting a running task");
                (spec.task_id.clone(), spawn_supervisor(&ctx, &board, spec, Some(pid)))
            })
            .collect();
        tokio::spawn(actor(ctx, board.clone(), rx, tasks));
        Self { tx, board }
    }

    pub fn board(&self) -> &Arc<StatusBoard> {
        &self.board
    }

    /// Converges on exactly `tasks`: starts new ones, restarts changed ones, stops the rest.
    pub async fn apply(&self, tasks: Vec<nodepb::TaskSpec>) {
        if self.tx.send(ExecCommand::Apply(tasks)).await.is_err() {
            tracing::error!("executor is gone; assignment dropped");
        }
    }

    /// Stops every task (SIGTERM, then SIGKILL after the grace period) and waits for them.
    pub async fn shutdown(&self) {
        let (done_tx, done_rx) = oneshot::channel();
        if self.tx.send(ExecCommand::Shutdown(done_tx)).await.is_ok() {
            let _ = done_rx.await;
        }
    }
}

async fn actor(
    ctx: Arc<TaskContext>,
    board: Arc<StatusBoard>,
    mut rx: mpsc::Receiver<ExecCommand>,
    mut tasks: BTreeMap<String, Supervised>,
) {
    let mut reap = tokio::time::interval(REAP_INTERVAL);
    reap.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            cmd = rx.recv() => match cmd {
                Some(ExecCommand::Apply(specs)) => apply(&ctx, &board, &mut tasks, specs),
                Some(ExecCommand::Shutdown(done)) => {
                    stop_all(tasks).await;
                    let _ = done.send(());
                    return;
                }
                None => {
                    stop_all(tasks).await;
                    return;
                }
            },
            _ = reap.tick() => reap_finished(&ctx, &board, &mut tasks),
        }
    }
}

fn spawn_supervisor(
    ctx: &Arc<TaskContext>,
    board: &Arc<StatusBoard>,
    spec: nodepb::TaskSpec,
    adopted: Option<u32>,
) -> Supervised {
    let (ctl, rx) = watch::channel(Control::Run(Box::new(spec)));
    let handle = tokio::spawn(supervise(ctx.clone(), board.clone(), rx, adopted));
    Supervised { ctl, handle }
}

fn apply(
    ctx: &Arc<TaskContext>,
    board: &Arc<StatusBoard>,
    tasks: &mut BTreeMap<String, Supervised>,
    specs: Vec<nodepb::TaskSpec>,
) {
    let wanted: BTreeMap<String, nodepb::TaskSpec> = specs.into_iter().map(|s| (s.task_id.clone(), s)).collect();
    for (id, t) in tasks.iter() {
        if !wanted.contains_key(id) {
            t.ctl.send_if_modified(|c| {
                let was_running = *c != Control::Stop;
                if was_running {
                    tracing::info!(task = %id, "task no longer assigned; stopping");
                    *c = Control::Stop;
                }
                was_running
            });
        }
    }
    for (id, spec) in wanted {
        match tasks.get(&id) {
            Some(t) if !t.handle.is_finished() => {
                t.ctl.send_if_modified(|c| {
                    if matches!(c, Control::Run(current) if **current == spec) {
                        return false;
                    }
                    tracing::info!(task = %id, "task spec changed or task reassigned");
                    *c = Control::Run(Box::new(spec));
                    true
                });
            }
            _ => {
                tracing::info!(task = %id, command = %spec.command, port = spec.port, "starting task");
                tasks.insert(id, spawn_supervisor(ctx, board, spec, None));
            }
        }
    }
}

/// Drops supervisors that stopped; one that ended while its task is still wanted (it lost a
/// race with a re-assignment, or panicked) is started again.
fn reap_finished(ctx: &Arc<TaskContext>, board: &Arc<StatusBoard>, tasks: &mut BTreeMap<String, Supervised>) {
    let finished: Vec<String> =
        tasks.iter().filter(|(_, t)| t.handle.is_finished()).map(|(id, _)| id.clone()).collect();
    for id in finished {
        let Some(t) = tasks.remove(&id) else { continue };
        if let Control::Run(spec) = t.ctl.borrow().clone() {
            tracing::warn!(task = %id, "supervisor ended while its task is assigned; restarting it");
            tasks.insert(id, spawn_supervisor(ctx, board, *spec, None));
        }
    }
}

async fn stop_all(tasks: BTreeMap<String, Supervised>) {
    for t in tasks.values() {
        t.ctl.send_replace(Control::Stop);
    }
    for (id, t) in tasks {
        if let Err(e) = t.handle.await {
            tracing::error!(task = %id, error = %e, "task supervisor failed while stopping");
        }
    }
}

/// How one run of a task ended.
enum Outcome {
    /// The process exited by itself.
    Exited { ran: Duration, message: String },
    /// Killed after failing its health check too often.
    Unhealthy { message: String },
    /// Could not be launched.
    Failed { message: String },
    /// The assignment changed, or the executor is gone (`closed`); the process is stopped.
    Control { closed: bool },
}

/// The next thing a supervisor must do according to its control channel.
fn current_control(ctl: &mut watch::Receiver<Control>, closed: bool) -> Control {
    if closed { Control::Stop } else { ctl.borrow_and_update().clone() }
}

async fn supervise(
    ctx: Arc<TaskContext>,
    board: Arc<StatusBoard>,
    mut ctl: watch::Receiver<Control>,
    mut adopted: Option<u32>,
) {
    let Control::Run(spec) = ctl.borrow_and_update().clone() else { return };
    let mut spec = *spec;
    let task_id = spec.task_id.clone();
    let mut restarts: u32 = 0;
    let mut backoff = Backoff::new(RESTART_BACKOFF_INITIAL_MS, RESTART_BACKOFF_MAX_MS);
    loop {
        let process = match adopted.take() {
            Some(pid) => Ok(Process::Adopted { pid }),
            None => launch(&ctx, &spec).map(Process::Child),
        };
        let outcome = match process {
            Ok(process) => watch_child(&ctx, &board, &spec, process, &mut ctl).await,
            Err(message) => Outcome::Failed { message },
        };
        let mut closed = false;
        let (failed, message) = match outcome {
            Outcome::Control { closed: gone } => {
                closed = gone;
                (false, None)
            }
            Outcome::Exited { ran, message } => {
                if ran >= STABLE_AFTER {
                    backoff.reset();
                }
                (false, Some(message))
            }
            Outcome::Unhealthy { message } => (false, Some(message)),
            Outcome::Failed { message } => (true, Some(message)),
        };
        if let Some(message) = message {
            restarts = restarts.saturating_add(1);
            metrics::counter!("node_task_restarts_total").increment(1);
            let delay = backoff.next_delay();
            tracing::warn!(task = %task_id, %message, retry_in_ms = delay.as_millis() as u64, "task down");
            board.update(&spec, |s| {
                s.pid = 0;
                s.healthy = false;
                s.state = if failed { TaskState::Failed } else { TaskState::Backoff } as i32;
                s.restarts = restarts;
                s.message = format!("{message}; retrying in {} ms", delay.as_millis());
            });
            tokio::select! {
                () = tokio::time::sleep(delay) => continue,
                r = ctl.changed() => closed = r.is_err(),
            }
        }
        match current_control(&mut ctl, closed) {
            Control::Stop => break,
            Control::Run(next) => {
                if *next != spec {
                    backoff.reset();
                    spec = *next;
                }
            }
        }
    }
    board.remove(&task_id);
    if let Some(root) = &ctx.cgroup_root {
        super::limits::release(root, &task_id);
    }
    tracing::info!(task = %task_id, "task stopped");
}

/// Finds the program: an absolute path as is, a bare name in `bin_dir` first, then in `path`.
pub fn resolve_command(command: &str, bin_dir: Option<&Path>, path: Option<&OsStr>) -> Result<PathBuf, String> {
    let as_path = Path::new(command);
    if as_path.is_absolute() {
        return if is_executable(as_path) {
            Ok(as_path.to_path_buf())
        } else {
            Err(format!("command {command} does not exist or is not executable"))
        };
    }
    if command.contains('/') {
        return Err(format!("command {command:?} must be an absolute path or a bare program name"));
    }
    let bin = bin_dir.map(|d| d.join(command)).filter(|p| is_executable(p));
    let found =
        bin.or_else(|| path.and_then(|p| std::env::split_paths(p).map(|d| d.join(command)).find(|c| is_executable(c))));
    found.ok_or_else(|| match bin_dir {
        Some(d) => format!("command {command:?} not found in --bin-dir {} or PATH", d.display()),
        None => format!("command {command:?} not found in PATH"),
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn launch(ctx: &TaskContext, spec: &nodepb::TaskSpec) -> Result<Child, String> {
    let program = resolve_command(&spec.command, ctx.bin_dir.as_deref(), std::env::var_os("PATH").as_deref())?;
    let dir = ctx.task_dir(&spec.task_id);
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let log = |name: &str| {
        let path = dir.join(name);
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))
    };
    let (stdout, stderr) = (log("stdout.log")?, log("stderr.log")?);
    let mut cmd = Command::new(&program);
    cmd.args(&spec.args)
        .envs(&spec.env)
        // The node's own view wins over whatever the spec says for these.
        .env("PORT", spec.port.to_string())
        .env("HOST", ctx.address.to_string())
        .env("SWITCHYARD_SITE", &ctx.site)
        .env("SWITCHYARD_NODE", &ctx.node_id)
        .env("SWITCHYARD_GROUP", &spec.group)
        .env("SWITCHYARD_APP", &spec.app)
        .env("SWITCHYARD_TASK_ID", &spec.task_id)
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr))
        // Its own process group, so stopping the task also stops whatever it spawned.
        .process_group(0)
        // If the node's runtime goes away without stopping tasks (a panic), do not leak them.
        .kill_on_drop(true);
    // Never run a task unconfined on a node told to confine it: the child joins its cgroup
    // before it executes anything, or the launch fails.
    let procs = match &ctx.cgroup_root {
        Some(root) => Some(super::limits::prepare_task(root, spec)?),
        None => None,
    };
    confine_before_exec(&mut cmd, procs.as_ref().map(std::os::fd::AsRawFd::as_raw_fd), ctx.max_open_files);
    let child = cmd.spawn().map_err(|e| format!("cannot start {}: {e}", program.display()));
    drop(procs);
    child
}

/// The one `unsafe` in the workspace: `pre_exec` runs a closure in the forked child.
// SAFETY: the closure only calls write(2) on a descriptor the parent keeps open until spawn
// returns, and setrlimit(2); both are async-signal-safe, and it allocates nothing and takes no
// lock, so it is sound between fork and exec.
#[allow(unsafe_code)]
fn confine_before_exec(cmd: &mut Command, cgroup_procs: Option<std::os::fd::RawFd>, max_open_files: Option<u64>) {
    unsafe {
        cmd.pre_exec(move || {
            let fd = cgroup_procs.map(|fd| std::os::fd::BorrowedFd::borrow_raw(fd));
            super::limits::enter_child(fd, max_open_files)
        });
    }
}

/// Signals the task's process group, falling back to the process alone.
/// A task's process: one this node launched, or one a previous run of the node launched and
/// this run adopted (not our child, so its exit is noticed by polling `/proc`).
enum Process {
    Child(Child),
    Adopted { pid: u32 },
}

/// How often an adopted process is checked for having exited.
const ADOPTED_POLL: Duration = Duration::from_millis(250);

impl Process {
    fn id(&self) -> Option<u32> {
        match self {
            Process::Child(c) => c.id(),
            Process::Adopted { pid } => Some(*pid),
        }
    }

    /// Waits for the process to exit; describes how it ended.
    async fn wait(&mut self) -> String {
        match self {
            Process::Child(c) => match c.wait().await {
                Ok(s) => format!("process exited ({s})"),
                Err(e) => format!("lost track of the process: {e}"),
            },
            Process::Adopted { pid } => {
                while process_alive(*pid) {
                    tokio::time::sleep(ADOPTED_POLL).await;
                }
                "adopted process exited".to_string()
            }
        }
    }
}

/// Whether `pid` is a live process (a zombie counts as gone).
fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()) != Some("Z"),
        Err(_) => false,
    }
}

fn signal_task(pid: u32, signal: Signal) {
    let Ok(raw) = i32::try_from(pid) else { return };
    let pid = Pid::from_raw(raw);
    if killpg(pid, signal).is_err() {
        let _ = kill(pid, signal);
    }
}

async fn terminate(child: &mut Process, board: &StatusBoard, spec: &nodepb::TaskSpec, grace: Duration) {
    let Some(pid) = child.id() else { return };
    board.update(spec, |s| {
        s.state = TaskState::Stopping as i32;
        s.healthy = false;
    });
    signal_task(pid, Signal::SIGTERM);
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        tracing::warn!(task = %spec.task_id, pid, grace_ms = grace.as_millis() as u64, "task ignored SIGTERM; killing it");
        signal_task(pid, Signal::SIGKILL);
        child.wait().await;
    }
    kill_group_leftovers(pid);
}

/// Kills whatever is left of a task's process group once its leader is gone (children that
/// trapped SIGTERM, or outlived a leader that exited by itself), so none of them keeps the
/// task's port and the replacement can start. ESRCH (nothing left) is the normal case.
fn kill_group_leftovers(pid: u32) {
    if let Ok(raw) = i32::try_from(pid) {
        let _ = killpg(Pid::from_raw(raw), Signal::SIGKILL);
    }
}

/// What a health or readiness check does.
enum Probe {
    Http(String),
    Tcp,
    Command(Vec<String>),
}

impl Probe {
    /// `None` when the spec asks for no check.
    fn of(h: &crate::model::HealthSpec) -> Option<Probe> {
        match h.protocol.as_str() {
            "tcp" => Some(Probe::Tcp),
            "command" => Some(Probe::Command(h.command.clone())),
            "http" => Some(Probe::Http(if h.http_path.is_empty() { "/".into() } else { h.http_path.clone() })),
            _ if h.http_path.is_empty() => None,
            _ => Some(Probe::Http(h.http_path.clone())),
        }
    }
}

async fn run_probe(ctx: &TaskContext, spec: &nodepb::TaskSpec, probe: &Probe, timeout: Duration) -> Result<(), String> {
    let port = u16::try_from(spec.port).unwrap_or(0);
    match probe {
        Probe::Http(path) => http_check(ctx.address, port, path, timeout).await.map_err(|e| e.to_string()),
        Probe::Tcp => super::health::tcp_check(ctx.address, port, timeout).await.map_err(|e| e.to_string()),
        Probe::Command(argv) => {
            let Some((program, args)) = argv.split_first() else { return Err("empty command".into()) };
            let program = resolve_command(program, ctx.bin_dir.as_deref(), std::env::var_os("PATH").as_deref())?;
            let mut env: std::collections::HashMap<String, String> =
                spec.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            env.insert("PORT".into(), spec.port.to_string());
            env.insert("HOST".into(), ctx.address.to_string());
            super::health::command_check(&program, args, &env, &ctx.task_dir(&spec.task_id), timeout).await
        }
    }
}

async fn watch_child(
    ctx: &TaskContext,
    board: &StatusBoard,
    spec: &nodepb::TaskSpec,
    mut child: Process,
    ctl: &mut watch::Receiver<Control>,
) -> Outcome {
    let pid = child.id().map_or(0, i64::from);
    let started = Instant::now();
    let health = convert::health_from_proto(spec.health.as_ref()).effective();
    let probe = Probe::of(&health);
    let checked = probe.is_some();
    let readiness = spec.readiness.as_ref().map(|r| convert::health_from_proto(Some(r)).effective());
    let ready_probe = readiness.as_ref().and_then(Probe::of);
    let ready_every =
        readiness.as_ref().map_or(Duration::from_secs(1), |r| Duration::from_millis(u64::from(r.interval_ms)));
    let ready_timeout =
        readiness.as_ref().map_or(Duration::from_secs(1), |r| Duration::from_millis(u64::from(r.timeout_ms)));
    // An adopted process was running (and ready) before this node agent restarted; checking
    // again would take it out of its load balancer for nothing.
    let mut ready = ready_probe.is_none() || matches!(child, Process::Adopted { .. });
    let mut next_ready_check = started;
    let interval = Duration::from_millis(u64::from(health.interval_ms));
    let timeout = Duration::from_millis(u64::from(health.timeout_ms));
    let grace = Duration::from_millis(u64::from(health.grace_ms));
    tracing::info!(task = %spec.task_id, pid, "task process started");
    board.update(spec, |s| {
        s.pid = pid;
        s.not_ready = !ready;
        s.healthy = !checked;
        s.state = if checked { TaskState::Starting } else { TaskState::Running } as i32;
        s.message = if checked { "waiting for the first passing health check".into() } else { "running".into() };
    });
    let mut failures: u32 = 0;
    let mut ever_healthy = false;
    let mut next_check = started + interval;
    loop {
        tokio::select! {
            message = child.wait() => {
                if let Ok(leader) = u32::try_from(pid) {
                    kill_group_leftovers(leader);
                }
                return Outcome::Exited { ran: started.elapsed(), message };
            }
            r = ctl.changed() => {
                terminate(&mut child, board, spec, ctx.stop_grace).await;
                return Outcome::Control { closed: r.is_err() };
            }
            () = tokio::time::sleep_until(next_ready_check), if !ready => {
                next_ready_check = Instant::now() + ready_every;
                let Some(p) = &ready_probe else { continue };
                match run_probe(ctx, spec, p, ready_timeout).await {
                    Ok(()) => {
                        ready = true;
                        tracing::info!(task = %spec.task_id, "task ready");
                        board.update(spec, |s| s.not_ready = false);
                    }
                    Err(e) => tracing::debug!(task = %spec.task_id, error = %e, "readiness check failed"),
                }
            }
            () = tokio::time::sleep_until(next_check), if checked => {
                next_check = Instant::now() + interval;
                let Some(p) = &probe else { continue };
                match run_probe(ctx, spec, p, timeout).await {
                    Ok(()) => {
                        failures = 0;
                        ever_healthy = true;
                        board.update(spec, |s| {
                            s.healthy = true;
                            s.state = TaskState::Running as i32;
                            s.message = "healthy".into();
                        });
                    }
                    Err(e) if !ever_healthy && started.elapsed() < grace => {
                        tracing::debug!(task = %spec.task_id, error = %e, "health check failed inside the grace period");
                    }
                    Err(e) => {
                        failures += 1;
                        metrics::counter!("node_health_check_failures_total").increment(1);
                        if failures >= health.max_failures {
                            let message = format!("killed after {failures} consecutive failed health checks (last: {e})");
                            board.update(spec, |s| {
                                s.healthy = false;
                                s.message.clone_from(&message);
                            });
                            terminate(&mut child, board, spec, ctx.stop_grace).await;
                            return Outcome::Unhealthy { message };
                        }
                        board.update(spec, |s| {
                            s.message = format!("health check failed ({failures}/{}): {e}", health.max_failures);
                        });
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[tokio::test]
    async fn tasks_run_with_rlimits_and_in_their_cgroup_when_one_is_configured() {
        let dir = tempfile::tempdir().unwrap();
        let cgroups = tempfile::tempdir().unwrap();
        std::fs::write(cgroups.path().join("cgroup.controllers"), "cpu memory\n").unwrap();
        crate::node::limits::prepare_root(cgroups.path()).unwrap();
        let ctx =
            Arc::new(TaskContext { cgroup_root: Some(cgroups.path().to_path_buf()), ..(*context(dir.path())).clone() });
        let exec = Executor::start(ctx);
        let mut task =
            spec("g.limits.1", "sh", &["-c", "ulimit -n > limits.txt; ulimit -c >> limits.txt; exec sleep 60"]);
        task.resources = Some(switchyard_proto::common::v1::Resources { cpu_millis: 500, mem_mib: 32, disk_mib: 0 });
        exec.apply(vec![task]).await;
        wait_for(exec.board(), "the task running", |s| s.iter().any(|t| t.pid > 0)).await;
        let pid = exec.board().pids()[0].1;
        let limits = dir.path().join("tasks/g.limits.1/limits.txt");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read_to_string(&limits).map_or(true, |s| s.lines().count() < 2) {
            assert!(Instant::now() < deadline, "the task never wrote its limits");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(std::fs::read_to_string(&limits).unwrap(), "1024\n0\n", "RLIMIT_NOFILE and no core dumps");
        let cg = cgroups.path().join("g.limits.1");
        // The child wrote "0" (itself) before exec; the kernel turns that into its pid.
        assert_eq!(std::fs::read_to_string(cg.join("cgroup.procs")).unwrap(), "0");
        assert!(pid > 0);
        assert_eq!(std::fs::read_to_string(cg.join("memory.max")).unwrap(), (32 * 1024 * 1024).to_string());
        assert_eq!(std::fs::read_to_string(cg.join("cpu.max")).unwrap(), "50000 100000");
        exec.shutdown().await;
    }

    #[tokio::test]
    async fn tcp_health_and_command_readiness_checks_drive_healthy_and_ready() {
        let dir = tempfile::tempdir().unwrap();
        let exec = Executor::start(context(dir.path()));
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        // Listens at once, but is ready only once it has written its flag (a cache warm-up).
        let mut task = spec(
            "g.warm.1",
            "python3",
            &[
                "-c",
                "import http.server,os,time,threading\n\
s=http.server.HTTPServer(('127.0.0.1',int(os.environ['PORT'])),http.server.BaseHTTPRequestHandler)\n\
threading.Thread(target=s.serve_forever,daemon=True).start()\n\
time.sleep(1.5); open('ready.flag','w').close(); time.sleep(600)",
            ],
        );
        task.port = u32::from(port);
        task.health = Some(switchyard_proto::common::v1::HealthCheck {
            protocol: "tcp".into(),
            interval_ms: 100,
            timeout_ms: 500,
            grace_ms: 5000,
            max_failures: 3,
            ..Default::default()
        });
        task.readiness = Some(switchyard_proto::common::v1::HealthCheck {
            protocol: "command".into(),
            command: vec!["sh".into(), "-c".into(), "test -f ready.flag".into()],
            interval_ms: 100,
            timeout_ms: 1000,
            ..Default::default()
        });
        exec.apply(vec![task]).await;
        wait_for(exec.board(), "healthy over TCP but not ready", |s| s.len() == 1 && s[0].healthy && s[0].not_ready)
            .await;
        wait_for(exec.board(), "ready once warmed up", |s| s.len() == 1 && s[0].healthy && !s[0].not_ready).await;
        exec.shutdown().await;
    }

    #[tokio::test]
    async fn the_process_executor_passes_the_conformance_battery() {
        crate::node::conformance::battery(|dir| {
            let executor = Arc::new(Executor::start(context(dir)));
            let board = executor.board().clone();
            let crash = Box::new(move |id: &str| {
                let pid = board.pids().into_iter().find(|(t, _)| t == id).map(|(_, p)| p).expect("task has a pid");
                signal_task(u32::try_from(pid).expect("pid"), Signal::SIGKILL);
            }) as Box<dyn Fn(&str) + Send + Sync>;
            crate::node::conformance::Subject { executor, crash, real_processes: true }
        })
        .await;
    }

    fn spec(id: &str, command: &str, args: &[&str]) -> nodepb::TaskSpec {
        nodepb::TaskSpec {
            task_id: id.into(),
            group: "g".into(),
            app: "a".into(),
            command: command.into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            port: 1,
            ..Default::default()
        }
    }

    fn context(dir: &Path) -> Arc<TaskContext> {
        Arc::new(TaskContext {
            node_id: "n1".into(),
            site: "site-a".into(),
            address: "127.0.0.1".parse().unwrap(),
            work_dir: dir.to_path_buf(),
            bin_dir: None,
            stop_grace: Duration::from_millis(500),
            cgroup_root: None,
            max_open_files: Some(1024),
        })
    }

    async fn wait_for(board: &StatusBoard, what: &str, f: impl Fn(&[nodepb::TaskStatus]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f(&board.snapshot()) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}: {:?}", board.snapshot());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[test]
    fn commands_resolve_from_bin_dir_before_path() {
        let bin = tempfile::tempdir().unwrap();
        let tool = bin.path().join("tool");
        std::fs::write(&tool, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(resolve_command("tool", Some(bin.path()), None).unwrap(), tool);
        let path = std::env::var_os("PATH");
        assert!(resolve_command("sh", Some(bin.path()), path.as_deref()).unwrap().is_absolute());
        assert!(
            resolve_command("no-such-tool-xyz", Some(bin.path()), path.as_deref()).unwrap_err().contains("not found")
        );
        assert!(resolve_command("./tool", None, None).is_err());
        assert!(resolve_command("/nonexistent/tool", None, None).is_err());
    }

    #[tokio::test]
    async fn exits_are_restarted_with_backoff_and_logs_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let exec = Executor::start(context(dir.path()));
        exec.apply(vec![spec("t1", "sh", &["-c", "echo out-$SWITCHYARD_TASK_ID-$PORT; echo err >&2; exit 3"])]).await;
        wait_for(exec.board(), "two restarts", |s| s.len() == 1 && s[0].restarts >= 2).await;
        let status = &exec.board().snapshot()[0];
        assert!(status.message.contains("exit status: 3"), "{}", status.message);
        let out = std::fs::read_to_string(dir.path().join("tasks/t1/stdout.log")).unwrap();
        assert!(out.lines().filter(|l| *l == "out-t1-1").count() >= 2, "{out}");
        assert!(std::fs::read_to_string(dir.path().join("tasks/t1/stderr.log")).unwrap().contains("err"));
        exec.shutdown().await;
    }

    #[tokio::test]
    async fn unknown_command_fails_with_a_message() {
        let dir = tempfile::tempdir().unwrap();
        let exec = Executor::start(context(dir.path()));
        exec.apply(vec![spec("t1", "no-such-program-xyz", &[])]).await;
        wait_for(exec.board(), "failed state", |s| s.len() == 1 && s[0].state == TaskState::Failed as i32).await;
        assert!(exec.board().snapshot()[0].message.contains("not found"));
        exec.shutdown().await;
    }

    #[tokio::test]
    async fn unassigned_tasks_are_terminated_then_killed() {
        let dir = tempfile::tempdir().unwrap();
        let exec = Executor::start(context(dir.path()));
        // The first ignores SIGTERM and needs SIGKILL after the grace period.
        exec.apply(vec![
            spec("stubborn", "sh", &["-c", "trap '' TERM; while true; do sleep 0.05; done"]),
            spec("polite", "sleep", &["60"]),
        ])
        .await;
        wait_for(exec.board(), "two pids", |s| s.iter().filter(|t| t.pid > 0).count() == 2).await;
        let pids = exec.board().pids();
        exec.apply(vec![]).await;
        wait_for(exec.board(), "no tasks", |s| s.is_empty()).await;
        for (id, pid) in pids {
            assert!(!Path::new(&format!("/proc/{pid}")).exists(), "{id} ({pid}) still running");
        }
        exec.shutdown().await;
    }

    #[tokio::test]
    async fn failing_health_checks_restart_the_task() {
        let dir = tempfile::tempdir().unwrap();
        let exec = Executor::start(context(dir.path()));
        let mut s = spec("t1", "sleep", &["60"]);
        // Nothing listens on the port: after the grace period the checks fail.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        s.port = u32::from(closed);
        s.health = Some(switchyard_proto::common::v1::HealthCheck {
            http_path: "/health".into(),
            interval_ms: 50,
            timeout_ms: 200,
            grace_ms: 100,
            max_failures: 2,
            ..Default::default()
        });
        exec.apply(vec![s]).await;
        wait_for(exec.board(), "a health restart", |s| s.len() == 1 && s[0].restarts >= 1).await;
        assert!(exec.board().snapshot()[0].message.contains("failed health checks"));
        exec.shutdown().await;
        assert!(exec.board().snapshot().is_empty());
    }
}
