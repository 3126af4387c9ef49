#!/usr/bin/env bash
# The test command (README.md): sets up what the tests need on a fresh machine, then runs them all.
#  - the build's C dependencies (scripts/ensure-build-deps.sh), installed when missing;
#  - the Kafka broker: tansu, installed from crates.io when missing (about 20 minutes once, reused);
#  - PostgreSQL: the server at $DATABASE_URL or 127.0.0.1:5432, else a throwaway cluster;
#  - nginx (Debian's nginx-light) for the fleet test, installed when missing;
#  - the structure and style rules: `cargo fmt --check`, `cargo clippy -D warnings` and
#    scripts/check-layers.py (no import cycle between modules, layers, room sizes);
#  - the dashboard: the committed build matches web/'s sources (scripts/web-build-check.sh, npm),
#    and the page works in Debian's Chromium (scripts/browser-test.sh, installed when missing);
#  - then the fleet's failure test (scripts/cluster-test.sh, ~30 s: two consumers, two API
#    instances behind nginx, SIGKILLs, exact totals, a live stream through nginx), the short crash
#    loops (scripts/hardening/crash-loop.sh --short), schemathesis against the OpenAPI description,
#    and every cargo test (unit, integration,
#    both storage backends, Kafka, TLS, the fuzz targets' corpus replayed).
set -euo pipefail
cd "$(dirname "$0")/.."

# A C toolchain, make, pkg-config and OpenSSL's headers (librdkafka, SQLite, zstd are built from C).
scripts/ensure-build-deps.sh
TANSU_BIN="$(scripts/ensure-tansu.sh)"
export TANSU_BIN
DATABASE_URL="$(scripts/ensure-postgres.sh)"
export DATABASE_URL
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  echo "test.sh: installing nginx-light for the fleet test" >&2
  apt-get update -qq >&2 && apt-get install -y -qq nginx-light >&2
fi

cargo fmt --all -- --check
python3 scripts/check-layers.py
scripts/web-build-check.sh   # the committed dashboard build (web/dist) is what web/'s sources build
cargo clippy --all-targets -- -D warnings
cargo build --all-targets
# The fleet test runs the debug binary just built (a release build would double CI's compile time).
SKIP_BUILD=1 JETSTREAM_BIN="$PWD/target/debug/jetstream" scripts/cluster-test.sh
# SIGKILLs during HTTP ingest (both stores, Idempotency-Key retries) and Kafka ingest: exact totals
# after each (~25 s; the full 100-cycle loops are run by hand, scripts/hardening/README.md).
JETSTREAM_BIN="$PWD/target/debug/jetstream" scripts/hardening/crash-loop.sh --short
# The OpenAPI description: checked by openapi-spec-validator, then schemathesis (PyPI, into a venv
# under target/ once) against the running server with a token of every scope: no 5xx, ~2 min.
# A fixed seed keeps the run reproducible; run scripts/schemathesis.sh by hand for fresh cases.
MAX_EXAMPLES=5 JETSTREAM_BIN="$PWD/target/debug/jetstream" scripts/schemathesis.sh --seed 20261201
# The dashboard in Debian's Chromium (installed when missing), through playwright-core.
JETSTREAM_BIN="$PWD/target/debug/jetstream" scripts/browser-test.sh
cargo test --all-targets -- "$@"
