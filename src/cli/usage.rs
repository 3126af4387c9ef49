//! What the commands share: usage errors (exit code 2), loading settings, opening the store, the
//! address line scripts wait for, and how errors become exit codes.

use std::io::Write as _;

use super::args::{KafkaArgs, StoreArgs};
use super::error::UsageError;
use crate::app::Application;
use crate::config::{ConfigError, Settings};
use crate::storage::{self, StoreError};

pub(super) fn load_settings(args: &StoreArgs) -> anyhow::Result<Settings> {
    Ok(Settings::load(args.config.as_deref())?)
}

/// The settings file with the Kafka flags and the `JETSTREAM_KAFKA_<PROPERTY>` variables applied.
pub fn load_settings_with_kafka(store: &StoreArgs, kafka: &KafkaArgs) -> anyhow::Result<Settings> {
    let mut settings = load_settings(store)?;
    kafka.apply(&mut settings)?;
    settings.kafka.properties.merge_env(std::env::vars());
    Ok(settings)
}

pub(super) async fn open_store(args: &StoreArgs) -> anyhow::Result<std::sync::Arc<dyn storage::Store>> {
    storage::StoreUrl::parse(&args.store)?;
    Ok(storage::open(&args.store).await?)
}

/// Prints the address line that scripts and tests wait for.
pub fn announce(app: &Application) {
    app.log_startup();
    println!("listening on {}://{}", app.scheme(), app.local_addr());
    if let Some(ops) = app.ops_addr() {
        println!("ops listening on http://{ops}");
    }
    let _ = std::io::stdout().flush();
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
