//! Change windows: planned moves start only inside one; rollbacks are never held.

use super::*;
use switchyard_core::window::ChangeWindow;

fn windows(f: &mut Fed, list: &[&str]) -> Result<Applied, Refusal> {
    let windows: Vec<ChangeWindow> = list.iter().map(|w| w.parse().unwrap()).collect();
    f.propose("dr-admin:dana", Action::SetChangeWindows { windows, reason: "CAB calendar".into() })
}

#[test]
fn moves_start_only_inside_a_window_and_the_refusal_says_when_it_is() {
    let mut f = Fed::new();
    f.report("site-1", 1000, &[("crm-web", 2, 0)]);
    // The test clock (1,000,000 ms) is Thursday 00:16 UTC.
    windows(&mut f, &["sat,sun 01:00-05:00"]).unwrap();
    let before = f.state.clone();
    let err = f.start("crm-web", "site-2").unwrap_err();
    assert!(matches!(err, Refusal::OutsideChangeWindow { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("sat,sun 01:00-05:00") && text.contains("it is thu 00:16 UTC"), "{text}");
    assert!(same_except_index(&before, &f.state));
    // The plan says no-go for the same reason.
    let scope = switchyard_core::plan::MoveScope::Groups(vec!["crm-web".into()]);
    let p = switchyard_core::plan::plan_moves(&f.state, &scope, "site-2", f.now, &f.cfg, &Default::default()).unwrap();
    assert!(!p.go && p.reasons[0].contains("change window"), "{:?}", p.reasons);
    // So is an evacuation.
    let evac = Action::StartEvacuation {
        from: Some("site-1".into()),
        groups: vec![],
        to: "site-2".into(),
        reason: "power".into(),
        plan: String::new(),
        concurrency: 1,
        failure_budget: 1,
        rollback_of: String::new(),
    };
    assert!(matches!(f.propose(OPERATOR, evac), Err(Refusal::OutsideChangeWindow { .. })));
    // A window open now lets it start.
    windows(&mut f, &["sat,sun 01:00-05:00", "thu 00:00-01:00"]).unwrap();
    assert!(f.start("crm-web", "site-2").is_ok());
    let records: Vec<&str> = f.state.audit.records().iter().map(|r| r.action.as_str()).collect();
    assert_eq!(records.iter().filter(|a| **a == "policy.change-windows").count(), 2);
}

#[test]
fn a_rollback_is_never_held_by_a_window() {
    let mut f = Fed::new();
    f.report("site-1", 1000, &[("crm-web", 2, 0)]);
    let Applied::OperationStarted { id } = f.start("crm-web", "site-2").unwrap() else { panic!() };
    for _ in 0..20 {
        f.report("site-2", 1000, &[("crm-web", 2, 0)]);
        let on_source = if f.op(&id).phase >= Phase::ScalingDown { 0 } else { 2 };
        f.report("site-1", 1000, &[("crm-web", on_source, 0)]);
        f.tick(1_000);
    }
    assert_eq!(f.op(&id).outcome, Outcome::Succeeded);
    windows(&mut f, &["sat 01:00-02:00"]).unwrap();
    assert!(matches!(f.start("crm-web", "site-1"), Err(Refusal::OutsideChangeWindow { .. })));
    f.report("site-1", 1000, &[]);
    for action in switchyard_core::engine::rollback_actions(f.op(&id), "bad release").unwrap() {
        f.ok(OPERATOR, action);
    }
    let back = f.state.groups["crm-web"].operation.clone().expect("the rollback switchover runs");
    assert_eq!(f.op(&back).to, "site-1");
}

#[test]
fn windows_need_a_reason_and_clearing_them_allows_any_time() {
    let mut f = Fed::new();
    let err = f.propose("dr-admin:dana", Action::SetChangeWindows { windows: vec![], reason: " ".into() }).unwrap_err();
    assert!(err.to_string().contains("reason"), "{err}");
    windows(&mut f, &["sat 01:00-02:00"]).unwrap();
    windows(&mut f, &[]).unwrap();
    f.report("site-1", 1000, &[("crm-web", 2, 0)]);
    assert!(f.start("crm-web", "site-2").is_ok());
}

#[test]
fn a_group_whose_ttl_is_over_the_budget_cannot_start_a_planned_move() {
    let mut f = Fed::new();
    f.report("site-1", 1000, &[("crm-web", 2, 0)]);
    // crm-web's TTL is 5 s.
    f.ok("dr-admin:dana", Action::SetTtlBudget { max_ttl_s: 3, reason: "convergence budget".into() });
    let before = f.state.clone();
    let err = f.start("crm-web", "site-2").unwrap_err();
    assert!(matches!(err, Refusal::TtlOverBudget { ttl_s: 5, budget_s: 3, .. }), "{err}");
    assert!(err.to_string().contains("lower its ttl_s first"), "{err}");
    assert!(same_except_index(&before, &f.state));
    let scope = switchyard_core::plan::MoveScope::Site("site-1".into());
    let p = switchyard_core::plan::plan_moves(&f.state, &scope, "site-2", f.now, &f.cfg, &Default::default()).unwrap();
    assert!(!p.go && p.reasons[0].contains("budget for planned moves"), "{:?}", p.reasons);
    // Lowered in advance, it starts.
    let mut spec = f.state.groups["crm-web"].spec.clone();
    spec.ttl_s = 3;
    update(&mut f, spec).unwrap();
    f.report("site-1", 1000, &[("crm-web", 2, 0)]);
    assert!(f.start("crm-web", "site-2").is_ok());
}
