//! A group's own disaster-recovery policy: manual groups wait for a human, a group's cooldown,
//! and stateful groups (RPO budget, promotion only once the old primary is fenced or its lease
//! ran out, accepted data loss recorded).

use super::*;
use switchyard_core::dr::detect::{DetectConfig, Evidence, Health};
use switchyard_core::dr::guard::{GuardConfig, Rule, decide as guard_decide};
use switchyard_core::model::{FailoverMode, StatefulPolicy};

/// site-1 runs `db` (one instance of 100) with a replica on site-2 (warm, no traffic) and
/// crm-web; site-2 and site-3 have room.
fn with_db(policy: switchyard_core::model::FailoverPolicy) -> Fed {
    let mut f = Fed::new();
    let mut db = group("db", 1, 100);
    db.dns_name = "db".into();
    db.failover = policy;
    db.warm_standby = [("site-2".to_string(), 1)].into();
    f.ok("system:config", Action::RegisterGroup(db));
    let standby = f.state.groups["db"].placement.share("site-2");
    assert_eq!((standby.weight, standby.total_instances()), (0, 1), "a warm standby from registration");
    f.report("site-1", 1000, &[("crm-web", 2, 0), ("db", 1, 0)]);
    f.report("site-2", 10_000, &[("db", 1, 0)]);
    f.report("site-3", 10_000, &[]);
    f
}

fn stateful(rpo_s: u64, lease_s: u64) -> switchyard_core::model::FailoverPolicy {
    switchyard_core::model::FailoverPolicy {
        stateful: Some(StatefulPolicy { rpo_s, lease_s, app: None, lag_path: "/replication/lag".into() }),
        ..Default::default()
    }
}

/// `site`'s cell reports `lag_ms` for db's replica there (through `apply`, as a cell would).
fn report_lag(f: &mut Fed, site: &str, lag_ms: Option<u64>) {
    let mut report = f.state.reports[site].report.clone();
    report.groups.get_mut("db").expect("db reported there").replication_lag_ms = lag_ms;
    f.ok(&format!("cell:{site}"), Action::CellReport(report));
}

/// Two failure domains have seen `site` refuse connections for the whole window.
fn declare_by_observers(f: &mut Fed, site: &str) {
    let now = f.now;
    let evidence = ["site-2", "site-3"]
        .iter()
        .map(|domain| Evidence {
            observer: format!("fed-{domain}"),
            domain: domain.to_string(),
            health: Health::Unhealthy,
            unhealthy_since_ms: Some(now - 15_000),
            last_at_ms: now,
            detail: "connection refused".into(),
        })
        .collect();
    f.ok("system", Action::DeclareSiteDown { site: site.into(), evidence, detect: DetectConfig::default() });
}

fn held_rules(f: &Fed) -> Vec<(String, Rule)> {
    let down = f.state.down_sites.keys().cloned().collect();
    let history = switchyard_core::dr::history(&f.state);
    guard_decide(&f.state, "site-1", &down, &Default::default(), &history, f.now, &GuardConfig::default(), false)
        .held
        .into_iter()
        .map(|h| (h.group, h.rule))
        .collect()
}

fn failover_of(f: &Fed, group: &str) -> Option<switchyard_core::Operation> {
    f.state
        .operations
        .values()
        .find(|o| o.group == group && o.kind == switchyard_core::OperationKind::Failover)
        .cloned()
}

#[test]
fn a_manual_group_waits_for_a_human_and_goes_when_a_human_declares_its_site() {
    let manual = switchyard_core::model::FailoverPolicy { mode: FailoverMode::Manual, ..Default::default() };
    let mut f = with_db(manual.clone());
    declare_by_observers(&mut f, "site-1");
    assert_eq!(held_rules(&f), [("db".to_string(), Rule::Manual)]);
    f.tick(100);
    assert!(failover_of(&f, "db").is_none(), "automation leaves a manual group alone");
    assert!(failover_of(&f, "crm-web").is_some(), "the site's other groups still go");
    // A human who declares the site down takes its manual groups along.
    let mut f = with_db(manual);
    f.ok(
        "dr-admin:dana",
        Action::DeclareSiteDownManually {
            site: "site-1".into(),
            reason: "site-1 lost power (INC-7)".into(),
            break_glass: false,
            accept_data_loss: false,
        },
    );
    f.tick(100);
    assert_eq!(failover_of(&f, "db").expect("db failed over").to, "site-2");
}

#[test]
fn a_groups_own_cooldown_replaces_the_federation_default() {
    let policy = switchyard_core::model::FailoverPolicy { cooldown_s: Some(30), ..Default::default() };
    let f = with_db(policy);
    let down = ["site-1".to_string()].into();
    let history = switchyard_core::dr::guard::AutomationHistory {
        failovers: vec![(f.now - 40_000, "db".into()), (f.now - 40_000, "crm-web".into())],
        ..Default::default()
    };
    let d =
        guard_decide(&f.state, "site-1", &down, &Default::default(), &history, f.now, &GuardConfig::default(), false);
    assert!(d.moves.iter().any(|m| m.group == "db"), "30 s cooldown is over: {d:?}");
    let held: Vec<(&str, Rule)> = d.held.iter().map(|h| (h.group.as_str(), h.rule)).collect();
    assert_eq!(held, [("crm-web", Rule::Cooldown)], "the default 10 minutes still applies to crm-web");
}

#[test]
fn a_stateful_group_is_promoted_only_after_the_old_primarys_lease_runs_out() {
    let mut f = with_db(stateful(5, 30));
    report_lag(&mut f, "site-2", Some(2_000));
    let last_site_1_report = f.state.reports["site-1"].received_at_ms;
    f.now += 12_000;
    f.report("site-2", 10_000, &[("db", 1, 0)]);
    report_lag(&mut f, "site-2", Some(2_000));
    f.report("site-3", 10_000, &[]);
    declare_by_observers(&mut f, "site-1");
    f.tick(100);
    let op = failover_of(&f, "db").expect("db's failover started");
    assert_eq!(op.to, "site-2");
    let p = op.promotion.clone().expect("a stateful failover waits to promote");
    assert_eq!((p.lag_ms, p.rpo_ms, p.lease_ms, p.data_loss_accepted_by), (Some(2_000), 5_000, 30_000, None));
    // The replica is warm, yet it takes no traffic while the old primary may still write.
    assert_eq!(f.state.groups["db"].placement.active_sites(), vec!["site-1"]);
    f.report("site-2", 10_000, &[("db", 1, 0)]);
    report_lag(&mut f, "site-2", Some(2_000));
    let blocker = operation_blocker(&f.state, &op, f.now, &f.cfg);
    assert!(blocker.contains("promotion waits") && blocker.contains("lease"), "{blocker}");
    // Nobody can promote early: apply checks the lease again, whoever proposes it.
    let early =
        Action::AdvanceOperation { id: op.id.clone(), from: Phase::ScalingUp, to: Phase::Done, detail: "".into() };
    assert!(f.propose("system", early).unwrap_err().to_string().contains("cannot promote yet"));
    while f.now < last_site_1_report + 30_000 {
        f.report("site-2", 10_000, &[("db", 1, 0)]);
        report_lag(&mut f, "site-2", Some(2_000));
        f.tick(5_000);
    }
    f.report("site-2", 10_000, &[("db", 1, 0)]);
    f.tick(100);
    let op = failover_of(&f, "db").unwrap();
    assert_eq!(op.outcome, Outcome::Succeeded, "{op:?}");
    assert_eq!(f.state.groups["db"].placement.active_sites(), vec!["site-2"]);
    let done = f.state.audit.records().iter().rev().find(|r| r.action == "failover.complete" && r.subject == "db");
    assert!(done.unwrap().detail_json.contains("lease ran out"), "{done:?}");
}

#[test]
fn a_replica_beyond_the_rpo_budget_is_held_and_only_a_human_accepting_the_loss_moves_it() {
    let mut f = with_db(stateful(5, 30));
    report_lag(&mut f, "site-2", Some(9_000));
    declare_by_observers(&mut f, "site-1");
    assert_eq!(held_rules(&f), [("db".to_string(), Rule::Rpo)]);
    let down = f.state.down_sites.keys().cloned().collect();
    let d = guard_decide(
        &f.state,
        "site-1",
        &down,
        &Default::default(),
        &Default::default(),
        f.now,
        &GuardConfig::default(),
        false,
    );
    let why = &d.held.iter().find(|h| h.group == "db").unwrap().detail;
    assert!(why.contains("site-2: replica 9000 ms behind, RPO budget 5000 ms"), "{why}");
    assert!(why.contains("site-3: no replica lag reported"), "{why}");
    assert!(why.contains("--accept-data-loss"), "{why}");
    f.tick(100);
    assert!(failover_of(&f, "db").is_none());
    // Whoever proposes it, apply refuses a start beyond the budget.
    let forced = Action::StartFailover { group: "db".into(), from: "site-1".into(), to: "site-2".into() };
    assert!(f.propose("system", forced).unwrap_err().to_string().contains("RPO budget"));
}

#[test]
fn a_human_accepting_data_loss_is_recorded_and_a_live_old_site_fences_by_applying_the_epoch() {
    let mut f = with_db(stateful(5, 600));
    report_lag(&mut f, "site-2", None);
    let fail = |accept: bool| Action::FailoverGroup {
        group: "db".into(),
        reason: "db primary corrupt (INC-9)".into(),
        break_glass: false,
        accept_data_loss: accept,
    };
    let before = f.state.clone();
    let err = f.propose("dr-admin:dana", fail(false)).unwrap_err().to_string();
    assert!(err.contains("refused by rpo") && err.contains("no replica lag reported"), "{err}");
    assert!(same_except_index(&before, &f.state), "a refused failover changes nothing");
    f.ok("dr-admin:dana", fail(true));
    let op = failover_of(&f, "db").unwrap();
    let p = op.promotion.clone().unwrap();
    assert_eq!(p.data_loss_accepted_by.as_deref(), Some("dr-admin:dana"));
    let start = f.state.audit.records().iter().rev().find(|r| r.action == "failover.start").unwrap();
    assert!(start.detail_json.contains("\"data_loss_accepted_by\":\"dr-admin:dana\""), "{}", start.detail_json);
    // site-1 is alive (a group failover, not a dead site): its lease of 10 minutes keeps being
    // renewed, so promotion waits until its cell applies the failover's epoch.
    f.tick(1_000);
    f.report("site-2", 10_000, &[("db", 1, 0)]);
    f.tick(1_000);
    assert_eq!(failover_of(&f, "db").unwrap().outcome, Outcome::Running);
    f.report("site-1", 1000, &[("crm-web", 2, 0), ("db", 1, 0)]);
    assert!(f.state.reports["site-1"].report.groups["db"].applied_epoch >= p.fence_epoch);
    f.tick(1_000);
    let op = failover_of(&f, "db").unwrap();
    assert_eq!(op.outcome, Outcome::Succeeded);
    let done = f.state.audit.records().iter().rev().find(|r| r.action == "failover.complete").unwrap();
    assert!(done.detail_json.contains("site-1 fenced: its cell applied epoch"), "{}", done.detail_json);
    assert_eq!(f.state.groups["db"].placement.active_sites(), vec!["site-2"]);
}

#[test]
fn a_failover_policy_that_cannot_take_effect_is_refused_at_registration() {
    let mut f = Fed::new();
    for (policy, problem) in [
        (
            switchyard_core::model::FailoverPolicy { failback_after_s: Some(0), ..Default::default() },
            "failback_after_s 0",
        ),
        (stateful(5, 0), "lease_s 0"),
        (switchyard_core::model::FailoverPolicy { cooldown_s: Some(10_000_000), ..Default::default() }, "cooldown_s"),
    ] {
        let mut g = group("db", 1, 100);
        g.dns_name = "db".into();
        g.failover = policy;
        let err = f.propose("system:config", Action::RegisterGroup(g)).unwrap_err().to_string();
        assert!(err.contains(problem), "{err}");
    }
    for (standby, problem) in [
        (("site-9", 1), "warm_standby \"site-9\" is not a known site"),
        (("site-1", 1), "is its home_site"),
        (("site-2", 0), "must be 1 to 10000"),
    ] {
        let mut g = group("db", 1, 100);
        g.dns_name = "db".into();
        g.warm_standby = [(standby.0.to_string(), standby.1)].into();
        let err = f.propose("system:config", Action::RegisterGroup(g)).unwrap_err().to_string();
        assert!(err.contains(problem), "{err}");
    }
    assert!(!f.state.groups.contains_key("db"));
    // A standby is set at registration; an update cannot change it behind the operator's back.
    let mut g = group("db", 1, 100);
    g.dns_name = "db".into();
    f.ok("system:config", Action::RegisterGroup(g.clone()));
    g.warm_standby = [("site-2".to_string(), 1)].into();
    let err = update(&mut f, g).unwrap_err().to_string();
    assert!(err.contains("cannot change after registration"), "{err}");
}
