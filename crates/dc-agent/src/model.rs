//! Domain types of the cell, independent of the wire format. They are what the cell persists in
//! its data directory, so every change must stay readable by the previous version.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Schedulable amounts. Units are in the field names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    pub cpu_millis: u64,
    pub mem_mib: u64,
    pub disk_mib: u64,
}

impl Resources {
    pub const ZERO: Resources = Resources { cpu_millis: 0, mem_mib: 0, disk_mib: 0 };

    pub fn new(cpu_millis: u64, mem_mib: u64, disk_mib: u64) -> Self {
        Self { cpu_millis, mem_mib, disk_mib }
    }

    /// Whether `self` fits into `free` on every dimension.
    pub fn fits_in(&self, free: &Resources) -> bool {
        self.cpu_millis <= free.cpu_millis && self.mem_mib <= free.mem_mib && self.disk_mib <= free.disk_mib
    }

    pub fn plus(&self, other: &Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_add(other.cpu_millis),
            mem_mib: self.mem_mib.saturating_add(other.mem_mib),
            disk_mib: self.disk_mib.saturating_add(other.disk_mib),
        }
    }

    /// Never below zero: a node whose tasks exceed its capacity (it re-registered smaller) has
    /// nothing free rather than wrapping around.
    pub fn minus(&self, other: &Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_sub(other.cpu_millis),
            mem_mib: self.mem_mib.saturating_sub(other.mem_mib),
            disk_mib: self.disk_mib.saturating_sub(other.disk_mib),
        }
    }
}

/// How a node checks a task. Zero fields mean "use the default"; see [`HealthSpec::effective`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSpec {
    pub http_path: String,
    /// `http`, `tcp` or `command`; empty: `http` when `http_path` is set, else no check.
    /// (Skipped when empty so that app versions computed before these fields existed hold.)
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub protocol: String,
    /// For `command`: program and arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    pub interval_ms: u32,
    pub timeout_ms: u32,
    pub grace_ms: u32,
    pub max_failures: u32,
}

impl HealthSpec {
    pub const DEFAULT_INTERVAL_MS: u32 = 1000;
    pub const DEFAULT_TIMEOUT_MS: u32 = 1000;
    pub const DEFAULT_GRACE_MS: u32 = 5000;
    pub const DEFAULT_MAX_FAILURES: u32 = 3;

    /// The same check with every zero field replaced by its default.
    pub fn effective(&self) -> HealthSpec {
        let or = |v: u32, d: u32| if v == 0 { d } else { v };
        HealthSpec {
            http_path: self.http_path.clone(),
            protocol: self.protocol.clone(),
            command: self.command.clone(),
            interval_ms: or(self.interval_ms, Self::DEFAULT_INTERVAL_MS),
            timeout_ms: or(self.timeout_ms, Self::DEFAULT_TIMEOUT_MS),
            grace_ms: or(self.grace_ms, Self::DEFAULT_GRACE_MS),
            max_failures: or(self.max_failures, Self::DEFAULT_MAX_FAILURES),
        }
    }
}

/// One app of a group as the federator last described it to this cell.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppRecord {
    pub name: String,
    pub command: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub instances: u32,
    pub resources: Resources,
    pub health: HealthSpec,
    /// Must pass once before a task counts and takes traffic; `None`: ready when healthy.
    #[serde(default)]
    pub readiness: Option<HealthSpec>,
    /// Apps of the group that must be ready before this one starts, and stop after it.
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// Placement constraints, `field:OPERATOR[:value]`, validated on receipt.
    #[serde(default)]
    pub constraints: Vec<String>,
    #[serde(default)]
    pub upgrade: UpgradeStrategy,
    /// Allocation role (tenant); empty means the group's name.
    #[serde(default)]
    pub role: String,
    /// How the app is autoscaled on this site; `None`: a fixed count.
    #[serde(default)]
    pub autoscale: Option<switchyard_cell_core::autoscale::AutoscaleSpec>,
    #[serde(default)]
    pub metrics: MetricsRecord,
    /// Digest of everything that makes a task of this app what it is (see
    /// [`AppRecord::compute_version`]); tasks of another version are replaced by a rolling upgrade.
    #[serde(default)]
    pub version: String,
}

pub use switchyard_cell_core::deploy::UpgradeStrategy;

impl AppRecord {
    /// Digest of the fields a running task embodies: program, arguments, environment,
    /// resources, health check and constraints. `instances`, the upgrade strategy and the role
    /// are left out: scaling or changing how to upgrade never replaces a task.
    pub fn compute_version(&self) -> String {
        use sha2::Digest as _;
        let mut fields =
            serde_json::json!([self.command, self.args, self.env, self.resources, self.health, self.constraints]);
        // Appended only when set, so apps without one keep the version they had before
        // readiness checks existed (a cell upgrade must not roll every task).
        if let Some(r) = &self.readiness {
            fields.as_array_mut().expect("an array").push(serde_json::json!(r));
        }
        let digest = sha2::Sha256::digest(fields.to_string().as_bytes());
        hex::encode(&digest[..6])
    }

    /// What a task of this app is launched with.
    pub fn launch(&self) -> LaunchSpec {
        LaunchSpec {
            command: self.command.clone(),
            args: self.args.clone(),
            env: self.env.clone(),
            health: self.health.clone(),
            readiness: self.readiness.clone(),
        }
    }
}

/// Where an app's instances expose their own metrics (Prometheus text).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsRecord {
    pub path: String,
    pub concurrency: String,
    pub requests_total: String,
    pub request_ms_total: String,
}

/// What one task is launched with; kept per task so that tasks of an older version keep
/// running as they were while a rolling upgrade replaces them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchSpec {
    pub command: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub health: HealthSpec,
    #[serde(default)]
    pub readiness: Option<HealthSpec>,
}

/// A group with this site's share of its apps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupRecord {
    pub name: String,
    pub epoch: u64,
    pub apps: Vec<AppRecord>,
    /// The federator forbids autoscaling the group (a freeze, or an operation owns it).
    #[serde(default)]
    pub frozen: bool,
    /// A stateful group: (app, HTTP path) asked for the replica's replication lag in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_lag_probe: Option<(String, String)>,
}

impl GroupRecord {
    pub fn app(&self, name: &str) -> Option<&AppRecord> {
        self.apps.iter().find(|a| a.name == name)
    }
}

/// A validated desired state, as accepted from the federator.
#[derive(Clone, Debug, PartialEq)]
pub struct DesiredRecord {
    pub epoch: u64,
    pub site: String,
    pub groups: Vec<GroupRecord>,
}

/// A task the cell has placed on a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskRecord {
    pub task_id: String,
    pub group: String,
    pub app: String,
    pub node_id: String,
    pub port: u16,
    /// What the task was placed with; counted against its node while the task exists.
    pub resources: Resources,
    /// Placement order: larger is newer. Scale-down removes the newest tasks first.
    pub seq: u64,
    /// Version of the app spec the task was launched with (empty in tables written before
    /// versions existed; such tasks take their app's version when the table is loaded).
    #[serde(default)]
    pub version: String,
    /// Allocation role the task is accounted to.
    #[serde(default)]
    pub role: String,
    /// What the task runs; `None` in older tables (the app's current spec is used).
    #[serde(default)]
    pub launch: Option<LaunchSpec>,
}

/// Whether `name` may be used as a group, app or node name. The characters are restricted so
/// that names compose into task ids and file names without escaping.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && !name.starts_with('-')
}

/// Whether `id` is safe to use as a single path component (task ids become directory names).
pub fn is_valid_task_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 200
        && id != "."
        && id != ".."
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_ignore_count_and_policy_and_survive_new_optional_fields() {
        let app = AppRecord {
            name: "web".into(),
            command: "sample-app".into(),
            args: vec!["--x".into()],
            env: BTreeMap::from([("A".into(), "1".into())]),
            instances: 2,
            resources: Resources::new(100, 64, 0),
            health: HealthSpec { http_path: "/health".into(), interval_ms: 500, ..Default::default() },
            readiness: None,
            depends_on: vec![],
            constraints: vec!["hostname:UNIQUE".into()],
            upgrade: UpgradeStrategy::default(),
            role: "web".into(),
            autoscale: None,
            metrics: MetricsRecord::default(),
            version: String::new(),
        };
        // The digest as computed before protocol, command and readiness existed: a cell upgrade
        // must not see every running task as an old version.
        use sha2::Digest as _;
        let old_health = serde_json::json!({ "http_path": "/health", "interval_ms": 500, "timeout_ms": 0, "grace_ms": 0, "max_failures": 0 });
        let old = serde_json::json!([app.command, app.args, app.env, app.resources, old_health, app.constraints]);
        assert_eq!(app.compute_version(), hex::encode(&sha2::Sha256::digest(old.to_string().as_bytes())[..6]));

        let scaled = AppRecord {
            instances: 9,
            upgrade: UpgradeStrategy { minimum_health_capacity: 0.5, maximum_over_capacity: 0.0 },
            ..app.clone()
        };
        assert_eq!(scaled.compute_version(), app.compute_version(), "scaling is not a new version");
        let ready =
            AppRecord { readiness: Some(HealthSpec { protocol: "tcp".into(), ..Default::default() }), ..app.clone() };
        assert_ne!(ready.compute_version(), app.compute_version());
        let env = AppRecord { env: BTreeMap::from([("A".into(), "2".into())]), ..app.clone() };
        assert_ne!(env.compute_version(), app.compute_version());
    }

    #[test]
    fn health_defaults_fill_only_zero_fields() {
        let h = HealthSpec { http_path: "/h".into(), interval_ms: 200, ..Default::default() }.effective();
        assert_eq!((h.interval_ms, h.timeout_ms, h.grace_ms, h.max_failures), (200, 1000, 5000, 3));
    }

    #[test]
    fn names_and_task_ids_are_path_safe() {
        assert!(is_valid_name("crm-web"));
        assert!(!is_valid_name("crm.web"));
        assert!(!is_valid_name("../x"));
        assert!(!is_valid_name(""));
        assert!(is_valid_task_id("crm-web.web.12"));
        assert!(!is_valid_task_id(".."));
        assert!(!is_valid_task_id("a/b"));
    }

    #[test]
    fn resource_arithmetic_saturates() {
        let a = Resources::new(100, 10, 0);
        let b = Resources::new(300, 5, 1);
        assert_eq!(a.minus(&b), Resources::new(0, 5, 0));
        assert!(a.fits_in(&a.plus(&b)));
        assert!(!b.fits_in(&a));
    }
}
