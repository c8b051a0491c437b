"""CPU profile of the whole process in pprof format (GET /debug/pprof/profile).

`cpu_profile(sampler)` turns a stopped StackSampler(mode="cpu") into a ProfileBuilder with sample
types samples/count and cpu/nanoseconds (the default), period cpu/nanoseconds = 1e9/hz, one
sample per (thread, stack) labelled thread=<name>. The CPU value is the thread's measured CPU time
between ticks (see sampler.py), so `-top` weighs functions by CPU actually used. `record()` is the
blocking form for scripts and tests; the HTTP handler drives the sampler from the reactor clock."""
from urdar.profiling import sampler as _sampler
from urdar.profiling.pprof import sampled_profile
from urdar.profiling.sampler import Exclusive

DEFAULT_HZ = 100
EXCLUSIVE = Exclusive("CPU")


def cpu_profile(sampler):
    return sampled_profile(sampler, ("cpu", "nanoseconds"), ("cpu", "nanoseconds"), "CPU profile")


def record(seconds, hz=DEFAULT_HZ):
    """Sample CPU for `seconds` (blocking the caller) and return the ProfileBuilder."""
    return cpu_profile(_sampler.record(EXCLUSIVE, "cpu", seconds, hz))
