//! The HTTP API: the original design's two endpoints, the versioned `/api/v1`, health, and auth.
//!
//! Every route but `/healthz` and `/readyz` needs a bearer token with the route's scope. Errors
//! are JSON `{"message": …}`; a 5xx says only "internal error" and the cause is logged.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Json;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::auth::{AuthError, Scope, Tokens};
use crate::config::Settings;
use crate::event::Validator;
use crate::ingest::writer::Writer;
use crate::rollup::{Agg, Metrics, Resolution, SeriesKey, Span, cover, trailing_window};
use crate::storage::{Store, StoreError};

pub mod cache;
mod product;
mod v1;

pub use cache::{CacheStats, ReadCache};

/// Everything a handler needs; cheap to clone.
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
}

/// What `/readyz` reports beyond the store: the Kafka consumer, when there is one.
#[derive(Debug, Default)]
pub struct Health {
    pub kafka_configured: AtomicBool,
    pub kafka_ok: AtomicBool,
    pub kafka_detail: std::sync::Mutex<String>,
}

pub fn router(state: AppState) -> Router {
    let body_limit = state.settings.ingest.max_body_bytes;
    Router::new()
        .route("/healthz", get(|| async { Json(serde_json::json!({"status": "ok"})) }))
        .route("/readyz", get(v1::get_readiness))
        .route("/api/product/sale/{id}", get(product::get_product_sales))
        .route("/api/product/rating/{id}", get(product::get_product_rating))
        .route("/api/v1/events", post(crate::ingest::http::ingest_events).layer(DefaultBodyLimit::max(body_limit)))
        .route("/api/v1/events/raw", get(v1::get_raw_events))
        .route("/api/v1/dead-letters", get(v1::get_dead_letters))
        .route("/api/v1/metrics", get(v1::list_metrics))
        .route("/api/v1/admin/stats", get(v1::get_stats))
        .route("/api/v1/admin/kafka/lag", get(crate::ingest::kafka::get_kafka_lag))
        .route("/api/v1/metrics/{metric}", get(v1::get_metric_aggregate))
        .route("/api/v1/metrics/{metric}/series", get(v1::get_metric_series))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async {
            ApiError::Status(StatusCode::METHOD_NOT_ALLOWED, "method not allowed".into())
        })
        .with_state(state)
}

impl AppState {
    /// Checks the request's bearer token for `scope`.
    pub fn authorize(&self, headers: &HeaderMap, scope: Scope) -> Result<String, ApiError> {
        let h = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        Ok(self.tokens.authorize(h, scope, crate::ingest::now_ms())?)
    }

    /// The merged buckets of `series` over `[from, to)` seconds (`None`: all time, one row),
    /// through the read cache. A cached answer past half its life is refreshed in the background,
    /// so a series read often is never read from the store on a request's path.
    pub async fn aggregate(&self, series: &SeriesKey, window: Option<(i64, i64)>) -> Result<Agg, ApiError> {
        let key = window.unwrap_or((i64::MIN, i64::MAX));
        if let Some((a, old)) = self.cache.get_fresh(series, key) {
            CacheStats::count(&self.cache.stats.hits);
            if old {
                self.refresh(series, key);
            }
            return Ok(a);
        }
        self.read_through(series, key).await
    }

    /// The trailing window of `window_s` seconds ending with the current second, and its answer.
    ///
    /// Read-after-ack: the window always ends with the second the request arrived in, and the
    /// answer holds every event this instance acknowledged before. Each second every series gets
    /// a new window, so in the second half of a second the next second's window is read into the
    /// cache in the background (and kept exact by the commits that follow, like every entry): at
    /// the turn of the second it is there, and requests do not all go to the store at once.
    pub async fn aggregate_trailing(&self, series: &SeriesKey, window_s: i64) -> Result<(Agg, (i64, i64)), ApiError> {
        let now = crate::ingest::now_ms();
        let (from, to) = trailing_window(now, window_s);
        if now.rem_euclid(1000) >= PREFETCH_AFTER_MS {
            let next = (from + 1, to + 1);
            if self.cache.get_fresh(series, next).is_none() {
                self.refresh(series, next);
            }
        }
        Ok((self.aggregate(series, Some((from, to))).await?, (from, to)))
    }

    async fn read_through(&self, series: &SeriesKey, key: (i64, i64)) -> Result<Agg, ApiError> {
        CacheStats::count(&self.cache.stats.request_reads);
        let ticket = self.cache.ticket();
        let (agg, pos) = self.store.read_aggregate_at(series, &spans_of(key)).await?;
        self.cache.put(series, key, agg.clone(), pos, ticket);
        Ok(agg)
    }

    /// Reads `key` into the cache in the background (at most one refresh per entry at a time).
    fn refresh(&self, series: &SeriesKey, key: (i64, i64)) {
        if !self.cache.begin_refresh(series, key) {
            return;
        }
        let (store, cache, series) = (self.store.clone(), self.cache.clone(), series.clone());
        tokio::spawn(async move {
            // Never closed, so acquiring cannot fail.
            let _slot = cache.refresh_slots.acquire().await;
            CacheStats::count(&cache.stats.background_reads);
            let ticket = cache.ticket();
            match store.read_aggregate_at(&series, &spans_of(key)).await {
                Ok((agg, pos)) => cache.put(&series, key, agg, pos, ticket),
                Err(e) => tracing::debug!(error = %e, "background cache refresh failed"),
            }
            cache.end_refresh(&series, key);
        });
    }

    /// Whether any accepted event carried `value` for `dim`, through the read cache.
    pub async fn is_known(&self, dim: &str, value: &str) -> Result<bool, ApiError> {
        if self.cache.is_known(dim, value) {
            return Ok(true);
        }
        let known = self.store.is_known(dim, value).await?;
        if known {
            self.cache.set_known(dim, value);
        }
        Ok(known)
    }
}

/// How far into a second (ms) the next second's trailing windows start being read ahead: late
/// enough that the answer read is still young when its second comes (it ages from its read).
const PREFETCH_AFTER_MS: i64 = 500;

/// The buckets covering a cache key: a window, or all time.
fn spans_of(key: (i64, i64)) -> Vec<Span> {
    if key == (i64::MIN, i64::MAX) { vec![Span { res: Resolution::All, from: 0, to: 1 }] } else { cover(key.0, key.1) }
}

/// Every error a handler can answer with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{1}")]
    Status(StatusCode, String),
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::Internal(e.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::Auth(AuthError::Forbidden(_)) => StatusCode::FORBIDDEN,
            ApiError::Auth(_) => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Status(s, _) => *s,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let message = match &self {
            ApiError::Internal(e) => {
                tracing::error!(error = format!("{e:#}"), "request failed");
                "internal error".to_string()
            }
            e => e.to_string(),
        };
        let mut resp = (status, Json(serde_json::json!({ "message": message }))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

/// A decimal written as an exact JSON number: its plain digits (no exponent, no trailing zeros),
/// never through a float. Answers holding one must be serialised as typed structs, not through
/// `serde_json::Value` (which would turn the number into an `f64`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exact(pub Decimal);

impl Serialize for Exact {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        json_decimal(self.0).serialize(s)
    }
}

/// A decimal's exact JSON text (see [`Exact`]).
pub fn json_decimal(d: Decimal) -> Box<RawValue> {
    RawValue::from_string(d.normalize().to_string()).expect("a decimal's text is a JSON number")
}

/// An RFC 3339 time for epoch seconds.
pub fn rfc3339(t_s: i64) -> String {
    chrono::DateTime::from_timestamp(t_s, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// Decimal places an average is rounded to.
pub const AVG_DECIMALS: u32 = 6;

/// A window's bounds in answers.
#[derive(Debug, Serialize)]
pub struct WindowOut {
    pub from: String,
    pub to: String,
}

impl WindowOut {
    pub fn new(from: i64, to: i64) -> Self {
        Self { from: rfc3339(from), to: rfc3339(to) }
    }
}

impl Health {
    pub fn set_kafka(&self, ok: bool, detail: impl Into<String>) {
        self.kafka_configured.store(true, Ordering::Relaxed);
        self.kafka_ok.store(ok, Ordering::Relaxed);
        *self.kafka_detail.lock().unwrap_or_else(|e| e.into_inner()) = detail.into();
    }
}
