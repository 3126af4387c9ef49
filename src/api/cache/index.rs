//! What the read cache knows of the whole store, to answer without a read: every dimension value
//! that exists (a made-up product is a 404 from memory), and for every series an upper bound of
//! its latest bucket at each resolution below all-time (a window after it is zero from memory —
//! most products' last hour). The rules, without I/O; the parent module loads it.
//!
//! - *Complete* means: loaded from one snapshot of the store (`Store::scan_latest`), with every
//!   local commit since noted (the writer's observer, before each acknowledgement) and no commit
//!   by another process, invalidation or failed commit since. Only a complete index answers; one
//!   that is not is reloaded in the background, and meanwhile requests read the store as before.
//! - Bounds, not values: a series' slot is shared with whatever else hashes to it (a fixed-size
//!   array of maxima), so a collision only costs a read. A span at resolution `r` starting at
//!   `from` holds nothing when the series' bound at `r` is below `from`: every row the store
//!   would read for it (merged, pending, or a pending second whose coarser buckets are derived)
//!   starts at `from` or later.
//! - Known values are exact (a hashed set, numbers kept as `u64`), bounded by [`MAX_KNOWN`]:
//!   beyond it the index gives up for good and the cache reads as before.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::rollup::{Resolution, SeriesKey, Span};

/// The resolutions a slot holds a bound for, and their places in it.
const RESOLUTIONS: [Resolution; 4] = [Resolution::Day, Resolution::Hour, Resolution::Minute, Resolution::Second];

/// Slots are sized at each load to the store's number of series, within these.
const MIN_SLOTS: usize = 1 << 12;
const MAX_SLOTS: usize = 1 << 21;

/// Most known values kept (numbers ~10 bytes each, text more); beyond, the index is off.
pub(super) const MAX_KNOWN: usize = 1 << 23;

/// A bucket start as a slot's value: 0 = nothing, `u32::MAX` = unbounded, else start + 1
/// (starts before 1970 count as 0: still an upper bound).
fn encode(start: i64) -> u32 {
    if start < 0 {
        1
    } else if start >= i64::from(u32::MAX) - 1 {
        u32::MAX
    } else {
        (start + 1) as u32
    }
}

/// Whether a slot's value says no bucket starts at `from` or later.
fn none_from(v: u32, from: i64) -> bool {
    v == 0 || (v != u32::MAX && i64::from(v) - 1 < from)
}

/// A fixed array of bounds, four per slot.
struct Slots {
    cells: Box<[AtomicU32]>,
    mask: usize,
    hasher: foldhash::fast::RandomState,
}

impl Slots {
    fn new(n: usize) -> Self {
        let n = n.next_power_of_two().clamp(MIN_SLOTS, MAX_SLOTS);
        let cells = std::iter::repeat_with(|| AtomicU32::new(0)).take(n * RESOLUTIONS.len()).collect();
        Self { cells, mask: n - 1, hasher: foldhash::fast::RandomState::default() }
    }

    fn slots(&self) -> usize {
        self.mask + 1
    }

    /// The first cell of the slot of a series.
    fn base(&self, metric: &str, dim: &str, value: &str) -> usize {
        (self.hasher.hash_one((metric, dim, value)) as usize & self.mask) * RESOLUTIONS.len()
    }

    fn raise(&self, base: usize, res: Resolution, start: i64) {
        if let Some(i) = RESOLUTIONS.iter().position(|r| *r == res) {
            self.cells[base + i].fetch_max(encode(start), Ordering::AcqRel);
        }
    }
}

/// Dimension values, exactly; numbers (canonical product ids) as `u64`.
#[derive(Default)]
struct Known {
    dims: HashMap<Box<str>, Values, foldhash::fast::RandomState>,
    len: usize,
}

#[derive(Default)]
struct Values {
    numbers: HashSet<u64, foldhash::fast::RandomState>,
    text: HashSet<Box<str>, foldhash::fast::RandomState>,
}

/// `value` as the number it spells, if it is one written the one way (no sign, no leading zero).
fn as_number(value: &str) -> Option<u64> {
    let b = value.as_bytes();
    if b.is_empty() || b.len() > 19 || (b.len() > 1 && b[0] == b'0') || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    value.parse().ok()
}

impl Known {
    fn contains(&self, dim: &str, value: &str) -> bool {
        self.dims.get(dim).is_some_and(|v| match as_number(value) {
            Some(n) => v.numbers.contains(&n),
            None => v.text.contains(value),
        })
    }

    /// Adds a value; true when it is new.
    fn insert(&mut self, dim: &str, value: &str) -> bool {
        let values = match self.dims.get_mut(dim) {
            Some(v) => v,
            None => self.dims.entry(dim.into()).or_default(),
        };
        let fresh = match as_number(value) {
            Some(n) => values.numbers.insert(n),
            None => !values.text.contains(value) && values.text.insert(value.into()),
        };
        self.len += usize::from(fresh);
        fresh
    }
}

/// The index: known values, bounds, and whether they are complete.
pub(super) struct Index {
    slots: RwLock<Arc<Slots>>,
    known: Mutex<Known>,
    /// `generation << 1 | complete`: bumped by whatever makes the index incomplete; read around
    /// a lookup, so an answer never mixes a stale generation's bounds with a complete flag.
    status: AtomicU64,
    /// Serialises changes of `status` (and resizing `slots`).
    changes: Mutex<Changes>,
}

#[derive(Default)]
struct Changes {
    /// The known values overflowed: never complete again.
    gave_up: bool,
}

/// Taken before a load's snapshot, given back at its end.
#[derive(Debug, Clone, Copy)]
pub(super) struct LoadTicket(u64);

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("complete", &self.is_complete())
            .field("known", &self.known_len())
            .field("slots", &self.slots().slots())
            .finish()
    }
}

impl Default for Index {
    fn default() -> Self {
        Self {
            slots: RwLock::new(Arc::new(Slots::new(0))),
            known: Mutex::default(),
            status: AtomicU64::new(0),
            changes: Mutex::default(),
        }
    }
}

impl Index {
    fn slots(&self) -> Arc<Slots> {
        self.slots.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn known(&self) -> std::sync::MutexGuard<'_, Known> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn changes(&self) -> std::sync::MutexGuard<'_, Changes> {
        self.changes.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn is_complete(&self) -> bool {
        self.status.load(Ordering::Acquire) & 1 == 1
    }

    /// Whether any accepted event carried `value` for `dim`, as far as this index knows.
    pub(super) fn is_known(&self, dim: &str, value: &str) -> bool {
        self.known().contains(dim, value)
    }

    /// `value` exists from now on; true when it was not known. Beyond [`MAX_KNOWN`] values the
    /// set is dropped and the index gives up.
    pub(super) fn note_known(&self, dim: &str, value: &str) -> bool {
        let mut known = self.known();
        if known.len >= MAX_KNOWN {
            *known = Known::default();
            drop(known);
            self.changes().gave_up = true;
            self.stale();
            tracing::warn!(max = MAX_KNOWN, "too many dimension values to keep in memory: every unknown one is read");
            return true;
        }
        known.insert(dim, value)
    }

    /// How many values are known (for the loader's sizing and the stats).
    pub(super) fn known_len(&self) -> usize {
        self.known().len
    }

    /// A local commit added events of `series` at second `t`.
    pub(super) fn note_second(&self, series: &SeriesKey, t: i64) {
        let slots = self.slots();
        let base = slots.base(&series.metric, &series.dim, &series.value);
        for r in RESOLUTIONS {
            slots.raise(base, r, r.bucket_of(t));
        }
    }

    /// A load found a bucket of a series starting at `start`.
    pub(super) fn note_bucket(&self, (metric, dim, value): (&str, &str, &str), res: Resolution, start: i64) {
        let slots = self.slots();
        slots.raise(slots.base(metric, dim, value), res, start);
    }

    /// A local commit touched `series` at times it does not tell: anything may be there now.
    pub(super) fn note_unbounded(&self, series: &SeriesKey) {
        let slots = self.slots();
        let base = slots.base(&series.metric, &series.dim, &series.value);
        for i in 0..RESOLUTIONS.len() {
            slots.cells[base + i].store(u32::MAX, Ordering::Release);
        }
    }

    /// Whether the index can say that `spans` of `series` hold no bucket: complete, and every
    /// span's resolution bound below its start.
    pub(super) fn empty_over(&self, series: &SeriesKey, spans: &[Span]) -> bool {
        let before = self.status.load(Ordering::Acquire);
        if before & 1 == 0 || spans.is_empty() {
            return false;
        }
        let slots = self.slots();
        let base = slots.base(&series.metric, &series.dim, &series.value);
        let empty = spans.iter().all(|sp| {
            RESOLUTIONS
                .iter()
                .position(|r| *r == sp.res)
                .is_some_and(|i| none_from(slots.cells[base + i].load(Ordering::Acquire), sp.from))
        });
        // A change since (a reload resizing the slots) voids what was read.
        empty && self.status.load(Ordering::Acquire) == before
    }

    /// Something may have been committed that the index does not hold: incomplete until reloaded.
    pub(super) fn stale(&self) {
        let _c = self.changes();
        let g = self.status.load(Ordering::Acquire) >> 1;
        self.status.store((g + 1) << 1, Ordering::Release);
    }

    /// Call before a load's snapshot is taken, with the number of series the store holds (an
    /// upper bound): makes the index incomplete, and gives it slots for that many series when
    /// it has too few (every commit from here on is noted in them, so the load's snapshot and
    /// the commits after it together hold everything). `None` when the index gave up.
    pub(super) fn begin_load(&self, series: u64) -> Option<LoadTicket> {
        let c = self.changes();
        if c.gave_up {
            return None;
        }
        let g = (self.status.load(Ordering::Acquire) >> 1) + 1;
        self.status.store(g << 1, Ordering::Release);
        let want = usize::try_from(series).unwrap_or(MAX_SLOTS).next_power_of_two().clamp(MIN_SLOTS, MAX_SLOTS);
        let mut slots = self.slots.write().unwrap_or_else(|e| e.into_inner());
        if slots.slots() < want {
            *slots = Arc::new(Slots::new(want));
        }
        Some(LoadTicket(g))
    }

    /// A load finished: complete, unless something made it stale meanwhile.
    pub(super) fn finish_load(&self, LoadTicket(g): LoadTicket) -> bool {
        let c = self.changes();
        if c.gave_up || self.status.load(Ordering::Acquire) != g << 1 {
            return false;
        }
        self.status.store(g << 1 | 1, Ordering::Release);
        true
    }

    pub(super) fn slot_count(&self) -> usize {
        self.slots().slots()
    }

    /// Whether the index gave up (too many values): it is never complete again.
    pub(super) fn given_up(&self) -> bool {
        self.changes().gave_up
    }

    /// Whether the slots are small for the known values (the store grew since the last load).
    pub(super) fn outgrown(&self) -> bool {
        let slots = self.slots().slots();
        slots < MAX_SLOTS && self.known_len() > 2 * slots
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollup::cover;

    fn complete(index: &Index) {
        let t = index.begin_load(0).expect("not given up");
        assert!(index.finish_load(t));
    }

    #[test]
    fn bounds_encode_as_upper_bounds() {
        assert!(none_from(0, i64::MIN), "nothing is before everything");
        assert!(none_from(encode(100), 101));
        assert!(!none_from(encode(100), 100));
        assert!(!none_from(encode(100), 50));
        assert!(!none_from(encode(-5), -5), "before 1970: still a bound");
        assert!(!none_from(encode(-5), 0));
        assert!(none_from(encode(-5), 1));
        assert!(!none_from(encode(i64::MAX), i64::MAX), "beyond the range: unbounded");
        assert!(!none_from(u32::MAX, i64::MAX));
    }

    #[test]
    fn only_a_complete_index_says_a_window_is_empty() {
        let index = Index::default();
        let s = SeriesKey::new("sales", "product_id", "7");
        let hour = cover(10_000, 13_600);
        assert!(!index.empty_over(&s, &hour), "not loaded yet");
        complete(&index);
        assert!(index.empty_over(&s, &hour));
        index.note_second(&s, 9_999);
        assert!(index.empty_over(&s, &hour), "an event before the window");
        index.note_second(&s, 13_599);
        assert!(!index.empty_over(&s, &hour), "an event at the window's last second");
        let later = cover(13_600, 17_200);
        assert!(index.empty_over(&s, &later));
        index.stale();
        assert!(!index.empty_over(&s, &later), "a foreign commit may have added anything");
        complete(&index);
        assert!(index.empty_over(&s, &later));
        index.note_unbounded(&s);
        assert!(!index.empty_over(&s, &later));
    }

    #[test]
    fn each_resolution_is_bounded_by_its_own_buckets() {
        let index = Index::default();
        let s = SeriesKey::new("sales", "product_id", "7");
        complete(&index);
        // A minute bucket at 12,000 (its seconds merged away): the hour 10,000–13,600 covers it
        // with minutes, and a window starting after the minute's start does not.
        index.note_bucket(("sales", "product_id", "7"), Resolution::Minute, 12_000);
        assert!(!index.empty_over(&s, &cover(10_000, 13_600)));
        assert!(index.empty_over(&s, &cover(12_060, 15_660)));
        // An hour bucket only matters to spans in hours; all-time spans are never answered.
        index.note_bucket(("sales", "product_id", "7"), Resolution::Hour, 36_000);
        assert!(index.empty_over(&s, &cover(12_060, 15_660)));
        assert!(index.empty_over(&s, &cover(0, 86_400)), "a day span reads day buckets only");
        index.note_bucket(("sales", "product_id", "7"), Resolution::Day, 0);
        assert!(!index.empty_over(&s, &cover(0, 86_400)));
        let all = [Span { res: Resolution::All, from: 0, to: 1 }];
        assert!(!index.empty_over(&SeriesKey::new("other", "", ""), &all));
    }

    #[test]
    fn a_load_overtaken_by_a_foreign_commit_is_not_complete() {
        let index = Index::default();
        let t = index.begin_load(10).unwrap();
        index.stale();
        assert!(!index.finish_load(t));
        assert!(!index.is_complete());
        let t = index.begin_load(10).unwrap();
        assert!(index.finish_load(t));
        assert!(index.is_complete());
    }

    #[test]
    fn known_values_are_exact_and_numbers_are_kept_as_numbers() {
        let index = Index::default();
        assert!(index.note_known("product_id", "42"));
        assert!(!index.note_known("product_id", "42"));
        assert!(index.note_known("product_id", "042"), "another spelling is another value");
        assert!(index.note_known("category", "Books"));
        assert!(index.is_known("product_id", "42"));
        assert!(index.is_known("product_id", "042"));
        assert!(!index.is_known("product_id", "43"));
        assert!(!index.is_known("category", "42"));
        assert!(index.is_known("category", "Books"));
        assert!(!index.is_known("category", "books"));
        assert!(index.note_known("product_id", "99999999999999999999"), "beyond u64: text");
        assert!(index.is_known("product_id", "99999999999999999999"));
        assert_eq!(index.known_len(), 4);
        assert_eq!(as_number("0"), Some(0));
        assert_eq!(as_number("-1"), None);
        assert_eq!(as_number("+1"), None);
    }

    #[test]
    fn a_load_sizes_the_slots_to_the_store() {
        let index = Index::default();
        assert_eq!(index.slots().slots(), MIN_SLOTS);
        index.begin_load(100_000).unwrap();
        assert_eq!(index.slots().slots(), 131_072);
        index.begin_load(10).unwrap();
        assert_eq!(index.slots().slots(), 131_072, "never shrinks");
    }
}
