//! Changing metrics and schemas without losing history, through the front door on both backends:
//! a metric added later is rebuilt from the raw events (its figures equal a plain recomputation
//! from the events, the other metrics' are unchanged), also while events keep arriving and when
//! the rebuild is SIGKILLed at random points and run again; dead letters replay exactly once
//! after a schema is relaxed; a removed metric is not served and its rows can be dropped; a
//! rebuild cannot reach before what retention kept; neither retention passes nor commits of
//! events only the count by name follows deadlock a rebuild's swap (PostgreSQL), and a swap
//! PostgreSQL rolls back anyway is resumed.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::figures::{Fig, fig_of, get_exact, window_of};
use common::{Backend, TestApp, TestStore, json_of, run_cli};
use jetstream::config::{Aggregation, FieldSpec, MetricDef, Settings};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;
use serde_json::{Value, json};

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A sale as the oracle knows it.
#[derive(Debug, Clone)]
struct Sale {
    t_ms: i64,
    product: u64,
    units: u64,
    amount: Decimal,
}

impl Sale {
    /// In the reference stream's shape (`gen_events.py`): the product's id is in its name too,
    /// which the raw blocks' codec keeps as a difference from the line's previous number.
    fn json(&self) -> String {
        let Sale { t_ms, product, units, amount } = self;
        format!(
            r#"{{"event_name":"productSold","name_of_product":"product {product}","product_id":{product},"no_of_units":{units},"amount":"{amount}","timestamp":{t_ms}}}"#
        )
    }
}

/// Seeded sales: most in the last hour, some over the last two days, some weeks old; out of order.
fn sales(seed: u64, n: usize, now: i64) -> Vec<Sale> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let age_ms = match rng.random_range(0..10) {
                0..=5 => rng.random_range(0..3_600_000),
                6..=8 => rng.random_range(0..2 * 86_400_000),
                _ => rng.random_range(0..20 * 86_400_000),
            };
            Sale {
                t_ms: now - age_ms,
                product: rng.random_range(1..=12),
                units: rng.random_range(1..=9),
                amount: Decimal::new(rng.random_range(1..1_000_000), 2),
            }
        })
        .collect()
}

/// The metric a user adds after the events were ingested.
fn units_metric() -> MetricDef {
    MetricDef {
        name: "units".into(),
        event: "productSold".into(),
        aggregation: Aggregation::Sum,
        field: Some("no_of_units".into()),
        dimensions: vec!["product_id".into()],
    }
}

fn with_units() -> Settings {
    let mut s = Settings::default();
    s.metrics.push(units_metric());
    s
}

async fn post(app: &TestApp, sales: &[Sale]) {
    for batch in sales.chunks(500) {
        let body: String = batch.iter().map(|s| s.json() + "\n").collect();
        let (status, out) = app.ingest_ndjson(body).await;
        assert_eq!(status.as_u16(), 200, "{out}");
        assert_eq!(out["accepted"], json!(batch.len()), "{out}");
    }
}

/// The oracle: a plain loop over the events in `[from, to)` (seconds).
fn expected(sales: &[Sale], from: i64, to: i64, product: Option<u64>, value: fn(&Sale) -> Decimal) -> Fig {
    let mut f = Fig::default();
    for s in sales {
        let t = s.t_ms.div_euclid(1000);
        if from <= t && t < to && product.is_none_or(|p| p == s.product) {
            f.add(value(s));
        }
    }
    f
}

/// Every window and product asked of `metric` equals the oracle's figure.
async fn check_metric(app: &TestApp, metric: &str, sales: &[Sale], value: fn(&Sale) -> Decimal) {
    for window in ["36500d", "10d", "2d", "1h", "5m"] {
        for product in [None, Some(1), Some(7), Some(12)] {
            let dim = product.map(|p| format!("&dim=product_id&value={p}")).unwrap_or_default();
            let path = format!("/api/v1/metrics/{metric}?window={window}{dim}");
            let (status, v, x) = get_exact(app, &path).await;
            assert_eq!(status, 200, "{path}: {v}");
            let (from, to) = window_of(&v);
            let got = fig_of(x.get("result"));
            assert_eq!(got, expected(sales, from, to, product, value), "{path}: {v}");
        }
    }
}

fn units(s: &Sale) -> Decimal {
    Decimal::from(s.units)
}

fn amount(s: &Sale) -> Decimal {
    s.amount
}

async fn post_json(app: &TestApp, path: &str, body: Value) -> (u16, Value) {
    let r = app.client.post(app.url(path)).bearer_auth(&app.token).json(&body).send().await.unwrap();
    let (s, v) = json_of(r).await;
    (s.as_u16(), v)
}

/// Starts a rebuild through the admin API and waits for this server to finish it.
async fn rebuild_via_api(app: &TestApp, body: Value) -> Value {
    let (status, out) = post_json(app, "/api/v1/admin/rollups/rebuild", body).await;
    assert_eq!(status, 202, "{out}");
    rebuild_finished(app).await
}

/// Waits for this server's rebuild to finish; returns the status that says so.
async fn rebuild_finished(app: &TestApp) -> Value {
    for _ in 0..1200 {
        let (_, s) = app.get("/api/v1/admin/rollups").await;
        // A failed rebuild has no `last` report, only `last_error`: say it rather than wait.
        if s["server"]["running"].is_null() && !(s["server"]["last"].is_null() && s["server"]["last_error"].is_null()) {
            assert!(s["server"]["last_error"].is_null(), "the rebuild failed: {s}");
            return s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the rebuild did not finish");
}

fn metric_state(status: &Value, name: &str) -> String {
    let m = status["metrics"].as_array().unwrap().iter().find(|m| m["name"] == name);
    m.map(|m| m["state"].as_str().unwrap().to_string()).unwrap_or_default()
}

/// A metric added after its events were ingested starts empty, is reported stale, and after a
/// rebuild answers exactly what the events say; the metrics not rebuilt are untouched.
async fn a_metric_added_later_is_rebuilt_from_the_raw_events(backend: Backend) {
    let now = now_ms();
    let events = sales(16, 3_000, now);
    let app = TestApp::spawn(backend).await;
    post(&app, &events).await;
    let store = app.stop().await;

    let app = TestApp::spawn_on(store, with_units()).await;
    let (_, v) = app.get("/api/v1/metrics/units?window=36500d").await;
    assert_eq!(v["result"]["count"], json!(0), "no history before the rebuild: {v}");
    let (_, status) = app.get("/api/v1/admin/rollups").await;
    assert_eq!(metric_state(&status, "units"), "stale", "{status}");
    let done = rebuild_via_api(&app, json!({"metrics": ["units"]})).await;
    assert_eq!(done["server"]["last"]["events"], json!(3_000), "{done}");
    assert_eq!(metric_state(&done, "units"), "current", "{done}");
    check_metric(&app, "units", &events, units).await;
    check_metric(&app, "sales_amount", &events, amount).await;
    // The seed endpoint of the untouched metric, too.
    let (_, sale) = app.get("/api/product/sale/7").await;
    let hour = expected(&events, now / 1000 - 3_600, now / 1000 + 60, Some(7), amount);
    assert_eq!(sale["count"], json!(hour.count), "{sale}");

    // A second rebuild of everything changes no figure.
    rebuild_via_api(&app, json!({})).await;
    check_metric(&app, "units", &events, units).await;
    check_metric(&app, "sales_amount", &events, amount).await;
    app.stop().await;
}

/// `rollups.auto_rebuild`: a new metric is rebuilt in the background at start; the server
/// answers meanwhile, and then with the metric's whole history.
async fn auto_rebuild_gives_a_new_metric_its_history_at_start(backend: Backend) {
    let events = sales(26, 2_000, now_ms());
    let app = TestApp::spawn(backend).await;
    post(&app, &events).await;
    let store = app.stop().await;
    let mut settings = with_units();
    settings.rollups.auto_rebuild = true;
    let app = TestApp::spawn_on(store, settings).await;
    let mut status = Value::Null;
    for _ in 0..1200 {
        status = app.get("/api/v1/admin/rollups").await.1;
        if metric_state(&status, "units") == "current" && status["server"]["running"].is_null() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(metric_state(&status, "units"), "current", "the automatic rebuild did not finish: {status}");
    check_metric(&app, "units", &events, units).await;
    check_metric(&app, "sales_amount", &events, amount).await;
    app.stop().await;
}

/// Events keep arriving while a rebuild of every metric runs: the final figures count each once.
async fn a_rebuild_under_concurrent_ingest_counts_every_event_once(backend: Backend) {
    let now = now_ms();
    let mut events = sales(17, 6_000, now);
    let app = TestApp::spawn_with(backend, with_units()).await;
    post(&app, &events[..3_000]).await;
    let later = events[3_000..].to_vec();
    let (status, out) = post_json(&app, "/api/v1/admin/rollups/rebuild", json!({})).await;
    assert_eq!(status, 202, "{out}");
    // Ingest in small batches while it runs.
    for batch in later.chunks(100) {
        let body: String = batch.iter().map(|s| s.json() + "\n").collect();
        let (st, o) = app.ingest_ndjson(body).await;
        assert_eq!(st.as_u16(), 200, "{o}");
    }
    let mut done = Value::Null;
    for _ in 0..1200 {
        let (_, s) = app.get("/api/v1/admin/rollups").await;
        if s["server"]["running"].is_null() {
            done = s;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(done["server"]["last_error"].is_null(), "{done}");
    // More after the swap.
    let after = sales(18, 500, now_ms());
    post(&app, &after).await;
    events.extend(after);
    check_metric(&app, "units", &events, units).await;
    check_metric(&app, "sales_amount", &events, amount).await;
    app.stop().await;
}

/// `jetstream rollups rebuild` (in steps) against the store of a running server that keeps
/// ingesting: once the command is done (and the server's cache has aged out what it held), every
/// event counts once, those committed during the steps and the swap included.
async fn the_command_line_rebuild_beside_a_busy_server_counts_every_event_once(backend: Backend) {
    let now = now_ms();
    let events = sales(25, 8_000, now);
    let app = TestApp::spawn_with(backend, with_units()).await;
    for batch in events[..4_000].chunks(40) {
        app.ingest_ndjson(batch.iter().map(|s| s.json() + "\n").collect::<String>()).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), UNITS_TOML);
    let url = app.store.url.clone();
    let mut child = std::process::Command::new(common::jetstream_bin())
        .args(["rollups", "rebuild", "--metric", "units", "--store", &url, "--config", &config, "--step-events", "400"])
        .env("JETSTREAM_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (mut during, mut posted) = (0, 4_000);
    for batch in events[4_000..].chunks(40) {
        app.ingest_ndjson(batch.iter().map(|s| s.json() + "\n").collect::<String>()).await;
        posted += batch.len();
        if child.try_wait().unwrap().is_none() {
            during = posted - 4_000;
        }
    }
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    eprintln!("{during} events were committed while the rebuild ran: {text}");
    assert!(during > 0, "the rebuild finished before any concurrent event: nothing was tested");
    tokio::time::sleep(Duration::from_millis(1_100)).await; // the cache's ttl (another process wrote)
    check_metric(&app, "units", &events, units).await;
    check_metric(&app, "sales_amount", &events, amount).await;
    app.stop().await;
}

fn config_file(dir: &std::path::Path, extra: &str) -> String {
    let path = dir.join("jetstream.toml");
    std::fs::write(&path, extra).unwrap();
    path.display().to_string()
}

const UNITS_TOML: &str = r#"
[[metrics]]
name = "units"
event = "productSold"
aggregation = "sum"
field = "no_of_units"
dimensions = ["product_id"]
"#;

/// `jetstream rollups rebuild` SIGKILLed at random points, then run again to the end: exact.
async fn a_killed_rebuild_resumes_and_counts_once(backend: Backend) {
    let now = now_ms();
    let events = sales(19, 6_000, now);
    let app = TestApp::spawn(backend).await;
    // Many small commits: many raw blocks, so the rebuild takes several steps.
    for batch in events.chunks(50) {
        let body: String = batch.iter().map(|s| s.json() + "\n").collect();
        app.ingest_ndjson(body).await;
    }
    let store = app.stop().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), UNITS_TOML);
    let args =
        ["rollups", "rebuild", "--metric", "units", "--store", &store.url, "--config", &config, "--step-events", "300"];
    let mut rng = StdRng::seed_from_u64(20);
    let mut killed = 0;
    for _ in 0..4 {
        let mut child = std::process::Command::new(common::jetstream_bin())
            .args(args)
            .env("JETSTREAM_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..900))).await;
        if child.try_wait().unwrap().is_none() {
            killed += 1;
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    let (code, out, err) = run_cli(&args);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("rebuilt units from 6000 events"), "{out}");
    eprintln!("{killed} of 4 runs were killed mid-rebuild; the last: {out}");
    let app = TestApp::spawn_on(store, with_units()).await;
    check_metric(&app, "units", &events, units).await;
    check_metric(&app, "sales_amount", &events, amount).await;
    let (_, status) = app.get("/api/v1/admin/rollups").await;
    assert_eq!(metric_state(&status, "units"), "current", "{status}");
    app.stop().await;
}

fn strict() -> Settings {
    let mut s = Settings::default();
    let schema = s.events.get_mut("productSold").unwrap();
    schema.fields.insert("category".into(), FieldSpec { required: true, ..schema.fields["category"].clone() });
    s
}

/// Events refused by a too-strict schema replay once it is relaxed: counted with their own time,
/// removed from the dead letters; a second replay changes nothing.
async fn dead_letters_replay_exactly_once_after_a_schema_is_relaxed(backend: Backend) {
    let now = now_ms();
    let events = sales(21, 1_200, now);
    let app = TestApp::spawn_with(backend, strict()).await;
    // Half carry a category; the rest are dead letters under the strict schema.
    let (with, without) = events.split_at(600);
    let body: String = with
        .iter()
        .map(|s| {
            let mut v: Value = serde_json::from_str(&s.json()).unwrap();
            v["category"] = json!("c");
            v.to_string() + "\n"
        })
        .collect();
    app.ingest_ndjson(body).await;
    for batch in without.chunks(200) {
        let (_, out) = app.ingest_ndjson(batch.iter().map(|s| s.json() + "\n").collect::<String>()).await;
        assert_eq!(out["rejected"], json!(200), "{out}");
    }
    check_metric(&app, "sales_amount", with, amount).await;
    let store = app.stop().await;

    let app = TestApp::spawn_on(store, Settings::default()).await;
    let (status, dry) = post_json(&app, "/api/v1/admin/dead-letters/replay", json!({"dry_run": true})).await;
    assert_eq!((status, &dry["replayed"]), (200, &json!(600)), "{dry}");
    check_metric(&app, "sales_amount", with, amount).await;
    let (status, r) =
        post_json(&app, "/api/v1/admin/dead-letters/replay", json!({"reason_contains": "category"})).await;
    assert_eq!((status, &r["replayed"], &r["still_rejected"]), (200, &json!(600), &json!(0)), "{r}");
    // Read-after-ack: visible at once, with the events' own times.
    check_metric(&app, "sales_amount", &events, amount).await;
    let (_, r2) = post_json(&app, "/api/v1/admin/dead-letters/replay", json!({})).await;
    assert_eq!((&r2["examined"], &r2["replayed"]), (&json!(0), &json!(0)), "{r2}");
    let (_, letters) = app.get("/api/v1/dead-letters").await;
    assert_eq!(letters["dead_letters"].as_array().unwrap().len(), 0, "{letters}");
    check_metric(&app, "sales_amount", &events, amount).await;
    app.stop().await;
}

/// The command-line replay, and a replay interrupted between batches (some letters replayed, the
/// rest not): running it again replays the rest only.
async fn the_command_line_replay_resumes_where_it_stopped(backend: Backend) {
    let now = now_ms();
    let events = sales(22, 1_500, now);
    let app = TestApp::spawn_with(backend, strict()).await;
    for batch in events.chunks(100) {
        app.ingest_ndjson(batch.iter().map(|s| s.json() + "\n").collect::<String>()).await;
    }
    let store = app.stop().await;
    // The first run replays only what arrived before… none, then everything: two runs, one result.
    let (code, out, err) = run_cli(&["dead-letters", "replay", "--store", &store.url, "--since", "1ms"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = run_cli(&["dead-letters", "replay", "--store", &store.url, "--reason-contains", "category"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("1500 dead letters examined: 1500 replayed, 0 still refused"), "{out}");
    let (_, out, _) = run_cli(&["dead-letters", "replay", "--store", &store.url]);
    assert!(out.contains("0 dead letters examined"), "{out}");
    let app = TestApp::spawn_on(store, Settings::default()).await;
    check_metric(&app, "sales_amount", &events, amount).await;
    app.stop().await;
}

/// `jetstream dead-letters replay` SIGKILLed at random points, then run to the end: every letter
/// is counted once (each batch's events and the removal of its letters are one transaction).
async fn a_killed_replay_neither_loses_nor_doubles_a_letter(backend: Backend) {
    let events = sales(27, 8_000, now_ms());
    let app = TestApp::spawn_with(backend, strict()).await;
    for batch in events.chunks(200) {
        app.ingest_ndjson(batch.iter().map(|s| s.json() + "\n").collect::<String>()).await;
    }
    let store = app.stop().await;
    let mut rng = StdRng::seed_from_u64(28);
    for _ in 0..3 {
        let mut child = std::process::Command::new(common::jetstream_bin())
            .args(["dead-letters", "replay", "--store", &store.url])
            .env("JETSTREAM_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(rng.random_range(10..150))).await;
        let _ = child.kill();
        let _ = child.wait();
    }
    let (code, out, err) = run_cli(&["dead-letters", "replay", "--store", &store.url]);
    assert_eq!(code, 0, "{out}{err}");
    eprintln!("after the killed runs: {out}");
    let app = TestApp::spawn_on(store, Settings::default()).await;
    check_metric(&app, "sales_amount", &events, amount).await;
    let (_, letters) = app.get("/api/v1/dead-letters").await;
    assert_eq!(letters["dead_letters"].as_array().unwrap().len(), 0, "{letters}");
    app.stop().await;
}

/// A metric no longer declared is not served (the API names it), is reported as removed, and
/// `rollups drop` deletes its rows; rebuilding an undeclared metric is refused with the reason.
async fn a_removed_metric_is_not_served_and_can_be_dropped(backend: Backend) {
    let events = sales(23, 500, now_ms());
    let app = TestApp::spawn_with(backend, with_units()).await;
    post(&app, &events).await;
    check_metric(&app, "units", &events, units).await;
    let store = app.stop().await;
    let app = TestApp::spawn_on(store, Settings::default()).await;
    let (status, v) = app.get("/api/v1/metrics/units?window=1h").await;
    assert_eq!(status.as_u16(), 404, "{v}");
    assert!(v["message"].as_str().unwrap().contains("units"), "{v}");
    let (_, s) = app.get("/api/v1/admin/rollups").await;
    assert_eq!(metric_state(&s, "units"), "removed", "{s}");
    let (status, refused) = post_json(&app, "/api/v1/admin/rollups/rebuild", json!({"metrics": ["units"]})).await;
    assert_eq!(status, 422, "{refused}");
    let store = app.stop().await;
    let (code, out, err) = run_cli(&["rollups", "drop", "--store", &store.url]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("of units") && !out.contains("dropped 0 "), "{out}");
    let (_, out, _) = run_cli(&["rollups", "status", "--store", &store.url]);
    assert!(!out.lines().any(|l| l.starts_with("units ")), "{out}");
    // Declared again: its history is gone until rebuilt.
    let app = TestApp::spawn_on(store, with_units()).await;
    let (_, v) = app.get("/api/v1/metrics/units?window=36500d").await;
    assert_eq!(v["result"]["count"], json!(0), "{v}");
    rebuild_via_api(&app, json!({"metrics": ["units"]})).await;
    check_metric(&app, "units", &events, units).await;
    app.stop().await;
}

/// Retention pruned raw events: a rebuild asked to start before them is refused before it starts,
/// naming the oldest day it can rebuild; one from that day rebuilds exactly the events since.
async fn a_rebuild_cannot_reach_before_the_raw_retention(backend: Backend) {
    let now = now_ms();
    let day_ms = 86_400_000;
    let old = Sale { t_ms: now - 40 * day_ms, product: 1, units: 5, amount: Decimal::new(100, 0) };
    let recent = sales(24, 400, now);
    let app = TestApp::spawn(backend).await;
    post(&app, std::slice::from_ref(&old)).await;
    post(&app, &recent).await;
    // Ratings of product 1: 1 long ago (its raw event will be pruned), 5 and 4 now.
    let rating = |age_ms: i64, r: u32| json!({"event_name": "productRated", "product_id": 1, "rating": r, "timestamp": now - age_ms});
    app.ingest(&json!([rating(40 * day_ms, 1)])).await;
    app.ingest(&json!([rating(1_000, 5), rating(2_000, 4)])).await;
    let store = app.stop().await;
    // Retention's pass, as the server runs it: raw blocks older than 30 days go.
    let s = jetstream::storage::open(&store.url).await.unwrap();
    let cut = now - 30 * day_ms;
    let pruned = s
        .prune(jetstream::storage::PruneBefore {
            raw_ms: cut,
            dead_letters_ms: 0,
            second_buckets_s: Some(0),
            minute_buckets_s: Some(0),
            idempotency_keys_ms: 0,
        })
        .await
        .unwrap();
    // The server's own retention pass may have pruned one or both first.
    assert!(pruned.raw_blocks <= 2);
    s.close().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), UNITS_TOML);
    let from = chrono::DateTime::from_timestamp_millis(now - 35 * day_ms).unwrap().to_rfc3339();
    let (code, out, err) =
        run_cli(&["rollups", "rebuild", "--store", &store.url, "--config", &config, "--from", &from]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("no longer all kept") && err.contains("--from"), "{err}");
    // By default it rebuilds what is complete; the all-time figure keeps the old day's sale.
    let (code, out, err) = run_cli(&["rollups", "rebuild", "--store", &store.url, "--config", &config]);
    assert_eq!(code, 0, "{out}{err}");
    let app = TestApp::spawn_on(store, with_units()).await;
    check_metric(&app, "units", &recent, units).await;
    let mut all = recent.clone();
    all.push(old);
    check_metric(&app, "sales_amount", &all, amount).await;
    // The all-time average keeps the old rating: (1 + 5 + 4) / 3.
    let (_, r) = app.get("/api/product/rating/1").await;
    assert_eq!((&r["average_rating"], &r["count"]), (&json!(3.333333), &json!(3)), "{r}");
    app.stop().await;
}

/// `ingest.max_lateness` at its boundary: a second inside is taken, a second outside refused.
async fn late_events_are_refused_exactly_at_the_boundary(backend: Backend) {
    let mut settings = Settings::default();
    settings.ingest.max_lateness = Duration::from_secs(600);
    let app = TestApp::spawn_with(backend, settings).await;
    let now = now_ms();
    let sale = |age_ms: i64| json!({"event_name": "productSold", "product_id": 5, "no_of_units": 1, "amount": "1", "timestamp": now - age_ms});
    let (_, out) = app.ingest(&json!([sale(595_000), sale(610_000)])).await;
    assert_eq!((&out["accepted"], &out["rejected"]), (&json!(1), &json!(1)), "{out}");
    assert!(out["errors"][0]["reason"].as_str().unwrap().contains("ingest.max_lateness"), "{out}");
    app.stop().await;
}

/// One rebuild at a time per store: a second claim while the first's holder lives is refused.
/// Retention passes (another instance's, in a tight loop) beside rebuilds: each swap takes its
/// locks in the writers' order, as retention does, so neither waits for the other in a cycle (a
/// deadlock the server would break by failing one of them).
async fn retention_beside_a_rebuild_never_deadlocks_its_swap(backend: Backend) {
    let events = sales(31, 400, now_ms());
    let app = TestApp::spawn_with(backend, with_units()).await;
    post(&app, &events).await;
    let other = jetstream::storage::open(&app.store.url).await.unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pruner = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut passes = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // Cut-offs that expire nothing here: the pass takes its locks all the same.
                let nothing = jetstream::storage::PruneBefore {
                    raw_ms: 0,
                    dead_letters_ms: 0,
                    second_buckets_s: Some(0),
                    minute_buckets_s: Some(0),
                    idempotency_keys_ms: 0,
                };
                other.prune(nothing).await.expect("a retention pass beside a rebuild");
                passes += 1;
            }
            other.close().await.unwrap();
            passes
        }
    });
    for _ in 0..12 {
        rebuild_via_api(&app, json!({"metrics": ["units"]})).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(pruner.await.unwrap() > 0);
    check_metric(&app, "units", &events, units).await;
    app.stop().await;
}

/// Ingest beside rebuilds of events that only touch rows every writer shares (an event name no
/// metric but the built-in count by name follows): a commit of such a batch locks raw blocks
/// before it reaches `rollups`, the reverse of a swap's order, unless it takes `rollups` first.
async fn ingest_of_shared_rows_only_beside_a_rebuild_never_deadlocks_its_swap(backend: Backend) {
    let events = sales(37, 400, now_ms());
    let app = TestApp::spawn_with(backend, with_units()).await;
    post(&app, &events).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (client, url, token) = (app.client.clone(), app.url("/api/v1/events"), app.token.clone());
    let ingest = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut posted = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let body: String = (0..50)
                    .map(|_| format!("{{\"event_name\":\"pageViewed\",\"timestamp\":{}}}\n", now_ms()))
                    .collect();
                let r = client
                    .post(&url)
                    .bearer_auth(&token)
                    .header("content-type", "application/x-ndjson")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
                posted += 50;
            }
            posted
        }
    });
    for _ in 0..30 {
        rebuild_via_api(&app, json!({"metrics": ["units"]})).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let posted = ingest.await.unwrap();
    assert!(posted > 0);
    check_metric(&app, "units", &events, units).await;
    let (_, v) = app.get("/api/v1/metrics/events?window=36500d&dim=event_name&value=pageViewed").await;
    assert_eq!(v["result"]["count"], json!(posted), "{v}");
    app.stop().await;
}

async fn one_rebuild_runs_at_a_time(backend: Backend) {
    let store = TestStore::fresh(backend).await;
    let s = jetstream::storage::open(&store.url).await.unwrap();
    let spec = |m: &str| jetstream::storage::rebuild::RebuildSpec { metrics: vec![m.into()], from_s: None };
    let (first, _) = jetstream::rebuild::claim(&*s, &spec("a")).await.unwrap();
    let req = jetstream::storage::ClaimRequest {
        spec: spec("b"),
        owner: "elsewhere:1".into(),
        now_ms: now_ms(),
        lease_ms: 30_000,
        takeover: false,
        target_block: 0,
    };
    match s.rebuild_claim(req.clone()).await.unwrap() {
        jetstream::storage::rebuild::Claim::Busy(job) => assert_eq!(job.id, first.id),
        other => panic!("a second rebuild was let in: {other:?}"),
    }
    // Once the lease has run out, another may take over (the first never swapped anything).
    let later = jetstream::storage::ClaimRequest { now_ms: now_ms() + 60_000, ..req };
    assert!(matches!(s.rebuild_claim(later).await.unwrap(), jetstream::storage::rebuild::Claim::Held(_)));
}

/// A swap PostgreSQL rolls back (here a deadlock with another session, made on purpose) is not
/// the end of the rebuild: the server claims the job again and resumes it, and the rebuilt
/// metric counts every event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swap_postgres_rolled_back_is_resumed() {
    let events = sales(41, 400, now_ms());
    let app = TestApp::spawn_with(Backend::Postgres, with_units()).await;
    post(&app, &events).await;
    let (mut client, conn) = tokio_postgres::connect(&app.store.url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let tx = client.transaction().await.unwrap();
    // This session never looks for deadlocks (it would be the one rolled back otherwise), and
    // holds off the swap's lock of `raw_blocks`.
    tx.batch_execute("SET LOCAL deadlock_timeout = '1h'; LOCK TABLE raw_blocks IN ROW SHARE MODE").await.unwrap();
    let (status, out) = post_json(&app, "/api/v1/admin/rollups/rebuild", json!({"metrics": ["units"]})).await;
    assert_eq!(status, 202, "{out}");
    let waiting = "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
                   WHERE c.relname = 'raw_blocks' AND NOT l.granted";
    let mut polls = 0;
    while tx.query_one(waiting, &[]).await.unwrap().get::<_, i64>(0) == 0 {
        polls += 1;
        assert!(polls < 600, "the swap never waited for raw_blocks");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The swap holds `rollups` and waits for `raw_blocks`; waiting for `rollups` here closes the
    // cycle, and PostgreSQL rolls the swap back (40P01), which lets this lock through.
    tx.batch_execute("LOCK TABLE rollups IN ROW EXCLUSIVE MODE").await.unwrap();
    tx.rollback().await.unwrap();
    let s = rebuild_finished(&app).await;
    assert_eq!(s["server"]["last"]["attempts"], json!(2), "{s}");
    check_metric(&app, "units", &events, units).await;
    app.stop().await;
}

both_backends!(
    a_metric_added_later_is_rebuilt_from_the_raw_events,
    auto_rebuild_gives_a_new_metric_its_history_at_start,
    a_rebuild_under_concurrent_ingest_counts_every_event_once,
    a_killed_rebuild_resumes_and_counts_once,
    the_command_line_rebuild_beside_a_busy_server_counts_every_event_once,
    dead_letters_replay_exactly_once_after_a_schema_is_relaxed,
    the_command_line_replay_resumes_where_it_stopped,
    a_killed_replay_neither_loses_nor_doubles_a_letter,
    a_removed_metric_is_not_served_and_can_be_dropped,
    a_rebuild_cannot_reach_before_the_raw_retention,
    late_events_are_refused_exactly_at_the_boundary,
    one_rebuild_runs_at_a_time,
    retention_beside_a_rebuild_never_deadlocks_its_swap,
    ingest_of_shared_rows_only_beside_a_rebuild_never_deadlocks_its_swap,
);
