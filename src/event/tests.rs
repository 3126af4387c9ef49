//! Unit tests of the event model.

use std::borrow::Cow;

use rust_decimal::Decimal;

use super::*;
use crate::config::Settings;

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
    let rated =
        check(r#"{"event":"productRated","name_of_product":"product A","product_id":12,"rating":4,"category":"F"}"#)
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
        (r#"{"event":"productRated","product_id":1,"rating":6}"#, "\"rating\" is 6, outside the allowed range 1 to 5"),
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
    assert_eq!(split_body(br#" {"a":1} "#, BodyFormat::Json, 10).unwrap(), vec![br#"{"a":1}"#.as_slice()]);
    assert_eq!(split_body(br#"[{"a":1}, 2]"#, BodyFormat::Json, 10).unwrap().len(), 2);
    assert_eq!(split_body(b"{\"a\":1}\n\nnope\n", BodyFormat::Ndjson, 10).unwrap().len(), 2);
    assert!(matches!(split_body(b"hello", BodyFormat::Json, 10), Err(BodyError::NotJson(_))));
    assert!(matches!(split_body(b"42", BodyFormat::Json, 10), Err(BodyError::WrongShape)));
    assert!(matches!(split_body(b"  ", BodyFormat::Json, 10), Err(BodyError::Empty)));
    // At most `max_events`, in either shape, refused as soon as there is one more.
    assert_eq!(split_body(b"[{},{},{}]", BodyFormat::Json, 3).unwrap().len(), 3);
    assert!(matches!(split_body(b"[{},{},{},{}]", BodyFormat::Json, 3), Err(BodyError::TooManyEvents(3))));
    assert!(matches!(split_body(b"{}\n{}\n{}\n{}", BodyFormat::Ndjson, 3), Err(BodyError::TooManyEvents(3))));
    assert!(matches!(split_body(b"[{},{}] x", BodyFormat::Json, 3), Err(BodyError::NotJson(_))), "trailing bytes");
}
