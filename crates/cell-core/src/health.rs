//! Health and readiness check decisions, with Marathon's semantics. The checks themselves (an
//! HTTP request, a TCP connect, a command) run elsewhere; this module says when the next check
//! is due, what a task's health is, and when a task must be killed.
//!
//! Health rules ([`HealthTracker`]):
//! - the first check is due `delay_ms` after the task started, then one every `interval_ms`
//!   (measured from when each check was due, so a slow check does not shift the schedule; slots
//!   missed because the caller was late are skipped, not run in a burst);
//! - health is `Unknown` until the first result that counts, then `Healthy` after a pass and
//!   `Unhealthy` after a counted failure (`Failed` or `TimedOut`);
//! - the grace period: failures before the task's first pass and within `grace_period_ms` of
//!   its start are ignored entirely: they neither count nor change the health. As in Marathon,
//!   the grace period ends at the first pass, so a task that was healthy once is judged on
//!   every failure from then on;
//! - a pass resets the consecutive-failure counter;
//! - after `max_consecutive_failures` consecutive counted failures the task must be killed
//!   (and restarted by the deployment planner, subject to backoff); 0 means never kill.
//!
//! Readiness rules ([`ReadinessTracker`], Marathon `readinessChecks`): a task is `NotReady`
//! until a check passes, then `Ready` for good and no further checks run. Deployments count a
//! new task toward capacity only once it is healthy and ready. A task of an app without
//! readiness checks is ready as soon as it runs; without health checks, healthy as soon as it
//! runs.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// What a check does. Ports are referred to by their index in the task's assigned ports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CheckKind {
    /// Passes on an HTTP status in 200..=399 (the prober decides; this module only sees results).
    Http { path: String, port_index: u32 },
    /// Passes when a TCP connection is accepted.
    Tcp { port_index: u32 },
    /// Passes when the command exits 0. `argv[0]` is the program; no shell is involved.
    Command { argv: Vec<String> },
}

impl CheckKind {
    /// The port index the check uses, if any.
    pub fn port_index(&self) -> Option<u32> {
        match self {
            CheckKind::Http { port_index, .. } | CheckKind::Tcp { port_index } => Some(*port_index),
            CheckKind::Command { .. } => None,
        }
    }

    fn validate(&self) -> Result<(), HealthCheckError> {
        match self {
            CheckKind::Http { path, .. } if !path.starts_with('/') => {
                Err(HealthCheckError::HttpPathNotAbsolute { path: path.clone() })
            }
            CheckKind::Command { argv } if argv.first().is_none_or(|p| p.is_empty()) => {
                Err(HealthCheckError::EmptyCommand)
            }
            _ => Ok(()),
        }
    }

    /// Whether the port index exists among `port_count` assigned ports.
    pub fn validate_ports(&self, port_count: u32) -> Result<(), HealthCheckError> {
        match self.port_index() {
            Some(index) if index >= port_count => Err(HealthCheckError::PortIndexOutOfRange { index, port_count }),
            _ => Ok(()),
        }
    }
}

/// A health check with Marathon's parameters. Defaults are Marathon's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    pub kind: CheckKind,
    /// Failures before the first pass and within this long after the start are ignored
    /// (default 300 s).
    pub grace_period_ms: u64,
    /// Time between the starts of two checks (default 60 s).
    pub interval_ms: u64,
    /// A check not answered within this is a `TimedOut` failure (default 20 s). Must be below
    /// `interval_ms` so checks of one task never overlap.
    pub timeout_ms: u64,
    /// Kill after this many consecutive counted failures; 0 never kills (default 3).
    pub max_consecutive_failures: u32,
    /// Wait this long after the start before the first check (default 15 s).
    pub delay_ms: u64,
}

impl HealthCheck {
    pub fn new(kind: CheckKind) -> Self {
        HealthCheck {
            kind,
            grace_period_ms: 300_000,
            interval_ms: 60_000,
            timeout_ms: 20_000,
            max_consecutive_failures: 3,
            delay_ms: 15_000,
        }
    }

    pub fn validate(&self) -> Result<(), HealthCheckError> {
        self.kind.validate()?;
        validate_timing(self.interval_ms, self.timeout_ms)
    }
}

/// A readiness check (Marathon `readinessChecks`): gates deployments, never kills.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadinessCheck {
    pub kind: CheckKind,
    /// Time between the starts of two checks; the first is due one interval after the task
    /// started, as in Marathon (default 30 s).
    pub interval_ms: u64,
    /// Must be below `interval_ms` (default 10 s).
    pub timeout_ms: u64,
}

impl ReadinessCheck {
    pub fn new(kind: CheckKind) -> Self {
        ReadinessCheck { kind, interval_ms: 30_000, timeout_ms: 10_000 }
    }

    pub fn validate(&self) -> Result<(), HealthCheckError> {
        self.kind.validate()?;
        validate_timing(self.interval_ms, self.timeout_ms)
    }
}

fn validate_timing(interval_ms: u64, timeout_ms: u64) -> Result<(), HealthCheckError> {
    if interval_ms == 0 {
        return Err(HealthCheckError::ZeroInterval);
    }
    if timeout_ms == 0 {
        return Err(HealthCheckError::ZeroTimeout);
    }
    if timeout_ms >= interval_ms {
        return Err(HealthCheckError::TimeoutNotBelowInterval { timeout_ms, interval_ms });
    }
    Ok(())
}

#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum HealthCheckError {
    #[error("check interval is 0 ms; use a positive interval such as 60000")]
    ZeroInterval,
    #[error("check timeout is 0 ms, so every check would time out; use a positive timeout below the interval")]
    ZeroTimeout,
    #[error(
        "check timeout {timeout_ms} ms is not below the interval {interval_ms} ms, so checks of one task could overlap; lower the timeout or raise the interval"
    )]
    TimeoutNotBelowInterval { timeout_ms: u64, interval_ms: u64 },
    #[error("HTTP check path {path:?} must start with '/'")]
    HttpPathNotAbsolute { path: String },
    #[error("command check has no program: argv must be non-empty and argv[0] not empty")]
    EmptyCommand,
    #[error("check uses port index {index} but the task has {port_count} port(s); indexes start at 0")]
    PortIndexOutOfRange { index: u32, port_count: u32 },
}

/// The outcome of one check, reported by whoever ran it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CheckResult {
    Passed,
    Failed {
        reason: String,
    },
    /// No answer within `timeout_ms`; a failure.
    TimedOut,
}

impl CheckResult {
    fn failure_reason(&self) -> Option<String> {
        match self {
            CheckResult::Passed => None,
            CheckResult::Failed { reason } => Some(reason.clone()),
            CheckResult::TimedOut => Some("timed out".to_string()),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Health {
    /// No counted result yet.
    #[default]
    Unknown,
    Healthy,
    Unhealthy,
}

impl Health {
    /// The form deployments take (`TaskView::healthy`): `None` while unknown.
    pub fn as_flag(self) -> Option<bool> {
        match self {
            Health::Unknown => None,
            Health::Healthy => Some(true),
            Health::Unhealthy => Some(false),
        }
    }
}

/// What to do with the task after a result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HealthDecision {
    Keep,
    /// Kill the task (its replacement is the deployment planner's business).
    Kill {
        reason: String,
    },
}

/// Health of one task (one incarnation: a restarted task gets a new tracker).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthTracker {
    check: HealthCheck,
    started_at_ms: u64,
    health: Health,
    ever_passed: bool,
    consecutive_failures: u32,
    next_check_at_ms: u64,
    last_result_at_ms: Option<u64>,
    last_failure: Option<String>,
    kill_reason: Option<String>,
}

impl HealthTracker {
    pub fn new(check: &HealthCheck, started_at_ms: u64) -> Result<Self, HealthCheckError> {
        check.validate()?;
        Ok(HealthTracker {
            check: check.clone(),
            started_at_ms,
            health: Health::Unknown,
            ever_passed: false,
            consecutive_failures: 0,
            next_check_at_ms: started_at_ms.saturating_add(check.delay_ms),
            last_result_at_ms: None,
            last_failure: None,
            kill_reason: None,
        })
    }

    /// When the next check should start; `None` once the task is to be killed.
    pub fn next_check_at_ms(&self) -> Option<u64> {
        self.kill_reason.is_none().then_some(self.next_check_at_ms)
    }

    pub fn is_due(&self, now_ms: u64) -> bool {
        self.next_check_at_ms().is_some_and(|at| now_ms >= at)
    }

    pub fn health(&self) -> Health {
        self.health
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    pub fn last_failure(&self) -> Option<&str> {
        self.last_failure.as_deref()
    }

    /// Whether a failure at `now_ms` would be ignored.
    pub fn in_grace_period(&self, now_ms: u64) -> bool {
        !self.ever_passed && now_ms < self.started_at_ms.saturating_add(self.check.grace_period_ms)
    }

    /// The standing decision; stays `Kill` once reached (level-triggered callers may ask again).
    pub fn decision(&self) -> HealthDecision {
        match &self.kill_reason {
            Some(reason) => HealthDecision::Kill { reason: reason.clone() },
            None => HealthDecision::Keep,
        }
    }

    /// Feed the result of a check that finished at `now_ms`. Results stamped before the task
    /// started (a previous incarnation) or before the latest recorded result (reordered) are
    /// ignored, as is everything after the kill decision.
    pub fn record(&mut self, now_ms: u64, result: &CheckResult) -> HealthDecision {
        let stale = now_ms < self.started_at_ms || self.last_result_at_ms.is_some_and(|last| now_ms < last);
        if stale || self.kill_reason.is_some() {
            return self.decision();
        }
        self.last_result_at_ms = Some(now_ms);
        self.next_check_at_ms = next_slot(self.next_check_at_ms, self.check.interval_ms, now_ms);
        match result.failure_reason() {
            None => {
                self.ever_passed = true;
                self.health = Health::Healthy;
                self.consecutive_failures = 0;
            }
            // Kept for diagnostics only: it neither counts nor changes the health.
            Some(reason) if self.in_grace_period(now_ms) => self.last_failure = Some(reason),
            Some(reason) => {
                self.health = Health::Unhealthy;
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                let max = self.check.max_consecutive_failures;
                if max > 0 && self.consecutive_failures >= max {
                    self.kill_reason = Some(format!(
                        "{} consecutive health check failures (maximum {max}); last: {reason}",
                        self.consecutive_failures
                    ));
                }
                self.last_failure = Some(reason);
            }
        }
        self.decision()
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Readiness {
    #[default]
    NotReady,
    Ready,
}

/// Readiness of one task incarnation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadinessTracker {
    check: ReadinessCheck,
    started_at_ms: u64,
    readiness: Readiness,
    next_check_at_ms: u64,
    last_result_at_ms: Option<u64>,
    last_failure: Option<String>,
}

impl ReadinessTracker {
    pub fn new(check: &ReadinessCheck, started_at_ms: u64) -> Result<Self, HealthCheckError> {
        check.validate()?;
        Ok(ReadinessTracker {
            check: check.clone(),
            started_at_ms,
            readiness: Readiness::NotReady,
            next_check_at_ms: started_at_ms.saturating_add(check.interval_ms),
            last_result_at_ms: None,
            last_failure: None,
        })
    }

    /// When the next check should start; `None` once ready (readiness is checked until the
    /// first pass only).
    pub fn next_check_at_ms(&self) -> Option<u64> {
        (self.readiness == Readiness::NotReady).then_some(self.next_check_at_ms)
    }

    pub fn is_due(&self, now_ms: u64) -> bool {
        self.next_check_at_ms().is_some_and(|at| now_ms >= at)
    }

    pub fn readiness(&self) -> Readiness {
        self.readiness
    }

    pub fn is_ready(&self) -> bool {
        self.readiness == Readiness::Ready
    }

    /// Why the latest check failed, for "waiting for" messages.
    pub fn last_failure(&self) -> Option<&str> {
        self.last_failure.as_deref()
    }

    /// Feed the result of a check that finished at `now_ms`; stale results are ignored as in
    /// [`HealthTracker::record`].
    pub fn record(&mut self, now_ms: u64, result: &CheckResult) -> Readiness {
        let stale = now_ms < self.started_at_ms || self.last_result_at_ms.is_some_and(|last| now_ms < last);
        if stale || self.is_ready() {
            return self.readiness;
        }
        self.last_result_at_ms = Some(now_ms);
        self.next_check_at_ms = next_slot(self.next_check_at_ms, self.check.interval_ms, now_ms);
        match result.failure_reason() {
            None => self.readiness = Readiness::Ready,
            Some(reason) => self.last_failure = Some(reason),
        }
        self.readiness
    }
}

/// The first slot of the schedule `due + k * interval_ms` (k >= 1) after `now_ms`.
fn next_slot(due_ms: u64, interval_ms: u64, now_ms: u64) -> u64 {
    let next = due_ms.saturating_add(interval_ms);
    if next > now_ms {
        return next;
    }
    let missed = (now_ms - next) / interval_ms + 1;
    next.saturating_add(missed.saturating_mul(interval_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(grace_period_ms: u64, max_consecutive_failures: u32) -> HealthCheck {
        HealthCheck {
            kind: CheckKind::Http { path: "/health".into(), port_index: 0 },
            grace_period_ms,
            interval_ms: 10_000,
            timeout_ms: 2_000,
            max_consecutive_failures,
            delay_ms: 5_000,
        }
    }

    fn failed() -> CheckResult {
        CheckResult::Failed { reason: "HTTP 503".into() }
    }

    #[test]
    fn first_check_after_delay_then_every_interval() {
        let mut t = HealthTracker::new(&check(0, 3), 1_000).unwrap();
        assert_eq!(t.next_check_at_ms(), Some(6_000));
        assert!(!t.is_due(5_999));
        assert!(t.is_due(6_000));
        // A check due at 6000 that took 1.5 s: the next is still due at 16000.
        t.record(7_500, &CheckResult::Passed);
        assert_eq!(t.next_check_at_ms(), Some(16_000));
        // The caller was late by more than two intervals: missed slots are skipped.
        t.record(38_000, &CheckResult::Passed);
        assert_eq!(t.next_check_at_ms(), Some(46_000));
        // Exactly on a slot boundary: the next slot, not this one.
        t.record(46_000, &CheckResult::Passed);
        assert_eq!(t.next_check_at_ms(), Some(56_000));
    }

    #[test]
    fn unknown_until_first_result_then_tracks_results() {
        let mut t = HealthTracker::new(&check(0, 0), 0).unwrap();
        assert_eq!(t.health(), Health::Unknown);
        assert_eq!(t.health().as_flag(), None);
        t.record(5_000, &CheckResult::Passed);
        assert_eq!(t.health(), Health::Healthy);
        t.record(15_000, &CheckResult::TimedOut);
        assert_eq!(t.health(), Health::Unhealthy);
        assert_eq!(t.last_failure(), Some("timed out"));
        t.record(25_000, &CheckResult::Passed);
        assert_eq!(t.health().as_flag(), Some(true));
    }

    #[test]
    fn kill_after_max_consecutive_failures() {
        let mut t = HealthTracker::new(&check(0, 3), 0).unwrap();
        assert_eq!(t.record(5_000, &failed()), HealthDecision::Keep);
        assert_eq!(t.record(15_000, &CheckResult::TimedOut), HealthDecision::Keep);
        let HealthDecision::Kill { reason } = t.record(25_000, &failed()) else { panic!("expected a kill") };
        assert_eq!(reason, "3 consecutive health check failures (maximum 3); last: HTTP 503");
        // Sticky, and no more checks are scheduled.
        assert!(matches!(t.decision(), HealthDecision::Kill { .. }));
        assert!(matches!(t.record(35_000, &CheckResult::Passed), HealthDecision::Kill { .. }));
        assert_eq!(t.next_check_at_ms(), None);
        assert!(!t.is_due(u64::MAX));
    }

    #[test]
    fn a_pass_resets_the_failure_counter() {
        let mut t = HealthTracker::new(&check(0, 3), 0).unwrap();
        t.record(5_000, &failed());
        t.record(15_000, &failed());
        assert_eq!(t.consecutive_failures(), 2);
        t.record(25_000, &CheckResult::Passed);
        assert_eq!(t.consecutive_failures(), 0);
        assert_eq!(t.record(35_000, &failed()), HealthDecision::Keep);
        assert_eq!(t.record(45_000, &failed()), HealthDecision::Keep);
        assert!(matches!(t.record(55_000, &failed()), HealthDecision::Kill { .. }));
    }

    #[test]
    fn failures_in_the_grace_period_never_count() {
        let mut t = HealthTracker::new(&check(60_000, 1), 0).unwrap();
        for at in [5_000, 15_000, 25_000, 35_000, 45_000, 55_000, 59_999] {
            assert!(t.in_grace_period(at));
            assert_eq!(t.record(at, &failed()), HealthDecision::Keep);
        }
        assert_eq!(t.consecutive_failures(), 0);
        assert_eq!(t.health(), Health::Unknown);
        // The grace period is over: the first failure kills (max 1).
        assert!(!t.in_grace_period(60_000));
        assert!(matches!(t.record(60_000, &failed()), HealthDecision::Kill { .. }));
    }

    #[test]
    fn grace_period_ends_at_the_first_pass() {
        let mut t = HealthTracker::new(&check(300_000, 2), 0).unwrap();
        t.record(5_000, &failed());
        assert_eq!(t.consecutive_failures(), 0);
        t.record(15_000, &CheckResult::Passed);
        assert!(!t.in_grace_period(25_000));
        assert_eq!(t.record(25_000, &failed()), HealthDecision::Keep);
        assert_eq!(t.health(), Health::Unhealthy);
        assert!(matches!(t.record(35_000, &failed()), HealthDecision::Kill { .. }));
    }

    #[test]
    fn zero_max_failures_never_kills() {
        let mut t = HealthTracker::new(&check(0, 0), 0).unwrap();
        for i in 0..1_000u64 {
            assert_eq!(t.record(5_000 + i * 10_000, &failed()), HealthDecision::Keep);
        }
        assert_eq!(t.consecutive_failures(), 1_000);
        assert_eq!(t.health(), Health::Unhealthy);
        assert!(t.next_check_at_ms().is_some());
    }

    #[test]
    fn stale_results_are_ignored() {
        let mut t = HealthTracker::new(&check(0, 1), 100_000).unwrap();
        // From a previous incarnation.
        assert_eq!(t.record(99_999, &failed()), HealthDecision::Keep);
        assert_eq!(t.health(), Health::Unknown);
        t.record(105_000, &CheckResult::Passed);
        // Reordered: older than the latest result.
        assert_eq!(t.record(104_000, &failed()), HealthDecision::Keep);
        assert_eq!(t.health(), Health::Healthy);
    }

    #[test]
    fn readiness_is_ready_only_after_a_pass_and_stays_ready() {
        let rc = ReadinessCheck {
            kind: CheckKind::Http { path: "/ready".into(), port_index: 0 },
            interval_ms: 1_000,
            timeout_ms: 500,
        };
        let mut r = ReadinessTracker::new(&rc, 10_000).unwrap();
        assert!(!r.is_ready());
        assert_eq!(r.next_check_at_ms(), Some(11_000));
        assert_eq!(r.record(11_100, &CheckResult::Failed { reason: "HTTP 503".into() }), Readiness::NotReady);
        assert_eq!(r.last_failure(), Some("HTTP 503"));
        assert_eq!(r.record(12_100, &CheckResult::TimedOut), Readiness::NotReady);
        assert_eq!(r.next_check_at_ms(), Some(13_000));
        assert_eq!(r.record(13_100, &CheckResult::Passed), Readiness::Ready);
        assert_eq!(r.next_check_at_ms(), None);
        assert_eq!(r.record(14_100, &CheckResult::TimedOut), Readiness::Ready);
        assert!(r.is_ready());
    }

    #[test]
    fn parameters_are_validated() {
        let mut c = check(0, 3);
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(HealthCheck::new(CheckKind::Tcp { port_index: 1 }).validate(), Ok(()));
        assert_eq!(ReadinessCheck::new(CheckKind::Tcp { port_index: 1 }).validate(), Ok(()));

        c.timeout_ms = c.interval_ms;
        assert_eq!(
            HealthTracker::new(&c, 0).unwrap_err(),
            HealthCheckError::TimeoutNotBelowInterval { timeout_ms: 10_000, interval_ms: 10_000 }
        );
        assert!(c.validate().unwrap_err().to_string().contains("lower the timeout or raise the interval"));
        c.timeout_ms = 0;
        assert_eq!(c.validate(), Err(HealthCheckError::ZeroTimeout));
        c.interval_ms = 0;
        assert_eq!(c.validate(), Err(HealthCheckError::ZeroInterval));

        let bad_path = HealthCheck::new(CheckKind::Http { path: "health".into(), port_index: 0 });
        assert_eq!(bad_path.validate(), Err(HealthCheckError::HttpPathNotAbsolute { path: "health".into() }));
        for argv in [vec![], vec![String::new()]] {
            let cmd = HealthCheck::new(CheckKind::Command { argv });
            assert_eq!(cmd.validate(), Err(HealthCheckError::EmptyCommand));
        }
        let rc = ReadinessCheck { timeout_ms: 30_000, ..ReadinessCheck::new(CheckKind::Tcp { port_index: 0 }) };
        assert!(matches!(ReadinessTracker::new(&rc, 0), Err(HealthCheckError::TimeoutNotBelowInterval { .. })));

        let tcp = CheckKind::Tcp { port_index: 2 };
        assert_eq!(tcp.validate_ports(3), Ok(()));
        assert_eq!(tcp.validate_ports(2), Err(HealthCheckError::PortIndexOutOfRange { index: 2, port_count: 2 }));
        assert_eq!(CheckKind::Command { argv: vec!["true".into()] }.validate_ports(0), Ok(()));
    }
}
