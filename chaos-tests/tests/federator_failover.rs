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
    // Every replica answers and names the same leader.
    let cluster = fedctl_json(&dir, &["cluster", "status"]);
    let replicas = cluster.as_array().unwrap();
    assert_eq!(replicas.len(), 3, "{cluster}");
    assert!(replicas.iter().all(|r| r["reachable"] == true && r["leader_id"].as_u64() == Some(leader)), "{cluster}");

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
    let cluster = fedctl_json(&dir, &["cluster", "status"]);
    let down: Vec<&Value> = cluster.as_array().unwrap().iter().filter(|r| r["reachable"] == false).collect();
    assert_eq!(down.len(), 1, "the killed replica shows as unreachable: {cluster}");

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
        ["switchover.start", "switchover.phase", "switchover.traffic", "switchover.phase", "switchover.complete"],
        "every step recorded exactly once across the leader change"
    );

    // The killed replica is restarted and rejoins as a follower of the new leader.
    let out = fedctl(&dir, &["restart", &format!("federator-{leader}"), "--dir", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_for(Duration::from_secs(30), "all three replicas agreeing again", || {
        let cluster = fedctl_json(&dir, &["cluster", "status"]);
        let r = cluster.as_array().unwrap();
        let leaders: Vec<u64> = r.iter().filter_map(|x| x["leader_id"].as_u64()).collect();
        (r.iter().all(|x| x["reachable"] == true)
            && leaders.len() == 3
            && leaders.iter().all(|l| *l == leaders[0] && *l != 0))
        .then_some(())
    });
}

fn signal_federators(fed: &Federation, signal: nix::sys::signal::Signal) {
    for id in 1..=3 {
        let pid = fed.process(&format!("federator-{id}"))["pid"].as_u64().unwrap() as i32;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).unwrap();
    }
}

fn task_pids(dir: &std::path::Path) -> Vec<u32> {
    let mut pids: Vec<u32> = switchyard_chaos_tests::task_processes(dir).iter().map(|t| t.pid).collect();
    pids.sort_unstable();
    pids
}

#[test]
fn with_every_federator_frozen_sites_keep_serving_and_nothing_flaps_when_they_return() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("fed");
    let fed = Federation::up(&dir, &["--sites", "2", "--federators", "3"]);
    let pids = task_pids(&dir);
    assert_eq!(pids.len(), 4, "two groups of two instances");
    let answer = dig_a(&fed.dns(), "crm-web.fed.local.");
    let audit_before = fedctl_json(&dir, &["audit", "list"]).as_array().unwrap().len();

    // Every replica stops (SIGSTOP: as hung as a federator can be) for longer than the links'
    // keepalive timeout: cells keep their tasks, fed-dns keeps answering from its table.
    signal_federators(&fed, nix::sys::signal::Signal::SIGSTOP);
    let until = Instant::now() + Duration::from_secs(12);
    while Instant::now() < until {
        assert_eq!(dig_a(&fed.dns(), "crm-web.fed.local."), answer, "DNS answers unchanged");
        assert_eq!(task_pids(&dir), pids, "no task stopped or restarted");
        std::thread::sleep(Duration::from_millis(500));
    }

    // They come back: the cells and DNS servers reconnect, and nothing changes.
    signal_federators(&fed, nix::sys::signal::Signal::SIGCONT);
    wait_for(Duration::from_secs(30), "the cluster to lead again", || {
        let s = fedctl_json(&dir, &["status"]);
        (s["leader_id"].as_u64().unwrap_or(0) > 0).then_some(())
    });
    wait_for(Duration::from_secs(30), "both sites' cells to report again", || {
        // Reads are linearizable: while a new election settles they fail rather than answer stale.
        let out = fedctl(&dir, &["sites", "-o", "json"]);
        let sites: Value = serde_json::from_slice(&out.stdout).ok()?;
        sites.as_array()?.iter().all(|s| s["cell_connected"] == true).then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(task_pids(&dir), pids, "no task restarted after the federators returned");
    assert_eq!(dig_a(&fed.dns(), "crm-web.fed.local."), answer);
    let audit_after = fedctl_json(&dir, &["audit", "list"]).as_array().unwrap().len();
    assert_eq!(audit_after, audit_before, "no decision was taken because the federators had been away");
}
