"""The /debug/pprof/* and /debug/fgprof endpoints through Klein with StubTreq and a Clock.

Sampling windows end when the test advances the Clock; the sampler threads, the busy/sleeping
workload threads and `go tool pprof` are real. Offloaded work runs inline."""
import json
import sys
import threading
import time
import tracemalloc

from treq.testing import StubTreq
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from tests.profiling.support import (check_invariants, decode, go_pprof, sleep_until, spin_until,
                                     stacks, start_thread, top_functions)
from tests.support.threads import inline_offload
from urdar.handlers.pprof import PprofHandler
from urdar.profiling import contention, cpu, threads


def reactor_tick_marker():
    """A named function the goroutine profile must show as a pending delayed call."""


def allocate_blocks(n):
    """The allocation site the heap profile must show."""
    out = []
    for _ in range(n):
        out.append(bytearray(10_000))
    return out


def allocate_window_blocks(n):
    """The allocation site a delta heap profile must show."""
    return [bytearray(10_000) for _ in range(n)]


class HandlerCase(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.handler = PprofHandler(self.clock, offload=inline_offload(), clock=self.clock)
        self.treq = StubTreq(self.handler.app.resource())

    def get(self, path):
        return self.treq.get("http://urdar" + path)

    def finish(self, d):
        self.treq.flush()
        resp = self.successResultOf(d)
        return resp, self.successResultOf(resp.content())

    def fetch(self, path):
        return self.finish(self.get(path))

    def window(self, path, seconds, real_s=None):
        """Start a sampling request, let real threads run, then end its window on the Clock."""
        d = self.get(path)
        self.treq.flush()
        self.assertNoResult(d)
        time.sleep(seconds if real_s is None else real_s)
        self.clock.advance(seconds)
        return self.finish(d)


class IndexTests(HandlerCase):
    def test_index_lists_every_profile(self):
        """GET /debug/pprof/ is an HTML page linking every profile, like Go's."""
        resp, body = self.fetch("/debug/pprof/")
        self.assertEqual(resp.code, 200)
        page = body.decode()
        for path in ("/debug/pprof/profile", "/debug/pprof/heap", "/debug/pprof/goroutine?debug=1",
                     "/debug/pprof/block", "/debug/pprof/mutex", "/debug/pprof/trace",
                     "/debug/fgprof", "/debug/pprof/goroutine?debug=2", "/debug/pprof/allocs"):
            self.assertIn('href="%s"' % path, page)
        self.assertIn("Heap sampling is on, one allocation sampled per 524288 bytes", page)
        self.assertRegex(page, r'<td align=right>[1-9]\d*</td><td><a href="/debug/pprof/heap">heap</a>')

    def test_unknown_profile_is_404(self):
        """An unknown profile name answers 404 naming the available ones."""
        resp, body = self.fetch("/debug/pprof/nosuch")
        self.assertEqual(resp.code, 404)
        self.assertIn(b"goroutine", body)

    def test_cmdline(self):
        """/debug/pprof/cmdline gives the process' arguments separated by NUL bytes."""
        resp, body = self.fetch("/debug/pprof/cmdline")
        self.assertEqual(resp.code, 200)
        self.assertIn(b"\x00", body)

    def test_cmdline_masks_secrets(self):
        """/debug/pprof/cmdline shows secret flag values (the S3 secret key) masked, as /config does."""
        import sys
        from unittest import mock
        from urdar.app.config import mask_argv
        self.handler = PprofHandler(self.clock, offload=inline_offload(), clock=self.clock,
                                    mask_argv=mask_argv)     # as the composition root builds it
        self.treq = StubTreq(self.handler.app.resource())
        argv = [sys.executable, "-m", "urdar", "-blocks-storage.s3.secret-access-key=hunter2",
                "--blocks-storage.s3.secret-access-key", "hunter3", "-target=all",
                "-blocks-storage.s3.access-key-id=AKID"]
        with mock.patch.object(sys, "orig_argv", argv, create=True):
            resp, body = self.fetch("/debug/pprof/cmdline")
        self.assertEqual(body.split(b"\x00"), [
            sys.executable.encode(), b"-m", b"urdar", b"-blocks-storage.s3.secret-access-key=********",
            b"--blocks-storage.s3.secret-access-key", b"********", b"-target=all",
            b"-blocks-storage.s3.access-key-id=AKID"])


class CPUProfileHandlerTests(HandlerCase):
    def test_profile_answers_after_the_window_with_the_busy_function_on_top(self):
        """?seconds=1 answers only when the clock reaches 1 s, with a gzipped CPU profile whose top is the busy thread."""
        start_thread(self, spin_until, "busy-spinner")
        resp, data = self.window("/debug/pprof/profile?seconds=1", 1)
        self.assertEqual(resp.code, 200)
        self.assertEqual(resp.headers.getRawHeaders("Content-Type"), ["application/octet-stream"])
        self.assertEqual(data[:2], b"\x1f\x8b")
        check_invariants(self, decode(data))
        self.assertEqual(top_functions(go_pprof(self, data, "-top"))[0], "tests.profiling.support.spin_until")
        # The window is over: the next profile may start.
        cpu.EXCLUSIVE.acquire()
        cpu.EXCLUSIVE.release()

    def test_hz_sets_the_period(self):
        """?hz=50 gives a 20 ms sampling period."""
        resp, data = self.window("/debug/pprof/profile?seconds=0.2&hz=50", 0.2)
        self.assertEqual(decode(data)["period"], 20_000_000)

    def test_bad_parameters_are_400(self):
        """Malformed or out-of-range seconds/hz answer 400 with the reason."""
        for q in ("seconds=abc", "seconds=-1", "seconds=100000", "hz=0", "hz=x"):
            resp, body = self.fetch("/debug/pprof/profile?" + q)
            self.assertEqual(resp.code, 400, q)
            self.assertTrue(body.strip())

    def test_concurrent_profile_is_409(self):
        """A second CPU profile while one records is refused with 409."""
        first = self.get("/debug/pprof/profile?seconds=1")
        self.treq.flush()
        resp, body = self.fetch("/debug/pprof/profile?seconds=1")
        self.assertEqual(resp.code, 409)
        self.assertIn(b"already in use", body)
        self.clock.advance(1)
        self.assertEqual(self.finish(first)[0].code, 200)

    def test_client_hang_up_stops_sampling(self):
        """Cancelling the request (client gone) stops the sampler and frees the CPU profiler."""
        req = DummyRequest([b""])
        req.args = {b"seconds": [b"5"]}
        d = self.handler.profile(req)
        self.assertTrue(self.clock.getDelayedCalls())
        d.cancel()
        # The route table renders the CancelledError (499, tests/handlers); here: the sampler stops.
        self.failureResultOf(d, defer.CancelledError)
        self.assertFalse(self.clock.getDelayedCalls())
        cpu.EXCLUSIVE.acquire()
        cpu.EXCLUSIVE.release()
        deadline = time.monotonic() + 2
        while any(t.name == "urdar-profiler" for t in threading.enumerate()) and time.monotonic() < deadline:
            time.sleep(0.01)
        self.assertFalse([t for t in threading.enumerate() if t.name == "urdar-profiler"])


class FgprofHandlerTests(HandlerCase):
    def test_fgprof_shows_sleeping_function(self):
        """/debug/fgprof includes a thread that only sleeps (off-CPU)."""
        start_thread(self, sleep_until, "sleeper")
        resp, data = self.window("/debug/fgprof?seconds=0.5", 0.5)
        self.assertEqual(resp.code, 200)
        prof = decode(data)
        check_invariants(self, prof)
        self.assertTrue([r for r in stacks(prof) if "tests.profiling.support.sleep_until" in r[0]])
        text = go_pprof(self, data, "-top", "-focus=sleep_until")
        self.assertIn("sleep_until", text)

    def test_fgprof_folded(self):
        """?format=folded answers flame-graph text, root first, with counts."""
        start_thread(self, sleep_until, "sleeper")
        resp, data = self.window("/debug/fgprof?seconds=0.3&format=folded", 0.3)
        self.assertEqual(resp.code, 200)
        lines = data.decode().splitlines()
        self.assertTrue([l for l in lines if "tests.profiling.support.sleep_until;" in l])
        self.assertEqual(self.fetch("/debug/fgprof?format=svg")[0].code, 400)


class TraceHandlerTests(HandlerCase):
    def test_trace_is_chrome_trace_json(self):
        """/debug/pprof/trace gives Chrome trace-event JSON with complete events of the busy thread."""
        start_thread(self, spin_until, "busy-spinner")
        resp, data = self.window("/debug/pprof/trace?seconds=0.3", 0.3)
        self.assertEqual(resp.code, 200)
        self.assertEqual(resp.headers.getRawHeaders("Content-Type"), ["application/json"])
        doc = json.loads(data)
        names = {e["args"]["name"]: e["tid"] for e in doc["traceEvents"] if e["name"] == "thread_name"}
        self.assertIn("busy-spinner", names)
        spins = [e for e in doc["traceEvents"] if e.get("ph") == "X"
                 and e["name"] == "tests.profiling.support.spin_until"]
        self.assertTrue(spins)
        self.assertEqual({e["tid"] for e in spins}, {names["busy-spinner"]})
        self.assertGreater(sum(e["dur"] for e in spins), 100_000)   # µs of a 0.3 s window


class GoroutineHandlerTests(HandlerCase):
    def setUp(self):
        super().setUp()
        start_thread(self, sleep_until, "sleeper")
        self.clock.callLater(42, reactor_tick_marker)
        self.tracked = defer.Deferred()
        self.tracked.addCallback(allocate_blocks)
        threads.INFLIGHT.track(self.tracked, "append for tenant t1")

    def test_pprof_form_has_every_thread_and_the_delayed_call(self):
        """The default goroutine profile is pprof with one sample per thread and the reactor's pending call."""
        resp, data = self.fetch("/debug/pprof/goroutine")
        self.assertEqual(resp.code, 200)
        prof = decode(data)
        check_invariants(self, prof)
        self.assertEqual(prof["sample_types"], [("goroutine", "count")])
        rows = stacks(prof)
        sleeper = [r for r in rows if r[2].get("thread") == "sleeper"]
        self.assertEqual(len(sleeper), 1)
        self.assertIn("tests.profiling.support.sleep_until", sleeper[0][0])
        delayed = [r for r in rows if r[2].get("waiting") == "delayed call"]
        self.assertEqual(delayed[0][0][0], "tests.profiling.test_handler.reactor_tick_marker")
        self.assertEqual(delayed[0][2]["due_in_ms"], 42_000)
        self.assertTrue([r for r in rows if r[2].get("waiting") == "deferred"
                         and "in flight: append for tenant t1" in r[0]])
        self.assertIn("sleep_until", go_pprof(self, data, "-traces"))

    def test_debug_1_groups_stacks(self):
        """?debug=1 is Go-like text: a total, then each distinct stack with its count and threads."""
        resp, body = self.fetch("/debug/pprof/goroutine?debug=1")
        text = body.decode()
        self.assertEqual(resp.code, 200)
        self.assertTrue(text.startswith("thread profile: total "))
        self.assertRegex(text, r"\n1 @ sleeper \[(sleeping|running)\]\n")
        self.assertIn("#\ttests.profiling.support.sleep_until", text)
        self.assertIn("delayed call in 42.000s: tests.profiling.test_handler.reactor_tick_marker()", text)
        self.assertIn("in flight for ", text)
        self.assertNotIn("pending Deferreds in the heap", text)

    def test_debug_2_lists_each_thread_and_scans_deferreds(self):
        """?debug=2 prints every thread with its frames and file:line, and pending Deferreds found by a heap scan."""
        untracked = defer.Deferred()
        untracked.addCallback(reactor_tick_marker)
        resp, body = self.fetch("/debug/pprof/goroutine?debug=2")
        text = body.decode()
        self.assertRegex(text, r'thread \d+ "sleeper" \[\w[\w ]*, daemon, tid \d+\]:\n')
        self.assertRegex(text, r"tests\.profiling\.support\.sleep_until\(\.\.\.\)\n\t\S+support\.py:\d+\n")
        self.assertIn("pending Deferreds in the heap (gc scan):", text)
        self.assertIn("-> tests.profiling.test_handler.reactor_tick_marker", text)
        self.assertIn("-> tests.profiling.test_handler.allocate_blocks", text)


class HeapHandlerTests(HandlerCase):
    def test_heap_answers_without_any_enable_step(self):
        """GET /debug/pprof/heap answers at once with Go's heap profile whose top in-use site is a 50 MB test allocation."""
        kept = allocate_blocks(5000)         # 50 MB live: about 100 samples at 512 KiB
        resp, data = self.fetch("/debug/pprof/heap?gc=1")
        self.assertEqual(resp.code, 200)
        self.assertEqual(resp.headers.getRawHeaders("Content-Type"), ["application/octet-stream"])
        prof = decode(data)
        check_invariants(self, prof)
        self.assertEqual([t for t, _u in prof["sample_types"]],
                         ["alloc_objects", "alloc_space", "inuse_objects", "inuse_space"])
        self.assertEqual(prof["default_sample_type"], "inuse_space")
        site = [r for r in stacks(prof) if "tests.profiling.test_handler.allocate_blocks" in r[0]]
        inuse = sum(r[1][3] for r in site)
        self.assertGreater(inuse, 25_000_000)
        self.assertLess(inuse, 100_000_000)
        top = top_functions(go_pprof(self, data, "-top", "-sample_index=inuse_space"))
        self.assertEqual(top[0], "tests.profiling.test_handler.allocate_blocks")
        resp, body = self.fetch("/debug/pprof/heap?debug=1")
        self.assertEqual(resp.code, 200)
        self.assertTrue(body.startswith(b"heap profile: "))
        self.assertIn(b"tests.profiling.test_handler.allocate_blocks", body)
        del kept

    def test_allocs_defaults_to_alloc_space(self):
        """/debug/pprof/allocs is the same sampled profile with alloc_space as its default, as in Go."""
        resp, data = self.fetch("/debug/pprof/allocs")
        self.assertEqual(resp.code, 200)
        prof = decode(data)
        check_invariants(self, prof)
        self.assertEqual(prof["default_sample_type"], "alloc_space")
        self.assertIn("Type: alloc_space", go_pprof(self, data, "-top"))

    def test_seconds_serves_the_change_over_the_window(self):
        """?seconds=1 answers when the clock reaches 1 s with only what was allocated in the window, as Go's delta profile."""
        before = allocate_blocks(5000)       # allocated before the window: not in the delta
        d = self.get("/debug/pprof/allocs?seconds=1")
        self.treq.flush()
        self.assertNoResult(d)
        during = allocate_window_blocks(5000)
        self.clock.advance(1)
        resp, data = self.finish(d)
        self.assertEqual(resp.code, 200)
        prof = decode(data)
        check_invariants(self, prof)
        self.assertEqual(prof["duration_nanos"], 1_000_000_000)
        rows = stacks(prof)
        inside = sum(r[1][1] for r in rows if "tests.profiling.test_handler.allocate_window_blocks" in r[0])
        self.assertGreater(inside, 25_000_000)
        self.assertLess(inside, 100_000_000)
        self.assertFalse([r for r in rows if "tests.profiling.test_handler.allocate_blocks" in r[0]])
        del before, during

    def test_bad_parameters_are_400(self):
        """Malformed debug or seconds on the heap profile answer 400 with the reason."""
        for q in ("debug=x", "seconds=-1", "seconds=2&debug=1"):
            resp, body = self.fetch("/debug/pprof/heap?" + q)
            self.assertEqual(resp.code, 400, q)
            self.assertTrue(body.strip())


def hold_lock(lock, held, release):
    """Holds `lock` until told to release it: the site the mutex profile must blame."""
    with lock:
        held.set()
        release.wait(5)
        time.sleep(0.15)


def wait_for_lock(lock):
    """Blocks on `lock`: the site the block profile must show."""
    with lock:
        pass


class ContentionHandlerTests(HandlerCase):
    def setUp(self):
        super().setUp()
        self.addCleanup(contention.reset)
        self.addCleanup(contention.disable)

    def contend(self, lock):
        held, release = threading.Event(), threading.Event()
        t = threading.Thread(target=hold_lock, args=(lock, held, release), name="holder")
        t.start()
        held.wait(5)
        release.set()
        wait_for_lock(lock)
        t.join()

    def test_off_by_default_answers_an_empty_profile(self):
        """Before anyone switched it on, block and mutex answer 200 with a valid empty profile (Go at rate 0), and nothing is recorded."""
        self.contend(contention.Lock())
        for kind in ("block", "mutex"):
            resp, data = self.fetch("/debug/pprof/%s" % kind)
            self.assertEqual(resp.code, 200)
            prof = decode(data)
            check_invariants(self, prof)
            self.assertEqual(prof["sample_types"], [("contentions", "count"), ("delay", "nanoseconds")])
            self.assertEqual(prof["samples"], [])
            self.assertIn("Type: delay", go_pprof(self, data, "-top"))
        self.assertEqual(contention.snapshot("block"), {})

    def test_contended_lock_sites(self):
        """With recording on, block shows the waiting function and mutex the holding one, with the wait time."""
        self.assertEqual(self.fetch("/debug/pprof/block?enable=1")[0].code, 200)
        for make in (contention.Lock, contention.RLock):
            self.contend(make())
        resp, data = self.fetch("/debug/pprof/block")
        self.assertEqual(resp.code, 200)
        prof = decode(data)
        check_invariants(self, prof)
        self.assertEqual(prof["sample_types"], [("contentions", "count"), ("delay", "nanoseconds")])
        rows = stacks(prof)
        waits = [r for r in rows if r[0][0] == "tests.profiling.test_handler.wait_for_lock"]
        self.assertEqual(sum(r[1][0] for r in waits), 2)
        self.assertGreater(sum(r[1][1] for r in waits), 200_000_000)
        self.assertEqual(top_functions(go_pprof(self, data, "-top"))[0], "tests.profiling.test_handler.wait_for_lock")
        resp, data = self.fetch("/debug/pprof/mutex")
        rows = stacks(decode(data))
        self.assertEqual(rows[0][0][0], "tests.profiling.test_handler.hold_lock")
        self.assertEqual(top_functions(go_pprof(self, data, "-top"))[0], "tests.profiling.test_handler.hold_lock")
        self.fetch("/debug/pprof/mutex?disable=1")
        self.assertFalse(contention.is_enabled())
        self.assertEqual(self.fetch("/debug/pprof/mutex")[0].code, 200, "recorded waits stay after disable")
        self.assertEqual(self.fetch("/debug/pprof/mutex?reset=1")[0].code, 200)
        resp, data = self.fetch("/debug/pprof/mutex")
        self.assertEqual(decode(data)["samples"], [], "reset while off forgets everything")

    def test_seconds_window_records_only_that_window(self):
        """?seconds=N switches recording on for the window, serves only its waits, and restores the off state."""
        lock = contention.Lock()
        contention.enable()
        self.contend(lock)                         # before the window
        contention.disable()
        d = self.get("/debug/pprof/block?seconds=1")
        self.treq.flush()
        self.assertTrue(contention.is_enabled())
        self.contend(lock)
        self.contend(lock)
        self.clock.advance(1)
        resp, data = self.finish(d)
        rows = stacks(decode(data))
        self.assertEqual(sum(r[1][0] for r in rows if r[0][0].endswith("wait_for_lock")), 2)
        self.assertFalse(contention.is_enabled())

    def test_lock_semantics(self):
        """The instrumented locks behave as threading's: non-blocking, timeout, with, Condition."""
        lock = contention.Lock()
        self.assertTrue(lock.acquire())
        self.assertTrue(lock.locked())
        self.assertFalse(lock.acquire(False))
        self.assertFalse(lock.acquire(True, 0.01))
        lock.release()
        self.assertFalse(lock.locked())
        r = contention.RLock()
        with r:
            with r:
                pass
        cond = threading.Condition(r)
        with cond:
            self.assertFalse(cond.wait(0.01))
        with self.assertRaises(RuntimeError):
            contention.Lock().release()


class IdleTests(HandlerCase):
    def test_nothing_runs_between_profiles(self):
        """After profiles were served, no profiler thread, trace hook, tracemalloc or lock recording is left running."""
        hooks = (sys.getprofile(), sys.gettrace())      # a coverage tool may have its own
        for path in ("/debug/pprof/profile?seconds=0.1", "/debug/fgprof?seconds=0.1",
                     "/debug/pprof/trace?seconds=0.1", "/debug/pprof/block?seconds=0.1"):
            self.assertEqual(self.window(path, 0.1)[0].code, 200, path)
        self.assertEqual(self.fetch("/debug/pprof/goroutine?debug=2")[0].code, 200)
        deadline = time.monotonic() + 2
        while any(t.name == "urdar-profiler" for t in threading.enumerate()) and time.monotonic() < deadline:
            time.sleep(0.01)
        self.assertEqual([t.name for t in threading.enumerate() if t.name == "urdar-profiler"], [])
        self.assertFalse(tracemalloc.is_tracing())
        self.assertEqual((sys.getprofile(), sys.gettrace()), hooks)
        self.assertFalse(contention.is_enabled())
