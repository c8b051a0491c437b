"""Contention profiles of urdar's own locks (GET /debug/pprof/block and /debug/pprof/mutex).

`Lock()` and `RLock()` are drop-in replacements for threading's, for the locks urdar itself uses
(engine, TSDB, pools). Every acquire first tries the C lock without blocking, so an uncontended
acquire costs one Python call more than threading's and records nothing. Only when the lock is
held by someone else and contention profiling is on (`enable()`; off by default) does the waiter
time its wait and record it twice:
- block profile: against the waiter's own stack (where threads sat waiting), like Go's block profile;
- mutex profile: against the stack that released the lock to it (who kept others waiting), like
  Go's mutex profile. The releaser captures its stack only while someone is waiting.
Both have sample types contentions/count and delay/nanoseconds. Switching off keeps what was
recorded until `reset()`; the HTTP handler can also record a window (?seconds=N) and serve the delta.
Locks made by threading directly (inside Twisted or the standard library) are not seen."""
import _thread
import sys
import time

from urdar.profiling.pprof import CodeTable, ProfileBuilder, add_stack, frame_stack

MAX_DEPTH = 64


class _State:
    def __init__(self):
        self.enabled = False
        self.ever_enabled = False
        self.meta = _thread.allocate_lock()     # guards the tables and waiter counts (slow path only)
        self.block = {}                         # stack -> [contentions, delay ns]
        self.mutex = {}
        self.modules = CodeTable()              # code objects of the recorded stacks
        self.since_ns = 0


_state = _State()


def enable():
    """Start recording waits on urdar locks (block and mutex profiles)."""
    if not _state.enabled:
        _state.since_ns = _state.since_ns or time.time_ns()
    _state.enabled = True
    _state.ever_enabled = True


def disable():
    """Stop recording; what was recorded stays until reset()."""
    _state.enabled = False


def is_enabled():
    return _state.enabled


def ever_enabled():
    return _state.ever_enabled


def reset():
    """Forget every recorded wait (when recording is off, as if it had never been on)."""
    with _state.meta:
        _state.block = {}
        _state.mutex = {}
        _state.since_ns = time.time_ns() if _state.enabled else 0
        _state.ever_enabled = _state.enabled


def snapshot(kind):
    """A copy of the table of `kind` ("block" or "mutex"): {stack: (contentions, delay ns)}."""
    with _state.meta:
        table = _state.block if kind == "block" else _state.mutex
        return {k: tuple(v) for k, v in table.items()}


def delta(after, before):
    """Waits recorded between two snapshots of the same kind."""
    out = {}
    for k, (n, ns) in after.items():
        n0, ns0 = before.get(k, (0, 0))
        if n > n0:
            out[k] = (n - n0, ns - ns0)
    return out


def _record(table, stack, delay_ns):
    with _state.meta:
        row = table.get(stack)
        if row is None:
            table[stack] = [1, delay_ns]
        else:
            row[0] += 1
            row[1] += delay_ns


class _Waitable:
    __slots__ = ("_lock", "_waiters", "_release_site", "__weakref__")

    def __init__(self, lock):
        self._lock = lock
        self._waiters = 0
        self._release_site = None

    def acquire(self, blocking=True, timeout=-1):
        if self._lock.acquire(False):           # uncontended (or re-entered): nothing to record
            return True
        if not blocking:
            return False
        if not _state.enabled:
            return self._lock.acquire(True, timeout)
        return self._wait(timeout)

    def _wait(self, timeout):
        waiter = frame_stack(sys._getframe(2), _state.modules, MAX_DEPTH)
        meta = _state.meta
        with meta:
            self._waiters += 1
        t0 = time.perf_counter_ns()
        try:
            ok = self._lock.acquire(True, timeout)
        finally:
            waited = time.perf_counter_ns() - t0
            with meta:
                self._waiters -= 1
        if ok:
            # We hold the lock now, so _release_site is the stack of the release that let us in.
            _record(_state.block, waiter, waited)
            site, self._release_site = self._release_site, None
            if site:        # None when the holder released before we registered as a waiter
                _record(_state.mutex, site, waited)
        return ok

    def release(self):
        if self._waiters and _state.enabled:
            self._release_site = frame_stack(sys._getframe(1), _state.modules, MAX_DEPTH)
        self._lock.release()

    # Aliases, not wrappers: the recorded stacks then start at the caller's `with` line.
    __enter__ = acquire

    def __exit__(self, *exc):
        if self._waiters and _state.enabled:
            self._release_site = frame_stack(sys._getframe(1), _state.modules, MAX_DEPTH)
        self._lock.release()

    def locked(self):
        return self._lock.locked()


class Lock(_Waitable):
    """threading.Lock with contention recording (see the module docstring)."""
    __slots__ = ()

    def __init__(self):
        super().__init__(_thread.allocate_lock())

    def __repr__(self):
        return "<urdar Lock %s>" % ("locked" if self._lock.locked() else "unlocked")


class RLock(_Waitable):
    """threading.RLock with contention recording; usable with threading.Condition."""
    __slots__ = ()

    def __init__(self):
        super().__init__(_thread.RLock())

    def locked(self):
        return self._lock._is_owned() if hasattr(self._lock, "_is_owned") else False

    # threading.Condition uses these to wait with a recursively held lock.
    def _is_owned(self):
        return self._lock._is_owned()

    def _release_save(self):
        return self._lock._release_save()

    def _acquire_restore(self, state):
        self._lock._acquire_restore(state)

    def __repr__(self):
        return "<urdar RLock>"


def profile(kind, table=None, duration_ns=0):
    """pprof ProfileBuilder for `kind` ("block" or "mutex") from `table` (default: all recorded)."""
    if table is None:
        table = snapshot(kind)
    b = ProfileBuilder([("contentions", "count"), ("delay", "nanoseconds")],
                       period_type=("contentions", "count"), period=1, default_sample_type="delay",
                       duration_nanos=duration_ns,
                       comments=["urdar %s profile of urdar.profiling.contention locks (%s)" % (
                           kind, "waiter stacks" if kind == "block" else "releasing stacks")])
    modules = _state.modules
    for stack, (n, ns) in table.items():
        if stack:
            b.add_sample(add_stack(b, stack, modules), [n, ns])
    return b
