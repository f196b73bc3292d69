//! Opt-in failback with the real binaries. Two groups opt in (`failover.failback_after_s`),
//! one does not. site-1 dies (kill -9 of everything there) and all three fail over on the
//! observers' evidence. When site-1 comes back and both observer domains have seen it healthy
//! for the stability window, the opted-in groups go back to it one at a time, through a
//! planned switchover, and answer from it again; the third stays fenced there (weight 0,
//! instances kept) until an operator reclaims the site.

use std::time::Duration;

use serde_json::Value;
use switchyard_chaos_tests::{
    Federation, client_config_as, dig_a, fedctl, fedctl_json, http_get_host, kill_site, restart_site, task_processes,
    wait_for,
};

const GROUPS_FILE: &str = r#"
[[groups]]
name = "orders"
ttl_s = 1
tier = 0
failover = { failback_after_s = 5 }

[[groups]]
name = "ledger"
ttl_s = 1
tier = 1
failover = { failback_after_s = 5 }

[[groups]]
name = "reports"
ttl_s = 1
tier = 2
"#;

const SITE_1: &str = "127.0.1.1";

fn answers_from_survivor(dns: &str, name: &str) -> bool {
    let a = dig_a(dns, name);
    a.len() == 1 && a[0] != SITE_1
}

#[test]
fn opted_in_groups_fail_back_one_at_a_time_once_the_site_is_stable_and_the_rest_stay_fenced() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("fed");
    let groups_file = tmp.path().join("groups.toml");
    std::fs::write(&groups_file, GROUPS_FILE).expect("write the groups file");
    let fed = Federation::up(&dir, &["--groups-file", groups_file.to_str().unwrap()]);
    let dns = fed.dns();
    for g in ["orders", "ledger", "reports"] {
        assert_eq!(dig_a(&dns, &format!("{g}.fed.local.")), [SITE_1], "{g} starts on site-1");
    }
    // Let both observers see every site healthy before the failure.
    std::thread::sleep(Duration::from_secs(3));

    kill_site(&fed, "site-1");
    for g in ["orders", "ledger", "reports"] {
        wait_for(Duration::from_secs(90), &format!("{g} to fail over"), || {
            answers_from_survivor(&dns, &format!("{g}.fed.local.")).then_some(())
        });
    }
    let status = fedctl_json(&dir, &["dr", "status"]);
    let fenced = status["fenced"].as_array().expect("fenced groups listed").clone();
    assert_eq!(fenced.len(), 3, "{status}");
    let reports = fenced.iter().find(|f| f["group"] == "reports").unwrap();
    assert_eq!(reports["failback"], "off", "reports did not opt in: {status}");
    let orders = fenced.iter().find(|f| f["group"] == "orders").unwrap();
    assert!(orders["failback"].as_str().unwrap().starts_with("waiting"), "site-1 is dead: {status}");

    // site-1 comes back: cell, nodes and ingress restart.
    restart_site(&fed, "site-1");
    // After the 5 s stability window, the opted-in groups answer from site-1 again.
    for g in ["orders", "ledger"] {
        wait_for(Duration::from_secs(120), &format!("{g} to fail back to site-1"), || {
            (dig_a(&dns, &format!("{g}.fed.local.")) == [SITE_1]).then_some(())
        });
    }
    let ingress = fed.ingress("site-1");
    let (code, body) = wait_for(Duration::from_secs(30), "site-1's ingress to serve orders", || {
        http_get_host(&ingress, "orders.fed.local").filter(|(c, _)| *c == 200)
    });
    assert_eq!(code, 200);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["site"], "site-1", "{body}");

    // One at a time: each failback completed (drained, the survivor scaled back down) before
    // the next started, dependencies and tiers first (orders is tier 0).
    let failbacks = |records: &[Value]| -> Vec<(String, String)> {
        records
            .iter()
            .filter(|r| r["action"].as_str().is_some_and(|a| a == "failback.start" || a == "failback.complete"))
            .map(|r| (r["action"].as_str().unwrap().to_string(), r["subject"].as_str().unwrap().to_string()))
            .collect()
    };
    let audit = wait_for(Duration::from_secs(60), "ledger's failback to complete", || {
        let audit = fedctl_json(&dir, &["audit", "list"]);
        (failbacks(audit.as_array().unwrap()).len() >= 4).then_some(audit)
    });
    let records = audit.as_array().unwrap();
    let seq = failbacks(records);
    let expected: Vec<(String, String)> = [
        ("failback.start", "orders"),
        ("failback.complete", "orders"),
        ("failback.start", "ledger"),
        ("failback.complete", "ledger"),
    ]
    .iter()
    .map(|(a, g)| (a.to_string(), g.to_string()))
    .collect();
    assert_eq!(seq, expected);
    let returned = records.iter().find(|r| r["action"] == "site.returned").expect("site-1 returned to service");
    assert_eq!(returned["actor"], "system");
    assert!(returned["detail_json"].as_str().unwrap().contains("healthy_since_ms"), "{returned}");

    // reports did not opt in: it stays on the survivor, fenced on site-1 with its instances.
    std::thread::sleep(Duration::from_secs(3));
    assert!(answers_from_survivor(&dns, "reports.fed.local."));
    let groups = fedctl_json(&dir, &["groups"]);
    let reports = groups.as_array().unwrap().iter().find(|g| g["name"] == "reports").unwrap().clone();
    let on_1 = reports["placement"].as_array().unwrap().iter().find(|p| p["site"] == "site-1").expect("kept");
    assert_eq!(on_1["weight"].as_u64().unwrap_or(0), 0, "fenced: {reports}");
    let status = fedctl_json(&dir, &["dr", "status"]);
    assert!(status["down_sites"].as_array().is_none_or(|d| d.is_empty()), "site-1 is back: {status}");
    let fenced: Vec<&str> = status["fenced"].as_array().unwrap().iter().filter_map(|f| f["group"].as_str()).collect();
    assert_eq!(fenced, ["reports"], "{status}");
    let table = String::from_utf8_lossy(&fedctl(&dir, &["dr", "status"]).stdout).to_string();
    assert!(table.contains("reports") && table.contains("off"), "{table}");

    // The operator reclaims site-1: reports' fenced instances there stop.
    let dana = client_config_as(&dir, "dr-admin", "dana");
    let out = fedctl(
        &dir,
        &["--config", dana.to_str().unwrap(), "site", "reclaim", "site-1", "--reason", "repaired (CHG-12)"],
    );
    assert!(out.status.success(), "{out:?}");
    wait_for(Duration::from_secs(60), "reports' fenced instances on site-1 to stop", || {
        let left = task_processes(&dir)
            .into_iter()
            .filter(|t| t.env.get("SWITCHYARD_SITE").map(String::as_str) == Some("site-1"))
            .filter(|t| t.env.get("SWITCHYARD_GROUP").map(String::as_str) == Some("reports"))
            .count();
        (left == 0).then_some(())
    });
    assert_eq!(dig_a(&dns, "orders.fed.local."), [SITE_1], "the failed-back groups are untouched");
}
