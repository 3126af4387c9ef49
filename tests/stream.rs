//! Live push (`GET /api/v1/stream`, Server-Sent Events) on both backends, read as a client reads
//! it: the first event at once, an update within a second of an acknowledged POST, resuming with
//! `Last-Event-ID`, coalescing, a slow reader that skips to the latest figure, the cap on streams
//! per token, the scopes, and a stream that ends when its token is revoked or the server stops.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::figures::get_exact;
use common::{Backend, Exact, TestApp};
use jetstream::auth::Scope;
use serde_json::{Value, json};

/// One event of a stream.
#[derive(Debug, Clone)]
struct Ev {
    event: String,
    id: Option<u64>,
    data: String,
}

impl Ev {
    fn json(&self) -> Exact {
        Exact::parse(&self.data)
    }
}

/// A stream read with a plain HTTP client, parsed by the rules of the HTML standard (enough of
/// them for what the server sends).
struct Sse {
    resp: reqwest::Response,
    buf: String,
    comments: usize,
}

impl Sse {
    async fn open(app: &TestApp, query: &str, token: &str, last_id: Option<u64>) -> Result<Self, (u16, Value)> {
        let mut req = app
            .client
            .get(app.url(&format!("/api/v1/stream?{query}")))
            .bearer_auth(token)
            .header("accept", "text/event-stream");
        if let Some(id) = last_id {
            req = req.header("last-event-id", id.to_string());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        if status != 200 {
            return Err((status, resp.json().await.unwrap_or(Value::Null)));
        }
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        Ok(Self { resp, buf: String::new(), comments: 0 })
    }

    /// The next event within `wait`; None when it did not come or the stream ended.
    async fn next(&mut self, wait: Duration) -> Option<Ev> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let (mut event, mut id, mut data) = (String::from("message"), None, Vec::new());
                for line in block.lines() {
                    match line.split_once(':').map(|(f, v)| (f, v.strip_prefix(' ').unwrap_or(v))) {
                        Some(("", _)) => self.comments += 1,
                        Some(("event", v)) => event = v.to_string(),
                        Some(("id", v)) => id = Some(v.parse().unwrap()),
                        Some(("data", v)) => data.push(v.to_string()),
                        _ => {}
                    }
                }
                if data.is_empty() {
                    continue;
                }
                return Some(Ev { event, id, data: data.join("\n") });
            }
            match tokio::time::timeout_at(deadline, self.resp.chunk()).await {
                Ok(Ok(Some(bytes))) => self.buf.push_str(std::str::from_utf8(&bytes).unwrap()),
                _ => return None,
            }
        }
    }

    /// Events until one satisfies `pred` (within `wait`); every event seen, that one last.
    async fn until(&mut self, wait: Duration, pred: impl Fn(&Ev) -> bool) -> Vec<Ev> {
        let deadline = Instant::now() + wait;
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.next(left).await {
                Some(ev) => {
                    let done = pred(&ev);
                    seen.push(ev);
                    if done {
                        return seen;
                    }
                }
                None => break,
            }
        }
        panic!("no awaited event within {wait:?}; saw {seen:?}");
    }
}

fn sale(product: u64) -> Value {
    json!({"event_name": "productSold", "product_id": product, "no_of_units": 1, "amount": "1.10"})
}

fn count_of(ev: &Ev) -> i64 {
    let x = ev.json();
    let c = x.get("result").get("count");
    c.dec().or_else(|| x.get("count").dec()).unwrap().try_into().unwrap()
}

const SUB: &str = "metric=sales_amount&dim=product_id&value=3&window=1h";

async fn a_stream_sends_the_figure_at_once_then_each_change(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.ingest(&sale(3)).await;
    let mut s = Sse::open(&app, SUB, &app.token, None).await.unwrap();
    let t = Instant::now();
    let first = s.next(Duration::from_secs(2)).await.expect("a first event");
    assert!(t.elapsed() < Duration::from_millis(500), "the first event took {:?}", t.elapsed());
    assert_eq!(first.event, "aggregate");
    assert_eq!(first.id, Some(1));
    // The same JSON as the v1 aggregate answer.
    let (_, _, alone) = get_exact(&app, "/api/v1/metrics/sales_amount?dim=product_id&value=3&window=1h").await;
    assert_eq!(first.json().get("result"), alone.get("result"));
    assert_eq!(first.json().get("metric"), alone.get("metric"));
    assert_eq!(count_of(&first), 1);

    // Each acknowledged POST shows within a second, without polling.
    let mut latencies = Vec::new();
    for n in 2..=6 {
        let t = Instant::now();
        let (st, _) = app.ingest(&sale(3)).await;
        assert_eq!(st.as_u16(), 200);
        let seen = s.until(Duration::from_secs(1), |e| count_of(e) == n).await;
        latencies.push(t.elapsed());
        let last = seen.last().unwrap();
        assert_eq!(last.json().get("result").get("sum").dec(), Some(rust_decimal::Decimal::new(110 * n, 2)));
        // Ids count up, one per event.
        assert!(seen.windows(2).all(|w| w[1].id.unwrap() == w[0].id.unwrap() + 1), "{seen:?}");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    eprintln!("POST → event: {latencies:?}");
    assert!(latencies.iter().all(|l| *l < Duration::from_secs(1)), "{latencies:?}");
    drop(s);

    // Resuming: ids continue from Last-Event-ID, and the current figure comes at once.
    let mut s = Sse::open(&app, SUB, &app.token, Some(41)).await.unwrap();
    let ev = s.next(Duration::from_secs(2)).await.unwrap();
    assert_eq!((ev.id, count_of(&ev)), (Some(42), 6));
    drop(s);

    // Several subscriptions on one connection, each named; a failing one says why.
    let q = format!(
        "sub=sales:{}&sub=rating:{}&sub=missing:{}&sub=noroute:{}",
        urlencoding("/api/product/sale/3"),
        urlencoding("/api/v1/metrics/rating?window=1h"),
        urlencoding("/api/v1/metrics/nope?window=1h"),
        // No route takes this path (schemathesis found its error event was not JSON).
        urlencoding("/api/v1/metrics/rating/nothing/here")
    );
    let mut s = Sse::open(&app, &q, &app.token, None).await.unwrap();
    let mut names: Vec<String> = Vec::new();
    for _ in 0..4 {
        let ev = s.next(Duration::from_secs(2)).await.unwrap();
        if ev.event == "error" {
            let v: Value = serde_json::from_str(&ev.data).unwrap_or_else(|e| panic!("{e}: {}", ev.data));
            assert_eq!(v["status"].as_u64(), Some(404), "{v}");
            assert!(["missing", "noroute"].contains(&v["sub"].as_str().unwrap()), "{v}");
            assert!(v["answer"]["message"].is_string(), "{v}");
        }
        names.push(ev.event);
    }
    names.sort();
    assert_eq!(names, ["error", "error", "rating", "sales"]);
    drop(s);
    app.stop().await;
}

fn urlencoding(s: &str) -> String {
    serde_urlencoded::to_string([("x", s)]).unwrap()[2..].to_string()
}

async fn updates_are_coalesced_and_a_slow_reader_skips_to_the_latest(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.ingest(&sale(3)).await;
    let mut s = Sse::open(&app, SUB, &app.token, None).await.unwrap();
    s.next(Duration::from_secs(2)).await.unwrap();

    // 60 POSTs, one after another: far fewer events than commits, the last one exact.
    let t = Instant::now();
    for _ in 0..60 {
        app.ingest(&sale(3)).await;
    }
    let elapsed = t.elapsed();
    let seen = s.until(Duration::from_secs(2), |e| count_of(e) == 61).await;
    // At most one event per api.stream_coalesce (50 ms) of posting, and one per second start
    // (the window moves).
    let bound = (elapsed.as_millis() / 50 + elapsed.as_secs() as u128 + 4) as usize;
    eprintln!("60 commits in {elapsed:?} → {} events (bound {bound})", seen.len());
    assert!(seen.len() <= bound, "{} events for 60 commits in {elapsed:?}", seen.len());

    // A reader that stops reading for 3 s while 150 commits happen is not queued for: it then
    // gets a handful of events, the last with the latest figure.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    for _ in 0..150 {
        app.ingest(&sale(3)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let paused = t.elapsed();
    let seen = s.until(Duration::from_secs(3), |e| count_of(e) == 211).await;
    // What the socket's buffers took while the reader slept: at most one event per coalescing
    // window and one per second start, never one per commit.
    let bound = (paused.as_millis() / 50 + paused.as_secs() as u128 + 4) as usize;
    eprintln!("after a pause of {paused:?} over 150 commits: {} events (bound {bound})", seen.len());
    assert!(seen.len() <= bound.min(149), "{} events after the pause", seen.len());
    drop(s);
    app.stop().await;
}

async fn streams_need_a_read_token_and_are_capped_per_token(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.ingest(&sale(3)).await;
    // Scopes: none → 401, ingest only → 403; bad subscriptions → 400 with a reason.
    let r = app.client.get(app.url(&format!("/api/v1/stream?{SUB}"))).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let ingest = app.token_with(&[Scope::Ingest]).await;
    assert_eq!(Sse::open(&app, SUB, &ingest, None).await.err().unwrap().0, 403);
    for bad in [
        "",
        "metric=sales_amount&colour=red",
        "sub=nocolon",
        "sub=a:/api/v1/events",
        "sub=a:/api/v1/dead-letters",
        "sub=a b:/api/v1/metrics",
        "dim=product_id",
    ] {
        let (status, v) = Sse::open(&app, bad, &app.token, None).await.err().unwrap();
        assert_eq!(status, 400, "{bad}: {v}");
        assert!(v["message"].is_string(), "{bad}: {v}");
    }
    let many: Vec<String> = (0..33).map(|i| format!("sub=s{i}:{}", urlencoding("/api/product/sale/3"))).collect();
    assert_eq!(Sse::open(&app, &many.join("&"), &app.token, None).await.err().unwrap().0, 400);

    // 16 streams per token; the 17th is refused; closing one frees its place.
    let reader = app.token_with(&[Scope::Read]).await;
    let mut open = Vec::new();
    for _ in 0..16 {
        let mut s = Sse::open(&app, SUB, &reader, None).await.unwrap();
        s.next(Duration::from_secs(2)).await.unwrap();
        open.push(s);
    }
    let (status, v) = Sse::open(&app, SUB, &reader, None).await.err().unwrap();
    assert_eq!(status, 429, "{v}");
    assert!(v["message"].as_str().unwrap().contains("16"), "{v}");
    // Another token is not affected.
    let mut other = Sse::open(&app, SUB, &app.token, None).await.unwrap();
    other.next(Duration::from_secs(2)).await.unwrap();
    drop(open.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match Sse::open(&app, SUB, &reader, None).await {
            Ok(_) => break,
            Err((429, _)) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("the freed place was not given back: {e:?}"),
        }
    }
    drop(open);
    drop(other);
    app.stop().await;
}

async fn a_stream_ends_when_its_token_is_revoked_or_the_server_stops(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.ingest(&sale(3)).await;
    let name = format!("live{}", common::rand_suffix());
    let secret = app.create_named_token(&name, &[Scope::Read]).await;
    let mut s = Sse::open(&app, SUB, &secret, None).await.unwrap();
    s.next(Duration::from_secs(2)).await.unwrap();
    app.revoke_token(&name).await;
    let seen = s.until(Duration::from_secs(3), |e| e.event == "error").await;
    let v: Value = serde_json::from_str(&seen.last().unwrap().data).unwrap();
    assert_eq!(v["status"], 401, "{v}");
    assert!(s.next(Duration::from_secs(2)).await.is_none(), "the stream goes on after the revocation");

    // Stopping the server ends open streams at once (they do not hold the shutdown up).
    let mut s = Sse::open(&app, SUB, &app.token, None).await.unwrap();
    s.next(Duration::from_secs(2)).await.unwrap();
    let t = Instant::now();
    let stopping = tokio::spawn(async move { app.stop().await });
    assert!(s.next(Duration::from_secs(5)).await.is_none());
    stopping.await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(3), "the shutdown took {:?}", t.elapsed());
}

both_backends!(
    a_stream_sends_the_figure_at_once_then_each_change,
    updates_are_coalesced_and_a_slow_reader_skips_to_the_latest,
    streams_need_a_read_token_and_are_capped_per_token,
    a_stream_ends_when_its_token_is_revoked_or_the_server_stops
);
