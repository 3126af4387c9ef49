//! `{"event":"x","timestamp":<fuzzed JSON value>}` through the validator, at several times of
//! receipt (the epoch, 2023, the end of year 9999).
//!
//! Invariants:
//! - validation never panics; an accepted event's time is >= 0 and at most the allowed skew past
//!   receipt; a null timestamp means the default time;
//! - when the fuzzed text is one JSON value, the outcome matches an independent reading of it:
//!   a plain JSON integer is epoch milliseconds (accepted when it fits an i64 and is not too far
//!   ahead); a string in the strict RFC 3339 form `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)` is read
//!   by the small civil-calendar reader below and must be accepted with the same instant (when it
//!   is >= 0 and not too far ahead); any other value (bool, array, object, fraction, exponent,
//!   negative number) is refused as a bad timestamp;
//! - an accepted string timestamp, printed back as RFC 3339, is read again as the same instant
//!   (when it is before year 10000: `"9999-12-31T23:59:60.5Z"`, a leap second, is accepted as
//!   10000-01-01T00:00:00.5Z, which RFC 3339 cannot print; an observation, not a failure).
use jetstream::config::Settings;
use jetstream::event::{Rejection, Validator};
use std::sync::LazyLock;

const RECEIVED: [i64; 3] = [0, 1_700_000_000_000, 253_402_300_799_999];
const DEFAULT_MS: i64 = 1_000;
/// 10000-01-01T00:00:00Z, the first instant RFC 3339 cannot name.
const END_OF_9999_MS: i64 = 253_402_300_800_000;

static FIXTURE: LazyLock<(Validator, i64)> = LazyLock::new(|| {
    let s = Settings::default();
    (Validator::new(&s), s.ingest.max_future_skew.as_millis() as i64)
});

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(y: i64, m: i64) -> i64 {
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][(m - 1) as usize]
}

/// Epoch milliseconds of a strict RFC 3339 date-time (no leap second, 'T' and 'Z' upper case),
/// or None when the text is not in that form.
fn strict_rfc3339_ms(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = b.get(r)?;
        t.iter().all(u8::is_ascii_digit).then(|| t.iter().fold(0i64, |a, d| a * 10 + i64::from(d - b'0')))
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (y, mo, d, h, mi, sec) = (num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 || sec > 59 {
        return None;
    }
    let mut i = 19;
    let mut frac_ms = 0;
    if b[i] == b'.' {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return None;
        }
        let mut digits = s[start..i].bytes().chain(std::iter::repeat(b'0')).take(3);
        frac_ms = (0..3).fold(0, |a, _| a * 10 + i64::from(digits.next().unwrap_or(b'0') - b'0'));
    }
    let offset_s = match &b[i..] {
        [b'Z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let oh = num(i + 1..i + 3)?;
            let om = num(i + 4..i + 6)?;
            if oh > 23 || om > 59 {
                return None;
            }
            (oh * 3600 + om * 60) * if *sign == b'+' { 1 } else { -1 }
        }
        _ => return None,
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec - offset_s;
    Some(secs * 1000 + frac_ms)
}

fn validate(json: &str, received: i64) -> Result<i64, Rejection> {
    FIXTURE.0.validate(json.as_bytes(), received, DEFAULT_MS).map(|e| e.time_ms)
}

/// One input, as the fuzzer gives it: panics when an invariant does not hold.
pub fn run_one(data: &[u8]) {
    let Ok(value) = std::str::from_utf8(data) else { return };
    let skew = FIXTURE.1;
    let json = format!(r#"{{"event":"x","timestamp":{value}}}"#);
    // What the value is, read independently, when the text is exactly one JSON value.
    let parsed: Option<serde_json::Value> = serde_json::from_str(value).ok();
    let plain_integer = value.trim().bytes().all(|b| b.is_ascii_digit()) && !value.trim().is_empty();
    for received in RECEIVED {
        let got = validate(&json, received);
        if let Ok(t) = got {
            assert!(t >= 0, "{value:?}: accepted time {t} is negative");
            assert!(t - received <= skew, "{value:?}: accepted time {t} beyond the skew past {received}");
        }
        let Some(v) = &parsed else { continue };
        // The instant the value names, if it is a timestamp at all.
        let expected: Option<i64> = match v {
            serde_json::Value::Null => Some(DEFAULT_MS),
            serde_json::Value::Number(_) if plain_integer => value.trim().parse::<i64>().ok(),
            serde_json::Value::String(s) => match strict_rfc3339_ms(s) {
                Some(ms) => Some(ms),
                // Not in the strict form: chrono may still take it (lower-case t/z, a space, a leap
                // second); only the generic invariants above apply, plus the round trip below.
                None => {
                    // Printable as RFC 3339 only up to 9999-12-31T23:59:59.999Z: a leap second at
                    // the very end of 9999 is read as an instant of year 10000 (see
                    // fuzz/regressions/timestamp/), reachable only with a clock in year 9999.
                    if let Ok(t) = got
                        && t < END_OF_9999_MS
                    {
                        let printed = chrono::DateTime::from_timestamp_millis(t)
                            .expect("an accepted time is printable")
                            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
                        let again = validate(&format!(r#"{{"event":"x","timestamp":"{printed}"}}"#), received);
                        assert_eq!(again, Ok(t), "{value:?} read as {t}, printed {printed:?}");
                    }
                    continue;
                }
            },
            _ => None,
        };
        match expected {
            Some(ms) if ms >= 0 && ms - received <= skew => {
                assert_eq!(got, Ok(ms), "{value:?} received at {received}");
            }
            Some(ms) if ms >= 0 => {
                assert!(
                    matches!(got, Err(Rejection::FutureTimestamp { .. })),
                    "{value:?}: {ms} is too far ahead: {got:?}"
                )
            }
            _ => assert!(matches!(got, Err(Rejection::BadTimestamp(_))), "{value:?} is no timestamp: {got:?}"),
        }
    }
}
