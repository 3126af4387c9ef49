#!/usr/bin/env python3
"""One line per soak minute from what bench/scale.sh's sampler kept beside the loader.

  soak_samples.py OUT            # OUT as given to scale.sh (holds scale.jsonl and soak-samples/)

Each minute: the loader's query p99 (hot, cold) and acked events/s, then from the server's
/metrics the writer's busy share (commit seconds per wall second), events per commit, store reads
and read-cache hits per second, the WAL's size, and each thread group's CPU share (from
/proc/PID/task/*/stat, summed by thread name; 100 % is one core). A figure that bends over the
soak shows here next to what the server was doing in the same minute.
"""

import json
import os
import re
import sys
from collections import defaultdict

CLK_TCK = 100  # getconf CLK_TCK


def metrics(path):
    out = {}
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("#") or not line.strip():
                    continue
                m = re.match(r"^(\S+?)(\{.*\})?\s+(\S+)$", line.strip())
                if m:
                    out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    except FileNotFoundError:
        pass
    return out


def get_p99(a, b):
    """The server's own p99 for the two seed endpoints over the minute: the first histogram bound
    at or above which 99 % of the minute's answers fell (the loader's p99 adds the client, the
    kernel and the wait for a core on a machine shared with the loader)."""
    routes = ("/api/product/sale/{id}", "/api/product/rating/{id}")
    per_le = defaultdict(float)
    for key, value in b.items():
        m = re.match(r'jetstream_http_request_duration_seconds_bucket\{method="GET",route="([^"]+)",le="([^"]+)"\}', key)
        if m and m.group(1) in routes:
            per_le[m.group(2)] += value - a.get(key, 0)
    total = per_le.get("+Inf", 0)
    if not total:
        return "?"
    for le in sorted((k for k in per_le if k != "+Inf"), key=float):
        if per_le[le] >= 0.99 * total:
            return f"{float(le) * 1000:g}"
    return "> 60000"


def threads(path):
    by_name = defaultdict(int)
    try:
        with open(path) as f:
            for line in f:
                parts = line.rsplit(None, 1)
                if len(parts) == 2 and parts[1].isdigit():
                    by_name[parts[0]] += int(parts[1])
    except FileNotFoundError:
        pass
    return by_name


def main():
    out = sys.argv[1]
    samples = os.path.join(out, "soak-samples")
    minutes = {}
    with open(os.path.join(out, "scale.jsonl")) as f:
        for line in f:
            v = json.loads(line)
            if v.get("kind") == "minute":
                minutes[v["minute"]] = v
    n = max(minutes) if minutes else 0
    print(
        "min  acked/s  q p99 hot/cold ms  server GET p99 ≤ ms  writer busy  ev/commit  reads/s  cache hits/s  WAL MB  CPU % by thread"
    )
    for m in range(1, n + 1):
        a, b = metrics(f"{samples}/metrics-{m - 1}.txt"), metrics(f"{samples}/metrics-{m}.txt")
        ta, tb = threads(f"{samples}/threads-{m - 1}.txt"), threads(f"{samples}/threads-{m}.txt")
        secs = b.get("jetstream_uptime_seconds", 0) - a.get("jetstream_uptime_seconds", 0)
        if secs <= 0:
            continue

        def d(key):
            return b.get(key, 0) - a.get(key, 0)

        busy = d("jetstream_commit_duration_seconds_sum") / secs
        commits = d("jetstream_commit_duration_seconds_count")
        per_commit = d("jetstream_commit_events_sum") / commits if commits else 0
        reads = (d('jetstream_store_reads_total{path="request"}')) / secs
        hits = d("jetstream_read_cache_hits_total") / secs
        cpu = {k: max(0, tb.get(k, 0) - ta.get(k, 0)) / CLK_TCK / secs * 100 for k in set(ta) | set(tb)}
        shown = " ".join(f"{k} {cpu[k]:.0f}" for k in sorted(cpu, key=lambda k: -cpu[k]) if cpu[k] >= 1)
        server_p99 = get_p99(a, b)
        v = minutes.get(m, {})
        hot, cold = v.get("query_hot", {}), v.get("query_cold", {})
        print(
            f"{m:>3}  {v.get('acked_events_per_s', 0):>7}  {hot.get('p99_ms', '?'):>6} / {cold.get('p99_ms', '?'):<6}  {server_p99:>18}"
            f"  {busy * 100:>9.0f} %  {per_commit:>9.0f}  {reads:>7.0f}  {hits:>12.0f}"
            f"  {b.get('jetstream_store_wal_bytes', 0) / 1e6:>6.0f}  {shown}"
        )


if __name__ == "__main__":
    main()
