//! The oracle's side of a figure: count, sum, min and max folded one value at a time over exact
//! decimals (sharing no code with the rollups), and readers of the API's answers into the same
//! shape, from the numbers' text.

use rust_decimal::Decimal;
use serde_json::Value;

use super::{Exact, TestApp};

/// count, sum, min, max of a set of values, folded one by one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fig {
    pub count: i64,
    pub sum: Decimal,
    pub min: Option<Decimal>,
    pub max: Option<Decimal>,
}

impl Fig {
    pub fn add(&mut self, v: Decimal) {
        self.count += 1;
        self.sum += v;
        self.min = Some(self.min.map_or(v, |m| m.min(v)));
        self.max = Some(self.max.map_or(v, |m| m.max(v)));
    }

    /// The average as the API rounds it (6 places), None without values.
    pub fn avg(&self) -> Option<Decimal> {
        (self.count > 0).then(|| (self.sum / Decimal::from(self.count)).round_dp(6))
    }

    /// One of count, sum, avg, min, max.
    pub fn by(&self, by: &str) -> Option<Decimal> {
        match by {
            "count" => Some(Decimal::from(self.count)),
            "sum" => Some(self.sum),
            "avg" => self.avg(),
            "min" => self.min,
            "max" => self.max,
            other => panic!("no figure {other}"),
        }
    }
}

/// GETs `path` with the app's token: the status, the body as a `Value` (for shapes and text) and
/// as [`Exact`] (for numbers, read from their text: a `Value` would round them through an f64).
pub async fn get_exact(app: &TestApp, path: &str) -> (u16, Value, Exact) {
    let r = app.client.get(app.url(path)).bearer_auth(&app.token).send().await.expect("GET");
    let status = r.status().as_u16();
    let text = r.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null), Exact::parse(&text))
}

/// The count, sum, min and max of an answer's object, exactly.
pub fn fig_of(x: &Exact) -> Fig {
    for k in ["sum", "min", "max", "avg", "total", "average_rating"] {
        let v = x.get(k);
        assert!(matches!(v, Exact::Null) || v.is_plain_number(), "{k} is not a plain number: {v:?}");
    }
    Fig {
        count: x.get("count").dec().expect("a count").try_into().expect("a count fits"),
        sum: x.get("sum").dec().expect("a sum"),
        min: x.get("min").dec(),
        max: x.get("max").dec(),
    }
}

/// A series point's start (epoch seconds) and figure.
pub fn fig_and_time(p: &Exact) -> (i64, Fig) {
    let Exact::Str(t) = p.get("t") else { panic!("a point without a time: {p:?}") };
    (chrono::DateTime::parse_from_rfc3339(t).expect("RFC 3339").timestamp(), fig_of(p))
}

/// An answer's `window`, `[from, to)` in epoch seconds.
pub fn window_of(v: &Value) -> (i64, i64) {
    let t = |k: &str| {
        chrono::DateTime::parse_from_rfc3339(v["window"][k].as_str().expect("a window bound"))
            .expect("RFC 3339")
            .timestamp()
    };
    (t("from"), t("to"))
}
