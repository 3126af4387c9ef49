//! `POST /api/v1/events`: one JSON object, a JSON array of objects, or NDJSON.
//!
//! Answers only after the accepted events (and the rejected ones, as dead letters) are committed.
//!
//! A producer that may retry (a timeout, a dropped connection, a restarted server) sends an
//! `Idempotency-Key` header: the key is committed with the batch, once per token, and a request
//! repeating a committed key gets the first answer again (`Idempotent-Replayed: true`) without
//! counting anything twice. While the first is still being committed, a repeat gets `409`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::writer::WriteError;
use super::{Origin, Pending, now_ms};
use crate::api::{ApiError, AppState};
use crate::auth::Scope;
use crate::event::{BodyFormat, split_body};
use crate::storage::{IdempotencyRecord, StoredAnswer};
use sha2::{Digest, Sha256};

/// The request header that makes a retry safe (after the IETF draft of the same name).
const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Longest idempotency key accepted.
const MAX_KEY_LEN: usize = 255;

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
) -> Result<Response, ApiError> {
    let token = state.authorize(&headers, Scope::Ingest)?;
    let key = idempotency_key(&headers)?;
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
    let fingerprint = key.as_ref().map(|_| fingerprint(format, &body));
    if let (Some(key), Some(fp)) = (&key, &fingerprint)
        && let Some(stored) = state.store.idempotent_answer(&token, key).await?
    {
        return replay(stored, fp);
    }

    // The writer holds a commit back briefly for batches being parsed, so they share it.
    let announced = state.writer.announce();
    let big = body.len() > INLINE_PARSE_BYTES;
    let parse_state = state.clone();
    let parse = move || parse_body(&parse_state, &body, format);
    let (mut pending, out) = if big {
        tokio::task::spawn_blocking(parse).await.map_err(|e| ApiError::Internal(e.into()))??
    } else {
        parse()?
    };
    if let (Some(key), Some(fingerprint)) = (&key, &fingerprint) {
        let answer = serde_json::to_string(&out).map_err(|e| ApiError::Internal(e.into()))?;
        pending.idempotency = Some(IdempotencyRecord {
            scope: token.clone(),
            key: key.clone(),
            answer,
            at_ms: now_ms(),
            fingerprint: fingerprint.clone(),
        });
    }
    match state.writer.submit_announced(pending, announced).await {
        Ok(()) => Ok(Json(out).into_response()),
        Err(WriteError::Duplicate) => {
            let (key, fingerprint) = (key.unwrap_or_default(), fingerprint.unwrap_or_default());
            match state.store.idempotent_answer(&token, &key).await? {
                Some(stored) => replay(stored, &fingerprint),
                None => Err(in_progress()),
            }
        }
        Err(WriteError::InProgress) => Err(in_progress()),
        Err(WriteError::Closed) => Err(ApiError::Unavailable("shutting down".into())),
        Err(e) => Err(ApiError::Unavailable(e.to_string())),
    }
}

/// The request's `Idempotency-Key`, checked: 1 to 255 visible ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get(IDEMPOTENCY_KEY) else { return Ok(None) };
    let bytes = v.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_KEY_LEN || !bytes.iter().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::BadRequest(format!(
            "Idempotency-Key must be 1 to {MAX_KEY_LEN} visible ASCII characters (no spaces)"
        )));
    }
    Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
}

/// A digest of what a request asks for: its body and how the body is to be read.
fn fingerprint(format: BodyFormat, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(if format == BodyFormat::Ndjson { &b"ndjson\n"[..] } else { &b"json\n"[..] });
    h.update(body);
    hex::encode(h.finalize())
}

/// The answer a request with the same key got when it was committed; or 422 when that request had
/// another body (the IETF draft's answer: a key names one request, never two).
fn replay(stored: StoredAnswer, fingerprint: &str) -> Result<Response, ApiError> {
    if stored.fingerprint.as_deref().is_some_and(|f| f != fingerprint) {
        return Err(ApiError::Status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "this Idempotency-Key was used before with a different request body; a new request needs a new key".into(),
        ));
    }
    let mut resp =
        ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], stored.answer).into_response();
    resp.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    Ok(resp)
}

fn in_progress() -> ApiError {
    ApiError::Status(
        StatusCode::CONFLICT,
        "a request with this Idempotency-Key is still being committed; retry it shortly".into(),
    )
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
