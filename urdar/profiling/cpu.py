"""CPU profile of the whole process in pprof format (GET /debug/pprof/profile).

`cpu_profile(sampler)` turns a stopped StackSampler(mode="cpu") into a ProfileBuilder with sample
types samples/count and cpu/nanoseconds (the default), period cpu/nanoseconds = 1e9/hz, one
sample per (thread, stack) labelled thread=<name>. The CPU value is the thread's measured CPU time
between ticks (see sampler.py), so `-top` weighs functions by CPU actually used. `record()` is the
blocking form for scripts and tests; the HTTP handler drives the sampler from the reactor clock."""
import time

from urdar.profiling.pprof import ProfileBuilder, add_stack
from urdar.profiling.sampler import Exclusive, StackSampler

DEFAULT_HZ = 100
EXCLUSIVE = Exclusive("CPU")


def cpu_profile(sampler):
    b = ProfileBuilder([("samples", "count"), ("cpu", "nanoseconds")],
                       period_type=("cpu", "nanoseconds"), period=sampler.period_ns,
                       default_sample_type="cpu", time_nanos=sampler.started_ns,
                       duration_nanos=sampler.duration_ns,
                       comments=["urdar CPU profile: %d Hz, %d ticks, sampler used %d ns of CPU"
                                 % (sampler.hz, sampler.ticks, sampler.overhead_ns)])
    for (thread, stack), (n, ns) in sampler.stacks.items():
        b.add_sample(add_stack(b, stack, sampler.modules), [n, ns], {"thread": thread})
    return b


def record(seconds, hz=DEFAULT_HZ):
    """Sample CPU for `seconds` (blocking the caller) and return the ProfileBuilder."""
    EXCLUSIVE.acquire()
    try:
        s = StackSampler(hz, "cpu")
        s.start()
        try:
            time.sleep(seconds)
        finally:
            s.stop()
        return cpu_profile(s)
    finally:
        EXCLUSIVE.release()
