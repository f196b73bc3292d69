//! The autoscaling configuration of one app and its validation.
//!
//! Specs arrive as JSON or TOML from operators; unknown fields are rejected, and `validate`
//! reports every problem at once so a bad spec is fixed in one round trip.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use super::metrics::Metric;

/// Minutes in a day; `end_minute` may equal it (a window running to midnight).
pub const MINUTES_PER_DAY: u16 = 1_440;
/// Bounds on what a spec may hold, so that evaluation stays cheap and reasons stay readable.
pub const MAX_SCHEDULE_WINDOWS: usize = 64;
pub const MAX_FUSED_MEMBERS: usize = 16;
pub const MAX_POLICY_DEPTH: usize = 4;

const MS_PER_DAY: u64 = 86_400_000;
const MS_PER_MINUTE: u64 = 60_000;

fn default_sample_interval_ms() -> u64 {
    10_000
}

fn default_min_samples() -> u32 {
    5
}

fn default_weight() -> f64 {
    1.0
}

/// How one app is autoscaled.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoscaleSpec {
    /// At least 1: the autoscaler never scales an app to zero (suspending is an operator act).
    pub min_instances: u32,
    pub max_instances: u32,
    /// The most instances one decision may add.
    pub max_step_up: u32,
    /// The most instances one decision may remove.
    pub max_step_down: u32,
    /// Time after a scale-up before the next scale-up.
    pub cooldown_up_ms: u64,
    /// Time after any scale change before a scale-down.
    pub cooldown_down_ms: u64,
    /// How often the app's metrics are collected; sizes "how many samples a window holds".
    #[serde(default = "default_sample_interval_ms")]
    pub sample_interval_ms: u64,
    pub policy: Policy,
}

/// The four policy kinds of the production autoscaler: timed (schedule), threshold, trend
/// (forecast) and fused (a combination of the others).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Policy {
    Timed(TimedPolicy),
    Threshold(ThresholdPolicy),
    Trend(TrendPolicy),
    Fused(FusedPolicy),
}

impl Policy {
    pub fn kind(&self) -> &'static str {
        match self {
            Policy::Timed(_) => "timed",
            Policy::Threshold(_) => "threshold",
            Policy::Trend(_) => "trend",
            Policy::Fused(_) => "fused",
        }
    }
}

/// A schedule of desired instance counts; outside every window it has no opinion.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimedPolicy {
    pub windows: Vec<ScheduleWindow>,
}

/// `[start_minute, end_minute)` of each listed day, UTC. When `end_minute < start_minute` the
/// window crosses midnight: it starts on a listed day and ends on the following day, so
/// `friday 22:00-02:00` covers Friday 22:00 to Saturday 02:00 (and Sunday's runs into Monday).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleWindow {
    pub days: BTreeSet<Weekday>,
    /// 0..=1439.
    pub start_minute: u16,
    /// 0..=1440, different from `start_minute`.
    pub end_minute: u16,
    pub instances: u32,
}

impl ScheduleWindow {
    /// Whether the window applies at `minute` (of the day) on `day`.
    pub fn covers(&self, day: Weekday, minute: u16) -> bool {
        if self.start_minute < self.end_minute {
            self.days.contains(&day) && (self.start_minute..self.end_minute).contains(&minute)
        } else {
            (self.days.contains(&day) && minute >= self.start_minute)
                || (self.days.contains(&day.previous()) && minute < self.end_minute)
        }
    }

    /// The window as half-open intervals of minute-of-week (Monday 00:00 is 0), wrapping
    /// Sunday night into Monday morning.
    fn week_intervals(&self) -> Vec<(u32, u32)> {
        const WEEK: u32 = 7 * MINUTES_PER_DAY as u32;
        let (s, e) = (u32::from(self.start_minute), u32::from(self.end_minute));
        let mut out = Vec::new();
        for day in &self.days {
            let base = day.index() * u32::from(MINUTES_PER_DAY);
            let (start, end) =
                if s < e { (base + s, base + e) } else { (base + s, base + u32::from(MINUTES_PER_DAY) + e) };
            if end > WEEK {
                out.push((start, WEEK));
                out.push((0, end - WEEK));
            } else {
                out.push((start, end));
            }
        }
        out
    }
}

/// Day of the week, UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Weekday {
    #[serde(alias = "mon")]
    Monday,
    #[serde(alias = "tue")]
    Tuesday,
    #[serde(alias = "wed")]
    Wednesday,
    #[serde(alias = "thu")]
    Thursday,
    #[serde(alias = "fri")]
    Friday,
    #[serde(alias = "sat")]
    Saturday,
    #[serde(alias = "sun")]
    Sunday,
}

impl Weekday {
    const ALL: [Weekday; 7] = [
        Weekday::Monday,
        Weekday::Tuesday,
        Weekday::Wednesday,
        Weekday::Thursday,
        Weekday::Friday,
        Weekday::Saturday,
        Weekday::Sunday,
    ];

    /// Monday is 0.
    pub fn index(self) -> u32 {
        self as u32
    }

    pub fn previous(self) -> Weekday {
        Weekday::ALL[(self.index() as usize + 6) % 7]
    }

    /// The UTC weekday of an instant. 1970-01-01 was a Thursday.
    pub fn at(now_ms: u64) -> Weekday {
        Weekday::ALL[((now_ms / MS_PER_DAY + 3) % 7) as usize]
    }
}

impl fmt::Display for Weekday {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Weekday::Monday => "monday",
            Weekday::Tuesday => "tuesday",
            Weekday::Wednesday => "wednesday",
            Weekday::Thursday => "thursday",
            Weekday::Friday => "friday",
            Weekday::Saturday => "saturday",
            Weekday::Sunday => "sunday",
        };
        f.write_str(name)
    }
}

/// The UTC minute of the day of an instant (0..=1439).
pub fn minute_of_day(now_ms: u64) -> u16 {
    ((now_ms % MS_PER_DAY) / MS_PER_MINUTE) as u16
}

/// Scale when a metric's recent average leaves its band.
///
/// Up: the mean of the samples in the last `sustain_ms` is above `upper`. Down: every sample
/// of the last `sustain_ms` is below `lower` and the samples cover the whole period.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThresholdPolicy {
    pub bounds: BTreeMap<Metric, Bounds>,
    pub sustain_ms: u64,
    pub step_up: Step,
    pub step_down: Step,
}

/// A metric's band. A metric without `lower` never asks for fewer instances (response time
/// being low says nothing about over-provisioning); one without `upper` never asks for more.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bounds {
    #[serde(default)]
    pub upper: Option<f64>,
    #[serde(default)]
    pub lower: Option<f64>,
}

/// How far a threshold policy moves: `{ absolute = 2 }` or `{ percent = 50 }` of the current
/// count, rounded up, at least one instance.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Absolute(u32),
    Percent(f64),
}

impl Step {
    pub fn instances(self, current: u32) -> u32 {
        match self {
            Step::Absolute(n) => n,
            Step::Percent(p) => ceil_to_u32(f64::from(current) * p / 100.0).max(1),
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Absolute(n) => write!(f, "{n}"),
            Step::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// Forecast `metric` at `now + horizon_ms` by least squares over the last `window_ms`, and ask
/// for `ceil(current * forecast / target)` instances (the proportional rule of the module docs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrendPolicy {
    pub metric: Metric,
    /// The per-instance value to stay at or under, e.g. 80 concurrent requests or 0.7 CPU.
    pub target: f64,
    pub window_ms: u64,
    pub horizon_ms: u64,
    /// Fewer usable samples in the window than this and the policy has no opinion.
    #[serde(default = "default_min_samples")]
    pub min_samples: u32,
}

/// Several policies combined by one rule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FusedPolicy {
    pub rule: FuseRule,
    pub members: Vec<FusedMember>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FusedMember {
    pub policy: Policy,
    /// Used by `FuseRule::Weighted` only.
    #[serde(default = "default_weight")]
    pub weight: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FuseRule {
    /// The highest recommendation: the most conservative for availability.
    Max,
    /// The weighted mean of the members that have an opinion, rounded up.
    Weighted,
    /// The first member, in order, that has an opinion.
    Priority,
}

impl fmt::Display for FuseRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FuseRule::Max => "max",
            FuseRule::Weighted => "weighted",
            FuseRule::Priority => "priority",
        })
    }
}

/// `ceil`, forgiving float noise just above an integer (`3 * 0.7 / 0.7` must stay 3), and
/// saturating at the ends of `u32` (a NaN counts as 0; callers never pass one).
pub(crate) fn ceil_to_u32(x: f64) -> u32 {
    let c = (x - 1e-9).ceil();
    if c.is_nan() || c <= 0.0 {
        0
    } else if c >= f64::from(u32::MAX) {
        u32::MAX
    } else {
        c as u32
    }
}

/// One thing wrong with a spec; `at` is the path of the offending part, e.g.
/// `policy.members[1]`.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum SpecError {
    #[error("min_instances {min} is above max_instances {max}")]
    MinAboveMax { min: u32, max: u32 },
    #[error("min_instances is 0: the autoscaler never scales an app to zero; suspend the app instead")]
    MinZero,
    #[error("{field} is 0: no decision could move in that direction; allow at least 1 or freeze the app")]
    StepLimitZero { field: &'static str },
    #[error("sample_interval_ms is 0: set it to the metric collection interval, e.g. 10000")]
    SampleIntervalZero,
    #[error("{at}: the schedule is empty: a timed policy needs at least one window")]
    EmptySchedule { at: String },
    #[error("{at}: {count} schedule windows exceed the limit of {limit}")]
    TooManyWindows { at: String, count: usize, limit: usize },
    #[error("{at}.windows[{window}]: no days of the week; list at least one, e.g. [\"monday\"]")]
    NoDays { at: String, window: usize },
    #[error("{at}.windows[{window}]: {field} {value} is out of range; minutes of the day run 0..={max}")]
    MinuteOutOfRange { at: String, window: usize, field: &'static str, value: u16, max: u16 },
    #[error(
        "{at}.windows[{window}]: start_minute equals end_minute ({minute}), an empty window; \
         use start_minute 0 and end_minute 1440 for a whole day"
    )]
    EmptyWindow { at: String, window: usize, minute: u16 },
    #[error(
        "{at}: windows[{first}] and windows[{second}] overlap on {day} at {:02}:{:02} UTC; \
         at most one window may apply at a time", .minute / 60, .minute % 60
    )]
    WindowsOverlap { at: String, first: usize, second: usize, day: Weekday, minute: u16 },
    #[error("{at}.windows[{window}]: wants {instances} instances, outside [min_instances {min}, max_instances {max}]")]
    WindowOutsideBounds { at: String, window: usize, instances: u32, min: u32, max: u32 },
    #[error("{at}: no metric bounds; a threshold policy needs at least one metric with an upper or lower bound")]
    NoBounds { at: String },
    #[error("{at}.bounds.{metric}: neither upper nor lower is set")]
    EmptyBounds { at: String, metric: Metric },
    #[error(
        "{at}.bounds.{metric}: lower {lower} is not below upper {upper}; \
         the band between them is where the policy holds steady"
    )]
    LowerNotBelowUpper { at: String, metric: Metric, lower: f64, upper: f64 },
    #[error("{at}.{field} is {value}; it must be a positive finite number")]
    NotPositive { at: String, field: String, value: f64 },
    #[error("{at}.{field} is {value}; it must be a finite number, 0 or more")]
    Negative { at: String, field: String, value: f64 },
    #[error(
        "{at}.{field} is {value}, but {metric} is a fraction of requested resources in (0, 1]; \
         did you mean {}?", .value / 100.0
    )]
    UtilizationAsPercent { at: String, field: String, metric: Metric, value: f64 },
    #[error("{at}.{field} is an absolute step of 0, which never scales; use at least 1")]
    ZeroStep { at: String, field: &'static str },
    #[error(
        "{at}.sustain_ms {sustain_ms} holds fewer than two samples at sample_interval_ms \
         {sample_interval_ms}; use at least {}", 2 * .sample_interval_ms
    )]
    SustainTooShort { at: String, sustain_ms: u64, sample_interval_ms: u64 },
    #[error("{at}.min_samples is {min_samples}; a line needs at least 2 samples")]
    MinSamplesTooLow { at: String, min_samples: u32 },
    #[error(
        "{at}.window_ms {window_ms} holds only {} samples at sample_interval_ms {sample_interval_ms}, \
         fewer than min_samples {min_samples}; use at least {}",
        .window_ms / .sample_interval_ms, u64::from(*.min_samples) * .sample_interval_ms
    )]
    TrendWindowTooShort { at: String, window_ms: u64, sample_interval_ms: u64, min_samples: u32 },
    #[error("{at}: no members; a fused policy combines at least one policy")]
    NoMembers { at: String },
    #[error("{at}: {count} members exceed the limit of {limit}")]
    TooManyMembers { at: String, count: usize, limit: usize },
    #[error("{at}: policies nest {depth} levels deep; at most {limit} are allowed")]
    TooDeep { at: String, depth: usize, limit: usize },
}

/// Every problem of a spec.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("invalid autoscale spec: {}", join(.problems))]
pub struct InvalidSpec {
    pub problems: Vec<SpecError>,
}

fn join(problems: &[SpecError]) -> String {
    problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

impl AutoscaleSpec {
    /// Checks the whole spec and reports every problem found.
    pub fn validate(&self) -> Result<(), InvalidSpec> {
        let mut problems = Vec::new();
        if self.min_instances == 0 {
            problems.push(SpecError::MinZero);
        }
        if self.min_instances > self.max_instances {
            problems.push(SpecError::MinAboveMax { min: self.min_instances, max: self.max_instances });
        }
        if self.max_step_up == 0 {
            problems.push(SpecError::StepLimitZero { field: "max_step_up" });
        }
        if self.max_step_down == 0 {
            problems.push(SpecError::StepLimitZero { field: "max_step_down" });
        }
        if self.sample_interval_ms == 0 {
            problems.push(SpecError::SampleIntervalZero);
        }
        self.check_policy(&self.policy, "policy", 1, &mut problems);
        if problems.is_empty() { Ok(()) } else { Err(InvalidSpec { problems }) }
    }

    fn check_policy(&self, policy: &Policy, at: &str, depth: usize, out: &mut Vec<SpecError>) {
        match policy {
            Policy::Timed(p) => self.check_timed(p, at, out),
            Policy::Threshold(p) => self.check_threshold(p, at, out),
            Policy::Trend(p) => self.check_trend(p, at, out),
            Policy::Fused(p) => {
                if depth >= MAX_POLICY_DEPTH {
                    out.push(SpecError::TooDeep { at: at.to_string(), depth: depth + 1, limit: MAX_POLICY_DEPTH });
                    return;
                }
                if p.members.is_empty() {
                    out.push(SpecError::NoMembers { at: at.to_string() });
                }
                if p.members.len() > MAX_FUSED_MEMBERS {
                    out.push(SpecError::TooManyMembers {
                        at: at.to_string(),
                        count: p.members.len(),
                        limit: MAX_FUSED_MEMBERS,
                    });
                }
                for (i, m) in p.members.iter().enumerate() {
                    let member_at = format!("{at}.members[{i}]");
                    positive(&member_at, "weight", m.weight, out);
                    self.check_policy(&m.policy, &format!("{member_at}.policy"), depth + 1, out);
                }
            }
        }
    }

    fn check_timed(&self, p: &TimedPolicy, at: &str, out: &mut Vec<SpecError>) {
        if p.windows.is_empty() {
            out.push(SpecError::EmptySchedule { at: at.to_string() });
        }
        if p.windows.len() > MAX_SCHEDULE_WINDOWS {
            out.push(SpecError::TooManyWindows {
                at: at.to_string(),
                count: p.windows.len(),
                limit: MAX_SCHEDULE_WINDOWS,
            });
        }
        let mut well_formed = Vec::new();
        for (i, w) in p.windows.iter().enumerate() {
            let before = out.len();
            if w.days.is_empty() {
                out.push(SpecError::NoDays { at: at.to_string(), window: i });
            }
            if w.start_minute >= MINUTES_PER_DAY {
                out.push(SpecError::MinuteOutOfRange {
                    at: at.to_string(),
                    window: i,
                    field: "start_minute",
                    value: w.start_minute,
                    max: MINUTES_PER_DAY - 1,
                });
            }
            if w.end_minute > MINUTES_PER_DAY {
                out.push(SpecError::MinuteOutOfRange {
                    at: at.to_string(),
                    window: i,
                    field: "end_minute",
                    value: w.end_minute,
                    max: MINUTES_PER_DAY,
                });
            }
            if w.start_minute == w.end_minute {
                out.push(SpecError::EmptyWindow { at: at.to_string(), window: i, minute: w.start_minute });
            }
            if out.len() == before {
                well_formed.push(i);
            }
            if w.instances < self.min_instances || w.instances > self.max_instances {
                out.push(SpecError::WindowOutsideBounds {
                    at: at.to_string(),
                    window: i,
                    instances: w.instances,
                    min: self.min_instances,
                    max: self.max_instances,
                });
            }
        }
        // Overlaps are only meaningful between windows that are themselves well formed.
        let intervals: Vec<(usize, Vec<(u32, u32)>)> =
            well_formed.iter().map(|&i| (i, p.windows[i].week_intervals())).collect();
        for (a, (first, ia)) in intervals.iter().enumerate() {
            for (second, ib) in &intervals[a + 1..] {
                let overlap = ia
                    .iter()
                    .flat_map(|x| ib.iter().map(move |y| (x, y)))
                    .filter(|(x, y)| x.0 < y.1 && y.0 < x.1)
                    .map(|(x, y)| x.0.max(y.0))
                    .min();
                if let Some(minute_of_week) = overlap {
                    let day = Weekday::ALL[(minute_of_week / u32::from(MINUTES_PER_DAY)) as usize];
                    let minute = (minute_of_week % u32::from(MINUTES_PER_DAY)) as u16;
                    out.push(SpecError::WindowsOverlap {
                        at: at.to_string(),
                        first: *first,
                        second: *second,
                        day,
                        minute,
                    });
                }
            }
        }
    }

    fn check_threshold(&self, p: &ThresholdPolicy, at: &str, out: &mut Vec<SpecError>) {
        if p.bounds.is_empty() {
            out.push(SpecError::NoBounds { at: at.to_string() });
        }
        for (&metric, b) in &p.bounds {
            let bounds_at = format!("{at}.bounds.{metric}");
            if b.upper.is_none() && b.lower.is_none() {
                out.push(SpecError::EmptyBounds { at: at.to_string(), metric });
            }
            let mut ok = true;
            if let Some(upper) = b.upper {
                ok &= positive(&bounds_at, "upper", upper, out);
                ok &= fraction(&bounds_at, "upper", metric, upper, out);
            }
            if let Some(lower) = b.lower {
                if !(lower.is_finite() && lower >= 0.0) {
                    out.push(SpecError::Negative { at: bounds_at.clone(), field: "lower".into(), value: lower });
                    ok = false;
                }
                ok &= fraction(&bounds_at, "lower", metric, lower, out);
            }
            if let (true, Some(lower), Some(upper)) = (ok, b.lower, b.upper)
                && lower >= upper
            {
                out.push(SpecError::LowerNotBelowUpper { at: at.to_string(), metric, lower, upper });
            }
        }
        for (field, step) in [("step_up", p.step_up), ("step_down", p.step_down)] {
            match step {
                Step::Absolute(0) => out.push(SpecError::ZeroStep { at: at.to_string(), field }),
                Step::Absolute(_) => {}
                Step::Percent(pct) => {
                    positive(at, &format!("{field}.percent"), pct, out);
                }
            }
        }
        if self.sample_interval_ms > 0 && p.sustain_ms / self.sample_interval_ms < 2 {
            out.push(SpecError::SustainTooShort {
                at: at.to_string(),
                sustain_ms: p.sustain_ms,
                sample_interval_ms: self.sample_interval_ms,
            });
        }
    }

    fn check_trend(&self, p: &TrendPolicy, at: &str, out: &mut Vec<SpecError>) {
        if positive(at, "target", p.target, out) {
            fraction(at, "target", p.metric, p.target, out);
        }
        if p.min_samples < 2 {
            out.push(SpecError::MinSamplesTooLow { at: at.to_string(), min_samples: p.min_samples });
        } else if self.sample_interval_ms > 0 && p.window_ms / self.sample_interval_ms < u64::from(p.min_samples) {
            out.push(SpecError::TrendWindowTooShort {
                at: at.to_string(),
                window_ms: p.window_ms,
                sample_interval_ms: self.sample_interval_ms,
                min_samples: p.min_samples,
            });
        }
    }
}

fn positive(at: &str, field: &str, value: f64, out: &mut Vec<SpecError>) -> bool {
    let ok = value.is_finite() && value > 0.0;
    if !ok {
        out.push(SpecError::NotPositive { at: at.to_string(), field: field.to_string(), value });
    }
    ok
}

/// Utilisation bounds above 1 are almost always percentages typed by mistake.
fn fraction(at: &str, field: &str, metric: Metric, value: f64, out: &mut Vec<SpecError>) -> bool {
    let ok = !(metric.is_utilization() && value > 1.0);
    if !ok {
        out.push(SpecError::UtilizationAsPercent { at: at.to_string(), field: field.to_string(), metric, value });
    }
    ok
}
