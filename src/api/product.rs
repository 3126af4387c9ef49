//! The original design's two endpoints, with the exact answer shapes it documented:
//! `GET /api/product/sale/{id}` → `{"total": …}` and `GET /api/product/rating/{id}` →
//! `{"average_rating": …}`. Extra fields are additions; a product never seen is a 404 on both.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use super::doc::ErrorOut;
use super::error::ApiError;
use super::extract::{Path, ReadAccess};
use super::json::{AVG_DECIMALS, Exact, JsonWriter, WindowOut};
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

// The two answers are written by hand (`JsonWriter`): they are the hottest responses, and serde's
// output for the same structs is what the tests below hold them to.
impl IntoResponse for SalesOut {
    fn into_response(self) -> Response {
        let mut w = JsonWriter::new();
        w.raw("{\"total\":").exact(self.total.0).raw(",\"count\":").int(self.count);
        w.raw(",\"window\":").window(self.window.from, self.window.to).raw("}");
        w.into_response()
    }
}

impl IntoResponse for RatingOut {
    fn into_response(self) -> Response {
        let mut w = JsonWriter::new();
        w.raw("{\"average_rating\":");
        match self.average_rating {
            Some(a) => w.exact(a.0),
            None => w.raw("null"),
        };
        w.raw(",\"count\":").int(self.count).raw("}");
        w.into_response()
    }
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
    // At most 64 characters of what the client sent (cut at a character boundary).
    let end = id.char_indices().nth(64).map_or(id.len(), |(i, _)| i);
    ApiError::NotFound(format!("No product with id {} was found", &id[..end]))
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
) -> Result<SalesOut, ApiError> {
    let mut series = product_series(&state, SALES_METRIC)?;
    let Some(c) = crate::event::canonical_id(&id) else { return Err(no_product(&id)) };
    series.value = c;
    let window_s = crate::config::secs_i64(state.settings.api.sales_window);
    let now = crate::clock::now_ms();
    let found = state.cache.trailing_if_known((PRODUCT_DIM, &series.value), &series, window_s, now).await?;
    let Some((agg, (from, to))) = found else { return Err(no_product(&id)) };
    Ok(SalesOut { total: Exact(agg.sum), count: agg.count, window: WindowOut::new(from, to) })
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
) -> Result<RatingOut, ApiError> {
    let mut series = product_series(&state, RATING_METRIC)?;
    let Some(c) = crate::event::canonical_id(&id) else { return Err(no_product(&id)) };
    series.value = c;
    // The all-time bucket: one row, whatever the number of ratings.
    let Some(agg) = state.cache.aggregate_if_known((PRODUCT_DIM, &series.value), &series, None).await? else {
        return Err(no_product(&id));
    };
    let average_rating = agg.avg().map(|a| Exact(a.round_dp(AVG_DECIMALS)));
    Ok(RatingOut { average_rating, count: agg.count })
}

#[cfg(test)]
mod tests {
    use rust_decimal::Decimal;

    use super::*;

    async fn body(r: Response) -> (String, String) {
        let ct = r.headers()[axum::http::header::CONTENT_TYPE].to_str().expect("ascii").to_string();
        let b = axum::body::to_bytes(r.into_body(), 1 << 20).await.expect("a body");
        (ct, String::from_utf8(b.to_vec()).expect("utf-8"))
    }

    /// The 404 shows at most 64 characters of the id, cut at a character boundary.
    #[test]
    fn a_long_id_is_cut_at_64_characters() {
        let message = |id: &str| match no_product(id) {
            ApiError::NotFound(m) => m,
            e => panic!("not a 404: {e}"),
        };
        assert_eq!(message("12"), "No product with id 12 was found");
        let long = "é".repeat(100);
        assert_eq!(message(&long), format!("No product with id {} was found", "é".repeat(64)));
        let exact = "x".repeat(64);
        assert_eq!(message(&exact), format!("No product with id {exact} was found"));
    }

    /// The hand-written answers are byte for byte what serde writes for the same structs (the
    /// oracle), over decimals of every scale and sign, counts and times far apart.
    #[tokio::test]
    async fn hand_written_answers_are_serdes_bytes() {
        let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut decimals = vec![Decimal::ZERO, Decimal::new(-0, 2), Decimal::new(10, 1), Decimal::MAX, Decimal::MIN];
        for _ in 0..2000 {
            let scale = (next() % 29) as u32;
            decimals.push(Decimal::from_i128_with_scale(i128::from(next() as i64), scale));
        }
        for (i, d) in decimals.into_iter().enumerate() {
            let count = next() as i64 >> (next() % 64);
            let from = (next() % 20_000_000_000) as i64 - 10_000_000_000;
            let sales = SalesOut { total: Exact(d), count, window: WindowOut::new(from, from + 3600) };
            let want = serde_json::to_string(&sales).expect("serialises");
            assert_eq!(body(sales.into_response()).await, ("application/json".into(), want));
            let average_rating = (i % 3 != 0).then_some(Exact(d));
            let rating = RatingOut { average_rating, count };
            let want = serde_json::to_string(&rating).expect("serialises");
            assert_eq!(body(rating.into_response()).await, ("application/json".into(), want));
        }
    }
}
