//! redb storage for the Raft log, vote, committed index and snapshots. The state machine lives
//! in memory and is rebuilt at start from the last snapshot plus the log after it.

use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, RwLock};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, RaftLogReader, RaftSnapshotBuilder, SnapshotMeta, StorageIOError, StoredMembership,
    Vote,
};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use switchyard_core::{Applied, State};
use tokio::sync::watch;

use super::{LogId, NodeId, StorageError, TypeConfig};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");

const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_PURGED: &str = "last_purged";
const KEY_SNAPSHOT_META: &str = "meta";
const KEY_SNAPSHOT_DATA: &str = "data";

/// Format marker of snapshot data, checked on load.
const SNAPSHOT_FORMAT: u32 = 1;

fn io_err(e: anyhow::Error) -> openraft::AnyError {
    openraft::AnyError::error(format!("{e:#}"))
}

/// Opens (or creates) the federator's database and returns the log store and state machine.
pub fn open_storage(data_dir: &Path) -> Result<(LogStore, StateMachineStore), anyhow::Error> {
    std::fs::create_dir_all(data_dir)?;
    let path = data_dir.join("federator.redb");
    let db = Database::create(&path).map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
    storage_on(db)
}

/// The log store and state machine on an already opened database (the simulation opens one on
/// an in-memory backend that outlives a simulated crash).
pub fn storage_on(db: Database) -> Result<(LogStore, StateMachineStore), anyhow::Error> {
    let db = Arc::new(db);
    {
        let tx = db.begin_write()?;
        tx.open_table(LOG)?;
        tx.open_table(META)?;
        tx.open_table(SNAPSHOT)?;
        tx.commit()?;
    }
    let sm = StateMachineStore::load(db.clone())?;
    Ok((LogStore { db }, sm))
}

/// The Raft log in redb.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    fn read_meta<T: for<'de> Deserialize<'de>>(&self, key: &str) -> anyhow::Result<Option<T>> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(META)?;
        let Some(v) = table.get(key)? else { return Ok(None) };
        Ok(Some(serde_json::from_slice(v.value())?))
    }

    fn write_meta<T: Serialize>(&self, key: &str, value: &T, durable: bool) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec(value).expect("raft metadata serializes");
        let mut tx = self.db.begin_write()?;
        if !durable {
            tx.set_durability(redb::Durability::None)?;
        }
        tx.open_table(META)?.insert(key, bytes.as_slice())?;
        tx.commit()?;
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError> {
        let read = || -> anyhow::Result<Vec<Entry<TypeConfig>>> {
            let tx = self.db.begin_read()?;
            let table = tx.open_table(LOG)?;
            let start = match range.start_bound() {
                Bound::Included(s) => *s,
                Bound::Excluded(s) => s + 1,
                Bound::Unbounded => 0,
            };
            let mut out = Vec::new();
            for item in table.range(start..)? {
                let (k, v) = item?;
                if !range.contains(&k.value()) {
                    break;
                }
                let entry: Entry<TypeConfig> = serde_json::from_slice(v.value())
                    .map_err(|e| anyhow::anyhow!(format!("log entry {} is unreadable: {e}", k.value())))?;
                out.push(entry);
            }
            Ok(out)
        };
        read().map_err(|e| StorageIOError::read_logs(io_err(e)).into())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let read = || -> anyhow::Result<LogState<TypeConfig>> {
            let last_purged: Option<LogId> = self.read_meta(KEY_PURGED)?;
            let tx = self.db.begin_read()?;
            let table = tx.open_table(LOG)?;
            let last = match table.last()? {
                Some((_, v)) => {
                    let e: Entry<TypeConfig> = serde_json::from_slice(v.value())
                        .map_err(|e| anyhow::anyhow!(format!("last log entry is unreadable: {e}")))?;
                    Some(e.log_id)
                }
                None => last_purged,
            };
            Ok(LogState { last_purged_log_id: last_purged, last_log_id: last })
        };
        read().map_err(|e| StorageIOError::read_logs(io_err(e)).into())
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        self.write_meta(KEY_VOTE, vote, true).map_err(|e| StorageIOError::write_vote(io_err(e)).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.read_meta(KEY_VOTE).map_err(|e| StorageIOError::read_vote(io_err(e)).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Advisory (a restarted replica learns the committed index from the leader again), so
        // it need not cost an fsync on every commit: it becomes durable with the next log append.
        self.write_meta(KEY_COMMITTED, &committed, false).map_err(|e| StorageIOError::write(io_err(e)).into())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        self.read_meta::<Option<LogId>>(KEY_COMMITTED)
            .map(Option::flatten)
            .map_err(|e| StorageIOError::read(io_err(e)).into())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let write = || -> anyhow::Result<()> {
            let tx = self.db.begin_write()?;
            {
                let mut table = tx.open_table(LOG)?;
                for entry in entries {
                    let bytes = serde_json::to_vec(&entry).expect("log entries serialize");
                    table.insert(entry.log_id.index, bytes.as_slice())?;
                }
            }
            tx.commit()?;
            Ok(())
        };
        // redb commits durably (fsync) before returning, so the entries are on disk here.
        let result = write();
        callback.log_io_completed(result.as_ref().map(|_| ()).map_err(|e| std::io::Error::other(format!("{e:#}"))));
        result.map_err(|e| StorageIOError::write_logs(io_err(e)).into())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let write = || -> anyhow::Result<()> {
            let tx = self.db.begin_write()?;
            tx.open_table(LOG)?.retain_in(log_id.index.., |_, _| false)?;
            tx.commit()?;
            Ok(())
        };
        write().map_err(|e| StorageIOError::write_logs(io_err(e)).into())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let write = || -> anyhow::Result<()> {
            let bytes = serde_json::to_vec(&log_id).expect("log ids serialize");
            let tx = self.db.begin_write()?;
            tx.open_table(META)?.insert(KEY_PURGED, bytes.as_slice())?;
            tx.open_table(LOG)?.retain_in(..=log_id.index, |_, _| false)?;
            tx.commit()?;
            Ok(())
        };
        write().map_err(|e| StorageIOError::write_logs(io_err(e)).into())
    }
}

/// What a snapshot holds: the whole state plus Raft's bookkeeping.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct SnapshotBody {
    format: u32,
    last_applied: Option<LogId>,
    membership: StoredMembership<NodeId, BasicNode>,
    state: State,
}

/// The applied state, shared between the state machine and readers (API, cell links, routing).
pub struct Shared {
    body: RwLock<SnapshotBody>,
    applied: watch::Sender<u64>,
}

impl Shared {
    /// Runs `f` on the current state. Never held across an await.
    pub fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.body.read().expect("state lock poisoned").state)
    }

    /// Notified with the last applied log index after every applied batch.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }
}

/// A backup of the applied state in the snapshot format (see [`restore`]).
#[derive(Clone, Debug)]
pub struct Backup {
    pub data: Vec<u8>,
    pub last_log_index: u64,
    pub last_log_term: u64,
    pub snapshot_id: String,
}

impl Shared {
    /// The applied state, serialized as a snapshot (consistent: taken under the state lock).
    pub fn backup(&self) -> Backup {
        let body = self.body.read().expect("state lock poisoned");
        let data = serde_json::to_vec(&*body).expect("state serializes");
        let (index, term) = body.last_applied.map_or((0, 0), |l| (l.index, l.leader_id.term));
        Backup { snapshot_id: format!("backup-{term}-{index}"), data, last_log_index: index, last_log_term: term }
    }
}

/// What [`restore`] wrote.
#[derive(Debug)]
pub struct Restored {
    pub last_log_index: u64,
    pub last_log_term: u64,
    pub groups: usize,
    pub audit_records: usize,
}

/// Seeds an empty data directory from a backup, as a new one-voter cluster of `node_id` at
/// `address`: the backup becomes the replica's snapshot, its log starts after it, and its vote
/// is at the backup's term so the first election moves past it. Refuses a directory that
/// already holds Raft state, and a backup that does not parse or whose audit chain does not
/// verify.
pub fn restore(data_dir: &Path, backup: &[u8], node_id: NodeId, address: &str) -> Result<Restored, anyhow::Error> {
    let body = decode_snapshot(backup).map_err(|e| anyhow::anyhow!("the backup is not a federator snapshot: {e:#}"))?;
    switchyard_core::audit::verify_chain(body.state.audit.records())
        .map_err(|e| anyhow::anyhow!("the backup's audit chain does not verify: {e}"))?;
    let Some(last) = body.last_applied else { anyhow::bail!("the backup holds no applied entry") };
    let (log, sm) = open_storage(data_dir)?;
    {
        let tx = log.db.begin_read()?;
        let has_log = tx.open_table(LOG)?.first()?.is_some();
        let has_vote = tx.open_table(META)?.get(KEY_VOTE)?.is_some();
        let has_snapshot = tx.open_table(SNAPSHOT)?.get(KEY_SNAPSHOT_DATA)?.is_some();
        anyhow::ensure!(
            !has_log && !has_vote && !has_snapshot,
            "{} already holds Raft state; restore into an empty data directory",
            data_dir.display()
        );
    }
    let membership = openraft::Membership::new(
        vec![std::collections::BTreeSet::from([node_id])],
        std::collections::BTreeMap::from([(node_id, BasicNode { addr: address.to_string() })]),
    );
    let restored = SnapshotBody {
        format: SNAPSHOT_FORMAT,
        last_applied: Some(last),
        membership: StoredMembership::new(Some(last), membership),
        state: body.state,
    };
    let data = serde_json::to_vec(&restored).expect("state serializes");
    let meta = SnapshotMeta {
        last_log_id: Some(last),
        last_membership: restored.membership.clone(),
        snapshot_id: format!("restored-{}-{}", last.leader_id.term, last.index),
    };
    sm.save_snapshot(&meta, &data)?;
    log.write_meta(KEY_PURGED, &last, true)?;
    log.write_meta(KEY_COMMITTED, &Some(last), true)?;
    log.write_meta(KEY_VOTE, &Vote::new(last.leader_id.term, node_id), true)?;
    Ok(Restored {
        last_log_index: last.index,
        last_log_term: last.leader_id.term,
        groups: restored.state.groups.len(),
        audit_records: restored.state.audit.len(),
    })
}

/// The state machine: `State` in memory, snapshots in redb.
#[derive(Clone)]
pub struct StateMachineStore {
    db: Arc<Database>,
    shared: Arc<Shared>,
}

impl StateMachineStore {
    fn load(db: Arc<Database>) -> Result<Self, anyhow::Error> {
        let body = {
            let tx = db.begin_read()?;
            let table = tx.open_table(SNAPSHOT)?;
            match table.get(KEY_SNAPSHOT_DATA)? {
                Some(v) => decode_snapshot(v.value())?,
                None => SnapshotBody { format: SNAPSHOT_FORMAT, ..Default::default() },
            }
        };
        let applied = body.last_applied.map_or(0, |l| l.index);
        let (tx, _) = watch::channel(applied);
        Ok(Self { db, shared: Arc::new(Shared { body: RwLock::new(body), applied: tx }) })
    }

    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    fn save_snapshot(&self, meta: &SnapshotMeta<NodeId, BasicNode>, data: &[u8]) -> anyhow::Result<()> {
        let meta = serde_json::to_vec(meta).expect("snapshot meta serializes");
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(SNAPSHOT)?;
            t.insert(KEY_SNAPSHOT_META, meta.as_slice())?;
            t.insert(KEY_SNAPSHOT_DATA, data)?;
        }
        tx.commit()?;
        Ok(())
    }
}

fn decode_snapshot(bytes: &[u8]) -> Result<SnapshotBody, anyhow::Error> {
    let body: SnapshotBody = serde_json::from_slice(bytes)?;
    anyhow::ensure!(body.format == SNAPSHOT_FORMAT, "snapshot format {} is not {SNAPSHOT_FORMAT}", body.format);
    Ok(body)
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let (data, last_applied, membership) = {
            let body = self.shared.body.read().expect("state lock poisoned");
            (serde_json::to_vec(&*body).expect("state serializes"), body.last_applied, body.membership.clone())
        };
        let snapshot_id = match last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, data.len()),
            None => "empty".to_string(),
        };
        let meta = SnapshotMeta { last_log_id: last_applied, last_membership: membership, snapshot_id };
        self.save_snapshot(&meta, &data)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), io_err(e)))?;
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership<NodeId, BasicNode>), StorageError> {
        let body = self.shared.body.read().expect("state lock poisoned");
        Ok((body.last_applied, body.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<switchyard_core::Response>, StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut responses = Vec::new();
        let last = {
            let mut body = self.shared.body.write().expect("state lock poisoned");
            for entry in entries {
                body.last_applied = Some(entry.log_id);
                let response = match entry.payload {
                    EntryPayload::Blank => Ok(Applied::Unchanged),
                    EntryPayload::Normal(proposal) => body.state.apply(entry.log_id.index, &proposal),
                    EntryPayload::Membership(m) => {
                        body.membership = StoredMembership::new(Some(entry.log_id), m);
                        Ok(Applied::Changed)
                    }
                };
                responses.push(response);
            }
            body.last_applied.map_or(0, |l| l.index)
        };
        self.shared.applied.send_replace(last);
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let body = decode_snapshot(&data)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), openraft::AnyError::error(e)))?;
        self.save_snapshot(meta, &data)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), io_err(e)))?;
        let last = body.last_applied.map_or(0, |l| l.index);
        *self.shared.body.write().expect("state lock poisoned") = body;
        self.shared.applied.send_replace(last);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let read = || -> anyhow::Result<Option<(Vec<u8>, Vec<u8>)>> {
            let tx = self.db.begin_read()?;
            let t = tx.open_table(SNAPSHOT)?;
            let (Some(m), Some(d)) = (t.get(KEY_SNAPSHOT_META)?, t.get(KEY_SNAPSHOT_DATA)?) else { return Ok(None) };
            Ok(Some((m.value().to_vec(), d.value().to_vec())))
        };
        let Some((meta, data)) = read().map_err(|e| StorageIOError::read_snapshot(None, io_err(e)))? else {
            return Ok(None);
        };
        let meta: SnapshotMeta<NodeId, BasicNode> = serde_json::from_slice(&meta)
            .map_err(|e| StorageIOError::read_snapshot(None, openraft::AnyError::new(&e)))?;
        Ok(Some(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) }))
    }
}
