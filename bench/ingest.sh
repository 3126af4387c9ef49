#!/usr/bin/env bash
# Jetstream HTTP ingest benchmark, on its own: a fresh SQLite store per run, wrk POSTing 1,000-event
# bodies for DURATION s, throughput = acknowledged events/s; the store's totals are checked after
# every run. With BIN_B set, runs alternate between two binaries (A/B on the same noisy machine).
#
#   bench/ingest.sh                                    # target/release/jetstream, RUNS=3
#   BIN_B=/tmp/old/jetstream RUNS=5 bench/ingest.sh     # interleaved A/B, medians of each
#   PERF=1 bench/ingest.sh                             # also records a profile of run 1 (perf)
#   PRELOAD_EVENTS=500000 bench/ingest.sh              # each store first holds 500k events timed
#                                                      # over the last hour (loader.py preload)
#
# Settings: RUNS (3), DURATION (8), THREADS (2), CONNS (16), PRODUCTS (1000), BIN (A),
# BIN_B (none), CONFIG (none: a config file for both servers), PERF (0), KEEP (0), PRELOAD_EVENTS (0).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"
ROOT=$(dirname "$HERE")
RUNS=${RUNS:-3}
DURATION=${DURATION:-8}
THREADS=${THREADS:-2}
CONNS=${CONNS:-16}
PRODUCTS=${PRODUCTS:-1000}
BIN=${BIN:-$ROOT/target/release/jetstream}
BIN_B=${BIN_B:-}
CONFIG=${CONFIG:-}
PERF=${PERF:-0}
KEEP=${KEEP:-0}
PRELOAD_EVENTS=${PRELOAD_EVENTS:-0}

for tool in wrk python3 jq curl; do
  command -v "$tool" >/dev/null || { echo "ingest.sh: $tool is required" >&2; exit 2; }
done
WORK=$(mktemp -d /tmp/jetstream-ingest.XXXXXX)
SERVER_PID=""
cleanup() {
  if [[ -n $SERVER_PID ]]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  if [[ $KEEP == 1 ]]; then echo "ingest.sh: kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

python3 "$HERE/loader.py" gen --dir "$WORK/bodies" --bodies 32 --products "$PRODUCTS" >"$WORK/bodies.json"
CENTS=$(jq .cents "$WORK/bodies.json")
echo "load: $(cut -d' ' -f1-3 /proc/loadavg); wrk -t$THREADS -c$CONNS -d${DURATION}s -s bench/ingest.lua, fresh store per run" >&2

one_run() { # label binary run
  local label=$1 bin=$2 r=$3 store="sqlite://$WORK/$1.$3.db" cfg=() addr=""
  [[ -n $CONFIG ]] && cfg=(--config "$CONFIG")
  local itok rtok
  itok=$("$bin" token create --store "$store" "${cfg[@]}" --name ingest --scope ingest)
  rtok=$("$bin" token create --store "$store" "${cfg[@]}" --name read --scope read)
  JETSTREAM_LOG=warn "$bin" serve --store "$store" "${cfg[@]}" --listen 127.0.0.1:0 >"$WORK/serve.out" 2>"$WORK/serve.err" &
  SERVER_PID=$!
  addr=$(server_address "$WORK/serve.out" "$WORK/serve.err" "$SERVER_PID") || exit 1
  local base=0
  if ((PRELOAD_EVENTS > 0)); then
    python3 "$HERE/loader.py" preload --addr "$addr" --token "$itok" --events "$PRELOAD_EVENTS" --conns 8 >"$WORK/preload.json"
    base=$(jq .acked_events "$WORK/preload.json")
    echo "$label run $r: preloaded $base events at $(jq .events_per_s "$WORK/preload.json") events/s" >&2
  fi
  local perf_pid=""
  if [[ $PERF == 1 && $r == 1 ]]; then
    perf record -e cpu-clock -F 499 -g --call-graph dwarf,16384 -p "$SERVER_PID" -o "$WORK/perf.$label.data" \
      -- sleep "$DURATION" >/dev/null 2>&1 &
    perf_pid=$!
  fi
  wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --timeout 30s -s "$HERE/ingest.lua" "http://$addr" \
    -- "$WORK/bodies" "$itok" >"$WORK/wrk.out"
  [[ -n $perf_pid ]] && wait "$perf_pid"
  local line kv R_acked_requests=0 R_duration_s=1 R_p50_ms=0 R_p99_ms=0 R_bad=0
  line=$(sed -n 's/^RESULT //p' "$WORK/wrk.out")
  for kv in $line; do printf -v "R_${kv%%=*}" '%s' "${kv#*=}"; done
  sleep 1
  local t stored amount_ok eps
  t=$(python3 "$HERE/loader.py" totals --addr "$addr" --token "$rtok")
  stored=$(($(jq .events <<<"$t") - base))
  amount_ok=$(python3 -c "from decimal import Decimal as D; print(int(D('$(jq -r .amount <<<"$t")') == D(($stored + $base)//1000*$CENTS)/100))")
  kill -TERM "$SERVER_PID"; wait "$SERVER_PID" || true; SERVER_PID=""
  eps=$(python3 -c "print(round($R_acked_requests * 1000 / $R_duration_s))")
  echo "$label run $r: $eps events/s (acked $((R_acked_requests * 1000)), stored $stored, amount exact $amount_ok, bad $R_bad), POST p50 $R_p50_ms ms p99 $R_p99_ms ms" >&2
  if ((stored < R_acked_requests * 1000 || amount_ok != 1 || R_bad != 0)); then
    echo "ingest.sh: the store does not match the acknowledged events" >&2; exit 1
  fi
  echo "$label $eps" >>"$WORK/results"
  rm -f "$WORK/$label.$r.db"*
}

for r in $(seq 1 "$RUNS"); do
  one_run A "$BIN" "$r"
  [[ -n $BIN_B ]] && one_run B "$BIN_B" "$r"
done
for label in A B; do
  grep -q "^$label " "$WORK/results" 2>/dev/null || continue
  sort -n -k2 <(grep "^$label " "$WORK/results") | awk -v l="$label" '{v[NR]=$2} END {
    printf "RESULT %s median %d events/s over %d runs [%d..%d]\n", l, v[int((NR+1)/2)], NR, v[1], v[NR] }'
done
if [[ $PERF == 1 ]]; then
  for f in "$WORK"/perf.*.data; do
    perf script -i "$f" -F comm,tid,ip,sym --no-inline >"${f%.data}.txt" 2>/dev/null
    echo "== profile $(basename "$f")" && python3 "$HERE/perf_summary.py" "${f%.data}.txt" --top 30
  done
fi
