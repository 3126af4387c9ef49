//! Raw blocks' size and encoding time on a stream of events, plain zstd against the codec.
//!
//! `cargo run --release --example raw_codec -- EVENTS.ndjson [BLOCK_LINES]` where the file holds one
//! event per line (`gen_events.py`'s output). Each event is wrapped as the store keeps it
//! (`{"t":…,"src":"http","e":<event>}`, a received time per 1,000 events), split per event name
//! into blocks of BLOCK_LINES lines (default 700: a 1,000-event request's sales), and each block is
//! encoded both ways; decoding is checked byte for byte.

use std::time::Instant;

use jetstream::storage::raw_codec;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args.next().ok_or_else(|| anyhow::anyhow!("usage: raw_codec EVENTS.ndjson [BLOCK_LINES]"))?;
    let block_lines: usize = args.next().map_or(Ok(700), |s| s.parse())?;
    let text = std::fs::read(&path)?;
    let mut by_name: std::collections::BTreeMap<&str, Vec<Vec<u8>>> = Default::default();
    let received = 1_764_800_000_000u64;
    for (i, line) in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()).enumerate() {
        let name = if line.windows(13).any(|w| w == b"\"productRated") { "productRated" } else { "productSold" };
        let mut wrapped = format!("{{\"t\":{},\"src\":\"http\",\"e\":", received + (i / 1000) as u64 * 3).into_bytes();
        wrapped.extend_from_slice(line);
        wrapped.extend_from_slice(b"}\n");
        by_name.entry(name).or_default().push(wrapped);
    }
    println!("{path}: blocks of {block_lines} lines");
    println!(
        "{:<14} {:>9} {:>13} {:>13} {:>12} {:>12} {:>12}",
        "name", "events", "zstd B/event", "codec B/event", "zstd µs/ev", "codec µs/ev", "decode µs/ev"
    );
    for (name, lines) in by_name {
        let blocks: Vec<Vec<u8>> = lines.chunks(block_lines).map(|c| c.concat()).collect();
        let n = lines.len() as f64;
        let (mut plain, mut codec) = (0usize, 0usize);
        // Level 1 with one context, as the ingest path kept it before the codec.
        let mut zstd = zstd::bulk::Compressor::new(1)?;
        let t = Instant::now();
        for b in &blocks {
            plain += zstd.compress(b)?.len();
        }
        let plain_us = t.elapsed().as_secs_f64() * 1e6 / n;
        let t = Instant::now();
        let encoded: Vec<Vec<u8>> = blocks.iter().map(|b| raw_codec::encode(b)).collect();
        let codec_us = t.elapsed().as_secs_f64() * 1e6 / n;
        codec += encoded.iter().map(Vec::len).sum::<usize>();
        let t = Instant::now();
        for (b, e) in blocks.iter().zip(&encoded) {
            anyhow::ensure!(
                raw_codec::decode(e, raw_codec::MAX_BLOCK_BYTES)? == *b,
                "a block of {name} did not round-trip"
            );
        }
        let decode_us = t.elapsed().as_secs_f64() * 1e6 / n;
        println!(
            "{name:<14} {:>9} {:>13.2} {:>13.2} {plain_us:>12.3} {codec_us:>12.3} {decode_us:>12.3}",
            lines.len(),
            plain as f64 / n,
            codec as f64 / n
        );
    }
    Ok(())
}
