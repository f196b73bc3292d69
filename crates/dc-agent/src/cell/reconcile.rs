//! The cell's level-triggered loop: on every change and on a timer it detects lost nodes, plans
//! placement, persists the task table and then hands nodes their task lists. It is never told
//! why it runs, so every pass re-checks everything.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::Shared;
use crate::shutdown::Shutdown;

/// Longest time between two passes when nothing pokes the loop.
const TICK: Duration = Duration::from_millis(500);

pub(crate) async fn run(shared: Arc<Shared>, node_timeout: Duration, shutdown: Shutdown) {
    let started = Instant::now();
    // After a restart, nodes get this long to reconnect before their tasks are moved.
    let hold_until = started + node_timeout * 2;
    let mut trigger = shared.reconcile.subscribe();
    loop {
        tokio::select! {
            _ = trigger.changed() => {}
            () = tokio::time::sleep(TICK) => {}
            () = shutdown.wait() => return,
        }
        trigger.borrow_and_update();
        reconcile_once(&shared, node_timeout, hold_until).await;
    }
}

async fn reconcile_once(shared: &Shared, node_timeout: Duration, hold_until: Instant) {
    let now = Instant::now();
    let (snapshot, changed, may_place) = {
        let mut st = shared.state();
        let lost = st.expire_nodes(now, node_timeout);
        let drained = st.finish_leaving(now);
        for id in &lost {
            tracing::warn!(node = %id, timeout_ms = node_timeout.as_millis() as u64, "node lost: no heartbeat");
            metrics::counter!("cell_nodes_lost_total").increment(1);
        }
        // A cell that lost (or never had) its task table waits the whole reconnect window, so
        // that every node has reported what it runs before anything is planned or assigned.
        let may_place = now >= hold_until || (!st.is_fresh_start() && st.all_task_nodes_connected());
        if may_place {
            st.adopt_reported_tasks();
        }
        let pass = std::time::Instant::now();
        let placed = may_place && st.place(now, node_timeout);
        let took = pass.elapsed();
        metrics::histogram!("cell_schedule_pass_seconds").record(took.as_secs_f64());
        if took > std::time::Duration::from_millis(100) {
            tracing::info!(took_ms = took.as_millis() as u64, "slow scheduling pass");
        }
        (st.take_snapshot(), placed || drained || !lost.is_empty(), may_place)
    };
    if let Some(snapshot) = snapshot {
        let store = shared.store.clone();
        let written = tokio::task::spawn_blocking(move || store.save_state(&snapshot)).await;
        if let Err(e) = written.map_err(std::io::Error::other).and_then(|r| r) {
            // New task ids must be durable before any node hears of them, or a crash could
            // reuse them; keep the nodes on their current lists and retry next pass.
            tracing::error!(error = %e, dir = %shared.data_dir.display(), "cannot persist the cell state");
            metrics::counter!("cell_state_persist_failures_total").increment(1);
            shared.state().mark_dirty();
            return;
        }
    }
    let counts = {
        let mut st = shared.state();
        // Until the first placement, a fresh cell's table is empty: an assignment now would
        // tell every node to stop everything.
        let sent = if may_place || !st.is_fresh_start() { st.send_assignments() } else { 0 };
        if sent > 0 {
            metrics::counter!("cell_assignments_sent_total").increment(sent as u64);
        }
        st.counts()
    };
    metrics::gauge!("cell_nodes").set(counts.nodes as f64);
    metrics::gauge!("cell_nodes_healthy").set(counts.nodes_healthy as f64);
    metrics::gauge!("cell_tasks").set(counts.tasks as f64);
    metrics::gauge!("cell_apps_blocked").set(counts.blocked_apps as f64);
    if changed {
        shared.poke_report();
    }
}
