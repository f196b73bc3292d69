//! The routing stream to DNS servers: the complete routing table on connect and after every
//! change of its version.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use switchyard_core::views::routing_table;
use switchyard_proto::routing::v1::routing_server::Routing;
use switchyard_proto::routing::v1::{ObservationAck, ObservationBatch, RoutingTable, WatchRequest};
use switchyard_tls::{Role, peer_identity};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::convert::routing_to_proto;
use crate::node::Federator;

pub struct RoutingService {
    fed: Arc<Federator>,
}

impl RoutingService {
    pub fn new(fed: Arc<Federator>) -> Self {
        Self { fed }
    }
}

type Tables = Pin<Box<dyn Stream<Item = Result<RoutingTable, Status>> + Send>>;

#[tonic::async_trait]
impl Routing for RoutingService {
    type WatchStream = Tables;

    async fn report_observations(&self, req: Request<ObservationBatch>) -> Result<Response<ObservationAck>, Status> {
        use switchyard_core::dr::detect::{Health, Observation, Subject};
        let id = peer_identity(&req)?;
        if !matches!(id.role, Role::Dns | Role::Federator | Role::Admin) {
            return Err(Status::permission_denied(format!("{id} may not report observations")));
        }
        let batch = req.into_inner();
        if batch.domain.trim().is_empty() {
            return Err(Status::invalid_argument("an observation batch needs the observer's failure domain"));
        }
        let mut observations = Vec::with_capacity(batch.sites.len());
        for o in batch.sites {
            let health = match o.health.as_str() {
                "healthy" => Health::Healthy,
                "unhealthy" => Health::Unhealthy,
                "unknown" => Health::Unknown,
                other => {
                    return Err(Status::invalid_argument(format!(
                        "health {other:?} of {} is not healthy, unhealthy or unknown",
                        o.site
                    )));
                }
            };
            // The observer is who the certificate says, whatever the batch claims; the time is
            // this replica's (the observer's clock may be skewed).
            observations.push(Observation {
                observer: id.to_string(),
                domain: batch.domain.clone(),
                subject: Subject::site(&o.site),
                health,
                at_ms: crate::node::now_ms(),
                detail: o.detail,
            });
        }
        for o in &observations {
            self.fed.observe(o);
        }
        metrics::counter!("federator_observations_received_total").increment(observations.len() as u64);
        Ok(Response::new(ObservationAck {}))
    }

    async fn watch(&self, req: Request<WatchRequest>) -> Result<Response<Tables>, Status> {
        let id = peer_identity(&req)?;
        if !matches!(id.role, Role::Dns | Role::Federator | Role::Admin) {
            return Err(Status::permission_denied(format!("{id} may not watch the routing table")));
        }
        let server = req.into_inner().server_id;
        tracing::info!(%id, %server, "routing watcher attached");
        let (tx, rx) = mpsc::channel(4);
        let fed = self.fed.clone();
        tokio::spawn(async move {
            let mut applied = fed.shared.subscribe();
            let mut sent = None;
            loop {
                let (version, table) = fed.shared.read(|s| {
                    let view = routing_table(s);
                    (view.version, routing_to_proto(&view, &fed.config.zone))
                });
                if sent != Some(version) {
                    if tx.send(Ok(table)).await.is_err() {
                        return;
                    }
                    sent = Some(version);
                }
                tokio::select! {
                    changed = applied.changed() => if changed.is_err() { return },
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
