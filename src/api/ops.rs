//! `GET /metrics` (Prometheus text format, scope `metrics`) and the ops listener's router
//! (`--ops-listen`: `/metrics`, `/healthz`, `/readyz` without a token, for a loopback or private
//! address).

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::extract::MetricsAccess;
use super::health;
use super::state::AppState;
use crate::telemetry::metrics;

/// The content type of the Prometheus text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every metric family, in the Prometheus text exposition format (with `# HELP` and `# TYPE`).
#[utoipa::path(get, path = "/metrics", tag = "health", security(("bearer" = ["metrics"])),
    responses(
        (status = 200, description = "Prometheus text exposition format", content_type = "text/plain", body = String),
        (status = 401, description = "No valid token", body = super::doc::ErrorOut),
        (status = 403, description = "The token lacks the scope", body = super::doc::ErrorOut),
    ))]
pub async fn get_metrics(_: MetricsAccess, State(state): State<AppState>) -> Response {
    render(&state)
}

fn render(state: &AppState) -> Response {
    let c = &state.cache.stats;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    metrics::read_cache(load(&c.hits), load(&c.request_reads), load(&c.background_reads));
    ([(header::CONTENT_TYPE, PROMETHEUS_TEXT)], metrics::render()).into_response()
}

/// The ops listener: metrics and health without a token.
pub fn ops_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(|State(state): State<AppState>| async move { render(&state) }))
        .route("/healthz", get(health::get_health))
        .route("/readyz", get(health::get_readiness))
        .with_state(state)
}
