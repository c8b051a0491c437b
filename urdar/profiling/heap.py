"""The heap profile (GET /debug/pprof/heap and /allocs): sampled allocations, always on, as in Go.

`HeapProfiler` starts the allocator hook of heapsample.pyx, which records about one allocation
per `rate` bytes (512 KiB, Go's runtime.MemProfileRate) with its Python stack and notices when a
sampled block is freed. That costs 5-8 % on loops that do nothing but allocate (the extra
indirect call per allocation and free; benchmarks/profiling_bench.py) and nothing measurable on
ingest (profiling_overhead_bench.py --heap), so it stays on from start-up to exit, and the
profile is there whenever it is asked for, covering everything allocated since start-up (Go's
semantics).
$URDAR_MEMPROFILERATE=<bytes> sets the rate at start-up (like Go's GODEBUG=memprofilerate);
0 switches sampling off and the profile is then valid and empty.

The profile has Go's four sample types: alloc_objects/count, alloc_space/bytes (everything
allocated since start), inuse_objects/count, inuse_space/bytes (not freed yet; the default of
/heap; /allocs defaults to alloc_space). Each (stack, size) bucket's sampled counts are scaled by
Go's unsampling factor 1/(1 - exp(-size/rate)), the inverse of the chance that an allocation of
that size was sampled. Only the PyMem_Malloc/PyObject_Malloc domains are seen: every Python
object and buffer, not memory that C code takes straight from malloc (the engine's head and
chunk buffers)."""
import gc
import math
import os
import sys

from urdar.profiling import heapsample
from urdar.profiling.pprof import ProfileBuilder, function_name

DEFAULT_RATE = heapsample.DEFAULT_RATE
RATE_ENV = "URDAR_MEMPROFILERATE"


def rate_from_env(environ=None):
    """Bytes between samples from $URDAR_MEMPROFILERATE (default 512 KiB; 0: off)."""
    raw = (os.environ if environ is None else environ).get(RATE_ENV, "").strip()
    if not raw:
        return DEFAULT_RATE
    try:
        rate = int(raw)
    except ValueError:
        raise ValueError("%s=%r: want a number of bytes (0 switches heap sampling off)" % (RATE_ENV, raw))
    if rate < 0:
        raise ValueError("%s=%d: want a number of bytes >= 0" % (RATE_ENV, rate))
    return rate


def scale(count, size, rate):
    """Go's scaleHeapSample: (objects, bytes) estimated from `count` samples totalling `size`
    bytes, each allocation of the average size having been sampled with chance 1-exp(-avg/rate)."""
    if count <= 0 or size <= 0:
        return 0, 0
    if rate <= 1:
        return count, size
    p = -math.expm1(-(size / count) / rate)
    return int(count / p + 0.5), int(size / p + 0.5)


def _module_names():
    """filename -> module name of every loaded module, to name functions as the CPU profile does."""
    out = {}
    for name, mod in list(sys.modules.items()):
        f = getattr(mod, "__file__", None)
        if f:
            out.setdefault(f, name)
    return out


class HeapProfiler:
    """Owns the process' heap sampling (one hook per process: every HeapProfiler shares it)."""

    def __init__(self, rate=None):
        """Start sampling at `rate` bytes (default: $URDAR_MEMPROFILERATE, else 512 KiB; 0: off)."""
        self.rate = rate_from_env() if rate is None else int(rate)
        if self.rate:
            heapsample.start(self.rate)

    @property
    def enabled(self):
        return heapsample.rate() > 0

    @property
    def sampling_rate(self):
        """Mean bytes between samples now (0: off), shared by the whole process."""
        return heapsample.rate()

    @staticmethod
    def stats():
        """heapsample.stats(): samples recorded and dropped, buckets, sampled blocks still live."""
        return heapsample.stats()

    def buckets(self, collect=False):
        """[(stack, size, allocs, frees, alloc_bytes, free_bytes)], raw sampled counts;
        `collect` runs a full garbage collection first (?gc=1), so garbage is not in use."""
        if collect:
            gc.collect()
        return heapsample.snapshot()

    def _rows(self, collect, since=None):
        """[(stack, size, alloc_objects, alloc_space, inuse_objects, inuse_space)], scaled; with
        `since` (earlier buckets()), the change since then, as Go's delta profiles (?seconds=N):
        each side scaled on its own, then subtracted; in-use values may then be negative."""
        rate = heapsample.rate() or self.rate

        def scaled(allocs, frees, alloc_bytes, free_bytes):
            ao, ab = scale(allocs, alloc_bytes, rate)
            io, ib = scale(allocs - frees, alloc_bytes - free_bytes, rate)
            return ao, ab, io, ib
        before = {}
        for stack, size, *counts in since or ():
            before[(stack, size)] = scaled(*counts)
        rows = []
        for stack, size, *counts in self.buckets(collect):
            now = scaled(*counts)
            was = before.get((stack, size))
            if was is not None:
                now = tuple(a - b for a, b in zip(now, was))
                if not any(now):
                    continue
            rows.append((stack, size) + now)
        return rows, rate

    def profile(self, collect=False, default_sample_type="inuse_space", since=None, duration_ns=0):
        """A ProfileBuilder in Go's heap profile shape: four sample types, one sample per
        (stack, size) with a `bytes` label (the object size), period_type space/bytes = rate.
        `since` and `duration_ns` make it a delta profile (see _rows)."""
        rows, rate = self._rows(collect, since)
        st = heapsample.stats()
        b = ProfileBuilder([("alloc_objects", "count"), ("alloc_space", "bytes"),
                            ("inuse_objects", "count"), ("inuse_space", "bytes")],
                           period_type=("space", "bytes"), period=rate,
                           default_sample_type=default_sample_type, duration_nanos=duration_ns,
                           comments=["urdar heap profile: one allocation sampled per %d bytes on average "
                                     "(%s); %d samples, %d dropped" % (
                                         rate, "on" if self.enabled else "off", st["sampled"], st["dropped"])])
        modules = _module_names()
        for stack, size, ao, ab, io, ib in rows:
            locs = [b.location_for_code(code, line, modules.get(code.co_filename, ""))
                    for code, line in stack]
            if not locs:
                locs = [b.location("[no Python frame]", "", 0, 0)]
            b.add_sample(locs, [ao, ab, io, ib], {"bytes": int(size)})
        return b

    def text(self, collect=False, limit=200):
        """Go's legacy text form (?debug=1), scaled: 'inuse objects: inuse bytes [alloc objects:
        alloc bytes] @ heap/rate', then each site with its stack, largest in-use bytes first."""
        rows, rate = self._rows(collect)
        modules = _module_names()
        tot = [sum(r[i] for r in rows) for i in (4, 5, 2, 3)]
        out = ["heap profile: %d: %d [%d: %d] @ heap/%d\n" % (tuple(tot) + (rate,))]
        for stack, size, ao, ab, io, ib in sorted(rows, key=lambda r: (-r[5], -r[3]))[:limit]:
            out.append("%d: %d [%d: %d] @ size %d\n" % (io, ib, ao, ab, size))
            for code, line in stack:
                out.append("#\t%-60s %s:%d\n" % (function_name(code, modules.get(code.co_filename, "")),
                                                 code.co_filename, line))
            out.append("\n")
        if len(rows) > limit:
            out.append("... %d more sites\n" % (len(rows) - limit))
        out.append(_process_memory())
        return "".join(out)


def _process_memory():
    """The trailer of the text form, as Go ends it with runtime.MemStats: process-wide figures
    that the sampled sites do not cover (libc memory of the engine shows only in the RSS)."""
    st = heapsample.stats()
    lines = ["", "# heap sampler: %d samples, %d dropped, %d sites, %d sampled blocks live"
             % (st["sampled"], st["dropped"], st["buckets"], st["live"]),
             "# python allocated blocks: %d" % sys.getallocatedblocks()]
    for gen, g in enumerate(gc.get_stats()):
        lines.append("# gc generation %d: %d collections, %d collected, %d uncollectable"
                     % (gen, g["collections"], g["collected"], g["uncollectable"]))
    try:
        with open("/proc/self/statm") as f:
            rss_pages = int(f.read().split()[1])
        lines.append("# process rss bytes: %d" % (rss_pages * os.sysconf("SC_PAGE_SIZE")))
    except (OSError, ValueError, IndexError):
        pass
    return "\n".join(lines) + "\n"
