//! Reads, each on a pooled read-only connection inside one read transaction (one snapshot).

use rusqlite::{Connection, OptionalExtension, params};

use super::conn::db_err;
use super::decimal::agg_from_row;
use super::pack::{PACK_RES, buckets_in, latest_in};
use super::seconds;
use crate::rollup::{Agg, Resolution, SeriesKey, Span};
use crate::storage::{
    CommitPos, DEAD_LETTER_PAGE_RAW, DeadLetter, LatestVisitor, NewDeadLetter, RawBlock, StoreError, StoredAnswer,
    TokenRecord,
};

/// A series' id in the store, if it has one.
fn series_id(c: &Connection, s: &SeriesKey) -> Result<Option<i64>, StoreError> {
    c.prepare_cached("SELECT id FROM series WHERE metric = ?1 AND dim = ?2 AND val = ?3")
        .and_then(|mut st| st.query_row(params![&*s.metric, &*s.dim, s.value], |r| r.get(0)).optional())
        .map_err(db_err)
}

/// The not-yet-merged seconds of a series (`rollup_seconds`, whose coarser buckets the merge
/// derives) that fall in `spans`, as `(second, agg)`.
fn recent_seconds(c: &Connection, series: i64, spans: &[Span]) -> Result<Vec<(i64, Agg)>, StoreError> {
    let mut s = c
        .prepare_cached("SELECT bucket, agg FROM rollup_seconds WHERE series = ?1 AND bucket >= ?2 AND bucket < ?3")
        .map_err(db_err)?;
    // A window's spans are contiguous: one range query for all of them.
    let mut ranges: Vec<(i64, i64)> = spans.iter().map(Span::seconds).filter(|(lo, hi)| lo < hi).collect();
    ranges.sort_unstable();
    ranges.dedup_by(|next, cur| {
        let joins = next.0 <= cur.1;
        if joins {
            cur.1 = cur.1.max(next.1);
        }
        joins
    });
    let mut out = Vec::new();
    for (lo, hi) in ranges {
        let rows = s.query_map(params![series, lo, hi], |r| Ok((r.get(0)?, agg_from_row(r, 1)?))).map_err(db_err)?;
        for row in rows {
            out.push(row.map_err(db_err)?);
        }
    }
    Ok(out)
}

/// The merged buckets of `series` covered by `spans`, and the commit number the snapshot holds.
pub(super) fn aggregate_at(
    c: &Connection,
    series: &SeriesKey,
    spans: &[Span],
) -> Result<(Agg, Option<CommitPos>), StoreError> {
    let pos: i64 = c
        .prepare_cached("SELECT value FROM meta WHERE key = 'commit_seq'")
        .and_then(|mut st| st.query_row([], |r| r.get(0)))
        .map_err(db_err)?;
    let pos = Some(pos as u64);
    let Some(id) = series_id(c, series)? else { return Ok((Agg::default(), pos)) };
    Ok((aggregate_of(c, id, spans)?, pos))
}

/// Each of a chart's buckets `[bounds[i], bounds[i + 1])`, covered exactly.
pub(super) fn buckets(c: &Connection, series: &SeriesKey, bounds: &[i64]) -> Result<Vec<Agg>, StoreError> {
    let n = bounds.len().saturating_sub(1);
    let Some(id) = series_id(c, series)? else { return Ok(vec![Agg::default(); n]) };
    bounds.windows(2).map(|w| aggregate_of(c, id, &crate::rollup::cover(w[0], w[1]))).collect()
}

pub(super) fn dim_values(
    c: &Connection,
    dim: &str,
    prefix: &str,
    search: Option<&str>,
    limit: u32,
) -> Result<Vec<(String, Option<String>)>, StoreError> {
    // `val >= prefix AND val < prefix + U+10FFFF`: the prefix's range in the primary key.
    let upper = format!("{prefix}\u{10FFFF}");
    let pattern = search.map(like_pattern);
    let mut st = c
        .prepare_cached(
            "SELECT val, label FROM dim_values WHERE dim = ?1 AND val >= ?2 AND val < ?3
             AND (?4 IS NULL OR label LIKE ?4 ESCAPE '\\') ORDER BY val LIMIT ?5",
        )
        .map_err(db_err)?;
    let rows =
        st.query_map(params![dim, prefix, upper, pattern, limit], |r| Ok((r.get(0)?, r.get(1)?))).map_err(db_err)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
}

/// Every value of `dim` in `metric` with its aggregate over `spans`.
pub(super) fn dim_aggregates(
    c: &Connection,
    metric: &str,
    dim: &str,
    spans: &[Span],
) -> Result<Vec<(String, Agg)>, StoreError> {
    let ids: Vec<(i64, String)> = c
        .prepare_cached("SELECT id, val FROM series WHERE metric = ?1 AND dim = ?2")
        .and_then(|mut st| st.query_map(params![metric, dim], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
        .map_err(db_err)?;
    let mut out = Vec::with_capacity(ids.len());
    for (id, value) in ids {
        let agg = aggregate_of(c, id, spans)?;
        if agg.count > 0 {
            out.push((value, agg));
        }
    }
    Ok(out)
}

pub(super) fn dim_labels(c: &Connection, dim: &str, values: &[String]) -> Result<Vec<Option<String>>, StoreError> {
    let mut st = c.prepare_cached("SELECT label FROM dim_values WHERE dim = ?1 AND val = ?2").map_err(db_err)?;
    values
        .iter()
        .map(|v| st.query_row(params![dim, v], |r| r.get(0)).optional().map(Option::flatten).map_err(db_err))
        .collect()
}

/// A LIKE pattern matching labels that contain `s` (its wildcards escaped with `\`).
fn like_pattern(s: &str) -> String {
    format!("%{}%", s.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_"))
}

/// Calls `out` with each merged bucket (`rollups`, and `rollup_deltas`' rows not merged yet) of
/// series `id` at `res` starting in `[from, to)`, as `(start, agg)`; a bucket can come in parts.
fn merged_buckets(
    c: &Connection,
    id: i64,
    res: Resolution,
    from: i64,
    to: i64,
    out: &mut impl FnMut(i64, Agg),
) -> Result<(), StoreError> {
    let span = [Span { res, from, to }];
    rows_of(c, id, &span[0], out)?;
    packs_of(c, id, &span, out)
}

/// [`merged_buckets`]' rows: `rollup_deltas`' and, for all-time and second spans, `rollups`'.
fn rows_of(c: &Connection, id: i64, sp: &Span, out: &mut impl FnMut(i64, Agg)) -> Result<(), StoreError> {
    if sp.from >= sp.to {
        return Ok(());
    }
    let mut deltas = c
        .prepare_cached(
            "SELECT bucket, agg FROM rollup_deltas WHERE series = ?1 AND res = ?2 AND bucket >= ?3 AND bucket < ?4",
        )
        .map_err(db_err)?;
    let mut rows = deltas.query(params![id, sp.res.seconds(), sp.from, sp.to]).map_err(db_err)?;
    while let Some(r) = rows.next().map_err(db_err)? {
        out(r.get(0).map_err(db_err)?, agg_from_row(r, 1).map_err(db_err)?);
    }
    let mut merged = c
        .prepare_cached(
            "SELECT bucket, agg FROM rollups WHERE series = ?1 AND res = ?2 AND bucket >= ?3 AND bucket < ?4",
        )
        .map_err(db_err)?;
    match sp.res {
        Resolution::All => {
            let mut rows = merged.query(params![id, sp.res.seconds(), sp.from, sp.to]).map_err(db_err)?;
            while let Some(r) = rows.next().map_err(db_err)? {
                out(r.get(0).map_err(db_err)?, agg_from_row(r, 1).map_err(db_err)?);
            }
        }
        Resolution::Second => {
            // A row per minute (see `seconds`): the minutes from the one holding `from`.
            let first = Resolution::Minute.bucket_of(sp.from);
            let mut rows = merged.query(params![id, sp.res.seconds(), first, sp.to]).map_err(db_err)?;
            while let Some(r) = rows.next().map_err(db_err)? {
                let minute: i64 = r.get(0).map_err(db_err)?;
                let blob = r.get_ref(1).and_then(|v| v.as_blob().map_err(Into::into)).map_err(db_err)?;
                seconds::visit(blob, &mut |s, a| {
                    let t = minute + i64::from(s);
                    if (sp.from..sp.to).contains(&t) {
                        out(t, a);
                    }
                })
                .map_err(db_err)?;
            }
        }
        Resolution::Minute | Resolution::Hour | Resolution::Day => {}
    }
    Ok(())
}

/// [`merged_buckets`]' buckets held by day packs (see `pack`): the day, hour and minute buckets
/// of `spans`, and the seconds their minutes carry, read from the packs of the days the spans
/// reach in one range query.
fn packs_of(c: &Connection, id: i64, spans: &[Span], out: &mut impl FnMut(i64, Agg)) -> Result<(), StoreError> {
    let held = || spans.iter().filter(|s| s.res != Resolution::All && s.from < s.to);
    let (Some(from), Some(to)) = (held().map(|s| s.from).min(), held().map(|s| s.to).max()) else { return Ok(()) };
    let first_day = from.div_euclid(86_400).saturating_mul(86_400);
    let mut packs = c
        .prepare_cached(
            "SELECT bucket, agg FROM rollups WHERE series = ?1 AND res = ?2 AND bucket >= ?3 AND bucket < ?4",
        )
        .map_err(db_err)?;
    let mut rows = packs.query(params![id, PACK_RES, first_day, to]).map_err(db_err)?;
    while let Some(r) = rows.next().map_err(db_err)? {
        let day: i64 = r.get(0).map_err(db_err)?;
        let blob = r.get_ref(1).and_then(|v| v.as_blob().map_err(Into::into)).map_err(db_err)?;
        for sp in held().filter(|s| s.from < day.saturating_add(86_400) && s.to > day) {
            buckets_in(blob, day, sp.res, sp.from, sp.to, out).map_err(db_err)?;
        }
    }
    Ok(())
}

/// The merged buckets of the series with id `id` covered by `spans`.
fn aggregate_of(c: &Connection, id: i64, spans: &[Span]) -> Result<Agg, StoreError> {
    let mut total = Agg::default();
    let mut add = |_, a: Agg| total.merge(&a);
    for sp in spans {
        rows_of(c, id, sp, &mut add)?;
    }
    packs_of(c, id, spans, &mut add)?;
    for (_, agg) in recent_seconds(c, id, spans)? {
        total.merge(&agg);
    }
    Ok(total)
}

/// The buckets of `series` at `res` starting in `[from, to)`, one point per bucket, in order.
pub(super) fn points(
    c: &Connection,
    series: &SeriesKey,
    res: Resolution,
    from: i64,
    to: i64,
) -> Result<Vec<(i64, Agg)>, StoreError> {
    let Some(id) = series_id(c, series)? else { return Ok(Vec::new()) };
    let mut rows: Vec<(i64, Agg)> = Vec::new();
    merged_buckets(c, id, res, from, to, &mut |t, a| rows.push((t, a)))?;
    let recent = recent_seconds(c, id, &[Span { res, from, to }])?;
    rows.extend(recent.into_iter().map(|(t, agg)| (res.bucket_of(t), agg)));
    rows.sort_by_key(|(bucket, _)| *bucket);
    // A bucket can have a merged part, a recent delta and recent seconds: one point.
    let mut points: Vec<(i64, Agg)> = Vec::new();
    for (bucket, agg) in rows {
        match points.last_mut() {
            Some((b, a)) if *b == bucket => a.merge(&agg),
            _ => points.push((bucket, agg)),
        }
    }
    Ok(points)
}

pub(super) fn idempotent_answer(c: &Connection, scope: &str, key: &str) -> Result<Option<StoredAnswer>, StoreError> {
    c.prepare_cached("SELECT answer, fingerprint FROM idempotency_keys WHERE scope = ?1 AND key = ?2")
        .and_then(|mut st| {
            st.query_row(params![scope, key], |r| Ok(StoredAnswer { answer: r.get(0)?, fingerprint: r.get(1)? }))
                .optional()
        })
        .map_err(db_err)
}

pub(super) fn is_known(c: &Connection, dim: &str, value: &str) -> Result<bool, StoreError> {
    c.prepare_cached("SELECT 1 FROM dim_values WHERE dim = ?1 AND val = ?2")
        .and_then(|mut s| s.exists(params![dim, value]))
        .map_err(db_err)
}

pub(super) fn stored_offsets(c: &Connection, source: &str) -> Result<Vec<(i32, i64)>, StoreError> {
    let mut s = c
        .prepare_cached("SELECT partition, next_offset FROM offsets WHERE source = ?1 ORDER BY partition")
        .map_err(db_err)?;
    let rows = s.query_map([source], |r| Ok((r.get(0)?, r.get(1)?))).map_err(db_err)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
}

pub(super) fn dead_letters(c: &Connection, before: Option<i64>, limit: u32) -> Result<Vec<DeadLetter>, StoreError> {
    let mut s = c
        .prepare_cached(
            "SELECT id, received_ms, source, reason, substr(raw, 1, ?3), topic, partition, \"offset\", length(raw)
             FROM dead_letters WHERE id < ?1 ORDER BY id DESC LIMIT ?2",
        )
        .map_err(db_err)?;
    let rows = s
        .query_map(params![before.unwrap_or(i64::MAX), limit, DEAD_LETTER_PAGE_RAW], |r| {
            Ok(DeadLetter { id: r.get(0)?, raw_size: r.get(8)?, letter: letter_from_row(r)? })
        })
        .map_err(db_err)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
}

pub(super) fn raw_blocks(
    c: &Connection,
    name: &str,
    before: Option<i64>,
    limit: u32,
) -> Result<Vec<(i64, RawBlock)>, StoreError> {
    let mut s = c
        .prepare_cached(
            "SELECT id, name, min_time_ms, max_time_ms, count, data FROM raw_blocks
             WHERE name = ?1 AND id < ?2 ORDER BY id DESC LIMIT ?3",
        )
        .map_err(db_err)?;
    let rows = s.query_map(params![name, before.unwrap_or(i64::MAX), limit], raw_block_from_row).map_err(db_err)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
}

/// `id, name, min_time_ms, max_time_ms, count, data` of `raw_blocks`.
pub(super) fn raw_block_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(i64, RawBlock)> {
    Ok((
        r.get(0)?,
        RawBlock { name: r.get(1)?, min_time_ms: r.get(2)?, max_time_ms: r.get(3)?, count: r.get(4)?, data: r.get(5)? },
    ))
}

/// Columns 1 to 7 of a dead-letter row: `received_ms, source, reason, raw, topic, partition, "offset"`.
pub(super) fn letter_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<NewDeadLetter> {
    Ok(NewDeadLetter {
        received_ms: r.get(1)?,
        source: r.get(2)?,
        reason: r.get(3)?,
        raw: r.get(4)?,
        topic: r.get(5)?,
        partition: r.get(6)?,
        offset: r.get(7)?,
    })
}

pub(super) fn list_tokens(c: &Connection) -> Result<Vec<TokenRecord>, StoreError> {
    let mut s = c
        .prepare_cached("SELECT name, hash, scopes, created_ms, expires_ms, revoked_ms FROM tokens ORDER BY name")
        .map_err(db_err)?;
    let rows = s
        .query_map([], |r| {
            Ok(TokenRecord {
                name: r.get(0)?,
                hash: r.get(1)?,
                scopes: r.get::<_, String>(2)?.split(',').filter(|s| !s.is_empty()).map(String::from).collect(),
                created_ms: r.get(3)?,
                expires_ms: r.get(4)?,
                revoked_ms: r.get(5)?,
            })
        })
        .map_err(db_err)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
}

pub(super) fn tokens_version(c: &Connection) -> Result<i64, StoreError> {
    c.prepare_cached("SELECT value FROM meta WHERE key = 'tokens_version'")
        .and_then(|mut s| s.query_row([], |r| r.get(0)))
        .map_err(db_err)
}

/// An upper bound of the number of series (ids are never reused; `begin` of a scan).
pub(super) fn series_bound(c: &Connection) -> Result<u64, StoreError> {
    c.query_row("SELECT coalesce(max(id), 0) FROM series", [], |r| r.get::<_, i64>(0))
        .map(|n| n.max(0) as u64)
        .map_err(db_err)
}

/// `Store::scan_latest`'s rows, in the caller's snapshot: every dimension value, then each
/// series (in id order) with its latest merged bucket per resolution and, from the small tables
/// of rows not merged yet, their latest buckets too.
pub(super) fn scan_latest(c: &Connection, visit: &mut dyn LatestVisitor) -> Result<(), StoreError> {
    let mut values = c.prepare("SELECT dim, val FROM dim_values").map_err(db_err)?;
    let mut rows = values.query([]).map_err(db_err)?;
    while let Some(r) = rows.next().map_err(db_err)? {
        visit.value(text(r, 0)?, text(r, 1)?);
    }
    // Rows not merged yet: a second or so of commits.
    let mut pending: crate::rollup::FastMap<i64, Vec<(Resolution, i64)>> = Default::default();
    let mut deltas = c
        .prepare("SELECT series, res, max(bucket) FROM rollup_deltas WHERE res > 0 GROUP BY series, res")
        .map_err(db_err)?;
    let mut rows = deltas.query([]).map_err(db_err)?;
    while let Some(r) = rows.next().map_err(db_err)? {
        if let Some(res) = Resolution::from_seconds(r.get(1).map_err(db_err)?) {
            pending.entry(r.get(0).map_err(db_err)?).or_default().push((res, r.get(2).map_err(db_err)?));
        }
    }
    let mut seconds = c.prepare("SELECT series, max(bucket) FROM rollup_seconds GROUP BY series").map_err(db_err)?;
    let mut rows = seconds.query([]).map_err(db_err)?;
    while let Some(r) = rows.next().map_err(db_err)? {
        let t: i64 = r.get(1).map_err(db_err)?;
        let coarser = [Resolution::Day, Resolution::Hour, Resolution::Minute, Resolution::Second];
        pending.entry(r.get(0).map_err(db_err)?).or_default().extend(coarser.map(|res| (res, res.bucket_of(t))));
    }
    // Both in series order: one pass over each, side by side.
    let mut series = c.prepare("SELECT id, metric, dim, val FROM series ORDER BY id").map_err(db_err)?;
    // The latest second row and the latest day pack of each series (SQLite reads a bare column
    // of a `max()` query from the row holding the maximum); a pack holds its latest hour and minute.
    let mut merged = c
        .prepare(
            "SELECT series, res, max(bucket), agg FROM rollups WHERE res > 0 GROUP BY series, res ORDER BY series, res",
        )
        .map_err(db_err)?;
    let mut latest = merged.query([]).map_err(db_err)?;
    let mut cur = next_latest(&mut latest)?;
    let mut rows = series.query([]).map_err(db_err)?;
    while let Some(r) = rows.next().map_err(db_err)? {
        let id: i64 = r.get(0).map_err(db_err)?;
        let key = (text(r, 1)?, text(r, 2)?, text(r, 3)?);
        while let Some((s, buckets)) = cur.take_if(|c| c.0 <= id) {
            if s == id {
                for (res, bucket) in buckets {
                    visit.bucket(key, res, bucket);
                }
            }
            cur = next_latest(&mut latest)?;
        }
        for (res, bucket) in pending.get(&id).into_iter().flatten() {
            visit.bucket(key, *res, *bucket);
        }
    }
    Ok(())
}

/// A series and its latest buckets, by resolution.
type Latest = (i64, Vec<(Resolution, i64)>);

/// The series of the next row of `scan_latest`'s query of `rollups` (its latest row per
/// resolution), with the latest buckets that row holds.
fn next_latest(latest: &mut rusqlite::Rows<'_>) -> Result<Option<Latest>, StoreError> {
    let Some(r) = latest.next().map_err(db_err)? else { return Ok(None) };
    let (series, res, bucket): (i64, i64, i64) =
        (r.get(0).map_err(db_err)?, r.get(1).map_err(db_err)?, r.get(2).map_err(db_err)?);
    let blob = || r.get_ref(3).and_then(|v| v.as_blob().map_err(Into::into)).map_err(db_err);
    let buckets = match res {
        PACK_RES => {
            let latest = latest_in(blob()?, bucket).map_err(db_err)?;
            let mut b = vec![(Resolution::Day, bucket)];
            b.extend(latest.hour.map(|h| (Resolution::Hour, h)));
            b.extend(latest.minute.map(|m| (Resolution::Minute, m)));
            // Seconds carried by minutes: the visitor keeps the later of this and the rows'.
            b.push((Resolution::Second, latest.carried_bound));
            b
        }
        1 => {
            // A minute of seconds (see `seconds`): its latest second.
            let mut last = bucket;
            seconds::visit(blob()?, &mut |s, _| last = bucket + i64::from(s)).map_err(db_err)?;
            vec![(Resolution::Second, last)]
        }
        res => Resolution::from_seconds(res).map(|res| (res, bucket)).into_iter().collect(),
    };
    Ok(Some((series, buckets)))
}

/// A text column, borrowed from the row.
fn text<'r>(r: &'r rusqlite::Row<'_>, i: usize) -> Result<&'r str, StoreError> {
    r.get_ref(i).and_then(|v| v.as_str().map_err(Into::into)).map_err(db_err)
}
