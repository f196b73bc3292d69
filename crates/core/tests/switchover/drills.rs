//! Drills: scheduled switchovers whose outcome and recovery time are recorded.

use super::*;
use switchyard_core::FreezeScope;

fn schedule(f: &mut Fed, in_ms: u64) -> String {
    let action = Action::ScheduleDrill {
        group: "crm-web".into(),
        to: "site-2".into(),
        at_ms: f.now + in_ms,
        reason: "quarterly DR drill".into(),
    };
    match f.ok(OPERATOR, action) {
        Applied::OperationStarted { id } => id,
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_drill_starts_at_its_time_and_records_outcome_and_recovery_time() {
    let mut f = Fed::new();
    f.report("site-1", 1000, &[("crm-web", 2, 0)]);
    let id = schedule(&mut f, 60_000);
    assert_eq!(f.state.drills[&id].status(&f.state).status, "scheduled");
    assert!(f.tick(59_000).is_empty(), "not yet");
    f.report("site-1", 1000, &[("crm-web", 2, 0)]);
    f.report("site-2", 1000, &[]);
    let started = f.tick(1_000);
    assert_eq!(started, vec![Action::StartDrill { id: id.clone() }]);
    let op = f.state.drills[&id].operation.clone().expect("its switchover started");
    assert!(f.op(&op).reason.starts_with(&format!("drill {id}: quarterly DR drill")));
    assert!(f.propose("system", Action::StartDrill { id: id.clone() }).is_err(), "it starts once");
    for _ in 0..30 {
        f.report("site-2", 1000, &[("crm-web", 2, 0)]);
        let on_source = if f.op(&op).phase >= Phase::ScalingDown { 0 } else { 2 };
        f.report("site-1", 1000, &[("crm-web", on_source, 0)]);
        f.tick(1_000);
    }
    let st = f.state.drills[&id].status(&f.state);
    assert_eq!(st.status, "succeeded");
    let rto = st.rto_ms.expect("measured");
    let o = f.op(&op);
    let at_full = o.steps.iter().find(|s| s.phase == Phase::Draining).unwrap().started_at_ms;
    assert_eq!(rto, at_full - o.created_at_ms);
    assert!(rto >= f.cfg.verify_window_ms, "at least the verify window: {rto}");
    let actions: Vec<&str> = f.state.audit.records().iter().map(|r| r.action.as_str()).collect();
    assert!(actions.contains(&"drill.schedule") && actions.contains(&"drill.start"));
}

#[test]
fn a_drill_refused_at_its_time_is_recorded_and_a_pending_one_can_be_cancelled() {
    let mut f = Fed::new();
    f.report("site-1", 1000, &[("crm-web", 2, 0)]);
    let id = schedule(&mut f, 0);
    f.ok(
        "dr-admin:dana",
        Action::SetFreeze { scope: FreezeScope::Group("crm-web".into()), reason: "audit week".into(), until_ms: None },
    );
    f.tick(100);
    let st = f.state.drills[&id].status(&f.state);
    assert_eq!(st.status, "not-started");
    assert!(st.detail.contains("audit week"), "{}", st.detail);
    assert!(f.state.groups["crm-web"].operation.is_none());
    // Cancel a later one; a cancelled drill never starts.
    let later = schedule(&mut f, 3_600_000);
    let cancel = |f: &mut Fed, id: &str| {
        f.propose(OPERATOR, Action::CancelDrill { id: id.into(), reason: "change freeze".into() })
    };
    cancel(&mut f, &later).unwrap();
    assert!(f.tick(7_200_000).is_empty());
    assert!(f.state.drills[&later].status(&f.state).detail.starts_with("cancelled by operator:alice"));
    assert!(cancel(&mut f, &later).is_err(), "only a pending drill can be cancelled");
    // Bad requests change nothing.
    let bad = Action::ScheduleDrill { group: "nope".into(), to: "site-2".into(), at_ms: 0, reason: "x".into() };
    assert!(matches!(f.propose(OPERATOR, bad), Err(Refusal::UnknownGroup(_))));
}
