"""The webhook integration against a local HTTP server: the version 4 payload's bytes, max_alerts,
basic and bearer authorization, which answers are retried (5xx, connection refused) or not (4xx),
and the receiver's answer body: an endless one is cut at a size cap, a stalled one at the send
deadline, with the connection closed either way and other deliveries going on meanwhile."""
import base64
import json

from treq.client import HTTPClient
from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase
from twisted.web import resource, server
from twisted.web.client import Agent, HTTPConnectionPool

from urdar.components.amreceivers import (INTEGRATIONS, MAX_DRAIN_BODY_BYTES, MAX_ERROR_BODY_BYTES,
                                          SEND_TIMEOUT_S, ConfigError, NotificationData, NotifyError)
from tests.support.services import free_port


class Recorder(resource.Resource):
    isLeaf = True

    def __init__(self):
        super().__init__()
        self.requests = []
        self.codes = []

    def render_POST(self, request):
        self.requests.append((request.getHeader(b"authorization"), request.getHeader(b"content-type"),
                              request.content.read()))
        request.setResponseCode(self.codes.pop(0) if self.codes else 200)
        return b"answer"


class BadBody(resource.Resource):
    """Answers 500 with a body that never ends (/forever: a chunk every reactor turn) or that
    stalls after a few bytes (/stall). `finished` fires when the client has gone away."""
    isLeaf = True

    def __init__(self):
        super().__init__()
        self.sent = 0
        self.stalled = defer.Deferred()
        self.finished = defer.Deferred()

    def render_POST(self, request):
        request.setResponseCode(500)
        gone = []

        def lost(f):
            gone.append(True)
            self.finished.callback(f)
        request.notifyFinish().addErrback(lost)
        if request.path == b"/stall":
            request.write(b"partial")
            self.stalled.callback(None)
        else:
            def more():
                if not gone:
                    request.write(b"x" * 4096)
                    self.sent += 4096
                    reactor.callLater(0, more)
            more()
        return server.NOT_DONE_YET


DATA = NotificationData(
    receiver="hook", status="firing",
    alerts=[{"status": "firing", "labels": {"alertname": "A", "i": str(i)}, "annotations": {},
             "startsAt": "2023-11-14T22:13:20Z", "endsAt": "0001-01-01T00:00:00Z",
             "generatorURL": "", "fingerprint": "%016x" % i} for i in range(3)],
    groupLabels={"alertname": "A"}, commonLabels={"alertname": "A"}, externalURL="http://am",
    groupKey='{}:{alertname="A"}')


class WebhookTests(TestCase):
    def setUp(self):
        self.rec = Recorder()
        self.port = reactor.listenTCP(0, server.Site(self.rec), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.url = "http://127.0.0.1:%d/hook" % self.port.getHost().port

        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.http = HTTPClient(Agent(reactor, pool=self.pool))

    def hook(self, **cfg):
        return INTEGRATIONS["webhook_configs"](dict({"url": self.url}, **cfg), {}, 0, self.http,
                                               reactor)

    async def test_payload_and_max_alerts(self):
        await self.hook().notify(DATA, None)
        await self.hook(max_alerts=2).notify(DATA, None)
        (auth, ctype, body), (_, _, truncated) = self.rec.requests
        self.assertEqual((auth, ctype), (None, b"application/json"))
        got = json.loads(body)
        self.assertEqual(list(got), ["receiver", "status", "alerts", "groupLabels", "commonLabels",
                                     "commonAnnotations", "externalURL", "version", "groupKey",
                                     "truncatedAlerts"])
        self.assertEqual((got["version"], got["truncatedAlerts"], len(got["alerts"])), ("4", 0, 3))
        got = json.loads(truncated)
        self.assertEqual((got["truncatedAlerts"], [a["labels"]["i"] for a in got["alerts"]]),
                         (1, ["0", "1"]))

    async def test_authorization(self):
        await self.hook(http_config={"basic_auth": {"username": "u", "password": "p"}}).notify(DATA, None)
        await self.hook(http_config={"bearer_token": "tok"}).notify(DATA, None)
        await self.hook(http_config={"authorization": {"credentials": "c2"}}).notify(DATA, None)
        self.assertEqual([r[0] for r in self.rec.requests],
                         [b"Basic " + base64.b64encode(b"u:p"), b"Bearer tok", b"Bearer c2"])

    async def test_errors_say_whether_to_retry(self):
        self.rec.codes = [500, 404]
        for want in (True, False):
            try:
                await self.hook().notify(DATA, None)
            except NotifyError as exc:
                self.assertEqual(exc.retry, want)
                self.assertIn("unexpected status code", exc.reason)
            else:
                self.fail("no error")
        refused = INTEGRATIONS["webhook_configs"]({"url": "http://127.0.0.1:%d/" % free_port()}, {},
                                                  0, self.http, reactor)
        try:
            await refused.notify(DATA, None)
        except NotifyError as exc:
            self.assertTrue(exc.retry)
        else:
            self.fail("no error")

    async def test_endless_answer_is_cut_at_the_size_cap(self):
        bad = BadBody()
        port = reactor.listenTCP(0, server.Site(bad), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        hook = self.hook(url="http://127.0.0.1:%d/forever" % port.getHost().port)
        try:
            await hook.notify(DATA, None)
        except NotifyError as exc:
            self.assertTrue(exc.retry)
            self.assertTrue(exc.reason.endswith(": " + "x" * MAX_ERROR_BODY_BYTES), exc.reason[:200])
        else:
            self.fail("no error")
        # The client closed the connection rather than reading on; the server could send only
        # what the cap and the socket buffers took.
        await self.assertFailure(bad.finished, Exception)
        self.assertGreater(bad.sent, MAX_DRAIN_BODY_BYTES)

    async def test_stalled_answer_hits_the_deadline_while_others_are_delivered(self):
        bad = BadBody()
        port = reactor.listenTCP(0, server.Site(bad), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        clock = task.Clock()
        stalled = INTEGRATIONS["webhook_configs"](
            {"url": "http://127.0.0.1:%d/stall" % port.getHost().port}, {}, 0, self.http, clock)
        outcome = []
        d = stalled.notify(DATA, None)
        d.addBoth(lambda r: outcome.append(r) or r)
        await bad.stalled
        # Another tenant's delivery goes through while this answer hangs.
        await self.hook().notify(DATA, None)
        self.assertEqual(len(self.rec.requests), 1)
        self.assertEqual(outcome, [])
        clock.advance(SEND_TIMEOUT_S)
        try:
            await d
        except NotifyError as exc:
            self.assertTrue(exc.retry)
            self.assertEqual(exc.reason, "webhook: timeout after %gs" % SEND_TIMEOUT_S)
        else:
            self.fail("no error")
        await self.assertFailure(bad.finished, Exception)

    def test_bad_configs(self):
        for cfg in ({}, {"url": "ftp://x"}, {"url": "http://x", "max_alerts": -1}):
            with self.assertRaises(ConfigError):
                INTEGRATIONS["webhook_configs"](cfg, {}, 0, None, reactor)
