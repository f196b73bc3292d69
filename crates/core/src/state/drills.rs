//! `apply` for drills: scheduling, starting (as an ordinary switchover) and cancelling.

use serde_json::json;

use super::State;
use crate::audit::Entry;
use crate::drill::Drill;
use crate::proposal::{Applied, Refusal, Response};

impl State {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn schedule_drill(
        &mut self,
        index: u64,
        at: u64,
        actor: &str,
        group: &str,
        to: &str,
        at_ms: u64,
        reason: &str,
    ) -> Response {
        if !self.groups.contains_key(group) {
            return Err(Refusal::UnknownGroup(group.to_string()));
        }
        if !self.sites.contains_key(to) {
            return Err(Refusal::UnknownSite(to.to_string()));
        }
        if reason.trim().is_empty() || reason.len() > 1024 {
            return Err(Refusal::Invalid("a drill needs a reason of at most 1024 bytes".into()));
        }
        let id = Self::fresh_id("drill", index, |id| self.drills.contains_key(id));
        let at_ms = at_ms.max(at);
        self.drills.insert(
            id.clone(),
            Drill {
                id: id.clone(),
                group: group.to_string(),
                to: to.to_string(),
                at_ms,
                actor: actor.to_string(),
                reason: reason.to_string(),
                scheduled_at_ms: at,
                operation: None,
                not_started: None,
            },
        );
        self.audit.append(Entry {
            time_ms: at,
            actor,
            action: "drill.schedule",
            subject: group,
            reason,
            detail: json!({ "drill": id, "to": to, "at_ms": at_ms }),
            raft_index: index,
        });
        Ok(Applied::OperationStarted { id })
    }

    pub(super) fn start_drill(&mut self, index: u64, at: u64, actor: &str, id: &str) -> Response {
        let d = self.drills.get(id).ok_or_else(|| Refusal::UnknownOperation(id.to_string()))?;
        if !d.is_pending() || d.at_ms > at {
            return Err(Refusal::StalePhase {
                id: id.to_string(),
                expected: "due".into(),
                actual: if d.is_pending() { "scheduled later".into() } else { "started".into() },
            });
        }
        // The switchover is the drill's scheduler's: approval by them is refused like theirs.
        let (group, to, owner) = (d.group.clone(), d.to.clone(), d.actor.clone());
        let reason = format!("drill {id}: {}", d.reason);
        let started = self.check_change_window(at).and_then(|()| self.check_ttl_budget(&group)).and_then(|()| {
            self.start_switchover(
                index,
                at,
                &owner,
                &group,
                &to,
                &reason,
                "",
                None,
                true,
                crate::OperationKind::Switchover,
            )
        });
        let d = self.drills.get_mut(id).expect("checked above");
        let (action, detail) = match started {
            Ok(Applied::OperationStarted { id: op }) => {
                d.operation = Some(op.clone());
                ("drill.start", json!({ "drill": id, "switchover": op }))
            }
            Ok(other) => unreachable!("a switchover start answers OperationStarted, not {other:?}"),
            Err(refusal) => {
                d.not_started = Some(refusal.to_string());
                ("drill.not-started", json!({ "drill": id, "error": refusal.to_string() }))
            }
        };
        self.audit.append(Entry {
            time_ms: at,
            actor,
            action,
            subject: &group,
            reason: &reason,
            detail,
            raft_index: index,
        });
        Ok(Applied::Changed)
    }

    pub(super) fn cancel_drill(&mut self, index: u64, at: u64, actor: &str, id: &str, reason: &str) -> Response {
        let d = self.drills.get_mut(id).ok_or_else(|| Refusal::UnknownOperation(id.to_string()))?;
        if reason.trim().is_empty() {
            return Err(Refusal::Invalid("a reason is required to cancel a drill".into()));
        }
        if !d.is_pending() {
            return Err(Refusal::Invalid(format!(
                "drill {id} has already started (abort its switchover {} instead) or ended",
                d.operation.as_deref().unwrap_or("-")
            )));
        }
        d.not_started = Some(format!("cancelled by {actor}: {reason}"));
        let group = d.group.clone();
        self.audit.append(Entry {
            time_ms: at,
            actor,
            action: "drill.cancel",
            subject: &group,
            reason,
            detail: json!({ "drill": id }),
            raft_index: index,
        });
        Ok(Applied::Changed)
    }
}
