//! Planned moves as a dry run: what a switchover of one group, several groups, or every group
//! of a site would do, computed on the execution path itself. The planner applies each
//! group's `StartSwitchover` to a copy of the committed state with [`State::apply`], so the
//! preflight, the capacity reservations that earlier groups of the same plan take, and every
//! refusal are exactly what starting them for real would meet. Pure: no clock (the caller
//! passes the leader time), no I/O.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::engine::{EngineConfig, plan_switchover};
use crate::model::Resources;
use crate::proposal::{Action, Proposal, Refusal};
use crate::state::State;

/// Which groups to move.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MoveScope {
    /// These groups, in this order.
    Groups(Vec<String>),
    /// Every group whose traffic is on this site (evacuation): dependencies first, then the
    /// most critical tier, then by name.
    Site(String),
}

/// Estimates the planner adds to the engine's own timings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlanEstimates {
    /// Time for the target's instances to start and turn healthy.
    pub startup_ms: u64,
    /// Time for the source's instances to stop once told.
    pub scale_down_ms: u64,
}

impl Default for PlanEstimates {
    fn default() -> Self {
        Self { startup_ms: 30_000, scale_down_ms: 10_000 }
    }
}

/// One step of a group's move, in execution order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedStep {
    /// The engine phase that performs it (`ScalingUp`, `Verifying`, `Shifting` once per
    /// ramp step below 100 %, `Draining` at 100 %, `ScalingDown`): the phases the operation's
    /// step log records when it runs.
    pub phase: String,
    pub detail: String,
    pub expected_ms: u64,
}

/// One group's part of a plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupPlan {
    pub group: String,
    pub tier: u32,
    /// The site its traffic leaves, when it has exactly one.
    pub from: Option<String>,
    /// Why this group cannot move now; `None` when it can.
    pub refusal: Option<String>,
    pub steps: Vec<PlannedStep>,
    /// Capacity the move reserves on the target.
    pub needed: Resources,
    pub predicted_ms: u64,
}

/// A whole plan: every group's steps, the capacity picture, and go or no-go.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MovePlan {
    /// Digest of everything below: the same request on an unchanged federation gives the same
    /// id, and `start --plan ID` refuses when the plan it would execute is no longer this one.
    pub id: String,
    pub to: String,
    pub groups: Vec<GroupPlan>,
    /// Every group can move.
    pub go: bool,
    /// One line per group that cannot.
    pub reasons: Vec<String>,
    /// The target's free capacity (after running operations' reservations) before the plan.
    pub target_free: Resources,
    /// What the plan reserves there in all.
    pub needed: Resources,
    /// How long the moves take run as an evacuation does: at most `concurrency` side by
    /// side, each group after the groups of the plan it depends on ([`makespan`]).
    pub predicted_ms: u64,
    /// The number of moves side by side `predicted_ms` assumes.
    #[serde(default)]
    pub concurrency: u32,
}

/// Plans moving `scope` to `to` at leader time `at_ms`. Err only for a request that names
/// nothing to plan (unknown target or source site, no groups); a group that cannot move is a
/// no-go line in the plan, not an error.
pub fn plan_moves(
    state: &State,
    scope: &MoveScope,
    to: &str,
    at_ms: u64,
    cfg: &EngineConfig,
    estimates: &PlanEstimates,
) -> Result<MovePlan, Refusal> {
    if !state.sites.contains_key(to) {
        return Err(Refusal::UnknownSite(to.to_string()));
    }
    let groups = scope_order(state, scope, to)?;
    let mut sim = state.clone();
    let target_free = free_on(state, to);
    let mut out = Vec::with_capacity(groups.len());
    for name in &groups {
        let g = &state.groups[name];
        let active = g.placement.active_sites();
        let from = match active.as_slice() {
            [one] => Some((*one).clone()),
            _ => None,
        };
        let mut plan = GroupPlan {
            group: name.clone(),
            tier: g.spec.tier,
            from: from.clone(),
            refusal: None,
            steps: vec![],
            needed: Resources::default(),
            predicted_ms: 0,
        };
        // Preflight on the copy (it sees the reservations of the groups planned before),
        // then the real apply, which reserves for the next ones.
        let preflight = plan_switchover(&sim, name, to, at_ms);
        let start = Action::StartSwitchover {
            group: name.clone(),
            to: to.to_string(),
            reason: "plan".into(),
            plan: String::new(),
            rollback_of: String::new(),
        };
        let index = sim.last_applied + 1;
        match preflight.and_then(|p| sim.apply(index, &Proposal::new(at_ms, "planner", start)).map(|_| p)) {
            Err(refusal) => plan.refusal = Some(refusal.to_string()),
            Ok(p) => {
                let apps: Vec<String> = p.target_instances.iter().map(|(a, n)| format!("{a}={n}")).collect();
                let ttl_ms = u64::from(g.spec.ttl_s) * 1_000;
                plan.needed = p.reserved;
                let budget = g.spec.ramp.max_unhealthy_percent;
                let health = if budget == 0 {
                    "every target instance healthy".to_string()
                } else {
                    format!("at most {budget}% of target instances unhealthy")
                };
                let mut steps = vec![
                    PlannedStep {
                        phase: "ScalingUp".into(),
                        detail: format!("start {} instances on {to} ({})", p.total_instances(), apps.join(", ")),
                        expected_ms: estimates.startup_ms,
                    },
                    PlannedStep {
                        phase: "Verifying".into(),
                        detail: "every target instance healthy for the verify window".into(),
                        expected_ms: cfg.verify_window_ms,
                    },
                ];
                let (last, ramp) = g.spec.ramp.steps.split_last().expect("a validated ramp ends at 100");
                for percent in ramp {
                    steps.push(PlannedStep {
                        phase: "Shifting".into(),
                        detail: format!(
                            "DNS and load-balancer weights {} {} / {to} {percent}; held one TTL ({}s) while {health}",
                            p.from,
                            100 - percent,
                            g.spec.ttl_s
                        ),
                        expected_ms: ttl_ms,
                    });
                }
                let hold = (ttl_ms + cfg.drain_ms).max(cfg.verify_window_ms);
                steps.push(PlannedStep {
                    phase: "Draining".into(),
                    detail: format!(
                        "DNS and load-balancer weights {} {} / {to} {last}; held {} ms (one TTL plus the drain \
                         time, at least the verify window) while {health}",
                        p.from,
                        100 - last,
                        hold
                    ),
                    expected_ms: hold,
                });
                steps.push(PlannedStep {
                    phase: "ScalingDown".into(),
                    detail: format!("stop the group's instances on {}", p.from),
                    expected_ms: estimates.scale_down_ms,
                });
                plan.steps = steps;
                plan.predicted_ms = plan.steps.iter().map(|s| s.expected_ms).sum();
            }
        }
        out.push(plan);
    }
    let reasons: Vec<String> =
        out.iter().filter_map(|g| g.refusal.as_ref().map(|r| format!("{}: {r}", g.group))).collect();
    let needed = out.iter().map(|g| g.needed).fold(Resources::default(), Resources::plus);
    let concurrency = crate::evacuation::DEFAULT_CONCURRENCY;
    let mut plan = MovePlan {
        id: String::new(),
        to: to.to_string(),
        go: reasons.is_empty(),
        reasons,
        groups: out,
        target_free,
        needed,
        predicted_ms: 0,
        concurrency,
    };
    plan.predict(state, concurrency);
    plan.id = digest(&plan);
    Ok(plan)
}

impl MovePlan {
    /// Sets `predicted_ms` for moves run `concurrency` side by side (at least one).
    pub fn predict(&mut self, state: &State, concurrency: u32) {
        let in_plan: std::collections::BTreeSet<&str> = self.groups.iter().map(|g| g.group.as_str()).collect();
        let moves: Vec<(String, Vec<String>, u64)> = self
            .groups
            .iter()
            .map(|g| {
                let deps = state.groups.get(&g.group).map_or(&[][..], |x| x.spec.depends_on.as_slice());
                let deps = deps.iter().filter(|d| in_plan.contains(d.as_str())).cloned().collect();
                (g.group.clone(), deps, g.predicted_ms)
            })
            .collect();
        self.concurrency = concurrency.max(1);
        self.predicted_ms = makespan(&moves, self.concurrency);
    }
}

/// How long moving `moves` (name, the names of `moves` it waits for, duration; in start order)
/// takes when at most `concurrency` run at once and each starts, in order, as soon as what it
/// waits for has finished and a slot is free: the way an evacuation starts them.
pub fn makespan(moves: &[(String, Vec<String>, u64)], concurrency: u32) -> u64 {
    let mut finished: std::collections::BTreeMap<&str, u64> = std::collections::BTreeMap::new();
    let mut running: Vec<(u64, &str)> = Vec::new();
    let mut waiting: Vec<&(String, Vec<String>, u64)> = moves.iter().collect();
    let mut now = 0;
    loop {
        let mut i = 0;
        while i < waiting.len() && running.len() < concurrency.max(1) as usize {
            let (name, deps, ms) = waiting[i];
            if deps.iter().all(|d| finished.get(d.as_str()).is_some_and(|t| *t <= now)) {
                running.push((now + ms, name.as_str()));
                waiting.remove(i);
            } else {
                i += 1;
            }
        }
        let Some(next) = running.iter().map(|(t, _)| *t).min() else { break };
        now = next;
        running.retain(|(t, name)| {
            if *t == now {
                finished.insert(name, now);
            }
            *t != now
        });
    }
    now
}

/// What a move of `group` is expected to take, by the plan's estimates: start-up, the verify
/// window, one TTL per ramp step below 100 %, the hold at 100 %, and the scale-down.
pub fn move_estimate_ms(state: &State, group: &str, cfg: &EngineConfig, estimates: &PlanEstimates) -> u64 {
    let Some(g) = state.groups.get(group) else { return 0 };
    let ttl_ms = u64::from(g.spec.ttl_s) * 1_000;
    let shifting = (g.spec.ramp.steps.len() as u64).saturating_sub(1) * ttl_ms;
    let hold = (ttl_ms + cfg.drain_ms).max(cfg.verify_window_ms);
    estimates.startup_ms + cfg.verify_window_ms + shifting + hold + estimates.scale_down_ms
}

/// How long an operation's current phase should take and how long the whole operation should
/// take, by the same estimates a plan prints: (phase budget, total), in ms. Time paused counts
/// in neither (the engine moves the phase start by it on resume).
pub fn budgets(
    state: &State,
    op: &crate::operation::Operation,
    cfg: &EngineConfig,
    estimates: &PlanEstimates,
) -> (u64, u64) {
    use crate::operation::Phase;
    let ttl_ms = state.groups.get(&op.group).map_or(0, |g| u64::from(g.spec.ttl_s) * 1_000);
    let of = |phase: Phase| match phase {
        Phase::AwaitingApproval => 0,
        Phase::ScalingUp => estimates.startup_ms,
        Phase::Verifying => cfg.verify_window_ms,
        Phase::Shifting => ttl_ms,
        Phase::Draining => (ttl_ms + cfg.drain_ms).max(cfg.verify_window_ms),
        Phase::ScalingDown => estimates.scale_down_ms,
        Phase::Done => 0,
    };
    let shifting = u64::from(op.ramp_steps().saturating_sub(1)) * of(Phase::Shifting);
    let total: u64 =
        [Phase::ScalingUp, Phase::Verifying, Phase::Draining, Phase::ScalingDown].into_iter().map(of).sum();
    let total = total + shifting;
    (of(op.phase), total)
}

/// The groups whose traffic is on `site`, in evacuation order: a group after every group it
/// depends on that is moving too, otherwise the most critical (lowest) tier first, then by
/// name. Groups that also take traffic elsewhere are listed too: the plan says why they cannot
/// move as one switchover. Err: a dependency cycle among them, naming its groups (they cannot
/// be ordered).
pub fn groups_on_site(state: &State, site: &str) -> Result<Vec<String>, Vec<String>> {
    let moving: Vec<String> = state
        .groups
        .values()
        .filter(|g| g.placement.active_sites().iter().any(|s| *s == site))
        .map(|g| g.spec.name.clone())
        .collect();
    let tier = |n: &str| state.groups.get(n).map_or(u32::MAX, |g| g.spec.tier);
    dependency_order(state, &moving, |n| (tier(n), n.to_string()))
}

/// `names` ordered so that a group comes after every group of `names` it depends on; among the
/// groups ready at each point, the smallest `key` first. Err: the groups caught in a
/// dependency cycle.
pub fn dependency_order<K: Ord>(
    state: &State,
    names: &[String],
    key: impl Fn(&str) -> K,
) -> Result<Vec<String>, Vec<String>> {
    let set: std::collections::BTreeSet<&str> = names.iter().map(String::as_str).collect();
    // Kahn's algorithm.
    let mut waiting: std::collections::BTreeMap<&str, Vec<&str>> = names
        .iter()
        .map(|n| {
            let deps = state.groups.get(n).map_or(&[][..], |g| g.spec.depends_on.as_slice());
            (n.as_str(), deps.iter().map(String::as_str).filter(|d| set.contains(d) && *d != n).collect())
        })
        .collect();
    let mut order = Vec::with_capacity(names.len());
    loop {
        let next = waiting.iter().filter(|(_, deps)| deps.is_empty()).map(|(n, _)| *n).min_by_key(|n| key(n));
        let Some(next) = next else { break };
        waiting.remove(next);
        for deps in waiting.values_mut() {
            deps.retain(|d| *d != next);
        }
        order.push(next.to_string());
    }
    if waiting.is_empty() { Ok(order) } else { Err(waiting.keys().map(|n| n.to_string()).collect()) }
}

/// The groups a move of `scope` takes, in the order it starts them. Err: a request naming
/// nothing to move, an unknown group or site, or groups that depend on each other in a cycle.
pub fn scope_order(state: &State, scope: &MoveScope, to: &str) -> Result<Vec<String>, Refusal> {
    let cycle = |cycle: Vec<String>| {
        Refusal::Invalid(format!("the groups cannot be ordered: {} depend on each other in a cycle", cycle.join(", ")))
    };
    match scope {
        MoveScope::Groups(groups) => {
            if groups.is_empty() {
                return Err(Refusal::Invalid("name at least one group to plan".into()));
            }
            if let Some(g) = groups.iter().find(|g| !state.groups.contains_key(*g)) {
                return Err(Refusal::UnknownGroup(g.clone()));
            }
            let mut seen = std::collections::BTreeSet::new();
            if let Some(g) = groups.iter().find(|g| !seen.insert(g.as_str())) {
                return Err(Refusal::Invalid(format!("group {g:?} is named twice")));
            }
            let position: std::collections::BTreeMap<&str, usize> =
                groups.iter().enumerate().map(|(i, g)| (g.as_str(), i)).collect();
            dependency_order(state, groups, |n| position.get(n).copied()).map_err(cycle)
        }
        MoveScope::Site(site) => {
            if !state.sites.contains_key(site) {
                return Err(Refusal::UnknownSite(site.clone()));
            }
            if site == to {
                return Err(Refusal::Invalid(format!("an evacuation of {site:?} needs another target site")));
            }
            let order = groups_on_site(state, site).map_err(cycle)?;
            if order.is_empty() {
                return Err(Refusal::Invalid(format!("no group takes traffic on {site:?}; nothing to evacuate")));
            }
            Ok(order)
        }
    }
}

fn free_on(state: &State, site: &str) -> Resources {
    state
        .reports
        .get(site)
        .map(|r| r.report.free())
        .unwrap_or_default()
        .saturating_sub(crate::engine::reserved_on(state, site, ""))
}

fn digest(plan: &MovePlan) -> String {
    // Not the free capacity: it moves with every cell report, while the plan stays the same.
    let body = serde_json::to_vec(&(&plan.to, &plan.groups, plan.go)).expect("plan serialises");
    let hash = Sha256::digest(&body);
    hash.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(name: &str, deps: &[&str], ms: u64) -> (String, Vec<String>, u64) {
        (name.to_string(), deps.iter().map(|d| d.to_string()).collect(), ms)
    }

    #[test]
    fn makespan_follows_dependencies_and_the_concurrency_limit() {
        let chain = [m("db", &[], 10), m("api", &["db"], 10), m("web", &["api"], 10)];
        assert_eq!(makespan(&chain, 4), 30, "a chain runs one after another");
        let five: Vec<_> = (0..5).map(|i| m(&format!("g{i}"), &[], 10)).collect();
        assert_eq!(makespan(&five, 2), 30, "five moves two at a time: three rounds");
        assert_eq!(makespan(&five, 5), 10);
        // web waits for db (20 ms); batch fills the second slot meanwhile.
        let mixed = [m("db", &[], 20), m("web", &["db"], 10), m("batch", &[], 25)];
        assert_eq!(makespan(&mixed, 2), 30);
        assert_eq!(makespan(&mixed, 1), 55);
        assert_eq!(makespan(&[], 4), 0);
        // A cycle (refused before any plan) cannot hang it.
        assert_eq!(makespan(&[m("a", &["b"], 5), m("b", &["a"], 5)], 2), 0);
    }
}
