//! Sites, app groups and placements.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

pub type SiteName = String;
pub type GroupName = String;
pub type AppName = String;

/// Amounts of schedulable resources; units are in the field names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    #[serde(default)]
    pub cpu_millis: u64,
    #[serde(default)]
    pub mem_mib: u64,
    #[serde(default)]
    pub disk_mib: u64,
}

impl Resources {
    pub fn plus(self, o: Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_add(o.cpu_millis),
            mem_mib: self.mem_mib.saturating_add(o.mem_mib),
            disk_mib: self.disk_mib.saturating_add(o.disk_mib),
        }
    }

    pub fn saturating_sub(self, o: Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_sub(o.cpu_millis),
            mem_mib: self.mem_mib.saturating_sub(o.mem_mib),
            disk_mib: self.disk_mib.saturating_sub(o.disk_mib),
        }
    }

    pub fn times(self, n: u32) -> Resources {
        let n = u64::from(n);
        Resources {
            cpu_millis: self.cpu_millis.saturating_mul(n),
            mem_mib: self.mem_mib.saturating_mul(n),
            disk_mib: self.disk_mib.saturating_mul(n),
        }
    }

    /// Whether `self` fits inside `available` in every dimension.
    pub fn fits_in(self, available: Resources) -> bool {
        self.cpu_millis <= available.cpu_millis
            && self.mem_mib <= available.mem_mib
            && self.disk_mib <= available.disk_mib
    }
}

impl std::fmt::Display for Resources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} cpu_millis, {} mem_mib, {} disk_mib", self.cpu_millis, self.mem_mib, self.disk_mib)
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SiteState {
    #[default]
    Active,
    Draining,
    Maintenance,
    Fenced,
    Down,
}

impl SiteState {
    pub fn as_str(self) -> &'static str {
        match self {
            SiteState::Active => "Active",
            SiteState::Draining => "Draining",
            SiteState::Maintenance => "Maintenance",
            SiteState::Fenced => "Fenced",
            SiteState::Down => "Down",
        }
    }
}

/// A data center as declared in configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteSpec {
    pub name: SiteName,
    /// Addresses DNS answers with for groups active on this site (the site's VIPs).
    pub ingress: Vec<IpAddr>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A data center as the federation knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Site {
    pub spec: SiteSpec,
    pub state: SiteState,
}

/// Health (or readiness) check of an app's instances: HTTP GET on the instance's port, a TCP
/// connect to it, or a command run in its directory. Zero values mean the node's defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSpec {
    #[serde(default)]
    pub http_path: String,
    /// `http`, `tcp` or `command`; empty: `http` when `http_path` is set, else no check.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub protocol: String,
    /// For `command`: the program and its arguments; exit status 0 passes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default)]
    pub interval_ms: u32,
    #[serde(default)]
    pub timeout_ms: u32,
    #[serde(default)]
    pub grace_ms: u32,
    #[serde(default)]
    pub max_failures: u32,
}

/// Marathon's `upgradeStrategy`: how a changed app replaces its instances on a site. Both are
/// fractions of the instance count in `[0, 1]`.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpgradeSpec {
    /// Instances (old or new) that must stay healthy during the upgrade. Default 1: every
    /// replacement starts and is healthy before an old instance stops.
    #[serde(default = "UpgradeSpec::one")]
    pub minimum_health_capacity: f64,
    /// Extra instances the upgrade may run at once. Default 1.
    #[serde(default = "UpgradeSpec::one")]
    pub maximum_over_capacity: f64,
}

impl UpgradeSpec {
    fn one() -> f64 {
        1.0
    }

    pub fn is_default(&self) -> bool {
        *self == UpgradeSpec::default()
    }
}

impl Default for UpgradeSpec {
    fn default() -> Self {
        UpgradeSpec { minimum_health_capacity: 1.0, maximum_over_capacity: 1.0 }
    }
}

// Validated specs hold finite fractions, so bitwise equality is value equality.
impl PartialEq for UpgradeSpec {
    fn eq(&self, o: &Self) -> bool {
        self.minimum_health_capacity.to_bits() == o.minimum_health_capacity.to_bits()
            && self.maximum_over_capacity.to_bits() == o.maximum_over_capacity.to_bits()
    }
}

impl Eq for UpgradeSpec {}

/// How an app is autoscaled on each site that runs it (the policy kinds of
/// [`switchyard_cell_core::autoscale`]). Specs are validated on submission, so every number in
/// one is finite and equality is value equality.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Autoscale(pub switchyard_cell_core::autoscale::AutoscaleSpec);

impl Eq for Autoscale {}

/// Where the cell reads an app's own metrics (Prometheus text format) for autoscaling. Each
/// name is a metric the app's instances expose; values are summed over an instance's series.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSpec {
    /// HTTP path on the instance's port; default `/metrics`.
    #[serde(default)]
    pub path: String,
    /// Gauge of requests in flight (concurrency).
    #[serde(default)]
    pub concurrency: String,
    /// Counter of requests served, and counter of the milliseconds they took: their rates give
    /// the mean response time.
    #[serde(default)]
    pub requests_total: String,
    #[serde(default)]
    pub request_ms_total: String,
}

impl MetricsSpec {
    pub fn is_empty(&self) -> bool {
        *self == MetricsSpec::default()
    }
}

impl HealthSpec {
    /// The first problem with this check, if any.
    pub fn validate(&self) -> Result<(), String> {
        match self.protocol.as_str() {
            "" | "http" => {
                if self.protocol == "http" && self.http_path.is_empty() {
                    return Err("protocol http needs an http_path".into());
                }
                if !self.http_path.is_empty() && !self.http_path.starts_with('/') {
                    return Err(format!("http_path {:?} must start with '/'", self.http_path));
                }
                if !self.command.is_empty() {
                    return Err("a command is only used with protocol command".into());
                }
            }
            "tcp" => {
                if !self.http_path.is_empty() || !self.command.is_empty() {
                    return Err("protocol tcp takes neither http_path nor command".into());
                }
            }
            "command" => {
                if self.command.first().is_none_or(|c| c.trim().is_empty()) {
                    return Err("protocol command needs a command (program and arguments)".into());
                }
            }
            other => return Err(format!("unknown protocol {other:?}; use http, tcp or command")),
        }
        Ok(())
    }
}

/// One application of a group: a program run as `instances` processes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSpec {
    pub name: AppName,
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Instances on the group's home site when the group is registered.
    pub instances: u32,
    /// Resources of one instance.
    pub resources: Resources,
    #[serde(default)]
    pub health: HealthSpec,
    /// Must pass once before an instance counts in a rolling upgrade and takes traffic;
    /// absent: ready when healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<HealthSpec>,
    /// Apps of the same group that must be running and ready before this one starts, and that
    /// stop only after it (start and stop order: data before app before ingress).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<AppName>,
    /// Placement constraints in the form `field:OPERATOR[:value]` (`hostname:UNIQUE`,
    /// `rack:GROUP_BY:2`, `zone:LIKE:z[12]`), applied by each site's cell.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<String>,
    #[serde(default, skip_serializing_if = "UpgradeSpec::is_default")]
    pub upgrade: UpgradeSpec,
    /// Autoscaling on every site that runs the app; absent: the instance count is fixed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<Autoscale>,
    #[serde(default, skip_serializing_if = "MetricsSpec::is_empty")]
    pub metrics: MetricsSpec,
}

/// An app group as declared in configuration: the unit that moves between sites.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSpec {
    pub name: GroupName,
    /// DNS label of the group inside the federation zone (e.g. `crm-web`).
    pub dns_name: String,
    /// More DNS labels answering for the group: CNAMEs to `dns_name` (e.g. `crm`, `www-crm`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_aliases: Vec<String>,
    pub ttl_s: u32,
    #[serde(default)]
    pub tier: u32,
    /// Site the group runs on when first registered.
    pub home_site: SiteName,
    /// The cells' allocation role (tenant) the group's apps run under; empty means the group's
    /// own name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tenant: String,
    /// Groups this one needs next to it (a database, a cache). When a site is evacuated they
    /// move first, so that each group arrives where what it needs already runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<GroupName>,
    /// How a planned move shifts the group's traffic to its new site.
    #[serde(default, skip_serializing_if = "TrafficRamp::is_default")]
    pub ramp: TrafficRamp,
    /// What disaster recovery may do with the group.
    #[serde(default, skip_serializing_if = "FailoverPolicy::is_default")]
    pub failover: FailoverPolicy,
    /// Warm standbys: site → instances of each app kept running there with no traffic, so a
    /// failover only moves traffic (and a stateful group's replica lives there). Set when the
    /// group is registered.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub warm_standby: BTreeMap<SiteName, u32>,
    pub apps: Vec<AppSpec>,
}

/// Whether automation fails the group over off a site declared down.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailoverMode {
    /// Automation fails it over under the guard rails.
    #[default]
    Auto,
    /// Only a human does (`fedctl failover`); automation holds it under the rule `manual`.
    Manual,
}

/// A group's disaster-recovery policy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FailoverPolicy {
    pub mode: FailoverMode,
    /// After a failover, no automatic action on the group for this long; unset: the
    /// federation's default (`guard.cooldown_ms`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cooldown_s: Option<u64>,
    /// Opt-in failback: once the site the group failed over from has been seen healthy by a
    /// quorum of observers for this long, the group moves back to its recorded original
    /// placement (one group at a time, with a planned switchover's prechecks). Unset: never
    /// automatic; an operator reclaims the site instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failback_after_s: Option<u64>,
    /// The group keeps data replicated between sites (a database primary and its replicas).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stateful: Option<StatefulPolicy>,
    /// How the parts of the group's health at a site (instances, ingress, dependencies)
    /// combine: `all_of` (default) or `quorum`.
    #[serde(skip_serializing_if = "is_default_rule")]
    pub health_rule: crate::dr::composite::HealthRule,
}

fn is_default_rule(r: &crate::dr::composite::HealthRule) -> bool {
    *r == crate::dr::composite::HealthRule::default()
}

impl FailoverPolicy {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    fn problems(&self, g: &str) -> Vec<String> {
        let mut errs = Vec::new();
        if self.cooldown_s.is_some_and(|c| c > 7 * 86_400) {
            errs.push(format!(
                "group {g:?}: failover cooldown_s {:?} must be at most 604800 (a week)",
                self.cooldown_s
            ));
        }
        if let Some(after) = self.failback_after_s
            && !(1..=7 * 86_400).contains(&after)
        {
            errs.push(format!("group {g:?}: failback_after_s {after} must be between 1 and 604800"));
        }
        if let Some(s) = &self.stateful {
            if s.lease_s == 0 || s.lease_s > 3_600 {
                errs.push(format!("group {g:?}: stateful lease_s {} must be between 1 and 3600", s.lease_s));
            }
            if s.rpo_s > 86_400 {
                errs.push(format!("group {g:?}: stateful rpo_s {} must be at most 86400", s.rpo_s));
            }
            if !s.lag_path.starts_with('/') || s.lag_path.chars().any(|c| c.is_whitespace() || c.is_control()) {
                errs.push(format!(
                    "group {g:?}: stateful lag_path {:?} must be an HTTP path starting with /",
                    s.lag_path
                ));
            }
        }
        errs
    }
}

/// A group holding replicated data. Its cells report each site's replication lag; a failover
/// promotes a replica only once the old primary is fenced or its lease has run out, and only
/// if the replica is within the RPO budget, unless an operator accepts the data loss.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatefulPolicy {
    /// The most replication lag (seconds of writes) a failover may lose; 0: none.
    pub rpo_s: u64,
    /// The primary's lease: it may keep writing this long after its cell's last report.
    pub lease_s: u64,
    /// The app whose instances hold the data (default: the group's first app). Each site's
    /// cell asks one of its healthy instances there for the replication lag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<AppName>,
    /// HTTP path on that instance answering the lag in milliseconds as a plain number.
    #[serde(default = "default_lag_path")]
    pub lag_path: String,
}

fn default_lag_path() -> String {
    "/replication/lag".to_string()
}

impl GroupSpec {
    /// The (app, path) each cell probes for a stateful group's replication lag.
    pub fn replication_lag_probe(&self) -> Option<(AppName, String)> {
        let s = self.failover.stateful.as_ref()?;
        let app = s.app.clone().or_else(|| self.apps.first().map(|a| a.name.clone()))?;
        Some((app, s.lag_path.clone()))
    }
}

/// The traffic ramp of a planned move: the target's share after each step, each held at least
/// one TTL and taken only while the target stays within its health budget. A breach reverts
/// the last step and halts the move until an operator resumes or aborts it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrafficRamp {
    /// The target's percentage of traffic after each step: increasing, ending at 100.
    pub steps: Vec<u32>,
    /// Percentage of the target's instances of each app that may be unhealthy while traffic
    /// moves before the ramp reverts (0: every instance must stay healthy).
    pub max_unhealthy_percent: u32,
}

impl Default for TrafficRamp {
    fn default() -> Self {
        Self { steps: vec![100], max_unhealthy_percent: 0 }
    }
}

impl TrafficRamp {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// Healthy instances the target must keep of an app that wants `want`.
    pub fn required_healthy(&self, want: u32) -> u32 {
        want - want * self.max_unhealthy_percent / 100
    }

    fn problems(&self, g: &str) -> Vec<String> {
        let mut errs = Vec::new();
        let increasing = self.steps.windows(2).all(|w| w[0] < w[1]);
        if self.steps.is_empty() || self.steps.len() > 20 || !increasing || self.steps.last() != Some(&100) {
            errs.push(format!(
                "group {g:?}: ramp steps {:?} must be 1 to 20 increasing percentages ending at 100",
                self.steps
            ));
        }
        if self.steps.first() == Some(&0) {
            errs.push(format!("group {g:?}: a ramp step of 0% moves nothing"));
        }
        if self.max_unhealthy_percent > 50 {
            errs.push(format!(
                "group {g:?}: ramp max_unhealthy_percent {} must be at most 50",
                self.max_unhealthy_percent
            ));
        }
        errs
    }
}

impl GroupSpec {
    /// Every DNS label the group answers for: its name, then its aliases.
    pub fn dns_names(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.dns_name.as_str()).chain(self.dns_aliases.iter().map(String::as_str))
    }

    /// The allocation role the group's apps run under in every cell.
    pub fn role(&self) -> &str {
        if self.tenant.is_empty() { &self.name } else { &self.tenant }
    }
}

/// What one site runs of a group, and its share of traffic.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteShare {
    pub instances: BTreeMap<AppName, u32>,
    /// Share of traffic; 0 means none.
    pub weight: u32,
}

impl SiteShare {
    pub fn total_instances(&self) -> u32 {
        self.instances.values().sum()
    }
}

/// Which sites run a group and which receive its traffic.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub sites: BTreeMap<SiteName, SiteShare>,
    /// Raft log index of the decision that produced this placement (the fencing token).
    pub epoch: u64,
}

impl Placement {
    /// Sites with a non-zero traffic weight.
    pub fn active_sites(&self) -> Vec<&SiteName> {
        self.sites.iter().filter(|(_, s)| s.weight > 0).map(|(n, _)| n).collect()
    }

    pub fn share(&self, site: &str) -> SiteShare {
        self.sites.get(site).cloned().unwrap_or_default()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppGroup {
    pub spec: GroupSpec,
    pub placement: Placement,
    /// The operation that holds this group; at most one at a time.
    pub operation: Option<String>,
    /// The spec before the last update, for `RollbackGroup` (cancelling a rollout).
    #[serde(default)]
    pub previous_spec: Option<GroupSpec>,
}

impl AppGroup {
    /// Resources needed to run `instances` (per app) of this group.
    /// One entry per instance in `instances` (app → count), with that app's resources.
    pub fn instances_of(&self, instances: &BTreeMap<AppName, u32>) -> Vec<Resources> {
        self.spec
            .apps
            .iter()
            .flat_map(|a| std::iter::repeat_n(a.resources, instances.get(&a.name).copied().unwrap_or(0) as usize))
            .collect()
    }

    pub fn demand(&self, instances: &BTreeMap<AppName, u32>) -> Resources {
        self.spec
            .apps
            .iter()
            .map(|a| a.resources.times(instances.get(&a.name).copied().unwrap_or(0)))
            .fold(Resources::default(), Resources::plus)
    }
}

fn valid_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Checks a site spec on its own; returns every problem found.
pub fn validate_site(spec: &SiteSpec) -> Vec<String> {
    let mut errs = Vec::new();
    if !valid_label(&spec.name) {
        errs.push(format!("site name {:?} must be 1-63 characters of [a-z0-9-]", spec.name));
    }
    if spec.ingress.is_empty() {
        errs.push(format!("site {:?} has no ingress addresses", spec.name));
    }
    errs
}

/// A dependency cycle among `apps`, as the names around it, if there is one.
fn dependency_cycle(apps: &[AppSpec]) -> Option<Vec<String>> {
    let deps: BTreeMap<&str, &[String]> = apps.iter().map(|a| (a.name.as_str(), a.depends_on.as_slice())).collect();
    // 0 = unvisited, 1 = on the current path, 2 = done.
    let mut mark: BTreeMap<&str, u8> = BTreeMap::new();
    fn visit<'a>(
        n: &'a str,
        deps: &BTreeMap<&'a str, &'a [String]>,
        mark: &mut BTreeMap<&'a str, u8>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        match mark.get(n).copied().unwrap_or(0) {
            2 => return None,
            1 => {
                let start = path.iter().position(|p| *p == n).unwrap_or(0);
                let mut cycle: Vec<String> = path[start..].iter().map(|s| s.to_string()).collect();
                cycle.push(n.to_string());
                return Some(cycle);
            }
            _ => {}
        }
        mark.insert(n, 1);
        path.push(n);
        for d in deps.get(n).copied().unwrap_or(&[]) {
            if d != n
                && deps.contains_key(d.as_str())
                && let Some(c) = visit(d.as_str(), deps, mark, path)
            {
                return Some(c);
            }
        }
        path.pop();
        mark.insert(n, 2);
        None
    }
    deps.keys().find_map(|n| visit(n, &deps, &mut mark, &mut Vec::new()))
}

/// Checks a group spec on its own; returns every problem found.
pub fn validate_group(spec: &GroupSpec) -> Vec<String> {
    let mut errs = Vec::new();
    let g = &spec.name;
    if !valid_label(g) {
        errs.push(format!("group name {g:?} must be 1-63 characters of [a-z0-9-]"));
    }
    if !valid_label(&spec.dns_name) {
        errs.push(format!("group {g:?}: dns_name {:?} must be one DNS label of [a-z0-9-]", spec.dns_name));
    }
    let mut seen = std::collections::BTreeSet::from([spec.dns_name.as_str()]);
    for alias in &spec.dns_aliases {
        if !valid_label(alias) {
            errs.push(format!("group {g:?}: dns alias {alias:?} must be one DNS label of [a-z0-9-]"));
        } else if !seen.insert(alias) {
            errs.push(format!("group {g:?}: dns alias {alias:?} repeats the group's dns_name or another alias"));
        }
    }
    if spec.ttl_s == 0 || spec.ttl_s > 86_400 {
        errs.push(format!("group {g:?}: ttl_s {} must be between 1 and 86400", spec.ttl_s));
    }
    if !spec.tenant.is_empty() && !valid_label(&spec.tenant) {
        errs.push(format!("group {g:?}: tenant {:?} must be 1-63 characters of [a-z0-9-]", spec.tenant));
    }
    if spec.apps.is_empty() {
        errs.push(format!("group {g:?} has no apps"));
    }
    if spec.depends_on.iter().any(|d| d == g) {
        errs.push(format!("group {g:?} depends on itself"));
    }
    errs.extend(spec.ramp.problems(g));
    errs.extend(spec.failover.problems(g));
    for (site, n) in &spec.warm_standby {
        if *site == spec.home_site {
            errs.push(format!("group {g:?}: warm_standby {site:?} is its home_site"));
        }
        if !(1..=10_000).contains(n) {
            errs.push(format!("group {g:?}: warm_standby {site:?} = {n} must be 1 to 10000 instances"));
        }
    }
    if let Some(app) = spec.failover.stateful.as_ref().and_then(|s| s.app.as_ref())
        && !spec.apps.iter().any(|a| a.name == *app)
    {
        errs.push(format!("group {g:?}: stateful app {app:?} is not an app of the group"));
    }
    let names: std::collections::BTreeSet<&str> = spec.apps.iter().map(|a| a.name.as_str()).collect();
    for app in &spec.apps {
        for d in &app.depends_on {
            if !names.contains(d.as_str()) {
                errs.push(format!(
                    "group {g:?}: app {:?} depends on {d:?}, which is not an app of the group",
                    app.name
                ));
            } else if *d == app.name {
                errs.push(format!("group {g:?}: app {:?} depends on itself", app.name));
            }
        }
    }
    if let Some(cycle) = dependency_cycle(&spec.apps) {
        errs.push(format!("group {g:?}: dependencies form a cycle: {}", cycle.join(" -> ")));
    }
    let mut seen = std::collections::BTreeSet::new();
    for app in &spec.apps {
        if !valid_label(&app.name) {
            errs.push(format!("group {g:?}: app name {:?} must be 1-63 characters of [a-z0-9-]", app.name));
        }
        if !seen.insert(&app.name) {
            errs.push(format!("group {g:?}: app {:?} is declared twice", app.name));
        }
        if app.command.trim().is_empty() {
            errs.push(format!("group {g:?}: app {:?} has an empty command", app.name));
        }
        if app.resources.cpu_millis == 0 || app.resources.mem_mib == 0 {
            errs.push(format!("group {g:?}: app {:?} must request cpu_millis > 0 and mem_mib > 0", app.name));
        }
        if app.instances > 10_000 {
            errs.push(format!("group {g:?}: app {:?} asks for {} instances (max 10000)", app.name, app.instances));
        }
        for c in &app.constraints {
            if let Err(e) = switchyard_cell_core::constraints::Constraint::parse(c) {
                errs.push(format!("group {g:?}: app {:?}: {e}", app.name));
            }
        }
        for (what, check) in
            std::iter::once(("health", &app.health)).chain(app.readiness.iter().map(|r| ("readiness", r)))
        {
            if let Err(e) = check.validate() {
                errs.push(format!("group {g:?}: app {:?}: {what} check: {e}", app.name));
            }
        }
        if let Some(Autoscale(a)) = &app.autoscale
            && let Err(e) = a.validate()
        {
            errs.push(format!("group {g:?}: app {:?}: autoscale: {e}", app.name));
        }
        for (what, name) in [
            ("concurrency", &app.metrics.concurrency),
            ("requests_total", &app.metrics.requests_total),
            ("request_ms_total", &app.metrics.request_ms_total),
        ] {
            if !name.is_empty() && !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':') {
                errs.push(format!("group {g:?}: app {:?}: metrics.{what} {name:?} is not a metric name", app.name));
            }
        }
        if !app.metrics.path.is_empty() && !app.metrics.path.starts_with('/') {
            errs.push(format!("group {g:?}: app {:?}: metrics.path must start with '/'", app.name));
        }
        for (what, v) in [
            ("minimum_health_capacity", app.upgrade.minimum_health_capacity),
            ("maximum_over_capacity", app.upgrade.maximum_over_capacity),
        ] {
            if !(0.0..=1.0).contains(&v) {
                errs.push(format!("group {g:?}: app {:?}: upgrade {what} {v} must be between 0 and 1", app.name));
            }
        }
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_arithmetic_saturates() {
        let a = Resources { cpu_millis: 100, mem_mib: 10, disk_mib: 0 };
        assert_eq!(a.times(3), Resources { cpu_millis: 300, mem_mib: 30, disk_mib: 0 });
        assert_eq!(a.saturating_sub(a.times(2)), Resources::default());
        assert!(a.fits_in(a.times(2)));
        assert!(!a.times(2).fits_in(a));
    }

    #[test]
    fn dependencies_must_name_apps_of_the_group_and_not_loop() {
        let app = |name: &str, deps: &[&str]| AppSpec {
            name: name.into(),
            command: "x".into(),
            args: vec![],
            env: BTreeMap::new(),
            instances: 1,
            resources: Resources { cpu_millis: 1, mem_mib: 1, disk_mib: 0 },
            health: HealthSpec::default(),
            readiness: None,
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
            constraints: vec![],
            upgrade: UpgradeSpec::default(),
            autoscale: None,
            metrics: MetricsSpec::default(),
        };
        let group = |apps| GroupSpec {
            name: "g".into(),
            dns_name: "g".into(),
            dns_aliases: vec![],
            ttl_s: 5,
            tier: 0,
            home_site: "s".into(),
            tenant: String::new(),
            depends_on: vec![],
            ramp: Default::default(),
            failover: Default::default(),
            warm_standby: Default::default(),
            apps,
        };
        assert!(validate_group(&group(vec![app("db", &[]), app("web", &["db"])])).is_empty());
        let errs = validate_group(&group(vec![app("web", &["cache"])]));
        assert!(errs[0].contains("depends on \"cache\""), "{errs:?}");
        let errs = validate_group(&group(vec![app("a", &["b"]), app("b", &["c"]), app("c", &["a"])]));
        assert!(errs.iter().any(|e| e.contains("cycle: a -> b -> c -> a")), "{errs:?}");
    }

    #[test]
    fn checks_name_their_protocol_problems() {
        let tcp = HealthSpec { protocol: "tcp".into(), ..Default::default() };
        assert_eq!(tcp.validate(), Ok(()));
        let cmd = HealthSpec { protocol: "command".into(), command: vec!["check-db".into()], ..Default::default() };
        assert_eq!(cmd.validate(), Ok(()));
        for (bad, why) in [
            (HealthSpec { protocol: "udp".into(), ..Default::default() }, "unknown protocol \"udp\""),
            (HealthSpec { protocol: "command".into(), ..Default::default() }, "needs a command"),
            (HealthSpec { protocol: "http".into(), ..Default::default() }, "needs an http_path"),
            (HealthSpec { http_path: "health".into(), ..Default::default() }, "must start with '/'"),
            (HealthSpec { protocol: "tcp".into(), http_path: "/h".into(), ..Default::default() }, "takes neither"),
        ] {
            assert!(bad.validate().unwrap_err().contains(why), "{bad:?}");
        }
    }

    #[test]
    fn group_validation_reports_every_problem() {
        let spec = GroupSpec {
            name: "Bad Name".into(),
            dns_name: "".into(),
            dns_aliases: vec![],
            ttl_s: 0,
            tier: 0,
            home_site: "site-1".into(),
            tenant: String::new(),
            depends_on: vec![],
            ramp: Default::default(),
            failover: Default::default(),
            warm_standby: Default::default(),
            apps: vec![],
        };
        let errs = validate_group(&spec);
        assert_eq!(errs.len(), 4, "{errs:?}");
    }
}
