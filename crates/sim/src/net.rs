//! The simulated network: every message between two endpoints (replicas, cells, DNS servers,
//! operators) takes one hop that may be lost, delayed or cut by a partition, all decided by the
//! run's seeded generator. Raft traffic goes through the same hops as everything else.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use openraft::BasicNode;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use rand08::rngs::StdRng;
use rand08::{Rng, SeedableRng};
use switchyard_core::dr::detect::{Detector, Health};
use switchyard_federator::raft::{NodeId, Raft, Shared, TypeConfig};

/// Who sends and receives: replicas are 1..=n; cells, DNS servers and operators have their own.
pub type Endpoint = u64;

/// How long a sender waits before it gives up on a message that was lost.
pub const LOST_AFTER: Duration = Duration::from_millis(150);

/// A running replica as the rest of the world reaches it.
#[derive(Clone)]
pub struct ReplicaHandle {
    pub id: NodeId,
    pub raft: Raft,
    pub shared: Arc<Shared>,
    pub skew_ms: i64,
    /// The replica's in-memory failure detector (lost in a crash, as in a federator process).
    pub detector: Arc<Mutex<Detector>>,
    /// The federator's own write path (`federator::batch`): concurrent writes share entries.
    pub writes: switchyard_federator::batch::Writes,
}

/// A path cut between two endpoints while both keep running (the disaster-recovery family's
/// federator-only partition).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// Packets vanish: a probe times out (unknown).
    Blackhole,
    /// A router answers "host unreachable": a probe fails at once, which the probe rule
    /// (`connect_error_health`) reads as the site's answer (unhealthy), though only this path
    /// is broken.
    Unreachable,
}

/// How long a probe waits for an answer before it calls the site unknown.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(400);

pub struct NetState {
    pub rng: StdRng,
    /// Side of the current partition of each endpoint (all 0 when healed).
    pub side: BTreeMap<Endpoint, u8>,
    /// Per-mille chance that a message is lost.
    pub loss_permille: u32,
    pub max_delay_ms: u64,
    pub replicas: BTreeMap<NodeId, ReplicaHandle>,
    /// Endpoints that are down (crashed cells, DNS servers).
    pub down: BTreeMap<Endpoint, bool>,
    /// Virtual time zero, for the replicas' clocks.
    pub start: tokio::time::Instant,
    /// Paths cut between two running endpoints, keyed (lower, higher).
    pub cuts: BTreeMap<(Endpoint, Endpoint), Cut>,
}

#[derive(Clone)]
pub struct Net(Arc<Mutex<NetState>>);

/// Wall-clock origin of the simulated clocks (any fixed value keeps runs reproducible).
pub const EPOCH_MS: u64 = 1_800_000_000_000;

impl Net {
    pub fn new(seed: u64) -> Self {
        // Outside a runtime, tokio's clock is the real one and `start` would not be virtual
        // time zero: every timestamp of the run would shift by however long the thread waited.
        assert!(tokio::runtime::Handle::try_current().is_ok(), "the simulated network is built inside its runtime");
        Net(Arc::new(Mutex::new(NetState {
            rng: StdRng::seed_from_u64(seed ^ 0x0005_eed0_f7e7),
            side: BTreeMap::new(),
            loss_permille: 0,
            max_delay_ms: 5,
            replicas: BTreeMap::new(),
            down: BTreeMap::new(),
            start: tokio::time::Instant::now(),
            cuts: BTreeMap::new(),
        })))
    }

    pub fn lock(&self) -> MutexGuard<'_, NetState> {
        self.0.lock().expect("net lock")
    }

    /// Milliseconds of virtual time since the run began.
    pub fn elapsed_ms(&self) -> u64 {
        self.lock().start.elapsed().as_millis() as u64
    }

    /// A clock running `skew_ms` off true time (stamps proposals, feeds decisions).
    pub fn clock_ms(&self, skew_ms: i64) -> u64 {
        (EPOCH_MS + self.elapsed_ms()).saturating_add_signed(skew_ms)
    }

    pub fn replica(&self, id: NodeId) -> Option<ReplicaHandle> {
        self.lock().replicas.get(&id).cloned()
    }

    pub fn replica_ids(&self) -> Vec<NodeId> {
        self.lock().replicas.keys().copied().collect()
    }

    pub fn pick(&self, ids: &[NodeId]) -> Option<NodeId> {
        if ids.is_empty() {
            return None;
        }
        let i = self.lock().rng.gen_range(0..ids.len());
        Some(ids[i])
    }

    fn reachable(s: &NetState, from: Endpoint, to: Endpoint) -> bool {
        let up = |e: Endpoint| !s.down.get(&e).copied().unwrap_or(false);
        up(from) && up(to) && Self::path(s, from, to).is_ok()
    }

    /// Whether the path between two endpoints is open (whether or not they run): Err names
    /// the cut (a partition is a blackhole).
    fn path(s: &NetState, from: Endpoint, to: Endpoint) -> Result<(), Cut> {
        if let Some(cut) = s.cuts.get(&(from.min(to), from.max(to))) {
            return Err(*cut);
        }
        if s.side.get(&from).copied().unwrap_or(0) != s.side.get(&to).copied().unwrap_or(0) {
            return Err(Cut::Blackhole);
        }
        Ok(())
    }

    /// One TCP connect from `from` to the ingress `to`, classified as the observers do
    /// (`federator/src/observe.rs`): an answer that the ingress is closed (it is down: refused)
    /// or that the path is unreachable is unhealthy; no answer within [`PROBE_TIMEOUT`] (lost,
    /// blackholed, partitioned) is unknown; a connection is healthy.
    pub async fn probe(&self, from: Endpoint, to: Endpoint) -> (Health, &'static str) {
        let outbound = {
            let mut s = self.lock();
            let max = s.max_delay_ms.max(1);
            match Self::path(&s, from, to) {
                Err(Cut::Unreachable) => Ok(s.rng.gen_range(1..=max)),
                Err(Cut::Blackhole) => Err(()),
                Ok(()) if s.rng.gen_range(0..1000) < s.loss_permille => Err(()),
                Ok(()) => Ok(s.rng.gen_range(1..=max)),
            }
        };
        let Ok(out_ms) = outbound else {
            tokio::time::sleep(PROBE_TIMEOUT).await;
            return (Health::Unknown, "probe timed out");
        };
        let out_ms = out_ms.min(PROBE_TIMEOUT.as_millis() as u64);
        tokio::time::sleep(Duration::from_millis(out_ms)).await;
        // What answers, and whether the answer makes it back in time.
        let answer = {
            let mut s = self.lock();
            let max = s.max_delay_ms.max(1);
            let down = s.down.get(&to).copied().unwrap_or(false);
            let answer = match Self::path(&s, from, to) {
                Err(Cut::Unreachable) => Some((Health::Unhealthy, "host unreachable")),
                Err(Cut::Blackhole) => None,
                Ok(()) if down => Some((Health::Unhealthy, "connection refused")),
                Ok(()) => Some((Health::Healthy, "connected")),
            };
            let lost = s.rng.gen_range(0..1000) < s.loss_permille;
            answer.filter(|_| !lost).map(|a| (a, s.rng.gen_range(1..=max)))
        };
        let left = PROBE_TIMEOUT.as_millis() as u64 - out_ms;
        match answer {
            Some((a, back_ms)) if back_ms < left => {
                tokio::time::sleep(Duration::from_millis(back_ms)).await;
                a
            }
            _ => {
                tokio::time::sleep(Duration::from_millis(left)).await;
                (Health::Unknown, "probe timed out")
            }
        }
    }

    /// Sends one message from `from` to `to`: true once it arrived (after its delay), false once
    /// the sender has given up on it (lost, partitioned, or the receiver is down).
    pub async fn hop(&self, from: Endpoint, to: Endpoint) -> bool {
        let delay = {
            let mut s = self.lock();
            let lost = !Self::reachable(&s, from, to) || s.rng.gen_range(0..1000) < s.loss_permille;
            if lost {
                None
            } else {
                let max = s.max_delay_ms.max(1);
                Some(s.rng.gen_range(1..=max))
            }
        };
        match delay {
            Some(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                // The receiver may have crashed or been cut off while the message travelled.
                Self::reachable(&self.lock(), from, to)
            }
            None => {
                tokio::time::sleep(LOST_AFTER).await;
                false
            }
        }
    }
}

/// Raft's view of the network for one replica.
pub struct Factory {
    pub from: NodeId,
    pub net: Net,
}

impl RaftNetworkFactory<TypeConfig> for Factory {
    type Network = Link;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> Self::Network {
        Link { from: self.from, to: target, net: self.net.clone() }
    }
}

pub struct Link {
    from: NodeId,
    to: NodeId,
    net: Net,
}

fn lost<E: std::error::Error>(what: &str) -> RPCError<NodeId, BasicNode, E> {
    // Never `Unreachable`: openraft backs off on that with an unseeded `select!`, which would
    // make runs irreproducible.
    RPCError::Network(NetworkError::new(&std::io::Error::other(what.to_string())))
}

impl Link {
    async fn target(&self) -> Option<Raft> {
        if !self.net.hop(self.from, self.to).await {
            return None;
        }
        self.net.replica(self.to).map(|h| h.raft)
    }

    async fn back(&self) -> bool {
        self.net.hop(self.to, self.from).await
    }
}

impl RaftNetwork<TypeConfig> for Link {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let Some(raft) = self.target().await else { return Err(lost("append lost")) };
        let reply = raft.append_entries(rpc).await.map_err(|_| lost("append failed at the receiver"))?;
        if self.back().await { Ok(reply) } else { Err(lost("append reply lost")) }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>>
    {
        let Some(raft) = self.target().await else { return Err(lost("snapshot lost")) };
        let reply = raft.install_snapshot(rpc).await.map_err(|_| lost("snapshot failed at the receiver"))?;
        if self.back().await { Ok(reply) } else { Err(lost("snapshot reply lost")) }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let Some(raft) = self.target().await else { return Err(lost("vote lost")) };
        let reply = raft.vote(rpc).await.map_err(|_| lost("vote failed at the receiver"))?;
        if self.back().await { Ok(reply) } else { Err(lost("vote reply lost")) }
    }
}
