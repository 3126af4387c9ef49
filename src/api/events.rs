//! `POST /api/v1/events` (ingest) and `GET /api/v1/events/raw` (the raw events as stored).
//!
//! Ingest answers only after the accepted events (and the rejected ones, as dead letters) are
//! committed. The token is checked before the body is read, a declared `Content-Length` over the
//! limit is refused before reading it, and `100 Continue` is only sent (by hyper, when the body
//! is first read) once both have passed.
//!
//! A producer that may retry (a timeout, a dropped connection, a restarted server) sends an
//! `Idempotency-Key` header: the key is committed with the batch, once per token, and a request
//! repeating a committed key gets the first answer again (`Idempotent-Replayed: true`) without
//! counting anything twice; the same key with another body is a 422. While the first is still
//! being committed, a repeat gets `409`.

use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::{IntoParams, ToSchema};

use super::doc::ErrorOut;
use super::error::ApiError;
use super::extract::{IngestAccess, Query, ReadAccess};
use super::state::AppState;
use crate::event::{BodyFormat, split_body};
use crate::ingest::writer::WriteError;
use crate::ingest::{Origin, Pending, take_events};
use crate::storage::{IdempotencyRecord, StoredAnswer, raw_codec};

/// The request header that makes a retry safe (after the IETF draft of the same name).
const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Longest idempotency key accepted.
const MAX_KEY_LEN: usize = 255;
/// Bodies larger than this are parsed on the blocking pool, so a big batch never stalls the
/// runtime workers that answer queries.
const INLINE_PARSE_BYTES: usize = 32 * 1024;
/// How long a request waits for room in the ingest budget before it is answered 503.
const GATE_WAIT: Duration = Duration::from_millis(500);
/// Bytes a request is charged, per byte of its declared length, for the batch parsing will make,
/// on top of the body itself: a parsed batch waits for the writer holding several times its body (each event's one-second
/// deltas, the compressed raw block), beside the connection's read buffer. Settled to the parsed
/// size once known ([`settle_parsed`]). Charging the body alone let a backlog of 256 MB of
/// bodies hold 2.5 GB of heap (bench/README.md, "Memory under overload").
const PARSED_PER_BODY_BYTE: u64 = 4;
/// Most rejected events listed one by one in an answer; the rest are counted by reason.
const MAX_LISTED_ERRORS: usize = 100;

/// What was accepted and rejected (rejected events are kept as dead letters).
#[derive(Debug, Serialize, ToSchema)]
pub struct IngestOut {
    pub accepted: usize,
    pub rejected: usize,
    /// The first rejected events, by index in the body, with their reasons.
    pub errors: Vec<EventError>,
    /// Rejected events per kind of reason (when any were rejected).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub rejected_by_reason: std::collections::BTreeMap<&'static str, usize>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventError {
    pub index: usize,
    pub reason: String,
}

/// Sends events: one JSON object, an array of objects, or NDJSON (`Content-Type:
/// application/x-ndjson`). Answered once the accepted events are durable. An `Idempotency-Key`
/// header makes a retry count once.
#[utoipa::path(post, path = "/api/v1/events", tag = "events",
    params(("Idempotency-Key" = Option<String>, Header, description = "1-255 visible ASCII characters naming this request")),
    request_body(description = "An event object, an array of them, or NDJSON lines", content(
        (serde_json::Value = "application/json"),
        (String = "application/x-ndjson"),
    )),
    security(("bearer" = ["ingest"])),
    responses(
        (status = 200, description = "Committed (a replay carries `Idempotent-Replayed: true`)", body = IngestOut),
        (status = 400, description = "Not JSON, or a bad header", body = ErrorOut),
        (status = 401, description = "No valid token", body = ErrorOut),
        (status = 403, description = "The token lacks the scope", body = ErrorOut),
        (status = 408, description = "The body was sent too slowly", body = ErrorOut),
        (status = 409, description = "The same Idempotency-Key is still being committed", body = ErrorOut),
        (status = 413, description = "Over the body or event-count limit", body = ErrorOut),
        (status = 422, description = "The Idempotency-Key was used with another body, or the store refused the events", body = ErrorOut),
        (status = 503, description = "The store is unavailable; retry with the same Idempotency-Key", body = ErrorOut),
        (status = 507, description = "The disk holding the store is below its free-space floor", body = ErrorOut),
    ))]
pub async fn ingest_events(
    access: IngestAccess,
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let token = access.token;
    let key = idempotency_key(&headers)?;
    let format = body_format(&headers);
    let (body, mut in_flight) = read_body(&state, &headers, body).await?;
    let body_len = body.len();
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
    settle_parsed(&state, &mut in_flight, body_len, pending.heap_bytes()).await?;
    if let (Some(key), Some(fingerprint)) = (&key, &fingerprint) {
        let answer = serde_json::to_string(&out).map_err(|e| ApiError::Internal(e.into()))?;
        pending.idempotency = Some(IdempotencyRecord {
            scope: token.to_string(),
            key: key.clone(),
            answer,
            at_ms: crate::clock::now_ms(),
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
        Err(WriteError::DiskLow(why)) => Err(ApiError::Status(StatusCode::INSUFFICIENT_STORAGE, why)),
        Err(WriteError::Rejected(e)) => {
            tracing::warn!(error = %e, "the store refused an ingest request's events");
            Err(ApiError::Status(
                StatusCode::UNPROCESSABLE_ENTITY,
                "the store refused this request's events; nothing of it was stored (see the server log)".into(),
            ))
        }
        Err(WriteError::Closed) => Err(ApiError::Unavailable("the server is shutting down; retry shortly".into())),
        Err(e) => {
            tracing::warn!(error = %e, "an ingest request was not committed");
            Err(ApiError::Unavailable("the events could not be stored now; retry shortly".into()))
        }
    }
}

/// NDJSON when the content type says so, else one JSON object or array.
fn body_format(headers: &HeaderMap) -> BodyFormat {
    let ndjson = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/x-ndjson") || ct.starts_with("application/jsonl"));
    if ndjson { BodyFormat::Ndjson } else { BodyFormat::Json }
}

/// The request's share of the ingest budget (`http.max_inflight_ingest_bytes`), in KiB: its
/// body, which the connection's read buffer keeps holding, and what parsing it made.
fn budget_kib(state: &AppState, bytes: u64) -> u32 {
    let all = u32::try_from(state.settings.http.max_inflight_ingest_bytes.div_ceil(1024)).unwrap_or(u32::MAX);
    u32::try_from(bytes.div_ceil(1024).max(1)).unwrap_or(u32::MAX).min(all)
}

/// Settles a request's charge to its body and parsed batch, once parsed: gives back what the
/// estimate made before parsing held beyond that, or waits (as at the gate) for what it lacks.
async fn settle_parsed(
    state: &AppState,
    permit: &mut tokio::sync::OwnedSemaphorePermit,
    body: usize,
    parsed: usize,
) -> Result<(), ApiError> {
    let need = budget_kib(state, (body + parsed) as u64) as usize;
    let held = permit.num_permits();
    if need < held {
        drop(permit.split(held - need));
    } else if need > held {
        let more = tokio::time::timeout(GATE_WAIT, state.ingest_gate.clone().acquire_many_owned((need - held) as u32))
            .await
            .map_err(|_| ApiError::Unavailable("too much ingest in flight; retry in a moment".into()))?
            .map_err(|e| ApiError::Internal(e.into()))?;
        permit.merge(more);
    }
    Ok(())
}

/// The body, at most `ingest.max_body_bytes` of it: a larger declared length is refused before
/// anything is read. Reading it must keep up `http.min_body_rate` (after `http.body_timeout`),
/// and it needs room in the ingest budget (`http.max_inflight_ingest_bytes`) for the body and an
/// estimate of its parsed batch, held until the request is answered: past the budget, ingest
/// answers 503 rather than queueing without bound.
async fn read_body(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Bytes, tokio::sync::OwnedSemaphorePermit), ApiError> {
    let limit = state.settings.ingest.max_body_bytes;
    let too_large =
        || ApiError::Status(StatusCode::PAYLOAD_TOO_LARGE, format!("the body is over the limit of {limit} bytes"));
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    // A body of unknown length is charged the limit (and settled once parsed), not five times
    // it: that would let a single chunked upload take the whole budget.
    let size = declared.map_or(limit as u64, |n| n.saturating_mul(1 + PARSED_PER_BODY_BYTE));
    let kib = budget_kib(state, size);
    let gate = state.ingest_gate.clone();
    let permit = tokio::time::timeout(GATE_WAIT, gate.acquire_many_owned(kib))
        .await
        .map_err(|_| ApiError::Unavailable("too much ingest in flight; retry in a moment".into()))?
        .map_err(|e| ApiError::Internal(e.into()))?;
    let http = &state.settings.http;
    let bytes = read_paced(body, limit, http.body_timeout, http.min_body_rate.max(1)).await.map_err(|e| match e {
        PacedError::TooLarge => too_large(),
        PacedError::TooSlow(received) => ApiError::Status(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the body came slower than {} bytes/s after the first {:?} ({received} bytes received)",
                http.min_body_rate, http.body_timeout
            ),
        ),
        PacedError::Read(e) => ApiError::BadRequest(format!("the body could not be read: {e}")),
    })?;
    Ok((bytes, permit))
}

enum PacedError {
    TooLarge,
    /// The bytes received before the body fell behind.
    TooSlow(usize),
    Read(axum::Error),
}

/// Reads a body of at most `limit` bytes that keeps up `min_rate` bytes/s after a `grace`: the
/// next bytes are due by `grace + received / min_rate` from the start, so a client trickling a
/// large declared body is cut off soon after the grace, not after the time its declared size
/// would take at the minimum rate.
async fn read_paced(mut body: Body, limit: usize, grace: Duration, min_rate: u64) -> Result<Bytes, PacedError> {
    use http_body_util::BodyExt;
    let start = tokio::time::Instant::now();
    let mut buf = bytes::BytesMut::new();
    loop {
        let due = start + grace + Duration::from_secs_f64((buf.len() + 1) as f64 / min_rate as f64);
        match tokio::time::timeout_at(due, body.frame()).await {
            Err(_) => return Err(PacedError::TooSlow(buf.len())),
            Ok(None) => return Ok(buf.freeze()),
            Ok(Some(Err(e))) => {
                let limited = std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
                return Err(if limited { PacedError::TooLarge } else { PacedError::Read(e) });
            }
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    if buf.len() + data.len() > limit {
                        return Err(PacedError::TooLarge);
                    }
                    buf.extend_from_slice(&data);
                }
            }
        }
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
    let limit = state.settings.ingest.max_events_per_request;
    let items = split_body(body, format, limit).map_err(|e| match e {
        crate::event::BodyError::TooManyEvents(_) => ApiError::Status(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()),
        e => ApiError::BadRequest(e.to_string()),
    })?;
    let received = crate::clock::now_ms();
    let origin = Origin { source: "http", source_ms: Some(received), ..Origin::default() };
    let (pending, rejected) = take_events(&state.validator, &state.metrics, &items, &origin, received);
    let mut out = IngestOut {
        accepted: pending.accepted(),
        rejected: rejected.len(),
        errors: Vec::new(),
        rejected_by_reason: Default::default(),
    };
    for (index, reason) in rejected {
        *out.rejected_by_reason.entry(reason.class()).or_default() += 1;
        if out.errors.len() < MAX_LISTED_ERRORS {
            out.errors.push(EventError { index, reason: reason.to_string() });
        }
    }
    Ok((pending, out))
}

/// Most items one page returns.
const MAX_PAGE: u32 = 1000;
/// Most raw blocks one raw-events request decompresses.
const MAX_RAW_BLOCKS: u32 = 64;
/// Most bytes of raw events in one page.
const MAX_RAW_PAGE_BYTES: usize = 4 * 1024 * 1024;

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RawParams {
    /// The event name (required).
    name: Option<String>,
    /// Events per page, 1 to 1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// Storage blocks below this id (older).
    before: Option<i64>,
    /// A `next_cursor` of an earlier page.
    cursor: Option<String>,
}

/// A page of raw events, newest first, each as stored.
#[derive(Serialize, ToSchema)]
pub struct RawEventsOut {
    name: String,
    /// `{"t": epoch ms, "src": source, ["k", "p", "o": Kafka key, partition, offset,] "e": the event as sent}`.
    events: Vec<serde_json::Value>,
    /// Where the next page starts (null at the end).
    next_cursor: Option<String>,
}

/// A page size: 1 to [`MAX_PAGE`], 50 by default.
pub fn page_limit(limit: Option<u32>) -> Result<u32, ApiError> {
    match limit.unwrap_or(50) {
        0 => Err(ApiError::BadRequest("limit must be at least 1".into())),
        n if n > MAX_PAGE => Err(ApiError::BadRequest(format!("limit must be at most {MAX_PAGE}"))),
        n => Ok(n),
    }
}

/// Where a page of raw events resumes: block `id`, after its first `skip` events (newest first).
fn parse_cursor(c: &str) -> Result<(i64, usize), ApiError> {
    let bad = || ApiError::BadRequest(format!("`cursor` must be a value of `next_cursor`, got {c:?}"));
    let (id, skip) = c.split_once(':').ok_or_else(bad)?;
    Ok((id.parse().map_err(|_| bad())?, skip.parse().map_err(|_| bad())?))
}

/// Raw events of one name, newest first, exactly `limit` of them (fewer at the end), each the
/// stored line verbatim (`{"t":…,"src":…,"e":<the event as sent>}`). `next_cursor` resumes after
/// the last one, inside its storage block if need be.
#[utoipa::path(get, path = "/api/v1/events/raw", tag = "events", params(RawParams),
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "A page of raw events", body = RawEventsOut),
        (status = 400, description = "A bad parameter", body = ErrorOut),
        (status = 401, description = "No valid token", body = ErrorOut),
        (status = 403, description = "The token lacks the scope", body = ErrorOut),
        (status = 503, description = "The store is unavailable; retry", body = ErrorOut),
    ))]
pub async fn get_raw_events(
    _: ReadAccess,
    State(state): State<AppState>,
    Query(p): Query<RawParams>,
) -> Result<Response, ApiError> {
    let limit = page_limit(p.limit)? as usize;
    let name = p.name.ok_or_else(|| ApiError::BadRequest("the `name` parameter (an event name) is required".into()))?;
    let (mut before, resume) = match (&p.cursor, p.before) {
        (Some(_), Some(_)) => return Err(ApiError::BadRequest("give `cursor` or `before`, not both".into())),
        (Some(c), None) => {
            let (id, skip) = parse_cursor(c)?;
            (Some(id.saturating_add(1)), Some((id, skip)))
        }
        (None, b) => (b, None),
    };
    // Written by hand from the stored lines: they are JSON already, and re-parsing them would cost
    // time, hit serde_json's nesting limit on deeply nested events, or round numbers through f64.
    let mut events: Vec<u8> = Vec::new();
    let (mut taken, mut scanned, mut cursor) = (0usize, 0u32, None);
    'blocks: while scanned < MAX_RAW_BLOCKS && taken < limit {
        let blocks = state.store.raw_blocks(&name, before, 8).await?;
        if blocks.is_empty() {
            break;
        }
        for (id, b) in blocks {
            scanned += 1;
            before = Some(id);
            let text = raw_codec::decode(&b.data, raw_codec::MAX_BLOCK_BYTES)
                .map_err(|e| ApiError::Internal(anyhow::anyhow!("raw block {id} is unreadable: {e}")))?;
            let lines: Vec<&[u8]> = text.split(|&c| c == b'\n').filter(|l| !l.is_empty()).collect();
            // Resuming inside this block (unless retention removed it meanwhile).
            let start = resume.filter(|(rid, _)| *rid == id).map_or(0, |(_, k)| k);
            for (i, line) in lines.iter().rev().enumerate().skip(start) {
                if taken == limit || (taken > 0 && events.len() + line.len() > MAX_RAW_PAGE_BYTES) {
                    cursor = Some(format!("{id}:{i}"));
                    break 'blocks;
                }
                events.push(if taken == 0 { b'[' } else { b',' });
                events.extend_from_slice(line);
                taken += 1;
            }
            // This block is used up: the next page starts with the block before it.
            cursor = Some(format!("{id}:{}", lines.len()));
            if taken == limit {
                break 'blocks;
            }
        }
    }
    if taken == 0 {
        events.push(b'[');
        cursor = None;
    }
    events.push(b']');
    let mut body = Vec::with_capacity(events.len() + 128);
    body.extend_from_slice(b"{\"name\":");
    serde_json::to_writer(&mut body, &name).map_err(|e| ApiError::Internal(e.into()))?;
    body.extend_from_slice(b",\"events\":");
    body.extend_from_slice(&events);
    body.extend_from_slice(b",\"next_cursor\":");
    serde_json::to_writer(&mut body, &cursor).map_err(|e| ApiError::Internal(e.into()))?;
    body.push(b'}');
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}
