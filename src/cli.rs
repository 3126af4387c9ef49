//! The command line: `serve`, `consume`, `send`, `demo`, `token …`, `check-config`.
//!
//! Exit codes: 0 success, 2 usage or configuration error (with what to fix), 1 anything else.

use std::io::{BufRead as _, Write as _};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use crate::app::{Application, shutdown_signal};
use crate::auth::{create_token, parse_scopes};
use crate::config::{ConfigError, Settings, parse_duration};
use crate::ingest::now_ms;
use crate::storage::{self, StoreError};

pub const DEFAULT_STORE: &str = "sqlite://./data/jetstream.db";

/// A mistake in how Jetstream was called or configured: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

#[derive(Parser)]
#[command(
    name = "jetstream",
    version,
    about = "Real-time analytics: events in, time-bucketed rollups, dashboard API out"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the server: HTTP ingest and the API (and the Kafka consumer when brokers are set).
    Serve(ServeArgs),
    /// Run only the Kafka consumer (no HTTP API): records → rollups in the store, exactly once.
    Consume(ConsumeArgs),
    /// Publish JSON events to a Kafka topic: given as arguments, or as NDJSON on stdin.
    Send(SendArgs),
    /// Run the server with a built-in traffic simulator and print a token and curl commands.
    Demo(DemoArgs),
    /// Manage API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Check the configuration file and the store URL; report every problem.
    CheckConfig(StoreArgs),
}

#[derive(Args, Clone)]
pub struct StoreArgs {
    /// Where data lives: sqlite://PATH.
    #[arg(long, env = "JETSTREAM_STORE", default_value = DEFAULT_STORE)]
    pub store: String,
    /// Settings file (TOML): event schemas, metrics, limits, retention.
    #[arg(long, env = "JETSTREAM_CONFIG")]
    pub config: Option<PathBuf>,
}

/// Kafka consumer options; each overrides the `[kafka]` section of the settings file.
#[derive(Args, Clone, Default)]
pub struct KafkaArgs {
    /// Comma-separated Kafka bootstrap servers (host:port); consuming starts when set.
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
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, env = "JETSTREAM_LISTEN", default_value = "127.0.0.1:8080")]
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
}

#[derive(Args, Clone)]
pub struct ConsumeArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

#[derive(Args, Clone)]
pub struct SendArgs {
    /// Comma-separated Kafka bootstrap servers (host:port).
    #[arg(long, env = "JETSTREAM_KAFKA_BROKERS")]
    pub brokers: String,
    /// Topic to publish to.
    #[arg(long, env = "JETSTREAM_KAFKA_TOPIC", default_value = "analytics")]
    pub topic: String,
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
        /// Comma-separated: read, ingest, admin.
        #[arg(long, default_value = "read")]
        scope: String,
        /// Lifetime such as 90s, 15m, 12h, 30d; no expiry when omitted.
        #[arg(long)]
        expires_in: Option<String>,
    },
    /// List tokens (never their secrets).
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Revoke a token by name.
    Revoke {
        #[command(flatten)]
        store: StoreArgs,
        name: String,
    },
}

fn load_settings(args: &StoreArgs) -> anyhow::Result<Settings> {
    Ok(Settings::load(args.config.as_deref())?)
}

/// The settings file with the Kafka flags applied.
pub fn load_settings_with_kafka(store: &StoreArgs, kafka: &KafkaArgs) -> anyhow::Result<Settings> {
    let mut settings = load_settings(store)?;
    kafka.apply(&mut settings)?;
    Ok(settings)
}

async fn open_store(args: &StoreArgs) -> anyhow::Result<std::sync::Arc<dyn storage::Store>> {
    storage::check_url(&args.store)?;
    Ok(storage::open(&args.store).await?)
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(a) => serve(a).await,
        Command::Consume(a) => consume(a).await,
        Command::Send(a) => send(a).await,
        Command::Demo(a) => crate::demo::run(a).await,
        Command::CheckConfig(a) => {
            let mut problems = Vec::new();
            if let Err(ConfigError(p)) = Settings::load(a.config.as_deref()) {
                problems.extend(p);
            }
            if let Err(e) = storage::check_url(&a.store) {
                problems.push(e.to_string());
            }
            if !problems.is_empty() {
                return Err(ConfigError(problems).into());
            }
            println!("configuration ok");
            Ok(())
        }
        Command::Token { command } => token(command).await,
    }
}

async fn serve(a: ServeArgs) -> anyhow::Result<()> {
    let mut settings = load_settings_with_kafka(&a.store, &a.kafka)?;
    if a.no_consume {
        // The consumer starts exactly when brokers are set (see `Application::build`).
        settings.kafka.brokers.clear();
    }
    storage::check_url(&a.store.store)?;
    // Checked before anything starts: a bad certificate is a usage error, not a half-started server.
    let tls = match (&a.tls_cert, &a.tls_key) {
        (Some(cert), Some(key)) => Some(crate::tls::load_config(cert, key).map_err(|e| UsageError(e.to_string()))?),
        _ => None,
    };
    let mut app = Application::build(settings, &a.store.store, &a.listen).await?;
    if let Some(config) = tls {
        app = app.with_tls(config);
    }
    announce(&app);
    app.run_until(shutdown_signal()).await
}

async fn consume(a: ConsumeArgs) -> anyhow::Result<()> {
    let settings = load_settings_with_kafka(&a.store, &a.kafka)?;
    storage::check_url(&a.store.store)?;
    if settings.kafka.brokers.is_empty() {
        return Err(UsageError(
            "jetstream consume needs brokers: --kafka-brokers HOST:PORT (or JETSTREAM_KAFKA_BROKERS, or \
             kafka.brokers in the config file)"
                .into(),
        )
        .into());
    }
    let k = &settings.kafka;
    println!(
        "consuming topic {} from {} as group {} into {} (no HTTP API; lag is logged every 15 s; \
         Ctrl-C or SIGTERM stops after the current batch commits)",
        k.topic, k.brokers, k.group, a.store.store
    );
    let _ = std::io::stdout().flush();
    let app = Application::build_consumer(settings, &a.store.store).await?;
    app.run_until(shutdown_signal()).await
}

/// `jetstream send`: each event must be a JSON object; a line that is not is reported and
/// skipped (exit code 1 at the end), the rest are sent.
async fn send(a: SendArgs) -> anyhow::Result<()> {
    use crate::ingest::kafka::{EventProducer, event_key};
    if a.brokers.trim().is_empty() || a.topic.trim().is_empty() {
        return Err(UsageError("--brokers and --topic must not be empty".into()).into());
    }
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let producer = EventProducer::new(a.brokers.trim(), a.topic.trim())?;
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
            for (i, line) in std::io::stdin().lock().lines().enumerate() {
                one(i + 1, &line.context("reading stdin")?)?;
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

/// Prints the address line that scripts and tests wait for.
pub fn announce(app: &Application) {
    println!("listening on {}://{}", app.scheme(), app.local_addr());
    let _ = std::io::stdout().flush();
}

async fn token(command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create { store, name, scope, expires_in } => {
            let scopes = parse_scopes(&scope).map_err(UsageError)?;
            let expires = expires_in.as_deref().map(parse_duration).transpose().map_err(UsageError)?;
            if name.trim().is_empty() || name.len() > 128 {
                return Err(UsageError("a token name must be 1 to 128 characters".into()).into());
            }
            let store = open_store(&store).await?;
            let secret = create_token(&*store, &name, &scopes, expires, now_ms()).await?;
            println!("{secret}");
        }
        TokenCommand::List { store } => {
            let store = open_store(&store).await?;
            let now = now_ms();
            println!("{:<24} {:<20} {:<20} {:<20} STATUS", "NAME", "SCOPES", "CREATED", "EXPIRES");
            for t in store.list_tokens().await? {
                let time = |ms: i64| {
                    chrono::DateTime::from_timestamp_millis(ms)
                        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                        .unwrap_or_default()
                };
                let status = match (t.revoked_ms, t.expires_ms) {
                    (Some(_), _) => "revoked",
                    (None, Some(e)) if e <= now => "expired",
                    _ => "active",
                };
                let expires = t.expires_ms.map(time).unwrap_or_else(|| "never".into());
                println!(
                    "{:<24} {:<20} {:<20} {:<20} {status}",
                    t.name,
                    t.scopes.join(","),
                    time(t.created_ms),
                    expires
                );
            }
        }
        TokenCommand::Revoke { store, name } => {
            let store = open_store(&store).await?;
            if !store.revoke_token(&name, now_ms()).await? {
                return Err(UsageError(format!("no active token named {name:?}")).into());
            }
            eprintln!("revoked {name}");
        }
    }
    Ok(())
}

/// The exit code for an error from `run`.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    let usage = e.chain().any(|c| {
        c.is::<UsageError>()
            || c.is::<ConfigError>()
            || matches!(c.downcast_ref::<StoreError>(), Some(StoreError::BadUrl(_) | StoreError::TokenExists(_)))
    });
    if usage { 2 } else { 1 }
}

/// Context for errors from the binary's edge.
pub fn describe(e: &anyhow::Error) -> String {
    format!("{e:#}")
}
