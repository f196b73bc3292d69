//! The health-gated traffic ramp: steps held a TTL, a breach reverts the last step and halts.

use super::*;
use switchyard_core::Control;
use switchyard_core::model::TrafficRamp;
use switchyard_core::plan::{MoveScope, PlanEstimates, plan_moves};

/// crm-web (two instances on site-1) with a ramp of `steps`, a switchover to site-2 started
/// and verified: the first traffic step is due.
fn verified(steps: &[u32], max_unhealthy_percent: u32) -> (Fed, String) {
    let mut f = Fed::new();
    let mut spec = f.state.groups["crm-web"].spec.clone();
    spec.ramp = TrafficRamp { steps: steps.to_vec(), max_unhealthy_percent };
    update(&mut f, spec).unwrap();
    f.report("site-1", 1000, &[("crm-web", 2, 0)]);
    let Applied::OperationStarted { id } = f.start("crm-web", "site-2").unwrap() else { panic!() };
    f.report("site-2", 1000, &[("crm-web", 2, 0)]);
    f.tick(100);
    assert_eq!(f.op(&id).phase, Phase::Verifying);
    (f, id)
}

fn weights(f: &Fed) -> (u32, u32) {
    let p = &f.state.groups["crm-web"].placement;
    (p.share("site-1").weight, p.share("site-2").weight)
}

/// Advances time in 500 ms ticks with site-2 reporting `healthy` of 2 instances healthy,
/// until the operation's ramp step or phase changes (or `limit_ms` passes).
fn run(f: &mut Fed, id: &str, healthy: u32, limit_ms: u64) -> u64 {
    let (step, phase) = (f.op(id).ramp_step, f.op(id).phase);
    let mut waited = 0;
    while waited < limit_ms {
        f.report("site-2", 1000, &[("crm-web", healthy, 2 - healthy)]);
        f.tick(500);
        waited += 500;
        if (f.op(id).ramp_step, f.op(id).phase) != (step, phase) {
            break;
        }
    }
    waited
}

#[test]
fn traffic_moves_in_the_groups_steps_each_held_a_ttl() {
    let (mut f, id) = verified(&[10, 50, 100], 0);
    run(&mut f, &id, 2, 10_000);
    assert_eq!((f.op(&id).phase, f.op(&id).ramp_step), (Phase::Shifting, 1));
    assert_eq!(weights(&f), (90, 10));
    assert_eq!(f.state.routing_version, f.index, "each step is a new routing version");
    // Held one TTL (5 s) before the next step.
    let waited = run(&mut f, &id, 2, 20_000);
    assert_eq!(weights(&f), (50, 50));
    assert!((5_000..6_000).contains(&waited), "held {waited} ms");
    run(&mut f, &id, 2, 20_000);
    assert_eq!((f.op(&id).phase, weights(&f)), (Phase::Draining, (0, 100)));
    // At 100 % for a TTL plus the drain time before the source scales down.
    let waited = run(&mut f, &id, 2, 20_000);
    assert_eq!(f.op(&id).phase, Phase::ScalingDown);
    assert!((6_000..7_000).contains(&waited), "held {waited} ms");
    let phases: Vec<&str> = f.op(&id).steps.iter().map(|s| s.phase.as_str()).collect();
    assert_eq!(phases, ["ScalingUp", "Verifying", "Shifting", "Shifting", "Draining", "ScalingDown"]);
    let records: Vec<&str> = f.state.audit.records().iter().map(|r| r.action.as_str()).collect();
    assert_eq!(records.iter().filter(|a| **a == "switchover.traffic").count(), 3);
}

#[test]
fn the_plan_lists_the_same_phases_the_ramp_records() {
    let mut f = Fed::new();
    let mut spec = f.state.groups["crm-web"].spec.clone();
    spec.ramp = TrafficRamp { steps: vec![10, 50, 100], max_unhealthy_percent: 0 };
    update(&mut f, spec).unwrap();
    f.report("site-1", 1000, &[("crm-web", 2, 0)]);
    let scope = MoveScope::Groups(vec!["crm-web".into()]);
    let p = plan_moves(&f.state, &scope, "site-2", f.now, &f.cfg, &PlanEstimates::default()).unwrap();
    let planned: Vec<&str> = p.groups[0].steps.iter().map(|s| s.phase.as_str()).collect();
    assert_eq!(planned, ["ScalingUp", "Verifying", "Shifting", "Shifting", "Draining", "ScalingDown"]);
    assert!(p.groups[0].steps[2].detail.contains("site-1 90 / site-2 10"), "{:?}", p.groups[0].steps[2]);
    assert!(p.groups[0].steps[3].detail.contains("site-1 50 / site-2 50"), "{:?}", p.groups[0].steps[3]);
    let estimate = switchyard_core::plan::move_estimate_ms(&f.state, "crm-web", &f.cfg, &PlanEstimates::default());
    assert_eq!(p.groups[0].predicted_ms, estimate, "status views estimate a move as the plan does");
}

#[test]
fn a_health_breach_mid_ramp_reverts_the_last_step_and_halts_until_resumed() {
    let (mut f, id) = verified(&[10, 50, 100], 0);
    run(&mut f, &id, 2, 10_000);
    run(&mut f, &id, 2, 20_000);
    assert_eq!(weights(&f), (50, 50));
    // One of the two target instances fails: the 50 % step is reverted at once.
    let waited = run(&mut f, &id, 1, 20_000);
    assert!(waited <= 500, "reverted on the first look, after {waited} ms");
    let op = f.op(&id);
    assert_eq!((op.phase, op.ramp_step, weights(&f)), (Phase::Shifting, 1, (90, 10)));
    let pause = op.paused.as_ref().expect("halted");
    assert_eq!(pause.actor, "system");
    assert!(pause.reason.contains("web: 1/2 healthy on site-2"), "{}", pause.reason);
    assert!(operation_blocker(&f.state, op, f.now, &f.cfg).contains("ramp reverted to 10%"));
    let last = f.state.audit.records().last().unwrap();
    assert_eq!(last.action, "switchover.ramp-reverted");
    // Halted: nothing moves, healthy or not, until an operator decides.
    for healthy in [1, 2, 2, 2] {
        f.report("site-2", 1000, &[("crm-web", healthy, 2 - healthy)]);
        assert!(f.tick(5_000).is_empty());
    }
    f.ok(OPERATOR, Action::ControlOperation { id: id.clone(), control: Control::Resume, reason: "fixed".into() });
    run(&mut f, &id, 2, 20_000);
    assert_eq!(weights(&f), (50, 50), "resumed, the ramp goes on");
}

#[test]
fn a_breach_at_the_first_step_puts_all_traffic_back_and_abort_then_restores_the_target() {
    let (mut f, id) = verified(&[100], 0);
    run(&mut f, &id, 2, 10_000);
    assert_eq!((f.op(&id).phase, weights(&f)), (Phase::Draining, (0, 100)));
    run(&mut f, &id, 0, 10_000);
    let op = f.op(&id);
    assert_eq!((op.phase, op.ramp_step, weights(&f)), (Phase::Verifying, 0, (100, 0)));
    assert!(op.traffic_shifted_at_ms.is_none(), "traffic is all back on the source");
    f.ok(OPERATOR, Action::ControlOperation { id: id.clone(), control: Control::Abort, reason: "target bad".into() });
    let g = &f.state.groups["crm-web"];
    assert_eq!(g.placement.active_sites(), vec!["site-1"]);
    assert!(!g.placement.sites.contains_key("site-2"), "the target is put back as it was");
}

#[test]
fn a_health_budget_tolerates_some_unhealthy_instances_and_an_unknown_target_holds() {
    let (mut f, id) = verified(&[50, 100], 50);
    run(&mut f, &id, 2, 10_000);
    assert_eq!(weights(&f), (50, 50));
    // One of two unhealthy is within a 50 % budget.
    run(&mut f, &id, 1, 20_000);
    assert_eq!(weights(&f), (0, 100));
    assert!(f.op(&id).paused.is_none());
    // The target's cell goes quiet: neither advance nor revert.
    assert!(f.tick(30_000).is_empty());
    assert_eq!(f.op(&id).phase, Phase::Draining);
    assert!(operation_blocker(&f.state, f.op(&id), f.now, &f.cfg).contains("health unknown"));
}

#[test]
fn a_ramp_that_does_not_end_at_100_or_goes_backwards_is_refused() {
    let mut f = Fed::new();
    for (steps, unhealthy) in [(vec![50], 0), (vec![50, 20, 100], 0), (vec![], 0), (vec![0, 100], 0), (vec![100], 80)] {
        let mut spec = f.state.groups["crm-web"].spec.clone();
        spec.ramp = TrafficRamp { steps: steps.clone(), max_unhealthy_percent: unhealthy };
        let err = update(&mut f, spec).unwrap_err().to_string();
        assert!(err.contains("ramp"), "{steps:?}: {err}");
    }
}

#[test]
fn abort_mid_ramp_puts_all_traffic_back_on_the_source() {
    // Found by the simulation (seed 6): an abort in Shifting left traffic split on two sites.
    let (mut f, id) = verified(&[10, 50, 100], 0);
    run(&mut f, &id, 2, 10_000);
    assert_eq!(weights(&f), (90, 10));
    f.ok(OPERATOR, Action::ControlOperation { id: id.clone(), control: Control::Abort, reason: "stop".into() });
    let g = &f.state.groups["crm-web"];
    assert_eq!(g.placement.active_sites(), vec!["site-1"]);
    assert_eq!(g.placement.share("site-1").weight, 100);
    assert!(!g.placement.sites.contains_key("site-2"));
    assert!(switchyard_core::engine::rollback_actions(f.op(&id), "undo").is_err(), "nothing left to roll back");
}

#[test]
fn abort_mid_ramp_back_to_a_site_that_keeps_a_share_publishes_the_new_weights() {
    // The target keeps an (empty) share from an earlier move, so nothing but the weights
    // changes on abort: the routing version must still move, or DNS keeps the split.
    let (mut f, id) = verified(&[10, 50, 100], 0);
    f.state.groups.get_mut("crm-web").unwrap().placement.sites.insert("site-3".into(), Default::default());
    run(&mut f, &id, 2, 10_000);
    let before = f.state.routing_version;
    f.ok(OPERATOR, Action::ControlOperation { id: id.clone(), control: Control::Abort, reason: "stop".into() });
    assert_eq!(weights(&f), (100, 0));
    assert!(f.state.routing_version > before, "the weights changed: a new routing version");
}

#[test]
fn rollback_mid_ramp_is_the_abort_alone() {
    let (mut f, id) = verified(&[10, 50, 100], 0);
    run(&mut f, &id, 2, 10_000);
    let actions = switchyard_core::engine::rollback_actions(f.op(&id), "undo").unwrap();
    assert_eq!(actions.len(), 1, "the abort puts traffic back; nothing to move back: {actions:?}");
    for a in actions {
        f.ok(OPERATOR, a);
    }
    assert_eq!(weights(&f), (100, 0));
}

#[test]
fn a_revert_from_full_traffic_keeps_the_capacity_reserved() {
    let (mut f, id) = verified(&[100], 0);
    run(&mut f, &id, 2, 10_000);
    assert_eq!(f.op(&id).phase, Phase::Draining);
    assert_eq!(f.op(&id).reserved.cpu_millis, 200, "held until the source scales down");
    run(&mut f, &id, 0, 10_000);
    assert_eq!((f.op(&id).phase, f.op(&id).reserved.cpu_millis), (Phase::Verifying, 200));
}
