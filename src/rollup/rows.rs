//! The bucket rows of one commit, in the order every writer locks them.

use std::sync::Arc;

use super::agg::{Agg, BucketKey, SeriesKey};
use super::time::Resolution;

/// A series' one-second buckets `(second, agg)` in a batch. Most series of a batch get one
/// event (a cold product's), so the first bucket lives inline: no allocation, and ~90 bytes
/// per series rather than a 288-byte vector of four.
pub type Seconds = smallvec::SmallVec<[(i64, Agg); 1]>;

/// The all-time, day, hour and minute buckets of one series' second buckets, which must be sorted
/// by second with each second once. Each coarser bucket is a run of consecutive seconds, so the
/// buckets come out ordered by (resolution, start), coarsest first: the lock order.
pub fn coarser_buckets(secs: &[(i64, Agg)]) -> impl Iterator<Item = (Resolution, i64, Agg)> + '_ {
    [Resolution::All, Resolution::Day, Resolution::Hour, Resolution::Minute].into_iter().flat_map(move |res| {
        let mut out: Vec<(Resolution, i64, Agg)> = Vec::new();
        for (t, a) in secs {
            let start = res.bucket_of(*t);
            match out.last_mut() {
                Some((_, s, agg)) if *s == start => agg.merge(a),
                _ => out.push((res, start, a.clone())),
            }
        }
        out
    })
}

/// A dimension value a commit saw: when first, and the latest label it carried (see
/// `config::Settings::labels`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DimRow {
    pub dim: Arc<str>,
    pub value: String,
    pub first_seen: i64,
    pub label: Option<String>,
}

/// One bucket row of a commit; `series` indexes [`RollupRows::series`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollupRow {
    pub series: u32,
    pub res: Resolution,
    pub start: i64,
    pub agg: Agg,
}

/// The bucket rows of one commit: the series they belong to, each once and sorted by key, and
/// the rows sorted by (series, resolution, start), each once. That is the order every writer
/// locks rows in, so concurrent writers on PostgreSQL cannot deadlock; and a backend resolves
/// each series to its own id once per commit, not once per row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RollupRows {
    series: Vec<SeriesKey>,
    rows: Vec<RollupRow>,
    /// The coarser rows are exactly those derived from the second rows (see [`coarser_buckets`]),
    /// so a backend may write the seconds only and derive the rest itself, later.
    derived: bool,
}

impl RollupRows {
    /// From one-second buckets in any order (repeats are merged), with every coarser bucket
    /// derived from them.
    pub fn from_seconds(seconds: impl IntoIterator<Item = (SeriesKey, i64, Agg)>) -> Self {
        let mut by_series: std::collections::BTreeMap<SeriesKey, Seconds> = Default::default();
        for (key, t, agg) in seconds {
            by_series.entry(key).or_default().push((t, agg));
        }
        let mut out = Self { derived: true, ..Self::default() };
        for (key, secs) in by_series {
            out.push_seconds(key, secs);
        }
        out
    }

    /// From each series' one-second buckets, the series in key order; with each dimension value
    /// seen and the first second it was seen in (what makes a product "known").
    pub(super) fn from_keyed_seconds(keyed: Vec<(SeriesKey, Seconds)>) -> (Self, Vec<DimRow>) {
        let mut out = Self { derived: true, ..Self::default() };
        let mut dims = Vec::new();
        out.rows.reserve(keyed.iter().map(|(_, s)| s.len() + 4).sum());
        for (key, secs) in keyed {
            let first = out.push_seconds(key, secs);
            let key = out.series.last().expect("just pushed");
            if !key.dim.is_empty() {
                dims.push(DimRow { dim: key.dim.clone(), value: key.value.clone(), first_seen: first, label: None });
            }
        }
        (out, dims)
    }

    /// Adds a series (after every series already here, in key order) with its seconds and the
    /// buckets derived from them; returns its first second.
    fn push_seconds(&mut self, key: SeriesKey, mut secs: Seconds) -> i64 {
        let series = self.series.len() as u32;
        secs.sort_unstable_by_key(|(t, _)| *t);
        secs.dedup_by(|b, a| {
            let same = a.0 == b.0;
            if same {
                a.1.merge(&b.1);
            }
            same
        });
        let first = secs.first().map_or(0, |(t, _)| *t);
        self.rows.extend(coarser_buckets(&secs).map(|(res, start, agg)| RollupRow { series, res, start, agg }));
        self.rows.extend(secs.into_iter().map(|(start, agg)| RollupRow {
            series,
            res: Resolution::Second,
            start,
            agg,
        }));
        self.series.push(key);
        first
    }

    /// Whether the coarser rows are derived from the second rows (`from_seconds`, and every batch
    /// the ingest writer builds), rather than given one by one (`from_buckets`).
    pub fn coarse_derived(&self) -> bool {
        self.derived
    }

    /// From buckets in any order; buckets with the same key are merged.
    pub fn from_buckets(buckets: impl IntoIterator<Item = (BucketKey, Agg)>) -> Self {
        let mut merged: std::collections::BTreeMap<BucketKey, Agg> = Default::default();
        for (k, a) in buckets {
            merged.entry(k).or_default().merge(&a);
        }
        let mut out = Self::default();
        for (k, agg) in merged {
            if out.series.last() != Some(&k.series) {
                out.series.push(k.series.clone());
            }
            let series = (out.series.len() - 1) as u32;
            out.rows.push(RollupRow { series, res: k.res, start: k.start, agg });
        }
        out
    }

    /// From series sorted by key (each once) and rows sorted by (series, resolution, start) (each
    /// once), given one by one (not derived from seconds).
    pub fn from_parts(series: Vec<SeriesKey>, rows: Vec<RollupRow>) -> Self {
        debug_assert!(series.windows(2).all(|w| w[0] < w[1]));
        debug_assert!(
            rows.windows(2).all(|w| (w[0].series, w[0].res, w[0].start) < (w[1].series, w[1].res, w[1].start))
        );
        Self { series, rows, derived: false }
    }

    pub fn series(&self) -> &[SeriesKey] {
        &self.series
    }

    pub fn rows(&self) -> &[RollupRow] {
        &self.rows
    }

    /// Each row with its series key.
    pub fn iter(&self) -> impl Iterator<Item = (&SeriesKey, &RollupRow)> {
        self.rows.iter().map(|r| (&self.series[r.series as usize], r))
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}
