//! Operations (switchovers today; failovers, evacuations and drills later) and their phases.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::{AppName, GroupName, Resources, SiteName, SiteShare};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OperationKind {
    Switchover,
    Evacuation,
    /// Disaster recovery: moving a group off a site declared down.
    Failover,
    /// Opt-in return of a failed-over group to its original site: a planned switchover.
    Failback,
}

impl OperationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OperationKind::Switchover => "switchover",
            OperationKind::Evacuation => "evacuation",
            OperationKind::Failover => "failover",
            OperationKind::Failback => "failback",
        }
    }
}

/// Phases of a make-before-break switchover, in order. Preflight happens atomically when the
/// operation is created, so an operation that exists has passed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Phase {
    /// The group's tier needs a second person's approval before anything changes; capacity
    /// on the target is already reserved.
    AwaitingApproval,
    /// The target runs as many instances as the source; waiting for them to be healthy.
    ScalingUp,
    /// Every target instance is healthy; it must stay so for the verify window.
    Verifying,
    /// Part of the traffic is on the target (a step of the group's ramp); each step is held at
    /// least one TTL while the target stays within its health budget.
    Shifting,
    /// All traffic is on the target (DNS and load-balancer weights); held for a TTL plus the
    /// drain time, and at least the verify window, while the target stays healthy.
    Draining,
    /// The source is told to stop its instances; waiting until it reports none.
    ScalingDown,
    Done,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::AwaitingApproval => "AwaitingApproval",
            Phase::ScalingUp => "ScalingUp",
            Phase::Verifying => "Verifying",
            Phase::Shifting => "Shifting",
            Phase::Draining => "Draining",
            Phase::ScalingDown => "ScalingDown",
            Phase::Done => "Done",
        }
    }

    /// Whether traffic may still be on the source: before this point a failure can be rolled
    /// back without touching what users see.
    pub fn before_traffic_shift(self) -> bool {
        matches!(self, Phase::AwaitingApproval | Phase::ScalingUp | Phase::Verifying)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Running,
    Succeeded,
    /// Stopped and rolled back; nothing users see changed.
    Failed,
    /// Stopped where a human must look (traffic already moved); the group stays locked.
    NeedsAttention,
    /// Stopped by an operator; the group serves where the abort left it.
    Aborted,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Running => "running",
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::NeedsAttention => "needs-attention",
            Outcome::Aborted => "aborted",
        }
    }

    pub fn is_finished(self) -> bool {
        !matches!(self, Outcome::Running)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub phase: Phase,
    pub started_at_ms: u64,
    pub finished_at_ms: Option<u64>,
    pub detail: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    pub id: String,
    pub kind: OperationKind,
    pub group: GroupName,
    pub from: SiteName,
    pub to: SiteName,
    pub actor: String,
    pub reason: String,
    pub phase: Phase,
    pub outcome: Outcome,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    pub phase_started_at_ms: u64,
    /// When the current attempt to bring the target up began (scale-up timeout base).
    pub scale_up_started_at_ms: u64,
    pub finished_at_ms: Option<u64>,
    pub error: Option<String>,
    pub steps: Vec<Step>,
    /// Instances per app the target must run (the source's count at start).
    pub target_instances: BTreeMap<AppName, u32>,
    /// The target's share before the operation, restored on rollback.
    pub target_before: SiteShare,
    /// Capacity held on the target until its instances are running.
    pub reserved: Resources,
    pub traffic_shifted_at_ms: Option<u64>,
    /// Set while an operator has paused the operation: when, by whom and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<Pause>,
    /// The target's traffic percentage after each ramp step (the group's ramp when started).
    #[serde(default = "full_ramp")]
    pub ramp: Vec<u32>,
    /// Ramp steps in force: 0 before any traffic moved, `ramp.len()` at 100 %.
    #[serde(default)]
    pub ramp_step: u32,
    /// Who approved the start, when the group's tier needs a second person.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<String>,
    /// The evacuation this switchover is part of, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evacuation: Option<String>,
    /// A stateful group's failover: what its promotion waits for and what it may lose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promotion: Option<Promotion>,
}

/// A stateful group's failover promotes the target's replica (routes traffic to it) only once
/// the old site is fenced (its cell has applied `fence_epoch`, which takes its traffic away) or
/// the old primary's lease has run out (`lease_ms` after its cell's last report).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promotion {
    pub fence_epoch: u64,
    pub lease_ms: u64,
    pub rpo_ms: u64,
    /// The target replica's replication lag when the failover started; None: unknown.
    pub lag_ms: Option<u64>,
    /// Who accepted losing more than the RPO budget, when someone had to.
    pub data_loss_accepted_by: Option<String>,
}

/// An operator's pause of a running operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pause {
    pub at_ms: u64,
    pub actor: String,
    pub reason: String,
}

fn full_ramp() -> Vec<u32> {
    vec![100]
}

impl Operation {
    /// The target's traffic percentage at ramp step `step` (0: none).
    pub fn ramp_percent(&self, step: u32) -> u32 {
        if step == 0 { 0 } else { self.ramp.get(step as usize - 1).copied().unwrap_or(100) }
    }

    pub fn ramp_steps(&self) -> u32 {
        self.ramp.len() as u32
    }

    pub fn is_running(&self) -> bool {
        self.outcome == Outcome::Running
    }

    /// Whether the operation still holds its group's lock (running, or stopped for a human
    /// with traffic already moved; such an operation still completes once the source reports
    /// its instances gone).
    pub fn holds_group(&self) -> bool {
        matches!(self.outcome, Outcome::Running | Outcome::NeedsAttention)
    }
}
