//! The HTTP API: the original design's two endpoints, the versioned `/api/v1`, health, and auth.
//!
//! Every route but `/healthz` and `/readyz` needs a bearer token with the route's scope, taken as
//! an extractor in the handler's signature ([`extract`]). Errors are JSON `{"message": …}`; a 5xx
//! says only "internal error" (or that the store is unavailable) and the cause is logged.
//!
//! - [`product`]: the two original endpoints; [`metrics`]: `/api/v1/metrics…`;
//!   [`events`]: ingest and raw events; [`admin`]: dead letters, counters, Kafka lag;
//!   [`health`]: liveness and readiness;
//! - [`cache`]: answers kept exact by the local commits; [`state`], [`error`], [`extract`],
//!   [`json`]: what the handlers share.

mod access;
mod admin;
mod cache;
mod cors;
mod doc;
mod error;
mod events;
mod explore;
mod extract;
mod health;
mod internal;
mod json;
mod live;
mod metrics;
mod ops;
mod product;
mod query;
mod rollups;
mod state;
mod stream;
mod window;

use std::sync::Arc;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use sentry::integrations::tower as sentry_tower;
use tower::ServiceBuilder;
use tower_http::compression::CompressionLayer;
use tower_http::decompression::RequestDecompressionLayer;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use cache::{CacheStats, ReadCache};
pub use error::ApiError;
pub use live::{CommitBell, OpenStreams};
pub use ops::ops_router;
pub use state::{AppState, Shared};

/// The API's routes and its OpenAPI description, built together: a route is served exactly when
/// it is described.
pub fn routes() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    // The routes that read a request body, which may come gzip-compressed (decompressed inside
    // the body limit: `ingest.max_body_bytes` bounds the decompressed size). Only they pay for
    // the decompression layer: on a GET it wraps a body nobody reads, ~1,800 instructions of a
    // seed endpoint's ~46,000 (bench/README.md, "The HTTP floor").
    let with_bodies = OpenApiRouter::new()
        .routes(routes!(events::ingest_events))
        .routes(routes!(query::post_query))
        .routes(routes!(rollups::post_rebuild))
        .routes(routes!(rollups::post_replay))
        .layer(RequestDecompressionLayer::new());
    // Answers of one fixed shape and a few hundred bytes at most, which gzip would not shrink:
    // they skip the compression layer, which costs every request it wraps (the seed endpoints
    // are the hottest routes; bench/README.md, "The HTTP edge in one layer").
    let small = OpenApiRouter::new()
        .routes(routes!(health::get_health))
        .routes(routes!(health::get_readiness))
        .routes(routes!(product::get_product_sales))
        .routes(routes!(product::get_product_rating))
        .routes(routes!(metrics::get_metric_aggregate));
    OpenApiRouter::with_openapi(doc::ApiDoc::openapi())
        .routes(routes!(events::get_raw_events))
        .routes(routes!(metrics::list_metrics))
        .routes(routes!(metrics::get_metric_series))
        .routes(routes!(explore::get_metric_top))
        .routes(routes!(explore::get_dimension_values))
        .routes(routes!(stream::get_stream))
        .routes(routes!(admin::get_dead_letters))
        .routes(routes!(admin::get_stats))
        .routes(routes!(admin::get_kafka_lag))
        .routes(routes!(rollups::get_rollups))
        .routes(routes!(ops::get_metrics))
        .merge(with_bodies)
        .layer(CompressionLayer::new())
        .merge(small)
        .split_for_parts()
}

/// The OpenAPI description of every route.
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes().1
}

pub fn router(state: AppState) -> Router {
    let (router, doc) = routes();
    // Answers asked from inside (batch queries, live streams) go through the same routes.
    let _ = state.routes.set(router.clone());
    let doc: Arc<str> = doc.to_pretty_json().expect("the OpenAPI description serialises").into();
    let documents = Router::new()
        .route(
            "/api/openapi.json",
            get(move || async move { ([(header::CONTENT_TYPE, "application/json")], doc.to_string()).into_response() }),
        )
        .merge(crate::dashboard::routes())
        .layer(CompressionLayer::new());
    let router = router
        .merge(documents)
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async {
            ApiError::Status(StatusCode::METHOD_NOT_ALLOWED, "method not allowed".into())
        })
        .with_state(state.clone());
    with_http_layers(router, &state)
}

/// What every answer goes through, outermost first: error tracking's per-request scope (when a
/// DSN is configured), `access` (the request id, taken or made up and returned; the access log
/// and the HTTP metrics; error tracking's tags), and CORS (when origins are configured). Each
/// route's own layers are inside them: gzip answers on the routes whose answers can be large,
/// gzip request bodies on the routes that read one (see [`routes`]).
fn with_http_layers(router: Router, state: &AppState) -> Router {
    let http = &state.settings.http;
    let sentry = sentry::Hub::main().client().is_some_and(|c| c.is_enabled());
    let access = access::AccessConfig { trusted_proxies: http.trusted_proxies.clone().into(), sentry };
    router.layer(
        ServiceBuilder::new()
            .option_layer(sentry.then(sentry_tower::NewSentryLayer::<axum::extract::Request>::new_from_top))
            .option_layer(sentry.then(sentry_tower::SentryHttpLayer::new))
            .layer(access::AccessLayer(access))
            .option_layer(cors::layer(&http.cors_origins)),
    )
}
