//! A small read cache for window aggregates.
//!
//! Entries are keyed by series and exact window, so a sliding window never serves a neighbouring
//! second's answer. The local writer invalidates touched series before it acknowledges a commit
//! (read-your-writes), and every entry expires after `ttl`, which bounds how stale an answer can be
//! when other processes write the same store.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::rollup::{Agg, SeriesKey};

/// Beyond this many cached series the cache starts over (bounded memory).
const MAX_SERIES: usize = 50_000;

type Window = (i64, i64);
/// The cached windows of one series: window, answer, when it was read.
type Slot = Vec<(Window, Agg, Instant)>;

#[derive(Debug)]
pub struct ReadCache {
    ttl: Duration,
    /// Bumped by every invalidation; a read that began before a bump must not fill the cache.
    generation: AtomicU64,
    entries: Mutex<HashMap<SeriesKey, Slot>>,
    /// Dimension values known to exist (they never stop existing).
    known: Mutex<HashSet<(String, String)>>,
    /// Entries being refreshed in the background (one refresh per entry at a time).
    refreshing: Mutex<HashSet<(SeriesKey, Window)>>,
    /// Background refreshes reading the store at once: at each second's turn every trailing
    /// window asks for one, and unbounded they would crowd out the requests they are meant to spare.
    pub refresh_slots: tokio::sync::Semaphore,
}

/// Taken before a store read that may fill the cache.
#[derive(Debug, Clone, Copy)]
pub struct ReadTicket {
    generation: u64,
    at: Instant,
}

/// Background refreshes that may read the store at the same time.
const REFRESH_SLOTS: usize = 2;

impl ReadCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            generation: AtomicU64::new(0),
            entries: Mutex::default(),
            known: Mutex::default(),
            refreshing: Mutex::default(),
            refresh_slots: tokio::sync::Semaphore::new(REFRESH_SLOTS),
        }
    }

    /// Call before reading the store; pass the result to `put`. An entry's age counts from here,
    /// the start of its read, so `ttl` bounds how old an answer is however long the read took.
    pub fn ticket(&self) -> ReadTicket {
        ReadTicket { generation: self.generation.load(Ordering::Acquire), at: Instant::now() }
    }

    pub fn get(&self, series: &SeriesKey, window: Window) -> Option<Agg> {
        self.get_fresh(series, window).map(|(a, _)| a)
    }

    /// The cached answer and whether it is past half its life (time to refresh it ahead).
    pub fn get_fresh(&self, series: &SeriesKey, window: Window) -> Option<(Agg, bool)> {
        if self.ttl.is_zero() {
            return None;
        }
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        entries
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

    /// Caches `agg`, unless an invalidation happened since `ticket` was taken.
    pub fn put(&self, series: &SeriesKey, window: Window, agg: Agg, ticket: ReadTicket) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        // Checked under the lock that `invalidate` also takes, so no stale value slips in.
        if self.generation.load(Ordering::Acquire) != ticket.generation {
            return;
        }
        if entries.len() >= MAX_SERIES {
            entries.clear();
        }
        let now = Instant::now();
        let slot = entries.entry(series.clone()).or_default();
        if slot.iter().any(|(w, _, at)| *w == window && *at > ticket.at) {
            return; // a read that began later already filled it
        }
        slot.retain(|(w, _, at)| *w != window && now.duration_since(*at) < self.ttl);
        slot.push((window, agg, ticket.at));
    }

    pub fn invalidate(&self, touched: &[SeriesKey]) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        self.generation.fetch_add(1, Ordering::AcqRel);
        for s in touched {
            entries.remove(s);
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal::Decimal;

    #[test]
    fn a_read_that_began_before_an_invalidation_does_not_fill_the_cache() {
        let c = ReadCache::new(Duration::from_secs(10));
        let s = SeriesKey::new("m", "", "");
        let g = c.ticket();
        c.invalidate(std::slice::from_ref(&s));
        c.put(&s, (0, 1), Agg::of(Decimal::ONE), g);
        assert_eq!(c.get(&s, (0, 1)), None);
        c.put(&s, (0, 1), Agg::of(Decimal::ONE), c.ticket());
        assert_eq!(c.get(&s, (0, 1)), Some(Agg::of(Decimal::ONE)));
        assert_eq!(c.get(&s, (0, 2)), None, "another window is another entry");
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
