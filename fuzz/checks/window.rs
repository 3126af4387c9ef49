//! Window arithmetic: `cover`, `snap_window`, `trailing_window`, on bounded realistic inputs
//! (times within ±10^12 s, i.e. ±31,000 years; windows up to 2·10^12 s; retention up to 10^10 s).
//!
//! Invariants:
//! - `cover(from, to)`: spans sorted, contiguous, non-empty, each aligned to its resolution (never
//!   `All`), exactly covering `[from, to)` (nothing when `from >= to`), at most 7 spans and
//!   2·(23+59+59) + days buckets; `Span::seconds` of an aligned span is the span itself;
//! - `snap_window`: only widens (`f <= from`, `t >= to`), by less than one bucket, to edges aligned
//!   to the finest resolution still kept at each edge;
//! - `trailing_window(now_ms, w)`: `w` seconds, the last one holding `now_ms`.
use jetstream::rollup::{Resolution, cover, finest_kept, snap_window, trailing_window};

const T: i64 = 1_000_000_000_000;

/// Reads little-endian i64s from the input (zero-padded), each kept when in `[lo, hi]`, else
/// folded into it.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn int(&mut self, lo: i64, hi: i64) -> i64 {
        let mut b = [0u8; 8];
        let n = self.0.len().min(8);
        b[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        let x = i64::from_le_bytes(b);
        if (lo..=hi).contains(&x) {
            return x;
        }
        let span = (hi as i128) - (lo as i128) + 1;
        (lo as i128 + (x as i128).rem_euclid(span)) as i64
    }
}

fn check_cover(from: i64, to: i64) {
    let spans = cover(from, to);
    if from >= to {
        assert!(spans.is_empty(), "cover({from}, {to}) of an empty window: {spans:?}");
        return;
    }
    assert!(spans.len() <= 7, "cover({from}, {to}): {} spans", spans.len());
    let mut at = from;
    let mut rows = 0;
    for s in &spans {
        assert_ne!(s.res, Resolution::All, "cover({from}, {to}) used the all-time bucket");
        let step = s.res.seconds();
        assert_eq!(s.from, at, "cover({from}, {to}): not contiguous: {spans:?}");
        assert!(s.from < s.to, "cover({from}, {to}): an empty span: {spans:?}");
        assert_eq!(s.from.rem_euclid(step), 0, "cover({from}, {to}): unaligned: {spans:?}");
        assert_eq!(s.to.rem_euclid(step), 0, "cover({from}, {to}): unaligned: {spans:?}");
        assert_eq!(s.seconds(), (s.from, s.to), "Span::seconds of an aligned span");
        rows += (s.to - s.from) / step;
        at = s.to;
    }
    assert_eq!(at, to, "cover({from}, {to}) ends at {at}: {spans:?}");
    assert!(rows <= 2 * (23 + 59 + 59) + (to - from) / 86_400 + 1, "cover({from}, {to}): {rows} rows");
}

fn check_snap(from: i64, to: i64, now: i64, second_keep: i64, minute_keep: i64) {
    let (f, t) = snap_window(from, to, now, second_keep, minute_keep);
    let rf = finest_kept(from, now, second_keep, minute_keep);
    let rt = finest_kept(to, now, second_keep, minute_keep);
    assert!(f <= from && to <= t, "snap_window({from}, {to}) narrowed to ({f}, {t})");
    assert!(from - f < rf.seconds() && t - to < rt.seconds(), "snap_window({from}, {to}) widened to ({f}, {t})");
    assert_eq!(f.rem_euclid(rf.seconds()), 0, "snap_window({from}, {to}) start {f} not on a {rf:?} bucket");
    assert_eq!(t.rem_euclid(rt.seconds()), 0, "snap_window({from}, {to}) end {t} not on a {rt:?} bucket");
    // The snapped window is what is then covered.
    check_cover(f, t);
}

/// One input, as the fuzzer gives it: panics when an invariant does not hold.
pub fn run_one(data: &[u8]) {
    let mut input = Input(data);
    let from = input.int(-T, T);
    let len = input.int(-1000, 2 * T);
    let to = from + len;
    check_cover(from, to);

    let now = input.int(-T, T);
    let second_keep = input.int(0, 10_000_000_000);
    let minute_keep = input.int(0, 10_000_000_000);
    check_snap(from, to.max(from), now, second_keep, minute_keep);

    let now_ms = input.int(-1000 * T, 1000 * T);
    let window_s = input.int(0, 10_000_000_000);
    let (wf, wt) = trailing_window(now_ms, window_s);
    assert_eq!(wt - wf, window_s, "trailing_window({now_ms}, {window_s}) = ({wf}, {wt})");
    assert!((wt - 1) * 1000 <= now_ms && now_ms < wt * 1000, "trailing_window({now_ms}, {window_s}) ends at {wt}");
}
