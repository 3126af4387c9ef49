//! What `/readyz` (and the metrics) report beyond the store: the Kafka consumer's state, set by
//! the consumer, and the store's footprint, set by the disk watch; read by the API (they all
//! depend on this, none on another).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Health {
    pub disk: DiskWatch,
    pub kafka_configured: AtomicBool,
    pub kafka_ok: AtomicBool,
    pub kafka_detail: Mutex<String>,
}

/// The store's size on disk and the free space beside it, as last seen.
#[derive(Debug)]
pub struct DiskWatch {
    database_bytes: AtomicU64,
    /// `u64::MAX`: not known (no WAL, or no way to tell).
    wal_bytes: AtomicU64,
    free_bytes: AtomicU64,
}

impl Default for DiskWatch {
    fn default() -> Self {
        Self {
            database_bytes: AtomicU64::new(0),
            wal_bytes: AtomicU64::new(u64::MAX),
            free_bytes: AtomicU64::new(u64::MAX),
        }
    }
}

impl DiskWatch {
    pub fn set(&self, database_bytes: u64, wal_bytes: Option<u64>, free_bytes: Option<u64>) {
        self.database_bytes.store(database_bytes, Ordering::Relaxed);
        self.wal_bytes.store(wal_bytes.unwrap_or(u64::MAX), Ordering::Relaxed);
        self.free_bytes.store(free_bytes.unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// (database, WAL, free) bytes; `None` where not known.
    pub fn get(&self) -> (u64, Option<u64>, Option<u64>) {
        let known = |v: u64| (v != u64::MAX).then_some(v);
        (
            self.database_bytes.load(Ordering::Relaxed),
            known(self.wal_bytes.load(Ordering::Relaxed)),
            known(self.free_bytes.load(Ordering::Relaxed)),
        )
    }
}

impl Health {
    pub fn set_kafka(&self, ok: bool, detail: impl Into<String>) {
        self.kafka_configured.store(true, Ordering::Relaxed);
        self.kafka_ok.store(ok, Ordering::Relaxed);
        *self.kafka_detail.lock().unwrap_or_else(|e| e.into_inner()) = detail.into();
    }
}
