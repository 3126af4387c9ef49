//! Folding events into one-second deltas: declared metrics, interned series ids, and the delta a
//! batch carries to the writer.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use rust_decimal::Decimal;

use super::agg::{Agg, SeriesKey};
use super::rows::{DimRow, RollupRows, Seconds};
use crate::config::{Aggregation, EVENT_NAME_DIMENSION, MetricDef, Settings};
use crate::event::{Event, FieldValue, id_number, parse_decimal, parse_id};

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
    /// Dimensions whose values carry a label, and the field it is read from.
    labels: Vec<(Arc<str>, String)>,
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
        // The same `Arc`s: a label is taken for a dimension value the event was folded under.
        let labels = settings
            .labels
            .iter()
            .filter_map(|(dim, field)| names.iter().find(|n| ***n == **dim).map(|n| (n.clone(), field.clone())))
            .collect();
        let names: Arc<[Arc<str>]> = metrics.iter().map(|m| m.name.clone()).collect();
        Self { metrics, series: SeriesIds::new(names, MAX_INTERNED_SERIES), labels }
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
                        let id = if &**d == EVENT_NAME_DIMENSION {
                            Some(table.dim_value(d, &event.name))
                        } else {
                            event.fields.get(d).and_then(|v| match id_number(v) {
                                // An id (the common dimension) by its number: no text hashed or built.
                                Some(n) => Some(table.dim_number(d, n)),
                                None => dimension_value(v).map(|v| table.dim_value(d, &v)),
                            })
                        };
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
        for (dim, field) in &self.labels {
            let id = looked_up[..n].iter().find(|(p, _)| *p == dim.as_ptr()).and_then(|(_, id)| *id);
            if let (Some(id), Some(FieldValue::Str(label))) = (id, event.fields.get(field)) {
                note_label(&mut delta.labels, id, event.time_ms, label);
            }
        }
    }
}

/// Keeps the latest (by event time) label of a dimension value; the same label again costs no
/// allocation.
fn note_label(labels: &mut FastMap<DimValueId, (i64, Box<str>)>, id: DimValueId, time_ms: i64, label: &str) {
    if label.len() > crate::event::MAX_NAME_BYTES || label.contains('\0') {
        return;
    }
    match labels.get_mut(&id) {
        Some((t, l)) if **l == *label => *t = (*t).max(time_ms),
        Some((t, _)) if *t > time_ms => {}
        _ => {
            labels.insert(id, (time_ms, label.into()));
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

/// A dimension value that is not an id (ids are looked up by their number): short strings as
/// they are, other numbers in their shortest exact form.
fn dimension_value<'v>(v: &'v FieldValue<'_>) -> Option<Cow<'v, str>> {
    match v {
        FieldValue::Str(s) if s.len() <= crate::event::MAX_NAME_BYTES && !s.contains('\0') => {
            Some(parse_id(v).map_or(Cow::Borrowed(&**s), Cow::Owned))
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

/// The number a dimension value's text is the canonical form of ("7", not "07"): such a value is
/// interned by its number, whichever way it arrives.
fn canonical_number(s: &str) -> Option<u64> {
    let n = crate::event::id_number(&FieldValue::Str(Cow::Borrowed(s)))?;
    (s == "0" || !s.starts_with('0')).then_some(n)
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
    /// Dimensions seen, by number (an index): a numeric value's key is two integers.
    dims: Vec<Arc<str>>,
    /// Values whose text is a canonical number, by (dimension's number, value): most dimension
    /// values are ids, and hashing two integers beats hashing and comparing two strings.
    numbers: FastMap<(u32, u64), DimValueId>,
    /// Every other value, by its text.
    ids: hashbrown::HashMap<DimValue, DimValueId, foldhash::fast::RandomState>,
    /// Every value, by id.
    values: Vec<DimValue>,
}

impl Interned {
    /// A dimension's number: found by pointer when it is one of the metrics' own (folding), by
    /// text otherwise.
    fn dim_number(&self, dim: &Arc<str>) -> Option<u32> {
        let i =
            self.dims.iter().position(|d| Arc::ptr_eq(d, dim)).or_else(|| self.dims.iter().position(|d| d == dim))?;
        Some(i as u32)
    }

    fn push(&mut self, key: DimValue) -> DimValueId {
        let id = DimValueId::try_from(self.values.len()).expect("a table is replaced long before 2^32 values");
        self.values.push(key);
        id
    }
}

impl SeriesTable {
    fn new(metrics: Arc<[Arc<str>]>) -> Self {
        let overall = DimValue { dim: Arc::from(""), value: String::new() };
        let mut ids = hashbrown::HashMap::default();
        ids.insert(overall.clone(), OVERALL);
        let inner = Interned { dims: Vec::new(), numbers: FastMap::default(), ids, values: vec![overall] };
        Self { metrics, inner: RwLock::new(inner) }
    }

    fn dim_value(&self, dim: &Arc<str>, value: &str) -> DimValueId {
        if let Some(n) = canonical_number(value) {
            return self.dim_number(dim, n);
        }
        let r = DimValueRef { dim, value };
        if let Some(&id) = self.inner.read().unwrap_or_else(|e| e.into_inner()).ids.get(&r) {
            return id;
        }
        let mut w = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if let Some(&id) = w.ids.get(&r) {
            return id;
        }
        let key = DimValue { dim: dim.clone(), value: value.to_string() };
        let id = w.push(key.clone());
        w.ids.insert(key, id);
        id
    }

    /// The id of a dimension value whose canonical text is `n`'s (an id).
    fn dim_number(&self, dim: &Arc<str>, n: u64) -> DimValueId {
        {
            let r = self.inner.read().unwrap_or_else(|e| e.into_inner());
            if let Some(id) = r.dim_number(dim).and_then(|d| r.numbers.get(&(d, n))) {
                return *id;
            }
        }
        let mut w = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let d = match w.dim_number(dim) {
            Some(d) => d,
            None => {
                w.dims.push(dim.clone());
                (w.dims.len() - 1) as u32
            }
        };
        if let Some(&id) = w.numbers.get(&(d, n)) {
            return id;
        }
        let dim = w.dims[d as usize].clone();
        let id = w.push(DimValue { dim, value: n.to_string() });
        w.numbers.insert((d, n), id);
        id
    }

    /// The id of a series folded with another table (same metrics).
    fn intern(&self, key: &SeriesKey) -> SeriesId {
        let metric = self.metrics.iter().position(|m| *m == key.metric).expect("the same metrics");
        series_id(metric, self.dim_value(&key.dim, &key.value))
    }

    /// A dimension value's (dimension, value).
    fn dim_value_key(&self, id: DimValueId) -> (Arc<str>, String) {
        let v = &self.inner.read().unwrap_or_else(|e| e.into_inner()).values[id as usize];
        (v.dim.clone(), v.value.clone())
    }

    /// The id here of a dimension value folded with another table.
    fn dim_value_of(&self, other: &SeriesTable, id: DimValueId) -> DimValueId {
        let (dim, value) = other.dim_value_key(id);
        self.dim_value(&dim, &value)
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
fn add_second(seconds: &mut Seconds, t: i64, agg: &Agg) {
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
    seconds: FastMap<SeriesId, Seconds>,
    /// Per dimension value, the latest label seen: (event time, label).
    labels: FastMap<DimValueId, (i64, Box<str>)>,
}

impl RollupDelta {
    /// About the heap this delta holds, in bytes: what an ingest request is charged for it while
    /// it waits for the writer (`http.max_inflight_ingest_bytes`).
    pub fn heap_bytes(&self) -> usize {
        use std::mem::size_of;
        // A hash map's slot: its key and value, and a control byte.
        let seconds = self.seconds.capacity() * (size_of::<(SeriesId, Seconds)>() + 1)
            + self
                .seconds
                .values()
                .filter(|v| v.spilled())
                .map(|v| v.capacity() * size_of::<(i64, Agg)>())
                .sum::<usize>();
        let labels = self.labels.capacity() * (size_of::<(DimValueId, (i64, Box<str>))>() + 1)
            + self.labels.values().map(|(_, l)| l.len()).sum::<usize>();
        seconds + labels
    }

    pub fn merge(&mut self, other: RollupDelta) {
        let Some(theirs) = other.table else { return };
        let ours = self.table.get_or_insert_with(|| theirs.clone());
        for (id, (t, label)) in other.labels {
            let id = if Arc::ptr_eq(ours, &theirs) { id } else { ours.dim_value_of(&theirs, id) };
            note_label(&mut self.labels, id, t, &label);
        }
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
    pub fn into_rows(self) -> (RollupRows, Vec<DimRow>) {
        let Some(table) = self.table else { return Default::default() };
        let mut entries: Vec<(SeriesId, Seconds)> = self.seconds.into_iter().collect();
        // Series in key order: every writer then locks rows in one order (PostgreSQL).
        let keys = table.keys(entries.iter().map(|(id, _)| *id));
        let mut keyed: Vec<(SeriesKey, Seconds)> =
            keys.into_iter().zip(entries.drain(..)).map(|(k, (_, secs))| (k, secs)).collect();
        keyed.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let (rows, mut dims) = RollupRows::from_keyed_seconds(keyed);
        if !self.labels.is_empty() {
            let labels: FastMap<(Arc<str>, String), Box<str>> =
                self.labels.into_iter().map(|(id, (_, l))| (table.dim_value_key(id), l)).collect();
            for d in &mut dims {
                if let Some(l) = labels.get(&(d.dim.clone(), d.value.clone())) {
                    d.label = Some(l.to_string());
                }
            }
        }
        (rows, dims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollup::Resolution;

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

    /// What a parsed batch holds while it waits for the writer (and is charged to the ingest
    /// budget): the reference stream's 1,000-event bodies touch mostly products seen once in the
    /// batch, whose one second must not cost a vector of its own.
    #[test]
    fn a_batch_of_cold_products_holds_little_per_event() {
        let metrics = Metrics::new(&Settings::default());
        let sales: Vec<(String, i64)> =
            (0..1_000).map(|i| (sale(10_000 + i, "12.50"), 1_000_000 + 997 * i64::from(i))).collect();
        let events: Vec<(&str, i64)> = sales.iter().map(|(j, t)| (j.as_str(), *t)).collect();
        let delta = fold_all(&metrics, &events);
        let per_event = delta.heap_bytes() / events.len();
        eprintln!("heap per event: {per_event} bytes, {} series", delta.seconds.len());
        assert!(per_event < 900, "{per_event} bytes an event");
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

    /// Ids are interned by number, other values by text: every way an id arrives, and its
    /// canonical text from another table, must find one value.
    #[test]
    fn an_id_is_one_value_however_it_arrives() {
        let metrics = Metrics::new(&Settings::default());
        let forms = ["7", "\"7\"", "\"007\"", "7", "\"0000007\""];
        let events: Vec<String> = forms
            .iter()
            .map(|p| format!(r#"{{"event_name":"productSold","product_id":{p},"no_of_units":1,"amount":"1"}}"#))
            .collect();
        let delta = fold_all(&metrics, &events.iter().map(|e| (e.as_str(), 1_000)).collect::<Vec<_>>());
        let table = delta.table.clone().expect("table");
        let (rows, dims) = delta.into_rows();
        let mut products: Vec<_> = dims.iter().filter(|d| &*d.dim == "product_id").map(|d| d.value.as_str()).collect();
        products.dedup();
        assert_eq!(products, ["7"]);
        let all = rows
            .iter()
            .find(|(k, r)| **k == SeriesKey::new("sales_amount", "product_id", "7") && r.res == Resolution::All)
            .map(|(_, r)| r.agg.count);
        assert_eq!(all, Some(forms.len() as i64));
        // The dimension's name from elsewhere (another allocation), by text and by number.
        let d: Arc<str> = Arc::from("product_id");
        let id = table.dim_number(&d, 7);
        assert_eq!(table.dim_value(&d, "7"), id);
        assert_eq!(table.dim_value_key(id), (d.clone(), "7".to_string()));
        assert_ne!(table.dim_value(&d, "07"), id, "only canonical text is a number");
        assert_ne!(table.dim_number(&Arc::from("category"), 7), id, "numbers are per dimension");
        assert_eq!(table.dim_value(&d, "0"), table.dim_number(&d, 0));
        // A dimension without a schema may hold any number: its shortest exact form is an id's.
        for n in ["7.0", "7e0", "0.07e2"] {
            let field = FieldValue::Number(n);
            let v = dimension_value(&field).expect("a value");
            assert_eq!(table.dim_value(&d, &v), id, "{n}");
        }
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
}
