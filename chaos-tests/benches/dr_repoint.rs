//! How long after `kill -9` of a whole site the federation's authoritative DNS answers from a
//! survivor, and how that depends on the detection settings.
//!
//! ```sh
//! cargo build --workspace --bins          # the binaries it runs (target/debug, as the chaos tests)
//! cargo bench -p switchyard-chaos-tests --bench dr_repoint
//! DR_BENCH_RUNS=20 DR_BENCH_SETTINGS=2000:250,1000:200 cargo bench -p switchyard-chaos-tests --bench dr_repoint
//! ```
//!
//! Each run starts a fresh local federation (`fedctl up`, 3 sites, the demo groups on site-1)
//! with one detection setting, waits until both observers (the federator and fed-dns) have seen
//! every site healthy, reads the answer fed-dns gives for `crm-web.fed.local.` (site-1's
//! ingress), kills site-1 (`kill_site`: cell, nodes, ingress, app instances), then asks fed-dns
//! itself over UDP every 10 ms until the answer no longer holds site-1's address. Querying the
//! authoritative server directly leaves the record's TTL out: a resolver's cache adds up to one
//! TTL on top. The federator's audit records when the site was declared down and when the
//! group's failover routed it (at its start for a warm standby, at its completion for a cold
//! one), on the same clock, so the time splits into detection and failover. Then `fedctl down --purge`, and the next run.
//!
//! `DR_BENCH_RUNS` (default 10) runs per setting; `DR_BENCH_SETTINGS` (default
//! `10000:1000,2000:250,1000:200`) lists `WINDOW_MS:PROBE_INTERVAL_MS[:STALE_MS]`, passed to
//! `fedctl up --detect-window-ms --probe-interval-ms --detect-stale-ms`; `DR_BENCH_UP_ARGS`
//! (whitespace-separated) adds arguments to `fedctl up`, e.g. `--groups-file FILE` for groups
//! whose instances pass their first health check sooner (the file must keep a `crm-web` group
//! on site-1). Every wait is bounded; a run that fails is reported and the next one starts.

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, bail, ensure};
use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use serde_json::Value;
use switchyard_chaos_tests::{Federation, fedctl, http_get, is_alive, kill_site, task_processes};

const NAME: &str = "crm-web.fed.local.";
const GROUP: &str = "crm-web";
const SITE: &str = "site-1";
const SITE_ADDRESS: &str = "127.0.1.1";
/// How often fed-dns is asked while the site is down.
const POLL: Duration = Duration::from_millis(10);
/// One query's wait for an answer.
const QUERY_TIMEOUT: Duration = Duration::from_millis(200);
/// Longest wait for the failover after the detection window.
const FAILOVER_MAX: Duration = Duration::from_secs(90);

#[derive(Clone, Copy, Debug)]
struct Setting {
    window_ms: u64,
    probe_ms: u64,
    stale_ms: u64,
}

impl std::fmt::Display for Setting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "window {} ms, probe {} ms, stale {} ms", self.window_ms, self.probe_ms, self.stale_ms)
    }
}

/// One run's times, each from the moment before the first `kill -9`, in milliseconds.
#[derive(Clone, Copy, Debug)]
struct Sample {
    /// Both failure domains see the site refused (the later of their first unhealthy sights).
    seen: f64,
    /// The declaration is committed (audit `site.declared-down`).
    declared: f64,
    /// The commit that routes the group to the survivor: the failover's start for a warm
    /// standby (audit `failover.start`), its completion for a cold one (`failover.complete`).
    failed_over: f64,
    /// fed-dns first answers without the site's address.
    repointed: f64,
    /// How long `kill_site` took to signal every process.
    kill_took: f64,
}

fn main() {
    let runs: usize = env_or("DR_BENCH_RUNS", 10);
    let settings = match parse_settings(&std::env::var("DR_BENCH_SETTINGS").unwrap_or_default()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("DR_BENCH_SETTINGS: {e}");
            std::process::exit(2);
        }
    };
    ensure_no_federation_running();
    let bins = switchyard_chaos_tests::bin_dir();
    println!("# dr_repoint: kill -9 of {SITE} to fed-dns answering {NAME} from a survivor");
    println!("binaries: {}", bins.display());
    println!("machine: {} CPUs, kernel {}", cmd("nproc", &[]), cmd("uname", &["-r"]));
    println!("load before: {}", cmd("uptime", &[]));
    if let Ok(extra) = std::env::var("DR_BENCH_UP_ARGS") {
        println!("fedctl up {extra}");
    }
    let mut results = Vec::new();
    for setting in &settings {
        let mut samples = Vec::new();
        let mut failures = Vec::new();
        for i in 1..=runs {
            let started = Instant::now();
            match std::panic::catch_unwind(|| run(*setting)) {
                Ok(Ok(s)) => {
                    eprintln!(
                        "[{setting}] run {i}/{runs}: seen {:.0} ms, declared {:.0} ms, failover done {:.0} ms, \
                         repointed {:.0} ms (kill_site took {:.0} ms; run {:.0} s)",
                        s.seen,
                        s.declared,
                        s.failed_over,
                        s.repointed,
                        s.kill_took,
                        started.elapsed().as_secs_f64()
                    );
                    samples.push(s);
                }
                Ok(Err(e)) => {
                    eprintln!("[{setting}] run {i}/{runs} FAILED: {e:#}");
                    failures.push(format!("{e:#}"));
                }
                Err(_) => {
                    eprintln!("[{setting}] run {i}/{runs} FAILED (panicked, see above)");
                    failures.push("panicked".into());
                }
            }
            ensure_no_federation_running();
        }
        results.push((*setting, samples, failures));
    }
    println!("load after: {}", cmd("uptime", &[]));
    println!();
    println!("times from kill -9, ms: p50 / p99 / max (nearest rank; with 10 runs p99 is the max)");
    println!();
    println!(
        "| window | probe | runs (failed) | both domains see it | declared down | failover committed | DNS repointed | declared → repointed |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (s, samples, failures) in &results {
        let col = |f: fn(&Sample) -> f64| summary(samples.iter().map(f).collect());
        println!(
            "| {} ms | {} ms | {} ({}) | {} | {} | {} | {} | {} |",
            s.window_ms,
            s.probe_ms,
            samples.len(),
            failures.len(),
            col(|x| x.seen),
            col(|x| x.declared),
            col(|x| x.failed_over),
            col(|x| x.repointed),
            col(|x| x.repointed - x.declared),
        );
    }
    let failed: usize = results.iter().map(|(_, _, f)| f.len()).sum();
    if failed > 0 {
        eprintln!("{failed} run(s) failed");
        std::process::exit(1);
    }
}

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    match std::env::var(key) {
        Ok(v) => v.parse().unwrap_or_else(|_| {
            eprintln!("{key}={v:?} is not a number");
            std::process::exit(2)
        }),
        Err(_) => default,
    }
}

fn parse_settings(text: &str) -> anyhow::Result<Vec<Setting>> {
    let text = if text.trim().is_empty() { "10000:1000,2000:250,1000:200" } else { text };
    text.split(',')
        .map(|one| {
            let n: Vec<u64> = one
                .trim()
                .split(':')
                .map(|x| x.parse().with_context(|| format!("{one:?}: {x:?} is not a number")))
                .collect::<anyhow::Result<_>>()?;
            match n[..] {
                [window_ms, probe_ms] => Ok(Setting { window_ms, probe_ms, stale_ms: 5_000 }),
                [window_ms, probe_ms, stale_ms] => Ok(Setting { window_ms, probe_ms, stale_ms }),
                _ => bail!("{one:?} is not WINDOW_MS:PROBE_INTERVAL_MS[:STALE_MS]"),
            }
        })
        .collect()
}

fn cmd(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|e| format!("({program}: {e})"))
}

/// One local federation at a time: its loopback ports are fixed. Exits if a federation process
/// other than an exited one not yet reaped (a zombie) runs.
fn ensure_no_federation_running() {
    let out = cmd("pgrep", &["-a", "-x", "federator|dc-agent|fed-dns"]);
    let live: Vec<&str> = out
        .lines()
        .filter(|l| l.split_whitespace().next().and_then(|p| p.parse().ok()).is_some_and(is_alive))
        .collect();
    if !live.is_empty() {
        eprintln!("another local federation (or part of one) is running; stop it first:\n{}", live.join("\n"));
        std::process::exit(2);
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_millis() as u64
}

fn run(setting: Setting) -> anyhow::Result<Sample> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("fed");
    let (window, probe, stale) =
        (setting.window_ms.to_string(), setting.probe_ms.to_string(), setting.stale_ms.to_string());
    let extra = std::env::var("DR_BENCH_UP_ARGS").unwrap_or_default();
    let mut args = vec!["--detect-window-ms", &window, "--probe-interval-ms", &probe, "--detect-stale-ms", &stale];
    args.extend(extra.split_whitespace());
    let fed = Federation::up(&dir, &args);
    let result = measure(&fed, setting);
    let teardown = tear_down(&fed);
    let sample = result?;
    teardown?;
    Ok(sample)
}

fn measure(fed: &Federation, setting: Setting) -> anyhow::Result<Sample> {
    let dns: SocketAddr = fed.dns().parse()?;
    let fed_metrics = fed.process("federator")["listen"]["metrics"].as_str().context("federator metrics")?.to_string();
    let dns_metrics = fed.process("dns-1")["listen"]["metrics"].as_str().context("fed-dns metrics")?.to_string();
    let sites: Vec<String> = fed.cluster["sites"]
        .as_array()
        .context("sites")?
        .iter()
        .filter_map(|s| s["name"].as_str())
        .map(String::from)
        .collect();
    // Both observers have seen every site healthy a few times.
    bounded(Duration::from_secs(30), "both observers to see every site healthy", || {
        let seen = |addr: &str, metric: &str| {
            let body = http_get(addr, "/metrics").map(|(_, b)| b).unwrap_or_default();
            sites.iter().all(|site| healthy_count(&body, metric, site) >= 3.0)
        };
        Ok((seen(&fed_metrics, "federator_probes_total") && seen(&dns_metrics, "dns_observations_total")).then_some(()))
    })?;
    let status = fedctl_json(&fed.dir, &["dr", "status"])?;
    ensure!(status["down_sites"].as_array().is_none_or(|d| d.is_empty()), "a site is already down: {status}");
    let before = bounded(Duration::from_secs(10), "fed-dns to answer for the group", || Ok(query_a(dns, NAME).ok()))?;
    ensure!(before == [SITE_ADDRESS], "{NAME} answers {before:?} before the kill, not {SITE}'s {SITE_ADDRESS}");

    let killed_at_ms = now_ms();
    let killed = Instant::now();
    let signalled = kill_site(fed, SITE);
    let kill_took = killed.elapsed();
    ensure!(signalled >= 4, "only {signalled} processes of {SITE} were signalled");
    let deadline = Duration::from_millis(setting.window_ms) + FAILOVER_MAX;
    let repointed = loop {
        if let Ok(answer) = query_a(dns, NAME)
            && !answer.is_empty()
            && !answer.iter().any(|a| a == SITE_ADDRESS)
        {
            break killed.elapsed();
        }
        if killed.elapsed() > deadline {
            bail!("{NAME} still answers {SITE} {} s after the kill", deadline.as_secs());
        }
        std::thread::sleep(POLL);
    };

    // The split, from the federator's audit (its clock is this machine's).
    let audit = fedctl_json(&fed.dir, &["audit", "list"])?;
    let records = audit.as_array().context("audit list")?;
    let at = |action: &str, subject: &str| -> anyhow::Result<(u64, Value)> {
        let r = records
            .iter()
            .find(|r| r["action"] == action && r["subject"] == subject)
            .with_context(|| format!("no {action} of {subject} audited"))?;
        let detail = serde_json::from_str(r["detail_json"].as_str().unwrap_or("{}"))?;
        Ok((r["time_ms"].as_u64().context("time_ms")?, detail))
    };
    let (declared_ms, declared) = at("site.declared-down", SITE)?;
    let (started_ms, started) = at("failover.start", GROUP)?;
    let failed_over_ms = if started["warm"] == true { started_ms } else { at("failover.complete", GROUP)?.0 };
    let seen_ms = declared["evidence"]
        .as_array()
        .context("evidence")?
        .iter()
        .filter_map(|e| e["unhealthy_since_ms"].as_u64())
        .max()
        .context("no unhealthy sight in the evidence")?;
    let since_kill = |t: u64| t as f64 - killed_at_ms as f64;
    Ok(Sample {
        seen: since_kill(seen_ms),
        declared: since_kill(declared_ms),
        failed_over: since_kill(failed_over_ms),
        repointed: repointed.as_secs_f64() * 1000.0,
        kill_took: kill_took.as_secs_f64() * 1000.0,
    })
}

/// `fedctl down --purge`, then every process of the federation (daemons and app instances)
/// gone within 20 s; any left is killed by its pid and reported.
fn tear_down(fed: &Federation) -> anyhow::Result<()> {
    let mut pids = fed.pids();
    pids.extend(task_processes(&fed.dir).into_iter().map(|t| t.pid));
    let out = fedctl(&fed.dir, &["down", "--purge", "--dir", fed.dir.to_str().context("utf-8 path")?]);
    let gone = bounded(Duration::from_secs(20), "every process to stop", || {
        Ok(pids.iter().all(|p| !is_alive(*p)).then_some(()))
    });
    let left: Vec<u32> = pids.iter().copied().filter(|p| is_alive(*p)).collect();
    for pid in &left {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
    ensure!(out.status.success(), "fedctl down --purge failed: {}", String::from_utf8_lossy(&out.stderr));
    gone.with_context(|| format!("processes left after fedctl down (killed): {left:?}"))
}

fn fedctl_json(dir: &Path, args: &[&str]) -> anyhow::Result<Value> {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let out = fedctl(dir, &all);
    ensure!(out.status.success(), "fedctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Polls `f` every 50 ms until it returns `Some`, for at most `timeout`.
fn bounded<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> anyhow::Result<Option<T>>) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f()? {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(anyhow!("timed out after {} s waiting for {what}", timeout.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sum of `metric{...site="SITE"...health="healthy"...}` in a Prometheus text body.
fn healthy_count(body: &str, metric: &str, site: &str) -> f64 {
    body.lines()
        .filter(|l| l.starts_with(metric) && l.contains(&format!("site=\"{site}\"")) && l.contains("\"healthy\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// One A query over UDP to `server`; the addresses answered, sorted. Errors on a timeout, a
/// mismatched id or an error rcode.
fn query_a(server: SocketAddr, name: &str) -> anyhow::Result<Vec<String>> {
    let id: u16 = (now_ms() & 0xffff) as u16;
    let mut query = Message::query();
    query.metadata.id = id;
    query.add_query(Query::query(Name::from_ascii(name)?, RecordType::A));
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    socket.set_read_timeout(Some(QUERY_TIMEOUT))?;
    socket.send_to(&query.to_vec()?, server)?;
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf)?;
    let reply = Message::from_vec(&buf[..n])?;
    ensure!(reply.metadata.id == id, "reply id {} is not {id}", reply.metadata.id);
    ensure!(
        reply.metadata.response_code == hickory_proto::op::ResponseCode::NoError,
        "rcode {:?}",
        reply.metadata.response_code
    );
    let mut v: Vec<String> = reply
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect();
    v.sort();
    Ok(v)
}

/// `p50 / p99 / max` of `v` in ms (nearest rank), or `-` when empty.
fn summary(mut v: Vec<f64>) -> String {
    if v.is_empty() {
        return "-".into();
    }
    v.sort_by(f64::total_cmp);
    let rank = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    format!("{:.0} / {:.0} / {:.0}", rank(0.50), rank(0.99), v[v.len() - 1])
}
