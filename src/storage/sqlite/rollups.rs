//! Writing buckets into `rollups`: all-time buckets as rows, day, hour and minute buckets into
//! day packs (see `pack`), a minute's lone second carried by its pack, other seconds as a row per
//! minute (see `seconds`).

use std::collections::BTreeMap;

use rusqlite::{Connection, params};

use super::conn::db_err;
use super::decimal::{ADD_ROWS, upsert};
use super::pack::{ADD_PACK, DayPack, PACK_RES, take_freed};
use super::seconds;
use crate::rollup::{Agg, Resolution};
use crate::storage::StoreError;

/// Adds bucket rows `(series id, resolution, start, aggregate)` to `rollups`: all-time and second
/// buckets as rows of their own, day, hour and minute buckets into their day's pack (see `pack`),
/// where a minute whose one second is among the rows carries it instead of a row.
pub(super) fn add_to_rollups<'a>(
    tx: &Connection,
    rows: impl IntoIterator<Item = (i64, Resolution, i64, &'a Agg)>,
) -> Result<(), StoreError> {
    let overflow = || db_err(rusqlite::Error::UserFunctionError("decimal overflow".into()));
    let mut packs = Packs::new();
    let mut singles: Vec<(i64, i64, &Agg)> = Vec::new();
    let mut seconds: Vec<(i64, i64, &Agg)> = Vec::new();
    for (series, res, start, a) in rows {
        match res {
            Resolution::All => singles.push((series, start, a)),
            Resolution::Second => seconds.push((series, start, a)),
            Resolution::Day | Resolution::Hour | Resolution::Minute => {
                let day = Resolution::Day.bucket_of(start);
                if !packs.entry((series, day)).or_default().add(res, start - day, a) {
                    return Err(overflow());
                }
            }
        }
    }
    carry_lone_seconds(&mut packs, &mut seconds);
    let mut up = tx
        .prepare_cached(&format!("INSERT INTO rollups (series, res, bucket, agg) VALUES (?1, ?2, ?3, ?4) {ADD_ROWS}"))
        .map_err(db_err)?;
    for (series, start, a) in &singles {
        upsert(&mut up, &[*series, Resolution::All.seconds(), *start], a)?;
    }
    // Each minute's seconds (those not carried, and those the packs' merges free) as one row.
    let mut minutes: BTreeMap<(i64, i64), BTreeMap<u8, Agg>> = BTreeMap::new();
    let mut add_second = |series: i64, start: i64, a: &Agg| {
        let minute = Resolution::Minute.bucket_of(start);
        let at = minutes.entry((series, minute)).or_default().entry((start - minute) as u8).or_default();
        at.checked_merge(a)
    };
    for (series, start, a) in &seconds {
        if !add_second(*series, *start, a) {
            return Err(overflow());
        }
    }
    let mut pack_up = tx
        .prepare_cached(&format!("INSERT INTO rollups (series, res, bucket, agg) VALUES (?1, ?2, ?3, ?4) {ADD_PACK}"))
        .map_err(db_err)?;
    take_freed();
    for ((series, day), p) in packs {
        let done = pack_up.execute(params![series, PACK_RES, day, p.encode()]);
        let freed = take_freed();
        done.map_err(db_err)?;
        for (offset, a) in &freed {
            if !add_second(series, day + offset, a) {
                return Err(overflow());
            }
        }
    }
    let mut seconds_up = tx
        .prepare_cached(&format!(
            "INSERT INTO rollups (series, res, bucket, agg) VALUES (?1, ?2, ?3, ?4) {}",
            seconds::ADD_SECONDS
        ))
        .map_err(db_err)?;
    let second = Resolution::Second.seconds();
    for ((series, minute), secs) in minutes {
        let blob = seconds::encode(&secs.into_iter().collect::<Vec<_>>());
        seconds_up.execute(params![series, second, minute, blob]).map_err(db_err)?;
    }
    Ok(())
}

/// Packs of new buckets by `(series, day)`.
pub(super) type Packs = BTreeMap<(i64, i64), DayPack>;

/// Leaves in `seconds` (new second buckets, `(series, start, agg)`) those to write as rows: a
/// minute of `packs` whose only second among them is all of it carries that second instead.
pub(super) fn carry_lone_seconds(packs: &mut Packs, seconds: &mut Vec<(i64, i64, &Agg)>) {
    // A minute's only second among these rows is carried by it if the minute is exactly that
    // second (sorted, the only second of its minute has no neighbour in the same minute).
    seconds.sort_unstable_by_key(|(series, start, _)| (*series, *start));
    let minute_of = |s: &(i64, i64, &Agg)| (s.0, Resolution::Minute.bucket_of(s.1));
    let alone: Vec<bool> = (0..seconds.len())
        .map(|i| {
            let m = minute_of(&seconds[i]);
            (i == 0 || minute_of(&seconds[i - 1]) != m) && seconds.get(i + 1).is_none_or(|n| minute_of(n) != m)
        })
        .collect();
    let mut alone = alone.into_iter();
    seconds.retain(|(series, start, a)| {
        let (minute, day) = (Resolution::Minute.bucket_of(*start), Resolution::Day.bucket_of(*start));
        let carried = alone.next() == Some(true)
            && packs.get_mut(&(*series, day)).is_some_and(|p| p.carry(minute - day, (*start - minute) as u8, a));
        !carried
    });
}
