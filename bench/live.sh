#!/usr/bin/env bash
# The dashboard benchmark (issue "The live dashboard"): live-push latency with many subscriptions
# while ingesting, and top-N latency over many products at a fixed request rate while ingesting.
# Everything on 127.0.0.1, stopped on exit. Each figure is the median of RUNS runs (each run printed).
#
#   bench/live.sh                          # defaults below; ~6 minutes after the build
#   RUNS=5 DURATION=30 bench/live.sh
#   SKIP_BUILD=1 bench/live.sh             # reuse target/release/{jetstream,examples/*}
#   CONFIG=file.toml PHASES=push bench/live.sh   # the server with a settings file; only some phases
#
# Phases:
#   1. push, reference: one stream, one probe subscription, no other load: the floor of
#      commit → event on this machine (examples/live_bench.rs push --conns 1 --subs 1)
#   2. push, loaded: CONNS streams x SUBS subscriptions (1,024 by default) while
#      examples/paced_ingest.rs posts INGEST_RATE events/s (20,000) over PUSH_PRODUCTS products,
#      which all but the probe subscriptions watch; probes post 10 sales/s of their own products
#   3. top-N: TOP_EVENTS events over TOP_PRODUCTS products (100,000) in the last hour preloaded,
#      then GET /api/v1/metrics/sales_amount/top?dim=product_id&window=1h&limit=10 at TOP_RATE
#      req/s (open loop) while ingesting INGEST_RATE events/s; reference: nginx serving a static
#      body at the same rate with the same load generator, in the same run; then one run at
#      TOP_LOW_RATE (5) req/s: what one request costs when nothing queues
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"
ROOT=$(dirname "$HERE")
RUNS=${RUNS:-3}
DURATION=${DURATION:-15}
CONNS=${CONNS:-32}
SUBS=${SUBS:-32}
PUSH_PRODUCTS=${PUSH_PRODUCTS:-1000}
INGEST_RATE=${INGEST_RATE:-20000}
TOP_PRODUCTS=${TOP_PRODUCTS:-100000}
TOP_EVENTS=${TOP_EVENTS:-1000000}
TOP_RATE=${TOP_RATE:-1000}
TOP_LOW_RATE=${TOP_LOW_RATE:-5}      # also one run at this rate: a request's cost without queueing
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP=${KEEP:-0}
PHASES=${PHASES:-ref push top}      # which phases run
has() { [[ " $PHASES " == *" $1 "* ]]; }
BIN=${JETSTREAM_BIN:-$ROOT/target/release/jetstream}
EX=$ROOT/target/release/examples
NGINX=${NGINX:-/usr/sbin/nginx}

WORK=$(mktemp -d /tmp/jetstream-live.XXXXXX)
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  if [[ $KEEP == 1 ]]; then echo "bench: kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
log() { printf '\n== %s\n' "$*" >&2; }
RESULTS=$WORK/results.tsv
: >"$RESULTS"
record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$RESULTS"; }

if [[ $SKIP_BUILD != 1 ]]; then
  log "cargo build --release --bin jetstream --example paced_ingest --example live_bench"
  (cd "$ROOT" && cargo build --release --bin jetstream --example paced_ingest --example live_bench 2>&1 | tail -2) >&2
fi
LOAD0=$(cut -d" " -f1-3 /proc/loadavg)
VERSION=$(cd "$ROOT" && git rev-parse --short HEAD)

STORE="sqlite://$WORK/live.db"
CFG=()
[[ -n ${CONFIG:-} ]] && CFG=(--config "$CONFIG")   # e.g. api.stream_coalesce for an A/B
tok() { "$BIN" token create --store "$STORE" "${CFG[@]}" --name "$1" --scope "$2"; }
ING=$(tok bench-ingest ingest)
READ=$(tok bench-read read)
READS=$READ
for i in $(seq 2 $(((CONNS + 15) / 16))); do READS="$READS,$(tok "bench-read-$i" read)"; done

JETSTREAM_LOG=${JETSTREAM_LOG:-warn} "$BIN" serve --store "$STORE" --listen 127.0.0.1:0 "${CFG[@]}" \
  >"$WORK/serve.out" 2>"$WORK/serve.err" &
SERVER_PID=$!
PIDS+=("$SERVER_PID")
ADDR=$(server_address "$WORK/serve.out" "$WORK/serve.err" "$SERVER_PID")

python3 "$HERE/loader.py" gen --dir "$WORK/bodies" --bodies 32 --products "$PUSH_PRODUCTS" >/dev/null
paced() { # seconds
  "$EX/paced_ingest" --addr "$ADDR" --token "$ING" --rate "$INGEST_RATE" --duration "$1" \
    --body-dir "$WORK/bodies" >"$WORK/paced.$r.json" 2>>"$WORK/paced.err" &
  PACED_PID=$!
  PIDS+=("$PACED_PID")
}
pick() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); [print(f"{k}\t{eval(e,{},d)}") for k,e in zip(sys.argv[2::2],sys.argv[3::2])]' "$@"; }

# -------------------------------------------------------------------------------------- push
if has ref; then
log "phase 1: push reference, live_bench push --conns 1 --subs 1 --duration $DURATION (no other load)"
for r in $(seq 1 "$RUNS"); do
  "$EX/live_bench" push --addr "$ADDR" --read-tokens "$READ" --ingest-token "$ING" --conns 1 --subs 1 \
    --products 1 --duration "$DURATION" --probe-base $((900000 + r * 1000)) >"$WORK/push0.$r.json"
  echo "run $r: $(cat "$WORK/push0.$r.json")" >&2
  pick "$WORK/push0.$r.json" p50 'ack_to_event_ms["p50"]' p99 'ack_to_event_ms["p99"]' |
    while IFS=$'\t' read -r k v; do record push_ref "ack_to_event_$k" "$v"; done
done

fi

if has push; then
log "phase 2: push, $CONNS streams x $SUBS subscriptions while ingesting $INGEST_RATE events/s"
for r in $(seq 1 "$RUNS"); do
  paced $((DURATION + 6))
  "$EX/live_bench" push --addr "$ADDR" --read-tokens "$READS" --ingest-token "$ING" --conns "$CONNS" \
    --subs "$SUBS" --products "$PUSH_PRODUCTS" --duration "$DURATION" --probe-base $((950000 + r * 1000)) \
    >"$WORK/push.$r.json"
  wait "$PACED_PID" || true
  echo "run $r: $(cat "$WORK/push.$r.json")" >&2
  echo "       ingest: $(cat "$WORK/paced.$r.json")" >&2
  pick "$WORK/push.$r.json" p50 'ack_to_event_ms["p50"]' p99 'ack_to_event_ms["p99"]' \
    send_p99 'send_to_event_ms["p99"]' events_per_s events_received_per_s missing missing |
    while IFS=$'\t' read -r k v; do record push "$k" "$v"; done
  pick "$WORK/paced.$r.json" ingest_events_per_s events_per_s |
    while IFS=$'\t' read -r k v; do record push "$k" "$v"; done
done
fi

if has top; then
# -------------------------------------------------------------------------------------- top-N
start_nginx_reference "$NGINX" "$WORK" '{"items":[]}' || exit 1
PIDS+=("$NGX_PID")

log "phase 3: top-N, preload $TOP_EVENTS events over $TOP_PRODUCTS products (last hour)"
python3 "$HERE/loader.py" preload --addr "$ADDR" --token "$ING" --events "$TOP_EVENTS" --products "$TOP_PRODUCTS" \
  --conns 8 --seed 7 >"$WORK/preload.json"
cat "$WORK/preload.json" >&2
TOP_PATH="/api/v1/metrics/sales_amount/top?dim=product_id&window=1h&limit=10"
log "phase 3: GET $TOP_PATH at $TOP_RATE req/s while ingesting $INGEST_RATE events/s; reference: nginx, same rate"
for r in $(seq 1 "$RUNS"); do
  "$EX/live_bench" get --addr "127.0.0.1:$NGX_PORT" --token x --rate "$TOP_RATE" --duration "$DURATION" \
    --path /static.json >"$WORK/ngx.$r.json"
  echo "run $r nginx: $(cat "$WORK/ngx.$r.json")" >&2
  pick "$WORK/ngx.$r.json" p50 'latency_ms["p50"]' p99 'latency_ms["p99"]' |
    while IFS=$'\t' read -r k v; do record top_ref "$k" "$v"; done
  paced $((DURATION + 4))
  "$EX/live_bench" get --addr "$ADDR" --token "$READ" --rate "$TOP_RATE" --duration "$DURATION" \
    --path "$TOP_PATH" >"$WORK/top.$r.json"
  wait "$PACED_PID" || true
  echo "run $r top: $(cat "$WORK/top.$r.json")" >&2
  echo "       ingest: $(cat "$WORK/paced.$r.json")" >&2
  pick "$WORK/top.$r.json" p50 'latency_ms["p50"]' p99 'latency_ms["p99"]' answered_per_s answered_per_s \
    dropped dropped failed failed |
    while IFS=$'\t' read -r k v; do record top "$k" "$v"; done
  pick "$WORK/paced.$r.json" ingest_events_per_s events_per_s |
    while IFS=$'\t' read -r k v; do record top "$k" "$v"; done
done
r=low
paced $((DURATION + 4))
"$EX/live_bench" get --addr "$ADDR" --token "$READ" --rate "$TOP_LOW_RATE" --duration "$DURATION" \
  --path "$TOP_PATH" --conns 4 >"$WORK/top.low.json"
wait "$PACED_PID" || true
echo "at $TOP_LOW_RATE req/s, top: $(cat "$WORK/top.low.json")" >&2
pick "$WORK/top.low.json" p50 'latency_ms["p50"]' p99 'latency_ms["p99"]' |
  while IFS=$'\t' read -r k v; do record top_low_rate "$k" "$v"; done
fi

# -------------------------------------------------------------------------------------- summary
log "medians of $RUNS runs (jetstream $VERSION, load average before: $LOAD0, after: $(cut -d" " -f1-3 /proc/loadavg))"
python3 - "$RESULTS" <<'EOF'
import collections, statistics, sys
vals = collections.defaultdict(list)
for line in open(sys.argv[1]):
    phase, metric, v = line.rstrip("\n").split("\t")
    try:
        vals[(phase, metric)].append(float(v))
    except ValueError:
        pass
for (phase, metric), v in vals.items():
    print(f"{phase:9} {metric:22} {statistics.median(v):>12.2f}   runs: {', '.join(f'{x:g}' for x in v)}")
EOF
echo "command: PHASES='$PHASES' RUNS=$RUNS DURATION=$DURATION CONNS=$CONNS SUBS=$SUBS INGEST_RATE=$INGEST_RATE TOP_PRODUCTS=$TOP_PRODUCTS TOP_EVENTS=$TOP_EVENTS TOP_RATE=$TOP_RATE${CONFIG:+ CONFIG=$CONFIG} bench/live.sh"
