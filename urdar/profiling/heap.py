"""Live-heap profile by allocation site (GET /debug/pprof/heap), from tracemalloc.

Heap tracking is off by default and then costs nothing: tracemalloc is not started. `enable()`
starts it at run time, without a restart (GET /debug/pprof/heap?enable=1, or `HeapProfiler(
enabled=True)` at start-up; PYTHONTRACEMALLOC=N also counts as on); from then every allocation
records its stack of `nframes` frames, which costs CPU on each allocation and memory per live
block, so switch it off again with `disable()` (?disable=1), which frees what it recorded. Only
memory allocated while tracking was on is seen. tracemalloc keeps no totals of freed memory, so
the profile has inuse_objects/count and inuse_space/bytes (the default), not Go's alloc_*.

tracemalloc frames carry a file and a line but no function name; `FunctionIndex` finds the
innermost function containing the line among the loaded modules' code objects, so the names
match the CPU profile's 'module.Qual.name'. Building the profile is O(live blocks) and runs
in an offload thread."""
import bisect
import gc
import sys
import threading
import tracemalloc
import types

from urdar.profiling.pprof import ProfileBuilder

DEFAULT_NFRAMES = 32


class HeapProfilingOff(RuntimeError):
    """The heap profile was asked for while tracking is off; the message says how to turn it on."""

    def __init__(self):
        super().__init__("heap profiling is off, so no allocation sites were recorded. Switch it on at "
                         "run time with GET /debug/pprof/heap?enable=1 (optionally &frames=N, default %d; "
                         "it slows allocations), let the workload run, then GET /debug/pprof/heap. "
                         "Switch it off with GET /debug/pprof/heap?disable=1." % DEFAULT_NFRAMES)


class FunctionIndex:
    """(file, line) -> (qualified name, first line), from the code objects of loaded modules.

    Parsing sources would allocate a lot while tracemalloc traces every allocation, so instead the
    module that owns the file (sys.modules) is walked once: its functions, classes, methods and,
    through co_consts, every nested code object (closures, lambdas, comprehensions). Each code
    object covers the lines co_lines() lists; the innermost one containing a line names it with
    co_qualname, as in the CPU profile. Lines outside any function are '<module>'."""

    def __init__(self):
        self._files = None          # filename -> {code} found so far
        self._walked = set()        # files whose module was walked
        self._spans = {}            # filename -> ([first lines], [codes]) sorted by first line
        self._last = {}             # code -> last line it covers
        self._lines = {}            # (filename, line) -> (name, start)
        self._modules = {}          # filename -> module name

    def _index(self):
        self._files = {}
        for name, mod in list(sys.modules.items()):
            f = getattr(mod, "__file__", None)
            if f:
                self._modules.setdefault(f, name)

    def _walk_module(self, filename):
        """Add the code objects of the module loaded from `filename` (once per file)."""
        name = self._modules.get(filename)
        mod = sys.modules.get(name) if name else None
        d = getattr(mod, "__dict__", None)
        if d is not None:
            seen = set()
            for obj in list(d.values()):
                self._collect(obj, name, seen, 0)

    def _collect(self, obj, module, seen, depth):
        if id(obj) in seen or depth > 8:
            return
        seen.add(id(obj))
        obj = getattr(obj, "__func__", obj)                  # staticmethod, classmethod, bound method
        obj = getattr(obj, "__wrapped__", obj) if not isinstance(obj, type) else obj
        code = getattr(obj, "__code__", None)
        if isinstance(code, types.CodeType):
            self._add_code(code)
        elif isinstance(obj, type) and getattr(obj, "__module__", None) == module:
            for v in list(vars(obj).values()):
                self._collect(v, module, seen, depth + 1)
        elif isinstance(obj, property):
            for f in (obj.fget, obj.fset, obj.fdel):
                if f is not None:
                    self._collect(f, module, seen, depth + 1)

    def _add_code(self, code):
        codes = self._files.setdefault(code.co_filename, set())
        if code in codes:
            return
        codes.add(code)
        for c in code.co_consts:
            if isinstance(c, types.CodeType):
                self._add_code(c)

    def module_of(self, filename):
        if self._files is None:
            self._index()
        return self._modules.get(filename, "")

    def _codes_of(self, filename):
        """[(first line, code)] of the file's code objects, sorted by first line."""
        codes = self._spans.get(filename)
        if codes is None:
            if self._files is None:
                self._index()
            if filename not in self._walked:
                self._walked.add(filename)
                self._walk_module(filename)
            codes = sorted(((c.co_firstlineno, id(c), c) for c in self._files.get(filename, ())))
            codes = self._spans[filename] = ([f for f, _i, _c in codes], [c for _f, _i, c in codes])
        return codes

    def _last_line(self, code):
        last = self._last.get(code)
        if last is None:
            last = code.co_firstlineno
            for _s, _e, ln in code.co_lines():
                if ln is not None and ln > last:
                    last = ln
            self._last[code] = last
        return last

    def lookup(self, filename, line):
        key = (filename, line)
        hit = self._lines.get(key)
        if hit is None:
            firsts, codes = self._codes_of(filename)
            qual, start = "<module>", 1
            # Nested code starts after the code around it: walk back from the last code starting
            # at or before `line`; the first one whose lines reach `line` is the innermost.
            for k in range(bisect.bisect_right(firsts, line) - 1, -1, -1):
                code = codes[k]
                if self._last_line(code) >= line:
                    qual, start = getattr(code, "co_qualname", code.co_name), code.co_firstlineno
                    break
            module = self.module_of(filename)
            hit = self._lines[key] = ("%s.%s" % (module, qual) if module else qual, start)
        return hit


class HeapProfiler:
    """Switches tracemalloc on and off and turns its live blocks into a pprof heap profile."""

    def __init__(self, enabled=False, nframes=DEFAULT_NFRAMES):
        self.nframes = nframes
        self._lock = threading.Lock()
        if enabled:
            self.enable()

    @property
    def enabled(self):
        return tracemalloc.is_tracing()

    def enable(self, nframes=None):
        """Start tracking (no-op if on). Returns the number of frames kept per allocation."""
        with self._lock:
            if not tracemalloc.is_tracing():
                tracemalloc.start(nframes or self.nframes)
            return tracemalloc.get_traceback_limit()

    def disable(self):
        """Stop tracking and free everything tracemalloc recorded."""
        with self._lock:
            if tracemalloc.is_tracing():
                tracemalloc.stop()

    def sites(self, collect=False):
        """{stack (leaf-first tuple of (file, line)): [blocks, bytes]} of live traced memory."""
        if not tracemalloc.is_tracing():
            raise HeapProfilingOff()
        if collect:
            gc.collect()
        snap = tracemalloc.take_snapshot()
        raw = getattr(snap.traces, "_traces", None)
        agg = {}
        if raw is not None:
            for _domain, size, frames, *_rest in raw:     # frames leaf first (tracemalloc's order)
                row = agg.get(frames)
                if row is None:
                    agg[frames] = [1, size]
                else:
                    row[0] += 1
                    row[1] += size
        else:                                              # public API, other interpreters
            for tr in snap.traces:
                frames = tuple((f.filename, f.lineno) for f in reversed(tr.traceback))
                row = agg.setdefault(frames, [0, 0])
                row[0] += 1
                row[1] += tr.size
        return agg

    def profile(self, collect=False):
        """A ProfileBuilder with inuse_objects/count and inuse_space/bytes per allocation stack."""
        agg = self.sites(collect)
        current, peak = tracemalloc.get_traced_memory()
        b = ProfileBuilder([("inuse_objects", "count"), ("inuse_space", "bytes")],
                           period_type=("space", "bytes"), period=1, default_sample_type="inuse_space",
                           comments=["urdar heap profile (tracemalloc, %d frames): %d bytes traced now, "
                                     "peak %d" % (tracemalloc.get_traceback_limit(), current, peak)])
        index = FunctionIndex()
        for frames, (blocks, size) in agg.items():
            locs = []
            for filename, line in frames:
                name, start = index.lookup(filename, line)
                locs.append(b.location(name, filename, start, line))
            if locs:
                b.add_sample(locs, [blocks, size])
        return b

    def text(self, collect=False, limit=200):
        """Readable top allocation sites by bytes (debug=1)."""
        agg = self.sites(collect)
        index = FunctionIndex()
        total_blocks = sum(r[0] for r in agg.values())
        total_bytes = sum(r[1] for r in agg.values())
        out = ["heap profile: %d objects, %d bytes in use (tracemalloc, %d frames)\n\n"
               % (total_blocks, total_bytes, tracemalloc.get_traceback_limit())]
        for frames, (blocks, size) in sorted(agg.items(), key=lambda kv: -kv[1][1])[:limit]:
            out.append("%d: %d bytes @\n" % (blocks, size))
            for filename, line in frames:
                out.append("#\t%-60s %s:%d\n" % (index.lookup(filename, line)[0], filename, line))
            out.append("\n")
        return "".join(out)
