//! A chart's buckets: the boundaries of the steps a series is drawn in, fixed (`1s` … `1h`) or
//! calendar (`1d`, `1w`, `1mo`), aligned in a time zone (IANA names; DST-correct: a local day
//! may last 23 or 25 hours). Pure: the store then covers each bucket exactly.

use chrono::{Datelike, Days, LocalResult, Months, NaiveDate, Offset as _, TimeZone};
use chrono_tz::Tz;

/// Most buckets one series answer has.
pub const MAX_BUCKETS: usize = 10_000;

/// How long a step is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A fixed number of seconds (at most an hour), aligned to the local clock.
    Seconds(i64),
    Day,
    Week,
    Month,
}

impl Step {
    /// `1s`, `1m`, `5m`, `15m`, `1h`, `1d`, `1w`, `1mo`, and the names `second`, `minute`,
    /// `hour`, `day`.
    pub fn parse(s: &str) -> Result<(Step, &'static str), String> {
        Ok(match s {
            "1s" | "second" => (Step::Seconds(1), "1s"),
            "1m" | "minute" => (Step::Seconds(60), "1m"),
            "5m" => (Step::Seconds(300), "5m"),
            "15m" => (Step::Seconds(900), "15m"),
            "1h" | "hour" => (Step::Seconds(3600), "1h"),
            "1d" | "day" => (Step::Day, "1d"),
            "1w" | "week" => (Step::Week, "1w"),
            "1mo" | "month" => (Step::Month, "1mo"),
            other => {
                return Err(format!("step {other:?} is not one of 1s, 1m, 5m, 15m, 1h, 1d, 1w, 1mo"));
            }
        })
    }

    /// The step's length in seconds when it is fixed.
    pub fn seconds(self) -> Option<i64> {
        match self {
            Step::Seconds(s) => Some(s),
            Step::Day | Step::Week | Step::Month => None,
        }
    }
}

/// A time zone by its IANA name (`UTC` by default).
pub fn parse_tz(name: Option<&str>) -> Result<Tz, String> {
    match name {
        None => Ok(Tz::UTC),
        Some(n) => n.parse::<Tz>().map_err(|_| format!("{n:?} is not an IANA time zone name (e.g. Europe/Berlin)")),
    }
}

/// The boundaries `b0 < b1 < … < bn` (epoch seconds) of the buckets of `step` in `tz` that
/// cover `[from, to)`: `b0 <= from` is the start of the bucket holding `from`, `bn >= to`.
pub fn boundaries(from: i64, to: i64, step: Step, tz: Tz) -> Result<Vec<i64>, String> {
    if from >= to {
        return Err("`from` must be before `to`".into());
    }
    let too_many = || format!("more than {MAX_BUCKETS} buckets: use a coarser step or a shorter window");
    let mut out = vec![start_of(from, step, tz)?];
    while *out.last().expect("never empty") < to {
        if out.len() > MAX_BUCKETS {
            return Err(too_many());
        }
        let next = next_after(*out.last().expect("never empty"), step, tz)?;
        out.push(next);
    }
    Ok(out)
}

fn local_midnight(date: NaiveDate, tz: Tz) -> Result<i64, String> {
    let naive = date.and_hms_opt(0, 0, 0).ok_or("no midnight")?;
    match tz.from_local_datetime(&naive) {
        LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => Ok(t.timestamp()),
        // Midnight skipped by a DST change (some zones switch at 00:00): the day starts at 01:00.
        LocalResult::None => tz
            .from_local_datetime(&(naive + chrono::Duration::hours(1)))
            .earliest()
            .map(|t| t.timestamp())
            .ok_or_else(|| format!("{date} has no start in {tz}")),
    }
}

fn local_date(t: i64, tz: Tz) -> Result<NaiveDate, String> {
    Ok(tz.timestamp_opt(t, 0).single().ok_or("a time out of range")?.date_naive())
}

/// The start of the bucket holding `t`.
fn start_of(t: i64, step: Step, tz: Tz) -> Result<i64, String> {
    match step {
        Step::Seconds(s) => {
            // Aligned to the local clock: local time = t + offset.
            let offset = i64::from(tz.offset_from_utc_datetime(&utc(t)?).fix().local_minus_utc());
            Ok((t + offset).div_euclid(s) * s - offset)
        }
        Step::Day => local_midnight(local_date(t, tz)?, tz),
        Step::Week => {
            let d = local_date(t, tz)?;
            let monday = d - Days::new(u64::from(d.weekday().num_days_from_monday()));
            local_midnight(monday, tz)
        }
        Step::Month => local_midnight(local_date(t, tz)?.with_day(1).ok_or("no first day")?, tz),
    }
}

/// The start of the bucket after the one starting at `b`.
fn next_after(b: i64, step: Step, tz: Tz) -> Result<i64, String> {
    let date = local_date(b, tz)?;
    let next = match step {
        Step::Seconds(s) => return Ok(b + s),
        Step::Day => date + Days::new(1),
        Step::Week => date + Days::new(7),
        Step::Month => date.with_day(1).ok_or("no first day")? + Months::new(1),
    };
    local_midnight(next, tz)
}

fn utc(t: i64) -> Result<chrono::NaiveDateTime, String> {
    chrono::DateTime::from_timestamp(t, 0).map(|d| d.naive_utc()).ok_or_else(|| "a time out of range".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(s).expect("a time").timestamp()
    }

    #[test]
    fn days_in_berlin_last_23_or_25_hours_across_dst() {
        let tz = parse_tz(Some("Europe/Berlin")).expect("a zone");
        // 2026-03-29: clocks go forward at 02:00 local.
        let b = boundaries(ts("2026-03-28T12:00:00Z"), ts("2026-03-30T12:00:00Z"), Step::Day, tz).expect("ok");
        assert_eq!(
            b,
            [
                ts("2026-03-27T23:00:00Z"),
                ts("2026-03-28T23:00:00Z"),
                ts("2026-03-29T22:00:00Z"),
                ts("2026-03-30T22:00:00Z")
            ]
        );
        assert_eq!(b[2] - b[1], 23 * 3600, "the DST day is 23 hours");
        let b = boundaries(ts("2026-10-25T01:00:00Z"), ts("2026-10-25T12:00:00Z"), Step::Day, tz).expect("ok");
        assert_eq!(b[1] - b[0], 25 * 3600, "the day clocks go back is 25 hours");
    }

    #[test]
    fn weeks_start_on_monday_and_months_on_the_first_local_midnight() {
        let b = boundaries(ts("2026-12-02T10:00:00Z"), ts("2026-12-10T00:00:00Z"), Step::Week, Tz::UTC).expect("ok");
        assert_eq!(b, [ts("2026-11-30T00:00:00Z"), ts("2026-12-07T00:00:00Z"), ts("2026-12-14T00:00:00Z")]);
        let tz = parse_tz(Some("America/New_York")).expect("a zone");
        let b = boundaries(ts("2026-01-15T00:00:00Z"), ts("2026-03-02T00:00:00Z"), Step::Month, tz).expect("ok");
        assert_eq!(
            b,
            [
                ts("2026-01-01T05:00:00Z"),
                ts("2026-02-01T05:00:00Z"),
                ts("2026-03-01T05:00:00Z"),
                ts("2026-04-01T04:00:00Z")
            ]
        );
    }

    #[test]
    fn fixed_steps_align_to_the_local_clock() {
        let tz = parse_tz(Some("Asia/Kolkata")).expect("a zone"); // UTC+05:30
        let b =
            boundaries(ts("2026-12-01T10:10:00Z"), ts("2026-12-01T11:00:00Z"), Step::Seconds(3600), tz).expect("ok");
        assert_eq!(b, [ts("2026-12-01T09:30:00Z"), ts("2026-12-01T10:30:00Z"), ts("2026-12-01T11:30:00Z")]);
        let b = boundaries(100, 400, Step::Seconds(60), Tz::UTC).expect("ok");
        assert_eq!(b, [60, 120, 180, 240, 300, 360, 420]);
        assert!(boundaries(0, 1_000_000, Step::Seconds(1), Tz::UTC).unwrap_err().contains("more than"));
        assert!(parse_tz(Some("Mars/Olympus")).is_err());
    }
}
