//! The window a query names, bounded and snapped to the buckets retention keeps.

use super::error::ApiError;
use super::state::AppState;
use crate::rollup::{Kept, WindowQuery, query_window};

/// `[from, to)` in seconds for `window` (trailing) or `from`/`to`, at the current time.
pub fn window_of(
    state: &AppState,
    window: Option<&str>,
    from: Option<&str>,
    to: Option<&str>,
) -> Result<(i64, i64), ApiError> {
    let r = &state.settings.retention;
    let kept = Kept {
        second_buckets_s: crate::config::secs_i64(r.second_buckets),
        minute_buckets_s: crate::config::secs_i64(r.minute_buckets),
    };
    query_window(WindowQuery { window, from, to }, crate::clock::now_ms(), kept).map_err(ApiError::BadRequest)
}
