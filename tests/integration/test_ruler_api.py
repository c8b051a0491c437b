"""The ruler's configuration API on a running `python -m urdar` with the filesystem rule store:
groups posted over HTTP are in Mimir's bucket layout on disk and survive a restart."""
import base64
import os
import signal
import tempfile
import unittest

from tests.support.services import Urdar, http

GROUP = (b"name: availability\ninterval: 30s\nrules:\n- record: job:up:sum\n  expr: sum by (job) (up)\n"
         b"- alert: Down\n  expr: up == 0\n  for: 5m\n  labels:\n    severity: page\n"
         b"  annotations:\n    summary: '{{ $labels.job }} is down'\n")
BASE = "/prometheus/config/v1/rules"


class RulerServiceTests(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="urdar-ruler-it-")
        self.addCleanup(self.tmp.cleanup)

    def start(self):
        svc = Urdar(self.tmp.name)
        self.addCleanup(lambda: svc.proc.poll() is None and svc.stop(5, signal.SIGKILL))
        return svc.wait_ready()

    def test_rule_groups_survive_restart(self):
        """Rule groups posted to urdar are stored under its ruler dir and served after a restart;
        other tenants never see them."""
        svc = self.start()
        team_a = {"X-Scope-OrgID": "team-a"}
        status, body = http("POST", svc.base + BASE + "/prod%2Fapi", GROUP, team_a)
        self.assertEqual(status, 202, body)
        status, body = http("POST", svc.base + BASE + "/prod%2Fapi", b"name: x\nrules:\n- record: r\n"
                            b"  expr: sum(\n", team_a)
        self.assertEqual(status, 400)
        self.assertIn(b"could not parse expression", body)
        key = os.path.join(self.tmp.name, "ruler", "rules", "team-a",
                           base64.urlsafe_b64encode(b"prod/api").decode(),
                           base64.urlsafe_b64encode(b"availability").decode())
        self.assertTrue(os.path.isfile(key), os.listdir(self.tmp.name))
        code, _ = svc.stop(30, signal.SIGTERM)
        self.assertEqual(code, 0, svc.output())

        svc = self.start()
        status, listed = http("GET", svc.base + BASE, headers=team_a)
        self.assertEqual(status, 200)
        self.assertTrue(listed.startswith(b"prod/api:\n    - name: availability\n      interval: 30s\n"),
                        listed)
        status, one = http("GET", svc.base + BASE + "/prod%2Fapi/availability", headers=team_a)
        self.assertEqual(status, 200)
        self.assertIn(b"summary: '{{ $labels.job }} is down'\n", one)
        self.assertEqual(http("GET", svc.base + BASE, headers={"X-Scope-OrgID": "team-b"}), (200, b"{}\n"))
        self.assertEqual(http("DELETE", svc.base + BASE + "/prod%2Fapi", headers=team_a)[0], 202)
        self.assertEqual(http("GET", svc.base + BASE, headers=team_a), (200, b"{}\n"))
        self.assertFalse(os.path.exists(key))


if __name__ == "__main__":
    unittest.main()
