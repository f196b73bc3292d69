//! Automatic disaster recovery, its pure decisions: detection by a quorum of independent
//! observers ([`detect`]), the guard rails and target choice of a site's failover ([`guard`]),
//! and what the leader proposes for the sites already declared down ([`decide`]).

pub mod composite;
pub mod detect;
pub mod failback;
pub mod guard;

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::proposal::Action;
use crate::state::State;

/// A committed declaration that a site is down.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Declaration {
    pub at_ms: u64,
    pub actor: String,
    pub evidence: Vec<detect::Evidence>,
    /// A human's declaration (`fedctl failover --site`): their reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manual: Option<String>,
    /// Break-glass: the guard rails this site's failovers override (brake, cooldown, rate
    /// limit); never capacity or freezes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub break_glass: Vec<String>,
    /// The human who declared it accepted data loss: its stateful groups fail over even with
    /// replicas beyond their RPO budget.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub accept_data_loss: bool,
}

/// A committed declaration that one group is down at one site.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupDown {
    pub site: String,
    pub at_ms: u64,
    pub actor: String,
    pub evidence: Vec<detect::Evidence>,
}

/// How long a group's declaration stands without its failover starting (held by a guard
/// rail). After that it no longer moves the group: the observers must see it down again, so a
/// group that recovered meanwhile is not moved on old news.
pub const GROUP_DECLARATION_MS: u64 = 60_000;

impl GroupDown {
    pub fn is_current(&self, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.at_ms) < GROUP_DECLARATION_MS
    }
}

/// The guard rails a break-glass declaration overrides, by name.
pub const BREAK_GLASS_OVERRIDES: [guard::Rule; 3] = [guard::Rule::Brake, guard::Rule::Cooldown, guard::Rule::RateLimit];

/// Automation halted: by which rule (or person) and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Brake {
    pub at_ms: u64,
    pub actor: String,
    pub reason: String,
}

/// How many automatic failovers the committed history keeps.
pub const HISTORY: usize = 1_000;

/// The automation history as the guard rails read it from the committed state.
pub fn history(state: &State) -> guard::AutomationHistory {
    guard::AutomationHistory {
        brake: state.brake.as_ref().map(|b| format!("{} by {}", b.reason, b.actor)),
        failovers: state.automatic_failovers.clone(),
        in_flight: state
            .operations
            .values()
            .filter(|o| o.kind == crate::operation::OperationKind::Failover && o.holds_group())
            .count(),
    }
}

/// Every down site's failover decision in one round: the moves the guard rails allow, the
/// groups they hold (with the failed site), or the brake when a rule trips it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Round {
    pub moves: Vec<guard::FailoverMove>,
    pub held: Vec<(String, guard::Held)>,
    pub trip_brake: Option<String>,
}

/// The round at `now_ms` for the sites declared down. `suspect` are sites some observer sees
/// unhealthy (no target). The rate and concurrency limits are one budget for the whole
/// federation: what the round starts for one failed site counts against the next.
pub fn round(state: &State, suspect: &BTreeSet<String>, now_ms: u64, cfg: &guard::GuardConfig) -> Round {
    let down: BTreeSet<String> = state.down_sites.keys().cloned().collect();
    let mut history = history(state);
    let mut out = Round::default();
    // Sites declared down, then sites where only some groups are.
    let with_down_groups: BTreeSet<String> = state
        .down_groups
        .values()
        .filter(|d| d.is_current(now_ms))
        .map(|d| d.site.clone())
        .filter(|s| !down.contains(s))
        .collect();
    // Many groups failing at once, each at its own site, is as suspicious as many sites.
    let groups_down: Vec<&String> =
        state.down_groups.iter().filter(|(_, d)| d.is_current(now_ms)).map(|(g, _)| g).collect();
    let total = state.groups.len().max(1);
    if state.brake.is_none() && groups_down.len() * 100 > total * cfg.brake_groups_percent as usize {
        let why = format!(
            "{} of {} groups declared down at once ({}), more than {}%",
            groups_down.len(),
            total,
            groups_down.iter().map(|g| g.as_str()).collect::<Vec<_>>().join(", "),
            cfg.brake_groups_percent
        );
        out.trip_brake = Some(why);
        return out;
    }
    for site in down.iter().chain(&with_down_groups) {
        let break_glass = state.down_sites.get(site).is_some_and(|d| !d.break_glass.is_empty());
        let d = guard::decide(state, site, &down, suspect, &history, now_ms, cfg, break_glass);
        out.held.extend(d.held.into_iter().map(|h| (site.clone(), h)));
        if d.trip_brake.is_some() {
            out.moves.clear();
            out.trip_brake = d.trip_brake;
            return out;
        }
        history.failovers.extend(d.moves.iter().map(|m| (now_ms, m.group.clone())));
        history.in_flight += d.moves.len();
        out.moves.extend(d.moves);
    }
    out
}

/// What the leader proposes at `now_ms` for the sites declared down: the brake, when a guard
/// rail trips it, otherwise each group's failover that the guard rails allow. Held groups are
/// proposed nothing and are decided again next time (a cooldown ends, capacity frees up).
pub fn decide(state: &State, suspect: &BTreeSet<String>, now_ms: u64, cfg: &guard::GuardConfig) -> Vec<Action> {
    let r = round(state, suspect, now_ms, cfg);
    if let Some(reason) = r.trip_brake {
        return vec![Action::TripBrake { reason }];
    }
    r.moves.into_iter().map(|m| Action::StartFailover { group: m.group, from: m.from, to: m.to }).collect()
}
