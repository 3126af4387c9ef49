//! The read cache's index (`api::cache::index`): the seed endpoints answer a window with no bucket
//! and a product never seen without reading the store, and those answers are the store's — after
//! local ingest, late events, a restart, and commits made by another process on the same file.

// A test that cannot unwrap has failed: panicking with the value is the report we want.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Backend, TestApp};
use jetstream::config::Settings;
use serde_json::{Value, json};

fn now_ms() -> i64 {
    jetstream::clock::now_ms()
}

fn sold(product: u64, amount: &str, at_ms: i64) -> Value {
    json!({"event_name": "productSold", "product_id": product, "no_of_units": 1, "amount": amount, "timestamp": at_ms})
}

async fn stats(app: &TestApp) -> Value {
    let (s, stats) = app.get("/api/v1/admin/stats").await;
    assert_eq!(s.as_u16(), 200, "{stats}");
    stats["cache"].clone()
}

/// Waits until the index is complete.
async fn index_complete(app: &TestApp) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, stats) = app.get("/api/v1/admin/stats").await;
        if stats["index"]["complete"] == true {
            return;
        }
        assert!(Instant::now() < deadline, "the index did not load: {stats}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The sales endpoint's `(status, total, count)`.
async fn sale(app: &TestApp, product: u64) -> (u16, String, i64) {
    let (s, v) = app.get(&format!("/api/product/sale/{product}")).await;
    (s.as_u16(), v["total"].to_string(), v["count"].as_i64().unwrap_or(-1))
}

fn counter(stats: &Value, name: &str) -> u64 {
    stats[name].as_u64().unwrap()
}

async fn windows_without_buckets_and_unknown_products_are_answered_from_memory(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let now = now_ms();
    let (s, out) = app
        .ingest(&json!([
            sold(1, "10.50", now - 2 * 3_600_000), // two hours ago: outside the last hour
            sold(1, "1", now - 3 * 86_400_000),
            sold(2, "2.25", now - 60_000),
            {"event_name": "productRated", "product_id": 3, "rating": 4},
        ]))
        .await;
    assert_eq!((s.as_u16(), &out["accepted"]), (200, &json!(4)), "{out}");
    index_complete(&app).await;
    let before = stats(&app).await;
    assert_eq!(sale(&app, 1).await, (200, "0".into(), 0), "no sale of product 1 in the last hour");
    assert_eq!(sale(&app, 2).await, (200, "2.25".into(), 1));
    assert_eq!(sale(&app, 3).await, (200, "0".into(), 0), "product 3 exists (rated), never sold");
    assert_eq!(sale(&app, 999).await.0, 404, "never seen");
    assert_eq!(app.get("/api/product/rating/999").await.0.as_u16(), 404);
    let after = stats(&app).await;
    let from_memory = counter(&after, "index_answers") - counter(&before, "index_answers");
    assert!(from_memory >= 4, "products 1 and 3 (empty windows), 999 twice: {after}");

    // Acknowledged, then asked: the answer holds it, the index having noted it before the ack.
    for (p, amount, at) in [(1, "4", now_ms()), (2, "1", now_ms() - 30 * 60_000), (77, "7.77", now_ms())] {
        let (s, out) = app.ingest(&sold(p, amount, at)).await;
        assert_eq!((s.as_u16(), &out["accepted"]), (200, &json!(1)), "{out}");
    }
    assert_eq!(sale(&app, 1).await, (200, "4".into(), 1));
    assert_eq!(sale(&app, 2).await, (200, "3.25".into(), 2));
    assert_eq!(sale(&app, 77).await, (200, "7.77".into(), 1), "a new product is known at once");
    // A late event older than the window does not enter it.
    let (_, out) = app.ingest(&sold(77, "100", now_ms() - 5 * 3_600_000)).await;
    assert_eq!(out["accepted"], 1, "{out}");
    assert_eq!(sale(&app, 77).await, (200, "7.77".into(), 1));

    // After a restart the index is loaded from the store alone.
    let store = app.stop().await;
    let app = TestApp::spawn_on(store, Settings::default()).await;
    index_complete(&app).await;
    let before = stats(&app).await;
    assert_eq!(sale(&app, 1).await, (200, "4".into(), 1));
    assert_eq!(sale(&app, 2).await, (200, "3.25".into(), 2));
    assert_eq!(sale(&app, 3).await, (200, "0".into(), 0));
    assert_eq!(sale(&app, 77).await, (200, "7.77".into(), 1));
    assert_eq!(sale(&app, 78).await.0, 404);
    let from_memory = counter(&stats(&app).await, "index_answers") - counter(&before, "index_answers");
    assert!(from_memory > 0, "product 3's window and product 78 come from the index");
    app.stop().await;
}

/// Two servers on one store (each its own store handle, writer and cache, as two processes would
/// be): what one commits shows on the other within milliseconds (SQLite: a poll of the commit
/// counter; PostgreSQL: LISTEN), whether it turns a product from unknown to known or fills a
/// window the other's index had as empty.
async fn another_processs_commits_reach_the_index_within_milliseconds(backend: Backend) {
    let store = common::TestStore::fresh(backend).await;
    let url = store.url.clone();
    let a = TestApp::spawn_on(store, Settings::default()).await;
    let b = TestApp::spawn_on(common::TestStore::at(url), Settings::default()).await;
    let (_, out) = a.ingest(&sold(1, "1", now_ms() - 2 * 3_600_000)).await;
    assert_eq!(out["accepted"], 1, "{out}");
    index_complete(&a).await;
    assert_eq!(sale(&a, 1).await, (200, "0".into(), 0));
    assert_eq!(sale(&a, 5).await.0, 404);
    for (p, amount) in [(5, "5.5"), (1, "2")] {
        let (_, out) = b.ingest(&sold(p, amount, now_ms())).await;
        assert_eq!(out["accepted"], 1, "{out}");
        let acked = Instant::now();
        let want = if p == 5 { (200, "5.5".to_string(), 1) } else { (200, "2".to_string(), 1) };
        loop {
            let got = sale(&a, p).await;
            if got == want {
                break;
            }
            assert!(
                acked.elapsed() < Duration::from_secs(2),
                "product {p} on the other server: {got:?}, want {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        eprintln!("product {p}: visible on the other server {:?} after the ack", acked.elapsed());
    }
    // The index comes back complete, with both commits in it, and answers again. The other
    // server stops first: its background merges are commits too, and one landing between the
    // wait and the requests would make the index incomplete again.
    b.stop().await;
    index_complete(&a).await;
    let before = counter(&stats(&a).await, "index_answers");
    assert_eq!(sale(&a, 5).await, (200, "5.5".into(), 1));
    assert_eq!(sale(&a, 1).await, (200, "2".into(), 1));
    assert_eq!(sale(&a, 6).await.0, 404);
    assert!(counter(&stats(&a).await, "index_answers") > before);
    a.stop().await;
}

both_backends!(
    windows_without_buckets_and_unknown_products_are_answered_from_memory,
    another_processs_commits_reach_the_index_within_milliseconds,
);
