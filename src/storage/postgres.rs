//! The shared store: PostgreSQL, for several instances (API servers, consumers) on one database.
//!
//! Same semantics as the SQLite backend, with concurrency in mind:
//! - Rollups are upserted with additions done by the server (`count = rollups.count +
//!   EXCLUDED.count`, `LEAST`/`GREATEST` for min/max): concurrent writers never lose an update.
//!   Every statement takes its rows in one global order (offsets, then rollups, then dimension
//!   values, each sorted by key), so two writers cannot wait on each other in a cycle; should the
//!   server still report a deadlock or serialisation failure (e.g. against `prune`), the whole
//!   transaction is retried — it was rolled back, so a retry cannot double-count.
//! - Offsets are fenced: the partition's row is locked (`SELECT … FOR UPDATE`, or inserted when
//!   the batch expects none — the unique key makes two first-time writers serialise) and compared
//!   with the batch's `expected` inside the transaction.
//! - Rows go over in arrays (`UNNEST`), one statement per table and chunk, not one per row.
//! - Decimals are `NUMERIC`; a sum that would no longer fit a `rust_decimal::Decimal` is refused by a
//!   CHECK constraint (the commit fails, as SQLite's `dec_add` overflow does) rather than stored
//!   unreadable.
//!
//! Table names are unqualified, so the connection's `search_path` picks the schema
//! (`postgres://…/db?options=-csearch_path%3Dtenant` isolates a schema).

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::error::SqlState;
use tokio_postgres::{NoTls, Row};

use super::{
    CommitPos, DeadLetter, NewDeadLetter, OffsetAdvance, PruneBefore, Pruned, RawBlock, Store, StoreError,
    StoredAnswer, TokenRecord, WriteBatch,
};
use crate::rollup::{Agg, Resolution, SeriesKey, Span};

/// Versioned migrations; `schema_migrations` holds the numbers applied (1-based).
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE rollups (
    metric TEXT COLLATE "C" NOT NULL, dim TEXT COLLATE "C" NOT NULL, val TEXT COLLATE "C" NOT NULL,
    res INTEGER NOT NULL, bucket BIGINT NOT NULL,
    count BIGINT NOT NULL, sum NUMERIC NOT NULL, min NUMERIC, max NUMERIC,
    PRIMARY KEY (metric, dim, val, res, bucket),
    CONSTRAINT rollups_sum_fits_a_decimal CHECK (abs(sum) <= 79228162514264337593543950335)
) WITH (fillfactor = 80);
CREATE TABLE dim_values (
    dim TEXT COLLATE "C" NOT NULL, val TEXT COLLATE "C" NOT NULL, first_seen BIGINT NOT NULL,
    PRIMARY KEY (dim, val)
);
CREATE TABLE raw_blocks (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name TEXT NOT NULL,
    min_time_ms BIGINT NOT NULL, max_time_ms BIGINT NOT NULL, count BIGINT NOT NULL,
    data BYTEA NOT NULL
);
CREATE INDEX raw_blocks_by_name ON raw_blocks (name, id);
CREATE INDEX raw_blocks_by_time ON raw_blocks (max_time_ms);
CREATE TABLE dead_letters (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, received_ms BIGINT NOT NULL, source TEXT NOT NULL,
    reason TEXT NOT NULL, raw BYTEA NOT NULL, topic TEXT, partition INTEGER, "offset" BIGINT
);
CREATE INDEX dead_letters_by_time ON dead_letters (received_ms);
CREATE TABLE offsets (
    source TEXT NOT NULL, partition INTEGER NOT NULL, next_offset BIGINT NOT NULL,
    PRIMARY KEY (source, partition)
);
CREATE TABLE tokens (
    name TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE, scopes TEXT[] NOT NULL,
    created_ms BIGINT NOT NULL, expires_ms BIGINT, revoked_ms BIGINT
);
CREATE TABLE meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL);
INSERT INTO meta VALUES ('tokens_version', 0);
"#,
    // 2: idempotency keys of HTTP ingest requests, with the answer each got.
    r#"
CREATE TABLE idempotency_keys (
    scope TEXT NOT NULL, key TEXT NOT NULL, answer TEXT NOT NULL, at_ms BIGINT NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE INDEX idempotency_keys_at ON idempotency_keys (at_ms);
"#,
    // 3: the fingerprint of the request body a key was committed with (see the SQLite backend).
    r#"
ALTER TABLE idempotency_keys ADD COLUMN fingerprint TEXT;
"#,
    // 4: each process numbers its own commits (its writer commits one at a time) and records the
    // last number in the commit's transaction: a read returns the number its snapshot holds, so
    // the read cache knows which of the process's commits the read already includes.
    r#"
CREATE TABLE writer_positions (writer BIGINT PRIMARY KEY, seq BIGINT NOT NULL, at_ms BIGINT NOT NULL);
"#,
];

/// Advisory lock keys (per database): one instance migrates at a time; one prunes at a time.
const MIGRATION_LOCK: i64 = 0x6a65_7473_7472_6d01;
const PRUNE_LOCK: i64 = 0x6a65_7473_7472_6d02;

/// Connections per instance: the writer's commits plus concurrent reads.
const POOL_SIZE: usize = 8;
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
INSERT INTO dim_values (dim, val, first_seen)
SELECT dim, val, first_seen FROM UNNEST($1::text[], $2::text[], $3::int8[])
     WITH ORDINALITY AS u(dim, val, first_seen, ord)
ORDER BY ord
ON CONFLICT (dim, val) DO NOTHING";

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

pub struct PgStore {
    pool: Pool,
    /// This process's writer id in `writer_positions` (random per process).
    writer: i64,
    /// The last commit number handed out; numbers are never reused, even by a failed commit,
    /// whose outcome may be unknown.
    seq: std::sync::atomic::AtomicU64,
    /// Commits one at a time, so their numbers become visible in order.
    committing: tokio::sync::Mutex<()>,
}

/// Parses and checks a `postgres://` / `postgresql://` URL.
pub fn parse_url(url: &str) -> Result<tokio_postgres::Config, StoreError> {
    let bad = || StoreError::BadUrl(redact(url));
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(bad());
    }
    let mut config = tokio_postgres::Config::from_str(url).map_err(|_| bad())?;
    if config.get_hosts().is_empty() {
        return Err(bad());
    }
    // Without TLS support compiled in, `sslmode=require` could never connect: say so up front.
    if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
        return Err(bad());
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    if config.get_application_name().is_none() {
        config.application_name("jetstream");
    }
    Ok(config)
}

/// `url` with its password, if any, masked: store URLs end up in error messages and logs.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{hosts}{tail}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

impl PgStore {
    /// Connects (a pool of [`POOL_SIZE`]) and applies pending migrations.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let config = parse_url(url)?;
        let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(Duration::from_secs(15)))
            .wait_timeout(Some(Duration::from_secs(30)))
            .build()
            .map_err(StoreError::backend)?;
        let writer = rand::random::<i64>().abs();
        let store = Self { pool, writer, seq: Default::default(), committing: Default::default() };
        let mut client = store.client().await?;
        migrate(&mut client).await?;
        Ok(store)
    }

    async fn client(&self) -> Result<deadpool_postgres::Client, StoreError> {
        self.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Closed => StoreError::Closed,
            deadpool_postgres::PoolError::Backend(e) => pg_err(e),
            e => StoreError::backend(anyhow::Error::new(e).context("postgres: no connection from the pool")),
        })
    }
}

/// Keeps the tokio-postgres error (for `is_retryable`) under a message that says what the server
/// said: its `Display` alone is only "db error".
fn pg_err(e: tokio_postgres::Error) -> StoreError {
    let msg = match e.as_db_error() {
        Some(db) => format!("postgres: {} ({})", db.message(), db.code().code()),
        None => match std::error::Error::source(&e) {
            Some(cause) => format!("postgres: {e}: {cause}"),
            None => format!("postgres: {e}"),
        },
    };
    StoreError::Backend(anyhow::Error::new(e).context(msg))
}

/// A deadlock or serialisation failure: the server rolled the transaction back; run it again.
fn is_retryable(e: &StoreError) -> bool {
    let StoreError::Backend(a) = e else { return false };
    a.downcast_ref::<tokio_postgres::Error>()
        .and_then(|e| e.code())
        .is_some_and(|c| *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE)
}

async fn migrate(client: &mut deadpool_postgres::Client) -> Result<(), StoreError> {
    let tx = client.transaction().await.map_err(pg_err)?;
    // Held to the end of the transaction: a second instance starting now waits here, then finds
    // every migration applied.
    tx.batch_execute(&format!("SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")).await.map_err(pg_err)?;
    // Checked rather than `CREATE TABLE IF NOT EXISTS`, whose notice would be logged at every start.
    let exists: bool =
        tx.query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[]).await.map_err(pg_err)?.get(0);
    if !exists {
        tx.batch_execute(
            "CREATE TABLE schema_migrations (
                 version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
        )
        .await
        .map_err(pg_err)?;
    }
    let found: i32 =
        tx.query_one("SELECT COALESCE(MAX(version), 0) FROM schema_migrations", &[]).await.map_err(pg_err)?.get(0);
    let supported = MIGRATIONS.len() as i64;
    if i64::from(found) > supported {
        return Err(StoreError::SchemaTooNew { found: found.into(), supported });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        tx.batch_execute(sql).await.map_err(pg_err)?;
        let version = i as i32 + 1;
        tx.execute("INSERT INTO schema_migrations (version) VALUES ($1)", &[&version]).await.map_err(pg_err)?;
        tracing::info!(version, "postgres migration applied");
    }
    tx.commit().await.map_err(pg_err)
}

fn res_code(r: Resolution) -> i32 {
    // At most 86 400: always fits.
    r.seconds() as i32
}

fn agg_from_row(r: &Row, at: usize) -> Result<Agg, StoreError> {
    Ok(Agg {
        count: r.try_get(at).map_err(pg_err)?,
        sum: r.try_get(at + 1).map_err(pg_err)?,
        min: r.try_get(at + 2).map_err(pg_err)?,
        max: r.try_get(at + 3).map_err(pg_err)?,
    })
}

/// A commit's number among this process's commits (see migration 4).
#[derive(Debug, Clone, Copy)]
struct Position {
    writer: i64,
    seq: u64,
}

/// Puts a batch's offsets and dimension values in the lock order every writer uses, each key
/// once per statement (an `ON CONFLICT DO UPDATE` cannot touch one row twice). Rollup rows come
/// in that order already ([`RollupRows`]).
fn normalise(batch: &mut WriteBatch) {
    // Stable: two advances of one partition in one batch stay chained in order.
    batch.offsets.sort_by(|a, b| (&a.source, a.partition).cmp(&(&b.source, b.partition)));
    // Stable, keeping the first occurrence: SQLite's `INSERT OR IGNORE` keeps the first too.
    batch.dims.sort_by(|a, b| (&*a.0, &a.1).cmp(&(&*b.0, &b.1)));
    batch.dims.dedup_by(|b, a| a.0 == b.0 && a.1 == b.1);
}

async fn fence(tx: &deadpool_postgres::Transaction<'_>, o: &OffsetAdvance) -> Result<(), StoreError> {
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

async fn apply(tx: &deadpool_postgres::Transaction<'_>, batch: &WriteBatch, pos: Position) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO writer_positions (writer, seq, at_ms) VALUES ($1, $2, $3)
         ON CONFLICT (writer) DO UPDATE SET seq = EXCLUDED.seq, at_ms = EXCLUDED.at_ms",
        &[&pos.writer, &(pos.seq as i64), &crate::ingest::now_ms()],
    )
    .await
    .map_err(pg_err)?;
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
    for o in &batch.offsets {
        fence(tx, o).await?;
    }
    if !batch.rollups.is_empty() {
        let st = tx.prepare_cached(UPSERT_ROLLUPS).await.map_err(pg_err)?;
        let rows: Vec<_> = batch.rollups.iter().collect();
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
    }
    if !batch.dims.is_empty() {
        let st = tx.prepare_cached(INSERT_DIMS).await.map_err(pg_err)?;
        for chunk in batch.dims.chunks(CHUNK) {
            let dim: Vec<&str> = chunk.iter().map(|d| &*d.0).collect();
            let val: Vec<&str> = chunk.iter().map(|d| d.1.as_str()).collect();
            let first: Vec<i64> = chunk.iter().map(|d| d.2).collect();
            tx.execute(&st, &[&dim, &val, &first]).await.map_err(pg_err)?;
        }
    }
    if !batch.raw_blocks.is_empty() {
        let st = tx.prepare_cached(INSERT_RAW).await.map_err(pg_err)?;
        // Blocks are large (compressed NDJSON of a whole commit): a few per statement.
        for chunk in batch.raw_blocks.chunks(16) {
            let name: Vec<&str> = chunk.iter().map(|b| b.name.as_str()).collect();
            let min_t: Vec<i64> = chunk.iter().map(|b| b.min_time_ms).collect();
            let max_t: Vec<i64> = chunk.iter().map(|b| b.max_time_ms).collect();
            let count: Vec<i64> = chunk.iter().map(|b| b.count).collect();
            let data: Vec<&[u8]> = chunk.iter().map(|b| b.zstd.as_slice()).collect();
            tx.execute(&st, &[&name, &min_t, &max_t, &count, &data]).await.map_err(pg_err)?;
        }
    }
    if !batch.dead_letters.is_empty() {
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
    }
    Ok(())
}

async fn bump_tokens_version(tx: &deadpool_postgres::Transaction<'_>) -> Result<(), StoreError> {
    tx.execute("UPDATE meta SET value = value + 1 WHERE key = 'tokens_version'", &[]).await.map_err(pg_err)?;
    Ok(())
}

#[async_trait]
impl Store for PgStore {
    async fn commit(&self, mut batch: WriteBatch) -> Result<Option<CommitPos>, StoreError> {
        normalise(&mut batch);
        let mut client = self.client().await?;
        let _in_order = self.committing.lock().await;
        let pos = Position { writer: self.writer, seq: self.seq.fetch_add(1, std::sync::atomic::Ordering::AcqRel) + 1 };
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
                    tokio::time::sleep(Duration::from_millis(10 * u64::from(attempt))).await;
                    attempt += 1;
                }
                other => return other.map(|()| Some(pos.seq)),
            }
        }
    }

    async fn read_aggregate(&self, series: &SeriesKey, spans: &[Span]) -> Result<Agg, StoreError> {
        Ok(self.read_aggregate_at(series, spans).await?.0)
    }

    async fn read_aggregate_at(
        &self,
        series: &SeriesKey,
        spans: &[Span],
    ) -> Result<(Agg, Option<CommitPos>), StoreError> {
        let res: Vec<i32> = spans.iter().map(|s| res_code(s.res)).collect();
        let from: Vec<i64> = spans.iter().map(|s| s.from).collect();
        let to: Vec<i64> = spans.iter().map(|s| s.to).collect();
        let client = self.client().await?;
        // One round trip for the whole cover; the server sums the NUMERICs exactly. One statement
        // is one snapshot: the position read with the buckets is the one they stand at.
        let st = client
            .prepare_cached(
                "SELECT COALESCE(SUM(r.count), 0)::int8, COALESCE(SUM(r.sum), 0), MIN(r.min), MAX(r.max),
                        COALESCE((SELECT seq FROM writer_positions WHERE writer = $7), 0)
                 FROM UNNEST($4::int4[], $5::int8[], $6::int8[]) AS s(res, lo, hi)
                 JOIN rollups r ON r.metric = $1 AND r.dim = $2 AND r.val = $3
                                AND r.res = s.res AND r.bucket >= s.lo AND r.bucket < s.hi",
            )
            .await
            .map_err(pg_err)?;
        let row = client
            .query_one(&st, &[&&*series.metric, &&*series.dim, &series.value, &res, &from, &to, &self.writer])
            .await
            .map_err(pg_err)?;
        let pos: i64 = row.try_get(4).map_err(pg_err)?;
        Ok((agg_from_row(&row, 0)?, Some(pos as u64)))
    }

    async fn idempotent_answer(&self, scope: &str, key: &str) -> Result<Option<StoredAnswer>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT answer, fingerprint FROM idempotency_keys WHERE scope = $1 AND key = $2",
                &[&scope, &key],
            )
            .await
            .map_err(pg_err)?;
        Ok(row.map(|r| StoredAnswer { answer: r.get(0), fingerprint: r.get(1) }))
    }

    async fn read_points(
        &self,
        series: &SeriesKey,
        res: Resolution,
        from: i64,
        to: i64,
    ) -> Result<Vec<(i64, Agg)>, StoreError> {
        let client = self.client().await?;
        let st = client
            .prepare_cached(
                "SELECT bucket, count, sum, min, max FROM rollups
                 WHERE metric = $1 AND dim = $2 AND val = $3 AND res = $4 AND bucket >= $5 AND bucket < $6
                 ORDER BY bucket",
            )
            .await
            .map_err(pg_err)?;
        let rows = client
            .query(&st, &[&&*series.metric, &&*series.dim, &series.value, &res_code(res), &from, &to])
            .await
            .map_err(pg_err)?;
        rows.iter().map(|r| Ok((r.try_get(0).map_err(pg_err)?, agg_from_row(r, 1)?))).collect()
    }

    async fn is_known(&self, dim: &str, value: &str) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let st = client
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM dim_values WHERE dim = $1 AND val = $2)")
            .await
            .map_err(pg_err)?;
        Ok(client.query_one(&st, &[&dim, &value]).await.map_err(pg_err)?.get(0))
    }

    async fn stored_offsets(&self, source: &str) -> Result<Vec<(i32, i64)>, StoreError> {
        let client = self.client().await?;
        let st = client
            .prepare_cached("SELECT partition, next_offset FROM offsets WHERE source = $1 ORDER BY partition")
            .await
            .map_err(pg_err)?;
        let rows = client.query(&st, &[&source]).await.map_err(pg_err)?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    async fn dead_letters(&self, before: Option<i64>, limit: u32) -> Result<Vec<DeadLetter>, StoreError> {
        let client = self.client().await?;
        let st = client
            .prepare_cached(
                r#"SELECT id, received_ms, source, reason, raw, topic, partition, "offset" FROM dead_letters
                   WHERE id < $1 ORDER BY id DESC LIMIT $2"#,
            )
            .await
            .map_err(pg_err)?;
        let rows = client.query(&st, &[&before.unwrap_or(i64::MAX), &i64::from(limit)]).await.map_err(pg_err)?;
        rows.iter()
            .map(|r| {
                Ok(DeadLetter {
                    id: r.try_get(0).map_err(pg_err)?,
                    letter: NewDeadLetter {
                        received_ms: r.try_get(1).map_err(pg_err)?,
                        source: r.try_get(2).map_err(pg_err)?,
                        reason: r.try_get(3).map_err(pg_err)?,
                        raw: r.try_get(4).map_err(pg_err)?,
                        topic: r.try_get(5).map_err(pg_err)?,
                        partition: r.try_get(6).map_err(pg_err)?,
                        offset: r.try_get(7).map_err(pg_err)?,
                    },
                })
            })
            .collect()
    }

    async fn raw_blocks(
        &self,
        name: &str,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<(i64, RawBlock)>, StoreError> {
        let client = self.client().await?;
        let st = client
            .prepare_cached(
                "SELECT id, name, min_time_ms, max_time_ms, count, data FROM raw_blocks
                 WHERE name = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
            )
            .await
            .map_err(pg_err)?;
        let rows = client.query(&st, &[&name, &before.unwrap_or(i64::MAX), &i64::from(limit)]).await.map_err(pg_err)?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get(0).map_err(pg_err)?,
                    RawBlock {
                        name: r.try_get(1).map_err(pg_err)?,
                        min_time_ms: r.try_get(2).map_err(pg_err)?,
                        max_time_ms: r.try_get(3).map_err(pg_err)?,
                        count: r.try_get(4).map_err(pg_err)?,
                        zstd: r.try_get(5).map_err(pg_err)?,
                    },
                ))
            })
            .collect()
    }

    async fn create_token(&self, t: TokenRecord) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
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

    async fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query("SELECT name, hash, scopes, created_ms, expires_ms, revoked_ms FROM tokens ORDER BY name", &[])
            .await
            .map_err(pg_err)?;
        rows.iter()
            .map(|r| {
                Ok(TokenRecord {
                    name: r.try_get(0).map_err(pg_err)?,
                    hash: r.try_get(1).map_err(pg_err)?,
                    scopes: r.try_get(2).map_err(pg_err)?,
                    created_ms: r.try_get(3).map_err(pg_err)?,
                    expires_ms: r.try_get(4).map_err(pg_err)?,
                    revoked_ms: r.try_get(5).map_err(pg_err)?,
                })
            })
            .collect()
    }

    async fn revoke_token(&self, name: &str, now_ms: i64) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        let n = tx
            .execute("UPDATE tokens SET revoked_ms = $2 WHERE name = $1 AND revoked_ms IS NULL", &[&name, &now_ms])
            .await
            .map_err(pg_err)?;
        bump_tokens_version(&tx).await?;
        tx.commit().await.map_err(pg_err)?;
        Ok(n > 0)
    }

    async fn tokens_version(&self) -> Result<i64, StoreError> {
        let client = self.client().await?;
        let st = client.prepare_cached("SELECT value FROM meta WHERE key = 'tokens_version'").await.map_err(pg_err)?;
        Ok(client.query_one(&st, &[]).await.map_err(pg_err)?.get(0))
    }

    async fn prune(&self, b: PruneBefore) -> Result<Pruned, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        // Every instance runs retention; one pass at a time is enough, the others skip theirs.
        let mine: bool =
            tx.query_one("SELECT pg_try_advisory_xact_lock($1)", &[&PRUNE_LOCK]).await.map_err(pg_err)?.get(0);
        if !mine {
            let _ = tx.rollback().await;
            return Ok(Pruned::default());
        }
        let raw_blocks =
            tx.execute("DELETE FROM raw_blocks WHERE max_time_ms < $1", &[&b.raw_ms]).await.map_err(pg_err)?;
        let dead_letters = tx
            .execute("DELETE FROM dead_letters WHERE received_ms < $1", &[&b.dead_letters_ms])
            .await
            .map_err(pg_err)?;
        tx.execute("DELETE FROM idempotency_keys WHERE at_ms < $1", &[&b.idempotency_keys_ms]).await.map_err(pg_err)?;
        // Positions of processes gone for a day (a running one rewrites its row at every commit).
        let gone = crate::ingest::now_ms() - 86_400_000;
        tx.execute("DELETE FROM writer_positions WHERE at_ms < $1 AND writer <> $2", &[&gone, &self.writer])
            .await
            .map_err(pg_err)?;
        let mut buckets = 0;
        for (res, before) in [(Resolution::Second, b.second_buckets_s), (Resolution::Minute, b.minute_buckets_s)] {
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

    async fn close(&self) -> Result<(), StoreError> {
        self.pool.close();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_before_connecting() {
        assert!(parse_url("postgres://postgres@127.0.0.1:5432/jetstream").is_ok());
        assert!(parse_url("postgresql://u:p@db.internal/js?connect_timeout=3").is_ok());
        assert!(parse_url("postgres://127.0.0.1/db?options=-csearch_path%3Dtenant").is_ok());
        for bad in [
            "postgres://",
            "postgres://h/db?no_such_option=1",
            "postgres://h/db?sslmode=require",
            "mysql://h/db",
            "postgres://h:notaport/db",
        ] {
            assert!(matches!(parse_url(bad), Err(StoreError::BadUrl(_))), "{bad} should be refused");
        }
    }

    #[test]
    fn passwords_never_reach_error_messages() {
        let e = parse_url("postgres://app:s3cr%40t@db:5432/js?bogus=1").expect_err("bad option");
        let msg = e.to_string();
        assert!(!msg.contains("s3cr"), "{msg}");
        assert!(msg.contains("postgres://app:***@db:5432/js?bogus=1"), "{msg}");
        assert_eq!(redact("postgres://app@db/js"), "postgres://app@db/js");
        assert_eq!(redact("postgresql://u:p@h1,h2/js"), "postgresql://u:***@h1,h2/js");
    }

    #[test]
    fn dimension_values_are_put_in_lock_order_each_once() {
        let mut b = WriteBatch {
            dims: vec![("d".into(), "y".into(), 5), ("d".into(), "x".into(), 7), ("d".into(), "y".into(), 3)],
            ..Default::default()
        };
        normalise(&mut b);
        let dims: Vec<_> = b.dims.iter().map(|d| (d.1.as_str(), d.2)).collect();
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
