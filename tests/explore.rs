//! What a dashboard asks besides one figure, on both backends, each answer compared with a
//! recomputation from the events posted (a plain loop over exact decimals): top-N rankings with
//! their ties, zero-filled series in fixed and calendar steps aligned in a time zone (DST days
//! included), the values of a dimension with their latest labels, and several queries in one
//! request.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;

use chrono::{Datelike, NaiveDate, NaiveDateTime, TimeZone};
use chrono_tz::Tz;
use common::figures::{Fig, fig_and_time, fig_of, get_exact, window_of};
use common::{Backend, Exact, TestApp};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;
use serde_json::{Value, json};

const CATEGORIES: [&str; 4] = ["Books", "Games", "Toys", "Tools"];

/// One accepted event as the oracle sees it.
#[derive(Debug, Clone)]
struct Ev {
    product: u64,
    category: &'static str,
    /// `Some(amount, units)` for a sale, `None` for a rating.
    sale: Option<(Decimal, u64)>,
    rating: Option<Decimal>,
    /// Epoch milliseconds.
    ms: i64,
}

impl Ev {
    fn value(&self, metric: &str) -> Option<Decimal> {
        match metric {
            "sales_amount" => self.sale.map(|(a, _)| a),
            "sales_units" => self.sale.map(|(_, u)| Decimal::from(u)),
            "rating" => self.rating,
            _ => None,
        }
    }

    fn json(&self, name: &str) -> Value {
        let mut e = json!({
            "product_id": self.product,
            "category": self.category,
            "name_of_product": name,
            "timestamp": self.ms,
        });
        match (self.sale, self.rating) {
            (Some((amount, units)), _) => {
                e["event_name"] = json!("productSold");
                e["amount"] = json!(amount.to_string());
                e["no_of_units"] = json!(units);
            }
            (None, Some(r)) => {
                e["event"] = json!("productRated");
                e["rating"] = json!(r.to_string());
            }
            _ => unreachable!(),
        }
        e
    }
}

/// Posts `events` in batches of 500; every one must be accepted.
async fn post(app: &TestApp, events: &[Value]) {
    for chunk in events.chunks(500) {
        let (s, out) = app.ingest(&Value::Array(chunk.to_vec())).await;
        assert_eq!(s.as_u16(), 200, "{out}");
        assert_eq!(out["accepted"].as_u64().unwrap() as usize, chunk.len(), "{out}");
    }
}

/// Sales and ratings over the last two hours and the last three days, with few distinct amounts
/// so that rankings tie.
fn generate(n: usize, seed: u64, now_ms: i64) -> Vec<Ev> {
    let mut rng = StdRng::seed_from_u64(seed);
    let amounts = ["0.01", "2.50", "10", "99.99", "1000000000000.01"];
    (0..n)
        .map(|_| {
            let product = rng.random_range(1..=40u64);
            let ms = if rng.random_bool(0.7) {
                now_ms - rng.random_range(5_000..7_200_000)
            } else {
                now_ms - rng.random_range(7_200_000..3 * 86_400_000)
            };
            let category = CATEGORIES[(product % 4) as usize];
            if rng.random_bool(0.75) {
                let amount = Decimal::from_str_exact(amounts[rng.random_range(0..amounts.len())]).unwrap();
                Ev { product, category, sale: Some((amount, rng.random_range(1..4))), rating: None, ms }
            } else {
                let rating = Decimal::from(rng.random_range(1..=5u32));
                Ev { product, category, sale: None, rating: Some(rating), ms }
            }
        })
        .collect()
}

/// The value a dimension takes in an event.
fn dim_value(e: &Ev, dim: &str) -> String {
    match dim {
        "product_id" => e.product.to_string(),
        "category" => e.category.to_string(),
        _ => unreachable!(),
    }
}

/// The oracle's top-N: every value's figure over `[from, to)`, ranked by `by` (highest first,
/// values without a figure last), ties by value (numerically for ids).
fn oracle_top(events: &[Ev], metric: &str, dim: &str, by: &str, from: i64, to: i64) -> Vec<(String, Fig)> {
    let mut per: BTreeMap<String, Fig> = BTreeMap::new();
    for e in events {
        let s = e.ms.div_euclid(1000);
        if let Some(v) = e.value(metric).filter(|_| from <= s && s < to) {
            per.entry(dim_value(e, dim)).or_default().add(v);
        }
    }
    let mut all: Vec<(String, Fig)> = per.into_iter().collect();
    let numeric = |v: &str| v.parse::<u64>().ok();
    // Averages compare exactly, by cross-multiplication (the answer shows them rounded).
    let rank = |a: &Fig, b: &Fig| match by {
        "avg" => (b.sum * Decimal::from(a.count)).cmp(&(a.sum * Decimal::from(b.count))),
        _ => b.by(by).cmp(&a.by(by)),
    };
    all.sort_by(|(va, a), (vb, b)| {
        rank(a, b).then_with(|| match (numeric(va), numeric(vb)) {
            (Some(x), Some(y)) => x.cmp(&y),
            _ => va.cmp(vb),
        })
    });
    all
}

async fn top_n_ranks_exactly_with_ties_by_value(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let now = chrono::Utc::now().timestamp_millis();
    let events = generate(3_000, 15, now);
    post(&app, &events.iter().map(|e| e.json(&format!("Product {}", e.product))).collect::<Vec<_>>()).await;

    let hour_ago = (now / 1000 - 3 * 3600) / 3600 * 3600;
    let windows = [
        "window=1h".to_string(),
        "window=7d".to_string(),
        format!("from={}&to={}", hour_ago * 1000, (hour_ago + 7200) * 1000),
    ];
    let mut ties = 0;
    for (metric, dim) in [("sales_amount", "product_id"), ("rating", "product_id"), ("sales_units", "category")] {
        for by in ["count", "sum", "avg", "min", "max"] {
            for w in &windows {
                for limit in [5, 1000] {
                    let path = format!("/api/v1/metrics/{metric}/top?dim={dim}&{w}&by={by}&limit={limit}");
                    let (s, v, exact) = get_exact(&app, &path).await;
                    assert_eq!(s, 200, "{path}: {v}");
                    let (from, to) = window_of(&v);
                    let want = oracle_top(&events, metric, dim, by, from, to);
                    let got: Vec<(String, Fig)> = exact
                        .get("items")
                        .items()
                        .iter()
                        .map(|i| {
                            let Exact::Str(value) = i.get("value") else { panic!("{i:?}") };
                            assert_eq!(i.get("avg").dec(), fig_of(i).avg(), "{path}");
                            (value.clone(), fig_of(i))
                        })
                        .collect();
                    let want: Vec<_> = want.into_iter().take(limit).collect();
                    assert_eq!(got, want, "{path}");
                    ties += got.windows(2).filter(|p| p[0].1.by(by) == p[1].1.by(by)).count();
                    if dim == "product_id" {
                        for i in v["items"].as_array().unwrap() {
                            assert_eq!(
                                i["label"],
                                json!(format!("Product {}", i["value"].as_str().unwrap())),
                                "{path}"
                            );
                        }
                    }
                }
            }
        }
    }
    assert!(ties > 100, "the rankings should have tied often; only {ties} ties");

    // Bad requests are 4xx with a reason.
    for (path, status) in [
        ("/api/v1/metrics/sales_amount/top?window=1h", 400),
        ("/api/v1/metrics/sales_amount/top?dim=colour&window=1h", 400),
        ("/api/v1/metrics/sales_amount/top?dim=product_id&window=1h&by=median", 400),
        ("/api/v1/metrics/sales_amount/top?dim=product_id&window=1h&limit=0", 400),
        ("/api/v1/metrics/sales_amount/top?dim=product_id&window=1h&limit=1001", 400),
        ("/api/v1/metrics/nope/top?dim=product_id&window=1h", 404),
    ] {
        let (s, v, _) = get_exact(&app, path).await;
        assert_eq!(s, status, "{path}: {v}");
        assert!(v["message"].is_string(), "{path}: {v}");
    }
    app.stop().await;
}

/// The oracle's series: the start of each event's bucket, found by flooring its local time in
/// `tz` (an independent formulation: the server walks boundaries forward instead).
fn local_bucket(ms: i64, step: &str, tz: Tz) -> i64 {
    let local: NaiveDateTime = chrono::DateTime::from_timestamp_millis(ms).unwrap().with_timezone(&tz).naive_local();
    let date = local.date();
    let floor = match step {
        "1d" => date.and_hms_opt(0, 0, 0).unwrap(),
        "1w" => {
            (date - chrono::Days::new(u64::from(date.weekday().num_days_from_monday()))).and_hms_opt(0, 0, 0).unwrap()
        }
        "1mo" => NaiveDate::from_ymd_opt(date.year(), date.month(), 1).unwrap().and_hms_opt(0, 0, 0).unwrap(),
        fixed => {
            let secs: i64 = match fixed {
                "1m" => 60,
                "5m" => 300,
                "15m" => 900,
                "1h" => 3600,
                _ => unreachable!(),
            };
            // Fixed steps are aligned in local time too (a 1h step in Asia/Kolkata starts at :30 UTC).
            let from_midnight = (local - date.and_hms_opt(0, 0, 0).unwrap()).num_seconds();
            date.and_hms_opt(0, 0, 0).unwrap()
                + chrono::Duration::seconds(from_midnight - from_midnight.rem_euclid(secs))
        }
    };
    // A local midnight skipped by DST does not exist; the day starts at the first instant after.
    match tz.from_local_datetime(&floor) {
        chrono::LocalResult::Single(t) => t.timestamp(),
        chrono::LocalResult::Ambiguous(a, b) => {
            // The repeated hour: the bucket holding this instant.
            let t = ms.div_euclid(1000);
            if b.timestamp() <= t { b.timestamp() } else { a.timestamp() }
        }
        chrono::LocalResult::None => (1..=7200)
            .find_map(|s| tz.from_local_datetime(&(floor + chrono::Duration::seconds(s))).earliest())
            .unwrap()
            .timestamp(),
    }
}

/// Checks one series answer against the oracle: every bucket present (zero-filled), in order,
/// each starting where the oracle says its events' buckets start.
async fn check_series(app: &TestApp, events: &[Ev], path: &str, step: &str, tz: Tz, product: Option<u64>) -> usize {
    let (s, v, exact) = get_exact(app, path).await;
    assert_eq!(s, 200, "{path}: {v}");
    let (from, to) = window_of(&v);
    let points: Vec<(i64, Fig)> = exact.get("points").items().iter().map(fig_and_time).collect();
    assert!(!points.is_empty(), "{path}");
    assert_eq!(points[0].0, from, "{path}: the first point starts the window");
    assert!(points.windows(2).all(|p| p[0].0 < p[1].0), "{path}: points in order");
    let mut want: BTreeMap<i64, Fig> = points.iter().map(|(t, _)| (*t, Fig::default())).collect();
    for e in events.iter().filter(|e| product.is_none_or(|p| e.product == p)) {
        let s = e.ms.div_euclid(1000);
        if let Some(a) = e.value("sales_amount").filter(|_| from <= s && s < to) {
            let b = local_bucket(e.ms, step, tz);
            want.get_mut(&b).unwrap_or_else(|| panic!("{path}: no point at {b} for an event at {}", e.ms)).add(a);
        }
    }
    let got: BTreeMap<i64, Fig> = points.into_iter().collect();
    assert_eq!(got, want, "{path}");
    got.values().filter(|f| f.count == 0).count()
}

async fn series_are_zero_filled_in_calendar_steps_of_a_time_zone(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let now = chrono::Utc::now().timestamp_millis();
    let mut events = generate(2_000, 16, now);
    // Days around both of Berlin's DST changes of 2025 (a 23-hour and a 25-hour day), and a
    // month boundary, with events in the repeated and the skipped hours.
    let mut rng = StdRng::seed_from_u64(17);
    for (y, m, d) in [(2025, 3, 29), (2025, 3, 30), (2025, 3, 31), (2025, 10, 25), (2025, 10, 26), (2025, 10, 27)] {
        let midnight = chrono::Utc.with_ymd_and_hms(y, m, d, 0, 0, 0).unwrap().timestamp_millis();
        for _ in 0..60 {
            let ms = midnight - 3 * 3_600_000 + rng.random_range(0..30 * 3_600_000);
            let amount = Decimal::new(rng.random_range(1..100_000), 2);
            events.push(Ev {
                product: rng.random_range(1..4),
                category: "Books",
                sale: Some((amount, 1)),
                rating: None,
                ms,
            });
        }
    }
    post(&app, &events.iter().map(|e| e.json("P")).collect::<Vec<_>>()).await;

    let berlin: Tz = "Europe/Berlin".parse().unwrap();
    let kolkata: Tz = "Asia/Kolkata".parse().unwrap();
    let utc = Tz::UTC;
    let ms = |y, m, d| chrono::Utc.with_ymd_and_hms(y, m, d, 0, 0, 0).unwrap().timestamp_millis();
    let now_s = now / 1000;
    let mut zeros = 0;
    let mut cases: Vec<(String, &str, Tz)> = vec![
        (format!("from={}&to={}", ms(2025, 3, 27), ms(2025, 4, 2)), "1d", berlin),
        (format!("from={}&to={}", ms(2025, 10, 24), ms(2025, 10, 29)), "1d", berlin),
        (format!("from={}&to={}", ms(2025, 10, 25), ms(2025, 10, 27)), "1h", berlin),
        (format!("from={}&to={}", ms(2025, 3, 29), ms(2025, 3, 31)), "1h", berlin),
        (format!("from={}&to={}", ms(2025, 3, 1), ms(2025, 11, 30)), "1mo", berlin),
        (format!("from={}&to={}", ms(2025, 3, 1), ms(2025, 11, 30)), "1w", berlin),
        ("window=1h".into(), "1m", utc),
        ("window=1h".into(), "5m", kolkata),
        ("window=2h".into(), "15m", berlin),
        ("window=3d".into(), "1h", kolkata),
        ("window=7d".into(), "1d", berlin),
    ];
    // A window ending before now (so nothing moves while the two backends answer).
    cases.push((format!("from={}&to={}", (now_s - 5400) * 1000, (now_s - 1800) * 1000), "1m", utc));
    for (w, step, tz) in &cases {
        for product in [None, Some(2)] {
            let sel = product.map(|p| format!("dim=product_id&value={p}&")).unwrap_or_default();
            let path = format!("/api/v1/metrics/sales_amount/series?{sel}{w}&step={step}&tz={}", tz.name());
            zeros += check_series(&app, &events, &path, step, *tz, product).await;
        }
    }
    assert!(zeros > 50, "the series should have had empty buckets; {zeros}");

    // The DST days have 23 and 25 hours: their points are that far apart.
    let path = format!(
        "/api/v1/metrics/sales_amount/series?from={}&to={}&step=1d&tz=Europe/Berlin",
        ms(2025, 10, 25),
        ms(2025, 10, 28)
    );
    let (_, v, _) = get_exact(&app, &path).await;
    let ts: Vec<i64> = v["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| chrono::DateTime::parse_from_rfc3339(p["t"].as_str().unwrap()).unwrap().timestamp())
        .collect();
    let lengths: Vec<i64> = ts.windows(2).map(|w| (w[1] - w[0]) / 3600).collect();
    assert!(lengths.contains(&25), "{lengths:?} {v}");
    assert_eq!(v["step"], "1d");
    assert_eq!(v["step_seconds"], Value::Null);
    assert_eq!(v["tz"], "Europe/Berlin");

    for (path, status) in [
        ("/api/v1/metrics/sales_amount/series?window=1h&step=7m", 400),
        ("/api/v1/metrics/sales_amount/series?window=1h&tz=Mars/Olympus", 400),
        ("/api/v1/metrics/sales_amount/series?window=30d&step=1s", 400),
        ("/api/v1/metrics/sales_amount/series?window=10y&step=1m", 400),
    ] {
        let (s, v, _) = get_exact(&app, path).await;
        assert_eq!(s, status, "{path}: {v}");
        assert!(v["message"].is_string(), "{path}: {v}");
    }
    // Days of Asia/Kolkata start at :30 UTC; a year back only hourly buckets are kept.
    let path = format!(
        "/api/v1/metrics/sales_amount/series?from={}&to={}&step=1d&tz=Asia/Kolkata",
        ms(2025, 10, 20),
        ms(2025, 10, 30)
    );
    for (path, status) in [(path.as_str(), 400)] {
        let (s, v, _) = get_exact(&app, path).await;
        assert_eq!(s, status, "{path}: {v}");
        assert!(v["message"].is_string(), "{path}: {v}");
    }
    app.stop().await;
}

async fn dimension_values_carry_their_latest_label(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let now = chrono::Utc::now().timestamp_millis();
    let sale = |p: u64, name: &str| {
        Ev { product: p, category: "Books", sale: Some((Decimal::ONE, 1)), rating: None, ms: now - 1000 }.json(name)
    };
    post(&app, &(1..=30).map(|p| sale(p, &format!("Old {p}"))).collect::<Vec<_>>()).await;
    // A later event renames product 7; one without a name keeps the label.
    post(&app, &[sale(7, "Lamp, renamed")]).await;
    let mut unnamed = sale(8, "");
    unnamed.as_object_mut().unwrap().remove("name_of_product");
    post(&app, &[unnamed]).await;

    let (s, v) = app.get("/api/v1/dimensions/product_id/values?limit=1000").await;
    assert_eq!(s.as_u16(), 200, "{v}");
    let values = v["values"].as_array().unwrap();
    assert_eq!(values.len(), 30, "{v}");
    let label = |p: &str| values.iter().find(|x| x["value"] == p).unwrap()["label"].clone();
    assert_eq!(label("7"), "Lamp, renamed");
    assert_eq!(label("8"), "Old 8");
    assert_eq!(label("30"), "Old 30");

    let (_, v) = app.get("/api/v1/dimensions/product_id/values?prefix=1&limit=1000").await;
    let got: Vec<&str> = v["values"].as_array().unwrap().iter().map(|x| x["value"].as_str().unwrap()).collect();
    let mut want: Vec<String> = (1..=30).map(|p: u64| p.to_string()).filter(|p| p.starts_with('1')).collect();
    want.sort();
    assert_eq!(got, want, "{v}");
    let (_, v) = app.get("/api/v1/dimensions/product_id/values?search=renamed").await;
    assert_eq!(v["values"], json!([{"value": "7", "label": "Lamp, renamed"}]));
    let (_, v) = app.get("/api/v1/dimensions/product_id/values?limit=3").await;
    assert_eq!(v["values"].as_array().unwrap().len(), 3, "{v}");
    let (_, v) = app.get("/api/v1/dimensions/category/values").await;
    assert_eq!(v["values"], json!([{"value": "Books", "label": null}]));

    let (s, _) = app.get("/api/v1/dimensions/colour/values").await;
    assert_eq!(s.as_u16(), 404);
    let (s, _) = app.get("/api/v1/dimensions/product_id/values?limit=5000").await;
    assert_eq!(s.as_u16(), 400);
    // The label survives a restart (it is stored, not only cached).
    let store = app.stop().await;
    let app = TestApp::spawn_on(store, jetstream::config::Settings::default()).await;
    let (_, v) = app.get("/api/v1/dimensions/product_id/values?search=renamed").await;
    assert_eq!(v["values"], json!([{"value": "7", "label": "Lamp, renamed"}]));
    app.stop().await;
}

async fn several_queries_answer_in_one_round_trip(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let now = chrono::Utc::now().timestamp_millis();
    let events = generate(300, 18, now);
    post(&app, &events.iter().map(|e| e.json("P")).collect::<Vec<_>>()).await;
    let to = now / 1000 - 60;
    let paths = [
        format!("/api/v1/metrics/sales_amount?dim=product_id&value=3&from={}&to={}", (to - 3600) * 1000, to * 1000),
        format!("/api/v1/metrics/sales_amount/top?dim=product_id&from={}&to={}&limit=3", (to - 3600) * 1000, to * 1000),
        format!("/api/v1/metrics/sales_amount/series?from={}&to={}&step=15m", (to - 3600) * 1000, to * 1000),
        "/api/v1/dimensions/product_id/values?limit=5".to_string(),
        "/api/v1/metrics/nope?window=1h".to_string(),
        "/api/product/sale/3".to_string(),
    ];
    let body = json!({"queries": paths.iter().map(|p| json!({"path": p})).collect::<Vec<_>>()});
    let r = app.client.post(app.url("/api/v1/query")).bearer_auth(&app.token).json(&body).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let text = r.text().await.unwrap();
    let all = Exact::parse(&text);
    let results = all.get("results").items();
    assert_eq!(results.len(), paths.len(), "{text}");
    for (path, got) in paths.iter().zip(results) {
        let (status, _, alone) = get_exact(&app, path).await;
        assert_eq!(got.get("status"), &Exact::Num(status.to_string()), "{path}");
        if path.contains("/product/sale") {
            // A trailing window: it may have moved on by a second between the two requests.
            assert_eq!(got.get("body").get("count"), alone.get("count"), "{path}");
        } else {
            assert_eq!(got.get("body"), &alone, "{path}");
        }
    }

    // A read token is needed, as for each GET; a bad list is a 400 with a reason.
    let ingest_only = app.token_with(&[jetstream::auth::Scope::Ingest]).await;
    let r = app.client.post(app.url("/api/v1/query")).bearer_auth(&ingest_only).json(&body).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let r = app.client.post(app.url("/api/v1/query")).json(&body).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let too_many = json!({"queries": vec![json!({"path": "/api/product/sale/1"}); 33]});
    for bad in [
        too_many,
        json!({"queries": [{"path": "/api/v1/events"}]}),
        json!({"queries": [{"path": "/api/v1/dead-letters"}]}),
        json!({"queries": [{"path": "/api/v1/stream?metric=events"}]}),
        json!({"queries": [{"path": "http://elsewhere/api/v1/metrics"}]}),
        json!({"queries": "all"}),
        json!({"queries": [{"path": "/api/v1/metrics", "extra": 1}]}),
    ] {
        let r = app.client.post(app.url("/api/v1/query")).bearer_auth(&app.token).json(&bad).send().await.unwrap();
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap();
        assert_eq!(status, 400, "{bad}: {v}");
        assert!(v["message"].is_string(), "{v}");
    }
    app.stop().await;
}

both_backends!(
    top_n_ranks_exactly_with_ties_by_value,
    series_are_zero_filled_in_calendar_steps_of_a_time_zone,
    dimension_values_carry_their_latest_label,
    several_queries_answer_in_one_round_trip
);
