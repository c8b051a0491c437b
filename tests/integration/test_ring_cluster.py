"""Two `python -m urdar -target=all` processes sharing one ingester ring in a real etcd on
127.0.0.1: each sees the other on /ingester/ring; after `kill -9` of one it turns UNHEALTHY once
its heartbeat is older than -ingester.ring.heartbeat-timeout, Forget removes it, and the survivor
unregisters on SIGTERM."""
import base64
import json
import os
import signal
import tempfile
import unittest

from tests.support.etcd import Etcd, have_etcd
from tests.support.services import Urdar, http, wait_for


def ring(base):
    """{id: state} from the ring page's JSON."""
    status, body = http("GET", base + "/ingester/ring", headers={"Accept": "application/json"})
    assert status == 200, body
    return {s["id"]: s["state"] for s in json.loads(body)["shards"]}


class RingClusterTests(unittest.TestCase):
    def setUp(self):
        if not have_etcd():
            raise unittest.SkipTest("etcd is not installed (Debian package etcd-server)")
        self.tmp = tempfile.TemporaryDirectory(prefix="urdar-ring-")
        self.addCleanup(self.tmp.cleanup)
        self.etcd = Etcd(self.tmp.name).start()
        self.addCleanup(self.etcd.stop)

    def start(self, instance_id):
        workdir = os.path.join(self.tmp.name, instance_id)
        os.makedirs(workdir)
        u = Urdar(workdir, "-target=all", "-ingester.ring.store=etcd",
                  "-ingester.ring.etcd.endpoints=" + self.etcd.endpoint,
                  "-ingester.ring.instance-id=" + instance_id,
                  "-ingester.ring.heartbeat-period=1s", "-ingester.ring.heartbeat-timeout=4s",
                  "-ingester.ring.tokens-file-path=" + os.path.join(workdir, "tokens"))
        self.addCleanup(lambda: u.alive() and u.stop())
        return u.wait_ready()

    def test_two_processes_share_the_ring_and_forget_a_dead_one(self):
        """Both instances are ACTIVE on each other's ring page; a killed one turns UNHEALTHY and
        Forget removes it from the ring in etcd."""
        a, b = self.start("ing-a"), self.start("ing-b")
        both = {"ing-a": "ACTIVE", "ing-b": "ACTIVE"}
        for u in (a, b):
            wait_for(lambda: ring(u.base) == both, 20, lambda: "both ACTIVE on %s: %s" % (
                u.base, ring(u.base)))
        status, page = http("GET", a.base + "/memberlist")
        self.assertIn(b"<td>collectors/ring</td><td>etcd (ingester ring)</td>", page)
        b.proc.send_signal(signal.SIGKILL)
        b.proc.wait()
        wait_for(lambda: ring(a.base).get("ing-b") == "UNHEALTHY", 20,
                 lambda: "ing-b UNHEALTHY: %s" % ring(a.base))
        self.assertEqual(ring(a.base)["ing-a"], "ACTIVE")
        status, _ = http("POST", a.base + "/ingester/ring", data=b"forget=ing-b",
                         headers={"Content-Type": "application/x-www-form-urlencoded"})
        # urllib follows the 302 back to the page with a GET.
        self.assertEqual(status, 200)
        wait_for(lambda: "ing-b" not in ring(a.base), 10, lambda: "ing-b forgotten: %s" % ring(a.base))
        desc = self.etcd_ring()
        self.assertEqual(set(desc["ingesters"]), {"ing-a"})
        self.assertEqual(len(desc["ingesters"]["ing-a"]["tokens"]), 128)
        with open(os.path.join(self.tmp.name, "ing-a", "tokens")) as f:
            self.assertEqual(json.load(f)["tokens"], desc["ingesters"]["ing-a"]["tokens"])
        self.assertEqual(a.stop()[1], False, "SIGTERM is enough")
        self.assertEqual(self.etcd_ring()["ingesters"], {}, "unregistered on shutdown")

    def etcd_ring(self):
        """The ingester ring descriptor as etcd holds it."""
        status, body = http("POST", self.etcd.base + "/v3/kv/range", data=json.dumps(
            {"key": base64.b64encode(b"collectors/ring").decode()}).encode())
        return json.loads(base64.b64decode(json.loads(body)["kvs"][0]["value"]))
