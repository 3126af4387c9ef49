//! Kafka ingestion with an exactly-once effect.
//!
//! Kafka delivers at least once; Jetstream makes the *effect* exactly once by storing each
//! partition's next offset in the same store transaction as the rollups, raw events and dead
//! letters its records produced ([`OffsetAdvance`], fenced by the store), and by resuming from the
//! stored offsets — never from Kafka's committed ones — whenever partitions are assigned.
//!
//! # How the consumer runs
//! One OS thread per consumer owns an rdkafka [`BaseConsumer`] (librdkafka, bundled 2.12). It
//! polls records and copies them into a batch, which is validated and folded into a [`Pending`]
//! on the blocking pool (so the thread only fetches) and handed to the group-commit writer, in
//! order. A batch goes as soon as the fetched records are used up (or at [`BATCH_RECORDS`]
//! records, or after [`BATCH_LINGER`]), with at most [`MAX_IN_FLIGHT`] batches awaiting their
//! commit: while they commit it keeps fetching into the next batch (so batches grow with the
//! load and an idle stream waits for no timer), and
//! beyond that it waits (librdkafka's own prefetch is capped by `queued.max.messages.kbytes`), so
//! memory is bounded whatever the backlog. A thread rather than a task because librdkafka runs
//! the rebalance callback inside `poll`, and the callback must block: it reads the store and
//! waits for in-flight batches before partitions change hands.
//!
//! # Assignment: a rebalance callback, not a seek afterwards
//! The custom [`ConsumerContext`] overrides `rebalance`. On *assign* it reads the stored offsets
//! and writes them into the partition list before calling `assign`, so librdkafka's very first
//! fetch starts at the store's position (a seek after the fact would race with fetches from the
//! group's committed offsets). On *revoke* it first waits for the batches in flight, so the next
//! owner reads offsets that include them, and drops the unsent batch (it will be fetched again
//! by whoever owns the partition next). The eager `range` assignor is configured so that every
//! rebalance is a full revoke-then-assign.
//!
//! # When the store says no
//! A batch whose offsets the store fences ([`WriteError::Fenced`]: another consumer advanced the
//! partition) or fails to write is *resynchronised*: wait for everything in flight, drop the
//! unsent batch, re-read the stored offsets and re-assign there. Records below a partition's
//! position are skipped (stale prefetch), so nothing is counted twice; nothing above it is ever
//! skipped, so nothing is lost. A fetch that resumes *past* its offset (tansu 0.6 answers a
//! fetch with the first batch starting at or after the offset, skipping the rest of the batch
//! holding it) is guarded against: a resumed fetch starts a little earlier and skips up to the
//! stored offset, rewinding further if the offset is still not seen (`Ctx::take`).
//!
//! Offsets are also committed to Kafka (asynchronously, after the store commit) so lag tools
//! show sensible numbers; Jetstream itself never reads them.
//!
//! Known about the test broker (tansu 0.6): it does not hand a SIGKILLed member's partitions to
//! the surviving members until another member joins; real Kafka does so after
//! `session.timeout.ms`. A killed consumer that is restarted (as a supervisor would) gets them back.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use serde::Serialize;
use serde_json::{Value, json};

use super::writer::{WriteError, Writer};
use super::{Origin, Pending, now_ms};
use crate::api::{ApiError, AppState, Health};
use crate::auth::Scope;
use crate::config::KafkaSettings;
use crate::event::{Rejection, Validator};
use crate::rollup::Metrics;
use crate::storage::{NewDeadLetter, OffsetAdvance, Store, StoreError};

/// Most records in one batch handed to the writer.
pub const BATCH_RECORDS: usize = 20_000;
/// Longest a record waits in an unsent batch while the writer is busy with earlier ones (when
/// the writer has room, a batch goes as soon as the fetched records are used up).
pub const BATCH_LINGER: Duration = Duration::from_millis(100);
/// How often the consumer checks its in-flight batches while it waits with a full pipeline.
const IN_FLIGHT_POLL: Duration = Duration::from_millis(2);
/// Batches submitted and not yet committed; beyond this the consumer waits for the oldest.
pub const MAX_IN_FLIGHT: usize = 4;
/// librdkafka's prefetch buffer, in KiB (its default is 64 MiB).
const PREFETCH_KBYTES: &str = "32768";
/// How far before its stored offset a resumed fetch starts (see `Ctx::take`): more records than
/// one producer batch holds (librdkafka's `batch.num.messages` defaults to 10,000).
const REWIND_FIRST: i64 = 10_000;
/// How much of an oversized record is kept in its dead letter.
const OVERSIZED_KEEP_BYTES: usize = 64 * 1024;
/// Broker health probes: often while unhealthy, rarely while all is well.
const PROBE_UNHEALTHY: Duration = Duration::from_secs(1);
const PROBE_HEALTHY: Duration = Duration::from_secs(5);
/// How often the consumer logs its lag.
const LAG_LOG_EVERY: Duration = Duration::from_secs(15);
/// Time allowed to broker metadata and watermark requests.
const BROKER_TIMEOUT: Duration = Duration::from_secs(3);
/// Backoff after a failed store write, doubling up to the maximum.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// The store's name for a topic's offsets: independent of the consumer group, because the
/// store, not the group, is the truth about what has been counted.
pub fn source_name(topic: &str) -> String {
    format!("kafka:{topic}")
}

/// What the consumer needs from the application.
#[derive(Clone)]
pub struct ConsumerParts {
    pub store: Arc<dyn Store>,
    pub writer: Writer,
    pub validator: Arc<Validator>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
}

/// A running consumer; [`KafkaConsumer::stop`] ends it after its in-flight batches commit.
pub struct KafkaConsumer {
    stop: Arc<AtomicBool>,
    done: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl KafkaConsumer {
    /// Creates the consumer, subscribes, and starts its thread. Fails only on a configuration
    /// librdkafka rejects; an unreachable broker is retried in the background (see `/readyz`).
    pub fn start(settings: &KafkaSettings, parts: ConsumerParts) -> Result<Self, KafkaError> {
        let topic = settings.topic.clone();
        parts.health.set_kafka(false, format!("connecting to {} for topic {topic}", settings.brokers));
        let dead_letter_producer = match &settings.dead_letter_topic {
            Some(t) => Some((t.clone(), base_config(&settings.brokers).create_with_context(LogDelivery::default())?)),
            None => None,
        };
        let ctx = Ctx {
            rt: tokio::runtime::Handle::current(),
            source: source_name(&topic),
            topic: topic.clone(),
            max_record_bytes: settings.max_record_bytes,
            parts,
            dead_letter_producer,
            state: Mutex::new(Progress::default()),
        };
        let consumer: BaseConsumer<Ctx> = base_config(&settings.brokers)
            .set("group.id", &settings.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("allow.auto.create.topics", "false")
            // Eager: every rebalance revokes everything, then assigns (see the module docs).
            .set("partition.assignment.strategy", "range")
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000")
            .set("queued.max.messages.kbytes", PREFETCH_KBYTES)
            .set("fetch.wait.max.ms", "20")
            .create_with_context(ctx)?;
        consumer.subscribe(&[&topic])?;
        let stop = Arc::new(AtomicBool::new(false));
        let (done_tx, done) = tokio::sync::oneshot::channel();
        let flag = stop.clone();
        std::thread::Builder::new()
            .name(format!("kafka-{topic}"))
            .spawn(move || {
                run(&consumer, &flag);
                // Dropping the consumer leaves the group (its revoke callback runs here).
                drop(consumer);
                let _ = done_tx.send(());
            })
            .map_err(|e| KafkaError::ClientCreation(format!("cannot start the consumer thread: {e}")))?;
        Ok(Self { stop, done: Some(done) })
    }

    /// Stops consuming: the current batch is submitted, in-flight batches commit, the consumer
    /// leaves its group. Call before draining the writer.
    pub async fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(done) = self.done.take() {
            let _ = done.await;
        }
    }
}

impl Drop for KafkaConsumer {
    /// A consumer dropped without `stop` (an error path) still ends its thread.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn base_config(brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("client.id", "jetstream")
        .set("reconnect.backoff.ms", "100")
        .set("reconnect.backoff.max.ms", "5000")
        // Small requests (a fetch, a marker record) must not wait for Nagle's delayed ACK.
        .set("socket.nagle.disable", "true")
        .set_log_level(RDKafkaLogLevel::Warning);
    c
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

/// A record copied out of librdkafka's buffer, to be validated off the consumer thread.
struct RawRecord {
    partition: i32,
    offset: i64,
    /// The record's timestamp (the event time of events without a `timestamp`).
    time_ms: Option<i64>,
    key: Option<Box<[u8]>>,
    /// The value's length (the value itself is cut to [`OVERSIZED_KEEP_BYTES`] when oversized).
    size: usize,
    payload: Box<[u8]>,
}

/// A batch submitted to the writer, awaiting its commit. Its task validates and folds the
/// records (on the blocking pool, so the consumer thread only fetches), waits for the batch
/// before it to be committed (offsets must advance in order), then submits; it answers with the
/// dead letters to copy to the dead-letter topic.
struct InFlight {
    commit: tokio::task::JoinHandle<Result<Vec<NewDeadLetter>, WriteError>>,
    /// Offsets to commit to Kafka after the store commit (for lag tools only).
    offsets: Vec<(i32, i64)>,
}

#[derive(Default)]
struct Progress {
    positions: BTreeMap<i32, Position>,
    batch: Vec<RawRecord>,
    /// Partitions with records in `batch`.
    touched: Vec<i32>,
    started: Option<Instant>,
    in_flight: VecDeque<InFlight>,
    /// Completes when the last submitted batch is committed (`true`) or not.
    last_committed: Option<tokio::sync::oneshot::Receiver<bool>>,
}

struct Ctx {
    rt: tokio::runtime::Handle,
    source: String,
    topic: String,
    max_record_bytes: usize,
    parts: ConsumerParts,
    dead_letter_producer: Option<(String, ThreadedProducer<LogDelivery>)>,
    /// Touched only by the consumer thread (the rebalance callback runs inside its `poll`); a
    /// mutex because librdkafka requires the context to be `Sync`.
    state: Mutex<Progress>,
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
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.parts.health.set_kafka(false, format!("all brokers are down: {reason}"));
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
    fn lock(&self) -> MutexGuard<'_, Progress> {
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
    fn take(&self, state: &mut Progress, m: &BorrowedMessage<'_>) -> Option<i64> {
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
    fn rewind(&self, consumer: &BaseConsumer<Self>, partition: i32, offset: i64) {
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
    fn submit(&self, consumer: &BaseConsumer<Self>) -> Result<(), WriteError> {
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
    fn drain(&self, consumer: &BaseConsumer<Self>) -> Result<(), WriteError> {
        let mut result = Ok(());
        loop {
            let next = self.lock().in_flight.pop_front();
            let Some(f) = next else { return result };
            result = result.and(self.settle(consumer, f));
        }
    }

    /// Settles the batches in flight whose commit is already done, without waiting.
    fn settle_finished(&self, consumer: &BaseConsumer<Self>) -> Result<(), WriteError> {
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
    fn resync(&self, consumer: &BaseConsumer<Self>) {
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
    fn probe(&self, consumer: &BaseConsumer<Self>) -> bool {
        let health = &self.parts.health;
        match consumer.fetch_metadata(Some(&self.topic), BROKER_TIMEOUT) {
            Ok(md) => {
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
                health.set_kafka(false, format!("broker unreachable: {e}"));
                false
            }
        }
    }

    fn log_lag(&self, consumer: &BaseConsumer<Self>) {
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
                tracing::info!(topic = %self.topic, total, partitions = ?per, "kafka consumer lag");
            }
            Err(e) => tracing::warn!(error = %e, "cannot fetch watermarks for the lag"),
        }
    }
}

/// Validates and folds fetched records into a batch for the writer (off the consumer thread).
struct Folder {
    validator: Arc<Validator>,
    metrics: Arc<Metrics>,
    source: String,
    topic: String,
    max_record_bytes: usize,
}

impl Folder {
    fn fold(&self, records: Vec<RawRecord>) -> Pending {
        let received = now_ms();
        let mut pending = Pending::default();
        for r in &records {
            let origin = Origin {
                source: &self.source,
                topic: Some(&self.topic),
                partition: Some(r.partition),
                offset: Some(r.offset),
                key: r.key.as_deref(),
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

/// The consumer thread's loop: poll, batch, submit; resync on a fence; probe the broker.
fn run(consumer: &BaseConsumer<Ctx>, stop: &AtomicBool) {
    let ctx = consumer.context();
    let mut next_probe = Instant::now();
    let mut healthy = false;
    let mut next_lag_log = Instant::now() + LAG_LOG_EVERY;
    let mut backoff = RETRY_MIN;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= next_probe {
            healthy = ctx.probe(consumer);
            next_probe = now + if healthy { PROBE_HEALTHY } else { PROBE_UNHEALTHY };
        }
        if healthy && now >= next_lag_log {
            ctx.log_lag(consumer);
            next_lag_log = now + LAG_LOG_EVERY;
        }
        // Natural batching: while records keep arriving, or while the writer already has
        // MAX_IN_FLIGHT batches, the batch grows; as soon as the fetched records are used up and
        // the writer has room, it goes (so an idle stream is not held back by a timer).
        let (pending, room) = {
            let state = ctx.lock();
            (state.started, state.in_flight.len() < MAX_IN_FLIGHT)
        };
        let wait = match pending {
            Some(_) if room => Duration::ZERO,
            Some(t) => BATCH_LINGER.saturating_sub(t.elapsed()).min(IN_FLIGHT_POLL),
            None => Duration::from_millis(100),
        };
        let mut drained = false;
        match consumer.poll(wait) {
            Some(Ok(m)) => {
                let rewind = ctx.take(&mut ctx.lock(), &m);
                if let Some(offset) = rewind {
                    ctx.rewind(consumer, m.partition(), offset);
                }
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "kafka consume error");
                next_probe = next_probe.min(Instant::now() + Duration::from_millis(200));
            }
            None => drained = true,
        }
        let due = {
            let state = ctx.lock();
            state.batch.len() >= BATCH_RECORDS
                || state.started.is_some_and(|t| (drained && room) || t.elapsed() >= BATCH_LINGER)
        };
        let mut result = ctx.settle_finished(consumer);
        if due && result.is_ok() {
            result = ctx.submit(consumer);
        }
        match result {
            Ok(()) => backoff = RETRY_MIN,
            Err(WriteError::Closed) => {
                tracing::warn!("the writer has shut down; the Kafka consumer stops");
                break;
            }
            Err(e) => {
                if matches!(e, WriteError::Fenced(_)) {
                    tracing::warn!(error = %e, "a batch was fenced; resuming from the stored offsets");
                } else {
                    tracing::error!(error = %e, ?backoff, "a batch failed to commit; retrying from the stored offsets");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(RETRY_MAX);
                }
                ctx.resync(consumer);
            }
        }
    }
    // Graceful stop: commit what was taken, then wait for it.
    let result = ctx.submit(consumer).and(ctx.drain(consumer));
    if let Err(e) = result {
        tracing::warn!(error = %e, "the last Kafka batch was not committed; it will be consumed again");
    }
    ctx.parts.health.set_kafka(false, "stopped");
    tracing::info!(topic = %ctx.topic, "kafka consumer stopped");
}

// ---------------------------------------------------------------------------------------------
// Lag

/// One partition's lag: high watermark − stored next offset.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionLag {
    pub partition: i32,
    pub low_watermark: i64,
    pub high_watermark: i64,
    /// `None` when nothing of this partition has been stored yet.
    pub stored_next_offset: Option<i64>,
    pub lag: i64,
}

fn partition_lag<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partitions: &[i32],
    stored: &[(i32, i64)],
) -> Result<Vec<PartitionLag>, KafkaError> {
    let stored: BTreeMap<i32, i64> = stored.iter().copied().collect();
    partitions
        .iter()
        .map(|&p| {
            let (low, high) = consumer.fetch_watermarks(topic, p, BROKER_TIMEOUT)?;
            let s = stored.get(&p).copied();
            Ok(PartitionLag {
                partition: p,
                low_watermark: low,
                high_watermark: high,
                stored_next_offset: s,
                lag: (high - s.unwrap_or(low)).max(0),
            })
        })
        .collect()
}

/// The lag of every partition of `topic`, from the broker's watermarks and the store's offsets.
pub async fn topic_lag(brokers: &str, topic: &str, store: &dyn Store) -> Result<Vec<PartitionLag>, LagError> {
    let stored = store.stored_offsets(&source_name(topic)).await?;
    let (brokers, topic) = (brokers.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = base_config(&brokers).create()?;
        let md = consumer.fetch_metadata(Some(&topic), BROKER_TIMEOUT)?;
        let partitions: Vec<i32> = md
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if partitions.is_empty() {
            return Err(LagError::NoTopic(topic));
        }
        Ok(partition_lag(&consumer, &topic, &partitions, &stored)?)
    })
    .await
    .map_err(|e| LagError::Store(StoreError::backend(e)))?
}

#[derive(Debug, thiserror::Error)]
pub enum LagError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("topic {0} does not exist on the broker")]
    NoTopic(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// `GET /api/v1/admin/kafka/lag` (scope `admin`): per-partition lag of the configured topic.
pub async fn get_kafka_lag(State(state): State<AppState>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    state.authorize(&headers, Scope::Admin)?;
    let k = &state.settings.kafka;
    if k.brokers.is_empty() {
        return Err(ApiError::NotFound("no Kafka brokers are configured".into()));
    }
    match topic_lag(&k.brokers, &k.topic, &*state.store).await {
        Ok(lag) => {
            let total: i64 = lag.iter().map(|l| l.lag).sum();
            Ok(Json(json!({
                "topic": k.topic,
                "source": source_name(&k.topic),
                "total_lag": total,
                "partitions": lag,
            })))
        }
        Err(LagError::Store(e)) => Err(e.into()),
        Err(e) => Err(ApiError::Unavailable(e.to_string())),
    }
}

// ---------------------------------------------------------------------------------------------
// Producing: `jetstream send`, the demo simulator, the dead-letter topic

/// Logs failed deliveries and counts them.
#[derive(Default)]
pub struct LogDelivery {
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl ClientContext for LogDelivery {}

impl ProducerContext for LogDelivery {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => {
                if self.failed.fetch_add(1, Ordering::Relaxed) == 0 {
                    *self.first_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                }
                tracing::warn!(error = %e, "kafka delivery failed");
            }
        }
    }
}

fn produce_dead_letter(producer: &ThreadedProducer<LogDelivery>, topic: &str, d: &NewDeadLetter) {
    let partition = d.partition.map(|p| p.to_string()).unwrap_or_default();
    let offset = d.offset.map(|o| o.to_string()).unwrap_or_default();
    let headers = OwnedHeaders::new()
        .insert(Header { key: "jetstream-reason", value: Some(d.reason.as_str()) })
        .insert(Header { key: "jetstream-topic", value: d.topic.as_deref() })
        .insert(Header { key: "jetstream-partition", value: Some(partition.as_str()) })
        .insert(Header { key: "jetstream-offset", value: Some(offset.as_str()) });
    let record = BaseRecord::<(), [u8]>::to(topic).payload(&d.raw[..]).headers(headers);
    if let Err((e, _)) = producer.send(record) {
        tracing::warn!(error = %e, "cannot copy a dead letter to the dead-letter topic");
    }
}

/// Publishes JSON events to a topic (at least once: acks from all in-sync replicas).
pub struct EventProducer {
    producer: ThreadedProducer<LogDelivery>,
    topic: String,
}

/// What a flush reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    pub delivered: u64,
    pub failed: u64,
    pub first_error: Option<String>,
}

impl EventProducer {
    pub fn new(brokers: &str, topic: &str) -> Result<Self, KafkaError> {
        let producer = base_config(brokers)
            .set("acks", "all")
            .set("enable.idempotence", "false")
            .set("linger.ms", "5")
            .set("message.timeout.ms", "30000")
            .create_with_context(LogDelivery::default())?;
        Ok(Self { producer, topic: topic.to_string() })
    }

    /// Queues one record, waiting while librdkafka's send queue is full.
    pub fn send(&self, key: Option<&[u8]>, payload: &[u8]) -> Result<(), KafkaError> {
        let mut record = BaseRecord::<[u8], [u8]>::to(&self.topic).payload(payload);
        if let Some(k) = key {
            record = record.key(k);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    /// Waits until every queued record is delivered or failed.
    pub fn flush(&self, timeout: Duration) -> Result<Delivered, KafkaError> {
        self.producer.flush(timeout)?;
        let c = self.producer.context();
        Ok(Delivered {
            delivered: c.delivered.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            first_error: c.first_error.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        })
    }
}

/// The record key for an event: the value of `field` (a string, or a number's text), so that
/// one product's events stay in one partition, in order.
pub fn event_key(event: &Value, field: &str) -> Option<Vec<u8>> {
    match event.get(field)? {
        Value::String(s) => Some(s.as_bytes().to_vec()),
        Value::Number(n) => Some(n.to_string().into_bytes()),
        _ => None,
    }
}

/// Creates `topic` with `partitions` partitions unless it exists; true when it was created.
pub async fn ensure_topic(brokers: &str, topic: &str, partitions: i32) -> Result<bool, KafkaError> {
    let admin: AdminClient<DefaultClientContext> = base_config(brokers).create()?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let opts = AdminOptions::new().operation_timeout(Some(BROKER_TIMEOUT)).request_timeout(Some(BROKER_TIMEOUT));
    let results = admin.create_topics([&new], &opts).await?;
    match results.into_iter().next() {
        Some(Ok(_)) => Ok(true),
        Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) | None => Ok(false),
        Some(Err((_, code))) => Err(KafkaError::AdminOp(code)),
    }
}
