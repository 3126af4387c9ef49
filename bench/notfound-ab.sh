#!/usr/bin/env bash
# The 404 path against known ids, A/B of two binaries, interleaved: each run preloads a fresh store
# with PRELOAD_EVENTS events over products 1..1000 (loader.py preload), then wrk GETs
# /api/product/sale/{random 1..1000} (known) and /api/product/sale/5000{random 1..1000} (made-up
# ids, all 404) for DURATION s each.
#
#   BIN_A=/tmp/old/jetstream BIN_B=target/release/jetstream bench/notfound-ab.sh
#   STORE=postgres BIN_A=… BIN_B=… bench/notfound-ab.sh     # a fresh database per run on
#                                                           # 127.0.0.1:5432 (psql, trust auth)
# Settings: RUNS (2), DURATION (8), PRELOAD_EVENTS (200000), STORE (sqlite|postgres).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"
RUNS=${RUNS:-2}
DURATION=${DURATION:-8}
PRELOAD_EVENTS=${PRELOAD_EVENTS:-200000}
STORE=${STORE:-sqlite}
: "${BIN_A:?set BIN_A and BIN_B}" "${BIN_B:?set BIN_A and BIN_B}"
WORK=$(mktemp -d /tmp/jetstream-notfound.XXXXXX)
SERVER_PID=""
cleanup() { if [[ -n $SERVER_PID ]]; then kill "$SERVER_PID" 2>/dev/null || true; fi; rm -rf "$WORK"; }
trap cleanup EXIT
echo "load: $(cut -d' ' -f1-3 /proc/loadavg); store $STORE; wrk -t2 -c16 -d${DURATION}s -s bench/query.lua" >&2
for r in $(seq 1 "$RUNS"); do
  for label in A B; do
    bin=BIN_$label
    bin=${!bin}
    if [[ $STORE == postgres ]]; then
      psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS jetstream_notfound" -c "CREATE DATABASE jetstream_notfound"
      url=postgres://postgres@127.0.0.1:5432/jetstream_notfound
    else
      rm -f "$WORK"/s.db*
      url=sqlite://$WORK/s.db
    fi
    itok=$("$bin" token create --store "$url" --name ingest --scope ingest)
    rtok=$("$bin" token create --store "$url" --name read --scope read)
    JETSTREAM_LOG=warn "$bin" serve --store "$url" --listen 127.0.0.1:0 >"$WORK/serve.out" 2>"$WORK/serve.err" &
    SERVER_PID=$!
    addr=$(server_address "$WORK/serve.out" "$WORK/serve.err" "$SERVER_PID") || exit 1
    python3 "$HERE/loader.py" preload --addr "$addr" --token "$itok" --events "$PRELOAD_EVENTS" --conns 8 >/dev/null
    for kind in known unknown; do
      prefix=/api/product/sale/
      [[ $kind == unknown ]] && prefix=/api/product/sale/5000
      line=$(wrk -t2 -c16 -d"${DURATION}s" -s "$HERE/query.lua" "http://$addr" -- "$prefix" 1000 "$rtok" | sed -n 's/^RESULT //p')
      echo "run $r $label $kind: $line"
    done
    kill "$SERVER_PID"; wait "$SERVER_PID" || true; SERVER_PID=""
  done
done
