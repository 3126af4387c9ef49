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
