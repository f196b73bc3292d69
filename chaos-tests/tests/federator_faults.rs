//! Faults of the federator replicas themselves, on a three-replica cluster on loopback
//! (`fedctl up --federators 3`), with the real binaries:
//!
//! - the leader hangs (SIGSTOP) past the election timeout while switchovers run: it is deposed,
//!   the others keep taking writes, and when it returns it follows the new leader and changes
//!   nothing;
//! - every replica is SIGKILLed and restarted in turn under a stream of writes: every write that
//!   `fedctl` acknowledged is in every replica's audit history, and the chain verifies;
//! - every replica is SIGKILLed at once: sites keep serving, and nothing flaps when they return.
//!
//! Every wait is bounded, and every `fedctl` call that could meet a hung replica is run with a
//! deadline (`fedctl_within`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;
use switchyard_chaos_tests::{
    Federation, client_config_as, dig_a, fedctl, fedctl_json, fedctl_within, metric_value, single_endpoint_config,
    soa_serial, task_processes, verify_audit_chain, wait_for,
};

const REPLICAS: [u64; 3] = [1, 2, 3];
/// What `federator` uses when its configuration has no `[raft]` section (`RaftTuning::default`).
const DEFAULT_ELECTION_TIMEOUT_MAX_MS: u64 = 2_000;

fn signal(pid: u32, sig: Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig)
        .unwrap_or_else(|e| panic!("sending {sig} to pid {pid}: {e}"));
}

fn federator_pid(fed: &Federation, id: u64) -> u32 {
    fed.process(&format!("federator-{id}"))["pid"].as_u64().expect("pid") as u32
}

/// One single-endpoint fedctl configuration per replica (node id -> path), built on `base`.
fn replica_configs(fed: &Federation, base: &Path) -> BTreeMap<u64, PathBuf> {
    REPLICAS
        .iter()
        .map(|id| {
            let proc = fed.process(&format!("federator-{id}"));
            let grpc = proc["listen"]["grpc"].as_str().expect("grpc address");
            (*id, single_endpoint_config(base, &format!("https://{grpc}")))
        })
        .collect()
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// `fedctl --config CFG ARGS -o json` within `timeout`; `None` if it failed or did not answer.
fn json_within(dir: &Path, cfg: &Path, args: &[&str], timeout: Duration) -> Option<Value> {
    let mut all = vec!["--config", path_str(cfg)];
    all.extend(args);
    all.extend(["-o", "json"]);
    let out = fedctl_within(dir, &all, timeout)?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// One replica's own `fedctl status`, or `None` if it does not answer within 5 s.
fn replica_status(dir: &Path, cfg: &Path) -> Option<Value> {
    json_within(dir, cfg, &["status"], Duration::from_secs(5))
}

/// `fedctl cluster status` (every replica's view), or `None` if fedctl did not finish in 20 s.
fn cluster_status(dir: &Path) -> Option<Vec<Value>> {
    json_within(dir, &dir.join("fedctl.toml"), &["cluster", "status"], Duration::from_secs(20))
        .and_then(|v| v.as_array().cloned())
}

/// Every replica reachable and naming the same leader: (leader, term of each replica, views).
fn agreed(dir: &Path) -> Option<(u64, Vec<u64>, Vec<Value>)> {
    let views = cluster_status(dir)?;
    let leader = views.first()?["leader_id"].as_u64()?;
    let ok = views.len() == REPLICAS.len()
        && leader != 0
        && views.iter().all(|r| r["reachable"] == true && r["leader_id"].as_u64() == Some(leader));
    ok.then(|| (leader, views.iter().map(|r| r["term"].as_u64().unwrap_or(0)).collect(), views))
}

fn view_of(views: &[Value], id: u64) -> &Value {
    views.iter().find(|r| r["node_id"].as_u64() == Some(id)).unwrap_or_else(|| panic!("no replica {id} in {views:?}"))
}

/// The whole audit history as one replica serves it.
fn audit_from(dir: &Path, cfg: &Path) -> Vec<Value> {
    let v = json_within(dir, cfg, &["audit", "list"], Duration::from_secs(20))
        .unwrap_or_else(|| panic!("audit list through {} failed or timed out", cfg.display()));
    v.as_array().expect("an array of records").clone()
}

/// Checks each replica's audit history: the chain verifies and all replicas hold the same one.
/// Returns the history.
fn audit_agreed_everywhere(dir: &Path, replicas: &BTreeMap<u64, PathBuf>) -> Vec<Value> {
    // Writes and operation steps may still be applying on followers: wait for one head.
    wait_for(Duration::from_secs(30), "every replica to report the same audit head", || {
        let views = cluster_status(dir)?;
        let heads: Vec<&str> = views.iter().filter_map(|r| r["audit_head_hash"].as_str()).collect();
        (heads.len() == REPLICAS.len() && heads.iter().all(|h| *h == heads[0] && !h.is_empty())).then_some(())
    });
    let mut first: Option<(u64, Vec<Value>)> = None;
    for (id, cfg) in replicas {
        let records = audit_from(dir, cfg);
        if let Err(e) = verify_audit_chain(&records) {
            panic!("the audit chain served by federator-{id} does not verify: {e}");
        }
        match &first {
            None => first = Some((*id, records)),
            Some((fid, f)) => assert!(
                *f == records,
                "federator-{id} serves a different audit history ({} records) than federator-{fid} ({} records)",
                records.len(),
                f.len()
            ),
        }
    }
    first.expect("three replicas").1
}

fn operation_steps(audit: &[Value], group: &str) -> Vec<String> {
    audit
        .iter()
        .filter(|r| r["subject"] == group && r["action"].as_str().is_some_and(|a| a.starts_with("switchover.")))
        .filter_map(|r| r["action"].as_str().map(String::from))
        .collect()
}

fn task_pids(dir: &Path) -> Vec<u32> {
    let mut pids: Vec<u32> = task_processes(dir).iter().map(|t| t.pid).collect();
    pids.sort_unstable();
    pids
}

/// `[raft] election_timeout_max_ms` of the replica configuration `fedctl up` wrote.
fn election_timeout_max_ms(dir: &Path) -> u64 {
    let cfg: toml::Table = toml::from_str(&std::fs::read_to_string(dir.join("federator-1.toml")).expect("config"))
        .expect("federator-1.toml is TOML");
    cfg.get("raft")
        .and_then(|r| r.get("election_timeout_max_ms"))
        .and_then(|v| v.as_integer())
        .map_or(DEFAULT_ELECTION_TIMEOUT_MAX_MS, |v| v as u64)
}

/// Samples every cell's applied epoch (its `cell_applied_epoch` gauge) every 250 ms until
/// stopped (at most `limit`); returns the samples per site, in order.
fn sample_epochs(
    cells: Vec<(String, String)>,
    stop: Arc<AtomicBool>,
    limit: Duration,
) -> std::thread::JoinHandle<BTreeMap<String, Vec<u64>>> {
    std::thread::spawn(move || {
        let mut samples: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        let deadline = Instant::now() + limit;
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            for (site, metrics) in &cells {
                if let Some(e) = metric_value(metrics, "cell_applied_epoch") {
                    samples.entry(site.clone()).or_default().push(e as u64);
                }
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        samples
    })
}

fn cell_metrics(fed: &Federation) -> Vec<(String, String)> {
    fed.cluster["sites"]
        .as_array()
        .expect("sites")
        .iter()
        .map(|s| {
            let site = s["name"].as_str().expect("name").to_string();
            let metrics = fed.process(&format!("cell-{site}"))["listen"]["metrics"].as_str().expect("metrics").into();
            (site, metrics)
        })
        .collect()
}

#[test]
fn a_leader_paused_past_the_election_timeout_is_deposed_and_changes_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("fed");
    let fed = Federation::up(&dir, &["--sites", "2", "--federators", "3"]);
    let admin = client_config_as(&dir, "admin", "chaos");
    let replicas = replica_configs(&fed, &dir.join("fedctl.toml"));
    let admin_replicas = replica_configs(&fed, &admin);
    let (old, terms, _) = wait_for(Duration::from_secs(30), "the replicas to agree on a leader", || agreed(&dir));
    let old_term = terms[0];
    let pause = Duration::from_millis((4 * election_timeout_max_ms(&dir)).max(8_000));
    let mut problems: Vec<String> = Vec::new();

    // Several groups move at once; the leader hangs while they are in flight.
    let mut ops = Vec::new();
    for group in ["crm-web", "mobile-app"] {
        let op = fedctl_json(&dir, &["switchover", "start", group, "--to", "site-2", "--reason", "CHG-pause"]);
        ops.push((group, op["id"].as_str().expect("operation id").to_string()));
    }
    let stop_sampling = Arc::new(AtomicBool::new(false));
    let sampler = sample_epochs(cell_metrics(&fed), stop_sampling.clone(), Duration::from_secs(240));
    std::thread::sleep(Duration::from_millis(800));
    for (group, id) in &ops {
        let op = fedctl_json(&dir, &["switchover", "status", id]);
        assert_eq!(
            op["outcome"], "running",
            "the switchover of {group} is still in flight when the leader hangs: {op}"
        );
    }
    let old_pid = federator_pid(&fed, old);
    signal(old_pid, Signal::SIGSTOP);
    let _resume = ContinueOnDrop(old_pid);
    let stopped = Instant::now();
    eprintln!("SIGSTOP federator-{old} (leader, term {old_term}) for {} ms", pause.as_millis());

    // The other two elect a new leader among themselves while the old one is stopped.
    let others: Vec<u64> = REPLICAS.iter().copied().filter(|id| *id != old).collect();
    let (new, new_term) = wait_for(Duration::from_secs(20), "a new leader among the running replicas", || {
        let views: Vec<Value> = others.iter().map(|id| replica_status(&dir, &replicas[id])).collect::<Option<_>>()?;
        let leader = views[0]["leader_id"].as_u64()?;
        let term = views[0]["term"].as_u64()?;
        let agree = views.iter().all(|v| v["leader_id"].as_u64() == Some(leader) && v["term"].as_u64() == Some(term));
        (agree && leader != 0 && leader != old && term > old_term).then_some((leader, term))
    });
    eprintln!("federator-{new} leads term {new_term} {} ms after the SIGSTOP", stopped.elapsed().as_millis());

    // A write is accepted while the old leader is stopped. First as an operator would send it,
    // with fedctl's normal configuration (every replica; it should move past the hung one).
    let reason = "CHG-during-pause";
    let set = ["freeze", "set", "site:site-1", "--reason", reason];
    let mut args = vec!["--config", path_str(&admin)];
    args.extend(set);
    let t = Instant::now();
    match fedctl_within(&dir, &args, Duration::from_secs(10)) {
        Some(out) if out.status.success() => {
            eprintln!("write accepted through fedctl's normal configuration in {} ms", t.elapsed().as_millis())
        }
        other => {
            problems.push(format!(
                "with federator-{old} stopped, `fedctl {}` (every replica configured, federator-1 first) did not \
                 get the write accepted within 10 s: {}",
                args.join(" "),
                match other {
                    None => "it hung and was killed".to_string(),
                    Some(out) => format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()),
                }
            ));
            // Then straight to the new leader, to check that the cluster itself takes it.
            let mut args = vec!["--config", path_str(&admin_replicas[&new])];
            args.extend(set);
            let out = fedctl_within(&dir, &args, Duration::from_secs(10))
                .unwrap_or_else(|| panic!("federator-{new} (leader) did not answer a write within 10 s"));
            assert!(
                out.status.success(),
                "federator-{new} (leader) refused a write while federator-{old} was stopped: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let during = audit_from(&dir, &replicas[&new]);
    let write_index = during
        .iter()
        .find(|r| r["action"] == "freeze.set" && r["reason"] == reason)
        .and_then(|r| r["raft_index"].as_u64())
        .unwrap_or_else(|| panic!("the write made during the pause is not in federator-{new}'s audit history"));
    assert!(is_stopped(old_pid), "federator-{old} is still stopped during the checks");
    if let Some(rest) = pause.checked_sub(stopped.elapsed()) {
        std::thread::sleep(rest);
    }

    // The old leader returns: it follows the new leader in the new term and catches up with
    // everything committed while it was away.
    let committed = replica_status(&dir, &replicas[&new])
        .and_then(|s| s["last_applied_index"].as_u64())
        .unwrap_or_else(|| panic!("federator-{new} (leader) answers its status"));
    assert!(committed >= write_index, "the leader applied the write it committed");
    signal(old_pid, Signal::SIGCONT);
    let resumed = Instant::now();
    eprintln!("SIGCONT federator-{old} after {} ms", stopped.elapsed().as_millis());
    let (leader, terms, views) = wait_for(
        Duration::from_secs(30),
        "every replica, the resumed one included, to name one leader in one term, caught up",
        || {
            let (leader, terms, views) = agreed(&dir)?;
            let caught_up = view_of(&views, old)["last_applied_index"].as_u64()? >= committed;
            (terms.iter().all(|t| *t == terms[0]) && caught_up).then_some((leader, terms, views))
        },
    );
    eprintln!(
        "federator-{old} follows federator-{leader} {} ms after SIGCONT: {views:?}",
        resumed.elapsed().as_millis()
    );
    assert_eq!(leader, new, "the leader elected during the pause still leads after the old one returned: {views:?}");
    assert_eq!(terms[0], new_term, "no further election after the old leader returned: {views:?}");
    let resumed_audit = audit_from(&dir, &replicas[&old]);
    assert!(
        resumed_audit.iter().any(|r| r["reason"] == reason),
        "federator-{old} serves the write made while it was stopped"
    );
    // Writes work through fedctl's normal configuration again.
    let out = fedctl_within(
        &dir,
        &["--config", path_str(&admin), "freeze", "clear", "site:site-1", "--reason", "CHG-after-pause"],
        Duration::from_secs(20),
    )
    .expect("fedctl answers once every replica runs");
    assert!(out.status.success(), "freeze clear after the pause: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("cleared"), "{}", String::from_utf8_lossy(&out.stdout));

    // The switchovers finish, DNS follows, every step recorded once.
    for (group, id) in &ops {
        let done = wait_for(Duration::from_secs(60), &format!("the switchover of {group} to finish"), || {
            let op =
                json_within(&dir, &dir.join("fedctl.toml"), &["switchover", "status", id], Duration::from_secs(20))?;
            (op["phase"] == "Done").then_some(op)
        });
        assert_eq!(done["outcome"], "succeeded", "{done}");
        assert_eq!(dig_a(&fed.dns(), &format!("{group}.fed.local.")), ["127.0.2.1"], "DNS points {group} at site-2");
    }
    stop_sampling.store(true, Ordering::Relaxed);
    let epochs = sampler.join().expect("the sampler");
    let audit = audit_agreed_everywhere(&dir, &replicas);
    for (group, _) in &ops {
        assert_eq!(
            operation_steps(&audit, group),
            ["switchover.start", "switchover.phase", "switchover.traffic", "switchover.phase", "switchover.complete"],
            "every step of {group}'s switchover recorded exactly once across the leader change"
        );
    }
    assert_eq!(audit.iter().filter(|r| r["reason"] == reason).count(), 1, "the write made during the pause, once");

    // Fencing as the cells saw it: no cell ever went back to an older epoch.
    for (site, samples) in &epochs {
        eprintln!("{site}: {} epoch samples, {:?} .. {:?}", samples.len(), samples.first(), samples.last());
        assert!(samples.len() >= 20, "too few epoch samples of {site}'s cell: {samples:?}");
        if let Some(w) = samples.windows(2).find(|w| w[1] < w[0]) {
            panic!("{site}'s cell went back from epoch {} to {}: {samples:?}", w[0], w[1]);
        }
    }
    assert_eq!(epochs.len(), 2, "both cells sampled: {epochs:?}");
    assert!(
        epochs["site-2"].last() > epochs["site-2"].first(),
        "site-2's cell applied the switchovers' placements: {:?}",
        epochs["site-2"]
    );
    assert!(problems.is_empty(), "the cluster survived the pause, but:\n- {}", problems.join("\n- "));
}

/// Whether `pid` is stopped by a signal (state `T` in `/proc/PID/stat`).
fn is_stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().next()) == Some("T"))
}

/// Sends SIGCONT to a stopped replica when dropped, so that a failing test never leaves it
/// stopped (it is dropped before the `Federation`, which then stops everything).
struct ContinueOnDrop(u32);

impl Drop for ContinueOnDrop {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0 as i32), Signal::SIGCONT);
    }
}

/// One write of the load: `freeze set` with a unique reason, and what fedctl made of it.
#[derive(Debug)]
struct Attempt {
    reason: String,
    acked: bool,
    /// fedctl's exit code (`None`: killed after the deadline).
    code: Option<i32>,
    /// Acknowledged, but the reply described another freeze than the one just set.
    stale_reply: bool,
    /// What fedctl printed: the reply, or the error.
    error: String,
}

#[test]
fn restarting_every_federator_one_by_one_under_load_loses_no_acknowledged_write() {
    const MAX_WRITES: usize = 600;
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("fed");
    let mut fed = Federation::up(&dir, &["--sites", "2", "--federators", "3"]);
    let admin = client_config_as(&dir, "admin", "chaos");
    let replicas = replica_configs(&fed, &dir.join("fedctl.toml"));
    let (leader, _, _) = wait_for(Duration::from_secs(30), "the replicas to agree on a leader", || agreed(&dir));
    eprintln!("federator-{leader} leads");

    // The load: one write after another through fedctl's normal configuration (every replica).
    let attempts: Arc<Mutex<Vec<Attempt>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (dir, admin, attempts, stop) = (dir.clone(), admin.clone(), attempts.clone(), stop.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(200);
            for n in 0..MAX_WRITES {
                if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                    break;
                }
                let reason = format!("CHG-load-{n}");
                let args = ["--config", path_str(&admin), "freeze", "set", "site:site-2", "--reason", &reason];
                let out = fedctl_within(&dir, &args, Duration::from_secs(20));
                let attempt = match out {
                    Some(out) if out.status.success() => {
                        let stdout = String::from_utf8_lossy(&out.stdout);
                        Attempt {
                            stale_reply: !stdout.trim_end().ends_with(&format!(": {reason}")),
                            reason,
                            acked: true,
                            code: Some(0),
                            error: stdout.trim().to_string(),
                        }
                    }
                    Some(out) => Attempt {
                        reason,
                        acked: false,
                        code: out.status.code(),
                        stale_reply: false,
                        error: format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()),
                    },
                    None => Attempt {
                        reason,
                        acked: false,
                        code: None,
                        stale_reply: false,
                        error: "timed out after 20 s".into(),
                    },
                };
                attempts.lock().unwrap().push(attempt);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let acked = || attempts.lock().unwrap().iter().filter(|a| a.acked).count();
    let tried = || attempts.lock().unwrap().len();
    wait_for(Duration::from_secs(20), "the load to get 5 writes acknowledged", || (acked() >= 5).then_some(()));

    for id in REPLICAS {
        let before = (tried(), acked());
        let pid = federator_pid(&fed, id);
        signal(pid, Signal::SIGKILL);
        let killed = Instant::now();
        wait_for(Duration::from_secs(10), &format!("federator-{id} to die"), || {
            (!switchyard_chaos_tests::is_alive(pid)).then_some(())
        });
        // It stays down until the two others agree on a leader other than it (an election when it
        // led) and the load has had writes acknowledged without it: a majority keeps taking them.
        let down = acked();
        let others: Vec<u64> = REPLICAS.iter().copied().filter(|o| *o != id).collect();
        let interim = wait_for(Duration::from_secs(20), &format!("a leader other than federator-{id}"), || {
            let views: Vec<Value> = others.iter().map(|o| replica_status(&dir, &replicas[o])).collect::<Option<_>>()?;
            let leader = views[0]["leader_id"].as_u64()?;
            (leader != 0 && leader != id && views.iter().all(|v| v["leader_id"].as_u64() == Some(leader)))
                .then_some(leader)
        });
        wait_for(Duration::from_secs(20), &format!("writes acknowledged while federator-{id} is down"), || {
            (acked() >= down + 3).then_some(())
        });
        eprintln!("federator-{id} down: federator-{interim} leads, {} writes acknowledged", acked() - down);
        let out = fedctl(&dir, &["restart", &format!("federator-{id}"), "--dir", path_str(&dir)]);
        assert!(out.status.success(), "restart federator-{id}: {}", String::from_utf8_lossy(&out.stderr));
        fed.reload();
        let (leader, _, views) =
            wait_for(Duration::from_secs(20), "one agreed leader after the restart", || agreed(&dir));
        let target = views.iter().filter_map(|r| r["last_applied_index"].as_u64()).max().unwrap_or(0);
        wait_for(Duration::from_secs(30), &format!("federator-{id} to rejoin and catch up to index {target}"), || {
            let (_, _, views) = agreed(&dir)?;
            (view_of(&views, id)["last_applied_index"].as_u64()? >= target).then_some(())
        });
        let rejoined = (tried(), acked());
        eprintln!(
            "federator-{id}: SIGKILL -> rejoined in {} ms (leader now federator-{leader}); writes during it: {} tried, \
             {} acknowledged",
            killed.elapsed().as_millis(),
            rejoined.0 - before.0,
            rejoined.1 - before.1
        );
        wait_for(Duration::from_secs(20), &format!("the load to progress after federator-{id} rejoined"), || {
            (acked() >= rejoined.1 + 3).then_some(())
        });
    }
    stop.store(true, Ordering::Relaxed);
    load.join().expect("the load thread");

    let attempts = std::mem::take(&mut *attempts.lock().unwrap());
    let ok: Vec<&Attempt> = attempts.iter().filter(|a| a.acked).collect();
    let failed: Vec<&Attempt> = attempts.iter().filter(|a| !a.acked).collect();
    let stale = ok.iter().filter(|a| a.stale_reply).count();
    eprintln!(
        "load: {} writes, {} acknowledged, {} failed, {stale} acknowledged with a reply describing an older freeze",
        attempts.len(),
        ok.len(),
        failed.len()
    );
    for a in &failed {
        eprintln!("  failed {}: {}", a.reason, a.error);
    }
    assert!(attempts.len() < MAX_WRITES, "the load ran out of writes before the restarts were done");

    let audit = audit_agreed_everywhere(&dir, &replicas);
    let mut committed: BTreeMap<&str, usize> = BTreeMap::new();
    for r in audit.iter().filter(|r| r["action"] == "freeze.set") {
        *committed.entry(r["reason"].as_str().unwrap_or("")).or_default() += 1;
    }
    let lost: Vec<&str> = ok.iter().map(|a| a.reason.as_str()).filter(|r| !committed.contains_key(r)).collect();
    assert!(lost.is_empty(), "acknowledged writes missing from the audit history: {lost:?}");
    let twice: Vec<(&&str, &usize)> = committed.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "writes committed more than once: {twice:?}");
    let ambiguous: Vec<&&Attempt> = failed.iter().filter(|a| committed.contains_key(a.reason.as_str())).collect();
    eprintln!("{} of the {} failed writes were committed all the same", ambiguous.len(), failed.len());

    // What fedctl told the operator must match what happened: exit 2 means "refused, nothing
    // changed", and an acknowledged `freeze set` describes the freeze it set.
    let mut problems = Vec::new();
    let refused_but_committed: Vec<String> =
        ambiguous.iter().filter(|a| a.code == Some(2)).map(|a| format!("{} ({})", a.reason, a.error)).collect();
    if !refused_but_committed.is_empty() {
        problems.push(format!(
            "{} writes were reported refused (exit 2, nothing changed) but are committed, e.g. {:?}",
            refused_but_committed.len(),
            &refused_but_committed[..refused_but_committed.len().min(3)]
        ));
    }
    if stale > 0 {
        let example: Vec<String> =
            ok.iter().filter(|a| a.stale_reply).take(3).map(|a| format!("{} got {:?}", a.reason, a.error)).collect();
        problems.push(format!(
            "{stale} acknowledged writes were answered with a freeze other than the one just set, e.g. {example:?}"
        ));
    }
    assert!(problems.is_empty(), "no acknowledged write was lost, but:\n- {}", problems.join("\n- "));
}

#[test]
fn with_every_federator_killed_dns_and_tasks_stay_and_nothing_flaps_on_return() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("fed");
    let mut fed = Federation::up(&dir, &["--sites", "2", "--federators", "3"]);
    let replicas = replica_configs(&fed, &dir.join("fedctl.toml"));
    wait_for(Duration::from_secs(30), "the replicas to agree on a leader", || agreed(&dir));
    let dns = fed.dns();
    let names = ["crm-web.fed.local.", "mobile-app.fed.local."];
    let pids = task_pids(&dir);
    assert_eq!(pids.len(), 4, "two groups of two instances");
    let answers: Vec<Vec<String>> = names.iter().map(|n| dig_a(&dns, n)).collect();
    assert!(answers.iter().all(|a| !a.is_empty()), "DNS answers every group: {answers:?}");
    let serial = soa_serial(&dns, "fed.local.").expect("an SOA serial");
    let operations = fedctl_json(&dir, &["switchover", "status"]);
    let audit_before = audit_from(&dir, &replicas[&1]);
    let unchanged = |when: &str| {
        let now: Vec<Vec<String>> = names.iter().map(|n| dig_a(&dns, n)).collect();
        assert_eq!(now, answers, "DNS answers unchanged {when}");
        assert_eq!(soa_serial(&dns, "fed.local."), Some(serial), "SOA serial unchanged {when}");
        assert_eq!(task_pids(&dir), pids, "no task stopped or restarted {when}");
    };

    // Every replica dies at once and stays dead for 10 s.
    let dead: Vec<u32> = REPLICAS.iter().map(|id| federator_pid(&fed, *id)).collect();
    for pid in &dead {
        signal(*pid, Signal::SIGKILL);
    }
    let killed = Instant::now();
    wait_for(Duration::from_secs(10), "every federator to die", || {
        dead.iter().all(|p| !switchyard_chaos_tests::is_alive(*p)).then_some(())
    });
    let out = fedctl_within(&dir, &["status"], Duration::from_secs(30)).expect("fedctl gives up on dead replicas");
    assert_eq!(out.status.code(), Some(3), "fedctl says the federator is unreachable (exit 3)");
    let mut samples = 0;
    while killed.elapsed() < Duration::from_secs(10) {
        unchanged("while every federator is dead");
        samples += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!("{samples} samples with every federator dead");

    // They come back; cells and the DNS server reconnect, and nothing changes.
    for id in REPLICAS {
        let out = fedctl(&dir, &["restart", &format!("federator-{id}"), "--dir", path_str(&dir)]);
        assert!(out.status.success(), "restart federator-{id}: {}", String::from_utf8_lossy(&out.stderr));
    }
    fed.reload();
    let restarted = Instant::now();
    let (leader, _, _) = wait_for(Duration::from_secs(30), "the restarted replicas to agree on a leader", || {
        unchanged("while the federators restart");
        agreed(&dir)
    });
    let cells = cell_metrics(&fed);
    let dns_metrics = fed.process("dns-1")["listen"]["metrics"].as_str().expect("metrics").to_string();
    wait_for(Duration::from_secs(30), "both cells and the DNS server to be linked to a federator again", || {
        unchanged("while cells and DNS reconnect");
        let cells_linked = cells.iter().all(|(_, m)| metric_value(m, "cell_federator_connected") == Some(1.0));
        let dns_linked = metric_value(&dns_metrics, "dns_federator_connected") == Some(1.0);
        let sites = json_within(&dir, &dir.join("fedctl.toml"), &["sites"], Duration::from_secs(20))?;
        let reported = sites.as_array()?.iter().all(|s| s["cell_connected"] == true);
        (cells_linked && dns_linked && reported).then_some(())
    });
    eprintln!("federator-{leader} leads; cells and DNS back {} ms after the restart", restarted.elapsed().as_millis());
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_secs(5) {
        unchanged("after the federators returned");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(fedctl_json(&dir, &["switchover", "status"]), operations, "no operation was started or changed");
    let audit = audit_agreed_everywhere(&dir, &replicas);
    assert_eq!(audit, audit_before, "no audit record was added because the federators had been away");
}
