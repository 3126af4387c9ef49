//! The read cache's state and rules, without I/O (see the parent module for the why).

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::index::Index;

/// The hasher of the maps on every request's path: foldhash, seeded per map (SipHash, the
/// default, was ~5 % of a cached answer's instructions); as in `index`.
type Hasher = foldhash::fast::RandomState;
use crate::ingest::writer::Committed;
use crate::rollup::{Agg, SeriesKey};
use crate::storage::CommitPos;

/// Beyond this many cached series the cache starts over (bounded memory): each shard at its
/// share of it.
const MAX_SERIES: usize = 50_000;

/// The cached answers are split by series into this many maps, each behind its own lock. A local
/// commit touches every cached series it holds, one shard at a time, so a query waits at most for
/// one shard's part of a commit: with one lock, a commit of ~36,000 series on a 190M-event store
/// held it 5-27 ms, and every query behind it waited as long (bench/README.md, "Two 30-minute
/// soaks").
const SHARDS: usize = 16;

/// Local commits kept to bring a read up to date at its `put`: a read that began before the
/// oldest of them is not cached. At 100,000 events/s there are 50-100 commits a second, and a
/// read takes milliseconds.
pub(super) const RECENT_COMMITS: usize = 32;

type Window = (i64, i64);

/// A commit's one-second delta: (its series' index in the commit, the second, the delta).
type Second = (u32, i64, Agg);

/// One cached answer.
#[derive(Debug, Clone)]
struct Entry {
    window: Window,
    agg: Agg,
    /// When the read that filled it began.
    at: Instant,
    /// The local commits up to this position are in `agg` already: those of the read's snapshot,
    /// and those `put` added from `Log::recent`.
    pos: CommitPos,
}

/// The cache's state and its rules, without I/O: what `ReadCache` consults and fills.
///
/// Locks: a shard's, then `log`'s, never the other way round; a commit takes `log` alone, then each
/// shard alone.
#[derive(Debug)]
pub(super) struct Core {
    ttl: Duration,
    shards: Box<[Mutex<Shard>]>,
    /// Which shard holds a series.
    hasher: Hasher,
    log: Mutex<Log>,
    /// Dimension values known to exist (they never stop existing), and bounds of every series'
    /// latest buckets: what the cache can answer without a read (see `index`).
    pub(super) index: Index,
    /// Dimension values a store read found unknown: a 404 for a made-up id is answered from here
    /// for `ttl`, without a store read (a local commit that adds the value removes it at once).
    unknown: Mutex<Unknown>,
    /// Entries being refreshed in the background (one refresh per entry at a time).
    refreshing: Mutex<HashSet<(SeriesKey, Window), Hasher>>,
}

/// The cached answers of the series that hash to one shard.
#[derive(Debug, Default)]
struct Shard {
    by_series: HashMap<SeriesKey, Vec<Entry>, Hasher>,
}

/// What every shard's fills are checked against: the local commits' history.
#[derive(Debug, Default)]
struct Log {
    /// Bumped by every failed local commit: its outcome is not known for sure, so no read that
    /// overlapped it is cached.
    failures: u64,
    /// The last local commits with a position, oldest first. A commit is added here before it
    /// is applied to any shard, so a fill at any moment of a commit sees it in one place or the
    /// other, and the entry's position says which (see `put`).
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

#[derive(Debug, Default)]
struct Unknown {
    /// When the read that found each value unknown began.
    at: HashMap<String, Instant, Hasher>,
    /// Bumped whenever a local commit adds a value not known before: a read that began before
    /// may have missed it, so its "unknown" is not kept.
    epoch: u64,
}

/// Most dimension values kept as unknown (each ~100 bytes).
const MAX_UNKNOWN: usize = 1 << 16;

fn dim_key(buf: &mut String, dim: &str, value: &str) {
    buf.clear();
    buf.push_str(dim);
    buf.push('\0');
    buf.push_str(value);
}

/// Taken before a store read that may fill the cache.
#[derive(Debug, Clone, Copy)]
pub(super) struct ReadTicket {
    failures: u64,
    at: Instant,
}

impl Core {
    pub(super) fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: Hasher::default(),
            log: Mutex::default(),
            index: Index::default(),
            unknown: Mutex::default(),
            refreshing: Mutex::default(),
        }
    }

    fn shard_of(&self, series: &SeriesKey) -> usize {
        self.hasher.hash_one(series) as usize % SHARDS
    }

    fn shard(&self, i: usize) -> std::sync::MutexGuard<'_, Shard> {
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Call before reading the store; pass the result to `put`. An entry's age counts from here,
    /// the start of its read, so `ttl` bounds how old an answer is however long the read took.
    pub(super) fn ticket(&self) -> ReadTicket {
        let log = self.log();
        ReadTicket { failures: log.failures, at: Instant::now() }
    }

    #[cfg(test)]
    pub(super) fn get(&self, series: &SeriesKey, window: Window) -> Option<Agg> {
        self.get_fresh(series, window).map(|(a, _)| a)
    }

    /// The cached answer and whether it is past half its life (time to refresh it ahead).
    pub(super) fn get_fresh(&self, series: &SeriesKey, window: Window) -> Option<(Agg, bool)> {
        if self.ttl.is_zero() {
            return None;
        }
        let shard = self.shard(self.shard_of(series));
        let now = Instant::now();
        shard
            .by_series
            .get(series)?
            .iter()
            .find(|e| e.window == window && now.duration_since(e.at) < self.ttl)
            .map(|e| (e.agg.clone(), now.duration_since(e.at) >= self.ttl / 2))
    }

    /// Claims the background refresh of an entry; false when one is already running.
    pub(super) fn begin_refresh(&self, series: &SeriesKey, window: Window) -> bool {
        let mut r = self.refreshing.lock().unwrap_or_else(|e| e.into_inner());
        r.len() < MAX_SERIES && r.insert((series.clone(), window))
    }

    pub(super) fn end_refresh(&self, series: &SeriesKey, window: Window) {
        self.refreshing.lock().unwrap_or_else(|e| e.into_inner()).remove(&(series.clone(), window));
    }

    /// Caches `agg`, read at snapshot position `pos` with `ticket` taken before the read, adding
    /// the local commits the snapshot missed; or leaves it out (false) when it cannot be squared
    /// with them: a read without a position, one older than the commits kept, or one that
    /// overlapped a failed commit (whose outcome is unknown).
    pub(super) fn put(
        &self,
        series: &SeriesKey,
        window: Window,
        mut agg: Agg,
        pos: Option<CommitPos>,
        ticket: ReadTicket,
    ) -> bool {
        if self.ttl.is_zero() {
            return false;
        }
        let mut shard = self.shard(self.shard_of(series));
        // Under the shard's lock, which a commit takes to apply itself here after it was logged:
        // every local commit after the snapshot is either in `recent` now (it is added here, and
        // the entry's position says so) or applies itself to the entry later.
        let k = {
            let log = self.log();
            let Some(snapshot) = pos.filter(|k| ticket.failures == log.failures && *k >= log.reads_from) else {
                return false;
            };
            let mut k = snapshot;
            for r in log.recent.iter().filter(|r| r.pos > snapshot) {
                r.add_to(series, window, &mut agg);
                k = r.pos;
            }
            k
        };
        if shard.by_series.len() >= MAX_SERIES / SHARDS {
            shard.by_series.clear();
        }
        let now = Instant::now();
        let slot = shard.by_series.entry(series.clone()).or_default();
        if slot.iter().any(|e| e.window == window && e.at > ticket.at) {
            return true; // a read that began later already filled it
        }
        slot.retain(|e| e.window != window && now.duration_since(e.at) < self.ttl);
        slot.push(Entry { window, agg, at: ticket.at, pos: k });
        true
    }

    pub(super) fn is_known(&self, dim: &str, value: &str) -> bool {
        self.index.is_known(dim, value)
    }

    pub(super) fn set_known(&self, dim: &str, value: &str) {
        self.index.note_known(dim, value);
    }

    /// Call before a store read of whether a value is known; pass it to `set_unknown`.
    pub(super) fn unknown_ticket(&self) -> (u64, Instant) {
        (self.unknown.lock().unwrap_or_else(|e| e.into_inner()).epoch, Instant::now())
    }

    /// Whether a read younger than `ttl` found the value unknown.
    pub(super) fn is_unknown(&self, dim: &str, value: &str) -> bool {
        if self.ttl.is_zero() {
            return false;
        }
        let mut k = String::with_capacity(dim.len() + value.len() + 1);
        dim_key(&mut k, dim, value);
        let u = self.unknown.lock().unwrap_or_else(|e| e.into_inner());
        u.at.get(&k).is_some_and(|at| at.elapsed() < self.ttl)
    }

    /// Keeps a store read's "unknown", unless a local commit added a new value since it began.
    pub(super) fn set_unknown(&self, dim: &str, value: &str, (epoch, at): (u64, Instant)) {
        let mut k = String::new();
        dim_key(&mut k, dim, value);
        let mut u = self.unknown.lock().unwrap_or_else(|e| e.into_inner());
        if u.epoch != epoch || self.ttl.is_zero() {
            return;
        }
        if u.at.len() >= MAX_UNKNOWN {
            let ttl = self.ttl;
            u.at.retain(|_, t| t.elapsed() < ttl);
            if u.at.len() >= MAX_UNKNOWN {
                u.at.clear();
            }
        }
        u.at.insert(k, at);
    }

    /// The dimension values of a durable local commit are known from now on.
    fn note_dims(&self, series: &[SeriesKey]) {
        let mut fresh = Vec::new();
        for s in series.iter().filter(|s| !s.dim.is_empty()) {
            if self.index.note_known(&s.dim, &s.value) {
                let mut k = String::new();
                dim_key(&mut k, &s.dim, &s.value);
                fresh.push(k);
            }
        }
        if !fresh.is_empty() {
            if self.index.outgrown() {
                // Reloaded with slots sized for the store as it is now.
                self.index.stale();
            }
            let mut u = self.unknown.lock().unwrap_or_else(|e| e.into_inner());
            u.epoch += 1;
            for k in fresh {
                u.at.remove(&k);
            }
        }
    }
}

impl Core {
    /// A local commit is durable (before its acknowledgements): its one-second deltas are added
    /// to every cached window that holds them, unless the entry's snapshot holds the commit.
    pub(super) fn committed(&self, commit: &Committed<'_>) {
        self.note_dims(commit.series);
        match commit.seconds {
            // Bounds are maxima: a series' latest second in the commit is all they need.
            Some(seconds) => {
                for run in seconds.chunk_by(|a, b| a.0 == b.0) {
                    if let (Some(s), Some(t)) = (commit.series.get(run[0].0 as usize), run.iter().map(|r| r.1).max()) {
                        self.index.note_second(s, t);
                    }
                }
            }
            None => commit.series.iter().for_each(|s| self.index.note_unbounded(s)),
        }
        self.log_commit(commit);
        self.apply_commit(commit);
    }

    /// A commit's first half: noted in the log, before it is applied to any shard.
    pub(super) fn log_commit(&self, commit: &Committed<'_>) {
        // The copy kept for reads in flight is made before the lock: readers wait on it.
        let recent = commit.pos.zip(commit.seconds).map(|(pos, seconds)| Recent {
            pos,
            series: commit.series.to_vec(),
            seconds: seconds.to_vec(),
        });
        let mut log = self.log();
        match recent {
            Some(recent) => {
                log.recent.push_back(recent);
                if log.recent.len() > RECENT_COMMITS
                    && let Some(old) = log.recent.pop_front()
                {
                    log.reads_from = log.reads_from.max(old.pos);
                }
            }
            // No per-second deltas to apply (see `apply_commit`): no read from before it fills
            // the cache.
            None => {
                if let (None, Some(p)) = (commit.seconds, commit.pos) {
                    log.reads_from = log.reads_from.max(p);
                }
            }
        }
    }

    /// A commit's second half: its deltas added to the cached entries that do not hold it yet,
    /// a shard at a time; or, without per-second deltas, what it touched forgotten.
    pub(super) fn apply_commit(&self, commit: &Committed<'_>) {
        let Some(seconds) = commit.seconds else {
            let mut by_shard: [Vec<&SeriesKey>; SHARDS] = Default::default();
            for s in commit.series {
                by_shard[self.shard_of(s)].push(s);
            }
            for (i, series) in by_shard.iter().enumerate().filter(|(_, v)| !v.is_empty()) {
                let mut shard = self.shard(i);
                for s in series {
                    shard.by_series.remove(*s);
                }
            }
            return;
        };
        // Seconds come grouped by series: one run per series, sorted by shard.
        let mut runs: Vec<(usize, &SeriesKey, &[Second])> = seconds
            .chunk_by(|a, b| a.0 == b.0)
            .filter_map(|run| commit.series.get(run[0].0 as usize).map(|s| (self.shard_of(s), s, run)))
            .collect();
        runs.sort_unstable_by_key(|r| r.0);
        for group in runs.chunk_by(|a, b| a.0 == b.0) {
            let mut shard = self.shard(group[0].0);
            if shard.by_series.is_empty() {
                continue;
            }
            for (_, series, run) in group {
                let Some(slot) = shard.by_series.get_mut(*series) else { continue };
                for entry in slot.iter_mut() {
                    // An entry that holds this commit (its snapshot's, or added by `put`) has
                    // its deltas already.
                    if commit.pos.is_some_and(|c| entry.pos >= c) {
                        continue;
                    }
                    for (_, t, delta) in *run {
                        if entry.window.0 <= *t && *t < entry.window.1 {
                            entry.agg.merge(delta);
                        }
                    }
                }
            }
        }
    }

    /// Forgets every answer, and discards the fills of reads that began before (rollups were
    /// replaced under them: a rebuild's swap, a replay committed straight to the store).
    pub(super) fn invalidate_all(&self) {
        self.index.stale();
        self.log().failures += 1;
        for i in 0..SHARDS {
            self.shard(i).by_series.clear();
        }
        // Another process may have added a value read as unknown here.
        let mut u = self.unknown.lock().unwrap_or_else(|e| e.into_inner());
        u.epoch += 1;
        u.at.clear();
    }

    /// A local commit failed; it may have touched `touched`.
    pub(super) fn commit_failed(&self, touched: &[SeriesKey]) {
        // It may have added values and buckets the index does not hold.
        self.index.stale();
        // Bumped first: a fill that checks the log after this is refused, one that checked it
        // before has put its entry by the time its shard is cleared below.
        self.log().failures += 1;
        // A failed commit applied nothing, unless it failed while its outcome was already decided
        // (an I/O error at the very end); forgetting its series is right in both cases.
        for s in touched {
            self.shard(self.shard_of(s)).by_series.remove(s);
        }
    }
}
