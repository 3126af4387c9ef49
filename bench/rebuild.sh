#!/usr/bin/env bash
# Rebuild benchmark (issue: "Rebuild, backfill and replay"): how fast `jetstream rollups rebuild`
# reads raw events back into rollups, and how much a rebuild slows live ingest.
#
#   bench/rebuild.sh                          # target/release/jetstream, RUNS=3
#   PRELOAD_EVENTS=3000000 bench/rebuild.sh   # a bigger store
#
# 1. Rebuild rate: a SQLite store is preloaded with PRELOAD_EVENTS events of the original design
#    (loader.py preload: 1,000-event bodies, 70 % sales / 30 % ratings, timed over the last hour);
#    the server is stopped and `jetstream rollups rebuild` (every declared metric) runs RUNS times
#    on it. Rate = events read / wall time of the command (claim, steps, merge and swap included).
#    The figures read back through the API before and after must be equal (checked).
# 2. Live ingest while a rebuild runs: the server runs on the preloaded store; wrk POSTs 1,000-event
#    bodies for DURATION s, alone (the reference, same run) and with `rollups rebuild` running in a
#    loop beside it. Ratio = with / alone; the issue asks for at least 0.5.
#
# Settings: RUNS (3), DURATION (10), CONNS (16), PRODUCTS (1000), PRELOAD_EVENTS (1000000), BIN,
# KEEP (0). Needs wrk, jq, curl, python3.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"
ROOT=$(dirname "$HERE")
RUNS=${RUNS:-3}
DURATION=${DURATION:-10}
CONNS=${CONNS:-16}
PRODUCTS=${PRODUCTS:-1000}
PRELOAD_EVENTS=${PRELOAD_EVENTS:-1000000}
BIN=${BIN:-$ROOT/target/release/jetstream}
KEEP=${KEEP:-0}

for tool in wrk python3 jq curl; do
  command -v "$tool" >/dev/null || { echo "rebuild.sh: $tool is required" >&2; exit 2; }
done
[[ -x $BIN ]] || { echo "rebuild.sh: build first: cargo build --release (or set BIN)" >&2; exit 2; }
WORK=$(mktemp -d /tmp/jetstream-rebuild.XXXXXX)
SERVER_PID=""
LOOP_PID=""
cleanup() {
  if [[ -n $LOOP_PID ]]; then kill "$LOOP_PID" 2>/dev/null || true; wait "$LOOP_PID" 2>/dev/null || true; fi
  if [[ -n $SERVER_PID ]]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  if [[ $KEEP == 1 ]]; then echo "rebuild.sh: kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

STORE="sqlite://$WORK/store.db"
ITOK=$("$BIN" token create --store "$STORE" --name ingest --scope ingest)
RTOK=$("$BIN" token create --store "$STORE" --name read --scope read)
start_server() {
  JETSTREAM_LOG=warn "$BIN" serve --store "$STORE" --listen 127.0.0.1:0 >"$WORK/serve.out" 2>"$WORK/serve.err" &
  SERVER_PID=$!
  ADDR=$(server_address "$WORK/serve.out" "$WORK/serve.err" "$SERVER_PID") || exit 1
}
stop_server() { kill -TERM "$SERVER_PID"; wait "$SERVER_PID" || true; SERVER_PID=""; }
figures() { # the all-time figures of every metric, as the API answers them
  local m
  for m in events sales_amount sales_units rating; do
    curl -fsS -H "authorization: Bearer $RTOK" "http://$ADDR/api/v1/metrics/$m?window=36500d" | jq -c .result
  done
}

echo "load: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) cores; preloading $PRELOAD_EVENTS events" >&2
start_server
python3 "$HERE/loader.py" preload --addr "$ADDR" --token "$ITOK" --events "$PRELOAD_EVENTS" --conns 8 >"$WORK/preload.json"
figures >"$WORK/before.txt"
stop_server
echo "store: $(du -h "$WORK/store.db" | cut -f1) for $(jq .acked_events "$WORK/preload.json") events" >&2

rates=()
for r in $(seq 1 "$RUNS"); do
  start=$(date +%s.%N)
  out=$(JETSTREAM_LOG=warn "$BIN" rollups rebuild --store "$STORE" 2>/dev/null)
  end=$(date +%s.%N)
  events=$(sed -n 's/.* from \([0-9]*\) events in.*/\1/p' <<<"$out")
  rate=$(python3 -c "print(round($events / ($end - $start)))")
  rates+=("$rate")
  echo "rebuild run $r: $events events in $(python3 -c "print(round($end - $start, 2))") s = $rate events/s ($out)" >&2
done
start_server
figures >"$WORK/after.txt"
cmp -s "$WORK/before.txt" "$WORK/after.txt" || { echo "rebuild.sh: figures changed by the rebuild:" >&2; diff "$WORK/before.txt" "$WORK/after.txt" >&2; exit 1; }
echo "figures before and after the rebuilds: equal ($(wc -l <"$WORK/before.txt") metrics, all-time)" >&2

python3 "$HERE/loader.py" gen --dir "$WORK/bodies" --bodies 32 --products "$PRODUCTS" >"$WORK/bodies.json"
ingest() { # one wrk run; prints acknowledged events/s
  wrk -t2 -c"$CONNS" -d"${DURATION}s" --timeout 30s -s "$HERE/ingest.lua" "http://$ADDR" -- "$WORK/bodies" "$ITOK" >"$WORK/wrk.out"
  local line kv R_acked_requests=0 R_duration_s=1
  line=$(sed -n 's/^RESULT //p' "$WORK/wrk.out")
  for kv in $line; do printf -v "R_${kv%%=*}" '%s' "${kv#*=}"; done
  python3 -c "print(round($R_acked_requests * 1000 / $R_duration_s))"
}
alone=()
beside=()
for r in $(seq 1 "$RUNS"); do
  a=$(ingest)
  alone+=("$a")
  (while true; do JETSTREAM_LOG=warn "$BIN" rollups rebuild --store "$STORE" --metric sales_amount >/dev/null 2>&1 || sleep 0.2; done) &
  LOOP_PID=$!
  sleep 1
  b=$(ingest)
  kill "$LOOP_PID" 2>/dev/null; wait "$LOOP_PID" 2>/dev/null || true; LOOP_PID=""
  sleep 1
  beside+=("$b")
  echo "ingest run $r: alone $a events/s, beside a rebuild $b events/s" >&2
done
stop_server

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ra=$(median "${alone[@]}")
rb=$(median "${beside[@]}")
echo
echo "| figure (median of $RUNS, $(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg)) | value |"
echo "|---|---|"
echo "| rebuild, every metric, SQLite, $(jq .acked_events "$WORK/preload.json") events | $(median "${rates[@]}") events/s |"
echo "| HTTP ingest alone (reference, same run) | $ra events/s |"
echo "| HTTP ingest beside a rebuild loop | $rb events/s ($(python3 -c "print(round($rb / $ra, 2))")x) |"
echo
echo "commands: PRELOAD_EVENTS=$PRELOAD_EVENTS RUNS=$RUNS DURATION=$DURATION bench/rebuild.sh"
