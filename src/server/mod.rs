//! The HTTP(S) listener: accepts connections and serves the router on each, with the limits a
//! server facing the internet needs (hyper's own defaults leave most of them open):
//!
//! - at most `http.max_connections` connections at once (lowered to leave headroom below the
//!   process's file limit); a connection beyond the cap is answered `503` with `Retry-After` and
//!   closed, so clients learn to back off and the process never runs out of descriptors;
//! - `http.header_read_timeout` to send a request's headers, which also closes an idle
//!   keep-alive connection (hyper starts the timer when it waits for the next request);
//! - TLS handshakes in their own tasks, bounded by [`tls::HANDSHAKE_TIMEOUT`];
//! - on shutdown, no new connection is accepted and the ones open may finish their requests for
//!   `http.shutdown_timeout`; then they are dropped and the process goes on stopping (an answer
//!   is only ever sent after its commit, so nothing acknowledged is lost).
//!
//! Body read timeouts are the handlers' (they know the body's size): see `api::events`.

pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tower::ServiceExt as _;

use crate::config::HttpSettings;

/// Descriptors kept for everything but client connections (the store, Kafka, logs, …).
const FD_HEADROOM: u64 = 256;

/// The body of the answer to a connection over the cap.
const OVER_CAPACITY: &str = r#"{"message":"too many connections; retry in a moment"}"#;

/// The connection cap: the configured one, lowered to fit the file limit (raised to its hard
/// limit first, as servers do).
pub fn connection_cap(configured: usize) -> usize {
    let limit = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024);
    let room = limit.saturating_sub(FD_HEADROOM) * 3 / 4;
    configured.min(usize::try_from(room).unwrap_or(usize::MAX)).max(1)
}

/// Serves `router` on `listener` (with TLS when `tls` is given) until `shutdown` completes,
/// then lets requests in progress finish for `http.shutdown_timeout`.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    router: Router,
    http: &HttpSettings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let cap = connection_cap(http.max_connections);
    let slots = Arc::new(Semaphore::new(cap));
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(http.header_read_timeout).keep_alive(true);
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    // Every connection's task, so that those still running at the shutdown deadline can be
    // stopped: each holds the router, whose state holds the writer, which drains only once all
    // its handles are gone.
    let mut connections = tokio::task::JoinSet::new();
    tracing::debug!(cap, "accepting connections");
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors and the like: wait rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tokio::spawn(refuse(stream));
            continue;
        };
        while connections.try_join_next().is_some() {}
        let (router, builder, acceptor, watcher) =
            (router.clone(), builder.clone(), acceptor.clone(), graceful.watcher());
        connections.spawn(async move {
            let _slot = slot; // released when the connection ends
            match acceptor {
                None => serve_connection(stream, peer, router, &builder, watcher).await,
                Some(acceptor) => match tokio::time::timeout(tls::HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => serve_connection(stream, peer, router, &builder, watcher).await,
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                },
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(http.shutdown_timeout, graceful.shutdown()).await.is_err() {
        tracing::warn!(timeout = ?http.shutdown_timeout, "requests still in progress at the shutdown deadline were dropped");
    }
    connections.shutdown().await;
}

async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    router: Router,
    builder: &hyper::server::conn::http1::Builder,
    watcher: hyper_util::server::graceful::Watcher,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        router.clone().oneshot(req.map(axum::body::Body::new))
    });
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// Answers a connection over the cap with a 503 and closes it, without waiting on the client.
async fn refuse(mut stream: TcpStream) {
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{OVER_CAPACITY}",
        OVER_CAPACITY.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(answer.as_bytes())).await;
    let _ = stream.shutdown().await;
}
