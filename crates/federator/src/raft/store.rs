//! redb storage for the Raft log, vote, committed index and snapshots. The state machine lives
//! in memory and is rebuilt at start from the last snapshot plus the log after it.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use anyhow::Context;
use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, RaftLogReader, RaftSnapshotBuilder, SnapshotMeta, StorageIOError, StoredMembership,
    Vote,
};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use switchyard_core::{Applied, State};
use tokio::sync::{oneshot, watch};

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
/// Log appends are made durable by a writer thread, so no runtime worker blocks on an fsync;
/// it commits everything queued in one redb transaction (openraft 0.9 waits for each append to
/// be durable before the next, so today that is one append at a time).
pub fn open_storage(data_dir: &Path) -> Result<(LogStore, StateMachineStore), anyhow::Error> {
    std::fs::create_dir_all(data_dir)?;
    let path = data_dir.join("federator.redb");
    let db = Database::create(&path).map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
    storage_with(db, Writes::WriterThread)
}

/// The log store and state machine on an already opened database, each append committed in
/// the caller's task (the simulation opens one on an in-memory backend that outlives a
/// simulated crash, and needs every write to happen in the order its single thread runs).
pub fn storage_on(db: Database) -> Result<(LogStore, StateMachineStore), anyhow::Error> {
    storage_with(db, Writes::Inline)
}

/// How log appends reach the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Writes {
    /// Committed durably before `append` returns.
    Inline,
    /// Handed to a writer thread; the entries are readable at once, and Raft is told they are
    /// durable when the thread's batch commit returns.
    WriterThread,
}

pub fn storage_with(db: Database, writes: Writes) -> Result<(LogStore, StateMachineStore), anyhow::Error> {
    let db = Arc::new(db);
    {
        let tx = db.begin_write()?;
        tx.open_table(LOG)?;
        tx.open_table(META)?;
        tx.open_table(SNAPSHOT)?;
        tx.commit()?;
    }
    let sm = StateMachineStore::load(db.clone())?;
    let pending = Arc::new(Mutex::new(BTreeMap::new()));
    let writer = match writes {
        Writes::Inline => None,
        Writes::WriterThread => {
            let (tx, rx) = std::sync::mpsc::channel();
            let (db, pending) = (db.clone(), pending.clone());
            let thread = std::thread::Builder::new()
                .name("raft-log-writer".into())
                .spawn(move || write_loop(&db, &rx, &pending))
                .context("starting the log writer thread")?;
            Some(Arc::new(Writer { tx: Some(tx), thread: Some(thread) }))
        }
    };
    Ok((LogStore { db, writer, pending }, sm))
}

/// The writer thread's queue. When the last `LogStore` goes, the queue closes, the thread
/// finishes what was queued and is joined, so the database is closed once the store is dropped
/// (a replica restarted in the same process can open it again).
struct Writer {
    tx: Option<std::sync::mpsc::Sender<Op>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn send(&self, op: Op) -> Result<(), std::sync::mpsc::SendError<Op>> {
        self.tx.as_ref().expect("the queue closes only on drop").send(op)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An entry waiting for the writer thread: readable by Raft already, not yet durable.
type Pending = Arc<Mutex<BTreeMap<u64, Entry<TypeConfig>>>>;

/// Work on the database that waits for every append queued before it.
type DbWork = Box<dyn FnOnce(&Database) -> anyhow::Result<()> + Send>;
/// Serialized entries of one `append` call and the callback that tells Raft they are durable.
type QueuedAppend = (Vec<(LogId, Vec<u8>)>, LogFlushed<TypeConfig>);

/// Work for the writer thread, done in the order it was queued.
enum Op {
    Append {
        rows: Vec<(LogId, Vec<u8>)>,
        callback: LogFlushed<TypeConfig>,
    },
    /// Runs after every append queued before it is durable.
    Sync {
        work: DbWork,
        done: oneshot::Sender<anyhow::Result<()>>,
    },
    /// The committed log id (advisory): written with the next batch, only the latest kept.
    Committed(Vec<u8>),
}

/// The writer thread: takes everything queued, commits consecutive appends in one durable
/// transaction, then tells Raft. Ends when the last `LogStore` is dropped.
fn write_loop(db: &Database, rx: &std::sync::mpsc::Receiver<Op>, pending: &Pending) {
    const MAX_BATCH: usize = 4096;
    while let Ok(first) = rx.recv() {
        let mut ops = vec![first];
        while ops.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        let mut appends = Vec::new();
        let mut committed = None;
        for op in ops {
            match op {
                Op::Append { rows, callback } => appends.push((rows, callback)),
                Op::Committed(bytes) => committed = Some(bytes),
                Op::Sync { work, done } => {
                    commit_appends(db, std::mem::take(&mut appends), committed.take(), pending);
                    let _ = done.send(work(db));
                }
            }
        }
        commit_appends(db, appends, committed, pending);
    }
}

/// One transaction for everything drained: the appends (durable) and the latest committed log
/// id (non-durable on its own: it rides along with the next durable commit).
fn commit_appends(db: &Database, appends: Vec<QueuedAppend>, committed: Option<Vec<u8>>, pending: &Pending) {
    if appends.is_empty() {
        if let Some(bytes) = committed
            && let Err(e) = put_meta(db, KEY_COMMITTED, &bytes, false)
        {
            tracing::warn!(error = %format!("{e:#}"), "saving the committed index failed");
        }
        return;
    }
    let write = || -> anyhow::Result<()> {
        let tx = db.begin_write()?;
        if let Some(bytes) = &committed {
            tx.open_table(META)?.insert(KEY_COMMITTED, bytes.as_slice())?;
        }
        {
            let mut table = tx.open_table(LOG)?;
            for (rows, _) in &appends {
                for (log_id, bytes) in rows {
                    table.insert(log_id.index, bytes.as_slice())?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    };
    let result = write().map_err(|e| format!("{e:#}"));
    if result.is_ok() {
        // Durable now: readers find them in redb. An index appended again since (after a
        // truncation) keeps its newer pending entry.
        let mut pending = pending.lock().expect("pending log lock");
        for (rows, _) in &appends {
            for (log_id, _) in rows {
                if pending.get(&log_id.index).is_some_and(|e| e.log_id == *log_id) {
                    pending.remove(&log_id.index);
                }
            }
        }
    }
    for (_, callback) in appends {
        callback.log_io_completed(result.clone().map_err(std::io::Error::other));
    }
}

/// The Raft log in redb.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    writer: Option<Arc<Writer>>,
    pending: Pending,
}

impl LogStore {
    fn read_meta<T: for<'de> Deserialize<'de>>(&self, key: &str) -> anyhow::Result<Option<T>> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(META)?;
        let Some(v) = table.get(key)? else { return Ok(None) };
        Ok(Some(serde_json::from_slice(v.value())?))
    }

    fn write_meta<T: Serialize>(&self, key: &str, value: &T, durable: bool) -> anyhow::Result<()> {
        put_meta(&self.db, key, &serde_json::to_vec(value).expect("raft metadata serializes"), durable)
    }

    /// Runs `work` on the database after every append queued before it is durable, and waits
    /// for it (directly when appends are inline).
    async fn after_appends(
        &self,
        work: impl FnOnce(&Database) -> anyhow::Result<()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Some(writer) = &self.writer else { return work(&self.db) };
        let (done, wait) = oneshot::channel();
        writer.send(Op::Sync { work: Box::new(work), done }).map_err(|_| anyhow::anyhow!("the log writer stopped"))?;
        wait.await.map_err(|_| anyhow::anyhow!("the log writer stopped"))?
    }
}

fn put_meta(db: &Database, key: &str, bytes: &[u8], durable: bool) -> anyhow::Result<()> {
    let mut tx = db.begin_write()?;
    if !durable {
        tx.set_durability(redb::Durability::None)?;
    }
    tx.open_table(META)?.insert(key, bytes)?;
    tx.commit()?;
    Ok(())
}

fn decode_entry(index: u64, bytes: &[u8]) -> anyhow::Result<Entry<TypeConfig>> {
    serde_json::from_slice(bytes).map_err(|e| anyhow::anyhow!(format!("log entry {index} is unreadable: {e}")))
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError> {
        let read = || -> anyhow::Result<Vec<Entry<TypeConfig>>> {
            let start = match range.start_bound() {
                Bound::Included(s) => *s,
                Bound::Excluded(s) => s + 1,
                Bound::Unbounded => 0,
            };
            // Entries not yet durable first (they may be newer than a durable copy), then redb.
            let mut out: BTreeMap<u64, Entry<TypeConfig>> = self
                .pending
                .lock()
                .expect("pending log lock")
                .range(start..)
                .take_while(|(k, _)| range.contains(*k))
                .map(|(k, e)| (*k, e.clone()))
                .collect();
            let tx = self.db.begin_read()?;
            let table = tx.open_table(LOG)?;
            for item in table.range(start..)? {
                let (k, v) = item?;
                if !range.contains(&k.value()) {
                    break;
                }
                if let std::collections::btree_map::Entry::Vacant(e) = out.entry(k.value()) {
                    e.insert(decode_entry(k.value(), v.value())?);
                }
            }
            Ok(out.into_values().collect())
        };
        read().map_err(|e| StorageIOError::read_logs(io_err(e)).into())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let read = || -> anyhow::Result<LogState<TypeConfig>> {
            let last_purged: Option<LogId> = self.read_meta(KEY_PURGED)?;
            let pending_last = self.pending.lock().expect("pending log lock").values().next_back().map(|e| e.log_id);
            let tx = self.db.begin_read()?;
            let table = tx.open_table(LOG)?;
            let durable_last = match table.last()? {
                Some((k, v)) => Some(decode_entry(k.value(), v.value())?.log_id),
                None => None,
            };
            let last = match (pending_last, durable_last) {
                (Some(p), Some(d)) => Some(if p.index >= d.index { p } else { d }),
                (p, d) => p.or(d).or(last_purged),
            };
            Ok(LogState { last_purged_log_id: last_purged, last_log_id: last })
        };
        read().map_err(|e| StorageIOError::read_logs(io_err(e)).into())
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        let bytes = serde_json::to_vec(vote).expect("votes serialize");
        self.after_appends(move |db| put_meta(db, KEY_VOTE, &bytes, true))
            .await
            .map_err(|e| StorageIOError::write_vote(io_err(e)).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.read_meta(KEY_VOTE).map_err(|e| StorageIOError::read_vote(io_err(e)).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Advisory (a restarted replica learns the committed index from the leader again), so
        // it costs no fsync and nobody waits for it: it becomes durable with the next append.
        let bytes = serde_json::to_vec(&committed).expect("log ids serialize");
        match &self.writer {
            Some(writer) => writer
                .send(Op::Committed(bytes))
                .map_err(|_| StorageIOError::write(io_err(anyhow::anyhow!("the log writer stopped"))).into()),
            None => {
                put_meta(&self.db, KEY_COMMITTED, &bytes, false).map_err(|e| StorageIOError::write(io_err(e)).into())
            }
        }
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
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let rows: Vec<(LogId, Vec<u8>)> =
            entries.iter().map(|e| (e.log_id, serde_json::to_vec(e).expect("log entries serialize"))).collect();
        let Some(writer) = &self.writer else {
            let write = || -> anyhow::Result<()> {
                let tx = self.db.begin_write()?;
                {
                    let mut table = tx.open_table(LOG)?;
                    for (log_id, bytes) in &rows {
                        table.insert(log_id.index, bytes.as_slice())?;
                    }
                }
                tx.commit()?;
                Ok(())
            };
            // redb commits durably (fsync) before returning, so the entries are on disk here.
            let result = write();
            callback.log_io_completed(result.as_ref().map(|_| ()).map_err(|e| std::io::Error::other(format!("{e:#}"))));
            return result.map_err(|e| StorageIOError::write_logs(io_err(e)).into());
        };
        // Readable at once; durable (and Raft told so) when the writer's batch commits.
        {
            let mut pending = self.pending.lock().expect("pending log lock");
            for e in entries {
                pending.insert(e.log_id.index, e);
            }
        }
        writer
            .send(Op::Append { rows, callback })
            .map_err(|_| StorageIOError::write_logs(io_err(anyhow::anyhow!("the log writer stopped"))).into())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let from = log_id.index;
        // Earlier appends become durable first, so the deletion covers them too.
        let result = self
            .after_appends(move |db| {
                let tx = db.begin_write()?;
                tx.open_table(LOG)?.retain_in(from.., |_, _| false)?;
                tx.commit()?;
                Ok(())
            })
            .await;
        self.pending.lock().expect("pending log lock").retain(|k, _| *k < from);
        result.map_err(|e| StorageIOError::write_logs(io_err(e)).into())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let bytes = serde_json::to_vec(&log_id).expect("log ids serialize");
        let upto = log_id.index;
        let result = self
            .after_appends(move |db| {
                let tx = db.begin_write()?;
                tx.open_table(META)?.insert(KEY_PURGED, bytes.as_slice())?;
                tx.open_table(LOG)?.retain_in(..=upto, |_, _| false)?;
                tx.commit()?;
                Ok(())
            })
            .await;
        self.pending.lock().expect("pending log lock").retain(|k, _| *k > upto);
        result.map_err(|e| StorageIOError::write_logs(io_err(e)).into())
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
    std::fs::create_dir_all(data_dir)?;
    let path = data_dir.join("federator.redb");
    let db = Database::create(&path).map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
    let (log, sm) = storage_with(db, Writes::Inline)?;
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

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<switchyard_core::Response>>, StorageError>
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
                    EntryPayload::Blank => vec![Ok(Applied::Unchanged)],
                    EntryPayload::Normal(command) => body.state.apply_command(entry.log_id.index, &command),
                    EntryPayload::Membership(m) => {
                        body.membership = StoredMembership::new(Some(entry.log_id), m);
                        vec![Ok(Applied::Changed)]
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
