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
//! - A store that returns no position: a read fills the cache only when no local commit ran at
//!   any moment between its start and its `put`. Such a read still answers its own request.
//!
//! Together: an answer holds every event this process acknowledged before the request arrived
//! (read-after-ack); writes by other processes show within `ttl`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::ingest::writer::{CommitObserver, Committed};
use crate::rollup::{Agg, SeriesKey};
use crate::storage::CommitPos;

/// Beyond this many cached series the cache starts over (bounded memory).
const MAX_SERIES: usize = 50_000;

/// Local commits kept to bring a read up to date at its `put`: a read that began before the
/// oldest of them is not cached. At 100,000 events/s there are 50-100 commits a second, and a
/// read takes milliseconds.
pub const RECENT_COMMITS: usize = 32;

type Window = (i64, i64);

/// One cached answer.
#[derive(Debug, Clone)]
struct Entry {
    window: Window,
    agg: Agg,
    /// When the read that filled it began.
    at: Instant,
    /// The position of that read's snapshot, when the store numbers its commits: commits up to
    /// it are in `agg` already.
    pos: Option<CommitPos>,
}

#[derive(Debug)]
pub struct ReadCache {
    ttl: Duration,
    entries: Mutex<Entries>,
    /// Dimension values known to exist (they never stop existing).
    known: Mutex<HashSet<(String, String)>>,
    /// Entries being refreshed in the background (one refresh per entry at a time).
    refreshing: Mutex<HashSet<(SeriesKey, Window)>>,
    /// Background refreshes reading the store at once: at each second's turn every trailing
    /// window asks for one, and unbounded they would crowd out the requests they are meant to spare.
    pub refresh_slots: tokio::sync::Semaphore,
    pub stats: CacheStats,
}

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
}

impl CacheStats {
    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Debug, Default)]
struct Entries {
    by_series: HashMap<SeriesKey, Vec<Entry>>,
    /// Bumped when a local commit starts and when it ends (for reads without a position).
    generation: u64,
    /// Local commits started and not yet ended.
    commits_in_flight: u32,
    /// Bumped by every failed local commit: its outcome is not known for sure, so no read that
    /// overlapped it is cached.
    failures: u64,
    /// The last local commits with a position, oldest first.
    recent: VecDeque<Recent>,
    /// A read at a position below this may have missed a local commit no longer in `recent`.
    reads_from: CommitPos,
}

/// A local commit kept for reads that began before it.
#[derive(Debug)]
struct Recent {
    pos: CommitPos,
    series: Vec<SeriesKey>,
    seconds: Vec<(u32, i64, Agg)>,
}

impl Recent {
    /// Adds this commit's seconds of `series` inside `window` to `agg`.
    fn add_to(&self, series: &SeriesKey, window: Window, agg: &mut Agg) {
        let Ok(idx) = self.series.binary_search(series) else { return };
        let idx = idx as u32;
        let first = self.seconds.partition_point(|(i, _, _)| *i < idx);
        for (_, t, delta) in self.seconds[first..].iter().take_while(|(i, _, _)| *i == idx) {
            if window.0 <= *t && *t < window.1 {
                agg.merge(delta);
            }
        }
    }
}

/// Taken before a store read that may fill the cache.
#[derive(Debug, Clone, Copy)]
pub struct ReadTicket {
    /// `None`: a commit was in flight when the read began (matters for reads without a position).
    generation: Option<u64>,
    failures: u64,
    at: Instant,
}

/// Background refreshes that may read the store at the same time.
const REFRESH_SLOTS: usize = 2;

impl ReadCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::default(),
            known: Mutex::default(),
            refreshing: Mutex::default(),
            refresh_slots: tokio::sync::Semaphore::new(REFRESH_SLOTS),
            stats: CacheStats::default(),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Call before reading the store; pass the result to `put`. An entry's age counts from here,
    /// the start of its read, so `ttl` bounds how old an answer is however long the read took.
    pub fn ticket(&self) -> ReadTicket {
        let e = self.entries();
        ReadTicket {
            generation: (e.commits_in_flight == 0).then_some(e.generation),
            failures: e.failures,
            at: Instant::now(),
        }
    }

    pub fn get(&self, series: &SeriesKey, window: Window) -> Option<Agg> {
        self.get_fresh(series, window).map(|(a, _)| a)
    }

    /// The cached answer and whether it is past half its life (time to refresh it ahead).
    pub fn get_fresh(&self, series: &SeriesKey, window: Window) -> Option<(Agg, bool)> {
        if self.ttl.is_zero() {
            return None;
        }
        let entries = self.entries();
        let now = Instant::now();
        entries
            .by_series
            .get(series)?
            .iter()
            .find(|e| e.window == window && now.duration_since(e.at) < self.ttl)
            .map(|e| (e.agg.clone(), now.duration_since(e.at) >= self.ttl / 2))
    }

    /// Claims the background refresh of an entry; false when one is already running.
    pub fn begin_refresh(&self, series: &SeriesKey, window: Window) -> bool {
        let mut r = self.refreshing.lock().unwrap_or_else(|e| e.into_inner());
        r.len() < MAX_SERIES && r.insert((series.clone(), window))
    }

    pub fn end_refresh(&self, series: &SeriesKey, window: Window) {
        self.refreshing.lock().unwrap_or_else(|e| e.into_inner()).remove(&(series.clone(), window));
    }

    /// Caches `agg`, read at snapshot position `pos` (when the store numbers its commits) with
    /// `ticket` taken before the read; or leaves it out when it cannot be squared with the local
    /// commits that ran meanwhile.
    pub fn put(&self, series: &SeriesKey, window: Window, mut agg: Agg, pos: Option<CommitPos>, ticket: ReadTicket) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries();
        // Checked under the lock that commits also take, so no commit slips in between.
        let fits = ticket.failures == entries.failures
            && match pos {
                Some(k) => k >= entries.reads_from,
                None => ticket.generation == Some(entries.generation),
            };
        if !fits {
            CacheStats::count(&self.stats.fills_discarded);
            return;
        }
        if let Some(k) = pos {
            // The local commits after the snapshot that have already been applied to the cache.
            for r in entries.recent.iter().filter(|r| r.pos > k) {
                r.add_to(series, window, &mut agg);
            }
        }
        if entries.by_series.len() >= MAX_SERIES {
            entries.by_series.clear();
        }
        let now = Instant::now();
        let slot = entries.by_series.entry(series.clone()).or_default();
        if slot.iter().any(|e| e.window == window && e.at > ticket.at) {
            return; // a read that began later already filled it
        }
        slot.retain(|e| e.window != window && now.duration_since(e.at) < self.ttl);
        slot.push(Entry { window, agg, at: ticket.at, pos });
    }

    pub fn is_known(&self, dim: &str, value: &str) -> bool {
        self.known.lock().unwrap_or_else(|e| e.into_inner()).contains(&(dim.to_string(), value.to_string()))
    }

    pub fn set_known(&self, dim: &str, value: &str) {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if known.len() >= MAX_SERIES {
            known.clear();
        }
        known.insert((dim.to_string(), value.to_string()));
    }
}

impl CommitObserver for ReadCache {
    fn commit_started(&self) {
        let mut e = self.entries();
        e.commits_in_flight += 1;
        e.generation += 1;
    }

    fn committed(&self, commit: &Committed<'_>) {
        let mut e = self.entries();
        e.commits_in_flight = e.commits_in_flight.saturating_sub(1);
        e.generation += 1;
        let Some(seconds) = commit.seconds else {
            // No per-second deltas to apply: forget what the commit touched, and make sure no
            // read from before it fills the cache.
            for s in commit.series {
                e.by_series.remove(s);
            }
            if let Some(p) = commit.pos {
                e.reads_from = e.reads_from.max(p);
            }
            return;
        };
        // Seconds come grouped by series: one lookup per series.
        for run in seconds.chunk_by(|a, b| a.0 == b.0) {
            let Some(slot) = commit.series.get(run[0].0 as usize).and_then(|s| e.by_series.get_mut(s)) else {
                continue;
            };
            for entry in slot.iter_mut() {
                // An entry read from a snapshot that holds this commit has its deltas already.
                if entry.pos.zip(commit.pos).is_some_and(|(read_at, c)| read_at >= c) {
                    continue;
                }
                for (_, t, delta) in run {
                    if entry.window.0 <= *t && *t < entry.window.1 {
                        entry.agg.merge(delta);
                    }
                }
            }
        }
        if let Some(pos) = commit.pos {
            e.recent.push_back(Recent { pos, series: commit.series.to_vec(), seconds: seconds.to_vec() });
            if e.recent.len() > RECENT_COMMITS
                && let Some(old) = e.recent.pop_front()
            {
                e.reads_from = e.reads_from.max(old.pos);
            }
        }
    }

    fn commit_failed(&self, touched: &[SeriesKey]) {
        let mut e = self.entries();
        e.commits_in_flight = e.commits_in_flight.saturating_sub(1);
        e.generation += 1;
        e.failures += 1;
        // A failed commit applied nothing, unless it failed while its outcome was already decided
        // (an I/O error at the very end); forgetting its series is right in both cases.
        for s in touched {
            e.by_series.remove(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal::Decimal;

    fn commit(c: &ReadCache, series: &[SeriesKey], seconds: &[(u32, i64, Agg)]) {
        c.commit_started();
        c.committed(&Committed { series, seconds: Some(seconds), pos: None });
    }

    #[test]
    fn without_positions_a_read_that_overlapped_a_commit_does_not_fill_the_cache() {
        let c = ReadCache::new(Duration::from_secs(10));
        let s = SeriesKey::new("m", "", "");
        let one = Agg::of(Decimal::ONE);

        // Began before a commit that ended before the put.
        let t = c.ticket();
        commit(&c, std::slice::from_ref(&s), &[(0, 5, one.clone())]);
        c.put(&s, (0, 10), one.clone(), None, t);
        assert_eq!(c.get(&s, (0, 10)), None);

        // Began while a commit was in flight, put after it ended: its snapshot may hold the
        // commit or not, so it must not be cached (the commit's delta could count twice).
        c.commit_started();
        let t = c.ticket();
        c.committed(&Committed { series: std::slice::from_ref(&s), seconds: Some(&[(0, 5, one.clone())]), pos: None });
        c.put(&s, (0, 10), one.clone(), None, t);
        assert_eq!(c.get(&s, (0, 10)), None);

        // Began while a commit was in flight, put while it still is.
        c.commit_started();
        let t = c.ticket();
        c.put(&s, (0, 10), one.clone(), None, t);
        assert_eq!(c.get(&s, (0, 10)), None);
        c.commit_failed(std::slice::from_ref(&s));

        // No commit anywhere near: cached.
        c.put(&s, (0, 10), one.clone(), None, c.ticket());
        assert_eq!(c.get(&s, (0, 10)), Some(one));
        assert_eq!(c.get(&s, (0, 11)), None, "another window is another entry");
    }

    #[test]
    fn a_commit_adds_its_seconds_to_the_cached_windows_that_hold_them() {
        let c = ReadCache::new(Duration::from_secs(10));
        let (a, b) = (SeriesKey::new("m", "p", "1"), SeriesKey::new("m", "p", "2"));
        let d = |v: i64| Decimal::from(v);
        for s in [&a, &b] {
            c.put(s, (100, 200), Agg::of(d(10)), None, c.ticket());
            c.put(s, (i64::MIN, i64::MAX), Agg::of(d(10)), None, c.ticket());
        }
        let series = [a.clone(), b.clone()];
        // a: one event at the window's first second, one at its end (outside), one long before.
        // b: two at second 150.
        let mut two = Agg::of(d(3));
        two.merge(&Agg::of(d(4)));
        commit(&c, &series, &[(0, 50, Agg::of(d(1))), (0, 100, Agg::of(d(2))), (0, 200, Agg::of(d(5))), (1, 150, two)]);

        let window_a = c.get(&a, (100, 200)).expect("still cached");
        assert_eq!((window_a.count, window_a.sum, window_a.min, window_a.max), (2, d(12), Some(d(2)), Some(d(10))));
        let all_a = c.get(&a, (i64::MIN, i64::MAX)).expect("still cached");
        assert_eq!((all_a.count, all_a.sum, all_a.min, all_a.max), (4, d(18), Some(d(1)), Some(d(10))));
        let window_b = c.get(&b, (100, 200)).expect("still cached");
        assert_eq!((window_b.count, window_b.sum, window_b.min, window_b.max), (3, d(17), Some(d(3)), Some(d(10))));

        // A commit without per-second deltas, or a failed one, drops what it touched.
        c.commit_started();
        c.committed(&Committed { series: std::slice::from_ref(&a), seconds: None, pos: None });
        assert_eq!(c.get(&a, (100, 200)), None);
        assert!(c.get(&b, (100, 200)).is_some());
        c.commit_started();
        c.commit_failed(std::slice::from_ref(&b));
        assert_eq!(c.get(&b, (100, 200)), None);
    }

    /// A commit at position `pos` adding `v` at second 5 to series `s`.
    fn commit_at(c: &ReadCache, s: &SeriesKey, pos: CommitPos, v: i64) {
        c.committed(&Committed {
            series: std::slice::from_ref(s),
            seconds: Some(&[(0, 5, Agg::of(Decimal::from(v)))]),
            pos: Some(pos),
        });
    }

    #[test]
    fn with_positions_a_read_gets_exactly_the_local_commits_its_snapshot_missed() {
        let c = ReadCache::new(Duration::from_secs(10));
        let s = SeriesKey::new("m", "", "");
        let sum = |w| c.get(&s, w).map(|a: Agg| (a.count, a.sum));
        // The store holds commits 1..=3 (1 + 2 + 4 at second 5); reads race commits 4 and 5.
        c.commit_started();
        commit_at(&c, &s, 4, 8);
        c.commit_started();

        // Read at position 3 (before commit 4), put after commit 4 was applied, while 5 runs:
        // the put adds 4; commit 5 adds itself when it ends.
        let t = c.ticket();
        c.put(&s, (0, 10), Agg { count: 3, sum: Decimal::from(7), ..Agg::default() }, Some(3), t);
        assert_eq!(sum((0, 10)), Some((4, Decimal::from(15))));

        // Read at position 5: commit 5 is durable but not yet reported; it must not count twice.
        let t = c.ticket();
        c.put(&s, (0, 20), Agg { count: 5, sum: Decimal::from(31), ..Agg::default() }, Some(5), t);
        commit_at(&c, &s, 5, 16);
        assert_eq!(sum((0, 10)), Some((5, Decimal::from(31))), "the older read got commit 5 added once");
        assert_eq!(sum((0, 20)), Some((5, Decimal::from(31))), "the newer read already held it");

        // A read older than the commits still kept cannot be brought up to date.
        for p in 6..6 + RECENT_COMMITS as u64 + 1 {
            c.commit_started();
            commit_at(&c, &s, p, 0);
        }
        let t = c.ticket();
        c.put(&s, (0, 30), Agg::default(), Some(5), t);
        assert_eq!(sum((0, 30)), None);
        let last = 6 + RECENT_COMMITS as u64;
        c.put(&s, (0, 30), Agg { count: 5, sum: Decimal::from(31), ..Agg::default() }, Some(last - 3), c.ticket());
        assert_eq!(sum((0, 30)).map(|(n, _)| n), Some(8), "brought up by the last three commits");

        // A failed commit's outcome is unknown: no read that overlapped it is cached.
        let t = c.ticket();
        c.commit_started();
        c.commit_failed(std::slice::from_ref(&s));
        c.put(&s, (0, 40), Agg::default(), Some(last), t);
        assert_eq!(sum((0, 40)), None);
    }

    #[test]
    fn entries_expire_after_the_ttl() {
        let c = ReadCache::new(Duration::from_millis(20));
        let s = SeriesKey::new("m", "", "");
        c.put(&s, (0, 1), Agg::default(), None, c.ticket());
        assert!(c.get(&s, (0, 1)).is_some());
        std::thread::sleep(Duration::from_millis(30));
        assert!(c.get(&s, (0, 1)).is_none());
    }

    #[test]
    fn an_answer_ages_from_the_start_of_its_read() {
        let c = ReadCache::new(Duration::from_millis(1000));
        let s = SeriesKey::new("m", "", "");
        let slow = c.ticket();
        std::thread::sleep(Duration::from_millis(600));
        let fast = c.ticket();
        c.put(&s, (0, 1), Agg::of(Decimal::TWO), None, fast);
        c.put(&s, (0, 1), Agg::of(Decimal::ONE), None, slow);
        assert_eq!(c.get(&s, (0, 1)), Some(Agg::of(Decimal::TWO)), "the older read does not replace the newer");
        std::thread::sleep(Duration::from_millis(500));
        assert!(c.get(&s, (0, 1)).is_some(), "the newer read is about 500 ms old");
        let s2 = SeriesKey::new("m2", "", "");
        c.put(&s2, (0, 1), Agg::default(), None, slow);
        assert!(c.get(&s2, (0, 1)).is_none(), "a read that began 1.1 s ago is past the 1 s ttl");
    }

    #[test]
    fn an_entry_past_half_its_life_asks_for_one_refresh_at_a_time() {
        let c = ReadCache::new(Duration::from_millis(200));
        let s = SeriesKey::new("m", "", "");
        c.put(&s, (0, 1), Agg::default(), None, c.ticket());
        assert_eq!(c.get_fresh(&s, (0, 1)), Some((Agg::default(), false)));
        std::thread::sleep(Duration::from_millis(110));
        assert_eq!(c.get_fresh(&s, (0, 1)), Some((Agg::default(), true)), "still served, but old");
        assert!(c.begin_refresh(&s, (0, 1)));
        assert!(!c.begin_refresh(&s, (0, 1)), "one refresh per entry");
        c.end_refresh(&s, (0, 1));
        assert!(c.begin_refresh(&s, (0, 1)));
    }
}
