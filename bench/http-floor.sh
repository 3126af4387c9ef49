#!/usr/bin/env bash
# The floor under the seed endpoints (issue 17: "hot product ≥ 0.9x nginx static"): in the same
# rounds, wrk against nginx serving a static body, against examples/http_floor.rs (a handler that
# does nothing: bare hyper, an axum router without layers, and that router on one current-thread
# runtime per core with SO_REUSEPORT), and against the server's hot seed endpoint. What separates
# nginx from the floor is the Rust stack; what separates the floor from Jetstream is Jetstream.
#
#   bench/http-floor.sh
#   RUNS=5 WRK_SECS=8 JETSTREAM_LOG=warn bench/http-floor.sh
#
# Settings (environment): RUNS (3 rounds), WRK_SECS (6), MODES (hyper axum axum-per-core),
# JETSTREAM_BIN (target/release/jetstream), JETSTREAM_LOG (warn: nginx's reference has its access
# log off), NGINX, SKIP_BUILD, OUT.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=bench/lib.sh
source "$HERE/lib.sh"
ROOT=$(dirname "$HERE")
RUNS=${RUNS:-3}
WRK_SECS=${WRK_SECS:-6}
MODES=${MODES:-hyper axum axum-per-core}
NGINX=${NGINX:-/usr/sbin/nginx}
BIN=${JETSTREAM_BIN:-$ROOT/target/release/jetstream}
FLOOR=$ROOT/target/release/examples/http_floor
export JETSTREAM_LOG=${JETSTREAM_LOG:-warn}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/jetstream-floor.XXXXXX")
OUT=${OUT:-${TMPDIR:-/tmp}/jetstream-floor-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT" "$WORK/store"
SERVER_PID=""
NGX_PID=""
FLOOR_PID=""
cleanup() {
  if [[ -n $FLOOR_PID ]]; then kill "$FLOOR_PID" 2>/dev/null || true; fi
  stop_work http-floor.sh
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [[ ${SKIP_BUILD:-0} != 1 ]]; then
  (cd "$ROOT" && cargo build --release --bin jetstream --example http_floor 2>&1 | tail -2)
fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Jetstream on a store holding one sale of product 1: the hot path is a read-cache hit.
STORE="sqlite://$WORK/store/js.db"
TOKEN=$("$BIN" token create --store "$STORE" --name floor --scope ingest,read)
"$BIN" serve --store "$STORE" --listen 127.0.0.1:0 >"$WORK/serve.out" 2>"$WORK/serve.err" &
SERVER_PID=$!
ADDR=$(server_address "$WORK/serve.out" "$WORK/serve.err" "$SERVER_PID") || exit 1
curl -fsS -X POST -H "Authorization: Bearer $TOKEN" "http://$ADDR/api/v1/events" \
  -d '{"event_name":"productSold","product_id":1,"no_of_units":1,"amount":"1234.56"}' >/dev/null
curl -fsS -H "Authorization: Bearer $TOKEN" "http://$ADDR/api/product/sale/1" >"$WORK/answer.json"

start_nginx_reference "$NGINX" "$WORK" '{"total":1234.56,"count":42}' || exit 1
echo "== $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg); wrk -t2 -c16 -d${WRK_SECS}s, $RUNS rounds; JETSTREAM_LOG=$JETSTREAM_LOG" | tee "$OUT/floor.log"
echo "   jetstream's answer: $(cat "$WORK/answer.json")" | tee -a "$OUT/floor.log"
wrk_run() { # label url [token]
  wrk -t2 -c16 -d"${WRK_SECS}s" --latency -s "$HERE/query.lua" "$2" -- "$3" 0 "${4:-}" >"$WORK/wrk.out"
  echo "$1 $(sed -n 's/^RESULT //p' "$WORK/wrk.out")" | tee -a "$OUT/floor.log" "$OUT/floor.txt"
}
for r in $(seq 1 "$RUNS"); do
  wrk_run "run=$r nginx" "http://127.0.0.1:$NGX_PORT" /static.json
  for m in $MODES; do
    port=$(free_port)
    "$FLOOR" "$m" "127.0.0.1:$port" >"$WORK/floor.out" 2>&1 &
    FLOOR_PID=$!
    for _ in $(seq 1 50); do curl -fsS -o /dev/null "http://127.0.0.1:$port/x" 2>/dev/null && break; sleep 0.1; done
    wrk_run "run=$r $m" "http://127.0.0.1:$port" /x
    kill "$FLOOR_PID"
    wait "$FLOOR_PID" 2>/dev/null || true
    FLOOR_PID=""
  done
  wrk_run "run=$r jetstream-hot" "http://$ADDR" /api/product/sale/1 "$TOKEN"
done
echo "== medians" | tee -a "$OUT/floor.log"
wrk_medians "$OUT/floor.txt" | tee -a "$OUT/floor.log"
