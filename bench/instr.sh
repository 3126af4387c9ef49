#!/usr/bin/env bash
# Instructions per request on the seed endpoint's paths, counted by callgrind: a figure this shared
# 2-core host cannot move (wrk's req/s here moves ±15 % from round to round), for A/B of small
# changes. Each binary serves a small SQLite store under `valgrind --tool=callgrind`; for each path,
# 500 keep-alive requests warm it up, the counters are zeroed, 2,000 more are sent on one
# connection, and the dump's total (every thread of the process) is divided by 2,000. nginx
# serving a static body (one worker, no master) is counted the same way as the reference.
#
#   bench/instr.sh                                       # target/release/jetstream, and nginx
#   BINS="/tmp/js-old target/release/jetstream" bench/instr.sh
#
# Paths: hot (/api/product/sale/1, a product with sales this second: the read cache's answer,
# recomputed once a second), cold (/api/product/sale/2, last sold two hours ago: answered by the
# read cache's index), 404 (/api/product/sale/999999, never seen). Settings (environment): BINS, LOG (warn),
# REQUESTS (2000), WARMUP (500), NGINX (/usr/sbin/nginx; NGINX= skips the reference), SKIP_BUILD.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=bench/lib.sh
source "$HERE/lib.sh"
ROOT=$(dirname "$HERE")
BINS=${BINS:-$ROOT/target/release/jetstream}
REQUESTS=${REQUESTS:-2000}
WARMUP=${WARMUP:-500}
LOG=${LOG:-warn} # the servers' JETSTREAM_LOG: `info` counts the access log line per request too
NGINX=${NGINX-/usr/sbin/nginx}
command -v valgrind >/dev/null && command -v callgrind_control >/dev/null || {
  echo "bench/instr.sh needs valgrind (Debian: apt-get install valgrind)" >&2
  exit 2
}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/jetstream-instr.XXXXXX")
OUT=${OUT:-${TMPDIR:-/tmp}/jetstream-instr-$(date +%Y%m%d-%H%M%S)}
work_traps instr.sh
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
  (cd "$ROOT" && cargo build --release --bin jetstream 2>&1 | tail -2)
fi
read -r -a BIN_LIST <<<"$BINS"
STORE="sqlite://$WORK/js.db"
TOKEN=$("${BIN_LIST[0]}" token create --store "$STORE" --name "instr" --scope ingest,read)

# send URL N [TOKEN]: N GETs of URL on one keep-alive connection.
send() {
  python3 - "$@" <<'EOF'
import http.client, sys, urllib.parse
u = urllib.parse.urlsplit(sys.argv[1]); n = int(sys.argv[2]); token = sys.argv[3] if len(sys.argv) > 3 else ""
c = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
h = {"Authorization": f"Bearer {token}"} if token else {}
for _ in range(n):
    c.request("GET", u.path, headers=h); c.getresponse().read()
EOF
}

# count PID LABEL URL [TOKEN]: warm up, zero, send REQUESTS, dump; prints instructions per request.
count() {
  local pid=$1 label=$2 url=$3 token=${4:-}
  send "$url" "$WARMUP" "$token"
  callgrind_control --zero "$pid" >/dev/null 2>&1
  send "$url" "$REQUESTS" "$token"
  callgrind_control --dump="$label" "$pid" >/dev/null 2>&1
  local file total
  sleep 0.5
  file=$(grep -l "^desc: Trigger: dump $label\$" "$WORK"/cg.* | head -1)
  total=$(awk '/^summary:/ {print $2}' "$file")
  echo "$label $((total / REQUESTS))"
}

wait_http() { # URL
  local _
  for _ in $(seq 1 600); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.2; done
  echo "bench/instr.sh: $1 does not answer" >&2
  return 1
}

# The store: product 1 sold now, product 2 two hours ago (ingested by the first binary).
"${BIN_LIST[0]}" serve --store "$STORE" --listen 127.0.0.1:0 >"$WORK/serve.out" 2>"$WORK/serve.err" &
SERVER_PID=$!
ADDR=$(server_address "$WORK/serve.out" "$WORK/serve.err" "$SERVER_PID") || exit 1
python3 - "$ADDR" "$TOKEN" <<'EOF'
import json, sys, time, urllib.request
addr, token = sys.argv[1], sys.argv[2]
now = time.time()
def ts(t): return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
events = [{"event": "productSold", "product_id": 1, "no_of_units": 1, "amount": "10.50", "timestamp": ts(now)},
          {"event": "productSold", "product_id": 2, "no_of_units": 1, "amount": "3.25", "timestamp": ts(now - 7200)}]
req = urllib.request.Request(f"http://{addr}/api/v1/events", json.dumps(events).encode(),
                             {"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
assert json.load(urllib.request.urlopen(req))["accepted"] == 2
EOF
stop_server "$SERVER_PID"
SERVER_PID=""

echo "== instructions per request (callgrind, $REQUESTS requests after $WARMUP, one keep-alive connection)" | tee "$OUT/instr.txt"
for i in "${!BIN_LIST[@]}"; do
  rm -f "$WORK"/cg.*
  JETSTREAM_LOG=$LOG valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.%p" \
    "${BIN_LIST[$i]}" serve --store "$STORE" --listen 127.0.0.1:0 >"$WORK/serve.out" 2>"$WORK/serve.err" &
  SERVER_PID=$!
  ADDR=$(server_address "$WORK/serve.out" "$WORK/serve.err" "$SERVER_PID") || exit 1
  wait_http "http://$ADDR/healthz"
  sleep 5 # the read cache's index loads in the background
  for path in hot:/api/product/sale/1 cold:/api/product/sale/2 404:/api/product/sale/999999; do
    echo "bin$i $(count "$SERVER_PID" "bin$i-${path%%:*}" "http://$ADDR${path#*:}" "$TOKEN")" | tee -a "$OUT/instr.txt"
  done
  stop_server "$SERVER_PID"
  SERVER_PID=""
done
if [[ -n $NGINX ]]; then
  rm -f "$WORK"/cg.*
  NGINX_ONE=1 NGINX_PREFIX="valgrind --tool=callgrind --callgrind-out-file=$WORK/cg.%p" \
    start_nginx_reference "$NGINX" "$WORK" '{"total":1234.56,"count":42}' || exit 1
  count "$NGX_PID" nginx-static "http://127.0.0.1:$NGX_PORT/static.json" | tee -a "$OUT/instr.txt"
fi
for i in "${!BIN_LIST[@]}"; do echo "   bin$i = ${BIN_LIST[$i]}"; done | tee -a "$OUT/instr.txt"
