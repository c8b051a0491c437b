"""Cluster ingest benchmark: the same remote-write load pushed into one `-target=all` process and
through one `-target=distributor` into three `-target=ingester` processes with replication
factor 3 (ingester ring in a real etcd), same run.

Requests are pre-encoded before any clock starts: `--series` series split into requests of
`--per-request` series with one sample each, for `--rounds` rounds 15 s apart; round 0 creates the
series and is left out of the figures. `--connections` threads each own a fixed subset of the
requests (one keep-alive connection each). Figures per setup: samples/s of the steady rounds and
server CPU seconds (user + system of every urdar process of the setup, from /proc) per million
samples received; with RF 3 every sample is also stored three times.

    python benchmarks/cluster_bench.py [--series 30000] [--rounds 4] [--connections 4] [--profile out.pprof]
"""
import argparse
import http.client
import os
import shutil
import sys
import tempfile
import threading
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cramjam  # noqa: E402

import procs  # noqa: E402
from procs import start_urdar, stop  # noqa: E402
from urdar.engine.remotewrite import encode_write_request  # noqa: E402

HEADERS = {"Content-Encoding": "snappy", "Content-Type": "application/x-protobuf",
           "X-Prometheus-Remote-Write-Version": "0.1.0", "X-Scope-OrgID": "bench"}


def encode(series, per_request, rounds, t0_ms):
    """[round] -> [snappy WriteRequest bytes]."""
    out = []
    for r in range(rounds):
        t = t0_ms + r * 15000
        reqs = []
        for lo in range(0, series, per_request):
            reqs.append(cramjam.snappy.compress_raw(encode_write_request(
                [([("__name__", "bench_metric_%d" % (i % 10)), ("instance", "10.0.%d.%d:9100" % (i // 256 % 256, i % 256)),
                   ("job", "job-%d" % (i % 20)), ("pod", "pod-%d" % i)], [(t, float(r + i))])
                 for i in range(lo, min(series, lo + per_request))])).read())
        out.append(reqs)
    return out


def push_round(port, reqs, connections):
    """POST every request of one round from `connections` threads; raises on a non-200."""
    errors = []

    def worker(k):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        for body in reqs[k::connections]:
            c.request("POST", "/api/v1/push", body=body, headers=HEADERS)
            resp = c.getresponse()
            text = resp.read()
            if resp.status != 200:
                errors.append((resp.status, text[:200]))
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError("push failed: %s" % (errors[:3],))


def cpu_s(pids):
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def run(name, port, pids, rounds, connections, samples_per_round, roles=None):
    push_round(port, rounds[0], connections)     # creates the series
    c0, t0 = cpu_s(pids), time.monotonic()
    per0 = [cpu_s([p]) for p in pids]
    for reqs in rounds[1:]:
        push_round(port, reqs, connections)
    wall, cpu = time.monotonic() - t0, cpu_s(pids) - c0
    n = samples_per_round * (len(rounds) - 1)
    for role, pid, c in zip(roles or (), pids, per0):
        print("%s_%s_cpu_seconds_per_million_samples: %.2f" % (name, role, (cpu_s([pid]) - c) / n * 1e6))
    print("%s_samples_per_second: %.0f" % (name, n / wall))
    print("%s_cpu_seconds_per_million_samples: %.2f" % (name, cpu / n * 1e6))
    return n / wall, cpu / n * 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--series", type=int, default=30000)
    ap.add_argument("--per-request", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--profile", default="", help="CPU profile of the distributor to this path")
    args = ap.parse_args()
    t0_ms = int(time.time() * 1000) - 15000 * args.rounds
    rounds = encode(args.series, args.per_request, args.rounds, t0_ms)
    tmp = tempfile.mkdtemp(prefix="urdar-cluster-bench-")
    try:
        d = os.path.join(tmp, "mono")
        os.makedirs(d)
        port, proc = start_urdar(d)
        try:
            mono = run("monolithic", port, [proc.pid], rounds, args.connections, args.series)
        finally:
            stop(proc)

        sys.path.insert(0, ROOT)
        from tests.support.etcd import Etcd
        etcd = Etcd(tmp).start()
        started = []
        try:
            ring = ["-ingester.ring.store=etcd", "-ingester.ring.etcd.endpoints=" + etcd.endpoint,
                    "-ingester.ring.heartbeat-period=1s", "-ingester.ring.replication-factor=3",
                    "-distributor.remote-timeout=30s"]
            for k in range(3):
                d = os.path.join(tmp, "ing-%d" % k)
                os.makedirs(d)
                started.append(start_urdar(d, ("-target=ingester", "-ingester.ring.instance-id=ing-%d" % k,
                                               *ring)))
            d = os.path.join(tmp, "dist")
            os.makedirs(d)
            env = dict(os.environ, URDAR_CPU_PROFILE=os.path.abspath(args.profile)) if args.profile else None
            started.append(start_urdar(d, ("-target=distributor", *ring), env=env))
            dport = started[-1][0]
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:      # every ingester ACTIVE on the distributor's ring
                c = http.client.HTTPConnection("127.0.0.1", dport, timeout=5)
                c.request("GET", "/ingester/ring", headers={"Accept": "application/json"})
                if c.getresponse().read().count(b'"ACTIVE"') == 3:
                    break
                time.sleep(0.2)
            cluster = run("rf3_cluster", dport, [p.pid for _, p in started], rounds, args.connections,
                          args.series, ("ingester0", "ingester1", "ingester2", "distributor"))
        finally:
            for _, p in started:
                stop(p)
            etcd.stop()
        print("throughput_ratio: %.2f" % (cluster[0] / mono[0]))
        print("cpu_ratio: %.2f" % (cluster[1] / mono[1]))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    procs.ROOT = ROOT
    main()
