//! Writes: one commit is one `IMMEDIATE` transaction applying a batch table by table, then the
//! commit's number; token changes.

use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::commits::OwnCommits;
use super::conn::{DimCache, WriterConn, db_err};
use super::decimal::{ADD_ROWS, upsert};
use crate::rollup::{FastMap, Resolution, SeriesKey};
use crate::storage::{CommitPos, StoreError, TokenRecord, WriteBatch};

/// Series ids the writer remembers; beyond this the cache starts over (it is only a cache).
const SERIES_CACHE: usize = 1 << 18;

/// Dimension values the writer remembers as stored; beyond this the cache starts over.
const DIMS_CACHE: usize = 1 << 18;

/// Series ids the writer has not cached yet, to cache once their transaction has committed.
pub(super) type FreshIds = Vec<(SeriesKey, i64)>;

/// Dimension values (and labels) a commit wrote to `dim_values`, to cache once it has committed.
pub(super) type FreshDims = Vec<(Arc<str>, String, Option<String>)>;

/// Applies `batch` in one transaction and numbers the commit; the caches learn what it added
/// only once it has committed (a rolled-back id must never be cached).
/// `own` learns the commit's number before it commits (see `commits`).
pub(super) fn commit(w: &mut WriterConn, batch: &WriteBatch, own: &OwnCommits) -> Result<CommitPos, StoreError> {
    let tx = w.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(db_err)?;
    // On error the dropped transaction rolls back.
    idempotency_keys(&tx, batch)?;
    offsets(&tx, batch)?;
    let (ids, fresh) = series_ids(&tx, &w.series, batch.rollups.series())?;
    rollups(&tx, &ids, batch)?;
    let fresh_dims = dim_values(&tx, &w.dims, batch)?;
    raw_blocks(&tx, batch)?;
    dead_letters(&tx, batch)?;
    replayed(&tx, batch)?;
    let pos: i64 = tx
        .prepare_cached("UPDATE meta SET value = value + 1 WHERE key = 'commit_seq' RETURNING value")
        .and_then(|mut st| st.query_row([], |r| r.get(0)))
        .map_err(db_err)?;
    let pos = pos as u64;
    own.took(pos);
    if let Err(e) = tx.commit() {
        own.failed(pos);
        return Err(db_err(e));
    }
    if w.dims.values().map(FastMap::len).sum::<usize>() + fresh_dims.len() > DIMS_CACHE {
        w.dims.clear();
    }
    for (d, v, label) in fresh_dims {
        w.dims.entry(d).or_default().insert(v, label);
    }
    if w.series.len() + fresh.len() > SERIES_CACHE {
        w.series.clear();
    }
    w.series.extend(fresh);
    Ok(pos)
}

/// Each key once per scope, ever (within retention): a key committed before refuses the batch.
fn idempotency_keys(tx: &Transaction<'_>, batch: &WriteBatch) -> Result<(), StoreError> {
    for k in &batch.idempotency {
        let fresh = tx
            .prepare_cached(
                "INSERT INTO idempotency_keys (scope, key, answer, at_ms, fingerprint) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT DO NOTHING",
            )
            .and_then(|mut st| st.execute(params![k.scope, k.key, k.answer, k.at_ms, k.fingerprint]))
            .map_err(db_err)?;
        if fresh == 0 {
            return Err(StoreError::Duplicate { scope: k.scope.clone(), key: k.key.clone() });
        }
    }
    Ok(())
}

/// Fenced offset advances: each partition's stored offset must be where the batch says it starts.
fn offsets(tx: &Transaction<'_>, batch: &WriteBatch) -> Result<(), StoreError> {
    for o in &batch.offsets {
        let stored: Option<i64> = tx
            .prepare_cached("SELECT next_offset FROM offsets WHERE source = ?1 AND partition = ?2")
            .and_then(|mut s| s.query_row(params![o.source, o.partition], |r| r.get(0)).optional())
            .map_err(db_err)?;
        if stored != o.expected {
            return Err(StoreError::Fenced {
                source_name: o.source.clone(),
                partition: o.partition,
                stored,
                expected: o.expected,
            });
        }
        tx.prepare_cached(
            "INSERT INTO offsets (source, partition, next_offset) VALUES (?1, ?2, ?3)
             ON CONFLICT (source, partition) DO UPDATE SET next_offset = excluded.next_offset",
        )
        .and_then(|mut s| s.execute(params![o.source, o.partition, o.next]))
        .map_err(db_err)?;
    }
    Ok(())
}

/// The store's id of each series (inserting new ones), and which of them are fresh.
pub(super) fn series_ids(
    tx: &Transaction<'_>,
    cache: &FastMap<SeriesKey, i64>,
    series: &[SeriesKey],
) -> Result<(Vec<i64>, FreshIds), StoreError> {
    let mut ids = Vec::with_capacity(series.len());
    let mut fresh = Vec::new();
    for s in series {
        if let Some(&id) = cache.get(s) {
            ids.push(id);
            continue;
        }
        tx.prepare_cached("INSERT INTO series (metric, dim, val) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING")
            .and_then(|mut st| st.execute(params![&*s.metric, &*s.dim, s.value]))
            .map_err(db_err)?;
        let id: i64 = tx
            .prepare_cached("SELECT id FROM series WHERE metric = ?1 AND dim = ?2 AND val = ?3")
            .and_then(|mut st| st.query_row(params![&*s.metric, &*s.dim, s.value], |r| r.get(0)))
            .map_err(db_err)?;
        ids.push(id);
        fresh.push((s.clone(), id));
    }
    Ok((ids, fresh))
}

/// An ingest batch (coarser buckets derived from its seconds) adds only its seconds, to
/// `rollup_seconds`; a batch of buckets given one by one goes to `rollup_deltas` as it is. The
/// background merge moves both into `rollups` (see `maintain`).
pub(super) fn rollups(tx: &Transaction<'_>, ids: &[i64], batch: &WriteBatch) -> Result<(), StoreError> {
    let rows = batch.rollups.rows();
    if batch.rollups.coarse_derived() {
        let mut up = tx
            .prepare_cached(
                "INSERT INTO rollup_seconds (series, bucket, agg) VALUES (?1, ?2, ?3)
                 ON CONFLICT (series, bucket) DO UPDATE SET agg = agg_merge(agg, excluded.agg)",
            )
            .map_err(db_err)?;
        for r in rows.iter().filter(|r| r.res == Resolution::Second) {
            upsert(&mut up, &[ids[r.series as usize], r.start], &r.agg)?;
        }
    } else {
        let mut up = tx
            .prepare_cached(&format!(
                "INSERT INTO rollup_deltas (series, res, bucket, agg) VALUES (?1, ?2, ?3, ?4) {ADD_ROWS}"
            ))
            .map_err(db_err)?;
        for r in rows {
            upsert(&mut up, &[ids[r.series as usize], r.res.seconds(), r.start], &r.agg)?;
        }
    }
    Ok(())
}

/// Dimension values not yet known to be stored with their label (values are never deleted, so
/// the cache only saves inserts and label updates).
pub(super) fn dim_values(tx: &Transaction<'_>, known: &DimCache, batch: &WriteBatch) -> Result<FreshDims, StoreError> {
    let mut dims = tx
        .prepare_cached(
            "INSERT INTO dim_values (dim, val, first_seen, label) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (dim, val) DO UPDATE SET label = excluded.label
             WHERE excluded.label IS NOT NULL AND excluded.label IS NOT label",
        )
        .map_err(db_err)?;
    let mut fresh = Vec::new();
    for d in &batch.dims {
        let stored = known.get(&d.dim).and_then(|k| k.get(&d.value));
        if stored.is_some_and(|l| d.label.is_none() || *l == d.label) {
            continue;
        }
        dims.execute(params![&*d.dim, d.value, d.first_seen, d.label]).map_err(db_err)?;
        fresh.push((d.dim.clone(), d.value.clone(), d.label.clone()));
    }
    Ok(fresh)
}

fn raw_blocks(tx: &Transaction<'_>, batch: &WriteBatch) -> Result<(), StoreError> {
    let mut raw = tx
        .prepare_cached(
            "INSERT INTO raw_blocks (name, min_time_ms, max_time_ms, count, data) VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .map_err(db_err)?;
    for b in &batch.raw_blocks {
        raw.execute(params![b.name, b.min_time_ms, b.max_time_ms, b.count, b.data]).map_err(db_err)?;
    }
    Ok(())
}

/// Removes the dead letters the batch replays; each must still be there (exactly once).
fn replayed(tx: &Transaction<'_>, batch: &WriteBatch) -> Result<(), StoreError> {
    let mut del = tx.prepare_cached("DELETE FROM dead_letters WHERE id = ?1").map_err(db_err)?;
    let mut gone = 0;
    for id in &batch.replayed {
        if del.execute([id]).map_err(db_err)? == 0 {
            gone += 1;
        }
    }
    if gone > 0 {
        return Err(StoreError::Replayed(gone));
    }
    Ok(())
}

fn dead_letters(tx: &Transaction<'_>, batch: &WriteBatch) -> Result<(), StoreError> {
    let mut dl = tx
        .prepare_cached(
            "INSERT INTO dead_letters (received_ms, source, reason, raw, topic, partition, \"offset\")
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .map_err(db_err)?;
    for d in &batch.dead_letters {
        dl.execute(params![d.received_ms, d.source, d.reason, d.raw, d.topic, d.partition, d.offset])
            .map_err(db_err)?;
    }
    Ok(())
}

pub(super) fn create_token(c: &mut Connection, t: &TokenRecord) -> Result<(), StoreError> {
    let tx = c.transaction().map_err(db_err)?;
    // A revoked or expired token's name is free again (rotation: revoke, then create).
    tx.execute(
        "DELETE FROM tokens WHERE name = ?1 AND (revoked_ms IS NOT NULL OR expires_ms <= ?2)",
        params![t.name, t.created_ms],
    )
    .map_err(db_err)?;
    let exists =
        tx.prepare("SELECT 1 FROM tokens WHERE name = ?1").and_then(|mut s| s.exists([&t.name])).map_err(db_err)?;
    if exists {
        return Err(StoreError::TokenExists(t.name.clone()));
    }
    tx.execute(
        "INSERT INTO tokens (name, hash, scopes, created_ms, expires_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![t.name, t.hash, t.scopes.join(","), t.created_ms, t.expires_ms],
    )
    .map_err(db_err)?;
    bump_tokens_version(&tx)?;
    tx.commit().map_err(db_err)
}

pub(super) fn revoke_token(c: &mut Connection, name: &str, now_ms: i64) -> Result<bool, StoreError> {
    let tx = c.transaction().map_err(db_err)?;
    let n = tx
        .execute("UPDATE tokens SET revoked_ms = ?2 WHERE name = ?1 AND revoked_ms IS NULL", params![name, now_ms])
        .map_err(db_err)?;
    bump_tokens_version(&tx)?;
    tx.commit().map_err(db_err)?;
    Ok(n > 0)
}

pub(super) fn delete_token(c: &mut Connection, name: &str) -> Result<bool, StoreError> {
    let tx = c.transaction().map_err(db_err)?;
    let n = tx.execute("DELETE FROM tokens WHERE name = ?1", params![name]).map_err(db_err)?;
    bump_tokens_version(&tx)?;
    tx.commit().map_err(db_err)?;
    Ok(n > 0)
}

fn bump_tokens_version(c: &Connection) -> Result<(), StoreError> {
    c.execute("UPDATE meta SET value = value + 1 WHERE key = 'tokens_version'", []).map(drop).map_err(db_err)
}
