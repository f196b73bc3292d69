//! Opt-in failback: a group that failed over off a site goes back to its recorded original
//! placement once that site has been seen healthy by observers in a quorum of failure domains
//! for the group's stability window. Never automatic unless the group opts in
//! (`failover.failback_after_s`); one group at a time across the federation; never while the
//! brake holds; dependencies first; the move itself is a planned switchover with all its
//! prechecks (freezes, fresh report, capacity, change windows, TTL budget). Pure.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::detect::{DetectConfig, Recovery, check_recovery};
use crate::REPORT_FRESH_MS;
use crate::model::Placement;
use crate::operation::OperationKind;
use crate::proposal::Action;
use crate::state::State;

/// Where a group ran before its first failover: what a failback restores.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// The site it failed over from.
    pub site: String,
    /// Its whole placement just before the failover.
    pub placement: Placement,
    pub at_ms: u64,
    /// The failover that moved it.
    pub operation: String,
}

/// The failback running now, if any (there is at most one).
pub fn running(state: &State) -> Option<&crate::operation::Operation> {
    state.operations.values().find(|o| o.kind == OperationKind::Failback && o.holds_group())
}

/// Why `group` does not fail back now, or Ok with the site it would go back to.
pub fn eligible(
    state: &State,
    group: &str,
    recovered: &BTreeMap<String, Vec<Recovery>>,
    now_ms: u64,
    detect: &DetectConfig,
) -> Result<String, String> {
    let g = state.groups.get(group).ok_or_else(|| format!("no group {group:?}"))?;
    let after_s = g.spec.failover.failback_after_s.ok_or("it has not opted in (failover.failback_after_s)")?;
    let origin = state.origins.get(group).ok_or("it has not failed over; there is nothing to go back to")?;
    if let Some(op) = &g.operation {
        return Err(format!("operation {op} holds it"));
    }
    if g.placement.active_sites().iter().any(|s| **s == origin.site) {
        return Err(format!("it already serves from {}", origin.site));
    }
    let evidence = recovered.get(&origin.site).map(Vec::as_slice).unwrap_or_default();
    check_recovery(evidence, now_ms, after_s * 1000, detect).map_err(|why| format!("{}: {why}", origin.site))?;
    if state.reports.get(&origin.site).is_none_or(|r| r.age_ms(now_ms) > REPORT_FRESH_MS) {
        return Err(format!("{}'s cell has not reported freshly", origin.site));
    }
    let current: Vec<&str> = g.placement.active_sites().into_iter().map(String::as_str).collect();
    let mut sites = current.clone();
    sites.push(&origin.site);
    if let Some((scope, f)) = state.freeze_on(group, &sites, now_ms) {
        return Err(format!("frozen ({scope}, by {}: {})", f.actor, f.reason));
    }
    // The planned switchover's own rules, so a failback waits for them instead of being
    // proposed and refused every round.
    state.check_change_window(now_ms).map_err(|r| r.to_string())?;
    state.check_ttl_budget(group).map_err(|r| r.to_string())?;
    Ok(origin.site.clone())
}

/// The failback to start at `now_ms`, if any. `recovered` holds, per site, the observers that
/// see it healthy now and since when.
pub fn next(
    state: &State,
    recovered: &BTreeMap<String, Vec<Recovery>>,
    now_ms: u64,
    detect: &DetectConfig,
) -> Option<Action> {
    if state.brake.is_some() || running(state).is_some() {
        return None;
    }
    let waiting: BTreeMap<&str, &str> = state
        .origins
        .iter()
        .filter(|(g, _)| state.groups.get(*g).is_some_and(|g| g.spec.failover.failback_after_s.is_some()))
        .map(|(g, o)| (g.as_str(), o.site.as_str()))
        .collect();
    let mut candidates: Vec<(u32, &str, String)> = waiting
        .keys()
        .filter_map(|g| {
            eligible(state, g, recovered, now_ms, detect).ok().map(|site| (state.groups[*g].spec.tier, *g, site))
        })
        // What it depends on goes back to the same site first.
        .filter(|(_, g, site)| {
            state.groups[*g].spec.depends_on.iter().all(|d| waiting.get(d.as_str()) != Some(&site.as_str()))
        })
        .collect();
    candidates.sort();
    let (_, group, site) = candidates.into_iter().next()?;
    Some(Action::StartFailback {
        group: group.to_string(),
        evidence: recovered.get(&site).cloned().unwrap_or_default(),
        detect: detect.clone(),
    })
}
