#!/usr/bin/env python3
"""Overload test for `jetstream serve` (Python 3.11 standard library only).

Starts the server on a fresh store, measures its ingest capacity, then at once:
  * drives OVERLOAD_FACTOR x that capacity of 1,000-event posts, open loop (a fixed schedule; a
    request that cannot be sent on time is dropped, never sent late), each with its own
    Idempotency-Key;
  * holds IDLE_CONNS idle TCP connections, SLOW_HEADER_CONNS clients sending their headers one
    byte per second and SLOW_BODY_CONNS clients sending a body declared as SLOW_BODY_BYTES at
    SLOW_BODY_RATE bytes/s (each reconnects when the server closes it);
  * polls GET /healthz and GET /api/product/sale/{id} every READ_INTERVAL_MS (a new connection each
    time, as a dashboard would), recording latency and status;
and samples the server's RSS and open fds every 0.5 s. Then it checks recovery, retries every
request that got no 200 with its own key, and checks that the store's totals equal exactly the
events of every request sent. Prints a summary table; exits 1 when any check fails, 2 when the
test could not run or the run is invalid (this load generator fell behind its own schedule by
more than LATE_MAX: the offered load was not delivered).

Three processes share the work so that no event loop starves another: this one (server,
sampler, reader, checks), an `ingest` role and an `attack` role (this script run again with
`--role`).

Usage (from the repository root; see scripts/hardening/README.md):
    nice -n 5 python3 scripts/hardening/overload.py
    STORE=postgres://postgres@127.0.0.1:5432/postgres nice -n 5 python3 scripts/hardening/overload.py
Every setting is an environment variable; see SETTINGS below.
"""

import asyncio
import json
import math
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from decimal import Decimal

from listening import wait_listening

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

# name: (default, meaning). Read from the environment; numbers are parsed as float.
SETTINGS = {
    "JETSTREAM_BIN": ("target/release/jetstream", "the server binary (relative to the repository root)"),
    "STORE": ("", "empty: a fresh SQLite store in a temp dir; postgres://USER@HOST:PORT/DB: a fresh "
                  "database is created on that server (and dropped at the end)"),
    "CAPACITY": (0, "ingest capacity in 1,000-event requests/s; 0: measure it (closed loop)"),
    "CAPACITY_WARMUP": (2, "seconds of closed-loop posting before capacity is measured (a fresh store is "
                           "slower at first: every product's series is new)"),
    "CAPACITY_SECONDS": (5, "length of the capacity measurement (closed loop), after the warm-up"),
    "CAPACITY_CONNS": (64, "connections posting back to back while capacity is measured (throughput still "
                            "grows from 16 to 64 with group commit: 64 is nearer saturation)"),
    "OVERLOAD_FACTOR": (2, "offered load = this x measured capacity"),
    "LOAD_SECONDS": (40, "length of the overload phase"),
    "MAX_INFLIGHT": (512, "most ingest requests awaiting an answer; a request due when all are busy is dropped"),
    "LATE_MS": (50, "a request the load generator itself sends later than this is dropped as 'late'"),
    "REQUEST_TIMEOUT": (30, "seconds an ingest request may take before it counts as unanswered"),
    "IDLE_CONNS": (3000, "idle TCP connections (connect, send nothing)"),
    "SLOW_HEADER_CONNS": (500, "clients sending their request headers one byte per second"),
    "SLOW_BODY_CONNS": (200, "clients sending a large declared body slowly"),
    "SLOW_BODY_BYTES": (10 * 1024 * 1024, "Content-Length the slow-body clients declare"),
    "SLOW_BODY_RATE": (1024, "bytes per second each slow-body client sends"),
    "ATTACK_RECONNECT": (1, "1: an attacking connection closed by the server is opened again (after 1 s)"),
    "READ_INTERVAL_MS": (100, "the reader polls /healthz and /api/product/sale/{id} this often"),
    "READER_TIMEOUT": (5, "seconds before a reader request counts as unanswered"),
    "HEALTHZ_P99_MS": (250, "check: /healthz p99 during the load"),
    "SALE_P99_MS": (1000, "check: /api/product/sale/{id} p99 during the load"),
    "READER_MIN_OK": (0.99, "check: fraction of the reader's requests answered 200 during the load"),
    "DROP_MAX": (0.01, "check: fraction of scheduled requests dropped for want of a free connection"),
    "LATE_MAX": (0.05, "validity: fraction dropped because this harness fell behind its schedule (more: "
                       "the offered load was not delivered, the run is INVALID, exit 2 unless a check failed)"),
    "UNANSWERED_MAX": (0.01, "check: fraction of sent requests with no answer (timeout, connection "
                             "error, or a status other than 200/429/503)"),
    "GOODPUT_MIN": (0.5, "check: acknowledged events/s under overload >= this x measured capacity"),
    "ATTACK_CLOSE_MAX_S": (30, "check: no idle or slow connection is kept open longer than this "
                               "(0 disables the check)"),
    "RECOVERY_WAIT": (5, "seconds between the end of the load and the recovery checks"),
    "RECOVERY_HEALTHZ_MS": (100, "check: each of 5 /healthz probes after the load answers within this"),
    "RSS_PEAK_MAX_MB": (1024, "check: the server's peak RSS (MiB)"),
    "RSS_AFTER_MAX_MB": (256, "check: the server's RSS (MiB) after the recovery wait: back near a working set "
                              "(64 MiB SQLite page cache, read cache, runtime), not holding the overload's peak"),
    "FD_AFTER_SLACK": (64, "check: open fds after the load <= baseline + this"),
    "RETRY_DEADLINE": (180, "seconds allowed to get every unanswered request answered"),
    "KEEP": (0, "1 keeps the temp dir (store, server log, raw results)"),
}

EVENTS_PER_BODY = 1000
TEMPLATES = 16
SALE_PRODUCT = 1  # the product the reader asks for; seeded before the load


def setting(name):
    default = SETTINGS[name][0]
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    return raw if isinstance(default, str) else float(raw)


def log(msg):
    print(f"[overload {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def raise_fd_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else 1 << 20
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# ------------------------------------------------------------------------------------ HTTP/1.1


def request_bytes(method, path, addr, headers, body=b""):
    lines = [f"{method} {path} HTTP/1.1", f"Host: {addr}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def read_response(reader):
    """(status, headers with lower-case names, body) of one response; raises on a closed stream."""
    line = await reader.readline()
    if not line:
        raise ConnectionError("connection closed before the status line")
    parts = line.split(b" ", 2)
    status = int(parts[1])
    headers = {}
    while True:
        h = await reader.readline()
        if not h:
            raise ConnectionError("connection closed in the headers")
        if h in (b"\r\n", b"\n"):
            break
        k, _, v = h.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
                break
            chunks.append(await reader.readexactly(size))
            await reader.readline()
        body = b"".join(chunks)
    else:
        body = await reader.read()
    return status, headers, body


def split_addr(addr):
    host, port = addr.rsplit(":", 1)
    return host, int(port)


async def one_request(addr, method, path, headers, body=b"", timeout=10.0):
    """One request on a new connection: (status, headers, body, seconds). Raises on failure."""
    host, port = split_addr(addr)
    t0 = time.monotonic()

    async def go():
        r, w = await asyncio.open_connection(host, port)
        try:
            w.write(request_bytes(method, path, addr, {**headers, "Connection": "close"}, body))
            await w.drain()
            return await read_response(r)
        finally:
            w.close()

    status, h, b = await asyncio.wait_for(go(), timeout)
    return status, h, b, time.monotonic() - t0


def pct(values, p):
    if not values:
        return None
    s = sorted(values)
    return s[max(0, min(len(s) - 1, math.ceil(p / 100 * len(s)) - 1))]


# ------------------------------------------------------------------------ role: ingest (load)


async def ingest_role(cfg):
    """Posts template bodies. mode "closed": `conns` loops back to back for `seconds`;
    mode "open": request i is due at start + i/rate and is dropped when it cannot go on time."""
    addr, token = cfg["addr"], cfg["token"]
    host, port = split_addr(addr)
    bodies = [open(p, "rb").read() for p in cfg["templates"]]
    timeout = cfg["timeout"]
    loop = asyncio.get_running_loop()
    t_start = loop.time() + (cfg["start_at"] - time.time())
    idle = []  # keep-alive connections free for the next request
    entries = []  # [i, template, outcome, status, retry_after, accepted, latency_ms, sent_at_s]
    state = {"inflight": 0, "max_inflight": 0}

    async def post(i):
        tpl = i % len(bodies)
        head = request_bytes("POST", "/api/v1/events", addr, {
            "Authorization": f"Bearer {token}", "Content-Type": "application/json",
            "Idempotency-Key": f"{cfg['key_prefix']}{i}"}, bodies[tpl])
        t0 = loop.time()
        conn = None
        entry = [i, tpl, "error", None, False, None, None, round(t0 - t_start, 4)]
        try:
            async def go():
                nonlocal conn
                if idle:
                    # A kept-alive connection the server may have closed meanwhile: if it fails
                    # before any answer, the request goes once more on a new connection (safe: it
                    # carries its Idempotency-Key), as HTTP clients do.
                    conn = idle.pop()
                    try:
                        conn[1].write(head)
                        await conn[1].drain()
                        return await read_response(conn[0])
                    except (ConnectionResetError, BrokenPipeError, ConnectionError) as e:
                        if type(e) is ConnectionError and "before the status line" not in str(e):
                            raise
                        conn[1].close()
                conn = await asyncio.open_connection(host, port)
                conn[1].write(head)
                await conn[1].drain()
                return await read_response(conn[0])

            status, h, b = await asyncio.wait_for(go(), timeout)
            entry[3] = status
            entry[4] = "retry-after" in h
            if status == 200:
                try:
                    ans = json.loads(b)
                    entry[5] = ans.get("accepted")
                    ok = ans.get("accepted") == EVENTS_PER_BODY and ans.get("rejected") == 0
                except ValueError:
                    ok = False
                entry[2] = "ack" if ok else "badack"
            elif status in (429, 503):
                entry[2] = str(status)
            else:
                entry[2] = "status"
            if h.get("connection", "").lower() == "close":
                conn[1].close()
            else:
                idle.append(conn)
        except asyncio.TimeoutError:
            entry[2] = "timeout"
            if conn:
                conn[1].close()
        except (OSError, ConnectionError, asyncio.IncompleteReadError, ValueError, IndexError):
            entry[2] = "error"
            if conn:
                conn[1].close()
        finally:
            state["inflight"] -= 1
            entry[6] = round((loop.time() - t0) * 1000, 2)
            entries.append(entry)

    tasks = set()
    dropped_busy = dropped_late = scheduled = 0
    late_max = 0.0
    late_at, busy_at = {}, {}  # second of the schedule -> requests dropped in it
    if cfg["mode"] == "closed":
        counter = iter(range(10**9))
        end = t_start + cfg["seconds"]

        async def worker():
            while loop.time() < end:
                state["inflight"] += 1
                await post(next(counter))

        await asyncio.sleep(max(0, t_start - loop.time()))
        await asyncio.gather(*(worker() for _ in range(cfg["conns"])))
        scheduled = len(entries)
    else:
        rate, seconds, max_inflight = cfg["rate"], cfg["seconds"], cfg["max_inflight"]
        late = cfg["late_ms"] / 1000
        total = int(rate * seconds)
        for i in range(total):
            due = t_start + i / rate
            now = loop.time()
            if now < due:
                await asyncio.sleep(due - now)
                now = loop.time()
            scheduled += 1
            late_max = max(late_max, now - due)
            if now - due > late:
                dropped_late += 1
                late_at[int(due - t_start)] = late_at.get(int(due - t_start), 0) + 1
                continue
            if state["inflight"] >= max_inflight:
                dropped_busy += 1
                busy_at[int(due - t_start)] = busy_at.get(int(due - t_start), 0) + 1
                continue
            state["inflight"] += 1  # counted now: the task starts later
            state["max_inflight"] = max(state["max_inflight"], state["inflight"])
            t = asyncio.ensure_future(post(i))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(set(tasks))
    for c in idle:
        c[1].close()
    return {"scheduled": scheduled, "dropped_busy": dropped_busy, "dropped_late": dropped_late,
            "late_max_ms": round(late_max * 1000, 1), "max_inflight": state["max_inflight"],
            "late_at": late_at, "busy_at": busy_at,
            "entries": entries}


# ------------------------------------------------------------------- role: attack (idle, slow)


async def attack_role(cfg):
    addr = cfg["addr"]
    host, port = split_addr(addr)
    loop = asyncio.get_running_loop()
    start = loop.time() + (cfg["start_at"] - time.time())
    end = loop.time() + (cfg["end_at"] - time.time())
    stopping = asyncio.Event()
    loop.call_at(end, stopping.set)
    stats = {k: {"opened": 0, "connect_failed": 0, "closed_by_server": 0, "answered": {},
                 "lifetimes": [], "open_at_end": 0, "open_at_end_ages": []}
             for k in ("idle", "slow_header", "slow_body")}
    slow_header = (b"GET /healthz HTTP/1.1\r\nHost: " + addr.encode()
                   + b"\r\nUser-Agent: overload-slow-header\r\nX-Padding: ")
    body_chunk = (b'{"event_name":"productSold","product_id":7,"no_of_units":1,"amount":"1.00"},' * 14)
    body_chunk = body_chunk[: int(cfg["body_rate"])].ljust(int(cfg["body_rate"]), b" ")
    slow_body_head = (f"POST /api/v1/events HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {cfg['token']}\r\n"
                      f"Content-Type: application/json\r\nContent-Length: {int(cfg['body_bytes'])}\r\n\r\n").encode()

    async def trickle(kind, w):
        if kind == "slow_header":
            data, n = slow_header, 0
            while True:
                b = data[n:n + 1] if n < len(data) else b"a"
                w.write(b)
                n += 1
                await asyncio.sleep(1)
        elif kind == "slow_body":
            w.write(slow_body_head + b"[")
            sent = 1
            while sent + len(body_chunk) < cfg["body_bytes"]:
                await asyncio.sleep(1)
                w.write(body_chunk)
                sent += len(body_chunk)
            await asyncio.Event().wait()

    async def one(kind, delay):
        st = stats[kind]
        await asyncio.sleep(max(0, start + delay - loop.time()))
        while not stopping.is_set():
            try:
                r, w = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
            except (OSError, asyncio.TimeoutError):
                st["connect_failed"] += 1
                await asyncio.sleep(1)
                continue
            st["opened"] += 1
            opened = loop.time()
            feeder = asyncio.ensure_future(trickle(kind, w))
            reading = asyncio.ensure_future(r.read(256))
            stop_wait = asyncio.ensure_future(stopping.wait())
            await asyncio.wait({reading, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
            feeder.cancel()
            if reading.done():
                stop_wait.cancel()
                st["closed_by_server"] += 1
                st["lifetimes"].append(round(loop.time() - opened, 2))
                try:
                    data = reading.result()
                except (OSError, ConnectionError):
                    data = b""
                first = data.split(b"\r\n", 1)[0].decode("latin-1")[:40] if data else "closed"
                key = first.split(" ")[1] if first.startswith("HTTP/") else first
                st["answered"][key] = st["answered"].get(key, 0) + 1
                w.close()
                if not cfg["reconnect"]:
                    return
                try:
                    await asyncio.wait_for(stopping.wait(), 1)
                except asyncio.TimeoutError:
                    pass
            else:
                reading.cancel()
                st["open_at_end"] += 1
                st["open_at_end_ages"].append(round(loop.time() - opened, 2))
                w.close()
                return

    ramp = cfg["ramp_per_s"]
    jobs, k = [], 0
    for kind in ("idle", "slow_header", "slow_body"):
        for _ in range(int(cfg[kind])):
            jobs.append(one(kind, k / ramp))
            k += 1
    await asyncio.gather(*jobs)
    return stats


def run_role(role, cfg_path):
    raise_fd_limit()
    with open(cfg_path) as f:
        cfg = json.load(f)
    fn = ingest_role if role == "ingest" else attack_role
    out = asyncio.run(fn(cfg))
    with open(cfg["out"], "w") as f:
        json.dump(out, f)


# ------------------------------------------------------------------------------- the test itself


class Server:
    def __init__(self, binary, store, work):
        self.log_path = os.path.join(work, "server.log")
        self.log = open(self.log_path, "ab")
        env = {**os.environ, "JETSTREAM_LOG": os.environ.get("JETSTREAM_LOG", "warn")}
        self.proc = subprocess.Popen([binary, "serve", "--store", store, "--listen", "127.0.0.1:0"],
                                     stdout=subprocess.PIPE, stderr=self.log, env=env)
        self.addr = wait_listening(self.proc)
        if not self.addr:
            self.stop()
            raise RuntimeError(f"the server did not start; see {self.log_path}")

    def alive(self):
        return self.proc.poll() is None

    def rss_kib(self):
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except OSError:
            return None
        return None

    def fds(self):
        try:
            return len(os.listdir(f"/proc/{self.proc.pid}/fd"))
        except OSError:
            return None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def make_templates(work):
    """TEMPLATES distinct 1,000-event bodies of productSold with exact decimal amounts."""
    rng = random.Random(2024)
    out = []
    for t in range(TEMPLATES):
        events, cents = [], 0
        for _ in range(EVENTS_PER_BODY):
            c = rng.randint(1, 999_999)
            cents += c
            events.append({"event_name": "productSold", "product_id": rng.randint(1, 1000),
                           "no_of_units": rng.randint(1, 5), "amount": f"{c // 100}.{c % 100:02d}"})
        path = os.path.join(work, f"body{t}.json")
        with open(path, "w") as f:
            json.dump(events, f, separators=(",", ":"))
        out.append({"path": path, "events": EVENTS_PER_BODY, "amount": Decimal(cents) / 100})
    return out


def run_child(role, cfg, work, name):
    cfg_path = os.path.join(work, f"{name}.cfg.json")
    cfg["out"] = os.path.join(work, f"{name}.out.json")
    with open(cfg_path, "w") as f:
        json.dump(cfg, f)
    return subprocess.Popen([sys.executable, os.path.abspath(__file__), "--role", role, cfg_path]), cfg["out"]


def wait_child(proc, out, what):
    rc = proc.wait()
    if rc != 0:
        raise RuntimeError(f"the {what} process failed (exit {rc})")
    with open(out) as f:
        return json.load(f)


def cli(binary, *args):
    r = subprocess.run([binary, *args], capture_output=True, text=True, env={**os.environ, "JETSTREAM_LOG": "warn"})
    if r.returncode != 0:
        raise RuntimeError(f"jetstream {' '.join(args[:2])} failed: {r.stderr.strip()}")
    return r.stdout.strip()


def get_json(addr, path, token):
    status, _, body, _ = asyncio.run(one_request(addr, "GET", path, {"Authorization": f"Bearer {token}"}))
    if status != 200:
        raise RuntimeError(f"GET {path}: HTTP {status} {body[:200]!r}")
    return json.loads(body, parse_float=Decimal)


def totals(addr, token):
    ev = get_json(addr, "/api/v1/metrics/events?window=7d", token)["result"]
    sa = get_json(addr, "/api/v1/metrics/sales_amount?window=7d", token)["result"]
    return {"events": int(ev["count"]), "sold": int(sa["count"]), "amount": Decimal(str(sa["sum"] or 0))}


async def monitor(server, addr, read_token, stop, marks):
    """Samples RSS/fds every 0.5 s and polls the two read endpoints every READ_INTERVAL_MS."""
    samples, reads = [], []
    interval = setting("READ_INTERVAL_MS") / 1000
    rtimeout = setting("READER_TIMEOUT")

    async def sampler():
        while not stop.is_set():
            samples.append((time.time(), server.rss_kib(), server.fds()))
            try:
                await asyncio.wait_for(stop.wait(), 0.5)
            except asyncio.TimeoutError:
                pass

    async def poller(name, path, headers):
        nxt = time.monotonic()
        while not stop.is_set():
            t = time.time()
            try:
                status, _, _, secs = await one_request(addr, "GET", path, headers, timeout=rtimeout)
                reads.append((t, name, status, secs * 1000))
            except (OSError, ConnectionError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as e:
                reads.append((t, name, type(e).__name__, (time.time() - t) * 1000))
            nxt += interval
            delay = nxt - time.monotonic()
            if delay < 0:
                nxt = time.monotonic()  # a slow answer: the next poll goes at once, none piles up
                delay = 0
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except asyncio.TimeoutError:
                pass

    await asyncio.gather(sampler(), poller("healthz", "/healthz", {}),
                         poller("sale", f"/api/product/sale/{SALE_PRODUCT}", {"Authorization": f"Bearer {read_token}"}))
    return samples, reads


async def retry_all(addr, token, pending, bodies, key_prefix, deadline):
    """Posts each (i, template) again with its own key until it is answered 200.
    Returns (replayed, attempts, still_pending)."""
    queue = list(pending)
    replayed = attempts = 0
    host, port = split_addr(addr)

    async def worker():
        nonlocal replayed, attempts
        while queue and time.time() < deadline:
            i, tpl = queue.pop()
            try:
                status, h, b, _ = await one_request(addr, "POST", "/api/v1/events", {
                    "Authorization": f"Bearer {token}", "Content-Type": "application/json",
                    "Idempotency-Key": f"{key_prefix}{i}"}, bodies[tpl], timeout=setting("REQUEST_TIMEOUT"))
            except (OSError, ConnectionError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError):
                status, h, b = None, {}, b""
            attempts += 1
            if status == 200:
                ans = json.loads(b)
                if ans.get("accepted") != EVENTS_PER_BODY:
                    raise RuntimeError(f"retry of request {key_prefix}{i}: answer {ans}")
                replayed += h.get("idempotent-replayed") == "true"
                continue
            queue.insert(0, (i, tpl))
            wait = 0.5
            if status in (429, 503) and h.get("retry-after", "").isdigit():
                wait = min(5, int(h["retry-after"]))
            await asyncio.sleep(wait)

    await asyncio.gather(*(worker() for _ in range(4)))
    return replayed, attempts, queue


def fmt_ms(v):
    return "-" if v is None else f"{v:.1f}"


def main():
    nofile = raise_fd_limit()
    binary = setting("JETSTREAM_BIN")
    if not os.path.isabs(binary):
        binary = os.path.join(ROOT, binary)
    if not os.access(binary, os.X_OK):
        log(f"no jetstream binary at {binary} (cargo build --release, or set JETSTREAM_BIN)")
        return 2
    need = setting("IDLE_CONNS") + setting("SLOW_HEADER_CONNS") + setting("SLOW_BODY_CONNS") + setting("MAX_INFLIGHT") + 200
    if nofile < need:
        log(f"the open-file limit is {nofile} (hard limit reached); {int(need)} are needed: lower the "
            f"connection counts or raise the hard limit (ulimit -Hn)")
        return 2
    work = tempfile.mkdtemp(prefix="jetstream-overload.")
    run_id = f"{int(time.time())}-{os.getpid()}"
    store = setting("STORE")
    pg = None
    if store.startswith(("postgres://", "postgresql://")):
        pg_server = store
        db = f"jetstream_overload_{run_id.replace('-', '_')}"
        subprocess.run(["psql", pg_server, "-qAt", "-v", "ON_ERROR_STOP=1", "-c", f"CREATE DATABASE {db}"],
                       check=True, stdout=subprocess.DEVNULL)
        pg = (pg_server, db)
        store = urllib.parse.urlunsplit(urllib.parse.urlsplit(pg_server)._replace(path="/" + db))
    elif not store:
        store = f"sqlite://{work}/jetstream.db"
    server = None
    children = []
    try:
        return run_test(binary, store, work, run_id, children)
    finally:
        for p in children:
            if p.poll() is None:
                p.kill()
                p.wait()
        if pg:
            subprocess.run(["psql", pg[0], "-qAt", "-c", f"DROP DATABASE IF EXISTS {pg[1]} WITH (FORCE)"],
                           stdout=subprocess.DEVNULL)
        if setting("KEEP"):
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def run_test(binary, store, work, run_id, children):
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "?"
    log(f"binary {os.path.relpath(binary, ROOT)} (tree at {commit}), store {store.split('?')[0]}, temp dir {work}")
    ingest_token = cli(binary, "token", "create", "--store", store, "--name", "overload-ingest", "--scope", "ingest")
    read_token = cli(binary, "token", "create", "--store", store, "--name", "overload-read", "--scope", "read")
    templates = make_templates(work)
    bodies = [open(t["path"], "rb").read() for t in templates]
    server = Server(binary, store, work)
    addr = server.addr
    checks = []  # (name, ok, detail, is_validity)
    rows = []  # (what, value)

    def check(name, ok, detail, validity=False):
        checks.append((name, bool(ok), detail, validity))

    try:
        # Seed the product the reader asks for, then note where the totals start.
        seed = [{"event_name": "productSold", "product_id": SALE_PRODUCT, "no_of_units": 1, "amount": "1.25"}]
        st, _, b, _ = asyncio.run(one_request(addr, "POST", "/api/v1/events", {
            "Authorization": f"Bearer {ingest_token}", "Content-Type": "application/json"},
            json.dumps(seed).encode()))
        if st != 200:
            raise RuntimeError(f"the seed post failed: HTTP {st} {b[:200]!r}")
        base = totals(addr, read_token)
        base_rss, base_fds = server.rss_kib(), server.fds()
        log(f"server {addr} (pid {server.proc.pid}), RSS {base_rss // 1024} MiB, {base_fds} fds; totals {base}")

        ledger = {}  # key -> (template, outcome entry)

        # ---- capacity, closed loop
        cap_secs = setting("CAPACITY_SECONDS")
        warm = setting("CAPACITY_WARMUP")
        log(f"measuring capacity: {int(setting('CAPACITY_CONNS'))} connections posting 1,000-event bodies back "
            f"to back for {warm + cap_secs:.0f} s")
        p, out = run_child("ingest", {
            "mode": "closed", "addr": addr, "token": ingest_token, "templates": [t["path"] for t in templates],
            "timeout": setting("REQUEST_TIMEOUT"), "key_prefix": f"cap-{run_id}-", "conns": int(setting("CAPACITY_CONNS")),
            "seconds": warm + cap_secs, "start_at": time.time() + 0.5}, work, "capacity")
        children.append(p)
        cap = wait_child(p, out, "capacity")
        for e in cap["entries"]:
            ledger[f"cap-{run_id}-{e[0]}"] = (e[1], e)
        acked_window = [e for e in cap["entries"] if e[2] == "ack" and warm <= e[7] + e[6] / 1000 <= warm + cap_secs]
        capacity = len(acked_window) / cap_secs
        if setting("CAPACITY") > 0:
            log(f"measured capacity {capacity:.1f} req/s; CAPACITY={setting('CAPACITY'):g} is used instead")
            capacity = setting("CAPACITY")
        lat = [e[6] for e in cap["entries"] if e[2] == "ack"]
        if capacity <= 0:
            raise RuntimeError(f"no request was acknowledged while measuring capacity: "
                               f"{[e[2:4] for e in cap['entries'][:5]]}")
        log(f"capacity: {capacity:.1f} req/s = {capacity * EVENTS_PER_BODY:,.0f} events/s "
            f"(POST p50 {pct(lat, 50):.0f} ms, p99 {pct(lat, 99):.0f} ms)")
        rows.append(("capacity (closed loop)", f"{capacity:.1f} req/s = {capacity * EVENTS_PER_BODY:,.0f} events/s, "
                     f"POST p50 {pct(lat, 50):.0f} ms p99 {pct(lat, 99):.0f} ms"
                     + (" (set by CAPACITY)" if setting("CAPACITY") > 0 else
                        f" ({int(setting('CAPACITY_CONNS'))} connections, {cap_secs:g} s after {warm:g} s of warm-up)")))

        # ---- the overload: attack + open-loop ingest + reader, at once
        rate = setting("OVERLOAD_FACTOR") * capacity
        load_secs = setting("LOAD_SECONDS")
        n_attack = setting("IDLE_CONNS") + setting("SLOW_HEADER_CONNS") + setting("SLOW_BODY_CONNS")
        ramp = 1000.0
        lead = n_attack / ramp + 1.0
        t_attack = time.time() + 3.0  # the reader's first 2 s are the baseline
        t_load = t_attack + lead
        t_end = t_load + load_secs
        log(f"overload: {n_attack:.0f} idle/slow connections from now on, then {rate:.1f} req/s "
            f"({rate * EVENTS_PER_BODY:,.0f} events/s offered) for {load_secs:.0f} s")
        pa, out_a = run_child("attack", {
            "addr": addr, "token": ingest_token, "idle": setting("IDLE_CONNS"),
            "slow_header": setting("SLOW_HEADER_CONNS"), "slow_body": setting("SLOW_BODY_CONNS"),
            "body_bytes": setting("SLOW_BODY_BYTES"), "body_rate": setting("SLOW_BODY_RATE"),
            "reconnect": bool(setting("ATTACK_RECONNECT")), "ramp_per_s": ramp,
            "start_at": t_attack, "end_at": t_end}, work, "attack")
        children.append(pa)
        pi, out_i = run_child("ingest", {
            "mode": "open", "addr": addr, "token": ingest_token, "templates": [t["path"] for t in templates],
            "timeout": setting("REQUEST_TIMEOUT"), "key_prefix": f"ovl-{run_id}-", "rate": rate,
            "seconds": load_secs, "max_inflight": int(setting("MAX_INFLIGHT")), "late_ms": setting("LATE_MS"),
            "start_at": t_load}, work, "ingest")
        children.append(pi)

        async def watch():
            stop = asyncio.Event()
            marks = {}
            mon = asyncio.ensure_future(monitor(server, addr, read_token, stop, marks))
            loop = asyncio.get_running_loop()
            while pa.poll() is None or pi.poll() is None:
                await asyncio.sleep(0.2)
                if not server.alive():
                    break
            # Recovery: the load is over; give the server RECOVERY_WAIT s.
            t_load_over = time.time()
            await asyncio.sleep(setting("RECOVERY_WAIT"))
            stop.set()
            samples, reads = await mon
            return samples, reads, t_load_over

        samples, reads, t_load_over = asyncio.run(watch())
        if not server.alive():
            raise RuntimeError(f"the server died during the load (exit {server.proc.returncode}); see {server.log_path}")
        attack = wait_child(pa, out_a, "attack")
        load = wait_child(pi, out_i, "ingest")
        for e in load["entries"]:
            ledger[f"ovl-{run_id}-{e[0]}"] = (e[1], e)

        # ---- what happened during the load
        ents = load["entries"]
        sched = load["scheduled"]
        by = {}
        for e in ents:
            by[e[2]] = by.get(e[2], 0) + 1
        acks = by.get("ack", 0)
        n429, n503 = by.get("429", 0), by.get("503", 0)
        no_ra = sum(1 for e in ents if e[2] in ("429", "503") and not e[4])
        unanswered = sum(by.get(k, 0) for k in ("timeout", "error", "status", "badack"))
        sent = len(ents)
        acked_in_window = sum(1 for e in ents if e[2] == "ack" and e[7] + e[6] / 1000 <= load_secs)
        ack_lat = [e[6] for e in ents if e[2] == "ack"]
        shed_lat = [e[6] for e in ents if e[2] in ("429", "503")]
        rows.append(("offered (open loop)", f"{rate:.1f} req/s = {rate * EVENTS_PER_BODY:,.0f} events/s for {load_secs:.0f} s "
                     f"= {sched} requests scheduled"))
        rows.append(("sent", f"{sent} ({sent / load_secs:.1f} req/s); most in flight {load['max_inflight']} "
                     f"(cap {int(setting('MAX_INFLIGHT'))})"))
        rows.append(("dropped: no free connection", f"{load['dropped_busy']} ({load['dropped_busy'] / max(1, sched):.1%})"
                     + (f", from second {min(int(k) for k in load['busy_at'])} of the load on" if load["busy_at"] else "")))
        rows.append(("dropped: load generator late", f"{load['dropped_late']} (latest {load['late_max_ms']} ms behind"
                     + (f"; by second of the load {dict(sorted((int(k), v) for k, v in load['late_at'].items()))})"
                        if load["late_at"] else ")")))
        rows.append(("acknowledged (200)", f"{acks} = {acks * EVENTS_PER_BODY:,} events; "
                     f"{acked_in_window * EVENTS_PER_BODY / load_secs:,.0f} events/s in the load window; "
                     f"POST p50 {fmt_ms(pct(ack_lat, 50))} ms p99 {fmt_ms(pct(ack_lat, 99))} ms max {fmt_ms(max(ack_lat, default=None))} ms"))
        rows.append(("429 / 503", f"{n429} / {n503} ({no_ra} without Retry-After); "
                     f"answered in p50 {fmt_ms(pct(shed_lat, 50))} ms p99 {fmt_ms(pct(shed_lat, 99))} ms"))
        rows.append(("unanswered", f"{by.get('timeout', 0)} timeouts, {by.get('error', 0)} connection errors, "
                     f"{by.get('status', 0)} other statuses ({sorted(set(e[3] for e in ents if e[2] == 'status'))}), "
                     f"{by.get('badack', 0)} 200s not accepting all 1,000 events"))
        check("load generator kept its schedule (run validity)", load["dropped_late"] <= setting("LATE_MAX") * sched,
              f"{load['dropped_late']} of {sched} dropped late, at most {setting('LATE_MAX'):.0%}", validity=True)
        check("requests due were sent (a free connection)", load["dropped_busy"] <= setting("DROP_MAX") * sched,
              f"{load['dropped_busy']} of {sched} ({load['dropped_busy'] / max(1, sched):.1%}) found all "
              f"{int(setting('MAX_INFLIGHT'))} connections waiting on the server; at most {setting('DROP_MAX'):.0%}")
        check("every 429/503 carries Retry-After", no_ra == 0, f"{no_ra} without")
        check("sent requests were answered (200/429/503)", unanswered <= setting("UNANSWERED_MAX") * max(1, sent),
              f"{unanswered} of {sent} unanswered; at most {setting('UNANSWERED_MAX'):.0%}")
        goodput = acked_in_window / load_secs
        check("the offered load was an overload (run validity)", goodput <= 0.9 * rate,
              f"{goodput:.1f} req/s acknowledged of {rate:.1f} offered; at most 90% (else the server took "
              f"everything: capacity was underestimated; set CAPACITY or a higher OVERLOAD_FACTOR)", validity=True)
        check("goodput under overload", goodput >= setting("GOODPUT_MIN") * min(capacity, rate),
              f"{goodput:.1f} req/s acknowledged, {goodput / min(capacity, rate):.0%} of "
              f"{'capacity' if capacity <= rate else 'the offered load'}; at least {setting('GOODPUT_MIN'):.0%}")

        in_load = [r for r in reads if t_load <= r[0] <= t_end]
        before = [r for r in reads if r[0] < t_attack]
        for name in ("healthz", "sale"):
            ms = [r[3] for r in before if r[1] == name and r[2] == 200]
            what = "/healthz" if name == "healthz" else f"/api/product/sale/{SALE_PRODUCT}"
            rows.append((f"{what} before the load", f"{len(ms)} answered 200; p50 {fmt_ms(pct(ms, 50))} ms "
                         f"max {fmt_ms(max(ms, default=None))} ms"))
        for name, lim in (("healthz", setting("HEALTHZ_P99_MS")), ("sale", setting("SALE_P99_MS"))):
            rs = [r for r in in_load if r[1] == name]
            ok = [r[3] for r in rs if r[2] == 200]
            bad = [r for r in rs if r[2] != 200]
            allms = [r[3] for r in rs]
            p50, p99, mx = pct(allms, 50), pct(allms, 99), max(allms, default=None)
            what = "/healthz" if name == "healthz" else f"/api/product/sale/{SALE_PRODUCT}"
            kinds = sorted({str(r[2]) for r in bad})
            rows.append((f"{what} during load", f"{len(ok)}/{len(rs)} answered 200 {kinds if kinds else ''}; "
                         f"p50 {fmt_ms(p50)} ms p99 {fmt_ms(p99)} ms max {fmt_ms(mx)} ms"))
            check(f"{what} answered during load", rs and len(ok) >= setting("READER_MIN_OK") * len(rs),
                  f"{len(ok)} of {len(rs)} answered 200; at least {setting('READER_MIN_OK'):.0%}")
            check(f"{what} p99 during load", p99 is not None and p99 <= lim, f"p99 {fmt_ms(p99)} ms; at most {lim:.0f} ms")

        close_max = setting("ATTACK_CLOSE_MAX_S")
        for kind, st in attack.items():
            life = st["lifetimes"]
            long_open = sum(1 for a in st["open_at_end_ages"] if a >= close_max) + sum(1 for a in life if a >= close_max)
            rows.append((f"attack: {kind}", f"{st['opened']} opened, {st['connect_failed']} connects failed, "
                         f"{st['closed_by_server']} closed by the server (after p50 {fmt_ms(pct(life, 50))} s, max "
                         f"{fmt_ms(max(life, default=None))} s; answers {st['answered'] or '-'}), "
                         f"{st['open_at_end']} still open at the end (oldest {fmt_ms(max(st['open_at_end_ages'], default=None))} s)"))
            if close_max > 0:
                check(f"{kind} connections closed by the server within {close_max:.0f} s", long_open == 0,
                      f"{long_open} of {st['opened']} stayed open {close_max:.0f} s or longer "
                      f"(the attack lasted {t_end - t_attack:.0f} s)")

        rss = [s[1] for s in samples if s[1] is not None]
        fds = [s[2] for s in samples if s[2] is not None]
        rss_after, fds_after = server.rss_kib(), server.fds()
        rss_peak, fds_peak = max(rss, default=0), max(fds, default=0)
        rows.append(("server RSS", f"baseline {base_rss / 1024:.0f} MiB, peak {rss_peak / 1024:.0f} MiB, "
                     f"after {rss_after / 1024:.0f} MiB ({len(rss)} samples)"))
        rows.append(("server open fds", f"baseline {base_fds}, peak {fds_peak}, after {fds_after}"))
        check("RSS peak", rss_peak <= setting("RSS_PEAK_MAX_MB") * 1024,
              f"{rss_peak / 1024:.0f} MiB; at most {setting('RSS_PEAK_MAX_MB'):.0f} MiB")
        check("RSS after the load", rss_after <= setting("RSS_AFTER_MAX_MB") * 1024,
              f"{rss_after / 1024:.0f} MiB {setting('RECOVERY_WAIT'):.0f} s after; at most {setting('RSS_AFTER_MAX_MB'):.0f} MiB")
        check("fds after the load", fds_after <= base_fds + setting("FD_AFTER_SLACK"),
              f"{fds_after}; at most baseline {base_fds} + {setting('FD_AFTER_SLACK'):.0f}")

        # ---- recovery
        probes = []
        for _ in range(5):
            try:
                s, _, _, secs = asyncio.run(one_request(addr, "GET", "/healthz", {}, timeout=5))
                probes.append((s, secs * 1000))
            except (OSError, ConnectionError, asyncio.TimeoutError) as e:
                probes.append((type(e).__name__, 5000))
            time.sleep(0.2)
        worst = max(p[1] for p in probes)
        rows.append(("recovery /healthz (5 probes)", f"statuses {[p[0] for p in probes]}, max {worst:.1f} ms"))
        check("recovery: /healthz answers within the limit", all(p[0] == 200 for p in probes)
              and worst <= setting("RECOVERY_HEALTHZ_MS"), f"max {worst:.1f} ms; at most {setting('RECOVERY_HEALTHZ_MS'):.0f} ms")
        rkey = f"rec-{run_id}-0"
        try:
            s, h, b, secs = asyncio.run(one_request(addr, "POST", "/api/v1/events", {
                "Authorization": f"Bearer {ingest_token}", "Content-Type": "application/json",
                "Idempotency-Key": rkey}, bodies[0], timeout=setting("REQUEST_TIMEOUT")))
            ok = s == 200 and json.loads(b).get("accepted") == EVENTS_PER_BODY
            rec_entry = [0, 0, "ack" if ok else "status", s, "retry-after" in h, None, secs * 1000, 0]
        except (OSError, ConnectionError, asyncio.TimeoutError) as e:
            s, secs, ok = type(e).__name__, None, False
            rec_entry = [0, 0, "error", None, False, None, None, 0]
        ledger[rkey] = (0, rec_entry)
        rows.append(("recovery post (1,000 events)", f"{s} in {fmt_ms(secs * 1000 if secs else None)} ms"))
        check("recovery: a normal post succeeds", ok, f"HTTP {s}")

        # ---- exactness: before the retries, bounds; after them, equality
        acked_events = sum(EVENTS_PER_BODY for _, e in ledger.values() if e[2] == "ack")
        maybe = sum(EVENTS_PER_BODY for _, e in ledger.values() if e[2] in ("timeout", "error", "status", "badack"))
        pre = totals(addr, read_token)
        got = pre["events"] - base["events"]
        rows.append(("store before retries", f"+{got:,} events; acknowledged {acked_events:,}, "
                     f"unanswered (may or may not have committed) {maybe:,}; 429/503 (must count nothing) "
                     f"{sum(EVENTS_PER_BODY for _, e in ledger.values() if e[2] in ('429', '503')):,}"))
        check("every acknowledged event is counted", got >= acked_events, f"+{got:,} counted, {acked_events:,} acknowledged")
        check("nothing counted beyond acknowledged + unanswered (429/503 count nothing)", got <= acked_events + maybe,
              f"+{got:,} counted, at most {acked_events + maybe:,}")

        prefix_of = lambda key: key.rsplit("-", 1)[0] + "-"  # noqa: E731
        pending_by_prefix = {}
        for key, (tpl, e) in ledger.items():
            if e[2] != "ack":
                pending_by_prefix.setdefault(prefix_of(key), []).append((int(key.rsplit("-", 1)[1]), tpl))
        n_pending = sum(len(v) for v in pending_by_prefix.values())
        deadline = time.time() + setting("RETRY_DEADLINE")
        replayed = attempts = 0
        left = []
        t0 = time.time()
        for pfx, items in pending_by_prefix.items():
            r, a, rest = asyncio.run(retry_all(addr, ingest_token, items, bodies, pfx, deadline))
            replayed, attempts = replayed + r, attempts + a
            left += rest
        rows.append(("retries (same Idempotency-Key)", f"{n_pending} requests, {attempts} attempts in "
                     f"{time.time() - t0:.1f} s, {replayed} answered as replays, {len(left)} never answered"))
        check("every request eventually answered 200", not left, f"{len(left)} still unanswered after {setting('RETRY_DEADLINE'):.0f} s")

        expected_events = len(ledger) * EVENTS_PER_BODY
        expected_amount = sum(templates[tpl]["amount"] for tpl, _ in ledger.values())
        fin = totals(addr, read_token)
        d_ev, d_sold, d_amt = fin["events"] - base["events"], fin["sold"] - base["sold"], fin["amount"] - base["amount"]
        rows.append(("store after retries", f"+{d_ev:,} events, +{d_sold:,} sales, +{d_amt} amount; requests sent "
                     f"{len(ledger)}: {expected_events:,} events, amount {expected_amount}"))
        check("totals: events count", d_ev == expected_events, f"+{d_ev:,} counted, {expected_events:,} sent")
        check("totals: sales count", d_sold == expected_events, f"+{d_sold:,} counted, {expected_events:,} sent")
        check("totals: exact sales sum", d_amt == expected_amount, f"+{d_amt} summed, {expected_amount} sent")
    finally:
        server.stop()

    # ---- summary
    w = max(len(r[0]) for r in rows)
    print(f"\nOverload test — tree {commit}, store {store.split('://')[0]}, factor {setting('OVERLOAD_FACTOR'):g}x, "
          f"{setting('LOAD_SECONDS'):.0f} s\n")
    for what, value in rows:
        print(f"  {what:<{w}}  {value}")
    print()
    cw = max(len(c[0]) for c in checks)
    for name, ok, detail, validity in checks:
        print(f"  {'PASS' if ok else ('INVALID' if validity else 'FAIL'):<7}  {name:<{cw}}  {detail}")
    failed = [c for c in checks if not c[1] and not c[3]]
    invalid = [c for c in checks if not c[1] and c[3]]
    real = [c for c in checks if not c[3]]
    verdict = "FAIL" if failed else ("INVALID" if invalid else "PASS")
    print(f"\n{verdict}: {len(real) - len(failed)} of {len(real)} checks passed"
          + (f"; the run is not valid: {'; '.join(c[0].removesuffix(' (run validity)') + ' failed' for c in invalid)}"
             if invalid else ""))
    with open(os.path.join(work, "summary.json"), "w") as f:
        json.dump({"rows": rows, "checks": checks}, f, indent=1, default=str)
    return 1 if failed else (2 if invalid else 0)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--role":
        run_role(sys.argv[2], sys.argv[3])
        sys.exit(0)
    if len(sys.argv) > 1:
        print(__doc__)
        for k, (d, m) in SETTINGS.items():
            print(f"  {k} (default {d!r}): {m}")
        sys.exit(0 if sys.argv[1] in ("-h", "--help") else 2)
    try:
        sys.exit(main())
    except (RuntimeError, subprocess.CalledProcessError) as e:
        log(f"could not run: {e}")
        sys.exit(2)
