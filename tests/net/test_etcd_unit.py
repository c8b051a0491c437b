"""EtcdKV's timeouts, fail-over, back-off, conflict limit, auth and watch resumption, on a fake
clock with a fake HTTP client whose answers each test gives by hand."""
import base64
import json

from twisted.internet import defer, error
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseDone

from urdar.net.etcd import (EtcdConflict, EtcdError, EtcdKV, EtcdUnavailable, encode_value,
                            prefix_range_end)


def b64(s):
    return base64.b64encode(s if isinstance(s, bytes) else s.encode()).decode()


def kv_item(key, value, mod_revision, version=1):
    return {"key": b64(key), "value": b64(encode_value(value)), "create_revision": "1",
            "mod_revision": str(mod_revision), "version": str(version)}


class FakeTransport:
    def __init__(self, response):
        self.response = response

    def stopProducing(self):
        self.response.end(Failure(error.ConnectionAborted()))


class FakeResponse:
    """A response whose body the test writes: all at once (unary) or line by line (a watch)."""

    def __init__(self, code, body=None, stream=False):
        self.code = code
        self._body = body
        self._stream = stream
        self.protocol = None
        self.ended = False

    def deliverBody(self, protocol):
        self.protocol = protocol
        protocol.makeConnection(FakeTransport(self))
        if not self._stream:
            protocol.dataReceived(json.dumps(self._body).encode() if self._body is not None else b"")
            self.end(Failure(ResponseDone()))

    def send(self, result):
        self.protocol.dataReceived(json.dumps({"result": result}).encode() + b"\n")

    def end(self, reason):
        if not self.ended:
            self.ended = True
            self.protocol.connectionLost(reason)


class Request:
    def __init__(self, url, body, headers, when):
        self.url, self.body, self.headers, self.when = url, body, headers, when
        self.cancelled = False
        self.d = defer.Deferred(self._cancel)

    def _cancel(self, d):
        self.cancelled = True

    @property
    def path(self):
        return "/" + self.url.split("/", 3)[3]

    def answer(self, body, code=200):
        self.d.callback(FakeResponse(code, body))

    def stream(self):
        r = FakeResponse(200, stream=True)
        self.d.callback(r)
        return r

    def refuse(self):
        self.d.errback(error.ConnectionRefusedError())


class FakeHTTP:
    def __init__(self, clock):
        self.clock = clock
        self.requests = []

    def request(self, method, url, data=None, headers=None, **kw):
        assert method == "POST"
        req = Request(url, json.loads(data), headers, self.clock.seconds())
        req.kw = kw
        self.requests.append(req)
        return req.d

    def last(self):
        return self.requests[-1]


def header(revision):
    return {"header": {"revision": str(revision)}}


class EtcdKVTransportTests(SynchronousTestCase):
    def make(self, endpoints=("a:1",), **kw):
        self.clock = Clock()
        self.http = FakeHTTP(self.clock)
        kw.setdefault("dial_timeout_s", 2.0)
        return EtcdKV(list(endpoints), self.clock, clock=self.clock, http=self.http, **kw)

    def test_unanswered_request_times_out_and_fails_over(self):
        """A request with no answer is cancelled after the dial timeout and the next endpoint is
        tried; a read with no endpoint answering fails with a clear error instead of hanging."""
        kv = self.make(("a:1", "b:2"))
        d = kv.get("k")
        self.assertEqual(self.http.last().url, "http://a:1/v3/kv/range")
        self.clock.advance(2)
        self.assertTrue(self.http.requests[0].cancelled)
        self.assertEqual(self.http.last().url, "http://b:2/v3/kv/range")
        self.assertNoResult(d)
        self.clock.advance(2)
        err = self.failureResultOf(d, EtcdUnavailable).value
        self.assertIn("no answer within 2s", str(err))
        self.assertIn("http://a:1, http://b:2", str(err))
        self.assertFalse(self.clock.getDelayedCalls(), "no timers left behind")

    def test_failover_sticks_to_the_endpoint_that_answered(self):
        """After one endpoint refuses, the next answers, and later requests go there first."""
        kv = self.make(("a:1", "b:2"))
        d = kv.get("k")
        self.http.last().refuse()
        self.http.last().answer(dict(header(5), kvs=[kv_item("k", {"x": 1}, 5)]))
        self.assertEqual(self.successResultOf(d), {"x": 1})
        kv.get("k")
        self.assertEqual(self.http.last().url, "http://b:2/v3/kv/range")
        self.assertEqual(len(self.http.requests), 3)

    def test_writes_back_off_doubling_up_to_the_cap(self):
        """A write against a refusing etcd retries max_retries times, waiting 1, 2, then at most
        3 seconds of the injected clock between tries, then fails naming the cause."""
        kv = self.make(max_retries=5, backoff_min_s=1.0, backoff_max_s=3.0)
        d = kv.cas("k", lambda v: {"x": 1})
        for _ in range(20):
            if self.http.requests and not self.http.last().d.called:
                self.http.last().refuse()
            self.clock.advance(0.5)
        self.assertEqual([r.when for r in self.http.requests], [0, 1, 3, 6, 9])
        err = self.failureResultOf(d, EtcdUnavailable).value
        self.assertIn("5 attempts", str(err))
        self.assertIn("ConnectionRefusedError", str(err))

    def test_unavailable_answers_are_retried_bad_requests_are_not(self):
        """etcd's 503 / Unavailable is retried; a request etcd rejects fails at once."""
        kv = self.make(max_retries=3, backoff_min_s=0.1)
        d = kv.delete("k")
        self.http.last().answer({"error": "etcdserver: leader changed", "code": 14}, code=503)
        self.clock.advance(0.1)
        self.http.last().answer(dict(header(7), deleted="1"))
        self.assertIs(self.successResultOf(d), True)
        d = kv.delete("k")
        self.http.last().answer({"error": "bad key", "message": "bad key", "code": 3}, code=400)
        self.assertIn("bad key", str(self.failureResultOf(d, EtcdError).value))
        self.assertEqual(len(self.http.requests), 3)

    def test_cas_is_a_txn_on_mod_revision_and_gives_up_after_max_retries(self):
        """cas writes only if the key is unchanged since it read it; each lost race re-runs fn on
        the winner's value, and after max_retries lost races it fails with EtcdConflict."""
        kv = self.make(max_retries=3)
        seen = []

        def fn(v):
            seen.append(v)
            return {"n": v["n"] + 1}
        d = kv.cas("k", fn)
        self.http.last().answer(dict(header(4), kvs=[kv_item("k", {"n": 0}, 4)]))
        for rev in (5, 6, 7):
            txn = self.http.last()
            self.assertEqual(txn.path, "/v3/kv/txn")
            self.assertEqual(txn.body["compare"], [{"key": b64("k"), "target": "MOD", "result": "EQUAL",
                                                     "mod_revision": str(rev - 1)}])
            txn.answer(dict(header(rev), responses=[{"response_range": {
                "kvs": [kv_item("k", {"n": rev * 10}, rev)]}}]))
        self.assertEqual(seen, [{"n": 0}, {"n": 50}, {"n": 60}])
        self.failureResultOf(d, EtcdConflict)

    def test_cas_creates_only_a_missing_key(self):
        """cas on a missing key compares create_revision 0, so two clients cannot both create it;
        success returns version 1."""
        kv = self.make()
        d = kv.cas("new", lambda v: {"a": 1} if v is None else None)
        self.http.last().answer(header(3))
        txn = self.http.last()
        self.assertEqual(txn.body["compare"][0]["target"], "CREATE")
        self.assertEqual(json.loads(base64.b64decode(txn.body["success"][0]["request_put"]["value"])),
                         {"a": 1})
        txn.answer(dict(header(4), succeeded=True))
        self.assertEqual(self.successResultOf(d), 1)

    def test_username_authenticates_and_renews_the_token(self):
        """With a username every request carries an auth token, fetched again when etcd says it
        is no longer valid."""
        kv = self.make(username="ring", password="pw")
        d = kv.get("k")
        auth = self.http.last()
        self.assertEqual((auth.path, auth.body), ("/v3/auth/authenticate", {"name": "ring", "password": "pw"}))
        auth.answer(dict(header(1), token="tok1"))
        self.assertEqual(self.http.last().headers.getRawHeaders(b"Authorization"), [b"tok1"])
        self.http.last().answer({"error": "etcdserver: invalid auth token", "code": 16}, code=401)
        self.http.last().answer(dict(header(1), token="tok2"))
        self.assertEqual(self.http.last().headers.getRawHeaders(b"Authorization"), [b"tok2"])
        self.http.last().answer(header(1))
        self.assertIsNone(self.successResultOf(d))

    def test_watch_renews_an_expired_token(self):
        """A watch whose auth token expired authenticates again and opens its stream."""
        kv = self.make(username="ring", password="pw", backoff_min_s=0.1)
        w = kv.watch("k", lambda k, v: None)
        self.http.last().answer(dict(header(1), token="tok1"))
        self.http.last().answer(header(10))
        self.assertEqual(self.http.last().headers.getRawHeaders(b"Authorization"), [b"tok1"])
        self.http.last().answer({"error": "etcdserver: invalid auth token", "code": 16}, code=401)
        self.clock.advance(0.1)
        auth = self.http.last()
        self.assertEqual(auth.path, "/v3/auth/authenticate")
        auth.answer(dict(header(10), token="tok2"))
        watch = self.http.last()
        self.assertEqual((watch.path, watch.headers.getRawHeaders(b"Authorization")),
                         ("/v3/watch", [b"tok2"]))
        watch.stream().send(dict(header(10), created=True))
        self.successResultOf(w.started)
        w.stop()

    def test_prefix_range_end(self):
        """A prefix range ends after the last key that starts with the prefix."""
        self.assertEqual(prefix_range_end(b"collectors/"), b"collectors0")
        self.assertEqual(prefix_range_end(b"a\xff"), b"b")
        self.assertEqual(prefix_range_end(b"\xff\xff"), b"\0")


class EtcdWatchTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.http = FakeHTTP(self.clock)
        self.kv = EtcdKV(["a:1", "b:2"], self.clock, clock=self.clock, http=self.http,
                         dial_timeout_s=2.0, backoff_min_s=1.0, backoff_max_s=4.0)
        self.seen = []
        self.w = self.kv.watch("k", lambda k, v: self.seen.append(v))
        # It first reads the key to know the revision to watch from.
        self.http.last().answer(dict(header(10), kvs=[kv_item("k", {"v": 0}, 8)]))

    def open_stream(self, start_revision):
        req = self.http.last()
        self.assertEqual((req.path, req.body["create_request"]["start_revision"]),
                         ("/v3/watch", str(start_revision)))
        s = req.stream()
        s.send(dict(header(10), created=True))
        return s

    def test_resumes_after_the_last_delivered_revision(self):
        """After the stream breaks, the watch reconnects (backing off, on the next endpoint) from
        the revision after the last event delivered, and skips events it already delivered."""
        s = self.open_stream(11)
        self.assertIs(self.successResultOf(self.w.started), self.w)
        s.send(dict(header(12), events=[{"kv": kv_item("k", {"v": 1}, 11)},
                                        {"kv": kv_item("k", {"v": 2}, 12, 2)}]))
        s.end(Failure(error.ConnectionLost()))
        self.assertEqual(self.seen, [{"v": 1}, {"v": 2}])
        self.clock.advance(0.9)
        self.assertEqual(self.http.last().path, "/v3/watch", "no new request before the back-off")
        self.assertIs(self.http.last().d.called, True)
        self.clock.advance(0.1)
        self.assertEqual(self.http.last().url, "http://b:2/v3/watch")
        s = self.open_stream(13)
        s.send(dict(header(14), events=[{"kv": kv_item("k", {"v": 2}, 12, 2)},
                                        {"type": "DELETE", "kv": {"key": b64("k"), "mod_revision": "13"}},
                                        {"kv": kv_item("k", {"v": 3}, 14)}]))
        self.assertEqual(self.seen, [{"v": 1}, {"v": 2}, None, {"v": 3}])
        d = self.kv.get("k")
        self.http.last().refuse()
        self.http.last().refuse()
        self.assertEqual(self.successResultOf(d), {"v": 3},
                         "with etcd down, reads answer what the watch saw last")

    def test_streams_are_not_buffered(self):
        """The watch stream is read unbuffered: treq's default would keep every event a
        long-lived watch ever received in memory."""
        self.assertTrue(all(r.kw.get("unbuffered") for r in self.http.requests))
        self.open_stream(11)
        self.assertIs(self.http.last().kw.get("unbuffered"), True)

    def test_silent_stream_open_times_out(self):
        """A watch request etcd never answers is cancelled after the dial timeout and retried
        after a back-off, without hanging."""
        req = self.http.last()
        self.clock.advance(2)
        self.assertTrue(req.cancelled)
        self.clock.advance(1)
        self.assertEqual(len(self.http.requests), 3)
        self.open_stream(11)

    def test_compaction_rereads_and_reports_the_current_value(self):
        """When the revisions to resume from were compacted, the watch re-reads the key at once,
        reports its value if it changed, and watches on from after that read."""
        s = self.open_stream(11)
        s.send(dict(header(12), events=[{"kv": kv_item("k", {"v": 1}, 11)}]))
        s.send({"header": {}, "canceled": True, "compact_revision": "20"})
        self.clock.advance(0)
        read = self.http.last()
        self.assertEqual(read.path, "/v3/kv/range")
        read.answer(dict(header(25), kvs=[kv_item("k", {"v": 7}, 22)]))
        self.assertEqual(self.seen, [{"v": 1}, {"v": 7}])
        self.open_stream(26)

    def test_stop_ends_reconnecting(self):
        """A stopped watch makes no more requests and calls back no more."""
        s = self.open_stream(11)
        s.end(Failure(error.ConnectionLost()))
        self.w.stop()
        n = len(self.http.requests)
        self.clock.advance(60)
        self.assertEqual(len(self.http.requests), n)
        self.assertFalse(self.clock.getDelayedCalls())

    def test_silent_stream_is_reopened(self):
        """A stream that says nothing for watch_idle_s (a frozen etcd, a half-open connection) is
        dropped and reopened from the next revision, so nothing is missed and nothing hangs."""
        self.kv.watch_idle_s = 30.0
        s = self.open_stream(11)
        self.clock.advance(20)
        s.send(dict(header(11), events=[{"kv": kv_item("k", {"v": 1}, 11)}]))
        self.clock.advance(20)
        self.assertFalse(s.ended, "a message restarts the idle timer")
        self.clock.advance(10)
        self.assertTrue(s.ended)
        self.clock.advance(1)
        self.open_stream(12)
        self.assertEqual(self.seen, [{"v": 1}])

    def test_reads_never_go_back_in_time(self):
        """An answer older than a change the watch already reported (a lagging member, a slow
        connection) does not replace it: reads stay monotonic, also while etcd is down."""
        s = self.open_stream(11)
        s.send(dict(header(20), events=[{"kv": kv_item("k", {"v": 2}, 20, 2)}]))
        d = self.kv.get("k")
        self.http.last().answer(dict(header(15), kvs=[kv_item("k", {"v": 1}, 12)]))
        self.assertEqual(self.successResultOf(d), {"v": 2})
        s.send(dict(header(21), events=[{"type": "DELETE", "kv": {"key": b64("k"), "mod_revision": "21"}}]))
        d = self.kv.get("k")
        self.http.last().answer(dict(header(18), kvs=[kv_item("k", {"v": 2}, 20, 2)]))
        self.assertIsNone(self.successResultOf(d), "a delete is remembered too")
        d = self.kv.get("k")
        self.http.last().refuse()
        self.http.last().refuse()
        self.assertIsNone(self.successResultOf(d))
