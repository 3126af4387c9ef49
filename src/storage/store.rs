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

/// Raw events of one name, as zstd-compressed NDJSON.
#[derive(Debug, Clone)]
pub struct RawBlock {
    pub name: String,
    pub min_time_ms: i64,
    pub max_time_ms: i64,
    pub count: i64,
    pub zstd: Vec<u8>,
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
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self { wal_limit_bytes: 256 * 1024 * 1024 }
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
    pub second_buckets_s: i64,
    pub minute_buckets_s: i64,
    pub idempotency_keys_ms: i64,
}

/// A commit's place in a store's order of commits, for a backend that numbers them (SQLite, whose
/// writes are serialized anyway): a read at position `p` holds exactly the commits numbered up to
/// `p`. The read cache uses it to add to a read just the local commits its snapshot missed.
pub type CommitPos = u64;

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
    /// How much disk the store takes, and how much is left where it lives (when it can tell).
    async fn footprint(&self) -> Result<Footprint, StoreError>;
    /// Flushes and releases resources (checkpoints the WAL for SQLite).
    async fn close(&self) -> Result<(), StoreError>;
}
