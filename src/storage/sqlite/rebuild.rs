//! Rebuild jobs, their chunks and swap, metric definitions, and the reads a replay makes.

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::conn::{WriterConn, db_err};
use super::maintain::{Kept, merge_rows};
use super::pack::{PACK_RES, buckets_in};
use super::read::{letter_from_row, raw_block_from_row};
use super::rollups::add_to_rollups;
use super::write::{dim_values, series_ids};
use crate::rollup::{Agg, FastMap, Resolution, SeriesKey};
use crate::storage::rebuild::{Claim, FoldTail, MetricRecord, RebuildJob, StoredDeadLetter, Swapped, swap_batch};
use crate::storage::{ClaimRequest, RawBlock, RebuildStep, StoreError};

const JOB_COLUMNS: &str = "id, spec, state, owner, lease_until_ms, started_ms, updated_ms, progress_block, \
                           target_block, events_read, events_skipped";

fn job_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RebuildJob> {
    let spec: String = r.get(1)?;
    Ok(RebuildJob {
        id: r.get(0)?,
        spec: serde_json::from_str(&spec)
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(1, rusqlite::types::Type::Text, e.into()))?,
        state: r.get(2)?,
        owner: r.get(3)?,
        lease_until_ms: r.get(4)?,
        started_ms: r.get(5)?,
        updated_ms: r.get(6)?,
        progress_block: r.get(7)?,
        target_block: r.get(8)?,
        events_read: r.get(9)?,
        events_skipped: r.get(10)?,
    })
}

pub(super) fn raw_watermark(c: &Connection) -> Result<i64, StoreError> {
    c.query_row("SELECT coalesce(max(id), 0) FROM raw_blocks", [], |r| r.get(0)).map_err(db_err)
}

pub(super) fn raw_blocks_after(
    c: &Connection,
    after: i64,
    upto: i64,
    limit: u32,
) -> Result<Vec<(i64, RawBlock)>, StoreError> {
    let mut s = c
        .prepare_cached(
            "SELECT id, name, min_time_ms, max_time_ms, count, data FROM raw_blocks
             WHERE id > ?1 AND id <= ?2 ORDER BY id LIMIT ?3",
        )
        .map_err(db_err)?;
    let rows = s.query_map(params![after, upto, limit], raw_block_from_row).map_err(db_err)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
}

pub(super) fn raw_pruned_before(c: &Connection) -> Result<Option<i64>, StoreError> {
    c.query_row("SELECT value FROM meta WHERE key = 'raw_pruned_before_ms'", [], |r| r.get(0))
        .optional()
        .map_err(db_err)
}

/// The running job (at most one).
fn running(tx: &Connection) -> Result<Option<RebuildJob>, StoreError> {
    tx.query_row(&format!("SELECT {JOB_COLUMNS} FROM rebuild_jobs WHERE state = 'running'"), [], job_from_row)
        .optional()
        .map_err(db_err)
}

pub(super) fn claim(c: &mut Connection, req: &ClaimRequest) -> Result<Claim, StoreError> {
    let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(db_err)?;
    let lease_until = req.now_ms + req.lease_ms;
    if let Some(job) = running(&tx)? {
        let free = job.owner == req.owner || job.lease_until_ms < req.now_ms || req.takeover;
        if !free {
            return Ok(Claim::Busy(job));
        }
        if job.spec == req.spec {
            tx.execute(
                "UPDATE rebuild_jobs SET owner = ?2, lease_until_ms = ?3, updated_ms = ?4 WHERE id = ?1",
                params![job.id, req.owner, lease_until, req.now_ms],
            )
            .map_err(db_err)?;
            let job = RebuildJob { owner: req.owner.clone(), lease_until_ms: lease_until, ..job };
            tx.commit().map_err(db_err)?;
            return Ok(Claim::Held(job));
        }
        // Another rebuild was left behind: its rows were never swapped in, so dropping it loses
        // nothing but its progress.
        tx.execute("UPDATE rebuild_jobs SET state = 'abandoned' WHERE id = ?1 AND state = 'running'", [job.id])
            .map_err(db_err)?;
        tx.execute("DELETE FROM rebuild_chunks WHERE job = ?1", [job.id]).map_err(db_err)?;
    }
    let spec = serde_json::to_string(&req.spec).map_err(StoreError::backend)?;
    tx.execute(
        "INSERT INTO rebuild_jobs (spec, state, owner, lease_until_ms, started_ms, updated_ms, progress_block,
                                   target_block, events_read, events_skipped)
         VALUES (?1, 'running', ?2, ?3, ?4, ?4, 0, ?5, 0, 0)",
        params![spec, req.owner, lease_until, req.now_ms, req.target_block],
    )
    .map_err(db_err)?;
    let id = tx.last_insert_rowid();
    let job = tx
        .query_row(&format!("SELECT {JOB_COLUMNS} FROM rebuild_jobs WHERE id = ?1"), [id], job_from_row)
        .map_err(db_err)?;
    tx.commit().map_err(db_err)?;
    Ok(Claim::Held(job))
}

/// Checks that `owner` holds `job`'s lease, in the caller's transaction.
fn check_lease(tx: &Connection, job: i64, owner: &str) -> Result<i64, StoreError> {
    let row: Option<(String, String, i64)> = tx
        .query_row("SELECT owner, state, progress_block FROM rebuild_jobs WHERE id = ?1", [job], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()
        .map_err(db_err)?;
    match row {
        Some((o, state, progress)) if o == owner && state == "running" => Ok(progress),
        _ => Err(StoreError::LeaseLost),
    }
}

pub(super) fn step(c: &mut Connection, s: &RebuildStep) -> Result<(), StoreError> {
    let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(db_err)?;
    check_lease(&tx, s.job, &s.owner)?;
    tx.execute(
        "INSERT INTO rebuild_chunks (job, upto_block, data) VALUES (?1, ?2, ?3)",
        params![s.job, s.upto_block, s.chunk],
    )
    .map_err(db_err)?;
    tx.execute(
        "UPDATE rebuild_jobs SET progress_block = ?2, events_read = events_read + ?3,
             events_skipped = events_skipped + ?4, updated_ms = ?5, lease_until_ms = ?6 WHERE id = ?1",
        params![s.job, s.upto_block, s.events, s.skipped, s.now_ms, s.now_ms + s.lease_ms],
    )
    .map_err(db_err)?;
    tx.commit().map_err(db_err)
}

pub(super) fn chunks(c: &Connection, job: i64) -> Result<Vec<Vec<u8>>, StoreError> {
    let mut s =
        c.prepare_cached("SELECT data FROM rebuild_chunks WHERE job = ?1 ORDER BY upto_block").map_err(db_err)?;
    let rows = s.query_map([job], |r| r.get(0)).map_err(db_err)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
}

pub(super) fn jobs(c: &Connection, limit: u32) -> Result<Vec<RebuildJob>, StoreError> {
    let mut s = c
        .prepare_cached(&format!("SELECT {JOB_COLUMNS} FROM rebuild_jobs ORDER BY id DESC LIMIT ?1"))
        .map_err(db_err)?;
    let rows = s.query_map([limit], job_from_row).map_err(db_err)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
}

/// Ids and keys of every series of `metrics`.
fn metric_series(tx: &Connection, metrics: &[String]) -> Result<Vec<(i64, SeriesKey)>, StoreError> {
    let mut out = Vec::new();
    let mut s = tx.prepare_cached("SELECT id, dim, val FROM series WHERE metric = ?1").map_err(db_err)?;
    for m in metrics {
        let rows = s
            .query_map([m], |r| {
                Ok((r.get::<_, i64>(0)?, SeriesKey::new(m, &r.get::<_, String>(1)?, &r.get::<_, String>(2)?)))
            })
            .map_err(db_err)?;
        for row in rows {
            out.push(row.map_err(db_err)?);
        }
    }
    Ok(out)
}

/// The swap: one write transaction, so no commit of another writer (this process's or another's)
/// runs between reading the tail and replacing the rows.
pub(super) fn swap(
    w: &mut WriterConn,
    job: &RebuildJob,
    owner: &str,
    defs: &[MetricRecord],
    fold: FoldTail,
) -> Result<Swapped, StoreError> {
    let WriterConn { conn, dims, .. } = w;
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(db_err)?;
    let progress = check_lease(&tx, job.id, owner)?;
    // Every recent row into `rollups`, so the rows to replace are all in one table.
    merge_rows(&tx, i64::MIN, i64::MAX, Kept::ALL)?;
    let tail = raw_blocks_after(&tx, progress, i64::MAX, u32::MAX)?;
    let rebuilt = fold(tail).map_err(StoreError::Rejected)?;
    let series = metric_series(&tx, &job.spec.metrics)?;
    let from = job.spec.from_s.unwrap_or(i64::MIN);
    let kept = kept_days(&tx, &series, job.spec.from_s)?;
    let mut deleted = 0u64;
    {
        let mut del =
            tx.prepare_cached("DELETE FROM rollups WHERE series = ?1 AND (res = 0 OR bucket >= ?2)").map_err(db_err)?;
        for (id, _) in &series {
            deleted += del.execute(params![id, from]).map_err(db_err)? as u64;
        }
    }
    let batch = swap_batch(rebuilt.rows, kept, rebuilt.dims);
    let (ids, _) = series_ids(&tx, &FastMap::default(), batch.rollups.series())?;
    // Straight into `rollups` (just emptied of these rows), not through the recent-row tables the
    // background merge would have to move them out of.
    add_to_rollups(&tx, batch.rollups.rows().iter().map(|r| (ids[r.series as usize], r.res, r.start, &r.agg)))?;
    // The rebuilt days may hold minutes (and carried seconds) past their retention: the next
    // prune reads every day.
    tx.execute("DELETE FROM meta WHERE key IN ('minutes_pruned_before', 'seconds_pruned_before')", [])
        .map_err(db_err)?;
    dim_values(&tx, dims, &batch)?;
    finish(&tx, job.id, defs)?;
    tx.execute("UPDATE meta SET value = value + 1 WHERE key = 'commit_seq'", []).map_err(db_err)?;
    tx.commit().map_err(db_err)?;
    Ok(Swapped { rows_deleted: deleted, rows_written: batch.rollups.len() as u64, tail_events: rebuilt.events })
}

/// Per series, the merged day buckets before `from`: what its all-time bucket keeps.
fn kept_days(
    tx: &Connection,
    series: &[(i64, SeriesKey)],
    from: Option<i64>,
) -> Result<Vec<(SeriesKey, Agg)>, StoreError> {
    let Some(from) = from else { return Ok(Vec::new()) };
    let mut s = tx
        .prepare_cached("SELECT bucket, agg FROM rollups WHERE series = ?1 AND res = ?2 AND bucket < ?3")
        .map_err(db_err)?;
    let mut out = Vec::new();
    for (id, key) in series {
        let mut all = Agg::default();
        let mut rows = s.query(params![id, PACK_RES, from]).map_err(db_err)?;
        while let Some(r) = rows.next().map_err(db_err)? {
            let day: i64 = r.get(0).map_err(db_err)?;
            let blob = r.get_ref(1).and_then(|v| v.as_blob().map_err(Into::into)).map_err(db_err)?;
            buckets_in(blob, day, Resolution::Day, i64::MIN, i64::MAX, &mut |_, a| all.merge(&a)).map_err(db_err)?;
        }
        if all.count > 0 {
            out.push((key.clone(), all));
        }
    }
    Ok(out)
}

fn finish(tx: &Transaction<'_>, job: i64, defs: &[MetricRecord]) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE rebuild_jobs SET state = 'done', updated_ms = ?2 WHERE id = ?1",
        params![job, crate::clock::now_ms()],
    )
    .map_err(db_err)?;
    tx.execute("DELETE FROM rebuild_chunks WHERE job = ?1", [job]).map_err(db_err)?;
    put_records(tx, defs)
}

pub(super) fn metric_records(c: &Connection) -> Result<Vec<MetricRecord>, StoreError> {
    let mut s = c
        .prepare_cached("SELECT name, fingerprint, state, updated_ms FROM metric_defs ORDER BY name")
        .map_err(db_err)?;
    let rows = s
        .query_map([], |r| {
            Ok(MetricRecord { name: r.get(0)?, fingerprint: r.get(1)?, state: r.get(2)?, updated_ms: r.get(3)? })
        })
        .map_err(db_err)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
}

pub(super) fn put_records(tx: &Connection, records: &[MetricRecord]) -> Result<(), StoreError> {
    let mut s = tx
        .prepare_cached(
            "INSERT INTO metric_defs (name, fingerprint, state, updated_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (name) DO UPDATE SET fingerprint = excluded.fingerprint, state = excluded.state,
                 updated_ms = excluded.updated_ms",
        )
        .map_err(db_err)?;
    for r in records {
        s.execute(params![r.name, r.fingerprint, r.state, r.updated_ms]).map_err(db_err)?;
    }
    Ok(())
}

pub(super) fn drop_metrics(c: &mut Connection, names: &[String]) -> Result<u64, StoreError> {
    let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(db_err)?;
    let series = metric_series(&tx, names)?;
    let mut n = 0u64;
    for table in ["rollups", "rollup_deltas", "rollup_seconds"] {
        let mut del = tx.prepare(&format!("DELETE FROM {table} WHERE series = ?1")).map_err(db_err)?;
        for (id, _) in &series {
            n += del.execute([id]).map_err(db_err)? as u64;
        }
    }
    let mut del = tx.prepare_cached("DELETE FROM metric_defs WHERE name = ?1").map_err(db_err)?;
    for name in names {
        del.execute([name]).map_err(db_err)?;
    }
    drop(del);
    tx.commit().map_err(db_err)?;
    Ok(n)
}

pub(super) fn dead_letters_after(c: &Connection, after: i64, limit: u32) -> Result<Vec<StoredDeadLetter>, StoreError> {
    let mut s = c
        .prepare_cached(
            "SELECT id, received_ms, source, reason, raw, topic, partition, \"offset\"
             FROM dead_letters WHERE id > ?1 ORDER BY id LIMIT ?2",
        )
        .map_err(db_err)?;
    let rows = s
        .query_map(params![after, limit], |r| Ok(StoredDeadLetter { id: r.get(0)?, letter: letter_from_row(r)? }))
        .map_err(db_err)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
}
