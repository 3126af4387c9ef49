#!/usr/bin/env bash
# The dashboard page in a real browser (issue 15): Debian's Chromium driven by playwright-core
# (tests/browser/). Starts the real server on a free port with a fresh SQLite store, creates a
# read and an ingest token with the CLI, then tests/browser/dashboard.test.mjs posts known events
# and, in the browser: signs in, checks every figure's data-exact against the API, posts an event
# and sees the page change within 1 s without a reload, checks a phone-sized viewport for
# sideways overflow and that nothing was logged to the console. About 15 s.
#
#   scripts/browser-test.sh
#   JETSTREAM_BIN=target/release/jetstream SCREENSHOT_DIR=target/shots-release scripts/browser-test.sh
#
# Needs node (20 or later) and npm; installs Debian's chromium and chromium-driver when missing.
# Screenshots (desktop.png, phone.png) go to $SCREENSHOT_DIR (default target/screenshots/).
# Exit status 0 when every check passes; the server's log is printed when one fails.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

BIN=${JETSTREAM_BIN:-target/debug/jetstream}
SCREENSHOT_DIR=${SCREENSHOT_DIR:-target/screenshots}
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}

say() { echo "browser-test: $*" >&2; }

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    say "node (20 or later) and npm are needed (Debian: apt-get install nodejs npm)"
    exit 1
fi
if [ ! -x "$CHROMIUM" ]; then
    say "installing Debian's chromium and chromium-driver"
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >&2
fi
if [ ! -x "$BIN" ]; then
    say "no server binary at $BIN: run cargo build (or set JETSTREAM_BIN)"
    exit 1
fi

# playwright-core only: it downloads no browser of its own.
(cd tests/browser && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error >&2)

WORK=$(mktemp -d -t jetstream-browser-test.XXXXXX)
SERVER_PID=
cleanup() {
    local status=$?
    if [ -n "$SERVER_PID" ]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    if [ "$status" != 0 ] && [ -f "$WORK/server.log" ]; then
        say "failed; the server's log:"
        tail -n 50 "$WORK/server.log" >&2
    fi
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT

STORE="sqlite://$WORK/jetstream.db"
READ_TOKEN=$("$BIN" token create --store "$STORE" --name browser-read --scope read)
INGEST_TOKEN=$("$BIN" token create --store "$STORE" --name browser-ingest --scope ingest)

"$BIN" serve --store "$STORE" --listen 127.0.0.1:0 >"$WORK/server.out" 2>"$WORK/server.log" &
SERVER_PID=$!
BASE=
for _ in $(seq 200); do
    BASE=$(grep -o 'http://127\.0\.0\.1:[0-9]*' "$WORK/server.out" | head -n 1 || true)
    [ -n "$BASE" ] && break
    kill -0 "$SERVER_PID" 2>/dev/null || { say "the server exited"; cat "$WORK/server.out" >&2; exit 1; }
    sleep 0.1
done
[ -n "$BASE" ] || { say "the server did not say where it listens within 20 s"; exit 1; }
say "server at $BASE"

mkdir -p "$SCREENSHOT_DIR"
SCREENSHOT_DIR=$(cd "$SCREENSHOT_DIR" && pwd)
started=$(date +%s%3N)
JETSTREAM_BASE=$BASE JETSTREAM_READ_TOKEN=$READ_TOKEN JETSTREAM_INGEST_TOKEN=$INGEST_TOKEN \
    SCREENSHOT_DIR=$SCREENSHOT_DIR CHROMIUM=$CHROMIUM \
    node --test --test-reporter=tap "$ROOT/tests/browser/dashboard.test.mjs"
elapsed=$(($(date +%s%3N) - started))
say "passed in $((elapsed / 1000)).$(printf '%03d' $((elapsed % 1000))) s; screenshots in $SCREENSHOT_DIR"
