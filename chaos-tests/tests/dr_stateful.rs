//! Stateful groups in a real site failure. `ledger` and `vault` keep a warm replica on site-2
//! whose replication lag the instances answer from a file the test writes (site-2's cell asks
//! them each second and reports it). With the lag beyond the RPO budget, automation holds
//! them (rule `rpo`) while the stateless group fails over. Once ledger's replica catches up,
//! its failover starts but the replica is promoted only after site-1's primary lease has run
//! out. vault moves only when a human accepts the data loss, which the audit records.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use switchyard_chaos_tests::{Federation, client_config_as, dig_a, fedctl, fedctl_json, kill_site, wait_for};

const SITE_1: &str = "127.0.1.1";
const SITE_2: &str = "127.0.2.1";
const LEASE_S: u64 = 30;

fn groups_file(lag_dir: &Path) -> String {
    let mut text = String::from("[[groups]]\nname = \"reports\"\nttl_s = 1\n\n");
    for g in ["ledger", "vault"] {
        let lag = lag_dir.join(g);
        text.push_str(&format!(
            "[[groups]]\nname = \"{g}\"\nttl_s = 1\nwarm_standby = {{ site-2 = 1 }}\n\
             failover = {{ stateful = {{ rpo_s = 5, lease_s = {LEASE_S} }} }}\n\
             [[groups.apps]]\nname = \"db\"\nenv = {{ SAMPLE_REPLICATION_LAG_FILE = \"{}\" }}\n\n",
            lag.display()
        ));
    }
    text
}

fn held(dir: &Path) -> Vec<(String, String, String)> {
    let s = fedctl_json(dir, &["dr", "status"]);
    s["held"]
        .as_array()
        .map(|h| {
            h.iter()
                .map(|h| {
                    let f = |k: &str| h[k].as_str().unwrap_or_default().to_string();
                    (f("group"), f("rule"), f("detail"))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn stateful_groups_wait_for_their_rpo_budget_and_the_old_primarys_lease() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("fed");
    let lag_dir = tmp.path().join("lag");
    std::fs::create_dir_all(&lag_dir).unwrap();
    for g in ["ledger", "vault"] {
        std::fs::write(lag_dir.join(g), "9000\n").unwrap();
    }
    let groups = tmp.path().join("groups.toml");
    std::fs::write(&groups, groups_file(&lag_dir)).unwrap();
    let fed = Federation::up(&dir, &["--groups-file", groups.to_str().unwrap()]);
    let dns = fed.dns();
    assert_eq!(dig_a(&dns, "ledger.fed.local."), [SITE_1]);
    // The warm replicas run on site-2 with no traffic.
    let list = fedctl_json(&dir, &["groups"]);
    let ledger = list.as_array().unwrap().iter().find(|g| g["name"] == "ledger").unwrap().clone();
    let on_2 = ledger["placement"].as_array().unwrap().iter().find(|p| p["site"] == "site-2").expect("standby");
    assert_eq!(on_2["weight"].as_u64().unwrap_or(0), 0, "{ledger}");
    std::thread::sleep(Duration::from_secs(3));

    let killed = Instant::now();
    kill_site(&fed, "site-1");
    wait_for(Duration::from_secs(60), "reports to fail over", || {
        (dig_a(&dns, "reports.fed.local.") != [SITE_1]).then_some(())
    });
    let rules = wait_for(Duration::from_secs(30), "the stateful groups held by the RPO budget", || {
        let h = held(&dir);
        (h.iter().filter(|(_, rule, _)| rule == "rpo").count() == 2).then_some(h)
    });
    let (_, _, why) = rules.iter().find(|(g, _, _)| g == "ledger").unwrap();
    assert!(why.contains("site-2: replica 9000 ms behind, RPO budget 5000 ms"), "{why}");
    assert_eq!(dig_a(&dns, "ledger.fed.local."), [SITE_1], "held: nothing moves, never all off");

    // ledger's replica catches up: its failover starts, but site-1's primary may still write
    // until its lease runs out, so traffic stays put until then.
    std::fs::write(lag_dir.join("ledger"), "1200\n").unwrap();
    let started = wait_for(Duration::from_secs(30), "ledger's failover to start", || {
        let audit = fedctl_json(&dir, &["audit", "list"]);
        audit.as_array().unwrap().iter().find(|r| r["action"] == "failover.start" && r["subject"] == "ledger").cloned()
    });
    let detail: Value = serde_json::from_str(started["detail_json"].as_str().unwrap()).unwrap();
    assert_eq!(detail["promotion"]["lag_ms"], 1200, "{detail}");
    wait_for(Duration::from_secs(LEASE_S + 30), "ledger to answer from its promoted replica", || {
        (dig_a(&dns, "ledger.fed.local.") == [SITE_2]).then_some(())
    });
    let moved = killed.elapsed();
    assert!(moved >= Duration::from_secs(LEASE_S - 2), "promoted before the lease could run out: {moved:?}");
    let audit = fedctl_json(&dir, &["audit", "list"]);
    let done = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["action"] == "failover.complete" && r["subject"] == "ledger")
        .expect("ledger's failover completed");
    assert!(done["detail_json"].as_str().unwrap().contains("lease ran out"), "{done}");

    // vault is still beyond its budget: only a human accepting the loss moves it.
    assert!(held(&dir).iter().any(|(g, rule, _)| g == "vault" && rule == "rpo"));
    let dana = client_config_as(&dir, "dr-admin", "dana");
    let refused = fedctl(
        &dir,
        &["--config", dana.to_str().unwrap(), "failover", "--group", "vault", "--reason", "site-1 lost (INC-31)"],
    );
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("rpo"), "{refused:?}");
    let out = fedctl(
        &dir,
        &[
            "--config",
            dana.to_str().unwrap(),
            "failover",
            "--group",
            "vault",
            "--reason",
            "site-1 lost (INC-31); last 9 s of vault writes written off",
            "--accept-data-loss",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    wait_for(Duration::from_secs(60), "vault to answer from site-2", || {
        (dig_a(&dns, "vault.fed.local.") == [SITE_2]).then_some(())
    });
    let audit = fedctl_json(&dir, &["audit", "list"]);
    let start = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["action"] == "failover.start" && r["subject"] == "vault")
        .expect("audited");
    assert_eq!(start["actor"], "dr-admin:dana");
    assert!(start["detail_json"].as_str().unwrap().contains("\"data_loss_accepted_by\":\"dr-admin:dana\""), "{start}");
}
