//! `POST /api/v1/query`: several figures in one round trip, each a GET path of the API, answered
//! in order.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::ToSchema;

use super::doc::ErrorOut;
use super::error::ApiError;
use super::extract::ReadAccess;
use super::internal;
use super::state::AppState;

/// Most queries in one request.
const MAX_QUERIES: usize = 32;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryIn {
    /// GET paths of the API, e.g. `/api/v1/metrics/sales_amount?window=1h` (at most 32).
    queries: Vec<OneQuery>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OneQuery {
    path: String,
}

#[derive(Serialize, ToSchema)]
pub struct QueryOut {
    /// One per query, in order: the status and the JSON body the GET would have answered.
    results: Vec<OneResult>,
}

#[derive(Serialize, ToSchema)]
pub struct OneResult {
    status: u16,
    #[schema(value_type = Object)]
    body: Box<RawValue>,
}

/// Several aggregates, series, top-N or value lists in one request.
#[utoipa::path(post, path = "/api/v1/query", tag = "metrics", request_body = QueryIn,
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "Each query's answer, in order", body = QueryOut),
        (status = 400, description = "Not a list of GET paths of the API", body = ErrorOut),
        (status = 401, description = "No valid token", body = ErrorOut),
        (status = 403, description = "The token lacks the scope", body = ErrorOut),
    ))]
pub async fn post_query(
    _: ReadAccess,
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<QueryOut>, ApiError> {
    let q: QueryIn =
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("not a query list: {e}")))?;
    if q.queries.len() > MAX_QUERIES {
        return Err(ApiError::BadRequest(format!("at most {MAX_QUERIES} queries in one request")));
    }
    if let Some(bad) = q.queries.iter().find(|one| !internal::allowed(&one.path)) {
        return Err(ApiError::BadRequest(format!("{:?} is not a GET path of the data API", bad.path)));
    }
    let auth = headers.get(header::AUTHORIZATION);
    let mut results = Vec::with_capacity(q.queries.len());
    for one in &q.queries {
        let (status, text) = internal::get(&state, auth, &one.path).await;
        let body = RawValue::from_string(text).map_err(|e| ApiError::Internal(e.into()))?;
        results.push(OneResult { status: status.as_u16(), body });
    }
    Ok(Json(QueryOut { results }))
}
