//! `apply` for the rules planned moves follow: two-person approval (which tiers need it, and an
//! approval), change windows and the DNS TTL budget.

use serde_json::json;

use super::{State, scale_up_target};
use crate::audit::Entry;
use crate::operation::{Phase, Step};
use crate::proposal::{Applied, Refusal, Response};

impl State {
    pub(super) fn set_approval_policy(
        &mut self,
        index: u64,
        at: u64,
        actor: &str,
        tiers: &[u32],
        reason: &str,
    ) -> Response {
        if reason.trim().is_empty() {
            return Err(Refusal::Invalid("a reason is required to change the approval policy".into()));
        }
        let tiers: std::collections::BTreeSet<u32> = tiers.iter().copied().collect();
        if tiers == self.approval_tiers {
            return Ok(Applied::Unchanged);
        }
        let before = std::mem::replace(&mut self.approval_tiers, tiers);
        self.audit.append(Entry {
            time_ms: at,
            actor,
            action: "policy.approval",
            subject: "approval-tiers",
            reason,
            detail: json!({ "before": before, "after": self.approval_tiers }),
            raft_index: index,
        });
        Ok(Applied::Changed)
    }

    /// A second person's approval of a switchover or evacuation waiting for one.
    pub(super) fn approve(&mut self, index: u64, at: u64, actor: &str, id: &str, reason: &str) -> Response {
        if reason.trim().is_empty() {
            return Err(Refusal::Invalid("a reason is required to approve an operation".into()));
        }
        let (initiator, waiting, subject) = if let Some(e) = self.evacuations.get(id) {
            (e.actor.clone(), e.is_running() && e.awaiting_approval, e.from.clone().unwrap_or_else(|| e.to.clone()))
        } else {
            let op = self.operations.get(id).ok_or_else(|| Refusal::UnknownOperation(id.to_string()))?;
            (op.actor.clone(), op.is_running() && op.phase == Phase::AwaitingApproval, op.group.clone())
        };
        if !waiting {
            return Err(Refusal::Invalid(format!("operation {id} is not waiting for approval")));
        }
        if self.operations.get(id).is_some_and(|o| o.paused.is_some())
            || self.evacuations.get(id).is_some_and(|e| e.paused.is_some())
        {
            return Err(Refusal::Invalid(format!("operation {id} is paused; resume it before approving it")));
        }
        if initiator == actor {
            return Err(Refusal::Invalid(format!(
                "{actor} started operation {id} and cannot also approve it; a second person must"
            )));
        }
        if let Some(e) = self.evacuations.get_mut(id) {
            e.awaiting_approval = false;
            e.approved_by = Some(actor.to_string());
            e.updated_at_ms = at;
        } else {
            let op = self.operations.get_mut(id).expect("checked above");
            let g = self.groups.get_mut(&op.group).expect("an operation's group is never removed");
            scale_up_target(&mut g.placement, &op.to, &op.target_instances, index);
            let detail = format!(
                "approved by {actor}; scale {} up to {} instances (source {})",
                op.to,
                op.target_instances.values().sum::<u32>(),
                op.from
            );
            if let Some(step) = op.steps.last_mut() {
                step.finished_at_ms = Some(at);
            }
            op.steps.push(Step { phase: Phase::ScalingUp, started_at_ms: at, finished_at_ms: None, detail });
            op.phase = Phase::ScalingUp;
            op.phase_started_at_ms = at;
            op.scale_up_started_at_ms = at;
            op.updated_at_ms = at;
            op.approved_by = Some(actor.to_string());
        }
        self.audit.append(Entry {
            time_ms: at,
            actor,
            action: "operation.approved",
            subject: &subject,
            reason,
            detail: json!({ "operation": id, "initiator": initiator }),
            raft_index: index,
        });
        Ok(Applied::Changed)
    }
}

impl State {
    pub(super) fn set_change_windows(
        &mut self,
        index: u64,
        at: u64,
        actor: &str,
        windows: &[crate::window::ChangeWindow],
        reason: &str,
    ) -> Response {
        if reason.trim().is_empty() {
            return Err(Refusal::Invalid("a reason is required to change the change windows".into()));
        }
        if let Some(w) = windows.iter().find(|w| {
            w.days.is_empty() || w.days.iter().any(|d| *d > 6) || w.start_minute >= 1440 || w.end_minute >= 1440
        }) {
            return Err(Refusal::Invalid(format!("change window {w:?} is not a weekly window")));
        }
        if windows == self.change_windows.as_slice() {
            return Ok(Applied::Unchanged);
        }
        let show = |ws: &[crate::window::ChangeWindow]| ws.iter().map(|w| w.to_string()).collect::<Vec<_>>();
        let before = show(&self.change_windows);
        self.change_windows = windows.to_vec();
        self.audit.append(Entry {
            time_ms: at,
            actor,
            action: "policy.change-windows",
            subject: "change-windows",
            reason,
            detail: json!({ "before": before, "after": show(windows) }),
            raft_index: index,
        });
        Ok(Applied::Changed)
    }

    /// Refuses a planned move outside every change window (none configured: any time).
    pub fn check_change_window(&self, at_ms: u64) -> Result<(), Refusal> {
        if self.change_windows.is_empty() || self.change_windows.iter().any(|w| w.contains(at_ms)) {
            return Ok(());
        }
        Err(Refusal::OutsideChangeWindow {
            now: crate::window::describe_instant(at_ms),
            windows: self.change_windows.iter().map(|w| w.to_string()).collect::<Vec<_>>().join("; "),
        })
    }
}

impl State {
    pub(super) fn set_ttl_budget(
        &mut self,
        index: u64,
        at: u64,
        actor: &str,
        max_ttl_s: u32,
        reason: &str,
    ) -> Response {
        if reason.trim().is_empty() {
            return Err(Refusal::Invalid("a reason is required to change the TTL budget".into()));
        }
        if max_ttl_s == self.ttl_budget_s {
            return Ok(Applied::Unchanged);
        }
        let before = std::mem::replace(&mut self.ttl_budget_s, max_ttl_s);
        self.audit.append(Entry {
            time_ms: at,
            actor,
            action: "policy.ttl-budget",
            subject: "ttl-budget",
            reason,
            detail: json!({ "before_s": before, "after_s": max_ttl_s }),
            raft_index: index,
        });
        Ok(Applied::Changed)
    }

    /// Refuses a planned move of `group` whose DNS TTL is above the budget (0: none).
    pub fn check_ttl_budget(&self, group: &str) -> Result<(), Refusal> {
        let Some(g) = self.groups.get(group) else { return Ok(()) };
        if self.ttl_budget_s == 0 || g.spec.ttl_s <= self.ttl_budget_s {
            return Ok(());
        }
        Err(Refusal::TtlOverBudget { group: group.to_string(), ttl_s: g.spec.ttl_s, budget_s: self.ttl_budget_s })
    }
}
