//! Naming, timing and validating one event against the configured schemas.

use std::borrow::Cow;
use std::collections::BTreeMap;

use rust_decimal::Decimal;

use super::fields::{FieldValue, Fields, TopLevel};
use super::number::{MAX_DECIMAL, NOT_A_NUMBER, digits_u64, exact_decimal, id_number};
use crate::config::{EventSchema, FieldKind, FieldSpec, Settings};

/// Longest accepted event name and label value, in bytes.
pub const MAX_NAME_BYTES: usize = 128;

/// An accepted event, borrowed from the bytes it came in: its name, its time, its top-level fields
/// (read them through `parse_id` and `parse_decimal`, which canonicalise) and those raw bytes,
/// which are what the raw store keeps, every field included.
#[derive(Debug, Clone)]
pub struct Event<'a> {
    pub name: Cow<'a, str>,
    pub time_ms: i64,
    pub fields: Fields<'a>,
    pub raw: &'a [u8],
}

/// Why an event was rejected. The `Display` text is what clients and dead letters show.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("not valid JSON: {0}")]
    NotJson(String),
    #[error("not valid UTF-8")]
    NotUtf8,
    #[error("an event must be a JSON object, got {0}")]
    NotAnObject(&'static str),
    #[error("event is {size} bytes, over the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("no event name: set \"event_name\" (or \"event\")")]
    NoName,
    #[error("event name must be a non-empty string of at most {MAX_NAME_BYTES} bytes")]
    BadName,
    #[error("{event}: missing field \"{field}\"")]
    MissingField { event: String, field: String },
    #[error("{event}: field \"{field}\" must be {expected}, got {got}")]
    BadField { event: String, field: String, expected: &'static str, got: String },
    #[error("{event}: field \"{field}\" is {value}, outside the allowed range {range}")]
    OutOfRange { event: String, field: String, value: String, range: String },
    #[error("\"timestamp\" must be an RFC 3339 string or epoch milliseconds, got {0}")]
    BadTimestamp(String),
    #[error("\"timestamp\" is {ahead_s} s in the future (more than the allowed {allowed_s} s)")]
    FutureTimestamp { ahead_s: i64, allowed_s: i64 },
    #[error("\"timestamp\" is {late_s} s old, later than ingest.max_lateness allows ({allowed_s} s)")]
    TooLate { late_s: i64, allowed_s: i64 },
}

impl Rejection {
    /// The event's name, when the event got far enough to have one.
    pub fn event_name(&self) -> Option<&str> {
        match self {
            Rejection::MissingField { event, .. }
            | Rejection::BadField { event, .. }
            | Rejection::OutOfRange { event, .. } => Some(event),
            _ => None,
        }
    }

    /// The kind of reason, as a short stable name (for counts by reason and metric labels).
    pub fn class(&self) -> &'static str {
        match self {
            Rejection::NotJson(_) => "not_json",
            Rejection::NotUtf8 => "not_utf8",
            Rejection::NotAnObject(_) => "not_an_object",
            Rejection::TooLarge { .. } => "too_large",
            Rejection::NoName => "no_name",
            Rejection::BadName => "bad_name",
            Rejection::MissingField { .. } => "missing_field",
            Rejection::BadField { .. } => "bad_field",
            Rejection::OutOfRange { .. } => "out_of_range",
            Rejection::BadTimestamp(_) => "bad_timestamp",
            Rejection::FutureTimestamp { .. } => "future_timestamp",
            Rejection::TooLate { .. } => "too_late",
        }
    }
}

/// Validates events against the configured schemas.
#[derive(Debug, Clone)]
pub struct Validator {
    schemas: BTreeMap<String, EventSchema>,
    max_future_skew_ms: i64,
    /// 0: events of any age are taken.
    max_lateness_ms: i64,
    max_event_bytes: usize,
}

impl Validator {
    pub fn new(settings: &Settings) -> Self {
        Self {
            schemas: settings.events.clone(),
            max_future_skew_ms: crate::config::millis_i64(settings.ingest.max_future_skew),
            max_lateness_ms: crate::config::millis_i64(settings.ingest.max_lateness),
            max_event_bytes: settings.ingest.max_event_bytes,
        }
    }

    /// Parses and validates one event. `received_ms` bounds future timestamps; `default_time_ms`
    /// is the event time when the event has no `timestamp` (receipt, or the Kafka record time).
    pub fn validate<'a>(&self, raw: &'a [u8], received_ms: i64, default_time_ms: i64) -> Result<Event<'a>, Rejection> {
        if raw.len() > self.max_event_bytes {
            return Err(Rejection::TooLarge { size: raw.len(), limit: self.max_event_bytes });
        }
        // Checked once here, so the parser need not check each string again.
        let text = std::str::from_utf8(raw).map_err(|_| Rejection::NotUtf8)?;
        let fields = match serde_json::from_str::<TopLevel<'a>>(text) {
            Ok(TopLevel::Object(fields)) => fields,
            Ok(TopLevel::Other(kind)) => return Err(Rejection::NotAnObject(kind)),
            Err(e) => return Err(Rejection::NotJson(e.to_string())),
        };
        let name = match fields.get("event_name").or_else(|| fields.get("event")) {
            None | Some(FieldValue::Null) => return Err(Rejection::NoName),
            // No NUL: PostgreSQL text cannot hold it, and both backends must take the same events.
            Some(FieldValue::Str(s)) if !s.is_empty() && s.len() <= MAX_NAME_BYTES && !s.contains('\0') => s.clone(),
            Some(_) => return Err(Rejection::BadName),
        };
        let time_ms = match fields.get("timestamp") {
            None | Some(FieldValue::Null) => default_time_ms,
            Some(v) => parse_timestamp(v)?,
        };
        if time_ms.saturating_sub(received_ms) > self.max_future_skew_ms {
            return Err(Rejection::FutureTimestamp {
                ahead_s: time_ms.saturating_sub(received_ms) / 1000,
                allowed_s: self.max_future_skew_ms / 1000,
            });
        }
        if self.max_lateness_ms > 0 && received_ms.saturating_sub(time_ms) > self.max_lateness_ms {
            return Err(Rejection::TooLate {
                late_s: received_ms.saturating_sub(time_ms) / 1000,
                allowed_s: self.max_lateness_ms / 1000,
            });
        }
        if let Some(schema) = self.schemas.get(&*name) {
            for (field, spec) in &schema.fields {
                match fields.get(field).filter(|v| **v != FieldValue::Null) {
                    Some(v) => check_field(&name, field, spec, v)?,
                    None if spec.required => {
                        return Err(Rejection::MissingField { event: name.into_owned(), field: field.clone() });
                    }
                    None => {}
                }
            }
        }
        Ok(Event { name, time_ms, fields, raw })
    }
}

/// Checks one present field of a declared event against its spec. Checked, not rewritten: the
/// fold reads each field through the same parsers (`parse_id`, `parse_decimal`), which
/// canonicalise as they go (rewriting cost an allocation, a key clone and a map insert per field
/// per event).
fn check_field(event: &str, field: &str, spec: &FieldSpec, v: &FieldValue<'_>) -> Result<(), Rejection> {
    let bad = |expected: &'static str| Rejection::BadField {
        event: event.to_string(),
        field: field.to_string(),
        expected,
        got: describe(v),
    };
    match spec.kind {
        FieldKind::Id => {
            id_number(v).ok_or_else(|| bad("an integer id or a string of digits"))?;
        }
        FieldKind::Uint => {
            // Bounded like decimals: a count the metrics sum must not be accepted and then
            // skipped by a fold that cannot add it.
            let FieldValue::Number(n) = v else { return Err(bad("a whole number ≥ 0, at most 10^18")) };
            digits_u64(n)
                .filter(|n| Decimal::from(*n) <= MAX_DECIMAL)
                .ok_or_else(|| bad("a whole number ≥ 0, at most 10^18"))?;
        }
        FieldKind::Decimal => {
            let d = match v {
                FieldValue::Number(t) => exact_decimal(t),
                FieldValue::Str(t) => exact_decimal(t.trim()),
                _ => Err(NOT_A_NUMBER),
            }
            .map_err(bad)?;
            if spec.min.is_some_and(|lo| d < lo) || spec.max.is_some_and(|hi| d > hi) {
                return Err(Rejection::OutOfRange {
                    event: event.to_string(),
                    field: field.to_string(),
                    value: d.to_string(),
                    range: range_text(spec.min, spec.max),
                });
            }
        }
        FieldKind::Label => match v {
            FieldValue::Str(s) if s.len() <= MAX_NAME_BYTES && !s.contains('\0') => {}
            FieldValue::Number(_) => {}
            _ => return Err(bad("a string of at most 128 bytes, without NUL characters")),
        },
    }
    Ok(())
}

/// `timestamp`: an RFC 3339 string or epoch milliseconds.
pub fn parse_timestamp(v: &FieldValue<'_>) -> Result<i64, Rejection> {
    let t = match v {
        FieldValue::Number(n) => digits_u64(n).and_then(|ms| i64::try_from(ms).ok()),
        FieldValue::Str(s) => chrono::DateTime::parse_from_rfc3339(s).ok().map(|t| t.timestamp_millis()),
        _ => None,
    };
    match t {
        Some(ms) if ms >= 0 => Ok(ms),
        _ => Err(Rejection::BadTimestamp(describe(v))),
    }
}

fn range_text(lo: Option<Decimal>, hi: Option<Decimal>) -> String {
    match (lo, hi) {
        (Some(lo), Some(hi)) => format!("{lo} to {hi}"),
        (Some(lo), None) => format!("≥ {lo}"),
        (None, Some(hi)) => format!("≤ {hi}"),
        (None, None) => "any".into(),
    }
}

fn json_type(v: &FieldValue<'_>) -> &'static str {
    match v {
        FieldValue::Null => "null",
        FieldValue::Bool(_) => "a boolean",
        FieldValue::Number(_) => "a number",
        FieldValue::Str(_) => "a string",
        FieldValue::Array => "an array",
        FieldValue::Object => "an object",
    }
}

/// A short description of a value for error messages (never the whole of a large value).
fn describe(v: &FieldValue<'_>) -> String {
    match v {
        FieldValue::Str(s) if s.len() <= 40 => format!("{s:?}"),
        FieldValue::Number(n) if n.len() <= 40 => n.to_string(),
        FieldValue::Bool(b) => b.to_string(),
        _ => json_type(v).to_string(),
    }
}
