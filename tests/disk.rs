//! Bounded disk: the SQLite WAL is kept under its limit after a burst, and below the free-space
//! floor ingest is refused with the reason while reads keep working.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Backend, TestApp, json_of};
use jetstream::config::Settings;
use serde_json::{Value, json};

fn burst(products: u64, n: u64, offset: u64) -> String {
    (0..n)
        .map(|i| {
            json!({"event_name": "productSold", "product_id": (i * 7919 + offset) % products, "no_of_units": 1,
                   "amount": "1.25", "timestamp": 1_700_000_000_000u64 + (i % 7200) * 1000})
            .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

async fn post_ndjson(app: &TestApp, body: String) -> (u16, Value) {
    let (s, v) = app.ingest_ndjson(body).await;
    (s.as_u16(), v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_is_brought_back_under_its_limit_after_a_burst() {
    let mut settings = Settings::default();
    settings.storage.wal_limit_bytes = 2 * 1024 * 1024;
    let app = TestApp::spawn_with(Backend::Sqlite, settings).await;
    // Many series over two hours of event time: the merge dirties pages all over the table.
    for round in 0..4 {
        let (s, out) = post_ndjson(&app, burst(20_000, 20_000, round)).await;
        assert_eq!(s, 200, "{out}");
    }
    let wal = app.store.url.strip_prefix("sqlite://").unwrap().to_string() + "-wal";
    let size = || std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(20);
    while size() > 2 * 1024 * 1024 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(size() <= 2 * 1024 * 1024, "the WAL is still {} bytes", size());
    let (_, ready) = app.get_as("/readyz", None).await;
    assert!(ready["disk"]["wal_bytes"].as_u64().is_some(), "{ready}");
    let (_, total) = app.get("/api/v1/metrics/events?from=1699990000000&to=1700010000000").await;
    assert_eq!(total["result"]["count"], 80_000, "{total}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_the_free_space_floor_ingest_is_refused_and_reads_work() {
    let mut settings = Settings::default();
    settings.storage.min_free_bytes = u64::MAX / 2; // more than any disk has
    let app = TestApp::spawn_with(Backend::Sqlite, settings).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let (status, out) = loop {
        let r = app
            .client
            .post(app.url("/api/v1/events"))
            .bearer_auth(&app.token)
            .json(&json!({"event_name": "productSold", "product_id": 1, "no_of_units": 1, "amount": "1"}))
            .send()
            .await
            .unwrap();
        let retry = r.headers().get("retry-after").is_some();
        let (s, v) = json_of(r).await;
        if s.as_u16() != 200 || Instant::now() > deadline {
            assert!(retry || s.as_u16() == 200);
            break (s.as_u16(), v);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(status, 507, "{out}");
    assert!(out["message"].as_str().unwrap().contains("storage.min_free_bytes"), "{out}");
    let (s, _) = app.get("/api/v1/metrics/events?window=1h").await;
    assert_eq!(s.as_u16(), 200, "reads keep working");
    let (_, ready) = app.get_as("/readyz", None).await;
    assert!(ready["disk"]["free_bytes"].as_u64().is_some(), "{ready}");
    app.stop().await;
}
