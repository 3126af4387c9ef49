#!/usr/bin/env python3
"""Summarise `perf script -F comm,tid,ip,sym --no-inline` output of the Jetstream server.

  perf_summary.py FILE [--top N]

Prints (1) the stages of the ingest and query paths with their *inclusive* share of all CPU
samples (a sample counts for a stage when any frame of its stack matches; stages nest, so the
shares overlap), and (2) the top functions by *self* samples (the leaf frame).
"""

import re
import sys
from collections import Counter

# (label, regex on a frame's symbol). Ordered roughly along the data flow.
STAGES = [
    ("HTTP ingest handler (all of it)", r"ingest::http::ingest_events"),
    ("  parse_body: split + validate + fold", r"ingest::http::parse_body"),
    ("    split_body (serde_json RawValue array)", r"event::split_body"),
    ("    Validator::validate (serde_json Value + checks)", r"event::Validator::validate"),
    ("    Pending::accept (fold + raw line)", r"ingest::Pending::accept"),
    ("      Metrics::fold (per-event bucket deltas)", r"rollup::Metrics::fold"),
    ("        RollupDelta::add (HashMap<BucketKey,Agg>)", r"rollup::RollupDelta::add"),
    ("writer: build_batch (merge + zstd + sort)", r"ingest::writer::build_batch"),
    ("  RollupDelta::merge", r"rollup::RollupDelta::merge"),
    ("  zstd compress (raw blocks)", r"zstd::bulk::compress|ZSTD_compress"),
    ("  RollupDelta::into_sorted", r"rollup::RollupDelta::into_sorted"),
    ("store commit: sqlite::apply (upserts)", r"storage::sqlite::apply"),
    ("  sqlite3_step (VDBE, b-tree)", r"^sqlite3_step$"),
    ("  dec_add/dec_min/dec_max (decimal text <-> Decimal)", r"register_decimal_functions|call_boxed_closure"),
    ("  bind parameters + decimal to_string", r"bind_parameter|Decimal as core::fmt::Display|to_str_internal"),
    ("  transaction commit (WAL frames written)", r"sqlite3PagerCommitPhaseOne|walFrames"),
    ("cache invalidation (commit hook)", r"api::cache::ReadCache::invalidate"),
    ("seed endpoint: sales", r"api::product::get_product_sales"),
    ("seed endpoint: rating", r"api::product::get_product_rating"),
    ("  AppState::authorize (token check)", r"api::AppState::authorize|auth::Tokens::authorize"),
    ("  AppState::is_known (known-product check)", r"api::AppState::is_known"),
    ("  ReadCache get/put", r"api::cache::ReadCache::(get|put|is_known)"),
    ("  store read on the blocking pool (SqliteStore::read closure)", r"SqliteStore.*read_aggregate|storage::sqlite::SqliteStore::read|storage::sqlite::agg_from_row"),
    ("  SQLite page reads via pread (kernel page cache)", r"__x64_sys_pread64|filemap_read"),
    ("  rollup::cover", r"rollup::cover"),
    ("  JSON answer (serde_json serialise)", r"serde_json::ser|axum::json::.*IntoResponse|Json<T> as axum_core::response::IntoResponse"),
    ("tower_http TraceLayer (spans per request)", r"tower_http::trace"),
    ("hyper HTTP/1 (parse, write)", r"hyper::proto::h1::role|hyper::proto::h1::io|hyper::proto::h1::decode|hyper::proto::h1::encode"),
    ("tokio blocking-pool hand-off (spawn_blocking)", r"tokio::runtime::blocking::pool::Spawner::spawn_blocking|spawn_blocking_inner"),
    ("tracing / tracing-subscriber", r"^tracing_subscriber::|^tracing_core::|tracing::span"),
    ("futex waits/wakes (locks, thread park/unpark)", r"futex_wait|futex_wake"),
    ("context switches (kernel scheduler)", r"finish_task_switch|__schedule"),
    ("memory: malloc/free/memmove", r"^(malloc|_int_malloc|_int_free|cfree.*|free|realloc|_int_realloc|malloc_consolidate|unlink_chunk.*|__memmove.*|__memcpy.*)$"),
    ("hashing: SipHash (std HashMap default hasher)", r"core::hash::sip|BuildHasher::hash_one"),
    ("kernel (self)", r"^\[k\]"),
]


def read_samples(path):
    samples = []
    frames = None
    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                if frames is not None:
                    samples.append(frames)
                frames = None
                continue
            if not line.startswith("\t") and not line.startswith(" "):
                frames = []
                continue
            parts = line.strip().split(None, 1)
            sym = parts[1] if len(parts) > 1 else "[unknown]"
            addr = parts[0]
            if addr.startswith("ffffffff") and sym != "[unknown]":
                sym = "[k] " + sym
            if frames is not None:
                frames.append(sym)
    if frames:
        samples.append(frames)
    return samples


def main():
    path = sys.argv[1]
    top = int(sys.argv[sys.argv.index("--top") + 1]) if "--top" in sys.argv else 25
    samples = read_samples(path)
    n = len(samples) or 1
    print(f"{len(samples)} samples")
    print("\nStages (inclusive % of all samples; nested stages overlap)")
    for label, pat in STAGES:
        rx = re.compile(pat)
        if label == "kernel (self)":
            c = sum(1 for s in samples if s and s[0].startswith("[k]"))
        elif label.startswith("memory") or label.startswith("hashing"):
            c = sum(1 for s in samples if s and rx.search(s[0]))
            label += " [self]"
        else:
            c = sum(1 for s in samples if any(rx.search(f) for f in s))
        if c:
            print(f"  {100 * c / n:6.1f}%  {label}")
    print(f"\nTop {top} functions by self samples")
    leaf = Counter(s[0] if s else "[unknown]" for s in samples)
    for sym, c in leaf.most_common(top):
        print(f"  {100 * c / n:6.1f}%  {sym[:150]}")


if __name__ == "__main__":
    main()
