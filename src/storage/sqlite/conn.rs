//! The writer connection and the caches that live with it; the error every SQLite call maps to.

use rusqlite::Connection;

use std::sync::Arc;

use crate::rollup::{FastMap, SeriesKey};
use crate::storage::StoreError;

/// Dimension values known to be in `dim_values` (with the label stored), per dimension.
pub(super) type DimCache = FastMap<Arc<str>, FastMap<String, Option<String>>>;

/// The writer connection, with the ids of the series it has seen committed.
pub(super) struct WriterConn {
    pub(super) conn: Connection,
    pub(super) series: FastMap<SeriesKey, i64>,
    /// Dimension values it has seen committed to `dim_values` (never deleted), per dimension.
    pub(super) dims: DimCache,
    /// When the recent tables were last merged into `rollups`.
    pub(super) merged_at: std::time::Instant,
    /// Rows the next merge step moves, sized from the last steps' times (see `maintain`).
    pub(super) merge_step_rows: i64,
    /// Second buckets older than this many seconds are left out of merges (`StoreOptions`).
    pub(super) second_buckets_s: Option<i64>,
    /// The same for minute buckets.
    pub(super) minute_buckets_s: Option<i64>,
}

impl std::ops::Deref for WriterConn {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.conn
    }
}

impl std::ops::DerefMut for WriterConn {
    fn deref_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }
}

/// Classifies a SQLite error (see [`StoreError`]).
pub(super) fn db_err(e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode::*;
    match &e {
        rusqlite::Error::SqliteFailure(f, _) => match f.code {
            DatabaseBusy | DatabaseLocked | DiskFull | SystemIoFailure | CannotOpen | OutOfMemory => {
                StoreError::Unavailable(e.into())
            }
            ConstraintViolation | TooBig => StoreError::Rejected(e.into()),
            _ => StoreError::backend(e),
        },
        // A decimal function refused its input (an overflowing sum).
        rusqlite::Error::UserFunctionError(_) => StoreError::Rejected(e.into()),
        _ => StoreError::backend(e),
    }
}
