//! Day packs: a series' day, hour and minute buckets of one day as one row of `rollups`
//! (`res` = 86400, `bucket` = the day's start), instead of a row per bucket (migration 11).
//!
//! Most series of a store with many products see an event now and then: each such event opened a
//! day, an hour and a minute row of its own, three rows of ~24 bytes with their keys, the most
//! of the store's bytes (bench/README.md, "Where the disk goes"). In a pack the same event takes
//! one row whose blob is ~10 bytes.
//!
//! The layout, each level's total written before its parts so that a read of a day or an hour
//! skips the finer levels:
//!
//! ```text
//! pack   := day_tag:u8 [agg] hour*                         (hours in order, to the blob's end)
//! hour   := hour:u8 hour_tag:u8 [agg] len:LEB128 minute*   (len: the minutes' bytes)
//! minute := minute:u8 agg                                  (minute of the hour, in order)
//! ```
//!
//! A tag is [`ABSENT`] (no bucket at that level: a pack can hold a minute without its hour, as a
//! store given buckets one by one can), [`PRESENT`] (the aggregate follows), or [`AS_PART`]: the
//! level has exactly one part, and its aggregate is that part's, byte for byte (a day of one hour,
//! an hour of one minute: every sparse series' day). An `agg` is [`encode_agg`]'s blob.

use rusqlite::functions::FunctionFlags;
use rusqlite::types::ValueRef;

use rusqlite::{Connection, params};

use super::conn::db_err;
use super::decimal::{ADD_ROWS, decode_agg_prefix, encode_agg, encode_agg_into, put_varint, take_varint, upsert};
use crate::rollup::{Agg, Resolution};
use crate::storage::StoreError;

const ABSENT: u8 = 0;
const PRESENT: u8 = 1;
const AS_PART: u8 = 2;

/// The `res` of a pack's row.
pub(super) const PACK_RES: i64 = 86_400;

fn corrupt() -> rusqlite::Error {
    rusqlite::Error::UserFunctionError("not a stored day pack".into())
}

/// One hour of a pack: its total (if it has one) and its minutes, by minute of the hour.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct HourPart {
    pub hour: u8,
    pub total: Option<Agg>,
    pub minutes: Vec<(u8, Agg)>,
}

/// A series' buckets of one day: the day's total (if any) and its hours, by hour of the day.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct DayPack {
    pub day: Option<Agg>,
    pub hours: Vec<HourPart>,
}

/// Adds `a` to `to`; false on overflow (and `to` unchanged).
fn add_to(to: &mut Option<Agg>, a: &Agg) -> bool {
    match to {
        Some(t) => t.checked_merge(a),
        None => {
            *to = Some(a.clone());
            true
        }
    }
}

fn same_bytes(a: &Agg, b: &Agg) -> bool {
    a == b && encode_agg(a) == encode_agg(b)
}

impl DayPack {
    /// Whether the pack holds no bucket at all.
    pub fn is_empty(&self) -> bool {
        self.day.is_none() && self.hours.is_empty()
    }

    fn hour_mut(&mut self, hour: u8) -> &mut HourPart {
        let i = match self.hours.binary_search_by_key(&hour, |h| h.hour) {
            Ok(i) => i,
            Err(i) => {
                self.hours.insert(i, HourPart { hour, ..HourPart::default() });
                i
            }
        };
        &mut self.hours[i]
    }

    /// Adds a bucket of `res` (day, hour or minute) starting `offset` seconds into the pack's day;
    /// false on a decimal overflow.
    pub fn add(&mut self, res: Resolution, offset: i64, a: &Agg) -> bool {
        debug_assert!((0..86_400).contains(&offset), "a bucket outside its day: {offset}");
        let hour = (offset / 3600) as u8;
        match res {
            Resolution::Day => add_to(&mut self.day, a),
            Resolution::Hour => add_to(&mut self.hour_mut(hour).total, a),
            Resolution::Minute => {
                let minute = ((offset % 3600) / 60) as u8;
                let h = self.hour_mut(hour);
                match h.minutes.binary_search_by_key(&minute, |m| m.0) {
                    Ok(i) => h.minutes[i].1.checked_merge(a),
                    Err(i) => {
                        h.minutes.insert(i, (minute, a.clone()));
                        true
                    }
                }
            }
            Resolution::All | Resolution::Second => {
                debug_assert!(false, "{res:?} buckets are rows of their own");
                false
            }
        }
    }

    /// Adds every bucket of `other`; false on a decimal overflow.
    pub fn merge(&mut self, other: &DayPack) -> bool {
        let mut ok = other.day.as_ref().is_none_or(|d| add_to(&mut self.day, d));
        for o in &other.hours {
            if let Some(t) = &o.total {
                ok &= add_to(&mut self.hour_mut(o.hour).total, t);
            }
            for (m, a) in &o.minutes {
                ok &= self.add(Resolution::Minute, i64::from(o.hour) * 3600 + i64::from(*m) * 60, a);
            }
        }
        ok
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16);
        match (&self.day, self.hours.as_slice()) {
            (None, _) => out.push(ABSENT),
            (Some(d), [only]) if only.total.as_ref().is_some_and(|t| same_bytes(d, t)) => out.push(AS_PART),
            (Some(d), _) => {
                out.push(PRESENT);
                encode_agg_into(&mut out, d);
            }
        }
        let mut minutes = Vec::new();
        for h in &self.hours {
            out.push(h.hour);
            match (&h.total, h.minutes.as_slice()) {
                (None, _) => out.push(ABSENT),
                (Some(t), [(_, only)]) if same_bytes(t, only) => out.push(AS_PART),
                (Some(t), _) => {
                    out.push(PRESENT);
                    encode_agg_into(&mut out, t);
                }
            }
            minutes.clear();
            for (m, a) in &h.minutes {
                minutes.push(*m);
                encode_agg_into(&mut minutes, a);
            }
            put_varint(&mut out, minutes.len() as u128);
            out.extend_from_slice(&minutes);
        }
        out
    }

    pub fn decode(b: &[u8]) -> Result<Self, rusqlite::Error> {
        let mut r = Reader::new(b)?;
        let mut pack = DayPack::default();
        while let Some(h) = r.next_hour()? {
            let mut minutes = Vec::new();
            let mut mb = h.minutes;
            while !mb.is_empty() {
                let (&m, rest) = mb.split_first().ok_or_else(corrupt)?;
                mb = rest;
                minutes.push((m, decode_agg_prefix(&mut mb)?));
            }
            pack.hours.push(HourPart { hour: h.hour, total: h.total()?, minutes });
        }
        pack.day = r.day()?;
        Ok(pack)
    }

    /// Drops the minutes that start before `cut` (seconds) of a pack of the day starting at
    /// `day`; returns how many, and drops the hours left with no bucket.
    pub fn drop_minutes_before(&mut self, day: i64, cut: i64) -> usize {
        let mut n = 0;
        for h in &mut self.hours {
            let before = h.minutes.len();
            h.minutes.retain(|(m, _)| day + i64::from(h.hour) * 3600 + i64::from(*m) * 60 >= cut);
            n += before - h.minutes.len();
        }
        self.hours.retain(|h| h.total.is_some() || !h.minutes.is_empty());
        n
    }
}

fn take_len(b: &mut &[u8]) -> Result<usize, rusqlite::Error> {
    take_varint(b).and_then(|v| usize::try_from(v).ok()).ok_or_else(corrupt)
}

/// An hour of a stored pack, its minutes still encoded.
struct StoredHour<'a> {
    hour: u8,
    tag: u8,
    total: Option<Agg>,
    minutes: &'a [u8],
}

impl StoredHour<'_> {
    fn total(&self) -> Result<Option<Agg>, rusqlite::Error> {
        match self.tag {
            AS_PART => {
                let mut mb = self.minutes.get(1..).ok_or_else(corrupt)?;
                let a = decode_agg_prefix(&mut mb)?;
                if !mb.is_empty() {
                    return Err(corrupt());
                }
                Ok(Some(a))
            }
            _ => Ok(self.total.clone()),
        }
    }
}

/// Reads a stored pack level by level, decoding only what is asked for.
struct Reader<'a> {
    rest: &'a [u8],
    day_tag: u8,
    day: Option<Agg>,
    hours_seen: usize,
    only_hour_total: Option<Agg>,
}

impl<'a> Reader<'a> {
    fn new(mut b: &'a [u8]) -> Result<Self, rusqlite::Error> {
        let (&day_tag, rest) = b.split_first().ok_or_else(corrupt)?;
        b = rest;
        let day = match day_tag {
            ABSENT | AS_PART => None,
            PRESENT => Some(decode_agg_prefix(&mut b)?),
            _ => return Err(corrupt()),
        };
        Ok(Self { rest: b, day_tag, day, hours_seen: 0, only_hour_total: None })
    }

    fn next_hour(&mut self) -> Result<Option<StoredHour<'a>>, rusqlite::Error> {
        let Some((&hour, rest)) = self.rest.split_first() else { return Ok(None) };
        let (&tag, mut rest) = rest.split_first().ok_or_else(corrupt)?;
        let total = match tag {
            ABSENT | AS_PART => None,
            PRESENT => Some(decode_agg_prefix(&mut rest)?),
            _ => return Err(corrupt()),
        };
        let len = take_len(&mut rest)?;
        if hour >= 24 || rest.len() < len {
            return Err(corrupt());
        }
        let (minutes, rest) = rest.split_at(len);
        self.rest = rest;
        self.hours_seen += 1;
        let h = StoredHour { hour, tag, total, minutes };
        if self.day_tag == AS_PART && self.hours_seen == 1 {
            self.only_hour_total = h.total()?;
        }
        Ok(Some(h))
    }

    /// The day's total; for a pack whose day is its only hour's total, call after reading the hours.
    fn day(&mut self) -> Result<Option<Agg>, rusqlite::Error> {
        match self.day_tag {
            AS_PART => {
                if self.hours_seen == 0 {
                    self.next_hour()?;
                }
                if self.hours_seen != 1 || self.next_hour()?.is_some() || self.only_hour_total.is_none() {
                    return Err(corrupt());
                }
                Ok(self.only_hour_total.clone())
            }
            _ => Ok(self.day.clone()),
        }
    }
}

/// The buckets of `res` (day, hour or minute) in a stored pack of the day starting at `day` whose
/// starts fall in `[from, to)`, in order, as `(start, agg)`. A day or hour read skips the minutes.
pub(super) fn buckets_in(
    b: &[u8],
    day: i64,
    res: Resolution,
    from: i64,
    to: i64,
    out: &mut impl FnMut(i64, Agg),
) -> Result<(), rusqlite::Error> {
    let mut r = Reader::new(b)?;
    match res {
        Resolution::Day => {
            if (from..to).contains(&day)
                && let Some(a) = r.day()?
            {
                out(day, a);
            }
        }
        Resolution::Hour | Resolution::Minute => {
            while let Some(h) = r.next_hour()? {
                let hour = day + i64::from(h.hour) * 3600;
                if hour >= to {
                    break;
                }
                if res == Resolution::Hour {
                    if hour >= from
                        && let Some(a) = h.total()?
                    {
                        out(hour, a);
                    }
                    continue;
                }
                if hour + 3600 <= from {
                    continue;
                }
                let mut mb = h.minutes;
                while let Some((&m, rest)) = mb.split_first() {
                    mb = rest;
                    let a = decode_agg_prefix(&mut mb)?;
                    let start = hour + i64::from(m) * 60;
                    if (from..to).contains(&start) {
                        out(start, a);
                    }
                }
            }
        }
        Resolution::All | Resolution::Second => {}
    }
    Ok(())
}

/// The starts of the latest hour (with a total) and latest minute of a stored pack of the day
/// starting at `day`.
pub(super) fn latest_in(b: &[u8], day: i64) -> Result<(Option<i64>, Option<i64>), rusqlite::Error> {
    let mut r = Reader::new(b)?;
    let (mut hour, mut minute) = (None, None);
    while let Some(h) = r.next_hour()? {
        let start = day + i64::from(h.hour) * 3600;
        if h.tag != ABSENT {
            hour = Some(start);
        }
        // The last minute of the hour: its key is the last one, found by walking the entries.
        let mut mb = h.minutes;
        while let Some((&m, rest)) = mb.split_first() {
            mb = rest;
            decode_agg_prefix(&mut mb)?;
            minute = Some(start + i64::from(m) * 60);
        }
    }
    Ok((hour, minute))
}

/// The conflict clause that merges a day pack into the one already stored (see `pack`).
const ADD_PACK: &str = "ON CONFLICT (series, res, bucket) DO UPDATE SET agg = pack_merge(agg, excluded.agg)";

/// Adds bucket rows `(series id, resolution, start, aggregate)` to `rollups`: all-time and second
/// buckets as rows of their own, day, hour and minute buckets into their day's pack (see `pack`).
pub(super) fn add_to_rollups<'a>(
    tx: &Connection,
    rows: impl IntoIterator<Item = (i64, Resolution, i64, &'a Agg)>,
) -> Result<(), StoreError> {
    let overflow = || db_err(rusqlite::Error::UserFunctionError("decimal overflow".into()));
    let mut up = tx
        .prepare_cached(&format!("INSERT INTO rollups (series, res, bucket, agg) VALUES (?1, ?2, ?3, ?4) {ADD_ROWS}"))
        .map_err(db_err)?;
    let mut packs: std::collections::BTreeMap<(i64, i64), DayPack> = Default::default();
    for (series, res, start, a) in rows {
        match res {
            Resolution::All | Resolution::Second => upsert(&mut up, &[series, res.seconds(), start], a)?,
            Resolution::Day | Resolution::Hour | Resolution::Minute => {
                let day = Resolution::Day.bucket_of(start);
                if !packs.entry((series, day)).or_default().add(res, start - day, a) {
                    return Err(overflow());
                }
            }
        }
    }
    drop(up);
    let mut up = tx
        .prepare_cached(&format!("INSERT INTO rollups (series, res, bucket, agg) VALUES (?1, ?2, ?3, ?4) {ADD_PACK}"))
        .map_err(db_err)?;
    for ((series, day), p) in packs {
        up.execute(params![series, PACK_RES, day, p.encode()]).map_err(db_err)?;
    }
    Ok(())
}

/// Registers `pack_merge(stored, new)`: what the upsert of a pack does on conflict.
pub(super) fn register_pack_functions(c: &rusqlite::Connection) -> rusqlite::Result<()> {
    let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC;
    c.create_scalar_function("pack_merge", 2, flags, |ctx| {
        let part = |i: usize| match ctx.get_raw(i) {
            ValueRef::Blob(b) => DayPack::decode(b),
            _ => Err(corrupt()),
        };
        let mut stored = part(0)?;
        if !stored.merge(&part(1)?) {
            return Err(rusqlite::Error::UserFunctionError("decimal overflow".into()));
        }
        Ok(stored.encode())
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::str::FromStr;

    use proptest::prelude::*;
    use rust_decimal::Decimal;

    use super::*;

    fn agg(cents: i64, n: i64) -> Agg {
        let v = Decimal::new(cents, 2);
        if n == 1 { Agg::of(v) } else { Agg { count: n, sum: v, min: Some(v), max: Some(Decimal::new(cents + 1, 2)) } }
    }

    #[test]
    fn one_event_in_a_day_takes_ten_bytes() {
        let a = Agg::of(Decimal::from_str("19.99").expect("decimal"));
        let mut p = DayPack::default();
        for res in [Resolution::Day, Resolution::Hour, Resolution::Minute] {
            assert!(p.add(res, 3 * 3600 + 17 * 60, &a));
        }
        let blob = p.encode();
        assert_eq!(blob.len(), 10, "{blob:?}");
        assert_eq!(DayPack::decode(&blob).expect("decodes"), p);
        assert!(DayPack::decode(&blob[..9]).is_err(), "a cut pack is an error, not a panic");
    }

    #[test]
    fn totals_of_another_scale_than_their_part_are_kept_apart() {
        // 1.0 and 1.00 are equal decimals with different scales: the total keeps its own.
        let mut p = DayPack::default();
        assert!(p.add(Resolution::Hour, 0, &Agg::of(Decimal::from_str("1.0").expect("d"))));
        assert!(p.add(Resolution::Minute, 0, &Agg::of(Decimal::from_str("1.00").expect("d"))));
        let back = DayPack::decode(&p.encode()).expect("decodes");
        assert_eq!(back.hours[0].total.as_ref().expect("total").sum.scale(), 1);
        assert_eq!(back.hours[0].minutes[0].1.sum.scale(), 2);
    }

    type Buckets = BTreeMap<(i64, i64), Agg>;

    /// The plain oracle: every bucket keyed by (resolution's seconds, start), summed.
    fn oracle(adds: &[(u8, i64, Agg)]) -> Buckets {
        let mut m = Buckets::new();
        for (res, off, a) in adds {
            let res = [Resolution::Day, Resolution::Hour, Resolution::Minute][*res as usize];
            let start = res.bucket_of(*off);
            m.entry((res.seconds(), start)).or_default().merge(a);
        }
        m
    }

    fn read_all(p: &[u8], from: i64, to: i64) -> Buckets {
        let mut m = Buckets::new();
        for res in [Resolution::Day, Resolution::Hour, Resolution::Minute] {
            buckets_in(p, 0, res, from, to, &mut |start, a| {
                assert!(m.insert((res.seconds(), start), a).is_none(), "a bucket twice");
            })
            .expect("reads");
        }
        m
    }

    proptest! {
        /// Buckets added to packs in any split, each part stored and merged by `pack_merge`'s
        /// code, read back as the plain sums, for any range.
        #[test]
        fn packs_read_back_what_was_added(
            adds in proptest::collection::vec((0u8..3, 0i64..86_400, 1i64..100_000, 1i64..4), 0..60),
            split in 0usize..60,
            from in 0i64..86_400,
            len in 0i64..90_000,
        ) {
            let adds: Vec<(u8, i64, Agg)> = adds.into_iter().map(|(r, o, c, n)| (r, o, agg(c, n))).collect();
            let res = |r: u8| [Resolution::Day, Resolution::Hour, Resolution::Minute][r as usize];
            let split = split.min(adds.len());
            let mut a = DayPack::default();
            let mut b = DayPack::default();
            for (i, (r, o, x)) in adds.iter().enumerate() {
                let p = if i < split { &mut a } else { &mut b };
                prop_assert!(p.add(res(*r), res(*r).bucket_of(*o), x));
            }
            let mut merged = DayPack::decode(&a.encode()).expect("decodes");
            prop_assert!(merged.merge(&DayPack::decode(&b.encode()).expect("decodes")));
            let blob = merged.encode();
            let want: Buckets = oracle(&adds).into_iter().filter(|((_, s), _)| (from..from + len).contains(s)).collect();
            prop_assert_eq!(read_all(&blob, from, from + len), want);
            prop_assert_eq!(DayPack::decode(&blob).expect("decodes"), merged);
        }

        /// Pruning minutes leaves every other bucket, and counts what it dropped.
        #[test]
        fn dropping_minutes_keeps_the_rest(
            adds in proptest::collection::vec((0u8..3, 0i64..86_400, 1i64..100_000, 1i64..4), 0..40),
            cut in 0i64..90_000,
        ) {
            let adds: Vec<(u8, i64, Agg)> = adds.into_iter().map(|(r, o, c, n)| (r, o, agg(c, n))).collect();
            let res = |r: u8| [Resolution::Day, Resolution::Hour, Resolution::Minute][r as usize];
            let mut p = DayPack::default();
            for (r, o, x) in &adds {
                prop_assert!(p.add(res(*r), res(*r).bucket_of(*o), x));
            }
            let all = oracle(&adds);
            let dropped = p.drop_minutes_before(0, cut);
            let want: Buckets = all.iter().filter(|((r, s), _)| *r != 60 || *s >= cut).map(|(k, v)| (*k, v.clone())).collect();
            prop_assert_eq!(dropped, all.len() - want.len());
            prop_assert_eq!(read_all(&p.encode(), 0, 86_400), want);
        }
    }
}
