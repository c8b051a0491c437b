"""HTTP endpoints of the profilers: /debug/pprof/* (as Go's net/http/pprof) and /debug/fgprof.

`PprofHandler(reactor, offload)` parses, starts or reads a profiler from urdar/profiling/, and
renders; `.app` is a Klein app with only these routes (ROUTES also fits net/server.build_app).
Sampling profiles (profile, fgprof, trace, block/mutex with ?seconds=N) start a sampler thread
and answer when `seconds` have passed on the reactor clock (`clock.callLater`), so the reactor
never waits; encoding runs in the offload pool `pool` ("admin"), or in the reactor's thread pool
when no Offload is given. No sampler thread runs between requests; what is always on is the heap
sampling hook (profiling/heap.py, about one allocation per 512 KiB, as in Go), so /heap and
/allocs answer at once. Lock-contention recording is switched on with ?enable=1 on /block or
/mutex (or for a ?seconds=N window); until then both answer an empty profile, as Go's do at rate 0.
Profiles are gzipped profile.proto (application/octet-stream), read with `go tool pprof URL`;
?debug=1/2 gives text where Go does."""
import html
import json
import sys
import threading

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool

from urdar.components import errors as E
from urdar.handlers.routes import RouteTable
from urdar.profiling import contention, cpu, fgprof, threads, trace
from urdar.profiling.heap import HeapProfiler
from urdar.profiling.pprof import CodeTable
from urdar.profiling.sampler import SamplerBusy, StackSampler

MAX_SECONDS = 3600.0

# name, path, what it shows (the index page table, in Go's order)
PROFILES = (
    ("allocs", "/debug/pprof/allocs", "Memory allocated since start-up by allocation site, sampled as "
     "heap (alloc_space by default; ?seconds=N: only during the next N seconds)."),
    ("block", "/debug/pprof/block", "Time waited on urdar's own locks, by waiting stack "
     "(empty until switched on with ?enable=1; ?seconds=N records a window)."),
    ("cmdline", "/debug/pprof/cmdline", "The command line of this process, NUL-separated."),
    ("fgprof", "/debug/fgprof", "Wall-clock profile of every thread, on- and off-CPU (?seconds=N, "
     "?format=folded for flame graphs)."),
    ("goroutine", "/debug/pprof/goroutine", "Stacks of every thread, and what the reactor waits "
     "for (?debug=1 grouped text, ?debug=2 every thread plus a heap scan for pending Deferreds)."),
    ("heap", "/debug/pprof/heap", "Live memory by allocation site, one allocation sampled per 512 KiB "
     "on average, always on (?gc=1 collects garbage first; ?seconds=N: the change over N seconds)."),
    ("mutex", "/debug/pprof/mutex", "Time waited on urdar's own locks, by releasing stack "
     "(empty until switched on with ?enable=1; ?seconds=N records a window)."),
    ("profile", "/debug/pprof/profile", "CPU profile of every thread (?seconds=N, default 30; "
     "?hz=N, default 100). Use `go tool pprof URL` and then `top`."),
    ("trace", "/debug/pprof/trace", "A sampled timeline of every thread's stack as Chrome trace-event "
     "JSON (?seconds=N, default 1): open in Perfetto or chrome://tracing (not `go tool trace`)."),
)


class BadParam(E.ComponentError):
    """A bad query parameter: 400 through the route table's error rendering."""

    def __init__(self, message):
        super().__init__(E.BAD_DATA, message)


def _arg(request, name, default=None):
    v = request.args.get(name.encode())
    return v[0].decode("utf-8", "replace") if v else default


def _flag(request, name):
    return (_arg(request, name, "") or "").lower() in ("1", "true", "yes", "on")


class PprofHandler:
    ROUTES = (
        ("/debug/pprof/", ("GET",), "index"),
        ("/debug/pprof/profile", ("GET",), "profile"),
        ("/debug/pprof/heap", ("GET",), "heap"),
        ("/debug/pprof/allocs", ("GET",), "allocs"),
        ("/debug/pprof/goroutine", ("GET",), "goroutine"),
        ("/debug/pprof/block", ("GET",), "block"),
        ("/debug/pprof/mutex", ("GET",), "mutex"),
        ("/debug/pprof/trace", ("GET",), "trace"),
        ("/debug/pprof/cmdline", ("GET",), "cmdline"),
        ("/debug/pprof/<name>", ("GET",), "unknown"),
        ("/debug/fgprof", ("GET",), "fgprof"),
    )

    def __init__(self, reactor, offload=None, pool="admin", clock=None, cpu_hz=cpu.DEFAULT_HZ,
                 heap=None, max_seconds=MAX_SECONDS, registry=threads.INFLIGHT, mask_argv=None):
        """`reactor` runs the callbacks and (without `offload`) the thread pool; `clock` (default:
        the reactor) times sampling windows; `heap` is a HeapProfiler (by default a new one, which
        starts the process' heap sampling at $URDAR_MEMPROFILERATE bytes, else 512 KiB);
        `registry` holds the in-flight Deferreds shown by /debug/pprof/goroutine; `mask_argv(argv)`
        (the option table's, passed by the composition root) hides secret flag values on
        /debug/pprof/cmdline as /config does."""
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor
        self.offload = offload
        self.pool = pool
        self.cpu_hz = cpu_hz
        self.heap_profiler = heap if heap is not None else HeapProfiler()
        self.max_seconds = max_seconds
        self.registry = registry
        self.mask_argv = mask_argv if mask_argv is not None else list
        # Standalone app (tests, embedding): the same route rows and error rendering as when the
        # composition root mounts this handler in the server's route table.
        self.app = RouteTable().mount(self).app

    # ---- helpers ---------------------------------------------------------------------------

    def _run(self, fn, *args):
        if self.offload is not None:
            return self.offload.run(self.pool, fn, *args)
        return deferToThreadPool(self.reactor, self.reactor.getThreadPool(), fn, *args)

    def _seconds(self, request, default):
        raw = _arg(request, "seconds")
        if raw is None or raw == "":
            return default
        try:
            s = float(raw)
        except ValueError:
            raise BadParam("invalid seconds=%r: want a positive number of seconds" % raw)
        if not 0 < s <= self.max_seconds:
            raise BadParam("seconds=%s out of range: want 0 < seconds <= %g" % (raw, self.max_seconds))
        return s

    def _int(self, request, name, default, lo, hi):
        raw = _arg(request, name)
        if raw is None or raw == "":
            return default
        try:
            v = int(raw)
        except ValueError:
            raise BadParam("invalid %s=%r: want an integer" % (name, raw))
        if not lo <= v <= hi:
            raise BadParam("%s=%d out of range: want %d..%d" % (name, v, lo, hi))
        return v

    @staticmethod
    def _binary(request, name, data, ctype=b"application/octet-stream"):
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", ctype)
        request.setHeader(b"Content-Disposition", b'attachment; filename="%s"' % name.encode())
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        request.setHeader(b"Content-Length", b"%d" % len(data))
        return data

    @staticmethod
    def _text(request, body, ctype=b"text/plain; charset=utf-8"):
        data = body.encode("utf-8", "replace")
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", ctype)
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        request.setHeader(b"Content-Length", b"%d" % len(data))
        return data

    def _window(self, seconds, start, finish, stop):
        """Call start() now and finish() in the pool after `seconds` on the clock; a Deferred of
        finish()'s result. stop() runs exactly once: after finish, or when the client hangs up."""
        state = {"call": None, "stopped": False}

        def stop_once():
            if not state["stopped"]:
                state["stopped"] = True
                stop()

        def cancel(_d):
            if state["call"] is not None and state["call"].active():
                state["call"].cancel()
                stop_once()

        d = defer.Deferred(cancel)
        start()

        def fire():
            r = self._run(finish)
            r.addBoth(lambda res: (stop_once(), res)[1])
            r.chainDeferred(d)
        state["call"] = self.clock.callLater(seconds, fire)
        return d

    def _sampled(self, request, seconds, exclusive, sampler, render, name, ctype=b"application/octet-stream"):
        try:
            exclusive.acquire()
        except SamplerBusy as exc:
            raise E.ComponentError(E.CONFLICT, str(exc))

        def finish():
            sampler.stop()
            return render(sampler)
        d = self._window(seconds, sampler.start, finish,
                         lambda: (sampler.signal_stop(), exclusive.release()))
        return d.addCallback(lambda data: self._binary(request, name, data, ctype))

    # ---- routes ----------------------------------------------------------------------------

    def index(self, request):
        counts = {
            "goroutine": len(threading.enumerate()),
            "block": len(contention.snapshot("block")),
            "mutex": len(contention.snapshot("mutex")),
            "heap": self.heap_profiler.stats()["buckets"],
            "allocs": self.heap_profiler.stats()["buckets"],
        }
        rows = []
        for name, path, what in PROFILES:
            rows.append('<tr><td align=right>%s</td><td><a href="%s">%s</a></td><td>%s</td></tr>' % (
                counts.get(name, ""), html.escape(path) + ("?debug=1" if name == "goroutine" else ""),
                name, html.escape(what)))
        hp = self.heap_profiler
        heap_state = ("on, one allocation sampled per %d bytes on average" % hp.sampling_rate if hp.enabled
                      else "off ($URDAR_MEMPROFILERATE=0)")
        body = (
            "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>/debug/pprof/</title></head><body>"
            "<h1>/debug/pprof/</h1><p>Types of profiles available (Python threads stand in for "
            "goroutines):</p><table><thead><tr><th>Count</th><th>Profile</th><th></th></tr></thead>"
            "<tbody>%s</tbody></table>"
            "<p><a href=\"/debug/pprof/goroutine?debug=2\">full thread stack dump</a></p>"
            "<p>Heap sampling is %s. Lock-contention recording is %s "
            "(<a href=\"/debug/pprof/mutex?enable=1\">switch on</a>, "
            "<a href=\"/debug/pprof/mutex?disable=1\">switch off</a>).</p>"
            "<p>Read a profile with <code>go tool pprof http://HOST:PORT/debug/pprof/profile?seconds=30</code>.</p>"
            "</body></html>" % ("".join(rows), heap_state,
                                "on" if contention.is_enabled() else "off"))
        return self._text(request, body, b"text/html; charset=utf-8")

    def unknown(self, request, name):
        raise E.ComponentError(E.NOT_FOUND, "Unknown profile %r; available: %s" % (
            name, ", ".join(n for n, _p, _w in PROFILES if n != "fgprof")))

    def cmdline(self, request):
        argv = sys.orig_argv if hasattr(sys, "orig_argv") else sys.argv
        return self._text(request, "\x00".join(self.mask_argv(argv)))   # secrets masked as on /config

    def profile(self, request):
        seconds = self._seconds(request, 30.0)
        hz = self._int(request, "hz", self.cpu_hz, 1, 1000)
        return self._sampled(request, seconds, cpu.EXCLUSIVE, StackSampler(hz, "cpu"),
                             lambda s: cpu.cpu_profile(s).gzipped(), "profile")

    def fgprof(self, request):
        seconds = self._seconds(request, 30.0)
        hz = self._int(request, "hz", fgprof.DEFAULT_HZ, 1, 1000)
        fmt = _arg(request, "format", "pprof")
        if fmt not in ("pprof", "folded"):
            raise BadParam("unknown format=%r: use pprof (default) or folded" % fmt)
        if fmt == "folded":
            return self._sampled(request, seconds, fgprof.EXCLUSIVE, StackSampler(hz, "wall"),
                                 lambda s: fgprof.folded(s).encode(), "fgprof.folded",
                                 b"text/plain; charset=utf-8")
        return self._sampled(request, seconds, fgprof.EXCLUSIVE, StackSampler(hz, "wall"),
                             lambda s: fgprof.wall_profile(s).gzipped(), "fgprof")

    def trace(self, request):
        seconds = self._seconds(request, 1.0)
        hz = self._int(request, "hz", trace.DEFAULT_HZ, 1, 1000)
        return self._sampled(request, seconds, trace.EXCLUSIVE,
                             StackSampler(hz, "wall", record_timeline=True),
                             lambda s: json.dumps(trace.chrome_trace(s), separators=(",", ":")).encode(),
                             "trace.json", b"application/json")

    def goroutine(self, request):
        debug = self._int(request, "debug", 0, 0, 2)
        state = threads.snapshot_reactor(self.reactor, self.registry, self.offload)

        def build():
            modules = CodeTable()
            ts = threads.snapshot_threads(modules)
            if debug == 0:
                return threads.goroutine_profile(ts, modules, state).gzipped()
            deferreds = threads.pending_deferreds() if debug == 2 else None
            return threads.text(ts, modules, debug, state, deferreds)
        d = self._run(build)
        if debug == 0:
            return d.addCallback(lambda data: self._binary(request, "goroutine", data))
        return d.addCallback(lambda body: self._text(request, body))

    def heap(self, request):
        return self._heap(request, "heap", "inuse_space")

    def allocs(self, request):
        return self._heap(request, "allocs", "alloc_space")

    def _heap(self, request, name, default_sample_type):
        """The sampled heap profile (always on); the two names differ only in the default view.
        ?seconds=N serves the change over the next N seconds (Go's delta profile)."""
        hp = self.heap_profiler
        debug = self._int(request, "debug", 0, 0, 2)
        seconds = self._seconds(request, None)
        collect = _flag(request, "gc")
        if seconds is not None:
            if debug:
                raise BadParam("seconds=N is served as a profile only, not with debug=%d (as in Go)"
                               % debug)

            def window(before):
                return self._window(seconds, lambda: None, lambda: hp.profile(
                    collect, default_sample_type, since=before, duration_ns=int(seconds * 1e9)).gzipped(),
                    lambda: None)
            d = self._run(hp.buckets, collect)      # the snapshot before the window, off the reactor
            d.addCallback(window)
            return d.addCallback(lambda data: self._binary(request, name, data))
        if debug:
            return self._run(hp.text, collect).addCallback(
                lambda body: self._text(request, body))
        return self._run(lambda: hp.profile(collect, default_sample_type).gzipped()).addCallback(
            lambda data: self._binary(request, name, data))

    def block(self, request):
        return self._contention(request, "block")

    def mutex(self, request):
        return self._contention(request, "mutex")

    def _contention(self, request, kind):
        seconds = self._seconds(request, None)
        if _flag(request, "disable"):
            contention.disable()
            return self._text(request, "lock-contention recording is off; recorded waits are kept "
                                       "(?reset=1 forgets them)\n")
        if _flag(request, "reset"):
            contention.reset()
            return self._text(request, "recorded lock waits forgotten\n")
        if _flag(request, "enable"):
            contention.enable()
            return self._text(request, "lock-contention recording is on for urdar's locks (block and "
                                       "mutex profiles); ?disable=1 to stop\n")
        if seconds is not None:
            was_on = contention.is_enabled()
            marks = {}

            def start():
                marks["before"] = contention.snapshot(kind)
                contention.enable()

            def finish():
                return contention.profile(kind, contention.delta(contention.snapshot(kind), marks["before"]),
                                          int(seconds * 1e9)).gzipped()

            def stop():
                if not was_on:
                    contention.disable()
            d = self._window(seconds, start, finish, stop)
            return d.addCallback(lambda data: self._binary(request, kind, data))
        # Never switched on: an empty profile, as Go serves at block/mutex profile rate 0.
        return self._run(lambda: contention.profile(kind).gzipped()).addCallback(
            lambda data: self._binary(request, kind, data))
