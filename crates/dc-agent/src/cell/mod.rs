//! `dc-agent cell`: the site's cell master. It serves NodeLink to the site's nodes, keeps a
//! client stream to the federator's CellLink, and converges the nodes on the desired state.

mod admin_service;
mod autoscaler;
mod federator_link;
mod lb_publisher;
mod node_service;
mod reconcile;
mod replication;
pub(crate) mod state;

pub use state::{Rejection, fence_desired};

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use switchyard_proto::MAX_MESSAGE_BYTES;
use switchyard_proto::node::v1::node_link_server::NodeLinkServer;
use switchyard_tls::Role;
use tokio::sync::watch;
use tonic::transport::server::TcpIncoming;

use crate::config::CellArgs;
use crate::error::AgentError;
use crate::persist;
use crate::shutdown::{Shutdown, os_signal};
use state::CellState;

/// How long a starting cell waits for a previous instance to release its database.
const STORE_WAIT: Duration = Duration::from_secs(10);

/// How long the node server may take to close its streams after a shutdown request.
const SERVER_DRAIN: Duration = Duration::from_secs(3);

/// State shared by the cell's loops. The mutex is never held across an await.
pub(crate) struct Shared {
    state: Mutex<CellState>,
    data_dir: PathBuf,
    store: persist::CellStore,
    /// Highest epoch written to the store.
    persisted_epoch: AtomicU64,
    reconcile: watch::Sender<u64>,
    report: watch::Sender<u64>,
    report_sequence: AtomicU64,
    /// Outbound half of the federator link while it is up: autoscaling requests go through it.
    link: Mutex<Option<tokio::sync::mpsc::Sender<switchyard_proto::agent::v1::CellMessage>>>,
}

impl Shared {
    pub(crate) fn state(&self) -> MutexGuard<'_, CellState> {
        self.state.lock().expect("cell state mutex poisoned by a panic")
    }

    /// Something the placement depends on changed.
    /// The federator link's sender while the link is up.
    pub(crate) fn link(&self) -> Option<tokio::sync::mpsc::Sender<switchyard_proto::agent::v1::CellMessage>> {
        self.link.lock().expect("link mutex poisoned by a panic").clone()
    }

    fn set_link(&self, tx: Option<tokio::sync::mpsc::Sender<switchyard_proto::agent::v1::CellMessage>>) {
        *self.link.lock().expect("link mutex poisoned by a panic") = tx;
    }

    pub(crate) fn poke_reconcile(&self) {
        self.reconcile.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Something the report shows changed.
    pub(crate) fn poke_report(&self) {
        self.report.send_modify(|v| *v = v.wrapping_add(1));
    }

    pub(crate) fn next_report_sequence(&self) -> u64 {
        self.report_sequence.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// Runs a cell until SIGTERM or SIGINT.
/// How often the quota file is checked for changes.
const QUOTA_POLL: Duration = Duration::from_secs(1);

pub async fn run_cell(args: CellArgs) -> Result<(), AgentError> {
    run_cell_until(args, os_signal()).await
}

/// Runs a cell until `shutdown` completes. Returns an error only for problems found before the
/// cell is up (configuration, certificates, data directory, the listen address) or when the
/// node server fails; a missing federator is retried forever.
pub async fn run_cell_until(
    args: CellArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AgentError> {
    let cfg = args.validate()?;
    let bundle = cfg.tls.load()?;
    let me = bundle.identity(&cfg.tls.cert)?;
    if me.role != Role::Cell || me.name != cfg.site {
        return Err(AgentError::WrongIdentity(format!(
            "{} holds identity {me}; the cell of site {} needs a certificate for cell:{}",
            cfg.tls.cert.display(),
            cfg.site,
            cfg.site
        )));
    }
    let tls_setup = |source| AgentError::TlsSetup { cert: cfg.tls.cert.clone(), source };
    let mut server_builder = crate::grpc::server(&bundle).map_err(tls_setup)?;
    let federators = cfg
        .federators
        .iter()
        .map(|u| crate::grpc::endpoint(u, &bundle).map(|e| (u.url.clone(), e)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(tls_setup)?;
    std::fs::create_dir_all(&cfg.data_dir).map_err(|source| AgentError::Io { path: cfg.data_dir.clone(), source })?;
    let store = persist::CellStore::open_waiting(&cfg.data_dir, STORE_WAIT).await?;
    let epoch = store.load_epoch()?;
    let restored = store.load_state(&cfg.site)?;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| AgentError::Bind { addr: cfg.listen, source })?;
    let local = listener.local_addr().map_err(|source| AgentError::Bind { addr: cfg.listen, source })?;
    if let Some(addr) = cfg.metrics_listen {
        let handle = switchyard_telemetry::init_metrics().map_err(|e| AgentError::Metrics(e.to_string()))?;
        let bound = switchyard_telemetry::serve_metrics(addr, handle)
            .await
            .map_err(|e| AgentError::Metrics(format!("{e:#}")))?;
        tracing::info!(%bound, "metrics endpoint up");
    }

    let mut state = CellState::new(cfg.site.clone(), epoch, restored);
    state.set_lb_drain(cfg.lb_drain);
    if let Some(path) = &cfg.quotas {
        state.set_quotas(crate::quotas::load(path).map_err(AgentError::Quotas)?);
    }
    tracing::info!(
        site = %cfg.site,
        listen = %local,
        federators = %cfg.federators.iter().map(|u| u.url.as_str()).collect::<Vec<_>>().join(","),
        applied_epoch = state.applied_epoch(),
        "cell started"
    );
    let shared = Arc::new(Shared {
        state: Mutex::new(state),
        data_dir: cfg.data_dir.clone(),
        store,
        persisted_epoch: AtomicU64::new(epoch),
        reconcile: watch::channel(0).0,
        report: watch::channel(0).0,
        report_sequence: AtomicU64::new(0),
        link: Mutex::new(None),
    });
    let shutdown = Shutdown::from_future(shutdown);
    let cfg = Arc::new(cfg);

    let service = NodeLinkServer::new(node_service::NodeService::new(shared.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let stop_serving = {
        let shutdown = shutdown.clone();
        let shared = shared.clone();
        async move {
            shutdown.wait().await;
            shared.state().begin_shutdown();
        }
    };
    let admin = switchyard_proto::cell::v1::cell_admin_server::CellAdminServer::new(admin_service::AdminService::new(
        shared.clone(),
    ))
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let server = server_builder
        .add_service(service)
        .add_service(admin)
        .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), stop_serving);
    // Spawned only once nothing can fail any more, so an early error leaves no task behind.
    let reconciler = tokio::spawn(reconcile::run(shared.clone(), cfg.node_timeout, shutdown.clone()));
    let link = tokio::spawn(federator_link::run(shared.clone(), federators, cfg.clone(), shutdown.clone()));
    let autoscaler = tokio::spawn(autoscaler::run(shared.clone(), shutdown.clone()));
    let replication = tokio::spawn(replication::run(shared.clone(), shutdown.clone()));
    let quota_watch = cfg.quotas.clone().map(|path| tokio::spawn(watch_quotas(shared.clone(), path, shutdown.clone())));
    let publisher = cfg.haproxy_socket.clone().map(|socket| {
        tracing::info!(socket = %socket.display(), "publishing endpoints to HAProxy");
        tokio::spawn(lb_publisher::run(shared.clone(), crate::lb::HaproxyRuntime::new(socket), shutdown.clone()))
    });
    let result = tokio::select! {
        r = server => r.map_err(AgentError::Serve),
        () = async { shutdown.wait().await; tokio::time::sleep(SERVER_DRAIN).await } => Ok(()),
    };
    shared.state().begin_shutdown();
    link.abort();
    reconciler.abort();
    autoscaler.abort();
    replication.abort();
    if let Some(w) = quota_watch {
        w.abort();
    }
    if let Some(p) = publisher {
        p.abort();
        let _ = p.await;
    }
    let _ = link.await;
    let _ = reconciler.await;
    tracing::info!(site = %cfg.site, "cell stopped");
    result
}

/// Re-reads the quota file whenever its modification time or size changes. A file with
/// problems is refused as a whole: the quotas in force stay, and the error is logged and shown
/// by `fedctl cell roles` until the file is fixed.
async fn watch_quotas(shared: Arc<Shared>, path: std::path::PathBuf, shutdown: Shutdown) {
    let stamp = |p: &std::path::Path| std::fs::metadata(p).ok().map(|m| (m.modified().ok(), m.len()));
    let mut seen = stamp(&path);
    loop {
        tokio::select! {
            () = tokio::time::sleep(QUOTA_POLL) => {}
            () = shutdown.wait() => return,
        }
        let now = stamp(&path);
        if now == seen {
            continue;
        }
        seen = now;
        match crate::quotas::load(&path) {
            Ok(q) => {
                tracing::info!(file = %path.display(), roles = q.roles.len(), reservations = q.reservations.len(), "quotas reloaded");
                shared.state().set_quotas(q);
                shared.poke_reconcile();
            }
            Err(e) => {
                tracing::error!(error = %e, "quota file refused; the quotas in force stay");
                shared.state().set_quota_error(e);
            }
        }
    }
}
