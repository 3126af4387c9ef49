#!/usr/bin/env bash
# Runs schemathesis (PyPI) against a running server, driven by its own OpenAPI description
# (/api/openapi.json), with a token holding every scope: no answer may be a 5xx.
#
#   scripts/schemathesis.sh [extra schemathesis arguments…]     e.g. --checks all
#
# Environment:
#   JETSTREAM_BIN     the binary to run (default: target/debug/jetstream, built when missing);
#   SCHEMATHESIS      a schemathesis command to use (default: installed with pip into a venv under
#                     target/, once, and reused);
#   MAX_EXAMPLES      examples per operation (default 10; 30 took ~9 min on 2 cores: 746 cases, none 5xx).
# The server runs on a fresh SQLite store in a temporary directory, on a free loopback port.
set -euo pipefail
cd "$(dirname "$0")/.."

bin="${JETSTREAM_BIN:-target/debug/jetstream}"
if [ ! -x "$bin" ]; then
  cargo build --bin jetstream >&2
fi

st="${SCHEMATHESIS:-}"
if [ -z "$st" ]; then
  venv="target/schemathesis-venv"
  if [ ! -x "$venv/bin/schemathesis" ]; then
    echo "schemathesis.sh: installing schemathesis into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q schemathesis >&2
  fi
  if [ ! -x "$venv/bin/openapi-spec-validator" ]; then
    "$venv/bin/pip" install -q openapi-spec-validator >&2
  fi
  st="$venv/bin/schemathesis"
  validator="$venv/bin/openapi-spec-validator"
fi

work="$(mktemp -d)"
server_pid=""
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

store="sqlite://$work/jetstream.db"
token="$("$bin" token create --store "$store" --name schemathesis --scope read,ingest,admin,metrics)"
JETSTREAM_LOG=warn "$bin" serve --store "$store" --listen 127.0.0.1:0 >"$work/out" 2>"$work/err" &
server_pid=$!
for _ in $(seq 100); do
  grep -q '^listening on ' "$work/out" 2>/dev/null && break
  sleep 0.1
done
base="$(sed -n 's/^listening on //p' "$work/out" | head -1)"
[ -n "$base" ] || { echo "schemathesis.sh: the server did not start" >&2; cat "$work/err" >&2; exit 1; }

# The description itself, checked by an independent validator (openapi-spec-validator, OpenAPI 3.1).
if [ -n "${validator:-}" ]; then
  curl -fsS "$base/api/openapi.json" >"$work/openapi.json"
  "$validator" "$work/openapi.json" >&2
fi

# Some events first, so that reads find products and metrics with data.
curl -fsS -H "Authorization: Bearer $token" -H 'content-type: application/json' "$base/api/v1/events" \
  -d '[{"event_name":"productSold","product_id":1,"no_of_units":2,"amount":10},
       {"event_name":"productRated","product_id":1,"rating":4}]' >/dev/null

"$st" run "$base/api/openapi.json" \
  --header "Authorization: Bearer $token" \
  --checks not_a_server_error \
  --max-examples "${MAX_EXAMPLES:-10}" \
  --request-timeout 30 \
  "$@"
