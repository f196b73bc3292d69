//! Support for tests that run Switchyard's real binaries on loopback: locating the binaries,
//! running `fedctl`, querying DNS with `dig`, and inspecting processes through `/proc`.
//! Every wait here is bounded.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod load;

/// Directory holding the workspace's binaries (`cargo build --workspace --bins`).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SWITCHYARD_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("debug");
    for bin in ["fedctl", "federator", "dc-agent", "fed-dns", "sample-app"] {
        assert!(
            dir.join(bin).is_file(),
            "{} is missing: build the binaries first with `cargo build --workspace --bins` (scripts/test does)",
            dir.join(bin).display()
        );
    }
    dir
}

/// Runs `fedctl` with the client configuration of the federation in `dir`.
pub fn fedctl(dir: &Path, args: &[&str]) -> Output {
    Command::new(bin_dir().join("fedctl"))
        .args(args)
        .env("FEDCTL_CONFIG", dir.join("fedctl.toml"))
        .output()
        .expect("fedctl runs")
}

/// Runs `fedctl` and returns its stdout, failing the test with its stderr if it failed.
pub fn fedctl_ok(dir: &Path, args: &[&str]) -> String {
    let out = fedctl(dir, args);
    assert!(
        out.status.success(),
        "fedctl {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

pub fn fedctl_json(dir: &Path, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&fedctl_ok(dir, &all)).expect("fedctl -o json prints JSON")
}

/// `dig +short` for an A record against `server` (`ip:port`); the sorted addresses.
pub fn dig_a(server: &str, name: &str) -> Vec<String> {
    let (ip, port) = server.rsplit_once(':').expect("ip:port");
    let out = Command::new("dig")
        .args([&format!("@{ip}"), "-p", port, name, "A", "+short", "+time=2", "+tries=2"])
        .output()
        .expect("dig must be installed (scripts/test installs dnsutils)");
    assert!(out.status.success(), "dig failed: {}", String::from_utf8_lossy(&out.stderr));
    // dig prints a timed-out try (";; communications error ...") on stdout even with +short.
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with(';'))
        .map(String::from)
        .collect();
    v.sort();
    v
}

/// `dig` full answer (for the SOA serial and flags).
pub fn dig_raw(server: &str, name: &str, qtype: &str) -> String {
    let (ip, port) = server.rsplit_once(':').expect("ip:port");
    let out = Command::new("dig")
        .args([&format!("@{ip}"), "-p", port, name, qtype, "+time=2", "+tries=2"])
        .output()
        .expect("dig runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `f` every 200 ms until it returns `Some`, or panics after `timeout` with `what`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {}s waiting for {what}", timeout.as_secs());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Whether `pid` is a live process (zombies count as gone).
pub fn is_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()) != Some("Z"),
        Err(_) => false,
    }
}

/// A task process found through `/proc`: its pid and `SWITCHYARD_*`/`HOST`/`PORT` environment.
#[derive(Clone, Debug)]
pub struct TaskProcess {
    pub pid: u32,
    pub env: std::collections::BTreeMap<String, String>,
    pub cwd: PathBuf,
}

/// Live processes whose working directory is under `root` and that carry a
/// `SWITCHYARD_TASK_ID` (the app instances nodes launched for the federation in `root`).
pub fn task_processes(root: &Path) -> Vec<TaskProcess> {
    let root = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return out };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(cwd) = std::fs::read_link(format!("/proc/{pid}/cwd")) else { continue };
        if !cwd.starts_with(&root) || !is_alive(pid) {
            continue;
        }
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else { continue };
        let env: std::collections::BTreeMap<String, String> = environ
            .split(|b| *b == 0)
            .filter_map(|kv| std::str::from_utf8(kv).ok()?.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
            .filter(|(k, _)| k.starts_with("SWITCHYARD_") || k == "HOST" || k == "PORT")
            .collect();
        if env.contains_key("SWITCHYARD_TASK_ID") {
            out.push(TaskProcess { pid, env, cwd });
        }
    }
    out
}

/// `GET path` over plain HTTP/1.1; the status code and body.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

/// `GET /` with `Host: host` at `addr` (an ingress proxy); the status code and body.
pub fn http_get_host(addr: &str, host: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(s, "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    Some((head.split_whitespace().nth(1)?.parse().ok()?, body.to_string()))
}

/// `GET /` of a sample-app instance; its JSON answer.
pub fn http_get_json(host: &str, port: &str) -> Option<Value> {
    use std::io::{Read, Write};
    let mut s =
        std::net::TcpStream::connect_timeout(&format!("{host}:{port}").parse().ok()?, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    let json = body.split_once("\r\n\r\n")?.1;
    serde_json::from_str(json.trim()).ok()
}

/// Stops the federation in `dir` when dropped, so a failing test leaves nothing running.
pub struct Federation {
    pub dir: PathBuf,
    pub cluster: Value,
}

impl Federation {
    /// `fedctl up --dir DIR` with the given extra arguments; panics with its output on failure.
    pub fn up(dir: &Path, extra: &[&str]) -> Self {
        let mut args = vec!["up", "--dir", dir.to_str().expect("utf-8 path"), "--timeout-s", "120"];
        args.extend(extra);
        let out = fedctl(dir, &args);
        let mut fed = Federation { dir: dir.to_path_buf(), cluster: Value::Null };
        assert!(
            out.status.success(),
            "fedctl up failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = serde_json::from_str(&std::fs::read_to_string(dir.join("cluster.json")).expect("cluster.json"))
            .expect("cluster.json is JSON");
        fed.cluster = cluster;
        fed
    }

    pub fn reload(&mut self) {
        self.cluster =
            serde_json::from_str(&std::fs::read_to_string(self.dir.join("cluster.json")).expect("cluster.json"))
                .expect("cluster.json is JSON");
    }

    /// `ip:port` of a site's ingress proxy.
    pub fn ingress(&self, site: &str) -> String {
        let s = self.cluster["sites"].as_array().unwrap().iter().find(|s| s["name"] == site).expect("site");
        let port =
            s["ingress_port"].as_u64().expect("an ingress proxy (haproxy must be installed; scripts/test does it)");
        format!("{}:{port}", s["ingress"][0].as_str().unwrap())
    }

    pub fn dns(&self) -> String {
        self.cluster["dns"]["address"].as_str().expect("dns address").to_string()
    }

    pub fn pids(&self) -> Vec<u32> {
        self.cluster["processes"]
            .as_array()
            .expect("processes")
            .iter()
            .map(|p| p["pid"].as_u64().unwrap() as u32)
            .collect()
    }

    pub fn process(&self, name: &str) -> Value {
        self.cluster["processes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no process {name}"))
            .clone()
    }

    pub fn down(&self) -> Output {
        fedctl(&self.dir, &["down", "--dir", self.dir.to_str().unwrap()])
    }
}

impl Drop for Federation {
    fn drop(&mut self) {
        if self.dir.join("cluster.json").exists() {
            let _ = self.down();
        }
    }
}

/// Issues a certificate for `role:name` from the federation's CA in `dir` and writes a fedctl
/// configuration that uses it; returns the configuration's path (pass it with `--config`).
pub fn client_config_as(dir: &Path, role: &str, name: &str) -> PathBuf {
    fedctl_ok(dir, &["certs", "issue", role, name, "--dir", dir.to_str().expect("utf-8 path")]);
    let own: toml::Table = toml::from_str(&std::fs::read_to_string(dir.join("fedctl.toml")).expect("fedctl.toml"))
        .expect("fedctl.toml is TOML");
    let mut cfg = own.clone();
    let tls = cfg.get_mut("tls").and_then(|t| t.as_table_mut()).expect("fedctl.toml has [tls]");
    let cert = dir.join(format!("certs/{role}-{name}.pem"));
    let key = dir.join(format!("certs/{role}-{name}-key.pem"));
    tls.insert("cert".into(), cert.display().to_string().into());
    tls.insert("key".into(), key.display().to_string().into());
    let path = dir.join(format!("{role}-{name}.toml"));
    std::fs::write(&path, toml::to_string(&cfg).expect("TOML")).expect("write client configuration");
    path
}

/// Runs `fedctl` like [`fedctl`], but gives up after `timeout`: the process is killed and
/// `None` returned, so a hung federator can never hang a test.
pub fn fedctl_within(dir: &Path, args: &[&str], timeout: Duration) -> Option<Output> {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = Command::new(bin_dir().join("fedctl"))
        .args(args)
        .env("FEDCTL_CONFIG", dir.join("fedctl.toml"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("fedctl runs");
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let err = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for fedctl") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (stdout, stderr) = (out.join().unwrap_or_default(), err.join().unwrap_or_default());
    status.map(|status| Output { status, stdout, stderr })
}

/// Writes a copy of the fedctl configuration `config` that names `endpoint` only (no fallback
/// replicas), so a command run with it (`--config`) is answered by that replica or fails.
pub fn single_endpoint_config(config: &Path, endpoint: &str) -> PathBuf {
    let mut cfg: toml::Table =
        toml::from_str(&std::fs::read_to_string(config).expect("fedctl configuration")).expect("TOML");
    cfg.insert("endpoint".into(), endpoint.into());
    cfg.remove("endpoints");
    let port = endpoint.rsplit(':').next().unwrap_or("replica").trim_end_matches('/');
    let stem = config.file_stem().and_then(|s| s.to_str()).unwrap_or("fedctl");
    let path = config.with_file_name(format!("{stem}-only-{port}.toml"));
    std::fs::write(&path, toml::to_string(&cfg).expect("TOML")).expect("write client configuration");
    path
}

/// Verifies an audit chain as `fedctl audit list -o json` prints it, with the federation's own
/// `switchyard_core::audit::verify_chain`. Names the first bad record.
pub fn verify_audit_chain(records: &[Value]) -> Result<(), String> {
    let records = records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let text = |k: &str| r[k].as_str().map(str::to_string).ok_or_else(|| format!("record {i} has no {k}: {r}"));
            let num = |k: &str| r[k].as_u64().ok_or_else(|| format!("record {i} has no {k}: {r}"));
            Ok(switchyard_core::AuditRecord {
                seq: num("sequence")?,
                time_ms: num("time_ms")?,
                actor: text("actor")?,
                action: text("action")?,
                subject: text("subject")?,
                reason: text("reason")?,
                detail_json: text("detail_json")?,
                raft_index: num("raft_index")?,
                prev_hash: text("prev_hash")?,
                hash: text("hash")?,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    switchyard_core::audit::verify_chain(&records).map_err(|e| e.to_string())
}

/// The value of an unlabelled Prometheus metric `name` served at `http://addr/metrics`.
pub fn metric_value(addr: &str, name: &str) -> Option<f64> {
    let (code, body) = http_get(addr, "/metrics")?;
    if code != 200 {
        return None;
    }
    body.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The serial of `zone`'s SOA record as `server` (`ip:port`) answers it.
pub fn soa_serial(server: &str, zone: &str) -> Option<u64> {
    let (ip, port) = server.rsplit_once(':').expect("ip:port");
    let out = Command::new("dig")
        .args([&format!("@{ip}"), "-p", port, zone, "SOA", "+short", "+time=2", "+tries=2"])
        .output()
        .expect("dig runs");
    // `ns1.fed.local. hostmaster.fed.local. SERIAL REFRESH RETRY EXPIRE MINIMUM`
    // Skipping dig's comment lines: a timed-out try is reported on stdout before the answer.
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().find(|l| !l.starts_with(';'))?.split_whitespace().nth(2)?.parse().ok()
}

/// `kill -9` of every process of `site`: its cell, nodes and ingress proxy (from
/// `cluster.json`) and its app instances. Returns how many processes were signalled.
pub fn kill_site(fed: &Federation, site: &str) -> usize {
    let mut pids: Vec<u32> = fed.cluster["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .filter(|p| p["site"] == site)
        .map(|p| p["pid"].as_u64().expect("pid") as u32)
        .collect();
    pids.extend(
        task_processes(&fed.dir)
            .into_iter()
            .filter(|t| t.env.get("SWITCHYARD_SITE").map(String::as_str) == Some(site))
            .map(|t| t.pid),
    );
    for pid in &pids {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
    pids.len()
}

/// Starts every process of `site` that `kill_site` stopped (its cell, nodes and ingress proxy)
/// again with `fedctl restart`; the cell then starts the site's instances itself.
pub fn restart_site(fed: &Federation, site: &str) {
    let names: Vec<&str> = fed.cluster["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .filter(|p| p["site"] == site)
        .filter_map(|p| p["name"].as_str())
        .collect();
    for name in names {
        let out = fedctl(&fed.dir, &["restart", name, "--dir", fed.dir.to_str().expect("utf-8 path")]);
        assert!(out.status.success(), "{name}: {out:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_as_fedctl_prints_it_verifies_and_an_edit_is_caught() {
        let mut log = switchyard_core::AuditLog::default();
        for (i, reason) in ["CHG-1", "CHG-2"].iter().enumerate() {
            log.append(switchyard_core::audit::Entry {
                time_ms: 1_000 + i as u64,
                actor: "operator:sre",
                action: "freeze.set",
                subject: "global",
                reason,
                detail: serde_json::json!({}),
                raft_index: 10 + i as u64,
            });
        }
        let mut printed: Vec<Value> = log
            .records()
            .iter()
            .map(|r| {
                serde_json::json!({
                    "sequence": r.seq, "time_ms": r.time_ms, "actor": r.actor, "action": r.action,
                    "subject": r.subject, "reason": r.reason, "detail_json": r.detail_json,
                    "raft_index": r.raft_index, "prev_hash": r.prev_hash, "hash": r.hash,
                })
            })
            .collect();
        verify_audit_chain(&printed).expect("an untouched chain verifies");
        printed[0]["reason"] = "CHG-1 (edited)".into();
        assert!(verify_audit_chain(&printed).is_err(), "an edited record is caught");
    }
}
