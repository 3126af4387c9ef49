//! Admin routes (scope `admin`): dead letters, counters, Kafka lag.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};

use super::doc::ErrorOut;
use super::error::ApiError;
use super::events::page_limit;
use super::extract::{AdminAccess, Query};
use super::state::AppState;
use crate::ingest::kafka::{LagError, source_name, topic_lag};

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Items per page, 1 to 1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// Dead letters with ids below this (the `next_before` of an earlier page).
    before: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct DeadLetterOut {
    id: i64,
    received_ms: i64,
    received_at: Option<String>,
    source: String,
    reason: String,
    topic: Option<String>,
    partition: Option<i32>,
    offset: Option<i64>,
    /// The record as text when it is UTF-8 (else `raw_hex`), cut to 16 KiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    raw: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    raw_hex: Option<String>,
    /// The record's size in bytes when `raw`/`raw_hex` shows only its beginning.
    #[serde(skip_serializing_if = "Option::is_none")]
    raw_truncated_from: Option<usize>,
}

#[derive(Serialize, ToSchema)]
pub struct DeadLettersOut {
    dead_letters: Vec<DeadLetterOut>,
    next_before: Option<i64>,
}

impl From<crate::storage::DeadLetter> for DeadLetterOut {
    fn from(d: crate::storage::DeadLetter) -> Self {
        let l = d.letter;
        let full = usize::try_from(d.raw_size).unwrap_or(usize::MAX);
        let mut shown = &l.raw[..];
        // Cut on a character boundary so a UTF-8 record stays text: a character cut in two at the
        // end is the only error (`error_len` is None) to drop.
        if let Err(e) = std::str::from_utf8(shown)
            && e.error_len().is_none()
        {
            shown = &shown[..e.valid_up_to()];
        }
        let (raw, raw_hex) = match std::str::from_utf8(shown) {
            Ok(s) => (Some(s.to_string()), None),
            Err(_) => (None, Some(hex::encode(shown))),
        };
        Self {
            id: d.id,
            received_ms: l.received_ms,
            received_at: chrono::DateTime::from_timestamp_millis(l.received_ms).map(|t| t.to_rfc3339()),
            source: l.source,
            reason: l.reason,
            topic: l.topic,
            partition: l.partition,
            offset: l.offset,
            raw,
            raw_hex,
            raw_truncated_from: (shown.len() < full).then_some(full),
        }
    }
}

/// Rejected events, newest first, with their reasons and raw bytes.
#[utoipa::path(get, path = "/api/v1/dead-letters", tag = "admin", params(PageParams),
    security(("bearer" = ["admin"])),
    responses(
        (status = 200, description = "A page of dead letters", body = DeadLettersOut),
        (status = 400, description = "A bad parameter", body = ErrorOut),
        (status = 401, description = "No valid token", body = ErrorOut),
        (status = 403, description = "The token lacks the scope", body = ErrorOut),
        (status = 503, description = "The store is unavailable; retry", body = ErrorOut),
    ))]
pub async fn get_dead_letters(
    _: AdminAccess,
    State(state): State<AppState>,
    Query(p): Query<PageParams>,
) -> Result<Json<DeadLettersOut>, ApiError> {
    let limit = page_limit(p.limit)?;
    let letters = state.store.dead_letters(p.before, limit).await?;
    let next = (letters.len() as u32 == limit).then(|| letters.last().map(|l| l.id)).flatten();
    Ok(Json(DeadLettersOut { dead_letters: letters.into_iter().map(DeadLetterOut::from).collect(), next_before: next }))
}

/// Counters since start: the writer's (how well group commit groups) and the read cache's.
#[utoipa::path(get, path = "/api/v1/admin/stats", tag = "admin", security(("bearer" = ["admin"])),
    responses(
        (status = 200, description = "Counters since start", body = serde_json::Value),
        (status = 400, description = "A bad parameter", body = ErrorOut),
        (status = 401, description = "No valid token", body = ErrorOut),
        (status = 403, description = "The token lacks the scope", body = ErrorOut),
        (status = 503, description = "The store is unavailable; retry", body = ErrorOut),
    ))]
pub async fn get_stats(_: AdminAccess, State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "writer": state.writer.stats(), "cache": state.cache.stats, "index": state.cache.index_state() }))
}

/// Per-partition lag of the configured topic: the broker's high watermark against the store's
/// offsets.
#[utoipa::path(get, path = "/api/v1/admin/kafka/lag", tag = "admin", security(("bearer" = ["admin"])),
    responses(
        (status = 200, description = "Lag per partition", body = serde_json::Value),
        (status = 400, description = "A bad parameter", body = ErrorOut),
        (status = 401, description = "No valid token", body = ErrorOut),
        (status = 403, description = "The token lacks the scope", body = ErrorOut),
        (status = 503, description = "The store is unavailable; retry", body = ErrorOut),
        (status = 404, description = "No Kafka brokers are configured", body = ErrorOut),
    ))]
pub async fn get_kafka_lag(_: AdminAccess, State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let k = &state.settings.kafka;
    if k.brokers.is_empty() {
        return Err(ApiError::NotFound("no Kafka brokers are configured".into()));
    }
    match topic_lag(k, &*state.store).await {
        Ok(lag) => {
            let total: i64 = lag.iter().map(|l| l.lag).sum();
            Ok(Json(json!({
                "topic": k.topic,
                "source": source_name(&k.topic),
                "total_lag": total,
                "partitions": lag,
            })))
        }
        Err(LagError::Store(e)) => Err(e.into()),
        Err(e) => Err(ApiError::Unavailable(e.to_string())),
    }
}
