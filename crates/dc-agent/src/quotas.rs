//! The cell's quota file (`dc-agent cell --quotas FILE`): the site's roles (tenants) with their
//! DRF weight, quota guarantee and limit, and static reservations of node resources for a role.
//!
//! ```toml
//! [[roles]]
//! name = "crm-web"
//! weight = 2.0
//! guarantee = { cpu_millis = 500, mem_mib = 256 }
//! limit = { cpu_millis = 8000, mem_mib = 16384 }
//!
//! [[reservations]]
//! node = "node-1"
//! role = "crm-web"
//! cpu_millis = 1000
//! mem_mib = 1024
//! ```
//!
//! Roles not listed get weight 1 and no quota. The cell re-reads the file when it changes; a
//! file with problems is refused as a whole (every problem named) and the quotas in force stay.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Deserialize;
use switchyard_cell_core::model as cm;

use crate::model::{Resources, is_valid_name};
use crate::schedule::Quotas;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct QuotaFile {
    #[serde(default)]
    roles: Vec<RoleEntry>,
    #[serde(default)]
    reservations: Vec<ReservationEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleEntry {
    name: String,
    #[serde(default = "one")]
    weight: f64,
    #[serde(default)]
    guarantee: Option<Amount>,
    #[serde(default)]
    limit: Option<Amount>,
}

fn one() -> f64 {
    1.0
}

#[derive(Clone, Copy, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Amount {
    #[serde(default)]
    cpu_millis: u64,
    #[serde(default)]
    mem_mib: u64,
    #[serde(default)]
    disk_mib: u64,
}

impl Amount {
    fn res(self) -> cm::Resources {
        cm::Resources::new(self.cpu_millis, self.mem_mib, self.disk_mib)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReservationEntry {
    node: String,
    role: String,
    #[serde(default)]
    cpu_millis: u64,
    #[serde(default)]
    mem_mib: u64,
    #[serde(default)]
    disk_mib: u64,
}

/// Parses and checks a quota file's text. The error names every problem.
pub fn parse(text: &str) -> Result<Quotas, String> {
    let file: QuotaFile = toml::from_str(text).map_err(|e| e.to_string())?;
    let mut problems = Vec::new();
    let mut names = BTreeSet::new();
    let mut roles = Vec::new();
    for r in &file.roles {
        if !is_valid_name(&r.name) {
            problems.push(format!("role {:?}: use 1-63 characters from [A-Za-z0-9_-]", r.name));
        }
        if !names.insert(r.name.as_str()) {
            problems.push(format!("role {:?} is listed twice", r.name));
        }
        if !(r.weight.is_finite() && r.weight > 0.0) {
            problems.push(format!("role {:?}: weight {} must be a number above 0", r.name, r.weight));
        }
        let guarantee = r.guarantee.unwrap_or_default().res();
        let limit = r.limit.map(Amount::res);
        if let Some(limit) = limit
            && !guarantee.fits_in(limit)
        {
            problems.push(format!("role {:?}: guarantee {guarantee} is above its limit {limit}", r.name));
        }
        roles.push(cm::Role { name: r.name.clone(), weight: r.weight, guarantee, limit });
    }
    let mut reservations = BTreeMap::new();
    for v in &file.reservations {
        let at = format!("reservation of node {:?} for role {:?}", v.node, v.role);
        if !is_valid_name(&v.node) || !is_valid_name(&v.role) {
            problems.push(format!("{at}: node and role must be 1-63 characters from [A-Za-z0-9_-]"));
        }
        if v.cpu_millis == 0 && v.mem_mib == 0 && v.disk_mib == 0 {
            problems.push(format!("{at} reserves nothing; give cpu_millis, mem_mib or disk_mib"));
        }
        let amount = Resources::new(v.cpu_millis, v.mem_mib, v.disk_mib);
        if reservations.insert((v.node.clone(), v.role.clone()), amount).is_some() {
            problems.push(format!("{at} is listed twice"));
        }
    }
    if problems.is_empty() { Ok(Quotas { roles, reservations }) } else { Err(problems.join("; ")) }
}

/// Reads and parses the quota file at `path`.
pub fn load(path: &Path) -> Result<Quotas, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_complete_file_parses() {
        let q = parse(
            r#"
            [[roles]]
            name = "crm-web"
            weight = 2.0
            guarantee = { cpu_millis = 500, mem_mib = 256 }
            limit = { cpu_millis = 8000, mem_mib = 16384 }

            [[roles]]
            name = "batch"

            [[reservations]]
            node = "node-1"
            role = "crm-web"
            cpu_millis = 1000
            mem_mib = 1024
            "#,
        )
        .unwrap();
        assert_eq!(q.roles.len(), 2);
        assert_eq!(q.roles[0].weight, 2.0);
        assert_eq!(q.roles[0].limit, Some(cm::Resources::new(8000, 16384, 0)));
        assert_eq!(q.roles[1].weight, 1.0);
        assert_eq!(q.roles[1].limit, None);
        assert_eq!(q.reservations[&("node-1".to_string(), "crm-web".to_string())], Resources::new(1000, 1024, 0));
        assert_eq!(parse("").unwrap(), Quotas::default());
    }

    #[test]
    fn every_problem_is_named() {
        let err = parse(
            r#"
            [[roles]]
            name = "a"
            weight = 0.0
            guarantee = { cpu_millis = 2000 }
            limit = { cpu_millis = 1000 }

            [[roles]]
            name = "a"

            [[reservations]]
            node = "n1"
            role = "a"
            "#,
        )
        .unwrap_err();
        for needle in ["weight 0", "above its limit", "listed twice", "reserves nothing"] {
            assert!(err.contains(needle), "{needle:?} missing from {err}");
        }
        let err = parse("[[roles]]\nname = \"a\"\nwieght = 2.0\n").unwrap_err();
        assert!(err.contains("unknown field `wieght`"), "{err}");
    }
}
