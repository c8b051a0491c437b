"""Wall-clock profile of every thread, on- and off-CPU (GET /debug/fgprof), after felixge/fgprof.

Every thread is sampled at each tick whether it runs, waits on a lock, sleeps or blocks in I/O,
so waiting shows up next to computing. `wall_profile(sampler)` gives pprof sample types
samples/count and time/nanoseconds; `folded(sampler)` gives Brendan Gregg's folded stacks
("root;...;leaf count" per line, function names only) for flamegraph.pl, speedscope and friends."""
from urdar.profiling import sampler as _sampler
from urdar.profiling.pprof import sampled_profile
from urdar.profiling.sampler import Exclusive

DEFAULT_HZ = 99
EXCLUSIVE = Exclusive("wall-clock (fgprof)")


def wall_profile(sampler):
    return sampled_profile(sampler, ("time", "nanoseconds"), ("wall", "nanoseconds"),
                           "wall-clock profile (fgprof)")


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
    return _sampler.record(EXCLUSIVE, "wall", seconds, hz)
