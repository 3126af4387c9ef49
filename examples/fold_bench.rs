//! Validation and folding alone, per event: the CPU stage of HTTP ingest that a change to
//! `rollup::fold` or `event::validate` moves, measured without HTTP, the writer or SQLite (whose
//! noise on a shared 2-core machine hides a few percent; see bench/README.md).
//!
//! `cargo run --release --example fold_bench -- [ROUNDS] [PRODUCTS]` folds the same 1,000-event
//! batches (`bench/loader.py`'s shapes: 70 % sales, amounts half as strings, 30 % ratings, a name
//! and a category each) ROUNDS times (default 7) and prints each round's ns per event and their
//! median. A/B: build it at two commits and run them alternately.

use std::time::Instant;

use jetstream::config::Settings;
use jetstream::event::Validator;
use jetstream::rollup::{Metrics, RollupDelta};

const BATCH: usize = 1_000;
const BATCHES: usize = 400;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().map_or(Ok(7), |s| s.parse())?;
    let products: u64 = args.next().map_or(Ok(100_000), |s| s.parse())?;
    let settings = Settings::default();
    let validator = Validator::new(&settings);
    let metrics = Metrics::new(&settings);
    let events = events(BATCH * BATCHES, products);
    let mut per_event = Vec::new();
    for round in 1..=rounds {
        let start = Instant::now();
        let mut series = 0;
        for batch in events.chunks(BATCH) {
            let mut delta = RollupDelta::default();
            for (i, e) in batch.iter().enumerate() {
                let t = 1_764_800_000_000 + i as i64 * 7;
                metrics.fold(&validator.validate(e.as_bytes(), t, t).expect("valid"), &mut delta);
            }
            series += delta.into_rows().0.series().len();
        }
        let ns = start.elapsed().as_nanos() as f64 / events.len() as f64;
        println!("round {round}: {ns:.1} ns/event ({series} series rows)");
        per_event.push(ns);
    }
    per_event.sort_by(f64::total_cmp);
    println!("RESULT median {:.1} ns/event over {rounds} rounds", per_event[rounds / 2]);
    Ok(())
}

/// The events, with a small xorshift for products, kinds and amounts (the same every run).
fn events(n: usize, products: u64) -> Vec<String> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..n)
        .map(|i| {
            let r = next();
            let pid = 1 + r % products;
            let cat = pid % 20;
            if r % 10 < 7 {
                let cents = 100 + (r >> 20) % 99_900;
                let amount = format!("{}.{:02}", cents / 100, cents % 100);
                let amount = if i % 2 == 1 { format!("\"{amount}\"") } else { amount };
                format!(
                    r#"{{"event_name":"productSold","name_of_product":"product {pid}","product_id":{pid},"no_of_units":{},"amount":{amount},"category":"category-{cat}"}}"#,
                    1 + (r >> 40) % 5
                )
            } else {
                format!(
                    r#"{{"event":"productRated","name_of_product":"product {pid}","product_id":{pid},"rating":{},"category":"category-{cat}"}}"#,
                    1 + (r >> 40) % 5
                )
            }
        })
        .collect()
}
