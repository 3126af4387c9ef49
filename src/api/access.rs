//! The access log and the HTTP metrics, emitted together by one middleware: one INFO line per
//! request (method, route template, status, latency, bytes, token name, request id, client
//! address) and the request counter and latency histogram by route template and status class.
//!
//! The request id is set (taken from `X-Request-Id` or generated) and returned by tower-http's
//! request-id layers around this one (see `api::router`); the client address is the peer's,
//! or the last address of `X-Forwarded-For` not of a trusted proxy when the peer is one
//! (`http.trusted_proxies`): a client can put anything in that header, so only what a trusted
//! proxy appended is believed.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::body::HttpBody as _;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument as _;

use crate::telemetry::metrics;

/// The request id header (set or taken by tower-http's request-id layers).
pub const REQUEST_ID: &str = "x-request-id";
/// Longest request id logged and reported; a longer one given by a client is cut.
const MAX_ID_CHARS: usize = 128;
/// The route label of a request no route matched (a 404 or 405 answer).
const UNMATCHED: &str = "unmatched";

/// The token's name, once an access extractor has checked it: filled in by the extractor, read
/// by the access log (a handler's extractors cannot change the response).
#[derive(Debug, Clone, Default)]
pub struct TokenName(Arc<OnceLock<Arc<str>>>);

impl TokenName {
    pub fn set(&self, name: Arc<str>) {
        let _ = self.0.set(name);
    }
}

/// What the access log needs from the settings.
#[derive(Debug, Clone)]
pub struct AccessConfig {
    pub trusted_proxies: Arc<[IpAddr]>,
}

pub async fn log_access(State(config): State<AccessConfig>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    // Owned, without copying strings: the matched route is an `Arc<str>`, the id a shared header.
    let matched = req.extensions().get::<MatchedPath>().cloned();
    let route = matched.as_ref().map_or(UNMATCHED, MatchedPath::as_str);
    let id_header = req.headers().get(REQUEST_ID).cloned();
    // `to_str` accepts visible ASCII only, so cutting at a byte count cuts at a character.
    let request_id = id_header.as_ref().and_then(|v| v.to_str().ok()).unwrap_or_default();
    let request_id = &request_id[..request_id.len().min(MAX_ID_CHARS)];
    let client = client_addr(&req, &config.trusted_proxies);
    let token = TokenName::default();
    req.extensions_mut().insert(token.clone());
    // Error reports of this request carry its route and id (a no-op without error tracking).
    sentry::configure_scope(|scope| {
        scope.set_tag("route", route);
        scope.set_tag("request_id", request_id);
    });
    let span = tracing::info_span!("request", request_id = %request_id, route = %route);
    let resp = next.run(req).instrument(span.clone()).await;
    let took = started.elapsed();
    let status = resp.status().as_u16();
    metrics::http_request(method.as_str(), route, status, took);
    let _enter = span.enter();
    tracing::info!(
        target: "jetstream::access",
        method = %method,
        route = %route,
        status,
        latency_ms = took.as_secs_f64() * 1000.0,
        bytes = resp.body().size_hint().exact(),
        token = token.0.get().map(|n| &**n),
        request_id = %request_id,
        client = %client.map_or_else(|| "-".to_string(), |c| c.to_string()),
        "request"
    );
    resp
}

/// The client's address: the peer's, unless the peer is a trusted proxy; then the nearest
/// address in `X-Forwarded-For` that is not one.
fn client_addr(req: &Request, trusted: &[IpAddr]) -> Option<IpAddr> {
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>()?.0.ip();
    if !trusted.contains(&peer) {
        return Some(peer);
    }
    let forwarded = req.headers().get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok());
    let hops: Vec<&str> = forwarded.flat_map(|v| v.split(',')).map(str::trim).collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        match hop.parse::<IpAddr>() {
            Ok(ip) if trusted.contains(&ip) => client = ip,
            Ok(ip) => return Some(ip),
            Err(_) => break,
        }
    }
    Some(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(peer: &str, xff: Option<&str>) -> Request {
        let mut r = Request::new(axum::body::Body::empty());
        let peer: SocketAddr = peer.parse().expect("an address");
        r.extensions_mut().insert(ConnectInfo(peer));
        if let Some(x) = xff {
            r.headers_mut().insert("x-forwarded-for", x.parse().expect("a header value"));
        }
        r
    }

    #[test]
    fn forwarded_for_is_believed_only_from_a_trusted_proxy() {
        let proxy: IpAddr = "10.0.0.1".parse().expect("ip");
        let trusted = [proxy];
        let ip = |s: &str| Some(s.parse::<IpAddr>().expect("ip"));
        // Not from a proxy: the header is the client's own claim.
        assert_eq!(client_addr(&request("192.0.2.7:1000", Some("1.2.3.4")), &trusted), ip("192.0.2.7"));
        // From the proxy: the address it appended (the last), not what the client wrote before it.
        assert_eq!(client_addr(&request("10.0.0.1:1000", Some("6.6.6.6, 198.51.100.9")), &trusted), ip("198.51.100.9"));
        // From the proxy without the header: the proxy.
        assert_eq!(client_addr(&request("10.0.0.1:1000", None), &trusted), ip("10.0.0.1"));
    }
}
