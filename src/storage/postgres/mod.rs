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
//! - Each process numbers its own commits (`writer_positions`), so a read can say which of them
//!   its snapshot holds (the read cache's rule, see `api::cache`).
//!
//! Table names are unqualified, so the connection's `search_path` picks the schema
//! (`postgres://…/db?options=-csearch_path%3Dtenant` isolates a schema).
//!
//! - [`schema`]: migrations; [`write`]: a commit, table by table, tokens, retention;
//!   [`read`]: every read.

mod error;
mod listen;
mod read;
mod rebuild;
mod schema;
mod tls;
mod write;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};

use self::error::pg_err;
use self::write::Position;
use super::rebuild::{Claim, FoldTail, MetricRecord, RebuildJob, StoredDeadLetter, Swapped};
use super::url::PgTls;
use super::{
    ClaimRequest, CommitPos, DeadLetter, Footprint, LatestVisitor, PruneBefore, Pruned, RawBlock, RebuildStep, Store,
    StoreError, StoredAnswer, TokenRecord, WriteBatch,
};
use crate::rollup::{Agg, Resolution, SeriesKey, Span};

/// Connections per instance: the writer's commits plus concurrent reads.
const POOL_SIZE: usize = 8;

pub struct PgStore {
    pool: Pool,
    /// For the connection that listens to other processes' commits (see [`listen`]).
    config: tokio_postgres::Config,
    tls: PgTls,
    foreign: std::sync::OnceLock<tokio::sync::watch::Sender<u64>>,
    /// This process's writer id in `writer_positions` (random per process).
    writer: i64,
    /// The last commit number handed out; numbers are never reused, even by a failed commit,
    /// whose outcome may be unknown.
    seq: AtomicU64,
    /// Commits one at a time, so their numbers become visible in order.
    committing: tokio::sync::Mutex<()>,
}

/// Connects once and runs `SELECT 1` (no pool, no migration).
pub async fn probe(config: &tokio_postgres::Config, tls: &PgTls) -> Result<(), StoreError> {
    let (client, connection) = config.connect(tls::connector(tls)?).await.map_err(pg_err)?;
    let connection = tokio::spawn(connection);
    let answer = client.simple_query("SELECT 1").await.map_err(pg_err);
    drop(client);
    let _ = connection.await;
    answer.map(|_| ())
}

impl PgStore {
    /// Connects (a pool of [`POOL_SIZE`], over TLS as `tls` says) and applies pending migrations.
    pub async fn open(config: tokio_postgres::Config, tls: &PgTls) -> Result<Self, StoreError> {
        let connector = tls::connector(tls)?;
        let manager =
            Manager::from_config(config.clone(), connector, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(Duration::from_secs(15)))
            .wait_timeout(Some(Duration::from_secs(30)))
            .build()
            .map_err(StoreError::backend)?;
        let writer = rand::random::<i64>().abs();
        let store = Self {
            pool,
            config,
            tls: tls.clone(),
            foreign: std::sync::OnceLock::new(),
            writer,
            seq: AtomicU64::new(0),
            committing: Default::default(),
        };
        let mut client = store.client().await?;
        schema::migrate(&mut client).await?;
        Ok(store)
    }

    async fn client(&self) -> Result<deadpool_postgres::Client, StoreError> {
        self.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Closed => StoreError::Closed,
            deadpool_postgres::PoolError::Backend(e) => pg_err(e),
            e => StoreError::Unavailable(anyhow::Error::new(e).context("postgres: no connection from the pool")),
        })
    }
}

#[async_trait]
impl Store for PgStore {
    async fn commit(&self, batch: WriteBatch) -> Result<Option<CommitPos>, StoreError> {
        let mut client = self.client().await?;
        let _in_order = self.committing.lock().await;
        let pos = Position { writer: self.writer, seq: self.seq.fetch_add(1, Ordering::AcqRel) + 1 };
        write::commit(&mut client, batch, pos).await?;
        Ok(Some(pos.seq))
    }

    async fn read_aggregate(&self, series: &SeriesKey, spans: &[Span]) -> Result<Agg, StoreError> {
        Ok(self.read_aggregate_at(series, spans).await?.0)
    }

    async fn read_aggregate_at(
        &self,
        series: &SeriesKey,
        spans: &[Span],
    ) -> Result<(Agg, Option<CommitPos>), StoreError> {
        read::aggregate_at(&self.client().await?, self.writer, series, spans).await
    }

    async fn read_buckets(&self, series: &SeriesKey, bounds: &[i64]) -> Result<Vec<Agg>, StoreError> {
        read::buckets(&self.client().await?, series, bounds).await
    }

    async fn read_dim_aggregates(
        &self,
        metric: &str,
        dim: &str,
        spans: &[Span],
    ) -> Result<Vec<(String, Agg)>, StoreError> {
        read::dim_aggregates(&self.client().await?, metric, dim, spans).await
    }

    async fn dim_labels(&self, dim: &str, values: &[String]) -> Result<Vec<Option<String>>, StoreError> {
        read::dim_labels(&self.client().await?, dim, values).await
    }

    async fn dim_values(
        &self,
        dim: &str,
        prefix: &str,
        search: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(String, Option<String>)>, StoreError> {
        read::dim_values(&self.client().await?, dim, prefix, search, limit).await
    }

    async fn idempotent_answer(&self, scope: &str, key: &str) -> Result<Option<StoredAnswer>, StoreError> {
        read::idempotent_answer(&self.client().await?, scope, key).await
    }

    async fn read_points(
        &self,
        series: &SeriesKey,
        res: Resolution,
        from: i64,
        to: i64,
    ) -> Result<Vec<(i64, Agg)>, StoreError> {
        read::points(&self.client().await?, series, res, from, to).await
    }

    async fn is_known(&self, dim: &str, value: &str) -> Result<bool, StoreError> {
        read::is_known(&self.client().await?, dim, value).await
    }

    async fn stored_offsets(&self, source: &str) -> Result<Vec<(i32, i64)>, StoreError> {
        read::stored_offsets(&self.client().await?, source).await
    }

    async fn dead_letters(&self, before: Option<i64>, limit: u32) -> Result<Vec<DeadLetter>, StoreError> {
        read::dead_letters(&self.client().await?, before, limit).await
    }

    async fn raw_blocks(
        &self,
        name: &str,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<(i64, RawBlock)>, StoreError> {
        read::raw_blocks(&self.client().await?, name, before, limit).await
    }

    async fn create_token(&self, t: TokenRecord) -> Result<(), StoreError> {
        write::create_token(&mut self.client().await?, t).await
    }

    async fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        read::list_tokens(&self.client().await?).await
    }

    async fn revoke_token(&self, name: &str, now_ms: i64) -> Result<bool, StoreError> {
        write::revoke_token(&mut self.client().await?, name, now_ms).await
    }

    async fn delete_token(&self, name: &str) -> Result<bool, StoreError> {
        write::delete_token(&mut self.client().await?, name).await
    }

    async fn tokens_version(&self) -> Result<i64, StoreError> {
        read::tokens_version(&self.client().await?).await
    }

    async fn prune(&self, b: PruneBefore) -> Result<Pruned, StoreError> {
        write::prune(&mut self.client().await?, self.writer, b).await
    }

    async fn raw_watermark(&self) -> Result<i64, StoreError> {
        rebuild::raw_watermark(&mut self.client().await?).await
    }

    async fn raw_blocks_after(&self, after: i64, upto: i64, limit: u32) -> Result<Vec<(i64, RawBlock)>, StoreError> {
        rebuild::raw_blocks_after(&self.client().await?, after, upto, limit).await
    }

    async fn raw_pruned_before(&self) -> Result<Option<i64>, StoreError> {
        rebuild::raw_pruned_before(&self.client().await?).await
    }

    async fn rebuild_claim(&self, req: ClaimRequest) -> Result<Claim, StoreError> {
        rebuild::claim(&mut self.client().await?, &req).await
    }

    async fn rebuild_step(&self, step: RebuildStep) -> Result<(), StoreError> {
        rebuild::step(&mut self.client().await?, &step).await
    }

    async fn rebuild_chunks(&self, job: i64) -> Result<Vec<Vec<u8>>, StoreError> {
        rebuild::chunks(&self.client().await?, job).await
    }

    async fn rebuild_swap(
        &self,
        job: &RebuildJob,
        owner: &str,
        defs: Vec<MetricRecord>,
        fold: FoldTail,
    ) -> Result<Swapped, StoreError> {
        rebuild::swap(&mut self.client().await?, job, owner, &defs, fold).await
    }

    async fn rebuild_jobs(&self, limit: u32) -> Result<Vec<RebuildJob>, StoreError> {
        rebuild::jobs(&self.client().await?, limit).await
    }

    async fn metric_records(&self) -> Result<Vec<MetricRecord>, StoreError> {
        rebuild::metric_records(&self.client().await?).await
    }

    async fn put_metric_records(&self, records: Vec<MetricRecord>) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        rebuild::put_records(&tx, &records).await?;
        tx.commit().await.map_err(pg_err)
    }

    async fn drop_metrics(&self, names: Vec<String>) -> Result<u64, StoreError> {
        rebuild::drop_metrics(&mut self.client().await?, &names).await
    }

    async fn dead_letters_after(&self, after: i64, limit: u32) -> Result<Vec<StoredDeadLetter>, StoreError> {
        rebuild::dead_letters_after(&self.client().await?, after, limit).await
    }

    fn foreign_commits(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        // The listener stops once no receiver is left: the first receiver must exist before it
        // starts (created with the channel, not subscribed after the spawn, which raced it).
        let mut first = None;
        let tx = self.foreign.get_or_init(|| {
            let (tx, rx) = tokio::sync::watch::channel(0);
            first = Some(rx);
            tokio::spawn(listen::listen(self.config.clone(), self.tls.clone(), self.writer, tx.clone()));
            tx
        });
        Some(first.unwrap_or_else(|| tx.subscribe()))
    }

    async fn scan_latest(&self, mut visit: Box<dyn LatestVisitor>) -> Result<bool, StoreError> {
        let bound = read::series_bound(&self.client().await?).await?;
        // Before the snapshot below: every local commit from here on is noted by the visitor's
        // owner, and another instance's is heard (LISTEN) and makes the index stale again.
        visit.begin(bound);
        read::scan_latest(&mut self.client().await?, &mut *visit).await?;
        visit.end();
        Ok(true)
    }

    async fn footprint(&self) -> Result<Footprint, StoreError> {
        let client = self.client().await?;
        let row = client.query_one("SELECT pg_database_size(current_database())", &[]).await.map_err(pg_err)?;
        let size: i64 = row.try_get(0).map_err(pg_err)?;
        Ok(Footprint { database_bytes: u64::try_from(size).unwrap_or(0), wal_bytes: None, free_bytes: None })
    }

    async fn close(&self) -> Result<(), StoreError> {
        self.pool.close();
        Ok(())
    }
}
