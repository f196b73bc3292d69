//! The federator's TOML configuration: parsed with unknown fields rejected, then validated as a
//! whole so every problem is reported at once, before any port is bound.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use switchyard_core::EngineConfig;
use switchyard_core::model::{GroupSpec, SiteSpec, validate_group, validate_site};
use switchyard_tls::TlsFiles;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederatorConfig {
    /// This replica's Raft node id (non-zero).
    pub node_id: u64,
    /// gRPC address (operator API, cell links, routing stream, Raft peers), mutual TLS only.
    pub listen: SocketAddr,
    /// Address peers and clients use to reach this replica; defaults to `listen`.
    #[serde(default)]
    pub advertise: Option<String>,
    /// Plain-HTTP Prometheus endpoint.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// Where the redb database (Raft log, snapshots) lives.
    pub data_dir: PathBuf,
    /// The federation DNS zone, absolute (`fed.local.`).
    pub zone: String,
    pub tls: TlsFiles,
    #[serde(default)]
    pub engine: EngineConfig,
    #[serde(default)]
    pub raft: RaftTuning,
    #[serde(default)]
    pub dr: DrConfig,
    #[serde(default)]
    pub sites: Vec<SiteSpec>,
    #[serde(default)]
    pub groups: Vec<GroupSpec>,
    /// The other replicas of the cluster. A new cluster is initialised by the replica with the
    /// lowest node id, with every listed replica as a voter.
    #[serde(default)]
    pub peers: Vec<Peer>,
}

/// Another federator replica. Its certificate must name it `federator:fed-<node_id>`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    pub node_id: u64,
    /// `host:port` of its gRPC port.
    pub address: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftTuning {
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// A snapshot is built after this many log entries, and older entries are purged.
    pub snapshot_logs_since_last: u64,
    /// Entries kept in the log behind the last snapshot, so a replica that lags by less than
    /// this catches up from the log instead of a whole snapshot.
    pub logs_to_keep: u64,
    /// Log entries carrying client writes that may be in flight at once on the leader. Writes
    /// that arrive while this many are being committed wait and go together in the next entry
    /// (one disk flush and one replication round for all of them).
    pub writes_in_flight: usize,
    /// The most writes one log entry carries.
    pub max_writes_per_entry: usize,
    /// How long a write may take to commit before its caller is told it timed out (it may
    /// still commit) and the leader moves on to the writes queued behind it.
    pub write_timeout_ms: u64,
}

impl Default for RaftTuning {
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: 250,
            election_timeout_min_ms: 1_000,
            election_timeout_max_ms: 2_000,
            snapshot_logs_since_last: 2_000,
            logs_to_keep: 500,
            writes_in_flight: 2,
            max_writes_per_entry: 64,
            write_timeout_ms: 10_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("configuration {path} is not valid TOML for the federator: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("configuration {path} has {} problem(s):\n  - {}", .problems.len(), .problems.join("\n  - "))]
    Invalid { path: PathBuf, problems: Vec<String> },
}

/// Failure detection as this replica takes part in it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DrConfig {
    /// Site name → `host:port` this replica probes (TCP connect, every `probe_interval_ms`): the
    /// site's ingress. Sites not listed are not probed by this replica.
    pub probes: std::collections::BTreeMap<String, String>,
    /// How often this replica probes each site, in milliseconds (default 1000). Together with
    /// the detection window it bounds how fast a dead site is declared down.
    pub probe_interval_ms: u64,
    /// This replica's failure domain as an observer. Every replica of one federation is one
    /// observer together by default (`federator`): a federation cut off from a site that still
    /// serves its users must not be able to declare it down on its own.
    pub domain: Option<String>,
    /// Detection window, quorum and staleness of observations.
    pub detect: switchyard_core::dr::detect::DetectConfig,
    /// Whether the leader declares sites down on the observers' evidence (default on).
    pub automatic: Option<bool>,
}

impl Default for DrConfig {
    fn default() -> Self {
        Self {
            probes: Default::default(),
            probe_interval_ms: DrConfig::DEFAULT_PROBE_INTERVAL_MS,
            domain: None,
            detect: Default::default(),
            automatic: None,
        }
    }
}

impl DrConfig {
    pub const DEFAULT_PROBE_INTERVAL_MS: u64 = 1_000;
    /// Probe intervals accepted: below 50 ms the probes are load, not information; above a
    /// minute a dead site goes unnoticed for longer than any detection window worth having.
    pub const PROBE_INTERVAL_MS: std::ops::RangeInclusive<u64> = 50..=60_000;
    /// Longest detection window accepted (an hour).
    pub const MAX_WINDOW_MS: u64 = 3_600_000;
    /// Longest a probe waits for a connection before it reports "unknown".
    const MAX_PROBE_TIMEOUT_MS: u64 = 800;

    pub fn domain(&self) -> &str {
        self.domain.as_deref().unwrap_or("federator")
    }

    pub fn automatic(&self) -> bool {
        self.automatic.unwrap_or(true)
    }

    pub fn probe_interval(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.probe_interval_ms)
    }

    /// A probe gives up (unknown) after 800 ms, or one interval when that is shorter, so that
    /// a slow probe never delays the next one.
    pub fn probe_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.probe_interval_ms.min(Self::MAX_PROBE_TIMEOUT_MS))
    }

    /// Every problem with the detection settings.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let (interval, d) = (self.probe_interval_ms, &self.detect);
        if !Self::PROBE_INTERVAL_MS.contains(&interval) {
            p.push(format!(
                "dr: probe_interval_ms must be between {} and {} ms, not {interval}",
                Self::PROBE_INTERVAL_MS.start(),
                Self::PROBE_INTERVAL_MS.end()
            ));
        }
        if d.window_ms < interval || d.window_ms > Self::MAX_WINDOW_MS {
            p.push(format!(
                "dr.detect: window_ms {} must be at least probe_interval_ms ({interval}), so that one refused \
                 probe never declares a site down, and at most {} ms",
                d.window_ms,
                Self::MAX_WINDOW_MS
            ));
        }
        if d.stale_ms <= interval {
            p.push(format!(
                "dr.detect: stale_ms {} must exceed probe_interval_ms ({interval}), or observations go stale \
                 between two probes and never count",
                d.stale_ms
            ));
        }
        if d.quorum == 0 {
            p.push("dr.detect: quorum must be at least 1 failure domain".to_string());
        }
        p
    }
}

impl FederatorConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let cfg: FederatorConfig = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: path.to_path_buf(), message: e.to_string() })?;
        let problems = cfg.problems();
        if problems.is_empty() { Ok(cfg) } else { Err(ConfigError::Invalid { path: path.to_path_buf(), problems }) }
    }

    /// Every problem with this configuration.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.node_id == 0 {
            p.push("node_id must be non-zero".to_string());
        }
        if !self.zone.ends_with('.') || self.zone.len() < 2 {
            p.push(format!("zone {:?} must be an absolute DNS name ending with '.'", self.zone));
        }
        let r = &self.raft;
        if r.heartbeat_interval_ms == 0 || r.election_timeout_min_ms <= r.heartbeat_interval_ms {
            p.push("raft: election_timeout_min_ms must exceed heartbeat_interval_ms > 0".to_string());
        }
        if r.election_timeout_max_ms <= r.election_timeout_min_ms {
            p.push("raft: election_timeout_max_ms must exceed election_timeout_min_ms".to_string());
        }
        if !(1..=64).contains(&r.writes_in_flight) {
            p.push(format!("raft: writes_in_flight must be 1 to 64 ({})", r.writes_in_flight));
        }
        if !(100..=600_000).contains(&r.write_timeout_ms) {
            p.push(format!("raft: write_timeout_ms must be 100 to 600000 ({})", r.write_timeout_ms));
        }
        if !(1..=1024).contains(&r.max_writes_per_entry) {
            p.push(format!("raft: max_writes_per_entry must be 1 to 1024 ({})", r.max_writes_per_entry));
        }
        if self.engine.verify_window_ms == 0 {
            p.push("engine: verify_window_ms must be > 0".to_string());
        }
        p.extend(self.dr.problems());
        let mut ids = BTreeSet::from([self.node_id]);
        for peer in &self.peers {
            if !ids.insert(peer.node_id) {
                p.push(format!("peer node_id {} is used twice (or is this replica's own)", peer.node_id));
            }
            if peer.node_id == 0 || !peer.address.contains(':') {
                p.push(format!(
                    "peer {}: node_id must be non-zero and address HOST:PORT ({:?})",
                    peer.node_id, peer.address
                ));
            }
        }
        let mut names = BTreeSet::new();
        for s in &self.sites {
            if !names.insert(&s.name) {
                p.push(format!("site {:?} is declared twice", s.name));
            }
            p.extend(validate_site(s));
        }
        let mut groups = BTreeSet::new();
        let mut dns = BTreeSet::new();
        for g in &self.groups {
            if !groups.insert(&g.name) {
                p.push(format!("group {:?} is declared twice", g.name));
            }
            for name in g.dns_names() {
                if !dns.insert(name) {
                    p.push(format!("group {:?}: DNS name {name:?} is used by another group", g.name));
                }
            }
            if !names.contains(&g.home_site) {
                p.push(format!("group {:?}: home_site {:?} is not a declared site", g.name, g.home_site));
            }
            p.extend(validate_group(g));
        }
        // Groups are registered from this configuration only, so a dependency must name one of
        // them: a typo would silently order nothing.
        let declared: BTreeSet<&str> = self.groups.iter().map(|g| g.name.as_str()).collect();
        for g in &self.groups {
            for d in g.depends_on.iter().filter(|d| !declared.contains(d.as_str())) {
                p.push(format!("group {:?}: depends_on names {d:?}, which is not a declared group", g.name));
            }
        }
        p
    }

    pub fn advertise_addr(&self) -> String {
        self.advertise.clone().unwrap_or_else(|| self.listen.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
node_id = 1
listen = "127.0.0.1:7100"
data_dir = "/tmp/x"
zone = "fed.local."
[tls]
ca = "ca.pem"
cert = "f.pem"
key = "f-key.pem"
[[sites]]
name = "site-1"
ingress = ["127.0.1.1"]
[[groups]]
name = "crm-web"
dns_name = "crm-web"
ttl_s = 5
home_site = "site-1"
[[groups.apps]]
name = "web"
command = "sample-app"
instances = 2
resources = { cpu_millis = 100, mem_mib = 64 }
"#;

    #[test]
    fn good_config_parses() {
        let cfg = FederatorConfig::parse(GOOD, Path::new("f.toml")).unwrap();
        assert_eq!(cfg.groups[0].apps[0].instances, 2);
        assert_eq!(cfg.advertise_addr(), "127.0.0.1:7100");
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let text = GOOD.replace("zone = \"fed.local.\"", "zone = \"fed.local.\"\nzoen = 1");
        let err = FederatorConfig::parse(&text, Path::new("f.toml")).unwrap_err();
        assert!(err.to_string().contains("zoen"), "{err}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = GOOD
            .replace("node_id = 1", "node_id = 0")
            .replace("\"fed.local.\"", "\"fed.local\"")
            .replace("home_site = \"site-1\"", "home_site = \"site-9\"")
            .replace("ttl_s = 5", "ttl_s = 0");
        let err = FederatorConfig::parse(&text, Path::new("f.toml")).unwrap_err();
        let ConfigError::Invalid { problems, .. } = &err else { panic!("{err}") };
        assert_eq!(problems.len(), 4, "{problems:#?}");
    }

    #[test]
    fn detection_settings_default_and_parse() {
        let cfg = FederatorConfig::parse(GOOD, Path::new("f.toml")).unwrap();
        assert_eq!(cfg.dr.probe_interval_ms, 1_000);
        assert_eq!(cfg.dr.probe_timeout(), std::time::Duration::from_millis(800));
        let text = format!(
            "{GOOD}\n[dr]\nprobe_interval_ms = 200\n[dr.detect]\nwindow_ms = 1000\nquorum = 2\nstale_ms = 5000\n"
        );
        let cfg = FederatorConfig::parse(&text, Path::new("f.toml")).unwrap();
        assert_eq!((cfg.dr.probe_interval_ms, cfg.dr.detect.window_ms), (200, 1_000));
        assert_eq!(cfg.dr.probe_timeout(), std::time::Duration::from_millis(200));
    }

    #[test]
    fn a_bad_probe_interval_is_refused() {
        for (interval, want) in [
            ("0", "probe_interval_ms must be between 50 and 60000 ms, not 0"),
            ("86400000", "probe_interval_ms must be between 50 and 60000 ms, not 86400000"),
            ("20000", "window_ms 10000 must be at least probe_interval_ms (20000)"),
            ("5000", "stale_ms 5000 must exceed probe_interval_ms (5000)"),
        ] {
            let text = format!("{GOOD}\n[dr]\nprobe_interval_ms = {interval}\n");
            let err = FederatorConfig::parse(&text, Path::new("f.toml")).unwrap_err();
            assert!(err.to_string().contains(want), "{want:?} missing from: {err}");
        }
        let text = format!("{GOOD}\n[dr.detect]\nwindow_ms = 0\nquorum = 0\n");
        let err = FederatorConfig::parse(&text, Path::new("f.toml")).unwrap_err();
        let ConfigError::Invalid { problems, .. } = &err else { panic!("{err}") };
        assert_eq!(problems.len(), 2, "{problems:#?}");
    }

    #[test]
    fn write_batching_defaults_and_bad_values_are_refused() {
        let cfg = FederatorConfig::parse(GOOD, Path::new("f.toml")).unwrap();
        let r = &cfg.raft;
        assert_eq!((r.writes_in_flight, r.max_writes_per_entry, r.write_timeout_ms), (2, 64, 10_000));
        let text = format!("{GOOD}\n[raft]\nwrites_in_flight = 1\nmax_writes_per_entry = 1\n");
        let cfg = FederatorConfig::parse(&text, Path::new("f.toml")).unwrap();
        assert_eq!((cfg.raft.writes_in_flight, cfg.raft.max_writes_per_entry), (1, 1));
        let text = format!("{GOOD}\n[raft]\nwrites_in_flight = 0\nmax_writes_per_entry = 5000\nwrite_timeout_ms = 5\n");
        let err = FederatorConfig::parse(&text, Path::new("f.toml")).unwrap_err().to_string();
        for want in [
            "writes_in_flight must be 1 to 64 (0)",
            "max_writes_per_entry must be 1 to 1024 (5000)",
            "write_timeout_ms must be 100 to 600000 (5)",
        ] {
            assert!(err.contains(want), "{want:?} missing from: {err}");
        }
    }

    #[test]
    fn a_dependency_on_an_undeclared_group_is_refused() {
        let text = GOOD.replace("home_site = \"site-1\"", "home_site = \"site-1\"\ndepends_on = [\"crm-dbb\"]");
        let err = FederatorConfig::parse(&text, Path::new("f.toml")).unwrap_err();
        assert!(err.to_string().contains("depends_on names \"crm-dbb\", which is not a declared group"), "{err}");
    }
}
