//! Control-plane benchmarks of the core, in release:
//!
//! - **Move planning** on a large federation: 50 sites × 5,000 groups (100 groups per site, two
//!   apps of two instances each), every cell reporting 40 nodes (the last site 120) with its
//!   instances spread over them. Times `plan_moves` (median and best of five) for evacuating
//!   the busiest site to another, one group, 1,000 groups into the large site (room for all of
//!   them: GO), and 1,000 groups into a site with room for 300 (NO-GO). Target: a plan in at
//!   most 1 s.
//! - **An evacuation driven to the end**: 1,000 one-app groups (mixed tiers, ten dependency
//!   chains) evacuated from site-1 to site-2 of a three-site federation, with concurrency 50
//!   and 1,000. A loop plays the leader and the cells: it jumps a simulated clock by one TTL
//!   (1 s), runs `decide`, applies every action as the next log entry, then has every site's
//!   simulated cell report exactly what its placement asks, all healthy (one report per site
//!   per round). The wall clock runs from the start proposal to the evacuation's success, so
//!   instance start-up, verify windows and TTL waits (clock jumps) are not in it. Target: at
//!   most 5 s.
//!
//! Run: `cargo bench -p switchyard-core --bench plan`; `-- plan` or `-- evacuate` runs one part.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use switchyard_core::engine::{EngineConfig, decide};
use switchyard_core::model::{AppSpec, GroupSpec, HealthSpec, Resources, SiteSpec};
use switchyard_core::plan::{MoveScope, PlanEstimates, plan_moves, scope_order};
use switchyard_core::{
    Action, AppReport, Applied, CellReport, GroupReport, InstanceReport, NodeReport, Outcome, Proposal, SYSTEM_ACTOR,
    State,
};

const CONFIG: &str = "system:config";
const OPERATOR: &str = "operator:bench";

// The federation and its simulated cells.

/// What a site's simulated cell runs on.
struct Cell {
    /// The site's position, for addresses.
    number: usize,
    nodes: usize,
    node_size: Resources,
}

/// A federation driven the way the federator drives it: every change is the next log entry,
/// applied with `State::apply` at the simulated leader time `now_ms`.
struct Fed {
    state: State,
    index: u64,
    now_ms: u64,
    cells: BTreeMap<String, Cell>,
}

impl Fed {
    fn new() -> Self {
        Fed { state: State::default(), index: 0, now_ms: 1_000_000, cells: BTreeMap::new() }
    }

    fn apply(&mut self, actor: &str, action: Action) -> Applied {
        self.index += 1;
        match self.state.apply(self.index, &Proposal::new(self.now_ms, actor, action)) {
            Ok(applied) => applied,
            Err(refusal) => panic!("log entry {} refused: {refusal}", self.index),
        }
    }

    fn add_site(&mut self, name: &str, nodes: usize, node_size: Resources) {
        let number = self.cells.len();
        let spec = SiteSpec {
            name: name.into(),
            ingress: vec![format!("10.{number}.0.1").parse().expect("an address")],
            labels: BTreeMap::new(),
        };
        self.apply(CONFIG, Action::RegisterSite(spec));
        self.cells.insert(name.into(), Cell { number, nodes, node_size });
    }

    fn add_group(&mut self, spec: GroupSpec) {
        self.apply(CONFIG, Action::RegisterGroup(spec));
    }

    /// What `site`'s simulated cell reports: every instance its placement asks for, running and
    /// healthy at the group's current epoch, the instances of each group on consecutive nodes.
    fn cell_report(&self, site: &str) -> CellReport {
        let cell = &self.cells[site];
        let mut nodes: Vec<NodeReport> = (0..cell.nodes)
            .map(|n| NodeReport {
                node_id: format!("{site}-n{n:03}"),
                address: format!("10.{}.{}.{}", cell.number, 1 + n / 200, 1 + n % 200),
                capacity: cell.node_size,
                allocated: Resources::default(),
                healthy: true,
                unschedulable: false,
            })
            .collect();
        let mut groups = BTreeMap::new();
        for (ordinal, g) in self.state.groups.values().enumerate() {
            let Some(share) = g.placement.sites.get(site).filter(|s| s.total_instances() > 0) else { continue };
            let mut apps = BTreeMap::new();
            for app in &g.spec.apps {
                let want = share.instances.get(&app.name).copied().unwrap_or(0);
                let instances = (0..want)
                    .map(|i| {
                        let count = nodes.len();
                        let node = &mut nodes[(ordinal + i as usize) % count];
                        node.allocated = node.allocated.plus(app.resources);
                        InstanceReport {
                            task_id: format!("{}.{}.{i}", g.spec.name, app.name),
                            node_id: node.node_id.clone(),
                            address: node.address.clone(),
                            port: 8_000 + i,
                            running: true,
                            healthy: true,
                            ..Default::default()
                        }
                    })
                    .collect();
                apps.insert(app.name.clone(), AppReport { desired: want, instances, blocker: String::new() });
            }
            groups.insert(
                g.spec.name.clone(),
                GroupReport { applied_epoch: g.placement.epoch, apps, replication_lag_ms: None },
            );
        }
        CellReport { site: site.into(), applied_epoch: self.state.max_epoch(), nodes, groups }
    }

    fn report(&mut self, site: &str) {
        let report = self.cell_report(site);
        self.apply(&format!("cell:{site}"), Action::CellReport(report));
    }

    fn report_all(&mut self) {
        let sites: Vec<String> = self.cells.keys().cloned().collect();
        sites.iter().for_each(|site| self.report(site));
    }
}

/// An app of `instances` instances of 100 millicores and 128 MiB each.
fn app(name: &str, instances: u32) -> AppSpec {
    AppSpec {
        name: name.into(),
        command: "sample-app".into(),
        args: vec![],
        env: BTreeMap::new(),
        instances,
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

/// A group of tier 0 with a TTL of 30 s and no dependencies.
fn group(name: &str, home_site: &str, apps: Vec<AppSpec>) -> GroupSpec {
    GroupSpec {
        name: name.into(),
        dns_name: name.into(),
        dns_aliases: vec![],
        ttl_s: 30,
        tier: 0,
        home_site: home_site.into(),
        tenant: String::new(),
        depends_on: vec![],
        ramp: Default::default(),
        failover: Default::default(),
        warm_standby: Default::default(),
        apps,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT met" }
}

// Move planning: 50 sites × 5,000 groups.

const PLAN_SITES: usize = 50;
const PLAN_GROUPS: usize = 5_000;
const PLAN_RUNS: usize = 5;
const PLAN_TARGET: Duration = Duration::from_secs(1);
const PLAN_NODE: Resources = Resources { cpu_millis: 4_000, mem_mib: 65_536, disk_mib: 0 };
/// Each site's 400 instances leave its 40 nodes room for 300 more groups.
const PLAN_NODES: usize = 40;
/// The last site's 120 nodes have room for 1,000 more groups (400,000 millicores).
const LARGE_SITE_NODES: usize = 120;

fn planning_federation() -> Fed {
    let mut fed = Fed::new();
    let sites: Vec<String> = (0..PLAN_SITES).map(|s| format!("site-{s:02}")).collect();
    for (s, site) in sites.iter().enumerate() {
        fed.add_site(site, if s + 1 == PLAN_SITES { LARGE_SITE_NODES } else { PLAN_NODES }, PLAN_NODE);
    }
    let per_site = PLAN_GROUPS / PLAN_SITES;
    for g in 0..PLAN_GROUPS {
        let apps = vec![app("web", 2), app("api", 2)];
        fed.add_group(GroupSpec { tier: (g % 3) as u32, ..group(&format!("g{g:04}"), &sites[g / per_site], apps) });
    }
    fed.report_all();
    fed
}

/// The site most groups take traffic on (the first by name on a tie), and their number.
fn busiest_site(state: &State) -> (String, usize) {
    let mut on: BTreeMap<&str, usize> = BTreeMap::new();
    for site in state.groups.values().flat_map(|g| g.placement.active_sites()) {
        *on.entry(site).or_default() += 1;
    }
    let (site, n) = on.into_iter().rev().max_by_key(|(_, n)| *n).expect("groups take traffic somewhere");
    (site.to_string(), n)
}

/// Median and best of `PLAN_RUNS` calls of `f`, and its last result.
fn measure<T>(mut f: impl FnMut() -> T) -> (Duration, Duration, T) {
    let mut runs = Vec::new();
    let mut last = None;
    for _ in 0..PLAN_RUNS {
        let t = Instant::now();
        let out = f();
        runs.push(t.elapsed());
        last = Some(out);
    }
    runs.sort();
    (runs[PLAN_RUNS / 2], runs[0], last.expect("ran at least once"))
}

fn time_plan(label: &str, fed: &Fed, scope: &MoveScope, to: &str) -> Duration {
    let cfg = EngineConfig::default();
    let (median, best, plan) =
        measure(|| plan_moves(&fed.state, scope, to, fed.now_ms, &cfg, &PlanEstimates::default()).expect("plans"));
    let go = plan.groups.iter().filter(|g| g.refusal.is_none()).count();
    println!(
        "{label:<48} median {:>8.1} ms  best {:>8.1} ms  ({} groups, {go} go, plan {})",
        ms(median),
        ms(best),
        plan.groups.len(),
        if plan.go { "GO" } else { "NO-GO" }
    );
    median
}

fn bench_planning() {
    let t = Instant::now();
    let fed = planning_federation();
    println!(
        "{PLAN_SITES} sites, {PLAN_GROUPS} groups (2 apps × 2 instances each) built in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let (busiest, n) = busiest_site(&fed.state);
    let to = fed.state.sites.keys().find(|s| **s != busiest).expect("another site").clone();
    let large = format!("site-{:02}", PLAN_SITES - 1);
    let thousand = MoveScope::Groups((100..1_100).map(|g| format!("g{g:04}")).collect());
    let medians = [
        time_plan(&format!("evacuate {busiest} ({n} groups) to {to}"), &fed, &MoveScope::Site(busiest), &to),
        time_plan(&format!("one group to {to}"), &fed, &MoveScope::Groups(vec!["g0000".into()]), &to),
        time_plan(&format!("1,000 groups into {large} (room for all)"), &fed, &thousand, &large),
        time_plan("1,000 groups into site-00 (room for 300)", &fed, &thousand, "site-00"),
    ];
    // Part of both 1,000-group plans: putting the named groups in dependency order.
    let (median, best, _) = measure(|| scope_order(&fed.state, &thousand, &large).expect("orders"));
    println!(
        "{:<48} median {:>8.1} ms  best {:>8.1} ms",
        "  of which ordering them (scope_order)",
        ms(median),
        ms(best)
    );
    let slowest = medians.iter().max().expect("four plans");
    println!("target: every plan in ≤ {} ms — {}", PLAN_TARGET.as_millis(), verdict(*slowest <= PLAN_TARGET));
}

// An evacuation of 1,000 groups, driven to the end with simulated cells.

const EVAC_GROUPS: usize = 1_000;
const EVAC_RUNS: usize = 3;
const EVAC_TARGET: Duration = Duration::from_secs(5);
/// Every site: 50 nodes of 8 cores, twice what all 1,000 groups (1,999 instances) need.
const EVAC_NODES: usize = 50;
const EVAC_NODE: Resources = Resources { cpu_millis: 8_000, mem_mib: 32_768, disk_mib: 0 };
/// The simulated clock's jump per round: one TTL (every group's is 1 s; no verify window and
/// no drain time), so each round's `decide` finds every wait of the previous round over.
const ROUND_MS: u64 = 1_000;
const MAX_ROUNDS: usize = 1_000;

/// 1,000 groups on site-1 of sites 1-3: one app of 1-3 instances, tiers 0-3, and ten chains
/// of five groups (g0000 ← g0001 ← … ← g0004, g0100 ← … ← g0104, …), each depending on the
/// one before.
fn evacuation_federation() -> Fed {
    let mut fed = Fed::new();
    for site in ["site-1", "site-2", "site-3"] {
        fed.add_site(site, EVAC_NODES, EVAC_NODE);
    }
    for i in 0..EVAC_GROUPS {
        let depends_on = if (1..5).contains(&(i % 100)) { vec![format!("g{:04}", i - 1)] } else { vec![] };
        let apps = vec![app("web", 1 + (i % 3) as u32)];
        fed.add_group(GroupSpec {
            ttl_s: 1,
            tier: (i % 4) as u32,
            depends_on,
            ..group(&format!("g{i:04}"), "site-1", apps)
        });
    }
    fed.report_all();
    fed
}

/// Where one evacuation's wall time went, and what it applied.
#[derive(Default)]
struct EvacuationRun {
    /// From the start proposal to the evacuation's success.
    wall: Duration,
    /// Applying `StartEvacuation`: preflight and reservation of every group.
    start: Duration,
    decide: Duration,
    /// Applying the engine's actions (after the start).
    steps: Duration,
    /// Applying cell reports.
    reports: Duration,
    /// The simulated cells building their reports (executor work, not the control plane's).
    cells: Duration,
    engine_entries: usize,
    report_entries: usize,
    rounds: usize,
}

impl EvacuationRun {
    fn entries(&self) -> usize {
        1 + self.engine_entries + self.report_entries
    }

    fn control_plane(&self) -> Duration {
        self.wall - self.cells
    }
}

fn evacuate(concurrency: u32) -> EvacuationRun {
    let mut fed = evacuation_federation();
    let cfg = EngineConfig { verify_window_ms: 0, drain_ms: 0, ..EngineConfig::default() };
    let sites: Vec<String> = fed.cells.keys().cloned().collect();
    let mut run = EvacuationRun::default();
    let clock = Instant::now();
    let start = Action::StartEvacuation {
        from: Some("site-1".into()),
        groups: vec![],
        to: "site-2".into(),
        reason: "bench: power work".into(),
        plan: String::new(),
        concurrency,
        failure_budget: 1,
        rollback_of: String::new(),
    };
    let Applied::OperationStarted { id } = fed.apply(OPERATOR, start) else { panic!("no evacuation started") };
    run.start = clock.elapsed();
    loop {
        run.rounds += 1;
        let evacuation = &fed.state.evacuations[&id];
        assert!(run.rounds <= MAX_ROUNDS, "not done after {MAX_ROUNDS} rounds: {:?}", evacuation.counts(&fed.state));
        fed.now_ms += ROUND_MS;
        let t = Instant::now();
        let actions = decide(&fed.state, fed.now_ms, &cfg);
        run.decide += t.elapsed();
        let t = Instant::now();
        run.engine_entries += actions.len();
        for action in actions {
            fed.apply(SYSTEM_ACTOR, action);
        }
        run.steps += t.elapsed();
        if !fed.state.evacuations[&id].is_running() {
            break;
        }
        for site in &sites {
            let t = Instant::now();
            let report = fed.cell_report(site);
            run.cells += t.elapsed();
            let t = Instant::now();
            fed.apply(&format!("cell:{site}"), Action::CellReport(report));
            run.reports += t.elapsed();
            run.report_entries += 1;
        }
    }
    run.wall = clock.elapsed();
    let evacuation = &fed.state.evacuations[&id];
    assert_eq!(evacuation.outcome, Outcome::Succeeded, "{:?}", evacuation.error);
    assert_eq!(evacuation.groups.len(), EVAC_GROUPS);
    for g in fed.state.groups.values() {
        assert_eq!(g.placement.active_sites(), vec!["site-2"], "{} did not move", g.spec.name);
    }
    run
}

fn bench_evacuation() {
    println!(
        "evacuation of {EVAC_GROUPS} groups site-1 → site-2, {EVAC_NODES} nodes per site, simulated cells \
         (median of {EVAC_RUNS} runs)"
    );
    let mut worst = Duration::ZERO;
    for concurrency in [50, 1_000] {
        let mut runs: Vec<EvacuationRun> = (0..EVAC_RUNS).map(|_| evacuate(concurrency)).collect();
        runs.sort_by_key(|r| r.wall);
        let best = runs[0].wall;
        let r = &runs[runs.len() / 2];
        worst = worst.max(r.wall);
        println!(
            "concurrency {concurrency:>5}: wall {:>7.1} ms (best {:>7.1} ms); {} log entries (the start, {} engine \
             actions, {} reports) in {} rounds; {:.0} µs of control plane per entry",
            ms(r.wall),
            ms(best),
            r.entries(),
            r.engine_entries,
            r.report_entries,
            r.rounds,
            r.control_plane().as_secs_f64() * 1e6 / r.entries() as f64,
        );
        println!(
            "    start {:.1} ms, decide {:.1} ms, engine entries {:.1} ms, report entries {:.1} ms; \
             simulated cells building reports {:.1} ms (control plane {:.1} ms)",
            ms(r.start),
            ms(r.decide),
            ms(r.steps),
            ms(r.reports),
            ms(r.cells),
            ms(r.control_plane()),
        );
    }
    println!(
        "target: a {EVAC_GROUPS}-group evacuation in ≤ {} s of wall time — {}",
        EVAC_TARGET.as_secs(),
        verdict(worst <= EVAC_TARGET)
    );
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument picks the parts whose name it is in.
    let filters: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let wanted = |part: &str| filters.is_empty() || filters.iter().any(|f| part.contains(f.as_str()));
    if wanted("plan") {
        bench_planning();
    }
    if wanted("evacuate") {
        bench_evacuation();
    }
}
