//! Day-to-day app operations against the real binaries on loopback: kill (restart) a task,
//! suspend and resume an app, and roll back a spec change that cannot become healthy.

use std::time::Duration;

use serde_json::Value;
use switchyard_chaos_tests::{Federation, dig_a, dig_raw, fedctl, fedctl_json, fedctl_ok, wait_for};

fn web_app(dir: &std::path::Path) -> Value {
    let apps = fedctl_json(dir, &["cell", "apps", "--dir", dir.to_str().unwrap()]);
    apps["apps"].as_array().unwrap().iter().find(|a| a["group"] == "crm-web" && a["app"] == "web").unwrap().clone()
}

fn web_tasks(dir: &std::path::Path) -> Vec<String> {
    let tasks = fedctl_json(dir, &["cell", "tasks", "--dir", dir.to_str().unwrap()]);
    let mut ids: Vec<String> = tasks["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["group"] == "crm-web" && t["app"] == "web")
        .map(|t| t["task_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

fn settled(dir: &std::path::Path, n: u64) -> Option<Value> {
    let a = web_app(dir);
    (a["desired"].as_u64() == Some(n) && a["healthy"].as_u64() == Some(n) && a["waiting_for"].as_str() == Some(""))
        .then_some(a)
}

#[test]
fn kill_suspend_resume_and_roll_back_an_app() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("fed");
    let fed = Federation::up(&dir, &["--sites", "2"]);
    let d = dir.to_str().unwrap();
    let before = web_tasks(&dir);
    assert_eq!(before.len(), 2);

    // Service discovery: every healthy instance is an SRV record (its port on its node's
    // name, whose address comes along), and the app's name answers with their addresses.
    let tasks = fedctl_json(&dir, &["cell", "tasks", "--dir", d]);
    let mut want: Vec<(u64, String)> = tasks["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["group"] == "crm-web")
        .map(|t| (t["port"].as_u64().unwrap(), format!("{}.site-1.fed.local.", t["node_id"].as_str().unwrap())))
        .collect();
    want.sort();
    let srv = wait_for(Duration::from_secs(20), "SRV records for both instances", || {
        let out = dig_raw(&fed.dns(), "_web._tcp.crm-web.site-1.fed.local.", "SRV");
        let mut got: Vec<(u64, String)> = out
            .lines()
            .filter(|l| !l.starts_with(';'))
            .filter_map(|l| {
                // owner TTL IN SRV priority weight port target
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() == 8 && f[3] == "SRV").then(|| Some((f[6].parse().ok()?, f[7].to_string())))?
            })
            .collect();
        got.sort();
        (got == want).then_some(out)
    });
    assert!(srv.contains("ADDITIONAL SECTION"), "the nodes' addresses come along: {srv}");
    let mut node_ips: Vec<String> = tasks["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["group"] == "crm-web")
        .map(|t| t["address"].as_str().unwrap().to_string())
        .collect();
    node_ips.sort();
    node_ips.dedup();
    assert_eq!(dig_a(&fed.dns(), "web.crm-web.site-1.fed.local."), node_ips);

    // Kill one task: it is replaced by a new one, the other is untouched.
    let out = fedctl_ok(&dir, &["cell", "kill", &before[0], "--dir", d]);
    assert!(out.contains(&before[0]), "{out}");
    let after = wait_for(Duration::from_secs(30), "a replacement for the killed task", || {
        let now = web_tasks(&dir);
        (now.len() == 2 && !now.contains(&before[0]) && settled(&dir, 2).is_some()).then_some(now)
    });
    assert!(after.contains(&before[1]), "the other task was left alone: {after:?}");
    let out = fedctl(&dir, &["cell", "kill", "crm-web.web.999", "--dir", d]);
    assert_eq!(out.status.code(), Some(2), "an unknown task is refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("crm-web.web.999"));

    // Suspend: no instance left, the spec kept; resume: back to two.
    fedctl_ok(&dir, &["group", "scale", "crm-web", "web", "--instances", "0", "--reason", "CHG-5 suspend"]);
    wait_for(Duration::from_secs(30), "no web task left", || web_tasks(&dir).is_empty().then_some(()));
    assert!(fedctl_ok(&dir, &["group", "show", "crm-web"]).contains("sample-app"), "the spec is kept");
    fedctl_ok(&dir, &["group", "scale", "crm-web", "web", "--instances", "2", "--reason", "CHG-5 resume"]);
    wait_for(Duration::from_secs(30), "two healthy instances again", || settled(&dir, 2));
    let out =
        fedctl(&dir, &["group", "scale", "crm-web", "web", "--instances", "2", "--site", "site-2", "--reason", "x"]);
    assert_eq!(out.status.code(), Some(2), "site-2 takes no traffic for crm-web");

    // A broken release never gets healthy; the old instances keep serving, the cell says why,
    // and a rollback cancels it.
    let mut spec = fedctl_ok(&dir, &["group", "show", "crm-web"]);
    assert!(spec.contains("command = \"sample-app\""), "{spec}");
    spec = spec.replace("command = \"sample-app\"", "command = \"sample-app-v3\"");
    let file = dir.join("broken.toml");
    std::fs::write(&file, &spec).unwrap();
    fedctl_ok(&dir, &["group", "apply", file.to_str().unwrap(), "--reason", "CHG-6 release 3"]);
    let stuck = wait_for(Duration::from_secs(30), "the rollout to wait on unhealthy new tasks", || {
        let a = web_app(&dir);
        a["waiting_for"].as_str().is_some_and(|w| w.contains("upgrade of crm-web/web")).then_some(a)
    });
    assert_eq!(stuck["healthy"].as_u64(), Some(2), "the old instances keep serving: {stuck}");
    fedctl_ok(&dir, &["group", "rollback", "crm-web", "--reason", "release 3 does not start"]);
    wait_for(Duration::from_secs(40), "the rollback to settle", || {
        settled(&dir, 2).filter(|a| a["current"].as_u64() == Some(2))
    });
    let audit = fedctl_json(&dir, &["audit", "list"]);
    let actions: Vec<&str> = audit.as_array().unwrap().iter().filter_map(|r| r["action"].as_str()).collect();
    for a in ["app.suspend", "app.scale", "group.update", "group.rollback"] {
        assert!(actions.contains(&a), "{a} missing from {actions:?}");
    }
}
