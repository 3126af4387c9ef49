#!/usr/bin/env bash
# Checks that the committed dashboard build (web/dist/, embedded in the binary by
# src/dashboard.rs) is what the sources in web/ build to: copies the sources to a temporary
# directory, runs `npm ci && npm run build` there (the work tree is not touched) and compares the
# result with web/dist/ file by file. The build is deterministic (fixed file names, pinned
# versions in web/package-lock.json), so any difference means web/dist/ is stale or edited by
# hand: rebuild it with `cd web && npm ci && npm run build` and commit it.
#
#   scripts/web-build-check.sh
#
# Needs node (20.19 or later) and npm. Exit status 0 when the build matches, 1 when it does not
# (the differing files are listed) or when node is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "web-build-check: $*" >&2; }

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    say "node (20.19 or later) and npm are needed to rebuild web/ (Debian: apt-get install nodejs npm)"
    exit 1
fi
if ! node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a === 20 && b >= 19) ? 0 : 1)'; then
    say "node $(node --version) is too old for vite 8: 20.19 or later is needed"
    exit 1
fi

WORK=$(mktemp -d -t jetstream-web-build.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

# The sources only: no node_modules, no earlier build.
tar -C web --exclude=./node_modules --exclude=./dist -cf - . | tar -C "$WORK" -xf -
(
    cd "$WORK"
    npm ci --no-audit --no-fund --prefer-offline --loglevel=error >&2
    npm run build --silent >/dev/null
)

if diff -r "$WORK/dist" web/dist >"$WORK/diff.txt"; then
    say "web/dist matches a fresh build of web/ ($(find web/dist -type f | wc -l) files)"
else
    say "web/dist differs from a fresh build of web/; rebuild it (cd web && npm ci && npm run build) and commit it:"
    grep -E '^(Only in|diff|Binary)' "$WORK/diff.txt" | sed "s|$WORK/dist|fresh build|g" >&2 || true
    exit 1
fi
