//! The HTTP API: the original design's two endpoints, the versioned `/api/v1`, health, and auth.
//!
//! Every route but `/healthz` and `/readyz` needs a bearer token with the route's scope, taken as
//! an extractor in the handler's signature ([`extract`]). Errors are JSON `{"message": …}`; a 5xx
//! says only "internal error" (or that the store is unavailable) and the cause is logged.
//!
//! - [`product`]: the two original endpoints; [`metrics`]: `/api/v1/metrics…`;
//!   [`events`]: ingest and raw events; [`admin`]: dead letters, counters, Kafka lag;
//!   [`health`]: liveness and readiness;
//! - [`cache`]: answers kept exact by the local commits; [`state`], [`error`], [`extract`],
//!   [`json`]: what the handlers share.

mod admin;
mod cache;
mod error;
mod events;
mod extract;
mod health;
mod json;
mod metrics;
mod product;
mod state;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::{get, post};

pub use cache::{CacheStats, ReadCache};
pub use error::ApiError;
pub use state::AppState;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(health::get_health))
        .route("/readyz", get(health::get_readiness))
        .route("/api/product/sale/{id}", get(product::get_product_sales))
        .route("/api/product/rating/{id}", get(product::get_product_rating))
        .route("/api/v1/events", post(events::ingest_events))
        .route("/api/v1/events/raw", get(events::get_raw_events))
        .route("/api/v1/dead-letters", get(admin::get_dead_letters))
        .route("/api/v1/metrics", get(metrics::list_metrics))
        .route("/api/v1/admin/stats", get(admin::get_stats))
        .route("/api/v1/admin/kafka/lag", get(admin::get_kafka_lag))
        .route("/api/v1/metrics/{metric}", get(metrics::get_metric_aggregate))
        .route("/api/v1/metrics/{metric}/series", get(metrics::get_metric_series))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async {
            ApiError::Status(StatusCode::METHOD_NOT_ALLOWED, "method not allowed".into())
        })
        .with_state(state)
}
