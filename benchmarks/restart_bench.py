"""Restart: time from open to ready of a head holding N active series with `--hours` of samples
at 15 s, for urdar before (a checkout of main, `--base`, which rebuilds chunks_head from the WAL)
and after (this checkout, which re-maps chunks_head), and for Debian's Prometheus over a TSDB
holding the same samples (written through its remote-write receiver, then restarted until
/-/ready). Prints wall and CPU seconds and the ratios.

The same samples are written once into urdar's head through the engine (Head.append_batch, as
the ingester does) and copied for each timed open, so every run starts from identical files.
urdar's figure is the head's open in a fresh interpreter (imports included, started to opened),
which is what the ingester waits for before /ready; Prometheus' is process start to /-/ready.

The machine is shared: CPU seconds (user+sys of the process) are the steadier figure.

    python benchmarks/restart_bench.py --series 20000 --runs 3      # quick
    python benchmarks/restart_bench.py                              # 1M series (long)
"""
import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from array import array

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

import cramjam  # noqa: E402

from urdar.engine.head import Head  # noqa: E402
from urdar.engine.labels import encode_labels, hash_key  # noqa: E402
from urdar.engine.remotewrite import encode_write_request  # noqa: E402

from ingest_bench import label_sets  # noqa: E402
from procs import free_port, stop, wait_http  # noqa: E402

STEP_MS = 15000
WINDOW = 40                 # samples per series per write (10 minutes at 15 s)
HEADERS = {"Content-Encoding": "snappy", "Content-Type": "application/x-protobuf",
           "X-Prometheus-Remote-Write-Version": "0.1.0"}

OPEN_CHILD = r"""
import resource, sys, time, json
t0 = time.monotonic()
sys.path.insert(0, sys.argv[1])
from urdar.engine.head import Head
h = Head(sys.argv[2])
wall = time.monotonic() - t0
ru = resource.getrusage(resource.RUSAGE_SELF)
stats = getattr(h, "replay_stats", None)
print(json.dumps({"wall": wall, "cpu": ru.ru_utime + ru.ru_stime, "series": h.num_series,
                  "maxrss_kb": ru.ru_maxrss, "stats": stats}))
h.close()
"""


def values_for(n):
    return array("d", [(i * 7919 % 1000) + 0.5 for i in range(n)])


def write_urdar(dir, sets, t0, rounds):
    keys = bytearray()
    koff = array("Q", [0])
    hashes = array("Q")
    for labels in sets:
        k = encode_labels(labels)
        keys += k
        koff.append(len(keys))
        hashes.append(hash_key(k))
    keys = bytes(keys)
    n = len(sets)
    base = values_for(n)
    h = Head(dir)
    per = 20000                                   # series per append_batch
    for r0 in range(0, rounds, WINDOW):
        w = min(WINDOW, rounds - r0)
        tw = array("q", [t0 + (r0 + k) * STEP_MS for k in range(w)])
        for a in range(0, n, per):
            b = min(a + per, n)
            sub_koff = array("Q", [x - koff[a] for x in koff[a:b + 1]])
            ts = array("q")
            vs = array("d")
            for i in range(a, b):
                ts.extend(tw)
                vs.extend([base[i] + r0 + k for k in range(w)])
            soff = array("Q", range(0, (b - a) * w + 1, w))
            out = bytearray(len(ts))
            h.append_batch(keys[koff[a]:koff[b]], sub_koff, hashes[a:b], soff, ts, vs, out)
            if out.count(0) != len(out):
                raise RuntimeError("urdar refused samples")
    h.close()


def write_prometheus(port, sets, t0, rounds):
    n = len(sets)
    base = values_for(n)
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    per = 1000
    for r0 in range(0, rounds, WINDOW):
        w = min(WINDOW, rounds - r0)
        for a in range(0, n, per):
            series = [(sets[i], [(t0 + (r0 + k) * STEP_MS, base[i] + r0 + k) for k in range(w)])
                      for i in range(a, min(a + per, n))]
            body = bytes(cramjam.snappy.compress_raw(encode_write_request(series)))
            c.request("POST", "/api/v1/write", body, HEADERS)
            resp = c.getresponse()
            data = resp.read()
            if resp.status // 100 != 2:
                raise RuntimeError("prometheus: %d %r" % (resp.status, data[:200]))


def prometheus_cmd(tmp, port):
    cfg = os.path.join(tmp, "prometheus.yml")
    with open(cfg, "w") as f:
        f.write("global:\n  scrape_interval: 1m\nscrape_configs: []\n")
    return [shutil.which("prometheus") or "/usr/bin/prometheus", "--config.file=" + cfg,
            "--storage.tsdb.path=" + os.path.join(tmp, "prometheus"),
            "--web.listen-address=127.0.0.1:%d" % port, "--web.enable-remote-write-receiver",
            "--log.level=warn"]


def proc_cpu_s(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def time_prometheus(tmp, port):
    log = open(os.path.join(tmp, "prometheus-restart.log"), "ab")
    t0 = time.monotonic()
    p = subprocess.Popen(prometheus_cmd(tmp, port), stdout=log, stderr=subprocess.STDOUT)
    deadline = t0 + 3600
    while time.monotonic() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/-/ready")
            if c.getresponse().status == 200:
                break
        except OSError:
            pass
        time.sleep(0.02)
    wall = time.monotonic() - t0
    cpu = proc_cpu_s(p.pid)
    stop(p)
    return wall, cpu


def time_urdar(checkout, data_dir, tmp):
    work = os.path.join(tmp, "open")
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(data_dir, work)
    subprocess.run(["sync"])
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-c", OPEN_CHILD, checkout, work], cwd=checkout,
                         check=True, capture_output=True, text=True)
    wall = time.monotonic() - t0
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r["wall_outer"] = wall
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--series", type=int, default=1_000_000)
    ap.add_argument("--hours", type=float, default=2.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--base", default="/work/wt/restart-base", help="checkout of main (built)")
    ap.add_argument("--no-prometheus", action="store_true")
    ap.add_argument("--port", type=int, default=0, help="Prometheus' port (default: a free one)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="urdar-restart-bench-")
    rounds = int(args.hours * 3600 * 1000 // STEP_MS)
    t0 = (int(time.time() * 1000) // STEP_MS) * STEP_MS - rounds * STEP_MS
    sets = label_sets(args.series)
    print("%d series x %d samples (%.1f h at 15 s) = %d samples" % (args.series, rounds, args.hours,
                                                                    args.series * rounds), flush=True)
    try:
        data = os.path.join(tmp, "urdar-head")
        t = time.monotonic()
        write_urdar(data, sets, t0, rounds)
        print("urdar: written in %.1fs; chunks_head %.1f MiB, wal %.1f MiB" % (
            time.monotonic() - t, du(os.path.join(data, "chunks_head")), du(os.path.join(data, "wal"))),
            flush=True)
        prom = None
        if not args.no_prometheus:
            port = args.port or free_port()
            log = open(os.path.join(tmp, "prometheus.log"), "wb")
            p = subprocess.Popen(prometheus_cmd(tmp, port), stdout=log, stderr=subprocess.STDOUT)
            wait_http(port, "/-/ready")
            t = time.monotonic()
            write_prometheus(port, sets, t0, rounds)
            print("prometheus: written in %.1fs" % (time.monotonic() - t), flush=True)
            stop(p, timeout_s=600)
            print("prometheus: chunks_head %.1f MiB, wal %.1f MiB" % (
                du(os.path.join(tmp, "prometheus", "chunks_head")), du(os.path.join(tmp, "prometheus", "wal"))),
                flush=True)
            prom = []
        after, before = [], []
        for run in range(args.runs):
            a = time_urdar(ROOT, data, tmp)
            after.append(a)
            b = time_urdar(args.base, data, tmp) if args.base else None
            if b:
                before.append(b)
            line = "run %d: urdar after %.2fs wall %.2fs cpu" % (run + 1, a["wall_outer"], a["cpu"])
            if b:
                line += "; before %.2fs wall %.2fs cpu" % (b["wall_outer"], b["cpu"])
            if prom is not None:
                prom.append(time_prometheus(tmp, port))
                line += "; prometheus %.2fs wall %.2fs cpu" % prom[-1]
            print(line, flush=True)
            if a["series"] != args.series or (b and b["series"] != args.series):
                raise RuntimeError("series after open: %s / %s" % (a["series"], b and b["series"]))
        print("urdar after: replay stats %s" % after[-1]["stats"])
        med = statistics.median
        aw, ac = med(r["wall_outer"] for r in after), med(r["cpu"] for r in after)
        print("\nmedians over %d runs (machine shared and loaded: compare CPU seconds first)" % args.runs)
        print("urdar after:  %.2fs wall, %.2fs cpu, max RSS %.0f MiB" % (aw, ac, med(r["maxrss_kb"] for r in after) / 1024))
        if before:
            bw, bc = med(r["wall_outer"] for r in before), med(r["cpu"] for r in before)
            print("urdar before: %.2fs wall, %.2fs cpu, max RSS %.0f MiB" % (bw, bc, med(r["maxrss_kb"] for r in before) / 1024))
            print("after/before: %.2fx wall, %.2fx cpu" % (aw / bw, ac / bc))
        if prom:
            pw, pc = med(w for w, _ in prom), med(c for _, c in prom)
            print("prometheus:   %.2fs wall, %.2fs cpu" % (pw, pc))
            print("urdar after/prometheus: %.2fx wall, %.2fx cpu" % (aw / pw, ac / pc))
            if before:
                print("urdar before/prometheus: %.2fx wall, %.2fx cpu" % (bw / pw, bc / pc))
    finally:
        if args.keep:
            print("kept", tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def du(path):
    total = 0
    for d, _, files in os.walk(path):
        for f in files:
            total += os.path.getsize(os.path.join(d, f))
    return total / 2 ** 20


if __name__ == "__main__":
    main()
