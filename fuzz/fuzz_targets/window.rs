//! The `window` fuzz target: its invariants and their checks are in `fuzz/checks/window.rs`,
//! shared with `tests/fuzz_corpus.rs`, which replays the committed corpus in the test command.
#![no_main]

#[path = "../checks/window.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::run_one(data));
