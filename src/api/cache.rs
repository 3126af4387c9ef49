//! A small read cache for window aggregates, kept exact by the local writer's commits.
//!
//! Entries are keyed by series and exact window, so a sliding window never serves a neighbouring
//! second's answer. The local writer tells the cache about each commit ([`CommitObserver`]): once
//! a commit is durable, and before it is acknowledged, its one-second deltas are added to every
//! cached window that holds their second (read-your-writes, with no re-read). Every entry still
//! expires after `ttl`, which bounds how stale an answer can be when other processes write the
//! same store.
//!
//! A store read may fill the cache only when no local commit ran at any point between the start
//! of the read and its `put`: otherwise its snapshot may or may not hold that commit, and adding
//! the commit's deltas to it could count them twice. Such a read still answers its request.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::ingest::writer::{CommitObserver, Committed};
use crate::rollup::{Agg, SeriesKey};

/// Beyond this many cached series the cache starts over (bounded memory).
const MAX_SERIES: usize = 50_000;

type Window = (i64, i64);
/// The cached windows of one series: window, answer, when it was read.
type Slot = Vec<(Window, Agg, Instant)>;

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
}

#[derive(Debug, Default)]
struct Entries {
    by_series: HashMap<SeriesKey, Slot>,
    /// Bumped when a local commit starts and when it ends: a read that saw a bump must not fill
    /// the cache.
    generation: u64,
    /// Local commits started and not yet ended.
    commits_in_flight: u32,
}

/// Taken before a store read that may fill the cache.
#[derive(Debug, Clone, Copy)]
pub struct ReadTicket {
    /// `None`: a commit was in flight when the read began, so it may never fill the cache.
    generation: Option<u64>,
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
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Call before reading the store; pass the result to `put`. An entry's age counts from here,
    /// the start of its read, so `ttl` bounds how old an answer is however long the read took.
    pub fn ticket(&self) -> ReadTicket {
        let e = self.entries();
        ReadTicket { generation: (e.commits_in_flight == 0).then_some(e.generation), at: Instant::now() }
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
            .find(|(w, _, at)| *w == window && now.duration_since(*at) < self.ttl)
            .map(|(_, a, at)| (a.clone(), now.duration_since(*at) >= self.ttl / 2))
    }

    /// Claims the background refresh of an entry; false when one is already running.
    pub fn begin_refresh(&self, series: &SeriesKey, window: Window) -> bool {
        let mut r = self.refreshing.lock().unwrap_or_else(|e| e.into_inner());
        r.len() < MAX_SERIES && r.insert((series.clone(), window))
    }

    pub fn end_refresh(&self, series: &SeriesKey, window: Window) {
        self.refreshing.lock().unwrap_or_else(|e| e.into_inner()).remove(&(series.clone(), window));
    }

    /// Caches `agg`, unless a local commit ran at any time since `ticket` was taken.
    pub fn put(&self, series: &SeriesKey, window: Window, agg: Agg, ticket: ReadTicket) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries();
        // Checked under the lock that commits also take, so no commit slips in between.
        if ticket.generation != Some(entries.generation) {
            return;
        }
        if entries.by_series.len() >= MAX_SERIES {
            entries.by_series.clear();
        }
        let now = Instant::now();
        let slot = entries.by_series.entry(series.clone()).or_default();
        if slot.iter().any(|(w, _, at)| *w == window && *at > ticket.at) {
            return; // a read that began later already filled it
        }
        slot.retain(|(w, _, at)| *w != window && now.duration_since(*at) < self.ttl);
        slot.push((window, agg, ticket.at));
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
            // No per-second deltas to apply: forget what the commit touched.
            for s in commit.series {
                e.by_series.remove(s);
            }
            return;
        };
        // Seconds come grouped by series: one lookup per series.
        for run in seconds.chunk_by(|a, b| a.0 == b.0) {
            let Some(slot) = commit.series.get(run[0].0 as usize).and_then(|s| e.by_series.get_mut(s)) else {
                continue;
            };
            for (_, t, delta) in run {
                for (w, agg, _) in slot.iter_mut() {
                    if w.0 <= *t && *t < w.1 {
                        agg.merge(delta);
                    }
                }
            }
        }
    }

    fn commit_failed(&self, touched: &[SeriesKey]) {
        let mut e = self.entries();
        e.commits_in_flight = e.commits_in_flight.saturating_sub(1);
        e.generation += 1;
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
        c.committed(&Committed { series, seconds: Some(seconds) });
    }

    #[test]
    fn a_read_that_overlapped_a_commit_does_not_fill_the_cache() {
        let c = ReadCache::new(Duration::from_secs(10));
        let s = SeriesKey::new("m", "", "");
        let one = Agg::of(Decimal::ONE);

        // Began before a commit that ended before the put.
        let t = c.ticket();
        commit(&c, std::slice::from_ref(&s), &[(0, 5, one.clone())]);
        c.put(&s, (0, 10), one.clone(), t);
        assert_eq!(c.get(&s, (0, 10)), None);

        // Began while a commit was in flight, put after it ended: its snapshot may hold the
        // commit or not, so it must not be cached (the commit's delta could count twice).
        c.commit_started();
        let t = c.ticket();
        c.committed(&Committed { series: std::slice::from_ref(&s), seconds: Some(&[(0, 5, one.clone())]) });
        c.put(&s, (0, 10), one.clone(), t);
        assert_eq!(c.get(&s, (0, 10)), None);

        // Began while a commit was in flight, put while it still is.
        c.commit_started();
        let t = c.ticket();
        c.put(&s, (0, 10), one.clone(), t);
        assert_eq!(c.get(&s, (0, 10)), None);
        c.commit_failed(std::slice::from_ref(&s));

        // No commit anywhere near: cached.
        c.put(&s, (0, 10), one.clone(), c.ticket());
        assert_eq!(c.get(&s, (0, 10)), Some(one));
        assert_eq!(c.get(&s, (0, 11)), None, "another window is another entry");
    }

    #[test]
    fn a_commit_adds_its_seconds_to_the_cached_windows_that_hold_them() {
        let c = ReadCache::new(Duration::from_secs(10));
        let (a, b) = (SeriesKey::new("m", "p", "1"), SeriesKey::new("m", "p", "2"));
        let d = |v: i64| Decimal::from(v);
        for s in [&a, &b] {
            c.put(s, (100, 200), Agg::of(d(10)), c.ticket());
            c.put(s, (i64::MIN, i64::MAX), Agg::of(d(10)), c.ticket());
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
        c.committed(&Committed { series: std::slice::from_ref(&a), seconds: None });
        assert_eq!(c.get(&a, (100, 200)), None);
        assert!(c.get(&b, (100, 200)).is_some());
        c.commit_started();
        c.commit_failed(std::slice::from_ref(&b));
        assert_eq!(c.get(&b, (100, 200)), None);
    }

    #[test]
    fn entries_expire_after_the_ttl() {
        let c = ReadCache::new(Duration::from_millis(20));
        let s = SeriesKey::new("m", "", "");
        c.put(&s, (0, 1), Agg::default(), c.ticket());
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
        c.put(&s, (0, 1), Agg::of(Decimal::TWO), fast);
        c.put(&s, (0, 1), Agg::of(Decimal::ONE), slow);
        assert_eq!(c.get(&s, (0, 1)), Some(Agg::of(Decimal::TWO)), "the older read does not replace the newer");
        std::thread::sleep(Duration::from_millis(500));
        assert!(c.get(&s, (0, 1)).is_some(), "the newer read is about 500 ms old");
        let s2 = SeriesKey::new("m2", "", "");
        c.put(&s2, (0, 1), Agg::default(), slow);
        assert!(c.get(&s2, (0, 1)).is_none(), "a read that began 1.1 s ago is past the 1 s ttl");
    }

    #[test]
    fn an_entry_past_half_its_life_asks_for_one_refresh_at_a_time() {
        let c = ReadCache::new(Duration::from_millis(200));
        let s = SeriesKey::new("m", "", "");
        c.put(&s, (0, 1), Agg::default(), c.ticket());
        assert_eq!(c.get_fresh(&s, (0, 1)), Some((Agg::default(), false)));
        std::thread::sleep(Duration::from_millis(110));
        assert_eq!(c.get_fresh(&s, (0, 1)), Some((Agg::default(), true)), "still served, but old");
        assert!(c.begin_refresh(&s, (0, 1)));
        assert!(!c.begin_refresh(&s, (0, 1)), "one refresh per entry");
        c.end_refresh(&s, (0, 1));
        assert!(c.begin_refresh(&s, (0, 1)));
    }
}
