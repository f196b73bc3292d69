//! Constraint-aware task placement: which node each new instance of an app goes to.
//!
//! Input: the nodes, the tasks already running, and requests (`count` more instances of an app,
//! each needing `resources` for its `role`, `ports` host ports, and the app's constraints).
//! Output: a [`PlacementPlan`] the caller applies atomically, plus one aggregated reason per
//! request that could not be fully placed.
//!
//! **Resources.** What a node offers role R is its unreserved free resources plus R's unused
//! reservation there; other roles' reservations are never used. A task consumes its role's
//! reservation first and the unreserved pool for the rest (per dimension). Only nodes that
//! accept new tasks (`Up`) receive instances. Within one plan nothing is over-committed:
//! every placement is booked before the next is chosen, resources and ports alike.
//!
//! **Ports.** Each instance gets the lowest free ports of the node's ranges.
//!
//! **Which running tasks count.** All running tasks on known nodes consume resources and ports.
//! For constraints, tasks on `Lost` nodes do not count (they are being replaced); tasks on
//! `Draining` nodes do (they still run). Tasks on unknown nodes are ignored.
//!
//! **Policy and guarantees.** Requests are served in the order given. For each request:
//! - every placement satisfies all of the request's constraints, counting the app's running
//!   instances and the instances placed earlier in the plan (Marathon semantics, see
//!   [`crate::constraints`]);
//! - spread: among the nodes eligible for the next instance (constraints hold and it fits), the
//!   node with the fewest instances of the app wins, then the one with the largest free share
//!   (free / total, summed over dimensions), then the lowest node index. So a node holding k
//!   instances of an app gets another only when no eligible node holds fewer than k: exact, not
//!   best effort. With a `GROUP_BY`, the value with the fewest instances (ties: lowest value)
//!   is served first, `GROUP_BY`'s own rule keeps values within one of each other, and the
//!   rule above holds among the nodes of the value served;
//! - maximal: if instances stay unplaced, no node could have taken one more (none both admits
//!   the constraints and has room), and the reason says which filter ran out.
//!
//! **Cost.** A request costs O(E log E + k log E) for E candidate nodes and k instances: static
//! constraints (`CLUSTER`, `LIKE`, `UNLIKE`) are evaluated once per distinct attribute value and
//! cached; `CLUSTER`/`LIKE` candidates come straight from a value → nodes index; counted
//! constraints are checked in O(1) from per-value counts; candidates sit in a heap keyed by the
//! spread order, so each placement pops the best node instead of rescanning. A node turned away
//! for good (no room, `UNIQUE`, `MAX_PER`) leaves the heap; only a second `GROUP_BY` on one
//! app makes nodes wait for another look after each placement (O(E) each, a rare shape).
//! A [`Placer`] keeps its books between plans, so app-by-app planning does not rebuild them;
//! [`plan_placement`] rebuilds from `running` every call, which costs O(nodes + tasks).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::constraints::{Constraint, CountHistogram, Operator};
use crate::model::{Node, NodeId, NodeState, PortRange, Resources, RoleName};

/// A task the cell already runs (or has launched).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningTask {
    pub id: String,
    pub app: String,
    pub role: RoleName,
    pub node: NodeId,
    pub resources: Resources,
    pub ports: Vec<u16>,
}

/// `count` more instances of `app`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementRequest {
    pub app: String,
    pub role: RoleName,
    /// Per instance.
    pub resources: Resources,
    /// Host ports each instance needs.
    pub ports: u32,
    pub constraints: Vec<Constraint>,
    pub count: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementPlan {
    /// In the order they were decided: requests in input order, instances in placement order.
    pub placed: Vec<Placed>,
    /// One entry per request that could not be fully placed, in request order.
    pub unplaced: Vec<Unplaced>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placed {
    pub app: String,
    pub node: NodeId,
    /// Host ports assigned to the instance, ascending.
    pub ports: Vec<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unplaced {
    pub app: String,
    pub count: u32,
    /// Why, in operator terms: nodes up, how many match the constraints (and which constraint
    /// rejects how many), and what the closest node has free.
    pub reason: String,
}

/// Plans `requests` against a fresh view of `nodes` and `running`.
pub fn plan_placement(nodes: &[Node], running: &[RunningTask], requests: &[PlacementRequest]) -> PlacementPlan {
    let apps: BTreeSet<Hashed<'_>> = requests.iter().map(|r| hashed(&r.app)).collect();
    Placer::build(nodes, running, Some(&apps)).plan(requests)
}

/// A string keyed by a fixed FNV-1a hash first: map lookups compare integers and touch the
/// bytes only on the final, equal match. Exact (ties fall back to the string) and the same on
/// every run, so it keeps plans deterministic.
type Hashed<'s> = (u64, &'s str);

fn hashed(s: &str) -> Hashed<'_> {
    let hash = s.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3));
    (hash, s)
}

/// Marks "the node lacks this attribute" in value tables.
const NO_VALUE: u32 = u32::MAX;

/// Placement state for one view of the cluster: free resources and ports per node, where each
/// app's instances are, and attribute indexes built on first use.
///
/// [`Placer::plan`] books what it places, i.e. it assumes the caller applies every plan it
/// returns; the next plan starts from there. If a plan is not applied, or the cluster changed
/// otherwise, build a new `Placer` from the observed state (placement is level-triggered).
/// To plan without booking (a dry run), plan on a clone.
#[derive(Clone)]
pub struct Placer<'a> {
    nodes: &'a [Node],
    books: Vec<NodeBook>,
    /// Indexes of nodes that accept new tasks, ascending.
    up: Vec<u32>,
    /// Roles holding a reservation on some node.
    roles: BTreeMap<RoleName, u32>,
    /// Per app: the node of every instance that counts for constraints.
    instances: BTreeMap<String, Vec<u32>>,
    field_ids: BTreeMap<String, usize>,
    fields: Vec<FieldTable>,
    /// Static constraint (by its text) → which attribute values pass it.
    mask_ids: BTreeMap<String, usize>,
    masks: Vec<Mask>,
    /// Instances of the app being placed, per node. All zero between requests.
    app_count: Vec<u32>,
}

/// One attribute across all nodes, with values interned in ascending order.
#[derive(Clone)]
struct FieldTable {
    values: Vec<String>,
    /// Node index → value id, or `NO_VALUE`.
    node_value: Vec<u32>,
    /// Nodes holding each value: `members[starts[v]..starts[v + 1]]`, ascending.
    starts: Vec<u32>,
    members: Vec<u32>,
}

impl FieldTable {
    fn build(nodes: &[Node], name: &str) -> Self {
        let mut pairs: Vec<(&str, u32)> =
            nodes.iter().enumerate().filter_map(|(i, n)| n.attribute(name).map(|v| (v, index_u32(i)))).collect();
        pairs.sort_unstable();
        let mut table = FieldTable {
            values: Vec::new(),
            node_value: vec![NO_VALUE; nodes.len()],
            starts: Vec::new(),
            members: Vec::new(),
        };
        for (i, &(value, node)) in pairs.iter().enumerate() {
            if i == 0 || pairs[i - 1].0 != value {
                table.values.push(value.to_string());
                table.starts.push(index_u32(i));
            }
            table.node_value[node as usize] = index_u32(table.values.len() - 1);
            table.members.push(node);
        }
        table.starts.push(index_u32(pairs.len()));
        table
    }

    fn nodes_with(&self, value: usize) -> &[u32] {
        &self.members[self.starts[value] as usize..self.starts[value + 1] as usize]
    }
}

/// A static constraint evaluated once per distinct value.
#[derive(Clone)]
struct Mask {
    allowed: Vec<bool>,
    missing_ok: bool,
    /// Nodes whose value is allowed (excluding nodes without the attribute).
    nodes: usize,
}

/// A request's constraint resolved against the placer's tables.
struct Resolved<'c> {
    constraint: &'c Constraint,
    field: usize,
    /// Static operators: the mask.
    mask: Option<usize>,
    /// Counted operators: instances per value id, and their histogram.
    counted: Option<Counted>,
}

struct Counted {
    per_value: Vec<u32>,
    histogram: CountHistogram,
    /// `GROUP_BY` rejections are temporary (others catch up); the rest are final within a plan.
    group_by: bool,
}

/// What a node offers, as booked so far.
#[derive(Clone, Debug)]
struct NodeBook {
    total: Resources,
    unreserved_free: Resources,
    /// Unused reservation per role id; usually empty.
    reserved_free: Vec<(u32, Resources)>,
    ports: FreePorts,
    /// `free_share(unreserved_free, total)`, kept current.
    unreserved_share: u32,
}

impl NodeBook {
    fn new(node: &Node, roles: &BTreeMap<RoleName, u32>) -> Self {
        // Reservations beyond the node's total are capped (in role order) so that nothing
        // booked here can exceed what the node has.
        let mut left = node.total;
        let mut reserved_free = Vec::with_capacity(node.reserved.len());
        for (role, amount) in &node.reserved {
            let granted = smaller_each(*amount, left);
            left = left.minus(granted);
            reserved_free.push((roles[role], granted));
        }
        NodeBook {
            total: node.total,
            unreserved_free: left,
            reserved_free,
            ports: FreePorts::new(&node.ports),
            unreserved_share: free_share(left, node.total),
        }
    }

    fn reservation(&self, role: Option<u32>) -> Option<Resources> {
        let role = role?;
        self.reserved_free.iter().find(|(id, _)| *id == role).map(|(_, r)| *r)
    }

    fn available(&self, role: Option<u32>) -> Resources {
        match self.reservation(role) {
            Some(r) => self.unreserved_free.plus(r),
            None => self.unreserved_free,
        }
    }

    fn share(&self, role: Option<u32>) -> u32 {
        match self.reservation(role) {
            Some(r) if !r.is_zero() => free_share(self.unreserved_free.plus(r), self.total),
            _ => self.unreserved_share,
        }
    }

    fn fits(&self, role: Option<u32>, need: Resources, ports: u32) -> bool {
        self.ports.free >= ports && need.fits_in(self.available(role))
    }

    /// Books `amount` for `role`: its reservation first, the unreserved pool for the rest.
    /// Saturates, so running tasks that over-commit a node leave it with nothing free. Call
    /// `refresh_share` before the share is read again.
    fn take(&mut self, role: Option<u32>, amount: Resources) {
        let mut rest = amount;
        if let Some(role) = role
            && let Some((_, reserved)) = self.reserved_free.iter_mut().find(|(id, _)| *id == role)
        {
            let from_reservation = smaller_each(rest, *reserved);
            *reserved = reserved.minus(from_reservation);
            rest = rest.minus(from_reservation);
        }
        self.unreserved_free = self.unreserved_free.minus(rest);
    }

    /// Brings `unreserved_share` up to date after `take`s.
    fn refresh_share(&mut self) {
        self.unreserved_share = free_share(self.unreserved_free, self.total);
    }
}

fn smaller_each(a: Resources, b: Resources) -> Resources {
    Resources::new(a.cpu_millis.min(b.cpu_millis), a.mem_mib.min(b.mem_mib), a.disk_mib.min(b.disk_mib))
}

/// Free fraction of the node, in parts per million, summed over the dimensions it has
/// (so at most 3,000,000). Integer, so the spread order is exact and portable.
fn free_share(free: Resources, total: Resources) -> u32 {
    let ppm = |free: u64, total: u64| -> u32 {
        if total == 0 {
            return 0;
        }
        let free = free.min(total);
        let ppm = match free.checked_mul(1_000_000) {
            Some(scaled) => scaled / total,
            None => u64::try_from(u128::from(free) * 1_000_000 / u128::from(total)).expect("at most 1,000,000"),
        };
        u32::try_from(ppm).expect("a share is at most 1,000,000 ppm")
    };
    ppm(free.cpu_millis, total.cpu_millis) + ppm(free.mem_mib, total.mem_mib) + ppm(free.disk_mib, total.disk_mib)
}

fn index_u32(i: usize) -> u32 {
    u32::try_from(i).expect("fewer than 2^32 nodes and values")
}

/// Free ports of a node as sorted, disjoint ranges; allocation takes from the front.
#[derive(Clone, Debug, Default)]
struct FreePorts {
    ranges: Vec<PortRange>,
    /// Ranges before this one are used up.
    next: usize,
    free: u32,
}

impl FreePorts {
    fn new(ranges: &[PortRange]) -> Self {
        let mut sorted: Vec<PortRange> = ranges.iter().copied().filter(|r| !r.is_empty()).collect();
        sorted.sort_unstable();
        let mut merged: Vec<PortRange> = Vec::with_capacity(sorted.len());
        for r in sorted {
            match merged.last_mut() {
                Some(last) if u32::from(r.min) <= u32::from(last.max) + 1 => last.max = last.max.max(r.max),
                _ => merged.push(r),
            }
        }
        let free = merged.iter().map(|r| r.len()).sum();
        FreePorts { ranges: merged, next: 0, free }
    }

    /// Removes `used` (sorted, deduplicated) from the free ranges; ports outside them are ignored.
    fn remove(&mut self, used: &[u16]) {
        let mut out = Vec::with_capacity(self.ranges.len() + used.len());
        let mut used = used.iter().map(|&p| u32::from(p)).peekable();
        for r in &self.ranges[self.next..] {
            let (mut lo, hi) = (u32::from(r.min), u32::from(r.max));
            while let Some(&p) = used.peek() {
                if p > hi {
                    break;
                }
                used.next();
                if p < lo {
                    continue;
                }
                if p > lo {
                    out.push(port_range(lo, p - 1));
                }
                lo = p + 1;
            }
            if lo <= hi {
                out.push(port_range(lo, hi));
            }
        }
        *self = FreePorts { free: out.iter().map(|r| r.len()).sum(), ranges: out, next: 0 };
    }

    /// The lowest `count` free ports. The caller checked `free >= count`.
    fn take(&mut self, count: u32) -> Vec<u16> {
        assert!(self.free >= count, "take {count} ports with only {} free", self.free);
        let mut out = Vec::with_capacity(count as usize);
        while out.len() < count as usize {
            let r = &mut self.ranges[self.next];
            out.push(r.min);
            if r.min == r.max {
                self.next += 1;
            } else {
                r.min += 1;
            }
        }
        self.free -= count;
        out
    }
}

fn port_range(lo: u32, hi: u32) -> PortRange {
    let port = |p: u32| u16::try_from(p).expect("within a u16 range");
    PortRange { min: port(lo), max: port(hi) }
}

/// Heap key: fewest instances of the app on the node, then largest free share, then lowest
/// node index. Wrapped in `Reverse` for a min-heap.
type Key = (u32, u32, u32);

fn key(app_count: u32, share: u32, node: u32) -> Reverse<Key> {
    Reverse((app_count, u32::MAX - share, node))
}

enum Verdict {
    Admit,
    /// A `GROUP_BY` says not yet.
    Later,
    /// Never within this plan: counts only grow.
    Never,
}

impl<'a> Placer<'a> {
    pub fn new(nodes: &'a [Node], running: &[RunningTask]) -> Self {
        Self::build(nodes, running, None)
    }

    /// `only`: if given, where instances are is recorded for these apps only (the apps about to
    /// be placed); every task still consumes resources and ports.
    fn build(nodes: &'a [Node], running: &[RunningTask], only: Option<&BTreeSet<Hashed<'_>>>) -> Self {
        let mut roles = BTreeMap::new();
        for node in nodes {
            for role in node.reserved.keys() {
                if !roles.contains_key(role) {
                    roles.insert(role.clone(), index_u32(roles.len()));
                }
            }
        }
        let mut books: Vec<NodeBook> = nodes.iter().map(|n| NodeBook::new(n, &roles)).collect();
        let up = (0..nodes.len()).filter(|&i| nodes[i].accepts_new_tasks()).map(index_u32).collect();

        let mut by_id: BTreeMap<Hashed<'_>, u32> = BTreeMap::new();
        for (i, node) in nodes.iter().enumerate() {
            by_id.entry(hashed(&node.id)).or_insert(index_u32(i));
        }
        let mut by_app: BTreeMap<Hashed<'_>, Vec<u32>> = BTreeMap::new();
        let mut used_ports: Vec<Vec<u16>> = vec![Vec::new(); nodes.len()];
        for task in running {
            let Some(&i) = by_id.get(&hashed(&task.node)) else { continue };
            let role = if roles.is_empty() { None } else { roles.get(&task.role).copied() };
            books[i as usize].take(role, task.resources);
            used_ports[i as usize].extend_from_slice(&task.ports);
            if nodes[i as usize].state == NodeState::Lost {
                continue;
            }
            let app = hashed(&task.app);
            if only.is_some_and(|only| !only.contains(&app)) {
                continue;
            }
            by_app.entry(app).or_default().push(i);
        }
        for (book, mut ports) in books.iter_mut().zip(used_ports) {
            book.refresh_share();
            if !ports.is_empty() {
                ports.sort_unstable();
                ports.dedup();
                book.ports.remove(&ports);
            }
        }
        let instances = by_app.into_iter().map(|((_, app), list)| (app.to_string(), list)).collect();
        Placer {
            nodes,
            books,
            up,
            roles,
            instances,
            field_ids: BTreeMap::new(),
            fields: Vec::new(),
            mask_ids: BTreeMap::new(),
            masks: Vec::new(),
            app_count: vec![0; nodes.len()],
        }
    }

    /// Places every request in order, booking each placement as it goes.
    pub fn plan(&mut self, requests: &[PlacementRequest]) -> PlacementPlan {
        let mut plan = PlacementPlan::default();
        for request in requests {
            if let Some(unplaced) = self.place(request, &mut plan.placed) {
                plan.unplaced.push(unplaced);
            }
        }
        plan
    }

    fn field(&mut self, name: &str) -> usize {
        if let Some(&id) = self.field_ids.get(name) {
            return id;
        }
        self.fields.push(FieldTable::build(self.nodes, name));
        self.field_ids.insert(name.to_string(), self.fields.len() - 1);
        self.fields.len() - 1
    }

    fn mask(&mut self, field: usize, constraint: &Constraint) -> usize {
        let text = constraint.to_string();
        if let Some(&id) = self.mask_ids.get(&text) {
            return id;
        }
        let table = &self.fields[field];
        let allowed: Vec<bool> = table.values.iter().map(|v| constraint.matches_attribute(Some(v))).collect();
        let nodes = allowed.iter().enumerate().filter(|(_, ok)| **ok).map(|(v, _)| table.nodes_with(v).len()).sum();
        self.masks.push(Mask { allowed, missing_ok: constraint.matches_attribute(None), nodes });
        self.mask_ids.insert(text, self.masks.len() - 1);
        self.masks.len() - 1
    }

    fn resolve<'c>(&mut self, constraint: &'c Constraint, instances: &[u32]) -> Resolved<'c> {
        let field = self.field(&constraint.field);
        if !constraint.is_counted() {
            let mask = Some(self.mask(field, constraint));
            return Resolved { constraint, field, mask, counted: None };
        }
        let table = &self.fields[field];
        let mut per_value = vec![0u32; table.values.len()];
        for &node in instances {
            let v = table.node_value[node as usize];
            if v != NO_VALUE {
                per_value[v as usize] += 1;
            }
        }
        let mut histogram = CountHistogram::default();
        for &count in &per_value {
            histogram.moved(0, count);
        }
        let group_by = matches!(constraint.op, Operator::GroupBy(_));
        Resolved { constraint, field, mask: None, counted: Some(Counted { per_value, histogram, group_by }) }
    }

    /// Whether `node` passes `r` right now (static part and counted part).
    fn passes(&self, r: &Resolved<'_>, node: usize) -> bool {
        let v = self.fields[r.field].node_value[node];
        if let Some(mask) = r.mask {
            let mask = &self.masks[mask];
            return if v == NO_VALUE { mask.missing_ok } else { mask.allowed[v as usize] };
        }
        let counted = r.counted.as_ref().expect("a constraint is static or counted");
        v != NO_VALUE && r.constraint.admits(counted.per_value[v as usize], counted.histogram.stats())
    }

    /// Places up to `request.count` instances; returns what stayed unplaced, with the reason.
    fn place(&mut self, request: &PlacementRequest, out: &mut Vec<Placed>) -> Option<Unplaced> {
        if request.count == 0 {
            return None;
        }
        let role = self.roles.get(&request.role).copied();
        let mut instances = self.instances.remove(&request.app).unwrap_or_default();
        let mut resolved: Vec<Resolved<'_>> = request.constraints.iter().map(|c| self.resolve(c, &instances)).collect();
        for &node in &instances {
            self.app_count[node as usize] += 1;
        }

        let placed = self.place_instances(request, role, &mut resolved, &mut instances, out);

        for &node in &instances {
            self.app_count[node as usize] = 0;
        }
        let unplaced = (placed < request.count).then(|| Unplaced {
            app: request.app.clone(),
            count: request.count - placed,
            reason: self.explain(request, role, &resolved, placed),
        });
        self.instances.insert(request.app.clone(), instances);
        unplaced
    }

    fn place_instances(
        &mut self,
        request: &PlacementRequest,
        role: Option<u32>,
        resolved: &mut [Resolved<'_>],
        instances: &mut Vec<u32>,
        out: &mut Vec<Placed>,
    ) -> u32 {
        let Placer { nodes, books, up, fields, masks, app_count, .. } = self;
        let fields: &[FieldTable] = fields;

        // Final-or-not verdict of the counted constraints for `node` (which has every counted
        // field: candidates were filtered on that).
        let verdict = |resolved: &[Resolved<'_>], node: usize| -> Verdict {
            let mut later = false;
            for r in resolved {
                let Some(counted) = &r.counted else { continue };
                let v = fields[r.field].node_value[node] as usize;
                if !r.constraint.admits(counted.per_value[v], counted.histogram.stats()) {
                    if !counted.group_by {
                        return Verdict::Never;
                    }
                    later = true;
                }
            }
            if later { Verdict::Later } else { Verdict::Admit }
        };
        let static_ok = |node: usize| -> bool {
            resolved.iter().all(|r| {
                let v = fields[r.field].node_value[node];
                match r.mask {
                    Some(m) if v == NO_VALUE => masks[m].missing_ok,
                    Some(m) => masks[m].allowed[v as usize],
                    None => v != NO_VALUE,
                }
            })
        };

        // Candidates come from the most selective CLUSTER/LIKE value index, else all up nodes.
        let source = resolved
            .iter()
            .filter_map(|r| r.mask.filter(|&m| !masks[m].missing_ok).map(|m| (masks[m].nodes, r.field, m)))
            .min();
        let from_index: Vec<u32>;
        let candidates: &[u32] = match source {
            None => up,
            Some((_, field, m)) => {
                let table = &fields[field];
                from_index = masks[m]
                    .allowed
                    .iter()
                    .enumerate()
                    .filter(|(_, ok)| **ok)
                    .flat_map(|(v, _)| table.nodes_with(v).iter().copied())
                    .filter(|&n| nodes[n as usize].accepts_new_tasks())
                    .collect();
                &from_index
            }
        };

        // With a GROUP_BY, one heap per value of its field (the bucket) and the least-used
        // value is served first; otherwise a single bucket.
        let primary = resolved.iter().position(|r| matches!(r.constraint.op, Operator::GroupBy(_)));
        let bucket_of = |node: usize| primary.map_or(0, |p| fields[resolved[p].field].node_value[node] as usize);
        let buckets = primary.map_or(1, |p| fields[resolved[p].field].values.len());
        let mut pending: Vec<Vec<Reverse<Key>>> = vec![Vec::new(); buckets];
        for &node in candidates {
            let n = node as usize;
            let book = &books[n];
            if !book.fits(role, request.resources, request.ports)
                || !static_ok(n)
                || matches!(verdict(resolved, n), Verdict::Never)
            {
                continue;
            }
            pending[bucket_of(n)].push(key(app_count[n], book.share(role), node));
        }
        let mut heaps: Vec<BinaryHeap<Reverse<Key>>> = pending.into_iter().map(BinaryHeap::from).collect();
        let bucket_count = |resolved: &[Resolved<'_>], bucket: usize| -> u32 {
            primary.map_or(0, |p| resolved[p].counted.as_ref().expect("GROUP_BY is counted").per_value[bucket])
        };
        let mut order: BinaryHeap<Reverse<(u32, usize)>> =
            (0..buckets).filter(|&b| !heaps[b].is_empty()).map(|b| Reverse((bucket_count(resolved, b), b))).collect();

        let mut placed = 0;
        // Nodes a secondary GROUP_BY turned away; they get another look after each placement.
        let mut deferred: Vec<(usize, Reverse<Key>)> = Vec::new();
        while placed < request.count {
            // Invariant: `order` holds exactly the non-empty buckets, each with its count.
            let Some(Reverse((count, bucket))) = order.pop() else { break };
            if let Some(p) = primary {
                let counted = resolved[p].counted.as_ref().expect("GROUP_BY is counted");
                if !resolved[p].constraint.admits(count, counted.histogram.stats()) {
                    // The least-used value with candidates left may not grow, so none may.
                    break;
                }
            }
            let entry = heaps[bucket].pop().expect("buckets in `order` are not empty");
            let n = entry.0.2 as usize;
            match verdict(resolved, n) {
                Verdict::Never => {}
                Verdict::Later => deferred.push((bucket, entry)),
                // Candidates fit when queued and only placements change a node's books, so
                // this is a guard, not a path.
                Verdict::Admit if !books[n].fits(role, request.resources, request.ports) => {}
                Verdict::Admit => {
                    let book = &mut books[n];
                    book.take(role, request.resources);
                    book.refresh_share();
                    let ports = book.ports.take(request.ports);
                    for r in resolved.iter_mut() {
                        if let Some(counted) = &mut r.counted {
                            let v = fields[r.field].node_value[n] as usize;
                            let from = counted.per_value[v];
                            counted.per_value[v] = from + 1;
                            counted.histogram.moved(from, from + 1);
                        }
                    }
                    app_count[n] += 1;
                    instances.push(entry.0.2);
                    out.push(Placed { app: request.app.clone(), node: nodes[n].id.clone(), ports });
                    placed += 1;
                    if book.fits(role, request.resources, request.ports) {
                        heaps[bucket].push(key(app_count[n], book.share(role), entry.0.2));
                    }
                    for (b, entry) in deferred.drain(..) {
                        if heaps[b].is_empty() && b != bucket {
                            order.push(Reverse((bucket_count(resolved, b), b)));
                        }
                        heaps[b].push(entry);
                    }
                }
            }
            if !heaps[bucket].is_empty() {
                order.push(Reverse((bucket_count(resolved, bucket), bucket)));
            }
        }
        placed
    }

    /// The aggregated reason `request` is `placed` short, from the books as they are now.
    fn explain(&self, request: &PlacementRequest, role: Option<u32>, resolved: &[Resolved<'_>], placed: u32) -> String {
        let mut reason =
            format!("{} of {} instances of {} unplaced: ", request.count - placed, request.count, request.app);
        if self.up.is_empty() {
            let _ = write!(reason, "none of {} nodes is up", self.nodes.len());
            return reason;
        }
        let _ = write!(reason, "{} nodes up", self.up.len());

        let mut rejected = vec![0usize; resolved.len()];
        let mut matching = 0usize;
        let mut with_room = 0usize;
        // Most free among matching nodes: cpu, mem, disk, ports as (amount, node).
        let mut most: [Option<(u64, usize)>; 4] = [None; 4];
        for &node in &self.up {
            let n = node as usize;
            let mut ok = true;
            for (i, r) in resolved.iter().enumerate() {
                if !self.passes(r, n) {
                    rejected[i] += 1;
                    ok = false;
                }
            }
            if !ok {
                continue;
            }
            matching += 1;
            let book = &self.books[n];
            with_room += usize::from(book.fits(role, request.resources, request.ports));
            let free = book.available(role);
            for (slot, amount) in
                most.iter_mut().zip([free.cpu_millis, free.mem_mib, free.disk_mib, u64::from(book.ports.free)])
            {
                if slot.is_none_or(|(best, _)| amount > best) {
                    *slot = Some((amount, n));
                }
            }
        }
        debug_assert_eq!(with_room, 0, "placement stopped while a node could take {}", request.app);

        if !resolved.is_empty() {
            let names: Vec<String> = resolved.iter().map(|r| r.constraint.to_string()).collect();
            let list = names.join(", ");
            if matching == 0 {
                let rejections: Vec<String> = names
                    .iter()
                    .zip(&rejected)
                    .filter(|(_, n)| **n > 0)
                    .map(|(name, n)| format!("{name} rejects {n}"))
                    .collect();
                let _ = write!(reason, "; none match constraints [{list}] ({})", rejections.join(", "));
                return reason;
            }
            let verb = if matching == 1 { "matches" } else { "match" };
            let _ = write!(reason, "; {matching} {verb} constraints [{list}]; of those");
        } else {
            reason.push(';');
        }

        let need = request.resources;
        let mut wanted: Vec<String> = Vec::new();
        for (name, amount) in [("cpu_millis", need.cpu_millis), ("mem_mib", need.mem_mib), ("disk_mib", need.disk_mib)]
        {
            if amount > 0 {
                wanted.push(format!("{name}={amount}"));
            }
        }
        let mut need_text = wanted.join(" ");
        if request.ports > 0 {
            let ports = if request.ports == 1 { "1 port".to_string() } else { format!("{} ports", request.ports) };
            need_text = if need_text.is_empty() { ports } else { format!("{need_text} and {ports}") };
        }
        let _ = write!(reason, " none has {need_text} free");

        let short: Vec<String> = [
            ("cpu_millis", need.cpu_millis),
            ("mem_mib", need.mem_mib),
            ("disk_mib", need.disk_mib),
            ("ports", u64::from(request.ports)),
        ]
        .iter()
        .zip(most)
        .filter_map(|((name, amount), best)| {
            let (best, node) = best?;
            (best < *amount).then(|| format!("{name}={best} on {}", self.nodes[node].id))
        })
        .collect();
        if short.is_empty() {
            reason.push_str(" (each amount is free on some node, but not all on one)");
        } else {
            let _ = write!(reason, " (most free: {})", short.join(", "));
        }
        reason
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::constraints::ConstraintIndex;

    fn node(id: &str, attrs: &[(&str, &str)], cpu_millis: u64, mem_mib: u64) -> Node {
        Node {
            id: id.into(),
            attributes: attrs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            total: Resources::new(cpu_millis, mem_mib, 0),
            ports: vec![PortRange { min: 31_000, max: 31_009 }],
            reserved: BTreeMap::new(),
            state: NodeState::Up,
        }
    }

    fn request(app: &str, count: u32, cpu_millis: u64, constraints: &[&str]) -> PlacementRequest {
        PlacementRequest {
            app: app.into(),
            role: "web".into(),
            resources: Resources::new(cpu_millis, 64, 0),
            ports: 0,
            constraints: constraints.iter().map(|c| Constraint::parse(c).unwrap()).collect(),
            count,
        }
    }

    fn task(app: &str, node: &str, cpu_millis: u64) -> RunningTask {
        RunningTask {
            id: format!("{app}.{node}.{cpu_millis}"),
            app: app.into(),
            role: "web".into(),
            node: node.into(),
            resources: Resources::new(cpu_millis, 64, 0),
            ports: vec![],
        }
    }

    /// Instances per node id.
    fn per_node(plan: &PlacementPlan) -> BTreeMap<&str, usize> {
        let mut out = BTreeMap::new();
        for p in &plan.placed {
            *out.entry(p.node.as_str()).or_insert(0) += 1;
        }
        out
    }

    /// Instances per value of `field`.
    fn per_value(plan: &PlacementPlan, nodes: &[Node], field: &str) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for p in &plan.placed {
            let node = nodes.iter().find(|n| n.id == p.node).unwrap();
            *out.entry(node.attribute(field).unwrap().to_string()).or_insert(0) += 1;
        }
        out
    }

    fn zoned(zones: &[(&str, u64)], per_zone: usize) -> Vec<Node> {
        let mut nodes = Vec::new();
        for (zone, cpu) in zones {
            for i in 0..per_zone {
                nodes.push(node(&format!("{zone}-{i}"), &[("zone", zone)], *cpu, 8_192));
            }
        }
        nodes
    }

    #[test]
    fn scale_up_fills_every_node_before_doubling() {
        let nodes: Vec<Node> = (1..=4).map(|i| node(&format!("n{i}"), &[], 4_000, 4_096)).collect();
        let running = vec![task("web", "n1", 100), task("web", "n1", 100)];
        let plan = plan_placement(&nodes, &running, &[request("web", 6, 100, &[])]);
        assert!(plan.unplaced.is_empty());
        let order: Vec<&str> = plan.placed.iter().map(|p| p.node.as_str()).collect();
        assert_eq!(order, ["n2", "n3", "n4", "n2", "n3", "n4"], "n1 already holds 2");
    }

    #[test]
    fn spread_breaks_ties_by_largest_free_share() {
        let nodes = vec![node("n1", &[], 4_000, 4_096), node("n2", &[], 4_000, 4_096), node("n3", &[], 8_000, 8_192)];
        // n1 is half used by another app; n3 is twice the size of n2.
        let running = vec![task("db", "n1", 2_000)];
        let plan = plan_placement(&nodes, &running, &[request("web", 3, 1_000, &[])]);
        let order: Vec<&str> = plan.placed.iter().map(|p| p.node.as_str()).collect();
        assert_eq!(order, ["n2", "n3", "n1"], "n2 and n3 tie on share (ties by index), n1 is half used");
    }

    #[test]
    fn unique_hostname_never_doubles_up_and_reports_what_is_left() {
        let nodes: Vec<Node> = (1..=3).map(|i| node(&format!("n{i}"), &[], 4_000, 4_096)).collect();
        let plan = plan_placement(&nodes, &[], &[request("web", 5, 100, &["hostname:UNIQUE"])]);
        assert_eq!(per_node(&plan), BTreeMap::from([("n1", 1), ("n2", 1), ("n3", 1)]));
        assert_eq!(
            plan.unplaced,
            vec![Unplaced {
                app: "web".into(),
                count: 2,
                reason: "2 of 5 instances of web unplaced: 3 nodes up; none match constraints [hostname:UNIQUE] \
                         (hostname:UNIQUE rejects 3)"
                    .into(),
            }]
        );
        // Running instances count too.
        let plan = plan_placement(&nodes, &[task("web", "n2", 100)], &[request("web", 3, 100, &["hostname:UNIQUE"])]);
        assert_eq!(per_node(&plan), BTreeMap::from([("n1", 1), ("n3", 1)]));
        assert_eq!(plan.unplaced[0].count, 1);
    }

    #[test]
    fn group_by_zone_balances_across_three_zones() {
        // z1 nodes are four times larger: plain spread by free share would favour them.
        let nodes = zoned(&[("z1", 16_000), ("z2", 4_000), ("z3", 4_000)], 3);
        let plan = plan_placement(&nodes, &[], &[request("web", 10, 100, &["zone:GROUP_BY"])]);
        assert_eq!(
            per_value(&plan, &nodes, "zone"),
            BTreeMap::from([("z1".into(), 4), ("z2".into(), 3), ("z3".into(), 3)])
        );
        // Within a zone, spread holds: no node of a zone has 2 while another has 0.
        let counts = per_node(&plan);
        for zone in ["z1", "z2", "z3"] {
            let per: Vec<usize> =
                (0..3).map(|i| counts.get(format!("{zone}-{i}").as_str()).copied().unwrap_or(0)).collect();
            assert!(per.iter().max().unwrap() - per.iter().min().unwrap() <= 1, "{zone}: {per:?}");
        }
        // A skewed start is evened out first: z1 holds 3, so z2 and z3 catch up.
        let running: Vec<RunningTask> = (0..3).map(|i| task("web", &format!("z1-{i}"), 100)).collect();
        let plan = plan_placement(&nodes, &running, &[request("web", 3, 100, &["zone:GROUP_BY"])]);
        assert_eq!(per_value(&plan, &nodes, "zone"), BTreeMap::from([("z2".into(), 2), ("z3".into(), 1)]));
    }

    #[test]
    fn group_by_with_an_expected_count_waits_for_a_full_zone() {
        // z3 has no room for a 500-millicore instance.
        let nodes = zoned(&[("z1", 4_000), ("z2", 4_000), ("z3", 300)], 2);
        let plan = plan_placement(&nodes, &[], &[request("web", 4, 500, &["zone:GROUP_BY:3"])]);
        assert_eq!(per_value(&plan, &nodes, "zone"), BTreeMap::from([("z1".into(), 1), ("z2".into(), 1)]));
        assert_eq!(
            plan.unplaced[0].reason,
            "2 of 4 instances of web unplaced: 6 nodes up; 2 match constraints [zone:GROUP_BY:3]; of those none has \
             cpu_millis=500 mem_mib=64 free (most free: cpu_millis=300 on z3-0)"
        );
        // Without the expected count, an unused value does not hold the others back.
        let plan = plan_placement(&nodes, &[], &[request("web", 4, 500, &["zone:GROUP_BY"])]);
        assert!(plan.unplaced.is_empty());
        assert_eq!(per_value(&plan, &nodes, "zone"), BTreeMap::from([("z1".into(), 2), ("z2".into(), 2)]));
    }

    #[test]
    fn group_by_stops_when_the_least_used_value_is_full() {
        // z2 has room for exactly one instance; z1 may then lead it by one, not more.
        let nodes = vec![node("a", &[("zone", "z1")], 4_000, 4_096), node("b", &[("zone", "z2")], 1_000, 4_096)];
        let plan = plan_placement(&nodes, &[], &[request("web", 4, 1_000, &["zone:GROUP_BY"])]);
        assert_eq!(per_node(&plan), BTreeMap::from([("a", 2), ("b", 1)]));
        assert_eq!(
            plan.unplaced[0].reason,
            "1 of 4 instances of web unplaced: 2 nodes up; 1 matches constraints [zone:GROUP_BY]; of those none has \
             cpu_millis=1000 mem_mib=64 free (most free: cpu_millis=0 on b)"
        );
    }

    #[test]
    fn max_per_rack_caps_each_rack() {
        let mut nodes = Vec::new();
        for rack in ["r1", "r2", "r3"] {
            for i in 0..3 {
                nodes.push(node(&format!("{rack}-{i}"), &[("rack", rack)], 4_000, 4_096));
            }
        }
        let plan = plan_placement(&nodes, &[], &[request("web", 8, 100, &["rack:MAX_PER:2"])]);
        let racks = per_value(&plan, &nodes, "rack");
        assert_eq!(racks, BTreeMap::from([("r1".into(), 2), ("r2".into(), 2), ("r3".into(), 2)]));
        assert!(per_node(&plan).values().all(|&n| n == 1), "spread within racks too");
        assert_eq!(
            plan.unplaced[0].reason,
            "2 of 8 instances of web unplaced: 9 nodes up; none match constraints [rack:MAX_PER:2] \
             (rack:MAX_PER:2 rejects 9)"
        );
    }

    #[test]
    fn cluster_pins_to_one_value() {
        let nodes = vec![
            node("a", &[("rack", "r1")], 4_000, 4_096),
            node("b", &[("rack", "r2")], 4_000, 4_096),
            node("c", &[("rack", "r2")], 4_000, 4_096),
            node("d", &[], 4_000, 4_096),
        ];
        let plan = plan_placement(&nodes, &[], &[request("web", 4, 100, &["rack:CLUSTER:r2"])]);
        assert_eq!(per_node(&plan), BTreeMap::from([("b", 2), ("c", 2)]));
        let plan = plan_placement(&nodes, &[], &[request("web", 1, 100, &["rack:CLUSTER:r9"])]);
        assert_eq!(
            plan.unplaced[0].reason,
            "1 of 1 instances of web unplaced: 4 nodes up; none match constraints [rack:CLUSTER:r9] \
             (rack:CLUSTER:r9 rejects 4)"
        );
    }

    #[test]
    fn like_and_unlike_filter_on_whole_values() {
        let nodes = vec![
            node("ssd", &[("disk", "ssd")], 4_000, 4_096),
            node("ssd2", &[("disk", "ssd-2")], 4_000, 4_096),
            node("hdd", &[("disk", "hdd")], 4_000, 4_096),
            node("bare", &[], 4_000, 4_096),
        ];
        let plan = plan_placement(&nodes, &[], &[request("web", 4, 100, &["disk:LIKE:ssd"])]);
        assert_eq!(per_node(&plan), BTreeMap::from([("ssd", 4)]));
        let plan = plan_placement(&nodes, &[], &[request("web", 3, 100, &["disk:UNLIKE:ssd.*"])]);
        assert_eq!(per_node(&plan), BTreeMap::from([("bare", 1), ("hdd", 2)]), "missing attribute passes UNLIKE");
        let plan = plan_placement(&nodes, &[], &[request("web", 3, 100, &["disk:LIKE:ssd.*", "disk:UNLIKE:ssd"])]);
        assert_eq!(per_node(&plan), BTreeMap::from([("ssd2", 3)]));
    }

    #[test]
    fn reservations_serve_only_their_role() {
        let mut n1 = node("n1", &[], 4_000, 4_096);
        n1.reserved.insert("db".into(), Resources::new(3_000, 3_072, 0));
        let nodes = vec![n1];
        let web = request("web", 1, 2_000, &[]);
        let db = PlacementRequest { app: "pg".into(), role: "db".into(), count: 3, ..web.clone() };

        let plan = plan_placement(&nodes, &[], std::slice::from_ref(&web));
        assert_eq!(
            plan.unplaced[0].reason,
            "1 of 1 instances of web unplaced: 1 nodes up; none has cpu_millis=2000 mem_mib=64 free \
             (most free: cpu_millis=1000 on n1)"
        );
        // db may use its reservation plus the unreserved rest: 4,000 millicores, two instances.
        let plan = plan_placement(&nodes, &[], std::slice::from_ref(&db));
        assert_eq!(plan.placed.len(), 2);
        assert_eq!(plan.unplaced[0].count, 1);
        // A db task beyond its reservation eats into the unreserved pool web sees.
        let big_db = RunningTask { role: "db".into(), ..task("pg", "n1", 3_500) };
        let plan = plan_placement(&nodes, &[big_db], &[request("web", 1, 600, &[])]);
        assert!(plan.unplaced[0].reason.ends_with("(most free: cpu_millis=500 on n1)"), "{}", plan.unplaced[0].reason);
        // A web task never touches db's reservation.
        let plan = plan_placement(&nodes, &[task("web", "n1", 1_000)], std::slice::from_ref(&db));
        assert_eq!(plan.placed.len(), 1, "db sees 3,000 reserved + 0 unreserved");
    }

    #[test]
    fn draining_and_lost_nodes_get_nothing_and_lost_tasks_do_not_count() {
        let mut nodes = vec![
            node("n1", &[("rack", "r1")], 4_000, 4_096),
            node("n2", &[("rack", "r2")], 4_000, 4_096),
            node("n3", &[("rack", "r3")], 4_000, 4_096),
            node("n4", &[("rack", "r2")], 4_000, 4_096),
            node("n5", &[("rack", "r3")], 4_000, 4_096),
        ];
        nodes[1].state = NodeState::Draining;
        nodes[2].state = NodeState::Lost;
        let plan = plan_placement(&nodes, &[], &[request("web", 6, 100, &[])]);
        assert_eq!(per_node(&plan), BTreeMap::from([("n1", 2), ("n4", 2), ("n5", 2)]));
        // The draining node's instance still holds r2; the lost node's is being replaced.
        let running = vec![task("web", "n2", 100), task("web", "n3", 100)];
        let plan = plan_placement(&nodes, &running, &[request("web", 3, 100, &["rack:UNIQUE"])]);
        assert_eq!(per_node(&plan), BTreeMap::from([("n1", 1), ("n5", 1)]));
        assert_eq!(plan.unplaced[0].count, 1);
        for n in &mut nodes {
            n.state = NodeState::Draining;
        }
        let plan = plan_placement(&nodes, &[], &[request("web", 2, 100, &[])]);
        assert_eq!(plan.unplaced[0].reason, "2 of 2 instances of web unplaced: none of 5 nodes is up");
    }

    #[test]
    fn ports_are_the_lowest_free_and_run_out() {
        let mut n1 = node("n1", &[], 4_000, 4_096);
        n1.ports = vec![PortRange { min: 31_005, max: 31_005 }, PortRange { min: 31_000, max: 31_002 }];
        let nodes = vec![n1];
        let running = vec![RunningTask { ports: vec![31_000, 31_002], ..task("db", "n1", 100) }];
        let one_port = PlacementRequest { ports: 1, ..request("web", 3, 100, &[]) };
        let plan = plan_placement(&nodes, &running, &[one_port]);
        let ports: Vec<&[u16]> = plan.placed.iter().map(|p| p.ports.as_slice()).collect();
        assert_eq!(ports, [&[31_001][..], &[31_005][..]]);
        assert_eq!(
            plan.unplaced[0].reason,
            "1 of 3 instances of web unplaced: 1 nodes up; none has cpu_millis=100 mem_mib=64 and 1 port free \
             (most free: ports=0 on n1)"
        );
        let two_ports = PlacementRequest { ports: 2, ..request("web", 1, 100, &[]) };
        let plan = plan_placement(&nodes, &[], &[two_ports]);
        assert_eq!(plan.placed[0].ports, vec![31_000, 31_001]);
    }

    #[test]
    fn one_plan_never_overcommits_across_requests() {
        let nodes = vec![node("n1", &[], 1_000, 4_096)];
        let plan = plan_placement(&nodes, &[], &[request("a", 1, 600, &[]), request("b", 1, 600, &[])]);
        assert_eq!(plan.placed.len(), 1);
        assert_eq!(plan.placed[0].app, "a");
        assert_eq!(plan.unplaced[0].app, "b");
    }

    #[test]
    fn reason_names_matching_nodes_constraints_and_the_closest_node() {
        let mut nodes = vec![
            node("n1", &[("rack", "r1")], 1_000, 4_096),
            node("n2", &[("rack", "r2")], 1_000, 4_096),
            node("n3", &[("rack", "r1")], 300, 4_096),
            node("n4", &[("rack", "r2")], 200, 4_096),
            node("n5", &[("rack", "r3")], 100, 4_096),
            node("n6", &[("rack", "r3")], 300, 4_096),
        ];
        nodes.push(Node { state: NodeState::Draining, ..node("n7", &[("rack", "r3")], 9_000, 9_000) });
        let web = PlacementRequest {
            resources: Resources::new(500, 256, 0),
            ports: 1,
            ..request("web", 5, 0, &["rack:GROUP_BY", "hostname:UNIQUE"])
        };
        let plan = plan_placement(&nodes, &[], &[web]);
        assert_eq!(per_node(&plan), BTreeMap::from([("n1", 1), ("n2", 1)]));
        assert_eq!(
            plan.unplaced[0].reason,
            "3 of 5 instances of web unplaced: 6 nodes up; 4 match constraints [rack:GROUP_BY, hostname:UNIQUE]; \
             of those none has cpu_millis=500 mem_mib=256 and 1 port free (most free: cpu_millis=300 on n3)"
        );
    }

    #[test]
    fn plans_are_deterministic_and_incremental_plans_match_a_fresh_placer() {
        let mut rng = Rng(7);
        let (nodes, running) = random_cluster(&mut rng);
        let requests = random_requests(&mut rng);
        let whole = plan_placement(&nodes, &running, &requests);
        assert_eq!(whole, plan_placement(&nodes, &running, &requests));
        assert!(!whole.placed.is_empty());

        // Plan request by request on one placer; then check the second half against a placer
        // rebuilt from the running tasks plus the first half's placements.
        let mut placer = Placer::new(&nodes, &running);
        let (first, second) = requests.split_at(requests.len() / 2);
        let plan_first = placer.plan(first);
        let plan_second = placer.plan(second);
        let mut joined = plan_first.clone();
        joined.placed.extend(plan_second.placed.clone());
        joined.unplaced.extend(plan_second.unplaced.clone());
        assert_eq!(joined, whole);

        let mut applied = running.clone();
        let mut placed = plan_first.placed.iter();
        for r in first {
            let unplaced = plan_first.unplaced.iter().find(|u| u.app == r.app).map_or(0, |u| u.count);
            for p in placed.by_ref().take((r.count - unplaced) as usize) {
                applied.push(RunningTask {
                    id: format!("t{}", applied.len()),
                    app: p.app.clone(),
                    role: r.role.clone(),
                    node: p.node.clone(),
                    resources: r.resources,
                    ports: p.ports.clone(),
                });
            }
        }
        assert_eq!(plan_placement(&nodes, &applied, second), plan_second);
    }

    #[test]
    fn random_plans_never_overcommit_and_always_honour_constraints() {
        let (mut placed, mut constrained, mut short) = (0, 0, 0);
        for seed in 0..300 {
            let mut rng = Rng(seed);
            let (nodes, running) = random_cluster(&mut rng);
            let requests = random_requests(&mut rng);
            let plan = plan_placement(&nodes, &running, &requests);
            check_plan(&nodes, &running, &requests, &plan, seed);
            placed += plan.placed.len();
            constrained += requests.iter().filter(|r| !r.constraints.is_empty() && r.count > 0).count();
            short += plan.unplaced.len();
        }
        // The generator must exercise both outcomes, or the checks above prove little.
        eprintln!("random plans: {placed} placed, {constrained} constrained requests, {short} short");
        assert!(placed > 2_000 && constrained > 300 && short > 200, "{placed} {constrained} {short}");
    }

    use crate::seeded::SeededRng as Rng;

    const RANDOM_CONSTRAINTS: &[&str] = &[
        "hostname:UNIQUE",
        "rack:UNIQUE",
        "rack:MAX_PER:2",
        "zone:MAX_PER:3",
        "zone:GROUP_BY",
        "zone:GROUP_BY:3",
        "rack:GROUP_BY",
        "disk:LIKE:ssd",
        "disk:UNLIKE:ssd",
        "rack:CLUSTER:r1",
        "hostname:LIKE:n1?[0-9]",
        "zone:LIKE:z[01]",
    ];

    fn random_cluster(rng: &mut Rng) -> (Vec<Node>, Vec<RunningTask>) {
        let mut nodes = Vec::new();
        for i in 0..(8 + rng.below(25)) {
            let mut attributes = BTreeMap::new();
            if !rng.chance(10) {
                attributes.insert("rack".to_string(), format!("r{}", rng.below(5)));
            }
            attributes.insert("zone".to_string(), format!("z{}", rng.below(3)));
            if !rng.chance(20) {
                attributes.insert("disk".to_string(), if rng.chance(50) { "ssd" } else { "hdd" }.to_string());
            }
            let total = Resources::new(500 * (1 + rng.below(12)), 512 * (1 + rng.below(16)), 100 * rng.below(3));
            let mut reserved = BTreeMap::new();
            if rng.chance(30) {
                reserved.insert("db".to_string(), Resources::new(total.cpu_millis / 2, total.mem_mib / 3, 0));
            }
            let ports = (0..rng.below(3))
                .map(|_| {
                    let min = 31_000 + rng.below(12) as u16;
                    PortRange { min, max: min + rng.below(4) as u16 }
                })
                .collect();
            let state = match rng.below(10) {
                0 => NodeState::Draining,
                1 => NodeState::Lost,
                _ => NodeState::Up,
            };
            nodes.push(Node { id: format!("n{i}"), attributes, total, ports, reserved, state });
        }
        let mut ledger = Ledger::new(&nodes);
        let mut running = Vec::new();
        for t in 0..rng.below(30) {
            let n = rng.below(nodes.len() as u64) as usize;
            let role = if rng.chance(40) { "db" } else { "web" };
            let resources = Resources::new(100 * (1 + rng.below(10)), 128 * (1 + rng.below(8)), 0);
            if !ledger.fits(n, role, resources) {
                continue;
            }
            let free = ledger.free_ports(n);
            let ports = if !free.is_empty() && rng.chance(50) {
                vec![free[rng.below(free.len() as u64) as usize]]
            } else {
                vec![]
            };
            let task = RunningTask {
                id: format!("t{t}"),
                app: format!("a{}", rng.below(5)),
                role: role.to_string(),
                node: nodes[n].id.clone(),
                resources,
                ports,
            };
            ledger.add(n, &task.role, task.resources, &task.ports);
            running.push(task);
        }
        (nodes, running)
    }

    /// Requests for distinct apps (so the checker can tell whose placements are whose).
    fn random_requests(rng: &mut Rng) -> Vec<PlacementRequest> {
        let mut apps: Vec<usize> = (0..6).collect();
        for i in (1..apps.len()).rev() {
            apps.swap(i, rng.below(i as u64 + 1) as usize);
        }
        apps.truncate(1 + rng.below(6) as usize);
        apps.into_iter()
            .map(|a| PlacementRequest {
                app: format!("a{a}"),
                role: if rng.chance(30) { "db" } else { "web" }.to_string(),
                resources: Resources::new(100 * rng.below(12), 128 * rng.below(10), 50 * rng.below(2)),
                ports: rng.below(3) as u32,
                constraints: (0..rng.below(3))
                    .map(|_| {
                        Constraint::parse(RANDOM_CONSTRAINTS[rng.below(RANDOM_CONSTRAINTS.len() as u64) as usize])
                            .unwrap()
                    })
                    .collect(),
                count: rng.below(16) as u32,
            })
            .collect()
    }

    /// An independent model of what a node can still take: usage per role, and used ports.
    struct Ledger<'a> {
        nodes: &'a [Node],
        used: BTreeMap<(usize, String), Resources>,
        ports: BTreeMap<usize, BTreeSet<u16>>,
    }

    impl<'a> Ledger<'a> {
        fn new(nodes: &'a [Node]) -> Self {
            Ledger { nodes, used: BTreeMap::new(), ports: BTreeMap::new() }
        }

        /// Each role uses its reservation first; what spills over, summed, must fit in the
        /// unreserved part.
        fn fits(&self, n: usize, role: &str, extra: Resources) -> bool {
            let node = &self.nodes[n];
            let mut usage: BTreeMap<&str, Resources> =
                self.used.iter().filter(|((m, _), _)| *m == n).map(|((_, r), u)| (r.as_str(), *u)).collect();
            let mine = usage.entry(role).or_default();
            *mine = mine.plus(extra);
            let spill = usage.iter().fold(Resources::ZERO, |acc, (r, u)| {
                acc.plus(u.minus(node.reserved.get(*r).copied().unwrap_or_default()))
            });
            spill.fits_in(node.unreserved())
        }

        fn free_ports(&self, n: usize) -> Vec<u16> {
            let all: BTreeSet<u16> =
                self.nodes[n].ports.iter().filter(|r| !r.is_empty()).flat_map(|r| r.min..=r.max).collect();
            let used = self.ports.get(&n);
            all.into_iter().filter(|p| used.is_none_or(|u| !u.contains(p))).collect()
        }

        fn add(&mut self, n: usize, role: &str, amount: Resources, ports: &[u16]) {
            let slot = self.used.entry((n, role.to_string())).or_default();
            *slot = slot.plus(amount);
            let used = self.ports.entry(n).or_default();
            for p in ports {
                assert!(used.insert(*p), "port {p} on {} handed out twice", self.nodes[n].id);
            }
        }
    }

    fn check_plan(
        nodes: &[Node],
        running: &[RunningTask],
        requests: &[PlacementRequest],
        plan: &PlacementPlan,
        seed: u64,
    ) {
        let index_of = |id: &str| nodes.iter().position(|n| n.id == id).unwrap();
        let mut ledger = Ledger::new(nodes);
        let mut instances: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for t in running {
            let n = index_of(&t.node);
            ledger.add(n, &t.role, t.resources, &t.ports);
            if nodes[n].state != NodeState::Lost {
                instances.entry(t.app.as_str()).or_default().push(n);
            }
        }
        let mut placed = plan.placed.iter();
        let mut unplaced = plan.unplaced.iter().peekable();
        for r in requests {
            let missing = match unplaced.peek() {
                Some(u) if u.app == r.app => unplaced.next().unwrap().count,
                _ => 0,
            };
            assert!(missing <= r.count, "seed {seed}");
            let mut index = ConstraintIndex::new(r.constraints.clone());
            let mut on_node = vec![0u32; nodes.len()];
            let mine = instances.entry(r.app.as_str()).or_default();
            for &n in mine.iter() {
                index.add(&nodes[n]);
                on_node[n] += 1;
            }
            let spread_is_exact = !r.constraints.iter().any(|c| matches!(c.op, Operator::GroupBy(_)));
            let eligible = |ledger: &Ledger<'_>, index: &ConstraintIndex, m: usize| {
                nodes[m].accepts_new_tasks()
                    && index.admits(&nodes[m])
                    && ledger.fits(m, &r.role, r.resources)
                    && ledger.free_ports(m).len() >= r.ports as usize
            };
            for p in placed.by_ref().take((r.count - missing) as usize) {
                let n = index_of(&p.node);
                let ctx = format!("seed {seed}: {} on {}", r.app, p.node);
                assert_eq!(p.app, r.app, "{ctx}");
                assert!(nodes[n].accepts_new_tasks(), "{ctx}: node does not accept tasks");
                assert!(ledger.fits(n, &r.role, r.resources), "{ctx}: over-commit");
                assert_eq!(p.ports, ledger.free_ports(n)[..r.ports as usize], "{ctx}: not the lowest free ports");
                assert_eq!(index.first_violation(&nodes[n]), None, "{ctx}: constraint broken");
                if spread_is_exact {
                    for m in 0..nodes.len() {
                        if on_node[m] < on_node[n] {
                            assert!(!eligible(&ledger, &index, m), "{ctx}: {} had fewer and room", nodes[m].id);
                        }
                    }
                }
                ledger.add(n, &r.role, r.resources, &p.ports);
                index.add(&nodes[n]);
                on_node[n] += 1;
                mine.push(n);
            }
            if missing > 0 {
                for (m, node) in nodes.iter().enumerate() {
                    assert!(
                        !eligible(&ledger, &index, m),
                        "seed {seed}: {} left unplaced but {} could take one",
                        r.app,
                        node.id
                    );
                }
            }
        }
        assert!(placed.next().is_none() && unplaced.next().is_none(), "seed {seed}: plan has entries for no request");
    }
}
