//! What each policy kind recommends, before bounds, step limits, cooldowns and freezes.

use std::collections::BTreeMap;

use super::metrics::{LinearFit, Metric, MetricWindow, Sample};
use super::spec::{
    FuseRule, FusedPolicy, Policy, ThresholdPolicy, TimedPolicy, TrendPolicy, Weekday, ceil_to_u32, minute_of_day,
};

/// The inputs every policy sees.
pub(crate) struct Context<'a> {
    pub current: u32,
    pub metrics: &'a BTreeMap<Metric, MetricWindow>,
    pub now_ms: u64,
    pub sample_interval_ms: u64,
}

impl Context<'_> {
    /// Samples older than this make a metric stale: one missed collection is tolerated, two
    /// are not, because acting on old numbers is acting blind.
    fn stale_after_ms(&self) -> u64 {
        self.sample_interval_ms.saturating_mul(2)
    }

    /// The usable samples of `metric` in the last `span_ms`, or why there are none worth using.
    fn recent(&self, metric: Metric, span_ms: u64) -> Result<Vec<Sample>, String> {
        let Some(window) = self.metrics.get(&metric) else {
            return Err(format!("{metric}: no samples"));
        };
        let samples = window.usable(self.now_ms.saturating_sub(span_ms), self.now_ms);
        match samples.last() {
            None => Err(format!("{metric}: no samples in the last {}", secs(span_ms))),
            Some(newest) if self.now_ms - newest.t_ms > self.stale_after_ms() => Err(format!(
                "{metric}: stale, newest sample is {} old (collected every {})",
                secs(self.now_ms - newest.t_ms),
                secs(self.sample_interval_ms)
            )),
            Some(_) => Ok(samples),
        }
    }
}

/// A policy's recommendation: `target` is `None` when it has no opinion.
pub(crate) struct Opinion {
    pub target: Option<u32>,
    pub reason: String,
}

/// Evaluates `policy`; evidence keys are prefixed with `prefix` so fused members stay apart.
pub(crate) fn evaluate(
    policy: &Policy,
    ctx: &Context<'_>,
    prefix: &str,
    evidence: &mut BTreeMap<String, f64>,
) -> Opinion {
    match policy {
        Policy::Timed(p) => timed(p, ctx, prefix, evidence),
        Policy::Threshold(p) => threshold(p, ctx, prefix, evidence),
        Policy::Trend(p) => trend(p, ctx, prefix, evidence),
        Policy::Fused(p) => fused(p, ctx, prefix, evidence),
    }
}

fn timed(p: &TimedPolicy, ctx: &Context<'_>, prefix: &str, evidence: &mut BTreeMap<String, f64>) -> Opinion {
    let (day, minute) = (Weekday::at(ctx.now_ms), minute_of_day(ctx.now_ms));
    // Validation guarantees at most one window applies.
    match p.windows.iter().enumerate().find(|(_, w)| w.covers(day, minute)) {
        Some((i, w)) => {
            evidence.insert(format!("{prefix}timed.window"), i as f64);
            evidence.insert(format!("{prefix}timed.instances"), f64::from(w.instances));
            Opinion {
                target: Some(w.instances),
                reason: format!(
                    "timed: window {i} ({}-{} UTC) applies on {day} {} and wants {}",
                    hhmm(w.start_minute),
                    hhmm(w.end_minute),
                    hhmm(minute),
                    w.instances
                ),
            }
        }
        None => {
            Opinion { target: None, reason: format!("timed: no schedule window applies on {day} {} UTC", hhmm(minute)) }
        }
    }
}

/// How one metric of a threshold policy votes.
enum Vote {
    Up,
    Down,
    Hold,
    /// No usable data: the metric cannot vote, and it vetoes scaling down.
    Unknown,
}

fn threshold(p: &ThresholdPolicy, ctx: &Context<'_>, prefix: &str, evidence: &mut BTreeMap<String, f64>) -> Opinion {
    let mut votes = Vec::new();
    let mut notes = Vec::new();
    for (&metric, bounds) in &p.bounds {
        let key = |what: &str| format!("{prefix}threshold.{metric}.{what}");
        let samples = match ctx.recent(metric, p.sustain_ms) {
            Ok(s) if s.len() >= 2 => s,
            Ok(s) => {
                votes.push(Vote::Unknown);
                notes.push(format!("{metric}: {} sample(s) in the last {}, need 2", s.len(), secs(p.sustain_ms)));
                continue;
            }
            Err(why) => {
                votes.push(Vote::Unknown);
                notes.push(why);
                continue;
            }
        };
        let mean = samples.iter().map(|s| s.value).sum::<f64>() / samples.len() as f64;
        let max = samples.iter().map(|s| s.value).fold(f64::NEG_INFINITY, f64::max);
        evidence.insert(key("mean"), mean);
        evidence.insert(key("max"), max);
        evidence.insert(key("samples"), samples.len() as f64);
        let span = secs(p.sustain_ms);
        if let Some(upper) = bounds.upper
            && mean > upper
        {
            votes.push(Vote::Up);
            notes.push(format!("{metric} mean {} over {span} is above upper {upper}", num(mean)));
            continue;
        }
        match bounds.lower {
            Some(lower) if max < lower && covers_period(&samples, p.sustain_ms, ctx) => {
                votes.push(Vote::Down);
                notes.push(format!("{metric} stayed below lower {lower} for all of {span} (max {})", num(max)));
            }
            Some(lower) if mean < lower => {
                // Anti-flap: a low average is not enough, the whole period must be low.
                votes.push(Vote::Hold);
                notes.push(format!(
                    "{metric} mean {} is below lower {lower} but not for all of {span} (max {})",
                    num(mean),
                    num(max)
                ));
            }
            _ => {
                votes.push(Vote::Hold);
                notes.push(format!("{metric} mean {} over {span} is within its band", num(mean)));
            }
        }
    }

    let current = ctx.current;
    let any_up = votes.iter().any(|v| matches!(v, Vote::Up));
    let all_unknown = votes.iter().all(|v| matches!(v, Vote::Unknown));
    // Scaling down needs every metric that has a lower bound to agree, and no metric blind.
    let down_agreed = p.bounds.values().zip(&votes).all(|(b, v)| match v {
        Vote::Down => true,
        Vote::Hold => b.lower.is_none(),
        Vote::Up | Vote::Unknown => false,
    }) && votes.iter().any(|v| matches!(v, Vote::Down));
    let detail = notes.join("; ");
    let (target, verdict) = if any_up {
        let step = p.step_up.instances(current);
        let t = current.saturating_add(step);
        (Some(t), format!("up by {} to {t}", p.step_up))
    } else if down_agreed {
        let step = p.step_down.instances(current);
        let t = current.saturating_sub(step);
        (Some(t), format!("down by {} to {t}", p.step_down))
    } else if all_unknown {
        (None, "no opinion".to_string())
    } else {
        (Some(current), format!("hold at {current}"))
    };
    Opinion { target, reason: format!("threshold: {verdict} ({detail})") }
}

/// Whether the samples leave no hole in the last `period_ms`: the first is within one
/// collection interval of the period's start and no two are more than two intervals apart.
fn covers_period(samples: &[Sample], period_ms: u64, ctx: &Context<'_>) -> bool {
    let start_ms = ctx.now_ms.saturating_sub(period_ms);
    let first_ok = samples.first().is_some_and(|s| s.t_ms <= start_ms.saturating_add(ctx.sample_interval_ms));
    first_ok && samples.windows(2).all(|w| w[1].t_ms - w[0].t_ms <= ctx.stale_after_ms())
}

fn trend(p: &TrendPolicy, ctx: &Context<'_>, prefix: &str, evidence: &mut BTreeMap<String, f64>) -> Opinion {
    let metric = p.metric;
    let none = |why: String| Opinion { target: None, reason: format!("trend: no opinion ({why})") };
    let samples = match ctx.recent(metric, p.window_ms) {
        Ok(s) => s,
        Err(why) => return none(why),
    };
    if samples.len() < p.min_samples as usize {
        return none(format!(
            "{metric}: {} sample(s) in the last {}, need {}",
            samples.len(),
            secs(p.window_ms),
            p.min_samples
        ));
    }
    let Some(fit) = LinearFit::of(&samples, ctx.now_ms) else {
        return none(format!("{metric}: every sample has the same timestamp, no line fits"));
    };
    // A falling line may cross zero; no load is the least there can be.
    let forecast = fit.at(p.horizon_ms).max(0.0);
    if ctx.current == 0 {
        return none("no running instances to scale proportionally".to_string());
    }
    let wanted = ceil_to_u32(f64::from(ctx.current) * forecast / p.target);
    let key = |what: &str| format!("{prefix}trend.{metric}.{what}");
    evidence.insert(key("samples"), samples.len() as f64);
    evidence.insert(key("slope_per_s"), fit.slope_per_s);
    evidence.insert(key("level_now"), fit.level_now);
    evidence.insert(key("r2"), fit.r2);
    evidence.insert(key("forecast"), forecast);
    evidence.insert(key("target"), p.target);
    evidence.insert(key("wanted"), f64::from(wanted));
    Opinion {
        target: Some(wanted),
        reason: format!(
            "trend: {metric} now {} with slope {}/s forecasts {} in {}; {} instances x {} / target {} needs {wanted}",
            num(fit.level_now),
            num(fit.slope_per_s),
            num(forecast),
            secs(p.horizon_ms),
            ctx.current,
            num(forecast),
            p.target
        ),
    }
}

fn fused(p: &FusedPolicy, ctx: &Context<'_>, prefix: &str, evidence: &mut BTreeMap<String, f64>) -> Opinion {
    let opinions: Vec<Opinion> = p
        .members
        .iter()
        .enumerate()
        .map(|(i, m)| evaluate(&m.policy, ctx, &format!("{prefix}members[{i}]."), evidence))
        .collect();
    let with_opinion = || opinions.iter().enumerate().filter_map(|(i, o)| o.target.map(|t| (i, t)));
    let (target, verdict) = match p.rule {
        // Ties go to the earliest member so the reason is stable.
        FuseRule::Max => match with_opinion().max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0))) {
            Some((i, t)) => (Some(t), format!("{t} from members[{i}], the highest")),
            None => (None, "no member has an opinion".to_string()),
        },
        FuseRule::Priority => match with_opinion().next() {
            Some((i, t)) => (Some(t), format!("{t} from members[{i}], the first with an opinion")),
            None => (None, "no member has an opinion".to_string()),
        },
        FuseRule::Weighted => {
            let (sum, weights) = with_opinion()
                .map(|(i, t)| (p.members[i].weight * f64::from(t), p.members[i].weight))
                .fold((0.0, 0.0), |acc, x| (acc.0 + x.0, acc.1 + x.1));
            if weights > 0.0 {
                let mean = sum / weights;
                evidence.insert(format!("{prefix}fused.weighted_mean"), mean);
                let t = ceil_to_u32(mean);
                (Some(t), format!("{t}, the weighted mean {} rounded up", num(mean)))
            } else {
                (None, "no member has an opinion".to_string())
            }
        }
    };
    let members = opinions.iter().enumerate().map(|(i, o)| format!("[{i}] {}", o.reason)).collect::<Vec<_>>();
    Opinion { target, reason: format!("fused {}: {verdict} <- {}", p.rule, members.join(" | ")) }
}

pub(crate) fn hhmm(minute: u16) -> String {
    format!("{:02}:{:02}", minute / 60, minute % 60)
}

pub(crate) fn secs(ms: u64) -> String {
    if ms.is_multiple_of(1000) { format!("{} s", ms / 1000) } else { format!("{:.3} s", ms as f64 / 1000.0) }
}

/// Numbers in reasons: enough digits to audit, not float noise.
pub(crate) fn num(x: f64) -> String {
    let s = format!("{x:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".to_string() } else { s.to_string() }
}
