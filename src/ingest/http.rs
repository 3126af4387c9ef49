//! `POST /api/v1/events`: one JSON object, a JSON array of objects, or NDJSON.
//!
//! Answers only after the accepted events (and the rejected ones, as dead letters) are committed.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use serde::Serialize;

use super::writer::WriteError;
use super::{Origin, Pending, now_ms};
use crate::api::{ApiError, AppState};
use crate::auth::Scope;
use crate::event::{BodyFormat, split_body};

/// Bodies larger than this are parsed on the blocking pool, so a big batch never stalls the
/// runtime workers that answer queries.
const INLINE_PARSE_BYTES: usize = 32 * 1024;

#[derive(Debug, Serialize)]
pub struct IngestOut {
    pub accepted: usize,
    pub rejected: usize,
    pub errors: Vec<EventError>,
}

#[derive(Debug, Serialize)]
pub struct EventError {
    pub index: usize,
    pub reason: String,
}

pub async fn ingest_events(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<IngestOut>, ApiError> {
    state.authorize(&headers, Scope::Ingest)?;
    let body = body.map_err(|r| match r.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::Status(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is over the limit of {} bytes", state.settings.ingest.max_body_bytes),
        ),
        s => ApiError::Status(s, r.body_text()),
    })?;
    let ndjson = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/x-ndjson") || ct.starts_with("application/jsonl"));
    let format = if ndjson { BodyFormat::Ndjson } else { BodyFormat::Json };

    // The writer holds a commit back briefly for batches being parsed, so they share it.
    let announced = state.writer.announce();
    let big = body.len() > INLINE_PARSE_BYTES;
    let parse_state = state.clone();
    let parse = move || parse_body(&parse_state, &body, format);
    let (pending, out) = if big {
        tokio::task::spawn_blocking(parse).await.map_err(|e| ApiError::Internal(e.into()))??
    } else {
        parse()?
    };
    state.writer.submit_announced(pending, announced).await.map_err(|e| match e {
        WriteError::Closed => ApiError::Unavailable("shutting down".into()),
        e => ApiError::Unavailable(e.to_string()),
    })?;
    Ok(Json(out))
}

fn parse_body(state: &AppState, body: &[u8], format: BodyFormat) -> Result<(Pending, IngestOut), ApiError> {
    let items = split_body(body, format).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let received = now_ms();
    let origin = Origin { source: "http", ..Origin::default() };
    let mut pending = Pending::default();
    let mut errors = Vec::new();
    for (index, raw) in items.iter().enumerate() {
        match state.validator.validate(raw, received, received) {
            Ok(event) => pending.accept(&state.metrics, event, &origin),
            Err(reason) => {
                pending.reject(raw, &reason, &origin, received);
                errors.push(EventError { index, reason: reason.to_string() });
            }
        }
    }
    pending.seal();
    let out = IngestOut { accepted: pending.accepted(), rejected: errors.len(), errors };
    Ok((pending, out))
}
