//! The cell's autoscaler: samples every autoscaled app's serving instances (their Prometheus
//! endpoint and their nodes' process accounting), decides with the app's policy, and asks the
//! federator to change the app's count on this site. The federator commits the change (and
//! records it, with the evidence, in the audit history) or refuses it; the cell then scales
//! because its desired state changed, like any other change. So the autoscaler acts only while
//! the federator link is up: a silent federator freezes the counts, it never lowers them.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use switchyard_cell_core::autoscale::{self, Change, Metric, MetricWindow, ScalingHistory};
use switchyard_proto::agent::v1 as agent;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Shared;
use super::state::AutoscaleJob;
use crate::autoscaling::{Observation, Sampler, record};
use crate::shutdown::Shutdown;

const TICK: Duration = Duration::from_millis(250);
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(1);
const MAX_SCRAPE_BYTES: u64 = 1024 * 1024;
/// A request the federator has not acted on is sent again after this long.
const RESEND_AFTER_MS: u64 = 10_000;

#[derive(Default)]
struct Book {
    sampler: Sampler,
    windows: BTreeMap<Metric, MetricWindow>,
    history: ScalingHistory,
    /// Monotonic, so a wall-clock step never stalls or floods sampling.
    last_sample: Option<tokio::time::Instant>,
    /// (from, to, sent at) of the request in flight.
    pending: Option<(u32, u32, tokio::time::Instant)>,
}

fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

pub(crate) async fn run(shared: Arc<Shared>, shutdown: Shutdown) {
    let mut books: BTreeMap<(String, String), Book> = BTreeMap::new();
    loop {
        tokio::select! {
            () = tokio::time::sleep(TICK) => {}
            () = shutdown.wait() => return,
        }
        let jobs = shared.state().autoscale_jobs();
        books.retain(|key, _| {
            jobs.iter().any(|j| (j.group.as_str(), j.app.as_str()) == (key.0.as_str(), key.1.as_str()))
        });
        for job in jobs {
            let book = books.entry((job.group.clone(), job.app.clone())).or_default();
            let every = Duration::from_millis(job.spec.sample_interval_ms.max(100));
            if book.last_sample.is_some_and(|t| t.elapsed() < every) {
                continue;
            }
            book.last_sample = Some(tokio::time::Instant::now());
            round(&shared, &job, book, wall_ms()).await;
        }
    }
}

async fn round(shared: &Shared, job: &AutoscaleJob, book: &mut Book, now: u64) {
    let observed = observe(job).await;
    let values = book.sampler.sample(now, &job.metrics, job.resources, &observed);
    record(&mut book.windows, now, &values);
    for (metric, value) in &values {
        metrics::gauge!("cell_autoscale_metric", "group" => job.group.clone(), "app" => job.app.clone(), "metric" => metric.name())
            .set(*value);
    }
    if book.pending.is_some_and(|(from, _, _)| from != job.instances) {
        // The federator acted (or someone else changed the count): the request is settled.
        book.pending = None;
    }
    let link = shared.link();
    let frozen = job.frozen;
    let decision = autoscale::decide(&job.spec, job.instances, &book.windows, &book.history, frozen, now);
    let note = match (&link, decision.change) {
        (None, _) => format!("holding at {}: the federator is unreachable; {}", job.instances, decision.reason),
        (Some(_), Change::None) => decision.reason.clone(),
        (Some(_), _) => format!("asked for {} -> {}: {}", job.instances, decision.target, decision.reason),
    };
    shared.state().set_autoscale_note(&job.group, &job.app, note);
    let Some(link) = link else { return };
    if decision.change == Change::None {
        return;
    }
    if book.pending.is_some_and(|(from, to, at)| {
        from == job.instances && to == decision.target && at.elapsed() < Duration::from_millis(RESEND_AFTER_MS)
    }) {
        return;
    }
    let request = agent::ScalingRequest {
        group: job.group.clone(),
        app: job.app.clone(),
        from: job.instances,
        to: decision.target,
        reason: decision.reason.clone(),
        evidence_json: serde_json::to_string(&decision.evidence).unwrap_or_default(),
    };
    match link.try_send(agent::CellMessage { body: Some(agent::cell_message::Body::Scaling(request)) }) {
        Ok(()) => {
            tracing::info!(group = %job.group, app = %job.app, from = job.instances, to = decision.target, reason = %decision.reason, "autoscaling requested");
            metrics::counter!("cell_autoscale_requests_total", "direction" => if decision.change == Change::Up { "up" } else { "down" }).increment(1);
            match decision.change {
                Change::Up => book.history.last_up_ms = Some(now),
                Change::Down => book.history.last_down_ms = Some(now),
                Change::None => {}
            }
            book.pending = Some((job.instances, decision.target, tokio::time::Instant::now()));
        }
        Err(e) => {
            tracing::warn!(group = %job.group, app = %job.app, error = %e, "autoscaling request not sent; next round retries")
        }
    }
}

/// Scrapes every serving task at once (bounded by [`SCRAPE_TIMEOUT`] each).
async fn observe(job: &AutoscaleJob) -> Vec<Observation> {
    let wants_scrape = !(job.metrics.concurrency.is_empty()
        && job.metrics.requests_total.is_empty()
        && job.metrics.request_ms_total.is_empty());
    let scrapes = job.targets.iter().map(|t| {
        let path = job.metrics.path.clone();
        async move {
            let scrape = if wants_scrape { scrape(t.addr, t.port, &path).await } else { None };
            Observation { task_id: t.task_id.clone(), scrape, usage: t.usage }
        }
    });
    futures::future::join_all(scrapes).await
}

async fn scrape(addr: IpAddr, port: u16, path: &str) -> Option<String> {
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect((addr, port)).await.ok()?;
        let host = if addr.is_ipv6() { format!("[{addr}]") } else { addr.to_string() };
        // HTTP/1.0: the answer is never chunked, so the body is the exposition as is.
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes()).await.ok()?;
        let mut body = Vec::new();
        (&mut s).take(MAX_SCRAPE_BYTES).read_to_end(&mut body).await.ok()?;
        let text = String::from_utf8(body).ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        head.split_whitespace().nth(1).filter(|code| *code == "200")?;
        Some(body.to_string())
    };
    tokio::time::timeout(SCRAPE_TIMEOUT, fetch).await.ok().flatten()
}
