//! `jetstream check-config` and `jetstream config show`.

use super::args::{ConfigShowArgs, StoreArgs};
use super::usage::load_settings_with_kafka;
use crate::config::{ConfigError, Settings};
use crate::storage;

/// Every problem in one pass: the file (each section), the store URL and whether the store
/// answers; warnings (valid but probably not meant) go to stderr and do not fail the check.
pub(super) async fn check(a: StoreArgs) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    match Settings::load(a.config.as_deref()) {
        Ok(s) => warnings.extend(s.warnings()),
        Err(ConfigError(p)) => problems.extend(p),
    }
    match storage::StoreUrl::parse(&a.store) {
        Ok(url) => match storage::probe(&url).await {
            Ok(note) => warnings.extend(note),
            Err(e) => problems.push(format!("store {url}: {e}")),
        },
        Err(e) => problems.push(e.to_string()),
    }
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    if !problems.is_empty() {
        return Err(ConfigError(problems).into());
    }
    println!("configuration ok");
    Ok(())
}

/// The effective configuration as TOML: defaults, the file, the flags and the environment merged;
/// secrets masked.
pub(super) fn show(a: ConfigShowArgs) -> anyhow::Result<()> {
    let settings = load_settings_with_kafka(&a.store, &a.kafka)?;
    let store =
        storage::StoreUrl::parse(&a.store.store).map_or_else(|_| storage::redact(&a.store.store), |u| u.redacted());
    let file = a.store.config.as_ref().map_or("none (built-in defaults)".to_string(), |p| p.display().to_string());
    println!("# The effective configuration (secrets masked).\n# config file: {file}\n# store: {store}\n");
    print!("{}", toml::to_string(&settings)?);
    Ok(())
}
