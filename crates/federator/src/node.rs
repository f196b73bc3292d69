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
}

impl Federator {
    pub fn leader(&self) -> Option<u64> {
        self.raft.metrics().borrow().current_leader
    }

    pub fn is_leader(&self) -> bool {
        self.leader() == Some(self.id)
    }

    /// Stamps `action` with the leader's time and `actor`, checks it against the committed
    /// state, and commits it through Raft. Returns what `apply` returned.
    pub async fn propose(&self, actor: &str, action: Action) -> Result<Applied, ProposeError> {
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

    let federator = Arc::new(Federator { id: config.node_id, raft: raft.clone(), shared, config: config.clone() });
    let max = switchyard_proto::MAX_MESSAGE_BYTES;
    let router = tonic::transport::Server::builder()
        .tls_config(tls.server_tls())?
        .http2_keepalive_interval(Some(Duration::from_secs(2)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
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
            RaftPeerServer::new(PeerService::new(raft.clone()))
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        );
    let server = tokio::spawn(async move {
        if let Err(e) = router.serve_with_incoming(TcpListenerStream::new(listener)).await {
            tracing::error!(error = %e, "gRPC server stopped");
        }
    });

    if !raft.is_initialized().await? {
        let members = BTreeMap::from([(config.node_id, BasicNode { addr: config.advertise_addr() })]);
        tracing::info!(node_id = config.node_id, "initialising a new single-node cluster");
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
