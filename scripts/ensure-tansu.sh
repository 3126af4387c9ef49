#!/usr/bin/env bash
# Makes sure the `tansu` Kafka-compatible broker (used by the Kafka tests and bench/kafka.sh) is
# installed, and prints the path of the binary on stdout.
#
# Reuses an installed tansu when it has the storage engines the tests need:
#   - dynostore: `memory://` (fast, nothing to clean up);
#   - libsql:    `sqlite://FILE` (data survives a broker restart: the broker-restart test).
# Otherwise installs it from crates.io, the same way everywhere (a fresh CI machine takes a few
# minutes: tansu and libsql are compiled from source):
#   cargo install tansu --version 0.6.0 --locked --features dynostore,libsql
# tansu 0.6 is the newest that builds with this toolchain (its successor needs rustc 1.96).
#
# Environment: TANSU (path of a tansu binary to use instead), CARGO_HOME (install root).
set -euo pipefail

version=0.6.0
features=dynostore,libsql

has_engines() {
    # `tansu --help` ends with "Storage engines: …" listing the compiled-in ones.
    local help
    help=$("$1" --help 2>/dev/null) || return 1
    grep -q "Storage engines:.*dynostore" <<<"$help" && grep -q "Storage engines:.*libsql" <<<"$help"
}

candidates=()
[ -n "${TANSU:-}" ] && candidates+=("$TANSU")
command -v tansu >/dev/null 2>&1 && candidates+=("$(command -v tansu)")
candidates+=("${CARGO_HOME:-$HOME/.cargo}/bin/tansu")

for t in "${candidates[@]}"; do
    if [ -x "$t" ] && has_engines "$t"; then
        echo "$t"
        exit 0
    fi
done

echo "ensure-tansu: installing tansu $version with features $features (takes a few minutes)…" >&2
cargo install tansu --version "$version" --locked --features "$features" >&2
t="${CARGO_HOME:-$HOME/.cargo}/bin/tansu"
if ! has_engines "$t"; then
    echo "ensure-tansu: $t was installed but does not list the storage engines $features" >&2
    exit 1
fi
echo "$t"
