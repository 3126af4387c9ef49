//! Prometheus metrics through the `metrics` facade and `metrics-exporter-prometheus` (no HTTP
//! listener of its own: the API renders [`render`] at `GET /metrics`).
//!
//! Every family is a constant here with its help text ([`describe`]), and each thing that
//! happens is reported by one function, so a call site cannot misspell a name or a label.

use std::collections::{BTreeSet, HashMap};
use std::sync::{LazyLock, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const EVENTS_ACCEPTED: &str = "jetstream_events_accepted_total";
pub const EVENTS_REJECTED: &str = "jetstream_events_rejected_total";
pub const COMMITS: &str = "jetstream_commits_total";
pub const COMMIT_SECONDS: &str = "jetstream_commit_duration_seconds";
pub const COMMIT_EVENTS: &str = "jetstream_commit_events";
pub const WRITER_QUEUE: &str = "jetstream_writer_queue_depth";
pub const FRESHNESS: &str = "jetstream_freshness_seconds";
pub const HTTP_REQUESTS: &str = "jetstream_http_requests_total";
pub const HTTP_SECONDS: &str = "jetstream_http_request_duration_seconds";
pub const CACHE_HITS: &str = "jetstream_read_cache_hits_total";
pub const STORE_READS: &str = "jetstream_store_reads_total";
pub const KAFKA_RECORDS: &str = "jetstream_kafka_records_consumed_total";
pub const KAFKA_REBALANCES: &str = "jetstream_kafka_rebalances_total";
pub const KAFKA_FENCED: &str = "jetstream_kafka_fenced_batches_total";
pub const KAFKA_LAG: &str = "jetstream_kafka_partition_lag";
pub const BUILD_INFO: &str = "jetstream_build_info";
pub const UPTIME: &str = "jetstream_uptime_seconds";
pub const RSS: &str = "process_resident_memory_bytes";
pub const OPEN_FDS: &str = "process_open_fds";
pub const STORE_DATABASE: &str = "jetstream_store_database_bytes";
pub const STORE_WAL: &str = "jetstream_store_wal_bytes";
pub const STORE_FREE: &str = "jetstream_store_free_bytes";

/// Sources, as label values.
pub const SOURCE_HTTP: &str = "http";
pub const SOURCE_KAFKA: &str = "kafka";

/// The label of an event name the configuration does not declare.
const OTHER_EVENT: &str = "other";

/// Seconds: from half a millisecond (a commit on a fast disk) to a minute (a Kafka backlog).
const SECONDS_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
/// Events in one commit: one request of one event up to `ingest.max_batch_events`.
const EVENTS_BUCKETS: &[f64] = &[1.0, 10.0, 100.0, 1_000.0, 10_000.0, 50_000.0, 100_000.0];

struct Recorder {
    handle: PrometheusHandle,
    started: Instant,
}

static RECORDER: OnceLock<Recorder> = OnceLock::new();
static DECLARED_EVENTS: OnceLock<BTreeSet<String>> = OnceLock::new();

/// Installs the process-wide recorder (once; later calls find it) and describes every family.
pub fn install() {
    RECORDER.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets(SECONDS_BUCKETS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(COMMIT_EVENTS.into()), EVENTS_BUCKETS))
            .expect("the bucket lists are not empty");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics shows only build and process figures");
        }
        spawn_upkeep(handle.clone());
        describe();
        gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        Recorder { handle, started: Instant::now() }
    });
}

/// How often histogram samples are folded into their buckets when nobody scrapes `/metrics`.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Folds the recorded histogram samples into their buckets every [`UPKEEP_EVERY`]. A recorder made
/// with `build_recorder` keeps every sample until it is rendered or upkept: without this, a server
/// nobody scraped grew by ~40 MB a minute at 30,000 events/s (the freshness histogram takes a sample
/// per event), the soak in bench/README.md. A thread, not a task: `install` may run before any
/// runtime, and the thread lives as long as the process.
fn spawn_upkeep(handle: PrometheusHandle) {
    let started = std::thread::Builder::new().name("metrics-upkeep".into()).spawn(move || {
        loop {
            std::thread::sleep(UPKEEP_EVERY);
            handle.run_upkeep();
        }
    });
    if let Err(e) = started {
        tracing::warn!(error = %e, "cannot start the metrics upkeep thread; histograms are drained only when /metrics is read");
    }
}

/// The event names that may be labels (those the configuration declares); the first call wins.
pub fn declare_events<'a>(names: impl IntoIterator<Item = &'a str>) {
    let _ = DECLARED_EVENTS.set(names.into_iter().map(String::from).collect());
}

/// `name` if the configuration declares it, else `other`: a label never takes a value from the wire.
fn event_label(name: &str) -> String {
    match DECLARED_EVENTS.get() {
        Some(d) if d.contains(name) => name.to_string(),
        _ => OTHER_EVENT.to_string(),
    }
}

/// The text exposition of every family, with the process figures read now.
pub fn render() -> String {
    install();
    let r = RECORDER.get().expect("installed above");
    gauge!(UPTIME).set(r.started.elapsed().as_secs_f64());
    if let Some(rss) = resident_bytes() {
        gauge!(RSS).set(rss as f64);
    }
    if let Some(fds) = open_fds() {
        gauge!(OPEN_FDS).set(fds as f64);
    }
    let mut text = r.handle.render();
    render_freshness(&mut text);
    text
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(EVENTS_ACCEPTED, "Events committed, by source and (declared) event name.");
    describe_counter!(
        EVENTS_REJECTED,
        "Events rejected and kept as dead letters, by source, event name and reason class."
    );
    describe_counter!(
        COMMITS,
        "Store transactions of the writer, by outcome (ok, fenced, duplicate, rejected, failed)."
    );
    describe_histogram!(COMMIT_SECONDS, Unit::Seconds, "How long one store transaction took.");
    describe_histogram!(COMMIT_EVENTS, "Events (accepted and rejected) in one committed transaction.");
    describe_gauge!(WRITER_QUEUE, "Batches waiting for the writer when it last started a commit.");
    describe_counter!(HTTP_REQUESTS, "HTTP requests answered, by method, route template and status class.");
    describe_histogram!(
        HTTP_SECONDS,
        Unit::Seconds,
        "HTTP request latency (to the answer's head), by method and route template."
    );
    describe_counter!(CACHE_HITS, "Aggregate answers served from the read cache.");
    describe_counter!(
        STORE_READS,
        "Aggregate store reads, by path (request: on a request's path; background: ahead of it)."
    );
    describe_counter!(KAFKA_RECORDS, "Kafka records fetched and handed to validation.");
    describe_counter!(KAFKA_REBALANCES, "Kafka group rebalances seen by this consumer, by kind (assign, revoke).");
    describe_counter!(
        KAFKA_FENCED,
        "Kafka batches refused by the store's offset fence (another consumer advanced the partition)."
    );
    describe_gauge!(
        KAFKA_LAG,
        "High watermark minus the store's next offset, per owned partition (refreshed every 15 s)."
    );
    describe_gauge!(BUILD_INFO, "Always 1; the version is a label.");
    describe_gauge!(UPTIME, Unit::Seconds, "Seconds since the metrics were installed (process start).");
    describe_gauge!(RSS, Unit::Bytes, "Resident memory, from /proc/self/status.");
    describe_gauge!(OPEN_FDS, "Open file descriptors, from /proc/self/fd.");
    describe_gauge!(STORE_DATABASE, Unit::Bytes, "The store's database (SQLite: the main file), every second.");
    describe_gauge!(STORE_WAL, Unit::Bytes, "SQLite's write-ahead log (kept under storage.wal_limit_bytes).");
    describe_gauge!(
        STORE_FREE,
        Unit::Bytes,
        "Free space on the store's file system; under storage.min_free_bytes ingest is refused (507)."
    );
}

/// The store's footprint, as the disk watch read it.
pub fn store_footprint(database: u64, wal: Option<u64>, free: Option<u64>) {
    gauge!(STORE_DATABASE).set(database as f64);
    if let Some(w) = wal {
        gauge!(STORE_WAL).set(w as f64);
    }
    if let Some(f) = free {
        gauge!(STORE_FREE).set(f as f64);
    }
}

/// A committed batch of `source`: `count` events named `name`.
pub fn events_accepted(source: &'static str, name: &str, count: u64) {
    counter!(EVENTS_ACCEPTED, "source" => source, "event" => event_label(name)).increment(count);
}

/// A rejected event of `source` (its name, when it had one) for a reason of class `reason`.
pub fn events_rejected(source: &'static str, name: Option<&str>, reason: &'static str, count: u64) {
    let event = name.map_or_else(|| "unknown".to_string(), event_label);
    counter!(EVENTS_REJECTED, "source" => source, "event" => event, "reason" => reason).increment(count);
}

/// A store transaction of the writer ended with `outcome` after `took`.
pub fn commit(outcome: &'static str, took: Duration, events: u64) {
    counter!(COMMITS, "outcome" => outcome).increment(1);
    histogram!(COMMIT_SECONDS).record(took.as_secs_f64());
    if outcome == "ok" {
        histogram!(COMMIT_EVENTS).record(events as f64);
    }
}

pub fn writer_queue(depth: usize) {
    gauge!(WRITER_QUEUE).set(depth as f64);
}

/// `count` events of `source` whose source time was `age` before their commit.
pub fn freshness(source: &'static str, age: Duration, count: u64) {
    let mut f = FRESH.lock().unwrap_or_else(|e| e.into_inner());
    let i = match f.iter().position(|(s, _)| *s == source) {
        Some(i) => i,
        None => {
            f.push((source, Weighted::default()));
            f.len() - 1
        }
    };
    f[i].1.record(age.as_secs_f64(), count);
}

/// The freshness histogram, kept here rather than by the exporter: its histograms keep every sample
/// until they are rendered or upkept, and `record_many` pushes one sample per event (a run of a
/// thousand events with one source time, a thousand pushes), ~2.7 % of HTTP ingest's CPU in
/// bench/README.md's profile. Here a run of events is one addition to its bucket, same figures.
#[derive(Debug, Default, Clone)]
struct Weighted {
    /// Events per bucket of [`SECONDS_BUCKETS`] (not cumulative), the last one past them all.
    buckets: [u64; SECONDS_BUCKETS.len() + 1],
    count: u64,
    sum: f64,
}

impl Weighted {
    fn record(&mut self, seconds: f64, count: u64) {
        let b = SECONDS_BUCKETS.iter().position(|le| seconds <= *le).unwrap_or(SECONDS_BUCKETS.len());
        self.buckets[b] += count;
        self.count += count;
        self.sum += seconds * count as f64;
    }
}

static FRESH: Mutex<Vec<(&'static str, Weighted)>> = Mutex::new(Vec::new());

/// The freshness family in the text exposition format, one histogram per source seen.
fn render_freshness(out: &mut String) {
    use std::fmt::Write;
    let f = FRESH.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let _ = writeln!(out, "# HELP {FRESHNESS} {FRESHNESS_HELP}");
    let _ = writeln!(out, "# TYPE {FRESHNESS} histogram");
    for (source, w) in &f {
        let mut cumulative = 0;
        for (le, n) in SECONDS_BUCKETS.iter().zip(&w.buckets) {
            cumulative += n;
            let _ = writeln!(out, "{FRESHNESS}_bucket{{source=\"{source}\",le=\"{le}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{FRESHNESS}_bucket{{source=\"{source}\",le=\"+Inf\"}} {}", w.count);
        let _ = writeln!(out, "{FRESHNESS}_sum{{source=\"{source}\"}} {}", w.sum);
        let _ = writeln!(out, "{FRESHNESS}_count{{source=\"{source}\"}} {}", w.count);
    }
    out.push('\n');
}

const FRESHNESS_HELP: &str = "From an event's receipt (HTTP) or record timestamp (Kafka) to its commit, per event.";

/// One HTTP request answered.
pub fn http_request(method: &str, route: &str, status: u16, took: Duration) {
    let class = match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    };
    let method = method_label(method);
    let record = |h: &HttpHandles| {
        h.requests[class].increment(1);
        h.seconds.record(took.as_secs_f64());
    };
    // Recorded under the read lock: no clone of the handles' six `Arc`s per request.
    {
        let all = HTTP_HANDLES.read().unwrap_or_else(|e| e.into_inner());
        if let Some((_, h)) = all.get(route).and_then(|by_method| by_method.iter().find(|(m, _)| *m == method)) {
            record(h);
            return;
        }
    }
    let mut all = HTTP_HANDLES.write().unwrap_or_else(|e| e.into_inner());
    let by_method = all.entry(route.into()).or_default();
    match by_method.iter().find(|(m, _)| *m == method) {
        Some((_, h)) => record(h),
        None => {
            let h = HttpHandles::register(method, route);
            record(&h);
            by_method.push((method, h));
        }
    }
}

/// The HTTP metrics of one method and route template, registered once: registering hashes and
/// allocates the labels, which cost a few per cent of a cached seed request (bench/README.md).
struct HttpHandles {
    /// By status class: 1xx … 5xx.
    requests: [metrics::Counter; 5],
    seconds: metrics::Histogram,
}

impl HttpHandles {
    fn register(method: &'static str, route: &str) -> Self {
        let route = route.to_string();
        let requests = ["1xx", "2xx", "3xx", "4xx", "5xx"]
            .map(|class| counter!(HTTP_REQUESTS, "method" => method, "route" => route.clone(), "status" => class));
        Self { requests, seconds: histogram!(HTTP_SECONDS, "method" => method, "route" => route) }
    }
}

/// Each route's handles by method.
type ByMethod = Vec<(&'static str, HttpHandles)>;

/// By route template (a bounded set: the routes, and one label for requests no route matched).
static HTTP_HANDLES: LazyLock<RwLock<HashMap<Box<str>, ByMethod, foldhash::fast::RandomState>>> =
    LazyLock::new(Default::default);

/// A request's method as a label: HTTP lets a client send any token as its method, and a label
/// per made-up method would grow the registry without bound.
fn method_label(method: &str) -> &'static str {
    const KNOWN: [&str; 9] = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"];
    KNOWN.into_iter().find(|m| *m == method).unwrap_or("other")
}

/// The read cache's counters since start (kept by the cache itself, copied here when rendered).
pub fn read_cache(hits: u64, request_reads: u64, background_reads: u64) {
    counter!(CACHE_HITS).absolute(hits);
    counter!(STORE_READS, "path" => "request").absolute(request_reads);
    counter!(STORE_READS, "path" => "background").absolute(background_reads);
}

pub fn kafka_records(count: u64) {
    counter!(KAFKA_RECORDS).increment(count);
}

/// `kind`: `assign` or `revoke`.
pub fn kafka_rebalance(kind: &'static str) {
    counter!(KAFKA_REBALANCES, "kind" => kind).increment(1);
}

pub fn kafka_fenced() {
    counter!(KAFKA_FENCED).increment(1);
}

pub fn kafka_lag(partition: i32, lag: i64) {
    gauge!(KAFKA_LAG, "partition" => partition.to_string()).set(lag as f64);
}

/// Resident set size: `VmRSS` of `/proc/self/status` (in KiB there).
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn open_fds() -> Option<usize> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_of_events_counts_each_event_in_its_bucket() {
        let mut w = Weighted::default();
        w.record(0.003, 1000);
        w.record(0.2, 5);
        w.record(100.0, 2);
        *FRESH.lock().unwrap_or_else(|e| e.into_inner()) = vec![("test", w)];
        let mut text = String::new();
        render_freshness(&mut text);
        let line = |suffix: &str| {
            let prefix = format!("{FRESHNESS}{suffix} ");
            text.lines()
                .find_map(|l| l.strip_prefix(&prefix))
                .unwrap_or_else(|| panic!("{prefix} in {text}"))
                .to_string()
        };
        assert_eq!(line(r#"_bucket{source="test",le="0.0025"}"#), "0");
        assert_eq!(line(r#"_bucket{source="test",le="0.005"}"#), "1000");
        assert_eq!(line(r#"_bucket{source="test",le="0.1"}"#), "1000");
        assert_eq!(line(r#"_bucket{source="test",le="0.25"}"#), "1005");
        assert_eq!(line(r#"_bucket{source="test",le="60"}"#), "1005");
        assert_eq!(line(r#"_bucket{source="test",le="+Inf"}"#), "1007");
        assert_eq!(line(r#"_count{source="test"}"#), "1007");
        assert_eq!(line(r#"_sum{source="test"}"#).parse::<f64>().map(|s| (s - 204.0).abs() < 1e-9), Ok(true));
        assert!(
            text.starts_with(&format!("# HELP {FRESHNESS} "))
                && text.contains("# TYPE jetstream_freshness_seconds histogram")
        );
    }
}
