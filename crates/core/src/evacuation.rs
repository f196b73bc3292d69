//! Evacuations: many groups moved to one target site as one operation (a whole site before
//! power work, or a list of groups). The evacuation reserves the target capacity of every
//! group when it starts, then runs one make-before-break switchover per group: dependencies
//! first, at most `concurrency` at a time, and no new group once `failure_budget` groups have
//! failed. Pure: the decision (`steps`) is a function of the committed state only, and `apply`
//! accepts a step only if the same decision still proposes it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::{AppName, GroupName, Resources, SiteName};
use crate::operation::{Outcome, Pause, Phase};
use crate::state::State;

/// Default number of groups moved side by side.
pub const DEFAULT_CONCURRENCY: u32 = 4;
/// Default number of failed groups after which no new group starts.
pub const DEFAULT_FAILURE_BUDGET: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evacuation {
    /// `evac-<log index>`.
    pub id: String,
    /// The site evacuated; `None` when started for a list of groups.
    pub from: Option<SiteName>,
    pub to: SiteName,
    pub actor: String,
    pub reason: String,
    /// The id of the reviewed plan it executes; empty when started without one.
    pub plan: String,
    pub concurrency: u32,
    pub failure_budget: u32,
    /// In the order they start (dependencies first, then tier, then name).
    pub groups: Vec<EvacuationGroup>,
    pub outcome: Outcome,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    pub finished_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<Pause>,
    pub error: Option<String>,
    /// Some group's tier needs a second person's approval: nothing starts until then.
    #[serde(default)]
    pub awaiting_approval: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<String>,
}

/// One group's part of an evacuation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvacuationGroup {
    pub group: GroupName,
    /// Groups of this evacuation that must have moved before this one starts.
    pub after: Vec<GroupName>,
    /// Capacity held on the target for this group until its switchover starts (and takes the
    /// reservation over).
    pub reserved: Resources,
    /// Instances per app the target still has to start for this group.
    pub instances: BTreeMap<AppName, u32>,
    /// The group's switchover, once started.
    pub operation: Option<String>,
    /// Why the group was not moved; set when its switchover refused to start (`failed`) or
    /// the evacuation gave it up (failure budget spent, a dependency that did not move, abort).
    pub not_moved: Option<String>,
    pub failed: bool,
}

/// Where one group of an evacuation stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupStatus {
    Pending,
    Running(Phase),
    /// Its switchover stopped where a human must look; counts as a failure.
    NeedsAttention,
    Succeeded,
    Failed,
    /// Its switchover was aborted by an operator: not moved, not counted as a failure.
    Aborted,
    Skipped,
}

impl GroupStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            GroupStatus::Pending => "pending",
            GroupStatus::Running(_) => "running",
            GroupStatus::NeedsAttention => "needs-attention",
            GroupStatus::Succeeded => "succeeded",
            GroupStatus::Failed => "failed",
            GroupStatus::Aborted => "aborted",
            GroupStatus::Skipped => "skipped",
        }
    }

    fn is_failure(self) -> bool {
        matches!(self, GroupStatus::Failed | GroupStatus::NeedsAttention)
    }

    /// Neither moving nor waiting to move.
    pub fn is_settled(self) -> bool {
        matches!(self, GroupStatus::Succeeded | GroupStatus::Failed | GroupStatus::Aborted | GroupStatus::Skipped)
    }
}

/// The next step of an evacuation. Carried in [`crate::Action::EvacuationStep`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvacuationStep {
    /// Start this group's switchover.
    Start { group: GroupName },
    /// Give this group up (release its reservation and lock), saying why.
    Skip { group: GroupName, why: String },
    /// Every group is settled: record the outcome.
    Finish,
}

impl Evacuation {
    pub fn is_running(&self) -> bool {
        self.outcome == Outcome::Running
    }

    pub fn status(&self, state: &State, group: &EvacuationGroup) -> GroupStatus {
        if group.not_moved.is_some() {
            return if group.failed { GroupStatus::Failed } else { GroupStatus::Skipped };
        }
        let Some(op) = group.operation.as_ref().and_then(|id| state.operations.get(id)) else {
            return GroupStatus::Pending;
        };
        match op.outcome {
            Outcome::Running => GroupStatus::Running(op.phase),
            Outcome::NeedsAttention => GroupStatus::NeedsAttention,
            Outcome::Succeeded => GroupStatus::Succeeded,
            Outcome::Failed => GroupStatus::Failed,
            Outcome::Aborted => GroupStatus::Aborted,
        }
    }

    /// (status, count) of every status present, for summaries.
    pub fn counts(&self, state: &State) -> BTreeMap<&'static str, usize> {
        let mut out = BTreeMap::new();
        for g in &self.groups {
            *out.entry(self.status(state, g).as_str()).or_insert(0) += 1;
        }
        out
    }

    pub fn failures(&self, state: &State) -> u32 {
        self.groups.iter().filter(|g| self.status(state, g).is_failure()).count() as u32
    }

    /// Capacity still held on the target for groups that have not started.
    pub fn pending_reservation(&self) -> Resources {
        self.groups
            .iter()
            .filter(|g| g.operation.is_none() && g.not_moved.is_none())
            .map(|g| g.reserved)
            .fold(Resources::default(), Resources::plus)
    }
}

/// What holds `group` back from starting at `now_ms` other than its dependencies and the
/// concurrency limit: a freeze, or no fresh report from the target's cell (a short gap must
/// not fail the group). A held group waits: it is neither started nor counted as failed.
pub fn held_by(state: &State, evac: &Evacuation, group: &str, now_ms: u64) -> Option<String> {
    let age = state.reports.get(&evac.to).map(|r| r.age_ms(now_ms));
    if age.is_none_or(|a| a > crate::REPORT_FRESH_MS) {
        return Some(format!(
            "held until {}'s cell reports again (last {})",
            evac.to,
            age.map_or("never".to_string(), |a| format!("{a} ms ago"))
        ));
    }
    let g = state.groups.get(group)?;
    let mut sites: Vec<&str> = g.placement.active_sites().into_iter().map(String::as_str).collect();
    sites.push(&evac.to);
    state
        .freeze_on(group, &sites, now_ms)
        .map(|(scope, f)| format!("held by a freeze ({scope}, by {}: {})", f.actor, f.reason))
}

/// The steps due at `now_ms` for one evacuation, in order. Empty when it is finished, paused,
/// waiting for running switchovers, or holding frozen groups.
pub fn steps(state: &State, evac: &Evacuation, now_ms: u64) -> Vec<EvacuationStep> {
    if !evac.is_running() || evac.paused.is_some() || evac.awaiting_approval {
        return Vec::new();
    }
    let status: BTreeMap<&str, GroupStatus> =
        evac.groups.iter().map(|g| (g.group.as_str(), evac.status(state, g))).collect();
    let failures = status.values().filter(|s| s.is_failure()).count() as u32;
    let running = status.values().filter(|s| matches!(s, GroupStatus::Running(_))).count() as u32;
    let mut slots = evac.concurrency.saturating_sub(running);
    let mut out = Vec::new();
    for g in evac.groups.iter().filter(|g| status[g.group.as_str()] == GroupStatus::Pending) {
        if failures >= evac.failure_budget {
            out.push(EvacuationStep::Skip {
                group: g.group.clone(),
                why: format!("failure budget spent: {failures} of {} groups failed", evac.failure_budget),
            });
            continue;
        }
        let dep = |want: fn(GroupStatus) -> bool| {
            g.after.iter().find(|d| status.get(d.as_str()).is_some_and(|s| want(*s))).cloned()
        };
        if let Some(d) = dep(|s| matches!(s, GroupStatus::Failed | GroupStatus::Aborted | GroupStatus::Skipped)) {
            out.push(EvacuationStep::Skip {
                group: g.group.clone(),
                why: format!("it depends on {d}, which did not move"),
            });
        } else if slots > 0
            && dep(|s| s != GroupStatus::Succeeded).is_none()
            && held_by(state, evac, &g.group, now_ms).is_none()
        {
            out.push(EvacuationStep::Start { group: g.group.clone() });
            slots -= 1;
        }
    }
    if out.is_empty() && status.values().all(|s| s.is_settled()) {
        out.push(EvacuationStep::Finish);
    }
    out
}

/// What rolling an evacuation back takes: abort it if it still runs (groups whose traffic never
/// moved go back at once), then one evacuation moving every group whose traffic had moved back
/// to the site it came from, in reverse order. Refused when there is nothing to undo, or when
/// the moved groups came from different sites (roll those back one operation at a time).
pub fn rollback_actions(state: &State, evac: &Evacuation, reason: &str) -> Result<Vec<crate::Action>, crate::Refusal> {
    use crate::{Action, Control, Refusal};
    if reason.trim().is_empty() {
        return Err(Refusal::Invalid("a reason is required to roll back an evacuation".into()));
    }
    let moved: Vec<&crate::operation::Operation> = evac
        .groups
        .iter()
        .rev()
        .filter_map(|g| g.operation.as_ref().and_then(|id| state.operations.get(id)))
        // Mid-ramp, the abort below puts all traffic back on the source.
        .filter(|o| o.traffic_shifted_at_ms.is_some() && !(o.holds_group() && o.phase == Phase::Shifting))
        .collect();
    let mut out = Vec::new();
    if evac.is_running() {
        out.push(Action::ControlOperation {
            id: evac.id.clone(),
            control: Control::Abort,
            reason: format!("rollback: {reason}"),
        });
    }
    let sources: std::collections::BTreeSet<&str> = moved.iter().map(|o| o.from.as_str()).collect();
    match sources.into_iter().collect::<Vec<_>>().as_slice() {
        [] if out.is_empty() => {
            return Err(Refusal::Invalid(format!(
                "evacuation {} moved no group's traffic; nothing to roll back",
                evac.id
            )));
        }
        [] => {}
        [source] => out.push(Action::StartEvacuation {
            from: None,
            groups: moved.iter().map(|o| o.group.clone()).collect(),
            to: source.to_string(),
            reason: format!("rollback of {}: {reason}", evac.id),
            plan: String::new(),
            concurrency: evac.concurrency,
            failure_budget: evac.failure_budget,
            rollback_of: evac.id.clone(),
        }),
        several => {
            return Err(Refusal::Invalid(format!(
                "evacuation {} moved groups from {}; roll each switchover back on its own",
                evac.id,
                several.join(", ")
            )));
        }
    }
    Ok(out)
}
