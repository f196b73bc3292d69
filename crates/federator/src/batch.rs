//! The leader's write path into Raft. openraft 0.9 makes each log entry durable on the leader
//! before it takes the next client write, so one write per entry caps commits at the disk's
//! serial flush rate however many clients wait. Here at most `writes_in_flight` entries are
//! being committed at once; writes that arrive meanwhile queue, and the next entry carries all
//! of them (up to `max_writes_per_entry`) as one [`Command`]: one flush and one replication
//! round for the lot. A lone write never waits: with an entry slot free it goes at once.
//!
//! Every write in an entry is applied at the entry's log index, in arrival order, each with its
//! own response (`State::apply_command`), so each caller learns exactly what its own write did.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use switchyard_core::{Command, Proposal, Response};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::raft::Raft;

/// How the write path batches.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Entries being committed at once.
    pub in_flight: usize,
    /// Writes one entry carries at most.
    pub per_entry: usize,
    /// How long an entry may take to commit before its writers are told it timed out (it may
    /// still commit) and its slot is freed. Raft does not always answer a write whose leader
    /// was deposed, and a slot held forever would stop every later write.
    pub timeout: Duration,
}

/// Why a write did not commit here.
#[derive(Clone, Debug)]
pub enum WriteFailed {
    /// This replica is not (or no longer) the leader; the leader it knows of, if any.
    NotLeader(Option<u64>),
    /// Raft failed otherwise (shutting down, storage error).
    Raft(String),
}

/// What a committed write returns: its response and the log index of its entry.
pub type Written = Result<(Response, u64), WriteFailed>;

struct Queued {
    proposal: Proposal,
    reply: oneshot::Sender<Written>,
}

/// Handle for queuing writes; the batching task ends when the last handle is dropped.
#[derive(Clone)]
pub struct Writes {
    tx: mpsc::UnboundedSender<Queued>,
    counts: Arc<Counts>,
}

/// Entries proposed and the writes they carried, since the start.
#[derive(Default)]
struct Counts {
    entries: AtomicU64,
    writes: AtomicU64,
}

impl Writes {
    /// Starts the batching task for `raft`.
    pub fn start(raft: Raft, limits: Limits) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let counts = Arc::new(Counts::default());
        tokio::spawn(run(raft, rx, counts.clone(), limits));
        Self { tx, counts }
    }

    /// How many entries this path has proposed, and how many writes they carried.
    pub fn counts(&self) -> (u64, u64) {
        (self.counts.entries.load(Ordering::Relaxed), self.counts.writes.load(Ordering::Relaxed))
    }

    /// Commits `proposal` (in an entry of its own or with others queued beside it).
    pub async fn write(&self, proposal: Proposal) -> Written {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Queued { proposal, reply })
            .map_err(|_| WriteFailed::Raft("the write path is shut down".into()))?;
        answer.await.map_err(|_| WriteFailed::Raft("the write path stopped before the write was answered".into()))?
    }
}

async fn run(raft: Raft, mut rx: mpsc::UnboundedReceiver<Queued>, counts: Arc<Counts>, limits: Limits) {
    let slots = Arc::new(Semaphore::new(limits.in_flight.max(1)));
    loop {
        // Wait for a free slot first: whatever queues meanwhile goes in the next entry.
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let Some(first) = rx.recv().await else { return };
        let mut batch = vec![first];
        while batch.len() < limits.per_entry {
            match rx.try_recv() {
                Ok(q) => batch.push(q),
                Err(_) => break,
            }
        }
        counts.entries.fetch_add(1, Ordering::Relaxed);
        counts.writes.fetch_add(batch.len() as u64, Ordering::Relaxed);
        let raft = raft.clone();
        tokio::spawn(async move {
            let _slot = slot;
            commit(&raft, batch, limits.timeout).await;
        });
    }
}

async fn commit(raft: &Raft, batch: Vec<Queued>, timeout: Duration) {
    metrics::histogram!("federator_writes_per_entry").record(batch.len() as f64);
    let (proposals, replies): (Vec<Proposal>, Vec<oneshot::Sender<Written>>) =
        batch.into_iter().map(|q| (q.proposal, q.reply)).unzip();
    let count = proposals.len();
    let written = tokio::time::timeout(timeout, raft.client_write(Command::of(proposals))).await;
    let Ok(written) = written else {
        let failed = WriteFailed::Raft(format!(
            "no answer from Raft within {} ms (the write may still commit; check before retrying)",
            timeout.as_millis()
        ));
        for reply in replies {
            let _ = reply.send(Err(failed.clone()));
        }
        return;
    };
    match written {
        Ok(resp) => {
            let index = resp.log_id.index;
            let mut responses = resp.data.into_iter();
            for reply in replies {
                let written = match responses.next() {
                    Some(r) => Ok((r, index)),
                    None => Err(WriteFailed::Raft(format!("entry {index} answered fewer than its {count} writes"))),
                };
                let _ = reply.send(written);
            }
        }
        Err(e) => {
            let failed = match e {
                RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => WriteFailed::NotLeader(f.leader_id),
                e => WriteFailed::Raft(e.to_string()),
            };
            for reply in replies {
                let _ = reply.send(Err(failed.clone()));
            }
        }
    }
}
