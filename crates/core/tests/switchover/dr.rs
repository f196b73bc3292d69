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
    let d = decide(
        &f.state,
        "site-1",
        &set(&["site-1"]),
        &set(&[]),
        &Default::default(),
        f.now,
        &GuardConfig::default(),
        false,
    );
    let moves: Vec<(&str, &str)> = d.moves.iter().map(|m| (m.group.as_str(), m.to.as_str())).collect();
    assert_eq!(moves, [("a", "site-2"), ("crm-web", "site-2"), ("b", "site-3")]);
    assert!(d.held.is_empty() && d.trip_brake.is_none());
    assert_eq!(d.moves[1].reserved.cpu_millis, 200);
    // Not enough anywhere for everything: taken in tier order, what fits goes (b's one
    // instance still fits after crm-web's two did not), the rest is held with the reason.
    let f = failed_site_1(200, 0);
    let d = decide(
        &f.state,
        "site-1",
        &set(&["site-1"]),
        &set(&[]),
        &Default::default(),
        f.now,
        &GuardConfig::default(),
        false,
    );
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
        false,
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
    let d = decide(&f.state, "site-1", &down, &set(&[]), &Default::default(), f.now, &GuardConfig::default(), false);
    assert!(d.moves.is_empty());
    let why = d.trip_brake.clone().expect("the brake trips");
    assert!(why.contains("2 of 3 sites declared down"), "{why}");
    assert!(held(&d).iter().all(|(_, r)| *r == Rule::Brake));
    // Once braked, even one failed site moves nothing until a human releases it.
    let history = AutomationHistory { brake: Some(why), ..Default::default() };
    let d = decide(&f.state, "site-1", &set(&["site-1"]), &set(&[]), &history, f.now, &GuardConfig::default(), false);
    assert!(d.moves.is_empty() && d.trip_brake.is_none());
    assert!(d.held[0].detail.contains("fedctl brake release"), "{}", d.held[0].detail);
    // Too many automatic failovers in the window trips it too.
    let busy = AutomationHistory {
        failovers: (0..49).map(|i| (f.now - 1_000, format!("x{i}"))).collect(),
        ..Default::default()
    };
    let d = decide(&f.state, "site-1", &set(&["site-1"]), &set(&[]), &busy, f.now, &GuardConfig::default(), false);
    assert!(d.trip_brake.unwrap().contains("49 automatic failovers"));
}

#[test]
fn a_flapping_site_fails_a_group_over_at_most_once_per_cooldown() {
    let f = failed_site_1(10_000, 10_000);
    let cfg = GuardConfig::default();
    let first = decide(&f.state, "site-1", &set(&["site-1"]), &set(&[]), &Default::default(), f.now, &cfg, false);
    assert_eq!(first.moves.len(), 3);
    // The site came back, flapped, and is declared down again a minute later.
    let history = AutomationHistory {
        failovers: first.moves.iter().map(|m| (f.now, m.group.clone())).collect(),
        ..Default::default()
    };
    let again = decide(&f.state, "site-1", &set(&["site-1"]), &set(&[]), &history, f.now + 60_000, &cfg, false);
    assert!(again.moves.is_empty(), "{again:?}");
    assert!(held(&again).iter().all(|(_, r)| *r == Rule::Cooldown));
    assert!(again.held[0].detail.contains("cooldown has 540 s left"), "{}", again.held[0].detail);
    let mut f = f;
    f.now += cfg.cooldown_ms;
    f.report("site-2", 10_000, &[]);
    f.report("site-3", 10_000, &[]);
    let later = decide(&f.state, "site-1", &set(&["site-1"]), &set(&[]), &history, f.now, &cfg, false);
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
    let d = decide(&f.state, "site-1", &set(&["site-1"]), &set(&[]), &Default::default(), f.now, &cfg, false);
    assert_eq!(d.moves.len(), 1);
    assert_eq!(held(&d), [("crm-web", Rule::RateLimit), ("b", Rule::Freeze)]);
    assert!(d.held[1].detail.contains("audit week"));
    // With a second site sick, the slower rate applies: nothing this minute.
    let d = decide(&f.state, "site-1", &set(&["site-1"]), &set(&["site-3"]), &Default::default(), f.now, &cfg, false);
    assert!(d.moves.is_empty(), "{d:?}");
    assert!(d.held[0].detail.contains("at most 0 automatic failovers a minute (2 sites sick)"), "{}", d.held[0].detail);
}

#[test]
fn failovers_in_flight_are_limited_and_the_rest_wait_their_turn() {
    let f = failed_site_1(10_000, 10_000);
    let cfg = GuardConfig { max_concurrent: 2, ..Default::default() };
    let d = decide(&f.state, "site-1", &set(&["site-1"]), &set(&[]), &Default::default(), f.now, &cfg, false);
    assert_eq!(d.moves.len(), 2);
    assert_eq!(held(&d), [("b", Rule::RateLimit)]);
    assert!(d.held[0].detail.contains("2 automatic failovers in flight"), "{}", d.held[0].detail);
    let busy = AutomationHistory { in_flight: 2, ..Default::default() };
    let d = decide(&f.state, "site-1", &set(&["site-1"]), &set(&[]), &busy, f.now, &cfg, false);
    assert!(d.moves.is_empty() && d.held.iter().all(|h| h.rule == Rule::RateLimit), "{d:?}");
    // A human's break-glass is not queued behind automation.
    let d = decide(&f.state, "site-1", &set(&["site-1"]), &set(&[]), &busy, f.now, &cfg, true);
    assert_eq!(d.moves.len(), 3);
}

#[test]
fn the_rate_limit_is_one_budget_across_every_failed_site() {
    // site-1 and site-2 both declared down; site-3 has room for everything.
    let mut f = failed_site_1(0, 10_000);
    let mut other = group("c", 1, 100);
    other.dns_name = "c".into();
    other.home_site = "site-2".into();
    f.ok("system:config", Action::RegisterGroup(other));
    f.report("site-2", 1000, &[("c", 1, 0)]);
    f.report("site-3", 10_000, &[]);
    for site in ["site-1", "site-2"] {
        f.ok(
            "dr-admin:dana",
            Action::DeclareSiteDownManually {
                site: site.into(),
                reason: "gone".into(),
                break_glass: false,
                accept_data_loss: false,
            },
        );
    }
    let cfg = GuardConfig { brake_sites_percent: 100, secondary_rate_per_minute: 2, ..Default::default() };
    let actions = switchyard_core::dr::decide(&f.state, &set(&[]), f.now, &cfg);
    assert_eq!(actions.len(), 2, "2 a minute in all, not 2 per failed site: {actions:?}");
    // The next round, a second later, starts nothing more within the minute.
    for a in actions {
        f.ok("system", a);
    }
    f.now += 1_000;
    assert!(switchyard_core::dr::decide(&f.state, &set(&[]), f.now, &cfg).is_empty());
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
    let d =
        decide(&st, "site-1", &set(&["site-1"]), &set(&[]), &Default::default(), f.now, &GuardConfig::default(), false);
    let crm = d.moves.iter().find(|m| m.group == "crm-web").unwrap();
    assert_eq!((crm.to.as_str(), crm.warm, crm.reserved), ("site-3", true, Resources::default()));
    // The others, cold, go where there is the most room left (a tie: by name).
    let cold: Vec<(&str, bool)> =
        d.moves.iter().filter(|m| m.group != "crm-web").map(|m| (m.to.as_str(), m.warm)).collect();
    assert_eq!(cold, [("site-2", false), ("site-3", false)]);
}

mod committed {
    //! The committed side: a declaration checked against its evidence, failovers the engine
    //! proposes and `apply` starts, and the brake.

    use super::*;
    use switchyard_core::OperationKind;
    use switchyard_core::dr::detect::{DetectConfig, Evidence, Health};

    fn evidence(observers: &[(&str, &str)], since: u64, last: u64) -> Vec<Evidence> {
        observers
            .iter()
            .map(|(observer, domain)| Evidence {
                observer: observer.to_string(),
                domain: domain.to_string(),
                health: Health::Unhealthy,
                unhealthy_since_ms: Some(since),
                last_at_ms: last,
                detail: "connect: connection refused".into(),
            })
            .collect()
    }

    fn declare(f: &mut Fed, site: &str, evidence: Vec<Evidence>) -> Result<Applied, Refusal> {
        f.propose("system", Action::DeclareSiteDown { site: site.into(), evidence, detect: DetectConfig::default() })
    }

    /// The survivors report what their placements ask, all healthy; the failed site is silent.
    fn survivors_follow(f: &mut Fed) {
        for site in ["site-2", "site-3"] {
            if f.state.down_sites.contains_key(site) {
                continue;
            }
            let on: Vec<(String, u32)> = f
                .state
                .groups
                .values()
                .filter_map(|g| g.placement.sites.get(site).map(|s| (g.spec.name.clone(), s.total_instances())))
                .filter(|(_, n)| *n > 0)
                .collect();
            let refs: Vec<(&str, u32, u32)> = on.iter().map(|(g, n)| (g.as_str(), *n, 0)).collect();
            f.report(site, 10_000, &refs);
        }
    }

    #[test]
    fn a_declaration_needs_fresh_evidence_from_a_quorum_of_failure_domains() {
        let mut f = failed_site_1(10_000, 10_000);
        let now = f.now;
        let before = f.state.clone();
        // Two observers, one failure domain: not a quorum.
        let err =
            declare(&mut f, "site-1", evidence(&[("fed-2", "site-2"), ("dns-site-2", "site-2")], now - 20_000, now))
                .unwrap_err()
                .to_string();
        assert!(err.contains("1 failure domain(s) (site-2)") && err.contains("2 are needed"), "{err}");
        // Two domains, but not for the whole window, or no longer fresh.
        assert!(
            declare(&mut f, "site-1", evidence(&[("fed-2", "site-2"), ("fed-3", "site-3")], now - 5_000, now)).is_err()
        );
        assert!(
            declare(
                &mut f,
                "site-1",
                evidence(&[("fed-2", "site-2"), ("fed-3", "site-3")], now - 60_000, now - 30_000)
            )
            .is_err()
        );
        assert!(same_except_index(&before, &f.state), "a refused declaration changes nothing");
        declare(&mut f, "site-1", evidence(&[("fed-2", "site-2"), ("fed-3", "site-3")], now - 10_000, now)).unwrap();
        assert_eq!(f.state.sites["site-1"].state, switchyard_core::SiteState::Down);
        let record = f.state.audit.records().last().unwrap();
        assert_eq!(record.action, "site.declared-down");
        assert!(record.detail_json.contains("connection refused") && record.detail_json.contains("fed-3"));
        assert!(matches!(
            declare(&mut f, "site-1", evidence(&[("fed-2", "site-2"), ("fed-3", "site-3")], now - 10_000, now)),
            Ok(Applied::Unchanged)
        ));
    }

    #[test]
    fn a_declared_site_fails_over_warm_at_once_cold_after_scale_up_and_keeps_everything() {
        let mut f = failed_site_1(10_000, 10_000);
        f.state.groups.get_mut("crm-web").unwrap().placement.sites.insert(
            "site-3".into(),
            switchyard_core::SiteShare { instances: [("web".to_string(), 2)].into(), weight: 0 },
        );
        survivors_follow(&mut f);
        let now = f.now;
        declare(&mut f, "site-1", evidence(&[("fed-2", "site-2"), ("fed-3", "site-3")], now - 10_000, now)).unwrap();
        let started = f.tick(100);
        let froms: Vec<&Action> = started.iter().filter(|a| matches!(a, Action::StartFailover { .. })).collect();
        assert_eq!(froms.len(), 3, "{started:?}");
        let crm = f.state.groups["crm-web"].placement.clone();
        assert_eq!((crm.share("site-1").weight, crm.share("site-3").weight), (0, 100), "warm: traffic first");
        let a = f.state.groups["a"].placement.clone();
        assert_eq!(a.active_sites(), vec!["site-1"], "cold: the target scales up first");
        assert_eq!(a.share("site-2").total_instances() + a.share("site-3").total_instances(), 1);
        // The survivors run what they are asked; the cold ones then take the traffic.
        for _ in 0..5 {
            survivors_follow(&mut f);
            f.tick(1_000);
        }
        for g in f.state.groups.values() {
            let active = g.placement.active_sites();
            assert_eq!(active.len(), 1, "{}", g.spec.name);
            assert_ne!(active[0], "site-1", "{} serves from a survivor", g.spec.name);
            assert_eq!(
                g.placement.share("site-1").total_instances(),
                g.spec.apps[0].instances,
                "nothing deleted on site-1"
            );
            assert!(g.operation.is_none());
        }
        let failovers: Vec<_> = f.state.operations.values().filter(|o| o.kind == OperationKind::Failover).collect();
        assert_eq!(failovers.len(), 3);
        assert!(failovers.iter().all(|o| o.outcome == Outcome::Succeeded));
        assert_eq!(f.state.automatic_failovers.len(), 3);
        let actions: Vec<&str> = f.state.audit.records().iter().map(|r| r.action.as_str()).collect();
        assert_eq!(actions.iter().filter(|a| **a == "failover.complete").count(), 3);
        assert!(f.tick(1_000).is_empty(), "nothing left to do");
        verify_chain(f.state.audit.records()).unwrap();
    }

    #[test]
    fn two_of_three_sites_declared_down_brake_automation_until_a_human_releases_it() {
        let mut f = failed_site_1(10_000, 10_000);
        let now = f.now;
        let both = |f: &mut Fed, site: &str, a: (&str, &str), b: (&str, &str)| {
            declare(f, site, evidence(&[a, b], now - 10_000, now)).unwrap();
        };
        both(&mut f, "site-1", ("fed-2", "site-2"), ("fed-3", "site-3"));
        both(&mut f, "site-2", ("fed-1", "site-1"), ("fed-3", "site-3"));
        let proposed = f.tick(100);
        assert!(matches!(proposed.as_slice(), [Action::TripBrake { .. }]), "{proposed:?}");
        assert!(f.state.brake.as_ref().unwrap().reason.contains("2 of 3 sites declared down"));
        assert!(f.tick(1_000).is_empty(), "braked: nothing moves");
        assert!(f.state.operations.values().all(|o| o.kind != OperationKind::Failover));
        // A failover proposed anyway is refused while braked.
        let forced = Action::StartFailover { group: "a".into(), from: "site-1".into(), to: "site-3".into() };
        assert!(f.propose("system", forced).unwrap_err().to_string().contains("braked"));
        f.ok("dr-admin:dana", Action::ReleaseBrake { reason: "reviewed, site-2 is a monitoring fault".into() });
        assert!(f.state.brake.is_none());
        let actions: Vec<&str> = f.state.audit.records().iter().map(|r| r.action.as_str()).collect();
        assert!(actions.ends_with(&["brake.engaged", "brake.released"]), "{actions:?}");
        // Still two of three down: the next decision trips it again.
        assert!(matches!(f.tick(100).as_slice(), [Action::TripBrake { .. }]));
    }

    #[test]
    fn a_failover_whose_target_never_comes_up_needs_attention_and_finishes_when_it_does() {
        let mut f = failed_site_1(10_000, 10_000);
        let now = f.now;
        declare(&mut f, "site-1", evidence(&[("fed-2", "site-2"), ("fed-3", "site-3")], now - 10_000, now)).unwrap();
        f.tick(100);
        let id = f.state.groups["a"].operation.clone().unwrap();
        // The target reports the group but never a healthy instance.
        for _ in 0..200 {
            for site in ["site-2", "site-3"] {
                f.report(site, 10_000, &[]);
            }
            f.tick(1_000);
        }
        let op = f.op(&id);
        assert_eq!(op.outcome, Outcome::NeedsAttention, "{op:?}");
        assert!(f.state.groups["a"].operation.is_some(), "still locked for a human");
        assert_eq!(f.state.groups["a"].placement.active_sites(), vec!["site-1"], "no rollback: nowhere to go back to");
        survivors_follow(&mut f);
        f.tick(1_000);
        assert_eq!(f.op(&id).outcome, Outcome::Succeeded);
        assert_ne!(f.state.groups["a"].placement.active_sites(), vec!["site-1"]);
    }

    #[test]
    fn a_human_declares_a_site_down_under_the_same_rules_and_break_glass_names_what_it_overrides() {
        let mut f = failed_site_1(10_000, 10_000);
        survivors_follow(&mut f);
        let manual = |break_glass: bool, reason: &str| Action::DeclareSiteDownManually {
            site: "site-1".into(),
            reason: reason.into(),
            break_glass,
            accept_data_loss: false,
        };
        assert!(f.propose("dr-admin:dana", manual(false, " ")).unwrap_err().to_string().contains("needs a reason"));
        // Automation is braked: a plain manual declaration moves nothing.
        f.ok("dr-admin:dana", Action::TripBrake { reason: "storm".into() });
        f.ok(
            "dr-admin:dana",
            Action::SetFreeze { scope: FreezeScope::Group("b".into()), reason: "audit week".into(), until_ms: None },
        );
        f.ok("dr-admin:dana", manual(false, "site-1 lost power"));
        assert!(f.tick(100).is_empty(), "braked");
        assert!(
            f.propose("dr-admin:dana", manual(true, "again")).unwrap_err().to_string().contains("already declared")
        );
        // Break-glass overrides the brake (not the freeze): a fresh declaration on another
        // federation state shows it.
        let mut g = failed_site_1(10_000, 10_000);
        survivors_follow(&mut g);
        g.ok("dr-admin:dana", Action::TripBrake { reason: "storm".into() });
        g.ok(
            "dr-admin:dana",
            Action::SetFreeze { scope: FreezeScope::Group("b".into()), reason: "audit week".into(), until_ms: None },
        );
        g.ok("dr-admin:dana", manual(true, "site-1 lost power; CAB on the phone"));
        let record = g.state.audit.records().last().unwrap();
        assert_eq!(record.action, "site.declared-down.break-glass");
        assert!(
            record.detail_json.contains("brake") && record.detail_json.contains("rate-limit"),
            "{}",
            record.detail_json
        );
        let started = g.tick(100);
        let groups: Vec<&str> = started
            .iter()
            .filter_map(|a| match a {
                Action::StartFailover { group, .. } => Some(group.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(groups, ["a", "crm-web"], "b stays frozen: {started:?}");
    }

    #[test]
    fn a_group_on_a_silent_or_declared_site_is_unknown_never_healthy() {
        use switchyard_core::views::placement_health;
        let mut f = failed_site_1(10_000, 10_000);
        assert_eq!(placement_health(&f.state, "crm-web", "site-1", f.now), "healthy");
        f.report("site-1", 1000, &[("crm-web", 1, 1), ("a", 1, 0), ("b", 1, 0)]);
        assert_eq!(placement_health(&f.state, "crm-web", "site-1", f.now), "degraded");
        assert_eq!(placement_health(&f.state, "crm-web", "site-2", f.now), "idle");
        // The cell's last report said healthy, but it is old news now.
        f.report("site-1", 1000, &[("crm-web", 2, 0), ("a", 1, 0), ("b", 1, 0)]);
        assert_eq!(placement_health(&f.state, "crm-web", "site-1", f.now + 11_000), "unknown");
        let now = f.now;
        declare(&mut f, "site-1", evidence(&[("fed-2", "site-2"), ("fed-3", "site-3")], now - 10_000, now)).unwrap();
        assert_eq!(placement_health(&f.state, "crm-web", "site-1", f.now), "unknown", "declared down");
    }

    #[test]
    fn a_returned_site_is_reclaimed_by_hand_stopping_only_what_moved_away() {
        let mut f = failed_site_1(10_000, 200);
        survivors_follow(&mut f);
        let reclaim = |f: &mut Fed, reason: &str| {
            f.propose("dr-admin:dana", Action::ReclaimSite { site: "site-1".into(), reason: reason.into() })
        };
        assert!(reclaim(&mut f, "back").unwrap_err().to_string().contains("not declared down"));
        let now = f.now;
        declare(&mut f, "site-1", evidence(&[("fed-2", "site-2"), ("fed-3", "site-3")], now - 10_000, now)).unwrap();
        // `b` is frozen: it does not fail over, and site-1 still serves it.
        f.ok(
            "dr-admin:dana",
            Action::SetFreeze { scope: FreezeScope::Group("b".into()), reason: "audit week".into(), until_ms: None },
        );
        for _ in 0..5 {
            survivors_follow(&mut f);
            f.tick(1_000);
        }
        assert_eq!(f.state.groups["b"].placement.active_sites(), vec!["site-1"]);
        assert!(reclaim(&mut f, " ").unwrap_err().to_string().contains("needs a reason"));
        let before: Vec<u32> =
            ["a", "crm-web"].iter().map(|g| f.state.groups[*g].placement.share("site-1").total_instances()).collect();
        assert!(before.iter().all(|n| *n > 0), "nothing was deleted while it was down");
        reclaim(&mut f, "site-1 power restored (INC-77)").unwrap();
        assert_eq!(f.state.sites["site-1"].state, switchyard_core::SiteState::Active);
        assert!(f.state.down_sites.is_empty());
        for g in ["a", "crm-web"] {
            assert!(!f.state.groups[g].placement.sites.contains_key("site-1"), "{g}'s fenced instances are stopped");
        }
        assert_eq!(f.state.groups["b"].placement.share("site-1").total_instances(), 1, "b is still served there");
        let record = f.state.audit.records().last().unwrap();
        assert_eq!(record.action, "site.reclaimed");
        assert!(record.detail_json.contains("\"stopped_groups\":[\"a\",\"crm-web\"]"), "{}", record.detail_json);
        assert!(reclaim(&mut f, "again").is_err());
    }

    #[test]
    fn a_human_fails_one_group_over_off_a_site_that_stays_in_service() {
        let mut f = failed_site_1(10_000, 10_000);
        survivors_follow(&mut f);
        let failover = |f: &mut Fed, group: &str, break_glass: bool| {
            f.propose(
                "dr-admin:dana",
                Action::FailoverGroup {
                    group: group.into(),
                    reason: "crm-web broken on site-1 (INC-80)".into(),
                    break_glass,
                    accept_data_loss: false,
                },
            )
        };
        f.ok("dr-admin:dana", Action::TripBrake { reason: "storm".into() });
        assert!(failover(&mut f, "crm-web", false).unwrap_err().to_string().contains("pass --break-glass"));
        let Applied::OperationStarted { id } = failover(&mut f, "crm-web", true).unwrap() else { panic!() };
        assert_eq!(f.op(&id).kind, OperationKind::Failover);
        assert!(f.op(&id).reason.contains("break-glass"), "{}", f.op(&id).reason);
        assert!(f.state.down_sites.is_empty(), "the site stays in service");
        for _ in 0..5 {
            survivors_follow(&mut f);
            f.tick(1_000);
        }
        let crm = &f.state.groups["crm-web"].placement;
        assert_eq!(crm.active_sites(), vec!["site-2"]);
        assert_eq!(crm.share("site-1").total_instances(), 2, "fenced, nothing deleted");
        assert_eq!(f.state.groups["a"].placement.active_sites(), vec!["site-1"], "other groups untouched");
        // Refusals change nothing.
        f.ok(
            "dr-admin:dana",
            Action::SetFreeze { scope: FreezeScope::Group("b".into()), reason: "audit week".into(), until_ms: None },
        );
        assert!(failover(&mut f, "b", true).unwrap_err().to_string().contains("audit week"));
        assert!(matches!(failover(&mut f, "nope", true), Err(Refusal::UnknownGroup(_))));
        let blank =
            Action::FailoverGroup { group: "a".into(), reason: " ".into(), break_glass: true, accept_data_loss: false };
        assert!(f.propose("dr-admin:dana", blank).unwrap_err().to_string().contains("needs a reason"));
    }
}
