//! Resource limits of a task's process, where the kernel allows them:
//! - **rlimits** (always): no core dumps, and at most `max_open_files` descriptors;
//! - **cgroup v2** (with `dc-agent node --cgroup-root DIR`): each task gets `DIR/<task-id>`
//!   with `memory.max` (its memory request) and `cpu.max` (its CPU request as a quota per
//!   100 ms period), and its process moves itself there between fork and exec, so nothing of
//!   it ever runs outside.
//!
//! A cgroup root without the `cpu` and `memory` controllers (a cgroup v1 or hybrid host, or a
//! container that was not delegated them) is refused when the node starts, with what is missing
//! and how to fix it; the node never runs tasks it was told to limit without the limits.

use std::path::{Path, PathBuf};

use switchyard_proto::node::v1 as nodepb;

/// Controllers a cgroup root must offer.
const NEEDED: [&str; 2] = ["cpu", "memory"];
/// The CFS period `cpu.max` quotas are expressed in.
const CPU_PERIOD_US: u64 = 100_000;

/// Checks that `root` is a cgroup v2 directory that offers the `cpu` and `memory` controllers to
/// its children, enabling them in `cgroup.subtree_control` if needed.
pub fn prepare_root(root: &Path) -> Result<(), String> {
    let controllers_file = root.join("cgroup.controllers");
    let controllers = std::fs::read_to_string(&controllers_file).map_err(|e| {
        format!(
            "--cgroup-root {}: cannot read {} ({e}); it must be a cgroup v2 directory (e.g. a delegated \
             subtree of /sys/fs/cgroup on a unified-hierarchy host)",
            root.display(),
            controllers_file.display()
        )
    })?;
    let available: Vec<&str> = controllers.split_whitespace().collect();
    let missing: Vec<&str> = NEEDED.iter().copied().filter(|c| !available.contains(c)).collect();
    if !missing.is_empty() {
        return Err(format!(
            "--cgroup-root {}: the kernel does not offer the {} controller(s) here (available: {}); enable them in \
             the parent's cgroup.subtree_control, or run the node without --cgroup-root (tasks then get rlimits only)",
            root.display(),
            missing.join(" and "),
            if available.is_empty() { "none".to_string() } else { available.join(" ") }
        ));
    }
    let subtree = root.join("cgroup.subtree_control");
    let enabled = std::fs::read_to_string(&subtree).unwrap_or_default();
    if NEEDED.iter().any(|c| !enabled.split_whitespace().any(|e| e == *c)) {
        std::fs::write(&subtree, "+cpu +memory").map_err(|e| {
            format!("--cgroup-root {}: cannot enable cpu and memory in {} ({e})", root.display(), subtree.display())
        })?;
    }
    Ok(())
}

/// The cgroup of one task.
pub fn task_cgroup(root: &Path, task_id: &str) -> PathBuf {
    root.join(task_id)
}

/// The kernel's smallest `cpu.max` quota.
const CPU_QUOTA_MIN_US: u64 = 1_000;

/// Creates the task's cgroup with its limits, and opens its `cgroup.procs` for the task's
/// process to write `0` into (moving itself) before it executes its program.
pub fn prepare_task(root: &Path, spec: &nodepb::TaskSpec) -> Result<std::fs::File, String> {
    let dir = task_cgroup(root, &spec.task_id);
    let fail = |what: &str, e: std::io::Error| format!("cgroup {}: cannot {what}: {e}", dir.display());
    std::fs::create_dir_all(&dir).map_err(|e| fail("create it", e))?;
    let res = spec.resources.unwrap_or_default();
    if res.mem_mib > 0 {
        std::fs::write(dir.join("memory.max"), (res.mem_mib * 1024 * 1024).to_string())
            .map_err(|e| fail("set memory.max", e))?;
    }
    if res.cpu_millis > 0 {
        let quota = (res.cpu_millis * CPU_PERIOD_US / 1000).max(CPU_QUOTA_MIN_US);
        std::fs::write(dir.join("cpu.max"), format!("{quota} {CPU_PERIOD_US}")).map_err(|e| fail("set cpu.max", e))?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join("cgroup.procs"))
        .map_err(|e| fail("open cgroup.procs", e))
}

/// Removes a stopped task's cgroup (the kernel refuses while a process is still in it).
pub fn release(root: &Path, task_id: &str) {
    let dir = task_cgroup(root, task_id);
    if dir.exists()
        && let Err(e) = std::fs::remove_dir(&dir)
    {
        tracing::debug!(cgroup = %dir.display(), error = %e, "task cgroup not removed");
    }
}

/// Checks that tasks may be given `max_open_files` descriptors: a process cannot raise its
/// hard limit without privileges, so a value above the node's own hard limit is refused at start.
pub fn check_open_files(max_open_files: u64) -> Result<(), String> {
    use nix::sys::resource::{Resource, getrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| format!("cannot read RLIMIT_NOFILE: {e}"))?;
    if max_open_files > hard {
        return Err(format!(
            "--max-open-files {max_open_files} is above this node's own hard limit of {hard} open files; lower it, \
             or raise the node's limit (e.g. LimitNOFILE= in its systemd unit)"
        ));
    }
    Ok(())
}

/// Runs in the forked child before it executes the task's program: joins the task's cgroup
/// (writing `0` to its open `cgroup.procs`), then sets the rlimits (no core dumps, and
/// `max_open_files` descriptors when given). Only async-signal-safe calls: write(2) and
/// setrlimit(2).
pub fn enter_child(
    cgroup_procs: Option<std::os::fd::BorrowedFd<'_>>,
    max_open_files: Option<u64>,
) -> std::io::Result<()> {
    use nix::sys::resource::{Resource, setrlimit};
    if let Some(fd) = cgroup_procs {
        nix::unistd::write(fd, b"0").map_err(std::io::Error::from)?;
    }
    setrlimit(Resource::RLIMIT_CORE, 0, 0).map_err(std::io::Error::from)?;
    if let Some(n) = max_open_files {
        setrlimit(Resource::RLIMIT_NOFILE, n, n).map_err(std::io::Error::from)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_open_files_limit_above_the_nodes_own_is_refused() {
        let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
        assert!(check_open_files(hard.min(1024)).is_ok());
        if hard < u64::MAX {
            let err = check_open_files(hard + 1).unwrap_err();
            assert!(err.contains(&format!("hard limit of {hard}")), "{err}");
        }
    }

    #[test]
    fn a_root_without_the_controllers_is_refused_with_what_is_missing() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("cgroup.controllers"), "pids io\n").unwrap();
        let err = prepare_root(root.path()).unwrap_err();
        assert!(err.contains("cpu and memory") && err.contains("available: pids io"), "{err}");
        let err = prepare_root(&root.path().join("absent")).unwrap_err();
        assert!(err.contains("cgroup v2 directory"), "{err}");
        std::fs::write(root.path().join("cgroup.controllers"), "").unwrap();
        assert!(prepare_root(root.path()).unwrap_err().contains("available: none"));
    }

    #[test]
    fn a_task_gets_its_requests_as_limits_and_its_process_is_moved() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("cgroup.controllers"), "cpuset cpu io memory pids\n").unwrap();
        prepare_root(root.path()).unwrap();
        assert_eq!(std::fs::read_to_string(root.path().join("cgroup.subtree_control")).unwrap(), "+cpu +memory");
        let spec = nodepb::TaskSpec {
            task_id: "g.web.7".into(),
            resources: Some(switchyard_proto::common::v1::Resources { cpu_millis: 250, mem_mib: 64, disk_mib: 0 }),
            ..Default::default()
        };
        std::fs::create_dir_all(task_cgroup(root.path(), "g.web.7")).unwrap();
        std::fs::write(task_cgroup(root.path(), "g.web.7").join("cgroup.procs"), "").unwrap();
        let _procs = prepare_task(root.path(), &spec).unwrap();
        let read = |f: &str| std::fs::read_to_string(task_cgroup(root.path(), "g.web.7").join(f)).unwrap();
        assert_eq!(read("memory.max"), (64 * 1024 * 1024).to_string());
        assert_eq!(read("cpu.max"), "25000 100000", "250 millicores = a quarter of each period");
        // A tiny request still gets the kernel's smallest quota instead of an invalid one.
        let tiny = nodepb::TaskSpec {
            task_id: "g.web.8".into(),
            resources: Some(switchyard_proto::common::v1::Resources { cpu_millis: 5, mem_mib: 0, disk_mib: 0 }),
            ..Default::default()
        };
        std::fs::create_dir_all(task_cgroup(root.path(), "g.web.8")).unwrap();
        std::fs::write(task_cgroup(root.path(), "g.web.8").join("cgroup.procs"), "").unwrap();
        let _procs = prepare_task(root.path(), &tiny).unwrap();
        assert_eq!(
            std::fs::read_to_string(task_cgroup(root.path(), "g.web.8").join("cpu.max")).unwrap(),
            "1000 100000"
        );
    }
}
