//! The dashboard benchmark's load generator (`bench/live.sh`): live-push latency and open-loop
//! query latency.
//!
//! ```text
//! cargo build --release --example live_bench
//! # commit → pushed event, with CONNS streams of SUBS subscriptions each:
//! live_bench push --addr HOST:PORT --read-tokens T1,T2 --ingest-token TI --conns 32 --subs 32 \
//!     --products 1000 --duration 20
//! # a GET at a fixed rate (open loop), its latency:
//! live_bench get --addr HOST:PORT --token T --rate 1000 --duration 20 --path '/api/v1/…'
//! ```
//!
//! **push**: opens `--conns` streams (`GET /api/v1/stream`, tokens used in turn, at most 16 streams
//! each), each with `--subs` subscriptions to `sales_amount` of one product over the last hour: all
//! but the last on products `1..=--products` (the ones the background ingest changes all the time),
//! the last on a product of its own that nothing else writes (a probe, id `--probe-base` + stream). Then,
//! `--probes` times a second, it posts one sale of a probe product (round robin) and records when the
//! POST was sent and when it was acknowledged (the commit is durable by then); the probe's stream
//! must then push a figure whose `count` is the number of sales posted for it. Latency: the event's
//! arrival minus the acknowledgement (`ack_to_event`; the commit happened before the acknowledgement,
//! so the true commit → event time is at most `send_to_event`, the arrival minus the POST's start).
//! Prints one JSON line: percentiles of both, events received per second over all streams, probes
//! whose event never came (`missing`).
//!
//! **get**: GETs `--path` at `--rate` per second on an open-loop schedule (request k is due at
//! k / rate s; at most `--conns` in flight, a request that cannot start within one interval of its
//! due time is dropped and counted), and prints the percentiles of the time to the whole answer,
//! measured from the due time (so queueing behind a slow server counts), and non-2xx answers.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, sleep_until};

#[derive(Parser, Debug)]
#[command(about = "Live-push and open-loop query latency (bench/live.sh)")]
struct Args {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Commit → pushed event latency with many subscriptions open.
    Push {
        #[arg(long)]
        addr: String,
        /// Read tokens, comma-separated (16 streams each at most).
        #[arg(long)]
        read_tokens: String,
        #[arg(long)]
        ingest_token: String,
        #[arg(long, default_value_t = 32)]
        conns: u64,
        /// Subscriptions per stream (at most 32).
        #[arg(long, default_value_t = 32)]
        subs: u64,
        /// Background products the subscriptions other than the probes watch.
        #[arg(long, default_value_t = 1000)]
        products: u64,
        /// Probe sales per second.
        #[arg(long, default_value_t = 10.0)]
        probes: f64,
        #[arg(long, default_value_t = 20.0)]
        duration: f64,
        /// The probe products' ids are this plus the stream's number: give each run its own, so
        /// that no earlier sale of a probe is in its count.
        #[arg(long, default_value_t = 900_000)]
        probe_base: u64,
    },
    /// A GET at a fixed rate, open loop.
    Get {
        #[arg(long)]
        addr: String,
        #[arg(long)]
        token: String,
        #[arg(long)]
        rate: f64,
        #[arg(long)]
        duration: f64,
        /// The path and query, e.g. `/api/v1/metrics/sales_amount/top?dim=product_id&window=1h`.
        #[arg(long)]
        path: String,
        #[arg(long, default_value_t = 64)]
        conns: usize,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("live_bench: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let out = match args.mode {
        Mode::Push { addr, read_tokens, ingest_token, conns, subs, products, probes, duration, probe_base } => runtime
            .block_on(push(Push {
                addr,
                read_tokens,
                ingest_token,
                conns,
                subs,
                products,
                probes,
                duration,
                probe_base,
            })),
        Mode::Get { addr, token, rate, duration, path, conns } => {
            runtime.block_on(get(&addr, &token, rate, duration, &path, conns))
        }
    };
    match out {
        Ok(v) => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("live_bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

struct Push {
    addr: String,
    read_tokens: String,
    ingest_token: String,
    conns: u64,
    subs: u64,
    products: u64,
    probes: f64,
    duration: f64,
    probe_base: u64,
}

/// When each probe's figure with a given count arrived: `(probe, count) → arrival`.
type Arrivals = Arc<Mutex<HashMap<(u64, u64), Instant>>>;

async fn push(p: Push) -> anyhow::Result<Value> {
    if p.subs == 0 || p.subs > 32 || p.conns == 0 {
        bail!("--subs must lie between 1 and 32, --conns above 0");
    }
    let tokens: Vec<String> = p.read_tokens.split(',').map(String::from).collect();
    if (tokens.len() as u64) * 16 < p.conns {
        bail!("{} streams need {} read tokens (16 streams each)", p.conns, p.conns.div_ceil(16));
    }
    let client = reqwest::Client::builder().pool_max_idle_per_host(64).build()?;
    let arrivals: Arrivals = Arc::default();
    let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut streams = JoinSet::new();
    for c in 0..p.conns {
        let mut query: Vec<(String, String)> = (0..p.subs - 1)
            .map(|s| {
                let product = 1 + (c * p.subs + s) % p.products;
                (
                    "sub".to_string(),
                    format!("b{s}:/api/v1/metrics/sales_amount?dim=product_id&value={product}&window=1h"),
                )
            })
            .collect();
        let probe = p.probe_base + c;
        query.push((
            "sub".into(),
            format!("probe{probe}:/api/v1/metrics/sales_amount?dim=product_id&value={probe}&window=1h"),
        ));
        let url = format!("http://{}/api/v1/stream?{}", p.addr, serde_urlencoded::to_string(&query)?);
        let token = tokens[(c / 16) as usize].clone();
        let (client, arrivals, received) = (client.clone(), arrivals.clone(), received.clone());
        streams.spawn(async move { read_stream(client, url, token, arrivals, received).await });
    }
    // Let every stream send its first figures.
    sleep(Duration::from_secs(2)).await;
    let start_received = received.load(std::sync::atomic::Ordering::Relaxed);
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / p.probes);
    let total = (p.duration * p.probes) as u64;
    let mut posted: Vec<(u64, u64, Instant, Instant)> = Vec::new(); // probe, count, sent, acked
    let mut counts: HashMap<u64, u64> = HashMap::new();
    let mut failed = 0u64;
    for k in 0..total {
        sleep_until(started + interval * k as u32).await;
        let probe = p.probe_base + k % p.conns;
        let body = json!({"event_name": "productSold", "product_id": probe, "no_of_units": 1, "amount": "1"});
        let sent = Instant::now();
        let ok = client
            .post(format!("http://{}/api/v1/events", p.addr))
            .bearer_auth(&p.ingest_token)
            .json(&body)
            .send()
            .await
            .map(|r| r.status().is_success())
            .unwrap_or(false);
        let acked = Instant::now();
        if ok {
            let n = counts.entry(probe).or_default();
            *n += 1;
            posted.push((probe, *n, sent, acked));
        } else {
            failed += 1;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let events_per_s = (received.load(std::sync::atomic::Ordering::Relaxed) - start_received) as f64 / elapsed;
    sleep(Duration::from_secs(2)).await;
    streams.abort_all();
    let arrivals = arrivals.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    let (mut ack_to, mut send_to, mut missing) = (Vec::new(), Vec::new(), 0u64);
    for (probe, n, sent, acked) in &posted {
        match arrivals.get(&(*probe, *n)) {
            // A figure can come before the acknowledgement does (the commit is pushed at once).
            Some(at) => {
                ack_to.push(at.saturating_duration_since(*acked));
                send_to.push(at.saturating_duration_since(*sent));
            }
            // A later sale of the same probe committed in the same 100 ms: its figure covers both.
            None if arrivals.keys().any(|(q, m)| q == probe && m > n) => {}
            None => missing += 1,
        }
    }
    Ok(json!({
        "streams": p.conns, "subscriptions": p.conns * p.subs, "probes_posted": posted.len(),
        "probe_posts_failed": failed, "probes_measured": ack_to.len(), "missing": missing,
        "ack_to_event_ms": summary(&mut ack_to), "send_to_event_ms": summary(&mut send_to),
        "events_received_per_s": events_per_s.round(),
    }))
}

/// Reads one stream, noting when each probe figure arrives.
async fn read_stream(
    client: reqwest::Client,
    url: String,
    token: String,
    arrivals: Arrivals,
    received: Arc<std::sync::atomic::AtomicU64>,
) -> anyhow::Result<()> {
    let mut resp =
        client.get(&url).bearer_auth(&token).header("accept", "text/event-stream").send().await?.error_for_status()?;
    let mut buf = String::new();
    while let Some(chunk) = resp.chunk().await? {
        let now = Instant::now();
        buf.push_str(std::str::from_utf8(&chunk).context("stream is not UTF-8")?);
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            let (mut name, mut data) = ("", "");
            for line in event.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    name = v.trim();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data = v.trim();
                }
            }
            if data.is_empty() {
                continue; // a heartbeat
            }
            received.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if let Some(probe) = name.strip_prefix("probe").and_then(|p| p.parse::<u64>().ok()) {
                let v: Value = serde_json::from_str(data)?;
                if let Some(count) = v["result"]["count"].as_u64() {
                    arrivals.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.entry((probe, count)).or_insert(now);
                }
            }
        }
    }
    Ok(())
}

async fn get(addr: &str, token: &str, rate: f64, duration: f64, path: &str, conns: usize) -> anyhow::Result<Value> {
    let client = reqwest::Client::builder().pool_max_idle_per_host(conns).build()?;
    let url = format!("http://{addr}{path}");
    // One answer first: the path must work.
    let first = client.get(&url).bearer_auth(token).send().await?;
    if !first.status().is_success() {
        bail!("GET {path}: {} {}", first.status(), first.text().await.unwrap_or_default());
    }
    let slots = Arc::new(Semaphore::new(conns));
    let interval = Duration::from_secs_f64(1.0 / rate);
    let total = (rate * duration) as u64;
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    let mut dropped = 0u64;
    for k in 0..total {
        let due = started + interval * k as u32;
        sleep_until(due).await;
        let Ok(slot) = tokio::time::timeout_at(due + interval, slots.clone().acquire_owned()).await else {
            dropped += 1;
            continue;
        };
        let (client, url, token) = (client.clone(), url.clone(), token.to_string());
        tasks.spawn(async move {
            let _slot = slot;
            let ok = match client.get(&url).bearer_auth(&token).send().await {
                Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                Err(_) => false,
            };
            (due.elapsed(), ok)
        });
    }
    let mut latencies = Vec::new();
    let mut failed = 0u64;
    while let Some(r) = tasks.join_next().await {
        let (latency, ok) = r?;
        latencies.push(latency);
        failed += u64::from(!ok);
    }
    let achieved = latencies.len() as f64 / started.elapsed().as_secs_f64();
    Ok(json!({
        "path": path, "rate": rate, "answered_per_s": achieved.round(), "requests": latencies.len(),
        "dropped": dropped, "failed": failed, "latency_ms": summary(&mut latencies),
    }))
}

/// p50, p90, p99 and max in milliseconds.
fn summary(d: &mut [Duration]) -> Value {
    d.sort();
    let pct = |p: f64| -> Value {
        if d.is_empty() {
            return Value::Null;
        }
        let rank = ((p / 100.0 * d.len() as f64).ceil() as usize).clamp(1, d.len());
        json!((d[rank - 1].as_secs_f64() * 1e5).round() / 100.0)
    };
    json!({"p50": pct(50.0), "p90": pct(90.0), "p99": pct(99.0), "max": pct(100.0), "n": d.len()})
}
