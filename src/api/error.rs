//! Every error a handler answers with: JSON `{"message": …}` and the right status. A 5xx says
//! only "internal error" (or that the store is unavailable) and the cause is logged.

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::auth::AuthError;
use crate::storage::StoreError;

/// Seconds a client is asked to wait before retrying a 503.
const RETRY_AFTER_S: &str = "1";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{1}")]
    Status(StatusCode, String),
    /// The store or the writer cannot take the request now (503, `Retry-After`); the message is
    /// for the client, the cause was logged where it happened.
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        if e.is_unavailable() {
            tracing::warn!(error = %e, "store unavailable");
            ApiError::Unavailable("the store is unavailable; retry shortly".into())
        } else {
            ApiError::Internal(e.into())
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::BadRequest(format!("bad query string: {}", r.body_text()))
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::BadRequest(format!("bad path: {}", r.body_text()))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::Auth(AuthError::Forbidden(_)) => StatusCode::FORBIDDEN,
            ApiError::Auth(_) => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Status(s, _) => *s,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let message = match self {
            ApiError::Internal(e) => {
                tracing::error!(error = format!("{e:#}"), "request failed");
                "internal error".to_string()
            }
            // The message itself, moved (their `Display` is the message: no copy).
            ApiError::NotFound(m) | ApiError::BadRequest(m) | ApiError::Status(_, m) | ApiError::Unavailable(m) => m,
            e @ ApiError::Auth(_) => e.to_string(),
        };
        // A typed struct, not `json!`: no map built per error (the 404 of a made-up id is a hot path).
        #[derive(serde::Serialize)]
        struct Message<'a> {
            message: &'a str,
        }
        let mut resp = (status, Json(Message { message: &message })).into_response();
        let headers = resp.headers_mut();
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if matches!(status.as_u16(), 429 | 503 | 507) {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_S));
        }
        resp
    }
}
