"""Engine benchmark: append rate, head memory per series, block size, select latency.

Prints `name: value unit` lines. The block-size figure is set beside promtool's block for
the same samples (Debian's prometheus package), written in the same run. Fixed seeds.

    python benchmarks/engine_bench.py [--series 100000] [--select-series 1000000]
"""
import argparse
import gc
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from array import array

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from urdar.engine.head import Head  # noqa: E402
from urdar.engine.labels import encode_labels, hash_key  # noqa: E402
from urdar.engine.matchers import Matcher  # noqa: E402
from urdar.engine.tsdb import TSDB  # noqa: E402
from urdar.profiling import contention  # noqa: E402

HOUR = 3600 * 1000
SCRAPE_MS = 15000
BATCH = 2000


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def node_like_series(n, seed=1):
    """n label sets shaped like node_exporter + kube targets: ~8 labels, realistic cardinalities."""
    rnd = random.Random(seed)
    metrics = ["node_cpu_seconds_total", "node_memory_MemFree_bytes", "node_network_receive_bytes_total",
               "node_disk_io_time_seconds_total", "http_requests_total", "process_resident_memory_bytes",
               "go_goroutines", "up", "node_filesystem_avail_bytes", "http_request_duration_seconds_bucket"]
    out = []
    for i in range(n):
        m = metrics[i % len(metrics)]
        labels = {"__name__": m, "job": "job-%d" % (i % 20), "instance": "10.%d.%d.%d:9100" % (
            (i // 65536) % 256, (i // 256) % 256, i % 256), "cluster": "c%d" % (i % 3),
            "namespace": "ns-%d" % (i % 50), "pod": "pod-%d" % (i // 10), "region": ("eu", "us", "ap")[i % 3]}
        if m.endswith("_bucket"):
            labels["le"] = ("0.1", "0.5", "1", "+Inf")[rnd.randrange(4)]
        out.append(labels)
    return out


class Batches:
    """Pre-encoded append_batch columns: the series split into batches of BATCH series."""

    def __init__(self, label_sets):
        self.groups = []
        for a in range(0, len(label_sets), BATCH):
            keys = bytearray()
            koff = array("Q", [0])
            hashes = array("Q")
            for labels in label_sets[a:a + BATCH]:
                k = encode_labels(labels.items())
                keys += k
                koff.append(len(keys))
                hashes.append(hash_key(k))
            n = len(koff) - 1
            self.groups.append((bytes(keys), koff, hashes, array("Q", range(n + 1)), n))

    def values(self, rnd, n, t):
        return array("d", [rnd.random() * 100.0 + (t // 1000) for _ in range(n)])


def bench_append(n_series, rounds, workdir):
    label_sets = node_like_series(n_series)
    b = Batches(label_sets)
    rnd = random.Random(7)
    head = Head(os.path.join(workdir, "append"))
    # warm up: create every series (not timed), then time steady-state rounds
    t0 = 0
    vals = [[b.values(rnd, n, 0) for (_, _, _, _, n) in b.groups] for _ in range(4)]
    for keys, koff, hashes, soff, n in b.groups:
        head.append_batch(keys, koff, hashes, soff, array("q", [t0] * n), vals[0][0][:n], bytearray(n))
    gc.collect()
    total = 0
    elapsed = 0.0
    for r in range(1, rounds + 1):
        t = r * SCRAPE_MS
        cols = [(g, array("q", [t] * g[4]), vals[r % 4][i]) for i, g in enumerate(b.groups)]
        start = time.perf_counter()
        for (keys, koff, hashes, soff, n), ts, vs in cols:
            ok, _ = head.append_batch(keys, koff, hashes, soff, ts, vs[:n], bytearray(n))
            total += ok
        elapsed += time.perf_counter() - start
    head.close()
    return total / elapsed


def bench_append_parallel(n_series, rounds, workdir, threads):
    """Steady-state appends from `threads` threads at once into one head, each thread its own
    share of the batches (as remote-write shards split series): (samples/s wall, samples per
    CPU-second of the process, CPU seconds per wall second = cores kept busy, seconds the
    threads waited for the head's urdar locks (profiling.contention's block profile))."""
    label_sets = node_like_series(n_series)
    b = Batches(label_sets)
    rnd = random.Random(7)
    head = Head(os.path.join(workdir, "append-par-%d" % threads))
    vals = [[b.values(rnd, n, 0) for (_, _, _, _, n) in b.groups] for _ in range(4)]
    for keys, koff, hashes, soff, n in b.groups:
        head.append_batch(keys, koff, hashes, soff, array("q", [0] * n), vals[0][0][:n], bytearray(n))
    gc.collect()
    done = [0] * threads
    start_line = threading.Barrier(threads + 1)

    def work(k):
        start_line.wait()
        for r in range(1, rounds + 1):
            t = r * SCRAPE_MS
            for i in range(k, len(b.groups), threads):
                keys, koff, hashes, soff, n = b.groups[i]
                ok, _ = head.append_batch(keys, koff, hashes, soff, array("q", [t] * n),
                                          vals[r % 4][i][:n], bytearray(n))
                done[k] += ok

    pool = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    contention.reset()
    contention.enable()
    for th in pool:
        th.start()
    cpu0 = time.process_time()
    wall0 = time.perf_counter()
    start_line.wait()
    for th in pool:
        th.join()
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0
    contention.disable()
    waited = sum(ns for _, ns in contention.snapshot("block").values()) / 1e9
    head.close()
    return sum(done) / wall, sum(done) / cpu, cpu / wall, waited


def bench_head_memory(n_series, workdir):
    label_sets = node_like_series(n_series, seed=3)
    b = Batches(label_sets)
    rnd = random.Random(11)
    gc.collect()
    before = rss_bytes()
    head = Head(os.path.join(workdir, "memory"))
    for r in range(120):
        t = r * SCRAPE_MS
        for keys, koff, hashes, soff, n in b.groups:
            vs = array("d", [float(int(rnd.random() * 1000)) for _ in range(n)])
            head.append_batch(keys, koff, hashes, soff, array("q", [t] * n), vs, bytearray(n))
    gc.collect()
    after = rss_bytes()
    parts = head.memory_stats()
    head.close()
    # where the bytes go (allocated sizes; RSS growth also holds the heap's free holes)
    for k, v in parts.items():
        if k not in ("series", "compact_keys", "index_symbols", "index_postings_lists_n",
                     "index_postings_singletons"):
            print("  head %s: %.1f bytes/series" % (k, v / n_series))
    return (after - before) / n_series


def memory_in_subprocess(n_series, show_parts):
    """bench_head_memory in a fresh interpreter (its table of parts passed through if asked)."""
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--memory-only", "--series",
                          str(n_series)], check=True, stdout=subprocess.PIPE, text=True).stdout
    figure = None
    for line in out.splitlines():
        if line.startswith("head bytes/series:"):
            figure = int(line.split(":")[1])
        elif show_parts:
            print(line, flush=True)
    assert figure is not None, out
    return figure


def realistic_samples(n_series, seed=5):
    """(labels, [(t, v)]) for 2h at 15s: counters with jitter, gauges random-walking, constants."""
    rnd = random.Random(seed)
    out = []
    for i, labels in enumerate(node_like_series(n_series, seed)):
        kind = i % 3
        v = float(rnd.randrange(1000))
        samples = []
        for k in range(480):
            t = k * SCRAPE_MS + rnd.randrange(-20, 20) + 60000
            if kind == 0:
                v += float(rnd.randrange(0, 50))
            elif kind == 1:
                v = round(v + rnd.gauss(0, 5), 2)
            samples.append((t, v))
        out.append((labels, samples))
    return out


def go_float(v):
    return repr(v) if v == v else "NaN"


def block_size(path):
    total = os.path.getsize(os.path.join(path, "index"))
    for f in os.listdir(os.path.join(path, "chunks")):
        total += os.path.getsize(os.path.join(path, "chunks", f))
    return total


def bench_blocks(n_series, workdir):
    data = realistic_samples(n_series)
    nsamples = sum(len(s) for _, s in data)
    db = TSDB(os.path.join(workdir, "blocks"))
    b = Batches([labels for labels, _ in data])
    for k in range(len(data[0][1])):  # scrape by scrape, as a Prometheus pushes
        for g, (keys, koff, hashes, soff, n) in enumerate(b.groups):
            rows = data[g * BATCH:g * BATCH + n]
            ts = array("q", [s[k][0] for _, s in rows])
            vs = array("d", [s[k][1] for _, s in rows])
            ok, _ = db.append_batch(keys, koff, hashes, soff, ts, vs, bytearray(n))
            assert ok == n, "samples refused while loading the block benchmark"
    ulids = db.cut_blocks(force=True)
    ours = sum(block_size(os.path.join(db.dir, u)) for u in ulids)
    db.close()
    result = {"urdar": ours / nsamples}
    promtool = shutil.which("promtool")
    if promtool:
        om = os.path.join(workdir, "data.om")
        with open(om, "w") as f:
            for labels, samples in data:
                name = labels["__name__"]
                rest = ",".join('%s="%s"' % (k, v) for k, v in sorted(labels.items()) if k != "__name__")
                for t, v in samples:
                    f.write("%s{%s} %s %s\n" % (name, rest, go_float(v), "%d.%03d" % divmod(t, 1000)))
            f.write("# EOF\n")
        out = os.path.join(workdir, "promtool-blocks")
        subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics", om, out],
                       check=True, stdout=subprocess.DEVNULL)
        theirs = sum(block_size(os.path.join(out, d)) for d in os.listdir(out)
                     if os.path.isfile(os.path.join(out, d, "meta.json")))
        result["promtool"] = theirs / nsamples
    return result


def bench_select(n_series, workdir):
    label_sets = node_like_series(n_series, seed=9)
    b = Batches(label_sets)
    head = Head(os.path.join(workdir, "select"), wal_enabled=False)
    for keys, koff, hashes, soff, n in b.groups:
        head.append_batch(keys, koff, hashes, soff, array("q", [0] * n), array("d", [1.0] * n), bytearray(n))
    ms = [Matcher("=", "__name__", "http_requests_total"), Matcher("=", "cluster", "c1"),
          Matcher("=~", "job", "job-1.*")]
    head.select(ms, samples=False)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        res = head.postings_for(ms)
        times.append(time.perf_counter() - start)
    head.close()
    return min(times) * 1000, len(res)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--series", type=int, default=100000)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--block-series", type=int, default=5000)
    ap.add_argument("--select-series", type=int, default=1000000)
    ap.add_argument("--append-only", action="store_true", help="only the append figures")
    ap.add_argument("--memory-only", action="store_true", help="only the head memory figure")
    ap.add_argument("--memory-runs", type=int, default=3,
                    help="fresh processes the head memory figure is measured in (median printed)")
    args = ap.parse_args()
    workdir = tempfile.mkdtemp(prefix="urdar-bench-")
    try:
        if args.memory_only:
            print("head bytes/series: %d" % bench_head_memory(args.series, workdir), flush=True)
            return
        if not args.append_only:
            # each run in a fresh process: in this one, the heap the append figures freed
            # would be reused and hide most of the growth
            runs = sorted(memory_in_subprocess(args.series, k == 0) for k in range(max(1, args.memory_runs)))
            print("head bytes/series: %d (median of %d fresh processes: %s)" % (
                runs[len(runs) // 2], len(runs), " ".join(str(r) for r in runs)), flush=True)
        rate = bench_append(args.series, args.rounds, workdir)
        print("append: %d samples/s" % rate, flush=True)
        for threads in (1, 2):
            wall, per_cpu, busy, waited = bench_append_parallel(args.series, args.rounds, workdir, threads)
            print("append_%d_threads: %d samples/s, %d samples per CPU-second, %.2f cores busy, "
                  "%.3f s waiting for head locks" % (threads, wall, per_cpu, busy, waited), flush=True)
        if args.append_only:
            return
        blocks = bench_blocks(args.block_series, workdir)
        print("block bytes/sample: %.3f" % blocks["urdar"], flush=True)
        if "promtool" in blocks:
            print("promtool block bytes/sample: %.3f" % blocks["promtool"])
            print("ratio: %.3f" % (blocks["urdar"] / blocks["promtool"]), flush=True)
        ms, n = bench_select(args.select_series, workdir)
        print("select: %.2f ms (%d of %d series)" % (ms, n, args.select_series))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
