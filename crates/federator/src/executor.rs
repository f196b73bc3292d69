//! The leader's operation executor: a level-triggered loop that asks the pure engine what is due
//! and commits it. It also registers the configured sites and groups once leadership is won.

use std::sync::Arc;
use std::time::Duration;

use switchyard_core::engine::decide_with;
use switchyard_core::{Action, Refusal, SYSTEM_ACTOR};

use crate::node::{Federator, ProposeError, now_ms};

const TICK: Duration = Duration::from_millis(200);
const CONFIG_ACTOR: &str = "system:config";

pub async fn run(fed: Arc<Federator>) {
    let mut registered_in_term = None;
    loop {
        tokio::time::sleep(TICK).await;
        publish_gauges(&fed);
        if !fed.is_leader() {
            continue;
        }
        let term = fed.raft.metrics().borrow().current_term;
        if registered_in_term != Some(term) {
            match register_configuration(&fed).await {
                Ok(()) => registered_in_term = Some(term),
                Err(e) => {
                    tracing::warn!(error = %e, "registering configured sites and groups failed; retrying");
                    continue;
                }
            }
        }
        let (declarations, suspect) = fed.detection_round(now_ms());
        let failback = failback_round(&fed, now_ms());
        let due = fed.shared.read(|s| s.has_work() || !switchyard_core::drill::due(s, now_ms()).is_empty());
        if !due && declarations.is_empty() && failback.is_none() {
            continue;
        }
        // Confirm leadership with a quorum and wait until everything committed is applied
        // before deciding, so neither a deposed leader nor a new leader still catching up acts
        // on stale observations.
        if let Err(e) = fed.raft.ensure_linearizable().await {
            tracing::info!(error = %e, "leadership not confirmed; skipping this round");
            continue;
        }
        for action in declarations {
            if let Action::DeclareSiteDown { site, evidence, .. } = &action {
                let observers: Vec<String> =
                    evidence.iter().map(|e| format!("{} ({})", e.observer, e.domain)).collect();
                // From the first observer's first unhealthy sight to the declaration.
                if let Some(first) = evidence.iter().filter_map(|e| e.unhealthy_since_ms).min() {
                    metrics::histogram!("federator_detection_latency_seconds")
                        .record(now_ms().saturating_sub(first) as f64 / 1000.0);
                }
                tracing::warn!(%site, ?observers, "observers in a quorum of failure domains see the site down; declaring it");
            }
            if let Action::DeclareGroupDown { site, group, .. } = &action {
                tracing::warn!(%site, %group, "observers in a quorum of failure domains see the group down there; declaring it");
            }
            let counter = match &action {
                Action::DeclareGroupDown { .. } => "federator_groups_declared_down_total",
                _ => "federator_sites_declared_down_total",
            };
            match fed.propose(SYSTEM_ACTOR, action).await {
                Ok(_) => metrics::counter!(counter, "by" => "observers").increment(1),
                Err(e) => tracing::warn!(error = %e, "a declaration was not committed"),
            }
        }
        let now = now_ms();
        let mut actions = fed.shared.read(|s| decide_with(s, now, &fed.config.engine, &suspect));
        actions.extend(failback);
        for action in actions {
            let what = describe(&action);
            let automatic = match &action {
                Action::StartFailover { .. } => Some("failover"),
                Action::StartFailback { .. } => Some("failback"),
                Action::TripBrake { .. } => Some("brake"),
                _ => None,
            };
            match fed.propose(SYSTEM_ACTOR, action).await {
                Ok(_) => {
                    metrics::counter!("federator_operation_steps_total").increment(1);
                    if let Some(kind) = automatic {
                        metrics::counter!("federator_automatic_actions_total", "action" => kind).increment(1);
                    }
                    tracing::info!(step = %what, "operation step committed");
                }
                Err(ProposeError::Refused(Refusal::StalePhase { .. })) => {}
                Err(e) => tracing::warn!(step = %what, error = %e, "operation step not committed"),
            }
        }
    }
}

/// The opt-in failback due now, if any: the observers' recovery evidence for every site some
/// failed-over group came from, handed to the pure decision.
fn failback_round(fed: &Federator, now: u64) -> Option<Action> {
    let recovered = recovered_origins(fed, now);
    if recovered.is_empty() {
        return None;
    }
    fed.shared.read(|s| switchyard_core::dr::failback::next(s, &recovered, now, &fed.config.dr.detect))
}

/// For every site some failed-over group came from: the observers that see it healthy now.
pub(crate) fn recovered_origins(
    fed: &Federator,
    now: u64,
) -> std::collections::BTreeMap<String, Vec<switchyard_core::dr::detect::Recovery>> {
    use switchyard_core::dr::detect::Subject;
    let sites: std::collections::BTreeSet<String> =
        fed.shared.read(|s| s.origins.values().map(|o| o.site.clone()).collect());
    let detector = fed.observations.lock().expect("observations lock");
    sites
        .into_iter()
        .map(|site| {
            let seen = detector.recovered(&Subject::site(&site), now, &fed.config.dr.detect);
            (site, seen)
        })
        .collect()
}

/// Raft and federation state as Prometheus gauges, refreshed every tick on every replica.
fn publish_gauges(fed: &Federator) {
    let m = fed.raft.metrics().borrow().clone();
    metrics::gauge!("federator_is_leader").set(if m.current_leader == Some(fed.id) { 1.0 } else { 0.0 });
    metrics::gauge!("federator_raft_term").set(m.current_term as f64);
    metrics::gauge!("federator_raft_last_log_index").set(m.last_log_index.unwrap_or(0) as f64);
    let (applied, in_flight, routing, audit, braked, down) = fed.shared.read(|s| {
        (
            s.last_applied,
            s.operations_in_flight(),
            s.routing_version,
            s.audit.len(),
            s.brake.is_some(),
            s.down_sites.len(),
        )
    });
    // The automatic-failover queue: groups the guard rails hold back, by rule, and the rate.
    let now = now_ms();
    let (held, last_minute) = fed.shared.read(|s| {
        let mut held: std::collections::BTreeMap<&'static str, usize> = Default::default();
        if !s.down_sites.is_empty() {
            for (_, h) in switchyard_core::dr::round(s, &Default::default(), now, &fed.config.engine.guard).held {
                *held.entry(h.rule.as_str()).or_default() += 1;
            }
        }
        (held, s.automatic_failovers.iter().filter(|(t, _)| now.saturating_sub(*t) < 60_000).count())
    });
    for rule in switchyard_core::dr::guard::Rule::ALL {
        let n = held.get(rule.as_str()).copied().unwrap_or(0);
        metrics::gauge!("federator_failovers_held", "rule" => rule.as_str()).set(n as f64);
    }
    metrics::gauge!("federator_automatic_failovers_last_minute").set(last_minute as f64);
    metrics::gauge!("federator_brake_engaged").set(if braked { 1.0 } else { 0.0 });
    metrics::gauge!("federator_sites_declared_down").set(down as f64);
    metrics::gauge!("federator_last_applied_index").set(applied as f64);
    metrics::gauge!("federator_operations_in_flight").set(in_flight as f64);
    metrics::gauge!("federator_routing_version").set(routing as f64);
    metrics::gauge!("federator_audit_records").set(audit as f64);
}

fn describe(action: &Action) -> String {
    match action {
        Action::AdvanceOperation { id, from, to, .. } => format!("{id}: {} -> {}", from.as_str(), to.as_str()),
        Action::FailOperation { id, at, error } => format!("{id}: failed in {}: {error}", at.as_str()),
        other => format!("{other:?}"),
    }
}

/// Proposes the configured sites and groups that the committed state lacks. Groups already
/// registered keep their committed placement; a differing spec is reported, not applied.
async fn register_configuration(fed: &Federator) -> Result<(), ProposeError> {
    for site in &fed.config.sites {
        let current = fed.shared.read(|s| s.sites.get(&site.name).map(|x| x.spec.clone()));
        if current.as_ref() != Some(site) {
            fed.propose(CONFIG_ACTOR, Action::RegisterSite(site.clone())).await?;
        }
    }
    for group in &fed.config.groups {
        match fed.shared.read(|s| s.groups.get(&group.name).map(|g| g.spec.clone())) {
            None => {
                fed.propose(CONFIG_ACTOR, Action::RegisterGroup(group.clone())).await?;
            }
            Some(spec) if spec != *group => tracing::warn!(
                group = %group.name,
                "the configured spec differs from the committed one; changing a registered group is not supported yet, the committed spec stays"
            ),
            Some(_) => {}
        }
    }
    Ok(())
}
