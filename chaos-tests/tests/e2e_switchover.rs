//! The foundation's acceptance path with the real binaries on loopback: `fedctl up`, DNS with
//! `dig`, refused switchovers that change nothing, a make-before-break switchover with
//! `--wait`, the audit trail, a federator restart, and `fedctl down` leaving nothing behind.

use std::time::Duration;

use serde_json::Value;
use switchyard_chaos_tests::{
    Federation, dig_a, dig_raw, fedctl, fedctl_json, fedctl_ok, http_get, http_get_host, http_get_json, is_alive,
    task_processes, wait_for,
};

const ZONE: &str = "fed.local.";

fn instances_by_site(dir: &std::path::Path, group: &str) -> std::collections::BTreeMap<String, Vec<(String, String)>> {
    let mut by_site = std::collections::BTreeMap::<String, Vec<(String, String)>>::new();
    for t in task_processes(dir) {
        if t.env.get("SWITCHYARD_GROUP").map(String::as_str) == Some(group) {
            let site = t.env.get("SWITCHYARD_SITE").cloned().unwrap_or_default();
            by_site.entry(site).or_default().push((t.env["HOST"].clone(), t.env["PORT"].clone()));
        }
    }
    by_site
}

fn audit(dir: &std::path::Path) -> Vec<Value> {
    fedctl_json(dir, &["audit", "list"]).as_array().expect("array").clone()
}

fn refused(dir: &std::path::Path, args: &[&str], expect: &str) {
    let out = fedctl(dir, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?} should be refused with exit 2; stderr: {stderr}");
    assert!(stderr.contains(expect), "{args:?}: expected {expect:?} in {stderr:?}");
}

#[test]
fn switchover_end_to_end_with_real_processes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("fed");
    let mut fed = Federation::up(&dir, &[]);
    let dns = fed.dns();
    let name = format!("crm-web.{ZONE}");

    // Resolves to site-1's ingress, authoritatively, with the group's TTL.
    assert_eq!(dig_a(&dns, &name), ["127.0.1.1"]);
    let raw = dig_raw(&dns, &name, "A");
    assert!(raw.contains(" aa"), "authoritative answer expected:\n{raw}");
    assert!(raw.contains("\t5\tIN\tA\t127.0.1.1") || raw.contains(" 5 IN A 127.0.1.1"), "TTL 5 expected:\n{raw}");
    // Every daemon serves Prometheus metrics.
    for (process, metric) in [
        ("federator", "federator_raft_term"),
        ("cell-site-1", "cell_nodes_healthy"),
        ("node-site-1-node-1", "node_tasks"),
        ("dns-1", "dns_queries_total"),
    ] {
        let addr = fed.process(process)["listen"]["metrics"].as_str().expect("metrics address").to_string();
        let text = wait_for(Duration::from_secs(10), &format!("{metric} on {process}"), || {
            http_get(&addr, "/metrics").filter(|(code, body)| *code == 200 && body.contains(metric)).map(|(_, b)| b)
        });
        assert!(text.contains("# TYPE"), "{process}: not Prometheus text:\n{text}");
    }
    // The whole path: the DNS answer is site-1's ingress proxy, which reaches site-1's instances.
    let host = name.trim_end_matches('.');
    let ingress1 = fed.ingress("site-1");
    assert!(ingress1.starts_with("127.0.1.1:"), "{ingress1}");
    let (code, body) = http_get_host(&ingress1, host).expect("site-1 ingress answers");
    assert_eq!(code, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["site"], "site-1");
    let before = instances_by_site(&dir, "crm-web");
    assert_eq!(before.get("site-1").map(Vec::len), Some(2), "2 instances on site-1: {before:?}");
    assert!(!before.contains_key("site-2"));

    // Refusals: clear errors, exit 2, and nothing changes.
    let audit_before = audit(&dir);
    refused(&dir, &["switchover", "start", "crm-web", "--to", "site-9"], "unknown site \"site-9\"");
    refused(&dir, &["switchover", "start", "no-such-group", "--to", "site-2"], "unknown group \"no-such-group\"");
    refused(&dir, &["switchover", "start", "crm-web", "--to", "site-1"], "already active");
    // site-3 loses every host: its cell reports no capacity, so a move there is refused.
    for node in ["node-site-3-node-1", "node-site-3-node-2"] {
        let pid = fed.process(node)["pid"].as_u64().unwrap() as i32;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    }
    wait_for(Duration::from_secs(30), "site-3 to report no healthy nodes", || {
        let sites = fedctl_json(&dir, &["sites"]);
        let s3 = sites.as_array()?.iter().find(|s| s["name"] == "site-3")?.clone();
        (s3["nodes_healthy"].as_u64().unwrap_or(0) == 0 && s3["cell_connected"] == true).then_some(())
    });
    refused(&dir, &["switchover", "start", "crm-web", "--to", "site-3"], "lacks capacity");
    assert_eq!(audit(&dir), audit_before, "refused requests must not touch the audit chain");
    assert_eq!(dig_a(&dns, &name), ["127.0.1.1"]);
    let ops = fedctl_json(&dir, &["switchover", "status"]);
    assert_eq!(ops.as_array().map(Vec::len), Some(0), "no operation was created: {ops}");

    // Plan first: a no-go to site-3 (exit status 1, the reason printed), a go to site-2.
    let no_go = fedctl(&dir, &["switchover", "plan", "--group", "crm-web", "--to", "site-3"]);
    let printed = String::from_utf8_lossy(&no_go.stdout);
    assert!(!no_go.status.success() && printed.contains("NO-GO") && printed.contains("lacks capacity"), "{printed}");
    let plan = fedctl_json(&dir, &["switchover", "plan", "--group", "crm-web", "--to", "site-2"]);
    assert_eq!(plan["go"], true, "{plan}");
    let planned: Vec<String> = plan["groups"][0]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["phase"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(planned, ["ScalingUp", "Verifying", "Draining", "ScalingDown"]);
    let table = fedctl_ok(&dir, &["switchover", "plan", "--site", "site-1", "--to", "site-2"]);
    assert!(table.contains("crm-web") && table.contains("mobile-app"), "an evacuation plans every group:\n{table}");
    assert_eq!(ops_count(&dir), 0, "planning starts nothing");
    let plan_id = plan["id"].as_str().unwrap().to_string();
    refused(
        &dir,
        &["switchover", "start", "crm-web", "--to", "site-2", "--plan", "0123456789abcdef"],
        "changed since plan",
    );

    // The switchover, started on the reviewed plan and followed to the end.
    let out = fedctl_ok(
        &dir,
        &[
            "switchover",
            "start",
            "crm-web",
            "--to",
            "site-2",
            "--plan",
            &plan_id,
            "--reason",
            "CHG-1 power work",
            "--wait",
            "--wait-timeout-s",
            "120",
        ],
    );
    assert!(out.contains("succeeded"), "{out}");
    assert_eq!(dig_a(&dns, &name), ["127.0.2.1"], "DNS follows the switchover");
    let groups = fedctl_json(&dir, &["groups"]);
    let crm = groups.as_array().unwrap().iter().find(|g| g["name"] == "crm-web").unwrap().clone();
    assert_eq!(crm["active_sites"], serde_json::json!(["site-2"]));
    assert_eq!(crm["operation"], "");
    // The OS agrees: two instances on site-2's nodes answering as site-2, none left on site-1.
    let after = wait_for(Duration::from_secs(15), "site-1 instances to exit", || {
        let m = instances_by_site(&dir, "crm-web");
        (!m.contains_key("site-1")).then_some(m)
    });
    let site2 = after.get("site-2").cloned().unwrap_or_default();
    assert_eq!(site2.len(), 2, "{after:?}");
    for (host, port) in &site2 {
        assert!(host.starts_with("127.0.2."), "instance bound to a site-2 node address: {host}");
        let answer = http_get_json(host, port).expect("instance answers HTTP");
        assert_eq!(answer["site"], "site-2", "{answer}");
    }
    // Following DNS to site-2's ingress reaches site-2's instances; site-1 has none left.
    let ingress2 = format!("127.0.2.1:{}", ingress1.rsplit_once(':').unwrap().1);
    assert_eq!(ingress2, fed.ingress("site-2"));
    let (code, body) = wait_for(Duration::from_secs(10), "site-2's ingress to serve crm-web", || {
        http_get_host(&ingress2, host).filter(|(c, _)| *c == 200)
    });
    assert_eq!((code, serde_json::from_str::<Value>(&body).unwrap()["site"].clone()), (200, "site-2".into()));
    let (code, _) = http_get_host(&ingress1, host).expect("site-1 ingress answers");
    assert_eq!(code, 503, "site-1 has no crm-web instance behind its ingress any more");
    // The other group did not move.
    assert_eq!(dig_a(&dns, &format!("mobile-app.{ZONE}")), ["127.0.1.1"]);

    // Audit: the start by the operator's certificate identity, then every phase, same reason.
    let records = audit(&dir);
    let switch: Vec<&Value> = records
        .iter()
        .filter(|r| r["subject"] == "crm-web" && r["action"].as_str().unwrap().starts_with("switchover."))
        .collect();
    let actions: Vec<&str> = switch.iter().map(|r| r["action"].as_str().unwrap()).collect();
    assert_eq!(
        actions,
        ["switchover.start", "switchover.phase", "switchover.traffic", "switchover.phase", "switchover.complete"]
    );
    assert!(switch[0]["actor"].as_str().unwrap().starts_with("operator:"), "{}", switch[0]);
    assert!(switch[1..].iter().all(|r| r["actor"] == "system"));
    assert!(switch.iter().all(|r| r["reason"] == "CHG-1 power work"));
    let start: Value = serde_json::from_str(switch[0]["detail_json"].as_str().unwrap()).unwrap();
    assert_eq!(start["plan"], plan_id.as_str(), "the start records the plan it executed");
    let phases: Vec<String> = switch
        .iter()
        .map(|r| {
            serde_json::from_str::<Value>(r["detail_json"].as_str().unwrap()).unwrap()["phase"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(phases, ["ScalingUp", "Verifying", "Draining", "ScalingDown", "Done"]);
    // Plan equals execution: the phases the operation recorded are the steps the plan listed.
    assert_eq!(phases[..phases.len() - 1], planned[..], "the executed step log is the plan");
    for pair in records.windows(2) {
        assert_eq!(pair[1]["prev_hash"], pair[0]["hash"], "audit records are hash-chained");
    }

    // Restart the federator process: state survives and the demo keeps working.
    let status_before = fedctl_json(&dir, &["status"]);
    let old_pid = fed.process("federator")["pid"].as_u64().unwrap() as u32;
    fedctl_ok(&dir, &["restart", "federator", "--dir", dir.to_str().unwrap()]);
    fed.reload();
    assert!(!is_alive(old_pid), "old federator stopped");
    let status_after = wait_for(Duration::from_secs(30), "the restarted federator to lead", || {
        let out = fedctl(&dir, &["status", "-o", "json"]);
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["leader_id"] == 1).then_some(v)
    });
    assert_eq!(status_after["audit_records"], status_before["audit_records"]);
    assert_eq!(status_after["audit_head_hash"], status_before["audit_head_hash"]);
    assert_eq!(dig_a(&dns, &name), ["127.0.2.1"]);
    wait_for(Duration::from_secs(30), "cells to reattach after the restart", || {
        let sites = fedctl_json(&dir, &["sites"]);
        sites.as_array()?.iter().filter(|s| s["name"] != "site-3").all(|s| s["cell_connected"] == true).then_some(())
    });
    let out =
        fedctl_ok(&dir, &["switchover", "start", "crm-web", "--to", "site-1", "--reason", "CHG-1 done", "--wait"]);
    assert!(out.contains("succeeded"), "{out}");
    assert_eq!(dig_a(&dns, &name), ["127.0.1.1"]);

    // Down leaves no process behind: daemons and app instances.
    let pids = fed.pids();
    let down = fed.down();
    assert!(down.status.success(), "{}", String::from_utf8_lossy(&down.stderr));
    let alive: Vec<u32> = pids.into_iter().filter(|p| is_alive(*p)).collect();
    assert!(alive.is_empty(), "still running after down: {alive:?}");
    let tasks = task_processes(&dir);
    assert!(tasks.is_empty(), "app instances left behind: {tasks:?}");
}

fn ops_count(dir: &std::path::Path) -> usize {
    fedctl_json(dir, &["switchover", "status"]).as_array().map_or(0, Vec::len)
}
