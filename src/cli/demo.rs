//! `jetstream demo`: the server with the embedded store, tokens for the user, and a simulator that
//! sends realistic `productSold` / `productRated` traffic the way a producer would: posted to the
//! server's own HTTP endpoint, or — with `--kafka-brokers` — produced to the Kafka topic that the
//! server consumes, so a newcomer sees live numbers move.

use std::time::Duration;

use rand::Rng;
use rand::seq::IndexedRandom;
use serde_json::{Value, json};

use super::args::DemoArgs;
use super::error::UsageError;
use super::usage::{announce, load_settings_with_kafka};
use crate::app::{Application, shutdown_signal};
use crate::auth::{Scope, create_token};
use crate::clock::now_ms;
use crate::ingest::kafka::{EventProducer, ensure_topic, event_key};

/// The demo's own store, used unless `--store` names another: its tokens and simulated data
/// stay out of the store `serve` uses by default.
const DEMO_STORE: &str = "sqlite://./data/demo.db";
/// The demo's tokens expire: they are printed on the terminal and written on every run.
const DEMO_TOKEN_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// Partitions of the topic the demo creates when it is missing.
const DEMO_PARTITIONS: i32 = 3;

/// The simulated catalogue: id, name, category, unit price, typical rating.
const PRODUCTS: &[(u32, &str, &str, &str, f64)] = &[
    (1, "Product X", "Software", "49.00", 4.4),
    (2, "Route planner", "Software", "129.00", 3.9),
    (3, "Product A", "Hardware", "100.00", 4.1),
    (4, "Pallet scanner", "Hardware", "349.99", 3.6),
    (5, "Fleet tracker", "Hardware", "89.50", 4.7),
    (6, "Same-day delivery", "Service", "12.99", 4.2),
    (7, "Cold-chain shipping", "Service", "45.25", 3.3),
    (8, "Insurance add-on", "Service", "4.99", 2.8),
];

pub async fn run(mut a: DemoArgs) -> anyhow::Result<()> {
    // The demo shares serve's options; these two make no sense for it, so say so, not ignore them.
    if a.serve.no_consume || a.serve.tls_cert.is_some() {
        return Err(UsageError(
            "demo takes neither --no-consume nor --tls-cert/--tls-key: use `serve` for those".into(),
        )
        .into());
    }
    if a.serve.store.store == super::args::DEFAULT_STORE {
        a.serve.store.store = DEMO_STORE.to_string();
    }
    let settings = load_settings_with_kafka(&a.serve.store, &a.serve.kafka)?;
    crate::storage::StoreUrl::parse(&a.serve.store.store)?;
    let kafka = (!settings.kafka.brokers.is_empty()).then(|| settings.kafka.clone());
    if let Some(k) = &kafka {
        if ensure_topic(k, DEMO_PARTITIONS).await? {
            println!("created topic {} with {DEMO_PARTITIONS} partitions on {}", k.topic, k.brokers);
        }
    }
    let app = Application::build(settings, &a.serve.store.store, &a.serve.listen).await?;
    let addr = app.local_addr();
    let store = app.state().store.clone();
    let stamp = now_ms();
    let read =
        create_token(&*store, &format!("demo-read-{stamp}"), &[Scope::Read], Some(DEMO_TOKEN_LIFETIME), stamp).await?;
    let admin =
        create_token(&*store, &format!("demo-admin-{stamp}"), &[Scope::Admin], Some(DEMO_TOKEN_LIFETIME), stamp)
            .await?;
    let ingest =
        create_token(&*store, &format!("demo-ingest-{stamp}"), &[Scope::Ingest], Some(DEMO_TOKEN_LIFETIME), stamp)
            .await?;
    app.state().tokens.reload(&*store).await?;
    let stop = shutdown_signal();
    announce(&app);
    let base = format!("http://{addr}");
    let via = match &kafka {
        Some(k) => format!("produced to Kafka topic {} on {}, consumed", k.topic, k.brokers),
        None => "posted over HTTP".into(),
    };
    println!(
        "\nJetstream demo: simulating ~{rate} events/s ({via}) into {store_url}\n\n\
         Live dashboard: {base}/  (sign in with the read token)\n\n\
         read token:  {read}\nadmin token: {admin}\n\n\
         Try:\n  export TOKEN={read}\n\
         \x20 curl -s -H \"Authorization: Bearer $TOKEN\" {base}/api/product/sale/3       # sales in the last hour\n\
         \x20 curl -s -H \"Authorization: Bearer $TOKEN\" {base}/api/product/rating/1     # average rating\n\
         \x20 curl -s -H \"Authorization: Bearer $TOKEN\" '{base}/api/v1/metrics/sales_amount?dim=category&value=Hardware&window=15m'\n\
         \x20 curl -s -H \"Authorization: Bearer $TOKEN\" '{base}/api/v1/metrics/sales_units/series?dim=product_id&value=3&window=10m&step=minute'\n\
         \x20 curl -s -H \"Authorization: Bearer {admin}\" '{base}/api/v1/dead-letters?limit=3'\n\
         \x20 curl -s -H \"Authorization: Bearer {admin}\" {base}/api/v1/admin/kafka/lag          # with --kafka-brokers\n\n\
         Ctrl-C stops the demo (data stays in the store).\n",
        rate = a.rate,
        store_url = a.serve.store.store,
    );
    let sim = match kafka {
        Some(k) => {
            let producer = EventProducer::new(&k)?;
            tokio::spawn(simulate(a.rate, move |batch| {
                produce(&producer, batch);
                std::future::ready(())
            }))
        }
        None => {
            let client = reqwest::Client::new();
            tokio::spawn(simulate(a.rate, move |batch| post(client.clone(), base.clone(), ingest.clone(), batch)))
        }
    };
    // On Ctrl-C the simulator stops first, so that no post meets a server shutting down.
    let stop_sim = sim.abort_handle();
    let result = app
        .run_until(async move {
            stop.await;
            stop_sim.abort();
        })
        .await;
    sim.abort();
    result
}

/// Sends a batch every 100 ms at about `rate` events per second until aborted.
async fn simulate<F, Fut>(rate: u32, send: F)
where
    F: Fn(Vec<Value>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let per_tick = (rate as f64 / 10.0).max(0.0);
    let mut carry = 0.0;
    loop {
        tick.tick().await;
        carry += per_tick;
        let n = carry as usize;
        carry -= n as f64;
        if n == 0 {
            continue;
        }
        let batch: Vec<Value> = {
            let mut rng = rand::rng();
            (0..n).map(|_| simulated_event(&mut rng)).collect()
        };
        send(batch).await;
    }
}

async fn post(client: reqwest::Client, base: String, token: String, batch: Vec<Value>) {
    let sent = client
        .post(format!("{base}/api/v1/events"))
        .bearer_auth(&token)
        .json(&batch)
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    if let Err(e) = sent.and_then(|r| r.error_for_status()) {
        tracing::warn!(error = %e, "demo simulator post failed");
    }
}

/// Queues the batch on the producer (delivery is asynchronous; failures are logged).
fn produce(producer: &EventProducer, batch: Vec<Value>) {
    for event in batch {
        let key = event_key(&event, "product_id");
        if let Err(e) = producer.send(key.as_deref(), event.to_string().as_bytes()) {
            tracing::warn!(error = %e, "demo simulator produce failed");
        }
    }
}

/// One event in the shapes the original design used (both `event` and `event_name`, amounts as
/// strings and numbers), with an occasional invalid one so dead letters have something to show.
fn simulated_event(rng: &mut impl Rng) -> Value {
    let &(id, name, category, price, typical) = PRODUCTS.choose(rng).expect("PRODUCTS is not empty");
    if rng.random_bool(0.005) {
        return json!({"event": "productRated", "product_id": id, "rating": 7, "note": "out of range on purpose"});
    }
    if rng.random_bool(0.7) {
        let units: u32 = rng.random_range(1..=5);
        let unit: rust_decimal::Decimal = price.parse().expect("catalogue prices are decimals");
        let amount = (unit * rust_decimal::Decimal::from(units)).to_string();
        let amount =
            if rng.random_bool(0.5) { Value::String(amount) } else { json!(amount.parse::<f64>().unwrap_or(0.0)) };
        json!({"event_name": "productSold", "name_of_product": name, "product_id": id,
               "no_of_units": units, "amount": amount, "category": category})
    } else {
        let r = (typical + rng.random_range(-1.5..1.5f64)).round().clamp(1.0, 5.0) as u32;
        let key = if rng.random_bool(0.5) { "event" } else { "event_name" };
        json!({key: "productRated", "name_of_product": name, "product_id": id, "rating": r, "category": category})
    }
}
