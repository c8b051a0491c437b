"""Offload pools tell the in-flight registry about every job, for /debug/pprof/goroutine; their
worker threads start for jobs queued before and during start()."""
import functools
import threading

from twisted.trial.unittest import SynchronousTestCase

from tests.support.threads import InlineReactor, ManualThreadPool
from urdar.net.offload import Offload, WorkerThreads
from urdar.profiling.threads import InflightRegistry


def decode_marker(x):
    """A named function the in-flight list must show."""
    return x * 2


class OffloadInflightTests(SynchronousTestCase):
    def setUp(self):
        self.pools = {}

        def factory(workers, name):
            self.pools[name] = ManualThreadPool(workers, name)
            return self.pools[name]
        self.registry = InflightRegistry()
        self.off = Offload(InlineReactor(), factory, inflight=self.registry)
        self.off.add_pool("decode", 1, 10)
        self.off.start()

    def test_queued_job_is_listed_until_it_finishes(self):
        """A job waiting in a pool is listed with its pool and function, and leaves the list when done."""
        d = self.off.run("decode", decode_marker, 21)
        pending = self.registry.pending()
        self.assertEqual(len(pending), 1)
        self.assertIs(pending[0][0], d)
        self.assertEqual(str(pending[0][1]),
                         "offload pool decode: %s.decode_marker" % __name__)
        self.pools["decode"].run_all()
        self.assertEqual(self.successResultOf(d), 42)
        self.assertEqual(self.registry.pending(), [])

    def test_partial_named_by_its_function(self):
        """A functools.partial is described by the function it wraps."""
        self.off.run("decode", functools.partial(decode_marker, 1))
        self.assertIn("decode_marker", str(self.registry.pending()[0][1]))

    def test_cancelled_job_leaves_the_list(self):
        """A job whose caller hung up is no longer shown as in flight."""
        d = self.off.run("decode", decode_marker, 1)
        d.cancel()
        self.failureResultOf(d)
        self.assertEqual(self.registry.pending(), [])

    def test_registry_keeps_nothing_alive(self):
        """Tracking does not keep a Deferred nobody references any more."""
        self.off.run("decode", decode_marker, 1)
        self.pools["decode"].pending.clear()
        import gc
        gc.collect()
        self.assertEqual(self.registry.pending(), [])


class _StartsDuringSubmit(WorkerThreads):
    """A pool whose start() runs in another thread, to its end, right after the submitting
    thread first reads `_started` (False): the interleaving in which a job counted without the
    lock was lost (counted into a total start() had already taken)."""

    def __init__(self, *a):
        self._s = False
        self.hook = None
        super().__init__(*a)

    @property
    def _started(self):
        v = self._s
        if self.hook is threading.current_thread():
            self.hook = None
            t = threading.Thread(target=self.start)
            t.start()
            t.join(5)       # start() waits for the lock when the reader holds it: go on then
        return v

    @_started.setter
    def _started(self, v):
        self._s = v


class WorkerThreadsStartTests(SynchronousTestCase):
    def test_job_queued_while_start_runs_is_run(self):
        pool = _StartsDuringSubmit(2, "race")
        self.addCleanup(pool.stop)
        ran = threading.Event()
        pool.hook = threading.current_thread()
        pool.callInThreadWithCallback(lambda ok, value: ran.set(), lambda: 42)
        self.assertTrue(ran.wait(30), "the job queued during start() never ran")

    def test_jobs_queued_before_start_run_after_it(self):
        pool = WorkerThreads(3, "before")
        self.addCleanup(pool.stop)
        done = []
        all_ran = threading.Event()

        def record(ok, value):
            done.append(value)
            if len(done) == 10:
                all_ran.set()
        for i in range(10):
            pool.callInThreadWithCallback(record, lambda i=i: i)
        self.assertEqual(done, [])
        pool.start()
        self.assertTrue(all_ran.wait(30))
        self.assertEqual(sorted(done), list(range(10)))
