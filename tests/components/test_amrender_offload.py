"""Notification templates render in an offload pool, not on the reactor: while one tenant's costly
template is still rendering, another tenant's notification is delivered and the reactor answers
other HTTP requests, and a tenant's renders take one worker at a time. Real reactor, real thread pools, a local HTTP server as the receivers; the
order of events is asserted, never durations."""
import json
import threading

import treq
from treq.client import HTTPClient
from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase
from twisted.web import resource, server
from twisted.web.client import Agent, HTTPConnectionPool

from tests.support.tmp import mktemp
from urdar.components.amdispatch import RENDER_POOL, TenantAlertmanager
from urdar.net.offload import Offload

N_ALERTS = 30
# Three nested ranges over the alerts: 27,000 iterations, within the template step limit.
HEAVY = ('{{ define "heavy" }}{{ range .Alerts }}{{ range $.Alerts }}{{ range $.Alerts }}.'
         '{{ end }}{{ end }}{{ end }}{{ end }}')
CONFIG_A = """
templates: ["*.tmpl"]
route: {receiver: a, group_wait: 0s, group_by: [alertname]}
receivers:
  - name: a
    slack_configs: [{api_url: "%s/a", text: '{{ template "heavy" . }}'},
                    {api_url: "%s/a2", text: '{{ template "heavy" . }}'}]
"""
CONFIG_B = """
route: {receiver: b, group_wait: 0s, group_by: [alertname]}
receivers:
  - name: b
    webhook_configs: [{url: "%s/b"}]
"""


class Receivers(resource.Resource):
    """Fires `arrived[path]` with the body of the first POST to that path."""
    isLeaf = True

    def __init__(self):
        super().__init__()
        self.arrived = {b"/a": defer.Deferred(), b"/a2": defer.Deferred(), b"/b": defer.Deferred()}

    def render_POST(self, request):
        d = self.arrived[request.path]
        if not d.called:
            d.callback(request.content.read())
        return b"ok"

    def render_GET(self, request):
        return b"still here"


class RenderOffloadTests(TestCase):
    def setUp(self):
        self.receivers = Receivers()
        port = reactor.listenTCP(0, server.Site(self.receivers), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.base = "http://127.0.0.1:%d" % port.getHost().port
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.http = HTTPClient(Agent(reactor, pool=pool))
        self.offload = Offload(reactor)
        self.offload.add_pool("alertmanager", 1, 10)
        self.offload.add_pool(RENDER_POOL, 2, 10)
        self.offload.start()
        self.addCleanup(self.offload.stop)
        self.release = threading.Event()
        self.addCleanup(self.release.set)        # never leave a pool thread waiting

    def tenant(self, name, config, templates):
        am = TenantAlertmanager(name, reactor, self.http, mktemp(self), offload=self.offload)
        self.addCleanup(am.stop)
        am.apply_config(config.replace("%s", self.base), templates)
        return am

    async def test_costly_template_delays_neither_other_tenants_nor_the_reactor(self):
        a = self.tenant("a", CONFIG_A, {"heavy.tmpl": HEAVY})
        b = self.tenant("b", CONFIG_B, {})
        await a.start()
        await b.start()
        # Tenant a's renders are held at their start (as if its template ran for as long as the
        # test needs), then run the costly template for real.
        started = []
        rendering = defer.Deferred()

        def held(real_render):
            def render(data, template):
                reactor.callFromThread(started.append, threading.get_ident())
                reactor.callFromThread(lambda: rendering.called or rendering.callback(None))
                self.release.wait(60)
                return real_render(data, template)
            return render
        for slack in a.config.receivers["a"]:
            slack.render = held(slack.render)

        a.post_alerts([{"labels": {"alertname": "Heavy", "i": str(i)}} for i in range(N_ALERTS)])
        await rendering
        self.assertNotEqual(started[0], threading.get_ident())
        b.post_alerts([{"labels": {"alertname": "Light"}}])
        got_b = json.loads(await self.receivers.arrived[b"/b"])
        self.assertEqual(got_b["alerts"][0]["labels"], {"alertname": "Light"})
        resp = await treq.get(self.base + "/", pool=HTTPConnectionPool(reactor, persistent=False))
        self.assertEqual(await resp.content(), b"still here")
        self.assertFalse(self.receivers.arrived[b"/a"].called)
        # Tenant a's second integration waits for its first render: one worker per tenant.
        self.assertEqual(len(started), 1)

        self.release.set()
        for path in (b"/a", b"/a2"):
            got_a = json.loads(await self.receivers.arrived[path])
            self.assertEqual(got_a["attachments"][0]["text"], "." * N_ALERTS ** 3)
        self.assertEqual(len(started), 2)
