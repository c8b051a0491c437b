"""Rule evaluation in a whole in-process -target=all urdar (Klein through StubTreq, a fake clock,
inline pools, the real ingester TSDB): groups posted through the configuration API are
evaluated, their recorded series and ALERTS come back from /prometheus/api/v1/query, and
/prometheus/api/v1/rules and /alerts show them, each tenant only its own."""
import json

import cramjam
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.components.test_rulemanager import advance_to
from tests.support.threads import inline_offload
from tests.support.tmp import mktemp
from urdar.app.config import Config
from urdar.app.modules import Modules
from urdar.engine.remotewrite import encode_write_request

T0 = 1_700_000_000_000          # a whole hour, so aligned groups evaluate on the minute
M = 60_000
GROUP = b"""name: g
interval: 1m
align_evaluation_time_on_interval: true
rules:
  - record: job:up:sum
    expr: sum by (job) (up)
  - alert: Down
    expr: up == 0
    for: 2m
    labels:
      severity: page
    annotations:
      summary: '{{ $labels.instance }} of {{ $labels.job }} is down'
"""


class RulerInProcessTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(T0 / 1000.0)
        d = mktemp(self)
        cfg = Config()
        cfg.set("blocks_storage.tsdb.dir", d + "/tsdb")
        cfg.set("ruler_storage.filesystem.dir", d + "/ruler")
        self.sent = []
        self.modules = Modules(cfg, None, self.clock, inline_offload(
            (("decode", 2, 10), ("append", 2, 10), ("compact", 1, 10), ("admin", 1, 10),
             ("query", 2, 10), ("ruler", 2, 10))))
        self.successResultOf(self.modules.start())
        self.modules.rule_manager.notify = lambda tenant, alerts: self.sent.append((tenant, alerts))
        self.treq = StubTreq(self.modules.resource())
        self.addCleanup(lambda: self.successResultOf(self.modules.stop()))

    def call(self, method, path, tenant, data=None):
        r = self.successResultOf(self.treq.request(method, "http://urdar" + path, data=data,
                                                   headers={"X-Scope-OrgID": tenant}))
        return r.code, self.successResultOf(r.content())

    def push(self, tenant, t_ms):
        series = [([("__name__", "up"), ("instance", "i%d" % i), ("job", "api")], [(t_ms, v)])
                  for i, v in ((1, 1.0), (2, 0.0), (3, 1.0))]
        body = bytes(cramjam.snappy.compress_raw(encode_write_request(series)))
        self.assertEqual(self.call("POST", "/api/v1/push", tenant, body)[0], 200)

    def query(self, tenant, q):
        code, body = self.call("GET", "/prometheus/api/v1/query?query=%s&time=%d"
                               % (q, self.clock.seconds()), tenant)
        self.assertEqual(code, 200, body)
        return sorted((r["metric"], r["value"][1]) for r in json.loads(body)["data"]["result"])

    def test_rules_evaluated_and_served(self):
        code, body = self.call("POST", "/prometheus/config/v1/rules/ns", "team-a", GROUP)
        self.assertEqual(code, 202, body)
        t = T0
        for _ in range(4):              # samples every 30s, evaluations every minute
            self.push("team-a", t)
            self.push("team-b", t)
            t += 30_000
            advance_to(self.clock, t)
            self.push("team-a", t)
            self.push("team-b", t)
            t += 30_000
            advance_to(self.clock, t)
        self.assertEqual(self.query("team-a", "job:up:sum"),
                         [({"__name__": "job:up:sum", "job": "api"}, "2")])
        self.assertEqual(self.query("team-a", "ALERTS"), [
            ({"__name__": "ALERTS", "alertname": "Down", "alertstate": "firing", "instance": "i2",
              "job": "api", "severity": "page"}, "1")])
        # team-b pushed the same data but has no rules: nothing recorded.
        self.assertEqual(self.query("team-b", "job:up:sum"), [])
        self.assertEqual(self.query("team-b", "ALERTS"), [])

        code, body = self.call("GET", "/prometheus/api/v1/rules", "team-a")
        self.assertEqual(code, 200)
        [g] = json.loads(body)["data"]["groups"]
        self.assertEqual((g["name"], g["file"], [r["name"] for r in g["rules"]]),
                         ("g", "ns", ["job:up:sum", "Down"]))
        self.assertEqual([r["health"] for r in g["rules"]], ["ok", "ok"])
        self.assertEqual(g["rules"][1]["alerts"][0]["annotations"],
                         {"summary": "i2 of api is down"})
        code, body = self.call("GET", "/prometheus/api/v1/alerts", "team-a")
        [a] = json.loads(body)["data"]["alerts"]
        self.assertEqual((a["state"], a["labels"]["instance"]), ("firing", "i2"))
        self.assertEqual(self.call("GET", "/prometheus/api/v1/rules", "team-b"),
                         (200, b'{"status":"success","data":{"groups":[]},"errorType":"","error":""}'))
        self.assertEqual(self.call("GET", "/prometheus/api/v1/alerts", "team-b")[1],
                         b'{"status":"success","data":{"alerts":[]},"errorType":"","error":""}')
        # The firing alert was handed to the notifier, once.
        self.assertEqual([(tenant, [x["labels"]["instance"] for x in alerts])
                          for tenant, alerts in self.sent], [("team-a", ["i2"])])
        # Metrics, labelled per tenant and group.
        code, body = self.call("GET", "/metrics", "team-a")
        self.assertIn(b'cortex_prometheus_rule_evaluations_total{rule_group="ns;g",user="team-a"} 8.0',
                      body)
        # Deleting the group stops it and, two intervals later, marks its series stale as of
        # the deletion.
        advance_to(self.clock, t + 10_000)
        self.assertEqual(self.call("DELETE", "/prometheus/config/v1/rules/ns/g", "team-a")[0], 202)
        advance_to(self.clock, t + 60_000)
        self.assertEqual(len(self.query("team-a", "job:up:sum")), 1)
        advance_to(self.clock, t + 130_000)
        self.assertEqual(self.query("team-a", "job:up:sum"), [])
        self.assertEqual(json.loads(self.call("GET", "/prometheus/api/v1/rules", "team-a")[1])
                         ["data"]["groups"], [])
