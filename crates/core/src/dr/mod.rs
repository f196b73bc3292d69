//! Automatic disaster recovery, its pure decisions: detection by a quorum of independent
//! observers ([`detect`]), the guard rails and target choice of a site's failover ([`guard`]),
//! and what the leader proposes for the sites already declared down ([`decide`]).

pub mod detect;
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
    }
}

/// What the leader proposes at `now_ms` for the sites declared down: the brake, when a guard
/// rail trips it, otherwise each group's failover that the guard rails allow. `suspect` are
/// sites some observer sees unhealthy (no target); held groups are proposed nothing and are
/// decided again next time (a cooldown ends, capacity frees up).
pub fn decide(state: &State, suspect: &BTreeSet<String>, now_ms: u64, cfg: &guard::GuardConfig) -> Vec<Action> {
    let down: BTreeSet<String> = state.down_sites.keys().cloned().collect();
    let history = history(state);
    let mut out = Vec::new();
    for site in &down {
        let break_glass = state.down_sites.get(site).is_some_and(|d| !d.break_glass.is_empty());
        let d = guard::decide(state, site, &down, suspect, &history, now_ms, cfg, break_glass);
        if let Some(reason) = d.trip_brake {
            return vec![Action::TripBrake { reason }];
        }
        out.extend(d.moves.into_iter().map(|m| Action::StartFailover { group: m.group, from: m.from, to: m.to }));
    }
    out
}
