//! Drills: switchovers run on purpose to prove a group can move, scheduled ahead, with the
//! outcome and the measured recovery time recorded. A drill is an ordinary make-before-break
//! switchover (same preflight, ramp, approvals and windows); what it adds is the schedule and
//! the record of when each group was last exercised.

use serde::{Deserialize, Serialize};

use crate::model::{GroupName, SiteName};
use crate::operation::Outcome;
use crate::state::State;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drill {
    /// `drill-<log index>`.
    pub id: String,
    pub group: GroupName,
    pub to: SiteName,
    /// Leader time at which it starts.
    pub at_ms: u64,
    pub actor: String,
    pub reason: String,
    pub scheduled_at_ms: u64,
    /// The switchover, once started.
    pub operation: Option<String>,
    /// Why it did not start (refused at its time, or cancelled).
    pub not_started: Option<String>,
}

/// Where a drill stands, with its measured recovery time once known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DrillStatus {
    /// scheduled, running, succeeded, failed, needs-attention, aborted, not-started.
    pub status: &'static str,
    /// From the switchover's start to all traffic on the target.
    pub rto_ms: Option<u64>,
    pub finished_at_ms: Option<u64>,
    pub detail: String,
}

impl Drill {
    pub fn is_pending(&self) -> bool {
        self.operation.is_none() && self.not_started.is_none()
    }

    pub fn status(&self, state: &State) -> DrillStatus {
        if let Some(why) = &self.not_started {
            return DrillStatus { status: "not-started", rto_ms: None, finished_at_ms: None, detail: why.clone() };
        }
        let Some(op) = self.operation.as_ref().and_then(|id| state.operations.get(id)) else {
            return DrillStatus { status: "scheduled", rto_ms: None, finished_at_ms: None, detail: String::new() };
        };
        let at_full = op.steps.iter().find(|s| s.phase == crate::Phase::Draining).map(|s| s.started_at_ms);
        DrillStatus {
            status: match op.outcome {
                Outcome::Running => "running",
                other => other.as_str(),
            },
            rto_ms: at_full.map(|t| t.saturating_sub(op.created_at_ms)),
            finished_at_ms: op.finished_at_ms,
            detail: op.error.clone().unwrap_or_default(),
        }
    }
}

/// The drills due at `now_ms`, in id order.
pub fn due(state: &State, now_ms: u64) -> Vec<String> {
    state.drills.values().filter(|d| d.is_pending() && d.at_ms <= now_ms).map(|d| d.id.clone()).collect()
}
