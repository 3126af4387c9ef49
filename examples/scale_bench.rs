//! The cost curve and the soak of issue 17: a store filled to 100M events, measured on the way.
//!
//! `bench/scale.sh` starts a server on a fresh SQLite store and runs this against it:
//!
//! ```text
//! target/release/examples/scale_bench --addr 127.0.0.1:PORT --token TOKEN --server-pid PID \
//!     --store-dir DIR [--checkpoints 1000000,10000000,100000000] [--soak-secs 1800]
//! ```
//!
//! * **The stream** is generated here, as it is posted: `--products` (1,000,000) products, the hot
//!   one (id 1) takes `--hot-share` (10 %) of the events, the others a Zipf skew (exponent `--skew`,
//!   1.0) over ids 2..; 70 % `productSold` (amount = units × a per-product price, 2 decimals, as a
//!   string), 30 % `productRated`, in the reference generator's shapes. Event times walk through
//!   `--span-days` (7) days up to the moment the last checkpoint is due (event k of N sits at
//!   k/N of the span, ±5 s of disorder), so the store ends holding a week; the soak's events are
//!   timed 0–10 s before they are sent. Bodies are NDJSON of `--body-events` lines, `--conns` of them in flight.
//! * **At each checkpoint** (events stored): ingest pauses; the line printed holds the ingest rate
//!   over the segment and over its last tenth, the acknowledgement latency p50/p99/max of the segment
//!   (an acknowledgement waits for the commit holding it, so its maximum bounds the longest writer
//!   stall: merges, retention, checkpoints), the server's RSS (now and the segment's peak, sampled
//!   every 200 ms), the store's size on disk (every file in `--store-dir`) and per million events,
//!   then `GET /api/product/sale|rating/{id}` for `--query-secs` with `--query-conns` loops each on
//!   the hot product and on cold ones (up to 100,000 distinct ids from the colder half of the
//!   ranks that have events, so the read cache rarely holds one): req/s, p50, p99. Then the store's
//!   all-time totals (events, per event, the exact sale sum) must equal what was acknowledged.
//! * **The soak** (`--soak-secs`): `--soak-rate` events/s (1,000-event bodies at fixed times) and
//!   `--soak-query-rate` queries/s (10 % hot, 90 % cold) for that long, events timed 0–10 s ago; a line per minute; at the end
//!   the RSS and query p99 of the last minutes against minute 3, and the totals check again.
//!
//! Every line is also written to stdout as JSON (`{"kind":"checkpoint",…}`, `{"kind":"minute",…}`)
//! after a human line on stderr. Exit status 1 when a request failed or a totals check did not hold.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail, ensure};
use clap::Parser;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use rust_decimal::Decimal;
use serde_json::{Value, json};
use tokio::sync::{Mutex, mpsc};

#[derive(Parser, Debug, Clone)]
#[command(about = "Fill a store to 100M events, measuring the cost curve on the way; then a soak")]
struct Args {
    #[arg(long)]
    addr: String,
    /// Bearer token with the ingest and read scopes.
    #[arg(long)]
    token: String,
    /// The server's pid, for its RSS.
    #[arg(long)]
    server_pid: u32,
    /// The directory holding the store's files (its size is the store's size on disk).
    #[arg(long)]
    store_dir: PathBuf,
    #[arg(long, value_delimiter = ',', default_value = "1000000,10000000,100000000", num_args = 0..)]
    checkpoints: Vec<u64>,
    #[arg(long, default_value_t = 1_000_000)]
    products: u64,
    #[arg(long, default_value_t = 0.10)]
    hot_share: f64,
    #[arg(long, default_value_t = 1.0)]
    skew: f64,
    #[arg(long, default_value_t = 7.0)]
    span_days: f64,
    #[arg(long, default_value_t = 5000)]
    body_events: u64,
    #[arg(long, default_value_t = 4)]
    conns: usize,
    #[arg(long, default_value_t = 5.0)]
    query_secs: f64,
    #[arg(long, default_value_t = 8)]
    query_conns: usize,
    #[arg(long, default_value_t = 0)]
    soak_secs: u64,
    #[arg(long, default_value_t = 50_000)]
    soak_rate: u64,
    #[arg(long, default_value_t = 500)]
    soak_query_rate: u64,
    #[arg(long, default_value_t = 20_261_202)]
    seed: u64,
    /// Written after the fill (the acknowledged totals and the cold ids: `STATE.ids`, one a line,
    /// for wrk); read by a run with no checkpoints, which goes straight to the soak.
    #[arg(long)]
    state: Option<PathBuf>,
}

/// What the acknowledged events add up to: the oracle the store's totals are checked against.
#[derive(Default, Clone, Copy)]
struct Totals {
    sold: u64,
    rated: u64,
    cents: i128,
}

/// One body ready to post, and what it holds.
struct Body {
    bytes: bytes::Bytes,
    events: u64,
    totals: Totals,
}

/// The event stream: deterministic for a seed, timed by the caller.
struct Stream {
    rng: SmallRng,
    zipf: Zipf<f64>,
    hot_share: f64,
    /// Events seen per product id (index 0 unused), to pick cold products that exist.
    seen: Vec<u32>,
}

impl Stream {
    fn new(a: &Args) -> anyhow::Result<Self> {
        ensure!(a.products >= 2, "--products must be at least 2");
        let zipf = Zipf::new((a.products - 1) as f64, a.skew).context("zipf")?;
        Ok(Self {
            rng: SmallRng::seed_from_u64(a.seed),
            zipf,
            hot_share: a.hot_share,
            seen: vec![0; a.products as usize + 1],
        })
    }

    fn price_cents(id: u64) -> i128 {
        100 + (id.wrapping_mul(2_654_435_761) % 49_901) as i128
    }

    /// A body of `n` events, event k timed by `time_ms(k)`.
    fn body(&mut self, n: u64, time_ms: impl Fn(u64) -> i64) -> Body {
        let mut s = String::with_capacity(n as usize * 150);
        let mut t = Totals::default();
        for k in 0..n {
            let id =
                if self.rng.random::<f64>() < self.hot_share { 1 } else { 1 + self.zipf.sample(&mut self.rng) as u64 };
            self.seen[id as usize] = self.seen[id as usize].saturating_add(1);
            let ts = time_ms(k) + self.rng.random_range(-5000..=5000);
            if self.rng.random::<f64>() < 0.7 {
                let units = self.rng.random_range(1..=20u32);
                let cents = i128::from(units) * Self::price_cents(id);
                t.sold += 1;
                t.cents += cents;
                let _ = writeln!(
                    s,
                    r#"{{"event_name":"productSold","name_of_product":"product {id}","product_id":{id},"no_of_units":{units},"amount":"{}.{:02}","timestamp":{ts}}}"#,
                    cents / 100,
                    cents % 100
                );
            } else {
                t.rated += 1;
                let _ = writeln!(
                    s,
                    r#"{{"event":"productRated","name_of_product":"product {id}","product_id":{id},"rating":{},"category":"{}","timestamp":{ts}}}"#,
                    self.rng.random_range(1..=5u32),
                    ["A", "B", "C", "D", "E", "F"][(id % 6) as usize]
                );
            }
        }
        Body { bytes: s.into(), events: n, totals: t }
    }

    /// Up to `max` ids from the colder half of the ranks that have at least one event.
    fn cold_ids(&mut self, max: usize) -> Vec<u64> {
        let half = self.seen.len() / 2;
        let mut ids: Vec<u64> = (half..self.seen.len()).filter(|&i| self.seen[i] > 0).map(|i| i as u64).collect();
        if ids.len() < 100 {
            ids = (2..self.seen.len()).filter(|&i| self.seen[i] > 0).map(|i| i as u64).collect();
        }
        while ids.len() > max {
            let i = self.rng.random_range(0..ids.len());
            ids.swap_remove(i);
        }
        ids
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// The server's CPU time so far (user + system), in clock ticks (`/proc/PID/stat` fields 14 and 15).
fn cpu_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().map_or(0, |s| {
        // The command name (field 2) may hold spaces; the fields after its closing parenthesis do not.
        let rest = s.rsplit_once(')').map_or("", |(_, r)| r);
        rest.split_whitespace().skip(11).take(2).filter_map(|f| f.parse::<u64>().ok()).sum()
    })
}

/// Clock ticks per second in `/proc` (`getconf CLK_TCK`: 100 on every Linux this runs on).
const CLK_TCK: f64 = 100.0;

fn disk_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map_or(0, |d| d.flatten().filter_map(|e| e.metadata().ok()).filter(|m| m.is_file()).map(|m| m.len()).sum())
}

/// The client and what every request needs.
#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    base: String,
    auth: String,
}

impl Api {
    async fn post(&self, body: bytes::Bytes, events: u64) -> anyhow::Result<()> {
        let r = self
            .http
            .post(format!("{}/api/v1/events", self.base))
            .header("authorization", &self.auth)
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .await?;
        let status = r.status();
        let v: Value = r.json().await.context("the answer is not JSON")?;
        ensure!(
            status == 200 && v["accepted"].as_u64() == Some(events) && v["rejected"].as_u64() == Some(0),
            "POST answered {status}: {v}"
        );
        Ok(())
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let r = self.http.get(format!("{}{path}", self.base)).header("authorization", &self.auth).send().await?;
        let status = r.status();
        let v: Value = r.json().await?;
        ensure!(status == 200, "GET {path} answered {status}: {v}");
        Ok(v)
    }

    /// Compares the store's all-time totals with the acknowledged ones.
    async fn check_totals(&self, t: Totals) -> anyhow::Result<String> {
        let count = |q: &'static str| async move {
            self.get(q).await.map(|v| v["result"]["count"].as_u64().unwrap_or(u64::MAX))
        };
        let sold = count("/api/v1/metrics/events?from=0&dim=event_name&value=productSold").await?;
        let rated = count("/api/v1/metrics/events?from=0&dim=event_name&value=productRated").await?;
        let sum = self.get("/api/v1/metrics/sales_amount?from=0").await?["result"]["sum"].clone();
        let sum: Decimal = sum.as_str().map(str::to_owned).unwrap_or_else(|| sum.to_string()).parse().context("sum")?;
        let want = Decimal::from_i128_with_scale(t.cents, 2);
        ensure!(
            sold == t.sold && rated == t.rated && sum == want,
            "the store holds {sold} sold / {rated} rated / {sum}, acknowledged {} / {} / {want}",
            t.sold,
            t.rated
        );
        Ok(format!("store = acknowledged: {sold} sold, {rated} rated, sum {sum}"))
    }
}

/// Latencies of one kind of request over a stretch of time.
#[derive(Default)]
struct Lat {
    all: Vec<Duration>,
    errors: u64,
}

impl Lat {
    fn summary(&mut self, secs: f64) -> Value {
        self.all.sort_unstable();
        json!({
            "n": self.all.len(), "per_s": (self.all.len() as f64 / secs).round(),
            "p50_ms": round2(percentile(&self.all, 0.50)), "p99_ms": round2(percentile(&self.all, 0.99)),
            "max_ms": round2(percentile(&self.all, 1.0)), "errors": self.errors,
        })
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// The server's RSS sampled every 200 ms: the latest and the peak since the last `take_peak`.
struct RssWatch {
    now: AtomicU64,
    peak: AtomicU64,
}

impl RssWatch {
    fn start(pid: u32) -> Arc<Self> {
        let w = Arc::new(Self { now: AtomicU64::new(0), peak: AtomicU64::new(0) });
        let w2 = w.clone();
        tokio::spawn(async move {
            loop {
                let r = rss_bytes(pid);
                w2.now.store(r, Ordering::Relaxed);
                w2.peak.fetch_max(r, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        w
    }
    fn take_peak(&self) -> u64 {
        self.peak.swap(self.now.load(Ordering::Relaxed), Ordering::Relaxed)
    }
}

fn mb(b: u64) -> f64 {
    (b as f64 / 1e5).round() / 10.0
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("scale_bench: FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(a: Args) -> anyhow::Result<()> {
    let api = Api {
        // Idle connections are dropped before the server's own 10-s idle close
        // (`http.header_read_timeout`): reusing one the server is closing fails the request.
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .pool_idle_timeout(Duration::from_secs(5))
            .build()?,
        base: format!("http://{}", a.addr),
        auth: format!("Bearer {}", a.token),
    };
    let stream = Arc::new(std::sync::Mutex::new(Stream::new(&a)?));
    let rss = RssWatch::start(a.server_pid);
    let total = a.checkpoints.iter().copied().max().unwrap_or(0);
    let span_ms = (a.span_days * 86_400_000.0) as i64;
    let t_end = now_ms(); // the walk ends where the run begins: every event time is in the past
    let mut acked = Totals::default();
    let mut stored = 0u64;
    for &cp in &a.checkpoints {
        ensure!(cp > stored, "checkpoints must increase");
        let seg = fill(&a, &api, &stream, stored, cp, total, span_ms, t_end).await?;
        acked.sold += seg.totals.sold;
        acked.rated += seg.totals.rated;
        acked.cents += seg.totals.cents;
        stored = cp;
        let rss_peak = rss.take_peak();
        let rss_now = rss_bytes(a.server_pid);
        let disk = disk_bytes(&a.store_dir);
        let cold = stream.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.cold_ids(100_000);
        let hot = queries(&api, &[1], a.query_conns, a.query_secs).await;
        let coldq = queries(&api, &cold, a.query_conns, a.query_secs).await;
        let check = api.check_totals(acked).await?;
        let line = json!({
            "kind": "checkpoint", "events": cp, "segment_events_per_s": seg.rate.round(),
            "last_tenth_events_per_s": seg.last_tenth_rate.round(), "ack": seg.ack,
            "rss_mb": mb(rss_now), "rss_peak_mb": mb(rss_peak), "disk_mb": mb(disk),
            "disk_mb_per_million": round2(disk as f64 / 1e6 / (cp as f64 / 1e6)),
            "hot": hot, "cold": coldq, "cold_ids": cold.len(), "check": check,
        });
        eprintln!(
            "== {cp} events stored: ingest {:.0} ev/s (last tenth {:.0}), ack p99 {} ms, longest {} ms; RSS {} MB (peak {}); disk {} MB ({:.1} MB per M events); hot {}/s p50 {} p99 {} ms; cold ({} ids) {}/s p50 {} p99 {} ms; {check}",
            seg.rate,
            seg.last_tenth_rate,
            seg.ack["p99_ms"],
            seg.ack["max_ms"],
            mb(rss_now),
            mb(rss_peak),
            mb(disk),
            disk as f64 / cp as f64,
            hot["per_s"],
            hot["p50_ms"],
            hot["p99_ms"],
            cold.len(),
            coldq["per_s"],
            coldq["p50_ms"],
            coldq["p99_ms"]
        );
        println!("{line}");
        if hot["errors"].as_u64() != Some(0) || coldq["errors"].as_u64() != Some(0) {
            bail!("queries failed: hot {hot}, cold {coldq}");
        }
    }
    let mut cold = stream.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.cold_ids(100_000);
    if let Some(path) = &a.state {
        if a.checkpoints.is_empty() {
            let v: Value = serde_json::from_slice(&std::fs::read(path).context("--state")?)?;
            acked = Totals {
                sold: v["sold"].as_u64().unwrap_or(0),
                rated: v["rated"].as_u64().unwrap_or(0),
                cents: v["cents"].as_str().unwrap_or("0").parse()?,
            };
            cold = v["cold_ids"].as_array().map(|a| a.iter().filter_map(Value::as_u64).collect()).unwrap_or_default();
        } else {
            let state =
                json!({"sold": acked.sold, "rated": acked.rated, "cents": acked.cents.to_string(), "cold_ids": cold});
            std::fs::write(path, state.to_string())?;
            let ids: String = cold.iter().map(|id| format!("{id}\n")).collect();
            std::fs::write(path.with_extension("ids"), ids)?;
        }
    }
    if a.soak_secs > 0 {
        ensure!(!cold.is_empty(), "no cold ids for the soak");
        soak(&a, &api, &stream, cold.clone(), &rss, &mut acked).await?;
        // The next soak on this store checks against what it holds now.
        if let Some(path) = &a.state {
            let state =
                json!({"sold": acked.sold, "rated": acked.rated, "cents": acked.cents.to_string(), "cold_ids": cold});
            std::fs::write(path, state.to_string())?;
        }
    }
    Ok(())
}

struct Segment {
    rate: f64,
    last_tenth_rate: f64,
    ack: Value,
    totals: Totals,
}

/// Posts events `from..to` of the `total`-event walk, timed through the span ending at `t_end`.
#[allow(clippy::too_many_arguments)]
async fn fill(
    a: &Args,
    api: &Api,
    stream: &Arc<std::sync::Mutex<Stream>>,
    from: u64,
    to: u64,
    total: u64,
    span_ms: i64,
    t_end: i64,
) -> anyhow::Result<Segment> {
    let (tx, rx) = mpsc::channel::<Body>(a.conns * 2);
    let body_events = a.body_events;
    let gen_stream = stream.clone();
    let start_ms = t_end - span_ms;
    let producer = tokio::task::spawn_blocking(move || {
        let mut next = from;
        while next < to {
            let n = body_events.min(to - next);
            let base = next;
            let body = match gen_stream.lock() {
                Ok(mut s) => s.body(n, |k| start_ms + ((base + k) as f64 / total as f64 * span_ms as f64) as i64),
                Err(_) => return,
            };
            next += n;
            if tx.blocking_send(body).is_err() {
                return;
            }
        }
    });
    let rx = Arc::new(Mutex::new(rx));
    let done = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let tenth_at = from + (to - from) * 9 / 10;
    let tenth_start = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..a.conns {
        let (rx, api, done, tenth_start) = (rx.clone(), api.clone(), done.clone(), tenth_start.clone());
        tasks.spawn(async move {
            let mut lat = Vec::new();
            let mut t = Totals::default();
            loop {
                let Some(body) = rx.lock().await.recv().await else { break };
                let s = Instant::now();
                api.post(body.bytes, body.events).await?;
                lat.push(s.elapsed());
                t.sold += body.totals.sold;
                t.rated += body.totals.rated;
                t.cents += body.totals.cents;
                let d = from + done.fetch_add(body.events, Ordering::Relaxed) + body.events;
                if d >= tenth_at
                    && let Ok(mut g) = tenth_start.lock()
                {
                    g.get_or_insert_with(Instant::now);
                }
            }
            anyhow::Ok((lat, t))
        });
    }
    let progress = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut last = (Instant::now(), 0u64);
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                let d = done.load(Ordering::Relaxed);
                let rate = (d - last.1) as f64 / last.0.elapsed().as_secs_f64();
                eprintln!("   {} events stored, {rate:.0} ev/s over the last 10 s", from + d);
                last = (Instant::now(), d);
            }
        })
    };
    let mut lat = Lat::default();
    let mut totals = Totals::default();
    let mut failure = None;
    while let Some(r) = tasks.join_next().await {
        match r? {
            Ok((l, t)) => {
                lat.all.extend(l);
                totals.sold += t.sold;
                totals.rated += t.rated;
                totals.cents += t.cents;
            }
            Err(e) => failure = Some(e),
        }
    }
    progress.abort();
    producer.await?;
    if let Some(e) = failure {
        return Err(e);
    }
    let secs = t0.elapsed().as_secs_f64();
    let tenth_secs = tenth_start.lock().ok().and_then(|g| *g).map_or(secs, |s| s.elapsed().as_secs_f64());
    Ok(Segment {
        rate: (to - from) as f64 / secs,
        last_tenth_rate: (to - tenth_at) as f64 / tenth_secs.max(1e-3),
        ack: lat.summary(secs),
        totals,
    })
}

/// `conns` closed loops over the ids for `secs`, alternating the two seed endpoints.
async fn queries(api: &Api, ids: &[u64], conns: usize, secs: f64) -> Value {
    let ids: Arc<Vec<u64>> = Arc::new(ids.to_vec());
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..conns {
        let (api, ids) = (api.clone(), ids.clone());
        tasks.spawn(async move {
            let mut rng = SmallRng::seed_from_u64(c as u64);
            let mut l = Lat::default();
            let mut k = 0u64;
            while Instant::now() < until {
                let id = ids[rng.random_range(0..ids.len())];
                let path = if k % 2 == 0 { "sale" } else { "rating" };
                k += 1;
                let s = Instant::now();
                match api.get(&format!("/api/product/{path}/{id}")).await {
                    Ok(_) => l.all.push(s.elapsed()),
                    Err(_) => l.errors += 1,
                }
            }
            l
        });
    }
    let mut all = Lat::default();
    while let Some(Ok(l)) = tasks.join_next().await {
        all.all.extend(l.all);
        all.errors += l.errors;
    }
    all.summary(secs)
}

/// `soak_rate` events/s and `soak_query_rate` queries/s for `soak_secs`, a line per minute.
async fn soak(
    a: &Args,
    api: &Api,
    stream: &Arc<std::sync::Mutex<Stream>>,
    cold: Vec<u64>,
    rss: &RssWatch,
    acked: &mut Totals,
) -> anyhow::Result<()> {
    let cold = Arc::new(cold);
    let posts = Arc::new(std::sync::Mutex::new((Lat::default(), Totals::default())));
    // (hot, cold): the hot product and the cold ones apart, so a minute's p99 says which moved.
    let reads = Arc::new(std::sync::Mutex::new((Lat::default(), Lat::default())));
    let t0 = tokio::time::Instant::now();
    let until = t0 + Duration::from_secs(a.soak_secs);
    // Ingest: 1,000-event bodies at fixed times; each in its own task so a slow one delays nothing.
    let ingest = {
        let (api, stream, posts) = (api.clone(), stream.clone(), posts.clone());
        let every = Duration::from_secs_f64(1000.0 / a.soak_rate as f64);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            let mut inflight = tokio::task::JoinSet::new();
            while tick.tick().await < until {
                // ±5 s around 5 s ago: a producer stamps an event before it sends it, and the
                // totals check reads up to "now".
                let now = now_ms() - 5000;
                let body = match stream.lock() {
                    Ok(mut s) => s.body(1000, |_| now),
                    Err(_) => break,
                };
                let (api, posts) = (api.clone(), posts.clone());
                inflight.spawn(async move {
                    let s = Instant::now();
                    let r = api.post(body.bytes, 1000).await;
                    if let Ok(mut p) = posts.lock() {
                        match r {
                            Ok(()) => {
                                p.0.all.push(s.elapsed());
                                p.1.sold += body.totals.sold;
                                p.1.rated += body.totals.rated;
                                p.1.cents += body.totals.cents;
                            }
                            Err(e) => {
                                p.0.errors += 1;
                                eprintln!("   POST failed: {e:#}");
                            }
                        }
                    }
                });
                while inflight.try_join_next().is_some() {}
            }
            while inflight.join_next().await.is_some() {}
        })
    };
    let query = {
        let (api, cold, reads) = (api.clone(), cold.clone(), reads.clone());
        let every = Duration::from_secs_f64(1.0 / a.soak_query_rate as f64);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            let mut rng = SmallRng::seed_from_u64(7);
            let mut inflight = tokio::task::JoinSet::new();
            while tick.tick().await < until {
                let hot = rng.random_range(0..10) == 0;
                let id = if hot { 1 } else { cold[rng.random_range(0..cold.len())] };
                let path = if rng.random::<bool>() { "sale" } else { "rating" };
                let (api, reads) = (api.clone(), reads.clone());
                inflight.spawn(async move {
                    let s = Instant::now();
                    let r = api.get(&format!("/api/product/{path}/{id}")).await;
                    if let Ok(mut g) = reads.lock() {
                        let l = if hot { &mut g.0 } else { &mut g.1 };
                        match r {
                            Ok(_) => l.all.push(s.elapsed()),
                            Err(e) => {
                                l.errors += 1;
                                eprintln!("   GET failed: {e:#}");
                            }
                        }
                    }
                });
                while inflight.try_join_next().is_some() {}
            }
            while inflight.join_next().await.is_some() {}
        })
    };
    let mut minutes: Vec<(u64, u64, f64)> = Vec::new(); // (minute, RSS, query p99)
    let mut failed = 0;
    let mut minute = 0u64;
    let mut last_cpu = cpu_ticks(a.server_pid);
    while tokio::time::Instant::now() < until {
        minute += 1;
        tokio::time::sleep_until((t0 + Duration::from_secs(60 * minute)).min(until)).await;
        let (mut p, t) = posts.lock().map(|mut g| std::mem::take(&mut *g)).map_err(|_| anyhow::anyhow!("poisoned"))?;
        let (mut hot, mut cold) =
            reads.lock().map(|mut g| std::mem::take(&mut *g)).map_err(|_| anyhow::anyhow!("poisoned"))?;
        acked.sold += t.sold;
        acked.rated += t.rated;
        acked.cents += t.cents;
        failed += p.errors + hot.errors + cold.errors;
        let mut q = Lat { all: [hot.all.as_slice(), cold.all.as_slice()].concat(), errors: hot.errors + cold.errors };
        let (ps, qs, hs, cs) = (p.summary(60.0), q.summary(60.0), hot.summary(60.0), cold.summary(60.0));
        let (r, peak, disk) = (rss_bytes(a.server_pid), rss.take_peak(), disk_bytes(&a.store_dir));
        let wal = std::fs::metadata(a.store_dir.join("js.db-wal")).map_or(0, |m| m.len());
        let cpu = cpu_ticks(a.server_pid);
        let cpu_pct = cpu.saturating_sub(last_cpu) as f64 / CLK_TCK / 60.0 * 100.0;
        last_cpu = cpu;
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        let load1 = load.split_whitespace().next().unwrap_or("?").to_owned();
        minutes.push((minute, r, qs["p99_ms"].as_f64().unwrap_or(0.0)));
        eprintln!(
            "   soak minute {minute}: {} ev/s acked, POST p99 {} max {} ms; queries {}/s p50 {} p99 {} max {} ms (hot p99 {}, cold p50 {} p99 {}); RSS {} MB (peak {}); disk {} MB (WAL {}); server CPU {cpu_pct:.0} %, load {load1}",
            (t.sold + t.rated) / 60,
            ps["p99_ms"],
            ps["max_ms"],
            qs["per_s"],
            qs["p50_ms"],
            qs["p99_ms"],
            qs["max_ms"],
            hs["p99_ms"],
            cs["p50_ms"],
            cs["p99_ms"],
            mb(r),
            mb(peak),
            mb(disk),
            mb(wal)
        );
        println!(
            "{}",
            json!({"kind": "minute", "minute": minute, "acked_events_per_s": (t.sold + t.rated) / 60, "post": ps, "query": qs,
                   "query_hot": hs, "query_cold": cs, "rss_mb": mb(r), "rss_peak_mb": mb(peak), "disk_mb": mb(disk),
                   "wal_mb": mb(wal), "server_cpu_pct": round2(cpu_pct), "load1": load1})
        );
    }
    ingest.await?;
    query.await?;
    let (p, t) = posts.lock().map(|mut g| std::mem::take(&mut *g)).map_err(|_| anyhow::anyhow!("poisoned"))?;
    acked.sold += t.sold;
    acked.rated += t.rated;
    acked.cents += t.cents;
    failed += p.errors;
    let check = api.check_totals(*acked).await?;
    if let (Some(m3), Some(last)) = (minutes.iter().find(|m| m.0 == 3).or(minutes.first()), minutes.last()) {
        let later_max_rss = minutes.iter().filter(|m| m.0 >= m3.0).map(|m| m.1).max().unwrap_or(0);
        eprintln!(
            "== soak: {} minutes; RSS minute {} {} MB, last {} MB, max after {} MB; query p99 minute {} {} ms, last {} ms; {failed} failed requests; {check}",
            minutes.len(),
            m3.0,
            mb(m3.1),
            mb(last.1),
            mb(later_max_rss),
            m3.0,
            m3.2,
            last.2
        );
        println!(
            "{}",
            json!({"kind": "soak", "minutes": minutes.len(), "rss_mb_minute3": mb(m3.1), "rss_mb_last": mb(last.1),
                   "rss_mb_max_after_minute3": mb(later_max_rss), "query_p99_ms_minute3": m3.2, "query_p99_ms_last": last.2,
                   "failed": failed, "check": check})
        );
    }
    ensure!(failed == 0, "{failed} requests failed during the soak");
    Ok(())
}
