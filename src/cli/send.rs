//! `jetstream send`: JSON events to a Kafka topic.

use std::io::BufRead as _;
use std::time::Duration;

use anyhow::Context as _;

use super::args::SendArgs;
use super::error::UsageError;

/// How often a long stdin stream reports its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// `jetstream send`: each event must be a JSON object; a line that is not is reported and
/// skipped (exit code 1 at the end), the rest are sent.
pub(super) async fn run(a: SendArgs) -> anyhow::Result<()> {
    use crate::ingest::kafka::{EventProducer, event_key};
    if a.brokers.trim().is_empty() || a.topic.trim().is_empty() {
        return Err(UsageError("--brokers and --topic must not be empty".into()).into());
    }
    let mut kafka = crate::config::Settings::load(a.config.as_deref())?.kafka;
    kafka.brokers = a.brokers.trim().to_string();
    kafka.topic = a.topic.trim().to_string();
    kafka.properties.merge_env(std::env::vars());
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let producer = EventProducer::new(&kafka)?;
        producer.check_reachable(a.timeout).map_err(|e| {
            anyhow::anyhow!(
                "cannot reach Kafka at {} within {} ({e}): is the broker running, and are --brokers and \
                 --topic right?",
                kafka.brokers,
                humantime::format_duration(a.timeout)
            )
        })?;
        let mut skipped = 0u64;
        let mut queued = 0u64;
        let mut one = |n: usize, text: &str| -> anyhow::Result<()> {
            let text = text.trim();
            if text.is_empty() {
                return Ok(());
            }
            match serde_json::from_str::<serde_json::Value>(text) {
                Ok(v) if v.is_object() => {
                    producer.send(event_key(&v, &a.key_field).as_deref(), text.as_bytes())?;
                    queued += 1;
                }
                Ok(_) => {
                    skipped += 1;
                    eprintln!("event {n}: not a JSON object; skipped");
                }
                Err(e) => {
                    skipped += 1;
                    eprintln!("event {n}: not JSON ({e}); skipped");
                }
            }
            Ok(())
        };
        if a.events.is_empty() {
            // A long stream shows it is moving (on stderr, so stdout stays the summary).
            let mut shown = std::time::Instant::now();
            for (i, line) in std::io::stdin().lock().lines().enumerate() {
                one(i + 1, &line.context("reading stdin")?)?;
                if shown.elapsed() >= PROGRESS_EVERY {
                    eprintln!("{} lines read from stdin…", i + 1);
                    shown = std::time::Instant::now();
                }
            }
        } else {
            for (i, e) in a.events.iter().enumerate() {
                one(i + 1, e)?;
            }
        }
        let d = producer.flush(Duration::from_secs(60)).context("waiting for the broker's acknowledgements")?;
        println!("sent {} events to topic {}", d.delivered, a.topic);
        if d.failed > 0 {
            anyhow::bail!("{} of {queued} events were not delivered: {}", d.failed, d.first_error.unwrap_or_default());
        }
        if skipped > 0 {
            anyhow::bail!("{skipped} inputs were not JSON objects and were skipped");
        }
        Ok(())
    })
    .await
    .context("the send task")?
}
