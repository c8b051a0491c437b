"""Mimir's cortex_alertmanager_alerts_insert_limited_total{user} on a running urdar's /metrics:
alerts refused by -alertmanager.max-alerts-count are counted per tenant (the POST still answers
200, as Mimir's), a tenant within its limit shows 0, and a tenant whose configuration is
deleted leaves the metric."""
import json
import re
import shutil
import tempfile
import unittest

import yaml

from tests.support.services import Urdar, http, wait_for

CONFIG = "route:\n  receiver: default\nreceivers:\n  - name: default\n"


def alerts(n, prefix):
    return json.dumps([{"labels": {"alertname": "%s%d" % (prefix, i)}} for i in range(n)]).encode()


class InsertLimitedMetricTests(unittest.TestCase):
    def setUp(self):
        tmp = tempfile.mkdtemp(prefix="urdar-am-limited-")
        self.addCleanup(shutil.rmtree, tmp, True)
        self.urdar = Urdar(tmp, "-target=alertmanager", "-auth.multitenancy-enabled=true",
                           "-alertmanager.max-alerts-count=2")
        self.addCleanup(self.urdar.stop)
        self.urdar.wait_ready()

    def upload(self, tenant):
        body = yaml.safe_dump({"alertmanager_config": CONFIG, "template_files": {}}).encode()
        status, text = http("POST", self.urdar.base + "/api/v1/alerts", body, {"X-Scope-OrgID": tenant})
        self.assertEqual(status, 201, text)

    def post(self, tenant, body):
        status, text = http("POST", self.urdar.base + "/alertmanager/api/v2/alerts", body,
                            {"X-Scope-OrgID": tenant, "Content-Type": "application/json"})
        self.assertEqual(status, 200, text)

    def limited(self):
        """{user: value} of the counter as /metrics shows it."""
        status, text = http("GET", self.urdar.base + "/metrics")
        self.assertEqual(status, 200)
        return {m.group(1): float(m.group(2)) for m in re.finditer(
            r'^cortex_alertmanager_alerts_insert_limited_total\{user="([^"]*)"\} (\S+)$',
            text.decode(), re.M)}

    def test_refused_alerts_are_counted_per_tenant(self):
        for t in ("tenant-a", "tenant-b"):
            self.upload(t)
        wait_for(lambda: self.limited() == {"tenant-a": 0.0, "tenant-b": 0.0}, 30,
                 lambda: "both tenants' alertmanagers: %r" % (self.limited(),))
        self.post("tenant-a", alerts(5, "a"))
        self.post("tenant-b", alerts(2, "b"))
        self.assertEqual(self.limited(), {"tenant-a": 3.0, "tenant-b": 0.0})
        # the two stored alerts may be updated; the three others are refused again
        self.post("tenant-a", alerts(5, "a"))
        self.assertEqual(self.limited(), {"tenant-a": 6.0, "tenant-b": 0.0})
        status, text = http("GET", self.urdar.base + "/alertmanager/api/v2/alerts",
                            headers={"X-Scope-OrgID": "tenant-a"})
        self.assertEqual(status, 200, text)
        self.assertEqual(sorted(a["labels"]["alertname"] for a in json.loads(text)), ["a0", "a1"])
        status, _ = http("DELETE", self.urdar.base + "/api/v1/alerts", headers={"X-Scope-OrgID": "tenant-a"})
        self.assertEqual(status // 100, 2)
        wait_for(lambda: self.limited() == {"tenant-b": 0.0}, 30,
                 lambda: "tenant-a's series gone: %r" % (self.limited(),))


if __name__ == "__main__":
    unittest.main()
