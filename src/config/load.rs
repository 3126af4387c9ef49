//! Reading a settings file section by section, so that one run reports every problem: a type
//! error in `[ingest]`, an unknown key in `[kafka]` and a bad `[[metrics]]` entry all at once
//! (deserialising the whole file stops at the first). Then the built-in events and metrics are
//! merged in unless the file says `builtins = false`.

use serde::de::DeserializeOwned;
use toml::Value;

use super::{ConfigError, DEFAULT_CONFIG, Settings};

/// The top-level keys a file may have.
const KEYS: &str = "builtins, ingest, retention, api, kafka, http, storage, rollups, events, metrics, labels";

impl Settings {
    /// Parses a settings file; sections it omits take their defaults, and the built-in events
    /// and metrics are kept unless it says `builtins = false`. Every problem is reported: those
    /// of each section that does not parse and those of the settings that do.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let (mut s, mut problems) = sections(text);
        if s.builtins {
            merge_builtins(&mut s);
        }
        if let Err(ConfigError(more)) = s.check() {
            problems.extend(more);
        }
        if problems.is_empty() { Ok(s) } else { Err(ConfigError(problems)) }
    }

    /// What is valid but probably not meant: metrics over events that have no schema (a typo in
    /// the event or field name would count nothing, silently).
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for m in &self.metrics {
            if m.event != "*" && !self.events.contains_key(&m.event) {
                let field = m.field.as_deref().map(|f| format!(" (its field {f:?} is not checked either)"));
                out.push(format!(
                    "metric {:?} folds event {:?}, which has no [events.{}.fields] schema{}: a typo in either \
                     name counts nothing",
                    m.name,
                    m.event,
                    m.event,
                    field.unwrap_or_default()
                ));
            }
        }
        if self.metrics.is_empty() {
            out.push("no metrics are declared: events are stored raw, nothing is counted".into());
        }
        out
    }
}

/// Every section of `text` that parses, and a problem for each that does not.
fn sections(text: &str) -> (Settings, Vec<String>) {
    let mut s = Settings::empty();
    let mut problems = Vec::new();
    let table: toml::Table = match toml::from_str(text) {
        Ok(t) => t,
        Err(e) => return (s, vec![e.to_string().trim_end().to_string()]),
    };
    for (key, value) in table {
        match key.as_str() {
            "builtins" => match value {
                Value::Boolean(b) => s.builtins = b,
                _ => problems.push("builtins must be true or false".into()),
            },
            "ingest" => section(&key, value, &mut s.ingest, &mut problems),
            "retention" => section(&key, value, &mut s.retention, &mut problems),
            "api" => section(&key, value, &mut s.api, &mut problems),
            "kafka" => section(&key, value, &mut s.kafka, &mut problems),
            "http" => section(&key, value, &mut s.http, &mut problems),
            "storage" => section(&key, value, &mut s.storage, &mut problems),
            "rollups" => section(&key, value, &mut s.rollups, &mut problems),
            "labels" => section(&key, value, &mut s.labels, &mut problems),
            "events" => match value {
                Value::Table(events) => {
                    for (name, schema) in events {
                        match schema.try_into() {
                            Ok(schema) => {
                                s.events.insert(name, schema);
                            }
                            Err(e) => problems.push(format!("[events.{name}]: {}", message(&e))),
                        }
                    }
                }
                _ => problems.push("events must be a table of event schemas ([events.NAME.fields])".into()),
            },
            "metrics" => match value {
                Value::Array(metrics) => {
                    for (i, metric) in metrics.into_iter().enumerate() {
                        let name = metric.get("name").and_then(Value::as_str).map(str::to_string);
                        match metric.try_into() {
                            Ok(m) => s.metrics.push(m),
                            Err(e) => {
                                let which = name.map_or(format!("#{}", i + 1), |n| format!("{n:?}"));
                                problems.push(format!("[[metrics]] {which}: {}", message(&e)));
                            }
                        }
                    }
                }
                _ => problems.push("metrics must be an array of tables ([[metrics]])".into()),
            },
            other => problems.push(format!("unknown key {other:?}; the file may have {KEYS}")),
        }
    }
    (s, problems)
}

/// Replaces `into` with `value` read as its type, or records why it cannot be.
fn section<T: DeserializeOwned>(key: &str, value: Value, into: &mut T, problems: &mut Vec<String>) {
    match value.try_into() {
        Ok(v) => *into = v,
        Err(e) => problems.push(format!("[{key}]: {}", message(&e))),
    }
}

fn message(e: &toml::de::Error) -> String {
    e.message().trim_end().to_string()
}

/// Adds the built-in events and metrics that `s` does not declare itself (a file's own event or
/// metric of the same name replaces the built-in one).
fn merge_builtins(s: &mut Settings) {
    let (builtin, problems) = sections(DEFAULT_CONFIG);
    debug_assert!(problems.is_empty(), "the built-in configuration parses: {problems:?}");
    for (name, schema) in builtin.events {
        s.events.entry(name).or_insert(schema);
    }
    for metric in builtin.metrics {
        if !s.metrics.iter().any(|m| m.name == metric.name) {
            s.metrics.push(metric);
        }
    }
}
