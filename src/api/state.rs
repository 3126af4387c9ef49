//! What every handler can reach; cheap to clone: one reference count, whatever it holds (axum
//! clones the state for every handler that takes `State`, on every request).

use std::sync::{Arc, OnceLock};

use axum::Router;

use super::cache::ReadCache;
use crate::auth::Tokens;
use crate::config::Settings;
use crate::event::Validator;
use crate::health::Health;
use crate::ingest::writer::Writer;
use crate::rollup::Metrics;
use crate::storage::Store;

#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub struct Shared {
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
    /// Live streams open, per token.
    pub streams: Arc<super::live::OpenStreams>,
    /// Bumped after each local commit: what live streams wait on.
    pub commits: Arc<super::live::CommitBell>,
    /// The API's own routes, for answering a path from inside (batch queries, live streams);
    /// set by `api::router`.
    pub routes: Arc<OnceLock<Router<AppState>>>,
    /// Rollup rebuilds run by this server (admin endpoint, `rollups.auto_rebuild`).
    pub rebuilds: Arc<crate::rebuild::jobs::Rebuilds>,
}
