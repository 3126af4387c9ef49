//! Background upkeep of the writer's tables: merging recent deltas into `rollups`, checkpointing
//! the WAL, and retention. Each runs a run of series at a time so commits slip in between.

use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};

use super::conn::{WriterConn, db_err};
use super::decimal::agg_from_row;
use super::pack::{DayPack, PACK_RES};
use super::rollups::add_to_rollups;
use super::seconds;
use crate::rollup::{Agg, Resolution, coarser_buckets};
use crate::storage::{PruneBefore, Pruned, StoreError};

/// How often a commit also merges `rollup_deltas` and `rollup_seconds` into `rollups`.
pub(super) const MERGE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Adds every row of `rollup_deltas` and of `rollup_seconds` (with the minute, hour, day and
/// all-time buckets derived from those seconds) to `rollups`, and empties both, in one
/// transaction: readers see each delta in exactly one place. `rollups` is keyed by series first
/// (what reads want), so adding a second's worth of rows to it touches a page per active series;
/// doing that once a second instead of once per commit is what keeps ingest fast on a big store.
pub(super) fn merge_deltas(c: &mut Connection) -> Result<usize, StoreError> {
    merge_series(c, i64::MIN, i64::MAX, Kept::ALL)
}

/// The oldest second and minute buckets a merge writes to `rollups` (see `StoreOptions`): older
/// ones are past their retention, and their coarser buckets hold them.
#[derive(Debug, Clone, Copy)]
pub(super) struct Kept {
    pub seconds_from: i64,
    pub minutes_from: i64,
}

impl Kept {
    pub const ALL: Kept = Kept { seconds_from: i64::MIN, minutes_from: i64::MIN };
}

/// [`merge_deltas`] for the series with ids in `[lo, hi)` only: every recent row of a series moves
/// in one transaction, so a read of any one series still sees each delta exactly once. Second
/// and minute buckets older than `kept` are left out (past their retention; see `StoreOptions`).
pub(super) fn merge_series(c: &mut Connection, lo: i64, hi: i64, kept: Kept) -> Result<usize, StoreError> {
    let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(db_err)?;
    let n = merge_rows(&tx, lo, hi, kept)?;
    tx.commit().map_err(db_err)?;
    Ok(n)
}

/// [`merge_series`] inside the caller's write transaction.
pub(super) fn merge_rows(tx: &Connection, lo: i64, hi: i64, kept: Kept) -> Result<usize, StoreError> {
    let corrupt = || db_err(rusqlite::Error::UserFunctionError("a pending row of no known resolution".into()));
    let deltas: Vec<(i64, i64, i64, Agg)> = tx
        .prepare_cached("SELECT series, res, bucket, agg FROM rollup_deltas WHERE series >= ?1 AND series < ?2")
        .and_then(|mut s| {
            s.query_map([lo, hi], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, agg_from_row(r, 3)?)))?.collect()
        })
        .map_err(db_err)?;
    let mut rows: Vec<(i64, Resolution, i64, Agg)> = Vec::with_capacity(deltas.len());
    for (series, res, bucket, a) in deltas {
        rows.push((series, Resolution::from_seconds(res).ok_or_else(corrupt)?, bucket, a));
    }
    tx.prepare_cached("DELETE FROM rollup_deltas WHERE series >= ?1 AND series < ?2")
        .and_then(|mut s| s.execute([lo, hi]))
        .map_err(db_err)?;
    // (series, second, agg), ordered by key.
    let seconds: Vec<(i64, i64, Agg)> = tx
        .prepare_cached(
            "SELECT series, bucket, agg FROM rollup_seconds
             WHERE series >= ?1 AND series < ?2 ORDER BY series, bucket",
        )
        .and_then(|mut s| s.query_map([lo, hi], |r| Ok((r.get(0)?, r.get(1)?, agg_from_row(r, 2)?)))?.collect())
        .map_err(db_err)?;
    if !seconds.is_empty() {
        rows.reserve(seconds.len() * 3);
        for group in seconds.chunk_by(|a, b| a.0 == b.0) {
            let series = group[0].0;
            let secs: Vec<(i64, Agg)> = group.iter().map(|(_, t, a)| (*t, a.clone())).collect();
            rows.extend(coarser_buckets(&secs).map(|(res, start, agg)| (series, res, start, agg)));
            // A second past its retention (a late event) would only wait for `prune`: its coarser
            // buckets above hold it.
            rows.extend(
                secs.into_iter()
                    .filter(|(t, _)| *t >= kept.seconds_from)
                    .map(|(t, agg)| (series, Resolution::Second, t, agg)),
            );
        }
        tx.prepare_cached("DELETE FROM rollup_seconds WHERE series >= ?1 AND series < ?2")
            .and_then(|mut s| s.execute([lo, hi]))
            .map_err(db_err)?;
    }
    // The same for a late event's minute (and any minute past retention in the recent tables).
    rows.retain(|(_, res, start, _)| *res != Resolution::Minute || *start >= kept.minutes_from);
    add_to_rollups(tx, rows.iter().map(|(s, res, start, a)| (*s, *res, *start, a)))?;
    Ok(rows.len())
}

/// Series per transaction when the writer prunes in the background: each transaction holds the
/// writer lock for a few milliseconds, so commits slip in between.
pub(super) const SERIES_PER_STEP: i64 = 256;

/// Pending rows (of `rollup_seconds`, and of `rollup_deltas`) one merge transaction moves at most,
/// unless a single series has more: it moves whole. Within that, a step is sized to take about
/// [`STEP_TARGET`] of writer time, from the last step's rows and time, and never fewer than
/// [`MIN_STEP_ROWS`] rows. A row costs several times more merged in small transactions: at a fixed
/// 2,048 rows a step the merge fell behind a 2M-event store's ingest over 1,000 products (a pass
/// took 18-51 s) and HTTP ingest halved; a fixed 32,768 held the writer longer over 1M products,
/// where each row is a page of its own (bench/README.md).
pub(super) const ROWS_PER_STEP: i64 = 65_536;
pub(super) const MIN_STEP_ROWS: i64 = 2_048;
const STEP_TARGET: std::time::Duration = std::time::Duration::from_millis(100);

/// The next step's rows, from a full step of `rows` that took `took`: scaled to [`STEP_TARGET`].
fn next_step_rows(rows: i64, took: std::time::Duration) -> i64 {
    let fit = rows as f64 * STEP_TARGET.as_secs_f64() / took.as_secs_f64().max(1e-6);
    (fit as i64).clamp(MIN_STEP_ROWS, ROWS_PER_STEP)
}

/// Takes the writer lock for one step, then pauses, so that a commit waiting for the lock gets it
/// (a released mutex is otherwise often re-taken by the thread that released it).
fn locked_step_writer<T>(writer: &Mutex<WriterConn>, step: impl FnOnce(&mut WriterConn) -> T) -> T {
    let out = step(&mut writer.lock().unwrap_or_else(|e| e.into_inner()));
    std::thread::sleep(std::time::Duration::from_micros(500));
    out
}

/// [`locked_step_writer`] with the writer's connection alone.
fn locked_step<T>(writer: &Mutex<WriterConn>, step: impl FnOnce(&mut Connection) -> T) -> T {
    locked_step_writer(writer, |w| step(&mut w.conn))
}

/// Runs `step` on the writer connection for each run of [`SERIES_PER_STEP`] series ids in turn,
/// one locked step at a time. Returns the sum of what the steps return.
pub(super) fn step_through_series(
    writer: &Mutex<WriterConn>,
    mut step: impl FnMut(&mut Connection, i64, i64) -> Result<usize, StoreError>,
) -> Result<usize, StoreError> {
    let max: i64 = locked_step(writer, |c| c.query_row("SELECT coalesce(max(id), 0) FROM series", [], |r| r.get(0)))
        .map_err(db_err)?;
    let mut total = 0;
    let mut lo = i64::MIN;
    loop {
        // The first run also takes anything below id 0, the last anything above today's max.
        let hi = if lo == i64::MIN { SERIES_PER_STEP } else { lo + SERIES_PER_STEP };
        let hi = if hi > max { i64::MAX } else { hi };
        total += locked_step(writer, |c| step(c, lo, hi))?;
        if hi == i64::MAX {
            return Ok(total);
        }
        lo = hi;
    }
}

/// Merges every pending row into `rollups`, going only through the series that have some, about
/// `rows_per_step` rows a transaction (every pending row of a series in the same one). Stepping
/// through the whole id space instead made a pass over 1.7M series take minutes under load, so
/// pending rows piled up, and the next pass's steps held hundreds of MB (bench/README.md, "Memory").
/// Series that get their first pending row after the pass began wait for the next pass. Returns
/// the rows merged and the steps taken.
pub(super) fn merge_pending(writer: &Mutex<WriterConn>, rows_per_step: i64) -> Result<(usize, usize), StoreError> {
    const TABLES: [&str; 2] = ["rollup_seconds", "rollup_deltas"];
    let last: Option<i64> = locked_step(writer, |c| {
        c.query_row(
            "SELECT max(m) FROM (SELECT max(series) AS m FROM rollup_seconds UNION ALL SELECT max(series) FROM rollup_deltas)",
            [],
            |r| r.get(0),
        )
    })
    .map_err(db_err)?;
    let Some(last) = last else { return Ok((0, 0)) };
    let kept = {
        let w = writer.lock().unwrap_or_else(|e| e.into_inner());
        let now_s = crate::clock::now_ms() / 1000;
        let from = |keep: Option<i64>| keep.map_or(i64::MIN, |k| now_s.saturating_sub(k));
        Kept { seconds_from: from(w.second_buckets_s), minutes_from: from(w.minute_buckets_s) }
    };
    let (mut lo, mut total, mut steps) = (i64::MIN, 0, 0);
    while lo <= last {
        let moved = locked_step_writer(writer, |w| -> Result<Option<(i64, usize)>, StoreError> {
            let rows_per_step = rows_per_step.min(w.merge_step_rows);
            let started = std::time::Instant::now();
            let c = &mut w.conn;
            let (mut first, mut hi) = (None::<i64>, last.saturating_add(1));
            for t in TABLES {
                let next: Option<i64> = c
                    .prepare_cached(&format!("SELECT min(series) FROM {t} WHERE series >= ?1"))
                    .and_then(|mut s| s.query_row([lo], |r| r.get(0)))
                    .map_err(db_err)?;
                first = match (first, next) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                // The series of the row after this step's share: the step ends before it.
                let end: Option<i64> = c
                    .prepare_cached(&format!(
                        "SELECT series FROM {t} WHERE series >= ?1 ORDER BY series LIMIT 1 OFFSET ?2"
                    ))
                    .and_then(|mut s| s.query_row([lo, rows_per_step], |r| r.get(0)).optional())
                    .map_err(db_err)?;
                hi = hi.min(end.unwrap_or(i64::MAX));
            }
            let Some(first) = first.filter(|f| *f <= last) else { return Ok(None) };
            let hi = hi.max(first + 1);
            let n = without_fsync(c, |c| merge_series(c, first, hi, kept))?;
            if hi <= last {
                // The step was full (it ended at the rows bound, not at the last pending series).
                w.merge_step_rows = next_step_rows(rows_per_step, started.elapsed());
            }
            Ok(Some((hi, n)))
        })?;
        let Some((hi, n)) = moved else { break };
        (total, steps, lo) = (total + n, steps + 1, hi);
    }
    Ok((total, steps))
}

/// Runs `step` (whole transactions) with `synchronous=NORMAL`, then puts `FULL` back.
///
/// A merge only moves rows that are already durable from the pending tables to `rollups`, in one
/// transaction, and acknowledges nothing. In WAL mode, NORMAL means its commit does not wait for
/// an fsync: the next acknowledged commit's fsync (FULL) makes it durable along with itself, and
/// a crash before that loses the whole merge transaction, never part of it (recovery stops at the
/// first frame whose checksum fails), which leaves its rows pending, where reads find them.
/// HTTP ingest on a 2M-event store, interleaved A/B: +11 % (median of 3, bench/README.md).
fn without_fsync<T>(
    c: &mut Connection,
    step: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    c.pragma_update(None, "synchronous", "NORMAL").map_err(db_err)?;
    let out = step(c);
    if let Err(e) = c.pragma_update(None, "synchronous", "FULL") {
        // Acknowledged commits must not run unsynced; nothing is left to do safely but stop.
        tracing::error!(error = %e, "restoring synchronous=FULL on the writer failed; aborting");
        std::process::abort();
    }
    out
}

/// The writer's periodic work, run after the commit that made it due was acknowledged: the deltas
/// merge, a few thousand rows at a time. It only reorganises committed data, so a failure loses
/// nothing and is retried next time. (Checkpoints run on their own: see `wal`.)
pub(super) fn maintain(writer: &Mutex<WriterConn>) {
    let start = std::time::Instant::now();
    let (rows, steps) = merge_pending(writer, ROWS_PER_STEP).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "merging rollup deltas failed; will retry");
        (0, 0)
    });
    tracing::debug!(rows, steps, merge_ms = start.elapsed().as_millis() as u64, "writer maintenance");
}

/// Retention: drops raw blocks, dead letters and idempotency keys past their cut-offs, then expired
/// second and minute buckets series by series.
pub(super) fn prune(w: &Mutex<WriterConn>, b: PruneBefore) -> Result<Pruned, StoreError> {
    // Merged first, so each bucket is one row and the count below is of buckets.
    merge_pending(w, ROWS_PER_STEP)?;
    let (raw_blocks, dead_letters) = prune_rows(w, &b)?;
    let buckets = prune_buckets(w, &b)?;
    Ok(Pruned { raw_blocks: raw_blocks as u64, dead_letters: dead_letters as u64, buckets: buckets as u64 })
}

/// Raw blocks, dead letters and idempotency keys past their cut-offs; how many blocks and letters.
fn prune_rows(w: &Mutex<WriterConn>, b: &PruneBefore) -> Result<(usize, usize), StoreError> {
    let mut g = w.lock().unwrap_or_else(|e| e.into_inner());
    let tx = g.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(db_err)?;
    let raw = tx.execute("DELETE FROM raw_blocks WHERE max_time_ms < ?1", [b.raw_ms]).map_err(db_err)?;
    if raw > 0 {
        // What a rebuild can no longer reach (see `Store::raw_pruned_before`).
        tx.execute(
            "INSERT INTO meta VALUES ('raw_pruned_before_ms', ?1)
             ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)",
            [b.raw_ms],
        )
        .map_err(db_err)?;
    }
    let dead = tx.execute("DELETE FROM dead_letters WHERE received_ms < ?1", [b.dead_letters_ms]).map_err(db_err)?;
    tx.execute("DELETE FROM idempotency_keys WHERE at_ms < ?1", [b.idempotency_keys_ms]).map_err(db_err)?;
    tx.commit().map_err(db_err)?;
    Ok((raw, dead))
}

/// Second and minute buckets past their cut-offs; how many.
fn prune_buckets(w: &Mutex<WriterConn>, b: &PruneBefore) -> Result<usize, StoreError> {
    // Series by series: the primary key starts with the series, so each delete reads only the
    // rows it removes (a delete by resolution and time alone scanned the whole table, holding the
    // writer for ~0.6 s on a store of 2M events, once a minute). Minutes, and the seconds minutes
    // carry, live in day packs (see `pack`): only the packs of the days since the last pass's cut
    // are read, so a pass does not read every day the store holds.
    if b.second_buckets_s.is_none() && b.minute_buckets_s.is_none() {
        return Ok(0);
    }
    // The day from which packs may still hold what a cut drops (the last pass's cut, remembered).
    let since = |key: &'static str| {
        locked_step(w, |c| {
            c.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get::<_, i64>(0)).optional()
        })
        .map(|s| s.map_or(i64::MIN, |s| s.div_euclid(86_400).saturating_mul(86_400)))
        .map_err(db_err)
    };
    let seconds_since = if b.second_buckets_s.is_some() { since("seconds_pruned_before")? } else { i64::MIN };
    let minutes_since = if b.minute_buckets_s.is_some() { since("minutes_pruned_before")? } else { i64::MIN };
    let buckets = step_through_series(w, |c, lo, hi| {
        let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(db_err)?;
        let ids: Vec<i64> = tx
            .prepare_cached("SELECT id FROM series WHERE id >= ?1 AND id < ?2")
            .and_then(|mut s| s.query_map([lo, hi], |r| r.get(0))?.collect())
            .map_err(db_err)?;
        let mut n = 0;
        if let Some(before) = b.second_buckets_s {
            for id in &ids {
                n += prune_second_rows(&tx, *id, before)?;
                n +=
                    prune_packs(&tx, *id, seconds_since, before, |day, pack, _| pack.drop_seconds_before(day, before))?;
            }
        }
        if let Some(cut) = b.minute_buckets_s {
            for id in &ids {
                n += prune_packs(&tx, *id, minutes_since, cut, |day, pack, carried| {
                    pack.drop_minutes_before(day, cut, carried)
                })?;
            }
        }
        tx.commit().map_err(db_err)?;
        Ok(n)
    })?;
    for (key, cut) in [("seconds_pruned_before", b.second_buckets_s), ("minutes_pruned_before", b.minute_buckets_s)] {
        let Some(cut) = cut else { continue };
        locked_step(w, |c| {
            c.execute(
                "INSERT INTO meta VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)",
                params![key, cut],
            )
        })
        .map_err(db_err)?;
    }
    Ok(buckets)
}

/// Drops the seconds before `cut` from series `id`'s minutes of seconds (see `seconds`); returns
/// how many. A minute left empty is deleted.
fn prune_second_rows(tx: &Connection, id: i64, cut: i64) -> Result<usize, StoreError> {
    let second = Resolution::Second.seconds();
    let minutes: Vec<(i64, Vec<u8>)> = tx
        .prepare_cached("SELECT bucket, agg FROM rollups WHERE series = ?1 AND res = ?2 AND bucket < ?3")
        .and_then(|mut s| s.query_map(params![id, second, cut], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
        .map_err(db_err)?;
    let mut n = 0;
    for (minute, blob) in minutes {
        let mut secs = seconds::decode(&blob).map_err(db_err)?;
        let before = secs.len();
        secs.retain(|(s, _)| minute + i64::from(*s) >= cut);
        n += before - secs.len();
        if secs.is_empty() {
            tx.prepare_cached("DELETE FROM rollups WHERE series = ?1 AND res = ?2 AND bucket = ?3")
                .and_then(|mut s| s.execute(params![id, second, minute]))
                .map_err(db_err)?;
        } else if secs.len() < before {
            tx.prepare_cached("UPDATE rollups SET agg = ?4 WHERE series = ?1 AND res = ?2 AND bucket = ?3")
                .and_then(|mut s| s.execute(params![id, second, minute, seconds::encode(&secs)]))
                .map_err(db_err)?;
        }
    }
    Ok(n)
}

/// Prunes the packs of series `id` for the days from `since` to `cut` with `drop`, which returns
/// how many buckets it dropped and pushes the carried seconds of the minutes it dropped; returns
/// how many. A pack left empty is deleted. A carried second outlives its minute as a row: it is
/// a second bucket, whose own retention (the seconds' cut, if any) drops it (as it did before
/// the minute carried it).
fn prune_packs(
    tx: &Connection,
    id: i64,
    since: i64,
    cut: i64,
    mut drop: impl FnMut(i64, &mut DayPack, &mut Vec<(i64, Agg)>) -> usize,
) -> Result<usize, StoreError> {
    let packs: Vec<(i64, Vec<u8>)> = tx
        .prepare_cached(
            "SELECT bucket, agg FROM rollups WHERE series = ?1 AND res = ?2 AND bucket >= ?3 AND bucket < ?4",
        )
        .and_then(|mut s| s.query_map(params![id, PACK_RES, since, cut], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
        .map_err(db_err)?;
    let mut n = 0;
    let mut carried = Vec::new();
    for (day, blob) in packs {
        let mut pack = DayPack::decode(&blob).map_err(db_err)?;
        let dropped = drop(day, &mut pack, &mut carried);
        if dropped == 0 {
            continue;
        }
        n += dropped;
        if pack.is_empty() {
            tx.prepare_cached("DELETE FROM rollups WHERE series = ?1 AND res = ?2 AND bucket = ?3")
                .and_then(|mut s| s.execute(params![id, PACK_RES, day]))
                .map_err(db_err)?;
        } else {
            tx.prepare_cached("UPDATE rollups SET agg = ?4 WHERE series = ?1 AND res = ?2 AND bucket = ?3")
                .and_then(|mut s| s.execute(params![id, PACK_RES, day, pack.encode()]))
                .map_err(db_err)?;
        }
    }
    add_to_rollups(tx, carried.iter().map(|(start, a)| (id, Resolution::Second, *start, a)))?;
    Ok(n)
}
