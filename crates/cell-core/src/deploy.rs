//! Apps, groups, dependencies and deployment steps, with Marathon's semantics.
//!
//! A deployment decides HOW MANY tasks of WHICH version to start and WHICH tasks to kill; where
//! new tasks go is the placer's business, and health/readiness verdicts come from
//! [`crate::health`]. The planner ([`plan`]) is level-triggered: it is not told what happened,
//! it looks at the app's spec and every task the cell knows of, and returns the next [`Step`].
//! The caller executes the step, then calls again with the updated tasks (launched tasks appear
//! as `Staging`, killed ones as `Killing` until they are gone). Calling twice with the same
//! input gives the same step, so a missed or repeated call is harmless.
//!
//! Rules, for an app of `n` instances with strategy `(min, max)`:
//! - **Capacity.** A task counts toward capacity when it is `Running`, healthy and ready. Tasks
//!   of apps without health checks are reported healthy once running, without readiness checks
//!   ready once running (see [`TaskView`]).
//! - **Never below the minimum.** The planner never kills a counting task when that would leave
//!   fewer than `ceil(n * min)` counting tasks (old or new). Tasks that do not count may be
//!   killed at any time. If the app is already below the minimum, nothing that counts is killed.
//! - **Never above the maximum.** It never launches beyond `n + ceil(n * max)` tasks in total,
//!   tasks being killed included (they still hold resources and may still serve).
//! - **Rolling upgrade.** Tasks whose version differs from the spec's are old. Every step kills
//!   the old tasks that do not count, then as many counting old tasks (oldest first) as the
//!   minimum allows, and launches as many new tasks as the maximum allows. With `min = 0, max = 0`
//!   this kills every old task first and then launches; with `ceil(n * min) >= n + ceil(n * max)`
//!   (e.g. `min = 1, max = 0`) nothing can be killed or launched and the step says it is stuck.
//!   (Marathon quietly allows one task over capacity in that case; here the operator decides.)
//! - **Scale.** Missing tasks of the spec's version are launched within the same maximum;
//!   surplus ones are killed in Marathon's order: unhealthy, staging, health unknown, not ready,
//!   then the newest first. Suspend is scale to 0 ([`AppSpec::suspended`]): the spec is kept.
//! - **Kill.** [`kill_tasks`] kills chosen tasks (or all) and either lets the planner replace
//!   them ("kill then replace", a restart) or lowers `instances` so they are not ("kill and
//!   scale").
//! - **Done** when exactly `n` tasks of the spec's version run, all counting, and nothing else
//!   is left (no old task, nothing being killed). Until then `waiting_for` says what the
//!   deployment waits for, and a stuck deployment says why and what to change.
//!
//! Marathon counts `instances` outside the version: changing only the instance count must not
//! change `AppSpec::version`, or every task would be replaced.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub type AppId = String;
pub type TaskId = String;

/// Marathon's `upgradeStrategy`. Both fractions are of `instances` and must be in `[0, 1]`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct UpgradeStrategy {
    /// Tasks (old or new) that must stay healthy and ready during a deployment:
    /// `ceil(instances * minimum_health_capacity)`. Default 1.
    pub minimum_health_capacity: f64,
    /// Extra tasks a deployment may run: total tasks never exceed
    /// `instances + ceil(instances * maximum_over_capacity)`. Default 1.
    pub maximum_over_capacity: f64,
}

impl Default for UpgradeStrategy {
    fn default() -> Self {
        UpgradeStrategy { minimum_health_capacity: 1.0, maximum_over_capacity: 1.0 }
    }
}

/// An app as the service scheduler runs it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AppSpec {
    /// A path: segments of lowercase letters, digits, `-` and `.` separated by `/`, optionally
    /// starting with `/`. The segments before the last name the app's groups.
    pub id: AppId,
    /// Opaque; changes whenever the spec changes (not when only `instances` changes).
    pub version: String,
    pub instances: u32,
    pub upgrade: UpgradeStrategy,
    /// Apps that must be running before this one starts: an app id, or a group path that stands
    /// for every app under it (`/prod/db` covers `/prod/db/pg` and `/prod/db/redis`).
    pub dependencies: Vec<AppId>,
}

impl AppSpec {
    pub fn new(id: impl Into<AppId>, version: impl Into<String>, instances: u32) -> Self {
        AppSpec {
            id: id.into(),
            version: version.into(),
            instances,
            upgrade: UpgradeStrategy::default(),
            dependencies: Vec::new(),
        }
    }

    /// The first problem with this app's own fields (dependencies are checked by [`AppSet`]).
    pub fn validate(&self) -> Result<(), SpecError> {
        match self.problems().into_iter().next() {
            Some(problem) => Err(problem),
            None => Ok(()),
        }
    }

    fn problems(&self) -> Vec<SpecError> {
        let mut problems = Vec::new();
        if !is_valid_path(&self.id) {
            problems.push(SpecError::InvalidId { id: self.id.clone() });
        }
        if self.version.is_empty() {
            problems.push(SpecError::EmptyVersion { app: self.id.clone() });
        }
        let in_range = |v: f64| (0.0..=1.0).contains(&v);
        if !in_range(self.upgrade.minimum_health_capacity) {
            problems.push(SpecError::MinimumHealthCapacityOutOfRange {
                app: self.id.clone(),
                value: self.upgrade.minimum_health_capacity,
            });
        }
        if !in_range(self.upgrade.maximum_over_capacity) {
            problems.push(SpecError::MaximumOverCapacityOutOfRange {
                app: self.id.clone(),
                value: self.upgrade.maximum_over_capacity,
            });
        }
        problems
    }

    /// The same app with `instances = 0`: every task is stopped, the spec is kept.
    pub fn suspended(&self) -> AppSpec {
        self.scaled(0)
    }

    /// The same app with another instance count; the version stays (no task is replaced).
    pub fn scaled(&self, instances: u32) -> AppSpec {
        AppSpec { instances, ..self.clone() }
    }

    /// Tasks that must stay healthy and ready during a deployment.
    pub fn min_healthy_tasks(&self) -> u64 {
        let n = u64::from(self.instances);
        ceil_count(n as f64 * self.min_fraction()).min(n)
    }

    /// The most tasks (tasks being killed included) a deployment may run at once.
    pub fn max_total_tasks(&self) -> u64 {
        let n = u64::from(self.instances);
        n + ceil_count(n as f64 * self.max_fraction()).min(n)
    }

    // Specs are validated on submission; out-of-range values are clamped here anyway so a bad
    // spec can never make the planner kill or launch more than the widest valid strategy.
    fn min_fraction(&self) -> f64 {
        let v = self.upgrade.minimum_health_capacity;
        if v.is_nan() { 1.0 } else { v.clamp(0.0, 1.0) }
    }

    fn max_fraction(&self) -> f64 {
        let v = self.upgrade.maximum_over_capacity;
        if v.is_nan() { 0.0 } else { v.clamp(0.0, 1.0) }
    }
}

/// `ceil(x)` for a count computed as `instances * fraction`, tolerant of binary rounding:
/// `10 * 0.7` is 7.000000000000001 in `f64` and must give 7, not 8.
fn ceil_count(x: f64) -> u64 {
    let nearest = x.round();
    if (x - nearest).abs() <= 1e-9 * nearest.max(1.0) { nearest as u64 } else { x.ceil() as u64 }
}

fn is_valid_path(id: &str) -> bool {
    let body = id.strip_prefix('/').unwrap_or(id);
    !body.is_empty()
        && body.split('/').all(|segment| {
            let bytes = segment.as_bytes();
            let edge = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
            let inner = |b: &u8| edge(b) || *b == b'-' || *b == b'.';
            bytes.first().is_some_and(edge) && bytes.last().is_some_and(edge) && bytes.iter().all(inner)
        })
}

#[derive(Clone, Debug, PartialEq, Error)]
pub enum SpecError {
    #[error(
        "app id {id:?} is invalid: use '/'-separated segments of lowercase letters, digits, '-' and '.', each starting and ending with a letter or digit (e.g. /prod/web)"
    )]
    InvalidId { id: AppId },
    #[error("app {app}: version is empty; set it to a string that changes whenever the spec changes")]
    EmptyVersion { app: AppId },
    #[error("app {app}: minimumHealthCapacity {value} is outside [0, 1]")]
    MinimumHealthCapacityOutOfRange { app: AppId, value: f64 },
    #[error("app {app}: maximumOverCapacity {value} is outside [0, 1]")]
    MaximumOverCapacityOutOfRange { app: AppId, value: f64 },
    #[error("app {app} is defined more than once; app ids must be unique")]
    DuplicateApp { app: AppId },
    #[error(
        "app {app} depends on itself (dependency {dependency}); an app cannot depend on itself or on a group that contains it"
    )]
    SelfDependency { app: AppId, dependency: AppId },
    #[error("app {app} depends on {dependency}, which is neither an app nor a group of apps in this set")]
    UnknownDependency { app: AppId, dependency: AppId },
    #[error("dependency cycle {}: none of these apps could start; remove one of these dependencies", cycle.join(" -> "))]
    DependencyCycle {
        /// The apps of the cycle, the first repeated at the end: `a -> b -> a` is `[a, b, a]`.
        cycle: Vec<AppId>,
    },
}

/// A validated set of apps (a group tree flattened) with resolved dependencies.
#[derive(Clone, Debug, PartialEq)]
pub struct AppSet {
    apps: BTreeMap<AppId, AppSpec>,
    /// App -> the apps it depends on (group dependencies expanded).
    depends_on: BTreeMap<AppId, BTreeSet<AppId>>,
}

impl AppSet {
    /// Validates every app and every dependency, reporting all problems at once.
    pub fn new(apps: impl IntoIterator<Item = AppSpec>) -> Result<Self, Vec<SpecError>> {
        let mut problems = Vec::new();
        let mut by_id = BTreeMap::new();
        for app in apps {
            problems.extend(app.problems());
            if by_id.contains_key(&app.id) {
                problems.push(SpecError::DuplicateApp { app: app.id.clone() });
            } else {
                by_id.insert(app.id.clone(), app);
            }
        }

        let mut depends_on: BTreeMap<AppId, BTreeSet<AppId>> = BTreeMap::new();
        for (id, app) in &by_id {
            let resolved = depends_on.entry(id.clone()).or_default();
            let wanted: BTreeSet<&str> =
                app.dependencies.iter().map(|d| d.strip_suffix('/').unwrap_or(d.as_str())).collect();
            for dependency in wanted {
                // An app id names that app; otherwise a group path names every app under it.
                let members: Vec<&AppId> = if by_id.contains_key(dependency) {
                    by_id.get_key_value(dependency).map(|(k, _)| k).into_iter().collect()
                } else {
                    let prefix = format!("{dependency}/");
                    by_id.keys().filter(|other| other.starts_with(&prefix)).collect()
                };
                let (app, dependency) = (id.clone(), dependency.to_string());
                if members.contains(&id) {
                    problems.push(SpecError::SelfDependency { app, dependency });
                } else if members.is_empty() {
                    problems.push(SpecError::UnknownDependency { app, dependency });
                } else {
                    resolved.extend(members.into_iter().cloned());
                }
            }
        }

        let set = AppSet { apps: by_id, depends_on };
        let (_, blocked) = set.waves();
        problems.extend(set.cycles(blocked).into_iter().map(|cycle| SpecError::DependencyCycle { cycle }));
        if problems.is_empty() { Ok(set) } else { Err(problems) }
    }

    pub fn get(&self, id: &str) -> Option<&AppSpec> {
        self.apps.get(id)
    }

    /// Apps in id order.
    pub fn apps(&self) -> impl Iterator<Item = &AppSpec> {
        self.apps.values()
    }

    pub fn len(&self) -> usize {
        self.apps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.apps.is_empty()
    }

    /// The apps `id` depends on, group dependencies expanded.
    pub fn dependencies_of(&self, id: &str) -> Option<&BTreeSet<AppId>> {
        self.depends_on.get(id)
    }

    /// Waves to start in: every app's dependencies are in earlier waves, and each app is in
    /// the earliest wave it can be (the longest dependency chain below it). Ids are sorted
    /// within a wave. The caller starts a wave once the previous one is done (healthy).
    pub fn start_order(&self) -> Vec<Vec<AppId>> {
        let (waves, blocked) = self.waves();
        assert!(blocked.is_empty(), "AppSet::new refuses dependency cycles, yet {blocked:?} could not be ordered");
        waves
    }

    /// Waves to stop in: the start order reversed, so dependents stop before what they use.
    pub fn stop_order(&self) -> Vec<Vec<AppId>> {
        let mut waves = self.start_order();
        waves.reverse();
        waves
    }

    /// Kahn's layering; also returns the apps that could not be placed (in or behind a cycle).
    fn waves(&self) -> (Vec<Vec<AppId>>, BTreeSet<AppId>) {
        let mut remaining: BTreeSet<AppId> = self.apps.keys().cloned().collect();
        let mut placed = BTreeSet::new();
        let mut waves = Vec::new();
        loop {
            let wave: Vec<AppId> =
                remaining.iter().filter(|id| self.depends_on[*id].is_subset(&placed)).cloned().collect();
            if wave.is_empty() {
                return (waves, remaining);
            }
            for id in &wave {
                remaining.remove(id);
                placed.insert(id.clone());
            }
            waves.push(wave);
        }
    }

    /// One cycle per knot among `blocked` (apps Kahn could not place), found deterministically:
    /// walk from the smallest id along the smallest blocked dependency until an app repeats,
    /// report that loop, take it out, and drop the apps that were only blocked behind it.
    fn cycles(&self, mut blocked: BTreeSet<AppId>) -> Vec<Vec<AppId>> {
        let mut cycles = Vec::new();
        while let Some(start) = blocked.first().cloned() {
            let mut path = vec![start];
            let cycle_start = loop {
                let last = path.last().expect("path starts non-empty");
                // Every blocked app has a blocked dependency, or Kahn would have placed it.
                let next = self.depends_on[last]
                    .iter()
                    .find(|d| blocked.contains(*d))
                    .expect("a blocked app has a blocked dependency")
                    .clone();
                if let Some(at) = path.iter().position(|p| *p == next) {
                    break at;
                }
                path.push(next);
            };
            let mut cycle = path.split_off(cycle_start);
            for id in &cycle {
                blocked.remove(id);
            }
            cycle.push(cycle[0].clone());
            cycles.push(cycle);
            // Apps whose blocked dependencies are all gone were only waiting behind this cycle.
            loop {
                let freed: Vec<AppId> =
                    blocked.iter().filter(|id| self.depends_on[*id].is_disjoint(&blocked)).cloned().collect();
                if freed.is_empty() {
                    break;
                }
                for id in freed {
                    blocked.remove(&id);
                }
            }
        }
        cycles
    }
}

/// [`AppSet::start_order`] of `apps`, after validating them.
pub fn start_order(apps: &[AppSpec]) -> Result<Vec<Vec<AppId>>, Vec<SpecError>> {
    Ok(AppSet::new(apps.iter().cloned())?.start_order())
}

/// [`AppSet::stop_order`] of `apps`, after validating them.
pub fn stop_order(apps: &[AppSpec]) -> Result<Vec<Vec<AppId>>, Vec<SpecError>> {
    Ok(AppSet::new(apps.iter().cloned())?.stop_order())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum TaskState {
    /// Launched, not yet running.
    Staging,
    Running,
    /// Kill requested, not yet gone.
    Killing,
}

/// What the planner needs to know about one task of the app.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskView {
    pub id: TaskId,
    pub version: String,
    pub state: TaskState,
    /// `None` while unknown (no counted health result yet); `Some(true)` for a running task of
    /// an app without health checks ([`crate::health::Health::as_flag`] gives this form).
    /// During an upgrade, old tasks that do not count are replaced first, so verdicts should
    /// survive a restart of the cell master rather than fall back to unknown.
    pub healthy: Option<bool>,
    /// Passed its readiness check; `true` for a running task of an app without readiness
    /// checks. Stays true once set.
    pub ready: bool,
    pub started_at_ms: u64,
}

impl TaskView {
    /// Running, healthy and ready: the task serves and counts toward capacity.
    pub fn counts_toward_capacity(&self) -> bool {
        self.state == TaskState::Running && self.healthy == Some(true) && self.ready
    }

    /// Which tasks to kill first: lower is sooner.
    fn condition_rank(&self) -> u8 {
        match (self.state, self.healthy) {
            (_, Some(false)) => 0,
            (TaskState::Staging, _) => 1,
            (_, None) => 2,
            _ if !self.ready => 3,
            _ => 4,
        }
    }
}

/// The next thing to do for one app.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// New tasks of the spec's version to launch (the placer decides where).
    pub launch: u32,
    /// Tasks to kill, in the order to kill them.
    pub kill: Vec<TaskId>,
    /// The app is where its spec says; nothing is left to do.
    pub done: bool,
    /// While not done: what the deployment waits for, or why it cannot progress.
    pub waiting_for: Option<String>,
}

/// The next step for `spec` given every task of the app the cell knows of.
pub fn plan(spec: &AppSpec, tasks: &[TaskView]) -> Step {
    plan_worded(spec, tasks, None)
}

#[derive(Clone, Copy)]
struct Wording {
    action: &'static str,
    current: &'static str,
    previous: &'static str,
}

fn plan_worded(spec: &AppSpec, tasks: &[TaskView], wording: Option<Wording>) -> Step {
    let n = u64::from(spec.instances);
    let min_healthy = spec.min_healthy_tasks();
    let max_total = spec.max_total_tasks();
    let (mut current, mut previous): (Vec<&TaskView>, Vec<&TaskView>) =
        tasks.iter().filter(|t| t.state != TaskState::Killing).partition(|t| t.version == spec.version);
    let already_killing = count(tasks.len() - current.len() - previous.len());
    let total = count(tasks.len());
    let mut kill: Vec<TaskId> = Vec::new();

    // Surplus tasks of the spec's version (scale down): worst first, then newest. Keeping the
    // best `n` never loses capacity the minimum needs: all of them count, or all the surplus
    // does not.
    current.sort_by_key(|t| (t.condition_rank(), Reverse(t.started_at_ms), &t.id));
    let surplus = current.len().saturating_sub(spec.instances as usize);
    kill.extend(current.drain(..surplus).map(|t| t.id.clone()));

    // Tasks of another version: those not counting go at once, then the oldest counting ones
    // while the minimum holds.
    let current_counting = count(current.iter().filter(|t| t.counts_toward_capacity()).count());
    let mut counting = current_counting + count(previous.iter().filter(|t| t.counts_toward_capacity()).count());
    previous.sort_by_key(|t| (t.condition_rank(), t.started_at_ms, &t.id));
    let mut previous_kept_counting = 0u64;
    for task in &previous {
        if !task.counts_toward_capacity() {
            kill.push(task.id.clone());
        } else if counting > min_healthy {
            kill.push(task.id.clone());
            counting -= 1;
        } else {
            previous_kept_counting += 1;
        }
    }

    // Kills free nothing until the tasks are gone, so only the current total leaves room.
    let missing = n - count(current.len());
    let launch = missing.min(max_total.saturating_sub(total));
    let done = previous.is_empty() && already_killing == 0 && kill.is_empty() && missing == 0 && current_counting == n;
    if done {
        return Step { launch: 0, kill, done, waiting_for: None };
    }

    let wording = wording.unwrap_or(match (previous.is_empty(), n) {
        (false, _) => Wording { action: "upgrade", current: "new", previous: "old" },
        (true, 0) => Wording { action: "suspend", current: "", previous: "" },
        (true, _) => Wording { action: "scale", current: "", previous: "" },
    });
    let tally = Tally {
        pending: current.iter().copied().filter(|t| !t.counts_toward_capacity()).collect(),
        launch,
        unlaunched: missing - launch,
        killing: already_killing + count(kill.len()),
        total_after: total + launch,
        previous_kept_counting,
    };
    let waiting_for = Some(explain(spec, wording, &tally));
    Step { launch: u32::try_from(launch).expect("launch <= instances, a u32"), kill, done, waiting_for }
}

/// The state a step leaves behind, as far as explaining it goes.
struct Tally<'a> {
    /// Tasks of the spec's version that do not count yet (launches of this step excluded).
    pending: Vec<&'a TaskView>,
    launch: u64,
    /// Tasks of the spec's version still missing after this step's launches.
    unlaunched: u64,
    /// Tasks being killed after this step's kills.
    killing: u64,
    total_after: u64,
    /// Counting tasks of another version the minimum does not let go.
    previous_kept_counting: u64,
}

/// What an unfinished deployment waits for; "stuck" when nothing is in flight that could
/// change the answer.
fn explain(spec: &AppSpec, wording: Wording, tally: &Tally) -> String {
    let n = u64::from(spec.instances);
    let noun = |k: u64, kind: &str| {
        let noun = if k == 1 { "task" } else { "tasks" };
        if kind.is_empty() { noun.to_string() } else { format!("{kind} {noun}") }
    };
    let mut reasons = Vec::new();

    let pending_total = count(tally.pending.len()) + tally.launch;
    if pending_total > 0 {
        let running = |rank: u8| {
            count(tally.pending.iter().filter(|t| t.state != TaskState::Staging && t.condition_rank() == rank).count())
        };
        let staging = count(tally.pending.iter().filter(|t| t.state == TaskState::Staging).count());
        let detail: Vec<String> = [
            (tally.launch + staging, "starting"),
            (running(0), "unhealthy"),
            (running(2), "health unknown"),
            (running(3), "not ready"),
        ]
        .into_iter()
        .filter(|(k, _)| *k > 0)
        .map(|(k, what)| format!("{k} {what}"))
        .collect();
        reasons.push(format!(
            "{pending_total}/{n} {} not yet healthy and ready ({})",
            noun(n, wording.current),
            detail.join(", ")
        ));
    }
    if tally.killing > 0 {
        reasons.push(format!("{} {} being killed", tally.killing, noun(tally.killing, "")));
    }
    if tally.unlaunched > 0 {
        reasons.push(format!(
            "cannot launch {} more {} without exceeding maximumOverCapacity {} (at most {} tasks, {} now)",
            tally.unlaunched,
            noun(tally.unlaunched, wording.current),
            spec.max_fraction(),
            spec.max_total_tasks(),
            tally.total_after
        ));
    }
    if tally.previous_kept_counting > 0 {
        reasons.push(format!(
            "cannot kill {} {} without dropping below minimumHealthCapacity {} ({} healthy needed)",
            tally.previous_kept_counting,
            noun(tally.previous_kept_counting, wording.previous),
            spec.min_fraction(),
            spec.min_healthy_tasks()
        ));
    }
    debug_assert!(!reasons.is_empty(), "a deployment that is not done always has a reason");

    let in_flight = tally.launch > 0 || tally.killing > 0 || pending_total > 0;
    let (action, id, reasons) = (wording.action, &spec.id, reasons.join("; "));
    if in_flight {
        format!("{action} of {id}: {reasons}")
    } else {
        format!(
            "{action} of {id}: stuck: {reasons}; raise maximumOverCapacity or lower minimumHealthCapacity so that a task can be launched or killed"
        )
    }
}

fn count(k: usize) -> u64 {
    u64::try_from(k).expect("usize fits in u64")
}

/// Which tasks [`kill_tasks`] kills.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KillSelection {
    Tasks(Vec<TaskId>),
    All,
}

/// The spec to keep driving the app toward, and the step to execute now.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub spec: AppSpec,
    pub step: Step,
}

#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum DeployError {
    #[error("app {app} has no task {task}; list the app's tasks for current ids")]
    UnknownTask { app: AppId, task: TaskId },
}

/// Kill the selected tasks. With `scale == false` (kill then replace, i.e. a restart) the spec
/// is unchanged and the step launches replacements as soon as the maximum over-capacity allows
/// (with `maximumOverCapacity = 0`, once the killed tasks are gone). With `scale == true` (kill
/// and scale) `instances` is lowered by the number of tasks killed, so nothing replaces them.
/// Tasks already being killed are not killed again nor counted.
pub fn kill_tasks(
    spec: &AppSpec,
    tasks: &[TaskView],
    selection: &KillSelection,
    scale: bool,
) -> Result<Outcome, DeployError> {
    let live = |t: &&TaskView| t.state != TaskState::Killing;
    let selected: BTreeSet<&str> = match selection {
        KillSelection::All => tasks.iter().filter(live).map(|t| t.id.as_str()).collect(),
        KillSelection::Tasks(ids) => {
            let mut selected = BTreeSet::new();
            for id in ids {
                let task = tasks
                    .iter()
                    .find(|t| t.id == *id)
                    .ok_or_else(|| DeployError::UnknownTask { app: spec.id.clone(), task: id.clone() })?;
                if live(&task) {
                    selected.insert(task.id.as_str());
                }
            }
            selected
        }
    };
    let killed = u32::try_from(selected.len()).unwrap_or(u32::MAX);
    let spec = if scale { spec.scaled(spec.instances.saturating_sub(killed)) } else { spec.clone() };
    let view: Vec<TaskView> = tasks
        .iter()
        .map(|t| {
            let state = if selected.contains(t.id.as_str()) { TaskState::Killing } else { t.state };
            TaskView { state, ..t.clone() }
        })
        .collect();
    let mut step = plan(&spec, &view);
    let mut kill: Vec<TaskId> = selected.iter().map(|id| id.to_string()).collect();
    kill.append(&mut step.kill);
    step.kill = kill;
    Ok(Outcome { spec, step })
}

/// A deployment of one app: from `previous` (`None` for a new app) to `target`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Deployment {
    pub previous: Option<AppSpec>,
    pub target: AppSpec,
}

impl Deployment {
    pub fn step(&self, tasks: &[TaskView]) -> Step {
        plan(&self.target, tasks)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CancelMode {
    /// Go back to the previous spec: its version and instance count, replacing the target's
    /// tasks under the previous spec's upgrade strategy. A new app rolls back to no tasks (its
    /// target suspended).
    Rollback,
    /// Stop where it is: nothing is launched or killed and the returned step is done. Tasks of
    /// both versions keep running; the spec stays the target, so a task that later dies is
    /// replaced with the target version, and the next deployment of the app (or the next call
    /// to [`plan`] with this spec) replaces the remaining previous-version tasks.
    Abandon,
}

/// Cancel a deployment (Marathon `DELETE /v2/deployments/{id}`, without and with `force`).
pub fn cancel(deployment: &Deployment, tasks: &[TaskView], mode: CancelMode) -> Outcome {
    match mode {
        CancelMode::Rollback => {
            let spec = deployment.previous.clone().unwrap_or_else(|| deployment.target.suspended());
            let wording = Wording { action: "rollback", current: "restored", previous: "cancelled" };
            let step = plan_worded(&spec, tasks, Some(wording));
            Outcome { spec, step }
        }
        CancelMode::Abandon => Outcome {
            spec: deployment.target.clone(),
            step: Step { launch: 0, kill: Vec::new(), done: true, waiting_for: None },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strategy(min: f64, max: f64) -> UpgradeStrategy {
        UpgradeStrategy { minimum_health_capacity: min, maximum_over_capacity: max }
    }

    fn app(instances: u32, version: &str, min: f64, max: f64) -> AppSpec {
        AppSpec { upgrade: strategy(min, max), ..AppSpec::new("web", version, instances) }
    }

    fn task(id: &str, version: &str, state: TaskState, healthy: Option<bool>, ready: bool, at: u64) -> TaskView {
        TaskView { id: id.into(), version: version.into(), state, healthy, ready, started_at_ms: at }
    }

    fn serving(id: &str, version: &str, at: u64) -> TaskView {
        task(id, version, TaskState::Running, Some(true), true, at)
    }

    fn ids(step: &Step) -> Vec<&str> {
        step.kill.iter().map(String::as_str).collect()
    }

    /// How new tasks of the spec's version behave in the simulation.
    #[derive(Clone, Copy, PartialEq)]
    enum Fate {
        Healthy,
        /// Healthy but never passes its readiness check.
        NeverReady,
        Unhealthy,
    }

    /// A cell in miniature: applies steps, and on every tick moves each task one stage along
    /// (killing -> gone, staging -> running with unknown health -> its fate).
    struct Sim {
        spec: AppSpec,
        tasks: Vec<TaskView>,
        fate: Fate,
        now_ms: u64,
        launched: u32,
    }

    impl Sim {
        fn new(spec: AppSpec, old: usize, old_version: &str) -> Sim {
            let tasks = (0..old).map(|i| serving(&format!("old-{i}"), old_version, i as u64 * 10)).collect();
            Sim { spec, tasks, fate: Fate::Healthy, now_ms: 1_000, launched: 0 }
        }

        /// Plan, check every invariant against the state the plan saw, apply.
        fn step(&mut self) -> Step {
            let step = plan(&self.spec, &self.tasks);
            check_invariants(&self.spec, &self.tasks, &step);
            for id in &step.kill {
                self.tasks.iter_mut().find(|t| t.id == *id).unwrap().state = TaskState::Killing;
            }
            for _ in 0..step.launch {
                let id = format!("new-{}", self.launched);
                self.launched += 1;
                let t = task(&id, &self.spec.version, TaskState::Staging, None, false, self.now_ms);
                self.tasks.push(t);
            }
            step
        }

        fn tick(&mut self) {
            self.now_ms += 1_000;
            self.tasks.retain(|t| t.state != TaskState::Killing);
            let fate = self.fate;
            for t in &mut self.tasks {
                match (t.state, t.healthy) {
                    (TaskState::Staging, _) => t.state = TaskState::Running,
                    (TaskState::Running, None) => {
                        t.healthy = Some(fate != Fate::Unhealthy);
                        t.ready = fate == Fate::Healthy;
                    }
                    _ => {}
                }
            }
        }

        /// Step and tick until done or stuck; returns the steps taken.
        fn run(&mut self, max_rounds: usize) -> Vec<Step> {
            let mut steps = Vec::new();
            for _ in 0..max_rounds {
                let step = self.step();
                let finished = step.done || is_stuck(&step);
                steps.push(step);
                if finished {
                    return steps;
                }
                self.tick();
            }
            steps
        }

        fn versions(&self) -> Vec<&str> {
            self.tasks.iter().map(|t| t.version.as_str()).collect()
        }
    }

    fn is_stuck(step: &Step) -> bool {
        step.waiting_for.as_deref().is_some_and(|w| w.contains(": stuck: "))
    }

    fn check_invariants(spec: &AppSpec, before: &[TaskView], step: &Step) {
        let n = u64::from(spec.instances);
        let total = before.len() as u64;
        let counting_before = before.iter().filter(|t| t.counts_toward_capacity()).count() as u64;
        let killed: BTreeSet<&str> = step.kill.iter().map(String::as_str).collect();
        assert_eq!(killed.len(), step.kill.len(), "a task is killed twice: {step:?}");
        for id in &step.kill {
            let t = before.iter().find(|t| t.id == *id).unwrap_or_else(|| panic!("kill of unknown {id}"));
            assert_ne!(t.state, TaskState::Killing, "kill of a task already being killed: {id}");
        }
        if step.launch > 0 {
            assert!(
                total + u64::from(step.launch) <= spec.max_total_tasks(),
                "launch exceeds the maximum: {total} + {} > {} ({step:?})",
                step.launch,
                spec.max_total_tasks()
            );
        }
        let current_live =
            before.iter().filter(|t| t.state != TaskState::Killing && t.version == spec.version).count() as u64;
        assert!(u64::from(step.launch) <= n.saturating_sub(current_live), "over-launch: {step:?}");
        let counting_after =
            before.iter().filter(|t| t.counts_toward_capacity() && !killed.contains(t.id.as_str())).count() as u64;
        assert!(
            counting_after >= counting_before.min(spec.min_healthy_tasks()),
            "kills drop healthy capacity to {counting_after} below {} ({step:?})",
            spec.min_healthy_tasks()
        );
        if step.done {
            assert!(step.launch == 0 && step.kill.is_empty() && step.waiting_for.is_none(), "{step:?}");
        } else {
            assert!(step.waiting_for.is_some(), "not done without a reason: {step:?}");
        }
        assert_eq!(plan(spec, before), *step, "same input, same step");
    }

    fn assert_converged(sim: &Sim, steps: &[Step]) {
        let last = steps.last().unwrap();
        assert!(last.done, "not done after {} steps: {last:?}", steps.len());
        assert_eq!(sim.tasks.len(), sim.spec.instances as usize);
        assert!(sim.tasks.iter().all(|t| t.version == sim.spec.version && t.counts_toward_capacity()));
    }

    #[test]
    fn rolling_upgrade_half_minimum_quarter_over_capacity() {
        let mut sim = Sim::new(app(4, "v2", 0.5, 0.25), 4, "v1");
        let first = sim.step();
        // 2 of 4 must stay; 5 tasks at most: kill the two oldest, launch one.
        assert_eq!(ids(&first), ["old-0", "old-1"]);
        assert_eq!(first.launch, 1);
        sim.tick();
        let steps = sim.run(50);
        assert_converged(&sim, &steps);
    }

    #[test]
    fn rolling_upgrade_full_minimum_half_over_capacity() {
        let mut sim = Sim::new(app(4, "v2", 1.0, 0.5), 4, "v1");
        let first = sim.step();
        assert_eq!((first.launch, first.kill.len()), (2, 0));
        sim.tick();
        let second = sim.step();
        // Staging tasks do not count yet: nothing more to do.
        assert_eq!((second.launch, second.kill.len()), (0, 0));
        assert_eq!(
            second.waiting_for.as_deref(),
            Some(
                "upgrade of web: 2/4 new tasks not yet healthy and ready (2 health unknown); \
                 cannot launch 2 more new tasks without exceeding maximumOverCapacity 0.5 (at most 6 tasks, 6 now); \
                 cannot kill 4 old tasks without dropping below minimumHealthCapacity 1 (4 healthy needed)"
            )
        );
        sim.tick();
        // Two new tasks count now: two old ones may go.
        assert_eq!(ids(&sim.step()), ["old-0", "old-1"]);
        sim.tick();
        let steps = sim.run(50);
        assert_converged(&sim, &steps);
    }

    #[test]
    fn rolling_upgrade_without_minimum_or_over_capacity_kills_all_old_first() {
        let mut sim = Sim::new(app(4, "v2", 0.0, 0.0), 4, "v1");
        let first = sim.step();
        assert_eq!(ids(&first), ["old-0", "old-1", "old-2", "old-3"]);
        assert_eq!(first.launch, 0);
        assert_eq!(
            first.waiting_for.as_deref(),
            Some(
                "upgrade of web: 4 tasks being killed; cannot launch 4 more new tasks without exceeding maximumOverCapacity 0 (at most 4 tasks, 4 now)"
            )
        );
        sim.tick();
        let second = sim.step();
        assert_eq!((second.launch, second.kill.len()), (4, 0));
        sim.tick();
        let steps = sim.run(50);
        assert_converged(&sim, &steps);
    }

    #[test]
    fn rolling_upgrade_with_full_minimum_and_no_over_capacity_is_stuck() {
        let mut sim = Sim::new(app(4, "v2", 1.0, 0.0), 4, "v1");
        let steps = sim.run(10);
        assert_eq!(steps.len(), 1);
        let step = &steps[0];
        assert_eq!((step.launch, step.kill.len(), step.done), (0, 0, false));
        assert_eq!(
            step.waiting_for.as_deref(),
            Some(
                "upgrade of web: stuck: cannot launch 4 more new tasks without exceeding maximumOverCapacity 0 \
                 (at most 4 tasks, 4 now); cannot kill 4 old tasks without dropping below minimumHealthCapacity 1 \
                 (4 healthy needed); raise maximumOverCapacity or lower minimumHealthCapacity so that a task can be \
                 launched or killed"
            )
        );
        // Level-triggered: nothing changes, so neither does the answer.
        sim.tick();
        assert_eq!(sim.step(), *step);
        assert_eq!(sim.versions(), ["v1"; 4]);
    }

    #[test]
    fn unhealthy_new_tasks_never_let_old_ones_drop_below_minimum() {
        let mut sim = Sim::new(app(4, "v2", 0.75, 0.25), 4, "v1");
        sim.fate = Fate::Unhealthy;
        let steps = sim.run(30);
        assert_eq!(steps.len(), 30, "an upgrade whose new tasks fail never finishes");
        let last = steps.last().unwrap();
        assert!(!last.done && !is_stuck(last));
        assert_eq!(
            last.waiting_for.as_deref(),
            Some(
                "upgrade of web: 2/4 new tasks not yet healthy and ready (2 unhealthy); \
                 cannot launch 2 more new tasks without exceeding maximumOverCapacity 0.25 (at most 5 tasks, 5 now); \
                 cannot kill 3 old tasks without dropping below minimumHealthCapacity 0.75 (3 healthy needed)"
            )
        );
        let serving_old = sim.tasks.iter().filter(|t| t.version == "v1" && t.counts_toward_capacity()).count();
        assert_eq!(serving_old, 3);
        assert_eq!(sim.tasks.len(), 5, "3 old + 2 new: the over-capacity budget is in use");
    }

    #[test]
    fn new_tasks_count_only_once_ready() {
        let mut sim = Sim::new(app(4, "v2", 0.75, 0.25), 4, "v1");
        sim.fate = Fate::NeverReady;
        sim.run(20);
        // Healthy but not ready: the minimum is held by old tasks alone.
        assert_eq!(sim.tasks.iter().filter(|t| t.version == "v1").count(), 3);
        let new: Vec<&TaskView> = sim.tasks.iter().filter(|t| t.version == "v2").collect();
        assert!(new.iter().all(|t| t.healthy == Some(true) && !t.ready));
        // Once ready, the upgrade completes.
        for t in &mut sim.tasks {
            t.ready = true;
        }
        sim.fate = Fate::Healthy;
        let steps = sim.run(50);
        assert_converged(&sim, &steps);
    }

    #[test]
    fn waiting_for_names_what_blocks_the_upgrade() {
        let spec = app(4, "v2", 0.75, 0.25);
        let tasks = [
            serving("a", "v1", 1),
            serving("b", "v1", 2),
            serving("c", "v1", 3),
            task("d", "v2", TaskState::Running, Some(true), false, 4),
            task("e", "v2", TaskState::Running, Some(true), false, 5),
        ];
        let step = plan(&spec, &tasks);
        assert_eq!((step.launch, step.kill.len(), step.done), (0, 0, false));
        assert_eq!(
            step.waiting_for.as_deref(),
            Some(
                "upgrade of web: 2/4 new tasks not yet healthy and ready (2 not ready); \
                 cannot launch 2 more new tasks without exceeding maximumOverCapacity 0.25 (at most 5 tasks, 5 now); \
                 cannot kill 3 old tasks without dropping below minimumHealthCapacity 0.75 (3 healthy needed)"
            )
        );
    }

    #[test]
    fn old_tasks_that_do_not_count_go_first() {
        let spec = app(3, "v2", 1.0, 0.0);
        let tasks = [
            serving("a", "v1", 1),
            task("b", "v1", TaskState::Running, Some(false), true, 2),
            task("c", "v1", TaskState::Staging, None, false, 3),
        ];
        // Killing b and c costs no capacity; a is the only healthy one and must stay.
        let step = plan(&spec, &tasks);
        assert_eq!(ids(&step), ["b", "c"]);
        assert_eq!(step.launch, 0, "b and c still hold their place until gone");
    }

    #[test]
    fn every_strategy_converges_or_reports_stuck() {
        let fractions = [0.0, 0.25, 0.5, 0.75, 1.0];
        for instances in 0..=6u32 {
            for old in 0..=6usize {
                for min in fractions {
                    for max in fractions {
                        let spec = app(instances, "v2", min, max);
                        let mut sim = Sim::new(spec.clone(), old, "v1");
                        let steps = sim.run(100);
                        let last = steps.last().unwrap();
                        let ctx = format!("n={instances} old={old} min={min} max={max}: {last:?}");
                        let can_be_stuck =
                            old > 0 && instances > 0 && spec.max_total_tasks() <= spec.min_healthy_tasks();
                        if is_stuck(last) {
                            assert!(can_be_stuck, "{ctx}");
                            assert!(sim.tasks.iter().all(TaskView::counts_toward_capacity), "{ctx}");
                        } else {
                            assert!(!can_be_stuck, "{ctx}");
                            assert_converged(&sim, &steps);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn scale_up_launches_the_missing_tasks() {
        let mut sim = Sim::new(app(2, "v1", 1.0, 1.0), 2, "v1");
        assert!(sim.step().done);
        sim.spec = sim.spec.scaled(5);
        let step = sim.step();
        assert_eq!((step.launch, step.kill.len()), (3, 0));
        assert_eq!(step.waiting_for.as_deref(), Some("scale of web: 3/5 tasks not yet healthy and ready (3 starting)"));
        sim.tick();
        let steps = sim.run(10);
        assert_converged(&sim, &steps);
    }

    #[test]
    fn scale_down_kills_unhealthy_then_newest() {
        let spec = app(2, "v1", 1.0, 0.0);
        let tasks = [
            serving("a", "v1", 10),
            task("b", "v1", TaskState::Running, Some(false), true, 5),
            serving("c", "v1", 30),
            serving("d", "v1", 40),
            task("e", "v1", TaskState::Staging, None, false, 50),
            serving("f", "v1", 20),
        ];
        let step = plan(&spec, &tasks);
        assert_eq!(ids(&step), ["b", "e", "d", "c"]);
        assert_eq!(step.launch, 0);
        assert_eq!(step.waiting_for.as_deref(), Some("scale of web: 4 tasks being killed"));
    }

    #[test]
    fn steady_state_is_done_and_unhealthy_tasks_are_reported_not_killed() {
        let spec = app(2, "v1", 1.0, 0.0);
        let mut tasks = vec![serving("a", "v1", 1), serving("b", "v1", 2)];
        assert_eq!(plan(&spec, &tasks), Step { done: true, ..Step::default() });
        tasks[1].healthy = Some(false);
        let step = plan(&spec, &tasks);
        // Killing unhealthy tasks is the health tracker's call, not the planner's.
        assert_eq!((step.launch, step.kill.len(), step.done), (0, 0, false));
        assert_eq!(
            step.waiting_for.as_deref(),
            Some("scale of web: 1/2 tasks not yet healthy and ready (1 unhealthy)")
        );
    }

    #[test]
    fn suspend_kills_everything_and_keeps_the_spec() {
        let mut sim = Sim::new(app(3, "v1", 1.0, 0.0), 3, "v1");
        sim.spec = sim.spec.suspended();
        assert_eq!((sim.spec.instances, sim.spec.version.as_str()), (0, "v1"));
        let step = sim.step();
        assert_eq!(ids(&step), ["old-2", "old-1", "old-0"]);
        assert_eq!(step.waiting_for.as_deref(), Some("suspend of web: 3 tasks being killed"));
        sim.tick();
        assert!(sim.step().done);
        assert!(sim.tasks.is_empty());
        // Resuming brings the same version back.
        sim.spec = sim.spec.scaled(3);
        let steps = sim.run(10);
        assert_converged(&sim, &steps);
    }

    #[test]
    fn kill_one_task_then_replace_it() {
        let spec = app(3, "v1", 1.0, 0.0);
        let tasks = [serving("a", "v1", 1), serving("b", "v1", 2), serving("c", "v1", 3)];
        let out = kill_tasks(&spec, &tasks, &KillSelection::Tasks(vec!["b".into()]), false).unwrap();
        assert_eq!(out.spec, spec);
        assert_eq!(ids(&out.step), ["b"]);
        // No over-capacity: the replacement waits until b is gone.
        assert_eq!(out.step.launch, 0);
        assert_eq!(
            out.step.waiting_for.as_deref(),
            Some(
                "scale of web: 1 task being killed; cannot launch 1 more task without exceeding maximumOverCapacity 0 (at most 3 tasks, 3 now)"
            )
        );
        let gone = [serving("a", "v1", 1), serving("c", "v1", 3)];
        assert_eq!(plan(&spec, &gone).launch, 1);

        // With over-capacity the replacement starts at once.
        let spec = app(3, "v1", 1.0, 0.5);
        let out = kill_tasks(&spec, &tasks, &KillSelection::Tasks(vec!["b".into()]), false).unwrap();
        assert_eq!((ids(&out.step), out.step.launch), (vec!["b"], 1));
    }

    #[test]
    fn kill_and_scale_lowers_instances() {
        let spec = app(3, "v1", 1.0, 0.0);
        let tasks = [serving("a", "v1", 1), serving("b", "v1", 2), serving("c", "v1", 3)];
        let selection = KillSelection::Tasks(vec!["c".into(), "a".into(), "c".into()]);
        let out = kill_tasks(&spec, &tasks, &selection, true).unwrap();
        assert_eq!(out.spec.instances, 1);
        assert_eq!(out.spec.version, "v1");
        assert_eq!((ids(&out.step), out.step.launch), (vec!["a", "c"], 0));
        let after = [serving("b", "v1", 2)];
        assert!(plan(&out.spec, &after).done);
    }

    #[test]
    fn kill_all_tasks_with_and_without_scale() {
        let spec = app(2, "v1", 1.0, 1.0);
        let tasks =
            [serving("a", "v1", 1), serving("b", "v1", 2), task("z", "v1", TaskState::Killing, Some(true), true, 0)];
        let restart = kill_tasks(&spec, &tasks, &KillSelection::All, false).unwrap();
        assert_eq!(restart.spec.instances, 2);
        assert_eq!(ids(&restart.step), ["a", "b"]);
        assert_eq!(restart.step.launch, 1, "4 tasks at most, 3 being killed: one replacement fits");

        let wipe = kill_tasks(&spec, &tasks, &KillSelection::All, true).unwrap();
        assert_eq!(wipe.spec.instances, 0);
        assert_eq!((ids(&wipe.step), wipe.step.launch), (vec!["a", "b"], 0));
        assert_eq!(wipe.step.waiting_for.as_deref(), Some("suspend of web: 3 tasks being killed"));

        let err = kill_tasks(&spec, &tasks, &KillSelection::Tasks(vec!["nope".into()]), false).unwrap_err();
        assert_eq!(err, DeployError::UnknownTask { app: "web".into(), task: "nope".into() });
        // A task already being killed is neither killed again nor counted.
        let again = kill_tasks(&spec, &tasks, &KillSelection::Tasks(vec!["z".into()]), true).unwrap();
        assert_eq!((again.spec.instances, again.step.kill.len()), (2, 0));
    }

    #[test]
    fn cancel_rollback_restores_the_previous_version_and_count() {
        let previous = app(3, "v1", 1.0, 0.5);
        let target = app(5, "v2", 1.0, 0.5);
        let deployment = Deployment { previous: Some(previous.clone()), target: target.clone() };
        let mut sim = Sim::new(target, 3, "v1");
        for _ in 0..3 {
            let step = deployment.step(&sim.tasks);
            assert_eq!(step, sim.step());
            sim.tick();
        }
        assert!(sim.versions().contains(&"v2"));

        let out = cancel(&deployment, &sim.tasks, CancelMode::Rollback);
        assert_eq!(out.spec, previous);
        assert!(out.step.waiting_for.as_deref().unwrap().starts_with("rollback of web: "));
        // Drive the rollback with the previous spec: back to 3 tasks of v1, invariants held.
        sim.spec = out.spec;
        let steps = sim.run(50);
        assert_converged(&sim, &steps);
        assert_eq!(sim.versions(), ["v1"; 3]);
    }

    #[test]
    fn cancel_rollback_of_a_new_app_stops_it() {
        let target = app(2, "v1", 1.0, 0.0);
        let deployment = Deployment { previous: None, target };
        let tasks = [serving("a", "v1", 1), task("b", "v1", TaskState::Staging, None, false, 2)];
        let out = cancel(&deployment, &tasks, CancelMode::Rollback);
        assert_eq!(out.spec.instances, 0);
        assert_eq!(ids(&out.step), ["b", "a"]);
    }

    #[test]
    fn cancel_abandon_leaves_tasks_as_they_are() {
        let deployment = Deployment { previous: Some(app(3, "v1", 1.0, 0.5)), target: app(3, "v2", 1.0, 0.5) };
        let tasks = [serving("a", "v1", 1), serving("b", "v1", 2), serving("c", "v2", 3)];
        let out = cancel(&deployment, &tasks, CancelMode::Abandon);
        assert_eq!(out.spec, deployment.target);
        assert_eq!(out.step, Step { done: true, ..Step::default() });
    }

    #[test]
    fn capacity_rounding_tolerates_binary_fractions() {
        let spec = app(10, "v1", 0.7, 0.1);
        assert_eq!(spec.min_healthy_tasks(), 7);
        assert_eq!(spec.max_total_tasks(), 11);
        let spec = app(3, "v1", 0.5, 0.34);
        assert_eq!((spec.min_healthy_tasks(), spec.max_total_tasks()), (2, 5));
        assert_eq!((app(0, "v1", 1.0, 1.0).min_healthy_tasks(), app(0, "v1", 1.0, 1.0).max_total_tasks()), (0, 0));
        // An unvalidated spec is clamped to the safest reading.
        let bad = app(4, "v1", f64::NAN, 7.0);
        assert_eq!((bad.min_healthy_tasks(), bad.max_total_tasks()), (4, 8));
    }

    fn with_deps(id: &str, deps: &[&str]) -> AppSpec {
        AppSpec { dependencies: deps.iter().map(|d| d.to_string()).collect(), ..AppSpec::new(id, "v1", 1) }
    }

    #[test]
    fn start_order_puts_dependencies_first_in_waves() {
        let apps = [
            with_deps("web", &["api"]),
            with_deps("api", &["db", "cache"]),
            with_deps("worker", &["db"]),
            with_deps("db", &[]),
            with_deps("cache", &[]),
            with_deps("report", &["web", "db"]),
        ];
        let waves = start_order(&apps).unwrap();
        assert_eq!(waves, [vec!["cache", "db"], vec!["api", "worker"], vec!["web"], vec!["report"]]);
        let mut reversed = waves.clone();
        reversed.reverse();
        assert_eq!(stop_order(&apps).unwrap(), reversed);
        // Input order does not matter.
        let mut shuffled = apps.to_vec();
        shuffled.reverse();
        assert_eq!(start_order(&shuffled).unwrap(), waves);
    }

    #[test]
    fn a_group_dependency_covers_every_app_under_it() {
        let apps = [
            with_deps("/prod/db/pg", &[]),
            with_deps("/prod/db/redis", &[]),
            with_deps("/prod/web", &["/prod/db/"]),
            with_deps("/prod/dbx", &[]),
        ];
        let set = AppSet::new(apps).unwrap();
        let deps: Vec<&str> = set.dependencies_of("/prod/web").unwrap().iter().map(String::as_str).collect();
        assert_eq!(deps, ["/prod/db/pg", "/prod/db/redis"]);
        assert_eq!(set.start_order(), [vec!["/prod/db/pg", "/prod/db/redis", "/prod/dbx"], vec!["/prod/web"]]);
    }

    #[test]
    fn invalid_specs_report_every_problem() {
        let mut bad_range = with_deps("ranges", &[]);
        bad_range.upgrade = strategy(1.5, -0.1);
        let mut nan = with_deps("nan", &[]);
        nan.upgrade.minimum_health_capacity = f64::NAN;
        let mut no_version = with_deps("empty", &[]);
        no_version.version.clear();
        let apps = [
            bad_range,
            nan,
            no_version,
            with_deps("Bad_Id", &[]),
            with_deps("dup", &[]),
            with_deps("dup", &[]),
            with_deps("self", &["self"]),
            with_deps("/g/inner", &["/g"]),
            with_deps("lonely", &["ghost"]),
        ];
        let problems = AppSet::new(apps).unwrap_err();
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "app ranges: minimumHealthCapacity 1.5 is outside [0, 1]",
                "app ranges: maximumOverCapacity -0.1 is outside [0, 1]",
                "app nan: minimumHealthCapacity NaN is outside [0, 1]",
                "app empty: version is empty; set it to a string that changes whenever the spec changes",
                "app id \"Bad_Id\" is invalid: use '/'-separated segments of lowercase letters, digits, '-' and '.', each starting and ending with a letter or digit (e.g. /prod/web)",
                "app dup is defined more than once; app ids must be unique",
                "app /g/inner depends on itself (dependency /g); an app cannot depend on itself or on a group that contains it",
                "app lonely depends on ghost, which is neither an app nor a group of apps in this set",
                "app self depends on itself (dependency self); an app cannot depend on itself or on a group that contains it",
            ]
        );
        assert_eq!(with_deps("ok", &[]).validate(), Ok(()));
        assert!(matches!(with_deps("", &[]).validate(), Err(SpecError::InvalidId { .. })));
        for id in ["/", "a//b", "-a", "a-", "/a/B", "a b"] {
            assert!(!is_valid_path(id), "{id}");
        }
        for id in ["a", "/a", "/prod/web-1", "v1.2/x"] {
            assert!(is_valid_path(id), "{id}");
        }
    }

    #[test]
    fn dependency_cycles_are_named() {
        let apps = [
            with_deps("a", &["b"]),
            with_deps("b", &["c"]),
            with_deps("c", &["a"]),
            with_deps("d", &["a"]),
            with_deps("x", &["y"]),
            with_deps("y", &["x"]),
            with_deps("free", &[]),
        ];
        let problems = AppSet::new(apps).unwrap_err();
        assert_eq!(
            problems,
            [
                SpecError::DependencyCycle { cycle: vec!["a".into(), "b".into(), "c".into(), "a".into()] },
                SpecError::DependencyCycle { cycle: vec!["x".into(), "y".into(), "x".into()] },
            ]
        );
        assert_eq!(
            problems[0].to_string(),
            "dependency cycle a -> b -> c -> a: none of these apps could start; remove one of these dependencies"
        );
        // A walk that enters a cycle from outside reports only the cycle.
        let problems =
            AppSet::new([with_deps("a", &["m"]), with_deps("m", &["n"]), with_deps("n", &["m"])]).unwrap_err();
        assert_eq!(problems, [SpecError::DependencyCycle { cycle: vec!["m".into(), "n".into(), "m".into()] }]);
    }
}
