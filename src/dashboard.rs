//! The built-in live dashboard page at `GET /`.
//!
//! The page is built from `web/` with npm (see web/README.md) and the built files in `web/dist/`
//! are committed and embedded here, so the binary serves it and `cargo build` needs no Node
//! (`scripts/web-build-check.sh` checks that the committed build matches the sources). Loading
//! the page needs no token; the page asks for one and sends it only in the `Authorization` header
//! of its API calls and its event stream.
//!
//! The built files have fixed names, so they are served with `Cache-Control: no-cache` and an
//! `ETag` (a hash of the embedded bytes, computed at compile time): a browser revalidates with
//! one small request and gets `304 Not Modified` until the binary changes.

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// The page's own content security policy: its script and styles come from this server only
/// (uPlot sets element styles from script, hence `'unsafe-inline'` for styles), and it talks
/// only to this server.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// One embedded file of the built page.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
    /// FNV-1a of `body`, the ETag.
    hash: u64,
}

impl Asset {
    const fn new(path: &'static str, content_type: &'static str, body: &'static [u8]) -> Self {
        Self { path, content_type, body, hash: fnv1a(body) }
    }
}

/// 64-bit FNV-1a: enough to tell two builds apart, and computable at compile time.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        h ^= bytes[i] as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    h
}

/// Every file of `web/dist/` (tests/dashboard.rs checks that none is missing).
const ASSETS: &[Asset] = &[
    Asset::new("/", "text/html; charset=utf-8", include_bytes!("../web/dist/index.html")),
    Asset::new(
        "/assets/dashboard.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../web/dist/assets/dashboard.js"),
    ),
    Asset::new("/assets/dashboard.css", "text/css; charset=utf-8", include_bytes!("../web/dist/assets/dashboard.css")),
];

/// The page's routes (no token needed). Merged into the API's router.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    ASSETS.iter().fold(Router::new(), |router, asset| {
        router.route(asset.path, get(move |headers: HeaderMap| async move { serve(asset, &headers) }))
    })
}

fn serve(asset: &'static Asset, request: &HeaderMap) -> Response {
    let etag = format!("\"{:016x}\"", asset.hash);
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut headers = HeaderMap::new();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, v);
    }
    if asset.content_type.starts_with("text/html") {
        headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
        headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
        headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }
    if fresh {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    (headers, asset.body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_has_its_own_etag() {
        let mut hashes: Vec<u64> = ASSETS.iter().map(|a| a.hash).collect();
        hashes.sort_unstable();
        hashes.dedup();
        assert_eq!(hashes.len(), ASSETS.len());
    }

    #[test]
    fn the_page_links_only_embedded_assets() {
        let page = std::str::from_utf8(ASSETS[0].body).expect("the page is UTF-8");
        for link in page.split(['"', '\'']).filter(|s| s.starts_with("/assets/")) {
            assert!(ASSETS.iter().any(|a| a.path == link), "{link} is linked but not embedded");
        }
    }

    #[test]
    fn a_matching_if_none_match_gets_304() {
        let asset = &ASSETS[1];
        let mut h = HeaderMap::new();
        let etag = format!("\"{:016x}\"", asset.hash);
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_str(&etag).expect("an ETag is a header value"));
        assert_eq!(serve(asset, &h).status(), StatusCode::NOT_MODIFIED);
        assert_eq!(serve(asset, &HeaderMap::new()).status(), StatusCode::OK);
    }
}
