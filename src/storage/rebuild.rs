//! What rebuilding rollups from the raw events, and replaying dead letters, exchange with a store.
//!
//! A rebuild folds raw blocks in steps; each step's partial rollups are stored as a chunk with the
//! job's progress (the last raw block id folded), so a rebuild killed at any point resumes after
//! its last step. The swap then replaces the metrics' rows in one transaction that also folds the
//! raw blocks committed since the last step, while writers are held off: readers see the old rows
//! or the new ones, and an event committed during the rebuild is counted once.

pub use super::store::{Claim, FoldTail, MetricRecord, RebuildJob, RebuildSpec, Rebuilt, StoredDeadLetter, Swapped};
use crate::rollup::{Agg, BucketKey, DimRow, Resolution, RollupRows, SeriesKey};

/// A day's start at or after `s` (epoch seconds, UTC).
pub fn day_up(s: i64) -> i64 {
    let d = Resolution::Day.seconds();
    s.div_euclid(d) * d + if s.rem_euclid(d) == 0 { 0 } else { d }
}

/// The rows a swap writes: the rebuilt buckets, each series' all-time bucket merged with the
/// days it keeps.
pub fn swap_batch(
    rows: Vec<(SeriesKey, Resolution, i64, Agg)>,
    kept: Vec<(SeriesKey, Agg)>,
    dims: Vec<DimRow>,
) -> super::WriteBatch {
    let buckets = rows
        .into_iter()
        .map(|(series, res, start, agg)| (BucketKey { series, res, start }, agg))
        .chain(kept.into_iter().map(|(series, agg)| (BucketKey { series, res: Resolution::All, start: 0 }, agg)));
    super::WriteBatch { rollups: RollupRows::from_buckets(buckets), dims, ..super::WriteBatch::default() }
}
