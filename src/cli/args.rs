//! The command line's shape (clap): subcommands, their flags and environment variables.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use super::error::UsageError;
use crate::config::Settings;

pub const DEFAULT_STORE: &str = "sqlite://./data/jetstream.db";

#[derive(Parser)]
#[command(
    name = "jetstream",
    version,
    about = "Real-time analytics: events in, time-bucketed rollups, dashboard API out"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

/// Logs and error tracking (every command).
#[derive(Args, Clone)]
pub struct TelemetryArgs {
    /// Log lines as `text` (coloured only on a terminal) or `json` (one object per line).
    #[arg(long, global = true, env = crate::telemetry::logs::FORMAT_ENV, default_value = "text")]
    pub log_format: crate::telemetry::logs::LogFormat,
    /// Report errors and panics to this Sentry-protocol DSN (Sentry, GlitchTip, self-hosted).
    #[arg(long, global = true, env = "JETSTREAM_SENTRY_DSN", hide_env_values = true)]
    pub sentry_dsn: Option<String>,
    /// The environment error reports are filed under.
    #[arg(long, global = true, env = "JETSTREAM_SENTRY_ENVIRONMENT", default_value = "production")]
    pub sentry_environment: String,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the server: HTTP ingest and the API (and the Kafka consumer when brokers are set).
    Serve(ServeArgs),
    /// Run only the Kafka consumer (no HTTP API): records → rollups in the store, exactly once.
    Consume(ConsumeArgs),
    /// Publish JSON events to a Kafka topic: given as arguments, or as NDJSON on stdin.
    Send(SendArgs),
    /// Run the server with a built-in traffic simulator and print a token and curl commands (in
    /// its own store, ./data/demo.db, unless --store names one; its tokens expire after 12 h).
    Demo(DemoArgs),
    /// Manage API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Check the configuration file and the store (it must answer); report every problem.
    CheckConfig(StoreArgs),
    /// Print a shell completion script: `jetstream completions bash > /etc/bash_completion.d/jetstream`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): `jetstream man > /usr/local/share/man/man1/jetstream.1`.
    Man,
    /// Rebuild rollups from the raw events, see how they match the declared metrics, drop old ones.
    Rollups {
        #[command(subcommand)]
        command: RollupsCommand,
    },
    /// Dead letters: replay those today's schemas accept.
    DeadLetters {
        #[command(subcommand)]
        command: DeadLettersCommand,
    },
    /// Show the configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand)]
pub enum RollupsCommand {
    /// Recompute metrics' rollups from the raw events while servers keep ingesting and answering;
    /// the rebuilt rows replace the old ones at once. Resumable: run it again after a crash.
    Rebuild {
        #[command(flatten)]
        store: StoreArgs,
        /// A metric to rebuild (repeatable); default: every declared metric.
        #[arg(long = "metric")]
        metrics: Vec<String>,
        /// Rebuild the last DURATION (e.g. 7d), from the start of its first UTC day.
        #[arg(long, conflicts_with = "from")]
        since: Option<String>,
        /// Rebuild from TIME (RFC 3339 or epoch ms), from the start of its UTC day.
        #[arg(long)]
        from: Option<String>,
        /// Events folded per step (each step is stored: what a crash can lose).
        #[arg(long, default_value_t = crate::rebuild::STEP_EVENTS, hide = true)]
        step_events: i64,
    },
    /// How the store's rollups match the declared metrics, and the latest rebuilds.
    Status {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Delete the rollups of metrics no longer declared (or of the ones named).
    Drop {
        #[command(flatten)]
        store: StoreArgs,
        /// A metric to drop (repeatable); default: every one no longer declared.
        #[arg(long = "metric")]
        metrics: Vec<String>,
    },
}

#[derive(Subcommand)]
pub enum DeadLettersCommand {
    /// Re-validate dead letters against today's schemas; ingest those that pass (with their
    /// original time) and remove them from the dead letters, exactly once.
    Replay {
        #[command(flatten)]
        store: StoreArgs,
        /// Only dead letters whose reason contains TEXT.
        #[arg(long)]
        reason_contains: Option<String>,
        /// Only dead letters received in the last DURATION (e.g. 24h).
        #[arg(long)]
        since: Option<String>,
        /// Count what would be replayed; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Print the effective configuration (defaults, file, flags and environment merged) as TOML,
    /// secrets masked.
    Show(ConfigShowArgs),
}

#[derive(Args, Clone)]
pub struct ConfigShowArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

#[derive(Args, Clone)]
pub struct StoreArgs {
    /// Where data lives: sqlite://PATH, or postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE with
    /// libpq's TLS parameters (?sslmode=verify-full&sslrootcert=CA.pem; sslcert/sslkey).
    // hide_env_values: clap would print the variable's value (a password in the URL) in --help.
    #[arg(long, env = "JETSTREAM_STORE", hide_env_values = true, default_value = DEFAULT_STORE)]
    pub store: String,
    /// Settings file (TOML): event schemas, metrics, limits, retention.
    #[arg(long, env = "JETSTREAM_CONFIG")]
    pub config: Option<PathBuf>,
}

/// Kafka consumer options; each overrides the `[kafka]` section of the settings file.
#[derive(Args, Clone, Default)]
pub struct KafkaArgs {
    /// Comma-separated Kafka bootstrap servers (host:port); consuming starts when set. Security
    /// (SASL, TLS) goes in `[kafka.properties]` or JETSTREAM_KAFKA_<PROPERTY> variables, e.g.
    /// JETSTREAM_KAFKA_SASL_PASSWORD for sasl.password.
    #[arg(long, env = "JETSTREAM_KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// Topic to consume [default: analytics].
    #[arg(long, env = "JETSTREAM_KAFKA_TOPIC")]
    pub kafka_topic: Option<String>,
    /// Consumer group [default: jetstream].
    #[arg(long, env = "JETSTREAM_KAFKA_GROUP")]
    pub kafka_group: Option<String>,
}

impl KafkaArgs {
    /// Flags (and their environment variables) override the file.
    pub fn apply(&self, settings: &mut Settings) -> Result<(), UsageError> {
        if let Some(b) = &self.kafka_brokers {
            settings.kafka.brokers = b.trim().to_string();
        }
        if let Some(t) = &self.kafka_topic {
            settings.kafka.topic = t.trim().to_string();
        }
        if let Some(g) = &self.kafka_group {
            settings.kafka.group = g.trim().to_string();
        }
        let k = &settings.kafka;
        if !k.brokers.is_empty() && (k.topic.is_empty() || k.group.is_empty()) {
            return Err(UsageError("the Kafka topic and group must not be empty".into()));
        }
        Ok(())
    }
}

#[derive(Args, Clone)]
pub struct ServeArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Address to listen on, HOST:PORT; port 0 picks a free port.
    #[arg(long, env = "JETSTREAM_LISTEN", default_value = "127.0.0.1:8080", value_parser = super::listen::parse_listen)]
    pub listen: String,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Serve the HTTP API (and HTTP ingest) only: no Kafka consumer, even when brokers are
    /// configured. The role of an API instance in a fleet whose consumers run `jetstream consume`.
    #[arg(long, env = "JETSTREAM_NO_CONSUME")]
    pub no_consume: bool,
    /// Serve HTTPS with this PEM certificate chain (leaf first); needs --tls-key.
    #[arg(long, env = "JETSTREAM_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "JETSTREAM_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Also serve /metrics, /healthz and /readyz without a token on this address (loopback or
    /// a private network: the scraper's side).
    #[arg(long, env = "JETSTREAM_OPS_LISTEN")]
    pub ops_listen: Option<String>,
}

#[derive(Args, Clone)]
pub struct ConsumeArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Serve /metrics, /healthz and /readyz without a token on this address (loopback or a
    /// private network: the scraper's side).
    #[arg(long, env = "JETSTREAM_OPS_LISTEN")]
    pub ops_listen: Option<String>,
}

#[derive(Args, Clone)]
pub struct SendArgs {
    /// Comma-separated Kafka bootstrap servers (host:port).
    #[arg(long, visible_alias = "kafka-brokers", env = "JETSTREAM_KAFKA_BROKERS")]
    pub brokers: String,
    /// Topic to publish to.
    #[arg(long, visible_alias = "kafka-topic", env = "JETSTREAM_KAFKA_TOPIC", default_value = "analytics")]
    pub topic: String,
    /// Settings file whose `[kafka.properties]` (SASL, TLS) the producer uses; the
    /// JETSTREAM_KAFKA_<PROPERTY> variables apply too.
    #[arg(long, env = "JETSTREAM_CONFIG")]
    pub config: Option<PathBuf>,
    /// How long to wait for the broker to answer before giving up (e.g. 5s, 1m).
    #[arg(long, default_value = "5s", value_parser = crate::config::parse_duration)]
    pub timeout: std::time::Duration,
    /// Event field whose value is the record key (keeps a product's events in one partition,
    /// in order); events without it get no key.
    #[arg(long, default_value = "product_id")]
    pub key_field: String,
    /// JSON events; when none are given, NDJSON is read from stdin (one event per line).
    pub events: Vec<String>,
}

#[derive(Args, Clone)]
pub struct DemoArgs {
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Simulated events per second.
    #[arg(long, default_value_t = 200)]
    pub rate: u32,
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it (only the token, on stdout).
    Create {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        name: String,
        /// Comma-separated: read, ingest, admin, metrics.
        #[arg(long, default_value = "read")]
        scope: String,
        /// Lifetime such as 90s, 15m, 12h, 30d; no expiry when omitted.
        #[arg(long)]
        expires_in: Option<String>,
    },
    /// List tokens (never their secrets); the store read is named on stderr.
    List {
        #[command(flatten)]
        store: StoreArgs,
        /// One JSON array (name, scopes, created_ms, expires_ms, status) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by name.
    Revoke {
        #[command(flatten)]
        store: StoreArgs,
        name: String,
    },
    /// Delete a token by name (active, revoked or expired): it stops working and leaves the list.
    Delete {
        #[command(flatten)]
        store: StoreArgs,
        name: String,
    },
}
