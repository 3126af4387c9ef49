//! The fuzz targets' checks (`fuzz/checks/`), replayed on their committed corpus and regression
//! inputs: the short run of every target in the test command, without the nightly toolchain or
//! libFuzzer. (`scripts/fuzz.sh` runs the same checks coverage-guided, to find new inputs.)
//!
//! Each check panics when an invariant does not hold; every input is tried and the failing files
//! are listed. Breaking a checked property (say, `exact_decimal` rounding a 17-digit number) makes
//! the decimal replay fail.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::path::Path;

#[path = "../fuzz/checks/body.rs"]
mod body;
#[path = "../fuzz/checks/config.rs"]
mod config;
#[path = "../fuzz/checks/decimal.rs"]
mod decimal;
#[path = "../fuzz/checks/timestamp.rs"]
mod timestamp;
#[path = "../fuzz/checks/window.rs"]
mod window;

/// Runs `check` on every file of the target's corpus and regressions; fails listing the inputs
/// whose check panicked.
fn replay(target: &str, check: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut files = Vec::new();
    for dir in [root.join("corpus").join(target), root.join("regressions").join(target)] {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            files.extend(entries.map(|e| e.unwrap().path()).filter(|p| p.is_file()));
        }
    }
    assert!(!files.is_empty(), "no corpus for {target}");
    files.sort();
    let failed: Vec<String> = files
        .iter()
        .filter(|f| {
            let data = std::fs::read(f).unwrap();
            std::panic::catch_unwind(|| check(&data)).is_err()
        })
        .map(|f| f.display().to_string())
        .collect();
    assert!(failed.is_empty(), "{target}: {} of {} inputs fail their check: {failed:?}", failed.len(), files.len());
    println!("{target}: {} inputs replayed", files.len());
}

#[test]
fn body_corpus() {
    replay("body", body::run_one);
}

#[test]
fn config_corpus() {
    replay("config", config::run_one);
}

#[test]
fn decimal_corpus() {
    replay("decimal", decimal::run_one);
}

#[test]
fn timestamp_corpus() {
    replay("timestamp", timestamp::run_one);
}

#[test]
fn window_corpus() {
    replay("window", window::run_one);
}
