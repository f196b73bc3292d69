//! Opt-in failback (`dr::failback`): only groups that opted in, only after their old site has
//! been healthy to a quorum of failure domains for the stability window, one group at a time,
//! dependencies first, through a planned switchover's prechecks, back to the recorded original
//! placement. Groups that did not opt in stay fenced until the site is reclaimed.

use std::collections::BTreeMap;

use super::*;
use switchyard_core::OperationKind;
use switchyard_core::dr::detect::{DetectConfig, Evidence, Health, Recovery};
use switchyard_core::dr::failback;

const STABLE_S: u64 = 60;

/// site-1 runs crm-web (not opted in), `a` (tier 0) and `b` (tier 2, depends on nothing),
/// both opting in to failback after 60 s; `a` keeps a warm standby of one on site-2.
fn setup(a_depends_on_b: bool) -> Fed {
    let mut f = Fed::new();
    for (name, tier) in [("a", 0), ("b", 2)] {
        let mut g = group(name, 1, 100);
        g.dns_name = name.into();
        g.tier = tier;
        g.failover.failback_after_s = Some(STABLE_S);
        if name == "a" && a_depends_on_b {
            g.depends_on = vec!["b".into()];
        }
        f.ok("system:config", Action::RegisterGroup(g));
    }
    f.state
        .groups
        .get_mut("a")
        .unwrap()
        .placement
        .sites
        .insert("site-2".into(), switchyard_core::SiteShare { instances: [("web".to_string(), 1)].into(), weight: 0 });
    follow(&mut f, &["site-1", "site-2", "site-3"]);
    f
}

/// Each of `sites` reports what its placements ask, all healthy, at the current epochs.
fn follow(f: &mut Fed, sites: &[&str]) {
    for site in sites {
        let on: Vec<(String, u32)> = f
            .state
            .groups
            .values()
            .filter_map(|g| g.placement.sites.get(*site).map(|s| (g.spec.name.clone(), s.total_instances())))
            .filter(|(_, n)| *n > 0)
            .collect();
        let refs: Vec<(&str, u32, u32)> = on.iter().map(|(g, n)| (g.as_str(), *n, 0)).collect();
        f.report(site, 10_000, &refs);
    }
}

/// site-1 dies: declared down on two domains' evidence; its groups fail over and finish.
fn fail_site_1(f: &mut Fed) {
    let now = f.now;
    let evidence = ["site-2", "site-3"]
        .iter()
        .map(|d| Evidence {
            observer: format!("fed-{d}"),
            domain: d.to_string(),
            health: Health::Unhealthy,
            unhealthy_since_ms: Some(now - 15_000),
            last_at_ms: now,
            detail: "connection refused".into(),
        })
        .collect();
    f.ok("system", Action::DeclareSiteDown { site: "site-1".into(), evidence, detect: DetectConfig::default() });
    for _ in 0..5 {
        f.tick(1_000);
        follow(f, &["site-2", "site-3"]);
    }
    for g in ["crm-web", "a", "b"] {
        assert_ne!(f.state.groups[g].placement.active_sites(), vec!["site-1"], "{g} failed over");
    }
}

/// Observers in two failure domains have seen `site` healthy since `since`.
fn recovered(f: &Fed, site: &str, since: u64) -> BTreeMap<String, Vec<Recovery>> {
    let evidence = ["site-2", "site-3"]
        .iter()
        .map(|d| Recovery {
            observer: format!("fed-{d}"),
            domain: d.to_string(),
            healthy_since_ms: since,
            last_at_ms: f.now,
            detail: "connected".into(),
        })
        .collect();
    BTreeMap::from([(site.to_string(), evidence)])
}

fn next(f: &Fed, since: u64) -> Option<Action> {
    failback::next(&f.state, &recovered(f, "site-1", since), f.now, &DetectConfig::default())
}

/// Runs the engine with every site following until no operation holds a group.
fn run_to_end(f: &mut Fed) {
    for _ in 0..60 {
        follow(f, &["site-1", "site-2", "site-3"]);
        f.tick(1_000);
        if f.state.operations.values().all(|o| !o.holds_group()) {
            return;
        }
    }
    panic!(
        "operations still running: {:?}",
        f.state.operations.values().filter(|o| o.holds_group()).collect::<Vec<_>>()
    );
}

#[test]
fn opted_in_groups_fail_back_one_at_a_time_after_the_stability_window_to_their_original_placement() {
    let mut f = setup(false);
    let original_a = f.state.groups["a"].placement.clone();
    fail_site_1(&mut f);
    assert_eq!(f.state.origins["a"].site, "site-1");
    assert_eq!(f.state.origins["a"].placement.sites, original_a.sites, "the original placement is recorded");
    // site-1 is back, but healthy for only 30 s: nothing yet.
    follow(&mut f, &["site-1"]);
    assert_eq!(next(&f, f.now - 30_000), None);
    let why =
        failback::eligible(&f.state, "a", &recovered(&f, "site-1", f.now - 30_000), f.now, &DetectConfig::default())
            .unwrap_err();
    assert!(why.contains("longest so far 30000 ms"), "{why}");
    assert!(
        failback::eligible(&f.state, "crm-web", &recovered(&f, "site-1", 0), f.now, &DetectConfig::default())
            .unwrap_err()
            .contains("not opted in")
    );
    // After the window: tier 0 first.
    let start = next(&f, f.now - 61_000).expect("a failback is due");
    assert!(matches!(&start, Action::StartFailback { group, .. } if group == "a"), "{start:?}");
    f.ok("system", start);
    assert!(!f.state.down_sites.contains_key("site-1"), "the site returned to service with it");
    assert_eq!(f.state.sites["site-1"].state, switchyard_core::SiteState::Active);
    let op = f.state.operations.values().find(|o| o.kind == OperationKind::Failback).unwrap().clone();
    assert_eq!((op.group.as_str(), op.to.as_str()), ("a", "site-1"));
    let actions: Vec<&str> = f.state.audit.records().iter().rev().take(2).map(|r| r.action.as_str()).collect();
    assert_eq!(actions, ["failback.start", "site.returned"]);
    // One at a time: b waits while a's failback runs.
    assert_eq!(next(&f, f.now - 61_000), None);
    let early = Action::StartFailback {
        group: "b".into(),
        evidence: recovered(&f, "site-1", f.now - 61_000).remove("site-1").unwrap(),
        detect: DetectConfig::default(),
    };
    assert!(f.propose("system", early).unwrap_err().to_string().contains("one group at a time"));
    run_to_end(&mut f);
    let a = &f.state.groups["a"];
    assert_eq!(a.placement.active_sites(), vec!["site-1"]);
    assert_eq!(a.placement.share("site-2").instances, original_a.share("site-2").instances, "warm standby kept");
    assert!(!f.state.origins.contains_key("a"));
    assert!(f.state.audit.records().iter().any(|r| r.action == "failback.complete" && r.subject == "a"));
    // Then b.
    let start = next(&f, f.now - 120_000).expect("b's turn");
    assert!(matches!(&start, Action::StartFailback { group, .. } if group == "b"));
    f.ok("system", start);
    run_to_end(&mut f);
    assert_eq!(f.state.groups["b"].placement.active_sites(), vec!["site-1"]);
    assert_eq!(next(&f, f.now - 200_000), None, "crm-web did not opt in");
    // crm-web stays fenced on site-1 (weight 0, instances kept) until the site is reclaimed.
    let crm = &f.state.groups["crm-web"].placement;
    assert_eq!(crm.share("site-1").weight, 0);
    assert!(crm.share("site-1").total_instances() > 0);
    f.ok("dr-admin:dana", Action::ReclaimSite { site: "site-1".into(), reason: "site-1 repaired (CHG-9)".into() });
    assert!(!f.state.groups["crm-web"].placement.sites.contains_key("site-1"));
    assert!(f.state.origins.is_empty());
    assert!(
        f.propose("dr-admin:dana", Action::ReclaimSite { site: "site-1".into(), reason: "again".into() })
            .unwrap_err()
            .to_string()
            .contains("nothing to reclaim")
    );
}

#[test]
fn what_a_group_depends_on_fails_back_first() {
    let mut f = setup(true);
    fail_site_1(&mut f);
    follow(&mut f, &["site-1"]);
    let start = next(&f, f.now - 61_000).expect("a failback is due");
    assert!(matches!(&start, Action::StartFailback { group, .. } if group == "b"), "a depends on b: {start:?}");
}

#[test]
fn a_failback_without_opt_in_stability_or_while_braked_is_refused_and_changes_nothing() {
    let mut f = setup(false);
    fail_site_1(&mut f);
    follow(&mut f, &["site-1"]);
    let start = |f: &Fed, group: &str, since: u64| Action::StartFailback {
        group: group.into(),
        evidence: recovered(f, "site-1", since).remove("site-1").unwrap(),
        detect: DetectConfig::default(),
    };
    let before = f.state.clone();
    let refusals =
        [(start(&f, "crm-web", f.now - 600_000), "has not opted in"), (start(&f, "a", f.now - 10_000), "2 are needed")];
    for (action, why) in refusals {
        let err = f.propose("system", action).unwrap_err().to_string();
        assert!(err.contains(why), "{err}");
    }
    assert!(same_except_index(&before, &f.state), "refusals change nothing");
    // One failure domain is not a quorum, however long.
    let mut one = start(&f, "a", f.now - 600_000);
    if let Action::StartFailback { evidence, .. } = &mut one {
        evidence.truncate(1);
    }
    assert!(f.propose("system", one).unwrap_err().to_string().contains("1 failure domain(s)"));
    f.ok("dr-admin:dana", Action::TripBrake { reason: "storm".into() });
    let braked = f.state.clone();
    assert!(f.propose("system", start(&f, "a", f.now - 600_000)).unwrap_err().to_string().contains("braked"));
    assert_eq!(next(&f, f.now - 600_000), None, "no failback while braked");
    assert!(same_except_index(&braked, &f.state));
    assert!(f.state.down_sites.contains_key("site-1"), "refusals left the site declared down");
    // A stale report from the old site holds it back too (the switchover's own preflight).
    f.ok("dr-admin:dana", Action::ReleaseBrake { reason: "storm over".into() });
    f.now += 60_000;
    follow(&mut f, &["site-2", "site-3"]);
    let err = f.propose("system", start(&f, "a", f.now - 600_000)).unwrap_err().to_string();
    assert!(err.contains("site-1"), "{err}");
    assert!(f.state.down_sites.contains_key("site-1"), "a refused failback does not return the site");
    assert_eq!(f.state.sites["site-1"].state, switchyard_core::SiteState::Down);
}

#[test]
fn a_failback_waits_for_a_change_window_like_any_planned_move() {
    let mut f = setup(false);
    fail_site_1(&mut f);
    follow(&mut f, &["site-1"]);
    let window: switchyard_core::window::ChangeWindow = "sat 01:00-02:00".parse().unwrap();
    f.ok("dr-admin:dana", Action::SetChangeWindows { windows: vec![window], reason: "CAB calendar".into() });
    assert_eq!(next(&f, f.now - 600_000), None, "not proposed outside the window");
    let why =
        failback::eligible(&f.state, "a", &recovered(&f, "site-1", f.now - 600_000), f.now, &DetectConfig::default())
            .unwrap_err();
    assert!(why.contains("window"), "{why}");
    f.ok("dr-admin:dana", Action::SetChangeWindows { windows: vec![], reason: "CAB lifted".into() });
    assert!(next(&f, f.now - 600_000).is_some());
}
