//! This replica as a failure-detection observer, and the leader's declarations.
//!
//! Each replica probes the sites its configuration lists (a TCP connect to the site's ingress,
//! every `[dr] probe_interval_ms`, default each second) and takes the reports of DNS servers
//! (`ReportObservations`); both feed its `Detector`. Each round it also judges every group
//! taking traffic at a site: its composite health (`dr::composite`: the instances its cell
//! reports, an HTTP request for the group's name through the site's ingress, the groups it
//! depends on) as this replica's observation, and the cell's report of the instances as the
//! cell's own (failure domain `cell`). The leader declares a site, or a group at a site, down
//! when the detector's verdict is Down, proposing the evidence, which `apply` checks again.
//! Connection refused or reset is unhealthy; a timeout or a local error is unknown (labelled,
//! never resets a timer).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use switchyard_core::Action;
use switchyard_core::dr::composite::{self, HealthRule, Part};
use switchyard_core::dr::detect::{Health, Observation, Subject, Verdict, connect_error_health, explained_by_site};

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
    let mut groups_seen: BTreeMap<(String, String), Health> = BTreeMap::new();
    loop {
        every.tick().await;
        observe_groups(&fed, &probes, &observer, &domain, timeout, &mut groups_seen).await;
        for (site, addr) in &probes {
            let (health, detail) = probe(addr, timeout).await;
            metrics::counter!("federator_probes_total", "site" => site.clone(), "health" => health.as_str())
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

/// One round over every group taking traffic at a probed site that is not declared down: this
/// replica's composite view, and the cell's own report of the instances.
async fn observe_groups(
    fed: &Federator,
    probes: &BTreeMap<String, String>,
    observer: &str,
    domain: &str,
    timeout: Duration,
    seen: &mut BTreeMap<(String, String), Health>,
) {
    let zone = fed.config.zone.trim_end_matches('.').to_string();
    let targets: Vec<(String, String, String, HealthRule)> = fed.shared.read(|s| {
        s.groups
            .values()
            .flat_map(|g| {
                g.placement
                    .active_sites()
                    .into_iter()
                    .filter(|site| probes.contains_key(*site) && !s.down_sites.contains_key(*site))
                    .map(|site| {
                        (site.clone(), g.spec.name.clone(), g.spec.dns_name.clone(), g.spec.failover.health_rule)
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    });
    seen.retain(|key, _| targets.iter().any(|(site, group, _, _)| (site, group) == (&key.0, &key.1)));
    // All at once, so one round takes at most one probe timeout however many groups there are
    // (a blackholed site must not delay this replica's other sightings into staleness).
    let asked = futures::future::join_all(
        targets.iter().map(|(site, _, label, _)| ingress_part(&probes[site], format!("{label}.{zone}"), timeout)),
    )
    .await;
    for ((site, group, _, rule), ingress) in targets.into_iter().zip(asked) {
        let now = now_ms();
        let (instances, dependencies, reported_at) = fed.shared.read(|s| {
            let of = |d: &str| seen.get(&(site.clone(), d.to_string())).copied().unwrap_or(Health::Unknown);
            (
                composite::instances(s, &group, &site, now),
                composite::dependencies(s, &group, of),
                s.reports.get(&site).map(|r| r.received_at_ms),
            )
        });
        let (health, detail) = composite::combine(rule, &[instances.clone(), ingress, dependencies]);
        seen.insert((site.clone(), group.clone()), health);
        metrics::counter!("federator_group_probes_total", "health" => health.as_str()).increment(1);
        fed.observe(&Observation {
            observer: observer.to_string(),
            domain: domain.to_string(),
            subject: Subject::group(&site, &group),
            health,
            at_ms: now,
            detail,
        });
        // The cell's own stream, as of its last report.
        if let Some(at) = reported_at {
            fed.observe(&Observation {
                observer: format!("cell-{site}"),
                domain: "cell".to_string(),
                subject: Subject::group(&site, &group),
                health: instances.health,
                at_ms: at,
                detail: instances.detail,
            });
        }
    }
}

/// The ingress part of a group's health: an HTTP request for its name through the site's
/// ingress. A refused connection is the site's answer (unhealthy); silence is unknown.
pub async fn ingress_part(addr: &str, host: String, timeout: Duration) -> Part {
    use switchyard_telemetry::probe::{ProbeError, http_status};
    match http_status(addr, &host, timeout).await {
        Ok(code) => composite::ingress_status(Some(code), "the ingress has no live backend for it"),
        Err(ProbeError::Connect(kind, why)) if connect_error_health(kind) == Health::Unhealthy => {
            Part::new("ingress", Health::Unhealthy, why)
        }
        Err(ProbeError::Connect(_, why) | ProbeError::NoAnswer(why)) => composite::ingress_status(None, &why),
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
        // Each site's evidence, to tell a group's own failure from its site's.
        let mut site_evidence = BTreeMap::new();
        for site in sites {
            match detector.verdict(&Subject::site(&site), now, cfg) {
                Verdict::Down { evidence } if !declared.contains(&site) && self.config.dr.automatic() => {
                    declare.push(Action::DeclareSiteDown { site: site.clone(), evidence, detect: cfg.clone() });
                    suspect.insert(site);
                }
                Verdict::Down { evidence } | Verdict::Suspect { evidence, .. } => {
                    site_evidence.insert(site.clone(), evidence);
                    suspect.insert(site);
                }
                Verdict::Up { evidence } => {
                    site_evidence.insert(site, evidence);
                }
            }
        }
        // Groups at sites that are not declared down: each one its observers prove down there.
        if self.config.dr.automatic() {
            let active: Vec<(String, String, bool)> = self.shared.read(|s| {
                s.groups
                    .values()
                    .flat_map(|g| {
                        g.placement.active_sites().into_iter().filter(|site| !s.down_sites.contains_key(*site)).map(
                            |site| {
                                let declared = s
                                    .down_groups
                                    .get(&g.spec.name)
                                    .is_some_and(|d| d.site == *site && d.is_current(now));
                                (site.clone(), g.spec.name.clone(), declared || g.operation.is_some())
                            },
                        )
                    })
                    .collect()
            });
            for (site, group, skip) in active {
                if skip || declare.iter().any(|a| matches!(a, Action::DeclareSiteDown { site: s, .. } if *s == site)) {
                    continue;
                }
                if let Verdict::Down { evidence } = detector.verdict(&Subject::group(&site, &group), now, cfg) {
                    let by_site = site_evidence.get(&site).map(Vec::as_slice).unwrap_or_default();
                    if explained_by_site(&evidence, by_site, now, cfg) {
                        // The site's own verdict decides; the site is suspect, never a failover target.
                        continue;
                    }
                    declare.push(Action::DeclareGroupDown { site, group, evidence, detect: cfg.clone() });
                }
            }
        }
        (declare, suspect)
    }
}
