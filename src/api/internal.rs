//! Answering an API path from inside the API: a batch query's parts and a stream's
//! subscriptions are the same GET requests a client could send, answered by the same router
//! (so the same scopes, validation and exact JSON), with the caller's token.

use axum::body::Body;
use axum::http::{HeaderValue, Request, StatusCode, header};
use tower::ServiceExt as _;

use super::state::AppState;

/// Most bytes of one internal answer kept.
const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// Whether `path` may be asked from inside: a GET path of the data API.
pub fn allowed(path: &str) -> bool {
    ["/api/v1/metrics", "/api/v1/dimensions/", "/api/product/"].iter().any(|p| path.starts_with(p))
        && !path.contains("/stream")
}

/// The status and JSON body of `GET path` with the caller's `Authorization` header.
pub async fn get(state: &AppState, authorization: Option<&HeaderValue>, path: &str) -> (StatusCode, String) {
    let mut req = Request::builder().method("GET").uri(path);
    if let Some(a) = authorization {
        req = req.header(header::AUTHORIZATION, a);
    }
    let Ok(req) = req.body(Body::empty()) else {
        return (StatusCode::BAD_REQUEST, r#"{"message":"not a valid path"}"#.into());
    };
    let Some(routes) = state.routes.get() else {
        return (StatusCode::INTERNAL_SERVER_ERROR, r#"{"message":"internal error"}"#.into());
    };
    let router = routes.clone().with_state(state.clone());
    let Ok(resp) = router.oneshot(req).await;
    let status = resp.status();
    match axum::body::to_bytes(resp.into_body(), MAX_ANSWER_BYTES).await {
        // The handlers answer JSON; a path no route takes gets the router's bare 404 (the
        // API's JSON fallback sits outside these routes), which a caller must still get as JSON.
        Ok(b) if status.is_success() || serde_json::from_slice::<serde::de::IgnoredAny>(&b).is_ok() => {
            (status, String::from_utf8_lossy(&b).into_owned())
        }
        Ok(_) => {
            let message = match status {
                StatusCode::NOT_FOUND => "no such route",
                StatusCode::METHOD_NOT_ALLOWED => "method not allowed",
                s => s.canonical_reason().unwrap_or("error"),
            };
            (status, serde_json::json!({ "message": message }).to_string())
        }
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, r#"{"message":"the answer was too large"}"#.into()),
    }
}
