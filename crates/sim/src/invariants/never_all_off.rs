//! Invariant 2, never all off: every group keeps a site with traffic, in every replica's
//! committed state and in every DNS server's served table (no break-glass in the simulation).

use super::Observed;

pub fn check(o: &Observed) -> Result<(), String> {
    for r in &o.replicas {
        for g in r.state.groups.values() {
            if g.placement.active_sites().is_empty() {
                return Err(format!(
                    "replica {} (applied {}) has group {} with no site receiving traffic",
                    r.id, r.state.last_applied, g.spec.name
                ));
            }
        }
    }
    for d in &o.dns {
        for (group, sites) in &d.weighted {
            if sites.is_empty() {
                return Err(format!("DNS of {} (table {:?}) has no site for group {group}", d.site, d.served));
            }
        }
    }
    Ok(())
}
