//! Dominant Resource Fairness (DRF) across roles: who gets which resources next.
//!
//! Two entry points, both pure and deterministic (same input, same output; ties go to the role
//! whose name sorts first):
//!
//! - [`progressive_fill`] is the task-granular, weighted DRF of the DRF paper: one task at a
//!   time goes to the role with the lowest weighted dominant share (dominant share / weight)
//!   whose next task still fits in what is left. A role whose next task does not fit drops out
//!   (what is left only shrinks, so it never fits later). Cost: O(tasks × log roles).
//! - [`allocate`] is one Mesos-style offer cycle over the nodes of a cell.
//!
//! # Semantics of one [`allocate`] cycle
//!
//! *Allocation.* A role's allocation is everything it holds (its `usage` on every node, in any
//! state) plus what it has been offered so far in this cycle. Shares are dominant shares of the
//! allocation against the cluster total, the sum of `total` over every node in the input
//! (whatever its state, so shares do not jump while a node drains), divided by the role's
//! weight. Reserved resources count toward the allocation once they are used or offered,
//! exactly like unreserved ones; an idle reservation counts for nobody.
//!
//! *Free resources of a node.* Usage of role R on node N is charged to R's reservation on N
//! first and the excess to N's unreserved pool; usage of other roles is charged to the
//! unreserved pool. What is offered is also capped by `total - all usage` on the node, so a
//! node is never over-allocated even if its reservations add up to more than its total.
//! Usage above a node's total is tolerated (free is floored at zero), not an error.
//!
//! *Who may be offered anything.* Only roles listed in `demand`; a role may say the smallest
//! useful amount (`Demand::min_offer`, e.g. its smallest pending task) and is then never
//! offered less (no crumbs). Only nodes that are `Up` offer anything. A role that declined
//! node N with `until_ms > now_ms` is not offered N; filters that have expired, or that name an
//! unknown node or role, are ignored. A role gets at most one offer per node per cycle; the
//! passes below add to the same offer.
//!
//! *Limits.* Every offer is trimmed, per dimension, to `limit - allocation`, so an offer never
//! pushes a role past its limit. A role whose remaining headroom is zero in every dimension,
//! or cannot hold its `min_offer`, is at its limit and gets nothing more in this cycle.
//!
//! The cycle runs three passes over the nodes, in input order (a caller that wants to spread
//! load rotates or shuffles the slice with its own seed):
//!
//! 1. **Reservations.** Each role is offered what is free of its own reservations, and only it
//!    ever is. A reservation for a role not in `roles` is offered to nobody.
//! 2. **Guarantees.** Roles whose allocation does not yet cover their guarantee are served from
//!    the unreserved pool before any fair sharing, lowest weighted share first. Such an offer
//!    is trimmed to what is still missing from the guarantee, raised to `min_offer` in every
//!    dimension (so a half-met guarantee still yields a usable offer).
//! 3. **Fair sharing.** Each node's remaining unreserved resources go to the role with the
//!    lowest weighted share (trimmed by its limit; what the trim leaves goes to the next
//!    role). The role's share is updated after every offer, before the next node, so
//!    fairness holds within the cycle, not just across cycles.
//!
//! Roles wait in binary heaps keyed by (weighted share, name): a cycle costs about
//! O(nodes × log roles + usage + filters). To keep that bound when a node's leftovers are too
//! small for everyone, a node is abandoned for this cycle after
//! [`MAX_UNFIT_CANDIDATES_PER_NODE`] roles in a row found it too small for their `min_offer`.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BinaryHeap};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::model::{Node, NodeId, Resources, Role, RoleName};

/// How many roles in a row may find a node's leftovers smaller than their `min_offer` before
/// the node is left for the next cycle. Bounds a cycle at O(nodes × this × log roles) even
/// when every node holds only crumbs.
pub const MAX_UNFIT_CANDIDATES_PER_NODE: usize = 32;

/// What was wrong with the input; nothing is allocated when any of these is returned.
#[derive(Clone, Debug, PartialEq, Error)]
pub enum DrfError {
    #[error("role `{role}` has weight {weight}; a weight must be a finite number greater than 0")]
    InvalidWeight { role: RoleName, weight: f64 },
    #[error("role `{0}` is listed more than once; role names must be unique")]
    DuplicateRole(RoleName),
    #[error("node `{0}` is listed more than once; node ids must be unique")]
    DuplicateNode(NodeId),
    #[error(
        "usage on node `{node}` names role `{role}`, which is not in the role list; add the role or drop the usage"
    )]
    UnknownRoleInUsage { node: NodeId, role: RoleName },
    #[error(
        "usage of role `{role}` names node `{node}`, which is not in the node list; add the node or drop the usage"
    )]
    UnknownNodeInUsage { node: NodeId, role: RoleName },
    #[error("demand names role `{0}`, which is not in the role list; add the role or drop the demand")]
    UnknownRoleInDemand(RoleName),
    #[error("role `{role}` guarantees {guarantee} but is limited to {limit}; a guarantee must fit within the limit")]
    GuaranteeAboveLimit { role: RoleName, guarantee: Resources, limit: Resources },
}

// ---------------------------------------------------------------------------------------------
// Progressive filling

/// One role's input to [`progressive_fill`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FillRole {
    pub name: RoleName,
    /// Resources one task of this role needs. A zero task means the role asks for nothing.
    pub task: Resources,
    /// Relative share; must be finite and > 0.
    pub weight: f64,
    /// The most tasks the role wants; `None` is as many as fit.
    pub max_tasks: Option<u64>,
}

impl FillRole {
    pub fn new(name: impl Into<RoleName>, task: Resources) -> Self {
        FillRole { name: name.into(), task, weight: 1.0, max_tasks: None }
    }
}

/// The result of [`progressive_fill`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FillOutcome {
    /// Tasks granted, for every input role (zero included).
    pub tasks: BTreeMap<RoleName, u64>,
    /// Resources all granted tasks use together.
    pub consumed: Resources,
}

/// Weighted DRF by progressive filling: repeatedly grant one task to the role with the lowest
/// weighted dominant share (against `total`) whose next task still fits, until no role can
/// take another task.
pub fn progressive_fill(total: Resources, roles: &[FillRole]) -> Result<FillOutcome, DrfError> {
    let order = sorted_unique(roles, |r| r.name.as_str())?;
    for r in roles {
        check_weight(&r.name, r.weight)?;
    }
    let mut granted = vec![0u64; order.len()];
    let mut heap = BinaryHeap::with_capacity(order.len());
    for (rank, &i) in order.iter().enumerate() {
        let r = &roles[i];
        if !r.task.is_zero() && r.max_tasks != Some(0) {
            heap.push(Reverse((Share(0.0), rank)));
        }
    }
    let mut left = total;
    while let Some(Reverse((_, rank))) = heap.pop() {
        let r = &roles[order[rank]];
        // Dropped for good when its task no longer fits: `left` only shrinks.
        let Some(rest) = left.checked_minus(r.task) else { continue };
        left = rest;
        granted[rank] += 1;
        if r.max_tasks.is_some_and(|m| granted[rank] >= m) {
            continue;
        }
        let share = r.task.times(granted[rank]).dominant_share(total) / r.weight;
        heap.push(Reverse((Share(share), rank)));
    }
    let tasks = order.iter().zip(&granted).map(|(&i, &n)| (roles[i].name.clone(), n)).collect();
    Ok(FillOutcome { tasks, consumed: total.minus(left) })
}

// ---------------------------------------------------------------------------------------------
// Offer cycle

/// A role's wish for resources in this cycle. Roles absent from the demand map want nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Demand {
    /// The smallest useful offer (e.g. the role's smallest pending task). Offers smaller than
    /// this in any dimension are not made. Zero accepts any non-empty offer.
    pub min_offer: Resources,
}

/// Role `role` declined node `node`; it is not offered that node again before `until_ms`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeclineFilter {
    pub role: RoleName,
    pub node: NodeId,
    pub until_ms: u64,
}

/// What a role holds on each node before the cycle, keyed by (node, role).
pub type Usage = BTreeMap<(NodeId, RoleName), Resources>;

/// Resources of one node offered to one role.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    pub role: RoleName,
    pub node: NodeId,
    /// Everything offered, reserved part included.
    pub resources: Resources,
    /// The part of `resources` that comes from the role's own reservation on the node.
    pub reserved: Resources,
}

/// Per-role diagnostics of one cycle.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoleReport {
    /// Whether the role was in the demand map.
    pub wants: bool,
    /// What the role held before the cycle (sum of its usage).
    pub held: Resources,
    /// What it was offered in this cycle, and in how many offers.
    pub offered: Resources,
    pub offers: u32,
    /// Dominant share of `held + offered` against the cluster total, and that over the weight.
    pub dominant_share: f64,
    pub weighted_share: f64,
    /// `held + offered` covers the guarantee in every dimension.
    pub guarantee_met: bool,
    /// The role has a limit and cannot be offered anything more (see the module doc).
    pub at_limit: bool,
    /// Up nodes this role was not offered because of a decline filter still in force.
    pub declined_nodes: u32,
}

/// The outcome of one [`allocate`] cycle.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Allocation {
    /// Sorted by node (input order), then role name; at most one per (node, role).
    pub offers: Vec<Offer>,
    /// One report for every input role.
    pub roles: BTreeMap<RoleName, RoleReport>,
    /// The total the shares are computed against.
    pub cluster_total: Resources,
}

/// One offer cycle: decides what each node offers to which role. See the module doc for the
/// exact semantics; returns an error, and nothing else, when the input is inconsistent.
pub fn allocate(
    nodes: &[Node],
    usage: &Usage,
    roles: &[Role],
    demand: &BTreeMap<RoleName, Demand>,
    filters: &[DeclineFilter],
    now_ms: u64,
) -> Result<Allocation, DrfError> {
    let mut cycle = Cycle::new(nodes, usage, roles, demand, filters, now_ms)?;
    cycle.offer_reservations();
    cycle.offer_guarantees();
    cycle.offer_fair_shares();
    Ok(cycle.finish())
}

/// Resources with no bound in any dimension: the headroom of a role without a limit.
const UNBOUNDED: Resources = Resources::new(u64::MAX, u64::MAX, u64::MAX);

fn min_each(a: Resources, b: Resources) -> Resources {
    Resources::new(a.cpu_millis.min(b.cpu_millis), a.mem_mib.min(b.mem_mib), a.disk_mib.min(b.disk_mib))
}

fn max_each(a: Resources, b: Resources) -> Resources {
    Resources::new(a.cpu_millis.max(b.cpu_millis), a.mem_mib.max(b.mem_mib), a.disk_mib.max(b.disk_mib))
}

/// A non-negative share, totally ordered so it can key a heap.
#[derive(Clone, Copy, Debug)]
struct Share(f64);

impl PartialEq for Share {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Share {}
impl PartialOrd for Share {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Share {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// Min-heap of roles by (weighted share, rank); rank order is name order.
type RoleHeap = BinaryHeap<Reverse<(Share, u32)>>;

fn check_weight(role: &str, weight: f64) -> Result<(), DrfError> {
    if weight.is_finite() && weight > 0.0 {
        Ok(())
    } else {
        Err(DrfError::InvalidWeight { role: role.to_string(), weight })
    }
}

/// Indices of `items` sorted by name; an error names the first duplicate.
fn sorted_unique<T>(items: &[T], name: impl Fn(&T) -> &str) -> Result<Vec<usize>, DrfError> {
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by(|&a, &b| name(&items[a]).cmp(name(&items[b])));
    if let Some(w) = order.windows(2).find(|w| name(&items[w[0]]) == name(&items[w[1]])) {
        return Err(DrfError::DuplicateRole(name(&items[w[0]]).to_string()));
    }
    Ok(order)
}

struct RoleState<'a> {
    role: &'a Role,
    /// `Some(min_offer)` when the role wants resources.
    min_offer: Option<Resources>,
    held: Resources,
    /// `held` plus everything offered so far.
    allocated: Resources,
    offered: Resources,
    offers: u32,
    declined_nodes: u32,
}

impl RoleState<'_> {
    fn headroom(&self) -> Resources {
        self.role.limit.map_or(UNBOUNDED, |l| l.minus(self.allocated))
    }

    fn at_limit(&self) -> bool {
        let room = self.headroom();
        self.role.limit.is_some() && (room.is_zero() || !self.min_offer.unwrap_or(Resources::ZERO).fits_in(room))
    }

    /// Wants resources and may still be offered some.
    fn can_take_more(&self) -> bool {
        self.min_offer.is_some() && !self.at_limit()
    }

    fn guarantee_met(&self) -> bool {
        self.role.guarantee.fits_in(self.allocated)
    }
}

/// A node's reservation for one role, and what of it is still free.
struct Slot {
    /// Rank of the role, `None` when the role is unknown (then nobody gets it).
    role: Option<u32>,
    free: Resources,
}

struct NodeState {
    /// `total - all usage - offers so far`.
    free: Resources,
    /// Unreserved resources still free; never more than `free`.
    unreserved_free: Resources,
    /// This node's reservations in `Cycle::slots`.
    slots: std::ops::Range<usize>,
}

struct RawOffer {
    node: u32,
    role: u32,
    resources: Resources,
    reserved: Resources,
}

struct Cycle<'a> {
    nodes: &'a [Node],
    total: Resources,
    /// Indexed by rank (name order).
    roles: Vec<RoleState<'a>>,
    node_states: Vec<NodeState>,
    slots: Vec<Slot>,
    /// Active filters as sorted (node index, role rank).
    declined: Vec<(u32, u32)>,
    offers: Vec<RawOffer>,
    /// Offer index by (node index, role rank), for offers later passes may add to.
    offer_at: BTreeMap<(u32, u32), usize>,
}

impl<'a> Cycle<'a> {
    fn new(
        nodes: &'a [Node],
        usage: &Usage,
        roles: &'a [Role],
        demand: &BTreeMap<RoleName, Demand>,
        filters: &[DeclineFilter],
        now_ms: u64,
    ) -> Result<Self, DrfError> {
        let order = sorted_unique(roles, |r| r.name.as_str())?;
        let mut role_states = Vec::with_capacity(order.len());
        for &i in &order {
            let role = &roles[i];
            check_weight(&role.name, role.weight)?;
            if let Some(limit) = role.limit
                && !role.guarantee.fits_in(limit)
            {
                return Err(DrfError::GuaranteeAboveLimit {
                    role: role.name.clone(),
                    guarantee: role.guarantee,
                    limit,
                });
            }
            role_states.push(RoleState {
                role,
                min_offer: None,
                held: Resources::ZERO,
                allocated: Resources::ZERO,
                offered: Resources::ZERO,
                offers: 0,
                declined_nodes: 0,
            });
        }
        let rank_of = |name: &str| order.binary_search_by(|&i| roles[i].name.as_str().cmp(name)).ok();
        for (name, d) in demand {
            let rank = rank_of(name).ok_or_else(|| DrfError::UnknownRoleInDemand(name.clone()))?;
            role_states[rank].min_offer = Some(d.min_offer);
        }

        let mut node_index: BTreeMap<&str, u32> = BTreeMap::new();
        let mut total = Resources::ZERO;
        let mut node_states = Vec::with_capacity(nodes.len());
        let mut slots = Vec::new();
        for (n, node) in nodes.iter().enumerate() {
            if node_index.insert(node.id.as_str(), n as u32).is_some() {
                return Err(DrfError::DuplicateNode(node.id.clone()));
            }
            total = total.plus(node.total);
            let start = slots.len();
            slots
                .extend(node.reserved.iter().map(|(name, r)| Slot { role: rank_of(name).map(|k| k as u32), free: *r }));
            node_states.push(NodeState {
                free: node.total,
                unreserved_free: node.unreserved(),
                slots: start..slots.len(),
            });
        }

        // Usage is sorted by node id, so consecutive entries usually hit the same node.
        let mut last: Option<(&str, u32)> = None;
        for ((node_id, role_name), &used) in usage {
            let n = match last {
                Some((id, n)) if id == node_id.as_str() => n,
                _ => {
                    let n = *node_index.get(node_id.as_str()).ok_or_else(|| DrfError::UnknownNodeInUsage {
                        node: node_id.clone(),
                        role: role_name.clone(),
                    })?;
                    last = Some((node_id.as_str(), n));
                    n
                }
            };
            let rank = rank_of(role_name)
                .ok_or_else(|| DrfError::UnknownRoleInUsage { node: node_id.clone(), role: role_name.clone() })?;
            let rs = &mut role_states[rank];
            rs.held = rs.held.plus(used);
            let ns = &mut node_states[n as usize];
            ns.free = ns.free.minus(used);
            let mut excess = used;
            if let Some(slot) = slots[ns.slots.clone()].iter_mut().find(|s| s.role == Some(rank as u32)) {
                let within = min_each(used, slot.free);
                slot.free = slot.free.minus(within);
                excess = used.minus(within);
            }
            ns.unreserved_free = ns.unreserved_free.minus(excess);
        }
        for ns in &mut node_states {
            ns.unreserved_free = min_each(ns.unreserved_free, ns.free);
        }
        for rs in &mut role_states {
            rs.allocated = rs.held;
        }

        let mut declined = Vec::new();
        for f in filters.iter().filter(|f| f.until_ms > now_ms) {
            if let (Some(&n), Some(rank)) = (node_index.get(f.node.as_str()), rank_of(&f.role)) {
                declined.push((n, rank as u32));
            }
        }
        declined.sort_unstable();
        declined.dedup();
        for &(n, rank) in &declined {
            if nodes[n as usize].accepts_new_tasks() {
                role_states[rank as usize].declined_nodes += 1;
            }
        }

        Ok(Cycle {
            nodes,
            total,
            roles: role_states,
            node_states,
            slots,
            declined,
            offers: Vec::new(),
            offer_at: BTreeMap::new(),
        })
    }

    fn is_declined(&self, node: u32, rank: u32) -> bool {
        self.declined.binary_search(&(node, rank)).is_ok()
    }

    fn weighted_share(&self, rank: u32) -> Share {
        let rs = &self.roles[rank as usize];
        Share(rs.allocated.dominant_share(self.total) / rs.role.weight)
    }

    fn heap_of(&self, keep: impl Fn(&RoleState<'a>) -> bool) -> RoleHeap {
        (0..self.roles.len() as u32)
            .filter(|&k| keep(&self.roles[k as usize]))
            .map(|k| Reverse((self.weighted_share(k), k)))
            .collect()
    }

    /// What the role was already offered on this node in an earlier pass.
    fn existing_offer(&self, node: u32, rank: u32) -> Resources {
        self.offer_at.get(&(node, rank)).map_or(Resources::ZERO, |&i| self.offers[i].resources)
    }

    /// Records an offer (adding to the role's earlier offer on this node, if any) and charges
    /// it to the role.
    fn grant(&mut self, node: u32, rank: u32, resources: Resources, reserved: Resources) {
        match self.offer_at.get(&(node, rank)) {
            Some(&i) => {
                let o = &mut self.offers[i];
                o.resources = o.resources.plus(resources);
                o.reserved = o.reserved.plus(reserved);
            }
            None => {
                self.offer_at.insert((node, rank), self.offers.len());
                self.offers.push(RawOffer { node, role: rank, resources, reserved });
                self.roles[rank as usize].offers += 1;
            }
        }
        let rs = &mut self.roles[rank as usize];
        rs.allocated = rs.allocated.plus(resources);
        rs.offered = rs.offered.plus(resources);
    }

    /// Pass 1: each role gets what is free of its own reservations.
    fn offer_reservations(&mut self) {
        for n in 0..self.nodes.len() {
            if !self.nodes[n].accepts_new_tasks() {
                continue;
            }
            for s in self.node_states[n].slots.clone() {
                let Some(rank) = self.slots[s].role else { continue };
                let rs = &self.roles[rank as usize];
                if !rs.can_take_more() || self.is_declined(n as u32, rank) {
                    continue;
                }
                let ns = &self.node_states[n];
                let amount = min_each(min_each(self.slots[s].free, ns.free), rs.headroom());
                if amount.is_zero() || !rs.min_offer.unwrap_or(Resources::ZERO).fits_in(amount) {
                    continue;
                }
                self.slots[s].free = self.slots[s].free.minus(amount);
                let ns = &mut self.node_states[n];
                ns.free = ns.free.minus(amount);
                ns.unreserved_free = min_each(ns.unreserved_free, ns.free);
                self.grant(n as u32, rank, amount, amount);
            }
        }
    }

    /// Pass 2: roles below their guarantee, served from unreserved resources first.
    fn offer_guarantees(&mut self) {
        let heap = self.heap_of(|rs| rs.can_take_more() && !rs.guarantee_met());
        self.serve_unreserved(heap, true);
    }

    /// Pass 3: fair sharing of what is left.
    fn offer_fair_shares(&mut self) {
        let heap = self.heap_of(RoleState::can_take_more);
        self.serve_unreserved(heap, false);
    }

    /// Offers each Up node's unreserved resources to the roles in `heap`, lowest weighted
    /// share first; with `to_guarantee`, offers are trimmed to the missing guarantee and roles
    /// leave once it is met.
    fn serve_unreserved(&mut self, mut heap: RoleHeap, to_guarantee: bool) {
        // No role can use less than this: nodes with less free are skipped without a scan.
        let floor = heap
            .iter()
            .map(|Reverse((_, k))| self.roles[*k as usize].min_offer.unwrap_or(Resources::ZERO))
            .reduce(min_each)
            .unwrap_or(Resources::ZERO);
        let mut set_aside: Vec<u32> = Vec::new();
        for n in 0..self.nodes.len() {
            if heap.is_empty() {
                break;
            }
            let node = n as u32;
            if !self.nodes[n].accepts_new_tasks() {
                continue;
            }
            let free = self.node_states[n].unreserved_free;
            if free.is_zero() || !floor.fits_in(free) {
                continue;
            }
            let mut unfit = 0;
            while !self.node_states[n].unreserved_free.is_zero() {
                let Some(Reverse((_, rank))) = heap.pop() else { break };
                if self.is_declined(node, rank) {
                    set_aside.push(rank);
                    continue;
                }
                let rs = &self.roles[rank as usize];
                let min_offer = rs.min_offer.unwrap_or(Resources::ZERO);
                let mut amount = min_each(self.node_states[n].unreserved_free, rs.headroom());
                if to_guarantee {
                    amount = min_each(amount, max_each(rs.role.guarantee.minus(rs.allocated), min_offer));
                }
                if amount.is_zero() || !min_offer.fits_in(self.existing_offer(node, rank).plus(amount)) {
                    set_aside.push(rank);
                    unfit += 1;
                    if unfit >= MAX_UNFIT_CANDIDATES_PER_NODE {
                        break;
                    }
                    continue;
                }
                let ns = &mut self.node_states[n];
                ns.unreserved_free = ns.unreserved_free.minus(amount);
                ns.free = ns.free.minus(amount);
                self.grant(node, rank, amount, Resources::ZERO);
                let rs = &self.roles[rank as usize];
                if rs.can_take_more() && !(to_guarantee && rs.guarantee_met()) {
                    set_aside.push(rank);
                }
            }
            // Back in with their (possibly updated) shares, eligible again from the next node.
            for rank in set_aside.drain(..) {
                heap.push(Reverse((self.weighted_share(rank), rank)));
            }
        }
    }

    fn finish(self) -> Allocation {
        let Cycle { nodes, total, roles, mut offers, .. } = self;
        offers.sort_unstable_by_key(|o| (o.node, o.role));
        let offers = offers
            .into_iter()
            .map(|o| Offer {
                role: roles[o.role as usize].role.name.clone(),
                node: nodes[o.node as usize].id.clone(),
                resources: o.resources,
                reserved: o.reserved,
            })
            .collect();
        let roles = roles
            .iter()
            .map(|rs| {
                let dominant_share = rs.allocated.dominant_share(total);
                let report = RoleReport {
                    wants: rs.min_offer.is_some(),
                    held: rs.held,
                    offered: rs.offered,
                    offers: rs.offers,
                    dominant_share,
                    weighted_share: dominant_share / rs.role.weight,
                    guarantee_met: rs.guarantee_met(),
                    at_limit: rs.at_limit(),
                    declined_nodes: rs.declined_nodes,
                };
                (rs.role.name.clone(), report)
            })
            .collect();
        Allocation { offers, roles, cluster_total: total }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NodeState;

    const GIB: u64 = 1_024;

    fn node(id: &str, cpu_millis: u64, mem_mib: u64) -> Node {
        Node {
            id: id.into(),
            attributes: BTreeMap::new(),
            total: Resources::new(cpu_millis, mem_mib, 0),
            ports: vec![],
            reserved: BTreeMap::new(),
            state: NodeState::Up,
        }
    }

    fn nodes(n: usize, cpu_millis: u64, mem_mib: u64) -> Vec<Node> {
        (0..n).map(|i| node(&format!("n{i:02}"), cpu_millis, mem_mib)).collect()
    }

    fn weighted(name: &str, weight: f64) -> Role {
        Role { weight, ..Role::new(name) }
    }

    fn wants(names: &[&str]) -> BTreeMap<RoleName, Demand> {
        names.iter().map(|n| (n.to_string(), Demand::default())).collect()
    }

    fn offered_to(a: &Allocation, role: &str) -> Resources {
        a.offers.iter().filter(|o| o.role == role).fold(Resources::ZERO, |acc, o| acc.plus(o.resources))
    }

    fn offer_count(a: &Allocation, role: &str) -> usize {
        a.offers.iter().filter(|o| o.role == role).count()
    }

    // ---- progressive_fill

    #[test]
    fn fill_reproduces_the_drf_paper_example() {
        let total = Resources::new(9_000, 18 * GIB, 0);
        let roles =
            [FillRole::new("A", Resources::new(1_000, 4 * GIB, 0)), FillRole::new("B", Resources::new(3_000, GIB, 0))];
        let out = progressive_fill(total, &roles).unwrap();
        assert_eq!(out.tasks["A"], 3);
        assert_eq!(out.tasks["B"], 2);
        let share_a = roles[0].task.times(3).dominant_share(total);
        let share_b = roles[1].task.times(2).dominant_share(total);
        assert!((share_a - 2.0 / 3.0).abs() < 1e-9 && (share_b - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(out.consumed, Resources::new(9_000, 14 * GIB, 0));
    }

    #[test]
    fn fill_gives_twice_the_share_to_twice_the_weight() {
        let total = Resources::new(100_000, 100 * GIB, 0);
        let task = Resources::new(1_000, GIB, 0);
        let roles = [FillRole { weight: 2.0, ..FillRole::new("heavy", task) }, FillRole::new("light", task)];
        let out = progressive_fill(total, &roles).unwrap();
        let (heavy, light) = (out.tasks["heavy"] as i64, out.tasks["light"] as i64);
        assert_eq!(heavy + light, 100, "the cluster is filled");
        // Weighted shares (heavy/2 vs light) differ by at most one task.
        assert!((heavy - 2 * light).abs() <= 2, "heavy {heavy} light {light}");
    }

    #[test]
    fn fill_gives_nothing_to_a_role_that_asks_for_nothing() {
        let total = Resources::new(10_000, 10 * GIB, 0);
        let roles = [
            FillRole::new("idle", Resources::ZERO),
            FillRole { max_tasks: Some(0), ..FillRole::new("capped", Resources::new(1_000, GIB, 0)) },
            FillRole { max_tasks: Some(3), ..FillRole::new("few", Resources::new(1_000, GIB, 0)) },
        ];
        let out = progressive_fill(total, &roles).unwrap();
        assert_eq!((out.tasks["idle"], out.tasks["capped"], out.tasks["few"]), (0, 0, 3));
    }

    #[test]
    fn fill_skips_a_task_that_never_fits_and_serves_the_others() {
        let total = Resources::new(4_000, 4 * GIB, 0);
        let roles = [
            FillRole::new("huge", Resources::new(8_000, GIB, 0)),
            FillRole::new("disk", Resources::new(1, 1, 1)), // the cluster has no disk at all
            FillRole::new("small", Resources::new(1_000, GIB, 0)),
        ];
        let out = progressive_fill(total, &roles).unwrap();
        assert_eq!((out.tasks["huge"], out.tasks["disk"], out.tasks["small"]), (0, 0, 4));
    }

    #[test]
    fn fill_rejects_bad_weights_and_duplicates() {
        let t = Resources::new(1, 1, 0);
        for w in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let err = progressive_fill(t, &[FillRole { weight: w, ..FillRole::new("a", t) }]).unwrap_err();
            assert!(matches!(err, DrfError::InvalidWeight { ref role, .. } if role == "a"), "{err}");
        }
        let err = progressive_fill(t, &[FillRole::new("a", t), FillRole::new("a", t)]).unwrap_err();
        assert_eq!(err, DrfError::DuplicateRole("a".into()));
    }

    // ---- allocate

    #[test]
    fn fair_across_roles_with_different_dominant_resources() {
        // A holds mostly CPU (share 0.30), B mostly memory (share 0.15) on a draining node.
        let mut all = vec![Node { state: NodeState::Draining, ..node("busy", 20_000, 20_000) }];
        all.extend(nodes(10, 2_000, 2_000));
        let usage = Usage::from([
            (("busy".into(), "A".into()), Resources::new(12_000, 2_000, 0)),
            (("busy".into(), "B".into()), Resources::new(2_000, 6_000, 0)),
        ]);
        let roles = [Role::new("A"), Role::new("B")];
        let a = allocate(&all, &usage, &roles, &wants(&["A", "B"]), &[], 0).unwrap();
        // Each whole node adds 0.05 to a share: B catches up with 3 nodes, then they alternate.
        assert_eq!((offer_count(&a, "A"), offer_count(&a, "B")), (4, 6));
        let (sa, sb) = (a.roles["A"].dominant_share, a.roles["B"].dominant_share);
        assert!((sa - 0.5).abs() < 1e-9 && (sb - 0.45).abs() < 1e-9, "{sa} {sb}");
        assert!(a.offers.iter().all(|o| o.resources == Resources::new(2_000, 2_000, 0)));
    }

    #[test]
    fn weight_two_gets_twice_the_share() {
        let all = nodes(30, 4_000, 4_000);
        let roles = [weighted("heavy", 2.0), weighted("light", 1.0)];
        let a = allocate(&all, &Usage::new(), &roles, &wants(&["heavy", "light"]), &[], 0).unwrap();
        let (h, l) = (offer_count(&a, "heavy") as i64, offer_count(&a, "light") as i64);
        assert_eq!(h + l, 30);
        assert!((h - 2 * l).abs() <= 2, "heavy {h} light {l}");
        assert!((a.roles["heavy"].weighted_share - a.roles["light"].weighted_share).abs() <= 1.0 / 30.0);
    }

    #[test]
    fn guarantee_is_served_before_fair_sharing() {
        let all = nodes(10, 4_000, 4_000);
        let roles = [
            Role { guarantee: Resources::new(6_000, 6_000, 0), ..Role::new("gold") },
            weighted("greedy", 100.0), // would win every node on fair share alone
        ];
        let demand = BTreeMap::from([
            ("gold".to_string(), Demand { min_offer: Resources::new(500, 500, 0) }),
            ("greedy".to_string(), Demand::default()),
        ]);
        let a = allocate(&all, &Usage::new(), &roles, &demand, &[], 0).unwrap();
        assert_eq!(offered_to(&a, "gold"), Resources::new(6_000, 6_000, 0), "exactly the guarantee");
        assert!(a.roles["gold"].guarantee_met);
        assert_eq!(
            a.offers[0],
            Offer {
                role: "gold".into(),
                node: "n00".into(),
                resources: Resources::new(4_000, 4_000, 0),
                reserved: Resources::ZERO
            }
        );
        // n01 is split: the missing 2_000 for gold, the rest to greedy.
        let n01: Vec<_> = a.offers.iter().filter(|o| o.node == "n01").map(|o| (o.role.as_str(), o.resources)).collect();
        assert_eq!(n01, [("gold", Resources::new(2_000, 2_000, 0)), ("greedy", Resources::new(2_000, 2_000, 0))]);
        assert_eq!(offered_to(&a, "greedy"), Resources::new(34_000, 34_000, 0));
    }

    #[test]
    fn limit_trims_offers_and_stops_the_role() {
        let all = nodes(4, 4_000, 4_000);
        let roles = [
            Role { weight: 10.0, limit: Some(Resources::new(5_000, 5_000, 0)), ..Role::new("capped") },
            Role::new("other"),
        ];
        let a = allocate(&all, &Usage::new(), &roles, &wants(&["capped", "other"]), &[], 0).unwrap();
        assert_eq!(offered_to(&a, "capped"), Resources::new(5_000, 5_000, 0));
        assert!(a.roles["capped"].at_limit);
        // The trimmed remainder of n02 goes to the next role in the same cycle.
        assert_eq!(offered_to(&a, "other"), Resources::new(11_000, 11_000, 0));

        // A role already holding its limit gets nothing at all.
        let usage = Usage::from([(("n00".into(), "capped".into()), Resources::new(5_000, 5_000, 0))]);
        let big = nodes(4, 8_000, 8_000);
        let a = allocate(&big, &usage, &roles, &wants(&["capped", "other"]), &[], 0).unwrap();
        assert_eq!(offer_count(&a, "capped"), 0);
        assert!(a.roles["capped"].at_limit);
        assert_eq!(a.roles["capped"].held, Resources::new(5_000, 5_000, 0));
    }

    #[test]
    fn reservations_go_only_to_their_role() {
        let mut all = nodes(2, 4_000, 4_000);
        all[0].reserved.insert("db".into(), Resources::new(2_000, 2_000, 0));
        let roles = [Role::new("db"), weighted("web", 100.0)];
        // db wants nothing: its reservation stays idle, web gets only the unreserved half.
        let a = allocate(&all, &Usage::new(), &roles, &wants(&["web"]), &[], 0).unwrap();
        assert_eq!(offered_to(&a, "web"), Resources::new(6_000, 6_000, 0));
        assert_eq!(offer_count(&a, "db"), 0);
        // db wants: it gets its reservation, even though web's weighted share is far lower.
        let a = allocate(&all, &Usage::new(), &roles, &wants(&["db", "web"]), &[], 0).unwrap();
        let db: Vec<_> = a.offers.iter().filter(|o| o.role == "db").collect();
        assert_eq!(db.len(), 1);
        assert_eq!((db[0].node.as_str(), db[0].reserved), ("n00", Resources::new(2_000, 2_000, 0)));
        assert_eq!(offered_to(&a, "web"), Resources::new(6_000, 6_000, 0));
        // db's usage is charged to its reservation first, the excess to the unreserved pool.
        let usage = Usage::from([(("n00".into(), "db".into()), Resources::new(3_000, 1_000, 0))]);
        let a = allocate(&all, &usage, &roles, &wants(&["db", "web"]), &[], 0).unwrap();
        let on_n00: Vec<_> =
            a.offers.iter().filter(|o| o.node == "n00").map(|o| (o.role.as_str(), o.resources, o.reserved)).collect();
        assert_eq!(
            on_n00,
            [
                ("db", Resources::new(0, 1_000, 0), Resources::new(0, 1_000, 0)),
                ("web", Resources::new(1_000, 2_000, 0), Resources::ZERO),
            ]
        );
    }

    #[test]
    fn decline_filters_hold_until_they_expire() {
        let all = nodes(2, 4_000, 4_000);
        // `app` wins n00 on the name tie-break unless its filter keeps n00 from it.
        let roles = [weighted("app", 100.0), Role::new("batch")];
        let filters = [
            DeclineFilter { role: "app".into(), node: "n00".into(), until_ms: 2_000 },
            DeclineFilter { role: "app".into(), node: "nope".into(), until_ms: 9_000 }, // unknown node: ignored
        ];
        let demand = wants(&["app", "batch"]);
        let owner = |a: &Allocation, node: &str| -> Vec<String> {
            a.offers.iter().filter(|o| o.node == node).map(|o| o.role.clone()).collect()
        };
        let a = allocate(&all, &Usage::new(), &roles, &demand, &filters, 1_000).unwrap();
        assert_eq!(owner(&a, "n00"), ["batch"]);
        assert_eq!(owner(&a, "n01"), ["app"]);
        assert_eq!(a.roles["app"].declined_nodes, 1);
        // At and after `until_ms` the filter no longer applies.
        for now in [2_000, 5_000] {
            let a = allocate(&all, &Usage::new(), &roles, &demand, &filters, now).unwrap();
            assert_eq!(owner(&a, "n00"), ["app"], "now {now}");
            assert_eq!(a.roles["app"].declined_nodes, 0);
        }
    }

    #[test]
    fn nodes_that_are_not_up_offer_nothing() {
        let mut all = nodes(3, 4_000, 4_000);
        all[0].state = NodeState::Draining;
        all[2].state = NodeState::Lost;
        all[2].reserved.insert("a".into(), Resources::new(1_000, 1_000, 0));
        let a = allocate(&all, &Usage::new(), &[Role::new("a")], &wants(&["a"]), &[], 0).unwrap();
        let offered: Vec<_> = a.offers.iter().map(|o| o.node.as_str()).collect();
        assert_eq!(offered, ["n01"]);
        assert_eq!(a.cluster_total, Resources::new(12_000, 12_000, 0), "shares count every node");
    }

    #[test]
    fn crumbs_below_min_offer_are_not_offered() {
        let all = nodes(2, 4_000, 4_000);
        let usage = Usage::from([(("n00".into(), "a".into()), Resources::new(3_800, 1_000, 0))]);
        let demand = BTreeMap::from([("a".to_string(), Demand { min_offer: Resources::new(500, 256, 0) })]);
        let a = allocate(&all, &usage, &[Role::new("a")], &demand, &[], 0).unwrap();
        let offered: Vec<_> = a.offers.iter().map(|o| o.node.as_str()).collect();
        assert_eq!(offered, ["n01"]);
    }

    #[test]
    fn roles_that_want_nothing_get_nothing() {
        let all = nodes(2, 4_000, 4_000);
        let a = allocate(&all, &Usage::new(), &[Role::new("a"), Role::new("b")], &wants(&["b"]), &[], 0).unwrap();
        assert_eq!(offer_count(&a, "a"), 0);
        assert!(!a.roles["a"].wants);
        assert_eq!(offer_count(&a, "b"), 2);
    }

    #[test]
    fn same_input_same_output_whatever_the_role_order() {
        let case = random_case(7);
        let first = allocate(&case.nodes, &case.usage, &case.roles, &case.demand, &case.filters, case.now_ms).unwrap();
        let again = allocate(&case.nodes, &case.usage, &case.roles, &case.demand, &case.filters, case.now_ms).unwrap();
        assert_eq!(first, again);
        let mut reversed = case.roles.clone();
        reversed.reverse();
        let swapped = allocate(&case.nodes, &case.usage, &reversed, &case.demand, &case.filters, case.now_ms).unwrap();
        assert_eq!(first, swapped);
    }

    #[test]
    fn bad_input_is_an_error_that_names_the_problem() {
        let all = nodes(1, 1_000, 1_000);
        let none = BTreeMap::new();
        for w in [0.0, -2.0, f64::NAN, f64::INFINITY] {
            let err = allocate(&all, &Usage::new(), &[weighted("w", w)], &none, &[], 0).unwrap_err();
            assert!(err.to_string().contains("role `w` has weight"), "{err}");
        }
        let err = allocate(&all, &Usage::new(), &[Role::new("x"), Role::new("x")], &none, &[], 0).unwrap_err();
        assert_eq!(err, DrfError::DuplicateRole("x".into()));
        let usage = Usage::from([(("n00".into(), "ghost".into()), Resources::new(1, 1, 0))]);
        let err = allocate(&all, &usage, &[Role::new("x")], &none, &[], 0).unwrap_err();
        assert_eq!(
            err.to_string(),
            "usage on node `n00` names role `ghost`, which is not in the role list; add the role or drop the usage"
        );
        let usage = Usage::from([(("n99".into(), "x".into()), Resources::new(1, 1, 0))]);
        let err = allocate(&all, &usage, &[Role::new("x")], &none, &[], 0).unwrap_err();
        assert!(matches!(err, DrfError::UnknownNodeInUsage { .. }), "{err}");
        let err = allocate(&all, &Usage::new(), &[Role::new("x")], &wants(&["y"]), &[], 0).unwrap_err();
        assert_eq!(err, DrfError::UnknownRoleInDemand("y".into()));
        let twice = [all[0].clone(), all[0].clone()];
        let err = allocate(&twice, &Usage::new(), &[Role::new("x")], &none, &[], 0).unwrap_err();
        assert_eq!(err, DrfError::DuplicateNode("n00".into()));
        let bad = Role { guarantee: Resources::new(2, 0, 0), limit: Some(Resources::new(1, 9, 9)), ..Role::new("q") };
        let err = allocate(&all, &Usage::new(), &[bad], &none, &[], 0).unwrap_err();
        assert!(matches!(err, DrfError::GuaranteeAboveLimit { .. }), "{err}");
    }

    // ---- property-style: invariants over many seeded random inputs

    use crate::seeded::SeededRng as Rng;

    fn random_resources(rng: &mut Rng, cpu_millis: u64, mem_mib: u64, disk_mib: u64) -> Resources {
        Resources::new(rng.below(cpu_millis + 1), rng.below(mem_mib + 1), rng.below(disk_mib + 1))
    }

    struct Case {
        nodes: Vec<Node>,
        usage: Usage,
        roles: Vec<Role>,
        demand: BTreeMap<RoleName, Demand>,
        filters: Vec<DeclineFilter>,
        now_ms: u64,
    }

    fn random_case(seed: u64) -> Case {
        let mut rng = Rng(seed);
        let role_count = 1 + rng.below(8) as usize;
        let names: Vec<String> = (0..role_count).map(|i| format!("r{i}")).collect();
        let roles: Vec<Role> = names
            .iter()
            .map(|name| {
                let guarantee =
                    if rng.chance(30) { random_resources(&mut rng, 16_000, 16_000, 100) } else { Resources::ZERO };
                let limit = rng.chance(40).then(|| guarantee.plus(random_resources(&mut rng, 16_000, 16_000, 200)));
                Role { name: name.clone(), weight: [0.5, 1.0, 2.0, 3.0][rng.below(4) as usize], guarantee, limit }
            })
            .collect();
        let states = [NodeState::Up, NodeState::Up, NodeState::Up, NodeState::Draining, NodeState::Lost];
        let nodes: Vec<Node> = (0..1 + rng.below(30))
            .map(|i| {
                let mut n = node(&format!("n{i:02}"), 1_000 + rng.below(16_000), 1_000 + rng.below(16_000));
                n.total.disk_mib = rng.below(300);
                n.state = states[rng.below(states.len() as u64) as usize];
                for _ in 0..rng.below(3) {
                    let r = &names[rng.below(role_count as u64) as usize];
                    n.reserved
                        .insert(r.clone(), random_resources(&mut rng, n.total.cpu_millis / 2, n.total.mem_mib / 2, 50));
                }
                n
            })
            .collect();
        let mut usage = Usage::new();
        for n in &nodes {
            for _ in 0..rng.below(4) {
                let r = &names[rng.below(role_count as u64) as usize];
                usage.insert(
                    (n.id.clone(), r.clone()),
                    random_resources(&mut rng, n.total.cpu_millis / 2, n.total.mem_mib / 2, 60),
                );
            }
        }
        let mut demand = BTreeMap::new();
        for r in names.iter().filter(|_| rng.chance(80)).collect::<Vec<_>>() {
            let min_offer = if rng.chance(50) { random_resources(&mut rng, 3_000, 3_000, 0) } else { Resources::ZERO };
            demand.insert(r.clone(), Demand { min_offer });
        }
        let now_ms = 10_000;
        let filters = (0..rng.below(10))
            .map(|_| DeclineFilter {
                role: names[rng.below(role_count as u64) as usize].clone(),
                node: format!("n{:02}", rng.below(32)),
                until_ms: now_ms - 5_000 + rng.below(10_000),
            })
            .collect();
        Case { nodes, usage, roles, demand, filters, now_ms }
    }

    /// Checks one seeded case; returns (offers, offers with a reserved part, active filters).
    fn check_invariants(seed: u64) -> (usize, usize, usize) {
        let c = random_case(seed);
        let a = allocate(&c.nodes, &c.usage, &c.roles, &c.demand, &c.filters, c.now_ms).unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for o in &a.offers {
            let node = c.nodes.iter().find(|n| n.id == o.node).unwrap();
            assert!(node.accepts_new_tasks(), "seed {seed}: offer on {} which is not Up", o.node);
            assert!(
                seen.insert((o.node.clone(), o.role.clone())),
                "seed {seed}: two offers of {} to {}",
                o.node,
                o.role
            );
            let min = c.demand.get(&o.role).unwrap_or_else(|| panic!("seed {seed}: {} did not ask", o.role)).min_offer;
            assert!(!o.resources.is_zero() && min.fits_in(o.resources), "seed {seed}: crumb {o:?}");
            assert!(
                !c.filters.iter().any(|f| f.role == o.role && f.node == o.node && f.until_ms > c.now_ms),
                "seed {seed}: {} declined {}",
                o.role,
                o.node
            );
            let reserved = node.reserved.get(&o.role).copied().unwrap_or(Resources::ZERO);
            let used = c.usage.get(&(o.node.clone(), o.role.clone())).copied().unwrap_or(Resources::ZERO);
            assert!(o.reserved.fits_in(o.resources), "seed {seed}: {o:?}");
            assert!(o.reserved.fits_in(reserved.minus(used)), "seed {seed}: {o:?} beyond its free reservation");
        }
        for node in &c.nodes {
            let on_node = |f: &dyn Fn(&Offer) -> Resources| {
                a.offers.iter().filter(|o| o.node == node.id).fold(Resources::ZERO, |acc, o| acc.plus(f(o)))
            };
            let mut used = Resources::ZERO;
            let mut unreserved_used = Resources::ZERO;
            for ((n, r), u) in &c.usage {
                if *n == node.id {
                    used = used.plus(*u);
                    unreserved_used = unreserved_used.plus(u.minus(node.reserved.get(r).copied().unwrap_or_default()));
                }
            }
            assert!(
                on_node(&|o| o.resources).fits_in(node.total.minus(used)),
                "seed {seed}: {} over-allocated",
                node.id
            );
            let unreserved_offered = on_node(&|o| o.resources.minus(o.reserved));
            assert!(
                unreserved_offered.fits_in(node.unreserved().minus(unreserved_used)),
                "seed {seed}: {} offered someone else's reservation",
                node.id
            );
        }
        for role in &c.roles {
            let held =
                c.usage.iter().filter(|((_, r), _)| *r == role.name).fold(Resources::ZERO, |acc, (_, u)| acc.plus(*u));
            let offered = offered_to(&a, &role.name);
            let report = &a.roles[&role.name];
            assert_eq!((report.held, report.offered), (held, offered), "seed {seed}: report of {}", role.name);
            if let Some(limit) = role.limit {
                assert!(offered.fits_in(limit.minus(held)), "seed {seed}: {} pushed past its limit", role.name);
            }
        }
        let reserved = a.offers.iter().filter(|o| !o.reserved.is_zero()).count();
        (a.offers.len(), reserved, c.filters.iter().filter(|f| f.until_ms > c.now_ms).count())
    }

    #[test]
    fn invariants_hold_for_many_random_inputs() {
        let mut seen = (0, 0, 0);
        for seed in 0..2_000 {
            let (offers, reserved, filters) = check_invariants(seed);
            seen = (seen.0 + offers, seen.1 + reserved, seen.2 + filters);
        }
        // The generator must exercise what the invariants are about.
        assert!(seen.0 > 10_000 && seen.1 > 500 && seen.2 > 1_000, "{seen:?}");
    }
}
