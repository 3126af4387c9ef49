//! The Kafka benchmark's reference: a bare rdkafka consumer that reads a topic from the beginning
//! and does nothing with the records (no parsing, no store), with the client settings Jetstream's
//! consumer uses. `bench/kafka.sh` runs it on the same topic and broker as Jetstream, in the same
//! run, so "Jetstream ÷ bare" says what the pipeline costs on top of fetching.
//!
//! ```text
//! cargo build --release --example bare_consumer
//! target/release/examples/bare_consumer BROKER TOPIC EXPECTED_RECORDS
//! ```
//!
//! Prints one JSON line: records, seconds (from the first record to the last, and from start),
//! records/s. Exits 1 when the records do not all arrive within 600 s.

use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, broker, topic, expected] = args.as_slice() else {
        eprintln!("usage: bare_consumer BROKER TOPIC EXPECTED_RECORDS");
        std::process::exit(2);
    };
    let expected: u64 = expected.parse().expect("EXPECTED_RECORDS is a number");
    let group = format!("bare-{}", std::process::id());
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("socket.nagle.disable", "true")
        .set("partition.assignment.strategy", "range")
        .set("fetch.wait.max.ms", "20")
        .set("queued.max.messages.kbytes", "32768")
        .create()
        .expect("a consumer");
    consumer.subscribe(&[topic.as_str()]).expect("subscribed");
    let start = Instant::now();
    let mut first = None;
    let (mut records, mut bytes) = (0u64, 0u64);
    while records < expected {
        if start.elapsed() > Duration::from_secs(600) {
            eprintln!("timed out: {records} of {expected} records after 600 s");
            std::process::exit(1);
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                first.get_or_insert_with(Instant::now);
                records += 1;
                bytes += rdkafka::Message::payload(&m).map_or(0, |p| p.len() as u64);
            }
            Some(Err(e)) => eprintln!("consumer error: {e}"),
            None => {}
        }
    }
    let total = start.elapsed().as_secs_f64();
    let steady = first.map_or(total, |f| f.elapsed().as_secs_f64());
    println!(
        "{{\"records\":{records},\"bytes\":{bytes},\"seconds\":{total:.3},\"steady_seconds\":{steady:.3},\
         \"records_per_s\":{:.0},\"steady_records_per_s\":{:.0}}}",
        records as f64 / total,
        records as f64 / steady.max(1e-9)
    );
}
