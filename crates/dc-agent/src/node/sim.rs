//! A simulated executor: tasks without processes, for scale tests of the cell and the
//! federation (`dc-agent node --simulate`). It keeps the process executor's contract (the
//! conformance battery in [`super::conformance`] runs against both): commands are resolved the
//! same way and an unknown one fails with the same message, a task is `Starting` and then
//! `Running` and healthy, a crashed task is restarted with a growing `restarts` count, and a
//! task no longer assigned goes through `Stopping` and disappears. Pids are 0: there is no
//! process to signal, account or adopt.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchyard_proto::common::v1::TaskState;
use switchyard_proto::node::v1 as nodepb;
use tokio::task::JoinHandle;

use super::executor::{StatusBoard, TaskExecutor, resolve_command};

/// How long a simulated task takes to start, to restart after a crash, and to stop.
#[derive(Clone, Copy, Debug)]
pub struct SimTiming {
    pub start: Duration,
    pub restart: Duration,
    pub stop: Duration,
}

impl Default for SimTiming {
    fn default() -> Self {
        SimTiming {
            start: Duration::from_millis(50),
            restart: Duration::from_millis(200),
            stop: Duration::from_millis(20),
        }
    }
}

struct SimTask {
    spec: nodepb::TaskSpec,
    /// The pending start or restart, if any.
    timer: Option<JoinHandle<()>>,
}

pub struct SimExecutor {
    board: Arc<StatusBoard>,
    tasks: Arc<Mutex<BTreeMap<String, SimTask>>>,
    timing: SimTiming,
    bin_dir: Option<std::path::PathBuf>,
}

impl SimExecutor {
    pub fn new(timing: SimTiming, bin_dir: Option<std::path::PathBuf>) -> Self {
        SimExecutor { board: Arc::new(StatusBoard::new()), tasks: Arc::default(), timing, bin_dir }
    }

    /// The task's "process" dies: it goes to backoff and is started again after the restart
    /// delay, as the process executor does after an exit.
    pub fn crash(&self, task_id: &str) {
        let mut tasks = self.tasks.lock().expect("sim mutex poisoned");
        let Some(t) = tasks.get_mut(task_id) else { return };
        let spec = t.spec.clone();
        let mut restarts = 0;
        self.board.update(&spec, |s| {
            s.restarts += 1;
            restarts = s.restarts;
            s.state = TaskState::Backoff as i32;
            s.healthy = false;
            s.message = format!("exited (simulated crash); retrying in {} ms", self.timing.restart.as_millis());
        });
        tracing::info!(task = %task_id, restarts, "simulated task crashed");
        if let Some(old) = t.timer.take() {
            old.abort();
        }
        t.timer = Some(self.schedule_running(spec, self.timing.restart));
    }

    fn schedule_running(&self, spec: nodepb::TaskSpec, after: Duration) -> JoinHandle<()> {
        let board = self.board.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            board.update(&spec, |s| {
                s.state = TaskState::Running as i32;
                s.healthy = true;
                s.not_ready = false;
                s.pid = 0;
                s.message = "running (simulated)".into();
            });
        })
    }

    fn converge(&self, specs: Vec<nodepb::TaskSpec>) -> Vec<JoinHandle<()>> {
        let wanted: BTreeMap<String, nodepb::TaskSpec> = specs.into_iter().map(|s| (s.task_id.clone(), s)).collect();
        let mut tasks = self.tasks.lock().expect("sim mutex poisoned");
        let mut stopping = Vec::new();
        let gone: Vec<String> = tasks.keys().filter(|id| !wanted.contains_key(*id)).cloned().collect();
        for id in gone {
            let Some(t) = tasks.remove(&id) else { continue };
            if let Some(timer) = t.timer {
                timer.abort();
            }
            self.board.update(&t.spec, |s| {
                s.state = TaskState::Stopping as i32;
                s.healthy = false;
            });
            let (board, stop) = (self.board.clone(), self.timing.stop);
            stopping.push(tokio::spawn(async move {
                tokio::time::sleep(stop).await;
                board.remove(&id);
            }));
        }
        for (id, spec) in wanted {
            if let Some(t) = tasks.get(&id)
                && t.spec == spec
            {
                continue;
            }
            if let Err(message) =
                resolve_command(&spec.command, self.bin_dir.as_deref(), std::env::var_os("PATH").as_deref())
            {
                self.board.update(&spec, |s| {
                    s.state = TaskState::Failed as i32;
                    s.healthy = false;
                    s.message = message;
                });
                tasks.insert(id, SimTask { spec, timer: None });
                continue;
            }
            self.board.update(&spec, |s| {
                s.state = TaskState::Starting as i32;
                s.healthy = false;
            });
            let timer = Some(self.schedule_running(spec.clone(), self.timing.start));
            if let Some(old) = tasks.insert(id, SimTask { spec, timer }).and_then(|t| t.timer) {
                old.abort();
            }
        }
        stopping
    }
}

impl TaskExecutor for SimExecutor {
    fn board(&self) -> &Arc<StatusBoard> {
        &self.board
    }

    fn apply(&self, tasks: Vec<nodepb::TaskSpec>) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        let _stopping = self.converge(tasks);
        Box::pin(async {})
    }

    fn shutdown(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        let stopping = self.converge(Vec::new());
        Box::pin(async move {
            for s in stopping {
                let _ = s.await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::conformance::{Subject, battery};

    #[tokio::test]
    async fn the_simulated_executor_passes_the_conformance_battery() {
        battery(|_dir| {
            let sim = Arc::new(SimExecutor::new(SimTiming::default(), None));
            let crash = {
                let sim = sim.clone();
                Box::new(move |id: &str| sim.crash(id)) as Box<dyn Fn(&str) + Send + Sync>
            };
            Subject { executor: sim, crash, real_processes: false }
        })
        .await;
    }
}
