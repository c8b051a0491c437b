"""Query benchmark: PromQL latency over HTTP, urdar against Prometheus 2.42, same data, same run.

Data (fixed seed): ~10k series over 6 h at 15 s ending near now — request counters
(`http_requests_total`, job/instance/method/status), classic histogram buckets
(`http_request_duration_seconds_bucket`, 11 `le` each), CPU and memory gauges and an info
metric (`build_info{version}`). The same pre-encoded remote-write requests (oldest first, so
Prometheus' head window accepts them) go to `python -m urdar` and to `prometheus
--web.enable-remote-write-receiver`, both on free ports with temporary directories. Once both
report every series and sample, each query runs as an instant query (at the newest sample) and
as a range query (the whole 6 h, step 30 s) `--reps` times against both; the median latency
is reported. Results are compared (labels, timestamps, values to 1e-9 relative) and any
mismatch is printed loudly. Prints `<name>: urdar N ms, prometheus M ms, ratio R` per query
and `geomean ratio: R` (urdar / prometheus), with both servers' CPU time per query.

Then the cached run (issue 12's repeated dashboard query): a second urdar with
`-query-frontend.cache-results=true` gets the same data, and every range query runs over a
step-aligned span as long as the one above, ending now (a dashboard refresh: the last
-query-frontend.max-cache-freshness, 10m, is evaluated again every time) and ending an hour
before the newest sample (all from the cache): uncached (`Cache-Control: no-store`) and cached
(after one run that fills the cache), answers compared byte for byte. Prints
`cached_<name>_<now|past>: uncached N ms, cached M ms, speed-up R (server CPU ...)` and
`cached geomean speed-up (<window>): R` (skip with --no-cached).

    python benchmarks/query_bench.py [--instances 200] [--hours 6] [--reps 5] [--keep DIR]

--keep copies urdar's TSDB directory to DIR afterwards (for in-process profiling with
`benchmarks/query_bench.py --profile DIR`, which runs the same queries through the Engine over
that TSDB under cProfile with no HTTP).
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
import threading
import time
import urllib.parse

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

import cramjam  # noqa: E402

from urdar.engine.remotewrite import encode_write_request  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from procs import start_prometheus, start_urdar, stop  # noqa: E402

SCRAPE_MS = 15000
STEP_MS = 30000
TENANT = "bench"
PUSH_HEADERS = {"Content-Encoding": "snappy", "Content-Type": "application/x-protobuf",
                "X-Prometheus-Remote-Write-Version": "0.1.0", "X-Scope-OrgID": TENANT,
                "User-Agent": "urdar-query-bench"}
LES = ("0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "+Inf")

QUERIES = [
    ("sum_rate", 'sum by (job) (rate(http_requests_total[5m]))'),
    ("histogram_quantile",
     'histogram_quantile(0.9, sum by (le, job) (rate(http_request_duration_seconds_bucket[5m])))'),
    ("topk", 'topk(10, rate(http_requests_total[5m]))'),
    ("regex_selector", 'count by (job) ({__name__=~"http_.+|node_.+", instance=~".*[02468]"})'),
    ("subquery", 'max_over_time(rate(http_requests_total{method="GET",status="200"}[5m])[30m:1m])'),
    ("group_left",
     'sum by (job, version) (rate(http_requests_total[5m]) * on(instance) group_left(version) build_info)'),
    ("avg_over_time", 'avg_over_time(node_memory_usage_bytes[10m])'),
    ("count_by", 'count by (job, cpu) (node_cpu_usage)'),
    ("comparison", 'node_cpu_usage > 95'),
    ("label_replace",
     'label_replace(avg by (instance) (node_cpu_usage), "host", "$1", "instance", "host-(.*)")'),
]


# ---- data -------------------------------------------------------------------------------------

def build_series(n_instances, n_points, t0_ms, seed=7):
    """[(labels, ts list, values list)]: counters, histogram buckets, gauges, info metric."""
    rnd = random.Random(seed)
    grid = [t0_ms + i * SCRAPE_MS for i in range(n_points)]

    def stamps():
        # Each target scrapes at its own phase (never a whole second), so no sample sits exactly
        # on a window boundary: Prometheus 2.x windows are closed on the left, 3.x (urdar) open.
        off = rnd.randrange(1, SCRAPE_MS - 1)
        if off % 1000 == 0:
            off += 1
        return [t + off for t in grid]
    out = []
    for h in range(n_instances):
        ts = stamps()
        inst = "host-%03d" % h
        job = "job-%d" % (h % 10)
        version = "1.%d.%d" % (h % 3, h % 7)
        out.append(([("__name__", "build_info"), ("instance", inst), ("job", job),
                     ("version", version)], ts, [1.0] * n_points))
        for method in ("GET", "POST", "PUT", "DELETE"):
            for status in ("200", "201", "404", "500", "503"):
                lam = rnd.uniform(0.2, 40.0)
                v = float(rnd.randrange(1000))
                vals = []
                for _ in range(n_points):
                    if rnd.random() < 0.0005:
                        v = 0.0  # a restart resets the counter
                    v += rnd.expovariate(1.0 / lam)
                    vals.append(v)
                out.append(([("__name__", "http_requests_total"), ("instance", inst), ("job", job),
                             ("method", method), ("status", status)], ts, vals))
        for handler in ("/api", "/ui"):
            # Cumulative bucket counts: every scrape adds n observations split by a fixed CDF.
            ts = stamps()
            mu = rnd.uniform(-3.5, 0.0)
            cdf = [min(1.0, 1.0 / (1.0 + math.exp(-(math.log(float(le)) - mu) * 1.7)))
                   if le != "+Inf" else 1.0 for le in LES]
            counts = [0.0] * len(LES)
            cols = [[] for _ in LES]
            for _ in range(n_points):
                n = rnd.randrange(0, 60)
                for b in range(len(LES)):
                    counts[b] += math.floor(n * cdf[b])
                    cols[b].append(counts[b])
            for b, le in enumerate(LES):
                out.append(([("__name__", "http_request_duration_seconds_bucket"), ("handler", handler),
                             ("instance", inst), ("job", job), ("le", le)], ts, cols[b]))
        ts = stamps()
        mem = rnd.uniform(1e9, 8e9)
        vals = []
        for _ in range(n_points):
            mem = max(1e8, mem + rnd.gauss(0, 2e7))
            vals.append(mem)
        out.append(([("__name__", "node_memory_usage_bytes"), ("instance", inst), ("job", job)], ts, vals))
        for cpu in range(8):
            ts = stamps()
            base = rnd.uniform(5, 80)
            vals = [min(100.0, max(0.0, base + rnd.gauss(0, 10))) for _ in range(n_points)]
            out.append(([("__name__", "node_cpu_usage"), ("cpu", str(cpu)), ("instance", inst),
                         ("job", job)], ts, vals))
    return out


def build_requests(series, n_points, slice_points=120, per_request=500):
    """[time slice][series chunk] -> snappy-compressed WriteRequest, oldest slice first."""
    reqs = []
    for a in range(0, n_points, slice_points):
        b = min(n_points, a + slice_points)
        row = []
        for i in range(0, len(series), per_request):
            chunk = [(lbl, zip(ts[a:b], vs[a:b])) for lbl, ts, vs in series[i:i + per_request]]
            row.append(bytes(cramjam.snappy.compress_raw(encode_write_request(chunk))))
        reqs.append(row)
    return reqs


# ---- servers ----------------------------------------------------------------------------------

class Client:
    """One persistent HTTP connection per server (reconnects on error)."""

    def __init__(self, port, prefix):
        self.port = port
        self.prefix = prefix
        self.conn = None

    def _request(self, method, path, body=None, headers=None):
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
            try:
                self.conn.request(method, path, body=body, headers=headers or {})
                resp = self.conn.getresponse()
                return resp.status, resp.read()
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise

    def push(self, path, body):
        status, data = self._request("POST", path, body, PUSH_HEADERS)
        if status // 100 != 2:
            raise RuntimeError("push to port %d failed: %d %s" % (self.port, status, data[:300]))

    def query(self, params, headers=None):
        path = self.prefix + ("/api/v1/query_range" if "step" in params else "/api/v1/query")
        body = urllib.parse.urlencode(params)
        status, data = self._request("POST", path, body, {
            "Content-Type": "application/x-www-form-urlencoded", "X-Scope-OrgID": TENANT,
            **(headers or {})})
        if status != 200:
            raise RuntimeError("query %r on port %d: %d %s" % (params, self.port, status, data[:500]))
        return data


def load(client, path, reqs, threads=3):
    """Push every request; connection k owns the series chunks c with c % threads == k and sends
    them oldest slice first, so each series' samples arrive in order. The connections move from
    one time slice to the next together: Prometheus refuses samples more than half a chunk range
    (1h) older than the newest it has seen ("out of bounds"), so no connection may run ahead."""
    errors = []
    barrier = threading.Barrier(threads)

    def worker(k):
        c = Client(client.port, client.prefix)
        try:
            for row in reqs:
                for body in row[k::threads]:
                    if errors:
                        barrier.abort()
                        return
                    c.push(path, body)
                barrier.wait()
        except threading.BrokenBarrierError:
            return
        except Exception as e:  # noqa: BLE001 (re-raised below)
            errors.append(e)
            barrier.abort()
    ts = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise errors[0]


def wait_loaded(client, t_end, n_series, n_samples, span_s, timeout_s=60):
    """Poll until the server has every series and every sample."""
    deadline = time.monotonic() + timeout_s
    q1 = 'count({__name__=~".+"})'
    q2 = 'sum(count_over_time({__name__=~".+"}[%ds]))' % span_s
    got = None
    while time.monotonic() < deadline:
        try:
            a = _scalar_of(client.query({"query": q1, "time": "%.3f" % (t_end / 1000)}))
            b = _scalar_of(client.query({"query": q2, "time": "%.3f" % (t_end / 1000)}))
            got = (a, b)
            if a == n_series and b == n_samples:
                return
        except RuntimeError:
            pass
        time.sleep(1.0)
    raise RuntimeError("port %d never had all the data: (series, samples) = %r, want %r"
                       % (client.port, got, (n_series, n_samples)))


def _scalar_of(body):
    res = json.loads(body)["data"]["result"]
    return float(res[0]["value"][1]) if res else 0.0


# ---- comparison -------------------------------------------------------------------------------

def _points(body):
    data = json.loads(body)["data"]
    out = {}
    for s in data["result"]:
        key = tuple(sorted(s["metric"].items()))
        pts = s["values"] if "values" in s else [s["value"]]
        out[key] = [(float(t), v) for t, v in pts]
    return data["resultType"], out


def _close(a, b):
    if a == b:
        return True
    x, y = float(a), float(b)
    if math.isnan(x) and math.isnan(y):
        return True
    return abs(x - y) <= 1e-9 * max(abs(x), abs(y)) or abs(x - y) <= 1e-12


def compare(body_u, body_p):
    """List of mismatch descriptions (empty when the results agree)."""
    tu, pu = _points(body_u)
    tp, pp = _points(body_p)
    errs = []
    if tu != tp:
        errs.append("result type %s vs %s" % (tu, tp))
    for key in sorted(set(pu) | set(pp)):
        if key not in pu:
            errs.append("series missing in urdar: %s" % (dict(key),))
            continue
        if key not in pp:
            errs.append("extra series in urdar: %s" % (dict(key),))
            continue
        a, b = pu[key], pp[key]
        if len(a) != len(b):
            errs.append("%s: %d points vs %d" % (dict(key), len(a), len(b)))
            continue
        for (ta, va), (tb, vb) in zip(a, b):
            if ta != tb or not _close(va, vb):
                errs.append("%s: (%s, %s) vs (%s, %s)" % (dict(key), ta, va, tb, vb))
                break
    return errs


# ---- timing -----------------------------------------------------------------------------------

def cpu_s(pid):
    """User + system CPU seconds of a process so far (/proc/<pid>/stat)."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

def time_query(client, params, reps, headers=None):
    lat = []
    body = None
    for _ in range(reps):
        t = time.perf_counter()
        body = client.query(params, headers)
        lat.append((time.perf_counter() - t) * 1000.0)
    return statistics.median(lat), body


def run_queries(urdar, prom, t_start, t_end, reps, pids=None):
    """Each query against both servers; with pids = (urdar's, prometheus') their CPU time per
    query is printed too (less distorted by a loaded machine than latency)."""
    ratios = []
    mismatched = []
    for mode in ("instant", "range"):
        for name, q in QUERIES:
            if mode == "instant":
                params = {"query": q, "time": "%.3f" % (t_end / 1000)}
            else:
                params = {"query": q, "start": "%.3f" % (t_start / 1000), "end": "%.3f" % (t_end / 1000),
                          "step": "%gs" % (STEP_MS / 1000)}
            u0 = cpu_s(pids[0]) if pids else 0.0
            mu, bu = time_query(urdar, params, reps)
            u1 = cpu_s(pids[0]) if pids else 0.0
            p0 = cpu_s(pids[1]) if pids else 0.0
            mp, bp = time_query(prom, params, reps)
            cpu = ""
            if pids:
                cu = (u1 - u0) * 1000.0 / reps
                cp = (cpu_s(pids[1]) - p0) * 1000.0 / reps
                cpu = " (CPU: urdar %.0f ms, prometheus %.0f ms)" % (cu, cp)
            errs = compare(bu, bp)
            label = "%s_%s" % (mode, name)
            r = mu / mp
            ratios.append(r)
            print("%s: urdar %.1f ms, prometheus %.1f ms, ratio %.2f%s%s"
                  % (label, mu, mp, r, cpu, "  MISMATCH" if errs else ""), flush=True)
            if errs:
                mismatched.append(label)
                print("!!! %s: %d mismatches, e.g.:" % (label, len(errs)))
                for e in errs[:5]:
                    print("!!!   " + e[:400])
    print("geomean ratio: %.2f" % math.exp(sum(math.log(r) for r in ratios) / len(ratios)))
    if mismatched:
        print("!!! RESULTS DIFFER for: %s" % ", ".join(mismatched))
    return not mismatched


def run_cached(client, pid, t_start, t_end, reps):
    """Every range query without and with the results cache over two step-aligned windows as
    long as [t_start, t_end]: "now" ends at the current time (a dashboard refresh: its last
    10m, -query-frontend.max-cache-freshness, are evaluated again every time) and "past" ended
    an hour before t_end (all from the cache). True when the cached answers equal the uncached
    ones byte for byte."""
    span = t_end - t_start
    now = int(time.time() * 1000) // STEP_MS * STEP_MS
    past = (t_end - 3600_000) // STEP_MS * STEP_MS
    windows = (("now", now - span // STEP_MS * STEP_MS, now),
               ("past", past - span // STEP_MS * STEP_MS, past))
    no_store = {"Cache-Control": "no-store"}
    speedups = {w[0]: [] for w in windows}
    cpu_speedups = {w[0]: [] for w in windows}
    bad = []
    for name, q in QUERIES:
        for wname, start, end in windows:
            params = {"query": q, "start": "%.3f" % (start / 1000), "end": "%.3f" % (end / 1000),
                      "step": "%gs" % (STEP_MS / 1000)}
            c0 = cpu_s(pid)
            mu, body_u = time_query(client, params, reps, no_store)
            c1 = cpu_s(pid)
            client.query(params)            # fills the cache
            c2 = cpu_s(pid)
            mc, body_c = time_query(client, params, reps)
            c3 = cpu_s(pid)
            cpu_u, cpu_c = (c1 - c0) * 1000 / reps, (c3 - c2) * 1000 / reps
            r = mu / mc
            speedups[wname].append(r)
            cpu_speedups[wname].append(cpu_u / max(cpu_c, 1000.0 / os.sysconf("SC_CLK_TCK") / reps))
            same = body_u == body_c
            if not same:
                bad.append("%s_%s" % (name, wname))
            print("cached_%s_%s: uncached %.1f ms, cached %.1f ms, speed-up %.1f (server CPU "
                  "%.1f ms -> %.1f ms)%s" % (name, wname, mu, mc, r, cpu_u, cpu_c,
                                             "" if same else "  ANSWERS DIFFER"), flush=True)
    for wname, rs in speedups.items():
        cs = cpu_speedups[wname]
        print("cached geomean speed-up (%s): %.1f (server CPU: %.1f)"
              % (wname, math.exp(sum(map(math.log, rs)) / len(rs)),
                 math.exp(sum(map(math.log, cs)) / len(cs))))
    if bad:
        print("!!! CACHED ANSWERS DIFFER for: %s" % ", ".join(bad))
    return not bad


# ---- in-process profile -----------------------------------------------------------------------

def profile(tsdb_dir, reps, sort):
    """cProfile the Engine over a kept urdar TSDB (no HTTP), same queries, plus rendering."""
    import cProfile
    import pstats
    from urdar.engine.tsdb import TSDB
    from urdar.handlers import render as R
    from urdar.promql.engine import Engine
    with open(os.path.join(tsdb_dir, "bench-times.json")) as f:
        t_start, t_end = json.load(f)
    db = TSDB(os.path.join(tsdb_dir, TENANT))

    class Q:
        def select(self, matchers, mint, maxt):
            return db.select(matchers, mint, maxt)
    eng = Engine(Q())
    only = os.environ.get("QUERY_BENCH_ONLY")
    prof = cProfile.Profile()
    for mode in ("instant", "range"):
        for name, q in QUERIES:
            if only and only not in "%s_%s" % (mode, name):
                continue
            lat = []
            for _ in range(reps):
                t = time.perf_counter()
                prof.enable()
                if mode == "instant":
                    res = eng.instant(q, t_end)
                else:
                    res = eng.range(q, t_start, t_end, STEP_MS)
                R.render_result(res)
                prof.disable()
                lat.append((time.perf_counter() - t) * 1000)
            print("%s_%s: %.1f ms (in-process, profiled)" % (mode, name, statistics.median(lat)))
    db.close()
    pstats.Stats(prof).sort_stats(sort).print_stats(35)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--instances", type=int, default=200, help="hosts (52 series each)")
    ap.add_argument("--hours", type=float, default=6.0)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--keep", help="copy urdar's TSDB dir here at the end")
    ap.add_argument("--profile", help="profile in-process over a --keep'd TSDB dir instead")
    ap.add_argument("--sort", default="tottime")
    ap.add_argument("--no-cached", action="store_true", help="skip the results-cache run")
    ap.add_argument("--cached-only", action="store_true",
                    help="only the results-cache run (no Prometheus, no uncached comparison)")
    ap.add_argument("--root", default=None,
                    help="the checkout whose urdar runs (default: this one; for before/after)")
    args = ap.parse_args()
    if args.profile:
        profile(args.profile, args.reps, args.sort)
        return 0

    n_points = int(args.hours * 3600_000 // SCRAPE_MS)
    # Samples lie in [t0, t_end). Queries run at whole seconds 7 s past the 15 s grid: t_end+7s,
    # or from 10 min after t0 to t_end+7s step 30 s. Prometheus 2.42 differs from 3.x (urdar)
    # where a subquery step lands exactly on a window start (closed vs open left end) and in
    # rate's zero-point clamp at a series' first window; this data avoids both.
    t_end = (int(time.time() * 1000) // SCRAPE_MS) * SCRAPE_MS
    t0 = t_end - n_points * SCRAPE_MS
    q_start, q_end = t0 + 600_000 + 7000, t_end + 7000
    t_gen = time.perf_counter()
    series = build_series(args.instances, n_points, t0)
    reqs = build_requests(series, n_points)
    n_series = len(series)
    n_samples = n_series * n_points
    del series
    print("data: %d series x %d samples (%d samples, %d requests, %.1f MB snappy) built in %.1f s"
          % (n_series, n_points, n_samples, sum(map(len, reqs)), sum(len(b) for r in reqs for b in r) / 1e6,
             time.perf_counter() - t_gen), flush=True)

    tmp = tempfile.mkdtemp(prefix="urdar-query-bench-")
    procs = {}
    ok = False
    try:
        span_s = (t_end - t0) // 1000 + 60
        ok = True
        if not args.cached_only:
            uport, procs["urdar"] = start_urdar(tmp, **({"root": args.root} if args.root else {}))
            pport, procs["prometheus"] = start_prometheus(tmp)
            urdar = Client(uport, "/prometheus")
            prom = Client(pport, "")
            for name, client, path in (("prometheus", prom, "/api/v1/write"),
                                       ("urdar", urdar, "/api/v1/push")):
                t = time.perf_counter()
                load(client, path, reqs)
                print("loaded %s in %.1f s" % (name, time.perf_counter() - t), flush=True)
            for client in (prom, urdar):
                wait_loaded(client, q_end, n_series, n_samples, span_s)
            print("both servers have all %d series and %d samples" % (n_series, n_samples),
                  flush=True)
            ok = run_queries(urdar, prom, q_start, q_end, args.reps,
                             (procs["urdar"].pid, procs["prometheus"].pid))
        if not args.no_cached:
            if "prometheus" in procs:
                stop(procs.pop("prometheus"))
            tmp2 = os.path.join(tmp, "cached")
            os.makedirs(tmp2)
            cport, procs["urdar-cached"] = start_urdar(tmp2, extra=(
                "-query-frontend.cache-results=true",), **({"root": args.root} if args.root else {}))
            cached = Client(cport, "/prometheus")
            load(cached, "/api/v1/push", reqs)
            wait_loaded(cached, q_end, n_series, n_samples, span_s)
            ok = run_cached(cached, procs["urdar-cached"].pid, q_start, t_end, args.reps) and ok
        del reqs
    finally:
        # Prometheus first, then urdar.
        for name in ("prometheus", "urdar-cached", "urdar"):
            if name in procs:
                stop(procs[name])
        if args.keep and "urdar" in procs:
            shutil.rmtree(args.keep, ignore_errors=True)
            shutil.copytree(os.path.join(tmp, "urdar"), args.keep)
            with open(os.path.join(args.keep, "bench-times.json"), "w") as f:
                json.dump([q_start, q_end], f)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
