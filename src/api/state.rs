//! What every handler can reach; cheap to clone.

use std::sync::Arc;

use super::cache::ReadCache;
use crate::auth::Tokens;
use crate::config::Settings;
use crate::event::Validator;
use crate::health::Health;
use crate::ingest::writer::Writer;
use crate::rollup::Metrics;
use crate::storage::Store;

#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub settings: Arc<Settings>,
    pub validator: Arc<Validator>,
    pub metrics: Arc<Metrics>,
    pub writer: Writer,
    pub tokens: Arc<Tokens>,
    pub cache: Arc<ReadCache>,
    pub health: Arc<Health>,
    /// Ingest bodies in flight, in KiB: bounds the memory requests waiting to be committed hold.
    pub ingest_gate: Arc<tokio::sync::Semaphore>,
}
