//! Invariant 3, no lost decision: every write the operator was told succeeded is, on every
//! replica that has applied its log index, in the committed state's audit chain at that index
//! (and a started operation exists).

use switchyard_core::Applied;

use super::Observed;

pub fn check(o: &Observed) -> Result<(), String> {
    for ack in &o.acks {
        for r in &o.replicas {
            if r.state.last_applied < ack.index {
                continue;
            }
            let recorded =
                r.state.audit.records().iter().any(|rec| rec.raft_index == ack.index && rec.reason == ack.reason);
            if !recorded {
                return Err(format!(
                    "acknowledged write {} (log index {}) is not in replica {}'s audit chain (applied {})",
                    ack.reason, ack.index, r.id, r.state.last_applied
                ));
            }
            if let Applied::OperationStarted { id } = &ack.applied
                && !r.state.operations.contains_key(id)
            {
                return Err(format!(
                    "acknowledged operation {id} ({}) is missing on replica {} (applied {})",
                    ack.reason, r.id, r.state.last_applied
                ));
            }
        }
    }
    Ok(())
}
