//! Every conversion between protobuf messages and the agent's domain types, with the
//! validation of what arrives from the wire. Nothing else in the crate builds domain values from
//! protobuf.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use switchyard_proto::agent::v1 as agent;
use switchyard_proto::common::v1 as common;
use switchyard_proto::node::v1 as nodepb;

use switchyard_cell_core::constraints::Constraint;

use crate::model::{
    AppRecord, DesiredRecord, GroupRecord, HealthSpec, MetricsRecord, Resources, UpgradeStrategy, is_valid_name,
    is_valid_task_id,
};

/// Most instances one app may ask for on one site; a larger number is a bug upstream.
pub const MAX_INSTANCES_PER_APP: u32 = 10_000;

pub fn resources_from_proto(r: Option<&common::Resources>) -> Resources {
    r.map_or(Resources::ZERO, |r| Resources::new(r.cpu_millis, r.mem_mib, r.disk_mib))
}

pub fn resources_to_proto(r: &Resources) -> common::Resources {
    common::Resources { cpu_millis: r.cpu_millis, mem_mib: r.mem_mib, disk_mib: r.disk_mib }
}

pub fn health_from_proto(h: Option<&common::HealthCheck>) -> HealthSpec {
    h.map_or_else(HealthSpec::default, |h| HealthSpec {
        http_path: h.http_path.clone(),
        protocol: h.protocol.clone(),
        command: h.command.clone(),
        interval_ms: h.interval_ms,
        timeout_ms: h.timeout_ms,
        grace_ms: h.grace_ms,
        max_failures: h.max_failures,
    })
}

pub fn health_to_proto(h: &HealthSpec) -> common::HealthCheck {
    common::HealthCheck {
        http_path: h.http_path.clone(),
        protocol: h.protocol.clone(),
        command: h.command.clone(),
        interval_ms: h.interval_ms,
        timeout_ms: h.timeout_ms,
        grace_ms: h.grace_ms,
        max_failures: h.max_failures,
    }
}

fn check_env(env: &BTreeMap<String, String>, at: &str, problems: &mut Vec<String>) {
    for (k, v) in env {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            problems.push(format!("{at}: environment variable name {k:?} is empty or contains '=' or NUL"));
        }
        if v.contains('\0') {
            problems.push(format!("{at}: environment variable {k} contains a NUL byte"));
        }
    }
}

fn check_probe(h: &HealthSpec) -> Result<(), String> {
    if h.http_path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("path {:?} contains whitespace", h.http_path));
    }
    if h.command.iter().any(|a| a.contains('\0')) {
        return Err("the command contains a NUL byte".into());
    }
    match h.protocol.as_str() {
        "" | "http" if !h.http_path.is_empty() && !h.http_path.starts_with('/') => {
            Err(format!("path {:?} must start with '/'", h.http_path))
        }
        "http" if h.http_path.is_empty() => Err("protocol http needs a path".into()),
        "" | "http" | "tcp" => Ok(()),
        "command" if h.command.first().is_none_or(|c| c.trim().is_empty()) => {
            Err("protocol command needs a program".into())
        }
        "command" => Ok(()),
        other => Err(format!("unknown protocol {other:?}; use http, tcp or command")),
    }
}

/// Validates a desired state from the federator for this cell's `site`. Returns every problem
/// found, so one log line tells the federator's operators all that is wrong.
pub fn desired_from_proto(d: &agent::DesiredState, site: &str) -> Result<DesiredRecord, Vec<String>> {
    let mut problems = Vec::new();
    if d.site != site {
        problems.push(format!("desired state is for site {:?} but this cell runs site {site:?}", d.site));
    }
    let mut seen_groups = BTreeSet::new();
    let mut groups = Vec::with_capacity(d.groups.len());
    for g in &d.groups {
        if !is_valid_name(&g.name) {
            problems.push(format!("group name {:?} is invalid: use 1-63 characters from [A-Za-z0-9_-]", g.name));
        }
        if !seen_groups.insert(g.name.as_str()) {
            problems.push(format!("group {:?} appears twice", g.name));
        }
        if g.epoch > d.epoch {
            problems.push(format!("group {:?} has epoch {} above the state's epoch {}", g.name, g.epoch, d.epoch));
        }
        let mut seen_apps = BTreeSet::new();
        let mut apps = Vec::with_capacity(g.apps.len());
        for a in &g.apps {
            let at = format!("{}/{}", g.name, a.name);
            if !is_valid_name(&a.name) {
                problems.push(format!("app name {at:?} is invalid: use 1-63 characters from [A-Za-z0-9_-]"));
            }
            if !seen_apps.insert(a.name.as_str()) {
                problems.push(format!("app {at} appears twice"));
            }
            if a.command.trim().is_empty() || a.command.contains('\0') {
                problems.push(format!("{at}: command is empty or contains NUL"));
            }
            if a.args.iter().any(|x| x.contains('\0')) {
                problems.push(format!("{at}: an argument contains a NUL byte"));
            }
            if a.instances > MAX_INSTANCES_PER_APP {
                problems.push(format!("{at}: {} instances is above the limit of {MAX_INSTANCES_PER_APP}", a.instances));
            }
            let env: BTreeMap<String, String> = a.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            check_env(&env, &at, &mut problems);
            let health = health_from_proto(a.health.as_ref());
            let readiness = a.readiness.as_ref().map(|r| health_from_proto(Some(r)));
            for (what, check) in std::iter::once(("health", &health)).chain(readiness.iter().map(|r| ("readiness", r)))
            {
                if let Err(e) = check_probe(check) {
                    problems.push(format!("{at}: {what} check: {e}"));
                }
            }
            for c in &a.constraints {
                if let Err(e) = Constraint::parse(c) {
                    problems.push(format!("{at}: {e}"));
                }
            }
            let upgrade = a.upgrade.as_ref().map_or_else(UpgradeStrategy::default, |u| UpgradeStrategy {
                minimum_health_capacity: u.minimum_health_capacity,
                maximum_over_capacity: u.maximum_over_capacity,
            });
            for (what, v) in [
                ("minimum_health_capacity", upgrade.minimum_health_capacity),
                ("maximum_over_capacity", upgrade.maximum_over_capacity),
            ] {
                if !(0.0..=1.0).contains(&v) {
                    problems.push(format!("{at}: upgrade {what} {v} is outside [0, 1]"));
                }
            }
            if !a.role.is_empty() && !is_valid_name(&a.role) {
                problems.push(format!("{at}: role {:?} is invalid: use 1-63 characters from [A-Za-z0-9_-]", a.role));
            }
            let autoscale = if a.autoscale_json.is_empty() {
                None
            } else {
                match serde_json::from_str::<switchyard_cell_core::autoscale::AutoscaleSpec>(&a.autoscale_json) {
                    Ok(spec) => match spec.validate() {
                        Ok(()) => Some(spec),
                        Err(e) => {
                            problems.push(format!("{at}: autoscale: {e}"));
                            None
                        }
                    },
                    Err(e) => {
                        problems.push(format!("{at}: autoscale policy is not valid JSON for a policy: {e}"));
                        None
                    }
                }
            };
            let m = a.metrics.clone().unwrap_or_default();
            let metrics = MetricsRecord {
                path: if m.path.is_empty() { "/metrics".into() } else { m.path },
                concurrency: m.concurrency,
                requests_total: m.requests_total,
                request_ms_total: m.request_ms_total,
            };
            if !metrics.path.starts_with('/') || metrics.path.chars().any(|c| c.is_whitespace() || c.is_control()) {
                problems.push(format!("{at}: metrics path {:?} must start with '/' and have no spaces", metrics.path));
            }
            let mut app = AppRecord {
                name: a.name.clone(),
                command: a.command.clone(),
                args: a.args.clone(),
                env,
                instances: a.instances,
                resources: resources_from_proto(a.resources.as_ref()),
                health,
                readiness,
                depends_on: a.depends_on.clone(),
                constraints: a.constraints.clone(),
                upgrade,
                role: if a.role.is_empty() { g.name.clone() } else { a.role.clone() },
                autoscale,
                metrics,
                version: String::new(),
            };
            app.version = app.compute_version();
            apps.push(app);
        }
        let names: BTreeSet<&str> = apps.iter().map(|a: &AppRecord| a.name.as_str()).collect();
        for a in &apps {
            for d in &a.depends_on {
                if !names.contains(d.as_str()) || *d == a.name {
                    problems.push(format!(
                        "{}/{}: depends on {d:?}, which is not another app of the group",
                        g.name, a.name
                    ));
                }
            }
        }
        let replication_lag_probe = match (g.replication_lag_app.as_str(), g.replication_lag_path.as_str()) {
            ("", "") => None,
            (app, path) => {
                if !names.contains(app) {
                    problems.push(format!("{}: replication lag app {app:?} is not an app of the group", g.name));
                }
                if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    problems.push(format!(
                        "{}: replication lag path {path:?} must start with '/' and have no spaces",
                        g.name
                    ));
                }
                Some((app.to_string(), path.to_string()))
            }
        };
        groups.push(GroupRecord {
            name: g.name.clone(),
            epoch: g.epoch,
            apps,
            frozen: g.autoscale_frozen,
            replication_lag_probe,
        });
    }
    if problems.is_empty() { Ok(DesiredRecord { epoch: d.epoch, site: d.site.clone(), groups }) } else { Err(problems) }
}

/// What a node declared when it registered, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeRegistration {
    pub node_id: String,
    pub address: IpAddr,
    pub capacity: Resources,
    pub port_min: u16,
    pub port_max: u16,
    pub attributes: BTreeMap<String, String>,
}

/// Validates a `NodeRegister`. The error names every offending field.
pub fn registration_from_proto(r: &nodepb::NodeRegister) -> Result<NodeRegistration, String> {
    let mut problems = Vec::new();
    if !is_valid_name(&r.node_id) {
        problems.push(format!("node_id {:?} is invalid: use 1-63 characters from [A-Za-z0-9_-]", r.node_id));
    }
    let address = r.address.parse::<IpAddr>();
    if address.is_err() {
        problems.push(format!("address {:?} is not an IP address", r.address));
    }
    let capacity = resources_from_proto(r.resources.as_ref());
    if capacity.cpu_millis == 0 {
        problems.push("resources.cpu_millis must be above 0".to_string());
    }
    if capacity.mem_mib == 0 {
        problems.push("resources.mem_mib must be above 0".to_string());
    }
    let port_min = u16::try_from(r.port_min).ok().filter(|p| *p > 0);
    let port_max = u16::try_from(r.port_max).ok().filter(|p| *p > 0);
    if port_min.is_none() {
        problems.push(format!("port_min {} must be within 1-65535", r.port_min));
    }
    if port_max.is_none() {
        problems.push(format!("port_max {} must be within 1-65535", r.port_max));
    }
    if r.port_min > r.port_max {
        problems.push(format!("port_min {} is above port_max {}", r.port_min, r.port_max));
    }
    match (address, port_min, port_max, problems.is_empty()) {
        (Ok(address), Some(port_min), Some(port_max), true) => Ok(NodeRegistration {
            node_id: r.node_id.clone(),
            address,
            capacity,
            port_min,
            port_max,
            attributes: r.attributes.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        }),
        _ => Err(format!("invalid NodeRegister: {}", problems.join("; "))),
    }
}

/// Validates a node assignment before a node acts on it: every task must be launchable as
/// described, or the node keeps what it runs.
pub fn check_assignment(a: &nodepb::NodeAssignment) -> Result<(), String> {
    let mut problems = Vec::new();
    let mut ids = BTreeSet::new();
    for t in &a.tasks {
        if !is_valid_task_id(&t.task_id) {
            problems.push(format!("task id {:?} is not a safe file name", t.task_id));
        }
        if !ids.insert(t.task_id.as_str()) {
            problems.push(format!("task {} appears twice", t.task_id));
        }
        if t.command.trim().is_empty() {
            problems.push(format!("task {}: command is empty", t.task_id));
        }
        if t.port == 0 || t.port > u32::from(u16::MAX) {
            problems.push(format!("task {}: port {} is outside 1-65535", t.task_id, t.port));
        }
    }
    if problems.is_empty() { Ok(()) } else { Err(problems.join("; ")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(name: &str) -> agent::AppSpec {
        agent::AppSpec { name: name.into(), command: "sample-app".into(), instances: 2, ..Default::default() }
    }

    #[test]
    fn desired_state_reports_every_problem() {
        let d = agent::DesiredState {
            epoch: 3,
            site: "other".into(),
            groups: vec![
                agent::GroupSpec {
                    name: "g".into(),
                    epoch: 4,
                    autoscale_frozen: false,
                    replication_lag_app: "db".into(),
                    replication_lag_path: "lag".into(),
                    apps: vec![app("web"), app("web")],
                },
                agent::GroupSpec { name: "../x".into(), epoch: 1, ..Default::default() },
            ],
        };
        let problems = desired_from_proto(&d, "site-a").unwrap_err();
        assert_eq!(problems.len(), 6, "{problems:#?}");
        assert!(problems.iter().any(|p| p.contains("replication lag app \"db\"")), "{problems:#?}");
    }

    #[test]
    fn valid_desired_state_converts() {
        let d = agent::DesiredState {
            epoch: 3,
            site: "site-a".into(),
            groups: vec![agent::GroupSpec {
                name: "g".into(),
                epoch: 2,
                autoscale_frozen: false,
                replication_lag_app: String::new(),
                replication_lag_path: String::new(),
                apps: vec![app("web")],
            }],
        };
        let rec = desired_from_proto(&d, "site-a").unwrap();
        assert_eq!(rec.groups[0].apps[0].instances, 2);
    }

    #[test]
    fn registration_names_each_bad_field() {
        let r = nodepb::NodeRegister {
            node_id: String::new(),
            address: "not-an-ip".into(),
            resources: None,
            port_min: 9000,
            port_max: 8000,
            attributes: Default::default(),
        };
        let e = registration_from_proto(&r).unwrap_err();
        for field in ["node_id", "address", "cpu_millis", "mem_mib", "port_min 9000 is above port_max"] {
            assert!(e.contains(field), "{e} lacks {field}");
        }
    }
}
