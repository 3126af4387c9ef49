//! Admin routes for changing metrics and schemas (scope `admin`): rebuilding rollups from the raw
//! events, their status, and replaying dead letters.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::doc::ErrorOut;
use super::error::ApiError;
use super::extract::AdminAccess;
use super::state::AppState;
use crate::rebuild::replay::{self, Filter, Sink};
use crate::rebuild::{RebuildError, Request, defs};

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct RebuildIn {
    /// Metrics to rebuild (default: every declared one).
    #[serde(default)]
    metrics: Vec<String>,
    /// Rebuild the last DURATION (e.g. `7d`), from the start of its first UTC day.
    since: Option<String>,
    /// Rebuild from this time (RFC 3339 or epoch ms), from the start of its UTC day.
    from: Option<String>,
}

fn body<T: serde::de::DeserializeOwned + Default>(b: &[u8]) -> Result<T, ApiError> {
    if b.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(b).map_err(|e| ApiError::BadRequest(format!("bad request body: {e}")))
}

/// Starts rebuilding rollups from the raw events, in the background; the server keeps ingesting
/// and answering (from the old rows until the rebuilt ones replace them in one transaction).
#[utoipa::path(post, path = "/api/v1/admin/rollups/rebuild", tag = "admin", request_body = RebuildIn,
    security(("bearer" = ["admin"])),
    responses(
        (status = 202, description = "The rebuild started; see GET /api/v1/admin/rollups", body = serde_json::Value),
        (status = 400, description = "A bad body", body = ErrorOut),
        (status = 401, description = "No valid token", body = ErrorOut),
        (status = 403, description = "The token lacks the scope", body = ErrorOut),
        (status = 409, description = "A rebuild is already running", body = ErrorOut),
        (status = 422, description = "An undeclared metric, or a time the raw events no longer reach", body = ErrorOut),
        (status = 503, description = "The store is unavailable; retry", body = ErrorOut),
    ))]
pub async fn post_rebuild(
    _: AdminAccess,
    State(state): State<AppState>,
    b: axum::body::Bytes,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let input: RebuildIn = body(&b)?;
    let req = Request::parse(input.metrics, input.since.as_deref(), input.from.as_deref(), crate::clock::now_ms())
        .map_err(ApiError::BadRequest)?;
    let cache = state.cache.clone();
    let started =
        state.rebuilds.start(state.store.clone(), state.settings.clone(), req, move || cache.invalidate_all());
    match started.await {
        Ok(job) => {
            Ok((StatusCode::ACCEPTED, Json(serde_json::json!({ "job": job, "status": "/api/v1/admin/rollups" }))))
        }
        Err(RebuildError::Refused(why)) => Err(ApiError::Status(StatusCode::UNPROCESSABLE_ENTITY, why)),
        Err(e @ RebuildError::Busy(_)) => Err(ApiError::Status(StatusCode::CONFLICT, e.to_string())),
        Err(RebuildError::Store(e)) => Err(e.into()),
        Err(RebuildError::Other(e)) => Err(ApiError::Internal(e)),
    }
}

#[derive(Serialize, ToSchema)]
pub struct MetricStateOut {
    name: String,
    /// `current`, `stale` (new or changed, not rebuilt) or `removed` (no longer declared).
    state: String,
    fingerprint: String,
}

/// The metrics' state against their definitions, the latest rebuild jobs, and this server's
/// running rebuild (events read, events/s, ETA).
#[utoipa::path(get, path = "/api/v1/admin/rollups", tag = "admin", security(("bearer" = ["admin"])),
    responses(
        (status = 200, description = "Metrics and rebuilds", body = serde_json::Value),
        (status = 401, description = "No valid token", body = ErrorOut),
        (status = 403, description = "The token lacks the scope", body = ErrorOut),
        (status = 503, description = "The store is unavailable; retry", body = ErrorOut),
    ))]
pub async fn get_rollups(_: AdminAccess, State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    // This server's status first: a rebuild it reports finished has swapped, so the records and
    // jobs read after it show that swap (read in the other order, a rebuild finishing between
    // the reads was reported done beside its metric still stale).
    let server = state.rebuilds.status();
    let records = state.store.metric_records().await?;
    let metrics: Vec<MetricStateOut> = records
        .into_iter()
        .map(|r| {
            let declared = state.settings.metrics.iter().find(|m| m.name == r.name);
            let state = match declared {
                None => "removed".to_string(),
                Some(m) if defs::fingerprint(m) != r.fingerprint => defs::STALE.to_string(),
                Some(_) => r.state,
            };
            MetricStateOut { name: r.name, state, fingerprint: r.fingerprint }
        })
        .collect();
    let jobs = state.store.rebuild_jobs(5).await?;
    Ok(Json(serde_json::json!({ "metrics": metrics, "jobs": jobs, "server": server })))
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct ReplayIn {
    /// Only dead letters whose reason contains this text.
    reason_contains: Option<String>,
    /// Only dead letters received in the last DURATION (e.g. `24h`).
    since: Option<String>,
    /// Count what would be replayed; change nothing.
    #[serde(default)]
    dry_run: bool,
}

/// Re-validates dead letters against today's schemas; those that pass are ingested with their
/// original time and removed from the dead letters, in one transaction per batch (exactly once).
#[utoipa::path(post, path = "/api/v1/admin/dead-letters/replay", tag = "admin", request_body = ReplayIn,
    security(("bearer" = ["admin"])),
    responses(
        (status = 200, description = "What was replayed and what is still refused", body = replay::Report),
        (status = 400, description = "A bad body", body = ErrorOut),
        (status = 401, description = "No valid token", body = ErrorOut),
        (status = 403, description = "The token lacks the scope", body = ErrorOut),
        (status = 503, description = "The store is unavailable; retry", body = ErrorOut),
    ))]
pub async fn post_replay(
    _: AdminAccess,
    State(state): State<AppState>,
    b: axum::body::Bytes,
) -> Result<Json<replay::Report>, ApiError> {
    let input: ReplayIn = body(&b)?;
    let since_ms = input
        .since
        .as_deref()
        .map(|s| crate::rebuild::since_ms(s, crate::clock::now_ms()))
        .transpose()
        .map_err(ApiError::BadRequest)?;
    let filter = Filter { reason_contains: input.reason_contains, since_ms, dry_run: input.dry_run };
    let report = replay::replay(&*state.store, Sink::Writer(&state.writer), &state.settings, &filter).await?;
    Ok(Json(report))
}
