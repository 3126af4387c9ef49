//! Records copied out of librdkafka, and their validation and folding into a batch (off the
//! consumer thread).

use std::sync::Arc;

use super::super::{Origin, Pending};
use crate::clock::now_ms;
use crate::event::{Rejection, Validator};
use crate::rollup::Metrics;

/// A record copied out of librdkafka's buffer, to be validated off the consumer thread.
pub(super) struct RawRecord {
    pub(super) partition: i32,
    pub(super) offset: i64,
    /// The record's timestamp (the event time of events without a `timestamp`).
    pub(super) time_ms: Option<i64>,
    pub(super) key: Option<Box<[u8]>>,
    /// The value's length (the value itself is cut to `ingest::OVERSIZED_KEEP_BYTES` when oversized).
    pub(super) size: usize,
    pub(super) payload: Box<[u8]>,
}

/// Validates and folds fetched records into a batch for the writer (off the consumer thread).
pub(super) struct Folder {
    pub(super) validator: Arc<Validator>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) source: String,
    pub(super) topic: String,
    pub(super) max_record_bytes: usize,
}

impl Folder {
    pub(super) fn fold(&self, records: Vec<RawRecord>) -> Pending {
        let received = now_ms();
        crate::telemetry::metrics::kafka_records(records.len() as u64);
        let mut pending = Pending::default();
        for r in &records {
            let origin = Origin {
                source: &self.source,
                topic: Some(&self.topic),
                partition: Some(r.partition),
                offset: Some(r.offset),
                key: r.key.as_deref(),
                source_ms: Some(r.time_ms.unwrap_or(received)),
            };
            if r.size > self.max_record_bytes {
                let reason = Rejection::TooLarge { size: r.size, limit: self.max_record_bytes };
                pending.reject(&r.payload, &reason, &origin, received);
                continue;
            }
            match self.validator.validate(&r.payload, received, r.time_ms.unwrap_or(received)) {
                Ok(event) => pending.accept(&self.metrics, event, &origin),
                Err(reason) => pending.reject(&r.payload, &reason, &origin, received),
            }
        }
        pending.seal();
        pending
    }
}
