"""The ruler as its own process (`-target=ruler`, Mimir's microservice mode) in a cluster on
127.0.0.1: a real etcd holding the ingester ring, one `-target=ingester` (replication factor 1),
one `-target=distributor` the test pushes through, one `-target=querier` the test reads back
from, and the ruler, which finds the ingester through the ring to query and to write its
results. A group posted to the ruler's configuration API records a series the querier returns
and fires an alert: ALERTS is readable through the querier and the ruler's /api/v1/alerts and
/api/v1/rules show it."""
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

TENANT = "ruler-cluster"
GROUP = b"""name: fast
interval: 1s
rules:
  - record: job:up:sum
    expr: sum by (job) (up)
  - alert: Down
    expr: up == 0
    for: 2s
    labels: {severity: page}
"""


def push(base, tenant, t_ms):
    series = [([("__name__", "up"), ("instance", "i%d" % i), ("job", "api")], [(t_ms, v)])
              for i, v in ((1, 1.0), (2, 0.0), (3, 1.0))]
    body = bytes(cramjam.snappy.compress_raw(encode_write_request(series)))
    status, text = http("POST", base + "/api/v1/push", body, {
        "X-Scope-OrgID": tenant, "Content-Encoding": "snappy",
        "Content-Type": "application/x-protobuf"})
    assert status == 200, text


def get(base, path, tenant=TENANT):
    status, body = http("GET", base + path, headers={"X-Scope-OrgID": tenant}, timeout=30)
    assert status == 200, (status, body)
    return json.loads(body)["data"]


def query(base, expr, tenant=TENANT):
    return get(base, "/prometheus/api/v1/query?query=" + urllib.parse.quote(expr), tenant)["result"]


class ClusterCase(unittest.TestCase):
    def setUp(self):
        if not have_etcd():
            raise unittest.SkipTest("etcd is not installed (Debian package etcd-server)")
        self.tmp = tempfile.TemporaryDirectory(prefix="urdar-ruler-cluster-")
        self.addCleanup(self.tmp.cleanup)
        self.etcd = Etcd(self.tmp.name).start()
        self.addCleanup(self.etcd.stop)
        self.procs = []

    def ring_flags(self):
        return ["-ingester.ring.store=etcd", "-ingester.ring.etcd.endpoints=" + self.etcd.endpoint,
                "-ingester.ring.heartbeat-period=1s", "-ingester.ring.replication-factor=1"]

    def spawn(self, name, target, *extra):
        workdir = os.path.join(self.tmp.name, name)
        os.makedirs(workdir, exist_ok=True)
        u = Urdar(workdir, "-target=" + target, *self.ring_flags(), *extra)
        self.procs.append(u)
        self.addCleanup(lambda: u.alive() and u.stop())
        return u

    def logs(self):
        return "\n".join("== %s\n%s" % (u.base, u.output()[-4000:]) for u in self.procs)

    def start_storage(self):
        """The ingester, distributor and querier, ready, each seeing the ACTIVE ingester."""
        ing = self.spawn("ing", "ingester", "-ingester.ring.instance-id=ing")
        dist = self.spawn("dist", "distributor")
        querier = self.spawn("querier", "querier")
        for u in (ing, dist, querier):
            u.wait_ready(90)
        return ing, dist, querier

    def wait_ingester_active(self, u):
        def active():
            status, body = http("GET", u.base + "/ingester/ring",
                                headers={"Accept": "application/json"})
            return status == 200 and [s["state"] for s in json.loads(body)["shards"]] == ["ACTIVE"]
        wait_for(active, 30, lambda: "the ACTIVE ingester on %s\n%s" % (u.base, self.logs()))


class RulerAloneTests(ClusterCase):
    def test_ruler_alone_records_and_alerts(self):
        """-target=ruler queries the ingester through the ring and writes its results through
        its own distributor: the recorded series and ALERTS come back through the querier."""
        _, dist, querier = self.start_storage()
        ruler = self.spawn("ruler", "ruler", "-ruler.poll-interval=1s")
        ruler.wait_ready(90)
        for u in (dist, querier, ruler):
            self.wait_ingester_active(u)
        status, body = http("POST", ruler.base + "/prometheus/config/v1/rules/ns", GROUP,
                            {"X-Scope-OrgID": TENANT})
        self.assertEqual(status, 202, body)

        def firing():
            push(dist.base, TENANT, int(time.time() * 1000))
            alerts = get(ruler.base, "/prometheus/api/v1/alerts")["alerts"]
            return [a for a in alerts if a["state"] == "firing"]
        wait_for(firing, 60, lambda: "a firing alert on the ruler\n" + self.logs())
        [a] = firing()
        self.assertEqual(a["labels"], {"alertname": "Down", "instance": "i2", "job": "api",
                                       "severity": "page"})
        wait_for(lambda: query(querier.base, "job:up:sum"), 30,
                 lambda: "job:up:sum through the querier\n" + self.logs())
        self.assertEqual([(r["metric"], r["value"][1]) for r in query(querier.base, "job:up:sum")],
                         [({"__name__": "job:up:sum", "job": "api"}, "2")])
        wait_for(lambda: query(querier.base, 'ALERTS{alertstate="firing"}'), 30,
                 lambda: "firing ALERTS through the querier\n" + self.logs())
        res = query(querier.base, 'ALERTS{alertstate="firing"}')
        self.assertEqual([(r["metric"]["alertname"], r["metric"]["instance"]) for r in res],
                         [("Down", "i2")])
        [g] = get(ruler.base, "/prometheus/api/v1/rules")["groups"]
        self.assertEqual((g["name"], g["file"]), ("fast", "ns"))
        self.assertEqual([(r["name"], r["health"], r["lastError"]) for r in g["rules"]],
                         [("job:up:sum", "ok", ""), ("Down", "ok", "")])
        # Another tenant sees none of it.
        self.assertEqual(query(querier.base, "job:up:sum", "other"), [])
        self.assertEqual(get(ruler.base, "/prometheus/api/v1/alerts", "other"), {"alerts": []})

    def test_remote_evaluation_through_a_querier(self):
        """With -ruler.query-frontend.address the ruler's rule queries go over HTTP to that
        querier; the results are the same."""
        _, dist, querier = self.start_storage()
        ruler = self.spawn("ruler", "ruler", "-ruler.poll-interval=1s",
                           "-ruler.query-frontend.address=" + querier.base[len("http://"):])
        ruler.wait_ready(90)
        for u in (dist, querier, ruler):
            self.wait_ingester_active(u)
        status, body = http("POST", ruler.base + "/prometheus/config/v1/rules/ns", GROUP,
                            {"X-Scope-OrgID": TENANT})
        self.assertEqual(status, 202, body)

        def recorded():
            push(dist.base, TENANT, int(time.time() * 1000))
            return query(querier.base, "job:up:sum")
        wait_for(recorded, 60, lambda: "job:up:sum through the querier\n" + self.logs())
        self.assertEqual([(r["metric"], r["value"][1]) for r in recorded()],
                         [({"__name__": "job:up:sum", "job": "api"}, "2")])
        # The querier served the ruler's queries: POSTs to its query route (the test only GETs).
        status, body = http("GET", querier.base + "/metrics")
        posts = [line for line in body.decode().splitlines()
                 if line.startswith("cortex_request_duration_seconds_count{")
                 and 'method="POST"' in line and 'route="prometheus_api_v1_query"' in line]
        self.assertTrue(posts and float(posts[0].rsplit(" ", 1)[1]) >= 2, posts)


class RulerRingTests(ClusterCase):
    """Two `-target=ruler` processes in a ruler ring in etcd, one rule store (a shared
    filesystem bucket)."""
    N = 8

    def ruler(self, name, rules_dir):
        return self.spawn(name, "ruler", "-ruler.poll-interval=2s",
                          "-ruler-storage.filesystem.dir=" + rules_dir,
                          "-ruler.ring.store=etcd", "-ruler.ring.etcd.endpoints=" + self.etcd.endpoint,
                          "-ruler.ring.heartbeat-period=1s", "-ruler.ring.heartbeat-timeout=4s",
                          "-ruler.ring.instance-id=" + name)

    def local_groups(self, ruler):
        """Names of the tenant's groups this ruler evaluates (its internal endpoint)."""
        status, body = http("GET", ruler.base + "/ruler/internal/rules",
                            headers={"X-Scope-OrgID": TENANT})
        assert status == 200, (status, body)
        return sorted(g["name"] for g in json.loads(body)["groups"])

    def test_groups_sharded_and_taken_over(self):
        _, dist, querier = self.start_storage()
        rules_dir = os.path.join(self.tmp.name, "rules")
        a, b = self.ruler("ruler-a", rules_dir), self.ruler("ruler-b", rules_dir)
        for u in (a, b):
            u.wait_ready(90)
        for u in (dist, querier, a, b):
            self.wait_ingester_active(u)

        def ring_of(u):
            status, body = http("GET", u.base + "/ruler/ring", headers={"Accept": "application/json"})
            assert status == 200, body
            return {s["id"]: s["state"] for s in json.loads(body)["shards"]}
        for u in (a, b):
            wait_for(lambda u=u: ring_of(u) == {"ruler-a": "ACTIVE", "ruler-b": "ACTIVE"}, 30,
                     lambda u=u: "both rulers ACTIVE on %s: %s" % (u.base, ring_of(u)))
        names = ["g%d" % i for i in range(self.N)]
        for i, name in enumerate(names):
            group = ("name: %s\ninterval: 1s\nrules:\n  - record: rec_%d\n    expr: sum(up)\n"
                     % (name, i)).encode()
            status, body = http("POST", a.base + "/prometheus/config/v1/rules/ns", group,
                                {"X-Scope-OrgID": TENANT})
            self.assertEqual(status, 202, body)

        def split():
            ga, gb = self.local_groups(a), self.local_groups(b)
            return (ga, gb) if sorted(ga + gb) == names else None
        ga, gb = wait_for(split, 30, lambda: "every group on exactly one ruler: %s %s\n%s" % (
            self.local_groups(a), self.local_groups(b), self.logs()))
        self.assertFalse(set(ga) & set(gb))
        self.assertTrue(ga and gb, (ga, gb))
        # The rules API on either ruler lists every group.
        for u in (a, b):
            groups = get(u.base, "/prometheus/api/v1/rules")["groups"]
            self.assertEqual(sorted(g["name"] for g in groups), names)
        # Every group records (through its ruler's distributor, read back by the querier).
        push(dist.base, TENANT, int(time.time() * 1000))

        def recorded():
            push(dist.base, TENANT, int(time.time() * 1000))
            got = {r["metric"]["__name__"] for r in query(querier.base, '{__name__=~"rec_.*"}')}
            return got == {"rec_%d" % i for i in range(self.N)}
        wait_for(recorded, 60, lambda: "every rec_* series\n" + self.logs())

        # kill -9 ruler-b: after its heartbeat timeout ruler-a evaluates every group.
        b.proc.kill()
        b.proc.wait()
        killed_s = time.time()
        wait_for(lambda: self.local_groups(a) == names, 60,
                 lambda: "ruler-a taking over: %s\n%s" % (self.local_groups(a), self.logs()))
        self.assertGreaterEqual(time.time() - killed_s, 3.0)   # not before the timeout (4s)
        moved = gb[0]
        i = names.index(moved)

        def fresh():
            push(dist.base, TENANT, int(time.time() * 1000))
            res = query(querier.base, "timestamp(rec_%d)" % i)
            return res and float(res[0]["value"][1]) > killed_s + 1
        wait_for(fresh, 60, lambda: "rec_%d written again after the kill\n%s" % (i, self.logs()))
        groups = get(a.base, "/prometheus/api/v1/rules")["groups"]
        self.assertEqual(sorted(g["name"] for g in groups), names)
        # The dead ruler is forgotten through the ring page (Mimir's Forget button).
        status, _ = http("POST", a.base + "/ruler/ring", b"forget=ruler-b",
                         {"Content-Type": "application/x-www-form-urlencoded"})
        self.assertIn(status, (200, 302))
        wait_for(lambda: ring_of(a) == {"ruler-a": "ACTIVE"}, 30,
                 lambda: "ruler-b forgotten: %s" % ring_of(a))
        self.assertEqual(self.local_groups(a), names)
