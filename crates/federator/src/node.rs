//! One federator replica: Raft, storage, the gRPC services on one mutual-TLS port, the
//! operation executor and the metrics endpoint.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use openraft::BasicNode;
use openraft::error::{ClientWriteError, RaftError};
use switchyard_core::engine::validate;
use switchyard_core::{Action, Applied, Proposal, Refusal};
use switchyard_proto::agent::v1::cell_link_server::CellLinkServer;
use switchyard_proto::operator::v1::operator_server::OperatorServer;
use switchyard_proto::raft::v1::raft_peer_client::RaftPeerClient;
use switchyard_proto::raft::v1::raft_peer_server::RaftPeerServer;
use switchyard_proto::routing::v1::routing_server::RoutingServer;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::Status;

use crate::api::OperatorService;
use crate::cell_link::CellLinkService;
use crate::config::FederatorConfig;
use crate::executor;
use crate::raft::{NetworkFactory, PeerService, Raft, Shared, open_storage};
use crate::routing::RoutingService;

/// Wall-clock milliseconds, read only on the leader to stamp proposals.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("this federator (node {node}) is not the leader; leader is {leader:?}")]
    NotLeader { node: u64, leader: Option<u64> },
    #[error("raft: {0}")]
    Raft(String),
}

impl From<ProposeError> for Status {
    fn from(e: ProposeError) -> Self {
        let msg = e.to_string();
        match e {
            ProposeError::Refused(
                Refusal::UnknownGroup(_) | Refusal::UnknownSite(_) | Refusal::UnknownOperation(_),
            ) => Status::not_found(msg),
            ProposeError::Refused(Refusal::Invalid(_)) => Status::invalid_argument(msg),
            ProposeError::Refused(_) => Status::failed_precondition(msg),
            ProposeError::NotLeader { .. } => Status::unavailable(msg),
            ProposeError::Raft(_) => Status::unavailable(msg),
        }
    }
}

/// A running replica, shared by every service.
pub struct Federator {
    pub id: u64,
    pub raft: Raft,
    pub shared: Arc<Shared>,
    pub config: Arc<FederatorConfig>,
    /// For forwarding writes to the leader.
    tls: switchyard_tls::Bundle,
    leader_client: tokio::sync::Mutex<Option<(u64, RaftPeerClient<tonic::transport::Channel>)>>,
}

/// A write a follower hands to the leader.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Forwarded {
    pub actor: String,
    pub action: Action,
}

/// What the leader did with a forwarded write.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub enum ForwardOutcome {
    Applied(Applied),
    Refused(Refusal),
    NotLeader(Option<u64>),
    Raft(String),
}

impl From<Result<Applied, ProposeError>> for ForwardOutcome {
    fn from(r: Result<Applied, ProposeError>) -> Self {
        match r {
            Ok(a) => ForwardOutcome::Applied(a),
            Err(ProposeError::Refused(r)) => ForwardOutcome::Refused(r),
            Err(ProposeError::NotLeader { leader, .. }) => ForwardOutcome::NotLeader(leader),
            Err(ProposeError::Raft(e)) => ForwardOutcome::Raft(e),
        }
    }
}

/// How long a forwarded write may take before the follower gives up (the client retries).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

impl Federator {
    pub fn leader(&self) -> Option<u64> {
        self.raft.metrics().borrow().current_leader
    }

    pub fn is_leader(&self) -> bool {
        self.leader() == Some(self.id)
    }

    /// Commits `action` by `actor`: on the leader directly, on a follower by forwarding it to
    /// the leader (so clients may talk to any replica). Returns what `apply` returned.
    pub async fn propose(&self, actor: &str, action: Action) -> Result<Applied, ProposeError> {
        if self.is_leader() {
            return self.propose_here(actor, action).await;
        }
        let Some(leader) = self.leader() else {
            return Err(ProposeError::NotLeader { node: self.id, leader: None });
        };
        self.forward(leader, actor, action).await
    }

    async fn forward(&self, leader: u64, actor: &str, action: Action) -> Result<Applied, ProposeError> {
        let not_leader = || ProposeError::NotLeader { node: self.id, leader: Some(leader) };
        let addr = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            m.membership_config.membership().get_node(&leader).map(|n| n.addr.clone())
        };
        let Some(addr) = addr else { return Err(not_leader()) };
        let mut cached = self.leader_client.lock().await;
        if cached.as_ref().is_none_or(|(id, _)| *id != leader) {
            let channel = crate::raft::mtls_channel(&addr, &self.tls).map_err(|e| ProposeError::Raft(e.to_string()))?;
            *cached = Some((leader, RaftPeerClient::new(channel)));
        }
        let client = &mut cached.as_mut().expect("set above").1;
        let payload = crate::raft::encode(&Forwarded { actor: actor.to_string(), action });
        let reply = match tokio::time::timeout(FORWARD_TIMEOUT, client.forward(payload)).await {
            Ok(Ok(r)) => r,
            Ok(Err(status)) => {
                *cached = None;
                return Err(ProposeError::Raft(format!(
                    "forwarding to leader {leader} at {addr}: {}",
                    status.message()
                )));
            }
            Err(_) => {
                *cached = None;
                return Err(ProposeError::Raft(format!("leader {leader} at {addr} did not answer in time")));
            }
        };
        let outcome: ForwardOutcome = crate::raft::decode(reply.get_ref()).map_err(ProposeError::Raft)?;
        match outcome {
            ForwardOutcome::Applied(a) => Ok(a),
            ForwardOutcome::Refused(r) => Err(ProposeError::Refused(r)),
            ForwardOutcome::NotLeader(l) => Err(ProposeError::NotLeader { node: self.id, leader: l }),
            ForwardOutcome::Raft(e) => Err(ProposeError::Raft(e)),
        }
    }

    /// Stamps `action` with this leader's time and `actor`, checks it against the committed
    /// state, and commits it through Raft. Never forwards (a forwarded write lands here).
    pub async fn propose_here(&self, actor: &str, action: Action) -> Result<Applied, ProposeError> {
        if !self.is_leader() {
            return Err(ProposeError::NotLeader { node: self.id, leader: self.leader() });
        }
        let proposal = Proposal::new(now_ms(), actor, action);
        self.shared.read(|s| validate(s, &proposal))?;
        match self.raft.client_write(proposal).await {
            Ok(resp) => Ok(resp.data?),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(ProposeError::NotLeader { node: self.id, leader: f.leader_id })
            }
            Err(e) => Err(ProposeError::Raft(e.to_string())),
        }
    }
}

/// Handle to a started replica.
pub struct Running {
    pub federator: Arc<Federator>,
    pub grpc_addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops serving, stops the executor and shuts Raft down, releasing the database.
    pub async fn shutdown(self) {
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks {
            let _ = t.await;
        }
        if let Err(e) = self.federator.raft.shutdown().await {
            tracing::warn!(error = %e, "raft did not shut down cleanly");
        }
    }
}

/// Starts a replica from a validated configuration: opens storage, binds the mutual-TLS gRPC
/// port, initialises a new single-node cluster if the log is empty, and starts the executor.
pub async fn start(config: FederatorConfig) -> anyhow::Result<Running> {
    let config = Arc::new(config);
    let tls = config.tls.load().context("loading the federator's TLS files")?;
    let (log_store, sm) = open_storage(&config.data_dir)?;
    let shared = sm.shared();

    let raft_config = openraft::Config {
        cluster_name: "switchyard".into(),
        heartbeat_interval: config.raft.heartbeat_interval_ms,
        election_timeout_min: config.raft.election_timeout_min_ms,
        election_timeout_max: config.raft.election_timeout_max_ms,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.raft.snapshot_logs_since_last),
        max_in_snapshot_log_to_keep: 500,
        // Snapshot chunks travel JSON-encoded (several bytes per byte of data): keep each
        // InstallSnapshot message far below the gRPC message limit.
        snapshot_max_chunk_size: 512 * 1024,
        ..Default::default()
    }
    .validate()
    .context("raft configuration")?;
    let raft = Raft::new(config.node_id, Arc::new(raft_config), NetworkFactory::new(tls.clone()), log_store, sm)
        .await
        .context("starting raft")?;

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot bind gRPC address {}", config.listen))?;
    let grpc_addr = listener.local_addr()?;

    let federator = Arc::new(Federator {
        id: config.node_id,
        raft: raft.clone(),
        shared,
        config: config.clone(),
        tls: tls.clone(),
        leader_client: tokio::sync::Mutex::new(None),
    });
    let max = switchyard_proto::MAX_MESSAGE_BYTES;
    let router = tonic::transport::Server::builder()
        .tls_config(tls.server_tls())?
        .http2_keepalive_interval(Some(Duration::from_secs(2)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
        // Small request/response messages (Raft appends, votes): no Nagle delay.
        .tcp_nodelay(true)
        .add_service(
            OperatorServer::new(OperatorService::new(federator.clone()))
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .add_service(
            CellLinkServer::new(CellLinkService::new(federator.clone()))
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .add_service(
            RoutingServer::new(RoutingService::new(federator.clone()))
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .add_service(
            RaftPeerServer::new(PeerService::new(raft.clone(), federator.clone()))
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        );
    let server = tokio::spawn(async move {
        if let Err(e) = router.serve_with_incoming(TcpListenerStream::new(listener)).await {
            tracing::error!(error = %e, "gRPC server stopped");
        }
    });

    // A new cluster is initialised once, by the replica with the lowest node id; the others
    // join when it reaches them.
    let lowest = config.peers.iter().map(|p| p.node_id).chain([config.node_id]).min();
    if !raft.is_initialized().await? && lowest == Some(config.node_id) {
        let mut members = BTreeMap::from([(config.node_id, BasicNode { addr: config.advertise_addr() })]);
        members.extend(config.peers.iter().map(|p| (p.node_id, BasicNode { addr: p.address.clone() })));
        tracing::info!(node_id = config.node_id, voters = ?members.keys().collect::<Vec<_>>(), "initialising a new cluster");
        raft.initialize(members).await.context("initialising the cluster")?;
    }

    let executor = tokio::spawn(executor::run(federator.clone()));

    let metrics_addr = match config.metrics_listen {
        Some(addr) => {
            let handle = switchyard_telemetry::init_metrics()?;
            Some(switchyard_telemetry::serve_metrics(addr, handle).await?)
        }
        None => None,
    };
    tracing::info!(%grpc_addr, ?metrics_addr, node_id = config.node_id, "federator started");
    Ok(Running { federator, grpc_addr, metrics_addr, tasks: vec![server, executor] })
}
