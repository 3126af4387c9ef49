//! The wall clock, in one place: everything else takes times as arguments.

/// Milliseconds since the epoch, from the system clock.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
