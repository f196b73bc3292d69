//! Pushing each served routing table to the DNS servers and load balancers an enterprise
//! already runs: RFC 2136 updates signed with TSIG ([`rfc2136`]) and HAProxy weights through
//! its runtime API ([`haproxy`]). Configured with `fed-dns --push-config FILE`.
//!
//! Every target has its own task: a slow or unreachable target delays nobody else. A task
//! pushes only what differs from what its target last confirmed, retries failures with
//! backoff, and isolates a record the server refuses by retrying its batch one name at a time,
//! so one bad record never blocks the rest. Progress is visible in `push-status.json` in the
//! state directory, in metrics (`dns_push_*`) and in the log.

pub mod haproxy;
pub mod rfc2136;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hickory_proto::rr::rdata::tsig::TsigAlgorithm;
use hickory_proto::rr::{Name, TSigner};
use serde::{Deserialize, Serialize};

use crate::names::parse_zone;
use crate::store::SharedTable;
use crate::table::Table;
use crate::watch::Backoff;

/// Names per UPDATE message unless configured.
pub const DEFAULT_BATCH: usize = 50;
/// Retry delays after a failed push.
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// Status file in the state directory.
pub const STATUS_FILE: &str = "push-status.json";
/// TSIG clock tolerance (seconds) requested in signatures.
const TSIG_FUDGE_S: u16 = 300;

/// `--push-config` file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushFile {
    #[serde(default)]
    pub rfc2136: Vec<Rfc2136File>,
    #[serde(default)]
    pub haproxy: Vec<HaproxyFile>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rfc2136File {
    pub name: String,
    /// `IP:PORT` of the primary server for the zone.
    pub server: String,
    /// Zone on that server; default: the zone fed-dns serves.
    pub zone: Option<String>,
    pub key_name: String,
    /// Base64 HMAC-SHA256 secret (as in BIND's `secret` or Knot's `secret`).
    pub key_secret: Option<String>,
    /// File holding the base64 secret instead.
    pub key_file: Option<PathBuf>,
    /// Names per UPDATE message.
    pub batch: Option<usize>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaproxyFile {
    pub name: String,
    /// Runtime API: `HOST:PORT` or `unix:/path`.
    pub runtime: String,
    /// Generated backends file HAProxy loads at start.
    pub config_file: PathBuf,
    /// Port of every site's ingress.
    pub server_port: u16,
    /// Add `check` to each server line.
    #[serde(default)]
    pub check: bool,
}

/// A validated RFC 2136 target.
#[derive(Clone)]
pub struct Rfc2136Target {
    pub name: String,
    pub server: SocketAddr,
    pub zone: Name,
    pub signer: TSigner,
    pub batch: usize,
}

/// A validated HAProxy target.
#[derive(Clone, Debug)]
pub struct HaproxyTarget {
    pub name: String,
    pub runtime: haproxy::Runtime,
    pub config_file: PathBuf,
    pub server_port: u16,
    pub check: bool,
}

/// Every push target, validated.
#[derive(Clone, Default)]
pub struct PushConfig {
    pub rfc2136: Vec<Rfc2136Target>,
    pub haproxy: Vec<HaproxyTarget>,
}

impl std::fmt::Debug for PushConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        let rfc: Vec<(&str, SocketAddr)> = self.rfc2136.iter().map(|t| (t.name.as_str(), t.server)).collect();
        f.debug_struct("PushConfig").field("rfc2136", &rfc).field("haproxy", &self.haproxy).finish()
    }
}

impl PushConfig {
    /// Reads and validates `path`; every problem is reported, prefixed with the file name.
    pub fn load(path: &Path, default_zone: &Name) -> Result<Self, Vec<String>> {
        let text = std::fs::read_to_string(path).map_err(|e| vec![format!("--push-config {}: {e}", path.display())])?;
        let file: PushFile =
            toml::from_str(&text).map_err(|e| vec![format!("--push-config {}: {e}", path.display())])?;
        Self::from_file(&file, default_zone).map_err(|problems| {
            problems.into_iter().map(|p| format!("--push-config {}: {p}", path.display())).collect()
        })
    }

    pub fn from_file(file: &PushFile, default_zone: &Name) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let mut out = PushConfig::default();
        let mut names = std::collections::BTreeSet::new();
        let mut unique = |name: &str, problems: &mut Vec<String>| {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
                problems.push(format!("target name {name:?} must be 1+ characters of [A-Za-z0-9-_.]"));
            } else if !names.insert(name.to_string()) {
                problems.push(format!("target name {name:?} is used twice"));
            }
        };
        for t in &file.rfc2136 {
            unique(&t.name, &mut problems);
            let p = |m: String| format!("rfc2136 {:?}: {m}", t.name);
            let server = t
                .server
                .parse::<SocketAddr>()
                .map_err(|_| problems.push(p(format!("server {:?} is not IP:PORT", t.server))))
                .ok();
            let zone = match &t.zone {
                None => Some(default_zone.clone()),
                Some(z) => parse_zone(z).map_err(|e| problems.push(p(format!("zone {z:?} {e}")))).ok(),
            };
            let secret = match (&t.key_secret, &t.key_file) {
                (Some(s), None) => Some(s.trim().to_string()),
                (None, Some(f)) => std::fs::read_to_string(f)
                    .map(|s| s.trim().to_string())
                    .map_err(|e| problems.push(p(format!("key_file {}: {e}", f.display()))))
                    .ok(),
                _ => {
                    problems.push(p("give exactly one of key_secret and key_file".into()));
                    None
                }
            };
            let key = secret.and_then(|s| {
                data_encoding::BASE64
                    .decode(s.as_bytes())
                    .map_err(|e| problems.push(p(format!("the TSIG secret is not base64: {e}"))))
                    .ok()
            });
            if key.as_ref().is_some_and(Vec::is_empty) {
                problems.push(p("the TSIG secret is empty".into()));
            }
            let key_name = Name::from_ascii(&t.key_name)
                .map_err(|e| problems.push(p(format!("key_name {:?}: {e}", t.key_name))))
                .ok();
            let batch = t.batch.unwrap_or(DEFAULT_BATCH);
            if !(1..=1000).contains(&batch) {
                problems.push(p(format!("batch {batch} is outside 1-1000")));
            }
            if let (Some(server), Some(zone), Some(key), Some(key_name)) = (server, zone, key, key_name) {
                match TSigner::new(key, TsigAlgorithm::HmacSha256, key_name, TSIG_FUDGE_S) {
                    Ok(signer) => out.rfc2136.push(Rfc2136Target { name: t.name.clone(), server, zone, signer, batch }),
                    Err(e) => problems.push(p(format!("cannot use the TSIG key: {e}"))),
                }
            }
        }
        for t in &file.haproxy {
            unique(&t.name, &mut problems);
            let p = |m: String| format!("haproxy {:?}: {m}", t.name);
            let runtime = haproxy::Runtime::parse(&t.runtime).map_err(|e| problems.push(p(e))).ok();
            if t.server_port == 0 {
                problems.push(p("server_port must be 1-65535".into()));
            }
            match t.config_file.parent() {
                Some(dir) if dir.as_os_str().is_empty() || dir.is_dir() => {}
                _ => problems.push(p(format!("config_file {}: its directory does not exist", t.config_file.display()))),
            }
            if let Some(runtime) = runtime {
                out.haproxy.push(HaproxyTarget {
                    name: t.name.clone(),
                    runtime,
                    config_file: t.config_file.clone(),
                    server_port: t.server_port,
                    check: t.check,
                });
            }
        }
        if problems.is_empty() { Ok(out) } else { Err(problems) }
    }

    pub fn is_empty(&self) -> bool {
        self.rfc2136.is_empty() && self.haproxy.is_empty()
    }
}

/// What one target has confirmed, shown in `push-status.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetStatus {
    pub kind: String,
    /// Routing version whose every change the target confirmed; 0 for none yet.
    pub applied_version: u64,
    /// Version being pushed.
    pub wanted_version: u64,
    /// Names (RFC 2136) or servers (HAProxy) still to confirm.
    pub pending: usize,
    /// Names or servers the target refused, with its answer; retried with backoff.
    pub failed: BTreeMap<String, String>,
    /// Last error reaching the target, cleared by the next success.
    pub last_error: Option<String>,
    /// UNIX milliseconds of the last confirmed change.
    pub last_success_ms: Option<u64>,
}

/// Status of every target, mirrored to [`STATUS_FILE`].
pub struct StatusBoard {
    path: PathBuf,
    targets: Mutex<BTreeMap<String, TargetStatus>>,
}

impl StatusBoard {
    pub fn new(state_dir: &Path) -> Self {
        Self { path: state_dir.join(STATUS_FILE), targets: Mutex::new(BTreeMap::new()) }
    }

    fn set(&self, target: &str, status: TargetStatus) {
        metrics::gauge!(M_APPLIED, "target" => target.to_string()).set(status.applied_version as f64);
        metrics::gauge!(M_PENDING, "target" => target.to_string()).set((status.pending + status.failed.len()) as f64);
        let mut all = self.targets.lock().unwrap_or_else(PoisonError::into_inner);
        all.insert(target.to_string(), status);
        let body = serde_json::to_vec_pretty(&*all).expect("status serialises");
        let tmp = self.path.with_extension("json.tmp");
        if let Err(e) = std::fs::write(&tmp, body).and_then(|()| std::fs::rename(&tmp, &self.path)) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot write the push status file");
        }
    }

    pub fn get(&self, target: &str) -> Option<TargetStatus> {
        self.targets.lock().unwrap_or_else(PoisonError::into_inner).get(target).cloned()
    }
}

/// Gauge, label `target`: routing version the target has confirmed completely.
pub const M_APPLIED: &str = "dns_push_applied_version";
/// Gauge, label `target`: names or servers not yet confirmed (pending or refused).
pub const M_PENDING: &str = "dns_push_pending";
/// Counter, label `target`: failed pushes (unreachable, refused, bad signature).
pub const M_FAILURES: &str = "dns_push_failures_total";

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Starts one task per target; they run until aborted.
pub fn start(
    config: PushConfig,
    shared: Arc<SharedTable>,
    board: Arc<StatusBoard>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for target in config.rfc2136 {
        let pusher = Rfc2136Pusher { target, pushed: rfc2136::Desired::new(), id: 1 };
        tasks.push(tokio::spawn(run(pusher, shared.clone(), board.clone())));
    }
    for target in config.haproxy {
        let pusher = HaproxyPusher { target, applied: haproxy::Weights::new() };
        tasks.push(tokio::spawn(run(pusher, shared.clone(), board.clone())));
    }
    tasks
}

/// One push target's state and its way of bringing the target up to a table.
trait Pusher: Send + 'static {
    fn name(&self) -> &str;
    fn kind(&self) -> &'static str;
    /// One pass over everything that differs; true when the target now holds the whole table.
    fn round(&mut self, table: &Table, status: &mut TargetStatus) -> impl std::future::Future<Output = bool> + Send;
}

/// Runs `pusher` on every new table, retrying with backoff until it holds the whole table.
async fn run<P: Pusher>(mut pusher: P, shared: Arc<SharedTable>, board: Arc<StatusBoard>) {
    let mut changed = shared.subscribe();
    let mut backoff = Backoff::new(RETRY_MIN, RETRY_MAX);
    let mut status = TargetStatus { kind: pusher.kind().into(), ..TargetStatus::default() };
    loop {
        changed.borrow_and_update();
        let retry = match shared.current() {
            None => None,
            Some(table) => {
                let complete = pusher.round(&table, &mut status).await;
                board.set(pusher.name(), status.clone());
                if complete {
                    backoff.reset();
                    None
                } else {
                    metrics::counter!(M_FAILURES, "target" => pusher.name().to_string()).increment(1);
                    Some(backoff.next_delay())
                }
            }
        };
        next_round(&mut changed, retry).await;
    }
}

/// Waits for a new table, or for `retry` when something is left to push.
async fn next_round(changed: &mut tokio::sync::watch::Receiver<u64>, retry: Option<Duration>) {
    match retry {
        Some(delay) => {
            let _ = tokio::time::timeout(delay, changed.changed()).await;
        }
        None => {
            if changed.changed().await.is_err() {
                // The server is shutting down; nothing will change again.
                std::future::pending::<()>().await;
            }
        }
    }
}

struct Rfc2136Pusher {
    target: Rfc2136Target,
    /// What the server confirmed, per name.
    pushed: rfc2136::Desired,
    id: u16,
}

impl Pusher for Rfc2136Pusher {
    fn name(&self) -> &str {
        &self.target.name
    }

    fn kind(&self) -> &'static str {
        "rfc2136"
    }

    async fn round(&mut self, table: &Table, status: &mut TargetStatus) -> bool {
        push_rfc2136_round(&self.target, table, &mut self.pushed, status, &mut self.id).await
    }
}

async fn push_rfc2136_round(
    target: &Rfc2136Target,
    table: &Table,
    pushed: &mut rfc2136::Desired,
    status: &mut TargetStatus,
    id: &mut u16,
) -> bool {
    let desired = rfc2136::desired(table, &target.zone);
    let todo = rfc2136::changes(&desired, pushed);
    status.wanted_version = table.version();
    status.failed.clear();
    let mut unreachable = None;
    for batch in todo.chunks(target.batch) {
        if unreachable.is_some() {
            break;
        }
        match send(target, batch, id).await {
            Ok(()) => confirm(pushed, batch, status),
            Err(e) if e.is_refusal() && batch.len() > 1 => {
                // Find the names the server refuses; the others go in one by one.
                tracing::warn!(target = %target.name, error = %e, names = batch.len(), "update refused; retrying its names one by one");
                for one in batch {
                    match send(target, std::slice::from_ref(one), id).await {
                        Ok(()) => confirm(pushed, std::slice::from_ref(one), status),
                        Err(e) if e.is_refusal() => {
                            status.failed.insert(one.name.to_ascii(), e.to_string());
                        }
                        Err(e) => {
                            unreachable = Some(e.to_string());
                            break;
                        }
                    }
                }
            }
            Err(e) if e.is_refusal() => {
                status.failed.insert(batch[0].name.to_ascii(), e.to_string());
            }
            Err(e) => unreachable = Some(e.to_string()),
        }
    }
    let left = rfc2136::changes(&desired, pushed).len();
    status.pending = left.saturating_sub(status.failed.len());
    for (name, error) in &status.failed {
        tracing::error!(target = %target.name, %name, %error, "the server refused this name's update");
    }
    match unreachable {
        Some(e) => {
            tracing::error!(target = %target.name, error = %e, pending = left, "cannot push to the DNS server; retrying");
            status.last_error = Some(e);
        }
        None if left == 0 => {
            status.last_error = None;
            if status.applied_version != table.version() {
                tracing::info!(target = %target.name, version = table.version(), changed = todo.len(), "routing table pushed");
            }
            status.applied_version = table.version();
        }
        None => {}
    }
    left == 0
}

async fn send(target: &Rfc2136Target, batch: &[rfc2136::Change], id: &mut u16) -> Result<(), rfc2136::UpdateError> {
    *id = id.wrapping_add(1);
    let message = rfc2136::update_message(*id, &target.zone, batch);
    rfc2136::send_update(target.server, message, &target.signer, now_ms() / 1000).await
}

fn confirm(pushed: &mut rfc2136::Desired, batch: &[rfc2136::Change], status: &mut TargetStatus) {
    for change in batch {
        if change.records.is_empty() {
            pushed.remove(&change.name);
        } else {
            pushed.insert(change.name.clone(), change.records.clone());
        }
    }
    status.last_success_ms = Some(now_ms());
}

struct HaproxyPusher {
    target: HaproxyTarget,
    /// Weights HAProxy confirmed, per backend and server.
    applied: haproxy::Weights,
}

impl Pusher for HaproxyPusher {
    fn name(&self) -> &str {
        &self.target.name
    }

    fn kind(&self) -> &'static str {
        "haproxy"
    }

    async fn round(&mut self, table: &Table, status: &mut TargetStatus) -> bool {
        push_haproxy_round(&self.target, table, &mut self.applied, status).await
    }
}

async fn push_haproxy_round(
    target: &HaproxyTarget,
    table: &Table,
    applied: &mut haproxy::Weights,
    status: &mut TargetStatus,
) -> bool {
    let want = haproxy::weights(table);
    status.wanted_version = table.version();
    status.failed.clear();
    // The file first: whatever happens to the runtime API, a restart starts from the new weights.
    let text = haproxy::config_file(&want, table.version(), target.server_port, target.check);
    if let Err(e) = haproxy::write_config(&target.config_file, &text) {
        status.last_error = Some(format!("cannot write {}: {e}", target.config_file.display()));
        tracing::error!(target = %target.name, error = %e, "cannot write the HAProxy configuration file");
        return false;
    }
    let todo = haproxy::commands(&want, applied);
    let mut unreachable = None;
    for (backend, server, weight) in &todo {
        let line = format!("set weight {backend}/{server} {weight}");
        match haproxy::command(&target.runtime, &line).await {
            Ok(answer) if answer.is_empty() => {
                let s = want[backend][server].clone();
                applied.entry(backend.clone()).or_default().insert(server.clone(), s);
                status.last_success_ms = Some(now_ms());
            }
            Ok(answer) => {
                // Typically "No such server": the running HAProxy predates this server and
                // needs a reload to load the file.
                status.failed.insert(
                    format!("{backend}/{server}"),
                    format!("{answer} (reload HAProxy to load {})", target.config_file.display()),
                );
            }
            Err(e) => {
                unreachable = Some(format!("runtime API {:?}: {e}", target.runtime));
                break;
            }
        }
    }
    let left = haproxy::commands(&want, applied).len();
    status.pending = left.saturating_sub(status.failed.len());
    match unreachable {
        Some(e) => {
            tracing::error!(target = %target.name, error = %e, pending = left, "cannot set HAProxy weights; retrying");
            status.last_error = Some(e);
        }
        None if left == 0 => {
            status.last_error = None;
            if status.applied_version != table.version() {
                tracing::info!(target = %target.name, version = table.version(), commands = todo.len(), "HAProxy weights set");
            }
            status.applied_version = table.version();
        }
        None => {
            for (server, error) in &status.failed {
                tracing::error!(target = %target.name, %server, %error, "HAProxy refused a weight");
            }
        }
    }
    left == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone() -> Name {
        Name::from_ascii("fed.local.").unwrap()
    }

    #[test]
    fn a_valid_file_gives_targets_with_defaults() {
        let file: PushFile = toml::from_str(
            "[[rfc2136]]\nname = \"bind\"\nserver = \"127.0.0.1:53\"\nkey_name = \"k\"\nkey_secret = \"c2VjcmV0\"\n\
             [[haproxy]]\nname = \"lb\"\nruntime = \"unix:/run/h.sock\"\nconfig_file = \"sw.cfg\"\nserver_port = 80\n",
        )
        .unwrap();
        let c = PushConfig::from_file(&file, &zone()).unwrap();
        assert_eq!(c.rfc2136[0].zone, zone());
        assert_eq!(c.rfc2136[0].batch, DEFAULT_BATCH);
        assert_eq!(c.haproxy[0].runtime, haproxy::Runtime::Unix("/run/h.sock".into()));
        assert!(!format!("{c:?}").contains("c2VjcmV0"), "key material never printed");
    }

    #[test]
    fn every_problem_is_reported() {
        let file: PushFile = toml::from_str(
            "[[rfc2136]]\nname = \"x\"\nserver = \"nowhere\"\nzone = \"bad..zone\"\nkey_name = \"k\"\nkey_secret = \"%%%\"\nbatch = 0\n\
             [[rfc2136]]\nname = \"x\"\nserver = \"127.0.0.1:53\"\nkey_name = \"k\"\n\
             [[haproxy]]\nname = \"lb\"\nruntime = \"somewhere\"\nconfig_file = \"/no/such/dir/sw.cfg\"\nserver_port = 0\n",
        )
        .unwrap();
        let problems = PushConfig::from_file(&file, &zone()).unwrap_err().join("\n");
        for expected in [
            "server \"nowhere\" is not IP:PORT",
            "zone \"bad..zone\"",
            "not base64",
            "batch 0 is outside 1-1000",
            "target name \"x\" is used twice",
            "give exactly one of key_secret and key_file",
            "neither HOST:PORT nor unix:/path",
            "server_port must be 1-65535",
            "its directory does not exist",
        ] {
            assert!(problems.contains(expected), "missing {expected:?} in:\n{problems}");
        }
        assert!(
            toml::from_str::<PushFile>("[[rfc2136]]\nname = \"x\"\nsurprise = 1\n").is_err(),
            "unknown fields refused"
        );
    }
}
