//! Folding stored raw events again: a raw block's lines become events (checked against today's
//! schemas) and fold into the rebuilt metrics' buckets; the partial rollups of a step are encoded
//! as a chunk, and chunks merge into the rows a swap writes.

use std::sync::Arc;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::config::{RetentionSettings, Settings};
use crate::event::Validator;
use crate::rollup::{Agg, BucketKey, DimRow, FastMap, Metrics, Resolution, RollupDelta, SeriesKey};
use crate::storage::RawBlock;
use crate::storage::rebuild::Rebuilt;

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
        let data = zstd::bulk::decompress(&block.zstd, MAX_BLOCK_BYTES)
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
        for (key, r) in rows.iter() {
            if self.kept_from.iter().any(|(res, from)| *res == r.res && r.start < *from) {
                continue;
            }
            out.buckets.insert(BucketKey { series: key.clone(), res: r.res, start: r.start }, r.agg.clone());
        }
        for d in dims {
            out.add_dim(d);
        }
        out
    }
}

/// The most bytes one raw block may decompress to (blocks hold one commit's events of a name).
const MAX_BLOCK_BYTES: usize = 1 << 30;

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

/// Rebuilt buckets and dimension values, merged in memory.
#[derive(Debug, Default)]
pub struct Partial {
    buckets: FastMap<BucketKey, Agg>,
    dims: FastMap<(Arc<str>, String), (i64, Option<String>)>,
}

/// A chunk's row: metric, dimension, value, resolution (seconds), start, count, sum, min, max.
type ChunkRow = (String, String, String, i64, i64, i64, Decimal, Option<Decimal>, Option<Decimal>);

/// A chunk's encoding: its rows and dimension values.
#[derive(Serialize, Deserialize)]
struct Chunk {
    rows: Vec<ChunkRow>,
    dims: Vec<(String, String, i64, Option<String>)>,
}

impl Partial {
    fn add_dim(&mut self, d: DimRow) {
        let e = self.dims.entry((d.dim, d.value)).or_insert((d.first_seen, None));
        e.0 = e.0.min(d.first_seen);
        if d.label.is_some() {
            e.1 = d.label;
        }
    }

    pub fn merge(&mut self, other: Partial) {
        for (k, a) in other.buckets {
            self.buckets.entry(k).or_default().merge(&a);
        }
        for ((dim, value), (first_seen, label)) in other.dims {
            self.add_dim(DimRow { dim, value, first_seen, label });
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let chunk = Chunk {
            rows: self
                .buckets
                .iter()
                .map(|(k, a)| {
                    let s = &k.series;
                    (
                        s.metric.to_string(),
                        s.dim.to_string(),
                        s.value.clone(),
                        k.res.seconds(),
                        k.start,
                        a.count,
                        a.sum,
                        a.min,
                        a.max,
                    )
                })
                .collect(),
            dims: self.dims.iter().map(|((d, v), (f, l))| (d.to_string(), v.clone(), *f, l.clone())).collect(),
        };
        let json = serde_json::to_vec(&chunk).expect("a chunk serialises");
        zstd::bulk::compress(&json, 3).expect("compressing to memory cannot fail")
    }

    pub fn decode(data: &[u8]) -> anyhow::Result<Self> {
        let json = zstd::stream::decode_all(data)?;
        let chunk: Chunk = serde_json::from_slice(&json)?;
        let mut out = Partial::default();
        for (metric, dim, value, res, start, count, sum, min, max) in chunk.rows {
            let res = Resolution::from_seconds(res).ok_or_else(|| anyhow::anyhow!("a chunk holds resolution {res}"))?;
            let key = BucketKey { series: SeriesKey::new(&metric, &dim, &value), res, start };
            out.buckets.entry(key).or_default().merge(&Agg { count, sum, min, max });
        }
        for (dim, value, first_seen, label) in chunk.dims {
            out.add_dim(DimRow { dim: dim.into(), value, first_seen, label });
        }
        Ok(out)
    }

    /// The rows a swap writes, in key order.
    pub fn into_rebuilt(self, counts: Counts) -> Rebuilt {
        let mut rows: Vec<(SeriesKey, Resolution, i64, Agg)> =
            self.buckets.into_iter().map(|(k, a)| (k.series, k.res, k.start, a)).collect();
        rows.sort_unstable_by(|a, b| (&a.0, a.1, a.2).cmp(&(&b.0, b.1, b.2)));
        let mut dims: Vec<DimRow> = self
            .dims
            .into_iter()
            .map(|((dim, value), (first_seen, label))| DimRow { dim, value, first_seen, label })
            .collect();
        dims.sort_unstable_by(|a, b| (&a.dim, &a.value).cmp(&(&b.dim, &b.value)));
        Rebuilt { rows, dims, events: counts.events, skipped: counts.skipped }
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
        let key = BucketKey { series: SeriesKey::new("m", "d", "1"), res: Resolution::Hour, start: 3600 };
        p.buckets.insert(key.clone(), Agg::of(Decimal::new(1999, 2)));
        p.add_dim(DimRow { dim: "d".into(), value: "1".into(), first_seen: 10, label: Some("one".into()) });
        let back = Partial::decode(&p.encode()).expect("decodes");
        assert_eq!(back.buckets.get(&key), Some(&Agg::of(Decimal::new(1999, 2))));
        assert_eq!(back.dims.get(&(Arc::from("d"), "1".to_string())), Some(&(10, Some("one".to_string()))));
    }
}
