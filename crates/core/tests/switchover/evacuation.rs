//! Evacuations: many groups moved as one operation, driven through `apply` and `decide` with
//! cells that do what they are told.

use super::*;
use switchyard_core::evacuation::GroupStatus;
use switchyard_core::{Control, FreezeScope};

/// Registers one-instance groups of 100 millicores on site-1: `(name, tier, depends_on)`.
fn groups(f: &mut Fed, spec: &[(&str, u32, &[&str])]) {
    for (name, tier, deps) in spec {
        let mut g = group(name, 1, 100);
        g.dns_name = name.to_string();
        g.tier = *tier;
        g.depends_on = deps.iter().map(|d| d.to_string()).collect();
        f.ok("system:config", Action::RegisterGroup(g));
    }
}

/// Every cell reports exactly what the placement asks of it, every instance healthy, on one
/// node of `cpu[site]` millicores (the simulated executor).
fn cells_follow(f: &mut Fed, cpu: &[(&str, u64)]) {
    for (site, capacity) in cpu {
        let on: Vec<(String, u32)> = f
            .state
            .groups
            .values()
            .filter_map(|g| g.placement.sites.get(*site).map(|s| (g.spec.name.clone(), s.total_instances())))
            .filter(|(_, n)| *n > 0)
            .collect();
        let refs: Vec<(&str, u32, u32)> = on.iter().map(|(g, n)| (g.as_str(), *n, 0)).collect();
        f.report(site, *capacity, &refs);
    }
}

fn evacuate(f: &mut Fed, from: &str, to: &str, concurrency: u32, budget: u32) -> Result<String, Refusal> {
    f.propose(
        OPERATOR,
        Action::StartEvacuation {
            from: Some(from.into()),
            groups: vec![],
            to: to.into(),
            reason: "CHG-7 power work".into(),
            plan: String::new(),
            concurrency,
            failure_budget: budget,
            rollback_of: String::new(),
        },
    )
    .map(|a| match a {
        Applied::OperationStarted { id } => id,
        other => panic!("{other:?}"),
    })
}

fn statuses(f: &Fed, id: &str) -> Vec<(String, &'static str)> {
    let e = &f.state.evacuations[id];
    e.groups.iter().map(|g| (g.group.clone(), e.status(&f.state, g).as_str())).collect()
}

const CPU: [(&str, u64); 3] = [("site-1", 10_000), ("site-2", 10_000), ("site-3", 10_000)];

#[test]
fn a_site_evacuation_moves_every_group_dependencies_first_within_the_concurrency_limit() {
    let mut f = Fed::new();
    groups(&mut f, &[("web", 0, &["api"]), ("api", 1, &["db"]), ("db", 2, &[]), ("batch", 1, &[]), ("mail", 3, &[])]);
    cells_follow(&mut f, &CPU);
    let id = evacuate(&mut f, "site-1", "site-2", 2, 1).unwrap();
    assert!(id.starts_with("evac-"));
    let order: Vec<String> = f.state.evacuations[&id].groups.iter().map(|g| g.group.clone()).collect();
    assert_eq!(order, ["batch", "crm-web", "db", "api", "web", "mail"]);
    // Every group is locked to the evacuation before any starts.
    assert!(f.state.groups.values().all(|g| g.operation.as_deref() == Some(id.as_str())));
    let mut started = Vec::new();
    for _ in 0..400 {
        f.tick(500);
        cells_follow(&mut f, &CPU);
        let running = f.state.evacuations[&id]
            .groups
            .iter()
            .filter(|g| matches!(f.state.evacuations[&id].status(&f.state, g), GroupStatus::Running(_)))
            .count();
        assert!(running <= 2, "at most two groups move at a time: {:?}", statuses(&f, &id));
        for g in &f.state.evacuations[&id].groups {
            if g.operation.is_some() && !started.contains(&g.group) {
                started.push(g.group.clone());
            }
        }
        // A group starts only once every group it depends on has finished moving.
        for g in &f.state.evacuations[&id].groups {
            if g.operation.is_some() {
                for dep in &g.after {
                    let d = f.state.evacuations[&id].groups.iter().find(|x| &x.group == dep).unwrap();
                    assert_eq!(f.state.evacuations[&id].status(&f.state, d), GroupStatus::Succeeded, "{}", g.group);
                }
            }
        }
        if !f.state.evacuations[&id].is_running() {
            break;
        }
    }
    let e = &f.state.evacuations[&id];
    assert_eq!(e.outcome, Outcome::Succeeded, "{:?}", statuses(&f, &id));
    assert!(started.iter().position(|g| g == "db") < started.iter().position(|g| g == "api"));
    assert!(started.iter().position(|g| g == "api") < started.iter().position(|g| g == "web"));
    for g in f.state.groups.values() {
        assert_eq!(g.placement.active_sites(), vec!["site-2"], "{}", g.spec.name);
        assert!(g.operation.is_none());
    }
    // The evacuation's whole life is in the audit chain.
    let actions: Vec<&str> = f.state.audit.records().iter().map(|r| r.action.as_str()).collect();
    assert_eq!(actions.iter().filter(|a| **a == "evacuation.group-started").count(), 6);
    assert!(actions.contains(&"evacuation.start") && actions.last() == Some(&"evacuation.complete"));
    verify_chain(f.state.audit.records()).unwrap();
}

#[test]
fn an_evacuation_that_cannot_move_every_group_is_refused_whole_and_changes_nothing() {
    let mut f = Fed::new();
    groups(&mut f, &[("a", 1, &[]), ("b", 1, &[]), ("c", 1, &[])]);
    // site-2 has room for four instances of 100: a, b, c (in order), then not crm-web's two.
    cells_follow(&mut f, &[("site-1", 10_000), ("site-2", 400), ("site-3", 10_000)]);
    let before = f.state.clone();
    let err = evacuate(&mut f, "site-1", "site-2", 4, 1).unwrap_err().to_string();
    assert!(err.contains("group crm-web cannot move to site-2") && err.contains("lacks capacity"), "{err}");
    assert!(same_except_index(&before, &f.state), "a refused evacuation changes nothing");
    // A frozen group: refused with the freeze's reason.
    f.ok(
        "dr-admin:dana",
        Action::SetFreeze { scope: FreezeScope::Group("b".into()), reason: "audit week".into(), until_ms: None },
    );
    let err = evacuate(&mut f, "site-1", "site-3", 4, 1).unwrap_err().to_string();
    assert!(err.contains("group b") && err.contains("audit week"), "{err}");
    // Bad numbers and an empty site.
    assert!(evacuate(&mut f, "site-1", "site-3", 0, 1).unwrap_err().to_string().contains("at least 1"));
    assert!(evacuate(&mut f, "site-2", "site-3", 1, 1).unwrap_err().to_string().contains("nothing to evacuate"));
}

#[test]
fn two_evacuations_into_one_site_never_over_commit_it() {
    // 15 groups to move: 10 from site-1, 5 from site-3, into site-2 with room for exactly 15.
    let mut f = Fed::new();
    let ten: Vec<String> = (0..8).map(|i| format!("a{i}")).collect();
    let spec: Vec<(&str, u32, &[&str])> = ten.iter().map(|n| (n.as_str(), 1, &[][..])).collect();
    groups(&mut f, &spec);
    // crm-web (2 instances) + a0..a7: 10 instances on site-1.
    let five: Vec<String> = (0..5).map(|i| format!("b{i}")).collect();
    for name in &five {
        let mut g = group(name, 1, 100);
        g.dns_name = name.clone();
        g.home_site = "site-3".into();
        f.ok("system:config", Action::RegisterGroup(g));
    }
    let cpu = [("site-1", 10_000), ("site-2", 1_500), ("site-3", 10_000)];
    cells_follow(&mut f, &cpu);
    let first = evacuate(&mut f, "site-1", "site-2", 3, 1).unwrap();
    // Only 5 slots are left: one more group than that is refused whole.
    let mut extra = group("b5", 1, 100);
    extra.dns_name = "b5".into();
    extra.home_site = "site-3".into();
    f.ok("system:config", Action::RegisterGroup(extra));
    cells_follow(&mut f, &cpu);
    let err = evacuate(&mut f, "site-3", "site-2", 3, 1).unwrap_err().to_string();
    assert!(err.contains("lacks capacity") || err.contains("no node with room"), "{err}");
    // A single switchover cannot take the reserved room either.
    assert!(f.start("b5", "site-2").is_ok(), "five slots are free for one group");
    let err = f
        .propose(
            OPERATOR,
            Action::StartEvacuation {
                from: None,
                groups: five.clone(),
                to: "site-2".into(),
                reason: "second".into(),
                plan: String::new(),
                concurrency: 5,
                failure_budget: 1,
                rollback_of: String::new(),
            },
        )
        .unwrap_err();
    assert!(err.to_string().contains("cannot move to site-2"), "{err}");
    // Without the extra group, the five fit exactly and both evacuations run to the end.
    let ops: Vec<String> = f.state.operations.keys().cloned().collect();
    f.ok(
        OPERATOR,
        Action::ControlOperation { id: ops[0].clone(), control: Control::Abort, reason: "make room".into() },
    );
    cells_follow(&mut f, &cpu);
    let second = f.ok(
        OPERATOR,
        Action::StartEvacuation {
            from: None,
            groups: five.clone(),
            to: "site-2".into(),
            reason: "second".into(),
            plan: String::new(),
            concurrency: 5,
            failure_budget: 1,
            rollback_of: String::new(),
        },
    );
    let Applied::OperationStarted { id: second } = second else { panic!() };
    for _ in 0..400 {
        f.tick(500);
        cells_follow(&mut f, &cpu);
        let on_target: u32 =
            f.state.groups.values().filter_map(|g| g.placement.sites.get("site-2")).map(|s| s.total_instances()).sum();
        assert!(on_target <= 15, "site-2 asked to run {on_target} instances with room for 15");
        if !f.state.evacuations[&first].is_running() && !f.state.evacuations[&second].is_running() {
            break;
        }
    }
    assert_eq!(f.state.evacuations[&first].outcome, Outcome::Succeeded, "{:?}", statuses(&f, &first));
    assert_eq!(f.state.evacuations[&second].outcome, Outcome::Succeeded, "{:?}", statuses(&f, &second));
}

#[test]
fn no_new_group_starts_once_the_failure_budget_is_spent() {
    let mut f = Fed::new();
    groups(&mut f, &[("a", 1, &[]), ("b", 1, &[]), ("c", 1, &[]), ("d", 1, &["crm-web"])]);
    cells_follow(&mut f, &CPU);
    let id = evacuate(&mut f, "site-1", "site-2", 1, 1).unwrap();
    // crm-web goes first (by name among tier 1: a, b, c, crm-web; d needs crm-web). Make the
    // target never run a healthy instance of `a` so its switchover times out and rolls back.
    for _ in 0..1_000 {
        f.tick(1_000);
        cells_follow(&mut f, &CPU);
        if let Some(r) = f.state.reports.get("site-2").cloned() {
            let mut r = r.report;
            if let Some(a) = r.groups.get_mut("a") {
                a.apps.values_mut().for_each(|app| app.instances.iter_mut().for_each(|i| i.healthy = false));
                f.ok("cell:site-2", Action::CellReport(r));
            }
        }
        if !f.state.evacuations[&id].is_running() {
            break;
        }
    }
    let e = &f.state.evacuations[&id];
    assert_eq!(e.outcome, Outcome::Failed);
    let st = statuses(&f, &id);
    assert_eq!(st[0], ("a".to_string(), "failed"));
    assert!(st[1..].iter().all(|(_, s)| *s == "skipped"), "{st:?}");
    assert!(e.error.as_deref().unwrap().contains("failure budget spent"), "{:?}", e.error);
    // Everything stays serving on site-1, unlocked, with nothing reserved on site-2.
    for g in f.state.groups.values() {
        assert_eq!(g.placement.active_sites(), vec!["site-1"], "{}", g.spec.name);
        assert!(g.operation.is_none());
    }
    assert_eq!(switchyard_core::engine::reserved_on(&f.state, "site-2", ""), Resources::default());
}

#[test]
fn pausing_an_evacuation_pauses_its_moves_and_abort_leaves_every_group_serving() {
    let mut f = Fed::new();
    groups(&mut f, &[("a", 1, &[]), ("b", 1, &[]), ("c", 1, &[])]);
    cells_follow(&mut f, &CPU);
    let id = evacuate(&mut f, "site-1", "site-2", 2, 1).unwrap();
    f.tick(100);
    let control = |f: &mut Fed, c: Control| {
        f.propose(OPERATOR, Action::ControlOperation { id: id.clone(), control: c, reason: "hold for SRE".into() })
    };
    control(&mut f, Control::Pause).unwrap();
    let running: Vec<String> = f.state.evacuations[&id].groups.iter().filter_map(|g| g.operation.clone()).collect();
    assert_eq!(running.len(), 2);
    assert!(running.iter().all(|op| f.op(op).paused.is_some()), "its switchovers pause too");
    for _ in 0..20 {
        assert!(f.tick(1_000).is_empty(), "nothing moves while paused");
        cells_follow(&mut f, &CPU);
    }
    assert!(matches!(control(&mut f, Control::Pause), Err(Refusal::Invalid(_))), "already paused");
    control(&mut f, Control::Resume).unwrap();
    assert!(running.iter().all(|op| f.op(op).paused.is_none()));
    // Run until the first group has moved traffic, then abort.
    for _ in 0..100 {
        f.tick(500);
        cells_follow(&mut f, &CPU);
        if f.state.operations.values().any(|o| o.traffic_shifted_at_ms.is_some()) {
            break;
        }
    }
    control(&mut f, Control::Abort).unwrap();
    let e = &f.state.evacuations[&id];
    assert_eq!(e.outcome, Outcome::Aborted);
    assert!(f.state.operations.values().all(|o| !o.holds_group()));
    for g in f.state.groups.values() {
        assert_eq!(g.placement.active_sites().len(), 1, "{} serves from one site", g.spec.name);
        assert!(g.operation.is_none(), "{} is released", g.spec.name);
    }
    assert!(f.tick(1_000).is_empty(), "an aborted evacuation takes no further step");
    assert!(matches!(control(&mut f, Control::Resume), Err(Refusal::Invalid(_))));
}

#[test]
fn a_group_waiting_in_an_evacuation_cannot_be_moved_or_scaled_on_its_own() {
    let mut f = Fed::new();
    groups(&mut f, &[("a", 1, &[]), ("b", 1, &[])]);
    cells_follow(&mut f, &CPU);
    let id = evacuate(&mut f, "site-1", "site-2", 1, 1).unwrap();
    let err = f.start("b", "site-3").unwrap_err();
    assert!(matches!(&err, Refusal::GroupBusy { operation, .. } if *operation == id), "{err}");
    assert!(scale(&mut f, "site-1", 3).is_err());
    // A step the engine no longer takes is refused as stale.
    let stale = Action::EvacuationStep { id: id.clone(), step: switchyard_core::EvacuationStep::Finish };
    assert!(matches!(f.propose("system", stale), Err(Refusal::StalePhase { .. })));
}

#[test]
fn a_freeze_holds_a_waiting_group_instead_of_failing_it_and_an_aborted_move_is_not_a_failure() {
    let mut f = Fed::new();
    groups(&mut f, &[("a", 1, &[]), ("b", 1, &[]), ("c", 1, &["b"])]);
    cells_follow(&mut f, &CPU);
    let id = evacuate(&mut f, "site-1", "site-2", 1, 1).unwrap();
    // b is frozen after the evacuation started: it waits, and so does c, which needs it.
    f.ok(
        "dr-admin:dana",
        Action::SetFreeze { scope: FreezeScope::Group("b".into()), reason: "audit week".into(), until_ms: None },
    );
    for _ in 0..200 {
        f.tick(500);
        cells_follow(&mut f, &CPU);
    }
    let st = statuses(&f, &id);
    assert_eq!(st.iter().find(|(g, _)| g == "b").unwrap().1, "pending", "{st:?}");
    assert_eq!(st.iter().find(|(g, _)| g == "c").unwrap().1, "pending", "{st:?}");
    assert!(f.state.evacuations[&id].is_running());
    let e = &f.state.evacuations[&id];
    let why = switchyard_core::evacuation::held_by(&f.state, e, "b", f.now).expect("held");
    assert!(why.contains("audit week"), "{why}");
    assert_eq!(e.failures(&f.state), 0, "a held group is not a failure");
    // The freeze lifts: b moves; an operator aborts its switchover: c, which needs it, is skipped.
    f.ok("dr-admin:dana", Action::ClearFreeze { scope: FreezeScope::Group("b".into()), reason: "done".into() });
    f.tick(100);
    let b_op = f.state.evacuations[&id].groups.iter().find(|g| g.group == "b").unwrap().operation.clone().unwrap();
    f.ok(OPERATOR, Action::ControlOperation { id: b_op, control: Control::Abort, reason: "not b".into() });
    for _ in 0..10 {
        f.tick(500);
        cells_follow(&mut f, &CPU);
    }
    let st = statuses(&f, &id);
    assert_eq!(st.iter().find(|(g, _)| g == "b").unwrap().1, "aborted", "{st:?}");
    assert_eq!(st.iter().find(|(g, _)| g == "c").unwrap().1, "skipped", "{st:?}");
    let e = &f.state.evacuations[&id];
    assert_eq!(e.failures(&f.state), 0);
    assert_eq!(e.outcome, Outcome::Failed, "not every group moved");
}

#[test]
fn a_gap_in_the_targets_reports_holds_groups_instead_of_failing_them() {
    let mut f = Fed::new();
    groups(&mut f, &[("a", 1, &[]), ("b", 1, &[])]);
    cells_follow(&mut f, &CPU);
    let id = evacuate(&mut f, "site-1", "site-2", 1, 1).unwrap();
    // site-2's cell goes quiet for 30 s; site-1 keeps reporting.
    for _ in 0..30 {
        f.tick(1_000);
        cells_follow(&mut f, &[("site-1", 10_000)]);
    }
    let e = &f.state.evacuations[&id];
    assert_eq!(e.failures(&f.state), 0, "{:?}", statuses(&f, &id));
    assert!(e.is_running());
    let pending = e.groups.iter().find(|g| g.operation.is_none()).expect("a group still waits");
    let why = switchyard_core::evacuation::held_by(&f.state, e, &pending.group, f.now).unwrap();
    assert!(why.starts_with("held until site-2's cell reports again"), "{why}");
    // The cell is back: everything moves.
    for _ in 0..200 {
        f.tick(500);
        cells_follow(&mut f, &CPU);
        if !f.state.evacuations[&id].is_running() {
            break;
        }
    }
    assert_eq!(f.state.evacuations[&id].outcome, Outcome::Succeeded, "{:?}", statuses(&f, &id));
}

#[test]
fn rolling_an_evacuation_back_moves_what_had_moved_back_in_reverse_order() {
    let mut f = Fed::new();
    groups(&mut f, &[("db", 1, &[]), ("web", 1, &["db"])]);
    cells_follow(&mut f, &CPU);
    let id = evacuate(&mut f, "site-1", "site-2", 2, 1).unwrap();
    for _ in 0..400 {
        f.tick(500);
        cells_follow(&mut f, &CPU);
        if !f.state.evacuations[&id].is_running() {
            break;
        }
    }
    assert_eq!(f.state.evacuations[&id].outcome, Outcome::Succeeded);
    let e = f.state.evacuations[&id].clone();
    let actions = switchyard_core::evacuation::rollback_actions(&f.state, &e, "power work cancelled").unwrap();
    let [Action::StartEvacuation { groups, to, rollback_of, .. }] = actions.as_slice() else { panic!("{actions:?}") };
    assert_eq!((to.as_str(), rollback_of.as_str()), ("site-1", id.as_str()));
    assert_eq!(groups, &["web", "db", "crm-web"].map(String::from), "reverse order");
    let Applied::OperationStarted { id: back } = f.ok(OPERATOR, actions[0].clone()) else { panic!() };
    for _ in 0..400 {
        f.tick(500);
        cells_follow(&mut f, &CPU);
        if !f.state.evacuations[&back].is_running() {
            break;
        }
    }
    assert_eq!(f.state.evacuations[&back].outcome, Outcome::Succeeded, "{:?}", statuses(&f, &back));
    // Dependencies still first: db moved back before web.
    let order: Vec<String> = f.state.evacuations[&back].groups.iter().map(|g| g.group.clone()).collect();
    assert!(order.iter().position(|g| g == "db") < order.iter().position(|g| g == "web"), "{order:?}");
    for g in f.state.groups.values() {
        assert_eq!(g.placement.active_sites(), vec!["site-1"], "{}", g.spec.name);
    }
}
