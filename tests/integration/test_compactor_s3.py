"""The compactor against S3 (a signature-checking moto server on 127.0.0.1, the real reactor):
vertical and horizontal compaction keep every sample, marks, deletion and the bucket index land in
S3, a store answering 500 mid-upload is retried without a partial block or loss, and a corrupt
block stops only its own tenant. Skipped only when moto is not installed."""
import os
import shutil
import tempfile
import unittest

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.components.test_compactor import (
    BASE, H, SERIES_A, SERIES_B, SERIES_C, merged, samples, write_local_block)
from tests.support.s3server import MotoS3Server, moto_available
from urdar.app.config import Config
from urdar.components.compactor import Compactor, CompactorConfig, _block_files, thanos_section
from urdar.components.limits import Overrides
from urdar.engine.block import BlockReader, meta_json, read_meta
from urdar.engine.labels import decode_labels
from urdar.storage import bucketindex
from urdar.storage.faulty import FaultyBucket
from urdar.storage.prefixed import for_tenant
from urdar.storage.retrying import RetryingBucket
from urdar.storage.s3 import S3Bucket


def _reactor():
    from twisted.internet import reactor
    return reactor


@unittest.skipUnless(moto_available(), "moto[server] is not installed")
class CompactorS3Tests(TestCase):
    timeout = 180

    @classmethod
    def setUpClass(cls):
        cls.server = MotoS3Server().start()

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()

    def setUp(self):
        self.work = tempfile.mkdtemp(prefix="urdar-compactor-s3-")
        self.addCleanup(shutil.rmtree, self.work, True)
        self.s3 = S3Bucket(_reactor(), self.server.endpoint, self.server.new_bucket(),
                           access_key_id=self.server.access_key_id,
                           secret_access_key=self.server.secret_access_key, insecure=True)
        self.addCleanup(self.s3.close)
        self.faulty = FaultyBucket(self.s3)
        self.bucket = RetryingBucket(self.faulty, _reactor(), max_attempts=5, base_delay_s=0.05)
        self.compactor = Compactor(self.bucket, Overrides(Config().limits_defaults()), _reactor(),
                                   os.path.join(self.work, "scratch"),
                                   CompactorConfig(first_level_wait_ms=0, deletion_delay_ms=0),
                                   reactor=_reactor())
        self.n = 0

    @defer.inlineCallbacks
    def ship(self, tenant, mint, maxt, series):
        """Write a block locally and put it into S3 the way the shipper does (meta.json last)."""
        self.n += 1
        parent = os.path.join(self.work, "local%d" % self.n)
        os.makedirs(parent)
        d = os.path.join(parent, write_local_block(parent, mint, maxt, series))
        meta = read_meta(d)
        files = _block_files(d)
        meta["thanos"] = thanos_section(files, {}, source="receive")
        for rel, _ in files:
            if rel != "meta.json":
                yield self.s3.put("%s/%s/%s" % (tenant, meta["ulid"], rel), os.path.join(d, *rel.split("/")))
        yield self.s3.put("%s/%s/meta.json" % (tenant, meta["ulid"]), meta_json(meta))
        return meta["ulid"]

    @defer.inlineCallbacks
    def read(self, tenant, ulid):
        """{labels: [(t, v)]} of a block downloaded from S3 and opened with CRC checks."""
        self.n += 1
        d = os.path.join(self.work, "read%d" % self.n, ulid)
        for name in (yield self.s3.list("%s/%s/" % (tenant, ulid), delimiter="")):
            rel = name.split("/", 2)[2]
            if rel in ("meta.json", "index") or rel.startswith("chunks/"):
                path = os.path.join(d, *rel.split("/"))
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "wb") as f:
                    f.write((yield self.s3.get(name)))
        out = {}
        with BlockReader(d, verify=True) as r:
            for key, ts, vs in r.iter_series():
                out[tuple(decode_labels(key))] = list(zip(ts, vs))
        return out

    @defer.inlineCallbacks
    def ship_copies(self, tenant, series, n=2):
        out = []
        for _ in range(n):
            out.append((yield self.ship(tenant, BASE, BASE + 2 * H, series)))
        return out

    @defer.inlineCallbacks
    def read_all(self, tenant, ulids):
        out = []
        for u in ulids:
            out.append((yield self.read(tenant, u)))
        return out

    @defer.inlineCallbacks
    def live(self, tenant):
        """ULIDs with meta.json and no deletion mark, from S3 listings."""
        names = yield self.s3.list(tenant + "/", delimiter="")
        done = {n.split("/")[1] for n in names if n.endswith("/meta.json") and n.count("/") == 2}
        marked = {n.split("/")[1] for n in names if n.endswith("/deletion-mark.json") and n.count("/") == 2}
        return sorted(done - marked)

    @defer.inlineCallbacks
    def test_vertical_and_horizontal_compaction_in_s3(self):
        """Three copies of a 2h block (t1) and six adjacent 2h blocks (t2) become one block each
        with the same samples; sources are marked in S3, deleted by cleanup, and the bucket
        index lists exactly the new blocks."""
        series = {SERIES_A: samples(BASE, BASE + 2 * H), SERIES_B: samples(BASE, BASE + 2 * H, 60000)}
        copies = []
        for _ in range(2):
            copies.append((yield self.ship("t1", BASE, BASE + 2 * H, series)))
        extra = dict(series)
        extra[SERIES_C] = samples(BASE + H, BASE + 2 * H)
        copies.append((yield self.ship("t1", BASE, BASE + 2 * H, extra)))
        adjacent = []
        for i in range(6):
            lo = BASE + i * 2 * H
            adjacent.append((yield self.ship("t2", lo, lo + 2 * H, {SERIES_A: samples(lo, lo + 2 * H, offset=i)})))
        before1 = merged(*(yield self.read_all("t1", copies)))
        before2 = merged(*(yield self.read_all("t2", adjacent)))
        yield self.compactor.compact_all()
        self.assertEqual(self.compactor.errors, {})
        live1, live2 = (yield self.live("t1")), (yield self.live("t2"))
        self.assertEqual(len(live1), 1)
        self.assertEqual(len(live2), 1)
        self.assertEqual((yield self.read("t1", live1[0])), before1)
        self.assertEqual((yield self.read("t2", live2[0])), before2)
        for u in copies:
            self.assertTrue((yield self.s3.exists("t1/markers/%s-deletion-mark.json" % u)))
        yield self.compactor.cleanup_all()
        names = yield self.s3.list("t1/", delimiter="")
        self.assertEqual([n for n in names if any(u in n for u in copies)], [])
        index = yield bucketindex.read_index(for_tenant(self.s3, "t2"))
        self.assertEqual(index.block_ids(), live2)
        self.assertEqual(index.block_deletion_marks, [])

    @defer.inlineCallbacks
    def test_500s_mid_upload_are_retried_without_partial_blocks_or_loss(self):
        """S3 answering 500 to the new block's index and meta.json puts (twice each) is retried;
        exactly one new complete block appears and it holds every sample."""
        series = {SERIES_A: samples(BASE, BASE + 2 * H)}
        srcs = yield self.ship_copies("t1", series)
        before = merged(*(yield self.read_all("t1", srcs)))
        self.faulty.fail_matching(r"^t1/[0-9A-Z]{26}/(index|meta\.json)$", times=4)
        made = yield self.compactor.compact_tenant("t1")
        self.assertEqual(self.bucket.retries_total, 4)
        self.assertEqual((yield self.live("t1")), made)
        self.assertEqual((yield self.read("t1", made[0])), before)

    @defer.inlineCallbacks
    def test_persistent_failure_leaves_nothing_half_done(self):
        """When meta.json of the new block cannot be written at all, the sources stay unmarked,
        no object of the new block remains, and the next cycle compacts normally."""
        series = {SERIES_A: samples(BASE, BASE + 2 * H)}
        srcs = yield self.ship_copies("t1", series)
        self.faulty.fail_matching(r"^t1/[0-9A-Z]{26}/meta\.json$")
        yield self.compactor.compact_all()
        self.assertIn("t1", self.compactor.errors)
        self.assertEqual((yield self.live("t1")), sorted(srcs))
        dirs = {n.split("/")[1] for n in (yield self.s3.list("t1/", delimiter=""))}
        self.assertEqual(dirs - {"markers", "bucket-index.json.gz"}, set(srcs))
        self.faulty.clear()
        made = yield self.compactor.compact_tenant("t1")
        self.assertEqual((yield self.live("t1")), made)

    @defer.inlineCallbacks
    def test_corrupt_block_fails_only_its_tenant(self):
        """A chunk file damaged in S3 stops t1's compaction with an error naming the block; t2 is
        compacted in the same cycle."""
        series = {SERIES_A: samples(BASE, BASE + 2 * H)}
        bad = yield self.ship("t1", BASE, BASE + 2 * H, series)
        yield self.ship("t1", BASE, BASE + 2 * H, series)
        for _ in range(2):
            yield self.ship("t2", BASE, BASE + 2 * H, series)
        name = "t1/%s/chunks/000001" % bad
        data = bytearray((yield self.s3.get(name)))
        data[40] ^= 0xFF
        yield self.s3.put(name, bytes(data))
        yield self.compactor.compact_all()
        self.assertIn(bad, self.compactor.errors.get("t1", ""))
        self.assertEqual(len((yield self.live("t1"))), 2)
        self.assertEqual(len((yield self.live("t2"))), 1)
