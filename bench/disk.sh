#!/usr/bin/env bash
# Disk and memory on a realistic stream: ingest the reference workload (Zipf-skewed products, event
# times over two hours, P producers posting L-line NDJSON bodies) into a fresh SQLite store and
# watch the server's RSS and the store's database, WAL and shm files while it runs and for AFTER s
# after it stops. Prints events/s, RSS and WAL peak and final, bytes on disk per million events,
# checks the store's event count against the acknowledged events, then a short query check.
# Everything it starts is stopped on exit (also on Ctrl-C). See bench/README.md.
#
#   bench/disk.sh                                  # 3M events, 100k products (~2-3 minutes)
#   EVENTS=30000000 bench/disk.sh                  # the 30M run (generating the stream takes minutes once)
#   SKIP_BUILD=1 JETSTREAM_BIN=/path/to/jetstream KEEP=1 bench/disk.sh   # a given binary; keep the store
#
# Settings (environment): EVENTS (3000000), PRODUCTS (100000), PRODUCERS (4), BODY_LINES (50000),
# AFTER (15 s of sampling after the load), INTERVAL (0.5 s between samples), PRINT_EVERY (5 s
# between table lines), KEEP (0; 1 keeps the temporary directory with the store), OUT (where the
# CSV, logs and summary go; default a new directory under $TMPDIR or /tmp), CONFIG (a settings file
# passed to the server as --config), GEN (the reference generator gen_events.py; default
# ../shared/bench/gen_events.py beside the checkout when it exists, else bench/disk.py's built-in
# copy, which writes the same bytes; GEN=builtin forces the copy), SEED (20240601), SKEW (1.0), CACHE (where generated streams
# are kept between runs), STREAM_MAX_AGE (1800 s: an older cached stream is generated anew, since
# its event times are relative to when it was generated), QUERY_DURATION (5 s per wrk run, 0 skips
# the query check), THREADS (2) and CONNS (16) for wrk, NGINX (/usr/sbin/nginx), DBSTAT (1: show
# where the database's pages go, with the sqlite3 CLI, after the server stopped), STOP_TIMEOUT
# (120 s for the server's shutdown), SKIP_BUILD, JETSTREAM_BIN, JETSTREAM_LOG (warn).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"
ROOT=$(dirname "$HERE")
TOP=$(git -C "$HERE" rev-parse --show-toplevel 2>/dev/null || echo "$ROOT")
EVENTS=${EVENTS:-3000000}
PRODUCTS=${PRODUCTS:-100000}
PRODUCERS=${PRODUCERS:-4}
BODY_LINES=${BODY_LINES:-50000}
AFTER=${AFTER:-15}
INTERVAL=${INTERVAL:-0.5}
PRINT_EVERY=${PRINT_EVERY:-5}
KEEP=${KEEP:-0}
CONFIG=${CONFIG:-}
SEED=${SEED:-20240601}
SKEW=${SKEW:-1.0}
GEN=${GEN:-}
CACHE=${CACHE:-${TMPDIR:-/tmp}/jetstream-disk-streams}
STREAM_MAX_AGE=${STREAM_MAX_AGE:-1800}
QUERY_DURATION=${QUERY_DURATION:-5}
THREADS=${THREADS:-2}
CONNS=${CONNS:-16}
NGINX=${NGINX:-/usr/sbin/nginx}
DBSTAT=${DBSTAT:-1}
STOP_TIMEOUT=${STOP_TIMEOUT:-120}
SKIP_BUILD=${SKIP_BUILD:-0}
BIN=${JETSTREAM_BIN:-$ROOT/target/release/jetstream}
export JETSTREAM_LOG=${JETSTREAM_LOG:-warn}

for tool in python3 curl jq; do
  command -v "$tool" >/dev/null || { echo "disk.sh: $tool is required" >&2; exit 2; }
done
if ((QUERY_DURATION > 0)) && ! command -v wrk >/dev/null; then
  echo "disk.sh: wrk is required for the query check (or QUERY_DURATION=0)" >&2
  exit 2
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/jetstream-disk.XXXXXX")
OUT=${OUT:-${TMPDIR:-/tmp}/jetstream-disk-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT" "$CACHE"
# Everything printed also goes to $OUT/disk.log (tee ignores Ctrl-C so the cleanup's lines are kept).
exec > >(trap '' INT TERM; exec tee -a "$OUT/disk.log") 2>&1

PIDS=()
SERVER_PID=""
GEN_TMP=""
# stop_pid PID SECONDS: SIGTERM, then SIGKILL if it is still there after SECONDS
stop_pid() {
  local _
  kill -TERM "$1" 2>/dev/null || return 0
  for _ in $(seq 1 $(($2 * 10))); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$1" 2>/dev/null; then
    echo "disk.sh: pid $1 did not stop within $2 s of SIGTERM; killing it" >&2
    kill -KILL "$1" 2>/dev/null || true
  fi
  wait "$1" 2>/dev/null || true
}
cleanup() {
  local i p
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do # the newest first: clients before the server
    p=${PIDS[i]}
    if kill -0 "$p" 2>/dev/null; then
      [[ $p == "$SERVER_PID" ]] && echo "disk.sh: stopping the server (pid $p)"
      stop_pid "$p" 30
    fi
  done
  [[ -n $GEN_TMP ]] && rm -f "$GEN_TMP"
  if [[ $KEEP == 1 ]]; then echo "disk.sh: kept $WORK"; else rm -rf "$WORK"; fi
  echo "disk.sh: output in $OUT"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf '\n== %s\n' "$*"; }
mb() { python3 -c "import sys; print(f'{int(sys.argv[1]) / 1e6:,.1f} MB')" "$1"; }
rss_mb() { python3 -c "import sys; v=sys.argv[1]; print('-' if v in ('', 'null') else f'{int(v) * 1024 / 1e6:,.0f} MB')" "$1"; }
int() { python3 -c "import sys; print(f'{float(sys.argv[1]):,.0f}')" "$1"; }
fsize() { stat -c %s "$1" 2>/dev/null || echo 0; }
parse_result() { # "RESULT k=v k=v" from a wrk script -> R_k variables
  local line kv
  line=$(sed -n 's/^RESULT //p' "$1" | tail -1)
  [[ -n $line ]] || { echo "disk.sh: no RESULT line in $1:" >&2; cat "$1" >&2; exit 1; }
  for kv in $line; do printf -v "R_${kv%%=*}" '%s' "${kv#*=}"; done
}

# ---------------------------------------------------------------------------------------- build
if [[ $SKIP_BUILD != 1 ]]; then
  log "cargo build --release"
  (cd "$ROOT" && cargo build --release 2>&1 | tail -3)
fi
[[ -x $BIN ]] || { echo "disk.sh: no binary at $BIN (cargo build --release, or JETSTREAM_BIN=...)" >&2; exit 1; }
VERSION=$(cd "$ROOT" && git rev-parse --short HEAD)$(cd "$ROOT" && git diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || echo "+uncommitted changes in src/")

# --------------------------------------------------------------------------------------- stream
# One file per (EVENTS, PRODUCTS, SEED, SKEW) in $CACHE, with the body index per BODY_LINES. Event
# times are relative to the generation time (the last two hours then), so a stream older than
# STREAM_MAX_AGE is generated anew: an older one would put fewer events into the sale endpoint's
# one-hour window.
if [[ -z $GEN && -f $TOP/../shared/bench/gen_events.py ]]; then
  GEN=$(cd "$TOP/../shared/bench" && pwd)/gen_events.py
fi
if [[ -n $GEN && $GEN != builtin ]]; then
  [[ -f $GEN ]] || { echo "disk.sh: GEN=$GEN does not exist" >&2; exit 1; }
  GEN_CMD=(python3 "$GEN")
  GEN_NAME="gen_events.py ($GEN)"
else
  GEN_CMD=(python3 "$HERE/disk.py" gen)
  GEN_NAME="bench/disk.py gen (built-in copy of the reference generator)"
fi
KEY="events-$EVENTS-p$PRODUCTS-s$SEED-z$SKEW"
STREAM=$CACHE/$KEY.ndjson
META=$CACHE/$KEY.meta
INDEX=$CACHE/$KEY.b$BODY_LINES.idx
IDS=$CACHE/$KEY.ids
NOW_MS=$(date +%s%3N)
if [[ -f $STREAM && -f $META ]] && (((NOW_MS - $(jq .now_ms "$META")) / 1000 <= STREAM_MAX_AGE)); then
  log "stream: $STREAM (cached, generated $(((NOW_MS - $(jq .now_ms "$META")) / 1000)) s ago by $(jq -r .generator "$META"))"
else
  log "stream: generating $EVENTS events, $PRODUCTS products (Zipf $SKEW, seed $SEED) with $GEN_NAME"
  rm -f "$STREAM" "$META" "$IDS" "$CACHE/$KEY".b*.idx
  GEN_TMP=$STREAM.tmp.$$
  t0=$(date +%s)
  "${GEN_CMD[@]}" "$EVENTS" "$PRODUCTS" --out "$GEN_TMP" --seed "$SEED" --skew "$SKEW" --now-ms "$NOW_MS" &
  GEN_PID=$!
  PIDS+=("$GEN_PID")
  while kill -0 "$GEN_PID" 2>/dev/null; do
    sleep 5
    kill -0 "$GEN_PID" 2>/dev/null || break
    # ~139 bytes per event in this stream
    echo "generating: $(($(fsize "$GEN_TMP") / 1000000)) MB written (~$(($(fsize "$GEN_TMP") / 139)) of $EVENTS events), $(($(date +%s) - t0)) s"
  done
  wait "$GEN_PID" || { echo "disk.sh: the generator failed" >&2; exit 1; }
  mv "$GEN_TMP" "$STREAM"
  GEN_TMP=""
  jq -n --argjson now_ms "$NOW_MS" --arg generator "$GEN_NAME" '{now_ms: $now_ms, generator: $generator}' >"$META"
  echo "generated $(mb "$(fsize "$STREAM")") in $(($(date +%s) - t0)) s"
fi
if [[ ! -f $INDEX || ! -f $IDS ]]; then
  python3 "$HERE/disk.py" index "$STREAM" --lines "$BODY_LINES" --out "$INDEX" --ids-out "$IDS" >/dev/null
fi
STREAM_EVENTS=$(jq .events "$INDEX")
HOT=$(jq .hottest_product "$INDEX")
[[ $STREAM_EVENTS == "$EVENTS" ]] || { echo "disk.sh: $STREAM holds $STREAM_EVENTS events, not $EVENTS" >&2; exit 1; }
echo "$(jq '.bodies | length' "$INDEX") bodies of $BODY_LINES lines, $(mb "$(jq .bytes "$INDEX")"); $(jq .products_seen "$INDEX") of $PRODUCTS products occur; the hottest is $HOT ($(jq '.hottest_share_first_body * 100' "$INDEX")% of the first body's events, the next $(jq '.second_share_first_body * 100' "$INDEX")%)"

# --------------------------------------------------------------------------------------- server
DB=$WORK/js.db
STORE="sqlite://$DB"
CFG=()
[[ -n $CONFIG ]] && CFG=(--config "$CONFIG")
TOKEN=$("$BIN" token create --store "$STORE" "${CFG[@]}" --name bench --scope ingest,read,admin)
"$BIN" serve --store "$STORE" "${CFG[@]}" --listen 127.0.0.1:0 >"$WORK/serve.out" 2>"$WORK/serve.err" &
SERVER_PID=$!
PIDS+=("$SERVER_PID")
ADDR=$(server_address "$WORK/serve.out" "$WORK/serve.err" "$SERVER_PID") || exit 1
curl -fsS -o /dev/null -H "Authorization: Bearer $TOKEN" "http://$ADDR/api/v1/metrics"
LOAD0=$(cut -d" " -f1-3 /proc/loadavg)
log "jetstream $VERSION, server $ADDR (pid $SERVER_PID), store $DB${CONFIG:+, --config $CONFIG}; load average $LOAD0"

# ----------------------------------------------------------------------------------------- load
CMD_LOAD="disk.py load --producers $PRODUCERS (bodies of $BODY_LINES lines, application/x-ndjson) --interval $INTERVAL --after $AFTER"
log "load: $EVENTS events, $PRODUCERS producers posting $BODY_LINES-line NDJSON bodies; a sample every $INTERVAL s (all in $OUT/samples.csv), then $AFTER s after the load"
python3 "$HERE/disk.py" load --addr "$ADDR" --token "$TOKEN" --file "$STREAM" --index "$INDEX" \
  --pid "$SERVER_PID" --db "$DB" --out "$OUT" --producers "$PRODUCERS" --interval "$INTERVAL" \
  --print-every "$PRINT_EVERY" --after "$AFTER" &
LOADER=$!
PIDS+=("$LOADER")
LOAD_RC=0
wait "$LOADER" || LOAD_RC=$?
L=$OUT/load.json
[[ -f $L ]] || { echo "disk.sh: the loader did not finish (exit $LOAD_RC)" >&2; exit 1; }
if ((LOAD_RC != 0)); then
  echo "disk.sh: FAILED: $(jq .error_count "$L") requests failed:" >&2
  jq -r '.errors[]' "$L" >&2
  exit 1
fi
kill -0 "$SERVER_PID" 2>/dev/null || { echo "disk.sh: FAILED: the server exited during the run:" >&2; tail -20 "$WORK/serve.err" >&2; exit 1; }

# ---------------------------------------------------------------------------------------- check
ACKED=$(jq .acked_events "$L")
STORED=$(curl -fsS -H "Authorization: Bearer $TOKEN" "http://$ADDR/api/v1/metrics/events?window=7d" | jq .result.count)
CHECK="the store counts $(int "$STORED") events (GET /api/v1/metrics/events?window=7d) = acknowledged"
if [[ $STORED != "$ACKED" ]]; then
  echo "disk.sh: FAILED: the store counts $STORED events, but $ACKED were acknowledged" >&2
  exit 1
fi

# -------------------------------------------------------------------------------------- queries
QUERY_LINES=()
if ((QUERY_DURATION > 0)); then
  NQ=0
  query() { # label lua-script url path-prefix arg [token]
    local out=$WORK/query.$((++NQ)).out
    wrk -t"$THREADS" -c"$CONNS" -d"${QUERY_DURATION}s" --latency -s "$HERE/$2" "$3" -- "$4" "$5" "${6:-}" >"$out"
    parse_result "$out"
    QUERY_LINES+=("$(printf '%-42s %9s req/s  p50 %6s ms  p99 %7s ms  max %8s ms  non-2xx %s, socket errors %s' \
      "$1" "$(int "$R_rps")" "$R_p50_ms" "$R_p99_ms" "$R_max_ms" "$R_non2xx" "$R_socket_errors")")
    echo "${QUERY_LINES[-1]}"
    ((R_non2xx == 0 && R_socket_errors == 0)) || { echo "disk.sh: FAILED: $1: failed requests" >&2; exit 1; }
  }
  NGX_PORT=""
  if [[ -x $NGINX ]]; then
    start_nginx_reference "$NGINX" "$WORK" '{"total":1234.56,"count":42}' || exit 1
    PIDS+=("$NGX_PID")
  fi
  log "queries: wrk -t$THREADS -c$CONNS -d${QUERY_DURATION}s --latency -s bench/disk-query.lua (random ids) or bench/query.lua (one path), one run each${NGX_PORT:+, nginx static body as the reference}"
  curl -fsS -H "Authorization: Bearer $TOKEN" "http://$ADDR/api/product/sale/$HOT"
  echo "  (GET /api/product/sale/$HOT, the hottest product)"
  [[ -n $NGX_PORT ]] && query "nginx static body (reference)" query.lua "http://127.0.0.1:$NGX_PORT" /static.json 0
  query "sale, random ids ($(jq .products_seen "$INDEX") that occur)" disk-query.lua "http://$ADDR" /api/product/sale/ "$IDS" "$TOKEN"
  query "sale, hottest product ($HOT)" query.lua "http://$ADDR" "/api/product/sale/$HOT" 0 "$TOKEN"
  [[ -n $NGX_PORT ]] || QUERY_LINES+=("(no nginx at $NGINX: no reference figure)")
fi

# ------------------------------------------------------------------------------------------ stop
STOP_T0=$(date +%s.%N)
stop_pid "$SERVER_PID" "$STOP_TIMEOUT"
STOP_S=$(python3 -c "import time,sys; print(f'{time.time() - float(sys.argv[1]):.1f}')" "$STOP_T0")
STOPPED="db $(mb "$(fsize "$DB")"), WAL $(mb "$(fsize "$DB-wal")")$([[ -e $DB-wal ]] || echo ' (no file)'), shm $(mb "$(fsize "$DB-shm")") (shutdown took $STOP_S s)"

if [[ $DBSTAT == 1 ]] && command -v sqlite3 >/dev/null; then
  log "where the database's pages go (sqlite3 dbstat, after the server stopped)"
  sqlite3 -readonly "$DB" "select 'page_size ' || (select page_size from pragma_page_size) || ', pages ' || (select page_count from pragma_page_count) || ', free pages ' || (select freelist_count from pragma_freelist_count);" 2>&1 || true
  sqlite3 -readonly -column -header "$DB" "select name, round(sum(pgsize) / 1e6, 1) as mb, sum(ncell) as cells, count(*) as pages, round(100.0 * sum(unused) / sum(pgsize), 1) as unused_pct from dbstat group by name order by sum(pgsize) desc limit 15;" 2>&1 | tee "$OUT/dbstat.txt" || true
fi

# --------------------------------------------------------------------------------------- summary
J() { jq -r "$1" "$L"; }
DISK_FINAL=$(J .disk_final)
PER_M=$(python3 -c "import sys; print(f'{int(sys.argv[1]) / (int(sys.argv[2]) / 1e6) / 1e6:,.1f} MB ({int(sys.argv[1]) / (int(sys.argv[2]) / 1e6):,.0f} bytes)')" "$DISK_FINAL" "$ACKED")
SUMMARY=$OUT/summary.txt
{
  echo
  echo "== summary: jetstream $VERSION, $(date '+%Y-%m-%d %H:%M'), EVENTS=$EVENTS PRODUCTS=$PRODUCTS PRODUCERS=$PRODUCERS BODY_LINES=$BODY_LINES AFTER=$AFTER${CONFIG:+ CONFIG=$CONFIG}"
  echo "events        $(int "$ACKED") acknowledged, $(J .rejected_events) rejected, of $(int "$STREAM_EVENTS") in the stream; $CHECK: OK"
  echo "ingest        $(int "$(J .events_per_s)") events/s ($(int "$ACKED") in $(J .load_s) s, first send to last answer); POST p50 $(J .post_p50_ms) ms, p99 $(J .post_p99_ms) ms, max $(J .post_max_ms) ms"
  echo "CPU           server $(J .server_cpu_load_s) s during the load ($(python3 -c "print(round(100 * $(J .server_cpu_load_s) / $(J .load_s)))") % of one core), $(J .server_cpu_total_s) s with the $AFTER s after; the producers $(J .client_cpu_load_s) s"
  echo "RSS           peak $(rss_mb "$(J .rss_peak_kb)") (kernel high-water mark $(rss_mb "$(J .rss_hwm_kb)")), end of load $(rss_mb "$(J .rss_end_of_load_kb)"), final $(rss_mb "$(J .rss_final_kb)") ($AFTER s after)"
  echo "              final = $(rss_mb "$(J .rss_final_anon_kb)") anonymous (heap; peak $(rss_mb "$(J .rss_anon_peak_kb)")) + $(rss_mb "$(J .rss_final_file_kb)") mapped files + $(rss_mb "$(J .rss_final_shmem_kb)") shared memory"
  echo "WAL           peak $(mb "$(J .wal_peak)"), end of load $(mb "$(J .wal_end_of_load)"), final $(mb "$(J .wal_final)") ($AFTER s after)"
  echo "database      final $(mb "$(J .db_final)") (peak $(mb "$(J .db_peak)")); shm $(mb "$(J .shm_final)")"
  echo "on disk       final $(mb "$DISK_FINAL") (db + WAL + shm, $AFTER s after), peak $(mb "$(J .disk_peak)"); per million events: $PER_M"
  if [[ $(J .settled) == true ]]; then
    echo "settled       yes: over the last $(J .settle_window_s) s the WAL and database did not grow and the server used $(J .settle_server_cpu_pct) % of a core"
  else
    echo "settled       NO: over the last $(J .settle_window_s) s the WAL grew $(mb "$(J .settle_wal_growth)"), the database $(mb "$(J .settle_db_growth)"), and the server used $(J .settle_server_cpu_pct) % of a core: the final figures are not final yet (raise AFTER)"
  fi
  echo "after stop    $STOPPED"
  for q in "${QUERY_LINES[@]}"; do echo "query         $q"; done
  echo "stream        $STREAM ($(jq -r .generator "$META"), generated $(((NOW_MS - $(jq .now_ms "$META")) / 1000)) s before this run)"
  echo "samples       $OUT/samples.csv ($(J .samples) samples every $INTERVAL s); log $OUT/disk.log"
  echo "machine       $(nproc) cores, $(free -g | awk '/^Mem:/{print $2}') GiB; load average before $LOAD0, after $(cut -d" " -f1-3 /proc/loadavg); MB = 10^6 bytes"
  echo "load          $CMD_LOAD"
} | tee "$SUMMARY"
