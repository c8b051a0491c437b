"""The distributor in front of an in-process ingester: the one-pool-job push path (decode,
validate, rate limit and append together) behaves like the two-hop path."""
import errno

import cramjam
from prometheus_client import CollectorRegistry
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.support.fake_ingester import FakeTSDB
from tests.support.threads import InlineReactor, ManualThreadPool, inline_offload
from tests.support.tmp import mktemp
from urdar.app.config import Config
from urdar.components import errors as E
from urdar.components.distributor import Distributor, format_timestamp
from urdar.components.ingester import Ingester
from urdar.components.ingester_client import LocalIngesterClient
from urdar.components.limits import Overrides
from urdar.engine import faults
from urdar.engine.matchers import Matcher
from urdar.engine.remotewrite import encode_write_request
from urdar.net.offload import Offload

NOW_S = 1_700_000_000.0
NOW_MS = int(NOW_S * 1000)


def body(*series):
    return bytes(cramjam.snappy.compress_raw(encode_write_request(series)))


def up(job, *samples):
    return ([("__name__", "up"), ("job", job)], list(samples))


class LocalPushTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(NOW_S)
        self.registry = CollectorRegistry()
        FakeTSDB.instances = []

    def make(self, offload, pools=None, **limits):
        defaults = Config().limits_defaults()
        defaults.update(limits)
        overrides = Overrides(defaults)
        self.ingester = Ingester(mktemp(self), overrides, offload, self.clock, tsdb_factory=FakeTSDB,
                                 registry=self.registry)
        d = self.ingester.start()
        if pools:
            pools["compact"].run_all()     # WAL replay of existing tenants (none here)
        self.successResultOf(d)
        return Distributor(overrides, LocalIngesterClient(self.ingester), offload, self.clock,
                           registry=self.registry)

    def test_first_push_opens_then_later_pushes_take_one_pool_job(self):
        """The first push of a tenant opens its TSDB through the ingester; later ones decode and append in one decode-pool job."""
        pools = {}
        off = Offload(InlineReactor(), lambda workers, name: pools.setdefault(name, ManualThreadPool()))
        for name in ("decode", "append", "compact", "admin"):
            off.add_pool(name, 1, 10)
        off.start()
        dist = self.make(off, pools)
        d = dist.push("t1", body(up("a", (NOW_MS - 1000, 1.0))))
        pools["decode"].run_all()
        self.assertEqual(len(pools["append"].pending), 1)     # opening the TSDB, then the append
        pools["append"].run_all()
        self.successResultOf(d)
        d = dist.push("t1", body(up("a", (NOW_MS, 2.0))))
        self.assertEqual((len(pools["decode"].pending), len(pools["append"].pending)), (1, 0))
        self.assertEqual(self.ingester._inflight, 1)
        pools["decode"].run_all()
        self.assertEqual(pools["append"].pending, [])
        self.successResultOf(d)
        self.assertEqual(self.ingester._inflight, 0)
        db = FakeTSDB.instances[0]
        self.assertEqual(db.samples({"__name__": "up", "job": "a"}), [(NOW_MS - 1000, 1.0), (NOW_MS, 2.0)])

    def test_refusals_and_rate_limit_on_the_fast_path(self):
        """Out-of-order samples give the soft 400 error and an empty bucket 429, as on the two-hop path."""
        dist = self.make(inline_offload(), ingestion_rate=1.0, ingestion_burst_size=3)
        self.successResultOf(dist.push("t1", body(up("a", (NOW_MS, 1.0)))))
        f = self.failureResultOf(dist.push("t1", body(up("a", (NOW_MS - 5000, 1.0)))), E.ComponentError)
        self.assertTrue(f.value.soft)
        self.assertIn("err-mimir-sample-out-of-order", f.value.message)
        f = self.failureResultOf(dist.push("t1", body(up("a", (NOW_MS + 1, 1.0), (NOW_MS + 2, 1.0)))),
                                 E.ComponentError)
        self.assertEqual(f.value.cause, E.RATE_LIMITED)
        self.assertEqual(self.ingester._inflight, 0)
        self.assertEqual(self.registry.get_sample_value("cortex_ingester_ingested_samples_total",
                                                        {"user": "t1"}), 1)


class EnginePushTests(SynchronousTestCase):
    """The same path over the real engine TSDB."""

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(NOW_S)
        self.registry = CollectorRegistry()
        self.dir = mktemp(self)
        overrides = Overrides(Config().limits_defaults())
        self.ingester = Ingester(self.dir, overrides, inline_offload(), self.clock, registry=self.registry)
        self.successResultOf(self.ingester.start())
        self.addCleanup(lambda: self.successResultOf(self.ingester.stop()))
        self.addCleanup(faults.clear)
        self.dist = Distributor(overrides, LocalIngesterClient(self.ingester), inline_offload(), self.clock,
                                registry=self.registry)

    def stored(self):
        db = self.ingester.get_tsdb("t1")
        return [list(ts) for _, ts, _ in db.select([Matcher("=", "__name__", "up")])]

    def test_sample_before_year_one_is_a_400(self):
        """A sample timestamped before year 1 is refused with the too-old 400, never a 500 (which clients retry)."""
        self.successResultOf(self.dist.push("t1", body(up("a", (NOW_MS, 1.0)))))
        ancient = -62135596800001
        f = self.failureResultOf(self.dist.push("t1", body(up("b", (ancient, 1.0)))), E.ComponentError)
        self.assertEqual(f.value.cause, E.BAD_DATA)
        self.assertIn("The affected sample has timestamp 0000-12-31T23:59:59.999Z", f.value.message)

    def test_sample_older_than_the_head_allows_is_out_of_bounds(self):
        """A sample more than half a block range older than the tenant's newest is a 400 with Mimir's too-old id."""
        self.successResultOf(self.dist.push("t1", body(up("a", (NOW_MS, 1.0)))))
        old = NOW_MS - 3600 * 1000 - 1
        f = self.failureResultOf(self.dist.push("t1", body(up("b", (old, 1.0)))), E.ComponentError)
        self.assertEqual(f.value.cause, E.BAD_DATA)
        self.assertIn("the sample has been rejected because its timestamp is too old "
                      "(err-mimir-sample-timestamp-too-old). The affected sample has timestamp %s"
                      % format_timestamp(old), f.value.message)
        self.assertEqual(self.registry.get_sample_value(
            "cortex_discarded_samples_total", {"reason": "sample-out-of-bounds", "user": "t1"}), 1)
        self.assertEqual(self.stored(), [[NOW_MS]])

    def test_disk_full_fails_the_push_until_it_frees_and_then_stores_it(self):
        """While the WAL cannot be written pushes fail with a 5xx cause; the retry after the disk frees up is stored."""
        self.successResultOf(self.dist.push("t1", body(up("a", (NOW_MS, 1.0)))))
        faults.inject("wal_write", errno.ENOSPC, under=self.dir)
        for _ in range(2):
            f = self.failureResultOf(self.dist.push("t1", body(up("a", (NOW_MS + 1000, 2.0)))), E.ComponentError)
            self.assertEqual(f.value.cause, E.INTERNAL)
            self.assertIn("No space left on device", f.value.message)
            self.assertNotIn(self.dir, f.value.message)
        faults.clear()
        self.successResultOf(self.dist.push("t1", body(up("a", (NOW_MS + 1000, 2.0)))))
        self.assertEqual(self.stored(), [[NOW_MS, NOW_MS + 1000]])
        self.assertEqual(self.ingester._inflight, 0)

    def test_one_ancient_sample_makes_one_head_compaction_block(self):
        """A new tenant's samples at t=1 and now cost one block in head compaction, not one per empty 2h range since 1970."""
        self.successResultOf(self.dist.push("t1", body(up("old", (1, 1.0)), up("a", (NOW_MS - 60000, 1.0), (NOW_MS, 2.0)))))
        self.assertEqual(self.successResultOf(self.ingester.compact_heads()), 1)
        db = self.ingester.get_tsdb("t1")
        self.assertEqual([(b.meta["minTime"], b.meta["maxTime"]) for b in db.blocks()], [(0, 2 * 3600 * 1000)])
        self.assertEqual(db.head.mint, NOW_MS - 60000)
        self.assertEqual(self.successResultOf(self.ingester.compact_heads()), 0)
        self.assertEqual(sorted(self.stored()), [[1], [NOW_MS - 60000, NOW_MS]])
