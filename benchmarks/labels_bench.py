"""Label and series metadata reads over HTTP: urdar against Prometheus 2.42, same data, same run.

Data (fixed seed): `--series` series (default 200k) of `bench_series{job, instance, id}`,
one sample each near now; `id` has one distinct value per series (a high-cardinality label,
values in random order), `instance` 200 values, `job` 10. The same remote-write requests go to
`python -m urdar` and to `prometheus --web.enable-remote-write-receiver` (free ports, temp
dirs); both then serve from their heads.

Each request runs `--reps` times against both servers (after one warm-up run each); answers
are compared (the decoded JSON `data`, which must be equal) and any mismatch is printed loudly.
Prints per request

    <name>: urdar N ms, prometheus M ms, ratio R (CPU: urdar A ms, prometheus B ms, ratio C)

(median wall latency; server CPU per request from /proc, less distorted by a loaded machine)
and the geomeans of both ratios (urdar / prometheus).

    python benchmarks/labels_bench.py [--series 200000] [--reps 7] [--root /work/main]

--root runs the urdar of another checkout (built) against the same data: before/after figures.
"""
import argparse
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

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cramjam  # noqa: E402

from urdar.engine.remotewrite import encode_write_request  # noqa: E402
from procs import start_prometheus, start_urdar, stop  # noqa: E402
from query_bench import Client, TENANT, cpu_s, load  # noqa: E402

REQUESTS = [
    # (name, path, query parameters)
    ("label_values_id", "/api/v1/label/id/values", []),
    ("label_values_instance", "/api/v1/label/instance/values", []),
    ("label_values_id_matched", "/api/v1/label/id/values", [("match[]", 'bench_series{instance="i-7"}')]),
    ("labels", "/api/v1/labels", []),
    ("labels_matched", "/api/v1/labels", [("match[]", 'bench_series{job="job-3"}')]),
    ("series_instance", "/api/v1/series", [("match[]", 'bench_series{instance="i-7"}')]),
    ("series_regex", "/api/v1/series", [("match[]", 'bench_series{id=~"u-1234.*"}')]),
]


def build_requests(n, t_ms, per_request=2000, seed=11):
    rng = random.Random(seed)
    ids = ["u-%d" % i for i in range(n)]
    rng.shuffle(ids)
    reqs = []
    for a in range(0, n, per_request):
        chunk = []
        for i in range(a, min(n, a + per_request)):
            lbl = [("__name__", "bench_series"), ("id", ids[i]), ("instance", "i-%d" % (i % 200)),
                   ("job", "job-%d" % (i % 10))]
            chunk.append((lbl, [(t_ms, float(i))]))
        reqs.append(bytes(cramjam.snappy.compress_raw(encode_write_request(chunk))))
    return [reqs]


def get(client, path, params):
    status, body = client._request("GET", client.prefix + path + (
        "?" + urllib.parse.urlencode(params) if params else ""), None, {"X-Scope-OrgID": TENANT})
    if status != 200:
        raise RuntimeError("GET %s %r on port %d: %d %s" % (path, params, client.port, status, body[:300]))
    return body


def timed(client, pid, path, params, reps):
    get(client, path, params)
    lat = []
    c0 = cpu_s(pid)
    for _ in range(reps):
        t = time.perf_counter()
        body = get(client, path, params)
        lat.append((time.perf_counter() - t) * 1000.0)
    return statistics.median(lat), (cpu_s(pid) - c0) * 1000.0 / reps, body


def canon(body):
    data = json.loads(body)["data"]
    if data and isinstance(data[0], dict):
        return sorted(json.dumps(d, sort_keys=True) for d in data)
    return data


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--series", type=int, default=200_000)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--only", help="comma-separated request names")
    ap.add_argument("--root", default=os.path.abspath(ROOT), help="the checkout whose urdar runs")
    args = ap.parse_args()
    t_ms = int(time.time() * 1000) - 60_000
    reqs = build_requests(args.series, t_ms)
    print("load: %s" % " ".join("%.2f" % x for x in os.getloadavg()), flush=True)
    tmp = tempfile.mkdtemp(prefix="urdar-labels-bench-")
    procs = {}
    ok = True
    try:
        uport, procs["urdar"] = start_urdar(tmp, root=args.root)
        pport, procs["prometheus"] = start_prometheus(tmp)
        urdar, prom = Client(uport, "/prometheus"), Client(pport, "")
        for name, client, path in (("prometheus", prom, "/api/v1/write"), ("urdar", urdar, "/api/v1/push")):
            t = time.perf_counter()
            load(client, path, reqs)
            print("loaded %s in %.1f s" % (name, time.perf_counter() - t), flush=True)
        for client in (urdar, prom):
            n = len(json.loads(get(client, "/api/v1/label/id/values", []))["data"])
            if n != args.series:
                raise RuntimeError("port %d has %d id values, want %d" % (client.port, n, args.series))
        walls, cpus = [], []
        only = set(args.only.split(",")) if args.only else None
        for name, path, params in REQUESTS:
            if only and name not in only:
                continue
            mu, cu, bu = timed(urdar, procs["urdar"].pid, path, params, args.reps)
            mp, cp, bp = timed(prom, procs["prometheus"].pid, path, params, args.reps)
            same = canon(bu) == canon(bp)
            ok = ok and same
            walls.append(mu / mp)
            cpus.append(cu / cp if cp > 0 else float("nan"))
            print("%s: urdar %.1f ms, prometheus %.1f ms, ratio %.2f (CPU: urdar %.1f ms, prometheus "
                  "%.1f ms, ratio %.2f) [%d items]%s"
                  % (name, mu, mp, mu / mp, cu, cp, cpus[-1], len(json.loads(bu)["data"]),
                     "" if same else "  MISMATCH"), flush=True)
        geo = lambda xs: math.exp(sum(map(math.log, xs)) / len(xs))  # noqa: E731
        good = [c for c in cpus if c == c and c > 0]
        print("geomean ratio: wall %.2f, CPU %.2f" % (geo(walls), geo(good) if good else float("nan")))
        print("load: %s" % " ".join("%.2f" % x for x in os.getloadavg()))
        if not ok:
            print("!!! RESULTS DIFFER")
    finally:
        for name in ("prometheus", "urdar"):
            if name in procs:
                stop(procs[name])
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
