//! Command line of `dc-agent` and its validation. Every problem is reported at once, before any
//! file is written or any port is bound.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use switchyard_tls::TlsFiles;

use crate::model::{Resources, is_valid_name};

#[derive(Debug, Parser)]
#[command(name = "dc-agent", version, about = "Switchyard site agent: the cell master and the per-host node agent")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a site's cell master: node registry, placement, reports to the federator.
    Cell(CellArgs),
    /// Run the agent of one host: launches and health-checks the tasks its cell assigns.
    Node(NodeArgs),
}

#[derive(Clone, Debug, Args)]
pub struct CellArgs {
    /// Site (data center) this cell manages; must match the name in the cell certificate.
    #[arg(long)]
    pub site: String,
    /// Address the NodeLink service listens on (IP:PORT).
    #[arg(long)]
    pub listen: String,
    /// Federator replicas, https://IP:PORT, comma-separated: the cell links to one and moves to
    /// the next when its link fails (any replica serves; writes reach the leader).
    #[arg(long)]
    pub federator: String,
    #[arg(long)]
    pub tls_ca: PathBuf,
    #[arg(long)]
    pub tls_cert: PathBuf,
    #[arg(long)]
    pub tls_key: PathBuf,
    /// Directory for the fencing epoch and the cell's task table.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Serve Prometheus metrics on this address (IP:PORT).
    #[arg(long)]
    pub metrics_listen: Option<String>,
    #[arg(long, default_value_t = 1000)]
    pub report_interval_ms: u64,
    /// A node that sends nothing for this long is lost and its tasks are placed elsewhere.
    #[arg(long, default_value_t = 3000)]
    pub node_timeout_ms: u64,
    /// Admin socket of the site's HAProxy (runtime API). When set, every app's running tasks
    /// are published to the backend `be_<group>_<app>`, which the HAProxy configuration must
    /// declare.
    #[arg(long)]
    pub haproxy_socket: Option<PathBuf>,
    /// With --haproxy-socket: how long a serving task that leaves the plan is drained from the
    /// load balancer before its node stops it.
    #[arg(long, default_value_t = 2000)]
    pub lb_drain_ms: u64,
    /// TOML file with the site's roles (DRF weight, quota guarantee and limit) and node
    /// reservations; re-read when it changes. Without it every role has weight 1 and no quota.
    #[arg(long)]
    pub quotas: Option<PathBuf>,
}

#[derive(Clone, Debug, Args)]
pub struct NodeArgs {
    #[arg(long)]
    pub id: String,
    #[arg(long)]
    pub site: String,
    /// Cell NodeLink endpoint, https://IP:PORT.
    #[arg(long)]
    pub cell: String,
    /// IP address the node's tasks bind to.
    #[arg(long)]
    pub address: String,
    #[arg(long)]
    pub cpu_millis: u64,
    #[arg(long)]
    pub mem_mib: u64,
    #[arg(long)]
    pub disk_mib: u64,
    /// Inclusive range of ports the cell may assign to tasks, MIN-MAX.
    #[arg(long)]
    pub port_range: String,
    /// Directory holding one working directory per task and tasks.json.
    #[arg(long)]
    pub work_dir: PathBuf,
    #[arg(long)]
    pub tls_ca: PathBuf,
    #[arg(long)]
    pub tls_cert: PathBuf,
    #[arg(long)]
    pub tls_key: PathBuf,
    /// Directory searched for task commands before PATH.
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    #[arg(long)]
    pub metrics_listen: Option<String>,
    #[arg(long, default_value_t = 1000)]
    pub heartbeat_ms: u64,
    /// Node attribute placement constraints match on, KEY=VALUE (repeatable): rack, zone or
    /// any label. `hostname` defaults to the node id and `site` is always the node's site.
    #[arg(long = "attribute", value_name = "KEY=VALUE")]
    pub attributes: Vec<String>,
    /// Run tasks in the simulated executor (no processes) for scale tests.
    #[arg(long)]
    pub simulate: bool,
    /// A task's stdout.log or stderr.log larger than this is rotated (copy, then truncate).
    #[arg(long, default_value_t = 10 * 1024 * 1024)]
    pub log_max_bytes: u64,
    /// Rotated logs kept per file (stdout.log.1 ... stdout.log.N).
    #[arg(long, default_value_t = 3)]
    pub log_keep: u32,
    /// Working directories (and logs) of tasks that stopped are removed after this long.
    #[arg(long, default_value_t = 86_400)]
    pub retain_stopped_s: u64,
    /// A cgroup v2 directory this node may manage: every task is confined there to its CPU and
    /// memory requests. Refused at start if the kernel does not offer the cpu and memory
    /// controllers there.
    #[arg(long)]
    pub cgroup_root: Option<PathBuf>,
    /// Most open files per task (RLIMIT_NOFILE); default: the node's own limit.
    #[arg(long)]
    pub max_open_files: Option<u64>,
}

/// Every problem found in a command line.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration ({} problem(s)):", self.problems.len())?;
        for p in &self.problems {
            write!(f, "\n  - {p}")?;
        }
        Ok(())
    }
}

/// An `https://host:port` endpoint and the TLS server name its certificate must carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerUrl {
    pub url: String,
    pub server_name: String,
}

impl ServerUrl {
    pub fn parse(flag: &str, raw: &str) -> Result<Self, String> {
        let uri: tonic::transport::Uri = raw.parse().map_err(|e| format!("--{flag} {raw:?} is not a URL: {e}"))?;
        if uri.scheme_str() != Some("https") {
            return Err(format!("--{flag} {raw:?} must start with https:// (every link is mutual TLS)"));
        }
        let host = uri.host().filter(|h| !h.is_empty()).ok_or_else(|| format!("--{flag} {raw:?} has no host"))?;
        if uri.port_u16().is_none() {
            return Err(format!("--{flag} {raw:?} has no port"));
        }
        let server_name = host.trim_start_matches('[').trim_end_matches(']').to_string();
        Ok(Self { url: raw.trim_end_matches('/').to_string(), server_name })
    }
}

#[derive(Clone, Debug)]
pub struct CellConfig {
    pub site: String,
    pub listen: SocketAddr,
    /// Every replica, in the order given; never empty.
    pub federators: Vec<ServerUrl>,
    pub tls: TlsFiles,
    pub data_dir: PathBuf,
    pub metrics_listen: Option<SocketAddr>,
    pub report_interval: Duration,
    pub node_timeout: Duration,
    pub haproxy_socket: Option<PathBuf>,
    /// Zero unless a load balancer is configured.
    pub lb_drain: Duration,
    pub quotas: Option<PathBuf>,
}

#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub node_id: String,
    pub site: String,
    pub cell: ServerUrl,
    pub address: IpAddr,
    pub capacity: Resources,
    pub port_min: u16,
    pub port_max: u16,
    pub work_dir: PathBuf,
    pub tls: TlsFiles,
    pub bin_dir: Option<PathBuf>,
    pub metrics_listen: Option<SocketAddr>,
    pub heartbeat: Duration,
    pub attributes: std::collections::BTreeMap<String, String>,
    pub simulate: bool,
    pub logs: crate::node::logs::LogPolicy,
    pub cgroup_root: Option<PathBuf>,
    pub max_open_files: Option<u64>,
}

struct Problems(Vec<String>);

impl Problems {
    fn check<T>(&mut self, r: Result<T, String>) -> Option<T> {
        r.map_err(|e| self.0.push(e)).ok()
    }

    fn name(&mut self, flag: &str, value: &str) {
        if !is_valid_name(value) {
            self.0.push(format!("--{flag} {value:?} is invalid: use 1-63 characters from [A-Za-z0-9_-]"));
        }
    }

    fn socket(&mut self, flag: &str, value: &str) -> Option<SocketAddr> {
        self.check(value.parse().map_err(|_| format!("--{flag} {value:?} is not IP:PORT")))
    }

    fn file(&mut self, flag: &str, path: &Path) {
        if !path.is_file() {
            self.0.push(format!("--{flag} {} is not a readable file", path.display()));
        }
    }

    fn millis(&mut self, flag: &str, value: u64, min: u64, max: u64) -> Duration {
        if !(min..=max).contains(&value) {
            self.0.push(format!("--{flag} {value} must be within {min}-{max}"));
        }
        Duration::from_millis(value)
    }

    fn finish<T>(self, value: Option<T>) -> Result<T, ConfigError> {
        match value {
            Some(v) if self.0.is_empty() => Ok(v),
            _ => Err(ConfigError { problems: self.0 }),
        }
    }
}

fn tls_files(p: &mut Problems, ca: &Path, cert: &Path, key: &Path) -> TlsFiles {
    p.file("tls-ca", ca);
    p.file("tls-cert", cert);
    p.file("tls-key", key);
    TlsFiles { ca: ca.to_path_buf(), cert: cert.to_path_buf(), key: key.to_path_buf() }
}

fn port_range(raw: &str) -> Result<(u16, u16), String> {
    let bad = || format!("--port-range {raw:?} must be MIN-MAX with 1 <= MIN <= MAX <= 65535");
    let (lo, hi) = raw.split_once('-').ok_or_else(bad)?;
    let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
    let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
    if lo == 0 || lo > hi {
        return Err(bad());
    }
    Ok((lo, hi))
}

impl CellArgs {
    pub fn validate(&self) -> Result<CellConfig, ConfigError> {
        let mut p = Problems(Vec::new());
        p.name("site", &self.site);
        let listen = p.socket("listen", &self.listen);
        let federators: Option<Vec<ServerUrl>> = self
            .federator
            .split(',')
            .map(|u| p.check(ServerUrl::parse("federator", u.trim())))
            .collect::<Option<Vec<_>>>()
            .filter(|v| !v.is_empty());
        let tls = tls_files(&mut p, &self.tls_ca, &self.tls_cert, &self.tls_key);
        if self.data_dir.as_os_str().is_empty() {
            p.0.push("--data-dir must not be empty".to_string());
        }
        let metrics_listen = match &self.metrics_listen {
            Some(m) => p.socket("metrics-listen", m).map(Some),
            None => Some(None),
        };
        let report_interval = p.millis("report-interval-ms", self.report_interval_ms, 50, 60_000);
        let node_timeout = p.millis("node-timeout-ms", self.node_timeout_ms, 300, 600_000);
        let lb_drain = p.millis("lb-drain-ms", self.lb_drain_ms, 0, 600_000);
        let built = (|| {
            Some(CellConfig {
                site: self.site.clone(),
                listen: listen?,
                federators: federators?,
                tls,
                data_dir: self.data_dir.clone(),
                metrics_listen: metrics_listen?,
                report_interval,
                node_timeout,
                haproxy_socket: self.haproxy_socket.clone(),
                lb_drain: if self.haproxy_socket.is_some() { lb_drain } else { Duration::ZERO },
                quotas: self.quotas.clone(),
            })
        })();
        p.finish(built)
    }
}

impl NodeArgs {
    pub fn validate(&self) -> Result<NodeConfig, ConfigError> {
        let mut p = Problems(Vec::new());
        p.name("id", &self.id);
        p.name("site", &self.site);
        let cell = p.check(ServerUrl::parse("cell", &self.cell));
        let address = p.check(
            self.address.parse::<IpAddr>().map_err(|_| format!("--address {:?} is not an IP address", self.address)),
        );
        if self.cpu_millis == 0 {
            p.0.push("--cpu-millis must be above 0".to_string());
        }
        if self.mem_mib == 0 {
            p.0.push("--mem-mib must be above 0".to_string());
        }
        let ports = p.check(port_range(&self.port_range));
        if self.work_dir.as_os_str().is_empty() {
            p.0.push("--work-dir must not be empty".to_string());
        }
        let tls = tls_files(&mut p, &self.tls_ca, &self.tls_cert, &self.tls_key);
        if let Some(dir) = &self.bin_dir
            && !dir.is_dir()
        {
            p.0.push(format!("--bin-dir {} is not a directory", dir.display()));
        }
        let metrics_listen = match &self.metrics_listen {
            Some(m) => p.socket("metrics-listen", m).map(Some),
            None => Some(None),
        };
        let heartbeat = p.millis("heartbeat-ms", self.heartbeat_ms, 50, 60_000);
        if self.log_max_bytes < 1024 {
            p.0.push(format!("--log-max-bytes {} must be at least 1024", self.log_max_bytes));
        }
        if let Some(n) = self.max_open_files {
            if n < 64 {
                p.0.push(format!("--max-open-files {n} must be at least 64"));
            } else if let Err(e) = crate::node::limits::check_open_files(n) {
                p.0.push(e);
            }
        }
        if self.log_keep > 100 {
            p.0.push(format!("--log-keep {} must be at most 100", self.log_keep));
        }
        let mut attributes = std::collections::BTreeMap::new();
        for raw in &self.attributes {
            match raw.split_once('=') {
                Some((k, v)) if is_valid_name(k) && !v.is_empty() && k != "site" => {
                    if attributes.insert(k.to_string(), v.to_string()).is_some() {
                        p.0.push(format!("--attribute {k} is given twice"));
                    }
                }
                _ => p.0.push(format!(
                    "--attribute {raw:?} must be KEY=VALUE with KEY of [A-Za-z0-9_-] (not \"site\") and a value"
                )),
            }
        }
        attributes.insert("site".to_string(), self.site.clone());
        let built = (|| {
            let (port_min, port_max) = ports?;
            Some(NodeConfig {
                node_id: self.id.clone(),
                site: self.site.clone(),
                cell: cell?,
                address: address?,
                capacity: Resources::new(self.cpu_millis, self.mem_mib, self.disk_mib),
                port_min,
                port_max,
                work_dir: self.work_dir.clone(),
                tls,
                bin_dir: self.bin_dir.clone(),
                metrics_listen: metrics_listen?,
                heartbeat,
                attributes,
                simulate: self.simulate,
                logs: crate::node::logs::LogPolicy {
                    max_bytes: self.log_max_bytes,
                    keep: self.log_keep,
                    retain_stopped: Duration::from_secs(self.retain_stopped_s),
                },
                cgroup_root: self.cgroup_root.clone(),
                max_open_files: self.max_open_files,
            })
        })();
        p.finish(built)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Command {
        Cli::try_parse_from(std::iter::once("dc-agent").chain(args.iter().copied())).unwrap().command
    }

    #[test]
    fn cell_flags_parse_and_every_problem_is_reported() {
        let Command::Cell(a) = parse(&[
            "cell",
            "--site",
            "bad site",
            "--listen",
            "nowhere",
            "--federator",
            "http://127.0.0.1:7000",
            "--tls-ca",
            "/nonexistent/ca.pem",
            "--tls-cert",
            "/nonexistent/c.pem",
            "--tls-key",
            "/nonexistent/k.pem",
            "--data-dir",
            "/tmp/x",
            "--report-interval-ms",
            "5",
        ]) else {
            panic!("expected cell")
        };
        let err = a.validate().unwrap_err();
        let text = err.to_string();
        for needle in ["--site", "--listen", "https://", "--tls-ca", "--tls-cert", "--tls-key", "--report-interval-ms"]
        {
            assert!(text.contains(needle), "{text} lacks {needle}");
        }
        assert_eq!(err.problems.len(), 7, "{text}");
    }

    #[test]
    fn node_flags_parse_and_validate() {
        let dir = std::env::temp_dir();
        let f = dir.join(format!("dc-agent-config-test-{}", std::process::id()));
        std::fs::write(&f, "x").unwrap();
        let fs = f.to_str().unwrap();
        let Command::Node(a) = parse(&[
            "node",
            "--id",
            "n1",
            "--site",
            "site-a",
            "--cell",
            "https://[::1]:7100",
            "--address",
            "127.0.0.1",
            "--cpu-millis",
            "4000",
            "--mem-mib",
            "8192",
            "--disk-mib",
            "0",
            "--port-range",
            "20000-20100",
            "--work-dir",
            "/tmp/w",
            "--tls-ca",
            fs,
            "--tls-cert",
            fs,
            "--tls-key",
            fs,
            "--heartbeat-ms",
            "500",
        ]) else {
            panic!("expected node")
        };
        let cfg = a.validate().unwrap();
        assert_eq!(cfg.cell.server_name, "::1");
        assert_eq!((cfg.port_min, cfg.port_max), (20000, 20100));
        assert_eq!(cfg.heartbeat, Duration::from_millis(500));

        let bad = NodeArgs { port_range: "9000-8000".into(), cpu_millis: 0, address: "x".into(), ..a };
        let err = bad.validate().unwrap_err();
        assert_eq!(err.problems.len(), 3, "{err}");
        std::fs::remove_file(f).unwrap();
    }
}
