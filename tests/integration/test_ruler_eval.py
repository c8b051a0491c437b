"""Rule evaluation in a running `python -m urdar` (real reactor, real thread pools, real clock):
a group posted through the configuration API records series and fires an alert within seconds,
read back through /prometheus/api/v1/query, /api/v1/rules and /api/v1/alerts; another tenant
sees none of it."""
import json
import signal
import tempfile
import time
import unittest
import urllib.parse

import cramjam

from tests.support.services import Urdar, http, wait_for
from urdar.engine.remotewrite import encode_write_request

GROUP = b"""name: fast
interval: 1s
rules:
  - record: job:up:sum
    expr: sum by (job) (up)
  - alert: Down
    expr: up == 0
    for: 2s
    labels: {severity: page}
    annotations: {summary: '{{ $labels.instance }} down, {{ with query "count(up)" }}{{ . | first | value }}{{ end }} instances'}
"""


def push(base, tenant, t_ms):
    series = [([("__name__", "up"), ("instance", "i%d" % i), ("job", "api")], [(t_ms, v)])
              for i, v in ((1, 1.0), (2, 0.0), (3, 1.0))]
    body = bytes(cramjam.snappy.compress_raw(encode_write_request(series)))
    status, text = http("POST", base + "/api/v1/push", body, {
        "X-Scope-OrgID": tenant, "Content-Encoding": "snappy",
        "Content-Type": "application/x-protobuf"})
    assert status == 200, text


def get(base, path, tenant):
    status, body = http("GET", base + path, headers={"X-Scope-OrgID": tenant})
    assert status == 200, (status, body)
    return json.loads(body)["data"]


class RulerEvaluationServiceTests(unittest.TestCase):
    def test_rules_evaluated_in_a_running_urdar(self):
        tmp = tempfile.TemporaryDirectory(prefix="urdar-ruler-eval-")
        self.addCleanup(tmp.cleanup)
        svc = Urdar(tmp.name, "-ruler.poll-interval=1s")
        self.addCleanup(lambda: svc.proc.poll() is None and svc.stop(5, signal.SIGKILL))
        svc.wait_ready()
        status, body = http("POST", svc.base + "/prometheus/config/v1/rules/ns", GROUP,
                            {"X-Scope-OrgID": "team-a"})
        self.assertEqual(status, 202, body)
        deadline = time.time() + 30

        def firing():
            now = int(time.time() * 1000)
            push(svc.base, "team-a", now)
            push(svc.base, "team-b", now)
            alerts = get(svc.base, "/prometheus/api/v1/alerts", "team-a")["alerts"]
            return [a for a in alerts if a["state"] == "firing"]
        wait_for(lambda: firing() or time.time() > deadline, 40, "a firing alert")
        [a] = firing()
        self.assertEqual(a["labels"], {"alertname": "Down", "instance": "i2", "job": "api",
                                       "severity": "page"})
        self.assertEqual(a["annotations"], {"summary": "i2 down, 3 instances"})
        q = urllib.parse.quote("job:up:sum")
        res = get(svc.base, "/prometheus/api/v1/query?query=" + q, "team-a")["result"]
        self.assertEqual([(r["metric"], r["value"][1]) for r in res],
                         [({"__name__": "job:up:sum", "job": "api"}, "2")])
        q = urllib.parse.quote('ALERTS{alertstate="firing"}')
        res = get(svc.base, "/prometheus/api/v1/query?query=" + q, "team-a")["result"]
        self.assertEqual([r["metric"]["instance"] for r in res], ["i2"])
        [g] = get(svc.base, "/prometheus/api/v1/rules", "team-a")["groups"]
        self.assertEqual((g["name"], g["file"], g["interval"]), ("fast", "ns", 1))
        self.assertEqual([r["health"] for r in g["rules"]], ["ok", "ok"])
        self.assertEqual(get(svc.base, "/prometheus/api/v1/rules", "team-b"), {"groups": []})
        self.assertEqual(get(svc.base, "/prometheus/api/v1/alerts", "team-b"), {"alerts": []})
        q = urllib.parse.quote("job:up:sum")
        self.assertEqual(get(svc.base, "/prometheus/api/v1/query?query=" + q, "team-b")["result"], [])
        code, _ = svc.stop(30, signal.SIGTERM)
        self.assertEqual(code, 0, svc.output())
