"""Fixed per-query cost of instant queries: server CPU time per query through the full HTTP path.

Wall-clock latency on a machine shared with other work moves with the load; the CPU time the
server process spends per query does not (much). This starts `python -m urdar` (-target=all,
query-frontend in front of the querier as in production), loads query_bench.py's data (42
instances: ~2,200 series, 1 h at 15 s), then for each query sends `--reps` sequential instant
queries over one keep-alive connection, `--rounds` times, and reports the server process' CPU
time (utime + stime from /proc/<pid>/stat) per query, the lowest round (other processes' load
only adds to it), and the client's median wall time for reference only.

    python benchmarks/instant_cpu_bench.py [--instances 42] [--reps 300] [--profile OUT]

--profile runs the server under benchmarks/cpuprof_urdar.py: every thread (reactor and pools)
under cProfile with a per-thread CPU clock (time.thread_time); the merged stats go to OUT and
the top functions by own CPU time are printed.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from procs import start_urdar, stop  # noqa: E402
from query_bench import (Client, build_requests, build_series, load,  # noqa: E402
                         wait_loaded, SCRAPE_MS)

QUERIES = [
    ("absent", 'absent(nonexistent_metric{job="nope"})'),
    ("selector", 'node_memory_usage_bytes{instance="host-007"}'),
    ("sum_rate", 'sum by (job) (rate(http_requests_total[5m]))'),
    ("topk", 'topk(10, rate(http_requests_total[5m]))'),
]


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of the line (11 and 12 after the command).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--instances", type=int, default=42)
    ap.add_argument("--reps", type=int, default=300)
    ap.add_argument("--profile", default="")
    ap.add_argument("--extra", action="append", default=[], help="more urdar flags")
    ap.add_argument("--only", default="", help="comma-separated query names to run")
    ap.add_argument("--rounds", type=int, default=3, help="the lowest of this many rounds")
    args = ap.parse_args()
    n_points = 240
    now_ms = int(time.time() * 1000) // 60_000 * 60_000
    t0 = now_ms - n_points * SCRAPE_MS
    series = build_series(args.instances, n_points, t0)
    reqs = build_requests(series, n_points)
    tmp = tempfile.mkdtemp(prefix="urdar-instant-bench-")
    env = dict(os.environ)
    entry = ("-m", "urdar")
    if args.profile:
        env["URDAR_CPUPROF"] = os.path.abspath(args.profile)
        entry = (os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpuprof_urdar.py"),)
    port, proc = start_urdar(tmp, ("-query-frontend.cache-results=false",
                                         *args.extra), env=env, entry=entry)
    try:
        client = Client(port, "/prometheus")
        load(client, "/api/v1/push", reqs)
        last = max(ts[-1] for _, ts, _ in series)
        wait_loaded(client, last, len(series), len(series) * n_points, n_points * SCRAPE_MS // 1000)
        t = "%.3f" % (last / 1000)
        print("%d series, %d reps per query" % (len(series), args.reps))
        for name, q in QUERIES:
            if args.only and name not in args.only.split(","):
                continue
            params = {"query": q, "time": t}
            for _ in range(20):
                client.query(params)
            cpus, walls = [], []
            for _ in range(args.rounds):
                c0 = cpu_seconds(proc.pid)
                for _ in range(args.reps):
                    s = time.perf_counter()
                    client.query(params)
                    walls.append(time.perf_counter() - s)
                cpus.append((cpu_seconds(proc.pid) - c0) / args.reps)
            print("%-10s server CPU %.3f ms/query (rounds: %s)   (client wall median %.3f ms)"
                  % (name, min(cpus) * 1000, " ".join("%.3f" % (c * 1000) for c in cpus),
                     statistics.median(walls) * 1000))
    finally:
        stop(proc)
    if args.profile:
        import pstats
        pstats.Stats(args.profile).sort_stats("tottime").print_stats(40)


if __name__ == "__main__":
    main()
