"""The stack sampler behind the CPU profile (cpu.py), fgprof (fgprof.py) and the trace (trace.py).

A `StackSampler` runs in its own daemon thread only between start() and stop(): at `hz` ticks a
second it reads `sys._current_frames()` (every thread's Python stack, under the GIL) and adds the
stack of each thread that qualifies to a table {(thread name, stack): [samples, value]}:
- mode "cpu": only threads that consumed CPU since the previous tick. Each thread's CPU time is read
  from its own CPU clock, `clock_gettime(CLOCK_THREAD_CPUTIME of its kernel tid)` (Linux builds the
  clock id from the tid, so a thread that just exited gives EINVAL instead of undefined behaviour);
  the value added is the CPU nanoseconds it used since the previous tick. Threads without a
  threading.Thread object (no native id known) cannot be measured and are left out.
- mode "wall": every thread, running or waiting (fgprof); the value is the wall time since the
  previous tick.
The sampler's own thread is never sampled. Nothing runs and nothing is hooked while no sampler
is started. A thread whose CPU time was spent in C code that released the GIL shows the Python
frame that called it. Without signals a tick only sees where a thread is now, not where it spent
the CPU it used since the previous tick; short jobs (a push's decode + append takes ~1 ms) mostly
end before the tick, and the CPU would land on the pool worker's queue wait. So in cpu mode a
thread seen parked (its leaf is a known blocking wait: Condition.wait, a selector or reactor poll,
a contended urdar lock; see `parked_codes()`) gives no sample at that tick; the CPU it used is
kept aside and, when sampling stops (or the thread exits), shared out over the stacks that thread
was seen running in, in proportion to their CPU (only to its parked stacks if it was never seen
running), so per-thread totals stay the measured CPU. Work that holds the GIL for less than the
interpreter's switch interval (5 ms) is rarely seen running at all, since the sampler only gets
the GIL when that work waits; Cython code that releases the GIL is seen fine.

Cost per tick (benchmarks/profiling_bench.py; tick over 20 idle 30-frame threads ~14 us): a thread
found in the same frame at the same instruction as at the previous tick has not returned from
its call, so its stack is reused and its row updated without walking or hashing the stack; in cpu
mode such a thread parked in a wait is skipped without even reading its CPU clock."""
import gc
import os
import sys
import threading
import time

from urdar.profiling.pprof import CodeTable

_PER_THREAD_SCHED = 6       # CPUCLOCK_PERTHREAD_MASK | CPUCLOCK_SCHED in Linux's clock id encoding


def _linux_thread_clock(tid):
    return ((~tid) << 3) | _PER_THREAD_SCHED


def _check_linux_clock():
    try:
        mine = time.pthread_getcpuclockid(threading.get_ident())
        return mine == _linux_thread_clock(threading.get_native_id())
    except (AttributeError, OSError):
        return False


LINUX_THREAD_CLOCKS = _check_linux_clock()
try:
    _CLK_TCK = os.sysconf("SC_CLK_TCK")
except (ValueError, OSError, AttributeError):
    _CLK_TCK = 100


_PARKED = (("threading", "Condition", "wait"), ("threading", "Thread", "_wait_for_tstate_lock"),
           ("selectors", "EpollSelector", "select"), ("selectors", "PollSelector", "select"),
           ("selectors", "SelectSelector", "select"),
           ("twisted.internet.epollreactor", "EPollReactor", "doPoll"),
           ("twisted.internet.pollreactor", "PollReactor", "doPoll"),
           ("twisted.internet.selectreactor", "SelectReactor", "doSelect"),
           ("urdar.profiling.contention", "_Waitable", "_wait"))


def parked_codes():
    """Code objects of Python functions that block in C with the GIL released (loaded modules only)."""
    out = set()
    for module, cls, name in _PARKED:
        m = sys.modules.get(module)
        fn = getattr(getattr(m, cls, None), name, None) if m is not None else None
        code = getattr(fn, "__code__", None)
        if code is not None:
            out.add(code)
    return frozenset(out)


def current_frames():
    """sys._current_frames() with the cyclic GC off for the call. CPython 3.11 builds the frame
    objects while holding the runtime's thread-list lock, and an allocation there can run a
    collection, whose finalizers may hand the GIL to a thread that is exiting and waits for that
    lock with the GIL held: a deadlock (seen in tests/profiling, a sampler stuck in this call)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return sys._current_frames()
    finally:
        if was_enabled:
            gc.enable()


def thread_cpu_ns(native_id):
    """CPU time (ns) used so far by the thread with kernel id `native_id`; OSError if it is gone."""
    if LINUX_THREAD_CLOCKS:
        return time.clock_gettime_ns(_linux_thread_clock(native_id))
    with open("/proc/self/task/%d/stat" % native_id, "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])          # utime + stime
    return ticks * 1_000_000_000 // _CLK_TCK


class SamplerBusy(RuntimeError):
    """Another profile of the same kind is being recorded; Go answers this case with an error too."""


class _Thread:
    __slots__ = ("name", "native_id", "last_cpu", "carry_ns", "carry_stack")

    def __init__(self, name, native_id):
        self.name = name
        self.native_id = native_id
        self.last_cpu = None
        self.carry_ns = 0           # CPU used before ticks that saw the thread parked
        self.carry_stack = None     # {parked stack: ns}, where it goes if never seen running


class StackSampler:
    """Samples every thread's stack at `hz` from a thread of its own between start() and stop().

    After stop(): `stacks` is {(thread name, stack): [samples, value ns]} where stack is a
    CodeTable stack (leaf first), `modules` is that CodeTable, `ticks` counts
    ticks taken, `started_ns`/`duration_ns` give the window, `overhead_ns` the CPU the sampler
    thread itself used. `timeline` (if record_timeline) is [(tick, t_ns, thread name, native id, stack)]
    in tick order, for trace.py."""

    def __init__(self, hz=100, mode="cpu", max_depth=256, record_timeline=False,
                 thread_name="urdar-profiler"):
        if mode not in ("cpu", "wall"):
            raise ValueError("mode must be 'cpu' or 'wall'")
        if not 0 < hz <= 10000:
            raise ValueError("hz must be in (0, 10000]")
        self.hz = hz
        self.mode = mode
        self.max_depth = max_depth
        self.record_timeline = record_timeline
        self.thread_name = thread_name
        self.stacks = {}
        self.modules = CodeTable()
        self._last = {}             # ident -> (frame, f_lasti, stack, row, name): see _tick
        self.timeline = [] if record_timeline else None
        self.ticks = 0
        self.started_ns = 0
        self.duration_ns = 0
        self.overhead_ns = 0
        self._threads = {}          # ident -> _Thread
        self._parked = frozenset()
        self._stopping = False
        self._thread = None
        self._error = None

    @property
    def period_ns(self):
        return int(1e9 / self.hz)

    def start(self):
        if self._thread is not None:
            raise RuntimeError("sampler already started")
        self.started_ns = time.time_ns()
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()

    @property
    def running(self):
        return self._thread is not None and self._thread.is_alive()

    def signal_stop(self):
        """Ask the sampler thread to end after its current tick, without waiting for it."""
        self._stopping = True

    def stop(self):
        """Stop sampling and wait for the sampler thread (at most one tick). Idempotent."""
        self._stopping = True
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        if self._error is not None:
            raise self._error

    def _refresh(self, frames):
        by_ident = {t.ident: t for t in threading.enumerate()}
        old = self._threads
        new = {}
        for ident in frames:
            t = by_ident.get(ident)
            name = t.name if t is not None else "thread-%d" % ident
            native = getattr(t, "native_id", None) if t is not None else None
            prev = old.get(ident)
            if prev is not None and prev.native_id == native and native is not None:
                prev.name = name
                new[ident] = prev
            else:
                new[ident] = _Thread(name, native)
        for ident, th in old.items():
            if ident not in new:
                self._flush_carry(th)
        self._threads = new

    def _add(self, key, value):
        """Count one sample of `value` for key; returns its row [samples, value]."""
        row = self.stacks.get(key)
        if row is None:
            row = self.stacks[key] = [1, value]
        else:
            row[0] += 1
            row[1] += value
        return row

    def _flush_carry(self, th):
        """Share th's kept-aside CPU over its running stacks (see the module docstring)."""
        if not th.carry_ns:
            return
        running = [row for (name, _stack), row in self.stacks.items() if name == th.name and row[1] > 0]
        seen = sum(row[1] for row in running)
        if seen:
            left = th.carry_ns
            for row in running:
                share = th.carry_ns * row[1] // seen
                row[1] += share
                left -= share
            running[0][1] += left
        else:
            for stack, ns in th.carry_stack.items():
                self._add((th.name, stack), ns)
        th.carry_ns = 0
        th.carry_stack = None

    def _run(self):
        me = threading.get_ident()
        my_native = threading.get_native_id()
        cpu0 = thread_cpu_ns(my_native)
        self._parked = parked_codes()
        period = 1.0 / self.hz
        t0 = time.monotonic()
        last = t0
        next_t = t0 + period
        try:
            while True:
                # time.sleep is cheaper than Event.wait(timeout); stop() waits at most one tick.
                delay = next_t - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                if self._stopping:
                    break
                now = time.monotonic()
                next_t += period
                if next_t < now:               # fell behind (GIL busy): skip the missed ticks
                    next_t = now + period
                self._tick(me, int((now - last) * 1e9))
                last = now
        except BaseException as exc:          # reported by stop(); never kill the process
            self._error = exc
        finally:
            for th in self._threads.values():
                self._flush_carry(th)
            self._last = {}             # release the frames held for the idle-thread shortcut
            self.duration_ns = int((time.monotonic() - t0) * 1e9)
            try:
                self.overhead_ns = thread_cpu_ns(my_native) - cpu0
            except OSError:
                pass

    def _tick(self, me, wall_ns):
        frames = current_frames()
        if frames.keys() != self._threads.keys():
            self._refresh(frames)
        self.ticks += 1
        cpu = self.mode == "cpu"
        parked = self._parked
        seen = self._last           # ident -> (top frame, f_lasti, stack, row or None, thread name)
        for ident, frame in frames.items():
            if ident == me:
                continue
            th = self._threads[ident]
            last = seen.get(ident)
            # Same frame object at the same instruction: the thread has not returned from the
            # call it was in at the previous tick, so its callers (the stack) are unchanged.
            same = last is not None and last[0] is frame and last[1] == frame.f_lasti
            if cpu:
                if th.native_id is None:
                    continue
                if same and last[3] is None:
                    continue            # still parked in the same wait: no CPU, no clock read
                try:
                    now = thread_cpu_ns(th.native_id)
                except OSError:
                    continue            # exited since _current_frames()
                prev, th.last_cpu = th.last_cpu, now
                if prev is None or now <= prev:
                    # First sight, or idle since the previous tick. A parked thread is marked
                    # (row None) so that later ticks skip it while it stays in this same wait.
                    if not same and frame.f_code in parked:
                        seen[ident] = (frame, frame.f_lasti, None, None, th.name)
                    continue
                value = now - prev
                if frame.f_code in parked:
                    stack = last[2] if same and last[2] is not None else self.modules.stack(frame, self.max_depth)
                    seen[ident] = (frame, frame.f_lasti, stack, None, th.name)
                    if th.carry_stack is None:
                        th.carry_stack = {}
                    th.carry_stack[stack] = th.carry_stack.get(stack, 0) + value
                    th.carry_ns += value
                    continue            # shared out over its running stacks at stop()
            else:
                value = wall_ns
            if same and last[3] is not None and last[4] == th.name:
                row, stack = last[3], last[2]     # no stack walk, no hashing of the stack
                row[0] += 1
                row[1] += value
            else:
                stack = last[2] if same and last[2] is not None else self.modules.stack(frame, self.max_depth)
                row = self._add((th.name, stack), value)
                seen[ident] = (frame, frame.f_lasti, stack, row, th.name)
            if self.timeline is not None:
                self.timeline.append((self.ticks, time.time_ns(), th.name, th.native_id or ident, stack))
        del frames


class Exclusive:
    """At most one recording of a kind at a time (one CPU profile, like Go's runtime)."""

    def __init__(self, what):
        self.what = what
        self._lock = threading.Lock()

    def acquire(self):
        if not self._lock.acquire(blocking=False):
            raise SamplerBusy("%s profiling is already in use by another request; try again when it "
                              "finishes" % self.what)

    def release(self):
        self._lock.release()


def record(exclusive, mode, seconds, hz):
    """Run a StackSampler(hz, mode) for `seconds`, blocking the caller and holding `exclusive`
    (one profile of a kind at a time); return the stopped sampler."""
    exclusive.acquire()
    try:
        s = StackSampler(hz, mode)
        s.start()
        try:
            time.sleep(seconds)
        finally:
            s.stop()
        return s
    finally:
        exclusive.release()
