//! Other processes' commits to the same file, as PostgreSQL's `LISTEN` tells them there: every
//! commit bumps `meta.commit_seq` in its transaction; this process's writer notes each number it
//! takes (inside its transaction, so before the number can be seen), and a thread polls the
//! counter every [`POLL`]. A number it did not take is another process's commit (or a rebuild's
//! swap, which clears the caches anyway). A commit of its own that failed may have left its
//! number to be taken again by another process, so it counts as foreign too.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::watch;

use super::conn::db_err;
use super::schema::open_reader;
use crate::storage::StoreError;

/// How often the counter is read: other processes' commits show within about this.
const POLL: Duration = Duration::from_millis(10);

/// Most numbers kept for the poller; beyond, they are dropped and the next poll counts a
/// foreign commit (a poller that stopped must not make them pile up).
const MAX_TAKEN: usize = 1 << 16;

/// The commit numbers this process's writer took and the poller has not seen yet.
#[derive(Debug, Default)]
pub(super) struct OwnCommits(Mutex<Own>);

#[derive(Debug, Default)]
struct Own {
    /// Set while a poller runs: without one, nothing is kept.
    watched: bool,
    taken: BTreeSet<u64>,
    /// A commit of ours failed after taking a number.
    doubt: bool,
}

impl OwnCommits {
    fn own(&self) -> std::sync::MutexGuard<'_, Own> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The writer took number `n`, in a transaction not committed yet.
    pub(super) fn took(&self, n: u64) {
        let mut own = self.own();
        if !own.watched {
            return;
        }
        if own.taken.len() >= MAX_TAKEN {
            own.taken.clear();
            own.doubt = true;
        }
        own.taken.insert(n);
    }

    /// A poller starts (true) or stops.
    fn watched(&self, on: bool) {
        let mut own = self.own();
        own.watched = on;
        own.taken.clear();
    }

    /// The transaction that took `n` failed: whoever commits next may take `n` again.
    pub(super) fn failed(&self, n: u64) {
        let mut own = self.own();
        own.taken.remove(&n);
        own.doubt = true;
    }

    /// The counter moved from `last` to `now`: whether a number in between was not ours.
    fn foreign_between(&self, last: u64, now: u64) -> bool {
        let mut own = self.own();
        let mut foreign = std::mem::take(&mut own.doubt) || now < last;
        if now > last {
            let ours = own.taken.range(last + 1..=now).count() as u64;
            foreign |= ours < now - last;
            own.taken.retain(|n| *n > now);
        }
        foreign
    }
}

fn commit_seq(c: &Connection) -> Result<u64, StoreError> {
    c.prepare_cached("SELECT value FROM meta WHERE key = 'commit_seq'")
        .and_then(|mut st| st.query_row([], |r| r.get::<_, i64>(0)))
        .map(|n| n.max(0) as u64)
        .map_err(db_err)
}

/// Polls on a thread of its own until every receiver of `tx` is gone; bumps `tx` at each foreign
/// commit, and once at the start (what was cached before may miss commits not seen).
pub(super) fn watch(path: String, own: std::sync::Arc<OwnCommits>, tx: watch::Sender<u64>) {
    own.watched(true);
    let spawned = std::thread::Builder::new().name("sqlite-commits".into()).spawn(move || {
        let bump = |tx: &watch::Sender<u64>| tx.send_modify(|n| *n = n.wrapping_add(1));
        let mut conn: Option<Connection> = None;
        let mut last: Option<u64> = None;
        while !tx.is_closed() {
            let read = match conn.as_ref() {
                Some(c) => commit_seq(c),
                None => open_reader(&path).and_then(|c| {
                    let n = commit_seq(&c)?;
                    conn = Some(c);
                    Ok(n)
                }),
            };
            match read {
                Ok(now) => {
                    let foreign = last.is_none_or(|l| own.foreign_between(l, now));
                    last = Some(now);
                    if foreign {
                        bump(&tx);
                    }
                }
                Err(e) => {
                    // Commits may pass unseen until it reads again: start over then.
                    tracing::warn!(error = %e, "reading the store's commit counter failed; retrying");
                    (conn, last) = (None, None);
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
            std::thread::sleep(POLL);
        }
        own.watched(false);
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "could not start watching other processes' commits; they show within the cache's ttl");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_not_taken_here_are_foreign() {
        let own = OwnCommits::default();
        own.took(1);
        assert!(own.own().taken.is_empty(), "nothing is kept while no poller runs");
        own.watched(true);
        assert!(!own.foreign_between(5, 5));
        own.took(6);
        own.took(7);
        assert!(!own.foreign_between(5, 7), "both ours");
        own.took(9);
        assert!(own.foreign_between(7, 9), "8 was not ours");
        own.took(10);
        assert!(!own.foreign_between(9, 9), "10 is not visible yet");
        assert!(!own.foreign_between(9, 10));
        own.took(11);
        own.failed(11);
        assert!(own.foreign_between(10, 10), "a failed commit of ours leaves a doubt");
        assert!(!own.foreign_between(10, 10), "once");
        assert!(own.foreign_between(10, 3), "the counter went back: another file");
    }
}
