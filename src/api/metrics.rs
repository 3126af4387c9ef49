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
use super::window::window_of;
use crate::config::Aggregation;
use crate::rollup::{Agg, CompiledMetric, Resolution, SeriesKey, Step, boundaries, finest_kept, parse_tz};

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
    /// Series only: `1s`, `1m` (default), `5m`, `15m`, `1h`, `1d`, `1w`, `1mo` (also `second`,
    /// `minute`, `hour`, `day`).
    step: Option<String>,
    /// Series only: the IANA time zone buckets are aligned in (default `UTC`), e.g.
    /// `Europe/Berlin`; DST-correct.
    tz: Option<String>,
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
        window_of(state, self.window.as_deref(), self.from.as_deref(), self.to.as_deref())
    }
}

/// A window's count, sum, average, min and max, exact.
#[derive(Serialize, ToSchema)]
pub struct FiguresOut {
    count: i64,
    sum: Exact,
    /// Rounded to 6 decimal places.
    avg: Option<Exact>,
    min: Option<Exact>,
    max: Option<Exact>,
}

/// A window's figures and the metric's own aggregation, exact.
#[derive(Serialize, ToSchema)]
pub struct AggOut {
    #[serde(flatten)]
    figures: FiguresOut,
    /// The metric's aggregation of the window (its sum, average…).
    value: Option<Exact>,
}

fn round_avg(d: rust_decimal::Decimal) -> Exact {
    Exact(d.round_dp(AVG_DECIMALS))
}

pub fn figures_out(a: &Agg) -> FiguresOut {
    FiguresOut {
        count: a.count,
        sum: Exact(a.sum),
        avg: a.avg().map(round_avg),
        min: a.min.map(Exact),
        max: a.max.map(Exact),
    }
}

pub fn agg_out(a: &Agg, aggregation: Aggregation) -> AggOut {
    // A sum, min or max is exact as it is; an average (and a value that is one) is rounded.
    let value = match aggregation {
        Aggregation::Avg => a.avg().map(round_avg),
        other => a.value(other).map(Exact),
    };
    AggOut { figures: figures_out(a), value }
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
    if p.step.is_some() || p.tz.is_some() {
        return Err(ApiError::BadRequest("`step` and `tz` belong to /series".into()));
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
    /// `1s`, `1m`, `5m`, `15m`, `1h`, `1d`, `1w` or `1mo`.
    step: &'static str,
    /// The step in seconds, for fixed steps (null for `1d`, `1w`, `1mo`: a local day may last
    /// 23 or 25 hours).
    step_seconds: Option<i64>,
    /// The time zone buckets are aligned in.
    tz: String,
    window: WindowOut,
    /// Every bucket of the window, in order; a bucket without events has count 0.
    points: Vec<PointOut>,
}

/// A metric's buckets over a window: every bucket, zero-filled, in fixed or calendar steps
/// aligned in a time zone.
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
    let (step, step_name) = Step::parse(p.step.as_deref().unwrap_or("1m")).map_err(ApiError::BadRequest)?;
    let tz = parse_tz(p.tz.as_deref()).map_err(ApiError::BadRequest)?;
    let (from, to) = p.window(&state)?;
    let bounds = boundaries(from, to, step, tz).map_err(ApiError::BadRequest)?;
    answerable(&state, &bounds)?;
    let aggs = state.store.read_buckets(&series, &bounds).await?;
    Ok(Json(SeriesOut {
        metric: m.name.to_string(),
        aggregation: m.aggregation,
        step: step_name,
        step_seconds: step.seconds(),
        tz: tz.name().to_string(),
        window: WindowOut::new(bounds[0], *bounds.last().expect("at least two bounds")),
        points: bounds
            .iter()
            .zip(&aggs)
            .map(|(t, a)| PointOut { t: rfc3339(*t), agg: agg_out(a, m.aggregation) })
            .collect(),
    }))
}

/// Every bucket edge must fall on a bucket retention still keeps: a 1-second step three days
/// back would otherwise read buckets that were pruned and answer zero.
fn answerable(state: &AppState, bounds: &[i64]) -> Result<(), ApiError> {
    let r = &state.settings.retention;
    let now = crate::clock::now_ms() / 1000;
    let (sec, min) = (crate::config::secs_i64(r.second_buckets), crate::config::secs_i64(r.minute_buckets));
    for &b in bounds {
        let kept = finest_kept(b, now, sec, min);
        if b.rem_euclid(kept.seconds()) != 0 {
            return Err(ApiError::BadRequest(format!(
                "buckets starting at {} need {}-second buckets, which retention no longer keeps: use a coarser step",
                rfc3339(b),
                if kept == Resolution::Minute { 1 } else { 60 }
            )));
        }
    }
    Ok(())
}
