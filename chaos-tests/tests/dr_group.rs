//! One group sick at one site, the site itself fine. `orders`' instances on site-1 fail their
//! health checks (and keep failing after the node restarts them); its cell reports no healthy
//! instance (the cell's own stream, domain `cell`) and the federator's composite view agrees
//! (instances, and the ingress answering 503 for the name: domain `federator`), and so does
//! fed-dns asking site-1's ingress for the name (domain `dns`). For the
//! detection window both domains see it down: orders alone is declared down at site-1 and
//! fails over; the site is not declared down and keeps serving `reports`.

use std::time::{Duration, Instant};

use serde_json::Value;
use switchyard_chaos_tests::{Federation, dig_a, fedctl, fedctl_json, http_get_host, wait_for};

const SITE_1: &str = "127.0.1.1";

#[test]
fn a_group_sick_at_one_site_fails_over_alone_and_the_site_keeps_serving() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("fed");
    let sick = tmp.path().join("orders-sick-{site}");
    let groups = tmp.path().join("groups.toml");
    std::fs::write(
        &groups,
        format!(
            "[[groups]]\nname = \"orders\"\nttl_s = 1\n[[groups.apps]]\nname = \"web\"\n\
             env = {{ SAMPLE_UNHEALTHY_FILE = \"{}\" }}\n\n[[groups]]\nname = \"reports\"\nttl_s = 1\n",
            sick.display()
        ),
    )
    .unwrap();
    let fed = Federation::up(&dir, &["--groups-file", groups.to_str().unwrap()]);
    let dns = fed.dns();
    for g in ["orders", "reports"] {
        assert_eq!(dig_a(&dns, &format!("{g}.fed.local.")), [SITE_1], "{g} starts on site-1");
    }
    std::thread::sleep(Duration::from_secs(3));
    assert!(fedctl_json(&dir, &["dr", "status"])["down_groups"].as_array().is_none_or(|d| d.is_empty()));

    // orders turns sick on site-1 only.
    let sick_1 = tmp.path().join("orders-sick-site-1");
    std::fs::write(&sick_1, "sick").unwrap();
    let sick_since = Instant::now();
    let declared = wait_for(Duration::from_secs(90), "orders declared down at site-1", || {
        let audit = fedctl_json(&dir, &["audit", "list"]);
        audit.as_array().unwrap().iter().find(|r| r["action"] == "group.declared-down").cloned()
    });
    assert_eq!((declared["subject"].as_str(), declared["actor"].as_str()), (Some("orders"), Some("system")));
    let detail: Value = serde_json::from_str(declared["detail_json"].as_str().unwrap()).unwrap();
    assert_eq!(detail["site"], "site-1");
    let domains: Vec<&str> = detail["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["health"] == "unhealthy")
        .filter_map(|e| e["domain"].as_str())
        .collect();
    assert!(domains.contains(&"cell") && domains.contains(&"federator"), "{detail}");
    assert!(domains.contains(&"dns"), "fed-dns asked site-1's ingress for orders too: {detail}");
    assert!(sick_since.elapsed() >= Duration::from_secs(10), "not before the detection window");

    let answer = wait_for(Duration::from_secs(60), "orders to answer from a survivor", || {
        let a = dig_a(&dns, "orders.fed.local.");
        (a.len() == 1 && a[0] != SITE_1).then(|| a[0].clone())
    });
    let site = if answer == "127.0.2.1" { "site-2" } else { "site-3" };
    let (code, body) = wait_for(Duration::from_secs(30), "the survivor to serve orders", || {
        http_get_host(&fed.ingress(site), "orders.fed.local").filter(|(c, _)| *c == 200)
    });
    assert_eq!((code, serde_json::from_str::<Value>(&body).unwrap()["site"].clone()), (200, site.into()));

    // The site itself is fine: not declared down, still serving reports.
    let status = fedctl_json(&dir, &["dr", "status"]);
    assert!(status["down_sites"].as_array().is_none_or(|d| d.is_empty()), "{status}");
    assert_eq!(dig_a(&dns, "reports.fed.local."), [SITE_1]);
    let (code, _) = http_get_host(&fed.ingress("site-1"), "reports.fed.local").expect("site-1 serves reports");
    assert_eq!(code, 200);
    let audit = fedctl_json(&dir, &["audit", "list"]);
    let failovers: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "failover.start")
        .filter_map(|r| r["subject"].as_str())
        .collect();
    assert_eq!(failovers, ["orders"], "only the sick group moved");
    let table = String::from_utf8_lossy(&fedctl(&dir, &["dr", "status"]).stdout).to_string();
    assert!(table.contains("orders") && table.contains("fenced"), "{table}");
}
