//! Folding stored raw events again: a raw block's lines become events (checked against today's
//! schemas) and fold into the rebuilt metrics' buckets; the partial rollups of a step are encoded
//! as a chunk, and chunks merge into the rows a swap writes.

use std::sync::Arc;

use rust_decimal::Decimal;

use crate::config::{RetentionSettings, Settings};
use crate::event::Validator;
use crate::rollup::{Agg, DimRow, FastMap, Metrics, Resolution, RollupDelta, RollupRow, RollupRows, SeriesKey};
use crate::storage::rebuild::Rebuilt;
use crate::storage::{RawBlock, raw_codec};

/// Folds raw events into the buckets of some metrics.
pub struct Refolder {
    validator: Validator,
    metrics: Metrics,
    /// Events before this (epoch ms) are left out: their buckets are not rebuilt.
    from_ms: i64,
    /// Per resolution, the first bucket start kept by retention (older ones are not written).
    kept_from: [(Resolution, i64); 2],
}

/// What folding some blocks saw.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    pub events: i64,
    /// Lines today's schemas refuse, or that are not a stored event at all.
    pub skipped: i64,
}

impl Counts {
    fn add(&mut self, o: Counts) {
        self.events += o.events;
        self.skipped += o.skipped;
    }
}

impl Refolder {
    /// For the metrics named (each must be declared in `settings`).
    pub fn new(settings: &Settings, metrics: &[String], from_s: Option<i64>, now_s: i64) -> Self {
        let mut only = settings.clone();
        only.metrics.retain(|m| metrics.contains(&m.name));
        let r: &RetentionSettings = &settings.retention;
        let secs = |d: std::time::Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
        Self {
            validator: Validator::new(settings),
            metrics: Metrics::new(&only),
            from_ms: from_s.map_or(i64::MIN, |s| s.saturating_mul(1000)),
            kept_from: [
                (Resolution::Second, now_s.saturating_sub(secs(r.second_buckets))),
                (Resolution::Minute, Resolution::Minute.bucket_of(now_s.saturating_sub(secs(r.minute_buckets)))),
            ],
        }
    }

    /// Folds every event of `blocks` into `delta`, in parallel over the machine's cores.
    pub fn fold_blocks(&self, blocks: &[(i64, RawBlock)], delta: &mut RollupDelta) -> anyhow::Result<Counts> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(blocks.len()).max(1);
        if threads == 1 {
            let mut c = Counts::default();
            for (id, b) in blocks {
                c.add(self.fold_block(*id, b, delta)?);
            }
            return Ok(c);
        }
        let per = blocks.len().div_ceil(threads);
        let results: Vec<anyhow::Result<(RollupDelta, Counts)>> = std::thread::scope(|s| {
            let handles: Vec<_> = blocks
                .chunks(per)
                .map(|part| {
                    s.spawn(move || {
                        let (mut d, mut c) = (RollupDelta::default(), Counts::default());
                        for (id, b) in part {
                            c.add(self.fold_block(*id, b, &mut d)?);
                        }
                        Ok((d, c))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a fold thread panicked"))))
                .collect()
        });
        let mut total = Counts::default();
        for r in results {
            let (d, c) = r?;
            delta.merge(d);
            total.add(c);
        }
        Ok(total)
    }

    /// Folds one block's events (lines `{"t":…,"src":…,…,"e":<event>}`).
    fn fold_block(&self, id: i64, block: &RawBlock, delta: &mut RollupDelta) -> anyhow::Result<Counts> {
        let data = raw_codec::decode(&block.data, raw_codec::MAX_BLOCK_BYTES)
            .map_err(|e| anyhow::anyhow!("raw block {id} is unreadable: {e}"))?;
        let mut c = Counts::default();
        for line in data.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let Some((t, raw)) = split_line(line) else {
                c.skipped += 1;
                continue;
            };
            if t < self.from_ms {
                continue;
            }
            match self.validator.validate(raw, t, t) {
                Ok(event) => {
                    self.metrics.fold(&event, delta);
                    c.events += 1;
                }
                Err(_) => c.skipped += 1,
            }
        }
        Ok(c)
    }

    /// A step's partial rollups, without the buckets retention would drop.
    pub fn rows(&self, delta: RollupDelta) -> Partial {
        let (rows, dims) = delta.into_rows();
        let mut out = Partial::default();
        let ids: Vec<u32> = rows.series().iter().map(|k| out.intern(k)).collect();
        out.buckets.reserve(rows.len());
        for r in rows.rows() {
            if self.kept_from.iter().any(|(res, from)| *res == r.res && r.start < *from) {
                continue;
            }
            out.buckets.entry((ids[r.series as usize], r.res, r.start)).or_default().merge(&r.agg);
        }
        for d in dims {
            out.add_dim(d);
        }
        out
    }
}

/// A stored line's event time and the event as it was received. The prefix holds JSON strings
/// only before `"e"`, in which a quote is escaped, so the first `,"e":` is the event's key.
fn split_line(line: &[u8]) -> Option<(i64, &[u8])> {
    let rest = line.strip_prefix(b"{\"t\":")?;
    let digits = rest.iter().position(|b| !(b.is_ascii_digit() || *b == b'-'))?;
    let t: i64 = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
    let at = line.windows(5).position(|w| w == b",\"e\":")?;
    let event = line.get(at + 5..line.len().checked_sub(1)?)?;
    (line.last() == Some(&b'}')).then_some((t, event))
}

/// Rebuilt buckets and dimension values, merged in memory; series are interned, so a bucket's
/// key is three integers.
#[derive(Debug, Default)]
pub struct Partial {
    index: FastMap<SeriesKey, u32>,
    series: Vec<SeriesKey>,
    buckets: FastMap<(u32, Resolution, i64), Agg>,
    dims: FastMap<(Arc<str>, String), (i64, Option<String>)>,
}

impl Partial {
    fn intern(&mut self, key: &SeriesKey) -> u32 {
        if let Some(&i) = self.index.get(key) {
            return i;
        }
        let i = self.series.len() as u32;
        self.series.push(key.clone());
        self.index.insert(key.clone(), i);
        i
    }

    fn add_dim(&mut self, d: DimRow) {
        let e = self.dims.entry((d.dim, d.value)).or_insert((d.first_seen, None));
        e.0 = e.0.min(d.first_seen);
        if d.label.is_some() {
            e.1 = d.label;
        }
    }

    pub fn merge(&mut self, other: Partial) {
        if self.buckets.is_empty() && self.dims.is_empty() {
            *self = other;
            return;
        }
        let ids: Vec<u32> = other.series.iter().map(|k| self.intern(k)).collect();
        self.buckets.reserve(other.buckets.len());
        for ((i, res, start), a) in other.buckets {
            self.buckets.entry((ids[i as usize], res, start)).or_default().merge(&a);
        }
        for ((dim, value), (first_seen, label)) in other.dims {
            self.add_dim(DimRow { dim, value, first_seen, label });
        }
    }

    /// A compact binary encoding (zstd-compressed): series, then rows, then dimension values.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(self.buckets.len() * 40 + self.series.len() * 32);
        put_u64(&mut b, self.series.len() as u64);
        for k in &self.series {
            put_str(&mut b, &k.metric);
            put_str(&mut b, &k.dim);
            put_str(&mut b, &k.value);
        }
        put_u64(&mut b, self.buckets.len() as u64);
        for ((i, res, start), a) in &self.buckets {
            put_u64(&mut b, u64::from(*i));
            put_u64(&mut b, res.seconds() as u64);
            put_u64(&mut b, *start as u64);
            put_u64(&mut b, a.count as u64);
            b.extend_from_slice(&a.sum.serialize());
            for m in [a.min, a.max] {
                match m {
                    Some(d) => {
                        b.push(1);
                        b.extend_from_slice(&d.serialize());
                    }
                    None => b.push(0),
                }
            }
        }
        put_u64(&mut b, self.dims.len() as u64);
        for ((dim, value), (first_seen, label)) in &self.dims {
            put_str(&mut b, dim);
            put_str(&mut b, value);
            put_u64(&mut b, *first_seen as u64);
            match label {
                Some(l) => {
                    b.push(1);
                    put_str(&mut b, l);
                }
                None => b.push(0),
            }
        }
        zstd::bulk::compress(&b, 1).expect("compressing to memory cannot fail")
    }

    pub fn decode(data: &[u8]) -> anyhow::Result<Self> {
        let raw = zstd::stream::decode_all(data)?;
        let mut r = Reader(&raw);
        let mut out = Partial::default();
        for _ in 0..r.u64()? {
            let (metric, dim, value) = (r.str()?, r.str()?, r.str()?);
            out.intern(&SeriesKey::new(metric, dim, value));
        }
        let n = r.u64()?;
        out.buckets.reserve(usize::try_from(n).unwrap_or(0).min(1 << 24));
        for _ in 0..n {
            let i = u32::try_from(r.u64()?)?;
            anyhow::ensure!((i as usize) < out.series.len(), "a chunk row names series {i}");
            let res = r.u64()? as i64;
            let res = Resolution::from_seconds(res).ok_or_else(|| anyhow::anyhow!("a chunk holds resolution {res}"))?;
            let start = r.u64()? as i64;
            let count = r.u64()? as i64;
            let sum = r.decimal()?;
            let (min, max) = (r.opt_decimal()?, r.opt_decimal()?);
            out.buckets.entry((i, res, start)).or_default().merge(&Agg { count, sum, min, max });
        }
        for _ in 0..r.u64()? {
            let (dim, value, first_seen) = (r.str()?.into(), r.str()?.to_string(), r.u64()? as i64);
            let label = if r.byte()? == 1 { Some(r.str()?.to_string()) } else { None };
            out.add_dim(DimRow { dim, value, first_seen, label });
        }
        Ok(out)
    }

    /// The rows a swap writes, sorted as `RollupRows` wants them.
    pub fn into_rebuilt(self, counts: Counts) -> Rebuilt {
        let mut order: Vec<u32> = (0..self.series.len() as u32).collect();
        order.sort_unstable_by(|a, b| self.series[*a as usize].cmp(&self.series[*b as usize]));
        let mut rank = vec![0u32; self.series.len()];
        for (r, i) in order.iter().enumerate() {
            rank[*i as usize] = r as u32;
        }
        let mut rows: Vec<RollupRow> = self
            .buckets
            .into_iter()
            .map(|((i, res, start), agg)| RollupRow { series: rank[i as usize], res, start, agg })
            .collect();
        rows.sort_unstable_by_key(|r| (r.series, r.res, r.start));
        let mut series = self.series;
        let mut sorted: Vec<SeriesKey> = Vec::with_capacity(series.len());
        let mut slots: Vec<Option<SeriesKey>> = series.drain(..).map(Some).collect();
        for i in order {
            sorted.push(slots[i as usize].take().expect("each series once"));
        }
        let mut dims: Vec<DimRow> = self
            .dims
            .into_iter()
            .map(|((dim, value), (first_seen, label))| DimRow { dim, value, first_seen, label })
            .collect();
        dims.sort_unstable_by(|a, b| (&a.dim, &a.value).cmp(&(&b.dim, &b.value)));
        Rebuilt { rows: RollupRows::from_parts(sorted, rows), dims, events: counts.events, skipped: counts.skipped }
    }
}

fn put_u64(b: &mut Vec<u8>, v: u64) {
    b.extend_from_slice(&v.to_le_bytes());
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    put_u64(b, s.len() as u64);
    b.extend_from_slice(s.as_bytes());
}

/// Reads what `Partial::encode` wrote; every read is bounds-checked (a chunk is only ever ours,
/// but a torn one must fail, not panic).
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> anyhow::Result<&'a [u8]> {
        anyhow::ensure!(self.0.len() >= n, "a chunk ends early");
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn byte(&mut self) -> anyhow::Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u64(&mut self) -> anyhow::Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into()?))
    }

    fn str(&mut self) -> anyhow::Result<&'a str> {
        let n = usize::try_from(self.u64()?)?;
        Ok(std::str::from_utf8(self.take(n)?)?)
    }

    fn decimal(&mut self) -> anyhow::Result<Decimal> {
        Ok(Decimal::deserialize(self.take(16)?.try_into()?))
    }

    fn opt_decimal(&mut self) -> anyhow::Result<Option<Decimal>> {
        Ok(if self.byte()? == 1 { Some(self.decimal()?) } else { None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_line_splits_into_its_time_and_event() {
        let line = br#"{"t":1700000000123,"src":"http","k":"a\",\"e\":x","p":0,"o":5,"e":{"event_name":"x","v":1}}"#;
        let (t, e) = split_line(line).expect("a stored line");
        assert_eq!(t, 1_700_000_000_123);
        assert_eq!(e, br#"{"event_name":"x","v":1}"#);
        assert_eq!(split_line(br#"{"t":-5,"src":"http","e":{}}"#), Some((-5, &b"{}"[..])));
        assert_eq!(split_line(b"not a line"), None);
    }

    #[test]
    fn a_chunk_round_trips() {
        let mut p = Partial::default();
        let i = p.intern(&SeriesKey::new("m", "d", "1"));
        p.buckets.insert((i, Resolution::Hour, 3600), Agg::of(Decimal::new(1999, 2)));
        p.buckets.insert((i, Resolution::All, 0), Agg { count: 3, sum: Decimal::new(-5, 1), min: None, max: None });
        p.add_dim(DimRow { dim: "d".into(), value: "1".into(), first_seen: 10, label: Some("one".into()) });
        let back = Partial::decode(&p.encode()).expect("decodes");
        assert_eq!(back.series, p.series);
        assert_eq!(back.buckets, p.buckets);
        let torn = p.encode();
        assert!(Partial::decode(&torn[..torn.len() / 2]).is_err(), "a torn chunk fails");
        assert_eq!(back.dims.get(&(Arc::from("d"), "1".to_string())), Some(&(10, Some("one".to_string()))));
    }
}
