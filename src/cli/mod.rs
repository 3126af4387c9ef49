//! The command line: `serve`, `consume`, `send`, `demo`, `token …`, `check-config`.
//!
//! Exit codes: 0 success, 2 usage or configuration error (with what to fix), 1 anything else.
//!
//! - [`args`]: the commands' shape; [`usage`]: what they share;
//! - [`demo`], [`send`], [`token`]: one command each; [`config`]: `check-config`, `config show`;
//!   `serve` and `consume` here.

mod args;
mod config;
mod demo;
mod error;
mod listen;
mod rollups;
mod send;
mod token;
mod usage;

use std::io::Write as _;

pub use self::args::Command;
use self::args::{ConfigCommand, ConsumeArgs, ServeArgs};
use self::error::UsageError;
use self::usage::{announce, load_settings_with_kafka};
use crate::app::{Application, shutdown_signal};
use crate::storage;

pub use args::{Cli, DEFAULT_STORE, TelemetryArgs};
pub use usage::{describe, exit_code};

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(a) => serve(a).await,
        Command::Consume(a) => consume(a).await,
        Command::Send(a) => send::run(a).await,
        Command::Demo(a) => demo::run(a).await,
        Command::CheckConfig(a) => config::check(a).await,
        Command::Config { command: ConfigCommand::Show(a) } => config::show(a),
        Command::Man => {
            use clap::CommandFactory as _;
            clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
            Ok(())
        }
        Command::Completions { shell } => {
            use clap::CommandFactory as _;
            clap_complete::generate(shell, &mut Cli::command(), "jetstream", &mut std::io::stdout());
            Ok(())
        }
        Command::Token { command } => token::run(command).await,
        Command::Rollups { command } => rollups::run(command).await,
        Command::DeadLetters { command } => rollups::dead_letters(command).await,
    }
}

async fn serve(a: ServeArgs) -> anyhow::Result<()> {
    let mut settings = load_settings_with_kafka(&a.store, &a.kafka)?;
    if a.no_consume {
        // The consumer starts exactly when brokers are set (see `Application::build`).
        settings.kafka.brokers.clear();
    }
    storage::StoreUrl::parse(&a.store.store)?;
    // Checked before anything starts: a bad certificate is a usage error, not a half-started server.
    let tls = match (&a.tls_cert, &a.tls_key) {
        (Some(cert), Some(key)) => {
            Some(crate::server::tls::load_config(cert, key).map_err(|e| UsageError(e.to_string()))?)
        }
        _ => None,
    };
    let mut app = Application::build(settings, &a.store.store, &a.listen)
        .await
        .map_err(|e| listen::explain_bind_error(e, &a.listen))?;
    if let Some(config) = tls {
        app = app.with_tls(config);
    }
    if let Some(ops) = &a.ops_listen {
        app = app.with_ops_listener(ops).await?;
    }
    let stop = shutdown_signal();
    announce(&app);
    app.run_until(stop).await
}

async fn consume(a: ConsumeArgs) -> anyhow::Result<()> {
    let settings = load_settings_with_kafka(&a.store, &a.kafka)?;
    storage::StoreUrl::parse(&a.store.store)?;
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
    let mut app = Application::build_consumer(settings, &a.store.store).await?;
    let stop = shutdown_signal();
    if let Some(ops) = &a.ops_listen {
        app = app.with_ops_listener(ops).await?;
        if let Some(addr) = app.ops_addr() {
            println!("ops listening on http://{addr}");
            let _ = std::io::stdout().flush();
        }
    }
    app.log_startup();
    app.run_until(stop).await
}
