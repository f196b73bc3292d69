//! What goes into the Raft log (`Command`: one `Proposal`, or several committed together) and
//! what applying one returns (`Response`).

use serde::{Deserialize, Serialize};

use crate::model::{GroupSpec, Resources, SiteSpec};
use crate::operation::Phase;
use crate::report::CellReport;

/// One log entry's payload: a single proposal, or several that a leader received while an
/// earlier write was still being committed and commits together (one disk flush and one
/// replication round for all of them). Applying a batch applies its proposals in order at the
/// entry's log index, each with its own response; a refused one changes nothing and does not
/// stop the others. A single proposal keeps the format of entries written before batches
/// existed, so older logs still read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
// Most entries carry one proposal: kept inline rather than boxed (one allocation less each).
#[allow(clippy::large_enum_variant)]
pub enum Command {
    Batch { batch: Vec<Proposal> },
    One(Proposal),
}

/// Read by shape: an object with a `batch` key is a batch, any other is one proposal. (A
/// derived untagged reader would answer any error inside an entry with "did not match any
/// variant"; this one passes the proposal's own error through.)
impl<'de> Deserialize<'de> for Command {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut value = serde_json::Value::deserialize(d)?;
        match value.get_mut("batch").map(serde_json::Value::take) {
            Some(batch) => serde_json::from_value(batch)
                .map(|batch| Command::Batch { batch })
                .map_err(|e| D::Error::custom(format!("batched log entry: {e}"))),
            None => serde_json::from_value(value).map(Command::One).map_err(D::Error::custom),
        }
    }
}

impl Command {
    /// One entry for `proposals`: the single-proposal form when there is one.
    pub fn of(mut proposals: Vec<Proposal>) -> Self {
        if proposals.len() == 1 {
            Command::One(proposals.pop().expect("one proposal"))
        } else {
            Command::Batch { batch: proposals }
        }
    }

    pub fn proposals(&self) -> &[Proposal] {
        match self {
            Command::One(p) => std::slice::from_ref(p),
            Command::Batch { batch } => batch,
        }
    }
}

/// One log entry's payload. `at_ms` and `actor` are stamped by the leader when it proposes, so
/// `apply` never reads a clock and every replica records the same time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// Format marker so entries written by one version can be read by the next.
    #[serde(default = "Proposal::current_version")]
    pub version: u32,
    pub at_ms: u64,
    /// Identity of the caller (`operator:alice`, `cell:site-1`) or `system`.
    pub actor: String,
    pub action: Action,
}

impl Proposal {
    pub const VERSION: u32 = 1;

    fn current_version() -> u32 {
        Self::VERSION
    }

    pub fn new(at_ms: u64, actor: impl Into<String>, action: Action) -> Self {
        Self { version: Self::VERSION, at_ms, actor: actor.into(), action }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Add a site, or update its ingress and labels.
    RegisterSite(SiteSpec),
    /// Add a group placed on its home site; an existing group is left as it is.
    RegisterGroup(GroupSpec),
    /// Change a registered group's spec: its apps' programs, environment, resources, checks,
    /// constraints, upgrade strategy and instance counts. Every site running the group rolls
    /// its instances to the new spec under each app's upgrade strategy.
    UpdateGroup {
        spec: GroupSpec,
        reason: String,
    },
    /// Go back to the group's spec before its last update (cancels a rollout that cannot
    /// progress, or undoes a bad one).
    RollbackGroup {
        group: String,
        reason: String,
    },
    /// An operator sets an app's instance count on one site where the group is active; 0
    /// suspends it (the spec is kept).
    ScaleApp {
        group: String,
        app: String,
        site: String,
        instances: u32,
        reason: String,
    },
    /// Stop changes to everything in `scope` (switchovers, spec updates, autoscaling) until
    /// `until_ms` (leader time) or until cleared. Setting an existing freeze replaces it.
    SetFreeze {
        scope: FreezeScope,
        reason: String,
        until_ms: Option<u64>,
    },
    ClearFreeze {
        scope: FreezeScope,
        reason: String,
    },
    /// A site's cell asks to run `to` instead of `from` instances of an autoscaled app there.
    /// Refused unless the site still runs `from` (a stale request changes nothing), the app is
    /// autoscaled, `to` is within its bounds and nothing freezes or holds the group.
    Autoscale {
        site: String,
        group: String,
        app: String,
        from: u32,
        to: u32,
        reason: String,
        /// The numbers behind the decision (JSON object), kept in the audit record.
        evidence_json: String,
    },
    /// The latest report of a site's cell (an observation, not audited).
    CellReport(CellReport),
    StartSwitchover {
        group: String,
        to: String,
        reason: String,
        /// The id of the reviewed plan this start executes (`fedctl switchover start --plan`);
        /// recorded in the audit history. Empty when started without one.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        plan: String,
        /// The operation this start rolls back (not held by change windows); empty otherwise.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        rollback_of: String,
    },
    /// Move an operation from phase `from` to `to`; ignored unless it is still in `from`, so a
    /// duplicate or late proposal never repeats a step.
    AdvanceOperation {
        id: String,
        from: Phase,
        to: Phase,
        detail: String,
    },
    /// Move an operation's traffic from ramp step `from_step` to the next (advance) or the
    /// previous one (revert after a health breach, which also halts it until an operator
    /// resumes or aborts). Ignored unless the operation is still at `from_step`.
    ShiftTraffic {
        id: String,
        from_step: u32,
        to_step: u32,
        detail: String,
    },
    /// Records a change of the federator cluster itself (a replica added or removed, a backup
    /// snapshot taken) in the audit history. Raft applies the membership change on its own;
    /// this entry only makes it visible to auditors, with who did it and why.
    RecordClusterChange {
        /// `cluster.add-learner`, `cluster.add-voter`, `cluster.remove`, `cluster.snapshot`.
        change: String,
        /// `fed-<node id>`, or the snapshot id.
        subject: String,
        reason: String,
        /// JSON object: voters and learners after the change, addresses, log index.
        detail_json: String,
    },
    /// Stop an operation that cannot make progress (rolls back when traffic never moved).
    FailOperation {
        id: String,
        at: Phase,
        error: String,
    },
    /// Move many groups to `to` as one operation: every group whose traffic is on `from` (an
    /// evacuation of that site), or the groups named. Refused, changing nothing, unless every
    /// group can move now; the target capacity of all of them is reserved at once.
    StartEvacuation {
        /// The site to empty; `None` with `groups`.
        from: Option<String>,
        /// The groups to move when `from` is `None`, in this order (dependencies still first).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        groups: Vec<String>,
        to: String,
        reason: String,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        plan: String,
        /// Groups moved side by side (at least 1).
        concurrency: u32,
        /// Failed groups after which no new group starts (at least 1).
        failure_budget: u32,
        /// The evacuation this one rolls back (not held by change windows); empty otherwise.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        rollback_of: String,
    },
    /// Declare `site` down on the evidence of independent observers, which `apply` checks
    /// against `detect` (observers in a quorum of failure domains, fresh, unhealthy for the
    /// window). Its groups then fail over under the guard rails.
    DeclareSiteDown {
        site: String,
        evidence: Vec<crate::dr::detect::Evidence>,
        detect: crate::dr::detect::DetectConfig,
    },
    /// A human declares `site` down (`fedctl failover --site`), knowing before the detector
    /// does. Its groups fail over under the same guard rails; with `break_glass`, the brake,
    /// cooldowns and rate limits are overridden for it (named in the audit record), never
    /// freezes or capacity.
    DeclareSiteDownManually {
        site: String,
        reason: String,
        break_glass: bool,
        /// Stateful groups whose replicas are beyond their RPO budget fail over anyway; the
        /// human accepting the loss is recorded.
        #[serde(default)]
        accept_data_loss: bool,
    },
    /// A human fails one group over off its active site (`fedctl failover --group`), to the
    /// target the guard rails choose; the site stays in service for its other groups.
    FailoverGroup {
        group: String,
        reason: String,
        break_glass: bool,
        #[serde(default)]
        accept_data_loss: bool,
    },
    /// Observers in a quorum of failure domains have seen `group` unhealthy at `site` (its
    /// composite health: instances, ingress, dependencies) for the detection window; the site
    /// itself stays in service for its other groups. `apply` checks the evidence again.
    DeclareGroupDown {
        site: String,
        group: String,
        evidence: Vec<crate::dr::detect::Evidence>,
        detect: crate::dr::detect::DetectConfig,
    },
    /// Move a failed-over group back to its recorded original site (opt-in failback): the
    /// evidence shows that site healthy to a quorum of observers for the group's stability
    /// window. A site still declared down returns to service with it.
    StartFailback {
        group: String,
        evidence: Vec<crate::dr::detect::Recovery>,
        detect: crate::dr::detect::DetectConfig,
    },
    /// Fail `group` over from the declared-down site `from` to `to`, as `dr::guard::decide`
    /// chose: a warm standby takes the traffic at once, a cold one after it has scaled up; the
    /// failed site is fenced (weight 0) and nothing there is deleted.
    StartFailover {
        group: String,
        from: String,
        to: String,
    },
    /// A human takes a site declared down back into service once it has returned: the
    /// instances of groups that failed over away from it (fenced there, weight 0) are stopped,
    /// and the site is active again. Groups still served there keep their instances.
    ReclaimSite {
        site: String,
        reason: String,
    },
    /// Automation halts, with the guard rail's reason, until a human releases it.
    TripBrake {
        reason: String,
    },
    ReleaseBrake {
        reason: String,
    },
    /// The largest DNS TTL a group may have for a planned move to start (0: no limit): with a
    /// longer one, clients keep answering the old site too long after the traffic step.
    SetTtlBudget {
        max_ttl_s: u32,
        reason: String,
    },
    /// Schedule a drill: a switchover of `group` to `to` that starts at leader time `at_ms` (at
    /// once if already past), recorded as a drill with its outcome and recovery time.
    ScheduleDrill {
        group: String,
        to: String,
        at_ms: u64,
        reason: String,
    },
    /// A scheduled drill's time has come: start its switchover (a refusal is recorded as the
    /// drill's outcome).
    StartDrill {
        id: String,
    },
    CancelDrill {
        id: String,
        reason: String,
    },
    /// The weekly windows in which planned moves may start (empty: any time). Replaces the
    /// previous list.
    SetChangeWindows {
        windows: Vec<crate::window::ChangeWindow>,
        reason: String,
    },
    /// The next step of an evacuation; refused unless the engine would still take it.
    EvacuationStep {
        id: String,
        step: crate::evacuation::EvacuationStep,
    },
    /// Moves of groups of these tiers wait, once started, for a second person's approval.
    /// Replaces the previous list; empty turns approvals off.
    SetApprovalPolicy {
        tiers: Vec<u32>,
        reason: String,
    },
    /// A second person approves an operation waiting for approval; refused for its initiator.
    ApproveOperation {
        id: String,
        reason: String,
    },
    /// An operator pauses, resumes or aborts a running operation.
    ControlOperation {
        id: String,
        control: Control,
        reason: String,
    },
}

/// What an operator may do to a running operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Control {
    /// Take no further step until resumed; time paused does not count towards the verify
    /// window, the TTL wait or any timeout. What was already told to the cells stands.
    Pause,
    Resume,
    /// Stop safely where it is, leaving the group serving from one site: before traffic moved
    /// or mid-ramp (the source still runs everything), all traffic goes back to the source and
    /// the target is put back as it was; once all traffic is on the target, the group stays
    /// there and the source keeps whatever it still runs.
    Abort,
}

impl Control {
    pub fn as_str(self) -> &'static str {
        match self {
            Control::Pause => "pause",
            Control::Resume => "resume",
            Control::Abort => "abort",
        }
    }
}

/// What a freeze covers.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FreezeScope {
    Global,
    Group(String),
    Site(String),
}

impl std::fmt::Display for FreezeScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FreezeScope::Global => f.write_str("global"),
            FreezeScope::Group(g) => write!(f, "group:{g}"),
            FreezeScope::Site(s) => write!(f, "site:{s}"),
        }
    }
}

impl std::str::FromStr for FreezeScope {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            None if s == "global" => Ok(FreezeScope::Global),
            Some(("group", g)) if !g.is_empty() => Ok(FreezeScope::Group(g.to_string())),
            Some(("site", v)) if !v.is_empty() => Ok(FreezeScope::Site(v.to_string())),
            _ => Err(format!("freeze scope {s:?} must be global, group:<name> or site:<name>")),
        }
    }
}

/// Why a request was refused. Every message says what was wrong; a refused request changes
/// nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    #[error("unknown group {0:?}")]
    UnknownGroup(String),
    #[error("unknown site {0:?}")]
    UnknownSite(String),
    #[error("group {group:?} is already active on {site:?}; nothing to switch")]
    AlreadyActive { group: String, site: String },
    #[error("group {group:?} is busy with operation {operation}; wait for it or resolve it first")]
    GroupBusy { group: String, operation: String },
    #[error("group {group:?} has no single active site to switch from (active: {active:?})")]
    NoSingleSource { group: String, active: Vec<String> },
    #[error("site {site:?} is {state}, not Active; it cannot take traffic")]
    SiteNotActive { site: String, state: String },
    #[error("site {site:?} has no fresh capacity report (last {age}); is its cell connected?")]
    NoFreshReport { site: String, age: String },
    #[error("site {site:?} lacks capacity for group {group:?}: needs {needed}, has {free} free")]
    InsufficientCapacity { site: String, group: String, needed: Resources, free: Resources },
    #[error(
        "site {site:?} has {free} free in all but no node with room for one instance of group {group:?} \
         ({instance}); the largest free space on one node is {largest}"
    )]
    Fragmented { site: String, group: String, instance: Resources, free: Resources, largest: Resources },
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("{subject} is frozen ({scope}, by {actor}: {reason}); clear the freeze first")]
    Frozen { subject: String, scope: String, actor: String, reason: String },
    #[error("{0}")]
    Stale(String),
    #[error("operation {0:?} does not exist")]
    UnknownOperation(String),
    #[error("operation {id} is not in phase {expected} (it is {actual}); step ignored")]
    StalePhase { id: String, expected: String, actual: String },
    #[error(
        "planned moves may start only inside a change window ({windows}); it is {now}. Wait for the window, \
         or have an admin change the windows (fedctl switchover windows)"
    )]
    OutsideChangeWindow { now: String, windows: String },
    #[error(
        "group {group:?} has a DNS TTL of {ttl_s}s, above the {budget_s}s budget for planned moves: clients \
         would keep answering the old site too long; lower its ttl_s first (fedctl group update) and wait one old TTL"
    )]
    TtlOverBudget { group: String, ttl_s: u32, budget_s: u32 },
    #[error("unsupported proposal version {0}; upgrade this federator")]
    UnsupportedVersion(u32),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    /// Nothing to change (already so).
    Unchanged,
    Changed,
    OperationStarted {
        id: String,
    },
}

/// The result of applying one log entry.
pub type Response = Result<Applied, Refusal>;
