//! The embedded store: SQLite in WAL mode.
//!
//! One writer connection (writes are already serialised by the ingest writer, so a mutex costs
//! nothing) and a small pool of read-only connections; all calls run on tokio's blocking pool.
//! Rollup rows are keyed by an integer series id (table `series`; the writer caches the ids it has
//! committed). Decimals are 16-byte blobs added by the registered SQL functions `dec_add`,
//! `dec_min` and `dec_max` inside the upsert, so they stay exact without a read-modify-write, and
//! several processes can share one file.
//!
//! - [`schema`]: migrations and opening connections;
//! - [`decimal`]: the decimal blob layout and its SQL functions;
//! - [`write`]: a commit, table by table; token changes;
//! - [`maintain`]: merging recent rows into `rollups`, WAL checkpoints, retention;
//! - [`read`]: every read, in one snapshot each.

mod commits;
mod conn;
mod decimal;
mod maintain;
mod pack;
mod read;
mod rebuild;
mod rollups;
mod schema;
mod seconds;
mod wal;
mod write;

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::Connection;

use self::conn::{WriterConn, db_err};
use self::schema::{open_reader, open_writer};
use super::rebuild::{Claim, FoldTail, MetricRecord, RebuildJob, StoredDeadLetter, Swapped};
use super::{
    ClaimRequest, CommitPos, DeadLetter, Footprint, LatestVisitor, PruneBefore, Pruned, RawBlock, RebuildStep, Store,
    StoreError, StoreOptions, StoredAnswer, TokenRecord, WriteBatch,
};
use crate::rollup::{Agg, FastMap, Resolution, SeriesKey, Span};

/// Reads running at once, each on a pooled connection; the others wait for a turn without a
/// thread. Unbounded, a burst of slow reads (cold products on a 9 GB store in the soak of
/// bench/README.md) held 200+ blocking threads, each opening a connection of its own. As many
/// connections are kept as there are slots: a read on a connection opened for it alone paid for
/// the open and for preparing its statements (16 % of a cold-read profile, bench/README.md).
const READ_SLOTS: usize = 8;
const READERS: usize = READ_SLOTS;

pub struct SqliteStore {
    path: String,
    writer: Arc<Mutex<WriterConn>>,
    /// Checkpoints the WAL on its own thread and connection.
    wal: Mutex<wal::WalKeeper>,
    /// Set while a background merge and checkpoint runs: one at a time.
    maintaining: Arc<std::sync::atomic::AtomicBool>,
    readers: Arc<Mutex<Vec<Connection>>>,
    read_slots: Arc<tokio::sync::Semaphore>,
    /// The writer's commit numbers, and the channel of other processes' commits once asked for.
    own: Arc<commits::OwnCommits>,
    foreign: std::sync::OnceLock<tokio::sync::watch::Sender<u64>>,
}

impl SqliteStore {
    pub async fn open(path: &str, options: StoreOptions) -> Result<Self, StoreError> {
        let path = path.to_string();
        let p = path.clone();
        let writer = tokio::task::spawn_blocking(move || open_writer(&p)).await.map_err(StoreError::backend)??;
        let own = Arc::new(commits::OwnCommits::default());
        let writer = WriterConn {
            conn: writer,
            series: FastMap::default(),
            dims: FastMap::default(),
            merged_at: std::time::Instant::now(),
            merge_step_rows: maintain::MIN_STEP_ROWS,
            second_buckets_s: options.second_buckets_s,
            minute_buckets_s: options.minute_buckets_s,
        };
        let wal = Mutex::new(wal::WalKeeper::start(&path, options.wal_limit_bytes)?);
        Ok(Self {
            path,
            writer: Arc::new(Mutex::new(writer)),
            wal,
            maintaining: Arc::default(),
            readers: Arc::new(Mutex::new(Vec::new())),
            read_slots: Arc::new(tokio::sync::Semaphore::new(READ_SLOTS)),
            own,
            foreign: std::sync::OnceLock::new(),
        })
    }

    /// Runs `f` on the writer connection on the blocking pool.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut WriterConn) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let w = self.writer.clone();
        tokio::task::spawn_blocking(move || {
            // A poisoned lock means a panic mid-transaction; SQLite rolled it back, so go on.
            let mut c = w.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut c)
        })
        .await
        .map_err(StoreError::backend)?
    }

    /// Runs `f` on a pooled read-only connection on the blocking pool.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let slot = self.read_slots.clone().acquire_owned().await.map_err(StoreError::backend)?;
        let (pool, path) = (self.readers.clone(), self.path.clone());
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            read_pooled(&pool, &path, f)
        })
        .await
        .map_err(StoreError::backend)?
    }

    /// Runs `f` on a pooled read-only connection right here, on the runtime's worker thread: for
    /// the point reads of the request path (a window's few hundred rows at most, or one key),
    /// where handing the read to the blocking pool and back cost more than the read itself
    /// (cold seed requests: 16.5k → 23.6k req/s, bench/README.md "The seed endpoints against
    /// nginx"). What this trades: while such a read waits for a page the kernel does not hold,
    /// its worker serves nothing else.
    async fn read_point<T>(&self, f: impl FnOnce(&Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let _slot = self.read_slots.acquire().await.map_err(StoreError::backend)?;
        read_pooled(&self.readers, &self.path, f)
    }
}

/// Runs `f` in one read transaction on a connection from `pool` (opened if none is free).
fn read_pooled<T>(
    pool: &Mutex<Vec<Connection>>,
    path: &str,
    f: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let conn = pool.lock().unwrap_or_else(|e| e.into_inner()).pop();
    let mut conn = match conn {
        Some(c) => c,
        None => open_reader(path)?,
    };
    // One snapshot for all of `f`'s statements: a commit or a merge step between two of them
    // would otherwise count a delta twice or not at all. Dropped: rolled back.
    let out = conn.transaction().map_err(db_err).and_then(|tx| f(&tx));
    let mut p = pool.lock().unwrap_or_else(|e| e.into_inner());
    if p.len() < READERS {
        p.push(conn);
    }
    out
}

#[async_trait]
impl Store for SqliteStore {
    async fn commit(&self, batch: WriteBatch) -> Result<Option<CommitPos>, StoreError> {
        let own = self.own.clone();
        let (due, pos) = self
            .write(move |w| {
                let pos = write::commit(w, &batch, &own)?;
                let due = w.merged_at.elapsed() >= maintain::MERGE_EVERY;
                if due {
                    w.merged_at = std::time::Instant::now();
                }
                Ok((due, pos))
            })
            .await?;
        if due && !self.maintaining.swap(true, std::sync::atomic::Ordering::AcqRel) {
            // After the batch is acknowledged, not before: its submitters need not wait for the
            // merge and checkpoint, and the next bodies are parsed while they run. The merge takes
            // the writer lock a run of series at a time, so commits slip in between.
            let (w, busy) = (self.writer.clone(), self.maintaining.clone());
            tokio::task::spawn_blocking(move || {
                maintain::maintain(&w);
                busy.store(false, std::sync::atomic::Ordering::Release);
            });
        }
        Ok(Some(pos))
    }

    async fn read_aggregate(&self, series: &SeriesKey, spans: &[Span]) -> Result<Agg, StoreError> {
        Ok(self.read_aggregate_at(series, spans).await?.0)
    }

    async fn read_aggregate_at(
        &self,
        series: &SeriesKey,
        spans: &[Span],
    ) -> Result<(Agg, Option<CommitPos>), StoreError> {
        self.read_point(|c| read::aggregate_at(c, series, spans)).await
    }

    async fn read_buckets(&self, series: &SeriesKey, bounds: &[i64]) -> Result<Vec<Agg>, StoreError> {
        let (series, bounds) = (series.clone(), bounds.to_vec());
        self.read(move |c| read::buckets(c, &series, &bounds)).await
    }

    async fn read_dim_aggregates(
        &self,
        metric: &str,
        dim: &str,
        spans: &[Span],
    ) -> Result<Vec<(String, Agg)>, StoreError> {
        let (metric, dim, spans) = (metric.to_string(), dim.to_string(), spans.to_vec());
        self.read(move |c| read::dim_aggregates(c, &metric, &dim, &spans)).await
    }

    async fn dim_labels(&self, dim: &str, values: &[String]) -> Result<Vec<Option<String>>, StoreError> {
        let (dim, values) = (dim.to_string(), values.to_vec());
        self.read(move |c| read::dim_labels(c, &dim, &values)).await
    }

    async fn dim_values(
        &self,
        dim: &str,
        prefix: &str,
        search: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(String, Option<String>)>, StoreError> {
        let (dim, prefix, search) = (dim.to_string(), prefix.to_string(), search.map(String::from));
        self.read(move |c| read::dim_values(c, &dim, &prefix, search.as_deref(), limit)).await
    }

    async fn idempotent_answer(&self, scope: &str, key: &str) -> Result<Option<StoredAnswer>, StoreError> {
        let (scope, key) = (scope.to_string(), key.to_string());
        self.read(move |c| read::idempotent_answer(c, &scope, &key)).await
    }

    async fn read_points(
        &self,
        series: &SeriesKey,
        res: Resolution,
        from: i64,
        to: i64,
    ) -> Result<Vec<(i64, Agg)>, StoreError> {
        let series = series.clone();
        self.read(move |c| read::points(c, &series, res, from, to)).await
    }

    async fn is_known(&self, dim: &str, value: &str) -> Result<bool, StoreError> {
        self.read_point(|c| read::is_known(c, dim, value)).await
    }

    fn foreign_commits(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        // As on PostgreSQL: the first receiver exists before the watcher starts, which stops
        // once none is left.
        let mut first = None;
        let tx = self.foreign.get_or_init(|| {
            let (tx, rx) = tokio::sync::watch::channel(0);
            first = Some(rx);
            commits::watch(self.path.clone(), self.own.clone(), tx.clone());
            tx
        });
        Some(first.unwrap_or_else(|| tx.subscribe()))
    }

    async fn scan_latest(&self, mut visit: Box<dyn LatestVisitor>) -> Result<bool, StoreError> {
        let bound = self.read(read::series_bound).await?;
        // Before the snapshot below: every commit from here on is noted by the visitor's owner.
        visit.begin(bound);
        self.read(move |c| {
            read::scan_latest(c, &mut *visit)?;
            visit.end();
            Ok(())
        })
        .await?;
        Ok(true)
    }

    async fn read_known_aggregate_at(
        &self,
        (dim, value): (&str, &str),
        series: &SeriesKey,
        spans: &[Span],
    ) -> Result<Option<(Agg, Option<CommitPos>)>, StoreError> {
        self.read_point(|c| {
            if !read::is_known(c, dim, value)? {
                return Ok(None);
            }
            read::aggregate_at(c, series, spans).map(Some)
        })
        .await
    }

    async fn stored_offsets(&self, source: &str) -> Result<Vec<(i32, i64)>, StoreError> {
        let source = source.to_string();
        self.read(move |c| read::stored_offsets(c, &source)).await
    }

    async fn dead_letters(&self, before: Option<i64>, limit: u32) -> Result<Vec<DeadLetter>, StoreError> {
        self.read(move |c| read::dead_letters(c, before, limit)).await
    }

    async fn raw_blocks(
        &self,
        name: &str,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<(i64, RawBlock)>, StoreError> {
        let name = name.to_string();
        self.read(move |c| read::raw_blocks(c, &name, before, limit)).await
    }

    async fn create_token(&self, t: TokenRecord) -> Result<(), StoreError> {
        self.write(move |c| write::create_token(c, &t)).await
    }

    async fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.read(read::list_tokens).await
    }

    async fn revoke_token(&self, name: &str, now_ms: i64) -> Result<bool, StoreError> {
        let name = name.to_string();
        self.write(move |c| write::revoke_token(c, &name, now_ms)).await
    }

    async fn delete_token(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_string();
        self.write(move |c| write::delete_token(c, &name)).await
    }

    async fn tokens_version(&self) -> Result<i64, StoreError> {
        self.read(read::tokens_version).await
    }

    async fn prune(&self, b: PruneBefore) -> Result<Pruned, StoreError> {
        let w = self.writer.clone();
        tokio::task::spawn_blocking(move || maintain::prune(&w, b)).await.map_err(StoreError::backend)?
    }

    async fn raw_watermark(&self) -> Result<i64, StoreError> {
        self.read(rebuild::raw_watermark).await
    }

    async fn raw_blocks_after(&self, after: i64, upto: i64, limit: u32) -> Result<Vec<(i64, RawBlock)>, StoreError> {
        self.read(move |c| rebuild::raw_blocks_after(c, after, upto, limit)).await
    }

    async fn raw_pruned_before(&self) -> Result<Option<i64>, StoreError> {
        self.read(rebuild::raw_pruned_before).await
    }

    async fn rebuild_claim(&self, req: ClaimRequest) -> Result<Claim, StoreError> {
        self.write(move |w| rebuild::claim(w, &req)).await
    }

    async fn rebuild_step(&self, step: RebuildStep) -> Result<(), StoreError> {
        self.write(move |w| rebuild::step(w, &step)).await
    }

    async fn rebuild_chunks(&self, job: i64) -> Result<Vec<Vec<u8>>, StoreError> {
        self.read(move |c| rebuild::chunks(c, job)).await
    }

    async fn rebuild_swap(
        &self,
        job: &RebuildJob,
        owner: &str,
        defs: Vec<MetricRecord>,
        fold: FoldTail,
    ) -> Result<Swapped, StoreError> {
        let (job, owner) = (job.clone(), owner.to_string());
        self.write(move |w| rebuild::swap(w, &job, &owner, &defs, fold)).await
    }

    async fn rebuild_jobs(&self, limit: u32) -> Result<Vec<RebuildJob>, StoreError> {
        self.read(move |c| rebuild::jobs(c, limit)).await
    }

    async fn metric_records(&self) -> Result<Vec<MetricRecord>, StoreError> {
        self.read(rebuild::metric_records).await
    }

    async fn put_metric_records(&self, records: Vec<MetricRecord>) -> Result<(), StoreError> {
        self.write(move |w| {
            let tx = w.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(db_err)?;
            rebuild::put_records(&tx, &records)?;
            tx.commit().map_err(db_err)
        })
        .await
    }

    async fn drop_metrics(&self, names: Vec<String>) -> Result<u64, StoreError> {
        self.write(move |w| rebuild::drop_metrics(w, &names)).await
    }

    async fn dead_letters_after(&self, after: i64, limit: u32) -> Result<Vec<StoredDeadLetter>, StoreError> {
        self.read(move |c| rebuild::dead_letters_after(c, after, limit)).await
    }

    async fn footprint(&self) -> Result<Footprint, StoreError> {
        let path = std::path::PathBuf::from(&self.path);
        let wal_bytes = self.wal.lock().unwrap_or_else(|e| e.into_inner()).wal_bytes();
        tokio::task::spawn_blocking(move || {
            let database_bytes = std::fs::metadata(&path).map(|m| m.len()).map_err(StoreError::backend)?;
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
            let free_bytes = rustix::fs::statvfs(dir).ok().map(|s| s.f_bavail.saturating_mul(s.f_frsize));
            Ok(Footprint { database_bytes, wal_bytes: Some(wal_bytes), free_bytes })
        })
        .await
        .map_err(StoreError::backend)?
    }

    async fn close(&self) -> Result<(), StoreError> {
        self.write(|c| {
            maintain::merge_deltas(c)?;
            c.pragma_update(None, "wal_checkpoint", "TRUNCATE").map_err(db_err)
        })
        .await?;
        self.wal.lock().unwrap_or_else(|e| e.into_inner()).close();
        self.readers.lock().unwrap_or_else(|e| e.into_inner()).clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests;
