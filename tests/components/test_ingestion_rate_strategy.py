"""-distributor.ingestion-rate-limit-strategy: global divides each tenant's ingestion rate by the
healthy distributors of the distributor ring (the burst stays whole, as in Mimir); local keeps
the whole rate in every distributor."""
from twisted.trial.unittest import SynchronousTestCase

from tests.handlers.test_distributor import NOW_MS, PushFixture, body
from urdar.net.kv import MemoryKV
from urdar.net.ring import HealthyCount, Ring

KEY = "collectors/distributor"


class GlobalStrategyTests(SynchronousTestCase):
    def setUp(self):
        PushFixture().setup(self, ingestion_rate=300.0, ingestion_burst_size=600)
        self.kv = MemoryKV(self.clock)
        now = int(self.clock.seconds())
        members = {"d%d" % i: {"addr": "10.0.0.%d:8080" % i, "state": "ACTIVE", "timestamp": now,
                               "tokens": [i]} for i in range(3)}
        members["d3"] = {"addr": "10.0.0.3:8080", "state": "ACTIVE", "timestamp": now - 120,
                         "tokens": [3]}            # heartbeat past the 60s timeout: unhealthy
        members["d4"] = {"addr": "10.0.0.4:8080", "state": "LEAVING", "timestamp": now,
                         "tokens": [4]}
        self.kv.cas(KEY, lambda _: {"ingesters": members})
        self.ring = Ring(self.kv, KEY, self.clock, replication_factor=1, name="distributor")
        self.ring.start()
        self.addCleanup(self.ring.stop)

    def push(self, n, t0):
        h = {"Content-Encoding": "snappy", "Content-Type": "application/x-protobuf",
             "X-Prometheus-Remote-Write-Version": "0.1.0", "X-Scope-OrgID": "t1"}
        data = body([([("__name__", "m"), ("i", str(i))], [(t0, 1.0)]) for i in range(n)])
        resp = self.successResultOf(self.treq.post("http://urdar/api/v1/push", data=data, headers=h))
        return resp.code

    def test_rate_divided_by_healthy_distributors(self):
        """With 3 healthy distributors (of 5: one silent, one LEAVING) a tenant limited to
        300/s gets 100/s here: after the 600 burst, 1s refills 100 samples, not 300."""
        self.distributor.healthy_distributors = HealthyCount(self.ring, self.clock)
        self.assertEqual(self.distributor.tenant_rate(self.overrides.for_tenant("t1")), 100.0)
        self.assertEqual(self.push(600, NOW_MS), 200)
        self.clock.advance(1)
        self.assertEqual(self.push(150, NOW_MS + 1000), 429)
        self.assertEqual(self.push(100, NOW_MS + 1000), 200)

    def test_local_keeps_the_whole_rate(self):
        """The local strategy refills 300 samples per second whatever the ring says."""
        self.distributor.healthy_distributors = None
        self.assertEqual(self.push(600, NOW_MS), 200)
        self.clock.advance(1)
        self.assertEqual(self.push(300, NOW_MS + 1000), 200)

    def test_count_follows_the_ring_and_is_cached(self):
        """The count is re-read from the ring at most once a second, and a ring with no healthy
        distributor leaves the tenant's whole rate."""
        count = HealthyCount(self.ring, self.clock)
        self.assertEqual(count(), 3)
        self.kv.cas(KEY, lambda d: {"ingesters": {"d0": d["ingesters"]["d0"]}})
        self.assertEqual(count(), 3)
        self.clock.advance(1)
        self.assertEqual(count(), 1)
        self.clock.advance(120)
        self.assertEqual(count(), 0)
        self.distributor.healthy_distributors = count
        self.assertEqual(self.distributor.tenant_rate(self.overrides.for_tenant("t1")), 300.0)


class StrategyWiringTests(SynchronousTestCase):
    def test_flag_picks_the_strategy(self):
        """-target=all divides by its own distributor ring (1 healthy: the whole rate) by
        default; -distributor.ingestion-rate-limit-strategy=local turns the division off."""
        from tests.handlers.test_ring import build
        m = build(self, "-target=all")
        self.successResultOf(m.start())
        self.addCleanup(m.stop)
        self.assertEqual(m.distributor.healthy_distributors(), 1)
        m2 = build(self, "-target=all", "-distributor.ingestion-rate-limit-strategy=local")
        self.assertIsNone(m2.distributor.healthy_distributors)
