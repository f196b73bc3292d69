//! What automatic failover of a failed site may do, rule by rule: the global brake, freezes,
//! per-group cooldown, rate limits (slower when many sites are sick), and capacity on the
//! survivors, reserved as the groups are taken in tier order. A group with nowhere to go keeps
//! its placement (never all sites off). Every refusal names its rule. Pure: the committed state, the declared and suspect sites, the
//! automation history and the time come in as arguments.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::REPORT_FRESH_MS;
use crate::engine::{fits_on_nodes, reserved_on};
use crate::model::{AppName, FailoverMode, Resources, SiteState};
use crate::operation::{Operation, Promotion};
use crate::state::State;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GuardConfig {
    /// The brake trips when more than this percentage of sites is declared down at once.
    pub brake_sites_percent: u32,
    /// The brake trips when more than this percentage of groups is declared down (each at one
    /// site) at once.
    pub brake_groups_percent: u32,
    /// The brake trips when more than this many automatic failovers would have happened
    /// within `failover_window_ms`.
    pub max_failovers: u32,
    pub failover_window_ms: u64,
    /// After an automatic action on a group, no further automatic action on it for this long.
    pub cooldown_ms: u64,
    /// Automatic failovers started per minute.
    pub rate_per_minute: u32,
    /// The slower rate once `sick_sites_for_secondary` or more sites are down or suspect.
    pub secondary_rate_per_minute: u32,
    pub sick_sites_for_secondary: u32,
    /// Automatic failovers in flight at once (across all failed sites); more wait their turn.
    pub max_concurrent: u32,
}

impl Default for GuardConfig {
    fn default() -> Self {
        Self {
            brake_sites_percent: 50,
            brake_groups_percent: 50,
            max_failovers: 50,
            failover_window_ms: 600_000,
            cooldown_ms: 600_000,
            rate_per_minute: 60,
            secondary_rate_per_minute: 10,
            sick_sites_for_secondary: 2,
            max_concurrent: 25,
        }
    }
}

/// The rule that stopped (or held back) a group's failover.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rule {
    Brake,
    Freeze,
    Cooldown,
    RateLimit,
    /// Another operation holds the group.
    Busy,
    Capacity,
    NoFeasibleTarget,
    /// The group's failover policy is manual: only a human fails it over.
    Manual,
    /// A stateful group with no replica within its RPO budget.
    Rpo,
}

impl Rule {
    pub const ALL: [Rule; 9] = [
        Rule::Brake,
        Rule::Freeze,
        Rule::Cooldown,
        Rule::RateLimit,
        Rule::Busy,
        Rule::Capacity,
        Rule::NoFeasibleTarget,
        Rule::Manual,
        Rule::Rpo,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Rule::Brake => "brake",
            Rule::Freeze => "freeze",
            Rule::Cooldown => "cooldown",
            Rule::RateLimit => "rate-limit",
            Rule::Busy => "busy",
            Rule::Capacity => "capacity",
            Rule::NoFeasibleTarget => "no-feasible-target",
            Rule::Manual => "manual",
            Rule::Rpo => "rpo",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    pub group: String,
    pub rule: Rule,
    pub detail: String,
}

/// One group's failover: traffic to `to` (first, when it is a warm standby already running
/// instances; after scaling up, when cold), the failed site fenced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverMove {
    pub group: String,
    pub tier: u32,
    pub from: String,
    pub to: String,
    /// The target already runs all the instances it needs.
    pub warm: bool,
    /// Capacity reserved on the target for the instances it still has to start.
    pub reserved: Resources,
}

/// Automatic actions taken so far, as the committed history records them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutomationHistory {
    /// Why the brake holds, when it does (only a human releases it).
    pub brake: Option<String>,
    /// (time, group) of every automatic failover started.
    pub failovers: Vec<(u64, String)>,
    /// Failovers started and not finished.
    pub in_flight: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverDecision {
    pub moves: Vec<FailoverMove>,
    pub held: Vec<Held>,
    /// Set when this decision trips the brake: nothing moves, and the reason is recorded.
    pub trip_brake: Option<String>,
}

/// What automatic failover of `failed` may do at `now_ms`. `down` are the sites declared down
/// (including `failed`), `suspect` the sites some observer sees unhealthy: neither is a target.
/// With `break_glass` (a human's audited override) the brake, cooldowns and rate limits do not
/// apply; freezes and capacity still do.
#[allow(clippy::too_many_arguments)]
pub fn decide(
    state: &State,
    failed: &str,
    down: &BTreeSet<String>,
    suspect: &BTreeSet<String>,
    history: &AutomationHistory,
    now_ms: u64,
    cfg: &GuardConfig,
    break_glass: bool,
) -> FailoverDecision {
    let mut out = FailoverDecision::default();
    // A site declared down takes all its groups; otherwise only the groups declared down there.
    let site_down = down.contains(failed);
    let mut groups: Vec<&crate::model::AppGroup> = state
        .groups
        .values()
        .filter(|g| g.placement.active_sites().iter().any(|s| *s == failed))
        .filter(|g| {
            site_down || state.down_groups.get(&g.spec.name).is_some_and(|d| d.site == failed && d.is_current(now_ms))
        })
        .collect();
    groups.sort_by(|a, b| (a.spec.tier, &a.spec.name).cmp(&(b.spec.tier, &b.spec.name)));
    let hold_all = |rule: Rule, detail: &str, out: &mut FailoverDecision| {
        out.held.extend(groups.iter().map(|g| Held { group: g.spec.name.clone(), rule, detail: detail.to_string() }));
    };
    if let Some(why) = history.brake.as_ref().filter(|_| !break_glass) {
        hold_all(
            Rule::Brake,
            &format!("automation is braked ({why}); a human must run fedctl brake release"),
            &mut out,
        );
        return out;
    }
    let sites = state.sites.len().max(1);
    if !break_glass && down.len() * 100 > sites * cfg.brake_sites_percent as usize {
        let why = format!(
            "{} of {} sites declared down at once ({}), more than {}%",
            down.len(),
            sites,
            down.iter().cloned().collect::<Vec<_>>().join(", "),
            cfg.brake_sites_percent
        );
        hold_all(Rule::Brake, &why, &mut out);
        out.trip_brake = Some(why);
        return out;
    }
    let recent = |window: u64| history.failovers.iter().filter(|(t, _)| now_ms.saturating_sub(*t) < window).count();
    if !break_glass && recent(cfg.failover_window_ms) + groups.len() > cfg.max_failovers as usize {
        let why = format!(
            "{} automatic failovers in the last {} s plus {} more wanted, more than {}",
            recent(cfg.failover_window_ms),
            cfg.failover_window_ms / 1000,
            groups.len(),
            cfg.max_failovers
        );
        hold_all(Rule::Brake, &why, &mut out);
        out.trip_brake = Some(why);
        return out;
    }
    let sick = down.union(suspect).count() as u32;
    let rate = if sick >= cfg.sick_sites_for_secondary { cfg.secondary_rate_per_minute } else { cfg.rate_per_minute };
    let mut budget = if break_glass { usize::MAX } else { (rate as usize).saturating_sub(recent(60_000)) };
    let mut slots =
        if break_glass { usize::MAX } else { (cfg.max_concurrent as usize).saturating_sub(history.in_flight) };
    let last_action: BTreeMap<&str, u64> = history.failovers.iter().map(|(t, g)| (g.as_str(), *t)).collect();
    let declaration = state.down_sites.get(failed);
    // A human declared the site down: groups whose policy is manual go too.
    let by_human = declaration.is_some_and(|d| d.manual.is_some());
    let accept_data_loss = declaration.is_some_and(|d| d.accept_data_loss);
    // Capacity taken by the moves decided so far, per target: totals and instances.
    let mut taken: BTreeMap<String, (Resources, Vec<Resources>)> = BTreeMap::new();
    for g in groups {
        let name = g.spec.name.as_str();
        let held = |rule: Rule, detail: String| Held { group: name.to_string(), rule, detail };
        if let Some((scope, f)) = state.freeze_on(name, &[failed], now_ms) {
            out.held.push(held(Rule::Freeze, format!("frozen ({scope}, by {}: {})", f.actor, f.reason)));
            continue;
        }
        if g.spec.failover.mode == FailoverMode::Manual && !by_human {
            out.held.push(held(
                Rule::Manual,
                format!("its failover policy is manual: a human runs fedctl failover --group {name}"),
            ));
            continue;
        }
        let cooldown_ms = g.spec.failover.cooldown_s.map_or(cfg.cooldown_ms, |s| s * 1000);
        if let Some(t) = last_action.get(name).filter(|t| !break_glass && now_ms.saturating_sub(**t) < cooldown_ms) {
            let left = cooldown_ms - now_ms.saturating_sub(*t);
            out.held.push(held(
                Rule::Cooldown,
                format!("failed over {} s ago; cooldown has {} s left", (now_ms - t) / 1000, left / 1000),
            ));
            continue;
        }
        if g.operation.is_some() {
            out.held
                .push(held(Rule::Busy, format!("operation {} holds the group", g.operation.as_deref().unwrap_or(""))));
            continue;
        }
        // Another site already takes its traffic: fencing the failed one is all it needs.
        let others: Vec<&String> = g.placement.active_sites().into_iter().filter(|s| *s != failed).collect();
        if let Some(other) = others.iter().find(|s| !down.contains(s.as_str())) {
            out.moves.push(FailoverMove {
                group: name.to_string(),
                tier: g.spec.tier,
                from: failed.to_string(),
                to: other.to_string(),
                warm: true,
                reserved: Resources::default(),
            });
            continue;
        }
        let Target { warm, site, fit: Fit { needed, instances, .. } } =
            match choose_target(state, g, failed, down, suspect, now_ms, &taken, accept_data_loss) {
                Ok(target) => target,
                Err((rule, detail)) => {
                    out.held.push(held(rule, detail));
                    continue;
                }
            };
        if budget == 0 {
            out.held.push(held(
                Rule::RateLimit,
                format!("at most {rate} automatic failovers a minute ({sick} sites sick)"),
            ));
            continue;
        }
        if slots == 0 {
            out.held.push(held(
                Rule::RateLimit,
                format!("{} automatic failovers in flight, the most allowed at once", cfg.max_concurrent),
            ));
            continue;
        }
        budget -= 1;
        slots -= 1;
        let entry = taken.entry(site.clone()).or_default();
        entry.0 = entry.0.plus(needed);
        entry.1.extend(instances);
        out.moves.push(FailoverMove {
            group: name.to_string(),
            tier: g.spec.tier,
            from: failed.to_string(),
            to: site.clone(),
            warm,
            reserved: needed,
        });
    }
    out
}

/// Whether `site` can take over `g` from `failed` now, next to what other failovers decided in
/// the same round have `taken` there.
pub(crate) struct Fit {
    pub warm: bool,
    pub free: Resources,
    pub needed: Resources,
    pub instances: Vec<Resources>,
}

pub(crate) fn fit(
    state: &State,
    g: &crate::model::AppGroup,
    failed: &str,
    site: &str,
    now_ms: u64,
    taken_total: Resources,
    taken_instances: &[Resources],
) -> Result<Fit, String> {
    let Some(report) = state.reports.get(site).filter(|r| r.age_ms(now_ms) <= REPORT_FRESH_MS) else {
        return Err(format!("{site}: no fresh report"));
    };
    let source = g.placement.share(failed);
    let target = g.placement.share(site);
    let missing: BTreeMap<AppName, u32> = g
        .spec
        .apps
        .iter()
        .map(|a| {
            let want = source.instances.get(&a.name).copied().unwrap_or(0);
            (a.name.clone(), want.saturating_sub(target.instances.get(&a.name).copied().unwrap_or(0)))
        })
        .collect();
    let needed = g.demand(&missing);
    let free = report.report.free().saturating_sub(reserved_on(state, site, "")).saturating_sub(taken_total);
    let mut instances = taken_instances.to_vec();
    instances.extend(g.instances_of(&missing));
    let nodes: Vec<Resources> = report
        .report
        .nodes
        .iter()
        .filter(|n| n.healthy && !n.unschedulable)
        .map(|n| n.capacity.saturating_sub(n.allocated))
        .collect();
    if !needed.fits_in(free) || fits_on_nodes(nodes, instances).is_err() {
        return Err(format!("{site}: needs {needed}, has {free} free"));
    }
    Ok(Fit { warm: missing.values().all(|n| *n == 0), free, needed, instances: g.instances_of(&missing) })
}

/// Where a group leaving `failed` goes: a warm standby first, then the site with the most
/// free CPU left, then by name; among active sites that are neither down nor suspect and have
/// room next to what this round has `taken`. Err: the rule that holds it, and why.
pub(crate) struct Target {
    pub warm: bool,
    pub site: String,
    pub fit: Fit,
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn choose_target(
    state: &State,
    g: &crate::model::AppGroup,
    failed: &str,
    down: &BTreeSet<String>,
    suspect: &BTreeSet<String>,
    now_ms: u64,
    taken: &BTreeMap<String, (Resources, Vec<Resources>)>,
    accept_data_loss: bool,
) -> Result<Target, (Rule, String)> {
    let candidates: Vec<&String> = state
        .sites
        .iter()
        .filter(|(n, s)| *n != failed && s.state == SiteState::Active && !down.contains(*n) && !suspect.contains(*n))
        .map(|(n, _)| n)
        .collect();
    if candidates.is_empty() {
        return Err((
            Rule::NoFeasibleTarget,
            format!(
                "no surviving site can take it (down: {}; suspect: {}); it keeps its placement, never all sites off",
                list(down),
                list(suspect)
            ),
        ));
    }
    let mut fits: Vec<(bool, u64, &String, Fit)> = Vec::new();
    let mut why_not = Vec::new();
    let mut beyond_rpo = Vec::new();
    for site in candidates {
        if !accept_data_loss && let Err(why) = within_rpo(state, g, site) {
            beyond_rpo.push(why);
            continue;
        }
        let (taken_total, taken_instances) = taken.get(site.as_str()).cloned().unwrap_or_default();
        match fit(state, g, failed, site, now_ms, taken_total, &taken_instances) {
            Ok(f) => fits.push((f.warm, f.free.cpu_millis, site, f)),
            Err(why) => why_not.push(why),
        }
    }
    fits.sort_by(|a, b| (!a.0, std::cmp::Reverse(a.1), a.2).cmp(&(!b.0, std::cmp::Reverse(b.1), b.2)));
    let Some((warm, _, site, fit)) = fits.into_iter().next() else {
        if why_not.is_empty() && !beyond_rpo.is_empty() {
            return Err((
                Rule::Rpo,
                format!(
                    "no replica within the RPO budget ({}); it keeps its placement unless a human fails it over with --accept-data-loss",
                    beyond_rpo.join("; ")
                ),
            ));
        }
        why_not.extend(beyond_rpo);
        return Err((Rule::Capacity, format!("no survivor has room ({}); it keeps its placement", why_not.join("; "))));
    };
    Ok(Target { warm, site: site.clone(), fit })
}

/// The replication lag `site`'s cell last reported for `group`'s replica there.
pub fn replica_lag(state: &State, group: &str, site: &str) -> Option<u64> {
    state.reports.get(site)?.report.groups.get(group)?.replication_lag_ms
}

/// Whether a stateful group's replica at `site` is within the group's RPO budget (a group
/// that is not stateful always is). Err: why not.
pub fn within_rpo(state: &State, g: &crate::model::AppGroup, site: &str) -> Result<(), String> {
    let Some(p) = &g.spec.failover.stateful else {
        return Ok(());
    };
    let budget = p.rpo_s * 1000;
    match replica_lag(state, &g.spec.name, site) {
        Some(lag) if lag <= budget => Ok(()),
        Some(lag) => Err(format!("{site}: replica {lag} ms behind, RPO budget {budget} ms")),
        None => {
            Err(format!("{site}: no replica lag reported, so the RPO budget of {budget} ms cannot be shown to hold"))
        }
    }
}

/// Whether a stateful group's failover may promote its target at `now_ms`: the old site is
/// fenced (its cell has applied the failover's epoch since it started) or the old primary's
/// lease has run out (`lease_ms` after its cell's last report). Ok: which; Err: what it waits
/// for.
pub fn may_promote(state: &State, op: &Operation, p: &Promotion, now_ms: u64) -> Result<String, String> {
    let record = state.reports.get(&op.from);
    if let Some(r) = record
        && r.received_at_ms >= op.created_at_ms
        && r.report.groups.get(&op.group).is_some_and(|g| g.applied_epoch >= p.fence_epoch)
    {
        return Ok(format!("{} fenced: its cell applied epoch {}", op.from, p.fence_epoch));
    }
    let last = record.map_or(op.created_at_ms, |r| r.received_at_ms.min(now_ms));
    let expires = last + p.lease_ms;
    if now_ms >= expires {
        return Ok(format!(
            "{}'s lease ran out: last report {} ms ago, lease {} ms",
            op.from,
            now_ms - last,
            p.lease_ms
        ));
    }
    Err(format!(
        "{} not fenced (its cell has not applied epoch {}) and its lease runs {} ms more",
        op.from,
        p.fence_epoch,
        expires - now_ms
    ))
}

fn list(sites: &BTreeSet<String>) -> String {
    if sites.is_empty() { "none".into() } else { sites.iter().cloned().collect::<Vec<_>>().join(", ") }
}
