//! Storage: one trait, backends chosen by URL (`sqlite://PATH`, `postgres://…`).
//!
//! A backend owns durability. `commit` is one transaction holding everything a batch produced —
//! rollup deltas, raw events, dead letters, dimension values and source offsets — so a crash leaves
//! either all of it or none of it.

use std::sync::Arc;

mod postgres;
mod sqlite;
mod store;
mod url;

pub use store::{
    CommitPos, DEAD_LETTER_PAGE_RAW, DeadLetter, Footprint, IdempotencyRecord, NewDeadLetter, OffsetAdvance,
    PruneBefore, Pruned, RawBlock, Store, StoreError, StoreOptions, StoredAnswer, TokenRecord, WriteBatch,
};
pub use url::{PgTls, SslMode, StoreUrl, redact};

/// Opens the store named by `url`, creating and migrating it as needed.
pub async fn open(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    open_url(&StoreUrl::parse(url)?, StoreOptions::default()).await
}

/// Opens a parsed store URL.
pub async fn open_url(url: &StoreUrl, options: StoreOptions) -> Result<Arc<dyn Store>, StoreError> {
    match url {
        StoreUrl::Sqlite { path } => Ok(Arc::new(sqlite::SqliteStore::open(path, options).await?)),
        StoreUrl::Postgres { config, tls, .. } => Ok(Arc::new(postgres::PgStore::open((**config).clone(), tls).await?)),
    }
}
