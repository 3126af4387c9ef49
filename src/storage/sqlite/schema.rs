//! The SQLite schema and its migrations, and opening connections (writer, readers, checkpointer).

use std::path::Path;

use rusqlite::{Connection, OpenFlags, params};

use super::conn::db_err;
use super::decimal::{agg_from_row, register_decimal_functions};
use super::pack::register_pack_functions;
use super::rollups::add_to_rollups;
use crate::rollup::{Agg, Resolution};
use crate::storage::StoreError;

/// Versioned migrations; `PRAGMA user_version` is the number applied.
pub(super) const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE rollups (
    metric TEXT NOT NULL, dim TEXT NOT NULL, val TEXT NOT NULL,
    res INTEGER NOT NULL, bucket INTEGER NOT NULL,
    count INTEGER NOT NULL, sum TEXT NOT NULL, min TEXT, max TEXT,
    PRIMARY KEY (metric, dim, val, res, bucket)
) WITHOUT ROWID;
CREATE TABLE dim_values (
    dim TEXT NOT NULL, val TEXT NOT NULL, first_seen INTEGER NOT NULL,
    PRIMARY KEY (dim, val)
) WITHOUT ROWID;
CREATE TABLE raw_blocks (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL,
    min_time_ms INTEGER NOT NULL, max_time_ms INTEGER NOT NULL, count INTEGER NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX raw_blocks_by_name ON raw_blocks (name, id);
CREATE INDEX raw_blocks_by_time ON raw_blocks (max_time_ms);
CREATE TABLE dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT, received_ms INTEGER NOT NULL, source TEXT NOT NULL,
    reason TEXT NOT NULL, raw BLOB NOT NULL, topic TEXT, partition INTEGER, "offset" INTEGER
);
CREATE INDEX dead_letters_by_time ON dead_letters (received_ms);
CREATE TABLE offsets (
    source TEXT NOT NULL, partition INTEGER NOT NULL, next_offset INTEGER NOT NULL,
    PRIMARY KEY (source, partition)
) WITHOUT ROWID;
CREATE TABLE tokens (
    name TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE, scopes TEXT NOT NULL,
    created_ms INTEGER NOT NULL, expires_ms INTEGER, revoked_ms INTEGER
);
CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT INTO meta VALUES ('tokens_version', 0);
"#,
    // 2: rollups keyed by an integer series id, with decimals as 16-byte blobs (rust_decimal's
    // `serialize` layout): a commit's thousands of upserts compare integers instead of three text
    // columns, and add decimals without parsing and printing text. `dec_blob` converts the old text.
    r#"
CREATE TABLE series (
    id INTEGER PRIMARY KEY, metric TEXT NOT NULL, dim TEXT NOT NULL, val TEXT NOT NULL,
    UNIQUE (metric, dim, val)
);
INSERT INTO series (metric, dim, val) SELECT DISTINCT metric, dim, val FROM rollups ORDER BY 1, 2, 3;
CREATE TABLE rollups_by_id (
    series INTEGER NOT NULL, res INTEGER NOT NULL, bucket INTEGER NOT NULL,
    count INTEGER NOT NULL, sum BLOB NOT NULL, min BLOB, max BLOB,
    PRIMARY KEY (series, res, bucket)
) WITHOUT ROWID;
INSERT INTO rollups_by_id
    SELECT s.id, r.res, r.bucket, r.count, dec_blob(r.sum), dec_blob(r.min), dec_blob(r.max)
    FROM rollups r JOIN series s ON s.metric = r.metric AND s.dim = r.dim AND s.val = r.val;
DROP TABLE rollups;
ALTER TABLE rollups_by_id RENAME TO rollups;
"#,
    // 3: commits add to a small table of recent deltas, merged into `rollups` every second or so
    // (see `merge_deltas`): a commit then dirties a few hundred packed pages instead of a page per
    // active series of a big table.
    r#"
CREATE TABLE rollup_deltas (
    series INTEGER NOT NULL, res INTEGER NOT NULL, bucket INTEGER NOT NULL,
    count INTEGER NOT NULL, sum BLOB NOT NULL, min BLOB, max BLOB,
    PRIMARY KEY (series, res, bucket)
) WITHOUT ROWID;
"#,
    // 4: commits whose coarser buckets are derived from their seconds (every ingest commit) add
    // the seconds only, here; `merge_deltas` derives the minute, hour, day and all-time buckets
    // once a second. A commit then writes about one row per active series instead of five.
    r#"
CREATE TABLE rollup_seconds (
    series INTEGER NOT NULL, bucket INTEGER NOT NULL,
    count INTEGER NOT NULL, sum BLOB NOT NULL, min BLOB, max BLOB,
    PRIMARY KEY (series, bucket)
) WITHOUT ROWID;
"#,
    // 5: every commit takes the next number: a read tells the read cache which commits its
    // snapshot holds (see `Store::read_aggregate_at`).
    r#"
INSERT INTO meta VALUES ('commit_seq', 0);
"#,
    // 6: idempotency keys of HTTP ingest requests, with the answer each got (kept for
    // `retention.idempotency_keys`).
    r#"
CREATE TABLE idempotency_keys (
    scope TEXT NOT NULL, key TEXT NOT NULL, answer TEXT NOT NULL, at_ms INTEGER NOT NULL,
    PRIMARY KEY (scope, key)
) WITHOUT ROWID;
CREATE INDEX idempotency_keys_at ON idempotency_keys (at_ms);
"#,
    // 7: the fingerprint of the request body a key was committed with: a key reused with another
    // body is refused (422) instead of replaying an answer that belongs to another request.
    r#"
ALTER TABLE idempotency_keys ADD COLUMN fingerprint TEXT;
"#,
    // 8: a bucket's count, sum, min and max as one compact blob (see `decimal`): a row of one
    // small sale shrinks from ~75 to ~20 bytes, four times more buckets fit a page, and a merge
    // dirties (and writes to the WAL) that many fewer pages.
    r#"
CREATE TABLE rollups_v8 (
    series INTEGER NOT NULL, res INTEGER NOT NULL, bucket INTEGER NOT NULL, agg BLOB NOT NULL,
    PRIMARY KEY (series, res, bucket)
) WITHOUT ROWID;
INSERT INTO rollups_v8 SELECT series, res, bucket, agg_pack(count, sum, min, max) FROM rollups;
DROP TABLE rollups;
ALTER TABLE rollups_v8 RENAME TO rollups;
CREATE TABLE rollup_deltas_v8 (
    series INTEGER NOT NULL, res INTEGER NOT NULL, bucket INTEGER NOT NULL, agg BLOB NOT NULL,
    PRIMARY KEY (series, res, bucket)
) WITHOUT ROWID;
INSERT INTO rollup_deltas_v8 SELECT series, res, bucket, agg_pack(count, sum, min, max) FROM rollup_deltas;
DROP TABLE rollup_deltas;
ALTER TABLE rollup_deltas_v8 RENAME TO rollup_deltas;
CREATE TABLE rollup_seconds_v8 (
    series INTEGER NOT NULL, bucket INTEGER NOT NULL, agg BLOB NOT NULL,
    PRIMARY KEY (series, bucket)
) WITHOUT ROWID;
INSERT INTO rollup_seconds_v8 SELECT series, bucket, agg_pack(count, sum, min, max) FROM rollup_seconds;
DROP TABLE rollup_seconds;
ALTER TABLE rollup_seconds_v8 RENAME TO rollup_seconds;
"#,
    // 9: each dimension value's latest label (e.g. the name of a product id), for pickers.
    r#"
ALTER TABLE dim_values ADD COLUMN label TEXT;
"#,
    // 10: rollup rebuilds (a job with its lease and progress, and each step's partial rollups)
    // and the metric definitions the rollups were built with.
    r#"
CREATE TABLE rebuild_jobs (
    id INTEGER PRIMARY KEY, spec TEXT NOT NULL, state TEXT NOT NULL, owner TEXT NOT NULL,
    lease_until_ms INTEGER NOT NULL, started_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL,
    progress_block INTEGER NOT NULL, target_block INTEGER NOT NULL,
    events_read INTEGER NOT NULL, events_skipped INTEGER NOT NULL
);
CREATE TABLE rebuild_chunks (
    job INTEGER NOT NULL, upto_block INTEGER NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (job, upto_block)
) WITHOUT ROWID;
CREATE TABLE metric_defs (
    name TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, state TEXT NOT NULL, updated_ms INTEGER NOT NULL
) WITHOUT ROWID;
"#,
    // 11: a series' day, hour and minute buckets of one day are one row of `rollups`, its day
    // pack (see `pack`); `repack` rewrites the rows of version 10 after this runs.
    r#"
DELETE FROM meta WHERE key = 'minutes_pruned_before';
"#,
    // 12: a pack's minute may carry its one second instead of a second row (see `pack`); no row
    // changes, but a binary of version 11 would misread such a pack, so it must refuse the store.
    r#"
DELETE FROM meta WHERE key = 'seconds_pruned_before';
"#,
    // 13: a minute's second rows become one row (see `seconds`); `regroup_seconds` rewrites them
    // after this runs.
    r#"
CREATE TEMP TABLE minutes_of_seconds (series INTEGER NOT NULL, bucket INTEGER NOT NULL, agg BLOB NOT NULL);
"#,
];

/// The version whose migration is followed by [`repack`].
const REPACK_VERSION: usize = 11;

/// The version whose migration is followed by [`regroup_seconds`].
const REGROUP_VERSION: usize = 13;

pub(super) fn open_writer(path: &str) -> Result<Connection, StoreError> {
    // Only the file's own directory is created (./data by default): a path with more missing
    // directories is far more often a typo than a wish, and was silently created.
    if let Some(dir) = Path::new(path).parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        let above = dir.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if !above.exists() {
            return Err(StoreError::BadUrl(format!(
                "sqlite://{path}: the directory {} does not exist; only the file's own directory is created, \
                 so create the others first if the path is right",
                above.display()
            )));
        }
        match std::fs::create_dir(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(StoreError::backend(e)),
            _ => {}
        }
    }
    let mut c = Connection::open(path).map_err(db_err)?;
    c.busy_timeout(std::time::Duration::from_secs(10)).map_err(db_err)?;
    // WAL: readers never block the writer. synchronous=FULL: a commit is on disk before we ack.
    set_wal(&c)?;
    c.pragma_update(None, "synchronous", "FULL").map_err(db_err)?;
    // 64 MiB of page cache (the default is 2 MiB): the hot rollup pages stay in memory.
    c.pragma_update(None, "cache_size", -65536).map_err(db_err)?;
    // Checkpoints run in `maintain`, after the commit that made one due is acknowledged.
    c.pragma_update(None, "wal_autocheckpoint", 0).map_err(db_err)?;
    // Before migrating: migration 2 uses `dec_blob`.
    register_decimal_functions(&c).map_err(db_err)?;
    register_pack_functions(&c).map_err(db_err)?;
    super::seconds::register_seconds_functions(&c).map_err(db_err)?;
    migrate(&mut c)?;
    Ok(c)
}

/// Two processes switching a brand-new file to WAL at once: the loser gets SQLITE_BUSY at once
/// (the busy timeout does not cover this switch), so it retries for up to ~5 s.
fn set_wal(c: &Connection) -> Result<(), StoreError> {
    for _ in 0..250 {
        match c.pragma_update(None, "journal_mode", "WAL") {
            Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::DatabaseBusy => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            r => return r.map_err(db_err),
        }
    }
    c.pragma_update(None, "journal_mode", "WAL").map_err(db_err)
}

pub(super) fn open_reader(path: &str) -> Result<Connection, StoreError> {
    let c = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(db_err)?;
    c.busy_timeout(std::time::Duration::from_secs(10)).map_err(db_err)?;
    // 16 MiB each (8 are kept): the rollup index's inner pages stay cached; the leaves come from
    // the kernel's page cache, which all connections share, instead of a copy in each.
    c.pragma_update(None, "cache_size", -16384).map_err(db_err)?;
    Ok(c)
}

fn migrate(c: &mut Connection) -> Result<(), StoreError> {
    // IMMEDIATE takes the write lock before the version is read: two processes opening a new file
    // at once (a server and `jetstream token create`) must not both apply migration 1.
    let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(db_err)?;
    let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(db_err)?;
    let supported = MIGRATIONS.len() as i64;
    if version > supported {
        return Err(StoreError::SchemaTooNew { found: version, supported });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.execute_batch(sql).map_err(db_err)?;
        if i + 1 == REPACK_VERSION {
            repack(&tx)?;
        }
        if i + 1 == REGROUP_VERSION {
            regroup_seconds(&tx)?;
        }
        tx.pragma_update(None, "user_version", (i + 1) as i64).map_err(db_err)?;
    }
    tx.commit().map_err(db_err)
}

/// Migration 13: each minute's second rows of `rollups` become one row (see `seconds`), read in
/// key order and grouped into a temporary table as they stream, then swapped in.
fn regroup_seconds(tx: &Connection) -> Result<(), StoreError> {
    let mut rows =
        tx.prepare("SELECT series, bucket, agg FROM rollups WHERE res = 1 ORDER BY series, bucket").map_err(db_err)?;
    let mut put = tx.prepare("INSERT INTO temp.minutes_of_seconds VALUES (?1, ?2, ?3)").map_err(db_err)?;
    let mut cur: Option<(i64, i64)> = None;
    let mut secs: Vec<(u8, Agg)> = Vec::new();
    let mut flush = |key: Option<(i64, i64)>, secs: &mut Vec<(u8, Agg)>| -> Result<(), StoreError> {
        if let Some((series, minute)) = key {
            put.execute(params![series, minute, super::seconds::encode(secs)]).map_err(db_err)?;
        }
        secs.clear();
        Ok(())
    };
    let mut it = rows.query([]).map_err(db_err)?;
    while let Some(r) = it.next().map_err(db_err)? {
        let (series, t): (i64, i64) = (r.get(0).map_err(db_err)?, r.get(1).map_err(db_err)?);
        let minute = Resolution::Minute.bucket_of(t);
        if cur != Some((series, minute)) {
            flush(cur, &mut secs)?;
            cur = Some((series, minute));
        }
        secs.push(((t - minute) as u8, agg_from_row(r, 2).map_err(db_err)?));
    }
    flush(cur, &mut secs)?;
    drop(it);
    tx.execute_batch(
        "DELETE FROM rollups WHERE res = 1;
         INSERT INTO rollups SELECT series, 1, bucket, agg FROM temp.minutes_of_seconds;
         DROP TABLE temp.minutes_of_seconds;",
    )
    .map_err(db_err)
}

/// Migration 11: each series' day, hour and minute rows of `rollups` become one day pack per day.
fn repack(tx: &Connection) -> Result<(), StoreError> {
    let ids: Vec<i64> = tx
        .prepare("SELECT DISTINCT series FROM rollups WHERE res IN (60, 3600, 86400)")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .map_err(db_err)?;
    let mut rows = tx
        .prepare("SELECT res, bucket, agg FROM rollups WHERE series = ?1 AND res IN (60, 3600, 86400)")
        .map_err(db_err)?;
    let mut del = tx.prepare("DELETE FROM rollups WHERE series = ?1 AND res IN (60, 3600, 86400)").map_err(db_err)?;
    for id in ids {
        let old: Vec<(i64, i64, Agg)> = rows
            .query_map([id], |r| Ok((r.get(0)?, r.get(1)?, agg_from_row(r, 2)?)))
            .and_then(|rows| rows.collect())
            .map_err(db_err)?;
        del.execute([id]).map_err(db_err)?;
        let old: Vec<(Resolution, i64, Agg)> =
            old.into_iter().filter_map(|(res, bucket, a)| Some((Resolution::from_seconds(res)?, bucket, a))).collect();
        add_to_rollups(tx, old.iter().map(|(res, bucket, a)| (id, *res, *bucket, a)))?;
    }
    Ok(())
}
