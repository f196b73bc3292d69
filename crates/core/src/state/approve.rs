//! `apply` for two-person approval: the policy (which tiers need it) and an approval.

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
