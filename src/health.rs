//! What `/readyz` reports beyond the store: the Kafka consumer's state, set by the consumer and
//! read by the API (both depend on this, neither on the other).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug, Default)]
pub struct Health {
    pub kafka_configured: AtomicBool,
    pub kafka_ok: AtomicBool,
    pub kafka_detail: Mutex<String>,
}

impl Health {
    pub fn set_kafka(&self, ok: bool, detail: impl Into<String>) {
        self.kafka_configured.store(true, Ordering::Relaxed);
        self.kafka_ok.store(ok, Ordering::Relaxed);
        *self.kafka_detail.lock().unwrap_or_else(|e| e.into_inner()) = detail.into();
    }
}
