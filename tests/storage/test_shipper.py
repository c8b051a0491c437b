"""The shipper: local blocks reach the bucket whole (meta.json last), once, and survive failures."""
import json
import os

from prometheus_client import CollectorRegistry
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.components.test_ingester import batch
from tests.support.threads import inline_offload
from tests.support.tmp import mktemp
from urdar.app.config import Config
from urdar.components.ingester import Ingester, IngesterConfig, default_tsdb_factory
from urdar.components.limits import Overrides
from urdar.engine.block import new_ulid, write_block
from urdar.engine.labels import encode_labels
from urdar.engine.xorchunk import XORChunk
from urdar.storage.bucketindex import build_index
from urdar.storage.faulty import FaultyBucket
from urdar.storage.memory import MemoryBucket
from urdar.storage.prefixed import for_tenant
from urdar.storage.shipper import SHIPPER_FILE, Shipper, read_shipped

H = 3600 * 1000


def xor_chunk(samples):
    c = XORChunk()
    for t, v in samples:
        c.append(t, v)
    return bytes(c.bytes())


def make_block(parent, mint=0, maxt=2 * H, n_series=3, ulid=None):
    series = []
    for i in range(n_series):
        samples = [(t, float(i * 1000 + t // 15000)) for t in range(mint, maxt, 15000)]
        series.append((encode_labels([("__name__", "m"), ("i", str(i))]),
                       [(samples[0][0], samples[-1][0], 1, xor_chunk(samples))]))
    return write_block(parent, mint, maxt, series, ulid=ulid or new_ulid(mint + 1))


class ShipperTests(SynchronousTestCase):
    def setUp(self):
        self.dir = mktemp(self)
        os.makedirs(self.dir, exist_ok=True)
        self.clock = Clock()
        self.mem = MemoryBucket(self.clock)
        self.faulty = FaultyBucket(self.mem)
        self.bucket = for_tenant(self.faulty, "t1")

    def shipper(self):
        return Shipper(self.dir, self.bucket, self.clock)

    def visible_blocks(self):
        index = self.successResultOf(build_index(for_tenant(self.mem, "t1"), self.clock))
        return index.block_ids()

    def test_sync_uploads_every_file_and_meta_json_last(self):
        """A local block appears under <tenant>/<ULID>/ with its chunks, index and meta.json, meta.json uploaded last."""
        ulid = make_block(self.dir)
        made = self.successResultOf(self.shipper().sync())
        self.assertEqual(made, [ulid])
        puts = [name for method, name in self.faulty.calls if method == "put"]
        self.assertEqual(puts, ["t1/%s/chunks/000001" % ulid, "t1/%s/index" % ulid,
                                "t1/%s/meta.json" % ulid])
        for rel in ("chunks/000001", "index"):
            with open(os.path.join(self.dir, ulid, *rel.split("/")), "rb") as f:
                self.assertEqual(self.mem.objects["t1/%s/%s" % (ulid, rel)], f.read())
        self.assertEqual(self.visible_blocks(), [ulid])

    def test_uploaded_meta_json_has_thanos_section(self):
        """The uploaded meta.json carries labels {}, resolution 0, source ingester and the file sizes."""
        ulid = make_block(self.dir)
        self.successResultOf(self.shipper().sync())
        meta = json.loads(self.mem.objects["t1/%s/meta.json" % ulid])
        thanos = meta["thanos"]
        self.assertEqual(thanos["labels"], {})
        self.assertEqual(thanos["downsample"], {"resolution": 0})
        self.assertEqual(thanos["source"], "ingester")
        sizes = {f["rel_path"]: f.get("size_bytes") for f in thanos["files"]}
        self.assertEqual(sizes["index"], os.path.getsize(os.path.join(self.dir, ulid, "index")))
        self.assertEqual(sizes["chunks/000001"],
                         os.path.getsize(os.path.join(self.dir, ulid, "chunks", "000001")))
        self.assertIn("meta.json", sizes)
        self.assertEqual((meta["ulid"], meta["minTime"], meta["maxTime"]), (ulid, 0, 2 * H))
        with open(os.path.join(self.dir, ulid, "meta.json")) as f:
            self.assertNotIn("thanos", json.load(f))

    def test_shipped_blocks_are_remembered_across_restarts(self):
        """A block is uploaded once: later rounds and a new shipper on the same directory skip it."""
        ulid = make_block(self.dir)
        self.successResultOf(self.shipper().sync())
        self.assertEqual(read_shipped(self.dir), {ulid})
        with open(os.path.join(self.dir, SHIPPER_FILE)) as f:
            self.assertEqual(json.load(f), {"version": 1, "uploaded": [ulid]})
        n = len(self.faulty.calls)
        s = self.shipper()
        self.assertEqual(self.successResultOf(s.sync()), [])
        self.assertEqual(self.successResultOf(s.sync()), [])
        self.assertEqual([c for c in self.faulty.calls[n:] if c[0] == "put"], [])
        ulid2 = make_block(self.dir, 2 * H, 4 * H)
        self.assertEqual(self.successResultOf(s.sync()), [ulid2])

    def test_failed_upload_leaves_no_visible_block_and_is_retried(self):
        """An upload failing mid-block leaves no visible block; the next round uploads all of it."""
        ulid = make_block(self.dir)
        self.faulty.fail_matching(r"/index$", times=1)
        s = self.shipper()
        self.failureResultOf(s.sync())
        self.assertNotIn("t1/%s/meta.json" % ulid, self.mem.objects)
        self.assertEqual(self.visible_blocks(), [])
        self.assertEqual(read_shipped(self.dir), set())
        self.assertEqual(self.successResultOf(s.sync()), [ulid])
        self.assertEqual(self.visible_blocks(), [ulid])
        self.assertEqual(s.failures, 1)

    def test_failed_meta_json_put_keeps_block_invisible(self):
        """When only meta.json fails the block stays invisible and unrecorded until a retry succeeds."""
        ulid = make_block(self.dir)
        self.faulty.fail_matching(r"meta\.json$", times=2)
        s = self.shipper()
        self.failureResultOf(s.sync())
        self.failureResultOf(s.sync())
        self.assertEqual(self.visible_blocks(), [])
        self.assertFalse(s.is_shipped(ulid))
        self.successResultOf(s.sync())
        self.assertTrue(s.is_shipped(ulid))
        self.assertEqual(self.visible_blocks(), [ulid])

    def test_failure_in_one_block_keeps_earlier_blocks_shipped(self):
        """Blocks uploaded before a failure stay recorded; the failed one and later ones follow next round."""
        a = make_block(self.dir, 0, 2 * H)
        b = make_block(self.dir, 2 * H, 4 * H)
        c = make_block(self.dir, 4 * H, 6 * H)
        self.faulty.fail_matching(b + r"/chunks/", times=1)
        s = self.shipper()
        self.failureResultOf(s.sync())
        self.assertEqual(read_shipped(self.dir), {a})
        self.assertEqual(self.successResultOf(s.sync()), [b, c])
        self.assertEqual(sorted(self.visible_blocks()), sorted([a, b, c]))

    def test_partial_local_blocks_are_not_shipped(self):
        """Directories still being written (no meta.json, or a .tmp-for-creation name) are left alone."""
        os.makedirs(os.path.join(self.dir, new_ulid(5) + ".tmp-for-creation", "chunks"))
        os.makedirs(os.path.join(self.dir, new_ulid(6), "chunks"))
        self.assertEqual(self.successResultOf(self.shipper().sync()), [])
        self.assertEqual(self.mem.objects, {})

    def test_concurrent_syncs_share_one_round(self):
        """A sync requested while one runs waits for it instead of uploading twice."""
        ulid = make_block(self.dir)
        self.faulty.pause("put")
        s = self.shipper()
        d1, d2 = s.sync(), s.sync()
        self.assertNoResult(d1)
        self.assertNoResult(d2)
        self.faulty.resume("put")
        self.assertEqual(self.successResultOf(d1), [ulid])
        self.assertEqual(self.successResultOf(d2), [ulid])
        self.assertEqual(len([c for c in self.faulty.calls if c == ("put", "t1/%s/index" % ulid)]), 1)


class IngesterShippingTests(SynchronousTestCase):
    def setUp(self):
        self.dir = mktemp(self)
        self.clock = Clock()
        self.offload = inline_offload()
        self.mem = MemoryBucket(self.clock)
        self.faulty = FaultyBucket(self.mem)
        self.overrides = Overrides(Config().limits_defaults())

    def make(self, **kw):
        ing = Ingester(self.dir, self.overrides, self.offload, self.clock, IngesterConfig(**kw),
                       tsdb_factory=default_tsdb_factory, registry=CollectorRegistry(),
                       bucket=self.faulty)
        self.successResultOf(ing.start())
        self.addCleanup(lambda: self.successResultOf(ing.stop()))
        return ing

    def push_hours(self, ing, hours, start=0):
        samples = [(t, float(t)) for t in range(start, start + hours * H, 15 * 60 * 1000)]
        self.successResultOf(ing.push("t1", batch(({"__name__": "up", "job": "a"}, samples))))

    def shipped(self):
        return sorted(n.split("/")[1] for n in self.mem.objects if n.endswith("/meta.json"))

    def test_cut_block_is_shipped_on_the_interval(self):
        """A block cut from the head is in the bucket after the next ship interval, not before."""
        ing = self.make(ship_interval_ms=60_000, head_compaction_interval_ms=30_000)
        self.push_hours(ing, 4)
        self.clock.advance(30)
        local = [b.meta["ulid"] for b in ing.get_tsdb("t1").blocks()]
        self.assertEqual(len(local), 1)
        self.assertEqual(self.shipped(), [])
        self.clock.advance(30)
        self.assertEqual(self.shipped(), local)

    def test_flush_cuts_and_ships_before_answering(self):
        """flush() fires only once every block it cut is in the bucket."""
        ing = self.make()
        self.push_hours(ing, 1)
        self.faulty.pause("put")
        d = ing.flush()
        self.assertNoResult(d)
        self.faulty.resume("put")
        made = self.successResultOf(d)
        self.assertEqual(len(made), 1)
        self.assertEqual(self.shipped(), made)

    def test_flush_reports_failed_shipping_and_keeps_the_block(self):
        """A failed upload fails flush(); the block stays local and is shipped by the next round."""
        ing = self.make(ship_interval_ms=60_000)
        self.push_hours(ing, 1)
        self.faulty.fail_matching(r"/index$", times=1)
        self.failureResultOf(ing.flush())
        self.assertEqual(self.shipped(), [])
        local = [b.meta["ulid"] for b in ing.get_tsdb("t1").blocks()]
        self.assertEqual(len(local), 1)
        self.clock.advance(60)
        self.assertEqual(self.shipped(), local)

    def test_local_blocks_deleted_only_when_shipped_and_past_retention(self):
        """Local blocks outlive the retention period while unshipped and go once shipped and old."""
        ing = self.make(ship_interval_ms=60_000, retention_ms=13 * H)
        self.push_hours(ing, 1)
        self.faulty.fail_matching(r"meta\.json$")
        self.failureResultOf(ing.flush())
        db = ing.get_tsdb("t1")
        self.clock.advance(20 * 3600)
        self.assertEqual(len(db.blocks()), 1)
        self.faulty.clear()
        self.clock.advance(60)
        self.assertEqual(len(self.shipped()), 1)
        self.assertEqual(db.blocks(), [])
        self.assertEqual(os.listdir(os.path.join(self.dir, "t1")).count(self.shipped()[0]), 0)

    def test_recent_shipped_blocks_are_kept_locally(self):
        """A shipped block younger than the retention period stays on local disk."""
        ing = self.make(ship_interval_ms=60_000, retention_ms=13 * H)
        self.clock.advance(3 * 3600)
        self.push_hours(ing, 1, start=2 * H)
        self.successResultOf(ing.flush())
        self.clock.advance(60)
        self.assertEqual(len(self.shipped()), 1)
        self.assertEqual(len(ing.get_tsdb("t1").blocks()), 1)
