//! Rebuild jobs, their chunks and swap, metric definitions, and the reads a replay makes.

use deadpool_postgres::{Client, Transaction};
use tokio_postgres::Row;

use super::error::pg_err;
use super::read::{agg_from_row, letter_from_row, raw_block_from_row, res_code};
use super::write::{Rows, dim_values, rollups};
use crate::rollup::{Resolution, SeriesKey};
use crate::storage::rebuild::{Claim, FoldTail, MetricRecord, RebuildJob, StoredDeadLetter, Swapped, swap_batch};
use crate::storage::{ClaimRequest, RawBlock, RebuildStep, StoreError};

/// Advisory lock key (per database): one claim at a time, so one rebuild runs at a time.
const CLAIM_LOCK: i64 = 0x6a65_7473_7472_6d03;

const JOB_COLUMNS: &str = "id, spec, state, owner, lease_until_ms, started_ms, updated_ms, progress_block, \
                           target_block, events_read, events_skipped";

fn job_from_row(r: &Row) -> Result<RebuildJob, StoreError> {
    let spec: String = r.try_get(1).map_err(pg_err)?;
    Ok(RebuildJob {
        id: r.try_get(0).map_err(pg_err)?,
        spec: serde_json::from_str(&spec).map_err(StoreError::backend)?,
        state: r.try_get(2).map_err(pg_err)?,
        owner: r.try_get(3).map_err(pg_err)?,
        lease_until_ms: r.try_get(4).map_err(pg_err)?,
        started_ms: r.try_get(5).map_err(pg_err)?,
        updated_ms: r.try_get(6).map_err(pg_err)?,
        progress_block: r.try_get(7).map_err(pg_err)?,
        target_block: r.try_get(8).map_err(pg_err)?,
        events_read: r.try_get(9).map_err(pg_err)?,
        events_skipped: r.try_get(10).map_err(pg_err)?,
    })
}

/// Raw block ids are taken when a row is inserted, not when it commits: a writer may commit id
/// 10 after another committed 11. Taking a lock that waits for every transaction inserting raw
/// blocks (and briefly holds new ones off) makes the max id a clean watermark.
pub(super) async fn raw_watermark(client: &mut Client) -> Result<i64, StoreError> {
    let tx = client.transaction().await.map_err(pg_err)?;
    tx.batch_execute("LOCK TABLE raw_blocks IN SHARE MODE").await.map_err(pg_err)?;
    let max: i64 = tx.query_one("SELECT coalesce(max(id), 0) FROM raw_blocks", &[]).await.map_err(pg_err)?.get(0);
    tx.commit().await.map_err(pg_err)?;
    Ok(max)
}

const RAW_AFTER: &str = "SELECT id, name, min_time_ms, max_time_ms, count, data FROM raw_blocks
                         WHERE id > $1 AND id <= $2 ORDER BY id LIMIT $3";

pub(super) async fn raw_blocks_after(
    client: &Client,
    after: i64,
    upto: i64,
    limit: u32,
) -> Result<Vec<(i64, RawBlock)>, StoreError> {
    let rows = client.query(RAW_AFTER, &[&after, &upto, &i64::from(limit)]).await.map_err(pg_err)?;
    rows.iter().map(raw_block_from_row).collect()
}

pub(super) async fn raw_pruned_before(client: &Client) -> Result<Option<i64>, StoreError> {
    let row =
        client.query_opt("SELECT value FROM meta WHERE key = 'raw_pruned_before_ms'", &[]).await.map_err(pg_err)?;
    Ok(row.map(|r| r.get(0)))
}

pub(super) async fn claim(client: &mut Client, req: &ClaimRequest) -> Result<Claim, StoreError> {
    let tx = client.transaction().await.map_err(pg_err)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&CLAIM_LOCK]).await.map_err(pg_err)?;
    let lease_until = req.now_ms + req.lease_ms;
    let running = tx
        .query_opt(&format!("SELECT {JOB_COLUMNS} FROM rebuild_jobs WHERE state = 'running'"), &[])
        .await
        .map_err(pg_err)?;
    if let Some(job) = running.as_ref().map(job_from_row).transpose()? {
        let free = job.owner == req.owner || job.lease_until_ms < req.now_ms || req.takeover;
        if !free {
            return Ok(Claim::Busy(job));
        }
        if job.spec == req.spec {
            tx.execute(
                "UPDATE rebuild_jobs SET owner = $2, lease_until_ms = $3, updated_ms = $4 WHERE id = $1",
                &[&job.id, &req.owner, &lease_until, &req.now_ms],
            )
            .await
            .map_err(pg_err)?;
            tx.commit().await.map_err(pg_err)?;
            return Ok(Claim::Held(RebuildJob { owner: req.owner.clone(), lease_until_ms: lease_until, ..job }));
        }
        tx.execute("UPDATE rebuild_jobs SET state = 'abandoned' WHERE id = $1 AND state = 'running'", &[&job.id])
            .await
            .map_err(pg_err)?;
        tx.execute("DELETE FROM rebuild_chunks WHERE job = $1", &[&job.id]).await.map_err(pg_err)?;
    }
    let spec = serde_json::to_string(&req.spec).map_err(StoreError::backend)?;
    let row = tx
        .query_one(
            &format!(
                "INSERT INTO rebuild_jobs (spec, state, owner, lease_until_ms, started_ms, updated_ms, progress_block,
                                           target_block, events_read, events_skipped)
                 VALUES ($1, 'running', $2, $3, $4, $4, 0, $5, 0, 0) RETURNING {JOB_COLUMNS}"
            ),
            &[&spec, &req.owner, &lease_until, &req.now_ms, &req.target_block],
        )
        .await
        .map_err(pg_err)?;
    let job = job_from_row(&row)?;
    tx.commit().await.map_err(pg_err)?;
    Ok(Claim::Held(job))
}

/// Checks (and locks) `owner`'s lease of `job`; returns the job's progress.
async fn check_lease(tx: &Transaction<'_>, job: i64, owner: &str) -> Result<i64, StoreError> {
    let row = tx
        .query_opt("SELECT owner, state, progress_block FROM rebuild_jobs WHERE id = $1 FOR UPDATE", &[&job])
        .await
        .map_err(pg_err)?;
    match row {
        Some(r) if r.get::<_, String>(0) == owner && r.get::<_, String>(1) == "running" => Ok(r.get(2)),
        _ => Err(StoreError::LeaseLost),
    }
}

pub(super) async fn step(client: &mut Client, s: &RebuildStep) -> Result<(), StoreError> {
    let tx = client.transaction().await.map_err(pg_err)?;
    check_lease(&tx, s.job, &s.owner).await?;
    tx.execute(
        "INSERT INTO rebuild_chunks (job, upto_block, data) VALUES ($1, $2, $3)",
        &[&s.job, &s.upto_block, &s.chunk],
    )
    .await
    .map_err(pg_err)?;
    tx.execute(
        "UPDATE rebuild_jobs SET progress_block = $2, events_read = events_read + $3,
             events_skipped = events_skipped + $4, updated_ms = $5, lease_until_ms = $6 WHERE id = $1",
        &[&s.job, &s.upto_block, &s.events, &s.skipped, &s.now_ms, &(s.now_ms + s.lease_ms)],
    )
    .await
    .map_err(pg_err)?;
    tx.commit().await.map_err(pg_err)
}

pub(super) async fn chunks(client: &Client, job: i64) -> Result<Vec<Vec<u8>>, StoreError> {
    let rows = client
        .query("SELECT data FROM rebuild_chunks WHERE job = $1 ORDER BY upto_block", &[&job])
        .await
        .map_err(pg_err)?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

pub(super) async fn jobs(client: &Client, limit: u32) -> Result<Vec<RebuildJob>, StoreError> {
    let rows = client
        .query(&format!("SELECT {JOB_COLUMNS} FROM rebuild_jobs ORDER BY id DESC LIMIT $1"), &[&i64::from(limit)])
        .await
        .map_err(pg_err)?;
    rows.iter().map(job_from_row).collect()
}

/// The swap, in one transaction that holds writers off: they upsert rollups before they insert
/// raw blocks (the global lock order), so locking `rollups` and then `raw_blocks` waits for the
/// ones in flight, and the tail read then is every raw block committed after the last step.
pub(super) async fn swap(
    client: &mut Client,
    job: &RebuildJob,
    owner: &str,
    defs: &[MetricRecord],
    fold: FoldTail,
) -> Result<Swapped, StoreError> {
    let tx = client.transaction().await.map_err(pg_err)?;
    tx.batch_execute("LOCK TABLE rollups IN SHARE ROW EXCLUSIVE MODE; LOCK TABLE raw_blocks IN EXCLUSIVE MODE")
        .await
        .map_err(pg_err)?;
    let progress = check_lease(&tx, job.id, owner).await?;
    let rows = tx.query(RAW_AFTER, &[&progress, &i64::MAX, &i64::MAX]).await.map_err(pg_err)?;
    let tail = rows.iter().map(raw_block_from_row).collect::<Result<Vec<_>, _>>()?;
    let rebuilt = fold(tail).map_err(StoreError::Rejected)?;
    let metrics = &job.spec.metrics;
    let from = job.spec.from_s.unwrap_or(i64::MIN);
    let kept = match job.spec.from_s {
        None => Vec::new(),
        Some(from) => tx
            .query(
                "SELECT metric, dim, val, sum(count)::int8, sum(sum), min(min), max(max) FROM rollups
                 WHERE metric = ANY($1) AND res = $2 AND bucket < $3 GROUP BY metric, dim, val",
                &[metrics, &res_code(Resolution::Day), &from],
            )
            .await
            .map_err(pg_err)?
            .iter()
            .map(|r| Ok((SeriesKey::new(r.get(0), r.get(1), r.get(2)), agg_from_row(r, 3)?)))
            .collect::<Result<Vec<_>, StoreError>>()?,
    };
    let deleted = tx
        .execute("DELETE FROM rollups WHERE metric = ANY($1) AND (res = 0 OR bucket >= $2)", &[metrics, &from])
        .await
        .map_err(pg_err)?;
    let batch = swap_batch(rebuilt.rows, kept, rebuilt.dims);
    // The writers' lock order (see `write::apply`).
    for part in [Rows::Spread, Rows::Shared] {
        rollups(&tx, &batch, part).await?;
        dim_values(&tx, &batch, part).await?;
    }
    tx.execute(
        "UPDATE rebuild_jobs SET state = 'done', updated_ms = $2 WHERE id = $1",
        &[&job.id, &crate::clock::now_ms()],
    )
    .await
    .map_err(pg_err)?;
    tx.execute("DELETE FROM rebuild_chunks WHERE job = $1", &[&job.id]).await.map_err(pg_err)?;
    put_records(&tx, defs).await?;
    // Other instances' caches learn of the swap at once (see `listen`).
    tx.execute("SELECT pg_notify($1, 'swap')", &[&super::listen::CHANNEL]).await.map_err(pg_err)?;
    tx.commit().await.map_err(pg_err)?;
    Ok(Swapped { rows_deleted: deleted, rows_written: batch.rollups.len() as u64, tail_events: rebuilt.events })
}

pub(super) async fn metric_records(client: &Client) -> Result<Vec<MetricRecord>, StoreError> {
    let rows = client
        .query("SELECT name, fingerprint, state, updated_ms FROM metric_defs ORDER BY name", &[])
        .await
        .map_err(pg_err)?;
    Ok(rows
        .iter()
        .map(|r| MetricRecord { name: r.get(0), fingerprint: r.get(1), state: r.get(2), updated_ms: r.get(3) })
        .collect())
}

pub(super) async fn put_records(tx: &Transaction<'_>, records: &[MetricRecord]) -> Result<(), StoreError> {
    for r in records {
        tx.execute(
            "INSERT INTO metric_defs (name, fingerprint, state, updated_ms) VALUES ($1, $2, $3, $4)
             ON CONFLICT (name) DO UPDATE SET fingerprint = EXCLUDED.fingerprint, state = EXCLUDED.state,
                 updated_ms = EXCLUDED.updated_ms",
            &[&r.name, &r.fingerprint, &r.state, &r.updated_ms],
        )
        .await
        .map_err(pg_err)?;
    }
    Ok(())
}

pub(super) async fn drop_metrics(client: &mut Client, names: &[String]) -> Result<u64, StoreError> {
    let tx = client.transaction().await.map_err(pg_err)?;
    let n = tx.execute("DELETE FROM rollups WHERE metric = ANY($1)", &[&names]).await.map_err(pg_err)?;
    tx.execute("DELETE FROM metric_defs WHERE name = ANY($1)", &[&names]).await.map_err(pg_err)?;
    tx.commit().await.map_err(pg_err)?;
    Ok(n)
}

pub(super) async fn dead_letters_after(
    client: &Client,
    after: i64,
    limit: u32,
) -> Result<Vec<StoredDeadLetter>, StoreError> {
    let rows = client
        .query(
            r#"SELECT id, received_ms, source, reason, raw, topic, partition, "offset"
               FROM dead_letters WHERE id > $1 ORDER BY id LIMIT $2"#,
            &[&after, &i64::from(limit)],
        )
        .await
        .map_err(pg_err)?;
    rows.iter()
        .map(|r| Ok(StoredDeadLetter { id: r.try_get(0).map_err(pg_err)?, letter: letter_from_row(r)? }))
        .collect()
}
