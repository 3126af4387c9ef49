//! Operating it, through the front door: Prometheus metrics (read with a Prometheus text parser),
//! the ops listener of `serve` and `consume`, request ids and the access log, error reports to a
//! stand-in collector, CORS and gzip.

mod common;
#[path = "common/kafka.rs"]
mod kafka_harness;

use std::io::BufRead as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Backend, TestApp, TestStore, jetstream_bin};
use jetstream::app::Application;
use jetstream::auth::Scope;
use jetstream::config::Settings;
use prometheus_parse::{Scrape, Value};
use serde_json::{Value as Json, json};

/// The metrics recorder is one per process: the tests that read figures from it do not run at
/// the same time as the ones that move them.
static FIGURES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn sold(product: u64) -> Json {
    json!({"event_name": "productSold", "product_id": product, "no_of_units": 1, "amount": "1.25"})
}

/// `/metrics` read with a Prometheus text parser.
struct Figures(Scrape);

impl Figures {
    fn parse(text: &str) -> Self {
        let lines = text.lines().map(|l| Ok(l.to_string()));
        Self(Scrape::parse(lines).expect("the Prometheus text parser reads /metrics"))
    }

    /// The sample of `metric` whose labels include `labels` (0 when absent): a counter's or
    /// gauge's value, a histogram's count.
    fn get(&self, metric: &str, labels: &[(&str, &str)]) -> f64 {
        let matches = |s: &prometheus_parse::Sample| {
            s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
        };
        self.0
            .samples
            .iter()
            .filter(|s| matches(s))
            .map(|s| match &s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
                Value::Histogram(b) => b.iter().map(|c| c.count).fold(0.0, f64::max),
                Value::Summary(_) => panic!("{metric} is a summary; histograms were configured"),
            })
            .sum()
    }

    fn has_help(&self, metric: &str) -> bool {
        self.0.docs.contains_key(metric)
    }
}

/// Prometheus's own checker (`promtool check metrics`: parse and lint) accepts `text`, when
/// promtool is installed (Debian's `prometheus` package); skipped otherwise.
fn promtool_accepts(text: &str) {
    use std::io::Write as _;
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        eprintln!("promtool not installed: skipping its check");
        return;
    };
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write to promtool");
    let out = child.wait_with_output().expect("promtool runs");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics: {said}");
}

async fn figures(app: &TestApp, token: &str) -> Figures {
    let r = app.client.get(app.url("/metrics")).bearer_auth(token).send().await.expect("GET /metrics");
    assert_eq!(r.status().as_u16(), 200);
    let ct = r.headers()["content-type"].to_str().expect("ascii").to_string();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    let text = r.text().await.expect("body");
    Figures::parse(&text)
}

/// The figure the issue asks for: accepted += 1,000 after an ingest of 1,000 (and the rejected,
/// commits, HTTP, freshness and process families move or show as they should).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_their_scope_and_count_a_known_ingest() {
    let _figures = FIGURES.lock().await;
    let app = TestApp::spawn(Backend::Sqlite).await;
    let metrics = app.token_with(&[Scope::Metrics]).await;
    let read = app.token_with(&[Scope::Read]).await;
    assert_eq!(app.client.get(app.url("/metrics")).send().await.unwrap().status().as_u16(), 401);
    assert_eq!(app.client.get(app.url("/metrics")).bearer_auth(&read).send().await.unwrap().status().as_u16(), 403);

    let before = figures(&app, &metrics).await;
    let accepted = [("source", "http"), ("event", "productSold")];
    let mut body: Vec<Json> = (0..1000).map(sold).collect();
    body.push(json!({"event_name": "productSold", "product_id": 1, "no_of_units": 1})); // no amount
    body.push(json!({"event_name": "productSold", "product_id": 2, "no_of_units": 1}));
    body.push(json!({"no_name": true}));
    body.push(json!({"event_name": "somethingUndeclared", "x": 1}));
    let (s, out) = app.ingest(&Json::Array(body)).await;
    assert_eq!((s.as_u16(), &out["accepted"], &out["rejected"]), (200, &json!(1001), &json!(3)), "{out}");
    let after = figures(&app, &metrics).await;

    let moved = |metric: &str, labels: &[(&str, &str)]| after.get(metric, labels) - before.get(metric, labels);
    assert_eq!(moved("jetstream_events_accepted_total", &accepted), 1000.0);
    // An undeclared name is never a label of its own.
    assert_eq!(moved("jetstream_events_accepted_total", &[("source", "http"), ("event", "other")]), 1.0);
    assert!(after.0.samples.iter().all(|s| s.labels.get("event") != Some("somethingUndeclared")));
    let missing = [("source", "http"), ("event", "productSold"), ("reason", "missing_field")];
    assert_eq!(moved("jetstream_events_rejected_total", &missing), 2.0);
    assert_eq!(moved("jetstream_events_rejected_total", &[("reason", "no_name"), ("event", "unknown")]), 1.0);
    assert!(moved("jetstream_commits_total", &[("outcome", "ok")]) >= 1.0);
    assert!(moved("jetstream_commit_duration_seconds", &[]) >= 1.0, "the commit latency histogram counts commits");
    assert!(moved("jetstream_commit_events", &[]) >= 1.0);
    assert_eq!(moved("jetstream_freshness_seconds", &[("source", "http")]), 1001.0, "one freshness per accepted event");
    let ingest = [("method", "POST"), ("route", "/api/v1/events"), ("status", "2xx")];
    assert_eq!(moved("jetstream_http_requests_total", &ingest), 1.0);
    assert!(moved("jetstream_http_request_duration_seconds", &[("route", "/api/v1/events")]) >= 1.0);
    // The 401 and 403 above, by route template and status class.
    assert!(after.get("jetstream_http_requests_total", &[("route", "/metrics"), ("status", "4xx")]) >= 2.0);
    assert!(after.get("jetstream_writer_queue_depth", &[]) >= 0.0);
    assert_eq!(after.get("jetstream_build_info", &[("version", env!("CARGO_PKG_VERSION"))]), 1.0);
    assert!(after.get("process_resident_memory_bytes", &[]) > 1e6);
    assert!(after.get("process_open_fds", &[]) > 3.0);
    assert!(after.get("jetstream_uptime_seconds", &[]) > 0.0);

    // A read through the cache: the second identical read is a hit.
    let hits = after.get("jetstream_read_cache_hits_total", &[]);
    for _ in 0..2 {
        assert_eq!(app.get("/api/product/sale/1").await.0.as_u16(), 200);
    }
    let text = app.client.get(app.url("/metrics")).bearer_auth(&metrics).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("# TYPE jetstream_events_accepted_total counter"));
    assert!(text.contains("# TYPE jetstream_freshness_seconds histogram"));
    let last = Figures::parse(&text);
    promtool_accepts(&text);
    assert!(last.get("jetstream_read_cache_hits_total", &[]) > hits);
    for family in [
        "jetstream_events_accepted_total",
        "jetstream_events_rejected_total",
        "jetstream_commits_total",
        "jetstream_commit_duration_seconds",
        "jetstream_commit_events",
        "jetstream_writer_queue_depth",
        "jetstream_freshness_seconds",
        "jetstream_http_requests_total",
        "jetstream_http_request_duration_seconds",
        "jetstream_read_cache_hits_total",
        "jetstream_store_reads_total",
        "jetstream_build_info",
        "process_resident_memory_bytes",
        "process_open_fds",
        "jetstream_store_database_bytes",
        "jetstream_store_wal_bytes",
        "jetstream_store_free_bytes",
    ] {
        assert!(last.has_help(family), "{family} has no # HELP");
    }
    // The disk watch's figures (every second, and at start): a SQLite file and its file system.
    assert!(last.get("jetstream_store_database_bytes", &[]) > 0.0);
    assert!(last.get("jetstream_store_free_bytes", &[]) > 0.0);

    // HTTP lets a client make up its method: each made-up one is counted as "other", never as a
    // label of its own (a label per method would grow the registry without bound).
    for m in ["PURGE", "MADEUP1", "MADEUP2"] {
        let method = reqwest::Method::from_bytes(m.as_bytes()).unwrap();
        let s = app.client.request(method, app.url("/metrics")).send().await.unwrap().status();
        assert!(s.is_client_error(), "{m}: {s}");
    }
    let text = app.client.get(app.url("/metrics")).bearer_auth(&metrics).send().await.unwrap().text().await.unwrap();
    let methods = Figures::parse(&text);
    let other = [("method", "other"), ("route", "/metrics"), ("status", "4xx")];
    assert_eq!(methods.get("jetstream_http_requests_total", &other), 3.0);
    assert!(
        methods
            .0
            .samples
            .iter()
            .all(|s| !s.labels.get("method").is_some_and(|m| m.starts_with("MADEUP") || m == "PURGE"))
    );
    app.stop().await;
}

/// `serve --ops-listen`: metrics and health with no token, on their own port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ops_listener_answers_without_a_token() {
    let store = TestStore::fresh(Backend::Sqlite).await;
    let app = Application::build(Settings::default(), &store.url, "127.0.0.1:0")
        .await
        .expect("starts")
        .with_ops_listener("127.0.0.1:0")
        .await
        .expect("ops listener");
    let ops = app.ops_addr().expect("an ops address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();
    for (path, status) in [("/metrics", 200), ("/healthz", 200), ("/readyz", 200), ("/api/v1/metrics", 404)] {
        let r = client.get(format!("http://{ops}{path}")).send().await.expect("GET");
        assert_eq!(r.status().as_u16(), status, "{path}");
    }
    let text = client.get(format!("http://{ops}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(Figures::parse(&text).get("jetstream_build_info", &[]) == 1.0);
    let _ = stop.send(());
    task.await.expect("task").expect("stopped cleanly");
}

/// `consume --ops-listen`: a consumer (here of a broker that is not there) has metrics, and its
/// readiness says what is wrong.
#[test]
fn consume_has_an_ops_listener() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = format!("sqlite://{}/c.db", dir.path().display());
    let mut child = Command::new(jetstream_bin())
        .args(["consume", "--store", &store, "--kafka-brokers", "127.0.0.1:1", "--ops-listen", "127.0.0.1:0"])
        .env("JETSTREAM_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("jetstream consume starts");
    let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let addr = loop {
        let line = lines.next().expect("printed the ops address").expect("a line");
        if let Some(a) = line.strip_prefix("ops listening on http://") {
            break a.to_string();
        }
    };
    let get = |path: &str| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            let r = reqwest::get(format!("http://{addr}{path}")).await.expect("GET");
            (r.status().as_u16(), r.text().await.expect("body"))
        })
    };
    let (s, text) = get("/metrics");
    assert_eq!(s, 200);
    let f = Figures::parse(&text);
    assert_eq!(f.get("jetstream_build_info", &[]), 1.0);
    assert!(f.has_help("jetstream_kafka_records_consumed_total") || text.contains("jetstream_uptime_seconds"));
    assert_eq!(get("/healthz").0, 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (s, body) = get("/readyz");
        if s == 503 {
            let v: Json = serde_json::from_str(&body).expect("JSON");
            assert_eq!(v["kafka"]["ok"], json!(false), "{v}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "readyz never said the broker is missing: {s} {body}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A request id given by the client is echoed; without one, one is made up and returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_carries_a_request_id() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let r = app.client.get(app.url("/healthz")).header("x-request-id", "req-42").send().await.unwrap();
    assert_eq!(r.headers()["x-request-id"], "req-42");
    let r = app.client.get(app.url("/api/v1/nowhere")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let made = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(made.len(), 36, "a UUID: {made}");
    let again = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_ne!(again.headers()["x-request-id"].to_str().unwrap(), made, "each request gets its own");
    app.stop().await;
}

/// Runs `jetstream token create` on `store`; the secret.
fn create_token(store: &str, name: &str, scope: &str) -> String {
    let (code, out, err) = common::run_cli(&["token", "create", "--store", store, "--name", name, "--scope", scope]);
    assert_eq!(code, 0, "{err}");
    out.trim().to_string()
}

/// The binary with stdout and stderr piped; its address, once it printed it.
fn start(args: &[&str], envs: &[(&str, &str)]) -> (std::process::Child, String) {
    let mut child = Command::new(jetstream_bin())
        .args(args)
        .envs(envs.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("jetstream starts");
    let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let addr = loop {
        let line = lines.next().expect("printed its address").expect("a line");
        if let Some(a) = line.strip_prefix("listening on http://") {
            break a.to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

/// Stops the child and returns what it wrote on stderr.
fn stop(child: std::process::Child) -> String {
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let out = child.wait_with_output().expect("exits");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn blocking_get(url: &str, headers: &[(&str, &str)]) -> u16 {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let mut r = reqwest::Client::new().get(url);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.send().await.expect("GET").status().as_u16()
    })
}

/// `--log-format json`: every line is a JSON object; the access line has the fields an operator
/// filters on; the startup line says what runs; a `/readyz` 503 is no ERROR; and text logs have
/// no colour codes when stderr is not a terminal.
#[test]
fn json_logs_have_an_access_line_per_request_and_no_error_for_an_expected_503() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = format!("sqlite://{}/l.db", dir.path().display());
    let token = create_token(&store, "dashboard", "read");
    // A broker that is not there: /readyz answers 503, as it should.
    let args = ["serve", "--store", &store, "--listen", "127.0.0.1:0", "--kafka-brokers", "127.0.0.1:1"];
    let (child, addr) = start(&args, &[("JETSTREAM_LOG_FORMAT", "json"), ("JETSTREAM_LOG", "info")]);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while blocking_get(&format!("http://{addr}/readyz"), &[("x-request-id", "ready-1")]) != 503 {
        assert!(std::time::Instant::now() < deadline, "readyz never said not ready");
        std::thread::sleep(Duration::from_millis(200));
    }
    let auth = format!("Bearer {token}");
    let headers = [("x-request-id", "sale-1"), ("authorization", auth.as_str()), ("x-forwarded-for", "6.6.6.6")];
    assert_eq!(blocking_get(&format!("http://{addr}/api/product/sale/7"), &headers), 404);
    let stderr = stop(child);

    let lines: Vec<Json> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    let startup = lines.iter().find(|l| l["message"] == "jetstream started").expect("a startup line");
    assert_eq!(startup["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(startup["kafka"].as_str().map(|k| k.starts_with("127.0.0.1:1 ")), Some(true), "{startup}");
    assert!(startup["store"].as_str().is_some_and(|s| s.starts_with("sqlite://")), "{startup}");
    assert_eq!(startup["listen"], addr.as_str());

    let access = |id: &str| {
        lines
            .iter()
            .find(|l| l["target"] == "jetstream::access" && l["request_id"] == id)
            .unwrap_or_else(|| panic!("no access line for {id}: {stderr}"))
    };
    let sale = access("sale-1");
    assert_eq!(sale["level"], "INFO");
    assert_eq!(
        (&sale["method"], &sale["route"], &sale["status"]),
        (&json!("GET"), &json!("/api/product/sale/{id}"), &json!(404))
    );
    assert_eq!(sale["token"], "dashboard", "the token's name, never its secret");
    assert_eq!(sale["client"], "127.0.0.1", "X-Forwarded-For is not believed from a peer that is no trusted proxy");
    assert!(sale["latency_ms"].as_f64().is_some_and(|ms| ms >= 0.0), "{sale}");
    assert!(sale["bytes"].as_u64().is_some_and(|b| b > 0), "{sale}");
    assert!(!stderr.contains(&token), "a token secret was logged");
    let ready = access("ready-1");
    assert_eq!((&ready["level"], &ready["status"]), (&json!("INFO"), &json!(503)));
    let errors: Vec<&Json> =
        lines.iter().filter(|l| l["level"] == "ERROR" && l["span"]["request_id"].as_str().is_some()).collect();
    assert!(errors.is_empty(), "a request logged an ERROR: {errors:?}");

    // Text, to a pipe: no colour codes.
    let (child, _) = start(&["serve", "--store", &store, "--listen", "127.0.0.1:0"], &[("JETSTREAM_LOG", "info")]);
    let stderr = stop(child);
    assert!(stderr.contains("jetstream started") && !stderr.contains('\u{1b}'), "{stderr}");
    // The fields as tracing-subscriber's default text format writes them (written by our plain
    // formatter off a terminal): the message bare, then `name=value`, strings quoted.
    let started =
        format!(" INFO jetstream::app: jetstream started version=\"{}\" store=sqlite://", env!("CARGO_PKG_VERSION"));
    assert!(stderr.contains(&started), "{stderr}");
}

/// A SIGTERM that comes right after the address line (as a supervisor or a test sends it) takes
/// the graceful path: exit 0, and every log line written, the last one included. The signal
/// handlers once were installed only after the announcement, and such a SIGTERM killed the
/// process with its buffered log lines unwritten.
#[test]
fn a_sigterm_right_after_the_announcement_stops_cleanly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = format!("sqlite://{}/t.db", dir.path().display());
    for _ in 0..10 {
        let (child, _) = start(&["serve", "--store", &store, "--listen", "127.0.0.1:0"], &[("JETSTREAM_LOG", "info")]);
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let out = child.wait_with_output().expect("exits");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{:?}: {stderr}", out.status);
        assert!(stderr.contains("jetstream started") && stderr.contains("stopped cleanly"), "{stderr}");
    }
}

/// A stand-in for a Sentry-protocol collector: accepts HTTP requests on loopback and keeps each
/// body (decompressed when gzip), answering 200.
struct Collector {
    addr: std::net::SocketAddr,
    bodies: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Collector {
    fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = bodies.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let kept = kept.clone();
                std::thread::spawn(move || Self::serve(stream, &kept));
            }
        });
        Self { addr, bodies }
    }

    fn serve(stream: std::net::TcpStream, kept: &std::sync::Mutex<Vec<String>>) {
        use std::io::{Read as _, Write as _};
        let mut reader = std::io::BufReader::new(stream.try_clone().expect("clone"));
        let mut stream = stream;
        loop {
            let (mut length, mut gzip, mut line) = (0usize, false, String::new());
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            loop {
                line.clear();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                gzip |= lower.starts_with("content-encoding:") && lower.contains("gzip");
            }
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_err() {
                return;
            }
            if gzip {
                let mut out = Vec::new();
                let _ = flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut out);
                body = out;
            }
            kept.lock().expect("lock").push(String::from_utf8_lossy(&body).into_owned());
            let _ =
                stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}");
        }
    }

    fn bodies(&self) -> Vec<String> {
        self.bodies.lock().expect("lock").clone()
    }
}

/// Error tracking through the front door: a 4xx reports nothing; a store failure that makes a
/// request fail reaches the collector with the route, the request id, the release and the
/// environment, and without the token.
#[test]
fn a_store_failure_reaches_the_error_collector_and_a_4xx_does_not() {
    let collector = Collector::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("s.db");
    let store = format!("sqlite://{}", path.display());
    let token = create_token(&store, "dashboard", "read");
    let dsn = format!("http://public@{}/1", collector.addr);
    let args = ["serve", "--store", &store, "--listen", "127.0.0.1:0", "--sentry-environment", "ops-test"];
    let (child, addr) = start(&args, &[("JETSTREAM_SENTRY_DSN", dsn.as_str()), ("JETSTREAM_LOG", "warn")]);
    let auth = format!("Bearer {token}");
    let url = |p: &str| format!("http://{addr}{p}");

    assert_eq!(blocking_get(&url("/api/product/sale/1"), &[]), 401);
    assert_eq!(blocking_get(&url("/api/product/sale/1"), &[("authorization", &auth)]), 404);
    assert_eq!(blocking_get(&url("/api/v1/metrics/nope/aggregate"), &[("authorization", &auth)]), 404);
    std::thread::sleep(Duration::from_secs(2));
    assert!(collector.bodies().is_empty(), "a 4xx was reported: {:?}", collector.bodies());

    // The store breaks under the server: a table a read needs is gone. (The seed endpoints would
    // answer product 8's 404 from the read cache's index, without a read: ask for the values.)
    let db = rusqlite::Connection::open(&path).expect("open the store file");
    db.busy_timeout(Duration::from_secs(5)).expect("busy timeout");
    db.execute_batch("DROP TABLE dim_values").expect("drop");
    let headers = [("authorization", auth.as_str()), ("x-request-id", "boom-1")];
    assert_eq!(blocking_get(&url("/api/v1/dimensions/product_id/values"), &headers), 500);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let report = loop {
        if let Some(b) = collector.bodies().into_iter().find(|b| b.contains("boom-1")) {
            break b;
        }
        assert!(std::time::Instant::now() < deadline, "no report reached the collector: {:?}", collector.bodies());
        std::thread::sleep(Duration::from_millis(100));
    };
    stop(child);
    assert!(report.contains(r#""route":"/api/v1/dimensions/{dim}/values""#), "{report}");
    assert!(report.contains(r#""request_id":"boom-1""#), "{report}");
    assert!(report.contains(&format!(r#""release":"jetstream@{}""#, env!("CARGO_PKG_VERSION"))), "{report}");
    assert!(report.contains(r#""environment":"ops-test""#), "{report}");
    assert!(!report.contains(&token) && !report.contains("Bearer"), "the token was reported: {report}");
}

/// CORS is off unless origins are configured; then a configured origin gets its preflight and
/// can read the request id, and any other origin gets no CORS headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_answers_only_the_configured_origins() {
    let preflight = |app: &TestApp, origin: &str| {
        app.client
            .request(reqwest::Method::OPTIONS, app.url("/api/v1/events"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization, content-encoding")
            .send()
    };
    let off = TestApp::spawn(Backend::Sqlite).await;
    let r = preflight(&off, "https://dash.example.com").await.unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none(), "CORS is off by default");
    off.stop().await;

    let mut settings = Settings::default();
    settings.http.cors_origins = vec!["https://dash.example.com".into()];
    let app = TestApp::spawn_with(Backend::Sqlite, settings).await;
    let r = preflight(&app, "https://dash.example.com").await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(r.headers()["x-request-id"].len(), 36, "a preflight's answer has a request id too");
    assert_eq!(r.headers()["access-control-allow-origin"], "https://dash.example.com");
    let allowed = r.headers()["access-control-allow-headers"].to_str().unwrap().to_ascii_lowercase();
    assert!(allowed.contains("authorization") && allowed.contains("content-encoding"), "{allowed}");
    let r = app.client.get(app.url("/healthz")).header("origin", "https://dash.example.com").send().await.unwrap();
    assert_eq!(r.headers()["access-control-allow-origin"], "https://dash.example.com");
    assert!(r.headers()["access-control-expose-headers"].to_str().unwrap().contains("x-request-id"));
    let r = app.client.get(app.url("/healthz")).header("origin", "https://elsewhere.example").send().await.unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none(), "another origin is not allowed");
    app.stop().await;
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).expect("compress");
    e.finish().expect("compress")
}

/// Answers are gzipped for a client that asks; ingest takes a gzip body, and the body limit
/// holds for what it decompresses to (a small bomb is refused, not inflated).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_both_ways_within_the_body_limit() {
    let _figures = FIGURES.lock().await;
    let mut settings = Settings::default();
    settings.ingest.max_body_bytes = 256 * 1024;
    let app = TestApp::spawn_with(Backend::Sqlite, settings).await;
    let r = app.client.get(app.url("/api/openapi.json")).header("accept-encoding", "gzip").send().await.unwrap();
    assert_eq!(r.headers()["content-encoding"], "gzip");
    let packed = r.bytes().await.unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&packed[..]), &mut text).expect("gzip");
    let doc: Json = serde_json::from_str(&text).expect("the description, gzipped");
    assert!(doc["paths"]["/metrics"].is_object(), "/metrics is described");
    let plain = app.client.get(app.url("/api/openapi.json")).send().await.unwrap();
    assert!(plain.headers().get("content-encoding").is_none(), "only for a client that asks");
    // A series (an answer that grows with the window) is gzipped; the seed endpoints' answers,
    // a few dozen bytes, are not worth it and go as they are.
    let gzipped = |path: &'static str| {
        let r = app.client.get(app.url(path)).bearer_auth(&app.token).header("accept-encoding", "gzip").send();
        async move {
            let r = r.await.unwrap();
            assert_eq!(r.status().as_u16(), 200, "{path}");
            r.headers().get("content-encoding").is_some()
        }
    };
    assert!(gzipped("/api/v1/metrics/events/series?window=1h&step=1m").await, "a series");
    app.ingest(&sold(1)).await;
    assert!(!gzipped("/api/product/sale/1").await, "a seed answer");

    let body = serde_json::to_vec(&Json::Array((0..100).map(sold).collect())).unwrap();
    let r = app
        .client
        .post(app.url("/api/v1/events"))
        .bearer_auth(&app.token)
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(gzip(&body))
        .send()
        .await
        .unwrap();
    let (s, out) = common::json_of(r).await;
    assert_eq!((s.as_u16(), &out["accepted"]), (200, &json!(100)), "{out}");

    let bomb = gzip(&vec![b' '; 4 * 1024 * 1024]);
    assert!(bomb.len() < 64 * 1024);
    let r = app
        .client
        .post(app.url("/api/v1/events"))
        .bearer_auth(&app.token)
        .header("content-encoding", "gzip")
        .body(bomb)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413, "the limit holds for the decompressed body");
    app.stop().await;
}

/// The Kafka families move with a real broker: records consumed, accepted and rejected by
/// source, freshness from the record timestamps, an assignment, and each partition's lag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_figures_move_with_a_real_broker() {
    let _figures = FIGURES.lock().await;
    let broker = kafka_harness::Broker::start();
    let topic = kafka_harness::topic_name("ops");
    broker.create_topic(&topic, 2).await;
    let mut settings = Settings::default();
    settings.kafka.brokers = broker.addr.clone();
    settings.kafka.topic = topic.clone();
    settings.kafka.group = format!("group-{topic}");
    let app = TestApp::spawn_with(Backend::Sqlite, settings).await;
    let metrics = app.token_with(&[Scope::Metrics]).await;
    let before = figures(&app, &metrics).await;
    let producer = broker.producer();
    for i in 0..50 {
        let key = (i % 5).to_string();
        kafka_harness::produce(&producer, &topic, Some(&key), sold(i % 5).to_string().as_bytes()).await;
    }
    for bad in [&b"not json"[..], br#"{"event_name":"productSold","product_id":1}"#] {
        kafka_harness::produce(&producer, &topic, None, bad).await;
    }
    let kafka = [("source", "kafka"), ("event", "productSold")];
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let after = loop {
        let f = figures(&app, &metrics).await;
        let lag_seen = f.0.samples.iter().any(|s| s.metric == "jetstream_kafka_partition_lag");
        if f.get("jetstream_events_accepted_total", &kafka) - before.get("jetstream_events_accepted_total", &kafka)
            >= 50.0
            && lag_seen
        {
            break f;
        }
        assert!(std::time::Instant::now() < deadline, "the Kafka figures did not move");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let moved = |metric: &str, labels: &[(&str, &str)]| after.get(metric, labels) - before.get(metric, labels);
    assert_eq!(moved("jetstream_events_accepted_total", &kafka), 50.0);
    assert_eq!(moved("jetstream_events_rejected_total", &[("source", "kafka")]), 2.0);
    assert!(moved("jetstream_kafka_records_consumed_total", &[]) >= 52.0);
    assert_eq!(moved("jetstream_freshness_seconds", &[("source", "kafka")]), 50.0);
    assert!(after.get("jetstream_kafka_rebalances_total", &[("kind", "assign")]) >= 1.0);
    for p in ["0", "1"] {
        let lag = after.get("jetstream_kafka_partition_lag", &[("partition", p)]);
        assert!(lag >= 0.0, "partition {p}: {lag}");
    }
    app.stop().await;
}
