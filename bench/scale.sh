#!/usr/bin/env bash
# The cost curve (issue 17): a fresh SQLite store filled to 100M events over 1M products (the hot
# one 10 % of the events, Zipf 1.0 for the rest, event times over a week), measured at 1M, 10M and
# 100M events stored (ingest rate, hot/cold query p50/p99, RSS, disk, longest acknowledgement
# wait), then a soak at 50k events/s with queries alongside. See bench/README.md, "Cost curve".
#
#   bench/scale.sh                                     # 1M, 10M, 100M, then a 30-minute soak
#   CHECKPOINTS=1000000,10000000 SOAK_SECS=120 bench/scale.sh   # a short rehearsal
#   KEEP=1 SOAK_SECS=0 OUT=/tmp/s bench/scale.sh; REUSE=/tmp/jetstream-scale.XXXX OUT=/tmp/s bench/scale.sh
#                                                      # fill and keep the store, then soak on it
#   SKIP_BUILD=1 JETSTREAM_BIN=/path/to/jetstream KEEP=1 bench/scale.sh
#
# Settings (environment): CHECKPOINTS, PRODUCTS (1000000), SOAK_SECS (1800), SOAK_RATE (50000),
# SOAK_QUERY_RATE (500), CONNS (4 posts in flight), BODY_EVENTS (5000 NDJSON lines a body),
# QUERY_SECS (5), WRK_SECS (10) and RUNS (3) for the wrk phase, CONFIG (a settings file for the server), OUT (where the log and the JSON lines go),
# KEEP (1: keep the store), SKIP_BUILD, JETSTREAM_BIN, SOAK_PERF (1: a 10-s perf record of the
# server each soak minute, into OUT/soak-samples beside each thread's CPU and /metrics).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=bench/lib.sh
source "$HERE/lib.sh"
ROOT=$(dirname "$HERE")
CHECKPOINTS=${CHECKPOINTS:-1000000,10000000,100000000}
PRODUCTS=${PRODUCTS:-1000000}
SOAK_SECS=${SOAK_SECS:-1800}
SOAK_RATE=${SOAK_RATE:-50000}
SOAK_QUERY_RATE=${SOAK_QUERY_RATE:-500}
CONNS=${CONNS:-4}
BODY_EVENTS=${BODY_EVENTS:-5000}
QUERY_SECS=${QUERY_SECS:-5}
WRK_SECS=${WRK_SECS:-10}
RUNS=${RUNS:-3}
NGINX=${NGINX:-/usr/sbin/nginx}
CONFIG=${CONFIG:-}
KEEP=${KEEP:-0}
BIN=${JETSTREAM_BIN:-$ROOT/target/release/jetstream}
LOADER=$ROOT/target/release/examples/scale_bench
OUT=${OUT:-${TMPDIR:-/tmp}/jetstream-scale-$(date +%Y%m%d-%H%M%S)}
# REUSE=DIR: a store kept by an earlier run (KEEP=1; its OUT holds state.json): no fill, the soak only.
REUSE=${REUSE:-}
WORK=${REUSE:-$(mktemp -d "${TMPDIR:-/tmp}/jetstream-scale.XXXXXX")}
[[ -n $REUSE ]] && KEEP=1
work_traps scale.sh

if [[ ${SKIP_BUILD:-0} != 1 ]]; then
  (cd "$ROOT" && cargo build --release --bin jetstream --example scale_bench 2>&1 | tail -2)
fi
[[ -x $LOADER ]] || (cd "$ROOT" && cargo build --release --example scale_bench 2>&1 | tail -2)

STORE="sqlite://$WORK/store/js.db"
mkdir -p "$WORK/store"
CFG=()
[[ -n $CONFIG ]] && CFG=(--config "$CONFIG")
[[ -n $REUSE ]] && CHECKPOINTS=""
TOKEN=$("$BIN" token create --store "$STORE" "${CFG[@]}" --name "scale-$(date +%s)" --scope ingest,read,metrics)
"$BIN" serve --store "$STORE" "${CFG[@]}" --listen 127.0.0.1:0 >"$WORK/serve.out" 2>"$WORK/serve.err" &
SERVER_PID=$!
ADDR=$(server_address "$WORK/serve.out" "$WORK/serve.err" "$SERVER_PID") || exit 1
VERSION=$(cd "$ROOT" && git rev-parse --short HEAD)$(cd "$ROOT" && git diff --quiet HEAD -- src Cargo.toml 2>/dev/null || echo "+changes")
CMD="scale_bench --checkpoints $CHECKPOINTS --products $PRODUCTS --conns $CONNS --body-events $BODY_EVENTS --query-secs $QUERY_SECS --soak-secs $SOAK_SECS --soak-rate $SOAK_RATE --soak-query-rate $SOAK_QUERY_RATE"
{
  echo "== jetstream $VERSION, server $ADDR (pid $SERVER_PID), store $STORE; $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "== $CMD"
} | tee -a "$OUT/scale.log"
[[ -z $REUSE ]] && "$LOADER" --addr "$ADDR" --token "$TOKEN" --server-pid "$SERVER_PID" --store-dir "$WORK/store" \
  --checkpoints "$CHECKPOINTS" --products "$PRODUCTS" --conns "$CONNS" --body-events "$BODY_EVENTS" \
  --query-secs "$QUERY_SECS" --soak-secs 0 --state "$OUT/state.json" \
  >"$OUT/scale.jsonl" 2> >(tee -a "$OUT/scale.log" >&2)

# Seed endpoints on the filled store: the hot product, cold ones (ids with events, from the colder
# half of the ranks), and nginx serving a static body, each RUNS times interleaved, wrk -t2 -c16.
if [[ -z $REUSE && -x $NGINX ]] && command -v wrk >/dev/null; then
  start_nginx_reference "$NGINX" "$WORK" '{"total":1234.56,"count":42}' || exit 1
  echo "== seed endpoints: wrk -t2 -c16 -d${WRK_SECS}s --latency, $RUNS interleaved runs each (bench/query.lua, bench/disk-query.lua)" | tee -a "$OUT/scale.log"
  wrk_run() { # label script url prefix arg [token]
    local out=$WORK/wrk.out
    wrk -t2 -c16 -d"${WRK_SECS}s" --latency -s "$HERE/$2" "$3" -- "$4" "$5" "${6:-}" >"$out"
    echo "$1 $(sed -n 's/^RESULT //p' "$out")" | tee -a "$OUT/scale.log" "$OUT/seed.txt"
  }
  for r in $(seq 1 "$RUNS"); do
    wrk_run "run=$r nginx" query.lua "http://127.0.0.1:$NGX_PORT" /static.json 0
    wrk_run "run=$r hot" query.lua "http://$ADDR" /api/product/sale/1 0 "$TOKEN"
    wrk_run "run=$r cold" disk-query.lua "http://$ADDR" /api/product/sale/ "$OUT/state.ids" "$TOKEN"
  done
  wrk_medians "$OUT/seed.txt" | tee -a "$OUT/scale.log"
  kill "$NGX_PID" 2>/dev/null || true
fi

# The soak's minute samples beside the loader's own: each thread's CPU ticks (/proc/PID/task), the
# server's /metrics, and with SOAK_PERF=1 a 10-s `perf record --call-graph dwarf` of the server at each minute's
# start (bench/perf_summary.py reads them: perf script -i FILE -F comm,tid,ip,sym --no-inline).
soak_sampler() {
  local m=0 dir=$OUT/soak-samples
  mkdir -p "$dir"
  while kill -0 "$SERVER_PID" 2>/dev/null; do
    for t in /proc/"$SERVER_PID"/task/*; do
      echo "$(cat "$t/comm" 2>/dev/null) $(cut -d')' -f2- "$t/stat" 2>/dev/null | awk '{print $12 + $13}')"
    done >"$dir/threads-$m.txt"
    curl -s -H "authorization: Bearer $TOKEN" "http://$ADDR/metrics" >"$dir/metrics-$m.txt" || true
    if [[ ${SOAK_PERF:-0} == 1 ]]; then
      perf record -q -F 99 -g --call-graph dwarf,16384 -p "$SERVER_PID" -o "$dir/perf-$m.data" -- sleep 10 >/dev/null 2>&1 || true
      sleep 50
    else
      sleep 60
    fi
    m=$((m + 1))
  done
}

if ((SOAK_SECS > 0)); then
  echo "== soak: $SOAK_SECS s at $SOAK_RATE events/s, $SOAK_QUERY_RATE queries/s (10 % hot, 90 % cold)" | tee -a "$OUT/scale.log"
  soak_sampler &
  SAMPLER_PID=$!
  "$LOADER" --addr "$ADDR" --token "$TOKEN" --server-pid "$SERVER_PID" --store-dir "$WORK/store" \
    --checkpoints --products "$PRODUCTS" --soak-secs "$SOAK_SECS" --soak-rate "$SOAK_RATE" \
    --soak-query-rate "$SOAK_QUERY_RATE" --state "$OUT/state.json" \
    >>"$OUT/scale.jsonl" 2> >(tee -a "$OUT/scale.log" >&2)
  kill "$SAMPLER_PID" 2>/dev/null || true
fi
echo "== load average at the end $(cut -d' ' -f1-3 /proc/loadavg); server CPU $(ps -o times= -p "$SERVER_PID") s" | tee -a "$OUT/scale.log"
