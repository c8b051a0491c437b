"""Series churn benchmark: remote-write pushes of never-seen series only, urdar against
Prometheus 2.42 in the same run (issue 16: creating series at least 5x Prometheus' rate).

Every round pushes `--series` series that no earlier round had (the pod and instance labels
carry the round, as when a deployment rolls out), one sample each, in requests of
`--per-request` series over `--connections` keep-alive connections (ingest_bench's load
clients, servers and request shape). Each round is timed alone; the figures are medians over
the rounds: new series per second of wall time and per CPU second of the server process (the
machine is shared, so the CPU figure is the steadier one), and their urdar/Prometheus ratios.
`--engine` also times Head.append_batch alone in this process (no HTTP), per CPU second.

    python benchmarks/churn_bench.py [--series 50000] [--rounds 5] [--connections 5] [--engine]
                                     [--compare ROOT] [--profile PATH]
"""
import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from array import array

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, ".."))

import cramjam  # noqa: E402

import ingest_bench as ib  # noqa: E402
from procs import start_prometheus, stop  # noqa: E402
from urdar.engine.remotewrite import encode_write_request  # noqa: E402


def churn_sets(n, r, seed=1):
    """ingest_bench's label sets with round r's own pods and instances: all new series."""
    out = []
    for i, labels in enumerate(ib.label_sets(n, seed)):
        d = dict(labels)
        d["pod"] = "pod-%d-%d" % (r, i // 10)
        d["instance"] = "10.%d.%d.%d:%d" % ((i // 65536) % 256, (i // 256) % 256, i % 256, 9100 + r)
        out.append(sorted(d.items()))
    return out


def build_rows(n_series, per_request, rounds, t0_ms):
    rnd = random.Random(3)
    rows = []
    for r in range(rounds):
        sets = churn_sets(n_series, r)
        t = t0_ms + r * ib.SCRAPE_MS
        row = []
        for a in range(0, n_series, per_request):
            series = [(sets[i], [(t, rnd.random() * 1000)]) for i in range(a, min(a + per_request, n_series))]
            row.append(bytes(cramjam.snappy.compress_raw(encode_write_request(series))))
        rows.append(row)
    return rows


def summarise(name, rounds, n_series):
    """rounds: ingest_bench.run_load's [(round, seconds, samples, failed, cpu s)]."""
    wall = statistics.median(n_series / r[1] for r in rounds)
    cpu = statistics.median(n_series / r[4] for r in rounds if r[4] > 0) if any(r[4] for r in rounds) else 0.0
    failed = sum(r[3] for r in rounds)
    print("%s_churn: %.0f new series/s (median of %d rounds; per round: %s)" % (
        name, wall, len(rounds), ", ".join("%.0f" % (n_series / r[1]) for r in rounds)))
    print("%s_churn_per_cpu_second: %.0f new series/s" % (name, cpu))
    print("%s_failed_requests: %d requests" % (name, failed), flush=True)
    return wall, cpu


def engine_rate(n_series, rounds, per_request):
    """New series per CPU second of Head.append_batch alone (WAL on, no HTTP)."""
    from urdar.engine.head import Head
    from urdar.engine.labels import encode_labels, hash_key
    tmp = tempfile.mkdtemp(prefix="urdar-churn-engine-")
    try:
        head = Head(os.path.join(tmp, "head"))
        rates = []
        for r in range(rounds):
            sets = churn_sets(n_series, r)
            batches = []
            for a in range(0, n_series, per_request):
                keys = bytearray()
                koff = array("Q", [0])
                hashes = array("Q")
                for labels in sets[a:a + per_request]:
                    k = encode_labels(labels)
                    keys += k
                    koff.append(len(keys))
                    hashes.append(hash_key(k))
                m = len(hashes)
                batches.append((bytes(keys), koff, hashes, array("Q", range(m + 1)),
                                array("q", [r * ib.SCRAPE_MS] * m), array("d", [1.0] * m), m))
            c0 = time.process_time()
            for keys, koff, hashes, soff, ts, vs, m in batches:
                ok, new = head.append_batch(keys, koff, hashes, soff, ts, vs, bytearray(m))
                assert ok == m and new == m, "every series of a churn round must be new and accepted"
            rates.append(n_series / (time.process_time() - c0))
        head.close()
        print("engine_churn_per_cpu_second: %.0f new series/s (median of %d rounds)" % (
            statistics.median(rates), rounds), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--series", type=int, default=50_000, help="new series per round")
    ap.add_argument("--per-request", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=5)
    ap.add_argument("--only", choices=("urdar", "prometheus"))
    ap.add_argument("--engine", action="store_true", help="also time Head.append_batch in process")
    ap.add_argument("--compare", metavar="ROOT",
                    help="also run the urdar of another checkout (e.g. /work/main) on the same requests")
    ap.add_argument("--profile", metavar="PATH",
                    help="urdar's sampled CPU profile of the run (pprof at PATH, text at PATH.txt)")
    args = ap.parse_args()
    if (args.series // args.per_request) % args.connections:
        ap.error("requests per round must be a multiple of --connections")
    print("load: %s" % open("/proc/loadavg").read().strip())
    if args.engine:
        engine_rate(args.series, args.rounds, args.per_request)
    t0_ms = int(time.time() * 1000) - args.rounds * ib.SCRAPE_MS
    rows = build_rows(args.series, args.per_request, args.rounds, t0_ms)
    print("requests: %d rounds x %d x %d new series x 1 sample" % (args.rounds, len(rows[0]), args.per_request))
    null = ib.NullServer()
    try:
        summarise("client_capacity", ib.run_load(null.port, "/api/v1/push", rows, args.connections,
                                                 args.series), args.series)
    finally:
        null.stop()
    res = {}
    tmp = tempfile.mkdtemp(prefix="urdar-churn-bench-")
    try:
        if args.only in (None, "urdar"):
            port, proc = ib.start_urdar(tmp, profile=args.profile)
            try:
                res["urdar"] = summarise("urdar", ib.run_load(port, "/api/v1/push", rows, args.connections,
                                                              args.series, proc.pid), args.series)
            finally:
                stop(proc)
        if args.compare and args.only in (None, "urdar"):
            os.makedirs(os.path.join(tmp, "compare"))
            port, proc = ib.start_urdar(os.path.join(tmp, "compare"), root=args.compare)
            try:
                res["compare"] = summarise("compare_urdar", ib.run_load(port, "/api/v1/push", rows,
                                                                        args.connections, args.series,
                                                                        proc.pid), args.series)
            finally:
                stop(proc)
        if args.only in (None, "prometheus"):
            port, proc = start_prometheus(tmp)
            try:
                res["prometheus"] = summarise("prometheus", ib.run_load(port, "/api/v1/write", rows,
                                                                        args.connections, args.series,
                                                                        proc.pid), args.series)
            finally:
                stop(proc)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for name, prefix in (("urdar", ""), ("compare", "compare_")):
        if name in res and "prometheus" in res:
            (uw, uc), (pw, pc) = res[name], res["prometheus"]
            print("%sratio: %.2f (new series/s, wall)" % (prefix, uw / pw))
            if uc and pc:
                print("%sratio_per_cpu_second: %.2f" % (prefix, uc / pc))
    print("load: %s" % open("/proc/loadavg").read().strip())


if __name__ == "__main__":
    main()
