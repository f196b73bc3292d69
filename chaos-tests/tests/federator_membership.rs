//! Changing the federator cluster while it works, with the commands of
//! `runbooks/federator-recovery.md`: a voter is removed and re-added (wiped, as a replacement
//! host would be) in the middle of a switchover; a backup is taken and restores a new replica
//! that serves the same history.

use std::time::Duration;

use serde_json::Value;
use switchyard_chaos_tests::{
    Federation, bin_dir, client_config_as, fedctl, fedctl_json, single_endpoint_config, verify_audit_chain, wait_for,
};

fn admin(dir: &std::path::Path, cfg: &std::path::Path, args: &[&str]) -> String {
    let mut full = vec!["--config", cfg.to_str().unwrap()];
    full.extend_from_slice(args);
    let out = fedctl(dir, &full);
    assert!(out.status.success(), "fedctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn voters(dir: &std::path::Path) -> Vec<u64> {
    let m = fedctl_json(dir, &["cluster", "members"]);
    m["voters"].as_array().unwrap().iter().filter_map(|v| v["node_id"].as_u64()).collect()
}

#[test]
fn a_voter_is_removed_and_replaced_during_a_switchover_and_a_backup_restores() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("fed");
    let fed = Federation::up(&dir, &["--sites", "2", "--federators", "3"]);
    let admin_cfg = client_config_as(&dir, "admin", "ada");
    assert_eq!(voters(&dir), [1, 2, 3]);

    let op = fedctl_json(&dir, &["switchover", "start", "crm-web", "--to", "site-2", "--reason", "CHG-80"]);
    let id = op["id"].as_str().unwrap().to_string();

    // Take out a follower (never the leader, so the switchover's pace is not the point here).
    let leader = fedctl_json(&dir, &["status"])["leader_id"].as_u64().unwrap();
    let gone = (1..=3).find(|n| *n != leader).unwrap();
    let name = format!("federator-{gone}");
    let grpc = fed.process(&name)["listen"]["grpc"].as_str().unwrap().to_string();
    let out = admin(&dir, &admin_cfg, &["cluster", "remove", "--id", &gone.to_string(), "--reason", "host swap"]);
    assert!(out.contains("removed"), "{out}");
    let pid = fed.process(&name)["pid"].as_u64().unwrap() as i32;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    assert_eq!(voters(&dir).len(), 2);

    // The replacement: same id and address, empty data directory, restarted, added back.
    std::fs::remove_dir_all(dir.join("data").join(&name)).expect("wipe the removed replica");
    let out = fedctl(&dir, &["restart", &name, "--dir", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = admin(
        &dir,
        &admin_cfg,
        &["cluster", "add", "--id", &gone.to_string(), "--address", &grpc, "--reason", "host swap done"],
    );
    assert!(out.contains("added as a voter"), "{out}");
    assert_eq!(voters(&dir), [1, 2, 3]);

    // The switchover completes; every replica, the new one included, holds the same chain.
    let done: Value = wait_for(Duration::from_secs(90), "the switchover to finish", || {
        let op = fedctl_json(&dir, &["switchover", "status", &id]);
        (op["phase"] == "Done").then_some(op)
    });
    assert_eq!(done["outcome"], "succeeded", "{done}");
    wait_for(Duration::from_secs(30), "every replica on the same audit head", || {
        let cluster = fedctl_json(&dir, &["cluster", "status"]);
        let heads: Vec<&str> =
            cluster.as_array().unwrap().iter().filter_map(|r| r["audit_head_hash"].as_str()).collect();
        (heads.len() == 3 && heads.iter().all(|h| *h == heads[0])).then_some(())
    });
    let replaced = single_endpoint_config(&dir.join("fedctl.toml"), &format!("https://{grpc}"));
    let audit = fedctl_json(&dir, &["--config", replaced.to_str().unwrap(), "audit", "list"]);
    let records = audit.as_array().unwrap();
    verify_audit_chain(records).expect("the replacement's chain verifies");
    let changes: Vec<(&str, &str)> = records
        .iter()
        .filter(|r| r["action"].as_str().is_some_and(|a| a.starts_with("cluster.")))
        .map(|r| (r["action"].as_str().unwrap(), r["reason"].as_str().unwrap()))
        .collect();
    assert_eq!(changes, [("cluster.remove", "host swap"), ("cluster.add-voter", "host swap done")]);

    // Backup, then restore it into a new replica (node 9) that starts as a one-voter cluster.
    let backup = tmp.path().join("fed.backup");
    let out = admin(
        &dir,
        &admin_cfg,
        &["cluster", "backup", "--out", backup.to_str().unwrap(), "--reason", "before DC work"],
    );
    assert!(out.contains("written to"), "{out}");
    let head = fedctl_json(&dir, &["status"]);
    admin(&dir, &admin_cfg, &["certs", "replica", "--id", "9", "--dir", dir.to_str().unwrap()]);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut cfg: toml::Table =
        toml::from_str(&std::fs::read_to_string(dir.join(format!("federator-{leader}.toml"))).unwrap()).unwrap();
    cfg.insert("node_id".into(), 9.into());
    cfg.insert("listen".into(), format!("127.0.0.1:{port}").into());
    cfg.insert("data_dir".into(), tmp.path().join("restored").display().to_string().into());
    cfg.remove("peers");
    cfg.remove("metrics_listen");
    let tls = cfg.get_mut("tls").and_then(|t| t.as_table_mut()).unwrap();
    tls.insert("cert".into(), dir.join("certs/federator-9.pem").display().to_string().into());
    tls.insert("key".into(), dir.join("certs/federator-9-key.pem").display().to_string().into());
    let cfg_path = tmp.path().join("federator-9.toml");
    std::fs::write(&cfg_path, toml::to_string(&cfg).unwrap()).unwrap();
    let restore = std::process::Command::new(bin_dir().join("federator"))
        .args(["--config", cfg_path.to_str().unwrap(), "--restore-from", backup.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(restore.status.success(), "{}", String::from_utf8_lossy(&restore.stderr));
    assert!(String::from_utf8_lossy(&restore.stdout).contains("is the only voter"));
    let mut nine = std::process::Command::new(bin_dir().join("federator"))
        .args(["--config", cfg_path.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let only_nine = single_endpoint_config(&dir.join("fedctl.toml"), &format!("https://127.0.0.1:{port}"));
    let restored = wait_for(Duration::from_secs(30), "the restored replica to lead", || {
        let out = fedctl(&dir, &["--config", only_nine.to_str().unwrap(), "status", "-o", "json"]);
        let s: Value = serde_json::from_slice(&out.stdout).ok()?;
        (s["leader_id"] == 9).then_some(s)
    });
    nine.kill().ok();
    nine.wait().ok();
    assert_eq!(restored["audit_records"], head["audit_records"], "{restored} vs {head}");
    assert_eq!(restored["audit_head_hash"], head["audit_head_hash"]);
    drop(fed);
}
