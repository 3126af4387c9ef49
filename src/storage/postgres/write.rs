//! Writes: a commit applies a batch table by table in one global lock order; token changes;
//! retention.

use deadpool_postgres::{Client, Transaction};
use tokio_postgres::error::SqlState;

use super::error::pg_err;
use super::read::res_code;
use crate::config::EVENT_NAME_DIMENSION;
use crate::rollup::Resolution;
use crate::storage::{OffsetAdvance, PruneBefore, Pruned, StoreError, TokenRecord, WriteBatch};

/// Advisory lock key (per database): one instance prunes at a time.
const PRUNE_LOCK: i64 = 0x6a65_7473_7472_6d02;

/// Rows per array statement: bounds the size of one message, not the batch.
const CHUNK: usize = 5_000;
/// Attempts for a commit the server aborted as a deadlock or serialisation failure.
const COMMIT_ATTEMPTS: u32 = 5;

const UPSERT_ROLLUPS: &str = "
INSERT INTO rollups AS r (metric, dim, val, res, bucket, count, sum, min, max)
SELECT metric, dim, val, res, bucket, count, sum, min, max
FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int4[], $5::int8[], $6::int8[],
            $7::numeric[], $8::numeric[], $9::numeric[])
     WITH ORDINALITY AS u(metric, dim, val, res, bucket, count, sum, min, max, ord)
ORDER BY ord
ON CONFLICT (metric, dim, val, res, bucket) DO UPDATE SET
    count = r.count + EXCLUDED.count,
    sum = r.sum + EXCLUDED.sum,
    min = LEAST(r.min, EXCLUDED.min),
    max = GREATEST(r.max, EXCLUDED.max)";

const INSERT_DIMS: &str = "
INSERT INTO dim_values AS d (dim, val, first_seen, label)
SELECT dim, val, first_seen, label FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::text[])
     WITH ORDINALITY AS u(dim, val, first_seen, label, ord)
ORDER BY ord
ON CONFLICT (dim, val) DO UPDATE SET label = EXCLUDED.label
    WHERE EXCLUDED.label IS NOT NULL AND EXCLUDED.label IS DISTINCT FROM d.label";

const INSERT_RAW: &str = "
INSERT INTO raw_blocks (name, min_time_ms, max_time_ms, count, data)
SELECT name, min_t, max_t, count, data
FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::int8[], $5::bytea[])
     WITH ORDINALITY AS u(name, min_t, max_t, count, data, ord)
ORDER BY ord";

const INSERT_DEAD: &str = r#"
INSERT INTO dead_letters (received_ms, source, reason, raw, topic, partition, "offset")
SELECT received_ms, source, reason, raw, topic, partition, off
FROM UNNEST($1::int8[], $2::text[], $3::text[], $4::bytea[], $5::text[], $6::int4[], $7::int8[])
     WITH ORDINALITY AS u(received_ms, source, reason, raw, topic, partition, off, ord)
ORDER BY ord"#;

/// A commit's number among this process's commits (see migration 4).
#[derive(Debug, Clone, Copy)]
pub(super) struct Position {
    pub(super) writer: i64,
    pub(super) seq: u64,
}

/// Puts a batch's offsets and dimension values in the lock order every writer uses, each key
/// once per statement (an `ON CONFLICT DO UPDATE` cannot touch one row twice). Rollup rows come
/// in that order already ([`RollupRows`]).
fn normalise(batch: &mut WriteBatch) {
    // Stable: two advances of one partition in one batch stay chained in order.
    batch.offsets.sort_by(|a, b| (&a.source, a.partition).cmp(&(&b.source, b.partition)));
    // Stable, keeping the first occurrence: SQLite's `INSERT OR IGNORE` keeps the first too.
    batch.dims.sort_by(|a, b| (&*a.dim, &a.value).cmp(&(&*b.dim, &b.value)));
    batch.dims.dedup_by(|b, a| {
        let same = a.dim == b.dim && a.value == b.value;
        if same && a.label.is_none() {
            a.label = b.label.take();
        }
        same
    });
}

async fn fence(tx: &Transaction<'_>, o: &OffsetAdvance) -> Result<(), StoreError> {
    let stored: Option<i64> = match o.expected {
        None => {
            // Insert-if-absent: a concurrent first-time writer's uncommitted row makes this wait
            // for its outcome, so exactly one of them inserts.
            let st = tx
                .prepare_cached(
                    "INSERT INTO offsets (source, partition, next_offset) VALUES ($1, $2, $3)
                     ON CONFLICT (source, partition) DO NOTHING",
                )
                .await
                .map_err(pg_err)?;
            if tx.execute(&st, &[&o.source, &o.partition, &o.next]).await.map_err(pg_err)? == 1 {
                return Ok(());
            }
            let st = tx
                .prepare_cached("SELECT next_offset FROM offsets WHERE source = $1 AND partition = $2")
                .await
                .map_err(pg_err)?;
            tx.query_opt(&st, &[&o.source, &o.partition]).await.map_err(pg_err)?.map(|r| r.get(0))
        }
        Some(expected) => {
            // The row lock is held to commit: a second writer with the same `expected` waits, then
            // reads the advanced offset and is fenced.
            let st = tx
                .prepare_cached("SELECT next_offset FROM offsets WHERE source = $1 AND partition = $2 FOR UPDATE")
                .await
                .map_err(pg_err)?;
            let stored = tx.query_opt(&st, &[&o.source, &o.partition]).await.map_err(pg_err)?.map(|r| r.get(0));
            if stored == Some(expected) {
                let st = tx
                    .prepare_cached("UPDATE offsets SET next_offset = $3 WHERE source = $1 AND partition = $2")
                    .await
                    .map_err(pg_err)?;
                tx.execute(&st, &[&o.source, &o.partition, &o.next]).await.map_err(pg_err)?;
                return Ok(());
            }
            stored
        }
    };
    Err(StoreError::Fenced { source_name: o.source.clone(), partition: o.partition, stored, expected: o.expected })
}

/// Applies `batch` in one transaction as this process's commit number `pos`, retrying a
/// transaction the server aborted as a deadlock or serialisation failure (it was rolled back, so
/// a retry cannot double-count).
pub(super) async fn commit(client: &mut Client, mut batch: WriteBatch, pos: Position) -> Result<(), StoreError> {
    normalise(&mut batch);
    let mut attempt = 1;
    loop {
        let tx = client.transaction().await.map_err(pg_err)?;
        let result = match apply(&tx, &batch, pos).await {
            Ok(()) => tx.commit().await.map_err(pg_err),
            Err(e) => {
                // Dropping would roll back too, but without waiting; say it explicitly.
                let _ = tx.rollback().await;
                Err(e)
            }
        };
        match result {
            Err(e) if attempt < COMMIT_ATTEMPTS && is_retryable(&e) => {
                tracing::warn!(error = %e, attempt, "commit aborted by the server; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(10 * u64::from(attempt))).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// A deadlock or serialisation failure: the server rolled the transaction back; run it again.
fn is_retryable(e: &StoreError) -> bool {
    let StoreError::Unavailable(a) = e else { return false };
    a.downcast_ref::<tokio_postgres::Error>()
        .and_then(|e| e.code())
        .is_some_and(|c| *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE)
}

/// The tables in the global lock order: position, keys, offsets, the rollups (the table even
/// when the batch has no row of this part) and dimension values of [`Rows::Spread`], the
/// append-only raw blocks and dead letters, replayed dead letters, and
/// last the rows of [`Rows::Shared`], which every writer's commits touch: a second writer then
/// waits for the first one's commit only once it has written everything else.
async fn apply(tx: &Transaction<'_>, batch: &WriteBatch, pos: Position) -> Result<(), StoreError> {
    position(tx, pos).await?;
    idempotency_keys(tx, batch).await?;
    for o in &batch.offsets {
        fence(tx, o).await?;
    }
    rollups(tx, batch, Rows::Spread).await?;
    dim_values(tx, batch, Rows::Spread).await?;
    if !batch.raw_blocks.is_empty() && !batch.rollups.iter().any(|(k, _)| Rows::of_dim(&k.dim) == Rows::Spread) {
        // A rebuild's swap locks `rollups`, then `raw_blocks`: a batch with no spread row (events
        // only the count by name follows) takes `rollups` here, not after its raw blocks, or the
        // two wait on each other and PostgreSQL fails the swap.
        tx.batch_execute("LOCK TABLE rollups IN ROW EXCLUSIVE MODE").await.map_err(pg_err)?;
    }
    raw_blocks(tx, batch).await?;
    dead_letters(tx, batch).await?;
    replayed(tx, batch).await?;
    rollups(tx, batch, Rows::Shared).await?;
    dim_values(tx, batch, Rows::Shared).await
}

/// Which rows of a batch a statement writes. Each part keeps the key order, and every writer
/// writes the spread part before the shared one, so the lock order stays one total order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Rows {
    /// Series of a dimension value (a product, a category): writers fed by different partitions
    /// or requests mostly touch different ones.
    Spread,
    /// A metric's overall series and its series by event name: nearly every commit of every
    /// writer adds to their current buckets, so the row locks they take are held to the commit.
    Shared,
}

impl Rows {
    fn of_dim(dim: &str) -> Self {
        if dim.is_empty() || dim == EVENT_NAME_DIMENSION { Self::Shared } else { Self::Spread }
    }
}

/// Removes the dead letters the batch replays; each must still be there (exactly once).
async fn replayed(tx: &Transaction<'_>, batch: &WriteBatch) -> Result<(), StoreError> {
    if batch.replayed.is_empty() {
        return Ok(());
    }
    let n = tx.execute("DELETE FROM dead_letters WHERE id = ANY($1)", &[&batch.replayed]).await.map_err(pg_err)?;
    match batch.replayed.len() as u64 - n {
        0 => Ok(()),
        gone => Err(StoreError::Replayed(gone as usize)),
    }
}

async fn position(tx: &Transaction<'_>, pos: Position) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO writer_positions (writer, seq, at_ms) VALUES ($1, $2, $3)
         ON CONFLICT (writer) DO UPDATE SET seq = EXCLUDED.seq, at_ms = EXCLUDED.at_ms",
        &[&pos.writer, &(pos.seq as i64), &crate::clock::now_ms()],
    )
    .await
    .map_err(pg_err)?;
    Ok(())
}

async fn idempotency_keys(tx: &Transaction<'_>, batch: &WriteBatch) -> Result<(), StoreError> {
    for k in &batch.idempotency {
        let fresh = tx
            .execute(
                "INSERT INTO idempotency_keys (scope, key, answer, at_ms, fingerprint) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT DO NOTHING",
                &[&k.scope, &k.key, &k.answer, &k.at_ms, &k.fingerprint],
            )
            .await
            .map_err(pg_err)?;
        if fresh == 0 {
            return Err(StoreError::Duplicate { scope: k.scope.clone(), key: k.key.clone() });
        }
    }
    Ok(())
}

pub(super) async fn rollups(tx: &Transaction<'_>, batch: &WriteBatch, part: Rows) -> Result<(), StoreError> {
    let rows: Vec<_> = batch.rollups.iter().filter(|(k, _)| Rows::of_dim(&k.dim) == part).collect();
    if rows.is_empty() {
        return Ok(());
    }
    let st = tx.prepare_cached(UPSERT_ROLLUPS).await.map_err(pg_err)?;
    for chunk in rows.chunks(CHUNK) {
        let mut metric = Vec::with_capacity(chunk.len());
        let mut dim = Vec::with_capacity(chunk.len());
        let mut val = Vec::with_capacity(chunk.len());
        let mut res = Vec::with_capacity(chunk.len());
        let mut bucket = Vec::with_capacity(chunk.len());
        let mut count = Vec::with_capacity(chunk.len());
        let mut sum = Vec::with_capacity(chunk.len());
        let mut min = Vec::with_capacity(chunk.len());
        let mut max = Vec::with_capacity(chunk.len());
        for (k, r) in chunk {
            metric.push(&*k.metric);
            dim.push(&*k.dim);
            val.push(k.value.as_str());
            res.push(res_code(r.res));
            bucket.push(r.start);
            count.push(r.agg.count);
            sum.push(r.agg.sum);
            min.push(r.agg.min);
            max.push(r.agg.max);
        }
        tx.execute(&st, &[&metric, &dim, &val, &res, &bucket, &count, &sum, &min, &max]).await.map_err(pg_err)?;
    }
    Ok(())
}

pub(super) async fn dim_values(tx: &Transaction<'_>, batch: &WriteBatch, part: Rows) -> Result<(), StoreError> {
    let dims: Vec<_> = batch.dims.iter().filter(|d| Rows::of_dim(&d.dim) == part).collect();
    if dims.is_empty() {
        return Ok(());
    }
    let st = tx.prepare_cached(INSERT_DIMS).await.map_err(pg_err)?;
    for chunk in dims.chunks(CHUNK) {
        let dim: Vec<&str> = chunk.iter().map(|d| &*d.dim).collect();
        let val: Vec<&str> = chunk.iter().map(|d| d.value.as_str()).collect();
        let first: Vec<i64> = chunk.iter().map(|d| d.first_seen).collect();
        let label: Vec<Option<&str>> = chunk.iter().map(|d| d.label.as_deref()).collect();
        tx.execute(&st, &[&dim, &val, &first, &label]).await.map_err(pg_err)?;
    }
    Ok(())
}

async fn raw_blocks(tx: &Transaction<'_>, batch: &WriteBatch) -> Result<(), StoreError> {
    if batch.raw_blocks.is_empty() {
        return Ok(());
    }
    let st = tx.prepare_cached(INSERT_RAW).await.map_err(pg_err)?;
    // Blocks are large (compressed NDJSON of a whole commit): a few per statement.
    for chunk in batch.raw_blocks.chunks(16) {
        let name: Vec<&str> = chunk.iter().map(|b| b.name.as_str()).collect();
        let min_t: Vec<i64> = chunk.iter().map(|b| b.min_time_ms).collect();
        let max_t: Vec<i64> = chunk.iter().map(|b| b.max_time_ms).collect();
        let count: Vec<i64> = chunk.iter().map(|b| b.count).collect();
        let data: Vec<&[u8]> = chunk.iter().map(|b| b.data.as_slice()).collect();
        tx.execute(&st, &[&name, &min_t, &max_t, &count, &data]).await.map_err(pg_err)?;
    }
    Ok(())
}

async fn dead_letters(tx: &Transaction<'_>, batch: &WriteBatch) -> Result<(), StoreError> {
    if batch.dead_letters.is_empty() {
        return Ok(());
    }
    let st = tx.prepare_cached(INSERT_DEAD).await.map_err(pg_err)?;
    for chunk in batch.dead_letters.chunks(CHUNK) {
        let received: Vec<i64> = chunk.iter().map(|d| d.received_ms).collect();
        let source: Vec<&str> = chunk.iter().map(|d| d.source.as_str()).collect();
        let reason: Vec<&str> = chunk.iter().map(|d| d.reason.as_str()).collect();
        let raw: Vec<&[u8]> = chunk.iter().map(|d| d.raw.as_slice()).collect();
        let topic: Vec<Option<&str>> = chunk.iter().map(|d| d.topic.as_deref()).collect();
        let partition: Vec<Option<i32>> = chunk.iter().map(|d| d.partition).collect();
        let offset: Vec<Option<i64>> = chunk.iter().map(|d| d.offset).collect();
        tx.execute(&st, &[&received, &source, &reason, &raw, &topic, &partition, &offset]).await.map_err(pg_err)?;
    }
    Ok(())
}

async fn bump_tokens_version(tx: &Transaction<'_>) -> Result<(), StoreError> {
    tx.execute("UPDATE meta SET value = value + 1 WHERE key = 'tokens_version'", &[]).await.map_err(pg_err)?;
    Ok(())
}

pub(super) async fn create_token(client: &mut Client, t: TokenRecord) -> Result<(), StoreError> {
    let tx = client.transaction().await.map_err(pg_err)?;
    // A revoked or expired token's name is free again (rotation: revoke, then create).
    tx.execute(
        "DELETE FROM tokens WHERE name = $1 AND (revoked_ms IS NOT NULL OR expires_ms <= $2)",
        &[&t.name, &t.created_ms],
    )
    .await
    .map_err(pg_err)?;
    let inserted = tx
        .execute(
            "INSERT INTO tokens (name, hash, scopes, created_ms, expires_ms) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (name) DO NOTHING",
            &[&t.name, &t.hash, &t.scopes, &t.created_ms, &t.expires_ms],
        )
        .await
        .map_err(pg_err)?;
    if inserted == 0 {
        let _ = tx.rollback().await;
        return Err(StoreError::TokenExists(t.name));
    }
    bump_tokens_version(&tx).await?;
    tx.commit().await.map_err(pg_err)
}

pub(super) async fn revoke_token(client: &mut Client, name: &str, now_ms: i64) -> Result<bool, StoreError> {
    let tx = client.transaction().await.map_err(pg_err)?;
    let n = tx
        .execute("UPDATE tokens SET revoked_ms = $2 WHERE name = $1 AND revoked_ms IS NULL", &[&name, &now_ms])
        .await
        .map_err(pg_err)?;
    bump_tokens_version(&tx).await?;
    tx.commit().await.map_err(pg_err)?;
    Ok(n > 0)
}

pub(super) async fn delete_token(client: &mut Client, name: &str) -> Result<bool, StoreError> {
    let tx = client.transaction().await.map_err(pg_err)?;
    let n = tx.execute("DELETE FROM tokens WHERE name = $1", &[&name]).await.map_err(pg_err)?;
    bump_tokens_version(&tx).await?;
    tx.commit().await.map_err(pg_err)?;
    Ok(n > 0)
}

/// Retention, by one instance at a time (`writer` is this process's, whose position row stays).
pub(super) async fn prune(client: &mut Client, writer: i64, b: PruneBefore) -> Result<Pruned, StoreError> {
    let tx = client.transaction().await.map_err(pg_err)?;
    // Every instance runs retention; one pass at a time is enough, the others skip theirs.
    let mine: bool = tx.query_one("SELECT pg_try_advisory_xact_lock($1)", &[&PRUNE_LOCK]).await.map_err(pg_err)?.get(0);
    if !mine {
        let _ = tx.rollback().await;
        return Ok(Pruned::default());
    }
    // In the order a rebuild's swap locks them (rollups, then raw blocks): deleting raw blocks
    // first and buckets after deadlocked a swap that came between the two (PostgreSQL broke the
    // cycle by failing the rebuild).
    tx.batch_execute("LOCK TABLE rollups, raw_blocks IN ROW EXCLUSIVE MODE").await.map_err(pg_err)?;
    let raw_blocks = tx.execute("DELETE FROM raw_blocks WHERE max_time_ms < $1", &[&b.raw_ms]).await.map_err(pg_err)?;
    if raw_blocks > 0 {
        // What a rebuild can no longer reach (see `Store::raw_pruned_before`).
        tx.execute(
            "INSERT INTO meta VALUES ('raw_pruned_before_ms', $1)
             ON CONFLICT (key) DO UPDATE SET value = GREATEST(meta.value, EXCLUDED.value)",
            &[&b.raw_ms],
        )
        .await
        .map_err(pg_err)?;
    }
    let dead_letters =
        tx.execute("DELETE FROM dead_letters WHERE received_ms < $1", &[&b.dead_letters_ms]).await.map_err(pg_err)?;
    tx.execute("DELETE FROM idempotency_keys WHERE at_ms < $1", &[&b.idempotency_keys_ms]).await.map_err(pg_err)?;
    // Positions of processes gone for a day (a running one rewrites its row at every commit).
    let gone = crate::clock::now_ms() - 86_400_000;
    tx.execute("DELETE FROM writer_positions WHERE at_ms < $1 AND writer <> $2", &[&gone, &writer])
        .await
        .map_err(pg_err)?;
    let mut buckets = 0;
    let cuts = [(Resolution::Second, b.second_buckets_s), (Resolution::Minute, b.minute_buckets_s)];
    for (res, before) in cuts.into_iter().filter_map(|(res, cut)| Some((res, cut?))) {
        // The primary key starts with the series, so this scans; it runs once a minute, and an
        // index on (res, bucket) would tax every upsert instead.
        buckets += tx
            .execute("DELETE FROM rollups WHERE res = $1 AND bucket < $2", &[&res_code(res), &before])
            .await
            .map_err(pg_err)?;
    }
    tx.commit().await.map_err(pg_err)?;
    Ok(Pruned { raw_blocks, dead_letters, buckets })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollup::DimRow;

    #[test]
    fn dimension_values_are_put_in_lock_order_each_once() {
        let mut b = WriteBatch {
            dims: [("y", 5), ("x", 7), ("y", 3)]
                .into_iter()
                .map(|(v, t)| DimRow { dim: "d".into(), value: v.into(), first_seen: t, label: None })
                .collect(),
            ..Default::default()
        };
        normalise(&mut b);
        let dims: Vec<_> = b.dims.iter().map(|d| (d.value.as_str(), d.first_seen)).collect();
        assert_eq!(dims, [("x", 7), ("y", 5)], "the first occurrence of a value is kept");
    }

    #[test]
    fn offsets_sort_stably_so_chained_advances_stay_in_order() {
        let adv = |p, e: Option<i64>, n| OffsetAdvance { source: "s".into(), partition: p, expected: e, next: n };
        let mut b = WriteBatch {
            offsets: vec![adv(1, None, 10), adv(2, None, 5), adv(1, Some(10), 20), adv(1, Some(20), 30)],
            ..Default::default()
        };
        normalise(&mut b);
        let order: Vec<_> = b.offsets.iter().map(|o| (o.partition, o.next)).collect();
        assert_eq!(order, [(1, 10), (1, 20), (1, 30), (2, 5)]);
    }
}
