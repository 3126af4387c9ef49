//! Storage: one trait, backends chosen by URL (`sqlite://PATH`, `postgres://…`).
//!
//! A backend owns durability. `commit` is one transaction holding everything a batch produced —
//! rollup deltas, raw events, dead letters, dimension values and source offsets — so a crash leaves
//! either all of it or none of it.

use std::sync::Arc;

mod postgres;
pub mod raw_codec;
pub mod rebuild;
mod sqlite;
mod store;
mod url;

pub use store::{
    ClaimRequest, CommitPos, DEAD_LETTER_PAGE_RAW, DeadLetter, Footprint, IdempotencyRecord, LatestVisitor,
    NewDeadLetter, OffsetAdvance, PruneBefore, Pruned, RawBlock, RebuildStep, Store, StoreError, StoreOptions,
    StoredAnswer, TokenRecord, WriteBatch,
};
pub use url::{PgTls, SslMode, StoreUrl, redact};

/// Opens the store named by `url`, creating and migrating it as needed.
pub async fn open(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    open_url(&StoreUrl::parse(url)?, StoreOptions::default()).await
}

/// Checks that the store can be reached, creating and migrating nothing (`check-config`):
/// PostgreSQL is connected to (a missing database, a refused login or a TLS failure is an error);
/// a SQLite file that does not exist yet is a note, since `serve` creates it.
pub async fn probe(url: &StoreUrl) -> Result<Option<String>, StoreError> {
    match url {
        StoreUrl::Sqlite { path } => {
            let file = std::path::Path::new(path);
            let dir = file.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
            Ok(if file.exists() {
                None
            } else if dir.exists() {
                Some(format!("the SQLite file {path} does not exist yet: serve creates it"))
            } else {
                Some(format!(
                    "neither the SQLite file {path} nor its directory {} exists: serve creates the directory \
                     only when its parent exists (is the path right?)",
                    dir.display()
                ))
            })
        }
        StoreUrl::Postgres { config, tls, .. } => postgres::probe(config, tls).await.map(|()| None),
    }
}

/// Opens a parsed store URL.
pub async fn open_url(url: &StoreUrl, options: StoreOptions) -> Result<Arc<dyn Store>, StoreError> {
    match url {
        StoreUrl::Sqlite { path } => Ok(Arc::new(sqlite::SqliteStore::open(path, options).await?)),
        StoreUrl::Postgres { config, tls, .. } => Ok(Arc::new(postgres::PgStore::open((**config).clone(), tls).await?)),
    }
}
