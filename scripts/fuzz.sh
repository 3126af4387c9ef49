#!/usr/bin/env bash
# Runs every coverage-guided fuzz target (fuzz/, cargo-fuzz + libFuzzer) for a while, starting
# from its committed corpus, and fails on any crash, panic, hang (one input over 5 s), leak or
# out-of-memory (over 2 GiB).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 10 s, every target)
#
# Needs the nightly toolchain (`cargo +nightly`); installs cargo-fuzz from crates.io when missing.
# Builds once (release, debug assertions and overflow checks on, AddressSanitizer), then runs each
# target. New inputs found go to a scratch directory, so the committed corpus stays as it is;
# a failing input is saved under fuzz/artifacts/<target>/ (see fuzz/README.md to reproduce it).
# Prints each target's executions, and exits non-zero if any target failed.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS="${1:-10}"
shift || true
if ! [[ "$SECS" =~ ^[0-9]+$ ]] || [ "$SECS" -lt 1 ]; then
  echo "usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]" >&2
  exit 2
fi
ALL_TARGETS=(body decimal timestamp config window)
if [ $# -gt 0 ]; then TARGETS=("$@"); else TARGETS=("${ALL_TARGETS[@]}"); fi

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz.sh: the nightly toolchain is needed (rustup toolchain install nightly)" >&2
  exit 2
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked >&2
fi

# The same build flags for `build` and `run`, so `run` does not build again. The build lives
# outside the checkout (FUZZ_TARGET_DIR), so that later runs, CI's clean clones included, rebuild
# only what changed: a first build compiles SQLite, zstd and librdkafka with sanitizers.
TARGET_DIR="${FUZZ_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/jetstream/fuzz-target}"
mkdir -p "$TARGET_DIR"
BUILD_FLAGS=(--release --debug-assertions --target-dir "$TARGET_DIR")
cd fuzz
echo "fuzz.sh: building the fuzz targets" >&2
cargo +nightly fuzz build "${BUILD_FLAGS[@]}" >&2

SCRATCH="$(mktemp -d)"
trap 'rm -rf "$SCRATCH"' EXIT

failed=()
total=0
summary=()
for t in "${TARGETS[@]}"; do
  mkdir -p "corpus/$t" "$SCRATCH/$t"
  args=(-max_total_time="$SECS" -timeout=5 -rss_limit_mb=2048 -print_final_stats=1)
  [ -f "dict/$t.dict" ] && args+=(-dict="dict/$t.dict")
  # The committed corpus, and the reproducers of bugs found so far (read, never written).
  inputs=("corpus/$t")
  [ -d "regressions/$t" ] && inputs+=("regressions/$t")
  log="$SCRATCH/$t.log"
  echo "fuzz.sh: $t for ${SECS}s" >&2
  status=0
  # A generous outer bound: libFuzzer stops itself after SECS; this only catches a stuck process.
  timeout --kill-after=30 "$((SECS * 2 + 120))" \
    cargo +nightly fuzz run "${BUILD_FLAGS[@]}" "$t" "$SCRATCH/$t" "${inputs[@]}" -- "${args[@]}" >"$log" 2>&1 || status=$?
  runs="$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | tail -n1 | grep -o '[0-9]*$' || true)"
  [ -n "$runs" ] || runs="$(grep -o '^Done [0-9]* runs' "$log" | tail -n1 | grep -o '[0-9]\+' || true)"
  runs="${runs:-0}"
  if [ "$status" -ne 0 ]; then
    failed+=("$t")
    echo "fuzz.sh: $t FAILED (exit $status):" >&2
    grep -m 5 -A 2 -E 'panicked at|ERROR: (libFuzzer|AddressSanitizer|LeakSanitizer)' "$log" >&2 || true
    echo "fuzz.sh: the end of its log:" >&2
    tail -n 40 "$log" >&2
    summary+=("$(printf '%-10s %12s executions  FAILED' "$t" "$runs")")
  else
    summary+=("$(printf '%-10s %12s executions  ok' "$t" "$runs")")
  fi
  total=$((total + runs))
done

echo "fuzz: ${SECS}s per target"
printf '%s\n' "${summary[@]}"
printf '%-10s %12s executions\n' total "$total"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz: FAILED: ${failed[*]}"
  exit 1
fi
echo "fuzz: ${#TARGETS[@]} passed, 0 failed"
