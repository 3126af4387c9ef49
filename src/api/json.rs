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

/// `rfc3339`, remembered per thread for the last two instants asked: every answer of one second
/// shows the same window bounds, and formatting them took ~4 % of a seed request's instructions.
fn rfc3339_recent(t_s: i64) -> String {
    use std::cell::RefCell;
    thread_local! {
        static RECENT: RefCell<[(i64, String); 2]> =
            const { RefCell::new([(i64::MIN, String::new()), (i64::MIN, String::new())]) };
    }
    RECENT.with(|recent| {
        let mut recent = recent.borrow_mut();
        if let Some((_, text)) = recent.iter().find(|(at, _)| *at == t_s) {
            return text.clone();
        }
        let text = rfc3339(t_s);
        recent.swap(0, 1);
        recent[0] = (t_s, text.clone());
        text
    })
}

/// A window's bounds in answers: `[from, to)`, RFC 3339.
#[derive(Debug, Serialize, ToSchema)]
pub struct WindowOut {
    pub from: String,
    pub to: String,
}

impl WindowOut {
    pub fn new(from: i64, to: i64) -> Self {
        Self { from: rfc3339_recent(from), to: rfc3339_recent(to) }
    }
}

#[cfg(test)]
mod recent_tests {
    #[test]
    fn recent_instants_format_as_any_other() {
        for t in [0, 1_764_547_200, 1_764_547_201, 0, 1_764_547_200, -1, i64::MIN, i64::MAX] {
            assert_eq!(super::rfc3339_recent(t), super::rfc3339(t), "{t}");
        }
    }
}
