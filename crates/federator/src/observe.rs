//! This replica as a failure-detection observer, and the leader's declarations.
//!
//! Each replica probes the sites its configuration lists (a TCP connect to the site's ingress,
//! every `[dr] probe_interval_ms`, default each second) and takes the reports of DNS servers (`ReportObservations`); both feed its
//! `Detector`. The leader, each round, declares a site down when the detector's verdict is
//! Down, proposing the evidence, which `apply` checks again. Connection refused or reset is
//! unhealthy; a timeout or a local error is unknown (labelled, never resets a timer).

use std::sync::Arc;
use std::time::Duration;

use switchyard_core::Action;
use switchyard_core::dr::detect::{Health, Observation, Subject, Verdict, connect_error_health};

use crate::node::{Federator, now_ms};

/// One TCP probe: healthy if it connects, unhealthy if the site refuses or resets, unknown if
/// it cannot tell (no answer within `timeout`, or an error on this side).
pub async fn probe(addr: &str, timeout: Duration) -> (Health, String) {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => (Health::Healthy, format!("{addr}: connected")),
        Ok(Err(e)) => (connect_error_health(e.kind()), format!("{addr}: {e}")),
        Err(_) => (Health::Unknown, format!("{addr}: probe timed out after {} ms", timeout.as_millis())),
    }
}

/// Probes every configured site every probe interval, for as long as the replica runs. A round
/// that overruns the interval (slow probes) delays the next one instead of bunching them.
pub async fn probe_forever(fed: Arc<Federator>) {
    let probes = fed.config.dr.probes.clone();
    if probes.is_empty() {
        return;
    }
    let observer = format!("federator-{}", fed.id);
    let domain = fed.config.dr.domain().to_string();
    let timeout = fed.config.dr.probe_timeout();
    let mut every = tokio::time::interval(fed.config.dr.probe_interval());
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        for (site, addr) in &probes {
            let (health, detail) = probe(addr, timeout).await;
            metrics::counter!("federator_probes_total", "site" => site.clone(), "health" => health_str(health))
                .increment(1);
            fed.observe(&Observation {
                observer: observer.clone(),
                domain: domain.clone(),
                subject: Subject::site(site),
                health,
                at_ms: now_ms(),
                detail,
            });
        }
    }
}

pub fn health_str(h: Health) -> &'static str {
    match h {
        Health::Healthy => "healthy",
        Health::Unhealthy => "unhealthy",
        Health::Unknown => "unknown",
    }
}

impl Federator {
    pub fn observe(&self, o: &Observation) {
        self.observations.lock().expect("observations lock").observe(o);
    }

    /// The leader's round: a declaration for each site the observers prove down (not yet
    /// declared), and the sites some observer sees unhealthy (no failover target).
    pub fn detection_round(&self, now: u64) -> (Vec<Action>, std::collections::BTreeSet<String>) {
        let cfg = &self.config.dr.detect;
        let (sites, declared): (Vec<String>, std::collections::BTreeSet<String>) =
            self.shared.read(|s| (s.sites.keys().cloned().collect(), s.down_sites.keys().cloned().collect()));
        let detector = self.observations.lock().expect("observations lock");
        let mut declare = Vec::new();
        let mut suspect = std::collections::BTreeSet::new();
        for site in sites {
            match detector.verdict(&Subject::site(&site), now, cfg) {
                Verdict::Down { evidence } if !declared.contains(&site) && self.config.dr.automatic() => {
                    declare.push(Action::DeclareSiteDown { site: site.clone(), evidence, detect: cfg.clone() });
                    suspect.insert(site);
                }
                Verdict::Down { .. } | Verdict::Suspect { .. } => {
                    suspect.insert(site);
                }
                Verdict::Up { .. } => {}
            }
        }
        (declare, suspect)
    }
}
