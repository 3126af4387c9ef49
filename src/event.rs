//! The event model: splitting a body into events, naming, timing and validating each one.
//!
//! Everything here is pure: no I/O, no clock (the caller passes the time of receipt).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Number;

use crate::config::{EventSchema, FieldKind, Settings};

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

/// A top-level field's value as validation and folding read it. Strings are borrowed from the
/// raw bytes unless they hold escapes; arrays and objects are only named (their contents stay in
/// the raw bytes: no metric or schema reads inside them). Parsing into this instead of a
/// `serde_json::Value` map saves an allocation per key, per string and per map node.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue<'a> {
    Null,
    Bool(bool),
    Number(Number),
    Str(Cow<'a, str>),
    Array,
    Object,
}

/// An event's top-level fields, in the order they came. A key given twice reads as its last value,
/// as in a JSON object parsed into a map.
#[derive(Debug, Clone, Default)]
pub struct Fields<'a>(Vec<(Cow<'a, str>, FieldValue<'a>)>);

impl<'a> Fields<'a> {
    pub fn get(&self, key: &str) -> Option<&FieldValue<'a>> {
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'de> Deserialize<'de> for FieldValue<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = FieldValue<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(FieldValue::Null)
    }
    fn visit_bool<E>(self, b: bool) -> Result<Self::Value, E> {
        Ok(FieldValue::Bool(b))
    }
    fn visit_u64<E>(self, n: u64) -> Result<Self::Value, E> {
        Ok(FieldValue::Number(n.into()))
    }
    fn visit_i64<E>(self, n: i64) -> Result<Self::Value, E> {
        Ok(FieldValue::Number(n.into()))
    }
    fn visit_f64<E>(self, n: f64) -> Result<Self::Value, E> {
        // JSON has no NaN or infinity, so this is always a number.
        Ok(Number::from_f64(n).map_or(FieldValue::Null, FieldValue::Number))
    }
    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(FieldValue::Str(Cow::Borrowed(s)))
    }
    fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
        Ok(FieldValue::Str(Cow::Owned(s.to_owned())))
    }
    fn visit_string<E>(self, s: String) -> Result<Self::Value, E> {
        Ok(FieldValue::Str(Cow::Owned(s)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(FieldValue::Array)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(FieldValue::Object)
    }
}

/// A whole event's JSON: an object's fields, or the kind of value it was instead.
enum TopLevel<'a> {
    Object(Fields<'a>),
    Other(&'static str),
}

impl<'de> Deserialize<'de> for TopLevel<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Top;
        impl<'de> Visitor<'de> for Top {
            type Value = TopLevel<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(key) = map.next_key::<FieldValue<'de>>()? {
                    let FieldValue::Str(key) = key else {
                        return Err(serde::de::Error::custom("an object key must be a string"));
                    };
                    fields.push((key, map.next_value::<FieldValue<'de>>()?));
                }
                Ok(TopLevel::Object(Fields(fields)))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(TopLevel::Other("null"))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(TopLevel::Other("a boolean"))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(TopLevel::Other("a number"))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(TopLevel::Other("a number"))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(TopLevel::Other("a number"))
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(TopLevel::Other("a string"))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(TopLevel::Other("an array"))
            }
        }
        d.deserialize_any(Top)
    }
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
            Some(FieldValue::Str(s)) if !s.is_empty() && s.len() <= MAX_NAME_BYTES => s.clone(),
            Some(_) => return Err(Rejection::BadName),
        };
        let time_ms = match fields.get("timestamp") {
            None | Some(FieldValue::Null) => default_time_ms,
            Some(v) => parse_timestamp(v)?,
        };
        if time_ms - received_ms > self.max_future_skew_ms {
            return Err(Rejection::FutureTimestamp {
                ahead_s: (time_ms - received_ms) / 1000,
                allowed_s: self.max_future_skew_ms / 1000,
            });
        }
        if let Some(schema) = self.schemas.get(&*name) {
            for (field, spec) in &schema.fields {
                let Some(v) = fields.get(field).filter(|v| **v != FieldValue::Null) else {
                    if spec.required {
                        return Err(Rejection::MissingField { event: name.into_owned(), field: field.clone() });
                    }
                    continue;
                };
                let bad = |expected: &'static str| Rejection::BadField {
                    event: name.to_string(),
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
                        let FieldValue::Number(n) = v else { return Err(bad("a whole number ≥ 0, at most 10^18")) };
                        n.as_u64()
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
                                event: name.into_owned(),
                                field: field.clone(),
                                value: d.to_string(),
                                range: range_text(spec.min, spec.max),
                            });
                        }
                    }
                    FieldKind::Label => match v {
                        FieldValue::Str(s) if s.len() <= MAX_NAME_BYTES => {}
                        FieldValue::Number(_) => {}
                        _ => return Err(bad("a string of at most 128 bytes")),
                    },
                }
            }
        }
        Ok(Event { name, time_ms, fields, raw })
    }
}

/// An identifier: a non-negative integer or a string of digits, in canonical form ("007" → "7").
pub fn parse_id(v: &FieldValue<'_>) -> Option<String> {
    id_number(v).map(|n| n.to_string())
}

/// An identifier given as text (a URL path, a query parameter), in canonical form.
pub fn canonical_id(s: &str) -> Option<String> {
    parse_id(&FieldValue::Str(Cow::Borrowed(s)))
}

/// An identifier's number, without building its text (validation only needs to know it is one).
pub fn id_number(v: &FieldValue<'_>) -> Option<u64> {
    match v {
        FieldValue::Number(n) => n.as_u64(),
        FieldValue::Str(s) if !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse::<u64>().ok()
        }
        _ => None,
    }
}

/// A decimal from a JSON number or a numeric string, exactly (no float round trip).
pub fn parse_decimal(v: &FieldValue<'_>) -> Option<Decimal> {
    match v {
        // serde_json prints a float with the shortest text that reads back as the same float,
        // so "19.99" typed as a JSON number still becomes exactly 19.99.
        FieldValue::Number(n) => match n.as_i64() {
            Some(i) => Some(Decimal::from(i)).filter(|d| d.abs() <= MAX_DECIMAL),
            None => decimal_from_str(&n.to_string()),
        },
        FieldValue::Str(s) => decimal_from_str(s.trim()),
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
pub fn parse_timestamp(v: &FieldValue<'_>) -> Result<i64, Rejection> {
    let t = match v {
        FieldValue::Number(n) => n.as_i64(),
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
        FieldValue::Number(n) => n.to_string(),
        FieldValue::Bool(b) => b.to_string(),
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

    fn check(json: &str) -> Result<Event<'_>, Rejection> {
        validator().validate(json.as_bytes(), NOW, NOW)
    }

    #[test]
    fn the_original_designs_events_are_accepted() {
        let sold = check(r#"{"event_name":"productSold","name_of_product":"product A","product_id":233,"no_of_units":10,"amount":"2500"}"#).unwrap();
        assert_eq!(sold.name, "productSold");
        assert_eq!(parse_decimal(sold.fields.get("amount").unwrap()), Some(Decimal::from(2500)));
        assert_eq!(sold.time_ms, NOW);
        let rated = check(
            r#"{"event":"productRated","name_of_product":"product A","product_id":12,"rating":4,"category":"F"}"#,
        )
        .unwrap();
        assert_eq!(rated.name, "productRated");
        assert_eq!(parse_id(rated.fields.get("product_id").unwrap()).as_deref(), Some("12"));
    }

    #[test]
    fn amounts_are_exact_decimals_from_strings_and_numbers() {
        let e = check(r#"{"event_name":"productSold","product_id":"0042","no_of_units":1,"amount":19.99}"#).unwrap();
        assert_eq!(parse_decimal(e.fields.get("amount").unwrap()), Some(Decimal::new(1999, 2)));
        assert_eq!(parse_id(e.fields.get("product_id").unwrap()).as_deref(), Some("42"), "canonical: no leading zeros");
    }

    #[test]
    fn amounts_beyond_ten_to_the_eighteenth_are_refused_so_sums_cannot_overflow() {
        assert_eq!(MAX_DECIMAL, Decimal::from(10u64.pow(18)));
        let ok = check(r#"{"event_name":"productSold","product_id":1,"no_of_units":1,"amount":"1000000000000000000"}"#);
        assert_eq!(parse_decimal(ok.unwrap().fields.get("amount").unwrap()), Some(MAX_DECIMAL));
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
        let json = r#"{"event_name":"pageViewed","path":"/x","extra":{"a":[1,{"b":null}]},"n":1.5}"#;
        let e = check(json).unwrap();
        assert_eq!(e.name, "pageViewed");
        assert_eq!(e.fields.get("path"), Some(&FieldValue::Str("/x".into())));
        assert_eq!(e.fields.get("extra"), Some(&FieldValue::Object), "nested values are named, not parsed");
        assert_eq!(e.fields.get("n"), Some(&FieldValue::Number(Number::from_f64(1.5).unwrap())));
        assert_eq!(e.fields.len(), 4);
        assert_eq!(e.raw, json.as_bytes(), "the raw bytes keep every field, nested ones included");
    }

    #[test]
    fn strings_are_borrowed_unless_escaped_and_a_repeated_key_reads_as_its_last_value() {
        let e = check(r#"{"event":"a\u0062c","category":"plain","category":"B\"x"}"#).unwrap();
        assert_eq!(e.name, "abc");
        assert!(matches!(e.name, Cow::Owned(_)), "an escaped string is decoded into its own copy");
        assert_eq!(e.fields.get("category"), Some(&FieldValue::Str("B\"x".into())));
        let e = check(r#"{"event":"plain"}"#).unwrap();
        assert!(matches!(e.name, Cow::Borrowed(_)), "a plain string is borrowed from the raw bytes");
    }

    #[test]
    fn an_event_that_is_not_an_object_says_what_it_is() {
        for (json, kind) in [("[1,2]", "an array"), ("\"x\"", "a string"), ("3.5", "a number"), ("null", "null")] {
            assert_eq!(check(json).expect_err(json), Rejection::NotAnObject(kind), "{json}");
        }
        assert!(matches!(check("{\"event\":\"x\"} 1"), Err(Rejection::NotJson(_))), "trailing bytes");
        let latin1 = validator().validate(b"{\"event\":\"caf\xe9\"}", NOW, NOW);
        assert_eq!(latin1.expect_err("not UTF-8"), Rejection::NotUtf8);
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
