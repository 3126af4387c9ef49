//! CORS from `http.cors_origins`: off (no headers at all) unless origins are configured; `*`
//! allows any origin. Browsers may then send the API's own headers (the token, an idempotency
//! key, a request id, a gzip body) and read the request id of the answer.

use axum::http::{HeaderName, HeaderValue, Method, header};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// How long a browser may keep a preflight's answer.
const PREFLIGHT_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(600);

/// The CORS layer for `origins`, or `None` when there are none. An origin that is not a valid
/// header value is left out with a warning.
pub fn layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o.trim() == "*") {
        AllowOrigin::any()
    } else {
        let list: Vec<HeaderValue> = origins
            .iter()
            .filter_map(|o| {
                let v = HeaderValue::from_str(o.trim().trim_end_matches('/'));
                if v.is_err() {
                    tracing::warn!(origin = %o, "http.cors_origins: not a valid origin; left out");
                }
                v.ok()
            })
            .collect();
        AllowOrigin::list(list)
    };
    let request_id = HeaderName::from_static(super::access::REQUEST_ID);
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::CONTENT_ENCODING,
                HeaderName::from_static("idempotency-key"),
                request_id.clone(),
            ])
            .expose_headers([request_id])
            .max_age(PREFLIGHT_MAX_AGE),
    )
}
