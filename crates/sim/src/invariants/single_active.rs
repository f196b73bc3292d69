//! Invariant 1, single active: an active-passive group never has two sites receiving traffic,
//! in any replica's committed state or in any DNS server's served table. The one exception is
//! the planned traffic ramp of a switchover, which splits traffic between exactly its source
//! and target while the operation is in its `Shifting` phase.

use std::collections::BTreeSet;

use switchyard_core::{AppGroup, Phase, State};

use super::Observed;

/// Whether `sites` is exactly the source and target of a switchover of `g` that is splitting
/// its traffic in a ramp now (`Shifting`).
fn ramping(state: &State, g: &AppGroup, sites: &BTreeSet<&str>) -> bool {
    state.operations.values().any(|op| {
        op.group == g.spec.name
            && op.phase == Phase::Shifting
            && g.operation.as_deref() == Some(op.id.as_str())
            && *sites == BTreeSet::from([op.from.as_str(), op.to.as_str()])
    })
}

pub fn check(o: &Observed) -> Result<(), String> {
    for r in &o.replicas {
        for g in r.state.groups.values() {
            let active = g.placement.active_sites();
            let sites: BTreeSet<&str> = active.iter().map(|s| s.as_str()).collect();
            if active.len() > 1 && !ramping(&r.state, g, &sites) {
                return Err(format!(
                    "replica {} (applied {}) has group {} with traffic on {:?} outside a ramp",
                    r.id, r.state.last_applied, g.spec.name, active
                ));
            }
        }
    }
    for d in &o.dns {
        for (group, sites) in &d.weighted {
            // A served table lags the committed state: a split is fine if it was ever a
            // committed ramp of the group between exactly these two sites.
            let ramp = match sites.as_slice() {
                [a, b] => {
                    o.ramps.iter().any(|(g, from, to)| g == group && ((from == a && to == b) || (from == b && to == a)))
                }
                _ => false,
            };
            if sites.len() > 1 && !ramp {
                return Err(format!("DNS of {} (table {:?}) answers group {group} with {sites:?}", d.site, d.served));
            }
        }
    }
    Ok(())
}
