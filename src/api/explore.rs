//! What a dashboard asks besides one figure: the top values of a dimension, and the values a
//! picker offers.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::doc::ErrorOut;
use super::error::ApiError;
use super::extract::{Path, Query, ReadAccess};
use super::json::WindowOut;
use super::metrics::{FiguresOut, figures_out};
use super::state::AppState;
use super::window::window_of;
use crate::config::Aggregation;
use crate::rollup::{Agg, cover};

/// Most items a top-N answer or a page of dimension values has.
const MAX_ITEMS: u32 = 1000;

/// Top-N scans running at once: each reads every series of the dimension (seconds on a store of
/// 100,000 products), so a burst of them would take every core and starve ingest.
static SCANS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);
/// Top-N requests waiting for a scan; beyond this they are answered 503 at once.
const MAX_WAITING_SCANS: usize = 16;
static WAITING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
/// Longest a top-N request waits for a scan before a 503.
const SCAN_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// A turn to scan, or a 503 when too many wait or the wait is too long.
async fn scan_turn() -> Result<tokio::sync::SemaphorePermit<'static>, ApiError> {
    use std::sync::atomic::Ordering;
    let busy = || ApiError::Unavailable("too many top-N queries at once; retry shortly".into());
    if let Ok(turn) = SCANS.try_acquire() {
        return Ok(turn);
    }
    if WAITING.fetch_add(1, Ordering::AcqRel) >= MAX_WAITING_SCANS {
        WAITING.fetch_sub(1, Ordering::AcqRel);
        return Err(busy());
    }
    let turn = tokio::time::timeout(SCAN_WAIT, SCANS.acquire()).await;
    WAITING.fetch_sub(1, Ordering::AcqRel);
    match turn {
        Ok(Ok(turn)) => Ok(turn),
        _ => Err(busy()),
    }
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TopParams {
    /// The dimension ranked, e.g. `product_id` (required).
    dim: Option<String>,
    /// A trailing window such as `1h`; or give `from`/`to`.
    window: Option<String>,
    /// Start, RFC 3339 or epoch milliseconds.
    from: Option<String>,
    /// End (exclusive), RFC 3339 or epoch milliseconds.
    to: Option<String>,
    /// What ranks: `count`, `sum`, `avg`, `min` or `max` (default: the metric's aggregation).
    by: Option<String>,
    /// How many, 1 to 1000 (default 10).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// One ranked value of the dimension, with its figures over the window.
#[derive(Serialize, ToSchema)]
pub struct TopItem {
    /// The dimension's value (a product id, a category…), as text.
    value: String,
    /// Its latest label (e.g. the product's name), if it carries one.
    label: Option<String>,
    #[serde(flatten)]
    figures: FiguresOut,
}

#[derive(Serialize, ToSchema)]
pub struct TopOut {
    metric: String,
    dim: String,
    by: Aggregation,
    window: WindowOut,
    /// Highest first; ties by value ascending.
    items: Vec<TopItem>,
}

/// The figure a value is ranked by (values without one rank last).
fn rank_key(a: &Agg, by: Aggregation) -> Option<rust_decimal::Decimal> {
    a.value(by)
}

/// Numeric order for numeric values (ids), text order otherwise.
fn value_order(a: &str, b: &str) -> std::cmp::Ordering {
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        _ => a.cmp(b),
    }
}

/// The top values of a dimension of a metric over a window, exact: every value's figure is
/// computed from its buckets, then ranked.
#[utoipa::path(get, path = "/api/v1/metrics/{metric}/top", tag = "metrics",
    params(("metric" = String, Path, description = "A declared metric"), TopParams),
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "The top values, highest first", body = TopOut),
        (status = 400, description = "A bad parameter", body = ErrorOut),
        (status = 401, description = "No valid token", body = ErrorOut),
        (status = 403, description = "The token lacks the scope", body = ErrorOut),
        (status = 404, description = "No such metric", body = ErrorOut),
        (status = 503, description = "The store is unavailable, or too many top-N queries run; retry", body = ErrorOut),
    ))]
pub async fn get_metric_top(
    _: ReadAccess,
    State(state): State<AppState>,
    Path(metric): Path<String>,
    Query(p): Query<TopParams>,
) -> Result<Json<TopOut>, ApiError> {
    let m = state.metrics.get(&metric).ok_or_else(|| ApiError::NotFound(format!("no metric named {metric:?}")))?;
    let dim = p.dim.ok_or_else(|| ApiError::BadRequest("`dim` (the dimension to rank) is required".into()))?;
    if !m.dims.iter().any(|d| **d == *dim) {
        return Err(ApiError::BadRequest(format!("metric {metric:?} has no dimension {dim:?}")));
    }
    let by = match p.by.as_deref() {
        None => m.aggregation,
        Some(b) => serde_json::from_value(serde_json::Value::String(b.into()))
            .map_err(|_| ApiError::BadRequest(format!("`by` must be count, sum, avg, min or max, got {b:?}")))?,
    };
    let limit = p.limit.unwrap_or(10);
    if limit == 0 || limit > MAX_ITEMS {
        return Err(ApiError::BadRequest(format!("`limit` must lie between 1 and {MAX_ITEMS}")));
    }
    let (from, to) = window_of(&state, p.window.as_deref(), p.from.as_deref(), p.to.as_deref())?;
    let turn = scan_turn().await?;
    let mut all = state.store.read_dim_aggregates(&m.name, &dim, &cover(from, to)).await?;
    drop(turn);
    all.sort_by(|(va, a), (vb, b)| rank_key(b, by).cmp(&rank_key(a, by)).then_with(|| value_order(va, vb)));
    all.truncate(limit as usize);
    let values: Vec<String> = all.iter().map(|(v, _)| v.clone()).collect();
    let labels = state.store.dim_labels(&dim, &values).await?;
    let items = all
        .into_iter()
        .zip(labels)
        .map(|((value, a), label)| TopItem { value, label, figures: figures_out(&a) })
        .collect();
    Ok(Json(TopOut { metric: m.name.to_string(), dim, by, window: WindowOut::new(from, to), items }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ValuesParams {
    /// Values starting with this.
    prefix: Option<String>,
    /// Values whose label contains this.
    search: Option<String>,
    /// How many, 1 to 1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

#[derive(Serialize, ToSchema)]
pub struct ValueOut {
    value: String,
    /// The latest label seen with the value (e.g. `name_of_product` for a `product_id`).
    label: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ValuesOut {
    dim: String,
    /// In value order.
    values: Vec<ValueOut>,
}

/// The values a dimension has taken, with their latest labels: what a picker offers.
#[utoipa::path(get, path = "/api/v1/dimensions/{dim}/values", tag = "metrics",
    params(("dim" = String, Path, description = "A dimension of some metric, e.g. product_id"), ValuesParams),
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "The values", body = ValuesOut),
        (status = 400, description = "A bad parameter", body = ErrorOut),
        (status = 401, description = "No valid token", body = ErrorOut),
        (status = 403, description = "The token lacks the scope", body = ErrorOut),
        (status = 404, description = "No metric has that dimension", body = ErrorOut),
        (status = 503, description = "The store is unavailable; retry", body = ErrorOut),
    ))]
pub async fn get_dimension_values(
    _: ReadAccess,
    State(state): State<AppState>,
    Path(dim): Path<String>,
    Query(p): Query<ValuesParams>,
) -> Result<Json<ValuesOut>, ApiError> {
    if !state.metrics.metrics.iter().any(|m| m.dims.iter().any(|d| **d == *dim)) {
        return Err(ApiError::NotFound(format!("no metric has a dimension {dim:?}")));
    }
    let limit = p.limit.unwrap_or(50);
    if limit == 0 || limit > MAX_ITEMS {
        return Err(ApiError::BadRequest(format!("`limit` must lie between 1 and {MAX_ITEMS}")));
    }
    let prefix = p.prefix.unwrap_or_default();
    let rows = state.store.dim_values(&dim, &prefix, p.search.as_deref(), limit).await?;
    Ok(Json(ValuesOut { dim, values: rows.into_iter().map(|(value, label)| ValueOut { value, label }).collect() }))
}
