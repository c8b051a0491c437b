"""Profiler overhead: what a CPU/wall sampler, heap tracking and the instrumented locks cost.

Prints `name: value unit` lines and `ratio: R` lines (work done with the profiler on / off).
- sampler: a pure-Python worker's throughput while a StackSampler runs at --hz over --threads
  idle threads with ~30-frame stacks, and the sampler thread's own CPU per second;
- heap: allocation-heavy loops with the always-on heap sampling hook on and off (and, for
  scale, tracemalloc with 32 frames);
- locks: `with lock:` on threading.Lock, on urdar's Lock with recording off and on (uncontended).

    python benchmarks/profiling_bench.py [--hz 100] [--threads 20] [--seconds 3] [--only heap]
"""
import argparse
import os
import statistics
import sys
import threading
import time
import timeit
import tracemalloc

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from urdar.profiling import contention, heapsample  # noqa: E402
from urdar.profiling.sampler import StackSampler  # noqa: E402


def deep_wait(ev, depth):
    if depth:
        return deep_wait(ev, depth - 1)
    ev.wait()


def work(seconds):
    """Iterations of a fixed pure-Python loop done in `seconds` of wall time."""
    n = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        x = 0
        for i in range(1000):
            x += i * i
        n += 1
    return n


def bench_sampler(hz, threads, seconds):
    ev = threading.Event()
    idle = [threading.Thread(target=deep_wait, args=(ev, 30), daemon=True) for _ in range(threads)]
    for t in idle:
        t.start()
    base = work(seconds)
    for mode in ("cpu", "wall"):
        s = StackSampler(hz, mode)
        s.start()
        with_sampler = work(seconds)
        s.stop()
        print("sampler_%s_ticks_per_s: %.1f 1/s" % (mode, s.ticks / (s.duration_ns / 1e9)))
        print("sampler_%s_own_cpu: %.2f %% of one core" % (mode, 100.0 * s.overhead_ns / s.duration_ns))
        print("sampler_%s_tick_cost: %.1f us" % (mode, s.overhead_ns / max(s.ticks, 1) / 1e3))
        print("ratio: %.3f (worker throughput with the %s sampler / without)" % (with_sampler / base, mode))
    ev.set()
    for t in idle:
        t.join()


def alloc_loop():
    """Allocation-heavy pure Python: 600k small objects made, kept, then freed on return."""
    keep = []
    for i in range(200_000):
        keep.append((i, str(i), [i]))
    return len(keep)


def dict_churn():
    """Short-lived dicts and strings, as a request handler makes them."""
    n = 0
    for i in range(100_000):
        d = {"tenant": "t%d" % (i & 15), "series": i, "labels": ["a", "b"]}
        n += len(d)
    return n


def bench_heap(rounds):
    """The always-on heap sampling hook (512 KiB) against no hook, same loop, alternating runs so
    machine drift hits both; also tracemalloc(32) for scale. Best of `rounds` each, in this
    thread's CPU time (less disturbed than wall time by other processes on a shared machine)."""
    for fn in (alloc_loop, dict_churn):
        off, on = [], []
        for _ in range(rounds):
            heapsample.stop()
            off.append(min(timeit.repeat(fn, number=1, repeat=3, timer=time.thread_time)))
            heapsample.start(heapsample.DEFAULT_RATE)
            on.append(min(timeit.repeat(fn, number=1, repeat=3, timer=time.thread_time)))
        st = heapsample.stats()
        heapsample.stop()
        print("heap_%s_hook_off: %.2f ms" % (fn.__name__, min(off) * 1e3))
        print("heap_%s_hook_on: %.2f ms (%d samples in the run)" % (fn.__name__, min(on) * 1e3, st["sampled"]))
        print("ratio: %.3f (%s with the heap sampling hook on / off; median of pairs %.3f)" % (
            min(on) / min(off), fn.__name__, statistics.median(b / a for a, b in zip(off, on))))
    tracemalloc.start(32)
    try:
        tm = min(timeit.repeat(alloc_loop, number=1, repeat=1))   # slow: once is enough
    finally:
        tracemalloc.stop()
    base = min(timeit.repeat(alloc_loop, number=1, repeat=3))
    print("heap_alloc_loop_tracemalloc32: %.2f ms" % (tm * 1e3))
    print("ratio: %.2f (alloc_loop with tracemalloc(32) on / off, for scale)" % (tm / base))


def bench_locks():
    n = 1_000_000
    stmt = "with lock:\n    pass"
    plain = min(timeit.repeat(stmt, globals={"lock": threading.Lock()}, number=n, repeat=3)) / n
    ours = min(timeit.repeat(stmt, globals={"lock": contention.Lock()}, number=n, repeat=3)) / n
    contention.enable()
    try:
        rec = min(timeit.repeat(stmt, globals={"lock": contention.Lock()}, number=n, repeat=3)) / n
    finally:
        contention.disable()
        contention.reset()
    print("lock_threading_with: %.0f ns" % (plain * 1e9))
    print("lock_urdar_with_off: %.0f ns" % (ours * 1e9))
    print("lock_urdar_with_on_uncontended: %.0f ns" % (rec * 1e9))
    print("ratio: %.2f (urdar Lock / threading.Lock, recording off)" % (ours / plain))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hz", type=int, default=100)
    ap.add_argument("--threads", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--heap-rounds", type=int, default=7)
    ap.add_argument("--only", choices=("sampler", "heap", "locks"), default=None)
    a = ap.parse_args()
    if a.only in (None, "sampler"):
        bench_sampler(a.hz, a.threads, a.seconds)
    if a.only in (None, "heap"):
        bench_heap(a.heap_rounds)
    if a.only in (None, "locks"):
        bench_locks()


if __name__ == "__main__":
    main()
