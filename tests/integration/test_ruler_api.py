"""The ruler's configuration API on a running `python -m urdar`, with the filesystem rule store
(groups in Mimir's bucket layout on disk, surviving a restart) and with the S3 one (moto)."""
import base64
import os
import signal
import tempfile
import unittest

from tests.support.s3server import MotoS3Server, moto_available
from tests.support.services import Urdar, http

GROUP = (b"name: availability\ninterval: 30s\nrules:\n- record: job:up:sum\n  expr: sum by (job) (up)\n"
         b"- alert: Down\n  expr: up == 0\n  for: 5m\n  labels:\n    severity: page\n"
         b"  annotations:\n    summary: '{{ $labels.job }} is down'\n")
BASE = "/prometheus/config/v1/rules"


class RulerServiceTests(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="urdar-ruler-it-")
        self.addCleanup(self.tmp.cleanup)

    def start(self, *extra):
        svc = Urdar(self.tmp.name, *extra)
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


@unittest.skipUnless(moto_available(), "moto[server] and boto3 are not installed")
class RulerS3Tests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.s3 = MotoS3Server().start()

    @classmethod
    def tearDownClass(cls):
        cls.s3.stop()

    def test_rule_groups_in_s3(self):
        """With -ruler-storage.backend=s3 the groups are S3 objects under rules/<tenant>/ and
        another urdar on the same bucket serves them."""
        tmp = tempfile.TemporaryDirectory(prefix="urdar-ruler-s3-")
        self.addCleanup(tmp.cleanup)
        bucket = self.s3.new_bucket()
        flags = ["-ruler-storage.backend=s3", "-ruler-storage.s3.endpoint=" + self.s3.endpoint,
                 "-ruler-storage.s3.bucket-name=" + bucket, "-ruler-storage.s3.insecure=true",
                 "-ruler-storage.s3.access-key-id=" + self.s3.access_key_id,
                 "-ruler-storage.s3.secret-access-key=" + self.s3.secret_access_key]
        svc = Urdar(tmp.name, *flags)
        self.addCleanup(lambda: svc.proc.poll() is None and svc.stop(5, signal.SIGKILL))
        svc.wait_ready()
        status, body = http("POST", svc.base + BASE + "/prod%2Fapi", GROUP, {"X-Scope-OrgID": "t1"})
        self.assertEqual(status, 202, body)
        keys = [o["Key"] for o in self.s3.s3_client().list_objects_v2(Bucket=bucket).get("Contents", ())]
        self.assertEqual(keys, ["rules/t1/%s/%s" % (base64.urlsafe_b64encode(b"prod/api").decode(),
                                                    base64.urlsafe_b64encode(b"availability").decode())])
        self.assertEqual(svc.stop(30, signal.SIGTERM)[0], 0, svc.output())
        other = tempfile.TemporaryDirectory(prefix="urdar-ruler-s3-")
        self.addCleanup(other.cleanup)
        svc2 = Urdar(other.name, *flags)
        self.addCleanup(lambda: svc2.proc.poll() is None and svc2.stop(5, signal.SIGKILL))
        svc2.wait_ready()
        status, one = http("GET", svc2.base + BASE + "/prod%2Fapi/availability", headers={"X-Scope-OrgID": "t1"})
        self.assertEqual(status, 200)
        self.assertTrue(one.startswith(b"name: availability\ninterval: 30s\n"), one)


if __name__ == "__main__":
    unittest.main()
