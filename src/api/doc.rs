//! The OpenAPI 3.1 description, generated from the handlers' annotations (utoipa): every route
//! is registered through `utoipa_axum::routes!`, so the description lists exactly the routes
//! served, each with its scope (the `bearer` security requirement), parameters, answers and
//! error shape. Served at `GET /api/openapi.json` without a token.

use serde::Serialize;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// Every error answer: a short message for the client.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorOut {
    pub message: String,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Jetstream",
        description = "Real-time analytics: events in over HTTP or Kafka, time-bucketed rollups, dashboard API out. \
                       Every route but /healthz, /readyz and /api/openapi.json needs `Authorization: Bearer <token>` \
                       with the route's scope (read, ingest, admin or metrics; listed as the bearer requirement's scopes). \
                       Decimals are exact JSON numbers (plain digits, no exponent)."
    ),
    modifiers(&BearerTokens),
    components(schemas(ErrorOut)),
    tags(
        (name = "seed", description = "The original design's two endpoints"),
        (name = "metrics", description = "Any metric over any window"),
        (name = "events", description = "Ingest and raw events"),
        (name = "admin", description = "Operations (scope admin)"),
        (name = "health", description = "Liveness and readiness (no token)")
    )
)]
pub struct ApiDoc;

/// The `bearer` scheme every protected route requires (its scopes name the token scope).
struct BearerTokens;

impl Modify for BearerTokens {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut http = Http::new(HttpAuthScheme::Bearer);
        http.bearer_format = Some("js_…".into());
        http.description = Some("A Jetstream token (`jetstream token create`), with the route's scope".into());
        components.add_security_scheme("bearer", SecurityScheme::Http(http));
    }
}
