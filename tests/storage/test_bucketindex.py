"""The per-tenant bucket index: Mimir's JSON, gzip, and building it from the bucket."""
import gzip
import json

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from urdar.storage.bucketindex import (
    Block, BlockDeletionMark, Index, IndexCorrupted, IndexNotFound, block_from_meta, build_index,
    decode_index, delete_index, encode_index, read_index, write_index)
from urdar.storage.markers import mark_for_deletion
from urdar.storage.memory import MemoryBucket
from urdar.storage.prefixed import for_tenant

U1 = "01HZZZZZZZZZZZZZZZZZZZZZZ1"
U2 = "01J00000000000000000000002"
U3 = "01J00000000000000000000003"


def meta(ulid, mint, maxt, chunks=1, level=1, labels=None, hints=None):
    files = [{"rel_path": "chunks/%06d" % (i + 1), "size_bytes": 10} for i in range(chunks)]
    files += [{"rel_path": "index", "size_bytes": 5}, {"rel_path": "meta.json"}]
    return {"ulid": ulid, "minTime": mint, "maxTime": maxt, "version": 1,
            "stats": {"numSamples": 1, "numSeries": 1, "numChunks": 1},
            "compaction": {"level": level, "sources": [ulid], **({"hints": hints} if hints else {})},
            "thanos": {"labels": labels or {}, "source": "ingester", "files": files,
                       "downsample": {"resolution": 0}}}


class BucketIndexFormatTests(SynchronousTestCase):
    def test_json_matches_mimir_field_names_and_omitempty(self):
        """The index JSON uses Mimir's keys, drops empty optional ones, and is gzip'd."""
        idx = Index(2, [Block(U1, 0, 7200000, 1700000000, "1b6d", 2, source="ingester",
                              compaction_level=1),
                        Block(U2, 7200000, 14400000, 1700000100, compactor_shard_id="1_of_4",
                              out_of_order=True, labels={"__compactor_shard_id__": "1_of_4"})],
                    [BlockDeletionMark(U1, 1700000500)], 1700000900)
        data = encode_index(idx)
        obj = json.loads(gzip.decompress(data))
        self.assertEqual(obj, {
            "version": 2,
            "blocks": [
                {"block_id": U1, "min_time": 0, "max_time": 7200000, "segments_format": "1b6d",
                 "segments_num": 2, "uploaded_at": 1700000000, "source": "ingester",
                 "compaction_level": 1},
                {"block_id": U2, "min_time": 7200000, "max_time": 14400000,
                 "uploaded_at": 1700000100, "compactor_shard_id": "1_of_4", "out_of_order": True,
                 "labels": {"__compactor_shard_id__": "1_of_4"}}],
            "block_deletion_marks": [{"block_id": U1, "deletion_time": 1700000500}],
            "updated_at": 1700000900})
        self.assertEqual(decode_index(data), idx)
        self.assertEqual(gzip.GzipFile(fileobj=__import__("io").BytesIO(data)).read(),
                         gzip.decompress(data))

    def test_corrupt_index_is_reported(self):
        """Bytes that are not gzip'd index JSON raise IndexCorrupted."""
        for data in (b"", b"not gzip", gzip.compress(b"{"), gzip.compress(b"[]"),
                     gzip.compress(b'{"blocks":[{"block_id":"x","min_time":0,"max_time":1}]}'),
                     gzip.compress(b'{"blocks":[{"min_time":0}]}')):
            with self.assertRaises(IndexCorrupted):
                decode_index(data)

    def test_block_from_meta(self):
        """A meta.json becomes an entry: 1b6d segments, shard label, out-of-order hint."""
        b = block_from_meta(meta(U1, 10, 20, chunks=3, level=2,
                                 labels={"__compactor_shard_id__": "2_of_8"},
                                 hints=["from-out-of-order"]), 1700000000.9)
        self.assertEqual(b, Block(U1, 10, 20, 1700000000, "1b6d", 3, "2_of_8", "ingester", 2, True,
                                  {"__compactor_shard_id__": "2_of_8"}))
        odd = meta(U1, 10, 20)
        odd["thanos"]["files"][0]["rel_path"] = "chunks/000007"
        self.assertEqual(block_from_meta(odd, 0).segments_format, "")

    def test_within_is_half_open(self):
        """A block [0, 100) holds nothing at t=100 but something in [99, 200]."""
        b = Block(U1, 0, 100)
        self.assertTrue(b.within(99, 200))
        self.assertFalse(b.within(100, 200))
        self.assertTrue(b.within(-5, 0))


class BucketIndexStorageTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.root = MemoryBucket(self.clock)
        self.bucket = for_tenant(self.root, "team-a")

    def ok(self, d):
        return self.successResultOf(d)

    def put_block(self, ulid, mint, maxt, with_meta=True):
        self.ok(self.bucket.put(ulid + "/index", b"i"))
        self.ok(self.bucket.put(ulid + "/chunks/000001", b"c"))
        if with_meta:
            self.ok(self.bucket.put(ulid + "/meta.json", json.dumps(meta(ulid, mint, maxt)).encode()))

    def test_read_write_delete(self):
        """The index is stored at <tenant>/bucket-index.json.gz and read back equal."""
        self.failureResultOf(read_index(self.bucket), IndexNotFound)
        idx = Index(blocks=[Block(U1, 0, 1, 5)], updated_at=9)
        self.ok(write_index(self.bucket, idx))
        self.assertIn("team-a/bucket-index.json.gz", self.root.objects)
        self.assertEqual(self.ok(read_index(self.bucket)), idx)
        self.ok(delete_index(self.bucket))
        self.ok(delete_index(self.bucket))
        self.failureResultOf(read_index(self.bucket), IndexNotFound)

    def test_build_lists_complete_blocks_and_deletion_marks(self):
        """Blocks with meta.json are indexed (partial ones not), with global deletion marks."""
        self.put_block(U1, 0, 7200000)
        self.clock.advance(60)
        self.put_block(U2, 7200000, 14400000)
        self.put_block(U3, 0, 1, with_meta=False)            # still uploading
        self.ok(self.bucket.put("not-a-block/meta.json", b"{}"))
        self.ok(mark_for_deletion(self.bucket, U1, self.clock))
        self.clock.advance(5)
        idx = self.ok(build_index(self.bucket, self.clock))
        self.assertEqual(idx.block_ids(), [U1, U2])
        self.assertEqual(idx.blocks[0].uploaded_at, 1700000000)
        self.assertEqual(idx.blocks[1].uploaded_at, 1700000060)
        self.assertEqual(idx.blocks[1].segments_format, "1b6d")
        self.assertEqual(idx.deletion_marks(), {U1: 1700000060})
        self.assertEqual(idx.updated_at, 1700000065)
        self.assertEqual(idx.version, 2)

    def test_build_reuses_known_blocks_and_drops_deleted_ones(self):
        """A rebuild keeps entries of blocks still present without re-reading their meta.json,
        and forgets blocks that are gone."""
        self.put_block(U1, 0, 10)
        self.put_block(U2, 10, 20)
        old = self.ok(build_index(self.bucket, self.clock))
        self.ok(self.bucket.put(U1 + "/meta.json", b"not json any more"))
        for name in self.ok(self.bucket.list(U2 + "/", "")):
            self.ok(self.bucket.delete(name))
        idx = self.ok(build_index(self.bucket, self.clock, old))
        self.assertEqual([b.block_id for b in idx.blocks], [U1])
        self.assertEqual(idx.blocks[0], old.blocks[0])

    def test_broken_meta_leaves_the_block_out(self):
        """A meta.json that is not JSON does not stop the index, it only skips that block."""
        self.put_block(U1, 0, 10)
        self.ok(self.bucket.put(U2 + "/meta.json", b"{broken"))
        self.assertEqual(self.ok(build_index(self.bucket, self.clock)).block_ids(), [U1])
