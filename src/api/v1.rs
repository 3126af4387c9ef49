//! `/api/v1`: metric aggregates and time series, raw events, dead letters, readiness.

use std::io::Read as _;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::{AVG_DECIMALS, ApiError, AppState, WindowOut, json_decimal, rfc3339};
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
}

fn page_limit(limit: Option<u32>) -> Result<u32, ApiError> {
    match limit.unwrap_or(50) {
        0 => Err(ApiError::BadRequest("limit must be at least 1".into())),
        n if n > MAX_PAGE => Err(ApiError::BadRequest(format!("limit must be at most {MAX_PAGE}"))),
        n => Ok(n),
    }
}

/// Raw bytes as text when they are UTF-8, else as hex.
fn raw_out(raw: &[u8]) -> Value {
    match std::str::from_utf8(raw) {
        Ok(s) => json!({ "raw": s }),
        Err(_) => json!({ "raw_hex": hex::encode(raw) }),
    }
}

pub async fn get_dead_letters(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(p): Query<PageParams>,
) -> Result<Json<Value>, ApiError> {
    state.authorize(&headers, Scope::Admin)?;
    let limit = page_limit(p.limit)?;
    let letters = state.store.dead_letters(p.before, limit).await?;
    let next = (letters.len() as u32 == limit).then(|| letters.last().map(|l| l.id)).flatten();
    let items: Vec<Value> = letters
        .into_iter()
        .map(|d| {
            let mut v = serde_json::to_value(&d).expect("a dead letter serialises");
            v["received_at"] =
                json!(chrono::DateTime::from_timestamp_millis(d.letter.received_ms).map(|t| t.to_rfc3339()));
            if let (Value::Object(o), Value::Object(r)) = (&mut v, raw_out(&d.letter.raw)) {
                o.extend(r);
            }
            v
        })
        .collect();
    Ok(Json(json!({ "dead_letters": items, "next_before": next })))
}

pub async fn get_raw_events(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(p): Query<PageParams>,
) -> Result<Json<Value>, ApiError> {
    state.authorize(&headers, Scope::Read)?;
    let limit = page_limit(p.limit)? as usize;
    let name = p.name.ok_or_else(|| ApiError::BadRequest("the `name` parameter (an event name) is required".into()))?;
    let mut events: Vec<Box<RawValue>> = Vec::new();
    let mut before = p.before;
    let mut next = None;
    let mut scanned = 0;
    'blocks: while scanned < MAX_RAW_BLOCKS {
        let blocks = state.store.raw_blocks(&name, before, 8).await?;
        if blocks.is_empty() {
            next = None;
            break;
        }
        for (id, b) in blocks {
            scanned += 1;
            before = Some(id);
            next = Some(id);
            let mut text = String::new();
            zstd::stream::read::Decoder::new(&b.zstd[..])
                .and_then(|mut d| d.read_to_string(&mut text))
                .map_err(|e| ApiError::Internal(anyhow::anyhow!("raw block {id} is unreadable: {e}")))?;
            for line in text.lines().rev() {
                events.push(RawValue::from_string(line.to_string()).map_err(|e| ApiError::Internal(e.into()))?);
            }
            // A page ends on a block boundary, so `next_before` resumes exactly after it.
            if events.len() >= limit {
                break 'blocks;
            }
        }
    }
    Ok(Json(json!({ "name": name, "events": events, "next_before": next })))
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

#[derive(Serialize)]
struct AggOut {
    count: i64,
    sum: Box<RawValue>,
    avg: Option<Box<RawValue>>,
    min: Option<Box<RawValue>>,
    max: Option<Box<RawValue>>,
    value: Option<Box<RawValue>>,
}

fn agg_out(a: &Agg, aggregation: Aggregation) -> AggOut {
    let round = |d: rust_decimal::Decimal| json_decimal(d.round_dp(AVG_DECIMALS));
    AggOut {
        count: a.count,
        sum: json_decimal(a.sum),
        avg: a.avg().map(round),
        min: a.min.map(json_decimal),
        max: a.max.map(json_decimal),
        value: a.value(aggregation).map(round),
    }
}

pub async fn get_metric_aggregate(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(metric): Path<String>,
    Query(p): Query<SeriesParams>,
) -> Result<Json<Value>, ApiError> {
    state.authorize(&headers, Scope::Read)?;
    let m = p.metric(&state, &metric)?;
    let series = p.series(m)?;
    if p.step.is_some() {
        return Err(ApiError::BadRequest("`step` belongs to /series".into()));
    }
    let (from, to) = p.window(&state)?;
    let agg = state.aggregate(&series, Some((from, to))).await?;
    Ok(Json(json!({
        "metric": &*m.name, "dim": p.dim, "value_of": p.value.as_ref().map(|_| &series.value),
        "aggregation": m.aggregation, "window": WindowOut::new(from, to), "result": agg_out(&agg, m.aggregation),
    })))
}

pub async fn get_metric_series(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(metric): Path<String>,
    Query(p): Query<SeriesParams>,
) -> Result<Json<Value>, ApiError> {
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
    let points: Vec<Value> = points
        .iter()
        .map(|(t, a)| {
            let mut v = serde_json::to_value(agg_out(a, m.aggregation)).expect("serialises");
            v["t"] = json!(rfc3339(*t));
            v
        })
        .collect();
    Ok(Json(json!({
        "metric": &*m.name, "aggregation": m.aggregation, "step_seconds": res.seconds(),
        "window": WindowOut::new(from, to), "points": points,
    })))
}
