//! The window a query asks for, parsed and bounded: pure, so it can be fuzzed.

use super::time::{snap_window, trailing_window};
use crate::config::parse_duration;

/// The latest time a query may name: 9999-12-31T23:59:59Z (and the earliest is the epoch).
pub const MAX_TIME_S: i64 = 253_402_300_799;
/// The longest trailing window: 100 years.
pub const MAX_WINDOW_S: i64 = 100 * 365 * 86_400;

/// What a query says about its window: a trailing `window` (e.g. `1h`) or `from`/`to` (RFC 3339
/// or epoch milliseconds); the default is the last hour.
#[derive(Debug, Clone, Copy, Default)]
pub struct WindowQuery<'a> {
    pub window: Option<&'a str>,
    pub from: Option<&'a str>,
    pub to: Option<&'a str>,
}

/// Retention, in seconds, which decides how finely old edges can be answered.
#[derive(Debug, Clone, Copy)]
pub struct Kept {
    pub second_buckets_s: i64,
    pub minute_buckets_s: i64,
}

/// `[from, to)` in seconds at instant `now_ms`, snapped outward to the buckets retention still
/// keeps; or why the query is not a window.
pub fn query_window(q: WindowQuery<'_>, now_ms: i64, kept: Kept) -> Result<(i64, i64), String> {
    let now_s = now_ms.div_euclid(1000);
    let (from, to) = match (q.window, q.from, q.to) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => return Err("give `window` or `from`/`to`, not both".into()),
        (w, None, None) => {
            let d = parse_duration(w.unwrap_or("1h"))?;
            let s = i64::try_from(d.as_secs())
                .ok()
                .filter(|s| *s <= MAX_WINDOW_S)
                .ok_or_else(|| format!("`window` must be at most {} days", MAX_WINDOW_S / 86_400))?;
            trailing_window(now_ms, s.max(1))
        }
        (None, f, t) => {
            let to = t.map(|t| parse_time(t, "to")).transpose()?.unwrap_or(now_s + 1);
            let from = f.map(|f| parse_time(f, "from")).transpose()?.unwrap_or(to.saturating_sub(3600).max(0));
            (from, to)
        }
    };
    if from >= to {
        return Err("`from` must be before `to`".into());
    }
    Ok(snap_window(from, to, now_s, kept.second_buckets_s, kept.minute_buckets_s))
}

/// A time given as epoch milliseconds or RFC 3339, in epoch seconds, within [0, [`MAX_TIME_S`]].
pub fn parse_time(s: &str, what: &str) -> Result<i64, String> {
    let t = match s.parse::<i64>() {
        Ok(ms) => Some(ms.div_euclid(1000)),
        Err(_) => chrono::DateTime::parse_from_rfc3339(s).ok().map(|t| t.timestamp()),
    };
    match t {
        Some(t) if (0..=MAX_TIME_S).contains(&t) => Ok(t),
        Some(_) => Err(format!("`{what}` must lie between 1970 and 9999")),
        None => Err(format!(
            "`{what}` must be RFC 3339 or epoch milliseconds, got {:?}",
            s.chars().take(64).collect::<String>()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEPT: Kept = Kept { second_buckets_s: 172_800, minute_buckets_s: 7_776_000 };
    const NOW: i64 = 1_700_000_000_500;

    fn w(window: Option<&str>, from: Option<&str>, to: Option<&str>) -> Result<(i64, i64), String> {
        query_window(WindowQuery { window, from, to }, NOW, KEPT)
    }

    #[test]
    fn windows_are_bounded_and_never_overflow() {
        assert_eq!(w(None, None, None), Ok((1_700_000_001 - 3600, 1_700_000_001)));
        assert!(w(Some("100000000y"), None, None).unwrap_err().contains("at most"));
        assert!(w(Some("18446744073709551615s"), None, None).is_err());
        assert!(w(None, Some("-9223372036854775808"), None).unwrap_err().contains("between 1970 and 9999"));
        assert!(w(None, None, Some("9223372036854775807")).unwrap_err().contains("between 1970 and 9999"));
        assert!(w(None, Some("0"), Some("1000")).is_ok());
        assert!(w(Some("1h"), Some("0"), None).unwrap_err().contains("not both"));
        assert!(w(None, Some("2000"), Some("1000")).unwrap_err().contains("before"));
    }
}
