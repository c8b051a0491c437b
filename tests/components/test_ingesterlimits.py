"""Per-ingester series limits from the global ones (components/ingesterlimits.py, Mimir's
ingester limiter): the global limit times RF over the ingesters (per zone with zone awareness,
at most the tenant's shard), unlimited with no healthy ingester in view; and an ingester on a real
TSDB enforcing it as the ring changes."""
import random

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.components.test_ingester import batch
from tests.net.test_ring import member, ring_of
from tests.support.threads import inline_offload
from tests.support.tmp import mktemp
from urdar.app.config import Config
from urdar.components.ingester import Ingester
from urdar.components.ingesterlimits import SeriesLimiter
from urdar.components.limits import Overrides
from urdar.engine import outcomes as O
from urdar.net.ring import JOINING, generate_tokens


def members(n, zones=0, rng=None):
    rng = rng or random.Random(1)
    taken, out = set(), {}
    for k in range(n):
        toks = generate_tokens(8, taken, rng)
        taken.update(toks)
        out["ing-%d" % k] = member("10.0.0.%d:1" % k, tokens=toks,
                                   zone=("zone-%d" % (k % zones)) if zones else "")
    return out


class SeriesLimiterTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)

    def limiter(self, ms, zone="", rf=3, zone_awareness=False, shard=0):
        ring = ring_of(ms, clock=self.clock, rf=rf, zone_awareness=zone_awareness)
        return SeriesLimiter(ring, zone, self.clock, lambda tenant: shard)

    def test_global_times_rf_over_ingesters(self):
        self.assertEqual(self.limiter(members(3)).local("t", 900), 900)          # 900*3/3
        self.assertEqual(self.limiter(members(6)).local("t", 900), 450)          # 900*3/6
        self.assertEqual(self.limiter(members(10)).local("t", 1000), 300)        # 1000*3/10
        self.assertEqual(self.limiter(members(6), rf=1).local("t", 900), 150)
        self.assertEqual(self.limiter(members(6)).local("t", 0), 0, "0 stays unlimited")

    def test_rf_capped_at_the_copies_a_series_can_have(self):
        self.assertEqual(self.limiter(members(1)).local("t", 900), 900)
        self.assertEqual(self.limiter(members(2)).local("t", 900), 900)          # 900*2/2

    def test_shuffle_shard_bounds_the_ingesters(self):
        self.assertEqual(self.limiter(members(12), shard=3).local("t", 900), 900)   # 900*3/3
        self.assertEqual(self.limiter(members(12), shard=6).local("t", 900), 450)

    def test_zones(self):
        ms = members(9, zones=3)
        lim = self.limiter(ms, zone="zone-0", zone_awareness=True)
        self.assertEqual(lim.local("t", 900), 300)          # (900*3/3 zones)/3 in the zone
        ms["ing-0"]["timestamp"] = 0                         # zone-0 loses one: 2 healthy there
        self.assertEqual(self.limiter(ms, zone="zone-0", zone_awareness=True).local("t", 900), 450)
        lim = self.limiter(members(9, zones=3), zone="zone-1", zone_awareness=True, shard=3)
        self.assertEqual(lim.local("t", 900), 900)          # ceil(3/3) = 1 per zone

    def test_only_healthy_active_ingesters_count(self):
        ms = members(6)
        ms["ing-0"]["state"] = JOINING
        ms["ing-1"]["timestamp"] = 0
        self.assertEqual(self.limiter(ms).local("t", 800), 600)                 # 800*3/4
        for m in ms.values():
            m["state"] = JOINING
        self.assertEqual(self.limiter(ms).local("t", 800), 0, "nobody healthy: no limit")


class IngesterLocalLimitTests(SynchronousTestCase):
    def test_head_limit_follows_the_ring(self):
        """An ingester on a real TSDB, the tenant's global limit 30, RF 3: with six ingesters
        it keeps 15 series, once three of them are gone 30."""
        clock = Clock()
        clock.advance(1000)
        overrides = Overrides(Config().limits_defaults())
        overrides.set_overrides({"t": {"max_global_series_per_user": 30}})
        ms = members(6)
        ring = ring_of(ms, clock=clock)
        ing = Ingester(mktemp(self), overrides, inline_offload(), clock)
        ing.series_limit = SeriesLimiter(ring, "", clock).local
        self.successResultOf(ing.start())
        self.addCleanup(lambda: self.successResultOf(ing.stop()))

        def push(first, n):
            return self.successResultOf(ing.push("t", batch(*[
                ({"__name__": "m", "i": str(first + k)}, [(1000, 1.0)]) for k in range(n)])))
        res = push(0, 20)
        self.assertEqual((res.accepted, bytes(res.outcomes).count(O.SERIES_LIMIT)), (15, 5))
        for k in range(3):
            del ms["ing-%d" % k]
        ring.set_desc({"ingesters": ms})
        clock.advance(2)        # past the limiter's recount interval
        res = push(20, 20)
        self.assertEqual((res.accepted, bytes(res.outcomes).count(O.SERIES_LIMIT)), (15, 5))
        self.assertEqual(ing.memory_series(), 30)


class WholeAppSeriesLimitTests(SynchronousTestCase):
    """-target=all in one process (in-memory ring, one ingester): the global limits apply as
    they are, and a push over -ingester.max-global-series-per-metric is Mimir's 400."""

    def test_per_metric_limit_over_http(self):
        import cramjam
        from treq.testing import StubTreq
        from tests.support.app import started_modules
        from urdar.engine.remotewrite import encode_write_request
        clock = Clock()
        clock.advance(1_700_000_000)
        m = started_modules(self, clock, {"limits.max_global_series_per_metric": 2},
                            (("decode", 1, 100), ("append", 1, 100), ("compact", 1, 10),
                             ("admin", 1, 10), ("query", 1, 100)))
        self.addCleanup(lambda: self.successResultOf(m.stop()))
        treq = StubTreq(m.resource())
        t = 1_700_000_000_000
        wr = encode_write_request([([("__name__", name), ("i", str(k))], [(t, 1.0)])
                                   for name, k in (("a", 1), ("a", 2), ("a", 3), ("b", 1))])
        resp = self.successResultOf(treq.post(
            "http://urdar/api/v1/push", data=cramjam.snappy.compress_raw(wr).read(),
            headers={"X-Scope-OrgID": "t", "Content-Encoding": "snappy",
                     "Content-Type": "application/x-protobuf"}))
        text = self.successResultOf(resp.text())
        self.assertEqual(resp.code, 400, text)
        self.assertIn("per-metric series limit of 2 exceeded (err-mimir-max-series-per-metric)", text)
        self.assertIn("-ingester.max-global-series-per-metric", text)
        self.assertEqual(m.ingester.memory_series(), 3)
