//! Keeping the write-ahead log small whatever the load: a thread of its own checkpoints the WAL
//! into the database as soon as it grows, independently of the writer and of the merge (which
//! used to run first and, on a store of 100,000 busy series, held the checkpoint back for minutes
//! while the WAL reached 4.5 GB).
//!
//! - Every [`TICK`], when the WAL grew, a PASSIVE checkpoint copies what no reader still needs; it
//!   never waits for readers or the writer. Once everything is copied and no reader uses the WAL,
//!   the writer's next transaction starts over at the WAL's beginning, and SQLite truncates the
//!   file to `journal_size_limit` (the limit) when it does.
//! - Should the file still exceed the limit (`storage.wal_limit_bytes`, 256 MiB) (readers kept it busy), a TRUNCATE checkpoint
//!   waits up to [`TRUNCATE_WAIT`] for the writer and the readers (each holds them for
//!   milliseconds), blocking new writes only meanwhile, and empties the file.
//!
//! So the WAL stays near what is written between two ticks, and at most the limit plus that.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rusqlite::Connection;

use super::conn::db_err;
use crate::storage::StoreError;

/// How often the WAL's size is looked at.
const TICK: Duration = Duration::from_millis(100);
/// How long a TRUNCATE checkpoint may wait for the writer and readers.
const TRUNCATE_WAIT: Duration = Duration::from_millis(250);

/// The running keeper; stops (and its thread ends) when dropped or closed.
pub(super) struct WalKeeper {
    stop: Arc<AtomicBool>,
    wal_bytes: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl WalKeeper {
    /// Starts keeping the WAL of the database at `db_path` under `limit` bytes.
    pub(super) fn start(db_path: &str, limit: u64) -> Result<Self, StoreError> {
        let conn = open(db_path, limit)?;
        let wal = PathBuf::from(format!("{db_path}-wal"));
        let (stop, wal_bytes) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let (flag, size) = (stop.clone(), wal_bytes.clone());
        let thread = std::thread::Builder::new()
            .name("sqlite-wal".into())
            .spawn(move || keep(&conn, &wal, limit, &flag, &size))
            .map_err(StoreError::backend)?;
        Ok(Self { stop, wal_bytes, thread: Some(thread) })
    }

    /// The WAL's size at the last look.
    pub(super) fn wal_bytes(&self) -> u64 {
        self.wal_bytes.load(Ordering::Relaxed)
    }

    pub(super) fn close(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for WalKeeper {
    fn drop(&mut self) {
        self.close();
    }
}

fn open(path: &str, limit: u64) -> Result<Connection, StoreError> {
    let c = Connection::open(path).map_err(db_err)?;
    c.pragma_update(None, "wal_autocheckpoint", 0).map_err(db_err)?;
    c.pragma_update(None, "journal_size_limit", i64::try_from(limit).unwrap_or(i64::MAX)).map_err(db_err)?;
    Ok(c)
}

fn keep(conn: &Connection, wal: &PathBuf, limit: u64, stop: &AtomicBool, size: &AtomicU64) {
    let mut checkpointed_at: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(TICK);
        let bytes = std::fs::metadata(wal).map(|m| m.len()).unwrap_or(0);
        size.store(bytes, Ordering::Relaxed);
        if bytes == checkpointed_at && bytes <= limit {
            continue;
        }
        // PASSIVE never waits; (busy, frames in the log, frames checkpointed).
        let _ = conn.busy_timeout(Duration::ZERO);
        match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))) {
            Ok(_) => checkpointed_at = bytes,
            Err(e) => tracing::debug!(error = %e, "WAL checkpoint (passive) failed; will retry"),
        }
        if bytes > limit {
            let _ = conn.busy_timeout(TRUNCATE_WAIT);
            match conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get::<_, i64>(0)) {
                Ok(0) => tracing::debug!(bytes, "WAL over its limit: truncated"),
                Ok(_) => tracing::debug!(bytes, "WAL over its limit: readers kept it busy; will retry"),
                Err(e) => tracing::debug!(error = %e, "WAL checkpoint (truncate) failed; will retry"),
            }
            let _ = conn.busy_timeout(Duration::ZERO);
        }
    }
}
