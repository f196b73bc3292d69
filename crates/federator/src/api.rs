//! The operator API. Every call is authorised by the role in the caller's certificate, and the
//! caller's identity (never a message field) is what the audit chain records as the actor.

use std::sync::Arc;

use switchyard_core::engine::{operation_blocker, rollback_actions};
use switchyard_core::plan::{MovePlan, MoveScope, PlanEstimates, budgets, plan_moves};
use switchyard_core::views::group_counts_on;
use switchyard_core::{Action, Applied, Control, Freeze, FreezeScope, GroupSpec, REPORT_FRESH_MS};
use switchyard_proto::operator::v1 as pb;
use switchyard_proto::operator::v1::operator_server::Operator;
use switchyard_tls::{Identity, Role, peer_identity};
use tonic::{Request, Response, Status};

use crate::convert::{audit_to_proto, operation_to_proto, resources_to_proto};
use crate::node::{Federator, MemberChange, MembershipView, now_ms};

pub struct OperatorService {
    fed: Arc<Federator>,
}

impl OperatorService {
    /// The phase and total budgets shown with an operation (the plan's estimates).
    fn budgets(&self, s: &switchyard_core::State, o: &switchyard_core::Operation) -> (u64, u64) {
        budgets(s, o, &self.fed.config.engine, &PlanEstimates::default())
    }

    pub fn new(fed: Arc<Federator>) -> Self {
        Self { fed }
    }
}

impl OperatorService {
    /// Plans `scope` → `to` on the committed state at this replica's time.
    fn plan(&self, scope: &MoveScope, to: &str) -> Result<MovePlan, Status> {
        let now = now_ms();
        self.fed
            .shared
            .read(|s| plan_moves(s, scope, to, now, &self.fed.config.engine, &PlanEstimates::default()))
            .map_err(|e| Status::from(crate::node::ProposeError::Refused(e)))
    }
}

impl OperatorService {
    /// With a plan id (`start --plan`): refused unless planning `scope` → `to` now, on the
    /// committed state, gives that same plan.
    async fn check_plan(&self, scope: &MoveScope, to: &str, plan_id: &str) -> Result<(), Status> {
        if plan_id.is_empty() {
            return Ok(());
        }
        self.fed.read_barrier().await?;
        let plan = self.plan(scope, to)?;
        if plan.id == plan_id {
            return Ok(());
        }
        Err(Status::failed_precondition(format!(
            "the federation changed since plan {plan_id}: planning this move now gives plan {}{}; review it \
             (fedctl switchover plan) and start with the new id",
            plan.id,
            if plan.go { String::new() } else { format!(" (no-go: {})", plan.reasons.join("; ")) }
        )))
    }
}

fn authorise<T>(req: &Request<T>, allowed: fn(Role) -> bool, what: &str) -> Result<Identity, Status> {
    let id = peer_identity(req)?;
    if !allowed(id.role) {
        return Err(Status::permission_denied(format!("{id} (role {}) may not {what}", id.role)));
    }
    Ok(id)
}

const MAX_AUDIT_PAGE: usize = 10_000;
/// Backups travel in chunks well below the gRPC message limit.
const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;

fn membership_to_proto(m: &MembershipView) -> pb::Membership {
    let member = |(node_id, address): &(u64, String)| pb::Member { node_id: *node_id, address: address.clone() };
    pb::Membership {
        voters: m.voters.iter().map(member).collect(),
        learners: m.learners.iter().map(member).collect(),
        leader_id: m.leader.unwrap_or(0),
        term: m.term,
        log_index: m.log_index,
    }
}

#[tonic::async_trait]
impl Operator for OperatorService {
    async fn get_membership(&self, req: Request<pb::GetMembershipRequest>) -> Result<Response<pb::Membership>, Status> {
        authorise(&req, Role::can_view, "read the cluster membership")?;
        self.fed.read_barrier().await?;
        Ok(Response::new(membership_to_proto(&self.fed.membership())))
    }

    async fn change_membership(
        &self,
        req: Request<pb::ChangeMembershipRequest>,
    ) -> Result<Response<pb::Membership>, Status> {
        let id = authorise(&req, |r| r == Role::Admin, "change the federator cluster's membership")?;
        let r = req.into_inner();
        let change = match pb::MembershipChange::try_from(r.change) {
            Ok(pb::MembershipChange::AddLearner) => MemberChange::AddLearner { node_id: r.node_id, address: r.address },
            Ok(pb::MembershipChange::AddVoter) => MemberChange::AddVoter { node_id: r.node_id, address: r.address },
            Ok(pb::MembershipChange::Remove) => MemberChange::Remove { node_id: r.node_id },
            _ => return Err(Status::invalid_argument("change must be add-learner, add-voter or remove")),
        };
        let after = self.fed.change_membership(&id.to_string(), change, &r.reason).await?;
        Ok(Response::new(membership_to_proto(&after)))
    }

    type TakeSnapshotStream = tokio_stream::Iter<std::vec::IntoIter<Result<pb::SnapshotChunk, Status>>>;

    async fn take_snapshot(
        &self,
        req: Request<pb::TakeSnapshotRequest>,
    ) -> Result<Response<Self::TakeSnapshotStream>, Status> {
        let id = authorise(&req, |r| r == Role::Admin, "take a backup snapshot")?;
        let r = req.into_inner();
        let b = self.fed.backup(&id.to_string(), &r.reason).await?;
        let total_bytes = b.data.len() as u64;
        let mut chunks: Vec<Result<pb::SnapshotChunk, Status>> = b
            .data
            .chunks(SNAPSHOT_CHUNK_BYTES)
            .map(|c| Ok(pb::SnapshotChunk { data: c.to_vec(), ..Default::default() }))
            .collect();
        if chunks.is_empty() {
            chunks.push(Ok(pb::SnapshotChunk::default()));
        }
        if let Some(Ok(first)) = chunks.first_mut() {
            first.last_log_index = b.last_log_index;
            first.last_log_term = b.last_log_term;
            first.snapshot_id = b.snapshot_id;
            first.total_bytes = total_bytes;
        }
        Ok(Response::new(tokio_stream::iter(chunks)))
    }

    async fn get_status(&self, req: Request<pb::GetStatusRequest>) -> Result<Response<pb::FederationStatus>, Status> {
        let id = authorise(&req, Role::can_view, "read federation status")?;
        let m = self.fed.raft.metrics().borrow().clone();
        let status = self.fed.shared.read(|s| pb::FederationStatus {
            node_id: self.fed.id,
            leader_id: m.current_leader.unwrap_or(0),
            term: m.current_term,
            last_applied_index: s.last_applied,
            sites: s.sites.len() as u32,
            groups: s.groups.len() as u32,
            operations_in_flight: s.operations_in_flight() as u32,
            routing_version: s.routing_version,
            audit_records: s.audit.len() as u64,
            audit_head_hash: s.audit.head_hash().to_string(),
            zone: self.fed.config.zone.clone(),
            caller: id.to_string(),
        });
        Ok(Response::new(status))
    }

    async fn list_sites(&self, req: Request<pb::ListSitesRequest>) -> Result<Response<pb::ListSitesReply>, Status> {
        authorise(&req, Role::can_view, "list sites")?;
        self.fed.read_barrier().await?;
        let now = now_ms();
        let sites = self.fed.shared.read(|s| {
            s.sites
                .values()
                .map(|site| {
                    let record = s.reports.get(&site.spec.name);
                    let age = record.map(|r| r.age_ms(now));
                    let report = record.map(|r| &r.report);
                    pb::Site {
                        name: site.spec.name.clone(),
                        state: site.state.as_str().to_string(),
                        ingress: site.spec.ingress.iter().map(ToString::to_string).collect(),
                        labels: site.spec.labels.clone().into_iter().collect(),
                        cell_connected: age.is_some_and(|a| a <= REPORT_FRESH_MS),
                        report_age_ms: age.map_or(-1, |a| a as i64),
                        capacity: report.map(|r| resources_to_proto(r.capacity())),
                        allocated: report.map(|r| resources_to_proto(r.allocated())),
                        nodes: report.map_or(0, |r| r.nodes.len() as u32),
                        nodes_healthy: report.map_or(0, |r| r.nodes.iter().filter(|n| n.healthy).count() as u32),
                        applied_epoch: report.map_or(0, |r| r.applied_epoch),
                    }
                })
                .collect()
        });
        Ok(Response::new(pb::ListSitesReply { sites }))
    }

    async fn list_groups(&self, req: Request<pb::ListGroupsRequest>) -> Result<Response<pb::ListGroupsReply>, Status> {
        authorise(&req, Role::can_view, "list groups")?;
        self.fed.read_barrier().await?;
        let zone = self.fed.config.zone.clone();
        let now = now_ms();
        let groups = self.fed.shared.read(|s| {
            s.groups
                .values()
                .map(|g| pb::Group {
                    name: g.spec.name.clone(),
                    dns_name: format!("{}.{zone}", g.spec.dns_name),
                    ttl_s: g.spec.ttl_s,
                    tier: g.spec.tier,
                    apps: g.spec.apps.iter().map(|a| a.name.clone()).collect(),
                    epoch: g.placement.epoch,
                    placement: g
                        .placement
                        .sites
                        .iter()
                        .map(|(site, share)| {
                            let (running, healthy) = group_counts_on(s, &g.spec.name, site);
                            pb::SitePlacement {
                                site: site.clone(),
                                instances: share.instances.clone().into_iter().collect(),
                                weight: share.weight,
                                running,
                                healthy,
                                health: switchyard_core::views::placement_health(s, &g.spec.name, site, now)
                                    .to_string(),
                            }
                        })
                        .collect(),
                    operation: g.operation.clone().unwrap_or_default(),
                    active_sites: g.placement.active_sites().into_iter().cloned().collect(),
                })
                .collect()
        });
        Ok(Response::new(pb::ListGroupsReply { groups }))
    }

    async fn start_switchover(
        &self,
        req: Request<pb::StartSwitchoverRequest>,
    ) -> Result<Response<pb::Operation>, Status> {
        let id = authorise(&req, Role::can_switchover, "start a switchover")?;
        let r = req.into_inner();
        if r.group.is_empty() || r.to_site.is_empty() {
            return Err(Status::invalid_argument("both group and to_site are required"));
        }
        self.check_plan(&MoveScope::Groups(vec![r.group.clone()]), &r.to_site, &r.plan_id).await?;
        let action = Action::StartSwitchover {
            group: r.group.clone(),
            to: r.to_site.clone(),
            reason: r.reason.clone(),
            plan: r.plan_id.clone(),
            rollback_of: String::new(),
        };
        let applied = self.fed.propose(&id.to_string(), action).await?;
        let Applied::OperationStarted { id: op_id } = applied else {
            return Err(Status::internal("switchover committed without an operation id"));
        };
        tracing::info!(operation = %op_id, group = %r.group, to = %r.to_site, actor = %id, "switchover started");
        metrics::counter!("federator_switchovers_started_total").increment(1);
        self.operation(&op_id).map(Response::new)
    }

    async fn start_evacuation(
        &self,
        req: Request<pb::StartEvacuationRequest>,
    ) -> Result<Response<pb::Operation>, Status> {
        let id = authorise(&req, Role::can_switchover, "start an evacuation")?;
        let r = req.into_inner();
        let scope = match (r.from_site.is_empty(), r.groups.is_empty()) {
            (false, true) => MoveScope::Site(r.from_site.clone()),
            (true, false) => MoveScope::Groups(r.groups.clone()),
            _ => return Err(Status::invalid_argument("give either from_site (a site to empty) or groups, not both")),
        };
        if r.to_site.is_empty() {
            return Err(Status::invalid_argument("to_site is required"));
        }
        self.check_plan(&scope, &r.to_site, &r.plan_id).await?;
        let or = |v: u32, default: u32| if v == 0 { default } else { v };
        let action = Action::StartEvacuation {
            from: (!r.from_site.is_empty()).then(|| r.from_site.clone()),
            groups: r.groups.clone(),
            to: r.to_site.clone(),
            reason: r.reason.clone(),
            plan: r.plan_id.clone(),
            concurrency: or(r.concurrency, switchyard_core::evacuation::DEFAULT_CONCURRENCY),
            failure_budget: or(r.failure_budget, switchyard_core::evacuation::DEFAULT_FAILURE_BUDGET),
            rollback_of: String::new(),
        };
        let Applied::OperationStarted { id: evac } = self.fed.propose(&id.to_string(), action).await? else {
            return Err(Status::internal("evacuation committed without an operation id"));
        };
        tracing::info!(operation = %evac, from = %r.from_site, to = %r.to_site, actor = %id, "evacuation started");
        metrics::counter!("federator_evacuations_started_total").increment(1);
        self.operation(&evac).map(Response::new)
    }

    async fn control_operation(
        &self,
        req: Request<pb::ControlOperationRequest>,
    ) -> Result<Response<pb::Operation>, Status> {
        let who = authorise(&req, Role::can_switchover, "pause, resume or abort operations")?;
        let r = req.into_inner();
        let control = match r.control.as_str() {
            "pause" => Control::Pause,
            "resume" => Control::Resume,
            "abort" => Control::Abort,
            other => {
                return Err(Status::invalid_argument(format!("control {other:?} is not one of pause, resume, abort")));
            }
        };
        let action = Action::ControlOperation { id: r.id.clone(), control, reason: r.reason };
        self.fed.propose(&who.to_string(), action).await?;
        tracing::info!(operation = %r.id, control = control.as_str(), actor = %who, "operation controlled");
        self.operation(&r.id).map(Response::new)
    }

    async fn rollback_operation(
        &self,
        req: Request<pb::RollbackOperationRequest>,
    ) -> Result<Response<pb::Operation>, Status> {
        let who = authorise(&req, Role::can_switchover, "roll back operations")?;
        let r = req.into_inner();
        self.fed.read_barrier().await?;
        let evacuation = self
            .fed
            .shared
            .read(|s| s.evacuations.get(&r.id).map(|e| switchyard_core::evacuation::rollback_actions(s, e, &r.reason)));
        let actions = match evacuation {
            Some(actions) => actions,
            None => {
                let op = self
                    .fed
                    .shared
                    .read(|s| s.operations.get(&r.id).cloned())
                    .ok_or_else(|| Status::not_found(format!("operation {:?} does not exist", r.id)))?;
                rollback_actions(&op, &r.reason)
            }
        }
        .map_err(|e| Status::from(crate::node::ProposeError::Refused(e)))?;
        let mut last = r.id.clone();
        for action in actions {
            if let Applied::OperationStarted { id } = self.fed.propose(&who.to_string(), action).await? {
                tracing::info!(operation = %id, rolls_back = %r.id, actor = %who, "rollback started");
                last = id;
            }
        }
        self.operation(&last).map(Response::new)
    }

    async fn plan_moves(&self, req: Request<pb::PlanMovesRequest>) -> Result<Response<pb::PlanMovesReply>, Status> {
        authorise(&req, Role::can_view, "plan moves")?;
        let r = req.into_inner();
        let scope = match (r.groups.is_empty(), r.from_site.is_empty()) {
            (false, true) => MoveScope::Groups(r.groups),
            (true, false) => MoveScope::Site(r.from_site),
            _ => return Err(Status::invalid_argument("give either groups or from_site (an evacuation), not both")),
        };
        if r.to_site.is_empty() {
            return Err(Status::invalid_argument("to_site is required"));
        }
        self.fed.read_barrier().await?;
        let mut plan = self.plan(&scope, &r.to_site)?;
        if r.concurrency > 0 {
            self.fed.shared.read(|s| plan.predict(s, r.concurrency));
        }
        let plan_json =
            serde_json::to_string(&plan).map_err(|e| Status::internal(format!("cannot render the plan: {e}")))?;
        Ok(Response::new(pb::PlanMovesReply { id: plan.id, go: plan.go, plan_json }))
    }

    async fn update_group(
        &self,
        req: Request<pb::UpdateGroupRequest>,
    ) -> Result<Response<pb::UpdateGroupReply>, Status> {
        let id = authorise(&req, Role::can_switchover, "change a group's spec")?;
        let r = req.into_inner();
        let spec: GroupSpec = toml::from_str(&r.spec_toml)
            .map_err(|e| Status::invalid_argument(format!("the group spec is not valid TOML for a group: {e}")))?;
        if r.reason.trim().is_empty() && !r.dry_run {
            return Err(Status::invalid_argument(
                "a reason (ticket or change id) is required; it goes into the audit history",
            ));
        }
        let plan = self
            .fed
            .shared
            .read(|s| s.plan_group_update(&spec, now_ms()))
            .map_err(|e| Status::from(crate::node::ProposeError::Refused(e)))?;
        if r.dry_run {
            let epoch = self.fed.shared.read(|s| s.groups.get(&spec.name).map_or(0, |g| g.placement.epoch));
            return Ok(Response::new(pb::UpdateGroupReply {
                changed: !plan.changes.is_empty(),
                changes: plan.changes,
                epoch,
                dry_run: true,
            }));
        }
        let name = spec.name.clone();
        let (applied, index) =
            self.fed.propose_indexed(&id.to_string(), Action::UpdateGroup { spec, reason: r.reason }).await?;
        let changed = applied == Applied::Changed;
        let epoch = self.epoch_after(&name, changed, index);
        if changed {
            tracing::info!(group = %name, actor = %id, changes = ?plan.changes, "group spec updated");
        }
        Ok(Response::new(pb::UpdateGroupReply {
            changed,
            changes: if changed { plan.changes } else { Vec::new() },
            epoch,
            dry_run: false,
        }))
    }

    async fn get_group_spec(
        &self,
        req: Request<pb::GetGroupSpecRequest>,
    ) -> Result<Response<pb::GroupSpecReply>, Status> {
        authorise(&req, Role::can_view, "read group specs")?;
        self.fed.read_barrier().await?;
        let name = req.into_inner().group;
        let (spec, epoch) = self
            .fed
            .shared
            .read(|s| s.groups.get(&name).map(|g| (g.spec.clone(), g.placement.epoch)))
            .ok_or_else(|| Status::not_found(format!("unknown group {name:?}")))?;
        let spec_toml = toml::to_string(&spec).map_err(|e| Status::internal(format!("cannot render the spec: {e}")))?;
        Ok(Response::new(pb::GroupSpecReply { spec_toml, epoch }))
    }

    async fn rollback_group(
        &self,
        req: Request<pb::RollbackGroupRequest>,
    ) -> Result<Response<pb::UpdateGroupReply>, Status> {
        let id = authorise(&req, Role::can_switchover, "roll a group back")?;
        let r = req.into_inner();
        if r.reason.trim().is_empty() {
            return Err(Status::invalid_argument("a reason is required; it goes into the audit history"));
        }
        let previous = self.fed.shared.read(|s| s.groups.get(&r.group).map(|g| g.previous_spec.clone()));
        let Some(previous) = previous else { return Err(Status::not_found(format!("unknown group {:?}", r.group))) };
        let changes = match &previous {
            Some(p) => {
                self.fed.shared.read(|s| s.plan_group_update(p, now_ms())).map(|u| u.changes).unwrap_or_default()
            }
            None => Vec::new(),
        };
        let (applied, index) = self
            .fed
            .propose_indexed(&id.to_string(), Action::RollbackGroup { group: r.group.clone(), reason: r.reason })
            .await?;
        let changed = applied == Applied::Changed;
        let epoch = self.epoch_after(&r.group, changed, index);
        tracing::info!(group = %r.group, actor = %id, "group rolled back");
        Ok(Response::new(pb::UpdateGroupReply {
            changed,
            changes: if changed { changes } else { Vec::new() },
            epoch,
            dry_run: false,
        }))
    }

    async fn scale_app(&self, req: Request<pb::ScaleAppRequest>) -> Result<Response<pb::ScaleAppReply>, Status> {
        let id = authorise(&req, Role::can_switchover, "scale apps")?;
        let r = req.into_inner();
        if r.reason.trim().is_empty() {
            return Err(Status::invalid_argument("a reason is required; it goes into the audit history"));
        }
        let site = if r.site.is_empty() {
            let active = self.fed.shared.read(|s| {
                s.groups.get(&r.group).map(|g| g.placement.active_sites().into_iter().cloned().collect::<Vec<_>>())
            });
            match active.as_deref() {
                None => return Err(Status::not_found(format!("unknown group {:?}", r.group))),
                Some([one]) => one.clone(),
                Some(many) => {
                    return Err(Status::invalid_argument(format!(
                        "group {:?} is active on {} sites ({}); name one with --site",
                        r.group,
                        many.len(),
                        many.join(", ")
                    )));
                }
            }
        } else {
            r.site.clone()
        };
        let action = Action::ScaleApp {
            group: r.group.clone(),
            app: r.app.clone(),
            site: site.clone(),
            instances: r.instances,
            reason: r.reason,
        };
        let (applied, index) = self.fed.propose_indexed(&id.to_string(), action).await?;
        let changed = applied == Applied::Changed;
        let epoch = self.epoch_after(&r.group, changed, index);
        tracing::info!(group = %r.group, app = %r.app, %site, instances = r.instances, actor = %id, "app scaled");
        Ok(Response::new(pb::ScaleAppReply { changed, site, epoch }))
    }

    async fn approve_operation(
        &self,
        req: Request<pb::ApproveOperationRequest>,
    ) -> Result<Response<pb::Operation>, Status> {
        let who = authorise(&req, Role::can_switchover, "approve operations")?;
        let r = req.into_inner();
        self.fed.propose(&who.to_string(), Action::ApproveOperation { id: r.id.clone(), reason: r.reason }).await?;
        tracing::info!(operation = %r.id, approver = %who, "operation approved");
        self.operation(&r.id).map(Response::new)
    }

    async fn set_approval_policy(
        &self,
        req: Request<pb::SetApprovalPolicyRequest>,
    ) -> Result<Response<pb::ApprovalPolicy>, Status> {
        let who = authorise(&req, Role::can_freeze, "set the approval policy")?;
        let r = req.into_inner();
        self.fed.propose(&who.to_string(), Action::SetApprovalPolicy { tiers: r.tiers, reason: r.reason }).await?;
        let tiers = self.fed.shared.read(|s| s.approval_tiers.iter().copied().collect());
        tracing::info!(?tiers, actor = %who, "approval policy set");
        Ok(Response::new(pb::ApprovalPolicy { tiers }))
    }

    async fn set_change_windows(
        &self,
        req: Request<pb::SetChangeWindowsRequest>,
    ) -> Result<Response<pb::ChangeWindows>, Status> {
        let who = authorise(&req, Role::can_freeze, "set change windows")?;
        let r = req.into_inner();
        let windows = r
            .windows
            .iter()
            .map(|w| w.parse::<switchyard_core::window::ChangeWindow>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(Status::invalid_argument)?;
        self.fed.propose(&who.to_string(), Action::SetChangeWindows { windows, reason: r.reason }).await?;
        let windows: Vec<String> = self.fed.shared.read(|s| s.change_windows.iter().map(|w| w.to_string()).collect());
        tracing::info!(?windows, actor = %who, "change windows set");
        Ok(Response::new(pb::ChangeWindows { windows }))
    }

    async fn schedule_drill(&self, req: Request<pb::ScheduleDrillRequest>) -> Result<Response<pb::Drill>, Status> {
        let who = authorise(&req, Role::can_switchover, "schedule drills")?;
        let r = req.into_inner();
        let action =
            Action::ScheduleDrill { group: r.group.clone(), to: r.to_site.clone(), at_ms: r.at_ms, reason: r.reason };
        let Applied::OperationStarted { id } = self.fed.propose(&who.to_string(), action).await? else {
            return Err(Status::internal("drill committed without an id"));
        };
        tracing::info!(drill = %id, group = %r.group, to = %r.to_site, actor = %who, "drill scheduled");
        self.drill(&id).map(Response::new)
    }

    async fn cancel_drill(&self, req: Request<pb::CancelDrillRequest>) -> Result<Response<pb::Drill>, Status> {
        let who = authorise(&req, Role::can_switchover, "cancel drills")?;
        let r = req.into_inner();
        self.fed.propose(&who.to_string(), Action::CancelDrill { id: r.id.clone(), reason: r.reason }).await?;
        self.drill(&r.id).map(Response::new)
    }

    async fn list_drills(&self, req: Request<pb::ListDrillsRequest>) -> Result<Response<pb::ListDrillsReply>, Status> {
        authorise(&req, Role::can_view, "list drills")?;
        self.fed.read_barrier().await?;
        let drills = self.fed.shared.read(|s| s.drills.values().map(|d| drill_to_proto(s, d)).collect());
        Ok(Response::new(pb::ListDrillsReply { drills }))
    }

    async fn set_ttl_budget(
        &self,
        req: Request<pb::SetTtlBudgetRequest>,
    ) -> Result<Response<pb::SetTtlBudgetRequest>, Status> {
        let who = authorise(&req, Role::can_freeze, "set the TTL budget")?;
        let r = req.into_inner();
        self.fed
            .propose(&who.to_string(), Action::SetTtlBudget { max_ttl_s: r.max_ttl_s, reason: r.reason.clone() })
            .await?;
        tracing::info!(max_ttl_s = r.max_ttl_s, actor = %who, "TTL budget set");
        Ok(Response::new(pb::SetTtlBudgetRequest {
            max_ttl_s: self.fed.shared.read(|s| s.ttl_budget_s),
            reason: r.reason,
        }))
    }

    async fn declare_site_down(
        &self,
        req: Request<pb::DeclareSiteDownRequest>,
    ) -> Result<Response<pb::DrStatus>, Status> {
        let who = authorise(&req, Role::can_freeze, "declare a site down")?;
        let r = req.into_inner();
        let action = Action::DeclareSiteDownManually {
            site: r.site.clone(),
            reason: r.reason,
            break_glass: r.break_glass,
            accept_data_loss: r.accept_data_loss,
        };
        self.fed.propose(&who.to_string(), action).await?;
        tracing::warn!(site = %r.site, actor = %who, break_glass = r.break_glass, "site declared down by hand");
        metrics::counter!("federator_sites_declared_down_total", "by" => "human").increment(1);
        Ok(Response::new(self.dr_status()))
    }

    async fn failover_group(&self, req: Request<pb::FailoverGroupRequest>) -> Result<Response<pb::Operation>, Status> {
        let who = authorise(&req, Role::can_freeze, "fail a group over")?;
        let r = req.into_inner();
        let action = Action::FailoverGroup {
            group: r.group.clone(),
            reason: r.reason,
            break_glass: r.break_glass,
            accept_data_loss: r.accept_data_loss,
        };
        let Applied::OperationStarted { id } = self.fed.propose(&who.to_string(), action).await? else {
            return Err(Status::internal("failover committed without an operation id"));
        };
        tracing::warn!(group = %r.group, operation = %id, actor = %who, "group failed over by hand");
        self.operation(&id).map(Response::new)
    }

    async fn release_brake(&self, req: Request<pb::ReleaseBrakeRequest>) -> Result<Response<pb::DrStatus>, Status> {
        let who = authorise(&req, Role::can_freeze, "release the brake")?;
        let r = req.into_inner();
        self.fed.propose(&who.to_string(), Action::ReleaseBrake { reason: r.reason }).await?;
        tracing::warn!(actor = %who, "automation brake released");
        Ok(Response::new(self.dr_status()))
    }

    async fn reclaim_site(&self, req: Request<pb::ReclaimSiteRequest>) -> Result<Response<pb::DrStatus>, Status> {
        let who = authorise(&req, Role::can_freeze, "reclaim a site")?;
        let r = req.into_inner();
        self.fed.propose(&who.to_string(), Action::ReclaimSite { site: r.site.clone(), reason: r.reason }).await?;
        tracing::warn!(site = %r.site, actor = %who, "site reclaimed");
        Ok(Response::new(self.dr_status()))
    }

    async fn get_dr_status(&self, req: Request<pb::GetDrStatusRequest>) -> Result<Response<pb::DrStatus>, Status> {
        authorise(&req, Role::can_view, "read the disaster-recovery status")?;
        self.fed.read_barrier().await?;
        Ok(Response::new(self.dr_status()))
    }

    async fn set_freeze(&self, req: Request<pb::SetFreezeRequest>) -> Result<Response<pb::Freeze>, Status> {
        let id = authorise(&req, Role::can_freeze, "set freezes")?;
        let r = req.into_inner();
        let scope: FreezeScope = r.scope.parse().map_err(Status::invalid_argument)?;
        if r.reason.trim().is_empty() {
            return Err(Status::invalid_argument("a freeze needs a reason; it goes into the audit history"));
        }
        let until_ms = (r.duration_s > 0).then(|| now_ms().saturating_add(r.duration_s.saturating_mul(1000)));
        let actor = id.to_string();
        let action = Action::SetFreeze { scope: scope.clone(), reason: r.reason.clone(), until_ms };
        let (_, index) = self.fed.propose_indexed(&actor, action).await?;
        tracing::info!(%scope, actor = %id, "freeze set");
        // The freeze as this write set it, from its own audit record: another writer may have
        // replaced or cleared it since (even in the same log entry).
        let subject = scope.to_string();
        let since_ms = self.fed.shared.read(|s| {
            s.audit.records().iter().rev().take_while(|a| a.raft_index >= index).find_map(|a| {
                (a.raft_index == index
                    && a.action == "freeze.set"
                    && a.subject == subject
                    && a.actor == actor
                    && a.reason == r.reason)
                    .then_some(a.time_ms)
            })
        });
        let since_ms = since_ms.ok_or_else(|| Status::internal("freeze committed but its audit record is missing"))?;
        let freeze = switchyard_core::Freeze { actor, reason: r.reason, since_ms, until_ms };
        Ok(Response::new(freeze_to_proto(&scope, &freeze)))
    }

    async fn clear_freeze(
        &self,
        req: Request<pb::ClearFreezeRequest>,
    ) -> Result<Response<pb::ClearFreezeReply>, Status> {
        let id = authorise(&req, Role::can_freeze, "clear freezes")?;
        let r = req.into_inner();
        let scope: FreezeScope = r.scope.parse().map_err(Status::invalid_argument)?;
        if r.reason.trim().is_empty() {
            return Err(Status::invalid_argument("clearing a freeze needs a reason; it goes into the audit history"));
        }
        let applied =
            self.fed.propose(&id.to_string(), Action::ClearFreeze { scope: scope.clone(), reason: r.reason }).await?;
        tracing::info!(%scope, actor = %id, "freeze cleared");
        Ok(Response::new(pb::ClearFreezeReply { cleared: applied == Applied::Changed }))
    }

    async fn list_freezes(
        &self,
        req: Request<pb::ListFreezesRequest>,
    ) -> Result<Response<pb::ListFreezesReply>, Status> {
        authorise(&req, Role::can_view, "list freezes")?;
        self.fed.read_barrier().await?;
        let now = now_ms();
        let freezes = self.fed.shared.read(|s| {
            s.freezes.iter().filter(|(_, f)| f.holds_at(now)).map(|(scope, f)| freeze_to_proto(scope, f)).collect()
        });
        Ok(Response::new(pb::ListFreezesReply { freezes }))
    }

    async fn get_operation(&self, req: Request<pb::GetOperationRequest>) -> Result<Response<pb::Operation>, Status> {
        authorise(&req, Role::can_view, "read operations")?;
        self.fed.read_barrier().await?;
        self.operation(&req.get_ref().id).map(Response::new)
    }

    async fn list_operations(
        &self,
        req: Request<pb::ListOperationsRequest>,
    ) -> Result<Response<pb::ListOperationsReply>, Status> {
        authorise(&req, Role::can_view, "list operations")?;
        self.fed.read_barrier().await?;
        let now = now_ms();
        let operations = self.fed.shared.read(|s| {
            let mut out: Vec<pb::Operation> =
                s.evacuations.values().map(|e| self.evacuation_to_proto(s, e, now)).collect();
            out.extend(s.operations.values().map(|o| {
                operation_to_proto(o, operation_blocker(s, o, now, &self.fed.config.engine), self.budgets(s, o))
            }));
            out
        });
        Ok(Response::new(pb::ListOperationsReply { operations }))
    }

    async fn list_audit(&self, req: Request<pb::ListAuditRequest>) -> Result<Response<pb::ListAuditReply>, Status> {
        authorise(&req, Role::can_read_audit, "read the audit history")?;
        self.fed.read_barrier().await?;
        let r = req.get_ref();
        let limit = if r.limit == 0 { MAX_AUDIT_PAGE } else { (r.limit as usize).min(MAX_AUDIT_PAGE) };
        let records = self.fed.shared.read(|s| {
            s.audit.records().iter().filter(|a| a.seq >= r.from_sequence).take(limit).map(audit_to_proto).collect()
        });
        Ok(Response::new(pb::ListAuditReply { records }))
    }
}

/// The observers whose evidence saw the subject unhealthy, as `observer (domain)`. A
/// declaration keeps every observer's evidence (a dead site's own observer, gone stale, is
/// unknown); only these agreed.
fn agreeing_observers(evidence: &[switchyard_core::dr::detect::Evidence]) -> Vec<String> {
    evidence
        .iter()
        .filter(|e| e.health == switchyard_core::dr::detect::Health::Unhealthy)
        .map(|e| format!("{} ({})", e.observer, e.domain))
        .collect()
}

impl OperatorService {
    /// The brake, the sites declared down, and what the guard rails hold back now.
    fn dr_status(&self) -> pb::DrStatus {
        let now = now_ms();
        let cfg = &self.fed.config.engine.guard;
        let (_, suspect) = self.fed.detection_round(now);
        let recovered = crate::executor::recovered_origins(&self.fed, now);
        let detect = &self.fed.config.dr.detect;
        self.fed.shared.read(|s| {
            use switchyard_core::dr::failback;
            let running = failback::running(s).map(|o| o.group.clone());
            let fenced = s
                .origins
                .iter()
                .map(|(group, o)| pb::FencedGroup {
                    group: group.clone(),
                    site: o.site.clone(),
                    since_ms: o.at_ms,
                    failback: if s.groups.get(group).is_none_or(|g| g.spec.failover.failback_after_s.is_none()) {
                        "off".to_string()
                    } else if running.as_ref() == Some(group) {
                        "running".to_string()
                    } else {
                        match failback::eligible(s, group, &recovered, now, detect) {
                            Ok(_) if running.is_some() => "due after the running failback".to_string(),
                            Ok(_) => "due".to_string(),
                            Err(why) => format!("waiting: {why}"),
                        }
                    },
                })
                .collect();
            let held = switchyard_core::dr::round(s, &suspect, now, cfg)
                .held
                .into_iter()
                .map(|(site, h)| pb::HeldGroup {
                    site,
                    group: h.group,
                    rule: h.rule.as_str().to_string(),
                    detail: h.detail,
                })
                .collect();
            pb::DrStatus {
                brake: s.brake.as_ref().map(|b| b.reason.clone()).unwrap_or_default(),
                brake_by: s.brake.as_ref().map(|b| b.actor.clone()).unwrap_or_default(),
                brake_at_ms: s.brake.as_ref().map_or(0, |b| b.at_ms),
                down_sites: s
                    .down_sites
                    .iter()
                    .map(|(site, d)| pb::DownSite {
                        site: site.clone(),
                        at_ms: d.at_ms,
                        actor: d.actor.clone(),
                        manual_reason: d.manual.clone().unwrap_or_default(),
                        break_glass: d.break_glass.clone(),
                        observers: agreeing_observers(&d.evidence),
                    })
                    .collect(),
                held,
                fenced,
                down_groups: s
                    .down_groups
                    .iter()
                    .filter(|(_, d)| d.is_current(now))
                    .map(|(group, d)| pb::DownGroup {
                        group: group.clone(),
                        site: d.site.clone(),
                        at_ms: d.at_ms,
                        observers: agreeing_observers(&d.evidence),
                    })
                    .collect(),
                recent_failovers: s.automatic_failovers.iter().filter(|(t, _)| now.saturating_sub(*t) < 600_000).count()
                    as u32,
            }
        })
    }

    /// The group's placement epoch to answer a write committed at `index` with: a change sets
    /// the epoch to its own index, so that is the answer, even when a later write has changed
    /// the group again by the time the reply is built. A write that changed nothing answers
    /// with the epoch now (the group's newest, at or after the write).
    fn epoch_after(&self, group: &str, changed: bool, index: u64) -> u64 {
        if changed {
            return index;
        }
        self.fed.shared.read(|s| s.groups.get(group).map_or(0, |g| g.placement.epoch))
    }

    fn drill(&self, id: &str) -> Result<pb::Drill, Status> {
        self.fed.shared.read(|s| {
            s.drills
                .get(id)
                .map(|d| drill_to_proto(s, d))
                .ok_or_else(|| Status::not_found(format!("drill {id:?} does not exist")))
        })
    }

    fn operation(&self, id: &str) -> Result<pb::Operation, Status> {
        let now = now_ms();
        self.fed.shared.read(|s| {
            if let Some(e) = s.evacuations.get(id) {
                return Ok(self.evacuation_to_proto(s, e, now));
            }
            s.operations
                .get(id)
                .map(|o| {
                    operation_to_proto(o, operation_blocker(s, o, now, &self.fed.config.engine), self.budgets(s, o))
                })
                .ok_or_else(|| Status::not_found(format!("operation {id:?} does not exist")))
        })
    }

    /// An evacuation as an operation: a summary phase and blocker, and one progress line per
    /// group (its switchover's phase and what it waits for, or why it was not moved).
    fn evacuation_to_proto(
        &self,
        s: &switchyard_core::State,
        e: &switchyard_core::Evacuation,
        now: u64,
    ) -> pb::Operation {
        use switchyard_core::GroupStatus;
        let cfg = &self.fed.config.engine;
        let estimates = PlanEstimates::default();
        let mut moves = Vec::with_capacity(e.groups.len());
        let groups: Vec<pb::GroupProgress> = e
            .groups
            .iter()
            .map(|g| {
                let status = e.status(s, g);
                let op = g.operation.as_ref().and_then(|id| s.operations.get(id));
                let estimate = match op {
                    Some(o) => self.budgets(s, o).1,
                    None => switchyard_core::plan::move_estimate_ms(s, &g.group, cfg, &estimates),
                };
                moves.push((
                    g.group.clone(),
                    g.after.clone(),
                    if status.is_settled() && op.is_none() { 0 } else { estimate },
                ));
                let detail = match (status, op) {
                    (_, _) if g.not_moved.is_some() => g.not_moved.clone().unwrap_or_default(),
                    (GroupStatus::Pending, _) => {
                        let waiting: Vec<&str> = g
                            .after
                            .iter()
                            .filter(|d| {
                                e.groups
                                    .iter()
                                    .find(|x| &x.group == *d)
                                    .is_some_and(|x| e.status(s, x) != GroupStatus::Succeeded)
                            })
                            .map(String::as_str)
                            .collect();
                        if !waiting.is_empty() {
                            format!("waiting for {} to move first", waiting.join(", "))
                        } else if let Some(held) = switchyard_core::evacuation::held_by(s, e, &g.group, now) {
                            held
                        } else {
                            "waiting for a free slot".to_string()
                        }
                    }
                    (_, Some(o)) => operation_blocker(s, o, now, cfg),
                    _ => String::new(),
                };
                pb::GroupProgress {
                    group: g.group.clone(),
                    status: status.as_str().to_string(),
                    operation_id: g.operation.clone().unwrap_or_default(),
                    phase: op.map(|o| o.phase.as_str().to_string()).unwrap_or_default(),
                    detail,
                    target_percent: s
                        .groups
                        .get(&g.group)
                        .map_or(0, |x| x.placement.share(&e.to).weight * 100 / switchyard_core::state::FULL_WEIGHT),
                }
            })
            .collect();
        let counts = e.counts(s);
        let summary: Vec<String> = counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
        let predicted = switchyard_core::plan::makespan(&moves, e.concurrency);
        let blocker = match &e.paused {
            Some(p) => format!("paused by {}: {}", p.actor, p.reason),
            None if e.is_running() => format!(
                "{} of {} groups: {}; {} failed of a budget of {}",
                counts.get("succeeded").copied().unwrap_or(0),
                e.groups.len(),
                summary.join(", "),
                e.failures(s),
                e.failure_budget
            ),
            None => e.error.clone().unwrap_or_default(),
        };
        pb::Operation {
            id: e.id.clone(),
            kind: "evacuation".into(),
            group: format!("{} groups", e.groups.len()),
            from_site: e.from.clone().unwrap_or_default(),
            to_site: e.to.clone(),
            phase: if e.is_running() { "Moving".into() } else { "Done".into() },
            outcome: e.outcome.as_str().to_string(),
            actor: e.actor.clone(),
            reason: e.reason.clone(),
            created_at_ms: e.created_at_ms,
            updated_at_ms: e.updated_at_ms,
            finished_at_ms: e.finished_at_ms.unwrap_or(0),
            error: e.error.clone().unwrap_or_default(),
            blocker,
            phase_started_at_ms: e.created_at_ms,
            predicted_total_ms: predicted,
            phase_budget_ms: predicted,
            paused_by: e.paused.as_ref().map(|p| format!("{}: {}", p.actor, p.reason)).unwrap_or_default(),
            groups,
            concurrency: e.concurrency,
            failure_budget: e.failure_budget,
            ..Default::default()
        }
    }
}

fn drill_to_proto(s: &switchyard_core::State, d: &switchyard_core::drill::Drill) -> pb::Drill {
    let st = d.status(s);
    pb::Drill {
        id: d.id.clone(),
        group: d.group.clone(),
        to_site: d.to.clone(),
        at_ms: d.at_ms,
        actor: d.actor.clone(),
        reason: d.reason.clone(),
        status: st.status.to_string(),
        operation_id: d.operation.clone().unwrap_or_default(),
        rto_ms: st.rto_ms.unwrap_or(0),
        finished_at_ms: st.finished_at_ms.unwrap_or(0),
        detail: st.detail,
    }
}

fn freeze_to_proto(scope: &FreezeScope, f: &Freeze) -> pb::Freeze {
    pb::Freeze {
        scope: scope.to_string(),
        actor: f.actor.clone(),
        reason: f.reason.clone(),
        since_ms: f.since_ms,
        until_ms: f.until_ms.unwrap_or(0),
    }
}
