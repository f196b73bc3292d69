//! `apply` for the traffic ramp of a switchover: one step forward, or one back after a
//! health breach (which halts the operation for an operator).

use serde_json::json;

use super::{FULL_WEIGHT, State};
use crate::audit::Entry;
use crate::operation::{Pause, Phase, Step};
use crate::proposal::{Applied, Refusal, Response};

impl State {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn shift_traffic(
        &mut self,
        index: u64,
        at: u64,
        actor: &str,
        id: &str,
        from_step: u32,
        to_step: u32,
        detail: &str,
    ) -> Response {
        let op = self.operations.get(id).ok_or_else(|| Refusal::UnknownOperation(id.to_string()))?;
        let n = op.ramp_steps();
        let expected = match from_step {
            0 => Phase::Verifying,
            s if s == n => Phase::Draining,
            _ => Phase::Shifting,
        };
        let op = self.running_op(id, expected)?;
        if !op.is_running() || op.ramp_step != from_step {
            return Err(Refusal::StalePhase {
                id: id.to_string(),
                expected: format!("ramp step {from_step}"),
                actual: format!("ramp step {}", op.ramp_step),
            });
        }
        let revert = to_step + 1 == from_step;
        if !(revert || to_step == from_step + 1) || to_step > n {
            return Err(Refusal::Invalid(format!("operation {id}: no ramp move from step {from_step} to {to_step}")));
        }
        let (group_name, src, dst) = (op.group.clone(), op.from.clone(), op.to.clone());
        let percent = op.ramp_percent(to_step);
        let target_before = op.target_before.weight;
        let g = self.groups.get_mut(&group_name).expect("an operation's group is never removed");
        let before = g.placement.clone();
        for (site, share) in g.placement.sites.iter_mut() {
            share.weight = if *site == dst {
                if to_step == 0 { target_before } else { percent * FULL_WEIGHT / 100 }
            } else if *site == src {
                FULL_WEIGHT - percent * FULL_WEIGHT / 100
            } else {
                0
            };
        }
        g.placement.epoch = index;
        let op = self.operations.get_mut(id).expect("checked above");
        let phase = match to_step {
            0 => Phase::Verifying,
            s if s == n => Phase::Draining,
            _ => Phase::Shifting,
        };
        if to_step == 0 {
            op.traffic_shifted_at_ms = None;
        } else if op.traffic_shifted_at_ms.is_none() {
            op.traffic_shifted_at_ms = Some(at);
        }
        if revert {
            op.paused = Some(Pause {
                at_ms: at,
                actor: actor.to_string(),
                reason: format!("ramp reverted to {percent}% on {dst}: {detail}"),
            });
        }
        if let Some(step) = op.steps.last_mut() {
            step.finished_at_ms = Some(at);
        }
        op.steps.push(Step { phase, started_at_ms: at, finished_at_ms: None, detail: detail.to_string() });
        op.phase = phase;
        op.ramp_step = to_step;
        op.phase_started_at_ms = at;
        op.updated_at_ms = at;
        let reason = op.reason.clone();
        self.routing_version = index;
        self.audit.append(Entry {
            time_ms: at,
            actor,
            action: if revert { "switchover.ramp-reverted" } else { "switchover.traffic" },
            subject: &group_name,
            reason: &reason,
            detail: json!({
                "operation": id,
                "from_step": from_step,
                "to_step": to_step,
                "target_percent": percent,
                "phase": phase.as_str(),
                "step": detail,
                "placement_before": before,
                "placement_after": g.placement,
            }),
            raft_index: index,
        });
        Ok(Applied::Changed)
    }
}
