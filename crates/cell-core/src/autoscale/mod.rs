//! Autoscaling: how many instances an app should run, from its metrics and its policy.
//!
//! Four policy kinds, as in the production autoscaler this reproduces: **timed** (a weekly
//! schedule of instance counts), **threshold** (scale by a step when a metric's recent average
//! leaves its band), **trend** (forecast a metric by a least-squares line and size for the
//! forecast) and **fused** (combine the others by max, weighted mean or priority), over
//! concurrency, response time, CPU and memory utilisation.
//!
//! [`decide`] turns the policy's recommendation into a decision: clamped to
//! `[min_instances, max_instances]`, at most `max_step_up`/`max_step_down` per decision, after the
//! cooldowns, never while the federator has frozen the app. It is pure and level-triggered: the
//! caller passes the current count, the recent samples, when it last scaled and the time, and
//! applies the returned target (recording `now_ms` in [`ScalingHistory`] when it changed).
//!
//! **The proportional rule.** Metric values are per instance (see [`Metric`]), so if `n`
//! instances carry a per-instance load `v`, the same total load on `n'` instances is
//! `v * n / n'`; keeping that at or under `target` needs `n' = ceil(n * v / target)`. The trend
//! policy applies it to its forecast. For concurrency and utilisation this is how load spreads
//! behind a balancer; for response time it is an approximation (latency is not linear in load),
//! which is why threshold steps are usually the better fit for that metric.

mod metrics;
mod policy;
mod spec;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use metrics::{Metric, MetricWindow, Sample};
pub use spec::{
    AutoscaleSpec, Bounds, FuseRule, FusedMember, FusedPolicy, InvalidSpec, MAX_FUSED_MEMBERS, MAX_POLICY_DEPTH,
    MAX_SCHEDULE_WINDOWS, MINUTES_PER_DAY, Policy, ScheduleWindow, SpecError, Step, ThresholdPolicy, TimedPolicy,
    TrendPolicy, Weekday, minute_of_day,
};

use policy::{Context, Opinion, secs};

/// When the app last scaled, in milliseconds since the Unix epoch; `None` if never (or longer
/// ago than the caller remembers).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScalingHistory {
    pub last_up_ms: Option<u64>,
    pub last_down_ms: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    Up,
    Down,
    None,
}

/// What to do, why, and the numbers behind it (for the audit record).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// The instance count to run; equal to the current count when `change` is `None`.
    pub target: u32,
    pub change: Change,
    pub reason: String,
    /// Inputs and intermediate values: `current`, `min`, `max`, `recommended`, per-policy
    /// averages, slopes and forecasts under keys such as `threshold.cpu_utilization.mean` or
    /// `members[1].trend.concurrency.forecast`.
    pub evidence: BTreeMap<String, f64>,
}

/// Decides the instance count of one app.
///
/// Rules, in order:
/// 1. An invalid spec never scales (the reason carries every problem).
/// 2. An app at 0 instances is suspended: an operator's state, left alone.
/// 3. A count outside `[min, max]` is moved to the nearest bound at once, regardless of
///    cooldowns and step limits: the bounds are the operator's hard limits.
/// 4. Otherwise the policy's recommendation is clamped to the bounds; no opinion holds.
/// 5. Up: only once `cooldown_up_ms` has passed since the last scale-up (a recent scale-down
///    never delays more capacity), by at most `max_step_up`.
/// 6. Down: only once `cooldown_down_ms` has passed since the last scale change of either
///    direction (going down right after going up is the flap to avoid), by at most
///    `max_step_down`.
/// 7. While `frozen`, nothing changes; the reason says what would have happened.
///
/// Conflicts between signals are resolved inside the policy: any threshold metric above its
/// band outvotes the others, and a fused `max` takes the highest recommendation.
pub fn decide(
    spec: &AutoscaleSpec,
    current_instances: u32,
    metrics: &BTreeMap<Metric, MetricWindow>,
    history: &ScalingHistory,
    frozen: bool,
    now_ms: u64,
) -> Decision {
    let current = current_instances;
    let mut evidence = BTreeMap::new();
    evidence.insert("current".to_string(), f64::from(current));
    let hold = |reason: String, evidence| Decision { target: current, change: Change::None, reason, evidence };

    if let Err(invalid) = spec.validate() {
        return hold(format!("not scaling: {invalid}"), evidence);
    }
    let (min, max) = (spec.min_instances, spec.max_instances);
    evidence.insert("min".to_string(), f64::from(min));
    evidence.insert("max".to_string(), f64::from(max));
    if current == 0 {
        return hold("not scaling: the app is suspended (0 instances); resume it to autoscale".to_string(), evidence);
    }

    let ctx = Context { current, metrics, now_ms, sample_interval_ms: spec.sample_interval_ms };
    let opinion = policy::evaluate(&spec.policy, &ctx, "", &mut evidence);
    if let Some(t) = opinion.target {
        evidence.insert("recommended".to_string(), f64::from(t));
    }
    let (target, reason) = plan(spec, current, &opinion, history, now_ms, &mut evidence);
    let change = direction(current, target);

    if frozen {
        let would = match change {
            Change::Up | Change::Down => format!("would have scaled {current} -> {target}"),
            Change::None => format!("would have held at {current}"),
        };
        evidence.insert("frozen".to_string(), 1.0);
        evidence.insert("would_target".to_string(), f64::from(target));
        return hold(format!("frozen by the federator; {would}: {reason}"), evidence);
    }
    evidence.insert("target".to_string(), f64::from(target));
    Decision { target, change, reason, evidence }
}

fn direction(current: u32, target: u32) -> Change {
    match target.cmp(&current) {
        std::cmp::Ordering::Greater => Change::Up,
        std::cmp::Ordering::Less => Change::Down,
        std::cmp::Ordering::Equal => Change::None,
    }
}

/// The target before the freeze is considered, and why.
fn plan(
    spec: &AutoscaleSpec,
    current: u32,
    opinion: &Opinion,
    history: &ScalingHistory,
    now_ms: u64,
    evidence: &mut BTreeMap<String, f64>,
) -> (u32, String) {
    let (min, max) = (spec.min_instances, spec.max_instances);
    let policy_said = &opinion.reason;
    if current < min || current > max {
        let bound = current.clamp(min, max);
        return (
            bound,
            format!(
                "{current} instances is outside [{min}, {max}]; moving to {bound} regardless of cooldown ({policy_said})"
            ),
        );
    }
    let Some(recommended) = opinion.target else {
        return (current, format!("holding at {current}: no opinion ({policy_said})"));
    };
    let desired = recommended.clamp(min, max);
    let clamp_note =
        if desired != recommended { format!(", clamped from {recommended} to [{min}, {max}]") } else { String::new() };

    if desired > current {
        if let Some(remaining_ms) = cooling(history.last_up_ms, spec.cooldown_up_ms, now_ms) {
            evidence.insert("cooldown_remaining_ms".to_string(), remaining_ms as f64);
            return (
                current,
                format!(
                    "holding at {current}: scale-up to {desired}{clamp_note} waits {} more for cooldown_up ({policy_said})",
                    secs(remaining_ms)
                ),
            );
        }
        let target = desired.min(current.saturating_add(spec.max_step_up));
        let step_note =
            if target < desired { format!(", limited to +{} per step", spec.max_step_up) } else { String::new() };
        (target, format!("scaling up {current} -> {target}{clamp_note}{step_note} ({policy_said})"))
    } else if desired < current {
        let last_change = history.last_up_ms.max(history.last_down_ms);
        if let Some(remaining_ms) = cooling(last_change, spec.cooldown_down_ms, now_ms) {
            evidence.insert("cooldown_remaining_ms".to_string(), remaining_ms as f64);
            return (
                current,
                format!(
                    "holding at {current}: scale-down to {desired}{clamp_note} waits {} more for cooldown_down \
                     since the last change ({policy_said})",
                    secs(remaining_ms)
                ),
            );
        }
        let target = desired.max(current.saturating_sub(spec.max_step_down));
        let step_note =
            if target > desired { format!(", limited to -{} per step", spec.max_step_down) } else { String::new() };
        (target, format!("scaling down {current} -> {target}{clamp_note}{step_note} ({policy_said})"))
    } else {
        (current, format!("holding at {current}{clamp_note} ({policy_said})"))
    }
}

/// Milliseconds left of a cooldown that started at `since_ms`, if it is still running.
fn cooling(since_ms: Option<u64>, cooldown_ms: u64, now_ms: u64) -> Option<u64> {
    let ends_ms = since_ms?.saturating_add(cooldown_ms);
    (now_ms < ends_ms).then(|| ends_ms - now_ms)
}
