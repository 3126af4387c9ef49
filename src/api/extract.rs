//! Extractors whose rejections are JSON `ApiError`s, like every other error, and the scoped
//! bearer tokens: a handler that takes [`ReadAccess`] (or [`IngestAccess`], [`AdminAccess`]) runs
//! only for a valid token with that scope, so a route's scope is in its handler's signature and
//! cannot be forgotten. Put the access extractor first: extractors run in order, so the token is
//! checked before the query string or the body are looked at.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::access::TokenName;
use super::error::ApiError;
use super::state::AppState;
use crate::auth::Scope;

/// `axum::extract::Query` with a JSON 400 on a bad query string.
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Query(v) = axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(Query(v))
    }
}

/// `axum::extract::Path` with a JSON 400 on a bad path.
pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Path(v) = axum::extract::Path::<T>::from_request_parts(parts, state).await?;
        Ok(Path(v))
    }
}

/// Checks the request's bearer token for `scope`; the token's name.
fn authorize(parts: &Parts, state: &AppState, scope: Scope) -> Result<Arc<str>, ApiError> {
    let h = parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let name = state.tokens.authorize(h, scope, crate::clock::now_ms())?;
    if let Some(slot) = parts.extensions.get::<TokenName>() {
        slot.set(name.clone());
    }
    Ok(name)
}

macro_rules! access {
    ($(#[$doc:meta])* $name:ident, $scope:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $name {
            /// The token's name (what idempotency keys and logs are scoped to).
            #[allow(dead_code)] // only the ingest handler reads it today
            pub token: Arc<str>,
        }

        impl FromRequestParts<AppState> for $name {
            type Rejection = ApiError;

            async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
                authorize(parts, state, $scope).map(|token| Self { token })
            }
        }
    };
}

access!(
    /// A token with the `read` scope.
    ReadAccess,
    Scope::Read
);
access!(
    /// A token with the `ingest` scope.
    IngestAccess,
    Scope::Ingest
);
access!(
    /// A token with the `admin` scope.
    AdminAccess,
    Scope::Admin
);
access!(
    /// A token with the `metrics` scope.
    MetricsAccess,
    Scope::Metrics
);
