//! Autoscaling end to end, against the real binaries on loopback: the cell scales the sample
//! app up under concurrent load and back down when it stops, every decision goes through the
//! federator into the audit history, and a freeze stops it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;
use switchyard_chaos_tests::{Federation, client_config_as, fedctl_json, fedctl_ok, http_get, wait_for};

const AUTOSCALE: &str = r#"
[autoscale]
min_instances = 2
max_instances = 4
max_step_up = 1
max_step_down = 1
cooldown_up_ms = 1000
cooldown_down_ms = 2000
sample_interval_ms = 500

[autoscale.policy]
kind = "threshold"
sustain_ms = 1500
step_up = { absolute = 1 }
step_down = { absolute = 1 }

[autoscale.policy.bounds.concurrency]
upper = 1.5
lower = 0.5

[metrics]
concurrency = "switchyard_sample_in_flight_requests"
requests_total = "switchyard_sample_requests_total"
request_ms_total = "switchyard_sample_request_ms_total"
"#;

fn web_app(dir: &std::path::Path) -> Value {
    let apps = fedctl_json(dir, &["cell", "apps", "--dir", dir.to_str().unwrap()]);
    apps["apps"].as_array().unwrap().iter().find(|a| a["group"] == "crm-web" && a["app"] == "web").unwrap().clone()
}

/// `clients` threads each requesting one second of work from the crm-web instances that run
/// when the load starts, round robin, until `stop`.
fn load(dir: &std::path::Path, clients: usize, stop: &Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<u32>> {
    let tasks = fedctl_json(dir, &["cell", "tasks", "--dir", dir.to_str().unwrap()]);
    let targets: Vec<String> = tasks["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["group"] == "crm-web")
        .map(|t| format!("{}:{}", t["address"].as_str().unwrap(), t["port"]))
        .collect();
    assert!(!targets.is_empty());
    (0..clients)
        .map(|i| {
            let (stop, targets) = (stop.clone(), targets.clone());
            std::thread::spawn(move || {
                let mut served = 0;
                let deadline = std::time::Instant::now() + Duration::from_secs(90);
                let mut n = i;
                while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
                    n += 1;
                    if http_get(&targets[n % targets.len()], "/work?ms=1000").is_some_and(|(code, _)| code == 200) {
                        served += 1;
                    }
                }
                served
            })
        })
        .collect()
}

fn desired_on_site_1(dir: &std::path::Path) -> u64 {
    web_app(dir)["desired"].as_u64().unwrap()
}

#[test]
fn the_cell_autoscales_on_concurrency_with_audited_decisions_and_obeys_freezes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("fed");
    let _fed = Federation::up(&dir, &["--sites", "2"]);

    // Give crm-web/web a concurrency policy: 2 to 4 instances, up above 1.5 in flight each.
    let mut spec: toml::Table = toml::from_str(&fedctl_ok(&dir, &["group", "show", "crm-web"])).unwrap();
    let extra: toml::Table = toml::from_str(AUTOSCALE).unwrap();
    let app = spec["apps"].as_array_mut().unwrap()[0].as_table_mut().unwrap();
    app.extend(extra);
    let file = dir.join("crm-web.toml");
    std::fs::write(&file, toml::to_string(&spec).unwrap()).unwrap();
    let out = fedctl_ok(&dir, &["group", "apply", file.to_str().unwrap(), "--reason", "CHG-2 autoscale web"]);
    assert!(out.contains("app web: autoscaling changed") && !out.contains("new spec"), "{out}");
    wait_for(Duration::from_secs(20), "the cell to take the policy", || {
        web_app(&dir)["autoscale"].as_str().is_some_and(|n| n.contains("concurrency")).then_some(())
    });
    assert_eq!(desired_on_site_1(&dir), 2);

    // Six clients keep three requests in flight per instance: the cell scales up to the max.
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(&dir, 6, &stop);
    wait_for(Duration::from_secs(40), "scale-up to 4 instances", || (desired_on_site_1(&dir) == 4).then_some(()));
    wait_for(Duration::from_secs(40), "4 healthy instances", || {
        (web_app(&dir)["healthy"].as_u64() == Some(4)).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    let served: u32 = clients.into_iter().map(|c| c.join().unwrap()).sum();
    assert!(served > 10, "the load ran ({served} requests)");

    // Idle: back down to the minimum, one step per cooldown, never below it.
    wait_for(Duration::from_secs(40), "scale-down to 2 instances", || (desired_on_site_1(&dir) == 2).then_some(()));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(desired_on_site_1(&dir), 2, "never below min_instances");

    let audit = fedctl_json(&dir, &["audit", "list"]);
    let scaling: Vec<(u64, u64)> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "app.autoscale")
        .map(|r| {
            assert_eq!(r["actor"], "cell:site-1", "{r}");
            assert_eq!(r["subject"], "crm-web/web@site-1", "{r}");
            let d: Value = serde_json::from_str(r["detail_json"].as_str().unwrap()).unwrap();
            assert!(d["evidence"]["threshold.concurrency.mean"].is_number(), "evidence recorded: {d}");
            (d["from"].as_u64().unwrap(), d["to"].as_u64().unwrap())
        })
        .collect();
    assert_eq!(scaling, [(2, 3), (3, 4), (4, 3), (3, 2)], "one audited step at a time");

    // Frozen by a dr-admin: load no longer scales it, and the cell says why.
    let dr_admin = client_config_as(&dir, "dr-admin", "dana");
    let cfg = dr_admin.to_str().unwrap();
    fedctl_ok(&dir, &["--config", cfg, "freeze", "set", "group:crm-web", "--reason", "CAB freeze"]);
    let frozen = fedctl_json(&dir, &["freeze", "list"]);
    assert_eq!(frozen[0]["scope"], "group:crm-web", "{frozen}");
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(&dir, 6, &stop);
    let note = wait_for(Duration::from_secs(20), "the cell to report the freeze", || {
        let note = web_app(&dir)["autoscale"].as_str().unwrap_or_default().to_string();
        note.contains("frozen by the federator; would have scaled 2 -> 3").then_some(note)
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(desired_on_site_1(&dir), 2, "a freeze holds the count: {note}");
    fedctl_ok(&dir, &["--config", cfg, "freeze", "clear", "group:crm-web", "--reason", "freeze over"]);
    wait_for(Duration::from_secs(30), "scale-up once the freeze is cleared", || {
        (desired_on_site_1(&dir) > 2).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
}
