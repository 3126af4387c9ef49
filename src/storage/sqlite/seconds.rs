//! A minute's seconds as one row of `rollups` (schema version 13): `res` 1, `bucket` the minute's
//! start, and a blob of its seconds in order, each `second:u8 agg` (`agg`: [`encode_agg`]'s blob).
//!
//! Second buckets were a row each. After lone seconds went into their minutes' day packs (see
//! `pack`), the 17.6M second rows left in a store of 100M events were the seconds of minutes with
//! two or more (the warm and hot products'), each paying ~14 bytes of key and cell for a ~5-byte
//! aggregate; as one row per minute they pay that once per minute. A merge rewrites a growing
//! minute's row (at most 60 entries, ~400 bytes), not a page per second.

use rusqlite::functions::FunctionFlags;
use rusqlite::types::ValueRef;

use super::decimal::{decode_agg_prefix, encode_agg_into, skip_agg_prefix};
use crate::rollup::Agg;

fn corrupt() -> rusqlite::Error {
    rusqlite::Error::UserFunctionError("not a stored minute of seconds".into())
}

/// The blob of `seconds` (second of the minute, aggregate), in order of second.
pub(super) fn encode(seconds: &[(u8, Agg)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(seconds.len() * 8);
    for (s, a) in seconds {
        debug_assert!(*s < 60, "second {s} of a minute");
        out.push(*s);
        encode_agg_into(&mut out, a);
    }
    out
}

/// Walks a stored minute's entries in order: `entry` gets each second of the minute and the
/// blob from its aggregate on, which it must consume.
fn walk(
    mut b: &[u8],
    mut entry: impl FnMut(u8, &mut &[u8]) -> Result<(), rusqlite::Error>,
) -> Result<(), rusqlite::Error> {
    let mut last = None;
    while let Some((&s, rest)) = b.split_first() {
        b = rest;
        if s >= 60 || last.is_some_and(|l| l >= s) {
            return Err(corrupt());
        }
        last = Some(s);
        entry(s, &mut b)?;
    }
    Ok(())
}

/// Calls `out` with each second of a stored minute, in order, as (second of the minute, agg).
pub(super) fn visit(b: &[u8], out: &mut impl FnMut(u8, Agg)) -> Result<(), rusqlite::Error> {
    walk(b, |s, b| {
        out(s, decode_agg_prefix(b)?);
        Ok(())
    })
}

pub(super) fn decode(b: &[u8]) -> Result<Vec<(u8, Agg)>, rusqlite::Error> {
    let mut v = Vec::new();
    visit(b, &mut |s, a| v.push((s, a)))?;
    Ok(v)
}

/// The last second of a stored minute, its entries walked without decoding their decimals;
/// `None` for an empty blob, an error for a cut or disordered one.
fn last_second(b: &[u8]) -> Result<Option<u8>, rusqlite::Error> {
    let mut last = None;
    walk(b, |s, b| {
        last = Some(s);
        skip_agg_prefix(b).ok_or_else(corrupt)
    })?;
    Ok(last)
}

/// A stored minute's blob with a new one's seconds added: the two blobs end to end when the new
/// seconds all follow the stored ones (a minute filling in order, what a live stream does),
/// else both decoded and merged. `None` on a decimal overflow.
pub(super) fn merge_blobs(stored: &[u8], new: &[u8]) -> Result<Option<Vec<u8>>, rusqlite::Error> {
    let follows = match (last_second(stored)?, new.first()) {
        (Some(last), Some(&first)) => first > last,
        _ => true,
    };
    if follows {
        last_second(new)?;
        return Ok(Some([stored, new].concat()));
    }
    Ok(merge(&decode(stored)?, &decode(new)?).map(|m| encode(&m)))
}

/// The seconds of both, those in both added; `None` on a decimal overflow.
pub(super) fn merge(a: &[(u8, Agg)], b: &[(u8, Agg)]) -> Option<Vec<(u8, Agg)>> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) if x.0 == y.0 => {
                let mut m = x.1.clone();
                if !m.checked_merge(&y.1) {
                    return None;
                }
                out.push((x.0, m));
                i += 1;
                j += 1;
            }
            (Some(x), Some(y)) if x.0 < y.0 => {
                out.push(x.clone());
                i += 1;
            }
            (Some(x), None) => {
                out.push(x.clone());
                i += 1;
            }
            (_, Some(y)) => {
                out.push(y.clone());
                j += 1;
            }
            (None, None) => unreachable!("the loop's condition"),
        }
    }
    Some(out)
}

/// The conflict clause that adds a minute's new seconds to its stored row.
pub(super) const ADD_SECONDS: &str =
    "ON CONFLICT (series, res, bucket) DO UPDATE SET agg = seconds_merge(agg, excluded.agg)";

/// Registers `seconds_merge(stored, new)`: what the upsert of a minute's seconds does on conflict.
pub(super) fn register_seconds_functions(c: &rusqlite::Connection) -> rusqlite::Result<()> {
    let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC;
    c.create_scalar_function("seconds_merge", 2, flags, |ctx| {
        let part = |i: usize| match ctx.get_raw(i) {
            ValueRef::Blob(b) => Ok(b),
            _ => Err(corrupt()),
        };
        merge_blobs(part(0)?, part(1)?)?.ok_or_else(|| rusqlite::Error::UserFunctionError("decimal overflow".into()))
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use rust_decimal::Decimal;

    use super::*;

    fn seconds(v: &[(u8, i64)]) -> Vec<(u8, Agg)> {
        let mut m: BTreeMap<u8, Agg> = BTreeMap::new();
        for (s, c) in v {
            m.entry(*s).or_default().merge(&Agg::of(Decimal::new(*c, 2)));
        }
        m.into_iter().collect()
    }

    proptest! {
        /// Two stored minutes merged read back as the plain sums of both, second by second.
        #[test]
        fn merged_minutes_read_back_the_sums(
            a in proptest::collection::vec((0u8..60, 1i64..100_000), 0..30),
            b in proptest::collection::vec((0u8..60, 1i64..100_000), 0..30),
        ) {
            let merged = merge(&decode(&encode(&seconds(&a))).expect("a"), &decode(&encode(&seconds(&b))).expect("b"))
                .expect("no overflow");
            let all: Vec<(u8, i64)> = a.iter().chain(&b).copied().collect();
            prop_assert_eq!(decode(&encode(&merged)).expect("decodes"), seconds(&all));
        }

        /// What `seconds_merge` stores, for a minute filling in order (the blobs end to end) or
        /// not (decoded and merged), reads back as the plain sums of both, second by second.
        #[test]
        fn merged_blobs_read_back_the_sums(
            a in proptest::collection::vec((0u8..60, 1i64..100_000), 0..30),
            b in proptest::collection::vec((0u8..60, 1i64..100_000), 0..30),
            after in any::<bool>(),
        ) {
            // Half the cases: the new seconds all after the stored ones.
            let last = a.iter().map(|(s, _)| *s).max();
            let b: Vec<(u8, i64)> = match (after, last) {
                (true, Some(l)) if l < 59 => b.iter().map(|(s, c)| (l + 1 + s % (59 - l), *c)).collect(),
                _ => b,
            };
            let stored = merge_blobs(&encode(&seconds(&a)), &encode(&seconds(&b))).expect("valid").expect("no overflow");
            let all: Vec<(u8, i64)> = a.iter().chain(&b).copied().collect();
            prop_assert_eq!(decode(&stored).expect("decodes"), seconds(&all));
        }
    }

    #[test]
    fn a_cut_or_disordered_minute_is_an_error_not_a_panic() {
        let blob = encode(&seconds(&[(3, 150), (9, 1)]));
        assert!(decode(&blob[..blob.len() - 1]).is_err());
        let mut twice = blob.clone();
        twice.extend_from_slice(&blob);
        assert!(decode(&twice).is_err(), "seconds out of order");
        assert!(decode(&[60, 2, 1, 0]).is_err(), "second 60");
        let later = encode(&seconds(&[(20, 7)]));
        assert!(merge_blobs(&blob[..blob.len() - 1], &later).is_err(), "a cut stored minute");
        assert!(merge_blobs(&blob, &later[..later.len() - 1]).is_err(), "a cut new minute after it");
    }
}
