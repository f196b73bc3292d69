//! Where tasks run: a pure function from (nodes, current tasks, demand) to a plan of tasks to
//! start and stop. No I/O, no clock, no randomness, no hash-map iteration, so the same inputs
//! always give the same plan and the cell's I/O layer only executes what this decides.
//!
//! Rules:
//! - only groups listed in the demand are touched; tasks of any other group keep running where
//!   they are and keep their resources and ports reserved;
//! - tasks of a demanded group on an unhealthy or unknown node are stopped and replaced;
//! - a draining node (maintenance) gets no new tasks; the tasks on it are replaced elsewhere
//!   and stopped only once the app has its full count of ready tasks on other nodes
//!   (make-before-break), so a drain never lowers an app's serving capacity;
//! - tasks of an app no longer in its group are stopped;
//! - scale-down stops the newest tasks (highest `seq`) first;
//! - scale-up places on healthy nodes that have the resources and a free port, preferring the
//!   node with the fewest instances of the same app (spread), then the most free cpu, then the
//!   node id; a node is never overcommitted, and what cannot be placed becomes a blocker.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::Resources;

/// A node as the planner sees it.
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
}

/// A task that exists in the cell's table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskView {
    pub task_id: String,
    pub group: String,
    pub app: String,
    pub node_id: String,
    pub port: u16,
    pub resources: Resources,
    pub seq: u64,
    /// Running and passing its health check on its node.
    pub ready: bool,
    /// Already leaving (being drained from the load balancer before it is stopped): it still
    /// holds its node's resources and port, but is neither counted nor stopped again.
    pub stopping: bool,
}

/// A group the desired state manages, with the instances wanted per app.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupDemand {
    pub group: String,
    pub apps: Vec<AppDemand>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppDemand {
    pub app: String,
    pub instances: u32,
    pub resources: Resources,
}

/// A task to create on `node_id`, listening on `port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedStart {
    pub group: String,
    pub app: String,
    pub node_id: String,
    pub port: u16,
    pub resources: Resources,
}

/// Why an app cannot reach its instance count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocker {
    pub group: String,
    pub app: String,
    pub placed: u32,
    pub desired: u32,
    pub message: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlacementPlan {
    pub start: Vec<PlannedStart>,
    /// Task ids, sorted.
    pub stop: Vec<String>,
    pub blockers: Vec<Blocker>,
}

impl PlacementPlan {
    pub fn is_empty(&self) -> bool {
        self.start.is_empty() && self.stop.is_empty()
    }
}

/// What a healthy node has left while the plan is being built.
struct NodeRoom<'a> {
    node: &'a NodeView,
    free: Resources,
    used_ports: BTreeSet<u16>,
    /// Instances per (group, app) on this node.
    instances: BTreeMap<(&'a str, &'a str), u32>,
}

impl NodeRoom<'_> {
    fn free_port(&self) -> Option<u16> {
        (self.node.port_min..=self.node.port_max).find(|p| !self.used_ports.contains(p))
    }
}

/// Plans the next step towards `demand`. See the module documentation for the rules.
pub fn plan_placement(nodes: &[NodeView], tasks: &[TaskView], demand: &[GroupDemand]) -> PlacementPlan {
    let demanded: BTreeMap<&str, BTreeMap<&str, &AppDemand>> =
        demand.iter().map(|g| (g.group.as_str(), g.apps.iter().map(|a| (a.app.as_str(), a)).collect())).collect();
    let healthy: BTreeMap<&str, &NodeView> = nodes.iter().filter(|n| n.healthy).map(|n| (n.id.as_str(), n)).collect();

    let mut stop: BTreeSet<&str> = BTreeSet::new();
    // Live tasks of every demanded app, oldest first; those on draining nodes apart.
    let mut live: BTreeMap<(&str, &str), Vec<&TaskView>> = BTreeMap::new();
    let mut leaving: BTreeMap<(&str, &str), Vec<&TaskView>> = BTreeMap::new();
    for task in tasks {
        if task.stopping {
            continue;
        }
        let Some(apps) = demanded.get(task.group.as_str()) else { continue };
        let Some(node) = healthy.get(task.node_id.as_str()).filter(|_| apps.contains_key(task.app.as_str())) else {
            stop.insert(&task.task_id);
            continue;
        };
        let bucket = if node.draining { &mut leaving } else { &mut live };
        bucket.entry((&task.group, &task.app)).or_default().push(task);
    }
    for ((group, app), list) in &mut live {
        list.sort_by(|a, b| (a.seq, &a.task_id).cmp(&(b.seq, &b.task_id)));
        let wanted = demanded[group][app].instances as usize;
        if list.len() > wanted {
            for task in list.drain(wanted..) {
                stop.insert(&task.task_id);
            }
        }
    }
    // Tasks on draining nodes go once their replacements are ready (or they are surplus).
    for (key, list) in &leaving {
        let wanted = demanded[key.0][key.1].instances as usize;
        let ready_elsewhere = live.get(key).map_or(0, |l| l.iter().filter(|t| t.ready).count());
        if ready_elsewhere >= wanted {
            stop.extend(list.iter().map(|t| t.task_id.as_str()));
        }
    }

    // Room left on each healthy node once the stops are done. Tasks of groups outside the
    // demand still hold their resources and ports.
    let mut rooms: BTreeMap<&str, NodeRoom<'_>> = healthy
        .iter()
        .filter(|(_, n)| !n.draining && n.reachable)
        .map(|(id, n)| {
            (*id, NodeRoom { node: n, free: n.capacity, used_ports: BTreeSet::new(), instances: BTreeMap::new() })
        })
        .collect();
    for task in tasks.iter().filter(|t| !stop.contains(t.task_id.as_str())) {
        if let Some(room) = rooms.get_mut(task.node_id.as_str()) {
            room.free = room.free.minus(&task.resources);
            room.used_ports.insert(task.port);
            *room.instances.entry((&task.group, &task.app)).or_default() += 1;
        }
    }

    let mut start = Vec::new();
    let mut blockers = Vec::new();
    for (group, apps) in &demanded {
        for (app, want) in apps {
            let have = live.get(&(*group, *app)).map_or(0, Vec::len) as u32;
            let mut placed = have;
            while placed < want.instances {
                match choose_node(&rooms, group, app, &want.resources) {
                    Ok((node_id, port)) => {
                        let room = rooms.get_mut(node_id).expect("chosen node has a room");
                        room.free = room.free.minus(&want.resources);
                        room.used_ports.insert(port);
                        *room.instances.entry((group, app)).or_default() += 1;
                        start.push(PlannedStart {
                            group: group.to_string(),
                            app: app.to_string(),
                            node_id: node_id.to_string(),
                            port,
                            resources: want.resources,
                        });
                        placed += 1;
                    }
                    Err(shortage) => {
                        blockers.push(Blocker {
                            group: group.to_string(),
                            app: app.to_string(),
                            placed,
                            desired: want.instances,
                            message: shortage.describe(group, app, &want.resources, placed, want.instances),
                        });
                        break;
                    }
                }
            }
        }
    }

    PlacementPlan { start, stop: stop.into_iter().map(str::to_string).collect(), blockers }
}

enum Shortage {
    NoHealthyNode,
    Resources,
    Ports,
}

impl Shortage {
    fn describe(&self, group: &str, app: &str, need: &Resources, placed: u32, desired: u32) -> String {
        let mut amounts = format!("{} cpu_millis and {} mem_mib", need.cpu_millis, need.mem_mib);
        if need.disk_mib > 0 {
            amounts =
                format!("{} cpu_millis, {} mem_mib and {} disk_mib", need.cpu_millis, need.mem_mib, need.disk_mib);
        }
        let progress = format!("{placed} of {desired} instances placed");
        match self {
            Shortage::NoHealthyNode => {
                format!("no healthy node outside maintenance to place {group}/{app} on ({progress})")
            }
            Shortage::Resources => format!("no node has {amounts} free for {group}/{app} ({progress})"),
            Shortage::Ports => {
                format!("no node with {amounts} free has a free port left in its range for {group}/{app} ({progress})")
            }
        }
    }
}

/// Lower is better: fewer instances of the same app, more free cpu, more free memory, node id.
type Rank<'a> = (u32, std::cmp::Reverse<u64>, std::cmp::Reverse<u64>, &'a str);

fn choose_node<'a>(
    rooms: &BTreeMap<&'a str, NodeRoom<'a>>,
    group: &str,
    app: &str,
    need: &Resources,
) -> Result<(&'a str, u16), Shortage> {
    if rooms.is_empty() {
        return Err(Shortage::NoHealthyNode);
    }
    let mut best: Option<(Rank<'a>, u16)> = None;
    let mut lacked_only_ports = false;
    for (id, room) in rooms {
        if !need.fits_in(&room.free) {
            continue;
        }
        let Some(port) = room.free_port() else {
            lacked_only_ports = true;
            continue;
        };
        let same_app = room.instances.get(&(group, app)).copied().unwrap_or(0);
        let rank = (same_app, std::cmp::Reverse(room.free.cpu_millis), std::cmp::Reverse(room.free.mem_mib), *id);
        if best.as_ref().is_none_or(|(r, _)| rank < *r) {
            best = Some((rank, port));
        }
    }
    match best {
        Some(((_, _, _, id), port)) => Ok((id, port)),
        None if lacked_only_ports => Err(Shortage::Ports),
        None => Err(Shortage::Resources),
    }
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
        }
    }

    fn task(id: &str, group: &str, app: &str, node: &str, port: u16, res: Resources, seq: u64) -> TaskView {
        TaskView {
            task_id: id.into(),
            group: group.into(),
            app: app.into(),
            node_id: node.into(),
            port,
            resources: res,
            seq,
            ready: true,
            stopping: false,
        }
    }

    fn demand(group: &str, app: &str, instances: u32, res: Resources) -> GroupDemand {
        GroupDemand { group: group.into(), apps: vec![AppDemand { app: app.into(), instances, resources: res }] }
    }

    const WEB: Resources = Resources { cpu_millis: 500, mem_mib: 128, disk_mib: 0 };

    /// Applies a plan to a task list the way the cell does, naming new tasks `t<seq>`.
    fn apply(tasks: &[TaskView], plan: &PlacementPlan, next_seq: &mut u64) -> Vec<TaskView> {
        let mut out: Vec<TaskView> = tasks.iter().filter(|t| !plan.stop.contains(&t.task_id)).cloned().collect();
        for s in &plan.start {
            *next_seq += 1;
            out.push(task(&format!("t{next_seq}"), &s.group, &s.app, &s.node_id, s.port, s.resources, *next_seq));
        }
        out
    }

    fn used_on(tasks: &[TaskView], node: &str) -> Resources {
        tasks.iter().filter(|t| t.node_id == node).fold(Resources::ZERO, |acc, t| acc.plus(&t.resources))
    }

    #[test]
    fn scale_up_spreads_over_nodes_with_distinct_ports() {
        let nodes = [node("n1", 2000, 1024, (9000, 9009)), node("n2", 2000, 1024, (9000, 9009))];
        let plan = plan_placement(&nodes, &[], &[demand("crm-web", "web", 3, WEB)]);
        assert!(plan.stop.is_empty() && plan.blockers.is_empty());
        let placed: Vec<(&str, u16)> = plan.start.iter().map(|s| (s.node_id.as_str(), s.port)).collect();
        assert_eq!(placed, vec![("n1", 9000), ("n2", 9000), ("n1", 9001)]);
    }

    #[test]
    fn converged_state_plans_nothing() {
        let nodes = [node("n1", 2000, 1024, (9000, 9009)), node("n2", 2000, 1024, (9000, 9009))];
        let d = [demand("g", "web", 3, WEB)];
        let mut seq = 0;
        let tasks = apply(&[], &plan_placement(&nodes, &[], &d), &mut seq);
        let again = plan_placement(&nodes, &tasks, &d);
        assert!(again.is_empty(), "{again:?}");
        assert!(again.blockers.is_empty());
    }

    #[test]
    fn scale_down_stops_newest_first() {
        let nodes = [node("n1", 4000, 4096, (9000, 9009))];
        let tasks = [
            task("a", "g", "web", "n1", 9000, WEB, 7),
            task("b", "g", "web", "n1", 9001, WEB, 3),
            task("c", "g", "web", "n1", 9002, WEB, 9),
        ];
        let plan = plan_placement(&nodes, &tasks, &[demand("g", "web", 1, WEB)]);
        assert_eq!(plan.stop, vec!["a".to_string(), "c".to_string()]);
        assert!(plan.start.is_empty());

        let to_zero = plan_placement(&nodes, &tasks, &[demand("g", "web", 0, WEB)]);
        assert_eq!(to_zero.stop.len(), 3);
    }

    #[test]
    fn no_capacity_gives_a_blocker_and_never_overcommits() {
        // Room for exactly two instances on n1 and one on n2.
        let nodes = [node("n1", 1000, 1024, (9000, 9009)), node("n2", 600, 1024, (9000, 9009))];
        let plan = plan_placement(&nodes, &[], &[demand("crm-web", "web", 5, WEB)]);
        assert_eq!(plan.start.len(), 3);
        let mut seq = 0;
        let tasks = apply(&[], &plan, &mut seq);
        for n in &nodes {
            assert!(used_on(&tasks, &n.id).fits_in(&n.capacity), "{} overcommitted", n.id);
        }
        assert_eq!(plan.blockers.len(), 1);
        let b = &plan.blockers[0];
        assert_eq!((b.placed, b.desired), (3, 5));
        assert_eq!(
            b.message,
            "no node has 500 cpu_millis and 128 mem_mib free for crm-web/web (3 of 5 instances placed)"
        );
    }

    #[test]
    fn memory_alone_can_block() {
        let nodes = [node("n1", 8000, 100, (9000, 9009))];
        let plan = plan_placement(&nodes, &[], &[demand("g", "web", 1, WEB)]);
        assert!(plan.start.is_empty());
        assert_eq!(plan.blockers.len(), 1);
    }

    #[test]
    fn no_healthy_node_is_named_as_such() {
        let mut n = node("n1", 8000, 8000, (9000, 9009));
        n.healthy = false;
        let plan = plan_placement(&[n], &[], &[demand("g", "web", 2, WEB)]);
        assert!(plan.start.is_empty());
        assert!(plan.blockers[0].message.starts_with("no healthy node"), "{}", plan.blockers[0].message);
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
        let plan = plan_placement(&nodes, &tasks, &[demand("g", "web", 3, WEB)]);
        assert_eq!(plan.stop, vec!["a".to_string(), "gone".to_string()]);
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
        let plan = plan_placement(&nodes, &tasks, &[demand("g", "web", 2, WEB)]);
        assert!(plan.stop.is_empty());
        assert_eq!(plan.start.len(), 1);
        assert_eq!((plan.start[0].node_id.as_str(), plan.start[0].port), ("n2", 9001));
        assert_eq!(plan.blockers.len(), 1);
    }

    #[test]
    fn apps_removed_from_a_group_are_stopped() {
        let nodes = [node("n1", 4000, 4096, (9000, 9009))];
        let tasks = [task("a", "g", "web", "n1", 9000, WEB, 1), task("b", "g", "worker", "n1", 9001, WEB, 2)];
        let plan = plan_placement(&nodes, &tasks, &[demand("g", "web", 1, WEB)]);
        assert_eq!(plan.stop, vec!["b".to_string()]);
        assert!(plan.start.is_empty());
    }

    #[test]
    fn port_exhaustion_blocks_with_a_port_message() {
        let nodes = [node("n1", 8000, 8000, (9000, 9001))];
        let plan = plan_placement(&nodes, &[], &[demand("g", "web", 3, WEB)]);
        let ports: Vec<u16> = plan.start.iter().map(|s| s.port).collect();
        assert_eq!(ports, vec![9000, 9001]);
        assert_eq!(plan.blockers.len(), 1);
        assert!(plan.blockers[0].message.contains("free port"), "{}", plan.blockers[0].message);
    }

    #[test]
    fn ports_freed_by_stopped_tasks_are_reused() {
        let nodes = [node("n1", 8000, 8000, (9000, 9000))];
        let tasks = [task("old", "g", "worker", "n1", 9000, WEB, 1)];
        // "worker" leaves the group and "web" arrives: the port is handed over in one plan.
        let plan = plan_placement(&nodes, &tasks, &[demand("g", "web", 1, WEB)]);
        assert_eq!(plan.stop, vec!["old".to_string()]);
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
        let first = plan_placement(&nodes, &tasks, &d);
        let mut rn = nodes.clone();
        rn.reverse();
        let mut rt = tasks.clone();
        rt.reverse();
        let mut rd = d.clone();
        rd.reverse();
        assert_eq!(plan_placement(&rn, &rt, &rd), first);
        assert_eq!(plan_placement(&nodes, &tasks, &d), first);
    }

    #[test]
    fn repeated_planning_converges_without_overcommit() {
        let nodes = [node("n1", 2000, 2048, (9000, 9003)), node("n2", 1500, 2048, (9000, 9003))];
        let mut seq = 0;
        let mut tasks = Vec::new();
        for wanted in [4u32, 7, 2, 0, 5] {
            let d = [demand("g", "web", wanted, WEB), demand("h", "api", 1, Resources::new(250, 64, 0))];
            tasks = apply(&tasks, &plan_placement(&nodes, &tasks, &d), &mut seq);
            assert!(plan_placement(&nodes, &tasks, &d).is_empty(), "not converged at {wanted}");
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
        let plan = plan_placement(&nodes, std::slice::from_ref(&on_a), &d);
        assert_eq!(plan.start.len(), 1);
        assert_eq!(plan.start[0].node_id, "b");
        assert!(plan.stop.is_empty(), "{plan:?}");

        // Replacement placed but not ready yet: still nothing stopped, nothing more started.
        let mut on_b = task("g.web.2", "g", "web", "b", 100, r, 2);
        on_b.ready = false;
        let plan = plan_placement(&nodes, &[on_a.clone(), on_b.clone()], &d);
        assert!(plan.is_empty(), "{plan:?}");

        // Replacement ready: the task on the draining node is stopped.
        on_b.ready = true;
        let plan = plan_placement(&nodes, &[on_a, on_b], &d);
        assert_eq!(plan.stop, ["g.web.1"]);
        assert!(plan.start.is_empty());
    }

    #[test]
    fn drain_without_room_elsewhere_keeps_the_task_and_says_why() {
        let r = Resources::new(800, 64, 0);
        let nodes = [draining(node("a", 1000, 1000, (100, 110))), node("b", 500, 1000, (100, 110))];
        let plan = plan_placement(&nodes, &[task("g.web.1", "g", "web", "a", 100, r, 1)], &[demand("g", "web", 1, r)]);
        assert!(plan.stop.is_empty(), "the only instance keeps serving: {plan:?}");
        assert_eq!(plan.blockers.len(), 1);
        assert!(plan.blockers[0].message.contains("no node has 800 cpu_millis"), "{}", plan.blockers[0].message);
    }

    #[test]
    fn unreachable_node_keeps_its_tasks_but_gets_nothing_new() {
        let r = Resources::new(100, 64, 0);
        let mut a = node("a", 1000, 1000, (100, 110));
        a.reachable = false;
        let nodes = [a, node("b", 1000, 1000, (100, 110))];
        let on_a = task("g.web.1", "g", "web", "a", 100, r, 1);
        // Scale to 2: the task on the unreachable node counts; the new one goes to b.
        let plan = plan_placement(&nodes, std::slice::from_ref(&on_a), &[demand("g", "web", 2, r)]);
        assert!(plan.stop.is_empty(), "{plan:?}");
        assert_eq!(plan.start.iter().map(|s| s.node_id.as_str()).collect::<Vec<_>>(), ["b"]);
        // Once it is lost (past the node timeout) its task is replaced.
        let mut lost = nodes.clone();
        lost[0].healthy = false;
        let plan = plan_placement(&lost, &[on_a], &[demand("g", "web", 1, r)]);
        assert_eq!(plan.stop, ["g.web.1"]);
        assert_eq!(plan.start[0].node_id, "b");
    }
}
