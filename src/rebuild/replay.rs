//! Dead-letter replay: letters that today's schemas accept are ingested with their original time
//! and removed from the dead letters in the same transaction, so a crash mid-replay neither loses
//! nor doubles one, and a second replay (or two at once) changes nothing.

use crate::config::Settings;
use crate::event::Validator;
use crate::ingest::writer::{WriteError, Writer};
use crate::ingest::{Origin, Pending};
use crate::rollup::Metrics;
use crate::storage::{Store, StoreError};

/// Dead letters examined per batch (one transaction each).
const PAGE: u32 = 500;

/// Which dead letters to try again.
#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// Only letters whose reason contains this text.
    pub reason_contains: Option<String>,
    /// Only letters received at or after this time (epoch ms).
    #[serde(skip)]
    pub since_ms: Option<i64>,
    /// Count what would be replayed; change nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// What a replay did.
#[derive(Debug, Default, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Report {
    /// Dead letters matching the filter.
    pub examined: u64,
    /// Ingested and removed from the dead letters (would be, in a dry run).
    pub replayed: u64,
    /// Still refused by today's schemas; kept.
    pub still_rejected: u64,
    /// A few reasons they are still refused for, with counts.
    pub reasons: Vec<(String, u64)>,
    pub dry_run: bool,
}

/// Where replayed batches are committed: through the server's writer (its read cache and live
/// streams see them, read-after-ack) or straight to a store (the command line).
pub enum Sink<'a> {
    Writer(&'a Writer),
    Store(&'a dyn Store),
}

impl Sink<'_> {
    async fn commit(&self, pending: Pending) -> Result<(), StoreError> {
        match self {
            Sink::Store(store) => store.commit(pending.into_batch()).await.map(drop),
            Sink::Writer(w) => w.submit(pending).await.map_err(|e| match e {
                WriteError::Replayed => StoreError::Replayed(0),
                other => StoreError::Unavailable(anyhow::anyhow!("{other}")),
            }),
        }
    }
}

/// Replays the dead letters `filter` selects, oldest first.
pub async fn replay(
    store: &dyn Store,
    sink: Sink<'_>,
    settings: &Settings,
    filter: &Filter,
) -> Result<Report, StoreError> {
    let validator = Validator::new(settings);
    let metrics = Metrics::new(settings);
    let mut report = Report { dry_run: filter.dry_run, ..Report::default() };
    let mut after = 0;
    loop {
        let page = store.dead_letters_after(after, PAGE).await?;
        let Some(last) = page.last().map(|l| l.id) else { break };
        let mut pending = Pending::default();
        let (mut replayed, mut examined, mut still, mut reasons) = (0, 0, 0, Vec::new());
        for l in &page {
            let d = &l.letter;
            let wanted = filter.reason_contains.as_deref().is_none_or(|t| d.reason.contains(t))
                && filter.since_ms.is_none_or(|s| d.received_ms >= s);
            if !wanted {
                continue;
            }
            examined += 1;
            match validator.validate(&d.raw, d.received_ms, d.received_ms) {
                Ok(event) => {
                    let origin = Origin {
                        source: &d.source,
                        topic: d.topic.as_deref(),
                        partition: d.partition,
                        offset: d.offset,
                        key: None,
                        source_ms: None,
                    };
                    pending.accept(&metrics, event, &origin);
                    pending.replayed.push(l.id);
                    replayed += 1;
                }
                Err(why) => {
                    still += 1;
                    reasons.push(why.to_string());
                }
            }
        }
        if replayed > 0 && !filter.dry_run {
            pending.seal();
            match sink.commit(pending).await {
                // Another replay took some of these first: theirs counted them; read the page again.
                Err(StoreError::Replayed(_)) => continue,
                r => r?,
            }
        }
        report.replayed += replayed;
        report.examined += examined;
        report.still_rejected += still;
        for r in reasons {
            note_reason(&mut report.reasons, r);
        }
        after = last;
    }
    Ok(report)
}

/// Counts a reason among the first few distinct ones.
fn note_reason(reasons: &mut Vec<(String, u64)>, reason: String) {
    if let Some((_, n)) = reasons.iter_mut().find(|(r, _)| *r == reason) {
        *n += 1;
    } else if reasons.len() < 10 {
        reasons.push((reason, 1));
    }
}
