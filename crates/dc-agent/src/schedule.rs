//! One scheduling pass of the cell: from (nodes, tasks, desired apps, quotas) to the tasks to
//! start and stop. Pure: no I/O, no clock (the caller passes `now_ms`), no randomness, no
//! hash-map iteration, so the same inputs always give the same plan. It is the resource
//! manager's two levels, as in Mesos + Marathon:
//!
//! 1. **Service scheduler** (per app, [`switchyard_cell_core::deploy::plan`]): how many tasks of
//!    the app's current version to launch and which tasks to kill, under the app's upgrade
//!    strategy (`minimumHealthCapacity`, `maximumOverCapacity`). Scale, rolling upgrade and
//!    node drain are the same computation: a task on a draining node counts as an old version,
//!    so it is replaced make-before-break exactly as an upgrade replaces it.
//! 2. **Allocator** ([`switchyard_cell_core::drf::allocate`]): one Dominant Resource Fairness
//!    offer cycle over the nodes that accept tasks, across the roles (tenants) that have tasks
//!    to launch, honouring weights, quota guarantees and limits, static reservations and the
//!    roles' decline filters. Each role's launches are then placed by the constraint-aware
//!    placer ([`switchyard_cell_core::placement::Placer`]) inside the offers that role got, and
//!    nowhere else. A role that leaves an offered node unused declines it for [`DECLINE_MS`].
//!
//! Rules the cell relies on:
//! - only groups listed in the demand are touched; tasks of other groups keep running and keep
//!   their resources, ports and role usage;
//! - tasks of a demanded group on a lost node, or of an app no longer in its group, stop now;
//! - a task being stopped (drained from the load balancer first) still holds its resources and
//!   port until it is gone, so nothing is ever over-committed, even for a moment;
//! - whatever cannot be placed, and whatever a deployment waits for, is said in words.

use std::collections::{BTreeMap, BTreeSet};

use switchyard_cell_core::constraints::Constraint;
use switchyard_cell_core::deploy::{self, TaskState, UpgradeStrategy};
use switchyard_cell_core::drf::{self, DeclineFilter, Demand, Usage};
use switchyard_cell_core::model as cm;
use switchyard_cell_core::placement::{PlacementPlan, PlacementRequest, Placer, RunningTask, Unplaced};

use crate::model::Resources;

/// How long a role is not offered a node it left unused (Mesos's default refuse time).
pub const DECLINE_MS: u64 = 2_000;

/// A node as the scheduler sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    pub id: String,
    /// Not lost: its tasks count as running. A node whose link just dropped is still healthy
    /// until the node timeout passes (a restarting agent must not lose its tasks).
    pub healthy: bool,
    /// Connected right now: only reachable nodes get new tasks.
    pub reachable: bool,
    /// In maintenance: nothing new lands here and its tasks move off.
    pub draining: bool,
    pub capacity: Resources,
    pub port_min: u16,
    pub port_max: u16,
    /// What constraints match on (`hostname` defaults to the node id).
    pub attributes: BTreeMap<String, String>,
}

/// What the node last said about a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskPhase {
    /// Placed, not yet reported running.
    Staging,
    /// Running; `healthy` is `None` while no verdict is known yet (in its grace period, or
    /// failing checks below the restart threshold), `Some(false)` while failing or restarting.
    Running { healthy: Option<bool> },
    /// The cell cannot know: its node is unreachable, or reconnected and has not reported yet.
    /// Such a task neither counts nor is killed by a deployment step (it may well be serving).
    Unknown,
}

/// A task that exists in the cell's table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskView {
    pub task_id: String,
    pub group: String,
    pub app: String,
    pub role: String,
    pub node_id: String,
    pub port: u16,
    pub resources: Resources,
    /// Placement order: larger is newer.
    pub seq: u64,
    pub version: String,
    pub phase: TaskPhase,
    /// Passed its readiness check (or has none): only then does it count in a deployment.
    pub ready: bool,
    /// Already leaving (drained from the load balancer before it is stopped): it still holds
    /// its resources and port, but is neither counted nor stopped again.
    pub stopping: bool,
}

/// A group the desired state manages.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupDemand {
    pub group: String,
    pub apps: Vec<AppDemand>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct AppDemand {
    pub app: String,
    /// Allocation role (tenant) of the app's tasks.
    pub role: String,
    pub instances: u32,
    pub resources: Resources,
    pub version: String,
    pub upgrade: UpgradeStrategy,
    pub constraints: Vec<Constraint>,
    /// Apps of the same group that must be ready before this one launches anything, and that
    /// are stopped only once this one has no task left.
    pub depends_on: Vec<String>,
}

/// Tenants and their quotas, and static reservations of node resources for a role.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Quotas {
    /// Roles with a weight, guarantee or limit; any other role gets weight 1 and no quota.
    pub roles: Vec<cm::Role>,
    /// (node, role) → resources of that node only the role may use.
    pub reservations: BTreeMap<(String, String), Resources>,
}

/// A task to create on `node_id`, listening on `port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedStart {
    pub group: String,
    pub app: String,
    pub role: String,
    pub node_id: String,
    pub port: u16,
    pub resources: Resources,
    pub version: String,
}

/// Why an app cannot get the tasks its deployment asks for right now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocker {
    pub group: String,
    pub app: String,
    pub message: String,
}

/// What one role got in this pass, for operators (`fedctl cell roles`).
#[derive(Clone, Debug, PartialEq)]
pub struct RoleUse {
    pub held: Resources,
    pub dominant_share: f64,
    pub at_limit: bool,
    /// Tasks waiting to be launched for this role.
    pub pending: u32,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    pub start: Vec<PlannedStart>,
    /// Task ids, sorted.
    pub stop: Vec<String>,
    pub blockers: Vec<Blocker>,
    /// Apps whose deployment is not done, with what each waits for.
    pub waiting: BTreeMap<(String, String), String>,
    /// Decline filters made in this pass (roles that left an offered node unused).
    pub declined: Vec<DeclineFilter>,
    /// Every role that holds or wants resources.
    pub roles: BTreeMap<String, RoleUse>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.start.is_empty() && self.stop.is_empty()
    }
}

pub struct Input<'a> {
    pub nodes: &'a [NodeView],
    pub tasks: &'a [TaskView],
    pub demand: &'a [GroupDemand],
    pub quotas: &'a Quotas,
    /// Decline filters still in force from earlier passes.
    pub filters: &'a [DeclineFilter],
    pub now_ms: u64,
}

fn cm_res(r: Resources) -> cm::Resources {
    cm::Resources::new(r.cpu_millis, r.mem_mib, r.disk_mib)
}

fn res(r: cm::Resources) -> Resources {
    Resources::new(r.cpu_millis, r.mem_mib, r.disk_mib)
}

/// Launches one app's deployment step asks for.
struct Pending<'a> {
    group: &'a str,
    app: &'a AppDemand,
    count: u32,
}

/// The placer's name for an app: unique across groups.
fn app_key(group: &str, app: &str) -> String {
    format!("{group}/{app}")
}

/// Plans the next step. See the module documentation for the rules.
pub fn plan(input: &Input<'_>) -> Plan {
    let demanded: BTreeMap<&str, BTreeMap<&str, &AppDemand>> =
        input.demand.iter().map(|g| (g.group.as_str(), g.apps.iter().map(|a| (a.app.as_str(), a)).collect())).collect();
    let healthy: BTreeMap<&str, &NodeView> =
        input.nodes.iter().filter(|n| n.healthy).map(|n| (n.id.as_str(), n)).collect();

    // Tasks of demanded apps on nodes that are not lost, per app; the rest of the demanded
    // groups' tasks stop now.
    let mut stop: BTreeSet<&str> = BTreeSet::new();
    let mut per_app: BTreeMap<(&str, &str), Vec<&TaskView>> = BTreeMap::new();
    for t in input.tasks {
        let Some(apps) = demanded.get(t.group.as_str()) else { continue };
        if !healthy.contains_key(t.node_id.as_str()) || !apps.contains_key(t.app.as_str()) {
            if !t.stopping {
                stop.insert(&t.task_id);
            }
            continue;
        }
        per_app.entry((&t.group, &t.app)).or_default().push(t);
    }

    // 1. The service scheduler: one deployment step per app, in dependency order.
    let mut plan = Plan::default();
    let mut pending: Vec<Pending<'_>> = Vec::new();
    let serving = |t: &&TaskView| !t.stopping && t.ready && t.phase == TaskPhase::Running { healthy: Some(true) };
    for g in input.demand {
        for a in &g.apps {
            let tasks = per_app.get(&(g.group.as_str(), a.app.as_str())).map_or(&[][..], Vec::as_slice);
            let views: Vec<deploy::TaskView> = tasks
                .iter()
                .map(|t| {
                    let draining = healthy.get(t.node_id.as_str()).is_some_and(|n| n.draining);
                    let (state, healthy) = match (t.stopping, t.phase) {
                        (true, _) => (TaskState::Killing, None),
                        (false, TaskPhase::Staging) => (TaskState::Staging, None),
                        (false, TaskPhase::Running { healthy }) => (TaskState::Running, healthy),
                        (false, TaskPhase::Unknown) => (TaskState::Running, None),
                    };
                    deploy::TaskView {
                        id: t.task_id.clone(),
                        // A task on a node in maintenance is replaced like an old version.
                        version: if draining { format!("{}~draining", t.version) } else { t.version.clone() },
                        state,
                        healthy,
                        ready: healthy == Some(true) && t.ready,
                        started_at_ms: t.seq,
                    }
                })
                .collect();
            let spec = deploy::AppSpec {
                upgrade: a.upgrade,
                ..deploy::AppSpec::new(app_key(&g.group, &a.app), a.version.clone(), a.instances)
            };
            let mut step = deploy::plan(&spec, &views);
            // Missing information is not a verdict: a task whose state is unknown is never
            // killed by a step (the next pass decides once its node reports).
            step.kill.retain(|id| tasks.iter().any(|t| &t.task_id == id && t.phase != TaskPhase::Unknown));
            // Start order: nothing launches before every dependency is fully ready.
            let unready: Vec<String> = a
                .depends_on
                .iter()
                .filter_map(|d| {
                    let want = g.apps.iter().find(|x| &x.app == d)?.instances as usize;
                    let ready = tasks_of(&per_app, &g.group, d).iter().filter(|t| serving(t)).count();
                    (ready < want).then(|| format!("{}/{d} ({ready}/{want} ready)", g.group))
                })
                .collect();
            if step.launch > 0 && !unready.is_empty() {
                step.launch = 0;
                step.done = false;
                step.waiting_for = Some(format!("waits for its dependencies to be ready: {}", unready.join(", ")));
            }
            // Stop order: an app going away stops only once no app that depends on it runs.
            if a.instances == 0 && !step.kill.is_empty() {
                let running_dependents: Vec<String> = g
                    .apps
                    .iter()
                    .filter(|x| x.depends_on.contains(&a.app) && !tasks_of(&per_app, &g.group, &x.app).is_empty())
                    .map(|x| format!("{}/{}", g.group, x.app))
                    .collect();
                if !running_dependents.is_empty() {
                    step.kill.clear();
                    step.done = false;
                    step.waiting_for =
                        Some(format!("stops after the apps that depend on it: {}", running_dependents.join(", ")));
                }
            }
            for id in &step.kill {
                if let Some(t) = tasks.iter().find(|t| &t.task_id == id) {
                    stop.insert(&t.task_id);
                }
            }
            if step.launch > 0 {
                pending.push(Pending { group: &g.group, app: a, count: step.launch });
            }
            if !step.done {
                plan.waiting.insert((g.group.clone(), a.app.clone()), step.waiting_for.unwrap_or_default());
            }
        }
    }
    plan.stop = stop.iter().map(|s| s.to_string()).collect();

    // 2. The allocator and the placer. Every task on a node that is not lost holds its
    // resources and port, including those being stopped.
    let holding: Vec<&TaskView> = input.tasks.iter().filter(|t| healthy.contains_key(t.node_id.as_str())).collect();
    let nodes: Vec<cm::Node> = input
        .nodes
        .iter()
        .filter(|n| n.healthy)
        .map(|n| cm::Node {
            id: n.id.clone(),
            attributes: n.attributes.clone(),
            total: cm_res(n.capacity),
            ports: vec![cm::PortRange { min: n.port_min, max: n.port_max }],
            reserved: if input.quotas.reservations.is_empty() {
                BTreeMap::new()
            } else {
                input
                    .quotas
                    .reservations
                    .iter()
                    .filter(|((node, _), _)| *node == n.id)
                    .map(|((_, role), r)| (role.clone(), cm_res(*r)))
                    .collect()
            },
            state: if n.reachable && !n.draining { cm::NodeState::Up } else { cm::NodeState::Draining },
        })
        .collect();
    let mut by_ref: BTreeMap<(&str, &str), cm::Resources> = BTreeMap::new();
    for t in &holding {
        let held = by_ref.entry((t.node_id.as_str(), t.role.as_str())).or_default();
        *held = held.plus(cm_res(t.resources));
    }
    let usage: Usage = by_ref.into_iter().map(|((n, r), u)| ((n.to_string(), r.to_string()), u)).collect();
    let mut roles: BTreeMap<String, cm::Role> =
        input.quotas.roles.iter().map(|r| (r.name.clone(), r.clone())).collect();
    for role in usage.keys().map(|(_, r)| r).chain(pending.iter().map(|p| &p.app.role)) {
        roles.entry(role.clone()).or_insert_with(|| cm::Role::new(role.clone()));
    }
    // Reservations for roles nobody configured are offered to nobody; keep them out.
    let mut wants: BTreeMap<String, Demand> = BTreeMap::new();
    let mut pending_per_role: BTreeMap<&str, u32> = BTreeMap::new();
    for p in &pending {
        let task = cm_res(p.app.resources);
        let d = wants.entry(p.app.role.clone()).or_insert(Demand { min_offer: task });
        d.min_offer = cm::Resources::new(
            d.min_offer.cpu_millis.min(task.cpu_millis),
            d.min_offer.mem_mib.min(task.mem_mib),
            d.min_offer.disk_mib.min(task.disk_mib),
        );
        *pending_per_role.entry(&p.app.role).or_default() += p.count;
    }
    let role_list: Vec<cm::Role> = roles.values().cloned().collect();
    // Roles are offered in DRF order (lowest weighted dominant share first), one offer cycle
    // each over the whole cell as it stands after the roles before it placed theirs, so every
    // role can spread over every node while fairness decides who goes first and how much.
    let total = nodes.iter().fold(cm::Resources::ZERO, |acc, n| acc.plus(n.total));
    let mut held_per_role: BTreeMap<&str, cm::Resources> = BTreeMap::new();
    for ((_, role), u) in &usage {
        let h = held_per_role.entry(role.as_str()).or_default();
        *h = h.plus(*u);
    }
    let held_by = |role: &str| held_per_role.get(role).copied().unwrap_or_default();
    let weighted = |role: &str| {
        let weight = roles.get(role).map_or(1.0, |r| r.weight);
        held_by(role).dominant_share(total) / if weight > 0.0 { weight } else { 1.0 }
    };
    let mut order: Vec<&String> = wants.keys().collect();
    order.sort_by(|a, b| weighted(a).total_cmp(&weighted(b)).then(a.cmp(b)));
    let mut usage_now = usage.clone();
    let mut reports: BTreeMap<String, drf::RoleReport> = BTreeMap::new();
    // Nothing to launch (a converged cell, most passes): no offers, no placement.
    if !wants.is_empty() {
        let mut running: Vec<RunningTask> = holding
            .iter()
            .map(|t| RunningTask {
                id: t.task_id.clone(),
                app: app_key(&t.group, &t.app),
                role: t.role.clone(),
                node: t.node_id.clone(),
                resources: cm_res(t.resources),
                ports: vec![t.port],
            })
            .collect();
        // What every node has in use (tasks holding resources, then the launches of this pass).
        let mut used_on: BTreeMap<String, cm::Resources> = BTreeMap::new();
        for t in &running {
            let u = used_on.entry(t.node.clone()).or_default();
            *u = u.plus(t.resources);
        }
        let fair = fair_counts(&nodes, &used_on, &running, &roles, &pending);
        let mut shared: Option<Placer<'_>> = None;
        for role in order {
            let one = BTreeMap::from([(role.clone(), wants[role])]);
            let allocation = match drf::allocate(&nodes, &usage_now, &role_list, &one, input.filters, input.now_ms) {
                Ok(a) => a,
                Err(e) => {
                    for p in pending.iter().filter(|p| &p.app.role == role) {
                        plan.blockers.push(Blocker {
                            group: p.group.to_string(),
                            app: p.app.app.clone(),
                            message: format!("the allocator refused this cell's quotas: {e}"),
                        });
                    }
                    continue;
                }
            };
            let offers: BTreeMap<&str, cm::Resources> =
                allocation.offers.iter().filter(|o| &o.role == role).map(|o| (o.node.as_str(), o.resources)).collect();
            let report = &allocation.roles[role];
            reports.insert(role.clone(), report.clone());
            // The framework takes no more of its offers than the role's fair number of tasks,
            // app by app; what an app cannot place goes back to the role's budget for the next.
            let mut budget = fair.get(role.as_str()).copied().unwrap_or(0);
            let declined_here =
                !offers.is_empty() && input.filters.iter().any(|f| &f.role == role && f.until_ms > input.now_ms);
            // A role that declined nodes recently sees exactly its offers: an offered node has
            // the offer free (its total is what is in use plus the offer); every other node
            // takes nothing new but still counts for constraints. Otherwise the role was offered
            // the whole cell (less other roles' reservations, within its limit): the shared
            // placer's own view is the same, and it keeps its books between roles.
            let view: Vec<cm::Node> = if declined_here {
                shared = None;
                nodes
                    .iter()
                    .map(|n| match offers.get(n.id.as_str()) {
                        Some(offer) => {
                            let used = used_on.get(&n.id).copied().unwrap_or_default();
                            cm::Node { total: used.plus(*offer), reserved: BTreeMap::new(), ..n.clone() }
                        }
                        None => cm::Node { state: cm::NodeState::Draining, ..n.clone() },
                    })
                    .collect()
            } else {
                Vec::new()
            };
            let mut restricted = declined_here.then(|| Placer::new(&view, &running));
            let mut requests: Vec<(&Pending<'_>, PlacementRequest)> = Vec::new();
            let mut placed = PlacementPlan::default();
            for p in pending.iter().filter(|p| &p.app.role == role) {
                let request = requests_for(p, role, p.count.min(budget));
                if request.count > 0 {
                    let one = if offers.is_empty() {
                        PlacementPlan {
                            placed: Vec::new(),
                            unplaced: vec![Unplaced {
                                app: request.app.clone(),
                                count: request.count,
                                reason: String::new(),
                            }],
                        }
                    } else if let Some(r) = restricted.as_mut() {
                        r.plan(std::slice::from_ref(&request))
                    } else {
                        shared.get_or_insert_with(|| Placer::new(&nodes, &running)).plan(std::slice::from_ref(&request))
                    };
                    budget -= u32::try_from(one.placed.len()).unwrap_or(u32::MAX).min(budget);
                    placed.placed.extend(one.placed);
                    placed.unplaced.extend(one.unplaced);
                }
                requests.push((p, request));
            }
            let mut used_nodes: BTreeSet<String> = BTreeSet::new();
            for p in &placed.placed {
                let Some((pend, _)) = requests.iter().find(|(_, r)| r.app == p.app) else { continue };
                let port = p.ports.first().copied().unwrap_or(0);
                used_nodes.insert(p.node.clone());
                let held = usage_now.entry((p.node.clone(), role.clone())).or_default();
                *held = held.plus(cm_res(pend.app.resources));
                let used = used_on.entry(p.node.clone()).or_default();
                *used = used.plus(cm_res(pend.app.resources));
                running.push(RunningTask {
                    id: format!("planned-{}", plan.start.len()),
                    app: p.app.clone(),
                    role: role.clone(),
                    node: p.node.clone(),
                    resources: cm_res(pend.app.resources),
                    ports: vec![port],
                });
                plan.start.push(PlannedStart {
                    group: pend.group.to_string(),
                    app: pend.app.app.clone(),
                    role: role.clone(),
                    node_id: p.node.clone(),
                    port,
                    resources: pend.app.resources,
                    version: pend.app.version.clone(),
                });
            }
            for node in offers.keys().filter(|n| !used_nodes.contains(**n)) {
                plan.declined.push(DeclineFilter {
                    role: role.clone(),
                    node: node.to_string(),
                    until_ms: input.now_ms + DECLINE_MS,
                });
            }
            // What the fair share held back for a later pass is pending too.
            let mut unplaced: BTreeMap<&str, u32> = BTreeMap::new();
            for (p, r) in &requests {
                let short = p.count - r.count;
                if short > 0 {
                    *unplaced.entry(r.app.as_str()).or_default() += short;
                }
            }
            for u in &placed.unplaced {
                *unplaced.entry(u.app.as_str()).or_default() += u.count;
            }
            for (app, count) in unplaced.into_iter().filter(|(_, c)| *c > 0) {
                let Some((pend, _)) = requests.iter().find(|(_, r)| r.app == app) else { continue };

                let message = if report.at_limit {
                    let limit = roles.get(role).and_then(|r| r.limit).map_or_else(String::new, |l| l.to_string());
                    format!(
                        "{} instance(s) wait: role {role} is at its quota limit ({limit}; it holds {})",
                        count, report.held
                    )
                } else {
                    // Would the whole cell have room? If not, say what is missing; if so, only
                    // fair sharing held these back.
                    dry_run_reason(&nodes, &running, &requests_for(pend, role, count)).unwrap_or_else(|| {
                        format!(
                            "{} instance(s) of {} wait for an offer: the free resources went to roles with a \
                             lower dominant share, or role {role} declined them moments ago",
                            count, app
                        )
                    })
                };
                plan.blockers.push(Blocker { group: pend.group.to_string(), app: pend.app.app.clone(), message });
            }
        }
    }
    for role in roles.values() {
        let held = held_by(&role.name);
        let report = reports.get(&role.name);
        plan.roles.insert(
            role.name.clone(),
            RoleUse {
                held: res(held),
                dominant_share: report.map_or_else(|| held.dominant_share(total), |r| r.dominant_share),
                at_limit: report.map_or_else(
                    || role.limit.is_some_and(|l| l.checked_minus(held).is_none_or(|room| room.is_zero())),
                    |r| r.at_limit,
                ),
                pending: pending_per_role.get(role.name.as_str()).copied().unwrap_or(0),
            },
        );
    }
    plan
}

/// How many pending tasks each role may launch in this pass: weighted DRF by progressive
/// filling, starting from what every role already holds. One task at a time goes to the role
/// with the lowest weighted dominant share whose next task still fits in what the cell has free
/// (summed over the nodes that take tasks) and under its quota limit.
fn fair_counts<'a>(
    nodes: &[cm::Node],
    used_on: &BTreeMap<String, cm::Resources>,
    running: &[RunningTask],
    roles: &BTreeMap<String, cm::Role>,
    pending: &'a [Pending<'a>],
) -> BTreeMap<&'a str, u32> {
    let total = nodes.iter().fold(cm::Resources::ZERO, |acc, n| acc.plus(n.total));
    let mut free = cm::Resources::ZERO;
    for n in nodes.iter().filter(|n| n.accepts_new_tasks()) {
        free = free.plus(n.total.minus(used_on.get(&n.id).copied().unwrap_or_default()));
    }
    struct Want {
        held: cm::Resources,
        weight: f64,
        limit: Option<cm::Resources>,
        tasks: Vec<cm::Resources>,
    }
    let mut wants: BTreeMap<&str, Want> = BTreeMap::new();
    for p in pending {
        let role = roles.get(&p.app.role);
        let w = wants.entry(p.app.role.as_str()).or_insert_with(|| Want {
            held: running
                .iter()
                .filter(|t| t.role == p.app.role)
                .fold(cm::Resources::ZERO, |acc, t| acc.plus(t.resources)),
            weight: role.map_or(1.0, |r| r.weight),
            limit: role.and_then(|r| r.limit),
            tasks: Vec::new(),
        });
        w.tasks.extend(std::iter::repeat_n(cm_res(p.app.resources), p.count as usize));
    }
    let mut granted: BTreeMap<&str, u32> = wants.keys().map(|r| (*r, 0)).collect();
    let share = |w: &Want| if w.weight > 0.0 { w.held.dominant_share(total) / w.weight } else { f64::INFINITY };
    loop {
        let next = wants
            .iter()
            .filter(|(r, w)| (granted[*r] as usize) < w.tasks.len())
            .min_by(|a, b| share(a.1).total_cmp(&share(b.1)).then(a.0.cmp(b.0)))
            .map(|(r, _)| *r);
        let Some(role) = next else { break };
        let w = wants.get_mut(role).expect("chosen from wants");
        let task = w.tasks[granted[role] as usize];
        let within_limit = w.limit.is_none_or(|l| w.held.plus(task).fits_in(l));
        match free.checked_minus(task) {
            Some(rest) if within_limit => {
                free = rest;
                w.held = w.held.plus(task);
                *granted.get_mut(role).expect("granted has every role") += 1;
            }
            // Does not fit now, and what is free only shrinks: the role is done.
            _ => w.tasks.truncate(granted[role] as usize),
        }
    }
    granted
}

/// The tasks of one app, from the per-app index.
fn tasks_of<'a, 'k>(
    per_app: &'a BTreeMap<(&'k str, &'k str), Vec<&'a TaskView>>,
    group: &str,
    app: &str,
) -> &'a [&'a TaskView] {
    per_app.iter().find(|((g, a), _)| *g == group && *a == app).map_or(&[][..], |(_, v)| v.as_slice())
}

fn requests_for(p: &Pending<'_>, role: &str, count: u32) -> PlacementRequest {
    PlacementRequest {
        app: app_key(p.group, &p.app.app),
        role: role.to_string(),
        resources: cm_res(p.app.resources),
        ports: 1,
        constraints: p.app.constraints.clone(),
        count,
    }
}

/// Why `request` could not be placed on the whole cell even without fair sharing, if it could
/// not; `None` when the cell has room for it (so only the allocator held it back).
fn dry_run_reason(nodes: &[cm::Node], running: &[RunningTask], request: &PlacementRequest) -> Option<String> {
    let plan = Placer::new(nodes, running).plan(std::slice::from_ref(request));
    plan.unplaced.into_iter().next().map(|u| u.reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, cpu: u64, mem: u64, ports: (u16, u16)) -> NodeView {
        NodeView {
            id: id.into(),
            healthy: true,
            reachable: true,
            draining: false,
            capacity: Resources::new(cpu, mem, 10_000),
            port_min: ports.0,
            port_max: ports.1,
            attributes: BTreeMap::new(),
        }
    }

    fn task(id: &str, group: &str, app: &str, node: &str, port: u16, res: Resources, seq: u64) -> TaskView {
        TaskView {
            task_id: id.into(),
            group: group.into(),
            app: app.into(),
            role: group.into(),
            node_id: node.into(),
            port,
            resources: res,
            seq,
            version: "v1".into(),
            phase: TaskPhase::Running { healthy: Some(true) },
            ready: true,
            stopping: false,
        }
    }

    fn app(group: &str, app: &str, instances: u32, res: Resources) -> AppDemand {
        AppDemand {
            app: app.into(),
            role: group.into(),
            instances,
            resources: res,
            version: "v1".into(),
            upgrade: UpgradeStrategy::default(),
            constraints: vec![],
            depends_on: vec![],
        }
    }

    fn demand(group: &str, name: &str, instances: u32, res: Resources) -> GroupDemand {
        GroupDemand { group: group.into(), apps: vec![app(group, name, instances, res)] }
    }

    fn run(nodes: &[NodeView], tasks: &[TaskView], demand: &[GroupDemand]) -> Plan {
        run_with(nodes, tasks, demand, &Quotas::default())
    }

    fn run_with(nodes: &[NodeView], tasks: &[TaskView], demand: &[GroupDemand], quotas: &Quotas) -> Plan {
        plan(&Input { nodes, tasks, demand, quotas, filters: &[], now_ms: 0 })
    }

    const WEB: Resources = Resources { cpu_millis: 500, mem_mib: 128, disk_mib: 0 };

    /// Applies a plan the way the cell does once every stop has finished, naming new tasks
    /// `t<seq>` and marking them running and healthy.
    fn apply(tasks: &[TaskView], plan: &Plan, next_seq: &mut u64) -> Vec<TaskView> {
        let mut out: Vec<TaskView> = tasks.iter().filter(|t| !plan.stop.contains(&t.task_id)).cloned().collect();
        for s in &plan.start {
            *next_seq += 1;
            let mut t = task(&format!("t{next_seq}"), &s.group, &s.app, &s.node_id, s.port, s.resources, *next_seq);
            t.version.clone_from(&s.version);
            t.role.clone_from(&s.role);
            out.push(t);
        }
        out
    }

    fn used_on(tasks: &[TaskView], node: &str) -> Resources {
        tasks.iter().filter(|t| t.node_id == node).fold(Resources::ZERO, |acc, t| acc.plus(&t.resources))
    }

    fn blocker(plan: &Plan) -> &str {
        assert_eq!(plan.blockers.len(), 1, "{plan:?}");
        &plan.blockers[0].message
    }

    #[test]
    fn scale_up_spreads_over_nodes_with_distinct_ports() {
        let nodes = [node("n1", 2000, 1024, (9000, 9009)), node("n2", 2000, 1024, (9000, 9009))];
        let plan = run(&nodes, &[], &[demand("crm-web", "web", 3, WEB)]);
        assert!(plan.stop.is_empty() && plan.blockers.is_empty(), "{plan:?}");
        let placed: Vec<(&str, u16)> = plan.start.iter().map(|s| (s.node_id.as_str(), s.port)).collect();
        assert_eq!(placed, vec![("n1", 9000), ("n2", 9000), ("n1", 9001)]);
        assert!(plan.start.iter().all(|s| s.version == "v1" && s.role == "crm-web"));
        assert!(plan.waiting.contains_key(&("crm-web".to_string(), "web".to_string())));
    }

    #[test]
    fn converged_state_plans_nothing() {
        let nodes = [node("n1", 2000, 1024, (9000, 9009)), node("n2", 2000, 1024, (9000, 9009))];
        let d = [demand("g", "web", 3, WEB)];
        let mut seq = 0;
        let tasks = apply(&[], &run(&nodes, &[], &d), &mut seq);
        let again = run(&nodes, &tasks, &d);
        assert!(again.is_empty(), "{again:?}");
        assert!(again.blockers.is_empty() && again.waiting.is_empty(), "{again:?}");
        assert!(again.declined.is_empty(), "nothing was offered: nothing was pending");
    }

    #[test]
    fn scale_down_stops_newest_first() {
        let nodes = [node("n1", 4000, 4096, (9000, 9009))];
        let tasks = [
            task("a", "g", "web", "n1", 9000, WEB, 7),
            task("b", "g", "web", "n1", 9001, WEB, 3),
            task("c", "g", "web", "n1", 9002, WEB, 9),
        ];
        let plan = run(&nodes, &tasks, &[demand("g", "web", 1, WEB)]);
        assert_eq!(plan.stop, ["a", "c"]);
        assert!(plan.start.is_empty());
        assert_eq!(run(&nodes, &tasks, &[demand("g", "web", 0, WEB)]).stop.len(), 3);
    }

    #[test]
    fn scale_down_stops_unhealthy_and_staging_tasks_before_serving_ones() {
        let nodes = [node("n1", 4000, 4096, (9000, 9009))];
        let mut sick = task("sick", "g", "web", "n1", 9000, WEB, 1);
        sick.phase = TaskPhase::Running { healthy: Some(false) };
        let mut staging = task("staging", "g", "web", "n1", 9001, WEB, 2);
        staging.phase = TaskPhase::Staging;
        let tasks =
            [sick, staging, task("ok-old", "g", "web", "n1", 9002, WEB, 3), task("ok", "g", "web", "n1", 9003, WEB, 4)];
        let plan = run(&nodes, &tasks, &[demand("g", "web", 2, WEB)]);
        assert_eq!(plan.stop, ["sick", "staging"]);
    }

    #[test]
    fn no_capacity_gives_a_blocker_and_never_overcommits() {
        // Room for exactly two instances on n1 and one on n2.
        let nodes = [node("n1", 1000, 1024, (9000, 9009)), node("n2", 600, 1024, (9000, 9009))];
        let plan = run(&nodes, &[], &[demand("crm-web", "web", 5, WEB)]);
        assert_eq!(plan.start.len(), 3);
        let mut seq = 0;
        let tasks = apply(&[], &plan, &mut seq);
        for n in &nodes {
            assert!(used_on(&tasks, &n.id).fits_in(&n.capacity), "{} overcommitted", n.id);
        }
        // The next pass says what is missing.
        let again = run(&nodes, &tasks, &[demand("crm-web", "web", 5, WEB)]);
        assert!(again.start.is_empty());
        let b = blocker(&again);
        assert!(b.starts_with("2 of 2 instances of crm-web/web unplaced"), "{b}");
        assert!(b.contains("none has cpu_millis=500"), "{b}");
    }

    #[test]
    fn memory_alone_can_block() {
        let plan = run(&[node("n1", 8000, 100, (9000, 9009))], &[], &[demand("g", "web", 1, WEB)]);
        assert!(plan.start.is_empty());
        assert!(blocker(&plan).contains("mem_mib=128"), "{}", blocker(&plan));
    }

    #[test]
    fn no_node_up_is_named_as_such() {
        let mut n = node("n1", 8000, 8000, (9000, 9009));
        n.healthy = false;
        let plan = run(&[n], &[], &[demand("g", "web", 2, WEB)]);
        assert!(plan.start.is_empty());
        assert!(blocker(&plan).contains("none of 0 nodes is up"), "{}", blocker(&plan));
    }

    #[test]
    fn lost_node_tasks_are_replaced_on_healthy_nodes() {
        let mut lost = node("n1", 4000, 4096, (9000, 9009));
        lost.healthy = false;
        let nodes = [lost, node("n2", 4000, 4096, (9100, 9109))];
        let tasks = [
            task("a", "g", "web", "n1", 9000, WEB, 1),
            task("b", "g", "web", "n2", 9100, WEB, 2),
            task("gone", "g", "web", "n9", 9000, WEB, 3),
        ];
        let plan = run(&nodes, &tasks, &[demand("g", "web", 3, WEB)]);
        assert_eq!(plan.stop, ["a", "gone"]);
        let placed: Vec<(&str, u16)> = plan.start.iter().map(|s| (s.node_id.as_str(), s.port)).collect();
        assert_eq!(placed, vec![("n2", 9101), ("n2", 9102)]);
    }

    #[test]
    fn groups_outside_the_demand_are_left_alone_but_hold_their_room() {
        let mut lost = node("n1", 1000, 1024, (9000, 9009));
        lost.healthy = false;
        let nodes = [lost, node("n2", 1000, 1024, (9000, 9001))];
        let tasks = [
            // Unmanaged group on a lost node: not stopped, not replaced.
            task("old-1", "legacy", "api", "n1", 9000, WEB, 1),
            // Unmanaged group on a healthy node: keeps cpu and its port.
            task("old-2", "legacy", "api", "n2", 9000, WEB, 2),
        ];
        let plan = run(&nodes, &tasks, &[demand("g", "web", 2, WEB)]);
        assert!(plan.stop.is_empty());
        assert_eq!(plan.start.len(), 1);
        assert_eq!((plan.start[0].node_id.as_str(), plan.start[0].port), ("n2", 9001));
        assert_eq!(plan.blockers.len(), 1);
        assert_eq!(plan.roles["legacy"].held, WEB, "the unmanaged group's role still holds what it runs");
    }

    #[test]
    fn apps_removed_from_a_group_are_stopped() {
        let nodes = [node("n1", 4000, 4096, (9000, 9009))];
        let tasks = [task("a", "g", "web", "n1", 9000, WEB, 1), task("b", "g", "worker", "n1", 9001, WEB, 2)];
        let plan = run(&nodes, &tasks, &[demand("g", "web", 1, WEB)]);
        assert_eq!(plan.stop, ["b"]);
        assert!(plan.start.is_empty());
    }

    #[test]
    fn port_exhaustion_blocks_with_a_port_message() {
        let plan = run(&[node("n1", 8000, 8000, (9000, 9001))], &[], &[demand("g", "web", 3, WEB)]);
        let ports: Vec<u16> = plan.start.iter().map(|s| s.port).collect();
        assert_eq!(ports, vec![9000, 9001]);
        assert!(blocker(&plan).contains("port"), "{}", blocker(&plan));
    }

    #[test]
    fn a_stopping_task_holds_its_port_until_it_is_gone() {
        let nodes = [node("n1", 8000, 8000, (9000, 9000))];
        let tasks = [task("old", "g", "worker", "n1", 9000, WEB, 1)];
        // "worker" leaves the group and "web" arrives: the port is handed over once it is free.
        let plan = run(&nodes, &tasks, &[demand("g", "web", 1, WEB)]);
        assert_eq!(plan.stop, ["old"]);
        assert!(plan.start.is_empty(), "the leaving task still listens on 9000: {plan:?}");
        let plan = run(&nodes, &[], &[demand("g", "web", 1, WEB)]);
        assert_eq!(plan.start[0].port, 9000);
    }

    #[test]
    fn deterministic_regardless_of_input_order() {
        let nodes = [node("n1", 3000, 4096, (9000, 9009)), node("n2", 3000, 4096, (9000, 9009))];
        let tasks = [
            task("a", "g", "web", "n1", 9000, WEB, 1),
            task("b", "h", "api", "n2", 9000, WEB, 2),
            task("c", "g", "web", "n2", 9001, WEB, 3),
        ];
        let d = [demand("h", "api", 3, WEB), demand("g", "web", 4, WEB)];
        let first = run(&nodes, &tasks, &d);
        let mut rt = tasks.clone();
        rt.reverse();
        assert_eq!(run(&nodes, &rt, &d), first);
        assert_eq!(run(&nodes, &tasks, &d), first);
    }

    #[test]
    fn repeated_planning_converges_without_overcommit() {
        let nodes = [node("n1", 2000, 2048, (9000, 9003)), node("n2", 1500, 2048, (9000, 9003))];
        let mut seq = 0;
        let mut tasks = Vec::new();
        for wanted in [4u32, 7, 2, 0, 5] {
            let d = [demand("g", "web", wanted, WEB), demand("h", "api", 1, Resources::new(250, 64, 0))];
            // A few passes: fair sharing may serve one role per node and pass.
            for _ in 0..4 {
                tasks = apply(&tasks, &run(&nodes, &tasks, &d), &mut seq);
            }
            let last = run(&nodes, &tasks, &d);
            assert!(last.is_empty(), "not converged at {wanted}: {last:?}");
            for n in &nodes {
                assert!(used_on(&tasks, &n.id).fits_in(&n.capacity));
                let mut ports: Vec<u16> = tasks.iter().filter(|t| t.node_id == n.id).map(|t| t.port).collect();
                let len = ports.len();
                ports.sort_unstable();
                ports.dedup();
                assert_eq!(ports.len(), len, "port assigned twice on {}", n.id);
            }
            let web = tasks.iter().filter(|t| t.app == "web").count() as u32;
            // 3500 cpu minus the api task leaves room for 6 web instances.
            assert_eq!(web, wanted.min(6));
        }
    }

    fn draining(mut n: NodeView) -> NodeView {
        n.draining = true;
        n
    }

    #[test]
    fn draining_node_gets_nothing_new_and_its_tasks_move_make_before_break() {
        let r = Resources::new(100, 64, 0);
        let nodes = [draining(node("a", 1000, 1000, (100, 110))), node("b", 1000, 1000, (100, 110))];
        let on_a = task("g.web.1", "g", "web", "a", 100, r, 1);
        let d = [demand("g", "web", 1, r)];

        // The replacement goes to b; the task on a keeps serving until then.
        let plan = run(&nodes, std::slice::from_ref(&on_a), &d);
        assert_eq!(plan.start.len(), 1);
        assert_eq!(plan.start[0].node_id, "b");
        assert!(plan.stop.is_empty(), "{plan:?}");

        // Replacement placed but not healthy yet: still nothing stopped, nothing more started.
        let mut on_b = task("g.web.2", "g", "web", "b", 100, r, 2);
        on_b.phase = TaskPhase::Running { healthy: None };
        let plan = run(&nodes, &[on_a.clone(), on_b.clone()], &d);
        assert!(plan.is_empty(), "{plan:?}");

        // Replacement healthy: the task on the draining node is stopped.
        on_b.phase = TaskPhase::Running { healthy: Some(true) };
        let plan = run(&nodes, &[on_a, on_b], &d);
        assert_eq!(plan.stop, ["g.web.1"]);
        assert!(plan.start.is_empty());
    }

    #[test]
    fn drain_without_room_elsewhere_keeps_the_task_and_says_why() {
        let r = Resources::new(800, 64, 0);
        let nodes = [draining(node("a", 1000, 1000, (100, 110))), node("b", 500, 1000, (100, 110))];
        let plan = run(&nodes, &[task("g.web.1", "g", "web", "a", 100, r, 1)], &[demand("g", "web", 1, r)]);
        assert!(plan.stop.is_empty(), "the only instance keeps serving: {plan:?}");
        assert!(blocker(&plan).contains("none has cpu_millis=800"), "{}", blocker(&plan));
    }

    #[test]
    fn unreachable_node_keeps_its_tasks_but_gets_nothing_new() {
        let r = Resources::new(100, 64, 0);
        let mut a = node("a", 1000, 1000, (100, 110));
        a.reachable = false;
        let nodes = [a, node("b", 1000, 1000, (100, 110))];
        let mut on_a = task("g.web.1", "g", "web", "a", 100, r, 1);
        on_a.phase = TaskPhase::Running { healthy: None };
        // Scale to 2: the task on the unreachable node counts; the new one goes to b.
        let plan = run(&nodes, std::slice::from_ref(&on_a), &[demand("g", "web", 2, r)]);
        assert!(plan.stop.is_empty(), "{plan:?}");
        assert_eq!(plan.start.iter().map(|s| s.node_id.as_str()).collect::<Vec<_>>(), ["b"]);
        // Once it is lost (past the node timeout) its task is replaced.
        let mut lost = nodes.clone();
        lost[0].healthy = false;
        let plan = run(&lost, &[on_a], &[demand("g", "web", 1, r)]);
        assert_eq!(plan.stop, ["g.web.1"]);
        assert_eq!(plan.start[0].node_id, "b");
    }

    /// Drives a rolling upgrade to the end, checking the strategy's bounds at every pass:
    /// returns the largest number of tasks alive at once and the smallest number serving.
    fn roll(instances: u32, upgrade: UpgradeStrategy) -> (usize, usize) {
        let nodes = [node("n1", 64_000, 64_000, (9000, 9099)), node("n2", 64_000, 64_000, (9000, 9099))];
        let mut seq = 0;
        let d1 = [demand("g", "web", instances, WEB)];
        let mut tasks = apply(&[], &run(&nodes, &[], &d1), &mut seq);
        let mut v2 = demand("g", "web", instances, WEB);
        v2.apps[0].version = "v2".into();
        v2.apps[0].upgrade = upgrade;
        let (mut most, mut fewest) = (tasks.len(), tasks.len());
        for _ in 0..50 {
            let plan = run(&nodes, &tasks, std::slice::from_ref(&v2));
            if plan.is_empty() {
                break;
            }
            // Launched tasks first start (not yet serving), then become healthy next pass.
            let serving_before: Vec<String> = tasks.iter().map(|t| t.task_id.clone()).collect();
            tasks = apply(&tasks, &plan, &mut seq);
            most = most.max(tasks.len() + plan.stop.len());
            for t in &mut tasks {
                if !serving_before.contains(&t.task_id) {
                    t.phase = TaskPhase::Staging;
                }
            }
            let serving = tasks.iter().filter(|t| t.phase == TaskPhase::Running { healthy: Some(true) }).count();
            fewest = fewest.min(serving);
            for t in &mut tasks {
                t.phase = TaskPhase::Running { healthy: Some(true) };
            }
        }
        assert_eq!(tasks.len(), instances as usize);
        assert!(tasks.iter().all(|t| t.version == "v2"), "{tasks:?}");
        (most, fewest)
    }

    #[test]
    fn rolling_upgrades_honour_minimum_health_and_maximum_over_capacity() {
        // Default (1, 1): every old task serves until its replacement does.
        let (most, fewest) = roll(4, UpgradeStrategy::default());
        assert!(most <= 8, "at most 4 + 4 tasks: {most}");
        assert_eq!(fewest, 4, "never below 4 serving");
        // (0.5, 0): never more than 4 tasks, never fewer than 2 serving.
        let (most, fewest) = roll(4, UpgradeStrategy { minimum_health_capacity: 0.5, maximum_over_capacity: 0.0 });
        assert!(most <= 4, "{most}");
        assert!(fewest >= 2, "{fewest}");
        // (0.75, 0.25): one at a time.
        let (most, fewest) = roll(4, UpgradeStrategy { minimum_health_capacity: 0.75, maximum_over_capacity: 0.25 });
        assert!(most <= 5, "{most}");
        assert!(fewest >= 3, "{fewest}");
    }

    #[test]
    fn a_healthy_task_that_is_not_ready_does_not_count_in_an_upgrade() {
        let nodes = [node("n1", 8000, 8000, (9000, 9009))];
        let mut d = demand("g", "web", 1, WEB);
        d.apps[0].version = "v2".into();
        d.apps[0].upgrade = UpgradeStrategy { minimum_health_capacity: 1.0, maximum_over_capacity: 1.0 };
        let old = task("old", "g", "web", "n1", 9000, WEB, 1);
        let mut new = task("new", "g", "web", "n1", 9001, WEB, 2);
        new.version = "v2".into();
        new.ready = false;
        let plan = run(&nodes, &[old.clone(), new.clone()], std::slice::from_ref(&d));
        assert!(plan.stop.is_empty(), "the old task serves until the new one is ready: {plan:?}");
        new.ready = true;
        let plan = run(&nodes, &[old, new], &[d]);
        assert_eq!(plan.stop, ["old"]);
    }

    #[test]
    fn dependencies_start_first_and_stop_last() {
        let nodes = [node("n1", 8000, 8000, (9000, 9009))];
        let mut web = app("g", "web", 2, WEB);
        web.depends_on = vec!["db".into()];
        let d = [GroupDemand { group: "g".into(), apps: vec![web.clone(), app("g", "db", 1, WEB)] }];
        // Nothing runs: only db launches; web waits and says for what.
        let plan = run(&nodes, &[], &d);
        assert_eq!(plan.start.iter().map(|s| s.app.as_str()).collect::<Vec<_>>(), ["db"]);
        let why = &plan.waiting[&("g".to_string(), "web".to_string())];
        assert!(why.contains("waits for its dependencies to be ready: g/db (0/1 ready)"), "{why}");
        // db ready: web launches.
        let db = task("db-1", "g", "db", "n1", 9000, WEB, 1);
        let plan = run(&nodes, std::slice::from_ref(&db), &d);
        assert_eq!(plan.start.iter().map(|s| s.app.as_str()).collect::<Vec<_>>(), ["web", "web"]);

        // Both go to 0: web stops first; db stops once web has no task left.
        let stop =
            [GroupDemand { group: "g".into(), apps: vec![AppDemand { instances: 0, ..web }, app("g", "db", 0, WEB)] }];
        let running = [db.clone(), task("web-1", "g", "web", "n1", 9001, WEB, 2)];
        let plan = run(&nodes, &running, &stop);
        assert_eq!(plan.stop, ["web-1"]);
        assert!(
            plan.waiting[&("g".to_string(), "db".to_string())]
                .contains("stops after the apps that depend on it: g/web")
        );
        let plan = run(&nodes, &[db], &stop);
        assert_eq!(plan.stop, ["db-1"]);
    }

    #[test]
    fn an_upgrade_never_kills_tasks_whose_state_is_unknown() {
        // Mid-upgrade, n1's link drops (or the cell restarted and n1 has not reported yet):
        // its old tasks may well be serving. Nothing of them is killed until n1 reports.
        let nodes = [node("n1", 8000, 8000, (9000, 9009)), node("n2", 8000, 8000, (9000, 9009))];
        let mut d = demand("g", "web", 4, WEB);
        d.apps[0].version = "v2".into();
        let mut tasks = vec![
            task("a", "g", "web", "n1", 9000, WEB, 1),
            task("b", "g", "web", "n1", 9001, WEB, 2),
            task("c", "g", "web", "n2", 9000, WEB, 3),
            task("d", "g", "web", "n2", 9001, WEB, 4),
        ];
        tasks[0].phase = TaskPhase::Unknown;
        tasks[1].phase = TaskPhase::Unknown;
        let plan = run(&nodes, &tasks, std::slice::from_ref(&d));
        assert!(!plan.stop.iter().any(|id| id == "a" || id == "b"), "{plan:?}");
        // Known and serving again: the upgrade proceeds under its strategy.
        tasks[0].phase = TaskPhase::Running { healthy: Some(true) };
        tasks[1].phase = TaskPhase::Running { healthy: Some(true) };
        let plan = run(&nodes, &tasks, &[d]);
        assert_eq!(plan.start.len(), 4, "maximumOverCapacity 1: four replacements first: {plan:?}");
        assert!(plan.stop.is_empty());
    }

    #[test]
    fn an_upgrade_that_cannot_progress_says_why() {
        let nodes = [node("n1", 4000, 4096, (9000, 9009))];
        let tasks = [task("a", "g", "web", "n1", 9000, WEB, 1), task("b", "g", "web", "n1", 9001, WEB, 2)];
        let mut d = demand("g", "web", 2, WEB);
        d.apps[0].version = "v2".into();
        d.apps[0].upgrade = UpgradeStrategy { minimum_health_capacity: 1.0, maximum_over_capacity: 0.0 };
        let plan = run(&nodes, &tasks, &[d]);
        assert!(plan.is_empty(), "{plan:?}");
        let why = &plan.waiting[&("g".to_string(), "web".to_string())];
        assert!(why.contains("minimumHealthCapacity") || why.contains("stuck"), "{why}");
    }

    #[test]
    fn constraints_are_honoured_and_named_when_they_block() {
        let mut nodes = [
            node("n1", 8000, 8000, (9000, 9009)),
            node("n2", 8000, 8000, (9000, 9009)),
            node("n3", 8000, 8000, (9000, 9009)),
        ];
        for (n, rack) in nodes.iter_mut().zip(["r1", "r1", "r2"]) {
            n.attributes.insert("rack".into(), rack.into());
        }
        let mut d = demand("g", "web", 3, WEB);
        d.apps[0].constraints = vec![Constraint::parse("rack:UNIQUE").unwrap()];
        let plan = run(&nodes, &[], std::slice::from_ref(&d));
        let racks: BTreeSet<&str> = plan
            .start
            .iter()
            .map(|s| nodes.iter().find(|n| n.id == s.node_id).unwrap().attributes["rack"].as_str())
            .collect();
        assert_eq!(plan.start.len(), 2);
        assert_eq!(racks.len(), 2, "one instance per rack");
        assert!(blocker(&plan).contains("UNIQUE"), "{}", blocker(&plan));

        d.apps[0].constraints = vec![Constraint::parse("hostname:UNIQUE").unwrap()];
        let plan = run(&nodes, &[], &[d]);
        let hosts: BTreeSet<&str> = plan.start.iter().map(|s| s.node_id.as_str()).collect();
        assert_eq!(hosts.len(), 3);
    }

    #[test]
    fn dominant_resource_fairness_shares_a_contended_cell_between_roles() {
        // One node of 9 cpu, 18 GiB; role a's tasks are <1 cpu, 4 GiB>, role b's <3 cpu, 1 GiB>
        // (the DRF paper's example): a gets 3 tasks, b gets 2.
        let nodes = [node("n1", 9000, 18_432, (9000, 9099))];
        let a = Resources::new(1000, 4096, 0);
        let b = Resources::new(3000, 1024, 0);
        let d = [demand("a", "web", 10, a), demand("b", "batch", 10, b)];
        let mut seq = 0;
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let plan = run(&nodes, &tasks, &d);
            tasks = apply(&tasks, &plan, &mut seq);
        }
        let count = |app: &str| tasks.iter().filter(|t| t.app == app).count();
        // Served one offer per pass, lowest dominant share first.
        assert_eq!((count("web"), count("batch")), (3, 2), "{tasks:?}");
    }

    #[test]
    fn every_role_spreads_over_every_node_in_the_same_pass() {
        let nodes = [node("n1", 8000, 8000, (9000, 9099)), node("n2", 8000, 8000, (9000, 9099))];
        let d = [demand("crm-web", "web", 2, WEB), demand("mobile-app", "api", 2, WEB)];
        let plan = run(&nodes, &[], &d);
        for app in ["web", "api"] {
            let hosts: BTreeSet<&str> =
                plan.start.iter().filter(|s| s.app == app).map(|s| s.node_id.as_str()).collect();
            assert_eq!(hosts.len(), 2, "{app} on both nodes: {plan:?}");
        }
    }

    #[test]
    fn an_app_that_cannot_place_leaves_its_roles_budget_to_the_next_app() {
        let nodes = [node("n1", 1000, 8000, (9000, 9009)), node("n2", 1000, 8000, (9000, 9009))];
        let mut unique = app("g", "a", 5, WEB);
        unique.constraints = vec![Constraint::parse("hostname:UNIQUE").unwrap()];
        let d = [GroupDemand { group: "g".into(), apps: vec![unique, app("g", "b", 2, WEB)] }];
        // a already has one instance per host; room is left for two more 500-cpu tasks.
        let tasks = [task("a1", "g", "a", "n1", 9000, WEB, 1), task("a2", "g", "a", "n2", 9000, WEB, 2)];
        let plan = run(&nodes, &tasks, &d);
        assert_eq!(plan.start.iter().filter(|s| s.app == "b").count(), 2, "{plan:?}");
        assert!(plan.blockers.iter().any(|b| b.app == "a" && b.message.contains("UNIQUE")), "{plan:?}");
    }

    #[test]
    fn quota_limits_cap_a_role_and_say_so() {
        let nodes = [node("n1", 8000, 8000, (9000, 9099))];
        let mut role = cm::Role::new("g");
        role.limit = Some(cm::Resources::new(1000, 8000, 10_000));
        let quotas = Quotas { roles: vec![role], reservations: BTreeMap::new() };
        let d = [demand("g", "web", 4, WEB)];
        let plan = run_with(&nodes, &[], &d, &quotas);
        assert_eq!(plan.start.len(), 2, "{plan:?}");
        let mut seq = 0;
        let tasks = apply(&[], &plan, &mut seq);
        let plan = run_with(&nodes, &tasks, &d, &quotas);
        assert!(plan.start.is_empty());
        assert!(blocker(&plan).contains("quota limit"), "{}", blocker(&plan));
        assert!(plan.roles["g"].at_limit);
    }

    #[test]
    fn reservations_are_used_only_by_their_role() {
        let nodes = [node("n1", 2000, 8000, (9000, 9099))];
        let quotas = Quotas {
            roles: vec![cm::Role::new("db")],
            reservations: BTreeMap::from([(("n1".to_string(), "db".to_string()), Resources::new(1500, 1024, 0))]),
        };
        let plan = run_with(&nodes, &[], &[demand("web", "web", 4, WEB)], &quotas);
        assert_eq!(plan.start.len(), 1, "web sees only the 500 unreserved millicores: {plan:?}");
        let plan = run_with(&nodes, &[], &[demand("db", "pg", 4, WEB)], &quotas);
        assert_eq!(plan.start.len(), 4, "db uses its reservation and the rest: {plan:?}");
    }

    #[test]
    fn an_offer_a_role_cannot_use_is_declined() {
        let nodes = [node("n1", 8000, 8000, (9000, 9099)), node("n2", 8000, 8000, (9000, 9099))];
        let mut d = demand("g", "web", 2, WEB);
        d.apps[0].constraints = vec![Constraint::parse("hostname:LIKE:n1").unwrap()];
        let tasks = [task("a", "g", "web", "n1", 9000, WEB, 1)];
        let mut d2 = d.clone();
        d2.apps[0].constraints =
            vec![Constraint::parse("hostname:UNIQUE").unwrap(), Constraint::parse("hostname:LIKE:n1").unwrap()];
        let plan = plan(&Input {
            nodes: &nodes,
            tasks: &tasks,
            demand: &[d2],
            quotas: &Quotas::default(),
            filters: &[],
            now_ms: 10,
        });
        assert!(plan.start.is_empty());
        let declined: Vec<(&str, u64)> = plan.declined.iter().map(|f| (f.node.as_str(), f.until_ms)).collect();
        assert_eq!(declined, [("n1", 10 + DECLINE_MS), ("n2", 10 + DECLINE_MS)]);
        // While the filters hold, the role is offered nothing and the reason says so.
        let plan2 = plan_with_filters(&nodes, &tasks, &[d], &plan.declined, 20);
        assert!(plan2.start.is_empty(), "{plan2:?}");
    }

    fn plan_with_filters(
        nodes: &[NodeView],
        tasks: &[TaskView],
        d: &[GroupDemand],
        filters: &[DeclineFilter],
        now_ms: u64,
    ) -> Plan {
        plan(&Input { nodes, tasks, demand: d, quotas: &Quotas::default(), filters, now_ms })
    }
}
