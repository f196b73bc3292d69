//! The simulated federation and the seeded driver: it starts replicas, cells and DNS servers,
//! injects faults and operations step by step, checks every invariant after every step, then
//! heals everything and requires convergence.

use std::collections::BTreeMap;
use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::BasicNode;
use rand08::Rng;
use rand08::SeedableRng;
use rand08::rngs::StdRng;
use switchyard_core::dr::detect::{DetectConfig, Detector};
use switchyard_core::engine::EngineConfig;
use switchyard_core::model::{AppSpec, GroupSpec, HealthSpec, Resources, SiteSpec};
use switchyard_core::{Action, Applied, Control, FreezeScope};
use switchyard_federator::raft::{NodeId, Raft, storage_on};

use crate::disk::MemDisk;
use crate::invariants::{self, Ack, DrTruth, Interval, Observed, ReplicaView};
use crate::net::{Cut, EPOCH_MS, Factory, Net, PROBE_TIMEOUT, ReplicaHandle};
use crate::parts::{
    ExecutorConfig, SimCell, SimDns, WriteError, cell_loop, dns_loop, dns_observer, executor, propose_via,
    replica_observer,
};

/// Length of one step of virtual time.
pub const STEP: Duration = Duration::from_millis(100);
/// The operator's endpoint on the simulated network.
const OPERATOR: u64 = 90;

#[derive(Clone, Debug)]
pub struct Options {
    pub replicas: u64,
    pub sites: usize,
    pub groups: usize,
    /// Steps with faults and operations.
    pub steps: u32,
    /// Steps after healing within which everything must converge.
    pub converge_steps: u32,
    pub faults: bool,
    /// The disaster-recovery family: observers probe the sites, the leader declares sites down
    /// and fails their groups over; faults kill whole sites, cut only the federators off from
    /// a site, and flap sites.
    pub dr: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options { replicas: 3, sites: 3, groups: 4, steps: 300, converge_steps: 400, faults: true, dr: false }
    }
}

/// Detection in the disaster-recovery family: a short window so that runs exercise it.
pub fn dr_detect() -> DetectConfig {
    DetectConfig { window_ms: 2_500, quorum: 2, stale_ms: 1_500 }
}

/// How far a replica's clock may be off in the disaster-recovery family (the detection window
/// is measured on the leader's clock, so a larger jump would shorten it beyond what the
/// no-false-failover check can tell from a real bug).
pub const DR_SKEW_MS: i64 = 250;
/// The largest message delay the fault generator sets.
const MAX_DELAY_MS: u64 = 300;

/// A run that finished with every invariant holding.
#[derive(Clone, Debug)]
pub struct Summary {
    pub seed: u64,
    pub virtual_ms: u64,
    pub acked_writes: usize,
    pub operations_started: usize,
    pub operations_succeeded: usize,
    pub operations_rolled_back: usize,
    pub crashes: u32,
    pub partitions: u32,
    pub log_index: u64,
    /// Log entries the replicas' write paths proposed, and the writes they carried (more
    /// writes than entries: some entries were batches).
    pub write_entries: u64,
    pub writes_in_entries: u64,
    /// How the operator's writes ended.
    pub write_outcomes: BTreeMap<String, u32>,
    /// Digest of the event trace and the final committed state: equal for equal seeds.
    pub digest: u64,
    /// The event trace the digest covers (to find where two runs of one seed parted).
    pub trace: Vec<String>,
    /// The disaster-recovery family's counts (all zero without `--dr`).
    pub dr: DrSummary,
}

/// What the disaster-recovery family exercised in one run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DrSummary {
    /// Whole sites (cell, ingress and DNS server) killed, and brought back before the heal.
    pub site_kills: u32,
    pub site_revivals: u32,
    pub flaps: u32,
    /// Federator-only cuts (replicas from one site, the site's DNS server still reaching it),
    /// those that answered "unreachable" (the federator domain saw the site unhealthy), and
    /// those during which the site stayed up and nothing declared it.
    pub federator_cuts: u32,
    pub federator_cuts_unreachable: u32,
    pub federator_cuts_quiet: u32,
    /// Committed automatic declarations, failovers started by the system, brake trips (from the
    /// audit chain), and sites reclaimed by the operator.
    pub declarations: u32,
    pub failovers: u32,
    pub brake_trips: u32,
    pub reclaims: u32,
    /// At the end, groups still served by a declared-down site, by the guard rail holding them.
    pub held: BTreeMap<String, u32>,
}

/// An invariant that did not hold.
#[derive(Clone, Debug)]
pub struct Violation {
    pub seed: u64,
    pub step: u32,
    pub invariant: &'static str,
    pub detail: String,
    pub trace_tail: Vec<String>,
    pub options: Options,
}

impl Violation {
    /// The command that replays this run.
    pub fn replay_command(&self) -> String {
        let o = &self.options;
        format!(
            "cargo run -p switchyard-sim --release -- --seed {} --steps {} --replicas {} --groups {}{}{}",
            self.seed,
            o.steps,
            o.replicas,
            o.groups,
            if o.faults { "" } else { " --no-faults" },
            if o.dr { " --dr" } else { "" }
        )
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "seed {}: invariant {:?} broken at step {}: {}",
            self.seed, self.invariant, self.step, self.detail
        )?;
        writeln!(f, "last events:")?;
        for line in &self.trace_tail {
            writeln!(f, "  {line}")?;
        }
        write!(f, "replay: {}", self.replay_command())
    }
}

fn site_spec(i: usize) -> SiteSpec {
    SiteSpec {
        name: format!("site-{}", (b'a' + i as u8) as char),
        ingress: vec![std::net::IpAddr::from([127, 0, 20, i as u8 + 1])],
        labels: BTreeMap::new(),
    }
}

pub(crate) fn group_spec(i: usize, home: &str) -> GroupSpec {
    GroupSpec {
        name: format!("g{i}"),
        dns_name: format!("g{i}"),
        dns_aliases: vec![],
        ttl_s: 1,
        tier: 1,
        home_site: home.to_string(),
        tenant: String::new(),
        depends_on: vec![],
        // Odd groups move their traffic in two steps, so runs cover split traffic.
        ramp: if i % 2 == 1 {
            switchyard_core::model::TrafficRamp { steps: vec![50, 100], max_unhealthy_percent: 0 }
        } else {
            Default::default()
        },
        failover: Default::default(),
        warm_standby: Default::default(),
        apps: vec![AppSpec {
            name: "web".into(),
            command: "sample-app".into(),
            args: vec![],
            env: BTreeMap::new(),
            instances: 2,
            resources: Resources { cpu_millis: 500, mem_mib: 256, disk_mib: 0 },
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

struct Replica {
    disk: MemDisk,
    skew_ms: i64,
    running: Option<(Raft, Vec<tokio::task::JoinHandle<()>>)>,
}

/// A federator-only cut of one site, while it lasts or once healed.
struct CutEpisode {
    site: usize,
    kind: Cut,
    start: u64,
    end: Option<u64>,
}

/// A site flapping: its cell (and ingress) goes down and up every `period` steps until `until`.
struct Flap {
    site: usize,
    period: u32,
    until: u32,
}

pub struct World {
    seed: u64,
    opts: Options,
    rng: StdRng,
    net: Net,
    raft_config: Arc<openraft::Config>,
    engine: EngineConfig,
    sites: Vec<SiteSpec>,
    groups: Vec<GroupSpec>,
    replicas: BTreeMap<NodeId, Replica>,
    cells: Vec<Arc<Mutex<SimCell>>>,
    dns: Vec<Arc<Mutex<SimDns>>>,
    acks: Arc<Mutex<Vec<Ack>>>,
    /// Every (group, source, target) of a traffic ramp any replica has committed so far: a
    /// DNS server may serve a split table from a replica that has since crashed.
    ramps: Mutex<std::collections::BTreeSet<(String, String, String)>>,
    /// Operator writes refused (with the refusal's first words), lost or sent to no leader.
    outcomes: Arc<Mutex<BTreeMap<String, u32>>>,
    trace: Vec<String>,
    writes: u64,
    /// Entries and writes of the write paths of replicas that have crashed since.
    crashed_write_counts: (u64, u64),
    crashes: u32,
    partitions: u32,
    step: u32,
    /// Ground truth of the disaster-recovery family (its intervals, in virtual ms).
    truth: DrTruth,
    /// Whether each site is killed as a whole (cell and DNS server).
    killed: Vec<bool>,
    flap: Option<Flap>,
    cuts: Vec<CutEpisode>,
    stats: DrSummary,
}

impl World {
    pub fn new(seed: u64, opts: Options) -> Self {
        let raft_config = openraft::Config {
            cluster_name: "sim".into(),
            heartbeat_interval: 50,
            election_timeout_min: 150,
            election_timeout_max: 300,
            // Small, so snapshots are built, logs purged and lagging replicas catch up by snapshot.
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(60),
            max_in_snapshot_log_to_keep: 10,
            purge_batch_size: 1,
            ..Default::default()
        }
        .validate()
        .expect("raft config");
        let sites: Vec<SiteSpec> = (0..opts.sites).map(site_spec).collect();
        let groups = (0..opts.groups).map(|i| group_spec(i, &sites[i % sites.len()].name)).collect();
        World {
            seed,
            rng: StdRng::seed_from_u64(seed),
            net: Net::new(seed),
            raft_config: Arc::new(raft_config),
            engine: EngineConfig {
                verify_window_ms: 500,
                drain_ms: 300,
                scale_up_timeout_ms: 8_000,
                scale_down_timeout_ms: 8_000,
                guard: Default::default(),
            },
            sites,
            groups,
            replicas: BTreeMap::new(),
            cells: Vec::new(),
            dns: Vec::new(),
            acks: Arc::new(Mutex::new(Vec::new())),
            ramps: Mutex::new(Default::default()),
            outcomes: Arc::new(Mutex::new(BTreeMap::new())),
            trace: Vec::new(),
            writes: 0,
            crashed_write_counts: (0, 0),
            crashes: 0,
            partitions: 0,
            step: 0,
            truth: DrTruth {
                detect: dr_detect(),
                guard: Default::default(),
                skew_bound_ms: DR_SKEW_MS as u64,
                // An observation is stamped when it reaches the replica: a DNS server's first
                // probe waits for the others and for the reports to the replicas before it.
                latency_ms: PROBE_TIMEOUT.as_millis() as u64 * opts.sites as u64
                    + opts.replicas * 2 * MAX_DELAY_MS
                    + 200,
                dead: (0..opts.sites).map(|i| (site_spec(i).name, Vec::new())).collect(),
                unreachable: (0..opts.sites).map(|i| (site_spec(i).name, Vec::new())).collect(),
                now_ms: 0,
            },
            killed: vec![false; opts.sites],
            flap: None,
            cuts: Vec::new(),
            stats: DrSummary::default(),
            opts,
        }
    }

    fn ingresses(&self) -> Vec<(String, u64)> {
        self.sites.iter().enumerate().map(|(i, s)| (s.name.clone(), 40 + i as u64)).collect()
    }

    fn log(&mut self, event: String) {
        let line = format!("{:>7} ms  {event}", self.net.elapsed_ms());
        self.trace.push(line);
    }

    fn ids(&self) -> Vec<NodeId> {
        (1..=self.opts.replicas).collect()
    }

    async fn start_replica(&mut self, id: NodeId) {
        let r = self.replicas.get(&id).expect("replica");
        // The previous incarnation's storage closes once its tasks have stopped.
        for _ in 0..100 {
            if !r.disk.is_open() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (log, sm) = storage_on(r.disk.open()).expect("storage opens");
        let shared = sm.shared();
        let factory = Factory { from: id, net: self.net.clone() };
        let raft = Raft::new(id, self.raft_config.clone(), factory, log, sm).await.expect("raft starts");
        let skew_ms = r.skew_ms;
        {
            let mut s = self.net.lock();
            s.down.insert(id, false);
            let detector = Arc::new(Mutex::new(Detector::default()));
            // The federator's default batching, with the simulated writers' own timeout.
            let tuning = switchyard_federator::config::RaftTuning::default();
            let limits = switchyard_federator::batch::Limits {
                in_flight: tuning.writes_in_flight,
                per_entry: tuning.max_writes_per_entry,
                timeout: crate::parts::WRITE_TIMEOUT,
            };
            let writes = switchyard_federator::batch::Writes::start(raft.clone(), limits);
            s.replicas.insert(id, ReplicaHandle { id, raft: raft.clone(), shared, skew_ms, detector, writes });
        }
        let cfg = ExecutorConfig {
            engine: self.engine.clone(),
            sites: self.sites.clone(),
            groups: self.groups.clone(),
            detect: self.opts.dr.then(dr_detect),
        };
        let mut tasks = vec![tokio::spawn(executor(self.net.clone(), id, cfg))];
        if self.opts.dr {
            tasks.push(tokio::spawn(replica_observer(self.net.clone(), id, self.ingresses())));
        }
        self.replicas.get_mut(&id).expect("replica").running = Some((raft, tasks));
    }

    async fn crash_replica(&mut self, id: NodeId) {
        let Some((raft, exec)) = self.replicas.get_mut(&id).and_then(|r| r.running.take()) else { return };
        {
            let mut s = self.net.lock();
            if let Some(h) = s.replicas.remove(&id) {
                let (entries, writes) = h.writes.counts();
                self.crashed_write_counts.0 += entries;
                self.crashed_write_counts.1 += writes;
            }
            s.down.insert(id, true);
        }
        for task in exec {
            task.abort();
        }
        let _ = raft.shutdown().await;
        self.crashes += 1;
    }

    async fn setup(&mut self) {
        for id in self.ids() {
            self.replicas.insert(id, Replica { disk: MemDisk::default(), skew_ms: 0, running: None });
            self.start_replica(id).await;
        }
        let members: BTreeMap<NodeId, BasicNode> =
            self.ids().into_iter().map(|id| (id, BasicNode { addr: format!("sim-{id}") })).collect();
        let first = self.replicas[&1].running.as_ref().expect("running").0.clone();
        first.initialize(members).await.expect("initialise");
        let replicas = self.ids();
        for (i, site) in self.sites.iter().enumerate() {
            let cell = Arc::new(Mutex::new(SimCell::new(&site.name, 40 + i as u64, i)));
            tokio::spawn(cell_loop(self.net.clone(), cell.clone(), replicas.clone()));
            self.cells.push(cell);
            let dns = Arc::new(Mutex::new(SimDns::new(&site.name, 60 + i as u64)));
            tokio::spawn(dns_loop(self.net.clone(), dns.clone(), replicas.clone()));
            if self.opts.dr {
                tokio::spawn(dns_observer(self.net.clone(), dns.clone(), self.ingresses(), replicas.clone()));
            }
            self.dns.push(dns);
        }
    }

    fn endpoints(&self) -> Vec<u64> {
        let mut e = self.ids();
        e.extend((0..self.sites.len()).map(|i| 40 + i as u64));
        e.extend((0..self.sites.len()).map(|i| 60 + i as u64));
        e.push(OPERATOR);
        e
    }

    async fn inject_fault(&mut self) {
        let roll = self.rng.gen_range(0..1000);
        let ids = self.ids();
        if self.opts.dr && roll >= 145 {
            self.inject_site_fault(roll);
            return;
        }
        match roll {
            0..10 => {
                let up: Vec<NodeId> = ids.iter().copied().filter(|i| self.replicas[i].running.is_some()).collect();
                if let Some(&id) = up.get(self.rng.gen_range(0..up.len().max(1))) {
                    self.log(format!("crash replica {id}"));
                    self.crash_replica(id).await;
                }
            }
            10..50 => {
                let down: Vec<NodeId> = ids.iter().copied().filter(|i| self.replicas[i].running.is_none()).collect();
                if let Some(&id) = down.get(self.rng.gen_range(0..down.len().max(1))) {
                    self.log(format!("restart replica {id}"));
                    self.start_replica(id).await;
                }
            }
            50..60 => {
                let mut sides = BTreeMap::new();
                for e in self.endpoints() {
                    sides.insert(e, self.rng.gen_range(0..2u8));
                }
                let cut: Vec<u64> = sides.iter().filter(|(_, s)| **s == 1).map(|(e, _)| *e).collect();
                self.log(format!("partition {cut:?} from the rest"));
                self.net.lock().side = sides;
                self.partitions += 1;
            }
            60..90 => {
                self.log("heal partition".into());
                self.net.lock().side.clear();
            }
            90..100 => {
                let loss = self.rng.gen_range(0..200);
                self.log(format!("message loss {loss} per mille"));
                self.net.lock().loss_permille = loss;
            }
            100..120 => {
                self.log("no message loss".into());
                self.net.lock().loss_permille = 0;
            }
            120..135 => {
                let delay = if self.rng.gen_range(0..10) == 0 {
                    self.rng.gen_range(100..300)
                } else {
                    self.rng.gen_range(1..60)
                };
                self.log(format!("delays up to {delay} ms"));
                self.net.lock().max_delay_ms = delay;
            }
            135..145 => {
                let id = ids[self.rng.gen_range(0..ids.len())];
                let bound = if self.opts.dr { DR_SKEW_MS } else { 3_000 };
                let skew = self.rng.gen_range(-bound..=bound);
                self.log(format!("clock of replica {id} off by {skew} ms"));
                self.replicas.get_mut(&id).expect("replica").skew_ms = skew;
                if let Some(h) = self.net.lock().replicas.get_mut(&id) {
                    h.skew_ms = skew;
                }
            }
            145..155 => {
                let i = self.rng.gen_range(0..self.cells.len());
                let mut c = self.cells[i].lock().expect("cell lock");
                let ep = c.endpoint;
                let now_up = !c.up;
                if now_up {
                    c.up = true;
                } else {
                    c.crash();
                }
                drop(c);
                self.net.lock().down.insert(ep, !now_up);
                self.log(format!("cell {i} {}", if now_up { "restarted" } else { "crashed" }));
            }
            155..165 => {
                let i = self.rng.gen_range(0..self.dns.len());
                let mut d = self.dns[i].lock().expect("dns lock");
                let ep = d.endpoint;
                let now_up = !d.up;
                if now_up {
                    d.up = true;
                } else {
                    d.crash();
                }
                drop(d);
                self.net.lock().down.insert(ep, !now_up);
                self.log(format!("dns {i} {}", if now_up { "restarted" } else { "crashed" }));
            }
            _ => {}
        }
    }

    /// The disaster-recovery family's faults on sites: a cell (the site's ingress with it) or a
    /// DNS server alone crashes or restarts; a whole site is killed or comes back; the
    /// federator replicas alone are cut off from a site (its DNS server still reaches it), by a
    /// blackhole or by an "unreachable" answer; such cuts heal; a site starts flapping.
    fn inject_site_fault(&mut self, roll: u32) {
        let n = self.sites.len();
        let i = self.rng.gen_range(0..n);
        let killed: Vec<usize> = (0..n).filter(|k| self.killed[*k]).collect();
        // Mostly one site dead at a time; two at once (which trips the brake) now and then.
        let another_dead = !killed.is_empty() && self.rng.gen_range(0..4) != 0;
        match roll {
            145..150 if !self.killed[i] => {
                let up = !self.cells[i].lock().expect("cell lock").up;
                self.set_cell(i, up);
                self.log(format!("cell {i} {}", if up { "restarted" } else { "crashed" }));
            }
            150..155 if !self.killed[i] => {
                let up = !self.dns[i].lock().expect("dns lock").up;
                self.set_dns(i, up);
                self.log(format!("dns {i} {}", if up { "restarted" } else { "crashed" }));
            }
            155..163 if !self.killed[i] && !another_dead => {
                if self.flap.as_ref().is_some_and(|f| f.site == i) {
                    self.flap = None;
                }
                self.killed[i] = true;
                self.set_cell(i, false);
                self.set_dns(i, false);
                self.stats.site_kills += 1;
                self.log(format!("kill site {i} (cell, ingress and DNS server)"));
            }
            163..180 if !killed.is_empty() => {
                let i = killed[i % killed.len()];
                self.killed[i] = false;
                self.set_cell(i, true);
                self.set_dns(i, true);
                self.stats.site_revivals += 1;
                self.log(format!("site {i} comes back"));
            }
            180..188 if !self.cuts.iter().any(|c| c.site == i && c.end.is_none()) => {
                let kind = if self.rng.gen_range(0..2) == 0 { Cut::Blackhole } else { Cut::Unreachable };
                {
                    let mut net = self.net.lock();
                    for r in self.ids() {
                        for ep in [40 + i as u64, 60 + i as u64] {
                            net.cuts.insert((r.min(ep), r.max(ep)), kind);
                        }
                    }
                }
                let start = self.net.elapsed_ms();
                self.cuts.push(CutEpisode { site: i, kind, start, end: None });
                self.stats.federator_cuts += 1;
                if kind == Cut::Unreachable {
                    self.stats.federator_cuts_unreachable += 1;
                }
                self.log(format!("cut the replicas off from site {i} ({kind:?}); its DNS server still reaches it"));
            }
            188..205 if self.cuts.iter().any(|c| c.end.is_none()) => {
                self.heal_cuts();
                self.log("heal federator-only cuts".into());
            }
            205..211 if self.flap.is_none() && !self.killed[i] => {
                let period = self.rng.gen_range(1..=4);
                let steps = self.rng.gen_range(20..60);
                self.flap = Some(Flap { site: i, period, until: self.step + steps });
                self.stats.flaps += 1;
                self.log(format!("site {i} flaps every {} ms for {} ms", period * 100, steps * 100));
            }
            _ => {}
        }
    }

    fn heal_cuts(&mut self) {
        let now = self.net.elapsed_ms();
        for c in self.cuts.iter_mut().filter(|c| c.end.is_none()) {
            c.end = Some(now);
        }
        self.net.lock().cuts.clear();
    }

    /// One step of a flapping site: its cell goes down or up every `period` steps, and is up
    /// once the flapping ends.
    fn flap_step(&mut self) {
        let Some(f) = &self.flap else { return };
        let (site, period, until) = (f.site, f.period, f.until);
        if self.step >= until {
            self.flap = None;
            self.set_cell(site, true);
            self.log(format!("site {site} stops flapping"));
        } else if self.step.is_multiple_of(period) {
            let up = !self.cells[site].lock().expect("cell lock").up;
            self.set_cell(site, up);
        }
    }

    fn set_cell(&mut self, i: usize, up: bool) {
        let mut c = self.cells[i].lock().expect("cell lock");
        if up {
            c.up = true;
        } else {
            c.crash();
        }
        self.net.lock().down.insert(c.endpoint, !up);
    }

    fn set_dns(&mut self, i: usize, up: bool) {
        let mut d = self.dns[i].lock().expect("dns lock");
        if up {
            d.up = true;
        } else {
            d.crash();
        }
        self.net.lock().down.insert(d.endpoint, !up);
    }

    /// Brings the ground truth up to date: since when each site's ingress refuses (its cell is
    /// down) and since when the replicas' path to it answers "unreachable".
    fn sync_truth(&mut self) {
        let now = self.net.elapsed_ms();
        self.truth.now_ms = now;
        for (i, site) in self.sites.iter().enumerate() {
            let dead = !self.cells[i].lock().expect("cell lock").up;
            let unreachable = self.cuts.iter().any(|c| c.site == i && c.end.is_none() && c.kind == Cut::Unreachable);
            for (on, intervals) in [
                (dead, self.truth.dead.get_mut(&site.name).expect("site")),
                (unreachable, self.truth.unreachable.get_mut(&site.name).expect("site")),
            ] {
                let open = intervals.last().is_some_and(|iv| iv.1.is_none());
                if open && !on {
                    intervals.last_mut().expect("open interval").1 = Some(now);
                } else if !open && on {
                    intervals.push(Interval(now, None));
                }
            }
        }
    }

    /// An operator write sent to a random replica, in the background; acknowledged writes are
    /// remembered for the no-lost-decision invariant.
    fn operate(&mut self) {
        let roll = self.rng.gen_range(0..100);
        let group = self.groups[self.rng.gen_range(0..self.groups.len())].name.clone();
        let site = self.sites[self.rng.gen_range(0..self.sites.len())].name.clone();
        self.writes += 1;
        let reason = format!("sim-{}", self.writes);
        let (actor, action) = match roll {
            0..15 => (
                "user:sre",
                Action::StartSwitchover {
                    group: group.clone(),
                    to: site.clone(),
                    reason: reason.clone(),
                    plan: String::new(),
                    rollback_of: String::new(),
                },
            ),
            15..19 => {
                let until = self.net.clock_ms(0) + self.rng.gen_range(500..3_000);
                (
                    "user:dr-admin",
                    Action::SetFreeze {
                        scope: FreezeScope::Group(group.clone()),
                        reason: reason.clone(),
                        until_ms: Some(until),
                    },
                )
            }
            19..23 => (
                "user:dr-admin",
                Action::ClearFreeze { scope: FreezeScope::Group(group.clone()), reason: reason.clone() },
            ),
            23..30 => {
                let instances = self.rng.gen_range(1..=3);
                (
                    "user:sre",
                    Action::ScaleApp {
                        group: group.clone(),
                        app: "web".into(),
                        site: site.clone(),
                        instances,
                        reason: reason.clone(),
                    },
                )
            }
            30..38 => {
                // An operator pauses, resumes or aborts an operation some replica knows of.
                let known: Vec<String> = {
                    let net = self.net.lock();
                    net.replicas
                        .values()
                        .next()
                        .map(|h| h.shared.read(|s| s.operations.keys().cloned().collect()))
                        .unwrap_or_default()
                };
                if known.is_empty() {
                    return;
                }
                let id = known[self.rng.gen_range(0..known.len())].clone();
                let control = match self.rng.gen_range(0..10) {
                    0..4 => Control::Pause,
                    4..8 => Control::Resume,
                    _ => Control::Abort,
                };
                ("user:sre", Action::ControlOperation { id, control, reason: reason.clone() })
            }
            // The disaster-recovery family's operator releases the brake, and takes back a
            // site declared down once it runs again.
            38..42 if self.opts.dr => {
                if !self.first_state(|s| s.brake.is_some()).unwrap_or(false) {
                    return;
                }
                ("user:dr-admin", Action::ReleaseBrake { reason: reason.clone() })
            }
            42..46 if self.opts.dr => {
                let declared =
                    self.first_state(|s| s.down_sites.keys().cloned().collect::<Vec<_>>()).unwrap_or_default();
                let back: Vec<String> = declared
                    .into_iter()
                    .filter(|d| self.sites.iter().position(|s| s.name == *d).is_some_and(|i| !self.killed[i]))
                    .collect();
                if back.is_empty() {
                    return;
                }
                let site = back[self.rng.gen_range(0..back.len())].clone();
                ("user:dr-admin", Action::ReclaimSite { site, reason: reason.clone() })
            }
            _ => return,
        };
        let ids = self.ids();
        let entry = ids[self.rng.gen_range(0..ids.len())];
        self.log(format!("operator -> replica {entry}: {reason} {action:?}").chars().take(160).collect());
        let net = self.net.clone();
        let acks = self.acks.clone();
        let outcomes = self.outcomes.clone();
        tokio::spawn(async move {
            let outcome = match propose_via(&net, OPERATOR, entry, actor, action).await {
                Ok((index, applied)) => {
                    if !matches!(applied, Applied::Unchanged) {
                        acks.lock().expect("acks").push(Ack { index, reason, applied });
                    }
                    "acknowledged".to_string()
                }
                Err(WriteError::Refused(r)) => {
                    format!("refused: {}", r.to_string().split_whitespace().take(4).collect::<Vec<_>>().join(" "))
                }
                Err(WriteError::NotLeader) => "no leader".to_string(),
                Err(WriteError::Lost) => "lost or timed out".to_string(),
            };
            *outcomes.lock().expect("outcomes").entry(outcome).or_default() += 1;
        });
    }

    /// Reads the committed state of some running replica.
    fn first_state<T>(&self, f: impl FnOnce(&switchyard_core::State) -> T) -> Option<T> {
        self.net.lock().replicas.values().next().map(|h| h.shared.read(f))
    }

    fn observe(&self, step: u32) -> Observed {
        let net = self.net.lock();
        let replicas = net
            .replicas
            .values()
            .map(|h| {
                let m = h.raft.metrics().borrow().clone();
                ReplicaView {
                    id: h.id,
                    leader: m.current_leader,
                    term: m.current_term,
                    state: h.shared.read(Clone::clone),
                }
            })
            .collect();
        drop(net);
        let mut ramps = self.ramps.lock().expect("ramps");
        for r in &replicas {
            let r: &ReplicaView = r;
            for op in r.state.operations.values().filter(|op| op.ramp.len() > 1 && op.ramp_step > 0) {
                ramps.insert((op.group.clone(), op.from.clone(), op.to.clone()));
            }
        }
        Observed {
            step,
            ramps: ramps.clone(),
            replicas,
            cells: self.cells.iter().map(|c| invariants::CellView::of(&c.lock().expect("cell lock"))).collect(),
            dns: self.dns.iter().map(|d| invariants::DnsView::of(&d.lock().expect("dns lock"))).collect(),
            acks: self.acks.lock().expect("acks").clone(),
            dr: self.opts.dr.then(|| self.truth.clone()),
        }
    }

    fn violation(&self, step: u32, invariant: &'static str, detail: String) -> Violation {
        let tail = self.trace.iter().rev().take(40).rev().cloned().collect();
        Violation { seed: self.seed, step, invariant, detail, trace_tail: tail, options: self.opts.clone() }
    }

    fn check(&self, step: u32, observed: &Observed) -> Result<(), Box<Violation>> {
        if let Some(p) = take_panics().into_iter().next() {
            return Err(Box::new(self.violation(step, "no panics", p)));
        }
        invariants::check_all(observed).map_err(|(name, detail)| Box::new(self.violation(step, name, detail)))
    }

    async fn heal(&mut self) {
        self.log("heal everything".into());
        {
            let mut s = self.net.lock();
            s.side.clear();
            s.loss_permille = 0;
            s.max_delay_ms = 5;
        }
        for id in self.ids() {
            if self.replicas[&id].running.is_none() {
                self.start_replica(id).await;
            }
        }
        for c in &self.cells {
            let mut c = c.lock().expect("cell lock");
            c.up = true;
            self.net.lock().down.insert(c.endpoint, false);
        }
        for d in &self.dns {
            let mut d = d.lock().expect("dns lock");
            d.up = true;
            self.net.lock().down.insert(d.endpoint, false);
        }
        if self.opts.dr {
            self.heal_cuts();
            self.flap = None;
            self.killed.iter_mut().for_each(|k| *k = false);
            self.sync_truth();
        }
        self.resume_paused();
    }

    /// After the faults, an operator resumes every paused operation, looking for 20 s (a pause
    /// still in flight at the heal can commit later), so that convergence can require every
    /// operation to have finished.
    fn resume_paused(&self) {
        let net = self.net.clone();
        let ids = self.ids();
        tokio::spawn(async move {
            for attempt in 0..40u64 {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let paused: Vec<String> = {
                    let n = net.lock();
                    n.replicas
                        .values()
                        .next()
                        .map(|h| {
                            h.shared.read(|s| {
                                s.operations.values().filter(|o| o.paused.is_some()).map(|o| o.id.clone()).collect()
                            })
                        })
                        .unwrap_or_default()
                };
                // A pause still in flight at the heal may commit later: keep looking.
                for id in paused {
                    let entry = ids[(attempt as usize) % ids.len()];
                    let action =
                        Action::ControlOperation { id, control: Control::Resume, reason: "faults over".into() };
                    let _ = propose_via(&net, OPERATOR, entry, "user:sre", action).await;
                }
            }
        });
    }

    pub async fn run(mut self) -> Result<Summary, Box<Violation>> {
        self.setup().await;
        let total = self.opts.steps + self.opts.converge_steps;
        for step in 0..self.opts.steps {
            self.step = step;
            if self.opts.faults {
                self.inject_fault().await;
            }
            if self.opts.dr {
                self.flap_step();
                self.sync_truth();
            }
            self.operate();
            tokio::time::sleep(STEP).await;
            let observed = self.observe(step);
            self.check(step, &observed)?;
        }
        self.heal().await;
        let mut last = String::new();
        for step in self.opts.steps..total {
            tokio::time::sleep(STEP).await;
            let observed = self.observe(step);
            self.check(step, &observed)?;
            let converged = invariants::convergence::check(&observed)
                .and_then(|()| if self.opts.dr { invariants::failover_convergence::check(&observed) } else { Ok(()) });
            match converged {
                Ok(()) => {
                    if self.opts.dr {
                        invariants::no_false_failover::check_audit(&observed)
                            .map_err(|e| Box::new(self.violation(step, "no false failover", e)))?;
                    }
                    return Ok(self.summary(&observed));
                }
                Err(why) => last = why,
            }
        }
        if std::env::var_os("SIM_DEBUG").is_some() {
            let o = self.observe(total);
            let st = &o.replicas[0].state;
            for op in st.operations.values().filter(|op| op.holds_group() || op.paused.is_some()) {
                eprintln!("DEBUG op {} {:?} {:?} paused={:?}", op.id, op.phase, op.outcome, op.paused);
            }
            for r in st.audit.records().iter().rev().take(12) {
                eprintln!("DEBUG audit {} {} {} {}", r.raft_index, r.action, r.actor, r.reason);
            }
            eprintln!("DEBUG last_applied {:?}", o.replicas.iter().map(|r| r.state.last_applied).collect::<Vec<_>>());
        }
        Err(Box::new(self.violation(total, "convergence", format!("not converged after healing: {last}"))))
    }

    fn summary(&self, o: &Observed) -> Summary {
        let state = &o.replicas[0].state;
        let mut h = DefaultHasher::new();
        self.trace.hash(&mut h);
        state.last_applied.hash(&mut h);
        format!("{state:?}").hash(&mut h);
        let ops = state.operations.values();
        let (write_entries, writes_in_entries) = self
            .net
            .lock()
            .replicas
            .values()
            .map(|h| h.writes.counts())
            .fold(self.crashed_write_counts, |a, b| (a.0 + b.0, a.1 + b.1));
        Summary {
            seed: self.seed,
            virtual_ms: self.net.elapsed_ms(),
            acked_writes: o.acks.len(),
            operations_started: state.operations.len(),
            operations_succeeded: ops.clone().filter(|op| op.outcome == switchyard_core::Outcome::Succeeded).count(),
            operations_rolled_back: ops.filter(|op| op.outcome == switchyard_core::Outcome::Failed).count(),
            crashes: self.crashes,
            partitions: self.partitions,
            log_index: state.last_applied,
            write_entries,
            writes_in_entries,
            write_outcomes: self.outcomes.lock().expect("outcomes").clone(),
            digest: h.finish(),
            trace: self.trace.clone(),
            dr: if self.opts.dr { self.dr_summary(o) } else { DrSummary::default() },
        }
    }
}

impl World {
    /// The disaster-recovery counts of a converged run, from the first replica's audit chain.
    fn dr_summary(&self, o: &Observed) -> DrSummary {
        let state = &o.replicas[0].state;
        let mut out = self.stats.clone();
        let system = |r: &&switchyard_core::audit::AuditRecord| r.actor == switchyard_core::SYSTEM_ACTOR;
        let records = state.audit.records();
        let count = |action: &str| records.iter().filter(system).filter(|r| r.action == action).count() as u32;
        out.declarations = count("site.declared-down");
        out.failovers = count("failover.start");
        out.brake_trips = count("brake.engaged");
        out.reclaims = records.iter().filter(|r| r.action == "site.reclaimed").count() as u32;
        // Real time of each declaration, give or take the clock bound.
        let declared: Vec<(&str, u64)> = records
            .iter()
            .filter(system)
            .filter(|r| r.action == "site.declared-down")
            .map(|r| (r.subject.as_str(), r.time_ms.saturating_sub(EPOCH_MS)))
            .collect();
        let slack = self.truth.detect.window_ms + self.truth.latency_ms + self.truth.skew_bound_ms;
        for c in &self.cuts {
            let end = c.end.unwrap_or(o.dr.as_ref().map_or(0, |t| t.now_ms));
            let name = self.sites[c.site].name.as_str();
            let alive = !self.truth.dead[name].iter().any(|iv| iv.overlaps(c.start, end));
            let declared = declared.iter().any(|(s, t)| *s == name && *t >= c.start && *t <= end + slack);
            if alive && !declared {
                out.federator_cuts_quiet += 1;
            }
        }
        out.held = invariants::failover_convergence::held(state, &self.truth.guard, EPOCH_MS + self.net.elapsed_ms())
            .into_iter()
            .fold(BTreeMap::new(), |mut m, (_, rule)| {
                *m.entry(rule).or_default() += 1;
                m
            });
        out
    }
}

thread_local! {
    /// Panics on this thread during the current run (a replica's task that panics is caught by
    /// the runtime and would otherwise go unnoticed, as it would in a federator process).
    static PANICS: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Whether this thread is inside a run (outside one, panics are reported as usual).
    static IN_RUN: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn record_panics() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let recorded = IN_RUN.try_with(std::cell::Cell::get).unwrap_or(false)
                && PANICS.try_with(|p| p.borrow_mut().push(format!("{info}").replace('\n', " "))).is_ok();
            if !recorded {
                default(info);
            }
        }));
    });
}

fn take_panics() -> Vec<String> {
    PANICS.with(|p| std::mem::take(&mut *p.borrow_mut()))
}

/// Runs one seed on its own single-threaded runtime with virtual time.
pub fn run_seed(seed: u64, opts: &Options) -> Result<Summary, Box<Violation>> {
    record_panics();
    take_panics();
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().expect("runtime");
    switchyard_federator::raft::seed_thread_rng(seed);
    IN_RUN.with(|r| r.set(true));
    // The world is built inside the runtime: its virtual clock starts at the runtime's paused
    // time zero. Built outside, `tokio::time::Instant::now()` reads the real clock, and the
    // real time between building the runtime and the world (longer on a loaded machine)
    // would shift every virtual timestamp of the run.
    let result = rt.block_on(async { World::new(seed, opts.clone()).run().await });
    drop(rt);
    IN_RUN.with(|r| r.set(false));
    result
}
