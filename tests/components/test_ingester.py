"""The ingester component: per-tenant TSDBs, replay at start, head compaction, flush and stop."""
import os
from array import array

from prometheus_client import CollectorRegistry
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.support.tmp import mktemp
from tests.support.fake_ingester import FakeTSDB
from tests.support.threads import inline_offload
from urdar.app.config import Config
from urdar.components import errors as E
from urdar.components import ingester_client as IC
from urdar.components.ingester import Ingester, IngesterConfig
from urdar.components.limits import Overrides
from urdar.engine import outcomes as O
from urdar.engine.labels import encode_labels, hash_key


def batch(*series):
    """WriteBatch from (labels dict, [(t, v)]) pairs."""
    keys, koff, hashes, soff, ts, vals = b"", array("Q", [0]), array("Q"), array("Q", [0]), array("q"), array("d")
    for labels, samples in series:
        k = encode_labels(sorted(labels.items()))
        keys += k
        koff.append(len(keys))
        hashes.append(hash_key(k))
        for t, v in samples:
            ts.append(t)
            vals.append(v)
        soff.append(len(ts))
    return IC.WriteBatch(keys, koff, hashes, soff, ts, vals)


class IngesterTests(SynchronousTestCase):
    def setUp(self):
        self.dir = mktemp(self)
        self.clock = Clock()
        self.offload = inline_offload()
        self.registry = CollectorRegistry()
        FakeTSDB.instances = []
        self.overrides = Overrides(Config().limits_defaults())

    def make(self, **kw):
        ing = Ingester(self.dir, self.overrides, self.offload, self.clock, IngesterConfig(**kw),
                       tsdb_factory=FakeTSDB, registry=self.registry)
        self.successResultOf(ing.start())
        return ing

    def test_push_opens_tenant_tsdb_lazily(self):
        """A tenant's TSDB is opened under <dir>/<tenant> on its first push, once."""
        ing = self.make()
        self.assertEqual(FakeTSDB.instances, [])
        res = self.successResultOf(ing.push("t1", batch(({"__name__": "up"}, [(1, 1.0), (2, 2.0)]))))
        self.assertEqual((res.accepted, res.new_series, list(res.outcomes)), (2, 1, [0, 0]))
        self.successResultOf(ing.push("t1", batch(({"__name__": "up"}, [(3, 1.0)]))))
        self.assertEqual([db.dir for db in FakeTSDB.instances], [os.path.join(self.dir, "t1")])
        self.assertEqual(ing.memory_series(), 1)
        self.assertEqual(self.registry.get_sample_value("cortex_ingester_memory_series"), 1)
        self.assertEqual(self.registry.get_sample_value("cortex_ingester_ingested_samples_total",
                                                        {"user": "t1"}), 3)

    def test_limits_passed_to_tsdb(self):
        """Block range, retention, OOO window and the series limit reach the tenant's TSDB."""
        self.overrides.set_overrides({"t1": {"max_global_series_per_user": 7,
                                             "out_of_order_time_window": 600000}})
        ing = self.make(block_range_ms=3600000, retention_ms=7200000)
        self.successResultOf(ing.push("t1", batch(({"__name__": "up"}, [(1, 1.0)]))))
        self.assertEqual(FakeTSDB.instances[0].options, {
            "block_range_ms": 3600000, "ooo_window_ms": 600000, "retention_ms": 7200000, "max_series": 7})

    def test_existing_tenants_replayed_before_ready(self):
        """Tenant directories on disk are opened (WAL replay) before the ingester is ready."""
        for t in ("a", "b", "not a tenant"):
            os.makedirs(os.path.join(self.dir, t))
        ing = Ingester(self.dir, self.overrides, self.offload, self.clock, tsdb_factory=FakeTSDB)
        self.assertFalse(ing.ready())
        self.successResultOf(ing.start())
        self.assertTrue(ing.ready())
        self.assertEqual(ing.tenants(), ["a", "b"])

    def test_refuses_pushes_unless_running(self):
        """Before start and after stop, pushes fail as unavailable (503)."""
        ing = Ingester(self.dir, self.overrides, self.offload, self.clock, tsdb_factory=FakeTSDB)
        f = self.failureResultOf(ing.push("t", batch(({"__name__": "up"}, [(1, 1.0)]))), E.ComponentError)
        self.assertEqual(f.value.cause, E.UNAVAILABLE)
        self.successResultOf(ing.start())
        self.successResultOf(ing.stop())
        f = self.failureResultOf(ing.push("t", batch(({"__name__": "up"}, [(1, 1.0)]))), E.ComponentError)
        self.assertEqual(f.value.cause, E.UNAVAILABLE)

    def test_stop_closes_every_tsdb(self):
        """Stopping closes every tenant's TSDB (WAL flushed) and is idempotent."""
        ing = self.make()
        for t in ("a", "b"):
            self.successResultOf(ing.push(t, batch(({"__name__": "up"}, [(1, 1.0)]))))
        self.successResultOf(ing.stop())
        self.assertTrue(all(db.closed for db in FakeTSDB.instances))
        self.assertEqual(ing.state, "Terminated")
        self.successResultOf(ing.stop())

    def test_head_compaction_runs_on_interval(self):
        """Every head-compaction interval each tenant's head is checked for complete blocks."""
        ing = self.make(head_compaction_interval_ms=60000)
        self.successResultOf(ing.push("a", batch(({"__name__": "up"}, [(1, 1.0)]))))
        db = FakeTSDB.instances[0]
        self.clock.advance(59)
        self.assertEqual(db.cuts, [])
        self.clock.advance(1)
        self.assertEqual(db.cuts, [False])
        self.clock.advance(60)
        self.assertEqual(db.cuts, [False, False])

    def test_flush_selected_tenants(self):
        """flush(tenants) force-cuts only those tenants' heads; flush() all of them."""
        ing = self.make()
        for t in ("a", "b"):
            self.successResultOf(ing.push(t, batch(({"__name__": "up"}, [(1, 1.0)]))))
        made = self.successResultOf(ing.flush(["b"]))
        self.assertEqual(made, ["BLOCK1"])
        self.assertEqual([db.cuts for db in FakeTSDB.instances], [[], [True]])
        self.successResultOf(ing.flush())
        self.assertEqual([db.cuts for db in FakeTSDB.instances], [[True], [True, True]])

    def test_skip_and_metadata(self):
        """Skipped series are not stored; metadata reaches the head."""
        ing = self.make()
        b = batch(({"__name__": "a"}, [(1, 1.0)]), ({"__name__": "b"}, [(1, 1.0)]))
        b.skip = b"\x01\x00"
        b.metadata = [("b", 1, "help", "")]
        res = self.successResultOf(ing.push("t", b))
        self.assertEqual(list(res.outcomes), [O.SKIPPED, O.OK])
        self.assertEqual(FakeTSDB.instances[0].head.metadata, {"b": (1, "help", "")})

    def test_invalid_tenant_refused(self):
        """A tenant ID that is not a safe directory name never reaches the disk."""
        ing = self.make()
        self.failureResultOf(ing.push("../x", batch(({"__name__": "a"}, [(1, 1.0)]))))
        self.assertEqual(FakeTSDB.instances, [])


class RealEngineTests(SynchronousTestCase):
    def test_restart_replays_wal(self):
        """With the real engine, samples pushed before stop() are selectable after a new start()."""
        from urdar.engine.matchers import Matcher
        d = mktemp(self)
        overrides = Overrides(Config().limits_defaults())
        ing = Ingester(d, overrides, inline_offload(), Clock())
        self.successResultOf(ing.start())
        self.successResultOf(ing.push("t", batch(({"__name__": "up", "job": "x"}, [(1000, 1.5), (2000, 2.5)]))))
        self.successResultOf(ing.stop())
        ing2 = Ingester(d, overrides, inline_offload(), Clock())
        self.successResultOf(ing2.start())
        got = ing2.get_tsdb("t").select([Matcher("=", "job", "x")])
        self.assertEqual([(list(ts), list(vs)) for _, ts, vs in got], [([1000, 2000], [1.5, 2.5])])
        self.successResultOf(ing2.stop())
