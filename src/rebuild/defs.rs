//! The metric definitions a store's rollups were built with, and what changed since.
//!
//! Each metric's definition (event, aggregation, field, dimensions) has a fingerprint, kept in the
//! store. At start the configuration is compared with it: a new metric has no history, a changed
//! one has history computed another way; both are reported with the command that rebuilds them
//! (or rebuilt at once with `rollups.auto_rebuild`). A metric that is no longer declared is not
//! served (the API names it as missing) and `jetstream rollups drop` deletes its rows.

use sha2::{Digest, Sha256};

use crate::config::{MetricDef, Settings};
use crate::storage::rebuild::MetricRecord;
use crate::storage::{Store, StoreError};

pub const CURRENT: &str = "current";
pub const STALE: &str = "stale";

/// A metric definition's fingerprint: what its buckets hold (not its name).
pub fn fingerprint(m: &MetricDef) -> String {
    let canonical = serde_json::json!({
        "event": m.event,
        "aggregation": m.aggregation,
        "field": m.field,
        "dimensions": m.dimensions,
    });
    let digest = Sha256::digest(canonical.to_string().as_bytes());
    hex::encode(&digest[..8])
}

/// Records of `metrics` as rebuilt now.
pub fn current_records(settings: &Settings, metrics: &[String]) -> Vec<MetricRecord> {
    let now = crate::clock::now_ms();
    settings
        .metrics
        .iter()
        .filter(|m| metrics.contains(&m.name))
        .map(|m| MetricRecord {
            name: m.name.clone(),
            fingerprint: fingerprint(m),
            state: CURRENT.into(),
            updated_ms: now,
        })
        .collect()
}

/// How the configuration's metrics compare with the store's rollups.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Changes {
    /// Declared, with no rollups before now.
    pub new: Vec<String>,
    /// Declared with another definition than its rollups were built with.
    pub changed: Vec<String>,
    /// New or changed at an earlier start and not rebuilt since.
    pub stale: Vec<String>,
    /// Rollups of a metric no longer declared.
    pub removed: Vec<String>,
}

impl Changes {
    /// Metrics whose rollups do not match their definition.
    pub fn to_rebuild(&self) -> Vec<String> {
        let mut v: Vec<String> = self.new.iter().chain(&self.changed).chain(&self.stale).cloned().collect();
        v.sort();
        v
    }

    pub fn is_empty(&self) -> bool {
        self.to_rebuild().is_empty() && self.removed.is_empty()
    }
}

/// Compares the configuration with the store's records, and records what is new or changed (as
/// stale, until a rebuild makes it current). A store with no records yet (new, or made before
/// definitions were kept) records every declared metric as current.
pub async fn check(store: &dyn Store, settings: &Settings) -> Result<Changes, StoreError> {
    let records = store.metric_records().await?;
    let now = crate::clock::now_ms();
    // Nothing stored yet: no history to be wrong about.
    let empty = records.is_empty() || store.raw_watermark().await? == 0;
    let mut changes = Changes::default();
    let mut put = Vec::new();
    for m in &settings.metrics {
        let fp = fingerprint(m);
        let rec = records.iter().find(|r| r.name == m.name);
        let state = match rec {
            _ if empty => CURRENT,
            None => {
                changes.new.push(m.name.clone());
                STALE
            }
            Some(r) if r.fingerprint != fp => {
                changes.changed.push(m.name.clone());
                STALE
            }
            Some(r) if r.state == STALE => {
                changes.stale.push(m.name.clone());
                continue;
            }
            Some(_) => continue,
        };
        put.push(MetricRecord { name: m.name.clone(), fingerprint: fp, state: state.into(), updated_ms: now });
    }
    changes.removed =
        records.iter().filter(|r| !settings.metrics.iter().any(|m| m.name == r.name)).map(|r| r.name.clone()).collect();
    if !put.is_empty() {
        store.put_metric_records(put).await?;
    }
    Ok(changes)
}

/// Logs what `check` found, with the commands that fix it.
pub fn report(changes: &Changes, store_url: &str) {
    let store = crate::storage::redact(store_url);
    for name in &changes.new {
        tracing::warn!(
            metric = %name,
            "metric {name:?} is new: its figures start now; to compute its history from the raw events: \
             jetstream rollups rebuild --metric {name} --store {store}"
        );
    }
    for name in changes.changed.iter().chain(&changes.stale) {
        tracing::warn!(
            metric = %name,
            "metric {name:?} is defined differently from how its rollups were built; rebuild them: \
             jetstream rollups rebuild --metric {name} --store {store}"
        );
    }
    for name in &changes.removed {
        tracing::warn!(
            metric = %name,
            "metric {name:?} is no longer declared: it is not served; to delete its rows: \
             jetstream rollups drop --metric {name} --store {store}"
        );
    }
}
