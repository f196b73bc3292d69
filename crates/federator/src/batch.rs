//! The leader's write path into Raft. openraft 0.9 makes each log entry durable on the leader
//! before it takes the next client write, so one write per entry caps commits at the disk's
//! serial flush rate however many clients wait. Here at most `writes_in_flight` entries are
//! being committed at once; writes that arrive meanwhile queue, and the next entry carries all
//! of them (up to `max_writes_per_entry`) as one [`Command`]: one flush and one replication
//! round for the lot. A lone write never waits: with an entry slot free it goes at once.
//!
//! Every write in an entry is applied at the entry's log index, in arrival order, each with its
//! own response (`State::apply_command`), so each caller learns exactly what its own write did.
//! Entries in flight at once may reach Raft in either order: writes from different callers are
//! concurrent, and no caller sends a write before its previous one is answered.
//!
//! A write is never proposed once its caller has gone (a cancelled request, a forwarding
//! follower that timed out) or after it queued past the write timeout. An entry's writers are
//! told "may still commit" when Raft does not answer in time or this replica stops leading the
//! term it proposed in, since Raft does not always answer a deposed leader's writes.
//!
//! Entries carrying batches are read only by versions that know them: a rolling upgrade from
//! a version without batching runs with `max_writes_per_entry = 1` until every replica runs the
//! new one (runbooks/federator-recovery.md).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use switchyard_core::{Action, Command, Proposal, Response};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;

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
    queued: Instant,
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
            .send(Queued { proposal, reply, queued: Instant::now() })
            .map_err(|_| WriteFailed::Raft("the write path is shut down".into()))?;
        answer.await.map_err(|_| WriteFailed::Raft("the write path stopped before the write was answered".into()))?
    }
}

/// Actions that carry bulk data (a cell's report of everything it runs, whole group specs, an
/// evacuation's plan) travel in an entry of their own: Raft cannot split an entry across
/// messages, so a batch of them could outgrow what a peer accepts and never replicate.
fn travels_alone(action: &Action) -> bool {
    matches!(
        action,
        Action::CellReport(_)
            | Action::RegisterGroup(_)
            | Action::UpdateGroup { .. }
            | Action::RollbackGroup { .. }
            | Action::StartEvacuation { .. }
    )
}

async fn run(raft: Raft, mut rx: mpsc::UnboundedReceiver<Queued>, counts: Arc<Counts>, limits: Limits) {
    let slots = Arc::new(Semaphore::new(limits.in_flight.max(1)));
    // A write taken from the queue that had to wait for the next entry.
    let mut held: Option<Queued> = None;
    loop {
        // Wait for a free slot first: whatever queues meanwhile goes in the next entry.
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let first = match held.take() {
            Some(q) => q,
            None => match rx.recv().await {
                Some(q) => q,
                None => return,
            },
        };
        let batch = next_batch(first, &mut rx, &mut held, &limits);
        if batch.is_empty() {
            continue;
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

/// The writes of the next entry: `first` and whatever is queued behind it, up to the limit; a
/// write that travels alone ends the batch (and waits in `held` unless it is first); writes
/// whose callers have gone or that queued too long are left out.
fn next_batch(
    first: Queued,
    rx: &mut mpsc::UnboundedReceiver<Queued>,
    held: &mut Option<Queued>,
    limits: &Limits,
) -> Vec<Queued> {
    let mut batch = Vec::new();
    let mut next = Some(first);
    while let Some(q) = next.take() {
        match still_wanted(q, limits.timeout) {
            // Its caller gave up: proposing it now would commit what they were told failed.
            None => {}
            Some(q) if !batch.is_empty() && travels_alone(&q.proposal.action) => {
                *held = Some(q);
                break;
            }
            Some(q) => batch.push(q),
        }
        if batch.len() >= limits.per_entry || batch.first().is_some_and(|q| travels_alone(&q.proposal.action)) {
            break;
        }
        next = rx.try_recv().ok();
    }
    batch
}

/// `q` if its caller still waits for it and it has not queued past the write timeout (then its
/// caller is told so, and it is never proposed).
fn still_wanted(q: Queued, timeout: Duration) -> Option<Queued> {
    if q.reply.is_closed() {
        return None;
    }
    if q.queued.elapsed() > timeout {
        let _ = q.reply.send(Err(WriteFailed::Raft(format!(
            "waited {} ms for the leader to take it; it was not proposed",
            q.queued.elapsed().as_millis()
        ))));
        return None;
    }
    Some(q)
}

/// Answers each write of `batch` once its entry is applied; gives up (telling each writer the
/// entry may still commit) when this replica stops being the leader of the term it proposed
/// in, or after `timeout`.
async fn commit(raft: &Raft, batch: Vec<Queued>, timeout: Duration) {
    metrics::histogram!("federator_writes_per_entry").record(batch.len() as f64);
    let (proposals, replies): (Vec<Proposal>, Vec<oneshot::Sender<Written>>) =
        batch.into_iter().map(|q| (q.proposal, q.reply)).unzip();
    let count = proposals.len();
    let mut metrics = raft.metrics();
    let (me, term) = {
        let m = metrics.borrow();
        (m.id, m.current_term)
    };
    let deposed = metrics.wait_for(|m| m.current_term != term || m.current_leader != Some(me));
    let unanswered = |why: String| {
        WriteFailed::Raft(format!(
            "{why} before its entry was applied (the write may still commit; check before retrying)"
        ))
    };
    let outcome = tokio::select! {
        w = tokio::time::timeout(timeout, raft.client_write(Command::of(proposals))) => match w {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => Err(WriteFailed::NotLeader(f.leader_id)),
            Ok(Err(e)) => Err(WriteFailed::Raft(e.to_string())),
            Err(_) => Err(unanswered(format!("no answer from Raft within {} ms", timeout.as_millis()))),
        },
        _ = deposed => Err(unanswered(format!("node {me} stopped leading term {term}"))),
    };
    match outcome {
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
        Err(failed) => {
            for reply in replies {
                let _ = reply.send(Err(failed.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_core::FreezeScope;
    use switchyard_core::report::CellReport;

    fn freeze(n: usize) -> Proposal {
        let action = Action::SetFreeze { scope: FreezeScope::Global, reason: format!("w{n}"), until_ms: None };
        Proposal::new(1, "operator:test", action)
    }

    fn report() -> Proposal {
        Proposal::new(1, "cell:site-1", Action::CellReport(CellReport { site: "site-1".into(), ..Default::default() }))
    }

    fn queued(p: Proposal) -> (Queued, oneshot::Receiver<Written>) {
        let (reply, answer) = oneshot::channel();
        (Queued { proposal: p, reply, queued: Instant::now() }, answer)
    }

    fn limits(per_entry: usize) -> Limits {
        Limits { in_flight: 2, per_entry, timeout: Duration::from_secs(10) }
    }

    fn reasons(batch: &[Queued]) -> Vec<String> {
        batch
            .iter()
            .map(|q| match &q.proposal.action {
                Action::SetFreeze { reason, .. } => reason.clone(),
                Action::CellReport(_) => "report".into(),
                other => format!("{other:?}"),
            })
            .collect()
    }

    /// Queues `proposals` behind a first write and takes one batch; the receivers of answers
    /// are kept alive (their callers wait).
    fn take(first: Proposal, rest: Vec<Proposal>, per_entry: usize) -> (Vec<String>, Option<String>) {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut waiting = Vec::new();
        for p in rest {
            let (q, a) = queued(p);
            waiting.push(a);
            tx.send(q).unwrap();
        }
        let (first, a) = queued(first);
        waiting.push(a);
        let mut held = None;
        let batch = next_batch(first, &mut rx, &mut held, &limits(per_entry));
        (reasons(&batch), held.map(|q| reasons(&[q]).remove(0)))
    }

    #[test]
    fn queued_writes_share_an_entry_up_to_the_limit() {
        assert_eq!(
            take(freeze(0), vec![freeze(1), freeze(2)], 64),
            (vec!["w0".into(), "w1".into(), "w2".into()], None)
        );
        assert_eq!(take(freeze(0), vec![freeze(1), freeze(2)], 2).0, vec!["w0", "w1"]);
        assert_eq!(take(freeze(0), vec![], 64).0, vec!["w0"], "a lone write goes at once");
    }

    #[test]
    fn bulky_writes_travel_alone() {
        assert_eq!(take(report(), vec![freeze(1)], 64), (vec!["report".into()], None), "first: alone");
        assert_eq!(
            take(freeze(0), vec![freeze(1), report(), freeze(3)], 64),
            (vec!["w0".into(), "w1".into()], Some("report".into())),
            "behind others: it waits for the next entry"
        );
    }

    #[test]
    fn writes_whose_callers_left_or_that_waited_too_long_are_never_proposed() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (gone, answer) = queued(freeze(1));
        drop(answer);
        tx.send(gone).unwrap();
        let (mut stale, stale_answer) = queued(freeze(2));
        stale.queued = Instant::now() - Duration::from_secs(11);
        tx.send(stale).unwrap();
        let (kept, _kept_answer) = queued(freeze(3));
        tx.send(kept).unwrap();
        let (first, _first_answer) = queued(freeze(0));
        let batch = next_batch(first, &mut rx, &mut None, &limits(64));
        assert_eq!(reasons(&batch), vec!["w0", "w3"]);
        let told = stale_answer.blocking_recv().expect("the stale write's caller is answered");
        assert!(matches!(told, Err(WriteFailed::Raft(ref m)) if m.contains("not proposed")), "{told:?}");
    }
}
