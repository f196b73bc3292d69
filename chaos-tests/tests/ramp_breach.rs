//! A traffic ramp with the real binaries: a group whose ramp is 50 % then 100 % moves half its
//! traffic, its target instances hang (SIGSTOP, so their health checks time out), and the
//! federator reverts the step on its own and halts: DNS answers only the source again. Once
//! the instances are back and an operator resumes, the move finishes.

use std::time::Duration;

use serde_json::Value;
use switchyard_chaos_tests::{Federation, dig_a, fedctl_json, fedctl_ok, task_processes, wait_for};

const GROUPS: &str = r#"
[[groups]]
name = "shop"
ttl_s = 10
ramp = { steps = [50, 100] }
[[groups.apps]]
name = "web"
instances = 2
"#;

fn signal(pids: &[u32], sig: &str) {
    for pid in pids {
        let ok = std::process::Command::new("kill").args([sig, &pid.to_string()]).status().expect("kill runs");
        assert!(ok.success(), "kill {sig} {pid}");
    }
}

fn status(dir: &std::path::Path, id: &str) -> Value {
    fedctl_json(dir, &["switchover", "status", id])
}

#[test]
fn a_target_that_degrades_mid_ramp_is_reverted_and_halted_until_resumed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("fed");
    std::fs::create_dir_all(tmp.path()).unwrap();
    let groups = tmp.path().join("groups.toml");
    std::fs::write(&groups, GROUPS).unwrap();
    let fed = Federation::up(&dir, &["--groups-file", groups.to_str().unwrap()]);
    let dns = fed.dns();
    let name = "shop.fed.local.";
    assert_eq!(dig_a(&dns, name), ["127.0.1.1"]);

    let op = fedctl_json(&dir, &["switchover", "start", "shop", "--to", "site-2", "--reason", "CHG-8"]);
    let id = op["id"].as_str().expect("id").to_string();
    // Half the traffic moves: DNS answers both sites.
    let shifting = wait_for(Duration::from_secs(90), "the 50 % step", || {
        let op = status(&dir, &id);
        (op["phase"] == "Shifting").then_some(op)
    });
    assert_eq!(shifting["ramp_step"], 1, "{shifting}");
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        seen.extend(dig_a(&dns, name));
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["127.0.1.1", "127.0.2.1"], "weighted answers of both sites");

    // The target's instances hang.
    let target: Vec<u32> = task_processes(&dir)
        .into_iter()
        .filter(|t| t.env.get("SWITCHYARD_GROUP").map(String::as_str) == Some("shop"))
        .filter(|t| t.env.get("SWITCHYARD_SITE").map(String::as_str) == Some("site-2"))
        .map(|t| t.pid)
        .collect();
    assert_eq!(target.len(), 2, "two instances on site-2");
    signal(&target, "-STOP");
    let halted = wait_for(Duration::from_secs(60), "the ramp to revert", || {
        let op = status(&dir, &id);
        (!op["paused_by"].as_str().unwrap_or_default().is_empty()).then_some(op)
    });
    signal(&target, "-CONT");
    let paused_by = halted["paused_by"].as_str().unwrap();
    assert!(paused_by.starts_with("system: ramp reverted to 0% on site-2: health breach"), "{halted}");
    assert_eq!((halted["phase"].as_str(), halted["ramp_step"].as_u64()), (Some("Verifying"), Some(0)), "{halted}");
    // All traffic is back on the source, and stays there while halted.
    wait_for(Duration::from_secs(30), "DNS to answer only site-1", || {
        (0..20).all(|_| dig_a(&dns, name) == ["127.0.1.1"]).then_some(())
    });
    std::thread::sleep(Duration::from_secs(5));
    let op = status(&dir, &id);
    assert_eq!((op["outcome"].as_str(), op["phase"].as_str()), (Some("running"), Some("Verifying")), "{op}");
    let audit = fedctl_json(&dir, &["audit", "list"]);
    assert!(
        audit.as_array().unwrap().iter().any(|r| r["action"] == "switchover.ramp-reverted" && r["actor"] == "system"),
        "the revert is in the audit history"
    );

    // The operator resumes; the move runs to the end.
    fedctl_ok(&dir, &["switchover", "resume", &id, "--reason", "instances recovered"]);
    let done = wait_for(Duration::from_secs(120), "the switchover to finish", || {
        let op = status(&dir, &id);
        (op["outcome"] != "running").then_some(op)
    });
    assert_eq!(done["outcome"], "succeeded", "{done}");
    assert_eq!(dig_a(&dns, name), ["127.0.2.1"]);
}
