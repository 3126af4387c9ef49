//! The log format: `text` (colour only when stderr is a terminal) or `json` (one object per
//! line, fields as fields), and the filter from `JETSTREAM_LOG` (default `info`; the demo also
//! quiets the access log). Access lines are written by hand where the format allows ([`access`]).

use std::cell::{Cell, RefCell};
use std::io::{IsTerminal as _, Write as _};
use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::SystemTime;

use tracing_appender::non_blocking::{NonBlocking, WorkerGuard};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::field::MakeExt as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// The environment variable that sets the format when `--log-format` is not given.
pub const FORMAT_ENV: &str = "JETSTREAM_LOG_FORMAT";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("unknown log format {other:?}: use text or json")),
        }
    }
}

/// Text fields as tracing-subscriber's default writes them without colours (`name=value`, the
/// message bare, `log.*` fields of bridged `log` records left out), without its styles: its
/// visitor writes every field name through a `nu_ansi_term` style even with ANSI off, ~6,600
/// instructions of a ten-field access line (bench/README.md, "With the access log on").
fn plain_fields() -> impl for<'w> tracing_subscriber::fmt::FormatFields<'w> + Send + Sync + 'static {
    tracing_subscriber::fmt::format::debug_fn(|w, field, value| match field.name() {
        "message" => write!(w, "{value:?}"),
        name if name.starts_with("log.") => Ok(()),
        name => write!(w, "{}={value:?}", name.strip_prefix("r#").unwrap_or(name)),
    })
    .delimited(" ")
}

/// The formatting layer: JSON, coloured text on a terminal, or plain text.
fn fmt_layer<S, W, T>(
    format: LogFormat,
    terminal: bool,
    writer: W,
    timer: T,
) -> Box<dyn tracing_subscriber::Layer<S> + Send + Sync + 'static>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
    T: tracing_subscriber::fmt::time::FormatTime + Send + Sync + 'static,
{
    let fmt = tracing_subscriber::fmt::layer().with_writer(writer).with_timer(timer);
    match format {
        LogFormat::Json => fmt.json().flatten_event(true).with_current_span(true).with_span_list(false).boxed(),
        LogFormat::Text if terminal => fmt.with_ansi(true).boxed(),
        LogFormat::Text => fmt.with_ansi(false).fmt_fields(plain_fields()).boxed(),
    }
}

/// Installs the process's subscriber (logs go to stderr). `extra` is a layer that sees every
/// event too (error tracking), if any.
///
/// Lines are formatted where they are logged and written by a thread of their own, through a
/// buffer flushed whenever no line is waiting: under load one write(2) carries many lines,
/// instead of one per access-log line on a request's path (bench/README.md, "The seed endpoints
/// against nginx"). Nothing is dropped: a logger finding the queue full waits. Keep the guard
/// until exit; dropping it writes what is still queued.
///
/// Access lines skip the formatter when they can (see [`access`]).
#[must_use = "dropping the guard stops the log writer"]
pub fn init<L>(format: LogFormat, default_filter: &str, extra: Option<L>) -> WorkerGuard
where
    L: tracing_subscriber::Layer<tracing_subscriber::layer::Layered<EnvFilter, tracing_subscriber::Registry>>
        + Send
        + Sync
        + 'static,
{
    let filter = EnvFilter::try_from_env("JETSTREAM_LOG").unwrap_or_else(|_| EnvFilter::new(default_filter));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("jetstream-log")
        .finish(std::io::BufWriter::with_capacity(64 * 1024, std::io::stderr()));
    let terminal = std::io::stderr().is_terminal();
    if extra.is_none() && !(terminal && format == LogFormat::Text) {
        let _ = ACCESS_SINK.set(AccessSink { writer: writer.clone(), json: format == LogFormat::Json });
    }
    let fmt = fmt_layer(format, terminal, writer, tracing_subscriber::fmt::time::SystemTime);
    // The filter is global, so that a level it leaves out costs nothing in any layer.
    tracing_subscriber::registry().with(filter).with(extra).with(fmt).init();
    guard
}

/// The access log's target: `JETSTREAM_LOG=jetstream::access=off` (or `warn`) silences it.
pub const ACCESS_TARGET: &str = "jetstream::access";

/// One access-log line's fields (see `api::access`).
#[derive(Debug, Clone, Copy)]
pub struct AccessLine<'a> {
    pub method: &'a str,
    /// The route template, or `unmatched`.
    pub route: &'a str,
    pub status: u16,
    pub latency_ms: f64,
    /// The body's length, when it is known.
    pub bytes: Option<u64>,
    /// The token's name, once an extractor checked it.
    pub token: Option<&'a str>,
    pub request_id: &'a str,
    /// `-` when unknown.
    pub client: Option<IpAddr>,
}

/// Where hand-written access lines go: the log thread's writer, and which of the two plain
/// formats it takes. Left unset — and the line goes through `tracing` like any other — for
/// coloured text on a terminal, and when error tracking is on (its layer keeps every line as a
/// breadcrumb).
struct AccessSink {
    writer: NonBlocking,
    json: bool,
}

static ACCESS_SINK: OnceLock<AccessSink> = OnceLock::new();

/// Logs an access line (the caller checked that `jetstream::access` is enabled at INFO).
///
/// With plain text or JSON logs, the line is written by hand — the same bytes the `tracing`
/// formatter writes for the same event (a unit test holds the two together) at a fraction of
/// the cost: the event path visited its ten fields through `dyn Visit`, formatted the timestamp
/// from scratch and the client's address into a `String` of its own; by hand a cached answer
/// with its line takes ~36,800 instructions instead of ~44,900 (bench/README.md, "The access
/// line by hand").
pub fn access(line: &AccessLine<'_>) {
    match ACCESS_SINK.get() {
        Some(sink) => {
            LINE.with_borrow_mut(|buf| {
                buf.clear();
                let now = Timestamp::now();
                if sink.json {
                    json_access(buf, now.as_str(), line);
                } else {
                    text_access(buf, now.as_str(), line);
                }
                // Into the log thread's queue; an error means the log thread is gone (the process
                // is stopping), which the `tracing` writer ignores too.
                let _ = sink.writer.clone().write_all(buf);
            });
        }
        None => line.event(),
    }
}

thread_local! {
    /// The line being formatted, kept per thread: no allocation per line but the log queue's own.
    static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(256));
}

impl AccessLine<'_> {
    /// The line as a `tracing` event, as it was logged before it was written by hand.
    fn event(&self) {
        tracing::info!(
            target: ACCESS_TARGET,
            method = %self.method,
            route = %self.route,
            status = self.status,
            latency_ms = self.latency_ms,
            bytes = self.bytes,
            token = self.token,
            request_id = %self.request_id,
            client = %ClientText(self.client),
            "request"
        );
    }
}

/// The client's address, or `-`.
struct ClientText(Option<IpAddr>);

impl std::fmt::Display for ClientText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(ip) => ip.fmt(f),
            None => f.write_str("-"),
        }
    }
}

impl serde::Serialize for ClientText {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The text line: tracing-subscriber's full format without colours, fields as `plain_fields`
/// writes them (`%` fields bare, strings quoted with `Debug`'s escapes, floats as `Debug`).
fn text_access(buf: &mut Vec<u8>, timestamp: &str, l: &AccessLine<'_>) {
    let mut ints = itoa::Buffer::new();
    buf.extend_from_slice(timestamp.as_bytes());
    buf.extend_from_slice(b"  INFO ");
    buf.extend_from_slice(ACCESS_TARGET.as_bytes());
    buf.extend_from_slice(b": request method=");
    buf.extend_from_slice(l.method.as_bytes());
    buf.extend_from_slice(b" route=");
    buf.extend_from_slice(l.route.as_bytes());
    buf.extend_from_slice(b" status=");
    buf.extend_from_slice(ints.format(l.status).as_bytes());
    // Writing to a `Vec` cannot fail. (ryu would be cheaper, but where two shortest digit
    // strings are equally near it does not always pick `Debug`'s: 722702184374692.3 for .2.)
    let _ = write!(buf, " latency_ms={:?}", l.latency_ms);
    if let Some(bytes) = l.bytes {
        buf.extend_from_slice(b" bytes=");
        buf.extend_from_slice(ints.format(bytes).as_bytes());
    }
    if let Some(token) = l.token {
        buf.extend_from_slice(b" token=");
        debug_str(buf, token);
    }
    buf.extend_from_slice(b" request_id=");
    buf.extend_from_slice(l.request_id.as_bytes());
    buf.extend_from_slice(b" client=");
    match l.client {
        Some(IpAddr::V4(ip)) => {
            for (i, octet) in ip.octets().into_iter().enumerate() {
                if i > 0 {
                    buf.push(b'.');
                }
                buf.extend_from_slice(ints.format(octet).as_bytes());
            }
        }
        Some(ip @ IpAddr::V6(_)) => {
            let _ = write!(buf, "{ip}");
        }
        None => buf.push(b'-'),
    }
    buf.push(b'\n');
}

/// `{:?}` of a string: quoted, and as is when it holds only printable ASCII other than a quote
/// or a backslash (a token's name, as a rule); otherwise with `Debug`'s escapes.
fn debug_str(buf: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\') {
        buf.push(b'"');
        buf.extend_from_slice(s.as_bytes());
        buf.push(b'"');
    } else {
        // Writing to a `Vec` cannot fail.
        let _ = write!(buf, "{s:?}");
    }
}

/// The JSON line: the object tracing-subscriber's flattened JSON format writes for the event,
/// key for key, through serde.
fn json_access(buf: &mut Vec<u8>, timestamp: &str, l: &AccessLine<'_>) {
    #[derive(serde::Serialize)]
    struct Line<'a> {
        timestamp: &'a str,
        level: &'static str,
        message: &'static str,
        method: &'a str,
        route: &'a str,
        status: u16,
        latency_ms: f64,
        #[serde(skip_serializing_if = "Option::is_none")]
        bytes: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        token: Option<&'a str>,
        request_id: &'a str,
        client: ClientText,
        target: &'static str,
    }
    let line = Line {
        timestamp,
        level: "INFO",
        message: "request",
        method: l.method,
        route: l.route,
        status: l.status,
        latency_ms: l.latency_ms,
        bytes: l.bytes,
        token: l.token,
        request_id: l.request_id,
        client: ClientText(l.client),
        target: ACCESS_TARGET,
    };
    // Strings, integers and a float (`null` if not finite) into a `Vec`: this cannot fail.
    let _ = serde_json::to_writer(&mut *buf, &line);
    buf.push(b'\n');
}

/// The current time as tracing-subscriber's timer writes it: RFC 3339, UTC, microseconds
/// (`2026-12-03T10:12:00.123456Z`). The date and time of day are worked out once a second per
/// thread; a line adds its microseconds.
struct Timestamp {
    text: [u8; 27],
}

thread_local! {
    /// The last second formatted on this thread, and its text up to the seconds.
    static SECOND: Cell<(u64, [u8; 19])> = const { Cell::new((u64::MAX, [0; 19])) };
}

impl Timestamp {
    fn now() -> Self {
        Self::at(SystemTime::now())
    }

    fn at(time: SystemTime) -> Self {
        let since = time.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        let secs = since.as_secs();
        let (cached, mut prefix) = SECOND.get();
        if cached != secs {
            let date = chrono::DateTime::from_timestamp(secs as i64, 0).unwrap_or_default();
            let mut text = String::with_capacity(19);
            let _ = std::fmt::Write::write_fmt(&mut text, format_args!("{}", date.format("%Y-%m-%dT%H:%M:%S")));
            // Years past 9999 would take more than 19 bytes: not a clock this process runs on.
            let n = text.len().min(19);
            prefix[..n].copy_from_slice(&text.as_bytes()[..n]);
            SECOND.set((secs, prefix));
        }
        let mut text = [0u8; 27];
        text[..19].copy_from_slice(&prefix);
        text[19] = b'.';
        let mut micros = since.subsec_micros();
        for i in (20..26).rev() {
            text[i] = b'0' + (micros % 10) as u8;
            micros /= 10;
        }
        text[26] = b'Z';
        Self { text }
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.text).expect("ASCII")
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use proptest::prelude::*;
    use tracing_subscriber::fmt::format::Writer;
    use tracing_subscriber::fmt::time::FormatTime;

    use super::*;

    const AT: &str = "2026-12-03T10:12:00.123456Z";

    /// The same instant for both paths.
    struct Fixed;

    impl FormatTime for Fixed {
        fn format_time(&self, w: &mut Writer<'_>) -> std::fmt::Result {
            w.write_str(AT)
        }
    }

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("not poisoned").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
        type Writer = Self;
        fn make_writer(&'a self) -> Self {
            self.clone()
        }
    }

    /// The line as the `tracing` formatter of the process's layer writes it.
    fn through_tracing(format: LogFormat, line: &AccessLine<'_>) -> String {
        let out = Captured::default();
        let subscriber = tracing_subscriber::registry().with(fmt_layer(format, false, out.clone(), Fixed));
        tracing::subscriber::with_default(subscriber, || line.event());
        let bytes = out.0.lock().expect("not poisoned").clone();
        String::from_utf8(bytes).expect("UTF-8")
    }

    fn by_hand(format: LogFormat, line: &AccessLine<'_>) -> String {
        let mut buf = Vec::new();
        match format {
            LogFormat::Json => json_access(&mut buf, AT, line),
            LogFormat::Text => text_access(&mut buf, AT, line),
        }
        String::from_utf8(buf).expect("UTF-8")
    }

    fn ip() -> impl Strategy<Value = Option<IpAddr>> {
        prop_oneof![
            Just(None),
            any::<[u8; 4]>().prop_map(|b| Some(IpAddr::from(b))),
            any::<[u8; 16]>().prop_map(|b| Some(IpAddr::from(b))),
        ]
    }

    fn latency() -> impl Strategy<Value = f64> {
        prop_oneof![0.0..10.0f64, 0.0..1e-6f64, 1e6..1e18f64, any::<f64>()]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// The hand-written line is, byte for byte, what tracing-subscriber writes for the same
        /// event in either format: a client's request id with quotes or tabs, a token's name in
        /// any script, sub-microsecond and huge latencies (and NaN), both address families.
        #[test]
        fn the_access_line_by_hand_is_the_tracing_line(
            method in prop::sample::select(vec!["GET", "POST", "HEAD", "OPTIONS"]),
            route in "[ -~]{0,40}",
            status in 100u16..600,
            latency_ms in latency(),
            bytes in prop::option::of(any::<u64>()),
            token in prop::option::of("\\PC{0,12}"),
            request_id in "[ -~\t]{0,128}",
            client in ip(),
        ) {
            let line = AccessLine {
                method, route: &route, status, latency_ms, bytes, token: token.as_deref(), request_id: &request_id, client,
            };
            for format in [LogFormat::Text, LogFormat::Json] {
                prop_assert_eq!(by_hand(format, &line), through_tracing(format, &line), "{:?}", format);
            }
        }

        /// The timestamp is tracing-subscriber's: RFC 3339, UTC, microseconds, across second,
        /// day and year boundaries (the date is cached per second).
        #[test]
        fn the_timestamp_is_rfc3339_with_microseconds(micros in 0u64..8_000_000_000_000_000) {
            let time = SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(micros);
            let expected = chrono::DateTime::<chrono::Utc>::from(time).to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
            let first = Timestamp::at(time);
            prop_assert_eq!(first.as_str(), expected.as_str());
            // And again, from the cache.
            let again = Timestamp::at(time);
            prop_assert_eq!(again.as_str(), expected.as_str());
        }
    }
}
