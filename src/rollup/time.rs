//! Bucket arithmetic: resolutions, the aligned buckets covering a window, retention snapping and
//! the trailing window. Times are epoch seconds unless named `_ms`.

/// Bucket sizes. `All` is the single all-time bucket (start 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resolution {
    All,
    Day,
    Hour,
    Minute,
    Second,
}

/// Every resolution an event updates, coarsest first.
pub const RESOLUTIONS: [Resolution; 5] =
    [Resolution::All, Resolution::Day, Resolution::Hour, Resolution::Minute, Resolution::Second];

impl Resolution {
    /// Bucket length in seconds; the stored code (0 for all-time).
    pub const fn seconds(self) -> i64 {
        match self {
            Resolution::All => 0,
            Resolution::Day => 86_400,
            Resolution::Hour => 3_600,
            Resolution::Minute => 60,
            Resolution::Second => 1,
        }
    }

    pub fn from_seconds(s: i64) -> Option<Self> {
        RESOLUTIONS.into_iter().find(|r| r.seconds() == s)
    }

    /// The start of the bucket holding second `t`.
    pub fn bucket_of(self, t: i64) -> i64 {
        match self {
            Resolution::All => 0,
            r => t.div_euclid(r.seconds()) * r.seconds(),
        }
    }

    /// The next finer resolution used to cover window edges.
    fn finer(self) -> Option<Self> {
        match self {
            Resolution::All => Some(Resolution::Day),
            Resolution::Day => Some(Resolution::Hour),
            Resolution::Hour => Some(Resolution::Minute),
            Resolution::Minute => Some(Resolution::Second),
            Resolution::Second => None,
        }
    }
}

/// A run of buckets at one resolution: starts in `[from, to)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub res: Resolution,
    pub from: i64,
    pub to: i64,
}

impl Span {
    /// The seconds `[lo, hi)` whose buckets at this span's resolution start in `[from, to)`: where
    /// a store that keeps recent data as one-second buckets only finds this span's part of it.
    pub fn seconds(&self) -> (i64, i64) {
        match self.res {
            Resolution::All if self.from <= 0 && 0 < self.to => (i64::MIN, i64::MAX),
            Resolution::All => (0, 0),
            r => {
                let step = r.seconds();
                let up = |x: i64| x.div_euclid(step) * step + if x.rem_euclid(step) == 0 { 0 } else { step };
                (up(self.from), up(self.to))
            }
        }
    }
}

/// The fewest aligned buckets that exactly cover `[from, to)` (seconds). Coarse buckets fill the
/// middle, finer ones the edges: any window costs O(23 + 59 + 59) rows per edge, whatever the
/// number of events in it.
pub fn cover(from: i64, to: i64) -> Vec<Span> {
    let mut spans = Vec::new();
    cover_at(Resolution::Day, from, to, &mut spans);
    spans.sort_by_key(|s| (s.from, s.res));
    spans
}

fn cover_at(res: Resolution, from: i64, to: i64, out: &mut Vec<Span>) {
    if from >= to {
        return;
    }
    let Some(finer) = res.finer() else {
        out.push(Span { res, from, to });
        return;
    };
    let step = res.seconds();
    let a = from.div_euclid(step) * step + if from.rem_euclid(step) == 0 { 0 } else { step };
    let b = to.div_euclid(step) * step;
    if a < b {
        out.push(Span { res, from: a, to: b });
        cover_at(finer, from, a, out);
        cover_at(finer, b, to, out);
    } else {
        cover_at(finer, from, to, out);
    }
}

/// The finest resolution whose buckets are still kept for second `t`, given retention.
pub fn finest_kept(t: i64, now: i64, second_keep: i64, minute_keep: i64) -> Resolution {
    let age = now - t;
    if age <= second_keep {
        Resolution::Second
    } else if age <= minute_keep {
        Resolution::Minute
    } else {
        Resolution::Hour
    }
}

/// Snaps a window outward so that its edges fall on buckets still kept: `from` down, `to` up.
pub fn snap_window(from: i64, to: i64, now: i64, second_keep: i64, minute_keep: i64) -> (i64, i64) {
    let f = finest_kept(from, now, second_keep, minute_keep).bucket_of(from);
    let r = finest_kept(to, now, second_keep, minute_keep);
    let t = if r.bucket_of(to) == to { to } else { r.bucket_of(to) + r.seconds() };
    (f, t)
}

/// "The last `window_s` seconds" at instant `now_ms`: the `window_s` one-second buckets ending with
/// the current second, as `[from, to)`.
pub fn trailing_window(now_ms: i64, window_s: i64) -> (i64, i64) {
    let to = now_ms.div_euclid(1000) + 1;
    (to - window_s, to)
}
