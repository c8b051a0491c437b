"""The multi-tenant alertmanager on a fake clock over a MemoryBucket, through its API v2 (StubTreq):
tenants' Alertmanagers appear, reload and stop with their configurations (at once after a config
API call, or at the next poll for changes made behind its back), the fallback configuration, bad
configurations keep the last good one, state is written at stop and read back, and the API's
answers and refusals, and the per-tenant alert and silence limits."""
import json

import yaml
from treq.testing import StubTreq
from twisted.internet import task
from twisted.trial.unittest import SynchronousTestCase

from tests.support.tmp import mktemp
from urdar.app.config import Config
from urdar.components.alertmanager import AlertConfig, AlertmanagerConfigs, AlertStore
from urdar.components.ammultitenant import MultitenantAlertmanager
from urdar.components.limits import Overrides
from urdar.handlers.alertmanager import AlertmanagerAPIHandlers, AlertmanagerHandlers
from urdar.handlers.routes import RouteTable
from urdar.net.tenant import Tenancy
from urdar.storage.memory import MemoryBucket

AM = "route:\n  receiver: %s\n  group_wait: 5s\nreceivers:\n  - name: %s\n"
BASE = "http://urdar/alertmanager/api/v2"


class MultitenantTests(SynchronousTestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.clock.advance(1_700_000_000)
        self.bucket = MemoryBucket()
        self.dir = mktemp(self)
        self.build()

    def build(self, fallback=""):
        self.configs = AlertmanagerConfigs(AlertStore(self.bucket),
                                           Overrides(Config().limits_defaults()))
        self.mt = MultitenantAlertmanager(self.configs, self.clock, None, self.dir,
                                          poll_interval=15, fallback_config=fallback)
        table = RouteTable(Tenancy())
        table.mount(AlertmanagerHandlers(self.configs))
        table.mount(AlertmanagerAPIHandlers(self.mt))
        self.treq = StubTreq(table.resource())
        self.successResultOf(self.mt.start())

    def call(self, method, url, body=None, tenant="a"):
        data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
        resp = self.successResultOf(self.treq.request(method, url, data=data,
                                                      headers={"X-Scope-OrgID": tenant}))
        return resp.code, self.successResultOf(resp.content())

    def upload(self, tenant, receiver):
        body = yaml.safe_dump({"alertmanager_config": AM % (receiver, receiver)}).encode()
        code, text = self.call("POST", "http://urdar/api/v1/alerts", body, tenant)
        self.assertEqual(code, 201, text)

    def receivers(self, tenant):
        code, body = self.call("GET", BASE + "/receivers", tenant=tenant)
        return code, json.loads(body) if code == 200 else body

    def test_config_lifecycle(self):
        self.assertEqual(self.receivers("a"), (404, b"the Alertmanager is not configured\n"))
        self.upload("a", "first")
        self.assertEqual(self.receivers("a"), (200, [{"name": "first"}]))
        self.upload("a", "second")                        # reloaded at once
        self.assertEqual(self.receivers("a"), (200, [{"name": "second"}]))
        # Changed in the bucket behind its back: picked up at the next poll.
        self.successResultOf(self.configs.store.set(AlertConfig("a", AM % ("third", "third"))))
        self.assertEqual(self.receivers("a"), (200, [{"name": "second"}]))
        self.clock.advance(15)
        self.assertEqual(self.receivers("a"), (200, [{"name": "third"}]))
        # A broken configuration in the bucket: the last good one keeps running.
        self.successResultOf(self.configs.store.set(AlertConfig("a", "route: [")))
        self.clock.advance(15)
        self.assertEqual(self.receivers("a"), (200, [{"name": "third"}]))
        self.assertIn("a", self.mt.errors)
        code, _ = self.call("DELETE", "http://urdar/api/v1/alerts", tenant="a")
        self.assertEqual(code, 200)
        self.assertEqual(self.receivers("a")[0], 404)

    def test_fallback_config(self):
        self.build(fallback=AM % ("fallback", "fallback"))
        self.assertEqual(self.receivers("b"), (200, [{"name": "fallback"}]))
        # Mimir stores an empty configuration for the tenant: it stays active at the next poll.
        self.clock.advance(15)
        self.assertEqual(self.receivers("b"), (200, [{"name": "fallback"}]))

    def test_silences_survive_a_restart_and_tenants_are_apart(self):
        self.upload("a", "r")
        self.upload("b", "r")
        sil = {"matchers": [{"name": "alertname", "value": "X", "isRegex": False}],
               "startsAt": "2023-11-14T22:13:20Z", "endsAt": "2023-11-15T22:13:20Z",
               "createdBy": "me", "comment": "c"}
        code, body = self.call("POST", BASE + "/silences", sil, tenant="a")
        self.assertEqual(code, 200, body)
        sid = json.loads(body)["silenceID"]
        code, body = self.call("POST", BASE + "/alerts", [{"labels": {"alertname": "X"}}], "a")
        self.assertEqual((code, body), (200, b""))
        self.assertEqual(json.loads(self.call("GET", BASE + "/silences", tenant="b")[1]), [])
        self.assertEqual(json.loads(self.call("GET", BASE + "/alerts", tenant="b")[1]), [])
        got = json.loads(self.call("GET", BASE + "/alerts", tenant="a")[1])
        self.assertEqual(got[0]["status"], {"state": "suppressed", "silencedBy": [sid],
                                            "inhibitedBy": []})
        self.successResultOf(self.mt.stop())
        self.build()
        code, body = self.call("GET", BASE + "/silence/" + sid, tenant="a")
        self.assertEqual(code, 200)
        self.assertEqual(json.loads(body)["comment"], "c")
        self.assertEqual(self.call("GET", BASE + "/silence/" + sid, tenant="b")[0], 404)

    def test_bad_requests(self):
        self.upload("a", "r")
        for method, url, body, want in [
                ("GET", BASE + "/alerts?filter=nope", None, 400),
                ("GET", BASE + "/alerts?silenced=maybe", None, 200),
                ("GET", BASE + "/alerts?receiver=(", None, 400),
                ("POST", BASE + "/alerts", b"{not json", 400),
                ("POST", BASE + "/alerts", {"labels": {}}, 400),
                ("POST", BASE + "/alerts", [{"annotations": {}}], 422),
                ("POST", BASE + "/silences", {"matchers": []}, 422),
                ("GET", BASE + "/silence/nope", None, 422),
                ("DELETE", BASE + "/silence/nope", None, 422),
                ("GET", BASE + "/silence/6f0e1a4e-3c4c-4c4c-8c8c-123456789012", None, 404),
                ("DELETE", BASE + "/silence/6f0e1a4e-3c4c-4c4c-8c8c-123456789012", None, 404)]:
            code, text = self.call(method, url, body)
            self.assertEqual(code, want, (method, url, text))
        code, text = self.call("POST", BASE + "/alerts", [{"labels": {"a": "1"},
                               "startsAt": "2023-01-02T00:00:00Z", "endsAt": "2023-01-01T00:00:00Z"}])
        self.assertEqual((code, json.loads(text)), (400, "start time must be before end time"))

    def test_alert_and_silence_limits_per_tenant(self):
        """-alertmanager.max-alerts-count/-max-alerts-size-bytes drop what is over the limit with
        a 200 (Mimir logs it); -max-silences-count/-max-silence-size-bytes answer 400 with
        Alertmanager's texts. Each tenant has its own, and runtime overrides apply at once."""
        overrides = self.configs.overrides
        overrides.set_overrides({"a": {"alertmanager_max_alerts_count": 2,
                                       "alertmanager_max_silences_count": 1},
                                 "b": {"alertmanager_max_alerts_size_bytes": 40,
                                       "alertmanager_max_silence_size_bytes": 200}})
        self.upload("a", "r")
        self.upload("b", "r")

        def alerts(tenant):
            got = json.loads(self.call("GET", BASE + "/alerts", tenant=tenant)[1])
            return sorted(a["labels"]["alertname"] for a in got)

        def post(tenant, *names, **annotations):
            body = [{"labels": {"alertname": n}, "annotations": annotations} for n in names]
            self.assertEqual(self.call("POST", BASE + "/alerts", body, tenant), (200, b""))
        post("a", "A0", "A1", "A2")
        self.assertEqual(alerts("a"), ["A0", "A1"])
        post("a", "A1", summary="updated")            # an update does not count again
        got = json.loads(self.call("GET", BASE + "/alerts", tenant="a")[1])
        self.assertEqual({a["labels"]["alertname"]: a["annotations"] for a in got},
                         {"A0": {}, "A1": {"summary": "updated"}})
        # Size: "alertname" and a 2-byte name are 11 bytes; 40 bytes hold three.
        post("b", "B0", "B1", "B2", "B3", "B4")
        self.assertEqual(alerts("b"), ["B0", "B1", "B2"])
        overrides.set_overrides({"a": {"alertmanager_max_alerts_count": 3}})
        post("a", "A2")
        post("b", "B3")
        self.assertEqual((alerts("a"), alerts("b")), (["A0", "A1", "A2"], ["B0", "B1", "B2", "B3"]))

        overrides.set_overrides({"a": {"alertmanager_max_silences_count": 1},
                                 "b": {"alertmanager_max_silence_size_bytes": 200}})

        def silence(tenant, comment="c"):
            sil = {"matchers": [{"name": "alertname", "value": "X", "isRegex": False}],
                   "startsAt": "2023-11-14T22:13:20Z", "endsAt": "2023-11-15T22:13:20Z",
                   "createdBy": "me", "comment": comment}
            return self.call("POST", BASE + "/silences", sil, tenant=tenant)
        self.assertEqual(silence("a")[0], 200)
        code, body = silence("a")
        self.assertEqual((code, json.loads(body)),
                         (400, "exceeded maximum number of silences: 1 (limit: 1)"))
        self.assertEqual([silence("b")[0], silence("b")[0]], [200, 200])   # b's count is not a's
        code, body = silence("b", comment="x" * 200)
        self.assertEqual(code, 400)
        self.assertRegex(json.loads(body),
                         r"^silence exceeded maximum size: 2[0-9][0-9] bytes \(limit: 200 bytes\)$")
        self.assertEqual(len(json.loads(self.call("GET", BASE + "/silences", tenant="b")[1])), 2)

    def test_limits_are_runtime_overrides(self):
        from urdar.components.limits import parse_runtime_config
        got = parse_runtime_config(
            "overrides:\n  t:\n    alertmanager_max_alerts_count: 5\n"
            "    alertmanager_max_alerts_size_bytes: 6\n    alertmanager_max_silences_count: 7\n"
            "    alertmanager_max_silence_size_bytes: 8\n", "runtime.yaml")
        self.assertEqual(got["t"],
                         {"alertmanager_max_alerts_count": 5, "alertmanager_max_alerts_size_bytes": 6,
                          "alertmanager_max_silences_count": 7,
                          "alertmanager_max_silence_size_bytes": 8})
