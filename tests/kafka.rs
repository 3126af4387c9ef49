//! Kafka ingestion against a real broker (tansu, started per test on a free loopback port):
//! exactly-once totals through rebalances, a SIGKILLed consumer, poison records and a broker
//! restart. Every test is bounded (each wait has a deadline).
//!
//! tansu 0.6 does not hand a SIGKILLed member's partitions to the surviving members until another
//! member joins, so the kill test kills the consumer and restarts it (as a supervisor would),
//! after the dead member's session has expired (a member joining before that gets nothing).

mod common;
#[path = "common/kafka.rs"]
mod kafka_harness;

use std::future::Future;
use std::time::{Duration, Instant};

use common::{Backend, ServerProcess, TestApp, TestStore, json_of, run_cli};
use jetstream::auth::Scope;
use jetstream::config::Settings;
use kafka_harness::{Broker, produce, topic_name};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::FutureProducer;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use reqwest::StatusCode;
use rust_decimal::Decimal;
use serde_json::{Value, json};

/// Longest any single wait in these tests may take.
const WAIT: Duration = Duration::from_secs(45);
/// The consumer's `session.timeout.ms`.
const SESSION_TIMEOUT: Duration = Duration::from_secs(10);

fn kafka_settings(broker: &Broker, topic: &str) -> Settings {
    let mut s = Settings::default();
    s.kafka.brokers = broker.addr.clone();
    s.kafka.topic = topic.to_string();
    s.kafka.group = format!("group-{topic}");
    s
}

/// Polls `check` until it returns `Some`, or panics with `what` after [`WAIT`].
async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {WAIT:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A sale of `product` for `cents` (exact decimal text, e.g. "12.07").
fn sale(product: u32, cents: i64) -> Value {
    json!({"event_name": "productSold", "product_id": product, "no_of_units": 1,
           "amount": Decimal::new(cents, 2).to_string()})
}

/// The stream the multi-consumer tests produce: event `i` sells product 40..48 for a varying,
/// exact amount. Returns (product, cents, event).
fn stream_event(i: u32) -> (u32, i64, Value) {
    let product = 40 + i % 8;
    let cents = 100 + i64::from(i % 97) * 3 + i64::from(i % 7);
    (product, cents, sale(product, cents))
}

/// Expected (count, cents) per product for events `0..n` of `stream_event`.
fn expected_totals(n: u32) -> Vec<(u32, i64, i64)> {
    (40..48)
        .map(|p| {
            let (count, cents) = (0..n)
                .map(stream_event)
                .filter(|(q, _, _)| *q == p)
                .fold((0, 0), |(c, s), (_, cents, _)| (c + 1, s + cents));
            (p, count, cents)
        })
        .collect()
}

async fn produce_stream(producer: &FutureProducer, topic: &str, range: std::ops::Range<u32>) {
    // Concurrent sends (the producer batches them); each is awaited for its acknowledgement.
    let sends = range.map(|i| {
        let (product, _, e) = stream_event(i);
        async move {
            let payload = e.to_string();
            produce(producer, topic, Some(&product.to_string()), payload.as_bytes()).await
        }
    });
    let acked = futures::future::join_all(sends).await;
    let distinct: std::collections::HashSet<_> = acked.iter().collect();
    assert_eq!(distinct.len(), acked.len(), "the broker acknowledged two records at one offset");
}

/// A client for a server process, with a read+admin token created through the CLI.
struct Api {
    client: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    fn for_process(server: &ServerProcess, token: &str) -> Self {
        Self { client: reqwest::Client::new(), base: server.base.clone(), token: token.to_string() }
    }

    fn for_app(app: &TestApp) -> Self {
        Self { client: app.client.clone(), base: app.base.clone(), token: app.token.clone() }
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let r = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        match r {
            Ok(r) => json_of(r).await,
            Err(e) => panic!("GET {path}: {e}"),
        }
    }

    /// (count, total) of a product's sales in the last hour; (0, 0) when it is unknown.
    async fn sales(&self, product: u32) -> (i64, Decimal) {
        let (s, body) = self.get(&format!("/api/product/sale/{product}")).await;
        if s == StatusCode::NOT_FOUND {
            return (0, Decimal::ZERO);
        }
        assert_eq!(s, 200, "{body}");
        let total: Decimal = body["total"].to_string().parse().expect("total is a decimal");
        (body["count"].as_i64().expect("count"), total)
    }

    /// Waits until every product's sales equal the expected totals exactly, and stay so.
    async fn expect_totals(&self, expected: &[(u32, i64, i64)]) {
        let deadline = Instant::now() + WAIT;
        loop {
            let mut wrong = Vec::new();
            for &(p, count, cents) in expected {
                let got = self.sales(p).await;
                if got != (count, Decimal::new(cents, 2)) {
                    wrong.push(format!("product {p}: {got:?}, expected ({count}, {})", Decimal::new(cents, 2)));
                }
            }
            if wrong.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                let (_, lag) = self.get("/api/v1/admin/kafka/lag").await;
                let (_, ready) = self.readiness().await;
                panic!("timed out after {WAIT:?} waiting for exact totals: {wrong:#?}\nlag: {lag}\nreadyz: {ready}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Nothing more arrives later (no double count from a straggler).
        tokio::time::sleep(Duration::from_millis(1500)).await;
        for &(p, count, cents) in expected {
            assert_eq!(self.sales(p).await, (count, Decimal::new(cents, 2)), "product {p}");
        }
    }

    async fn readiness(&self) -> (StatusCode, Value) {
        self.get("/readyz").await
    }
}

/// A `jetstream serve` process consuming `topic` in the topic's own consumer group.
fn start_member(store: &TestStore, broker: &Broker, topic: &str) -> ServerProcess {
    let group = format!("group-{topic}");
    ServerProcess::start(&[
        "serve",
        "--store",
        &store.url,
        "--kafka-brokers",
        &broker.addr,
        "--kafka-topic",
        topic,
        "--kafka-group",
        &group,
    ])
}

fn token_for(store_url: &str) -> String {
    let name = format!("kafka-test-{}", common::rand_suffix());
    let (code, out, err) =
        run_cli(&["token", "create", "--store", store_url, "--name", &name, "--scope", "read,admin"]);
    assert_eq!(code, 0, "token create: {err}");
    out.trim().to_string()
}

/// The partitions a server reports as its own in `/readyz` (`… assigned 0,2`).
async fn assigned(api: &Api) -> Option<Vec<i32>> {
    let (_, body) = api.readiness().await;
    let detail = body["kafka"]["detail"].as_str()?;
    let list = detail.rsplit_once("assigned ")?.1;
    if list == "none" {
        return Some(Vec::new());
    }
    list.split(',').map(|p| p.trim().parse().ok()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_original_designs_events_over_kafka_answer_both_seed_endpoints() {
    let broker = Broker::start();
    let topic = topic_name("seed");
    broker.create_topic(&topic, 3).await;
    let app = TestApp::spawn_with(Backend::Sqlite, kafka_settings(&broker, &topic)).await;
    let api = Api::for_app(&app);
    let producer = broker.producer();
    // The README's four tinker commands (event_name, numeric amounts)…
    let readme = [
        json!({"event_name": "productRated", "name_of_product": "Product X", "product_id": 1, "rating": 4, "category": "Software"}),
        json!({"event_name": "productRated", "name_of_product": "Product X", "product_id": 1, "rating": 5, "category": "Software"}),
        json!({"event_name": "productSold", "name_of_product": "Product A", "product_id": 3, "no_of_units": 20, "amount": 2000}),
        json!({"event_name": "productSold", "name_of_product": "Product A", "product_id": 3, "no_of_units": 10, "amount": 1000}),
        // …and the design's two event structures (`event`, a string amount).
        json!({"event_name": "productSold", "name_of_product": "product A", "product_id": 233, "no_of_units": 10, "amount": "2500"}),
        json!({"event": "productRated", "name_of_product": "product A", "product_id": 12, "rating": 4, "category": "F"}),
    ];
    for e in &readme {
        let key = e["product_id"].to_string();
        produce(&producer, &topic, Some(&key), e.to_string().as_bytes()).await;
    }
    wait_for("the sale of product 3", || async {
        let (s, body) = app.get("/api/product/sale/3").await;
        (s == 200 && body["total"] == json!(3000)).then_some(())
    })
    .await;
    let (s, body) = app.get("/api/product/rating/1").await;
    assert_eq!((s.as_u16(), &body["average_rating"]), (200, &json!(4.5)), "{body}");
    wait_for("the design's own event shapes", || async {
        let (_, sold) = app.get("/api/product/sale/233").await;
        let (_, rated) = app.get("/api/product/rating/12").await;
        (sold["total"] == json!(2500) && rated["average_rating"] == json!(4)).then_some(())
    })
    .await;
    assert_eq!(api.sales(3).await.0, 2, "each record counted once");

    // The raw events keep the record's partition and offset.
    let (s, raw) = app.get("/api/v1/events/raw?name=productSold").await;
    assert_eq!(s, 200, "{raw}");
    let lines = raw["events"].as_array().expect("raw events");
    assert_eq!(lines.len(), 3, "{raw}");
    for l in lines {
        assert_eq!(l["src"], json!(format!("kafka:{topic}")), "{l}");
        assert!(l["p"].is_i64() && l["o"].is_i64() && l["k"].is_string(), "{l}");
    }

    // /readyz reports the consumer; lag is served to admin tokens only, and reaches 0.
    let (s, ready) = api.readiness().await;
    assert_eq!((s.as_u16(), &ready["kafka"]["ok"]), (200, &json!(true)), "{ready}");
    let read_only = app.token_with(&[Scope::Read]).await;
    let (s, _) = app.get_as("/api/v1/admin/kafka/lag", Some(&read_only)).await;
    assert_eq!(s, 403);
    let lag = wait_for("zero lag", || async {
        let (s, lag) = app.get("/api/v1/admin/kafka/lag").await;
        (s == 200 && lag["total_lag"] == json!(0)).then_some(lag)
    })
    .await;
    let parts = lag["partitions"].as_array().expect("partitions");
    assert_eq!(parts.len(), 3, "{lag}");
    let high: i64 = parts.iter().map(|p| p["high_watermark"].as_i64().expect("high")).sum();
    assert_eq!(high, readme.len() as i64, "{lag}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_consumers_in_one_group_share_partitions_and_count_every_event_once() {
    const N: u32 = 4000;
    let broker = Broker::start();
    let topic = topic_name("share");
    broker.create_topic(&topic, 4).await;
    let store = TestStore::fresh(Backend::Sqlite).await;
    let token = token_for(&store.url);
    let a = start_member(&store, &broker, &topic);
    let api_a = Api::for_process(&a, &token);
    wait_for("the first consumer to own all 4 partitions", || async {
        (assigned(&api_a).await? == [0, 1, 2, 3]).then_some(())
    })
    .await;
    let producer = broker.producer();
    produce_stream(&producer, &topic, 0..N / 2).await;

    // A second member joins mid-stream: a rebalance while records flow.
    let b = start_member(&store, &broker, &topic);
    let api_b = Api::for_process(&b, &token);
    let (mine_a, mine_b) = wait_for("the two consumers to split the partitions", || async {
        let (pa, pb) = (assigned(&api_a).await?, assigned(&api_b).await?);
        let mut all: Vec<i32> = pa.iter().chain(&pb).copied().collect();
        all.sort_unstable();
        (!pa.is_empty() && !pb.is_empty() && all == [0, 1, 2, 3]).then_some((pa, pb))
    })
    .await;
    produce_stream(&producer, &topic, N / 2..N).await;
    api_a.expect_totals(&expected_totals(N)).await;
    api_b.expect_totals(&expected_totals(N)).await;
    eprintln!("partitions split {mine_a:?} / {mine_b:?}");
    let (_, dead) = api_a.get("/api/v1/dead-letters").await;
    assert_eq!(dead["dead_letters"].as_array().map(Vec::len), Some(0), "{dead}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_killed_mid_stream_and_restarted_ends_with_exact_totals() {
    const N: u32 = 6000;
    let broker = Broker::start();
    let topic = topic_name("kill");
    broker.create_topic(&topic, 3).await;
    let store = TestStore::fresh(Backend::Sqlite).await;
    let token = token_for(&store.url);
    let mut first = start_member(&store, &broker, &topic);
    let api = Api::for_process(&first, &token);
    let producer = broker.producer();
    produce_stream(&producer, &topic, 0..N / 2).await;
    // Kill it while it is part-way through (some, not all, committed).
    wait_for("the consumer to commit part of the stream", || async {
        let (count, _) = api.sales(40).await;
        (count > 0).then_some(())
    })
    .await;
    first.kill();
    produce_stream(&producer, &topic, N / 2..N).await;
    // tansu 0.6 gives a member that joins while the dead one is still in the group an empty
    // assignment; once the dead member's session (10 s) has expired, the restarted consumer gets
    // every partition. Real Kafka rebalances either way.
    tokio::time::sleep(SESSION_TIMEOUT + Duration::from_secs(1)).await;
    let second = start_member(&store, &broker, &topic);
    let api = Api::for_process(&second, &token);
    api.expect_totals(&expected_totals(N)).await;
}

/// Regression: tansu 0.6 answers a fetch at an offset inside a record batch with the *next*
/// batch. A consumer resuming from a stored offset in the middle of a batch must still count
/// every record from that offset on, and none before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_from_a_stored_offset_inside_a_broker_batch_counts_exactly_the_rest() {
    let broker = Broker::start();
    let topic = topic_name("midbatch");
    broker.create_topic(&topic, 1).await;
    // 200 records sent together: the producer packs them into a few large batches.
    let producer = broker.producer();
    let sends = (0..200).map(|i| {
        let payload = sale(5, 100 + i).to_string();
        let producer = &producer;
        let topic = &topic;
        async move { produce(producer, topic, Some("5"), payload.as_bytes()).await }
    });
    futures::future::join_all(sends).await;

    // The store already holds offset 137 for the partition (as if a consumer had stopped there).
    let store = TestStore::fresh(Backend::Sqlite).await;
    {
        let s = jetstream::storage::open(&store.url).await.expect("store");
        let advance = jetstream::storage::OffsetAdvance {
            source: format!("kafka:{topic}"),
            partition: 0,
            expected: None,
            next: 137,
        };
        s.commit(jetstream::storage::WriteBatch { offsets: vec![advance], ..Default::default() })
            .await
            .expect("offset stored");
        s.close().await.expect("closed");
    }
    let app = TestApp::spawn_on(store, kafka_settings(&broker, &topic)).await;
    let expected_cents: i64 = (137..200).map(|i| 100 + i).sum();
    Api::for_app(&app).expect_totals(&[(5, 63, expected_cents)]).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_records_are_dead_lettered_and_the_events_after_them_are_counted() {
    let broker = Broker::start();
    let topic = topic_name("poison");
    let dlt = format!("{topic}-dead");
    broker.create_topic(&topic, 1).await;
    broker.create_topic(&dlt, 1).await;
    let mut settings = kafka_settings(&broker, &topic);
    settings.kafka.max_record_bytes = 1024;
    settings.kafka.dead_letter_topic = Some(dlt.clone());
    let app = TestApp::spawn_with(Backend::Sqlite, settings).await;
    let producer = broker.producer();
    let oversized = json!({"event_name": "productSold", "product_id": 9, "no_of_units": 1, "amount": "1",
                           "padding": "x".repeat(2000)})
    .to_string();
    let records: Vec<(&str, Vec<u8>)> = vec![
        ("valid", sale(9, 100).to_string().into_bytes()),
        ("not UTF-8", vec![0xff, 0xfe, b'{', 0xc3]),
        ("not JSON", b"{\"event_name\": \"productSold\", oops".to_vec()),
        ("invalid event", json!({"event": "productRated", "product_id": 9, "rating": 9}).to_string().into_bytes()),
        ("oversized", oversized.into_bytes()),
        ("valid", sale(9, 250).to_string().into_bytes()),
        ("valid", sale(9, 5).to_string().into_bytes()),
    ];
    let mut offsets = Vec::new();
    for (_, payload) in &records {
        offsets.push(produce(&producer, &topic, Some("9"), payload).await.1);
    }
    wait_for("the events after the poison records", || async {
        let (_, body) = app.get("/api/product/sale/9").await;
        (body["count"] == json!(3)).then_some(())
    })
    .await;
    let (_, body) = app.get("/api/product/sale/9").await;
    assert_eq!(body["total"], json!(3.55), "{body}");

    let (s, dead) = app.get("/api/v1/dead-letters").await;
    assert_eq!(s, 200, "{dead}");
    let letters = dead["dead_letters"].as_array().expect("dead letters");
    assert_eq!(letters.len(), 4, "{dead}");
    // Newest first: oversized, invalid event, not JSON, not UTF-8.
    let expected = [
        (offsets[4], "over the limit of 1024"),
        (offsets[3], "outside the allowed range"),
        (offsets[2], "not valid JSON"),
        (offsets[1], "not valid UTF-8"),
    ];
    for (l, (offset, reason)) in letters.iter().zip(expected) {
        assert_eq!(l["topic"], json!(topic), "{l}");
        assert_eq!(l["partition"], json!(0), "{l}");
        assert_eq!(l["offset"], json!(offset), "{l}");
        assert!(l["reason"].as_str().is_some_and(|r| r.contains(reason)), "{l} should say {reason:?}");
    }

    // They are also copied to the dead-letter topic, with their reason and origin in headers.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .set("group.id", format!("dlt-reader-{topic}"))
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&dlt, 0, Offset::Beginning).expect("partition");
    consumer.assign(&tpl).expect("assign");
    let deadline = Instant::now() + WAIT;
    let mut copied = Vec::new();
    while copied.len() < 4 && Instant::now() < deadline {
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            let m = m.expect("dead-letter record");
            let h = m.headers().expect("headers");
            let header = |name: &str| {
                h.iter()
                    .find(|x| x.key == name)
                    .and_then(|x| x.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default()
            };
            copied.push((header("jetstream-offset"), header("jetstream-reason")));
        }
    }
    assert_eq!(copied.len(), 4, "dead letters copied to {dlt}: {copied:?}");
    assert_eq!(copied[0].0, offsets[1].to_string(), "{copied:?}");
    assert!(copied[0].1.contains("UTF-8"), "{copied:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_mid_stream_loses_nothing_and_readyz_reports_it() {
    const N: u32 = 3000;
    let mut broker = Broker::start_persistent();
    let topic = topic_name("restart");
    broker.create_topic(&topic, 2).await;
    let app = TestApp::spawn_with(Backend::Sqlite, kafka_settings(&broker, &topic)).await;
    let api = Api::for_app(&app);
    {
        let producer = broker.producer();
        produce_stream(&producer, &topic, 0..N / 2).await;
    }
    wait_for("part of the stream to be counted", || async { (api.sales(40).await.0 > 0).then_some(()) }).await;

    broker.kill();
    let (s, ready) = wait_for("/readyz to report the consumer unhealthy", || async {
        let (s, body) = api.readiness().await;
        (s == StatusCode::SERVICE_UNAVAILABLE).then_some((s, body))
    })
    .await;
    assert_eq!(ready["kafka"]["ok"], json!(false), "{s} {ready}");
    // The API keeps serving from what it has.
    let (s, _) = app.get("/api/product/sale/40").await;
    assert_eq!(s, 200);

    broker.restart();
    let producer = broker.producer();
    produce_stream(&producer, &topic, N / 2..N).await;
    api.expect_totals(&expected_totals(N)).await;
    wait_for("/readyz to recover", || async { (api.readiness().await.0 == 200).then_some(()) }).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_at_start_up_is_retried_and_consumption_resumes() {
    let mut broker = Broker::start();
    broker.kill();
    let topic = topic_name("late");
    let app = TestApp::spawn_with(Backend::Sqlite, kafka_settings(&broker, &topic)).await;
    let api = Api::for_app(&app);
    // Serving, but not ready.
    let (s, _) = app.get("/api/product/sale/40").await;
    assert_eq!(s, 404);
    let (s, ready) = api.readiness().await;
    assert_eq!((s, &ready["kafka"]["ok"]), (StatusCode::SERVICE_UNAVAILABLE, &json!(false)), "{ready}");
    let s = reqwest::get(app.url("/healthz")).await.expect("healthz").status();
    assert_eq!(s, 200, "/healthz does not depend on Kafka");

    broker.restart();
    broker.create_topic(&topic, 2).await;
    let producer = broker.producer();
    produce_stream(&producer, &topic, 0..200).await;
    api.expect_totals(&expected_totals(200)).await;
    wait_for("/readyz to report the consumer healthy", || async { (api.readiness().await.0 == 200).then_some(()) })
        .await;
    app.stop().await;
}

/// `jetstream send` and `jetstream consume`, the binaries' own Kafka commands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_publishes_events_that_consume_counts() {
    let broker = Broker::start();
    let topic = topic_name("cli");
    broker.create_topic(&topic, 2).await;
    let events = [sale(77, 1999).to_string(), sale(77, 1).to_string(), "not json".to_string()];
    let mut args = vec!["send", "--brokers", &broker.addr, "--topic", &topic];
    args.extend(events.iter().map(String::as_str));
    let (code, out, err) = run_cli(&args);
    assert_eq!(code, 1, "one input was not JSON: {out} {err}");
    assert!(out.contains("sent 2 events"), "{out}");
    assert!(err.contains("event 3: not JSON"), "{err}");

    let store = TestStore::fresh(Backend::Sqlite).await;
    let mut consumer = std::process::Command::new(common::jetstream_bin())
        .args(["consume", "--store", &store.url, "--kafka-brokers", &broker.addr, "--kafka-topic", &topic])
        .env("JETSTREAM_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("jetstream consume starts");
    // The consumer-only process stops gracefully on SIGTERM after committing; then the store
    // holds both events.
    let store_offsets = || async {
        let store = jetstream::storage::open(&store.url).await.ok()?;
        let offsets = store.stored_offsets(&format!("kafka:{topic}")).await.ok()?;
        store.close().await.ok()?;
        (offsets.iter().map(|(_, o)| o).sum::<i64>() == 2).then_some(())
    };
    wait_for("consume to commit both records", store_offsets).await;
    let pid = consumer.id().to_string();
    let killed = std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("kill runs");
    assert!(killed.success());
    let status = consumer.wait().expect("consume exits");
    assert!(status.success(), "consume exits 0 on SIGTERM: {status}");
    let mut out = String::new();
    std::io::Read::read_to_string(&mut consumer.stdout.take().expect("stdout"), &mut out).expect("stdout");
    assert!(out.contains(&format!("consuming topic {topic}")), "{out}");

    let app = TestApp::spawn_on(store, Settings::default()).await;
    let (_, body) = app.get("/api/product/sale/77").await;
    assert_eq!((&body["total"], &body["count"]), (&json!(20), &json!(2)), "{body}");
    app.stop().await;
}
