//! `/api/v1`: metric aggregates and time series, raw events, dead letters, readiness.

use std::io::Read as _;

use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{AVG_DECIMALS, ApiError, AppState, Exact, WindowOut, rfc3339};
use crate::auth::Scope;
use crate::config::{Aggregation, parse_duration};
use crate::rollup::{Agg, CompiledMetric, Resolution, SeriesKey, snap_window, trailing_window};

/// Most items one page returns.
const MAX_PAGE: u32 = 1000;
/// Most points one time-series answer returns.
const MAX_POINTS: i64 = 10_000;
/// Most raw blocks one raw-events request decompresses.
const MAX_RAW_BLOCKS: u32 = 64;

pub async fn get_readiness(State(state): State<AppState>) -> Response {
    let store = state.store.tokens_version().await;
    let h = &state.health;
    let kafka = h.kafka_configured.load(Ordering::Relaxed).then(|| {
        json!({
            "ok": h.kafka_ok.load(Ordering::Relaxed),
            "detail": h.kafka_detail.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        })
    });
    let kafka_ok = kafka.as_ref().is_none_or(|k| k["ok"] == true);
    let ready = store.is_ok() && kafka_ok;
    let body = json!({
        "ready": ready,
        "store": { "ok": store.is_ok(), "detail": store.err().map(|e| e.to_string()) },
        "kafka": kafka,
    });
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body)).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageParams {
    limit: Option<u32>,
    before: Option<i64>,
    name: Option<String>,
    cursor: Option<String>,
}

fn page_limit(limit: Option<u32>) -> Result<u32, ApiError> {
    match limit.unwrap_or(50) {
        0 => Err(ApiError::BadRequest("limit must be at least 1".into())),
        n if n > MAX_PAGE => Err(ApiError::BadRequest(format!("limit must be at most {MAX_PAGE}"))),
        n => Ok(n),
    }
}

/// Most bytes of a dead letter's raw record shown in a page (the rest is counted, not shown).
const MAX_DEAD_LETTER_RAW: usize = 64 * 1024;
/// Most bytes of raw events in one page.
const MAX_RAW_PAGE_BYTES: usize = 4 * 1024 * 1024;

#[derive(Serialize)]
pub struct DeadLetterOut {
    id: i64,
    received_ms: i64,
    received_at: Option<String>,
    source: String,
    reason: String,
    topic: Option<String>,
    partition: Option<i32>,
    offset: Option<i64>,
    /// The record as text when it is UTF-8 (else `raw_hex`), cut to 64 KiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    raw: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    raw_hex: Option<String>,
    /// The record's size in bytes when `raw`/`raw_hex` shows only its beginning.
    #[serde(skip_serializing_if = "Option::is_none")]
    raw_truncated_from: Option<usize>,
}

#[derive(Serialize)]
pub struct DeadLettersOut {
    dead_letters: Vec<DeadLetterOut>,
    next_before: Option<i64>,
}

impl From<crate::storage::DeadLetter> for DeadLetterOut {
    fn from(d: crate::storage::DeadLetter) -> Self {
        let l = d.letter;
        let full = l.raw.len();
        let mut shown = &l.raw[..full.min(MAX_DEAD_LETTER_RAW)];
        // Cut on a character boundary so a UTF-8 record stays text.
        while !shown.is_empty() && std::str::from_utf8(shown).is_err() && full - shown.len() < 4 && shown.len() < full {
            shown = &shown[..shown.len() - 1];
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

pub async fn get_dead_letters(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(p): Query<PageParams>,
) -> Result<Json<DeadLettersOut>, ApiError> {
    state.authorize(&headers, Scope::Admin)?;
    let limit = page_limit(p.limit)?;
    let letters = state.store.dead_letters(p.before, limit).await?;
    let next = (letters.len() as u32 == limit).then(|| letters.last().map(|l| l.id)).flatten();
    Ok(Json(DeadLettersOut { dead_letters: letters.into_iter().map(DeadLetterOut::from).collect(), next_before: next }))
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
pub async fn get_raw_events(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(p): Query<PageParams>,
) -> Result<Response, ApiError> {
    state.authorize(&headers, Scope::Read)?;
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
            let mut text = Vec::new();
            zstd::stream::read::Decoder::new(&b.zstd[..])
                .and_then(|mut d| d.read_to_end(&mut text))
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
    Ok(([(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// Writer counters since start (how well group commit groups).
pub async fn get_stats(State(state): State<AppState>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    state.authorize(&headers, Scope::Admin)?;
    Ok(Json(json!({ "writer": state.writer.stats(), "cache": state.cache.stats })))
}

pub async fn list_metrics(State(state): State<AppState>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    state.authorize(&headers, Scope::Read)?;
    let metrics: Vec<Value> = state
        .metrics
        .metrics
        .iter()
        .map(|m| {
            json!({"name": &*m.name, "event": m.event, "aggregation": m.aggregation, "field": m.field,
                        "dimensions": m.dims.iter().map(|d| &**d).collect::<Vec<_>>()})
        })
        .collect();
    Ok(Json(json!({ "metrics": metrics })))
}

/// Selects a series and a window: `dim`/`value` (both or neither), and either `window` (trailing,
/// e.g. `1h`) or `from`/`to` (RFC 3339 or epoch ms). Default: the last hour.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeriesParams {
    dim: Option<String>,
    value: Option<String>,
    window: Option<String>,
    from: Option<String>,
    to: Option<String>,
    step: Option<String>,
}

fn parse_time(s: &str, what: &str) -> Result<i64, ApiError> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms.div_euclid(1000));
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp())
        .map_err(|_| ApiError::BadRequest(format!("`{what}` must be RFC 3339 or epoch milliseconds, got {s:?}")))
}

impl SeriesParams {
    fn metric<'a>(&self, state: &'a AppState, name: &str) -> Result<&'a CompiledMetric, ApiError> {
        state.metrics.get(name).ok_or_else(|| ApiError::NotFound(format!("no metric named {name:?}")))
    }

    fn series(&self, m: &CompiledMetric) -> Result<SeriesKey, ApiError> {
        match (&self.dim, &self.value) {
            (None, None) => Ok(SeriesKey::new(&m.name, "", "")),
            (Some(d), Some(v)) if m.dims.iter().any(|x| &**x == d) => {
                let v = crate::event::canonical_id(v).unwrap_or_else(|| v.clone());
                Ok(SeriesKey::new(&m.name, d, &v))
            }
            (Some(d), Some(_)) => Err(ApiError::BadRequest(format!(
                "metric {:?} has no dimension {d:?} (it has: {})",
                &*m.name,
                m.dims.iter().map(|d| &**d).collect::<Vec<_>>().join(", ")
            ))),
            _ => Err(ApiError::BadRequest("give both `dim` and `value`, or neither".into())),
        }
    }

    /// `[from, to)` in seconds, snapped to the buckets retention still keeps.
    fn window(&self, state: &AppState) -> Result<(i64, i64), ApiError> {
        let now_ms = crate::ingest::now_ms();
        let (from, to) = match (&self.window, &self.from, &self.to) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
                return Err(ApiError::BadRequest("give `window` or `from`/`to`, not both".into()));
            }
            (w, None, None) => {
                let d = parse_duration(w.as_deref().unwrap_or("1h")).map_err(ApiError::BadRequest)?;
                trailing_window(now_ms, d.as_secs().max(1) as i64)
            }
            (None, f, t) => {
                let to = t.as_deref().map(|t| parse_time(t, "to")).transpose()?.unwrap_or(now_ms / 1000 + 1);
                let from = f.as_deref().map(|f| parse_time(f, "from")).transpose()?.unwrap_or(to - 3600);
                (from, to)
            }
        };
        if from >= to {
            return Err(ApiError::BadRequest("`from` must be before `to`".into()));
        }
        let r = &state.settings.retention;
        Ok(snap_window(from, to, now_ms / 1000, r.second_buckets.as_secs() as i64, r.minute_buckets.as_secs() as i64))
    }
}

/// A window's count, sum, average, min, max and the metric's own aggregation, exact.
#[derive(Serialize)]
pub struct AggOut {
    count: i64,
    sum: Exact,
    avg: Option<Exact>,
    min: Option<Exact>,
    max: Option<Exact>,
    value: Option<Exact>,
}

pub fn agg_out(a: &Agg, aggregation: Aggregation) -> AggOut {
    let round = |d: rust_decimal::Decimal| Exact(d.round_dp(AVG_DECIMALS));
    // A sum, min or max is exact as it is; an average (and a value that is one) is rounded.
    let value = match aggregation {
        Aggregation::Avg => a.avg().map(round),
        other => a.value(other).map(Exact),
    };
    AggOut {
        count: a.count,
        sum: Exact(a.sum),
        avg: a.avg().map(round),
        min: a.min.map(Exact),
        max: a.max.map(Exact),
        value,
    }
}

#[derive(Serialize)]
pub struct AggregateOut {
    metric: String,
    dim: Option<String>,
    value_of: Option<String>,
    aggregation: Aggregation,
    window: WindowOut,
    result: AggOut,
}

pub async fn get_metric_aggregate(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(metric): Path<String>,
    Query(p): Query<SeriesParams>,
) -> Result<Json<AggregateOut>, ApiError> {
    state.authorize(&headers, Scope::Read)?;
    let m = p.metric(&state, &metric)?;
    let series = p.series(m)?;
    if p.step.is_some() {
        return Err(ApiError::BadRequest("`step` belongs to /series".into()));
    }
    let (from, to) = p.window(&state)?;
    let agg = state.aggregate(&series, Some((from, to))).await?;
    Ok(Json(AggregateOut {
        metric: m.name.to_string(),
        dim: p.dim.clone(),
        value_of: p.value.as_ref().map(|_| series.value.clone()),
        aggregation: m.aggregation,
        window: WindowOut::new(from, to),
        result: agg_out(&agg, m.aggregation),
    }))
}

#[derive(Serialize)]
pub struct PointOut {
    t: String,
    #[serde(flatten)]
    agg: AggOut,
}

#[derive(Serialize)]
pub struct SeriesOut {
    metric: String,
    aggregation: Aggregation,
    step_seconds: i64,
    window: WindowOut,
    points: Vec<PointOut>,
}

pub async fn get_metric_series(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(metric): Path<String>,
    Query(p): Query<SeriesParams>,
) -> Result<Json<SeriesOut>, ApiError> {
    state.authorize(&headers, Scope::Read)?;
    let m = p.metric(&state, &metric)?;
    let series = p.series(m)?;
    let res = match p.step.as_deref().unwrap_or("minute") {
        "second" | "1s" => Resolution::Second,
        "minute" | "1m" => Resolution::Minute,
        "hour" | "1h" => Resolution::Hour,
        "day" | "1d" => Resolution::Day,
        s => return Err(ApiError::BadRequest(format!("step {s:?} is not one of second, minute, hour, day"))),
    };
    let (from, to) = p.window(&state)?;
    let (from, to) = (res.bucket_of(from), res.bucket_of(to - 1) + res.seconds());
    if (to - from) / res.seconds() > MAX_POINTS {
        return Err(ApiError::BadRequest(format!("more than {MAX_POINTS} points: use a coarser step")));
    }
    let points = state.store.read_points(&series, res, from, to).await?;
    Ok(Json(SeriesOut {
        metric: m.name.to_string(),
        aggregation: m.aggregation,
        step_seconds: res.seconds(),
        window: WindowOut::new(from, to),
        points: points.iter().map(|(t, a)| PointOut { t: rfc3339(*t), agg: agg_out(a, m.aggregation) }).collect(),
    }))
}
