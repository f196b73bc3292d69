//! Two-person approval: moves of groups in listed tiers wait, with capacity reserved, until
//! someone other than their initiator approves.

use super::*;
use switchyard_core::Control;

const SECOND: &str = "operator:bob";

fn policy(f: &mut Fed, tiers: &[u32]) {
    f.ok("dr-admin:dana", Action::SetApprovalPolicy { tiers: tiers.to_vec(), reason: "CAB rule 7".into() });
}

fn approve(f: &mut Fed, actor: &str, id: &str) -> Result<Applied, Refusal> {
    f.propose(actor, Action::ApproveOperation { id: id.into(), reason: "reviewed plan".into() })
}

#[test]
fn a_listed_tier_waits_for_a_second_person_and_the_initiator_cannot_approve() {
    let mut f = Fed::new();
    policy(&mut f, &[1]);
    f.report("site-1", 1000, &[("crm-web", 2, 0)]);
    let placement = f.state.groups["crm-web"].placement.clone();
    let Applied::OperationStarted { id } = f.start("crm-web", "site-2").unwrap() else { panic!() };
    let op = f.op(&id);
    assert_eq!(op.phase, Phase::AwaitingApproval);
    assert_eq!(op.reserved.cpu_millis, 200, "capacity is reserved while waiting");
    assert_eq!(f.state.groups["crm-web"].placement, placement, "nothing changes before approval");
    assert!(f.tick(600_000).is_empty(), "the engine never moves it on by itself");
    assert!(operation_blocker(&f.state, f.op(&id), f.now, &f.cfg).contains("approval by someone other than"));
    // The initiator's own approval is refused and changes nothing.
    let before = f.state.clone();
    let err = approve(&mut f, OPERATOR, &id).unwrap_err().to_string();
    assert!(err.contains("cannot also approve it; a second person must"), "{err}");
    assert!(same_except_index(&before, &f.state));
    approve(&mut f, SECOND, &id).unwrap();
    let op = f.op(&id);
    assert_eq!((op.phase, op.approved_by.as_deref()), (Phase::ScalingUp, Some(SECOND)));
    assert_eq!(f.state.groups["crm-web"].placement.share("site-2").total_instances(), 2);
    assert!(approve(&mut f, "operator:carol", &id).is_err(), "approved once");
    let records: Vec<&str> = f.state.audit.records().iter().map(|r| r.action.as_str()).collect();
    assert!(records.contains(&"policy.approval") && records.contains(&"operation.approved"));
    // And it runs to the end as any switchover.
    for _ in 0..40 {
        f.report("site-2", 1000, &[("crm-web", 2, 0)]);
        let on_source = if f.op(&id).phase == Phase::ScalingDown { 0 } else { 2 };
        f.report("site-1", 1000, &[("crm-web", on_source, 0)]);
        f.tick(1_000);
    }
    assert_eq!(f.op(&id).outcome, Outcome::Succeeded);
}

#[test]
fn other_tiers_start_at_once_and_a_waiting_move_can_be_aborted() {
    let mut f = Fed::new();
    policy(&mut f, &[0]);
    f.report("site-1", 1000, &[("crm-web", 2, 0)]);
    let Applied::OperationStarted { id } = f.start("crm-web", "site-2").unwrap() else { panic!() };
    assert_eq!(f.op(&id).phase, Phase::ScalingUp, "tier 1 is not listed");
    f.ok(OPERATOR, Action::ControlOperation { id: id.clone(), control: Control::Abort, reason: "x".into() });
    policy(&mut f, &[1]);
    let Applied::OperationStarted { id } = f.start("crm-web", "site-2").unwrap() else { panic!() };
    f.ok(OPERATOR, Action::ControlOperation { id: id.clone(), control: Control::Abort, reason: "CAB said no".into() });
    assert!(f.state.groups["crm-web"].operation.is_none());
    assert_eq!(switchyard_core::engine::reserved_on(&f.state, "site-2", ""), Resources::default());
    assert!(approve(&mut f, SECOND, &id).unwrap_err().to_string().contains("not waiting for approval"));
}

#[test]
fn an_evacuation_with_a_listed_tier_starts_nothing_until_approved() {
    let mut f = Fed::new();
    policy(&mut f, &[1]);
    f.report("site-1", 10_000, &[("crm-web", 2, 0)]);
    f.report("site-2", 10_000, &[]);
    let Applied::OperationStarted { id } = f.ok(
        OPERATOR,
        Action::StartEvacuation {
            from: Some("site-1".into()),
            groups: vec![],
            to: "site-2".into(),
            reason: "power work".into(),
            plan: String::new(),
            concurrency: 2,
            failure_budget: 1,
            rollback_of: String::new(),
        },
    ) else {
        panic!()
    };
    assert!(f.tick(10_000).is_empty());
    assert!(approve(&mut f, OPERATOR, &id).is_err());
    approve(&mut f, SECOND, &id).unwrap();
    f.report("site-2", 10_000, &[]);
    let started = f.tick(100);
    assert_eq!(started.len(), 1, "{started:?}");
    let op = f.state.evacuations[&id].groups[0].operation.clone().unwrap();
    assert_eq!(f.op(&op).phase, Phase::ScalingUp, "an evacuation's switchovers were approved with it");
}

#[test]
fn a_drill_is_its_schedulers_move_and_a_paused_one_cannot_be_approved() {
    let mut f = Fed::new();
    policy(&mut f, &[1]);
    f.report("site-1", 1000, &[("crm-web", 2, 0)]);
    let Applied::OperationStarted { id: drill } = f.ok(
        OPERATOR,
        Action::ScheduleDrill { group: "crm-web".into(), to: "site-2".into(), at_ms: 0, reason: "drill".into() },
    ) else {
        panic!()
    };
    f.tick(100);
    let op = f.state.drills[&drill].operation.clone().expect("started");
    assert_eq!(f.op(&op).actor, OPERATOR, "the scheduler's move, not the system's");
    assert!(approve(&mut f, OPERATOR, &op).unwrap_err().to_string().contains("cannot also approve"));
    f.ok(SECOND, Action::ControlOperation { id: op.clone(), control: Control::Pause, reason: "hold".into() });
    assert!(approve(&mut f, SECOND, &op).unwrap_err().to_string().contains("resume it before approving"));
}

#[test]
fn a_rollback_needs_no_second_approval_but_must_name_a_move_of_its_group() {
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
    policy(&mut f, &[1]);
    f.report("site-1", 1000, &[]);
    let forged = Action::StartSwitchover {
        group: "crm-web".into(),
        to: "site-1".into(),
        reason: "x".into(),
        plan: String::new(),
        rollback_of: "op-1".into(),
    };
    assert!(f.propose(OPERATOR, forged).unwrap_err().to_string().contains("not an operation that moved group"));
    for action in switchyard_core::engine::rollback_actions(f.op(&id), "bad release").unwrap() {
        f.ok(OPERATOR, action);
    }
    let back = f.state.groups["crm-web"].operation.clone().unwrap();
    assert_eq!(f.op(&back).phase, Phase::ScalingUp, "not held for approval");
}
