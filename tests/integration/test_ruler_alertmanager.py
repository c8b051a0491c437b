"""The ruler end to end: an alerting rule posted to a running urdar fires, and its alert arrives
at Debian's Alertmanager 0.25 (-ruler.alertmanager-url), as `amtool alert query` shows; when the
condition clears, the ruler sends the alert resolved and it leaves Alertmanager's active list."""
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import unittest

import cramjam

from tests.integration.test_notifier_alertmanager import ALERTMANAGER, AMTOOL, Alertmanager
from tests.support.services import Urdar, http, wait_for
from urdar.engine.remotewrite import encode_write_request

GROUP = b"""name: pager
interval: 1s
rules:
  - alert: Down
    expr: up == 0
    labels: {severity: page}
    annotations: {summary: '{{ $labels.instance }} is down'}
"""


def push(base, tenant, t_ms, down):
    series = [([("__name__", "up"), ("instance", inst), ("job", "api")],
               [(t_ms, 0.0 if inst in down else 1.0)]) for inst in ("i1", "i2")]
    body = bytes(cramjam.snappy.compress_raw(encode_write_request(series)))
    status, text = http("POST", base + "/api/v1/push", body, {
        "X-Scope-OrgID": tenant, "Content-Encoding": "snappy",
        "Content-Type": "application/x-protobuf"})
    assert status == 200, text


class RulerAlertmanagerTests(unittest.TestCase):
    def test_alert_reaches_alertmanager_and_resolves(self):
        if not (os.path.exists(ALERTMANAGER) and os.path.exists(AMTOOL)):
            raise unittest.SkipTest("prometheus-alertmanager/amtool not installed (`make test` "
                                    "installs the Debian package prometheus-alertmanager)")
        tmp = tempfile.mkdtemp(prefix="urdar-ruler-am-")
        self.addCleanup(shutil.rmtree, tmp, True)
        am = Alertmanager(tmp)
        self.addCleanup(am.stop)
        am.wait_ready()
        svc = Urdar(tmp, "-ruler.poll-interval=1s", "-ruler.resend-delay=1s",
                    "-ruler.alertmanager-url=" + am.base,
                    "-ruler.external.url=http://urdar.example/ui")
        self.addCleanup(lambda: svc.proc.poll() is None and svc.stop(5, signal.SIGKILL))
        svc.wait_ready()
        status, body = http("POST", svc.base + "/prometheus/config/v1/rules/ns", GROUP,
                            {"X-Scope-OrgID": "team-a"})
        self.assertEqual(status, 202, body)

        def active(down):
            push(svc.base, "team-a", int(time.time() * 1000), down)
            status, body = http("GET", am.base + "/api/v2/alerts?active=true&silenced=false"
                                "&inhibited=false", timeout=5)
            assert status == 200, body
            return [a for a in json.loads(body) if a["labels"].get("alertname") == "Down"]

        wait_for(lambda: active({"i2"}), 60, "the Down alert at the Alertmanager")
        [a] = active({"i2"})
        self.assertEqual(a["labels"], {"alertname": "Down", "instance": "i2", "job": "api",
                                       "severity": "page"})
        self.assertEqual(a["annotations"], {"summary": "i2 is down"})
        self.assertTrue(a["generatorURL"].startswith("http://urdar.example/ui/"), a)
        out = subprocess.run([AMTOOL, "alert", "query", "--alertmanager.url=" + am.base,
                              "-o", "json", "alertname=Down"], capture_output=True, timeout=30)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual([x["labels"]["instance"] for x in json.loads(out.stdout)], ["i2"])
        # i2 is back: the ruler sends the alert resolved (endsAt now) and it leaves the list.
        wait_for(lambda: not active(set()), 60, "the Down alert resolved at the Alertmanager")
        code, _ = svc.stop(30, signal.SIGTERM)
        self.assertEqual(code, 0, svc.output())
