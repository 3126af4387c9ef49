//! The event model: splitting a body into events, naming, timing and validating each one.
//!
//! Everything here is pure: no I/O, no clock (the caller passes the time of receipt).

use std::collections::BTreeMap;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde_json::{Map, Value};

use crate::config::{EventSchema, FieldKind, Settings};

/// Longest accepted event name and label value, in bytes.
pub const MAX_NAME_BYTES: usize = 128;

/// An accepted event: its name, its time and its validated fields (as they came: read them through
/// `parse_id` and `parse_decimal`, which canonicalise), plus the raw bytes it came in.
#[derive(Debug, Clone)]
pub struct Event {
    pub name: String,
    pub time_ms: i64,
    pub fields: Map<String, Value>,
    pub raw: Box<[u8]>,
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
}

/// The shapes a request body can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    /// One object or an array of objects.
    Json,
    /// One JSON value per line.
    Ndjson,
}

/// A body that cannot be read as events at all (answered with 400, nothing stored).
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the body is empty")]
    Empty,
    #[error("the body is not JSON: {0}")]
    NotJson(String),
    #[error("the body must be a JSON object or an array of objects")]
    WrongShape,
}

/// Splits a body into the raw bytes of each event, in order.
pub fn split_body(body: &[u8], format: BodyFormat) -> Result<Vec<&[u8]>, BodyError> {
    let trimmed = body.trim_ascii();
    if trimmed.is_empty() {
        return Err(BodyError::Empty);
    }
    match format {
        BodyFormat::Ndjson => {
            Ok(trimmed.split(|&b| b == b'\n').map(|l| l.trim_ascii()).filter(|l| !l.is_empty()).collect())
        }
        BodyFormat::Json => match trimmed[0] {
            b'{' => {
                // Validate once here so a broken single object is a 400, like any non-JSON body.
                serde_json::from_slice::<serde::de::IgnoredAny>(trimmed)
                    .map_err(|e| BodyError::NotJson(e.to_string()))?;
                Ok(vec![trimmed])
            }
            b'[' => {
                let items: Vec<&serde_json::value::RawValue> =
                    serde_json::from_slice(trimmed).map_err(|e| BodyError::NotJson(e.to_string()))?;
                Ok(items.into_iter().map(|r| r.get().as_bytes()).collect())
            }
            _ => match serde_json::from_slice::<serde::de::IgnoredAny>(trimmed) {
                Ok(_) => Err(BodyError::WrongShape),
                Err(e) => Err(BodyError::NotJson(e.to_string())),
            },
        },
    }
}

/// Validates events against the configured schemas.
#[derive(Debug, Clone)]
pub struct Validator {
    schemas: BTreeMap<String, EventSchema>,
    max_future_skew_ms: i64,
    max_event_bytes: usize,
}

impl Validator {
    pub fn new(settings: &Settings) -> Self {
        Self {
            schemas: settings.events.clone(),
            max_future_skew_ms: settings.ingest.max_future_skew.as_millis() as i64,
            max_event_bytes: settings.ingest.max_event_bytes,
        }
    }

    /// Parses and validates one event. `received_ms` bounds future timestamps; `default_time_ms`
    /// is the event time when the event has no `timestamp` (receipt, or the Kafka record time).
    pub fn validate(&self, raw: &[u8], received_ms: i64, default_time_ms: i64) -> Result<Event, Rejection> {
        if raw.len() > self.max_event_bytes {
            return Err(Rejection::TooLarge { size: raw.len(), limit: self.max_event_bytes });
        }
        if std::str::from_utf8(raw).is_err() {
            return Err(Rejection::NotUtf8);
        }
        let value: Value = serde_json::from_slice(raw).map_err(|e| Rejection::NotJson(e.to_string()))?;
        let Value::Object(fields) = value else {
            return Err(Rejection::NotAnObject(json_type(&value)));
        };
        let name = match fields.get("event_name").or_else(|| fields.get("event")) {
            None | Some(Value::Null) => return Err(Rejection::NoName),
            Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_NAME_BYTES => s.clone(),
            Some(_) => return Err(Rejection::BadName),
        };
        let time_ms = match fields.get("timestamp") {
            None | Some(Value::Null) => default_time_ms,
            Some(v) => parse_timestamp(v)?,
        };
        if time_ms - received_ms > self.max_future_skew_ms {
            return Err(Rejection::FutureTimestamp {
                ahead_s: (time_ms - received_ms) / 1000,
                allowed_s: self.max_future_skew_ms / 1000,
            });
        }
        if let Some(schema) = self.schemas.get(&name) {
            for (field, spec) in &schema.fields {
                let Some(v) = fields.get(field).filter(|v| !v.is_null()) else {
                    if spec.required {
                        return Err(Rejection::MissingField { event: name, field: field.clone() });
                    }
                    continue;
                };
                let bad = |expected: &'static str| Rejection::BadField {
                    event: name.clone(),
                    field: field.clone(),
                    expected,
                    got: describe(v),
                };
                // Checked, not rewritten: the fold reads each field through the same parsers
                // (`parse_id`, `parse_decimal`), which canonicalise as they go. Rewriting cost an
                // allocation, a key clone and a map insert per field per event.
                match spec.kind {
                    FieldKind::Id => {
                        id_number(v).ok_or_else(|| bad("an integer id or a string of digits"))?;
                    }
                    FieldKind::Uint => {
                        // Bounded like decimals: a count the metrics sum must not be accepted
                        // and then skipped by a fold that cannot add it.
                        v.as_u64()
                            .filter(|n| Decimal::from(*n) <= MAX_DECIMAL)
                            .ok_or_else(|| bad("a whole number ≥ 0, at most 10^18"))?;
                    }
                    FieldKind::Decimal => {
                        let d = parse_decimal(v)
                            .ok_or_else(|| bad("a number or a numeric string, at most 10^18 in magnitude"))?;
                        let below = spec.min.is_some_and(|lo| d < lo);
                        let above = spec.max.is_some_and(|hi| d > hi);
                        if below || above {
                            return Err(Rejection::OutOfRange {
                                event: name,
                                field: field.clone(),
                                value: d.to_string(),
                                range: range_text(spec.min, spec.max),
                            });
                        }
                    }
                    FieldKind::Label => match v {
                        Value::String(s) if s.len() <= MAX_NAME_BYTES => {}
                        Value::Number(_) => {}
                        _ => return Err(bad("a string of at most 128 bytes")),
                    },
                }
            }
        }
        Ok(Event { name, time_ms, fields, raw: raw.into() })
    }
}

/// An identifier: a non-negative integer or a string of digits, in canonical form ("007" → "7").
pub fn parse_id(v: &Value) -> Option<String> {
    id_number(v).map(|n| n.to_string())
}

/// An identifier's number, without building its text (validation only needs to know it is one).
pub fn id_number(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) if !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse::<u64>().ok()
        }
        _ => None,
    }
}

/// A decimal from a JSON number or a numeric string, exactly (no float round trip).
pub fn parse_decimal(v: &Value) -> Option<Decimal> {
    match v {
        // serde_json prints a float with the shortest text that reads back as the same float,
        // so "19.99" typed as a JSON number still becomes exactly 19.99.
        Value::Number(n) => match n.as_i64() {
            Some(i) => Some(Decimal::from(i)).filter(|d| d.abs() <= MAX_DECIMAL),
            None => decimal_from_str(&n.to_string()),
        },
        Value::String(s) => decimal_from_str(s.trim()),
        _ => None,
    }
}

fn decimal_from_str(s: &str) -> Option<Decimal> {
    if s.is_empty() || s.len() > 40 {
        return None;
    }
    let d = Decimal::from_str(s).or_else(|_| Decimal::from_scientific(s)).ok()?;
    (d.abs() <= MAX_DECIMAL).then_some(d)
}

/// The largest magnitude a numeric field may have (10^18): sums of billions of such values still
/// fit a bucket's 96-bit decimal, so adding them up can never overflow.
pub const MAX_DECIMAL: Decimal = Decimal::from_parts(0xA764_0000, 0x0DE0_B6B3, 0, false, 0);

/// `timestamp`: an RFC 3339 string or epoch milliseconds.
pub fn parse_timestamp(v: &Value) -> Result<i64, Rejection> {
    let t = match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => chrono::DateTime::parse_from_rfc3339(s).ok().map(|t| t.timestamp_millis()),
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

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A short description of a value for error messages (never the whole of a large value).
fn describe(v: &Value) -> String {
    match v {
        Value::String(s) if s.len() <= 40 => format!("{s:?}"),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => json_type(v).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000;

    fn validator() -> Validator {
        Validator::new(&Settings::default())
    }

    fn check(json: &str) -> Result<Event, Rejection> {
        validator().validate(json.as_bytes(), NOW, NOW)
    }

    #[test]
    fn the_original_designs_events_are_accepted() {
        let sold = check(r#"{"event_name":"productSold","name_of_product":"product A","product_id":233,"no_of_units":10,"amount":"2500"}"#).unwrap();
        assert_eq!(sold.name, "productSold");
        assert_eq!(parse_decimal(&sold.fields["amount"]), Some(Decimal::from(2500)));
        assert_eq!(sold.time_ms, NOW);
        let rated = check(
            r#"{"event":"productRated","name_of_product":"product A","product_id":12,"rating":4,"category":"F"}"#,
        )
        .unwrap();
        assert_eq!(rated.name, "productRated");
        assert_eq!(parse_id(&rated.fields["product_id"]).as_deref(), Some("12"));
    }

    #[test]
    fn amounts_are_exact_decimals_from_strings_and_numbers() {
        let e = check(r#"{"event_name":"productSold","product_id":"0042","no_of_units":1,"amount":19.99}"#).unwrap();
        assert_eq!(parse_decimal(&e.fields["amount"]), Some(Decimal::new(1999, 2)));
        assert_eq!(parse_id(&e.fields["product_id"]).as_deref(), Some("42"), "canonical: no leading zeros");
    }

    #[test]
    fn amounts_beyond_ten_to_the_eighteenth_are_refused_so_sums_cannot_overflow() {
        assert_eq!(MAX_DECIMAL, Decimal::from(10u64.pow(18)));
        let ok = check(r#"{"event_name":"productSold","product_id":1,"no_of_units":1,"amount":"1000000000000000000"}"#);
        assert_eq!(parse_decimal(&ok.unwrap().fields["amount"]), Some(MAX_DECIMAL));
        for amount in [r#""1000000000000000000.01""#, "7e28", r#""79228162514264337593543950335""#] {
            let json = format!(r#"{{"event_name":"productSold","product_id":1,"no_of_units":1,"amount":{amount}}}"#);
            let reason = check(&json).expect_err("too large").to_string();
            assert!(reason.contains("at most 10^18"), "{amount}: {reason}");
        }
    }

    #[test]
    fn each_rejection_says_what_is_wrong() {
        let cases = [
            (r#"{"product_id":1}"#, "no event name"),
            (r#"{"event_name":"productSold","no_of_units":1,"amount":"1"}"#, "missing field \"product_id\""),
            (
                r#"{"event_name":"productSold","product_id":"x1","no_of_units":1,"amount":"1"}"#,
                "\"product_id\" must be an integer id",
            ),
            (
                r#"{"event_name":"productSold","product_id":1,"no_of_units":-1,"amount":"1"}"#,
                "\"no_of_units\" must be a whole number",
            ),
            (
                r#"{"event_name":"productSold","product_id":1,"no_of_units":18446744073709551615,"amount":"1"}"#,
                "\"no_of_units\" must be a whole number ≥ 0, at most 10^18",
            ),
            (
                r#"{"event_name":"productSold","product_id":1,"no_of_units":1,"amount":"-5"}"#,
                "outside the allowed range ≥ 0",
            ),
            (
                r#"{"event_name":"productSold","product_id":1,"no_of_units":1,"amount":"ten"}"#,
                "\"amount\" must be a number",
            ),
            (
                r#"{"event":"productRated","product_id":1,"rating":6}"#,
                "\"rating\" is 6, outside the allowed range 1 to 5",
            ),
            (r#"{"event":"productRated","product_id":1}"#, "missing field \"rating\""),
            (r#"{"event":"x","timestamp":"yesterday"}"#, "\"timestamp\" must be an RFC 3339"),
            (r#"[1]"#, "must be a JSON object"),
            (r#"{"event":"x""#, "not valid JSON"),
        ];
        for (json, reason) in cases {
            let r = check(json).expect_err(json).to_string();
            assert!(r.contains(reason), "{json}: {r:?} lacks {reason:?}");
        }
    }

    #[test]
    fn a_timestamp_too_far_ahead_is_rejected_but_a_small_skew_is_not() {
        let ahead = |s: i64| format!(r#"{{"event":"x","timestamp":{}}}"#, NOW + s * 1000);
        assert!(check(&ahead(60)).is_ok());
        assert!(matches!(check(&ahead(3600)), Err(Rejection::FutureTimestamp { .. })));
    }

    #[test]
    fn timestamps_are_rfc3339_or_epoch_millis() {
        let e = check(r#"{"event":"x","timestamp":"2023-11-14T22:13:20Z"}"#).unwrap();
        assert_eq!(e.time_ms, 1_700_000_000_000);
        let e = check(r#"{"event":"x","timestamp":1699999999000}"#).unwrap();
        assert_eq!(e.time_ms, 1_699_999_999_000);
    }

    #[test]
    fn unknown_events_are_accepted_with_every_field() {
        let e = check(r#"{"event_name":"pageViewed","path":"/x","extra":{"a":1}}"#).unwrap();
        assert_eq!(e.fields["extra"]["a"], 1);
    }

    #[test]
    fn bodies_split_into_events() {
        assert_eq!(split_body(br#" {"a":1} "#, BodyFormat::Json).unwrap(), vec![br#"{"a":1}"#.as_slice()]);
        assert_eq!(split_body(br#"[{"a":1}, 2]"#, BodyFormat::Json).unwrap().len(), 2);
        assert_eq!(split_body(b"{\"a\":1}\n\nnope\n", BodyFormat::Ndjson).unwrap().len(), 2);
        assert!(matches!(split_body(b"hello", BodyFormat::Json), Err(BodyError::NotJson(_))));
        assert!(matches!(split_body(b"42", BodyFormat::Json), Err(BodyError::WrongShape)));
        assert!(matches!(split_body(b"  ", BodyFormat::Json), Err(BodyError::Empty)));
    }
}
