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
//!         | (minute | CARRIED):u8 second:u8 agg            (its one second, carried: see below)
//! ```
//!
//! A tag is [`ABSENT`] (no bucket at that level: a pack can hold a minute without its hour, as a
//! store given buckets one by one can), [`PRESENT`] (the aggregate follows), or [`AS_PART`]: the
//! level has exactly one part, and its aggregate is that part's, byte for byte (a day of one hour,
//! an hour of one minute: every sparse series' day). An `agg` is [`encode_agg`]'s blob.
//!
//! A minute whose events all fell in one second *carries* that second (schema version 12): the
//! second's bucket is the minute's aggregate, and it has no row of its own in `rollups`. Most
//! events of a store with many products are the only one of their series in their minute, and
//! a second row (~25 bytes with its key) was then a third of the store. A minute holds a carried
//! second, or its seconds are rows, never both: a merge that adds another second to a carrying
//! minute frees the carried second into a row (see [`DayPack::merge`]); retention drops a carried
//! second as it drops a second row (see [`DayPack::drop_seconds_before`]).

use std::cell::RefCell;

use rusqlite::functions::FunctionFlags;
use rusqlite::types::ValueRef;

use super::decimal::{decode_agg_prefix, encode_agg, encode_agg_into, put_varint, take_varint};
use crate::rollup::{Agg, Resolution};

const ABSENT: u8 = 0;
const PRESENT: u8 = 1;
const AS_PART: u8 = 2;

/// The flag of a minute's byte that says it carries its second (minutes are 0..60).
const CARRIED: u8 = 0x80;

/// The `res` of a pack's row.
pub(super) const PACK_RES: i64 = 86_400;

fn corrupt() -> rusqlite::Error {
    rusqlite::Error::UserFunctionError("not a stored day pack".into())
}

/// A minute of a pack: its minute of the hour, the second of the minute it carries (if all its
/// events fell in that second and the second has no row), and its aggregate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct MinutePart {
    pub minute: u8,
    pub second: Option<u8>,
    pub agg: Agg,
}

/// One hour of a pack: its total (if it has one) and its minutes, by minute of the hour.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct HourPart {
    pub hour: u8,
    pub total: Option<Agg>,
    pub minutes: Vec<MinutePart>,
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

/// The offset in its day of second `second` of minute `minute` of hour `hour`.
fn second_offset(hour: u8, minute: u8, second: u8) -> i64 {
    i64::from(hour) * 3600 + i64::from(minute) * 60 + i64::from(second)
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
    /// false on a decimal overflow. For building a pack of new buckets: a minute added to stops
    /// carrying its second, which would be lost (only [`merge`](Self::merge) frees it).
    pub fn add(&mut self, res: Resolution, offset: i64, a: &Agg) -> bool {
        debug_assert!((0..86_400).contains(&offset), "a bucket outside its day: {offset}");
        let hour = (offset / 3600) as u8;
        match res {
            Resolution::Day => add_to(&mut self.day, a),
            Resolution::Hour => add_to(&mut self.hour_mut(hour).total, a),
            Resolution::Minute => {
                let minute = ((offset % 3600) / 60) as u8;
                let h = self.hour_mut(hour);
                match h.minutes.binary_search_by_key(&minute, |m| m.minute) {
                    Ok(i) => {
                        debug_assert!(h.minutes[i].second.is_none(), "adding to a minute that carries its second");
                        h.minutes[i].agg.checked_merge(a)
                    }
                    Err(i) => {
                        h.minutes.insert(i, MinutePart { minute, second: None, agg: a.clone() });
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

    /// Makes the minute starting `offset` seconds into the day carry second `offset + second`,
    /// whose bucket `a` must then not be written as a row; false (nothing changed) unless the
    /// minute is there and its aggregate is `a`, byte for byte (the second holds all of it).
    pub fn carry(&mut self, offset: i64, second: u8, a: &Agg) -> bool {
        let (hour, minute) = ((offset / 3600) as u8, ((offset % 3600) / 60) as u8);
        let Ok(h) = self.hours.binary_search_by_key(&hour, |h| h.hour) else { return false };
        let minutes = &mut self.hours[h].minutes;
        let Ok(i) = minutes.binary_search_by_key(&minute, |m| m.minute) else { return false };
        let m = &mut minutes[i];
        if second >= 60 || m.second.is_some() || !same_bytes(&m.agg, a) {
            return false;
        }
        m.second = Some(second);
        true
    }

    /// Adds every bucket of `other`; false on a decimal overflow. A minute of both that carry
    /// the same second still carries it; otherwise each side's carried second becomes a bucket
    /// of its own, pushed to `freed` as `(offset in the day, agg)` for the caller to write as a
    /// row, and the minute carries none.
    pub fn merge(&mut self, other: &DayPack, freed: &mut Vec<(i64, Agg)>) -> bool {
        let mut ok = other.day.as_ref().is_none_or(|d| add_to(&mut self.day, d));
        for o in &other.hours {
            let h = self.hour_mut(o.hour);
            if let Some(t) = &o.total {
                ok &= add_to(&mut h.total, t);
            }
            for om in &o.minutes {
                match h.minutes.binary_search_by_key(&om.minute, |m| m.minute) {
                    Err(i) => h.minutes.insert(i, om.clone()),
                    Ok(i) => {
                        let m = &mut h.minutes[i];
                        if m.second.is_none() || m.second != om.second {
                            for (s, a) in [(m.second.take(), &m.agg), (om.second, &om.agg)] {
                                if let Some(s) = s {
                                    freed.push((second_offset(o.hour, om.minute, s), a.clone()));
                                }
                            }
                        }
                        ok &= m.agg.checked_merge(&om.agg);
                    }
                }
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
                (Some(t), [only]) if same_bytes(t, &only.agg) => out.push(AS_PART),
                (Some(t), _) => {
                    out.push(PRESENT);
                    encode_agg_into(&mut out, t);
                }
            }
            minutes.clear();
            for m in &h.minutes {
                match m.second {
                    None => minutes.push(m.minute),
                    Some(s) => minutes.extend_from_slice(&[m.minute | CARRIED, s]),
                }
                encode_agg_into(&mut minutes, &m.agg);
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
            while let Some((minute, second)) = take_minute(&mut mb)? {
                minutes.push(MinutePart { minute, second, agg: decode_agg_prefix(&mut mb)? });
            }
            pack.hours.push(HourPart { hour: h.hour, total: h.total()?, minutes });
        }
        pack.day = r.day()?;
        Ok(pack)
    }

    /// Drops the minutes that start before `cut` (seconds) of a pack of the day starting at
    /// `day`; returns how many, and drops the hours left with no bucket. The seconds those minutes
    /// carried are pushed to `carried` as `(start, agg)`: whether they outlive their minute is
    /// the seconds' retention's call.
    pub fn drop_minutes_before(&mut self, day: i64, cut: i64, carried: &mut Vec<(i64, Agg)>) -> usize {
        let mut n = 0;
        for h in &mut self.hours {
            let before = h.minutes.len();
            h.minutes.retain(|m| {
                let keep = day + i64::from(h.hour) * 3600 + i64::from(m.minute) * 60 >= cut;
                if let (false, Some(s)) = (keep, m.second) {
                    carried.push((day + second_offset(h.hour, m.minute, s), m.agg.clone()));
                }
                keep
            });
            n += before - h.minutes.len();
        }
        self.hours.retain(|h| h.total.is_some() || !h.minutes.is_empty());
        n
    }

    /// Drops the carried seconds before `cut` of a pack of the day starting at `day` (their
    /// minutes stay); returns how many.
    pub fn drop_seconds_before(&mut self, day: i64, cut: i64) -> usize {
        let mut n = 0;
        for h in &mut self.hours {
            for m in &mut h.minutes {
                if m.second.is_some_and(|s| day + second_offset(h.hour, m.minute, s) < cut) {
                    m.second = None;
                    n += 1;
                }
            }
        }
        n
    }
}

fn take_len(b: &mut &[u8]) -> Result<usize, rusqlite::Error> {
    take_varint(b).and_then(|v| usize::try_from(v).ok()).ok_or_else(corrupt)
}

/// The next minute entry's minute and carried second, its aggregate left in `b`; `None` at the
/// end of the hour's minutes.
fn take_minute(b: &mut &[u8]) -> Result<Option<(u8, Option<u8>)>, rusqlite::Error> {
    let Some((&m, rest)) = b.split_first() else { return Ok(None) };
    *b = rest;
    let minute = m & !CARRIED;
    if minute >= 60 {
        return Err(corrupt());
    }
    if m & CARRIED == 0 {
        return Ok(Some((minute, None)));
    }
    let (&s, rest) = b.split_first().ok_or_else(corrupt)?;
    *b = rest;
    if s >= 60 {
        return Err(corrupt());
    }
    Ok(Some((minute, Some(s))))
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
                let mut mb = self.minutes;
                take_minute(&mut mb)?.ok_or_else(corrupt)?;
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

/// The buckets of `res` (day, hour, minute, or the seconds the minutes carry) in a stored pack of
/// the day starting at `day` whose starts fall in `[from, to)`, in order, as `(start, agg)`. A day
/// or hour read skips the minutes.
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
        Resolution::Hour | Resolution::Minute | Resolution::Second => {
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
                while let Some((m, second)) = take_minute(&mut mb)? {
                    let a = decode_agg_prefix(&mut mb)?;
                    let start = match (res, second) {
                        (Resolution::Minute, _) => hour + i64::from(m) * 60,
                        (_, Some(s)) => hour + i64::from(m) * 60 + i64::from(s),
                        (_, None) => continue,
                    };
                    if (from..to).contains(&start) {
                        out(start, a);
                    }
                }
            }
        }
        Resolution::All => {}
    }
    Ok(())
}

/// The latest buckets of a stored pack of the day starting at `day`: the start of its latest
/// hour (with a total), of its latest minute, and a second no carried second of this pack or of
/// an earlier day's is after (the latest minute's carried second, else that minute's last
/// second, else the second before the day).
pub(super) struct Latest {
    pub hour: Option<i64>,
    pub minute: Option<i64>,
    pub carried_bound: i64,
}

pub(super) fn latest_in(b: &[u8], day: i64) -> Result<Latest, rusqlite::Error> {
    let mut r = Reader::new(b)?;
    let mut latest = Latest { hour: None, minute: None, carried_bound: day - 1 };
    while let Some(h) = r.next_hour()? {
        let start = day + i64::from(h.hour) * 3600;
        if h.tag != ABSENT {
            latest.hour = Some(start);
        }
        // The last minute of the hour: its key is the last one, found by walking the entries.
        let mut mb = h.minutes;
        while let Some((m, second)) = take_minute(&mut mb)? {
            decode_agg_prefix(&mut mb)?;
            let minute = start + i64::from(m) * 60;
            latest.minute = Some(minute);
            latest.carried_bound = second.map_or(minute + 59, |s| minute + i64::from(s));
        }
    }
    Ok(latest)
}

/// The conflict clause that merges a day pack into the one already stored (see `pack`).
pub(super) const ADD_PACK: &str = "ON CONFLICT (series, res, bucket) DO UPDATE SET agg = pack_merge(agg, excluded.agg)";

/// Empties [`FREED`] and returns what it held.
pub(super) fn take_freed() -> Vec<(i64, Agg)> {
    FREED.with_borrow_mut(std::mem::take)
}

thread_local! {
    /// The seconds `pack_merge` freed from the minutes that carried them (see [`DayPack::merge`]),
    /// as `(offset in the day, agg)`: the statement that ran it writes them as rows.
    static FREED: RefCell<Vec<(i64, Agg)>> = const { RefCell::new(Vec::new()) };
}

/// Registers `pack_merge(stored, new)`: what the upsert of a pack does on conflict. The seconds
/// it frees from carrying minutes go to [`FREED`], on the thread running the statement.
pub(super) fn register_pack_functions(c: &rusqlite::Connection) -> rusqlite::Result<()> {
    // Not deterministic: it reports what it freed.
    c.create_scalar_function("pack_merge", 2, FunctionFlags::SQLITE_UTF8, |ctx| {
        let part = |i: usize| match ctx.get_raw(i) {
            ValueRef::Blob(b) => DayPack::decode(b),
            _ => Err(corrupt()),
        };
        let mut stored = part(0)?;
        let mut freed = Vec::new();
        if !stored.merge(&part(1)?, &mut freed) {
            return Err(rusqlite::Error::UserFunctionError("decimal overflow".into()));
        }
        FREED.with_borrow_mut(|f| f.extend(freed));
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
    use crate::storage::sqlite::rollups::{Packs, carry_lone_seconds};

    fn agg(cents: i64, n: i64) -> Agg {
        let v = Decimal::new(cents, 2);
        if n == 1 { Agg::of(v) } else { Agg { count: n, sum: v, min: Some(v), max: Some(Decimal::new(cents + 1, 2)) } }
    }

    #[test]
    fn one_event_in_a_day_takes_eleven_bytes_and_no_second_row() {
        let a = Agg::of(Decimal::from_str("19.99").expect("decimal"));
        let mut p = DayPack::default();
        for res in [Resolution::Day, Resolution::Hour, Resolution::Minute] {
            assert!(p.add(res, 3 * 3600 + 17 * 60, &a));
        }
        let mut packs = Packs::from([((1, 0), p)]);
        let mut seconds = vec![(1, 3 * 3600 + 17 * 60 + 42, &a)];
        carry_lone_seconds(&mut packs, &mut seconds);
        assert!(seconds.is_empty(), "the minute carries its second");
        let p = &packs[&(1, 0)];
        let blob = p.encode();
        assert_eq!(blob.len(), 11, "{blob:?}");
        assert_eq!(DayPack::decode(&blob).expect("decodes"), *p);
        assert!(DayPack::decode(&blob[..10]).is_err(), "a cut pack is an error, not a panic");
        let mut got = Vec::new();
        buckets_in(&blob, 0, Resolution::Second, 0, 86_400, &mut |t, a| got.push((t, a))).expect("reads");
        assert_eq!(got, [(3 * 3600 + 17 * 60 + 42, a.clone())]);
    }

    #[test]
    fn only_a_lone_second_that_is_its_whole_minute_is_carried() {
        let one = agg(100, 1);
        let mut p = DayPack::default();
        // Minute 0: two seconds; minute 1: one second and more in the minute than that second.
        assert!(p.add(Resolution::Minute, 0, &agg(200, 2)));
        assert!(p.add(Resolution::Minute, 60, &agg(300, 2)));
        let mut packs = Packs::from([((1, 0), p)]);
        let mut seconds = vec![(1, 5, &one), (1, 7, &one), (1, 61, &one), (1, 200, &one)];
        carry_lone_seconds(&mut packs, &mut seconds);
        assert_eq!(seconds.len(), 4, "none carried: {seconds:?}");
    }

    #[test]
    fn totals_of_another_scale_than_their_part_are_kept_apart() {
        // 1.0 and 1.00 are equal decimals with different scales: the total keeps its own.
        let mut p = DayPack::default();
        assert!(p.add(Resolution::Hour, 0, &Agg::of(Decimal::from_str("1.0").expect("d"))));
        assert!(p.add(Resolution::Minute, 0, &Agg::of(Decimal::from_str("1.00").expect("d"))));
        let back = DayPack::decode(&p.encode()).expect("decodes");
        assert_eq!(back.hours[0].total.as_ref().expect("total").sum.scale(), 1);
        assert_eq!(back.hours[0].minutes[0].agg.sum.scale(), 2);
    }

    #[test]
    fn a_minute_byte_out_of_range_is_corrupt() {
        let mut p = DayPack::default();
        assert!(p.add(Resolution::Minute, 0, &agg(100, 1)));
        let mut blob = p.encode();
        // day tag, hour, hour tag, len, minute: minute 60 does not exist.
        assert_eq!(blob[4], 0);
        blob[4] = 60;
        assert!(DayPack::decode(&blob).is_err());
    }

    type Buckets = BTreeMap<(i64, i64), Agg>;

    const RES: [Resolution; 4] = [Resolution::Day, Resolution::Hour, Resolution::Minute, Resolution::Second];

    /// The plain oracle: every bucket keyed by (resolution's seconds, start), summed.
    fn oracle(adds: &[(u8, i64, Agg)]) -> Buckets {
        let mut m = Buckets::new();
        for (res, off, a) in adds {
            let res = RES[*res as usize];
            m.entry((res.seconds(), res.bucket_of(*off))).or_default().merge(a);
        }
        m
    }

    /// Every bucket of a pack in `[from, to)`, with the second rows beside it: a second is in a
    /// row or carried, never both.
    fn read_all(p: &[u8], rows: &BTreeMap<i64, Agg>, from: i64, to: i64) -> Buckets {
        let mut m = Buckets::new();
        for res in RES {
            buckets_in(p, 0, res, from, to, &mut |start, a| {
                assert!(m.insert((res.seconds(), start), a).is_none(), "a bucket twice");
            })
            .expect("reads");
        }
        for (t, a) in rows.range(from..to) {
            assert!(m.insert((1, *t), a.clone()).is_none(), "second {t} both carried and a row");
        }
        m
    }

    /// What `add_to_rollups` makes of `adds` (resolution index, offset, agg): the pack and the
    /// second rows it writes.
    fn packed(adds: &[&(u8, i64, Agg)]) -> (DayPack, Vec<(i64, Agg)>) {
        let mut pack = DayPack::default();
        let mut seconds = Vec::new();
        for (r, o, x) in adds {
            let res = RES[*r as usize];
            match res {
                Resolution::Second => seconds.push((0, *o, x)),
                _ => assert!(pack.add(res, res.bucket_of(*o), x)),
            }
        }
        let mut packs = Packs::from([((0, 0), pack)]);
        carry_lone_seconds(&mut packs, &mut seconds);
        let rows = seconds.into_iter().map(|(_, t, a)| (t, a.clone())).collect();
        (packs.remove(&(0, 0)).expect("the pack"), rows)
    }

    fn add_rows(rows: &mut BTreeMap<i64, Agg>, new: impl IntoIterator<Item = (i64, Agg)>) {
        for (t, a) in new {
            rows.entry(t).or_default().merge(&a);
        }
    }

    /// Events as `add_to_rollups` gets them from a merge: each second with its minute, hour and
    /// day (so that lone seconds are carried), or a bucket given alone.
    fn events() -> impl Strategy<Value = Vec<(u8, i64, Agg)>> {
        // Most in three minutes, so that parts meet in a minute (carried seconds are freed).
        let offset = prop_oneof![0i64..86_400, 7_200i64..7_380];
        let one = (0u8..5, offset, 1i64..100_000, 1i64..4);
        proptest::collection::vec(one, 0..60).prop_map(|v| {
            v.into_iter()
                .flat_map(|(r, o, c, n)| {
                    let a = agg(c, n);
                    // 4: an event (all four levels); 0..4: that level alone.
                    let levels: Vec<u8> = if r == 4 { vec![0, 1, 2, 3] } else { vec![r] };
                    levels.into_iter().map(move |l| (l, o, a.clone()))
                })
                .collect()
        })
    }

    proptest! {
        /// Buckets added to packs in any split, each part stored and merged by `pack_merge`'s
        /// code (the seconds it frees written as rows), read back as the plain sums, for any
        /// range; a second is never both carried and a row.
        #[test]
        fn packs_read_back_what_was_added(
            adds in events(),
            split in 0usize..240,
            from in 0i64..86_400,
            len in 0i64..90_000,
        ) {
            // The split falls between events' rows: each event's levels go to one part.
            let split = split.min(adds.len());
            let (a, b): (Vec<_>, Vec<_>) = adds.iter().enumerate().partition(|(i, _)| *i < split);
            let (a, mut rows_a) = packed(&a.into_iter().map(|(_, x)| x).collect::<Vec<_>>());
            let (b, rows_b) = packed(&b.into_iter().map(|(_, x)| x).collect::<Vec<_>>());
            let mut rows = BTreeMap::new();
            add_rows(&mut rows, rows_a.drain(..));
            add_rows(&mut rows, rows_b);
            let mut merged = DayPack::decode(&a.encode()).expect("decodes");
            let mut freed = Vec::new();
            prop_assert!(merged.merge(&DayPack::decode(&b.encode()).expect("decodes"), &mut freed));
            add_rows(&mut rows, freed);
            let blob = merged.encode();
            let want: Buckets = oracle(&adds).into_iter().filter(|((_, s), _)| (from..from + len).contains(s)).collect();
            prop_assert_eq!(read_all(&blob, &rows, from, from + len), want);
            prop_assert_eq!(DayPack::decode(&blob).expect("decodes"), merged);
            // The latest carried second is never after the bound `latest_in` gives.
            let bound = latest_in(&blob, 0).expect("reads").carried_bound;
            let mut carried = Vec::new();
            buckets_in(&blob, 0, Resolution::Second, 0, 86_400, &mut |t, _| carried.push(t)).expect("reads");
            prop_assert!(carried.iter().all(|t| *t <= bound), "{carried:?} after {bound}");
        }

        /// Pruning seconds, then minutes, as `prune` does: every other bucket stays, the counts
        /// are of what was dropped, and a carried second outlives its minute as a row.
        #[test]
        fn dropping_seconds_and_minutes_keeps_the_rest(
            adds in events(),
            second_cut in 0i64..90_000,
            minute_cut in 0i64..90_000,
        ) {
            let (mut p, new_rows) = packed(&adds.iter().collect::<Vec<_>>());
            let mut rows = BTreeMap::new();
            add_rows(&mut rows, new_rows);
            let all = oracle(&adds);
            let mut dropped = rows.len();
            rows.retain(|t, _| *t >= second_cut);
            dropped -= rows.len();
            dropped += p.drop_seconds_before(0, second_cut);
            let mut carried = Vec::new();
            dropped += p.drop_minutes_before(0, minute_cut, &mut carried);
            prop_assert!(carried.iter().all(|(t, _)| *t >= second_cut), "a carried second past its cut survived");
            add_rows(&mut rows, carried);
            let want: Buckets = all
                .iter()
                .filter(|((r, s), _)| match *r {
                    1 => *s >= second_cut,
                    60 => *s >= minute_cut,
                    _ => true,
                })
                .map(|(k, v)| (*k, v.clone()))
                .collect();
            prop_assert_eq!(dropped, all.len() - want.len());
            prop_assert_eq!(read_all(&p.encode(), &rows, 0, 86_400), want);
        }
    }
}
