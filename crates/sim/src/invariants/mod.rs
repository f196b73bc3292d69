//! The invariants of DESIGN.md section 5 that a simulated run can observe, one per file, checked
//! after every step on everything observable: each running replica's committed state, every
//! cell and every DNS server.

pub mod audit_chain;
pub mod convergence;
pub mod fencing;
pub mod never_all_off;
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

/// Everything observable after one step.
pub struct Observed {
    pub step: u32,
    pub replicas: Vec<ReplicaView>,
    pub cells: Vec<CellView>,
    pub dns: Vec<DnsView>,
    pub acks: Vec<Ack>,
    /// (group, source, target) of every traffic ramp committed so far.
    pub ramps: std::collections::BTreeSet<(String, String, String)>,
}

/// Every invariant that must hold at every step; the first broken one with what was seen.
pub fn check_all(o: &Observed) -> Result<(), (&'static str, String)> {
    single_active::check(o).map_err(|e| ("single active", e))?;
    never_all_off::check(o).map_err(|e| ("never all off", e))?;
    no_lost_decision::check(o).map_err(|e| ("no lost decision", e))?;
    fencing::check(o).map_err(|e| ("fencing", e))?;
    audit_chain::check(o).map_err(|e| ("audit chain", e))?;
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
}
