//! This DNS server as a failure-detection observer: it probes each site it is told to
//! (`--observe SITE=HOST:PORT`, a TCP connect to the site's ingress) every
//! `--observe-interval-ms` (default each second) and reports what it saw to every federator
//! replica, so the leader's detector hears an observer outside the federator's own failure
//! domain. It also asks each observed site's ingress for every group name the routing table
//! sends there (an HTTP request with the name as Host): a 5xx or a refusal is that group
//! unhealthy at that site, silence unknown.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use switchyard_telemetry::probe::{ProbeError, http_status};

use crate::store::SharedTable;

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
pub async fn observe_forever(
    federators: Vec<Endpoint>,
    sites: Vec<(String, String)>,
    domain: String,
    every: Duration,
    table: Arc<SharedTable>,
) {
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
            let health = health.as_str();
            metrics::counter!("dns_observations_total", "site" => site.clone(), "health" => health).increment(1);
            seen.push(tokio::time::Instant::now());
            batch.sites.push(SiteObservation {
                site: site.clone(),
                health: health.into(),
                at_ms: 0,
                detail,
                age_ms: 0,
                group: String::new(),
            });
        }
        // All at once: a round takes at most one probe timeout however many groups there are.
        let targets = group_targets(&table, &sites);
        let asked = futures::future::join_all(targets.iter().map(|(site, _, host)| {
            let addr = sites_addr(&sites, site);
            async move { http_status(&addr, host, timeout).await }
        }))
        .await;
        for ((site, group, host), answer) in targets.into_iter().zip(asked) {
            let (health, detail) = match answer {
                Ok(code) if code >= 500 => (Health::Unhealthy, format!("{host}: HTTP {code}")),
                Ok(code) => (Health::Healthy, format!("{host}: HTTP {code}")),
                Err(ProbeError::Connect(kind, why)) => (connect_error_health(kind), why),
                Err(ProbeError::NoAnswer(why)) => (Health::Unknown, why),
            };
            seen.push(tokio::time::Instant::now());
            batch.sites.push(SiteObservation {
                site,
                health: health.as_str().into(),
                at_ms: 0,
                detail,
                age_ms: 0,
                group,
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

fn sites_addr(sites: &[(String, String)], site: &str) -> String {
    sites.iter().find(|(s, _)| s == site).map(|(_, a)| a.clone()).unwrap_or_default()
}

/// (site, group, host name) for every group the current table sends traffic to at an observed
/// site: one of its names each (aliases are CNAMEs to it).
fn group_targets(table: &SharedTable, sites: &[(String, String)]) -> Vec<(String, String, String)> {
    let Some(t) = table.current() else { return Vec::new() };
    let mut out: BTreeMap<(String, String), String> = BTreeMap::new();
    for e in t.entries().filter(|e| e.cname.is_none() && !e.group.is_empty()) {
        for target in e.targets.iter().filter(|t| t.weight > 0 && sites.iter().any(|(s, _)| *s == t.site)) {
            let host = e.name.to_ascii().trim_end_matches('.').to_string();
            out.entry((target.site.clone(), e.group.clone())).or_insert(host);
        }
    }
    out.into_iter().map(|((site, group), host)| (site, group, host)).collect()
}
