"""urdar as a cluster, the topology of issue 11's check: a real etcd and eight separate processes
on 127.0.0.1 (three `-target=ingester`, two `-target=distributor`, one `-target=querier`, one
`-target=store-gateway`, one `-target=compactor`) finding each other through the rings in etcd
and sharing one filesystem bucket. A steady push load alternates between the two distributors;
with replication factor 3:
- one ingester `kill -9`ed: no push fails (a quorum of two still acks) and the querier returns
  every acknowledged sample; the ingester restarts from its WAL and holds what it had
  acknowledged, and the querier still returns everything;
- one ingester SIGSTOPped (a hung peer): pushes and queries still succeed within their timeouts
  (writes ack at quorum, reads are complete with two replicas of each set and do not wait for
  the hung one), and after SIGCONT the cluster goes on;
- etcd stopped for several heartbeat periods: writes and reads go on with the last ring seen,
  and when etcd is back the heartbeats resume and the watches catch up without an error storm.
A second topology runs the ingesters in three zones with -ingester.ring.zone-awareness-enabled:
with one whole zone down (SIGSTOP, then kill -9) writes and reads go on."""
import base64
import datetime
import itertools
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
    """One thread pushing requests of SERIES series (one sample each, 5 ms apart), in turn to
    each of `bases` (the distributors); `acked` keeps t of every push answered 200, `failures`
    every other answer."""

    def __init__(self, bases, t0_ms):
        self.bases = itertools.cycle(bases if isinstance(bases, list) else [bases])
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
        status, text = http("POST", next(self.bases) + "/api/v1/push", data=body, headers={
            "X-Scope-OrgID": TENANT, "Content-Type": "application/x-protobuf",
            "Content-Encoding": "snappy"}, timeout=20)
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


def ring_page(base):
    status, body = http("GET", base + "/ingester/ring", headers={"Accept": "application/json"})
    assert status == 200, body
    return json.loads(body)["shards"]


def ring_states(base):
    return {s["id"]: s["state"] for s in ring_page(base)}


def heartbeats(base):
    """{id: last heartbeat, Unix seconds} as the ring page of `base` shows them."""
    return {s["id"]: datetime.datetime.fromisoformat(s["timestamp"].replace("Z", "+00:00"))
            .timestamp() for s in ring_page(base)}


class Cluster:
    """The processes of one topology under `tmp`, started and ended with the test class."""

    def __init__(self, tmp, zones=False, heartbeat_timeout_s=20):
        self.tmp = tmp
        self.zones = zones
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.etcd = Etcd(tmp).start()
        self.bucket = os.path.join(tmp, "bucket")
        self.procs = []

    def flags(self):
        e = self.etcd.endpoint
        out = ["-ingester.ring.store=etcd", "-ingester.ring.etcd.endpoints=" + e,
               "-ingester.ring.heartbeat-period=1s",
               "-ingester.ring.heartbeat-timeout=%ds" % self.heartbeat_timeout_s,
               "-ingester.ring.replication-factor=3",
               "-distributor.ring.store=etcd", "-distributor.ring.etcd.endpoints=" + e,
               "-distributor.ring.heartbeat-period=1s", "-distributor.ring.heartbeat-timeout=20s",
               "-store-gateway.sharding-ring.store=etcd",
               "-store-gateway.sharding-ring.etcd.endpoints=" + e,
               "-store-gateway.sharding-ring.heartbeat-period=1s",
               "-store-gateway.sharding-ring.heartbeat-timeout=20s",
               "-store-gateway.sharding-ring.replication-factor=1",
               "-compactor.ring.store=etcd", "-compactor.ring.etcd.endpoints=" + e,
               "-compactor.ring.heartbeat-period=1s", "-compactor.ring.heartbeat-timeout=20s",
               "-blocks-storage.backend=filesystem", "-blocks-storage.filesystem.dir=" + self.bucket,
               # every query also asks the store-gateway (the bucket's blocks), not only ingesters
               "-querier.query-store-after=0s"]
        if self.zones:
            out.append("-ingester.ring.zone-awareness-enabled=true")
        return out

    def spawn(self, name, target, *extra):
        workdir = os.path.join(self.tmp, name)
        os.makedirs(workdir, exist_ok=True)
        u = Urdar(workdir, "-target=" + target, *self.flags(), *extra)
        u.name_ = name
        self.procs.append(u)
        return u

    def ingester(self, name, zone=""):
        workdir = os.path.join(self.tmp, name)
        extra = ["-ingester.ring.instance-availability-zone=" + zone] if zone else []
        return self.spawn(name, "ingester", "-ingester.ring.instance-id=" + name,
                          "-ingester.ring.tokens-file-path=" + os.path.join(workdir, "tokens"),
                          *extra)

    def logs(self):
        return "\n".join("== %s %s\n%s" % (getattr(u, "name_", ""), u.base, u.output()[-3000:])
                         for u in self.procs)

    def stop(self):
        for u in self.procs:
            if u.alive():
                u.proc.send_signal(signal.SIGCONT)
                u.stop()
        self.etcd.stop()

    def etcd_ring(self, key="collectors/ring"):
        status, body = http("POST", self.etcd.base + "/v3/kv/range", data=json.dumps(
            {"key": base64.b64encode(key.encode()).decode()}).encode())
        return json.loads(base64.b64decode(json.loads(body)["kvs"][0]["value"]))


class ClusterTestCase(unittest.TestCase):
    ZONES = False
    HEARTBEAT_TIMEOUT_S = 20
    INGESTERS = ("ing-0", "ing-1", "ing-2")

    @classmethod
    def setUpClass(cls):
        if not have_etcd():
            raise unittest.SkipTest("etcd is not installed (Debian package etcd-server)")
        cls.tmp = tempfile.TemporaryDirectory(prefix="urdar-cluster-")
        try:
            cls.cluster = c = Cluster(cls.tmp.name, zones=cls.ZONES,
                                        heartbeat_timeout_s=cls.HEARTBEAT_TIMEOUT_S)
            cls.start_topology(c)
        except BaseException:
            if getattr(cls, "cluster", None):
                cls.cluster.stop()
            cls.tmp.cleanup()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.cluster.stop()
        cls.tmp.cleanup()

    def logs(self):
        return self.cluster.logs()

    def query(self, querier, at_s):
        """{s: {t: v}} of cl_metric over the last 10 minutes, through the querier."""
        q = urllib.parse.urlencode({"query": "cl_metric[10m]", "time": "%.3f" % at_s})
        status, body = http("GET", querier.base + "/prometheus/api/v1/query?" + q,
                            headers={"X-Scope-OrgID": TENANT}, timeout=30)
        self.assertEqual(status, 200, body)
        return {r["metric"]["s"]: {int(round(float(t) * 1000)): float(v) for t, v in r["values"]}
                for r in json.loads(body)["data"]["result"]}

    def assert_has(self, got, want, where):
        for s, samples in want.items():
            missing = set(samples) - set(got.get(s, {}))
            self.assertFalse(missing, "%s: series %s misses %d acknowledged samples (e.g. %s)\n%s"
                             % (where, s, len(missing), sorted(missing)[:5], self.logs()))
            self.assertEqual({t: got[s][t] for t in samples}, samples)

    def wait_all_active(self, bases):
        want = dict.fromkeys(self.INGESTERS, "ACTIVE")
        for b in bases:
            wait_for(lambda b=b: ring_states(b) == want, 60,
                     lambda b=b: "every ingester ACTIVE on %s: %s" % (b, ring_states(b)))

    def load(self):
        """A Load over both distributors, its first push acknowledged; timestamps are unique
        across the test class (each test starts its samples where the last ended)."""
        cls = type(self)
        t0 = max(getattr(cls, "next_t", 0), int(time.time() * 1000) - 60000)
        load = Load([d.base for d in self.dists], t0)
        load.push_once()
        self.assertEqual(load.failures, [], self.logs())
        return load

    def done(self, load):
        type(self).next_t = load.t + 5

    def query_during(self, load, seconds, where):
        """Query the querier repeatedly for `seconds` while `load` runs: every answer must hold
        every sample acknowledged before it was asked."""
        end = time.time() + seconds
        n = 0
        while time.time() < end or n == 0:
            upto = load.acked[-1] if load.acked else 0
            self.assert_has(self.query(self.querier, time.time()), load.expected(upto), where)
            n += 1
        return n


class ClusterTests(ClusterTestCase):
    @classmethod
    def start_topology(cls, c):
        cls.ings = [c.ingester(name) for name in cls.INGESTERS]
        # A generous per-push timeout: on a loaded machine a slow ingester must not look dead.
        cls.dists = [c.spawn("dist-%d" % k, "distributor", "-distributor.remote-timeout=15s",
                             "-distributor.ring.instance-id=dist-%d" % k) for k in range(2)]
        cls.querier = c.spawn("querier", "querier")
        cls.sg = c.spawn("sg", "store-gateway", "-store-gateway.sharding-ring.instance-id=sg")
        cls.compactor = c.spawn("compactor", "compactor", "-compactor.ring.instance-id=compactor")
        for u in list(c.procs):
            u.wait_ready(120)

    def setUp(self):
        self.wait_all_active([d.base for d in self.dists] + [self.querier.base])

    def ingester_holds(self, ing):
        """{s: {t: v}} the one ingester holds, read from its internal select endpoint."""
        doc = {"matchers": [["=", "__name__", "cl_metric"]], "mint": 0, "maxt": 2 ** 62,
               "step": 0, "func": "", "range_ms": 0, "limit": 0}
        status, body = http("POST", ing.base + "/ingester/client/select", data=json.dumps(doc).encode(),
                            headers={"X-Scope-OrgID": TENANT}, timeout=30)
        self.assertEqual(status, 200, body)
        return {dict(decode_labels(k))["s"]: dict(zip(ts, vs)) for k, ts, vs in R.decode_series(body)}

    def test_a_kill_one_ingester_under_load(self):
        """No push fails while one of three ingesters is killed; every acknowledged sample is
        read back, before and after the ingester restarts from its WAL."""
        querier = self.querier
        load = self.load()
        load.start()
        time.sleep(2)
        load.stop()
        # What ing-1 holds now (its third-replica pushes have landed by then) it has logged to
        # its WAL before answering: the restart must bring all of it back.
        victim = self.ings[1]
        time.sleep(1)
        before_kill = self.ingester_holds(victim)
        self.assertEqual(len(before_kill), SERIES, self.logs())
        self.assertGreater(min(len(v) for v in before_kill.values()), 10)
        load.start()
        time.sleep(1.5)
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait()
        self.query_during(load, 2.5, "one ingester killed")
        load.stop()
        self.assertEqual(load.failures, [], "pushes failed with one ingester down:\n" + self.logs())
        self.assertGreater(len(load.acked), 20)
        self.assert_has(self.query(querier, time.time()), load.expected(), "one ingester down")

        # Restart: same instance id, tokens and TSDB dir; the WAL brings back phase 1.
        again = self.cluster.ingester("ing-1")
        type(self).ings[1] = again
        again.wait_ready(90)
        wait_for(lambda: ring_states(querier.base).get("ing-1") == "ACTIVE", 30,
                 lambda: "ing-1 ACTIVE again: %s" % ring_states(querier.base))
        self.assert_has(self.ingester_holds(again), before_kill, "restarted ingester (WAL replay)")
        load.start()
        time.sleep(1)
        load.stop()
        self.done(load)
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
        for d in self.dists:
            status, body = http("GET", d.base + "/api/v1/user_stats", headers=h)
            self.assertEqual(json.loads(body)["numSeries"], SERIES, body)

    def test_b_hung_ingester(self):
        """SIGSTOP of one ingester: pushes still ack at quorum and queries answer in full from
        the other two replicas (the hung one's read is not waited for); the label, series and
        user-stats reads too. After SIGCONT everything goes on."""
        load = self.load()
        load.start()
        time.sleep(1)
        victim = self.ings[2]
        victim.proc.send_signal(signal.SIGSTOP)
        try:
            n = self.query_during(load, 4, "one ingester hung")
            self.assertGreater(n, 1)
            h = {"X-Scope-OrgID": TENANT}
            status, body = http("GET", self.querier.base + "/prometheus/api/v1/label/s/values",
                                headers=h, timeout=30)
            self.assertEqual((status, json.loads(body)["data"]),
                             (200, ["%02d" % i for i in range(SERIES)]))
            status, body = http("GET", self.dists[0].base + "/api/v1/user_stats", headers=h,
                                timeout=30)
            self.assertEqual((status, json.loads(body)["numSeries"]), (200, SERIES), body)
            acked_hung = len(load.acked)
        finally:
            victim.proc.send_signal(signal.SIGCONT)
        time.sleep(1.5)
        load.stop()
        self.done(load)
        self.assertEqual(load.failures, [], "pushes failed with one ingester hung:\n" + self.logs())
        self.assertGreater(acked_hung, 20)
        self.assert_has(self.query(self.querier, time.time()), load.expected(), "after SIGCONT")

    def test_c_etcd_down(self):
        """etcd killed for several heartbeat periods: pushes and queries go on with the last
        ring seen. When it is back every component heartbeats into it again, the readers' watches
        catch up, and the logs calm down (no error storm)."""
        def etcd_lines():
            """Warnings and errors per process (the store's outage is what they can be about)."""
            out = {}
            for u in self.cluster.procs:
                with open(u.log_path, "rb") as f:
                    out[u.name_] = sum(1 for line in f
                                       if b"level=warn" in line or b"level=error" in line)
            return out
        load = self.load()
        load.start()
        time.sleep(1)
        before = etcd_lines()
        self.cluster.etcd.kill()
        try:
            self.query_during(load, 6, "etcd down")
        finally:
            self.cluster.etcd.start()
        up_s = time.time()
        # the lifecyclers write fresh heartbeats into etcd again ...
        wait_for(lambda: all(m["timestamp"] >= int(up_s) for m in
                             self.cluster.etcd_ring()["ingesters"].values()), 30,
                 lambda: "fresh heartbeats in etcd: %s" % self.cluster.etcd_ring())
        # ... and every reader's watch sees them.
        for u in self.dists + [self.querier]:
            wait_for(lambda u=u: min(heartbeats(u.base).values()) >= int(up_s), 30,
                     lambda u=u: "%s sees fresh heartbeats: %s" % (u.base, heartbeats(u.base)))
        self.query_during(load, 1, "etcd back")
        load.stop()
        self.done(load)
        self.assertEqual(load.failures, [], "pushes failed with etcd down:\n" + self.logs())
        self.assert_has(self.query(self.querier, time.time()), load.expected(), "etcd back")
        during = etcd_lines()
        self.assertTrue(any(during[u.name_] > before[u.name_] for u in self.ings),
                        "the ingesters noticed etcd was gone")
        for name, n in during.items():
            # a few lines per heartbeat period and watch reconnect, not one per request
            self.assertLess(n - before[name], 60, "%s logged %d etcd lines during a 6 s outage:\n%s"
                            % (name, n - before[name], self.logs()))
        time.sleep(3)
        self.assertEqual(etcd_lines(), during, "etcd complaints after it came back:\n" + self.logs())


class ZoneClusterTests(ClusterTestCase):
    """Six ingesters, two in each of three zones, zone awareness on: one replica of every series
    per zone. One whole zone down, hung first (SIGSTOP) then dead (kill -9, and marked unhealthy
    once its heartbeats are older than the timeout): writes and reads go on."""
    ZONES = True
    HEARTBEAT_TIMEOUT_S = 6
    INGESTERS = ("ing-a1", "ing-a2", "ing-b1", "ing-b2", "ing-c1", "ing-c2")

    @classmethod
    def start_topology(cls, c):
        cls.ings = [c.ingester(name, zone="zone-" + name[4]) for name in cls.INGESTERS]
        cls.dists = [c.spawn("dist", "distributor", "-distributor.remote-timeout=15s")]
        cls.querier = c.spawn("querier", "querier", "-querier.query-store-after=12h")
        for u in list(c.procs):
            u.wait_ready(120)

    def test_one_zone_down(self):
        self.wait_all_active([self.dists[0].base, self.querier.base])
        zone_a = self.ings[:2]
        load = self.load()
        load.start()
        time.sleep(1)
        for u in zone_a:
            u.proc.send_signal(signal.SIGSTOP)
        self.query_during(load, 3, "zone-a hung")
        for u in zone_a:
            u.proc.send_signal(signal.SIGKILL)
            u.proc.wait()
        self.query_during(load, 2, "zone-a dead")
        wait_for(lambda: {ring_states(self.querier.base)[u.name_] for u in zone_a} == {"UNHEALTHY"},
                 30, lambda: "zone-a UNHEALTHY: %s" % ring_states(self.querier.base))
        self.query_during(load, 2, "zone-a unhealthy")
        load.stop()
        self.assertEqual(load.failures, [], "pushes failed with a zone down:\n" + self.logs())
        self.assertGreater(len(load.acked), 20)
        self.assert_has(self.query(self.querier, time.time()), load.expected(), "zone-a down")
