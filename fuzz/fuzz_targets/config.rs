//! The settings file loader on arbitrary UTF-8.
//!
//! Invariants: `Settings::parse` never panics or hangs; when it accepts a file, `check()` accepts
//! the result too, parsing the same text again gives the same outcome, the metrics compile, and
//! an event of an unconfigured name timestamped at its receipt is accepted and counted by every
//! `*` count metric.
//!
//! Two bugs in the library that this target reproduces (fuzz/regressions/config/, see
//! fuzz/README.md) are stepped around so the campaign can go on; set `FUZZ_KNOWN_BUGS=1` to hit
//! them (and drop the two guards below once `src/` is fixed):
//! - `sales_window` near `Duration::MAX` panics in `Settings::check` ("overflow when adding
//!   durations", `sales_window + 120s`);
//! - a `max_future_skew` above i64::MAX ms (about 292 million years) wraps to a negative skew in
//!   `Validator::new` (`as_millis() as i64`), so every event is refused as "in the future".
#![no_main]

use jetstream::config::Settings;
use jetstream::event::Validator;
use jetstream::rollup::{Metrics, RollupDelta};
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;
use std::time::Duration;

const NOW_MS: i64 = 1_700_000_000_000;
const PROBE: &str = "fuzzProbeEvent";

static KNOWN_BUGS: LazyLock<bool> = LazyLock::new(|| std::env::var_os("FUZZ_KNOWN_BUGS").is_some_and(|v| v == "1"));

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // The same deserialisation `Settings::parse` starts with, to recognise the known bugs.
    let raw: Option<Settings> = toml::from_str(text).ok();
    if !*KNOWN_BUGS && raw.as_ref().is_some_and(|s| s.api.sales_window.checked_add(Duration::from_secs(120)).is_none()) {
        return;
    }
    let skew_wraps = raw.as_ref().is_some_and(|s| s.ingest.max_future_skew.as_millis() > i64::MAX as u128);
    let parsed = Settings::parse(text);
    let Ok(s) = parsed else { return };
    if let Err(e) = s.check() {
        panic!("parse accepted a configuration that check() refuses: {e}");
    }
    let again = Settings::parse(text).expect("parsing the same text again gives the same outcome");
    assert_eq!(format!("{s:?}"), format!("{again:?}"), "parsing is deterministic");

    let metrics = Metrics::new(&s);
    let validator = Validator::new(&s);
    if s.events.contains_key(PROBE) || (skew_wraps && !*KNOWN_BUGS) {
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
});
