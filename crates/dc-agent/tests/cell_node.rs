//! Component test on loopback: a fake federator (a real CellLink server with mTLS), a real cell
//! and a real node in this process, running real `python3` tasks.

use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use switchyard_dc_agent::node::PidFile;
use switchyard_dc_agent::{AgentError, CellArgs, NodeArgs, run_cell_until, run_node_until};
use switchyard_proto::agent::v1 as agent;
use switchyard_proto::agent::v1::cell_link_server::{CellLink, CellLinkServer};
use switchyard_proto::common::v1 as common;
use switchyard_proto::node::v1 as nodepb;
use switchyard_proto::node::v1::node_link_client::NodeLinkClient;
use switchyard_tls::{Bundle, CertAuthority, Identity, Role, TlsFiles};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};

mod support;

const WAIT: Duration = Duration::from_secs(20);
const SITE: &str = "site-a";

/// Answers every GET with the task id from its environment, so the test sees that the node set
/// it; binds HOST:PORT as assigned.
const PY_SERVER: &str = r#"
import os, time, http.server, socketserver
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == '/slow':
            time.sleep(0.3)
        body = os.environ['SWITCHYARD_TASK_ID'].encode()
        self.send_response(200)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
S((os.environ['HOST'], int(os.environ['PORT'])), H).serve_forever()
"#;

struct Pki {
    _dir: tempfile::TempDir,
    root: PathBuf,
    ca: CertAuthority,
}

impl Pki {
    fn new() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let root = dir.path().join("certs");
        let ca = CertAuthority::generate("test federation CA")?;
        ca.save(&root)?;
        Ok(Self { _dir: dir, root, ca })
    }

    fn issue(&self, stem: &str, role: Role, name: &str) -> anyhow::Result<TlsFiles> {
        Ok(self.ca.issue_to_dir(&self.root, stem, &Identity::new(role, name)?, &["127.0.0.1".to_string()])?)
    }
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A free port that tasks will not be assigned.
fn free_port_outside(min: u16, max: u16) -> u16 {
    std::iter::repeat_with(free_port).find(|p| !(min..=max).contains(p)).expect("endless iterator")
}

/// `n` consecutive ports that are free right now.
fn free_port_range(n: u16) -> (u16, u16) {
    for _ in 0..100 {
        let base = free_port();
        if base.checked_add(n).is_none() {
            continue;
        }
        if (base..base + n).all(|p| StdListener::bind(("127.0.0.1", p)).is_ok()) {
            return (base, base + n - 1);
        }
    }
    panic!("no {n} consecutive free ports on loopback");
}

/// A CellLink server that sends the latest desired state to every attached cell and keeps the
/// latest report and every hello it receives.
#[derive(Clone)]
struct FakeFederator {
    desired: watch::Sender<Option<agent::DesiredState>>,
    reports: watch::Sender<Option<agent::CellReport>>,
    hellos: Arc<Mutex<Vec<agent::CellHello>>>,
    /// While true the federator is unreachable: attaches are refused and open links are cut.
    down: watch::Sender<bool>,
}

#[tonic::async_trait]
impl CellLink for FakeFederator {
    type AttachStream = ReceiverStream<Result<agent::FederatorMessage, Status>>;

    async fn attach(
        &self,
        request: Request<Streaming<agent::CellMessage>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let peer = switchyard_tls::peer_identity(&request)?;
        if peer.role != Role::Cell {
            return Err(Status::permission_denied("cells only"));
        }
        if *self.down.borrow() {
            return Err(Status::unavailable("federator is down"));
        }
        let mut inbound = request.into_inner();
        let (reports, hellos) = (self.reports.clone(), self.hellos.clone());
        tokio::spawn(async move {
            while let Ok(Some(msg)) = inbound.message().await {
                match msg.body {
                    Some(agent::cell_message::Body::Hello(h)) => hellos.lock().unwrap().push(h),
                    Some(agent::cell_message::Body::Report(r)) => {
                        reports.send_replace(Some(r));
                    }
                    Some(agent::cell_message::Body::Scaling(_)) | None => {}
                }
            }
        });
        let (tx, rx) = mpsc::channel(4);
        let mut desired = self.desired.subscribe();
        let mut down = self.down.subscribe();
        tokio::spawn(async move {
            loop {
                let current = desired.borrow_and_update().clone();
                if let Some(d) = current {
                    let msg = agent::FederatorMessage { body: Some(agent::federator_message::Body::Desired(d)) };
                    if tx.send(Ok(msg)).await.is_err() {
                        return;
                    }
                }
                tokio::select! {
                    r = desired.changed() => if r.is_err() { return },
                    () = async { let _ = down.wait_for(|d| *d).await; } => {
                        let _ = tx.send(Err(Status::unavailable("federator is down"))).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

async fn start_federator(pki: &Pki) -> anyhow::Result<(FakeFederator, u16)> {
    let files = pki.issue("federator", Role::Federator, "fed-1")?;
    let bundle = files.load()?;
    let fed = FakeFederator {
        desired: watch::channel(None).0,
        reports: watch::channel(None).0,
        hellos: Arc::new(Mutex::new(Vec::new())),
        down: watch::channel(false).0,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let server = tonic::transport::Server::builder()
        .tls_config(bundle.server_tls())?
        .add_service(CellLinkServer::new(fed.clone()))
        .serve_with_incoming(TcpIncoming::from(listener));
    tokio::spawn(server);
    Ok((fed, port))
}

fn cell_args(pki: &Pki, files: &TlsFiles, listen_port: u16, federator_port: u16, data_dir: &Path) -> CellArgs {
    CellArgs {
        site: SITE.into(),
        listen: format!("127.0.0.1:{listen_port}"),
        federator: format!("https://127.0.0.1:{federator_port}"),
        tls_ca: pki.root.join("ca.pem"),
        tls_cert: files.cert.clone(),
        tls_key: files.key.clone(),
        data_dir: data_dir.to_path_buf(),
        metrics_listen: None,
        report_interval_ms: 200,
        node_timeout_ms: 3000,
        haproxy_socket: None,
        lb_drain_ms: 1000,
        quotas: None,
    }
}

/// A daemon running in this process, stopped through its shutdown future.
struct Running {
    stop: Option<oneshot::Sender<()>>,
    join: JoinHandle<Result<(), AgentError>>,
}

impl Running {
    async fn stop(mut self) -> anyhow::Result<()> {
        let _ = self.stop.take().context("already stopped")?.send(());
        tokio::time::timeout(WAIT, self.join).await.context("daemon did not stop in time")??.map_err(Into::into)
    }
}

fn start_cell(args: CellArgs) -> Running {
    let (tx, rx) = oneshot::channel::<()>();
    let join = tokio::spawn(run_cell_until(args, async move {
        let _ = rx.await;
    }));
    Running { stop: Some(tx), join }
}

fn start_node(args: NodeArgs) -> Running {
    let (tx, rx) = oneshot::channel::<()>();
    let join = tokio::spawn(run_node_until(args, async move {
        let _ = rx.await;
    }));
    Running { stop: Some(tx), join }
}

fn desired(epoch: u64, instances: u32) -> agent::DesiredState {
    agent::DesiredState {
        epoch,
        site: SITE.into(),
        groups: vec![agent::GroupSpec {
            name: "crm-web".into(),
            epoch,
            autoscale_frozen: false,
            replication_lag_app: String::new(),
            replication_lag_path: String::new(),
            apps: vec![agent::AppSpec {
                name: "web".into(),
                command: "python3".into(),
                args: vec!["-c".into(), PY_SERVER.into()],
                instances,
                resources: Some(common::Resources { cpu_millis: 500, mem_mib: 128, disk_mib: 0 }),
                health: Some(common::HealthCheck {
                    http_path: "/health".into(),
                    interval_ms: 200,
                    timeout_ms: 1000,
                    grace_ms: 15_000,
                    max_failures: 3,
                    ..Default::default()
                }),
                ..Default::default()
            }],
        }],
    }
}

fn web(report: &agent::CellReport) -> Option<&agent::AppStatus> {
    report.groups.iter().find(|g| g.group == "crm-web")?.apps.iter().find(|a| a.app == "web")
}

async fn wait_report(
    fed: &FakeFederator,
    what: &str,
    ok: impl Fn(&agent::CellReport) -> bool,
) -> anyhow::Result<agent::CellReport> {
    let mut rx = fed.reports.subscribe();
    let found = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(r) = rx.borrow_and_update().clone()
                && ok(&r)
            {
                return r;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    })
    .await;
    found.with_context(|| format!("timed out waiting for {what}; last report: {:#?}", fed.reports.borrow()))
}

/// Waits for `n` further reports, so a state change the cell would make has had time to show.
async fn skip_reports(fed: &FakeFederator, n: u64) -> anyhow::Result<agent::CellReport> {
    let start = fed.reports.borrow().as_ref().map_or(0, |r| r.sequence);
    wait_report(fed, "more reports", |r| r.sequence >= start + n || r.sequence + 100 < start).await
}

fn alive(pid: i64) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

async fn wait_until(what: &str, f: impl Fn() -> bool) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f() {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

fn http_get(port: u16) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cell_and_node_run_fence_and_stop_real_processes() -> anyhow::Result<()> {
    switchyard_telemetry::init_tracing(false);
    let pki = Pki::new()?;
    let data = tempfile::tempdir()?;
    let (fed, fed_port) = start_federator(&pki).await?;
    let cell_files = pki.issue("cell", Role::Cell, SITE)?;
    let node_files = pki.issue("node-1", Role::Node, &format!("{SITE}/node-1"))?;
    let (port_min, port_max) = free_port_range(10);
    let cell_port = free_port_outside(port_min, port_max);
    let data_dir = data.path().join("cell");
    let work_dir = data.path().join("node-1");
    let cell = start_cell(cell_args(&pki, &cell_files, cell_port, fed_port, &data_dir));
    let node_1 = node_args(&pki, &node_files, "node-1", 1, cell_port, (port_min, port_max), &work_dir);
    let node = start_node(NodeArgs { cpu_millis: 2000, ..node_1 });

    // The node registers and shows up with its capacity before any desired state exists.
    let r = wait_report(&fed, "the node to register", |r| r.nodes.iter().any(|n| n.node_id == "node-1" && n.healthy))
        .await?;
    assert_eq!(r.nodes[0].capacity.unwrap().cpu_millis, 2000);
    assert_eq!(fed.hellos.lock().unwrap()[0].site, SITE);

    // Two healthy instances with real processes.
    fed.desired.send_replace(Some(desired(5, 2)));
    let r = wait_report(&fed, "2 healthy instances", |r| {
        web(r).is_some_and(|a| {
            a.instances.len() == 2
                && a.instances.iter().all(|i| i.healthy && i.pid > 0 && i.state == common::TaskState::Running as i32)
        })
    })
    .await?;
    assert_eq!(r.applied_epoch, 5);
    assert_eq!(r.groups[0].applied_epoch, 5);
    assert_eq!(r.nodes[0].allocated.unwrap().cpu_millis, 1000);
    let app = web(&r).unwrap();
    assert_eq!((app.desired, app.blocker.as_str()), (2, ""));
    let mut pids = Vec::new();
    for i in &app.instances {
        assert!(alive(i.pid), "task {} pid {} not running", i.task_id, i.pid);
        assert!((port_min..=port_max).contains(&(i.port as u16)));
        assert_eq!(i.address, "127.0.0.1");
        let answer = http_get(i.port as u16)?;
        assert!(answer.ends_with(&i.task_id), "task env not set: {answer}");
        assert!(work_dir.join("tasks").join(&i.task_id).join("stdout.log").exists());
        pids.push(i.pid);
    }
    let pid_file: PidFile = serde_json::from_slice(&std::fs::read(work_dir.join("tasks.json"))?)?;
    let mut listed: Vec<i64> = pid_file.tasks.iter().map(|t| t.pid).collect();
    listed.sort_unstable();
    let mut expected = pids.clone();
    expected.sort_unstable();
    assert_eq!(listed, expected);

    // An older epoch asking for zero instances is fenced off: nothing stops.
    fed.desired.send_replace(Some(desired(3, 0)));
    let r = skip_reports(&fed, 5).await?;
    assert_eq!(r.applied_epoch, 5);
    assert_eq!(web(&r).unwrap().instances.len(), 2);
    assert!(pids.iter().all(|p| alive(*p)), "a fenced desired state stopped tasks");

    // With the cell down the tasks keep running; a restarted cell remembers both the epoch
    // (the stale state is still refused) and where its tasks run (nothing is restarted).
    cell.stop().await?;
    fed.reports.send_replace(None);
    let hellos_before = fed.hellos.lock().unwrap().len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(pids.iter().all(|p| alive(*p)), "tasks stopped while the cell was down");
    let cell = start_cell(cell_args(&pki, &cell_files, cell_port, fed_port, &data_dir));
    wait_until("the restarted cell says hello", || fed.hellos.lock().unwrap().len() > hellos_before).await?;
    assert_eq!(fed.hellos.lock().unwrap().last().unwrap().applied_epoch, 5);
    wait_report(&fed, "the same healthy tasks on the restarted cell", |r| {
        let live: Vec<i64> =
            web(r).map(|a| a.instances.iter().filter(|i| i.healthy).map(|i| i.pid).collect()).unwrap_or_default();
        live.len() == 2 && live.iter().all(|p| pids.contains(p))
    })
    .await?;
    let r = skip_reports(&fed, 5).await?;
    assert_eq!(r.applied_epoch, 5);
    let now: Vec<i64> = web(&r).unwrap().instances.iter().map(|i| i.pid).collect();
    assert_eq!(now, pids, "a cell restart must not restart tasks");

    // A newer epoch scaling to zero stops the processes.
    fed.desired.send_replace(Some(desired(7, 0)));
    let r = wait_report(&fed, "zero instances", |r| {
        r.applied_epoch == 7 && web(r).is_some_and(|a| a.desired == 0 && a.instances.is_empty())
    })
    .await?;
    assert_eq!(r.nodes[0].allocated.unwrap().cpu_millis, 0);
    wait_until("the task processes are gone", || pids.iter().all(|p| !alive(*p))).await?;
    node.stop().await?;
    cell.stop().await?;
    // The fencing epoch is durable in the cell's database.
    let store = switchyard_dc_agent::persist::CellStore::open_waiting(&data_dir, Duration::from_secs(10)).await?;
    assert_eq!(store.load_epoch()?, 7);
    let pid_file: PidFile = serde_json::from_slice(&std::fs::read(work_dir.join("tasks.json"))?)?;
    assert!(pid_file.tasks.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_shutdown_stops_its_tasks_and_node_loss_is_reported() -> anyhow::Result<()> {
    switchyard_telemetry::init_tracing(false);
    let pki = Pki::new()?;
    let data = tempfile::tempdir()?;
    let (fed, fed_port) = start_federator(&pki).await?;
    let cell_files = pki.issue("cell", Role::Cell, SITE)?;
    let node_files = pki.issue("n1", Role::Node, &format!("{SITE}/n1"))?;
    let (port_min, port_max) = free_port_range(4);
    let cell_port = free_port_outside(port_min, port_max);
    let cell = start_cell(cell_args(&pki, &cell_files, cell_port, fed_port, &data.path().join("cell")));
    let work_dir = data.path().join("n1");
    let n1 = node_args(&pki, &node_files, "n1", 1, cell_port, (port_min, port_max), &work_dir);
    let node = start_node(NodeArgs { cpu_millis: 600, ..n1 });
    // Room for one 500-cpu instance only: the second is a blocker, not an overcommit.
    fed.desired.send_replace(Some(desired(1, 2)));
    let r = wait_report(&fed, "one healthy instance and a blocker", |r| {
        web(r).is_some_and(|a| a.instances.len() == 1 && a.instances[0].healthy && !a.blocker.is_empty())
    })
    .await?;
    let app = web(&r).unwrap();
    assert!(
        app.blocker.contains("crm-web/web unplaced: 1 nodes up; none has cpu_millis=500 mem_mib=128"),
        "{}",
        app.blocker
    );
    let pid = app.instances[0].pid;
    assert!(alive(pid));

    node.stop().await?;
    assert!(!alive(pid), "node shutdown left task {pid} running");
    // Tasks of a lost node are dropped from the plan and, with no other node, become a blocker.
    let r = wait_report(&fed, "the node lost and its task gone", |r| {
        r.nodes.iter().all(|n| !n.healthy) && web(r).is_some_and(|a| a.instances.is_empty())
    })
    .await?;
    let app = web(&r).unwrap();
    assert!(app.blocker.contains("none of 0 nodes is up"), "{}", app.blocker);
    cell.stop().await?;
    Ok(())
}

fn register(node_id: &str) -> nodepb::NodeMessage {
    nodepb::NodeMessage {
        body: Some(nodepb::node_message::Body::Register(nodepb::NodeRegister {
            node_id: node_id.into(),
            address: "127.0.0.1".into(),
            resources: Some(common::Resources { cpu_millis: 1000, mem_mib: 512, disk_mib: 0 }),
            port_min: 20000,
            port_max: 20010,
            attributes: Default::default(),
        })),
    }
}

/// Connects to the cell with `bundle` and registers; `Ok` once the cell accepted the stream.
async fn try_attach(port: u16, bundle: &Bundle, msg: nodepb::NodeMessage) -> Result<(), Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
        .map_err(|e| Status::internal(e.to_string()))?
        .tls_config(bundle.client_tls("127.0.0.1"))
        .map_err(|e| Status::internal(e.to_string()))?
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await
        .map_err(|e| Status::unavailable(format!("connect: {e:?}")))?;
    let (tx, rx) = mpsc::channel(2);
    tx.send(msg).await.unwrap();
    let attached = tokio::time::timeout(WAIT, NodeLinkClient::new(channel).attach(ReceiverStream::new(rx)))
        .await
        .map_err(|_| Status::deadline_exceeded("attach hung"))?;
    attached.map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_link_admits_only_federation_node_certificates() -> anyhow::Result<()> {
    switchyard_telemetry::init_tracing(false);
    let pki = Pki::new()?;
    let data = tempfile::tempdir()?;
    // Every certificate is issued before the cell starts: issuing rewrites ca.pem.
    let cell_files = pki.issue("cell", Role::Cell, SITE)?;
    let good = pki.issue("node-ok", Role::Node, &format!("{SITE}/node-ok"))?.load()?;
    let cellish = pki.issue("cellish", Role::Cell, "site-b")?.load()?;
    let other_cell = pki.issue("other-cell", Role::Cell, "site-b")?;
    let cell_port = free_port();
    // No federator: the cell serves its nodes regardless.
    let cell = start_cell(cell_args(&pki, &cell_files, cell_port, free_port(), &data.path().join("cell")));
    let mut cell = cell;
    wait_until_attached(cell_port, &good, &mut cell).await?;

    // A node certificate from another CA, even trusting the right CA, gets nowhere.
    let rogue_ca = CertAuthority::generate("rogue CA")?;
    let rogue = rogue_ca.issue(&Identity::new(Role::Node, format!("{SITE}/node-ok"))?, &["127.0.0.1".to_string()])?;
    let rogue = Bundle { ca_pem: pki.ca.cert_pem().to_string(), ..rogue };
    let err = try_attach(cell_port, &rogue, register("node-ok")).await.unwrap_err();
    assert_ne!(err.code(), tonic::Code::Ok);

    // A federation certificate with another role is refused by name.
    let err = try_attach(cell_port, &cellish, register("node-ok")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("role node"), "{}", err.message());

    // A node may not register under another node's id.
    let err = try_attach(cell_port, &good, register("node-other")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");

    // A node of another site (same federation CA, same node name) may not register here.
    let foreign = pki.issue("foreign-node", Role::Node, "site-b/node-ok")?.load()?;
    let err = try_attach(cell_port, &foreign, register("node-ok")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("site-a/node-ok"), "{}", err.message());

    // A malformed registration names the field.
    let mut bad = register("node-ok");
    if let Some(nodepb::node_message::Body::Register(r)) = bad.body.as_mut() {
        r.port_min = 30000;
    }
    let err = try_attach(cell_port, &good, bad).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("port_min 30000 is above port_max 20010"), "{}", err.message());

    // A cell refuses to start with a certificate that is not its own.
    let wrong = cell_args(&pki, &other_cell, free_port(), free_port(), data.path());
    assert!(matches!(run_cell_until(wrong, async {}).await, Err(AgentError::WrongIdentity(_))));

    cell.stop().await?;
    Ok(())
}

/// The cell may still be binding its port; retry the positive case until it is up.
async fn wait_until_attached(port: u16, bundle: &Bundle, cell: &mut Running) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if cell.join.is_finished() {
            anyhow::bail!("the cell stopped early: {:?}", (&mut cell.join).await);
        }
        match try_attach(port, bundle, register("node-ok")).await {
            Ok(()) => return Ok(()),
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, "cell not up yet");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => anyhow::bail!("a valid node could not attach: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cell_publishes_running_tasks_to_haproxy() -> anyhow::Result<()> {
    use switchyard_dc_agent::lb::{HaproxyRuntime, LoadBalancer};
    switchyard_telemetry::init_tracing(false);
    let pki = Pki::new()?;
    let data = tempfile::tempdir()?;
    let haproxy = support::haproxy::start_haproxy(data.path(), "be_crm-web_web", &["be_crm-web_web"]);
    let (fed, fed_port) = start_federator(&pki).await?;
    let cell_files = pki.issue("cell", Role::Cell, SITE)?;
    let node_files = pki.issue("node-1", Role::Node, &format!("{SITE}/node-1"))?;
    let (port_min, port_max) = free_port_range(10);
    let cell_port = free_port_outside(port_min, port_max);
    let haproxy_cell_args = || {
        let mut args = cell_args(&pki, &cell_files, cell_port, fed_port, &data.path().join("cell"));
        args.haproxy_socket = Some(haproxy.socket.clone());
        args
    };
    let cell = start_cell(haproxy_cell_args());
    let node_1 =
        node_args(&pki, &node_files, "node-1", 1, cell_port, (port_min, port_max), &data.path().join("node-1"));
    let node = start_node(NodeArgs { cpu_millis: 2000, ..node_1 });
    let lb = HaproxyRuntime::new(&haproxy.socket);
    let ready_servers = || async {
        lb.servers("be_crm-web_web")
            .await
            .map(|s| s.into_iter().filter(|s| !s.maintenance && !s.draining).map(|s| s.name).collect::<Vec<_>>())
            .unwrap_or_default()
    };

    // Two healthy instances: both published, and requests through HAProxy reach both.
    fed.desired.send_replace(Some(desired(5, 2)));
    let r = wait_report(&fed, "2 healthy instances", |r| {
        web(r).is_some_and(|a| a.instances.len() == 2 && a.instances.iter().all(|i| i.healthy))
    })
    .await?;
    let mut ids: Vec<String> = web(&r).unwrap().instances.iter().map(|i| i.task_id.clone()).collect();
    ids.sort();
    let deadline = tokio::time::Instant::now() + WAIT;
    while ready_servers().await != ids {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "HAProxy never listed {ids:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let frontend = haproxy.frontend;
    let answers = tokio::task::spawn_blocking(move || {
        (0..10).map(|_| support::haproxy::get(frontend).unwrap_or_else(|| "FAILED".into())).collect::<Vec<_>>()
    })
    .await?;
    let mut seen: Vec<String> = answers.clone();
    seen.sort();
    seen.dedup();
    assert_eq!(seen, ids, "requests through HAProxy reach exactly the published tasks: {answers:?}");

    // Scaling down to one under continuous load: the leaving task is drained from HAProxy
    // before its node stops it, so no request fails.
    let stop_load = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Four clients with 300 ms requests: some request is always in flight on the leaving task.
    let load = load_through(frontend, 4, &stop_load);
    tokio::time::sleep(Duration::from_millis(300)).await;
    fed.desired.send_replace(Some(desired(6, 1)));
    let r = wait_report(&fed, "1 instance", |r| web(r).is_some_and(|a| a.instances.len() == 1)).await?;
    let left = vec![web(&r).unwrap().instances[0].task_id.clone()];
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let all: Vec<String> =
            lb.servers("be_crm-web_web").await.unwrap_or_default().into_iter().map(|s| s.name).collect();
        if all == left {
            break;
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "backend still has {all:?}, want {left:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Keep the load on a while after the leaving task has gone from the backend.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (ok, failed) = finish_load(&stop_load, load).await?;
    assert!(ok > 20, "the load generator ran ({ok} requests)");
    assert!(failed.is_empty(), "{} requests failed during the scale-down (after {:?} successes)", failed.len(), failed);

    // A cell restart (its nodes reconnect a moment later) must not empty a working backend.
    cell.stop().await?;
    let cell = start_cell(haproxy_cell_args());
    let until = tokio::time::Instant::now() + Duration::from_secs(4);
    while tokio::time::Instant::now() < until {
        let now = ready_servers().await;
        anyhow::ensure!(now == left, "backend changed to {now:?} across a cell restart");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Nor must a restart on an empty data directory, while the cell rebuilds its task table.
    cell.stop().await?;
    std::fs::remove_dir_all(data.path().join("cell"))?;
    let cell = start_cell(haproxy_cell_args());
    let until = tokio::time::Instant::now() + Duration::from_secs(8);
    while tokio::time::Instant::now() < until {
        let now = ready_servers().await;
        anyhow::ensure!(now == left, "backend changed to {now:?} across a restart on an empty disk");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    node.stop().await?;
    cell.stop().await?;
    Ok(())
}

/// Runs `clients` threads of `GET /slow` through `frontend` until `stop` (or 60 s); returns
/// the successes and, for each failure, how many successes preceded it.
fn load_through(
    frontend: std::net::SocketAddr,
    clients: usize,
    stop: &Arc<std::sync::atomic::AtomicBool>,
) -> Vec<std::thread::JoinHandle<(u32, Vec<u32>)>> {
    (0..clients)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut ok, mut failed) = (0u32, Vec::new());
                let deadline = std::time::Instant::now() + Duration::from_secs(60);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && std::time::Instant::now() < deadline {
                    match support::haproxy::get_path(frontend, "/slow") {
                        Some(_) => ok += 1,
                        None => failed.push(ok),
                    }
                }
                (ok, failed)
            })
        })
        .collect()
}

/// Stops the load started by [`load_through`]; the successes, and each failure's preceding
/// success count.
async fn finish_load(
    stop: &Arc<std::sync::atomic::AtomicBool>,
    load: Vec<std::thread::JoinHandle<(u32, Vec<u32>)>>,
) -> anyhow::Result<(u32, Vec<u32>)> {
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    Ok(tokio::task::spawn_blocking(move || {
        load.into_iter().map(|t| t.join().expect("load thread")).fold((0, Vec::new()), |(ok, mut f), (o, fl)| {
            f.extend(fl);
            (ok + o, f)
        })
    })
    .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_upgrade_under_load_fails_no_request_through_haproxy() -> anyhow::Result<()> {
    use switchyard_dc_agent::lb::{HaproxyRuntime, LoadBalancer};
    switchyard_telemetry::init_tracing(false);
    let pki = Pki::new()?;
    let data = tempfile::tempdir()?;
    let haproxy = support::haproxy::start_haproxy(data.path(), "be_crm-web_web", &["be_crm-web_web"]);
    let (fed, fed_port) = start_federator(&pki).await?;
    let cell_files = pki.issue("cell", Role::Cell, SITE)?;
    let node_files = pki.issue("node-1", Role::Node, &format!("{SITE}/node-1"))?;
    let (port_min, port_max) = free_port_range(12);
    let cell_port = free_port_outside(port_min, port_max);
    let mut args = cell_args(&pki, &cell_files, cell_port, fed_port, &data.path().join("cell"));
    args.haproxy_socket = Some(haproxy.socket.clone());
    let cell = start_cell(args);
    let n1 = node_args(&pki, &node_files, "node-1", 1, cell_port, (port_min, port_max), &data.path().join("node-1"));
    let node = start_node(NodeArgs { cpu_millis: 4000, ..n1 });
    let lb = HaproxyRuntime::new(&haproxy.socket);
    let servers = || async {
        let mut all: Vec<(String, bool)> = lb
            .servers("be_crm-web_web")
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|s| (s.name, !s.maintenance && !s.draining))
            .collect();
        all.sort();
        all
    };
    let all_serving = |ids: &[String]| ids.iter().map(|id| (id.clone(), true)).collect::<Vec<_>>();

    // Version 1: four healthy instances, all in HAProxy.
    fed.desired.send_replace(Some(desired(5, 4)));
    let r = wait_report(&fed, "4 healthy instances", |r| {
        web(r).is_some_and(|a| a.instances.len() == 4 && a.instances.iter().all(|i| i.healthy))
    })
    .await?;
    let mut old: Vec<String> = web(&r).unwrap().instances.iter().map(|i| i.task_id.clone()).collect();
    old.sort();
    let deadline = tokio::time::Instant::now() + WAIT;
    while servers().await != all_serving(&old) {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "HAProxy never served {old:?}: {:?}", servers().await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Version 2 (a new environment) under continuous load: every old instance is replaced,
    // each drained from HAProxy before it stops, and no request fails.
    let stop_load = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = load_through(haproxy.frontend, 4, &stop_load);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut v2 = desired(6, 4);
    v2.groups[0].apps[0].env.insert("RELEASE".into(), "2".into());
    fed.desired.send_replace(Some(v2));
    let r = wait_report(&fed, "4 healthy instances of the new version", |r| {
        web(r).is_some_and(|a| {
            a.instances.len() == 4 && a.instances.iter().all(|i| i.healthy && !old.contains(&i.task_id))
        })
    })
    .await?;
    let mut new: Vec<String> = web(&r).unwrap().instances.iter().map(|i| i.task_id.clone()).collect();
    new.sort();
    let deadline = tokio::time::Instant::now() + WAIT;
    while servers().await != all_serving(&new) {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "backend is {:?}, want {new:?}", servers().await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (ok, failed) = finish_load(&stop_load, load).await?;
    assert!(ok > 20, "the load generator ran ({ok} requests)");
    assert!(
        failed.is_empty(),
        "{} requests failed during the rolling upgrade (after {:?} successes)",
        failed.len(),
        failed
    );
    // The new tasks really run the new environment.
    for i in &web(&r).unwrap().instances {
        let environ = std::fs::read(format!("/proc/{}/environ", i.pid))?;
        assert!(environ.split(|b| *b == 0).any(|kv| kv == b"RELEASE=2"), "task {} runs the old spec", i.task_id);
    }
    node.stop().await?;
    cell.stop().await?;
    Ok(())
}

/// A node agent running as a real process, so that SIGKILL behaves as in production. Killed
/// when dropped, so a failing test leaves nothing behind.
struct NodeProcess(std::process::Child);

impl NodeProcess {
    fn sigkill(&mut self) -> anyhow::Result<()> {
        self.0.kill()?;
        self.0.wait()?;
        Ok(())
    }

    fn sigterm(&mut self) -> anyhow::Result<()> {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0.id() as i32), nix::sys::signal::Signal::SIGTERM)?;
        self.0.wait()?;
        Ok(())
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Task processes that must not outlive the test, whatever happens.
struct TaskGuard(Vec<i64>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ =
                nix::sys::signal::killpg(nix::unistd::Pid::from_raw(*pid as i32), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

fn spawn_node_process(pki: &Pki, files: &TlsFiles, cell_port: u16, ports: (u16, u16), work_dir: &Path) -> NodeProcess {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_dc-agent"))
        .args(["node", "--id", "node-1", "--site", SITE, "--address", "127.0.0.1"])
        .args(["--cell", &format!("https://127.0.0.1:{cell_port}")])
        .args(["--cpu-millis", "2000", "--mem-mib", "1024", "--disk-mib", "1024", "--heartbeat-ms", "200"])
        .args(["--port-range", &format!("{}-{}", ports.0, ports.1)])
        .arg("--work-dir")
        .arg(work_dir)
        .arg("--tls-ca")
        .arg(pki.root.join("ca.pem"))
        .arg("--tls-cert")
        .arg(&files.cert)
        .arg("--tls-key")
        .arg(&files.key)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(work_dir.with_extension("log")).expect("log file"))
        .spawn()
        .expect("dc-agent node starts");
    NodeProcess(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_adopts_its_running_tasks() -> anyhow::Result<()> {
    switchyard_telemetry::init_tracing(false);
    let pki = Pki::new()?;
    let data = tempfile::tempdir()?;
    let (fed, fed_port) = start_federator(&pki).await?;
    let cell_files = pki.issue("cell", Role::Cell, SITE)?;
    let node_files = pki.issue("node-1", Role::Node, &format!("{SITE}/node-1"))?;
    let ports = free_port_range(10);
    let cell_port = free_port_outside(ports.0, ports.1);
    let cell = start_cell(cell_args(&pki, &cell_files, cell_port, fed_port, &data.path().join("cell")));
    let work_dir = data.path().join("node-1");
    std::fs::create_dir_all(&work_dir)?;
    let mut node = spawn_node_process(&pki, &node_files, cell_port, ports, &work_dir);

    fed.desired.send_replace(Some(desired(5, 2)));
    let healthy_pids = |r: &agent::CellReport| -> Option<Vec<i64>> {
        let a = web(r)?;
        let mut pids: Vec<i64> = a.instances.iter().filter(|i| i.healthy && i.pid > 0).map(|i| i.pid).collect();
        pids.sort();
        (pids.len() == 2).then_some(pids)
    };
    let r = wait_report(&fed, "2 healthy instances", |r| healthy_pids(r).is_some()).await?;
    let before = healthy_pids(&r).unwrap();
    let _tasks = TaskGuard(before.clone());

    // The node agent dies without a chance to clean up; its tasks keep running.
    node.sigkill()?;
    wait_report(&fed, "the node to be reported lost", |r| r.nodes.iter().any(|n| n.node_id == "node-1" && !n.healthy))
        .await?;
    assert!(before.iter().all(|p| alive(*p)), "tasks must outlive their node agent");

    // Restarted, it adopts them: the same processes are reported healthy, none relaunched.
    let mut node = spawn_node_process(&pki, &node_files, cell_port, ports, &work_dir);
    let r = wait_report(&fed, "the same 2 tasks healthy again", |r| {
        r.nodes.iter().any(|n| n.node_id == "node-1" && n.healthy) && healthy_pids(r).is_some_and(|p| p == before)
    })
    .await?;
    let restarts: Vec<u32> = web(&r).unwrap().instances.iter().map(|i| i.restarts).collect();
    assert_eq!(restarts, [0, 0], "adopted tasks were not restarted");
    skip_reports(&fed, 5).await?;
    let r = fed.reports.borrow().clone().unwrap();
    assert_eq!(healthy_pids(&r), Some(before.clone()), "still the same processes a moment later");

    // Scaling to zero stops the adopted processes too.
    fed.desired.send_replace(Some(desired(6, 0)));
    wait_until("adopted tasks to be stopped", || before.iter().all(|p| !alive(*p))).await?;
    node.sigterm()?;
    cell.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_agents_tasks_are_rescheduled_after_the_detection_window() -> anyhow::Result<()> {
    switchyard_telemetry::init_tracing(false);
    let pki = Pki::new()?;
    let data = tempfile::tempdir()?;
    let (fed, fed_port) = start_federator(&pki).await?;
    let cell_files = pki.issue("cell", Role::Cell, SITE)?;
    let ports = free_port_range(10);
    let cell_port = free_port_outside(ports.0, ports.1);
    let args = cell_args(&pki, &cell_files, cell_port, fed_port, &data.path().join("cell"));
    let node_timeout = Duration::from_millis(args.node_timeout_ms);
    let cell = start_cell(args);
    let work_dir = data.path().join("node-1");
    std::fs::create_dir_all(&work_dir)?;
    let node_1_files = pki.issue("node-1", Role::Node, &format!("{SITE}/node-1"))?;
    let mut node_1 = spawn_node_process(&pki, &node_1_files, cell_port, ports, &work_dir);
    let n2_files = pki.issue("n2", Role::Node, &format!("{SITE}/n2"))?;
    let n2 = start_node(node_args(&pki, &n2_files, "n2", 2, cell_port, ports, &data.path().join("n2")));
    wait_report(&fed, "both nodes", |r| r.nodes.iter().filter(|n| n.healthy).count() == 2).await?;

    // One instance per node (spread).
    fed.desired.send_replace(Some(desired(3, 2)));
    let on = |r: &agent::CellReport, node: &str| {
        web(r).map_or(0, |a| a.instances.iter().filter(|i| i.healthy && i.node_id == node).count())
    };
    let r = wait_report(&fed, "one healthy instance per node", |r| on(r, "node-1") == 1 && on(r, "n2") == 1).await?;
    let orphan = web(&r).unwrap().instances.iter().find(|i| i.node_id == "node-1").unwrap().pid;
    let _guard = TaskGuard(vec![orphan]);

    // The node agent is killed: after the detection window its instance is placed on n2.
    node_1.sigkill()?;
    let killed_at = tokio::time::Instant::now();
    wait_report(&fed, "both instances healthy on n2", |r| on(r, "n2") == 2).await?;
    let took = killed_at.elapsed();
    eprintln!(
        "rescheduled {} ms after the node agent was killed (node timeout {} ms)",
        took.as_millis(),
        node_timeout.as_millis()
    );
    // Its last heartbeat (every 200 ms) may predate the kill by up to one interval.
    assert!(
        took + Duration::from_millis(250) >= node_timeout,
        "rescheduled after {took:?}, before the node timeout: an unreachable node is not lost yet"
    );
    assert!(alive(orphan), "a node agent's death is not its tasks' death");

    // The agent comes back: its leftover task is no longer assigned to it and is stopped.
    let mut node_1 = spawn_node_process(&pki, &node_1_files, cell_port, ports, &work_dir);
    wait_until("the leftover task on node-1 to be stopped", || !alive(orphan)).await?;
    let r = skip_reports(&fed, 3).await?;
    assert_eq!(on(&r, "n2"), 2, "{r:?}");
    node_1.sigterm()?;
    n2.stop().await?;
    cell.stop().await?;
    Ok(())
}

/// A node on its own loopback address (`127.0.0.N`), as hosts have their own addresses.
fn node_args(
    pki: &Pki,
    files: &TlsFiles,
    id: &str,
    n: u8,
    cell_port: u16,
    ports: (u16, u16),
    work_dir: &Path,
) -> NodeArgs {
    NodeArgs {
        id: id.into(),
        site: SITE.into(),
        cell: format!("https://127.0.0.1:{cell_port}"),
        address: format!("127.0.0.{n}"),
        cpu_millis: 1000,
        mem_mib: 1024,
        disk_mib: 0,
        port_range: format!("{}-{}", ports.0, ports.1),
        work_dir: work_dir.to_path_buf(),
        tls_ca: pki.root.join("ca.pem"),
        tls_cert: files.cert.clone(),
        tls_key: files.key.clone(),
        bin_dir: None,
        metrics_listen: None,
        heartbeat_ms: 200,
        attributes: vec![],
        simulate: false,
        log_max_bytes: 10 * 1024 * 1024,
        log_keep: 3,
        retain_stopped_s: 86_400,
        cgroup_root: None,
        max_open_files: None,
    }
}

/// Live pids a node lists in its `tasks.json`.
fn node_pids(work_dir: &Path) -> Vec<i64> {
    std::fs::read(work_dir.join("tasks.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<PidFile>(&b).ok())
        .map(|f| f.tasks.iter().map(|t| t.pid).filter(|p| alive(*p)).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cell_keeps_healing_while_the_federator_is_unreachable() -> anyhow::Result<()> {
    switchyard_telemetry::init_tracing(false);
    let pki = Pki::new()?;
    let data = tempfile::tempdir()?;
    let (fed, fed_port) = start_federator(&pki).await?;
    let cell_files = pki.issue("cell", Role::Cell, SITE)?;
    let ports = free_port_range(10);
    let cell_port = free_port_outside(ports.0, ports.1);
    let cell = start_cell(cell_args(&pki, &cell_files, cell_port, fed_port, &data.path().join("cell")));
    let (w1, w2) = (data.path().join("n1"), data.path().join("n2"));
    let n1 = start_node(node_args(
        &pki,
        &pki.issue("n1", Role::Node, &format!("{SITE}/n1"))?,
        "n1",
        1,
        cell_port,
        ports,
        &w1,
    ));
    let n2 = start_node(node_args(
        &pki,
        &pki.issue("n2", Role::Node, &format!("{SITE}/n2"))?,
        "n2",
        2,
        cell_port,
        ports,
        &w2,
    ));
    wait_report(&fed, "both nodes", |r| r.nodes.iter().filter(|n| n.healthy).count() == 2).await?;

    // One 500-cpu instance per node.
    fed.desired.send_replace(Some(desired(3, 2)));
    wait_report(&fed, "2 healthy instances", |r| {
        web(r).is_some_and(|a| a.instances.len() == 2 && a.instances.iter().all(|i| i.healthy))
    })
    .await?;
    wait_until("one task per node", || node_pids(&w1).len() == 1 && node_pids(&w2).len() == 1).await?;

    // The federator becomes unreachable.
    fed.down.send_replace(true);
    let last_report = fed.reports.borrow().as_ref().map_or(0, |r| r.sequence);

    // A task killed with SIGKILL is restarted by its node.
    let killed = node_pids(&w1)[0];
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(killed as i32), nix::sys::signal::Signal::SIGKILL)?;
    wait_until("the killed task to be restarted", || {
        let p = node_pids(&w1);
        p.len() == 1 && p[0] != killed
    })
    .await?;

    // A lost node's task is rescheduled on the remaining node: the cell heals on its own.
    n2.stop().await?;
    wait_until("the lost node's task to move to n1", || node_pids(&w1).len() == 2).await?;
    assert_eq!(
        fed.reports.borrow().as_ref().map_or(0, |r| r.sequence),
        last_report,
        "no report got through while down"
    );

    // The federator returns: the cell reports the full count at the epoch it had, nothing was
    // scaled down because the federator was silent.
    fed.down.send_replace(false);
    let r = wait_report(&fed, "2 healthy instances on n1 after the outage", |r| {
        web(r).is_some_and(|a| a.instances.len() == 2 && a.instances.iter().all(|i| i.healthy && i.node_id == "n1"))
    })
    .await?;
    assert_eq!(r.applied_epoch, 3);
    n1.stop().await?;
    cell.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cell_that_lost_its_data_adopts_running_tasks() -> anyhow::Result<()> {
    switchyard_telemetry::init_tracing(false);
    let pki = Pki::new()?;
    let data = tempfile::tempdir()?;
    let (fed, fed_port) = start_federator(&pki).await?;
    let cell_files = pki.issue("cell", Role::Cell, SITE)?;
    let ports = free_port_range(10);
    let cell_port = free_port_outside(ports.0, ports.1);
    let cell_dir = data.path().join("cell");
    let cell = start_cell(cell_args(&pki, &cell_files, cell_port, fed_port, &cell_dir));
    let w1 = data.path().join("n1");
    let node = start_node(node_args(
        &pki,
        &pki.issue("n1", Role::Node, &format!("{SITE}/n1"))?,
        "n1",
        1,
        cell_port,
        (ports.0, ports.1),
        &w1,
    ));
    // Scale 1 -> 0 -> 1 so the running task is not the first id a fresh cell would invent.
    fed.desired.send_replace(Some(desired(2, 1)));
    wait_report(&fed, "1 instance", |r| web(r).is_some_and(|a| a.instances.len() == 1)).await?;
    fed.desired.send_replace(Some(desired(3, 0)));
    wait_report(&fed, "0 instances", |r| web(r).is_some_and(|a| a.instances.is_empty())).await?;
    fed.desired.send_replace(Some(desired(4, 1)));
    let r = wait_report(&fed, "1 healthy instance", |r| {
        web(r).is_some_and(|a| a.instances.len() == 1 && a.instances[0].healthy)
    })
    .await?;
    let before = web(&r).unwrap().instances[0].clone();
    assert_eq!(before.task_id, "crm-web.web.2");

    // The cell master restarts on an empty disk.
    cell.stop().await?;
    std::fs::remove_dir_all(&cell_dir)?;
    let cell = start_cell(cell_args(&pki, &cell_files, cell_port, fed_port, &cell_dir));

    // It adopts the instance its node reports instead of replacing it.
    let r = wait_report(&fed, "the same instance reported by the new cell", |r| {
        web(r).is_some_and(|a| a.instances.len() == 1 && a.instances[0].healthy && a.instances[0].pid == before.pid)
    })
    .await?;
    let after = &web(&r).unwrap().instances[0];
    assert_eq!(after.task_id, before.task_id);
    assert_eq!(after.restarts, 0);
    assert!(alive(before.pid));
    skip_reports(&fed, 5).await?;
    let r = fed.reports.borrow().clone().unwrap();
    assert_eq!(web(&r).unwrap().instances[0].pid, before.pid, "still the same process a moment later");

    // New tasks get fresh ids after the adopted one.
    fed.desired.send_replace(Some(desired(5, 2)));
    let r = wait_report(&fed, "2 instances", |r| web(r).is_some_and(|a| a.instances.len() == 2)).await?;
    let ids: Vec<&str> = web(&r).unwrap().instances.iter().map(|i| i.task_id.as_str()).collect();
    assert!(
        ids.contains(&before.task_id.as_str())
            && ids.iter().all(|i| *i == before.task_id || *i > before.task_id.as_str()),
        "{ids:?}"
    );
    node.stop().await?;
    cell.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_cell_places_hundreds_of_tasks_on_simulated_nodes_within_constraints() -> anyhow::Result<()> {
    switchyard_telemetry::init_tracing(false);
    let pki = Pki::new()?;
    let data = tempfile::tempdir()?;
    let (fed, fed_port) = start_federator(&pki).await?;
    let cell_files = pki.issue("cell", Role::Cell, SITE)?;
    let cell_port = free_port();
    let cell = start_cell(cell_args(&pki, &cell_files, cell_port, fed_port, &data.path().join("cell")));
    let mut nodes = Vec::new();
    for i in 0..20u8 {
        let id = format!("sim-{i:02}");
        let files = pki.issue(&id, Role::Node, &format!("{SITE}/{id}"))?;
        let args = node_args(&pki, &files, &id, 10 + i, cell_port, (40_000, 40_099), &data.path().join(&id));
        nodes.push(start_node(NodeArgs {
            cpu_millis: 10_000,
            mem_mib: 8192,
            simulate: true,
            attributes: vec![format!("rack=r{}", i % 4)],
            ..args
        }));
    }
    wait_report(&fed, "20 simulated nodes", |r| r.nodes.iter().filter(|n| n.healthy).count() == 20).await?;

    // 300 instances, at most 15 per host and spread evenly over the four racks.
    let mut d = desired(3, 300);
    d.groups[0].apps[0].constraints = vec!["hostname:MAX_PER:15".into(), "rack:GROUP_BY:4".into()];
    let started = tokio::time::Instant::now();
    fed.desired.send_replace(Some(d));
    let r = wait_report(&fed, "300 healthy simulated instances", |r| {
        web(r).is_some_and(|a| a.instances.len() == 300 && a.instances.iter().all(|i| i.healthy))
    })
    .await?;
    // Includes the fresh cell's reconnect hold (twice the node timeout) before it places anything.
    eprintln!("300 instances on 20 simulated nodes running after {} ms", started.elapsed().as_millis());
    let mut per_node: std::collections::BTreeMap<&str, u32> = std::collections::BTreeMap::new();
    for i in &web(&r).unwrap().instances {
        *per_node.entry(i.node_id.as_str()).or_default() += 1;
    }
    assert_eq!(per_node.len(), 20);
    assert!(per_node.values().all(|n| *n == 15), "MAX_PER 15 on 20 hosts for 300 instances: {per_node:?}");

    // One node goes away: nowhere may take its 15 instances, and the cell says which rule.
    nodes.pop().unwrap().stop().await?;
    let r = wait_report(&fed, "the lost node's instances blocked", |r| {
        web(r).is_some_and(|a| a.instances.len() == 285 && !a.blocker.is_empty())
    })
    .await?;
    let blocker = &web(&r).unwrap().blocker;
    assert!(blocker.contains("15 of 15 instances of crm-web/web unplaced") && blocker.contains("MAX_PER"), "{blocker}");
    for n in nodes {
        n.stop().await?;
    }
    cell.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_told_to_confine_tasks_where_the_kernel_cannot_refuses_to_start() -> anyhow::Result<()> {
    let pki = Pki::new()?;
    let data = tempfile::tempdir()?;
    let files = pki.issue("n1", Role::Node, &format!("{SITE}/n1"))?;
    // A cgroup directory whose kernel offers no cpu or memory controller (as on a cgroup v1
    // or hybrid host).
    let cgroup = data.path().join("cgroup");
    std::fs::create_dir_all(&cgroup)?;
    std::fs::write(cgroup.join("cgroup.controllers"), "pids\n")?;
    let args = NodeArgs {
        cgroup_root: Some(cgroup.clone()),
        ..node_args(&pki, &files, "n1", 1, free_port(), (40_000, 40_009), &data.path().join("n1"))
    };
    let err = run_node_until(args, std::future::pending()).await.expect_err("the node must not start");
    let text = err.to_string();
    assert!(text.contains("cpu and memory") && text.contains("available: pids"), "{text}");
    Ok(())
}
