//! Failover convergence (disaster-recovery family, after healing): every group still served by
//! a site declared down is held by a guard rail that the committed state records; every other
//! group has failed over to a survivor (its failed site fenced at weight 0, which the
//! single-active and never-all-off checks watch at every step).
//!
//! Precisely, with faults over, when some group has traffic on a declared-down site (else the
//! leader runs no failover round at all, and a brake would have nothing to halt), for every
//! site `S` in `down_sites` and every group `G` with
//! traffic on `S`, the leader's failover round (`dr::round`, no site suspect) must neither trip the
//! brake nor move `G` (that is still due: not converged), and must hold `G` by a rule that is
//! committed state, not a passing condition:
//!
//! - `brake`: the brake is engaged (`State::brake`, audited as `brake.engaged`);
//! - `cooldown`: `G` is in the automatic failover history within the cooldown;
//! - `freeze`: a committed freeze covers `G` or `S` now;
//! - `no-feasible-target`: every other site is declared down or out of service.
//!
//! - `manual`: the group's committed spec leaves its failover to a human.
//!
//! A group held by `busy`, `capacity`, `rate-limit` (or any other rule) once everything has
//! healed is not converged: nothing is left running, survivors report fresh capacity, and a
//! minute's rate is far above the groups of a run. The rule that held each group is counted in the summary.

use std::collections::BTreeSet;

use switchyard_core::State;
use switchyard_core::dr::guard::GuardConfig;
use switchyard_core::model::SiteState;

use super::Observed;
use crate::net::EPOCH_MS;

/// The groups with traffic on a declared-down site and the rule holding each, as the leader's
/// failover round (`dr::round`, no site suspect) decides at leader time `now_ms`.
pub fn held(state: &State, cfg: &GuardConfig, now_ms: u64) -> Vec<(String, String)> {
    let round = switchyard_core::dr::round(state, &BTreeSet::new(), now_ms, cfg);
    round.held.into_iter().map(|(_, h)| (h.group, h.rule.as_str().to_string())).collect()
}

pub fn check(o: &Observed) -> Result<(), String> {
    let (Some(t), Some(r)) = (&o.dr, o.replicas.first()) else { return Ok(()) };
    let state = &r.state;
    let now = EPOCH_MS + t.now_ms;
    let down: BTreeSet<String> = state.down_sites.keys().cloned().collect();
    // With no group served by a declared-down site there is nothing to move and nothing for a
    // brake to halt: the leader does not even run a round (`State::has_work`).
    if !state.groups.values().any(|g| g.placement.active_sites().iter().any(|s| down.contains(*s))) {
        return Ok(());
    }
    let round = switchyard_core::dr::round(state, &BTreeSet::new(), now, &t.guard);
    if let Some(why) = round.trip_brake {
        return Err(format!("the brake is due to trip ({why})"));
    }
    if let Some(m) = round.moves.first() {
        return Err(format!("failover of {} from {} to {} is still due", m.group, m.from, m.to));
    }
    for site in &down {
        let on_site: Vec<&str> = state
            .groups
            .values()
            .filter(|g| g.placement.active_sites().contains(&site))
            .map(|g| g.spec.name.as_str())
            .collect();
        for group in on_site {
            let Some((_, h)) = round.held.iter().find(|(s, h)| s == site && h.group == group) else {
                return Err(format!("group {group} still served by declared-down {site}, neither moved nor held"));
            };
            // By name: rules the guard rails may add later are not converged unless listed.
            let recorded = match h.rule.as_str() {
                "brake" => state.brake.is_some(),
                "cooldown" => state
                    .automatic_failovers
                    .iter()
                    .any(|(at, g)| g == group && now.saturating_sub(*at) < t.guard.cooldown_ms),
                "freeze" => state.freeze_on(group, &[site.as_str()], now).is_some(),
                "no-feasible-target" => state
                    .sites
                    .iter()
                    .filter(|(n, _)| *n != site)
                    .all(|(n, s)| down.contains(n) || s.state != SiteState::Active),
                // The group's committed spec says only a human fails it over.
                "manual" => true,
                _ => {
                    return Err(format!(
                        "group {group} on declared-down {site} held by {}: {}",
                        h.rule.as_str(),
                        h.detail
                    ));
                }
            };
            if !recorded {
                return Err(format!(
                    "group {group} on declared-down {site} held by {} ({}), which the committed state does not record",
                    h.rule.as_str(),
                    h.detail
                ));
            }
        }
    }
    Ok(())
}
