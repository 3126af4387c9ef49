//! The settings file loader on arbitrary UTF-8.
//!
//! Invariants: `Settings::parse` never panics or hangs; when it accepts a file, `check()` accepts
//! the result too, parsing the same text again gives the same outcome, the metrics compile, and
//! an event of an unconfigured name timestamped at its receipt is accepted and counted by every
//! `*` count metric.
//!
//! The two bugs this target found (fuzz/regressions/config/, see fuzz/README.md) are fixed: a
//! `sales_window` near `Duration::MAX` no longer panics in `Settings::check`, and every duration is
//! bounded (a `max_future_skew` of millions of years used to wrap to a negative skew).
use jetstream::config::Settings;
use jetstream::event::Validator;
use jetstream::rollup::{Metrics, RollupDelta};

const NOW_MS: i64 = 1_700_000_000_000;
const PROBE: &str = "fuzzProbeEvent";

/// One input, as the fuzzer gives it: panics when an invariant does not hold.
pub fn run_one(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let parsed = Settings::parse(text);
    let Ok(s) = parsed else { return };
    if let Err(e) = s.check() {
        panic!("parse accepted a configuration that check() refuses: {e}");
    }
    let again = Settings::parse(text).expect("parsing the same text again gives the same outcome");
    assert_eq!(format!("{s:?}"), format!("{again:?}"), "parsing is deterministic");

    let metrics = Metrics::new(&s);
    let validator = Validator::new(&s);
    if s.events.contains_key(PROBE) {
        return;
    }
    let raw = format!(r#"{{"event":"{PROBE}"}}"#);
    let event = match validator.validate(raw.as_bytes(), NOW_MS, NOW_MS) {
        Ok(e) => e,
        Err(r) => panic!("an event at its time of receipt is refused under an accepted configuration: {r}"),
    };
    let mut delta = RollupDelta::default();
    metrics.fold(&event, &mut delta);
    let counts = s.metrics.iter().filter(|m| m.event == "*" && m.field.is_none()).count();
    let (rows, _) = delta.into_rows();
    let overall_all =
        rows.iter().filter(|(k, r)| k.dim.is_empty() && r.res == jetstream::rollup::Resolution::All).count();
    assert!(overall_all >= counts, "{counts} `*` count metrics, {overall_all} overall all-time rows");
}
