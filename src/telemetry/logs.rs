//! The log format: `text` (colour only when stderr is a terminal) or `json` (one object per
//! line, fields as fields), and the filter from `JETSTREAM_LOG` (default `info`; the demo also
//! quiets the access log).

use std::io::IsTerminal as _;

use tracing_appender::non_blocking::WorkerGuard;

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

/// Installs the process's subscriber (logs go to stderr). `extra` is a layer that sees every
/// event too (error tracking), if any.
///
/// Lines are formatted where they are logged and written by a thread of their own, through a
/// buffer flushed whenever no line is waiting: under load one write(2) carries many lines,
/// instead of one per access-log line on a request's path (bench/README.md, "The seed endpoints
/// against nginx"). Nothing is dropped: a logger finding the queue full waits. Keep the guard
/// until exit; dropping it writes what is still queued.
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
    let fmt = tracing_subscriber::fmt::layer().with_writer(writer);
    let fmt = match format {
        LogFormat::Json => fmt.json().flatten_event(true).with_current_span(true).with_span_list(false).boxed(),
        LogFormat::Text if std::io::stderr().is_terminal() => fmt.with_ansi(true).boxed(),
        LogFormat::Text => fmt.with_ansi(false).fmt_fields(plain_fields()).boxed(),
    };
    // The filter is global, so that a level it leaves out costs nothing in any layer.
    tracing_subscriber::registry().with(filter).with(extra).with(fmt).init();
    guard
}
