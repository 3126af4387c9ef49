//! The original design's two endpoints, with the exact answer shapes it documented:
//! `GET /api/product/sale/{id}` → `{"total": …}` and `GET /api/product/rating/{id}` →
//! `{"average_rating": …}`. Extra fields are additions; a product never seen is a 404 on both.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use super::doc::ErrorOut;
use super::error::ApiError;
use super::extract::{Path, ReadAccess};
use super::json::{AVG_DECIMALS, Exact, WindowOut};
use super::state::AppState;
use crate::rollup::SeriesKey;

/// The metrics and dimension behind the two endpoints (declared in the default config).
pub const SALES_METRIC: &str = "sales_amount";
pub const RATING_METRIC: &str = "rating";
pub const PRODUCT_DIM: &str = "product_id";

/// Sales of a product in the last hour (`api.sales_window`).
#[derive(Serialize, ToSchema)]
pub struct SalesOut {
    /// The sum of `amount`, exact.
    total: Exact,
    count: i64,
    window: WindowOut,
}

/// A product's average rating over all time (null when never rated).
#[derive(Serialize, ToSchema)]
pub struct RatingOut {
    average_rating: Option<Exact>,
    count: i64,
}

/// The metric an endpoint reads must be configured with the product dimension; if a settings
/// file left it out, say so (not "no product"). Returns the metric's series by product with its
/// value still empty, the names shared with the configuration's (no allocation on this path).
fn product_series(state: &AppState, metric: &str) -> Result<SeriesKey, ApiError> {
    let m = state.metrics.get(metric);
    match m.and_then(|m| Some((m, m.dims.iter().find(|d| &***d == PRODUCT_DIM)?))) {
        Some((m, dim)) => Ok(SeriesKey { metric: m.name.clone(), dim: dim.clone(), value: String::new() }),
        None => Err(ApiError::Status(
            StatusCode::NOT_IMPLEMENTED,
            format!(
                "this endpoint reads the metric {metric:?} by {PRODUCT_DIM:?}, which the configuration does not declare"
            ),
        )),
    }
}

/// The 404 the original design documented.
fn no_product(id: &str) -> ApiError {
    let shown: String = id.chars().take(64).collect();
    ApiError::NotFound(format!("No product with id {shown} was found"))
}

/// Total sales of a product in the last hour: the 3600 one-second buckets ending with this second.
#[utoipa::path(get, path = "/api/product/sale/{id}", tag = "seed",
    params(("id" = String, Path, description = "The product id (digits)")),
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "The product's sales", body = SalesOut),
        (status = 400, description = "A bad parameter", body = ErrorOut),
        (status = 401, description = "No valid token", body = ErrorOut),
        (status = 403, description = "The token lacks the scope", body = ErrorOut),
        (status = 503, description = "The store is unavailable; retry", body = ErrorOut),
        (status = 404, description = "No product with that id was ever seen", body = ErrorOut),
        (status = 501, description = "The metric sales_amount by product_id is not configured", body = ErrorOut),
    ))]
pub async fn get_product_sales(
    _: ReadAccess,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<SalesOut>, ApiError> {
    let mut series = product_series(&state, SALES_METRIC)?;
    let Some(c) = crate::event::canonical_id(&id) else { return Err(no_product(&id)) };
    series.value = c;
    let window_s = crate::config::secs_i64(state.settings.api.sales_window);
    let now = crate::clock::now_ms();
    let found = state.cache.trailing_if_known((PRODUCT_DIM, &series.value), &series, window_s, now).await?;
    let Some((agg, (from, to))) = found else { return Err(no_product(&id)) };
    Ok(Json(SalesOut { total: Exact(agg.sum), count: agg.count, window: WindowOut::new(from, to) }))
}

/// The average rating of a product over all time.
#[utoipa::path(get, path = "/api/product/rating/{id}", tag = "seed",
    params(("id" = String, Path, description = "The product id (digits)")),
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "The product's average rating", body = RatingOut),
        (status = 400, description = "A bad parameter", body = ErrorOut),
        (status = 401, description = "No valid token", body = ErrorOut),
        (status = 403, description = "The token lacks the scope", body = ErrorOut),
        (status = 503, description = "The store is unavailable; retry", body = ErrorOut),
        (status = 404, description = "No product with that id was ever seen", body = ErrorOut),
        (status = 501, description = "The metric rating by product_id is not configured", body = ErrorOut),
    ))]
pub async fn get_product_rating(
    _: ReadAccess,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<RatingOut>, ApiError> {
    let mut series = product_series(&state, RATING_METRIC)?;
    let Some(c) = crate::event::canonical_id(&id) else { return Err(no_product(&id)) };
    series.value = c;
    // The all-time bucket: one row, whatever the number of ratings.
    let Some(agg) = state.cache.aggregate_if_known((PRODUCT_DIM, &series.value), &series, None).await? else {
        return Err(no_product(&id));
    };
    let average_rating = agg.avg().map(|a| Exact(a.round_dp(AVG_DECIMALS)));
    Ok(Json(RatingOut { average_rating, count: agg.count }))
}
