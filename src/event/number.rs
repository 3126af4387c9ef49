//! Numbers and identifiers read exactly from a field's text: never through a float.

use std::borrow::Cow;

use rust_decimal::Decimal;

use super::fields::FieldValue;

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
pub(super) fn digits_u64(s: &str) -> Option<u64> {
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

pub(super) const NOT_A_NUMBER: &str = "a number or a numeric string, at most 10^18 in magnitude";

/// Longest numeric text read (it bounds the work; leading or trailing zeros are all a longer exact
/// decimal within 10^18 could add).
const MAX_NUMBER_TEXT: usize = 256;

/// The exact value of a decimal number's text: `-?digits[.digits][(e|E)[+-]digits]` (a JSON
/// number, or the same in a string, where leading zeros and a leading `+` are allowed too).
/// A value is never rounded: one with more than 28 significant digits or decimal places, or
/// beyond 10^18 in magnitude, is refused with the reason.
pub fn exact_decimal(text: &str) -> Result<Decimal, &'static str> {
    if text.is_empty() {
        return Err(NOT_A_NUMBER);
    }
    if text.len() > MAX_NUMBER_TEXT {
        return Err("a number of at most 256 characters");
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
    // The common case (a price, a count): 18 digits or fewer fit a u64 and stay below 10^18.
    if exponent == 0 && int.len() + frac.len() <= 18 {
        return Ok(short_decimal(int, frac, negative));
    }
    long_decimal(int, frac, exponent, negative)
}

/// The value of at most 18 digits (`int.frac`, both digits only), exactly: the digits over
/// 10^places, less the fraction's trailing zeros (what [`long_decimal`] gives, without its i128
/// steps and checks, none of which such a number can fail).
fn short_decimal(int: &str, frac: &str, negative: bool) -> Decimal {
    let mut m = int.bytes().chain(frac.bytes()).fold(0u64, |m, b| m * 10 + u64::from(b - b'0'));
    if m == 0 {
        return Decimal::ZERO;
    }
    let mut scale = frac.len() as u32;
    while scale > 0 && m % 10 == 0 {
        m /= 10;
        scale -= 1;
    }
    let m = m as i64; // below 10^18
    Decimal::new(if negative { -m } else { m }, scale)
}

/// The value of `int.frac` × 10^exponent (`int` and `frac` digits only), or why it cannot be held.
fn long_decimal(int: &str, frac: &str, exponent: i64, negative: bool) -> Result<Decimal, &'static str> {
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// The short path is the long one's answer, scale included ("1.50" is 1.5, "100" is 100).
        #[test]
        fn a_short_number_is_read_as_the_long_path_reads_it(
            negative: bool, int in "[0-9]{0,18}", frac in proptest::option::of("[0-9]{0,18}"),
        ) {
            let frac = frac.unwrap_or_default();
            prop_assume!(int.len() + frac.len() <= 18 && !(int.is_empty() && frac.is_empty()));
            let short = short_decimal(&int, &frac, negative);
            let long = long_decimal(&int, &frac, 0, negative).expect("18 digits are within the bound");
            prop_assert_eq!((short.mantissa(), short.scale()), (long.mantissa(), long.scale()));
            let text = format!("{}{int}{}{frac}", if negative { "-" } else { "" }, if frac.is_empty() { "" } else { "." });
            let read = exact_decimal(&text).expect("a number");
            prop_assert_eq!((read.mantissa(), read.scale()), (long.mantissa(), long.scale()));
        }
    }

    #[test]
    fn short_numbers_keep_their_places_but_not_trailing_zeros() {
        for (text, mantissa, scale) in
            [("556.92", 55692, 2), ("1.50", 15, 1), ("100", 100, 0), ("-0.00", 0, 0), ("007.0700", 707, 2)]
        {
            let d = exact_decimal(text).expect(text);
            assert_eq!((d.mantissa(), d.scale()), (mantissa, scale), "{text}");
        }
    }
}
