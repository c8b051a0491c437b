"""The HA tracker on a fake clock with the in-memory KV store: election, deduplication (202 and
Mimir's message), replica label removal, failover after the timeout, the clusters limit, requests
with one HA label only, the local copy that spares the KV store, and the status page."""
import json

from prometheus_client import CollectorRegistry
from treq.testing import StubTreq
from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from tests.handlers.test_distributor import NOW_MS, NOW_S, PushFixture, body
from urdar.components import errors as E
from urdar.components.hatracker import HATracker, HATrackerConfig
from urdar.components.options import ConfigError
from urdar.handlers.hatracker import HATrackerHandlers, go_duration
from urdar.handlers.routes import RouteTable
from urdar.net.kv import MemoryKV
from urdar.net.server import Instrument
from urdar.net.tenant import Tenancy
from urdar.app.config import Config


def series(replica, t, v, cluster="prom", name="up", extra=()):
    labels = [("__name__", name), ("job", "node")] + list(extra)
    if cluster is not None:
        labels.append(("cluster", cluster))
    if replica is not None:
        labels.append(("__replica__", replica))
    return (labels, [(t, v)])


class CountingKV(MemoryKV):
    """A MemoryKV counting compare-and-swaps (the push path should rarely need one)."""

    def __init__(self, clock):
        super().__init__(clock)
        self.cas_calls = 0

    def cas(self, key, fn):
        self.cas_calls += 1
        return super().cas(key, fn)


class HATrackerPushTests(SynchronousTestCase):
    def setUp(self):
        PushFixture().setup(self, accept_ha_samples=True, ha_max_clusters=2)
        self.kv = CountingKV(self.clock)
        self.tracker = HATracker(self.kv, self.clock, self.overrides, HATrackerConfig(
            enabled=True, update_timeout_jitter_max_ms=0), registry=self.registry)
        self.distributor.ha_tracker = self.tracker
        self.tracker.start()
        self.addCleanup(self.tracker.stop)

    def push(self, *items, tenant="t1"):
        h = {"Content-Encoding": "snappy", "Content-Type": "application/x-protobuf",
             "X-Prometheus-Remote-Write-Version": "0.1.0", "X-Scope-OrgID": tenant}
        resp = self.successResultOf(self.treq.post("http://urdar/api/v1/push", data=body(list(items)),
                                                   headers=h))
        return resp.code, self.successResultOf(resp.text())

    def stored(self, labels, tenant="t1"):
        db = self.ingesters.tsdbs.get(tenant)
        return db.samples(labels) if db else []

    def metric(self, name, **labels):
        return self.registry.get_sample_value(name, labels) or 0

    def test_first_replica_is_elected_and_its_label_removed(self):
        """The first replica heard from is elected; its samples are stored without __replica__,
        with the cluster label kept, and the KV store holds the election."""
        self.assertEqual(self.push(series("a", NOW_MS, 1.0)), (200, ""))
        self.assertEqual(self.stored({"__name__": "up", "job": "node", "cluster": "prom"}),
                         [(NOW_MS, 1.0)])
        value = self.kv.get("ha-tracker/t1/prom")
        self.assertEqual((value["replica"], value["received_at"], value["elected_at"]),
                         ("a", NOW_MS, NOW_MS))
        self.assertEqual(self.metric("cortex_ha_tracker_elected_replica_changes_total",
                                     user="t1", cluster="prom"), 1)
        self.assertEqual(self.metric("cortex_ha_tracker_elected_replica_timestamp_seconds",
                                     user="t1", cluster="prom"), NOW_S)

    def test_other_replica_is_deduped_with_202(self):
        """A push of the non-elected replica answers 202 with Mimir's message, stores nothing
        and counts its samples in cortex_distributor_deduped_samples_total."""
        self.push(series("a", NOW_MS, 1.0))
        code, text = self.push(series("b", NOW_MS, 5.0), series("b", NOW_MS, 6.0, name="x"))
        self.assertEqual(code, 202)
        self.assertEqual(text, "replicas did not match, rejecting sample: replica=b, elected=a\n")
        self.assertEqual(self.stored({"__name__": "up", "job": "node", "cluster": "prom"}),
                         [(NOW_MS, 1.0)])
        self.assertEqual(self.stored({"__name__": "x", "job": "node", "cluster": "prom"}), [])
        self.assertEqual(self.metric("cortex_distributor_deduped_samples_total",
                                     user="t1", cluster="prom"), 2)

    def test_failover_after_the_timeout(self):
        """Once the elected replica has not been heard from for the failover timeout (30s), the
        other replica is elected and its samples stored; the old one is then deduped."""
        self.push(series("a", NOW_MS, 1.0))
        self.clock.advance(29)
        self.assertEqual(self.push(series("b", NOW_MS + 29000, 2.0))[0], 202)
        self.clock.advance(1.5)
        self.assertEqual(self.push(series("b", NOW_MS + 30500, 3.0)), (200, ""))
        self.assertEqual(self.push(series("a", NOW_MS + 30600, 4.0))[0], 202)
        self.assertEqual(self.stored({"__name__": "up", "job": "node", "cluster": "prom"}),
                         [(NOW_MS, 1.0), (NOW_MS + 30500, 3.0)])
        value = self.kv.get("ha-tracker/t1/prom")
        self.assertEqual((value["replica"], value["elected_changes"]), ("b", 1))
        self.assertEqual(self.metric("cortex_ha_tracker_elected_replica_changes_total",
                                     user="t1", cluster="prom"), 2)

    def test_elected_replica_refreshed_keeps_its_election(self):
        """An elected replica that keeps pushing is refreshed every update timeout (15s) and is
        never failed over, however long it runs."""
        for i in range(10):
            self.assertEqual(self.push(series("a", NOW_MS + i * 10000, float(i)))[0], 200)
            self.assertEqual(self.push(series("b", NOW_MS + i * 10000, 99.0))[0], 202)
            self.clock.advance(10)
        self.assertEqual(self.kv.get("ha-tracker/t1/prom")["replica"], "a")
        self.assertGreaterEqual(self.kv.get("ha-tracker/t1/prom")["received_at"], NOW_MS + 75000)

    def test_push_path_answers_from_the_local_copy(self):
        """Within the update timeout neither the elected nor the other replica's pushes touch
        the KV store: one compare-and-swap elects, the next 20 pushes use the local copy."""
        self.push(series("a", NOW_MS, 1.0))
        self.assertEqual(self.kv.cas_calls, 1)
        for i in range(10):
            self.push(series("a", NOW_MS + i, 1.0))
            self.push(series("b", NOW_MS + i, 1.0))
        self.assertEqual(self.kv.cas_calls, 1)

    def push_otlp(self, replica, t_ms, v, tenant="t1"):
        from tests.support import otlp as B
        req = B.request([B.gauge("up", [{"t": t_ms * 1_000_000, "value": v, "attrs": {
            "job": "node", "cluster": "prom", "__replica__": replica}}])])
        resp = self.successResultOf(self.treq.post(
            "http://urdar/otlp/v1/metrics", data=req.SerializeToString(),
            headers={"Content-Type": "application/x-protobuf", "X-Scope-OrgID": tenant}))
        return resp.code, self.successResultOf(resp.content())

    def test_otlp_pushes_are_deduplicated_too(self):
        """OTLP pushes go through the same HA tracker: the elected replica's points are stored
        without __replica__, the other's answered 202 and dropped; failover alike, and a
        remote-write replica and an OTLP one of the same cluster are one election."""
        labels = {"__name__": "up", "job": "node", "cluster": "prom"}
        self.assertEqual(self.push_otlp("a", NOW_MS, 1.0)[0], 200)
        code, body = self.push_otlp("b", NOW_MS + 1000, 2.0)
        self.assertEqual(code, 202)
        self.assertIn(b"replicas did not match, rejecting sample: replica=b, elected=a", body)
        self.assertEqual(self.push(series("b", NOW_MS + 1500, 2.5))[0], 202)
        self.assertEqual(self.stored(labels), [(NOW_MS, 1.0)])
        self.clock.advance(31)
        self.assertEqual(self.push_otlp("b", NOW_MS + 31000, 3.0)[0], 200)
        self.assertEqual(self.push_otlp("a", NOW_MS + 31500, 4.0)[0], 202)
        self.assertEqual(self.stored(labels), [(NOW_MS, 1.0), (NOW_MS + 31000, 3.0)])
        self.assertEqual(self.kv.get("ha-tracker/t1/prom")["replica"], "b")
        self.assertEqual(self.metric("cortex_distributor_deduped_samples_total",
                                     user="t1", cluster="prom"), 3)

    def test_max_clusters(self):
        """A third cluster is refused with 400 and Mimir's too-many-ha-clusters message while
        the two known clusters go on; the tenant's other HA tenants are not affected."""
        self.assertEqual(self.push(series("a", NOW_MS, 1.0, cluster="c1"))[0], 200)
        self.assertEqual(self.push(series("a", NOW_MS, 1.0, cluster="c2"))[0], 200)
        code, text = self.push(series("a", NOW_MS, 1.0, cluster="c3"))
        self.assertEqual(code, 400)
        self.assertEqual(text.strip(), (
            "the write request has been rejected because the maximum number of high-availability "
            "(HA) clusters has been reached for this tenant (limit: 2) (err-mimir-too-many-ha-"
            "clusters). To adjust the related per-tenant limit, configure "
            "-distributor.ha-tracker.max-clusters, or contact your service administrator."))
        self.assertEqual(self.metric("cortex_discarded_samples_total", reason="too_many_ha_clusters",
                                     user="t1"), 1)
        self.assertEqual(self.push(series("a", NOW_MS + 1, 1.0, cluster="c1"))[0], 200)
        self.assertEqual(self.push(series("a", NOW_MS, 1.0, cluster="c3"), tenant="t2")[0], 200)

    def test_one_label_only_is_stored_as_is(self):
        """A request whose first series lacks the cluster (or the replica) label is not
        deduplicated: it is stored with its labels untouched, __replica__ included."""
        self.assertEqual(self.push(series("a", NOW_MS, 1.0, cluster=None)), (200, ""))
        self.assertEqual(self.stored({"__name__": "up", "job": "node", "__replica__": "a"}),
                         [(NOW_MS, 1.0)])
        self.assertEqual(self.push(series(None, NOW_MS, 2.0)), (200, ""))
        self.assertEqual(self.stored({"__name__": "up", "job": "node", "cluster": "prom"}),
                         [(NOW_MS, 2.0)])
        self.assertEqual(self.metric("cortex_distributor_non_ha_samples_received_total", user="t1"), 2)
        self.assertEqual(self.kv.keys(), [])

    def test_only_first_series_decides(self):
        """As in Mimir, the first series decides for the whole request, and the replica label is
        removed from every series of an accepted request."""
        self.push(series("a", NOW_MS, 1.0))
        code, _ = self.push(series("a", NOW_MS + 1, 2.0), series("b", NOW_MS + 1, 3.0, name="y"))
        self.assertEqual(code, 200)
        self.assertEqual(self.stored({"__name__": "y", "job": "node", "cluster": "prom"}),
                         [(NOW_MS + 1, 3.0)])

    def test_tenant_without_accept_ha_samples(self):
        """A tenant without accept_ha_samples keeps every replica's series as sent."""
        self.overrides.set_overrides({"t3": {"accept_ha_samples": False}})
        self.push(series("a", NOW_MS, 1.0), tenant="t3")
        self.push(series("b", NOW_MS, 2.0), tenant="t3")
        self.assertEqual(self.stored({"__name__": "up", "job": "node", "cluster": "prom",
                                      "__replica__": "b"}, tenant="t3"), [(NOW_MS, 2.0)])

    def test_replica_label_counts_not_toward_label_limit(self):
        """The replica label is removed before validation, so it does not count toward
        -validation.max-label-names-per-series."""
        limits = self.overrides.for_tenant("t1")
        n = limits.max_label_names_per_series
        extra = [("l%02d" % i, "v") for i in range(n - 3)]     # __name__, job, cluster + extra = n
        self.assertEqual(self.push(series("a", NOW_MS, 1.0, extra=extra))[0], 200)

    def test_kv_down_during_election_is_503(self):
        """An election the KV store cannot answer fails the push with 503 (the client retries)."""
        def broken(key, fn):
            return defer.fail(ConnectionError("etcd down"))
        self.kv.cas = broken
        code, text = self.push(series("a", NOW_MS, 1.0))
        self.assertEqual(code, 503)
        self.assertIn("HA tracker", text)


class HATrackerUnitTests(SynchronousTestCase):
    def setUp(self):
        from twisted.internet.task import Clock
        from urdar.components.limits import Overrides
        self.clock = Clock()
        self.clock.advance(NOW_S)
        self.kv = MemoryKV(self.clock)
        self.overrides = Overrides(Config().limits_defaults())

    def tracker(self, **kw):
        t = HATracker(self.kv, self.clock, self.overrides, HATrackerConfig(enabled=True, **kw),
                      registry=CollectorRegistry())
        t.start()
        self.addCleanup(t.stop)
        return t

    def test_another_distributor_sees_the_election(self):
        """Two trackers on one KV store: what one elects, the other dedupes against."""
        one, two = self.tracker(), self.tracker()
        self.successResultOf(one.check("t", "c", "a"))
        err = self.failureResultOf(two.check("t", "c", "b"), E.ComponentError).value
        self.assertEqual(err.cause, E.DEDUPED)
        self.assertEqual([(t, c, e.replica) for t, c, e in two.elected()], [("t", "c", "a")])

    def test_cleanup_marks_then_deletes(self):
        """An entry not refreshed for 30 minutes is marked deleted (and leaves the local copy),
        and removed from the KV store 30 minutes later."""
        t = self.tracker()
        self.successResultOf(t.check("t", "c", "a"))
        self.clock.advance(31 * 60)
        self.successResultOf(t.cleanup())
        self.assertTrue(self.kv.get("ha-tracker/t/c")["deleted_at"])
        self.assertEqual(t.elected(), [])
        self.clock.advance(31 * 60)
        self.successResultOf(t.cleanup())
        self.assertEqual(self.kv.keys(), [])

    def test_config_validation(self):
        """A failover timeout not above update timeout + jitter + 1s is refused, as in Mimir."""
        with self.assertRaises(ConfigError) as cm:
            HATrackerConfig(enabled=True, update_timeout_ms=15000, update_timeout_jitter_max_ms=5000,
                            failover_timeout_ms=20000).validate()
        self.assertIn("HA Tracker failover timeout (20s) must be at least 1s greater", str(cm.exception))
        HATrackerConfig(enabled=True).validate()

    def test_status_page(self):
        """/distributor/ha_tracker lists tenant, cluster, replica and the times until update
        and failover, as HTML and as JSON."""
        t = self.tracker(update_timeout_jitter_max_ms=0)
        self.successResultOf(t.check("t1", "prom", "a"))
        self.clock.advance(5)
        table = RouteTable(Tenancy.from_config(Config()), Instrument(self.clock, CollectorRegistry()))
        treq = StubTreq(table.mount(HATrackerHandlers(t)).resource())
        resp = self.successResultOf(treq.get("http://urdar/distributor/ha_tracker"))
        page = self.successResultOf(resp.text())
        self.assertEqual(resp.code, 200)
        self.assertIn("<h1>HA Tracker Status</h1>", page)
        self.assertIn("<td>t1</td>\n            <td>prom</td>\n            <td>a</td>\n"
                      "            <td>2023-11-14 22:13:20 +0000 UTC</td>\n"
                      "            <td>2023-11-14 22:13:20 +0000 UTC</td>\n"
                      "            <td>10s</td>\n            <td>25s</td>", page)
        resp = self.successResultOf(treq.get("http://urdar/distributor/ha_tracker",
                                             headers={"Accept": "application/json"}))
        doc = json.loads(self.successResultOf(resp.text()))
        self.assertEqual(doc["elected"][0]["replica"], "a")
        self.assertEqual(doc["elected"][0]["failoverDuration"], 25000)

    def test_go_duration(self):
        """Durations on the page read as Go prints them."""
        self.assertEqual([go_duration(ms) for ms in (0, 500, 14500, 62000, -3000, 3723000)],
                         ["0s", "500ms", "14.5s", "1m2s", "-3s", "1h2m3s"])


class HATrackerWiringTests(SynchronousTestCase):
    def build(self, *argv):
        from tests.handlers.test_ring import build
        m = build(self, "-target=all", *argv)
        self.successResultOf(m.start())
        self.addCleanup(m.stop)
        return m

    def test_target_all_dedupes_with_the_in_memory_store(self):
        """-target=all with -distributor.ha-tracker.enable and enable-for-all-users: the second
        replica's push is 202 and the page lists the election."""
        import cramjam
        from urdar.engine.remotewrite import encode_write_request
        m = self.build("-distributor.ha-tracker.enable", "-distributor.ha-tracker.enable-for-all-users")
        treq = StubTreq(m.resource())
        h = {"Content-Encoding": "snappy", "Content-Type": "application/x-protobuf",
             "X-Scope-OrgID": "t1"}

        def push(replica):
            data = bytes(cramjam.snappy.compress_raw(encode_write_request([series(replica, NOW_MS, 1.0)])))
            return self.successResultOf(treq.post("http://urdar/api/v1/push", data=data, headers=h)).code
        self.assertEqual((push("a"), push("b"), push("a")), (200, 202, 200))
        page = self.successResultOf(self.successResultOf(
            treq.get("http://urdar/distributor/ha_tracker")).text())
        self.assertIn("<td>t1</td>\n            <td>prom</td>\n            <td>a</td>", page)

    def test_disabled_by_default(self):
        """Without -distributor.ha-tracker.enable both replicas are stored and the page is empty."""
        m = self.build()
        self.assertIsNone(m.distributor.ha_tracker)
        resp = self.successResultOf(StubTreq(m.resource()).get("http://urdar/distributor/ha_tracker"))
        self.assertEqual(resp.code, 200)
        self.assertNotIn("<td>", self.successResultOf(resp.text()))

    def test_etcd_store_needs_endpoints(self):
        """-distributor.ha-tracker.store=etcd without endpoints fails start-up naming the flag,
        and a failover timeout too short for the update timeout is refused."""
        from tests.handlers.test_ring import build
        with self.assertRaises(ConfigError) as cm:
            build(self, "-target=all", "-distributor.ha-tracker.enable",
                  "-distributor.ha-tracker.store=etcd")
        self.assertIn("-distributor.ha-tracker.etcd.endpoints", str(cm.exception))
        with self.assertRaises(ConfigError):
            build(self, "-target=all", "-distributor.ha-tracker.enable",
                  "-distributor.ha-tracker.failover-timeout=10s")
