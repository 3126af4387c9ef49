#!/usr/bin/env python3
"""Crash loops for Jetstream (Python 3.11 standard library only); run by crash-loop.sh.

  crashloop.py http  --bin B --store URL --cycles N [--workers 8] [--kill-after 0.3 1.5]
  crashloop.py kafka --bin B --tansu T --store URL --cycles N [--restart fresh|same|alternate]
                     [--events-per-cycle 20000] [--kill-after 0.3 1.5]

http:  `jetstream serve` on the store; WORKERS producers post 100-event batches, request n with
       `Idempotency-Key: req-<n>` and its own product id (so each request's contribution can be
       read back on its own); the server is SIGKILLed at a random moment, restarted on the same
       store, and then: every acknowledged request of the cycle is there exactly, every other one
       is all or nothing (and at most one per producer committed unanswered), the producer's
       retries of every request without a 200 (same key) are replays for exactly the committed
       ones, every request of the cycle is then there exactly once, and the store's totals equal
       exactly the sum over every request ever sent.
kafka: a tansu broker (memory engine), a 3-partition topic, `jetstream consume` (the consumer) and
       `jetstream serve --no-consume` (read cache off: the checker's view of the store). Each cycle
       produces EVENTS_PER_CYCLE known events with `jetstream send`, SIGKILLs the consumer at a
       random moment while it consumes them, restarts it (a fresh consumer group, or the same group
       once the dead member's 10 s session has expired), waits until it has caught up, and checks
       the totals equal exactly the events produced, and still do 1.5 s later.

One line per cycle on stdout; the last line says PASS or FAIL; exit 0 on success, 1 on a failed
check, 2 when the test could not run (a process would not start, a broker would not answer).
"""

import argparse
import http.client
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from decimal import Decimal

from listening import wait_listening

EVENTS_PER_REQUEST = 100
PRODUCT_BASE = 1_000_000
SESSION_TIMEOUT = 10  # the consumer's session.timeout.ms, in s (tansu keeps a dead member this long)


class Failed(Exception):
    """A check failed."""


class CannotRun(Exception):
    """The test could not run."""


def log(msg):
    print(f"[crash-loop {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def out(msg):
    print(msg, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(binary, *args):
    r = subprocess.run([binary, *args], capture_output=True, text=True, env={**os.environ, "JETSTREAM_LOG": "warn"})
    if r.returncode != 0:
        raise CannotRun(f"jetstream {' '.join(args[:2])} failed: {r.stderr.strip()}")
    return r.stdout.strip()


class Proc:
    """A jetstream process with its output in a log file."""

    def __init__(self, binary, args, log_path, wait_listen=False):
        self.log_path = log_path
        logf = open(log_path, "ab")
        env = {**os.environ, "JETSTREAM_LOG": os.environ.get("JETSTREAM_LOG", "info")}
        self.proc = subprocess.Popen([binary, *args], stdout=subprocess.PIPE if wait_listen else logf,
                                     stderr=logf, env=env)
        self.addr = None
        if wait_listen:
            self.addr = wait_listening(self.proc)
            if not self.addr:
                self.kill()
                raise CannotRun(f"jetstream {args[0]} did not start; see {log_path}")

    def kill(self):
        """SIGKILL: no shutdown code runs."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def request(addr, method, path, token, body=None, headers=None, timeout=10):
    host, port = addr.rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        h = {"Authorization": f"Bearer {token}", **(headers or {})}
        if body is not None:
            h["Content-Type"] = "application/json"
        c.request(method, path, body=body, headers=h)
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def get_json(addr, path, token):
    status, _, body = request(addr, "GET", path, token)
    if status != 200:
        raise Failed(f"GET {path}: HTTP {status} {body[:200]!r}")
    return json.loads(body, parse_float=Decimal)


def totals(addr, token):
    ev = get_json(addr, "/api/v1/metrics/events?window=7d", token)["result"]
    sa = get_json(addr, "/api/v1/metrics/sales_amount?window=7d", token)["result"]
    return {"events": int(ev["count"]), "sold": int(sa["count"]), "amount": Decimal(str(sa["sum"] or 0))}


def fmt_totals(t):
    return f"{t['events']} events, {t['sold']} sales, amount {t['amount']}"


# -------------------------------------------------------------------------------------------- HTTP


def http_request_body(n):
    """Request n: 100 sales of product PRODUCT_BASE+n with amounts that differ per request."""
    events, cents = [], 0
    for j in range(EVENTS_PER_REQUEST):
        c = (n * 7919 + j * 104_729) % 99_999 + 1
        cents += c
        events.append({"event_name": "productSold", "product_id": PRODUCT_BASE + n, "no_of_units": 1,
                       "amount": f"{c // 100}.{c % 100:02d}"})
    return json.dumps(events, separators=(",", ":")).encode(), Decimal(cents) / 100


def run_http(a):
    rng = random.Random(a.seed)
    work = a.work
    token = cli(a.bin, "token", "create", "--store", a.store, "--name", "crash-loop", "--scope", "read,ingest")
    server = Proc(a.bin, ["serve", "--store", a.store, "--listen", "127.0.0.1:0"], os.path.join(work, "serve.log"), True)
    sent = {}  # n -> amount of request n (every request ever sent, acknowledged by the end of its cycle)
    next_n = 0
    lock = threading.Lock()
    stats = {"acked": 0, "committed_unacked": 0, "replayed": 0, "min_acked": None, "max_acked": 0}
    t_all = time.time()
    try:
        for cycle in range(1, a.cycles + 1):
            t_cycle = time.time()
            addr = server.addr
            acked, unacked = set(), set()
            stop = threading.Event()

            def producer():
                nonlocal next_n
                while not stop.is_set():
                    with lock:
                        n = next_n
                        next_n += 1
                    body, amount = http_request_body(n)
                    with lock:
                        sent[n] = amount
                    try:
                        status, _, b = request(addr, "POST", "/api/v1/events", token, body,
                                               {"Idempotency-Key": f"req-{n}"})
                        ok = status == 200 and json.loads(b).get("accepted") == EVENTS_PER_REQUEST
                    except (OSError, http.client.HTTPException, ValueError):
                        ok, status = False, None
                    with lock:
                        (acked if ok else unacked).add(n)
                    if status is None:
                        return  # the server is gone

            threads = [threading.Thread(target=producer) for _ in range(a.workers)]
            for t in threads:
                t.start()
            time.sleep(rng.uniform(*a.kill_after))
            server.kill()
            stop.set()
            for t in threads:
                t.join()
            cycle_reqs = sorted(acked | unacked)
            if not cycle_reqs:
                raise CannotRun(f"cycle {cycle}: no request was sent before the kill")
            first = cycle_reqs[0]
            server = Proc(a.bin, ["serve", "--store", a.store, "--listen", "127.0.0.1:0"],
                          os.path.join(work, "serve.log"), True)
            addr = server.addr
            if len(acked) == 0:
                log(f"cycle {cycle}: the kill came before any acknowledgement")

            def sale(n):
                status, _, b = request(addr, "GET", f"/api/product/sale/{PRODUCT_BASE + n}", token)
                if status == 404:
                    return None
                if status != 200:
                    raise Failed(f"GET sale of request {n}: HTTP {status} {b[:200]!r}")
                s = json.loads(b, parse_float=Decimal)
                return int(s["count"]), Decimal(str(s["total"]))

            # After the restart: acknowledged = there exactly; the rest all or nothing.
            committed = []
            for n in cycle_reqs:
                got = sale(n)
                want = (EVENTS_PER_REQUEST, sent[n])
                if n in acked:
                    if got != want:
                        raise Failed(f"cycle {cycle}: acknowledged request req-{n} reads {got} after the restart, "
                                     f"{want} was sent (lost or partial)")
                elif got is not None:
                    if got != want:
                        raise Failed(f"cycle {cycle}: unacknowledged request req-{n} reads {got}: not all or nothing")
                    committed.append(n)
            if len(committed) > a.workers:
                raise Failed(f"cycle {cycle}: {len(committed)} unacknowledged requests committed, more than the "
                             f"{a.workers} in flight at the kill")
            # The producer retries every request without a 200, with its key, until answered.
            replayed = 0
            deadline = time.time() + 60
            for n in sorted(unacked):
                body, _ = http_request_body(n)
                while True:
                    try:
                        status, h, b = request(addr, "POST", "/api/v1/events", token, body,
                                               {"Idempotency-Key": f"req-{n}"})
                    except (OSError, http.client.HTTPException):
                        status, h, b = None, {}, b""
                    if status == 200:
                        if json.loads(b).get("accepted") != EVENTS_PER_REQUEST:
                            raise Failed(f"cycle {cycle}: retry of req-{n} answered {b[:200]!r}")
                        replayed += h.get("idempotent-replayed") == "true"
                        break
                    if time.time() > deadline:
                        raise Failed(f"cycle {cycle}: the retry of req-{n} was never answered 200 (last: {status} {b[:200]!r})")
                    time.sleep(0.2)
            if replayed != len(committed):
                raise Failed(f"cycle {cycle}: {replayed} retries were replays, but {len(committed)} unacknowledged "
                             f"requests had committed")
            for n in cycle_reqs:
                got = sale(n)
                if got != (EVENTS_PER_REQUEST, sent[n]):
                    raise Failed(f"cycle {cycle}: request req-{n} reads {got} after the retries, "
                                 f"{(EVENTS_PER_REQUEST, sent[n])} was sent")
            t = totals(addr, token)
            want = {"events": len(sent) * EVENTS_PER_REQUEST, "sold": len(sent) * EVENTS_PER_REQUEST,
                    "amount": sum(sent.values(), Decimal(0))}
            if t != want:
                raise Failed(f"cycle {cycle}: the store holds {fmt_totals(t)}; the requests sent hold {fmt_totals(want)}")
            stats["acked"] += len(acked)
            stats["committed_unacked"] += len(committed)
            stats["replayed"] += replayed
            stats["min_acked"] = len(acked) if stats["min_acked"] is None else min(stats["min_acked"], len(acked))
            stats["max_acked"] = max(stats["max_acked"], len(acked))
            out(f"cycle {cycle}/{a.cycles} ok: {len(cycle_reqs)} requests (req-{first}..req-{cycle_reqs[-1]}), "
                f"{len(acked)} acknowledged before the SIGKILL, {len(unacked)} not; {len(committed)} of those had "
                f"committed and were replayed; totals exact: {fmt_totals(t)} ({time.time() - t_cycle:.1f} s)")
    finally:
        server.kill()
    out(f"PASS http {a.store.split('://')[0]}: {a.cycles} SIGKILLs, {len(sent)} requests "
        f"({stats['acked']} acknowledged before a kill, {stats['min_acked']}..{stats['max_acked']} per cycle; "
        f"{stats['committed_unacked']} committed unanswered, all replayed), nothing lost, nothing counted twice "
        f"({time.time() - t_all:.0f} s)")


# ------------------------------------------------------------------------------------------- Kafka


def kafka_stream(cycle, n, rng):
    """n known events: ~80% sales with exact amounts, the rest events without a schema."""
    lines, sold, cents_total = [], 0, 0
    for k in range(n):
        if rng.random() < 0.8:
            c = rng.randint(1, 999_999)
            sold += 1
            cents_total += c
            lines.append(json.dumps({"event_name": "productSold", "product_id": rng.randint(1, 300),
                                     "no_of_units": rng.randint(1, 5), "amount": f"{c // 100}.{c % 100:02d}"}))
        else:
            lines.append(json.dumps({"event_name": "pageViewed", "page": f"/c{cycle}/{k}",
                                     "product_id": rng.randint(1, 300)}))
    return lines, {"events": n, "sold": sold, "amount": Decimal(cents_total) / 100}


def run_kafka(a):
    rng = random.Random(a.seed)
    work = a.work
    run = f"{int(time.time())}-{os.getpid()}"
    port = free_port()
    brokers = f"127.0.0.1:{port}"
    url = f"tcp://{brokers}"
    topic = f"crash-{run}"
    tansu_log = open(os.path.join(work, "tansu.log"), "ab")
    tansu = subprocess.Popen([a.tansu, "broker", "--listener-url", url, "--advertised-listener-url", url,
                              "--storage-engine", "memory://tansu/"], cwd=work, stdin=subprocess.DEVNULL,
                             stdout=tansu_log, stderr=tansu_log, env={**os.environ, "RUST_LOG": "warn"})
    procs = []
    consumer = None
    try:
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if tansu.poll() is not None or time.time() > deadline:
                    raise CannotRun(f"tansu did not listen on {brokers}; see {work}/tansu.log")
                time.sleep(0.1)
        r = subprocess.run([a.tansu, "topic", "create", topic, "--broker", url, "--partitions", "3"],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise CannotRun(f"tansu topic create failed: {r.stderr.strip()}")
        token = cli(a.bin, "token", "create", "--store", a.store, "--name", "crash-loop-read", "--scope", "read")
        nocache = os.path.join(work, "nocache.toml")
        with open(nocache, "w") as f:
            f.write('[api]\ncache_ttl = "0s"   # the checker reads the store itself, never a cached answer\n')
        api = Proc(a.bin, ["serve", "--no-consume", "--store", a.store, "--config", nocache, "--listen", "127.0.0.1:0"],
                   os.path.join(work, "api.log"), True)
        procs.append(api)
        group_n = 0

        def start_consumer(group):
            return Proc(a.bin, ["consume", "--store", a.store, "--kafka-brokers", brokers, "--kafka-topic", topic,
                                "--kafka-group", group], os.path.join(work, "consume.log"))

        group = f"crash-{run}-{group_n}"
        consumer = start_consumer(group)
        expected = {"events": 0, "sold": 0, "amount": Decimal(0)}
        mid = 0
        t_all = time.time()
        for cycle in range(1, a.cycles + 1):
            t_cycle = time.time()
            before = dict(expected)
            lines, add = kafka_stream(cycle, a.events_per_cycle, rng)
            expected = {k: expected[k] + add[k] for k in expected}
            send_log = os.path.join(work, f"send-{cycle}.log")
            with open(send_log, "wb") as f:
                send = subprocess.Popen([a.bin, "send", "--brokers", brokers, "--topic", topic], stdin=subprocess.PIPE,
                                        stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "JETSTREAM_LOG": "warn"})
            send_result = {}

            def produce():
                # Paced over PRODUCE_SECONDS, so that the consumer is mid-stream when it is killed.
                slices = 20
                per = -(-len(lines) // slices)
                t0 = time.time()
                try:
                    for s in range(slices):
                        chunk = lines[s * per:(s + 1) * per]
                        if chunk:
                            send.stdin.write(("\n".join(chunk) + "\n").encode())
                            send.stdin.flush()
                        time.sleep(max(0, t0 + (s + 1) * a.produce_seconds / slices - time.time()))
                    send.stdin.close()
                except OSError as e:
                    send_result["error"] = str(e)
                send_result["rc"] = send.wait()
                with open(send_log, errors="replace") as f:
                    send_result["out"] = f.read()

            producer = threading.Thread(target=produce)
            producer.start()
            # Kill the consumer at a random moment once it is consuming this cycle's events.
            deadline = time.time() + 60
            while True:
                t = totals(api.addr, token)
                if t["events"] > before["events"]:
                    break
                if consumer.proc.poll() is not None:
                    raise Failed(f"cycle {cycle}: the consumer exited (code {consumer.proc.returncode}); see {consumer.log_path}")
                if time.time() > deadline:
                    raise Failed(f"cycle {cycle}: the consumer consumed nothing of the cycle's events in 60 s "
                                 f"(store: {fmt_totals(t)}); see {consumer.log_path}")
                time.sleep(0.05)
            time.sleep(rng.uniform(*a.kill_after))
            consumer.kill()
            killed_at = time.time()
            at_kill = totals(api.addr, token)
            producer.join()
            if send_result.get("rc") != 0 or f"sent {len(lines)} events" not in send_result.get("out", ""):
                raise CannotRun(f"cycle {cycle}: jetstream send failed: {send_result}")
            if not (before["events"] <= at_kill["events"] <= expected["events"]):
                raise Failed(f"cycle {cycle}: after the kill the store holds {fmt_totals(at_kill)}; "
                             f"between {before['events']} and {expected['events']} events were possible")
            is_mid = before["events"] < at_kill["events"] < expected["events"]
            mid += is_mid
            same = a.restart == "same" or (a.restart == "alternate" and cycle % 2 == 0)
            if same:
                # tansu 0.6 gives a member joining while the dead one's session lasts nothing.
                time.sleep(max(0, killed_at + SESSION_TIMEOUT + 1 - time.time()))
            else:
                group_n += 1
                group = f"crash-{run}-{group_n}"
            t_restart = time.time()
            consumer = start_consumer(group)
            deadline = time.time() + 90
            while True:
                t = totals(api.addr, token)
                if t["events"] >= expected["events"]:
                    break
                if consumer.proc.poll() is not None:
                    raise Failed(f"cycle {cycle}: the restarted consumer exited; see {consumer.log_path}")
                if time.time() > deadline:
                    raise Failed(f"cycle {cycle}: the restarted consumer did not catch up in 90 s: store "
                                 f"{fmt_totals(t)}, produced {fmt_totals(expected)}; see {consumer.log_path}")
                time.sleep(0.1)
            caught_up = time.time() - t_restart
            if t != expected:
                raise Failed(f"cycle {cycle}: the store holds {fmt_totals(t)}; produced {fmt_totals(expected)}")
            time.sleep(1.5)  # a double count from a straggling batch would show now
            t = totals(api.addr, token)
            if t != expected:
                raise Failed(f"cycle {cycle}: 1.5 s after catching up the store holds {fmt_totals(t)}; "
                             f"produced {fmt_totals(expected)}")
            out(f"cycle {cycle}/{a.cycles} ok: SIGKILL with {at_kill['events'] - before['events']} of the cycle's "
                f"{add['events']} events committed{' (mid-stream)' if is_mid else ''}; restarted "
                f"{'in the same group after the session timeout' if same else 'in a fresh group'}, caught up in "
                f"{caught_up:.1f} s; totals exact: {fmt_totals(t)} ({time.time() - t_cycle:.1f} s)")
        out(f"PASS kafka {a.store.split('://')[0]}: {a.cycles} consumer SIGKILLs ({mid} mid-stream), "
            f"{expected['events']} events produced and counted exactly once ({time.time() - t_all:.0f} s)")
    finally:
        if consumer:
            consumer.kill()
        for p in procs:
            p.kill()
        tansu.kill()
        tansu.wait()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["http", "kafka"])
    p.add_argument("--bin", required=True)
    p.add_argument("--store", required=True)
    p.add_argument("--cycles", type=int, default=100)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--kill-after", type=float, nargs=2, default=[0.3, 1.5], metavar=("MIN", "MAX"))
    p.add_argument("--tansu")
    p.add_argument("--restart", choices=["fresh", "same", "alternate"], default="alternate")
    p.add_argument("--events-per-cycle", type=int, default=20_000)
    p.add_argument("--produce-seconds", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--work", default=None, help="directory for logs (default: a new temp dir)")
    a = p.parse_args()
    if a.seed is None:
        a.seed = random.randrange(1 << 30)
    a.work = a.work or tempfile.mkdtemp(prefix="jetstream-crash.")
    log(f"{a.mode} on {a.store.split('?')[0]}: {a.cycles} cycles, seed {a.seed}, logs in {a.work}")
    try:
        if a.mode == "http":
            run_http(a)
        else:
            if not a.tansu:
                raise CannotRun("--tansu is required for the kafka mode")
            run_kafka(a)
    except Failed as e:
        out(f"FAIL {a.mode} {a.store.split('://')[0]}: {e} (seed {a.seed}; logs in {a.work})")
        return 1
    except CannotRun as e:
        out(f"ERROR {a.mode} {a.store.split('://')[0]}: could not run: {e} (logs in {a.work})")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
