//! What every Kafka client Jetstream makes shares: its base configuration and names.

use std::time::Duration;

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};

use crate::config::KafkaProperties;

/// Time allowed to broker metadata and watermark requests.
pub(super) const BROKER_TIMEOUT: Duration = Duration::from_secs(3);
/// The store's name for a topic's offsets: independent of the consumer group, because the
/// store, not the group, is the truth about what has been counted.
pub fn source_name(topic: &str) -> String {
    format!("kafka:{topic}")
}

/// The configuration every client starts from: `[kafka.properties]` (security, SASL, TLS) first,
/// then what Jetstream needs (its own keys are refused in the file by `Settings::check`).
pub(super) fn base_config(brokers: &str, properties: &KafkaProperties) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (k, v) in &properties.0 {
        c.set(k, v);
    }
    c.set("bootstrap.servers", brokers)
        .set("client.id", "jetstream")
        .set("reconnect.backoff.ms", "100")
        .set("reconnect.backoff.max.ms", "5000")
        // Small requests (a fetch, a marker record) must not wait for Nagle's delayed ACK.
        .set("socket.nagle.disable", "true")
        .set_log_level(RDKafkaLogLevel::Warning);
    c
}
