"""Named, bounded thread pools that keep work which grows with samples, series or bytes off the reactor.

`Offload.run("decode", fn, *args)` returns a Deferred fired on the reactor thread with fn's result
(or failure). Each pool has `workers` threads and room for `max_queued` waiting jobs; when it is full,
run() fails at once with PoolFull, which handlers answer with 503 (Mimir's "too many inflight
requests" behaviour) instead of queueing without bound. Cancelling the returned Deferred (Klein does
this when a client hangs up) sets `Job.cancelled`; functions started with `run_cancellable` receive
the Job and may check it between chunks. Every returned Deferred is registered in an
InflightRegistry (urdar/profiling/threads.py; one weak-dict insert, nothing kept alive), so
GET /debug/pprof/goroutine lists the offloaded work in flight with its pool, function and age.
Pools start and stop with the reactor (main.py wires that); tests pass inline pools from
tests/support/threads.py."""
import collections
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorFromThreads
from twisted.python.failure import Failure

from urdar.profiling.threads import INFLIGHT

log = logging.getLogger("urdar.offload")


class PoolFull(Exception):
    """A pool had no free worker and its queue was full; the caller should answer 503/429 now."""

    def __init__(self, name, limit):
        self.name = name
        self.limit = limit
        super().__init__("too many requests in flight in the %s pool (limit %d); try again later"
                         % (name, limit))


class Job:
    """Handle on one offloaded call: `cancelled` turns true when its Deferred is cancelled (a
    plain flag: workers only poll it, nobody waits on it)."""
    __slots__ = ("cancelled",)

    def __init__(self):
        self.cancelled = False

    def cancel(self):
        self.cancelled = True


class WorkerThreads:
    """The threads of one pool: a FIFO of jobs and up to `maxthreads` threads named
    PoolThread-<name>-<i>, started as jobs arrive and kept until stop(). It has the part of
    Twisted's ThreadPool the pools use (start, stop, callInThreadWithCallback) at a fraction of
    its cost per job: one queue put on the caller's side, one get on the worker's, where
    Twisted's team coordinator takes a lock and runs several calls on each side per job."""

    def __init__(self, maxthreads, name):
        self.max = maxthreads
        self.name = name
        self._jobs = queue.SimpleQueue()
        self._threads = []
        self._idle = 0              # threads waiting for a job (approximate: only to decide on spawning)
        self._lock = threading.Lock()
        self._started = False
        self._queued_before_start = 0

    def start(self):
        with self._lock:
            self._started = True
            n, self._queued_before_start = self._queued_before_start, 0
        for _ in range(min(n, self.max)):
            self._spawn()

    def _spawn(self):
        with self._lock:
            if len(self._threads) >= self.max or not self._started:
                return
            t = threading.Thread(target=self._work, name="PoolThread-%s-%d" % (self.name, len(self._threads)),
                                 daemon=True)
            self._threads.append(t)
        t.start()

    def callInThreadWithCallback(self, on_result, fn, *args, **kwargs):
        """Run fn(*args, **kwargs) on a worker, then on_result(True, value) or
        on_result(False, Failure) there."""
        self._jobs.put((on_result, fn, args, kwargs))
        if not self._started:
            # counted under the lock start() takes, so a job queued while it runs is either
            # counted before it reads the count or sees it started (and spawns below)
            with self._lock:
                if not self._started:
                    self._queued_before_start += 1
                    return
        if self._idle <= 0 and len(self._threads) < self.max:
            self._spawn()

    def _work(self):
        jobs, lock = self._jobs, self._lock
        while True:
            with lock:
                self._idle += 1
            job = jobs.get()
            with lock:
                self._idle -= 1
            if job is None:
                return
            self._run(*job)
            job = None          # drop the job's arguments and result before waiting again

    @staticmethod
    def _run(on_result, fn, args, kwargs):
        try:
            result = fn(*args, **kwargs)
        except BaseException:
            on_result(False, Failure())
        else:
            on_result(True, result)

    def stop(self):
        """Let queued and running jobs finish, then end every thread."""
        with self._lock:
            self._started = False
            threads, self._threads = self._threads, []
        for _ in threads:
            self._jobs.put(None)
        for t in threads:
            t.join()


class _Pool:
    def __init__(self, name, threadpool, workers, max_queued):
        self.name = name
        self.threadpool = threadpool
        self.workers = workers
        self.max_queued = max_queued
        self.inflight = 0          # queued + running; only touched on the reactor thread

    @property
    def limit(self):
        return self.workers + self.max_queued


class Offload:
    """The process's pools. `reactor` provides callFromThread; `threadpool_factory(min, max, name)`
    builds a pool object with start/stop/callInThreadWithCallback (Twisted's ThreadPool);
    `inflight` (an InflightRegistry, None for none) is told about every Deferred run() returns."""

    def __init__(self, reactor: IReactorFromThreads,
                 threadpool_factory: Callable[[int, str], Any] | None = None,
                 inflight: Any = INFLIGHT) -> None:
        self._reactor = reactor
        self._inflight = inflight
        self._factory = threadpool_factory or (
            lambda workers, name: WorkerThreads(workers, "urdar-" + name))
        self._pools: dict[str, _Pool] = {}
        self._started = False
        # Finished jobs waiting for the reactor, and whether it has been woken for them: one
        # wake-up (callFromThread, a pipe write) serves every job finished before it runs.
        self._finished: collections.deque[tuple[Callable[[bool, Any], None], bool, Any]] = \
            collections.deque()
        self._wake_pending = False

    def add_pool(self, name: str, workers: int, max_queued: int) -> "_Pool":
        """Create pool `name` with `workers` threads and `max_queued` waiting jobs."""
        if name in self._pools:
            raise ValueError("pool %r exists" % (name,))
        if workers < 1 or max_queued < 0:
            raise ValueError("a pool needs at least one worker and a non-negative queue")
        pool = _Pool(name, self._factory(workers, name), workers, max_queued)
        self._pools[name] = pool
        if self._started:
            pool.threadpool.start()
        return pool

    def start(self) -> None:
        self._started = True
        for pool in self._pools.values():
            pool.threadpool.start()

    def stop(self) -> None:
        """Stop every pool, waiting for running jobs (called during reactor shutdown)."""
        self._started = False
        for pool in self._pools.values():
            pool.threadpool.stop()

    def stats(self) -> dict[str, tuple[int, int, int]]:
        """{pool name: (in flight, workers, max queued)} for /services and /metrics."""
        return {n: (p.inflight, p.workers, p.max_queued) for n, p in self._pools.items()}

    def run(self, name, fn, *args, **kwargs):
        """Call fn(*args, **kwargs) in pool `name`; a Deferred of its result (PoolFull if full)."""
        return self._submit(name, None, fn, args, kwargs)

    def run_cancellable(self, name, fn, *args, **kwargs):
        """Like run, but fn is called as fn(job, *args, **kwargs) so it can watch job.cancelled."""
        return self._submit(name, Job(), fn, args, kwargs)

    def _submit(self, name, job, fn, args, kwargs):
        pool = self._pools[name]
        if pool.inflight >= pool.limit:
            return defer.fail(PoolFull(name, pool.limit))
        if job is None:
            job = Job()
            call_args = args
        else:
            call_args = (job,) + args
        d = defer.Deferred(lambda _d: job.cancel())
        pool.inflight += 1

        def deliver(ok, result):
            # Reactor thread. A cancelled Deferred has already fired with CancelledError.
            pool.inflight -= 1
            if d.called:
                return
            if ok:
                d.callback(result)
            else:
                d.errback(result)

        def on_result(ok, result):
            # Worker thread: hand the outcome to the reactor; never touch `d` here. Appended
            # before the flag is read, so a drain running now either sees the job or has
            # cleared the flag and this wakes the reactor once more.
            if not ok and not isinstance(result, Failure):
                result = Failure(result)
            self._finished.append((deliver, ok, result))
            if not self._wake_pending:
                self._wake_pending = True
                self._reactor.callFromThread(self._deliver_finished)

        pool.threadpool.callInThreadWithCallback(on_result, fn, *call_args, **kwargs)
        if self._inflight is not None:
            self._inflight.track(d, _Inflight(name, fn))
        return d


    def _deliver_finished(self):
        """Reactor thread: fire the Deferreds of every job finished so far, in finishing order."""
        self._wake_pending = False
        finished = self._finished
        while finished:
            deliver, ok, result = finished.popleft()
            try:
                deliver(ok, result)
            except Exception:
                log.exception("delivering an offloaded result failed")


class _Inflight:
    """What an offloaded Deferred waits for, formatted only when someone looks (goroutine page)."""
    __slots__ = ("pool", "fn")

    def __init__(self, pool, fn):
        self.pool = pool
        self.fn = fn

    def __str__(self):
        fn = getattr(self.fn, "func", self.fn)          # functools.partial
        name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
        module = getattr(fn, "__module__", None)
        return "offload pool %s: %s" % (self.pool, "%s.%s" % (module, name) if module else name)


def run_or_inline(offload: "Offload | None", pool: str, fn: Callable[..., Any],
                  *args: Any) -> "defer.Deferred[Any]":
    """Deferred of fn(*args): in `offload`'s pool `pool`, or inline when there is no Offload
    (components built without pools, as unit tests build them)."""
    if offload is None:
        return defer.maybeDeferred(fn, *args)
    return offload.run(pool, fn, *args)
