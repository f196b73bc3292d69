//! Logging and metrics set-up shared by every Switchyard daemon: a tracing subscriber
//! (human or JSON lines, filtered by `RUST_LOG`) and a Prometheus `/metrics` endpoint over plain
//! HTTP on a separate port. It never touches a daemon's own sockets or state. Also the HTTP probe
//! the failure-detection observers share ([`probe`]).

pub mod probe;

use std::net::SocketAddr;

use anyhow::Context;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Installs the global tracing subscriber. `json` selects JSON lines (for log shippers).
pub fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,h2=warn,hyper=warn,tower=warn,openraft=warn,hickory_server=warn")
    });
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // A second initialisation (tests that start two daemons in one process) is harmless.
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}

/// Installs the global metrics recorder and returns a handle that renders the exposition text.
pub fn init_metrics() -> anyhow::Result<PrometheusHandle> {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).context("a metrics recorder is already installed")?;
    Ok(handle)
}

/// Binds `addr` and serves `GET /metrics` (Prometheus text format) and `GET /healthz` until the
/// process exits. Returns the bound address (useful with port 0).
pub async fn serve_metrics(addr: SocketAddr, handle: PrometheusHandle) -> anyhow::Result<SocketAddr> {
    let listener =
        tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot bind metrics address {addr}"))?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(move || std::future::ready(handle.render())))
        .route("/healthz", axum::routing::get(|| std::future::ready("ok\n")));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics endpoint stopped");
        }
    });
    Ok(bound)
}
