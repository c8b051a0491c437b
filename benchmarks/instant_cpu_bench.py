"""Fixed per-query cost of instant queries: server CPU time per query through the full HTTP path.

Wall-clock latency on a machine shared with other work moves with the load; the CPU time the
server process spends per query does not (much). This starts `python -m urdar` (-target=all,
query-frontend in front of the querier as in production), loads query_bench.py's data (42
instances: ~2,200 series, 1 h at 15 s), then for each query (two with almost no data, then every
query of query_bench.py) sends `--reps` sequential instant queries over one keep-alive
connection, `--rounds` times, and reports the server process' CPU time (utime + stime from
/proc/<pid>/stat) per query, the lowest round (other processes' load only adds to it), and the
client's median wall time for reference only.

    python benchmarks/instant_cpu_bench.py [--instances 42] [--reps 300] [--profile OUT]

--compare DIR runs DIR's urdar (another checkout, e.g. /work/main) side by side with the same
data, the rounds alternating between the two so the machine's load falls on both alike.

--profile OUT runs the server(s) under benchmarks/cpuprof_urdar.py: every thread (reactor and
pools) under cProfile with a per-thread CPU clock (time.thread_time). Around each round the
bench takes a snapshot and reports the profiled CPU time and the number of Python function
calls per query (the call count does not depend on the machine's load); the whole run's stats
go to OUT.this (and OUT.base) and the top functions by own CPU time are printed.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from procs import start_urdar, stop  # noqa: E402
from query_bench import (QUERIES as QUERY_BENCH_QUERIES, Client, build_requests,  # noqa: E402
                         build_series, load, wait_loaded, SCRAPE_MS)

# The fixed cost alone (absent: no series; selector: one), then every query of query_bench.py.
QUERIES = [
    ("absent", 'absent(nonexistent_metric{job="nope"})'),
    ("selector", 'node_memory_usage_bytes{instance="host-007"}'),
] + list(QUERY_BENCH_QUERIES)


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of the line (11 and 12 after the command).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def snapshot(proc, prefix, counter):
    """pstats.Stats of the profiled server so far (benchmarks/cpuprof_urdar.py's SIGUSR1)."""
    import pstats
    import signal
    counter[proc.pid] = n = counter.get(proc.pid, 0) + 1
    path = "%s.%d" % (prefix, n)
    os.kill(proc.pid, signal.SIGUSR1)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if os.path.exists(path):
            time.sleep(0.2)         # written at once, but let it finish
            return pstats.Stats(path)
        time.sleep(0.05)
    raise RuntimeError("no profile snapshot %s" % path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--instances", type=int, default=42)
    ap.add_argument("--reps", type=int, default=300)
    ap.add_argument("--profile", default="")
    ap.add_argument("--extra", action="append", default=[], help="more urdar flags")
    ap.add_argument("--only", default="", help="comma-separated query names to run")
    ap.add_argument("--rounds", type=int, default=3, help="the lowest of this many rounds")
    ap.add_argument("--compare", default="", help="another checkout (e.g. /work/main): its "
                    "urdar runs side by side, rounds alternate between the two")
    args = ap.parse_args()
    n_points = 240
    now_ms = int(time.time() * 1000) // 60_000 * 60_000
    t0 = now_ms - n_points * SCRAPE_MS
    series = build_series(args.instances, n_points, t0)
    reqs = build_requests(series, n_points)
    tmp = tempfile.mkdtemp(prefix="urdar-instant-bench-")
    entry = ("-m", "urdar")
    envs = [dict(os.environ), dict(os.environ)]
    if args.profile:
        entry = (os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpuprof_urdar.py"),)
        for env, label in zip(envs, ("this", "base")):
            env["URDAR_CPUPROF"] = os.path.abspath(args.profile) + "." + label
    flags = ("-query-frontend.cache-results=false", *args.extra)
    servers = [("this", start_urdar(tmp, flags, env=envs[0], entry=entry))]
    if args.compare:
        tmp2 = tempfile.mkdtemp(prefix="urdar-instant-bench-base-")
        servers.append(("base", start_urdar(tmp2, flags, env=envs[1], entry=entry,
                                            root=os.path.abspath(args.compare))))
    try:
        last = max(ts[-1] for _, ts, _ in series)
        clients = []
        for _, (port, _) in servers:
            client = Client(port, "/prometheus")
            load(client, "/api/v1/push", reqs)
            wait_loaded(client, last, len(series), len(series) * n_points,
                        n_points * SCRAPE_MS // 1000)
            clients.append(client)
        t = "%.3f" % (last / 1000)
        snaps = {}
        print("%d series, %d reps per query, lowest of %d rounds" % (len(series), args.reps,
                                                                      args.rounds))
        for name, q in QUERIES:
            if args.only and name not in args.only.split(","):
                continue
            params = {"query": q, "time": t}
            cpus = [[] for _ in servers]
            profiled = [[] for _ in servers]
            walls = [[] for _ in servers]
            for client in clients:
                for _ in range(20):
                    client.query(params)
            for _ in range(args.rounds):
                # Rounds alternate between the servers, so the machine's load falls on both.
                for k, ((label, (_, proc)), client) in enumerate(zip(servers, clients)):
                    if args.profile:
                        before = snapshot(proc, envs[k]["URDAR_CPUPROF"], snaps)
                    c0 = cpu_seconds(proc.pid)
                    for _ in range(args.reps):
                        s = time.perf_counter()
                        client.query(params)
                        walls[k].append(time.perf_counter() - s)
                    cpus[k].append((cpu_seconds(proc.pid) - c0) / args.reps)
                    if args.profile:
                        after = snapshot(proc, envs[k]["URDAR_CPUPROF"], snaps)
                        profiled[k].append(((after.total_tt - before.total_tt) / args.reps,
                                            (after.total_calls - before.total_calls) / args.reps))
            for k, (label, _) in enumerate(servers):
                extra = ""
                if args.profile:
                    tt, calls = min(profiled[k])
                    extra = ";  cProfile: %.3f ms CPU, %d calls per query" % (tt * 1000, calls)
                print("%-10s %-4s server CPU %.3f ms/query (rounds: %s)   (client wall median "
                      "%.3f ms)%s" % (name, label, min(cpus[k]) * 1000,
                                      " ".join("%.3f" % (c * 1000) for c in cpus[k]),
                                      statistics.median(walls[k]) * 1000, extra))
    finally:
        for _, (_, proc) in servers:
            stop(proc)
    if args.profile:
        import pstats
        pstats.Stats(envs[0]["URDAR_CPUPROF"]).sort_stats("tottime").print_stats(30)


if __name__ == "__main__":
    main()
