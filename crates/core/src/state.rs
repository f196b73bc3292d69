//! The replicated state and its deterministic `apply`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::audit::{AuditLog, Entry};
use crate::engine::plan_switchover_for;
use crate::evacuation::{Evacuation, EvacuationStep};
use crate::model::{AppGroup, GroupSpec, Placement, Site, SiteShare, SiteState, validate_group, validate_site};
use crate::operation::{Operation, OperationKind, Outcome, Pause, Phase, Step};
use crate::proposal::{Action, Applied, Control, FreezeScope, Proposal, Refusal, Response};
use crate::report::ReportRecord;

mod approve;
mod dr;
mod drills;
mod evacuate;
mod ramp;

/// Everything the federation has committed. Only `apply` changes it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Log index of the last entry applied.
    pub last_applied: u64,
    pub sites: BTreeMap<String, Site>,
    pub groups: BTreeMap<String, AppGroup>,
    /// The last committed report of each site's cell.
    pub reports: BTreeMap<String, ReportRecord>,
    pub operations: BTreeMap<String, Operation>,
    pub audit: AuditLog,
    /// Log index of the last change to anything DNS answers depend on (the SOA serial).
    pub routing_version: u64,
    /// Freezes in force (expired ones are ignored, and dropped by the next freeze change).
    /// Serialized as a list of `[scope, freeze]` pairs: a scope naming a group or site is not a
    /// string, so it cannot be a JSON object key (snapshots hold the whole state as JSON).
    #[serde(default, with = "freeze_list")]
    pub freezes: BTreeMap<FreezeScope, Freeze>,
    /// Evacuations, running and finished, by id (`evac-<log index>`).
    #[serde(default)]
    pub evacuations: BTreeMap<String, Evacuation>,
    /// Group tiers whose planned moves need a second person's approval before they proceed.
    #[serde(default)]
    pub approval_tiers: std::collections::BTreeSet<u32>,
    /// Weekly windows in which planned moves may start; empty: any time.
    #[serde(default)]
    pub change_windows: Vec<crate::window::ChangeWindow>,
    /// Sites declared down, with the evidence of the declaration.
    #[serde(default)]
    pub down_sites: BTreeMap<String, crate::dr::Declaration>,
    /// Groups declared down at one site (the site itself serves its other groups), by group.
    #[serde(default)]
    pub down_groups: BTreeMap<String, crate::dr::GroupDown>,
    /// Set while automation is halted; only a human releases it.
    #[serde(default)]
    pub brake: Option<crate::dr::Brake>,
    /// (time, group) of the automatic failovers started, the latest 1,000 (rate limits,
    /// cooldowns and the brake look back at most that far).
    #[serde(default)]
    pub automatic_failovers: Vec<(u64, String)>,
    /// The largest DNS TTL a group may have for a planned move to start; 0: no limit.
    #[serde(default)]
    pub ttl_budget_s: u32,
    /// Drills, scheduled, running and done, by id (`drill-<log index>`).
    #[serde(default)]
    pub drills: BTreeMap<String, crate::drill::Drill>,
    /// The placement each failed-over group had before its first failover, until it fails
    /// back, its old site is reclaimed, or an operator moves it.
    #[serde(default)]
    pub origins: BTreeMap<String, crate::dr::failback::Origin>,
}

/// A freeze: no switchover, spec update or autoscaling inside its scope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Freeze {
    pub actor: String,
    pub reason: String,
    pub since_ms: u64,
    /// Leader time after which the freeze no longer holds; `None` until cleared.
    pub until_ms: Option<u64>,
}

impl Freeze {
    pub fn holds_at(&self, now_ms: u64) -> bool {
        self.until_ms.is_none_or(|u| now_ms < u)
    }
}

/// What a group update changes ([`State::plan_group_update`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupUpdate {
    /// One line per change, for the operator and the audit record; empty when nothing changes.
    pub changes: Vec<String>,
    /// The group's placement after the update (its epoch becomes the update's log index).
    pub placement: BTreeMap<String, SiteShare>,
}

/// The traffic weight a site gets when it is a group's only active site.
pub const FULL_WEIGHT: u32 = 100;

impl State {
    /// Applies one committed log entry. Deterministic: the result depends only on `self`,
    /// `index` and `proposal`. A refusal leaves the state exactly as it was (apart from
    /// `last_applied`).
    pub fn apply(&mut self, index: u64, proposal: &Proposal) -> Response {
        assert!(index > self.last_applied, "log index {index} applied after {}", self.last_applied);
        self.last_applied = index;
        self.apply_at(index, proposal)
    }

    /// Applies one committed log entry of one or several proposals, in order, all at `index`:
    /// one response per proposal. Each sees the state the ones before it left, as if each had
    /// its own entry; what one creates (an operation, an evacuation, a drill) gets an id no
    /// earlier proposal of the entry took ([`State::fresh_id`]).
    pub fn apply_command(&mut self, index: u64, command: &crate::Command) -> Vec<Response> {
        assert!(index > self.last_applied, "log index {index} applied after {}", self.last_applied);
        self.last_applied = index;
        command.proposals().iter().map(|p| self.apply_at(index, p)).collect()
    }

    /// An id for something created at `index`: `<prefix>-<index>`, or, when an earlier proposal
    /// of the same entry already took that, `<prefix>-<index>.<n>` with the first free `n` from 2.
    pub(crate) fn fresh_id(prefix: &str, index: u64, taken: impl Fn(&str) -> bool) -> String {
        let id = format!("{prefix}-{index}");
        if !taken(&id) {
            return id;
        }
        (2u32..).map(|n| format!("{prefix}-{index}.{n}")).find(|id| !taken(id)).expect("a free id")
    }

    fn apply_at(&mut self, index: u64, proposal: &Proposal) -> Response {
        if proposal.version > Proposal::VERSION {
            return Err(Refusal::UnsupportedVersion(proposal.version));
        }
        // Service discovery records and placement health derive from groups, placements and
        // reports: whatever the action, a new routing version exactly when they change.
        let scope = self.routing_scope(&proposal.action);
        let before = crate::views::routing_inputs(self, scope.as_deref());
        // Debug builds (every test and the simulation) check that the scope misses nothing.
        #[cfg(debug_assertions)]
        let everything_before = crate::views::routing_inputs(self, None);
        let response = self.apply_action(index, proposal);
        let changed = crate::views::routing_inputs(self, scope.as_deref()) != before;
        #[cfg(debug_assertions)]
        {
            let everything_changed = crate::views::routing_inputs(self, None) != everything_before;
            debug_assert_eq!(
                changed, everything_changed,
                "routing_scope of {:?} misses a group whose endpoints or health changed",
                proposal.action
            );
        }
        if response.is_ok() && changed {
            self.routing_version = index;
        }
        response
    }

    /// The groups whose service endpoints or placement health `action` can change (`None`:
    /// any group). Keeps the routing-version check of `apply` proportional to what an action
    /// touches instead of to the size of the federation.
    fn routing_scope(&self, action: &Action) -> Option<Vec<String>> {
        let op_group = |id: &str| self.operations.get(id).map(|o| o.group.clone()).into_iter().collect();
        Some(match action {
            Action::RegisterSite(_)
            | Action::DeclareSiteDown { .. }
            | Action::DeclareSiteDownManually { .. }
            | Action::ReclaimSite { .. }
            | Action::DeclareGroupDown { .. }
            | Action::StartFailback { .. } => {
                return None;
            }
            Action::StartFailover { group, .. } | Action::FailoverGroup { group, .. } => vec![group.clone()],
            Action::TripBrake { .. } | Action::ReleaseBrake { .. } => vec![],
            Action::RegisterGroup(spec) | Action::UpdateGroup { spec, .. } => vec![spec.name.clone()],
            Action::RollbackGroup { group, .. }
            | Action::ScaleApp { group, .. }
            | Action::Autoscale { group, .. }
            | Action::StartSwitchover { group, .. } => vec![group.clone()],
            Action::AdvanceOperation { id, .. }
            | Action::FailOperation { id, .. }
            | Action::ShiftTraffic { id, .. } => op_group(id),
            Action::ControlOperation { id, .. } => match self.evacuations.get(id) {
                Some(e) => e.groups.iter().map(|g| g.group.clone()).collect(),
                None => op_group(id),
            },
            Action::EvacuationStep { step: EvacuationStep::Start { group }, .. } => vec![group.clone()],
            Action::ApproveOperation { id, .. } => match self.evacuations.get(id) {
                Some(_) => vec![],
                None => op_group(id),
            },
            Action::StartEvacuation { .. }
            | Action::EvacuationStep { .. }
            | Action::SetApprovalPolicy { .. }
            | Action::SetChangeWindows { .. }
            | Action::SetTtlBudget { .. }
            | Action::ScheduleDrill { .. }
            | Action::CancelDrill { .. } => vec![],
            Action::StartDrill { id } => self.drills.get(id).map(|d| d.group.clone()).into_iter().collect(),
            Action::CellReport(report) => self
                .groups
                .values()
                .filter(|g| g.placement.sites.contains_key(&report.site))
                .map(|g| g.spec.name.clone())
                .collect(),
            Action::SetFreeze { .. } | Action::ClearFreeze { .. } | Action::RecordClusterChange { .. } => vec![],
        })
    }

    fn apply_action(&mut self, index: u64, proposal: &Proposal) -> Response {
        let at = proposal.at_ms;
        let actor = proposal.actor.as_str();
        match &proposal.action {
            Action::RegisterSite(spec) => {
                let errs = validate_site(spec);
                if !errs.is_empty() {
                    return Err(Refusal::Invalid(errs.join("; ")));
                }
                let (action, before) = match self.sites.get(&spec.name) {
                    Some(site) if site.spec == *spec => return Ok(Applied::Unchanged),
                    Some(site) => ("site.update", json!(site.spec)),
                    None => ("site.register", serde_json::Value::Null),
                };
                let state = self.sites.get(&spec.name).map(|s| s.state).unwrap_or(SiteState::Active);
                self.sites.insert(spec.name.clone(), Site { spec: spec.clone(), state });
                self.routing_version = index;
                self.audit.append(Entry {
                    time_ms: at,
                    actor,
                    action,
                    subject: &spec.name,
                    reason: "configuration",
                    detail: json!({ "before": before, "after": spec }),
                    raft_index: index,
                });
                Ok(Applied::Changed)
            }
            Action::RegisterGroup(spec) => {
                let mut errs = validate_group(spec);
                if !self.sites.contains_key(&spec.home_site) {
                    errs.push(format!("group {:?}: home_site {:?} is not a known site", spec.name, spec.home_site));
                }
                for site in spec.warm_standby.keys().filter(|s| !self.sites.contains_key(*s)) {
                    errs.push(format!("group {:?}: warm_standby {site:?} is not a known site", spec.name));
                }
                errs.extend(self.dns_name_clashes(spec));
                if !errs.is_empty() {
                    return Err(Refusal::Invalid(errs.join("; ")));
                }
                if self.groups.contains_key(&spec.name) {
                    return Ok(Applied::Unchanged);
                }
                let share = SiteShare {
                    instances: spec.apps.iter().map(|a| (a.name.clone(), a.instances)).collect(),
                    weight: FULL_WEIGHT,
                };
                let mut sites = BTreeMap::from([(spec.home_site.clone(), share)]);
                for (site, n) in &spec.warm_standby {
                    let instances = spec.apps.iter().map(|a| (a.name.clone(), (*n).min(a.instances))).collect();
                    sites.insert(site.clone(), SiteShare { instances, weight: 0 });
                }
                let placement = Placement { sites, epoch: index };
                self.audit.append(Entry {
                    time_ms: at,
                    actor,
                    action: "group.register",
                    subject: &spec.name,
                    reason: "configuration",
                    detail: json!({ "spec": spec, "placement": placement }),
                    raft_index: index,
                });
                self.groups.insert(
                    spec.name.clone(),
                    AppGroup { spec: spec.clone(), placement, operation: None, previous_spec: None },
                );
                self.routing_version = index;
                Ok(Applied::Changed)
            }
            Action::CellReport(report) => {
                if !self.sites.contains_key(&report.site) {
                    return Err(Refusal::UnknownSite(report.site.clone()));
                }
                let expected_actor = format!("cell:{}", report.site);
                if actor != expected_actor {
                    return Err(Refusal::Invalid(format!(
                        "a report for site {:?} must come from {expected_actor}, not {actor}",
                        report.site
                    )));
                }
                self.reports.insert(report.site.clone(), ReportRecord { report: report.clone(), received_at_ms: at });
                // Group declarations the guard rails held past their time are dropped here
                // (reports arrive every second), so they neither linger in the state nor keep
                // the executor busy.
                self.down_groups.retain(|_, d| d.is_current(at));
                Ok(Applied::Changed)
            }
            Action::SetFreeze { scope, reason, until_ms } => {
                self.check_scope(scope)?;
                if reason.trim().is_empty() {
                    return Err(Refusal::Invalid("a freeze needs a reason".into()));
                }
                if until_ms.is_some_and(|u| u <= at) {
                    return Err(Refusal::Invalid("the freeze would end before it starts".into()));
                }
                self.freezes.retain(|_, f| f.holds_at(at));
                let freeze =
                    Freeze { actor: actor.to_string(), reason: reason.clone(), since_ms: at, until_ms: *until_ms };
                let before = self.freezes.insert(scope.clone(), freeze);
                self.audit.append(Entry {
                    time_ms: at,
                    actor,
                    action: "freeze.set",
                    subject: &scope.to_string(),
                    reason,
                    detail: json!({ "until_ms": until_ms, "replaces": before }),
                    raft_index: index,
                });
                Ok(Applied::Changed)
            }
            Action::ClearFreeze { scope, reason } => {
                if !self.freezes.get(scope).is_some_and(|f| f.holds_at(at)) {
                    return Ok(Applied::Unchanged);
                }
                self.freezes.retain(|_, f| f.holds_at(at));
                let Some(was) = self.freezes.remove(scope) else { return Ok(Applied::Unchanged) };
                self.audit.append(Entry {
                    time_ms: at,
                    actor,
                    action: "freeze.clear",
                    subject: &scope.to_string(),
                    reason,
                    detail: json!({ "was": was }),
                    raft_index: index,
                });
                Ok(Applied::Changed)
            }
            Action::RecordClusterChange { change, subject, reason, detail_json } => {
                if !change.starts_with("cluster.") {
                    return Err(Refusal::Invalid(format!("{change:?} is not a cluster change")));
                }
                if reason.trim().is_empty() {
                    return Err(Refusal::Invalid("a cluster change needs a reason".into()));
                }
                let detail: serde_json::Value = serde_json::from_str(detail_json).unwrap_or(serde_json::Value::Null);
                self.audit.append(Entry {
                    time_ms: at,
                    actor,
                    action: change,
                    subject,
                    reason,
                    detail,
                    raft_index: index,
                });
                Ok(Applied::Changed)
            }
            Action::Autoscale { site, group, app, from, to, reason, evidence_json } => {
                self.check_autoscale(actor, site, group, app, *from, *to, at)?;
                let g = self.groups.get_mut(group).expect("check_autoscale checked the group");
                g.placement.sites.get_mut(site).expect("checked").instances.insert(app.clone(), *to);
                g.placement.epoch = index;
                let evidence: serde_json::Value =
                    serde_json::from_str(evidence_json).unwrap_or(serde_json::Value::Null);
                self.audit.append(Entry {
                    time_ms: at,
                    actor,
                    action: "app.autoscale",
                    subject: &format!("{group}/{app}@{site}"),
                    reason,
                    detail: json!({ "from": from, "to": to, "evidence": evidence }),
                    raft_index: index,
                });
                Ok(Applied::Changed)
            }
            Action::UpdateGroup { spec, reason } => self.apply_update(index, at, actor, spec, reason, "group.update"),
            Action::RollbackGroup { group, reason } => {
                let previous = self
                    .groups
                    .get(group)
                    .ok_or_else(|| Refusal::UnknownGroup(group.clone()))?
                    .previous_spec
                    .clone()
                    .ok_or_else(|| Refusal::Invalid(format!("group {group:?} has no earlier spec to go back to")))?;
                let reason = format!("rollback: {reason}");
                let applied = self.apply_update(index, at, actor, &previous, &reason, "group.rollback")?;
                Ok(applied)
            }
            Action::ScaleApp { group, app, site, instances, reason } => {
                self.check_scale(group, app, site, *instances, at)?;
                let g = self.groups.get_mut(group).expect("check_scale checked the group");
                let share = g.placement.sites.entry(site.clone()).or_default();
                let from = share.instances.get(app).copied().unwrap_or(0);
                if from == *instances {
                    return Ok(Applied::Unchanged);
                }
                share.instances.insert(app.clone(), *instances);
                g.placement.epoch = index;
                self.audit.append(Entry {
                    time_ms: at,
                    actor,
                    action: if *instances == 0 { "app.suspend" } else { "app.scale" },
                    subject: &format!("{group}/{app}@{site}"),
                    reason,
                    detail: json!({ "from": from, "to": instances }),
                    raft_index: index,
                });
                Ok(Applied::Changed)
            }
            Action::StartSwitchover { group, to, reason, plan, rollback_of } => {
                if rollback_of.is_empty() {
                    self.check_change_window(at)?;
                    self.check_ttl_budget(group)?;
                } else {
                    self.check_rollback_of(rollback_of, group)?;
                }
                let approval = rollback_of.is_empty();
                self.start_switchover(
                    index,
                    at,
                    actor,
                    group,
                    to,
                    reason,
                    plan,
                    None,
                    approval,
                    OperationKind::Switchover,
                )
            }
            Action::SetChangeWindows { windows, reason } => self.set_change_windows(index, at, actor, windows, reason),
            Action::SetTtlBudget { max_ttl_s, reason } => self.set_ttl_budget(index, at, actor, *max_ttl_s, reason),
            Action::DeclareSiteDown { site, evidence, detect } => {
                self.declare_site_down(index, at, actor, site, evidence, detect)
            }
            Action::DeclareSiteDownManually { site, reason, break_glass, accept_data_loss } => {
                self.declare_site_down_manually(index, at, actor, site, reason, *break_glass, *accept_data_loss)
            }
            Action::StartFailover { group, from, to } => self.start_failover(index, at, actor, group, from, to),
            Action::DeclareGroupDown { site, group, evidence, detect } => {
                self.declare_group_down(index, at, actor, site, group, evidence, detect)
            }
            Action::StartFailback { group, evidence, detect } => {
                self.start_failback(index, at, actor, group, evidence, detect)
            }
            Action::ReclaimSite { site, reason } => self.reclaim_site(index, at, actor, site, reason),
            Action::FailoverGroup { group, reason, break_glass, accept_data_loss } => {
                self.failover_group(index, at, actor, group, reason, *break_glass, *accept_data_loss)
            }
            Action::TripBrake { reason } => self.set_brake(index, at, actor, reason, true),
            Action::ReleaseBrake { reason } => self.set_brake(index, at, actor, reason, false),
            Action::ScheduleDrill { group, to, at_ms, reason } => {
                self.schedule_drill(index, at, actor, group, to, *at_ms, reason)
            }
            Action::StartDrill { id } => self.start_drill(index, at, actor, id),
            Action::CancelDrill { id, reason } => self.cancel_drill(index, at, actor, id, reason),
            Action::StartEvacuation { from, groups, to, reason, plan, concurrency, failure_budget, rollback_of } => {
                if rollback_of.is_empty() {
                    self.check_change_window(at)?;
                }
                self.start_evacuation(
                    index,
                    at,
                    actor,
                    from.as_deref(),
                    groups,
                    to,
                    reason,
                    plan,
                    *concurrency,
                    *failure_budget,
                    rollback_of.is_empty(),
                )
            }
            Action::EvacuationStep { id, step } => self.evacuation_step(index, at, actor, id, step),
            Action::SetApprovalPolicy { tiers, reason } => self.set_approval_policy(index, at, actor, tiers, reason),
            Action::ApproveOperation { id, reason } => self.approve(index, at, actor, id, reason),
            Action::ShiftTraffic { id, from_step, to_step, detail } => {
                self.shift_traffic(index, at, actor, id, *from_step, *to_step, detail)
            }
            Action::AdvanceOperation { id, from, to, detail } => self.advance(index, at, actor, id, *from, *to, detail),
            Action::ControlOperation { id, control, reason } => self.control(index, at, actor, id, *control, reason),
            Action::FailOperation { id, at: phase, error } => self.fail(index, at, actor, id, *phase, error),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn start_switchover(
        &mut self,
        index: u64,
        at: u64,
        actor: &str,
        group: &str,
        to: &str,
        reason: &str,
        plan_id: &str,
        evacuation: Option<&str>,
        // Subject to the approval policy: not a rollback (the move it undoes was approved), not
        // an evacuation's own switchover (approved with the evacuation).
        approval: bool,
        kind: OperationKind,
    ) -> Response {
        let plan = plan_switchover_for(self, group, to, at, evacuation)?;
        let id = Self::fresh_id("op", index, |id| self.operations.contains_key(id));
        let awaiting = approval && self.approval_tiers.contains(&self.groups[group].spec.tier);
        let g = self.groups.get_mut(group).expect("plan_switchover checked the group exists");
        let before = g.placement.clone();
        let target_before = g.placement.share(to);
        if !awaiting {
            scale_up_target(&mut g.placement, to, &plan.target_instances, index);
        }
        g.operation = Some(id.clone());
        let phase = if awaiting { Phase::AwaitingApproval } else { Phase::ScalingUp };
        let detail = if awaiting {
            format!("tier {} needs a second person's approval; capacity reserved on {to}", g.spec.tier)
        } else {
            format!("scale {to} up to {} instances (source {})", plan.total_instances(), plan.from)
        };
        let op = Operation {
            id: id.clone(),
            kind,
            group: group.to_string(),
            from: plan.from.clone(),
            to: to.to_string(),
            actor: actor.to_string(),
            reason: reason.to_string(),
            phase,
            outcome: Outcome::Running,
            created_at_ms: at,
            updated_at_ms: at,
            phase_started_at_ms: at,
            scale_up_started_at_ms: at,
            finished_at_ms: None,
            error: None,
            steps: vec![Step { phase, started_at_ms: at, finished_at_ms: None, detail: detail.clone() }],
            target_instances: plan.target_instances.clone(),
            target_before,
            reserved: plan.reserved,
            traffic_shifted_at_ms: None,
            paused: None,
            ramp: g.spec.ramp.steps.clone(),
            ramp_step: 0,
            approved_by: None,
            evacuation: evacuation.map(str::to_string),
            promotion: None,
        };
        self.audit.append(Entry {
            time_ms: at,
            actor,
            action: if kind == OperationKind::Failback { "failback.start" } else { "switchover.start" },
            subject: group,
            reason,
            detail: json!({
                "operation": id,
                "from": plan.from,
                "to": to,
                "plan": plan_id,
                "evacuation": evacuation,
                "phase": phase.as_str(),
                "step": detail,
                "preflight": {
                    "target_free": plan.target_free,
                    "reserved": plan.reserved,
                    "target_report_age_ms": plan.target_report_age_ms,
                },
                "placement_before": before,
                "placement_after": g.placement,
            }),
            raft_index: index,
        });
        self.operations.insert(id.clone(), op);
        Ok(Applied::OperationStarted { id })
    }

    fn running_op(&self, id: &str, phase: Phase) -> Result<&Operation, Refusal> {
        let op = self.operations.get(id).ok_or_else(|| Refusal::UnknownOperation(id.to_string()))?;
        if !op.holds_group() || op.phase != phase {
            return Err(Refusal::StalePhase {
                id: id.to_string(),
                expected: phase.as_str().to_string(),
                actual: if op.is_running() { op.phase.as_str().to_string() } else { op.outcome.as_str().to_string() },
            });
        }
        // A step the engine decided before an operator's pause was committed must not land
        // after it: a paused operation takes no step (and so cannot end up stopped while
        // still marked paused, where nothing could resume or finish it).
        if op.paused.is_some() {
            return Err(Refusal::StalePhase {
                id: id.to_string(),
                expected: phase.as_str().to_string(),
                actual: "paused".to_string(),
            });
        }
        Ok(op)
    }

    #[allow(clippy::too_many_arguments)]
    fn advance(
        &mut self,
        index: u64,
        at: u64,
        actor: &str,
        id: &str,
        from: Phase,
        to: Phase,
        detail: &str,
    ) -> Response {
        let op = self.running_op(id, from)?;
        if op.kind == OperationKind::Failover {
            return match (from, to) {
                // Also from needs-attention: a target that came up late still takes over.
                (Phase::ScalingUp, Phase::Done) => self.finish_failover(index, at, actor, id, detail),
                _ => Err(Refusal::Invalid(format!(
                    "failover {id}: no transition from {} to {}",
                    from.as_str(),
                    to.as_str()
                ))),
            };
        }
        let allowed = matches!(
            (from, to),
            (Phase::ScalingUp, Phase::Verifying)
                | (Phase::Verifying, Phase::ScalingUp)
                | (Phase::Verifying, Phase::Draining)
                | (Phase::Draining, Phase::ScalingDown)
                | (Phase::ScalingDown, Phase::Done)
        );
        if !allowed {
            return Err(Refusal::Invalid(format!(
                "operation {id}: no transition from {} to {}",
                from.as_str(),
                to.as_str()
            )));
        }
        if !op.is_running() && to != Phase::Done {
            return Err(Refusal::Invalid(format!("operation {id} needs attention; it can only complete")));
        }
        let (group_name, src, dst) = (op.group.clone(), op.from.clone(), op.to.clone());
        let g = self.groups.get_mut(&group_name).expect("an operation's group is never removed");
        let before = g.placement.clone();
        let op = self.operations.get_mut(id).expect("checked above");
        match to {
            // The reservation is held until traffic moves: a verify that falls back to
            // ScalingUp (a target instance died) must still own the capacity it needs.
            Phase::Verifying | Phase::ScalingUp | Phase::Shifting | Phase::AwaitingApproval => {}
            // Only replays of logs written before traffic ramps existed move all traffic in
            // one step here; the engine now shifts through `ShiftTraffic`.
            Phase::Draining => {
                op.reserved = Default::default();
                for (site, share) in g.placement.sites.iter_mut() {
                    share.weight = if *site == dst { FULL_WEIGHT } else { 0 };
                }
                g.placement.epoch = index;
                self.routing_version = index;
                op.traffic_shifted_at_ms = Some(at);
            }
            Phase::ScalingDown => {
                // Held until now: a ramp reverted from 100 % must still own its capacity.
                op.reserved = Default::default();
                // A failback leaves the site it returns from as it was before the failover (a
                // warm standby keeps its instances); any other move scales it to zero.
                let restore = (op.kind == OperationKind::Failback)
                    .then(|| self.origins.get(&group_name).map(|o| o.placement.share(&src).instances))
                    .flatten();
                if let Some(share) = g.placement.sites.get_mut(&src) {
                    share.instances.values_mut().for_each(|n| *n = 0);
                    for (app, n) in restore.into_iter().flatten() {
                        share.instances.insert(app, n);
                    }
                }
                g.placement.epoch = index;
            }
            Phase::Done => {
                g.operation = None;
                // Back home, or moved on purpose by an operator: nothing to fail back to.
                self.origins.remove(&group_name);
                op.outcome = Outcome::Succeeded;
                op.finished_at_ms = Some(at);
                // A needs-attention stop that resolved itself: the history keeps the error in
                // the step detail and the audit chain.
                op.error = None;
            }
        }
        if let Some(step) = op.steps.last_mut() {
            step.finished_at_ms = Some(at);
        }
        if to != Phase::Done {
            op.steps.push(Step { phase: to, started_at_ms: at, finished_at_ms: None, detail: detail.to_string() });
        }
        op.phase = to;
        op.phase_started_at_ms = at;
        op.updated_at_ms = at;
        let mut record = json!({
            "operation": id,
            "from_phase": from.as_str(),
            "phase": to.as_str(),
            "step": detail,
        });
        if before != g.placement {
            record["placement_before"] = json!(before);
            record["placement_after"] = json!(g.placement);
        }
        if to == Phase::Done {
            record["duration_ms"] = json!(at.saturating_sub(op.created_at_ms));
            record["traffic_shifted_at_ms"] = json!(op.traffic_shifted_at_ms);
        }
        let (reason, op_kind) = (op.reason.clone(), op.kind);
        self.audit.append(Entry {
            time_ms: at,
            actor,
            action: match (op_kind, to == Phase::Done) {
                (OperationKind::Failback, true) => "failback.complete",
                (OperationKind::Failback, false) => "failback.phase",
                (_, true) => "switchover.complete",
                (_, false) => "switchover.phase",
            },
            subject: &group_name,
            reason: &reason,
            detail: record,
            raft_index: index,
        });
        Ok(Applied::Changed)
    }

    /// An operator's pause, resume or abort of a running operation.
    fn control(&mut self, index: u64, at: u64, actor: &str, id: &str, control: Control, reason: &str) -> Response {
        if self.evacuations.contains_key(id) {
            return self.control_evacuation(index, at, actor, id, control, reason);
        }
        let op = self.operations.get(id).ok_or_else(|| Refusal::UnknownOperation(id.to_string()))?;
        if reason.trim().is_empty() {
            return Err(Refusal::Invalid(format!("a reason is required to {} an operation", control.as_str())));
        }
        // A stop that needs attention may still be aborted (it frees the group); nothing else.
        let controllable = op.is_running() || (control == Control::Abort && op.holds_group());
        if !controllable {
            return Err(Refusal::Invalid(format!(
                "operation {id} is {}; only a running operation can be {}",
                op.outcome.as_str(),
                match control {
                    Control::Pause => "paused",
                    Control::Resume => "resumed",
                    Control::Abort => "aborted",
                }
            )));
        }
        match (control, &op.paused) {
            (Control::Pause, Some(p)) => {
                return Err(Refusal::Invalid(format!(
                    "operation {id} is already paused (by {}: {})",
                    p.actor, p.reason
                )));
            }
            (Control::Resume, None) => return Err(Refusal::Invalid(format!("operation {id} is not paused"))),
            _ => {}
        }
        let (group_name, phase) = (op.group.clone(), op.phase);
        let g = self.groups.get_mut(&group_name).expect("an operation's group is never removed");
        let before = g.placement.clone();
        let op = self.operations.get_mut(id).expect("checked above");
        let action = match control {
            Control::Pause => {
                op.paused = Some(Pause { at_ms: at, actor: actor.to_string(), reason: reason.to_string() });
                "switchover.paused"
            }
            Control::Resume => {
                // Time paused counts towards nothing: deadlines and windows move by it.
                let paused_for = at.saturating_sub(op.paused.take().map_or(at, |p| p.at_ms));
                op.phase_started_at_ms += paused_for;
                op.scale_up_started_at_ms += paused_for;
                "switchover.resumed"
            }
            Control::Abort => {
                // Mid-ramp, the source still runs everything: all traffic goes back to it, so
                // the group never stays split between two sites.
                if phase.before_traffic_shift() || phase == Phase::Shifting {
                    if let Some(source) = g.placement.sites.get_mut(&op.from) {
                        source.weight = FULL_WEIGHT;
                    }
                    restore_target(&mut g.placement, op, index);
                    op.traffic_shifted_at_ms = None;
                }
                g.operation = None;
                op.outcome = Outcome::Aborted;
                op.finished_at_ms = Some(at);
                op.reserved = Default::default();
                op.paused = None;
                op.error = Some(format!("aborted by {actor}: {reason}"));
                if let Some(step) = op.steps.last_mut() {
                    step.finished_at_ms = Some(at);
                    step.detail = format!("{}; aborted by {actor}: {reason}", step.detail);
                }
                "switchover.aborted"
            }
        };
        op.updated_at_ms = at;
        // The record's reason is the operator's reason for this control; the operation's own
        // reason goes in the detail.
        let mut detail = json!({
            "operation": id,
            "phase": phase.as_str(),
            "control": control.as_str(),
            "operation_reason": op.reason,
        });
        if before != g.placement {
            detail["placement_before"] = json!(before);
            detail["placement_after"] = json!(g.placement);
        }
        self.audit.append(Entry {
            time_ms: at,
            actor,
            action,
            subject: &group_name,
            reason,
            detail,
            raft_index: index,
        });
        Ok(Applied::Changed)
    }

    fn fail(&mut self, index: u64, at: u64, actor: &str, id: &str, phase: Phase, error: &str) -> Response {
        let op = self.running_op(id, phase)?;
        if !op.is_running() {
            return Err(Refusal::StalePhase {
                id: id.to_string(),
                expected: "running".into(),
                actual: op.outcome.as_str().to_string(),
            });
        }
        let group_name = op.group.clone();
        let g = self.groups.get_mut(&group_name).expect("an operation's group is never removed");
        let before = g.placement.clone();
        let op = self.operations.get_mut(id).expect("checked above");
        // A failover has nowhere to roll back to: its source is down.
        let rolled_back = phase.before_traffic_shift() && op.kind != OperationKind::Failover;
        if rolled_back {
            restore_target(&mut g.placement, op, index);
            g.operation = None;
            op.outcome = Outcome::Failed;
            op.finished_at_ms = Some(at);
        } else {
            op.outcome = Outcome::NeedsAttention;
        }
        op.reserved = Default::default();
        op.error = Some(error.to_string());
        op.updated_at_ms = at;
        if let Some(step) = op.steps.last_mut() {
            step.finished_at_ms = Some(at);
            step.detail = format!("{}; stopped: {error}", step.detail);
        }
        let reason = op.reason.clone();
        self.audit.append(Entry {
            time_ms: at,
            actor,
            action: if rolled_back { "switchover.rolled-back" } else { "switchover.needs-attention" },
            subject: &group_name,
            reason: &reason,
            detail: json!({
                "operation": id,
                "phase": phase.as_str(),
                "error": error,
                "placement_before": before,
                "placement_after": g.placement,
            }),
            raft_index: index,
        });
        Ok(Applied::Changed)
    }

    /// Epoch a cell must have applied to be current: the newest placement epoch of any group.
    /// Applies a checked group update (also the body of a rollback, with `action`).
    fn apply_update(
        &mut self,
        index: u64,
        at: u64,
        actor: &str,
        spec: &GroupSpec,
        reason: &str,
        action: &'static str,
    ) -> Response {
        let update = self.plan_group_update(spec, at)?;
        if update.changes.is_empty() {
            return Ok(Applied::Unchanged);
        }
        let group = self.groups.get_mut(&spec.name).expect("plan_group_update checked the group exists");
        let before = group.spec.clone();
        let dns_changed =
            before.dns_name != spec.dns_name || before.dns_aliases != spec.dns_aliases || before.ttl_s != spec.ttl_s;
        group.previous_spec = Some(before.clone());
        group.spec = spec.clone();
        group.placement = Placement { sites: update.placement, epoch: index };
        if dns_changed {
            self.routing_version = index;
        }
        self.audit.append(Entry {
            time_ms: at,
            actor,
            action,
            subject: &spec.name,
            reason,
            detail: json!({ "changes": update.changes, "before": before, "after": spec }),
            raft_index: index,
        });
        Ok(Applied::Changed)
    }

    /// Everything an operator's scaling of one app on one site must satisfy.
    pub fn check_scale(&self, group: &str, app: &str, site: &str, instances: u32, now_ms: u64) -> Result<(), Refusal> {
        let g = self.groups.get(group).ok_or_else(|| Refusal::UnknownGroup(group.to_string()))?;
        let spec = g
            .spec
            .apps
            .iter()
            .find(|a| a.name == app)
            .ok_or_else(|| Refusal::Invalid(format!("group {group:?} has no app {app:?}")))?;
        if !self.sites.contains_key(site) {
            return Err(Refusal::UnknownSite(site.to_string()));
        }
        if let Some(op) = &g.operation {
            return Err(Refusal::GroupBusy { group: group.to_string(), operation: op.clone() });
        }
        self.check_not_frozen(group, &[site], now_ms)?;
        if g.placement.sites.get(site).is_none_or(|s| s.weight == 0) {
            return Err(Refusal::Invalid(format!(
                "{group} takes no traffic on {site}; scale it where it is active, or move it there with a switchover"
            )));
        }
        if instances > 10_000 {
            return Err(Refusal::Invalid(format!("{instances} instances is above the limit of 10000")));
        }
        if let (Some(crate::model::Autoscale(a)), true) = (&spec.autoscale, instances > 0)
            && (instances < a.min_instances || instances > a.max_instances)
        {
            return Err(Refusal::Invalid(format!(
                "{group}/{app} is autoscaled within [{}, {}]; {instances} is outside (0 suspends it)",
                a.min_instances, a.max_instances
            )));
        }
        Ok(())
    }

    /// What updating a group to `spec` would change, without changing anything: the same
    /// check and computation `apply` uses, so a dry run shows exactly what a commit does.
    /// Instance counts: an app whose declared count changed gets the new count on every site
    /// that takes the group's traffic; an app whose count did not change keeps each site's
    /// current count (a switchover or scaling decision stands); a new app starts on the sites
    /// taking traffic; a removed app stops everywhere.
    /// The DNS labels of `spec` (name and aliases) that another group already answers for.
    fn dns_name_clashes(&self, spec: &GroupSpec) -> Vec<String> {
        let mut out = Vec::new();
        for other in self.groups.values().filter(|g| g.spec.name != spec.name) {
            for name in spec.dns_names().filter(|n| other.spec.dns_names().any(|o| o == *n)) {
                out.push(format!(
                    "group {:?}: DNS name {name:?} is already used by group {:?}",
                    spec.name, other.spec.name
                ));
            }
        }
        out
    }

    pub fn plan_group_update(&self, spec: &GroupSpec, now_ms: u64) -> Result<GroupUpdate, Refusal> {
        let current = self.groups.get(&spec.name).ok_or_else(|| Refusal::UnknownGroup(spec.name.clone()))?;
        let sites: Vec<&str> = current.placement.sites.keys().map(String::as_str).collect();
        self.check_not_frozen(&spec.name, &sites, now_ms)?;
        let mut errs = validate_group(spec);
        if !self.sites.contains_key(&spec.home_site) {
            errs.push(format!("group {:?}: home_site {:?} is not a known site", spec.name, spec.home_site));
        }
        errs.extend(self.dns_name_clashes(spec));
        if !errs.is_empty() {
            return Err(Refusal::Invalid(errs.join("; ")));
        }
        if let Some(op) = &current.operation {
            return Err(Refusal::GroupBusy { group: spec.name.clone(), operation: op.clone() });
        }
        let old = &current.spec;
        let mut changes = Vec::new();
        if old.dns_name != spec.dns_name {
            changes.push(format!("dns_name {} -> {}", old.dns_name, spec.dns_name));
        }
        if old.dns_aliases != spec.dns_aliases {
            changes.push(format!("dns_aliases {:?} -> {:?}", old.dns_aliases, spec.dns_aliases));
        }
        if old.depends_on != spec.depends_on {
            changes.push(format!("depends_on {:?} -> {:?}", old.depends_on, spec.depends_on));
        }
        if old.ttl_s != spec.ttl_s {
            changes.push(format!("ttl_s {} -> {}", old.ttl_s, spec.ttl_s));
        }
        if old.ramp != spec.ramp {
            changes.push(format!(
                "traffic ramp {:?} (max {}% unhealthy) -> {:?} (max {}% unhealthy)",
                old.ramp.steps, old.ramp.max_unhealthy_percent, spec.ramp.steps, spec.ramp.max_unhealthy_percent
            ));
        }
        if old.warm_standby != spec.warm_standby {
            return Err(Refusal::Invalid(format!(
                "group {:?}: warm_standby {:?} -> {:?} cannot change after registration; start a switchover or scale the site instead",
                spec.name, old.warm_standby, spec.warm_standby
            )));
        }
        if old.tier != spec.tier || old.home_site != spec.home_site || old.tenant != spec.tenant {
            changes.push("tier, home_site or tenant changed".to_string());
        }
        let mut placement = current.placement.sites.clone();
        for app in &spec.apps {
            let before = old.apps.iter().find(|a| a.name == app.name);
            // What a running instance embodies; the rest only steers how many run and how.
            let spec_changed = before.is_some_and(|b| {
                let mut b = b.clone();
                b.instances = app.instances;
                b.upgrade = app.upgrade;
                b.autoscale.clone_from(&app.autoscale);
                b.metrics.clone_from(&app.metrics);
                b != *app
            });
            if spec_changed {
                changes.push(format!("app {}: new spec, rolled out under its upgrade strategy", app.name));
            }
            if before.is_some_and(|b| b.upgrade != app.upgrade) {
                changes.push(format!("app {}: upgrade strategy changed", app.name));
            }
            if before.is_some_and(|b| b.autoscale != app.autoscale || b.metrics != app.metrics) {
                changes.push(format!("app {}: autoscaling changed", app.name));
            }
            let count_changed = before.is_none_or(|b| b.instances != app.instances);
            for (site, share) in &mut placement {
                let now = share.instances.get(&app.name).copied().unwrap_or(0);
                let next = match before {
                    Some(_) if !count_changed => now,
                    _ if share.weight > 0 => app.instances,
                    Some(_) => now,
                    None => 0,
                };
                if next != now || before.is_none() {
                    changes.push(format!("app {}: {now} -> {next} instances on {site}", app.name));
                }
                share.instances.insert(app.name.clone(), next);
            }
        }
        for app in old.apps.iter().filter(|a| !spec.apps.iter().any(|n| n.name == a.name)) {
            changes.push(format!("app {}: removed (its instances stop)", app.name));
            for share in placement.values_mut() {
                share.instances.remove(&app.name);
            }
        }
        Ok(GroupUpdate { changes, placement })
    }

    /// The freeze that holds `group` (or any of `sites`, or everything) at `now_ms`, if any.
    pub fn freeze_on(&self, group: &str, sites: &[&str], now_ms: u64) -> Option<(&FreezeScope, &Freeze)> {
        self.freezes.iter().find(|(scope, f)| {
            f.holds_at(now_ms)
                && match scope {
                    FreezeScope::Global => true,
                    FreezeScope::Group(g) => g == group,
                    FreezeScope::Site(s) => sites.contains(&s.as_str()),
                }
        })
    }

    /// Refuses when a freeze holds `group` or one of `sites`.
    pub fn check_not_frozen(&self, group: &str, sites: &[&str], now_ms: u64) -> Result<(), Refusal> {
        match self.freeze_on(group, sites, now_ms) {
            Some((scope, f)) => Err(Refusal::Frozen {
                subject: format!("group {group:?}"),
                scope: scope.to_string(),
                actor: f.actor.clone(),
                reason: f.reason.clone(),
            }),
            None => Ok(()),
        }
    }

    fn check_scope(&self, scope: &FreezeScope) -> Result<(), Refusal> {
        match scope {
            FreezeScope::Global => Ok(()),
            FreezeScope::Group(g) if self.groups.contains_key(g) => Ok(()),
            FreezeScope::Group(g) => Err(Refusal::UnknownGroup(g.clone())),
            FreezeScope::Site(s) if self.sites.contains_key(s) => Ok(()),
            FreezeScope::Site(s) => Err(Refusal::UnknownSite(s.clone())),
        }
    }

    /// Everything an autoscaling request must satisfy (see [`Action::Autoscale`]).
    #[allow(clippy::too_many_arguments)]
    pub fn check_autoscale(
        &self,
        actor: &str,
        site: &str,
        group: &str,
        app: &str,
        from: u32,
        to: u32,
        now_ms: u64,
    ) -> Result<(), Refusal> {
        let expected = format!("cell:{site}");
        if actor != expected {
            return Err(Refusal::Invalid(format!("autoscaling on {site:?} is decided by {expected}, not {actor}")));
        }
        let g = self.groups.get(group).ok_or_else(|| Refusal::UnknownGroup(group.to_string()))?;
        let spec = g
            .spec
            .apps
            .iter()
            .find(|a| a.name == app)
            .ok_or_else(|| Refusal::Invalid(format!("group {group:?} has no app {app:?}")))?;
        let Some(crate::model::Autoscale(auto)) = &spec.autoscale else {
            return Err(Refusal::Invalid(format!("{group}/{app} is not autoscaled")));
        };
        if let Some(op) = &g.operation {
            return Err(Refusal::GroupBusy { group: group.to_string(), operation: op.clone() });
        }
        self.check_not_frozen(group, &[site], now_ms)?;
        let Some(share) = g.placement.sites.get(site).filter(|s| s.weight > 0) else {
            return Err(Refusal::Stale(format!("{group} takes no traffic on {site}; only active sites autoscale")));
        };
        let now = share.instances.get(app).copied().unwrap_or(0);
        if now != from {
            return Err(Refusal::Stale(format!(
                "{group}/{app} runs {now} instances on {site}, not {from}; the request is out of date"
            )));
        }
        if to == from || to < auto.min_instances || to > auto.max_instances {
            return Err(Refusal::Invalid(format!(
                "{group}/{app}: {from} -> {to} is not a change within the bounds [{}, {}]",
                auto.min_instances, auto.max_instances
            )));
        }
        Ok(())
    }

    pub fn max_epoch(&self) -> u64 {
        self.groups.values().map(|g| g.placement.epoch).max().unwrap_or(0)
    }

    /// A start that says it rolls back `rollback_of` (and so skips the change windows, the TTL
    /// budget and approval) must name an operation or evacuation that moved `group`.
    fn check_rollback_of(&self, rollback_of: &str, group: &str) -> Result<(), Refusal> {
        let moved = self.operations.get(rollback_of).is_some_and(|o| o.group == group)
            || self.evacuations.get(rollback_of).is_some_and(|e| e.groups.iter().any(|g| g.group == group));
        if moved {
            Ok(())
        } else {
            Err(Refusal::Invalid(format!("{rollback_of:?} is not an operation that moved group {group:?}")))
        }
    }

    /// Whether any operation or evacuation may still take a step (the engine has work).
    pub fn has_work(&self) -> bool {
        self.operations.values().any(|o| o.holds_group())
            || self.evacuations.values().any(|e| e.is_running())
            || self.groups.values().any(|g| g.placement.active_sites().iter().any(|s| self.down_sites.contains_key(*s)))
            || self.down_groups.keys().any(|g| self.groups.get(g).is_some_and(|g| g.operation.is_none()))
    }

    pub fn operations_in_flight(&self) -> usize {
        self.operations.values().filter(|o| o.is_running()).count()
    }
}

/// `State::freezes` as `[[scope, freeze], ...]`. Reads the older object form too, which could
/// only ever hold the global freeze (any other scope made the snapshot fail to serialize).
mod freeze_list {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serializer};

    use super::Freeze;
    use crate::proposal::FreezeScope;

    pub fn serialize<S: Serializer>(map: &BTreeMap<FreezeScope, Freeze>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(map.iter())
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        List(Vec<(FreezeScope, Freeze)>),
        Object(BTreeMap<FreezeScope, Freeze>),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<FreezeScope, Freeze>, D::Error> {
        Ok(match Form::deserialize(d)? {
            Form::List(pairs) => pairs.into_iter().collect(),
            Form::Object(map) => map,
        })
    }
}

/// Asks `to` to run at least `instances` of each app, in a new placement epoch.
fn scale_up_target(
    placement: &mut crate::model::Placement,
    to: &str,
    instances: &BTreeMap<crate::model::AppName, u32>,
    index: u64,
) {
    let share = placement.sites.entry(to.to_string()).or_default();
    for (app, n) in instances {
        let current = share.instances.entry(app.clone()).or_insert(0);
        *current = (*current).max(*n);
    }
    placement.epoch = index;
}

/// Puts an operation's target back as it was before the operation (traffic never moved there),
/// in a new placement epoch so the target's cell stops what it started.
fn restore_target(placement: &mut crate::model::Placement, op: &Operation, index: u64) {
    if op.target_before == SiteShare::default() {
        placement.sites.remove(&op.to);
    } else {
        placement.sites.insert(op.to.clone(), op.target_before.clone());
    }
    placement.epoch = index;
}
