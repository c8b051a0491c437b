"""Ingest benchmark: remote-write samples/s into urdar and into Prometheus 2.42, same requests, same run.

Requests are pre-encoded before any clock starts: `--series` active series (default 100k, shaped
like node_exporter/kube targets, fixed seed) split into requests of `--per-request` series (2000)
with one sample each, snappy raw block, for `--rounds` scrape rounds 15 s apart. Round 0 creates
the series (reported separately); the figure is the steady state of the later rounds. Load comes
from `--connections` client processes, each with one persistent http.client connection, each
owning a fixed subset of the request slots so every series gets its samples in order. Before the
servers, the same clients run against a trivial 204 server to show the client is not the bound.

Servers: `python -m urdar` (WAL on, limits raised so nothing is refused; URDAR_CPU_PROFILE honoured
with --profile) and `prometheus --web.enable-remote-write-receiver` with a temporary TSDB.
Prints `name: value unit` lines and `ratio: R` (urdar / prometheus).

    python benchmarks/ingest_bench.py [--series 100000] [--rounds 6] [--connections 5] [--profile out.pprof]
"""
import argparse
import http.client
import multiprocessing as mp
import os
import random
import shutil
import socket
import sys
import tempfile
import threading
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

import cramjam  # noqa: E402

from urdar.engine.remotewrite import encode_write_request  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import procs  # noqa: E402
from procs import free_port, start_prometheus, stop  # noqa: E402

SCRAPE_MS = 15000
HEADERS = {"Content-Encoding": "snappy", "Content-Type": "application/x-protobuf",
           "X-Prometheus-Remote-Write-Version": "0.1.0", "X-Scope-OrgID": "bench",
           "User-Agent": "urdar-ingest-bench"}


def label_sets(n, seed=1):
    """n label sets shaped like node_exporter + kube targets (~8 labels)."""
    rnd = random.Random(seed)
    metrics = ["node_cpu_seconds_total", "node_memory_MemFree_bytes", "node_network_receive_bytes_total",
               "node_disk_io_time_seconds_total", "http_requests_total", "process_resident_memory_bytes",
               "go_goroutines", "up", "node_filesystem_avail_bytes", "http_request_duration_seconds_bucket"]
    out = []
    for i in range(n):
        m = metrics[i % len(metrics)]
        labels = [("__name__", m), ("cluster", "c%d" % (i % 3)),
                  ("instance", "10.%d.%d.%d:9100" % ((i // 65536) % 256, (i // 256) % 256, i % 256)),
                  ("job", "job-%d" % (i % 20)), ("namespace", "ns-%d" % (i % 50)),
                  ("pod", "pod-%d" % (i // 10)), ("region", ("eu", "us", "ap")[i % 3])]
        if m.endswith("_bucket"):
            labels.append(("le", ("0.1", "0.5", "1", "+Inf")[rnd.randrange(4)]))
        out.append(sorted(labels))
    return out


def build_requests(n_series, per_request, rounds, t0_ms, seed=1):
    """[round][slot] -> snappy-compressed WriteRequest bytes."""
    rnd = random.Random(seed)
    sets = label_sets(n_series, seed)
    values = [rnd.random() * 1000 for _ in range(n_series)]
    out = []
    for r in range(rounds):
        t = t0_ms + r * SCRAPE_MS
        row = []
        for a in range(0, n_series, per_request):
            series = [(sets[i], [(t, values[i] + r)]) for i in range(a, min(a + per_request, n_series))]
            row.append(bytes(cramjam.snappy.compress_raw(encode_write_request(series))))
        out.append(row)
    return out


# ---- load clients (one process per connection) --------------------------------------------------

def _client(port, path, bodies, start, ready, results, idx):
    """Send `bodies` in order over one keep-alive connection once `start` is set."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    conn.connect()
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    ready.release()
    start.wait()
    times, bad = [], 0
    for b in bodies:
        conn.request("POST", path, body=b, headers=HEADERS)
        resp = conn.getresponse()
        data = resp.read()
        if resp.status // 100 != 2:
            bad += 1
            if bad <= 3:
                print("  client %d: HTTP %d %s" % (idx, resp.status, data[:300]), file=sys.stderr)
        times.append(time.monotonic())
    conn.close()
    results.put((idx, times, bad))


def process_cpu_s(pid):
    """User+system CPU seconds a process has used (Linux /proc)."""
    if pid is None:
        return 0.0
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_load(port, path, rows, connections, samples_per_row, pid=None):
    """Send the request rows (each row = one round, sent in order) with `connections` processes.

    Returns [(round, seconds, samples, failed requests, server CPU s)] per round: every client
    finishes round r before any sends round r+1 (a barrier), so a round's time is the server's
    time for it; `pid` is the server's, for its CPU use."""
    out = []
    for r, row in enumerate(rows):
        ctx = mp.get_context("fork")
        start, ready, results = ctx.Event(), ctx.Semaphore(0), ctx.Queue()
        procs = []
        for c in range(connections):
            mine = row[c::connections]
            p = ctx.Process(target=_client, args=(port, path, mine, start, ready, results, c), daemon=True)
            p.start()
            procs.append(p)
        for _ in procs:
            ready.acquire()
        cpu0 = process_cpu_s(pid)
        t0 = time.monotonic()
        start.set()
        done = [results.get(timeout=600) for _ in procs]
        t1 = max(max(times) for _i, times, _bad in done if times)
        for p in procs:
            p.join()
        cpu = process_cpu_s(pid) - cpu0
        out.append((r, t1 - t0, samples_per_row, sum(bad for _i, _t, bad in done), cpu))
    return out


# ---- servers ------------------------------------------------------------------------------------

class NullServer:
    """The cheapest possible HTTP/1.1 receiver (reads the body, answers 204), in its own process:
    the ceiling of what the load clients can push."""

    def __init__(self):
        self.port = free_port()
        self.proc = mp.get_context("fork").Process(target=self._serve, args=(self.port,), daemon=True)
        self.proc.start()
        time.sleep(0.3)

    @staticmethod
    def _serve(port):
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", port))
        srv.listen(64)

        def handle(sock):
            f = sock.makefile("rb", buffering=1 << 20)
            while True:
                length = 0
                line = f.readline()
                if not line:
                    return
                while line not in (b"\r\n", b"\n", b""):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                    line = f.readline()
                f.read(length)
                sock.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")

        while True:
            s, _ = srv.accept()
            threading.Thread(target=handle, args=(s,), daemon=True).start()

    def stop(self):
        self.proc.terminate()
        self.proc.join()


def start_urdar(tmp, profile=None):
    env = dict(os.environ)
    if profile:
        env["URDAR_CPU_PROFILE"] = os.path.abspath(profile)
    return procs.start_urdar(tmp, env=env)


def report(name, rounds):
    create = rounds[0]
    steady = rounds[1:]
    secs = sum(r[1] for r in steady)
    samples = sum(r[2] for r in steady)
    failed = sum(r[3] for r in rounds)
    cpu = sum(r[4] for r in steady)
    rate = samples / secs if secs else 0.0
    print("%s: %.0f samples/s" % (name, rate))
    if cpu:
        print("%s_per_cpu_second: %.0f samples/s" % (name, samples / cpu))
    print("%s_series_creation: %.0f samples/s" % (name, create[2] / create[1]))
    print("%s_failed_requests: %d requests" % (name, failed))
    return rate


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--series", type=int, default=100_000)
    ap.add_argument("--per-request", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--connections", type=int, default=5)
    ap.add_argument("--profile", help="write urdar's CPU profile here (pprof) and to <path>.txt")
    ap.add_argument("--only", choices=("urdar", "prometheus"), help="benchmark one server only")
    args = ap.parse_args()
    if (args.series // args.per_request) % args.connections:
        ap.error("requests per round must be a multiple of --connections (series keep their order)")

    t0_ms = int(time.time() * 1000) - args.rounds * SCRAPE_MS
    t = time.monotonic()
    rows = build_requests(args.series, args.per_request, args.rounds, t0_ms)
    mb = sum(len(b) for row in rows for b in row) / 1e6
    print("requests: %d x %d series x 1 sample, %d rounds, %.1f MB snappy (encoded in %.1f s)" % (
        len(rows[0]), args.per_request, args.rounds, mb, time.monotonic() - t))
    print("connections: %d" % args.connections)

    null = NullServer()
    try:
        rounds = run_load(null.port, "/api/v1/push", rows, args.connections, args.series)
        report("client_capacity", rounds)
    finally:
        null.stop()

    rates = {}
    tmp = tempfile.mkdtemp(prefix="urdar-ingest-bench-")
    try:
        if args.only in (None, "urdar"):
            port, proc = start_urdar(tmp, args.profile)
            try:
                rates["urdar"] = report("urdar", run_load(port, "/api/v1/push", rows, args.connections,
                                                        args.series, proc.pid))
            finally:
                stop(proc)
        if args.only in (None, "prometheus"):
            port, proc = start_prometheus(tmp)
            try:
                rates["prometheus"] = report("prometheus", run_load(port, "/api/v1/write", rows,
                                                                   args.connections, args.series,
                                                                   proc.pid))
            finally:
                stop(proc)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if len(rates) == 2:
        print("ratio: %.2f" % (rates["urdar"] / rates["prometheus"]))


if __name__ == "__main__":
    main()
