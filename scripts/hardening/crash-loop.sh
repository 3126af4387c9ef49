#!/usr/bin/env bash
# Crash loops: SIGKILL Jetstream again and again and check that nothing acknowledged is lost and
# nothing is counted twice (scripts/hardening/README.md; the work is done by crashloop.py).
#
#   scripts/hardening/crash-loop.sh                     # everything: CYCLES=100 HTTP cycles on SQLite
#                                                       # and on PostgreSQL, CYCLES_KAFKA=100 Kafka cycles
#   scripts/hardening/crash-loop.sh --short             # 3 + 3 HTTP cycles, 2 Kafka cycles: for the test command
#   scripts/hardening/crash-loop.sh http-sqlite kafka   # only these suites (http-sqlite, http-postgres, kafka)
#
# Environment:
#   JETSTREAM_BIN   the binary (default target/release/jetstream; not built here)
#   CYCLES          HTTP cycles per backend (default 100; --short: 3)
#   CYCLES_KAFKA    Kafka cycles (default 100; --short: 2)
#   KAFKA_RESTART   how the killed consumer comes back: fresh (a new consumer group at once), same
#                   (the same group, 11 s later: tansu 0.6 keeps a dead member's partitions for its
#                   10 s session), alternate (odd cycles fresh, even ones same; the default;
#                   --short: fresh)
#   KAFKA_STORE     sqlite (default) or postgres: the store the Kafka consumer writes
#   EVENTS_PER_CYCLE  Kafka events produced per cycle (default 20000)
#   PG_URL          a PostgreSQL server whose user may CREATE DATABASE (default $DATABASE_URL, else
#                   postgres://postgres@127.0.0.1:5432/postgres); each PostgreSQL suite gets a fresh
#                   database, dropped at the end
#   TANSU_BIN       the tansu broker (default: what scripts/ensure-tansu.sh prints; it installs tansu
#                   when missing, which takes ~20 minutes once)
#   SEED            the random seed (kill moments, Kafka events); printed by each suite
#   KEEP=1          keep the logs even when everything passed (they are kept on a failure)
# Exit status: 0 every suite passed, 1 a check failed, 2 a suite could not run.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$ROOT/scripts/hardening
SHORT=0
SUITES=()
for arg in "$@"; do
    case $arg in
        --short) SHORT=1 ;;
        http-sqlite | http-postgres | kafka) SUITES+=("$arg") ;;
        -h | --help) sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "crash-loop: unknown argument $arg (try --help)" >&2; exit 2 ;;
    esac
done
[ ${#SUITES[@]} -gt 0 ] || SUITES=(http-sqlite http-postgres kafka)

if [ "$SHORT" = 1 ]; then
    CYCLES=${CYCLES:-3}
    CYCLES_KAFKA=${CYCLES_KAFKA:-2}
    KAFKA_RESTART=${KAFKA_RESTART:-fresh}
else
    CYCLES=${CYCLES:-100}
    CYCLES_KAFKA=${CYCLES_KAFKA:-100}
    KAFKA_RESTART=${KAFKA_RESTART:-alternate}
fi
KAFKA_STORE=${KAFKA_STORE:-sqlite}
EVENTS_PER_CYCLE=${EVENTS_PER_CYCLE:-20000}
BIN=${JETSTREAM_BIN:-$ROOT/target/release/jetstream}
PG_URL=${PG_URL:-${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}}
SEED_ARGS=()
[ -n "${SEED:-}" ] && SEED_ARGS=(--seed "$SEED")

[ -x "$BIN" ] || { echo "crash-loop: no jetstream binary at $BIN (cargo build --release, or set JETSTREAM_BIN)" >&2; exit 2; }

TMP=$(mktemp -d -t jetstream-crash-loop.XXXXXX)
DATABASES=()
STATUS=0
cleanup() {
    local db
    for db in "${DATABASES[@]}"; do
        psql "$PG_URL" -qAt -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 ||
            echo "crash-loop: could not drop database $db" >&2
    done
    if [ "$STATUS" = 0 ] && [ "${KEEP:-0}" != 1 ]; then rm -rf "$TMP"; else echo "crash-loop: logs kept in $TMP" >&2; fi
}
trap cleanup EXIT
trap 'STATUS=130; exit 130' INT TERM

# fresh_pg NAME: creates a fresh database on the PG_URL server and sets FRESH_URL to its URL.
fresh_pg() {
    local db="jetstream_crash_$1_$(date +%s)_$$"
    psql "$PG_URL" -qAt -v ON_ERROR_STOP=1 -c "CREATE DATABASE $db" >/dev/null ||
        { echo "crash-loop: cannot create a database on $PG_URL (is PostgreSQL running? set PG_URL)" >&2; return 1; }
    DATABASES+=("$db")
    FRESH_URL=$(python3 -c 'import sys, urllib.parse as u
p = u.urlsplit(sys.argv[1]); print(u.urlunsplit(p._replace(path="/" + sys.argv[2])))' "$PG_URL" "$db")
}

RESULTS=()
run_suite() { # NAME: runs one suite, records its outcome
    local name=$1 store mode extra=() rc=0 t0=$SECONDS dir=$TMP/$1
    mkdir -p "$dir"
    case $name in
        http-sqlite) mode=http; store="sqlite://$dir/js.db"; extra=(--cycles "$CYCLES") ;;
        http-postgres) mode=http; if fresh_pg http; then store=$FRESH_URL; else rc=2; fi; extra=(--cycles "$CYCLES") ;;
        kafka)
            mode=kafka
            store="sqlite://$dir/js.db"
            if [ "$KAFKA_STORE" = postgres ]; then if fresh_pg kafka; then store=$FRESH_URL; else rc=2; fi; fi
            local tansu=${TANSU_BIN:-}
            if [ -z "$tansu" ] && [ $rc = 0 ]; then tansu=$("$ROOT/scripts/ensure-tansu.sh") || rc=2; fi
            extra=(--cycles "$CYCLES_KAFKA" --tansu "$tansu" --restart "$KAFKA_RESTART" --events-per-cycle "$EVENTS_PER_CYCLE")
            ;;
    esac
    echo "== crash-loop $name" >&2
    if [ $rc = 0 ]; then
        python3 "$HERE/crashloop.py" "$mode" --bin "$BIN" --store "$store" --work "$dir" "${extra[@]}" "${SEED_ARGS[@]}" || rc=$?
    fi
    local verdict=PASS
    [ $rc = 1 ] && verdict=FAIL
    [ $rc -gt 1 ] && verdict=ERROR
    RESULTS+=("$verdict  $name  ($((SECONDS - t0)) s)")
    if [ $rc -gt "$STATUS" ]; then STATUS=$rc; fi
}

t_all=$SECONDS
for s in "${SUITES[@]}"; do run_suite "$s"; done
echo
echo "crash-loop summary ($( [ "$SHORT" = 1 ] && echo short || echo full ) mode, $((SECONDS - t_all)) s, binary ${BIN#"$ROOT"/}):"
for r in "${RESULTS[@]}"; do echo "  $r"; done
if [ "$STATUS" = 0 ]; then echo "crash-loop: PASS"; else echo "crash-loop: FAIL"; fi
exit "$STATUS"
