//! Invariant 1, single active: an active-passive group never has two sites receiving traffic,
//! in any replica's committed state or in any DNS server's served table.

use super::Observed;

pub fn check(o: &Observed) -> Result<(), String> {
    for r in &o.replicas {
        for g in r.state.groups.values() {
            let active = g.placement.active_sites();
            if active.len() > 1 {
                return Err(format!(
                    "replica {} (applied {}) has group {} with traffic on {:?}",
                    r.id, r.state.last_applied, g.spec.name, active
                ));
            }
        }
    }
    for d in &o.dns {
        for (group, sites) in &d.weighted {
            if sites.len() > 1 {
                return Err(format!("DNS of {} (table {:?}) answers group {group} with {sites:?}", d.site, d.served));
            }
        }
    }
    Ok(())
}
