//! Producing: `jetstream send`, the demo simulator, the dead-letter topic.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use serde_json::Value;

use super::client::{BROKER_TIMEOUT, base_config};
use crate::config::KafkaSettings;
use crate::storage::NewDeadLetter;

/// A client error of one kind is logged at most this often.
const REPEAT_ERRORS_AFTER: Duration = Duration::from_secs(60);

/// Logs failed deliveries and counts them.
#[derive(Default)]
pub struct LogDelivery {
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
    first_error: Mutex<Option<String>>,
    /// When each kind of client error was last logged: librdkafka repeats "all brokers are
    /// down" on every reconnect attempt (hundreds of lines while a broker is away).
    logged_errors: Mutex<HashMap<String, Instant>>,
}

impl ClientContext for LogDelivery {
    fn error(&self, error: KafkaError, reason: &str) {
        // Keyed without the reason, whose broker counts change from one repeat to the next.
        let kind = error.to_string();
        let mut logged = self.logged_errors.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if logged.get(&kind).is_none_or(|at| now.duration_since(*at) >= REPEAT_ERRORS_AFTER) {
            tracing::warn!("kafka: {kind}: {reason}");
            logged.insert(kind, now);
        }
    }
}

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

pub(super) fn produce_dead_letter(producer: &ThreadedProducer<LogDelivery>, topic: &str, d: &NewDeadLetter) {
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

/// Publishes JSON events to a topic: acknowledged by all in-sync replicas, idempotent (a retry
/// after a lost acknowledgement is not written twice).
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
    /// A producer to `k.topic` on `k.brokers`, with `k.properties`.
    pub fn new(k: &KafkaSettings) -> Result<Self, KafkaError> {
        let producer = base_config(&k.brokers, &k.properties)
            .set("acks", "all")
            // Idempotent: a retried produce request (a lost acknowledgement) is not written twice,
            // and order within a partition holds across retries.
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("message.timeout.ms", "30000")
            .create_with_context(LogDelivery::default())?;
        Ok(Self { producer, topic: k.topic.clone() })
    }

    /// Checks within `timeout` that a broker answers and knows the topic: without it, a producer
    /// pointed at nothing retries for `message.timeout.ms` and then fails every record.
    pub fn check_reachable(&self, timeout: Duration) -> Result<(), String> {
        let md = self.producer.client().fetch_metadata(Some(&self.topic), timeout).map_err(|e| e.to_string())?;
        match md.topics().iter().find(|t| t.name() == self.topic) {
            Some(t) if t.error().is_none() => Ok(()),
            _ => Err(format!("the broker has no topic {}", self.topic)),
        }
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

/// Creates `k.topic` with `partitions` partitions unless it exists; true when it was created.
pub async fn ensure_topic(k: &KafkaSettings, partitions: i32) -> Result<bool, KafkaError> {
    let admin: AdminClient<DefaultClientContext> = base_config(&k.brokers, &k.properties).create()?;
    let new = NewTopic::new(&k.topic, partitions, TopicReplication::Fixed(1));
    let opts = AdminOptions::new().operation_timeout(Some(BROKER_TIMEOUT)).request_timeout(Some(BROKER_TIMEOUT));
    let results = admin.create_topics([&new], &opts).await?;
    match results.into_iter().next() {
        Some(Ok(_)) => Ok(true),
        Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) | None => Ok(false),
        Some(Err((_, code))) => Err(KafkaError::AdminOp(code)),
    }
}
