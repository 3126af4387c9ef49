//! Time-bucketed aggregates: bucket arithmetic, window covers, and folding events into deltas.
//!
//! Pure code: no I/O, no clock. Times are epoch seconds unless named `_ms`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use rust_decimal::Decimal;

use crate::config::{Aggregation, EVENT_NAME_DIMENSION, MetricDef, Settings};
use crate::event::{Event, FieldValue, parse_decimal, parse_id};

/// Bucket sizes. `All` is the single all-time bucket (start 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resolution {
    All,
    Day,
    Hour,
    Minute,
    Second,
}

/// Every resolution an event updates, coarsest first.
pub const RESOLUTIONS: [Resolution; 5] =
    [Resolution::All, Resolution::Day, Resolution::Hour, Resolution::Minute, Resolution::Second];

impl Resolution {
    /// Bucket length in seconds; the stored code (0 for all-time).
    pub const fn seconds(self) -> i64 {
        match self {
            Resolution::All => 0,
            Resolution::Day => 86_400,
            Resolution::Hour => 3_600,
            Resolution::Minute => 60,
            Resolution::Second => 1,
        }
    }

    pub fn from_seconds(s: i64) -> Option<Self> {
        RESOLUTIONS.into_iter().find(|r| r.seconds() == s)
    }

    /// The start of the bucket holding second `t`.
    pub fn bucket_of(self, t: i64) -> i64 {
        match self {
            Resolution::All => 0,
            r => t.div_euclid(r.seconds()) * r.seconds(),
        }
    }

    /// The next finer resolution used to cover window edges.
    fn finer(self) -> Option<Self> {
        match self {
            Resolution::All => Some(Resolution::Day),
            Resolution::Day => Some(Resolution::Hour),
            Resolution::Hour => Some(Resolution::Minute),
            Resolution::Minute => Some(Resolution::Second),
            Resolution::Second => None,
        }
    }
}

/// count, sum, min and max of a set of values. Averages are `sum / count` of a whole window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Agg {
    pub count: i64,
    pub sum: Decimal,
    pub min: Option<Decimal>,
    pub max: Option<Decimal>,
}

impl Agg {
    pub fn of(v: Decimal) -> Self {
        Self { count: 1, sum: v, min: Some(v), max: Some(v) }
    }

    pub fn merge(&mut self, o: &Agg) {
        self.count += o.count;
        self.sum += o.sum;
        self.min = opt_fold(self.min, o.min, Decimal::min);
        self.max = opt_fold(self.max, o.max, Decimal::max);
    }

    pub fn avg(&self) -> Option<Decimal> {
        (self.count > 0).then(|| self.sum / Decimal::from(self.count))
    }

    /// The value a metric reports by default.
    pub fn value(&self, aggregation: Aggregation) -> Option<Decimal> {
        match aggregation {
            Aggregation::Sum => Some(self.sum),
            Aggregation::Count => Some(Decimal::from(self.count)),
            Aggregation::Avg => self.avg(),
            Aggregation::Min => self.min,
            Aggregation::Max => self.max,
        }
    }
}

fn opt_fold(a: Option<Decimal>, b: Option<Decimal>, f: fn(Decimal, Decimal) -> Decimal) -> Option<Decimal> {
    match (a, b) {
        (Some(a), Some(b)) => Some(f(a, b)),
        (a, b) => a.or(b),
    }
}

/// One series: a metric, optionally narrowed to one value of one dimension (`dim == ""` is the
/// metric's overall series).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesKey {
    pub metric: Arc<str>,
    pub dim: Arc<str>,
    pub value: String,
}

impl SeriesKey {
    pub fn new(metric: &str, dim: &str, value: &str) -> Self {
        Self { metric: metric.into(), dim: dim.into(), value: value.into() }
    }
}

/// One bucket of one series.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BucketKey {
    pub series: SeriesKey,
    pub res: Resolution,
    /// Start of the bucket, epoch seconds (0 for `All`).
    pub start: i64,
}

/// A run of buckets at one resolution: starts in `[from, to)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub res: Resolution,
    pub from: i64,
    pub to: i64,
}

impl Span {
    /// The seconds `[lo, hi)` whose buckets at this span's resolution start in `[from, to)`: where
    /// a store that keeps recent data as one-second buckets only finds this span's part of it.
    pub fn seconds(&self) -> (i64, i64) {
        match self.res {
            Resolution::All if self.from <= 0 && 0 < self.to => (i64::MIN, i64::MAX),
            Resolution::All => (0, 0),
            r => {
                let step = r.seconds();
                let up = |x: i64| x.div_euclid(step) * step + if x.rem_euclid(step) == 0 { 0 } else { step };
                (up(self.from), up(self.to))
            }
        }
    }
}

/// The fewest aligned buckets that exactly cover `[from, to)` (seconds). Coarse buckets fill the
/// middle, finer ones the edges: any window costs O(23 + 59 + 59) rows per edge, whatever the
/// number of events in it.
pub fn cover(from: i64, to: i64) -> Vec<Span> {
    let mut spans = Vec::new();
    cover_at(Resolution::Day, from, to, &mut spans);
    spans.sort_by_key(|s| (s.from, s.res));
    spans
}

fn cover_at(res: Resolution, from: i64, to: i64, out: &mut Vec<Span>) {
    if from >= to {
        return;
    }
    let Some(finer) = res.finer() else {
        out.push(Span { res, from, to });
        return;
    };
    let step = res.seconds();
    let a = from.div_euclid(step) * step + if from.rem_euclid(step) == 0 { 0 } else { step };
    let b = to.div_euclid(step) * step;
    if a < b {
        out.push(Span { res, from: a, to: b });
        cover_at(finer, from, a, out);
        cover_at(finer, b, to, out);
    } else {
        cover_at(finer, from, to, out);
    }
}

/// The finest resolution whose buckets are still kept for second `t`, given retention.
pub fn finest_kept(t: i64, now: i64, second_keep: i64, minute_keep: i64) -> Resolution {
    let age = now - t;
    if age <= second_keep {
        Resolution::Second
    } else if age <= minute_keep {
        Resolution::Minute
    } else {
        Resolution::Hour
    }
}

/// Snaps a window outward so that its edges fall on buckets still kept: `from` down, `to` up.
pub fn snap_window(from: i64, to: i64, now: i64, second_keep: i64, minute_keep: i64) -> (i64, i64) {
    let f = finest_kept(from, now, second_keep, minute_keep).bucket_of(from);
    let r = finest_kept(to, now, second_keep, minute_keep);
    let t = if r.bucket_of(to) == to { to } else { r.bucket_of(to) + r.seconds() };
    (f, t)
}

/// "The last `window_s` seconds" at instant `now_ms`: the `window_s` one-second buckets ending with
/// the current second, as `[from, to)`.
pub fn trailing_window(now_ms: i64, window_s: i64) -> (i64, i64) {
    let to = now_ms.div_euclid(1000) + 1;
    (to - window_s, to)
}

/// A metric compiled for folding: the config's declaration with its strings shared.
#[derive(Debug, Clone)]
pub struct CompiledMetric {
    pub name: Arc<str>,
    pub event: String,
    pub aggregation: Aggregation,
    pub field: Option<String>,
    pub dims: Vec<Arc<str>>,
}

/// The declared metrics, ready to fold events.
#[derive(Debug)]
pub struct Metrics {
    pub metrics: Vec<CompiledMetric>,
    series: SeriesIds,
}

impl Metrics {
    pub fn new(settings: &Settings) -> Self {
        let mut metrics: Vec<CompiledMetric> = settings.metrics.iter().map(CompiledMetric::from).collect();
        // One `Arc` per dimension name across metrics: folding recognises a dimension it has
        // already looked up in this event by pointer.
        let mut names: Vec<Arc<str>> = Vec::new();
        for d in metrics.iter_mut().flat_map(|m| m.dims.iter_mut()) {
            match names.iter().find(|n| **n == *d) {
                Some(n) => *d = n.clone(),
                None => names.push(d.clone()),
            }
        }
        let names: Arc<[Arc<str>]> = metrics.iter().map(|m| m.name.clone()).collect();
        Self { metrics, series: SeriesIds::new(names, MAX_INTERNED_SERIES) }
    }

    pub fn get(&self, name: &str) -> Option<&CompiledMetric> {
        self.metrics.iter().find(|m| &*m.name == name)
    }

    /// Adds one event's contribution to every metric that folds it.
    pub fn fold(&self, event: &Event, delta: &mut RollupDelta) {
        let t = event.time_ms.div_euclid(1000);
        let table = delta.table.get_or_insert_with(|| self.series.current());
        // Each dimension's value is looked up once per event, however many metrics use it.
        let mut looked_up: [(*const u8, Option<DimValueId>); 8] = [(std::ptr::null(), None); 8];
        let mut n = 0;
        for (mi, m) in self.metrics.iter().enumerate() {
            if m.event != "*" && m.event != event.name {
                continue;
            }
            let v = match &m.field {
                None => Decimal::ONE,
                // A metric on an event without a schema skips events lacking a numeric field.
                Some(f) => match event.fields.get(f).and_then(parse_decimal) {
                    Some(v) => v,
                    None => continue,
                },
            };
            let agg = Agg::of(v);
            add_second(delta.seconds.entry(series_id(mi, OVERALL)).or_default(), t, &agg);
            for d in &m.dims {
                let ptr = d.as_ptr();
                let id = match looked_up[..n].iter().find(|(p, _)| *p == ptr) {
                    Some((_, id)) => *id,
                    None => {
                        let value = if &**d == EVENT_NAME_DIMENSION {
                            Some(Cow::Borrowed(&*event.name))
                        } else {
                            event.fields.get(d).and_then(dimension_value)
                        };
                        let id = value.map(|v| table.dim_value(d, &v));
                        if n < looked_up.len() {
                            looked_up[n] = (ptr, id);
                            n += 1;
                        }
                        id
                    }
                };
                if let Some(id) = id {
                    add_second(delta.seconds.entry(series_id(mi, id)).or_default(), t, &agg);
                }
            }
        }
    }
}

impl From<&MetricDef> for CompiledMetric {
    fn from(m: &MetricDef) -> Self {
        Self {
            name: m.name.as_str().into(),
            event: m.event.clone(),
            aggregation: m.aggregation,
            field: m.field.clone(),
            dims: m.dimensions.iter().map(|d| Arc::from(d.as_str())).collect(),
        }
    }
}

/// A dimension value: ids in canonical form, short strings as they are.
fn dimension_value<'v>(v: &'v FieldValue<'_>) -> Option<Cow<'v, str>> {
    match v {
        FieldValue::Str(s) if s.len() <= crate::event::MAX_NAME_BYTES && !s.contains('\0') => {
            // Already canonical (digits without leading zeros): borrowed, the common case.
            let canonical =
                !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit()) && !s.starts_with('0');
            if canonical && s.parse::<u64>().is_ok() {
                return Some(Cow::Borrowed(s));
            }
            Some(Cow::Owned(parse_id(v).unwrap_or_else(|| s.to_string())))
        }
        // The number's value in its shortest exact form ("1.50" and "1.5" are one value).
        FieldValue::Number(n) => Some(Cow::Owned(
            parse_id(v)
                .or_else(|| crate::event::exact_decimal(n).ok().map(|d| d.normalize().to_string()))
                .unwrap_or_else(|| n.to_string()),
        )),
        FieldValue::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
        _ => None,
    }
}

/// A hash map with a fast, non-cryptographic hasher: the keys are ours (metric names, dimension
/// values, times), and hashing is the hottest part of folding.
pub type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A series' id in one [`SeriesTable`]: the metric's index (high half) and its dimension value's
/// id (low half). Local to the process, never stored.
pub type SeriesId = u64;

/// A dimension value's id in one [`SeriesTable`]; [`OVERALL`] is a metric's overall series.
type DimValueId = u32;

const OVERALL: DimValueId = 0;

fn series_id(metric: usize, value: DimValueId) -> SeriesId {
    ((metric as u64) << 32) | u64::from(value)
}

/// A dimension and one of its values, e.g. `product_id` = `"3"`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct DimValue {
    dim: Arc<str>,
    value: String,
}

/// A [`DimValue`] borrowed from an event being folded: looked up without allocating. Its derived
/// `Hash` hashes the same `str`s in the same order, so both find one entry.
#[derive(Hash)]
struct DimValueRef<'a> {
    dim: &'a str,
    value: &'a str,
}

impl hashbrown::Equivalent<DimValue> for DimValueRef<'_> {
    fn equivalent(&self, k: &DimValue) -> bool {
        k.value == self.value && *k.dim == *self.dim
    }
}

/// Interned series: folding keys buckets by an integer instead of three strings, which makes
/// hashing, merging and sorting a commit's buckets cheap. Dimension values are interned (a
/// series is a metric and a dimension value), so an event looks each of its dimension values up
/// once, under a read lock, without allocating.
#[derive(Debug)]
pub struct SeriesTable {
    metrics: Arc<[Arc<str>]>,
    inner: RwLock<Interned>,
}

#[derive(Debug)]
struct Interned {
    ids: hashbrown::HashMap<DimValue, DimValueId, foldhash::fast::RandomState>,
    values: Vec<DimValue>,
}

impl SeriesTable {
    fn new(metrics: Arc<[Arc<str>]>) -> Self {
        let overall = DimValue { dim: Arc::from(""), value: String::new() };
        let mut ids = hashbrown::HashMap::default();
        ids.insert(overall.clone(), OVERALL);
        Self { metrics, inner: RwLock::new(Interned { ids, values: vec![overall] }) }
    }

    fn dim_value(&self, dim: &Arc<str>, value: &str) -> DimValueId {
        let r = DimValueRef { dim, value };
        if let Some(&id) = self.inner.read().unwrap_or_else(|e| e.into_inner()).ids.get(&r) {
            return id;
        }
        let mut w = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if let Some(&id) = w.ids.get(&r) {
            return id;
        }
        let id = DimValueId::try_from(w.values.len()).expect("a table is replaced long before 2^32 values");
        let key = DimValue { dim: dim.clone(), value: value.to_string() };
        w.values.push(key.clone());
        w.ids.insert(key, id);
        id
    }

    /// The id of a series folded with another table (same metrics).
    fn intern(&self, key: &SeriesKey) -> SeriesId {
        let metric = self.metrics.iter().position(|m| *m == key.metric).expect("the same metrics");
        series_id(metric, self.dim_value(&key.dim, &key.value))
    }

    /// The keys of `ids`, under one lock.
    fn keys(&self, ids: impl Iterator<Item = SeriesId>) -> Vec<SeriesKey> {
        let r = self.inner.read().unwrap_or_else(|e| e.into_inner());
        ids.map(|id| {
            let v = &r.values[(id & u64::from(u32::MAX)) as usize];
            SeriesKey { metric: self.metrics[(id >> 32) as usize].clone(), dim: v.dim.clone(), value: v.value.clone() }
        })
        .collect()
    }

    /// Dimension values interned (the overall one included).
    pub fn len(&self) -> usize {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The series table new folds use. Once it holds `max` dimension values it is swapped for an
/// empty one, so a stream of ever-new values (outside input) cannot grow memory without bound;
/// deltas keep the table they were folded with, and merging deltas of two tables translates by
/// key.
#[derive(Debug)]
pub struct SeriesIds {
    current: RwLock<Arc<SeriesTable>>,
    max: usize,
}

/// Dimension values one table holds before it is replaced (~100 bytes each).
pub const MAX_INTERNED_SERIES: usize = 1 << 20;

impl SeriesIds {
    pub fn new(metrics: Arc<[Arc<str>]>, max: usize) -> Self {
        Self { current: RwLock::new(Arc::new(SeriesTable::new(metrics))), max }
    }

    fn current(&self) -> Arc<SeriesTable> {
        let t = self.current.read().unwrap_or_else(|e| e.into_inner()).clone();
        if t.len() < self.max {
            return t;
        }
        let mut w = self.current.write().unwrap_or_else(|e| e.into_inner());
        if w.len() >= self.max {
            *w = Arc::new(SeriesTable::new(w.metrics.clone()));
        }
        w.clone()
    }
}

/// Adds to the bucket of second `t` in a series' list. Events mostly arrive in time order, so
/// only the last few buckets are searched; a miss appends, and [`RollupDelta::into_rows`] merges
/// the duplicates that can leave. That keeps one event's cost bounded whatever the batch.
fn add_second(seconds: &mut Vec<(i64, Agg)>, t: i64, agg: &Agg) {
    match seconds.iter_mut().rev().take(4).find(|(s, _)| *s == t) {
        Some((_, a)) => a.merge(agg),
        None => seconds.push((t, agg.clone())),
    }
}

/// Pending changes to buckets, merged in memory before a commit (one upsert per touched bucket).
///
/// Sources fold events into one-second buckets only, kept per series; [`RollupDelta::into_rows`]
/// derives the minute, hour, day and all-time buckets once per commit, from the merged seconds.
/// That makes folding and merging five times cheaper than updating every resolution per event.
#[derive(Debug, Default, Clone)]
pub struct RollupDelta {
    /// The table `seconds` ids belong to; set by the first fold.
    table: Option<Arc<SeriesTable>>,
    /// Per series, its one-second buckets `(second, agg)`: unordered, possibly repeated.
    seconds: FastMap<SeriesId, Vec<(i64, Agg)>>,
}

impl RollupDelta {
    pub fn merge(&mut self, other: RollupDelta) {
        let Some(theirs) = other.table else { return };
        let ours = self.table.get_or_insert_with(|| theirs.clone());
        if self.seconds.is_empty() && Arc::ptr_eq(ours, &theirs) {
            self.seconds = other.seconds;
        } else if Arc::ptr_eq(ours, &theirs) {
            self.seconds.reserve(other.seconds.len());
            for (id, secs) in other.seconds {
                self.seconds.entry(id).or_default().extend(secs);
            }
        } else {
            // Folded before the table was replaced: translate ids by key (rare).
            let keys = theirs.keys(other.seconds.keys().copied());
            for ((_, secs), key) in other.seconds.into_iter().zip(keys) {
                self.seconds.entry(ours.intern(&key)).or_default().extend(secs);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.seconds.is_empty()
    }

    /// The rows one commit writes: every second bucket plus the minute, hour, day and all-time
    /// buckets derived from them, in lock order; and each dimension value seen, with the first
    /// second it was seen in (what makes a product "known").
    pub fn into_rows(self) -> (RollupRows, Vec<(Arc<str>, String, i64)>) {
        let Some(table) = self.table else { return Default::default() };
        let mut entries: Vec<(SeriesId, Vec<(i64, Agg)>)> = self.seconds.into_iter().collect();
        // Series in key order: every writer then locks rows in one order (PostgreSQL).
        let keys = table.keys(entries.iter().map(|(id, _)| *id));
        let mut keyed: Vec<(SeriesKey, Vec<(i64, Agg)>)> =
            keys.into_iter().zip(entries.drain(..)).map(|(k, (_, secs))| (k, secs)).collect();
        keyed.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut out = RollupRows { derived: true, ..RollupRows::default() };
        let mut dims = Vec::new();
        out.rows.reserve(keyed.iter().map(|(_, s)| s.len() + 4).sum());
        for (key, secs) in keyed {
            let first = out.push_seconds(key, secs);
            let key = out.series.last().expect("just pushed");
            if !key.dim.is_empty() {
                dims.push((key.dim.clone(), key.value.clone(), first));
            }
        }
        (out, dims)
    }
}

/// The all-time, day, hour and minute buckets of one series' second buckets, which must be sorted
/// by second with each second once. Each coarser bucket is a run of consecutive seconds, so the
/// buckets come out ordered by (resolution, start), coarsest first: the lock order.
pub fn coarser_buckets(secs: &[(i64, Agg)]) -> impl Iterator<Item = (Resolution, i64, Agg)> + '_ {
    [Resolution::All, Resolution::Day, Resolution::Hour, Resolution::Minute].into_iter().flat_map(move |res| {
        let mut out: Vec<(Resolution, i64, Agg)> = Vec::new();
        for (t, a) in secs {
            let start = res.bucket_of(*t);
            match out.last_mut() {
                Some((_, s, agg)) if *s == start => agg.merge(a),
                _ => out.push((res, start, a.clone())),
            }
        }
        out
    })
}

/// One bucket row of a commit; `series` indexes [`RollupRows::series`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollupRow {
    pub series: u32,
    pub res: Resolution,
    pub start: i64,
    pub agg: Agg,
}

/// The bucket rows of one commit: the series they belong to, each once and sorted by key, and
/// the rows sorted by (series, resolution, start), each once. That is the order every writer
/// locks rows in, so concurrent writers on PostgreSQL cannot deadlock; and a backend resolves
/// each series to its own id once per commit, not once per row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RollupRows {
    series: Vec<SeriesKey>,
    rows: Vec<RollupRow>,
    /// The coarser rows are exactly those derived from the second rows (see [`coarser_buckets`]),
    /// so a backend may write the seconds only and derive the rest itself, later.
    derived: bool,
}

impl RollupRows {
    /// From one-second buckets in any order (repeats are merged), with every coarser bucket
    /// derived from them.
    pub fn from_seconds(seconds: impl IntoIterator<Item = (SeriesKey, i64, Agg)>) -> Self {
        let mut by_series: std::collections::BTreeMap<SeriesKey, Vec<(i64, Agg)>> = Default::default();
        for (key, t, agg) in seconds {
            by_series.entry(key).or_default().push((t, agg));
        }
        let mut out = Self { derived: true, ..Self::default() };
        for (key, secs) in by_series {
            out.push_seconds(key, secs);
        }
        out
    }

    /// Adds a series (after every series already here, in key order) with its seconds and the
    /// buckets derived from them; returns its first second.
    fn push_seconds(&mut self, key: SeriesKey, mut secs: Vec<(i64, Agg)>) -> i64 {
        let series = self.series.len() as u32;
        secs.sort_unstable_by_key(|(t, _)| *t);
        secs.dedup_by(|b, a| {
            let same = a.0 == b.0;
            if same {
                a.1.merge(&b.1);
            }
            same
        });
        let first = secs.first().map_or(0, |(t, _)| *t);
        self.rows.extend(coarser_buckets(&secs).map(|(res, start, agg)| RollupRow { series, res, start, agg }));
        self.rows.extend(secs.into_iter().map(|(start, agg)| RollupRow {
            series,
            res: Resolution::Second,
            start,
            agg,
        }));
        self.series.push(key);
        first
    }

    /// Whether the coarser rows are derived from the second rows (`from_seconds`, and every batch
    /// the ingest writer builds), rather than given one by one (`from_buckets`).
    pub fn coarse_derived(&self) -> bool {
        self.derived
    }

    /// From buckets in any order; buckets with the same key are merged.
    pub fn from_buckets(buckets: impl IntoIterator<Item = (BucketKey, Agg)>) -> Self {
        let mut merged: std::collections::BTreeMap<BucketKey, Agg> = Default::default();
        for (k, a) in buckets {
            merged.entry(k).or_default().merge(&a);
        }
        let mut out = Self::default();
        for (k, agg) in merged {
            if out.series.last() != Some(&k.series) {
                out.series.push(k.series.clone());
            }
            let series = (out.series.len() - 1) as u32;
            out.rows.push(RollupRow { series, res: k.res, start: k.start, agg });
        }
        out
    }

    pub fn series(&self) -> &[SeriesKey] {
        &self.series
    }

    pub fn rows(&self) -> &[RollupRow] {
        &self.rows
    }

    /// Each row with its series key.
    pub fn iter(&self) -> impl Iterator<Item = (&SeriesKey, &RollupRow)> {
        self.rows.iter().map(|r| (&self.series[r.series as usize], r))
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn total_len(spans: &[Span]) -> i64 {
        spans.iter().map(|s| s.to - s.from).sum()
    }

    #[test]
    fn the_last_hour_is_the_3600_seconds_ending_with_this_one() {
        let now_ms = 1_700_000_000_500;
        let (from, to) = trailing_window(now_ms, 3600);
        assert_eq!(to - from, 3600);
        let now = now_ms / 1000;
        assert!(from <= now - 3590 && now - 3610 < from);
        assert!(now < to);
    }

    #[test]
    fn an_aligned_day_is_one_bucket() {
        assert_eq!(cover(86_400, 2 * 86_400), vec![Span { res: Resolution::Day, from: 86_400, to: 172_800 }]);
    }

    #[test]
    fn an_unaligned_hour_uses_seconds_at_the_edges_and_minutes_between() {
        let spans = cover(100, 3700);
        let rows: i64 = spans.iter().map(|s| (s.to - s.from) / s.res.seconds()).sum();
        assert_eq!(
            spans.iter().map(|s| s.res).collect::<Vec<_>>(),
            [Resolution::Second, Resolution::Minute, Resolution::Second]
        );
        assert!(rows <= 59 + 60 + 59, "{rows}");
    }

    proptest! {
        #[test]
        fn a_cover_is_exact_aligned_and_small(from in -1_000_000i64..10_000_000, len in 0i64..5_000_000) {
            let to = from + len;
            let spans = cover(from, to);
            prop_assert_eq!(total_len(&spans), len);
            let mut at = from;
            let mut rows = 0;
            for s in &spans {
                prop_assert_eq!(s.from, at, "spans are contiguous");
                prop_assert!(s.from < s.to);
                prop_assert_eq!(s.from.rem_euclid(s.res.seconds()), 0);
                prop_assert_eq!(s.to.rem_euclid(s.res.seconds()), 0);
                rows += (s.to - s.from) / s.res.seconds();
                at = s.to;
            }
            prop_assert!(rows <= 2 * (23 + 59 + 59) + len / 86_400, "{} rows", rows);
        }

        #[test]
        fn a_spans_seconds_are_exactly_those_in_its_buckets(
            from in -200_000i64..200_000, len in 0i64..200_000, t in -300_000i64..300_000, r in 0usize..5,
        ) {
            let res = RESOLUTIONS[r];
            let span = Span { res, from, to: from + len };
            let (lo, hi) = span.seconds();
            let b = res.bucket_of(t);
            prop_assert_eq!(lo <= t && t < hi, span.from <= b && b < span.to, "second {} bucket {}", t, b);
        }

        #[test]
        fn snapping_only_widens_and_aligns(from in 0i64..10_000_000, len in 0i64..5_000_000, back in 0i64..20_000_000) {
            let now = 20_000_000;
            let (f, t) = snap_window(from, from + len, now, 172_800, 7_776_000);
            prop_assert!(f <= from && t >= from + len);
            prop_assert_eq!(f, finest_kept(from, now, 172_800, 7_776_000).bucket_of(from));
            let _ = back;
        }

        #[test]
        fn bucket_of_contains_the_second(t in -10_000_000i64..10_000_000) {
            for r in RESOLUTIONS.into_iter().filter(|r| *r != Resolution::All) {
                let b = r.bucket_of(t);
                prop_assert!(b <= t && t < b + r.seconds());
            }
        }
    }

    #[test]
    fn averages_are_of_the_whole_window_not_of_buckets() {
        let mut a = Agg::of(Decimal::from(5));
        let mut b = Agg::of(Decimal::from(1));
        b.merge(&Agg::of(Decimal::from(1)));
        a.merge(&b);
        assert_eq!(a.avg(), Some(Decimal::from(7) / Decimal::from(3)));
        assert_eq!((a.min, a.max), (Some(Decimal::ONE), Some(Decimal::from(5))));
    }

    #[test]
    fn ten_sales_of_ten_cents_total_exactly_one() {
        let settings = Settings::default();
        let metrics = Metrics::new(&settings);
        let v = crate::event::Validator::new(&settings);
        let mut delta = RollupDelta::default();
        for _ in 0..10 {
            let e = v
                .validate(br#"{"event_name":"productSold","product_id":3,"no_of_units":1,"amount":"0.10"}"#, 0, 0)
                .unwrap();
            metrics.fold(&e, &mut delta);
        }
        let (rows, dims) = delta.into_rows();
        let all = rows
            .iter()
            .find(|(k, r)| **k == SeriesKey::new("sales_amount", "product_id", "3") && r.res == Resolution::All)
            .map(|(_, r)| r.agg.clone())
            .expect("the all-time bucket");
        assert_eq!(all.sum, Decimal::ONE);
        assert_eq!(all.sum.normalize().to_string(), "1");
        assert_eq!(all.count, 10);
        assert!(dims.iter().any(|(d, v, _)| &**d == "product_id" && v == "3"));
    }

    fn fold_all(metrics: &Metrics, events: &[(&str, i64)]) -> RollupDelta {
        let v = crate::event::Validator::new(&Settings::default());
        let mut delta = RollupDelta::default();
        for (json, ms) in events {
            metrics.fold(&v.validate(json.as_bytes(), *ms, *ms).expect("valid"), &mut delta);
        }
        delta
    }

    fn sale(product: u32, amount: &str) -> String {
        format!(
            r#"{{"event_name":"productSold","product_id":{product},"no_of_units":1,"amount":"{amount}","category":"c"}}"#
        )
    }

    #[test]
    fn a_borrowed_value_finds_the_interned_key() {
        let t = SeriesTable::new(vec![Arc::from("m"), Arc::from("n")].into());
        let a = t.intern(&SeriesKey::new("m", "d", "1"));
        assert_eq!(series_id(0, t.dim_value(&Arc::from("d"), "1")), a);
        assert_ne!(t.dim_value(&Arc::from("d"), "2"), t.dim_value(&Arc::from("d"), "1"));
        assert_ne!(t.dim_value(&Arc::from(""), "d1"), t.dim_value(&Arc::from("d"), "1"), "no boundary confusion");
        assert_eq!(t.dim_value(&Arc::from(""), ""), OVERALL);
        assert_eq!(t.len(), 4);
        let b = t.intern(&SeriesKey::new("n", "", ""));
        assert_eq!(t.keys([a, b].into_iter()), [SeriesKey::new("m", "d", "1"), SeriesKey::new("n", "", "")]);
    }

    #[test]
    fn rows_derive_every_resolution_from_seconds_in_lock_order() {
        let metrics = Metrics::new(&Settings::default());
        let (a, b, c) = (sale(2, "1.50"), sale(1, "2"), sale(2, "0.25"));
        let delta = fold_all(&metrics, &[(&a, 3_599_000), (&b, 3_599_500), (&c, 3_601_000)]);
        let (rows, dims) = delta.into_rows();
        // The same rows as folding every resolution per event, then sorting.
        let mut expect = Vec::new();
        for (p, amount, t) in [("2", "1.50", 3599), ("1", "2", 3599), ("2", "0.25", 3601)] {
            for res in RESOLUTIONS {
                let v = Decimal::from_str_exact(amount).expect("decimal");
                expect.push((
                    BucketKey { series: SeriesKey::new("sales_amount", "product_id", p), res, start: res.bucket_of(t) },
                    Agg::of(v),
                ));
            }
        }
        let want = RollupRows::from_buckets(expect);
        let flat = |rows: &RollupRows| -> Vec<(SeriesKey, Resolution, i64, Agg)> {
            rows.iter()
                .filter(|(k, _)| &*k.metric == "sales_amount" && &*k.dim == "product_id")
                .map(|(k, r)| (k.clone(), r.res, r.start, r.agg.clone()))
                .collect()
        };
        assert_eq!(flat(&rows), flat(&want));
        let keys: Vec<_> = rows.iter().map(|(k, r)| (k.clone(), r.res, r.start)).collect();
        assert!(keys.is_sorted(), "rows come in lock order");
        assert_eq!(dims.iter().find(|d| &*d.0 == "product_id" && d.1 == "2").map(|d| d.2), Some(3599), "first seen");
    }

    #[test]
    fn deltas_folded_with_a_replaced_table_merge_by_key() {
        let mut metrics = Metrics::new(&Settings::default());
        let names = metrics.series.current().metrics.clone();
        metrics.series = SeriesIds::new(names, 2); // every fold starts a new table
        let (a, b) = (sale(7, "1"), sale(7, "2"));
        let mut one = fold_all(&metrics, &[(&a, 5_000)]);
        let two = fold_all(&metrics, &[(&b, 5_000), (&sale(8, "4"), 5_000)]);
        assert!(!Arc::ptr_eq(one.table.as_ref().expect("table"), two.table.as_ref().expect("table")));
        one.merge(two);
        let (rows, _) = one.into_rows();
        let all = |p: &str| {
            rows.iter()
                .find(|(k, r)| **k == SeriesKey::new("sales_amount", "product_id", p) && r.res == Resolution::All)
                .map(|(_, r)| (r.agg.count, r.agg.sum))
        };
        assert_eq!(all("7"), Some((2, Decimal::from(3))));
        assert_eq!(all("8"), Some((1, Decimal::from(4))));
    }

    #[test]
    fn rows_from_buckets_are_sorted_with_each_key_once() {
        let k = |v: &str| BucketKey { series: SeriesKey::new("m", "d", v), res: Resolution::Second, start: 1 };
        let rows = RollupRows::from_buckets([
            (k("b"), Agg::of(Decimal::ONE)),
            (k("a"), Agg::of(Decimal::TWO)),
            (k("b"), Agg::of(Decimal::TEN)),
        ]);
        let keys: Vec<_> = rows.iter().map(|(s, _)| s.value.as_str()).collect();
        assert_eq!(keys, ["a", "b"]);
        assert_eq!(rows.series().len(), 2);
        assert_eq!(
            rows.rows()[1].agg,
            Agg { count: 2, sum: Decimal::from(11), min: Some(Decimal::ONE), max: Some(Decimal::TEN) }
        );
    }

    #[test]
    fn out_of_order_seconds_merge_into_one_row_each() {
        let metrics = Metrics::new(&Settings::default());
        let secs = [5, 1, 5, 3, 1, 2, 6, 7, 8, 9, 5, 61, 1];
        let events: Vec<(String, i64)> = secs.iter().map(|t| (sale(1, "1"), t * 1000)).collect();
        let events: Vec<(&str, i64)> = events.iter().map(|(j, t)| (j.as_str(), *t)).collect();
        let (rows, dims) = fold_all(&metrics, &events).into_rows();
        let series = SeriesKey::new("sales_amount", "product_id", "1");
        let got: Vec<(Resolution, i64, i64)> =
            rows.iter().filter(|(k, _)| **k == series).map(|(_, r)| (r.res, r.start, r.agg.count)).collect();
        use Resolution::*;
        let want = [
            (All, 0, 13),
            (Day, 0, 13),
            (Hour, 0, 13),
            (Minute, 0, 12),
            (Minute, 60, 1),
            (Second, 1, 3),
            (Second, 2, 1),
            (Second, 3, 1),
            (Second, 5, 3),
            (Second, 6, 1),
            (Second, 7, 1),
            (Second, 8, 1),
            (Second, 9, 1),
            (Second, 61, 1),
        ];
        assert_eq!(got, want);
        assert!(dims.iter().any(|d| &*d.0 == "product_id" && d.1 == "1" && d.2 == 1));
    }
}
