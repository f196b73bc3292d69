//! One scheduling pass of a cell at scale: the real `schedule::plan` the cell master runs (per-app
//! deployment steps, the DRF offer cycle across roles, constraint-aware placement), on a
//! synthetic site of 5,000 nodes, 100 roles (groups) and 50,000 instances with constraints.
//!
//! Run: `cargo bench -p switchyard-dc-agent --bench schedule_pass`
//!
//! Reports, each the median of several runs:
//! - the first pass from an empty site (every instance placed): time and placements/s;
//! - launching those 50,000 placements on 5,000 simulated executors (the `dc-agent node
//!   --simulate` executor) until every one reports running and healthy;
//! - a converged pass (50,000 tasks, nothing to do): what every reconcile tick costs;
//! - a rolling-upgrade pass of one 100-instance app (the others untouched).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use switchyard_cell_core::constraints::Constraint;
use switchyard_cell_core::deploy::UpgradeStrategy;
use switchyard_cell_core::seeded::SeededRng as Rng;
use switchyard_dc_agent::model::Resources;
use switchyard_dc_agent::schedule::{AppDemand, GroupDemand, Input, NodeView, Plan, Quotas, TaskPhase, TaskView, plan};

const NODES: usize = 5_000;
const GROUPS: usize = 100;
const APPS_PER_GROUP: usize = 5;
const INSTANCES_PER_APP: u32 = 100;
const RUNS: usize = 5;

fn nodes() -> Vec<NodeView> {
    (0..NODES)
        .map(|i| NodeView {
            id: format!("node-{i:04}"),
            healthy: true,
            reachable: true,
            draining: false,
            capacity: Resources::new(32_000, 131_072, 0),
            port_min: 31_000,
            port_max: 31_999,
            attributes: BTreeMap::from([
                ("rack".to_string(), format!("rack-{:03}", i / 25)),
                ("zone".to_string(), format!("zone-{}", ["a", "b", "c"][(i / 25) % 3])),
            ]),
        })
        .collect()
}

fn demand(rng: &mut Rng, version: &str) -> Vec<GroupDemand> {
    (0..GROUPS)
        .map(|g| GroupDemand {
            group: format!("group-{g:03}"),
            apps: (0..APPS_PER_GROUP)
                .map(|a| {
                    let constraints = match rng.below(4) {
                        0 => vec![Constraint::parse("hostname:UNIQUE").unwrap()],
                        1 => vec![Constraint::parse("zone:GROUP_BY:3").unwrap()],
                        2 => vec![Constraint::parse("rack:MAX_PER:5").unwrap()],
                        _ => vec![],
                    };
                    AppDemand {
                        app: format!("app-{a}"),
                        role: format!("group-{g:03}"),
                        instances: INSTANCES_PER_APP,
                        resources: Resources::new(100 + 100 * rng.below(4), 128 + 128 * rng.below(4), 0),
                        version: version.to_string(),
                        upgrade: UpgradeStrategy::default(),
                        constraints,
                        depends_on: vec![],
                    }
                })
                .collect(),
        })
        .collect()
}

/// Turns a plan's starts into running, healthy, ready tasks.
fn running(plan: &Plan) -> Vec<TaskView> {
    plan.start
        .iter()
        .enumerate()
        .map(|(i, s)| TaskView {
            task_id: format!("{}.{}.{i}", s.group, s.app),
            group: s.group.clone(),
            app: s.app.clone(),
            role: s.role.clone(),
            node_id: s.node_id.clone(),
            port: s.port,
            resources: s.resources,
            seq: i as u64,
            version: s.version.clone(),
            phase: TaskPhase::Running { healthy: Some(true) },
            ready: true,
            stopping: false,
        })
        .collect()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let nodes = nodes();
    let quotas = Quotas::default();
    let want = demand(&mut Rng(7), "v1");
    let total = (GROUPS * APPS_PER_GROUP) as u32 * INSTANCES_PER_APP;
    let run = |tasks: &[TaskView], demand: &[GroupDemand]| {
        plan(&Input { nodes: &nodes, tasks, demand, quotas: &quotas, filters: &[], now_ms: 1 })
    };

    let mut first = Vec::new();
    let mut placed = None;
    for _ in 0..RUNS {
        let t = Instant::now();
        let p = run(&[], &want);
        first.push(t.elapsed());
        placed = Some(p);
    }
    let placed = placed.expect("ran");
    assert!(placed.blockers.is_empty(), "the synthetic site has room: {:?}", placed.blockers.first());
    assert_eq!(placed.start.len() as u32, total);
    let first = median(first);
    println!(
        "first pass, {total} instances on {NODES} nodes, {GROUPS} roles: median {:.1} ms ({:.0} placements/s)",
        first.as_secs_f64() * 1e3,
        f64::from(total) / first.as_secs_f64()
    );

    launch_on_simulated_nodes(&placed);

    let tasks = running(&placed);
    let mut steady = Vec::new();
    for _ in 0..RUNS {
        let t = Instant::now();
        let p = run(&tasks, &want);
        steady.push(t.elapsed());
        assert!(p.is_empty(), "a converged site plans nothing");
    }
    println!("converged pass, {} tasks: median {:.1} ms", tasks.len(), median(steady).as_secs_f64() * 1e3);

    let mut upgraded = want.clone();
    upgraded[0].apps[0].version = "v2".into();
    let mut upgrade = Vec::new();
    for _ in 0..RUNS {
        let t = Instant::now();
        let p = run(&tasks, &upgraded);
        upgrade.push(t.elapsed());
        assert_eq!(p.start.len() as u32, INSTANCES_PER_APP, "maximumOverCapacity 1: all replacements at once");
    }
    println!("rolling-upgrade pass of one app: median {:.1} ms", median(upgrade).as_secs_f64() * 1e3);
}

/// Hands every node its task list, as the cell does, and waits until the simulated executors
/// report every task running and healthy.
fn launch_on_simulated_nodes(placed: &Plan) {
    use switchyard_dc_agent::node::executor::TaskExecutor;
    use switchyard_dc_agent::node::sim::{SimExecutor, SimTiming};
    use switchyard_proto::common::v1::TaskState;
    use switchyard_proto::node::v1::TaskSpec;

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let mut per_node: BTreeMap<&str, Vec<TaskSpec>> = BTreeMap::new();
    for (i, s) in placed.start.iter().enumerate() {
        per_node.entry(s.node_id.as_str()).or_default().push(TaskSpec {
            task_id: format!("{}.{}.{i}", s.group, s.app),
            group: s.group.clone(),
            app: s.app.clone(),
            command: "sh".into(),
            port: u32::from(s.port),
            version: s.version.clone(),
            ..Default::default()
        });
    }
    let timing = SimTiming { start: Duration::from_millis(10), ..SimTiming::default() };
    let mut runs = Vec::new();
    for _ in 0..RUNS {
        let took = rt.block_on(async {
            let executors: Vec<(SimExecutor, Vec<TaskSpec>)> =
                per_node.values().map(|tasks| (SimExecutor::new(timing, None), tasks.clone())).collect();
            let t = Instant::now();
            for (e, tasks) in &executors {
                e.apply(tasks.clone()).await;
            }
            loop {
                let up: usize = executors
                    .iter()
                    .map(|(e, _)| {
                        e.board()
                            .snapshot()
                            .iter()
                            .filter(|s| s.state == TaskState::Running as i32 && s.healthy)
                            .count()
                    })
                    .sum();
                if up == placed.start.len() {
                    break t.elapsed();
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        runs.push(took);
    }
    println!(
        "launch on {} simulated nodes: {} tasks running after median {:.1} ms (start delay {} ms)",
        per_node.len(),
        placed.start.len(),
        median(runs).as_secs_f64() * 1e3,
        timing.start.as_millis()
    );
}
