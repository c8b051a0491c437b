"""Profiler overhead: what a CPU/wall sampler, heap tracking and the instrumented locks cost.

Prints `name: value unit` lines and `ratio: R` lines (work done with the profiler on / off).
- sampler: a pure-Python worker's throughput while a StackSampler runs at --hz over --threads
  idle threads with ~30-frame stacks, and the sampler thread's own CPU per second;
- heap: the cost of an allocation-heavy loop with tracemalloc on (32 frames) and off;
- locks: `with lock:` on threading.Lock, on urdar's Lock with recording off and on (uncontended).

    python benchmarks/profiling_bench.py [--hz 100] [--threads 20] [--seconds 3]
"""
import argparse
import os
import sys
import threading
import time
import timeit
import tracemalloc

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from urdar.profiling import contention  # noqa: E402
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
    keep = []
    for i in range(200_000):
        keep.append((i, str(i), [i]))
    return len(keep)


def bench_heap():
    off = min(timeit.repeat(alloc_loop, number=1, repeat=3))
    tracemalloc.start(32)
    try:
        on = min(timeit.repeat(alloc_loop, number=1, repeat=3))
    finally:
        tracemalloc.stop()
    print("heap_off_alloc_loop: %.1f ms" % (off * 1e3))
    print("heap_on_alloc_loop: %.1f ms" % (on * 1e3))
    print("ratio: %.2f (allocation-heavy loop with tracemalloc(32) on / off)" % (on / off))


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
    a = ap.parse_args()
    bench_sampler(a.hz, a.threads, a.seconds)
    bench_heap()
    bench_locks()


if __name__ == "__main__":
    main()
