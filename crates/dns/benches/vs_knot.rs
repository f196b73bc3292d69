//! fed-dns against Knot DNS with `dnsperf`: the same names and addresses, each server pinned to
//! one core and `dnsperf` to the other, on loopback.
//!
//! Run: `scripts/bench-dns` (installs knot and dnsperf, builds fed-dns in release, runs this).
//! Directly: `cargo build --release -p switchyard-dns && cargo bench -p switchyard-dns --bench vs_knot`
//!
//! Each server is started under `taskset -c CORE` and, once it answers, every one of its threads is
//! pinned to that core again and checked (knotd moves its UDP workers itself otherwise).
//!
//! Reports for each server: queries completed, queries per second, the server's CPU time
//! (user + system, all threads, from /proc, and per thread) and queries per server CPU-second,
//! then the ratio fed-dns / Knot: of each run pair (the servers take turns) and of the best
//! runs. Environment: `BENCH_SECONDS` (default 10) per run, `BENCH_NAMES` (default 2000),
//! `BENCH_RUNS` (default 3), `BENCH_CLIENTS` (dnsperf -c, default 8), `BENCH_QPS` (offered rate,
//! dnsperf -Q; default 0 = as fast as dnsperf sends), `BENCH_SERVER_CORE` (default 1; 0 puts
//! the server on dnsperf's core, a comparison of how much sharing that core changes).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use switchyard_tls::{CertAuthority, Identity, Role};

const ZONE: &str = "bench.local.";

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn free_port() -> u16 {
    // Free for UDP and TCP on 127.0.0.1.
    loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn address(i: usize, k: usize) -> String {
    format!("10.{}.{}.{}", k + 1, (i / 250) % 250, i % 250 + 1)
}

/// The zone as a Knot zone file and as a fed-dns last-known-good routing table.
fn write_zone(dir: &Path, names: usize) -> (PathBuf, PathBuf) {
    let mut zone =
        format!("$ORIGIN {ZONE}\n$TTL 30\n@ SOA ns1 hostmaster 1 60 30 86400 30\n@ NS ns1\nns1 A 127.0.0.1\n");
    let mut entries = Vec::new();
    for i in 0..names {
        zone.push_str(&format!("svc-{i} 30 A {}\nsvc-{i} 30 A {}\n", address(i, 0), address(i, 1)));
        entries.push(serde_json::json!({
            "name": format!("svc-{i}"), "group": format!("svc-{i}"), "ttl_s": 30,
            "targets": [{"site": "site-1", "addresses": [address(i, 0), address(i, 1)], "weight": 1}],
        }));
    }
    let zone_file = dir.join("bench.local.zone");
    std::fs::write(&zone_file, zone).unwrap();
    let state = dir.join("fed-dns-state");
    std::fs::create_dir_all(&state).unwrap();
    let table = serde_json::json!({"format": 1, "table": {"version": 1, "epoch": 1, "zone": ZONE, "entries": entries}});
    std::fs::write(state.join("routing.json"), serde_json::to_vec(&table).unwrap()).unwrap();
    let queries: String = (0..names).map(|i| format!("svc-{i}.{ZONE} A\n")).collect();
    let query_file = dir.join("queries.txt");
    std::fs::write(&query_file, queries).unwrap();
    (zone_file, query_file)
}

fn pinned(core: u32, program: &Path) -> Command {
    let mut c = Command::new("taskset");
    c.arg("-c").arg(core.to_string()).arg(program);
    c
}

fn start_knot(dir: &Path, zone_file: &Path, port: u16, core: u32) -> Child {
    let conf = dir.join("knot.conf");
    let run = dir.join("knot");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(
        &conf,
        format!(
            "server:\n    rundir: \"{run}\"\n    listen: 127.0.0.1@{port}\n    udp-workers: 1\n    tcp-workers: 1\n    background-workers: 1\n\
             database:\n    storage: \"{run}\"\n\
             log:\n  - target: stderr\n    any: warning\n\
             zone:\n  - domain: {ZONE}\n    file: \"{zone}\"\n    storage: \"{run}\"\n    journal-content: none\n    zonefile-sync: -1\n",
            run = run.display(),
            zone = zone_file.display(),
        ),
    )
    .unwrap();
    pinned(core, Path::new("/usr/sbin/knotd"))
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("knot.log")).unwrap())
        .spawn()
        .expect("start knotd (apt-get install -y knot)")
}

fn start_fed_dns(dir: &Path, port: u16, core: u32) -> Child {
    let bin = std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().join("fed-dns");
    assert!(bin.exists(), "build fed-dns first: cargo build --release -p switchyard-dns");
    let certs = dir.join("certs");
    let ca = CertAuthority::generate("bench CA").unwrap();
    ca.save(&certs).unwrap();
    ca.issue_to_dir(&certs, "dns", &Identity::new(Role::Dns, "bench-dns").unwrap(), &[]).unwrap();
    pinned(core, &bin)
        .args(["--zone", ZONE, "--listen", &format!("127.0.0.1:{port}")])
        // Nobody listens on port 9: fed-dns serves its last-known-good table.
        .args(["--federator", "https://127.0.0.1:9", "--server-id", "bench-dns"])
        .arg("--tls-ca")
        .arg(certs.join("ca.pem"))
        .arg("--tls-cert")
        .arg(certs.join("dns.pem"))
        .arg("--tls-key")
        .arg(certs.join("dns-key.pem"))
        .arg("--state-dir")
        .arg(dir.join("fed-dns-state"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("fed-dns.log")).unwrap())
        .spawn()
        .unwrap()
}

/// User and system CPU seconds from a `stat` file of proc(5).
fn stat_cpu(path: &Path) -> Option<(String, f64, f64)> {
    let stat = std::fs::read_to_string(path).ok()?;
    let name = stat[stat.find('(')? + 1..stat.rfind(')')?].to_string();
    let after_comm = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); after_comm starts at field 3.
    Some((name, fields[11].parse::<f64>().ok()? / 100.0, fields[12].parse::<f64>().ok()? / 100.0))
}

/// Pins every thread of a running server to `core`. `taskset` at start is not enough: knotd
/// sets its UDP workers' affinity itself, which put its one UDP worker on core 0 beside
/// dnsperf: it shared a core with the load generator instead of paying for cross-core wake-ups
/// as a server on its own core does.
fn pin_all_threads(pid: u32, core: u32) {
    let ok = Command::new("taskset")
        .args(["-a", "-p", "-c", &core.to_string(), &pid.to_string()])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "taskset -a -p -c {core} {pid} failed");
}

/// Every thread of `pid` with the CPUs it may run on (`Cpus_allowed_list` of proc(5)).
fn thread_affinity(pid: u32) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
        let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
        let allowed = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .map(|v| v.trim().to_string())
            .unwrap_or_default();
        out.push((entry.file_name().to_string_lossy().into_owned(), allowed));
    }
    out
}

/// User + system CPU seconds of a process, all threads.
fn cpu_seconds(pid: u32) -> f64 {
    let (_, user, system) = stat_cpu(Path::new(&format!("/proc/{pid}/stat"))).expect("server process stat");
    user + system
}

/// Per-thread user and system CPU seconds, keyed by thread id and name.
fn thread_cpu(pid: u32) -> Vec<(String, f64, f64)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
        if let Some((name, user, system)) = stat_cpu(&entry.path().join("stat")) {
            out.push((format!("{}:{name}", entry.file_name().to_string_lossy()), user, system));
        }
    }
    out
}

fn wait_answering(port: u16) {
    for _ in 0..100 {
        let ok = Command::new("dig")
            .args([
                "+short",
                "+time=1",
                "+tries=1",
                "-p",
                &port.to_string(),
                "@127.0.0.1",
                &format!("svc-0.{ZONE}"),
                "A",
            ])
            .output()
            .map(|o| !o.stdout.is_empty())
            .unwrap_or(false);
        if ok {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("server on port {port} never answered svc-0");
}

/// A server's answer to `svc-0 A`: its addresses (sorted) and the response's size in bytes, so
/// that the two servers can be seen to answer the same thing.
fn sample_answer(port: u16) -> (Vec<String>, usize) {
    let out = Command::new("dig")
        .args(["+noall", "+answer", "+stats", "+time=1", "+tries=1", "-p", &port.to_string(), "@127.0.0.1"])
        .arg(format!("svc-0.{ZONE}"))
        .arg("A")
        .output()
        .expect("run dig");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut addresses: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with(';'))
        .filter_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            (fields.len() == 5 && fields[3] == "A").then(|| fields[4].to_string())
        })
        .collect();
    addresses.sort();
    let size = text
        .lines()
        .find_map(|l| l.strip_prefix(";; MSG SIZE  rcvd:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("dig printed no message size:\n{text}"));
    (addresses, size)
}

struct Run {
    completed: f64,
    qps: f64,
    cpu: f64,
    lost: f64,
    /// Threads that used CPU during the run: name, user seconds, system seconds.
    threads: Vec<(String, f64, f64)>,
}

fn dnsperf(port: u16, queries: &Path, pid: u32, seconds: u64, clients: u64, max_qps: u64) -> Run {
    let before = cpu_seconds(pid);
    let threads_before = thread_cpu(pid);
    let out = Command::new("taskset")
        .args(["-c", "0", "dnsperf", "-s", "127.0.0.1", "-p", &port.to_string()])
        .arg("-d")
        .arg(queries)
        .args(["-l", &seconds.to_string(), "-c", &clients.to_string(), "-T", "1", "-q", "1000", "-t", "2"])
        .args(if max_qps > 0 { vec!["-Q".to_string(), max_qps.to_string()] } else { vec![] })
        .output()
        .expect("run dnsperf (apt-get install -y dnsperf)");
    let cpu = cpu_seconds(pid) - before;
    let threads = thread_cpu(pid)
        .into_iter()
        .filter_map(|(name, user, system)| {
            let (u0, s0) =
                threads_before.iter().find(|(n, ..)| *n == name).map(|(_, u, s)| (*u, *s)).unwrap_or((0.0, 0.0));
            let (du, ds) = (user - u0, system - s0);
            (du + ds > 0.0).then_some((name, du, ds))
        })
        .collect();
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |label: &str| -> f64 {
        text.lines()
            .find(|l| l.trim_start().starts_with(label))
            .and_then(|l| l.split(':').nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("dnsperf printed no {label:?}:\n{text}"))
    };
    Run {
        completed: field("Queries completed"),
        qps: field("Queries per second"),
        cpu,
        lost: field("Queries lost"),
        threads,
    }
}

fn main() {
    let seconds = env("BENCH_SECONDS", 10);
    let names = env("BENCH_NAMES", 2000) as usize;
    let runs = env("BENCH_RUNS", 3);
    let clients = env("BENCH_CLIENTS", 8);
    // 0: as fast as dnsperf can send; otherwise the offered rate (dnsperf -Q), the same for both.
    let max_qps = env("BENCH_QPS", 0);
    // 1: the server has a core of its own. 0: it shares dnsperf's core (for comparison only).
    let core = env("BENCH_SERVER_CORE", 1) as u32;
    assert!(core <= 1, "BENCH_SERVER_CORE must be 0 or 1, not {core}");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (zone_file, queries) = write_zone(dir, names);
    let rate = if max_qps > 0 { format!("offered {max_qps} q/s") } else { "unlimited rate".to_string() };
    println!(
        "{names} names, 2 A records each, A queries over UDP; {seconds} s per run, {rate}, dnsperf -c {clients} on core 0, server on core {core}"
    );

    // Both servers start before the first run and take turns, run by run, so that a slow spell
    // of the machine falls on both rather than on whichever ran then.
    let mut servers = Vec::new();
    for (label, is_knot) in [("knotd", true), ("fed-dns", false)] {
        let port = free_port();
        let child = if is_knot { start_knot(dir, &zone_file, port, core) } else { start_fed_dns(dir, port, core) };
        wait_answering(port);
        pin_all_threads(child.id(), core);
        let affinity = thread_affinity(child.id());
        assert!(
            affinity.iter().all(|(_, cpus)| *cpus == core.to_string()),
            "{label}: every thread must be on core {core} only: {affinity:?}"
        );
        let (addresses, size) = sample_answer(port);
        println!("{label:8} answers svc-0 A with {addresses:?} in {size} bytes");
        servers.push((label, port, child, addresses));
    }
    assert_eq!(servers[0].3, servers[1].3, "the two servers must answer the same addresses");

    let mut per_cpu = [Vec::new(), Vec::new()];
    for r in 1..=runs {
        for (k, (label, port, child, _)) in servers.iter().enumerate() {
            let run = dnsperf(*port, &queries, child.id(), seconds, clients, max_qps);
            let q_per_cpu = run.completed / run.cpu.max(0.01);
            per_cpu[k].push(q_per_cpu);
            println!(
                "{label:8} run {r}: {:>9.0} queries, {:>8.0} q/s, lost {:>5.0}, server CPU {:>5.2} s, {:>8.0} queries per CPU-second",
                run.completed, run.qps, run.lost, run.cpu, q_per_cpu
            );
            for (name, user, system) in &run.threads {
                println!("{:14} thread {name}: user {user:.2} s, system {system:.2} s", "");
            }
        }
    }
    for (_, _, mut child, _) in servers {
        let _ = child.kill();
        let _ = child.wait();
    }
    let best = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let mut pair_ratios: Vec<f64> = per_cpu[1].iter().zip(&per_cpu[0]).map(|(f, k)| f / k).collect();
    pair_ratios.sort_by(f64::total_cmp);
    let median = pair_ratios[pair_ratios.len() / 2];
    println!(
        "fed-dns / knotd per run pair: {}; median {median:.2}",
        pair_ratios.iter().map(|r| format!("{r:.2}")).collect::<Vec<_>>().join(", ")
    );
    println!(
        "best queries per server CPU-second: knotd {:.0}, fed-dns {:.0}; fed-dns / knotd = {:.2}",
        best(&per_cpu[0]),
        best(&per_cpu[1]),
        best(&per_cpu[1]) / best(&per_cpu[0])
    );
}
