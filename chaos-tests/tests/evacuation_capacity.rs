//! Two evacuations into one site never over-commit it, with the real binaries: site-2 has
//! three nodes of room for five instances each (15). Evacuating site-1's ten groups reserves
//! ten; evacuating site-3's six groups next is refused whole, changing nothing; five of them
//! fit exactly and run alongside the first. At no moment are more than 15 instances asked of,
//! or running on, site-2.

use std::time::Duration;

use serde_json::Value;
use switchyard_chaos_tests::{Federation, dig_a, fedctl, fedctl_json, task_processes, wait_for};

/// Ten groups on site-1, six on site-3: one instance of 400 millicores each (five to a node).
fn groups_file() -> String {
    let mut text = String::new();
    for (prefix, n, home) in [("a", 10, "site-1"), ("b", 6, "site-3")] {
        for i in 0..n {
            text.push_str(&format!(
                "[[groups]]\nname = \"{prefix}{i}\"\nttl_s = 1\nhome_site = \"{home}\"\n\
                 [[groups.apps]]\nname = \"web\"\nresources = {{ cpu_millis = 400, mem_mib = 64 }}\n\n"
            ));
        }
    }
    text
}

/// Instances the committed placements ask site-2 to run, and task processes running there.
fn on_site_2(dir: &std::path::Path) -> (u64, usize) {
    let groups = fedctl_json(dir, &["groups"]);
    let asked = groups
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|g| g["placement"].as_array())
        .flatten()
        .filter(|p| p["site"] == "site-2")
        .filter_map(|p| p["instances"].as_object())
        .flat_map(|apps| apps.values().filter_map(Value::as_u64))
        .sum();
    let running = task_processes(dir)
        .into_iter()
        .filter(|t| t.env.get("SWITCHYARD_SITE").map(String::as_str) == Some("site-2"))
        .count();
    (asked, running)
}

fn start(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    let mut all = vec!["switchover", "start"];
    all.extend(args);
    all.extend(["--to", "site-2", "--concurrency", "3", "--reason", "CHG-12 two sites' power work"]);
    fedctl(dir, &all)
}

#[test]
fn two_evacuations_into_one_site_never_over_commit_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("fed");
    let file = tmp.path().join("groups.toml");
    std::fs::write(&file, groups_file()).unwrap();
    let fed = Federation::up(&dir, &["--nodes-per-site", "3", "--groups-file", file.to_str().unwrap()]);
    let dns = fed.dns();

    let first = start(&dir, &["--site", "site-1", "-o", "json"]);
    assert!(first.status.success(), "{first:?}");
    let first: Value = serde_json::from_slice(&first.stdout).unwrap();
    let first = first["id"].as_str().unwrap().to_string();

    // Six more do not fit next to the ten reserved: refused whole, no evacuation created (the
    // first one keeps starting its switchovers meanwhile, so only evacuations are counted).
    let evacuations = |dir: &std::path::Path| {
        fedctl_json(dir, &["switchover", "status"])
            .as_array()
            .map_or(0, |ops| ops.iter().filter(|o| o["kind"] == "evacuation").count())
    };
    let before = evacuations(&dir);
    let refused = start(&dir, &["--site", "site-3"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("cannot move to site-2"), "{stderr}");
    assert!(stderr.contains("lacks capacity") || stderr.contains("no node with room"), "{stderr}");
    assert_eq!(evacuations(&dir), before);

    // Five fit exactly.
    let second = start(&dir, &["--groups", "b0,b1,b2,b3,b4", "-o", "json"]);
    assert!(second.status.success(), "{second:?}");
    let second: Value = serde_json::from_slice(&second.stdout).unwrap();
    let second = second["id"].as_str().unwrap().to_string();

    let mut most = (0, 0);
    wait_for(Duration::from_secs(240), "both evacuations to finish", || {
        let (asked, running) = on_site_2(&dir);
        assert!(asked <= 15, "site-2 asked to run {asked} instances with room for 15");
        assert!(running <= 15, "{running} instances running on site-2 with room for 15");
        most = (most.0.max(asked), most.1.max(running));
        let outcomes: Vec<Value> = [&first, &second]
            .iter()
            .map(|id| fedctl_json(&dir, &["switchover", "status", id])["outcome"].clone())
            .collect();
        outcomes.iter().all(|o| o != "running").then_some(())
    });
    for id in [&first, &second] {
        let s = fedctl_json(&dir, &["switchover", "status", id]);
        assert_eq!(s["outcome"], "succeeded", "{s}");
    }
    assert_eq!(most.0, 15, "site-2 ends full: {most:?}");
    for g in ["a0", "a9", "b0", "b4"] {
        assert_eq!(dig_a(&dns, &format!("{g}.fed.local.")), ["127.0.2.1"], "{g}");
    }
    assert_eq!(dig_a(&dns, "b5.fed.local."), ["127.0.3.1"], "b5 stays where it was");
}
