//! The group-commit writer: the one task that writes ingested data to the store.
//!
//! Sources submit [`Pending`] batches over a bounded channel and wait for the commit. While one
//! commit runs, new submissions queue; the next commit takes all of them (up to a bound) in one
//! transaction. A submitter is acknowledged only after its data is durable.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};

use super::{Pending, RawLines};
use crate::rollup::SeriesKey;
use crate::storage::{RawBlock, Store, StoreError, WriteBatch};

/// Submissions waiting for the writer; beyond this, submitters wait (backpressure).
const QUEUE: usize = 1024;

/// Called after each commit, before submitters are acknowledged, with the series it touched.
pub type CommitHook = Arc<dyn Fn(&[SeriesKey]) + Send + Sync>;

/// Why a submission was not committed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    /// The batch's offsets were fenced by another consumer; nothing of it was applied.
    #[error("{0}")]
    Fenced(String),
    #[error("store write failed: {0}")]
    Failed(String),
    #[error("the writer has shut down")]
    Closed,
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
}

impl Writer {
    /// Starts the writer task. It ends once every `Writer` handle is dropped and the queue is empty.
    pub fn spawn(
        store: Arc<dyn Store>,
        max_batch_events: usize,
        hooks: Vec<CommitHook>,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let stats = Arc::new(WriterStats::default());
        let task = tokio::spawn(run(store, rx, max_batch_events, hooks, stats.clone()));
        (Self { tx, stats }, task)
    }

    pub fn stats(&self) -> &WriterStats {
        &self.stats
    }

    /// Submits a batch and waits until it is committed.
    pub async fn submit(&self, pending: Pending) -> Result<(), WriteError> {
        let (ack, done) = oneshot::channel();
        self.tx.send(Job { pending, ack }).await.map_err(|_| WriteError::Closed)?;
        done.await.map_err(|_| WriteError::Closed)?
    }
}

async fn run(
    store: Arc<dyn Store>,
    mut rx: mpsc::Receiver<Job>,
    max_events: usize,
    hooks: Vec<CommitHook>,
    stats: Arc<WriterStats>,
) {
    while let Some(first) = rx.recv().await {
        let mut events = first.pending.events();
        let mut jobs = vec![first];
        while events < max_events {
            match rx.try_recv() {
                Ok(job) => {
                    events += job.pending.events();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        commit_group(&*store, jobs, &hooks, &stats).await;
    }
}

/// Commits `jobs` together. If the group is fenced, the fenced jobs are failed and the rest are
/// committed again without them (one stale Kafka batch must not fail the HTTP requests beside it).
async fn commit_group(store: &dyn Store, mut jobs: Vec<Job>, hooks: &[CommitHook], stats: &WriterStats) {
    loop {
        let (batch, series) = build_batch(&mut jobs);
        let (events, dead) = (batch.raw_blocks.iter().map(|b| b.count as u64).sum(), batch.dead_letters.len() as u64);
        let result = store.commit(batch).await;
        let counter = if result.is_ok() { &stats.commits } else { &stats.failed_commits };
        counter.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(()) => {
                stats.submissions.fetch_add(jobs.len() as u64, Ordering::Relaxed);
                stats.events.fetch_add(events, Ordering::Relaxed);
                stats.dead_letters.fetch_add(dead, Ordering::Relaxed);
                for h in hooks {
                    h(&series);
                }
                for j in jobs {
                    let _ = j.ack.send(Ok(())); // the submitter may have gone; nothing to do
                }
                return;
            }
            Err(StoreError::Fenced { source_name, partition, .. }) => {
                let (fenced, rest): (Vec<_>, Vec<_>) = jobs.into_iter().partition(|j| {
                    j.pending.offsets.iter().any(|o| o.source == source_name && o.partition == partition)
                });
                let msg = format!("{source_name} partition {partition} was advanced by another consumer");
                tracing::warn!(%msg, "offset fence rejected a batch");
                for j in fenced {
                    let _ = j.ack.send(Err(WriteError::Fenced(msg.clone())));
                }
                if rest.is_empty() {
                    return;
                }
                jobs = rest;
            }
            Err(e) => {
                tracing::error!(error = %e, "commit failed");
                let msg = e.to_string();
                for j in jobs {
                    let _ = j.ack.send(Err(WriteError::Failed(msg.clone())));
                }
                return;
            }
        }
    }
}

/// Merges the jobs' data into one batch, leaving their offsets in place (needed on a fence retry).
fn build_batch(jobs: &mut [Job]) -> (WriteBatch, Vec<SeriesKey>) {
    let mut delta = crate::rollup::RollupDelta::default();
    let mut raw: Vec<RawLines> = Vec::new();
    let mut batch = WriteBatch::default();
    // Only a group carrying offsets can be fenced and retried; only then must the jobs keep their
    // data, so the common HTTP path moves it instead of copying.
    let may_retry = jobs.iter().any(|j| !j.pending.offsets.is_empty());
    for j in jobs.iter_mut() {
        let (d, lines) = if may_retry {
            (j.pending.delta.clone(), j.pending.raw.clone())
        } else {
            (std::mem::take(&mut j.pending.delta), std::mem::take(&mut j.pending.raw))
        };
        delta.merge(d);
        for r in lines {
            match raw.iter_mut().find(|x| x.name == r.name) {
                Some(x) => {
                    x.ndjson.extend_from_slice(&r.ndjson);
                    x.min_time_ms = x.min_time_ms.min(r.min_time_ms);
                    x.max_time_ms = x.max_time_ms.max(r.max_time_ms);
                    x.count += r.count;
                }
                None => raw.push(r),
            }
        }
        batch.dead_letters.extend(j.pending.dead.iter().cloned());
        batch.offsets.extend(j.pending.offsets.iter().cloned());
    }
    for r in raw {
        // Level 1: fast, and JSON still compresses ~5x.
        let zstd = zstd::bulk::compress(&r.ndjson, 1).expect("compressing to memory cannot fail");
        batch.raw_blocks.push(RawBlock {
            name: r.name,
            min_time_ms: r.min_time_ms,
            max_time_ms: r.max_time_ms,
            count: r.count,
            zstd,
        });
    }
    let (rollups, mut dims) = delta.into_rows();
    dims.sort_unstable();
    let series = rollups.series().to_vec();
    batch.rollups = rollups;
    batch.dims = dims;
    (batch, series)
}
