//! Invariant 7, convergence: after faults stop there is one leader that every replica follows,
//! every replica has applied the same log, no operation is still running, and every DNS server
//! serves and every cell runs what the committed state says.

use super::Observed;

pub fn check(o: &Observed) -> Result<(), String> {
    let Some(first) = o.replicas.first() else { return Err("no replica is running".into()) };
    let leader = first.leader.ok_or("no leader")?;
    for r in &o.replicas {
        if r.leader != Some(leader) || r.term != first.term {
            return Err(format!(
                "replica {} follows {:?} in term {}, replica {} follows {leader} in term {}",
                r.id, r.leader, r.term, first.id, first.term
            ));
        }
        if r.state.last_applied != first.state.last_applied {
            return Err(format!(
                "replica {} applied {}, replica {} applied {}",
                r.id, r.state.last_applied, first.id, first.state.last_applied
            ));
        }
    }
    let state = &first.state;
    if let Some(op) = state.operations.values().find(|op| op.is_running()) {
        return Err(format!("operation {} still running in {}", op.id, op.phase.as_str()));
    }
    for d in &o.dns {
        if d.served.map(|(v, _)| v) != Some(state.routing_version) {
            return Err(format!(
                "DNS of {} serves {:?}, committed version is {}",
                d.site, d.served, state.routing_version
            ));
        }
    }
    for c in &o.cells {
        if c.applied_epoch != state.max_epoch() {
            return Err(format!("cell of {} is at epoch {}, committed {}", c.site, c.applied_epoch, state.max_epoch()));
        }
    }
    Ok(())
}
