#!/usr/bin/env bash
# The test command (README.md): sets up what the tests need on a fresh machine, then runs them all.
#  - the Kafka broker: tansu, installed from crates.io when missing (~8 minutes once, then reused);
#  - PostgreSQL: the server at $DATABASE_URL or 127.0.0.1:5432, else a throwaway cluster;
#  - then every test (unit, integration, both storage backends, Kafka) with cargo.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -x scripts/ensure-tansu.sh ]; then
  TANSU_BIN="$(scripts/ensure-tansu.sh)"
  export TANSU_BIN
fi
if [ -x scripts/ensure-postgres.sh ]; then
  DATABASE_URL="$(scripts/ensure-postgres.sh)"
  export DATABASE_URL
fi

cargo build --all-targets
cargo test --all-targets -- "$@"
