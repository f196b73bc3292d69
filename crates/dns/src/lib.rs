//! `fed-dns`: the authoritative DNS server for a Switchyard federation zone. It follows the
//! federator's routing stream (`switchyard.routing.v1.Routing/Watch`, mutual TLS), applies each
//! table atomically after validation and fencing, keeps the last accepted table on disk, and
//! answers SOA/NS/A/AAAA/CNAME/TXT/SRV over UDP and TCP from whatever table it holds, so it
//! keeps answering while every federator is down (static stability). UDP is served by
//! `SO_REUSEPORT` worker threads with a precomputed fast path ([`udp`], [`wire`]); TCP by hickory.
//!
//! It never decides routing: weights, health and placement arrive in the table and answer
//! selection ([`answer::answer`]) is a pure function of that table. It never serves a table
//! older than the one it serves (the SOA serial only moves forward, across restarts too), never
//! serves part of a table, never answers for names outside its zone, and offers no zone
//! transfers, dynamic updates or recursion.

pub mod answer;
pub mod config;
pub mod handler;
pub mod metric_names;
mod names;
mod observe;
pub mod push;
pub mod store;
pub mod table;
pub mod udp;
pub mod watch;
pub mod wire;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use config::{Args, Config, ConfigError, ZoneConfig};
pub use handler::DnsHandler;
pub use store::{Applier, SharedTable};
pub use table::Table;

/// Idle time after which a DNS-over-TCP connection is closed.
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Responses buffered per DNS-over-TCP connection.
const TCP_RESPONSE_BUFFER: usize = 32;
/// Attempts at finding one port free for both UDP and TCP when `--listen` asks for port 0.
const EPHEMERAL_BIND_ATTEMPTS: usize = 20;

/// Why `fed-dns` could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot load the TLS files: {0}")]
    Tls(#[from] switchyard_tls::PkiError),
    #[error("cannot configure the federator connection: {0}")]
    Federator(#[from] tonic::transport::Error),
    #[error("cannot create the state directory {path}: {source}")]
    StateDir { path: PathBuf, source: std::io::Error },
    #[error("cannot bind DNS {protocol} on {addr}: {source}; is another DNS server running there?")]
    Bind { protocol: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error("cannot start the metrics endpoint: {0}")]
    Metrics(String),
    #[error("DNS server stopped: {0}")]
    Server(String),
}

impl DnsError {
    /// Whether the error comes from the invocation (flags, certificate files, state directory)
    /// rather than from the environment; `fed-dns` exits with status 2 for those. All of them are
    /// detected before any socket is bound.
    pub fn is_usage(&self) -> bool {
        matches!(self, DnsError::Config(_) | DnsError::Tls(_) | DnsError::Federator(_) | DnsError::StateDir { .. })
    }
}

/// A running server: sockets bound, routing stream followed in the background.
pub struct RunningDns {
    local_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    table: Arc<SharedTable>,
    server: hickory_server::Server<DnsHandler>,
    udp: udp::UdpWorkers,
    watch: JoinHandle<()>,
    pushers: Vec<JoinHandle<()>>,
    push_status: Arc<push::StatusBoard>,
}

impl RunningDns {
    /// Address DNS is served on, over both UDP and TCP.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Address of `/metrics`, when enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The table being served right now.
    pub fn table(&self) -> Option<Arc<Table>> {
        self.table.current()
    }

    /// What each push target has confirmed (`push-status.json` holds the same).
    pub fn push_status(&self, target: &str) -> Option<push::TargetStatus> {
        self.push_status.get(target)
    }

    /// Stops following the federator and pushing, then closes the DNS sockets.
    pub async fn shutdown(mut self) -> Result<(), DnsError> {
        self.watch.abort();
        let _ = (&mut self.watch).await;
        for p in &self.pushers {
            p.abort();
        }
        for p in self.pushers.drain(..) {
            let _ = p.await;
        }
        let udp = self.udp;
        tokio::task::spawn_blocking(move || udp.stop()).await.map_err(|e| DnsError::Server(e.to_string()))?;
        self.server.shutdown_gracefully().await.map_err(|e| DnsError::Server(e.to_string()))
    }

    /// Waits until the DNS sockets fail (they do not close on their own).
    pub async fn wait(&mut self) -> Result<(), DnsError> {
        let mut poll = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                result = self.server.block_until_done() => {
                    return result.map_err(|e| DnsError::Server(e.to_string()));
                }
                _ = poll.tick() => {
                    if self.udp.any_stopped() {
                        return Err(DnsError::Server("a DNS UDP worker stopped".into()));
                    }
                }
            }
        }
    }
}

/// Starts `fed-dns` from a validated configuration: loads the TLS files and the last-known-good
/// table, binds UDP and TCP, then starts the metrics endpoint and the routing stream. Everything
/// that can fail on bad input fails before a socket is bound.
pub async fn spawn(config: Config) -> Result<RunningDns, DnsError> {
    let bundle = config.tls.load()?;
    let endpoints = config.federators.iter().map(|f| watch::endpoint(f, &bundle)).collect::<Result<Vec<_>, _>>()?;
    config::ensure_state_dir(&config.state_dir)
        .map_err(|source| DnsError::StateDir { path: config.state_dir.clone(), source })?;

    // The recorder goes in before the loaded table publishes its gauges; the endpoint is bound
    // after the DNS sockets.
    let metrics_handle = match config.metrics_listen {
        Some(_) => Some(switchyard_telemetry::init_metrics().map_err(|e| DnsError::Metrics(format!("{e:#}")))?),
        None => None,
    };
    metric_names::describe();
    let initial = load_last_known_good(&config);
    let table = Arc::new(SharedTable::new(initial));

    let (udp_sockets, tcp) = bind(config.listen, config.udp_workers).await?;
    let local_addr = udp_sockets[0].local_addr().map_err(|source| DnsError::Bind {
        protocol: "UDP",
        addr: config.listen,
        source,
    })?;

    let metrics_addr = match (config.metrics_listen, metrics_handle) {
        (Some(addr), Some(handle)) => Some(
            switchyard_telemetry::serve_metrics(addr, handle).await.map_err(|e| DnsError::Metrics(format!("{e:#}")))?,
        ),
        _ => None,
    };

    let mut server = hickory_server::Server::new(DnsHandler::new(table.clone(), config.zone.clone()));
    server.register_listener(tcp, TCP_IDLE_TIMEOUT, TCP_RESPONSE_BUFFER);
    let udp = udp::UdpWorkers::start(udp_sockets, table.clone(), Arc::new(config.zone.clone()))
        .map_err(|e| DnsError::Server(format!("cannot start the UDP workers: {e}")))?;

    let applier = Applier::new(table.clone(), config.zone.origin.clone(), config.state_dir.clone());
    if !config.observe.is_empty() {
        tokio::spawn(observe::observe_forever(
            endpoints.clone(),
            config.observe.clone(),
            config.observer_domain.clone(),
            config.observe_interval,
            table.clone(),
        ));
    }
    let watch = tokio::spawn(watch::watch_forever(endpoints, config.server_id.clone(), applier));
    let push_status = Arc::new(push::StatusBoard::new(&config.state_dir));
    let pushers = push::start(config.push.clone(), table.clone(), push_status.clone());
    tracing::info!(
        zone = %config.zone.origin,
        listen = %local_addr,
        federator = %config.federator.uri,
        udp_workers = config.udp_workers,
        push_targets = config.push.rfc2136.len() + config.push.haproxy.len(),
        served_version = table.current().map_or(0, |t| t.version()),
        "fed-dns serving"
    );
    Ok(RunningDns { local_addr, metrics_addr, table, server, udp, watch, pushers, push_status })
}

/// Validates `args`, starts the server and runs it until SIGINT or SIGTERM.
pub async fn run(args: Args) -> Result<(), DnsError> {
    let config = Config::from_args(&args)?;
    let mut running = spawn(config).await?;
    tokio::select! {
        result = running.wait() => result,
        () = shutdown_signal() => {
            tracing::info!("shutting down");
            running.shutdown().await
        }
    }
}

fn load_last_known_good(config: &Config) -> Option<Table> {
    match table::load(&config.state_dir) {
        Ok(None) => {
            tracing::info!(path = %config.routing_file().display(), "no last-known-good routing table yet");
            None
        }
        Ok(Some(t)) if t.zone() != &config.zone.origin => {
            tracing::warn!(path = %config.routing_file().display(), file_zone = %t.zone(), zone = %config.zone.origin,
                "last-known-good routing table is for another zone; ignoring it");
            None
        }
        Ok(Some(t)) => {
            tracing::info!(
                version = t.version(),
                epoch = t.epoch(),
                entries = t.len(),
                "loaded last-known-good routing table"
            );
            Some(t)
        }
        Err(e) => {
            // Starting without it only costs answers until the federator sends a table; refusing
            // to start would cost the apex as well.
            tracing::error!(error = %e, "cannot use the last-known-good routing table; starting without one");
            None
        }
    }
}

/// Binds `udp_workers` UDP sockets (`SO_REUSEPORT`) and TCP on the same address. With port 0
/// the port UDP got is reused for TCP, retrying when TCP finds it taken.
async fn bind(addr: SocketAddr, udp_workers: usize) -> Result<(Vec<std::net::UdpSocket>, TcpListener), DnsError> {
    let bind_err = |protocol, addr| move |source| DnsError::Bind { protocol, addr, source };
    let attempts = if addr.port() == 0 { EPHEMERAL_BIND_ATTEMPTS } else { 1 };
    let mut last = None;
    for _ in 0..attempts {
        let udp = udp::bind(addr, udp_workers).map_err(bind_err("UDP", addr))?;
        let udp_addr = udp[0].local_addr().map_err(bind_err("UDP", addr))?;
        match TcpListener::bind(udp_addr).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(source) => last = Some(DnsError::Bind { protocol: "TCP", addr: udp_addr, source }),
        }
    }
    Err(last.expect("at least one bind attempt ran"))
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops fed-dns");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
