//! Decisions on recorded metric series. Times are fixed instants in January 2024 (UTC);
//! every series is written out so a failing case can be replayed by hand.

use std::collections::BTreeMap;

use super::*;

/// 2024-01-01 00:00 UTC, a Monday.
const MONDAY_MS: u64 = 1_704_067_200_000;
const DAY_MS: u64 = 86_400_000;
const HOUR_MS: u64 = 3_600_000;
const MINUTE_MS: u64 = 60_000;
const SECOND_MS: u64 = 1_000;

/// `day` 0 is Monday 2024-01-01.
fn at(day: u64, hh: u64, mm: u64) -> u64 {
    MONDAY_MS + day * DAY_MS + hh * HOUR_MS + mm * MINUTE_MS
}

/// A window of samples `interval_ms` apart whose last sample is at `end_ms`.
fn series(end_ms: u64, interval_ms: u64, values: &[f64]) -> MetricWindow {
    let n = values.len() as u64;
    MetricWindow::from_pairs(values.iter().enumerate().map(|(i, &v)| (end_ms - (n - 1 - i as u64) * interval_ms, v)))
}

fn metrics<const N: usize>(windows: [(Metric, MetricWindow); N]) -> BTreeMap<Metric, MetricWindow> {
    BTreeMap::from(windows)
}

/// Bounds 2..=20, generous steps, no cooldowns, 10 s collection: each test tightens what it tests.
fn spec(policy: Policy) -> AutoscaleSpec {
    AutoscaleSpec {
        min_instances: 2,
        max_instances: 20,
        max_step_up: 10,
        max_step_down: 10,
        cooldown_up_ms: 0,
        cooldown_down_ms: 0,
        sample_interval_ms: 10_000,
        policy,
    }
}

fn band(lower: f64, upper: f64) -> Bounds {
    Bounds { upper: Some(upper), lower: Some(lower) }
}

fn cpu_threshold() -> ThresholdPolicy {
    ThresholdPolicy {
        bounds: BTreeMap::from([(Metric::CpuUtilization, band(0.3, 0.8))]),
        sustain_ms: 60_000,
        step_up: Step::Absolute(2),
        step_down: Step::Absolute(1),
    }
}

fn concurrency_trend() -> TrendPolicy {
    TrendPolicy { metric: Metric::Concurrency, target: 80.0, window_ms: 600_000, horizon_ms: 300_000, min_samples: 5 }
}

fn window(days: &[Weekday], start: (u16, u16), end: (u16, u16), instances: u32) -> ScheduleWindow {
    ScheduleWindow {
        days: days.iter().copied().collect(),
        start_minute: start.0 * 60 + start.1,
        end_minute: end.0 * 60 + end.1,
        instances,
    }
}

const WEEKDAYS: [Weekday; 5] =
    [Weekday::Monday, Weekday::Tuesday, Weekday::Wednesday, Weekday::Thursday, Weekday::Friday];

fn ev(d: &Decision, key: &str) -> f64 {
    *d.evidence.get(key).unwrap_or_else(|| panic!("no evidence {key:?} in {:?}", d.evidence))
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-6
}

fn problems(spec: &AutoscaleSpec) -> Vec<SpecError> {
    spec.validate().expect_err("the spec is invalid").problems
}

// ---------------------------------------------------------------- recorded series

/// CPU of a web app around 10:00 on a Monday: calm, then a flash sale doubles load.
const CPU_SPIKE: [f64; 13] = [0.44, 0.46, 0.45, 0.47, 0.46, 0.48, 0.91, 0.95, 0.97, 0.96, 0.94, 0.98, 0.97];
/// One scrape caught a GC pause; the minute as a whole is calm.
const CPU_BLIP: [f64; 7] = [0.50, 0.52, 0.49, 0.51, 0.50, 0.99, 0.51];
/// Night traffic: well under the band for the whole minute and before.
const CPU_NIGHT: [f64; 9] = [0.14, 0.12, 0.15, 0.13, 0.12, 0.11, 0.14, 0.13, 0.12];
/// A batch job on the same hosts makes CPU flap around the lower bound.
const CPU_FLAPPING: [f64; 9] = [0.15, 0.34, 0.16, 0.35, 0.14, 0.36, 0.15, 0.33, 0.16];

/// Morning ramp of concurrency per instance: exactly 40 + 0.1/s over ten minutes, so the line
/// is known: slope 0.1/s, 100 at `now`, 130 five minutes later.
fn morning_ramp(now_ms: u64) -> MetricWindow {
    MetricWindow::from_pairs((0..=60u64).map(|i| (now_ms - 600_000 + i * 10_000, 40.0 + 0.1 * (i * 10) as f64)))
}

// ---------------------------------------------------------------- threshold

#[test]
fn threshold_scales_up_when_the_sustained_mean_is_above_upper() {
    let now = at(0, 10, 0);
    let m = metrics([(Metric::CpuUtilization, series(now, 10_000, &CPU_SPIKE))]);
    let d = decide(&spec(Policy::Threshold(cpu_threshold())), 6, &m, &ScalingHistory::default(), false, now);
    assert_eq!((d.change, d.target), (Change::Up, 8), "{}", d.reason);
    // Only the last minute counts: the seven samples from 0.91 on.
    assert!(close(ev(&d, "threshold.cpu_utilization.mean"), 6.68 / 7.0));
    assert_eq!(ev(&d, "threshold.cpu_utilization.samples"), 7.0);
    assert!(d.reason.contains("above upper 0.8"), "{}", d.reason);
}

#[test]
fn threshold_ignores_a_single_high_sample() {
    let now = at(0, 10, 0);
    let m = metrics([(Metric::CpuUtilization, series(now, 10_000, &CPU_BLIP))]);
    let d = decide(&spec(Policy::Threshold(cpu_threshold())), 6, &m, &ScalingHistory::default(), false, now);
    assert_eq!((d.change, d.target), (Change::None, 6), "{}", d.reason);
    assert!(d.reason.contains("within its band"), "{}", d.reason);
}

#[test]
fn threshold_scales_down_only_after_a_whole_sustain_period_below_lower() {
    let now = at(0, 3, 0);
    let policy = Policy::Threshold(cpu_threshold());
    let calm = metrics([(Metric::CpuUtilization, series(now, 10_000, &CPU_NIGHT))]);
    let d = decide(&spec(policy.clone()), 6, &calm, &ScalingHistory::default(), false, now);
    assert_eq!((d.change, d.target), (Change::Down, 5), "{}", d.reason);

    // The same low values, but collection only started 30 s ago: the minute is not covered.
    let young = metrics([(Metric::CpuUtilization, series(now, 10_000, &CPU_NIGHT[5..]))]);
    let d = decide(&spec(policy.clone()), 6, &young, &ScalingHistory::default(), false, now);
    assert_eq!(d.change, Change::None, "{}", d.reason);

    // A hole of 40 s (three missed scrapes) inside the minute is not "below the whole time".
    let holed =
        MetricWindow::from_pairs([(now - 60_000, 0.12), (now - 50_000, 0.13), (now - 10_000, 0.12), (now, 0.11)]);
    let d =
        decide(&spec(policy), 6, &metrics([(Metric::CpuUtilization, holed)]), &ScalingHistory::default(), false, now);
    assert_eq!(d.change, Change::None, "{}", d.reason);
}

#[test]
fn threshold_flapping_signal_never_scales_down() {
    let now = at(0, 14, 0);
    let m = metrics([(Metric::CpuUtilization, series(now, 10_000, &CPU_FLAPPING))]);
    let d = decide(&spec(Policy::Threshold(cpu_threshold())), 6, &m, &ScalingHistory::default(), false, now);
    // The mean (0.24) is below lower 0.3, but peaks reach 0.36: hold.
    assert!(ev(&d, "threshold.cpu_utilization.mean") < 0.3);
    assert_eq!((d.change, d.target), (Change::None, 6), "{}", d.reason);
    assert!(d.reason.contains("not for all of 60 s"), "{}", d.reason);
}

#[test]
fn threshold_percent_steps_round_up_to_at_least_one() {
    let now = at(0, 10, 0);
    let mut p = cpu_threshold();
    p.step_up = Step::Percent(50.0);
    p.step_down = Step::Percent(10.0);
    let spike = metrics([(Metric::CpuUtilization, series(now, 10_000, &CPU_SPIKE))]);
    let d = decide(&spec(Policy::Threshold(p.clone())), 7, &spike, &ScalingHistory::default(), false, now);
    assert_eq!(d.target, 11, "50% of 7 is 3.5, rounded up to 4: {}", d.reason);
    let calm = metrics([(Metric::CpuUtilization, series(now, 10_000, &CPU_NIGHT))]);
    let d = decide(&spec(Policy::Threshold(p)), 7, &calm, &ScalingHistory::default(), false, now);
    assert_eq!(d.target, 6, "10% of 7 is 0.7, rounded up to 1: {}", d.reason);
    assert_eq!(Step::Percent(100.0).instances(3), 3);
}

#[test]
fn conflicting_signals_scale_up_wins() {
    let now = at(0, 10, 0);
    let mut p = cpu_threshold();
    p.bounds.insert(Metric::MemoryUtilization, band(0.3, 0.85));
    // CPU spikes while memory sits far below its band the whole time.
    let m = metrics([
        (Metric::CpuUtilization, series(now, 10_000, &CPU_SPIKE)),
        (Metric::MemoryUtilization, series(now, 10_000, &[0.21, 0.2, 0.2, 0.22, 0.21, 0.2, 0.21, 0.2, 0.22])),
    ]);
    let d = decide(&spec(Policy::Threshold(p)), 6, &m, &ScalingHistory::default(), false, now);
    assert_eq!((d.change, d.target), (Change::Up, 8), "{}", d.reason);
    assert!(d.reason.contains("memory_utilization stayed below lower"), "{}", d.reason);
}

#[test]
fn threshold_scales_down_only_when_every_lower_bound_agrees() {
    let now = at(0, 3, 0);
    let mut p = cpu_threshold();
    p.bounds.insert(Metric::MemoryUtilization, band(0.3, 0.85));
    // Response time only has an upper bound: fast answers never argue for fewer instances.
    p.bounds.insert(Metric::ResponseTimeMs, Bounds { upper: Some(400.0), lower: None });
    let cpu_low = (Metric::CpuUtilization, series(now, 10_000, &CPU_NIGHT));
    let rt_fast = (Metric::ResponseTimeMs, series(now, 10_000, &[38.0, 41.0, 40.0, 37.0, 39.0, 42.0, 40.0]));
    let mem_low = (Metric::MemoryUtilization, series(now, 10_000, &[0.2; 9]));
    let mem_mid = (Metric::MemoryUtilization, series(now, 10_000, &[0.5; 9]));
    let s = spec(Policy::Threshold(p));
    let h = ScalingHistory::default();

    let d = decide(&s, 6, &metrics([cpu_low.clone(), mem_low, rt_fast.clone()]), &h, false, now);
    assert_eq!((d.change, d.target), (Change::Down, 5), "{}", d.reason);
    let d = decide(&s, 6, &metrics([cpu_low.clone(), mem_mid, rt_fast.clone()]), &h, false, now);
    assert_eq!(d.change, Change::None, "memory in band vetoes: {}", d.reason);
    // A metric without data cannot confirm the app is idle.
    let d = decide(&s, 6, &metrics([cpu_low, rt_fast]), &h, false, now);
    assert_eq!(d.change, Change::None, "missing memory vetoes: {}", d.reason);
    assert!(d.reason.contains("memory_utilization: no samples"), "{}", d.reason);
}

#[test]
fn stale_or_missing_metrics_give_no_opinion() {
    let now = at(0, 10, 0);
    let s = spec(Policy::Threshold(cpu_threshold()));
    // The exporter died 50 s ago, after reporting a spike.
    let stale = metrics([(Metric::CpuUtilization, series(now - 50_000, 10_000, &CPU_SPIKE))]);
    let d = decide(&s, 6, &stale, &ScalingHistory::default(), false, now);
    assert_eq!(d.change, Change::None, "{}", d.reason);
    assert!(d.reason.contains("no opinion") && d.reason.contains("stale"), "{}", d.reason);
    assert!(!d.evidence.contains_key("recommended"));

    let d = decide(&s, 6, &BTreeMap::new(), &ScalingHistory::default(), false, now);
    assert_eq!(d.change, Change::None, "{}", d.reason);
    // Broken values are not data either.
    let broken = metrics([(Metric::CpuUtilization, series(now, 10_000, &[f64::NAN; 7]))]);
    let d = decide(&s, 6, &broken, &ScalingHistory::default(), false, now);
    assert_eq!(d.change, Change::None, "{}", d.reason);
}

// ---------------------------------------------------------------- trend

#[test]
fn trend_forecast_of_a_known_slope_is_exact() {
    let now = at(0, 8, 30);
    let m = metrics([(Metric::Concurrency, morning_ramp(now))]);
    let d = decide(&spec(Policy::Trend(concurrency_trend())), 4, &m, &ScalingHistory::default(), false, now);
    assert!(close(ev(&d, "trend.concurrency.slope_per_s"), 0.1));
    assert!(close(ev(&d, "trend.concurrency.level_now"), 100.0));
    assert!(close(ev(&d, "trend.concurrency.forecast"), 130.0));
    assert!(close(ev(&d, "trend.concurrency.r2"), 1.0));
    assert_eq!(ev(&d, "trend.concurrency.samples"), 61.0);
    // ceil(4 * 130 / 80) = ceil(6.5) = 7.
    assert_eq!((d.change, d.target), (Change::Up, 7), "{}", d.reason);
    assert_eq!(ev(&d, "recommended"), 7.0);
}

#[test]
fn trend_through_noise_recovers_the_slope() {
    let now = at(0, 8, 30);
    // The ramp with scrape noise that sums to zero over every four samples.
    let noise = [3.0, -2.0, -3.0, 2.0];
    let noisy = MetricWindow::from_pairs(
        morning_ramp(now).samples.iter().enumerate().map(|(i, s)| (s.t_ms, s.value + noise[i % 4])),
    );
    let d = decide(
        &spec(Policy::Trend(concurrency_trend())),
        4,
        &metrics([(Metric::Concurrency, noisy)]),
        &ScalingHistory::default(),
        false,
        now,
    );
    assert!((ev(&d, "trend.concurrency.slope_per_s") - 0.1).abs() < 0.005, "{:?}", d.evidence);
    assert!(ev(&d, "trend.concurrency.r2") > 0.9);
    assert_eq!(d.target, 7, "{}", d.reason);
}

#[test]
fn trend_on_a_slow_decline_scales_down_in_limited_steps() {
    let now = at(0, 22, 0);
    // Evening: 50 per instance falling to 30 over ten minutes (-1/30 per second).
    let decline =
        MetricWindow::from_pairs((0..=60u64).map(|i| (now - 600_000 + i * 10_000, 50.0 - (i * 10) as f64 / 30.0)));
    let mut s = spec(Policy::Trend(concurrency_trend()));
    s.max_step_down = 2;
    let d = decide(&s, 10, &metrics([(Metric::Concurrency, decline)]), &ScalingHistory::default(), false, now);
    // Forecast 30 - 300/30 = 20; ceil(10 * 20 / 80) = 3; the step limit allows 10 -> 8.
    assert!(close(ev(&d, "trend.concurrency.forecast"), 20.0), "{:?}", d.evidence);
    assert_eq!(ev(&d, "recommended"), 3.0);
    assert_eq!((d.change, d.target), (Change::Down, 8), "{}", d.reason);
    assert!(d.reason.contains("limited to -2 per step"), "{}", d.reason);
}

#[test]
fn trend_forecast_is_floored_at_zero() {
    let now = at(0, 23, 0);
    let crash = MetricWindow::from_pairs((0..=10u64).map(|i| (now - 100_000 + i * 10_000, 30.0 - 2.5 * i as f64)));
    let d = decide(
        &spec(Policy::Trend(concurrency_trend())),
        5,
        &metrics([(Metric::Concurrency, crash)]),
        &ScalingHistory::default(),
        false,
        now,
    );
    assert_eq!(ev(&d, "trend.concurrency.forecast"), 0.0);
    assert_eq!((d.change, d.target), (Change::Down, 2), "clamped to min: {}", d.reason);
}

#[test]
fn trend_has_no_opinion_on_too_few_samples_or_a_degenerate_fit() {
    let now = at(0, 9, 0);
    let s = spec(Policy::Trend(concurrency_trend()));
    let few = metrics([(Metric::Concurrency, series(now, 10_000, &[60.0, 70.0, 80.0, 90.0]))]);
    let d = decide(&s, 4, &few, &ScalingHistory::default(), false, now);
    assert_eq!(d.change, Change::None);
    assert!(d.reason.contains("4 sample(s)") && d.reason.contains("need 5"), "{}", d.reason);

    // Five samples, all stamped at the same instant (a collector replaying its buffer).
    let same_instant = MetricWindow::from_pairs([60.0, 70.0, 80.0, 90.0, 100.0].map(|v| (now, v)));
    let d = decide(&s, 4, &metrics([(Metric::Concurrency, same_instant)]), &ScalingHistory::default(), false, now);
    assert_eq!(d.change, Change::None);
    assert!(d.reason.contains("no line fits"), "{}", d.reason);
}

#[test]
fn trend_needs_no_fractional_instance_for_an_exact_fit() {
    let now = at(0, 9, 0);
    let mut p = concurrency_trend();
    p.metric = Metric::CpuUtilization;
    p.target = 0.7;
    p.horizon_ms = 0;
    // Flat at exactly the target: 3 * 0.7 / 0.7 must stay 3, not become 4 by float noise.
    let flat = metrics([(Metric::CpuUtilization, series(now, 10_000, &[0.7; 10]))]);
    let d = decide(&spec(Policy::Trend(p)), 3, &flat, &ScalingHistory::default(), false, now);
    assert_eq!((d.change, d.target), (Change::None, 3), "{}", d.reason);
}

// ---------------------------------------------------------------- timed

fn timed(windows: Vec<ScheduleWindow>) -> AutoscaleSpec {
    spec(Policy::Timed(TimedPolicy { windows }))
}

fn timed_target(s: &AutoscaleSpec, now_ms: u64) -> Option<u32> {
    let d = decide(s, 4, &BTreeMap::new(), &ScalingHistory::default(), false, now_ms);
    d.evidence.get("recommended").map(|&r| r as u32)
}

#[test]
fn timed_windows_apply_by_weekday() {
    let s = timed(vec![window(&WEEKDAYS, (8, 0), (20, 0), 12), window(&[Weekday::Saturday], (10, 0), (16, 0), 6)]);
    assert_eq!(Weekday::at(at(0, 9, 0)), Weekday::Monday);
    assert_eq!(timed_target(&s, at(0, 9, 0)), Some(12)); // Monday
    assert_eq!(timed_target(&s, at(4, 8, 0)), Some(12)); // Friday, the first minute
    assert_eq!(timed_target(&s, at(4, 19, 59)), Some(12));
    assert_eq!(timed_target(&s, at(4, 20, 0)), None); // the end is exclusive
    assert_eq!(timed_target(&s, at(5, 9, 0)), None); // Saturday morning
    assert_eq!(timed_target(&s, at(5, 12, 0)), Some(6));
    assert_eq!(timed_target(&s, at(6, 12, 0)), None); // Sunday

    let d = decide(&s, 4, &BTreeMap::new(), &ScalingHistory::default(), false, at(0, 9, 0));
    assert_eq!((d.change, d.target), (Change::Up, 12), "{}", d.reason);
    assert_eq!(ev(&d, "timed.window"), 0.0);
    let d = decide(&s, 4, &BTreeMap::new(), &ScalingHistory::default(), false, at(6, 12, 0));
    assert_eq!(d.change, Change::None);
    assert!(d.reason.contains("no schedule window applies on sunday 12:00"), "{}", d.reason);
}

#[test]
fn timed_windows_cross_midnight_and_the_week_end() {
    // Friday-night promotion 22:00-02:00, and Sunday-night billing 23:00-01:00 into Monday.
    let s =
        timed(vec![window(&[Weekday::Friday], (22, 0), (2, 0), 15), window(&[Weekday::Sunday], (23, 0), (1, 0), 9)]);
    assert_eq!(timed_target(&s, at(4, 21, 59)), None);
    assert_eq!(timed_target(&s, at(4, 22, 0)), Some(15));
    assert_eq!(timed_target(&s, at(4, 23, 59)), Some(15));
    assert_eq!(timed_target(&s, at(5, 0, 0)), Some(15)); // Saturday, past midnight
    assert_eq!(timed_target(&s, at(5, 1, 59)), Some(15));
    assert_eq!(timed_target(&s, at(5, 2, 0)), None);
    assert_eq!(timed_target(&s, at(3, 1, 0)), None); // Thursday 01:00: Wednesday is not listed
    assert_eq!(timed_target(&s, at(6, 23, 30)), Some(9));
    assert_eq!(timed_target(&s, at(7, 0, 30)), Some(9)); // the next Monday
    assert_eq!(timed_target(&s, at(0, 0, 30)), Some(9)); // any Monday
    assert_eq!(timed_target(&s, at(7, 1, 0)), None);
}

#[test]
fn timed_whole_day_window() {
    let s = timed(vec![window(&[Weekday::Wednesday], (0, 0), (24, 0), 10)]);
    assert_eq!(timed_target(&s, at(2, 0, 0)), Some(10));
    assert_eq!(timed_target(&s, at(2, 23, 59)), Some(10));
    assert_eq!(timed_target(&s, at(3, 0, 0)), None);
    assert_eq!(s.validate(), Ok(()));
}

// ---------------------------------------------------------------- fused

fn fused(rule: FuseRule, members: Vec<(Policy, f64)>) -> Policy {
    Policy::Fused(FusedPolicy {
        rule,
        members: members.into_iter().map(|(policy, weight)| FusedMember { policy, weight }).collect(),
    })
}

/// Monday 08:30: the schedule wants 12; the ramp's trend wants 7 (from 4); CPU is calm (hold).
fn fused_inputs() -> (u64, BTreeMap<Metric, MetricWindow>, Policy, Policy, Policy) {
    let now = at(0, 8, 30);
    let m = metrics([
        (Metric::Concurrency, morning_ramp(now)),
        (Metric::CpuUtilization, series(now, 10_000, &[0.55, 0.56, 0.58, 0.57, 0.6, 0.61, 0.6])),
    ]);
    let schedule = Policy::Timed(TimedPolicy { windows: vec![window(&WEEKDAYS, (8, 0), (20, 0), 12)] });
    (now, m, schedule, Policy::Trend(concurrency_trend()), Policy::Threshold(cpu_threshold()))
}

#[test]
fn fused_max_takes_the_highest_recommendation() {
    let (now, m, schedule, trend, threshold) = fused_inputs();
    let s = spec(fused(FuseRule::Max, vec![(trend.clone(), 1.0), (schedule, 1.0), (threshold.clone(), 1.0)]));
    let d = decide(&s, 4, &m, &ScalingHistory::default(), false, now);
    assert_eq!((d.change, d.target), (Change::Up, 12), "{}", d.reason);
    assert!(d.reason.contains("12 from members[1], the highest"), "{}", d.reason);
    assert_eq!(ev(&d, "members[0].trend.concurrency.wanted"), 7.0);
    assert_eq!(ev(&d, "members[1].timed.instances"), 12.0);
    assert!(d.evidence.contains_key("members[2].threshold.cpu_utilization.mean"));

    // Saturday, no CPU data: only the trend has an opinion.
    let sat = at(5, 8, 30);
    let m = metrics([(Metric::Concurrency, morning_ramp(sat))]);
    let s = spec(fused(FuseRule::Max, vec![(trend, 1.0), (threshold, 1.0)]));
    let d = decide(&s, 4, &m, &ScalingHistory::default(), false, sat);
    assert_eq!(d.target, 7, "{}", d.reason);
}

#[test]
fn fused_weighted_mean_rounds_up_and_skips_members_without_opinion() {
    let (now, m, schedule, trend, _) = fused_inputs();
    let s = spec(fused(FuseRule::Weighted, vec![(schedule.clone(), 1.0), (trend.clone(), 3.0)]));
    let d = decide(&s, 4, &m, &ScalingHistory::default(), false, now);
    // (1 * 12 + 3 * 7) / 4 = 8.25 -> 9.
    assert!(close(ev(&d, "fused.weighted_mean"), 8.25));
    assert_eq!(d.target, 9, "{}", d.reason);

    // Sunday: no window applies, so the trend alone decides.
    let sun = at(6, 8, 30);
    let m = metrics([(Metric::Concurrency, morning_ramp(sun))]);
    let d = decide(&s, 4, &m, &ScalingHistory::default(), false, sun);
    assert!(close(ev(&d, "fused.weighted_mean"), 7.0));
    assert_eq!(d.target, 7, "{}", d.reason);
}

#[test]
fn fused_priority_takes_the_first_member_with_an_opinion() {
    let (now, m, schedule, _, threshold) = fused_inputs();
    let s = spec(fused(FuseRule::Priority, vec![(schedule, 1.0), (threshold, 1.0)]));
    let d = decide(&s, 4, &m, &ScalingHistory::default(), false, now);
    assert_eq!(d.target, 12, "{}", d.reason);
    // Monday night: outside the schedule, the calm CPU holds.
    let night = at(0, 23, 0);
    let m = metrics([(Metric::CpuUtilization, series(night, 10_000, &[0.55, 0.56, 0.58, 0.57, 0.6, 0.61, 0.6]))]);
    let d = decide(&s, 4, &m, &ScalingHistory::default(), false, night);
    assert_eq!((d.change, d.target), (Change::None, 4), "{}", d.reason);
    assert!(d.reason.contains("from members[1], the first with an opinion"), "{}", d.reason);
    // Neither has an opinion: hold.
    let d = decide(&s, 4, &BTreeMap::new(), &ScalingHistory::default(), false, night);
    assert_eq!(d.change, Change::None);
    assert!(d.reason.contains("no member has an opinion"), "{}", d.reason);
}

#[test]
fn fused_policies_nest() {
    // The schedule when it applies, otherwise the higher of threshold and trend.
    let (_, _, schedule, trend, threshold) = fused_inputs();
    let inner = fused(FuseRule::Max, vec![(threshold, 1.0), (trend, 1.0)]);
    let s = spec(fused(FuseRule::Priority, vec![(schedule, 1.0), (inner, 1.0)]));
    assert_eq!(s.validate(), Ok(()));
    let sat = at(5, 8, 30);
    let m =
        metrics([(Metric::Concurrency, morning_ramp(sat)), (Metric::CpuUtilization, series(sat, 10_000, &CPU_SPIKE))]);
    let d = decide(&s, 4, &m, &ScalingHistory::default(), false, sat);
    assert_eq!(d.target, 7, "trend 7 beats threshold 4 + 2: {}", d.reason);
    assert_eq!(ev(&d, "members[1].members[1].trend.concurrency.wanted"), 7.0);
    assert!(d.evidence.contains_key("members[1].members[0].threshold.cpu_utilization.mean"));
}

// ---------------------------------------------------------------- decide: rules

fn timed_always(instances: u32) -> Policy {
    let all = [
        Weekday::Monday,
        Weekday::Tuesday,
        Weekday::Wednesday,
        Weekday::Thursday,
        Weekday::Friday,
        Weekday::Saturday,
        Weekday::Sunday,
    ];
    Policy::Timed(TimedPolicy { windows: vec![window(&all, (0, 0), (24, 0), instances)] })
}

#[test]
fn cooldown_up_counts_only_scale_ups() {
    let now = at(0, 10, 0);
    let mut s = spec(timed_always(10));
    s.cooldown_up_ms = 120_000;
    s.cooldown_down_ms = 600_000;
    let none = BTreeMap::new();
    let recent_up = ScalingHistory { last_up_ms: Some(now - 60_000), last_down_ms: None };
    let d = decide(&s, 6, &none, &recent_up, false, now);
    assert_eq!((d.change, d.target), (Change::None, 6), "{}", d.reason);
    assert_eq!(ev(&d, "cooldown_remaining_ms"), 60_000.0);
    assert!(d.reason.contains("waits 60 s more for cooldown_up"), "{}", d.reason);

    let expired = ScalingHistory { last_up_ms: Some(now - 120_000), last_down_ms: None };
    assert_eq!(decide(&s, 6, &none, &expired, false, now).target, 10);

    // A scale-down a moment ago never delays more capacity.
    let recent_down = ScalingHistory { last_up_ms: Some(now - 3_600_000), last_down_ms: Some(now - 5_000) };
    assert_eq!(decide(&s, 6, &none, &recent_down, false, now).change, Change::Up);
}

#[test]
fn cooldown_down_counts_every_scale_change() {
    let now = at(0, 23, 0);
    let mut s = spec(timed_always(3));
    s.cooldown_up_ms = 60_000;
    s.cooldown_down_ms = 300_000;
    let none = BTreeMap::new();
    // Scaled up 100 s ago: going down now would be the flap.
    let after_up = ScalingHistory { last_up_ms: Some(now - 100_000), last_down_ms: Some(now - 7_200_000) };
    let d = decide(&s, 6, &none, &after_up, false, now);
    assert_eq!(d.change, Change::None, "{}", d.reason);
    assert_eq!(ev(&d, "cooldown_remaining_ms"), 200_000.0);
    assert!(d.reason.contains("cooldown_down"), "{}", d.reason);

    let after_down = ScalingHistory { last_up_ms: None, last_down_ms: Some(now - 299_999) };
    assert_eq!(decide(&s, 6, &none, &after_down, false, now).change, Change::None);
    let expired = ScalingHistory { last_up_ms: Some(now - 400_000), last_down_ms: Some(now - 300_000) };
    let d = decide(&s, 6, &none, &expired, false, now);
    assert_eq!((d.change, d.target), (Change::Down, 3), "{}", d.reason);
}

#[test]
fn step_limits_cap_each_decision() {
    let now = at(0, 10, 0);
    let mut s = spec(timed_always(18));
    s.max_step_up = 3;
    s.max_step_down = 2;
    let d = decide(&s, 4, &BTreeMap::new(), &ScalingHistory::default(), false, now);
    assert_eq!((d.change, d.target), (Change::Up, 7), "{}", d.reason);
    assert!(d.reason.contains("limited to +3 per step"), "{}", d.reason);
    s.policy = timed_always(2);
    let d = decide(&s, 9, &BTreeMap::new(), &ScalingHistory::default(), false, now);
    assert_eq!((d.change, d.target), (Change::Down, 7), "{}", d.reason);
}

#[test]
fn recommendations_are_clamped_to_min_and_max() {
    let now = at(0, 8, 30);
    let mut s = spec(Policy::Trend(TrendPolicy { target: 10.0, ..concurrency_trend() }));
    s.max_instances = 20;
    let m = metrics([(Metric::Concurrency, morning_ramp(now))]);
    // ceil(18 * 130 / 10) = 234 > 20.
    let d = decide(&s, 18, &m, &ScalingHistory::default(), false, now);
    assert_eq!(ev(&d, "recommended"), 234.0);
    assert_eq!((d.change, d.target), (Change::Up, 20), "{}", d.reason);
    assert!(d.reason.contains("clamped from 234 to [2, 20]"), "{}", d.reason);
    let d = decide(&s, 20, &m, &ScalingHistory::default(), false, now);
    assert_eq!((d.change, d.target), (Change::None, 20), "{}", d.reason);
    // A forecast of no load still keeps min_instances.
    s.min_instances = 3;
    s.policy = Policy::Trend(concurrency_trend());
    let idle = metrics([(Metric::Concurrency, series(now, 10_000, &[0.0; 10]))]);
    let d = decide(&s, 5, &idle, &ScalingHistory::default(), false, now);
    assert_eq!((d.change, d.target), (Change::Down, 3), "{}", d.reason);
}

#[test]
fn counts_outside_the_bounds_are_corrected_even_in_cooldown() {
    let now = at(0, 10, 0);
    let mut s = spec(timed_always(10));
    s.max_step_down = 1;
    s.max_step_up = 1;
    s.cooldown_up_ms = 3_600_000;
    s.cooldown_down_ms = 3_600_000;
    let cooling = ScalingHistory { last_up_ms: Some(now - 1_000), last_down_ms: Some(now - 1_000) };
    // An operator lowered max_instances to 20 while 26 run.
    let d = decide(&s, 26, &BTreeMap::new(), &cooling, false, now);
    assert_eq!((d.change, d.target), (Change::Down, 20), "{}", d.reason);
    assert!(d.reason.contains("outside [2, 20]"), "{}", d.reason);
    let d = decide(&s, 1, &BTreeMap::new(), &cooling, false, now);
    assert_eq!((d.change, d.target), (Change::Up, 2), "{}", d.reason);
}

#[test]
fn frozen_never_scales_but_says_what_it_would_do() {
    let now = at(0, 8, 30);
    let s = spec(Policy::Trend(concurrency_trend()));
    let m = metrics([(Metric::Concurrency, morning_ramp(now))]);
    let d = decide(&s, 4, &m, &ScalingHistory::default(), true, now);
    assert_eq!((d.change, d.target), (Change::None, 4));
    assert!(d.reason.starts_with("frozen by the federator; would have scaled 4 -> 7"), "{}", d.reason);
    assert_eq!(ev(&d, "would_target"), 7.0);
    assert_eq!(ev(&d, "frozen"), 1.0);
    // Even the bounds correction waits for the thaw.
    let d = decide(&s, 30, &m, &ScalingHistory::default(), true, now);
    assert_eq!((d.change, d.target), (Change::None, 30));
    assert!(d.reason.contains("would have scaled 30 -> 20"), "{}", d.reason);
    let calm = metrics([(Metric::Concurrency, series(now, 10_000, &[40.0; 10]))]);
    let d = decide(&s, 2, &calm, &ScalingHistory::default(), true, now);
    assert!(d.reason.contains("would have held at 2"), "{}", d.reason);
}

#[test]
fn suspended_apps_and_invalid_specs_are_left_alone() {
    let now = at(0, 10, 0);
    let d = decide(&spec(timed_always(10)), 0, &BTreeMap::new(), &ScalingHistory::default(), false, now);
    assert_eq!((d.change, d.target), (Change::None, 0));
    assert!(d.reason.contains("suspended"), "{}", d.reason);
    let mut bad = spec(timed_always(10));
    bad.min_instances = 30;
    let d = decide(&bad, 5, &BTreeMap::new(), &ScalingHistory::default(), false, now);
    assert_eq!((d.change, d.target), (Change::None, 5));
    assert!(d.reason.contains("min_instances 30 is above max_instances 20"), "{}", d.reason);
}

#[test]
fn decisions_are_deterministic_and_ignore_sample_order() {
    let (now, m, schedule, trend, threshold) = fused_inputs();
    let s = spec(fused(FuseRule::Weighted, vec![(schedule, 2.0), (trend, 1.0), (threshold, 1.0)]));
    let h = ScalingHistory { last_up_ms: Some(now - 900_000), last_down_ms: None };
    let first = decide(&s, 4, &m, &h, false, now);
    assert_eq!(first, decide(&s, 4, &m, &h, false, now));
    let mut shuffled = m.clone();
    for w in shuffled.values_mut() {
        w.samples.reverse();
    }
    assert_eq!(first, decide(&s, 4, &shuffled, &h, false, now));
}

/// A morning replayed every 10 s: total concurrency climbs from 150 to 1600 between 07:00 and
/// 09:00, holds, then falls back to 150 by 13:00. The per-instance value the app reports is the
/// total over its current instances. The autoscaler is called every 30 s and its decisions are
/// applied at once.
#[test]
fn replayed_day_tracks_load_without_flapping() {
    let start = at(0, 6, 30);
    let total_at = |t: u64| -> f64 {
        let h = (t - at(0, 0, 0)) as f64 / HOUR_MS as f64;
        match h {
            h if h < 7.0 => 150.0,
            h if h < 9.0 => 150.0 + (h - 7.0) / 2.0 * 1450.0,
            h if h < 11.0 => 1600.0,
            h if h < 13.0 => 1600.0 - (h - 11.0) / 2.0 * 1450.0,
            _ => 150.0,
        }
    };
    let s = AutoscaleSpec {
        min_instances: 2,
        max_instances: 40,
        max_step_up: 4,
        max_step_down: 2,
        cooldown_up_ms: 60_000,
        cooldown_down_ms: 300_000,
        sample_interval_ms: 10_000,
        policy: fused(
            FuseRule::Max,
            vec![
                (
                    Policy::Trend(TrendPolicy {
                        metric: Metric::Concurrency,
                        target: 80.0,
                        window_ms: 300_000,
                        horizon_ms: 180_000,
                        min_samples: 10,
                    }),
                    1.0,
                ),
                (
                    Policy::Threshold(ThresholdPolicy {
                        bounds: BTreeMap::from([(Metric::Concurrency, band(40.0, 90.0))]),
                        sustain_ms: 60_000,
                        step_up: Step::Percent(25.0),
                        step_down: Step::Absolute(1),
                    }),
                    1.0,
                ),
            ],
        ),
    };
    assert_eq!(s.validate(), Ok(()));

    let mut instances = 2u32;
    let mut history = ScalingHistory::default();
    let mut samples: Vec<(u64, f64)> = Vec::new();
    let mut changes: Vec<(u64, Change, u32)> = Vec::new();
    let mut worst_per_instance_after_warmup: f64 = 0.0;
    let mut t = start;
    while t <= at(0, 15, 0) {
        let per_instance = total_at(t) / f64::from(instances);
        samples.push((t, per_instance));
        if t >= at(0, 7, 30) {
            worst_per_instance_after_warmup = worst_per_instance_after_warmup.max(per_instance);
        }
        if (t - start).is_multiple_of(30_000) {
            let keep_from = t.saturating_sub(600_000);
            samples.retain(|(st, _)| *st >= keep_from);
            let m = metrics([(Metric::Concurrency, MetricWindow::from_pairs(samples.iter().copied()))]);
            let d = decide(&s, instances, &m, &history, false, t);
            assert!((s.min_instances..=s.max_instances).contains(&d.target), "{}", d.reason);
            match d.change {
                Change::Up => history.last_up_ms = Some(t),
                Change::Down => history.last_down_ms = Some(t),
                Change::None => {}
            }
            if d.change != Change::None {
                changes.push((t, d.change, d.target));
            }
            instances = d.target;
        }
        t += 10 * SECOND_MS;
    }

    // Capacity followed the ramp: per-instance load stayed within reach of the target.
    assert!(worst_per_instance_after_warmup < 110.0, "worst {worst_per_instance_after_warmup}");
    let peak = changes.iter().map(|c| c.2).max().unwrap_or(instances);
    assert!((20..=26).contains(&peak), "peak {peak}: {changes:?}");
    // Direction changes once: up through the morning, down after 11:00, never back and forth.
    let flips = changes.windows(2).filter(|w| w[0].1 != w[1].1).count();
    assert_eq!(flips, 1, "{changes:?}");
    assert!(changes.iter().filter(|c| c.1 == Change::Down).all(|c| c.0 >= at(0, 11, 0)), "{changes:?}");
    // Cooldowns held between changes of each kind.
    for w in changes.windows(2) {
        let gap = w[1].0 - w[0].0;
        match w[1].1 {
            Change::Up => assert!(gap >= 60_000, "{w:?}"),
            Change::Down => assert!(gap >= 300_000, "{w:?}"),
            Change::None => unreachable!(),
        }
    }
    assert!(instances <= 4, "back near the floor by 15:00: {instances}");
}

// ---------------------------------------------------------------- validation

#[test]
fn validation_reports_every_problem_at_once() {
    let mut s = spec(Policy::Threshold(ThresholdPolicy {
        bounds: BTreeMap::from([
            (Metric::CpuUtilization, Bounds { upper: Some(80.0), lower: Some(30.0) }),
            (Metric::ResponseTimeMs, Bounds { upper: Some(200.0), lower: Some(500.0) }),
            (Metric::Concurrency, Bounds::default()),
        ]),
        sustain_ms: 15_000,
        step_up: Step::Absolute(0),
        step_down: Step::Percent(-5.0),
    }));
    s.min_instances = 8;
    s.max_instances = 4;
    s.max_step_down = 0;
    let got: Vec<String> = problems(&s).iter().map(ToString::to_string).collect();
    let expected = [
        "min_instances 8 is above max_instances 4",
        "max_step_down is 0: no decision could move in that direction; allow at least 1 or freeze the app",
        "policy.bounds.concurrency: neither upper nor lower is set",
        "policy.bounds.response_time_ms: lower 500 is not below upper 200; the band between them is where the \
         policy holds steady",
        "policy.bounds.cpu_utilization.upper is 80, but cpu_utilization is a fraction of requested resources \
         in (0, 1]; did you mean 0.8?",
        "policy.bounds.cpu_utilization.lower is 30, but cpu_utilization is a fraction of requested resources \
         in (0, 1]; did you mean 0.3?",
        "policy.step_up is an absolute step of 0, which never scales; use at least 1",
        "policy.step_down.percent is -5; it must be a positive finite number",
        "policy.sustain_ms 15000 holds fewer than two samples at sample_interval_ms 10000; use at least 20000",
    ];
    assert_eq!(got, expected);
    let all = s.validate().unwrap_err().to_string();
    assert!(all.starts_with("invalid autoscale spec: min_instances 8 is above"), "{all}");
}

#[test]
fn validation_rejects_min_zero_and_empty_schedules() {
    let mut s = timed(vec![]);
    s.min_instances = 0;
    assert_eq!(problems(&s), vec![SpecError::MinZero, SpecError::EmptySchedule { at: "policy".into() }],);
    assert_eq!(
        SpecError::EmptySchedule { at: "policy".into() }.to_string(),
        "policy: the schedule is empty: a timed policy needs at least one window"
    );
}

#[test]
fn validation_finds_overlapping_windows_including_across_midnight() {
    let overlap = |windows| problems(&timed(windows)).iter().map(ToString::to_string).collect::<Vec<_>>();
    assert_eq!(
        overlap(vec![window(&WEEKDAYS, (8, 0), (20, 0), 12), window(&[Weekday::Friday], (19, 0), (23, 0), 14)]),
        vec![
            "policy: windows[0] and windows[1] overlap on friday at 19:00 UTC; at most one window may apply at a time"
        ]
    );
    assert_eq!(
        overlap(vec![window(&[Weekday::Friday], (22, 0), (2, 0), 15), window(&[Weekday::Saturday], (1, 0), (3, 0), 8)]),
        vec![
            "policy: windows[0] and windows[1] overlap on saturday at 01:00 UTC; at most one window may apply at a time"
        ]
    );
    // Sunday night runs into Monday morning.
    assert_eq!(
        overlap(vec![window(&[Weekday::Sunday], (23, 0), (1, 0), 9), window(&[Weekday::Monday], (0, 30), (6, 0), 5)]),
        vec![
            "policy: windows[0] and windows[1] overlap on monday at 00:30 UTC; at most one window may apply at a time"
        ]
    );
    // Touching is not overlapping.
    let s = timed(vec![
        window(&[Weekday::Friday], (22, 0), (2, 0), 15),
        window(&[Weekday::Saturday], (2, 0), (22, 0), 8),
        window(&WEEKDAYS, (8, 0), (20, 0), 12),
    ]);
    assert_eq!(s.validate(), Ok(()));
}

#[test]
fn validation_of_malformed_windows() {
    let s = timed(vec![window(&[], (25, 0), (24, 1), 30), window(&[Weekday::Monday], (9, 0), (9, 0), 4)]);
    let got: Vec<String> = problems(&s).iter().map(ToString::to_string).collect();
    assert_eq!(
        got,
        vec![
            "policy.windows[0]: no days of the week; list at least one, e.g. [\"monday\"]",
            "policy.windows[0]: start_minute 1500 is out of range; minutes of the day run 0..=1439",
            "policy.windows[0]: end_minute 1441 is out of range; minutes of the day run 0..=1440",
            "policy.windows[0]: wants 30 instances, outside [min_instances 2, max_instances 20]",
            "policy.windows[1]: start_minute equals end_minute (540), an empty window; use start_minute 0 and \
             end_minute 1440 for a whole day",
        ]
    );
}

#[test]
fn validation_rejects_non_positive_targets_and_short_windows() {
    for target in [0.0, -80.0, f64::NAN, f64::INFINITY] {
        let s = spec(Policy::Trend(TrendPolicy { target, ..concurrency_trend() }));
        assert!(
            matches!(&problems(&s)[..], [SpecError::NotPositive { field, .. }] if field == "target"),
            "target {target}"
        );
    }
    let s = spec(Policy::Trend(TrendPolicy { window_ms: 30_000, ..concurrency_trend() }));
    assert_eq!(
        problems(&s)[0].to_string(),
        "policy.window_ms 30000 holds only 3 samples at sample_interval_ms 10000, fewer than min_samples 5; \
         use at least 50000"
    );
    let s = spec(Policy::Trend(TrendPolicy { min_samples: 1, ..concurrency_trend() }));
    assert_eq!(problems(&s)[0].to_string(), "policy.min_samples is 1; a line needs at least 2 samples");
    let s = spec(Policy::Trend(TrendPolicy { metric: Metric::MemoryUtilization, target: 75.0, ..concurrency_trend() }));
    assert!(problems(&s)[0].to_string().ends_with("did you mean 0.75?"));
    let mut s = spec(Policy::Threshold(ThresholdPolicy {
        bounds: BTreeMap::from([(Metric::Concurrency, Bounds { upper: Some(0.0), lower: None })]),
        ..cpu_threshold()
    }));
    s.sample_interval_ms = 0;
    assert_eq!(
        problems(&s),
        vec![
            SpecError::SampleIntervalZero,
            SpecError::NotPositive { at: "policy.bounds.concurrency".into(), field: "upper".into(), value: 0.0 },
        ]
    );
}

#[test]
fn validation_of_fused_policies() {
    let s = spec(fused(FuseRule::Max, vec![]));
    assert_eq!(problems(&s), vec![SpecError::NoMembers { at: "policy".into() }]);
    let s = spec(fused(FuseRule::Weighted, vec![(timed_always(4), 0.0), (Policy::Trend(concurrency_trend()), 1.0)]));
    assert_eq!(problems(&s)[0].to_string(), "policy.members[0].weight is 0; it must be a positive finite number");
    // Problems inside members name their path.
    let s = spec(fused(FuseRule::Max, vec![(Policy::Timed(TimedPolicy { windows: vec![] }), 1.0)]));
    assert_eq!(problems(&s), vec![SpecError::EmptySchedule { at: "policy.members[0].policy".into() }]);
    let mut deep = timed_always(4);
    for _ in 0..MAX_POLICY_DEPTH {
        deep = fused(FuseRule::Priority, vec![(deep, 1.0)]);
    }
    assert!(matches!(&problems(&spec(deep))[..], [SpecError::TooDeep { .. }]));
}

// ---------------------------------------------------------------- serde

#[test]
fn specs_deserialize_from_json_and_reject_unknown_fields() {
    let json = r#"{
        "min_instances": 2, "max_instances": 40, "max_step_up": 4, "max_step_down": 2,
        "cooldown_up_ms": 60000, "cooldown_down_ms": 300000,
        "policy": { "kind": "fused", "rule": "priority", "members": [
            { "policy": { "kind": "timed", "windows": [
                { "days": ["fri"], "start_minute": 1320, "end_minute": 120, "instances": 30 } ] } },
            { "weight": 2, "policy": { "kind": "threshold", "sustain_ms": 60000,
                "step_up": { "percent": 25 }, "step_down": { "absolute": 1 },
                "bounds": { "cpu_utilization": { "upper": 0.8, "lower": 0.3 },
                            "response_time_ms": { "upper": 400 } } } },
            { "policy": { "kind": "trend", "metric": "concurrency", "target": 80,
                "window_ms": 600000, "horizon_ms": 300000 } }
        ] }
    }"#;
    let s: AutoscaleSpec = serde_json::from_str(json).expect("valid json");
    assert_eq!(s.validate(), Ok(()));
    assert_eq!(s.sample_interval_ms, 10_000);
    let Policy::Fused(f) = &s.policy else { panic!("fused") };
    assert_eq!(f.members[0].weight, 1.0);
    assert_eq!(f.members[2].policy, Policy::Trend(concurrency_trend()));
    let back: AutoscaleSpec = serde_json::from_str(&serde_json::to_string(&s).expect("serializes")).expect("parses");
    assert_eq!(back, s);

    let typo = json.replace("\"horizon_ms\"", "\"horizon\"");
    let err = serde_json::from_str::<AutoscaleSpec>(&typo).expect_err("unknown field").to_string();
    assert!(err.contains("horizon"), "{err}");
    let unknown_kind = r#"{"min_instances":1,"max_instances":2,"max_step_up":1,"max_step_down":1,
        "cooldown_up_ms":0,"cooldown_down_ms":0,"policy":{"kind":"magic"}}"#;
    assert!(serde_json::from_str::<AutoscaleSpec>(unknown_kind).is_err());
}

#[test]
fn decisions_serialize_for_the_audit_record() {
    let now = at(0, 8, 30);
    let m = metrics([(Metric::Concurrency, morning_ramp(now))]);
    let d = decide(&spec(Policy::Trend(concurrency_trend())), 4, &m, &ScalingHistory::default(), false, now);
    let json = serde_json::to_value(&d).expect("serializes");
    assert_eq!(json["change"], "up");
    assert_eq!(json["target"], 7);
    assert_eq!(json["evidence"]["recommended"], 7.0);
}
