//! Test harness: the real server on port 0, against a fresh store per test.
//!
//! - `TestApp::spawn(backend)` runs the application in-process (the same `Application` the binary
//!   runs) and speaks HTTP to it on loopback.
//! - `ServerProcess::start(store_url, args)` runs the real binary, for tests that kill it.
//! - `both_backends!(test_fn, …)` instantiates `async fn test_fn(backend: Backend)` once per
//!   storage backend, so one test body covers every backend.
#![allow(dead_code)] // each test binary uses part of the harness

pub mod certs;
pub mod figures;
pub mod pg;
pub mod pg_tls;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use jetstream::app::Application;
use jetstream::auth::{Scope, create_token};
use jetstream::config::Settings;
use reqwest::StatusCode;
use serde_json::Value;
use tempfile::TempDir;

/// Storage backends every backend-generic test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    /// A fresh database per test on the server at `DATABASE_URL` (see `pg.rs`).
    Postgres,
}

/// A fresh, empty store for one test; the guard keeps it alive.
pub struct TestStore {
    pub url: String,
    _dir: Option<TempDir>,
    _pg: Option<pg::TestDatabase>,
}

impl TestStore {
    /// A store that something else owns (e.g. a database on a cluster a test started).
    pub fn at(url: String) -> Self {
        Self { url, _dir: None, _pg: None }
    }

    pub async fn fresh(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}/jetstream.db", dir.path().display());
                Self { url, _dir: Some(dir), _pg: None }
            }
            Backend::Postgres => {
                let (db, url) = pg::TestDatabase::create().await;
                Self { url, _dir: None, _pg: Some(db) }
            }
        }
    }
}

/// Runs `async fn $test(backend: Backend)` once per backend, in a module per backend.
#[macro_export]
macro_rules! both_backends {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test($crate::common::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test($crate::common::Backend::Postgres).await
                }
            )*
        }
    };
}

/// The server running in-process on a free loopback port.
pub struct TestApp {
    pub addr: SocketAddr,
    pub base: String,
    pub store: TestStore,
    pub client: reqwest::Client,
    /// A token with every scope.
    pub token: String,
    /// The server's store and token table (not its whole state: a held `Writer` handle would
    /// keep the writer from draining at shutdown).
    store_handle: std::sync::Arc<dyn jetstream::storage::Store>,
    tokens: std::sync::Arc<jetstream::auth::Tokens>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> Self {
        Self::spawn_with(backend, Settings::default()).await
    }

    pub async fn spawn_with(backend: Backend, settings: Settings) -> Self {
        let store = TestStore::fresh(backend).await;
        Self::spawn_on(store, settings).await
    }

    /// Starts a server on an existing store (e.g. to restart over the same data).
    pub async fn spawn_on(store: TestStore, settings: Settings) -> Self {
        let app = Application::build(settings, &store.url, "127.0.0.1:0").await.expect("application starts");
        let addr = app.local_addr();
        let (store_handle, tokens) = (app.state().store.clone(), app.state().tokens.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until(async {
            let _ = stopped.await;
        }));
        let mut me = Self {
            addr,
            base: format!("http://{addr}"),
            store,
            client: reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("client"),
            token: String::new(),
            store_handle,
            tokens,
            stop: Some(stop),
            task: Some(task),
        };
        me.token = me.token_with(&Scope::ALL).await;
        me
    }

    /// Creates a token with `scopes` and makes the server see it at once.
    pub async fn token_with(&self, scopes: &[Scope]) -> String {
        let name = format!("t{}", rand_suffix());
        let secret = create_token(&*self.store_handle, &name, scopes, None, jetstream::clock::now_ms())
            .await
            .expect("token created");
        self.tokens.reload(&*self.store_handle).await.expect("tokens reload");
        secret
    }

    /// A token with `scopes` that has already expired.
    pub async fn expired_token(&self, scopes: &[Scope]) -> String {
        let name = format!("expired{}", rand_suffix());
        let created = jetstream::clock::now_ms() - 10_000;
        let secret = create_token(&*self.store_handle, &name, scopes, Some(Duration::from_secs(1)), created)
            .await
            .expect("token created");
        self.tokens.reload(&*self.store_handle).await.expect("tokens reload");
        secret
    }

    /// A token with `scopes` that has been revoked.
    /// Creates a token named `name` with `scopes`; its secret.
    pub async fn create_named_token(&self, name: &str, scopes: &[Scope]) -> String {
        let secret = create_token(&*self.store_handle, name, scopes, None, jetstream::clock::now_ms())
            .await
            .expect("token created");
        self.tokens.reload(&*self.store_handle).await.expect("tokens reload");
        secret
    }

    /// Revokes the token `name` and makes the server see it at once.
    pub async fn revoke_token(&self, name: &str) {
        assert!(self.store_handle.revoke_token(name, jetstream::clock::now_ms()).await.expect("revoke"));
        self.tokens.reload(&*self.store_handle).await.expect("tokens reload");
    }

    pub async fn revoked_token(&self, scopes: &[Scope]) -> String {
        let name = format!("revoked{}", rand_suffix());
        let secret = create_token(&*self.store_handle, &name, scopes, None, jetstream::clock::now_ms())
            .await
            .expect("token created");
        assert!(self.store_handle.revoke_token(&name, jetstream::clock::now_ms()).await.expect("revoke"));
        self.tokens.reload(&*self.store_handle).await.expect("tokens reload");
        secret
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// POSTs a JSON body to the ingest endpoint with the all-scopes token.
    pub async fn ingest(&self, body: &Value) -> (StatusCode, Value) {
        let r = self.client.post(self.url("/api/v1/events")).bearer_auth(&self.token).json(body).send().await;
        json_of(r.expect("ingest request")).await
    }

    /// POSTs `body` as NDJSON (`Content-Type: application/x-ndjson`) with the ingest token.
    pub async fn ingest_ndjson(&self, body: impl Into<reqwest::Body>) -> (StatusCode, Value) {
        let r = self
            .client
            .post(self.url("/api/v1/events"))
            .bearer_auth(&self.token)
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .await;
        json_of(r.expect("ingest request")).await
    }

    /// GETs `path` with `token` (None: no Authorization header).
    pub async fn get_as(&self, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        let mut req = self.client.get(self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        json_of(req.send().await.expect("GET request")).await
    }

    /// GETs `path` with the all-scopes token.
    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.get_as(path, Some(&self.token.clone())).await
    }

    /// Stops the server gracefully and returns its store (to restart on it).
    pub async fn stop(mut self) -> TestStore {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.expect("server task").expect("server stopped cleanly");
        }
        std::mem::replace(&mut self.store, TestStore { url: String::new(), _dir: None, _pg: None })
    }
}

/// A response's status and JSON body (Null when the body is not JSON).
pub async fn json_of(r: reqwest::Response) -> (StatusCode, Value) {
    let status = r.status();
    let text = r.text().await.expect("response body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

pub fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!("{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// The real `jetstream` binary running as a child process (killed on drop).
pub struct ServerProcess {
    pub child: Child,
    pub addr: SocketAddr,
    pub base: String,
}

pub fn jetstream_bin() -> &'static str {
    env!("CARGO_BIN_EXE_jetstream")
}

impl ServerProcess {
    /// Starts `jetstream <args…>` (e.g. `["serve", "--store", url]`; `--listen 127.0.0.1:0` is
    /// added) and waits for its `listening on http://ADDR` line.
    pub fn start(args: &[&str]) -> Self {
        let mut child = Command::new(jetstream_bin())
            .args(args)
            .args(["--listen", "127.0.0.1:0"])
            .env("JETSTREAM_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("jetstream binary starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            let line = lines.next().expect("server printed its address before exiting").expect("stdout line");
            if let Some(a) = line.strip_prefix("listening on http://") {
                break a.parse().expect("a socket address");
            }
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Self { child, addr, base: format!("http://{addr}") }
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs the binary to completion: (exit code, stdout, stderr).
pub fn run_cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(jetstream_bin()).args(args).env("JETSTREAM_LOG", "warn").output().expect("binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// JSON read with every number kept as its text (serde_json's `Value` keeps an `f64`, which would
/// hide exactly the rounding the tests look for).
#[derive(Debug, Clone, PartialEq)]
pub enum Exact {
    Null,
    Bool(bool),
    Num(String),
    Str(String),
    Arr(Vec<Exact>),
    Obj(std::collections::BTreeMap<String, Exact>),
}

impl Exact {
    pub fn parse(text: &str) -> Self {
        let raw: &serde_json::value::RawValue = serde_json::from_str(text).expect("JSON");
        Self::of(raw.get())
    }

    fn of(raw: &str) -> Self {
        use serde_json::value::RawValue;
        match raw.as_bytes()[0] {
            b'n' => Exact::Null,
            b't' => Exact::Bool(true),
            b'f' => Exact::Bool(false),
            b'"' => Exact::Str(serde_json::from_str(raw).expect("string")),
            b'[' => {
                let items: Vec<&RawValue> = serde_json::from_str(raw).expect("array");
                Exact::Arr(items.into_iter().map(|r| Self::of(r.get())).collect())
            }
            b'{' => {
                let fields: std::collections::BTreeMap<String, &RawValue> = serde_json::from_str(raw).expect("object");
                Exact::Obj(fields.into_iter().map(|(k, r)| (k, Self::of(r.get()))).collect())
            }
            _ => Exact::Num(raw.to_string()),
        }
    }

    /// The member `key` (Null when absent or not an object).
    pub fn get(&self, key: &str) -> &Exact {
        match self {
            Exact::Obj(m) => m.get(key).unwrap_or(&Exact::Null),
            _ => &Exact::Null,
        }
    }

    /// The decimal of a number (None for null), exactly as written.
    pub fn dec(&self) -> Option<rust_decimal::Decimal> {
        match self {
            Exact::Null => None,
            Exact::Num(t) => Some(rust_decimal::Decimal::from_str_exact(t).unwrap_or_else(|e| panic!("{t}: {e}"))),
            other => panic!("not a number: {other:?}"),
        }
    }

    pub fn items(&self) -> &[Exact] {
        match self {
            Exact::Arr(a) => a,
            _ => &[],
        }
    }

    /// A number as written: no exponent, no float formatting.
    pub fn is_plain_number(&self) -> bool {
        matches!(self, Exact::Num(t) if t.bytes().all(|b| b.is_ascii_digit() || b == b'.' || b == b'-'))
    }
}
