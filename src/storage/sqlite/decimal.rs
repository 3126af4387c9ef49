//! Exact decimals in SQLite: 16-byte blobs (`rust_decimal`'s `serialize` layout), added, compared
//! and converted by SQL functions registered on every writing connection, so an upsert adds
//! decimals inside SQLite without a read-modify-write and without a float.

use std::str::FromStr;

use rusqlite::Connection;
use rusqlite::functions::FunctionFlags;
use rusqlite::types::ValueRef;
use rust_decimal::Decimal;

use crate::rollup::Agg;

fn dec(s: &str) -> Result<Decimal, rusqlite::Error> {
    Decimal::from_str(s).map_err(|e| rusqlite::Error::UserFunctionError(Box::new(e)))
}

/// A stored decimal: a 16-byte blob (`Decimal::serialize`); text from before migration 2 is read
/// too, so `dec_blob` can convert it.
pub(super) fn dec_value(v: ValueRef<'_>) -> Result<Option<Decimal>, rusqlite::Error> {
    let bad = || rusqlite::Error::UserFunctionError("not a stored decimal".into());
    match v {
        ValueRef::Null => Ok(None),
        ValueRef::Blob(b) => Ok(Some(Decimal::deserialize(b.try_into().map_err(|_| bad())?))),
        ValueRef::Text(t) => dec(std::str::from_utf8(t).map_err(|_| bad())?).map(Some),
        _ => Err(bad()),
    }
}

pub(super) fn dec_blob(d: Decimal) -> [u8; 16] {
    d.serialize()
}

pub(super) fn register_decimal_functions(c: &Connection) -> rusqlite::Result<()> {
    let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC;
    c.create_scalar_function("dec_blob", 1, flags, |ctx| Ok(dec_value(ctx.get_raw(0))?.map(dec_blob)))?;
    c.create_scalar_function("dec_add", 2, flags, |ctx| {
        let (a, b) = (dec_value(ctx.get_raw(0))?, dec_value(ctx.get_raw(1))?);
        let sum = a.unwrap_or_default().checked_add(b.unwrap_or_default());
        sum.map(dec_blob).ok_or_else(|| rusqlite::Error::UserFunctionError("decimal overflow".into()))
    })?;
    for (name, pick_max) in [("dec_min", false), ("dec_max", true)] {
        c.create_scalar_function(name, 2, flags, move |ctx| {
            let picked = match (dec_value(ctx.get_raw(0))?, dec_value(ctx.get_raw(1))?) {
                (Some(a), Some(b)) => Some(if (a < b) != pick_max { a } else { b }),
                (a, b) => a.or(b),
            };
            Ok(picked.map(dec_blob))
        })?;
    }
    Ok(())
}

pub(super) fn agg_from_row(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Agg> {
    let get = |i: usize| r.get_ref(at + i).and_then(dec_value);
    Ok(Agg { count: r.get(at)?, sum: get(1)?.unwrap_or_default(), min: get(2)?, max: get(3)? })
}
