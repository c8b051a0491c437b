"""`python benchmarks/cpuprof_urdar.py <urdar flags>`: the urdar of the current directory with every
thread (the reactor's and the offload pools') under cProfile timed by that thread's CPU clock
(time.thread_time), so the profile shows CPU spent, not waiting. SIGUSR1 writes a snapshot of
the merged stats so far to $URDAR_CPUPROF.<n> (n = 1, 2, ...; the difference of two is what
happened in between), and the whole run goes to $URDAR_CPUPROF when urdar exits. Used by
instant_cpu_bench.py --profile."""
import cProfile
import os
import pstats
import signal
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.getcwd())

_profiles = []
_snapshots = [0]


def _start_in_thread(frame, event, arg):
    # First profile event of a new thread: give the thread its own profiler (enable() replaces
    # this hook for the thread).
    p = cProfile.Profile(time.thread_time)
    _profiles.append(p)
    p.enable()


def merged():
    """pstats.Stats of every thread's profiler so far (read without stopping them)."""
    stats = None
    with tempfile.TemporaryDirectory() as d:
        for i, prof in enumerate(list(_profiles)):
            prof.snapshot_stats()
            path = os.path.join(d, "%d" % i)
            import marshal
            with open(path, "wb") as f:
                marshal.dump(prof.stats, f)
            if stats is None:
                stats = pstats.Stats(path)
            else:
                stats.add(path)
    return stats


def snapshot(signum, frame):
    _snapshots[0] += 1
    merged().dump_stats("%s.%d" % (os.environ["URDAR_CPUPROF"], _snapshots[0]))


def main():
    out = os.environ["URDAR_CPUPROF"]
    threading.setprofile(_start_in_thread)
    from urdar.app.main import main as urdar_main
    sys.argv = ["urdar"] + sys.argv[1:]
    signal.signal(signal.SIGUSR1, snapshot)
    p = cProfile.Profile(time.thread_time)
    _profiles.append(p)
    p.enable()
    try:
        rc = urdar_main()
    finally:
        p.disable()
        threading.setprofile(None)
        merged().dump_stats(out)
    return rc


if __name__ == "__main__":
    sys.exit(main())
