//! Small JSON files in a data directory, replaced atomically (temporary file, fsync, rename) so
//! a crash leaves either the old or the new content, never a mix. Each file carries a version.

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

/// `epoch.json`: the highest desired-state epoch the cell has applied. It is written before the
/// state is applied, so a restarted cell can never go back to an older epoch.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EpochFile {
    pub version: u32,
    pub applied_epoch: u64,
}

pub fn epoch_path(data_dir: &Path) -> PathBuf {
    data_dir.join("epoch.json")
}

pub fn load_epoch(data_dir: &Path) -> Result<u64, AgentError> {
    let path = epoch_path(data_dir);
    match read_json::<EpochFile>(&path)? {
        Some(f) => {
            check_version(&path, f.version)?;
            Ok(f.applied_epoch)
        }
        None => Ok(0),
    }
}

pub fn save_epoch(data_dir: &Path, applied_epoch: u64) -> std::io::Result<()> {
    write_json_atomic(&epoch_path(data_dir), &EpochFile { version: FORMAT_VERSION, applied_epoch })
}

/// `cell-state.json`: what a restarted cell needs to keep running tasks where they are instead
/// of replacing them, even while the federator is unreachable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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

pub fn state_path(data_dir: &Path) -> PathBuf {
    data_dir.join("cell-state.json")
}

pub fn load_state(data_dir: &Path, site: &str) -> Result<Option<CellStateFile>, AgentError> {
    let path = state_path(data_dir);
    let Some(state) = read_json::<CellStateFile>(&path)? else { return Ok(None) };
    check_version(&path, state.version)?;
    if state.site != site {
        return Err(AgentError::CorruptState {
            path,
            reason: format!("it belongs to site {:?}, not {site:?}; use a separate --data-dir per site", state.site),
        });
    }
    Ok(Some(state))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_round_trips_and_starts_at_zero() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load_epoch(dir.path()).unwrap(), 0);
        save_epoch(dir.path(), 42).unwrap();
        assert_eq!(load_epoch(dir.path()).unwrap(), 42);
        assert!(!dir.path().join("epoch.json.tmp").exists());
    }

    #[test]
    fn corrupt_epoch_file_refuses_to_start() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(epoch_path(dir.path()), "{\"version\":1,").unwrap();
        assert!(matches!(load_epoch(dir.path()), Err(AgentError::CorruptState { .. })));
    }

    #[test]
    fn state_of_another_site_is_refused() {
        let dir = tempfile::tempdir().unwrap();
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
        write_json_atomic(&state_path(dir.path()), &s).unwrap();
        assert_eq!(load_state(dir.path(), "a").unwrap(), Some(s));
        assert!(load_state(dir.path(), "b").is_err());
    }
}
