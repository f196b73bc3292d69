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

pub async fn connect(endpoint: &Endpoint) -> Result<Channel, tonic::transport::Error> {
    endpoint.connect().await
}

/// A server builder that requires client certificates signed by the bundle's CA.
pub fn server(bundle: &Bundle) -> Result<Server, tonic::transport::Error> {
    Ok(Server::builder()
        .tls_config(bundle.server_tls())?
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .tcp_nodelay(true))
}
