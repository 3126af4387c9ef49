//! Lag: the broker's high watermarks against the store's offsets.

use std::collections::BTreeMap;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use serde::Serialize;

use super::client::{BROKER_TIMEOUT, base_config, source_name};
use crate::config::KafkaSettings;
use crate::storage::{Store, StoreError};

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

pub(super) fn partition_lag<C: ConsumerContext>(
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

/// The lag of every partition of the configured topic, from the broker's watermarks and the
/// store's offsets.
pub async fn topic_lag(k: &KafkaSettings, store: &dyn Store) -> Result<Vec<PartitionLag>, LagError> {
    let stored = store.stored_offsets(&source_name(&k.topic)).await?;
    let (brokers, topic, properties) = (k.brokers.clone(), k.topic.clone(), k.properties.clone());
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = base_config(&brokers, &properties).create()?;
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
