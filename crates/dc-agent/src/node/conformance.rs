//! The one behaviour battery every [`TaskExecutor`] passes: the process executor in
//! `executor.rs`'s tests and the simulated one in `sim.rs`'s. Each check drives the executor
//! the way the node does (complete task lists through `apply`) and watches the status board.

use std::sync::Arc;
use std::time::Duration;

use switchyard_proto::common::v1::TaskState;
use switchyard_proto::node::v1 as nodepb;
use tokio::time::Instant;

use super::executor::TaskExecutor;

/// An executor under test, with a way to make one of its tasks crash.
pub struct Subject {
    pub executor: Arc<dyn TaskExecutor>,
    /// Kills the task's process (or simulates it dying).
    pub crash: Box<dyn Fn(&str) + Send + Sync>,
    /// Tasks are OS processes: pids are real and must be alive.
    pub real_processes: bool,
}

fn spec(id: &str, command: &str, args: &[&str], port: u32) -> nodepb::TaskSpec {
    nodepb::TaskSpec {
        task_id: id.into(),
        group: "conformance".into(),
        app: "app".into(),
        command: command.into(),
        args: args.iter().map(|a| a.to_string()).collect(),
        port,
        version: "v1".into(),
        ..Default::default()
    }
}

async fn wait(e: &dyn TaskExecutor, what: &str, ok: impl Fn(&[nodepb::TaskStatus]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let snap = e.board().snapshot();
        if ok(&snap) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {snap:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn status<'a>(snap: &'a [nodepb::TaskStatus], id: &str) -> Option<&'a nodepb::TaskStatus> {
    snap.iter().find(|s| s.task_id == id)
}

fn serving(snap: &[nodepb::TaskStatus], id: &str) -> bool {
    status(snap, id).is_some_and(|s| s.state == TaskState::Running as i32 && s.healthy)
}

/// Runs every check against a fresh subject from `make` (given a scratch directory).
pub async fn battery(make: impl Fn(&std::path::Path) -> Subject) {
    let dir = tempfile::tempdir().expect("tempdir");
    let subject = make(dir.path());
    let e = subject.executor.as_ref();
    let (a, b) = (spec("t.app.1", "sleep", &["600"], 31_001), spec("t.app.2", "sleep", &["600"], 31_002));

    // Launch: both tasks run and are healthy (no health check: running is healthy), with their
    // ports and versions reported.
    e.apply(vec![a.clone(), b.clone()]).await;
    wait(e, "two running tasks", |s| serving(s, "t.app.1") && serving(s, "t.app.2")).await;
    let snap = e.board().snapshot();
    assert_eq!(status(&snap, "t.app.1").unwrap().port, 31_001);
    assert_eq!(status(&snap, "t.app.2").unwrap().version, "v1");
    if subject.real_processes {
        assert!(snap.iter().all(|s| s.pid > 0), "{snap:?}");
    }

    // Idempotent: the same list again changes nothing.
    let before = e.board().snapshot();
    e.apply(vec![a.clone(), b.clone()]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(e.board().snapshot(), before, "re-applying the same tasks must change nothing");

    // A crash is restarted, and counted.
    (subject.crash)("t.app.1");
    wait(e, "the crashed task restarted", |s| {
        serving(s, "t.app.1") && status(s, "t.app.1").is_some_and(|t| t.restarts >= 1)
    })
    .await;
    assert_eq!(status(&e.board().snapshot(), "t.app.2").unwrap().restarts, 0, "the other task is untouched");

    // A task no longer assigned is stopped and leaves the board.
    e.apply(vec![a.clone()]).await;
    wait(e, "t.app.2 gone", |s| status(s, "t.app.2").is_none() && serving(s, "t.app.1")).await;

    // A command that cannot be found fails with a message naming it; the others keep running.
    let bad = spec("t.bad.3", "no-such-program-here", &[], 31_003);
    e.apply(vec![a.clone(), bad]).await;
    wait(e, "the bad task failed", |s| {
        status(s, "t.bad.3")
            .is_some_and(|t| t.state == TaskState::Failed as i32 && t.message.contains("no-such-program-here"))
    })
    .await;
    assert!(serving(&e.board().snapshot(), "t.app.1"));

    // Shutdown stops everything.
    e.shutdown().await;
    wait(e, "an empty board after shutdown", |s| s.iter().all(|t| t.state != TaskState::Running as i32)).await;
}
