//! `exact_decimal` against an independent evaluation of the text.
//!
//! The reference below reads the documented grammar, `[+-]?digits[.digits][(e|E)[+-]digits]`
//! (a string may also omit the whole part, as in ".5", which `exact_decimal` accepts), strips the
//! digits to `D × 10^x` with `D` free of leading and trailing zeros, and decides from `D`'s digit
//! count `k`, `x` and the magnitude whether the value is held exactly under the documented rules
//! (at most 28 significant digits, at most 28 decimal places, |value| <= 10^18; text of at most 256
//! bytes, a longer one refused as such). Invariants:
//! - Ok(d) exactly when the reference says the text is valid and representable, and then `d` is
//!   the reference value; `d` prints as plain digits that read back as `d`, at its canonical scale;
//!   `Decimal::from_str_exact`/`from_scientific` agree whenever they accept the text;
//! - Err(reason) otherwise, and the reason is true: "not a number" only for text that is not a
//!   number or is beyond 10^18, "28 significant digits" only when there
//!   are more, "28 decimal places" only when there are more;
//! - `parse_decimal` on a string field reads its trimmed text the same way.
use std::borrow::Cow;

use jetstream::event::{FieldValue, exact_decimal, parse_decimal};
use rust_decimal::Decimal;

const MAX_TEXT: usize = 256;
const TOO_LONG: &str = "a number of at most 256 characters";

#[derive(Debug)]
enum Reference {
    /// Not decimal number text.
    Invalid,
    /// Longer than the 256 bytes read, whatever it is.
    TooLong,
    /// A number that is not held: (beyond 10^18, more than 28 significant digits, more than 28 places).
    Unheld {
        too_big: bool,
        too_many_digits: bool,
        too_many_places: bool,
    },
    Value(Decimal),
}

fn all_digits(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit())
}

fn reference(text: &str) -> Reference {
    if text.len() > MAX_TEXT {
        return Reference::TooLong;
    }
    if text.is_empty() {
        return Reference::Invalid;
    }
    let (mantissa, exp_text) = match text.find(['e', 'E']) {
        Some(i) => (&text[..i], Some(&text[i + 1..])),
        None => (text, None),
    };
    let (negative, unsigned) = if let Some(rest) = mantissa.strip_prefix('-') {
        (true, rest)
    } else {
        (false, mantissa.strip_prefix('+').unwrap_or(mantissa))
    };
    let (int, frac) = match unsigned.split_once('.') {
        Some((i, f)) if !f.is_empty() => (i, f),
        Some(_) => return Reference::Invalid,
        None => (unsigned, ""),
    };
    if (int.is_empty() && frac.is_empty()) || !all_digits(int) || !all_digits(frac) {
        return Reference::Invalid;
    }
    // The exponent, saturated far beyond anything that matters for <= 256 digits.
    let exp: i64 = match exp_text {
        None => 0,
        Some(e) => {
            let (sign, digits) = match e.as_bytes().first() {
                Some(b'-') => (-1, &e[1..]),
                Some(b'+') => (1, &e[1..]),
                _ => (1, e),
            };
            if digits.is_empty() || !all_digits(digits) {
                return Reference::Invalid;
            }
            let digits = digits.trim_start_matches('0');
            let magnitude = if digits.len() > 9 { 1_000_000_000 } else { digits.parse::<i64>().unwrap_or(0) };
            sign * magnitude
        }
    };
    let all: String = format!("{int}{frac}");
    let d = all.trim_start_matches('0');
    if d.is_empty() {
        return Reference::Value(Decimal::ZERO);
    }
    let trailing = d.len() - d.trim_end_matches('0').len();
    let d = d.trim_end_matches('0');
    let k = d.len() as i64;
    // value = D × 10^x
    let x = exp - frac.len() as i64 + trailing as i64;
    // The value has k + x digits before the point: beyond 10^18 when that exceeds 19, or is 19
    // and the value is not 10^18 itself (D = 1, x = 18).
    let whole_digits = k + x;
    let too_big = whole_digits > 19 || (whole_digits == 19 && !(d == "1" && x == 18));
    let too_many_digits = k > 28;
    let too_many_places = x < 0 && -x > 28;
    if too_big || too_many_digits || too_many_places {
        return Reference::Unheld { too_big, too_many_digits, too_many_places };
    }
    let m: i128 = d.parse().expect("at most 28 digits");
    let (m, scale) = if x >= 0 { (m * 10i128.pow(x as u32), 0) } else { (m, (-x) as u32) };
    Reference::Value(Decimal::from_i128_with_scale(if negative { -m } else { m }, scale))
}

const NOT_A_NUMBER: &str = "a number or a numeric string, at most 10^18 in magnitude";

fn check(text: &str) {
    let got = exact_decimal(text);
    let expected = reference(text);
    match (&got, &expected) {
        (Ok(d), Reference::Value(v)) => {
            assert_eq!(d, v, "{text:?}: exact_decimal gave {d}, the text's value is {v}");
            assert!(d.abs() <= Decimal::from(1_000_000_000_000_000_000i64), "{text:?}: {d} beyond 10^18");
            assert_eq!(d.scale(), d.normalize().scale(), "{text:?}: {d} not at its canonical scale");
            let printed = d.to_string();
            let plain = printed.strip_prefix('-').unwrap_or(&printed);
            let (i, f) = plain.split_once('.').unwrap_or((plain, "0"));
            assert!(!i.is_empty() && all_digits(i) && !f.is_empty() && all_digits(f), "{text:?} prints as {printed:?}");
            assert_eq!(exact_decimal(&printed), Ok(*d), "{text:?}: {printed:?} does not read back");
            // rust_decimal's own exact readers, when they take the text, give the same value.
            if text.find(['e', 'E']).is_none() {
                if let Ok(r) = Decimal::from_str_exact(text) {
                    assert_eq!(r, *d, "{text:?}: from_str_exact gives {r}");
                }
            } else if let Some(i) = text.find(['e', 'E']) {
                let exp_digits = text[i + 1..].trim_start_matches(['+', '-']);
                if exp_digits.len() <= 2 && Decimal::from_str_exact(&text[..i]).is_ok() {
                    if let Ok(r) = Decimal::from_scientific(text) {
                        assert_eq!(r, *d, "{text:?}: from_scientific gives {r}");
                    }
                }
            }
        }
        (Ok(d), other) => panic!("{text:?}: exact_decimal gave {d}, but the text is {other:?}"),
        (Err(why), Reference::Value(v)) => panic!("{text:?}: exact_decimal refused it ({why}), but it is exactly {v}"),
        (Err(why), Reference::TooLong) => assert_eq!(*why, TOO_LONG, "{text:?}: over {MAX_TEXT} bytes"),
        (Err(why), Reference::Invalid) => {
            assert_eq!(*why, NOT_A_NUMBER, "{text:?}: not a number, but the reason given is {why:?}")
        }
        (Err(why), Reference::Unheld { too_big, too_many_digits, too_many_places }) => {
            if *why == NOT_A_NUMBER {
                assert!(*too_big, "{text:?}: called not a number / beyond 10^18, but it is neither");
            } else if why.contains("significant digits") {
                assert!(*too_many_digits, "{text:?}: has at most 28 significant digits, but refused for more");
            } else if why.contains("decimal places") {
                assert!(*too_many_places, "{text:?}: has at most 28 decimal places, but refused for more");
            } else {
                panic!("{text:?}: unknown reason {why:?}");
            }
        }
    }
    // A string field is read trimmed, the same way.
    let field = FieldValue::Str(Cow::Borrowed(text));
    assert_eq!(parse_decimal(&field), exact_decimal(text.trim()).ok(), "{text:?}: parse_decimal of a string");
}

/// One input, as the fuzzer gives it: panics when an invariant does not hold.
pub fn run_one(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        check(text);
    }
}
