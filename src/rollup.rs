//! Time-bucketed aggregates: bucket arithmetic, window covers, and folding events into deltas.
//!
//! Pure code: no I/O, no clock. Times are epoch seconds unless named `_ms`.

use std::collections::HashMap;
use std::sync::Arc;

use rust_decimal::Decimal;
use serde_json::Value;

use crate::config::{Aggregation, EVENT_NAME_DIMENSION, MetricDef, Settings};
use crate::event::{Event, parse_decimal, parse_id};

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
#[derive(Debug, Clone)]
pub struct Metrics {
    pub metrics: Vec<CompiledMetric>,
    overall: Arc<str>,
}

impl Metrics {
    pub fn new(settings: &Settings) -> Self {
        let metrics = settings.metrics.iter().map(CompiledMetric::from).collect();
        Self { metrics, overall: Arc::from("") }
    }

    pub fn get(&self, name: &str) -> Option<&CompiledMetric> {
        self.metrics.iter().find(|m| &*m.name == name)
    }

    /// Adds one event's contribution to every metric that folds it.
    pub fn fold(&self, event: &Event, delta: &mut RollupDelta) {
        let t = event.time_ms.div_euclid(1000);
        for m in &self.metrics {
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
            delta.add(SeriesKey { metric: m.name.clone(), dim: self.overall.clone(), value: String::new() }, t, &agg);
            for d in &m.dims {
                let value = if &**d == EVENT_NAME_DIMENSION {
                    Some(event.name.clone())
                } else {
                    event.fields.get(&**d).and_then(dimension_value)
                };
                if let Some(value) = value {
                    delta.dims.entry((d.clone(), value.clone())).or_insert(t);
                    delta.add(SeriesKey { metric: m.name.clone(), dim: d.clone(), value }, t, &agg);
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
fn dimension_value(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if s.len() <= crate::event::MAX_NAME_BYTES => Some(parse_id(v).unwrap_or_else(|| s.clone())),
        Value::Number(_) => Some(parse_id(v).unwrap_or_else(|| v.to_string())),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A hash map with a fast, non-cryptographic hasher: the keys are ours (metric names, dimension
/// values, times), and hashing is the hottest part of folding.
pub type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Pending changes to buckets, merged in memory before a commit (one upsert per touched bucket).
///
/// Sources fold events into one-second buckets only; [`RollupDelta::expanded`] derives the
/// minute, hour, day and all-time buckets once per commit, from the merged seconds. That makes
/// folding and merging five times cheaper than updating every resolution per event.
#[derive(Debug, Default, Clone)]
pub struct RollupDelta {
    pub buckets: FastMap<BucketKey, Agg>,
    /// Dimension values seen, with the first time seen (what makes a product "known").
    pub dims: FastMap<(Arc<str>, String), i64>,
}

impl RollupDelta {
    fn add(&mut self, series: SeriesKey, t: i64, agg: &Agg) {
        let key = BucketKey { series, res: Resolution::Second, start: t };
        self.buckets.entry(key).or_default().merge(agg);
    }

    /// Adds, to one-second buckets, the buckets of every coarser resolution.
    pub fn expanded(mut self) -> Self {
        let seconds: Vec<(BucketKey, Agg)> = self
            .buckets
            .iter()
            .filter(|(k, _)| k.res == Resolution::Second)
            .map(|(k, a)| (k.clone(), a.clone()))
            .collect();
        for (k, agg) in seconds {
            for res in [Resolution::Minute, Resolution::Hour, Resolution::Day, Resolution::All] {
                let key = BucketKey { series: k.series.clone(), res, start: res.bucket_of(k.start) };
                self.buckets.entry(key).or_default().merge(&agg);
            }
        }
        self
    }

    pub fn merge(&mut self, other: RollupDelta) {
        if self.buckets.is_empty() {
            self.buckets = other.buckets;
        } else {
            for (k, v) in other.buckets {
                self.buckets.entry(k).or_default().merge(&v);
            }
        }
        for (k, t) in other.dims {
            let e = self.dims.entry(k).or_insert(t);
            *e = (*e).min(t);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// The series this delta touches (for cache invalidation); call on an expanded delta.
    pub fn series(&self) -> impl Iterator<Item = &SeriesKey> {
        self.buckets.keys().filter(|k| k.res == Resolution::All).map(|k| &k.series)
    }

    /// Buckets in key order: every writer locks rows in the same order, so concurrent writers on
    /// PostgreSQL cannot deadlock.
    pub fn into_sorted(self) -> Vec<(BucketKey, Agg)> {
        let mut v: Vec<_> = self.buckets.into_iter().collect();
        v.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        v
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
        let delta = delta.expanded();
        let all =
            BucketKey { series: SeriesKey::new("sales_amount", "product_id", "3"), res: Resolution::All, start: 0 };
        assert_eq!(delta.buckets[&all].sum, Decimal::ONE);
        assert_eq!(delta.buckets[&all].sum.normalize().to_string(), "1");
        assert_eq!(delta.buckets[&all].count, 10);
        assert!(delta.dims.contains_key(&(Arc::from("product_id"), "3".to_string())));
    }
}
