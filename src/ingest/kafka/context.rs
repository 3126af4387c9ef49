//! The consumer's state and the librdkafka context that owns it: partition positions, the batch
//! being filled, batches in flight, and the rebalance callback (see the parent module).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::ThreadedProducer;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;

use super::client::BROKER_TIMEOUT;
use super::fold::{Folder, RawRecord};
use super::lag::partition_lag;
use super::producer::{LogDelivery, produce_dead_letter};
use crate::event::Validator;
use crate::health::Health;
use crate::ingest::OVERSIZED_KEEP_BYTES;
use crate::ingest::writer::{WriteError, Writer};
use crate::rollup::Metrics;
use crate::storage::{NewDeadLetter, OffsetAdvance, Store};

/// Most records in one batch handed to the writer.
pub(super) const BATCH_RECORDS: usize = 20_000;
/// Longest a record waits in an unsent batch while the writer is busy with earlier ones (when
/// the writer has room, a batch goes as soon as the fetched records are used up).
pub(super) const BATCH_LINGER: Duration = Duration::from_millis(100);
/// How often the consumer checks its in-flight batches while it waits with a full pipeline.
pub(super) const IN_FLIGHT_POLL: Duration = Duration::from_millis(2);
/// Batches submitted and not yet committed; beyond this the consumer waits for the oldest.
pub(super) const MAX_IN_FLIGHT: usize = 4;
/// How far before its stored offset a resumed fetch starts (see `Ctx::take`): more records than
/// one producer batch holds (librdkafka's `batch.num.messages` defaults to 10,000).
const REWIND_FIRST: i64 = 10_000;
/// Broker health probes: often while unhealthy, rarely while all is well.
pub(super) const PROBE_UNHEALTHY: Duration = Duration::from_secs(1);
pub(super) const PROBE_HEALTHY: Duration = Duration::from_secs(5);
/// How often the consumer logs its lag.
pub(super) const LAG_LOG_EVERY: Duration = Duration::from_secs(15);
/// Backoff after a failed store write, doubling up to the maximum.
pub(super) const RETRY_MIN: Duration = Duration::from_millis(100);
pub(super) const RETRY_MAX: Duration = Duration::from_secs(5);

/// What the consumer needs from the application.
#[derive(Clone)]
pub struct ConsumerParts {
    pub store: Arc<dyn Store>,
    pub writer: Writer,
    pub validator: Arc<Validator>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
}

/// One partition's place: `stored` is the next offset the store holds (or will, once the
/// batches in flight commit); `next` is the next offset to take (`None` until the first record
/// of a partition with nothing stored).
#[derive(Debug, Clone, Copy, Default)]
struct Position {
    stored: Option<i64>,
    next: Option<i64>,
    /// Fetching (re)started at `next`: the first record must be `next` itself, or the broker
    /// skipped something (see [`Ctx::take`]).
    resuming: bool,
    /// How far back the last rewind went (doubles on each attempt).
    rewound: i64,
}

impl Position {
    /// Resuming at `stored`: the fetch starts [`REWIND_FIRST`] records earlier (see [`Ctx::take`]).
    fn resume_at(stored: Option<i64>) -> Self {
        let mut p = Self { stored, next: stored, resuming: false, rewound: 0 };
        p.restart();
        p
    }

    /// Marks the partition as resuming at `next` (its fetch restarts).
    fn restart(&mut self) {
        if let Some(next) = self.next {
            self.resuming = true;
            self.rewound = REWIND_FIRST.min(next);
        }
    }

    /// Where the fetch starts: a little before `next`, or the beginning when nothing is stored.
    fn fetch_from(&self) -> Offset {
        self.next.map_or(Offset::Beginning, |n| Offset::Offset(n - self.rewound))
    }
}

/// A batch submitted to the writer, awaiting its commit. Its task validates and folds the
/// records (on the blocking pool, so the consumer thread only fetches), waits for the batch
/// before it to be committed (offsets must advance in order), then submits; it answers with the
/// dead letters to copy to the dead-letter topic.
pub(super) struct InFlight {
    commit: tokio::task::JoinHandle<Result<Vec<NewDeadLetter>, WriteError>>,
    /// Offsets to commit to Kafka after the store commit (for lag tools only).
    offsets: Vec<(i32, i64)>,
}

#[derive(Default)]
pub(super) struct Progress {
    positions: BTreeMap<i32, Position>,
    pub(super) batch: Vec<RawRecord>,
    /// Partitions with records in `batch`.
    touched: Vec<i32>,
    pub(super) started: Option<Instant>,
    pub(super) in_flight: VecDeque<InFlight>,
    /// Completes when the last submitted batch is committed (`true`) or not.
    last_committed: Option<tokio::sync::oneshot::Receiver<bool>>,
}

pub(super) struct Ctx {
    pub(super) rt: tokio::runtime::Handle,
    pub(super) source: String,
    pub(super) topic: String,
    pub(super) max_record_bytes: usize,
    pub(super) parts: ConsumerParts,
    pub(super) dead_letter_producer: Option<(String, ThreadedProducer<LogDelivery>)>,
    /// Touched only by the consumer thread (the rebalance callback runs inside its `poll`); a
    /// mutex because librdkafka requires the context to be `Sync`.
    pub(super) state: Mutex<Progress>,
    /// The last refusal of our credentials or of the broker's certificate, until a metadata
    /// request succeeds: a failed probe then says "authentication failed" (or "TLS … failed"),
    /// not a vague "broker unreachable".
    pub(super) auth_failure: Mutex<Option<String>>,
}

impl ClientContext for Ctx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                tracing::error!(facility = fac, "librdkafka: {message}")
            }
            RDKafkaLogLevel::Warning => tracing::warn!(facility = fac, "librdkafka: {message}"),
            _ => tracing::debug!(facility = fac, "librdkafka: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed) => {
                // librdkafka's reason names the mechanism and the broker, never the password.
                let detail = format!(
                    "authentication failed: {reason} (check sasl.mechanisms, sasl.username and sasl.password \
                     in [kafka.properties] or the JETSTREAM_KAFKA_* variables)"
                );
                tracing::error!("kafka: {detail}");
                self.parts.health.set_kafka(false, detail.clone());
                *self.auth_failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(detail);
                return;
            }
            Some(RDKafkaErrorCode::SSL) => {
                let detail = format!(
                    "TLS to the broker failed: {reason} (check ssl.ca.location and security.protocol in \
                     [kafka.properties] or the JETSTREAM_KAFKA_* variables)"
                );
                tracing::error!("kafka: {detail}");
                self.parts.health.set_kafka(false, detail.clone());
                *self.auth_failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(detail);
                return;
            }
            Some(RDKafkaErrorCode::AllBrokersDown) => {
                let auth = self.auth_failure.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let detail = auth.unwrap_or_else(|| format!("all brokers are down: {reason}"));
                self.parts.health.set_kafka(false, detail);
            }
            _ => {}
        }
        tracing::warn!(%error, "kafka: {reason}");
    }
}

impl ConsumerContext for Ctx {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        // Whatever happens, batches in flight finish first and the unsent one is dropped: the
        // partitions' next owner (perhaps us) starts from the stored offsets.
        let _ = self.drain(consumer);
        let mut state = self.lock();
        state.discard_batch();
        state.positions.clear();
        drop(state);
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                crate::telemetry::metrics::kafka_rebalance("assign");
                let partitions: Vec<i32> = tpl.elements_for_topic(&self.topic).iter().map(|e| e.partition()).collect();
                let positions = self.stored_positions(&partitions);
                for (&p, pos) in &positions {
                    if let Err(e) = tpl.set_partition_offset(&self.topic, p, pos.fetch_from()) {
                        tracing::error!(error = %e, partition = p, "cannot set the start offset");
                    }
                }
                if let Err(e) = consumer.assign(tpl) {
                    tracing::error!(error = %e, "kafka assign failed");
                }
                tracing::info!(topic = %self.topic, ?positions, "partitions assigned; resuming from stored offsets");
                self.lock().positions = positions;
                // An assignment came from the broker: it is reachable.
                let total = consumer
                    .client()
                    .fetch_metadata(Some(&self.topic), BROKER_TIMEOUT)
                    .ok()
                    .and_then(|md| md.topics().iter().find(|t| t.name() == self.topic).map(|t| t.partitions().len()))
                    .unwrap_or(0);
                self.report_healthy(total);
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                crate::telemetry::metrics::kafka_rebalance("revoke");
                tracing::info!(topic = %self.topic, "partitions revoked");
                if let Err(e) = consumer.unassign() {
                    tracing::warn!(error = %e, "kafka unassign failed");
                }
            }
            other => {
                tracing::error!(error = ?other, "kafka rebalance error; dropping the assignment");
                let _ = consumer.unassign();
            }
        }
    }
}

impl Progress {
    /// Drops the unsent batch; called once nothing is in flight any more.
    fn discard_batch(&mut self) {
        self.batch.clear();
        self.touched.clear();
        self.started = None;
        self.last_committed = None;
    }
}

impl Ctx {
    pub(super) fn lock(&self) -> MutexGuard<'_, Progress> {
        // A panic while holding it would already have ended the consumer thread.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The stored next offset of each of `partitions`, retrying while the store fails (a
    /// partition must never start anywhere but at its stored offset).
    fn stored_positions(&self, partitions: &[i32]) -> BTreeMap<i32, Position> {
        let mut backoff = RETRY_MIN;
        let stored = loop {
            match self.rt.block_on(self.parts.store.stored_offsets(&self.source)) {
                Ok(s) => break s.into_iter().collect::<BTreeMap<i32, i64>>(),
                Err(e) => {
                    tracing::error!(error = %e, "cannot read stored offsets; retrying");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(RETRY_MAX);
                }
            }
        };
        partitions.iter().map(|&p| (p, Position::resume_at(stored.get(&p).copied()))).collect()
    }

    /// Validates a record and adds it to the batch (accepted, or a dead letter).
    ///
    /// Returns `Some(offset)` when the partition must be rewound there instead. Kafka answers a
    /// fetch with the batch *holding* the offset, but some brokers (tansu 0.6) answer with the
    /// first batch that *starts* at or after it, silently skipping the rest of the batch the
    /// offset is in (and answering nothing at all when that batch is the last one). So a
    /// resumed fetch starts [`REWIND_FIRST`] records before its offset (more than a producer
    /// batch holds), skips what precedes the offset, and if even so the first record is past
    /// the offset, rewinds twice as far, down to offset 0. A real gap (compaction, retention)
    /// is accepted once the rewind reaches offset 0.
    pub(super) fn take(&self, state: &mut Progress, m: &BorrowedMessage<'_>) -> Option<i64> {
        let partition = m.partition();
        let offset = m.offset();
        let pos = state.positions.get_mut(&partition)?; // None: not (or no longer) ours
        if let Some(next) = pos.next {
            if offset < next {
                return None; // already taken (prefetched before a resync, or rewound)
            }
            if pos.resuming {
                if offset > next && pos.rewound < next {
                    pos.rewound = (pos.rewound * 2).max(REWIND_FIRST).min(next);
                    return Some(next - pos.rewound);
                }
                pos.resuming = false;
                pos.rewound = 0;
            }
        }
        pos.next = Some(offset + 1);
        if !state.touched.contains(&partition) {
            state.touched.push(partition);
        }
        state.started.get_or_insert_with(Instant::now);
        let payload = m.payload().unwrap_or_default();
        let kept = if payload.len() > self.max_record_bytes { OVERSIZED_KEEP_BYTES } else { payload.len() };
        state.batch.push(RawRecord {
            partition,
            offset,
            time_ms: m.timestamp().to_millis().filter(|&t| t >= 0),
            key: m.key().map(Box::from),
            size: payload.len(),
            payload: payload[..kept.min(payload.len())].into(),
        });
        None
    }

    /// Restarts `partition`'s fetch at `offset` (see [`Ctx::take`]).
    pub(super) fn rewind(&self, consumer: &BaseConsumer<Self>, partition: i32, offset: i64) {
        tracing::info!(topic = %self.topic, partition, offset, "the fetch resumed past the stored offset; rewinding");
        if let Err(e) = consumer.seek(&self.topic, partition, Offset::Offset(offset), BROKER_TIMEOUT) {
            // Seeking needs an active fetch; re-assigning works in every state. Every partition
            // restarts, so each checks its resume point again.
            tracing::debug!(error = %e, "seek failed; re-assigning instead");
            let mut tpl = TopicPartitionList::new();
            let mut state = self.lock();
            for (&p, pos) in state.positions.iter_mut() {
                let at = if p == partition {
                    Offset::Offset(offset)
                } else {
                    pos.restart();
                    pos.fetch_from()
                };
                let _ = tpl.add_partition_offset(&self.topic, p, at);
            }
            drop(state);
            if let Err(e) = consumer.assign(&tpl) {
                tracing::error!(error = %e, "kafka re-assign failed");
            }
        }
    }

    /// Hands the batch to the writer (after waiting for the oldest in-flight one if needed).
    pub(super) fn submit(&self, consumer: &BaseConsumer<Self>) -> Result<(), WriteError> {
        while self.lock().in_flight.len() >= MAX_IN_FLIGHT {
            let oldest = self.lock().in_flight.pop_front();
            if let Some(f) = oldest {
                // A failed predecessor dooms this batch too (its offsets start where that one ended).
                self.settle(consumer, f)?;
            }
        }
        let mut state = self.lock();
        if state.batch.is_empty() {
            return Ok(());
        }
        let records = std::mem::take(&mut state.batch);
        let touched = std::mem::take(&mut state.touched);
        let mut advances = Vec::with_capacity(touched.len());
        let mut offsets = Vec::with_capacity(touched.len());
        for p in touched {
            let pos = state.positions.get_mut(&p).expect("a touched partition has a position");
            let next = pos.next.expect("a touched partition has a next offset");
            advances.push(OffsetAdvance { source: self.source.clone(), partition: p, expected: pos.stored, next });
            pos.stored = Some(next);
            offsets.push((p, next));
        }
        state.started = None;
        let previous = state.last_committed.take();
        let (committed, next_waits) = tokio::sync::oneshot::channel();
        state.last_committed = Some(next_waits);
        let folder = Folder {
            validator: self.parts.validator.clone(),
            metrics: self.parts.metrics.clone(),
            source: self.source.clone(),
            topic: self.topic.clone(),
            max_record_bytes: self.max_record_bytes,
        };
        let copy_dead = self.dead_letter_producer.is_some();
        let writer = self.parts.writer.clone();
        let commit = self.rt.spawn(async move {
            let folded = tokio::task::spawn_blocking(move || folder.fold(records)).await;
            let mut pending = folded.map_err(|e| WriteError::Failed(format!("folding a batch failed: {e}")))?;
            pending.offsets = advances;
            let dead = if copy_dead { pending.dead.clone() } else { Vec::new() };
            // Offsets advance in order: a batch goes only after the one before it committed.
            if let Some(previous) = previous {
                if previous.await != Ok(true) {
                    let _ = committed.send(false);
                    return Err(WriteError::Failed("an earlier batch was not committed".into()));
                }
            }
            let result = writer.submit(pending).await;
            let _ = committed.send(result.is_ok());
            result.map(|()| dead)
        });
        state.in_flight.push_back(InFlight { commit, offsets });
        Ok(())
    }

    /// Waits for an in-flight batch; once committed, tells Kafka and the dead-letter topic.
    fn settle(&self, consumer: &BaseConsumer<Self>, f: InFlight) -> Result<(), WriteError> {
        let dead = match self.rt.block_on(f.commit) {
            Ok(r) => r?,
            Err(e) => return Err(WriteError::Failed(format!("commit task failed: {e}"))),
        };
        let mut tpl = TopicPartitionList::new();
        for (p, next) in f.offsets {
            let _ = tpl.add_partition_offset(&self.topic, p, Offset::Offset(next));
        }
        if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
            tracing::debug!(error = %e, "committing offsets to Kafka failed (informational only)");
        }
        if let Some((topic, producer)) = &self.dead_letter_producer {
            for d in &dead {
                produce_dead_letter(producer, topic, d);
            }
        }
        Ok(())
    }

    /// Settles every batch in flight.
    pub(super) fn drain(&self, consumer: &BaseConsumer<Self>) -> Result<(), WriteError> {
        let mut result = Ok(());
        loop {
            let next = self.lock().in_flight.pop_front();
            let Some(f) = next else { return result };
            result = result.and(self.settle(consumer, f));
        }
    }

    /// Settles the batches in flight whose commit is already done, without waiting.
    pub(super) fn settle_finished(&self, consumer: &BaseConsumer<Self>) -> Result<(), WriteError> {
        let mut result = Ok(());
        loop {
            let next = {
                let mut state = self.lock();
                match state.in_flight.front() {
                    Some(f) if f.commit.is_finished() => state.in_flight.pop_front(),
                    _ => None,
                }
            };
            let Some(f) = next else { return result };
            result = result.and(self.settle(consumer, f));
        }
    }

    /// After a fenced or failed write: drop everything not committed and start every assigned
    /// partition again at its stored offset.
    pub(super) fn resync(&self, consumer: &BaseConsumer<Self>) {
        let _ = self.drain(consumer);
        let partitions: Vec<i32> = {
            let mut state = self.lock();
            state.discard_batch();
            state.positions.keys().copied().collect()
        };
        let positions = self.stored_positions(&partitions);
        let mut tpl = TopicPartitionList::new();
        for (&p, pos) in &positions {
            let _ = tpl.add_partition_offset(&self.topic, p, pos.fetch_from());
        }
        // Re-assigning our own partitions (not a group change) restarts their fetches at the
        // given offsets and drops what was prefetched.
        if let Err(e) = consumer.assign(&tpl) {
            tracing::error!(error = %e, "kafka re-assign failed");
        }
        tracing::info!(?positions, "resynchronised with the stored offsets");
        self.lock().positions = positions;
    }

    /// `/readyz`: healthy, with the partitions this consumer owns (`assigned 0,2` or `assigned
    /// none`, a format tests read).
    fn report_healthy(&self, topic_partitions: usize) {
        let assigned: Vec<String> = self.lock().positions.keys().map(|p| p.to_string()).collect();
        let assigned = if assigned.is_empty() { "none".to_string() } else { assigned.join(",") };
        self.parts
            .health
            .set_kafka(true, format!("consuming {}: {topic_partitions} partitions, assigned {assigned}", self.topic));
    }

    /// Checks that the broker answers and the topic exists; updates `/readyz`.
    pub(super) fn probe(&self, consumer: &BaseConsumer<Self>) -> bool {
        let health = &self.parts.health;
        match consumer.fetch_metadata(Some(&self.topic), BROKER_TIMEOUT) {
            Ok(md) => {
                *self.auth_failure.lock().unwrap_or_else(|e| e.into_inner()) = None;
                let t = md.topics().iter().find(|t| t.name() == self.topic);
                match t {
                    Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                        self.report_healthy(t.partitions().len());
                        true
                    }
                    _ => {
                        health.set_kafka(false, format!("topic {} does not exist on the broker", self.topic));
                        false
                    }
                }
            }
            Err(e) => {
                let auth = self.auth_failure.lock().unwrap_or_else(|e| e.into_inner()).clone();
                health.set_kafka(false, auth.unwrap_or_else(|| format!("broker unreachable: {e}")));
                false
            }
        }
    }

    pub(super) fn log_lag(&self, consumer: &BaseConsumer<Self>) {
        let partitions: Vec<i32> = self.lock().positions.keys().copied().collect();
        if partitions.is_empty() {
            return;
        }
        let stored = match self.rt.block_on(self.parts.store.stored_offsets(&self.source)) {
            Ok(s) => s,
            Err(e) => return tracing::warn!(error = %e, "cannot read stored offsets for the lag"),
        };
        match partition_lag(consumer, &self.topic, &partitions, &stored) {
            Ok(lag) => {
                let total: i64 = lag.iter().map(|l| l.lag).sum();
                let per: Vec<(i32, i64)> = lag.iter().map(|l| (l.partition, l.lag)).collect();
                for &(partition, lag) in &per {
                    crate::telemetry::metrics::kafka_lag(partition, lag);
                }
                tracing::info!(topic = %self.topic, total, partitions = ?per, "kafka consumer lag");
            }
            Err(e) => tracing::warn!(error = %e, "cannot fetch watermarks for the lag"),
        }
    }
}
