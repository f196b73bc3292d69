//! `fedctl up`, `down` and `restart`: a complete federation on loopback, made of the real
//! binaries as separate processes, recorded in `DIR/cluster.json` so scripts can find them.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use switchyard_core::EngineConfig;
use switchyard_core::model::{AppSpec, GroupSpec, HealthSpec, MetricsSpec, Resources, SiteSpec};
use switchyard_proto::operator::v1 as pb;
use switchyard_tls::{CertAuthority, Identity, Role, TlsFiles};

use crate::CliError;
use crate::client::{ClientConfig, connect};

pub const CLUSTER_FILE: &str = "cluster.json";
pub const ZONE: &str = "fed.local.";
/// Ports nodes assign to app instances (below Linux's ephemeral range, which starts at 32768).
const TASK_PORT_MIN: u16 = 31_000;
const TASK_PORT_MAX: u16 = 31_999;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Proc {
    /// Unique name (`federator`, `cell-site-1`, `node-site-1-1`, `dns-1`).
    pub name: String,
    pub role: String,
    pub site: Option<String>,
    pub pid: u32,
    /// What the process listens on, by purpose (`grpc`, `dns`, `metrics`).
    pub listen: BTreeMap<String, String>,
    pub argv: Vec<String>,
    pub log: PathBuf,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: String,
    pub address: String,
    pub work_dir: PathBuf,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SiteInfo {
    pub name: String,
    pub ingress: Vec<String>,
    /// HTTP port of the site's ingress proxy (HAProxy) on its ingress address, when started.
    #[serde(default)]
    pub ingress_port: Option<u16>,
    pub cell: String,
    pub nodes: Vec<NodeInfo>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DnsInfo {
    pub address: String,
    pub zone: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterFile {
    pub version: u32,
    pub dir: PathBuf,
    pub federator: String,
    pub dns: DnsInfo,
    pub sites: Vec<SiteInfo>,
    pub groups: Vec<String>,
    pub processes: Vec<Proc>,
}

impl ClusterFile {
    pub fn load(dir: &Path) -> Result<Option<Self>, CliError> {
        let path = dir.join(CLUSTER_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| CliError::Usage(format!("{} is not a fedctl cluster file: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(CliError::Usage(format!("cannot read {}: {e}", path.display()))),
        }
    }

    fn save(&self, dir: &Path) -> Result<(), CliError> {
        let tmp = dir.join(format!("{CLUSTER_FILE}.tmp"));
        std::fs::write(&tmp, serde_json::to_string_pretty(self).expect("serializes")).map_err(io)?;
        std::fs::rename(&tmp, dir.join(CLUSTER_FILE)).map_err(io)
    }
}

fn io(e: std::io::Error) -> CliError {
    CliError::Failed(e.to_string())
}

/// Whether `pid` is a live process (a zombie counts as gone).
pub fn is_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()) != Some("Z"),
        Err(_) => false,
    }
}

/// Whether `pid` still runs the command line fedctl started it with, so that a pid the
/// kernel has since given to an unrelated process is never signalled.
fn runs(pid: u32, argv: &[String]) -> bool {
    let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let parts: Vec<&[u8]> = raw.split(|b| *b == 0).filter(|p| !p.is_empty()).collect();
    is_alive(pid) && parts.len() == argv.len() + 1 && parts[1..].iter().zip(argv).all(|(a, b)| *a == b.as_bytes())
}

/// The pids of `procs` that are still the processes fedctl started.
fn ours<'a>(procs: impl IntoIterator<Item = &'a Proc>) -> Vec<u32> {
    procs.into_iter().filter(|p| runs(p.pid, &p.argv)).map(|p| p.pid).collect()
}

#[derive(Clone, Copy)]
enum Target {
    Process,
    /// The whole process group led by the pid (app instances run in their own groups).
    Group,
}

fn signal(pid: u32, sig: nix::sys::signal::Signal, target: Target) {
    if let Ok(pid) = i32::try_from(pid) {
        let pid = nix::unistd::Pid::from_raw(pid);
        let _ = match target {
            Target::Process => nix::sys::signal::kill(pid, sig),
            Target::Group => nix::sys::signal::killpg(pid, sig),
        };
    }
}

/// SIGTERM, then SIGKILL whatever is still alive after `grace`.
fn stop_all(pids: &[u32], grace: Duration) {
    stop_targets(pids, grace, Target::Process);
}

fn stop_targets(pids: &[u32], grace: Duration, target: Target) {
    use nix::sys::signal::Signal;
    for &p in pids {
        if is_alive(p) {
            signal(p, Signal::SIGTERM, target);
        }
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && pids.iter().any(|&p| is_alive(p)) {
        std::thread::sleep(Duration::from_millis(50));
    }
    for &p in pids {
        if is_alive(p) {
            signal(p, Signal::SIGKILL, target);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline && pids.iter().any(|&p| is_alive(p)) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn free_port(ip: IpAddr) -> Result<u16, CliError> {
    // Ask the kernel for a port that is free for both TCP and UDP (DNS needs both).
    for _ in 0..50 {
        let tcp = TcpListener::bind(SocketAddr::new(ip, 0)).map_err(|e| CliError::Failed(format!("bind {ip}: {e}")))?;
        let port = tcp.local_addr().map_err(io)?.port();
        if UdpSocket::bind(SocketAddr::new(ip, port)).is_ok() {
            return Ok(port);
        }
    }
    Err(CliError::Failed(format!("no free port on {ip}")))
}

fn binary_dir() -> Result<PathBuf, CliError> {
    let exe = std::env::current_exe().map_err(io)?;
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    for bin in ["federator", "dc-agent", "fed-dns", "sample-app"] {
        if !dir.join(bin).is_file() {
            return Err(CliError::Usage(format!(
                "{} is missing next to fedctl; build every binary first: cargo build --release (or cargo build)",
                dir.join(bin).display()
            )));
        }
    }
    Ok(dir)
}

fn spawn(name: &str, bin: &Path, argv: &[String], logs: &Path) -> Result<(u32, PathBuf), CliError> {
    let log = logs.join(format!("{name}.log"));
    let out = File::options().create(true).append(true).open(&log).map_err(io)?;
    let err = out.try_clone().map_err(io)?;
    let child = Command::new(bin)
        .args(argv)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        // Own process group: a Ctrl-C aimed at the shell does not take the federation down.
        .process_group(0)
        .spawn()
        .map_err(|e| CliError::Failed(format!("cannot start {}: {e}", bin.display())))?;
    Ok((child.id(), log))
}

#[derive(Serialize)]
struct FederatorToml<'a> {
    node_id: u64,
    listen: String,
    metrics_listen: String,
    data_dir: PathBuf,
    zone: &'a str,
    tls: &'a TlsFiles,
    engine: EngineConfig,
    #[serde(skip_serializing_if = "Option::is_none")]
    dr: Option<DrToml>,
    sites: &'a [SiteSpec],
    groups: &'a [GroupSpec],
    #[serde(skip_serializing_if = "Vec::is_empty")]
    peers: Vec<PeerToml>,
}

/// The federator's failure detection: each site's ingress as its probes, how often it probes,
/// and the detection window.
#[derive(Serialize)]
struct DrToml {
    probe_interval_ms: u64,
    probes: BTreeMap<String, String>,
    detect: switchyard_core::dr::detect::DetectConfig,
}

/// How fast a dead site is declared down (`fedctl up --detect-window-ms`, `--probe-interval-ms`,
/// `--detect-stale-ms`): the federator's `[dr]` settings and fed-dns's `--observe-interval-ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Detection {
    /// How long both observers must see a site refused before it is declared down.
    pub window_ms: u64,
    /// How often each observer probes each site (the federator and fed-dns alike).
    pub probe_interval_ms: u64,
    /// An observer not heard from for this long is not evidence.
    pub stale_ms: u64,
}

impl Default for Detection {
    fn default() -> Self {
        let d = switchyard_core::dr::detect::DetectConfig::default();
        Self { window_ms: d.window_ms, probe_interval_ms: 1_000, stale_ms: d.stale_ms }
    }
}

impl Detection {
    /// Observer probe intervals the federator and fed-dns accept.
    pub const PROBE_INTERVAL_MS: std::ops::RangeInclusive<u64> = 50..=60_000;
    /// Longest detection window the federator accepts (an hour).
    pub const MAX_WINDOW_MS: u64 = 3_600_000;

    /// Every problem with these settings (the rules the federator checks of its `[dr]`), so
    /// that `fedctl up` refuses them before starting anything.
    pub fn problems(&self) -> Vec<String> {
        let (window, interval, stale) = (self.window_ms, self.probe_interval_ms, self.stale_ms);
        let mut p = Vec::new();
        if !Self::PROBE_INTERVAL_MS.contains(&interval) {
            p.push(format!(
                "--probe-interval-ms {interval} is outside {}-{} ms",
                Self::PROBE_INTERVAL_MS.start(),
                Self::PROBE_INTERVAL_MS.end()
            ));
        }
        if window < interval || window > Self::MAX_WINDOW_MS {
            p.push(format!(
                "--detect-window-ms {window} must be at least --probe-interval-ms ({interval}), so that one \
                 refused probe never declares a site down, and at most {} ms",
                Self::MAX_WINDOW_MS
            ));
        }
        if stale <= interval {
            p.push(format!(
                "--detect-stale-ms {stale} must exceed --probe-interval-ms ({interval}), or observations go stale \
                 between two probes and never count"
            ));
        }
        p
    }

    fn dr(&self, probes: BTreeMap<String, String>) -> DrToml {
        DrToml {
            probes,
            probe_interval_ms: self.probe_interval_ms,
            detect: switchyard_core::dr::detect::DetectConfig {
                window_ms: self.window_ms,
                stale_ms: self.stale_ms,
                ..Default::default()
            },
        }
    }
}

/// What observers probe of each site: its ingress proxy, when it has one.
fn site_probes(sites: &[SiteInfo]) -> BTreeMap<String, String> {
    sites.iter().filter_map(|s| s.ingress_port.map(|p| (s.name.clone(), format!("{}:{p}", s.ingress[0])))).collect()
}

#[derive(Serialize)]
struct PeerToml {
    node_id: u64,
    address: String,
}

/// What one node offers to its cell (`dc-agent node --cpu-millis/--mem-mib/--disk-mib`).
const NODE_CAPACITY: Resources = Resources { cpu_millis: 2000, mem_mib: 2048, disk_mib: 10240 };

/// Resources of one sample-app instance, unless a groups file says otherwise.
const SAMPLE_RESOURCES: Resources = Resources { cpu_millis: 100, mem_mib: 64, disk_mib: 0 };

fn sample_health() -> HealthSpec {
    HealthSpec {
        http_path: "/health".into(),
        interval_ms: 500,
        timeout_ms: 500,
        grace_ms: 3000,
        max_failures: 3,
        ..Default::default()
    }
}

/// What the sample app exposes, so adding an [apps.autoscale] policy is all it takes.
fn sample_metrics() -> MetricsSpec {
    MetricsSpec {
        path: "/metrics".into(),
        concurrency: "switchyard_sample_in_flight_requests".into(),
        requests_total: "switchyard_sample_requests_total".into(),
        request_ms_total: "switchyard_sample_request_ms_total".into(),
    }
}

fn sample_groups(home: &str) -> Vec<GroupSpec> {
    let app = |name: &str, instances: u32| AppSpec {
        name: name.into(),
        command: "sample-app".into(),
        args: vec![],
        env: BTreeMap::new(),
        instances,
        resources: SAMPLE_RESOURCES,
        health: sample_health(),
        readiness: None,
        depends_on: vec![],
        constraints: vec![],
        upgrade: Default::default(),
        autoscale: None,
        metrics: sample_metrics(),
    };
    vec![
        GroupSpec {
            name: "crm-web".into(),
            dns_name: "crm-web".into(),
            dns_aliases: vec![],
            ttl_s: 5,
            tier: 1,
            home_site: home.into(),
            tenant: String::new(),
            depends_on: vec![],
            ramp: Default::default(),
            failover: Default::default(),
            warm_standby: Default::default(),
            apps: vec![app("web", 2)],
        },
        GroupSpec {
            name: "mobile-app".into(),
            dns_name: "mobile-app".into(),
            dns_aliases: vec![],
            ttl_s: 5,
            tier: 2,
            home_site: home.into(),
            tenant: String::new(),
            depends_on: vec![],
            ramp: Default::default(),
            failover: Default::default(),
            warm_standby: Default::default(),
            apps: vec![app("api", 2)],
        },
    ]
}

/// Default DNS TTL of a group from a groups file.
const GROUPS_FILE_TTL_S: u32 = 5;

/// Reads `fedctl up --groups-file FILE`: the app groups to run instead of the demo groups.
///
/// The file holds `[[groups]]` tables in the form of the federator's group spec
/// (`switchyard_core::model::GroupSpec`, what `fedctl group show` prints), unknown fields
/// refused, with these defaults so that a small group takes a few lines:
///
/// | field | default |
/// |---|---|
/// | `dns_name` | the group's `name` |
/// | `ttl_s` | 5 |
/// | `home_site` | `site-1` |
/// | `apps` | one app named `web` with the defaults below |
/// | app `command` | `sample-app`, and then `health` and `metrics` default to the demo groups' |
/// | app `instances` | 1 |
/// | app `resources` | `{ cpu_millis = 100, mem_mib = 64 }` |
///
/// Every problem is reported at once, before anything starts: each group must be a valid spec
/// (`validate_group`), names and DNS names unique, `home_site` one of `sites`, `depends_on`
/// naming groups of the file without a cycle, and each site's groups must fit on its nodes.
pub fn load_groups_file(path: &Path, sites: &[String], nodes_per_site: u32) -> Result<Vec<GroupSpec>, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Usage(format!("cannot read groups file {}: {e}", path.display())))?;
    parse_groups(&text, sites, nodes_per_site).map_err(|problems| {
        CliError::Usage(format!("groups file {} is not valid:\n  - {}", path.display(), problems.join("\n  - ")))
    })
}

/// The groups of a groups file's `text`, or every problem with it.
fn parse_groups(text: &str, sites: &[String], nodes_per_site: u32) -> Result<Vec<GroupSpec>, Vec<String>> {
    let doc: toml::Table = toml::from_str(text).map_err(|e| vec![format!("not TOML: {e}")])?;
    let mut problems: Vec<String> =
        doc.keys().filter(|k| *k != "groups").map(|k| format!("unknown key {k:?}: only [[groups]] tables")).collect();
    let tables = match doc.get("groups") {
        None => return Err(vec!["it declares no [[groups]]".into()]),
        Some(toml::Value::Array(a)) if !a.is_empty() => a,
        Some(_) => return Err(vec!["`groups` must be one or more [[groups]] tables".into()]),
    };
    let mut groups = Vec::new();
    for (i, value) in tables.iter().enumerate() {
        let Some(table) = value.as_table() else {
            problems.push(format!("groups[{i}] is not a table"));
            continue;
        };
        let label = match table.get("name").and_then(toml::Value::as_str) {
            Some(name) => format!("group {name:?}"),
            None => format!("groups[{i}]"),
        };
        match group_with_defaults(table.clone(), &sites[0]) {
            Ok(g) => groups.push(g),
            Err(e) => problems.push(format!("{label}: {e}")),
        }
    }
    let names: std::collections::BTreeSet<&str> = groups.iter().map(|g| g.name.as_str()).collect();
    let (mut seen, mut dns) = (std::collections::BTreeSet::new(), BTreeMap::new());
    for g in &groups {
        if !seen.insert(g.name.as_str()) {
            problems.push(format!("group {:?} is declared twice", g.name));
        }
        for label in g.dns_names() {
            if let Some(other) = dns.insert(label, g.name.as_str()) {
                problems.push(format!("group {:?}: DNS name {label:?} is already used by group {other:?}", g.name));
            }
        }
        if !sites.contains(&g.home_site) {
            problems.push(format!(
                "group {:?}: home_site {:?} is not a site fedctl up creates ({})",
                g.name,
                g.home_site,
                sites.join(", ")
            ));
        }
        for d in g.depends_on.iter().filter(|d| !names.contains(d.as_str())) {
            problems.push(format!("group {:?} depends on {d:?}, which is not a group of the file", g.name));
        }
        problems.extend(switchyard_core::model::validate_group(g));
    }
    if let Some(cycle) = group_cycle(&groups) {
        problems.push(format!("groups depend on each other in a cycle: {}", cycle.join(" -> ")));
    }
    for site in sites {
        let on_site: Vec<&GroupSpec> = groups.iter().filter(|g| g.home_site == *site).collect();
        let need = on_site
            .iter()
            .flat_map(|g| &g.apps)
            .map(|a| a.resources.times(a.instances))
            .fold(Resources::default(), Resources::plus);
        let have = NODE_CAPACITY.times(nodes_per_site);
        if !need.fits_in(have) {
            problems.push(format!(
                "the groups whose home_site is {site} need {need}, more than its {nodes_per_site} nodes offer ({have})"
            ));
        }
        for g in on_site {
            for a in g.apps.iter().filter(|a| a.instances > 0 && !a.resources.fits_in(NODE_CAPACITY)) {
                problems.push(format!(
                    "group {:?}: one instance of app {:?} needs {}, more than a node offers ({NODE_CAPACITY})",
                    g.name, a.name, a.resources
                ));
            }
        }
    }
    if problems.is_empty() { Ok(groups) } else { Err(problems) }
}

/// One `[[groups]]` table with the file format's defaults filled in, as a group spec.
fn group_with_defaults(mut t: toml::Table, first_site: &str) -> Result<GroupSpec, String> {
    let name = t.get("name").cloned();
    if let Some(name) = name {
        t.entry("dns_name").or_insert(name);
    }
    t.entry("ttl_s").or_insert(toml::Value::Integer(i64::from(GROUPS_FILE_TTL_S)));
    t.entry("home_site").or_insert(toml::Value::String(first_site.to_string()));
    let apps = t.entry("apps").or_insert_with(|| {
        toml::Value::Array(vec![toml::Value::Table(toml::Table::from_iter([("name".to_string(), "web".into())]))])
    });
    let toml::Value::Array(apps) = apps else { return Err("`apps` must be [[groups.apps]] tables".into()) };
    for app in apps.iter_mut() {
        let toml::Value::Table(app) = app else { return Err("`apps` must be [[groups.apps]] tables".into()) };
        if !app.contains_key("command") {
            app.insert("command".into(), "sample-app".into());
            let health = toml::Value::try_from(sample_health()).expect("a health spec is TOML");
            app.entry("health").or_insert(health);
            let metrics = toml::Value::try_from(sample_metrics()).expect("a metrics spec is TOML");
            app.entry("metrics").or_insert(metrics);
        }
        app.entry("instances").or_insert(toml::Value::Integer(1));
        let resources = toml::Value::try_from(SAMPLE_RESOURCES).expect("resources are TOML");
        app.entry("resources").or_insert(resources);
    }
    toml::Value::Table(t).try_into::<GroupSpec>().map_err(|e| e.to_string().trim().to_string())
}

/// A `depends_on` cycle among `groups`, as the names around it, if there is one.
fn group_cycle(groups: &[GroupSpec]) -> Option<Vec<String>> {
    let deps: BTreeMap<&str, &[String]> = groups.iter().map(|g| (g.name.as_str(), g.depends_on.as_slice())).collect();
    // Depth-first, with the current path: a dependency on the path closes a cycle.
    fn visit<'a>(
        n: &'a str,
        deps: &BTreeMap<&'a str, &'a [String]>,
        done: &mut std::collections::BTreeSet<&'a str>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|p| *p == n) {
            let mut cycle: Vec<String> = path[start..].iter().map(|s| s.to_string()).collect();
            cycle.push(n.to_string());
            return Some(cycle);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n);
        for d in deps.get(n).copied().unwrap_or(&[]) {
            if d != n
                && deps.contains_key(d.as_str())
                && let Some(c) = visit(d.as_str(), deps, done, path)
            {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n);
        None
    }
    let mut done = std::collections::BTreeSet::new();
    deps.keys().find_map(|n| visit(n, &deps, &mut done, &mut Vec::new()))
}

pub struct UpArgs {
    pub dir: PathBuf,
    pub sites: u32,
    pub nodes_per_site: u32,
    pub timeout: Duration,
    /// Start an HAProxy per site on its ingress address (when `haproxy` is installed).
    pub ingress: bool,
    /// Federator replicas (1 = a single node; 3 or 5 = a Raft cluster).
    pub federators: u32,
    /// App groups to run instead of the demo groups (see [`load_groups_file`]).
    pub groups_file: Option<PathBuf>,
    /// Failure-detection timing of both observers.
    pub detection: Detection,
    /// One more fed-dns in each site, in that site's failure domain.
    pub dns_per_site: bool,
}

/// `name` found in a directory of `PATH`.
fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}

/// A port free on every site's ingress address, so one port serves all sites.
fn ingress_port(ips: &[IpAddr]) -> Result<u16, CliError> {
    for _ in 0..50 {
        let port = free_port(ips[0])?;
        if ips.iter().all(|ip| TcpListener::bind(SocketAddr::new(*ip, port)).is_ok()) {
            return Ok(port);
        }
    }
    Err(CliError::Failed("no port is free on every site's ingress address".into()))
}

/// The backend an app's tasks are published to by its cell (see `dc-agent cell --haproxy-socket`).
fn backend_name(group: &str, app: &str) -> String {
    format!("be_{group}_{app}")
}

/// HAProxy configuration of one site's ingress: requests are routed by Host header
/// (`<dns_name>.<zone>` and each of the group's `dns_aliases`, with or without the final dot
/// or a port) to the group's first app; backends start empty and are filled by the cell
/// through the runtime API on `socket`.
fn haproxy_config(socket: &Path, bind: SocketAddr, groups: &[GroupSpec]) -> String {
    let mut cfg = format!(
        "global\n    stats socket {} mode 600 level admin\n    stats timeout 10s\n\
         defaults\n    mode http\n    timeout connect 2s\n    timeout client 30s\n    timeout server 30s\n    \
         retries 2\n    option redispatch\n\
         frontend fe_ingress\n    bind {bind}\n",
        socket.display()
    );
    for g in groups {
        let hosts: Vec<String> = g
            .dns_names()
            .flat_map(|label| {
                let host = format!("{label}.{}", ZONE.trim_end_matches('.'));
                [host.clone(), format!("{host}.")]
            })
            .collect();
        cfg.push_str(&format!("    acl host_{} hdr(host),field(1,:) -i {}\n", g.name, hosts.join(" ")));
        if let Some(app) = g.apps.first() {
            cfg.push_str(&format!("    use_backend {} if host_{}\n", backend_name(&g.name, &app.name), g.name));
        }
    }
    for g in groups {
        for app in &g.apps {
            cfg.push_str(&format!("backend {}\n    balance roundrobin\n", backend_name(&g.name, &app.name)));
        }
    }
    cfg
}

/// Starts the federation and waits until it is healthy. On failure everything started is
/// stopped again and the error names what was not ready and where the logs are.
pub async fn up(args: UpArgs) -> Result<(), CliError> {
    if !(1..=9).contains(&args.sites) {
        return Err(CliError::Usage(format!("--sites must be between 1 and 9, not {}", args.sites)));
    }
    if !(1..=8).contains(&args.nodes_per_site) {
        return Err(CliError::Usage(format!("--nodes-per-site must be between 1 and 8, not {}", args.nodes_per_site)));
    }
    let problems = args.detection.problems();
    if !problems.is_empty() {
        return Err(CliError::Usage(format!("bad detection settings:\n  - {}", problems.join("\n  - "))));
    }
    let site_names: Vec<String> = (1..=args.sites).map(|i| format!("site-{i}")).collect();
    let groups = match &args.groups_file {
        Some(path) => load_groups_file(path, &site_names, args.nodes_per_site)?,
        None => sample_groups(&site_names[0]),
    };
    std::fs::create_dir_all(&args.dir).map_err(io)?;
    let dir = args.dir.canonicalize().map_err(io)?;
    if let Some(existing) = ClusterFile::load(&dir)?
        && !ours(&existing.processes).is_empty()
    {
        return Err(CliError::Usage(format!(
            "a federation is already running from {}; stop it with `fedctl down --dir {}`",
            dir.display(),
            dir.display()
        )));
    }
    let bins = binary_dir()?;
    // The loopback layout is fixed (sites on 127.0.N.0/24, task ports 31000-31999): a second
    // federation on the same machine would fight the first one over the same ports.
    let probe = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 1, 11)), TASK_PORT_MIN);
    if TcpListener::bind(probe).is_err() {
        return Err(CliError::Usage(format!(
            "{probe} is in use: another local federation (or another program) holds the task addresses; \
             stop it first (fedctl down --dir DIR) - one local federation runs per machine"
        )));
    }
    // A fresh federation each time: old state and logs go, the CA stays.
    for sub in ["data", "logs"] {
        let _ = std::fs::remove_dir_all(dir.join(sub));
    }
    let (certs, data, logs) = (dir.join("certs"), dir.join("data"), dir.join("logs"));
    for d in [&certs, &data, &logs] {
        std::fs::create_dir_all(d).map_err(io)?;
    }
    let ca = match CertAuthority::load(&certs) {
        Ok(ca) => ca,
        Err(_) => {
            let ca = CertAuthority::generate("Switchyard local CA").map_err(|e| CliError::Failed(e.to_string()))?;
            ca.save(&certs).map_err(|e| CliError::Failed(e.to_string()))?;
            ca
        }
    };
    let issue = |stem: &str, role: Role, name: &str, hosts: &[String]| -> Result<TlsFiles, CliError> {
        let id = Identity::new(role, name).map_err(|e| CliError::Failed(e.to_string()))?;
        ca.issue_to_dir(&certs, stem, &id, hosts).map_err(|e| CliError::Failed(e.to_string()))
    };
    let tls_args = |t: &TlsFiles| {
        vec![
            "--tls-ca".to_string(),
            t.ca.display().to_string(),
            "--tls-cert".into(),
            t.cert.display().to_string(),
            "--tls-key".into(),
            t.key.display().to_string(),
        ]
    };
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);

    // The plan: addresses of every site, node and daemon.
    let mut sites = Vec::new();
    let mut site_specs = Vec::new();
    for (i, name) in site_names.iter().enumerate() {
        let n = i + 1;
        let ingress = format!("127.0.{n}.1");
        let cell_ip: IpAddr = ingress.parse().expect("valid");
        let cell = SocketAddr::new(cell_ip, free_port(cell_ip)?).to_string();
        let nodes = (1..=args.nodes_per_site)
            .map(|j| NodeInfo {
                id: format!("{name}-node-{j}"),
                address: format!("127.0.{n}.{}", 10 + j),
                work_dir: data.join(format!("{name}-node-{j}")),
            })
            .collect();
        site_specs.push(SiteSpec {
            name: name.clone(),
            ingress: vec![cell_ip],
            labels: BTreeMap::from([("region".to_string(), format!("local-{n}"))]),
        });
        sites.push(SiteInfo { name: name.clone(), ingress: vec![ingress], ingress_port: None, cell, nodes });
    }
    let haproxy = if args.ingress { which("haproxy") } else { None };
    if args.ingress && haproxy.is_none() {
        eprintln!(
            "note: haproxy is not installed, so the sites get no ingress proxy; DNS still answers. \
             Install it (apt-get install haproxy) for the full DNS -> ingress -> instance path."
        );
    }
    if haproxy.is_some() {
        let ips: Vec<IpAddr> = sites.iter().map(|s| s.ingress[0].parse().expect("valid")).collect();
        let port = ingress_port(&ips)?;
        for s in &mut sites {
            s.ingress_port = Some(port);
        }
    }
    let mut fed_addrs = Vec::new();
    for _ in 0..args.federators.max(1) {
        fed_addrs.push(SocketAddr::new(loopback, free_port(loopback)?));
    }
    let fed_urls: Vec<String> = fed_addrs.iter().map(|a| format!("https://{a}")).collect();
    let fed_url = fed_urls[0].clone();
    // What cells and DNS servers are given: every replica, so they follow any one's loss.
    let fed_list = fed_urls.join(",");
    let dns_addr = SocketAddr::new(loopback, free_port(loopback)?);

    let mut cluster = ClusterFile {
        version: 1,
        dir: dir.clone(),
        federator: fed_url.clone(),
        dns: DnsInfo { address: dns_addr.to_string(), zone: ZONE.to_string() },
        sites: sites.clone(),
        groups: groups.iter().map(|g| g.name.clone()).collect(),
        processes: Vec::new(),
    };

    // Client configuration for fedctl itself.
    let user = std::env::var("USER").ok().filter(|u| Identity::new(Role::Operator, u.as_str()).is_ok());
    let operator = user.unwrap_or_else(|| "sre".to_string());
    let client_tls = issue("fedctl", Role::Operator, &operator, &[])?;
    issue("admin", Role::Admin, "admin", &[])?;
    let client = ClientConfig {
        endpoint: fed_url.clone(),
        endpoints: if fed_urls.len() > 1 { fed_urls.clone() } else { Vec::new() },
        tls: client_tls,
    };
    std::fs::write(dir.join("fedctl.toml"), toml::to_string(&client).expect("serializes")).map_err(io)?;

    let started = Instant::now();
    let result = async {
        // Federator replicas.
        let replicas = fed_addrs.len() as u64;
        for (k, fed_addr) in fed_addrs.iter().enumerate() {
            let id = k as u64 + 1;
            let name = if replicas == 1 { "federator".to_string() } else { format!("federator-{id}") };
            let fed_tls =
                issue(&name, Role::Federator, &format!("fed-{id}"), &["127.0.0.1".into(), "localhost".into()])?;
            let metrics = SocketAddr::new(loopback, free_port(loopback)?);
            let peers = fed_addrs
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != k)
                .map(|(j, a)| PeerToml { node_id: j as u64 + 1, address: a.to_string() })
                .collect();
            let fed_config = FederatorToml {
                node_id: id,
                listen: fed_addr.to_string(),
                metrics_listen: metrics.to_string(),
                data_dir: data.join(&name),
                zone: ZONE,
                tls: &fed_tls,
                engine: EngineConfig { verify_window_ms: 2_000, drain_ms: 500, ..EngineConfig::default() },
                dr: Some(args.detection.dr(site_probes(&sites))).filter(|d| !d.probes.is_empty()),
                sites: &site_specs,
                groups: &groups,
                peers,
            };
            let fed_config_path = dir.join(format!("{name}.toml"));
            std::fs::write(
                &fed_config_path,
                toml::to_string(&fed_config).map_err(|e| CliError::Failed(e.to_string()))?,
            )
            .map_err(io)?;
            let argv = vec!["--config".to_string(), fed_config_path.display().to_string()];
            let (pid, log) = spawn(&name, &bins.join("federator"), &argv, &logs)?;
            cluster.processes.push(Proc {
                name,
                role: "federator".into(),
                site: None,
                pid,
                listen: BTreeMap::from([
                    ("grpc".into(), fed_addr.to_string()),
                    ("metrics".into(), metrics.to_string()),
                ]),
                argv,
                log,
            });
        }
        cluster.save(&dir)?;

        // One cell per site (with its ingress proxy), then its nodes.
        for site in &sites {
            let cell_ip: IpAddr = site.ingress[0].parse().expect("valid");
            let lb_socket = match (&haproxy, site.ingress_port) {
                (Some(bin), Some(port)) => {
                    let socket = data.join(format!("haproxy-{}.sock", site.name));
                    let cfg_path = dir.join(format!("haproxy-{}.cfg", site.name));
                    let bind = SocketAddr::new(cell_ip, port);
                    std::fs::write(&cfg_path, haproxy_config(&socket, bind, &groups)).map_err(io)?;
                    let argv = vec!["-f".to_string(), cfg_path.display().to_string(), "-db".into()];
                    let name = format!("haproxy-{}", site.name);
                    let (pid, log) = spawn(&name, bin, &argv, &logs)?;
                    cluster.processes.push(Proc {
                        name,
                        role: "haproxy".into(),
                        site: Some(site.name.clone()),
                        pid,
                        listen: BTreeMap::from([
                            ("http".into(), bind.to_string()),
                            ("admin".into(), socket.display().to_string()),
                        ]),
                        argv,
                        log,
                    });
                    Some(socket)
                }
                _ => None,
            };
            let tls = issue(&format!("cell-{}", site.name), Role::Cell, &site.name, &[cell_ip.to_string()])?;
            let metrics = SocketAddr::new(cell_ip, free_port(cell_ip)?);
            let mut argv = vec![
                "cell".to_string(),
                "--site".into(),
                site.name.clone(),
                "--listen".into(),
                site.cell.clone(),
                "--federator".into(),
                fed_list.clone(),
                "--data-dir".into(),
                data.join(format!("cell-{}", site.name)).display().to_string(),
                "--metrics-listen".into(),
                metrics.to_string(),
                "--report-interval-ms".into(),
                "1000".into(),
            ];
            if let Some(socket) = &lb_socket {
                argv.extend(["--haproxy-socket".to_string(), socket.display().to_string()]);
            }
            argv.extend(tls_args(&tls));
            let name = format!("cell-{}", site.name);
            let (pid, log) = spawn(&name, &bins.join("dc-agent"), &argv, &logs)?;
            cluster.processes.push(Proc {
                name,
                role: "cell".into(),
                site: Some(site.name.clone()),
                pid,
                listen: BTreeMap::from([("grpc".into(), site.cell.clone()), ("metrics".into(), metrics.to_string())]),
                argv,
                log,
            });
            for node in &site.nodes {
                let ip: IpAddr = node.address.parse().expect("valid");
                let tls = issue(
                    &format!("node-{}", node.id),
                    Role::Node,
                    &format!("{}/{}", site.name, node.id),
                    std::slice::from_ref(&node.address),
                )?;
                let metrics = SocketAddr::new(ip, free_port(ip)?);
                let mut argv = vec![
                    "node".to_string(),
                    "--id".into(),
                    node.id.clone(),
                    "--site".into(),
                    site.name.clone(),
                    "--cell".into(),
                    format!("https://{}", site.cell),
                    "--address".into(),
                    node.address.clone(),
                    "--cpu-millis".into(),
                    NODE_CAPACITY.cpu_millis.to_string(),
                    "--mem-mib".into(),
                    NODE_CAPACITY.mem_mib.to_string(),
                    "--disk-mib".into(),
                    NODE_CAPACITY.disk_mib.to_string(),
                    "--port-range".into(),
                    format!("{TASK_PORT_MIN}-{TASK_PORT_MAX}"),
                    "--work-dir".into(),
                    node.work_dir.display().to_string(),
                    "--bin-dir".into(),
                    bins.display().to_string(),
                    "--metrics-listen".into(),
                    metrics.to_string(),
                ];
                argv.extend(tls_args(&tls));
                let name = format!("node-{}", node.id);
                let (pid, log) = spawn(&name, &bins.join("dc-agent"), &argv, &logs)?;
                cluster.processes.push(Proc {
                    name,
                    role: "node".into(),
                    site: Some(site.name.clone()),
                    pid,
                    listen: BTreeMap::from([("metrics".into(), metrics.to_string())]),
                    argv,
                    log,
                });
            }
            cluster.save(&dir)?;
        }

        // The federation's DNS server (site-less, the address clients are given), and with
        // --dns-per-site one more in each site, dying with it. Every one follows the routing
        // stream and is an observer in its own failure domain.
        let mut servers = vec![(None, "dns-1".to_string(), dns_addr, "dns".to_string(), "ns1".to_string())];
        if args.dns_per_site {
            for (i, site) in sites.iter().enumerate() {
                let ip: IpAddr = site.ingress[0]
                    .parse()
                    .map_err(|e| CliError::Failed(format!("{}: ingress {:?}: {e}", site.name, site.ingress[0])))?;
                let addr = SocketAddr::new(ip, free_port(ip)?);
                servers.push((
                    Some(site.name.clone()),
                    format!("dns-{}", site.name),
                    addr,
                    site.name.clone(),
                    format!("ns{}", i + 2),
                ));
            }
        }
        // Every fed-dns publishes the whole NS set of the zone: itself, then the others.
        let name_servers: Vec<(String, IpAddr)> = servers.iter().map(|s| (s.4.clone(), s.2.ip())).collect();
        for (site, name, addr, domain, ns) in servers {
            let tls = issue(&name, Role::Dns, &name, &[addr.ip().to_string()])?;
            let metrics = SocketAddr::new(addr.ip(), free_port(addr.ip())?);
            let mut argv = vec![
                "--zone".to_string(),
                ZONE.into(),
                "--listen".into(),
                addr.to_string(),
                "--federator".into(),
                fed_list.clone(),
                "--state-dir".into(),
                data.join(&name).display().to_string(),
                "--server-id".into(),
                name.clone(),
                "--ns-name".into(),
                ns.clone(),
                "--ns-address".into(),
                addr.ip().to_string(),
                "--metrics-listen".into(),
                metrics.to_string(),
            ];
            for (other, ip) in name_servers.iter().filter(|(n, _)| *n != ns) {
                argv.extend(["--other-ns".to_string(), format!("{other}={ip}")]);
            }
            for (site, probe) in site_probes(&sites) {
                argv.extend(["--observe".to_string(), format!("{site}={probe}")]);
            }
            argv.extend(["--observer-domain".to_string(), domain]);
            argv.extend(["--observe-interval-ms".to_string(), args.detection.probe_interval_ms.to_string()]);
            argv.extend(tls_args(&tls));
            let (pid, log) = spawn(&name, &bins.join("fed-dns"), &argv, &logs)?;
            cluster.processes.push(Proc {
                name,
                role: "dns".into(),
                site,
                pid,
                listen: BTreeMap::from([("dns".into(), addr.to_string()), ("metrics".into(), metrics.to_string())]),
                argv,
                log,
            });
        }
        cluster.save(&dir)?;

        wait_healthy(&cluster, &client, &groups, args.nodes_per_site, args.timeout).await
    }
    .await;

    if let Err(e) = result {
        stop_all(&ours(&cluster.processes), Duration::from_secs(5));
        kill_leftover_tasks(&cluster);
        let _ = std::fs::remove_file(dir.join(CLUSTER_FILE));
        return Err(CliError::Failed(format!("{e}\n  logs: {}", logs.display())));
    }

    let default_dir = Path::new(crate::client::DEFAULT_CONFIG).parent().and_then(|p| p.canonicalize().ok());
    let config_hint = if default_dir.as_deref() == Some(dir.as_path()) {
        String::new()
    } else {
        format!("  export FEDCTL_CONFIG={}\n", dir.join("fedctl.toml").display())
    };
    let (dns_ip, dns_port) = (dns_addr.ip(), dns_addr.port());
    // The hints use the first group: its name, its home site's ingress, another site to move to.
    let example = &groups[0];
    let host = format!("{}.{}", example.dns_name, ZONE.trim_end_matches('.'));
    let home = sites.iter().find(|s| s.name == example.home_site).unwrap_or(&sites[0]);
    let curl = match home.ingress_port {
        Some(port) => format!(
            "  curl -s -H 'Host: {host}' http://{}:{port}/    # through {}'s ingress proxy\n",
            home.ingress[0], home.name
        ),
        None => String::new(),
    };
    let move_hint = match site_names.iter().find(|s| **s != example.home_site) {
        Some(to) => format!("  fedctl switchover start {} --to {to} --reason \"practice\" --wait\n", example.name),
        None => String::new(),
    };
    let mut homes: Vec<&str> = groups.iter().map(|g| g.home_site.as_str()).collect();
    homes.sort();
    homes.dedup();
    println!(
        "Switchyard is up in {:.1}s: {} sites x {} nodes, {} app groups on {}.\n\
         \n  federator  {fed_url}\n  fed-dns    {dns_addr} (zone {ZONE})\n  processes  {}\n  client     {} (identity operator:{operator})\n\
         \nTry:\n{config_hint}  fedctl status\n  fedctl groups\n  dig @{dns_ip} -p {dns_port} {host}. A +short\n{curl}\
         {move_hint}  fedctl audit list\n  fedctl down{}\n",
        started.elapsed().as_secs_f64(),
        args.sites,
        args.nodes_per_site,
        groups.len(),
        homes.join(", "),
        dir.join(CLUSTER_FILE).display(),
        dir.join("fedctl.toml").display(),
        if config_hint.is_empty() { String::new() } else { format!(" --dir {}", dir.display()) },
    );
    Ok(())
}

/// Polls until every cell reports all its nodes, every group runs healthy on its home site and
/// DNS answers for it.
async fn wait_healthy(
    cluster: &ClusterFile,
    client: &ClientConfig,
    groups: &[GroupSpec],
    nodes_per_site: u32,
    timeout: Duration,
) -> Result<(), CliError> {
    let deadline = Instant::now() + timeout;
    let mut waiting_for;
    loop {
        waiting_for = match check_ready(cluster, client, groups, nodes_per_site).await {
            Ok(()) => return Ok(()),
            Err(why) => why,
        };
        if let Some(p) = cluster.processes.iter().find(|p| !is_alive(p.pid)) {
            return Err(CliError::Failed(format!("{} (pid {}) exited; see {}", p.name, p.pid, p.log.display())));
        }
        if Instant::now() >= deadline {
            return Err(CliError::Failed(format!("not healthy after {}s: {waiting_for}", timeout.as_secs())));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn check_ready(
    cluster: &ClusterFile,
    client: &ClientConfig,
    groups: &[GroupSpec],
    nodes_per_site: u32,
) -> Result<(), String> {
    let mut api = connect(client).await.map_err(|e| format!("federator: {e}"))?;
    let sites = api.list_sites(pb::ListSitesRequest {}).await.map_err(|e| format!("federator: {}", e.message()))?;
    for s in &cluster.sites {
        match sites.get_ref().sites.iter().find(|x| x.name == s.name) {
            None => return Err(format!("site {} not registered yet", s.name)),
            Some(x) if !x.cell_connected => return Err(format!("cell of {} not reporting yet", s.name)),
            Some(x) if x.nodes_healthy < nodes_per_site => {
                return Err(format!("{} has {}/{nodes_per_site} nodes", s.name, x.nodes_healthy));
            }
            Some(_) => {}
        }
    }
    let listed = api.list_groups(pb::ListGroupsRequest {}).await.map_err(|e| format!("federator: {}", e.message()))?;
    for g in groups {
        let want: u32 = g.apps.iter().map(|a| a.instances).sum();
        let healthy = listed
            .get_ref()
            .groups
            .iter()
            .find(|x| x.name == g.name)
            .and_then(|x| x.placement.iter().find(|p| p.site == g.home_site))
            .map_or(0, |p| p.healthy);
        if healthy < want {
            return Err(format!("group {} has {healthy}/{want} healthy instances on {}", g.name, g.home_site));
        }
        let name = format!("{}.{ZONE}", g.dns_name);
        let addr: SocketAddr = cluster.dns.address.parse().map_err(|e| format!("{e}"))?;
        match crate::dnsprobe::query_a(addr, &name, Duration::from_millis(500)) {
            Ok(answer) if answer.rcode == 0 && answer.answers > 0 => {}
            Ok(answer) => {
                return Err(format!("DNS answers {name} with rcode {} and {} records", answer.rcode, answer.answers));
            }
            Err(e) => return Err(format!("DNS query for {name}: {e}")),
        }
        let home = cluster.sites.iter().find(|s| s.name == g.home_site);
        if let Some((site, port)) = home.and_then(|s| s.ingress_port.map(|p| (s, p))) {
            let addr = SocketAddr::new(site.ingress[0].parse().map_err(|e| format!("{e}"))?, port);
            let host = name.trim_end_matches('.');
            match http_status(addr, host) {
                Some(200) => {}
                other => return Err(format!("{host} through {}'s ingress {addr}: {other:?}", site.name)),
            }
        }
    }
    Ok(())
}

/// Status code of `GET /` with `Host: host` at `addr`, if it answers at all.
fn http_status(addr: SocketAddr, host: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").ok()?;
    let mut head = [0u8; 64];
    let n = s.read(&mut head).ok()?;
    std::str::from_utf8(&head[..n]).ok()?.split_whitespace().nth(1)?.parse().ok()
}

/// Stops task processes that nodes recorded in `tasks.json` and that outlived them: only those
/// still working in their node's task directory (a reused pid is left alone), by process group.
fn kill_leftover_tasks(cluster: &ClusterFile) {
    fn pids(v: &serde_json::Value, out: &mut Vec<u32>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    match (k.as_str(), x.as_u64()) {
                        ("pid", Some(p)) if p > 0 => out.push(p as u32),
                        _ => pids(x, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| pids(x, out)),
            _ => {}
        }
    }
    let mut leftover = Vec::new();
    for node in cluster.sites.iter().flat_map(|s| &s.nodes) {
        let mut found = Vec::new();
        if let Ok(text) = std::fs::read_to_string(node.work_dir.join("tasks.json"))
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
        {
            pids(&v, &mut found);
        }
        let tasks_dir = node.work_dir.join("tasks");
        leftover.extend(found.into_iter().filter(|p| {
            is_alive(*p) && std::fs::read_link(format!("/proc/{p}/cwd")).is_ok_and(|cwd| cwd.starts_with(&tasks_dir))
        }));
    }
    stop_targets(&leftover, Duration::from_secs(3), Target::Group);
}

/// Stops every process of the federation in `dir`: DNS first, then nodes (which stop their
/// tasks), cells and the federator last.
pub fn down(dir: &Path, purge: bool) -> Result<String, CliError> {
    let Some(cluster) = ClusterFile::load(dir)? else {
        if purge {
            let _ = std::fs::remove_dir_all(dir);
        }
        return Ok(format!("nothing is running from {}", dir.display()));
    };
    let by_role = |role: &str| ours(cluster.processes.iter().filter(|p| p.role == role));
    for role in ["dns", "node", "cell", "haproxy", "federator"] {
        stop_all(&by_role(role), Duration::from_secs(10));
    }
    kill_leftover_tasks(&cluster);
    let _ = std::fs::remove_file(dir.join(CLUSTER_FILE));
    if purge {
        std::fs::remove_dir_all(dir).map_err(io)?;
    }
    Ok(format!("stopped {} processes from {}", cluster.processes.len(), dir.display()))
}

/// Stops one process of the federation and starts it again with the same arguments.
pub fn restart(dir: &Path, name: &str) -> Result<String, CliError> {
    let mut cluster = ClusterFile::load(dir)?
        .ok_or_else(|| CliError::Usage(format!("no federation is running from {}", dir.display())))?;
    let names: Vec<String> = cluster.processes.iter().map(|p| p.name.clone()).collect();
    let proc = cluster
        .processes
        .iter_mut()
        .find(|p| p.name == name)
        .ok_or_else(|| CliError::Usage(format!("no process named {name:?}; known: {}", names.join(", "))))?;
    if runs(proc.pid, &proc.argv) {
        stop_all(&[proc.pid], Duration::from_secs(10));
    }
    let bin = match proc.role.as_str() {
        "haproxy" => which("haproxy").ok_or_else(|| CliError::Usage("haproxy is not in PATH".into()))?,
        "federator" => binary_dir()?.join("federator"),
        "dns" => binary_dir()?.join("fed-dns"),
        _ => binary_dir()?.join("dc-agent"),
    };
    let logs = proc.log.parent().map(Path::to_path_buf).unwrap_or_else(|| dir.join("logs"));
    let (pid, _) = spawn(&proc.name, &bin, &proc.argv, &logs)?;
    let old = std::mem::replace(&mut proc.pid, pid);
    cluster.save(dir)?;
    Ok(format!("restarted {name}: pid {old} -> {pid}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sites() -> Vec<String> {
        vec!["site-1".into(), "site-2".into(), "site-3".into()]
    }

    #[test]
    fn a_groups_file_fills_in_the_sample_app_defaults() {
        let text = r#"
[[groups]]
name = "shop-db"
tier = 0

[[groups]]
name = "shop-web"
tier = 2
ttl_s = 2
home_site = "site-2"
dns_aliases = ["shop"]
depends_on = ["shop-db"]
ramp = { steps = [50, 100] }
[[groups.apps]]
name = "front"
instances = 2
"#;
        let groups = parse_groups(text, &sites(), 2).unwrap();
        let demo = &sample_groups("site-1")[0].apps[0];
        let db = &groups[0];
        assert_eq!((db.dns_name.as_str(), db.ttl_s, db.home_site.as_str()), ("shop-db", 5, "site-1"));
        assert_eq!(db.apps.len(), 1);
        let app = &db.apps[0];
        assert_eq!((app.name.as_str(), app.instances), ("web", 1));
        assert_eq!(
            (&app.command, &app.resources, &app.health, &app.metrics),
            (&demo.command, &demo.resources, &demo.health, &demo.metrics)
        );
        let web = &groups[1];
        assert_eq!((web.ttl_s, web.tier, web.home_site.as_str()), (2, 2, "site-2"));
        assert_eq!(web.depends_on, ["shop-db"]);
        assert_eq!(web.ramp.steps, [50, 100]);
        assert_eq!((web.apps[0].name.as_str(), web.apps[0].instances), ("front", 2));
        // Every Host name of every group is routed by the ingress.
        let cfg = haproxy_config(Path::new("/s"), "127.0.1.1:80".parse().unwrap(), &groups);
        let acl = "acl host_shop-web hdr(host),field(1,:) -i \
                   shop-web.fed.local shop-web.fed.local. shop.fed.local shop.fed.local.\n";
        assert!(cfg.contains(acl), "{cfg}");
        assert!(cfg.contains("use_backend be_shop-web_front if host_shop-web"), "{cfg}");
        assert!(cfg.contains("use_backend be_shop-db_web if host_shop-db"), "{cfg}");
    }

    #[test]
    fn detection_settings_are_checked_before_anything_starts() {
        assert!(Detection::default().problems().is_empty());
        assert_eq!(Detection::default(), Detection { window_ms: 10_000, probe_interval_ms: 1_000, stale_ms: 5_000 });
        let fast = Detection { window_ms: 1_000, probe_interval_ms: 200, stale_ms: 5_000 };
        assert!(fast.problems().is_empty());
        let dr = toml::to_string(&fast.dr(BTreeMap::from([("site-1".into(), "127.0.1.1:80".into())]))).unwrap();
        assert!(dr.contains("probe_interval_ms = 200"), "{dr}");
        assert!(dr.contains("[detect]\nwindow_ms = 1000\nquorum = 2\nstale_ms = 5000"), "{dr}");

        for (d, want) in [
            (Detection { probe_interval_ms: 0, ..fast }, "--probe-interval-ms 0 is outside 50-60000 ms"),
            (Detection { probe_interval_ms: 3_600_000, ..fast }, "--probe-interval-ms 3600000 is outside"),
            (Detection { window_ms: 100, ..fast }, "--detect-window-ms 100 must be at least --probe-interval-ms (200)"),
            (Detection { window_ms: 86_400_000, ..fast }, "and at most 3600000 ms"),
            (Detection { stale_ms: 200, ..fast }, "--detect-stale-ms 200 must exceed --probe-interval-ms (200)"),
        ] {
            let problems = d.problems().join("\n");
            assert!(problems.contains(want), "{want:?} missing from:\n{problems}");
        }
    }

    #[tokio::test]
    async fn bad_detection_settings_start_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("fed");
        let args = UpArgs {
            dir: dir.clone(),
            sites: 3,
            nodes_per_site: 2,
            timeout: Duration::from_secs(1),
            ingress: true,
            federators: 1,
            groups_file: None,
            detection: Detection { window_ms: 10_000, probe_interval_ms: 0, stale_ms: 5_000 },
            dns_per_site: false,
        };
        let err = up(args).await.unwrap_err();
        assert!(matches!(err, CliError::Usage(_)), "{err}");
        assert!(err.to_string().contains("--probe-interval-ms 0 is outside 50-60000 ms"), "{err}");
        assert!(!dir.exists(), "nothing was created");
    }

    #[test]
    fn a_command_of_ones_own_gets_no_sample_checks() {
        let text = "[[groups]]\nname = \"x\"\n[[groups.apps]]\nname = \"a\"\ncommand = \"my-app\"\n";
        let app = &parse_groups(text, &sites(), 2).unwrap()[0].apps[0];
        assert_eq!(app.command, "my-app");
        assert_eq!(app.health, HealthSpec::default());
        assert!(app.metrics.is_empty());
    }

    #[test]
    fn bad_groups_files_are_refused_with_every_problem() {
        let text = r#"
[[groups]]
name = "a"
home_site = "site-7"
depends_on = ["b", "ghost"]

[[groups]]
name = "b"
dns_aliases = ["a"]
depends_on = ["a"]

[[groups]]
name = "c"
tierr = 1

[[groups]]
name = "big"
[[groups.apps]]
name = "web"
instances = 50
resources = { cpu_millis = 100, mem_mib = 64 }
"#;
        let problems = parse_groups(text, &sites(), 2).unwrap_err();
        let all = problems.join("\n");
        for want in [
            "home_site \"site-7\" is not a site fedctl up creates (site-1, site-2, site-3)",
            "group \"a\" depends on \"ghost\", which is not a group of the file",
            "group \"b\": DNS name \"a\" is already used by group \"a\"",
            "cycle: a -> b -> a",
            "group \"c\": unknown field `tierr`",
            "the groups whose home_site is site-1 need 5100 cpu_millis",
        ] {
            assert!(all.contains(want), "{want:?} missing from:\n{all}");
        }
        assert_eq!(parse_groups("x = 1\n", &sites(), 2).unwrap_err(), ["it declares no [[groups]]"]);
        assert!(parse_groups("[[groups]\n", &sites(), 2).unwrap_err()[0].starts_with("not TOML"));
        let unknown = parse_groups("extra = 1\n[[groups]]\nname = \"x\"\n", &sites(), 2).unwrap_err();
        assert_eq!(unknown, ["unknown key \"extra\": only [[groups]] tables"]);
    }
}
