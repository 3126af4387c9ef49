//! The HTTP edge of every route, in one layer: the request id (taken from `X-Request-Id` or made
//! up, and returned), the access log (one INFO line per request: method, route template, status,
//! latency, bytes, token name, request id, client address), the HTTP metrics (the request counter
//! and latency histogram by route template and status class) and error tracking's tags.
//!
//! One hand-written service rather than tower-http's two request-id layers and an axum
//! `from_fn` middleware: the same work with one boxed future per request instead of three
//! services' state, and the parts only the log needs (the client address, the id's text) are
//! worked out only when the access log is on (bench/README.md, "The HTTP floor").
//!
//! An answer given before the request's body was read to its end says `Connection: close`: the
//! unread rest is still on the connection, so hyper ends it after the answer, and without the
//! header a client's pool can send its next request down it as it closes ("connection closed
//! before message completed"; seen with a 503 of a full ingest budget, and after any 401 or 413).
//!
//! The client address is the peer's, or the last address of `X-Forwarded-For` not of a trusted
//! proxy when the peer is one (`http.trusted_proxies`): a client can put anything in that header,
//! so only what a trusted proxy appended is believed.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{ConnectInfo, MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue};
use axum::response::Response;
use hyper::body::{Frame, SizeHint};
use tracing::Instrument as _;

use crate::telemetry::{logs, metrics};

/// The request id header.
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

/// What the edge needs from the settings.
#[derive(Debug, Clone)]
pub struct AccessConfig {
    pub trusted_proxies: Arc<[IpAddr]>,
    /// Error tracking is on: each request's scope gets its route and id.
    pub sentry: bool,
}

/// The layer of [`Access`].
#[derive(Debug, Clone)]
pub struct AccessLayer(pub AccessConfig);

impl<S> tower::Layer<S> for AccessLayer {
    type Service = Access<S>;

    fn layer(&self, inner: S) -> Access<S> {
        Access { inner, config: self.0.clone() }
    }
}

/// See the module's documentation.
#[derive(Debug, Clone)]
pub struct Access<S> {
    inner: S,
    config: AccessConfig,
}

impl<S> tower::Service<Request> for Access<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        // The service that was polled ready answers; a clone takes its place (tower's rule).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let started = Instant::now();
        let header = HeaderName::from_static(REQUEST_ID);
        // Returned with the answer, not added to the request: nothing behind this layer reads it
        // from the headers (the span carries it), and the insert was a header map insert per request.
        let id = req.headers().get(&header).cloned().unwrap_or_else(new_request_id);
        let method = req.method().clone();
        // Owned, without copying strings: the matched route is an `Arc<str>`.
        let matched = req.extensions().get::<MatchedPath>().cloned();
        let logged = tracing::enabled!(target: logs::ACCESS_TARGET, tracing::Level::INFO);
        // Only the access log reads the token's name: the slot goes into the request when it is on.
        let token = logged.then(TokenName::default);
        if let Some(token) = &token {
            req.extensions_mut().insert(token.clone());
        }
        let client = if logged { client_addr(&req, &self.config.trusted_proxies) } else { None };
        // Only a request with a body pays for watching it (not the GETs).
        let read = (!req.body().is_end_stream()).then(|| {
            let read = Arc::new(AtomicBool::new(false));
            let body = std::mem::take(req.body_mut());
            *req.body_mut() = Body::new(Watched { body, read: read.clone() });
            read
        });
        let sentry = self.config.sentry;
        Box::pin(async move {
            let route = matched.as_ref().map_or(UNMATCHED, MatchedPath::as_str);
            // `to_str` accepts visible ASCII only, so cutting at a byte count cuts at a character.
            let request_id = id.to_str().unwrap_or_default();
            let request_id = &request_id[..request_id.len().min(MAX_ID_CHARS)];
            if sentry {
                // Error reports of this request carry its route and id.
                sentry::configure_scope(|scope| {
                    scope.set_tag("route", route);
                    scope.set_tag("request_id", request_id);
                });
            }
            let span = tracing::info_span!("request", request_id = %request_id, route = %route);
            let Ok(mut resp) = inner.call(req).instrument(span).await;
            let took = started.elapsed();
            let status = resp.status().as_u16();
            metrics::http_request(method.as_str(), route, status, took);
            if logged {
                // Outside the request's span: the line carries its route and id as its own fields,
                // and the span's prefix repeated them (a quarter of the line's formatting).
                logs::access(&logs::AccessLine {
                    method: method.as_str(),
                    route,
                    status,
                    latency_ms: took.as_secs_f64() * 1000.0,
                    bytes: resp.body().size_hint().exact(),
                    token: token.as_ref().and_then(|t| t.0.get()).map(|n| &**n),
                    request_id,
                    client,
                });
            }
            resp.headers_mut().insert(header, id);
            if read.is_some_and(|r| !r.load(Ordering::Relaxed)) {
                resp.headers_mut().insert(axum::http::header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok(resp)
        })
    }
}

/// A request's body, noting when it has been read to its end.
struct Watched {
    body: Body,
    read: Arc<AtomicBool>,
}

impl HttpBody for Watched {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let frame = Pin::new(&mut self.body).poll_frame(cx);
        // The end is known either way: no more frames, or a body of known length fully read.
        if matches!(frame, Poll::Ready(None)) || self.body.is_end_stream() {
            self.read.store(true, Ordering::Relaxed);
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A new request id: a random UUID (v4), as tower-http's `MakeRequestUuid` made them.
fn new_request_id() -> HeaderValue {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let text = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    HeaderValue::from_str(text).expect("a UUID is a valid header value")
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
