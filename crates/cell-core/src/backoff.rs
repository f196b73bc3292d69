//! Restart backoff with Marathon's semantics: after a task of an app exits, the next launch of
//! that app waits `initial_ms`, then `factor` times the previous delay on every further exit,
//! capped at `max_ms`. A task that ran for at least `reset_after_ms` proves the app can run, so
//! its exit starts a new series at `initial_ms`.
//!
//! Pure: the caller passes the time (`now_ms`) and how long the task ran; nothing here reads a
//! clock. The delay is carried as an `f64` and only multiplied, never raised to a power, so the
//! sequence is bit-for-bit the same on every platform (IEEE multiplication is exact-rounded;
//! `powi`/`powf` are not guaranteed to be).

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// How launch delays grow after exits. Validate with [`BackoffPolicy::validate`] (done by
/// [`Backoff::new`]).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackoffPolicy {
    /// Delay after the first exit of a series (Marathon `backoffSeconds`, default 1 s).
    pub initial_ms: u64,
    /// Multiplier applied to the delay on every further exit (Marathon `backoffFactor`,
    /// default 1.15). Must be finite and at least 1.
    pub factor: f64,
    /// The delay never exceeds this (Marathon `maxLaunchDelaySeconds`, default 300 s).
    pub max_ms: u64,
    /// A task that ran at least this long resets the series (default 600 s: twice the longest
    /// default delay, so a task that merely outlived one delay does not count as stable).
    pub reset_after_ms: u64,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        BackoffPolicy { initial_ms: 1_000, factor: 1.15, max_ms: 300_000, reset_after_ms: 600_000 }
    }
}

#[derive(Clone, Debug, PartialEq, Error)]
pub enum BackoffError {
    #[error("backoff factor {factor} is not a finite number; use a value of at least 1, such as 1.15 or 2")]
    FactorNotFinite { factor: f64 },
    #[error("backoff factor {factor} is below 1, so delays would shrink after failures; use at least 1")]
    FactorBelowOne { factor: f64 },
    #[error("initial backoff {initial_ms} ms exceeds the maximum {max_ms} ms; lower initial_ms or raise max_ms")]
    InitialAboveMax { initial_ms: u64, max_ms: u64 },
    #[error(
        "reset_after_ms is 0, so every exit would reset the delay and backoff would never grow; use a positive duration"
    )]
    ZeroResetAfter,
}

impl BackoffPolicy {
    pub fn validate(&self) -> Result<(), BackoffError> {
        if !self.factor.is_finite() {
            return Err(BackoffError::FactorNotFinite { factor: self.factor });
        }
        if self.factor < 1.0 {
            return Err(BackoffError::FactorBelowOne { factor: self.factor });
        }
        if self.initial_ms > self.max_ms {
            return Err(BackoffError::InitialAboveMax { initial_ms: self.initial_ms, max_ms: self.max_ms });
        }
        if self.reset_after_ms == 0 {
            return Err(BackoffError::ZeroResetAfter);
        }
        Ok(())
    }
}

/// The backoff state of one app (Marathon keeps one launch delay per app version, not per task).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Backoff {
    policy: BackoffPolicy,
    /// Exits since the series started; saturates instead of wrapping.
    consecutive_failures: u32,
    /// The delay applied after the latest exit; 0 before the first.
    delay_ms: f64,
    /// No launch before this time.
    next_launch_at_ms: u64,
}

impl Backoff {
    pub fn new(policy: BackoffPolicy) -> Result<Self, BackoffError> {
        policy.validate()?;
        Ok(Backoff { policy, consecutive_failures: 0, delay_ms: 0.0, next_launch_at_ms: 0 })
    }

    pub fn policy(&self) -> &BackoffPolicy {
        &self.policy
    }

    /// A task exited at `now_ms` after running for `ran_for_ms`; returns the earliest time the
    /// next launch is allowed.
    pub fn on_exit(&mut self, now_ms: u64, ran_for_ms: u64) -> u64 {
        if ran_for_ms >= self.policy.reset_after_ms {
            self.reset();
        }
        self.delay_ms = if self.consecutive_failures == 0 {
            self.policy.initial_ms as f64
        } else {
            // `delay_ms <= max_ms` and `factor` is finite, so the product is at worst +inf,
            // never NaN; `min` brings it back to the cap.
            (self.delay_ms * self.policy.factor).min(self.policy.max_ms as f64)
        };
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        self.next_launch_at_ms = now_ms.saturating_add(self.current_delay_ms());
        self.next_launch_at_ms
    }

    /// Whether a launch is allowed at `now_ms`.
    pub fn ready(&self, now_ms: u64) -> bool {
        now_ms >= self.next_launch_at_ms
    }

    /// The earliest time the next launch is allowed (0 before any exit).
    pub fn next_launch_at_ms(&self) -> u64 {
        self.next_launch_at_ms
    }

    /// The delay applied after the latest exit, in whole milliseconds (rounded).
    pub fn current_delay_ms(&self) -> u64 {
        // `as` saturates; the value is already within [0, max_ms].
        self.delay_ms.round() as u64
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// Start a new series, e.g. when the app's spec changes (Marathon resets the delay on every
    /// app update). An already scheduled delay is lifted too.
    pub fn reset(&mut self) {
        self.consecutive_failures = 0;
        self.delay_ms = 0.0;
        self.next_launch_at_ms = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(initial_ms: u64, factor: f64, max_ms: u64) -> BackoffPolicy {
        BackoffPolicy { initial_ms, factor, max_ms, reset_after_ms: 60_000 }
    }

    #[test]
    fn delays_grow_by_the_factor() {
        let mut b = Backoff::new(policy(1_000, 2.0, 300_000)).unwrap();
        assert!(b.ready(0));
        let mut delays = Vec::new();
        for i in 0..5 {
            let now = 1_000_000 + i * 100_000;
            let next = b.on_exit(now, 10);
            delays.push(next - now);
            assert!(!b.ready(now));
            assert!(!b.ready(next - 1));
            assert!(b.ready(next));
        }
        assert_eq!(delays, [1_000, 2_000, 4_000, 8_000, 16_000]);
        assert_eq!(b.consecutive_failures(), 5);
    }

    #[test]
    fn default_policy_follows_marathon() {
        let mut b = Backoff::new(BackoffPolicy::default()).unwrap();
        assert_eq!(b.on_exit(0, 0), 1_000);
        assert_eq!(b.on_exit(0, 0), 1_150);
        assert_eq!(b.on_exit(0, 0), 1_323); // 1322.5 rounds half away from zero
    }

    #[test]
    fn delay_is_capped_at_max() {
        let mut b = Backoff::new(policy(1_000, 2.0, 5_000)).unwrap();
        let delays: Vec<u64> = (0..6).map(|_| b.on_exit(0, 0)).collect();
        assert_eq!(delays, [1_000, 2_000, 4_000, 5_000, 5_000, 5_000]);
    }

    #[test]
    fn a_stable_run_resets_the_series() {
        let mut b = Backoff::new(policy(1_000, 2.0, 300_000)).unwrap();
        for _ in 0..4 {
            b.on_exit(0, 500);
        }
        assert_eq!(b.current_delay_ms(), 8_000);
        // Ran just short of the reset threshold: keeps growing.
        assert_eq!(b.on_exit(100_000, 59_999), 116_000);
        // Ran long enough: back to the initial delay, as the first failure of a new series.
        assert_eq!(b.on_exit(200_000, 60_000), 201_000);
        assert_eq!(b.consecutive_failures(), 1);
        assert_eq!(b.on_exit(300_000, 0), 302_000);
    }

    #[test]
    fn explicit_reset_lifts_the_delay() {
        let mut b = Backoff::new(policy(1_000, 2.0, 300_000)).unwrap();
        b.on_exit(0, 0);
        b.on_exit(0, 0);
        assert!(!b.ready(100));
        b.reset();
        assert!(b.ready(100));
        assert_eq!(b.on_exit(100, 0), 1_100);
    }

    #[test]
    fn thousands_of_failures_do_not_overflow() {
        let mut b = Backoff::new(policy(1_000, 1.15, 300_000)).unwrap();
        for _ in 0..10_000 {
            b.on_exit(0, 0);
        }
        assert_eq!(b.current_delay_ms(), 300_000);

        // Extreme but valid policies: huge factor, delays and times near u64::MAX.
        let mut b =
            Backoff::new(BackoffPolicy { initial_ms: 1, factor: 1e300, max_ms: u64::MAX, reset_after_ms: u64::MAX })
                .unwrap();
        assert_eq!(b.on_exit(u64::MAX - 10, 0), u64::MAX - 9);
        for _ in 1..5_000 {
            assert_eq!(b.on_exit(u64::MAX - 10, 0), u64::MAX);
        }
        assert_eq!(b.current_delay_ms(), u64::MAX);
        assert_eq!(b.consecutive_failures(), 5_000);
    }

    #[test]
    fn factor_one_and_zero_initial_are_allowed() {
        let mut b = Backoff::new(policy(500, 1.0, 500)).unwrap();
        assert_eq!((0..3).map(|_| b.on_exit(0, 0)).collect::<Vec<_>>(), [500, 500, 500]);
        let mut b = Backoff::new(policy(0, 2.0, 500)).unwrap();
        assert_eq!(b.on_exit(7, 0), 7);
        assert_eq!(b.on_exit(7, 0), 7);
    }

    #[test]
    fn invalid_policies_are_refused() {
        let err = |p: BackoffPolicy| Backoff::new(p).unwrap_err();
        assert_eq!(err(policy(1_000, 0.5, 5_000)), BackoffError::FactorBelowOne { factor: 0.5 });
        assert!(matches!(err(policy(1_000, f64::NAN, 5_000)), BackoffError::FactorNotFinite { .. }));
        assert!(matches!(err(policy(1_000, f64::INFINITY, 5_000)), BackoffError::FactorNotFinite { .. }));
        assert_eq!(err(policy(6_000, 2.0, 5_000)), BackoffError::InitialAboveMax { initial_ms: 6_000, max_ms: 5_000 });
        assert_eq!(err(BackoffPolicy { reset_after_ms: 0, ..BackoffPolicy::default() }), BackoffError::ZeroResetAfter);
        assert!(err(policy(1_000, 0.5, 5_000)).to_string().contains("use at least 1"));
    }
}
