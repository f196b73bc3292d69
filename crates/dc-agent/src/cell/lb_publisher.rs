//! Publishes the cell's tasks to the site's load balancer: a level-triggered loop that syncs
//! every app's backend from the task table, on every report-worthy change and on a timer.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use super::Shared;
use crate::lb::{LoadBalancer, sync_backend_keeping};
use crate::shutdown::Shutdown;

const TICK: Duration = Duration::from_secs(1);

pub(crate) async fn run<L: LoadBalancer>(shared: Arc<Shared>, lb: L, shutdown: Shutdown) {
    let mut trigger = shared.report.subscribe();
    // Backends published before stay in the set, so an app that disappears is emptied.
    let mut known: BTreeSet<String> = BTreeSet::new();
    let mut last_error: BTreeMap<String, String> = BTreeMap::new();
    loop {
        tokio::select! {
            _ = trigger.changed() => {}
            () = tokio::time::sleep(TICK) => {}
            () = shutdown.wait() => return,
        }
        trigger.borrow_and_update();
        let mut wanted = shared.state().lb_endpoints();
        known.extend(wanted.keys().cloned());
        for backend in &known {
            let (endpoints, keep) = match wanted.remove(backend) {
                // Servers of tasks whose state is unknown are left as they are; the rest syncs.
                Some(Some(intent)) => (intent.endpoints, intent.keep),
                // The cell has not rebuilt its task table yet: leave the backend alone.
                Some(None) => continue,
                // The app is gone from the managed groups: empty its backend.
                None => (Vec::new(), Vec::new()),
            };
            let outcome = match sync_backend_keeping(&lb, backend, &endpoints, &keep).await {
                Ok(report) => {
                    for c in &report.applied {
                        tracing::info!(%backend, command = ?c, "load balancer updated");
                    }
                    metrics::counter!("cell_lb_commands_total").increment(report.applied.len() as u64);
                    metrics::counter!("cell_lb_failures_total").increment(report.failed.len() as u64);
                    report.failed.first().map(|(c, e)| format!("{c:?}: {e}"))
                }
                Err(e) => Some(e.to_string()),
            };
            // Log a failure when it starts or changes, not on every pass.
            match outcome {
                Some(err) if last_error.get(backend) != Some(&err) => {
                    tracing::warn!(%backend, error = %err, "load balancer not in sync");
                    last_error.insert(backend.clone(), err);
                }
                Some(_) => {}
                None => {
                    if last_error.remove(backend).is_some() {
                        tracing::info!(%backend, "load balancer back in sync");
                    }
                }
            }
        }
    }
}
