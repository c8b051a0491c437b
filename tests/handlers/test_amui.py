"""The tenant's Alertmanager page and its static files through the route table (StubTreq, a
MemoryBucket, a fake clock): served per tenant under the configured prefix, Mimir's 404 for a
tenant without configuration, the fallback configuration's Alertmanager otherwise, 401 without
X-Scope-OrgID, only the package's own files, and the tenant's name escaped in the page. (The page
in a browser: tests/integration/test_alertmanager_ui.py.)"""
import re

import yaml
from treq.testing import StubTreq
from twisted.internet import task
from twisted.trial.unittest import SynchronousTestCase

from tests.support.tmp import mktemp
from urdar.app.config import Config
from urdar.components.alertmanager import AlertmanagerConfigs, AlertStore
from urdar.components.ammultitenant import MultitenantAlertmanager
from urdar.components.limits import Overrides
from urdar.handlers.alertmanager import AlertmanagerAPIHandlers, AlertmanagerHandlers
from urdar.handlers.amui import AlertmanagerUIHandlers
from urdar.handlers.routes import RouteTable
from urdar.net.tenant import Tenancy
from urdar.storage.memory import MemoryBucket

AM = "route:\n  receiver: r\nreceivers:\n  - name: r\n"


class AlertmanagerUITests(SynchronousTestCase):
    def build(self, prefix="/alertmanager", fallback="", tenancy=None):
        clock = task.Clock()
        clock.advance(1_700_000_000)
        configs = AlertmanagerConfigs(AlertStore(MemoryBucket()), Overrides(Config().limits_defaults()))
        mt = MultitenantAlertmanager(configs, clock, None, mktemp(self), poll_interval=15,
                                     fallback_config=fallback)
        table = RouteTable(tenancy or Tenancy())
        table.mount(AlertmanagerHandlers(configs))
        api = AlertmanagerAPIHandlers(mt, prefix)
        table.mount(api)
        table.mount(AlertmanagerUIHandlers(api, prefix))
        self.treq = StubTreq(table.resource())
        self.successResultOf(mt.start())
        self.addCleanup(lambda: self.successResultOf(mt.stop()))

    def get(self, path, tenant="a"):
        headers = {"X-Scope-OrgID": tenant} if tenant is not None else {}
        resp = self.successResultOf(self.treq.get("http://urdar" + path, headers=headers))
        return resp, self.successResultOf(resp.content())

    def upload(self, tenant):
        body = yaml.safe_dump({"alertmanager_config": AM}).encode()
        resp = self.successResultOf(self.treq.post("http://urdar/api/v1/alerts", data=body,
                                                   headers={"X-Scope-OrgID": tenant}))
        self.assertEqual(resp.code, 201)

    def test_page_per_tenant(self):
        self.build()
        resp, body = self.get("/alertmanager/")
        self.assertEqual((resp.code, body), (404, b"the Alertmanager is not configured\n"))
        self.assertEqual(self.get("/alertmanager/static/amui.js")[0].code, 404)
        self.assertEqual(self.get("/alertmanager/", tenant=None)[0].code, 401)
        self.upload("a")
        for path in ("/alertmanager", "/alertmanager/"):
            resp, page = self.get(path)
            self.assertEqual(resp.code, 200)
            self.assertEqual(resp.headers.getRawHeaders(b"Content-Type"), [b"text/html; charset=utf-8"])
            csp = resp.headers.getRawHeaders(b"Content-Security-Policy")[0]
            self.assertIn(b"script-src 'self';", csp)
            self.assertIn(b'data-api="/alertmanager/api/v2"', page)
        # Every file the page loads is served, with its type; nothing else is.
        refs = re.findall(rb'(?:src|href)="([^"]+)"', page)
        self.assertEqual(sorted(refs), [b"/alertmanager/static/amui.css",
                                        b"/alertmanager/static/amui.js"])
        types = {}
        for ref in refs:
            resp, body = self.get(ref.decode())
            self.assertEqual(resp.code, 200)
            self.assertGreater(len(body), 1000)
            types[ref.rsplit(b".", 1)[1]] = resp.headers.getRawHeaders(b"Content-Type")[0]
        self.assertEqual(types, {b"css": b"text/css; charset=utf-8",
                                 b"js": b"text/javascript; charset=utf-8"})
        for path in ("/alertmanager/static/nope.js", "/alertmanager/static/..%2Famui.py",
                     "/alertmanager/static/__init__.py"):
            self.assertEqual(self.get(path)[0].code, 404, path)
        # Tenant b has no configuration: no page, whatever tenant a has.
        self.assertEqual(self.get("/alertmanager/", tenant="b")[0].code, 404)

    def test_tenant_name_escaped(self):
        self.build()
        self.upload("o'neil")
        resp, page = self.get("/alertmanager/", tenant="o'neil")
        self.assertEqual(resp.code, 200)
        self.assertIn(b"<b>o&#x27;neil</b>", page)
        self.assertNotIn(b"o'neil", page)

    def test_fallback_and_prefix(self):
        self.build(prefix="/am", fallback=AM)
        resp, page = self.get("/am/", tenant="new")
        self.assertEqual(resp.code, 200)
        self.assertIn(b'src="/am/static/amui.js"', page)
        self.assertEqual(self.get("/am/static/amui.js", tenant="new")[0].code, 200)
        self.assertEqual(self.get("/alertmanager/", tenant="new")[0].code, 404)

    def test_empty_prefix_leaves_the_root_alone(self):
        self.build(prefix="", fallback=AM)
        self.assertEqual(self.get("/static/amui.js", tenant="t")[0].code, 200)
        self.assertEqual(self.get("/", tenant="t")[0].code, 404)

    def test_multitenancy_off_is_anonymous(self):
        self.build(tenancy=Tenancy(multitenancy_enabled=False))
        self.assertEqual(self.get("/alertmanager/", tenant=None)[0].code, 404)
        self.upload("anonymous")
        resp, page = self.get("/alertmanager/", tenant=None)
        self.assertEqual(resp.code, 200)
        self.assertIn(b"<b>anonymous</b>", page)

    def test_script_builds_no_markup_from_data(self):
        """The page's script never turns text into markup (every value goes in as textContent)."""
        from importlib import resources
        js = resources.files("urdar.handlers").joinpath("static", "amui.js").read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                     "new Function", "http://", "https://"):
            self.assertNotIn(sink, js)
