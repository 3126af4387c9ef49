//! `/api/v1/metrics`: the declared metrics, and any metric's aggregate or series over a window.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::doc::ErrorOut;
use super::error::ApiError;
use super::extract::{Path, Query, ReadAccess};
use super::json::{AVG_DECIMALS, Exact, WindowOut, rfc3339};
use super::state::AppState;
use crate::config::Aggregation;
use crate::rollup::{Agg, CompiledMetric, Kept, Resolution, SeriesKey, WindowQuery, query_window};

/// Most points one time-series answer returns.
const MAX_POINTS: i64 = 10_000;

#[derive(Serialize, ToSchema)]
pub struct MetricOut {
    name: String,
    event: String,
    aggregation: Aggregation,
    field: Option<String>,
    dimensions: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct MetricsOut {
    metrics: Vec<MetricOut>,
}

/// The declared metrics.
#[utoipa::path(get, path = "/api/v1/metrics", tag = "metrics", security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "The declared metrics", body = MetricsOut),
        (status = 400, description = "A bad parameter", body = ErrorOut),
        (status = 401, description = "No valid token", body = ErrorOut),
        (status = 403, description = "The token lacks the scope", body = ErrorOut),
        (status = 503, description = "The store is unavailable; retry", body = ErrorOut),
    ))]
pub async fn list_metrics(_: ReadAccess, State(state): State<AppState>) -> Json<MetricsOut> {
    let metrics = state
        .metrics
        .metrics
        .iter()
        .map(|m| MetricOut {
            name: m.name.to_string(),
            event: m.event.clone(),
            aggregation: m.aggregation,
            field: m.field.clone(),
            dimensions: m.dims.iter().map(|d| d.to_string()).collect(),
        })
        .collect();
    Json(MetricsOut { metrics })
}

/// Selects a series and a window: `dim`/`value` (both or neither), and either `window` (trailing,
/// e.g. `1h`) or `from`/`to` (RFC 3339 or epoch ms). Default: the last hour.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SeriesParams {
    /// A dimension of the metric (with `value`), e.g. `product_id`; omit both for the overall series.
    dim: Option<String>,
    /// The dimension's value, e.g. `3`.
    value: Option<String>,
    /// A trailing window such as `15m`, `1h`, `7d` (at most 100 years); or give `from`/`to`.
    window: Option<String>,
    /// Start, RFC 3339 or epoch milliseconds (default: an hour before `to`).
    from: Option<String>,
    /// End (exclusive), RFC 3339 or epoch milliseconds (default: the end of this second).
    to: Option<String>,
    /// Series only: `second`, `minute`, `hour` or `day` (`1s`, `1m`, `1h`, `1d`).
    step: Option<String>,
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
        let r = &state.settings.retention;
        let kept = Kept {
            second_buckets_s: crate::config::secs_i64(r.second_buckets),
            minute_buckets_s: crate::config::secs_i64(r.minute_buckets),
        };
        let q = WindowQuery { window: self.window.as_deref(), from: self.from.as_deref(), to: self.to.as_deref() };
        query_window(q, crate::clock::now_ms(), kept).map_err(ApiError::BadRequest)
    }
}

/// A window's count, sum, average, min, max and the metric's own aggregation, exact.
#[derive(Serialize, ToSchema)]
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

#[derive(Serialize, ToSchema)]
pub struct AggregateOut {
    metric: String,
    dim: Option<String>,
    value_of: Option<String>,
    aggregation: Aggregation,
    window: WindowOut,
    result: AggOut,
}

/// A metric's count, sum, average, min and max over a window, overall or for one dimension value.
#[utoipa::path(get, path = "/api/v1/metrics/{metric}", tag = "metrics",
    params(("metric" = String, Path, description = "A declared metric"), SeriesParams),
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "The aggregate", body = AggregateOut),
        (status = 400, description = "A bad parameter", body = ErrorOut),
        (status = 401, description = "No valid token", body = ErrorOut),
        (status = 403, description = "The token lacks the scope", body = ErrorOut),
        (status = 503, description = "The store is unavailable; retry", body = ErrorOut),
        (status = 404, description = "No such metric", body = ErrorOut),
    ))]
pub async fn get_metric_aggregate(
    _: ReadAccess,
    State(state): State<AppState>,
    Path(metric): Path<String>,
    Query(p): Query<SeriesParams>,
) -> Result<Json<AggregateOut>, ApiError> {
    let m = p.metric(&state, &metric)?;
    let series = p.series(m)?;
    if p.step.is_some() {
        return Err(ApiError::BadRequest("`step` belongs to /series".into()));
    }
    let (from, to) = p.window(&state)?;
    let agg = state.cache.aggregate(&series, Some((from, to))).await?;
    Ok(Json(AggregateOut {
        metric: m.name.to_string(),
        dim: p.dim.clone(),
        value_of: p.value.as_ref().map(|_| series.value.clone()),
        aggregation: m.aggregation,
        window: WindowOut::new(from, to),
        result: agg_out(&agg, m.aggregation),
    }))
}

/// One bucket of a series.
#[derive(Serialize, ToSchema)]
pub struct PointOut {
    t: String,
    #[serde(flatten)]
    agg: AggOut,
}

#[derive(Serialize, ToSchema)]
pub struct SeriesOut {
    metric: String,
    aggregation: Aggregation,
    step_seconds: i64,
    window: WindowOut,
    points: Vec<PointOut>,
}

/// A metric's buckets over a window, one point per bucket with data.
#[utoipa::path(get, path = "/api/v1/metrics/{metric}/series", tag = "metrics",
    params(("metric" = String, Path, description = "A declared metric"), SeriesParams),
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "The series", body = SeriesOut),
        (status = 400, description = "A bad parameter", body = ErrorOut),
        (status = 401, description = "No valid token", body = ErrorOut),
        (status = 403, description = "The token lacks the scope", body = ErrorOut),
        (status = 503, description = "The store is unavailable; retry", body = ErrorOut),
        (status = 404, description = "No such metric", body = ErrorOut),
    ))]
pub async fn get_metric_series(
    _: ReadAccess,
    State(state): State<AppState>,
    Path(metric): Path<String>,
    Query(p): Query<SeriesParams>,
) -> Result<Json<SeriesOut>, ApiError> {
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
