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
