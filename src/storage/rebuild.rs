//! What rebuilding rollups from the raw events, and replaying dead letters, exchange with a store.
//!
//! A rebuild folds raw blocks in steps; each step's partial rollups are stored as a chunk with the
//! job's progress (the last raw block id folded), so a rebuild killed at any point resumes after
//! its last step. The swap then replaces the metrics' rows in one transaction that also folds the
//! raw blocks committed since the last step, while writers are held off: readers see the old rows
//! or the new ones, and an event committed during the rebuild is counted once.

pub use super::store::{Claim, FoldTail, MetricRecord, RebuildJob, RebuildSpec, Rebuilt, StoredDeadLetter, Swapped};
use crate::rollup::{Agg, DimRow, Resolution, RollupRow, RollupRows, SeriesKey};

/// A day's start at or after `s` (epoch seconds, UTC).
pub fn day_up(s: i64) -> i64 {
    let d = Resolution::Day.seconds();
    s.div_euclid(d) * d + if s.rem_euclid(d) == 0 { 0 } else { d }
}

/// The rows a swap writes: the rebuilt buckets, each series' all-time bucket merged with the
/// days it keeps (`kept`: the merged day buckets before the rebuilt range).
pub fn swap_batch(rows: RollupRows, kept: Vec<(SeriesKey, Agg)>, dims: Vec<DimRow>) -> super::WriteBatch {
    let rollups = if kept.is_empty() {
        rows
    } else {
        let mut kept: std::collections::HashMap<SeriesKey, Agg> = kept.into_iter().collect();
        let mut out: Vec<(SeriesKey, RollupRow)> = Vec::with_capacity(rows.len() + kept.len());
        for (key, r) in rows.iter() {
            let mut r = r.clone();
            if r.res == Resolution::All
                && let Some(k) = kept.remove(key)
            {
                r.agg.merge(&k);
            }
            out.push((key.clone(), r));
        }
        for (key, agg) in kept {
            out.push((key, RollupRow { series: 0, res: Resolution::All, start: 0, agg }));
        }
        out.sort_by(|a, b| (&a.0, a.1.res, a.1.start).cmp(&(&b.0, b.1.res, b.1.start)));
        let mut series: Vec<SeriesKey> = Vec::new();
        let mut rows = Vec::with_capacity(out.len());
        for (key, mut r) in out {
            if series.last() != Some(&key) {
                series.push(key);
            }
            r.series = (series.len() - 1) as u32;
            rows.push(r);
        }
        RollupRows::from_parts(series, rows)
    };
    super::WriteBatch { rollups, dims, ..super::WriteBatch::default() }
}
