#!/usr/bin/env python3
"""Event bodies and HTTP loaders for the Jetstream benchmark (Python standard library only).

  loader.py gen     --dir D [--bodies N]     write N different 1,000-event bodies for wrk (ingest.lua)
  loader.py preload --addr A --token T --events N [--spread S]
                                             post N events timed over the last S seconds, as fast as
                                             the server takes them (distinct bodies, one per request)
  loader.py paced   --addr A --token T --rate R --duration S
                                             post R events/s for S seconds on a fixed schedule
                                             (open loop: a late request does not delay the schedule)
  loader.py totals  --addr A --token T       all-time totals from the API (what the store holds)
  loader.py fresh   --addr A --token T --read-addr B --read-token T2 [--markers N] [--every MS]
                                             freshness across a fleet: post one marker sale to A,
                                             and from its acknowledgement poll B's seed endpoint
                                             every 2 ms until B counts it (p50/p99/max of the lags)

Every body has the same composition (700 productSold + 300 productRated, the same multiset of
amounts, shuffled over ~1,000 products), so "acknowledged bodies x per-body totals" is exactly what
the store must hold afterwards: `totals` is compared with it. Results are one JSON line on stdout.
"""

import argparse
import http.client
import json
import random
import sys
import threading
import time
from decimal import Decimal

CATEGORIES = "ABCDEFGHIJKLMNOPQRST"
RATINGS = ("1", "2", "3", "4", "5", "3.5", "4.5")
EVENTS_PER_BODY = 1000
SOLD_PER_BODY = 700
RATED_PER_BODY = EVENTS_PER_BODY - SOLD_PER_BODY


def sale_amounts():
    """The (units, amount in cents) of every productSold in a body: the same multiset each time."""
    rng = random.Random(42)
    out = []
    for _ in range(SOLD_PER_BODY):
        units = rng.randint(1, 5)
        out.append((units, units * rng.randint(99, 49_999)))
    return out


AMOUNTS = sale_amounts()
BODY_CENTS = sum(c for _, c in AMOUNTS)
BODY_RATING_SUM = None  # ratings vary per body; only counts are checked for them


def body_meta():
    return {"events": EVENTS_PER_BODY, "sold": SOLD_PER_BODY, "rated": RATED_PER_BODY, "cents": BODY_CENTS}


def make_body(rng, products, ts_range=None):
    """One JSON array of 1,000 events; `ts_range` = (from_ms, to_ms) adds a `timestamp`."""
    kinds = [True] * SOLD_PER_BODY + [False] * RATED_PER_BODY
    rng.shuffle(kinds)
    amounts = AMOUNTS[:]
    rng.shuffle(amounts)
    parts = []
    for i, sold in enumerate(kinds):
        pid = rng.randint(1, products)
        cat = CATEGORIES[pid % len(CATEGORIES)]
        ts = f',"timestamp":{rng.randint(*ts_range)}' if ts_range else ""
        if sold:
            units, cents = amounts.pop()
            amount = f"{cents // 100}.{cents % 100:02d}"
            # Half as a JSON string, half as a JSON number: both are accepted and summed exactly.
            amount = f'"{amount}"' if i % 2 else amount
            parts.append(
                f'{{"event_name":"productSold","name_of_product":"product {pid}","product_id":{pid},'
                f'"no_of_units":{units},"amount":{amount},"category":"{cat}"{ts}}}'
            )
        else:
            parts.append(
                f'{{"event":"productRated","name_of_product":"product {pid}","product_id":{pid},'
                f'"rating":{rng.choice(RATINGS)},"category":"{cat}"{ts}}}'
            )
    return ("[" + ",".join(parts) + "]").encode()


def connect(addr):
    host, port = addr.rsplit(":", 1)
    return http.client.HTTPConnection(host, int(port), timeout=60)


def api_get(addr, token, path):
    c = connect(addr)
    c.request("GET", path, headers={"Authorization": f"Bearer {token}"})
    r = c.getresponse()
    data = r.read()
    c.close()
    if r.status != 200:
        raise SystemExit(f"GET {path}: {r.status} {data[:200]!r}")
    return json.loads(data)


def percentile(sorted_values, p):
    if not sorted_values:
        return None
    i = min(len(sorted_values) - 1, max(0, round(p / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[i]


class Poster:
    """Worker threads, each on its own keep-alive connection, posting bodies from `next_job`."""

    def __init__(self, addr, token, conns):
        self.addr, self.token, self.conns = addr, token, conns
        self.lock = threading.Lock()
        self.acked = 0
        self.bad = []
        self.latencies = []
        self.max_lag = 0.0

    def post(self, conn, body):
        t = time.perf_counter()
        conn.request(
            "POST",
            "/api/v1/events",
            body=body,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        r = conn.getresponse()
        data = r.read()
        dt = time.perf_counter() - t
        ok = r.status == 200 and json.loads(data).get("accepted") == EVENTS_PER_BODY
        with self.lock:
            self.latencies.append(dt)
            if ok:
                self.acked += 1
            elif len(self.bad) < 5:
                self.bad.append(f"{r.status} {data[:200]!r}")
            else:
                self.bad.append("…")

    def run(self, next_job):
        def worker():
            conn = connect(self.addr)
            while True:
                job = next_job()
                if job is None:
                    break
                try:
                    self.post(conn, job)
                except (OSError, http.client.HTTPException) as e:
                    with self.lock:
                        self.bad.append(f"{type(e).__name__}: {e}")
                    conn.close()
                    conn = connect(self.addr)
            conn.close()

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(self.conns)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return time.perf_counter() - t0

    def result(self, elapsed, **extra):
        lat = sorted(self.latencies)
        meta = body_meta()
        out = {
            "acked_requests": self.acked,
            "acked_events": self.acked * meta["events"],
            "acked_sold": self.acked * meta["sold"],
            "acked_rated": self.acked * meta["rated"],
            "acked_amount": str(Decimal(self.acked * meta["cents"]) / 100),
            "failed_requests": len([b for b in self.bad if b != "…"]),
            "failures": self.bad[:5],
            "elapsed_s": round(elapsed, 3),
            "events_per_s": round(self.acked * meta["events"] / elapsed, 1) if elapsed else 0,
            "post_p50_ms": round(percentile(lat, 50) * 1000, 2) if lat else None,
            "post_p99_ms": round(percentile(lat, 99) * 1000, 2) if lat else None,
        }
        out.update(extra)
        return out


def cmd_gen(a):
    import os

    os.makedirs(a.dir, exist_ok=True)
    rng = random.Random(a.seed)
    for i in range(a.bodies):
        with open(f"{a.dir}/body_{i:03d}.json", "wb") as f:
            f.write(make_body(rng, a.products))
    with open(f"{a.dir}/count", "w") as f:
        f.write(f"{a.bodies}\n")
    print(json.dumps({"bodies": a.bodies, "dir": a.dir, **body_meta()}))


def cmd_preload(a):
    requests = -(-a.events // EVENTS_PER_BODY)
    now_ms = int(time.time() * 1000)
    ts_range = (now_ms - a.spread * 1000, now_ms - 2000)
    lock = threading.Lock()
    state = {"n": 0}

    def next_job():
        with lock:
            if state["n"] >= requests:
                return None
            state["n"] += 1
            seed = a.seed + state["n"]
        return make_body(random.Random(seed), a.products, ts_range)

    p = Poster(a.addr, a.token, a.conns)
    elapsed = p.run(next_job)
    print(json.dumps(p.result(elapsed, spread_s=a.spread)))


def cmd_paced(a):
    rng = random.Random(a.seed)
    bodies = [make_body(rng, a.products) for _ in range(a.bodies)]
    per_s = a.rate / EVENTS_PER_BODY
    total = int(per_s * a.duration)
    lock = threading.Lock()
    state = {"n": 0}
    p = Poster(a.addr, a.token, a.conns)
    t0 = time.perf_counter() + 0.05

    deadline = t0 + a.duration

    def next_job():
        # Requests the server could not take in time are dropped, not sent late: the run lasts
        # `duration` (plus the last answers), and `events_per_s` says what was really achieved.
        with lock:
            n = state["n"]
            if n >= total or time.perf_counter() >= deadline:
                return None
            state["n"] += 1
        due = t0 + n / per_s
        lag = time.perf_counter() - due
        if lag < 0:
            time.sleep(-lag)
        else:
            with lock:
                p.max_lag = max(p.max_lag, lag)
        return bodies[n % len(bodies)]

    p.run(next_job)
    elapsed = max(a.duration, time.perf_counter() - t0)
    print(json.dumps(p.result(elapsed, target_events_per_s=a.rate, max_lag_ms=round(p.max_lag * 1000, 1))))


def cmd_totals(a):
    q = "/api/v1/metrics/{}?from=0{}"
    events = api_get(a.addr, a.token, q.format("events", ""))["result"]["count"]
    sold = api_get(a.addr, a.token, q.format("events", "&dim=event_name&value=productSold"))["result"]["count"]
    rated = api_get(a.addr, a.token, q.format("events", "&dim=event_name&value=productRated"))["result"]["count"]
    amount = api_get(a.addr, a.token, q.format("sales_amount", ""))["result"]["sum"]
    print(json.dumps({"events": events, "sold": sold, "rated": rated, "amount": str(Decimal(str(amount)))}))


def cmd_fresh(a):
    # The marker product has no other events: its count on B must reach exactly the markers acked.
    path = f"/api/product/sale/{a.product}"
    post = connect(a.addr)
    read = connect(a.read_addr)
    body = json.dumps({"event_name": "productSold", "product_id": a.product, "no_of_units": 1, "amount": "1"})

    def count_on_b():
        read.request("GET", path, headers={"Authorization": f"Bearer {a.read_token}"})
        r = read.getresponse()
        data = r.read()
        if r.status == 404:
            return 0
        if r.status != 200:
            raise SystemExit(f"GET {path} on B: {r.status} {data[:200]!r}")
        return json.loads(data)["count"]

    lags = []
    start = count_on_b()
    for i in range(1, a.markers + 1):
        t_next = time.perf_counter() + a.every / 1000
        post.request("POST", "/api/v1/events", body=body,
                     headers={"Authorization": f"Bearer {a.token}", "Content-Type": "application/json"})
        r = post.getresponse()
        data = r.read()
        if r.status != 200:
            raise SystemExit(f"POST marker on A: {r.status} {data[:200]!r}")
        acked = time.perf_counter()
        while count_on_b() < start + i:
            if time.perf_counter() - acked > 10:
                raise SystemExit(f"marker {i} not visible on B after 10 s")
            time.sleep(0.002)
        lags.append((time.perf_counter() - acked) * 1000)
        time.sleep(max(0.0, t_next - time.perf_counter()))
    s = sorted(lags)
    print(json.dumps({
        "markers": len(s),
        "p50_ms": round(percentile(s, 50), 1),
        "p99_ms": round(percentile(s, 99), 1),
        "max_ms": round(s[-1], 1),
        "over_250_ms": sum(1 for x in s if x > 250),
    }))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gen")
    g.add_argument("--dir", required=True)
    g.add_argument("--bodies", type=int, default=32)
    for s in [g] + [sub.add_parser(n) for n in ("preload", "paced", "totals")]:
        s.add_argument("--products", type=int, default=1000)
        s.add_argument("--seed", type=int, default=1)
        if s is not g:
            s.add_argument("--addr", required=True, help="HOST:PORT")
            s.add_argument("--token", required=True)
            s.add_argument("--conns", type=int, default=8)
        if s.prog.endswith("preload"):
            s.add_argument("--events", type=int, required=True)
            s.add_argument("--spread", type=int, default=3580, help="seconds back from now")
        if s.prog.endswith("paced"):
            s.add_argument("--rate", type=float, required=True, help="events per second")
            s.add_argument("--duration", type=float, required=True, help="seconds")
            s.add_argument("--bodies", type=int, default=16)
    f = sub.add_parser("fresh")
    f.add_argument("--addr", required=True, help="HOST:PORT of the instance the markers are posted to")
    f.add_argument("--token", required=True, help="an ingest token")
    f.add_argument("--read-addr", required=True, help="HOST:PORT of the instance polled")
    f.add_argument("--read-token", required=True)
    f.add_argument("--markers", type=int, default=200)
    f.add_argument("--every", type=float, default=50, help="ms between markers")
    f.add_argument("--product", type=int, default=9_000_000)
    a = ap.parse_args()
    {"gen": cmd_gen, "preload": cmd_preload, "paced": cmd_paced, "totals": cmd_totals, "fresh": cmd_fresh}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
