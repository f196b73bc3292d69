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
}

impl Default for RaftTuning {
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: 250,
            election_timeout_min_ms: 1_000,
            election_timeout_max_ms: 2_000,
            snapshot_logs_since_last: 2_000,
            logs_to_keep: 500,
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
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DrConfig {
    /// Site name → `host:port` this replica probes (TCP connect, each second): the site's
    /// ingress. Sites not listed are not probed by this replica.
    pub probes: std::collections::BTreeMap<String, String>,
    /// This replica's failure domain as an observer. Every replica of one federation is one
    /// observer together by default (`federator`): a federation cut off from a site that still
    /// serves its users must not be able to declare it down on its own.
    pub domain: Option<String>,
    /// Detection window, quorum and staleness of observations.
    pub detect: switchyard_core::dr::detect::DetectConfig,
    /// Whether the leader declares sites down on the observers' evidence (default on).
    pub automatic: Option<bool>,
}

impl DrConfig {
    pub fn domain(&self) -> &str {
        self.domain.as_deref().unwrap_or("federator")
    }

    pub fn automatic(&self) -> bool {
        self.automatic.unwrap_or(true)
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
        if self.engine.verify_window_ms == 0 {
            p.push("engine: verify_window_ms must be > 0".to_string());
        }
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
    fn a_dependency_on_an_undeclared_group_is_refused() {
        let text = GOOD.replace("home_site = \"site-1\"", "home_site = \"site-1\"\ndepends_on = [\"crm-dbb\"]");
        let err = FederatorConfig::parse(&text, Path::new("f.toml")).unwrap_err();
        assert!(err.to_string().contains("depends_on names \"crm-dbb\", which is not a declared group"), "{err}");
    }
}
