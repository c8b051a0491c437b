"""urdar as a cluster: a real etcd and five separate processes on 127.0.0.1 (three
`-target=ingester`, one `-target=distributor`, one `-target=querier`) that find each other through
the ingester ring in etcd. Under a steady push load one ingester is `kill -9`ed: with
replication factor 3 no push fails (a quorum of two still acks) and the querier returns every
acknowledged sample (reads tolerate one ingester down); the ingester restarts from its WAL and
holds what it had acknowledged before the kill, and the querier still returns everything."""
import json
import os
import signal
import tempfile
import threading
import time
import unittest
import urllib.parse

import cramjam

from tests.support.etcd import Etcd, have_etcd
from tests.support.services import Urdar, http, wait_for
from urdar.components import ingester_remote as R
from urdar.engine.labels import decode_labels
from urdar.engine.remotewrite import encode_write_request

SERIES = 12
TENANT = "cluster-t"


class Load:
    """One thread pushing requests of SERIES series (one sample each, 5 ms apart) to the
    distributor; `acked` keeps (t, v) of every push answered 200, `failures` every other answer."""

    def __init__(self, base, t0_ms):
        self.base = base
        self.t = t0_ms
        self.acked = []
        self.failures = []
        self._stop = threading.Event()
        self._thread = None

    def push_once(self):
        t = self.t
        self.t += 5
        body = cramjam.snappy.compress_raw(encode_write_request(
            [([("__name__", "cl_metric"), ("s", "%02d" % i)], [(t, float(t % 100000) + i)])
             for i in range(SERIES)])).read()
        status, text = http("POST", self.base + "/api/v1/push", data=body, headers={
            "X-Scope-OrgID": TENANT, "Content-Type": "application/x-protobuf",
            "Content-Encoding": "snappy"}, timeout=15)
        if status == 200:
            self.acked.append(t)
        else:
            self.failures.append((t, status, text[:300]))

    def run(self):
        while not self._stop.is_set():
            self.push_once()
            time.sleep(0.01)

    def start(self):
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, daemon=True)
        self._thread.start()

    def stop(self):
        self._stop.set()
        self._thread.join(30)

    def expected(self, upto=None):
        """{series label "s": {t: v}} of the acknowledged samples (t <= upto)."""
        return {"%02d" % i: {t: float(t % 100000) + i for t in self.acked if upto is None or t <= upto}
                for i in range(SERIES)}


def ring_states(base):
    status, body = http("GET", base + "/ingester/ring", headers={"Accept": "application/json"})
    assert status == 200, body
    return {s["id"]: s["state"] for s in json.loads(body)["shards"]}


class ClusterReplicationTests(unittest.TestCase):
    def setUp(self):
        if not have_etcd():
            raise unittest.SkipTest("etcd is not installed (Debian package etcd-server)")
        self.tmp = tempfile.TemporaryDirectory(prefix="urdar-cluster-")
        self.addCleanup(self.tmp.cleanup)
        self.etcd = Etcd(self.tmp.name).start()
        self.addCleanup(self.etcd.stop)
        self.procs = []

    def ring_flags(self):
        return ["-ingester.ring.store=etcd", "-ingester.ring.etcd.endpoints=" + self.etcd.endpoint,
                "-ingester.ring.heartbeat-period=1s", "-ingester.ring.heartbeat-timeout=20s",
                "-ingester.ring.replication-factor=3"]

    def spawn(self, name, target, *extra):
        workdir = os.path.join(self.tmp.name, name)
        os.makedirs(workdir, exist_ok=True)
        u = Urdar(workdir, "-target=" + target, *self.ring_flags(), *extra)
        self.procs.append(u)
        self.addCleanup(lambda: u.alive() and u.stop())
        return u

    def ingester(self, name):
        workdir = os.path.join(self.tmp.name, name)
        return self.spawn(name, "ingester", "-ingester.ring.instance-id=" + name,
                          "-ingester.ring.tokens-file-path=" + os.path.join(workdir, "tokens"))

    def logs(self):
        return "\n".join("== %s\n%s" % (u.base, u.output()[-3000:]) for u in self.procs)

    def query(self, querier, at_s):
        """{s: {t: v}} of cl_metric over the last 10 minutes, through the querier."""
        q = urllib.parse.urlencode({"query": "cl_metric[10m]", "time": "%.3f" % at_s})
        status, body = http("GET", querier.base + "/prometheus/api/v1/query?" + q,
                            headers={"X-Scope-OrgID": TENANT}, timeout=30)
        self.assertEqual(status, 200, body)
        return {r["metric"]["s"]: {int(round(float(t) * 1000)): float(v) for t, v in r["values"]}
                for r in json.loads(body)["data"]["result"]}

    def ingester_holds(self, ing):
        """{s: {t: v}} the one ingester holds, read from its internal select endpoint."""
        doc = {"matchers": [["=", "__name__", "cl_metric"]], "mint": 0, "maxt": 2 ** 62,
               "step": 0, "func": "", "range_ms": 0, "limit": 0}
        status, body = http("POST", ing.base + "/ingester/client/select", data=json.dumps(doc).encode(),
                            headers={"X-Scope-OrgID": TENANT}, timeout=30)
        self.assertEqual(status, 200, body)
        return {dict(decode_labels(k))["s"]: dict(zip(ts, vs)) for k, ts, vs in R.decode_series(body)}

    def assert_has(self, got, want, where):
        for s, samples in want.items():
            missing = set(samples) - set(got.get(s, {}))
            self.assertFalse(missing, "%s: series %s misses %d acknowledged samples (e.g. %s)\n%s"
                             % (where, s, len(missing), sorted(missing)[:5], self.logs()))
            self.assertEqual({t: got[s][t] for t in samples}, samples)

    def test_kill_one_ingester_under_load(self):
        """No push fails while one of three ingesters is killed; every acknowledged sample is
        read back, before and after the ingester restarts from its WAL."""
        ings = [self.ingester("ing-%d" % k) for k in range(3)]
        # A generous per-push timeout: on a loaded machine a slow ingester must not look dead.
        dist = self.spawn("dist", "distributor", "-distributor.remote-timeout=15s")
        querier = self.spawn("querier", "querier")
        for u in ings + [dist, querier]:
            u.wait_ready(90)
        all_active = {"ing-0": "ACTIVE", "ing-1": "ACTIVE", "ing-2": "ACTIVE"}
        for u in (dist, querier):
            wait_for(lambda u=u: ring_states(u.base) == all_active, 30,
                     lambda u=u: "3 ACTIVE ingesters on %s: %s" % (u.base, ring_states(u.base)))

        load = Load(dist.base, int(time.time() * 1000) - 60000)
        load.push_once()
        self.assertEqual(load.failures, [], self.logs())
        load.start()
        time.sleep(2)
        load.stop()
        # What ing-1 holds now (its third-replica pushes have landed by then) it has logged to
        # its WAL before answering: the restart must bring all of it back.
        victim = ings[1]
        time.sleep(1)
        before_kill = self.ingester_holds(victim)
        self.assertEqual(len(before_kill), SERIES, self.logs())
        self.assertGreater(min(len(v) for v in before_kill.values()), 10)
        load.start()
        time.sleep(1.5)
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait()
        time.sleep(2.5)
        load.stop()
        self.assertEqual(load.failures, [], "pushes failed with one ingester down:\n" + self.logs())
        self.assertGreater(len(load.acked), 20)
        now_s = time.time()
        self.assert_has(self.query(querier, now_s), load.expected(), "one ingester down")

        # Restart: same instance id, tokens and TSDB dir; the WAL brings back phase 1.
        again = self.ingester("ing-1")
        again.wait_ready(90)
        wait_for(lambda: ring_states(querier.base).get("ing-1") == "ACTIVE", 30,
                 lambda: "ing-1 ACTIVE again: %s" % ring_states(querier.base))
        self.assert_has(self.ingester_holds(again), before_kill, "restarted ingester (WAL replay)")
        load.start()
        time.sleep(1)
        load.stop()
        self.assertEqual(load.failures, [], self.logs())
        self.assert_has(self.query(querier, time.time()), load.expected(), "after the restart")
        # The other reads fan out and merge the replicas too: each series once.
        h = {"X-Scope-OrgID": TENANT}
        status, body = http("GET", querier.base + "/prometheus/api/v1/label/s/values", headers=h)
        self.assertEqual(json.loads(body)["data"], ["%02d" % i for i in range(SERIES)])
        status, body = http("GET", querier.base + "/prometheus/api/v1/series?match[]=cl_metric",
                            headers=h)
        self.assertEqual(len(json.loads(body)["data"]), SERIES)
        status, body = http("GET", querier.base + "/prometheus/api/v1/labels", headers=h)
        self.assertEqual(json.loads(body)["data"], ["__name__", "s"])
        status, body = http("GET", dist.base + "/api/v1/user_stats", headers=h)
        self.assertEqual(json.loads(body)["numSeries"], SERIES, body)
