//! The simulated parts of a federation around the real federator replicas: writes through any
//! replica (forwarded to the leader as the federator does), the leader's operation executor,
//! cells that run what their desired state says and report it, and DNS servers that follow the
//! routing table. Fencing uses the cell's and fed-dns's own rules.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::rr::Name;
use switchyard_core::dr::detect::{DetectConfig, Observation, Subject, Verdict};
use switchyard_core::engine::{EngineConfig, decide_with, validate};
use switchyard_core::model::{GroupSpec, Resources, SiteSpec};
use switchyard_core::report::{AppReport, CellReport, GroupReport, InstanceReport, NodeReport};
use switchyard_core::views::{DesiredView, desired_for_site, routing_table};
use switchyard_core::{Action, Applied, Proposal, Refusal, SYSTEM_ACTOR};
use switchyard_dns::table::{Admission, Table, admit};
use switchyard_federator::convert::{desired_to_proto, routing_to_proto};
use switchyard_federator::raft::NodeId;

use crate::net::{Endpoint, Net, ReplicaHandle};

pub const ZONE: &str = "fed.sim.";
pub(crate) const WRITE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a new instance takes to become healthy.
const STARTUP_MS: u64 = 600;
const CELL_PERIOD: Duration = Duration::from_millis(250);
const DNS_PERIOD: Duration = Duration::from_millis(250);
const EXECUTOR_TICK: Duration = Duration::from_millis(200);

#[derive(Debug)]
pub enum WriteError {
    NotLeader,
    Refused(Refusal),
    /// The request or its answer was lost, or it timed out: the write may or may not be
    /// committed, and the writer does not know.
    Lost,
}

fn is_leader(h: &ReplicaHandle) -> bool {
    h.raft.metrics().borrow().current_leader == Some(h.id)
}

fn leader_of(h: &ReplicaHandle) -> Option<NodeId> {
    h.raft.metrics().borrow().current_leader
}

/// What `Federator::propose_here` does: stamp with this replica's clock, check against the
/// committed state, commit through Raft (through the federator's batching write path).
pub async fn propose_local(
    net: &Net,
    h: &ReplicaHandle,
    actor: &str,
    action: Action,
) -> Result<(u64, Applied), WriteError> {
    if !is_leader(h) {
        return Err(WriteError::NotLeader);
    }
    let proposal = Proposal::new(net.clock_ms(h.skew_ms), actor, action);
    h.shared.read(|s| validate(s, &proposal)).map_err(WriteError::Refused)?;
    match tokio::time::timeout(WRITE_TIMEOUT, h.writes.write(proposal)).await {
        Ok(Ok((Ok(applied), index))) => Ok((index, applied)),
        Ok(Ok((Err(r), _))) => Err(WriteError::Refused(r)),
        Ok(Err(_)) | Err(_) => Err(WriteError::Lost),
    }
}

/// A write from `from` sent to replica `entry`, which forwards it to its leader if it is not
/// the leader itself (one more hop each way).
pub async fn propose_via(
    net: &Net,
    from: Endpoint,
    entry: NodeId,
    actor: &str,
    action: Action,
) -> Result<(u64, Applied), WriteError> {
    if !net.hop(from, entry).await {
        return Err(WriteError::Lost);
    }
    let Some(h) = net.replica(entry) else { return Err(WriteError::Lost) };
    let result = match leader_of(&h) {
        Some(l) if l == entry => propose_local(net, &h, actor, action).await,
        Some(l) => {
            if !net.hop(entry, l).await {
                Err(WriteError::Lost)
            } else if let Some(lh) = net.replica(l) {
                let r = propose_local(net, &lh, actor, action).await;
                if net.hop(l, entry).await { r } else { Err(WriteError::Lost) }
            } else {
                Err(WriteError::Lost)
            }
        }
        None => Err(WriteError::NotLeader),
    };
    if !net.hop(entry, from).await {
        return Err(WriteError::Lost);
    }
    result
}

/// What a replica's executor is configured with (the federator's `[engine]`, `[dr]`, sites and
/// groups).
#[derive(Clone)]
pub struct ExecutorConfig {
    pub engine: EngineConfig,
    pub sites: Vec<SiteSpec>,
    pub groups: Vec<GroupSpec>,
    /// Automatic detection: `None` leaves it off (no site is ever declared down by observers).
    pub detect: Option<DetectConfig>,
}

/// The leader's executor loop (`federator::executor::run`): register the configuration, run a
/// detection round on the replica's own detector, confirm leadership with a quorum, commit the
/// declarations, then ask the pure engine what is due (knowing the suspect sites) and commit it.
pub async fn executor(net: Net, id: NodeId, cfg: ExecutorConfig) {
    let ExecutorConfig { engine, sites, groups, detect } = cfg;
    loop {
        tokio::time::sleep(EXECUTOR_TICK).await;
        let Some(h) = net.replica(id) else { return };
        if !is_leader(&h) {
            continue;
        }
        for site in &sites {
            if h.shared.read(|s| s.sites.get(&site.name).map(|x| &x.spec) != Some(site)) {
                let _ = propose_local(&net, &h, "system:config", Action::RegisterSite(site.clone())).await;
            }
        }
        for group in &groups {
            if h.shared.read(|s| !s.groups.contains_key(&group.name)) {
                let _ = propose_local(&net, &h, "system:config", Action::RegisterGroup(group.clone())).await;
            }
        }
        let (declarations, suspect) = match &detect {
            Some(cfg) => detection_round(&h, net.clock_ms(h.skew_ms), cfg),
            None => Default::default(),
        };
        if !h.shared.read(|s| s.has_work()) && declarations.is_empty() {
            continue;
        }
        match tokio::time::timeout(Duration::from_secs(2), h.raft.ensure_linearizable()).await {
            Ok(Ok(_)) => {}
            _ => continue,
        }
        for action in declarations {
            let _ = propose_local(&net, &h, SYSTEM_ACTOR, action).await;
        }
        let now = net.clock_ms(h.skew_ms);
        let actions = h.shared.read(|s| decide_with(s, now, &engine, &suspect));
        for action in actions {
            let _ = propose_local(&net, &h, SYSTEM_ACTOR, action).await;
        }
    }
}

/// `Federator::detection_round`: a declaration for each site the detector's verdict proves
/// down (not yet declared), and the sites some observer sees unhealthy (never a target).
pub fn detection_round(h: &ReplicaHandle, now: u64, cfg: &DetectConfig) -> (Vec<Action>, BTreeSet<String>) {
    let (sites, declared): (Vec<String>, BTreeSet<String>) =
        h.shared.read(|s| (s.sites.keys().cloned().collect(), s.down_sites.keys().cloned().collect()));
    let detector = h.detector.lock().expect("detector lock");
    let mut declare = Vec::new();
    let mut suspect = BTreeSet::new();
    for site in sites {
        match detector.verdict(&Subject::site(&site), now, cfg) {
            Verdict::Down { evidence } if !declared.contains(&site) => {
                declare.push(Action::DeclareSiteDown { site: site.clone(), evidence, detect: cfg.clone() });
                suspect.insert(site);
            }
            Verdict::Down { .. } | Verdict::Suspect { .. } => {
                suspect.insert(site);
            }
            Verdict::Up { .. } => {}
        }
    }
    (declare, suspect)
}

/// How often observers probe every site (a federator probes each second; scaled down with the
/// detection window).
pub const PROBE_EVERY: Duration = Duration::from_millis(500);
/// The failure domain of every federator replica as an observer (`DrConfig::domain`).
pub const FEDERATOR_DOMAIN: &str = "federator";
/// The failure domain of the DNS servers as observers.
pub const DNS_DOMAIN: &str = "dns";

/// `observe::probe_forever`: replica `id` probes each site's ingress in turn, every
/// [`PROBE_EVERY`], into its own detector, stamped with its own clock.
pub async fn replica_observer(net: Net, id: NodeId, ingresses: Vec<(String, Endpoint)>) {
    loop {
        for (site, ingress) in &ingresses {
            let (health, detail) = net.probe(id, *ingress).await;
            let Some(h) = net.replica(id) else { return };
            let o = Observation {
                observer: format!("federator-{id}"),
                domain: FEDERATOR_DOMAIN.into(),
                subject: Subject::site(site),
                health,
                at_ms: net.clock_ms(h.skew_ms),
                detail: detail.into(),
            };
            h.detector.lock().expect("detector lock").observe(&o);
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
}

/// fed-dns's `observe_forever`: a running DNS server probes each site's ingress in turn, then
/// reports the batch to every replica in turn (`ReportObservations`), each hop over the
/// simulated network; the receiving replica names the observer and stamps its own time.
pub async fn dns_observer(
    net: Net,
    dns: Arc<Mutex<SimDns>>,
    ingresses: Vec<(String, Endpoint)>,
    replicas: Vec<NodeId>,
) {
    loop {
        tokio::time::sleep(PROBE_EVERY).await;
        let (up, ep, me) = {
            let d = dns.lock().expect("dns lock");
            (d.up, d.endpoint, d.site.clone())
        };
        if !up {
            continue;
        }
        let mut batch = Vec::with_capacity(ingresses.len());
        for (site, ingress) in &ingresses {
            let (health, detail) = net.probe(ep, *ingress).await;
            batch.push((site.clone(), health, detail));
        }
        for &r in &replicas {
            if !dns.lock().expect("dns lock").up {
                break;
            }
            if !net.hop(ep, r).await {
                continue;
            }
            let Some(h) = net.replica(r) else { continue };
            let at_ms = net.clock_ms(h.skew_ms);
            {
                let mut detector = h.detector.lock().expect("detector lock");
                for (site, health, detail) in &batch {
                    detector.observe(&Observation {
                        observer: format!("dns:{me}"),
                        domain: DNS_DOMAIN.into(),
                        subject: Subject::site(site),
                        health: *health,
                        at_ms,
                        detail: (*detail).into(),
                    });
                }
            }
            // The acknowledgement: fed-dns reports to the next replica once this one answered.
            let _ = net.hop(r, ep).await;
        }
    }
}

/// Digest of what a desired state asks a cell to run: every app with instances, its group's
/// epoch and count. Left out: the autoscaling hint, and groups with nothing to run (listed with
/// zero or not listed at all both mean "run none": a site's desired state omits groups its
/// cell has reported it runs none of, which depends on the replica's latest report).
fn desired_digest(view: &DesiredView) -> u64 {
    let mut h = DefaultHasher::new();
    for g in &view.groups {
        for a in g.apps.iter().filter(|a| a.instances > 0) {
            g.name.hash(&mut h);
            g.epoch.hash(&mut h);
            a.spec.name.hash(&mut h);
            a.instances.hash(&mut h);
        }
    }
    h.finish()
}

/// One site's cell: it takes its desired state from any replica, fences it with the real
/// cell's rule, runs what it says (instances become healthy after a start-up time) and
/// reports through any replica.
pub struct SimCell {
    pub site: String,
    pub endpoint: Endpoint,
    pub up: bool,
    /// Highest epoch applied (persisted: survives a crash).
    pub applied_epoch: u64,
    /// Every change of (epoch, digest of what it runs) it applied, in order.
    pub applied: Vec<(u64, u64)>,
    pub rejected: u64,
    /// (group, app) → start times of its instances (virtual ms).
    running: BTreeMap<(String, String), Vec<u64>>,
    resources: BTreeMap<(String, String), Resources>,
    groups: Vec<String>,
    connected: Option<NodeId>,
    address: IpAddr,
}

impl SimCell {
    pub fn new(site: &str, endpoint: Endpoint, index: usize) -> Self {
        SimCell {
            site: site.to_string(),
            endpoint,
            up: true,
            applied_epoch: 0,
            applied: Vec::new(),
            rejected: 0,
            running: BTreeMap::new(),
            resources: BTreeMap::new(),
            groups: Vec::new(),
            connected: None,
            address: IpAddr::from([127, 0, 10, index as u8 + 1]),
        }
    }

    /// A crash loses the connection, not the persisted epoch or the running tasks.
    pub fn crash(&mut self) {
        self.up = false;
        self.connected = None;
    }

    fn apply(&mut self, view: &DesiredView, now: u64) {
        let digest = desired_digest(view);
        if self.applied.last() != Some(&(view.epoch, digest)) {
            self.applied.push((view.epoch, digest));
        }
        self.applied_epoch = view.epoch;
        for g in &view.groups {
            if !self.groups.contains(&g.name) {
                self.groups.push(g.name.clone());
            }
            for a in &g.apps {
                let key = (g.name.clone(), a.spec.name.clone());
                self.resources.insert(key.clone(), a.spec.resources);
                let tasks = self.running.entry(key).or_default();
                tasks.truncate(a.instances as usize);
                while tasks.len() < a.instances as usize {
                    tasks.push(now);
                }
            }
        }
    }

    fn report(&self, now: u64) -> CellReport {
        let mut allocated = Resources::default();
        let mut groups: BTreeMap<String, GroupReport> = BTreeMap::new();
        for g in &self.groups {
            groups.insert(g.clone(), GroupReport { applied_epoch: self.applied_epoch, ..Default::default() });
        }
        for ((group, app), tasks) in &self.running {
            let res = self.resources.get(&(group.clone(), app.clone())).copied().unwrap_or_default();
            allocated = allocated.plus(res.times(tasks.len() as u32));
            let instances = tasks
                .iter()
                .enumerate()
                .map(|(k, started)| InstanceReport {
                    task_id: format!("{group}.{app}.{k}"),
                    node_id: "node-1".into(),
                    address: self.address.to_string(),
                    port: 20_000 + k as u32,
                    pid: 1_000 + k as i64,
                    running: true,
                    healthy: started + STARTUP_MS <= now,
                })
                .collect();
            let report = AppReport { desired: tasks.len() as u32, instances, blocker: String::new() };
            groups.entry(group.clone()).or_default().apps.insert(app.clone(), report);
        }
        CellReport {
            site: self.site.clone(),
            applied_epoch: self.applied_epoch,
            nodes: vec![NodeReport {
                node_id: "node-1".into(),
                address: self.address.to_string(),
                capacity: Resources { cpu_millis: 16_000, mem_mib: 65_536, disk_mib: 0 },
                allocated,
                healthy: true,
                unschedulable: false,
            }],
            groups,
        }
    }
}

/// Picks the replica to talk to: the one that answered last time, else any known replica.
fn choose(net: &Net, connected: Option<NodeId>, replicas: &[NodeId]) -> Option<NodeId> {
    connected.or_else(|| net.pick(replicas))
}

pub async fn cell_loop(net: Net, cell: Arc<Mutex<SimCell>>, replicas: Vec<NodeId>) {
    loop {
        tokio::time::sleep(CELL_PERIOD).await;
        let (up, ep, site, connected) = {
            let c = cell.lock().expect("cell lock");
            (c.up, c.endpoint, c.site.clone(), c.connected)
        };
        if !up {
            continue;
        }
        let Some(entry) = choose(&net, connected, &replicas) else { continue };
        let view = if net.hop(ep, entry).await {
            net.replica(entry).map(|h| h.shared.read(|s| desired_for_site(s, &site, net.clock_ms(h.skew_ms))))
        } else {
            None
        };
        let Some(view) = view else {
            cell.lock().expect("cell lock").connected = None;
            continue;
        };
        if !net.hop(entry, ep).await {
            cell.lock().expect("cell lock").connected = None;
            continue;
        }
        let now = net.elapsed_ms();
        let report = {
            let mut c = cell.lock().expect("cell lock");
            if !c.up {
                continue;
            }
            c.connected = Some(entry);
            let proto = desired_to_proto(&view);
            match switchyard_dc_agent::cell::fence_desired(c.applied_epoch, &c.site, &proto) {
                Ok(()) => c.apply(&view, now),
                Err(_) => c.rejected += 1,
            }
            c.report(now)
        };
        let actor = format!("cell:{site}");
        let _ = propose_via(&net, ep, entry, &actor, Action::CellReport(report)).await;
    }
}

/// One site's DNS server: follows the routing table from any replica with fed-dns's own
/// admission rule, and keeps serving the last table it accepted (persisted) across crashes.
pub struct SimDns {
    pub site: String,
    pub endpoint: Endpoint,
    pub up: bool,
    pub served: Option<Table>,
    /// Every (version, epoch) it applied, in order.
    pub applied: Vec<(u64, u64)>,
    pub rejected: u64,
    connected: Option<NodeId>,
}

impl SimDns {
    pub fn new(site: &str, endpoint: Endpoint) -> Self {
        SimDns {
            site: site.to_string(),
            endpoint,
            up: true,
            served: None,
            applied: Vec::new(),
            rejected: 0,
            connected: None,
        }
    }

    pub fn crash(&mut self) {
        self.up = false;
        self.connected = None;
    }

    /// Sites that get traffic for each group's name (weight > 0) in the served table.
    pub fn weighted_sites(&self) -> BTreeMap<String, Vec<String>> {
        let mut out = BTreeMap::new();
        if let Some(t) = &self.served {
            for e in t.entries().filter(|e| !e.group.is_empty() && e.services.is_empty()) {
                // Group names only (service discovery names carry `<app>.<group>.<site>`).
                if e.relative.contains('.') {
                    continue;
                }
                out.insert(
                    e.group.clone(),
                    e.targets.iter().filter(|t| t.weight > 0).map(|t| t.site.clone()).collect(),
                );
            }
        }
        out
    }
}

pub async fn dns_loop(net: Net, dns: Arc<Mutex<SimDns>>, replicas: Vec<NodeId>) {
    let zone = Name::from_ascii(ZONE).expect("zone name");
    loop {
        tokio::time::sleep(DNS_PERIOD).await;
        let (up, ep, connected) = {
            let d = dns.lock().expect("dns lock");
            (d.up, d.endpoint, d.connected)
        };
        if !up {
            continue;
        }
        let Some(entry) = choose(&net, connected, &replicas) else { continue };
        let table = if net.hop(ep, entry).await {
            net.replica(entry).map(|h| h.shared.read(|s| routing_to_proto(&routing_table(s), ZONE)))
        } else {
            None
        };
        let arrived = table.is_some() && net.hop(entry, ep).await;
        let mut d = dns.lock().expect("dns lock");
        let Some(table) = table.filter(|_| arrived && d.up) else {
            d.connected = None;
            continue;
        };
        d.connected = Some(entry);
        let table = match Table::from_proto(table) {
            Ok(t) => t,
            Err(_) => {
                d.rejected += 1;
                continue;
            }
        };
        match admit(d.served.as_ref(), &zone, &table) {
            Ok(Admission::Apply) => {
                d.applied.push((table.version(), table.epoch()));
                d.served = Some(table);
            }
            Ok(Admission::Unchanged) => {}
            Err(_) => d.rejected += 1,
        }
    }
}
