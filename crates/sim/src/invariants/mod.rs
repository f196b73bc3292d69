//! The invariants of DESIGN.md section 5 that a simulated run can observe, one per file, checked
//! after every step on everything observable: each running replica's committed state, every
//! cell and every DNS server.

pub mod audit_chain;
pub mod convergence;
pub mod failover_convergence;
pub mod fencing;
pub mod never_all_off;
pub mod no_false_failover;
pub mod no_lost_decision;
pub mod single_active;

use std::collections::BTreeMap;

use switchyard_core::{Applied, State};
use switchyard_federator::raft::NodeId;

use crate::parts::{SimCell, SimDns};

/// A write the operator was told succeeded.
#[derive(Clone, Debug)]
pub struct Ack {
    pub index: u64,
    /// Unique per write; lands in the audit record.
    pub reason: String,
    pub applied: Applied,
}

pub struct ReplicaView {
    pub id: NodeId,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub state: State,
}

pub struct CellView {
    pub site: String,
    pub applied_epoch: u64,
    pub applied: Vec<(u64, u64)>,
}

impl CellView {
    pub fn of(c: &SimCell) -> Self {
        CellView { site: c.site.clone(), applied_epoch: c.applied_epoch, applied: c.applied.clone() }
    }
}

pub struct DnsView {
    pub site: String,
    /// (version, epoch) of the served table, if any.
    pub served: Option<(u64, u64)>,
    pub applied: Vec<(u64, u64)>,
    /// Group → sites with traffic in the served table.
    pub weighted: BTreeMap<String, Vec<String>>,
}

impl DnsView {
    pub fn of(d: &SimDns) -> Self {
        DnsView {
            site: d.site.clone(),
            served: d.served.as_ref().map(|t| (t.version(), t.epoch())),
            applied: d.applied.clone(),
            weighted: d.weighted_sites(),
        }
    }
}

/// A closed span of virtual time `[start, end]` (ms since the run began); `None`: still going.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interval(pub u64, pub Option<u64>);

impl Interval {
    /// Whether this span and `[from, to]` share a moment.
    pub fn overlaps(&self, from: u64, to: u64) -> bool {
        self.0 <= to && self.1.is_none_or(|end| end >= from)
    }
}

/// The disaster-recovery family's ground truth, kept by the driver (no replica sees it), and
/// the bounds the checks allow for.
#[derive(Clone, Debug)]
pub struct DrTruth {
    pub detect: switchyard_core::dr::detect::DetectConfig,
    pub guard: switchyard_core::dr::guard::GuardConfig,
    /// How far any replica's clock is off, at most.
    pub skew_bound_ms: u64,
    /// How old a probe's sighting can be when the detector takes it (stamped on arrival).
    pub latency_ms: u64,
    /// Per site, when it was really dead: its ingress refused connections (cell down).
    pub dead: BTreeMap<String, Vec<Interval>>,
    /// Per site, when the replicas' path to it answered "unreachable" (a federator-only cut).
    pub unreachable: BTreeMap<String, Vec<Interval>>,
    /// Virtual time of the observation.
    pub now_ms: u64,
}

/// Everything observable after one step.
pub struct Observed {
    pub step: u32,
    pub replicas: Vec<ReplicaView>,
    pub cells: Vec<CellView>,
    pub dns: Vec<DnsView>,
    pub acks: Vec<Ack>,
    /// (group, source, target) of every traffic ramp committed so far.
    pub ramps: std::collections::BTreeSet<(String, String, String)>,
    /// Ground truth of the disaster-recovery family, when it runs.
    pub dr: Option<DrTruth>,
}

/// Every invariant that must hold at every step; the first broken one with what was seen.
pub fn check_all(o: &Observed) -> Result<(), (&'static str, String)> {
    single_active::check(o).map_err(|e| ("single active", e))?;
    never_all_off::check(o).map_err(|e| ("never all off", e))?;
    no_lost_decision::check(o).map_err(|e| ("no lost decision", e))?;
    fencing::check(o).map_err(|e| ("fencing", e))?;
    audit_chain::check(o).map_err(|e| ("audit chain", e))?;
    no_false_failover::check(o).map_err(|e| ("no false failover", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    //! Each checker catches what it is for (so a passing run means something).

    use std::collections::BTreeMap;

    use switchyard_core::model::{AppGroup, Placement, SiteShare};
    use switchyard_core::{Action, Proposal, State};

    use super::*;

    fn weights(w: &[(&str, u32)]) -> State {
        let mut state = State::default();
        let sites =
            w.iter().map(|(s, w)| (s.to_string(), SiteShare { instances: BTreeMap::new(), weight: *w })).collect();
        let spec = crate::world::group_spec(0, "site-a");
        state.groups.insert(
            "g0".into(),
            AppGroup { spec, placement: Placement { sites, epoch: 1 }, operation: None, previous_spec: None },
        );
        state
    }

    fn observed(state: State) -> Observed {
        Observed {
            step: 0,
            replicas: vec![ReplicaView { id: 1, leader: Some(1), term: 1, state }],
            cells: vec![],
            dns: vec![],
            acks: vec![],
            ramps: Default::default(),
            dr: None,
        }
    }

    #[test]
    fn two_sites_with_traffic_break_single_active() {
        assert!(single_active::check(&observed(weights(&[("site-a", 100), ("site-b", 0)]))).is_ok());
        let err = single_active::check(&observed(weights(&[("site-a", 100), ("site-b", 1)]))).unwrap_err();
        assert!(err.contains("g0"), "{err}");
        let mut o = observed(State::default());
        o.dns.push(DnsView {
            site: "site-a".into(),
            served: Some((3, 3)),
            applied: vec![(3, 3)],
            weighted: BTreeMap::from([("g0".to_string(), vec!["site-a".to_string(), "site-b".to_string()])]),
        });
        assert!(single_active::check(&o).is_err());
    }

    #[test]
    fn no_site_with_traffic_breaks_never_all_off() {
        assert!(never_all_off::check(&observed(weights(&[("site-a", 0)]))).is_err());
        assert!(never_all_off::check(&observed(weights(&[("site-a", 100)]))).is_ok());
    }

    #[test]
    fn an_acknowledged_write_missing_from_the_chain_is_lost() {
        let mut state = State::default();
        let freeze =
            Action::SetFreeze { scope: switchyard_core::FreezeScope::Global, reason: "sim-1".into(), until_ms: None };
        let applied = state.apply(5, &Proposal::new(1, "user:dr-admin", freeze)).expect("freeze applies");
        state.last_applied = 5;
        let mut o = observed(state);
        o.acks.push(Ack { index: 5, reason: "sim-1".into(), applied: applied.clone() });
        assert!(no_lost_decision::check(&o).is_ok());
        o.acks.push(Ack { index: 5, reason: "sim-2".into(), applied });
        assert!(no_lost_decision::check(&o).unwrap_err().contains("sim-2"));
    }

    #[test]
    fn older_or_conflicting_commands_break_fencing() {
        let cell = |applied: Vec<(u64, u64)>| CellView {
            site: "site-a".into(),
            applied_epoch: applied.last().unwrap().0,
            applied,
        };
        let mut o = observed(State::default());
        o.cells.push(cell(vec![(1, 10), (4, 11), (4, 11)]));
        assert!(fencing::check(&o).is_ok());
        o.cells[0] = cell(vec![(4, 10), (3, 11)]);
        assert!(fencing::check(&o).is_err());
        o.cells[0] = cell(vec![(4, 10), (5, 12), (4, 11)]);
        assert!(fencing::check(&o).is_err());
        o.cells.clear();
        o.dns.push(DnsView {
            site: "site-a".into(),
            served: None,
            applied: vec![(5, 5), (6, 4)],
            weighted: BTreeMap::new(),
        });
        assert!(fencing::check(&o).is_err());
    }

    fn truth(dead: Vec<Interval>, unreachable: Vec<Interval>) -> DrTruth {
        DrTruth {
            detect: crate::world::dr_detect(),
            guard: Default::default(),
            skew_bound_ms: 250,
            latency_ms: 1_000,
            dead: BTreeMap::from([("site-a".to_string(), dead)]),
            unreachable: BTreeMap::from([("site-a".to_string(), unreachable)]),
            now_ms: 20_000,
        }
    }

    fn sighting(observer: &str, domain: &str, since: u64, last: u64) -> switchyard_core::dr::detect::Evidence {
        switchyard_core::dr::detect::Evidence {
            observer: observer.into(),
            domain: domain.into(),
            health: switchyard_core::dr::detect::Health::Unhealthy,
            unhealthy_since_ms: Some(crate::net::EPOCH_MS + since),
            last_at_ms: crate::net::EPOCH_MS + last,
            detail: String::new(),
        }
    }

    #[test]
    fn a_declaration_needs_real_sightings_and_a_really_dead_site() {
        let at = crate::net::EPOCH_MS + 13_000;
        let evidence =
            vec![sighting("federator-1", "federator", 10_000, 12_800), sighting("dns:site-b", "dns", 10_200, 12_900)];
        // Dead from 9.9 s on: justified.
        let dead = truth(vec![Interval(9_900, None)], vec![]);
        assert!(no_false_failover::justified(&dead, "site-a", at, &evidence).is_ok());
        // Never dead, only unreachable from the replicas: a false failover, whatever the
        // evidence says (the DNS server's sightings did not happen).
        let cut = truth(vec![], vec![Interval(9_900, None)]);
        let err = no_false_failover::justified(&cut, "site-a", at, &evidence).unwrap_err();
        assert!(err.contains("dns:site-b"), "{err}");
        // Dead only long before: the sightings near the declaration did not happen.
        let old = truth(vec![Interval(1_000, Some(2_000))], vec![]);
        assert!(no_false_failover::justified(&old, "site-a", at, &evidence).is_err());
        // One failure domain is no quorum, and a window not elapsed is no declaration.
        assert!(no_false_failover::justified(&dead, "site-a", at, &evidence[..1]).is_err());
        let early =
            vec![sighting("federator-1", "federator", 11_000, 12_800), sighting("dns:site-b", "dns", 10_200, 12_900)];
        assert!(no_false_failover::justified(&dead, "site-a", at, &early).is_err());
    }
}
