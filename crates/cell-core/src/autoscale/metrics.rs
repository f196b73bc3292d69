//! What the autoscaler measures, the sample windows the caller hands in, and the line fit the
//! trend policy forecasts with.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A capacity metric of one app.
///
/// Every value is an app-wide aggregate expressed **per instance**, so that one number means
/// the same load whether the app runs 2 or 20 instances, and the proportional rule
/// `ceil(instances * value / target)` applies to all four alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// In-flight requests per running instance: the app's total divided by its instance count.
    Concurrency,
    /// Mean response time over the app's instances, in milliseconds.
    ResponseTimeMs,
    /// CPU used as a fraction of the CPU the app's instances requested (0..1).
    CpuUtilization,
    /// Memory used as a fraction of the memory the app's instances requested (0..1).
    MemoryUtilization,
}

impl Metric {
    pub const ALL: [Metric; 4] =
        [Metric::Concurrency, Metric::ResponseTimeMs, Metric::CpuUtilization, Metric::MemoryUtilization];

    /// The name used in configuration, reasons and evidence keys.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Concurrency => "concurrency",
            Metric::ResponseTimeMs => "response_time_ms",
            Metric::CpuUtilization => "cpu_utilization",
            Metric::MemoryUtilization => "memory_utilization",
        }
    }

    /// Utilisations are fractions of requested resources; their bounds and targets live in (0, 1].
    pub fn is_utilization(self) -> bool {
        matches!(self, Metric::CpuUtilization | Metric::MemoryUtilization)
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One observation: the metric's value at `t_ms` (milliseconds since the Unix epoch, UTC).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub t_ms: u64,
    pub value: f64,
}

/// The recent samples of one metric of one app, oldest first.
///
/// The caller keeps at least as much history as the longest sustain period or trend window of
/// the app's policy; anything older is ignored here.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricWindow {
    pub samples: Vec<Sample>,
}

impl MetricWindow {
    pub fn from_pairs(pairs: impl IntoIterator<Item = (u64, f64)>) -> Self {
        MetricWindow { samples: pairs.into_iter().map(|(t_ms, value)| Sample { t_ms, value }).collect() }
    }

    /// The usable samples with `from_ms <= t_ms <= now_ms`, oldest first.
    ///
    /// Non-finite values (a broken exporter) and samples stamped after `now_ms` (collector clock
    /// ahead of the caller's) are dropped rather than trusted; the order is re-established
    /// (stable sort) because a forecast over misordered samples would be silently wrong.
    pub(crate) fn usable(&self, from_ms: u64, now_ms: u64) -> Vec<Sample> {
        let mut out: Vec<Sample> = self
            .samples
            .iter()
            .copied()
            .filter(|s| s.value.is_finite() && s.t_ms >= from_ms && s.t_ms <= now_ms)
            .collect();
        out.sort_by_key(|s| s.t_ms);
        out
    }
}

/// A least-squares line through samples, with time measured in seconds relative to `now_ms`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct LinearFit {
    /// Change of the metric per second.
    pub slope_per_s: f64,
    /// The fitted value at `now_ms` (the line's intercept in these coordinates).
    pub level_now: f64,
    /// Coefficient of determination (1 is a perfect line; 1 by convention for a flat series).
    pub r2: f64,
}

impl LinearFit {
    /// Ordinary least squares over `samples`; `None` when fewer than two samples or when every
    /// sample carries the same timestamp (no slope is defined).
    ///
    /// Sums are taken around the means so that epoch-sized timestamps do not cancel out.
    pub(crate) fn of(samples: &[Sample], now_ms: u64) -> Option<LinearFit> {
        if samples.len() < 2 {
            return None;
        }
        let n = samples.len() as f64;
        let x = |s: &Sample| (s.t_ms as f64 - now_ms as f64) / 1000.0;
        let mean_x = samples.iter().map(x).sum::<f64>() / n;
        let mean_y = samples.iter().map(|s| s.value).sum::<f64>() / n;
        let (mut sxx, mut sxy, mut syy) = (0.0, 0.0, 0.0);
        for s in samples {
            let (dx, dy) = (x(s) - mean_x, s.value - mean_y);
            sxx += dx * dx;
            sxy += dx * dy;
            syy += dy * dy;
        }
        if sxx <= 0.0 || !sxx.is_finite() || !sxy.is_finite() {
            return None;
        }
        let slope_per_s = sxy / sxx;
        let level_now = mean_y - slope_per_s * mean_x;
        let r2 = if syy > 0.0 { (sxy * sxy) / (sxx * syy) } else { 1.0 };
        (slope_per_s.is_finite() && level_now.is_finite()).then_some(LinearFit { slope_per_s, level_now, r2 })
    }

    /// The line's value `ahead_ms` after `now_ms`.
    pub(crate) fn at(&self, ahead_ms: u64) -> f64 {
        self.level_now + self.slope_per_s * (ahead_ms as f64 / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_recovers_a_known_line_at_epoch_scale_timestamps() {
        let now_ms = 1_704_103_200_000; // 2024-01-01 10:00 UTC
        // 61 samples, 10 s apart, of y = 100 + 0.25 * (seconds relative to now).
        let samples: Vec<Sample> = (0..=60u64)
            .map(|i| {
                let t_ms = now_ms - 600_000 + i * 10_000;
                Sample { t_ms, value: 100.0 + 0.25 * ((t_ms as f64 - now_ms as f64) / 1000.0) }
            })
            .collect();
        let fit = LinearFit::of(&samples, now_ms).expect("a line");
        assert!((fit.slope_per_s - 0.25).abs() < 1e-9, "{fit:?}");
        assert!((fit.level_now - 100.0).abs() < 1e-9, "{fit:?}");
        assert!((fit.r2 - 1.0).abs() < 1e-9);
        assert!((fit.at(120_000) - 130.0).abs() < 1e-9);
    }

    #[test]
    fn fit_is_undefined_for_one_sample_or_one_instant() {
        let s = Sample { t_ms: 5_000, value: 1.0 };
        assert_eq!(LinearFit::of(&[s], 10_000), None);
        assert_eq!(LinearFit::of(&[s, Sample { value: 3.0, ..s }], 10_000), None);
        let flat = LinearFit::of(&[s, Sample { t_ms: 6_000, value: 1.0 }], 10_000).expect("flat line");
        assert_eq!((flat.slope_per_s, flat.level_now, flat.r2), (0.0, 1.0, 1.0));
    }

    #[test]
    fn usable_drops_broken_and_future_samples_and_restores_order() {
        let w = MetricWindow::from_pairs([(30, 3.0), (10, 1.0), (20, f64::NAN), (40, 4.0), (5, 0.5)]);
        let got: Vec<(u64, f64)> = w.usable(10, 35).iter().map(|s| (s.t_ms, s.value)).collect();
        assert_eq!(got, vec![(10, 1.0), (30, 3.0)]);
    }
}
