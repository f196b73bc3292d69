//! Evacuating a whole site with the real binaries on loopback, as
//! `runbooks/site-evacuation.md` does it: `fedctl up --groups-file` with twenty-two small groups
//! (twenty on site-1, dependency chains, mixed tiers, one ramped group), HTTP load through
//! each site's HAProxy by clients that resolve through fed-dns at most once per TTL, then
//! `switchover plan --site`, `switchover start --site --plan` and `switchover status` until the
//! evacuation ends. It must succeed with no failed request, in dependency order, never more
//! than `--concurrency` groups moving at once, and leave nothing of those groups on site-1.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use switchyard_chaos_tests::load::{Load, LoadReport, run_load};
use switchyard_chaos_tests::{Federation, dig_a, fedctl_json, http_get_host, task_processes, wait_for};

const ZONE: &str = "fed.local";
const CONCURRENCY: usize = 4;
/// Concurrent clients sending the load.
const CLIENTS: u64 = 3;

/// Twenty groups in the groups-file format of `fedctl up` (sample-app defaults: one instance
/// of 100 millicores and 64 MiB). site-1 is the busiest site; `warehouse` (site-2) and `archive`
/// (site-3) are not evacuated. Chains: `*-db` → `*-api` → `*-web`, and both `shop-api` and
/// `crm-api` need `auth`; `reports` needs `warehouse`, which is already on the target.
const GROUPS_FILE: &str = r#"
[[groups]]
name = "auth"
tier = 0
ttl_s = 2

[[groups]]
name = "shop-db"
tier = 0
ttl_s = 2

[[groups]]
name = "shop-api"
tier = 1
ttl_s = 2
depends_on = ["shop-db", "auth"]

[[groups]]
name = "shop-web"
tier = 0
ttl_s = 2
dns_aliases = ["shop"]
depends_on = ["shop-api"]
ramp = { steps = [50, 100] }

[[groups]]
name = "crm-db"
tier = 1
ttl_s = 2

[[groups]]
name = "crm-api"
tier = 1
ttl_s = 2
depends_on = ["crm-db", "auth"]

[[groups]]
name = "crm-web"
tier = 2
ttl_s = 2
depends_on = ["crm-api"]

[[groups]]
name = "pay-db"
tier = 0
ttl_s = 2

[[groups]]
name = "pay-api"
tier = 0
ttl_s = 2
depends_on = ["pay-db"]

[[groups]]
name = "pay-web"
tier = 1
ttl_s = 2
depends_on = ["pay-api"]

[[groups]]
name = "mail"
tier = 1
ttl_s = 2

[[groups]]
name = "status"
tier = 0
ttl_s = 2

[[groups]]
name = "search"
tier = 2
ttl_s = 2

[[groups]]
name = "chat"
tier = 2
ttl_s = 2

[[groups]]
name = "cdn"
tier = 2
ttl_s = 2

[[groups]]
name = "blog"
tier = 3
ttl_s = 2

[[groups]]
name = "wiki"
tier = 3
ttl_s = 2

[[groups]]
name = "reports"
tier = 3
ttl_s = 2
depends_on = ["warehouse"]

[[groups]]
name = "forum"
tier = 2
ttl_s = 2

[[groups]]
name = "forum-index"
tier = 3
ttl_s = 2
depends_on = ["forum"]

[[groups]]
name = "warehouse"
tier = 0
ttl_s = 2
home_site = "site-2"

[[groups]]
name = "archive"
tier = 3
ttl_s = 2
home_site = "site-3"
"#;

/// Host names the clients ask for: ends of chains, the ramped group and its alias, standalone
/// groups, and `archive`, which stays on site-3.
const LOAD_HOSTS: [&str; 8] = ["shop-web", "shop", "crm-web", "pay-web", "auth", "search", "blog", "archive"];

fn depends_on() -> BTreeMap<String, Vec<String>> {
    let file: toml::Table = toml::from_str(GROUPS_FILE).expect("the groups file is TOML");
    file["groups"]
        .as_array()
        .expect("[[groups]]")
        .iter()
        .map(|g| {
            let deps = g.get("depends_on").and_then(|d| d.as_array()).cloned().unwrap_or_default();
            (g["name"].as_str().unwrap().to_string(), deps.iter().map(|d| d.as_str().unwrap().to_string()).collect())
        })
        .collect()
}

#[test]
fn a_whole_site_is_evacuated_under_load_in_dependency_order() {
    let test_started = Instant::now();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("fed");
    let groups_file = tmp.path().join("groups.toml");
    std::fs::write(&groups_file, GROUPS_FILE).expect("write the groups file");
    let fed = Federation::up(&dir, &["--sites", "3", "--groups-file", groups_file.to_str().unwrap()]);
    let up_took = test_started.elapsed();
    let dns = fed.dns();
    let ingress1 = fed.ingress("site-1");
    let port = ingress1.rsplit_once(':').unwrap().1.to_string();
    let deps = depends_on();
    let moving: BTreeSet<String> =
        deps.keys().filter(|g| !["warehouse", "archive"].contains(&g.as_str())).cloned().collect();
    assert_eq!(moving.len(), 20);

    // Where everything starts: each group's name answers its home site's ingress, and each
    // site's HAProxy routes every Host name of the file, aliases included.
    for g in &moving {
        assert_eq!(dig_a(&dns, &format!("{g}.{ZONE}.")), ["127.0.1.1"], "{g}");
    }
    assert_eq!(dig_a(&dns, &format!("warehouse.{ZONE}.")), ["127.0.2.1"]);
    assert_eq!(dig_a(&dns, &format!("archive.{ZONE}.")), ["127.0.3.1"]);
    let (code, body) = http_get_host(&ingress1, &format!("shop.{ZONE}")).expect("site-1's ingress answers");
    assert_eq!((code, serde_json::from_str::<Value>(&body).unwrap()["site"].clone()), (200, "site-1".into()), "{body}");

    // Clients, each with its own resolver cache (so their TTLs expire at different moments):
    // bounded loops in the background for the whole evacuation.
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (dns, port, stop) = (dns.clone(), port.clone(), stop.clone());
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(700 * c));
                run_load(Load {
                    dns,
                    zone: ZONE.into(),
                    hosts: LOAD_HOSTS.iter().map(|h| h.to_string()).collect(),
                    ingress_port: port,
                    stop,
                    max_requests: 10_000,
                    max_time: Duration::from_secs(200),
                    pace: Duration::from_millis(20),
                })
            })
        })
        .collect();

    // The runbook: plan the evacuation and read it.
    let plan = fedctl_json(&dir, &["switchover", "plan", "--site", "site-1", "--to", "site-2"]);
    assert_eq!(plan["go"], true, "{plan}");
    let order: Vec<String> =
        plan["groups"].as_array().unwrap().iter().map(|g| g["group"].as_str().unwrap().to_string()).collect();
    assert_eq!(order.iter().cloned().collect::<BTreeSet<_>>(), moving, "the plan moves every group on site-1");
    for (i, g) in order.iter().enumerate() {
        for d in deps[g].iter().filter(|d| moving.contains(*d)) {
            assert!(order[..i].contains(d), "the plan moves {g} before {d}, which it depends on: {order:?}");
        }
    }
    let ramped = plan["groups"].as_array().unwrap().iter().find(|g| g["group"] == "shop-web").unwrap();
    let phases: Vec<&str> = ramped["steps"].as_array().unwrap().iter().map(|s| s["phase"].as_str().unwrap()).collect();
    assert!(phases.contains(&"Shifting"), "shop-web's ramp has a 50% step: {phases:?}");
    let plan_id = plan["id"].as_str().unwrap().to_string();

    // Start on the reviewed plan, then follow `switchover status` until it ends.
    let evac_started = Instant::now();
    let reason = "CHG-7 site-1 power work";
    let concurrency = CONCURRENCY.to_string();
    let evac = fedctl_json(
        &dir,
        &[
            "switchover",
            "start",
            "--site",
            "site-1",
            "--to",
            "site-2",
            "--plan",
            &plan_id,
            "--concurrency",
            &concurrency,
            "--reason",
            reason,
        ],
    );
    let id = evac["id"].as_str().expect("evacuation id").to_string();
    assert!(id.starts_with("evac-"), "{evac}");
    let mut samples = 0;
    let mut most_running = 0;
    let done = wait_for(Duration::from_secs(200), &format!("{id} to finish"), || {
        let s = fedctl_json(&dir, &["switchover", "status", &id]);
        let groups = s["groups"].as_array().expect("an evacuation lists its groups");
        let running: Vec<&str> =
            groups.iter().filter(|g| g["status"] == "running").map(|g| g["group"].as_str().unwrap()).collect();
        assert!(running.len() <= CONCURRENCY, "more than {CONCURRENCY} groups moving at once: {running:?}\n{s}");
        samples += 1;
        most_running = most_running.max(running.len());
        (s["outcome"] != "running").then_some(s)
    });
    let evac_took = evac_started.elapsed();
    assert_eq!(done["outcome"], "succeeded", "{done}");
    let statuses: BTreeMap<&str, &str> = done["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| (g["group"].as_str().unwrap(), g["status"].as_str().unwrap()))
        .collect();
    assert_eq!(statuses.keys().map(|g| g.to_string()).collect::<BTreeSet<_>>(), moving);
    assert!(statuses.values().all(|s| *s == "succeeded"), "{statuses:?}");
    assert!(most_running >= 2, "groups moved side by side (at most {most_running} seen running in {samples} samples)");
    // The ramped group took its 50 % step, held it, then moved the rest.
    let op_id = done["groups"].as_array().unwrap().iter().find(|g| g["group"] == "shop-web").unwrap()["operation_id"]
        .as_str()
        .unwrap()
        .to_string();
    let op = fedctl_json(&dir, &["switchover", "status", &op_id]);
    let phases: Vec<&str> = op["steps"].as_array().unwrap().iter().map(|s| s["phase"].as_str().unwrap()).collect();
    assert!(phases.contains(&"Shifting") && phases.contains(&"Draining"), "{op}");
    assert_eq!(op["ramp"], serde_json::json!([50, 100]), "{op}");

    // Every group's traffic is on site-2: DNS answers site-2's ingress; the others stayed.
    for g in &moving {
        assert_eq!(dig_a(&dns, &format!("{g}.{ZONE}.")), ["127.0.2.1"], "{g}");
    }
    let alias = dig_a(&dns, &format!("shop.{ZONE}."));
    assert!(alias.contains(&"127.0.2.1".to_string()) && !alias.contains(&"127.0.1.1".to_string()), "{alias:?}");
    assert_eq!(dig_a(&dns, &format!("warehouse.{ZONE}.")), ["127.0.2.1"]);
    assert_eq!(dig_a(&dns, &format!("archive.{ZONE}.")), ["127.0.3.1"]);
    let listed = fedctl_json(&dir, &["groups"]);
    for g in listed.as_array().unwrap().iter().filter(|g| moving.contains(g["name"].as_str().unwrap())) {
        assert_eq!(
            (g["active_sites"].clone(), g["operation"].clone()),
            (serde_json::json!(["site-2"]), "".into()),
            "{g}"
        );
    }

    // The OS agrees: none of those groups has a task on site-1, each has its one on site-2.
    let on_site = || {
        let mut m: BTreeMap<(String, String), usize> = BTreeMap::new();
        for t in task_processes(&dir) {
            let (Some(g), Some(s)) = (t.env.get("SWITCHYARD_GROUP"), t.env.get("SWITCHYARD_SITE")) else { continue };
            if moving.contains(g) {
                *m.entry((g.clone(), s.clone())).or_default() += 1;
            }
        }
        m
    };
    let tasks = wait_for(Duration::from_secs(15), "site-1's instances of the evacuated groups to exit", || {
        let m = on_site();
        m.keys().all(|(_, s)| s != "site-1").then_some(m)
    });
    for g in &moving {
        assert_eq!(tasks.get(&(g.clone(), "site-2".into())), Some(&1), "{g} runs one instance on site-2: {tasks:?}");
    }

    // Dependency order and the reason, from the audit history: each group started only after
    // every group it depends on (among those moving) had completed its switchover.
    let audit = fedctl_json(&dir, &["audit", "list"]);
    let records = audit.as_array().unwrap();
    let seq = |action: &str, group: &str| {
        records.iter().find(|r| r["action"] == action && r["subject"] == group).map(|r| r["sequence"].as_u64().unwrap())
    };
    let started: Vec<&str> = records
        .iter()
        .filter(|r| r["action"] == "evacuation.group-started")
        .map(|r| {
            assert_eq!(
                serde_json::from_str::<Value>(r["detail_json"].as_str().unwrap()).unwrap()["operation"],
                id.as_str()
            );
            r["subject"].as_str().unwrap()
        })
        .collect();
    assert_eq!(started.iter().map(|g| g.to_string()).collect::<BTreeSet<_>>(), moving, "{started:?}");
    for g in &started {
        let began = seq("evacuation.group-started", g).unwrap();
        for d in deps[*g].iter().filter(|d| moving.contains(*d)) {
            let dep_done = seq("switchover.complete", d).unwrap_or_else(|| panic!("{d} never completed"));
            assert!(
                dep_done < began,
                "{g} started (#{began}) before {d} completed (#{dep_done}); start order {started:?}"
            );
        }
    }
    let start = records.iter().find(|r| r["action"] == "evacuation.start").expect("evacuation.start record");
    assert_eq!((start["subject"].as_str(), start["reason"].as_str()), (Some("site-1"), Some(reason)));
    let detail: Value = serde_json::from_str(start["detail_json"].as_str().unwrap()).unwrap();
    assert_eq!(detail["plan"], plan_id.as_str(), "the evacuation records the plan it executed");

    // Clients keep going for two TTLs on the new answers, then stop. Not one request failed.
    std::thread::sleep(Duration::from_secs(5));
    stop.store(true, Ordering::Relaxed);
    let loads: Vec<LoadReport> = clients.into_iter().map(|c| c.join().expect("a client loop ends")).collect();
    let requests: u64 = loads.iter().map(|l| l.requests).sum();
    let failures: u64 = loads.iter().map(|l| l.failures).sum();
    let failed: Vec<&String> = loads.iter().flat_map(|l| &l.failed).collect();
    eprintln!(
        "fedctl up {:.1}s, evacuation {:.1}s ({samples} status samples, at most {most_running} running), \
         {CLIENTS} clients: {requests} requests, {} DNS lookups; total {:.1}s; start order {started:?}",
        up_took.as_secs_f64(),
        evac_took.as_secs_f64(),
        loads.iter().map(|l| l.resolutions).sum::<u64>(),
        test_started.elapsed().as_secs_f64()
    );
    assert_eq!(failures, 0, "{failures} of {requests} requests failed; first: {failed:#?}");
    assert!(requests >= 500, "the load ran: {requests} requests");
    for (c, load) in loads.iter().enumerate() {
        for host in LOAD_HOSTS {
            let (first, last) = if host == "archive" { ("site-3", "site-3") } else { ("site-1", "site-2") };
            let served = |site: &str| load.answered.contains_key(&(host.to_string(), site.to_string()));
            assert!(served(first), "client {c}: {host} was served by {first} first: {:?}", load.answered);
            assert_eq!(load.last_site.get(host).map(String::as_str), Some(last), "client {c}: {host}");
        }
    }
    assert!(fed.down().status.success());
}
