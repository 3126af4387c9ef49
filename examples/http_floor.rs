//! The floor under the seed endpoints: how many requests a second this machine's Rust HTTP stack
//! answers when the handler does nothing at all, so a Jetstream figure can be split into "the
//! stack" and "Jetstream's own work" (bench/http-floor.sh runs it next to nginx and the server).
//!
//! Every mode answers any request with the same 29-byte JSON body, keep-alive, HTTP/1.1, over the
//! same hyper connection builder the server uses:
//!
//! - `hyper`: a bare hyper service, on a multi-thread runtime (one worker per core);
//! - `axum`: an axum `Router` with one route and no layers, on the same runtime;
//! - `axum-per-core`: the same router on one current-thread runtime per core, each accepting on
//!   its own `SO_REUSEPORT` socket (nginx's model: a connection and its wakeups stay on one core).
//!
//! ```sh
//! cargo run --release --example http_floor -- axum 127.0.0.1:18090
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;

use axum::Router;
use axum::routing::get;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket};
use tower::ServiceExt as _;

const BODY: &str = r#"{"total":1234.56,"count":42}"#;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "axum".into());
    let addr: SocketAddr = args.next().unwrap_or_else(|| "127.0.0.1:18090".into()).parse()?;
    let cores = std::thread::available_parallelism().map_or(2, usize::from);
    match mode.as_str() {
        "hyper" | "axum" => {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(cores).enable_all().build()?;
            rt.block_on(async move {
                let listener = reuseport_listener(addr)?;
                println!("listening on {} ({mode}, {cores} workers)", listener.local_addr()?);
                accept_loop(listener, mode == "axum").await
            })
        }
        "axum-per-core" => {
            let threads: Vec<_> = (0..cores)
                .map(|i| {
                    std::thread::spawn(move || -> anyhow::Result<()> {
                        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                        rt.block_on(async move {
                            let listener = reuseport_listener(addr)?;
                            if i == 0 {
                                println!("listening on {} (axum-per-core, {cores} runtimes)", listener.local_addr()?);
                            }
                            accept_loop(listener, true).await
                        })
                    })
                })
                .collect();
            for t in threads {
                t.join().map_err(|_| anyhow::anyhow!("a runtime thread panicked"))??;
            }
            Ok(())
        }
        other => anyhow::bail!("unknown mode {other:?}: hyper, axum or axum-per-core"),
    }
}

/// A listener on `addr` that other sockets may share (`SO_REUSEPORT`: the kernel spreads new
/// connections over them).
fn reuseport_listener(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    Ok(socket.listen(1024)?)
}

/// Accepts connections and serves each with hyper's HTTP/1 builder, in a task of its own.
async fn accept_loop(listener: TcpListener, axum: bool) -> anyhow::Result<()> {
    let router = Router::new().route("/{*path}", get(|| async { ([("content-type", "application/json")], BODY) }));
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let router = router.clone();
        tokio::spawn(async move {
            let io = TokioIo::new(stream);
            let builder = hyper::server::conn::http1::Builder::new();
            let result = if axum {
                let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| router.clone().oneshot(req));
                builder.serve_connection(io, svc).await
            } else {
                let svc = hyper::service::service_fn(|_req: hyper::Request<Incoming>| async {
                    let mut resp =
                        hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(BODY.as_bytes())));
                    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                    Ok::<_, Infallible>(resp)
                });
                builder.serve_connection(io, svc).await
            };
            let _ = result;
        });
    }
}
