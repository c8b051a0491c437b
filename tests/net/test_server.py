"""Listening, graceful stop, body limits (net/server.py) and offload pools."""
import threading

from treq.testing import StubTreq
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.support.threads import InlineReactor, ManualThreadPool
from urdar.net.offload import Offload, PoolFull
from urdar.net.server import HTTPServer, Instrument, LimitedRequest, QuietSite, build_app, route_label


class SlowHandler:
    ROUTES = (("/slow", ("GET",), "slow"), ("/fast", ("GET",), "fast"))

    def __init__(self):
        self.pending = []

    def slow(self, request):
        d = defer.Deferred()
        self.pending.append(d)
        return d

    def fast(self, request):
        return b"fast"


class ServerTests(SynchronousTestCase):
    def test_route_labels(self):
        """Route labels follow Mimir's style."""
        self.assertEqual(route_label("/api/v1/push"), "api_v1_push")
        self.assertEqual(route_label("/"), "root")
        self.assertEqual(route_label("/prometheus/api/v1/label/<name>/values"),
                         "prometheus_api_v1_label_name_values")

    def test_listens_on_configured_address(self):
        """The server listens on the configured interface and port."""
        reactor = MemoryReactorClock()
        inst = Instrument(reactor)
        srv = HTTPServer(reactor, build_app([SlowHandler()], inst).resource(), "127.0.0.1", 9009, inst)
        srv.start()
        port, factory, _backlog, interface = reactor.tcpServers[0]
        self.assertEqual((port, interface), (9009, "127.0.0.1"))
        self.assertIsInstance(factory, QuietSite)
        self.assertIs(factory.requestFactory, LimitedRequest)

    def test_empty_address_means_all_interfaces(self):
        """An empty listen address binds every interface."""
        reactor = MemoryReactorClock()
        inst = Instrument(reactor)
        HTTPServer(reactor, build_app([], inst).resource(), "", 8080, inst).start()
        self.assertIn(reactor.tcpServers[0][3], ("::", "0.0.0.0"))

    def test_graceful_stop_waits_for_inflight(self):
        """stop() waits for in-flight requests, but no longer than the graceful timeout."""
        reactor = MemoryReactorClock()
        h = SlowHandler()
        inst = Instrument(reactor)
        app = build_app([h], inst)
        srv = HTTPServer(reactor, app.resource(), "127.0.0.1", 0, inst, graceful_timeout_s=30)
        srv.start()
        treq = StubTreq(app.resource())
        r1 = treq.get("http://x/slow")
        self.assertEqual(inst.inflight, 1)
        stopped = srv.stop()
        self.assertNoResult(stopped)
        h.pending.pop().callback(b"done")
        treq.flush()
        self.successResultOf(stopped)
        self.assertEqual(self.successResultOf(r1).code, 200)
        # A request that never finishes is abandoned after the timeout.
        srv2 = HTTPServer(reactor, app.resource(), "127.0.0.1", 0, inst, graceful_timeout_s=30)
        srv2.start()
        treq.get("http://x/slow")
        stopped = srv2.stop()
        reactor.advance(29)
        self.assertNoResult(stopped)
        reactor.advance(2)
        self.successResultOf(stopped)

    def test_duplicate_routes_refused(self):
        """Two handlers claiming the same route is a programming error caught at start-up."""
        with self.assertRaises(ValueError):
            build_app([SlowHandler(), SlowHandler()])


class LimitedRequestTests(SynchronousTestCase):
    def request(self, limit):
        site = QuietSite(build_app([]).resource(), max_body_bytes=limit)

        from twisted.web.test.requesthelper import DummyChannel
        ch = DummyChannel()
        ch.site = site
        return LimitedRequest(ch)

    def test_body_over_limit_not_buffered(self):
        """Body bytes past the limit are dropped and the request is flagged."""
        r = self.request(10)
        r.gotLength(None)
        r.handleContentChunk(b"12345")
        r.handleContentChunk(b"678901")
        self.assertTrue(r.body_too_large)
        self.assertEqual(r.body_length, 11)
        r.content.seek(0)
        self.assertEqual(r.content.read(), b"12345")

    def test_declared_length_over_limit(self):
        """A Content-Length above the limit flags the request before any byte arrives."""
        r = self.request(10)
        r.gotLength(1 << 30)
        self.assertTrue(r.body_too_large)
        self.assertEqual(r.body_length, 1 << 30)

    def test_body_under_limit_kept(self):
        """A body within the limit is kept whole."""
        r = self.request(10)
        r.gotLength(4)
        r.handleContentChunk(b"abcd")
        self.assertFalse(r.body_too_large)
        r.content.seek(0)
        self.assertEqual(r.content.read(), b"abcd")


    def test_large_and_chunked_bodies_stay_in_memory(self):
        """Bodies of 100 kB and more, or without Content-Length, are buffered in memory, not spooled to a temporary file."""
        import io
        for length in (300_000, None):
            r = self.request(1 << 20)
            r.gotLength(length)
            self.assertIsInstance(r.content, io.BytesIO)
            r.handleContentChunk(b"x" * 300_000)
            self.assertEqual(r.content.getvalue(), b"x" * 300_000)


class OffloadTests(SynchronousTestCase):
    def make(self, workers=1, queued=1):
        self.pool = ManualThreadPool()
        off = Offload(InlineReactor(), lambda w, n: self.pool)
        off.add_pool("p", workers, queued)
        off.start()
        return off

    def test_full_pool_fails_at_once(self):
        """A pool with every worker busy and a full queue refuses new work immediately."""
        off = self.make(1, 1)
        d1, d2 = off.run("p", lambda: 1), off.run("p", lambda: 2)
        f = self.failureResultOf(off.run("p", lambda: 3), PoolFull)
        self.assertIn("limit 2", str(f.value))
        self.pool.run_all()
        self.assertEqual((self.successResultOf(d1), self.successResultOf(d2)), (1, 2))
        d4 = off.run("p", lambda: 4)          # room again once the jobs finished
        self.pool.run_all()
        self.assertEqual(self.successResultOf(d4), 4)

    def test_errors_become_failures(self):
        """An exception in the worker fails the Deferred with that exception."""
        off = self.make()
        d = off.run("p", lambda: 1 / 0)
        self.pool.run_all()
        self.failureResultOf(d, ZeroDivisionError)
        self.assertEqual(off.stats()["p"], (0, 1, 1))

    def test_cancel_sets_job_flag(self):
        """Cancelling the Deferred (client gone) flags the job; its late result is dropped."""
        off = self.make()
        seen = []
        d = off.run_cancellable("p", lambda job: seen.append(job.cancelled) or "late")
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.pool.run_all()
        self.assertEqual(seen, [True])
        self.assertEqual(off.stats()["p"][0], 0)


class RealThreadOffloadTests(TestCase):
    def test_runs_on_worker_thread(self):
        """With real pools the work runs off the reactor thread and the result comes back on it."""
        from twisted.internet import reactor
        off = Offload(reactor)
        off.add_pool("p", 2, 4)
        off.start()
        self.addCleanup(off.stop)
        main = threading.get_ident()
        d = off.run("p", threading.get_ident)
        return d.addCallback(lambda ident: self.assertNotEqual(ident, main))
