//! A group's health at one site, composed from what an observer can see of it: its instances
//! (the cell's report), its load-balancer backend (the site's ingress answering for the group's
//! name) and the groups it declares it depends on, combined with the group's rule: all of
//! them, or a quorum. Unknown parts never make a group unhealthy on their own, and never make
//! it healthy. Pure.

use serde::{Deserialize, Serialize};

use super::detect::Health;
use crate::REPORT_FRESH_MS;
use crate::state::State;

/// How a group's parts combine into its health at a site.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthRule {
    /// Unhealthy as soon as one part is; healthy only when every part is.
    #[default]
    AllOf,
    /// Whatever a strict majority of the parts says; unknown otherwise.
    Quorum,
}

/// One part of a group's health.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    /// `instances`, `ingress` or `dependencies`.
    pub name: String,
    pub health: Health,
    pub detail: String,
}

impl Part {
    pub fn new(name: &str, health: Health, detail: impl Into<String>) -> Self {
        Part { name: name.to_string(), health, detail: detail.into() }
    }
}

/// The parts combined under `rule`, with a one-line account of them.
pub fn combine(rule: HealthRule, parts: &[Part]) -> (Health, String) {
    let count = |h: Health| parts.iter().filter(|p| p.health == h).count();
    let (healthy, unhealthy) = (count(Health::Healthy), count(Health::Unhealthy));
    let health = match rule {
        _ if parts.is_empty() => Health::Unknown,
        HealthRule::AllOf if unhealthy > 0 => Health::Unhealthy,
        HealthRule::AllOf if healthy == parts.len() => Health::Healthy,
        HealthRule::AllOf => Health::Unknown,
        HealthRule::Quorum if unhealthy * 2 > parts.len() => Health::Unhealthy,
        HealthRule::Quorum if healthy * 2 > parts.len() => Health::Healthy,
        HealthRule::Quorum => Health::Unknown,
    };
    let account = parts.iter().map(|p| format!("{}: {:?} ({})", p.name, p.health, p.detail)).collect::<Vec<_>>();
    (health, account.join("; "))
}

/// The group's instances at `site` as its cell last reported them: unhealthy when an app that
/// should run there has no healthy instance, healthy when every such app has one, unknown when
/// the report is stale or predates the group's placement.
pub fn instances(state: &State, group: &str, site: &str, now_ms: u64) -> Part {
    let name = "instances";
    let Some(g) = state.groups.get(group) else { return Part::new(name, Health::Unknown, "no such group") };
    let Some(record) = state.reports.get(site).filter(|r| r.age_ms(now_ms) <= REPORT_FRESH_MS) else {
        return Part::new(name, Health::Unknown, format!("{site}'s cell has not reported freshly"));
    };
    let Some(report) = record.report.groups.get(group) else {
        return Part::new(name, Health::Unknown, format!("{site}'s cell does not report {group}"));
    };
    if report.applied_epoch < g.placement.epoch {
        return Part::new(name, Health::Unknown, format!("{site}'s cell has not applied epoch {}", g.placement.epoch));
    }
    let share = g.placement.share(site);
    let dead: Vec<&str> = share
        .instances
        .iter()
        .filter(|(_, n)| **n > 0)
        .filter(|(app, _)| report.apps.get(*app).is_none_or(|a| a.healthy() == 0))
        .map(|(app, _)| app.as_str())
        .collect();
    if dead.is_empty() {
        Part::new(name, Health::Healthy, format!("{} healthy", report.healthy()))
    } else {
        Part::new(name, Health::Unhealthy, format!("no healthy instance of {}", dead.join(", ")))
    }
}

/// The groups `group` depends on, as `health_of` says each is at `site`: unhealthy when one
/// is, healthy when all are (or there are none), unknown otherwise.
pub fn dependencies(state: &State, group: &str, health_of: impl Fn(&str) -> Health) -> Part {
    let name = "dependencies";
    let Some(g) = state.groups.get(group) else { return Part::new(name, Health::Unknown, "no such group") };
    let seen: Vec<(&str, Health)> = g.spec.depends_on.iter().map(|d| (d.as_str(), health_of(d))).collect();
    let named = |h: Health| seen.iter().filter(|(_, x)| *x == h).map(|(d, _)| *d).collect::<Vec<_>>().join(", ");
    if seen.iter().any(|(_, h)| *h == Health::Unhealthy) {
        Part::new(name, Health::Unhealthy, format!("unhealthy: {}", named(Health::Unhealthy)))
    } else if seen.iter().all(|(_, h)| *h == Health::Healthy) {
        Part::new(name, Health::Healthy, if seen.is_empty() { "none declared".into() } else { named(Health::Healthy) })
    } else {
        Part::new(name, Health::Unknown, format!("unknown: {}", named(Health::Unknown)))
    }
}

/// What an HTTP probe of the group's name through the site's ingress says: a 5xx (the proxy
/// has no live backend) or a refused connection is unhealthy, any other answer healthy, no
/// answer in time unknown.
pub fn ingress_status(status: Option<u16>, detail: &str) -> Part {
    match status {
        Some(code) if code >= 500 => Part::new("ingress", Health::Unhealthy, format!("HTTP {code}: {detail}")),
        Some(code) => Part::new("ingress", Health::Healthy, format!("HTTP {code}")),
        None => Part::new("ingress", Health::Unknown, detail.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(hs: &[Health]) -> Vec<Part> {
        hs.iter().enumerate().map(|(i, h)| Part::new(&format!("p{i}"), *h, "")).collect()
    }

    #[test]
    fn all_of_needs_every_part_and_falls_on_any_one() {
        use Health::*;
        let all = |hs: &[Health]| combine(HealthRule::AllOf, &parts(hs)).0;
        assert_eq!(all(&[Healthy, Healthy, Healthy]), Healthy);
        assert_eq!(all(&[Healthy, Unhealthy, Healthy]), Unhealthy);
        assert_eq!(all(&[Healthy, Unknown, Healthy]), Unknown, "unknown never counts as healthy");
        assert_eq!(all(&[Unknown, Unhealthy]), Unhealthy);
        assert_eq!(all(&[]), Unknown, "nothing seen is not healthy");
    }

    #[test]
    fn quorum_follows_a_strict_majority() {
        use Health::*;
        let q = |hs: &[Health]| combine(HealthRule::Quorum, &parts(hs)).0;
        assert_eq!(q(&[Healthy, Unhealthy, Healthy]), Healthy);
        assert_eq!(q(&[Unhealthy, Unhealthy, Healthy]), Unhealthy);
        assert_eq!(q(&[Unhealthy, Unknown, Healthy]), Unknown);
        assert_eq!(q(&[Unhealthy, Healthy]), Unknown, "a tie is no majority");
        let (_, account) = combine(HealthRule::Quorum, &[Part::new("ingress", Unhealthy, "HTTP 503")]);
        assert!(account.contains("ingress: Unhealthy (HTTP 503)"), "{account}");
    }

    #[test]
    fn an_ingress_answer_is_judged_by_its_status() {
        assert_eq!(ingress_status(Some(503), "no server").health, Health::Unhealthy);
        assert_eq!(ingress_status(Some(404), "").health, Health::Healthy);
        assert_eq!(ingress_status(None, "timed out").health, Health::Unknown);
    }
}
