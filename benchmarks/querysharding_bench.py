"""Query-sharding benchmark: heavy aggregations over many series, sharded by the query-frontend
(-query-frontend.parallelize-shardable-queries) against the same queries unsharded, on one
`python -m urdar` over HTTP.

Data (fixed seed): `--series` counters `bench_requests_total{job, instance}` (50 jobs) scraped
every 15 s for `--hours`, pushed in time order. The per-tenant shard count comes from a
runtime-config file (`query_sharding_total_shards`) that the benchmark rewrites between runs
(reload period 1 s; the frontend's attempt counter proves each switch). Results cache off;
default 24h splitting (one part). Each query runs `--reps` times per setting; the answers are
compared (sums at a relative 1e-9: sharding adds partial sums in another order). Prints
`<name>: unsharded N ms, <k> shards M ms, ratio R` per query and shard count.

    python benchmarks/querysharding_bench.py [--series 10000] [--hours 2] [--reps 5]
"""
import argparse
import http.client
import json
import math
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from procs import start_urdar, stop  # noqa: E402

import cramjam  # noqa: E402

from urdar.engine.remotewrite import encode_write_request  # noqa: E402

TENANT = "bench"
SCRAPE_MS = 15_000
STEP_S = 30
QUERIES = [
    ("sum_rate", "sum(rate(bench_requests_total[5m]))"),
    ("sum_by_job_rate", "sum by (job) (rate(bench_requests_total[5m]))"),
    ("avg_by_job", "avg by (job) (bench_requests_total)"),
    ("max_rate", "max(rate(bench_requests_total[5m]))"),
]


def request(port, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        conn.request(method, path, body, dict(headers or {}, **{"X-Scope-OrgID": TENANT}))
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def push_all(port, n_series, t0, n_points):
    rnd = random.Random(11)
    rates = [rnd.uniform(0.1, 20.0) for _ in range(n_series)]
    labels = [[("__name__", "bench_requests_total"), ("job", "job-%d" % (i % 50)),
               ("instance", "host-%05d" % i)] for i in range(n_series)]
    per_req = max(1, 100_000 // n_series)
    for p0 in range(0, n_points, per_req):
        ts = [t0 + p * SCRAPE_MS for p in range(p0, min(n_points, p0 + per_req))]
        series = [(labels[i], [(t, rates[i] * (t - t0) / 1000.0) for t in ts])
                  for i in range(n_series)]
        body = bytes(cramjam.snappy.compress_raw(encode_write_request(series)))
        status, data = request(port, "POST", "/api/v1/push", body,
                               {"Content-Encoding": "snappy",
                                "Content-Type": "application/x-protobuf"})
        if status // 100 != 2:
            raise RuntimeError("push failed: %d %s" % (status, data[:300]))


def metric(port, name):
    _, body = request(port, "GET", "/metrics")
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def set_shards(port, path, shards):
    """Rewrite the runtime config and wait until a query shows the frontend uses it."""
    with open(path + ".tmp", "w") as f:
        f.write("overrides:\n  %s:\n    query_sharding_total_shards: %d\n" % (TENANT, shards))
    os.replace(path + ".tmp", path)
    deadline = time.monotonic() + 30
    probe = {"query": "sum(bench_requests_total)", "start": "0", "end": "60", "step": "60"}
    while time.monotonic() < deadline:
        before = metric(port, "cortex_frontend_query_sharding_rewrites_attempted_total")
        query(port, probe)
        after = metric(port, "cortex_frontend_query_sharding_rewrites_attempted_total")
        if (after > before) == (shards > 1):
            return
        time.sleep(0.5)
    raise RuntimeError("runtime config with %d shards not picked up" % shards)


def query(port, params):
    status, body = request(port, "POST", "/prometheus/api/v1/query_range",
                           urllib.parse.urlencode(params),
                           {"Content-Type": "application/x-www-form-urlencoded"})
    if status != 200:
        raise RuntimeError("query %r: %d %s" % (params, status, body[:300]))
    return body


def timed(port, params, reps):
    lat, body = [], None
    for _ in range(reps):
        t = time.perf_counter()
        body = query(port, params)
        lat.append((time.perf_counter() - t) * 1000.0)
    return statistics.median(lat), body


def close(a, b):
    """Same series, steps and values (floats at a relative 1e-9)."""
    ra, rb = json.loads(a)["data"]["result"], json.loads(b)["data"]["result"]
    if [s["metric"] for s in ra] != [s["metric"] for s in rb]:
        return False
    for sa, sb in zip(ra, rb):
        if [p[0] for p in sa["values"]] != [p[0] for p in sb["values"]]:
            return False
        for (_, x), (_, y) in zip(sa["values"], sb["values"]):
            if not math.isclose(float(x), float(y), rel_tol=1e-9):
                return False
    return True


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--series", type=int, default=10_000)
    ap.add_argument("--hours", type=float, default=2.0)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--shards", default="4,16")
    args = ap.parse_args()
    n_points = int(args.hours * 3600_000 // SCRAPE_MS)
    t_end = (int(time.time() * 1000) // SCRAPE_MS) * SCRAPE_MS
    t0 = t_end - n_points * SCRAPE_MS
    tmp = tempfile.mkdtemp(prefix="urdar-sharding-bench-")
    rc = os.path.join(tmp, "runtime.yaml")
    with open(rc, "w") as f:
        f.write("overrides: {}\n")
    proc = None
    ok = True
    try:
        port, proc = start_urdar(tmp, extra=(
            "-query-frontend.parallelize-shardable-queries=true",
            "-runtime-config.file=" + rc, "-runtime-config.reload-period=1s",
            "-querier.max-fetched-chunks-per-query=0"))
        t = time.perf_counter()
        push_all(port, args.series, t0, n_points)
        print("data: %d series x %d samples, pushed in %.1f s; %d cores"
              % (args.series, n_points, time.perf_counter() - t, os.cpu_count()), flush=True)
        params = lambda q: {"query": q, "start": "%.3f" % ((t0 + 600_000) / 1000),  # noqa: E731
                            "end": "%.3f" % (t_end / 1000), "step": "%ds" % STEP_S}
        set_shards(port, rc, 1)
        base = {}
        for name, q in QUERIES:
            query(port, params(q))                          # warm up
            base[name] = timed(port, params(q), args.reps)
        for shards in [int(s) for s in args.shards.split(",")]:
            set_shards(port, rc, shards)
            for name, q in QUERIES:
                query(port, params(q))
                ms, body = timed(port, params(q), args.reps)
                same = close(body, base[name][1])
                ok = ok and same
                print("%s: unsharded %.1f ms, %d shards %.1f ms, ratio %.2f%s"
                      % (name, base[name][0], shards, ms, base[name][0] / ms,
                         "" if same else "  !!! ANSWERS DIFFER"), flush=True)
    finally:
        if proc is not None:
            stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
