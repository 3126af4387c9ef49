//! The independent oracle: a seeded random stream of the original design's events (late, out of
//! order, skewed, some invalid, amounts as strings and as numbers with up to 18 significant
//! digits) is posted concurrently in random batches, as arrays and as NDJSON; then every figure the
//! API answers is compared with a recomputation from the events themselves — a plain loop over
//! exact decimals, sharing no code with the rollups.
//!
//! `ORACLE_EVENTS` sets the stream's size (default 4,000 in the test command; run 200,000 by hand:
//! `ORACLE_EVENTS=200000 cargo test --test oracle -- --nocapture`), `ORACLE_SEED` its seed.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use common::figures::{Fig, fig_and_time, fig_of, get_exact, window_of};
use common::{Backend, Exact, TestApp, json_of};
use jetstream::config::Settings;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;
use serde_json::{Value, json};

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn dec(s: &str) -> Decimal {
    Decimal::from_str_exact(s).unwrap()
}

/// What the generator knows about an event it made: the ground truth, by construction.
#[derive(Debug, Clone)]
enum Truth {
    Sale {
        product: u64,
        units: u64,
        amount: Decimal,
        category: String,
        time: When,
    },
    Rating {
        product: u64,
        rating: Decimal,
        category: String,
        time: When,
    },
    /// Rejected on purpose (the reason's gist is checked too).
    Invalid {
        why: &'static str,
    },
}

/// An event's time: given (ms), or the time of receipt (known only to lie in the test's run).
#[derive(Debug, Clone, Copy)]
enum When {
    At(i64),
    Receipt,
}

struct Stream {
    events: Vec<(String, Truth)>,
    products: u64,
}

/// An amount with 0–2 decimals, sometimes large (up to 10^15), as its exact text and value, and
/// whether to send it as a JSON string (else as a JSON number).
fn amount(rng: &mut StdRng) -> (String, Decimal, bool) {
    let cents: i64 = match rng.random_range(0..10) {
        0 => rng.random_range(0..100_000_000_000_000_000), // up to 10^15, 17–18 significant digits
        1 => rng.random_range(0..100),
        _ => rng.random_range(0..1_000_000),
    };
    let places = rng.random_range(0..3u32);
    let text = format!("{:.*}", places as usize, Decimal::new(cents, 2).round_dp(places));
    let exact = dec(&text);
    (text, exact, rng.random_bool(0.5))
}

/// A JSON event's text with `amount` written exactly as `text` (a number, not through an f64).
fn with_raw(mut event: Value, field: &str, text: &str) -> String {
    let marker = "@@RAW-NUMBER@@";
    event[field] = Value::String(marker.into());
    serde_json::to_string(&event).unwrap().replace(&format!("\"{marker}\""), text)
}

fn generate(n: usize, seed: u64, start_ms: i64) -> Stream {
    let mut rng = StdRng::seed_from_u64(seed);
    let products = (n as u64 / 15).max(20);
    let categories = ["Software", "Hardware", "Service", "Books", "Toys"];
    let mut events = Vec::with_capacity(n);
    for _ in 0..n {
        // Skewed popularity: a few products get most events.
        let product = ((rng.random::<f64>().powi(3) * products as f64) as u64).min(products - 1) + 1;
        let category = categories[rng.random_range(0..categories.len())].to_string();
        let name_key = if rng.random_bool(0.5) { "event_name" } else { "event" };
        // Late and out of order: explicit times over the last 3 days (some a minute in the
        // future, within the allowed skew), or none (the time of receipt).
        let time = match rng.random_range(0..10) {
            0..=3 => When::Receipt,
            4 => When::At(start_ms - rng.random_range(0..3_600_000)),
            5 => When::At(start_ms + rng.random_range(0..60_000)),
            _ => When::At(start_ms - rng.random_range(0..3 * 86_400_000)),
        };
        let mut e = json!({ name_key: if rng.random_bool(0.7) { "productSold" } else { "productRated" } });
        let product_v = if rng.random_bool(0.8) { json!(product) } else { json!(format!("{product:03}")) };
        e["product_id"] = product_v;
        e["category"] = json!(category);
        e["name_of_product"] = json!(format!("Product {product}"));
        if let When::At(ms) = time {
            e["timestamp"] = if rng.random_bool(0.5) {
                json!(ms)
            } else {
                json!(chrono::DateTime::from_timestamp_millis(ms).unwrap().to_rfc3339())
            };
        }
        let invalid = rng.random_bool(0.04);
        let (text, truth) = if e[name_key] == "productSold" {
            let units = rng.random_range(0..20u64);
            e["no_of_units"] = json!(units);
            let (text, exact, as_string) = amount(&mut rng);
            let v = if as_string { json!(text) } else { json!("") };
            if invalid {
                match rng.random_range(0..4) {
                    0 => {
                        e.as_object_mut().unwrap().remove("product_id");
                        e["amount"] = json!(text);
                        (e.to_string(), Truth::Invalid { why: "missing field \"product_id\"" })
                    }
                    1 => (
                        with_raw(e, "amount", &format!("-{}", exact + Decimal::ONE)),
                        Truth::Invalid { why: "outside the allowed range" },
                    ),
                    2 => (
                        with_raw(e, "amount", "0.1234567890123456789012345678901"),
                        Truth::Invalid { why: "cannot be held exactly" },
                    ),
                    _ => {
                        e["timestamp"] = json!(start_ms + 3_600_000);
                        e["amount"] = json!(text);
                        (e.to_string(), Truth::Invalid { why: "in the future" })
                    }
                }
            } else {
                let text = if as_string {
                    e["amount"] = v;
                    e.to_string()
                } else {
                    // The number as its exact text (an f64 would not hold 18 digits).
                    with_raw(e, "amount", &text)
                };
                (text, Truth::Sale { product, units, amount: exact, category, time })
            }
        } else {
            let halves = rng.random_range(2..=10u32);
            let rating = Decimal::new(i64::from(halves) * 5, 1).normalize();
            if invalid {
                match rng.random_range(0..3) {
                    0 => {
                        e["rating"] = json!(6);
                        (e.to_string(), Truth::Invalid { why: "outside the allowed range 1 to 5" })
                    }
                    1 => {
                        e["rating"] = json!("great");
                        (e.to_string(), Truth::Invalid { why: "must be a number" })
                    }
                    _ => {
                        e.as_object_mut().unwrap().remove(name_key);
                        e["rating"] = json!(3);
                        (e.to_string(), Truth::Invalid { why: "no event name" })
                    }
                }
            } else {
                let text = if rng.random_bool(0.5) {
                    e["rating"] = json!(rating.to_string());
                    e.to_string()
                } else {
                    with_raw(e, "rating", &rating.to_string())
                };
                (text, Truth::Rating { product, rating, category, time })
            }
        };
        events.push((text, truth));
    }
    Stream { events, products }
}

/// The recomputation: every accepted event with its (possibly receipt) time.
struct Oracle {
    accepted: Vec<Truth>,
    /// Receipt-time events were received within [run_from, run_to] (ms).
    run_from: i64,
    run_to: i64,
}

impl Oracle {
    /// The figure of `metric` for events matching `filter` whose time lies in `[from, to)` seconds.
    /// Receipt-time events count when the whole run lies inside the window, not at all when it
    /// lies outside; a window cutting through the run cannot be checked (panics).
    fn figure(&self, metric: &str, filter: &dyn Fn(&Truth) -> bool, from: i64, to: i64) -> Fig {
        let mut f = Fig::default();
        let run_inside = from * 1000 <= self.run_from && self.run_to < to * 1000;
        let run_outside = self.run_to < from * 1000 || to * 1000 <= self.run_from;
        for t in self.accepted.iter().filter(|t| filter(t)) {
            let (value, time) = match (metric, t) {
                ("sales_amount", Truth::Sale { amount, time, .. }) => (*amount, *time),
                ("sales_units", Truth::Sale { units, time, .. }) => (Decimal::from(*units), *time),
                ("rating", Truth::Rating { rating, time, .. }) => (*rating, *time),
                ("events", Truth::Sale { time, .. } | Truth::Rating { time, .. }) => (Decimal::ONE, *time),
                _ => continue,
            };
            let inside = match time {
                When::At(ms) => from <= ms.div_euclid(1000) && ms.div_euclid(1000) < to,
                When::Receipt => {
                    assert!(run_inside || run_outside, "window [{from}, {to}) cuts through the run");
                    run_inside
                }
            };
            if inside {
                f.add(value);
            }
        }
        f
    }
}

/// Which accepted events a query selects.
type Filter = Box<dyn Fn(&Truth) -> bool>;

fn product_of(t: &Truth) -> Option<u64> {
    match t {
        Truth::Sale { product, .. } | Truth::Rating { product, .. } => Some(*product),
        Truth::Invalid { .. } => None,
    }
}

fn category_of(t: &Truth) -> Option<&str> {
    match t {
        Truth::Sale { category, .. } | Truth::Rating { category, .. } => Some(category),
        Truth::Invalid { .. } => None,
    }
}

async fn get(app: &TestApp, path: &str) -> (u16, Value, Exact) {
    get_exact(app, path).await
}

/// Posts the stream over `clients` concurrent tasks in random batch sizes, as JSON arrays or
/// NDJSON; checks each answer's rejected indexes against the ground truth.
async fn post_stream(app: &TestApp, stream: &Stream, seed: u64) {
    let events = Arc::new(stream.events.clone());
    let next = Arc::new(AtomicI64::new(0));
    let mut tasks = Vec::new();
    for c in 0..4u64 {
        let (client, url, token, events, next) =
            (app.client.clone(), app.url("/api/v1/events"), app.token.clone(), events.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed ^ (c + 1));
            loop {
                let size = rng.random_range(1..=200i64);
                let start = next.fetch_add(size, Ordering::SeqCst) as usize;
                if start >= events.len() {
                    return;
                }
                let batch = &events[start..(start + size as usize).min(events.len())];
                let ndjson = rng.random_bool(0.5);
                let body = if ndjson {
                    batch.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>().join("\n")
                } else {
                    format!("[{}]", batch.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>().join(","))
                };
                let mut req = client.post(&url).bearer_auth(&token).body(body);
                if ndjson {
                    req = req.header("content-type", "application/x-ndjson");
                }
                let (s, out) = json_of(req.send().await.unwrap()).await;
                assert_eq!(s.as_u16(), 200, "{out}");
                let want: Vec<(usize, &str)> = batch
                    .iter()
                    .enumerate()
                    .filter_map(|(i, (_, t))| match t {
                        Truth::Invalid { why } => Some((i, *why)),
                        _ => None,
                    })
                    .collect();
                let got = out["errors"].as_array().unwrap();
                assert_eq!(got.len(), want.len(), "rejected events of a batch: {out}");
                for (g, (i, why)) in got.iter().zip(&want) {
                    assert_eq!(g["index"], *i, "{out}");
                    let reason = g["reason"].as_str().unwrap();
                    assert!(reason.contains(why), "event {i}: {reason:?} lacks {why:?}\n{}", batch[*i].0);
                }
                assert_eq!(out["accepted"].as_u64().unwrap() as usize, batch.len() - want.len());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Compares every figure the API answers with the oracle's.
async fn compare_everything(app: &TestApp, oracle: &Oracle, products: u64, start_s: i64, seed: u64) {
    // The two original endpoints, for every product.
    let mut checked = 0;
    for p in 1..=products {
        let known = oracle.accepted.iter().any(|t| product_of(t) == Some(p));
        let (s, sale, exact) = get(app, &format!("/api/product/sale/{p}")).await;
        if !known {
            assert_eq!(s, 404, "product {p}: {sale}");
            continue;
        }
        assert_eq!(s, 200, "product {p}: {sale}");
        let (from, to) = window_of(&sale);
        assert!(to * 1000 > oracle.run_to, "the sales window ends before the run did: {sale}");
        let want = oracle.figure("sales_amount", &|t| product_of(t) == Some(p), from, to);
        assert!(exact.get("total").is_plain_number(), "{sale}");
        assert_eq!(
            (sale["count"].as_i64().unwrap(), exact.get("total").dec().unwrap()),
            (want.count, want.sum),
            "sale {p}"
        );
        let (_, rating, exact) = get(app, &format!("/api/product/rating/{p}")).await;
        let want = oracle.figure("rating", &|t| product_of(t) == Some(p), 0, i64::MAX / 2000);
        let avg = (want.count > 0).then(|| (want.sum / Decimal::from(want.count)).round_dp(6));
        assert_eq!(
            (rating["count"].as_i64().unwrap(), exact.get("average_rating").dec()),
            (want.count, avg),
            "rating {p}: {rating}"
        );
        checked += 1;
    }
    assert!(checked >= products / 2, "only {checked} products were known");

    // The versioned API: every metric, overall / per product / per category, over trailing and
    // explicit (aligned and not) windows ending before the run (receipt times are after them).
    let mut rng = StdRng::seed_from_u64(seed ^ 0xfeed);
    let mut selections: Vec<(String, Filter)> = vec![(String::new(), Box::new(|t| product_of(t).is_some()))];
    for _ in 0..4 {
        let p = rng.random_range(1..=products.min(8));
        selections.push((format!("dim=product_id&value={p}&"), Box::new(move |t| product_of(t) == Some(p))));
    }
    selections.push(("dim=category&value=Books&".into(), Box::new(|t| category_of(t) == Some("Books"))));
    let mut windows = vec!["window=1h".to_string(), "window=1d".into(), "window=7d".into()];
    for _ in 0..4 {
        let to = start_s - rng.random_range(1..2 * 86_400);
        let from = to - rng.random_range(1..86_400);
        windows.push(format!("from={}&to={}", from * 1000, to * 1000));
        let (f, t) = (from - from.rem_euclid(3600), to - to.rem_euclid(60));
        windows.push(format!(
            "from={}&to={}",
            chrono::DateTime::from_timestamp(f, 0).unwrap().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            chrono::DateTime::from_timestamp(t, 0).unwrap().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ));
    }
    for metric in ["sales_amount", "sales_units", "rating", "events"] {
        for (sel, filter) in &selections {
            let sel = if metric == "events" && !sel.is_empty() { continue } else { sel };
            for w in &windows {
                let path = format!("/api/v1/metrics/{metric}?{sel}{w}");
                let (s, v, exact) = get(app, &path).await;
                assert_eq!(s, 200, "{path}: {v}");
                let (from, to) = window_of(&v);
                let want = oracle.figure(metric, filter.as_ref(), from, to);
                assert_eq!(fig_of(exact.get("result")), want, "{path}: {v}");
                let avg = (want.count > 0).then(|| (want.sum / Decimal::from(want.count)).round_dp(6));
                assert_eq!(exact.get("result").get("avg").dec(), avg, "{path}");
            }
        }
    }

    // Series, bucket by bucket, over windows ending before the run.
    for (step, secs, span) in [("minute", 60, 6 * 3600), ("hour", 3600, 2 * 86_400), ("second", 1, 600)] {
        for (sel, filter) in selections.iter().take(3) {
            let to = start_s - 60 - rng.random_range(0..86_400);
            let from = to - span;
            let path =
                format!("/api/v1/metrics/sales_amount/series?{sel}from={}&to={}&step={step}", from * 1000, to * 1000);
            let (s, v, exact) = get(app, &path).await;
            assert_eq!(s, 200, "{path}: {v}");
            let mut want: BTreeMap<i64, Fig> = BTreeMap::new();
            for t in oracle.accepted.iter().filter(|t| filter(t)) {
                if let Truth::Sale { amount, time: When::At(ms), .. } = t {
                    let sec = ms.div_euclid(1000);
                    let (wf, wt) = window_of(&v);
                    if wf <= sec && sec < wt {
                        want.entry(sec - sec.rem_euclid(secs)).or_default().add(*amount);
                    }
                }
            }
            let got: BTreeMap<i64, Fig> =
                exact.get("points").items().iter().map(fig_and_time).filter(|(_, f)| f.count > 0).collect();
            assert_eq!(got, want, "{path}");
        }
    }
}

async fn the_api_agrees_with_an_independent_recomputation(backend: Backend) {
    let n: usize = std::env::var("ORACLE_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(4_000);
    let seed: u64 = std::env::var("ORACLE_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(20261201);
    let start = now_ms();
    let stream = generate(n, seed, start);
    let app = TestApp::spawn(backend).await;
    let t = std::time::Instant::now();
    post_stream(&app, &stream, seed).await;
    let run_to = now_ms();
    eprintln!("posted {n} events in {:?}", t.elapsed());
    let oracle = Oracle {
        accepted: stream
            .events
            .iter()
            .map(|(_, t)| t.clone())
            .filter(|t| !matches!(t, Truth::Invalid { .. }))
            .collect(),
        run_from: start,
        run_to,
    };

    // The dead letters: every invalid event, as sent, with its reason.
    let mut letters: HashMap<String, Vec<String>> = HashMap::new();
    let mut cursor = String::new();
    loop {
        let (s, page) = app.get(&format!("/api/v1/dead-letters?limit=1000{cursor}")).await;
        assert_eq!(s.as_u16(), 200, "{page}");
        for l in page["dead_letters"].as_array().unwrap() {
            letters
                .entry(l["raw"].as_str().unwrap().to_string())
                .or_default()
                .push(l["reason"].as_str().unwrap().into());
        }
        match page["next_before"].as_i64() {
            Some(b) => cursor = format!("&before={b}"),
            None => break,
        }
    }
    let invalid: Vec<&(String, Truth)> =
        stream.events.iter().filter(|(_, t)| matches!(t, Truth::Invalid { .. })).collect();
    assert_eq!(letters.values().map(Vec::len).sum::<usize>(), invalid.len(), "dead letters");
    for (raw, t) in invalid {
        let Truth::Invalid { why } = t else { unreachable!() };
        let reasons = letters.get_mut(raw).unwrap_or_else(|| panic!("no dead letter {raw}"));
        let reason = reasons.pop().unwrap_or_else(|| panic!("too few dead letters {raw}"));
        assert!(reason.contains(why), "dead letter {raw}: {reason:?} lacks {why:?}");
    }

    let start_s = start / 1000;
    compare_everything(&app, &oracle, stream.products, start_s, seed).await;
    // Everything again after a restart: what was answered is what was stored.
    let store = app.stop().await;
    let app = TestApp::spawn_on(store, Settings::default()).await;
    // The read cache's index, loaded from the store alone, answers what it can: those answers
    // are compared like every other.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while app.get("/api/v1/admin/stats").await.1["index"]["complete"] != true {
        assert!(std::time::Instant::now() < deadline, "the index did not load");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    compare_everything(&app, &oracle, stream.products, start_s, seed).await;
    let from_memory = app.get("/api/v1/admin/stats").await.1["cache"]["index_answers"].as_u64().unwrap();
    assert!(from_memory > 0, "answers from the index: {from_memory}");
    app.stop().await;
}

/// Read-after-ack under concurrency: while one task ingests, others query; every answer lies
/// between what was acknowledged before the query was sent and what was sent before the answer
/// came, and every trailing window ends with the second the query was sent in, or later.
async fn every_answer_holds_what_was_acknowledged_before_it_was_asked(backend: Backend) {
    let app = Arc::new(TestApp::spawn(backend).await);
    // Known products first (an unknown one is a 404).
    for p in 1..=3 {
        app.ingest(&json!({"event_name": "productSold", "product_id": p, "no_of_units": 1, "amount": "0.01"})).await;
        app.ingest(&json!({"event": "productRated", "product_id": p, "rating": 1})).await;
    }
    // Per product: [acked count, sent count] of sales (one cent each) and of ratings.
    let acked = Arc::new((0..8).map(|_| AtomicI64::new(1)).collect::<Vec<_>>());
    let sent = Arc::new((0..8).map(|_| AtomicI64::new(1)).collect::<Vec<_>>());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (app, acked, sent, stop) = (app.clone(), acked.clone(), sent.clone(), stop.clone());
        tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(7);
            while !stop.load(Ordering::Relaxed) {
                let p = rng.random_range(1..=3usize);
                let n = rng.random_range(1..40i64);
                let rating = rng.random_bool(0.3);
                let one = if rating {
                    json!({"event": "productRated", "product_id": p, "rating": 1})
                } else {
                    json!({"event_name": "productSold", "product_id": p, "no_of_units": 1, "amount": "0.01"})
                };
                let slot = p * 2 + usize::from(rating);
                sent[slot].fetch_add(n, Ordering::SeqCst);
                let (s, _) = app.ingest(&Value::Array(vec![one; n as usize])).await;
                assert_eq!(s.as_u16(), 200);
                acked[slot].fetch_add(n, Ordering::SeqCst);
            }
        })
    };
    let mut readers = Vec::new();
    for r in 0..4u64 {
        let (app, acked, sent) = (app.clone(), acked.clone(), sent.clone());
        readers.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(r);
            let mut answers = 0;
            let deadline = std::time::Instant::now() + Duration::from_secs(6);
            while std::time::Instant::now() < deadline {
                let p = rng.random_range(1..=3usize);
                let kind = rng.random_range(0..3);
                let slot = p * 2 + usize::from(kind == 1);
                let low = acked[slot].load(Ordering::SeqCst);
                let sent_s = now_ms() / 1000;
                let path = match kind {
                    0 => format!("/api/product/sale/{p}"),
                    1 => format!("/api/product/rating/{p}"),
                    _ => format!("/api/v1/metrics/sales_amount?dim=product_id&value={p}&window=1h"),
                };
                let (s, v) = app.get(&path).await;
                assert_eq!(s.as_u16(), 200, "{path}: {v}");
                let high = sent[slot].load(Ordering::SeqCst);
                let count = if kind == 2 { v["result"]["count"].as_i64() } else { v["count"].as_i64() }.unwrap();
                assert!(low <= count && count <= high, "{path}: {count} outside [{low}, {high}]: {v}");
                if kind != 1 {
                    let (_, to) = window_of(&v);
                    assert!(
                        to > sent_s,
                        "{path}: the window ends at {to}, before the second it was asked in ({sent_s}): {v}"
                    );
                }
                answers += 1;
            }
            answers
        }));
    }
    let mut answers = 0;
    for r in readers {
        answers += r.await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    assert!(answers > 100, "only {answers} answers");
    match Arc::try_unwrap(app) {
        Ok(app) => {
            app.stop().await;
        }
        Err(_) => panic!("the app is still shared"),
    }
}

both_backends!(
    the_api_agrees_with_an_independent_recomputation,
    every_answer_holds_what_was_acknowledged_before_it_was_asked
);
