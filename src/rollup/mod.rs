//! Time-bucketed aggregates: bucket arithmetic, window covers, and folding events into deltas.
//!
//! Pure code: no I/O, no clock. Times are epoch seconds unless named `_ms`.
//!
//! - [`time`]: resolutions, window covers, retention snapping, the trailing window;
//! - [`agg`]: a bucket's count/sum/min/max, series and bucket keys;
//! - [`calendar`]: a chart's buckets (fixed and calendar steps, in a time zone);
//! - [`fold`]: declared metrics folding events into one-second deltas (interned series ids);
//! - [`rows`]: the rows one commit writes, every coarser bucket derived from the seconds;
//! - [`window`]: the window a query asks for, parsed and bounded.

mod agg;
mod calendar;
mod fold;
mod rows;
mod time;
mod window;

pub use agg::{Agg, BucketKey, SeriesKey};
pub use calendar::{MAX_BUCKETS, Step, boundaries, parse_tz};
pub use fold::{CompiledMetric, FastMap, Metrics, RollupDelta};
pub use rows::{DimRow, RollupRow, RollupRows, coarser_buckets};
pub use time::{RESOLUTIONS, Resolution, Span, cover, finest_kept, snap_window, trailing_window};
pub use window::{Kept, MAX_TIME_S, WindowQuery, parse_time, query_window};

#[cfg(test)]
mod tests;
