//! Automatic failover's guard rails and target choice (`dr::guard::decide`), rule by rule,
//! on a committed state built through `apply`.

use std::collections::BTreeSet;

use super::*;
use switchyard_core::FreezeScope;
use switchyard_core::dr::guard::{AutomationHistory, GuardConfig, Rule, decide};

/// site-1 runs crm-web (tier 1, 2 × 100) plus `a` (tier 0) and `b` (tier 2), one instance of
/// 100 each; site-2 and site-3 report `cpu` millicores on one node each.
fn failed_site_1(cpu2: u64, cpu3: u64) -> Fed {
    let mut f = Fed::new();
    for (name, tier) in [("a", 0), ("b", 2)] {
        let mut g = group(name, 1, 100);
        g.dns_name = name.into();
        g.tier = tier;
        f.ok("system:config", Action::RegisterGroup(g));
    }
    f.report("site-1", 1000, &[("crm-web", 2, 0), ("a", 1, 0), ("b", 1, 0)]);
    f.report("site-2", cpu2, &[]);
    f.report("site-3", cpu3, &[]);
    f
}

fn set(sites: &[&str]) -> BTreeSet<String> {
    sites.iter().map(|s| s.to_string()).collect()
}

fn held(d: &switchyard_core::dr::guard::FailoverDecision) -> Vec<(&str, Rule)> {
    d.held.iter().map(|h| (h.group.as_str(), h.rule)).collect()
}

#[test]
fn groups_fail_over_by_tier_to_survivors_with_room_reserved_as_they_go() {
    // site-2 has room for 300 (a, then crm-web's 200), site-3 for 100 (b).
    let f = failed_site_1(300, 100);
    let d =
        decide(&f.state, "site-1", &set(&["site-1"]), &set(&[]), &Default::default(), f.now, &GuardConfig::default());
    let moves: Vec<(&str, &str)> = d.moves.iter().map(|m| (m.group.as_str(), m.to.as_str())).collect();
    assert_eq!(moves, [("a", "site-2"), ("crm-web", "site-2"), ("b", "site-3")]);
    assert!(d.held.is_empty() && d.trip_brake.is_none());
    assert_eq!(d.moves[1].reserved.cpu_millis, 200);
    // Not enough anywhere for everything: taken in tier order, what fits goes (b's one
    // instance still fits after crm-web's two did not), the rest is held with the reason.
    let f = failed_site_1(200, 0);
    let d =
        decide(&f.state, "site-1", &set(&["site-1"]), &set(&[]), &Default::default(), f.now, &GuardConfig::default());
    let moves: Vec<&str> = d.moves.iter().map(|m| m.group.as_str()).collect();
    assert_eq!(moves, ["a", "b"], "{d:?}");
    assert_eq!(held(&d), [("crm-web", Rule::Capacity)]);
    assert!(d.held[0].detail.contains("site-2: needs 200"), "{}", d.held[0].detail);
}

#[test]
fn no_surviving_target_is_no_feasible_target_never_all_healthy() {
    let f = failed_site_1(10_000, 10_000);
    let d = decide(
        &f.state,
        "site-1",
        &set(&["site-1"]),
        &set(&["site-2", "site-3"]),
        &Default::default(),
        f.now,
        &GuardConfig { brake_sites_percent: 100, ..Default::default() },
    );
    assert!(d.moves.is_empty());
    assert_eq!(
        held(&d),
        [("a", Rule::NoFeasibleTarget), ("crm-web", Rule::NoFeasibleTarget), ("b", Rule::NoFeasibleTarget)]
    );
    assert!(d.held[0].detail.contains("keeps its placement"), "{}", d.held[0].detail);
}

#[test]
fn two_of_three_sites_down_trips_the_brake_and_a_braked_federation_moves_nothing() {
    let f = failed_site_1(10_000, 10_000);
    let down = set(&["site-1", "site-2"]);
    let d = decide(&f.state, "site-1", &down, &set(&[]), &Default::default(), f.now, &GuardConfig::default());
    assert!(d.moves.is_empty());
    let why = d.trip_brake.clone().expect("the brake trips");
    assert!(why.contains("2 of 3 sites declared down"), "{why}");
    assert!(held(&d).iter().all(|(_, r)| *r == Rule::Brake));
    // Once braked, even one failed site moves nothing until a human releases it.
    let history = AutomationHistory { brake: Some(why), failovers: vec![] };
    let d = decide(&f.state, "site-1", &set(&["site-1"]), &set(&[]), &history, f.now, &GuardConfig::default());
    assert!(d.moves.is_empty() && d.trip_brake.is_none());
    assert!(d.held[0].detail.contains("fedctl brake release"), "{}", d.held[0].detail);
    // Too many automatic failovers in the window trips it too.
    let busy =
        AutomationHistory { brake: None, failovers: (0..49).map(|i| (f.now - 1_000, format!("x{i}"))).collect() };
    let d = decide(&f.state, "site-1", &set(&["site-1"]), &set(&[]), &busy, f.now, &GuardConfig::default());
    assert!(d.trip_brake.unwrap().contains("49 automatic failovers"));
}

#[test]
fn a_flapping_site_fails_a_group_over_at_most_once_per_cooldown() {
    let f = failed_site_1(10_000, 10_000);
    let cfg = GuardConfig::default();
    let first = decide(&f.state, "site-1", &set(&["site-1"]), &set(&[]), &Default::default(), f.now, &cfg);
    assert_eq!(first.moves.len(), 3);
    // The site came back, flapped, and is declared down again a minute later.
    let history =
        AutomationHistory { brake: None, failovers: first.moves.iter().map(|m| (f.now, m.group.clone())).collect() };
    let again = decide(&f.state, "site-1", &set(&["site-1"]), &set(&[]), &history, f.now + 60_000, &cfg);
    assert!(again.moves.is_empty(), "{again:?}");
    assert!(held(&again).iter().all(|(_, r)| *r == Rule::Cooldown));
    assert!(again.held[0].detail.contains("cooldown has 540 s left"), "{}", again.held[0].detail);
    let mut f = f;
    f.now += cfg.cooldown_ms;
    f.report("site-2", 10_000, &[]);
    f.report("site-3", 10_000, &[]);
    let later = decide(&f.state, "site-1", &set(&["site-1"]), &set(&[]), &history, f.now, &cfg);
    assert_eq!(later.moves.len(), 3, "eligible again after the cooldown");
}

#[test]
fn freezes_and_rate_limits_hold_groups_naming_the_rule() {
    let mut f = failed_site_1(10_000, 10_000);
    f.ok(
        "dr-admin:dana",
        Action::SetFreeze { scope: FreezeScope::Group("b".into()), reason: "audit week".into(), until_ms: None },
    );
    let cfg = GuardConfig { rate_per_minute: 1, secondary_rate_per_minute: 0, ..Default::default() };
    let d = decide(&f.state, "site-1", &set(&["site-1"]), &set(&[]), &Default::default(), f.now, &cfg);
    assert_eq!(d.moves.len(), 1);
    assert_eq!(held(&d), [("crm-web", Rule::RateLimit), ("b", Rule::Freeze)]);
    assert!(d.held[1].detail.contains("audit week"));
    // With a second site sick, the slower rate applies: nothing this minute.
    let d = decide(&f.state, "site-1", &set(&["site-1"]), &set(&["site-3"]), &Default::default(), f.now, &cfg);
    assert!(d.moves.is_empty(), "{d:?}");
    assert!(d.held[0].detail.contains("at most 0 automatic failovers a minute (2 sites sick)"), "{}", d.held[0].detail);
}

#[test]
fn a_warm_standby_is_preferred_and_needs_no_new_capacity() {
    let f = failed_site_1(10_000, 10_000);
    // crm-web keeps a warm standby on site-3: its 2 instances run there, with no traffic.
    let mut st = f.state.clone();
    st.groups
        .get_mut("crm-web")
        .unwrap()
        .placement
        .sites
        .insert("site-3".into(), switchyard_core::SiteShare { instances: [("web".to_string(), 2)].into(), weight: 0 });
    let d = decide(&st, "site-1", &set(&["site-1"]), &set(&[]), &Default::default(), f.now, &GuardConfig::default());
    let crm = d.moves.iter().find(|m| m.group == "crm-web").unwrap();
    assert_eq!((crm.to.as_str(), crm.warm, crm.reserved), ("site-3", true, Resources::default()));
    // The others, cold, go where there is the most room left (a tie: by name).
    let cold: Vec<(&str, bool)> =
        d.moves.iter().filter(|m| m.group != "crm-web").map(|m| (m.to.as_str(), m.warm)).collect();
    assert_eq!(cold, [("site-2", false), ("site-3", false)]);
}
