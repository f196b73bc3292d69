//! Failure detection by quorum of independent observers.
//!
//! Each observer (a federator replica, a site's fed-dns, a cell's own stream) reports what it
//! sees of each subject (a site, or a group at a site): healthy, unhealthy or unknown. Per
//! (subject, observer) a track remembers since when the observer has seen the subject
//! unhealthy. Only a confirmed healthy resets that time; unknown (the observer's probe timed
//! out, TLS failed, its own configuration is wrong) keeps it, so unhealthy → unknown →
//! unhealthy accumulates. A subject is down only when observers in at least `quorum` distinct
//! failure domains each report it unhealthy now, fresh, and have for the detection window.
//! Pure: observations carry their time, and the caller passes `now_ms`.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// What one observer saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    Healthy,
    Unhealthy,
    /// The observer could not tell (its probe failed on its own side); never resets a timer.
    Unknown,
}

impl Health {
    /// The wire and metrics name: `healthy`, `unhealthy` or `unknown`.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
            Health::Unknown => "unknown",
        }
    }

    /// The inverse of [`Health::as_str`].
    pub fn parse(s: &str) -> Option<Health> {
        [Health::Healthy, Health::Unhealthy, Health::Unknown].into_iter().find(|h| h.as_str() == s)
    }
}

/// What is judged: a whole site, or one group at a site.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Subject {
    pub site: String,
    /// `None`: the site as a whole.
    pub group: Option<String>,
}

impl Subject {
    pub fn site(site: &str) -> Self {
        Subject { site: site.to_string(), group: None }
    }

    pub fn group(site: &str, group: &str) -> Self {
        Subject { site: site.to_string(), group: Some(group.to_string()) }
    }
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.group {
            None => write!(f, "site {}", self.site),
            Some(g) => write!(f, "group {g} at {}", self.site),
        }
    }
}

/// One observer's report about one subject.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observation {
    /// `federator-2`, `dns-site-3`, `cell-site-1`.
    pub observer: String,
    /// Where the observer runs (its site): observers in one domain count once.
    pub domain: String,
    pub subject: Subject,
    pub health: Health,
    pub at_ms: u64,
    /// What it saw, or why it could not tell (labelled observer-side errors).
    pub detail: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectConfig {
    /// How long a subject must be seen unhealthy before it may be declared down.
    pub window_ms: u64,
    /// Observers in this many distinct failure domains must agree.
    pub quorum: usize,
    /// An observer not heard from for this long is not evidence.
    pub stale_ms: u64,
}

impl Default for DetectConfig {
    fn default() -> Self {
        Self { window_ms: 10_000, quorum: 2, stale_ms: 5_000 }
    }
}

/// One observer's view of one subject over time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Track {
    pub domain: String,
    /// Since when it has seen the subject unhealthy (not reset by unknown).
    pub unhealthy_since_ms: Option<u64>,
    /// Since when it has seen the subject healthy (reset by unhealthy; unknown keeps it, but
    /// only a fresh healthy observation counts as recovery evidence).
    #[serde(default)]
    pub healthy_since_ms: Option<u64>,
    pub last: Health,
    pub last_at_ms: u64,
    pub detail: String,
}

/// What an observer contributed to a verdict: the evidence a declaration carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    pub observer: String,
    pub domain: String,
    pub health: Health,
    pub unhealthy_since_ms: Option<u64>,
    pub last_at_ms: u64,
    pub detail: String,
}

/// An observer that sees a subject healthy again, and since when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recovery {
    pub observer: String,
    pub domain: String,
    pub healthy_since_ms: u64,
    pub last_at_ms: u64,
    pub detail: String,
}

/// Whether `evidence` shows its subject healthy at `at_ms` to observers in a quorum of failure
/// domains, freshly, each for at least `stable_ms` (what a failback needs). Err: why not.
pub fn check_recovery(evidence: &[Recovery], at_ms: u64, stable_ms: u64, cfg: &DetectConfig) -> Result<(), String> {
    let stable: BTreeSet<&str> = evidence
        .iter()
        .filter(|e| at_ms.saturating_sub(e.last_at_ms) <= cfg.stale_ms && e.last_at_ms <= at_ms)
        .filter(|e| at_ms.saturating_sub(e.healthy_since_ms) >= stable_ms)
        .map(|e| e.domain.as_str())
        .collect();
    if stable.len() >= cfg.quorum.max(1) {
        return Ok(());
    }
    let longest = evidence.iter().map(|e| at_ms.saturating_sub(e.healthy_since_ms)).max().unwrap_or(0);
    Err(format!(
        "{} failure domain(s) ({}) have seen it healthy, fresh, for {stable_ms} ms; {} are needed (longest so far {longest} ms)",
        stable.len(),
        stable.iter().copied().collect::<Vec<_>>().join(", "),
        cfg.quorum.max(1),
    ))
}

/// The verdict on one subject at one time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    /// Enough observers in distinct domains agree, long enough: it may be declared down.
    Down { evidence: Vec<Evidence> },
    /// Some see it unhealthy, not (yet) enough of them or not for long enough.
    Suspect { evidence: Vec<Evidence>, why: String },
    /// No fresh observer sees it unhealthy.
    Up { evidence: Vec<Evidence> },
}

impl Verdict {
    pub fn is_down(&self) -> bool {
        matches!(self, Verdict::Down { .. })
    }
}

/// Every observer's track of every subject.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Detector {
    tracks: BTreeMap<Subject, BTreeMap<String, Track>>,
}

impl Detector {
    /// Takes one observation. An observation older than the observer's last one about the same
    /// subject is ignored (reordered delivery).
    pub fn observe(&mut self, o: &Observation) {
        let track = self.tracks.entry(o.subject.clone()).or_default().entry(o.observer.clone()).or_insert(Track {
            domain: o.domain.clone(),
            unhealthy_since_ms: None,
            healthy_since_ms: None,
            last: Health::Unknown,
            last_at_ms: 0,
            detail: String::new(),
        });
        if o.at_ms < track.last_at_ms {
            return;
        }
        match o.health {
            Health::Healthy => {
                track.unhealthy_since_ms = None;
                track.healthy_since_ms.get_or_insert(o.at_ms);
            }
            Health::Unhealthy => {
                track.unhealthy_since_ms.get_or_insert(o.at_ms);
                track.healthy_since_ms = None;
            }
            Health::Unknown => {}
        }
        track.domain = o.domain.clone();
        track.last = o.health;
        track.last_at_ms = o.at_ms;
        track.detail = o.detail.clone();
    }

    /// The observers that see `subject` healthy now (fresh), with since when: the evidence
    /// that a site declared down has come back.
    pub fn recovered(&self, subject: &Subject, now_ms: u64, cfg: &DetectConfig) -> Vec<Recovery> {
        self.tracks
            .get(subject)
            .into_iter()
            .flatten()
            .filter(|(_, t)| t.last == Health::Healthy && now_ms.saturating_sub(t.last_at_ms) <= cfg.stale_ms)
            .filter_map(|(observer, t)| {
                Some(Recovery {
                    observer: observer.clone(),
                    domain: t.domain.clone(),
                    healthy_since_ms: t.healthy_since_ms?,
                    last_at_ms: t.last_at_ms,
                    detail: t.detail.clone(),
                })
            })
            .collect()
    }

    pub fn subjects(&self) -> impl Iterator<Item = &Subject> {
        self.tracks.keys()
    }

    /// The verdict on `subject` at `now_ms`.
    pub fn verdict(&self, subject: &Subject, now_ms: u64, cfg: &DetectConfig) -> Verdict {
        let tracks = self.tracks.get(subject);
        let evidence: Vec<Evidence> = tracks
            .into_iter()
            .flatten()
            .map(|(observer, t)| Evidence {
                observer: observer.clone(),
                domain: t.domain.clone(),
                health: if now_ms.saturating_sub(t.last_at_ms) > cfg.stale_ms { Health::Unknown } else { t.last },
                unhealthy_since_ms: t.unhealthy_since_ms,
                last_at_ms: t.last_at_ms,
                detail: t.detail.clone(),
            })
            .collect();
        let agreeing = agreeing_domains(&evidence, now_ms, cfg);
        let seeing: BTreeSet<&str> =
            evidence.iter().filter(|e| e.health == Health::Unhealthy).map(|e| e.domain.as_str()).collect();
        if agreeing.len() >= cfg.quorum.max(1) {
            Verdict::Down { evidence }
        } else if seeing.is_empty() {
            Verdict::Up { evidence }
        } else {
            let why = format!(
                "{} of {} failure domains see it unhealthy for {} ms ({} so far at all); needs {}",
                agreeing.len(),
                evidence.iter().map(|e| e.domain.as_str()).collect::<BTreeSet<_>>().len(),
                cfg.window_ms,
                seeing.len(),
                cfg.quorum
            );
            Verdict::Suspect { evidence, why }
        }
    }
}

/// What a failed TCP probe of a site says: refused, reset or unreachable is the site's
/// answer (unhealthy); anything else, a timeout included, is the observer's own trouble
/// (unknown: labelled, never resets a timer).
pub fn connect_error_health(kind: std::io::ErrorKind) -> Health {
    use std::io::ErrorKind::*;
    match kind {
        ConnectionRefused | ConnectionReset | ConnectionAborted | HostUnreachable | NetworkUnreachable => {
            Health::Unhealthy
        }
        _ => Health::Unknown,
    }
}

/// The failure domains whose observers, in `evidence`, report the subject unhealthy at
/// `at_ms`, freshly, and have for the whole window.
pub fn agreeing_domains<'a>(evidence: &'a [Evidence], at_ms: u64, cfg: &DetectConfig) -> BTreeSet<&'a str> {
    evidence
        .iter()
        .filter(|e| e.health == Health::Unhealthy && at_ms.saturating_sub(e.last_at_ms) <= cfg.stale_ms)
        .filter(|e| e.unhealthy_since_ms.is_some_and(|since| at_ms.saturating_sub(since) >= cfg.window_ms))
        .map(|e| e.domain.as_str())
        .collect()
}

/// Whether a group proven down at a site (`group`, its evidence) is the site's own failure
/// showing through: some failure domain that proves the group down also observes the site
/// (`site`, the site's evidence) and sees it unhealthy, freshly, and no such domain sees the
/// site healthy. Such a group is left to the site's verdict, which needs its own quorum:
/// declaring every group of a dying site one by one would trip the brake's correlated-failure
/// rule instead of failing the site over, and would get around the site quorum (a domain that
/// alone sees the site dead cannot fail all its groups over either). A group whose provers see
/// the site healthy, or do not observe it at all, is the group's own failure.
pub fn explained_by_site(group: &[Evidence], site: &[Evidence], now_ms: u64, cfg: &DetectConfig) -> bool {
    let proving = agreeing_domains(group, now_ms, cfg);
    let mut unhealthy = false;
    for e in site.iter().filter(|e| proving.contains(e.domain.as_str())) {
        if now_ms.saturating_sub(e.last_at_ms) > cfg.stale_ms {
            continue;
        }
        match e.health {
            Health::Healthy => return false,
            Health::Unhealthy => unhealthy = true,
            Health::Unknown => {}
        }
    }
    unhealthy
}

/// Whether `evidence` proves its subject down at `at_ms` under `cfg` (what `apply` checks of a
/// declaration, whoever proposed it). Err: why not.
pub fn check_evidence(evidence: &[Evidence], at_ms: u64, cfg: &DetectConfig) -> Result<(), String> {
    let agreeing = agreeing_domains(evidence, at_ms, cfg);
    if agreeing.len() >= cfg.quorum.max(1) {
        return Ok(());
    }
    Err(format!(
        "the evidence shows {} failure domain(s) ({}) seeing it unhealthy, fresh, for {} ms; {} are needed",
        agreeing.len(),
        agreeing.iter().copied().collect::<Vec<_>>().join(", "),
        cfg.window_ms,
        cfg.quorum.max(1)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn evidence(domain: &str, health: Health, since: Option<u64>, last: u64) -> Evidence {
        Evidence {
            observer: format!("{domain}-1"),
            domain: domain.into(),
            health,
            unhealthy_since_ms: since,
            last_at_ms: last,
            detail: String::new(),
        }
    }

    #[test]
    fn a_group_down_where_its_provers_see_the_site_down_is_left_to_the_site() {
        let c = cfg();
        let now = 50_000;
        // The group is proven down by the federator and the cell (both unhealthy for 15 s).
        let group = [
            evidence("federator", Health::Unhealthy, Some(35_000), now - 500),
            evidence("cell", Health::Unhealthy, Some(35_000), now - 500),
        ];
        // The federator sees the site's ingress refuse too; fed-dns has not caught up.
        let site_refused = [
            evidence("federator", Health::Unhealthy, Some(35_000), now - 500),
            evidence("dns", Health::Healthy, None, now - 500),
        ];
        assert!(explained_by_site(&group, &site_refused, now, &c), "the site's failure showing through");
        // The site answers the federator: the group's own failure.
        let site_up = [evidence("federator", Health::Healthy, None, now - 500)];
        assert!(!explained_by_site(&group, &site_up, now, &c));
        // Nobody that proves the group down observes the site (only dns does): the group's own.
        let only_dns = [evidence("dns", Health::Unhealthy, Some(35_000), now - 500)];
        assert!(!explained_by_site(&group, &only_dns, now, &c));
        // A stale site observation explains nothing; one prover seeing the site healthy wins.
        let stale = [evidence("federator", Health::Unhealthy, Some(35_000), now - 6_000)];
        assert!(!explained_by_site(&group, &stale, now, &c));
        let split = [
            evidence("federator", Health::Unhealthy, Some(35_000), now - 500),
            evidence("cell", Health::Healthy, None, now - 500),
        ];
        assert!(!explained_by_site(&group, &split, now, &c));
        // A group not proven down (too short) has no provers, so nothing to explain.
        let young = [
            evidence("federator", Health::Unhealthy, Some(now - 2_000), now - 500),
            evidence("cell", Health::Unhealthy, Some(now - 2_000), now - 500),
        ];
        assert!(!explained_by_site(&young, &site_refused, now, &c));
    }

    fn obs(observer: &str, domain: &str, health: Health, at_ms: u64) -> Observation {
        Observation {
            observer: observer.into(),
            domain: domain.into(),
            subject: Subject::site("site-1"),
            health,
            at_ms,
            detail: String::new(),
        }
    }

    fn cfg() -> DetectConfig {
        DetectConfig { window_ms: 10_000, quorum: 2, stale_ms: 5_000 }
    }

    /// Two observers in two domains report `health` every second from `from` to `to`.
    fn both(d: &mut Detector, health: Health, from: u64, to: u64) {
        for t in (from..=to).step_by(1_000) {
            d.observe(&obs("dns-site-2", "site-2", health, t));
            d.observe(&obs("fed-3", "site-3", health, t));
        }
    }

    #[test]
    fn two_domains_unhealthy_for_the_window_declare_down_and_not_a_moment_before() {
        let mut d = Detector::default();
        both(&mut d, Health::Unhealthy, 0, 9_000);
        let s = Subject::site("site-1");
        assert!(matches!(d.verdict(&s, 9_000, &cfg()), Verdict::Suspect { .. }));
        both(&mut d, Health::Unhealthy, 10_000, 10_000);
        let Verdict::Down { evidence } = d.verdict(&s, 10_000, &cfg()) else { panic!() };
        assert_eq!(evidence.len(), 2);
        assert!(evidence.iter().all(|e| e.unhealthy_since_ms == Some(0)));
    }

    #[test]
    fn unknown_does_not_reset_the_timer_and_only_healthy_does() {
        let mut d = Detector::default();
        let s = Subject::site("site-1");
        // unhealthy → unknown → unhealthy accumulates time.
        both(&mut d, Health::Unhealthy, 0, 3_000);
        both(&mut d, Health::Unknown, 4_000, 7_000);
        both(&mut d, Health::Unhealthy, 8_000, 10_000);
        assert!(d.verdict(&s, 10_000, &cfg()).is_down(), "the unknown stretch counted");
        // A confirmed healthy resets it.
        both(&mut d, Health::Healthy, 11_000, 11_000);
        both(&mut d, Health::Unhealthy, 12_000, 20_000);
        assert!(!d.verdict(&s, 20_000, &cfg()).is_down(), "only 8 s since the healthy report");
        both(&mut d, Health::Unhealthy, 21_000, 22_000);
        assert!(d.verdict(&s, 22_000, &cfg()).is_down());
    }

    #[test]
    fn one_domain_is_never_a_quorum_however_many_observers_it_has() {
        let mut d = Detector::default();
        for t in (0..=30_000).step_by(1_000) {
            d.observe(&obs("fed-1", "site-3", Health::Unhealthy, t));
            d.observe(&obs("fed-2", "site-3", Health::Unhealthy, t));
            d.observe(&obs("dns-site-2", "site-2", Health::Healthy, t));
        }
        let v = d.verdict(&Subject::site("site-1"), 30_000, &cfg());
        let Verdict::Suspect { why, .. } = v else { panic!("{v:?}") };
        assert!(why.starts_with("1 of 2 failure domains"), "{why}");
    }

    #[test]
    fn an_observer_that_went_quiet_or_currently_unsure_is_no_evidence() {
        let mut d = Detector::default();
        both(&mut d, Health::Unhealthy, 0, 10_000);
        let s = Subject::site("site-1");
        assert!(d.verdict(&s, 10_000, &cfg()).is_down());
        // fed-3 stops reporting: after stale_ms, only one domain is fresh.
        for t in (11_000..=20_000).step_by(1_000) {
            d.observe(&obs("dns-site-2", "site-2", Health::Unhealthy, t));
        }
        assert!(!d.verdict(&s, 20_000, &cfg()).is_down(), "a silent observer is not evidence");
        // fed-3 is back but cannot tell: its timer is kept, but it is not evidence now.
        d.observe(&obs("fed-3", "site-3", Health::Unknown, 20_500));
        assert!(!d.verdict(&s, 20_500, &cfg()).is_down());
        d.observe(&obs("fed-3", "site-3", Health::Unhealthy, 21_000));
        assert!(d.verdict(&s, 21_000, &cfg()).is_down(), "its timer ran from 0");
    }

    #[test]
    fn late_observations_do_not_rewrite_newer_ones() {
        let mut d = Detector::default();
        d.observe(&obs("fed-3", "site-3", Health::Healthy, 5_000));
        d.observe(&obs("fed-3", "site-3", Health::Unhealthy, 1_000));
        let v = d.verdict(&Subject::site("site-1"), 5_000, &cfg());
        assert!(matches!(v, Verdict::Up { .. }), "{v:?}");
    }

    #[test]
    fn a_subject_nobody_reported_is_up_with_no_evidence_never_down() {
        let d = Detector::default();
        assert_eq!(d.verdict(&Subject::group("site-1", "crm-web"), 99_000, &cfg()), Verdict::Up { evidence: vec![] });
    }
}
