//! The served table and the single writer that replaces it.
//!
//! Queries read an `Arc<Table>` snapshot; an accepted table is swapped in whole, so a query sees
//! the old or the new table, never a mix. Only [`Applier`] writes, and it runs in one task.

use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};

use hickory_proto::rr::Name;
use switchyard_proto::routing::v1 as pb;

use crate::metric_names as m;
use crate::table::{self, Admission, Rejection, Table};

/// The table currently served; `None` until the first one arrives or is loaded from disk.
#[derive(Debug)]
pub struct SharedTable {
    current: RwLock<Option<Arc<Table>>>,
    /// Bumped on every swap, for tasks that act on new tables (pushers).
    changes: tokio::sync::watch::Sender<u64>,
}

impl SharedTable {
    pub fn new(initial: Option<Table>) -> Self {
        if let Some(t) = &initial {
            publish_gauges(t);
        }
        Self { current: RwLock::new(initial.map(Arc::new)), changes: tokio::sync::watch::Sender::new(0) }
    }

    /// A receiver that sees a change every time a new table is swapped in.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// A snapshot of the served table; later swaps do not affect it.
    pub fn current(&self) -> Option<Arc<Table>> {
        self.current.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn replace(&self, table: Arc<Table>) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Some(table);
        self.changes.send_modify(|n| *n += 1);
    }
}

/// What became of an offered table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Applied { version: u64 },
    Unchanged,
    Rejected(Rejection),
}

/// Validates, fences, persists and swaps in offered tables.
pub struct Applier {
    shared: Arc<SharedTable>,
    zone: Name,
    state_dir: PathBuf,
}

impl Applier {
    pub fn new(shared: Arc<SharedTable>, zone: Name, state_dir: PathBuf) -> Self {
        Self { shared, zone, state_dir }
    }

    /// Version of the served table, 0 when there is none.
    pub fn served_version(&self) -> u64 {
        self.shared.current().map_or(0, |t| t.version())
    }

    /// Offers a table from the federator. A refused table leaves the served one in place. An
    /// accepted table is saved first (a failure to save is logged and counted, and the table is
    /// still served: answering correctly now matters more than the copy on disk).
    pub async fn offer(&self, offered: pb::RoutingTable) -> Outcome {
        let served = self.shared.current();
        let candidate = match Table::from_proto(offered) {
            Ok(t) => t,
            Err(e) => return self.reject(Rejection::Invalid(e)),
        };
        match table::admit(served.as_deref(), &self.zone, &candidate) {
            Err(r) => self.reject(r),
            Ok(Admission::Unchanged) => Outcome::Unchanged,
            Ok(Admission::Apply) => {
                let candidate = Arc::new(candidate);
                let (dir, to_save) = (self.state_dir.clone(), candidate.clone());
                let saved = tokio::task::spawn_blocking(move || table::save(&dir, &to_save)).await;
                match saved {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, version = candidate.version(), "cannot save the routing table; serving it anyway");
                        metrics::counter!(m::TABLE_PERSIST_FAILURES_TOTAL).increment(1);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "routing table save task failed; serving the table anyway");
                        metrics::counter!(m::TABLE_PERSIST_FAILURES_TOTAL).increment(1);
                    }
                }
                let version = candidate.version();
                tracing::info!(
                    version,
                    epoch = candidate.epoch(),
                    entries = candidate.len(),
                    previous = served.as_ref().map_or(0, |t| t.version()),
                    "routing table applied"
                );
                publish_gauges(&candidate);
                self.shared.replace(candidate);
                metrics::counter!(m::TABLE_APPLIED_TOTAL).increment(1);
                Outcome::Applied { version }
            }
        }
    }

    fn reject(&self, rejection: Rejection) -> Outcome {
        tracing::warn!(reason = rejection.reason(), error = %rejection, served = self.served_version(), "routing table rejected; keeping the served table");
        metrics::counter!(m::TABLE_REJECTED_TOTAL, "reason" => rejection.reason()).increment(1);
        Outcome::Rejected(rejection)
    }
}

fn publish_gauges(table: &Table) {
    // Gauges are f64; versions beyond 2^53 lose precision on the dashboard only.
    metrics::gauge!(m::TABLE_VERSION).set(table.version() as f64);
    metrics::gauge!(m::TABLE_EPOCH).set(table.epoch() as f64);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::tests::{entry, proto, target, zone};

    fn v(version: u64, epoch: u64, address: &str) -> pb::RoutingTable {
        proto(version, epoch, vec![entry("crm-web", 30, vec![target("a", &[address], 1)])])
    }

    #[tokio::test]
    async fn applies_newer_tables_and_keeps_the_old_one_on_rejection() {
        let dir = tempfile::tempdir().unwrap();
        let shared = Arc::new(SharedTable::new(None));
        let applier = Applier::new(shared.clone(), zone(), dir.path().to_path_buf());

        assert_eq!(applier.offer(v(1, 1, "127.0.1.1")).await, Outcome::Applied { version: 1 });
        let first = shared.current().unwrap();
        assert_eq!(applier.offer(v(1, 1, "127.0.1.1")).await, Outcome::Unchanged);
        assert_eq!(applier.offer(v(2, 2, "127.0.2.1")).await, Outcome::Applied { version: 2 });
        assert_eq!(first.version(), 1, "a snapshot taken before the swap is unaffected");

        let invalid = proto(3, 2, vec![entry("crm-web", 0, vec![])]);
        assert!(matches!(applier.offer(invalid).await, Outcome::Rejected(Rejection::Invalid(_))));
        assert!(matches!(applier.offer(v(1, 9, "127.0.9.9")).await, Outcome::Rejected(Rejection::OlderVersion { .. })));
        assert!(matches!(applier.offer(v(5, 1, "127.0.9.9")).await, Outcome::Rejected(Rejection::OlderEpoch { .. })));
        let other_zone = pb::RoutingTable { zone: "other.local.".into(), ..v(9, 9, "127.0.9.9") };
        assert!(matches!(applier.offer(other_zone).await, Outcome::Rejected(Rejection::OtherZone { .. })));

        let served = shared.current().unwrap();
        assert_eq!(served.version(), 2);
        assert_eq!(*served, Table::from_proto(v(2, 2, "127.0.2.1")).unwrap());
        assert_eq!(table::load(dir.path()).unwrap().unwrap(), *served, "the file follows the served table");
    }
}
