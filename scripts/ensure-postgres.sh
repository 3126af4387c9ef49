#!/usr/bin/env bash
# Makes sure a PostgreSQL server is available for the tests and prints its URL (a DATABASE_URL
# whose user may CREATE DATABASE) on stdout; everything else goes to stderr.
#
# In order:
#   1. the server at $DATABASE_URL, if it answers;
#   2. a server on 127.0.0.1:$JETSTREAM_PG_PROBE_PORT (default 5432), as user `postgres` or the
#      current user, if one answers and lets that user create databases;
#   3. a throwaway cluster of our own: Debian's postgresql packages are installed if missing
#      (apt-get), then initdb (trust auth) into $JETSTREAM_PG_DIR and pg_ctl start on a free
#      loopback port. A cluster left running by an earlier call is reused.
#      Stop it with: pg_ctl stop -D "$JETSTREAM_PG_DIR/data" (as the user printed in the log).
#
# Environment:
#   DATABASE_URL            a server to use if it answers
#   JETSTREAM_PG_PROBE_PORT the loopback port probed in step 2 (point it at a port with nothing
#                           on it to exercise step 3)
#   JETSTREAM_PG_DIR        where the throwaway cluster lives (default ${TMPDIR:-/tmp}/jetstream-postgres)
set -euo pipefail

log() { echo "ensure-postgres: $*" >&2; }

probe_port=${JETSTREAM_PG_PROBE_PORT:-5432}
base=${JETSTREAM_PG_DIR:-${TMPDIR:-/tmp}/jetstream-postgres}

# The bin directory of the newest installed server, or nothing.
server_bin() {
    local d
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && { echo "$d"; return 0; }
    done
    if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
        dirname "$(command -v initdb)"
        return 0
    fi
    return 1
}

# Does a server accept connections at this URL? (pg_isready when installed, else a TCP connect.)
answers() {
    local url=$1 hostport host port
    if command -v pg_isready >/dev/null 2>&1; then
        PGCONNECT_TIMEOUT=3 pg_isready -q -d "$url" >/dev/null 2>&1
        return
    fi
    hostport=${url#*://}
    hostport=${hostport#*@}
    hostport=${hostport%%/*}
    host=${hostport%:*}
    port=${hostport##*:}
    [ "$port" = "$hostport" ] && port=5432
    timeout 3 bash -c "exec 3<>/dev/tcp/$host/$port" 2>/dev/null
}

# Can this URL's user log in and create databases? (Assumed when psql is not installed.)
usable() {
    local url=$1 ok
    command -v psql >/dev/null 2>&1 || return 0
    ok=$(PGCONNECT_TIMEOUT=3 psql "$url" -Atqc \
        "SELECT rolsuper OR rolcreatedb FROM pg_roles WHERE rolname = current_user" 2>/dev/null) || return 1
    [ "$ok" = t ]
}

# 1. $DATABASE_URL
if [ -n "${DATABASE_URL:-}" ]; then
    if answers "$DATABASE_URL"; then
        log "using DATABASE_URL"
        echo "$DATABASE_URL"
        exit 0
    fi
    log "DATABASE_URL does not answer; looking for another server"
fi

# 2. a server on the usual loopback port
for user in postgres "$(id -un)"; do
    url="postgres://$user@127.0.0.1:$probe_port/postgres"
    if answers "$url" && usable "$url"; then
        log "using the server on 127.0.0.1:$probe_port as $user"
        echo "$url"
        exit 0
    fi
done

# 3. a throwaway cluster
if [ -f "$base/url" ]; then
    url=$(cat "$base/url")
    if answers "$url" && usable "$url"; then
        log "reusing the throwaway cluster in $base"
        echo "$url"
        exit 0
    fi
fi

if ! bin=$(server_bin); then
    log "no PostgreSQL server binaries: installing Debian's postgresql packages"
    sudo=()
    [ "$(id -u)" -ne 0 ] && sudo=(sudo)
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >&2
    bin=$(server_bin) || { log "postgresql was installed but initdb/pg_ctl are not found"; exit 1; }
fi

# initdb and postgres refuse to run as root: run them as the `postgres` account then.
as_owner=()
owner=$(id -un)
if [ "$(id -u)" -eq 0 ]; then
    owner=postgres
    id -u postgres >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin postgres
    as_owner=(runuser -u postgres --)
fi

# A port nothing listens on (pg_ctl start fails below if another process takes it first).
free_port() {
    local p tries=0
    while [ $tries -lt 200 ]; do
        p=$((20000 + RANDOM % 40000))
        if ! timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$p" 2>/dev/null; then
            echo "$p"
            return 0
        fi
        tries=$((tries + 1))
    done
    return 1
}

# A cluster from an earlier call that no longer answers: stop what is left of it, start afresh.
if [ -d "$base/data" ]; then
    "${as_owner[@]}" "$bin/pg_ctl" stop -D "$base/data" -m immediate >/dev/null 2>&1 || true
fi
if [ -e "$base" ] && [ ! -f "$base/.jetstream-postgres" ] && [ -n "$(ls -A "$base" 2>/dev/null)" ]; then
    log "$base exists and is not a cluster of this script: refusing to replace it (set JETSTREAM_PG_DIR)"
    exit 1
fi
rm -rf "$base"
mkdir -p "$base/sock"
touch "$base/.jetstream-postgres"
[ "$owner" != "$(id -un)" ] && chown -R "$owner" "$base"

log "initdb into $base/data (PostgreSQL from $bin, running as $owner)"
"${as_owner[@]}" "$bin/initdb" -D "$base/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >&2 \
    || "${as_owner[@]}" "$bin/initdb" -D "$base/data" -U postgres --auth=trust -E UTF8 --locale=C >&2

for attempt in 1 2 3; do
    port=$(free_port) || { log "no free port found"; exit 1; }
    log "starting on 127.0.0.1:$port (log: $base/postgres.log)"
    if "${as_owner[@]}" "$bin/pg_ctl" start -w -t 60 -D "$base/data" -l "$base/postgres.log" \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $base/sock -c max_connections=200" >&2; then
        url="postgres://postgres@127.0.0.1:$port/postgres"
        echo "$url" >"$base/url"
        log "started; stop it with: ${as_owner[*]} $bin/pg_ctl stop -D $base/data"
        echo "$url"
        exit 0
    fi
    log "start attempt $attempt failed (port taken?); see $base/postgres.log"
done
exit 1
