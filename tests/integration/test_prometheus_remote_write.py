"""End to end with a real Prometheus: it scrapes itself every second and remote-writes to urdar.

Prometheus 2.42 does not send remote_write `headers:`, so a header-adding proxy
(tests/support/header_proxy.py) sets X-Scope-OrgID in between, as nginx would in front of Mimir.
The test waits (bounded) until urdar holds series for the tenant and Prometheus reports it has sent
samples past a chosen instant, reads Prometheus' own `up` and `prometheus_build_info` samples up
to that instant from its query API, stops Prometheus before urdar (it ignores SIGTERM while its
remote endpoint is down), then opens urdar's TSDB directory and checks every sample is there."""
import json
import os
import tempfile
import time
import unittest

from tests.support.services import PROMETHEUS, HeaderProxy, Prometheus, Urdar, http, wait_for

TENANT = "prom-e2e"
CONFIG = """
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: prometheus
    static_configs:
      - targets: ['$SELF']
remote_write:
  - url: %s/api/v1/push
    remote_timeout: 5s
    queue_config:
      batch_send_deadline: 1s
      min_backoff: 100ms
      max_backoff: 1s
"""


@unittest.skipUnless(os.path.exists(PROMETHEUS), "prometheus binary not installed")
class PrometheusRemoteWriteTests(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="urdar-prom-")
        self.addCleanup(self.tmp.cleanup)

    def test_urdar_stores_what_prometheus_scraped(self):
        """Every up and prometheus_build_info sample Prometheus scraped reaches urdar's TSDB for the proxy's tenant."""
        urdar = Urdar(self.tmp.name).wait_ready()
        self.addCleanup(lambda: urdar.alive() and urdar.stop(5))
        proxy = HeaderProxy(self.tmp.name, urdar.base, {"X-Scope-OrgID": TENANT})
        self.addCleanup(lambda: proxy.alive() and proxy.stop(5))
        prom = Prometheus(self.tmp.name, CONFIG % proxy.base).wait_ready()
        self.addCleanup(lambda: prom.alive() and prom.stop(5))

        def tenant_series():
            status, body = http("GET", urdar.base + "/api/v1/user_stats",
                                headers={"X-Scope-OrgID": TENANT})
            return status == 200 and json.loads(body)["numSeries"] > 10
        wait_for(tenant_series, 30, lambda: "urdar to hold Prometheus' series\n--- prometheus:\n%s\n"
                 "--- proxy:\n%s\n--- urdar:\n%s" % (prom.output(), proxy.output(), urdar.output()))
        # Let a few scrapes happen, then fix an instant and wait until Prometheus sent past it.
        wait_for(lambda: len(prom.query("up[1m]")["result"][:1] and
                             prom.query("up[1m]")["result"][0]["values"]) >= 3, 30, "3 scrapes of up")
        cut = time.time()
        wanted = {}
        for name in ("up", "prometheus_build_info"):
            result = prom.query("%s[5m]" % name, t=cut)["result"]
            self.assertEqual(len(result), 1, result)
            wanted[name] = (result[0]["metric"], [(round(float(t) * 1000), float(v))
                                                  for t, v in result[0]["values"]])
        wait_for(lambda: (prom.metric("prometheus_remote_storage_queue_highest_sent_timestamp_seconds")
                          or 0) >= cut, 30, "Prometheus to send samples past the cut")

        # Prometheus first: it would not stop while its remote endpoint is gone. Everything up to
        # the cut was sent already, so a SIGKILL after the timeout loses nothing the test checks.
        prom.stop(20)
        proxy.stop(5)
        code, killed = urdar.stop(30)
        self.assertEqual((code, killed), (0, False), urdar.output())

        from urdar.engine.labels import decode_labels
        from urdar.engine.matchers import Matcher
        from urdar.engine.tsdb import TSDB
        db = TSDB(os.path.join(urdar.tsdb_dir, TENANT))
        try:
            for name, (labels, samples) in wanted.items():
                got = [(dict(decode_labels(k)), list(zip(ts, vs)))
                       for k, ts, vs in db.select([Matcher("=", "__name__", name)])]
                self.assertEqual(len(got), 1, got)
                stored_labels, stored = got[0]
                self.assertEqual(stored_labels, labels)
                missing = sorted(set(samples) - set(stored))
                self.assertEqual(missing, [], "%s: %d of %d Prometheus samples missing in urdar" % (
                    name, len(missing), len(samples)))
                self.assertGreaterEqual(len(samples), 3)
        finally:
            db.close()


if __name__ == "__main__":
    unittest.main()
