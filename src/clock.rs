//! The wall clock, in one place: everything else takes times as arguments.

/// Milliseconds since the epoch, from the system clock.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// `ms` (epoch milliseconds) as an RFC 3339 UTC time, e.g. `2026-12-01T00:00:00Z`.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map_or_else(|| format!("{ms} ms"), |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}
