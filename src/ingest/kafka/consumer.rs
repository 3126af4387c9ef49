//! The consumer's thread: poll, batch, submit; resync on a fence; probe the broker.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;

use super::client::{base_config, source_name};
use super::context::{
    BATCH_LINGER, BATCH_RECORDS, ConsumerParts, Ctx, IN_FLIGHT_POLL, LAG_LOG_EVERY, MAX_IN_FLIGHT, PROBE_HEALTHY,
    PROBE_UNHEALTHY, Progress, RETRY_MAX, RETRY_MIN,
};
use super::producer::LogDelivery;
use crate::config::KafkaSettings;
use crate::ingest::writer::WriteError;

/// librdkafka's prefetch buffer, in KiB (its default is 64 MiB).
const PREFETCH_KBYTES: &str = "32768";
/// Records taken between two reads of the clock while records keep arriving.
const CLOCK_EVERY: u32 = 64;
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
            Some(t) => Some((
                t.clone(),
                base_config(&settings.brokers, &settings.properties).create_with_context(LogDelivery::default())?,
            )),
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
            auth_failure: Mutex::new(None),
        };
        let consumer: BaseConsumer<Ctx> = base_config(&settings.brokers, &settings.properties)
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

/// The broker probe and the lag log, each run when due.
struct Upkeep {
    healthy: bool,
    next_probe: Instant,
    next_lag_log: Instant,
}

impl Upkeep {
    fn new() -> Self {
        Self { healthy: false, next_probe: Instant::now(), next_lag_log: Instant::now() + LAG_LOG_EVERY }
    }

    fn tick(&mut self, consumer: &BaseConsumer<Ctx>) {
        let ctx = consumer.context();
        let now = Instant::now();
        if now >= self.next_probe {
            self.healthy = ctx.probe(consumer);
            self.next_probe = now + if self.healthy { PROBE_HEALTHY } else { PROBE_UNHEALTHY };
        }
        if self.healthy && now >= self.next_lag_log {
            ctx.log_lag(consumer);
            self.next_lag_log = now + LAG_LOG_EVERY;
        }
    }
}

/// The consumer thread's loop: poll, batch, submit; resync on a fence; probe the broker.
fn run(consumer: &BaseConsumer<Ctx>, stop: &AtomicBool) {
    let ctx = consumer.context();
    let mut upkeep = Upkeep::new();
    let mut backoff = RETRY_MIN;
    // The clock is read once per CLOCK_EVERY records while records keep coming (and at every
    // empty poll): reading it per record took 7 % of the CPU of a full-speed consume.
    let mut since_clock = CLOCK_EVERY;
    let mut drained = true;
    while !stop.load(Ordering::Relaxed) {
        since_clock += 1;
        let look = drained || since_clock >= CLOCK_EVERY;
        if look {
            since_clock = 0;
            upkeep.tick(consumer);
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
            Some(t) if look => BATCH_LINGER.saturating_sub(t.elapsed()).min(IN_FLIGHT_POLL),
            Some(_) => Duration::ZERO,
            None => Duration::from_millis(100),
        };
        drained = false;
        match consumer.poll(wait) {
            Some(Ok(m)) => {
                let rewind = ctx.take(&mut ctx.lock(), &m);
                if let Some(offset) = rewind {
                    ctx.rewind(consumer, m.partition(), offset);
                }
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "kafka consume error");
                upkeep.next_probe = upkeep.next_probe.min(Instant::now() + Duration::from_millis(200));
            }
            None => drained = true,
        }
        let due = {
            let state = ctx.lock();
            state.batch.len() >= BATCH_RECORDS
                || state.started.is_some_and(|t| (drained && room) || (look && t.elapsed() >= BATCH_LINGER))
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
                    crate::telemetry::metrics::kafka_fenced();
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
