//! A small read cache for window aggregates, kept exact by the local writer's commits.
//!
//! Entries are keyed by series and exact window, so a sliding window never serves a neighbouring
//! second's answer. The local writer tells the cache about each commit ([`CommitObserver`]): once
//! a commit is durable, and before it is acknowledged, its one-second deltas are added to every
//! cached window that holds their second (read-your-writes, with no re-read). Every entry still
//! expires after `ttl`, which bounds how stale an answer can be when other processes write the
//! same store.
//!
//! A store read races the commits: its snapshot may or may not hold a commit that runs meanwhile,
//! and adding that commit's deltas to it as well would count them twice.
//! - Both backends number this process's commits, and a read says which of them its snapshot
//!   holds (`Store::read_aggregate_at`: SQLite's `commit_seq`, PostgreSQL's `writer_positions`
//!   row, read in the same snapshot as the buckets). Its `put` adds the local commits it missed
//!   (the last [`RECENT_COMMITS`] are kept), and later commits skip an entry whose snapshot already
//!   holds them. Every read can fill the cache.
//! - A read without a position (a store that does not number commits) answers its own request
//!   and is not cached.
//!
//! Together: an answer holds every event this process acknowledged before the request arrived
//! (read-after-ack); writes by other processes show within `ttl`.

//!
//! The rules are enforced here, not by callers: the only entry points are [`ReadCache::aggregate`],
//! [`ReadCache::trailing`] and [`ReadCache::is_known`], which take the ticket, read the store and
//! fill the cache themselves; [`core`] holds the state and the rules, free of I/O.

mod core;
mod index;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use self::core::Core;
use crate::ingest::writer::{CommitObserver, Committed};
use crate::rollup::{Agg, Resolution, SeriesKey, Span, cover, trailing_window};
use crate::storage::{LatestVisitor, Store, StoreError};

/// Background refreshes that may read the store at the same time: at each second's turn every
/// trailing window asks for one, and unbounded they would crowd out the requests they spare.
const REFRESH_SLOTS: usize = 2;

/// How far into a second (ms) the next second's trailing windows start being read ahead: late
/// enough that the answer read is still young when its second comes (it ages from its read).
const PREFETCH_AFTER_MS: i64 = 500;

/// The key of an all-time answer.
const ALL_TIME: (i64, i64) = (i64::MIN, i64::MAX);

/// Counters since start (`GET /api/v1/admin/stats`): how often answers come from where.
#[derive(Debug, Default, serde::Serialize)]
pub struct CacheStats {
    /// Answers served from the cache for the window asked.
    pub hits: AtomicU64,
    /// Store reads on a request's path (nothing usable was cached).
    pub request_reads: AtomicU64,
    /// Store reads in the background (refreshes ahead of expiry, and the next second's windows).
    pub background_reads: AtomicU64,
    /// Store reads not cached because they raced a commit they could not be squared with.
    pub fills_discarded: AtomicU64,
    /// Answers the index gave without a read: a window with no bucket, a value never seen.
    pub index_answers: AtomicU64,
    /// Times the index was loaded from the store, and those that ended complete.
    pub index_loads: AtomicU64,
    pub index_loads_complete: AtomicU64,
}

impl CacheStats {
    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Aggregates of series over windows, through a cache kept exact by the local commits.
pub struct ReadCache {
    core: Core,
    store: Arc<dyn Store>,
    refresh_slots: tokio::sync::Semaphore,
    /// Wakes the index's loader when the index became incomplete.
    index_stale: tokio::sync::Notify,
    pub stats: CacheStats,
}

impl ReadCache {
    /// A cache in front of `store` whose answers are served for at most `ttl` (0: no caching).
    pub fn new(ttl: Duration, store: Arc<dyn Store>) -> Arc<Self> {
        Arc::new(Self {
            core: Core::new(ttl),
            store,
            refresh_slots: tokio::sync::Semaphore::new(REFRESH_SLOTS),
            index_stale: tokio::sync::Notify::new(),
            stats: CacheStats::default(),
        })
    }

    /// The merged buckets of `series` over `[from, to)` seconds (`None`: all time, one row). A
    /// cached answer past half its life is refreshed in the background, so a series read often
    /// is never read from the store on a request's path.
    pub async fn aggregate(
        self: &Arc<Self>,
        series: &SeriesKey,
        window: Option<(i64, i64)>,
    ) -> Result<Agg, StoreError> {
        Ok(self.answer(series, window).await?.0)
    }

    /// `aggregate`, and whether the index gave the answer (the window holds no bucket).
    async fn answer(
        self: &Arc<Self>,
        series: &SeriesKey,
        window: Option<(i64, i64)>,
    ) -> Result<(Agg, bool), StoreError> {
        let key = window.unwrap_or(ALL_TIME);
        if let Some((a, old)) = self.core.get_fresh(series, key) {
            CacheStats::count(&self.stats.hits);
            if old {
                self.refresh(series, key);
            }
            return Ok((a, false));
        }
        if key != ALL_TIME && self.core.index.empty_over(series, &spans_of(key)) {
            CacheStats::count(&self.stats.index_answers);
            return Ok((Agg::default(), true));
        }
        CacheStats::count(&self.stats.request_reads);
        Ok((self.load(series, key).await?, false))
    }

    /// The trailing window of `window_s` seconds ending with the second of `now_ms`, and its
    /// answer.
    ///
    /// Read-after-ack: the window always ends with the second the request arrived in, and the
    /// answer holds every event this process acknowledged before. Each second every series gets
    /// a new window, so in the second half of a second the next second's window is read in the
    /// background (and kept exact by the commits that follow, like every entry): at the turn of
    /// the second it is there, and requests do not all go to the store at once.
    pub async fn trailing(
        self: &Arc<Self>,
        series: &SeriesKey,
        window_s: i64,
        now_ms: i64,
    ) -> Result<(Agg, (i64, i64)), StoreError> {
        let (from, to) = trailing_window(now_ms, window_s);
        self.prefetch_next(series, (from, to), now_ms);
        Ok((self.aggregate(series, Some((from, to))).await?, (from, to)))
    }

    /// `trailing` for the series of one dimension value (a product), or `None` when no accepted
    /// event carried that value: see [`ReadCache::aggregate_if_known`].
    pub async fn trailing_if_known(
        self: &Arc<Self>,
        value: (&str, &str),
        series: &SeriesKey,
        window_s: i64,
        now_ms: i64,
    ) -> Result<Option<(Agg, (i64, i64))>, StoreError> {
        let (from, to) = trailing_window(now_ms, window_s);
        let Some((agg, from_index)) = self.answer_if_known(value, series, Some((from, to))).await? else {
            return Ok(None);
        };
        // A window the index found empty is followed by one it finds empty too, unless a commit
        // comes between, which the index notes: nothing to read ahead.
        if !from_index {
            self.prefetch_next(series, (from, to), now_ms);
        }
        Ok(Some((agg, (from, to))))
    }

    /// `aggregate` of a series of one dimension value (`value`: dimension, value), or `None`
    /// when no accepted event carried that value (the seed endpoints' 404). A value known from
    /// memory costs what `aggregate` costs; one that is not (asked for the first time, or since
    /// the known set was last cleared) is checked in the same store read as its aggregate: one
    /// read, not two.
    pub async fn aggregate_if_known(
        self: &Arc<Self>,
        value: (&str, &str),
        series: &SeriesKey,
        window: Option<(i64, i64)>,
    ) -> Result<Option<Agg>, StoreError> {
        Ok(self.answer_if_known(value, series, window).await?.map(|(agg, _)| agg))
    }

    /// `aggregate_if_known`, and whether the index gave the answer.
    async fn answer_if_known(
        self: &Arc<Self>,
        (dim, value): (&str, &str),
        series: &SeriesKey,
        window: Option<(i64, i64)>,
    ) -> Result<Option<(Agg, bool)>, StoreError> {
        if self.core.is_known(dim, value) {
            return self.answer(series, window).await.map(Some);
        }
        if self.core.index.is_complete() {
            // Every value of the store is known here: this one does not exist.
            CacheStats::count(&self.stats.index_answers);
            return Ok(None);
        }
        if self.core.is_unknown(dim, value) {
            CacheStats::count(&self.stats.hits);
            return Ok(None);
        }
        let key = window.unwrap_or(ALL_TIME);
        if self.core.get_fresh(series, key).is_some() {
            // The answer is cached (other routes cache any series): only known-ness is missing.
            return Ok(if self.is_known(dim, value).await? { Some(self.answer(series, window).await?) } else { None });
        }
        CacheStats::count(&self.stats.request_reads);
        let unknown_ticket = self.core.unknown_ticket();
        let ticket = self.core.ticket();
        match self.store.read_known_aggregate_at((dim, value), series, &spans_of(key)).await? {
            None => {
                self.core.set_unknown(dim, value, unknown_ticket);
                Ok(None)
            }
            Some((agg, pos)) => {
                self.core.set_known(dim, value);
                if !self.core.put(series, key, agg.clone(), pos, ticket) {
                    CacheStats::count(&self.stats.fills_discarded);
                }
                Ok(Some((agg, false)))
            }
        }
    }

    /// In the second half of a second, reads the next second's trailing window in the background.
    fn prefetch_next(self: &Arc<Self>, series: &SeriesKey, (from, to): (i64, i64), now_ms: i64) {
        if now_ms.rem_euclid(1000) >= PREFETCH_AFTER_MS {
            let next = (from + 1, to + 1);
            if self.core.get_fresh(series, next).is_none() {
                self.refresh(series, next);
            }
        }
    }

    /// Forgets every cached answer (see `Core::invalidate_all`); the index is reloaded.
    pub fn invalidate_all(&self) {
        self.core.invalidate_all();
        self.index_stale.notify_one();
    }

    /// Keeps the index loaded (runs for the server's life): loads it at start, and again
    /// whenever it became incomplete (another process's commit, an invalidation, a failed
    /// commit) or the store outgrew its slots. Loads are spaced by ten times the last one's
    /// duration, so a store that keeps changing under it costs at most a tenth of a core, and
    /// by twice as much after each load that did not end complete. Ends when the store cannot
    /// be scanned or the index gave up.
    ///
    /// `foreign`: the store tells other processes' commits, and the first notice (when it starts
    /// watching, it counts one) is awaited before the first load, which it would overtake.
    pub async fn keep_index(self: Arc<Self>, foreign: bool) {
        if foreign {
            let _ = tokio::time::timeout(Duration::from_secs(2), self.index_stale.notified()).await;
        }
        // Loads in a row that did not leave the index complete (other processes commit all the
        // time, as in a fleet): each doubles the gap before the next, so a store that never
        // holds still is not scanned over and over for an index that would never answer.
        let mut misses = 0u32;
        loop {
            if self.core.index.outgrown() {
                self.core.index.stale();
            }
            if self.core.index.is_complete() {
                self.index_stale.notified().await;
                continue;
            }
            let started = std::time::Instant::now();
            CacheStats::count(&self.stats.index_loads);
            let loader = Box::new(IndexLoader {
                cache: self.clone(),
                ticket: None,
                started: std::time::Instant::now(),
                values: 0,
                buckets: 0,
            });
            match self.store.scan_latest(loader).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => tracing::warn!(error = %e, "loading the read cache's index failed; retrying"),
            }
            if self.core.index.given_up() {
                return;
            }
            misses = if self.core.index.is_complete() { 0 } else { (misses + 1).min(INDEX_MAX_MISSES) };
            let gap = (started.elapsed() * 10).max(INDEX_LOAD_GAP) * (1 << misses);
            tokio::time::sleep(gap.min(INDEX_MAX_GAP.max(started.elapsed() * 10))).await;
        }
    }

    /// Whether any accepted event carried `value` for `dim` (values never stop existing). Known
    /// values, and for `ttl` the values a read found unknown, are answered from memory: a flood of
    /// requests for a made-up id reads the store once per `ttl`.
    pub async fn is_known(&self, dim: &str, value: &str) -> Result<bool, StoreError> {
        if self.core.is_known(dim, value) {
            return Ok(true);
        }
        if self.core.index.is_complete() {
            CacheStats::count(&self.stats.index_answers);
            return Ok(false);
        }
        if self.core.is_unknown(dim, value) {
            CacheStats::count(&self.stats.hits);
            return Ok(false);
        }
        let ticket = self.core.unknown_ticket();
        let known = self.store.is_known(dim, value).await?;
        if known {
            self.core.set_known(dim, value);
        } else {
            self.core.set_unknown(dim, value, ticket);
        }
        Ok(known)
    }

    /// Reads `key` from the store and caches it when the read can be squared with the commits
    /// that ran meanwhile (the ticket is taken before the read).
    async fn load(&self, series: &SeriesKey, key: (i64, i64)) -> Result<Agg, StoreError> {
        let ticket = self.core.ticket();
        let (agg, pos) = self.store.read_aggregate_at(series, &spans_of(key)).await?;
        if !self.core.put(series, key, agg.clone(), pos, ticket) {
            CacheStats::count(&self.stats.fills_discarded);
        }
        Ok(agg)
    }

    /// Reads `key` into the cache in the background (at most one refresh per entry at a time).
    fn refresh(self: &Arc<Self>, series: &SeriesKey, key: (i64, i64)) {
        // Nothing to read ahead for a window the index answers.
        if key != ALL_TIME && self.core.index.empty_over(series, &spans_of(key)) {
            return;
        }
        if !self.core.begin_refresh(series, key) {
            return;
        }
        let (cache, series) = (self.clone(), series.clone());
        tokio::spawn(async move {
            // Never closed, so acquiring cannot fail.
            let _slot = cache.refresh_slots.acquire().await;
            CacheStats::count(&cache.stats.background_reads);
            if let Err(e) = cache.load(&series, key).await {
                tracing::debug!(error = %e, "background cache refresh failed");
            }
            cache.core.end_refresh(&series, key);
        });
    }
}

impl CommitObserver for ReadCache {
    fn committed(&self, commit: &Committed<'_>) {
        self.core.committed(commit);
        if !self.core.index.is_complete() {
            self.index_stale.notify_one();
        }
    }

    fn commit_failed(&self, series: &[SeriesKey]) {
        self.core.commit_failed(series);
        self.index_stale.notify_one();
    }
}

/// The buckets covering a cache key: a window, or all time.
fn spans_of(key: (i64, i64)) -> Vec<Span> {
    if key == ALL_TIME { vec![Span { res: Resolution::All, from: 0, to: 1 }] } else { cover(key.0, key.1) }
}

/// What `GET /api/v1/admin/stats` shows of the index.
#[derive(Debug, serde::Serialize)]
pub struct IndexState {
    /// Whether it answers (see `index`).
    pub complete: bool,
    pub known_values: usize,
    pub slots: usize,
}

impl ReadCache {
    pub fn index_state(&self) -> IndexState {
        let i = &self.core.index;
        IndexState { complete: i.is_complete(), known_values: i.known_len(), slots: i.slot_count() }
    }
}

/// The least time between two loads of the index.
const INDEX_LOAD_GAP: Duration = Duration::from_millis(100);

/// The most the gap between loads grows after loads that did not complete (a doubling each),
/// and its ceiling (unless ten times a load is longer).
const INDEX_MAX_MISSES: u32 = 12;
const INDEX_MAX_GAP: Duration = Duration::from_secs(300);

/// Fills the index from `Store::scan_latest`.
struct IndexLoader {
    cache: Arc<ReadCache>,
    ticket: Option<index::LoadTicket>,
    started: std::time::Instant,
    values: u64,
    buckets: u64,
}

impl LatestVisitor for IndexLoader {
    fn begin(&mut self, series: u64) {
        self.ticket = self.cache.core.index.begin_load(series);
    }

    fn value(&mut self, dim: &str, value: &str) {
        self.values += 1;
        self.cache.core.index.note_known(dim, value);
    }

    fn bucket(&mut self, series: (&str, &str, &str), res: Resolution, start: i64) {
        self.buckets += 1;
        self.cache.core.index.note_bucket(series, res, start);
    }

    fn end(&mut self) {
        let Some(ticket) = self.ticket.take() else { return };
        if self.cache.core.index.finish_load(ticket) {
            CacheStats::count(&self.cache.stats.index_loads_complete);
            let took_ms = self.started.elapsed().as_millis() as u64;
            tracing::info!(values = self.values, buckets = self.buckets, took_ms, "read cache index loaded");
        }
    }
}

#[cfg(test)]
mod tests;
