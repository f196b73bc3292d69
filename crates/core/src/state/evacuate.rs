//! `apply` for evacuations: starting one (all-or-nothing preflight and reservation), its steps,
//! and an operator's pause, resume or abort of it.

use serde_json::json;

use super::State;
use crate::audit::Entry;
use crate::engine::plan_switchover_for;
use crate::evacuation::{Evacuation, EvacuationGroup, EvacuationStep, GroupStatus, steps};
use crate::operation::{Outcome, Pause};
use crate::plan::{MoveScope, scope_order};
use crate::proposal::{Applied, Control, Refusal, Response};

impl State {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn start_evacuation(
        &mut self,
        index: u64,
        at: u64,
        actor: &str,
        from: Option<&str>,
        groups: &[String],
        to: &str,
        reason: &str,
        plan: &str,
        concurrency: u32,
        failure_budget: u32,
        // A planned move (not a rollback): the TTL budget applies.
        planned: bool,
    ) -> Response {
        if reason.len() > 1024 {
            return Err(Refusal::Invalid("reason is longer than 1024 bytes".into()));
        }
        if concurrency == 0 || failure_budget == 0 {
            return Err(Refusal::Invalid(format!(
                "concurrency ({concurrency}) and failure budget ({failure_budget}) must both be at least 1"
            )));
        }
        if !self.sites.contains_key(to) {
            return Err(Refusal::UnknownSite(to.to_string()));
        }
        let scope = match (from, groups.is_empty()) {
            (Some(site), true) => MoveScope::Site(site.to_string()),
            (None, false) => MoveScope::Groups(groups.to_vec()),
            _ => return Err(Refusal::Invalid("give either a site to evacuate or groups to move, not both".into())),
        };
        let order = scope_order(self, &scope, to)?;
        if planned {
            for name in &order {
                self.check_ttl_budget(name)?;
            }
        }
        let id = Self::fresh_id("evac", index, |id| self.evacuations.contains_key(id));
        let mut evac = Evacuation {
            id: id.clone(),
            from: from.map(str::to_string),
            to: to.to_string(),
            actor: actor.to_string(),
            reason: reason.to_string(),
            plan: plan.to_string(),
            concurrency,
            failure_budget,
            groups: Vec::with_capacity(order.len()),
            outcome: Outcome::Running,
            created_at_ms: at,
            updated_at_ms: at,
            finished_at_ms: None,
            paused: None,
            error: None,
            awaiting_approval: false,
            approved_by: None,
        };
        // Preflight every group in order; each one's reservation is in place (the evacuation
        // is already registered) when the next is checked. Any refusal undoes it all.
        self.evacuations.insert(id.clone(), evac.clone());
        let mut refusal = None;
        for name in &order {
            match plan_switchover_for(self, name, to, at, Some(&id)) {
                Ok(p) => {
                    let deps = &self.groups[name].spec.depends_on;
                    let group = EvacuationGroup {
                        group: name.clone(),
                        after: order.iter().filter(|o| deps.contains(o)).cloned().collect(),
                        reserved: p.reserved,
                        instances: p.missing,
                        operation: None,
                        not_moved: None,
                        failed: false,
                    };
                    self.evacuations.get_mut(&id).expect("inserted above").groups.push(group.clone());
                    self.groups.get_mut(name).expect("planned").operation = Some(id.clone());
                    evac.groups.push(group);
                }
                Err(r) => {
                    refusal = Some(Refusal::Invalid(format!("group {name} cannot move to {to}: {r}")));
                    break;
                }
            }
        }
        if let Some(r) = refusal {
            for g in &evac.groups {
                self.groups.get_mut(&g.group).expect("planned").operation = None;
            }
            self.evacuations.remove(&id);
            return Err(r);
        }
        let reserved = evac.pending_reservation();
        let approval_for: Vec<&String> =
            order.iter().filter(|g| self.approval_tiers.contains(&self.groups[*g].spec.tier)).collect();
        // A rollback is not held for approval: the evacuation it undoes was approved.
        let awaiting = planned && !approval_for.is_empty();
        self.evacuations.get_mut(&id).expect("inserted above").awaiting_approval = awaiting;
        self.audit.append(Entry {
            time_ms: at,
            actor,
            action: "evacuation.start",
            subject: from.unwrap_or(to),
            reason,
            detail: json!({
                "operation": id,
                "from": from,
                "to": to,
                "plan": plan,
                "concurrency": concurrency,
                "failure_budget": failure_budget,
                "order": order,
                "reserved": reserved,
                "awaiting_approval_for": approval_for,
            }),
            raft_index: index,
        });
        Ok(Applied::OperationStarted { id })
    }

    pub(super) fn evacuation_step(
        &mut self,
        index: u64,
        at: u64,
        actor: &str,
        id: &str,
        step: &EvacuationStep,
    ) -> Response {
        let evac = self.evacuations.get(id).ok_or_else(|| Refusal::UnknownOperation(id.to_string()))?;
        if !steps(self, evac, at).contains(step) {
            return Err(Refusal::StalePhase {
                id: id.to_string(),
                expected: format!("{step:?} due"),
                actual: if evac.is_running() { "not due".into() } else { evac.outcome.as_str().to_string() },
            });
        }
        let (to, reason, plan) = (evac.to.clone(), evac.reason.clone(), evac.plan.clone());
        let position = |evac: &Evacuation, group: &str| {
            evac.groups.iter().position(|g| g.group == group).expect("steps only name the evacuation's groups")
        };
        let (action, subject, detail) = match step {
            EvacuationStep::Start { group } => {
                let reason = format!("evacuation {id}: {reason}");
                match self.start_switchover(
                    index,
                    at,
                    actor,
                    group,
                    &to,
                    &reason,
                    &plan,
                    Some(id),
                    false,
                    crate::OperationKind::Switchover,
                ) {
                    Ok(Applied::OperationStarted { id: op }) => {
                        let e = self.evacuations.get_mut(id).expect("checked above");
                        let i = position(e, group);
                        e.groups[i].operation = Some(op.clone());
                        e.groups[i].reserved = Default::default();
                        ("evacuation.group-started", group.clone(), json!({ "operation": id, "switchover": op }))
                    }
                    Ok(other) => unreachable!("a switchover start answers OperationStarted, not {other:?}"),
                    Err(refusal) => {
                        let e = self.evacuations.get_mut(id).expect("checked above");
                        let i = position(e, group);
                        e.groups[i].not_moved = Some(refusal.to_string());
                        e.groups[i].failed = true;
                        self.groups.get_mut(group).expect("an evacuation's group is never removed").operation = None;
                        (
                            "evacuation.group-failed",
                            group.clone(),
                            json!({ "operation": id, "error": refusal.to_string() }),
                        )
                    }
                }
            }
            EvacuationStep::Skip { group, why } => {
                let e = self.evacuations.get_mut(id).expect("checked above");
                let i = position(e, group);
                e.groups[i].not_moved = Some(why.clone());
                self.groups.get_mut(group).expect("an evacuation's group is never removed").operation = None;
                ("evacuation.group-skipped", group.clone(), json!({ "operation": id, "why": why }))
            }
            EvacuationStep::Finish => {
                let e = &self.evacuations[id];
                let counts = e.counts(self);
                let not_moved: Vec<String> = e
                    .groups
                    .iter()
                    .filter(|g| e.status(self, g) != GroupStatus::Succeeded)
                    .map(|g| format!("{}: {}", g.group, g.not_moved.as_deref().unwrap_or("its switchover failed")))
                    .collect();
                let e = self.evacuations.get_mut(id).expect("checked above");
                e.outcome = if not_moved.is_empty() { Outcome::Succeeded } else { Outcome::Failed };
                e.finished_at_ms = Some(at);
                if !not_moved.is_empty() {
                    e.error = Some(format!("{} group(s) not moved: {}", not_moved.len(), not_moved.join("; ")));
                }
                let subject = e.from.clone().unwrap_or_else(|| e.to.clone());
                let detail = json!({
                    "operation": id,
                    "outcome": e.outcome.as_str(),
                    "groups": counts,
                    "not_moved": not_moved,
                    "duration_ms": at.saturating_sub(e.created_at_ms),
                });
                ("evacuation.complete", subject, detail)
            }
        };
        self.evacuations.get_mut(id).expect("checked above").updated_at_ms = at;
        self.audit.append(Entry {
            time_ms: at,
            actor,
            action,
            subject: &subject,
            reason: &reason,
            detail,
            raft_index: index,
        });
        Ok(Applied::Changed)
    }

    /// Pause: no new group starts and every running switchover pauses. Resume: both go on.
    /// Abort: every switchover still holding its group is aborted (each stops where it is,
    /// serving), and groups not started are released.
    pub(super) fn control_evacuation(
        &mut self,
        index: u64,
        at: u64,
        actor: &str,
        id: &str,
        control: Control,
        reason: &str,
    ) -> Response {
        let evac = &self.evacuations[id];
        if reason.trim().is_empty() {
            return Err(Refusal::Invalid(format!("a reason is required to {} an evacuation", control.as_str())));
        }
        if !evac.is_running() {
            return Err(Refusal::Invalid(format!(
                "evacuation {id} is {}; it cannot be changed",
                evac.outcome.as_str()
            )));
        }
        match (control, &evac.paused) {
            (Control::Pause, Some(p)) => {
                return Err(Refusal::Invalid(format!(
                    "evacuation {id} is already paused (by {}: {})",
                    p.actor, p.reason
                )));
            }
            (Control::Resume, None) => return Err(Refusal::Invalid(format!("evacuation {id} is not paused"))),
            _ => {}
        }
        let children: Vec<String> = evac
            .groups
            .iter()
            .filter_map(|g| g.operation.clone())
            .filter(|op| self.operations.get(op).is_some_and(|o| o.holds_group()))
            .collect();
        let pending: Vec<String> = evac
            .groups
            .iter()
            .filter(|g| g.operation.is_none() && g.not_moved.is_none())
            .map(|g| g.group.clone())
            .collect();
        let why = format!("evacuation {id}: {reason}");
        for child in &children {
            let op = &self.operations[child];
            let applies = match control {
                Control::Pause => op.is_running() && op.paused.is_none(),
                Control::Resume => op.paused.is_some(),
                Control::Abort => true,
            };
            if applies {
                self.control(index, at, actor, child, control, &why)?;
            }
        }
        let e = self.evacuations.get_mut(id).expect("checked above");
        let action = match control {
            Control::Pause => {
                e.paused = Some(Pause { at_ms: at, actor: actor.to_string(), reason: reason.to_string() });
                "evacuation.paused"
            }
            Control::Resume => {
                e.paused = None;
                "evacuation.resumed"
            }
            Control::Abort => {
                for g in e.groups.iter_mut().filter(|g| pending.contains(&g.group)) {
                    g.not_moved = Some(format!("evacuation aborted by {actor}: {reason}"));
                }
                e.outcome = Outcome::Aborted;
                e.paused = None;
                e.finished_at_ms = Some(at);
                e.error = Some(format!("aborted by {actor}: {reason}"));
                for g in &pending {
                    self.groups.get_mut(g).expect("an evacuation's group is never removed").operation = None;
                }
                "evacuation.aborted"
            }
        };
        let e = self.evacuations.get_mut(id).expect("checked above");
        e.updated_at_ms = at;
        let subject = e.from.clone().unwrap_or_else(|| e.to.clone());
        self.audit.append(Entry {
            time_ms: at,
            actor,
            action,
            subject: &subject,
            reason,
            detail: json!({
                "operation": id,
                "control": control.as_str(),
                "switchovers": children,
                "released": if control == Control::Abort { pending } else { Vec::new() },
            }),
            raft_index: index,
        });
        Ok(Applied::Changed)
    }
}
