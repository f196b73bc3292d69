//! Decisions: whether a switchover may start (preflight), and what the next step of every
//! running operation is. Pure functions of the committed state and the time passed in; the
//! federator's executor turns the returned actions into Raft proposals.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::REPORT_FRESH_MS;
use crate::model::{AppName, Resources, SiteName, SiteState};
use crate::operation::{Operation, Outcome, Phase};
use crate::proposal::{Action, Proposal, Refusal};
use crate::state::State;

/// Timing knobs of the operation engine. Used only by the leader's decisions, never by `apply`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// How long every target instance must stay healthy before traffic moves.
    pub verify_window_ms: u64,
    /// Extra wait after the DNS TTL before the source is scaled down.
    pub drain_ms: u64,
    /// Scale-up plus verify must finish within this, or the switchover rolls back.
    pub scale_up_timeout_ms: u64,
    /// The source must report its instances stopped within this, or the operation needs attention.
    pub scale_down_timeout_ms: u64,
    /// The guard rails of automatic failover.
    pub guard: crate::dr::guard::GuardConfig,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            verify_window_ms: 3_000,
            drain_ms: 1_000,
            scale_up_timeout_ms: 180_000,
            scale_down_timeout_ms: 120_000,
            guard: Default::default(),
        }
    }
}

/// What a switchover will do, computed by preflight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SwitchoverPlan {
    pub from: SiteName,
    pub target_instances: BTreeMap<AppName, u32>,
    /// Of those, the instances the target does not run yet (what `reserved` pays for).
    pub missing: BTreeMap<AppName, u32>,
    pub reserved: Resources,
    pub target_free: Resources,
    pub target_report_age_ms: u64,
}

impl SwitchoverPlan {
    pub fn total_instances(&self) -> u32 {
        self.target_instances.values().sum()
    }
}

/// Capacity held on `site` that its cell has not yet allocated: each running operation's
/// reservation minus what the site's last committed report already shows of that group (those
/// instances are in the report's `allocated`, so counting both would refuse switchovers that
/// fit), plus what running evacuations hold there for groups not started yet. `except` is a
/// group whose own pending reservation is left out (the group being planned).
pub fn reserved_on(state: &State, site: &str, except: &str) -> Resources {
    let report = state.reports.get(site).map(|r| &r.report);
    let ops = state
        .operations
        .values()
        .filter(|o| o.is_running() && o.to == site)
        .map(|o| {
            let shown = match (report.and_then(|r| r.groups.get(&o.group)), state.groups.get(&o.group)) {
                (Some(gr), Some(g)) => {
                    let present = gr.apps.iter().map(|(app, a)| (app.clone(), a.instances.len() as u32)).collect();
                    g.demand(&present)
                }
                _ => Resources::default(),
            };
            o.reserved.saturating_sub(shown)
        })
        .fold(Resources::default(), Resources::plus);
    pending_evacuations(state, site, except).map(|g| g.reserved).fold(ops, Resources::plus)
}

/// The groups running evacuations into `site` hold capacity for and have not started yet.
fn pending_evacuations<'a>(
    state: &'a State,
    site: &'a str,
    except: &'a str,
) -> impl Iterator<Item = &'a crate::evacuation::EvacuationGroup> + 'a {
    state
        .evacuations
        .values()
        .filter(move |e| e.is_running() && e.to == site)
        .flat_map(|e| e.groups.iter())
        .filter(move |g| g.operation.is_none() && g.not_moved.is_none() && g.group != except)
}

/// One entry per instance that running operations into `site` still expect its cell to start
/// (their target counts minus what the site's last report shows of their groups), and that
/// running evacuations hold there for groups not started yet, with that instance's resources.
fn pending_instances(state: &State, site: &str, except: &str) -> Vec<Resources> {
    let report = state.reports.get(site).map(|r| &r.report);
    let mut out = Vec::new();
    for o in state.operations.values().filter(|o| o.is_running() && o.to == site) {
        let Some(g) = state.groups.get(&o.group) else { continue };
        let shown = report.and_then(|r| r.groups.get(&o.group));
        let missing: BTreeMap<AppName, u32> = o
            .target_instances
            .iter()
            .map(|(app, n)| {
                let present = shown.and_then(|s| s.apps.get(app)).map_or(0, |a| a.instances.len() as u32);
                (app.clone(), n.saturating_sub(present))
            })
            .collect();
        out.extend(g.instances_of(&missing));
    }
    for e in pending_evacuations(state, site, except) {
        if let Some(g) = state.groups.get(&e.group) {
            out.extend(g.instances_of(&e.instances));
        }
    }
    out
}

/// Best-fit decreasing: places each instance (largest first) on the node it leaves with the
/// least room (CPU, then memory; the first such node on a tie). A cell's scheduler may place
/// differently (constraints, spreading); this answers whether a placement exists as far as
/// sizes go. Err: an instance that fits on no node.
pub fn fits_on_nodes(nodes: Vec<Resources>, mut instances: Vec<Resources>) -> Result<(), Resources> {
    instances.sort_by_key(|r| std::cmp::Reverse((r.cpu_millis, r.mem_mib, r.disk_mib)));
    // Free space ordered as (cpu, mem, disk, node index): the least leftover is the first
    // entry at or above the instance's CPU that also has its memory and disk.
    let mut free: std::collections::BTreeSet<(u64, u64, u64, usize)> =
        nodes.iter().enumerate().map(|(i, r)| (r.cpu_millis, r.mem_mib, r.disk_mib, i)).collect();
    for instance in instances {
        let node = free
            .range((instance.cpu_millis, 0, 0, 0)..)
            .find(|(_, mem, disk, _)| *mem >= instance.mem_mib && *disk >= instance.disk_mib)
            .copied()
            .ok_or(instance)?;
        free.remove(&node);
        let (cpu, mem, disk, i) = node;
        free.insert((cpu - instance.cpu_millis, mem - instance.mem_mib, disk - instance.disk_mib, i));
    }
    Ok(())
}

/// Preflight of a planned switchover of `group` to `to` at leader time `at_ms`. Used both by the
/// API before proposing (to answer quickly) and by `apply` (authoritative, atomic with the
/// capacity reservation), so the two can never disagree.
pub fn plan_switchover(state: &State, group: &str, to: &str, at_ms: u64) -> Result<SwitchoverPlan, Refusal> {
    plan_switchover_for(state, group, to, at_ms, None)
}

/// [`plan_switchover`] on behalf of `holder`: the evacuation that holds the group's lock may
/// start its switchover (its own pending reservation is not counted against it).
pub fn plan_switchover_for(
    state: &State,
    group: &str,
    to: &str,
    at_ms: u64,
    holder: Option<&str>,
) -> Result<SwitchoverPlan, Refusal> {
    let g = state.groups.get(group).ok_or_else(|| Refusal::UnknownGroup(group.to_string()))?;
    let site = state.sites.get(to).ok_or_else(|| Refusal::UnknownSite(to.to_string()))?;
    if let Some(op) = &g.operation
        && holder != Some(op.as_str())
    {
        return Err(Refusal::GroupBusy { group: group.to_string(), operation: op.clone() });
    }
    let active = g.placement.active_sites();
    let from = match active.as_slice() {
        [one] => (*one).clone(),
        _ => {
            return Err(Refusal::NoSingleSource {
                group: group.to_string(),
                active: active.into_iter().cloned().collect(),
            });
        }
    };
    if from == to {
        return Err(Refusal::AlreadyActive { group: group.to_string(), site: to.to_string() });
    }
    state.check_not_frozen(group, &[from.as_str(), to], at_ms)?;
    if site.state != SiteState::Active {
        return Err(Refusal::SiteNotActive { site: to.to_string(), state: site.state.as_str().to_string() });
    }
    let record = state.reports.get(to);
    let age = record.map(|r| r.age_ms(at_ms));
    let fresh = match (record, age) {
        (Some(r), Some(age)) if age <= REPORT_FRESH_MS => r,
        _ => {
            return Err(Refusal::NoFreshReport {
                site: to.to_string(),
                age: age.map_or("never".to_string(), |a| format!("{a} ms ago")),
            });
        }
    };
    let source = g.placement.share(&from);
    let target = g.placement.share(to);
    let target_instances: BTreeMap<AppName, u32> =
        g.spec.apps.iter().map(|a| (a.name.clone(), source.instances.get(&a.name).copied().unwrap_or(0))).collect();
    // Only the instances the target does not run yet need new capacity.
    let missing: BTreeMap<AppName, u32> = target_instances
        .iter()
        .map(|(app, n)| (app.clone(), n.saturating_sub(target.instances.get(app).copied().unwrap_or(0))))
        .collect();
    let needed = g.demand(&missing);
    let free = fresh.report.free().saturating_sub(reserved_on(state, to, group));
    if !needed.fits_in(free) {
        return Err(Refusal::InsufficientCapacity { site: to.to_string(), group: group.to_string(), needed, free });
    }
    // Enough in total is not enough: every instance must fit on one node, next to the
    // instances other running operations have reserved there.
    let nodes: Vec<Resources> = fresh
        .report
        .nodes
        .iter()
        .filter(|n| n.healthy && !n.unschedulable)
        .map(|n| n.capacity.saturating_sub(n.allocated))
        .collect();
    let mut instances = pending_instances(state, to, group);
    instances.extend(g.instances_of(&missing));
    if let Err(instance) = fits_on_nodes(nodes.clone(), instances) {
        let largest = nodes.iter().copied().max_by_key(|r| (r.cpu_millis, r.mem_mib, r.disk_mib)).unwrap_or_default();
        return Err(Refusal::Fragmented { site: to.to_string(), group: group.to_string(), instance, free, largest });
    }
    Ok(SwitchoverPlan {
        from,
        target_instances,
        missing,
        reserved: needed,
        target_free: free,
        target_report_age_ms: age.unwrap_or(0),
    })
}

/// Checks a proposal against the committed state without changing anything. `Ok` does not
/// promise that `apply` will accept it (the state may change first), only that it would now.
pub fn validate(state: &State, proposal: &Proposal) -> Result<(), Refusal> {
    match &proposal.action {
        Action::StartSwitchover { group, to, reason, .. } => {
            if reason.len() > 1024 {
                return Err(Refusal::Invalid("reason is longer than 1024 bytes".into()));
            }
            plan_switchover(state, group, to, proposal.at_ms).map(|_| ())
        }
        Action::ScaleApp { group, app, site, instances, .. } => {
            state.check_scale(group, app, site, *instances, proposal.at_ms)
        }
        Action::Autoscale { site, group, app, from, to, .. } => {
            state.check_autoscale(&proposal.actor, site, group, app, *from, *to, proposal.at_ms)
        }
        Action::UpdateGroup { spec, reason } => {
            if reason.len() > 1024 {
                return Err(Refusal::Invalid("reason is longer than 1024 bytes".into()));
            }
            state.plan_group_update(spec, proposal.at_ms).map(|_| ())
        }
        _ => Ok(()),
    }
}

enum Progress {
    Ready(String),
    Waiting(String),
}

/// Whether `site` runs `want` healthy instances of the operation's group at the group's current
/// placement epoch, according to the last committed report.
fn target_progress(state: &State, op: &Operation, now_ms: u64) -> Progress {
    let Some(g) = state.groups.get(&op.group) else { return Progress::Waiting("group vanished".into()) };
    let Some(record) = state.reports.get(&op.to) else {
        return Progress::Waiting(format!("no report from {}'s cell yet", op.to));
    };
    if record.age_ms(now_ms) > REPORT_FRESH_MS {
        return Progress::Waiting(format!("{}'s cell last reported {} ms ago", op.to, record.age_ms(now_ms)));
    }
    let Some(gr) = record.report.groups.get(&op.group) else {
        return Progress::Waiting(format!("{}'s cell does not report group {} yet", op.to, op.group));
    };
    if gr.applied_epoch < g.placement.epoch {
        return Progress::Waiting(format!(
            "{}'s cell has applied epoch {} of {}, not {} yet",
            op.to, gr.applied_epoch, op.group, g.placement.epoch
        ));
    }
    let mut waiting = Vec::new();
    let mut total = 0;
    for (app, want) in &op.target_instances {
        let report = gr.apps.get(app);
        let healthy = report.map_or(0, |a| a.healthy());
        total += want;
        if healthy < *want {
            let blocker = report.map(|a| a.blocker.as_str()).filter(|b| !b.is_empty());
            waiting.push(match blocker {
                Some(b) => format!("{app}: {healthy}/{want} healthy ({b})"),
                None => format!("{app}: {healthy}/{want} healthy"),
            });
        }
    }
    if waiting.is_empty() {
        Progress::Ready(format!("{total}/{total} instances healthy on {}", op.to))
    } else {
        Progress::Waiting(format!("on {}: {}", op.to, waiting.join(", ")))
    }
}

/// Whether the source has stopped every instance of the group at the current epoch.
fn source_progress(state: &State, op: &Operation, now_ms: u64) -> Progress {
    let Some(g) = state.groups.get(&op.group) else { return Progress::Waiting("group vanished".into()) };
    let Some(record) = state.reports.get(&op.from) else {
        return Progress::Waiting(format!("no report from {}'s cell", op.from));
    };
    if record.age_ms(now_ms) > REPORT_FRESH_MS {
        return Progress::Waiting(format!("{}'s cell last reported {} ms ago", op.from, record.age_ms(now_ms)));
    }
    let keep = g.placement.share(&op.from).total_instances();
    match record.report.groups.get(&op.group) {
        Some(gr) if gr.applied_epoch < g.placement.epoch => Progress::Waiting(format!(
            "{}'s cell has applied epoch {} of {}, not {} yet",
            op.from, gr.applied_epoch, op.group, g.placement.epoch
        )),
        // A failback keeps the site it leaves as it was before the failover (a warm standby).
        Some(gr) if gr.present() > keep => Progress::Waiting(format!(
            "{} instances still present on {}{}",
            gr.present(),
            op.from,
            if keep > 0 { format!(" ({keep} stay as its standby)") } else { String::new() }
        )),
        _ if keep > 0 => Progress::Ready(format!("{} down to its standby of {keep}", op.from)),
        _ => Progress::Ready(format!("no instances left on {}", op.from)),
    }
}

fn ttl_ms(state: &State, op: &Operation) -> u64 {
    state.groups.get(&op.group).map_or(0, |g| u64::from(g.spec.ttl_s) * 1000)
}

/// How long all traffic stays on the target before the source scales down: a TTL plus the
/// drain time (cached answers expire), and at least the verify window.
pub fn hold_at_full_ms(state: &State, op: &Operation, cfg: &EngineConfig) -> u64 {
    (ttl_ms(state, op) + cfg.drain_ms).max(cfg.verify_window_ms)
}

/// The target's health against the group's ramp budget while traffic moves.
enum RampHealth {
    Within(String),
    Breach(String),
    /// No fresh report: neither advance nor revert.
    Unknown(String),
}

fn ramp_health(state: &State, op: &Operation, now_ms: u64) -> RampHealth {
    let Some(g) = state.groups.get(&op.group) else { return RampHealth::Unknown("group vanished".into()) };
    let Some(record) = state.reports.get(&op.to).filter(|r| r.age_ms(now_ms) <= REPORT_FRESH_MS) else {
        return RampHealth::Unknown(format!("no fresh report from {}'s cell", op.to));
    };
    let report = record.report.groups.get(&op.group);
    let mut breaches = Vec::new();
    let mut healthy_total = 0;
    for (app, want) in &op.target_instances {
        let healthy = report.and_then(|r| r.apps.get(app)).map_or(0, |a| a.healthy());
        let need = g.spec.ramp.required_healthy(*want);
        healthy_total += healthy;
        if healthy < need {
            breaches.push(format!("{app}: {healthy}/{want} healthy on {}, budget needs {need}", op.to));
        }
    }
    if breaches.is_empty() {
        RampHealth::Within(format!("{healthy_total} healthy on {}", op.to))
    } else {
        RampHealth::Breach(breaches.join(", "))
    }
}

/// The next step of one running operation, if any is due.
fn next_step(state: &State, op: &Operation, now_ms: u64, cfg: &EngineConfig) -> Option<Action> {
    let advance =
        |to: Phase, detail: String| Action::AdvanceOperation { id: op.id.clone(), from: op.phase, to, detail };
    let fail = |error: String| Action::FailOperation { id: op.id.clone(), at: op.phase, error };
    let shift = |to_step: u32, detail: String| Action::ShiftTraffic {
        id: op.id.clone(),
        from_step: op.ramp_step,
        to_step,
        detail,
    };
    let split = |step: u32| {
        let p = op.ramp_percent(step);
        format!("weights {} {} / {} {p}", op.from, 100 - p, op.to)
    };
    let in_phase_ms = now_ms.saturating_sub(op.phase_started_at_ms);
    if op.kind == crate::operation::OperationKind::Failover {
        // No verify window or ramp: the source is down, the target takes over once it runs.
        let scale_up_ms = now_ms.saturating_sub(op.scale_up_started_at_ms);
        return match (op.phase, target_progress(state, op, now_ms)) {
            (Phase::ScalingUp, Progress::Ready(detail)) => match &op.promotion {
                None => Some(advance(Phase::Done, detail)),
                // A stateful group's replica is promoted only once the old primary cannot write.
                Some(p) => crate::dr::guard::may_promote(state, op, p, now_ms)
                    .ok()
                    .map(|why| advance(Phase::Done, format!("{detail}; {why}; replica promoted"))),
            },
            (Phase::ScalingUp, Progress::Waiting(why)) if scale_up_ms >= cfg.scale_up_timeout_ms && op.is_running() => {
                Some(fail(format!("target not healthy after {scale_up_ms} ms: {why}")))
            }
            _ => None,
        };
    }
    match op.phase {
        Phase::ScalingUp | Phase::Verifying => {
            let progress = target_progress(state, op, now_ms);
            let scale_up_ms = now_ms.saturating_sub(op.scale_up_started_at_ms);
            match (op.phase, progress) {
                (Phase::ScalingUp, Progress::Ready(detail)) => Some(advance(Phase::Verifying, detail)),
                (Phase::Verifying, Progress::Ready(detail)) if in_phase_ms >= cfg.verify_window_ms => {
                    Some(shift(1, format!("{detail} for {in_phase_ms} ms; {}", split(1))))
                }
                (_, Progress::Ready(_)) => None,
                (_, Progress::Waiting(why)) if scale_up_ms >= cfg.scale_up_timeout_ms => {
                    Some(fail(format!("target not healthy after {scale_up_ms} ms: {why}")))
                }
                (Phase::Verifying, Progress::Waiting(why)) => {
                    Some(advance(Phase::ScalingUp, format!("verify interrupted: {why}")))
                }
                (_, Progress::Waiting(_)) => None,
            }
        }
        Phase::Shifting | Phase::Draining => match ramp_health(state, op, now_ms) {
            RampHealth::Unknown(_) => None,
            RampHealth::Breach(why) => {
                let back = op.ramp_step.saturating_sub(1);
                Some(shift(back, format!("health breach ({why}); back to {}", split(back))))
            }
            RampHealth::Within(detail) if op.phase == Phase::Shifting => {
                let hold = ttl_ms(state, op);
                let next = op.ramp_step + 1;
                (in_phase_ms >= hold)
                    .then(|| shift(next, format!("{detail}, held {in_phase_ms} ms (TTL {hold} ms); {}", split(next))))
            }
            RampHealth::Within(detail) => {
                let wait = hold_at_full_ms(state, op, cfg);
                (in_phase_ms >= wait).then(|| {
                    advance(
                        Phase::ScalingDown,
                        format!("{detail} at 100% for {in_phase_ms} ms (hold {wait} ms); scaling {} down", op.from),
                    )
                })
            }
        },
        Phase::ScalingDown => match source_progress(state, op, now_ms) {
            Progress::Ready(detail) => Some(advance(Phase::Done, detail)),
            // Already flagged: keep waiting for the source to report, never fail twice.
            Progress::Waiting(_) if op.outcome == Outcome::NeedsAttention => None,
            Progress::Waiting(why) if in_phase_ms >= cfg.scale_down_timeout_ms => {
                Some(fail(format!("source not scaled down after {in_phase_ms} ms: {why}")))
            }
            Progress::Waiting(_) => None,
        },
        // Only a second person moves it on (`ApproveOperation`), or an abort.
        Phase::AwaitingApproval | Phase::Done => None,
    }
}

/// What rolling back `op` takes, in order: abort it while it still holds its group (which, if
/// traffic never moved, already puts the target back), then, if traffic had moved, a
/// make-before-break switchover back to its source. Refused when there is nothing to undo.
pub fn rollback_actions(op: &Operation, reason: &str) -> Result<Vec<Action>, Refusal> {
    if reason.trim().is_empty() {
        return Err(Refusal::Invalid("a reason is required to roll back an operation".into()));
    }
    // Mid-ramp, the abort below puts all traffic back on the source: nothing to move back.
    let traffic_moved = op.traffic_shifted_at_ms.is_some() && !(op.holds_group() && op.phase == Phase::Shifting);
    let mut out = Vec::new();
    if op.holds_group() {
        out.push(Action::ControlOperation {
            id: op.id.clone(),
            control: crate::proposal::Control::Abort,
            reason: format!("rollback: {reason}"),
        });
    } else if !traffic_moved {
        return Err(Refusal::Invalid(format!(
            "operation {} ended {} before traffic moved; {} is already where it found it",
            op.id,
            op.outcome.as_str(),
            op.group
        )));
    }
    if traffic_moved {
        out.push(Action::StartSwitchover {
            group: op.group.clone(),
            to: op.from.clone(),
            reason: format!("rollback of {}: {reason}", op.id),
            plan: String::new(),
            rollback_of: op.id.clone(),
        });
    }
    Ok(out)
}

/// The steps due now for every running operation, in operation-id order. Level-triggered:
/// it looks only at the committed state, so calling it twice proposes the same steps, and
/// `apply` ignores a step whose phase has already moved on.
pub fn decide(state: &State, now_ms: u64, cfg: &EngineConfig) -> Vec<Action> {
    decide_with(state, now_ms, cfg, &Default::default())
}

/// [`decide`], knowing the sites some observer currently sees unhealthy (never a failover
/// target).
pub fn decide_with(
    state: &State,
    now_ms: u64,
    cfg: &EngineConfig,
    suspect: &std::collections::BTreeSet<String>,
) -> Vec<Action> {
    let mut out: Vec<Action> = state
        .operations
        .values()
        .filter(|o| o.holds_group() && o.paused.is_none())
        .filter_map(|op| next_step(state, op, now_ms, cfg))
        .collect();
    out.extend(crate::drill::due(state, now_ms).into_iter().map(|id| Action::StartDrill { id }));
    out.extend(crate::dr::decide(state, suspect, now_ms, &cfg.guard));
    for evac in state.evacuations.values().filter(|e| e.is_running()) {
        out.extend(
            crate::evacuation::steps(state, evac, now_ms)
                .into_iter()
                .map(|step| Action::EvacuationStep { id: evac.id.clone(), step }),
        );
    }
    out
}

/// What a running operation waits for, for status displays; empty when nothing.
pub fn operation_blocker(state: &State, op: &Operation, now_ms: u64, cfg: &EngineConfig) -> String {
    if !op.holds_group() {
        return op.error.clone().unwrap_or_default();
    }
    if let Some(p) = &op.paused {
        return format!("paused by {} {} ms ago: {}", p.actor, now_ms.saturating_sub(p.at_ms), p.reason);
    }
    let in_phase_ms = now_ms.saturating_sub(op.phase_started_at_ms);
    match op.phase {
        Phase::AwaitingApproval => {
            format!("waiting {in_phase_ms} ms for approval by someone other than {}", op.actor)
        }
        Phase::ScalingUp => match (target_progress(state, op, now_ms), &op.promotion) {
            (Progress::Waiting(why), _) => format!("waiting for target: {why}"),
            (Progress::Ready(_), Some(p)) => crate::dr::guard::may_promote(state, op, p, now_ms)
                .err()
                .map(|why| format!("replica ready; promotion waits: {why}"))
                .unwrap_or_default(),
            (Progress::Ready(_), None) => String::new(),
        },
        Phase::Verifying => {
            format!("verify window: {in_phase_ms} of {} ms healthy", cfg.verify_window_ms)
        }
        Phase::Shifting | Phase::Draining => {
            let (percent, hold, what) = if op.phase == Phase::Shifting {
                (op.ramp_percent(op.ramp_step), ttl_ms(state, op), "ramp step held")
            } else {
                (100, hold_at_full_ms(state, op, cfg), "draining at 100%")
            };
            let step = format!("step {} of {} ({percent}% on {})", op.ramp_step, op.ramp_steps(), op.to);
            match ramp_health(state, op, now_ms) {
                RampHealth::Unknown(why) => format!("{step}: target health unknown ({why}); holding"),
                RampHealth::Breach(why) => format!("{step}: health breach ({why}); reverting"),
                RampHealth::Within(_) => format!("{step}: {what} {in_phase_ms} of {hold} ms"),
            }
        }
        Phase::ScalingDown => match source_progress(state, op, now_ms) {
            Progress::Waiting(why) => format!("waiting for source: {why}"),
            Progress::Ready(_) => String::new(),
        },
        Phase::Done => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Best-fit decreasing by a plain scan: the definition `fits_on_nodes` must match.
    fn by_scan(mut nodes: Vec<Resources>, mut instances: Vec<Resources>) -> Result<Vec<Resources>, Resources> {
        instances.sort_by_key(|r| std::cmp::Reverse((r.cpu_millis, r.mem_mib, r.disk_mib)));
        for instance in instances {
            let node = nodes
                .iter_mut()
                .filter(|free| instance.fits_in(**free))
                .min_by_key(|free| {
                    let left = free.saturating_sub(instance);
                    (left.cpu_millis, left.mem_mib, left.disk_mib)
                })
                .ok_or(instance)?;
            *node = node.saturating_sub(instance);
        }
        Ok(nodes)
    }

    #[test]
    fn the_indexed_best_fit_decides_exactly_as_the_plain_scan() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for _ in 0..2_000 {
            let r = |next: &mut dyn FnMut(u64) -> u64, scale: u64| Resources {
                cpu_millis: next(8) * scale,
                mem_mib: next(8) * scale,
                disk_mib: next(3) * scale,
            };
            let nodes: Vec<Resources> = (0..1 + next(6)).map(|_| r(&mut next, 4)).collect();
            let instances: Vec<Resources> = (0..next(10)).map(|_| r(&mut next, 2)).collect();
            let expected = by_scan(nodes.clone(), instances.clone()).map(|_| ());
            assert_eq!(fits_on_nodes(nodes.clone(), instances.clone()), expected, "{nodes:?} {instances:?}");
        }
    }
}
