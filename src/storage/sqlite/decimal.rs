//! Exact aggregates in SQLite, compactly: a bucket's count, sum, min and max are one blob
//! ([`encode_agg`]) that SQL functions registered on every writing connection merge inside an
//! upsert (`agg_merge`), so buckets add up inside SQLite without a read-modify-write and without a
//! float.
//!
//! The layout, most rows being one or a few events of small decimals:
//! `flags: u8` (bit 0: min and max follow; bit 1: min = max = sum, for a bucket of one value),
//! `count: LEB128`, then each decimal (sum[, min, max]) as `scale | sign << 7: u8` followed by
//! its 96-bit mantissa in LEB128. A bucket of one sale of `19.99` takes 5 bytes, where the
//! four columns of 16-byte decimals it replaces (migration 8) took over 50.

use std::str::FromStr;

use rusqlite::Connection;
use rusqlite::functions::FunctionFlags;
use rusqlite::types::ValueRef;
use rust_decimal::Decimal;

use crate::rollup::Agg;
use crate::storage::StoreError;

const MIN_MAX: u8 = 1;
const ONE_VALUE: u8 = 2;

fn bad(why: &'static str) -> rusqlite::Error {
    rusqlite::Error::UserFunctionError(why.into())
}

pub(super) fn put_varint(out: &mut Vec<u8>, mut v: u128) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

pub(super) fn take_varint(b: &mut &[u8]) -> Option<u128> {
    let mut v: u128 = 0;
    for shift in (0..128).step_by(7) {
        let (&byte, rest) = b.split_first()?;
        *b = rest;
        v |= u128::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

fn put_decimal(out: &mut Vec<u8>, d: Decimal) {
    out.push(d.scale() as u8 | if d.is_sign_negative() { 0x80 } else { 0 });
    put_varint(out, d.mantissa().unsigned_abs());
}

fn take_decimal(b: &mut &[u8]) -> Option<Decimal> {
    let (&head, rest) = b.split_first()?;
    *b = rest;
    let m = i128::try_from(take_varint(b)?).ok()?;
    Decimal::try_from_i128_with_scale(if head & 0x80 != 0 { -m } else { m }, u32::from(head & 0x7f)).ok()
}

/// A bucket's aggregate as its stored blob.
pub(super) fn encode_agg(a: &Agg) -> Vec<u8> {
    let mut out = Vec::with_capacity(8);
    encode_agg_into(&mut out, a);
    out
}

/// [`encode_agg`], appended to `out`.
pub(super) fn encode_agg_into(out: &mut Vec<u8>, a: &Agg) {
    let one = a.count == 1 && a.min == Some(a.sum) && a.max == Some(a.sum);
    let flags = if one {
        ONE_VALUE
    } else if a.min.is_some() || a.max.is_some() {
        MIN_MAX
    } else {
        0
    };
    out.push(flags);
    put_varint(out, u128::from(a.count.max(0) as u64));
    put_decimal(out, a.sum);
    if flags == MIN_MAX {
        put_decimal(out, a.min.unwrap_or(a.sum));
        put_decimal(out, a.max.unwrap_or(a.sum));
    }
}

/// The aggregate a blob holds.
pub(super) fn decode_agg(mut b: &[u8]) -> Result<Agg, rusqlite::Error> {
    decode_agg_prefix(&mut b)
}

/// The aggregate at the start of `b`, which is advanced past it.
pub(super) fn decode_agg_prefix(b: &mut &[u8]) -> Result<Agg, rusqlite::Error> {
    let corrupt = || bad("not a stored aggregate");
    let (&flags, rest) = b.split_first().ok_or_else(corrupt)?;
    *b = rest;
    let count = i64::try_from(take_varint(b).ok_or_else(corrupt)?).map_err(|_| corrupt())?;
    let sum = take_decimal(b).ok_or_else(corrupt)?;
    let (min, max) = match flags {
        ONE_VALUE => (Some(sum), Some(sum)),
        MIN_MAX => (Some(take_decimal(b).ok_or_else(corrupt)?), Some(take_decimal(b).ok_or_else(corrupt)?)),
        _ => (None, None),
    };
    Ok(Agg { count, sum, min, max })
}

/// Advances `b` past the aggregate at its start without decoding its decimals; `None` if cut.
pub(super) fn skip_agg_prefix(b: &mut &[u8]) -> Option<()> {
    let (&flags, rest) = b.split_first()?;
    *b = rest;
    take_varint(b)?;
    let decimals = if flags == MIN_MAX { 3 } else { 1 };
    for _ in 0..decimals {
        *b = b.get(1..)?;
        take_varint(b)?;
    }
    Some(())
}

/// The conflict clause that adds a bucket row to the one already stored.
pub(super) const ADD_ROWS: &str = "ON CONFLICT (series, res, bucket) DO UPDATE SET agg = agg_merge(agg, excluded.agg)";

/// Runs the bucket upsert `st`, whose parameters are the key columns, then the aggregate.
pub(super) fn upsert(st: &mut rusqlite::CachedStatement<'_>, key: &[i64], a: &Agg) -> Result<(), StoreError> {
    for (i, k) in key.iter().enumerate() {
        st.raw_bind_parameter(i + 1, k).map_err(super::conn::db_err)?;
    }
    st.raw_bind_parameter(key.len() + 1, encode_agg(a)).map_err(super::conn::db_err)?;
    st.raw_execute().map(drop).map_err(super::conn::db_err)
}

/// A decimal of the layout before migration 8: a 16-byte blob (`Decimal::serialize`), or text
/// from before migration 2.
fn old_decimal(v: ValueRef<'_>) -> Result<Option<Decimal>, rusqlite::Error> {
    match v {
        ValueRef::Null => Ok(None),
        ValueRef::Blob(b) => Ok(Some(Decimal::deserialize(b.try_into().map_err(|_| bad("not a stored decimal"))?))),
        ValueRef::Text(t) => std::str::from_utf8(t)
            .ok()
            .and_then(|s| Decimal::from_str(s).ok())
            .map(Some)
            .ok_or_else(|| bad("not a stored decimal")),
        _ => Err(bad("not a stored decimal")),
    }
}

pub(super) fn register_decimal_functions(c: &Connection) -> rusqlite::Result<()> {
    let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC;
    // The two aggregates of one bucket as one: what every upsert of a bucket does.
    c.create_scalar_function("agg_merge", 2, flags, |ctx| {
        let part = |i: usize| match ctx.get_raw(i) {
            ValueRef::Blob(b) => decode_agg(b).map(Some),
            ValueRef::Null => Ok(None),
            _ => Err(bad("not a stored aggregate")),
        };
        let merged = match (part(0)?, part(1)?) {
            (Some(mut a), Some(b)) => {
                if !a.checked_merge(&b) {
                    return Err(bad("decimal overflow"));
                }
                a
            }
            (a, b) => a.or(b).ok_or_else(|| bad("two missing aggregates"))?,
        };
        Ok(encode_agg(&merged))
    })?;
    // Migration 2: text decimals of version 1 as the 16-byte blobs of versions 2 to 7.
    c.create_scalar_function("dec_blob", 1, flags, |ctx| Ok(old_decimal(ctx.get_raw(0))?.map(|d| d.serialize())))?;
    // Migration 8: the four columns of versions 2 to 7 as one blob.
    c.create_scalar_function("agg_pack", 4, flags, |ctx| {
        let count: i64 = ctx.get(0)?;
        let agg = Agg {
            count,
            sum: old_decimal(ctx.get_raw(1))?.unwrap_or_default(),
            min: old_decimal(ctx.get_raw(2))?,
            max: old_decimal(ctx.get_raw(3))?,
        };
        Ok(encode_agg(&agg))
    })?;
    Ok(())
}

pub(super) fn agg_from_row(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Agg> {
    match r.get_ref(at)? {
        ValueRef::Blob(b) => decode_agg(b),
        _ => Err(bad("not a stored aggregate")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).expect("decimal")
    }

    #[test]
    fn aggregates_round_trip_and_a_single_small_sale_takes_five_bytes() {
        let one = Agg::of(d("19.99"));
        assert_eq!(encode_agg(&one).len(), 5);
        for a in [
            one,
            Agg::default(),
            Agg { count: 3, sum: d("-12.5"), min: Some(d("-20")), max: Some(d("7.5")) },
            Agg { count: i64::MAX, sum: Decimal::MAX, min: Some(Decimal::MIN), max: Some(Decimal::MAX) },
            Agg::of(d("0.0000000000000000000000000001")),
            Agg { count: 2, sum: d("2"), min: Some(d("1")), max: Some(d("1")) },
        ] {
            assert_eq!(decode_agg(&encode_agg(&a)).expect("decodes"), a, "{a:?}");
        }
        assert!(decode_agg(&[1, 5]).is_err(), "a cut blob is an error, not a panic");
    }
}
