"""`python benchmarks/cpuprof_urdar.py <urdar flags>`: urdar with every thread (the reactor's and
the offload pools') under cProfile timed by that thread's CPU clock (time.thread_time), so the
profile shows CPU spent, not waiting; the merged stats are written to $URDAR_CPUPROF when urdar
exits (SIGTERM). Used by instant_cpu_bench.py --profile."""
import cProfile
import os
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

_profiles = []


def _start_in_thread(frame, event, arg):
    # First profile event of a new thread: give the thread its own profiler (enable() replaces
    # this hook for the thread).
    p = cProfile.Profile(time.thread_time)
    _profiles.append(p)
    p.enable()


def main():
    out = os.environ["URDAR_CPUPROF"]
    threading.setprofile(_start_in_thread)
    from urdar.app.main import main as urdar_main
    sys.argv = ["urdar"] + sys.argv[1:]
    p = cProfile.Profile(time.thread_time)
    _profiles.append(p)
    p.enable()
    try:
        rc = urdar_main()
    finally:
        p.disable()
        threading.setprofile(None)
        import pstats
        stats = None
        for prof in list(_profiles):
            try:
                prof.create_stats()
            except Exception:  # noqa: BLE001 (a profiler of a thread still running)
                continue
            if stats is None:
                stats = pstats.Stats(prof)
            else:
                stats.add(prof)
        if stats is not None:
            stats.dump_stats(out)
    return rc


if __name__ == "__main__":
    sys.exit(main())
