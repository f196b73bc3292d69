//! Raft peer traffic over tonic with mutual TLS. Requests and responses are the serde JSON
//! encoding of openraft's own types inside `RaftPayload`; only peers whose certificate names
//! the `federator` role are served.

use std::time::Duration;

use openraft::BasicNode;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use switchyard_proto::raft::v1::raft_peer_client::RaftPeerClient;
use switchyard_proto::raft::v1::raft_peer_server::RaftPeer;
use switchyard_proto::raft::v1::{PayloadFormat, RaftPayload};
use switchyard_tls::{Bundle, Role, peer_identity};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

use super::{NodeId, Raft, TypeConfig};

/// Builds an mTLS channel to `addr` (`host:port`), connecting lazily, with HTTP/2 keepalive so
/// that a link that died silently is noticed and re-established.
pub fn mtls_channel(addr: &str, tls: &Bundle) -> Result<Channel, tonic::transport::Error> {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h).trim_start_matches('[').trim_end_matches(']');
    Ok(Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls.client_tls(host))?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(10))
        .http2_keep_alive_interval(Duration::from_secs(2))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true)
        .tcp_nodelay(true)
        // A batch of log entries is often larger than HTTP/2's default 64 KiB window, and
        // waiting for window updates made every replication round take tens of milliseconds.
        .initial_stream_window_size(PEER_STREAM_WINDOW)
        .initial_connection_window_size(PEER_CONNECTION_WINDOW)
        .connect_lazy())
}

/// HTTP/2 flow-control windows of the peer links (both directions).
pub const PEER_STREAM_WINDOW: u32 = 8 * 1024 * 1024;
pub const PEER_CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;

pub struct NetworkFactory {
    tls: Bundle,
}

impl NetworkFactory {
    pub fn new(tls: Bundle) -> Self {
        Self { tls }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        PeerClient { target, addr: node.addr.clone(), tls: self.tls.clone(), client: None }
    }
}

pub struct PeerClient {
    target: NodeId,
    addr: String,
    tls: Bundle,
    client: Option<RaftPeerClient<Channel>>,
}

#[derive(Clone, Copy)]
enum Method {
    Append,
    Vote,
    Snapshot,
}

pub(crate) fn encode<T: Serialize>(value: &T) -> RaftPayload {
    RaftPayload {
        format: PayloadFormat::Json as i32,
        data: serde_json::to_vec(value).expect("raft messages serialize"),
    }
}

pub(crate) fn decode<T: DeserializeOwned>(payload: &RaftPayload) -> Result<T, String> {
    if payload.format != PayloadFormat::Json as i32 {
        return Err(format!("unsupported raft payload format {}", payload.format));
    }
    serde_json::from_slice(&payload.data).map_err(|e| format!("malformed raft payload: {e}"))
}

impl PeerClient {
    async fn call<Req, Resp, E>(&mut self, method: Method, req: &Req) -> Result<Resp, RPCError<NodeId, BasicNode, E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        if self.client.is_none() {
            let channel =
                mtls_channel(&self.addr, &self.tls).map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
            self.client = Some(
                RaftPeerClient::new(channel)
                    .max_decoding_message_size(switchyard_proto::MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(switchyard_proto::MAX_MESSAGE_BYTES),
            );
        }
        let client = self.client.as_mut().expect("set above");
        let payload = encode(req);
        let reply = match method {
            Method::Append => client.append_entries(payload).await,
            Method::Vote => client.vote(payload).await,
            Method::Snapshot => client.install_snapshot(payload).await,
        };
        let reply = reply.map_err(|status| {
            // Drop the client so the next call reconnects from scratch.
            self.client = None;
            RPCError::Unreachable(Unreachable::new(&status))
        })?;
        let result: Result<Resp, E> =
            decode(reply.get_ref()).map_err(|e| RPCError::Network(NetworkError::new(&std::io::Error::other(e))))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(Method::Append, &rpc).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>>
    {
        self.call(Method::Snapshot, &rpc).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(Method::Vote, &rpc).await
    }
}

/// Serves Raft RPCs, and writes forwarded by followers, from peer federators.
pub struct PeerService {
    raft: Raft,
    federator: std::sync::Arc<crate::node::Federator>,
}

impl PeerService {
    pub fn new(raft: Raft, federator: std::sync::Arc<crate::node::Federator>) -> Self {
        Self { raft, federator }
    }
}

fn only_federators<T>(req: &Request<T>) -> Result<switchyard_tls::Identity, Status> {
    let id = peer_identity(req)?;
    if id.role != Role::Federator {
        return Err(Status::permission_denied(format!("{id} may not send Raft traffic; only federator replicas may")));
    }
    Ok(id)
}

/// A replica may speak only for itself: the node id a Raft message claims must be the one its
/// certificate names (`federator:fed-<node_id>`).
fn speaks_for(id: &switchyard_tls::Identity, node: NodeId) -> Result<(), Status> {
    if id.name == format!("fed-{node}") {
        Ok(())
    } else {
        Err(Status::permission_denied(format!(
            "{id} may not send Raft messages as node {node}; its certificate names another replica"
        )))
    }
}

#[tonic::async_trait]
impl RaftPeer for PeerService {
    async fn append_entries(&self, req: Request<RaftPayload>) -> Result<tonic::Response<RaftPayload>, Status> {
        let id = only_federators(&req)?;
        let rpc: AppendEntriesRequest<TypeConfig> = decode(req.get_ref()).map_err(Status::invalid_argument)?;
        speaks_for(&id, rpc.vote.leader_id().voted_for().unwrap_or_default())?;
        Ok(tonic::Response::new(encode(&self.raft.append_entries(rpc).await)))
    }

    async fn vote(&self, req: Request<RaftPayload>) -> Result<tonic::Response<RaftPayload>, Status> {
        let id = only_federators(&req)?;
        let rpc: VoteRequest<NodeId> = decode(req.get_ref()).map_err(Status::invalid_argument)?;
        speaks_for(&id, rpc.vote.leader_id().voted_for().unwrap_or_default())?;
        Ok(tonic::Response::new(encode(&self.raft.vote(rpc).await)))
    }

    async fn install_snapshot(&self, req: Request<RaftPayload>) -> Result<tonic::Response<RaftPayload>, Status> {
        let id = only_federators(&req)?;
        let rpc: InstallSnapshotRequest<TypeConfig> = decode(req.get_ref()).map_err(Status::invalid_argument)?;
        speaks_for(&id, rpc.vote.leader_id().voted_for().unwrap_or_default())?;
        Ok(tonic::Response::new(encode(&self.raft.install_snapshot(rpc).await)))
    }

    async fn forward(&self, req: Request<RaftPayload>) -> Result<tonic::Response<RaftPayload>, Status> {
        only_federators(&req)?;
        let w: crate::node::Forwarded = decode(req.get_ref()).map_err(Status::invalid_argument)?;
        let outcome: crate::node::Remote<_> = self.federator.commit_here(&w.actor, w.action).await.into();
        Ok(tonic::Response::new(encode(&outcome)))
    }

    async fn probe(&self, req: Request<RaftPayload>) -> Result<tonic::Response<RaftPayload>, Status> {
        only_federators(&req)?;
        let initialized = self.raft.is_initialized().await.map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(tonic::Response::new(encode(&initialized)))
    }

    async fn read_index(&self, req: Request<RaftPayload>) -> Result<tonic::Response<RaftPayload>, Status> {
        only_federators(&req)?;
        let outcome: crate::node::Remote<u64> = self.federator.read_index_here().await.into();
        Ok(tonic::Response::new(encode(&outcome)))
    }

    async fn change_membership(&self, req: Request<RaftPayload>) -> Result<tonic::Response<RaftPayload>, Status> {
        only_federators(&req)?;
        let m: crate::node::ForwardedMembership = decode(req.get_ref()).map_err(Status::invalid_argument)?;
        let outcome: crate::node::Remote<_> =
            self.federator.change_membership_here(&m.actor, m.change, &m.reason).await.into();
        Ok(tonic::Response::new(encode(&outcome)))
    }
}
