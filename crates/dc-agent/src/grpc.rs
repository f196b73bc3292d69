//! Transport settings shared by every gRPC client and server of the agent: mutual TLS always,
//! HTTP/2 keepalive so a dead peer is noticed within seconds, bounded message sizes.

use std::time::Duration;

use switchyard_tls::Bundle;
use tonic::transport::{Channel, Endpoint, Server};

use crate::config::ServerUrl;

pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The endpoint for `url`, presenting `bundle` and trusting only the bundle's CA. Building it
/// checks the TLS material, so daemons call it once at start to fail early on bad files.
pub fn endpoint(url: &ServerUrl, bundle: &Bundle) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::from_shared(url.url.clone())?
        .tls_config(bundle.client_tls(&url.server_name))?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .tcp_nodelay(true))
}

/// How long the TLS and HTTP/2 handshake may take once TCP is connected. A paused or hung
/// server still completes the TCP handshake (the kernel does), so without this a connect to
/// it would wait forever instead of moving on to the next federator.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
    #[error("no TLS/HTTP2 handshake within {0:?}: the server accepts connections but does not answer (hung or paused)")]
    Handshake(Duration),
}

pub async fn connect(endpoint: &Endpoint) -> Result<Channel, ConnectError> {
    let limit = CONNECT_TIMEOUT + HANDSHAKE_TIMEOUT;
    tokio::time::timeout(limit, endpoint.connect())
        .await
        .map_err(|_| ConnectError::Handshake(limit))?
        .map_err(Into::into)
}

/// A server builder that requires client certificates signed by the bundle's CA.
pub fn server(bundle: &Bundle) -> Result<Server, tonic::transport::Error> {
    Ok(Server::builder()
        .tls_config(bundle.server_tls())?
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .tcp_nodelay(true))
}
