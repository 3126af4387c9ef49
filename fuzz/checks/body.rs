//! A request body, split both ways (JSON and NDJSON), every piece validated with the built-in
//! settings and every accepted event folded into the built-in metrics.
//!
//! Invariants:
//! - `split_body` fails with `Empty` exactly when the body is blank; every piece is a non-empty
//!   subslice of the body, in order and without overlap; NDJSON pieces are trimmed single lines;
//!   a JSON body that splits is valid JSON, and so is each of its pieces.
//! - an accepted event's `raw` is the very piece it came from; its name is a non-empty string of at
//!   most 128 bytes without NUL; its time is >= 0 and not beyond the allowed skew;
//! - an accepted `productSold`/`productRated` has an id, and exact amounts/ratings within their
//!   configured range (and always within ±10^18);
//! - folding the accepted events counts each one once in the `events` metric, and sums the
//!   `productSold` amounts exactly into `sales_amount`.
use std::sync::LazyLock;

use jetstream::config::Settings;
use jetstream::event::{BodyFormat, Event, FieldValue, Validator, exact_decimal, parse_decimal, parse_id, split_body};
use jetstream::rollup::{Metrics, Resolution, RollupDelta};
use rust_decimal::Decimal;

/// The most events a body may hold here: low, so that the cap is exercised too.
const MAX_EVENTS: usize = 1000;

/// A fixed instant (2023-11-14T22:13:20Z) as the time of receipt and the default event time.
const NOW_MS: i64 = 1_700_000_000_000;

struct Fixture {
    validator: Validator,
    metrics: Metrics,
    skew_ms: i64,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let settings = Settings::default();
    Fixture {
        validator: Validator::new(&settings),
        metrics: Metrics::new(&settings),
        skew_ms: settings.ingest.max_future_skew.as_millis() as i64,
    }
});

fn ten_pow_18() -> Decimal {
    Decimal::from(1_000_000_000_000_000_000i64)
}

/// The byte range of `piece` inside `body`, asserting it is a subslice.
fn range_in(body: &[u8], piece: &[u8]) -> (usize, usize) {
    let base = body.as_ptr() as usize;
    let start = piece.as_ptr() as usize;
    assert!(start >= base && start + piece.len() <= base + body.len(), "a piece is not a subslice of the body");
    (start - base, start - base + piece.len())
}

fn check_pieces(body: &[u8], pieces: &[&[u8]], format: BodyFormat) {
    let mut end = 0;
    for piece in pieces {
        let (s, e) = range_in(body, piece);
        assert!(s >= end, "pieces overlap or are out of order");
        assert!(!piece.is_empty(), "an empty piece");
        end = e;
        if format == BodyFormat::Ndjson {
            assert!(!piece.contains(&b'\n'), "an NDJSON piece spans lines");
            assert_eq!(piece.trim_ascii(), *piece, "an NDJSON piece is not trimmed");
        } else {
            assert!(
                serde_json::from_slice::<serde::de::IgnoredAny>(piece).is_ok(),
                "a piece of a JSON body is not JSON"
            );
        }
    }
}

fn check_event(piece: &[u8], e: &Event<'_>, f: &Fixture) {
    assert!(std::ptr::eq(e.raw, piece), "an accepted event's raw bytes are not its piece");
    assert!(!e.name.is_empty() && e.name.len() <= 128 && !e.name.contains('\0'), "bad name {:?}", e.name);
    assert!(e.time_ms >= 0, "negative time {}", e.time_ms);
    assert!(e.time_ms - NOW_MS <= f.skew_ms, "time {} beyond the allowed skew", e.time_ms);
    match e.fields.get("timestamp") {
        None | Some(FieldValue::Null) => assert_eq!(e.time_ms, NOW_MS, "no timestamp: the default time"),
        Some(_) => {}
    }
    let exact = |field: &str| -> Option<Decimal> {
        let v = e.fields.get(field)?;
        let d = parse_decimal(v)?;
        let direct = match v {
            FieldValue::Number(t) => exact_decimal(t),
            FieldValue::Str(t) => exact_decimal(t.trim()),
            _ => panic!("parse_decimal read a {v:?}"),
        };
        assert_eq!(direct, Ok(d), "parse_decimal and exact_decimal disagree on {v:?}");
        assert!(d.abs() <= ten_pow_18(), "{field} = {d} beyond 10^18");
        Some(d)
    };
    match &*e.name {
        "productSold" => {
            assert!(parse_id(e.fields.get("product_id").expect("validated")).is_some(), "product_id");
            let amount = exact("amount").expect("an accepted productSold has an exact amount");
            assert!(amount >= Decimal::ZERO, "amount {amount} below its min 0");
            let units = exact("no_of_units").expect("an accepted productSold has units");
            assert!(units >= Decimal::ZERO && units.fract().is_zero(), "units {units}");
        }
        "productRated" => {
            assert!(parse_id(e.fields.get("product_id").expect("validated")).is_some(), "product_id");
            let rating = exact("rating").expect("an accepted productRated has an exact rating");
            assert!(rating >= Decimal::ONE && rating <= Decimal::from(5), "rating {rating} outside 1 to 5");
        }
        _ => {}
    }
}

fn run(body: &[u8], format: BodyFormat) {
    let f = &*FIXTURE;
    let pieces = match split_body(body, format, MAX_EVENTS) {
        Ok(p) => p,
        Err(jetstream::event::BodyError::Empty) => {
            assert!(body.trim_ascii().is_empty(), "a non-blank body called empty");
            return;
        }
        Err(jetstream::event::BodyError::TooManyEvents(n)) => {
            assert_eq!(n, MAX_EVENTS, "the cap reported is the cap given");
            let all =
                split_body(body, format, usize::MAX).expect("a body refused for its count splits without the cap");
            assert!(all.len() > MAX_EVENTS, "refused for {} events, at most {MAX_EVENTS}", all.len());
            return;
        }
        Err(_) => {
            assert!(!body.trim_ascii().is_empty(), "a blank body not called empty");
            assert_eq!(format, BodyFormat::Json, "NDJSON splitting never fails on a non-blank body");
            return;
        }
    };
    assert!(!body.trim_ascii().is_empty());
    if format == BodyFormat::Json {
        // Trimmed: `split_body` trims ASCII whitespace, which includes form feed (0x0C), which JSON
        // does not count as whitespace; a body padded with it is accepted (harmless leniency).
        let trimmed = body.trim_ascii();
        assert!(serde_json::from_slice::<serde::de::IgnoredAny>(trimmed).is_ok(), "a JSON body that split is not JSON");
    } else {
        assert!(!pieces.is_empty(), "a non-blank NDJSON body has a line");
    }
    check_pieces(body, &pieces, format);

    let mut delta = RollupDelta::default();
    let (mut accepted, mut sold_sum) = (0i64, Decimal::ZERO);
    for piece in &pieces {
        if let Ok(e) = f.validator.validate(piece, NOW_MS, NOW_MS) {
            check_event(piece, &e, f);
            accepted += 1;
            if e.name == "productSold" {
                sold_sum += parse_decimal(e.fields.get("amount").expect("checked")).expect("checked");
            }
            f.metrics.fold(&e, &mut delta);
        }
    }
    // The built-in metrics: `events` counts every accepted event, `sales_amount` sums amounts.
    let (rows, _dims) = delta.into_rows();
    let all = |metric: &str| {
        rows.iter()
            .find(|(k, r)| &*k.metric == metric && k.dim.is_empty() && r.res == Resolution::All)
            .map(|(_, r)| r.agg.clone())
    };
    assert_eq!(all("events").map_or(0, |a| a.count), accepted, "events counted");
    if let Some(a) = all("sales_amount") {
        assert_eq!(a.sum, sold_sum, "sales_amount sums the amounts exactly");
    } else {
        assert_eq!(sold_sum, Decimal::ZERO);
    }
}

/// One input, as the fuzzer gives it: panics when an invariant does not hold.
pub fn run_one(body: &[u8]) {
    run(body, BodyFormat::Json);
    run(body, BodyFormat::Ndjson);
}
