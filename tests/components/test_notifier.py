"""The ruler's notifier against fake Alertmanagers (twisted.web resources on 127.0.0.1): what an
Alertmanager receives (batches, paths, tenant and auth headers), what a slow or failing one costs
the others, queue overflow, retries and shutdown; plus URL parsing and dns+ refresh on a Clock."""
import base64
import json

from prometheus_client import CollectorRegistry
from twisted.internet import defer, protocol, task
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web import resource, server

from urdar.components.notifier import (
    MAX_ATTEMPTS, MAX_BATCH, Notifier, NotifierConfig, parse_alertmanager_urls)
from urdar.components.options import ConfigError


def _reactor():
    from twisted.internet import reactor
    return reactor


def alerts(n, prefix="a", **extra):
    return [{"labels": {"alertname": "%s%d" % (prefix, i), "severity": "page"},
             "annotations": {"summary": "s%d" % i}, "startsAt": "2026-12-02T00:00:00Z", **extra}
            for i in range(n)]


class FakeAlertmanager(resource.Resource):
    """Records every POST (path, headers, JSON body). Answers with the next status of `statuses`
    (200 when none left), or holds the request unanswered while `hold` is set."""
    isLeaf = True

    def __init__(self):
        super().__init__()
        self.posts = []
        self.statuses = []
        self.hold = False
        self.held = []

    def render_POST(self, request):
        self.posts.append((request.path.decode(), {
            k.decode().lower(): v[0].decode() for k, v in request.requestHeaders.getAllRawHeaders()},
            json.loads(request.content.read())))
        if self.hold:
            self.held.append(request)
            return server.NOT_DONE_YET
        status = self.statuses.pop(0) if self.statuses else 200
        request.setResponseCode(status)
        return b"" if status == 200 else b"boom"

    def release(self, status=200):
        held, self.held = self.held, []
        for request in held:
            if not request.finished and not request._disconnected:
                request.setResponseCode(status)
                request.finish()

    def tenants(self):
        return [h.get("x-scope-orgid") for _, h, _ in self.posts]


class NotifierCase(TestCase):
    def start_am(self):
        am = FakeAlertmanager()
        site = server.Site(am, timeout=None)
        conns = []
        build = site.buildProtocol

        def track(addr):
            p = build(addr)
            conns.append(p)
            return p
        site.buildProtocol = track
        port = _reactor().listenTCP(0, site, interface="127.0.0.1")

        def close():
            am.hold = False
            am.release()
            for p in conns:
                if getattr(p, "transport", None) is not None:
                    p.transport.abortConnection()
            return port.stopListening()
        self.addCleanup(close)
        return am, "http://127.0.0.1:%d" % port.getHost().port

    def notifier(self, urls, **kw):
        self.registry = CollectorRegistry()
        n = Notifier(NotifierConfig(alertmanager_url=",".join(urls), **kw), _reactor(),
                     registry=self.registry)
        n.start()
        self.addCleanup(n.stop)
        return n

    def metric(self, name, **labels):
        v = self.registry.get_sample_value("cortex_prometheus_notifications_" + name, labels)
        return 0 if v is None else v

    def until(self, check, timeout_s=60):
        """A Deferred firing once check() is true; fails after timeout_s (polls the reactor)."""
        clock = _reactor()
        deadline = clock.seconds() + timeout_s

        @defer.inlineCallbacks
        def poll():
            while not check():
                if clock.seconds() > deadline:
                    self.fail("condition not met in %ss" % timeout_s)
                yield task.deferLater(clock, 0.01, lambda: None)
        return poll()


class DeliveryTests(NotifierCase):
    @defer.inlineCallbacks
    def test_batches_of_at_most_64_with_the_tenant_header(self):
        """150 alerts reach the Alertmanager in order, as POSTs of 64, 64 and 22 to /api/v2/alerts
        carrying X-Scope-OrgID and a JSON content type; sent_total counts them."""
        am, url = self.start_am()
        n = self.notifier([url])
        sent = alerts(150)
        n.send("team-a", sent)
        yield self.until(lambda: sum(len(b) for _, _, b in am.posts) == 150)
        self.assertEqual([len(b) for _, _, b in am.posts], [MAX_BATCH, MAX_BATCH, 22])
        self.assertEqual([b for _, _, body in am.posts for b in body], sent)
        for path, headers, _ in am.posts:
            self.assertEqual(path, "/api/v2/alerts")
            self.assertEqual(headers["x-scope-orgid"], "team-a")
            self.assertEqual(headers["content-type"], "application/json")
            self.assertNotIn("authorization", headers)
        yield self.until(lambda: self.metric("sent_total", user="team-a",
                                             alertmanager=url + "/api/v2/alerts") == 150)
        self.assertEqual(self.metric("queue_capacity", user="team-a"), 10000)
        self.assertEqual(self.metric("alertmanagers_discovered", user="team-a"), 1)
        self.assertEqual(self.metric("latency_seconds_count", user="team-a",
                                     alertmanager=url + "/api/v2/alerts"), 3)

    @defer.inlineCallbacks
    def test_only_postable_fields_are_sent(self):
        """Keys other than labels, annotations, startsAt, endsAt and generatorURL are not sent."""
        am, url = self.start_am()
        n = self.notifier([url])
        n.send("t", [{"labels": {"a": "b"}, "endsAt": "2026-12-02T00:05:00Z",
                      "generatorURL": "http://x/graph", "internal": 1}])
        yield self.until(lambda: am.posts)
        self.assertEqual(am.posts[0][2], [{"labels": {"a": "b"}, "endsAt": "2026-12-02T00:05:00Z",
                                           "generatorURL": "http://x/graph"}])

    @defer.inlineCallbacks
    def test_url_path_is_the_prefix_and_userinfo_is_basic_auth(self):
        """http://user:pass@host/alertmanager posts to /alertmanager/api/v2/alerts with basic auth;
        a trailing slash in the prefix makes no difference; every configured URL gets the alerts."""
        am, url = self.start_am()
        host = url[len("http://"):]
        n = self.notifier(["http://ruler:p%%40ss@%s/alertmanager" % host, "http://%s/other/" % host])
        n.send("t", alerts(2))
        yield self.until(lambda: len(am.posts) == 2)
        by_path = {p: h for p, h, _ in am.posts}
        self.assertEqual(sorted(by_path), ["/alertmanager/api/v2/alerts", "/other/api/v2/alerts"])
        self.assertEqual(by_path["/alertmanager/api/v2/alerts"]["authorization"],
                         "Basic " + base64.b64encode(b"ruler:p@ss").decode())
        self.assertNotIn("authorization", by_path["/other/api/v2/alerts"])
        self.assertEqual(self.metric("alertmanagers_discovered", user="t"), 2)

    @defer.inlineCallbacks
    def test_tenants_never_share_a_request(self):
        """Each POST carries one tenant's header and only that tenant's alerts."""
        am, url = self.start_am()
        n = self.notifier([url])
        for i in range(5):
            n.send("a", alerts(3, prefix="a%d-" % i))
            n.send("b", alerts(2, prefix="b%d-" % i))
        yield self.until(lambda: sum(len(b) for _, _, b in am.posts) == 25)
        for _, headers, body in am.posts:
            tenant = headers["x-scope-orgid"]
            self.assertTrue(all(a["labels"]["alertname"].startswith(tenant) for a in body), body)
        self.assertEqual(sorted(set(am.tenants())), ["a", "b"])


class FailureTests(NotifierCase):
    @defer.inlineCallbacks
    def test_hung_alertmanager_delays_neither_other_alertmanagers_nor_tenants(self):
        """While one Alertmanager holds every request unanswered, the other receives each
        tenant's alerts, twice over; the hung one's later alerts wait in its own queue."""
        hung, hung_url = self.start_am()
        hung.hold = True
        ok, ok_url = self.start_am()
        n = self.notifier([hung_url, ok_url], timeout_s=60)
        n.send("a", alerts(3))
        n.send("b", alerts(2))
        yield self.until(lambda: sorted(ok.tenants()) == ["a", "b"] and len(hung.held) == 2)
        n.send("a", alerts(4, prefix="x"))
        n.send("b", alerts(1, prefix="y"))
        yield self.until(lambda: len(ok.posts) == 4)
        # The server has the 4th POST once the notifier has sent it; the notifier counts it sent
        # only when the answer is back, a reactor turn or more later.
        yield self.until(lambda: self.metric("sent_total", user="a",
                                             alertmanager=ok_url + "/api/v2/alerts") == 7)
        self.assertEqual(len(hung.posts), 2)            # nothing answered there yet
        self.assertEqual(self.metric("queue_length", user="a", alertmanager=hung_url + "/api/v2/alerts"), 4)
        hung.hold = False
        hung.release()
        yield self.until(lambda: len(hung.posts) == 4)
        yield self.until(lambda: self.metric("sent_total", user="a",
                                             alertmanager=hung_url + "/api/v2/alerts") == 7)

    @defer.inlineCallbacks
    def test_full_queue_drops_the_oldest_and_counts_them(self):
        """With capacity 10 and a batch in flight, 8 then 6 more alerts keep only the newest 10;
        dropped_total counts 4 and the next POST holds exactly the kept ones. A single send
        larger than the queue keeps its newest 10."""
        am, url = self.start_am()
        am.hold = True
        n = self.notifier([url], queue_capacity=10)
        ep = url + "/api/v2/alerts"
        n.send("t", alerts(5, prefix="first"))
        yield self.until(lambda: am.held)
        n.send("t", alerts(8, prefix="second"))
        self.assertEqual(self.metric("dropped_total", user="t", alertmanager=ep), 0)
        n.send("t", alerts(6, prefix="third"))
        self.assertEqual(self.metric("dropped_total", user="t", alertmanager=ep), 4)
        self.assertEqual(self.metric("queue_length", user="t", alertmanager=ep), 10)
        am.hold = False
        am.release()
        yield self.until(lambda: len(am.posts) == 2)
        self.assertEqual([a["labels"]["alertname"] for a in am.posts[1][2]],
                         ["second%d" % i for i in range(4, 8)] + ["third%d" % i for i in range(6)])
        n.send("t", alerts(25, prefix="big"))       # one send larger than the queue
        yield self.until(lambda: len(am.posts) == 3)
        self.assertEqual([a["labels"]["alertname"] for a in am.posts[2][2]],
                         ["big%d" % i for i in range(15, 25)])
        self.assertEqual(self.metric("dropped_total", user="t", alertmanager=ep), 19)

    @defer.inlineCallbacks
    def test_5xx_is_retried_until_accepted(self):
        """Two 503s then a 200: the same batch is posted three times and counted sent once."""
        am, url = self.start_am()
        am.statuses = [503, 503]
        n = self.notifier([url])
        n.send("t", alerts(3))
        yield self.until(lambda: self.metric("sent_total", user="t", alertmanager=url + "/api/v2/alerts") == 3)
        self.assertEqual(len(am.posts), 3)
        self.assertEqual(am.posts[0][2], am.posts[2][2])
        self.assertEqual(self.metric("errors_total", user="t", alertmanager=url + "/api/v2/alerts"), 0)

    @defer.inlineCallbacks
    def test_retries_are_bounded(self):
        """An Alertmanager that always answers 500 gets MAX_ATTEMPTS tries of the batch, no more;
        the alerts are counted as errors and dropped."""
        am, url = self.start_am()
        am.statuses = [500] * 100
        n = self.notifier([url])
        ep = url + "/api/v2/alerts"
        n.send("t", alerts(2))
        yield self.until(lambda: self.metric("dropped_total", user="t", alertmanager=ep) == 2)
        self.assertEqual(len(am.posts), MAX_ATTEMPTS)
        self.assertEqual(self.metric("errors_total", user="t", alertmanager=ep), 2)
        self.assertEqual(self.metric("sent_total", user="t", alertmanager=ep), 0)

    @defer.inlineCallbacks
    def test_retries_stay_within_the_timeout_budget(self):
        """With a 0.25 s budget, 500s are retried only while the back-off still fits in it."""
        am, url = self.start_am()
        am.statuses = [500] * 100
        n = self.notifier([url], timeout_s=0.25)
        n.send("t", alerts(1))
        yield self.until(lambda: self.metric("dropped_total", user="t", alertmanager=url + "/api/v2/alerts"))
        self.assertLess(len(am.posts), MAX_ATTEMPTS)

    @defer.inlineCallbacks
    def test_4xx_is_not_retried(self):
        """A 400 (the Alertmanager refused the alerts) is one POST, counted as errors and dropped."""
        am, url = self.start_am()
        am.statuses = [400]
        n = self.notifier([url])
        n.send("t", alerts(4))
        ep = url + "/api/v2/alerts"
        yield self.until(lambda: self.metric("dropped_total", user="t", alertmanager=ep) == 4)
        self.assertEqual(len(am.posts), 1)
        self.assertEqual(self.metric("errors_total", user="t", alertmanager=ep), 4)

    @defer.inlineCallbacks
    def test_unreachable_alertmanager_is_an_error(self):
        """A refused connection fails the batch (errors and dropped counted) without hanging."""
        n = self.notifier(["http://127.0.0.1:1"], timeout_s=0.5)
        n.send("t", alerts(2))
        ep = "http://127.0.0.1:1/api/v2/alerts"
        yield self.until(lambda: self.metric("dropped_total", user="t", alertmanager=ep) == 2)
        self.assertEqual(self.metric("errors_total", user="t", alertmanager=ep), 2)


class MisbehavingAlertmanager(protocol.Protocol):
    """A raw HTTP/1.1 server on 127.0.0.1 that answers each POST with `factory.status` and
    then, by `factory.mode`: "huge", a body announced as 1 GB and written without end (256 KiB a
    turn) until the client goes away; "slow", a body announced as 100 bytes of which 2 come.
    The factory counts requests, bytes of body written and connections the client closed."""

    def connectionMade(self):
        self.buf = b""
        self.loop = None

    def dataReceived(self, data):
        self.buf += data
        head, sep, rest = self.buf.partition(b"\r\n\r\n")
        if not sep:
            return
        length = 0
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v)
        if len(rest) < length:
            return
        self.buf = rest[length:]
        f = self.factory
        f.requests += 1
        if f.mode == "huge":
            self.transport.write(b"HTTP/1.1 %d X\r\nContent-Length: 1000000000\r\n\r\n" % f.status)
            self.loop = task.LoopingCall(self.more)
            self.loop.start(0.001)
        else:
            self.transport.write(b"HTTP/1.1 %d X\r\nContent-Length: 100\r\n\r\nsl" % f.status)

    def more(self):
        if self.factory.written < 256 * 1024 * 1024:    # the test's own memory: stop somewhere
            self.transport.write(b"x" * (256 * 1024))
            self.factory.written += 256 * 1024

    def connectionLost(self, reason=None):
        if self.loop is not None and self.loop.running:
            self.loop.stop()
        self.factory.closed += 1


class AnswerBodyTests(NotifierCase):
    """An Alertmanager's answer body is read under a size cap and the request's deadline
    (components/amreceivers' rule): a huge or stalled body neither holds the batch nor keeps
    the connection."""

    def start_bad_am(self, mode, status):
        f = protocol.ServerFactory()
        f.protocol = MisbehavingAlertmanager
        f.mode, f.status = mode, status
        f.requests = f.written = f.closed = 0
        port = _reactor().listenTCP(0, f, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return f, "http://127.0.0.1:%d" % port.getHost().port

    @defer.inlineCallbacks
    def test_endless_body_on_200_is_cut_and_the_batch_sent(self):
        am, url = self.start_bad_am("huge", 200)
        n = self.notifier([url], timeout_s=30)
        ep = url + "/api/v2/alerts"
        n.send("t", alerts(3))
        yield self.until(lambda: self.metric("sent_total", user="t", alertmanager=ep) == 3)
        yield self.until(lambda: am.closed == 1)        # the client hung up on the body
        self.assertEqual(am.requests, 1)
        self.assertLess(am.written, 64 * 1024 * 1024)
        self.assertEqual(self.metric("errors_total", user="t", alertmanager=ep), 0)

    @defer.inlineCallbacks
    def test_endless_body_on_500_is_cut_and_retried(self):
        am, url = self.start_bad_am("huge", 500)
        n = self.notifier([url], timeout_s=30)
        ep = url + "/api/v2/alerts"
        n.send("t", alerts(2))
        yield self.until(lambda: self.metric("dropped_total", user="t", alertmanager=ep) == 2)
        # every attempt got its answer (not the 30 s deadline) and closed its connection
        self.assertEqual(am.requests, MAX_ATTEMPTS)
        yield self.until(lambda: am.closed == MAX_ATTEMPTS)
        self.assertEqual(self.metric("errors_total", user="t", alertmanager=ep), 2)

    @defer.inlineCallbacks
    def test_stalled_error_body_times_out_and_closes_the_connection(self):
        am, url = self.start_bad_am("slow", 503)
        n = self.notifier([url], timeout_s=0.5)
        ep = url + "/api/v2/alerts"
        n.send("t", alerts(1))
        yield self.until(lambda: self.metric("dropped_total", user="t", alertmanager=ep) == 1)
        self.assertEqual(self.metric("errors_total", user="t", alertmanager=ep), 1)
        yield self.until(lambda: am.closed == am.requests)

    @defer.inlineCallbacks
    def test_stalled_body_on_200_counts_sent_and_is_closed_at_the_deadline(self):
        am, url = self.start_bad_am("slow", 200)
        n = self.notifier([url], timeout_s=0.5)
        ep = url + "/api/v2/alerts"
        n.send("t", alerts(4))
        yield self.until(lambda: self.metric("sent_total", user="t", alertmanager=ep) == 4)
        yield self.until(lambda: am.closed == 1)
        self.assertEqual(am.requests, 1)


class StopTests(NotifierCase):
    @defer.inlineCallbacks
    def test_stop_drains_the_queue(self):
        """stop() with a batch in flight and 36 alerts queued sends them all before it fires;
        alerts sent after stop() are ignored."""
        am, url = self.start_am()
        am.hold = True
        n = self.notifier([url])
        n.send("t", alerts(100))
        yield self.until(lambda: am.held)
        stopped = n.stop()
        n.send("t", alerts(5, prefix="late"))
        self.assertFalse(stopped.called)
        am.hold = False
        am.release()
        yield stopped
        self.assertEqual([len(b) for _, _, b in am.posts], [64, 36])
        self.assertEqual(self.metric("sent_total", user="t", alertmanager=url + "/api/v2/alerts"), 100)

    @defer.inlineCallbacks
    def test_stop_drops_what_it_cannot_send_in_time(self):
        """Against a hung Alertmanager stop() fires after the timeout budget with every alert
        counted as dropped and none left queued."""
        am, url = self.start_am()
        am.hold = True
        n = self.notifier([url], timeout_s=0.5)
        ep = url + "/api/v2/alerts"
        n.send("t", alerts(100))
        yield self.until(lambda: am.held)
        yield n.stop()
        self.assertEqual(self.metric("dropped_total", user="t", alertmanager=ep), 100)
        self.assertEqual(self.metric("sent_total", user="t", alertmanager=ep), 0)
        self.assertEqual(self.metric("queue_length", user="t", alertmanager=ep), 0)


class URLTests(SynchronousTestCase):
    def test_mimir_url_forms(self):
        """Default ports, path prefixes, userinfo, the basic-auth flags overriding it, dns+."""
        a, b, c = parse_alertmanager_urls("http://am:9093, https://u:p@am.example/prefix/ ,"
                                          "dns+http://am.svc:9093/am")
        self.assertEqual(a.endpoint(), "http://am:9093/api/v2/alerts")
        self.assertEqual((a.authorization, a.resolve), (None, False))
        self.assertEqual(b.endpoint(), "https://am.example:443/prefix/api/v2/alerts")
        self.assertEqual(b.authorization, b"Basic " + base64.b64encode(b"u:p"))
        self.assertTrue(c.resolve)
        self.assertEqual(c.endpoint("10.0.0.1"), "http://10.0.0.1:9093/am/api/v2/alerts")
        self.assertEqual(c.endpoint("::1"), "http://[::1]:9093/am/api/v2/alerts")
        (d,) = parse_alertmanager_urls("http://u:p@am", "flag-user", "flag-pass")
        self.assertEqual(d.authorization, b"Basic " + base64.b64encode(b"flag-user:flag-pass"))
        self.assertEqual(parse_alertmanager_urls(" , "), [])

    def test_unsupported_urls_are_config_errors(self):
        """SRV discovery, other schemes and missing hosts are refused at startup."""
        for bad in ("dnssrv+http://_am._tcp.svc", "dnssrvnoa+http://x", "ftp://am", "am:9093",
                    "http://", "http://am:99999"):
            with self.assertRaises(ConfigError, msg=bad):
                parse_alertmanager_urls(bad)


class RefreshTests(SynchronousTestCase):
    def test_dns_names_are_re_resolved(self):
        """A dns+ URL becomes one Alertmanager per address, re-resolved every refresh interval;
        a failed lookup keeps the last answer; removed addresses take their queues with them."""
        answers = [defer.succeed(["10.0.0.1"]), defer.succeed(["10.0.0.1", "10.0.0.2"]),
                   defer.fail(OSError("no DNS")), defer.succeed(["10.0.0.2"])]
        asked = []

        def resolver(host, port):
            asked.append((host, port))
            return answers.pop(0)
        clock = MemoryReactorClock()
        registry = CollectorRegistry()
        held = []

        class HTTP:
            def post(self, url, data, headers):
                d = defer.Deferred()
                held.append(url)
                return d
        n = Notifier(NotifierConfig(alertmanager_url="dns+http://am.svc:9093,http://static:9093",
                                    refresh_interval_s=30, timeout_s=1000), clock, clock, registry, HTTP(), resolver)
        self.assertEqual(list(n.endpoints), ["http://static:9093/api/v2/alerts"])
        n.start()
        self.assertEqual(asked, [("am.svc", 9093)])
        self.assertEqual(sorted(n.endpoints), ["http://10.0.0.1:9093/api/v2/alerts",
                                               "http://static:9093/api/v2/alerts"])
        n.send("t", alerts(1))
        clock.advance(30)
        self.assertEqual(len(n.endpoints), 3)
        self.assertEqual(registry.get_sample_value(
            "cortex_prometheus_notifications_alertmanagers_discovered", {"user": "t"}), 3)
        n.send("t", alerts(1))
        self.assertEqual(sorted(held), ["http://10.0.0.1:9093/api/v2/alerts",
                                        "http://10.0.0.2:9093/api/v2/alerts",
                                        "http://static:9093/api/v2/alerts"])
        clock.advance(30)
        self.assertEqual(len(n.endpoints), 3)   # lookup failed: last answer kept
        clock.advance(30)
        self.assertEqual(sorted(n.endpoints), ["http://10.0.0.2:9093/api/v2/alerts",
                                               "http://static:9093/api/v2/alerts"])
        self.assertEqual(registry.get_sample_value(
            "cortex_prometheus_notifications_alertmanagers_discovered", {"user": "t"}), 2)
        self.assertEqual(len(asked), 4)
        # 10.0.0.1's batch in flight was cancelled (an error) and its queued alert dropped.
        gone = {"user": "t", "alertmanager": "http://10.0.0.1:9093/api/v2/alerts"}
        self.assertEqual(registry.get_sample_value(
            "cortex_prometheus_notifications_dropped_total", gone), 2)
        self.assertEqual(registry.get_sample_value(
            "cortex_prometheus_notifications_errors_total", gone), 1)
