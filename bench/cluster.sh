#!/usr/bin/env bash
# The fleet's benchmark (deploy/local-cluster.sh: tansu, PostgreSQL — or one shared SQLite file with
# CLUSTER_STORE=sqlite — two consumers, two API instances, nginx), a script, not a test:
#   1. ingest: EVENTS events produced with `jetstream send` while the two consumers run; events/s
#      = EVENTS / (time from the first send until the API, through nginx, counts them all);
#   2. queries: wrk through nginx on GET /api/product/sale/{1..}, THREADS/CONNS for DURATION s,
#      requests/s and p50/p99 (wrk --latency).
#   bench/cluster.sh          EVENTS=500000 DURATION=20 CONNS=64 bench/cluster.sh
#   CLUSTER_STORE=sqlite bench/cluster.sh      # the same topology on the embedded store
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
EVENTS=${EVENTS:-300000}
DURATION=${DURATION:-10}
THREADS=${THREADS:-2}
CONNS=${CONNS:-32}
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
t0=$(date +%s.%N)
"$BIN" send --brokers "$BROKERS" --topic "$TOPIC" <"$JETSTREAM_CLUSTER_DIR/events.ndjson" >/dev/null &
SEND=$!
until [ "$(curl -fsS -H "Authorization: Bearer $READ_TOKEN" "$LB_URL/api/v1/metrics/events?from=0" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["result"]["count"])')" -ge "$EVENTS" ]; do sleep 0.1; done
t1=$(date +%s.%N)
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
cat <<OUT

== Jetstream fleet on ${CLUSTER_STORE:-postgres} ($(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ)) ==
ingest from Kafka (2 consumers)   $INGEST events/s  ($EVENTS events, send + consume overlapped)
${COPY_REF:+reference: PostgreSQL COPY     $COPY_REF rows/s  (the same $EVENTS events as rows, psql \\copy into an unindexed table)
}queries through nginx (2 APIs)    $RPS req/s, p50 $P50, p99 $P99  (wrk -t$THREADS -c$CONNS -d${DURATION}s; non-2xx: ${NON2XX:-0})
OUT
