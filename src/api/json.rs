//! The shapes answers share: exact decimals, RFC 3339 times, windows.

use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::value::RawValue;
use utoipa::ToSchema;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};

/// Decimal places an average is rounded to.
pub const AVG_DECIMALS: u32 = 6;

/// A decimal written as an exact JSON number: its plain digits (no exponent, no trailing zeros),
/// never through a float. Answers holding one must be serialised as typed structs, not through
/// `serde_json::Value` (which would turn the number into an `f64`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exact(pub Decimal);

impl utoipa::PartialSchema for Exact {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Number)
            .description(Some("An exact decimal, written with its plain digits (no exponent, never through a float)"))
            .into()
    }
}

impl ToSchema for Exact {}

impl Serialize for Exact {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        RawValue::from_string(self.0.normalize().to_string()).expect("a decimal's text is a JSON number").serialize(s)
    }
}

/// An RFC 3339 time for epoch seconds.
pub fn rfc3339(t_s: i64) -> String {
    chrono::DateTime::from_timestamp(t_s, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// Calls `f` with `rfc3339(t_s)`, remembered per thread for the last two instants asked: every
/// answer of one second shows the same window bounds, and formatting them took ~4 % of a seed
/// request's instructions.
fn with_rfc3339_recent<R>(t_s: i64, f: impl FnOnce(&str) -> R) -> R {
    use std::cell::RefCell;
    thread_local! {
        static RECENT: RefCell<[(i64, String); 2]> =
            const { RefCell::new([(i64::MIN, String::new()), (i64::MIN, String::new())]) };
    }
    RECENT.with(|recent| {
        let mut recent = recent.borrow_mut();
        if let Some((_, text)) = recent.iter().find(|(at, _)| *at == t_s) {
            return f(text);
        }
        recent.swap(0, 1);
        recent[0] = (t_s, rfc3339(t_s));
        f(&recent[0].1)
    })
}

/// A JSON answer written by hand, for the few fixed shapes on the hottest paths (the original
/// design's two endpoints): the same bytes `serde_json` writes for the shape's typed struct (a
/// test checks it), without the serializer's state machine, the re-parse `RawValue` does of an
/// exact decimal's text and the window bounds' copies. Everything written is a number, `null`,
/// a fixed key or an RFC 3339 time, none of which JSON escapes.
pub struct JsonWriter(String);

impl JsonWriter {
    pub fn new() -> Self {
        Self(String::with_capacity(128))
    }

    /// Raw JSON text: punctuation and keys, already escaped.
    pub fn raw(&mut self, text: &str) -> &mut Self {
        self.0.push_str(text);
        self
    }

    /// An exact decimal as [`Exact`] writes it: its digits from the mantissa (itoa), the point
    /// put in by the scale — `Decimal`'s `Display` divides the 96-bit mantissa by ten per digit.
    pub fn exact(&mut self, d: Decimal) -> &mut Self {
        let d = d.normalize();
        let m = d.mantissa();
        if m < 0 {
            self.0.push('-');
        }
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(m.unsigned_abs());
        let scale = d.scale() as usize;
        if scale == 0 {
            self.0.push_str(digits);
        } else if digits.len() > scale {
            let (int, frac) = digits.split_at(digits.len() - scale);
            self.0.push_str(int);
            self.0.push('.');
            self.0.push_str(frac);
        } else {
            self.0.push_str("0.");
            self.0.extend(std::iter::repeat_n('0', scale - digits.len()));
            self.0.push_str(digits);
        }
        self
    }

    pub fn int(&mut self, n: i64) -> &mut Self {
        self.0.push_str(itoa::Buffer::new().format(n));
        self
    }

    /// An RFC 3339 time for epoch seconds, quoted.
    pub fn time(&mut self, t_s: i64) -> &mut Self {
        self.0.push('"');
        with_rfc3339_recent(t_s, |t| self.0.push_str(t));
        self.0.push('"');
        self
    }

    /// A window's bounds as [`WindowOut`] writes them.
    pub fn window(&mut self, from: i64, to: i64) -> &mut Self {
        self.raw("{\"from\":").time(from).raw(",\"to\":").time(to).raw("}")
    }

    /// The answer: `200 OK` with `Content-Type: application/json`, as `axum::Json` sends it.
    pub fn into_response(self) -> axum::response::Response {
        use axum::http::{HeaderValue, header};
        // Built directly: a `String`'s own `IntoResponse` would insert a text content type first.
        let mut resp = axum::response::Response::new(axum::body::Body::from(self.0));
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        resp
    }
}

impl Default for JsonWriter {
    fn default() -> Self {
        Self::new()
    }
}

/// A window's bounds in answers: `[from, to)`, RFC 3339 (kept as epoch seconds, formatted as
/// they are written).
#[derive(Debug, Clone, Copy, ToSchema)]
pub struct WindowOut {
    #[schema(value_type = String)]
    pub from: i64,
    #[schema(value_type = String)]
    pub to: i64,
}

impl WindowOut {
    pub fn new(from: i64, to: i64) -> Self {
        Self { from, to }
    }
}

impl Serialize for WindowOut {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        struct Time(i64);
        impl Serialize for Time {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                with_rfc3339_recent(self.0, |t| s.serialize_str(t))
            }
        }
        let mut w = s.serialize_struct("WindowOut", 2)?;
        w.serialize_field("from", &Time(self.from))?;
        w.serialize_field("to", &Time(self.to))?;
        w.end()
    }
}

#[cfg(test)]
mod recent_tests {
    #[test]
    fn recent_instants_format_as_any_other() {
        for t in [0, 1_764_547_200, 1_764_547_201, 0, 1_764_547_200, -1, i64::MIN, i64::MAX] {
            assert_eq!(super::with_rfc3339_recent(t, str::to_string), super::rfc3339(t), "{t}");
        }
    }
}
