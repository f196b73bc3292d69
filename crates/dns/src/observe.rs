//! This DNS server as a failure-detection observer: it probes each site it is told to
//! (`--observe SITE=HOST:PORT`, a TCP connect to the site's ingress) every
//! `--observe-interval-ms` (default each second) and reports what it saw to every federator
//! replica, so the leader's detector hears an observer outside the federator's own failure
//! domain.

use std::time::Duration;

use switchyard_core::dr::detect::{Health, connect_error_health};
use switchyard_proto::routing::v1::routing_client::RoutingClient;
use switchyard_proto::routing::v1::{ObservationBatch, SiteObservation};
use tonic::transport::Endpoint;

/// Longest a probe waits for a connection (shorter when the interval is).
const MAX_PROBE_TIMEOUT: Duration = Duration::from_millis(800);
const REPORT_TIMEOUT: Duration = Duration::from_secs(2);

async fn probe(addr: &str, timeout: Duration) -> (Health, String) {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => (Health::Healthy, format!("{addr}: connected")),
        Ok(Err(e)) => (connect_error_health(e.kind()), format!("{addr}: {e}")),
        Err(_) => (Health::Unknown, format!("{addr}: probe timed out after {} ms", timeout.as_millis())),
    }
}

/// Probes every site each `every` and reports the batch to every replica. A round that
/// overruns the interval (a slow probe or report) delays the next one instead of bunching them.
pub async fn observe_forever(federators: Vec<Endpoint>, sites: Vec<(String, String)>, domain: String, every: Duration) {
    let mut clients: Vec<Option<RoutingClient<tonic::transport::Channel>>> = vec![None; federators.len()];
    let timeout = every.min(MAX_PROBE_TIMEOUT);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut batch = ObservationBatch { domain: domain.clone(), sites: Vec::with_capacity(sites.len()) };
        let mut seen = Vec::with_capacity(sites.len());
        for (site, addr) in &sites {
            let (health, detail) = probe(addr, timeout).await;
            let health = match health {
                Health::Healthy => "healthy",
                Health::Unhealthy => "unhealthy",
                Health::Unknown => "unknown",
            };
            metrics::counter!("dns_observations_total", "site" => site.clone(), "health" => health).increment(1);
            seen.push(tokio::time::Instant::now());
            batch.sites.push(SiteObservation {
                site: site.clone(),
                health: health.into(),
                at_ms: 0,
                detail,
                age_ms: 0,
            });
        }
        for (endpoint, client) in federators.iter().zip(clients.iter_mut()) {
            // Each replica learns how old each sighting is when it is sent to it.
            for (o, at) in batch.sites.iter_mut().zip(&seen) {
                o.age_ms = at.elapsed().as_millis() as u64;
            }
            let c = client.get_or_insert_with(|| RoutingClient::new(endpoint.connect_lazy()));
            match tokio::time::timeout(REPORT_TIMEOUT, c.report_observations(batch.clone())).await {
                Ok(Ok(_)) => {}
                Ok(Err(status)) => tracing::debug!(federator = %endpoint.uri(), %status, "observations not taken"),
                Err(_) => tracing::debug!(federator = %endpoint.uri(), "reporting observations timed out"),
            }
        }
    }
}
