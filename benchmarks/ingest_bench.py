"""Ingest benchmark: remote-write samples/s into urdar and into Prometheus 2.42, same requests, same run.

Requests are pre-encoded before any clock starts: `--series` active series (default 100k, shaped
like node_exporter/kube targets, fixed seed) split into requests of `--per-request` series (2000)
with one sample each, snappy raw block, for `--rounds` scrape rounds 15 s apart. Round 0 creates
the series (reported separately); the figure is the steady state of the later rounds. Load comes
from `--connections` client processes, each with one persistent http.client connection, each
owning a fixed subset of the request slots so every series gets its samples in order. Before the
servers, the same clients run against a trivial 204 server to show the client is not the bound.

`--fleet` is the shape of many small Prometheus servers: `--fleet-connections` (500) concurrent
keep-alive connections, each owning `--fleet-series` (500) series and sending them as one request
of 500 series x 1 sample per round. The connections are multiplexed over `--fleet-procs` client
processes (non-blocking sockets under a selector), so the client is not the bound (its capacity
against a trivial multiplexed 204 server is printed first). Steady rounds alternate between that
shape (A) and the same samples split into `--fleet-split` requests per connection (B): the server
CPU B costs beyond A, over the extra requests, is the fixed CPU per request (HTTP parsing, tenant,
limits, offload hop, response); the rest of A's CPU over its samples is the CPU per sample.
urdar's main thread is its reactor: its CPU per request (A, and B - A) is the serial part.

Servers: `python -m urdar` (WAL on, limits raised so nothing is refused; URDAR_CPU_PROFILE honoured
with --profile) and `prometheus --web.enable-remote-write-receiver` with a temporary TSDB.
Prints `name: value unit` lines and `ratio: R` (urdar / prometheus).

    python benchmarks/ingest_bench.py [--series 100000] [--rounds 6] [--connections 5] [--profile out.pprof]
    python benchmarks/ingest_bench.py --fleet [--fleet-connections 500] [--fleet-series 500] [--rounds 7]
"""
import argparse
import http.client
import multiprocessing as mp
import os
import random
import selectors
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


def process_cpu_s(pid, tid=None):
    """User+system CPU seconds a process (or its thread `tid`) has used (Linux /proc)."""
    if pid is None:
        return 0.0
    path = "/proc/%d/stat" % pid if tid is None else "/proc/%d/task/%d/stat" % (pid, tid)
    with open(path) as f:
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


def start_urdar(tmp, profile=None, cprofile=None, root=None):
    """urdar for the benchmark; `profile`: the sampled CPU profile (pprof + text), `cprofile`:
    every thread under cProfile (benchmarks/cpuprof_urdar.py; slow, for call counts); `root`:
    another checkout whose urdar runs (same client, same requests: before/after figures)."""
    env = dict(os.environ)
    root = os.path.abspath(root or ROOT)
    if profile:
        env["URDAR_CPU_PROFILE"] = os.path.abspath(profile)
    if cprofile:
        env["URDAR_CPUPROF"] = os.path.abspath(cprofile)
        return procs.start_urdar(tmp, env=env, root=root,
                                 entry=(os.path.join(ROOT, "benchmarks", "cpuprof_urdar.py"),))
    return procs.start_urdar(tmp, env=env, root=root)


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


# ---- fleet shape: many connections multiplexed per client process ------------------------------

def _request_head(path, n):
    return ("POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\n" % path).encode() + b"".join(
        b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in HEADERS.items()) + \
        b"Content-Length: %d\r\n\r\n" % n


class _Conn:
    """One keep-alive connection of a fleet client: sends its queue of bodies one at a time and
    reads each answer (Content-Length bodies only, as urdar and Prometheus answer pushes)."""
    __slots__ = ("sock", "queue", "out", "inbuf", "bad", "done", "port")

    def __init__(self, port):
        self.port = port
        self.sock = None
        self.connect()

    def connect(self):
        if self.sock is not None:
            self.sock.close()
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=120)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)

    def next(self, path):
        """Queue the next request's bytes; False when the queue is empty."""
        if not self.queue:
            return False
        body = self.queue.pop()
        self.out = memoryview(_request_head(path, len(body)) + body)
        self.inbuf = b""
        return True

    def answer(self):
        """(status, close) of a complete answer in inbuf, or None while it is incomplete."""
        end = self.inbuf.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = self.inbuf[:end].split(b"\r\n")
        length, close = 0, False
        for line in head[1:]:
            k, _, v = line.partition(b":")
            k = k.strip().lower()
            if k == b"content-length":
                length = int(v)
            elif k == b"transfer-encoding":
                raise RuntimeError("chunked answer: %r" % self.inbuf[:300])
            elif k == b"connection" and v.strip().lower() == b"close":
                close = True
        if len(self.inbuf) < end + 4 + length:
            return None
        return int(head[0].split()[1]), close


def _fleet_worker(port, path, slots, pipe):
    """Client process: open every connection of `slots` ([conn][round] -> [bodies]) once, then
    run each round the parent asks for (all connections at once) and report (end time, failed)."""
    conns = [_Conn(port) for _ in slots]
    sel = selectors.DefaultSelector()
    pipe.send("ready")
    while True:
        r = pipe.recv()
        if r is None:
            break
        active = 0
        for c, rounds in zip(conns, slots):
            c.queue = list(reversed(rounds[r]))
            c.bad = 0
            if c.next(path):
                sel.register(c.sock, selectors.EVENT_WRITE, c)
                active += 1
        end = time.monotonic()
        while active:
            for key, ev in sel.select(120):
                c = key.data
                if ev & selectors.EVENT_WRITE:
                    try:
                        n = c.sock.send(c.out)
                    except BlockingIOError:
                        n = 0
                    c.out = c.out[n:]
                    if not len(c.out):
                        sel.modify(c.sock, selectors.EVENT_READ, c)
                    continue
                try:
                    data = c.sock.recv(65536)
                except BlockingIOError:
                    continue
                if not data:
                    raise RuntimeError("server closed a connection")
                c.inbuf += data
                got = c.answer()
                if got is None:
                    continue
                status, close = got
                if status // 100 != 2:
                    c.bad += 1
                    if c.bad <= 1:
                        print("  fleet client: HTTP %d %r" % (status, c.inbuf[:300]), file=sys.stderr)
                if close:
                    sel.unregister(c.sock)
                    c.connect()
                    sel.register(c.sock, selectors.EVENT_WRITE, c)
                if c.next(path):
                    sel.modify(c.sock, selectors.EVENT_WRITE, c)
                else:
                    sel.unregister(c.sock)
                    active -= 1
                    end = time.monotonic()
        pipe.send((end, sum(c.bad for c in conns)))
    for c in conns:
        c.sock.close()


def build_fleet(connections, per_conn, rounds, split, t0_ms, seed=1):
    """[conn][round] -> [snappy bodies]: round 0 and odd rounds one request of the connection's
    `per_conn` series (A), even rounds from 2 on the same series in `split` requests (B)."""
    rnd = random.Random(seed)
    sets = label_sets(connections * per_conn, seed)
    values = [rnd.random() * 1000 for _ in sets]
    step = -(-per_conn // split)
    out = []
    for c in range(connections):
        mine = range(c * per_conn, (c + 1) * per_conn)
        row = []
        for r in range(rounds):
            t = t0_ms + r * SCRAPE_MS
            series = [(sets[i], [(t, values[i] + r)]) for i in mine]
            parts = [series] if r % 2 or r == 0 else \
                [series[a:a + step] for a in range(0, per_conn, step)]
            row.append([bytes(cramjam.snappy.compress_raw(encode_write_request(p))) for p in parts])
        out.append(row)
    return out


def run_fleet(port, path, slots, procs_n, pid=None):
    """Run every round of `slots` over persistent connections spread across `procs_n` client
    processes; [(round, seconds, samples, failed requests, server CPU s, requests, CPU s of the
    server's main thread)] per round (urdar's main thread is its reactor)."""
    ctx = mp.get_context("fork")
    workers = []
    try:
        for w in range(procs_n):
            mine = slots[w::procs_n]
            if not mine:
                continue
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_fleet_worker, args=(port, path, mine, child), daemon=True)
            p.start()
            workers.append((p, parent))
        for p, pipe in workers:
            if not pipe.poll(120) or pipe.recv() != "ready":
                raise RuntimeError("fleet client did not start")
        out = []
        for r in range(len(slots[0])):
            samples = sum(_samples_in(b) for row in slots for b in row[r])
            requests = sum(len(row[r]) for row in slots)
            cpu0, main0 = process_cpu_s(pid), process_cpu_s(pid, pid)
            t0 = time.monotonic()
            for _p, pipe in workers:
                pipe.send(r)
            done = []
            for _p, pipe in workers:
                if not pipe.poll(600):
                    raise RuntimeError("fleet client stuck in round %d" % r)
                done.append(pipe.recv())
            t1 = max(end for end, _bad in done)
            cpu, main = process_cpu_s(pid) - cpu0, process_cpu_s(pid, pid) - main0
            out.append((r, t1 - t0, samples, sum(bad for _end, bad in done), cpu, requests, main))
        return out
    finally:
        for p, pipe in workers:
            try:
                pipe.send(None)
            except OSError:
                pass
        for p, _pipe in workers:
            p.join(10)
            if p.is_alive():
                p.terminate()


_SAMPLES = {}


def _samples_in(body):
    """Samples in a snappy WriteRequest body built by build_fleet (1 sample per series)."""
    n = _SAMPLES.get(id(body))
    if n is None:
        from urdar.engine.remotewrite import decode
        n = _SAMPLES[id(body)] = decode(memoryview(cramjam.snappy.decompress_raw(body))).n_samples
    return n


class FleetNullServer:
    """A trivial multiplexed HTTP/1.1 receiver (reads bodies, answers 204): one selector loop per
    process on a shared SO_REUSEPORT port, two processes (one per core)."""

    def __init__(self, procs_n=2):
        self.port = free_port()
        ctx = mp.get_context("fork")
        self.procs = [ctx.Process(target=self._serve, args=(self.port,), daemon=True)
                      for _ in range(procs_n)]
        for p in self.procs:
            p.start()
        time.sleep(0.3)

    @staticmethod
    def _serve(port):
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        srv.bind(("127.0.0.1", port))
        srv.listen(1024)
        srv.setblocking(False)
        sel = selectors.DefaultSelector()
        sel.register(srv, selectors.EVENT_READ, None)
        bufs = {}
        while True:
            for key, _ev in sel.select():
                if key.data is None:
                    try:
                        s, _ = srv.accept()
                    except BlockingIOError:
                        continue
                    s.setblocking(False)
                    bufs[s] = b""
                    sel.register(s, selectors.EVENT_READ, s)
                    continue
                s = key.data
                try:
                    data = s.recv(1 << 20)
                except BlockingIOError:
                    continue
                if not data:
                    sel.unregister(s)
                    s.close()
                    del bufs[s]
                    continue
                buf = bufs[s] + data
                while True:
                    end = buf.find(b"\r\n\r\n")
                    if end < 0:
                        break
                    i = buf.lower().find(b"content-length:", 0, end)
                    length = int(buf[i + 15:buf.find(b"\r\n", i)]) if i >= 0 else 0
                    if len(buf) < end + 4 + length:
                        break
                    buf = buf[end + 4 + length:]
                    s.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")
                bufs[s] = buf

    def stop(self):
        for p in self.procs:
            p.terminate()
            p.join()


def fleet_report(name, rounds, split, reactor=False):
    """The fleet figures of one server: shape A's rate and CPU, and the per-request/per-sample
    split from the A and B rounds' CPU; `reactor`: the main thread is a reactor, whose CPU per
    request (A, and B - A) is printed too (the part of the fixed cost that is serial)."""
    a = [r for r in rounds[1:] if r[0] % 2]
    b = [r for r in rounds[1:] if not r[0] % 2]
    failed = sum(r[3] for r in rounds)
    secs, samples, cpu, reqs = (sum(r[i] for r in a) for i in (1, 2, 4, 5))
    rate = samples / secs if secs else 0.0
    print("%s: %.0f samples/s (%d requests/s)" % (name, rate, reqs / secs if secs else 0))
    print("%s_series_creation: %.0f samples/s" % (name, rounds[0][2] / rounds[0][1]))
    print("%s_failed_requests: %d requests" % (name, failed))
    if cpu and b:
        print("%s_per_cpu_second: %.0f samples/s" % (name, samples / cpu))
        # per-round means, so A and B weigh the same however many of each ran
        ca, ra, sa = cpu / len(a), reqs / len(a), samples / len(a)
        cb, rb = sum(r[4] for r in b) / len(b), sum(r[5] for r in b) / len(b)
        fixed = (cb - ca) / (rb - ra) if rb > ra else 0.0
        per_sample = (ca - fixed * ra) / sa
        print("%s_cpu_per_request: %.1f us (A: %d series/request)" % (name, ca / ra * 1e6, sa / ra))
        print("%s_fixed_cpu_per_request: %.1f us (B - A over %d extra requests/round, %d-way split)"
              % (name, fixed * 1e6, rb - ra, split))
        print("%s_cpu_per_sample: %.3f us (the rest of A)" % (name, per_sample * 1e6))
        print("%s_fixed_share: %.0f %% of A's CPU" % (name, 100.0 * fixed * ra / ca if ca else 0))
        if reactor:
            ma, mb = sum(r[6] for r in a) / len(a), sum(r[6] for r in b) / len(b)
            print("%s_reactor_cpu_per_request: %.1f us (A), fixed %.1f us (B - A); reactor %.0f %% "
                  "of A's CPU" % (name, ma / ra * 1e6, (mb - ma) / (rb - ra) * 1e6 if rb > ra else 0,
                                  100.0 * ma / ca if ca else 0))
    return rate


def main_fleet(args):
    t0_ms = int(time.time() * 1000) - args.rounds * SCRAPE_MS
    t = time.monotonic()
    slots = build_fleet(args.fleet_connections, args.fleet_series, args.rounds, args.fleet_split, t0_ms)
    mb = sum(len(b) for row in slots for rr in row for b in rr) / 1e6
    print("fleet: %d connections x %d series x 1 sample per request, %d rounds (A/B split %d), "
          "%d client processes, %.1f MB snappy (encoded in %.1f s)" % (
              args.fleet_connections, args.fleet_series, args.rounds, args.fleet_split,
              args.fleet_procs, mb, time.monotonic() - t))
    null = FleetNullServer()
    try:
        rounds = run_fleet(null.port, "/api/v1/push", slots, args.fleet_procs)
        a = [r for r in rounds[1:] if r[0] % 2]
        print("client_capacity: %.0f samples/s (%d requests/s)" % (
            sum(r[2] for r in a) / sum(r[1] for r in a), sum(r[5] for r in a) / sum(r[1] for r in a)))
    finally:
        null.stop()
    rates = {}
    tmp = tempfile.mkdtemp(prefix="urdar-fleet-bench-")
    try:
        if args.only in (None, "urdar"):
            port, proc = start_urdar(tmp, args.profile, args.cprofile, args.urdar_root)
            try:
                rates["urdar"] = fleet_report("urdar", run_fleet(
                    port, "/api/v1/push", slots, args.fleet_procs, proc.pid), args.fleet_split,
                    reactor=True)
            finally:
                stop(proc)
        if args.only in (None, "prometheus"):
            port, proc = start_prometheus(tmp)
            try:
                rates["prometheus"] = fleet_report("prometheus", run_fleet(
                    port, "/api/v1/write", slots, args.fleet_procs, proc.pid), args.fleet_split)
            finally:
                stop(proc)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if len(rates) == 2:
        print("ratio: %.2f" % (rates["urdar"] / rates["prometheus"]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--series", type=int, default=100_000)
    ap.add_argument("--per-request", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--connections", type=int, default=5)
    ap.add_argument("--profile", help="write urdar's CPU profile here (pprof) and to <path>.txt")
    ap.add_argument("--cprofile", help="run urdar under cProfile (benchmarks/cpuprof_urdar.py) and "
                    "write its pstats here: Python calls per request")
    ap.add_argument("--urdar-root", help="run the urdar of this checkout instead (built in place)")
    ap.add_argument("--only", choices=("urdar", "prometheus"), help="benchmark one server only")
    ap.add_argument("--fleet", action="store_true", help="the fleet shape (see above) instead")
    ap.add_argument("--fleet-connections", type=int, default=500)
    ap.add_argument("--fleet-series", type=int, default=500, help="series per connection")
    ap.add_argument("--fleet-split", type=int, default=10, help="requests per connection in B rounds")
    ap.add_argument("--fleet-procs", type=int, default=4, help="client processes")
    args = ap.parse_args()
    if args.fleet:
        if args.rounds < 3:
            ap.error("--fleet needs at least 3 rounds (creation, one A, one B)")
        return main_fleet(args)
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
            port, proc = start_urdar(tmp, args.profile, root=args.urdar_root)
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
