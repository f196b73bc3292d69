//! Automatic disaster recovery with the real binaries. The federator probes each site's
//! ingress (failure domain `federator`) and so does the DNS server (domain `dns`). Killing a
//! whole site makes both see it refused: it is declared down on their evidence and its groups
//! fail over with no human involved. Cutting only the federator's path to a site that still
//! serves (the DNS server still reaches it) declares nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use switchyard_chaos_tests::load::{Load, LoadReport, Sent, run_load};
use switchyard_chaos_tests::{Federation, dig_a, dig_raw, fedctl, fedctl_json, kill_site, wait_for};

fn audit_actions(dir: &std::path::Path) -> Vec<Value> {
    fedctl_json(dir, &["audit", "list"]).as_array().unwrap().clone()
}

#[test]
fn a_dead_site_is_declared_down_by_a_quorum_of_observers_and_failed_over_automatically() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("fed");
    // A fed-dns in each site too: site-1's dies with it.
    let fed = Federation::up(&dir, &["--dns-per-site"]);
    let dns = fed.dns();
    let site_dns = |site: &str| fed.process(&format!("dns-{site}"))["listen"]["dns"].as_str().unwrap().to_string();
    let (dns_1, dns_2) = (site_dns("site-1"), site_dns("site-2"));
    assert_eq!(dig_a(&dns_2, "crm-web.fed.local."), ["127.0.1.1"], "every fed-dns serves the same table");
    assert_eq!(dig_a(&dns, "crm-web.fed.local."), ["127.0.1.1"]);
    // Each publishes the whole NS set: the federation's fed-dns and one per site.
    for server in [&dns, &dns_2] {
        let ns = dig_raw(server, "fed.local.", "NS");
        let mut named: Vec<&str> = ns
            .lines()
            .filter(|l| !l.starts_with(';'))
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() == 5 && f[3] == "NS").then(|| f[4])
            })
            .collect();
        named.sort();
        assert_eq!(named, ["ns1.fed.local.", "ns2.fed.local.", "ns3.fed.local.", "ns4.fed.local."], "{ns}");
    }
    // Clients resolve through fed-dns (at most once per TTL) and send HTTP through the resolved
    // site's ingress, from before the failure until well after DNS moved.
    let stop = Arc::new(AtomicBool::new(false));
    let port = fed.ingress("site-1").rsplit_once(':').unwrap().1.to_string();
    let clients: Vec<_> = (0..3u64)
        .map(|c| {
            let load = Load {
                dns: dns.clone(),
                zone: "fed.local".into(),
                hosts: vec!["crm-web".into(), "mobile-app".into()],
                ingress_port: port.clone(),
                stop: stop.clone(),
                max_requests: 5_000,
                max_time: Duration::from_secs(150),
                pace: Duration::from_millis(50),
            };
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(400 * c));
                run_load(load)
            })
        })
        .collect();
    // Both observers see every site healthy for a while: nothing happens.
    std::thread::sleep(Duration::from_secs(3));
    assert!(fedctl_json(&dir, &["dr", "status"])["down_sites"].as_array().is_none_or(|d| d.is_empty()));

    let killed = Instant::now();
    let signalled = kill_site(&fed, "site-1");
    assert!(signalled >= 5, "cell, nodes, ingress, fed-dns and instances of site-1: {signalled}");
    let status = wait_for(Duration::from_secs(60), "site-1 declared down by the observers", || {
        let s = fedctl_json(&dir, &["dr", "status"]);
        s["down_sites"].as_array().filter(|d| !d.is_empty()).map(|_| s.clone())
    });
    let detected = killed.elapsed();
    let down = &status["down_sites"][0];
    assert_eq!(down["site"], "site-1", "{status}");
    assert_eq!(down["actor"], "system", "no human declared it");
    let observers: Vec<&str> = down["observers"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(observers.iter().any(|o| o.ends_with("(federator)")), "{observers:?}");
    assert!(observers.iter().any(|o| o.ends_with("(dns)")), "{observers:?}");
    assert!(observers.iter().any(|o| o.ends_with("(site-2)")), "site-2's fed-dns saw it too: {observers:?}");
    assert!(
        !observers.iter().any(|o| o.ends_with("(site-1)")),
        "the dead site's own observer is silent: {observers:?}"
    );
    assert!(detected >= Duration::from_secs(10), "not before the 10 s detection window: {detected:?}");
    eprintln!("site-1 declared down {} ms after it died", detected.as_millis());

    for name in ["crm-web.fed.local.", "mobile-app.fed.local."] {
        wait_for(Duration::from_secs(60), &format!("{name} to answer from a survivor"), || {
            let a = dig_a(&dns, name);
            (a.len() == 1 && a[0] != "127.0.1.1").then_some(())
        });
    }
    let repointed = Instant::now();
    // The surviving sites' fed-dns answer the same; the dead site's answers nothing.
    for name in ["crm-web.fed.local.", "mobile-app.fed.local."] {
        wait_for(Duration::from_secs(10), &format!("site-2's fed-dns to repoint {name}"), || {
            (dig_a(&dns_2, name) == dig_a(&dns, name)).then_some(())
        });
    }
    let (ip, port) = dns_1.rsplit_once(':').unwrap();
    let dead = std::process::Command::new("dig")
        .args([&format!("@{ip}"), "-p", port, "crm-web.fed.local.", "A", "+short", "+time=1", "+tries=1"])
        .output()
        .expect("dig runs");
    assert!(!dead.status.success(), "site-1's fed-dns died with it: {dead:?}");
    eprintln!("DNS repointed {} ms after site-1 died", killed.elapsed().as_millis());
    // Clients keep going for two TTLs (5 s) and more after DNS moved, then stop.
    std::thread::sleep(Duration::from_secs(12));
    stop.store(true, Ordering::Relaxed);
    let loads: Vec<LoadReport> = clients.into_iter().map(|c| c.join().expect("a client loop ends")).collect();
    let sent: Vec<&Sent> = loads.iter().flat_map(|l| &l.sent).collect();
    // One TTL after DNS moved (plus a second for a lookup in flight), no client sends anything
    // to the dead site, and everything sent is served by a survivor.
    let settled = repointed + Duration::from_secs(5 + 1);
    let late_to_dead: Vec<&&Sent> = sent.iter().filter(|s| s.at > settled && s.addr == "127.0.1.1").collect();
    assert!(late_to_dead.is_empty(), "requests to the dead site after the TTL: {late_to_dead:?}");
    let late: Vec<&&Sent> = sent.iter().filter(|s| s.at > settled).collect();
    assert!(late.len() >= 100, "the clients kept sending: {}", late.len());
    assert!(
        late.iter().all(|s| s.answered_by.as_deref().is_some_and(|site| site != "site-1")),
        "served by survivors: {:?}",
        late.iter().find(|s| s.answered_by.is_none())
    );
    let before: usize = sent.iter().filter(|s| s.at < killed && s.answered_by.as_deref() == Some("site-1")).count();
    let to_dead = sent.iter().filter(|s| s.at >= killed && s.addr == "127.0.1.1").count();
    eprintln!(
        "{} requests: {before} served by site-1 before it died, {to_dead} sent to it after (failed, within detection + TTL), {} after the TTL all served by survivors",
        sent.len(),
        late.len()
    );
    assert!(before > 0, "site-1 served before it died");
    let records = audit_actions(&dir);
    let declared = records.iter().find(|r| r["action"] == "site.declared-down").expect("audited");
    assert_eq!(declared["actor"], "system");
    assert!(declared["detail_json"].as_str().unwrap().contains("refused"), "the evidence is kept: {declared}");
    let failovers = records.iter().filter(|r| r["action"] == "failover.complete").count();
    assert_eq!(failovers, 2, "each group failed over once");
}

#[test]
fn cutting_only_the_federator_from_a_site_that_still_serves_declares_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("fed");
    let fed = Federation::up(&dir, &[]);
    let dns = fed.dns();
    // The federator's path to site-1 is cut (its probe now goes nowhere); the DNS server, in
    // another failure domain, still reaches site-1, which still serves.
    let config_path = dir.join("federator.toml");
    let mut config: toml::Table = toml::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    let dead_end = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    config["dr"]["probes"].as_table_mut().unwrap().insert("site-1".into(), dead_end.to_string().into());
    std::fs::write(&config_path, toml::to_string(&config).unwrap()).unwrap();
    let out = fedctl(&dir, &["restart", "federator", "--dir", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    // Three detection windows later: nothing declared, nothing moved.
    let cut = Instant::now();
    while cut.elapsed() < Duration::from_secs(30) {
        if let Some(s) = fedctl_json_quiet(&dir) {
            assert!(s["down_sites"].as_array().is_none_or(|d| d.is_empty()), "declared on one domain's view: {s}");
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    assert_eq!(dig_a(&dns, "crm-web.fed.local."), ["127.0.1.1"], "still served from site-1");
    let records = audit_actions(&dir);
    assert!(records.iter().all(|r| r["action"] != "site.declared-down" && r["action"] != "failover.start"));
    // The federator did see it as unreachable (so nothing was declared for want of looking).
    let metrics = fed.process("federator")["listen"]["metrics"].as_str().unwrap().to_string();
    let body = switchyard_chaos_tests::http_get(&metrics, "/metrics").expect("metrics").1;
    let unhealthy = body
        .lines()
        .filter(|l| l.starts_with("federator_probes_total") && l.contains("site=\"site-1\"") && l.contains("unhealthy"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>();
    assert!(unhealthy >= 20.0, "the federator probed site-1 and found it cut: {unhealthy}");
}

/// `fedctl dr status -o json` while the federator may be restarting (None when unreachable).
fn fedctl_json_quiet(dir: &std::path::Path) -> Option<Value> {
    let out = fedctl(dir, &["dr", "status", "-o", "json"]);
    out.status.success().then(|| serde_json::from_slice(&out.stdout).ok()).flatten()
}

#[test]
fn two_of_three_sites_dying_at_once_brake_automation_until_released() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("fed");
    let fed = Federation::up(&dir, &[]);
    kill_site(&fed, "site-1");
    kill_site(&fed, "site-2");
    let braked = wait_for(Duration::from_secs(60), "the brake", || {
        let s = fedctl_json(&dir, &["dr", "status"]);
        (!s["brake"].as_str().unwrap_or_default().is_empty()).then_some(s)
    });
    assert!(braked["brake"].as_str().unwrap().contains("2 of 3 sites declared down"), "{braked}");
    assert_eq!(braked["brake_by"], "system");
    // Held: nothing fails over while braked.
    std::thread::sleep(Duration::from_secs(5));
    let records = audit_actions(&dir);
    assert!(records.iter().all(|r| r["action"] != "failover.start"), "no failover while braked");
    let metrics = fed.process("federator")["listen"]["metrics"].as_str().unwrap().to_string();
    assert_eq!(switchyard_chaos_tests::metric_value(&metrics, "federator_brake_engaged"), Some(1.0));
    let table = String::from_utf8_lossy(&fedctl(&dir, &["dr", "status"]).stdout).to_string();
    assert!(table.contains("BRAKED by system"), "{table}");
    // Only a human releases it; with two of three sites still down, it trips again at once.
    let dana = switchyard_chaos_tests::client_config_as(&dir, "dr-admin", "dana");
    let out = fedctl(&dir, &["--config", dana.to_str().unwrap(), "brake", "release", "--reason", "reviewed"]);
    assert!(out.status.success(), "{out:?}");
    wait_for(Duration::from_secs(30), "the brake to trip again", || {
        let actions: Vec<String> =
            audit_actions(&dir).iter().filter_map(|r| r["action"].as_str().map(String::from)).collect();
        let released = actions.iter().position(|a| a == "brake.released")?;
        actions[released..].iter().any(|a| a == "brake.engaged").then_some(())
    });
    assert!(audit_actions(&dir).iter().all(|r| r["action"] != "failover.start"));
}

#[test]
fn a_flapping_site_fails_over_once_and_then_holds() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("fed");
    let mut fed = Federation::up(&dir, &[]);
    let dns = fed.dns();
    // site-1's ingress blinks for less than the detection window: nothing happens.
    for _ in 0..2 {
        let pid = fed.process("haproxy-site-1")["pid"].as_u64().unwrap().to_string();
        let _ = std::process::Command::new("kill").args(["-9", &pid]).status();
        std::thread::sleep(Duration::from_secs(4));
        let out = fedctl(&dir, &["restart", "haproxy-site-1", "--dir", dir.to_str().unwrap()]);
        assert!(out.status.success(), "{out:?}");
        fed.reload();
        std::thread::sleep(Duration::from_secs(4));
    }
    assert!(audit_actions(&dir).iter().all(|r| r["action"] != "site.declared-down"), "short blinks declare nothing");
    // Then it stays away past the window: one failover per group.
    let pid = fed.process("haproxy-site-1")["pid"].as_u64().unwrap().to_string();
    let _ = std::process::Command::new("kill").args(["-9", &pid]).status();
    let deadline = Instant::now() + Duration::from_secs(60);
    while audit_actions(&dir).iter().filter(|r| r["action"] == "failover.complete").count() != 2 {
        if Instant::now() > deadline {
            // What the federation was doing, for whoever reads the failure.
            let status = fedctl(&dir, &["dr", "status"]);
            let ops = fedctl(&dir, &["switchover", "status"]);
            let actions: Vec<String> =
                audit_actions(&dir).iter().map(|r| format!("{} {}", r["action"], r["subject"])).collect();
            panic!(
                "the groups did not fail over within 60 s\ndr status:\n{}\nswitchover status:\n{}\naudit: {actions:?}",
                String::from_utf8_lossy(&status.stdout),
                String::from_utf8_lossy(&ops.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // It comes back and goes away again: the groups stay where they are, fenced off site-1.
    for _ in 0..2 {
        let out = fedctl(&dir, &["restart", "haproxy-site-1", "--dir", dir.to_str().unwrap()]);
        assert!(out.status.success(), "{out:?}");
        fed.reload();
        std::thread::sleep(Duration::from_secs(6));
        let pid = fed.process("haproxy-site-1")["pid"].as_u64().unwrap().to_string();
        let _ = std::process::Command::new("kill").args(["-9", &pid]).status();
        std::thread::sleep(Duration::from_secs(6));
    }
    let records = audit_actions(&dir);
    assert_eq!(
        records.iter().filter(|r| r["action"] == "failover.start").count(),
        2,
        "one failover per group, then held"
    );
    assert_eq!(records.iter().filter(|r| r["action"] == "site.declared-down").count(), 1);
    // The dead ingress failed every group there at once: decided as the site, not group by group
    // (which trips the brake's correlated-failure rule and fails nothing over).
    assert!(records.iter().all(|r| r["action"] != "group.declared-down"), "groups declared down one by one");
    assert_ne!(dig_a(&dns, "crm-web.fed.local."), ["127.0.1.1"]);
}
