//! Move planning on a large federation: 50 sites × 5,000 groups (100 groups per site, two apps
//! each), every cell reporting two nodes per group's worth of room. Acceptance target: a plan
//! in at most 1 s in release.
//!
//! Run: `cargo bench -p switchyard-core --bench plan`
//!
//! Times (median and best of several runs): evacuating one site (its 100 groups) to another;
//! planning one group; planning 1,000 groups (ten sites' worth) into one target.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use switchyard_core::engine::EngineConfig;
use switchyard_core::model::{AppSpec, GroupSpec, HealthSpec, Resources, SiteSpec};
use switchyard_core::plan::{MoveScope, PlanEstimates, plan_moves};
use switchyard_core::{Action, AppReport, CellReport, GroupReport, InstanceReport, NodeReport, Proposal, State};

const SITES: usize = 50;
const GROUPS: usize = 5_000;
const RUNS: usize = 5;
const TARGET: Duration = Duration::from_secs(1);

fn app(name: &str) -> AppSpec {
    AppSpec {
        name: name.into(),
        command: "sample-app".into(),
        args: vec![],
        env: BTreeMap::new(),
        instances: 2,
        resources: Resources { cpu_millis: 100, mem_mib: 128, disk_mib: 0 },
        health: HealthSpec { http_path: "/health".into(), ..Default::default() },
        readiness: None,
        depends_on: vec![],
        constraints: vec![],
        upgrade: Default::default(),
        autoscale: None,
        metrics: Default::default(),
    }
}

fn federation() -> State {
    let mut state = State::default();
    let mut index = 0;
    let mut apply = |state: &mut State, action: Action| {
        index += 1;
        state.apply(index, &Proposal::new(1_000, "bench", action)).expect("applies");
    };
    for s in 0..SITES {
        let spec = SiteSpec {
            name: format!("site-{s:02}"),
            ingress: vec![format!("10.{s}.0.1").parse().unwrap()],
            labels: BTreeMap::new(),
        };
        apply(&mut state, Action::RegisterSite(spec));
    }
    let per_site = GROUPS / SITES;
    for g in 0..GROUPS {
        let name = format!("g{g:04}");
        let spec = GroupSpec {
            name: name.clone(),
            dns_name: name.clone(),
            dns_aliases: vec![],
            ttl_s: 30,
            tier: (g % 3) as u32,
            home_site: format!("site-{:02}", g / per_site),
            tenant: String::new(),
            depends_on: vec![],
            ramp: Default::default(),
            apps: vec![app("web"), app("api")],
        };
        apply(&mut state, Action::RegisterGroup(spec));
    }
    for s in 0..SITES {
        let site = format!("site-{s:02}");
        let groups: BTreeMap<String, GroupReport> = (s * per_site..(s + 1) * per_site)
            .map(|g| {
                let name = format!("g{g:04}");
                let apps = ["web", "api"]
                    .iter()
                    .map(|a| {
                        let instances = (0..2)
                            .map(|i| InstanceReport {
                                task_id: format!("{name}.{a}.{i}"),
                                running: true,
                                healthy: true,
                                ..Default::default()
                            })
                            .collect();
                        (a.to_string(), AppReport { desired: 2, instances, blocker: String::new() })
                    })
                    .collect();
                (name, GroupReport { applied_epoch: 1, apps })
            })
            .collect();
        // Room for every group of one more site: 400 instances of 100 millicores over 20 nodes.
        let nodes = (0..40)
            .map(|n| NodeReport {
                node_id: format!("{site}-n{n}"),
                address: "10.0.0.1".into(),
                capacity: Resources { cpu_millis: 4_000, mem_mib: 65_536, disk_mib: 0 },
                allocated: Resources { cpu_millis: if n < 20 { 2_000 } else { 0 }, mem_mib: 0, disk_mib: 0 },
                healthy: true,
                unschedulable: false,
            })
            .collect();
        let report = CellReport { site: site.clone(), applied_epoch: state.max_epoch(), nodes, groups };
        index += 1;
        state.apply(index, &Proposal::new(1_000, format!("cell:{site}"), Action::CellReport(report))).expect("report");
    }
    state
}

fn time(label: &str, state: &State, scope: &MoveScope, to: &str) -> Duration {
    let cfg = EngineConfig::default();
    let mut runs = Vec::new();
    let mut last = None;
    for _ in 0..RUNS {
        let t = Instant::now();
        let plan = plan_moves(state, scope, to, 1_000, &cfg, &PlanEstimates::default()).expect("plans");
        runs.push(t.elapsed());
        last = Some(plan);
    }
    runs.sort();
    let plan = last.unwrap();
    let ok = plan.groups.iter().filter(|g| g.refusal.is_none()).count();
    println!(
        "{label:<40} median {:>8.1} ms  best {:>8.1} ms  ({} groups, {ok} go, plan {})",
        runs[RUNS / 2].as_secs_f64() * 1e3,
        runs[0].as_secs_f64() * 1e3,
        plan.groups.len(),
        if plan.go { "GO" } else { "NO-GO" }
    );
    runs[RUNS / 2]
}

fn main() {
    let t = Instant::now();
    let state = federation();
    println!("{SITES} sites, {GROUPS} groups (2 apps × 2 instances each) built in {:.1} s", t.elapsed().as_secs_f64());
    let evac = time("evacuate site-00 (100 groups) to site-01", &state, &MoveScope::Site("site-00".into()), "site-01");
    time("one group to site-01", &state, &MoveScope::Groups(vec!["g0000".into()]), "site-01");
    let thousand: Vec<String> = (100..1_100).map(|g| format!("g{g:04}")).collect();
    time("1,000 groups into site-00", &state, &MoveScope::Groups(thousand), "site-00");
    println!(
        "target: an evacuation plan in ≤ {} ms — {}",
        TARGET.as_millis(),
        if evac <= TARGET { "met" } else { "NOT met" }
    );
}
