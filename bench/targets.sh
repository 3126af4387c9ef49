#!/usr/bin/env bash
# Every row of issue 17's table, each next to the reference measured in the same invocation, from
# one command. It runs the benchmark behind each row (their own settings and checks apply: a run
# whose store does not match what was acknowledged fails), keeps each one's whole output in OUT,
# and prints the table: figure, target, this run (median of RUNS where the script runs once per
# call), the reference, met or not, and the machine's load before and after each step.
#
#   bench/targets.sh                          # ~25 minutes; the cost curve to 10M events
#   RUNS=1 bench/targets.sh                   # one run of each: ~12 minutes, for a quick look
#   CHECKPOINTS=1000000,10000000,100000000 SOAK_SECS=1800 bench/targets.sh   # the issue's full
#                                             # 100M curve and 30-minute soak (~2.5 hours)
#   STEPS="ingest fleet" bench/targets.sh     # some rows only
#   STEPS= OUT=/tmp/jetstream-targets.XXXXXX bench/targets.sh   # the table again from a run's output
#
# Settings (environment): STEPS ("ingest kafka fleet notfound scale"), RUNS (3), CHECKPOINTS
# (1000000,10000000: scale.sh's, also where the seed, RSS and disk rows are measured), SOAK_SECS
# (0), SKIP_BUILD, JETSTREAM_BIN, OUT (a new directory under $TMPDIR or /tmp).
# Needs what the scripts it runs need: wrk, nginx, jq, python3, tansu (scripts/ensure-tansu.sh)
# and the PostgreSQL of DATABASE_URL (default postgres://postgres@127.0.0.1:5432/postgres).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
STEPS=${STEPS-ingest kafka fleet notfound scale}
RUNS=${RUNS:-3}
CHECKPOINTS=${CHECKPOINTS:-1000000,10000000}
SOAK_SECS=${SOAK_SECS:-0}
OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/jetstream-targets.XXXXXX")}
mkdir -p "$OUT"
export JETSTREAM_BIN=${JETSTREAM_BIN:-$ROOT/target/release/jetstream}
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
  (cd "$ROOT" && cargo build --release --bin jetstream --example scale_bench --example bare_consumer 2>&1 | tail -1)
fi
export SKIP_BUILD=1
VERSION=$(cd "$ROOT" && git rev-parse --short HEAD)$(cd "$ROOT" && git diff --quiet HEAD -- src Cargo.toml 2>/dev/null || echo "+changes")
echo "== jetstream $VERSION, $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ); STEPS=\"$STEPS\" RUNS=$RUNS; output in $OUT" | tee "$OUT/targets.log"

# step NAME COMMAND…: runs a benchmark into OUT/NAME.log with the load average before and after.
step() {
  local name=$1
  shift
  echo "== $name: $* (load $(cut -d' ' -f1-3 /proc/loadavg))" | tee -a "$OUT/targets.log"
  local t0=$SECONDS
  if ! "$@" >"$OUT/$name.log" 2>&1; then
    echo "== $name FAILED; the end of $OUT/$name.log:" | tee -a "$OUT/targets.log"
    tail -20 "$OUT/$name.log" | tee -a "$OUT/targets.log"
    exit 1
  fi
  echo "$name load_after=$(cut -d' ' -f1 /proc/loadavg) secs=$((SECONDS - t0))" >>"$OUT/steps.txt"
}

for s in $STEPS; do
  case $s in
    ingest) step ingest env RUNS="$RUNS" PRELOAD_EVENTS=2000000 BIN="$JETSTREAM_BIN" "$HERE/ingest.sh" ;;
    kafka) for r in $(seq 1 "$RUNS"); do step "kafka-$r" env EVENTS=1000000 RATE=20000 DURATION=20 "$HERE/kafka.sh"; done ;;
    fleet) for r in $(seq 1 "$RUNS"); do step "fleet-$r" env EVENTS=2000000 MARKERS=100 DURATION=5 "$HERE/cluster.sh"; done ;;
    notfound)
      step notfound env RUNS="$(((RUNS + 1) / 2))" BIN_A="$JETSTREAM_BIN" BIN_B="$JETSTREAM_BIN" "$HERE/notfound-ab.sh"
      ;;
    scale)
      step scale env CHECKPOINTS="$CHECKPOINTS" SOAK_SECS="$SOAK_SECS" RUNS="$RUNS" WRK_SECS=8 OUT="$OUT/scale" \
        "$HERE/scale.sh"
      ;;
    *) echo "targets.sh: unknown step $s (ingest kafka fleet notfound scale)" >&2; exit 2 ;;
  esac
done

python3 - "$OUT" <<'PY' | tee "$OUT/table.md"
import glob, json, os, re, statistics, sys
out = sys.argv[1]
def read(name):
    p = os.path.join(out, name)
    return open(p).read() if os.path.exists(p) else None
def med(xs):
    return statistics.median(xs) if xs else None
def fmt(x, unit=""):
    return "—" if x is None else (f"{x:,.0f}{unit}" if abs(x) >= 100 else f"{x:.2f}{unit}")
def jline(text, label):
    m = re.search(rf"^{re.escape(label)}\s+(\{{.*\}})\s*$", text, re.M)
    return json.loads(m.group(1)) if m else None
rows = []
def row(figure, target, now, ref, met):
    rows.append((figure, target, now, ref, "—" if met is None else ("yes" if met else "**no**")))

# HTTP ingest: ingest.sh's median over RUNS fresh 2M-event stores.
t = read("ingest.log")
if t and (m := re.search(r"RESULT \S+ median (\d+) events/s over (\d+) runs \[(\d+)\.\.(\d+)\]", t)):
    v = int(m.group(1))
    row("HTTP ingest, durable, 1,000-event bodies, store holding 2M events", "≥ 1,000,000 events/s",
        f"{v:,} events/s (median of {m.group(2)}, {int(m.group(3)):,}–{int(m.group(4)):,})", "—", v >= 1_000_000)

# Kafka: end to end against the bare consumer of the same run, and freshness at 20k events/s.
ratios, e2e, bare, fresh = [], [], [], []
for f in sorted(glob.glob(os.path.join(out, "kafka-*.log"))):
    t = open(f).read()
    e, b, fr = jline(t, "consume end to end"), jline(t, "bare consumer (ref.)"), jline(t, "freshness")
    if e and b:
        e2e.append(e["events_per_s"]); bare.append(b["records_per_s"]); ratios.append(e["events_per_s"] / b["records_per_s"])
    if fr and fr.get("p99_ms") is not None:
        fresh.append(fr["p99_ms"])
if ratios:
    row("Kafka → committed rollups (SQLite), 4 partitions", "≥ 0.90 of a bare consumer",
        f"{fmt(med(e2e))} events/s = {med(ratios):.2f}× bare (runs: {', '.join(f'{r:.2f}' for r in ratios)})",
        f"bare rdkafka consumer {fmt(med(bare))} records/s", med(ratios) >= 0.90)
if fresh:
    row("Freshness: Kafka produce → visible in the API, 20k events/s", "p99 ≤ 100 ms",
        f"p99 {med(fresh):.1f} ms (runs: {', '.join(f'{x:.1f}' for x in fresh)})", "—", med(fresh) <= 100)

# The PostgreSQL fleet: ingest against COPY, and freshness across instances (idle).
ing, copy, fl = [], [], []
for f in sorted(glob.glob(os.path.join(out, "fleet-*.log"))):
    t = open(f).read()
    if m := re.search(r"ingest from Kafka \(2 consumers\)\s+(\d+) events/s", t): ing.append(int(m.group(1)))
    if m := re.search(r"reference: PostgreSQL COPY\s+(\d+) rows/s", t): copy.append(int(m.group(1)))
    if m := re.search(r"^freshness, idle: (\{.*\})", t, re.M): fl.append(json.loads(m.group(1))["p99_ms"])
if fl:
    row("Freshness: HTTP ack → visible on another fleet instance", "p99 ≤ 250 ms",
        f"p99 {med(fl):.1f} ms (runs: {', '.join(f'{x:.1f}' for x in fl)})", "—", med(fl) <= 250)
if ing:
    row("PostgreSQL fleet (2 consumers, 2 API instances, nginx), Kafka → committed", "≥ 250,000 events/s",
        f"{fmt(med(ing))} events/s (runs: {', '.join(f'{x:,}' for x in ing)})",
        f"PostgreSQL COPY of the same rows {fmt(med(copy))} rows/s", med(ing) >= 250_000)

# The seed endpoints (scale.sh's wrk phase on its filled store) against nginx static.
seed = {}
p = os.path.join(out, "scale", "seed.txt")
if os.path.exists(p):
    for line in open(p):
        parts = line.split()
        kv = dict(x.split("=", 1) for x in parts[2:] if "=" in x)
        if "rps" in kv:
            seed.setdefault(parts[1], []).append((float(kv["rps"]), float(kv["p99_ms"])))
if "nginx" in seed:
    ng = med([r for r, _ in seed["nginx"]])
    for label in ("hot", "cold"):
        if label in seed:
            rps, p99 = med([r for r, _ in seed[label]]), med([q for _, q in seed[label]])
            row(f"Seed endpoint, {label} product{'s' if label == 'cold' else ''} (10% of events / 100,000 cold ids)",
                "≥ 0.9× nginx static req/s, hot and cold alike",
                f"{fmt(rps)} req/s = {rps / ng:.2f}× nginx, p99 {p99:.2f} ms", f"nginx static {fmt(ng)} req/s", rps / ng >= 0.9)

# The 404 path: made-up ids against known ones in the same runs.
t = read("notfound.log")
if t:
    known = [float(m.group(1)) for m in re.finditer(r" known: .*?rps=([\d.]+)", t)]
    unknown = [float(m.group(1)) for m in re.finditer(r" unknown: .*?rps=([\d.]+)", t)]
    if known and unknown:
        r = med(unknown) / med(known)
        row("Seed endpoints for unknown ids (404)", "as cheap as a known id",
            f"{fmt(med(unknown))} req/s = {r:.2f}× known", f"known ids {fmt(med(known))} req/s", r >= 0.9)

# RSS, disk and the cost curve: scale.sh's checkpoints (and its soak, when it ran one).
p = os.path.join(out, "scale", "scale.jsonl")
cps = [json.loads(l) for l in open(p) if l.startswith("{")] if os.path.exists(p) else []
cps = [c for c in cps if c.get("kind") == "checkpoint"]
if cps:
    last = cps[-1]
    peak = max(c["rss_peak_mb"] for c in cps)
    row(f"Memory (RSS) while filling to {last['events']:,} events, 1M products", "≤ 1 GiB and flat",
        f"{last['rss_mb']:,} MB at the end, peak {peak:,} MB (" + ", ".join(f"{c['events'] // 1_000_000}M: {c['rss_mb']}" for c in cps) + ")",
        "—", peak <= 1024)
    row(f"On-disk size per million events (at {last['events']:,})", "≤ 30 MB",
        f"{last['disk_mb_per_million']:.1f} MB (" + ", ".join(f"{c['events'] // 1_000_000}M: {c['disk_mb_per_million']:.1f}" for c in cps) + ")",
        "—", last["disk_mb_per_million"] <= 30)
    row("Cost curve: ingest and query cost as the store grows", "flat",
        "; ".join(f"{c['events'] // 1_000_000}M: {c['segment_events_per_s']:,.0f} ev/s, hot p99 {c['hot']['p99_ms']} ms, cold p99 {c['cold']['p99_ms']} ms" for c in cps),
        "—", None)
soak = None
p2 = os.path.join(out, "scale", "soak.jsonl")
for f in (p, p2):
    if os.path.exists(f):
        for l in open(f):
            if l.startswith("{") and json.loads(l).get("kind") == "soak":
                soak = json.loads(l)
if soak:
    row(f"Soak ({soak['minutes']} min at 50k events/s with queries)", "no growth in RSS or p99 after the first minutes",
        f"RSS {soak['rss_mb_minute3']} → {soak['rss_mb_last']} MB (max {soak['rss_mb_max_after_minute3']}); query p99 {soak['query_p99_ms_minute3']} → {soak['query_p99_ms_last']} ms",
        "—", None)

steps = read("steps.txt") or ""
print()
print("| figure | target | this run | reference (same run) | met? |")
print("|---|---|---|---|---|")
for r in rows:
    print("| " + " | ".join(r) + " |")
print()
print("load average after each step: " + ", ".join(f"{l.split()[0]} {l.split()[1].split('=')[1]} ({l.split()[2].split('=')[1]} s)" for l in steps.splitlines()))
PY
echo "== load average at the end $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/targets.log"
