//! Durable state. The cell keeps its fencing epoch and task table in one redb database
//! (`cell.redb`, [`CellStore`]); each value is versioned JSON written in a committed (fsynced)
//! transaction. Nodes keep `tasks.json`, a small JSON file replaced atomically (temporary file,
//! fsync, rename), because outside tools read it too.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::AgentError;
use crate::model::{GroupRecord, TaskRecord};

pub const FORMAT_VERSION: u32 = 1;

/// Writes `value` as JSON to `path`, atomically.
pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    let tmp = path.with_extension("json.tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent()
        && let Ok(d) = std::fs::File::open(dir)
    {
        // Makes the rename itself durable; failure only weakens durability, not atomicity.
        let _ = d.sync_all();
    }
    Ok(())
}

/// Reads a JSON file; `Ok(None)` when it does not exist.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, AgentError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| AgentError::CorruptState { path: path.to_path_buf(), reason: e.to_string() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(AgentError::Io { path: path.to_path_buf(), source }),
    }
}

fn check_version(path: &Path, version: u32) -> Result<(), AgentError> {
    if version == FORMAT_VERSION {
        Ok(())
    } else {
        Err(AgentError::CorruptState {
            path: path.to_path_buf(),
            reason: format!("format version {version}, this agent reads version {FORMAT_VERSION}"),
        })
    }
}

/// The highest desired-state epoch the cell has applied. It is written before the state is
/// applied, so a restarted cell can never go back to an older epoch.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EpochRecord {
    pub version: u32,
    pub applied_epoch: u64,
}

/// The cell's task table: what a restarted cell needs to keep running tasks where they are instead
/// of replacing them, even while the federator is unreachable.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CellStateFile {
    pub version: u32,
    pub site: String,
    /// Next task sequence number; task ids embed it, so it only grows.
    pub task_counter: u64,
    /// Epoch of the desired state the groups below come from; `None` before any was applied.
    pub desired_epoch: Option<u64>,
    /// Groups of the last applied desired state, in order.
    pub managed: Vec<String>,
    /// Last known spec of every group that still has tasks or is managed.
    pub groups: Vec<GroupRecord>,
    pub tasks: Vec<TaskRecord>,
    /// Nodes in maintenance; they stay so across restarts until undrained.
    #[serde(default)]
    pub draining: Vec<String>,
}

const CELL_TABLE: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("cell");
const KEY_EPOCH: &str = "epoch";
const KEY_STATE: &str = "state";

/// The cell's redb database in its data directory. Only one process can hold it open, so two
/// cells can never share a data directory.
#[derive(Clone)]
pub struct CellStore {
    db: std::sync::Arc<redb::Database>,
    path: PathBuf,
}

impl CellStore {
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("cell.redb")
    }

    /// Opens the store, waiting up to `wait` for a previous holder (an instance still shutting
    /// down) to let go of it.
    pub async fn open_waiting(data_dir: &Path, wait: std::time::Duration) -> Result<Self, AgentError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match Self::open(data_dir) {
                Err(AgentError::CorruptState { reason, .. })
                    if reason.starts_with("another process") && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                other => return other,
            }
        }
    }

    pub fn open(data_dir: &Path) -> Result<Self, AgentError> {
        let path = Self::path(data_dir);
        let corrupt = |reason: String| AgentError::CorruptState { path: path.clone(), reason };
        let db = redb::Database::create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => corrupt(
                "another process (a second cell?) holds this database; give every cell its own --data-dir".into(),
            ),
            other => corrupt(other.to_string()),
        })?;
        let tx = db.begin_write().map_err(|e| corrupt(e.to_string()))?;
        tx.open_table(CELL_TABLE).map_err(|e| corrupt(e.to_string()))?;
        tx.commit().map_err(|e| corrupt(e.to_string()))?;
        Ok(Self { db: std::sync::Arc::new(db), path })
    }

    fn read<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, AgentError> {
        use redb::ReadableDatabase;
        let corrupt = |reason: String| AgentError::CorruptState { path: self.path.clone(), reason };
        let tx = self.db.begin_read().map_err(|e| corrupt(e.to_string()))?;
        let table = tx.open_table(CELL_TABLE).map_err(|e| corrupt(e.to_string()))?;
        let Some(value) = table.get(key).map_err(|e| corrupt(e.to_string()))? else { return Ok(None) };
        serde_json::from_slice(value.value()).map(Some).map_err(|e| corrupt(format!("{key}: {e}")))
    }

    fn write<T: Serialize>(&self, key: &str, value: &T) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(value).map_err(std::io::Error::other)?;
        let tx = self.db.begin_write().map_err(std::io::Error::other)?;
        tx.open_table(CELL_TABLE)
            .map_err(std::io::Error::other)?
            .insert(key, bytes.as_slice())
            .map_err(std::io::Error::other)?;
        tx.commit().map_err(std::io::Error::other)
    }

    pub fn load_epoch(&self) -> Result<u64, AgentError> {
        match self.read::<EpochRecord>(KEY_EPOCH)? {
            Some(r) => {
                check_version(&self.path, r.version)?;
                Ok(r.applied_epoch)
            }
            None => Ok(0),
        }
    }

    /// Durable when it returns (redb commits with fsync).
    pub fn save_epoch(&self, applied_epoch: u64) -> std::io::Result<()> {
        self.write(KEY_EPOCH, &EpochRecord { version: FORMAT_VERSION, applied_epoch })
    }

    pub fn load_state(&self, site: &str) -> Result<Option<CellStateFile>, AgentError> {
        let Some(state) = self.read::<CellStateFile>(KEY_STATE)? else { return Ok(None) };
        check_version(&self.path, state.version)?;
        if state.site != site {
            return Err(AgentError::CorruptState {
                path: self.path.clone(),
                reason: format!(
                    "it belongs to site {:?}, not {site:?}; use a separate --data-dir per site",
                    state.site
                ),
            });
        }
        Ok(Some(state))
    }

    pub fn save_state(&self, state: &CellStateFile) -> std::io::Result<()> {
        self.write(KEY_STATE, state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_round_trips_and_starts_at_zero() {
        let dir = tempfile::tempdir().unwrap();
        let store = CellStore::open(dir.path()).unwrap();
        assert_eq!(store.load_epoch().unwrap(), 0);
        store.save_epoch(42).unwrap();
        drop(store);
        assert_eq!(CellStore::open(dir.path()).unwrap().load_epoch().unwrap(), 42, "durable across reopen");
    }

    #[test]
    fn a_second_opener_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = CellStore::open(dir.path()).unwrap();
        let err = CellStore::open(dir.path()).err().expect("second open must fail");
        assert!(err.to_string().contains("own --data-dir"), "{err}");
    }

    #[test]
    fn corrupt_values_refuse_to_start() {
        let dir = tempfile::tempdir().unwrap();
        let store = CellStore::open(dir.path()).unwrap();
        store.write(KEY_EPOCH, &serde_json::json!({"version": 1})).unwrap();
        assert!(matches!(store.load_epoch(), Err(AgentError::CorruptState { .. })));
        store.write(KEY_EPOCH, &EpochRecord { version: 9, applied_epoch: 1 }).unwrap();
        assert!(store.load_epoch().unwrap_err().to_string().contains("version 9"));
    }

    #[test]
    fn state_round_trips_and_another_site_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = CellStore::open(dir.path()).unwrap();
        assert_eq!(store.load_state("a").unwrap(), None);
        let s = CellStateFile {
            version: FORMAT_VERSION,
            site: "a".into(),
            task_counter: 3,
            desired_epoch: Some(2),
            managed: vec![],
            groups: vec![],
            tasks: vec![],
            draining: vec!["node-1".into()],
        };
        store.save_state(&s).unwrap();
        assert_eq!(store.load_state("a").unwrap(), Some(s));
        assert!(store.load_state("b").is_err());
    }
}
