"""The HA tracker across two `python -m urdar -target=all` processes sharing its store in a real
etcd on 127.0.0.1: replica "a" pushes to one, replica "b" of the same cluster to the other; only
a's samples are stored (b's pushes answer 202 naming the elected replica), without __replica__;
once a is silent past -distributor.ha-tracker.failover-timeout, b is elected, its samples are
stored and a's are refused; /distributor/ha_tracker shows the election on both."""
import json
import os
import tempfile
import time
import unittest
import urllib.parse

import cramjam

from tests.support.etcd import Etcd, have_etcd
from tests.support.services import Urdar, http, wait_for
from urdar.engine.remotewrite import encode_write_request


def push(base, replica, t_ms, value):
    body = bytes(cramjam.snappy.compress_raw(encode_write_request([(
        [("__name__", "up"), ("job", "node"), ("cluster", "prom"), ("__replica__", replica)],
        [(t_ms, value)])])))
    return http("POST", base + "/api/v1/push", body, {
        "X-Scope-OrgID": "team", "Content-Encoding": "snappy",
        "Content-Type": "application/x-protobuf", "X-Prometheus-Remote-Write-Version": "0.1.0"})


def series(base, t_ms):
    """[(labels, [(t, v)])] of up{cluster="prom"} over the last minute before t_ms."""
    q = urllib.parse.urlencode({"query": 'up{cluster="prom"}[1m]', "time": "%.3f" % (t_ms / 1000)})
    status, body = http("GET", base + "/prometheus/api/v1/query?" + q, headers={"X-Scope-OrgID": "team"})
    assert status == 200, body
    return [(r["metric"], [(int(float(t) * 1000), float(v)) for t, v in r["values"]])
            for r in json.loads(body)["data"]["result"]]


class HATrackerEtcdTests(unittest.TestCase):
    def setUp(self):
        if not have_etcd():
            raise unittest.SkipTest("etcd is not installed (Debian package etcd-server)")
        self.tmp = tempfile.TemporaryDirectory(prefix="urdar-ha-")
        self.addCleanup(self.tmp.cleanup)
        self.etcd = Etcd(self.tmp.name).start()
        self.addCleanup(self.etcd.stop)

    def start(self, name):
        workdir = os.path.join(self.tmp.name, name)
        os.makedirs(workdir)
        u = Urdar(workdir, "-target=all", "-distributor.ha-tracker.enable",
                  "-distributor.ha-tracker.enable-for-all-users",
                  "-distributor.ha-tracker.store=etcd",
                  "-distributor.ha-tracker.etcd.endpoints=" + self.etcd.endpoint,
                  "-distributor.ha-tracker.update-timeout=1s",
                  "-distributor.ha-tracker.update-timeout-jitter-max=0s",
                  "-distributor.ha-tracker.failover-timeout=3s",
                  "-ingester.ring.instance-id=" + name)
        self.addCleanup(lambda: u.alive() and u.stop())
        return u.wait_ready()

    def test_elected_replica_then_failover(self):
        """Only the elected replica is stored; the other takes over after the failover timeout."""
        one, two = self.start("one"), self.start("two")
        t0 = int(time.time() * 1000)
        self.assertEqual(push(one.base, "a", t0, 1.0), (200, b""))
        status, text = push(two.base, "b", t0, 100.0)
        self.assertEqual((status, text), (
            202, b"replicas did not match, rejecting sample: replica=b, elected=a\n"))
        # a keeps pushing for a while (refreshing its election); b is refused all along.
        for i in range(1, 5):
            time.sleep(0.5)
            self.assertEqual(push(one.base, "a", t0 + i * 500, 1.0 + i)[0], 200)
            self.assertEqual(push(two.base, "b", t0 + i * 500, 100.0 + i)[0], 202)
        labels = {"__name__": "up", "job": "node", "cluster": "prom"}
        self.assertEqual(series(one.base, t0 + 2000),
                         [(labels, [(t0 + i * 500, 1.0 + i) for i in range(5)])])
        self.assertEqual(series(two.base, t0 + 2000), [])
        # a goes silent: after 3s b is elected through the other process.
        wait_for(lambda: push(two.base, "b", int(time.time() * 1000), 200.0)[0] == 200, 10,
                 "replica b elected after the failover timeout")
        t1 = int(time.time() * 1000)
        wait_for(lambda: push(one.base, "a", t1, 9.0)[0] == 202, 5, "replica a now refused")
        got = series(two.base, t1)
        self.assertEqual([m for m, _ in got], [labels])
        self.assertEqual({v for _, v in got[0][1]}, {200.0})
        status, page = http("GET", one.base + "/distributor/ha_tracker")
        self.assertEqual(status, 200)
        self.assertIn(b"<td>team</td>\n            <td>prom</td>\n            <td>b</td>", page)
        status, page = http("GET", one.base + "/distributor/ha_tracker",
                            headers={"Accept": "application/json"})
        self.assertEqual([(e["userID"], e["replica"]) for e in json.loads(page)["elected"]],
                         [("team", "b")])
