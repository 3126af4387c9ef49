//! What every Kafka client Jetstream makes shares: its base configuration and names.

use std::time::Duration;

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};

/// Time allowed to broker metadata and watermark requests.
pub(super) const BROKER_TIMEOUT: Duration = Duration::from_secs(3);
/// The store's name for a topic's offsets: independent of the consumer group, because the
/// store, not the group, is the truth about what has been counted.
pub fn source_name(topic: &str) -> String {
    format!("kafka:{topic}")
}

pub(super) fn base_config(brokers: &str) -> ClientConfig {
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
