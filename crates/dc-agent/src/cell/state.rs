//! The cell's in-memory tables (nodes, tasks, the applied desired state) and every transition on
//! them. Synchronous and free of I/O: callers take the time, persist snapshots and move bytes.
//! The only side effect is a non-blocking `try_send` of node assignments into bounded channels.

use std::collections::{BTreeMap, BTreeSet};

use std::net::IpAddr;
use std::time::Duration;
use switchyard_proto::cell::v1 as cellpb;

use switchyard_proto::agent::v1 as agent;
use switchyard_proto::common::v1::TaskState;
use switchyard_proto::node::v1 as nodepb;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::time::Instant;

use crate::convert::{self, NodeRegistration};
use switchyard_cell_core::constraints::Constraint;
use switchyard_cell_core::drf::DeclineFilter;

use crate::model::{DesiredRecord, GroupRecord, Resources, TaskRecord};
use crate::persist::{CellStateFile, FORMAT_VERSION};
use crate::schedule::{self, AppDemand, GroupDemand, NodeView, Quotas, RoleUse, TaskPhase, TaskView};

/// Outbound half of a node's stream.
pub(crate) type NodeTx = mpsc::Sender<Result<nodepb::CellToNode, tonic::Status>>;

/// Why a desired state was not applied; `reason` is the metric label.
#[derive(Debug, PartialEq, Eq)]
pub struct Rejection {
    pub reason: &'static str,
    pub detail: String,
}

struct NodeConn {
    id: u64,
    tx: NodeTx,
    last_seen: Instant,
    /// Tasks last handed to the node on this connection; `None` until the first assignment.
    sent: Option<Vec<nodepb::TaskSpec>>,
    /// A heartbeat arrived on this connection: the node's task statuses are known.
    heard: bool,
}

struct NodeEntry {
    reg: NodeRegistration,
    /// When the node was last heard from (registration or heartbeat), on any connection. A
    /// node whose link dropped is unreachable, not lost, until the node timeout has passed
    /// since then: a restarting node agent keeps its tasks.
    last_seen: Instant,
    /// Its loss has been reported (logged and counted) since it was last heard from.
    lost_reported: bool,
    /// `None` while the node is lost.
    conn: Option<NodeConn>,
    statuses: BTreeMap<String, nodepb::TaskStatus>,
    /// Process accounting of its tasks from the last heartbeat: (cpu_seconds, rss_bytes).
    usage: BTreeMap<String, (f64, u64)>,
    /// Generation of the last assignment sent; grows across reconnects.
    generation: u64,
    applied_generation: u64,
}

/// What one backend should hold: the endpoints whose state is known, and the names of servers
/// to leave exactly as they are because their task's state is unknown right now.
#[derive(Debug, Default)]
pub(crate) struct LbIntent {
    pub endpoints: Vec<crate::lb::Endpoint>,
    pub keep: Vec<String>,
}

/// A converged cell with nothing changed still runs a scheduling pass this often.
const IDLE_PASS: Duration = Duration::from_secs(5);

/// Every task of an app carries the same load-balancer weight; shares between sites are DNS's.
const LB_WEIGHT: u16 = 10;
/// A replica's lag answer older than this is not reported (the replica stopped answering).
const REPLICATION_LAG_FRESH: Duration = Duration::from_secs(5);

pub(crate) struct CellState {
    site: String,
    applied_epoch: u64,
    desired_epoch: Option<u64>,
    managed: Vec<String>,
    groups: BTreeMap<String, GroupRecord>,
    tasks: BTreeMap<String, TaskRecord>,
    task_counter: u64,
    nodes: BTreeMap<String, NodeEntry>,
    next_conn_id: u64,
    blockers: BTreeMap<(String, String), String>,
    /// Apps whose deployment is in progress, with what each waits for.
    waiting: BTreeMap<(String, String), String>,
    /// The autoscaler's last decision per app.
    autoscale_notes: BTreeMap<(String, String), String>,
    /// Stateful groups: the replica's last answered replication lag (ms) and when.
    replication_lag: BTreeMap<String, (u64, Instant)>,
    /// Roles (tenants), their quotas, and node reservations.
    quotas: Quotas,
    quota_error: Option<String>,
    /// Offers roles declined recently, and each role's pending launches when it declined.
    filters: Vec<DeclineFilter>,
    pending: BTreeMap<String, u32>,
    /// What every role held and got in the last pass.
    roles: BTreeMap<String, RoleUse>,
    /// Zero of the millisecond clock the allocator's decline filters use.
    clock_origin: Instant,
    /// Nodes in maintenance (persisted).
    draining: BTreeSet<String>,
    /// Tasks leaving the plan that are drained from the load balancer first, until the given
    /// deadline, and only then stopped (removed from their node's assignment).
    leaving: BTreeMap<String, Instant>,
    /// How long a serving task is drained before it is stopped; zero without a load balancer.
    lb_drain: Duration,
    /// Started without a persisted task table (new cell, or its data directory was lost):
    /// until the first placement, tasks the nodes report are adopted instead of replaced.
    fresh_start: bool,
    /// Persisted tables changed since the last snapshot.
    dirty: bool,
    /// Something the scheduler reads changed since its last pass, or that pass left work for
    /// a later one; a converged, unchanged cell skips passes (but runs one every
    /// [`IDLE_PASS`] regardless).
    sched_dirty: bool,
    last_pass: Option<Instant>,
    shutting_down: bool,
}

/// One autoscaled app as the autoscaler sees it in one round.
pub(crate) struct AutoscaleJob {
    pub group: String,
    pub app: String,
    pub spec: switchyard_cell_core::autoscale::AutoscaleSpec,
    pub metrics: crate::model::MetricsRecord,
    pub resources: Resources,
    /// Instances the federator wants here (the count autoscaling changes).
    pub instances: u32,
    pub frozen: bool,
    /// Serving tasks of the app.
    pub targets: Vec<ScrapeTarget>,
}

/// A serving task the autoscaler observes.
pub(crate) struct ScrapeTarget {
    pub task_id: String,
    pub addr: std::net::IpAddr,
    pub port: u16,
    /// (cpu_seconds, rss_bytes) from its node's last heartbeat.
    pub usage: Option<(f64, u64)>,
}

/// Counts exported as gauges.
pub(crate) struct Counts {
    pub nodes: usize,
    pub nodes_healthy: usize,
    pub tasks: usize,
    pub blocked_apps: usize,
}

/// The cell's fencing rule: a desired state is applied only if it is for this site and its
/// epoch is at least the highest this cell has applied (persisted across restarts).
pub fn fence_desired(applied_epoch: u64, site: &str, d: &agent::DesiredState) -> Result<(), Rejection> {
    if d.epoch < applied_epoch {
        return Err(Rejection {
            reason: "stale_epoch",
            detail: format!("epoch {} is older than the applied epoch {}", d.epoch, applied_epoch),
        });
    }
    if d.site != site {
        return Err(Rejection {
            reason: "wrong_site",
            detail: format!("it is for site {:?}, this cell runs site {:?}", d.site, site),
        });
    }
    Ok(())
}

impl CellState {
    pub(crate) fn new(site: String, applied_epoch: u64, restored: Option<CellStateFile>) -> Self {
        let mut s = Self {
            site,
            applied_epoch,
            desired_epoch: None,
            managed: Vec::new(),
            groups: BTreeMap::new(),
            tasks: BTreeMap::new(),
            task_counter: 0,
            nodes: BTreeMap::new(),
            next_conn_id: 0,
            blockers: BTreeMap::new(),
            waiting: BTreeMap::new(),
            autoscale_notes: BTreeMap::new(),
            replication_lag: BTreeMap::new(),
            quotas: Quotas::default(),
            quota_error: None,
            filters: Vec::new(),
            pending: BTreeMap::new(),
            roles: BTreeMap::new(),
            clock_origin: Instant::now(),
            draining: BTreeSet::new(),
            leaving: BTreeMap::new(),
            lb_drain: Duration::ZERO,
            fresh_start: restored.is_none(),
            dirty: false,
            sched_dirty: true,
            last_pass: None,
            shutting_down: false,
        };
        if let Some(r) = restored {
            s.applied_epoch = s.applied_epoch.max(r.desired_epoch.unwrap_or(0));
            s.desired_epoch = r.desired_epoch;
            s.managed = r.managed;
            s.groups = r.groups.into_iter().map(|g| (g.name.clone(), g)).collect();
            s.tasks = r.tasks.into_iter().map(|t| (t.task_id.clone(), t)).collect();
            s.task_counter = r.task_counter.max(s.tasks.values().map(|t| t.seq).max().unwrap_or(0));
            s.draining = r.draining.into_iter().collect();
            // Tables written before versions existed: such tasks are of their app's version.
            for t in s.tasks.values_mut() {
                let Some(app) = s.groups.get(&t.group).and_then(|g| g.app(&t.app)) else { continue };
                if t.version.is_empty() {
                    t.version = app.version.clone();
                }
                if t.role.is_empty() {
                    t.role = app.role.clone();
                }
            }
        }
        s
    }

    /// Replaces the roles' quotas and the node reservations (from the quota file).
    pub(crate) fn set_quotas(&mut self, quotas: Quotas) {
        self.sched_dirty = true;
        self.quotas = quotas;
        self.quota_error = None;
        self.filters.clear();
    }

    /// The quota file changed but was refused; shown to operators until it is fixed.
    pub(crate) fn set_quota_error(&mut self, error: String) {
        self.quota_error = Some(error);
    }

    pub(crate) fn site(&self) -> &str {
        &self.site
    }

    pub(crate) fn applied_epoch(&self) -> u64 {
        self.applied_epoch
    }

    /// Checks a desired state against fencing and validity without changing anything.
    pub(crate) fn check_desired(&self, d: &agent::DesiredState) -> Result<DesiredRecord, Rejection> {
        fence_desired(self.applied_epoch, &self.site, d)?;
        convert::desired_from_proto(d, &self.site)
            .map_err(|problems| Rejection { reason: "invalid", detail: problems.join("; ") })
    }

    /// Applies a desired state that passed [`CellState::check_desired`] and whose epoch is
    /// already persisted. Returns whether anything changed.
    pub(crate) fn commit_desired(&mut self, d: DesiredRecord) -> bool {
        assert!(d.epoch >= self.applied_epoch, "fencing: committing epoch {} below {}", d.epoch, self.applied_epoch);
        let managed: Vec<String> = d.groups.iter().map(|g| g.name.clone()).collect();
        let mut changed = self.desired_epoch != Some(d.epoch) || self.managed != managed;
        self.applied_epoch = d.epoch;
        self.desired_epoch = Some(d.epoch);
        self.managed = managed;
        for g in d.groups {
            if self.groups.get(&g.name) != Some(&g) {
                changed = true;
                self.groups.insert(g.name.clone(), g);
            }
        }
        self.prune_groups();
        self.dirty |= changed;
        self.sched_dirty |= changed;
        changed
    }

    /// Forgets specs of groups that are neither managed nor running anything.
    fn prune_groups(&mut self) {
        let running: BTreeSet<&str> = self.tasks.values().map(|t| t.group.as_str()).collect();
        let managed: BTreeSet<&str> = self.managed.iter().map(String::as_str).collect();
        let before = self.groups.len();
        self.groups.retain(|name, _| running.contains(name.as_str()) || managed.contains(name.as_str()));
        self.dirty |= self.groups.len() != before;
    }

    /// Records a (re)connected node and returns the id of its connection.
    pub(crate) fn register_node(&mut self, reg: NodeRegistration, tx: NodeTx, now: Instant) -> u64 {
        self.sched_dirty = true;
        self.next_conn_id += 1;
        let conn = NodeConn { id: self.next_conn_id, tx, last_seen: now, sent: None, heard: false };
        match self.nodes.get_mut(&reg.node_id) {
            Some(entry) => {
                entry.reg = reg;
                entry.conn = Some(conn);
                entry.statuses.clear();
                entry.last_seen = now;
                entry.lost_reported = false;
            }
            None => {
                let entry = NodeEntry {
                    reg: reg.clone(),
                    last_seen: now,
                    lost_reported: false,
                    conn: Some(conn),
                    statuses: BTreeMap::new(),
                    usage: BTreeMap::new(),
                    generation: 0,
                    applied_generation: 0,
                };
                self.nodes.insert(reg.node_id, entry);
            }
        }
        self.next_conn_id
    }

    /// Applies a heartbeat from connection `conn_id`. Returns whether the reported task status
    /// changed; `None` when the connection is not the node's current one.
    pub(crate) fn heartbeat(&mut self, conn_id: u64, hb: nodepb::NodeHeartbeat, now: Instant) -> Option<bool> {
        let entry = self.nodes.get_mut(&hb.node_id)?;
        let conn = entry.conn.as_mut().filter(|c| c.id == conn_id)?;
        conn.last_seen = now;
        if !conn.heard {
            conn.heard = true;
            self.sched_dirty = true;
        }
        entry.last_seen = now;
        entry.applied_generation = hb.applied_generation;
        let statuses: BTreeMap<String, nodepb::TaskStatus> =
            hb.tasks.into_iter().map(|t| (t.task_id.clone(), t)).collect();
        let changed = statuses != entry.statuses;
        entry.statuses = statuses;
        self.sched_dirty |= changed;
        // Not part of `changed`: CPU time grows with every heartbeat.
        entry.usage = hb.usage.into_iter().map(|u| (u.task_id, (u.cpu_seconds, u.rss_bytes))).collect();
        Some(changed)
    }

    /// The node's stream `conn_id` ended. Returns whether the node is now lost.
    pub(crate) fn disconnect(&mut self, node_id: &str, conn_id: u64) -> bool {
        match self.nodes.get_mut(node_id) {
            Some(entry) if entry.conn.as_ref().is_some_and(|c| c.id == conn_id) => {
                entry.conn = None;
                entry.statuses.clear();
                self.sched_dirty = true;
                true
            }
            _ => false,
        }
    }

    /// Declares lost, once, every node not heard from for longer than `timeout`, connected
    /// (silent) or not (its link dropped); returns their ids. Dropping a silent node's
    /// connection closes its stream, so a node that is merely slow reconnects.
    pub(crate) fn expire_nodes(&mut self, now: Instant, timeout: Duration) -> Vec<String> {
        let mut lost = Vec::new();
        for (id, entry) in &mut self.nodes {
            if entry.lost_reported || now.saturating_duration_since(entry.last_seen) <= timeout {
                continue;
            }
            if entry.conn.take().is_some() {
                entry.statuses.clear();
            }
            entry.lost_reported = true;
            lost.push(id.clone());
        }
        self.sched_dirty |= !lost.is_empty();
        lost
    }

    /// Whether every node that holds a task is connected. Until then a restarted cell holds
    /// placement back, so tasks are not moved off nodes that simply have not reconnected yet.
    /// Serving tasks leaving the plan are drained from the load balancer for `drain` first.
    pub(crate) fn set_lb_drain(&mut self, drain: Duration) {
        self.lb_drain = drain;
    }

    /// Stops the leaving tasks whose drain time is over. Returns whether any was stopped.
    pub(crate) fn finish_leaving(&mut self, now: Instant) -> bool {
        let done: Vec<String> =
            self.leaving.iter().filter(|(_, until)| **until <= now).map(|(id, _)| id.clone()).collect();
        for id in &done {
            self.leaving.remove(id);
            if let Some(t) = self.tasks.remove(id) {
                tracing::info!(task = %id, node = %t.node_id, "drained task stopped");
            }
        }
        self.dirty |= !done.is_empty();
        self.sched_dirty |= !done.is_empty();
        if !done.is_empty() {
            self.prune_groups();
        }
        !done.is_empty()
    }

    pub(crate) fn is_fresh_start(&self) -> bool {
        self.fresh_start
    }

    /// On a fresh start, takes into the task table every task a connected node reports for an
    /// app of the desired state, so the first placement keeps running instances where they are
    /// instead of handing nodes empty task lists. Returns how many were adopted.
    pub(crate) fn adopt_reported_tasks(&mut self) -> usize {
        if !self.fresh_start || self.desired_epoch.is_none() {
            return 0;
        }
        let mut adopted = Vec::new();
        for (node_id, node) in self.nodes.iter().filter(|(_, n)| n.conn.is_some()) {
            for st in node.statuses.values() {
                if self.tasks.contains_key(&st.task_id) {
                    continue;
                }
                let Some(app) = self.groups.get(&st.group).and_then(|g| g.app(&st.app)) else { continue };
                let Ok(port) = u16::try_from(st.port) else { continue };
                // Task ids end with the cell's sequence number; keep ids unique after adoption.
                let seq = st.task_id.rsplit('.').next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
                // A task of the app's current version runs what the app says; one of another
                // version is kept as it runs and replaced by the next rolling step.
                let current = st.version.is_empty() || st.version == app.version;
                adopted.push(TaskRecord {
                    task_id: st.task_id.clone(),
                    group: st.group.clone(),
                    app: st.app.clone(),
                    node_id: node_id.clone(),
                    port,
                    resources: app.resources,
                    seq,
                    version: if current { app.version.clone() } else { st.version.clone() },
                    role: app.role.clone(),
                    launch: current.then(|| app.launch()),
                });
            }
        }
        for t in &adopted {
            tracing::info!(task = %t.task_id, node = %t.node_id, "adopted a running task reported by its node");
            self.task_counter = self.task_counter.max(t.seq);
        }
        let n = adopted.len();
        self.tasks.extend(adopted.into_iter().map(|t| (t.task_id.clone(), t)));
        self.dirty |= n > 0;
        self.sched_dirty |= n > 0;
        n
    }

    pub(crate) fn all_task_nodes_connected(&self) -> bool {
        self.tasks
            .values()
            .all(|t| self.nodes.get(&t.node_id).is_some_and(|n| n.conn.as_ref().is_some_and(|c| c.heard)))
    }

    /// Plans and applies one scheduling step. Returns whether tasks or blockers changed.
    pub(crate) fn place(&mut self, now: Instant, node_timeout: Duration) -> bool {
        if self.desired_epoch.is_none() || self.shutting_down {
            return false;
        }
        if !self.sched_dirty && self.last_pass.is_some_and(|t| now.saturating_duration_since(t) < IDLE_PASS) {
            return false;
        }
        self.last_pass = Some(now);
        let now_ms = now.saturating_duration_since(self.clock_origin).as_millis() as u64;
        let nodes: Vec<NodeView> = self
            .nodes
            .iter()
            .map(|(id, n)| NodeView {
                id: id.clone(),
                healthy: n.conn.is_some() || now.saturating_duration_since(n.last_seen) <= node_timeout,
                reachable: n.conn.is_some(),
                draining: self.draining.contains(id),
                capacity: n.reg.capacity,
                port_min: n.reg.port_min,
                port_max: n.reg.port_max,
                attributes: n.reg.attributes.clone(),
            })
            .collect();
        let tasks: Vec<TaskView> = self
            .tasks
            .values()
            .map(|t| TaskView {
                task_id: t.task_id.clone(),
                group: t.group.clone(),
                app: t.app.clone(),
                role: t.role.clone(),
                node_id: t.node_id.clone(),
                port: t.port,
                resources: t.resources,
                seq: t.seq,
                version: t.version.clone(),
                phase: self.task_phase(t),
                ready: self.task_ready_flag(t),
                stopping: self.leaving.contains_key(&t.task_id),
            })
            .collect();
        let demand: Vec<GroupDemand> = self
            .managed
            .iter()
            .filter_map(|name| self.groups.get(name))
            .map(|g| GroupDemand {
                group: g.name.clone(),
                apps: g
                    .apps
                    .iter()
                    .map(|a| AppDemand {
                        app: a.name.clone(),
                        role: a.role.clone(),
                        instances: a.instances,
                        resources: a.resources,
                        version: a.version.clone(),
                        upgrade: a.upgrade,
                        // Validated when the desired state was accepted.
                        constraints: a.constraints.iter().filter_map(|c| Constraint::parse(c).ok()).collect(),
                        depends_on: a.depends_on.clone(),
                    })
                    .collect(),
            })
            .collect();
        self.filters.retain(|f| f.until_ms > now_ms);
        let plan = schedule::plan(&schedule::Input {
            nodes: &nodes,
            tasks: &tasks,
            demand: &demand,
            quotas: &self.quotas,
            filters: &self.filters,
            now_ms,
        });
        self.fresh_start = false;
        // A role whose pending launches changed revives its offers (Mesos `revive`).
        let pending: BTreeMap<String, u32> = plan.roles.iter().map(|(r, u)| (r.clone(), u.pending)).collect();
        self.filters.retain(|f| pending.get(&f.role) == self.pending.get(&f.role));
        self.pending = pending;
        self.filters.extend(plan.declined.iter().cloned());
        self.roles = plan.roles.clone();

        for id in &plan.stop {
            let serving = self.tasks.get(id).is_some_and(|t| self.task_ready(t));
            if serving && !self.lb_drain.is_zero() {
                // Out of the load balancer first; the node stops it once the drain is over.
                tracing::info!(task = %id, drain_ms = self.lb_drain.as_millis() as u64, "task leaving; draining it first");
                self.leaving.insert(id.clone(), now + self.lb_drain);
            } else if let Some(t) = self.tasks.remove(id) {
                tracing::info!(task = %id, node = %t.node_id, "task removed from the plan");
            }
        }
        for s in &plan.start {
            let Some(app) = self.groups.get(&s.group).and_then(|g| g.app(&s.app)) else { continue };
            let launch = app.launch();
            self.task_counter += 1;
            let task_id = format!("{}.{}.{}", s.group, s.app, self.task_counter);
            tracing::info!(task = %task_id, node = %s.node_id, port = s.port, version = %s.version, "task placed");
            self.tasks.insert(
                task_id.clone(),
                TaskRecord {
                    task_id,
                    group: s.group.clone(),
                    app: s.app.clone(),
                    node_id: s.node_id.clone(),
                    port: s.port,
                    resources: s.resources,
                    seq: self.task_counter,
                    version: s.version.clone(),
                    role: s.role.clone(),
                    launch: Some(launch),
                },
            );
        }
        let blockers: BTreeMap<(String, String), String> =
            plan.blockers.into_iter().map(|b| ((b.group, b.app), b.message)).collect();
        // Converged: nothing to do and nothing waited for. Otherwise the next tick looks again
        // (tasks just placed, launches held back for fairness, offers declined, ...).
        self.sched_dirty =
            !(plan.start.is_empty() && plan.stop.is_empty() && blockers.is_empty() && plan.waiting.is_empty());
        let blockers_changed = blockers != self.blockers || plan.waiting != self.waiting;
        self.blockers = blockers;
        self.waiting = plan.waiting;
        let tasks_changed = !plan.stop.is_empty() || !plan.start.is_empty();
        self.dirty |= tasks_changed;
        if tasks_changed {
            self.prune_groups();
        }
        tasks_changed || blockers_changed
    }

    /// Whether the task's node says it passed its readiness check (or it has none).
    fn task_ready_flag(&self, t: &TaskRecord) -> bool {
        self.nodes.get(&t.node_id).and_then(|n| n.statuses.get(&t.task_id)).is_some_and(|st| !st.not_ready)
    }

    /// What the scheduler needs to know of a task's state on its node.
    fn task_phase(&self, t: &TaskRecord) -> TaskPhase {
        let Some(node) = self.nodes.get(&t.node_id) else { return TaskPhase::Unknown };
        if node.conn.is_none() || !node.conn.as_ref().is_some_and(|c| c.heard) {
            // Unreachable, or reconnected without a heartbeat yet: it may well still run and
            // serve; no verdict, and no reason to kill it.
            return TaskPhase::Unknown;
        }
        match node.statuses.get(&t.task_id).and_then(|st| TaskState::try_from(st.state).ok().map(|s| (s, st))) {
            None | Some((TaskState::Unspecified | TaskState::Starting, _)) => TaskPhase::Staging,
            Some((TaskState::Running, st)) if st.healthy => TaskPhase::Running { healthy: Some(true) },
            // Running without a passing check yet: in its grace period, or failing checks
            // below the restart threshold.
            Some((TaskState::Running, _)) => TaskPhase::Running { healthy: None },
            Some((TaskState::Backoff | TaskState::Failed | TaskState::Stopping, _)) => {
                TaskPhase::Running { healthy: Some(false) }
            }
        }
    }

    /// The persisted tables, if they changed since the last call.
    pub(crate) fn take_snapshot(&mut self) -> Option<CellStateFile> {
        if !self.dirty {
            return None;
        }
        self.dirty = false;
        Some(CellStateFile {
            version: FORMAT_VERSION,
            site: self.site.clone(),
            task_counter: self.task_counter,
            desired_epoch: self.desired_epoch,
            managed: self.managed.clone(),
            groups: self.groups.values().cloned().collect(),
            tasks: self.tasks.values().cloned().collect(),
            draining: self.draining.iter().cloned().collect(),
        })
    }

    /// A snapshot could not be written; try again on the next pass.
    pub(crate) fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// Stops placement and closes every node stream, so the server can drain. Nodes are not
    /// marked lost: the persisted tables keep every task where it is for the next start.
    pub(crate) fn begin_shutdown(&mut self) {
        self.shutting_down = true;
        for entry in self.nodes.values_mut() {
            entry.conn = None;
        }
    }

    fn task_spec(&self, t: &TaskRecord, node: &NodeEntry) -> Option<nodepb::TaskSpec> {
        // A task runs what it was launched with; tables from before per-task specs fall back
        // to the app's current spec.
        let launch = match &t.launch {
            Some(l) => l.clone(),
            None => self.groups.get(&t.group)?.app(&t.app)?.launch(),
        };
        let mut env: std::collections::HashMap<String, String> = launch.env.into_iter().collect();
        let address = node.reg.address.to_string();
        for (k, v) in [
            ("PORT", t.port.to_string()),
            ("HOST", address),
            ("SWITCHYARD_SITE", self.site.clone()),
            ("SWITCHYARD_NODE", t.node_id.clone()),
            ("SWITCHYARD_GROUP", t.group.clone()),
            ("SWITCHYARD_APP", t.app.clone()),
            ("SWITCHYARD_TASK_ID", t.task_id.clone()),
            ("SWITCHYARD_APP_VERSION", t.version.clone()),
        ] {
            env.insert(k.to_string(), v);
        }
        Some(nodepb::TaskSpec {
            task_id: t.task_id.clone(),
            group: t.group.clone(),
            app: t.app.clone(),
            command: launch.command,
            args: launch.args,
            env,
            port: u32::from(t.port),
            health: Some(convert::health_to_proto(&launch.health)),
            readiness: launch.readiness.as_ref().map(convert::health_to_proto),
            version: t.version.clone(),
            resources: Some(convert::resources_to_proto(&t.resources)),
        })
    }

    /// Sends every connected node its complete task list if it differs from what that
    /// connection last received. Nothing is sent before a desired state is known, so a cell that
    /// lost its data directory never empties its nodes. Returns the number of assignments sent.
    pub(crate) fn send_assignments(&mut self) -> usize {
        if self.desired_epoch.is_none() || self.shutting_down {
            return 0;
        }
        let mut wanted: BTreeMap<String, Vec<nodepb::TaskSpec>> = BTreeMap::new();
        for (id, node) in &self.nodes {
            if node.conn.is_none() {
                continue;
            }
            let specs = self
                .tasks
                .values()
                .filter(|t| &t.node_id == id)
                .filter_map(|t| {
                    let spec = self.task_spec(t, node);
                    if spec.is_none() {
                        tracing::error!(task = %t.task_id, "no spec known for task; it is left out of the assignment");
                    }
                    spec
                })
                .collect();
            wanted.insert(id.clone(), specs);
        }
        let mut sent = 0;
        for (id, specs) in wanted {
            let Some(node) = self.nodes.get_mut(&id) else { continue };
            let Some(conn) = node.conn.as_mut() else { continue };
            if conn.sent.as_ref() == Some(&specs) {
                continue;
            }
            node.generation += 1;
            let assignment =
                nodepb::NodeAssignment { generation: node.generation, epoch: self.applied_epoch, tasks: specs.clone() };
            let msg = nodepb::CellToNode { body: Some(nodepb::cell_to_node::Body::Assignment(assignment)) };
            match conn.tx.try_send(Ok(msg)) {
                Ok(()) => {
                    conn.sent = Some(specs);
                    sent += 1;
                }
                // The node is not reading; the next pass sends the then-current list.
                Err(TrySendError::Full(_)) => tracing::warn!(node = %id, "node stream is full; assignment deferred"),
                Err(TrySendError::Closed(_)) => {}
            }
        }
        sent
    }

    pub(crate) fn counts(&self) -> Counts {
        Counts {
            nodes: self.nodes.len(),
            nodes_healthy: self.nodes.values().filter(|n| n.conn.is_some()).count(),
            tasks: self.tasks.len(),
            blocked_apps: self.blockers.len(),
        }
    }

    fn node_info(&self, id: &str, n: &NodeEntry) -> cellpb::NodeInfo {
        let tasks: Vec<&TaskRecord> = self.tasks.values().filter(|t| t.node_id == id).collect();
        let allocated = tasks.iter().fold(Resources::ZERO, |acc, t| acc.plus(&t.resources));
        let state = match (n.conn.is_some(), self.draining.contains(id)) {
            (false, _) => "lost",
            (true, true) => "draining",
            (true, false) => "up",
        };
        cellpb::NodeInfo {
            node_id: id.to_string(),
            address: n.reg.address.to_string(),
            state: state.to_string(),
            capacity: Some(convert::resources_to_proto(&n.reg.capacity)),
            allocated: Some(convert::resources_to_proto(&allocated)),
            tasks: tasks.len() as u32,
            attributes: n.reg.attributes.clone().into_iter().collect(),
        }
    }

    /// Every registered node, for operators.
    pub(crate) fn admin_nodes(&self) -> Vec<cellpb::NodeInfo> {
        self.nodes.iter().map(|(id, n)| self.node_info(id, n)).collect()
    }

    pub(crate) fn admin_node(&self, id: &str) -> Option<cellpb::NodeInfo> {
        self.nodes.get(id).map(|n| self.node_info(id, n))
    }

    /// Every managed app with its counts and, when it is short, what it waits for.
    pub(crate) fn admin_apps(&self) -> Vec<cellpb::AppInfo> {
        let mut out = Vec::new();
        for g in self.managed.iter().filter_map(|name| self.groups.get(name)) {
            for a in &g.apps {
                let tasks: Vec<&TaskRecord> =
                    self.tasks.values().filter(|t| t.group == g.name && t.app == a.name).collect();
                let statuses: Vec<agent::InstanceStatus> = tasks.iter().map(|t| self.instance_status(t)).collect();
                let running = statuses.iter().filter(|s| s.state == TaskState::Running as i32).count() as u32;
                let healthy = tasks.iter().filter(|t| self.task_ready(t)).count() as u32;
                let on_draining = tasks.iter().filter(|t| self.draining.contains(&t.node_id)).count();
                let key = (g.name.clone(), a.name.clone());
                let waiting_for = match (self.blockers.get(&key), self.waiting.get(&key)) {
                    (Some(b), Some(w)) if !w.is_empty() => format!("{w}; {b}"),
                    (Some(b), _) => b.clone(),
                    (None, Some(w)) if !w.is_empty() => w.clone(),
                    _ if healthy < a.instances => {
                        let unhealthy: Vec<String> = statuses
                            .iter()
                            .filter(|s| !(s.healthy && s.state == TaskState::Running as i32))
                            .map(|s| format!("{}: {}", s.task_id, s.message))
                            .collect();
                        format!("{healthy}/{} healthy; {}", a.instances, unhealthy.join("; "))
                    }
                    _ if on_draining > 0 => {
                        format!("{on_draining} task(s) on draining nodes wait for replacements to be ready")
                    }
                    _ => String::new(),
                };
                let current = tasks.iter().filter(|t| t.version == a.version).count() as u32;
                out.push(cellpb::AppInfo {
                    group: g.name.clone(),
                    app: a.name.clone(),
                    desired: a.instances,
                    running,
                    healthy,
                    waiting_for,
                    epoch: g.epoch,
                    version: a.version.clone(),
                    current,
                    autoscale: self.autoscale_notes.get(&key).cloned().unwrap_or_default(),
                });
            }
        }
        out
    }

    /// Every role that holds, wants or is configured with resources, and the quota file's error.
    pub(crate) fn admin_roles(&self) -> (Vec<cellpb::RoleInfo>, String) {
        let mut names: BTreeSet<&str> = self.roles.keys().map(String::as_str).collect();
        names.extend(self.quotas.roles.iter().map(|r| r.name.as_str()));
        names.extend(self.quotas.reservations.keys().map(|(_, r)| r.as_str()));
        let to_pb = |r: switchyard_cell_core::model::Resources| {
            convert::resources_to_proto(&Resources::new(r.cpu_millis, r.mem_mib, r.disk_mib))
        };
        let roles = names
            .into_iter()
            .map(|name| {
                let quota = self.quotas.roles.iter().find(|r| r.name == name);
                let used = self.roles.get(name);
                let reserved = self
                    .quotas
                    .reservations
                    .iter()
                    .filter(|((_, r), _)| r == name)
                    .fold(Resources::ZERO, |acc, (_, v)| acc.plus(v));
                cellpb::RoleInfo {
                    name: name.to_string(),
                    weight: quota.map_or(1.0, |q| q.weight),
                    guarantee: quota.map(|q| to_pb(q.guarantee)),
                    limit: quota.and_then(|q| q.limit).map(to_pb),
                    held: used.map(|u| convert::resources_to_proto(&u.held)),
                    dominant_share: used.map_or(0.0, |u| u.dominant_share),
                    at_limit: used.is_some_and(|u| u.at_limit),
                    pending: used.map_or(0, |u| u.pending),
                    reserved: Some(convert::resources_to_proto(&reserved)),
                }
            })
            .collect();
        (roles, self.quota_error.clone().unwrap_or_default())
    }

    /// Every managed app with an autoscale policy, with its serving tasks.
    pub(crate) fn autoscale_jobs(&self) -> Vec<AutoscaleJob> {
        let mut jobs = Vec::new();
        for g in self.managed.iter().filter_map(|name| self.groups.get(name)) {
            for a in &g.apps {
                let Some(spec) = &a.autoscale else { continue };
                let targets = self
                    .tasks
                    .values()
                    .filter(|t| t.group == g.name && t.app == a.name && self.task_ready(t))
                    .filter(|t| !self.leaving.contains_key(&t.task_id))
                    .filter_map(|t| {
                        let node = self.nodes.get(&t.node_id)?;
                        Some(ScrapeTarget {
                            task_id: t.task_id.clone(),
                            addr: node.reg.address,
                            port: t.port,
                            usage: node.usage.get(&t.task_id).copied(),
                        })
                    })
                    .collect();
                jobs.push(AutoscaleJob {
                    group: g.name.clone(),
                    app: a.name.clone(),
                    spec: spec.clone(),
                    metrics: a.metrics.clone(),
                    resources: a.resources,
                    instances: a.instances,
                    frozen: g.frozen,
                    targets,
                });
            }
        }
        jobs
    }

    /// Where to ask each stateful group's replica here for its lag: (group, address, port,
    /// path) of one ready instance of the group's data app.
    pub(crate) fn replication_lag_probes(&self) -> Vec<(String, IpAddr, u16, String)> {
        let mut probes = Vec::new();
        for g in self.managed.iter().filter_map(|name| self.groups.get(name)) {
            let Some((app, path)) = &g.replication_lag_probe else { continue };
            let target = self
                .tasks
                .values()
                .filter(|t| t.group == g.name && t.app == *app && self.task_ready(t))
                .filter(|t| !self.leaving.contains_key(&t.task_id))
                .min_by_key(|t| t.seq)
                .and_then(|t| Some((self.nodes.get(&t.node_id)?.reg.address, t.port)));
            if let Some((addr, port)) = target {
                probes.push((g.name.clone(), addr, port, path.clone()));
            }
        }
        probes
    }

    /// A replica's answer (None: it did not give one); reported while fresh.
    pub(crate) fn set_replication_lag(&mut self, group: &str, lag_ms: Option<u64>) {
        match lag_ms {
            Some(lag) => {
                self.replication_lag.insert(group.to_string(), (lag, Instant::now()));
            }
            None => {
                self.replication_lag.remove(group);
            }
        }
    }

    /// The autoscaler's last word on an app, shown by `fedctl cell apps`.
    pub(crate) fn set_autoscale_note(&mut self, group: &str, app: &str, note: String) {
        self.autoscale_notes.insert((group.to_string(), app.to_string()), note);
    }

    /// Tasks, optionally only those on one node.
    pub(crate) fn admin_tasks(&self, node: Option<&str>) -> Vec<cellpb::TaskInfo> {
        self.tasks
            .values()
            .filter(|t| node.is_none_or(|n| t.node_id == n))
            .map(|t| {
                let s = self.instance_status(t);
                cellpb::TaskInfo {
                    task_id: t.task_id.clone(),
                    group: t.group.clone(),
                    app: t.app.clone(),
                    node_id: t.node_id.clone(),
                    address: s.address,
                    port: s.port,
                    pid: s.pid,
                    state: s.state,
                    healthy: s.healthy,
                    restarts: s.restarts,
                    message: s.message,
                }
            })
            .collect()
    }

    /// Whether a task's node reports it running and passing its health check.
    fn task_ready(&self, t: &TaskRecord) -> bool {
        self.nodes.get(&t.node_id).is_some_and(|n| {
            n.conn.is_some()
                && n.statuses.get(&t.task_id).is_some_and(|st| st.state == TaskState::Running as i32 && st.healthy)
        })
    }

    /// Kills the named tasks, or every task of `group`/`app` when no id is given: each serving
    /// one is drained from the load balancer first, then stopped; the next scheduling pass
    /// replaces them. Unknown ids are an error and nothing is killed.
    pub(crate) fn kill_tasks(
        &mut self,
        ids: &[String],
        group: &str,
        app: &str,
        now: Instant,
    ) -> Result<Vec<String>, String> {
        let chosen: Vec<String> = if ids.is_empty() {
            if group.is_empty() || app.is_empty() {
                return Err("name tasks, or a group and an app to kill all of its tasks".into());
            }
            let all: Vec<String> =
                self.tasks.values().filter(|t| t.group == group && t.app == app).map(|t| t.task_id.clone()).collect();
            if all.is_empty() {
                return Err(format!("{group}/{app} has no tasks on this site"));
            }
            all
        } else {
            let unknown: Vec<&str> =
                ids.iter().filter(|id| !self.tasks.contains_key(*id)).map(String::as_str).collect();
            if !unknown.is_empty() {
                return Err(format!("no such task(s) on this site: {}; see fedctl cell tasks", unknown.join(", ")));
            }
            ids.to_vec()
        };
        for id in &chosen {
            if self.leaving.contains_key(id) {
                continue;
            }
            let serving = self.tasks.get(id).is_some_and(|t| self.task_ready(t));
            if serving && !self.lb_drain.is_zero() {
                self.leaving.insert(id.clone(), now + self.lb_drain);
            } else {
                self.tasks.remove(id);
            }
        }
        self.dirty = true;
        self.sched_dirty = true;
        Ok(chosen)
    }

    /// Puts a node in or out of maintenance. Returns whether anything changed; unknown nodes are
    /// an error naming the known ones.
    pub(crate) fn set_draining(&mut self, node_id: &str, drain: bool) -> Result<bool, String> {
        if !self.nodes.contains_key(node_id) {
            let known: Vec<&str> = self.nodes.keys().map(String::as_str).collect();
            return Err(format!("node {node_id:?} is not registered with this cell (known: {})", known.join(", ")));
        }
        let changed = if drain { self.draining.insert(node_id.to_string()) } else { self.draining.remove(node_id) };
        self.dirty |= changed;
        self.sched_dirty |= changed;
        Ok(changed)
    }

    /// Every managed app's tasks as load-balancer endpoints, by backend (`be_<group>_<app>`).
    /// A task takes traffic only while its node reports it running and healthy. A task with no
    /// known status (its node is lost, reconnecting, or has not reported it yet, as after a cell
    /// restart) is kept exactly as the load balancer has it, and every backend is `None` (left
    /// alone) until a cell that started without its table has rebuilt it: nothing is changed
    /// on missing information, so a restart never empties a working backend.
    pub(crate) fn lb_endpoints(&self) -> BTreeMap<String, Option<LbIntent>> {
        let mut out = BTreeMap::new();
        for g in self.managed.iter().filter_map(|name| self.groups.get(name)) {
            for a in &g.apps {
                let backend = format!("be_{}_{}", g.name, a.name);
                if self.fresh_start {
                    // The task table is not rebuilt yet: an empty list would empty the backend.
                    out.insert(backend, None);
                    continue;
                }
                let mut intent = LbIntent::default();
                for t in self.tasks.values().filter(|t| t.group == g.name && t.app == a.name) {
                    let known = self
                        .nodes
                        .get(&t.node_id)
                        .filter(|n| n.conn.is_some())
                        .and_then(|n| n.statuses.get(&t.task_id).map(|st| (n, st)));
                    let Some((node, status)) = known else {
                        intent.keep.push(t.task_id.clone());
                        continue;
                    };
                    intent.endpoints.push(crate::lb::Endpoint {
                        name: t.task_id.clone(),
                        addr: node.reg.address,
                        port: t.port,
                        weight: LB_WEIGHT,
                        ready: status.state == TaskState::Running as i32
                            && status.healthy
                            && !status.not_ready
                            && !self.leaving.contains_key(&t.task_id),
                    });
                }
                out.insert(backend, Some(intent));
            }
        }
        out
    }

    pub(crate) fn hello(&self) -> agent::CellHello {
        agent::CellHello {
            site: self.site.clone(),
            agent_version: crate::AGENT_VERSION.to_string(),
            applied_epoch: self.applied_epoch,
        }
    }

    pub(crate) fn report(&self, sequence: u64) -> agent::CellReport {
        let nodes = self
            .nodes
            .iter()
            .map(|(id, n)| {
                let allocated = self
                    .tasks
                    .values()
                    .filter(|t| &t.node_id == id)
                    .fold(Resources::ZERO, |acc, t| acc.plus(&t.resources));
                agent::NodeStatus {
                    node_id: id.clone(),
                    address: n.reg.address.to_string(),
                    capacity: Some(convert::resources_to_proto(&n.reg.capacity)),
                    allocated: Some(convert::resources_to_proto(&allocated)),
                    healthy: n.conn.is_some(),
                    unschedulable: self.draining.contains(id),
                }
            })
            .collect();
        let groups = self
            .managed
            .iter()
            .filter_map(|name| self.groups.get(name))
            .map(|g| agent::GroupStatus {
                group: g.name.clone(),
                applied_epoch: g.epoch,
                apps: g
                    .apps
                    .iter()
                    .map(|a| {
                        let mut tasks: Vec<&TaskRecord> =
                            self.tasks.values().filter(|t| t.group == g.name && t.app == a.name).collect();
                        tasks.sort_by_key(|t| t.seq);
                        agent::AppStatus {
                            app: a.name.clone(),
                            desired: a.instances,
                            instances: tasks.into_iter().map(|t| self.instance_status(t)).collect(),
                            blocker: self.blockers.get(&(g.name.clone(), a.name.clone())).cloned().unwrap_or_default(),
                        }
                    })
                    .collect(),
                replication_lag_ms: self
                    .replication_lag
                    .get(&g.name)
                    .filter(|(_, at)| at.elapsed() <= REPLICATION_LAG_FRESH)
                    .map(|(lag, _)| *lag),
            })
            .collect::<Vec<_>>();
        let groups = self.with_unlisted_tasks(groups);
        agent::CellReport { site: self.site.clone(), applied_epoch: self.applied_epoch, nodes, groups, sequence }
    }

    /// Adds to a report the tasks its groups' specs do not list (an app removed from its group,
    /// a group this cell no longer manages), with a desired count of zero. The federator keeps a
    /// group in this site's desired state while the site reports any task of it, so such tasks
    /// are always either stopped by the cell or visible to operators, never forgotten.
    fn with_unlisted_tasks(&self, mut groups: Vec<agent::GroupStatus>) -> Vec<agent::GroupStatus> {
        let mut unlisted: BTreeMap<(String, String), Vec<&TaskRecord>> = BTreeMap::new();
        for t in self.tasks.values() {
            let listed = groups.iter().any(|g| g.group == t.group && g.apps.iter().any(|a| a.app == t.app));
            if !listed {
                unlisted.entry((t.group.clone(), t.app.clone())).or_default().push(t);
            }
        }
        for ((group, app), mut tasks) in unlisted {
            tasks.sort_by_key(|t| t.seq);
            let status = agent::AppStatus {
                app,
                desired: 0,
                instances: tasks.into_iter().map(|t| self.instance_status(t)).collect(),
                blocker: String::new(),
            };
            match groups.iter_mut().find(|g| g.group == group) {
                Some(g) => g.apps.push(status),
                None => groups.push(agent::GroupStatus {
                    group,
                    applied_epoch: 0,
                    apps: vec![status],
                    replication_lag_ms: None,
                }),
            }
        }
        groups
    }

    fn instance_status(&self, t: &TaskRecord) -> agent::InstanceStatus {
        let node = self.nodes.get(&t.node_id);
        let address = node.map(|n| n.reg.address.to_string()).unwrap_or_default();
        let mut s = agent::InstanceStatus {
            task_id: t.task_id.clone(),
            node_id: t.node_id.clone(),
            address,
            port: u32::from(t.port),
            ..Default::default()
        };
        match node.and_then(|n| n.statuses.get(&t.task_id)) {
            Some(st) => {
                s.pid = st.pid;
                s.state = st.state;
                s.healthy = st.healthy && !st.not_ready;
                s.restarts = st.restarts;
                s.message = st.message.clone();
            }
            None => {
                s.state = TaskState::Starting as i32;
                s.message = match node {
                    Some(n) if n.conn.is_some() => "assigned; waiting for the node to report it".to_string(),
                    _ => "its node is not connected".to_string(),
                };
            }
        }
        if self.leaving.contains_key(&t.task_id) {
            // Still running, but no longer counted as serving: it is being drained.
            s.state = TaskState::Stopping as i32;
            s.healthy = false;
            s.message = "leaving: drained from the load balancer before it is stopped".into();
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    fn desired(epoch: u64, instances: u32) -> agent::DesiredState {
        agent::DesiredState {
            epoch,
            site: "site-a".into(),
            groups: vec![agent::GroupSpec {
                name: "crm-web".into(),
                epoch,
                autoscale_frozen: false,
                replication_lag_app: String::new(),
                replication_lag_path: String::new(),
                apps: vec![agent::AppSpec {
                    name: "web".into(),
                    command: "sample-app".into(),
                    instances,
                    resources: Some(switchyard_proto::common::v1::Resources {
                        cpu_millis: 100,
                        mem_mib: 64,
                        disk_mib: 0,
                    }),
                    env: [("MODE".to_string(), "x".to_string())].into_iter().collect(),
                    ..Default::default()
                }],
            }],
        }
    }

    fn reg(id: &str) -> NodeRegistration {
        NodeRegistration {
            node_id: id.into(),
            address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            capacity: Resources::new(1000, 1024, 0),
            port_min: 9000,
            port_max: 9009,
            attributes: BTreeMap::new(),
        }
    }

    fn assignment(rx: &mut mpsc::Receiver<Result<nodepb::CellToNode, tonic::Status>>) -> nodepb::NodeAssignment {
        match rx.try_recv().expect("an assignment").expect("ok").body {
            Some(nodepb::cell_to_node::Body::Assignment(a)) => a,
            None => panic!("empty message"),
        }
    }

    #[test]
    fn fencing_rejects_older_epochs_and_other_sites() {
        let mut s = CellState::new("site-a".into(), 5, None);
        assert_eq!(s.check_desired(&desired(4, 1)).unwrap_err().reason, "stale_epoch");
        let mut other = desired(6, 1);
        other.site = "site-b".into();
        assert_eq!(s.check_desired(&other).unwrap_err().reason, "wrong_site");
        let ok = s.check_desired(&desired(5, 1)).unwrap();
        assert!(s.commit_desired(ok));
        assert!(!s.commit_desired(s.check_desired(&desired(5, 1)).unwrap()), "same state twice changes nothing");
    }

    #[test]
    fn nothing_is_assigned_before_a_desired_state_is_known() {
        let mut s = CellState::new("site-a".into(), 0, None);
        let (tx, mut rx) = mpsc::channel(4);
        s.register_node(reg("n1"), tx, Instant::now());
        assert!(!s.place(Instant::now(), Duration::from_secs(3)));
        assert_eq!(s.send_assignments(), 0);
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn assignments_carry_the_task_environment_and_are_sent_once() {
        let mut s = CellState::new("site-a".into(), 0, None);
        let (tx, mut rx) = mpsc::channel(4);
        let conn = s.register_node(reg("n1"), tx, Instant::now());
        // The node reports (nothing yet): its tasks' states are known from now on.
        s.heartbeat(conn, nodepb::NodeHeartbeat { node_id: "n1".into(), ..Default::default() }, Instant::now());
        let d = s.check_desired(&desired(3, 2)).unwrap();
        s.commit_desired(d);
        assert!(s.place(Instant::now(), Duration::from_secs(3)));
        assert_eq!(s.send_assignments(), 1);
        let a = assignment(&mut rx);
        assert_eq!((a.generation, a.epoch, a.tasks.len()), (1, 3, 2));
        let t = &a.tasks[0];
        assert_eq!(t.task_id, "crm-web.web.1");
        for (k, v) in [
            ("PORT", "9000"),
            ("HOST", "127.0.0.1"),
            ("SWITCHYARD_SITE", "site-a"),
            ("SWITCHYARD_NODE", "n1"),
            ("SWITCHYARD_GROUP", "crm-web"),
            ("SWITCHYARD_APP", "web"),
            ("SWITCHYARD_TASK_ID", "crm-web.web.1"),
            ("MODE", "x"),
        ] {
            assert_eq!(t.env.get(k).map(String::as_str), Some(v), "{k}");
        }
        assert!(!s.place(Instant::now(), Duration::from_secs(3)));
        assert_eq!(s.send_assignments(), 0, "unchanged task list is not resent");
    }

    #[test]
    fn lost_node_tasks_move_and_restart_keeps_them_in_place() {
        let mut s = CellState::new("site-a".into(), 0, None);
        let t0 = Instant::now();
        let (tx1, _rx1) = mpsc::channel(4);
        let (tx2, _rx2) = mpsc::channel(4);
        let c1 = s.register_node(reg("n1"), tx1, t0);
        s.register_node(reg("n2"), tx2, t0);
        let d = s.check_desired(&desired(1, 2)).unwrap();
        s.commit_desired(d);
        s.place(t0, Duration::from_secs(3));
        let before: BTreeSet<String> = s.tasks.values().map(|t| t.node_id.clone()).collect();
        assert_eq!(before.len(), 2, "spread over both nodes");

        // n2 keeps heartbeating; n1 goes silent.
        let later = t0 + Duration::from_secs(4);
        s.heartbeat(99, nodepb::NodeHeartbeat { node_id: "n1".into(), ..Default::default() }, later);
        let c2 = s.nodes["n2"].conn.as_ref().unwrap().id;
        s.heartbeat(c2, nodepb::NodeHeartbeat { node_id: "n2".into(), ..Default::default() }, later);
        assert_eq!(s.expire_nodes(later, Duration::from_secs(3)), vec!["n1".to_string()]);
        assert!(!s.disconnect("n1", c1), "already lost");
        assert!(s.place(later, Duration::from_secs(3)));
        assert!(s.tasks.values().all(|t| t.node_id == "n2"));
        let ids: BTreeSet<String> = s.tasks.keys().cloned().collect();

        // A restarted cell restores the same tasks and holds placement until n2 reconnects.
        let snap = s.take_snapshot().unwrap();
        let mut r = CellState::new("site-a".into(), 1, Some(snap));
        assert!(!r.all_task_nodes_connected());
        let (tx3, _rx3) = mpsc::channel(4);
        let c3 = r.register_node(reg("n2"), tx3, later);
        assert!(!r.all_task_nodes_connected(), "registered, but its tasks' states are not known yet");
        r.heartbeat(c3, nodepb::NodeHeartbeat { node_id: "n2".into(), ..Default::default() }, later);
        assert!(r.all_task_nodes_connected());
        r.place(later, Duration::from_secs(3));
        assert_eq!(r.tasks.keys().cloned().collect::<BTreeSet<_>>(), ids);
        assert_eq!(r.task_counter, s.task_counter, "task ids never repeat");
    }

    #[test]
    fn groups_absent_from_a_newer_state_keep_their_tasks() {
        let mut s = CellState::new("site-a".into(), 0, None);
        let (tx, mut rx) = mpsc::channel(4);
        s.register_node(reg("n1"), tx, Instant::now());
        let d = s.check_desired(&desired(1, 1)).unwrap();
        s.commit_desired(d);
        s.place(Instant::now(), Duration::from_secs(3));
        s.send_assignments();
        let _ = assignment(&mut rx);

        let empty = agent::DesiredState { epoch: 2, site: "site-a".into(), groups: vec![] };
        let d = s.check_desired(&empty).unwrap();
        s.commit_desired(d);
        s.place(Instant::now(), Duration::from_secs(3));
        assert_eq!(s.tasks.len(), 1);
        assert_eq!(s.send_assignments(), 0, "the node keeps the same list");
        // Still reported (wanted: none), so the federator keeps telling this cell about it.
        let report = s.report(1);
        assert_eq!(report.groups.len(), 1, "{:?}", report.groups);
        assert_eq!(report.groups[0].apps[0].desired, 0);
        assert_eq!(report.groups[0].apps[0].instances.len(), 1);
        assert_eq!(report.nodes[0].allocated.unwrap().cpu_millis, 100);
    }

    #[test]
    fn a_dropped_link_is_reported_lost_once_and_only_after_the_timeout() {
        let mut s = CellState::new("site-a".into(), 0, None);
        let t0 = Instant::now();
        let timeout = Duration::from_secs(3);
        let (tx, _rx) = mpsc::channel(4);
        let conn = s.register_node(reg("n1"), tx, t0);
        assert!(s.disconnect("n1", conn));
        assert!(s.expire_nodes(t0 + Duration::from_secs(2), timeout).is_empty(), "unreachable, not lost yet");
        assert_eq!(s.expire_nodes(t0 + Duration::from_secs(4), timeout), ["n1"]);
        assert!(s.expire_nodes(t0 + Duration::from_secs(9), timeout).is_empty(), "reported once");
        // Back, then silent again: lost again after a new timeout.
        let (tx, _rx2) = mpsc::channel(4);
        s.register_node(reg("n1"), tx, t0 + Duration::from_secs(10));
        assert!(s.expire_nodes(t0 + Duration::from_secs(12), timeout).is_empty());
        assert_eq!(s.expire_nodes(t0 + Duration::from_secs(14), timeout), ["n1"]);
    }
}
