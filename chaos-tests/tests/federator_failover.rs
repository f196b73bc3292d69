//! A three-replica federator cluster on loopback (`fedctl up --federators 3`): the leader is
//! killed with SIGKILL in the middle of a switchover; the survivors elect a new leader, which
//! resumes the operation from its committed phase and completes it, no phase is recorded twice,
//! DNS follows, and writes are accepted again.

use std::time::{Duration, Instant};

use serde_json::Value;
use switchyard_chaos_tests::{Federation, dig_a, fedctl, fedctl_json, wait_for};

#[test]
fn killing_the_leader_mid_switchover_loses_nothing_and_repeats_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("fed");
    let fed = Federation::up(&dir, &["--sites", "2", "--federators", "3"]);
    let status = fedctl_json(&dir, &["status"]);
    let leader = status["leader_id"].as_u64().expect("a leader");
    assert!((1..=3).contains(&leader), "{status}");

    let op = fedctl_json(&dir, &["switchover", "start", "crm-web", "--to", "site-2", "--reason", "CHG-77"]);
    let id = op["id"].as_str().unwrap().to_string();
    std::thread::sleep(Duration::from_millis(800));
    let pid = fed.process(&format!("federator-{leader}"))["pid"].as_u64().unwrap() as i32;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    let killed = Instant::now();

    // A write is accepted again once the survivors have a leader (any replica takes it).
    wait_for(Duration::from_secs(30), "a write accepted after the leader died", || {
        let out = fedctl(&dir, &["group", "scale", "mobile-app", "api", "--instances", "2", "--reason", "probe"]);
        out.status.success().then_some(())
    });
    eprintln!(
        "first write accepted {} ms after SIGKILL of the leader (fedctl start-up included)",
        killed.elapsed().as_millis()
    );
    let status = fedctl_json(&dir, &["status"]);
    assert_ne!(status["leader_id"].as_u64(), Some(leader), "a new leader: {status}");

    // The new leader resumes the switchover from its committed phase and finishes it.
    let done: Value = wait_for(Duration::from_secs(60), "the switchover to finish under the new leader", || {
        let op = fedctl_json(&dir, &["switchover", "status", &id]);
        (op["phase"] == "Done").then_some(op)
    });
    assert_eq!(done["outcome"], "succeeded", "{done}");
    assert_eq!(dig_a(&fed.dns(), "crm-web.fed.local."), ["127.0.2.1"]);
    let audit = fedctl_json(&dir, &["audit", "list"]);
    let steps: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["subject"] == "crm-web" && r["action"].as_str().is_some_and(|a| a.starts_with("switchover.")))
        .filter_map(|r| r["action"].as_str())
        .collect();
    assert_eq!(
        steps,
        ["switchover.start", "switchover.phase", "switchover.phase", "switchover.phase", "switchover.complete"],
        "every step recorded exactly once across the leader change"
    );
}
