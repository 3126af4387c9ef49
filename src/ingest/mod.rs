//! Ingest: turning what a source received into a [`Pending`] batch, and committing batches.
//!
//! Sources (HTTP in `http`, Kafka in `kafka`) validate and fold events where they arrive, in
//! parallel; the single [`writer::Writer`] merges whatever is queued into one transaction.

use std::fmt::Write as _;

use crate::event::{Event, Rejection};
use crate::rollup::{Metrics, RollupDelta};
use crate::storage::{NewDeadLetter, OffsetAdvance};

pub mod http;
pub mod kafka;
pub mod writer;

/// Where a record came from, kept with its raw event and its dead letter.
#[derive(Debug, Clone, Default)]
pub struct Origin<'a> {
    pub source: &'a str,
    pub topic: Option<&'a str>,
    pub partition: Option<i32>,
    pub offset: Option<i64>,
    pub key: Option<&'a [u8]>,
}

/// One raw event line for the raw store: `{"t":…,"src":…,["k","p","o",]"e":<raw>}`.
#[derive(Debug)]
pub struct RawLine {
    pub name: String,
    pub time_ms: i64,
    pub line: String,
}

/// What a source hands the writer: folded rollups, raw lines, dead letters and offset advances.
#[derive(Debug, Default)]
pub struct Pending {
    pub delta: RollupDelta,
    pub raw: Vec<RawLine>,
    pub dead: Vec<NewDeadLetter>,
    pub offsets: Vec<OffsetAdvance>,
}

impl Pending {
    /// Folds an accepted event and keeps its raw bytes with its origin.
    pub fn accept(&mut self, metrics: &Metrics, event: Event, origin: &Origin<'_>) {
        metrics.fold(&event, &mut self.delta);
        let raw = std::str::from_utf8(&event.raw).expect("validated events are UTF-8");
        let mut line = String::with_capacity(raw.len() + 64);
        // Infallible: writing to a String.
        let _ = write!(line, "{{\"t\":{},\"src\":{}", event.time_ms, json_str(origin.source));
        if let Some(k) = origin.key {
            let _ = write!(line, ",\"k\":{}", json_str(&String::from_utf8_lossy(k)));
        }
        if let (Some(p), Some(o)) = (origin.partition, origin.offset) {
            let _ = write!(line, ",\"p\":{p},\"o\":{o}");
        }
        let _ = write!(line, ",\"e\":{raw}}}");
        self.raw.push(RawLine { name: event.name, time_ms: event.time_ms, line });
    }

    /// Keeps a rejected record as a dead letter.
    pub fn reject(&mut self, raw: &[u8], reason: &Rejection, origin: &Origin<'_>, received_ms: i64) {
        self.dead.push(NewDeadLetter {
            received_ms,
            source: origin.source.to_string(),
            reason: reason.to_string(),
            raw: raw.to_vec(),
            topic: origin.topic.map(String::from),
            partition: origin.partition,
            offset: origin.offset,
        });
    }

    pub fn events(&self) -> usize {
        self.raw.len() + self.dead.len()
    }

    pub fn is_empty(&self) -> bool {
        self.raw.is_empty() && self.dead.is_empty() && self.offsets.is_empty()
    }
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).expect("a str always serialises")
}

/// Milliseconds since the epoch, from the system clock.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
