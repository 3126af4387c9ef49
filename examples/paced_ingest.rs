//! Open-loop paced HTTP ingest loader: `POST /api/v1/events` at a fixed rate, for the benchmark.
//!
//! `bench/run.sh` phase 4 ("queries while ingesting") runs it alongside wrk so the query latency is
//! measured while `PACED_RATE` events/s (100,000 by default: 100 POSTs/s of 1,000-event bodies) are
//! ingested. It replaces `bench/loader.py paced` there, which tops out near 20,000 events/s on two
//! cores; that subcommand still works and this loader prints the same JSON keys (and a few more).
//!
//! ```text
//! python3 bench/loader.py gen --dir BODIES --bodies 32 --products 1000
//! cargo build --release --example paced_ingest
//! target/release/examples/paced_ingest --addr 127.0.0.1:PORT --token INGEST_TOKEN \
//!     --rate 100000 --duration 13 --body-dir BODIES [--conns 8]
//! ```
//!
//! * Bodies are `BODIES/body_000.json`, … (`BODIES/count` of them), read into memory first; each
//!   must be a JSON array of exactly 1,000 events. They are posted in turn, cycling.
//! * Open loop: request k is due at start + k × (1,000 / rate) s, whatever happened to the earlier
//!   ones. At most `--conns` requests are in flight; a request that cannot start by its due time plus
//!   one interval is dropped (counted in `dropped_requests`, never sent late), so `events_per_s` is
//!   what was really achieved.
//! * A request is acknowledged only on status 200 with `"accepted":1000,"rejected":0` in the answer;
//!   anything else (other status or answer, transport error) counts in `failed_requests`.
//! * After the last answer, one JSON line on stdout: `events_per_s` (acknowledged events / the
//!   schedule's length, `requests` × interval; every request sent was sent within it),
//!   `acked_events`, `failed_requests`, `post_p50_ms`, `post_p99_ms`, `max_lag_ms` (largest delay
//!   from a request's due time to its send, below one interval), `dropped_requests`, and more.
//!   bench/run.sh checks that the store grew by exactly `acked_events` and that `failed_requests`
//!   is 0. The exit status is 0 even when requests failed, 2 on bad arguments or bodies.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Parser;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until, timeout_at};

/// Events in every body (what `loader.py gen` writes, and what the acknowledgement must say).
const EVENTS_PER_BODY: u64 = 1000;
/// The acknowledgement of a whole body, as the server writes it.
const ACK: &str = "\"accepted\":1000,\"rejected\":0";
/// Failure texts kept for the output, besides the last one.
const KEEP_FAILURES: usize = 5;

#[derive(Parser, Debug)]
#[command(about = "Open-loop paced ingest: POST 1,000-event bodies at a fixed rate (bench/run.sh phase 4)")]
struct Args {
    /// Server address, HOST:PORT (plain HTTP).
    #[arg(long)]
    addr: String,
    /// Bearer token with the ingest scope.
    #[arg(long)]
    token: String,
    /// Target events per second (1,000 per request).
    #[arg(long)]
    rate: f64,
    /// Length of the schedule, in seconds.
    #[arg(long)]
    duration: f64,
    /// Directory of `body_NNN.json` files and their `count`, as written by `loader.py gen`.
    #[arg(long)]
    body_dir: PathBuf,
    /// Most requests in flight at once.
    #[arg(long, default_value_t = 8)]
    conns: usize,
}

/// One body and what it holds, so acknowledged totals are exact whatever the bodies are.
struct Body {
    bytes: Bytes,
    sold: u64,
    rated: u64,
    /// Sum of the productSold amounts, in cents.
    cents: i128,
}

/// What became of one scheduled request that got a connection slot in time.
struct Outcome {
    body: usize,
    /// Due time to send; None when the task itself started too late and did not send (dropped).
    lag: Option<Duration>,
    /// Time to the whole answer; None on a transport error.
    latency: Option<Duration>,
    /// None when acknowledged, else what went wrong.
    failure: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let bodies = match check(&args).and_then(|()| load_bodies(&args.body_dir)) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("paced_ingest: {e:#}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("paced_ingest: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args, bodies)) {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("paced_ingest: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(a: &Args) -> anyhow::Result<()> {
    if !(a.rate.is_finite() && a.rate > 0.0) {
        bail!("--rate must be a positive number of events per second");
    }
    if !(a.duration.is_finite() && a.duration > 0.0) {
        bail!("--duration must be a positive number of seconds");
    }
    if a.conns == 0 {
        bail!("--conns must be at least 1");
    }
    if a.addr.contains('/') || !a.addr.contains(':') {
        bail!("--addr must be HOST:PORT, got {:?}", a.addr);
    }
    if requests(a) == 0 {
        bail!("--rate × --duration is less than one 1,000-event request");
    }
    Ok(())
}

/// Requests in the schedule.
fn requests(a: &Args) -> u64 {
    (a.rate / EVENTS_PER_BODY as f64 * a.duration) as u64
}

fn load_bodies(dir: &Path) -> anyhow::Result<Vec<Body>> {
    let count_file = dir.join("count");
    let count: usize = std::fs::read_to_string(&count_file)
        .with_context(|| format!("reading {}", count_file.display()))?
        .trim()
        .parse()
        .with_context(|| format!("{}: not a number", count_file.display()))?;
    if count == 0 {
        bail!("{}: no bodies", count_file.display());
    }
    (0..count)
        .map(|i| {
            let path = dir.join(format!("body_{i:03}.json"));
            let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            describe(bytes).with_context(|| path.display().to_string())
        })
        .collect()
}

/// Checks a body is an array of exactly 1,000 events and totals its sales and ratings.
fn describe(bytes: Vec<u8>) -> anyhow::Result<Body> {
    let events: Vec<Value> = serde_json::from_slice(&bytes).context("not a JSON array")?;
    if events.len() as u64 != EVENTS_PER_BODY {
        bail!("{} events, expected {EVENTS_PER_BODY}", events.len());
    }
    let (mut sold, mut rated, mut cents) = (0, 0, 0);
    for e in &events {
        let name = e.get("event_name").or_else(|| e.get("event")).and_then(Value::as_str);
        match name {
            Some("productSold") => {
                sold += 1;
                if let Some(amount) = e.get("amount") {
                    cents += to_cents(amount).with_context(|| format!("amount {amount}"))?;
                }
            }
            Some("productRated") => rated += 1,
            _ => {}
        }
    }
    Ok(Body { bytes: Bytes::from(bytes), sold, rated, cents })
}

/// A decimal amount (JSON string or number, at most two decimals) in cents.
fn to_cents(v: &Value) -> anyhow::Result<i128> {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => bail!("not a number"),
    };
    let (neg, digits) = s.strip_prefix('-').map_or((false, s.as_str()), |d| (true, d));
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let all_digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() || frac.len() > 2 || !all_digits(int) || !all_digits(frac) {
        bail!("not a decimal with at most two places");
    }
    let c = int.parse::<i128>()? * 100 + format!("{frac:0<2}").parse::<i128>()?;
    Ok(if neg { -c } else { c })
}

async fn run(args: Args, bodies: Vec<Body>) -> anyhow::Result<Value> {
    let total = requests(&args);
    let interval_s = EVENTS_PER_BODY as f64 / args.rate;
    let interval = Duration::from_secs_f64(interval_s);
    let schedule_s = total as f64 * interval_s;
    let url = format!("http://{}/api/v1/events", args.addr);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.conns)
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(60))
        .build()
        .context("HTTP client")?;
    let auth = format!("Bearer {}", args.token);
    let slots = Arc::new(Semaphore::new(args.conns));
    let mut tasks: JoinSet<Outcome> = JoinSet::new();
    let mut done: Vec<Outcome> = Vec::with_capacity(total.min(1 << 20) as usize);
    let mut dropped = 0u64;

    let start = Instant::now() + Duration::from_millis(50);
    for k in 0..total {
        let due = start + Duration::from_secs_f64(k as f64 * interval_s);
        let give_up = due + interval;
        sleep_until(due).await;
        // `timeout_at` returns a ready permit even past its deadline: check the clock as well.
        let permit = match timeout_at(give_up, slots.clone().acquire_owned()).await {
            Ok(Ok(p)) if Instant::now() < give_up => p,
            _ => {
                dropped += 1;
                continue;
            }
        };
        let i = (k % bodies.len() as u64) as usize;
        let request = client
            .post(&url)
            .header(reqwest::header::AUTHORIZATION, &auth)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(bodies[i].bytes.clone());
        tasks.spawn(async move {
            let _permit = permit;
            let sent = Instant::now();
            if sent >= give_up {
                // The runtime started this task too late (CPU starved): drop it, never send late.
                return Outcome { body: i, lag: None, latency: None, failure: None };
            }
            let lag = Some(sent.saturating_duration_since(due));
            let answer = async {
                let r = request.send().await?;
                let status = r.status();
                let text = r.text().await?;
                Ok::<_, reqwest::Error>((status, text))
            }
            .await;
            let (latency, failure) = match answer {
                Ok((status, text)) => {
                    let failure = (status != reqwest::StatusCode::OK || !text.contains(ACK))
                        .then(|| format!("{status} {}", text.chars().take(200).collect::<String>()));
                    (Some(sent.elapsed()), failure)
                }
                Err(e) => (None, Some(chain(&e))),
            };
            Outcome { body: i, lag, latency, failure }
        });
        while let Some(r) = tasks.try_join_next() {
            done.push(r.context("request task")?);
        }
    }
    while let Some(r) = tasks.join_next().await {
        done.push(r.context("request task")?);
    }
    // To the last answer: the schedule's length plus the last requests' latency.
    let elapsed_s = start.elapsed().as_secs_f64();

    let (mut acked, mut sold, mut rated, mut cents) = (0u64, 0u64, 0u64, 0i128);
    let mut failures: Vec<&str> = Vec::new();
    let mut failed = 0u64;
    let mut last_failure: Option<&str> = None;
    let mut latencies: Vec<Duration> = Vec::with_capacity(done.len());
    let mut max_lag = Duration::ZERO;
    let mut sent = 0u64;
    for o in &done {
        let Some(lag) = o.lag else {
            dropped += 1;
            continue;
        };
        sent += 1;
        max_lag = max_lag.max(lag);
        latencies.extend(o.latency);
        match &o.failure {
            None => {
                let b = &bodies[o.body];
                acked += 1;
                sold += b.sold;
                rated += b.rated;
                cents += b.cents;
            }
            Some(f) => {
                failed += 1;
                if failures.len() < KEEP_FAILURES {
                    failures.push(f);
                }
                last_failure = Some(f);
            }
        }
    }
    latencies.sort_unstable();
    let pct = |p: f64| percentile(&latencies, p).map(|d| round(d.as_secs_f64() * 1000.0, 2));
    let acked_events = acked * EVENTS_PER_BODY;
    Ok(json!({
        "requests": total,
        "sent_requests": sent,
        "dropped_requests": dropped,
        "acked_requests": acked,
        "acked_events": acked_events,
        "acked_sold": sold,
        "acked_rated": rated,
        "acked_amount": format!("{}{}.{:02}", if cents < 0 { "-" } else { "" }, cents.abs() / 100, cents.abs() % 100),
        "failed_requests": failed,
        "failures": failures,
        "last_failure": last_failure,
        "elapsed_s": round(elapsed_s, 3),
        "schedule_s": round(schedule_s, 3),
        "target_events_per_s": args.rate,
        "events_per_s": round(acked_events as f64 / schedule_s, 1),
        "post_p50_ms": pct(50.0),
        "post_p99_ms": pct(99.0),
        "max_lag_ms": round(max_lag.as_secs_f64() * 1000.0, 1),
        "conns": args.conns,
    }))
}

/// An error and its causes ("error sending request …: … : Connection refused").
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text = format!("{text}: {c}");
        cause = c.source();
    }
    text
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    let n = sorted.len();
    if n == 0 {
        return None;
    }
    let rank = (p / 100.0 * n as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, n) - 1])
}

fn round(x: f64, places: i32) -> f64 {
    let m = 10f64.powi(places);
    (x * m).round() / m
}
