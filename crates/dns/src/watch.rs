//! The routing client: one `Watch` stream to the federator over mutual TLS, every received
//! table offered to the [`Applier`], reconnecting forever with bounded exponential backoff.
//! While disconnected the served table (possibly loaded from disk) keeps answering.

use std::error::Error as StdError;
use std::time::Duration;

use switchyard_proto::MAX_MESSAGE_BYTES;
use switchyard_proto::routing::v1::WatchRequest;
use switchyard_proto::routing::v1::routing_client::RoutingClient;
use switchyard_tls::Bundle;
use tonic::transport::Endpoint;

use crate::config::FederatorEndpoint;
use crate::metric_names as m;
use crate::store::{Applier, Outcome};

/// Time allowed to open the TCP + TLS connection to the federator.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the TLS and HTTP/2 handshake may take once TCP is connected.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 keepalive ping interval and the time a ping may stay unanswered; they detect a dead
/// link (e.g. a partition) long before TCP would.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// First and largest reconnection delay.
pub const BACKOFF_MIN: Duration = Duration::from_millis(200);
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Exponential backoff: `min`, doubling up to `max`; reset after a healthy stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        assert!(min > Duration::ZERO && min <= max, "backoff bounds must satisfy 0 < min <= max");
        Self { next: min, min, max }
    }

    /// The delay to wait now; the following one doubles, capped at `max`.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// Builds the channel endpoint: mTLS with the federation CA, the URL host as TLS server name,
/// keepalive and a connect timeout.
pub fn endpoint(federator: &FederatorEndpoint, bundle: &Bundle) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::from(federator.uri.clone())
        .tls_config(bundle.client_tls(&federator.server_name))?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true))
}

/// Follows a federator replica's routing stream until the task is aborted, moving to the next
/// replica (round robin) whenever the stream fails.
pub async fn watch_forever(endpoints: Vec<Endpoint>, server_id: String, applier: Applier) {
    let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
    let mut next = 0usize;
    loop {
        let endpoint = &endpoints[next % endpoints.len()];
        next = next.wrapping_add(1);
        let federator = endpoint.uri().to_string();
        match follow_stream(endpoint, &server_id, &applier).await {
            Ok(received) => {
                tracing::warn!(%federator, received, "routing stream ended; reconnecting");
                if received > 0 {
                    backoff.reset();
                }
            }
            Err(StreamError { received, error }) => {
                tracing::error!(%federator, received, error = %error, served_version = applier.served_version(),
                    "routing stream from the federator failed; serving the last known table");
                if received > 0 {
                    backoff.reset();
                }
            }
        }
        metrics::gauge!(m::FEDERATOR_CONNECTED).set(0.0);
        metrics::counter!(m::FEDERATOR_ERRORS_TOTAL).increment(1);
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

struct StreamError {
    received: u64,
    error: String,
}

impl StreamError {
    fn new(received: u64, error: &dyn StdError) -> Self {
        Self { received, error: error_chain(error) }
    }
}

/// One connection: returns how many tables arrived before the stream ended.
async fn follow_stream(endpoint: &Endpoint, server_id: &str, applier: &Applier) -> Result<u64, StreamError> {
    let mut received = 0;
    // A paused or hung federator completes the TCP handshake (the kernel does) but never the
    // TLS one: bound it, so the next federator is tried.
    let limit = CONNECT_TIMEOUT + HANDSHAKE_TIMEOUT;
    let channel = match tokio::time::timeout(limit, endpoint.connect()).await {
        Ok(connected) => connected.map_err(|e| StreamError::new(0, &e))?,
        Err(_) => {
            let e =
                std::io::Error::new(std::io::ErrorKind::TimedOut, format!("no TLS/HTTP2 handshake within {limit:?}"));
            return Err(StreamError::new(0, &e));
        }
    };
    let mut client = RoutingClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let known_version = applier.served_version();
    let request = WatchRequest { server_id: server_id.to_string(), known_version };
    let mut stream = client.watch(request).await.map_err(|e| StreamError::new(0, &e))?.into_inner();
    tracing::info!(federator = %endpoint.uri(), known_version, "routing stream open");
    metrics::gauge!(m::FEDERATOR_CONNECTED).set(1.0);
    loop {
        match stream.message().await {
            Ok(Some(table)) => {
                received += 1;
                if let Outcome::Applied { version } = applier.offer(table).await {
                    tracing::debug!(version, "served table replaced");
                }
            }
            Ok(None) => return Ok(received),
            Err(e) => return Err(StreamError::new(received, &e)),
        }
    }
}

/// An error with its sources, `a: b: c`; transport errors hide the useful part (a TLS or
/// connection failure) in their sources.
fn error_chain(error: &dyn StdError) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_and_resets() {
        let mut b = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
        let delays: Vec<u64> = (0..8).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(delays, vec![200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        b.reset();
        assert_eq!(b.next_delay(), BACKOFF_MIN);
    }
}
