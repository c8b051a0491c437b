"""What every thread and the reactor are doing right now (GET /debug/pprof/goroutine).

Python threads play the part of Go's goroutines. `snapshot_threads()` reads every thread's stack
(`sys._current_frames()`), name, kernel id, daemon flag and scheduler state (/proc/self/task/<tid>/stat:
R running, S sleeping, D disk wait, ...). `snapshot_reactor(reactor)` reads, on the reactor thread,
what the reactor waits for: its pending delayed calls (function, due time), its readers and
writers (sockets), and the in-flight Deferreds that code registered with `INFLIGHT.track(d, what)`
(a WeakKeyDictionary, so tracking costs one dict insert and never keeps a Deferred alive; the
offload pools are the natural caller). `pending_deferreds()` finds every unfired Deferred in the
heap with gc.get_objects(): it costs time proportional to the heap, so it only runs for debug=2.

Output as Go does it: pprof with sample type goroutine/count by default (one sample per thread,
labelled thread=<name>, state=<state>; delayed calls and tracked Deferreds as samples whose leaf is
the function that will run, under a pseudo-frame naming what waits), `text(debug=1)` groups equal
stacks with counts, `text(debug=2)` prints each thread, then the reactor section."""
import gc
import threading
import time
import weakref

from urdar.profiling.pprof import ProfileBuilder, add_stack, frame_stack, function_name
from urdar.profiling.sampler import current_frames

_STATES = {"R": "running", "S": "sleeping", "D": "disk wait", "T": "stopped", "t": "traced",
           "Z": "zombie", "X": "dead", "I": "idle"}


class InflightRegistry:
    """Deferreds that someone said are in flight, with a description and start time (monotonic s)."""

    def __init__(self):
        self._items = weakref.WeakKeyDictionary()

    def track(self, d, what):
        """Remember Deferred `d` (described by `what`) until it is garbage; returns d."""
        self._items[d] = (what, time.monotonic())
        return d

    def pending(self):
        """[(Deferred, what, age seconds)] of tracked Deferreds that have not fired yet."""
        now = time.monotonic()
        out = []
        for d, (what, t0) in list(self._items.items()):
            if not d.called:
                out.append((d, what, now - t0))
        out.sort(key=lambda r: -r[2])
        return out


INFLIGHT = InflightRegistry()


class ThreadInfo:
    __slots__ = ("ident", "native_id", "name", "daemon", "state", "stack")

    def __init__(self, ident, native_id, name, daemon, state, stack):
        self.ident = ident
        self.native_id = native_id
        self.name = name
        self.daemon = daemon
        self.state = state
        self.stack = stack


def _task_state(native_id):
    if native_id is None:
        return "unknown"
    try:
        with open("/proc/self/task/%d/stat" % native_id, "rb") as f:
            c = f.read().rsplit(b")", 1)[1].split()[0].decode()
        return _STATES.get(c, c)
    except (OSError, IndexError):
        return "unknown"


def snapshot_threads(modules, skip_current=False, max_depth=256):
    """[ThreadInfo] for every thread with a Python frame; `modules` is the CodeTable for the stacks."""
    frames = current_frames()
    by_ident = {t.ident: t for t in threading.enumerate()}
    me = threading.get_ident()
    out = []
    for ident, frame in sorted(frames.items()):
        if skip_current and ident == me:
            continue
        t = by_ident.get(ident)
        native = getattr(t, "native_id", None) if t is not None else None
        out.append(ThreadInfo(ident, native, t.name if t is not None else "thread-%d" % ident,
                              bool(t.daemon) if t is not None else False, _task_state(native),
                              frame_stack(frame, modules, max_depth)))
    del frames
    return out


def _describe(fn):
    """(display name, code or None, module) for any callable."""
    target = getattr(fn, "__func__", fn)
    if hasattr(target, "func") and not hasattr(target, "__code__"):       # functools.partial
        target = target.func
    code = getattr(target, "__code__", None)
    module = getattr(target, "__module__", "") or ""
    if code is not None:
        return function_name(code, module), code, module
    name = getattr(target, "__qualname__", None) or getattr(target, "__name__", None) or type(target).__name__
    return ("%s.%s" % (module, name) if module else name), None, module


class ReactorState:
    """What the reactor waits for, read on the reactor thread."""

    def __init__(self, delayed=(), readers=(), writers=(), inflight=(), now=0.0, pools=None):
        self.delayed = list(delayed)        # [(due in seconds, func, args)]
        self.readers = list(readers)
        self.writers = list(writers)
        self.inflight = list(inflight)      # [(Deferred, what, age seconds)]
        self.now = now
        self.pools = pools or {}            # offload pool stats {name: (in flight, workers, queued)}


def snapshot_reactor(reactor, registry=INFLIGHT, offload=None):
    """ReactorState of `reactor` (must run on the reactor thread; cheap: lists it already keeps)."""
    if reactor is None:
        return ReactorState(inflight=registry.pending() if registry else ())
    now = reactor.seconds()
    delayed = []
    get = getattr(reactor, "getDelayedCalls", None)
    for dc in (get() if get else ()):
        if dc.active():
            delayed.append((dc.getTime() - now, dc.func, dc.args))
    delayed.sort(key=lambda r: r[0])
    readers = list(getattr(reactor, "getReaders", lambda: [])())
    writers = list(getattr(reactor, "getWriters", lambda: [])())
    pools = offload.stats() if offload is not None and hasattr(offload, "stats") else {}
    return ReactorState(delayed, readers, writers, registry.pending() if registry else (), now, pools)


def pending_deferreds():
    """[Deferred] of every unfired Deferred in the heap (gc scan: O(heap), for debug=2 only)."""
    from twisted.internet.defer import Deferred
    return [o for o in gc.get_objects() if isinstance(o, Deferred) and not o.called]


def _deferred_chain(d):
    """Names of the callbacks a pending Deferred will run, first to last."""
    names = []
    for (cb, _a, _k), (eb, _ea, _ek) in getattr(d, "_callbacks", ()):
        fn = cb if getattr(cb, "__name__", "") not in ("passthru",) else eb
        names.append(_describe(fn)[0])
    return names


def goroutine_profile(threads, modules, state=None):
    """pprof profile (goroutine/count): one sample per thread, delayed call and tracked Deferred."""
    b = ProfileBuilder([("goroutine", "count")], period_type=("goroutine", "count"), period=1,
                       comments=["urdar thread profile: %d threads" % len(threads)])
    for t in threads:
        b.add_sample(add_stack(b, t.stack, modules), [1],
                     {"thread": t.name, "state": t.state})
    if state is not None:
        for due, fn, _args in state.delayed:
            name, code, module = _describe(fn)
            leaf = (b.location_for_code(code, code.co_firstlineno, module) if code is not None
                    else b.location(name, "", 0, 0))
            b.add_sample([leaf, b.location("twisted.reactor.callLater", "<reactor>", 0, 0)], [1],
                         {"waiting": "delayed call", "due_in_ms": int(due * 1000)})
        for d, what, age in state.inflight:
            chain = _deferred_chain(d)
            locs = [b.location(n, "<deferred>", 0, 0) for n in chain[:1]]
            locs.append(b.location("in flight: %s" % what, "<deferred>", 0, 0))
            b.add_sample(locs, [1], {"waiting": "deferred", "age_ms": int(age * 1000)})
    return b


def _frame_lines(stack, modules):
    out = []
    for cid, line in stack:
        out.append("%s(...)\n\t%s:%d\n" % (modules.name(cid), modules.code(cid).co_filename, line))
    return "".join(out)


def _reactor_text(state, deferreds=None):
    out = []
    if state is None:
        return ""
    out.append("\nreactor: %d delayed calls, %d readers, %d writers, %d tracked in-flight Deferreds\n"
               % (len(state.delayed), len(state.readers), len(state.writers), len(state.inflight)))
    for name, (inflight, workers, queued) in sorted(state.pools.items()):
        out.append("offload pool %s: %d in flight (%d workers, %d queued max)\n" % (name, inflight, workers, queued))
    for due, fn, args in state.delayed:
        out.append("delayed call in %.3fs: %s(%s)\n" % (due, _describe(fn)[0], _short_args(args)))
    for r in state.readers:
        out.append("reading: %s\n" % _short(r))
    for w in state.writers:
        out.append("writing: %s\n" % _short(w))
    for d, what, age in state.inflight:
        out.append("in flight for %.3fs: %s -> %s\n" % (age, what, ", ".join(_deferred_chain(d)) or "(no callbacks)"))
    if deferreds is not None:
        out.append("\npending Deferreds in the heap (gc scan): %d\n" % len(deferreds))
        for d in deferreds:
            out.append("Deferred at 0x%x -> %s\n" % (id(d), ", ".join(_deferred_chain(d)) or "(no callbacks)"))
    return "".join(out)


def _short(o, limit=160):
    try:
        s = repr(o)
    except Exception:            # a repr must never break the page
        s = "<%s>" % type(o).__name__
    return s if len(s) <= limit else s[:limit - 3] + "..."


def _short_args(args):
    return ", ".join(_short(a, 60) for a in args)


def text(threads, modules, debug, state=None, deferreds=None):
    """Go-like text: debug=1 groups equal stacks with counts, debug=2 prints every thread."""
    out = []
    if debug == 1:
        groups = {}
        for t in threads:
            groups.setdefault(t.stack, []).append(t)
        out.append("thread profile: total %d\n" % len(threads))
        for stack, ts in sorted(groups.items(), key=lambda kv: -len(kv[1])):
            out.append("%d @ %s\n" % (len(ts), ", ".join("%s [%s]" % (t.name, t.state) for t in ts)))
            for cid, line in stack:
                out.append("#\t%-60s %s:%d\n" % (modules.name(cid), modules.code(cid).co_filename, line))
            out.append("\n")
    else:
        for t in threads:
            out.append('thread %d "%s" [%s%s, tid %s]:\n' % (
                t.ident, t.name, t.state, ", daemon" if t.daemon else "", t.native_id))
            out.append(_frame_lines(t.stack, modules))
            out.append("\n")
    out.append(_reactor_text(state, deferreds))
    return "".join(out)
