//! Ingest: turning what a source received into a [`Pending`] batch, and committing batches.
//!
//! Sources (the HTTP handler in `api::events`, Kafka in [`kafka`]) validate and fold events where
//! they arrive, in parallel, into a [`Pending`] batch; the single [`writer::Writer`] merges
//! whatever is queued into one transaction.

use std::io::Write as _;

use crate::event::{Event, Rejection, Validator};
use crate::rollup::{Metrics, RollupDelta};
use crate::storage::{IdempotencyRecord, NewDeadLetter, OffsetAdvance, RawBlock, WriteBatch, raw_codec};
use crate::telemetry::metrics as telemetry;

pub mod kafka;
pub mod writer;

/// How much of an oversized record its dead letter keeps.
pub const OVERSIZED_KEEP_BYTES: usize = 64 * 1024;

/// Where a record came from, kept with its raw event and its dead letter.
#[derive(Debug, Clone, Default)]
pub struct Origin<'a> {
    pub source: &'a str,
    pub topic: Option<&'a str>,
    pub partition: Option<i32>,
    pub offset: Option<i64>,
    pub key: Option<&'a [u8]>,
    /// The source's time for the record (receipt for HTTP, the record timestamp for Kafka):
    /// where freshness (source time → commit) is measured from.
    pub source_ms: Option<i64>,
}

/// Raw events of one name for the raw store, as NDJSON lines
/// `{"t":…,"src":…,["k":…,"p":…,"o":…,]"e":<raw>}`.
#[derive(Debug, Clone)]
pub struct RawLines {
    pub name: String,
    pub ndjson: Vec<u8>,
    pub min_time_ms: i64,
    pub max_time_ms: i64,
    pub count: i64,
}

/// What a source hands the writer: folded rollups, raw lines, dead letters and offset advances.
#[derive(Debug, Default)]
pub struct Pending {
    pub delta: RollupDelta,
    /// Raw events being added, one entry per event name.
    pub raw: Vec<RawLines>,
    /// Where each event name's entry in `raw` is: a body may hold many names, and looking each
    /// one up in a list made ingest quadratic in them.
    raw_index: std::collections::HashMap<String, usize>,
    /// Raw events compressed by [`Pending::seal`].
    pub blocks: Vec<RawBlock>,
    pub dead: Vec<NewDeadLetter>,
    pub offsets: Vec<OffsetAdvance>,
    /// The request's idempotency key and answer (HTTP with an `Idempotency-Key` header).
    pub idempotency: Option<IdempotencyRecord>,
    /// What the metrics report once the batch is committed.
    pub tally: Tally,
    /// Dead letters whose events this batch holds (a replay): removed when it commits.
    pub replayed: Vec<i64>,
}

/// One row per dimension value, with the earliest time: several metrics share a dimension value.
pub fn dedup_dims(dims: &mut Vec<crate::rollup::DimRow>) {
    dims.sort_unstable_by(|a, b| (&a.dim, &a.value, a.first_seen).cmp(&(&b.dim, &b.value, b.first_seen)));
    dims.dedup_by(|b, a| {
        let same = a.dim == b.dim && a.value == b.value;
        if same && a.label.is_none() {
            a.label = b.label.take();
        }
        same
    });
}

/// A batch's figures for the metrics, reported by the writer's handle once it is committed.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// `telemetry::metrics::SOURCE_HTTP` or `SOURCE_KAFKA`.
    pub source: &'static str,
    /// Runs of (source time in ms, accepted events): one run for an HTTP request; a Kafka batch
    /// has one per distinct record timestamp in a row.
    pub source_times: Vec<(i64, u64)>,
    /// Rejected events: (reason class, event name when it had one).
    pub rejected: Vec<(&'static str, Option<String>)>,
}

impl Tally {
    fn source_of(origin: &Origin<'_>) -> &'static str {
        if origin.topic.is_some() { telemetry::SOURCE_KAFKA } else { telemetry::SOURCE_HTTP }
    }

    fn accepted(&mut self, origin: &Origin<'_>) {
        self.source = Self::source_of(origin);
        let Some(t) = origin.source_ms else { return };
        match self.source_times.last_mut() {
            Some((last, n)) if *last == t => *n += 1,
            _ => self.source_times.push((t, 1)),
        }
    }

    /// Reports the committed batch's figures (`now_ms`: when it was committed).
    pub fn committed(&self, accepted_by_name: &[(String, i64)], now_ms: i64) {
        let source = if self.source.is_empty() { telemetry::SOURCE_HTTP } else { self.source };
        for (name, count) in accepted_by_name {
            telemetry::events_accepted(source, name, u64::try_from(*count).unwrap_or(0));
        }
        for (reason, name) in &self.rejected {
            telemetry::events_rejected(source, name.as_deref(), reason, 1);
        }
        for &(t, n) in &self.source_times {
            let age = std::time::Duration::from_millis(u64::try_from(now_ms - t).unwrap_or(0));
            telemetry::freshness(source, age, n);
        }
    }
}

impl Pending {
    /// Folds an accepted event and keeps its raw bytes with its origin.
    pub fn accept(&mut self, metrics: &Metrics, event: Event<'_>, origin: &Origin<'_>) {
        metrics.fold(&event, &mut self.delta);
        self.tally.accepted(origin);
        let at = match self.raw_index.get(&*event.name) {
            Some(&i) => i,
            None => {
                self.raw.push(RawLines {
                    name: event.name.to_string(),
                    ndjson: Vec::new(),
                    min_time_ms: i64::MAX,
                    max_time_ms: i64::MIN,
                    count: 0,
                });
                self.raw_index.insert(event.name.to_string(), self.raw.len() - 1);
                self.raw.len() - 1
            }
        };
        let r = &mut self.raw[at];
        r.min_time_ms = r.min_time_ms.min(event.time_ms);
        r.max_time_ms = r.max_time_ms.max(event.time_ms);
        r.count += 1;
        // Writing to a Vec cannot fail.
        let out = &mut r.ndjson;
        let _ = write!(out, "{{\"t\":{},\"src\":", event.time_ms);
        let _ = serde_json::to_writer(&mut *out, origin.source);
        if let Some(k) = origin.key {
            out.extend_from_slice(b",\"k\":");
            let _ = serde_json::to_writer(&mut *out, &*String::from_utf8_lossy(k));
        }
        if let (Some(p), Some(o)) = (origin.partition, origin.offset) {
            let _ = write!(out, ",\"p\":{p},\"o\":{o}");
        }
        out.extend_from_slice(b",\"e\":");
        let at = out.len();
        out.extend_from_slice(event.raw);
        // One event per line: a pretty-printed event's line breaks can only be whitespace between
        // tokens (JSON strings escape theirs), so making them spaces keeps the event's meaning.
        for b in &mut out[at..] {
            if *b == b'\n' || *b == b'\r' {
                *b = b' ';
            }
        }
        out.extend_from_slice(b"}\n");
    }

    /// Keeps a rejected record as a dead letter (an oversized one only in part: it could never
    /// be replayed, and keeping it whole would let one request store its whole body again).
    pub fn reject(&mut self, raw: &[u8], reason: &Rejection, origin: &Origin<'_>, received_ms: i64) {
        self.tally.source = Tally::source_of(origin);
        self.tally.rejected.push((reason.class(), reason.event_name().map(String::from)));
        let kept = if matches!(reason, Rejection::TooLarge { .. }) {
            &raw[..raw.len().min(OVERSIZED_KEEP_BYTES)]
        } else {
            raw
        };
        self.dead.push(NewDeadLetter {
            received_ms,
            source: origin.source.to_string(),
            reason: reason.to_string(),
            raw: kept.to_vec(),
            topic: origin.topic.map(String::from),
            partition: origin.partition,
            offset: origin.offset,
        });
    }

    /// Compresses the raw events into blocks. Sources call this where they parsed the batch, in
    /// parallel, so the single writer only has to collect blocks.
    pub fn seal(&mut self) {
        self.raw_index.clear();
        for r in self.raw.drain(..) {
            let mut data = raw_codec::encode(&r.ndjson);
            // Allocated at the input's worst-case bound, ~5x what it holds; the block waits in
            // memory for the writer (a heap profile of a backlog: 340 MB of blocks' spare room).
            data.shrink_to_fit();
            self.blocks.push(RawBlock {
                name: r.name,
                min_time_ms: r.min_time_ms,
                max_time_ms: r.max_time_ms,
                count: r.count,
                data,
            });
        }
    }

    /// The batch to commit straight to a store (without the writer: no read cache to keep).
    pub fn into_batch(mut self) -> WriteBatch {
        self.seal();
        let (rollups, mut dims) = std::mem::take(&mut self.delta).into_rows();
        dedup_dims(&mut dims);
        WriteBatch {
            rollups,
            dims,
            raw_blocks: self.blocks,
            dead_letters: self.dead,
            offsets: self.offsets,
            idempotency: self.idempotency.into_iter().collect(),
            replayed: self.replayed,
        }
    }

    /// Accepted events by name.
    pub fn accepted_by_name(&self) -> Vec<(String, i64)> {
        let raw = self.raw.iter().map(|r| (r.name.clone(), r.count));
        raw.chain(self.blocks.iter().map(|b| (b.name.clone(), b.count))).collect()
    }

    /// Events accepted.
    pub fn accepted(&self) -> usize {
        let count = |c: i64| c as usize;
        self.raw.iter().map(|r| count(r.count)).chain(self.blocks.iter().map(|b| count(b.count))).sum()
    }

    /// Records taken: accepted events and dead letters.
    /// About the heap this batch holds, in bytes (see `RollupDelta::heap_bytes`).
    pub fn heap_bytes(&self) -> usize {
        self.delta.heap_bytes()
            + self.raw.iter().map(|r| r.ndjson.capacity() + r.name.len()).sum::<usize>()
            + self.blocks.iter().map(|b| b.data.capacity() + b.name.len()).sum::<usize>()
            + self.dead.iter().map(|d| d.raw.capacity() + d.reason.len() + d.source.len()).sum::<usize>()
    }

    pub fn events(&self) -> usize {
        self.accepted() + self.dead.len()
    }

    pub fn is_empty(&self) -> bool {
        self.raw.is_empty() && self.blocks.is_empty() && self.dead.is_empty() && self.offsets.is_empty()
    }
}

/// Validates and folds the raw events of one request (or record batch) received at
/// `received_ms`, sealed for the writer; and the rejected ones by index, with their reasons
/// (they are kept as dead letters too).
pub fn take_events(
    validator: &Validator,
    metrics: &Metrics,
    items: &[&[u8]],
    origin: &Origin<'_>,
    received_ms: i64,
) -> (Pending, Vec<(usize, Rejection)>) {
    let mut pending = Pending::default();
    let mut rejected = Vec::new();
    for (index, raw) in items.iter().enumerate() {
        match validator.validate(raw, received_ms, received_ms) {
            Ok(event) => pending.accept(metrics, event, origin),
            Err(reason) => {
                pending.reject(raw, &reason, origin, received_ms);
                rejected.push((index, reason));
            }
        }
    }
    pending.seal();
    (pending, rejected)
}
