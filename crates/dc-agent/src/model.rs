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
            interval_ms: or(self.interval_ms, Self::DEFAULT_INTERVAL_MS),
            timeout_ms: or(self.timeout_ms, Self::DEFAULT_TIMEOUT_MS),
            grace_ms: or(self.grace_ms, Self::DEFAULT_GRACE_MS),
            max_failures: or(self.max_failures, Self::DEFAULT_MAX_FAILURES),
        }
    }
}

/// One app of a group as the federator last described it to this cell.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppRecord {
    pub name: String,
    pub command: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub instances: u32,
    pub resources: Resources,
    pub health: HealthSpec,
}

/// A group with this site's share of its apps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupRecord {
    pub name: String,
    pub epoch: u64,
    pub apps: Vec<AppRecord>,
}

impl GroupRecord {
    pub fn app(&self, name: &str) -> Option<&AppRecord> {
        self.apps.iter().find(|a| a.name == name)
    }
}

/// A validated desired state, as accepted from the federator.
#[derive(Clone, Debug, PartialEq, Eq)]
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
