#!/usr/bin/env bash
# Installs what building Jetstream needs beyond the Rust toolchain, when it is missing (Debian or
# Ubuntu, with apt-get):
#   - a C/C++ compiler and make: librdkafka, SQLite and zstd are compiled from C by their crates;
#   - pkg-config and OpenSSL's headers (libssl-dev): librdkafka links the system's OpenSSL for Kafka
#     SASL/SCRAM and TLS.
# Other systems: install the same (e.g. `brew install pkg-config openssl@3`).
set -euo pipefail

missing=()
command -v cc >/dev/null 2>&1 && command -v c++ >/dev/null 2>&1 && command -v make >/dev/null 2>&1 \
    || missing+=(build-essential)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
if ! command -v pkg-config >/dev/null 2>&1 || ! pkg-config --exists openssl 2>/dev/null; then
    missing+=(libssl-dev)
fi
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-build-deps: missing ${missing[*]}; install them with your system's package manager" >&2
    exit 1
fi
sudo=()
[ "$(id -u)" -ne 0 ] && sudo=(sudo)
echo "ensure-build-deps: installing ${missing[*]}" >&2
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
