//! Task log files: `stdout.log` and `stderr.log` in each task's working directory, rotated by
//! size, and working directories of tasks gone for a while removed.
//!
//! Rotation is copy-then-truncate: the task keeps its file descriptor (opened with `O_APPEND`,
//! so after the truncation its next write lands at the new end, offset 0), and a node agent
//! that dies or restarts never breaks a task's output. The price, as with logrotate's
//! `copytruncate`, is that a line written between the copy and the truncation can be lost.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

pub const LOG_FILES: [&str; 2] = ["stdout.log", "stderr.log"];

/// How task logs and directories are kept.
#[derive(Clone, Copy, Debug)]
pub struct LogPolicy {
    /// A log larger than this is rotated.
    pub max_bytes: u64,
    /// Rotated files kept: `stdout.log.1` (newest) to `stdout.log.<keep>`.
    pub keep: u32,
    /// Working directories of tasks that no longer run are removed this long after their last
    /// change (their logs stay readable for post-mortems until then).
    pub retain_stopped: Duration,
}

fn numbered(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// Rotates `path` if it is larger than `max_bytes`. Returns whether it rotated.
pub fn rotate_if_needed(path: &Path, max_bytes: u64, keep: u32) -> std::io::Result<bool> {
    let size = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if size <= max_bytes {
        return Ok(false);
    }
    if keep == 0 {
        std::fs::OpenOptions::new().write(true).open(path)?.set_len(0)?;
        return Ok(true);
    }
    let _ = std::fs::remove_file(numbered(path, keep));
    for n in (1..keep).rev() {
        let from = numbered(path, n);
        if from.exists() {
            std::fs::rename(&from, numbered(path, n + 1))?;
        }
    }
    std::fs::copy(path, numbered(path, 1))?;
    std::fs::OpenOptions::new().write(true).open(path)?.set_len(0)?;
    Ok(true)
}

/// One maintenance pass over `<work_dir>/tasks`: rotates the logs of every task directory, and
/// removes directories of tasks not in `running` whose last change is older than the policy's
/// retention. Returns (rotated files, removed directories).
pub fn maintain(tasks_dir: &Path, running: &[String], policy: &LogPolicy, now: SystemTime) -> (usize, usize) {
    let Ok(entries) = std::fs::read_dir(tasks_dir) else { return (0, 0) };
    let (mut rotated, mut removed) = (0, 0);
    for entry in entries.flatten() {
        let dir = entry.path();
        if !dir.is_dir() {
            continue;
        }
        let id = entry.file_name().to_string_lossy().to_string();
        if !running.contains(&id) {
            let newest = std::fs::read_dir(&dir)
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|f| f.metadata().ok()?.modified().ok())
                .chain(entry.metadata().ok().and_then(|m| m.modified().ok()))
                .max();
            if newest.is_some_and(|t| now.duration_since(t).unwrap_or_default() > policy.retain_stopped) {
                match std::fs::remove_dir_all(&dir) {
                    Ok(()) => removed += 1,
                    Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot remove an old task directory"),
                }
                continue;
            }
        }
        for name in LOG_FILES {
            match rotate_if_needed(&dir.join(name), policy.max_bytes, policy.keep) {
                Ok(true) => rotated += 1,
                Ok(false) => {}
                Err(e) => tracing::warn!(file = %dir.join(name).display(), error = %e, "cannot rotate a task log"),
            }
        }
    }
    (rotated, removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn rotation_shifts_numbered_files_and_keeps_at_most_keep() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("stdout.log");
        for round in 1..=4u8 {
            std::fs::write(&log, vec![b'a' + round; 100]).unwrap();
            assert!(rotate_if_needed(&log, 50, 2).unwrap());
            assert_eq!(std::fs::metadata(&log).unwrap().len(), 0);
        }
        assert_eq!(std::fs::read(numbered(&log, 1)).unwrap(), vec![b'a' + 4; 100]);
        assert_eq!(std::fs::read(numbered(&log, 2)).unwrap(), vec![b'a' + 3; 100]);
        assert!(!numbered(&log, 3).exists());
        std::fs::write(&log, b"small").unwrap();
        assert!(!rotate_if_needed(&log, 50, 2).unwrap());
        assert!(!rotate_if_needed(&dir.path().join("absent.log"), 50, 2).unwrap());
    }

    #[test]
    fn a_writer_holding_the_file_keeps_writing_after_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("stdout.log");
        // Opened as the node opens a task's log: append mode.
        let mut writer = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        writer.write_all(&[b'x'; 200]).unwrap();
        assert!(rotate_if_needed(&log, 100, 1).unwrap());
        writer.write_all(b"after\n").unwrap();
        assert_eq!(std::fs::read(&log).unwrap(), b"after\n", "no hole, no stale offset");
        assert_eq!(std::fs::metadata(numbered(&log, 1)).unwrap().len(), 200);
    }

    #[test]
    fn old_directories_of_stopped_tasks_go_and_running_ones_stay() {
        let tasks = tempfile::tempdir().unwrap();
        for id in ["g.web.1", "g.web.2"] {
            std::fs::create_dir_all(tasks.path().join(id)).unwrap();
            std::fs::write(tasks.path().join(id).join("stdout.log"), vec![b'y'; 300]).unwrap();
        }
        let policy = LogPolicy { max_bytes: 100, keep: 1, retain_stopped: Duration::from_secs(3600) };
        // Within retention: both rotated, nothing removed.
        assert_eq!(maintain(tasks.path(), &["g.web.1".into()], &policy, SystemTime::now()), (2, 0));
        // Two hours later, the stopped task's directory goes; the running one stays.
        let later = SystemTime::now() + Duration::from_secs(7200);
        assert_eq!(maintain(tasks.path(), &["g.web.1".into()], &policy, later), (0, 1));
        assert!(tasks.path().join("g.web.1").exists());
        assert!(!tasks.path().join("g.web.2").exists());
    }
}
