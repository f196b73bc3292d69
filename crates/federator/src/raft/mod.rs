//! The federator's Raft plumbing: type configuration, redb-backed storage and the tonic peer
//! transport. Decisions never live here; this module only moves `Proposal`s into the log (batched as `Command`s) and
//! committed entries into `State::apply`.

mod network;
mod runtime;
mod store;

pub use network::{NetworkFactory, PEER_CONNECTION_WINDOW, PEER_STREAM_WINDOW, PeerService, mtls_channel};
pub(crate) use network::{decode, encode};
pub use runtime::{Runtime, seed_thread_rng};
pub use store::{Backup, LogStore, Restored, Shared, StateMachineStore, open_storage, restore, storage_on};

use switchyard_core::{Command, Response};

openraft::declare_raft_types!(
    /// Raft types of the federator: log entries carry a `Command` (one proposal or a batch),
    /// applying one yields a `Response` per proposal.
    pub TypeConfig:
        D = Command,
        R = Vec<Response>,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = std::io::Cursor<Vec<u8>>,
        AsyncRuntime = Runtime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type NodeId = u64;
pub type LogId = openraft::LogId<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;
