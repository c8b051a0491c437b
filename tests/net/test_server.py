"""Listening, graceful stop, body limits (net/server.py) and offload pools."""
import threading

from treq.testing import StubTreq
from twisted.internet import defer, error
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.support.threads import InlineReactor, ManualThreadPool
from urdar.net.offload import Offload, PoolFull
from urdar.handlers.routes import require_tenant, route
from urdar.net.server import (HTTPServer, Instrument, LimitedRequest, QuietSite, Refusal, Ticket,
                              build_app, route_label)


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


    def test_jobs_finished_together_share_one_wake_up(self):
        """Jobs finishing before the reactor runs are delivered by one wake-up, in order."""
        class QueueingReactor:
            def __init__(self):
                self.calls = []

            def callFromThread(self, f, *args):
                self.calls.append((f, args))
        reactor = QueueingReactor()
        pool = ManualThreadPool()
        off = Offload(reactor, lambda w, n: pool)
        off.add_pool("p", 1, 10)
        off.start()
        fired = []
        ds = [off.run("p", lambda i=i: i).addCallback(fired.append) for i in range(3)]
        ds.append(off.run("p", lambda: 1 / 0))
        pool.run_all()
        self.assertEqual((len(reactor.calls), fired), (1, []))
        f, args = reactor.calls.pop()
        f(*args)
        self.assertEqual(fired, [0, 1, 2])
        self.failureResultOf(ds[3], ZeroDivisionError)
        self.assertEqual(off.stats()["p"][0], 0)
        d = off.run("p", lambda: 7)       # the next finished job wakes the reactor again
        pool.run_all()
        self.assertEqual(len(reactor.calls), 1)
        f, args = reactor.calls.pop()
        f(*args)
        self.assertEqual(self.successResultOf(d), 7)


class RealThreadOffloadTests(TestCase):
    def test_every_result_delivered(self):
        """Thousands of jobs finishing on four threads at once: every Deferred fires, once,
        with its own result (no finished job waits for a wake-up that never comes)."""
        from twisted.internet import reactor
        off = Offload(reactor)
        off.add_pool("p", 4, 5000)
        off.start()
        self.addCleanup(off.stop)
        ds = [off.run("p", lambda i=i: i * 2) for i in range(4000)]
        d = defer.gatherResults(ds)
        return d.addCallback(lambda got: self.assertEqual(got, [i * 2 for i in range(4000)]))

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


class _HalfCloseTransport(StringTransport):
    """A StringTransport that records a shut write side (TCP's loseWriteConnection)."""
    write_closed = False

    def loseWriteConnection(self):
        self.write_closed = True


class BodyHandler:
    """Echo routes: /echo takes any body; /guarded refuses without X-Scope-OrgID and past 100 bytes."""
    ROUTES = (("/echo", ("POST",), "echo"), ("/guarded", ("POST",), "guarded"),
              ("/ready", ("GET",), "ready"))
    ADMIT = {"guarded": "admit_guarded"}

    def __init__(self):
        self.bodies = []
        self.released = 0

    def echo(self, request):
        body = request.content.read()
        self.bodies.append(body)
        return b"got %d" % len(body)

    guarded = echo

    def ready(self, request):
        return b"ready"

    def admit_guarded(self, headers, length):
        if not headers.getRawHeaders(b"X-Scope-OrgID"):
            return Refusal(401, "no org id")

        def release():
            self.released += 1
        return Ticket(100, release=release)


class GuardedChannelTests(SynchronousTestCase):
    def connect(self, read_timeout_s=30, idle_timeout_s=120, max_body_bytes=1000):
        self.clock = MemoryReactorClock()
        self.handler = BodyHandler()
        app = build_app([self.handler])
        srv = HTTPServer(self.clock, app.resource(), "127.0.0.1", 0, Instrument(self.clock),
                         max_body_bytes=max_body_bytes, admission=app.admission,
                         read_timeout_s=read_timeout_s, idle_timeout_s=idle_timeout_s)
        return self.open(srv.site)

    def open(self, site):
        proto = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = _HalfCloseTransport()
        proto.makeConnection(transport)
        return proto, transport

    def test_unknown_route_refused_before_body(self):
        """A body sent to an unknown path is answered 404 from the headers alone; the body is never read."""
        proto, tr = self.connect()
        proto.dataReceived(b"POST /nope HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000000\r\n\r\n")
        out = tr.value()
        self.assertTrue(out.startswith(b"HTTP/1.1 404 "), out)
        self.assertIn(b"Connection: close", out)
        self.assertTrue(tr.write_closed)
        proto.dataReceived(b"x" * 65536)    # whatever follows is dropped unparsed
        self.assertEqual(tr.value(), out)
        self.assertEqual(self.handler.bodies, [])

    def test_refusals_are_counted(self):
        """Early answers appear in cortex_request_duration_seconds with their route and status."""
        from prometheus_client import CollectorRegistry
        registry = CollectorRegistry()
        clock = MemoryReactorClock()
        app = build_app([BodyHandler()])
        srv = HTTPServer(clock, app.resource(), "127.0.0.1", 0, Instrument(clock, registry),
                         max_body_bytes=1000, admission=app.admission)
        for head in (b"POST /nope HTTP/1.1\r\nContent-Length: 5\r\n\r\n",
                     b"POST /guarded HTTP/1.1\r\nContent-Length: 5\r\n\r\n"):
            proto, _ = self.open(srv.site)
            proto.dataReceived(head)
        count = lambda route, code: registry.get_sample_value(   # noqa: E731
            "cortex_request_duration_seconds_count",
            {"method": "POST", "route": route, "status_code": code, "ws": "false"})
        self.assertEqual((count("notfound", "404"), count("guarded", "401")), (1, 1))

    def test_wrong_method_refused_before_body(self):
        """A body sent with a method the route does not take is 405 naming the allowed ones, unread."""
        proto, tr = self.connect()
        proto.dataReceived(b"PUT /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000000\r\n\r\n")
        self.assertTrue(tr.value().startswith(b"HTTP/1.1 405 "), tr.value())
        self.assertIn(b"\r\nAllow: POST\r\n", tr.value())

    def test_missing_tenant_refused_before_body(self):
        """A route's own check (no tenant: 401) answers before any body byte arrives."""
        proto, tr = self.connect()
        proto.dataReceived(b"POST /guarded HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n")
        self.assertTrue(tr.value().startswith(b"HTTP/1.1 401 "), tr.value())
        self.assertTrue(tr.value().endswith(b"\r\n\r\nno org id\n"))

    def test_declared_length_over_limit_refused(self):
        """A Content-Length above the route's limit gets 413 at once, with the body unread."""
        proto, tr = self.connect()
        proto.dataReceived(b"POST /guarded HTTP/1.1\r\nHost: x\r\nX-Scope-OrgID: t\r\n"
                           b"Content-Length: 101\r\n\r\n")
        self.assertTrue(tr.value().startswith(b"HTTP/1.1 413 "), tr.value())
        # Routes without a check get the server-wide limit.
        proto, tr = self.connect()
        proto.dataReceived(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n\r\n")
        self.assertTrue(tr.value().startswith(b"HTTP/1.1 413 "), tr.value())

    def test_chunked_body_cut_at_limit(self):
        """A chunked body is answered 413 as soon as it passes the limit; nothing past it is kept."""
        proto, tr = self.connect()
        proto.dataReceived(b"POST /guarded HTTP/1.1\r\nHost: x\r\nX-Scope-OrgID: t\r\n"
                           b"Transfer-Encoding: chunked\r\n\r\n")
        self.assertEqual(tr.value(), b"")
        proto.dataReceived(b"50\r\n" + b"a" * 0x50 + b"\r\n")
        self.assertEqual(tr.value(), b"")
        request = proto.requests[-1]
        proto.dataReceived(b"50\r\n" + b"b" * 0x50 + b"\r\n0\r\n\r\n")
        self.assertTrue(tr.value().startswith(b"HTTP/1.1 413 "), tr.value())
        self.assertEqual(request.content.getvalue(), b"a" * 0x50)
        self.assertEqual(self.handler.bodies, [])
        self.assertEqual(self.handler.released, 1)

    def test_failing_check_answers_500(self):
        """A route check that raises answers 500 without reading the body, and the server keeps serving."""
        self.patch(BodyHandler, "admit_guarded", lambda self, headers, length: 1 // 0)
        proto, tr = self.connect()
        proto.dataReceived(b"POST /guarded HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
        self.assertTrue(tr.value().startswith(b"HTTP/1.1 500 "), tr.value())
        self.assertEqual(self.handler.bodies, [])
        proto, tr = self.open(proto.site)
        proto.dataReceived(b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertIn(b"ready", tr.value())

    def test_admitted_body_reaches_handler(self):
        """A body within the limits is read and handled as before, and its ticket is released."""
        proto, tr = self.connect()
        proto.dataReceived(b"POST /guarded HTTP/1.1\r\nHost: x\r\nX-Scope-OrgID: t\r\n"
                           b"Content-Length: 5\r\n\r\nhello")
        self.assertEqual(self.handler.bodies, [b"hello"])
        self.assertIn(b"200 OK", tr.value())
        self.assertIn(b"got 5", tr.value())
        self.assertEqual(self.handler.released, 1)
        self.assertFalse(tr.disconnecting)

    def test_refused_connection_reset_after_linger(self):
        """After an early answer the connection is reset if the client keeps it open past the linger time."""
        proto, tr = self.connect()
        proto.dataReceived(b"POST /nope HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
        self.assertFalse(tr.disconnected)
        self.clock.advance(proto.LINGER_S + 0.1)
        self.assertTrue(tr.disconnected)

    def test_slow_headers_dropped_after_read_timeout(self):
        """A client trickling its headers is disconnected once the read timeout has passed since its first byte."""
        proto, tr = self.connect(read_timeout_s=30)
        proto.dataReceived(b"GET /ready HTTP/1.1\r\n")
        for _ in range(5):
            self.clock.advance(5)
            proto.dataReceived(b"X-A: b\r\n")     # each byte resets the idle timer, not this one
        self.assertFalse(tr.disconnecting)
        self.clock.advance(5.1)
        self.assertTrue(tr.disconnected)

    def test_silent_connection_dropped_after_read_timeout(self):
        """A connection that never sends its first request is dropped after the read timeout, not the idle timeout."""
        proto, tr = self.connect(read_timeout_s=30, idle_timeout_s=120)
        self.clock.advance(29)
        self.assertFalse(tr.disconnecting)
        self.clock.advance(1.1)
        self.assertTrue(tr.disconnected)

    def test_refusal_sends_no_100_continue(self):
        """A client waiting for 100 Continue gets the refusal instead, so it never sends the body."""
        proto, tr = self.connect()
        proto.dataReceived(b"POST /guarded HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                           b"Content-Length: 50\r\n\r\n")
        self.assertTrue(tr.value().startswith(b"HTTP/1.1 401 "), tr.value())
        self.assertNotIn(b"100 Continue", tr.value())

    def test_slow_body_dropped_after_read_timeout(self):
        """A body sent a few bytes at a time is cut off at the read timeout."""
        proto, tr = self.connect(read_timeout_s=30)
        proto.dataReceived(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
        for _ in range(29):
            self.clock.advance(1)
            proto.dataReceived(b"x")
        self.assertFalse(tr.disconnecting)
        self.clock.advance(1.1)
        self.assertTrue(tr.disconnected)
        self.assertEqual(self.handler.bodies, [])

    def test_read_deadline_per_request(self):
        """Keep-alive requests each get the full read timeout; a served request leaves no deadline behind."""
        proto, tr = self.connect(read_timeout_s=30)
        for _ in range(3):
            proto.dataReceived(b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n")
            self.clock.advance(20)
        self.assertEqual(tr.value().count(b"ready"), 3)
        self.assertFalse(tr.disconnecting)

    def test_idle_connection_closed(self):
        """A keep-alive connection with no request in progress is closed after the idle timeout."""
        proto, tr = self.connect(read_timeout_s=0, idle_timeout_s=120)
        proto.dataReceived(b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n")
        self.clock.advance(119)
        self.assertFalse(tr.disconnecting)
        self.clock.advance(2)
        self.assertTrue(tr.disconnecting)


class _PausablePort:
    reading = True

    def stopReading(self):
        self.reading = False

    def startReading(self):
        self.reading = True


class ConnectionLimitTests(SynchronousTestCase):
    def test_accepting_pauses_at_the_connection_limit(self):
        """At -server.http-conn-limit open connections no more are accepted until one closes."""

        clock = MemoryReactorClock()
        site = QuietSite(build_app([BodyHandler()]).resource(), reactor=clock, max_connections=2)
        site.port = port = _PausablePort()
        conns = []
        for _ in range(2):
            proto = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
            proto.makeConnection(StringTransport())
            conns.append(proto)
        self.assertFalse(port.reading)
        conns[0].connectionLost(Failure(error.ConnectionDone()))
        self.assertTrue(port.reading)
        self.assertEqual(site.connections, 1)


class RequireTenantTests(SynchronousTestCase):
    def test_tenant_scoped_route_check(self):
        """Tenant-scoped routes refuse a missing or malformed X-Scope-OrgID from the headers alone."""
        from twisted.web.http_headers import Headers
        from urdar.net.tenant import Tenancy
        tenancy = Tenancy()
        missing = require_tenant(tenancy, Headers())
        self.assertEqual((missing.status, missing.body), (401, b"no org id\n"))
        self.assertEqual(require_tenant(tenancy, Headers({b"X-Scope-OrgID": [b"a/b"]})).status, 400)
        self.assertIsInstance(require_tenant(tenancy, Headers({b"X-Scope-OrgID": [b"t"]})), Ticket)
        self.assertIsInstance(require_tenant(Tenancy(False), Headers()), Ticket)


class DirectHandler:
    """Routes served directly (no router per request) next to a routed one."""
    ROUTES = (route("/push", ("POST",), "push", tenant=True, direct=True),
              route("/later", ("POST",), "later", direct=True),
              route("/bad", ("POST",), "bad", direct=True),
              route("/form", ("POST",), "form"))

    def __init__(self):
        self.pending = defer.Deferred()
        self.paths = []

    def push(self, request, tenant):
        self.paths.append(request.postpath)
        body = b"pushed %d bytes for %s" % (len(request.content.read()), tenant.encode())
        request.setHeader(b"Content-Length", b"%d" % len(body))
        return body

    def later(self, request):
        return self.pending

    def bad(self, request):
        from urdar.components import errors as E
        raise E.ComponentError(E.BAD_DATA, "bad push")

    def form(self, request):
        return repr(sorted(request.args.items())).encode()


class DirectRouteTests(SynchronousTestCase):
    """Routes registered with direct=True (pushes) answer as they would through the router."""

    def setUp(self):
        from prometheus_client import CollectorRegistry
        from urdar.handlers.routes import RouteTable
        self.clock = MemoryReactorClock()
        self.registry = CollectorRegistry()
        self.instrument = Instrument(self.clock, self.registry)
        self.handler = DirectHandler()
        table = RouteTable(instrument=self.instrument).mount(self.handler)
        self.site = HTTPServer(self.clock, table.resource(), "127.0.0.1", 0, self.instrument,
                               max_body_bytes=1000, admission=table.admission).site

    def send(self, raw):
        proto = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport()
        proto.makeConnection(transport)
        proto.dataReceived(raw)
        return proto, transport

    def post(self, path, body=b"abc", headers=b"X-Scope-OrgID: t\r\n"):
        return (b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n%s"
                b"Content-Length: %d\r\n\r\n%s" % (path, headers, len(body), body))

    def test_direct_route_answers_with_headers_and_metrics(self):
        """The handler's body with Twisted's usual headers, the tenant resolved, the request
        counted in cortex_request_duration_seconds under its route."""
        _, t = self.send(self.post(b"/push"))
        out = t.value()
        self.assertTrue(out.startswith(b"HTTP/1.1 200 OK\r\n"), out)
        self.assertIn(b"\r\nDate: ", out)
        self.assertTrue(out.endswith(b"\r\n\r\npushed 3 bytes for t"), out)
        self.assertEqual(self.registry.get_sample_value(
            "cortex_request_duration_seconds_count",
            {"method": "POST", "route": "push", "status_code": "200", "ws": "false"}), 1.0)

    def test_query_string_and_keep_alive(self):
        """A query string does not matter; two requests on one connection both answer."""
        _, t = self.send(self.post(b"/push?x=1") + self.post(b"/push", b"defg"))
        out = t.value()
        self.assertIn(b"pushed 3 bytes for t", out)
        self.assertTrue(out.endswith(b"pushed 4 bytes for t"), out)
        self.assertEqual(self.handler.paths, [[b"push"], [b"push"]])

    def test_trailing_slash_still_routed(self):
        _, t = self.send(self.post(b"/push/"))
        self.assertTrue(t.value().endswith(b"pushed 3 bytes for t"), t.value())

    def test_missing_tenant_refused(self):
        _, t = self.send(self.post(b"/push", headers=b""))
        self.assertTrue(t.value().startswith(b"HTTP/1.1 401 "), t.value())

    def test_errors_rendered_by_the_route_table(self):
        _, t = self.send(self.post(b"/bad"))
        out = t.value()
        self.assertTrue(out.startswith(b"HTTP/1.1 400 "), out)
        self.assertTrue(out.endswith(b"bad push\n"), out)

    def test_deferred_answer_written_when_it_fires(self):
        _, t = self.send(self.post(b"/later"))
        self.assertEqual(t.value(), b"")
        self.handler.pending.callback(b"done")
        self.assertTrue(t.value().endswith(b"\r\n\r\n4\r\ndone\r\n0\r\n\r\n"), t.value())   # no length: chunked, as through Klein

    def test_client_gone_before_the_answer(self):
        """A late answer to a client that hung up is dropped without an error."""
        proto, t = self.send(self.post(b"/later"))
        proto.connectionLost(Failure(error.ConnectionDone()))
        self.handler.pending.callback(b"done")
        self.assertEqual(t.value(), b"")
        self.assertEqual(self.instrument.inflight, 0)

    def test_forms_still_parsed_on_routed_posts(self):
        """Only bodies whose Content-Type cannot be a form skip twisted's form parsing."""
        body = b"query=up&time=1"
        _, t = self.send(b"POST /form HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded"
                         b"\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        self.assertIn(b"[(b'query', [b'up']), (b'time', [b'1'])]", t.value())


class WorkerThreadsTests(TestCase):
    """The default pools' threads (net/offload.WorkerThreads)."""

    def test_jobs_before_start_results_failures_and_stop(self):
        from urdar.net.offload import WorkerThreads
        threads = WorkerThreads(2, "urdar-t")
        got = []
        done = threading.Event()

        def on_result(ok, result):
            got.append((ok, result if ok else result.type, threading.current_thread().name))
            if len(got) == 3:
                done.set()
        threads.callInThreadWithCallback(on_result, lambda: 1)        # queued before start
        threads.start()
        threads.callInThreadWithCallback(on_result, lambda x: x * 2, 21)
        threads.callInThreadWithCallback(on_result, lambda: 1 / 0)
        self.assertTrue(done.wait(30))
        threads.stop()
        self.assertEqual(sorted(g[:2] for g in got), [(False, ZeroDivisionError), (True, 1), (True, 42)])
        self.assertTrue(all(g[2].startswith("PoolThread-urdar-t-") for g in got), got)
        self.assertFalse([t for t in threading.enumerate() if t.name.startswith("PoolThread-urdar-t-")])


class HeadHandler:
    """Records what each request looked like to the handler; answers with its body length."""
    ROUTES = (route("/push", ("POST",), "push", tenant=True, direct=True),
              route("/later", ("POST",), "later", direct=True),
              route("/get", ("GET",), "get"))

    def __init__(self):
        self.seen = []
        self.pending = []

    def _record(self, request):
        self.seen.append((request.method, request.uri, request.clientproto,
                          sorted((k, list(v)) for k, v in request.requestHeaders.getAllRawHeaders()),
                          request.content.read() if request.content is not None else None))

    def push(self, request, tenant):
        self._record(request)
        return b"pushed for %s" % tenant.encode()

    def later(self, request):
        self._record(request)
        d = defer.Deferred()
        self.pending.append(d)
        return d

    def get(self, request):
        self._record(request)
        return b"got"


class OnePassHeadTests(SynchronousTestCase):
    """A header block that arrives whole is parsed in one pass (GuardedChannel._head_in_one_pass);
    everything the handler sees and the client gets back is what twisted's line-by-line parse
    gives for the same bytes (sent one byte at a time, the block is never whole in one read)."""

    def setUp(self):
        from prometheus_client import CollectorRegistry
        from urdar.handlers.routes import RouteTable
        self.clock = MemoryReactorClock()
        self.instrument = Instrument(self.clock, CollectorRegistry())
        self.handler = HeadHandler()
        table = RouteTable(instrument=self.instrument).mount(self.handler)
        self.site = HTTPServer(self.clock, table.resource(), "127.0.0.1", 0, self.instrument,
                               max_body_bytes=1000, admission=table.admission).site

    def exchange(self, raw, bytewise):
        """(bytes on the wire with Date masked, what the handler saw) for raw sent at once or
        one byte per read; deferred answers are given as soon as the request is seen."""
        import re
        self.handler.seen = []
        proto = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        tr = _HalfCloseTransport()
        proto.makeConnection(tr)
        chunks = [raw[i:i + 1] for i in range(len(raw))] if bytewise else [raw]
        for c in chunks:
            if tr.disconnecting:
                break           # a closing transport reads no more
            proto.dataReceived(c)
            while self.handler.pending:
                self.handler.pending.pop(0).callback(b"later")
        return re.sub(rb"Date: [^\r]*", b"Date: -", tr.value()), self.handler.seen, tr.disconnecting

    def same(self, raw):
        whole = self.exchange(raw, False)
        self.assertEqual(whole, self.exchange(raw, True), raw)
        return whole

    def push(self, body=b"abc", headers=b"X-Scope-OrgID: t\r\n", path=b"/push", version=b"HTTP/1.1"):
        return (b"POST %s %s\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n%s"
                b"Content-Length: %d\r\n\r\n%s" % (path, version, headers, len(body), body))

    def test_requests_seen_and_answered_alike(self):
        cases = [
            self.push(),
            self.push(path=b"/push?x=1&y=%20"),
            # spellings, spacing, repeated headers, several values, empty value
            self.push(headers=b"x-scope-orgid:t\r\nX-Thing:  a b \t\r\nX-THING: c\r\nX-Empty:\r\n"),
            self.push(version=b"HTTP/1.0"),
            self.push(headers=b"X-Scope-OrgID: t\r\nConnection: close\r\n"),
            self.push(headers=b"X-Scope-OrgID: t\r\nExpect: 100-continue\r\n"),
            # chunked body
            b"POST /push HTTP/1.1\r\nHost: x\r\nX-Scope-OrgID: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
            # pipelined: a routed GET, a deferred answer, a push, all in one read
            b"GET /get HTTP/1.1\r\nHost: x\r\n\r\n" + b"POST /later HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi"
            + self.push(b"xyz"),
            # refusals from the headers alone
            self.push(headers=b""),
            self.push(b"x" * 2000),
            b"POST /nope HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
        ]
        for raw in cases:
            with self.subTest(raw=raw):
                out, seen, _ = self.same(raw)
                self.assertTrue(out.startswith(b"HTTP/1."), out)
        out, seen, _ = self.same(cases[7])
        self.assertEqual([s[:2] for s in seen], [(b"GET", b"/get"), (b"POST", b"/later"), (b"POST", b"/push")])
        self.assertEqual(seen[2][4], b"xyz")
        self.assertEqual(out.count(b"HTTP/1.1 200 OK"), 3)
        self.assertIn((b"X-Thing", [b"a b", b"c"]), self.same(cases[2])[1][0][3])

    def test_malformed_heads_answered_alike(self):
        """Whatever twisted's parse refuses is refused the same way (400 and a closed connection)."""
        bad = [
            self.push(headers=b"X-Scope-OrgID: t\r\nBad Name: v\r\n"),
            self.push(headers=b"X-Scope-OrgID: t\r\nno colon here\r\n"),
            self.push(headers=b"X-Scope-OrgID: t\r\nX-Nul: a\x00b\r\n"),
            self.push(headers=b"X-Scope-OrgID: t\r\nX-Lf: a\nb\r\n"),
            self.push(headers=b"X-Scope-OrgID: t\r\nContent-Length: 3\r\n"),
            self.push(headers=b"X-Scope-OrgID: t\r\nTransfer-Encoding: gzip\r\n"),
            b"POST /push HTTP/1.1\r\nContent-Length: 3x\r\n\r\nabc",
            b"POST /push HTTP/2.0\r\nContent-Length: 0\r\n\r\n",
            b"POST  /push HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            self.push(headers=b"".join(b"X-H%d: v\r\n" % i for i in range(600))),
        ]
        for raw in bad:
            with self.subTest(raw=raw[:120]):
                out, seen, closing = self.same(raw)
                self.assertTrue(out.startswith(b"HTTP/1.1 400 ") or out == b"", out[:200])
                self.assertTrue(closing)
                self.assertEqual(seen, [])
        # A line over twisted's 16 kB line limit: the connection is closed, nothing is served.
        out, seen, closing = self.exchange(self.push(headers=b"X-Big: " + b"v" * 17000 + b"\r\n"), False)
        self.assertEqual((out, seen, closing), (b"", [], True))

    def test_folded_header_value(self):
        """An obsolete folded header (accepted by twisted) still reaches the handler whole."""
        raw = self.push(headers=b"X-Scope-OrgID: t\r\nX-Fold: a\r\n\tb\r\n")
        out, seen, _ = self.same(raw)
        self.assertIn((b"X-Fold", [b"a b"]), seen[0][3])


class SizedHandler:
    """Answers of a chosen size, some only later (a Deferred fired from the reactor)."""
    ROUTES = (route("/size/<int:n>", ("GET",), "size"), route("/push", ("POST",), "push", direct=True))

    def size(self, request, n):
        body = bytes(range(256)) * (n // 256) + b"x" * (n % 256)
        request.setHeader(b"Content-Length", b"%d" % len(body))
        return body

    def push(self, request):
        from twisted.internet import reactor
        body = b"got %d" % len(request.content.read())
        request.setHeader(b"Content-Length", b"%d" % len(body))
        d = defer.Deferred()
        reactor.callLater(0, d.callback, body)
        return d


class SocketAnswerTests(TestCase):
    """Answers written straight to the socket (GuardedChannel._send) over real TCP: a big answer
    the socket cannot take at once continues through the transport's buffer, and pipelined
    answers after it arrive whole and in order."""

    def setUp(self):
        from twisted.internet import reactor
        from urdar.handlers.routes import RouteTable
        table = RouteTable(instrument=Instrument(reactor)).mount(SizedHandler())
        self.server = HTTPServer(reactor, table.resource(), "127.0.0.1", 0, Instrument(reactor),
                                 max_body_bytes=1 << 20, admission=table.admission)
        self.port = self.server.start()
        self.addCleanup(self.server.stop)

    def exchange(self, raw, answers):
        """Send raw at once over a blocking socket (in a thread) and read `answers` answers."""
        import socket
        from twisted.internet import threads

        def client():
            with socket.create_connection(("127.0.0.1", self.port), timeout=30) as s:
                s.sendall(raw)
                buf, out = b"", []
                while len(out) < answers:
                    end = buf.find(b"\r\n\r\n")
                    if end >= 0:
                        head = buf[:end]
                        length = int(head.lower().split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
                        if len(buf) >= end + 4 + length:
                            out.append((head.split(b"\r\n", 1)[0], buf[end + 4:end + 4 + length]))
                            buf = buf[end + 4 + length:]
                            continue
                    data = s.recv(1 << 16)
                    if not data:
                        raise AssertionError("connection closed after %d answers" % len(out))
                    buf += data
                return out
        return threads.deferToThread(client)

    @defer.inlineCallbacks
    def test_big_then_pipelined_answers(self):
        big = 8 << 20     # more than a loopback socket takes at once
        raw = (b"GET /size/%d HTTP/1.1\r\nHost: x\r\n\r\n" % big
               + b"POST /push HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
               + b"GET /size/10 HTTP/1.1\r\nHost: x\r\n\r\n")
        out = yield self.exchange(raw, 3)
        self.assertEqual([o[0] for o in out], [b"HTTP/1.1 200 OK"] * 3)
        self.assertEqual(len(out[0][1]), big)
        self.assertEqual(out[0][1][:512], bytes(range(256)) * 2)
        self.assertEqual(out[0][1][-256:], bytes(range(256)))
        self.assertEqual(out[1][1], b"got 3")
        self.assertEqual(out[2][1], b"x" * 10)
