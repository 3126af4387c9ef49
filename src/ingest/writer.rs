//! The group-commit writer: the one task that writes ingested data to the store.
//!
//! Sources submit [`Pending`] batches over a bounded channel and wait for the commit. While one
//! commit runs, new submissions queue; the next commit takes all of them (up to a bound) in one
//! transaction. A submitter is acknowledged only after its data is durable.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;

use super::Pending;
use crate::rollup::{Agg, Resolution, SeriesKey};
use crate::storage::{CommitPos, Store, StoreError, WriteBatch};
use crate::telemetry::metrics;

/// Submissions waiting for the writer; beyond this, submitters wait (backpressure).
const QUEUE: usize = 1024;

/// Told about each commit of the writer, in order: state derived from the store (the read
/// cache) stays exact by applying what each commit added instead of re-reading it.
pub trait CommitObserver: Send + Sync {
    /// The commit is durable; called before its submitters are acknowledged.
    fn committed(&self, commit: &Committed<'_>);
    /// The commit failed; it may have touched `series`.
    fn commit_failed(&self, series: &[SeriesKey]);
}

/// What one commit added.
#[derive(Debug)]
pub struct Committed<'a> {
    /// The series it touched, in key order.
    pub series: &'a [SeriesKey],
    /// Its one-second deltas as (index into `series`, second, delta), grouped by series; `None`
    /// when the commit's rows are not all derived from seconds, so an observer must forget
    /// `series` instead.
    pub seconds: Option<&'a [(u32, i64, Agg)]>,
    /// Its place in the store's order of commits, when the store numbers them.
    pub pos: Option<CommitPos>,
}

/// Why a submission was not committed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    /// The batch's offsets were fenced by another consumer; nothing of it was applied.
    #[error("{0}")]
    Fenced(String),
    #[error("store write failed: {0}")]
    Failed(String),
    /// The store refused something this batch holds; nothing of it was applied (the other
    /// batches of its group were committed without it).
    #[error("the store refused the batch: {0}")]
    Rejected(String),
    /// The batch's idempotency key was committed before (`Duplicate`), or is in the same group
    /// as another request with that key (`InProgress`); nothing of it was applied.
    #[error("idempotency key already committed")]
    Duplicate,
    #[error("a request with this idempotency key is in progress")]
    InProgress,
    #[error("the writer has shut down")]
    Closed,
    /// Dead letters the batch replays were replayed by another batch first; nothing of it was
    /// applied.
    #[error("dead letters being replayed were already replayed")]
    Replayed,
    /// The disk holding the store is below its free-space floor: nothing is written until space
    /// is freed (so no commit fails half-way on a full disk).
    #[error("{0}")]
    DiskLow(String),
}

struct Job {
    pending: Pending,
    ack: oneshot::Sender<Result<(), WriteError>>,
}

/// A handle for submitting batches; cheap to clone.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Job>,
    stats: Arc<WriterStats>,
    incoming: Arc<Incoming>,
    /// Why writes are refused now (the disk is below its floor), if they are.
    refusing: Arc<std::sync::RwLock<Option<String>>>,
}

/// Batches announced but not yet submitted.
#[derive(Debug, Default)]
struct Incoming {
    count: AtomicUsize,
    changed: Notify,
}

/// A batch being prepared for [`Writer::submit_announced`]; dropping it withdraws the announcement.
#[derive(Debug)]
pub struct Announced {
    incoming: Arc<Incoming>,
}

impl Drop for Announced {
    fn drop(&mut self) {
        self.incoming.count.fetch_sub(1, Ordering::AcqRel);
        self.incoming.changed.notify_one();
    }
}

/// Counters since start: how well group commit groups, and how much went through.
#[derive(Debug, Default, serde::Serialize)]
pub struct WriterStats {
    /// Submissions acknowledged as committed.
    pub submissions: AtomicU64,
    /// Store transactions committed.
    pub commits: AtomicU64,
    /// Events accepted and committed.
    pub events: AtomicU64,
    /// Dead letters committed.
    pub dead_letters: AtomicU64,
    /// Transactions that failed (fenced ones included).
    pub failed_commits: AtomicU64,
    /// When the commit running now started (epoch ms; 0 when none runs): `/readyz` reports a
    /// writer stuck on a commit (a lock held elsewhere, a slow disk) as not ready.
    pub commit_started_ms: std::sync::atomic::AtomicI64,
}

impl Writer {
    /// Starts the writer task. It ends once every `Writer` handle is dropped and the queue is empty.
    ///
    /// `linger` is how long a commit is held back, at most, for announced batches still being
    /// parsed. A commit costs about the same for one request as for sixteen (its rows are per
    /// series, not per event), so letting the batches already on their way join it is worth a
    /// few milliseconds; a request that arrives alone is not held at all.
    pub fn spawn(
        store: Arc<dyn Store>,
        max_batch_events: usize,
        linger: Duration,
        observers: Vec<Arc<dyn CommitObserver>>,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let stats = Arc::new(WriterStats::default());
        let incoming = Arc::new(Incoming::default());
        let task = tokio::spawn(run(store, rx, max_batch_events, linger, observers, stats.clone(), incoming.clone()));
        (Self { tx, stats, incoming, refusing: Arc::default() }, task)
    }

    /// Refuses every submission with `why` (or accepts them again with `None`): set by the disk
    /// watch when free space falls below the floor, and back when it recovers.
    pub fn refuse(&self, why: Option<String>) {
        *self.refusing.write().unwrap_or_else(|e| e.into_inner()) = why;
    }

    fn check_refusing(&self) -> Result<(), WriteError> {
        match &*self.refusing.read().unwrap_or_else(|e| e.into_inner()) {
            Some(why) => Err(WriteError::DiskLow(why.clone())),
            None => Ok(()),
        }
    }

    pub fn stats(&self) -> &WriterStats {
        &self.stats
    }

    /// Submits a batch and waits until it is committed.
    pub async fn submit(&self, mut pending: Pending) -> Result<(), WriteError> {
        self.check_refusing()?;
        let (ack, done) = oneshot::channel();
        let report = Report::of(&mut pending);
        self.tx.send(Job { pending, ack }).await.map_err(|_| WriteError::Closed)?;
        report.after(done.await.map_err(|_| WriteError::Closed)?)
    }

    /// Tells the writer a batch is being prepared (a request body being parsed), so that a commit
    /// about to start waits for it briefly (at most the writer's linger).
    pub fn announce(&self) -> Announced {
        self.incoming.count.fetch_add(1, Ordering::AcqRel);
        Announced { incoming: self.incoming.clone() }
    }

    /// Submits an announced batch and waits until it is committed.
    pub async fn submit_announced(&self, mut pending: Pending, announced: Announced) -> Result<(), WriteError> {
        self.check_refusing()?;
        let (ack, done) = oneshot::channel();
        let report = Report::of(&mut pending);
        self.tx.send(Job { pending, ack }).await.map_err(|_| WriteError::Closed)?;
        drop(announced);
        report.after(done.await.map_err(|_| WriteError::Closed)?)
    }
}

/// A submission's figures, reported to the metrics once it is committed (so "accepted" counts
/// only acknowledged events, and freshness ends at the commit).
struct Report {
    tally: super::Tally,
    accepted_by_name: Vec<(String, i64)>,
}

impl Report {
    /// Takes the batch's tally (the writer has no use for it).
    fn of(pending: &mut Pending) -> Self {
        Self { tally: std::mem::take(&mut pending.tally), accepted_by_name: pending.accepted_by_name() }
    }

    fn after(self, result: Result<(), WriteError>) -> Result<(), WriteError> {
        if result.is_ok() {
            self.tally.committed(&self.accepted_by_name, crate::clock::now_ms());
        }
        result
    }
}

async fn run(
    store: Arc<dyn Store>,
    mut rx: mpsc::Receiver<Job>,
    max_events: usize,
    linger: Duration,
    observers: Vec<Arc<dyn CommitObserver>>,
    stats: Arc<WriterStats>,
    incoming: Arc<Incoming>,
) {
    while let Some(first) = rx.recv().await {
        let mut events = first.pending.events();
        let mut jobs = vec![first];
        let deadline = Instant::now() + linger;
        loop {
            while events < max_events {
                match rx.try_recv() {
                    Ok(job) => {
                        events += job.pending.events();
                        jobs.push(job);
                    }
                    Err(_) => break,
                }
            }
            if events >= max_events || linger.is_zero() || incoming.count.load(Ordering::Acquire) == 0 {
                break;
            }
            tokio::select! {
                job = rx.recv() => match job {
                    Some(job) => {
                        events += job.pending.events();
                        jobs.push(job);
                    }
                    None => break,
                },
                _ = incoming.changed.notified() => {}
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        metrics::writer_queue(rx.len());
        commit_group(&*store, jobs, &observers, &stats).await;
    }
}

/// Commits `jobs` together. If the group is fenced, the fenced jobs are failed and the rest are
/// committed again without them (one stale Kafka batch must not fail the HTTP requests beside it).
async fn commit_group(store: &dyn Store, jobs: Vec<Job>, observers: &[Arc<dyn CommitObserver>], stats: &WriterStats) {
    // One request per idempotency key per commit: a repeat of a key in the same group is still
    // in progress (its first has not committed yet).
    let mut keys = std::collections::HashSet::new();
    let (mut jobs, repeats): (Vec<_>, Vec<_>) = jobs
        .into_iter()
        .partition(|j| j.pending.idempotency.as_ref().is_none_or(|k| keys.insert((k.scope.clone(), k.key.clone()))));
    for j in repeats {
        let _ = j.ack.send(Err(WriteError::InProgress));
    }
    if jobs.is_empty() {
        return;
    }
    loop {
        let (batch, changes) = build_batch(&mut jobs);
        let (events, dead) = (batch.raw_blocks.iter().map(|b| b.count as u64).sum(), batch.dead_letters.len() as u64);
        let in_flight = InFlight::start(observers, &changes.series);
        stats.commit_started_ms.store(crate::clock::now_ms(), Ordering::Relaxed);
        let started = std::time::Instant::now();
        let result = store.commit(batch).await;
        stats.commit_started_ms.store(0, Ordering::Relaxed);
        metrics::commit(commit_outcome(&result), started.elapsed(), events + dead);
        let counter = if result.is_ok() { &stats.commits } else { &stats.failed_commits };
        counter.fetch_add(1, Ordering::Relaxed);
        jobs = match result {
            Ok(pos) => {
                stats.submissions.fetch_add(jobs.len() as u64, Ordering::Relaxed);
                stats.events.fetch_add(events, Ordering::Relaxed);
                stats.dead_letters.fetch_add(dead, Ordering::Relaxed);
                in_flight.end();
                notify_committed(observers, changes, pos).await;
                answer(jobs, |_| Ok(()));
                return;
            }
            Err(StoreError::Duplicate { scope, key }) => refuse(
                jobs,
                |j| j.pending.idempotency.as_ref().is_some_and(|k| k.scope == scope && k.key == key),
                WriteError::Duplicate,
            ),
            Err(StoreError::Fenced { source_name, partition, .. }) => {
                let msg = format!("{source_name} partition {partition} was advanced by another consumer");
                tracing::warn!(%msg, "offset fence rejected a batch");
                let fenced =
                    |j: &Job| j.pending.offsets.iter().any(|o| o.source == source_name && o.partition == partition);
                refuse(jobs, fenced, WriteError::Fenced(msg))
            }
            Err(StoreError::Replayed(_)) => refuse(jobs, |j| !j.pending.replayed.is_empty(), WriteError::Replayed),
            // Something in the group cannot be stored, and nothing of it was: commit the requests
            // one by one, so that only the one holding it fails.
            Err(StoreError::Rejected(e)) if jobs.len() > 1 => {
                tracing::warn!(error = %e, requests = jobs.len(), "the store refused a group; committing its requests alone");
                for job in jobs {
                    Box::pin(commit_group(store, vec![job], observers, stats)).await;
                }
                return;
            }
            Err(StoreError::Rejected(e)) => {
                tracing::error!(error = %e, "the store refused a request's events");
                return answer(jobs, |_| Err(WriteError::Rejected(e.to_string())));
            }
            Err(e) => {
                tracing::error!(error = %e, "commit failed");
                return answer(jobs, |_| Err(WriteError::Failed(e.to_string())));
            }
        };
        if jobs.is_empty() {
            return;
        }
    }
}

/// A commit's outcome, as a metric label.
fn commit_outcome<T>(result: &Result<T, StoreError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(StoreError::Duplicate { .. }) => "duplicate",
        Err(StoreError::Fenced { .. }) => "fenced",
        Err(StoreError::Rejected(_)) => "rejected",
        Err(_) => "failed",
    }
}

/// Answers every job (a submitter that has gone away needs nothing).
fn answer(jobs: Vec<Job>, result: impl Fn(&Job) -> Result<(), WriteError>) {
    for j in jobs {
        let r = result(&j);
        let _ = j.ack.send(r);
    }
}

/// Fails the jobs the store refused (`refused`) with `error`; the others, to commit again.
fn refuse(jobs: Vec<Job>, refused: impl Fn(&Job) -> bool, error: WriteError) -> Vec<Job> {
    let (out, rest): (Vec<_>, Vec<_>) = jobs.into_iter().partition(|j| refused(j));
    answer(out, |_| Err(error.clone()));
    rest
}

/// A commit the observers were told has started. Unless it is marked committed, they are told
/// it failed when this goes away: on an error, and also if the commit's future is dropped.
struct InFlight<'a> {
    observers: &'a [Arc<dyn CommitObserver>],
    series: &'a [SeriesKey],
    ended: bool,
}

impl<'a> InFlight<'a> {
    fn start(observers: &'a [Arc<dyn CommitObserver>], series: &'a [SeriesKey]) -> Self {
        Self { observers, series, ended: false }
    }

    /// The commit is durable: dropping this no longer tells the observers it failed.
    fn end(mut self) {
        self.ended = true;
    }
}

/// Tells the observers about a durable commit, before its submitters are acknowledged, on the
/// blocking pool: the read cache's update is linear in the series a commit touched (~36,000 in a
/// commit of a 50k events/s stream on a 100M-event store, 25–57 ms), and on an async worker it
/// stalled the queries queued behind it. If the update cannot finish (a panic in an observer),
/// the observers are told the series may have changed, as on a failed commit.
async fn notify_committed(observers: &[Arc<dyn CommitObserver>], changes: Changes, pos: Option<CommitPos>) {
    if observers.is_empty() {
        return;
    }
    let changes = Arc::new(changes);
    let (todo, c) = (observers.to_vec(), changes.clone());
    let told = tokio::task::spawn_blocking(move || {
        let commit = Committed { series: &c.series, seconds: c.seconds.as_deref(), pos };
        for o in &todo {
            o.committed(&commit);
        }
    })
    .await;
    if let Err(e) = told {
        tracing::error!(error = %e, "a commit observer failed; its state is forgotten");
        for o in observers {
            o.commit_failed(&changes.series);
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.ended {
            for o in self.observers {
                o.commit_failed(self.series);
            }
        }
    }
}

/// What a batch adds, kept for the observers once the batch itself has gone to the store.
struct Changes {
    series: Vec<SeriesKey>,
    seconds: Option<Vec<(u32, i64, Agg)>>,
}

/// Merges the jobs' data into one batch, leaving their offsets in place (needed on a fence retry).
fn build_batch(jobs: &mut [Job]) -> (WriteBatch, Changes) {
    let mut delta = crate::rollup::RollupDelta::default();
    let mut batch = WriteBatch::default();
    // Only a group carrying offsets or idempotency keys can be refused in part and retried; only
    // then must the jobs keep their data, so the common HTTP path moves it instead of copying.
    let may_retry = jobs.iter().any(|j| !j.pending.offsets.is_empty() || j.pending.idempotency.is_some());
    for j in jobs.iter_mut() {
        j.pending.seal(); // sources seal already; this only guards against one that did not
        if may_retry {
            delta.merge(j.pending.delta.clone());
            batch.raw_blocks.extend(j.pending.blocks.iter().cloned());
        } else {
            delta.merge(std::mem::take(&mut j.pending.delta));
            batch.raw_blocks.append(&mut j.pending.blocks);
        }
        batch.dead_letters.extend(j.pending.dead.iter().cloned());
        batch.offsets.extend(j.pending.offsets.iter().cloned());
        batch.idempotency.extend(j.pending.idempotency.iter().cloned());
        batch.replayed.extend(j.pending.replayed.iter().copied());
    }
    let (rollups, mut dims) = delta.into_rows();
    super::dedup_dims(&mut dims);
    let seconds = rollups.coarse_derived().then(|| {
        rollups
            .rows()
            .iter()
            .filter(|r| r.res == Resolution::Second)
            .map(|r| (r.series, r.start, r.agg.clone()))
            .collect()
    });
    let changes = Changes { series: rollups.series().to_vec(), seconds };
    batch.rollups = rollups;
    batch.dims = dims;
    (batch, changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn writer(linger: Duration) -> (Writer, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}/w.db", dir.path().display());
        let store = crate::storage::open(&url).await.expect("store");
        let (w, _task) = Writer::spawn(store, 50_000, linger, Vec::new());
        (w, dir)
    }

    #[tokio::test]
    async fn a_commit_waits_for_an_announced_batch_but_not_for_a_lone_one() {
        let (w, _dir) = writer(Duration::from_secs(30)).await;
        // Alone: committed at once, although the linger is long.
        let t = std::time::Instant::now();
        w.submit_announced(Pending::default(), w.announce()).await.expect("commit");
        assert!(t.elapsed() < Duration::from_secs(5), "a lone batch was held {:?}", t.elapsed());
        assert_eq!(w.stats().commits.load(Ordering::Relaxed), 1);

        // One batch submitted while another is still announced: they share the next commit.
        let late = w.announce();
        let first = tokio::spawn({
            let w = w.clone();
            async move { w.submit_announced(Pending::default(), w.announce()).await }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!first.is_finished(), "the commit did not wait for the announced batch");
        w.submit_announced(Pending::default(), late).await.expect("commit");
        first.await.expect("task").expect("commit");
        assert_eq!(w.stats().commits.load(Ordering::Relaxed), 2, "both batches in one commit");
        assert_eq!(w.stats().submissions.load(Ordering::Relaxed), 3);

        // A withdrawn announcement (a body that failed to parse) releases the wait.
        let withdrawn = w.announce();
        let t = std::time::Instant::now();
        let held = tokio::spawn({
            let w = w.clone();
            async move { w.submit_announced(Pending::default(), w.announce()).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(withdrawn);
        held.await.expect("task").expect("commit");
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn the_linger_bounds_the_wait() {
        let (w, _dir) = writer(Duration::from_millis(50)).await;
        let _never = w.announce();
        let t = std::time::Instant::now();
        w.submit_announced(Pending::default(), w.announce()).await.expect("commit");
        assert!(t.elapsed() >= Duration::from_millis(50) && t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    }
}
