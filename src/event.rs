//! The event model: splitting a body into events, naming, timing and validating each one.
//!
//! Everything here is pure: no I/O, no clock (the caller passes the time of receipt).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use rust_decimal::Decimal;
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

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
/// raw bytes unless they hold escapes; numbers keep their exact text (a float would change
/// `123456789012345.67` into `…69`); arrays and objects are only named (their contents stay in the
/// raw bytes: no metric or schema reads inside them). Parsing into this instead of a
/// `serde_json::Value` map saves an allocation per key, per string and per map node.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue<'a> {
    Null,
    Bool(bool),
    /// A JSON number's text, as sent (always valid JSON number syntax).
    Number(&'a str),
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

impl<'a> FieldValue<'a> {
    /// Classifies a value from its raw JSON text (already validated by the parser).
    fn from_raw(raw: &'a str) -> Result<Self, serde_json::Error> {
        Ok(match raw.as_bytes().first() {
            Some(b'n') => FieldValue::Null,
            Some(b't') => FieldValue::Bool(true),
            Some(b'f') => FieldValue::Bool(false),
            Some(b'[') => FieldValue::Array,
            Some(b'{') => FieldValue::Object,
            // Without a backslash the string's text is its value: borrow it.
            Some(b'"') if !raw.contains('\\') => FieldValue::Str(Cow::Borrowed(&raw[1..raw.len() - 1])),
            Some(b'"') => FieldValue::Str(Cow::Owned(serde_json::from_str::<String>(raw)?)),
            _ => FieldValue::Number(raw),
        })
    }
}

/// An object key: borrowed unless it holds escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E>(self, s: String) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(s)))
            }
        }
        d.deserialize_str(KeyVisitor)
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
                while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
                    let raw: &'de serde_json::value::RawValue = map.next_value()?;
                    fields.push((key, FieldValue::from_raw(raw.get()).map_err(serde::de::Error::custom)?));
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
            // No NUL: PostgreSQL text cannot hold it, and both backends must take the same events.
            Some(FieldValue::Str(s)) if !s.is_empty() && s.len() <= MAX_NAME_BYTES && !s.contains('\0') => s.clone(),
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
                        FieldValue::Str(s) if s.len() <= MAX_NAME_BYTES && !s.contains('\0') => {}
                        FieldValue::Number(_) => {}
                        _ => return Err(bad("a string of at most 128 bytes, without NUL characters")),
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
        FieldValue::Number(n) => digits_u64(n),
        FieldValue::Str(s) => digits_u64(s),
        _ => None,
    }
}

/// A string of 1 to 20 ASCII digits as a `u64`.
fn digits_u64(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// A decimal from a JSON number or a numeric string, exactly (no float round trip), or `None`
/// when it is not one or cannot be held exactly (see [`exact_decimal`]).
pub fn parse_decimal(v: &FieldValue<'_>) -> Option<Decimal> {
    match v {
        FieldValue::Number(n) => exact_decimal(n).ok(),
        FieldValue::Str(s) => exact_decimal(s.trim()).ok(),
        _ => None,
    }
}

const NOT_A_NUMBER: &str = "a number or a numeric string, at most 10^18 in magnitude";

/// Longest numeric text read (a longer one cannot be an exact decimal within 10^18 anyway).
const MAX_NUMBER_TEXT: usize = 96;

/// The exact value of a decimal number's text: `-?digits[.digits][(e|E)[+-]digits]` (a JSON
/// number, or the same in a string, where leading zeros and a leading `+` are allowed too).
/// A value is never rounded: one with more than 28 significant digits or decimal places, or
/// beyond 10^18 in magnitude, is refused with the reason.
pub fn exact_decimal(text: &str) -> Result<Decimal, &'static str> {
    if text.is_empty() || text.len() > MAX_NUMBER_TEXT {
        return Err(NOT_A_NUMBER);
    }
    let (mantissa, exponent) = match text.find(['e', 'E']) {
        Some(i) => {
            let e = &text[i + 1..];
            let digits = e.strip_prefix(['+', '-']).unwrap_or(e);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(NOT_A_NUMBER);
            }
            // Beyond this no value within 10^18 with at most 28 places is left.
            let e: i64 = e.parse().unwrap_or(if e.starts_with('-') { i64::MIN } else { i64::MAX });
            (&text[..i], e.clamp(-1000, 1000))
        }
        None => (text, 0),
    };
    let (negative, unsigned) = match mantissa.as_bytes().first() {
        Some(b'-') => (true, &mantissa[1..]),
        Some(b'+') => (false, &mantissa[1..]),
        _ => (false, mantissa),
    };
    let (int, frac) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    let is_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (int.is_empty() && frac.is_empty()) || unsigned.ends_with('.') || !is_digits(int) || !is_digits(frac) {
        return Err(NOT_A_NUMBER);
    }
    // More than 19 whole digits is beyond the bound, however precise.
    let whole_digits = int.trim_start_matches('0').len() as i64;
    if whole_digits > 0 && whole_digits + exponent > 19 {
        return Err(NOT_A_NUMBER);
    }
    // The value is m × 10^-scale, m being the digits without leading or trailing zeros.
    let (mut m, mut significant, mut zeros) = (0i128, 0usize, 0usize);
    for d in int.bytes().chain(frac.bytes()).map(|b| i128::from(b - b'0')) {
        if d == 0 {
            zeros += usize::from(significant > 0);
            continue;
        }
        significant += zeros + 1;
        if significant > 28 {
            return Err("a number with at most 28 significant digits (it cannot be held exactly)");
        }
        m = m * 10i128.pow(zeros as u32 + 1) + d;
        zeros = 0;
    }
    if m == 0 {
        return Ok(Decimal::ZERO);
    }
    let mut scale = frac.len() as i64 - exponent - zeros as i64;
    if scale < 0 {
        // Whole zeros to put back; 10^19 is beyond the bound already.
        if significant as i64 - scale > 19 {
            return Err(NOT_A_NUMBER);
        }
        m *= 10i128.pow((-scale) as u32);
        scale = 0;
    }
    if scale > 28 {
        return Err("a number with at most 28 decimal places (it cannot be held exactly)");
    }
    let d = Decimal::try_from_i128_with_scale(if negative { -m } else { m }, scale as u32)
        .map_err(|_| "a number with at most 28 significant digits (it cannot be held exactly)")?;
    if d.abs() > MAX_DECIMAL {
        return Err(NOT_A_NUMBER);
    }
    Ok(d)
}

/// The largest magnitude a numeric field may have (10^18): sums of billions of such values still
/// fit a bucket's 96-bit decimal, so adding them up can never overflow.
pub const MAX_DECIMAL: Decimal = Decimal::from_parts(0xA764_0000, 0x0DE0_B6B3, 0, false, 0);

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
        assert_eq!(e.fields.get("n"), Some(&FieldValue::Number("1.5")));
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
    fn a_json_number_is_taken_from_its_text_exactly() {
        let amount = |a: &str| {
            let json = format!(r#"{{"event_name":"productSold","product_id":1,"no_of_units":1,"amount":{a}}}"#);
            let v = validator();
            v.validate(json.as_bytes(), NOW, NOW).map(|e| parse_decimal(e.fields.get("amount").unwrap()).unwrap())
        };
        let d = |s: &str| Decimal::from_str_exact(s).unwrap();
        // 17 and 18 significant digits: an f64 would give …69 and 10^15.
        assert_eq!(amount("123456789012345.67"), Ok(d("123456789012345.67")));
        assert_eq!(amount("999999999999999.99"), Ok(d("999999999999999.99")));
        assert_eq!(amount("12345678901234567.8"), Ok(d("12345678901234567.8")));
        assert_eq!(amount("\"999999999999999.99\""), Ok(d("999999999999999.99")));
        assert_eq!(amount("1.5e3"), Ok(d("1500")));
        assert_eq!(amount("15E-3"), Ok(d("0.015")));
        assert_eq!(amount("0.10"), Ok(d("0.1")));
        assert_eq!(amount("1000000000000000000"), Ok(d("1000000000000000000")));
        // Not representable, or beyond the bound: refused with the reason, never rounded.
        for (a, why) in [
            ("0.12345678901234567890123456789", "28 significant digits"),
            ("1e-40", "28 decimal places"),
            ("1000000000000000001", "at most 10^18"),
            ("1e400", "at most 10^18"),
            ("\"1_000\"", "a number or a numeric string"),
            ("\"12.\"", "a number or a numeric string"),
        ] {
            let r = amount(a).expect_err(a).to_string();
            assert!(r.contains(why), "{a}: {r}");
        }
    }

    #[test]
    fn nul_characters_are_refused_in_names_and_labels() {
        assert_eq!(check(r#"{"event":"a\u0000b"}"#).expect_err("NUL name"), Rejection::BadName);
        let r = check(r#"{"event":"productRated","product_id":1,"rating":3,"category":"x\u0000"}"#);
        assert!(r.expect_err("NUL label").to_string().contains("without NUL"));
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
