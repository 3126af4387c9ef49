//! The storage contract: the [`Store`] trait every backend implements, and what goes through it.

use async_trait::async_trait;
use serde::Serialize;

use crate::rollup::{Agg, DimRow, Resolution, RollupRows, SeriesKey, Span};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The stored offset of a partition is not where the batch says it starts: another consumer
    /// advanced it (a rebalance). The batch was not applied.
    #[error("offset fence: {source_name} partition {partition} is at {stored:?}, batch expected {expected:?}")]
    Fenced { source_name: String, partition: i32, stored: Option<i64>, expected: Option<i64> },
    /// An idempotency key of the batch was committed before (by an earlier request). The batch
    /// was not applied.
    #[error("idempotency key {key:?} of {scope:?} was used before")]
    Duplicate { scope: String, key: String },
    #[error("a token named {0:?} already exists")]
    TokenExists(String),
    /// A store URL that cannot be used: the redacted URL and why.
    #[error("store URL {0}")]
    BadUrl(String),
    #[error("the store's schema is version {found}, newer than this binary's {supported}")]
    SchemaTooNew { found: i64, supported: i64 },
    /// Dead letters a replay meant to remove were gone (another replay took them): the batch
    /// was not applied.
    #[error("{0} of the dead letters being replayed were already replayed or removed")]
    Replayed(usize),
    /// The rebuild's lease was taken by another process (it stopped renewing it for too long).
    #[error("the rebuild lost its lease to another process")]
    LeaseLost,
    #[error("store closed")]
    Closed,
    /// The store cannot be reached or is overloaded now (connection lost, pool exhausted, busy,
    /// disk full, a timeout): worth retrying later.
    #[error("store unavailable: {0:#}")]
    Unavailable(anyhow::Error),
    /// The store refused something the batch holds (a value it cannot store); the transaction
    /// was rolled back, so nothing of it was applied.
    #[error("the store refused the batch: {0:#}")]
    Rejected(anyhow::Error),
    #[error(transparent)]
    Backend(#[from] anyhow::Error),
}

impl StoreError {
    pub fn backend(e: impl Into<anyhow::Error>) -> Self {
        StoreError::Backend(e.into())
    }

    /// Whether the request may succeed later (503 rather than 500).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Closed | StoreError::Unavailable(_))
    }
}

/// Moves a source partition's next offset from `expected` to `next` (fenced; `None` = never stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetAdvance {
    pub source: String,
    pub partition: i32,
    pub expected: Option<i64>,
    pub next: i64,
}

/// Raw events of one name: their NDJSON lines, encoded by [`crate::storage::raw_codec`].
#[derive(Debug, Clone)]
pub struct RawBlock {
    pub name: String,
    pub min_time_ms: i64,
    pub max_time_ms: i64,
    pub count: i64,
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NewDeadLetter {
    pub received_ms: i64,
    pub source: String,
    pub reason: String,
    #[serde(skip)]
    pub raw: Vec<u8>,
    pub topic: Option<String>,
    pub partition: Option<i32>,
    pub offset: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    pub id: i64,
    /// `raw` is the record's first [`DEAD_LETTER_PAGE_RAW`] bytes at most: a page of them stays
    /// small whatever was rejected. The record's stored size:
    pub raw_size: i64,
    #[serde(flatten)]
    pub letter: NewDeadLetter,
}

/// Most bytes of a dead letter's record a page reads (the rest stays stored).
pub const DEAD_LETTER_PAGE_RAW: i64 = 16 * 1024;

/// Everything one transaction writes.
#[derive(Debug, Default)]
pub struct WriteBatch {
    /// Bucket rows, in the lock order every writer uses.
    pub rollups: RollupRows,
    pub dims: Vec<DimRow>,
    pub raw_blocks: Vec<RawBlock>,
    pub dead_letters: Vec<NewDeadLetter>,
    pub offsets: Vec<OffsetAdvance>,
    /// Keys of the requests in the batch: each may be committed once (see `Store::idempotent_answer`).
    pub idempotency: Vec<IdempotencyRecord>,
    /// Dead letters replayed by this batch (their events are in it): removed in the same
    /// transaction, or the batch fails with [`StoreError::Replayed`] when one is already gone.
    pub replayed: Vec<i64>,
}

/// A request's idempotency key (unique within `scope`, the token's name) and the answer it got,
/// replayed to a retry of the same request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    pub scope: String,
    pub key: String,
    pub answer: String,
    pub at_ms: i64,
    /// A digest of the request's body: a key reused with another body is refused, not replayed.
    pub fingerprint: String,
}

/// The answer committed with an idempotency key, and the fingerprint of the request that got it
/// (`None` for keys stored before fingerprints were kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAnswer {
    pub answer: String,
    pub fingerprint: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenRecord {
    pub name: String,
    #[serde(skip)]
    pub hash: String,
    pub scopes: Vec<String>,
    pub created_ms: i64,
    pub expires_ms: Option<i64>,
    pub revoked_ms: Option<i64>,
}

/// A store's size on disk, and the free space beside it (`None` where a backend cannot tell:
/// PostgreSQL's disk is the server's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Footprint {
    /// The database (for SQLite the main file; for PostgreSQL `pg_database_size`).
    pub database_bytes: u64,
    /// SQLite's write-ahead log.
    pub wal_bytes: Option<u64>,
    /// Free space on the file system holding the store (for an unprivileged user).
    pub free_bytes: Option<u64>,
}

/// How a store is opened, beyond its URL.
#[derive(Debug, Clone, Copy)]
pub struct StoreOptions {
    /// SQLite: the size the WAL is kept under (see `sqlite::wal`).
    pub wal_limit_bytes: u64,
    /// SQLite: second buckets older than this many seconds (`retention.second_buckets`) are not
    /// written to `rollups` when pending rows are merged (their minute, hour and day buckets are);
    /// `None` keeps them until `prune`.
    pub second_buckets_s: Option<i64>,
    /// SQLite: the same for minute buckets (`retention.minute_buckets`): a late event's minute
    /// past retention is not written to its day's pack (see `sqlite::pack`).
    pub minute_buckets_s: Option<i64>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self { wal_limit_bytes: 256 * 1024 * 1024, second_buckets_s: None, minute_buckets_s: None }
    }
}

/// What retention removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub raw_blocks: u64,
    pub dead_letters: u64,
    pub buckets: u64,
}

/// Cut-off times (epoch ms / s) for `prune`.
#[derive(Debug, Clone, Copy)]
pub struct PruneBefore {
    pub raw_ms: i64,
    pub dead_letters_ms: i64,
    /// `None`: leave these buckets alone this time (their pass reads every series; see
    /// `app::prune_forever` for how often it runs).
    pub second_buckets_s: Option<i64>,
    pub minute_buckets_s: Option<i64>,
    pub idempotency_keys_ms: i64,
}

/// A rebuild's step: its chunk of partial rollups and how far it got (see `Store::rebuild_step`).
#[derive(Debug)]
pub struct RebuildStep {
    pub job: i64,
    pub owner: String,
    pub chunk: Vec<u8>,
    pub upto_block: i64,
    pub events: i64,
    pub skipped: i64,
    pub now_ms: i64,
    pub lease_ms: i64,
}

/// Asking for a rebuild's lease (see `Store::rebuild_claim`).
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    pub spec: RebuildSpec,
    pub owner: String,
    pub now_ms: i64,
    pub lease_ms: i64,
    /// The running job's owner is known to be dead (same host, no such process): take it over
    /// without waiting for its lease to run out.
    pub takeover: bool,
    /// The newest committed raw block now, recorded by a new job.
    pub target_block: i64,
}

/// A commit's place in a store's order of commits, for a backend that numbers them (SQLite, whose
/// writes are serialized anyway): a read at position `p` holds exactly the commits numbered up to
/// `p`. The read cache uses it to add to a read just the local commits its snapshot missed.
pub type CommitPos = u64;

/// What `Store::scan_latest` reports, row by row (SQLite: on a blocking thread; PostgreSQL: on
/// the runtime, in short runs between yields).
pub trait LatestVisitor: Send {
    /// Before the scan's snapshot: an upper bound of the number of series.
    fn begin(&mut self, series: u64);
    /// A dimension value that exists.
    fn value(&mut self, dim: &str, value: &str);
    /// The start of the latest bucket of series `(metric, dim, value)` at `res`.
    fn bucket(&mut self, series: (&str, &str, &str), res: Resolution, start: i64);
    /// Every row was visited.
    fn end(&mut self);
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Applies a batch in one transaction, or nothing of it; returns the commit's position when
    /// the backend numbers its commits.
    async fn commit(&self, batch: WriteBatch) -> Result<Option<CommitPos>, StoreError>;
    /// Merges the buckets of `series` covered by `spans`.
    async fn read_aggregate(&self, series: &SeriesKey, spans: &[Span]) -> Result<Agg, StoreError>;
    /// `read_aggregate`, and the position of the snapshot it read when the backend numbers its
    /// commits (PostgreSQL does not: its writers commit concurrently).
    async fn read_aggregate_at(
        &self,
        series: &SeriesKey,
        spans: &[Span],
    ) -> Result<(Agg, Option<CommitPos>), StoreError> {
        Ok((self.read_aggregate(series, spans).await?, None))
    }
    /// The buckets of `series` at `res` starting in `[from, to)`, in time order.
    async fn read_points(
        &self,
        series: &SeriesKey,
        res: Resolution,
        from: i64,
        to: i64,
    ) -> Result<Vec<(i64, Agg)>, StoreError>;
    /// The aggregates of `series` over each `[bounds[i], bounds[i + 1])` (a chart's buckets, which
    /// need not be aligned to the stored resolutions: each is covered exactly), in one snapshot.
    async fn read_buckets(&self, series: &SeriesKey, bounds: &[i64]) -> Result<Vec<Agg>, StoreError>;
    /// Every value of `dim` in `metric` with its aggregate over `spans` (values with no bucket
    /// there are left out): what a top-N ranks.
    async fn read_dim_aggregates(
        &self,
        metric: &str,
        dim: &str,
        spans: &[Span],
    ) -> Result<Vec<(String, Agg)>, StoreError>;
    /// The latest label of each of `values` of `dim` (`None` where there is none).
    async fn dim_labels(&self, dim: &str, values: &[String]) -> Result<Vec<Option<String>>, StoreError>;
    /// Values of dimension `dim` starting with `prefix` (or whose label contains `search`), in
    /// value order, with their latest labels.
    async fn dim_values(
        &self,
        dim: &str,
        prefix: &str,
        search: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(String, Option<String>)>, StoreError>;
    /// The answer stored with idempotency key `key` of `scope`, if a commit holds it.
    async fn idempotent_answer(&self, scope: &str, key: &str) -> Result<Option<StoredAnswer>, StoreError>;
    /// Has any accepted event carried `value` for dimension `dim`?
    async fn is_known(&self, dim: &str, value: &str) -> Result<bool, StoreError>;
    /// `is_known(value.0, value.1)` and, when it is, `read_aggregate_at(series, spans)`: what a
    /// request for one product asks, in one read where the backend can (SQLite: one snapshot on
    /// one connection). Values never stop being known, so two reads give the same answer.
    async fn read_known_aggregate_at(
        &self,
        value: (&str, &str),
        series: &SeriesKey,
        spans: &[Span],
    ) -> Result<Option<(Agg, Option<CommitPos>)>, StoreError> {
        if !self.is_known(value.0, value.1).await? {
            return Ok(None);
        }
        Ok(Some(self.read_aggregate_at(series, spans).await?))
    }
    /// Next offsets stored for each partition of `source`.
    async fn stored_offsets(&self, source: &str) -> Result<Vec<(i32, i64)>, StoreError>;
    /// Dead letters, newest first, with ids below `before`.
    async fn dead_letters(&self, before: Option<i64>, limit: u32) -> Result<Vec<DeadLetter>, StoreError>;
    /// Raw blocks of events named `name`, newest first, with ids below `before`: `(id, block)`.
    async fn raw_blocks(&self, name: &str, before: Option<i64>, limit: u32)
    -> Result<Vec<(i64, RawBlock)>, StoreError>;
    async fn create_token(&self, token: TokenRecord) -> Result<(), StoreError>;
    async fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError>;
    /// Marks the token revoked; false when there is no such active token.
    async fn revoke_token(&self, name: &str, now_ms: i64) -> Result<bool, StoreError>;
    /// Removes the token (active or not) from the table; false when there is none of that name.
    async fn delete_token(&self, name: &str) -> Result<bool, StoreError>;
    /// A number that changes whenever a token is created or revoked.
    async fn tokens_version(&self) -> Result<i64, StoreError>;
    async fn prune(&self, before: PruneBefore) -> Result<Pruned, StoreError>;
    /// A counter bumped whenever another process commits to this store, for a backend that can
    /// tell (PostgreSQL: `LISTEN`); `None` where it cannot (other processes' writes then show
    /// within the read cache's ttl).
    fn foreign_commits(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
    /// Every dimension value, and every series' latest bucket at each resolution below all-time
    /// (merged or not; an unmerged second counts for the coarser buckets it will make), from one
    /// snapshot, for the read cache's index (`api::cache::index`). `visit.begin` is called before
    /// that snapshot is taken. False: the backend does not offer it (the index then stays
    /// incomplete and the cache reads the store as before).
    async fn scan_latest(&self, visit: Box<dyn LatestVisitor>) -> Result<bool, StoreError> {
        let _ = visit;
        Ok(false)
    }
    /// How much disk the store takes, and how much is left where it lives (when it can tell).
    async fn footprint(&self) -> Result<Footprint, StoreError>;

    // Rebuilds, metric definitions and dead-letter replay (see `storage::rebuild`).

    /// The newest raw block id such that every block at or below it is committed (a later commit
    /// takes a higher id).
    async fn raw_watermark(&self) -> Result<i64, StoreError>;
    /// Raw blocks of every name with ids in `(after, upto]`, oldest first.
    async fn raw_blocks_after(&self, after: i64, upto: i64, limit: u32) -> Result<Vec<(i64, RawBlock)>, StoreError>;
    /// The time (epoch ms) before which raw events have been pruned by retention (`None`: never).
    async fn raw_pruned_before(&self) -> Result<Option<i64>, StoreError>;
    /// Takes the lease of the running rebuild with this spec, or starts one; `Busy` while another
    /// owner holds a live lease (on any job: one rebuild at a time per store).
    async fn rebuild_claim(&self, req: ClaimRequest) -> Result<Claim, StoreError>;
    /// Stores a step's chunk and advances its job, renewing the lease; `LeaseLost` when the
    /// owner no longer holds it.
    async fn rebuild_step(&self, step: RebuildStep) -> Result<(), StoreError>;
    /// A job's chunks, in step order.
    async fn rebuild_chunks(&self, job: i64) -> Result<Vec<Vec<u8>>, StoreError>;
    /// In one transaction, with writers held off: folds the raw blocks after the job's progress
    /// (`fold`), replaces the spec's rows with the result, marks the job done and records `defs`.
    async fn rebuild_swap(
        &self,
        job: &RebuildJob,
        owner: &str,
        defs: Vec<MetricRecord>,
        fold: FoldTail,
    ) -> Result<Swapped, StoreError>;
    /// The latest rebuild jobs, newest first.
    async fn rebuild_jobs(&self, limit: u32) -> Result<Vec<RebuildJob>, StoreError>;
    /// The metric definitions the rollups were built with.
    async fn metric_records(&self) -> Result<Vec<MetricRecord>, StoreError>;
    /// Inserts or replaces metric definitions.
    async fn put_metric_records(&self, records: Vec<MetricRecord>) -> Result<(), StoreError>;
    /// Deletes every rollup row and the recorded definition of each metric; returns rows deleted.
    async fn drop_metrics(&self, names: Vec<String>) -> Result<u64, StoreError>;
    /// Dead letters in full with ids above `after`, oldest first.
    async fn dead_letters_after(&self, after: i64, limit: u32) -> Result<Vec<StoredDeadLetter>, StoreError>;

    /// Flushes and releases resources (checkpoints the WAL for SQLite).
    async fn close(&self) -> Result<(), StoreError>;
}

// Rebuilds and replay (see `storage::rebuild`).

/// What a rebuild recomputes: the metrics, from a day boundary (`None`: from the beginning).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct RebuildSpec {
    pub metrics: Vec<String>,
    /// Epoch seconds, a UTC day's start: buckets starting here or later are rebuilt; the all-time
    /// bucket becomes the kept days before it plus the rebuilt part.
    pub from_s: Option<i64>,
}

/// A rebuild job as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RebuildJob {
    pub id: i64,
    pub spec: RebuildSpec,
    /// `running`, `done` or `abandoned` (a different rebuild took over after the lease ran out).
    pub state: String,
    /// Who holds the lease (host:pid) and until when (epoch ms).
    pub owner: String,
    pub lease_until_ms: i64,
    pub started_ms: i64,
    pub updated_ms: i64,
    /// The last raw block id folded into a stored chunk.
    pub progress_block: i64,
    /// The newest raw block id when the job started (what "done" is measured against).
    pub target_block: i64,
    pub events_read: i64,
    /// Events the current schemas refuse (they are left out of the rebuilt rollups).
    pub events_skipped: i64,
}

/// The outcome of trying to take a rebuild's lease.
#[derive(Debug)]
pub enum Claim {
    /// This owner now holds the job (new, or resumed after a step).
    Held(RebuildJob),
    /// Another owner's lease is live.
    Busy(RebuildJob),
}

/// The rows a swap writes: every rebuilt bucket (all-time ones included) of the rebuilt metrics.
#[derive(Debug, Default)]
pub struct Rebuilt {
    /// Sorted as [`RollupRows`] requires.
    pub rows: RollupRows,
    pub dims: Vec<DimRow>,
    pub events: i64,
    pub skipped: i64,
}

/// Folds the raw blocks committed since the job's last step into the job's rollups, inside the
/// swap's transaction.
pub type FoldTail = Box<dyn FnOnce(Vec<(i64, RawBlock)>) -> anyhow::Result<Rebuilt> + Send>;

/// What a swap did.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Swapped {
    pub rows_deleted: u64,
    pub rows_written: u64,
    /// Events folded inside the swap (committed after the last step).
    pub tail_events: i64,
}

/// A metric's definition as the store remembers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MetricRecord {
    pub name: String,
    pub fingerprint: String,
    /// `current`: its rollups were built with this definition; `stale`: they were not (a new or
    /// changed metric that has not been rebuilt).
    pub state: String,
    pub updated_ms: i64,
}

/// A dead letter in full, for replay.
#[derive(Debug, Clone)]
pub struct StoredDeadLetter {
    pub id: i64,
    pub letter: NewDeadLetter,
}
