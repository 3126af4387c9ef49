# Shared by the bench scripts (sourced, not run).

# server_address OUT ERR PID: waits (at most 30 s) for `jetstream serve --listen 127.0.0.1:0`,
# started with its stdout in OUT and stderr in ERR, to print the address it listens on, and
# prints that address. Fails, showing ERR, when the server exits first or never says.
server_address() {
  local out=$1 err=$2 pid=$3 addr _
  for _ in $(seq 1 300); do
    addr=$(sed -n 's#^listening on http://##p' "$out")
    if [[ -n $addr ]]; then
      echo "$addr"
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "bench: the server did not start:" >&2
  cat "$err" >&2
  return 1
}

# start_nginx_reference NGINX WORK BODY: the reference of the HTTP figures, nginx serving BODY as
# /static.json from WORK/nginx on a free loopback port (keep-alive for as long as the load runs).
# Sets NGX_PORT and NGX_PID (the caller stops it); fails, showing nginx's log, if it does not answer.
# NGINX_PREFIX (optional) is a command nginx runs under, such as "taskset -c 1"; NGINX_ONE=1 runs
# one worker and no master process (what callgrind can follow, in bench/instr.sh). NGINX_ACCESS_LOG=1
# has nginx write its access log (the default `combined` line, through a 64 KiB buffer as
# jetstream's log thread writes) to WORK/nginx/access.log: the reference for a jetstream logging
# each request.
start_nginx_reference() {
  local nginx=$1 work=$2 body=$3
  NGX_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  mkdir -p "$work/nginx/www" "$work/nginx/tmp"
  chmod o+x "$work" "$work/nginx" # nginx workers run as nobody when started by root
  printf '%s' "$body" >"$work/nginx/www/static.json"
  local processes="worker_processes auto;"
  [[ ${NGINX_ONE:-0} == 1 ]] && processes="master_process off; worker_processes 1;"
  local access_log="access_log off;"
  [[ ${NGINX_ACCESS_LOG:-0} == 1 ]] && access_log="access_log $work/nginx/access.log combined buffer=64k;"
  cat >"$work/nginx/nginx.conf" <<EOF
$processes
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 1024; }
http {
  $access_log
  client_body_temp_path $work/nginx/tmp/body;
  proxy_temp_path $work/nginx/tmp/proxy;
  fastcgi_temp_path $work/nginx/tmp/fastcgi;
  uwsgi_temp_path $work/nginx/tmp/uwsgi;
  scgi_temp_path $work/nginx/tmp/scgi;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$NGX_PORT;
    location / { root $work/nginx/www; default_type application/json; }
  }
}
EOF
  # shellcheck disable=SC2086 # NGINX_PREFIX is words
  ${NGINX_PREFIX:-} "$nginx" -p "$work/nginx" -c "$work/nginx/nginx.conf" -e "$work/nginx/error.log" 2>>"$work/nginx/error.log" &
  NGX_PID=$!
  local _
  for _ in $(seq 1 150); do curl -fsS -o /dev/null "http://127.0.0.1:$NGX_PORT/static.json" 2>/dev/null && return 0; sleep 0.1; done
  echo "bench: nginx did not start" >&2
  tail -5 "$work/nginx/error.log" >&2
  return 1
}

# wrk_medians FILE: one line per label of FILE's "run=N LABEL key=value…" lines (query.lua's RESULT
# fields): the medians of req/s, p50, p99 and non-2xx, each label's req/s next to nginx's.
wrk_medians() {
  python3 - "$1" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    parts = line.split()
    kv = dict(p.split("=", 1) for p in parts[2:])
    rows.setdefault(parts[1], []).append(kv)
med = {k: {f: statistics.median(float(r[f]) for r in v) for f in ("rps", "p50_ms", "p99_ms", "non2xx")} for k, v in rows.items()}
for k, m in med.items():
    print(f"   {k:10} median {m['rps']:>9,.0f} req/s  p50 {m['p50_ms']:.3f} ms  p99 {m['p99_ms']:.3f} ms  non-2xx {m['non2xx']:.0f}"
          + ("" if k == "nginx" or "nginx" not in med else f"  = {m['rps'] / med['nginx']['rps']:.2f}x nginx"))
PY
}

# stop_server PID: SIGTERM, then SIGKILL if it has not exited within 10 s (the WAL makes the kill
# safe; a server on the 100M-event store exits in ~7 s). Returns once it is gone.
stop_server() {
  local pid=$1 _
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

# work_traps NAME: what a script running one server and nginx sets up once WORK and OUT are
# chosen: OUT made, no server or nginx yet, stop_work on exit and on Ctrl-C.
work_traps() {
  mkdir -p "$OUT"
  SERVER_PID=""
  NGX_PID=""
  # shellcheck disable=SC2064 # the name is fixed when the trap is set
  trap "stop_work $1" EXIT
  trap 'exit 130' INT TERM
}

# stop_work NAME: the exit trap of a script that runs one server and nginx (scale.sh, seed-ab.sh):
# stops NGX_PID and SERVER_PID if set, removes WORK unless KEEP=1, says where OUT is. A failed
# kill must not end it early (under set -e it once left servers running).
stop_work() {
  if [[ -n ${NGX_PID:-} ]]; then kill "$NGX_PID" 2>/dev/null || true; fi
  if [[ -n ${SERVER_PID:-} ]]; then stop_server "$SERVER_PID"; fi
  if [[ ${KEEP:-0} == 1 ]]; then echo "$1: kept $WORK"; else rm -rf "$WORK"; fi
  echo "$1: output in $OUT"
}
