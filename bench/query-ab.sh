#!/usr/bin/env bash
# Query latency A/B of two jetstream binaries: each gets its own SQLite store preloaded with
# PRELOAD_EVENTS events (timed over the last hour), then wrk queries the two seed endpoints; the
# binaries alternate A, B, A, B so both see the same machine load. Prints one line per wrk run.
#
#   bench/query-ab.sh NEW_BINARY OLD_BINARY
#
# Settings: PRELOAD_EVENTS (200000), DURATION (8), RUNS (2 per store), PRODUCTS (1000).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"
PRELOAD_EVENTS=${PRELOAD_EVENTS:-200000}
DURATION=${DURATION:-8}
RUNS=${RUNS:-2}
PRODUCTS=${PRODUCTS:-1000}
[[ $# == 2 ]] || { echo "usage: $0 BINARY_A BINARY_B" >&2; exit 2; }

one() { # binary label
  local dir store addr pid itok rtok r kind
  dir=$(mktemp -d /tmp/jetstream-qab.XXXXXX)
  store="sqlite://$dir/s.db"
  itok=$("$1" token create --store "$store" --name i --scope ingest)
  rtok=$("$1" token create --store "$store" --name r --scope read)
  JETSTREAM_LOG=warn "$1" serve --store "$store" --listen 127.0.0.1:0 >"$dir/out" 2>"$dir/err" &
  pid=$!
  addr=$(server_address "$dir/out" "$dir/err" "$pid") || exit 1
  python3 "$HERE/loader.py" preload --addr "$addr" --token "$itok" --events "$PRELOAD_EVENTS" \
    --products "$PRODUCTS" --conns 8 >/dev/null
  for r in $(seq 1 "$RUNS"); do
    for kind in sale rating; do
      wrk -t2 -c16 -d"${DURATION}s" --latency -s "$HERE/query.lua" "http://$addr" -- "/api/product/$kind/" \
        "$PRODUCTS" "$rtok" | sed -n "s/^RESULT /$2 $kind run $r: /p"
    done
  done
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  rm -rf "$dir"
}
one "$1" A
one "$2" B
one "$1" A
one "$2" B
