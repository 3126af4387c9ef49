#!/usr/bin/env bash
# The Jetstream fleet on one machine, without Docker, on loopback only:
#
#   tansu (Kafka-compatible broker, memory engine)       127.0.0.1:<free port>
#   PostgreSQL (scripts/ensure-postgres.sh), a fresh database for this cluster
#   consumer-1, consumer-2   jetstream consume            (one consumer group)
#   api-1, api-2             jetstream serve --no-consume 127.0.0.1:<free ports>
#   nginx                    deploy/nginx.conf over api-1/api-2, HTTP and HTTPS (self-signed)
#   prometheus               deploy/prometheus.yml over every ops port, only when installed
#
# Usage:
#   deploy/local-cluster.sh start      starts everything in the background, prints the URLs, the
#                                      tokens and how to stop; state in $JETSTREAM_CLUSTER_DIR
#   deploy/local-cluster.sh run        the same in the foreground; Ctrl-C stops everything
#   deploy/local-cluster.sh stop       stops everything it started (by PID) and drops the database
#   deploy/local-cluster.sh status     which processes run
#   deploy/local-cluster.sh kill NAME  SIGKILL one process (consumer-1, api-2, …): for failure tests
#   deploy/local-cluster.sh restart NAME   start NAME again (as a supervisor would), same port
#
# After `start`, "$JETSTREAM_CLUSTER_DIR/env" holds shell assignments for scripts:
#   LB_URL, LB_TLS_URL, API_1_URL, API_2_URL, BROKERS, TOPIC, DATABASE_URL, READ_TOKEN,
#   INGEST_TOKEN, ADMIN_TOKEN, CA_CERT, OPS_URLS (each process's /metrics), PROMETHEUS_URL.
#   Logs are in "$JETSTREAM_CLUSTER_DIR/logs".
#
# Environment:
#   JETSTREAM_CLUSTER_DIR  state directory (default ${TMPDIR:-/tmp}/jetstream-cluster)
#   JETSTREAM_BIN          the jetstream binary (default target/release/jetstream, built with
#                          `cargo build --release` unless SKIP_BUILD=1)
#   TOPIC (analytics), PARTITIONS (4), KEEP_DB=1 (stop keeps the database), NGINX (/usr/sbin/nginx),
#   PROMETHEUS (a prometheus binary; default: the one on PATH, none: no Prometheus)
#   CLUSTER_STORE=sqlite   every process shares one SQLite file instead of a PostgreSQL database
# Needs: python3, psql, nginx (Debian's nginx-light), openssl for the HTTPS listener (skipped
# without it); tansu and PostgreSQL are installed/started by scripts/ensure-*.sh when missing.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=${JETSTREAM_CLUSTER_DIR:-${TMPDIR:-/tmp}/jetstream-cluster}
BIN=${JETSTREAM_BIN:-$ROOT/target/release/jetstream}
TOPIC=${TOPIC:-analytics}
PARTITIONS=${PARTITIONS:-4}
NGINX=${NGINX:-/usr/sbin/nginx}
GROUP=jetstream-cluster

log() { printf '[local-cluster %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "$*"; exit 1; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# A process we started is alive if its PID runs and still is the command we started (a PID of a
# process that ended can be reused by an unrelated one: never signal that).
pid_of() {
    local f="$DIR/pids/$1.pid" pid
    [ -f "$f" ] || return 1
    pid=$(cat "$f")
    [ -d "/proc/$pid" ] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$(cat "$DIR/pids/$1.match")" || return 1
    echo "$pid"
}

# Starts component NAME from its saved command line (DIR/cmd/NAME), in the background.
launch() {
    local name=$1
    [ -f "$DIR/cmd/$name" ] || die "no component named $name"
    if pid_of "$name" >/dev/null; then
        die "$name already runs (pid $(pid_of "$name"))"
    fi
    # setsid: the fleet outlives this script and a Ctrl-C in the terminal that ran `start`.
    setsid bash -c "cd '$DIR' && exec $(cat "$DIR/cmd/$name")" </dev/null >>"$DIR/logs/$name.log" 2>&1 &
    echo $! >"$DIR/pids/$name.pid"
}

# Saves NAME's command (a shell-quoted command line) and what identifies its process, and starts it.
define() {
    local name=$1 match=$2
    shift 2
    printf '%q ' "$@" >"$DIR/cmd/$name"
    echo "$match" >"$DIR/pids/$name.match"
    launch "$name"
}

wait_http() { # URL SECONDS NAME
    local url=$1 deadline=$((SECONDS + $2)) name=$3
    until curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; do
        pid_of "$name" >/dev/null || die "$name exited; see $DIR/logs/$name.log"
        [ $SECONDS -lt $deadline ] || die "$name did not answer $url in $2 s; see $DIR/logs/$name.log"
        sleep 0.1
    done
}

wait_assigned() { # NAME SECONDS: the consumer has partitions (its log says so)
    local name=$1 deadline=$((SECONDS + $2))
    until grep -q "partitions assigned" "$DIR/logs/$name.log" 2>/dev/null; do
        pid_of "$name" >/dev/null || die "$name exited; see $DIR/logs/$name.log"
        [ $SECONDS -lt $deadline ] || die "$name got no partitions in $2 s; see $DIR/logs/$name.log"
        sleep 0.1
    done
}

start() {
    if [ -f "$DIR/env" ]; then
        for n in $(ls "$DIR/cmd" 2>/dev/null); do
            pid_of "$n" >/dev/null && die "a cluster already runs in $DIR ($n); stop it first: $0 stop"
        done
        rm -rf "$DIR"
    fi
    command -v python3 >/dev/null || die "python3 is needed"
    command -v psql >/dev/null || die "psql is needed (Debian: postgresql-client)"
    [ -x "$NGINX" ] || die "nginx is needed at $NGINX (Debian: nginx-light), or set NGINX"

    if [ "${SKIP_BUILD:-0}" != 1 ]; then
        log "cargo build --release"
        (cd "$ROOT" && cargo build --release --quiet) >&2
    fi
    [ -x "$BIN" ] || die "no jetstream binary at $BIN"
    local tansu pg_server
    tansu=$("$ROOT/scripts/ensure-tansu.sh")
    [ "${CLUSTER_STORE:-postgres}" = sqlite ] || pg_server=$("$ROOT/scripts/ensure-postgres.sh")

    mkdir -p "$DIR"/{cmd,pids,logs,tansu,nginx/conf/tls,nginx/logs,nginx/tmp}
    # nginx's workers run as `nobody` when started by root: they must reach their directories.
    chmod 755 "$DIR" "$DIR/nginx" "$DIR/nginx/logs" "$DIR/nginx/tmp"

    local db url
    if [ "${CLUSTER_STORE:-postgres}" = sqlite ]; then
        # One SQLite file shared by every process (WAL: readers never block the single writer at a
        # time); for comparing the embedded store with PostgreSQL behind the same load balancer.
        url="sqlite://$DIR/jetstream.db"
        log "SQLite store $url"
    else
        # PostgreSQL: a fresh database on the server, dropped by `stop`.
        db="jetstream_cluster_$(date +%s)_$$"
        psql "$pg_server" -qAt -v ON_ERROR_STOP=1 -c "CREATE DATABASE $db" >/dev/null
        echo "$pg_server" >"$DIR/pg_server"
        echo "$db" >"$DIR/pg_database"
        url=$(python3 -c '
import sys, urllib.parse as u
p = u.urlsplit(sys.argv[1]); print(u.urlunsplit(p._replace(path="/" + sys.argv[2])))' "$pg_server" "$db")
        log "PostgreSQL database $db"
    fi

    # The broker.
    local kport brokers
    kport=$(free_port)
    brokers=127.0.0.1:$kport
    define tansu "broker --listener-url tcp://$brokers" "$tansu" broker --listener-url "tcp://$brokers" \
        --advertised-listener-url "tcp://$brokers" --storage-engine memory://tansu/
    local deadline=$((SECONDS + 20))
    until listening "$kport"; do
        [ $SECONDS -lt $deadline ] || die "tansu did not listen on $brokers; see $DIR/logs/tansu.log"
        sleep 0.1
    done
    "$tansu" topic create "$TOPIC" --broker "tcp://$brokers" --partitions "$PARTITIONS" >/dev/null
    log "tansu on $brokers, topic $TOPIC with $PARTITIONS partitions"

    # Tokens (this also applies the migrations before four processes start at once).
    local read ingest admin
    read=$("$BIN" token create --store "$url" --name cluster-read --scope read)
    ingest=$("$BIN" token create --store "$url" --name cluster-ingest --scope ingest)
    admin=$("$BIN" token create --store "$url" --name cluster-admin --scope admin)

    # Two consumers in one group: the topic's partitions are split between them. Each process
    # also serves /metrics, /healthz and /readyz on a loopback ops port (no token).
    local consumer_ops=() api_ops=()
    for i in 1 2; do
        consumer_ops+=("127.0.0.1:$(free_port)")
        define "consumer-$i" "consume --store $url" "$BIN" consume --store "$url" --kafka-brokers "$brokers" \
            --kafka-topic "$TOPIC" --kafka-group "$GROUP" --ops-listen "${consumer_ops[$((i - 1))]}"
    done

    # Two API-only instances.
    local p1 p2
    p1=$(free_port)
    p2=$(free_port)
    api_ops=("127.0.0.1:$(free_port)" "127.0.0.1:$(free_port)")
    define api-1 "--listen 127.0.0.1:$p1" "$BIN" serve --no-consume --store "$url" --listen "127.0.0.1:$p1" \
        --ops-listen "${api_ops[0]}"
    define api-2 "--listen 127.0.0.1:$p2" "$BIN" serve --no-consume --store "$url" --listen "127.0.0.1:$p2" \
        --ops-listen "${api_ops[1]}"
    wait_http "http://127.0.0.1:$p1/readyz" 30 api-1
    wait_http "http://127.0.0.1:$p2/readyz" 30 api-2
    log "api-1 on 127.0.0.1:$p1, api-2 on 127.0.0.1:$p2"

    # nginx from deploy/nginx.conf: our upstreams and listeners, TLS with a self-signed certificate.
    local lport tport conf=$DIR/nginx/conf tls_url="" ca=""
    lport=$(free_port)
    tport=$(free_port)
    local enable_tls=""
    if command -v openssl >/dev/null; then
        openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=localhost \
            -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
            -keyout "$conf/tls/privkey.pem" -out "$conf/tls/fullchain.pem" 2>/dev/null
        enable_tls='s/^\( *\)#tls \{0,1\}/\1/;'
        tls_url=https://127.0.0.1:$tport
        ca=$conf/tls/fullchain.pem
    fi
    sed -e "/# @api\$/d" \
        -e "s|^\( *\)least_conn;|&\n\1server 127.0.0.1:$p1 max_fails=2 fail_timeout=5s;\n\1server 127.0.0.1:$p2 max_fails=2 fail_timeout=5s;|" \
        -e "s|listen 127.0.0.1:8080 |listen 127.0.0.1:$lport |" -e "s|listen 127.0.0.1:8443 |listen 127.0.0.1:$tport |" \
        -e "$enable_tls" "$ROOT/deploy/nginx.conf" >"$conf/nginx.conf"
    cp "$ROOT/deploy/jetstream-proxy.conf" "$conf/"
    "$NGINX" -t -q -p "$DIR/nginx" -c "$conf/nginx.conf" -e "$DIR/nginx/logs/error.log" \
        || die "nginx rejects the generated $conf/nginx.conf"
    define nginx "-c $conf/nginx.conf" "$NGINX" -p "$DIR/nginx" -c "$conf/nginx.conf" \
        -e "$DIR/nginx/logs/error.log" -g "daemon off;"
    wait_http "http://127.0.0.1:$lport/nginx-health" 10 nginx

    wait_assigned consumer-1 60
    wait_assigned consumer-2 60

    # Prometheus, only when it is installed: deploy/prometheus.yml with this cluster's ops ports.
    local prom_url=""
    local prom=${PROMETHEUS:-$(command -v prometheus || true)}
    if [ -n "$prom" ] && [ -x "$prom" ]; then
        local pport quote='"' sep='", "'
        pport=$(free_port)
        mkdir -p "$DIR/prometheus/data"
        sed -e "s|\[.*\] # @targets|[$quote${api_ops[0]}$sep${api_ops[1]}$quote]|" \
            -e "s|\[.*\] # @consumer-targets|[$quote${consumer_ops[0]}$sep${consumer_ops[1]}$quote]|" \
            "$ROOT/deploy/prometheus.yml" >"$DIR/prometheus/prometheus.yml"
        define prometheus "--web.listen-address=127.0.0.1:$pport" "$prom" \
            --config.file="$DIR/prometheus/prometheus.yml" --storage.tsdb.path="$DIR/prometheus/data" \
            --web.listen-address="127.0.0.1:$pport"
        # Optional: a Prometheus that does not come up is reported, and the cluster runs without it.
        local deadline=$((SECONDS + 30))
        until curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$pport/-/ready" 2>/dev/null; do
            if ! pid_of prometheus >/dev/null || [ $SECONDS -ge $deadline ]; then
                log "prometheus did not start (see $DIR/logs/prometheus.log); going on without it"
                stop_one prometheus 2>/dev/null || true
                break
            fi
            sleep 0.1
        done
        if curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$pport/-/ready" 2>/dev/null; then
            prom_url=http://127.0.0.1:$pport
            log "prometheus on $prom_url (dashboard: deploy/grafana-dashboard.json)"
        fi
    fi

    cat >"$DIR/env" <<EOF
LB_URL=http://127.0.0.1:$lport
LB_TLS_URL=$tls_url
CA_CERT=$ca
API_1_URL=http://127.0.0.1:$p1
API_2_URL=http://127.0.0.1:$p2
BROKERS=$brokers
TOPIC=$TOPIC
DATABASE_URL=$url
READ_TOKEN=$read
INGEST_TOKEN=$ingest
ADMIN_TOKEN=$admin
OPS_URLS="${api_ops[*]} ${consumer_ops[*]}"
PROMETHEUS_URL=$prom_url
EOF
    cat <<EOF
Jetstream local cluster is up (state and logs in $DIR)
  load balancer   http://127.0.0.1:$lport${tls_url:+   $tls_url (self-signed: curl --cacert $ca)}
  API instances   http://127.0.0.1:$p1 (api-1)   http://127.0.0.1:$p2 (api-2)
  consumers       consumer-1, consumer-2 (group $GROUP)
  metrics         ${api_ops[*]} ${consumer_ops[*]} (/metrics, no token)${prom_url:+   prometheus $prom_url}
  broker          $brokers (topic $TOPIC, $PARTITIONS partitions)
  store           $url
  read token      $read
  ingest token    $ingest
  admin token     $admin

  echo '{"event_name":"productSold","product_id":3,"no_of_units":2,"amount":"19.99"}' | \\
    $BIN send --brokers $brokers --topic $TOPIC
  curl -s -H "Authorization: Bearer $read" http://127.0.0.1:$lport/api/product/sale/3
  $0 stop
EOF
}

stop_one() { # NAME: SIGTERM, then SIGKILL after 15 s
    local name=$1 pid
    pid=$(pid_of "$name") || return 0
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 15))
    while pid_of "$name" >/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
    if pid_of "$name" >/dev/null; then
        log "$name (pid $pid) did not stop in 15 s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
}

stop() {
    [ -d "$DIR/cmd" ] || { log "no cluster in $DIR"; return 0; }
    # Front to back: the load balancer, the API, the consumers (their last batches commit), the broker.
    for n in prometheus nginx api-1 api-2 consumer-1 consumer-2 tansu; do stop_one "$n"; done
    for n in $(ls "$DIR/cmd"); do stop_one "$n"; done
    if [ -f "$DIR/pg_database" ] && [ "${KEEP_DB:-0}" != 1 ]; then
        psql "$(cat "$DIR/pg_server")" -qAt -c "DROP DATABASE IF EXISTS $(cat "$DIR/pg_database") WITH (FORCE)" \
            >/dev/null || log "could not drop database $(cat "$DIR/pg_database")"
        rm -f "$DIR/pg_database"
    fi
    rm -f "$DIR/env"
    log "stopped (logs kept in $DIR/logs)"
}

status() {
    [ -d "$DIR/cmd" ] || { echo "no cluster in $DIR"; return 0; }
    for n in $(ls "$DIR/cmd"); do
        if pid=$(pid_of "$n"); then echo "$n running (pid $pid)"; else echo "$n stopped"; fi
    done
}

case "${1:-}" in
    start) start ;;
    run)
        trap 'stop' EXIT
        trap 'exit 130' INT TERM
        start
        log "Ctrl-C stops the cluster"
        while true; do sleep 1; done
        ;;
    stop) stop ;;
    status) status ;;
    kill)
        [ -n "${2:-}" ] || die "usage: $0 kill NAME"
        pid=$(pid_of "$2") || die "$2 does not run"
        kill -KILL "$pid"
        # Gone, or a zombie waiting for its parent to reap it.
        while [ -d "/proc/$pid" ] && ! grep -q '^[0-9]* ([^)]*) Z' "/proc/$pid/stat" 2>/dev/null; do sleep 0.05; done
        log "$2 (pid $pid) killed with SIGKILL"
        ;;
    restart)
        [ -n "${2:-}" ] || die "usage: $0 restart NAME"
        launch "$2"
        log "$2 started again (pid $(cat "$DIR/pids/$2.pid"))"
        ;;
    *) sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
