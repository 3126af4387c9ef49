#!/usr/bin/env bash
# The fleet's failure test (issue 4), through the front door: real processes, real broker, real
# PostgreSQL, real nginx. About a minute; not part of scripts/test.sh's cargo run.
#
#   1. deploy/local-cluster.sh start: tansu, a fresh PostgreSQL database, consumer-1/2
#      (`jetstream consume`), api-1/2 (`jetstream serve --no-consume`), nginx over api-1/2;
#   2. produces EVENTS known events (sales with exact decimal amounts, and ratings) at RATE
#      events/s with `jetstream send` (NDJSON on stdin), while QUERIERS threads query through
#      nginx without pause (keep-alive connections, the seed and the /api/v1 endpoints);
#   3. a third of the way in, SIGKILLs consumer-1 and restarts it 11 s later (as a supervisor
#      would: tansu 0.6 hands a dead member's partitions over only when a member joins, and only
#      once the dead member's 10 s session has expired — a member joining earlier can leave them
#      with the dead member for good); two thirds in, SIGKILLs api-1 (restarted 3 s later: nginx
#      must take it back);
#   4. checks: no query through nginx failed, except at most one per querier in the 2 s after the
#      API instance died (the ones in flight on it; nginx retries those GETs on the other
#      instance, so normally none fail); the totals through nginx equal exactly the events
#      produced (event count, sale count, decimal sum of amounts, rating count), and still do
#      3 s later (nothing counted twice after the consumer's restart); a live stream
#      (/api/v1/stream) held through nginx all along pushed figures, reconnected when its instance
#      died, and showed the final total (its delay after the store held it is printed).
#
# Exit 0 when every check passes, 1 on any mismatch (the failing check is printed).
#
#   scripts/cluster-test.sh
#   EVENTS=300000 RATE=20000 QUERIERS=8 scripts/cluster-test.sh
#   SKIP_BUILD=1 KEEP=1 scripts/cluster-test.sh      # keep the cluster's logs
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
EVENTS=${EVENTS:-150000}
RATE=${RATE:-10000}
QUERIERS=${QUERIERS:-4}
KEEP=${KEEP:-0}

export JETSTREAM_CLUSTER_DIR
# The test is about Jetstream: no Prometheus even where one is installed (deploy/local-cluster.sh
# starts one then, for a person looking at the fleet).
export PROMETHEUS=${PROMETHEUS:-none}
JETSTREAM_CLUSTER_DIR=$(mktemp -d -t jetstream-cluster-test.XXXXXX)
CLUSTER=$ROOT/deploy/local-cluster.sh
cleanup() {
    "$CLUSTER" stop || true
    if [ "$KEEP" = 1 ]; then echo "kept $JETSTREAM_CLUSTER_DIR" >&2; else rm -rf "$JETSTREAM_CLUSTER_DIR"; fi
}
trap cleanup EXIT

"$CLUSTER" start >/dev/null
set -a # the cluster's URLs and tokens, for the driver below
# shellcheck disable=SC1091
. "$JETSTREAM_CLUSTER_DIR/env"
set +a
BIN=${JETSTREAM_BIN:-$ROOT/target/release/jetstream}

python3 - "$BIN" "$CLUSTER" "$EVENTS" "$RATE" "$QUERIERS" <<'EOF'
import http.client, json, os, random, subprocess, sys, threading, time
from decimal import Decimal

bin_, cluster, events, rate, queriers = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
env = os.environ
lb = env["LB_URL"].removeprefix("http://")
brokers, topic, token = env["BROKERS"], env["TOPIC"], env["READ_TOKEN"]

def log(msg):
    print(f"[cluster-test {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

# ---- the known stream ------------------------------------------------------------------------
rng = random.Random(4)
lines, sold, ratings, cents_total = [], 0, 0, 0
for i in range(events):
    p = rng.randint(1, 200)
    if rng.random() < 0.7:
        cents = rng.randint(1, 99999)
        sold += 1
        cents_total += cents
        lines.append(json.dumps({"event_name": "productSold", "product_id": p, "no_of_units": rng.randint(1, 5),
                                 "amount": f"{cents // 100}.{cents % 100:02d}", "category": f"c{p % 7}"}))
    else:
        ratings += 1
        lines.append(json.dumps({"event": "productRated", "product_id": p, "rating": rng.randint(1, 5)}))
expected = {"events": events, "sold": sold, "amount": Decimal(cents_total) / 100, "ratings": ratings}

# ---- the load through nginx ------------------------------------------------------------------
PATHS = ["/api/product/sale/{p}", "/api/product/rating/{p}", "/api/v1/metrics/events?from=0",
         "/api/v1/metrics/sales_amount?dim=product_id&value={p}&window=1h"]
stop = threading.Event()
results = []  # per querier: (ok, [(time, what) of each failure])

def query_loop(seed):
    r = random.Random(seed)
    conn, ok, failures = None, 0, []
    while not stop.is_set():
        path = r.choice(PATHS).format(p=r.randint(1, 200))
        try:
            if conn is None:
                conn = http.client.HTTPConnection(*lb.split(":"), timeout=10)
            conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
            resp = conn.getresponse()
            resp.read()
            # 404: a product with no event yet, a correct answer early in the stream.
            if resp.status in (200, 404):
                ok += 1
            else:
                failures.append((time.time(), f"{path}: HTTP {resp.status}"))
        except Exception as e:  # a failed request through nginx, whatever the cause
            failures.append((time.time(), f"{path}: {type(e).__name__}: {e}"))
            conn = None
    results.append((ok, failures))

def get(path):
    c = http.client.HTTPConnection(*lb.split(":"), timeout=10)
    c.request("GET", path, headers={"Authorization": f"Bearer {token}"})
    r = c.getresponse()
    body = r.read()
    if r.status != 200:
        raise RuntimeError(f"GET {path}: HTTP {r.status} {body[:200]!r}")
    return json.loads(body, parse_float=Decimal)["result"]

def totals():
    ev = get("/api/v1/metrics/events?from=0")
    sa = get("/api/v1/metrics/sales_amount?from=0")
    ra = get("/api/v1/metrics/rating?from=0")
    return {"events": ev["count"], "sold": sa["count"], "amount": Decimal(str(sa["sum"] or 0)), "ratings": ra["count"]}

# ---- a live stream through nginx, from the API instances that do not consume -----------------
# It must pass nginx unbuffered, follow the instance it lands on being killed (reconnect with
# Last-Event-ID), and reach the final total soon after the store holds it.
stream_seen = []    # (arrival time, events count) of each pushed figure
stream_errors = []  # (time, what)
STREAM_PATH = "/api/v1/stream?sub=" + __import__("urllib.parse").parse.quote("ev:/api/v1/metrics/events?from=0", safe="")

def stream_loop():
    last_id = None
    while not stop.is_set():
        try:
            c = http.client.HTTPConnection(*lb.split(":"), timeout=30)
            headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
            if last_id:
                headers["Last-Event-ID"] = last_id
            c.request("GET", STREAM_PATH, headers=headers)
            r = c.getresponse()
            if r.status != 200:
                stream_errors.append((time.time(), f"HTTP {r.status}"))
                time.sleep(0.5)
                continue
            while not stop.is_set():
                line = r.fp.readline()
                if not line:
                    break
                if line.startswith(b"id:"):
                    last_id = line[3:].strip().decode()
                elif line.startswith(b"data:"):
                    stream_seen.append((time.time(), json.loads(line[5:])["result"]["count"]))
        except Exception as e:  # the instance died under the stream: reconnect
            stream_errors.append((time.time(), f"{type(e).__name__}: {e}"))
            time.sleep(0.2)

threading.Thread(target=stream_loop, daemon=True).start()

def cluster_cmd(*args):
    subprocess.run([cluster, *args], check=True, stderr=subprocess.DEVNULL)

threads = [threading.Thread(target=query_loop, args=(s,)) for s in range(queriers)]
for t in threads:
    t.start()

# ---- produce, paced, with the two kills --------------------------------------------------------
send = subprocess.Popen([bin_, "send", "--brokers", brokers, "--topic", topic], stdin=subprocess.PIPE,
                        stdout=subprocess.DEVNULL)
log(f"producing {events} events at {rate}/s with {queriers} queriers through nginx")
start = time.time()
chunk = max(1, rate // 20)
kills = [(events // 3, "consumer-1"), (2 * events // 3, "api-1")]
api_killed_at = None
CONSUMER_RESTART_AFTER = 11
pending = []  # (when, name) restarts due
sent = 0
while sent < events:
    n = min(chunk, events - sent)
    send.stdin.write(("\n".join(lines[sent:sent + n]) + "\n").encode())
    send.stdin.flush()
    sent += n
    while kills and sent >= kills[0][0]:
        _, name = kills.pop(0)
        cluster_cmd("kill", name)
        log(f"SIGKILLed {name} after {sent} events")
        if name.startswith("api"):
            api_killed_at = time.time()
        # tansu 0.6 hands a dead member's partitions to a member that joins only after the dead
        # one's session (the consumer's session.timeout.ms, 10 s) expired; one joining earlier
        # can leave them assigned to the dead member for good (tests/kafka.rs waits the same).
        pending.append((time.time() + (CONSUMER_RESTART_AFTER if name.startswith("consumer") else 3), name))
    for due, name in list(pending):
        if time.time() >= due:
            cluster_cmd("restart", name)
            log(f"restarted {name}")
            pending.remove((due, name))
    delay = start + sent / rate - time.time()
    if delay > 0:
        time.sleep(delay)
send.stdin.close()
if send.wait() != 0:
    sys.exit("jetstream send failed")
for due, name in pending:
    time.sleep(max(0, due - time.time()))
    cluster_cmd("restart", name)
    log(f"restarted {name}")
log(f"produced {events} events in {time.time() - start:.1f} s; waiting for the totals")

# ---- the totals ------------------------------------------------------------------------------
deadline = time.time() + 120
while True:
    got = totals()
    if got["events"] >= events or time.time() > deadline:
        break
    time.sleep(0.5)
consumed_at = time.time()
log(f"consumed in {consumed_at - start:.1f} s from the first event")
# Each answer may be up to api.cache_ttl (1 s, the default) old, counted from the start of the
# store read behind it, and the three totals are three answers, perhaps from both instances: the
# events total reaching the end says nothing yet of the other two. Past the ttl, all must be exact.
time.sleep(1.5)
got = totals()
time.sleep(3)  # a double count after the consumer's restart would show now
again = totals()
# The stream has had 4.5 s since the store held the last event: it must show the total.
stream_final = [t for t, n in stream_seen if n == events]
stop.set()
for t in threads:
    t.join()

ok = sum(r[0] for r in results)
failures = sorted(f for r in results for f in r[1])
excused = [f for f in failures if api_killed_at and 0 <= f[0] - api_killed_at <= 2]
unexcused = [f for f in failures if f not in excused]
elapsed = time.time() - start
log(f"queries through nginx: {ok} answered, {len(failures)} failed "
    f"({len(excused)} in the 2 s after api-1 died), {ok / elapsed:.0f}/s")
problems = []
if unexcused:
    problems.append(f"{len(unexcused)} queries failed outside the kill of api-1, first: {unexcused[:3]}")
if len(excused) > queriers:
    problems.append(f"{len(excused)} queries failed when api-1 died, more than the {queriers} in flight")
for k in expected:
    for label, g in (("final", got), ("3 s later", again)):
        if g[k] != expected[k]:
            problems.append(f"{label} {k}: {g[k]} through the API, {expected[k]} produced")
if ok == 0:
    problems.append("no query succeeded: the load generator did not run")
if len(stream_seen) < 5:
    problems.append(f"the live stream through nginx pushed {len(stream_seen)} figures: {stream_errors[:3]}")
if not stream_final:
    problems.append(f"the live stream never showed the total {events}: last {stream_seen[-3:]}, errors {stream_errors[:3]}")
else:
    log(f"live stream through nginx: {len(stream_seen)} figures pushed, {len(stream_errors)} reconnects, "
        f"the total {stream_final[0] - consumed_at:+.2f} s from when a query first saw it")
print(json.dumps({"events": events, "expected": {k: str(v) for k, v in expected.items()},
                  "final": {k: str(v) for k, v in again.items()}, "queries_ok": ok,
                  "queries_failed": len(failures), "seconds": round(elapsed, 1),
                  "stream_figures": len(stream_seen), "stream_reconnects": len(stream_errors)}))
if problems:
    for p in problems:
        log("FAIL: " + p)
    sys.exit(1)
log("PASS: totals exact after a consumer and an API instance were SIGKILLed; no query lost")
EOF

# Every process, the restarted ones included, serves Prometheus metrics on its ops port.
for u in $OPS_URLS; do
    body=$(curl -fsS --max-time 5 "http://$u/metrics") || body=""
    grep -q '^jetstream_build_info' <<<"$body" \
        || { echo "[cluster-test] FAIL: no metrics on the ops port $u" >&2; exit 1; }
done
echo "[cluster-test] PASS: metrics on every ops port ($OPS_URLS)" >&2
