#!/usr/bin/env python3
"""Helpers of bench/disk.sh (Python standard library only).

  disk.py gen N PRODUCTS --out FILE [--seed S] [--skew S] [--now-ms MS]
        the reference event stream, built in: the same algorithm and random draws as the shared
        reference generator (gen_events.py), so for the same arguments the output is byte-identical
        (disk.sh uses this one only when that generator is not found)
  disk.py index FILE --lines L --out IDX [--ids-out IDS]
        byte ranges of FILE's L-line bodies, the most frequent product in the first body (the
        hottest product, for the query check) and the ids of the products that occur
  disk.py load --addr A --token T --file FILE --index IDX --pid PID --db DB --out DIR ...
        posts the bodies with P producers (one keep-alive connection each) while sampling the
        server every --interval s (RSS, store files, acknowledged events, CPU); keeps sampling
        --after s once the load stops; writes DIR/samples.csv and DIR/load.json
"""

import argparse
import bisect
import collections
import http.client
import itertools
import json
import os
import random
import re
import sys
import threading
import time

SPAN_MS = 2 * 3600 * 1000
JITTER_MS = 5000


# ----------------------------------------------------------------------------------------- gen
def cmd_gen(a):
    """The reference stream. Every draw is made in the reference generator's order with the same
    calls, so the output matches it byte for byte; only the string building is hoisted out of the
    loop (per-product prefixes), which makes this ~2x faster."""
    if a.n < 0 or a.products < 1:
        raise SystemExit("gen: N >= 0 and PRODUCTS >= 1 required")
    now_ms = a.now_ms if a.now_ms is not None else int(time.time() * 1000)
    start_ms = now_ms - SPAN_MS
    rng = random.Random(a.seed)
    ids = list(range(1, a.products + 1))
    rng.shuffle(ids)  # rank -> product id
    price = [0] * (a.products + 1)
    for pid in range(1, a.products + 1):
        price[pid] = rng.randint(100, 50000)
    cats = "ABCDEF"
    cum = list(itertools.accumulate(1.0 / (k ** a.skew) for k in range(1, a.products + 1)))
    total = cum[-1]
    sold = [None] + [
        '{"event_name":"productSold","name_of_product":"product %d","product_id":%d,"no_of_units":' % (p, p)
        for p in range(1, a.products + 1)
    ]
    rated = [None] + [
        '{"event":"productRated","name_of_product":"product %d","product_id":%d,"rating":' % (p, p)
        for p in range(1, a.products + 1)
    ]
    rated_tail = [None] + [',"category":"%s","timestamp":' % cats[p % 6] for p in range(1, a.products + 1)]

    out = open(a.out, "w", buffering=1 << 22) if a.out != "-" else sys.stdout
    rnd, randint, bis = rng.random, rng.randint, bisect.bisect_left
    n = a.n
    step = SPAN_MS / n if n else 0
    buf = []
    app = buf.append
    t0 = time.monotonic()
    for i in range(n):
        pid = ids[bis(cum, rnd() * total)]
        ts = int(start_ms + i * step) + randint(-JITTER_MS, JITTER_MS)
        if ts < start_ms:
            ts = start_ms
        elif ts > now_ms:
            ts = now_ms
        if rnd() < 0.7:
            units = randint(1, 20)
            cents = units * price[pid]
            app('%s%d,"amount":"%d.%02d","timestamp":%d}\n' % (sold[pid], units, cents // 100, cents % 100, ts))
        else:
            app("%s%d%s%d}\n" % (rated[pid], randint(1, 5), rated_tail[pid], ts))
        if len(buf) >= 10000:
            out.write("".join(buf))
            buf.clear()
            if a.progress and (i + 1) % 1_000_000 == 0:
                el = time.monotonic() - t0
                print(f"gen: {i + 1:,} of {n:,} events, {el:.0f} s", file=sys.stderr, flush=True)
    out.write("".join(buf))
    if out is not sys.stdout:
        out.close()


# --------------------------------------------------------------------------------------- index
def cmd_index(a):
    """[offset, length, lines] of every body of `--lines` lines; the hottest product is the most
    frequent product_id of the first body (with a Zipf skew it stands far above the next one)."""
    bodies = []
    off = 0
    seen = set()
    find = re.compile(rb'"product_id":(\d+)').findall
    with open(a.file, "rb", buffering=1 << 22) as f:
        while True:
            lines = list(itertools.islice(f, a.lines))
            if not lines:
                break
            size = sum(map(len, lines))
            ids = find(b"".join(lines))
            if not bodies:
                hot = collections.Counter(ids).most_common(2)
            seen.update(ids)
            bodies.append([off, size, len(lines)])
            off += size
    events = sum(b[2] for b in bodies)
    if a.ids_out:
        # the products that have events: the query check draws its random ids from these (a
        # product never seen is a 404, and the Zipf tail leaves some of the catalogue unseen)
        tmp = a.ids_out + ".tmp"
        with open(tmp, "w") as f:
            f.write("".join(f"{i}\n" for i in sorted(int(x) for x in seen)))
        os.replace(tmp, a.ids_out)
    meta = {"bodies": bodies, "events": events, "bytes": off, "products_seen": len(seen),
            "hottest_product": int(hot[0][0]) if bodies else None,
            "hottest_share_first_body": round(hot[0][1] / bodies[0][2], 4) if bodies else None,
            "second_share_first_body": round(hot[1][1] / bodies[0][2], 4) if bodies and len(hot) > 1 else None}
    tmp = a.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(meta, f)
    os.replace(tmp, a.out)
    print(json.dumps({k: v for k, v in meta.items() if k != "bodies"} | {"body_count": len(bodies)}))


# ---------------------------------------------------------------------------------------- load
MEM_FIELDS = ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem")


def proc_mem_kb(pid):
    """VmRSS, VmHWM and RSS's split (RssAnon: heap and other private memory; RssFile: mapped
    files; RssShmem: shared memory, e.g. SQLite's -shm when mapped) in KiB; {} once it is gone."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k = line.split(":", 1)[0]
                if k in MEM_FIELDS:
                    out[k] = int(line.split()[1])
    except OSError:
        pass
    return out


CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid):
    """User + system CPU seconds of a process (all its threads)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


def size(path):
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def mb(b):
    return b / 1e6


class Load:
    def __init__(self, a, bodies):
        self.a = a
        self.bodies = bodies
        self.lock = threading.Lock()
        self.next = 0
        self.acked = 0
        self.rejected = 0
        self.posted_events = 0
        self.errors = []
        self.latencies = []
        self.stop = False
        self.running = 0
        self.done = threading.Event()
        self.last_answer = None

    def producer(self, fd):
        host, port = self.a.addr.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=self.a.timeout)
        headers = {"Authorization": f"Bearer {self.a.token}", "Content-Type": "application/x-ndjson"}
        while not self.stop:
            with self.lock:
                i = self.next
                if i >= len(self.bodies):
                    break
                self.next += 1
            off, length, lines = self.bodies[i]
            body = os.pread(fd, length, off)
            t = time.perf_counter()
            try:
                conn.request("POST", "/api/v1/events", body=body, headers=headers)
                r = conn.getresponse()
                data = r.read()
            except (OSError, http.client.HTTPException) as e:
                with self.lock:
                    self.errors.append(f"body {i}: {type(e).__name__}: {e}")
                conn.close()
                conn = http.client.HTTPConnection(host, int(port), timeout=self.a.timeout)
                continue
            dt = time.perf_counter() - t
            now = time.monotonic()
            try:
                ans = json.loads(data) if r.status == 200 else None
            except ValueError:
                ans = None
            with self.lock:
                self.last_answer = now
                self.latencies.append(dt)
                self.posted_events += lines
                if ans is None or "accepted" not in ans:
                    self.errors.append(f"body {i}: HTTP {r.status} {data[:300]!r}")
                else:
                    self.acked += ans["accepted"]
                    self.rejected += ans.get("rejected", 0)
                    if ans["accepted"] + ans.get("rejected", 0) != lines:
                        self.errors.append(f"body {i}: {lines} lines, answer {data[:300]!r}")
        conn.close()
        with self.lock:
            self.running -= 1
            if self.running == 0:
                self.done.set()


def cmd_load(a):
    with open(a.index) as f:
        idx = json.load(f)
    bodies = idx["bodies"]
    if a.limit_bodies:
        bodies = bodies[: a.limit_bodies]
    os.makedirs(a.out, exist_ok=True)
    load = Load(a, bodies)
    fd = os.open(a.file, os.O_RDONLY)
    db, wal, shm = a.db, a.db + "-wal", a.db + "-shm"

    csv = open(os.path.join(a.out, "samples.csv"), "w", buffering=1)
    csv.write("t_s,phase,acked_events,rss_kb,db_bytes,wal_bytes,shm_bytes,server_cpu_s,client_cpu_s,"
              "rss_anon_kb,rss_file_kb,rss_shmem_kb\n")
    samples = []
    hdr = f"{'t s':>6} {'phase':>5} {'acked':>11} {'ev/s':>9} {'RSS MB':>8} {'db MB':>8} {'WAL MB':>9} {'shm MB':>7} {'srv CPU':>7} {'cli CPU':>7}"
    print(hdr, flush=True)
    last_print = {"t": -1e9, "acked": 0, "srv": proc_cpu_s(a.pid) or 0.0, "cli": 0.0}
    cpu0 = os.times()

    def client_cpu():
        t = os.times()
        return (t.user - cpu0.user) + (t.system - cpu0.system)

    t0 = time.monotonic()
    srv_cpu0 = proc_cpu_s(a.pid) or 0.0

    def sample(phase, force_print=False):
        t = time.monotonic() - t0
        mem = proc_mem_kb(a.pid)
        rss = mem.get("VmRSS")
        srv = proc_cpu_s(a.pid)
        s = {"t": t, "phase": phase, "acked": load.acked, "rss_kb": rss, "db": size(db), "wal": size(wal),
             "shm": size(shm), "srv_cpu": None if srv is None else srv - srv_cpu0, "cli_cpu": client_cpu(),
             "anon": mem.get("RssAnon"), "file": mem.get("RssFile"), "shmem": mem.get("RssShmem")}
        samples.append(s)
        opt = lambda v: "" if v is None else v  # noqa: E731
        csv.write(f"{t:.2f},{phase},{s['acked']},{opt(rss)},{s['db']},{s['wal']},{s['shm']},"
                  f"{'' if s['srv_cpu'] is None else round(s['srv_cpu'], 2)},{s['cli_cpu']:.2f},"
                  f"{opt(s['anon'])},{opt(s['file'])},{opt(s['shmem'])}\n")
        if force_print or t - last_print["t"] >= a.print_every - 1e-6:
            dt = t - last_print["t"] if last_print["t"] > -1e9 else t
            dt = dt if dt > 0 else 1e-9
            eps = (s["acked"] - last_print["acked"]) / dt
            first = last_print["t"] == -1e9
            srv_pct = "" if srv is None or first else f"{100 * (srv - last_print['srv']) / dt:.0f}%"
            cli_pct = "" if first else f"{100 * (s['cli_cpu'] - last_print['cli']) / dt:.0f}%"
            rss_s = "gone" if rss is None else f"{rss / 1024:.0f}"
            print(f"{t:6.1f} {phase:>5} {s['acked']:>11,} {eps:>9,.0f} {rss_s:>8} {mb(s['db']):>8.1f} "
                  f"{mb(s['wal']):>9.1f} {mb(s['shm']):>7.1f} {srv_pct:>7} {cli_pct:>7}", flush=True)
            last_print.update(t=t, acked=s["acked"], srv=srv if srv is not None else last_print["srv"],
                              cli=s["cli_cpu"])
        return s

    threads = [threading.Thread(target=load.producer, args=(fd,), daemon=True) for _ in range(a.producers)]
    sample("load", force_print=True)
    load.running = len(threads)
    load_t0 = time.monotonic()
    for t in threads:
        t.start()
    nxt = load_t0
    while True:
        nxt += a.interval
        if load.done.wait(max(0.0, nxt - time.monotonic())):
            break
        sample("load")
        if load.errors and not a.keep_going:
            load.stop = True
    for t in threads:
        t.join()
    # the load phase: from the first send to the last answer
    load_s = (load.last_answer or time.monotonic()) - load_t0
    load_end_t = time.monotonic() - t0
    end_sample = sample("load", force_print=True)
    cli_cpu_load = client_cpu()
    nxt = time.monotonic()
    after_end = nxt + a.after
    final = end_sample
    while nxt + a.interval <= after_end + 1e-6:
        nxt += a.interval
        time.sleep(max(0.0, nxt - time.monotonic()))
        final = sample("after", force_print=nxt + a.interval > after_end + 1e-6)
    csv.close()
    os.close(fd)
    hwm = proc_mem_kb(a.pid).get("VmHWM")

    # Did the store settle? Over the last 5 s of the after-period (or all of it, if shorter):
    # WAL and database growth and the server's CPU. Still busy means the final figures are not
    # final yet (on the old build a merge backlog ran on for a minute after a 3M load).
    win = min(5.0, a.after)
    tail = [x for x in samples if x["t"] >= final["t"] - win - 1e-6] if a.after > 0 else [final]
    first = tail[0]
    span = final["t"] - first["t"]
    tail_cpu = (final["srv_cpu"] - first["srv_cpu"]) if None not in (final["srv_cpu"], first["srv_cpu"]) else None
    settle = {
        "settle_window_s": round(span, 2),
        "settle_wal_growth": final["wal"] - first["wal"],
        "settle_db_growth": final["db"] - first["db"],
        "settle_server_cpu_pct": round(100 * tail_cpu / span, 1) if tail_cpu is not None and span > 0 else None,
    }
    settle["settled"] = bool(span > 0 and settle["settle_wal_growth"] == 0 and settle["settle_db_growth"] == 0
                             and (settle["settle_server_cpu_pct"] or 0) < 5)

    lat = sorted(load.latencies)

    def pct(p):
        return round(lat[min(len(lat) - 1, int(p / 100 * len(lat)))] * 1000, 1) if lat else None

    load_samples = [s for s in samples if s["phase"] == "load"]
    rss_vals = [s["rss_kb"] for s in samples if s["rss_kb"] is not None]
    srv_cpu_load = (end_sample["srv_cpu"] or 0.0)
    out = {
        "bodies": len(bodies),
        "producers": a.producers,
        "stream_events": sum(b[2] for b in bodies),
        "posted_events": load.posted_events,
        "acked_events": load.acked,
        "rejected_events": load.rejected,
        "errors": load.errors[:10],
        "error_count": len(load.errors),
        "load_s": round(load_s, 3),
        "events_per_s": round(load.acked / load_s, 1) if load_s else None,
        "post_p50_ms": pct(50),
        "post_p99_ms": pct(99),
        "post_max_ms": round(lat[-1] * 1000, 1) if lat else None,
        "rss_peak_kb": max(rss_vals) if rss_vals else None,
        "rss_hwm_kb": hwm,  # the kernel's own peak (catches a peak between two samples)
        "rss_end_of_load_kb": end_sample["rss_kb"],
        "rss_final_kb": final["rss_kb"],
        "rss_final_anon_kb": final["anon"],
        "rss_final_file_kb": final["file"],
        "rss_final_shmem_kb": final["shmem"],
        "rss_anon_peak_kb": max((s["anon"] for s in samples if s["anon"] is not None), default=None),
        "wal_peak": max(s["wal"] for s in samples),
        "wal_end_of_load": end_sample["wal"],
        "wal_final": final["wal"],
        "db_peak": max(s["db"] for s in samples),
        "db_final": final["db"],
        "shm_final": final["shm"],
        "disk_peak": max(s["db"] + s["wal"] + s["shm"] for s in samples),
        "disk_final": final["db"] + final["wal"] + final["shm"],
        "after_s": a.after,
        "load_end_t_s": round(load_end_t, 2),
        "server_cpu_load_s": round(srv_cpu_load, 1),
        "server_cpu_total_s": None if final["srv_cpu"] is None else round(final["srv_cpu"], 1),
        "client_cpu_load_s": round(cli_cpu_load, 1),
        **settle,
        "samples": len(samples),
        "load_samples": len(load_samples),
    }
    with open(os.path.join(a.out, "load.json"), "w") as f:
        json.dump(out, f, indent=1)
    return 0 if not load.errors else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gen")
    g.add_argument("n", type=int)
    g.add_argument("products", type=int)
    g.add_argument("--out", default="-")
    g.add_argument("--seed", type=int, default=20240601)
    g.add_argument("--skew", type=float, default=1.0)
    g.add_argument("--now-ms", type=int, default=None)
    g.add_argument("--progress", action="store_true", help="a line on stderr every million events")
    i = sub.add_parser("index")
    i.add_argument("file")
    i.add_argument("--lines", type=int, required=True)
    i.add_argument("--out", required=True)
    i.add_argument("--ids-out", help="write the product ids that occur, one a line")
    lo = sub.add_parser("load")
    lo.add_argument("--addr", required=True)
    lo.add_argument("--token", required=True)
    lo.add_argument("--file", required=True)
    lo.add_argument("--index", required=True)
    lo.add_argument("--pid", type=int, required=True, help="the server's pid (RSS, CPU)")
    lo.add_argument("--db", required=True, help="the SQLite database file (its -wal and -shm beside it)")
    lo.add_argument("--out", required=True, help="directory for samples.csv and load.json")
    lo.add_argument("--producers", type=int, default=4)
    lo.add_argument("--interval", type=float, default=0.5)
    lo.add_argument("--print-every", type=float, default=5.0)
    lo.add_argument("--after", type=float, default=15.0)
    lo.add_argument("--timeout", type=float, default=600.0)
    lo.add_argument("--limit-bodies", type=int, default=0)
    lo.add_argument("--keep-going", action="store_true", help="do not stop posting after a failed body")
    a = ap.parse_args()
    return {"gen": cmd_gen, "index": cmd_index, "load": cmd_load}[a.cmd](a) or 0


if __name__ == "__main__":
    sys.exit(main())
