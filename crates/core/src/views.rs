//! Read-side views derived from the committed state: the routing table DNS servers serve, the
//! desired state each cell converges on, and per-group status. Pure and deterministic.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::model::{AppSpec, SiteName, SiteState};
use crate::state::State;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteTarget {
    pub site: SiteName,
    pub addresses: Vec<IpAddr>,
    pub weight: u32,
    /// Whether the site can serve the name now (see [`unhealthy_placements`]).
    pub healthy: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteEntry {
    pub name: String,
    pub group: String,
    pub ttl_s: u32,
    pub targets: Vec<RouteTarget>,
    pub services: Vec<RouteService>,
    /// TXT strings published at the name.
    pub txt: Vec<String>,
    /// For an alias: the name it is a CNAME to (then it has no targets, services or TXT).
    pub cname: Option<String>,
}

/// One SRV record: an instance's port on a host named in the same table.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RouteService {
    pub priority: u32,
    pub weight: u32,
    pub port: u32,
    /// Relative to the zone: `<node>.<site>`.
    pub target: String,
}

/// (group, site, app) → sorted (node, address, port) of its healthy instances.
pub type ServiceEndpoints = BTreeMap<(String, String, String), Vec<(String, IpAddr, u32)>>;

/// Where the healthy instances of every app of every group run, per site, from the committed
/// cell reports: (group, site, app) → sorted (node, address, port). Only groups placed on the
/// site and apps of the group's spec count.
pub fn service_endpoints(state: &State) -> ServiceEndpoints {
    let mut out = BTreeMap::new();
    for g in state.groups.values() {
        group_endpoints(state, g, &mut out);
    }
    out
}

/// [`service_endpoints`] of one group, into `out`.
fn group_endpoints(state: &State, g: &crate::model::AppGroup, out: &mut ServiceEndpoints) {
    for site in g.placement.sites.keys() {
        let Some(report) = state.reports.get(site).and_then(|r| r.report.groups.get(&g.spec.name)) else {
            continue;
        };
        for app in &g.spec.apps {
            let Some(a) = report.apps.get(&app.name) else { continue };
            let mut eps: Vec<(String, IpAddr, u32)> = a
                .instances
                .iter()
                .filter(|i| i.running && i.healthy && i.port > 0)
                .filter_map(|i| Some((i.node_id.clone(), i.address.parse().ok()?, i.port)))
                .collect();
            if eps.is_empty() {
                continue;
            }
            eps.sort();
            eps.dedup();
            out.insert((g.spec.name.clone(), site.clone(), app.name.clone()), eps);
        }
    }
}

/// Traffic weight per (group, site), sites with weight 0 left out.
pub type Weights = BTreeMap<(String, String), u32>;

/// What DNS answers derive from (traffic weights, service endpoints and placement health), for
/// `groups` only (`None`: every group). `State::apply` compares it before and after an action,
/// over the groups the action can touch, to decide whether the routing version moves: any
/// action that changes a weight publishes a new version without having to say so.
pub fn routing_inputs(
    state: &State,
    groups: Option<&[String]>,
) -> (Weights, ServiceEndpoints, BTreeSet<(String, String)>) {
    let mut weights = BTreeMap::new();
    let mut endpoints = BTreeMap::new();
    let mut unhealthy = BTreeSet::new();
    let mut visit = |g: &crate::model::AppGroup| {
        for (site, share) in g.placement.sites.iter().filter(|(_, s)| s.weight > 0) {
            weights.insert((g.spec.name.clone(), site.clone()), share.weight);
        }
        group_endpoints(state, g, &mut endpoints);
        group_health(state, g, &mut unhealthy);
    };
    match groups {
        None => state.groups.values().for_each(&mut visit),
        Some(names) => names.iter().filter_map(|n| state.groups.get(n)).for_each(&mut visit),
    }
    (weights, endpoints, unhealthy)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutingView {
    pub version: u64,
    pub epoch: u64,
    pub entries: Vec<RouteEntry>,
}

/// Service discovery names of every healthy app instance (see [`service_endpoints`]):
/// `<app>.<group>.<site>` with the instances' addresses, `_<app>._tcp.<group>.<site>` with one
/// SRV record per instance, and `<node>.<site>` with each node's address (the SRV targets).
fn service_entries(state: &State) -> Vec<RouteEntry> {
    let mut entries = Vec::new();
    let mut hosts: BTreeMap<(String, String), (IpAddr, u32)> = BTreeMap::new();
    for ((group, site, app), eps) in service_endpoints(state) {
        let Some(g) = state.groups.get(&group) else { continue };
        let ttl_s = g.spec.ttl_s;
        let base = format!("{}.{}", g.spec.dns_name, site);
        let mut addresses: Vec<IpAddr> = eps.iter().map(|(_, a, _)| *a).collect();
        addresses.dedup();
        addresses.sort();
        addresses.dedup();
        entries.push(RouteEntry {
            name: format!("{app}.{base}"),
            group: group.clone(),
            ttl_s,
            targets: vec![RouteTarget { site: site.clone(), addresses, weight: 1, healthy: true }],
            services: Vec::new(),
            txt: Vec::new(),
            cname: None,
        });
        let services = eps
            .iter()
            .map(|(node, _, port)| RouteService {
                priority: 0,
                weight: 1,
                port: *port,
                target: format!("{node}.{site}"),
            })
            .collect();
        entries.push(RouteEntry {
            name: format!("_{app}._tcp.{base}"),
            group: group.clone(),
            ttl_s,
            targets: Vec::new(),
            services,
            txt: Vec::new(),
            cname: None,
        });
        for (node, address, _) in eps {
            let ttl = hosts.get(&(node.clone(), site.clone())).map_or(ttl_s, |(_, t)| (*t).min(ttl_s));
            hosts.insert((node, site.clone()), (address, ttl));
        }
    }
    for ((node, site), (address, ttl_s)) in hosts {
        entries.push(RouteEntry {
            name: format!("{node}.{site}"),
            group: String::new(),
            ttl_s,
            targets: vec![RouteTarget { site: site.clone(), addresses: vec![address], weight: 1, healthy: true }],
            services: Vec::new(),
            txt: Vec::new(),
            cname: None,
        });
    }
    entries
}

/// (group, site) pairs of the placements that cannot serve their group now: the site is down or
/// fenced, or its cell's latest report lists the group, the site should run some of it, and no
/// instance of any of its apps there is running and healthy. A site without a report counts as
/// healthy: an observer that has not spoken yet is no evidence of an outage.
pub fn unhealthy_placements(state: &State) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for g in state.groups.values() {
        group_health(state, g, &mut out);
    }
    out
}

/// [`unhealthy_placements`] of one group, into `out`.
fn group_health(state: &State, g: &crate::model::AppGroup, out: &mut BTreeSet<(String, String)>) {
    for (site, share) in &g.placement.sites {
        let site_down = state.sites.get(site).is_some_and(|s| matches!(s.state, SiteState::Down | SiteState::Fenced));
        let should_run = share.instances.values().any(|n| *n > 0);
        let nothing_healthy =
            state.reports.get(site).and_then(|r| r.report.groups.get(&g.spec.name)).is_some_and(|report| {
                !report.apps.values().any(|a| a.instances.iter().any(|i| i.running && i.healthy))
            });
        if site_down || (should_run && nothing_healthy) {
            out.insert((g.spec.name.clone(), site.clone()));
        }
    }
}

/// The routing table: for each group's DNS name, every site of its placement with that site's
/// ingress addresses, traffic weight and health, and a TXT record per site stating the same
/// (`site=<site> weight=<w> healthy=<yes|no>`) so operators can read what a DNS server serves;
/// each of the group's aliases as a CNAME to its name.
/// Sites with weight 0 are listed so that receivers can see them being drained; they get no
/// traffic.
pub fn routing_table(state: &State) -> RoutingView {
    let unhealthy = unhealthy_placements(state);
    let mut entries = state
        .groups
        .values()
        .map(|g| {
            let targets: Vec<RouteTarget> = g
                .placement
                .sites
                .iter()
                .filter_map(|(site, share)| {
                    state.sites.get(site).map(|s| RouteTarget {
                        site: site.clone(),
                        addresses: s.spec.ingress.clone(),
                        weight: share.weight,
                        healthy: !unhealthy.contains(&(g.spec.name.clone(), site.clone())),
                    })
                })
                .collect();
            let txt = targets
                .iter()
                .map(|t| {
                    format!("site={} weight={} healthy={}", t.site, t.weight, if t.healthy { "yes" } else { "no" })
                })
                .collect();
            RouteEntry {
                name: g.spec.dns_name.clone(),
                group: g.spec.name.clone(),
                ttl_s: g.spec.ttl_s,
                targets,
                services: Vec::new(),
                txt,
                cname: None,
            }
        })
        .collect::<Vec<_>>();
    for g in state.groups.values() {
        for alias in &g.spec.dns_aliases {
            entries.push(RouteEntry {
                name: alias.clone(),
                group: g.spec.name.clone(),
                ttl_s: g.spec.ttl_s,
                targets: Vec::new(),
                services: Vec::new(),
                txt: Vec::new(),
                cname: Some(g.spec.dns_name.clone()),
            });
        }
    }
    entries.extend(service_entries(state));
    RoutingView { version: state.routing_version, epoch: state.routing_version, entries }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredApp {
    pub spec: AppSpec,
    pub instances: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredGroup {
    pub name: String,
    pub epoch: u64,
    /// Allocation role (tenant) of the group's apps.
    pub role: String,
    /// The cell must not autoscale the group: a freeze holds it (or the site), or an operation
    /// owns its instance counts.
    pub frozen: bool,
    pub apps: Vec<DesiredApp>,
    /// A stateful group: the app and HTTP path the cell asks for the replica's lag.
    pub replication_lag_probe: Option<(crate::model::AppName, String)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredView {
    pub site: SiteName,
    pub epoch: u64,
    pub groups: Vec<DesiredGroup>,
}

/// What `site`'s cell must run: every group placed on the site with its instance counts, and
/// with a count of zero (stop) every other group the cell may still run. A group is left out
/// only once the cell's last report shows that it runs none of it and that the cell had
/// already applied the group's latest placement (so a decision it has not seen yet is never
/// hidden from it); with no report yet, every group is listed. This keeps each site's desired
/// state the size of what the site runs rather than of the whole federation.
pub fn desired_for_site(state: &State, site: &str, now_ms: u64) -> DesiredView {
    let report = state.reports.get(site).map(|r| &r.report);
    let may_run = |g: &crate::model::AppGroup| -> bool {
        let Some(report) = report else { return true };
        g.placement.sites.contains_key(site)
            || report.applied_epoch < g.placement.epoch
            || report.groups.get(&g.spec.name).is_some_and(|gr| gr.present() > 0)
    };
    let groups = state
        .groups
        .values()
        .filter(|g| may_run(g))
        .map(|g| {
            let share = g.placement.share(site);
            DesiredGroup {
                name: g.spec.name.clone(),
                epoch: g.placement.epoch,
                role: g.spec.role().to_string(),
                frozen: g.operation.is_some() || state.freeze_on(&g.spec.name, &[site], now_ms).is_some(),
                apps: g
                    .spec
                    .apps
                    .iter()
                    .map(|a| DesiredApp {
                        spec: a.clone(),
                        instances: share.instances.get(&a.name).copied().unwrap_or(0),
                    })
                    .collect(),
                replication_lag_probe: g.spec.replication_lag_probe(),
            }
        })
        .collect();
    DesiredView { site: site.to_string(), epoch: state.max_epoch(), groups }
}

/// Running and healthy instances of `group` on `site`, from the last committed report.
pub fn group_counts_on(state: &State, group: &str, site: &str) -> (u32, u32) {
    state.reports.get(site).and_then(|r| r.report.groups.get(group)).map_or((0, 0), |g| (g.running(), g.healthy()))
}

/// What is known of a group's instances on a site at `now_ms`: `unknown` when the site is
/// declared down or its cell has no fresh report (never `healthy` on old news), otherwise
/// `healthy` (every desired instance healthy), `degraded`, `unhealthy` (none), or `idle`
/// (none desired).
pub fn placement_health(state: &State, group: &str, site: &str, now_ms: u64) -> &'static str {
    let desired = state.groups.get(group).map_or(0, |g| g.placement.share(site).total_instances());
    let fresh = state.reports.get(site).filter(|r| r.age_ms(now_ms) <= crate::REPORT_FRESH_MS);
    let down = state.down_sites.contains_key(site)
        || state.sites.get(site).is_some_and(|s| matches!(s.state, crate::model::SiteState::Down));
    match fresh {
        _ if down => "unknown",
        None => "unknown",
        Some(_) if desired == 0 => "idle",
        Some(r) => {
            let healthy = r.report.groups.get(group).map_or(0, |g| g.healthy());
            if healthy >= desired {
                "healthy"
            } else if healthy == 0 {
                "unhealthy"
            } else {
                "degraded"
            }
        }
    }
}

/// Instances per app of a group on each site it is placed on.
pub fn placement_instances(state: &State, group: &str) -> BTreeMap<SiteName, BTreeMap<String, u32>> {
    state
        .groups
        .get(group)
        .map(|g| g.placement.sites.iter().map(|(s, share)| (s.clone(), share.instances.clone())).collect())
        .unwrap_or_default()
}
