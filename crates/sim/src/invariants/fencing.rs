//! Invariant 4, fencing: a cell or DNS server never applies a command older than one it
//! applied. Cells: epochs never go down, and one epoch always means the same work (every app
//! with instances and its count; else a stale replica could undo a change under an epoch the
//! cell already holds). DNS servers:
//! neither version nor epoch of the served table ever goes down.

use std::collections::BTreeMap;

use super::Observed;

pub fn check(o: &Observed) -> Result<(), String> {
    for c in &o.cells {
        let mut seen: BTreeMap<u64, u64> = BTreeMap::new();
        for w in c.applied.windows(2) {
            if w[1].0 < w[0].0 {
                return Err(format!("cell of {} applied epoch {} after epoch {}", c.site, w[1].0, w[0].0));
            }
        }
        for (epoch, digest) in &c.applied {
            if let Some(before) = seen.insert(*epoch, *digest)
                && before != *digest
            {
                return Err(format!("cell of {} applied two different desired states under epoch {epoch}", c.site));
            }
        }
        if let Some((last, _)) = c.applied.last()
            && *last != c.applied_epoch
        {
            return Err(format!("cell of {} holds epoch {} but last applied {last}", c.site, c.applied_epoch));
        }
    }
    for d in &o.dns {
        for w in d.applied.windows(2) {
            if w[1].0 < w[0].0 || w[1].1 < w[0].1 {
                return Err(format!(
                    "DNS of {} applied table (version {}, epoch {}) after (version {}, epoch {})",
                    d.site, w[1].0, w[1].1, w[0].0, w[0].1
                ));
            }
        }
    }
    Ok(())
}
