"""Query shards (engine/sharding.py): the `__query_shard__` matcher's syntax, and every series in
exactly one shard, the same one whether it is read from the head or from a block."""
import shutil
import tempfile
import unittest

from urdar.engine.blockquery import block_label_values, block_select
from urdar.engine.labels import decode_labels, encode_labels, shard_hash
from urdar.engine.matchers import Matcher
from urdar.engine.sharding import (SHARD_LABEL, ShardError, ShardSelector, parse_shard, shard_of,
                                   split_shard_matchers)
from urdar.engine.tsdb import TSDB

HOUR = 3600 * 1000
NAME = Matcher("=", "__name__", "m")


def shard(i, n):
    return Matcher("=", SHARD_LABEL, "%d_of_%d" % (i, n))


class ParseTests(unittest.TestCase):

    def test_valid_values(self):
        """`i_of_n` is 1-based, as in Mimir, and 1_of_1 is the whole set."""
        self.assertEqual(parse_shard("1_of_16"), ShardSelector(0, 16))
        self.assertEqual(parse_shard("16_of_16"), ShardSelector(15, 16))
        self.assertEqual(parse_shard("1_of_1"), ShardSelector(0, 1))
        self.assertEqual(ShardSelector(2, 3).label_value, "3_of_3")

    def test_malformed_values_refused(self):
        """Zero, out-of-range, signed, non-ASCII-digit and misshapen values are refused with
        the value and the expected form in the message."""
        for bad in ("0_of_16", "17_of_16", "1_of_0", "1of16", "1_of_16_of_2", "-1_of_2", "+1_of_2",
                    "a_of_2", "1_OF_2", "", "1_of_", "١_of_2", " 1_of_2"):
            with self.assertRaises(ShardError) as cm:
                parse_shard(bad)
            self.assertIn('invalid shard ID: "%s"' % bad, str(cm.exception))
            self.assertIn("<index>_of_<count>", str(cm.exception))

    def test_split_takes_only_the_equality_matcher(self):
        """Only `=` is the shard selector; other operators on the name stay ordinary matchers,
        and two selectors in one set are refused."""
        other = Matcher("=~", SHARD_LABEL, ".*")
        got, rest = split_shard_matchers([NAME, shard(2, 3), other])
        self.assertEqual(got, ShardSelector(1, 3))
        self.assertEqual(rest, (NAME, other))
        self.assertEqual(split_shard_matchers([NAME]), (None, (NAME,)))
        with self.assertRaises(ShardError):
            split_shard_matchers([shard(1, 2), shard(2, 2)])
        with self.assertRaises(ShardError):
            split_shard_matchers([NAME, Matcher("=", SHARD_LABEL, "3_of_2")])

    def test_hash_is_frozen(self):
        """The shard hash never changes between versions (processes of different versions
        serve the shards of one query): FNV-1a 64 plus the SplitMix64 finalizer."""
        def reference(data):
            h = 0xCBF29CE484222325
            for b in data:
                h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
            h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
            h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
            return h ^ (h >> 31)
        for key in (b"", b"a", encode_labels([("__name__", "up"), ("job", "x" * 300)])):
            self.assertEqual(shard_hash(key), reference(key))
        self.assertEqual(shard_hash(encode_labels([("__name__", "up")])) % 16,
                         reference(encode_labels([("__name__", "up")])) % 16)


class MembershipTests(unittest.TestCase):
    """A TSDB with 400 series, some cut into blocks and the rest in the head."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="urdar-shard-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.db = TSDB(self.dir)
        self.addCleanup(self.db.close)
        for t in range(0, 3 * HOUR, 10 * 60_000):
            for i in range(400):
                self.db.head.append({"__name__": "m", "i": str(i), "job": "j%d" % (i % 7)},
                                    [(t, float(i))])
        self.db.cut_blocks(force=True)
        for t in range(3 * HOUR, 4 * HOUR, 10 * 60_000):
            for i in range(400):
                self.db.head.append({"__name__": "m", "i": str(i), "job": "j%d" % (i % 7)},
                                    [(t, float(i))])
        self.assertTrue(self.db.blocks())

    def keys(self, rows):
        return [bytes(k) for k, _, _ in rows]

    def test_every_series_in_exactly_one_shard(self):
        """For 1, 3 and 16 shards the shards' series are disjoint, together they are every
        series, and each series is in the shard its hash names, in the head and in blocks."""
        everything = set(self.keys(self.db.select([NAME])))
        self.assertEqual(len(everything), 400)
        block = self.db.blocks()[0]
        for n in (1, 3, 16):
            seen = []
            for i in range(1, n + 1):
                head = self.keys(self.db.head.select([NAME, shard(i, n)], 3 * HOUR, 4 * HOUR))
                blk = self.keys(block_select(block, [NAME, shard(i, n)], 0, 3 * HOUR))
                both = self.keys(self.db.select([NAME, shard(i, n)]))
                self.assertEqual(sorted(head), sorted(blk), (i, n))
                self.assertEqual(sorted(both), sorted(head), (i, n))
                self.assertTrue(all(shard_of(k, n) == i - 1 for k in head))
                seen.extend(head)
            self.assertEqual(len(seen), 400)
            self.assertEqual(set(seen), everything)
        # 16 shards of 400 series: none empty, none more than twice its share.
        sizes = [len(self.db.head.select([NAME, shard(i, 16)])) for i in range(1, 17)]
        self.assertTrue(all(5 <= s <= 50 for s in sizes), sizes)

    def test_samples_of_a_shard_are_the_series_samples(self):
        """A sharded select returns each of its series with all its samples, across head and
        blocks, exactly as the unsharded select does."""
        full = {bytes(k): (list(t), list(v)) for k, t, v in self.db.select([NAME])}
        for k, t, v in self.db.select([NAME, Matcher("=", "job", "j3"), shard(2, 3)]):
            self.assertEqual((list(t), list(v)), full[bytes(k)])

    def test_other_readers_honour_the_shard(self):
        """Label values, label names and series-only reads of a shard see only its series."""
        block = self.db.blocks()[0]
        ids = [set() for _ in range(16)]
        for k, _, _ in self.db.select([NAME], samples=False):
            ids[shard_of(k, 16)].add(dict(decode_labels(k))["i"])
        got = block_label_values(block, "i", [NAME, shard(5, 16)])
        self.assertEqual(set(got), ids[4])
        self.assertEqual(set(self.db.head.label_values_for("i", [NAME, shard(5, 16)])), ids[4])
        refs = self.db.head.postings_for([NAME, shard(5, 16)])
        self.assertEqual(len(refs), len(ids[4]))

