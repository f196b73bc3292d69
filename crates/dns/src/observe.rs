//! This DNS server as a failure-detection observer: it probes each site it is told to
//! (`--observe SITE=HOST:PORT`, a TCP connect to the site's ingress) every second and reports
//! what it saw to every federator replica, so the leader's detector hears an observer outside
//! the federator's own failure domain.

use std::time::Duration;

use switchyard_core::dr::detect::{Health, connect_error_health};
use switchyard_proto::routing::v1::routing_client::RoutingClient;
use switchyard_proto::routing::v1::{ObservationBatch, SiteObservation};
use tonic::transport::Endpoint;

const EVERY: Duration = Duration::from_secs(1);
const PROBE_TIMEOUT: Duration = Duration::from_millis(800);
const REPORT_TIMEOUT: Duration = Duration::from_secs(2);

async fn probe(addr: &str) -> (Health, String) {
    match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => (Health::Healthy, format!("{addr}: connected")),
        Ok(Err(e)) => (connect_error_health(e.kind()), format!("{addr}: {e}")),
        Err(_) => (Health::Unknown, format!("{addr}: probe timed out after {} ms", PROBE_TIMEOUT.as_millis())),
    }
}

pub async fn observe_forever(federators: Vec<Endpoint>, sites: Vec<(String, String)>, domain: String) {
    let mut clients: Vec<Option<RoutingClient<tonic::transport::Channel>>> = vec![None; federators.len()];
    loop {
        let mut batch = ObservationBatch { domain: domain.clone(), sites: Vec::with_capacity(sites.len()) };
        for (site, addr) in &sites {
            let (health, detail) = probe(addr).await;
            let health = match health {
                Health::Healthy => "healthy",
                Health::Unhealthy => "unhealthy",
                Health::Unknown => "unknown",
            };
            metrics::counter!("dns_observations_total", "site" => site.clone(), "health" => health).increment(1);
            batch.sites.push(SiteObservation { site: site.clone(), health: health.into(), at_ms: 0, detail });
        }
        for (endpoint, client) in federators.iter().zip(clients.iter_mut()) {
            let c = client.get_or_insert_with(|| RoutingClient::new(endpoint.connect_lazy()));
            match tokio::time::timeout(REPORT_TIMEOUT, c.report_observations(batch.clone())).await {
                Ok(Ok(_)) => {}
                Ok(Err(status)) => tracing::debug!(federator = %endpoint.uri(), %status, "observations not taken"),
                Err(_) => tracing::debug!(federator = %endpoint.uri(), "reporting observations timed out"),
            }
        }
        tokio::time::sleep(EVERY).await;
    }
}
