"""Profiling overhead: remote-write ingest into urdar with the profilers idle, with a CPU profile
(100 Hz) running and with fgprof (100 Hz) running, same requests, medians of paired comparisons.

Reuses benchmarks/ingest_bench.py's pieces: pre-encoded requests (`--series` series in requests of
`--per-request`, one sample each, rounds 15 s apart), load from `--connections` client processes.
Round 0 creates the series and is not counted.

Default, interleaved (`--blocks N`): one `python -m urdar`; blocks of `--block-rounds` rounds cycle
through the modes N times (rotating the order), and during a profiled block one long profile
request (?seconds=600, cancelled by hanging up after the block) keeps the sampler running. Block i
of each mode is compared with the idle block of the same cycle, so the drifts of a shared machine
cancel out; prints each mode's median block rate, `drop_<mode>_paired: P %` (median of the
per-cycle ratios, with their spread) and the same per server CPU-second.

`--blocks 0`: a fresh urdar per trial and mode (`--trials`, `--rounds`), where the `cpu_100hz` and
`fgprof_100hz` modes ask for `--window`-second profiles back to back (so profile encoding is in
the cost too) and report the sampler thread's own CPU from each profile's comment. Fresh
processes differ by +-20 % on a shared machine, so this needs many trials.

`--heap`: the always-on heap sampling hook on against off. Sampling is fixed at start-up
($URDAR_MEMPROFILERATE), so two urdar processes run side by side, one with the default rate
(512 KiB) and one with 0; each block of rounds goes to both, in alternating order, and the
paired per-block ratios give `drop_heap_sampling_paired` and the same per server CPU-second
(CPU per sample).

The bar: at most 5 % drop while a profile runs, a few percent for heap sampling.

    python benchmarks/profiling_overhead_bench.py [--blocks 10] [--block-rounds 10] [--series 40000]
    python benchmarks/profiling_overhead_bench.py --blocks 0 --trials 7 --rounds 24 --series 100000
    python benchmarks/profiling_overhead_bench.py --heap [--blocks 10] [--block-rounds 10]
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
import procs  # noqa: E402

MODES = {
    "idle": None,
    "cpu_100hz": "/debug/pprof/profile?seconds={s}&hz=100",
    "fgprof_100hz": "/debug/fgprof?seconds={s}&hz=100",
    # One long window: sampling only, no profile encoded while the load runs.
    "cpu_100hz_long": "/debug/pprof/profile?seconds=600&hz=100",
    "fgprof_100hz_long": "/debug/fgprof?seconds=600&hz=100",
}

# Child process: fetch profiles back to back, append "<sampler cpu ns> <wall s>" per profile.
_FETCHER = """
import gzip, re, sys, time, urllib.error, urllib.request
while True:
    t0 = time.monotonic()
    try:
        data = urllib.request.urlopen(sys.argv[1], timeout=600).read()
    except urllib.error.HTTPError as e:
        with open(sys.argv[2], "a") as f:
            f.write("error %d\\n" % e.code)
        sys.exit(1)
    except OSError:
        sys.exit(0)
    wall = time.monotonic() - t0
    m = re.search(rb"sampler used (\\d+) ns of CPU", gzip.decompress(data))
    with open(sys.argv[2], "a") as f:
        f.write("%s %.3f\\n" % (m.group(1).decode() if m else "nan", wall))
"""


def start_urdar(tmp, env=None):
    return procs.start_urdar(tmp, extra=("-server.graceful-shutdown-timeout=1s",), env=env)


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
                if ns == "error":
                    raise RuntimeError("profile request failed with HTTP %s" % w)
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
        procs.stop(proc)
        if fetcher is not None and fetcher.poll() is None:
            fetcher.kill()
            fetcher.wait(60)
        shutil.rmtree(tmp, ignore_errors=True)


def interleaved(rows, args, names):
    """One urdar; blocks of `--block-rounds` rounds cycle through the modes `--blocks` times, a
    long profile running through each profiled block. Returns {mode: [(rate, per cpu-s)]} with
    one entry per cycle, so entry i of every mode comes from the same stretch of time."""
    tmp = tempfile.mkdtemp(prefix="urdar-prof-overhead-")
    port, proc = start_urdar(tmp)
    out = {m: [] for m in names}
    try:
        ib.run_load(port, "/api/v1/push", rows[:1], args.connections, args.series, proc.pid)
        pos = 1
        for cycle in range(args.blocks):
            order = names[cycle % len(names):] + names[:cycle % len(names)]
            for mode in order:
                fetcher = None
                out_path = os.path.join(tmp, "profiles-%d-%s.txt" % (cycle, mode))
                if MODES[mode]:
                    fetcher = fetch(port, MODES[mode].format(s=600), out_path)
                    time.sleep(0.4)
                block = rows[pos:pos + args.block_rounds]
                pos += args.block_rounds
                rounds = ib.run_load(port, "/api/v1/push", block, args.connections, args.series, proc.pid)
                if fetcher is not None:
                    if fetcher.poll() is not None:
                        sampler_share(out_path)         # raises on an HTTP error (e.g. 409)
                        raise RuntimeError("profile request of %s ended early" % mode)
                    fetcher.terminate()
                    fetcher.wait(60)
                    time.sleep(0.3)                     # urdar stops the sampler on hang-up
                secs = sum(r[1] for r in rounds)
                samples = sum(r[2] for r in rounds)
                cpu = sum(r[4] for r in rounds)
                out[mode].append((samples / secs, samples / cpu if cpu else 0.0))
                print("  cycle %d %-18s %8.0f samples/s  %8.0f samples/cpu-s  %.2f s" % (
                    cycle, mode, samples / secs, samples / cpu if cpu else 0.0, secs), flush=True)
    finally:
        procs.stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def heap_sampling(rows, args):
    """Two urdars, heap sampling off (URDAR_MEMPROFILERATE=0) and on (default rate); every block
    of rounds is sent to both, alternating which goes first. Returns {mode: [(rate, per cpu-s)]}."""
    out = {"heap_off": [], "heap_on": []}
    servers = {}
    tmps = []
    try:
        for mode, rate in (("heap_off", "0"), ("heap_on", "")):
            tmp = tempfile.mkdtemp(prefix="urdar-heap-overhead-")
            tmps.append(tmp)
            env = dict(os.environ)
            env.pop("URDAR_MEMPROFILERATE", None)
            if rate:
                env["URDAR_MEMPROFILERATE"] = rate
            servers[mode] = start_urdar(tmp, env)
            port, proc = servers[mode]
            ib.run_load(port, "/api/v1/push", rows[:1], args.connections, args.series, proc.pid)
        pos = 1
        for cycle in range(args.blocks):
            block = rows[pos:pos + args.block_rounds]
            pos += args.block_rounds
            for mode in (("heap_off", "heap_on") if cycle % 2 == 0 else ("heap_on", "heap_off")):
                port, proc = servers[mode]
                rounds = ib.run_load(port, "/api/v1/push", block, args.connections, args.series, proc.pid)
                secs = sum(r[1] for r in rounds)
                samples = sum(r[2] for r in rounds)
                cpu = sum(r[4] for r in rounds)
                out[mode].append((samples / secs, samples / cpu if cpu else 0.0))
                print("  cycle %d %-9s %8.0f samples/s  %8.0f samples/cpu-s  %.2f s" % (
                    cycle, mode, samples / secs, samples / cpu if cpu else 0.0, secs), flush=True)
    finally:
        for _port, proc in servers.values():
            procs.stop(proc)
        for tmp in tmps:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def report_heap(out):
    off, on = out["heap_off"], out["heap_on"]
    for mode in ("heap_off", "heap_on"):
        print("%s: %.0f samples/s" % (mode, statistics.median(r[0] for r in out[mode])))
        print("%s_per_cpu_second: %.0f samples/s" % (mode, statistics.median(r[1] for r in out[mode])))
    paired = [b[0] / a[0] for a, b in zip(off, on)]
    paired_cpu = [b[1] / a[1] for a, b in zip(off, on) if a[1] and b[1]]
    print("drop_heap_sampling_paired: %.1f %% (median of per-cycle ratios; spread %.1f..%.1f %%)" % (
        100.0 * (1 - statistics.median(paired)), 100.0 * (1 - max(paired)), 100.0 * (1 - min(paired))))
    if paired_cpu:
        print("drop_heap_sampling_per_cpu_second_paired: %.1f %%" % (100.0 * (1 - statistics.median(paired_cpu))))
    print("ratio: %.3f" % statistics.median(paired))


def report_interleaved(out, names):
    idle = out["idle"]
    for mode in names:
        rates = [r[0] for r in out[mode]]
        print("%s: %.0f samples/s" % (mode, statistics.median(rates)))
        print("%s_per_cpu_second: %.0f samples/s" % (mode, statistics.median(r[1] for r in out[mode])))
        if mode != "idle":
            paired = [r[0] / i[0] for r, i in zip(out[mode], idle)]
            paired_cpu = [r[1] / i[1] for r, i in zip(out[mode], idle) if i[1] and r[1]]
            print("drop_%s_paired: %.1f %% (median of per-cycle ratios; spread %.1f..%.1f %%)" % (
                mode, 100.0 * (1 - statistics.median(paired)), 100.0 * (1 - max(paired)),
                100.0 * (1 - min(paired))))
            if paired_cpu:
                print("drop_%s_per_cpu_second_paired: %.1f %%" % (
                    mode, 100.0 * (1 - statistics.median(paired_cpu))))
            if mode == names[1]:
                print("ratio: %.3f" % statistics.median(paired))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--series", type=int, default=40_000)
    ap.add_argument("--per-request", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--connections", type=int, default=5)
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--modes", default=None,
                    help="comma-separated, from: " + ", ".join(MODES))
    ap.add_argument("--window", type=float, default=1.0,
                    help="?seconds= of each profile request (they run back to back)")
    ap.add_argument("--blocks", type=int, default=10,
                    help="interleaved mode: one urdar, this many cycles of one block per mode")
    ap.add_argument("--block-rounds", type=int, default=10, help="rounds per block (interleaved mode)")
    ap.add_argument("--heap", action="store_true",
                    help="compare heap sampling on and off (two urdars side by side, --blocks cycles)")
    args = ap.parse_args()
    if args.heap:
        args.blocks = args.blocks or 10
        args.rounds = 1 + args.blocks * args.block_rounds
        t0_ms = int(time.time() * 1000) - args.rounds * ib.SCRAPE_MS
        rows = ib.build_requests(args.series, args.per_request, args.rounds, t0_ms)
        print("heap sampling on vs off: %d cycles of %d rounds, %d x %d series per round"
              % (args.blocks, args.block_rounds, len(rows[0]), args.per_request))
        report_heap(heap_sampling(rows, args))
        return
    names = (args.modes or ("idle,cpu_100hz_long,fgprof_100hz_long" if args.blocks
                            else "idle,cpu_100hz,fgprof_100hz")).split(",")
    if names[0] != "idle" or any(n not in MODES for n in names):
        ap.error("--modes must start with idle and name modes from: " + ", ".join(MODES))
    if args.blocks:
        args.rounds = 1 + args.blocks * len(names) * args.block_rounds
    t0_ms = int(time.time() * 1000) - args.rounds * ib.SCRAPE_MS
    rows = ib.build_requests(args.series, args.per_request, args.rounds, t0_ms)
    print("requests: %d x %d series x 1 sample, %d rounds (1 creation + %d measured)"
          % (len(rows[0]), args.per_request, args.rounds, args.rounds - 1))
    if args.blocks:
        print("interleaved: %d cycles of %s, %d rounds per block" % (args.blocks, ", ".join(names),
                                                                      args.block_rounds))
        report_interleaved(interleaved(rows, args, names), names)
        return
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
    if "cpu_100hz" in results:
        print("ratio: %.3f" % (statistics.median(r[0] for r in results["cpu_100hz"]) / idle))


if __name__ == "__main__":
    main()
