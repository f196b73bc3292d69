//! The cell's client stream to the federator: hello, then reports on a timer and soon after
//! every change; desired states flow back and are fenced by epoch before anything is applied.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use switchyard_proto::MAX_MESSAGE_BYTES;
use switchyard_proto::agent::v1 as agent;
use switchyard_proto::agent::v1::cell_link_client::CellLinkClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;

use super::Shared;
use crate::backoff::Backoff;
use crate::config::CellConfig;
use crate::shutdown::{AbortOnDrop, Shutdown};

/// Reports wait this long after a change so a burst of changes becomes one report.
const REPORT_DEBOUNCE: Duration = Duration::from_millis(100);
/// Reports queued towards the federator; the stream applies backpressure beyond that.
const OUTBOUND_QUEUE: usize = 16;

#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("cannot connect: {0}")]
    Connect(#[from] crate::grpc::ConnectError),
    #[error("stream failed: {0}")]
    Stream(#[from] tonic::Status),
    /// The epoch of a desired state could not be made durable. The link is dropped so that the
    /// federator sends the state again after the reconnect.
    #[error("cannot persist epoch {epoch}: {reason}")]
    Persist { epoch: u64, reason: String },
}

/// Links to one federator replica at a time, moving to the next (round robin) whenever the
/// link fails, so a cell follows the federation through the loss of any replica.
pub(crate) async fn run(
    shared: Arc<Shared>,
    federators: Vec<(String, Endpoint)>,
    cfg: Arc<CellConfig>,
    shutdown: Shutdown,
) {
    let mut backoff = Backoff::new(200, 5000);
    let mut next = 0usize;
    loop {
        let (url, endpoint) = &federators[next % federators.len()];
        next = next.wrapping_add(1);
        let outcome = tokio::select! {
            r = attach_once(&shared, endpoint, url, &cfg, &mut backoff) => r,
            () = shutdown.wait() => return,
        };
        metrics::gauge!("cell_federator_connected").set(0.0);
        match outcome {
            Ok(()) => tracing::warn!(federator = %url, "federator closed the cell link"),
            Err(e) => tracing::warn!(federator = %url, error = %e, "cell link down"),
        }
        let delay = backoff.next_delay();
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.wait() => return,
        }
    }
}

async fn attach_once(
    shared: &Arc<Shared>,
    endpoint: &Endpoint,
    url: &str,
    cfg: &CellConfig,
    backoff: &mut Backoff,
) -> Result<(), LinkError> {
    let channel = crate::grpc::connect(endpoint).await?;
    let mut client = CellLinkClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
    let hello = shared.state().hello();
    tx.send(agent::CellMessage { body: Some(agent::cell_message::Body::Hello(hello)) })
        .await
        .expect("the receiver is still held here");
    shared.set_link(Some(tx.clone()));
    struct Unlink<'a>(&'a Shared);
    impl Drop for Unlink<'_> {
        fn drop(&mut self) {
            self.0.set_link(None);
        }
    }
    let _unlink = Unlink(shared);
    let _reporter = AbortOnDrop(tokio::spawn(report_loop(shared.clone(), tx, cfg.report_interval)));
    let mut inbound = client.attach(ReceiverStream::new(rx)).await?.into_inner();
    tracing::info!(federator = %url, "cell link up");
    metrics::gauge!("cell_federator_connected").set(1.0);
    backoff.reset();
    while let Some(msg) = inbound.message().await? {
        match msg.body {
            Some(agent::federator_message::Body::Desired(d)) => apply_desired(shared, d).await?,
            None => tracing::debug!("empty federator message ignored"),
        }
    }
    Ok(())
}

async fn report_loop(shared: Arc<Shared>, tx: mpsc::Sender<agent::CellMessage>, interval: Duration) {
    let mut changes = shared.report.subscribe();
    loop {
        changes.borrow_and_update();
        let report = {
            let sequence = shared.next_report_sequence();
            shared.state().report(sequence)
        };
        if tx.send(agent::CellMessage { body: Some(agent::cell_message::Body::Report(report)) }).await.is_err() {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            r = changes.changed() => {
                if r.is_err() {
                    return;
                }
                tokio::time::sleep(REPORT_DEBOUNCE).await;
            }
        }
    }
}

/// Fences, validates, persists the epoch, then applies. A rejected state changes nothing; a state
/// whose epoch cannot be persisted is an error that drops the link (see [`LinkError::Persist`]).
async fn apply_desired(shared: &Shared, desired: agent::DesiredState) -> Result<(), LinkError> {
    let epoch = desired.epoch;
    let checked = shared.state().check_desired(&desired);
    let record = match checked {
        Ok(r) => r,
        Err(rejection) => {
            tracing::warn!(epoch, reason = rejection.reason, detail = %rejection.detail, "desired state rejected");
            metrics::counter!("cell_desired_rejected_total", "reason" => rejection.reason).increment(1);
            return Ok(());
        }
    };
    if epoch > shared.persisted_epoch.load(Ordering::Acquire) {
        let store = shared.store.clone();
        let saved = tokio::task::spawn_blocking(move || store.save_epoch(epoch)).await;
        if let Err(e) = saved.map_err(std::io::Error::other).and_then(|r| r) {
            // Applying without a durable epoch would let a restarted cell accept older states.
            tracing::error!(epoch, error = %e, dir = %shared.data_dir.display(), "cannot persist the epoch; desired state not applied");
            metrics::counter!("cell_desired_rejected_total", "reason" => "persist_failed").increment(1);
            return Err(LinkError::Persist { epoch, reason: e.to_string() });
        }
        shared.persisted_epoch.fetch_max(epoch, Ordering::AcqRel);
    }
    let changed = shared.state().commit_desired(record);
    metrics::counter!("cell_desired_applied_total").increment(1);
    metrics::gauge!("cell_applied_epoch").set(epoch as f64);
    if changed {
        tracing::info!(epoch, "desired state applied");
        shared.poke_reconcile();
        shared.poke_report();
    }
    Ok(())
}
