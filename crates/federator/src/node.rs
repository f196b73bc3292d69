//! One federator replica: Raft, storage, the gRPC services on one mutual-TLS port, the
//! operation executor and the metrics endpoint.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use openraft::BasicNode;
use openraft::ChangeMembers;
use openraft::error::{CheckIsLeaderError, RaftError};
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
use crate::batch::WriteFailed;
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
    /// The link to the leader (its node id and address), shared by every forwarded request;
    /// each call clones it, so calls run concurrently.
    leader_client: std::sync::Mutex<Option<(u64, String, RaftPeerClient<tonic::transport::Channel>)>>,
    /// What the observers (this replica's own probes, the DNS servers) report of each site.
    pub observations: std::sync::Mutex<switchyard_core::dr::detect::Detector>,
    /// The leader's write path into Raft, batching writes that arrive together.
    writes: crate::batch::Writes,
}

/// A write a follower hands to the leader.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Forwarded {
    pub actor: String,
    pub action: Action,
}

/// What the leader did with a request a follower handed it (a write, a read index, a
/// membership change).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub enum Remote<T> {
    Done(T),
    Refused(Refusal),
    NotLeader(Option<u64>),
    Raft(String),
}

impl<T> From<Result<T, ProposeError>> for Remote<T> {
    fn from(r: Result<T, ProposeError>) -> Self {
        match r {
            Ok(a) => Remote::Done(a),
            Err(ProposeError::Refused(r)) => Remote::Refused(r),
            Err(ProposeError::NotLeader { leader, .. }) => Remote::NotLeader(leader),
            Err(ProposeError::Raft(e)) => Remote::Raft(e),
        }
    }
}

/// A membership change of the federator cluster.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum MemberChange {
    AddLearner { node_id: u64, address: String },
    AddVoter { node_id: u64, address: String },
    Remove { node_id: u64 },
}

impl MemberChange {
    pub fn node_id(&self) -> u64 {
        match self {
            MemberChange::AddLearner { node_id, .. }
            | MemberChange::AddVoter { node_id, .. }
            | MemberChange::Remove { node_id } => *node_id,
        }
    }

    fn audit_action(&self) -> &'static str {
        match self {
            MemberChange::AddLearner { .. } => "cluster.add-learner",
            MemberChange::AddVoter { .. } => "cluster.add-voter",
            MemberChange::Remove { .. } => "cluster.remove",
        }
    }
}

/// A membership change a follower hands to the leader.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ForwardedMembership {
    pub actor: String,
    pub change: MemberChange,
    pub reason: String,
}

/// The committed cluster configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MembershipView {
    pub voters: Vec<(u64, String)>,
    pub learners: Vec<(u64, String)>,
    pub leader: Option<u64>,
    pub term: u64,
    pub log_index: u64,
}

#[derive(Clone, Copy)]
enum PeerMethod {
    Forward,
    ReadIndex,
    ChangeMembership,
}

/// How long a forwarded write may take before the follower gives up (the client retries).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a follower waits to apply up to the leader's read index.
const READ_INDEX_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a new replica may take to catch up before it is promoted.
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(120);

/// Checks a membership change against the current configuration: refused changes name what
/// was wrong and change nothing.
pub fn check_member_change(change: &MemberChange, reason: &str, current: &MembershipView) -> Result<(), ProposeError> {
    let invalid = |m: String| Err(ProposeError::Refused(Refusal::Invalid(m)));
    if reason.trim().is_empty() {
        return invalid("a membership change needs a reason".into());
    }
    let id = change.node_id();
    if id == 0 {
        return invalid("node id 0 is reserved; use 1 or more".into());
    }
    let voter = current.voters.iter().find(|(v, _)| *v == id);
    let learner = current.learners.iter().find(|(v, _)| *v == id);
    match change {
        MemberChange::AddLearner { address, .. } | MemberChange::AddVoter { address, .. } => {
            let port_ok =
                address.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if !port_ok {
                return invalid(format!("address {address:?} must be host:port of the new replica's gRPC port"));
            }
            if let Some((_, known)) = voter.or(learner)
                && known != address
            {
                return invalid(format!(
                    "node {id} is already a member at {known}; remove it before re-adding it at {address}"
                ));
            }
            if matches!(change, MemberChange::AddLearner { .. }) && voter.is_some() {
                return invalid(format!("node {id} is a voter; remove it first to make it a learner"));
            }
            if matches!(change, MemberChange::AddVoter { .. }) && voter.is_some() {
                return invalid(format!("node {id} is already a voter"));
            }
            if matches!(change, MemberChange::AddLearner { .. }) && learner.is_some() {
                return invalid(format!("node {id} is already a learner"));
            }
            if let Some((other, _)) =
                current.voters.iter().chain(&current.learners).find(|(o, a)| *o != id && a == address)
            {
                return invalid(format!("address {address} already belongs to node {other}"));
            }
        }
        MemberChange::Remove { .. } => {
            if voter.is_none() && learner.is_none() {
                return invalid(format!("node {id} is not a member of the cluster"));
            }
            if voter.is_some() && current.voters.len() == 1 {
                return invalid(format!("node {id} is the last voter; the cluster cannot remove it"));
            }
        }
    }
    Ok(())
}

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
        self.propose_indexed(actor, action).await.map(|(applied, _)| applied)
    }

    /// [`Federator::propose`], also returning the log index the write was committed at (which
    /// this replica has applied by then): the write's own audit records carry it, so a caller
    /// can tell them from those of writes committed beside or after it.
    pub async fn propose_indexed(&self, actor: &str, action: Action) -> Result<(Applied, u64), ProposeError> {
        if self.is_leader() {
            return self.commit_here(actor, action).await;
        }
        let Some(leader) = self.leader() else {
            return Err(ProposeError::NotLeader { node: self.id, leader: None });
        };
        self.forward(leader, actor, action).await
    }

    /// Hands a write to the leader, then waits until this replica has applied it, so whoever
    /// wrote through this replica reads their own write here next.
    async fn forward(&self, leader: u64, actor: &str, action: Action) -> Result<(Applied, u64), ProposeError> {
        let forwarded = Forwarded { actor: actor.to_string(), action };
        let (applied, index): (Applied, u64) = self.peer_call(leader, PeerMethod::Forward, &forwarded).await?;
        self.wait_applied(index).await?;
        Ok((applied, index))
    }

    /// Waits until this replica has applied the log up to `index`.
    async fn wait_applied(&self, index: u64) -> Result<(), ProposeError> {
        let mut applied = self.shared.subscribe();
        match tokio::time::timeout(READ_INDEX_TIMEOUT, applied.wait_for(|a| *a >= index)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(ProposeError::Raft(format!(
                "this replica (node {}) did not apply up to log index {index} in time",
                self.id
            ))),
        }
    }

    /// Sends `req` to the leader over the mutual-TLS peer link and returns its outcome.
    async fn peer_call<Req: serde::Serialize, T: serde::de::DeserializeOwned>(
        &self,
        leader: u64,
        method: PeerMethod,
        req: &Req,
    ) -> Result<T, ProposeError> {
        let not_leader = || ProposeError::NotLeader { node: self.id, leader: Some(leader) };
        let addr = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            m.membership_config.membership().get_node(&leader).map(|n| n.addr.clone())
        };
        let Some(addr) = addr else { return Err(not_leader()) };
        let mut client = {
            let mut cached = self.leader_client.lock().expect("leader client lock");
            if cached.as_ref().is_none_or(|(id, a, _)| *id != leader || *a != addr) {
                let channel =
                    crate::raft::mtls_channel(&addr, &self.tls).map_err(|e| ProposeError::Raft(e.to_string()))?;
                *cached = Some((leader, addr.clone(), RaftPeerClient::new(channel)));
            }
            cached.as_ref().expect("set above").2.clone()
        };
        let forget = || {
            let mut cached = self.leader_client.lock().expect("leader client lock");
            if cached.as_ref().is_some_and(|(id, a, _)| *id == leader && *a == addr) {
                *cached = None;
            }
        };
        let payload = crate::raft::encode(req);
        let call = async {
            match method {
                PeerMethod::Forward => client.forward(payload).await,
                PeerMethod::ReadIndex => client.read_index(payload).await,
                PeerMethod::ChangeMembership => client.change_membership(payload).await,
            }
        };
        // A membership change waits for the new replica to catch up.
        // A forwarded write may queue on the leader for up to the write timeout and then take
        // as long again to commit: wait longer than both, so the leader's own answer (which
        // says whether the write may still commit) is what the caller gets.
        let timeout = match method {
            PeerMethod::ChangeMembership => MEMBERSHIP_TIMEOUT,
            PeerMethod::Forward => FORWARD_TIMEOUT
                .max(Duration::from_millis(2 * self.config.raft.write_timeout_ms) + Duration::from_secs(1)),
            PeerMethod::ReadIndex => FORWARD_TIMEOUT,
        };
        let reply = match tokio::time::timeout(timeout, call).await {
            Ok(Ok(r)) => r,
            Ok(Err(status)) => {
                forget();
                return Err(ProposeError::Raft(format!("leader {leader} at {addr}: {}", status.message())));
            }
            Err(_) => {
                forget();
                return Err(ProposeError::Raft(format!(
                    "leader {leader} at {addr} did not answer within {} ms (a forwarded write may still \
                     commit; check before retrying)",
                    timeout.as_millis()
                )));
            }
        };
        let outcome: Remote<T> = crate::raft::decode(reply.get_ref()).map_err(ProposeError::Raft)?;
        match outcome {
            Remote::Done(a) => Ok(a),
            Remote::Refused(r) => Err(ProposeError::Refused(r)),
            Remote::NotLeader(l) => Err(ProposeError::NotLeader { node: self.id, leader: l }),
            Remote::Raft(e) => Err(ProposeError::Raft(e)),
        }
    }

    /// The leader's read index: its committed index once a quorum has confirmed it still leads
    /// (openraft's `ensure_linearizable`: heartbeats, no clock-based lease).
    pub async fn read_index_here(&self) -> Result<u64, ProposeError> {
        if !self.is_leader() {
            return Err(ProposeError::NotLeader { node: self.id, leader: self.leader() });
        }
        match self.raft.ensure_linearizable().await {
            Ok(log_id) => Ok(log_id.map_or(0, |l| l.index)),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(ProposeError::NotLeader { node: self.id, leader: f.leader_id })
            }
            Err(e) => Err(ProposeError::Raft(e.to_string())),
        }
    }

    /// Linearizable read barrier: returns once this replica has applied everything committed
    /// before the call. On the leader that is a quorum check; on a follower it asks the leader
    /// for its read index and waits to apply up to it. Reads that feed decisions go through it.
    pub async fn read_barrier(&self) -> Result<(), ProposeError> {
        let index = match self.leader() {
            Some(l) if l == self.id => self.read_index_here().await?,
            Some(l) => self.peer_call::<_, u64>(l, PeerMethod::ReadIndex, &()).await?,
            None => return Err(ProposeError::NotLeader { node: self.id, leader: None }),
        };
        self.wait_applied(index).await
    }

    /// The committed cluster configuration as this replica knows it.
    pub fn membership(&self) -> MembershipView {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let node = |id: &u64| membership.get_node(id).map(|n| n.addr.clone()).unwrap_or_default();
        let voters: Vec<u64> = membership.voter_ids().collect();
        MembershipView {
            voters: voters.iter().map(|id| (*id, node(id))).collect(),
            learners: membership.learner_ids().filter(|id| !voters.contains(id)).map(|id| (id, node(&id))).collect(),
            leader: m.current_leader,
            term: m.current_term,
            log_index: m.membership_config.log_id().map_or(0, |l| l.index),
        }
    }

    /// Adds or removes a replica: on the leader directly, on a follower through the leader.
    pub async fn change_membership(
        &self,
        actor: &str,
        change: MemberChange,
        reason: &str,
    ) -> Result<MembershipView, ProposeError> {
        check_member_change(&change, reason, &self.membership())?;
        match self.leader() {
            Some(l) if l == self.id => self.change_membership_here(actor, change, reason).await,
            Some(l) => {
                let req = ForwardedMembership { actor: actor.to_string(), change, reason: reason.to_string() };
                self.peer_call(l, PeerMethod::ChangeMembership, &req).await
            }
            None => Err(ProposeError::NotLeader { node: self.id, leader: None }),
        }
    }

    /// Applies a membership change on the leader, then records it in the audit history. A
    /// replica joins as a learner first and becomes a voter only once it has caught up (from a
    /// snapshot and the log), so adding one never stalls commits.
    pub async fn change_membership_here(
        &self,
        actor: &str,
        change: MemberChange,
        reason: &str,
    ) -> Result<MembershipView, ProposeError> {
        if !self.is_leader() {
            return Err(ProposeError::NotLeader { node: self.id, leader: self.leader() });
        }
        let before = self.membership();
        check_member_change(&change, reason, &before)?;
        let id = change.node_id();
        let is_voter = before.voters.iter().any(|(v, _)| *v == id);
        // The request is recorded before anything changes: a leader that removes itself steps
        // down once the change commits and could not record it afterwards. A change that fails
        // is recorded as such.
        let intent = serde_json::json!({
            "change": change,
            "voters_before": before.voters,
            "learners_before": before.learners,
            "membership_log_index_before": before.log_index,
        });
        let record = Action::RecordClusterChange {
            change: change.audit_action().to_string(),
            subject: format!("fed-{id}"),
            reason: reason.to_string(),
            detail_json: intent.to_string(),
        };
        self.propose_here(actor, record).await?;
        match self.apply_member_change(&change, is_voter).await {
            Ok(()) => Ok(self.membership()),
            Err(e) => {
                let failed = Action::RecordClusterChange {
                    change: "cluster.change-failed".into(),
                    subject: format!("fed-{id}"),
                    reason: reason.to_string(),
                    detail_json: serde_json::json!({ "change": change, "error": e.to_string() }).to_string(),
                };
                if let Err(again) = self.propose(actor, failed).await {
                    tracing::warn!(error = %again, "recording the failed membership change failed");
                }
                Err(e)
            }
        }
    }

    async fn apply_member_change(&self, change: &MemberChange, is_voter: bool) -> Result<(), ProposeError> {
        let raft_err = |e: String| ProposeError::Raft(e);
        let id = change.node_id();
        match change {
            MemberChange::AddLearner { address, .. } | MemberChange::AddVoter { address, .. } => {
                // A new node, or a learner about to be promoted: it must have caught up first
                // (adding an existing learner again changes nothing and waits for it).
                if !is_voter {
                    let node = BasicNode { addr: address.clone() };
                    match tokio::time::timeout(MEMBERSHIP_TIMEOUT, self.raft.add_learner(id, node, true)).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return Err(raft_err(format!("adding node {id} as a learner: {e}"))),
                        Err(_) => {
                            return Err(raft_err(format!(
                                "node {id} at {address} did not catch up within {} s; it stays a learner \
                                 (check that it runs and that its certificate names fed-{id})",
                                MEMBERSHIP_TIMEOUT.as_secs()
                            )));
                        }
                    }
                }
                if matches!(change, MemberChange::AddVoter { .. }) && !is_voter {
                    let ids = std::collections::BTreeSet::from([id]);
                    self.raft
                        .change_membership(ChangeMembers::AddVoterIds(ids), false)
                        .await
                        .map_err(|e| raft_err(format!("promoting node {id} to voter: {e}")))?;
                }
            }
            MemberChange::Remove { .. } => {
                let ids = std::collections::BTreeSet::from([id]);
                let members = if is_voter { ChangeMembers::RemoveVoters(ids) } else { ChangeMembers::RemoveNodes(ids) };
                self.raft
                    .change_membership(members, false)
                    .await
                    .map_err(|e| raft_err(format!("removing node {id}: {e}")))?;
            }
        }
        Ok(())
    }

    /// The applied state as a backup file (the snapshot format `federator restore` reads). The
    /// backup is recorded in the audit history first, so the backup holds its own record and
    /// every write acknowledged before the call (a read barrier follows the record).
    pub async fn backup(&self, actor: &str, reason: &str) -> Result<crate::raft::Backup, ProposeError> {
        if reason.trim().is_empty() {
            return Err(ProposeError::Refused(Refusal::Invalid("a backup needs a reason".into())));
        }
        let record = Action::RecordClusterChange {
            change: "cluster.snapshot".into(),
            subject: "federation-state".into(),
            reason: reason.to_string(),
            detail_json: serde_json::json!({ "taken_on": format!("fed-{}", self.id) }).to_string(),
        };
        self.propose(actor, record).await?;
        self.read_barrier().await?;
        Ok(self.shared.backup())
    }

    /// Stamps `action` with this leader's time and `actor`, checks it against the committed
    /// state, and commits it through Raft. Never forwards (a forwarded write lands here).
    pub async fn propose_here(&self, actor: &str, action: Action) -> Result<Applied, ProposeError> {
        self.commit_here(actor, action).await.map(|(applied, _)| applied)
    }

    /// [`Federator::propose_here`], also returning the log index the write was committed at.
    pub async fn commit_here(&self, actor: &str, action: Action) -> Result<(Applied, u64), ProposeError> {
        if !self.is_leader() {
            return Err(ProposeError::NotLeader { node: self.id, leader: self.leader() });
        }
        let proposal = Proposal::new(now_ms(), actor, action);
        self.shared.read(|s| validate(s, &proposal))?;
        match self.writes.write(proposal).await {
            Ok((response, index)) => Ok((response?, index)),
            Err(WriteFailed::NotLeader(leader)) => Err(ProposeError::NotLeader { node: self.id, leader }),
            Err(WriteFailed::Raft(e)) => Err(ProposeError::Raft(e)),
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
        max_in_snapshot_log_to_keep: config.raft.logs_to_keep,
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
        leader_client: std::sync::Mutex::new(None),
        observations: std::sync::Mutex::new(Default::default()),
        writes: crate::batch::Writes::start(
            raft.clone(),
            crate::batch::Limits {
                in_flight: config.raft.writes_in_flight,
                per_entry: config.raft.max_writes_per_entry,
                timeout: Duration::from_millis(config.raft.write_timeout_ms),
            },
        ),
    });
    let max = switchyard_proto::MAX_MESSAGE_BYTES;
    let router = tonic::transport::Server::builder()
        .tls_config(tls.server_tls())?
        .http2_keepalive_interval(Some(Duration::from_secs(2)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
        // Small request/response messages (Raft appends, votes): no Nagle delay.
        .tcp_nodelay(true)
        .initial_stream_window_size(crate::raft::PEER_STREAM_WINDOW)
        .initial_connection_window_size(crate::raft::PEER_CONNECTION_WINDOW)
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

    // A new cluster is initialised once, by the replica with the lowest node id, and only when
    // every configured peer confirms it belongs to no cluster yet: a replica whose data
    // directory was wiped must be added back (`fedctl cluster add`), never found a second
    // cluster with the same ids. The others join when it reaches them.
    let lowest = config.peers.iter().map(|p| p.node_id).chain([config.node_id]).min();
    let bootstrap = if !raft.is_initialized().await? && lowest == Some(config.node_id) {
        Some(tokio::spawn(bootstrap(raft.clone(), config.clone(), tls.clone())))
    } else {
        None
    };

    let executor = tokio::spawn(executor::run(federator.clone()));
    tokio::spawn(crate::observe::probe_forever(federator.clone()));

    let metrics_addr = match config.metrics_listen {
        Some(addr) => {
            let handle = switchyard_telemetry::init_metrics()?;
            Some(switchyard_telemetry::serve_metrics(addr, handle).await?)
        }
        None => None,
    };
    tracing::info!(%grpc_addr, ?metrics_addr, node_id = config.node_id, "federator started");
    let mut tasks = vec![server, executor];
    tasks.extend(bootstrap);
    Ok(Running { federator, grpc_addr, metrics_addr, tasks })
}

/// Initialises a new cluster once every configured peer has answered that it belongs to none
/// (retrying unreachable peers); gives up for good if any peer already belongs to one.
async fn bootstrap(raft: Raft, config: Arc<FederatorConfig>, tls: switchyard_tls::Bundle) {
    let mut waiting_logged = false;
    loop {
        match raft.is_initialized().await {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => {
                tracing::error!(error = %e, "cannot read raft state; not initialising");
                return;
            }
        }
        let mut unknown = Vec::new();
        for peer in &config.peers {
            match probe(&peer.address, &tls).await {
                Ok(false) => {}
                Ok(true) => {
                    tracing::warn!(
                        peer = peer.node_id,
                        "a peer already belongs to a cluster: this replica waits to be added (`fedctl cluster add`) instead of founding a new one"
                    );
                    return;
                }
                Err(e) => unknown.push(format!("{}: {e}", peer.node_id)),
            }
        }
        if unknown.is_empty() {
            let mut members = BTreeMap::from([(config.node_id, BasicNode { addr: config.advertise_addr() })]);
            members.extend(config.peers.iter().map(|p| (p.node_id, BasicNode { addr: p.address.clone() })));
            tracing::info!(node_id = config.node_id, voters = ?members.keys().collect::<Vec<_>>(), "initialising a new cluster");
            if let Err(e) = raft.initialize(members).await {
                tracing::error!(error = %e, "initialising the cluster failed");
            }
            return;
        }
        if !waiting_logged {
            tracing::info!(peers = ?unknown, "waiting for every peer to answer before initialising a new cluster");
            waiting_logged = true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn probe(address: &str, tls: &switchyard_tls::Bundle) -> Result<bool, String> {
    let channel = crate::raft::mtls_channel(address, tls).map_err(|e| e.to_string())?;
    let mut client = RaftPeerClient::new(channel);
    let reply = tokio::time::timeout(Duration::from_secs(2), client.probe(crate::raft::encode(&())))
        .await
        .map_err(|_| "no answer".to_string())?
        .map_err(|s| s.message().to_string())?;
    crate::raft::decode(reply.get_ref())
}
