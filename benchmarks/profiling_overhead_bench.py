"""Profiling overhead: remote-write ingest into urdar with the profilers idle, with a CPU profile
(100 Hz) running and with fgprof running, same requests, interleaved trials, medians.

Reuses benchmarks/ingest_bench.py's pieces: pre-encoded requests (`--series` series in requests of
`--per-request`, one sample each, `--rounds` rounds 15 s apart), load from `--connections` client
processes, a fresh `python -m urdar` per trial. Round 0 creates the series and is not counted; a
profile request (GET /debug/pprof/profile or /debug/fgprof with ?seconds long enough to cover the
load) starts right after it: a child process asks for `--window`-second profiles back to back
until the load ends and notes each one's sampler CPU (the profile's comment) and wall time. Modes
are interleaved, rotating the order each trial, so drifts of a shared machine hit every mode
alike. Prints `name: value unit` lines per mode (median samples/s over wall-clock and per
CPU-second of the server, the spread, the sampler thread's own CPU as a share of one core) and
`drop_<mode>: P %` against idle (the bar: at most 5 %).

    python benchmarks/profiling_overhead_bench.py [--trials 5] [--series 100000] [--rounds 8]
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import ingest_bench as ib  # noqa: E402

MODES = {
    "idle": None,
    "cpu_100hz": "/debug/pprof/profile?seconds={s}&hz=100",
    "fgprof_100hz": "/debug/fgprof?seconds={s}&hz=100",
}

# Child process: fetch profiles back to back, append "<sampler cpu ns> <wall s>" per profile.
_FETCHER = """
import gzip, re, sys, time, urllib.request
while True:
    t0 = time.monotonic()
    try:
        data = urllib.request.urlopen(sys.argv[1], timeout=600).read()
    except OSError:
        sys.exit(0)
    wall = time.monotonic() - t0
    m = re.search(rb"sampler used (\\d+) ns of CPU", gzip.decompress(data))
    with open(sys.argv[2], "a") as f:
        f.write("%s %.3f\\n" % (m.group(1).decode() if m else "nan", wall))
"""


def start_urdar(tmp):
    port = ib.free_port()
    log = open(os.path.join(tmp, "urdar.log"), "wb")
    proc = subprocess.Popen([
        sys.executable, "-m", "urdar", "-server.http-listen-address=127.0.0.1",
        "-server.http-listen-port=%d" % port, "-blocks-storage.tsdb.dir=" + os.path.join(tmp, "urdar"),
        "-distributor.ingestion-rate-limit=1e12", "-distributor.ingestion-burst-size=1000000000000",
        "-ingester.max-global-series-per-user=0", "-log.level=warn",
        "-server.graceful-shutdown-timeout=1s"],
        cwd=ib.ROOT, stdout=log, stderr=subprocess.STDOUT)
    ib.wait_http(port, "/ready")
    return port, proc


def fetch(port, path, out_path):
    """Profiles of `path` back to back from a child process (the parent forks load clients, so it
    keeps no threads), noted in out_path."""
    return subprocess.Popen([sys.executable, "-c", _FETCHER, "http://127.0.0.1:%d%s" % (port, path), out_path],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def sampler_share(out_path):
    """Sampler CPU / wall time over the profiles that completed (None if none did)."""
    cpu = wall = 0.0
    try:
        with open(out_path) as f:
            for line in f:
                ns, w = line.split()
                if ns != "nan":
                    cpu += int(ns) / 1e9
                    wall += float(w)
    except OSError:
        return None
    return cpu / wall if wall else None


def trial(rows, args, mode):
    """(samples/s, samples per server CPU-second, failed requests, seconds, sampler CPU share)."""
    tmp = tempfile.mkdtemp(prefix="urdar-prof-overhead-")
    port, proc = start_urdar(tmp)
    fetcher = None
    out_path = os.path.join(tmp, "profiles.txt")
    try:
        ib.run_load(port, "/api/v1/push", rows[:1], args.connections, args.series, proc.pid)
        if MODES[mode]:
            fetcher = fetch(port, MODES[mode].format(s=args.window), out_path)
            time.sleep(0.5)         # the sampler is running before the clock starts
        rounds = ib.run_load(port, "/api/v1/push", rows[1:], args.connections, args.series, proc.pid)
        secs = sum(r[1] for r in rounds)
        samples = sum(r[2] for r in rounds)
        cpu = sum(r[4] for r in rounds)
        failed = sum(r[3] for r in rounds)
        if fetcher is not None:
            fetcher.terminate()
            fetcher.wait(60)
        return samples / secs, samples / cpu if cpu else 0.0, failed, secs, sampler_share(out_path)
    finally:
        ib.stop(proc)
        if fetcher is not None and fetcher.poll() is None:
            fetcher.kill()
            fetcher.wait(60)
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--series", type=int, default=100_000)
    ap.add_argument("--per-request", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--connections", type=int, default=5)
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--window", type=float, default=1.0,
                    help="?seconds= of each profile request (they run back to back)")
    args = ap.parse_args()
    t0_ms = int(time.time() * 1000) - args.rounds * ib.SCRAPE_MS
    rows = ib.build_requests(args.series, args.per_request, args.rounds, t0_ms)
    print("requests: %d x %d series x 1 sample, %d rounds (1 creation + %d measured), %d trials per mode"
          % (len(rows[0]), args.per_request, args.rounds, args.rounds - 1, args.trials))
    names = list(MODES)
    results = {m: [] for m in names}
    for i in range(args.trials):
        order = names[i % len(names):] + names[:i % len(names)]
        for mode in order:
            rate, per_cpu, failed, secs, share = trial(rows, args, mode)
            results[mode].append((rate, per_cpu, failed, secs, share))
            print("  trial %d %-13s %8.0f samples/s  %8.0f samples/cpu-s  %.2f s  failed %d%s" % (
                i, mode, rate, per_cpu, secs, failed,
                "  sampler %.2f%% of a core" % (100 * share) if share is not None else ""), flush=True)
    idle = statistics.median(r[0] for r in results["idle"])
    idle_cpu = statistics.median(r[1] for r in results["idle"])
    for mode in names:
        rates = [r[0] for r in results[mode]]
        med = statistics.median(rates)
        print("%s: %.0f samples/s" % (mode, med))
        print("%s_per_cpu_second: %.0f samples/s" % (mode, statistics.median(r[1] for r in results[mode])))
        print("%s_spread: %.0f..%.0f samples/s" % (mode, min(rates), max(rates)))
        shares = [r[4] for r in results[mode] if r[4] is not None]
        if shares:
            print("%s_sampler_cpu: %.2f %% of one core" % (mode, 100 * statistics.median(shares)))
        if mode != "idle":
            # Paired: each trial against the idle run of the same trial (same machine drift).
            paired = [r[0] / i[0] for r, i in zip(results[mode], results["idle"])]
            print("drop_%s_paired: %.1f %% (median of per-trial ratios)" % (
                mode, 100.0 * (1 - statistics.median(paired))))
            print("drop_%s: %.1f %%" % (mode, 100.0 * (1 - med / idle)))
            print("drop_%s_per_cpu_second: %.1f %%" % (
                mode, 100.0 * (1 - statistics.median(r[1] for r in results[mode]) / idle_cpu)))
    print("ratio: %.3f" % (statistics.median(r[0] for r in results["cpu_100hz"]) / idle))


if __name__ == "__main__":
    main()
