//! One group down at one site (its composite health: instances, ingress, dependencies): only
//! that group fails over, its site keeps serving the others, and a declaration that could not
//! act in time goes stale instead of moving a group that may have recovered.

use super::*;
use switchyard_core::FreezeScope;
use switchyard_core::dr::detect::{DetectConfig, Evidence, Health};

fn two_groups_on_site_1() -> Fed {
    let mut f = Fed::new();
    let mut other = group("ledger", 1, 100);
    other.dns_name = "ledger".into();
    f.ok("system:config", Action::RegisterGroup(other));
    f.report("site-1", 1000, &[("crm-web", 0, 2), ("ledger", 1, 0)]);
    f.report("site-2", 10_000, &[]);
    f.report("site-3", 10_000, &[]);
    f
}

fn evidence(domains: &[&str], since: u64, now: u64) -> Vec<Evidence> {
    domains
        .iter()
        .map(|d| Evidence {
            observer: format!("{d}-observer"),
            domain: d.to_string(),
            health: Health::Unhealthy,
            unhealthy_since_ms: Some(since),
            last_at_ms: now,
            detail: "instances: Unhealthy (no healthy instance of web)".into(),
        })
        .collect()
}

fn declare(f: &mut Fed, group: &str, domains: &[&str]) -> Result<Applied, Refusal> {
    let now = f.now;
    f.propose(
        "system",
        Action::DeclareGroupDown {
            site: "site-1".into(),
            group: group.into(),
            evidence: evidence(domains, now - 12_000, now),
            detect: DetectConfig::default(),
        },
    )
}

#[test]
fn a_group_declared_down_fails_over_alone_and_its_site_keeps_serving() {
    let mut f = two_groups_on_site_1();
    let before = f.state.clone();
    let err = declare(&mut f, "crm-web", &["cell"]).unwrap_err().to_string();
    assert!(err.contains("1 failure domain(s)") && err.contains("2 are needed"), "{err}");
    assert!(same_except_index(&before, &f.state), "a refused declaration changes nothing");
    declare(&mut f, "crm-web", &["cell", "federator"]).unwrap();
    assert_eq!(f.state.audit.records().last().unwrap().action, "group.declared-down");
    assert!(f.state.down_sites.is_empty(), "the site is not declared down");
    let started = f.tick(100);
    let moved: Vec<&str> = started
        .iter()
        .filter_map(|a| match a {
            Action::StartFailover { group, .. } => Some(group.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(moved, ["crm-web"], "{started:?}");
    assert!(f.state.down_groups.is_empty(), "the declaration is spent once the failover starts");
    let op = f.state.operations.values().find(|o| o.group == "crm-web").unwrap();
    assert!(op.reason.contains("crm-web declared down at site-1"), "{}", op.reason);
    assert_eq!(f.state.groups["ledger"].placement.active_sites(), vec!["site-1"], "ledger stays");
    // A group with no traffic at the site cannot be declared down there.
    let err = f
        .propose(
            "system",
            Action::DeclareGroupDown {
                site: "site-3".into(),
                group: "ledger".into(),
                evidence: evidence(&["cell", "federator"], f.now - 12_000, f.now),
                detect: DetectConfig::default(),
            },
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("takes no traffic"), "{err}");
}

#[test]
fn a_declaration_held_too_long_goes_stale_instead_of_moving_old_news() {
    let mut f = two_groups_on_site_1();
    f.ok(
        "dr-admin:dana",
        Action::SetFreeze { scope: FreezeScope::Group("crm-web".into()), reason: "audit".into(), until_ms: None },
    );
    declare(&mut f, "crm-web", &["cell", "federator"]).unwrap();
    f.tick(100);
    assert!(f.state.operations.is_empty(), "frozen: held");
    let frozen = switchyard_core::dr::round(&f.state, &Default::default(), f.now, &Default::default());
    assert_eq!(frozen.held[0].1.rule, switchyard_core::dr::guard::Rule::Freeze);
    f.ok("dr-admin:dana", Action::ClearFreeze { scope: FreezeScope::Group("crm-web".into()), reason: "done".into() });
    f.now += switchyard_core::dr::GROUP_DECLARATION_MS;
    f.report("site-1", 1000, &[("crm-web", 2, 0), ("ledger", 1, 0)]);
    f.report("site-2", 10_000, &[]);
    f.report("site-3", 10_000, &[]);
    assert!(f.tick(100).is_empty(), "a stale declaration moves nothing");
    assert!(f.state.down_groups.is_empty(), "and is dropped with the next cell report");
    let forced = Action::StartFailover { group: "crm-web".into(), from: "site-1".into(), to: "site-2".into() };
    assert!(f.propose("system", forced).unwrap_err().to_string().contains("is declared down"));
    // Seen down again: declared afresh and moved.
    declare(&mut f, "crm-web", &["cell", "federator"]).unwrap();
    assert!(f.tick(100).iter().any(|a| matches!(a, Action::StartFailover { .. })));
}

#[test]
fn a_groups_instances_part_reads_a_fresh_report_at_its_epoch_and_never_guesses() {
    use switchyard_core::dr::composite::{HealthRule, combine, dependencies, instances};
    let mut f = two_groups_on_site_1();
    let part = |f: &Fed, g: &str| instances(&f.state, g, "site-1", f.now).health;
    assert_eq!(part(&f, "crm-web"), Health::Unhealthy, "2 instances, none healthy");
    assert_eq!(part(&f, "ledger"), Health::Healthy);
    f.now += 60_000;
    assert_eq!(part(&f, "ledger"), Health::Unknown, "a stale report is not evidence either way");
    f.report("site-1", 1000, &[("crm-web", 1, 1), ("ledger", 1, 0)]);
    assert_eq!(part(&f, "crm-web"), Health::Healthy, "one healthy instance serves");
    // crm-web depends on ledger: a sick dependency makes it unhealthy under all_of, not under
    // a quorum of three parts where the other two are healthy.
    let mut spec = f.state.groups["crm-web"].spec.clone();
    spec.depends_on = vec!["ledger".into()];
    f.state.groups.get_mut("crm-web").unwrap().spec = spec;
    let deps = dependencies(&f.state, "crm-web", |_| Health::Unhealthy);
    assert_eq!(deps.health, Health::Unhealthy);
    let parts = [
        instances(&f.state, "crm-web", "site-1", f.now),
        switchyard_core::dr::composite::ingress_status(Some(200), ""),
        deps,
    ];
    assert_eq!(combine(HealthRule::AllOf, &parts).0, Health::Unhealthy);
    assert_eq!(combine(HealthRule::Quorum, &parts).0, Health::Healthy);
}

#[test]
fn most_groups_declared_down_at_once_trip_the_brake() {
    let mut f = two_groups_on_site_1();
    let mut third = group("search", 1, 100);
    third.dns_name = "search".into();
    f.ok("system:config", Action::RegisterGroup(third));
    f.report("site-1", 1000, &[("crm-web", 0, 2), ("ledger", 0, 1), ("search", 1, 0)]);
    declare(&mut f, "crm-web", &["cell", "federator"]).unwrap();
    // One of three: not suspicious; its failover goes ahead.
    let one = switchyard_core::dr::round(&f.state, &Default::default(), f.now, &Default::default());
    assert!(one.trip_brake.is_none() && one.moves.len() == 1, "{one:?}");
    declare(&mut f, "ledger", &["cell", "federator"]).unwrap();
    let actions = f.tick(100);
    let Some(Action::TripBrake { reason }) = actions.first() else { panic!("{actions:?}") };
    assert!(reason.contains("2 of 3 groups declared down at once (crm-web, ledger)"), "{reason}");
    assert!(f.state.brake.is_some());
    assert!(f.state.operations.is_empty(), "nothing moved");
}
