//! Invariant 5, the audit chain verifies on every replica, and replicas that applied the same
//! log agree on it record for record.

use switchyard_core::audit::verify_chain;

use super::Observed;

pub fn check(o: &Observed) -> Result<(), String> {
    for r in &o.replicas {
        verify_chain(r.state.audit.records())
            .map_err(|e| format!("replica {}'s audit chain does not verify: {e}", r.id))?;
    }
    for a in &o.replicas {
        for b in &o.replicas {
            let n = a.state.audit.len().min(b.state.audit.len());
            if n > 0 && a.state.audit.records()[n - 1].hash != b.state.audit.records()[n - 1].hash {
                return Err(format!("replicas {} and {} disagree on audit record {n}", a.id, b.id));
            }
        }
    }
    Ok(())
}
