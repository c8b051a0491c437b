"""Wall-clock profile of every thread, on- and off-CPU (GET /debug/fgprof), after felixge/fgprof.

Every thread is sampled at each tick whether it runs, waits on a lock, sleeps or blocks in I/O,
so waiting shows up next to computing. `wall_profile(sampler)` gives pprof sample types
samples/count and time/nanoseconds; `folded(sampler)` gives Brendan Gregg's folded stacks
("root;...;leaf count" per line, function names only) for flamegraph.pl, speedscope and friends."""
import time

from urdar.profiling.pprof import ProfileBuilder, add_stack
from urdar.profiling.sampler import Exclusive, StackSampler

DEFAULT_HZ = 99
EXCLUSIVE = Exclusive("wall-clock (fgprof)")


def wall_profile(sampler):
    b = ProfileBuilder([("samples", "count"), ("time", "nanoseconds")],
                       period_type=("wall", "nanoseconds"), period=sampler.period_ns,
                       default_sample_type="time", time_nanos=sampler.started_ns,
                       duration_nanos=sampler.duration_ns,
                       comments=["urdar wall-clock profile (fgprof): %d Hz, %d ticks, sampler used %d ns of CPU"
                                 % (sampler.hz, sampler.ticks, sampler.overhead_ns)])
    for (thread, stack), (n, ns) in sampler.stacks.items():
        b.add_sample(add_stack(b, stack, sampler.modules), [n, ns], {"thread": thread})
    return b


def folded(sampler):
    """Folded stacks text: one 'f1;f2;...;leaf N' line per distinct stack, root first."""
    counts = {}
    names = {}
    for (_thread, stack), (n, _ns) in sampler.stacks.items():
        parts = []
        for cid, _line in reversed(stack):
            name = names.get(cid)
            if name is None:
                name = names[cid] = sampler.modules.name(cid).replace(";", ":")
            parts.append(name)
        key = ";".join(parts)
        counts[key] = counts.get(key, 0) + n
    return "".join("%s %d\n" % (k, v) for k, v in sorted(counts.items()))


def record(seconds, hz=DEFAULT_HZ):
    """Sample every thread's wall clock for `seconds` (blocking) and return the stopped sampler."""
    EXCLUSIVE.acquire()
    try:
        s = StackSampler(hz, "wall")
        s.start()
        try:
            time.sleep(seconds)
        finally:
            s.stop()
        return s
    finally:
        EXCLUSIVE.release()
