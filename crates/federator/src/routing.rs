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
use switchyard_core::dr::detect::{Health, Observation, Subject};

/// The oldest sighting an observer may report.
const MAX_OBSERVATION_AGE_MS: u64 = 60_000;

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
        let id = peer_identity(&req)?;
        if !matches!(id.role, Role::Dns | Role::Federator | Role::Admin) {
            return Err(Status::permission_denied(format!("{id} may not report observations")));
        }
        let batch = req.into_inner();
        if batch.domain.trim().is_empty() {
            return Err(Status::invalid_argument("an observation batch needs the observer's failure domain"));
        }
        let now = crate::node::now_ms();
        let observations = batch
            .sites
            .into_iter()
            .map(|o| observation_from(&id.to_string(), &batch.domain, o, now))
            .collect::<Result<Vec<_>, Status>>()?;
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

/// One reported sighting as this replica records it. The observer is who the certificate says,
/// whatever the batch claims; the time is this replica's `now_ms` (the observer's clock may be
/// skewed) minus how long ago, on the observer's monotonic clock, it saw it. An age beyond
/// [`MAX_OBSERVATION_AGE_MS`] or an unknown health value is refused.
fn observation_from(
    observer: &str,
    domain: &str,
    o: switchyard_proto::routing::v1::SiteObservation,
    now_ms: u64,
) -> Result<Observation, Status> {
    let health = Health::parse(&o.health).ok_or_else(|| {
        Status::invalid_argument(format!("health {:?} of {} is not healthy, unhealthy or unknown", o.health, o.site))
    })?;
    if o.age_ms > MAX_OBSERVATION_AGE_MS {
        return Err(Status::invalid_argument(format!(
            "observation of {} is {} ms old; more than {MAX_OBSERVATION_AGE_MS} ms is not evidence",
            o.site, o.age_ms
        )));
    }
    Ok(Observation {
        observer: observer.to_string(),
        domain: domain.to_string(),
        subject: if o.group.is_empty() { Subject::site(&o.site) } else { Subject::group(&o.site, &o.group) },
        health,
        at_ms: now_ms.saturating_sub(o.age_ms),
        detail: o.detail,
    })
}

#[cfg(test)]
mod observation_tests {
    use super::*;
    use switchyard_proto::routing::v1::SiteObservation;

    fn sighting(health: &str, age_ms: u64) -> SiteObservation {
        SiteObservation {
            site: "site-1".into(),
            health: health.into(),
            at_ms: 0,
            detail: "refused".into(),
            age_ms,
            group: String::new(),
        }
    }

    #[test]
    fn a_sighting_is_dated_by_its_age_on_the_receivers_clock() {
        let o = observation_from("dns:dns-2", "site-2", sighting("unhealthy", 1_500), 100_000).unwrap();
        assert_eq!((o.at_ms, o.health, o.observer.as_str()), (98_500, Health::Unhealthy, "dns:dns-2"));
        assert_eq!(o.subject, Subject::site("site-1"));
        let group = SiteObservation { group: "orders".into(), ..sighting("unhealthy", 0) };
        let o = observation_from("dns:dns-2", "site-2", group, 100_000).unwrap();
        assert_eq!(o.subject, Subject::group("site-1", "orders"), "a group's sighting is about the group there");
        let err = observation_from("dns:dns-2", "site-2", sighting("unhealthy", 61_000), 100_000).unwrap_err();
        assert!(err.message().contains("61000 ms old"), "{err}");
        let err = observation_from("dns:dns-2", "site-2", sighting("dead", 0), 100_000).unwrap_err();
        assert!(err.message().contains("not healthy, unhealthy or unknown"), "{err}");
    }
}
