//! Hostile input and overload, one test per finding of the hardening issue, through the front
//! door: raw TCP where a well-behaved client library would hide the attack.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Backend, TestApp, json_of, run_cli};
use jetstream::auth::Scope;
use jetstream::config::Settings;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn sold(product: u64) -> Value {
    json!({"event_name": "productSold", "product_id": product, "no_of_units": 1, "amount": "1.25"})
}

/// Reads what the server sends until it closes or `wait` passes: (text, closed).
async fn read_for(stream: &mut TcpStream, wait: Duration) -> (String, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&out).into_owned(), true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&out).into_owned(), false),
        }
    }
}

/// Finding 1: the token is checked from the headers before a byte of the body is read; a
/// declared length over the limit is refused before it is read; `100 Continue` comes only after
/// both.
async fn ingest_authenticates_and_checks_the_length_before_reading_the_body(backend: Backend) {
    let mut settings = Settings::default();
    settings.ingest.max_body_bytes = 1024 * 1024;
    let app = TestApp::spawn_with(backend, settings).await;
    let head = |token: &str, length: usize, expect: bool| {
        format!(
            "POST /api/v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{}Content-Length: {length}\r\n{}\r\n",
            if token.is_empty() { String::new() } else { format!("Authorization: Bearer {token}\r\n") },
            if expect { "Expect: 100-continue\r\n" } else { "" }
        )
    };
    // No token, 15 MB declared, nothing sent: 401 at once.
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    s.write_all(head("", 15_000_000, false).as_bytes()).await.unwrap();
    let (answer, _) = read_for(&mut s, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    // A token, over the limit: 413 at once.
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    s.write_all(head(&app.token, 15_000_000, false).as_bytes()).await.unwrap();
    let (answer, _) = read_for(&mut s, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 413") && answer.contains("\"message\""), "{answer}");
    // Expect: 100-continue without a token: the 401, never a 100.
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    s.write_all(head("", 100, true).as_bytes()).await.unwrap();
    let (answer, _) = read_for(&mut s, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    // With a token and a fitting length: 100 Continue, then the body, then 200.
    let body = sold(1).to_string();
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    s.write_all(head(&app.token, body.len(), true).as_bytes()).await.unwrap();
    let (answer, _) = read_for(&mut s, Duration::from_secs(2)).await;
    assert!(answer.starts_with("HTTP/1.1 100"), "{answer}");
    s.write_all(body.as_bytes()).await.unwrap();
    let (answer, _) = read_for(&mut s, Duration::from_secs(5)).await;
    assert!(answer.contains("200 OK") && answer.contains("\"accepted\":1"), "{answer}");
    app.stop().await;
}

/// An answer given before the request's body was read (a refused token, a declared length over
/// the limit, a full ingest budget) ends the connection, since the unread body is still on it:
/// the answer says `Connection: close`, so a client's pool does not send its next request down a
/// connection that is about to close (seen in a soak: a query failed with "connection closed
/// before message completed" right after a 503). An answer after the body was read keeps the
/// connection open for the next request.
async fn an_answer_before_the_body_is_read_says_the_connection_closes(backend: Backend) {
    let mut settings = Settings::default();
    settings.ingest.max_body_bytes = 64 * 1024;
    let app = TestApp::spawn_with(backend, settings).await;
    let post = |token: &str, body: &str, length: usize| {
        format!(
            "POST /api/v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{}Content-Length: {length}\r\n\r\n{body}",
            if token.is_empty() { String::new() } else { format!("Authorization: Bearer {token}\r\n") },
        )
    };
    let closes = |answer: &str| answer.to_ascii_lowercase().contains("\r\nconnection: close\r\n");
    let event = sold(1).to_string();
    // No token, the body sent: 401, and the connection ends.
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    s.write_all(post("", &event, event.len()).as_bytes()).await.unwrap();
    let (answer, closed) = read_for(&mut s, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 401") && closes(&answer) && closed, "{answer}");
    // Over the limit, declared: 413, and the connection ends.
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    s.write_all(post(&app.token, "", 1_000_000).as_bytes()).await.unwrap();
    let (answer, closed) = read_for(&mut s, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 413") && closes(&answer) && closed, "{answer}");
    // Read and refused (not JSON), then read and accepted, then a query: one connection.
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    s.write_all(post(&app.token, "{nope", 5).as_bytes()).await.unwrap();
    let (answer, closed) = read_for(&mut s, Duration::from_secs(1)).await;
    assert!(answer.starts_with("HTTP/1.1 400") && !closes(&answer) && !closed, "{answer}");
    s.write_all(post(&app.token, &event, event.len()).as_bytes()).await.unwrap();
    let (answer, closed) = read_for(&mut s, Duration::from_secs(1)).await;
    assert!(answer.starts_with("HTTP/1.1 200") && !closes(&answer) && !closed, "{answer}");
    let get = format!("GET /api/product/sale/1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n", app.token);
    s.write_all(get.as_bytes()).await.unwrap();
    let (answer, closed) = read_for(&mut s, Duration::from_secs(1)).await;
    assert!(answer.starts_with("HTTP/1.1 200") && !closes(&answer) && !closed, "{answer}");
    app.stop().await;
}

fn tight_http() -> Settings {
    let mut settings = Settings::default();
    settings.http.header_read_timeout = Duration::from_secs(1);
    settings.http.body_timeout = Duration::from_secs(1);
    settings.http.min_body_rate = 1024 * 1024;
    settings.http.shutdown_timeout = Duration::from_secs(1);
    settings
}

/// Finding 2: half-sent requests and idle connections are closed after the header-read timeout,
/// a body sent too slowly gets 408, and a connection over the cap gets 503 with Retry-After while
/// the others keep being served.
async fn slow_and_idle_connections_are_closed_and_the_connection_count_is_capped(backend: Backend) {
    let mut settings = tight_http();
    settings.http.max_connections = 8;
    let app = TestApp::spawn_with(backend, settings).await;
    // Half-sent headers: closed after ~1 s.
    let mut half = TcpStream::connect(app.addr).await.unwrap();
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let t = Instant::now();
    let (_, closed) = read_for(&mut half, Duration::from_secs(5)).await;
    assert!(closed && t.elapsed() < Duration::from_secs(4), "a half-sent request was kept {:?}", t.elapsed());
    // An idle keep-alive connection: closed after ~1 s of idleness.
    let mut idle = TcpStream::connect(app.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let (answer, closed) = read_for(&mut idle, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 200") && closed, "{answer}");
    // A body that trickles: 408.
    let mut slow = TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /api/v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: 100000\r\n\r\n[",
        app.token
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    let (answer, _) = read_for(&mut slow, Duration::from_secs(6)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    // A body that keeps trickling (1 KB/s) under a large declared length: cut off soon after the
    // grace (body_timeout, 1 s here) for falling under min_body_rate, not after the ~10 s its
    // declared size would take at that rate (the overload test's slow bodies stayed 40 s).
    let mut trickle = TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /api/v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: 10000000\r\n\r\n[",
        app.token
    );
    trickle.write_all(head.as_bytes()).await.unwrap();
    let t = Instant::now();
    let (mut reader, mut writer) = trickle.into_split();
    let feeder = tokio::spawn(async move {
        while writer.write_all(&[b' '; 100]).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(8), async {
        let mut chunk = [0u8; 1024];
        while let Ok(n) = tokio::io::AsyncReadExt::read(&mut reader, &mut chunk).await {
            if n == 0 || answer.len() > 12 {
                break;
            }
            answer.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    feeder.abort();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "a trickling body got {answer:?} after {:?}", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(4), "a trickling body was cut off only after {:?}", t.elapsed());
    // The cap: 8 connections held open, the 9th is refused with 503 and Retry-After, and once
    // they go, requests are served again.
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(TcpStream::connect(app.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut over = TcpStream::connect(app.addr).await.unwrap();
    let (answer, _) = read_for(&mut over, Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 503") && answer.contains("Retry-After: 1"), "{answer}");
    drop(held);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (s, _) = app.get("/healthz").await;
    assert_eq!(s.as_u16(), 200);
    app.stop().await;
}

/// Finding 2, at shutdown: with requests in progress (a body still being sent), SIGTERM's
/// graceful stop ends after `http.shutdown_timeout`, and what was acknowledged stays.
async fn shutdown_ends_at_its_deadline_with_requests_in_progress(backend: Backend) {
    let mut settings = tight_http();
    settings.http.body_timeout = Duration::from_secs(60);
    settings.http.min_body_rate = 1;
    let app = TestApp::spawn_with(backend, settings).await;
    app.ingest(&sold(5)).await;
    let mut stuck = Vec::new();
    for _ in 0..5 {
        let mut s = TcpStream::connect(app.addr).await.unwrap();
        let head = format!(
            "POST /api/v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: 1000\r\n\r\n[",
            app.token
        );
        s.write_all(head.as_bytes()).await.unwrap();
        stuck.push(s);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    let store = app.stop().await;
    assert!(t.elapsed() < Duration::from_secs(6), "the shutdown took {:?}", t.elapsed());
    let app = TestApp::spawn_on(store, Settings::default()).await;
    let (_, sale) = app.get("/api/product/sale/5").await;
    assert_eq!(sale["count"], 1, "{sale}");
    drop(stuck);
    app.stop().await;
}

/// Finding 3: a NUL in an event name or a label is refused by validation on both backends (it
/// used to fail PostgreSQL's whole group commit), and the requests beside it all commit.
async fn a_nul_character_is_refused_and_fails_no_other_request(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let mut tasks = Vec::new();
    for i in 0..40u64 {
        let (client, url, token) = (app.client.clone(), app.url("/api/v1/events"), app.token.clone());
        tasks.push(tokio::spawn(async move {
            let body = if i % 10 == 0 {
                json!([sold(1), {"event_name": "bad\u{0}name", "x": 1},
                       {"event": "productRated", "product_id": 1, "rating": 3, "category": "c\u{0}"}])
            } else {
                json!([sold(1)])
            };
            let r = client.post(url).bearer_auth(token).json(&body).send().await.unwrap();
            json_of(r).await
        }));
    }
    for t in tasks {
        let (s, out) = t.await.unwrap();
        assert_eq!(s.as_u16(), 200, "{out}");
        if out["rejected"] == 2 {
            let reasons: Vec<&str> =
                out["errors"].as_array().unwrap().iter().map(|e| e["reason"].as_str().unwrap()).collect();
            assert!(reasons[0].contains("event name") && reasons[1].contains("without NUL"), "{reasons:?}");
        }
    }
    let (_, sale) = app.get("/api/product/sale/1").await;
    assert_eq!(sale["count"], 40, "{sale}");
    let (_, letters) = app.get("/api/v1/dead-letters?limit=100").await;
    assert_eq!(letters["dead_letters"].as_array().unwrap().len(), 8);
    app.stop().await;
}

/// Finding 4: a body of too many events is refused before it costs memory; an answer lists the
/// first 100 errors and counts the rest by reason.
async fn a_body_of_many_events_is_bounded_and_so_is_its_answer(backend: Backend) {
    let mut settings = Settings::default();
    settings.ingest.max_events_per_request = 1000;
    let app = TestApp::spawn_with(backend, settings).await;
    let (s, out) = app.ingest_ndjson("{}\n".repeat(1001)).await;
    assert_eq!(s.as_u16(), 413, "{out}");
    assert!(out["message"].as_str().unwrap().contains("more than 1000 events"), "{out}");
    let bad: Vec<Value> = (0..500).map(|_| json!({"product_id": 1})).collect();
    let r =
        app.client.post(app.url("/api/v1/events")).bearer_auth(&app.token).header("Idempotency-Key", "k1").json(&bad);
    let (s, out) = json_of(r.send().await.unwrap()).await;
    assert_eq!(s.as_u16(), 200, "{out}");
    assert_eq!((out["rejected"].as_u64(), out["errors"].as_array().unwrap().len()), (Some(500), 100), "{out}");
    assert_eq!(out["rejected_by_reason"]["no_name"], 500, "{out}");
    app.stop().await;
}

/// The ingest budget charges a request its body and the batch parsing it made (several times
/// the body): a budget below one request's charge still admits that request alone, and its
/// events count once.
async fn a_request_larger_than_the_ingest_budget_is_admitted_alone(backend: Backend) {
    let mut settings = Settings::default();
    settings.http.max_inflight_ingest_bytes = 16 * 1024;
    let app = TestApp::spawn_with(backend, settings).await;
    let body: String = (0..400).map(|_| format!("{}\n", sold(7))).collect();
    assert!(body.len() > 16 * 1024, "the body alone is over the budget: {}", body.len());
    let (s, out) = app.ingest_ndjson(body).await;
    assert_eq!((s.as_u16(), out["accepted"].as_u64()), (200, Some(400)), "{out}");
    let (s, out) = app.get("/api/product/sale/7").await;
    assert_eq!((s.as_u16(), out["count"].as_u64()), (200, Some(400)), "{out}");
    app.stop().await;
}

/// Finding 5: many distinct event names in one body cost linear time, not quadratic (80,000
/// names took 16 s, against 0.05 s for one name): four times the names take about four times as
/// long, not sixteen.
async fn distinct_event_names_cost_linear_time(backend: Backend) {
    let owned = TestApp::spawn(backend).await;
    let app = &owned;
    let time = |n: usize, offset: usize| {
        let body: String = (0..n).map(|i| format!("{{\"event_name\":\"e{}\"}}\n", offset + i)).collect();
        async move {
            let t = Instant::now();
            let (s, out) = app.ingest_ndjson(body).await;
            assert_eq!((s.as_u16(), out["accepted"].as_u64()), (200, Some(n as u64)), "{out}");
            t.elapsed()
        }
    };
    let small = time(2_500, 0).await;
    let large = time(10_000, 2_500).await;
    assert!(large < small * 8 + Duration::from_secs(1), "10,000 names: {large:?}, 2,500 names: {small:?}");
    owned.stop().await;
}

/// Finding 6: a page of dead letters holds at most 16 KiB of each record, and says how big it was.
async fn pages_are_bounded_in_bytes(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let big = format!("{{\"event\": \"x\", \"pad\": \"{}\"", "y".repeat(200_000)); // not JSON: no closing brace
    let (s, _) = app.ingest_ndjson(big).await;
    assert_eq!(s.as_u16(), 200);
    let (s, page) = app.get("/api/v1/dead-letters?limit=10").await;
    assert_eq!(s.as_u16(), 200, "{page}");
    let letter = &page["dead_letters"][0];
    assert_eq!(letter["raw"].as_str().unwrap().len(), 16 * 1024, "{}", letter["raw_truncated_from"]);
    assert_eq!(letter["raw_truncated_from"], 200_000 + 24);
    app.stop().await;
}

/// Finding 8: durations and windows are bounded instead of wrapping, in the API, in
/// `check-config` and in `token create`.
async fn durations_and_windows_are_bounded(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.ingest(&sold(1)).await;
    for q in ["window=100000000y", "window=18446744073709551615s", "from=-9223372036854775808", "to=99999999999999999"]
    {
        let (s, v) = app.get(&format!("/api/v1/metrics/sales_amount?{q}")).await;
        assert_eq!(s.as_u16(), 400, "{q}: {v}");
        assert!(v["message"].is_string(), "{v}");
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "[retention]\nraw_events = \"300000000y\"\n[api]\nsales_window = \"18446744073709551615s\"\n",
    )
    .unwrap();
    let store = format!("sqlite://{}/j.db", dir.path().display());
    let (code, _, err) = run_cli(&["check-config", "--store", &store, "--config", file.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("retention.raw_events") && err.contains("api.sales_window"), "both problems at once: {err}");
    let (code, _, err) = run_cli(&["token", "create", "--store", &store, "--name", "t", "--expires-in", "0s"]);
    assert_eq!(code, 2, "{err}");
    app.stop().await;
}

/// Finding 9: a query-string error comes after the auth check and is JSON; `/readyz` and 503s
/// carry no store error text.
async fn errors_are_json_after_auth_and_carry_no_internals(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (s, v) = app.get_as("/api/v1/dead-letters?limit=abc", None).await;
    assert_eq!(s.as_u16(), 401, "auth first: {v}");
    let (s, v) = app.get("/api/v1/dead-letters?limit=abc").await;
    assert_eq!(s.as_u16(), 400);
    assert!(v["message"].as_str().unwrap().contains("limit"), "{v}");
    let (s, v) = app.get("/api/v1/metrics/sales_amount?dimension=x").await;
    assert_eq!(s.as_u16(), 400, "{v}");
    assert!(v["message"].is_string(), "JSON, not text/plain: {v}");
    let read = app.token_with(&[Scope::Read]).await;
    let (s, _) = app.get_as("/api/v1/metrics?bogus=1", Some(&read)).await;
    assert!(s.as_u16() == 200 || s.as_u16() == 400);
    app.stop().await;
}

both_backends!(
    ingest_authenticates_and_checks_the_length_before_reading_the_body,
    slow_and_idle_connections_are_closed_and_the_connection_count_is_capped,
    shutdown_ends_at_its_deadline_with_requests_in_progress,
    a_nul_character_is_refused_and_fails_no_other_request,
    a_body_of_many_events_is_bounded_and_so_is_its_answer,
    a_request_larger_than_the_ingest_budget_is_admitted_alone,
    distinct_event_names_cost_linear_time,
    pages_are_bounded_in_bytes,
    durations_and_windows_are_bounded,
    errors_are_json_after_auth_and_carry_no_internals,
    an_answer_before_the_body_is_read_says_the_connection_closes,
);

/// Finding 9 on PostgreSQL: with the database refusing connections, reads and ingest answer 503
/// with Retry-After (nginx retries those) and a message without the server's error text, and
/// `/readyz` says not ready without it either; a lock held elsewhere fails a commit within the
/// lock timeout instead of stalling it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_unavailable_is_a_503_without_internals() {
    let app = TestApp::spawn(Backend::Postgres).await;
    app.ingest(&sold(1)).await;
    let db = app.store.url.rsplit('/').next().unwrap().to_string();
    let admin = common::pg::admin_client().await;
    admin.execute(&format!("ALTER DATABASE \"{db}\" ALLOW_CONNECTIONS false"), &[]).await.unwrap();
    admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", &[&db]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..3 {
        let r = app
            .client
            .get(app.url("/api/v1/metrics/sales_amount?window=2h"))
            .bearer_auth(&app.token)
            .send()
            .await
            .unwrap();
        let retry = r.headers().get("retry-after").is_some();
        let (s, v) = json_of(r).await;
        assert_eq!((s.as_u16(), retry), (503, true), "{v}");
        assert!(!v.to_string().contains("postgres:") && !v.to_string().contains("SQLSTATE"), "{v}");
    }
    let (s, v) = app.get_as("/readyz", None).await;
    assert_eq!(s.as_u16(), 503, "{v}");
    assert!(!v.to_string().contains("postgres"), "no server text on an unauthenticated page: {v}");
    admin.execute(&format!("ALTER DATABASE \"{db}\" ALLOW_CONNECTIONS true"), &[]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (s, _) = app.get_as("/readyz", None).await;
    assert_eq!(s.as_u16(), 200, "ready again once the database is");
    app.stop().await;
}

/// Finding 9: a lock held elsewhere for long (a migration, a manual `LOCK TABLE`) fails the
/// commit waiting on it within the lock timeout (503, to be retried) instead of stalling it, and
/// `/readyz` says not ready while a commit waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_lock_held_elsewhere_is_a_503_within_the_lock_timeout() {
    let app = TestApp::spawn(Backend::Postgres).await;
    app.ingest(&sold(1)).await;
    let (mut holder, conn) = tokio_postgres::connect(&app.store.url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let tx = holder.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE rollups IN ACCESS EXCLUSIVE MODE").await.unwrap();
    let t = Instant::now();
    let post = {
        let (client, url, token) = (app.client.clone(), app.url("/api/v1/events"), app.token.clone());
        tokio::spawn(
            async move { json_of(client.post(url).bearer_auth(token).json(&sold(2)).send().await.unwrap()).await },
        )
    };
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let (s, ready) = app.get_as("/readyz", None).await;
    assert_eq!(s.as_u16(), 503, "not ready while a commit waits on a lock: {ready}");
    let (s, out) = post.await.unwrap();
    assert_eq!(s.as_u16(), 503, "{out}");
    assert!(t.elapsed() < Duration::from_secs(9), "the commit waited {:?}", t.elapsed());
    tx.rollback().await.unwrap();
    let (s, _) = app.ingest(&sold(2)).await;
    assert_eq!(s.as_u16(), 200, "and ingest works again once the lock is gone");
    app.stop().await;
}

/// Finding 2 over TLS: after the handshake, a half-sent request is closed by the same timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_a_half_sent_request_is_closed_too() {
    use tokio_rustls::rustls::pki_types::CertificateDer;
    use tokio_rustls::rustls::pki_types::pem::PemObject as _;
    let dir = tempfile::tempdir().unwrap();
    let certs = common::certs::Certs::generate(dir.path(), &["localhost", "127.0.0.1"]);
    let (cert, key) = (certs.cert.clone(), certs.key.clone());
    let server_config = jetstream::server::tls::load_config(&cert, &key).unwrap();
    let store = format!("sqlite://{}/j.db", dir.path().display());
    let app =
        jetstream::app::Application::build(tight_http(), &store, "127.0.0.1:0").await.unwrap().with_tls(server_config);
    let addr = app.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(&certs.ca).unwrap()).unwrap();
    let provider = std::sync::Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let client = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let t = Instant::now();
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok() && t.elapsed() < Duration::from_secs(4), "kept {:?}", t.elapsed());
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}
