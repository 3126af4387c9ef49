#!/usr/bin/env bash
# Kafka benchmark (a script, not a test). Against a local tansu broker (memory engine) on
# 127.0.0.1, with the release binary and a fresh SQLite store in a temporary directory:
#
#   1. produce:    EVENTS events into a PARTITIONS-partition topic with `jetstream send`
#                  (the broker's ingest rate, for scale);
#   2. consume:    `jetstream serve --kafka-brokers …` on that full topic, until the store holds
#                  every event: end-to-end events/s from a full topic to committed rollups, checked
#                  exactly (event count and the exact decimal sum of amounts); next to it, in the
#                  same run, the reference: a bare rdkafka consumer (examples/bare_consumer.rs: same
#                  client settings, no parsing, no store) reading the same topic from the start;
#   3. freshness:  a steady RATE events/s for DURATION s into a second topic while the server
#                  consumes it; every 50 ms a marker sale of one product is produced, and a poller
#                  reads that product's sales through the API every 2 ms: freshness = time from
#                  handing the marker to the producer until the API counts it (p50/p99/max).
#
# CPU time of the broker and of Jetstream is read from /proc during phases 2 and 3, to show
# which one the machine's cores are spent on.
#
#   bench/kafka.sh                          # ~2 minutes with the defaults
#   EVENTS=2000000 RATE=20000 DURATION=60 bench/kafka.sh
#   SKIP_BUILD=1 JETSTREAM_BIN=/path/to/jetstream bench/kafka.sh
#   KEEP=1 bench/kafka.sh                   # keep the work directory (logs, stores)
#   KEEP=1 PERF=1 bench/kafka.sh            # also profile the consuming server in phase 2
#
# Needs python3 (standard library only) and tansu (scripts/ensure-tansu.sh installs it).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
BIN=${JETSTREAM_BIN:-$ROOT/target/release/jetstream}
EVENTS=${EVENTS:-1000000}
PARTITIONS=${PARTITIONS:-4}
RATE=${RATE:-20000}
DURATION=${DURATION:-30}
PRODUCTS=${PRODUCTS:-1000}
KEEP=${KEEP:-0}

WORK=$(mktemp -d -t jetstream-kafka-bench.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ "$KEEP" = 1 ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

TANSU=$("$ROOT/scripts/ensure-tansu.sh")
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  log "cargo build --release"
  (cd "$ROOT" && cargo build --release --bin jetstream --example bare_consumer 2>&1 | tail -1) >&2
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICKS=$(getconf CLK_TCK)

PORT=$(free_port)
BROKER=127.0.0.1:$PORT
(cd "$WORK" && exec "$TANSU" broker --listener-url "tcp://$BROKER" --advertised-listener-url "tcp://$BROKER" \
  --storage-engine memory://tansu/ >"$WORK/tansu.log" 2>&1) &
TANSU_PID=$!
PIDS+=("$TANSU_PID")
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
log "tansu $("$TANSU" --version | head -1) on $BROKER (memory engine), pid $TANSU_PID"

# Starts `jetstream serve` consuming topic $1 into store $2; sets SERVE_PID and ADDR.
start_serve() {
  local topic=$1 store=$2
  "$BIN" serve --store "$store" --listen 127.0.0.1:0 --kafka-brokers "$BROKER" --kafka-topic "$topic" \
    --kafka-group "bench-$topic" >"$WORK/serve-$topic.out" 2>"$WORK/serve-$topic.err" &
  SERVE_PID=$!
  PIDS+=("$SERVE_PID")
  ADDR=$(server_address "$WORK/serve-$topic.out" "$WORK/serve-$topic.err" "$SERVE_PID") || exit 1
}

# ---------------------------------------------------------------------------------------------
log "phase 1: generating $EVENTS events and producing them to topic 'full' ($PARTITIONS partitions)"
"$TANSU" topic create full --broker "tcp://$BROKER" --partitions "$PARTITIONS" >/dev/null
python3 - "$EVENTS" "$PRODUCTS" "$WORK/events.ndjson" >"$WORK/expected.json" <<'EOF'
import json, random, sys
n, products, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
rng = random.Random(42)
cats = [f"cat{i}" for i in range(20)]
sold = cents_total = 0
with open(path, "w") as f:
    for i in range(n):
        p = rng.randint(1, products)
        if rng.random() < 0.7:
            cents = rng.randint(100, 99999)
            sold += 1
            cents_total += cents
            amount = f"{cents // 100}.{cents % 100:02d}"
            e = {"event_name": "productSold", "name_of_product": f"Product {p}", "product_id": p,
                 "no_of_units": rng.randint(1, 5), "amount": amount if i % 2 else float(amount),
                 "category": cats[p % 20]}
        else:
            e = {"event": "productRated", "name_of_product": f"Product {p}", "product_id": p,
                 "rating": rng.randint(1, 5), "category": cats[p % 20]}
        f.write(json.dumps(e, separators=(",", ":")) + "\n")
print(json.dumps({"events": n, "sold": sold, "amount": f"{cents_total // 100}.{cents_total % 100:02d}"}))
EOF
t0=$(date +%s.%N)
"$BIN" send --brokers "$BROKER" --topic full <"$WORK/events.ndjson" >"$WORK/send-full.out"
t1=$(date +%s.%N)
PRODUCE_RATE=$(python3 -c "print(round($EVENTS / ($t1 - $t0)))")
log "produced $EVENTS events in $(python3 -c "print(round($t1 - $t0, 2))") s: $PRODUCE_RATE events/s"

# ---------------------------------------------------------------------------------------------
log "phase 2: consuming the full topic into a fresh store"
STORE=sqlite://$WORK/e2e.db
TOKEN=$("$BIN" token create --store "$STORE" --name bench --scope read,admin)
cpu_broker0=$(cpu_ticks "$TANSU_PID")
start_serve full "$STORE"
E2E_PID=$SERVE_PID
PERF_PID=""
if [ "${PERF:-0}" = 1 ]; then
  # PERF=1: a profile of the consuming server during phase 2 (perf report -i $WORK/perf.e2e.data).
  perf record -F 999 -g --call-graph dwarf,16384 -p "$E2E_PID" -o "$WORK/perf.e2e.data" >/dev/null 2>&1 &
  PERF_PID=$!
fi
python3 - "$ADDR" "$TOKEN" "$WORK/expected.json" "$E2E_PID" >"$WORK/e2e.json" <<'EOF'
import http.client, json, sys, time
addr, token, expected_path, pid = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
expected = json.load(open(expected_path))
host, port = addr.rsplit(":", 1)
conn = http.client.HTTPConnection(host, int(port), timeout=10)
def get(path):
    conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
    r = conn.getresponse()
    body = r.read()
    return json.loads(body) if r.status == 200 else None
start = time.time()  # the server process has just printed its address
first = None
while True:
    out = get("/api/v1/metrics/events?from=0")
    count = out["result"]["count"] if out else 0
    now = time.time()
    if count and first is None:
        first = (now, count)
    if count >= expected["events"]:
        break
    if now - start > 600:
        sys.exit(f"timed out: {count} of {expected['events']} events after 600 s")
    time.sleep(0.05)
done = time.time()
amount = get("/api/v1/metrics/sales_amount?from=0")["result"]["sum"]
print(json.dumps({
    "events": count, "seconds": round(done - start, 3),
    "events_per_s": round(count / (done - start)),
    "steady_events_per_s": round((count - first[1]) / max(done - first[0], 1e-9)),
    "first_commit_after_s": round(first[0] - start, 3),
    "exact": count == expected["events"] and str(amount) == expected["amount"],
    "amount": str(amount), "expected_amount": expected["amount"],
}))
EOF
cpu_broker1=$(cpu_ticks "$TANSU_PID")
cpu_js=$(cpu_ticks "$E2E_PID")
if [ -n "$PERF_PID" ]; then kill -INT "$PERF_PID"; wait "$PERF_PID" 2>/dev/null || true; log "profile: $WORK/perf.e2e.data"; fi
kill -TERM "$E2E_PID"; wait "$E2E_PID" 2>/dev/null || true
E2E=$(cat "$WORK/e2e.json")
E2E_SECONDS=$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['seconds'])" "$E2E")
E2E_CPU=$(python3 -c "
b=($cpu_broker1-$cpu_broker0)/$TICKS; j=$cpu_js/$TICKS; s=$E2E_SECONDS
print(f'broker {b/s:.2f} cores, jetstream {j/s:.2f} cores (of 2) over {s} s')")
log "consumed: $E2E"
log "cpu: $E2E_CPU"
BARE_BIN=${BARE_BIN:-$ROOT/target/release/examples/bare_consumer}
BARE=$("$BARE_BIN" "$BROKER" full "$EVENTS")
log "bare consumer (reference, same topic and broker): $BARE"
BARE_RATIO=$(python3 -c "import json,sys; e=json.loads(sys.argv[1]); b=json.loads(sys.argv[2]); print(f\"{e['events_per_s'] / b['records_per_s']:.2f}\")" "$E2E" "$BARE")
log "jetstream / bare consumer: $BARE_RATIO (target >= 0.90)"

# ---------------------------------------------------------------------------------------------
log "phase 3: freshness at $RATE events/s for $DURATION s"
"$TANSU" topic create fresh --broker "tcp://$BROKER" --partitions "$PARTITIONS" >/dev/null
STORE=sqlite://$WORK/fresh.db
TOKEN=$("$BIN" token create --store "$STORE" --name bench --scope read,admin)
start_serve fresh "$STORE"
FRESH_PID=$SERVE_PID
for _ in $(seq 100); do
  code=$(python3 -c "
import urllib.request, sys
try: print(urllib.request.urlopen('http://$ADDR/readyz', timeout=2).status)
except Exception as e: print(getattr(e, 'code', 0))")
  [ "$code" = 200 ] && break
  sleep 0.2
done
cpu_broker0=$(cpu_ticks "$TANSU_PID")
cpu_js0=$(cpu_ticks "$FRESH_PID")
python3 - "$BIN" "$BROKER" "$ADDR" "$TOKEN" "$RATE" "$DURATION" "$PRODUCTS" >"$WORK/fresh.json" <<'EOF'
import http.client, json, random, subprocess, sys, threading, time
bin_, broker, addr, token, rate, duration, products = sys.argv[1:8]
rate, duration, products = int(rate), float(duration), int(products)
MARKER = 9_000_000  # a product id the load never uses
send = subprocess.Popen([bin_, "send", "--brokers", broker, "--topic", "fresh"],
                        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
sent_at = {}  # marker number -> time handed to the producer
seen_at = {}
stop = threading.Event()

def poll():
    host, port = addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    seen = 0
    while not stop.is_set() or seen < len(sent_at):
        conn.request("GET", f"/api/product/sale/{MARKER}", headers={"Authorization": f"Bearer {token}"})
        r = conn.getresponse()
        body = json.loads(r.read())
        now = time.time()
        count = body.get("count", 0) if r.status == 200 else 0
        for m in range(seen + 1, count + 1):
            seen_at[m] = now
        seen = max(seen, count)
        if stop.is_set() and time.time() - stop_time > 10:
            break
        time.sleep(0.002)

rng = random.Random(7)
def event(i):
    p = rng.randint(1, products)
    return json.dumps({"event_name": "productSold", "product_id": p, "no_of_units": 1,
                       "amount": f"{rng.randint(1, 999)}.{rng.randint(0, 99):02d}"}) + "\n"

poller = threading.Thread(target=poll)
poller.start()
tick = 0.01
per_tick = rate * tick
start = time.time()
sent = 0
markers = 0
next_marker = start + 0.05
carry = 0.0
while time.time() - start < duration:
    t = start + tick * (int((time.time() - start) / tick) + 1)
    carry += per_tick
    n = int(carry)
    carry -= n
    chunk = "".join(event(sent + k) for k in range(n))
    sent += n
    extra = ""
    if time.time() >= next_marker:
        extra = json.dumps({"event_name": "productSold", "product_id": MARKER, "no_of_units": 1,
                            "amount": "1"}) + "\n"
        next_marker += 0.05
    send.stdin.write((chunk + extra).encode())
    send.stdin.flush()
    if extra:
        markers += 1
        sent_at[markers] = time.time()
    delay = t - time.time()
    if delay > 0:
        time.sleep(delay)
elapsed = time.time() - start
stop_time = time.time()
stop.set()
send.stdin.close()
send.wait()
poller.join()
warm = 2.0  # ignore the first seconds (connections, first fetches)
lat = sorted((seen_at[m] - sent_at[m]) * 1000 for m in sent_at if m in seen_at and sent_at[m] - start > warm)
missing = sum(1 for m in sent_at if m not in seen_at)
pct = lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))], 1) if lat else None
print(json.dumps({"target_events_per_s": rate, "achieved_events_per_s": round(sent / elapsed),
                  "markers": len(lat), "markers_never_seen": missing,
                  "p50_ms": pct(0.50), "p99_ms": pct(0.99), "max_ms": round(lat[-1], 1) if lat else None}))
EOF
cpu_broker1=$(cpu_ticks "$TANSU_PID")
cpu_js1=$(cpu_ticks "$FRESH_PID")
FRESH=$(cat "$WORK/fresh.json")
FRESH_CPU=$(python3 -c "
b=($cpu_broker1-$cpu_broker0)/$TICKS; j=($cpu_js1-$cpu_js0)/$TICKS; s=$DURATION
print(f'broker {b/s:.2f} cores, jetstream {j/s:.2f} cores (of 2)')")
kill -TERM "$FRESH_PID"; wait "$FRESH_PID" 2>/dev/null || true
log "freshness: $FRESH"

# ---------------------------------------------------------------------------------------------
cat <<EOF

== Jetstream Kafka benchmark ($(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ)) ==
broker                  tansu memory engine on $BROKER, $PARTITIONS partitions
produce (jetstream send) $PRODUCE_RATE events/s  (the broker's ingest rate, for scale)
consume end to end      $E2E
  cpu                   $E2E_CPU
bare consumer (ref.)    $BARE
  jetstream / bare      $BARE_RATIO  (target >= 0.90)
freshness               $FRESH
  cpu                   $FRESH_CPU
EOF
