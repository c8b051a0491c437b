"""Restart: process start to ready for an ingester holding N active series with `--hours` of
samples at 15 s, urdar (`python -m urdar`, start to /ready 200) against Debian's Prometheus
(start to /-/ready 200) over the same files.

The data is written once, fast, straight through urdar's engine (Head.append_batch, as the
ingester appends: every round one sample for each series, 20k series per batch) into a tenant
directory: wal/ plus the closed chunks in chunks_head/. Prometheus reads that directory as its
own (the engine tests check that a real Prometheus opens urdar-written WAL and chunks_head and
returns every sample), so both start from byte-identical files, set up afresh for every timed
start (not timed; the files stay in the page cache for both alike).

urdar runs `-target=ingester` by default (`--target all` for the monolith): the figure includes
the interpreter's start, imports and module set-up before the WAL replay, as a restarted
ingester pays them. `--base` times a second checkout (e.g. /work/main) over the same files.

The machine is shared: CPU seconds (user+sys of the server process until ready) are the steadier
figure; wall is printed with them, and `uptime` before and after.

    python benchmarks/restart_bench.py --series 20000 --runs 3          # quick
    python benchmarks/restart_bench.py --series 1000000 --hours 2       # the issue's figure
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

from urdar.engine.head import Head  # noqa: E402
from urdar.engine.labels import encode_labels, hash_key  # noqa: E402

from ingest_bench import label_sets  # noqa: E402
from procs import free_port  # noqa: E402

STEP_MS = 15000
PER_BATCH = 20000           # series per append_batch
TENANT = "bench"


def write_head(dir, sets, t0, rounds):
    """Every round one sample per series, as pushes/scrapes arrive; values like counters."""
    n = len(sets)
    groups = []
    for a in range(0, n, PER_BATCH):
        b = min(a + PER_BATCH, n)
        keys = bytearray()
        koff = array("Q", [0])
        hashes = array("Q")
        for labels in sets[a:b]:
            k = encode_labels(labels)
            keys += k
            koff.append(len(keys))
            hashes.append(hash_key(k))
        base = [float((i * 7919) % 100000) for i in range(a, b)]
        groups.append((bytes(keys), koff, hashes, array("Q", range(b - a + 1)), base))
    h = Head(dir)
    try:
        for r in range(rounds):
            t = t0 + r * STEP_MS
            for keys, koff, hashes, soff, base in groups:
                m = len(base)
                vs = array("d", [v + r for v in base])
                out = bytearray(m)
                h.append_batch(keys, koff, hashes, soff, array("q", [t]) * m, vs, out)
                if out.count(0) != m:
                    raise RuntimeError("urdar refused samples")
    finally:
        h.close()


def proc_stat(pid):
    """(CPU seconds user+sys, RSS MiB) of a running process."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    rss = int(fields[21]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    return cpu, rss


def time_to_ready(cmd, port, path, cwd, log_path, timeout_s=3600):
    """Start cmd, poll http://127.0.0.1:port/path until 200; (wall s, CPU s, RSS MiB). Killed after."""
    log = open(log_path, "ab")
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = t0 + timeout_s
        while True:
            if p.poll() is not None:
                raise RuntimeError("%s exited with %s (log %s)" % (cmd[0], p.returncode, log_path))
            if time.monotonic() > deadline:
                raise RuntimeError("%s not ready in %ds" % (cmd[0], timeout_s))
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                c.request("GET", path)
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.02)
        wall = time.monotonic() - t0
        cpu, rss = proc_stat(p.pid)
        return wall, cpu, rss
    finally:
        p.kill()        # the copy is thrown away: no need for a clean shutdown
        p.wait()
        log.close()


def fresh_copy(src, dst):
    """dst as a copy of src: the newest file of each directory copied (a server may append to
    or repair it), the others hard-linked (neither server writes to an older WAL segment or
    head chunk file; `unchanged` checks that afterwards), so a 6 GB dataset costs no copy."""
    shutil.rmtree(dst, ignore_errors=True)
    for d, subdirs, files in os.walk(src):
        out = os.path.join(dst, os.path.relpath(d, src))
        os.makedirs(out, exist_ok=True)
        newest = max(files) if files else None
        for f in files:
            if f == newest or not f.isdigit():
                shutil.copy2(os.path.join(d, f), os.path.join(out, f))
            else:
                os.link(os.path.join(d, f), os.path.join(out, f))


def fingerprint(src):
    """(path, size, mtime) of every file under src."""
    out = []
    for d, _, files in os.walk(src):
        for f in sorted(files):
            st = os.stat(os.path.join(d, f))
            out.append((os.path.join(d, f), st.st_size, st.st_mtime_ns))
    return sorted(out)


def time_urdar(checkout, data, tmp, target):
    d = os.path.join(tmp, "urdar-run")
    fresh_copy(data, os.path.join(d, "tsdb", TENANT))
    port = free_port()
    cmd = [sys.executable, "-m", "urdar", "-target=" + target,
           "-server.http-listen-address=127.0.0.1", "-server.http-listen-port=%d" % port,
           "-blocks-storage.tsdb.dir=" + os.path.join(d, "tsdb"),
           "-blocks-storage.filesystem.dir=" + os.path.join(d, "blocks"),
           "-blocks-storage.bucket-store.sync-dir=" + os.path.join(d, "sync"),
           "-compactor.data-dir=" + os.path.join(d, "compactor"),
           "-ingester.max-global-series-per-user=0", "-log.level=warn"]
    return time_to_ready(cmd, port, "/ready", checkout, os.path.join(tmp, "urdar.log"))


def time_prometheus(data, tmp):
    d = os.path.join(tmp, "prom-run")
    fresh_copy(data, os.path.join(d, "data"))
    cfg = os.path.join(tmp, "prometheus.yml")
    with open(cfg, "w") as f:
        f.write("global:\n  scrape_interval: 1m\nscrape_configs: []\n")
    port = free_port()
    cmd = [shutil.which("prometheus") or "/usr/bin/prometheus", "--config.file=" + cfg,
           "--storage.tsdb.path=" + os.path.join(d, "data"),
           "--web.listen-address=127.0.0.1:%d" % port, "--log.level=warn"]
    return time_to_ready(cmd, port, "/-/ready", tmp, os.path.join(tmp, "prometheus.log"))


def du(path):
    total = 0
    for d, _, files in os.walk(path):
        for f in files:
            total += os.path.getsize(os.path.join(d, f))
    return total / 2 ** 20


def uptime():
    with open("/proc/loadavg") as f:
        return "load average " + " ".join(f.read().split()[:3])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--series", type=int, default=1_000_000)
    ap.add_argument("--hours", type=float, default=2.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--target", default="ingester", help="urdar's -target (ingester or all)")
    ap.add_argument("--base", default="", help="a second built checkout to time (e.g. /work/main)")
    ap.add_argument("--no-prometheus", action="store_true")
    ap.add_argument("--data", default="", help="reuse (or create) the written tenant dir here")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="urdar-restart-bench-")
    rounds = int(args.hours * 3600 * 1000 // STEP_MS)
    print("%d series x %d samples (%.2f h at 15 s) = %d samples; %s" % (
        args.series, rounds, args.hours, args.series * rounds, uptime()), flush=True)
    try:
        data = args.data or os.path.join(tmp, "data")
        if not os.path.isdir(os.path.join(data, "wal")):
            t0 = (int(time.time() * 1000) // STEP_MS) * STEP_MS - rounds * STEP_MS
            t = time.monotonic()
            write_head(data, label_sets(args.series), t0, rounds)
            print("written in %.1fs" % (time.monotonic() - t), flush=True)
        print("data: chunks_head %.1f MiB, wal %.1f MiB" % (
            du(os.path.join(data, "chunks_head")), du(os.path.join(data, "wal"))), flush=True)
        before = fingerprint(data)
        who = [("urdar", lambda: time_urdar(ROOT, data, tmp, args.target))]
        if args.base:
            who.append(("base", lambda: time_urdar(args.base, data, tmp, args.target)))
        if not args.no_prometheus:
            who.append(("prometheus", lambda: time_prometheus(data, tmp)))
        res = {name: [] for name, _ in who}
        for run in range(args.runs):
            parts = []
            for name, fn in who:
                w, c, r = fn()
                res[name].append((w, c, r))
                parts.append("%s %.2fs wall %.2fs cpu %.0f MiB" % (name, w, c, r))
            print("run %d: %s; %s" % (run + 1, "; ".join(parts), uptime()), flush=True)
        if fingerprint(data) != before:
            raise RuntimeError("a server changed the shared data files: the runs did not start alike")
        med = statistics.median
        m = {name: tuple(med(x[i] for x in rs) for i in range(3)) for name, rs in res.items()}
        print("\nmedians over %d runs, start to ready (%s; shared machine: CPU is the steadier figure)"
              % (args.runs, uptime()))
        for name, (w, c, r) in m.items():
            print("%-11s %7.2fs wall %7.2fs cpu  RSS at ready %6.0f MiB" % (name + ":", w, c, r))
        if "prometheus" in m:
            pw, pc, _ = m["prometheus"]
            for name in m:
                if name != "prometheus":
                    print("%s/prometheus: %.2fx wall, %.2fx cpu" % (name, m[name][0] / pw, m[name][1] / pc))
        print(json.dumps({"series": args.series, "samples_per_series": rounds, "medians": m}))
    finally:
        if args.keep:
            print("kept", tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
