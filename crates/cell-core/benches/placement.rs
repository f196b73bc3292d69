//! Placement throughput on a synthetic cell: 5,000 nodes, 500 apps, 50,000 instances with a mix
//! of constraints. Acceptance target: at least 50,000 placements/s in release.
//!
//! Run: `cargo bench -p switchyard-cell-core --bench placement`
//!
//! Three ways to place the same workload, each timed over several runs (median and best):
//! - one plan with all 500 requests;
//! - app by app on one `Placer` (books kept between plans, as the cell master does);
//! - app by app with `plan_placement` from scratch each time, feeding every plan's placements
//!   back as running tasks (a stateless caller; bookkeeping outside the timed calls).
//!
//! All three must produce the same placements; the bench checks that before printing.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use switchyard_cell_core::constraints::Constraint;
use switchyard_cell_core::model::{Node, NodeState, PortRange, Resources};
use switchyard_cell_core::placement::{Placed, PlacementPlan, PlacementRequest, Placer, RunningTask, plan_placement};

use switchyard_cell_core::seeded::SeededRng as Rng;

const NODES: usize = 5_000;
const NODES_PER_RACK: usize = 25;
const APPS: usize = 500;
const INSTANCES: u32 = 50_000;
const TARGET_PER_S: f64 = 50_000.0;
const RUNS: usize = 5;
const STATELESS_RUNS: usize = 3;

fn cluster(rng: &mut Rng) -> Vec<Node> {
    (0..NODES)
        .map(|i| {
            let rack = i / NODES_PER_RACK;
            let size = 1 + rng.below(3);
            let mut attributes = BTreeMap::from([
                ("hostname".to_string(), format!("host-{i:04}.dc1")),
                ("rack".to_string(), format!("rack-{rack:03}")),
                ("zone".to_string(), format!("zone-{}", ["a", "b", "c"][rack % 3])),
                ("disk".to_string(), if rng.below(10) < 6 { "ssd" } else { "hdd" }.to_string()),
                (
                    "tier".to_string(),
                    ["general", "general", "general", "memory", "gpu"][rng.below(5) as usize].to_string(),
                ),
            ]);
            if rng.below(2) == 0 {
                attributes.insert("kernel".to_string(), "6.1".to_string());
            }
            let mut reserved = BTreeMap::new();
            if rng.below(20) == 0 {
                reserved.insert("batch".to_string(), Resources::new(2_000, 4_096, 0));
            }
            let state = match rng.below(200) {
                0 | 1 => NodeState::Draining,
                2 => NodeState::Lost,
                _ => NodeState::Up,
            };
            Node {
                id: format!("node-{i:04}"),
                attributes,
                total: Resources::new(4_000 * size, 16_384 * size, 500_000),
                ports: vec![PortRange { min: 31_000, max: 32_000 }],
                reserved,
                state,
            }
        })
        .collect()
}

fn requests(rng: &mut Rng) -> Vec<PlacementRequest> {
    let mix: [&[&str]; 10] = [
        &["hostname:UNIQUE"],
        &["hostname:UNIQUE"],
        &["zone:GROUP_BY"],
        &["zone:GROUP_BY:3"],
        &["rack:MAX_PER:2"],
        &["disk:LIKE:ssd"],
        &["zone:GROUP_BY", "hostname:UNIQUE"],
        &["tier:LIKE:general|memory", "rack:MAX_PER:3"],
        &[],
        &[],
    ];
    let mut out = Vec::with_capacity(APPS);
    for pair in 0..APPS / 2 {
        // Pairs of apps with 100 ± d instances: 500 apps, exactly 50,000 instances.
        let d = rng.below(81) as u32;
        for (k, count) in [100 + d, 100 - d].into_iter().enumerate() {
            let i = pair * 2 + k;
            out.push(PlacementRequest {
                app: format!("app-{i:03}"),
                role: if i % 17 == 0 { "batch" } else { "web" }.to_string(),
                resources: Resources::new(100 + 50 * rng.below(19), 128 * (1 + rng.below(16)), 1_024),
                ports: rng.below(3) as u32,
                constraints: mix[i % mix.len()]
                    .iter()
                    .map(|c| Constraint::parse(c).expect("valid constraint"))
                    .collect(),
                count,
            });
        }
    }
    assert_eq!(out.iter().map(|r| r.count).sum::<u32>(), INSTANCES);
    out
}

fn as_running(request: &PlacementRequest, placed: &[Placed], next_id: &mut usize) -> Vec<RunningTask> {
    placed
        .iter()
        .map(|p| {
            *next_id += 1;
            RunningTask {
                id: format!("task-{next_id}"),
                app: p.app.clone(),
                role: request.role.clone(),
                node: p.node.clone(),
                resources: request.resources,
                ports: p.ports.clone(),
            }
        })
        .collect()
}

struct Timing {
    runs: Vec<Duration>,
}

impl Timing {
    fn median(&self) -> Duration {
        let mut sorted = self.runs.clone();
        sorted.sort();
        sorted[sorted.len() / 2]
    }

    fn best(&self) -> Duration {
        *self.runs.iter().min().expect("at least one run")
    }
}

fn rate(placements: usize, d: Duration) -> f64 {
    placements as f64 / d.as_secs_f64()
}

fn report(name: &str, t: &Timing, placements: usize) {
    println!(
        "{name:<34} median {:>9.1} ms {:>12.0} placements/s | best {:>9.1} ms {:>12.0} placements/s",
        t.median().as_secs_f64() * 1e3,
        rate(placements, t.median()),
        t.best().as_secs_f64() * 1e3,
        rate(placements, t.best()),
    );
}

fn main() {
    let mut rng = Rng(0x5317_c4a1);
    let nodes = cluster(&mut rng);
    let requests = requests(&mut rng);
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());

    // 1. Everything in one plan.
    let mut one_plan = Timing { runs: Vec::new() };
    let mut whole = PlacementPlan::default();
    for _ in 0..RUNS {
        let start = Instant::now();
        whole = plan_placement(&nodes, &[], &requests);
        one_plan.runs.push(start.elapsed());
    }

    // 2. App by app on one placer.
    let mut kept = Timing { runs: Vec::new() };
    let mut by_app = PlacementPlan::default();
    for _ in 0..RUNS {
        by_app = PlacementPlan::default();
        let start = Instant::now();
        let mut placer = Placer::new(&nodes, &[]);
        for request in &requests {
            let plan = placer.plan(std::slice::from_ref(request));
            by_app.placed.extend(plan.placed);
            by_app.unplaced.extend(plan.unplaced);
        }
        kept.runs.push(start.elapsed());
    }

    // 3. App by app, rebuilt from nodes + running tasks every time.
    let mut stateless = Timing { runs: Vec::new() };
    let mut rebuilt = PlacementPlan::default();
    for _ in 0..STATELESS_RUNS {
        rebuilt = PlacementPlan::default();
        let mut running: Vec<RunningTask> = Vec::with_capacity(INSTANCES as usize);
        let mut next_id = 0;
        let mut spent = Duration::ZERO;
        for request in &requests {
            let start = Instant::now();
            let plan = plan_placement(&nodes, &running, std::slice::from_ref(request));
            spent += start.elapsed();
            running.extend(as_running(request, &plan.placed, &mut next_id));
            rebuilt.placed.extend(plan.placed);
            rebuilt.unplaced.extend(plan.unplaced);
        }
        stateless.runs.push(spent);
    }

    assert_eq!(whole, by_app, "one plan and app-by-app plans on one placer must agree");
    assert_eq!(whole, rebuilt, "a placer rebuilt from running tasks must decide the same");

    let placed = whole.placed.len();
    let unplaced: u32 = whole.unplaced.iter().map(|u| u.count).sum();
    let mut counts: BTreeMap<&str, u32> = BTreeMap::new();
    for p in &whole.placed {
        *counts.entry(p.node.as_str()).or_default() += 1;
    }
    let per_node: Vec<u32> = counts.into_values().collect();
    let up = nodes.iter().filter(|n| n.accepts_new_tasks()).count();
    let capacity = nodes.iter().filter(|n| n.accepts_new_tasks()).fold(Resources::ZERO, |acc, n| acc.plus(n.total));
    let booked = requests.iter().fold(Resources::ZERO, |acc, r| {
        let short = whole.unplaced.iter().find(|u| u.app == r.app).map_or(0, |u| u.count);
        acc.plus(r.resources.times(u64::from(r.count - short)))
    });

    println!(
        "placement bench: {NODES} nodes ({up} up, {} racks, 3 zones), {APPS} apps, {INSTANCES} instances requested",
        NODES / NODES_PER_RACK
    );
    println!("constraint mix per 10 apps: 2 hostname:UNIQUE, 1 zone:GROUP_BY, 1 zone:GROUP_BY:3, 1 rack:MAX_PER:2,");
    println!("  1 disk:LIKE:ssd, 1 zone:GROUP_BY+hostname:UNIQUE, 1 tier:LIKE+rack:MAX_PER:3, 2 none");
    println!("nproc: {nproc}; runs: {RUNS} ({STATELESS_RUNS} for the stateless mode)");
    println!(
        "placed {placed}, unplaced {unplaced} ({} requests short); nodes used {}, instances per used node {}..{}",
        whole.unplaced.len(),
        per_node.len(),
        per_node.iter().min().unwrap_or(&0),
        per_node.iter().max().unwrap_or(&0),
    );
    println!(
        "booked of up capacity: cpu {:.0}%, mem {:.0}%",
        100.0 * booked.cpu_millis as f64 / capacity.cpu_millis as f64,
        100.0 * booked.mem_mib as f64 / capacity.mem_mib as f64,
    );
    if let Some(u) = whole.unplaced.first() {
        println!("first unplaced reason: {}", u.reason);
    }
    report("one plan, 500 requests", &one_plan, placed);
    report("app by app, one Placer", &kept, placed);
    report("app by app, rebuilt each plan", &stateless, placed);

    let achieved = rate(placed, one_plan.median());
    let verdict = if achieved >= TARGET_PER_S { "PASS" } else { "MISS" };
    println!(
        "verdict: {verdict}: one plan places {achieved:.0}/s (median), {:.1}x the {TARGET_PER_S:.0}/s target; \
         app by app {:.0}/s on one Placer, {:.0}/s rebuilt each plan",
        achieved / TARGET_PER_S,
        rate(placed, kept.median()),
        rate(placed, stateless.median()),
    );
}
