//! Rebuilds a server runs in the background (the admin endpoint, `rollups.auto_rebuild`), with
//! their progress for the status endpoint.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use super::{Progress, RebuildError, Report, Request};
use crate::config::Settings;
use crate::storage::rebuild::RebuildJob;
use crate::storage::{Store, StoreError};

/// The server's rebuilds: at most one at a time (the store's lease also holds other processes
/// off).
#[derive(Default)]
pub struct Rebuilds {
    pub progress: Arc<Progress>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    running: Option<RebuildJob>,
    last: Option<Result<Report, String>>,
}

/// What the status endpoint shows about this server's rebuilds.
#[derive(Debug, serde::Serialize)]
pub struct Status {
    pub running: Option<RebuildJob>,
    pub events_read: i64,
    pub events_per_s: f64,
    /// Raw blocks folded and the newest raw block now (progress is `done / total`).
    pub blocks_done: i64,
    pub blocks_total: i64,
    pub eta_s: Option<f64>,
    /// The last rebuild this server ran: its report, or why it failed.
    pub last: Option<Report>,
    pub last_error: Option<String>,
}

/// Runs of a job the store interrupted before it gives up: a lost connection, or a transaction
/// PostgreSQL rolled back (a deadlock, a serialisation failure).
const ATTEMPTS: u32 = 5;

/// Runs a claimed job; when the store was unavailable on the way (nothing of the failed step or
/// swap was applied), claims it again and resumes after its last stored step, a few times, waiting
/// longer each time.
async fn run_resuming(
    store: Arc<dyn Store>,
    settings: &Settings,
    mut job: RebuildJob,
    mut resumed: bool,
    progress: Arc<Progress>,
) -> Result<Report, RebuildError> {
    let mut attempt = 1;
    loop {
        let out = super::run(store.clone(), settings, job.clone(), resumed, progress.clone(), super::STEP_EVENTS).await;
        match out {
            Err(RebuildError::Store(e @ StoreError::Unavailable(_))) if attempt < ATTEMPTS => {
                tracing::warn!(error = %e, job = job.id, attempt, "rollup rebuild interrupted by the store; resuming it");
                tokio::time::sleep(std::time::Duration::from_millis(250 << attempt)).await;
                (job, resumed) = super::claim(&*store, &job.spec).await?;
                attempt += 1;
            }
            Ok(report) => return Ok(Report { attempts: attempt, ..report }),
            Err(e) => return Err(e),
        }
    }
}

impl Rebuilds {
    /// Plans and claims a rebuild, then runs it in the background; `after_swap` runs once its
    /// rows are in (the read cache forgets what it held).
    pub async fn start(
        self: &Arc<Self>,
        store: Arc<dyn Store>,
        settings: Arc<Settings>,
        req: Request,
        after_swap: impl FnOnce() + Send + 'static,
    ) -> Result<RebuildJob, RebuildError> {
        let spec = super::plan(&*store, &settings, &req).await?;
        let (job, resumed) = super::claim(&*store, &spec).await?;
        {
            let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            s.running = Some(job.clone());
        }
        let this = self.clone();
        let claimed = job.clone();
        tokio::spawn(async move {
            let out = run_resuming(store, &settings, claimed, resumed, this.progress.clone()).await;
            match &out {
                Ok(r) => {
                    after_swap();
                    tracing::info!(job = r.job, metrics = ?r.metrics, events = r.events, seconds = r.seconds, "rollups rebuilt");
                }
                Err(e) => tracing::error!(error = %e, "rollup rebuild failed; run it again to resume"),
            }
            let mut s = this.state.lock().unwrap_or_else(|e| e.into_inner());
            s.running = None;
            s.last = Some(out.map_err(|e| e.to_string()));
        });
        Ok(job)
    }

    pub fn status(&self) -> Status {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let p = &self.progress;
        let events = p.events_read.load(Ordering::Relaxed);
        let secs = ((crate::clock::now_ms() - p.started_ms.load(Ordering::Relaxed)) as f64 / 1000.0).max(0.001);
        let (done, total) = (p.blocks_done.load(Ordering::Relaxed), p.blocks_total.load(Ordering::Relaxed));
        let rate = if s.running.is_some() { events as f64 / secs } else { 0.0 };
        let start = p.start_block.load(Ordering::Relaxed);
        let eta = (s.running.is_some() && done > start && total > done)
            .then(|| secs * (total - done) as f64 / (done - start) as f64);
        Status {
            running: s.running.clone(),
            events_read: events,
            events_per_s: rate,
            blocks_done: done,
            blocks_total: total,
            eta_s: eta,
            last: s.last.clone().and_then(Result::ok),
            last_error: s.last.clone().and_then(Result::err),
        }
    }
}
