"""Query-frontend benchmark: a repeated Grafana dashboard range query served from the results cache
against the same query uncached, on one `python -m urdar` over HTTP.

Data is query_bench.py's (fixed seed: request counters, classic histograms, gauges; 52 series per
instance, 15 s scrapes ending near now). urdar runs with `-query-frontend.cache-results=true` and
`-query-frontend.align-queries-with-step=true` (default 24h splitting). Each dashboard query runs
at step 30 s over the span up to now ("now": the last -query-frontend.max-cache-freshness (10m)
is evaluated again on every refresh) and over a window that ended an hour ago ("past": all from
the cache); "uncached" sends `Cache-Control: no-store` (the frontend neither reads nor fills the
cache), "cached" repeats it without after one run that fills the cache. The two answers are
compared byte for byte. Prints `<name>_<window>: uncached N ms, cached M ms, speed-up R`, the
fresh 10 minutes alone for scale, and `geomean speed-up (<window>): R`.

    python benchmarks/frontend_bench.py [--instances 50] [--hours 6] [--reps 7]
"""
import argparse
import http.client
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from procs import start_urdar, stop  # noqa: E402
from query_bench import (SCRAPE_MS, STEP_MS, TENANT, Client, build_requests,  # noqa: E402
                         build_series, load, wait_loaded)

QUERIES = [
    ("sum_rate", 'sum by (job) (rate(http_requests_total[5m]))'),
    ("histogram_quantile",
     'histogram_quantile(0.9, sum by (le, job) (rate(http_request_duration_seconds_bucket[5m])))'),
    ("subquery", 'max_over_time(rate(http_requests_total{method="GET",status="200"}[5m])[30m:1m])'),
    ("avg_over_time", 'avg_over_time(node_memory_usage_bytes[10m])'),
]


def range_query(port, params, no_store):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    headers = {"Content-Type": "application/x-www-form-urlencoded", "X-Scope-OrgID": TENANT}
    if no_store:
        headers["Cache-Control"] = "no-store"
    try:
        conn.request("POST", "/prometheus/api/v1/query_range", urllib.parse.urlencode(params), headers)
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    if resp.status != 200:
        raise RuntimeError("query %r: %d %s" % (params, resp.status, body[:500]))
    return body


def timed(port, params, no_store, reps):
    lat, body = [], None
    for _ in range(reps):
        t = time.perf_counter()
        body = range_query(port, params, no_store)
        lat.append((time.perf_counter() - t) * 1000.0)
    return statistics.median(lat), body


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--instances", type=int, default=50, help="hosts (52 series each)")
    ap.add_argument("--hours", type=float, default=6.0)
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()
    n_points = int(args.hours * 3600_000 // SCRAPE_MS)
    t_end = (int(time.time() * 1000) // SCRAPE_MS) * SCRAPE_MS
    t0 = t_end - n_points * SCRAPE_MS
    series = build_series(args.instances, n_points, t0)
    reqs = build_requests(series, n_points)
    n_series, n_samples = len(series), len(series) * n_points
    del series
    print("data: %d series x %d samples" % (n_series, n_points), flush=True)
    tmp = tempfile.mkdtemp(prefix="urdar-frontend-bench-")
    proc = None
    ok = True
    try:
        port, proc = start_urdar(tmp, extra=("-query-frontend.cache-results=true",
                                             "-query-frontend.align-queries-with-step=true"))
        client = Client(port, "/prometheus")
        load(client, "/api/v1/push", reqs, threads=1)   # in time order: the head refuses old data
        del reqs
        wait_loaded(client, t_end + 7000, n_series, n_samples, (t_end - t0) // 1000 + 60)
        step = "%ds" % (STEP_MS // 1000)
        # A dashboard over the whole span with "now" at the newest sample (its last 10m are
        # never cached: they are evaluated on every refresh), the same dashboard looking at a
        # window that ended an hour ago (all from the cache), and, for scale, the fresh tail alone.
        windows = (("now", t0 + 600_000, t_end), ("past", t0, t_end - 3600_000))
        speedups = {w[0]: [] for w in windows}
        for name, q in QUERIES:
            for wname, ws, we in windows:
                p = {"query": q, "start": "%.3f" % (ws / 1000), "end": "%.3f" % (we / 1000),
                     "step": step}
                uncached, body_u = timed(port, p, True, args.reps)
                range_query(port, p, False)                 # fills the cache
                cached, body_c = timed(port, p, False, args.reps)
                same = body_u == body_c
                ok = ok and same
                speedups[wname].append(uncached / cached)
                print("%s_%s: uncached %.1f ms, cached %.1f ms, speed-up %.1f%s"
                      % (name, wname, uncached, cached, uncached / cached,
                         "" if same else "  !!! ANSWERS DIFFER"), flush=True)
            tail = {"query": q, "start": "%.3f" % ((t_end - 540_000) / 1000),
                    "end": "%.3f" % (t_end / 1000), "step": step}
            print("%s_fresh_10m_only: %.1f ms" % (name, timed(port, tail, True, args.reps)[0]))
        for wname, ratios in speedups.items():
            print("geomean speed-up (%s): %.1f"
                  % (wname, math.exp(sum(map(math.log, ratios)) / len(ratios))))
    finally:
        if proc is not None:
            stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
