//! `apply` for disaster recovery: a site declared down (its evidence checked here), a group's
//! failover (started, then routed when a cold target is ready), and the brake.

use serde_json::json;

use super::{FULL_WEIGHT, State, scale_up_target};
use crate::audit::Entry;
use crate::dr::detect::{DetectConfig, Evidence, check_evidence};
use crate::dr::detect::{Recovery, check_recovery};
use crate::dr::failback::Origin;
use crate::dr::{Brake, Declaration, HISTORY};
use crate::model::SiteState;
use crate::operation::{Operation, OperationKind, Outcome, Phase, Step};
use crate::proposal::{Applied, Refusal, Response};

impl State {
    pub(super) fn declare_site_down(
        &mut self,
        index: u64,
        at: u64,
        actor: &str,
        site: &str,
        evidence: &[Evidence],
        detect: &DetectConfig,
    ) -> Response {
        let s = self.sites.get(site).ok_or_else(|| Refusal::UnknownSite(site.to_string()))?;
        if self.down_sites.contains_key(site) {
            return Ok(Applied::Unchanged);
        }
        check_evidence(evidence, at, detect)
            .map_err(|why| Refusal::Invalid(format!("site {site:?} cannot be declared down: {why}")))?;
        let before = s.state;
        self.sites.get_mut(site).expect("checked above").state = SiteState::Down;
        self.down_sites.insert(
            site.to_string(),
            Declaration {
                at_ms: at,
                actor: actor.to_string(),
                evidence: evidence.to_vec(),
                manual: None,
                break_glass: vec![],
                accept_data_loss: false,
            },
        );
        self.audit.append(Entry {
            time_ms: at,
            actor,
            action: "site.declared-down",
            subject: site,
            reason: "observers in a quorum of failure domains see it unhealthy",
            detail: json!({ "before": before.as_str(), "evidence": evidence, "detect": detect }),
            raft_index: index,
        });
        Ok(Applied::Changed)
    }

    /// One group down at one site, on the observers' evidence; its site stays in service.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn declare_group_down(
        &mut self,
        index: u64,
        at: u64,
        actor: &str,
        site: &str,
        group: &str,
        evidence: &[Evidence],
        detect: &DetectConfig,
    ) -> Response {
        if !self.sites.contains_key(site) {
            return Err(Refusal::UnknownSite(site.to_string()));
        }
        let g = self.groups.get(group).ok_or_else(|| Refusal::UnknownGroup(group.to_string()))?;
        if self.down_sites.contains_key(site)
            || self.down_groups.get(group).is_some_and(|d| d.site == site && d.is_current(at))
        {
            return Ok(Applied::Unchanged);
        }
        if !g.placement.active_sites().iter().any(|s| *s == site) {
            return Err(Refusal::Invalid(format!("group {group:?} takes no traffic at {site:?}; nothing to declare")));
        }
        check_evidence(evidence, at, detect)
            .map_err(|why| Refusal::Invalid(format!("group {group:?} at {site:?} cannot be declared down: {why}")))?;
        self.down_groups.insert(
            group.to_string(),
            crate::dr::GroupDown {
                site: site.to_string(),
                at_ms: at,
                actor: actor.to_string(),
                evidence: evidence.to_vec(),
            },
        );
        self.audit.append(Entry {
            time_ms: at,
            actor,
            action: "group.declared-down",
            subject: group,
            reason: "observers in a quorum of failure domains see the group unhealthy at the site",
            detail: json!({ "site": site, "evidence": evidence, "detect": detect }),
            raft_index: index,
        });
        Ok(Applied::Changed)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn declare_site_down_manually(
        &mut self,
        index: u64,
        at: u64,
        actor: &str,
        site: &str,
        reason: &str,
        break_glass: bool,
        accept_data_loss: bool,
    ) -> Response {
        let s = self.sites.get(site).ok_or_else(|| Refusal::UnknownSite(site.to_string()))?;
        if reason.trim().is_empty() {
            return Err(Refusal::Invalid(format!("declaring {site:?} down needs a reason")));
        }
        if let Some(d) = self.down_sites.get(site) {
            return Err(Refusal::Invalid(format!(
                "site {site:?} was already declared down by {} at {} ms",
                d.actor, d.at_ms
            )));
        }
        let before = s.state;
        let overrides: Vec<String> = if break_glass {
            crate::dr::BREAK_GLASS_OVERRIDES.iter().map(|r| r.as_str().to_string()).collect()
        } else {
            vec![]
        };
        self.sites.get_mut(site).expect("checked above").state = SiteState::Down;
        self.down_sites.insert(
            site.to_string(),
            Declaration {
                at_ms: at,
                actor: actor.to_string(),
                evidence: vec![],
                manual: Some(reason.to_string()),
                break_glass: overrides.clone(),
                accept_data_loss,
            },
        );
        self.audit.append(Entry {
            time_ms: at,
            actor,
            action: if break_glass { "site.declared-down.break-glass" } else { "site.declared-down" },
            subject: site,
            reason,
            detail: json!({
                "before": before.as_str(),
                "manual": true,
                "overrides": overrides,
                "accept_data_loss": accept_data_loss,
            }),
            raft_index: index,
        });
        Ok(Applied::Changed)
    }

    pub(super) fn reclaim_site(&mut self, index: u64, at: u64, actor: &str, site: &str, reason: &str) -> Response {
        if !self.sites.contains_key(site) {
            return Err(Refusal::UnknownSite(site.to_string()));
        }
        if reason.trim().is_empty() {
            return Err(Refusal::Invalid(format!("reclaiming {site:?} needs a reason")));
        }
        let declaration = self.down_sites.get(site);
        let fenced_here = self.origins.values().any(|o| o.site == site);
        if declaration.is_none() && !fenced_here {
            return Err(Refusal::Invalid(format!(
                "site {site:?} is not declared down and keeps no group fenced; there is nothing to reclaim"
            )));
        }
        if let Some(op) =
            self.operations.values().find(|o| o.holds_group() && o.from == site && o.kind == OperationKind::Failover)
        {
            return Err(Refusal::Invalid(format!(
                "failover {} of {} from {site} has not finished; reclaim once it has",
                op.id, op.group
            )));
        }
        let declared_by = declaration.map(|d| d.actor.clone());
        let mut cleaned = Vec::new();
        for g in self.groups.values_mut() {
            let moved_away = g.placement.sites.get(site).is_some_and(|s| s.weight == 0)
                && g.placement.active_sites().iter().any(|s| *s != site);
            if moved_away && g.operation.is_none() {
                g.placement.sites.remove(site);
                g.placement.epoch = index;
                cleaned.push(g.spec.name.clone());
            }
        }
        // Cleaned up here, they stay where they are: no failback to this site.
        self.origins.retain(|g, o| o.site != site || !cleaned.contains(g));
        self.down_sites.remove(site);
        self.sites.get_mut(site).expect("checked above").state = SiteState::Active;
        self.audit.append(Entry {
            time_ms: at,
            actor,
            action: "site.reclaimed",
            subject: site,
            reason,
            detail: json!({ "declared_down_by": declared_by, "stopped_groups": cleaned }),
            raft_index: index,
        });
        Ok(Applied::Changed)
    }

    /// A failed-over group goes back to its recorded original site: the evidence must show that
    /// site healthy to a quorum of failure domains for the group's stability window, no other
    /// failback may run, the brake must be off, and a planned switchover's prechecks apply
    /// (change window, TTL budget, freezes, fresh report, capacity). A site still declared down
    /// returns to service with it, in the same commit; a refusal changes nothing.
    pub(super) fn start_failback(
        &mut self,
        index: u64,
        at: u64,
        actor: &str,
        group: &str,
        evidence: &[Recovery],
        detect: &DetectConfig,
    ) -> Response {
        let invalid = |why: String| Refusal::Invalid(format!("failback of {group}: {why}"));
        let g = self.groups.get(group).ok_or_else(|| Refusal::UnknownGroup(group.to_string()))?;
        let after_s = g.spec.failover.failback_after_s.ok_or_else(|| {
            invalid("the group has not opted in (failover.failback_after_s); reclaim the site instead".into())
        })?;
        let origin = self
            .origins
            .get(group)
            .cloned()
            .ok_or_else(|| invalid("it has not failed over; there is no original placement to return to".into()))?;
        if let Some(b) = &self.brake {
            return Err(invalid(format!("automation is braked ({})", b.reason)));
        }
        if let Some(op) = crate::dr::failback::running(self) {
            return Err(invalid(format!("failback {} of {} is running; one group at a time", op.id, op.group)));
        }
        check_recovery(evidence, at, after_s * 1000, detect)
            .map_err(|why| invalid(format!("{}: {why}", origin.site)))?;
        self.check_change_window(at)?;
        self.check_ttl_budget(group)?;
        let site = origin.site.clone();
        let declaration = self.down_sites.get(&site).cloned();
        // The planned switchover's own preflight decides, with the site back in service.
        let site_before = self.sites.get(&site).map(|s| s.state);
        if declaration.is_some()
            && let Some(s) = self.sites.get_mut(&site)
        {
            s.state = SiteState::Active;
        }
        if let Err(refusal) = crate::engine::plan_switchover_for(self, group, &site, at, None) {
            if let (Some(before), Some(s)) = (site_before, self.sites.get_mut(&site)) {
                s.state = before;
            }
            return Err(refusal);
        }
        if let Some(d) = declaration {
            self.down_sites.remove(&site);
            self.audit.append(Entry {
                time_ms: at,
                actor,
                action: "site.returned",
                subject: &site,
                reason: "observers in a quorum of failure domains see it healthy for the stability window",
                detail: json!({
                    "declared_down_at_ms": d.at_ms,
                    "declared_down_by": d.actor,
                    "evidence": evidence,
                    "stable_ms": after_s * 1000,
                }),
                raft_index: index,
            });
        }
        let reason = format!(
            "failback: {site} healthy for {after_s} s to a quorum of observers; back to the placement recorded by {}",
            origin.operation
        );
        self.start_switchover(index, at, actor, group, &site, &reason, "", None, false, OperationKind::Failback)
    }

    pub(super) fn set_brake(&mut self, index: u64, at: u64, actor: &str, reason: &str, engage: bool) -> Response {
        if reason.trim().is_empty() {
            return Err(Refusal::Invalid("the brake needs a reason".into()));
        }
        match (&self.brake, engage) {
            (Some(_), true) => return Ok(Applied::Unchanged),
            (None, false) => return Err(Refusal::Invalid("the brake is not engaged".into())),
            _ => {}
        }
        let before = self.brake.take();
        if engage {
            self.brake = Some(Brake { at_ms: at, actor: actor.to_string(), reason: reason.to_string() });
        }
        self.audit.append(Entry {
            time_ms: at,
            actor,
            action: if engage { "brake.engaged" } else { "brake.released" },
            subject: "automation",
            reason,
            detail: json!({ "engaged_before": before.map(|b| json!({ "at_ms": b.at_ms, "by": b.actor, "reason": b.reason })) }),
            raft_index: index,
        });
        Ok(Applied::Changed)
    }

    /// Starts a group's failover. The leader chose it under every guard rail; this checks
    /// again what must hold whoever proposed it: the source declared down, no brake, the
    /// group free and not frozen, the target active, not down, with room.
    pub(super) fn start_failover(
        &mut self,
        index: u64,
        at: u64,
        actor: &str,
        group: &str,
        from: &str,
        to: &str,
    ) -> Response {
        let invalid = |why: String| Refusal::Invalid(format!("failover of {group} from {from} to {to}: {why}"));
        let group_down = self.down_groups.get(group).is_some_and(|d| d.site == from && d.is_current(at));
        if !self.down_sites.contains_key(from) && !group_down {
            return Err(invalid(format!("neither {from} nor {group} at {from} is declared down")));
        }
        let break_glass = self.down_sites.get(from).is_some_and(|d| !d.break_glass.is_empty());
        if let Some(b) = self.brake.as_ref().filter(|_| !break_glass) {
            return Err(invalid(format!("automation is braked ({}); release the brake first", b.reason)));
        }
        let g = self.groups.get(group).ok_or_else(|| Refusal::UnknownGroup(group.to_string()))?;
        if let Some(op) = &g.operation {
            return Err(Refusal::GroupBusy { group: group.to_string(), operation: op.clone() });
        }
        if !g.placement.active_sites().iter().any(|s| *s == from) {
            return Err(invalid(format!("its traffic is not on {from}")));
        }
        self.check_not_frozen(group, &[from], at)?;
        match self.sites.get(to) {
            None => return Err(Refusal::UnknownSite(to.to_string())),
            Some(s) if s.state != SiteState::Active || self.down_sites.contains_key(to) => {
                return Err(Refusal::SiteNotActive { site: to.to_string(), state: s.state.as_str().to_string() });
            }
            Some(_) => {}
        }
        let fit = crate::dr::guard::fit(self, g, from, to, at, Default::default(), &[]).map_err(invalid)?;
        let accepted_by = self.down_sites.get(from).filter(|d| d.accept_data_loss).map(|d| d.actor.clone());
        crate::dr::guard::within_rpo(self, g, to)
            .or_else(|why| if accepted_by.is_some() { Ok(()) } else { Err(invalid(why)) })?;
        let why = if self.down_sites.contains_key(from) {
            format!("{from} declared down")
        } else {
            format!("{group} declared down at {from}")
        };
        self.create_failover(index, at, actor, group, from, to, fit, &why, accepted_by.as_deref())
    }

    /// A human fails one group over off its site (which stays in service for its other
    /// groups): to the target the guard rails would choose, unless frozen, busy, or braked
    /// (break-glass overrides the brake, named in the audit record).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn failover_group(
        &mut self,
        index: u64,
        at: u64,
        actor: &str,
        group: &str,
        reason: &str,
        break_glass: bool,
        accept_data_loss: bool,
    ) -> Response {
        if reason.trim().is_empty() {
            return Err(Refusal::Invalid(format!("failing {group:?} over needs a reason")));
        }
        let g = self.groups.get(group).ok_or_else(|| Refusal::UnknownGroup(group.to_string()))?;
        if let Some(op) = &g.operation {
            return Err(Refusal::GroupBusy { group: group.to_string(), operation: op.clone() });
        }
        let active = g.placement.active_sites();
        let [from] = active.as_slice() else {
            return Err(Refusal::NoSingleSource {
                group: group.to_string(),
                active: active.into_iter().cloned().collect(),
            });
        };
        let from = from.to_string();
        self.check_not_frozen(group, &[from.as_str()], at)?;
        if let Some(b) = self.brake.as_ref().filter(|_| !break_glass) {
            return Err(Refusal::Invalid(format!(
                "automation is braked ({}); release the brake or pass --break-glass",
                b.reason
            )));
        }
        let down: std::collections::BTreeSet<String> = self.down_sites.keys().cloned().collect();
        let target = crate::dr::guard::choose_target(
            self,
            g,
            &from,
            &down,
            &Default::default(),
            at,
            &Default::default(),
            accept_data_loss,
        )
        .map_err(|(rule, why)| Refusal::Invalid(format!("failover of {group} refused by {}: {why}", rule.as_str())))?;
        let why = if break_glass { format!("{reason} (break-glass: brake overridden)") } else { reason.to_string() };
        let accepted_by = accept_data_loss.then_some(actor);
        self.create_failover(index, at, actor, group, &from, &target.site, target.fit, &why, accepted_by)
    }

    #[allow(clippy::too_many_arguments)]
    fn create_failover(
        &mut self,
        index: u64,
        at: u64,
        actor: &str,
        group: &str,
        from: &str,
        to: &str,
        fit: crate::dr::guard::Fit,
        reason: &str,
        accepted_by: Option<&str>,
    ) -> Response {
        let g = &self.groups[group];
        let id = Self::fresh_id("op", index, |id| self.operations.contains_key(id));
        let source = g.placement.share(from);
        let target_instances = source.instances.clone();
        let promotion = g.spec.failover.stateful.as_ref().map(|p| {
            let lag_ms = crate::dr::guard::replica_lag(self, group, to);
            crate::operation::Promotion {
                fence_epoch: index,
                lease_ms: p.lease_s * 1000,
                rpo_ms: p.rpo_s * 1000,
                lag_ms,
                // Recorded only when the loss was accepted because it was needed.
                data_loss_accepted_by: accepted_by
                    .filter(|_| lag_ms.is_none_or(|l| l > p.rpo_s * 1000))
                    .map(str::to_string),
            }
        });
        // A stateful group's replica takes the traffic only once it may be promoted.
        let route_now = fit.warm && promotion.is_none();
        let g = self.groups.get_mut(group).expect("checked above");
        let before = g.placement.clone();
        let target_before = g.placement.share(to);
        scale_up_target(&mut g.placement, to, &target_instances, index);
        if route_now {
            route(&mut g.placement, from, to);
        }
        g.operation = Some(id.clone());
        let detail = if let Some(p) = &promotion {
            format!(
                "stateful: {to}'s replica (lag {}, RPO {} ms{}) is promoted once {from} is fenced or its lease of {} ms runs out",
                p.lag_ms.map_or("unknown".to_string(), |l| format!("{l} ms")),
                p.rpo_ms,
                p.data_loss_accepted_by.as_ref().map_or(String::new(), |who| format!("; data loss accepted by {who}")),
                p.lease_ms
            )
        } else if fit.warm {
            format!("warm standby on {to} takes the traffic; {from} fenced (weight 0, nothing deleted)")
        } else {
            format!("cold standby: scale {to} up, then route; {from} keeps its instances")
        };
        let op = Operation {
            id: id.clone(),
            kind: OperationKind::Failover,
            group: group.to_string(),
            from: from.to_string(),
            to: to.to_string(),
            actor: actor.to_string(),
            reason: reason.to_string(),
            phase: Phase::ScalingUp,
            outcome: Outcome::Running,
            created_at_ms: at,
            updated_at_ms: at,
            phase_started_at_ms: at,
            scale_up_started_at_ms: at,
            finished_at_ms: None,
            error: None,
            steps: vec![Step {
                phase: Phase::ScalingUp,
                started_at_ms: at,
                finished_at_ms: None,
                detail: detail.clone(),
            }],
            target_instances,
            target_before,
            reserved: fit.needed,
            traffic_shifted_at_ms: route_now.then_some(at),
            paused: None,
            ramp: vec![100],
            ramp_step: u32::from(route_now),
            approved_by: None,
            evacuation: None,
            promotion: promotion.clone(),
        };
        self.operations.insert(id.clone(), op);
        self.down_groups.remove(group);
        // The first failover's starting point is what a failback returns to.
        self.origins.entry(group.to_string()).or_insert_with(|| Origin {
            site: from.to_string(),
            placement: before.clone(),
            at_ms: at,
            operation: id.clone(),
        });
        if actor == crate::SYSTEM_ACTOR {
            self.automatic_failovers.push((at, group.to_string()));
            let excess = self.automatic_failovers.len().saturating_sub(HISTORY);
            self.automatic_failovers.drain(..excess);
        }
        let g = &self.groups[group];
        self.audit.append(Entry {
            time_ms: at,
            actor,
            action: "failover.start",
            subject: group,
            reason,
            detail: json!({
                "operation": id,
                "from": from,
                "to": to,
                "warm": fit.warm,
                "step": detail,
                "promotion": promotion,
                "reserved": fit.needed,
                "placement_before": before,
                "placement_after": g.placement,
            }),
            raft_index: index,
        });
        Ok(Applied::OperationStarted { id })
    }

    /// A failover's target is ready: a cold one now takes the traffic; either way it is done.
    pub(super) fn finish_failover(&mut self, index: u64, at: u64, actor: &str, id: &str, detail: &str) -> Response {
        let op = self.running_op(id, Phase::ScalingUp)?;
        if let Some(p) = &op.promotion {
            crate::dr::guard::may_promote(self, op, p, at)
                .map_err(|why| Refusal::Invalid(format!("failover {id} cannot promote yet: {why}")))?;
        }
        let (group, from, to, cold, reason) =
            (op.group.clone(), op.from.clone(), op.to.clone(), op.traffic_shifted_at_ms.is_none(), op.reason.clone());
        let g = self.groups.get_mut(&group).expect("an operation's group is never removed");
        let before = g.placement.clone();
        if cold {
            route(&mut g.placement, &from, &to);
            g.placement.epoch = index;
        }
        g.operation = None;
        let op = self.operations.get_mut(id).expect("checked above");
        if cold {
            op.traffic_shifted_at_ms = Some(at);
            op.ramp_step = 1;
        }
        op.reserved = Default::default();
        op.outcome = Outcome::Succeeded;
        op.error = None;
        op.phase = Phase::Done;
        op.finished_at_ms = Some(at);
        op.updated_at_ms = at;
        if let Some(step) = op.steps.last_mut() {
            step.finished_at_ms = Some(at);
            step.detail = format!("{}; {detail}", step.detail);
        }
        let rto = at.saturating_sub(op.created_at_ms);
        self.audit.append(Entry {
            time_ms: at,
            actor,
            action: "failover.complete",
            subject: &group,
            reason: &reason,
            detail: json!({
                "operation": id,
                "step": detail,
                "duration_ms": rto,
                "placement_before": before,
                "placement_after": self.groups[&group].placement,
            }),
            raft_index: index,
        });
        Ok(Applied::Changed)
    }
}

/// All traffic to `to`; `from` fenced with weight 0, its instances kept (nothing deleted).
fn route(placement: &mut crate::model::Placement, from: &str, to: &str) {
    for (site, share) in placement.sites.iter_mut() {
        share.weight = if site == to { FULL_WEIGHT } else { 0 };
    }
    debug_assert!(placement.sites.contains_key(from) || from.is_empty());
}
