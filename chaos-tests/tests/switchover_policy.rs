//! The rules planned moves follow, with the real binaries, as `runbooks/planned-switchover.md`
//! runs them: two-person approval (the initiator's own approval refused), change windows
//! (a start outside them refused, naming the windows and the time), and drills (scheduled,
//! run, and listed with their outcome and recovery time).

use std::time::Duration;

use serde_json::Value;
use switchyard_chaos_tests::{Federation, client_config_as, dig_a, fedctl, fedctl_json, fedctl_ok, wait_for};

fn as_user(config: &std::path::Path, args: &[&str]) -> Vec<String> {
    let mut all = vec!["--config".to_string(), config.display().to_string()];
    all.extend(args.iter().map(|a| a.to_string()));
    all
}

fn run(dir: &std::path::Path, args: &[String]) -> std::process::Output {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    fedctl(dir, &refs)
}

fn wait_outcome(dir: &std::path::Path, id: &str) -> Value {
    wait_for(Duration::from_secs(120), &format!("{id} to finish"), || {
        let op = fedctl_json(dir, &["switchover", "status", id]);
        (op["outcome"] != "running").then_some(op)
    })
}

#[test]
fn approval_windows_and_drills_with_real_processes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("fed");
    let fed = Federation::up(&dir, &[]);
    let dns = fed.dns();
    let alice = client_config_as(&dir, "operator", "alice");
    let bob = client_config_as(&dir, "operator", "bob");
    let dana = client_config_as(&dir, "dr-admin", "dana");
    let admin = |args: &[&str]| {
        let out = run(&dir, &as_user(&dana, args));
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).to_string()
    };

    // Tier 1 (crm-web) needs two people.
    let out = admin(&["switchover", "approval-policy", "--tiers", "1", "--reason", "CAB rule 7"]);
    assert!(out.contains("tier 1"), "{out}");
    let started = run(
        &dir,
        &as_user(&alice, &["switchover", "start", "crm-web", "--to", "site-2", "--reason", "CHG-5", "-o", "json"]),
    );
    assert!(started.status.success(), "{started:?}");
    let op: Value = serde_json::from_slice(&started.stdout).expect("json");
    let id = op["id"].as_str().expect("id").to_string();
    assert_eq!(op["phase"], "AwaitingApproval", "{op}");
    std::thread::sleep(Duration::from_secs(3));
    let op = fedctl_json(&dir, &["switchover", "status", &id]);
    assert_eq!(op["phase"], "AwaitingApproval", "nothing moves without approval: {op}");
    assert_eq!(dig_a(&dns, "crm-web.fed.local."), ["127.0.1.1"]);
    // Alice may not approve her own switchover; Bob may.
    let own = run(&dir, &as_user(&alice, &["switchover", "approve", &id, "--reason", "looks fine"]));
    let stderr = String::from_utf8_lossy(&own.stderr);
    assert_eq!(own.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("cannot also approve it; a second person must"), "{stderr}");
    let approved = run(&dir, &as_user(&bob, &["switchover", "approve", &id, "--reason", "reviewed"]));
    assert!(approved.status.success(), "{approved:?}");
    let done = wait_outcome(&dir, &id);
    assert_eq!(done["outcome"], "succeeded", "{done}");
    assert_eq!(dig_a(&dns, "crm-web.fed.local."), ["127.0.2.1"]);
    admin(&["switchover", "approval-policy", "--reason", "CAB rule lifted"]);

    // A TTL over the budget: refused, saying to lower it first (the demo groups' TTL is 5 s).
    admin(&["switchover", "ttl-budget", "--max-ttl-s", "2", "--reason", "convergence budget"]);
    let refused = fedctl(&dir, &["switchover", "start", "mobile-app", "--to", "site-3", "--reason", "CHG-6"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("above the 2s budget") && stderr.contains("lower its ttl_s first"), "{stderr}");
    admin(&["switchover", "ttl-budget", "--max-ttl-s", "0", "--reason", "budget lifted"]);

    // A frozen group is refused with the freeze's reason, and nothing is created.
    admin(&["freeze", "set", "group:mobile-app", "--reason", "audit week"]);
    let before = fedctl_json(&dir, &["switchover", "status"]).as_array().map_or(0, Vec::len);
    let refused = fedctl(&dir, &["switchover", "start", "mobile-app", "--to", "site-3", "--reason", "CHG-6"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("is frozen") && stderr.contains("audit week"), "{stderr}");
    assert_eq!(fedctl_json(&dir, &["switchover", "status"]).as_array().map_or(0, Vec::len), before);
    admin(&["freeze", "clear", "group:mobile-app", "--reason", "audit done"]);

    // A change window that is not now: planned moves are refused, saying when they may start.
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    let other_day = days[((now_ms / 86_400_000 + 3 + 3) % 7) as usize];
    let window = format!("{other_day} 01:00-02:00");
    let out = admin(&["switchover", "windows", "--window", &window, "--reason", "CAB calendar"]);
    assert!(out.contains(&window), "{out}");
    let refused = fedctl(&dir, &["switchover", "start", "mobile-app", "--to", "site-3", "--reason", "CHG-6"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("only inside a change window") && stderr.contains(&window), "{stderr}");
    let plan = fedctl(&dir, &["switchover", "plan", "--group", "mobile-app", "--to", "site-3"]);
    assert!(!plan.status.success() && String::from_utf8_lossy(&plan.stdout).contains("change window"), "{plan:?}");
    admin(&["switchover", "windows", "--reason", "window lifted"]);

    // A drill of mobile-app a few seconds from now: it runs and is listed with its RTO.
    let out = fedctl_ok(
        &dir,
        &["drill", "schedule", "--group", "mobile-app", "--to", "site-3", "--in", "2s", "--reason", "Q4 drill"],
    );
    let drill = out.split_whitespace().next().expect("drill id").to_string();
    assert!(drill.starts_with("drill-"), "{out}");
    let listed = wait_for(Duration::from_secs(120), "the drill to finish", || {
        let drills = fedctl_json(&dir, &["drill", "list"]);
        drills
            .as_array()
            .and_then(|a| a.iter().find(|d| d["id"] == drill.as_str()).cloned())
            .filter(|d| d["status"] != "scheduled" && d["status"] != "running")
    });
    assert_eq!(listed["status"], "succeeded", "{listed}");
    assert!(listed["rto_ms"].as_u64().unwrap_or(0) >= 2_000, "RTO at least the verify window: {listed}");
    let table = fedctl_ok(&dir, &["drill", "list"]);
    let line = table.lines().find(|l| l.contains("mobile-app")).expect("a line for mobile-app");
    assert!(line.contains("succeeded") && line.contains(&drill), "{table}");
    let crm = table.lines().find(|l| l.contains("crm-web")).expect("every group is listed");
    assert!(crm.contains("never"), "crm-web was never drilled: {table}");
    assert_eq!(dig_a(&dns, "mobile-app.fed.local."), ["127.0.3.1"]);
    let audit = fedctl_json(&dir, &["audit", "list"]);
    let actions: Vec<&str> = audit.as_array().unwrap().iter().filter_map(|r| r["action"].as_str()).collect();
    for a in ["policy.approval", "operation.approved", "policy.change-windows", "drill.schedule", "drill.start"] {
        assert!(actions.contains(&a), "{a} missing from the audit history");
    }
    // A reader that stops early closes the pipe: fedctl stops quietly.
    let mut child = std::process::Command::new(switchyard_chaos_tests::bin_dir().join("fedctl"))
        .args(["audit", "list"])
        .env("FEDCTL_CONFIG", dir.join("fedctl.toml"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("fedctl runs");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("fedctl ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.status.success(), "{:?} {stderr}", out.status);
}
