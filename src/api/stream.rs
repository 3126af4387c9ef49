//! `GET /api/v1/stream`: figures pushed as they change (Server-Sent Events).
//!
//! A stream holds subscriptions, each a GET path of the API (`sub=NAME:PATH`, URL-encoded, up to
//! [`MAX_SUBS`]); or one aggregate given as `metric`, `dim`, `value`, `window`. It sends each
//! subscription's answer at once, then again whenever it changes: re-evaluated after a local
//! commit (coalesced: evaluations at least `api.stream_coalesce`, 50 ms, apart, so at most 20
//! events a second per subscription) and when each second starts (trailing windows slide), an
//! event sent only when the answer differs from the last one sent. So a slow reader is never
//! queued for: when it reads again it gets the latest figures. `id:` counts events; a client
//! resuming with `Last-Event-ID` continues the count and gets the current figures.
//!
//! Each token has at most [`MAX_STREAMS_PER_TOKEN`] streams open (429 beyond).

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;

use super::doc::ErrorOut;
use super::error::ApiError;
use super::extract::ReadAccess;
use super::internal;
use super::live::MAX_STREAMS_PER_TOKEN;
use super::state::AppState;

/// Most subscriptions on one stream.
pub const MAX_SUBS: usize = 32;
/// How often a comment keeps an idle stream (and the proxies on its way) alive.
const HEARTBEAT: Duration = Duration::from_secs(15);

/// The time until the next whole second of the wall clock, and a little more (so that a window
/// trailing to "now" has moved when it is asked again).
fn until_next_second() -> Duration {
    let ms = crate::clock::now_ms().rem_euclid(1000);
    Duration::from_millis((1000 - ms) as u64 + 5)
}

/// The subscriptions a query string asks for: `(name, path)`.
fn subscriptions(query: &str) -> Result<Vec<(String, String)>, ApiError> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(query).map_err(|e| ApiError::BadRequest(format!("bad query string: {e}")))?;
    let mut subs = Vec::new();
    let mut single: Vec<(String, String)> = Vec::new();
    for (k, v) in pairs {
        match k.as_str() {
            "sub" => {
                let (name, path) = v.split_once(':').ok_or_else(|| {
                    ApiError::BadRequest(format!("`sub` must be NAME:PATH (a GET path of the API), got {v:?}"))
                })?;
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
                    return Err(ApiError::BadRequest(format!(
                        "a subscription's name is letters, digits, - and _: {name:?}"
                    )));
                }
                if !internal::allowed(path) {
                    return Err(ApiError::BadRequest(format!("{path:?} is not a GET path of the data API")));
                }
                subs.push((name.to_string(), path.to_string()));
            }
            "metric" | "dim" | "value" | "window" | "from" | "to" => single.push((k, v)),
            other => return Err(ApiError::BadRequest(format!("unknown parameter {other:?}"))),
        }
    }
    if !single.is_empty() {
        let metric = single.iter().find(|(k, _)| k == "metric").map(|(_, v)| v.clone()).ok_or_else(|| {
            ApiError::BadRequest("give `metric` (with `dim`, `value`, `window`), or `sub=NAME:PATH`".into())
        })?;
        let rest: Vec<(String, String)> = single.into_iter().filter(|(k, _)| k != "metric").collect();
        let q = serde_urlencoded::to_string(&rest).map_err(|e| ApiError::Internal(e.into()))?;
        let metric = serde_urlencoded::to_string([("m", &metric)]).map_err(|e| ApiError::Internal(e.into()))?;
        subs.push(("aggregate".into(), format!("/api/v1/metrics/{}?{q}", &metric[2..])));
    }
    if subs.is_empty() {
        return Err(ApiError::BadRequest("subscribe to something: `sub=NAME:PATH` or `metric=…`".into()));
    }
    if subs.len() > MAX_SUBS {
        return Err(ApiError::BadRequest(format!("at most {MAX_SUBS} subscriptions on one stream")));
    }
    Ok(subs)
}

/// Figures pushed as they change (Server-Sent Events): `event:` the subscription's name, `data:`
/// the same JSON as its GET path, `id:` a count that `Last-Event-ID` resumes.
#[utoipa::path(get, path = "/api/v1/stream", tag = "metrics",
    params(
        ("sub" = Option<Vec<String>>, Query, description = "NAME:PATH, a GET path of the API (repeatable)"),
        ("metric" = Option<String>, Query, description = "Or one aggregate: a metric…"),
        ("dim" = Option<String>, Query, description = "…its dimension…"),
        ("value" = Option<String>, Query, description = "…and value…"),
        ("window" = Option<String>, Query, description = "…over a trailing window"),
        ("Last-Event-ID" = Option<String>, Header, description = "The last id received, to resume"),
    ),
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "An event stream", content_type = "text/event-stream", body = String),
        (status = 400, description = "Bad subscriptions", body = ErrorOut),
        (status = 401, description = "No valid token", body = ErrorOut),
        (status = 403, description = "The token lacks the scope", body = ErrorOut),
        (status = 429, description = "Too many streams open for this token", body = ErrorOut),
    ))]
pub async fn get_stream(
    access: ReadAccess,
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<([(&'static str, &'static str); 1], Sse<impl Stream<Item = Result<Event, Infallible>>>), ApiError> {
    let subs = subscriptions(query.as_deref().unwrap_or(""))?;
    let slot = state.streams.take(&access.token).ok_or_else(|| {
        ApiError::Status(StatusCode::TOO_MANY_REQUESTS, format!("at most {MAX_STREAMS_PER_TOKEN} streams per token"))
    })?;
    let auth = headers.get(header::AUTHORIZATION).cloned();
    let mut id: u64 =
        headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
    let mut commits = state.commits.subscribe();
    let coalesce = state.settings.api.stream_coalesce;
    let stream = async_stream::stream! {
        let _slot = slot;
        let mut last: Vec<Option<String>> = vec![None; subs.len()];
        loop {
            for (i, (name, path)) in subs.iter().enumerate() {
                let (status, body) = internal::get(&state, auth.as_ref(), path).await;
                let revoked = status == StatusCode::UNAUTHORIZED;
                if last[i].as_deref() != Some(body.as_str()) {
                    id += 1;
                    let event = if status.is_success() {
                        Event::default().event(name).data(&body)
                    } else {
                        // Which subscription failed, and why (the GET's status and JSON).
                        let data = format!(r#"{{"sub":{},"status":{},"answer":{body}}}"#,
                            serde_json::Value::from(name.as_str()), status.as_u16());
                        Event::default().event("error").data(data)
                    };
                    yield Ok(event.id(id.to_string()));
                    last[i] = Some(body);
                }
                if revoked {
                    // The token was revoked or expired meanwhile: the stream ends.
                    return;
                }
            }
            let evaluated = tokio::time::Instant::now();
            // The next evaluation: after a commit, or when the next second starts (trailing
            // windows move then)…
            let _ = tokio::time::timeout(until_next_second(), commits.changed()).await;
            if state.commits.closing() {
                return;
            }
            // …but not sooner than `api.stream_coalesce` after this one.
            tokio::time::sleep_until(evaluated + coalesce).await;
        }
    };
    // `X-Accel-Buffering: no`: a proxy that buffers answers (nginx by default) passes this one on
    // as it is written, whatever its configuration.
    Ok((
        [("x-accel-buffering", "no")],
        Sse::new(stream).keep_alive(KeepAlive::new().interval(HEARTBEAT).text("heartbeat")),
    ))
}
