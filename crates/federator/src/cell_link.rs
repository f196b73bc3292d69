//! The cell link: each site's cell master keeps one stream open. Its reports are committed
//! through Raft (the engine decides only on committed observations), and the site's desired
//! state is sent whenever it changes.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::Stream;
use switchyard_core::views::desired_for_site;
use switchyard_core::{Action, CellReport};
use switchyard_proto::agent::v1::cell_link_server::CellLink;
use switchyard_proto::agent::v1::{CellMessage, FederatorMessage, cell_message, federator_message};
use switchyard_tls::{Role, peer_identity};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::convert::{desired_to_proto, report_from_proto};
use crate::node::{Federator, now_ms};

/// An unchanged report is still committed this often, so its age proves the cell is alive.
const REPORT_HEARTBEAT: Duration = Duration::from_secs(2);
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
const OUTBOUND_QUEUE: usize = 8;

pub struct CellLinkService {
    fed: Arc<Federator>,
}

impl CellLinkService {
    pub fn new(fed: Arc<Federator>) -> Self {
        Self { fed }
    }
}

type Outbound = Pin<Box<dyn Stream<Item = Result<FederatorMessage, Status>> + Send>>;

#[tonic::async_trait]
impl CellLink for CellLinkService {
    type AttachStream = Outbound;

    async fn attach(&self, req: Request<Streaming<CellMessage>>) -> Result<Response<Outbound>, Status> {
        let id = peer_identity(&req)?;
        if id.role != Role::Cell {
            return Err(Status::permission_denied(format!("{id} is not a cell; only cell certificates may attach")));
        }
        let mut inbound = req.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no CellHello within 10 s"))??;
        let hello = match first.and_then(|m| m.body) {
            Some(cell_message::Body::Hello(h)) => h,
            _ => return Err(Status::invalid_argument("the first message on a cell link must be CellHello")),
        };
        if hello.site != id.name {
            return Err(Status::permission_denied(format!(
                "certificate {id} may only speak for site {:?}, not {:?}",
                id.name, hello.site
            )));
        }
        let site = hello.site;
        let (known, max_epoch) = self.fed.shared.read(|s| (s.sites.contains_key(&site), s.max_epoch()));
        if !known {
            return Err(Status::not_found(format!("site {site:?} is not registered in this federation")));
        }
        if hello.applied_epoch > max_epoch {
            tracing::warn!(%site, cell_epoch = hello.applied_epoch, federation_epoch = max_epoch,
                "cell has applied a newer epoch than this federator knows; it will refuse our desired state until we catch up");
        }
        tracing::info!(%site, agent = %hello.agent_version, "cell attached");
        metrics::gauge!("federator_cells_attached").increment(1.0);

        let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
        tokio::spawn(send_desired(self.fed.clone(), site.clone(), tx));
        tokio::spawn(receive_reports(self.fed.clone(), site, inbound));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Sends the site's desired state now and after every change, until the stream closes.
async fn send_desired(fed: Arc<Federator>, site: String, tx: mpsc::Sender<Result<FederatorMessage, Status>>) {
    let mut applied = fed.shared.subscribe();
    // A digest of the last state sent, not the state itself: a desired state lists every group
    // of the federation, and keeping one per attached cell cost megabytes each.
    let mut last: Option<u64> = None;
    loop {
        let desired = fed.shared.read(|s| desired_to_proto(&desired_for_site(s, &site, now_ms())));
        let digest = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            prost::Message::encode_to_vec(&desired).hash(&mut h);
            h.finish()
        };
        if last != Some(digest) {
            let msg = FederatorMessage { body: Some(federator_message::Body::Desired(desired)) };
            if tx.send(Ok(msg)).await.is_err() {
                return;
            }
            last = Some(digest);
        }
        tokio::select! {
            changed = applied.changed() => if changed.is_err() { return },
            _ = tx.closed() => return,
            // Freezes expire with time, not with a commit.
            () = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
        }
    }
}

async fn receive_reports(fed: Arc<Federator>, site: String, mut inbound: Streaming<CellMessage>) {
    let actor = format!("cell:{site}");
    let mut last: Option<(CellReport, Instant)> = None;
    loop {
        let msg = match inbound.message().await {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(e) => {
                tracing::info!(%site, error = %e, "cell link broken");
                break;
            }
        };
        let report = match msg.body {
            Some(cell_message::Body::Report(report)) => report,
            Some(cell_message::Body::Scaling(s)) => {
                let action = Action::Autoscale {
                    site: site.clone(),
                    group: s.group.clone(),
                    app: s.app.clone(),
                    from: s.from,
                    to: s.to,
                    reason: s.reason.chars().take(1024).collect(),
                    evidence_json: s.evidence_json.chars().take(16 * 1024).collect(),
                };
                match fed.propose(&actor, action).await {
                    Ok(_) => {
                        tracing::info!(%site, group = %s.group, app = %s.app, from = s.from, to = s.to, reason = %s.reason, "autoscaling recorded");
                        metrics::counter!("federator_autoscale_decisions_total", "outcome" => "recorded").increment(1);
                    }
                    Err(e) => {
                        tracing::warn!(%site, group = %s.group, app = %s.app, error = %e, "autoscaling request refused");
                        metrics::counter!("federator_autoscale_decisions_total", "outcome" => "refused").increment(1);
                    }
                }
                continue;
            }
            _ => continue,
        };
        let report = match report_from_proto(&report) {
            Ok(r) if r.site == site => r,
            Ok(r) => {
                tracing::warn!(%site, claimed = %r.site, "cell reported for another site; ignored");
                continue;
            }
            Err(e) => {
                tracing::warn!(%site, error = %e, "malformed cell report ignored");
                continue;
            }
        };
        let due = match &last {
            Some((prev, at)) => *prev != report || at.elapsed() >= REPORT_HEARTBEAT,
            None => true,
        };
        if !due {
            continue;
        }
        match fed.propose(&actor, Action::CellReport(report.clone())).await {
            Ok(_) => last = Some((report, Instant::now())),
            Err(e) => tracing::warn!(%site, error = %e, "cell report not committed"),
        }
    }
    metrics::gauge!("federator_cells_attached").decrement(1.0);
    tracing::info!(%site, "cell detached");
}
