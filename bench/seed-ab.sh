#!/usr/bin/env bash
# The seed endpoints against nginx, A/B of jetstream binaries on one store (issue 17: "hot and cold
# products at the same latency, >= 0.9x nginx static"). The store is filled once (scale_bench: 1M
# products, the hot one 10 % of the events, Zipf 1.0 for the rest, times over a week); then each
# round runs wrk against nginx serving a static body and against each binary in turn, started on
# that same store: the hot product (/api/product/sale/1) and cold ones (100,000 ids from the
# colder half of the ranks, each a read-cache miss). Medians per binary, each next to nginx's.
#
#   bench/seed-ab.sh                                     # target/release/jetstream alone
#   BINS="/tmp/js-old target/release/jetstream" bench/seed-ab.sh
#
# Settings (environment): BINS (binaries, the first fills the store), EVENTS (2000000), PRODUCTS
# (1000000), RUNS (3 rounds), WRK_SECS (8), WARMUP_SECS (1: the first pass on each start; a
# server loading its read cache's index, ~3 s on this store, is still doing so), JETSTREAM_LOG (unset: the server's default, `info`,
# with its access log line per request, written to a file), NGINX, NGINX_ACCESS_LOG (0; 1: nginx
# writes its access log too, see lib.sh), SKIP_BUILD, OUT, PIN (unset: no
# pinning; "0:1" runs wrk on CPU 0 and nginx and each jetstream on CPU 1, so that the load
# generator does not take the measured server's core; a pinned jetstream runs one tokio worker).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=bench/lib.sh
source "$HERE/lib.sh"
ROOT=$(dirname "$HERE")
BINS=${BINS:-$ROOT/target/release/jetstream}
EVENTS=${EVENTS:-2000000}
PRODUCTS=${PRODUCTS:-1000000}
RUNS=${RUNS:-3}
WRK_SECS=${WRK_SECS:-8}
WARMUP_SECS=${WARMUP_SECS:-1}
NGINX=${NGINX:-/usr/sbin/nginx}
LOADER=$ROOT/target/release/examples/scale_bench
# KEEP=1 keeps the filled store (its directory is printed); REUSE=that directory skips the fill.
REUSE=${REUSE:-}
KEEP=${KEEP:-0}
[[ -n $REUSE ]] && KEEP=1
WORK=${REUSE:-$(mktemp -d "${TMPDIR:-/tmp}/jetstream-seed.XXXXXX")}
OUT=${OUT:-${TMPDIR:-/tmp}/jetstream-seed-ab-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$WORK/store"
work_traps seed-ab.sh
WRK_PIN=()
SERVER_PIN=()
if [[ -n ${PIN:-} ]]; then
  WRK_PIN=(taskset -c "${PIN%%:*}")
  SERVER_PIN=(taskset -c "${PIN##*:}")
fi

if [[ ${SKIP_BUILD:-0} != 1 ]]; then
  (cd "$ROOT" && cargo build --release --bin jetstream --example scale_bench 2>&1 | tail -2)
fi
read -r -a BIN_LIST <<<"$BINS"
STORE="sqlite://$WORK/store/js.db"
start_server() { # binary
  "${SERVER_PIN[@]}" "$1" serve --store "$STORE" --listen 127.0.0.1:0 >"$WORK/serve.out" 2>"$WORK/serve.err" &
  SERVER_PID=$!
  ADDR=$(server_address "$WORK/serve.out" "$WORK/serve.err" "$SERVER_PID") || exit 1
}

if [[ -z $REUSE ]]; then
  "${BIN_LIST[0]}" token create --store "$STORE" --name "seed-$(date +%s)" --scope ingest,read >"$WORK/token"
  start_server "${BIN_LIST[0]}"
  echo "== $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg); fill: scale_bench --checkpoints $EVENTS --products $PRODUCTS" | tee "$OUT/seed-ab.log"
  "$LOADER" --addr "$ADDR" --token "$(cat "$WORK/token")" --server-pid "$SERVER_PID" --store-dir "$WORK/store" \
    --checkpoints "$EVENTS" --products "$PRODUCTS" --query-secs 1 --soak-secs 0 --state "$WORK/state.json" \
    >/dev/null 2> >(tee -a "$OUT/seed-ab.log" >&2)
  stop_server "$SERVER_PID"
  SERVER_PID=""
fi
TOKEN=$(cat "$WORK/token")

NGINX_PREFIX="${SERVER_PIN[*]}" start_nginx_reference "$NGINX" "$WORK" '{"total":1234.56,"count":42}' || exit 1
echo "== wrk -t2 -c16 -d${WRK_SECS}s --latency, $RUNS rounds (bench/query.lua, bench/disk-query.lua); JETSTREAM_LOG=${JETSTREAM_LOG:-(default)}; PIN=${PIN:-(none)}" | tee -a "$OUT/seed-ab.log"
wrk_run() { # label script url prefix arg [token]
  "${WRK_PIN[@]}" wrk -t2 -c16 -d"${WRK_SECS}s" --latency -s "$HERE/$2" "$3" -- "$4" "$5" "${6:-}" >"$WORK/wrk.out"
  echo "$1 $(sed -n 's/^RESULT //p' "$WORK/wrk.out")" | tee -a "$OUT/seed-ab.log" "$OUT/seed-ab.txt"
}
for r in $(seq 1 "$RUNS"); do
  wrk_run "run=$r nginx" query.lua "http://127.0.0.1:$NGX_PORT" /static.json 0
  for i in "${!BIN_LIST[@]}"; do
    start_server "${BIN_LIST[$i]}"
    # One short pass first: the page cache and the read cache's connections, as in a running server.
    "${WRK_PIN[@]}" wrk -t2 -c16 -d"${WARMUP_SECS}s" -s "$HERE/disk-query.lua" "http://$ADDR" -- /api/product/sale/ "$WORK/state.ids" "$TOKEN" >/dev/null
    wrk_run "run=$r bin$i-hot" query.lua "http://$ADDR" /api/product/sale/1 0 "$TOKEN"
    wrk_run "run=$r bin$i-cold" disk-query.lua "http://$ADDR" /api/product/sale/ "$WORK/state.ids" "$TOKEN"
    echo "run=$r bin$i RSS after the runs: $(awk '/VmRSS/ {printf "%.0f MB", $2 / 1024}' "/proc/$SERVER_PID/status")" | tee -a "$OUT/seed-ab.log"
    stop_server "$SERVER_PID"
    SERVER_PID=""
  done
done
for i in "${!BIN_LIST[@]}"; do echo "   bin$i = ${BIN_LIST[$i]}"; done | tee -a "$OUT/seed-ab.log"
[[ -s $OUT/seed-ab.txt ]] && wrk_medians "$OUT/seed-ab.txt" | tee -a "$OUT/seed-ab.log"
echo "== load average at the end $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/seed-ab.log"
