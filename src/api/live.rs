//! What open live streams share with the rest of the API: the bell rung after each commit, and
//! the count of streams each token holds open.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::ingest::writer::{CommitObserver, Committed};
use crate::rollup::SeriesKey;

/// Most streams one token keeps open.
pub const MAX_STREAMS_PER_TOKEN: usize = 16;

/// Rings after each local commit: what open streams wait on between ticks. Commits of other
/// processes sharing a PostgreSQL store are seen at the next tick.
/// When the server stops, it rings once more with [`CommitBell::closing`] set, and streams end.
#[derive(Debug)]
pub struct CommitBell {
    rings: tokio::sync::watch::Sender<u64>,
    closing: std::sync::atomic::AtomicBool,
}

impl Default for CommitBell {
    fn default() -> Self {
        Self { rings: tokio::sync::watch::Sender::new(0), closing: false.into() }
    }
}

impl CommitBell {
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.rings.subscribe()
    }

    fn ring(&self) {
        self.rings.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Another process committed to the shared store: streams re-read their figures.
    pub fn ring_foreign(&self) {
        self.ring();
    }

    /// The server is stopping: open streams end (instead of holding the shutdown up).
    pub fn close(&self) {
        self.closing.store(true, std::sync::atomic::Ordering::SeqCst);
        self.ring();
    }

    pub fn closing(&self) -> bool {
        self.closing.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl CommitObserver for CommitBell {
    fn committed(&self, _: &Committed<'_>) {
        self.ring();
    }

    fn commit_failed(&self, _: &[SeriesKey]) {}
}

/// Streams open per token.
#[derive(Debug, Default)]
pub struct OpenStreams(Mutex<HashMap<String, usize>>);

/// One stream's place in [`OpenStreams`], given back when the stream ends.
pub struct Slot {
    open: Arc<OpenStreams>,
    token: String,
}

impl OpenStreams {
    pub fn take(self: &Arc<Self>, token: &str) -> Option<Slot> {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(token.to_string()).or_default();
        if *n >= MAX_STREAMS_PER_TOKEN {
            return None;
        }
        *n += 1;
        Some(Slot { open: self.clone(), token: token.to_string() })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut m = self.open.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.token) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.token);
            }
        }
    }
}
