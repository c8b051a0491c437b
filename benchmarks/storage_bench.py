"""Long-term storage benchmark: 7-day range queries over compacted blocks in object storage (urdar's
store-gateway) against the same data in a real Prometheus 2.42, same run; and bytes per sample.

Data (fixed seed): `--series` counters `bench_requests_total{job,instance}` and as many gauges
`bench_temp{instance}`, one sample every `--scrape-s` seconds over `--days` days ending an hour
before now. Prometheus gets it through `promtool tsdb create-blocks-from openmetrics
--max-block-duration=24h` into its data dir (retention 100y). urdar gets the same samples as 24h
blocks written by engine.block.write_block (XOR chunks cut as the
ingesters cut them: ~120 samples within 2 h windows; compaction level 2) and
uploaded by the shipper into a filesystem bucket, then `python -m urdar` serves them from the
store-gateway (-querier.query-store-after=0s, fresh sync dir: index-headers are built on the first
query, which is reported separately as `cold`). Each query runs as a range query over the whole
span (step `--step-s`) `--reps` times on both (after one untimed run each); medians are printed
as `name: value unit` lines with `ratio: R` (urdar / prometheus) per query, then each server's CPU
per query (/proc/<pid>/stat, every thread; what a loaded machine distorts least) over `--cpu-reps`
more alternating runs (clock ticks are 10 ms: a 3 ms query needs many), with its `cpu ratio`,
and results are checked to agree (1e-9 relative). The load average is printed before and after. Bytes per sample are given for
the whole bucket and split into chunks, index and the rest (meta.json, tombstones).

    python benchmarks/storage_bench.py [--series 50] [--days 7] [--scrape-s 30] [--reps 5] [--cpu-reps 20]
"""
import argparse
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

from tests.support.services import Prometheus, Urdar, http  # noqa: E402
from urdar.engine.block import write_block  # noqa: E402
from urdar.engine.labels import encode_labels  # noqa: E402
from urdar.engine.xorchunk import XORChunk  # noqa: E402
from urdar.storage.filesystem import FilesystemBucket  # noqa: E402
from urdar.storage.prefixed import for_tenant  # noqa: E402
from urdar.storage.shipper import Shipper  # noqa: E402

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
DAY_MS = 86400 * 1000
TENANT = "bench"
QUERIES = ["sum(rate(bench_requests_total[5m]))", "sum by (job) (increase(bench_requests_total[1h]))",
           "avg_over_time(bench_temp[1h])", "max(bench_temp)", "bench_temp{instance=\"i-7\"}"]


def make_series(n, start_ms, end_ms, step_ms, seed=7):
    """[(labels list, ts list, vals list)] with fixed seed."""
    rnd = random.Random(seed)
    out = []
    # +3 ms: off the evaluation grid, where Prometheus 2.x's left-closed windows and 3.x's
    # left-open ones (which urdar follows) agree.
    ts = list(range(start_ms + 3, end_ms, step_ms))
    for i in range(n):
        c, vals = 0.0, []
        for _ in ts:
            c += rnd.randint(0, 50)
            vals.append(c)
        out.append(([("__name__", "bench_requests_total"), ("instance", "i-%d" % i),
                     ("job", "job-%d" % (i % 5))], ts, vals))
        g, vals = 20.0, []
        for _ in ts:
            g = round(g + rnd.uniform(-0.5, 0.5), 2)
            vals.append(g)
        out.append(([("__name__", "bench_temp"), ("instance", "i-%d" % i)], ts, vals))
    return out


def write_openmetrics(path, series):
    with open(path, "w") as f:
        last = None
        for labels, ts, vals in series:
            name = labels[0][1]
            if name != last:
                f.write("# TYPE %s gauge\n" % name)
                last = name
            lab = ",".join('%s="%s"' % (k, v) for k, v in labels[1:])
            prefix = "%s{%s} " % (name, lab)
            f.write("".join("%s%r %.3f\n" % (prefix, v, t / 1000.0) for t, v in zip(ts, vals)))
        f.write("# EOF\n")


def sort_for_om(series):
    return sorted(series, key=lambda s: (s[0][0][1], s[0]))


HEAD_CHUNK_RANGE_MS = 2 * 3600 * 1000
SAMPLES_PER_CHUNK = 120
MAX_XOR_BYTES = 1024 - 19


def _chunk_end_time(start, cur, max_t):
    n = (max_t - start) / ((cur - start + 1) * 4.0)
    return max_t if n <= 1.0 else int(start + (max_t - start) / math.floor(n))


def head_chunks(ts, vals, lo, hi):
    """XOR chunks of the samples in [lo, hi), cut as urdar's head (engine/head.pyx, Prometheus'
    rule) cuts them in the ingesters whose 2 h blocks the compactor joins into 24 h ones (it
    copies chunks as they are): at the end of the sample's 2 h window, spread evenly over
    chunks heading for 120 samples once a quarter full, and at 240 samples or ~1 KiB."""
    chunks, c, n = [], None, 0
    first = last = next_at = 0
    for t, v in zip(ts, vals):
        if t < lo or t >= hi:
            continue
        if c is not None:
            if n == SAMPLES_PER_CHUNK // 4:
                next_at = _chunk_end_time(first, last, next_at)
            if len(c) > MAX_XOR_BYTES or t >= next_at or n >= 2 * SAMPLES_PER_CHUNK:
                chunks.append((first, last, 1, bytes(c.bytes())))
                c = None
        if c is None:
            c, n, first = XORChunk(), 0, t
            next_at = (t // HEAD_CHUNK_RANGE_MS + 1) * HEAD_CHUNK_RANGE_MS
        c.append(t, v)     # len(c) is the chunk's byte length, n its sample count
        n += 1
        last = t
    if c is not None:
        chunks.append((first, last, 1, bytes(c.bytes())))
    return chunks


def write_urdar_blocks(parent, series, start_ms, end_ms):
    """24h blocks (aligned to the day) of XOR chunks cut as the ingesters cut them; returns
    their ULIDs."""
    ulids = []
    lo = (start_ms // DAY_MS) * DAY_MS
    while lo < end_ms:
        hi = lo + DAY_MS
        block = []
        for labels, ts, vals in series:
            chunks = head_chunks(ts, vals, lo, hi)
            if chunks:
                block.append((encode_labels(sorted(labels)), chunks))
        if block:
            ulids.append(write_block(parent, lo, hi, block, level=2))
        lo = hi
    return ulids


def dir_bytes(path, skip=()):
    total = 0
    for dirpath, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if d not in skip]
        total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files)
    return total


def part_bytes(path, skip=()):
    """{"chunks": bytes, "index": bytes, "other": bytes} over the blocks under `path`."""
    out = {"chunks": 0, "index": 0, "other": 0}
    for dirpath, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if d not in skip]
        for f in files:
            kind = ("chunks" if os.path.basename(dirpath) == "chunks" else
                    "index" if f == "index" else "other")
            out[kind] += os.path.getsize(os.path.join(dirpath, f))
    return out


def range_query(base, q, start_s, end_s, step_s, headers):
    qs = urllib.parse.urlencode({"query": q, "start": start_s, "end": end_s, "step": step_s})
    t0 = time.perf_counter()
    status, body = http("GET", base + "/api/v1/query_range?" + qs, headers=headers, timeout=600)
    dt = time.perf_counter() - t0
    if status != 200:
        raise SystemExit("query %s failed on %s: %d %s" % (q, base, status, body[:500]))
    return dt, json.loads(body)["data"]["result"]


def cpu_s(proc):
    """CPU seconds (user + system, every thread) the server process has used so far."""
    with open("/proc/%d/stat" % proc.proc.pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def same(a, b):
    key = lambda r: json.dumps(r["metric"], sort_keys=True)  # noqa: E731
    a, b = sorted(a, key=key), sorted(b, key=key)
    if [key(r) for r in a] != [key(r) for r in b]:
        return False
    for x, y in zip(a, b):
        if len(x["values"]) != len(y["values"]):
            return False
        for (t1, v1), (t2, v2) in zip(x["values"], y["values"]):
            f1, f2 = float(v1), float(v2)
            if t1 != t2 or not (f1 == f2 or abs(f1 - f2) <= 1e-9 * max(abs(f1), abs(f2))):
                return False
    return True


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--series", type=int, default=50)
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--scrape-s", type=int, default=30)
    ap.add_argument("--step-s", type=int, default=3600)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--cpu-reps", type=int, default=20)
    args = ap.parse_args()
    if not os.path.exists(PROMTOOL):
        raise SystemExit("promtool not found (apt-get install prometheus)")
    tmp = tempfile.mkdtemp(prefix="urdar-storage-bench-")
    procs = []
    try:
        end_ms = (int(time.time()) // 3600 - 1) * 3600 * 1000
        start_ms = end_ms - args.days * DAY_MS
        print("load average at start: %.2f %.2f %.2f" % os.getloadavg())
        series = make_series(args.series, start_ms, end_ms, args.scrape_s * 1000)
        n_samples = sum(len(ts) for _, ts, _ in series)
        print("series: %d" % len(series))
        print("samples: %d" % n_samples)

        # Prometheus: promtool blocks in its data dir.
        om = os.path.join(tmp, "data.om")
        write_openmetrics(om, sort_for_om(series))
        prom_data = os.path.join(tmp, "prometheus-data")     # services.Prometheus' data dir
        t0 = time.perf_counter()
        subprocess.run([PROMTOOL, "tsdb", "create-blocks-from", "openmetrics", "--max-block-duration=24h",
                        om, prom_data], check=True, stdout=subprocess.DEVNULL)
        print("promtool_create_blocks: %.1f s" % (time.perf_counter() - t0))
        os.unlink(om)
        prom_block_bytes = dir_bytes(prom_data, skip=("wal", "chunks_head"))

        # urdar: write_block -> shipper -> filesystem bucket.
        local = os.path.join(tmp, "urdar-blocks")
        os.makedirs(local)
        t0 = time.perf_counter()
        ulids = write_urdar_blocks(local, series, start_ms, end_ms)
        bucket_dir = os.path.join(tmp, "bucket")
        from twisted.internet.task import Clock
        Shipper(local, for_tenant(FilesystemBucket(bucket_dir), TENANT), Clock()).sync()
        print("urdar_write_and_upload_blocks: %.1f s (%d blocks)" % (time.perf_counter() - t0, len(ulids)))
        bucket_bytes = dir_bytes(os.path.join(bucket_dir, TENANT))
        print("bytes_per_sample_urdar_bucket: %.3f B" % (bucket_bytes / n_samples))
        print("bytes_per_sample_prometheus_blocks: %.3f B" % (prom_block_bytes / n_samples))
        print("ratio: %.3f" % (bucket_bytes / prom_block_bytes))
        up = part_bytes(os.path.join(bucket_dir, TENANT))
        pp = part_bytes(prom_data, skip=("wal", "chunks_head"))
        for kind in ("chunks", "index", "other"):
            print("bytes_%s: urdar %d, prometheus %d, ratio: %.3f" % (
                kind, up[kind], pp[kind], up[kind] / pp[kind] if pp[kind] else float("nan")))

        prom = Prometheus(tmp, "global:\n  scrape_interval: 1h\n", "--storage.tsdb.retention.time=100y")
        procs.append(prom)
        prom.wait_ready()
        udir = os.path.join(tmp, "urdar")
        os.makedirs(udir)
        urdar = Urdar(udir, "-blocks-storage.backend=filesystem",
                      "-blocks-storage.filesystem.dir=" + bucket_dir, "-querier.query-store-after=0s",
                      "-blocks-storage.bucket-store.sync-dir=" + os.path.join(udir, "sync"),
                      "-querier.timeout=10m", "-target=distributor,ingester,querier,store-gateway")
        procs.append(urdar)
        urdar.wait_ready()
        h = {"X-Scope-OrgID": TENANT}
        # Start 2 h in: no window reaches the first sample, where 2.x caps rate() extrapolation
        # differently from 3.x; half a second off whole minutes, as above.
        start_s, end_s = (start_ms + 2 * 3600 * 1000) / 1000.0 + 0.5, (end_ms - 1000) / 1000.0
        ratios, cpu_ratios = [], []
        for i, q in enumerate(QUERIES):
            if i == 0:
                cold, _ = range_query(urdar.base + "/prometheus", q, start_s, end_s, args.step_s, h)
                print("urdar_cold_first_query: %.1f ms (index-headers built)" % (cold * 1000))
            # one untimed run each: Prometheus' page cache and urdar's block caches warm
            range_query(urdar.base + "/prometheus", q, start_s, end_s, args.step_s, h)
            range_query(prom.base, q, start_s, end_s, args.step_s, {})
            u_times, p_times = [], []
            for _ in range(args.reps):
                dt, ures = range_query(urdar.base + "/prometheus", q, start_s, end_s, args.step_s, h)
                u_times.append(dt)
                dt, pres = range_query(prom.base, q, start_s, end_s, args.step_s, {})
                p_times.append(dt)
            u, p = statistics.median(u_times), statistics.median(p_times)
            ratios.append(u / p)
            print("%s: urdar %.1f ms, prometheus %.1f ms, ratio: %.2f%s" % (
                q, u * 1000, p * 1000, u / p, "" if same(ures, pres) else "  RESULTS DIFFER"))
            # server CPU per query (clock ticks summed over the reps): what load distorts least
            u_cpu = p_cpu = 0.0
            for _ in range(args.cpu_reps):
                c0 = cpu_s(urdar)
                range_query(urdar.base + "/prometheus", q, start_s, end_s, args.step_s, h)
                u_cpu += cpu_s(urdar) - c0
                c0 = cpu_s(prom)
                range_query(prom.base, q, start_s, end_s, args.step_s, {})
                p_cpu += cpu_s(prom) - c0
            u_cpu, p_cpu = u_cpu / args.cpu_reps, p_cpu / args.cpu_reps
            if u_cpu and p_cpu:
                cpu_ratios.append(u_cpu / p_cpu)
            print("%s: cpu urdar %.1f ms, prometheus %.1f ms, cpu ratio: %s" % (
                q, u_cpu * 1000, p_cpu * 1000, "%.2f" % (u_cpu / p_cpu) if p_cpu else "n/a"))
        print("geomean ratio: %.2f" % math.exp(sum(math.log(r) for r in ratios) / len(ratios)))
        if cpu_ratios:
            print("geomean cpu ratio: %.2f" % math.exp(sum(math.log(r) for r in cpu_ratios) /
                                                       len(cpu_ratios)))
        print("load average at end: %.2f %.2f %.2f" % os.getloadavg())
    finally:
        for p in procs:
            p.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
