//! The NodeLink server: authenticates nodes by certificate, validates their registration and
//! feeds their heartbeats into the cell state.

use std::sync::Arc;
use std::time::Duration;

use switchyard_proto::node::v1 as nodepb;
use switchyard_proto::node::v1::node_link_server::NodeLink;
use switchyard_tls::{Identity, Role, peer_identity};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::Shared;
use crate::convert;

/// A node must register this soon after opening its stream.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);
/// Assignments queued towards one node; more means the node is not reading.
const NODE_QUEUE: usize = 8;

pub(crate) struct NodeService {
    shared: Arc<Shared>,
}

impl NodeService {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

/// A node certificate names the node either plainly or as `<site>/<node>`; any other name
/// would let one host speak for another.
/// A node certificate names its site and node (`node:<site>/<node>`): with one CA for the
/// whole federation, a bare node name would let a node of another site register here under
/// the same name and take over its tasks.
fn check_node_identity(peer: &Identity, site: &str, node_id: &str) -> Result<(), Status> {
    if peer.name == format!("{site}/{node_id}") {
        Ok(())
    } else {
        Err(Status::permission_denied(format!(
            "certificate identity {peer} may not register node {node_id:?} at site {site:?}; its name must be \
             \"{site}/{node_id}\""
        )))
    }
}

#[tonic::async_trait]
impl NodeLink for NodeService {
    type AttachStream = ReceiverStream<Result<nodepb::CellToNode, Status>>;

    async fn attach(
        &self,
        request: Request<Streaming<nodepb::NodeMessage>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let peer = peer_identity(&request)?;
        if peer.role != Role::Node {
            tracing::warn!(%peer, "refused NodeLink attach from a non-node identity");
            return Err(Status::permission_denied(format!(
                "identity {peer} has role {}; only certificates with role node may attach to NodeLink",
                peer.role
            )));
        }
        let mut inbound = request.into_inner();
        let first = match tokio::time::timeout(REGISTER_TIMEOUT, inbound.message()).await {
            Err(_) => return Err(Status::deadline_exceeded("no NodeRegister within 10 s of attaching")),
            Ok(Err(status)) => return Err(status),
            Ok(Ok(None)) => return Err(Status::invalid_argument("stream closed before a NodeRegister arrived")),
            Ok(Ok(Some(m))) => m,
        };
        let Some(nodepb::node_message::Body::Register(register)) = first.body else {
            return Err(Status::invalid_argument("the first message on NodeLink must be a NodeRegister"));
        };
        let reg = convert::registration_from_proto(&register).map_err(Status::invalid_argument)?;
        let site = self.shared.state().site().to_string();
        check_node_identity(&peer, &site, &reg.node_id)?;

        let node_id = reg.node_id.clone();
        let (tx, rx) = mpsc::channel(NODE_QUEUE);
        tracing::info!(node = %node_id, address = %reg.address, capacity = ?reg.capacity, "node registered");
        let conn_id = self.shared.state().register_node(reg, tx, Instant::now());
        metrics::counter!("cell_node_registrations_total").increment(1);
        self.shared.poke_reconcile();
        self.shared.poke_report();

        let shared = self.shared.clone();
        tokio::spawn(async move {
            let end = loop {
                match inbound.message().await {
                    Ok(Some(nodepb::NodeMessage { body: Some(nodepb::node_message::Body::Heartbeat(hb)) })) => {
                        if hb.node_id != node_id {
                            break format!("heartbeat names node {:?}", hb.node_id);
                        }
                        match shared.state().heartbeat(conn_id, hb, Instant::now()) {
                            Some(true) => shared.poke_report(),
                            Some(false) => {}
                            // Replaced by a newer stream or declared lost: this stream is done.
                            None => break "connection superseded".to_string(),
                        }
                    }
                    Ok(Some(_)) => break "unexpected message after registration".to_string(),
                    Ok(None) => break "stream closed by the node".to_string(),
                    Err(status) => break format!("stream error: {}", status.message()),
                }
            };
            if shared.state().disconnect(&node_id, conn_id) {
                // Unreachable, not lost: its tasks stay until the node timeout passes.
                tracing::warn!(node = %node_id, reason = %end, "node unreachable");
                shared.poke_reconcile();
                shared.poke_report();
            } else {
                tracing::debug!(node = %node_id, reason = %end, "superseded node stream ended");
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_identity_must_name_the_registering_node() {
        let plain = Identity::new(Role::Node, "n1").unwrap();
        let scoped = Identity::new(Role::Node, "site-a/n1").unwrap();
        assert!(check_node_identity(&plain, "site-a", "n1").is_err(), "bare names are not site-bound");
        assert!(check_node_identity(&scoped, "site-a", "n1").is_ok());
        let err = check_node_identity(&scoped, "site-a", "n2").unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert!(check_node_identity(&Identity::new(Role::Node, "site-b/n1").unwrap(), "site-a", "n1").is_err());
    }
}
