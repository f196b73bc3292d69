//! The switchover lifecycle driven through `State::apply` and `engine::decide`, exactly as the
//! federator drives it, with time and cell reports as plain inputs.

use std::collections::BTreeMap;

use switchyard_core::audit::verify_chain;
use switchyard_core::engine::{EngineConfig, decide, fits_on_nodes, operation_blocker};
use switchyard_core::model::{AppSpec, GroupSpec, HealthSpec, Resources, SiteSpec};
use switchyard_core::views::{desired_for_site, routing_table};
use switchyard_core::{
    Action, AppReport, Applied, CellReport, GroupReport, InstanceReport, NodeReport, Outcome, Phase, Proposal, Refusal,
    State,
};

const OPERATOR: &str = "operator:alice";

struct Fed {
    state: State,
    index: u64,
    now: u64,
    cfg: EngineConfig,
}

fn site(name: &str, ip: &str) -> SiteSpec {
    SiteSpec { name: name.into(), ingress: vec![ip.parse().unwrap()], labels: BTreeMap::new() }
}

fn group(name: &str, instances: u32, cpu: u64) -> GroupSpec {
    GroupSpec {
        name: name.into(),
        dns_name: name.into(),
        dns_aliases: vec![],
        ttl_s: 5,
        tier: 1,
        home_site: "site-1".into(),
        tenant: String::new(),
        depends_on: vec![],
        ramp: Default::default(),
        failover: Default::default(),
        warm_standby: Default::default(),
        apps: vec![AppSpec {
            name: "web".into(),
            command: "sample-app".into(),
            args: vec![],
            env: BTreeMap::new(),
            instances,
            resources: Resources { cpu_millis: cpu, mem_mib: 64, disk_mib: 0 },
            health: HealthSpec { http_path: "/health".into(), ..Default::default() },
            readiness: None,
            depends_on: vec![],
            constraints: vec![],
            upgrade: Default::default(),
            autoscale: None,
            metrics: Default::default(),
        }],
    }
}

impl Fed {
    fn new() -> Self {
        let mut f = Fed { state: State::default(), index: 0, now: 1_000_000, cfg: EngineConfig::default() };
        for (i, s) in ["site-1", "site-2", "site-3"].iter().enumerate() {
            f.ok("system:config", Action::RegisterSite(site(s, &format!("127.0.{}.1", i + 1))));
        }
        f.ok("system:config", Action::RegisterGroup(group("crm-web", 2, 100)));
        for s in ["site-1", "site-2", "site-3"] {
            f.report(s, 1000, &[]);
        }
        f
    }

    fn propose(&mut self, actor: &str, action: Action) -> Result<Applied, Refusal> {
        self.index += 1;
        self.state.apply(self.index, &Proposal::new(self.now, actor, action))
    }

    fn ok(&mut self, actor: &str, action: Action) -> Applied {
        self.propose(actor, action).expect("proposal applies")
    }

    /// A report from `site` with one healthy node of `cpu` millis and the given group
    /// instances `(group, healthy, unhealthy)`, at the group's current epoch.
    fn report(&mut self, site: &str, cpu: u64, groups: &[(&str, u32, u32)]) {
        let mut report = CellReport {
            site: site.into(),
            applied_epoch: self.state.max_epoch(),
            nodes: vec![NodeReport {
                node_id: format!("{site}-n1"),
                address: "127.0.0.1".into(),
                capacity: Resources { cpu_millis: cpu, mem_mib: 4096, disk_mib: 0 },
                allocated: Resources::default(),
                healthy: true,
                unschedulable: false,
            }],
            groups: BTreeMap::new(),
        };
        let mut used = 0;
        for (g, healthy, unhealthy) in groups {
            let epoch = self.state.groups[*g].placement.epoch;
            let instances = (0..healthy + unhealthy)
                .map(|i| InstanceReport {
                    task_id: format!("{g}.web.{i}"),
                    running: true,
                    healthy: i < *healthy,
                    pid: 100 + i64::from(i),
                    ..Default::default()
                })
                .collect();
            used += u64::from(healthy + unhealthy) * 100;
            report.groups.insert(
                g.to_string(),
                GroupReport {
                    applied_epoch: epoch,
                    apps: BTreeMap::from([(
                        "web".to_string(),
                        AppReport { desired: healthy + unhealthy, instances, blocker: String::new() },
                    )]),
                    replication_lag_ms: None,
                },
            );
        }
        report.nodes[0].allocated.cpu_millis = used;
        self.ok(&format!("cell:{site}"), Action::CellReport(report));
    }

    /// Runs the engine once and applies what it decides, as the leader's executor does.
    fn tick(&mut self, advance_ms: u64) -> Vec<Action> {
        self.now += advance_ms;
        let actions = decide(&self.state, self.now, &self.cfg);
        for a in &actions {
            self.ok("system", a.clone());
        }
        actions
    }

    fn start(&mut self, group: &str, to: &str) -> Result<Applied, Refusal> {
        self.propose(
            OPERATOR,
            Action::StartSwitchover {
                group: group.into(),
                to: to.into(),
                reason: "CHG-42 power work".into(),
                plan: String::new(),
                rollback_of: String::new(),
            },
        )
    }

    fn op(&self, id: &str) -> &switchyard_core::Operation {
        &self.state.operations[id]
    }
}

/// Everything but `last_applied`, which a refused entry still advances.
fn same_except_index(a: &State, b: &State) -> bool {
    let mut a = a.clone();
    a.last_applied = b.last_applied;
    a == *b
}

#[test]
fn registering_places_group_on_home_site_and_audits() {
    let f = Fed::new();
    let g = &f.state.groups["crm-web"];
    assert_eq!(g.placement.active_sites(), vec!["site-1"]);
    assert_eq!(g.placement.sites["site-1"].instances["web"], 2);
    let actions: Vec<_> = f.state.audit.records().iter().map(|r| r.action.as_str()).collect();
    assert_eq!(actions, ["site.register", "site.register", "site.register", "group.register"]);
    let rt = routing_table(&f.state);
    assert_eq!(rt.entries.len(), 1);
    assert_eq!(rt.entries[0].targets[0].addresses[0].to_string(), "127.0.1.1");
    assert_eq!(rt.version, 4, "routing version is the log index of the last routing change");
}

#[test]
fn refusals_name_the_problem_and_change_nothing() {
    let mut f = Fed::new();
    type Check = fn(&Refusal) -> bool;
    let cases: Vec<(&str, &str, Check)> = vec![
        ("crm-web", "site-9", |r| matches!(r, Refusal::UnknownSite(s) if s == "site-9")),
        ("nope", "site-2", |r| matches!(r, Refusal::UnknownGroup(g) if g == "nope")),
        ("crm-web", "site-1", |r| matches!(r, Refusal::AlreadyActive { .. })),
    ];
    for (g, to, check) in cases {
        let before = f.state.clone();
        let err = f.start(g, to).unwrap_err();
        assert!(check(&err), "{g}->{to}: {err}");
        assert!(same_except_index(&before, &f.state), "refusal changed state: {err}");
    }
    // A site whose hosts cannot hold the group.
    f.report("site-3", 150, &[]);
    let before = f.state.clone();
    let err = f.start("crm-web", "site-3").unwrap_err();
    assert!(matches!(&err, Refusal::InsufficientCapacity { site, .. } if site == "site-3"), "{err}");
    assert!(err.to_string().contains("needs 200 cpu_millis"), "{err}");
    assert!(same_except_index(&before, &f.state));
    // A site whose cell went quiet.
    f.now += 60_000;
    f.report("site-1", 1000, &[("crm-web", 2, 0)]);
    let err = f.start("crm-web", "site-2").unwrap_err();
    assert!(matches!(err, Refusal::NoFreshReport { .. }), "{err}");
}

#[test]
fn switchover_runs_make_before_break_to_completion() {
    let mut f = Fed::new();
    f.report("site-1", 1000, &[("crm-web", 2, 0)]);
    let Applied::OperationStarted { id } = f.start("crm-web", "site-2").unwrap() else { panic!("no op") };
    let start_epoch = f.state.groups["crm-web"].placement.epoch;
    assert_eq!(start_epoch, f.index);
    // Target told to run 2, source keeps serving.
    let d2 = desired_for_site(&f.state, "site-2", f.now);
    assert_eq!(d2.groups[0].apps[0].instances, 2);
    assert_eq!(f.state.groups["crm-web"].placement.active_sites(), vec!["site-1"]);
    assert_eq!(f.op(&id).reserved.cpu_millis, 200);

    // Nothing happens until the target reports its instances healthy at this epoch.
    assert!(f.tick(500).is_empty());
    assert!(operation_blocker(&f.state, f.op(&id), f.now, &f.cfg).contains("does not report group"));
    f.report("site-2", 1000, &[("crm-web", 1, 1)]);
    assert!(f.tick(500).is_empty());
    assert!(operation_blocker(&f.state, f.op(&id), f.now, &f.cfg).contains("web: 1/2 healthy"));
    f.report("site-2", 1000, &[("crm-web", 2, 0)]);
    f.tick(500);
    assert_eq!(f.op(&id).phase, Phase::Verifying);
    assert_eq!(f.op(&id).reserved.cpu_millis, 200, "reservation held until traffic moves");

    // Verify window: traffic does not move early.
    assert!(f.tick(1000).is_empty());
    assert_eq!(f.state.groups["crm-web"].placement.active_sites(), vec!["site-1"]);
    f.tick(f.cfg.verify_window_ms);
    assert_eq!(f.op(&id).phase, Phase::Draining);
    assert_eq!(f.op(&id).reserved.cpu_millis, 200, "reservation held until the source scales down");
    let g = &f.state.groups["crm-web"];
    assert_eq!(g.placement.active_sites(), vec!["site-2"], "single active site after the shift");
    assert_eq!(f.state.routing_version, f.index);
    let rt = routing_table(&f.state);
    let weights: Vec<_> = rt.entries[0].targets.iter().map(|t| (t.site.as_str(), t.weight)).collect();
    assert_eq!(weights, [("site-1", 0), ("site-2", 100)]);
    // Source still runs during the drain.
    assert_eq!(desired_for_site(&f.state, "site-1", f.now).groups[0].apps[0].instances, 2);

    // Drain lasts TTL (5 s) + drain (1 s), while the target keeps reporting healthy.
    f.report("site-2", 1000, &[("crm-web", 2, 0)]);
    assert!(f.tick(5000).is_empty());
    f.report("site-2", 1000, &[("crm-web", 2, 0)]);
    f.tick(1000);
    assert_eq!(f.op(&id).phase, Phase::ScalingDown);
    assert_eq!(f.op(&id).reserved, Resources::default(), "reservation released once the source scales down");
    assert_eq!(desired_for_site(&f.state, "site-1", f.now).groups[0].apps[0].instances, 0);

    // Done only when the source reports its instances gone at the new epoch.
    f.report("site-1", 1000, &[("crm-web", 2, 0)]);
    assert!(f.tick(500).is_empty());
    f.report("site-1", 1000, &[("crm-web", 0, 0)]);
    f.tick(500);
    let op = f.op(&id);
    assert_eq!((op.phase, op.outcome), (Phase::Done, Outcome::Succeeded));
    assert!(f.state.groups["crm-web"].operation.is_none(), "lock released");
    let phases: Vec<_> = op.steps.iter().map(|s| s.phase).collect();
    assert_eq!(phases, [Phase::ScalingUp, Phase::Verifying, Phase::Draining, Phase::ScalingDown]);
    assert!(op.steps.iter().all(|s| s.finished_at_ms.is_some()));

    let audit = f.state.audit.records();
    let tail: Vec<_> = audit.iter().skip(4).map(|r| (r.action.as_str(), r.actor.as_str())).collect();
    assert_eq!(
        tail,
        [
            ("switchover.start", OPERATOR),
            ("switchover.phase", "system"),
            ("switchover.traffic", "system"),
            ("switchover.phase", "system"),
            ("switchover.complete", "system"),
        ]
    );
    assert!(audit.iter().skip(4).all(|r| r.reason == "CHG-42 power work"));
    verify_chain(audit).unwrap();
    // Nothing left to do.
    assert!(f.tick(10_000).is_empty());
}

#[test]
fn second_operation_on_a_busy_group_is_refused() {
    let mut f = Fed::new();
    f.report("site-1", 1000, &[("crm-web", 2, 0)]);
    let Applied::OperationStarted { id } = f.start("crm-web", "site-2").unwrap() else { panic!() };
    let err = f.start("crm-web", "site-3").unwrap_err();
    assert_eq!(err, Refusal::GroupBusy { group: "crm-web".into(), operation: id });
}

#[test]
fn target_that_never_gets_healthy_rolls_back_without_touching_traffic() {
    let mut f = Fed::new();
    f.report("site-1", 1000, &[("crm-web", 2, 0)]);
    let Applied::OperationStarted { id } = f.start("crm-web", "site-2").unwrap() else { panic!() };
    let started = f.now;
    while f.op(&id).is_running() {
        assert!(f.now - started <= f.cfg.scale_up_timeout_ms + 5_000, "no timeout");
        f.report("site-2", 1000, &[("crm-web", 0, 2)]);
        f.tick(5_000);
    }
    assert!(f.now - started >= f.cfg.scale_up_timeout_ms, "gave up early");
    let op = f.op(&id);
    assert_eq!(op.outcome, Outcome::Failed);
    assert!(op.error.as_deref().unwrap().contains("web: 0/2 healthy"), "{:?}", op.error);
    let g = &f.state.groups["crm-web"];
    assert!(g.operation.is_none());
    assert!(!g.placement.sites.contains_key("site-2"), "target share rolled back");
    assert_eq!(g.placement.active_sites(), vec!["site-1"]);
    assert_eq!(g.placement.epoch, f.index, "rollback is a new epoch so the target's cell stops the instances");
    assert_eq!(f.state.audit.records().last().unwrap().action, "switchover.rolled-back");
    // The group can be switched again.
    f.report("site-2", 1000, &[]);
    assert!(f.start("crm-web", "site-2").is_ok());
}

#[test]
fn unhealthy_instance_during_verify_restarts_the_window() {
    let mut f = Fed::new();
    f.report("site-1", 1000, &[("crm-web", 2, 0)]);
    let Applied::OperationStarted { id } = f.start("crm-web", "site-2").unwrap() else { panic!() };
    f.report("site-2", 1000, &[("crm-web", 2, 0)]);
    f.tick(100);
    assert_eq!(f.op(&id).phase, Phase::Verifying);
    f.report("site-2", 1000, &[("crm-web", 1, 1)]);
    f.tick(100);
    assert_eq!(f.op(&id).phase, Phase::ScalingUp);
    f.report("site-2", 1000, &[("crm-web", 2, 0)]);
    f.tick(100);
    assert_eq!(f.op(&id).phase, Phase::Verifying);
    f.tick(f.cfg.verify_window_ms - 1);
    assert_eq!(f.op(&id).phase, Phase::Verifying, "window restarted, not resumed");
    f.tick(1);
    assert_eq!(f.op(&id).phase, Phase::Draining);
}

#[test]
fn duplicate_or_late_steps_are_ignored() {
    let mut f = Fed::new();
    f.report("site-1", 1000, &[("crm-web", 2, 0)]);
    let Applied::OperationStarted { id } = f.start("crm-web", "site-2").unwrap() else { panic!() };
    f.report("site-2", 1000, &[("crm-web", 2, 0)]);
    let actions = f.tick(100);
    assert_eq!(actions.len(), 1);
    let before = f.state.clone();
    let err = f.propose("system", actions[0].clone()).unwrap_err();
    assert!(matches!(err, Refusal::StalePhase { .. }), "{err}");
    assert!(same_except_index(&before, &f.state));
    let err = f
        .propose(
            "system",
            Action::AdvanceOperation { id, from: Phase::Verifying, to: Phase::Done, detail: String::new() },
        )
        .unwrap_err();
    assert!(matches!(err, Refusal::Invalid(_)), "skipping phases is refused: {err}");
}

#[test]
fn concurrent_switchovers_never_overcommit_a_site() {
    let mut f = Fed::new();
    let mut g2 = group("mobile-app", 3, 100);
    g2.dns_name = "mobile".into();
    f.ok("system:config", Action::RegisterGroup(g2));
    f.report("site-1", 2000, &[("crm-web", 2, 0), ("mobile-app", 3, 0)]);
    // site-2 has 400 free: crm-web needs 200, mobile-app 300.
    f.report("site-2", 400, &[]);
    f.start("crm-web", "site-2").unwrap();
    let err = f.start("mobile-app", "site-2").unwrap_err();
    match err {
        Refusal::InsufficientCapacity { needed, free, .. } => {
            assert_eq!((needed.cpu_millis, free.cpu_millis), (300, 200));
        }
        other => panic!("{other}"),
    }
}

#[test]
fn cell_reports_must_come_from_that_sites_cell() {
    let mut f = Fed::new();
    let before = f.state.clone();
    let report = CellReport { site: "site-2".into(), ..Default::default() };
    let err = f.propose("cell:site-1", Action::CellReport(report)).unwrap_err();
    assert!(err.to_string().contains("must come from cell:site-2"), "{err}");
    assert!(same_except_index(&before, &f.state));
}

#[test]
fn invalid_configuration_is_refused_whole() {
    let mut f = Fed::new();
    let mut g = group("Bad", 1, 0);
    g.home_site = "site-7".into();
    let err = f.propose("system:config", Action::RegisterGroup(g)).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("group name \"Bad\""), "{msg}");
    assert!(msg.contains("cpu_millis > 0"), "{msg}");
    assert!(msg.contains("home_site \"site-7\""), "{msg}");
    let mut dup = group("other", 1, 100);
    dup.dns_name = "crm-web".into();
    let err = f.propose("system:config", Action::RegisterGroup(dup)).unwrap_err();
    assert!(err.to_string().contains("already used by group \"crm-web\""), "{err}");
}

#[test]
fn apply_is_deterministic_and_survives_serialization() {
    // Replay the same log on a fresh state (what a restarted replica does) and compare.
    let mut f = Fed::new();
    f.report("site-1", 1000, &[("crm-web", 2, 0)]);
    f.start("crm-web", "site-2").unwrap();
    f.report("site-2", 1000, &[("crm-web", 2, 0)]);
    f.tick(100);
    f.tick(f.cfg.verify_window_ms);
    let json = serde_json::to_string(&f.state).unwrap();
    let restored: State = serde_json::from_str(&json).unwrap();
    assert_eq!(restored, f.state);
    assert_eq!(serde_json::to_string(&restored).unwrap(), json, "serialization is canonical");
}

#[test]
fn unreachable_source_needs_attention_then_completes_when_it_reports() {
    let mut f = Fed::new();
    f.report("site-1", 1000, &[("crm-web", 2, 0)]);
    let Applied::OperationStarted { id } = f.start("crm-web", "site-2").unwrap() else { panic!() };
    f.report("site-2", 1000, &[("crm-web", 2, 0)]);
    f.tick(100);
    f.tick(f.cfg.verify_window_ms);
    f.tick(6_000);
    assert_eq!(f.op(&id).phase, Phase::ScalingDown);
    // site-1's cell is gone: it never confirms the scale-down.
    let started = f.now;
    while f.op(&id).outcome == Outcome::Running {
        assert!(f.now - started <= f.cfg.scale_down_timeout_ms + 10_000, "never timed out");
        f.report("site-2", 1000, &[("crm-web", 2, 0)]);
        f.tick(5_000);
    }
    assert_eq!(f.op(&id).outcome, Outcome::NeedsAttention);
    assert!(f.state.groups["crm-web"].operation.is_some(), "traffic moved; the group stays locked");
    assert!(matches!(f.start("crm-web", "site-3"), Err(Refusal::GroupBusy { .. })));
    assert!(f.tick(60_000).is_empty(), "no second failure while still waiting");
    assert!(operation_blocker(&f.state, f.op(&id), f.now, &f.cfg).contains("waiting for source"));

    // The source comes back and reports nothing left: the operation completes by itself.
    f.report("site-1", 1000, &[("crm-web", 0, 0)]);
    f.report("site-2", 1000, &[("crm-web", 2, 0)]);
    f.tick(100);
    let op = f.op(&id);
    assert_eq!((op.phase, op.outcome), (Phase::Done, Outcome::Succeeded));
    assert!(f.state.groups["crm-web"].operation.is_none(), "lock released");
    let actions: Vec<_> = f.state.audit.records().iter().rev().take(2).map(|r| r.action.clone()).collect();
    assert_eq!(actions, ["switchover.complete", "switchover.needs-attention"]);
    verify_chain(f.state.audit.records()).unwrap();
    assert!(f.start("crm-web", "site-1").is_ok(), "the group can move again");
}

#[test]
fn reservations_count_each_instance_once_and_cover_lost_ones() {
    let mut f = Fed::new();
    let mut g2 = group("mobile-app", 2, 100);
    g2.dns_name = "mobile".into();
    f.ok("system:config", Action::RegisterGroup(g2));
    let mut g3 = group("batch", 3, 100);
    g3.dns_name = "batch".into();
    f.ok("system:config", Action::RegisterGroup(g3));
    f.report("site-1", 4000, &[("crm-web", 2, 0), ("mobile-app", 2, 0), ("batch", 3, 0)]);
    // site-2 holds 400: crm-web takes 200 of it.
    f.report("site-2", 400, &[]);
    let Applied::OperationStarted { id } = f.start("crm-web", "site-2").unwrap() else { panic!() };
    f.report("site-2", 400, &[("crm-web", 2, 0)]);
    f.tick(100);
    assert_eq!(f.op(&id).phase, Phase::Verifying);
    // Both instances are placed (in the report's allocation): they are not also reserved, so
    // batch (300) is refused but mobile-app (200) fits.
    assert!(matches!(f.start("batch", "site-2"), Err(Refusal::InsufficientCapacity { .. })));
    // A target node is lost: one instance disappears and the verify falls back to ScalingUp.
    f.report("site-2", 400, &[("crm-web", 1, 0)]);
    f.tick(100);
    assert_eq!(f.op(&id).phase, Phase::ScalingUp);
    // The report shows 100 allocated, but the lost instance's 100 is still reserved for
    // crm-web: 200 left, so batch (300) is still refused.
    let err = f.start("batch", "site-2").unwrap_err();
    match err {
        Refusal::InsufficientCapacity { free, .. } => assert_eq!(free.cpu_millis, 200),
        other => panic!("{other}"),
    }
    assert!(f.start("mobile-app", "site-2").is_ok(), "200 still fits");
}

#[test]
fn nodes_in_maintenance_are_not_free_capacity() {
    let mut f = Fed::new();
    f.report("site-1", 1000, &[("crm-web", 2, 0)]);
    // site-2's only node is in maintenance: healthy, but it takes nothing new.
    let mut report = CellReport {
        site: "site-2".into(),
        applied_epoch: f.state.max_epoch(),
        nodes: vec![NodeReport {
            node_id: "site-2-n1".into(),
            address: "127.0.2.11".into(),
            capacity: Resources { cpu_millis: 4000, mem_mib: 4096, disk_mib: 0 },
            allocated: Resources::default(),
            healthy: true,
            unschedulable: true,
        }],
        groups: BTreeMap::new(),
    };
    f.ok("cell:site-2", Action::CellReport(report.clone()));
    let err = f.start("crm-web", "site-2").unwrap_err();
    assert!(matches!(err, Refusal::InsufficientCapacity { .. }), "{err}");
    report.nodes[0].unschedulable = false;
    f.ok("cell:site-2", Action::CellReport(report));
    assert!(f.start("crm-web", "site-2").is_ok());
}

fn update(f: &mut Fed, spec: GroupSpec) -> Result<Applied, Refusal> {
    f.propose(OPERATOR, Action::UpdateGroup { spec, reason: "CHG-7 release 2".into() })
}

#[test]
fn a_group_update_rolls_out_a_new_spec_with_a_new_epoch_and_is_audited() {
    let mut f = Fed::new();
    let epoch_before = f.state.groups["crm-web"].placement.epoch;
    let mut spec = group("crm-web", 2, 100);
    spec.apps[0].env.insert("RELEASE".into(), "2".into());
    let plan = f.state.plan_group_update(&spec, f.now).unwrap();
    assert_eq!(plan.changes, ["app web: new spec, rolled out under its upgrade strategy"]);

    assert_eq!(update(&mut f, spec.clone()).unwrap(), Applied::Changed);
    let g = &f.state.groups["crm-web"];
    assert_eq!(g.placement.epoch, f.index, "the update is the group's new fencing epoch");
    assert!(g.placement.epoch > epoch_before);
    assert_eq!(g.placement.sites["site-1"].instances["web"], 2, "instances unchanged");
    let desired = desired_for_site(&f.state, "site-1", f.now);
    assert_eq!(desired.groups[0].apps[0].spec.env["RELEASE"], "2");
    let last = f.state.audit.records().last().unwrap();
    assert_eq!(
        (last.action.as_str(), last.actor.as_str(), last.reason.as_str()),
        ("group.update", OPERATOR, "CHG-7 release 2")
    );
    assert!(last.detail_json.contains("new spec"), "{}", last.detail_json);
    verify_chain(f.state.audit.records()).unwrap();

    // The same spec again changes nothing and records nothing.
    let records = f.state.audit.records().len();
    assert_eq!(update(&mut f, spec).unwrap(), Applied::Unchanged);
    assert_eq!(f.state.audit.records().len(), records);
}

#[test]
fn a_group_update_scales_where_traffic_goes_and_adds_and_removes_apps() {
    let mut f = Fed::new();
    let mut spec = group("crm-web", 4, 100);
    let mut worker = spec.apps[0].clone();
    worker.name = "worker".into();
    worker.instances = 1;
    spec.apps.push(worker);
    update(&mut f, spec.clone()).unwrap();
    let share = &f.state.groups["crm-web"].placement.sites["site-1"];
    assert_eq!(share.instances["web"], 4);
    assert_eq!(share.instances["worker"], 1);

    // Only the instance count of web changes back; worker keeps its count; then worker goes.
    spec.apps[0].instances = 3;
    spec.apps.pop();
    let plan = f.state.plan_group_update(&spec, f.now).unwrap();
    assert_eq!(plan.changes, ["app web: 4 -> 3 instances on site-1", "app worker: removed (its instances stop)"]);
    update(&mut f, spec).unwrap();
    let share = &f.state.groups["crm-web"].placement.sites["site-1"];
    assert_eq!(share.instances.keys().collect::<Vec<_>>(), ["web"]);
    assert_eq!(share.instances["web"], 3);
}

#[test]
fn a_bad_or_untimely_group_update_is_refused_and_changes_nothing() {
    let mut f = Fed::new();
    let before = f.state.clone();
    let mut bad = group("crm-web", 2, 100);
    bad.apps[0].constraints = vec!["rack:SOMETIMES".into()];
    bad.apps[0].upgrade.minimum_health_capacity = 1.5;
    let err = update(&mut f, bad).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("unknown operator \"SOMETIMES\"") && text.contains("minimum_health_capacity 1.5"), "{text}");
    assert!(same_except_index(&before, &f.state));

    let err = update(&mut f, group("nope", 2, 100)).unwrap_err();
    assert_eq!(err, Refusal::UnknownGroup("nope".into()));

    // While a switchover holds the group, its spec cannot change under it.
    f.report("site-1", 1000, &[("crm-web", 2, 0)]);
    let Applied::OperationStarted { id } = f.start("crm-web", "site-2").unwrap() else { panic!() };
    let before = f.state.clone();
    let mut spec = group("crm-web", 2, 100);
    spec.apps[0].args = vec!["--v2".into()];
    let err = update(&mut f, spec).unwrap_err();
    assert_eq!(err, Refusal::GroupBusy { group: "crm-web".into(), operation: id });
    assert!(same_except_index(&before, &f.state));
}

use switchyard_cell_core::autoscale::AutoscaleSpec;
use switchyard_core::FreezeScope;

fn autoscaled(min: u32, max: u32) -> GroupSpec {
    let mut spec = group("crm-web", 2, 100);
    let auto: AutoscaleSpec = serde_json::from_value(serde_json::json!({
        "min_instances": min, "max_instances": max, "max_step_up": 2, "max_step_down": 1,
        "cooldown_up_ms": 1000, "cooldown_down_ms": 5000, "sample_interval_ms": 500,
        "policy": { "kind": "threshold", "sustain_ms": 2000, "step_up": { "absolute": 1 }, "step_down": { "absolute": 1 },
                    "bounds": { "concurrency": { "upper": 4.0, "lower": 1.0 } } }
    }))
    .unwrap();
    spec.apps[0].autoscale = Some(switchyard_core::model::Autoscale(auto));
    spec
}

fn autoscale(f: &mut Fed, actor: &str, site: &str, from: u32, to: u32) -> Result<Applied, Refusal> {
    let action = Action::Autoscale {
        site: site.into(),
        group: "crm-web".into(),
        app: "web".into(),
        from,
        to,
        reason: "concurrency 6.5 above 4".into(),
        evidence_json: r#"{"current":2.0,"threshold.concurrency.mean":6.5}"#.into(),
    };
    f.propose(actor, action)
}

#[test]
fn a_cells_autoscaling_decision_changes_its_sites_count_and_is_audited() {
    let mut f = Fed::new();
    update(&mut f, autoscaled(2, 6)).unwrap();
    let epoch = f.state.groups["crm-web"].placement.epoch;
    assert_eq!(autoscale(&mut f, "cell:site-1", "site-1", 2, 4).unwrap(), Applied::Changed);
    let g = &f.state.groups["crm-web"];
    assert_eq!(g.placement.sites["site-1"].instances["web"], 4);
    assert!(g.placement.epoch > epoch, "a new count is a new fencing epoch");
    let last = f.state.audit.records().last().unwrap();
    assert_eq!(
        (last.action.as_str(), last.actor.as_str(), last.subject.as_str()),
        ("app.autoscale", "cell:site-1", "crm-web/web@site-1")
    );
    assert!(last.detail_json.contains("threshold.concurrency.mean"), "{}", last.detail_json);

    // Refusals change nothing: stale, out of bounds, another site's cell, a passive site.
    let before = f.state.clone();
    let refusals = [
        autoscale(&mut f, "cell:site-1", "site-1", 2, 3).unwrap_err(),
        autoscale(&mut f, "cell:site-1", "site-1", 4, 7).unwrap_err(),
        autoscale(&mut f, "cell:site-2", "site-1", 4, 5).unwrap_err(),
        autoscale(&mut f, "operator:alice", "site-1", 4, 5).unwrap_err(),
        autoscale(&mut f, "cell:site-2", "site-2", 0, 2).unwrap_err(),
    ];
    assert!(matches!(refusals[0], Refusal::Stale(_)), "{}", refusals[0]);
    assert!(refusals[1].to_string().contains("bounds [2, 6]"), "{}", refusals[1]);
    assert!(matches!(refusals[4], Refusal::Stale(_)), "{}", refusals[4]);
    assert!(same_except_index(&before, &f.state));
    // An app without an autoscale policy is never autoscaled.
    update(&mut f, group("crm-web", 4, 100)).unwrap();
    assert!(autoscale(&mut f, "cell:site-1", "site-1", 4, 5).unwrap_err().to_string().contains("not autoscaled"));
}

#[test]
fn freezes_stop_switchovers_updates_and_autoscaling_until_cleared_or_expired() {
    let mut f = Fed::new();
    update(&mut f, autoscaled(2, 6)).unwrap();
    f.report("site-1", 1000, &[("crm-web", 2, 0)]);
    let freeze =
        |scope: FreezeScope, until_ms| Action::SetFreeze { scope, reason: "CAB freeze week 47".into(), until_ms };
    let err = f.propose("dr-admin:dana", freeze(FreezeScope::Group("nope".into()), None)).unwrap_err();
    assert_eq!(err, Refusal::UnknownGroup("nope".into()));
    f.ok("dr-admin:dana", freeze(FreezeScope::Group("crm-web".into()), None));
    let last = f.state.audit.records().last().unwrap();
    assert_eq!((last.action.as_str(), last.subject.as_str()), ("freeze.set", "group:crm-web"));

    let before = f.state.clone();
    for err in [
        f.start("crm-web", "site-2").unwrap_err(),
        update(&mut f, group("crm-web", 3, 100)).unwrap_err(),
        autoscale(&mut f, "cell:site-1", "site-1", 2, 3).unwrap_err(),
    ] {
        assert!(matches!(&err, Refusal::Frozen { scope, .. } if scope == "group:crm-web"), "{err}");
        assert!(err.to_string().contains("CAB freeze week 47"), "{err}");
    }
    assert!(same_except_index(&before, &f.state));
    assert!(desired_for_site(&f.state, "site-1", f.now).groups[0].frozen);

    // Cleared: autoscaling works again.
    f.ok(
        "dr-admin:dana",
        Action::ClearFreeze { scope: FreezeScope::Group("crm-web".into()), reason: "freeze over".into() },
    );
    assert!(!desired_for_site(&f.state, "site-1", f.now).groups[0].frozen);
    autoscale(&mut f, "cell:site-1", "site-1", 2, 3).unwrap();

    // A site freeze with an expiry holds until leader time passes it.
    let until = f.now + 60_000;
    f.ok("dr-admin:dana", freeze(FreezeScope::Site("site-1".into()), Some(until)));
    assert!(matches!(autoscale(&mut f, "cell:site-1", "site-1", 3, 4).unwrap_err(), Refusal::Frozen { .. }));
    f.now = until;
    autoscale(&mut f, "cell:site-1", "site-1", 3, 4).unwrap();
    verify_chain(f.state.audit.records()).unwrap();
}

fn scale(f: &mut Fed, site: &str, instances: u32) -> Result<Applied, Refusal> {
    let action = Action::ScaleApp {
        group: "crm-web".into(),
        app: "web".into(),
        site: site.into(),
        instances,
        reason: "CHG-9".into(),
    };
    f.propose(OPERATOR, action)
}

#[test]
fn operators_scale_and_suspend_an_app_where_it_is_active() {
    let mut f = Fed::new();
    assert_eq!(scale(&mut f, "site-1", 5).unwrap(), Applied::Changed);
    assert_eq!(f.state.groups["crm-web"].placement.sites["site-1"].instances["web"], 5);
    assert_eq!(scale(&mut f, "site-1", 0).unwrap(), Applied::Changed);
    let last = f.state.audit.records().last().unwrap();
    assert_eq!((last.action.as_str(), last.subject.as_str()), ("app.suspend", "crm-web/web@site-1"));
    assert_eq!(desired_for_site(&f.state, "site-1", f.now).groups[0].apps[0].instances, 0, "suspended, spec kept");
    assert_eq!(f.state.groups["crm-web"].spec.apps.len(), 1);
    assert_eq!(scale(&mut f, "site-1", 0).unwrap(), Applied::Unchanged);

    let before = f.state.clone();
    assert!(scale(&mut f, "site-2", 3).unwrap_err().to_string().contains("takes no traffic on site-2"));
    assert_eq!(scale(&mut f, "site-9", 3).unwrap_err(), Refusal::UnknownSite("site-9".into()));
    update(&mut f, autoscaled(2, 6)).unwrap();
    let before_bounds = f.state.clone();
    assert!(scale(&mut f, "site-1", 9).unwrap_err().to_string().contains("autoscaled within [2, 6]"));
    assert!(same_except_index(&before_bounds, &f.state));
    assert_ne!(before, f.state);
}

#[test]
fn a_rollback_restores_the_spec_before_the_last_update() {
    let mut f = Fed::new();
    let original = f.state.groups["crm-web"].spec.clone();
    let err = f.propose(OPERATOR, Action::RollbackGroup { group: "crm-web".into(), reason: "x".into() }).unwrap_err();
    assert!(err.to_string().contains("no earlier spec"), "{err}");

    let mut broken = original.clone();
    broken.apps[0].command = "sample-app-v2".into();
    update(&mut f, broken).unwrap();
    let epoch = f.state.groups["crm-web"].placement.epoch;
    f.ok(OPERATOR, Action::RollbackGroup { group: "crm-web".into(), reason: "v2 never gets healthy".into() });
    let g = &f.state.groups["crm-web"];
    assert_eq!(g.spec, original);
    assert!(g.placement.epoch > epoch);
    let last = f.state.audit.records().last().unwrap();
    assert_eq!((last.action.as_str(), last.reason.as_str()), ("group.rollback", "rollback: v2 never gets healthy"));
}

#[test]
fn service_discovery_names_follow_healthy_instances_and_bump_the_routing_version_only_on_change() {
    let mut f = Fed::new();
    let report = |ports: &[(u32, bool)]| site_report("site-1", ports);
    let before = f.state.routing_version;
    f.ok("cell:site-1", Action::CellReport(report(&[(31_000, true), (31_001, false)])));
    let v1 = f.state.routing_version;
    assert!(v1 > before, "a healthy instance appeared");
    let rt = routing_table(&f.state);
    let names: Vec<&str> = rt.entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["crm-web", "web.crm-web.site-1", "_web._tcp.crm-web.site-1", "site-1-node-1.site-1"]);
    let srv = &rt.entries[2].services;
    assert_eq!((srv.len(), srv[0].port, srv[0].target.as_str()), (1, 31_000, "site-1-node-1.site-1"));

    // The same endpoints reported again: no new routing version (DNS serial stays).
    f.ok("cell:site-1", Action::CellReport(report(&[(31_000, true), (31_001, false)])));
    assert_eq!(f.state.routing_version, v1);
    // The second instance turns healthy: both are published, on their own hosts.
    f.ok("cell:site-1", Action::CellReport(report(&[(31_000, true), (31_001, true)])));
    assert!(f.state.routing_version > v1);
    let rt = routing_table(&f.state);
    let app = rt.entries.iter().find(|e| e.name == "web.crm-web.site-1").unwrap();
    let addresses: Vec<String> = app.targets[0].addresses.iter().map(ToString::to_string).collect();
    assert_eq!(addresses, ["127.0.1.11", "127.0.1.12"]);
    assert!(rt.entries.iter().any(|e| e.name == "site-1-node-2.site-1"));
}

/// A report from `site`'s cell with crm-web/web instances on two nodes: (port, serving).
fn site_report(site: &str, ports: &[(u32, bool)]) -> CellReport {
    let instances = ports
        .iter()
        .enumerate()
        .map(|(i, (port, healthy))| InstanceReport {
            task_id: format!("crm-web.web.{i}"),
            node_id: format!("{site}-node-{}", i % 2 + 1),
            address: format!("127.0.1.{}", 11 + i % 2),
            port: *port,
            running: true,
            healthy: *healthy,
            pid: 100,
        })
        .collect();
    CellReport {
        site: site.into(),
        applied_epoch: 1,
        nodes: vec![],
        groups: BTreeMap::from([(
            "crm-web".to_string(),
            GroupReport {
                applied_epoch: 1,
                apps: BTreeMap::from([(
                    "web".to_string(),
                    AppReport { desired: 2, instances, blocker: String::new() },
                )]),
                replication_lag_ms: None,
            },
        )]),
    }
}

#[test]
fn service_records_of_a_site_dropped_by_a_rollback_get_a_new_routing_version() {
    let mut f = Fed::new();
    f.report("site-1", 1000, &[("crm-web", 2, 0)]);
    let Applied::OperationStarted { id } = f.start("crm-web", "site-2").unwrap() else { panic!() };
    // site-2's instances come up (healthy) while the switchover scales up.
    f.ok("cell:site-2", Action::CellReport(site_report("site-2", &[(31_000, true), (31_001, true)])));
    let names = |f: &Fed| routing_table(&f.state).entries.iter().map(|e| e.name.clone()).collect::<Vec<_>>();
    assert!(names(&f).contains(&"web.crm-web.site-2".to_string()));
    let version = f.state.routing_version;
    // The operation fails before traffic moved: site-2 leaves the placement, and with it its
    // service records, in a new routing version (DNS servers would otherwise keep them).
    f.ok("system", Action::FailOperation { id, at: Phase::ScalingUp, error: "verify timed out".into() });
    assert!(!names(&f).iter().any(|n| n.ends_with("site-2")), "{:?}", names(&f));
    assert!(f.state.routing_version > version);
}

#[test]
fn a_site_freeze_holds_spec_changes_of_groups_placed_there() {
    let mut f = Fed::new();
    f.ok(
        "dr-admin:dana",
        Action::SetFreeze { scope: FreezeScope::Site("site-1".into()), reason: "DC work".into(), until_ms: None },
    );
    let mut spec = group("crm-web", 2, 100);
    spec.apps[0].env.insert("RELEASE".into(), "2".into());
    let err = update(&mut f, spec).unwrap_err();
    assert!(matches!(&err, Refusal::Frozen { scope, .. } if scope == "site:site-1"), "{err}");
    // Clearing a freeze that does not hold changes nothing.
    let before = f.state.clone();
    let r = f.propose(
        "dr-admin:dana",
        Action::ClearFreeze { scope: FreezeScope::Group("crm-web".into()), reason: "x".into() },
    );
    assert_eq!(r, Ok(Applied::Unchanged));
    assert!(same_except_index(&before, &f.state));
}

/// Found by the simulation (seed 1): a group or site freeze made the whole state unserializable
/// (JSON object keys must be strings), so the next snapshot failed and Raft stopped.
#[test]
fn a_state_with_freezes_of_every_scope_survives_a_snapshot_round_trip() {
    let mut f = Fed::new();
    for scope in [FreezeScope::Global, FreezeScope::Group("crm-web".into()), FreezeScope::Site("site-2".into())] {
        f.ok("dr-admin:dana", Action::SetFreeze { scope, reason: "CHG-1".into(), until_ms: None });
    }
    let json = serde_json::to_string(&f.state).expect("state serializes");
    let back: State = serde_json::from_str(&json).expect("state deserializes");
    assert_eq!(back, f.state);
    assert_eq!(back.freezes.len(), 3);

    // A snapshot written before the list form (object keyed by scope, global only) still loads.
    let mut value: serde_json::Value = serde_json::to_value(&back).unwrap();
    let global = serde_json::to_value(&back.freezes[&FreezeScope::Global]).unwrap();
    value["freezes"] = serde_json::json!({ "global": global });
    let old: State = serde_json::from_value(value).expect("old form deserializes");
    assert_eq!(old.freezes.keys().collect::<Vec<_>>(), vec![&FreezeScope::Global]);
}

/// A site's desired state lists the groups it runs or may still run, not the whole federation;
/// a group is left out only once the site's cell has applied its latest placement and reports
/// none of it.
#[test]
fn desired_state_lists_only_groups_a_site_runs_or_may_still_run() {
    let mut f = Fed::new();
    let names = |f: &Fed, site: &str| -> Vec<String> {
        desired_for_site(&f.state, site, f.now).groups.into_iter().map(|g| g.name).collect()
    };
    // Reports (at the current epoch, running nothing) exist for every site: crm-web is placed
    // on site-1 only, so site-2 and site-3 are not told about it.
    assert_eq!(names(&f, "site-1"), ["crm-web"]);
    assert!(names(&f, "site-2").is_empty());

    // A site that never reported is told about every group (it may run anything).
    f.state.reports.remove("site-3");
    assert_eq!(names(&f, "site-3"), ["crm-web"]);

    // A switchover adds site-2 to the placement: listed with its count.
    f.report("site-1", 1000, &[("crm-web", 2, 0)]);
    f.start("crm-web", "site-2").unwrap();
    assert_eq!(desired_for_site(&f.state, "site-2", f.now).groups[0].apps[0].instances, 2);
    // Rolled back before site-2 ever reported the new instances: site-2 has not applied the
    // rollback's epoch yet, so crm-web stays listed (with 0) until it has.
    let id = f.state.groups["crm-web"].operation.clone().unwrap();
    let at = f.state.operations[&id].phase;
    f.ok("system", Action::FailOperation { id, at, error: "test".into() });
    let d2 = desired_for_site(&f.state, "site-2", f.now);
    assert_eq!(d2.groups.len(), 1);
    assert_eq!(d2.groups[0].apps[0].instances, 0, "told to stop what it may have started");
    // It reports instances still present at the new epoch: still listed, still 0.
    f.report("site-2", 1000, &[("crm-web", 1, 0)]);
    assert_eq!(desired_for_site(&f.state, "site-2", f.now).groups[0].apps[0].instances, 0);
    // Once it reports none at the new epoch, it is no longer told about crm-web.
    f.report("site-2", 1000, &[]);
    assert!(names(&f, "site-2").is_empty());
}

#[test]
fn a_placement_without_a_healthy_instance_is_marked_unhealthy_in_a_new_routing_version() {
    let mut f = Fed::new();
    f.report("site-1", 1000, &[("crm-web", 2, 0)]);
    let healthy = |f: &Fed| {
        let rt = routing_table(&f.state);
        let e = rt.entries.iter().find(|e| e.name == "crm-web").unwrap().clone();
        (e.targets.iter().map(|t| (t.site.clone(), t.healthy)).collect::<Vec<_>>(), e.txt)
    };
    assert_eq!(healthy(&f), (vec![("site-1".into(), true)], vec!["site=site-1 weight=100 healthy=yes".to_string()]));
    let version = f.state.routing_version;
    // Every instance running but failing its checks: the site cannot serve the group.
    f.report("site-1", 1000, &[("crm-web", 0, 2)]);
    assert_eq!(healthy(&f), (vec![("site-1".into(), false)], vec!["site=site-1 weight=100 healthy=no".to_string()]));
    assert!(f.state.routing_version > version, "health changes are a new routing version (DNS serial)");
    let unhealthy_version = f.state.routing_version;
    // The same again: no new version.
    f.report("site-1", 1000, &[("crm-web", 0, 2)]);
    assert_eq!(f.state.routing_version, unhealthy_version);
    // One instance recovers: healthy again, new version.
    f.report("site-1", 1000, &[("crm-web", 1, 1)]);
    assert_eq!(healthy(&f).0, vec![("site-1".into(), true)]);
    assert!(f.state.routing_version > unhealthy_version);
}

#[test]
fn a_site_whose_cell_has_not_reported_the_group_counts_as_healthy() {
    // Fed::new() has reports without any group: no evidence of an outage, so no blink.
    let f = Fed::new();
    let rt = routing_table(&f.state);
    assert!(rt.entries.iter().find(|e| e.name == "crm-web").unwrap().targets.iter().all(|t| t.healthy));
}

#[test]
fn dns_aliases_are_cnames_to_the_group_name_and_may_not_take_another_groups_name() {
    let mut f = Fed::new();
    let version = f.state.routing_version;
    let mut spec = group("crm-web", 2, 100);
    spec.dns_aliases = vec!["crm".into(), "www-crm".into()];
    update(&mut f, spec).unwrap();
    assert!(f.state.routing_version > version, "new names are a new routing version");
    let rt = routing_table(&f.state);
    let aliases: Vec<(&str, Option<&str>)> =
        rt.entries.iter().filter(|e| e.cname.is_some()).map(|e| (e.name.as_str(), e.cname.as_deref())).collect();
    assert_eq!(aliases, [("crm", Some("crm-web")), ("www-crm", Some("crm-web"))]);
    assert!(rt.entries.iter().filter(|e| e.cname.is_some()).all(|e| e.targets.is_empty() && e.txt.is_empty()));

    // Another group may not register or take a name crm-web answers for, either way round.
    let mut other = group("billing", 1, 100);
    other.dns_name = "crm".into();
    let err = f.propose("system:config", Action::RegisterGroup(other)).unwrap_err();
    assert!(err.to_string().contains("DNS name \"crm\" is already used by group \"crm-web\""), "{err}");
    let mut other = group("billing", 1, 100);
    other.dns_aliases = vec!["www-crm".into()];
    let err = f.propose("system:config", Action::RegisterGroup(other)).unwrap_err();
    assert!(err.to_string().contains("\"www-crm\""), "{err}");
    // Invalid or repeated aliases are refused with the reason, and change nothing.
    let before = f.state.clone();
    let mut bad = group("crm-web", 2, 100);
    bad.dns_aliases = vec!["Not A Label".into(), "crm-web".into()];
    let err = update(&mut f, bad).unwrap_err().to_string();
    assert!(err.contains("dns alias \"Not A Label\" must be one DNS label"), "{err}");
    assert!(err.contains("repeats the group's dns_name"), "{err}");
    assert_eq!(f.state.groups, before.groups);
}

/// A report from `site` with one healthy node per entry of `free_cpu` (that much CPU free,
/// plenty of memory) and no groups.
fn nodes_report(f: &Fed, site: &str, free_cpu: &[u64]) -> CellReport {
    CellReport {
        site: site.into(),
        applied_epoch: f.state.max_epoch(),
        nodes: free_cpu
            .iter()
            .enumerate()
            .map(|(i, cpu)| NodeReport {
                node_id: format!("{site}-n{i}"),
                address: format!("127.0.0.{}", i + 10),
                capacity: Resources { cpu_millis: *cpu, mem_mib: 65_536, disk_mib: 0 },
                allocated: Resources::default(),
                healthy: true,
                unschedulable: false,
            })
            .collect(),
        groups: BTreeMap::new(),
    }
}

#[test]
fn capacity_must_fit_on_nodes_not_just_in_total() {
    let mut f = Fed::new();
    // One 300-millicore instance; site-2 has 500 free but split 250 + 250.
    let mut big = group("big", 1, 300);
    big.dns_name = "big".into();
    f.ok("system:config", Action::RegisterGroup(big));
    f.report("site-1", 4000, &[("crm-web", 2, 0), ("big", 1, 0)]);
    let r = nodes_report(&f, "site-2", &[250, 250]);
    f.ok("cell:site-2", Action::CellReport(r));
    let before = f.state.clone();
    let err = f.start("big", "site-2").unwrap_err();
    assert!(matches!(&err, Refusal::Fragmented { site, .. } if site == "site-2"), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("no node with room for one instance") && text.contains("largest free space on one node is 250"),
        "{text}"
    );
    assert!(same_except_index(&before, &f.state), "a refusal changes nothing");
    // Two 100-millicore instances of crm-web fit, one per node.
    assert!(f.start("crm-web", "site-2").is_ok());
}

#[test]
fn concurrent_moves_never_over_commit_a_target_node_by_node() {
    // 15 one-instance groups leave site-1 for two targets whose nodes hold 10 and 5 of them.
    let mut f = Fed::new();
    let names: Vec<String> = (0..15).map(|i| format!("g{i:02}")).collect();
    for n in &names {
        let mut g = group(n, 1, 100);
        g.dns_name = n.clone();
        f.ok("system:config", Action::RegisterGroup(g));
    }
    let on_site_1: Vec<(&str, u32, u32)> = names.iter().map(|n| (n.as_str(), 1, 0)).collect();
    f.report("site-1", 10_000, &on_site_1);
    // site-2: 10 slots as 4 + 3 + 3 nodes (with 50 left over on each, never enough for one).
    f.ok("cell:site-2", Action::CellReport(nodes_report(&f, "site-2", &[450, 350, 350])));
    // site-3: 5 slots as 2 + 3.
    f.ok("cell:site-3", Action::CellReport(nodes_report(&f, "site-3", &[250, 350])));
    // Two evacuations race: every group tries site-2, then site-3 when refused.
    let mut to2 = 0;
    let mut to3 = 0;
    let mut refused = 0;
    for n in &names {
        match f.start(n, "site-2") {
            Ok(_) => to2 += 1,
            Err(Refusal::Fragmented { .. } | Refusal::InsufficientCapacity { .. }) => match f.start(n, "site-3") {
                Ok(_) => to3 += 1,
                Err(Refusal::Fragmented { .. } | Refusal::InsufficientCapacity { .. }) => refused += 1,
                Err(other) => panic!("{other}"),
            },
            Err(other) => panic!("{other}"),
        }
    }
    assert_eq!((to2, to3, refused), (10, 5, 0), "exactly the slots there are, no more");
    // A sixteenth group finds no room anywhere, and is told so before anything changes.
    let mut extra = group("extra", 1, 100);
    extra.dns_name = "extra".into();
    f.ok("system:config", Action::RegisterGroup(extra));
    let mut all: Vec<(&str, u32, u32)> = on_site_1.clone();
    all.push(("extra", 1, 0));
    f.report("site-1", 10_000, &all);
    for site in ["site-2", "site-3"] {
        let before = f.state.clone();
        assert!(f.start("extra", site).is_err(), "{site} is full");
        assert!(same_except_index(&before, &f.state));
    }
}

#[test]
fn instances_go_largest_first_to_the_tightest_node() {
    let r = |cpu| Resources { cpu_millis: cpu, mem_mib: 1, disk_mib: 0 };
    let node = |cpu| Resources { cpu_millis: cpu, mem_mib: 1_000, disk_mib: 0 };
    assert_eq!(fits_on_nodes(vec![node(400), node(300)], vec![r(200), r(300), r(200)]), Ok(()));
    // 350 goes to the 350 node (tightest), leaving 400 for both 200s; first fit would have put
    // 350 on the 400 node and found no room for the second 200.
    assert_eq!(fits_on_nodes(vec![node(400), node(350)], vec![r(200), r(200), r(350)]), Ok(()));
    assert_eq!(fits_on_nodes(vec![node(250), node(250)], vec![r(300)]), Err(r(300)));
    assert_eq!(fits_on_nodes(vec![node(100)], vec![r(60), r(60)]), Err(r(60)));
    assert_eq!(fits_on_nodes(vec![], vec![]), Ok(()));
}

mod planning {
    use super::*;
    use switchyard_core::plan::{MoveScope, PlanEstimates, plan_moves};

    fn plan(f: &Fed, scope: MoveScope, to: &str) -> Result<switchyard_core::plan::MovePlan, Refusal> {
        plan_moves(&f.state, &scope, to, f.now, &f.cfg, &PlanEstimates::default())
    }

    /// site-1 runs crm-web (tier 1) plus `n` one-instance groups of 100 millicores at tier 2.
    fn busy(n: usize) -> Fed {
        let mut f = Fed::new();
        let names: Vec<String> = (0..n).map(|i| format!("g{i:02}")).collect();
        for name in &names {
            let mut g = group(name, 1, 100);
            g.dns_name = name.clone();
            g.tier = 2;
            f.ok("system:config", Action::RegisterGroup(g));
        }
        let mut on: Vec<(&str, u32, u32)> = names.iter().map(|n| (n.as_str(), 1, 0)).collect();
        on.push(("crm-web", 2, 0));
        f.report("site-1", 10_000, &on);
        f
    }

    #[test]
    fn an_evacuation_lists_every_group_on_the_site_most_critical_tier_first() {
        let mut f = busy(3);
        f.report("site-2", 10_000, &[]);
        let p = plan(&f, MoveScope::Site("site-1".into()), "site-2").unwrap();
        let order: Vec<&str> = p.groups.iter().map(|g| g.group.as_str()).collect();
        assert_eq!(order, ["crm-web", "g00", "g01", "g02"]);
        assert!(p.go, "{:?}", p.reasons);
        let crm = &p.groups[0];
        let phases: Vec<&str> = crm.steps.iter().map(|s| s.phase.as_str()).collect();
        assert_eq!(phases, ["ScalingUp", "Verifying", "Draining", "ScalingDown"]);
        assert!(crm.steps[0].detail.contains("start 2 instances on site-2 (web=2)"), "{:?}", crm.steps[0]);
        assert!(crm.steps[2].detail.contains("site-1 0 / site-2 100"), "{:?}", crm.steps[2]);
        assert_eq!(crm.steps[2].expected_ms, 5_000 + f.cfg.drain_ms, "one TTL (5 s) plus the drain time");
        assert_eq!(crm.predicted_ms, crm.steps.iter().map(|s| s.expected_ms).sum::<u64>());
        assert_eq!(p.predicted_ms, p.groups.iter().map(|g| g.predicted_ms).max().unwrap());
        assert_eq!(p.needed.cpu_millis, 200 + 3 * 100);
    }

    #[test]
    fn a_plan_that_does_not_fit_is_no_go_with_reasons_and_changes_nothing() {
        let mut f = busy(14);
        // site-2 holds 10 instances of 100 on its nodes; crm-web (2) and g00..g07 fit.
        f.ok("cell:site-2", Action::CellReport(nodes_report(&f, "site-2", &[450, 350, 350])));
        let before = f.state.clone();
        let p = plan(&f, MoveScope::Site("site-1".into()), "site-2").unwrap();
        assert_eq!(f.state, before, "planning is a dry run");
        assert!(!p.go);
        let refused: Vec<&str> = p.groups.iter().filter(|g| g.refusal.is_some()).map(|g| g.group.as_str()).collect();
        assert_eq!(refused, ["g08", "g09", "g10", "g11", "g12", "g13"]);
        assert_eq!(p.reasons.len(), 6);
        assert!(p.reasons[0].starts_with("g08: site \"site-2\""), "{}", p.reasons[0]);
    }

    #[test]
    fn the_plan_is_what_starting_the_same_moves_does() {
        let mut f = busy(6);
        f.ok("cell:site-2", Action::CellReport(nodes_report(&f, "site-2", &[350, 250])));
        let scope: Vec<String> = ["g03", "crm-web", "g00", "g05", "g01"].iter().map(|s| s.to_string()).collect();
        let p = plan(&f, MoveScope::Groups(scope.clone()), "site-2").unwrap();
        for (name, planned) in scope.iter().zip(&p.groups) {
            assert_eq!(&planned.group, name, "the order given is kept");
            match (f.start(name, "site-2"), &planned.refusal) {
                (Ok(Applied::OperationStarted { id }), None) => {
                    let op = f.op(&id);
                    assert_eq!(op.reserved, planned.needed, "{name}");
                    let n: u32 = op.target_instances.values().sum();
                    assert!(planned.steps[0].detail.contains(&format!("start {n} instances")), "{name}");
                }
                (Err(real), Some(planned)) => assert_eq!(&real.to_string(), planned, "{name}"),
                (real, planned) => panic!("{name}: plan said {planned:?}, execution gave {real:?}"),
            }
        }
        assert!(!p.go, "five instances of 100 do not fit 350 + 250 by node: {:?}", p.reasons);
    }

    #[test]
    fn the_plan_id_follows_the_plan_not_the_clock_or_free_capacity() {
        let mut f = busy(2);
        f.report("site-2", 10_000, &[]);
        let scope = MoveScope::Groups(vec!["crm-web".into()]);
        let first = plan(&f, scope.clone(), "site-2").unwrap();
        // A new report with more free capacity, a little later: same plan, same id.
        f.now += 1_000;
        f.report("site-2", 12_000, &[]);
        assert_eq!(plan(&f, scope.clone(), "site-2").unwrap().id, first.id);
        // The group's instance count changes: a different plan.
        f.report("site-1", 10_000, &[("crm-web", 2, 0), ("g00", 1, 0), ("g01", 1, 0)]);
        f.ok(
            OPERATOR,
            Action::ScaleApp {
                group: "crm-web".into(),
                app: "web".into(),
                site: "site-1".into(),
                instances: 3,
                reason: "peak".into(),
            },
        );
        assert_ne!(plan(&f, scope, "site-2").unwrap().id, first.id);
    }

    #[test]
    fn an_evacuation_moves_what_a_group_depends_on_before_it() {
        let mut f = busy(0);
        // web (tier 0) needs api (tier 1), which needs db (tier 2): db, api, web, whatever the tiers.
        for (name, tier, deps) in
            [("web", 0, vec!["api"]), ("api", 1, vec!["db"]), ("db", 2, vec![]), ("batch", 1, vec![])]
        {
            let mut g = group(name, 1, 100);
            g.dns_name = name.into();
            g.tier = tier;
            g.depends_on = deps.into_iter().map(String::from).collect();
            f.ok("system:config", Action::RegisterGroup(g));
        }
        f.report("site-1", 10_000, &[("crm-web", 2, 0), ("web", 1, 0), ("api", 1, 0), ("db", 1, 0), ("batch", 1, 0)]);
        f.report("site-2", 10_000, &[]);
        let p = plan(&f, MoveScope::Site("site-1".into()), "site-2").unwrap();
        let order: Vec<&str> = p.groups.iter().map(|g| g.group.as_str()).collect();
        // crm-web is tier 1 with no dependencies; batch tier 1; db must precede api, api web.
        assert_eq!(order, ["batch", "crm-web", "db", "api", "web"]);
        assert!(p.go, "{:?}", p.reasons);
        // A cycle cannot be ordered: the request is refused, naming the groups.
        let mut db = f.state.groups["db"].spec.clone();
        db.depends_on = vec!["web".into()];
        update(&mut f, db).unwrap();
        let err = plan(&f, MoveScope::Site("site-1".into()), "site-2").unwrap_err().to_string();
        assert!(err.contains("api, db, web depend on each other in a cycle"), "{err}");
        // A group may not depend on itself.
        let mut me = f.state.groups["batch"].spec.clone();
        me.depends_on = vec!["batch".into()];
        assert!(update(&mut f, me).unwrap_err().to_string().contains("depends on itself"));
    }

    #[test]
    fn requests_that_name_nothing_are_refused() {
        let f = busy(1);
        assert!(matches!(plan(&f, MoveScope::Groups(vec![]), "site-2"), Err(Refusal::Invalid(_))));
        assert!(matches!(plan(&f, MoveScope::Groups(vec!["nope".into()]), "site-2"), Err(Refusal::UnknownGroup(_))));
        assert!(matches!(plan(&f, MoveScope::Site("site-1".into()), "site-9"), Err(Refusal::UnknownSite(_))));
        assert!(matches!(plan(&f, MoveScope::Site("site-1".into()), "site-1"), Err(Refusal::Invalid(_))));
        // A frozen group is a no-go line with the freeze's reason, not an error.
        let mut f = busy(1);
        f.report("site-2", 10_000, &[]);
        f.ok(
            "dr-admin:dana",
            Action::SetFreeze { scope: FreezeScope::Group("g00".into()), reason: "audit week".into(), until_ms: None },
        );
        let p = plan(&f, MoveScope::Site("site-1".into()), "site-2").unwrap();
        assert!(!p.go);
        assert!(p.reasons.iter().any(|r| r.starts_with("g00:") && r.contains("audit week")), "{:?}", p.reasons);
    }
}

mod control {
    use super::*;
    use switchyard_core::Control;

    fn control(f: &mut Fed, id: &str, control: Control, reason: &str) -> Result<Applied, Refusal> {
        f.propose(OPERATOR, Action::ControlOperation { id: id.into(), control, reason: reason.into() })
    }

    /// crm-web switching to site-2 with the target healthy: in Verifying.
    fn verifying() -> (Fed, String) {
        let mut f = Fed::new();
        f.report("site-1", 1000, &[("crm-web", 2, 0)]);
        let Applied::OperationStarted { id } = f.start("crm-web", "site-2").unwrap() else { panic!() };
        f.report("site-2", 1000, &[("crm-web", 2, 0)]);
        f.tick(100);
        assert_eq!(f.op(&id).phase, Phase::Verifying);
        (f, id)
    }

    #[test]
    fn a_paused_operation_takes_no_step_and_paused_time_counts_for_nothing() {
        let (mut f, id) = verifying();
        f.tick(1_000);
        control(&mut f, &id, Control::Pause, "CAB asked to hold").unwrap();
        assert!(operation_blocker(&f.state, f.op(&id), f.now, &f.cfg).starts_with("paused by operator:alice"));
        // Far past the verify window and the scale-up timeout: nothing moves while paused.
        assert!(f.tick(f.cfg.scale_up_timeout_ms * 2).is_empty());
        assert_eq!((f.op(&id).phase, f.op(&id).outcome), (Phase::Verifying, Outcome::Running));
        assert_eq!(f.state.groups["crm-web"].placement.active_sites(), vec!["site-1"]);
        let err = control(&mut f, &id, Control::Pause, "again").unwrap_err().to_string();
        assert!(err.contains("already paused (by operator:alice: CAB asked to hold)"), "{err}");
        f.report("site-2", 1000, &[("crm-web", 2, 0)]);
        f.report("site-1", 1000, &[("crm-web", 2, 0)]);
        control(&mut f, &id, Control::Resume, "CAB says go").unwrap();
        // 1 s of the verify window was served before the pause; 2 s remain, not zero.
        assert!(f.tick(1_000).is_empty(), "the paused time did not count towards the verify window");
        f.tick(f.cfg.verify_window_ms);
        assert_eq!(f.op(&id).phase, Phase::Draining);
        assert!(control(&mut f, &id, Control::Resume, "x").unwrap_err().to_string().contains("not paused"));
        let actions: Vec<String> = f.state.audit.records().iter().map(|r| r.action.clone()).collect();
        assert!(actions.contains(&"switchover.paused".into()) && actions.contains(&"switchover.resumed".into()));
    }

    #[test]
    fn abort_before_traffic_moved_puts_the_target_back_and_frees_the_group() {
        let (mut f, id) = verifying();
        control(&mut f, &id, Control::Abort, "wrong change window").unwrap();
        let op = f.op(&id);
        assert_eq!(op.outcome, Outcome::Aborted);
        assert!(op.error.as_deref().unwrap().contains("aborted by operator:alice: wrong change window"));
        let g = &f.state.groups["crm-web"];
        assert!(g.operation.is_none());
        assert_eq!(g.placement.active_sites(), vec!["site-1"], "still serving from the source");
        assert!(!g.placement.sites.contains_key("site-2"), "the target is back to nothing");
        assert_eq!(desired_for_site(&f.state, "site-1", f.now).groups[0].apps[0].instances, 2);
        assert!(f.tick(10_000).is_empty());
        f.report("site-1", 1000, &[("crm-web", 2, 0)]);
        f.report("site-2", 1000, &[]);
        assert!(f.start("crm-web", "site-2").is_ok(), "the group may move again");
    }

    #[test]
    fn abort_after_traffic_moved_leaves_the_group_serving_on_the_target() {
        let (mut f, id) = verifying();
        f.tick(f.cfg.verify_window_ms);
        assert_eq!(f.op(&id).phase, Phase::Draining);
        control(&mut f, &id, Control::Abort, "stop here").unwrap();
        let g = &f.state.groups["crm-web"];
        assert_eq!(g.placement.active_sites(), vec!["site-2"]);
        assert_eq!(desired_for_site(&f.state, "site-1", f.now).groups[0].apps[0].instances, 2, "source kept");
        assert_eq!(desired_for_site(&f.state, "site-2", f.now).groups[0].apps[0].instances, 2);
        assert!(f.tick(60_000).is_empty(), "nothing scales down after the abort");
        // A finished operation can be neither paused nor aborted again.
        let err = control(&mut f, &id, Control::Abort, "again").unwrap_err().to_string();
        assert!(err.contains("is aborted; only a running operation can be aborted"), "{err}");
        // Moving back is an ordinary switchover (what `fedctl switchover rollback` starts).
        f.report("site-1", 1000, &[("crm-web", 2, 0)]);
        assert!(f.start("crm-web", "site-1").is_ok());
    }

    #[test]
    fn rollback_aborts_what_still_runs_and_moves_back_what_had_moved() {
        use switchyard_core::engine::rollback_actions;
        let kinds = |actions: Vec<Action>| -> Vec<String> {
            actions
                .iter()
                .map(|a| match a {
                    Action::ControlOperation { control, .. } => format!("{control:?}"),
                    Action::StartSwitchover { to, .. } => format!("back to {to}"),
                    other => format!("{other:?}"),
                })
                .collect()
        };
        // Running, traffic not moved: the abort alone puts the target back.
        let (mut f, id) = verifying();
        assert_eq!(kinds(rollback_actions(f.op(&id), "undo").unwrap()), ["Abort"]);
        // Running, traffic moved: abort, then a switchover back.
        f.tick(f.cfg.verify_window_ms);
        assert_eq!(kinds(rollback_actions(f.op(&id), "undo").unwrap()), ["Abort", "back to site-1"]);
        // Applied in that order, the group ends up moving back to site-1.
        f.report("site-1", 1000, &[("crm-web", 2, 0)]);
        f.report("site-2", 1000, &[("crm-web", 2, 0)]);
        for action in rollback_actions(f.op(&id), "undo").unwrap() {
            f.ok(OPERATOR, action);
        }
        let back = f.state.groups["crm-web"].operation.clone().expect("a rollback switchover runs");
        assert_eq!((f.op(&back).from.as_str(), f.op(&back).to.as_str()), ("site-2", "site-1"));
        // Ended before traffic moved: nothing to undo; and a reason is always required.
        let (mut f, id) = verifying();
        control(&mut f, &id, Control::Abort, "stop").unwrap();
        let err = rollback_actions(f.op(&id), "undo").unwrap_err().to_string();
        assert!(err.contains("already where it found it"), "{err}");
        assert!(rollback_actions(f.op(&id), " ").unwrap_err().to_string().contains("reason is required"));
    }

    #[test]
    fn control_requests_need_a_reason_and_a_known_operation() {
        let (mut f, id) = verifying();
        let before = f.state.clone();
        assert!(matches!(control(&mut f, "op-999", Control::Pause, "x"), Err(Refusal::UnknownOperation(_))));
        assert!(control(&mut f, &id, Control::Abort, "  ").unwrap_err().to_string().contains("a reason is required"));
        assert!(same_except_index(&before, &f.state));
    }
}

#[test]
fn an_engine_step_decided_before_a_pause_does_not_land_after_it() {
    let mut f = Fed::new();
    f.report("site-1", 1000, &[("crm-web", 2, 0)]);
    let Applied::OperationStarted { id } = f.start("crm-web", "site-2").unwrap() else { panic!() };
    // The leader decides a timeout failure, but an operator's pause is committed first.
    let late = Action::FailOperation { id: id.clone(), at: Phase::ScalingUp, error: "target not healthy".into() };
    f.ok(
        OPERATOR,
        Action::ControlOperation { id: id.clone(), control: switchyard_core::Control::Pause, reason: "hold".into() },
    );
    let err = f.propose("system", late).unwrap_err();
    assert!(matches!(&err, Refusal::StalePhase { actual, .. } if actual == "paused"), "{err}");
    let late =
        Action::AdvanceOperation { id: id.clone(), from: Phase::ScalingUp, to: Phase::Verifying, detail: "x".into() };
    assert!(matches!(f.propose("system", late), Err(Refusal::StalePhase { .. })));
    let op = f.op(&id);
    assert_eq!((op.outcome, op.phase, op.paused.is_some()), (Outcome::Running, Phase::ScalingUp, true));
    // Resumed, the engine decides afresh.
    f.ok(
        OPERATOR,
        Action::ControlOperation { id: id.clone(), control: switchyard_core::Control::Resume, reason: "go".into() },
    );
    f.report("site-2", 1000, &[("crm-web", 2, 0)]);
    f.tick(100);
    assert_eq!(f.op(&id).phase, Phase::Verifying);
}

#[path = "switchover/evacuation.rs"]
mod evacuation;

#[path = "switchover/ramp.rs"]
mod ramp;

#[path = "switchover/approval.rs"]
mod approval;

#[path = "switchover/windows.rs"]
mod windows;

#[path = "switchover/drills.rs"]
mod drills;

#[path = "switchover/dr.rs"]
mod dr;

#[path = "switchover/dr_policy.rs"]
mod dr_policy;

#[path = "switchover/dr_failback.rs"]
mod dr_failback;

#[path = "switchover/dr_group.rs"]
mod dr_group;

#[path = "switchover/batch.rs"]
mod batch;
