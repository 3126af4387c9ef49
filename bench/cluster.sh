#!/usr/bin/env bash
# The fleet's benchmark (deploy/local-cluster.sh: tansu, PostgreSQL — or one shared SQLite file with
# CLUSTER_STORE=sqlite — two consumers, two API instances, nginx), a script, not a test:
#   1. ingest: EVENTS events produced with `jetstream send` while the two consumers run; events/s
#      = EVENTS / (time from the first send until the API, through nginx, counts them all);
#   2. queries: wrk through nginx on GET /api/product/sale/{1..}, THREADS/CONNS for DURATION s,
#      requests/s and p50/p99 (wrk --latency);
#   3. freshness across the fleet: MARKERS marker sales posted to api-1, one every 50 ms; from each
#      acknowledgement, api-2's seed endpoint is polled every 2 ms until it counts the marker
#      (p50/p99/max); first on an idle fleet, then while api-1 takes FRESH_RATE events/s of HTTP
#      ingest (loader.py paced) — every one of its commits notifies api-2.
#   bench/cluster.sh          EVENTS=500000 DURATION=20 CONNS=64 bench/cluster.sh
#   CLUSTER_STORE=sqlite bench/cluster.sh      # the same topology on the embedded store
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
EVENTS=${EVENTS:-300000}
DURATION=${DURATION:-10}
THREADS=${THREADS:-2}
CONNS=${CONNS:-32}
MARKERS=${MARKERS:-200}
FRESH_RATE=${FRESH_RATE:-20000}
export JETSTREAM_CLUSTER_DIR
JETSTREAM_CLUSTER_DIR=$(mktemp -d -t jetstream-cluster-bench.XXXXXX)
trap '"$ROOT/deploy/local-cluster.sh" stop; rm -rf "$JETSTREAM_CLUSTER_DIR"' EXIT
"$ROOT/deploy/local-cluster.sh" start >/dev/null
set -a; . "$JETSTREAM_CLUSTER_DIR/env"; set +a
BIN=${JETSTREAM_BIN:-$ROOT/target/release/jetstream}

python3 - "$EVENTS" >"$JETSTREAM_CLUSTER_DIR/events.ndjson" <<'PY'
import json, random, sys
rng = random.Random(1)
for i in range(int(sys.argv[1])):
    p = rng.randint(1, 1000)
    print(json.dumps({"event_name": "productSold", "product_id": p, "no_of_units": 1,
                      "amount": f"{rng.randint(1, 999)}.{rng.randint(0, 99):02d}"}, separators=(",", ":")))
PY
# One poller process on one keep-alive connection: a curl and a python3 started every 100 ms
# (through pyenv's shell shims) took ~15 % of the 2 cores this run measures.
PY=$(python3 -c 'import sys; print(sys.executable)')
t0=$(date +%s.%N)
"$BIN" send --brokers "$BROKERS" --topic "$TOPIC" <"$JETSTREAM_CLUSTER_DIR/events.ndjson" >/dev/null &
SEND=$!
t1=$("$PY" - "$LB_URL" "$READ_TOKEN" "$EVENTS" <<'PY'
import http.client, json, sys, time, urllib.parse
u = urllib.parse.urlsplit(sys.argv[1])
conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
while True:
    conn.request("GET", "/api/v1/metrics/events?from=0", headers={"Authorization": f"Bearer {sys.argv[2]}"})
    r = conn.getresponse()
    body = r.read()
    if r.status == 200 and json.loads(body)["result"]["count"] >= int(sys.argv[3]):
        print(f"{time.time():.6f}")
        break
    time.sleep(0.1)
PY
)
wait "$SEND"
INGEST=$(python3 -c "print(round($EVENTS / ($t1 - $t0)))")

# The reference (PostgreSQL only): COPY of the same events, as rows, into an unindexed table of the
# same database, from the client side (psql \copy), timed from the start of the copy to its commit.
COPY_REF=""
if [[ ${CLUSTER_STORE:-postgres} == postgres ]] && command -v psql >/dev/null; then
  python3 -c '
import json, sys
for line in sys.stdin:
    e = json.loads(line)
    print(e["product_id"], e["no_of_units"], e["amount"], sep=",")' \
    <"$JETSTREAM_CLUSTER_DIR/events.ndjson" >"$JETSTREAM_CLUSTER_DIR/events.csv"
  psql -q "$DATABASE_URL" -c "DROP TABLE IF EXISTS copy_reference" \
    -c "CREATE TABLE copy_reference (product_id bigint, no_of_units bigint, amount numeric, at timestamptz DEFAULT now())"
  c0=$(date +%s.%N)
  psql -q "$DATABASE_URL" -c "\\copy copy_reference (product_id, no_of_units, amount) FROM '$JETSTREAM_CLUSTER_DIR/events.csv' WITH (FORMAT csv)"
  c1=$(date +%s.%N)
  COPY_REF=$(python3 -c "print(round($EVENTS / ($c1 - $c0)))")
  psql -q "$DATABASE_URL" -c "DROP TABLE copy_reference"
fi

cat >"$JETSTREAM_CLUSTER_DIR/q.lua" <<LUA
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", "/api/product/sale/" .. (n % 1000 + 1), {["Authorization"] = "Bearer $READ_TOKEN"})
end
LUA
WRK=$(wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency -s "$JETSTREAM_CLUSTER_DIR/q.lua" "$LB_URL")
echo "$WRK" >&2
RPS=$(awk '/Requests\/sec/ {print $2}' <<<"$WRK")
P50=$(awk '$1 == "50%" {print $2}' <<<"$WRK")
P99=$(awk '$1 == "99%" {print $2}' <<<"$WRK")
NON2XX=$(awk '/Non-2xx/ {print $NF}' <<<"$WRK")
# 3. Freshness: an ack on api-1, visible on api-2.
hostport() { sed -E 's|^[a-z]+://||; s|/.*$||' <<<"$1"; }
fresh() {
  "$PY" "$ROOT/bench/loader.py" fresh --addr "$(hostport "$API_1_URL")" --token "$INGEST_TOKEN" \
    --read-addr "$(hostport "$API_2_URL")" --read-token "$READ_TOKEN" --markers "$MARKERS" --product "$1"
}
fresh_figures() { python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print("p50 {p50_ms} ms, p99 {p99_ms} ms, max {max_ms} ms, over 250 ms: {over_250_ms} of {markers}".format(**r))' "$1"; }
FRESH_IDLE=$(fresh 9000001)
echo "freshness, idle: $FRESH_IDLE" >&2
FRESH_SECS=$(python3 -c "print($MARKERS * 0.05 + 10)")
"$PY" "$ROOT/bench/loader.py" paced --addr "$(hostport "$API_1_URL")" --token "$INGEST_TOKEN" \
  --rate "$FRESH_RATE" --duration "$FRESH_SECS" >"$JETSTREAM_CLUSTER_DIR/paced.json" &
PACED=$!
sleep 3
FRESH_LOAD=$(fresh 9000002)
echo "freshness, under load: $FRESH_LOAD" >&2
wait "$PACED"
PACED_RATE=$(python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["events_per_s"]))' "$JETSTREAM_CLUSTER_DIR/paced.json")

cat <<OUT

== Jetstream fleet on ${CLUSTER_STORE:-postgres} ($(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ)) ==
ingest from Kafka (2 consumers)   $INGEST events/s  ($EVENTS events, send + consume overlapped)
${COPY_REF:+reference: PostgreSQL COPY     $COPY_REF rows/s  (the same $EVENTS events as rows, psql \\copy into an unindexed table)
}queries through nginx (2 APIs)    $RPS req/s, p50 $P50, p99 $P99  (wrk -t$THREADS -c$CONNS -d${DURATION}s; non-2xx: ${NON2XX:-0})
ack on api-1 -> seen on api-2     idle: $(fresh_figures "$FRESH_IDLE")
                                  under $PACED_RATE events/s of HTTP ingest on api-1: $(fresh_figures "$FRESH_LOAD")
OUT
