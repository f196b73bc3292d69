//! Manual disaster recovery with the real binaries: site-1 dies at once (kill -9 of its cell,
//! nodes, instances and ingress proxy); an operator who knows declares it down with
//! `fedctl failover --site site-1`; every group serves from a survivor, DNS answers the
//! survivor, nothing was needed from the dead site. The site returns: its groups stay fenced,
//! nothing deleted, until it is reclaimed by hand. Two of three sites declared down at once
//! trip the brake, which holds until a human releases it.

use std::time::Duration;

use serde_json::Value;
use switchyard_chaos_tests::{
    Federation, client_config_as, dig_a, fedctl, fedctl_json, http_get_host, kill_site, restart_site, task_processes,
    wait_for,
};

#[test]
fn an_operator_fails_a_dead_site_over_and_a_second_failure_brakes_automation() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("fed");
    let fed = Federation::up(&dir, &[]);
    let dns = fed.dns();
    let dana = client_config_as(&dir, "dr-admin", "dana");
    let as_dana = |args: &[&str]| {
        let mut all = vec!["--config", dana.to_str().unwrap()];
        all.extend(args);
        fedctl(&dir, &all)
    };
    assert_eq!(dig_a(&dns, "crm-web.fed.local."), ["127.0.1.1"]);

    // One group broken on site-1 only: moved off by hand, the site stays in service.
    let out = as_dana(&["failover", "--group", "mobile-app", "--reason", "mobile-app broken on site-1 (INC-76)"]);
    assert!(out.status.success(), "{out:?}");
    wait_for(Duration::from_secs(90), "mobile-app to answer from a survivor", || {
        let a = dig_a(&dns, "mobile-app.fed.local.");
        (a.len() == 1 && a[0] != "127.0.1.1").then_some(())
    });
    assert_eq!(dig_a(&dns, "crm-web.fed.local."), ["127.0.1.1"], "the site keeps its other groups");
    assert!(fedctl_json(&dir, &["dr", "status"])["down_sites"].as_array().is_none_or(|d| d.is_empty()));

    let killed = kill_site(&fed, "site-1");
    assert!(killed >= 4, "the site's cell, nodes, proxy and instances: {killed}");
    // An operator without the dr-admin role may not declare it.
    let denied = fedctl(&dir, &["failover", "--site", "site-1", "--reason", "power lost"]);
    assert_eq!(denied.status.code(), Some(2), "{denied:?}");
    let out = as_dana(&["failover", "--site", "site-1", "--reason", "site-1 lost power (ticket INC-77)"]);
    assert!(out.status.success(), "{out:?}");

    // Every group serves from a survivor, found through DNS, reachable through its ingress.
    for (group, name) in [("crm-web", "crm-web.fed.local."), ("mobile-app", "mobile-app.fed.local.")] {
        let answer = wait_for(Duration::from_secs(90), &format!("{group} to answer from a survivor"), || {
            let a = dig_a(&dns, name);
            (a.len() == 1 && a[0] != "127.0.1.1").then(|| a[0].clone())
        });
        let site = if answer == "127.0.2.1" { "site-2" } else { "site-3" };
        let ingress = fed.ingress(site);
        let (code, body) = wait_for(Duration::from_secs(30), "the survivor's ingress to serve it", || {
            http_get_host(&ingress, name.trim_end_matches('.')).filter(|(c, _)| *c == 200)
        });
        assert_eq!(code, 200);
        assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["site"], site, "{body}");
    }
    let status = fedctl_json(&dir, &["dr", "status"]);
    assert_eq!(status["down_sites"][0]["site"], "site-1", "{status}");
    assert!(status["down_sites"][0]["manual_reason"].as_str().unwrap().contains("INC-77"));
    let audit = fedctl_json(&dir, &["audit", "list"]);
    let actions: Vec<&str> = audit.as_array().unwrap().iter().filter_map(|r| r["action"].as_str()).collect();
    assert!(actions.contains(&"site.declared-down"));
    assert_eq!(actions.iter().filter(|a| **a == "failover.complete").count(), 2, "{actions:?}");
    let groups = fedctl_json(&dir, &["groups"]);
    for g in groups.as_array().unwrap() {
        let on_1 = g["placement"].as_array().unwrap().iter().find(|p| p["site"] == "site-1").expect("site-1 kept");
        let kept: u64 = on_1["instances"].as_object().unwrap().values().filter_map(Value::as_u64).sum();
        assert!(kept > 0, "nothing deleted on the dead site: {g}");
        assert_eq!(on_1["weight"].as_u64().unwrap_or(0), 0, "fenced: {g}");
        assert_eq!(on_1["health"], "unknown", "a dead site's instances are unknown, never ready: {g}");
    }

    // site-1 returns: its cell and nodes restart, learn the new epoch, and the groups stay
    // fenced there (no traffic) with nothing deleted.
    restart_site(&fed, "site-1");
    wait_for(Duration::from_secs(60), "site-1's cell to report again", || {
        let sites = fedctl_json(&dir, &["sites"]);
        let s1 = sites.as_array().unwrap().iter().find(|s| s["name"] == "site-1").cloned().unwrap();
        (s1["report_age_ms"].as_u64().is_some_and(|a| a < 5_000)).then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    for name in ["crm-web.fed.local.", "mobile-app.fed.local."] {
        assert_ne!(dig_a(&dns, name), ["127.0.1.1"], "{name} stays off the returned site");
    }
    let groups = fedctl_json(&dir, &["groups"]);
    for g in groups.as_array().unwrap() {
        let on_1 = g["placement"].as_array().unwrap().iter().find(|p| p["site"] == "site-1").expect("kept");
        assert_eq!(on_1["weight"].as_u64().unwrap_or(0), 0, "still fenced: {g}");
        assert!(on_1["instances"].as_object().unwrap().values().any(|n| n.as_u64() > Some(0)), "{g}");
    }
    // Reclaimed by hand: the fenced instances on site-1 stop, the site is active again.
    let out = as_dana(&["site", "reclaim", "site-1", "--reason", "power restored (INC-77)"]);
    assert!(out.status.success(), "{out:?}");
    wait_for(Duration::from_secs(60), "site-1's fenced instances to stop", || {
        let left = task_processes(&dir)
            .into_iter()
            .filter(|t| t.env.get("SWITCHYARD_SITE").map(String::as_str) == Some("site-1"))
            .count();
        (left == 0).then_some(())
    });
    let status = fedctl_json(&dir, &["dr", "status"]);
    assert!(status["down_sites"].as_array().is_none_or(|d| d.is_empty()), "{status}");

    // Two of three sites declared down at once trips the brake.
    for site in ["site-2", "site-3"] {
        let out = as_dana(&["failover", "--site", site, "--reason", "unreachable?"]);
        assert!(out.status.success(), "{out:?}");
    }
    let braked = wait_for(Duration::from_secs(30), "the brake", || {
        let s = fedctl_json(&dir, &["dr", "status"]);
        (!s["brake"].as_str().unwrap_or_default().is_empty()).then_some(s)
    });
    assert!(braked["brake"].as_str().unwrap().contains("2 of 3 sites declared down"), "{braked}");
    assert!(braked["held"].as_array().unwrap().iter().all(|h| h["rule"] == "brake"), "{braked}");
    let table = String::from_utf8_lossy(&fedctl(&dir, &["dr", "status"]).stdout).to_string();
    assert!(table.contains("BRAKED") && table.contains("fedctl brake release"), "{table}");
    let out = as_dana(&["brake", "release", "--reason", "reviewed: site-2 is a monitoring fault"]);
    assert!(out.status.success(), "{out:?}");
    let audit = fedctl_json(&dir, &["audit", "list"]);
    let actions: Vec<&str> = audit.as_array().unwrap().iter().filter_map(|r| r["action"].as_str()).collect();
    assert!(actions.contains(&"brake.engaged") && actions.contains(&"brake.released"), "{actions:?}");
}
