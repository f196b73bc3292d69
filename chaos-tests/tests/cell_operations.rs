//! Operating one site's cell with `fedctl cell`, against the real binaries on loopback: list
//! nodes, apps and tasks, drain a node (its tasks move off make-before-break), undrain it, and
//! check that a viewer may look but not drain.

use std::time::Duration;

use serde_json::Value;
use switchyard_chaos_tests::{Federation, fedctl, fedctl_json, fedctl_ok, wait_for};

fn cell(dir: &std::path::Path, args: &[&str]) -> Value {
    let mut all = vec!["cell"];
    all.extend_from_slice(args);
    all.extend(["--dir", dir.to_str().unwrap()]);
    fedctl_json(dir, &all)
}

fn tasks_on(dir: &std::path::Path, node: &str) -> Vec<Value> {
    cell(dir, &["tasks", "--node", node])["tasks"].as_array().cloned().unwrap_or_default()
}

#[test]
fn drain_moves_tasks_off_a_node_without_losing_capacity() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("fed");
    let _fed = Federation::up(&dir, &["--sites", "2"]);

    let nodes = cell(&dir, &["nodes"]);
    assert_eq!(nodes["site"], "site-1");
    let states: Vec<&str> = nodes["nodes"].as_array().unwrap().iter().map(|n| n["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["up", "up"]);
    let apps = cell(&dir, &["apps"]);
    for a in apps["apps"].as_array().unwrap() {
        assert_eq!((a["desired"].as_u64(), a["healthy"].as_u64()), (Some(2), Some(2)), "{a}");
    }
    assert!(!tasks_on(&dir, "site-1-node-1").is_empty(), "node-1 runs tasks before the drain");

    // A viewer may look but not drain.
    fedctl_ok(&dir, &["certs", "issue", "viewer", "val", "--dir", dir.to_str().unwrap()]);
    let viewer_cfg = dir.join("viewer.toml");
    let client: Value = toml_to_json(&std::fs::read_to_string(dir.join("fedctl.toml")).unwrap());
    std::fs::write(
        &viewer_cfg,
        format!(
            "endpoint = {:?}\n[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
            client["endpoint"].as_str().unwrap(),
            client["tls"]["ca"].as_str().unwrap(),
            dir.join("certs/viewer-val.pem").display().to_string(),
            dir.join("certs/viewer-val-key.pem").display().to_string(),
        ),
    )
    .unwrap();
    let out = fedctl(
        &dir,
        &["--config", viewer_cfg.to_str().unwrap(), "cell", "drain", "site-1-node-1", "--dir", dir.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("viewer:val"), "{}", String::from_utf8_lossy(&out.stderr));
    let out =
        fedctl(&dir, &["--config", viewer_cfg.to_str().unwrap(), "cell", "nodes", "--dir", dir.to_str().unwrap()]);
    assert!(out.status.success(), "a viewer can list nodes: {}", String::from_utf8_lossy(&out.stderr));

    // An unknown node is refused and nothing changes.
    let out = fedctl(&dir, &["cell", "drain", "site-1-node-9", "--dir", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("known: site-1-node-1, site-1-node-2"));

    // Drain: node-1 empties while every app keeps at least its desired healthy count.
    let drained = cell(&dir, &["drain", "site-1-node-1"]);
    assert_eq!(drained["changed"], true);
    assert_eq!(drained["node"]["state"], "draining");
    let mut min_healthy = u64::MAX;
    wait_for(Duration::from_secs(60), "node-1 to empty", || {
        let apps = cell(&dir, &["apps"]);
        for a in apps["apps"].as_array()? {
            min_healthy = min_healthy.min(a["healthy"].as_u64()?);
        }
        tasks_on(&dir, "site-1-node-1").is_empty().then_some(())
    });
    assert!(min_healthy >= 2, "capacity dropped to {min_healthy} healthy during the drain");
    let apps = cell(&dir, &["apps"]);
    for a in apps["apps"].as_array().unwrap() {
        assert_eq!(a["healthy"].as_u64(), Some(2), "{a}");
        assert_eq!(a["waiting_for"], "", "{a}");
    }
    assert_eq!(tasks_on(&dir, "site-1-node-2").len(), 4);
    // A second drain changes nothing.
    assert_eq!(cell(&dir, &["drain", "site-1-node-1"])["changed"], false);

    // Undrain: the node is back in service (tasks stay where they are until something moves).
    let back = cell(&dir, &["undrain", "site-1-node-1"]);
    assert_eq!(back["node"]["state"], "up");
}

/// The few keys of fedctl.toml this test needs, as JSON.
fn toml_to_json(text: &str) -> Value {
    let mut out = serde_json::json!({ "tls": {} });
    let mut in_tls = false;
    for line in text.lines() {
        let line = line.trim();
        if line == "[tls]" {
            in_tls = true;
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = Value::String(v.trim().trim_matches('"').to_string());
            if in_tls { out["tls"][k.trim()] = v } else { out[k.trim()] = v }
        }
    }
    out
}
