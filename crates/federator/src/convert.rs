//! Conversions between protobuf messages and core types, all in one place.

use std::collections::BTreeMap;

use switchyard_core::views::{DesiredView, RoutingView};
use switchyard_core::{
    AppReport, AuditRecord, CellReport, GroupReport, InstanceReport, NodeReport, Operation, Resources,
};
use switchyard_proto::agent::v1 as agent;
use switchyard_proto::common::v1 as common;
use switchyard_proto::operator::v1 as op;
use switchyard_proto::routing::v1 as routing;

pub fn resources_to_proto(r: Resources) -> common::Resources {
    common::Resources { cpu_millis: r.cpu_millis, mem_mib: r.mem_mib, disk_mib: r.disk_mib }
}

fn resources_from_proto(r: Option<&common::Resources>) -> Resources {
    r.map_or_else(Resources::default, |r| Resources {
        cpu_millis: r.cpu_millis,
        mem_mib: r.mem_mib,
        disk_mib: r.disk_mib,
    })
}

/// Bounds on what one cell report may contain, so a broken or hostile cell cannot bloat the log.
const MAX_NODES: usize = 10_000;
const MAX_GROUPS: usize = 10_000;
const MAX_INSTANCES_PER_APP: usize = 10_000;

/// A cell's report in core terms; fails with a message naming what is wrong.
pub fn report_from_proto(r: &agent::CellReport) -> Result<CellReport, String> {
    if r.nodes.len() > MAX_NODES || r.groups.len() > MAX_GROUPS {
        return Err(format!("report too large: {} nodes, {} groups", r.nodes.len(), r.groups.len()));
    }
    let nodes = r
        .nodes
        .iter()
        .map(|n| NodeReport {
            node_id: n.node_id.clone(),
            address: n.address.clone(),
            capacity: resources_from_proto(n.capacity.as_ref()),
            allocated: resources_from_proto(n.allocated.as_ref()),
            healthy: n.healthy,
            unschedulable: n.unschedulable,
        })
        .collect();
    let mut groups = BTreeMap::new();
    for g in &r.groups {
        let mut apps = BTreeMap::new();
        for a in &g.apps {
            if a.instances.len() > MAX_INSTANCES_PER_APP {
                return Err(format!("report too large: {} instances of {}/{}", a.instances.len(), g.group, a.app));
            }
            let mut instances: Vec<InstanceReport> = a
                .instances
                .iter()
                .map(|i| InstanceReport {
                    task_id: i.task_id.clone(),
                    node_id: i.node_id.clone(),
                    address: i.address.clone(),
                    port: i.port,
                    pid: i.pid,
                    running: i.state == common::TaskState::Running as i32,
                    healthy: i.healthy,
                })
                .collect();
            // Order-independent content, so an unchanged site produces an identical report.
            instances.sort_by(|a, b| a.task_id.cmp(&b.task_id));
            apps.insert(a.app.clone(), AppReport { desired: a.desired, instances, blocker: a.blocker.clone() });
        }
        if groups
            .insert(
                g.group.clone(),
                GroupReport { applied_epoch: g.applied_epoch, apps, replication_lag_ms: g.replication_lag_ms },
            )
            .is_some()
        {
            return Err(format!("group {} is reported twice", g.group));
        }
    }
    Ok(CellReport { site: r.site.clone(), applied_epoch: r.applied_epoch, nodes, groups })
}

pub fn desired_to_proto(d: &DesiredView) -> agent::DesiredState {
    agent::DesiredState {
        epoch: d.epoch,
        site: d.site.clone(),
        groups: d
            .groups
            .iter()
            .map(|g| agent::GroupSpec {
                name: g.name.clone(),
                epoch: g.epoch,
                autoscale_frozen: g.frozen,
                replication_lag_app: g.replication_lag_probe.as_ref().map(|p| p.0.clone()).unwrap_or_default(),
                replication_lag_path: g.replication_lag_probe.as_ref().map(|p| p.1.clone()).unwrap_or_default(),
                apps: g
                    .apps
                    .iter()
                    .map(|a| agent::AppSpec {
                        name: a.spec.name.clone(),
                        command: a.spec.command.clone(),
                        args: a.spec.args.clone(),
                        env: a.spec.env.clone().into_iter().collect(),
                        instances: a.instances,
                        resources: Some(resources_to_proto(a.spec.resources)),
                        health: Some(health_to_proto(&a.spec.health)),
                        readiness: a.spec.readiness.as_ref().map(health_to_proto),
                        depends_on: a.spec.depends_on.clone(),
                        constraints: a.spec.constraints.clone(),
                        upgrade: Some(agent::UpgradeStrategy {
                            minimum_health_capacity: a.spec.upgrade.minimum_health_capacity,
                            maximum_over_capacity: a.spec.upgrade.maximum_over_capacity,
                        }),
                        role: g.role.clone(),
                        autoscale_json: a
                            .spec
                            .autoscale
                            .as_ref()
                            .and_then(|s| serde_json::to_string(&s.0).ok())
                            .unwrap_or_default(),
                        metrics: Some(agent::AppMetrics {
                            path: a.spec.metrics.path.clone(),
                            concurrency: a.spec.metrics.concurrency.clone(),
                            requests_total: a.spec.metrics.requests_total.clone(),
                            request_ms_total: a.spec.metrics.request_ms_total.clone(),
                        }),
                    })
                    .collect(),
            })
            .collect(),
    }
}

pub fn routing_to_proto(v: &RoutingView, zone: &str) -> routing::RoutingTable {
    routing::RoutingTable {
        version: v.version,
        epoch: v.epoch,
        zone: zone.to_string(),
        entries: v
            .entries
            .iter()
            .map(|e| routing::RoutingEntry {
                name: e.name.clone(),
                group: e.group.clone(),
                ttl_s: e.ttl_s,
                targets: e
                    .targets
                    .iter()
                    .map(|t| routing::SiteTarget {
                        site: t.site.clone(),
                        addresses: t.addresses.iter().map(ToString::to_string).collect(),
                        weight: t.weight,
                        unhealthy: !t.healthy,
                    })
                    .collect(),
                txt: e.txt.clone(),
                cname: e.cname.clone().unwrap_or_default(),
                services: e
                    .services
                    .iter()
                    .map(|s| routing::ServiceRecord {
                        priority: s.priority,
                        weight: s.weight,
                        port: s.port,
                        target: s.target.clone(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// `budgets`: the current phase's expected length and the whole operation's, in ms.
pub fn operation_to_proto(o: &Operation, blocker: String, budgets: (u64, u64)) -> op::Operation {
    op::Operation {
        phase_started_at_ms: o.phase_started_at_ms,
        phase_budget_ms: budgets.0,
        predicted_total_ms: budgets.1,
        paused_by: o.paused.as_ref().map(|p| format!("{}: {}", p.actor, p.reason)).unwrap_or_default(),
        id: o.id.clone(),
        kind: o.kind.as_str().to_string(),
        group: o.group.clone(),
        from_site: o.from.clone(),
        to_site: o.to.clone(),
        phase: o.phase.as_str().to_string(),
        outcome: o.outcome.as_str().to_string(),
        actor: o.actor.clone(),
        reason: o.reason.clone(),
        created_at_ms: o.created_at_ms,
        updated_at_ms: o.updated_at_ms,
        finished_at_ms: o.finished_at_ms.unwrap_or(0),
        error: o.error.clone().unwrap_or_default(),
        steps: o
            .steps
            .iter()
            .map(|s| op::OperationStep {
                phase: s.phase.as_str().to_string(),
                started_at_ms: s.started_at_ms,
                finished_at_ms: s.finished_at_ms.unwrap_or(0),
                detail: s.detail.clone(),
            })
            .collect(),
        blocker,
        ramp: o.ramp.clone(),
        ramp_step: o.ramp_step,
        evacuation: o.evacuation.clone().unwrap_or_default(),
        ..Default::default()
    }
}

pub fn audit_to_proto(r: &AuditRecord) -> op::AuditRecord {
    op::AuditRecord {
        sequence: r.seq,
        time_ms: r.time_ms,
        actor: r.actor.clone(),
        action: r.action.clone(),
        subject: r.subject.clone(),
        reason: r.reason.clone(),
        detail_json: r.detail_json.clone(),
        raft_index: r.raft_index,
        prev_hash: r.prev_hash.clone(),
        hash: r.hash.clone(),
    }
}

fn health_to_proto(h: &switchyard_core::HealthSpec) -> common::HealthCheck {
    common::HealthCheck {
        http_path: h.http_path.clone(),
        interval_ms: h.interval_ms,
        timeout_ms: h.timeout_ms,
        grace_ms: h.grace_ms,
        max_failures: h.max_failures,
        protocol: h.protocol.clone(),
        command: h.command.clone(),
    }
}
