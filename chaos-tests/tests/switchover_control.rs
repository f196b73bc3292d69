//! Controlling switchovers with the real binaries, as `runbooks/planned-switchover.md` does:
//! pause holds a switchover where it is (past its verify window) until resume; rollback moves
//! a finished switchover's group back; abort before traffic moved leaves the group serving
//! from its source, with DNS never having moved.

use std::time::{Duration, Instant};

use serde_json::Value;
use switchyard_chaos_tests::{Federation, dig_a, fedctl, fedctl_json, fedctl_ok, wait_for};

fn operation(dir: &std::path::Path, id: &str) -> Value {
    fedctl_json(dir, &["switchover", "status", id])
}

fn start(dir: &std::path::Path, group: &str, to: &str) -> String {
    let op = fedctl_json(dir, &["switchover", "start", group, "--to", to, "--reason", "CHG-9 drill"]);
    op["id"].as_str().expect("operation id").to_string()
}

fn wait_outcome(dir: &std::path::Path, id: &str, outcome: &str) -> Value {
    let op = wait_for(Duration::from_secs(90), &format!("{id} to end {outcome}"), || {
        let op = operation(dir, id);
        (op["outcome"] != "running").then_some(op)
    });
    assert_eq!(op["outcome"], outcome, "{op}");
    op
}

#[test]
fn pause_resume_rollback_and_abort_with_real_processes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("fed");
    let fed = Federation::up(&dir, &[]);
    let dns = fed.dns();
    let crm = "crm-web.fed.local.";
    let mobile = "mobile-app.fed.local.";
    assert_eq!(dig_a(&dns, crm), ["127.0.1.1"]);

    // Pause while the target comes up: it stays there well past the verify window.
    let id = start(&dir, "crm-web", "site-2");
    fedctl_ok(&dir, &["switchover", "pause", &id, "--reason", "CAB hold"]);
    let paused = operation(&dir, &id);
    assert!(paused["blocker"].as_str().unwrap().starts_with("paused by "), "{paused}");
    let held_since = Instant::now();
    while held_since.elapsed() < Duration::from_secs(8) {
        let op = operation(&dir, &id);
        assert_eq!(op["outcome"], "running", "{op}");
        assert!(op["phase"] == "ScalingUp" || op["phase"] == "Verifying", "a paused switchover moved: {op}");
        assert_eq!(dig_a(&dns, crm), ["127.0.1.1"], "DNS moved while paused");
        std::thread::sleep(Duration::from_millis(500));
    }
    // The live view says it is paused, by whom and why, and gives up watching when told to.
    let watching = fedctl(&dir, &["switchover", "status", &id, "--watch", "--watch-timeout-s", "2"]);
    let lines = String::from_utf8_lossy(&watching.stdout);
    assert!(!watching.status.success(), "the operation is still running");
    assert!(lines.lines().any(|l| l.contains("PAUSED by") && l.contains("CAB hold") && l.contains("total")), "{lines}");
    let refused = fedctl(&dir, &["switchover", "pause", &id, "--reason", "again"]);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("already paused"), "{refused:?}");
    fedctl_ok(&dir, &["switchover", "resume", &id, "--reason", "CAB go"]);
    // Watched to the end: progress lines against the budgets, then the finished operation.
    let watched = fedctl_ok(&dir, &["switchover", "status", &id, "--watch"]);
    assert!(watched.lines().any(|l| l.starts_with(&id) && l.contains("] ") && l.contains(" of ~")), "{watched}");
    assert!(watched.contains("outcome  succeeded"), "{watched}");
    wait_outcome(&dir, &id, "succeeded");
    assert_eq!(dig_a(&dns, crm), ["127.0.2.1"]);

    // Roll the finished switchover back: a new switchover to the original site.
    let out = fedctl_ok(&dir, &["switchover", "rollback", &id, "--reason", "site-1 work cancelled", "--wait"]);
    assert!(out.contains("rolling back with"), "{out}");
    assert_eq!(dig_a(&dns, crm), ["127.0.1.1"], "back on site-1");

    // Abort before traffic moves: the group keeps serving from site-1 and site-3 is put back.
    let id = start(&dir, "mobile-app", "site-3");
    fedctl_ok(&dir, &["switchover", "abort", &id, "--reason", "wrong target"]);
    let op = wait_outcome(&dir, &id, "aborted");
    assert!(op["error"].as_str().unwrap().contains("wrong target"), "{op}");
    assert_eq!(dig_a(&dns, mobile), ["127.0.1.1"]);
    let groups = fedctl_json(&dir, &["groups"]);
    let m = groups.as_array().unwrap().iter().find(|g| g["name"] == "mobile-app").unwrap().clone();
    assert_eq!((m["active_sites"].clone(), m["operation"].clone()), (serde_json::json!(["site-1"]), "".into()));
    // Nothing to roll back after an abort before traffic moved.
    let nothing = fedctl(&dir, &["switchover", "rollback", &id, "--reason", "x"]);
    assert!(String::from_utf8_lossy(&nothing.stderr).contains("already where it found it"), "{nothing:?}");

    // Every control is in the audit history with who and why.
    let audit = fedctl_json(&dir, &["audit", "list"]);
    let actions: Vec<&str> = audit.as_array().unwrap().iter().filter_map(|r| r["action"].as_str()).collect();
    for a in ["switchover.paused", "switchover.resumed", "switchover.aborted"] {
        assert!(actions.contains(&a), "{a} missing from {actions:?}");
    }
    assert!(fed.down().status.success());
}
