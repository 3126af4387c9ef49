//! Rebuilding rollups from the raw events, detecting metric definitions that changed, and
//! replaying dead letters: how a metric or a schema changes without losing history.
//!
//! A rebuild runs in steps: each folds the next raw blocks (in parallel) into partial rollups of
//! the metrics being rebuilt and stores them as a chunk with the job's progress, renewing its
//! lease. When the raw blocks left are few, the store swaps: in one transaction that holds writers
//! off it folds the blocks committed since the last step, replaces the metrics' rows with the
//! chunks' sum, and marks the job done. Live ingest goes on meanwhile (into the old rows, which the
//! swap replaces by a recomputation that includes those events), so every event counts once.
//!
//! - [`refold`]: raw lines back into events, folded; chunks encoded and merged;
//! - [`defs`]: the metric definitions the store remembers, and what changed at start;
//! - [`replay`]: dead letters that today's schemas accept, ingested exactly once.

pub mod defs;
pub mod jobs;
pub mod refold;
pub mod replay;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use self::refold::{Counts, Partial, Refolder};
use crate::config::Settings;
use crate::rollup::RollupDelta;
use crate::storage::rebuild::{Claim, RebuildJob, RebuildSpec, Swapped, day_up};
use crate::storage::{ClaimRequest, RebuildStep, Store, StoreError};

/// How long a rebuild's lease lasts without a step renewing it.
pub const LEASE_MS: i64 = 30_000;
/// Raw blocks read per store round trip.
const PAGE_BLOCKS: u32 = 256;
/// Events per step (one chunk, one lease renewal), unless told otherwise.
pub const STEP_EVENTS: i64 = 2_000_000;
/// Swap once fewer raw blocks than this are left to fold: the swap folds them while writers wait.
const TAIL_BLOCKS: i64 = 64;

/// What to rebuild, as asked.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// Metric names; empty: every declared metric.
    pub metrics: Vec<String>,
    /// Rebuild from this time (epoch ms), rounded down to a UTC day; `None`: as far back as the
    /// raw events are complete.
    pub from_ms: Option<i64>,
}

impl Request {
    /// From what a user gives: metric names, `since` (a duration back from now, e.g. `7d`) or
    /// `from` (RFC 3339 or epoch ms), not both.
    pub fn parse(metrics: Vec<String>, since: Option<&str>, from: Option<&str>, now_ms: i64) -> Result<Self, String> {
        let from_ms = match (since, from) {
            (Some(_), Some(_)) => return Err("give `since` or `from`, not both".into()),
            (Some(s), None) => Some(since_ms(s, now_ms)?),
            (None, Some(f)) => Some(crate::rollup::parse_time(f, "from")?.saturating_mul(1000)),
            (None, None) => None,
        };
        Ok(Self { metrics, from_ms })
    }
}

/// The time (epoch ms) `since` (a duration such as `7d`) before `now_ms`.
pub fn since_ms(since: &str, now_ms: i64) -> Result<i64, String> {
    let d = crate::config::parse_duration(since).map_err(|e| format!("`since`: {e}"))?;
    Ok(now_ms.saturating_sub(crate::config::millis_i64(d)))
}

/// Why a rebuild cannot start or finish.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    /// A usage problem, with what to do instead.
    #[error("{0}")]
    Refused(String),
    #[error(
        "a rebuild is already running (job {}, held by {} until {}): wait for it, or let its lease run out",
        .0.id, .0.owner, crate::clock::rfc3339(.0.lease_until_ms)
    )]
    Busy(Box<RebuildJob>),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// A rebuild's progress, read by the terminal's progress bar and the status endpoint.
#[derive(Debug, Default)]
pub struct Progress {
    pub job: AtomicI64,
    pub events_read: AtomicI64,
    pub blocks_done: AtomicI64,
    pub blocks_total: AtomicI64,
    /// Where this run started (a resumed job starts at its last step).
    pub start_block: AtomicI64,
    pub started_ms: AtomicI64,
}

impl Progress {
    /// A run of `job` starts (a resumed job after its last step).
    fn begin(&self, job: &RebuildJob) {
        self.job.store(job.id, Ordering::Relaxed);
        self.started_ms.store(crate::clock::now_ms(), Ordering::Relaxed);
        self.events_read.store(job.events_read, Ordering::Relaxed);
        self.start_block.store(job.progress_block, Ordering::Relaxed);
    }
}

/// What a finished rebuild did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub job: i64,
    pub metrics: Vec<String>,
    /// The first day rebuilt (RFC 3339), or none: from the beginning.
    pub from: Option<String>,
    pub events: i64,
    pub skipped: i64,
    pub resumed: bool,
    /// Runs it took: more than one when the store interrupted a run (the server resumes it).
    pub attempts: u32,
    pub swapped: Swapped,
    pub seconds: f64,
    /// Where the time went: folding and storing steps, merging their chunks, the swap.
    pub steps_s: f64,
    pub merge_s: f64,
    pub swap_s: f64,
}

/// The spec a request resolves to, checked against the settings and the raw events kept.
pub async fn plan(store: &dyn Store, settings: &Settings, req: &Request) -> Result<RebuildSpec, RebuildError> {
    let declared: Vec<&str> = settings.metrics.iter().map(|m| m.name.as_str()).collect();
    let mut metrics: Vec<String> =
        if req.metrics.is_empty() { declared.iter().map(|s| s.to_string()).collect() } else { req.metrics.clone() };
    metrics.sort();
    metrics.dedup();
    if let Some(m) = metrics.iter().find(|m| !declared.contains(&m.as_str())) {
        return Err(RebuildError::Refused(format!(
            "metric {m:?} is not declared in the configuration (declared: {}); declare it first",
            declared.join(", ")
        )));
    }
    let complete_from = store.raw_pruned_before().await?.map(|ms| day_up(ms.div_euclid(1000)));
    let asked = req.from_ms.map(|ms| crate::rollup::Resolution::Day.bucket_of(ms.div_euclid(1000)));
    let from_s = match (asked, complete_from) {
        (Some(a), Some(c)) if a < c => {
            return Err(RebuildError::Refused(format!(
                "raw events before {} are no longer all kept (retention.raw_events = {}): the oldest day that can \
                 be rebuilt starts {}; use --from {} or later",
                crate::clock::rfc3339(c * 1000),
                humantime::format_duration(settings.retention.raw_events),
                crate::clock::rfc3339(c * 1000),
                crate::clock::rfc3339(c * 1000),
            )));
        }
        (Some(a), _) => Some(a),
        (None, c) => c,
    };
    Ok(RebuildSpec { metrics, from_s })
}

/// This process, as a lease owner: `host:pid`.
pub fn owner() -> String {
    let host = rustix::system::uname().nodename().to_string_lossy().into_owned();
    format!("{host}:{}", std::process::id())
}

/// Whether `owner` names a process of this host that no longer runs (its lease can be taken at
/// once: a SIGKILLed rebuild resumes without waiting for the lease to run out).
fn owner_is_gone(owner: &str) -> bool {
    let host = rustix::system::uname().nodename().to_string_lossy().into_owned();
    match owner.rsplit_once(':') {
        Some((h, pid)) if h == host => {
            pid.parse::<u32>().is_ok_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
        }
        _ => false,
    }
}

/// Takes the job for `spec`: a new one, or the one a killed rebuild left (resumed after its last
/// step).
pub async fn claim(store: &dyn Store, spec: &RebuildSpec) -> Result<(RebuildJob, bool), RebuildError> {
    let mut req = ClaimRequest {
        spec: spec.clone(),
        owner: owner(),
        now_ms: crate::clock::now_ms(),
        lease_ms: LEASE_MS,
        takeover: false,
        target_block: store.raw_watermark().await?,
    };
    let job = match store.rebuild_claim(req.clone()).await? {
        Claim::Held(job) => job,
        Claim::Busy(job) if owner_is_gone(&job.owner) => {
            req.takeover = true;
            match store.rebuild_claim(req).await? {
                Claim::Held(job) => job,
                Claim::Busy(job) => return Err(RebuildError::Busy(Box::new(job))),
            }
        }
        Claim::Busy(job) => return Err(RebuildError::Busy(Box::new(job))),
    };
    let resumed = job.progress_block > 0 || job.events_read > 0;
    Ok((job, resumed))
}

/// Runs a claimed job to its swap.
pub async fn run(
    store: Arc<dyn Store>,
    settings: &Settings,
    job: RebuildJob,
    resumed: bool,
    progress: Arc<Progress>,
    step_events: i64,
) -> Result<Report, RebuildError> {
    let started = std::time::Instant::now();
    let owner = job.owner.clone();
    let spec = job.spec.clone();
    let refolder = Arc::new(Refolder::new(settings, &spec.metrics, spec.from_s, crate::clock::now_ms() / 1000));
    progress.begin(&job);
    let mut done = job.progress_block;
    let mut counts = Counts { events: job.events_read, skipped: job.events_skipped };
    let mut mine = Partial::default();
    loop {
        let upto = store.raw_watermark().await?;
        progress.blocks_total.store(upto, Ordering::Relaxed);
        progress.blocks_done.store(done, Ordering::Relaxed);
        if upto - done < TAIL_BLOCKS {
            break;
        }
        let (next, partial) =
            step(&store, &refolder, (&job, &owner), (done, upto, step_events), &mut counts, &progress).await?;
        done = next;
        mine.merge(partial);
    }
    let steps_s = started.elapsed().as_secs_f64();
    // Every step's chunk, merged; the tail folds in inside the swap.
    // A job that started in this run has all its steps in memory; a resumed one reads its
    // earlier steps back (all of them: they are few, and this run's are among them).
    let merged = if job.progress_block == 0 {
        mine
    } else {
        let chunks = store.rebuild_chunks(job.id).await?;
        tokio::task::spawn_blocking(move || -> anyhow::Result<Partial> {
            let mut all = Partial::default();
            for c in chunks {
                all.merge(Partial::decode(&c)?);
            }
            Ok(all)
        })
        .await
        .map_err(anyhow::Error::from)??
    };
    let merge_s = started.elapsed().as_secs_f64() - steps_s;
    let before_tail = counts;
    let fold: crate::storage::rebuild::FoldTail = Box::new(move |tail| {
        let mut delta = RollupDelta::default();
        let c = refolder.fold_blocks(&tail, &mut delta)?;
        let mut all = merged;
        all.merge(refolder.rows(delta));
        Ok(all.into_rebuilt(c))
    });
    let defs = defs::current_records(settings, &spec.metrics);
    let swap_started = std::time::Instant::now();
    let swapped = store.rebuild_swap(&job, &owner, defs, fold).await?;
    let swap_s = swap_started.elapsed().as_secs_f64();
    let events = before_tail.events + swapped.tail_events;
    progress.events_read.store(events, Ordering::Relaxed);
    Ok(Report {
        job: job.id,
        metrics: spec.metrics.clone(),
        from: spec.from_s.map(|s| crate::clock::rfc3339(s * 1000)),
        events,
        skipped: before_tail.skipped,
        resumed,
        attempts: 1,
        swapped,
        seconds: started.elapsed().as_secs_f64(),
        steps_s,
        merge_s,
        swap_s,
    })
}

/// Folds raw blocks after `done` up to `upto` (at most a step's worth of events) and stores the
/// chunk; returns the last block folded and the step's partial rollups.
async fn step(
    store: &Arc<dyn Store>,
    refolder: &Arc<Refolder>,
    (job, owner): (&RebuildJob, &str),
    (mut done, upto, step_events): (i64, i64, i64),
    counts: &mut Counts,
    progress: &Progress,
) -> Result<(i64, Partial), RebuildError> {
    let mut partial = Partial::default();
    let mut step = Counts::default();
    while done < upto && step.events < step_events.max(1) {
        let blocks = store.raw_blocks_after(done, upto, PAGE_BLOCKS).await?;
        let Some(last) = blocks.last().map(|(id, _)| *id) else { break };
        let r = refolder.clone();
        let (rows, c) = tokio::task::spawn_blocking(move || -> anyhow::Result<(Partial, Counts)> {
            let mut delta = RollupDelta::default();
            let c = r.fold_blocks(&blocks, &mut delta)?;
            Ok((r.rows(delta), c))
        })
        .await
        .map_err(anyhow::Error::from)??;
        partial.merge(rows);
        step.events += c.events;
        step.skipped += c.skipped;
        done = last;
        progress.events_read.fetch_add(c.events, Ordering::Relaxed);
        progress.blocks_done.store(done, Ordering::Relaxed);
    }
    let (chunk, partial) =
        tokio::task::spawn_blocking(move || (partial.encode(), partial)).await.map_err(anyhow::Error::from)?;
    store
        .rebuild_step(RebuildStep {
            job: job.id,
            owner: owner.to_string(),
            chunk,
            upto_block: done,
            events: step.events,
            skipped: step.skipped,
            now_ms: crate::clock::now_ms(),
            lease_ms: LEASE_MS,
        })
        .await?;
    counts.events += step.events;
    counts.skipped += step.skipped;
    Ok((done, partial))
}
