"""Block directories: ULIDs, atomic writing, meta.json, and reading samples back."""
import json
import math
import os
import shutil
import struct
import tempfile
import unittest
from array import array

from hypothesis import given, strategies as st

from urdar.engine.block import BlockReader, is_ulid, new_ulid, parse_ulid, write_block
from urdar.engine.errors import CorruptionError, UnsupportedChunkEncoding
from urdar.engine.labels import encode_labels
from urdar.engine.xorchunk import encode_xor

STALE = struct.unpack("<d", struct.pack("<Q", 0x7FF0000000000002))[0]


def bits(v):
    return struct.unpack("<Q", struct.pack("<d", v))[0]


def xor_chunks(ts, vals, per_chunk=120):
    out = []
    for i in range(0, len(ts), per_chunk):
        t = array("q", ts[i:i + per_chunk])
        v = array("d", vals[i:i + per_chunk])
        out.append((t[0], t[-1], 1, encode_xor(t, v)))
    return out


class ULIDTests(unittest.TestCase):
    def test_known_encoding(self):
        """A ULID is 26 Crockford characters: 10 for the ms time, 16 for the random bits."""
        u = new_ulid(t_ms=1469918176385, rand=0)
        self.assertEqual(u, "01ARYZ6S41" + "0" * 16)
        self.assertEqual(parse_ulid(u), (1469918176385, 0))
        self.assertEqual(new_ulid(t_ms=(1 << 48) - 1, rand=(1 << 80) - 1), "7" + "Z" * 25)

    @given(st.integers(0, (1 << 48) - 1), st.integers(0, (1 << 80) - 1))
    def test_round_trip_and_order(self, t, r):
        """Parsing returns the time and randomness; string order follows time order."""
        u = new_ulid(t, r)
        self.assertEqual(parse_ulid(u), (t, r))
        self.assertTrue(is_ulid(u))
        if t > 0:
            self.assertLess(new_ulid(t - 1, (1 << 80) - 1), u)

    def test_rejects_invalid(self):
        """Wrong length, non-Crockford letters, lower case, overflow and path tricks are not ULIDs."""
        for bad in ("", "01ARYZ6S41", "01ARYZ6S41" + "0" * 15 + "I", "01aryz6s41" + "0" * 16,
                    "8" + "0" * 25, "../" + "0" * 23, None, 5):
            self.assertFalse(is_ulid(bad), bad)
        with self.assertRaises(ValueError):
            parse_ulid("8" + "0" * 25)

    def test_new_ulids_differ(self):
        """Two ULIDs made in the same millisecond differ."""
        self.assertNotEqual(new_ulid(5), new_ulid(5))


class BlockWriteTests(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="urdar-block-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def make(self, n_series=5, n=300, **kw):
        series = []
        for i in range(n_series):
            ts = [1000 + 15000 * j for j in range(n)]
            vals = [float(i * j) for j in range(n)]
            series.append((encode_labels([("__name__", "m"), ("i", "%03d" % i)]), xor_chunks(ts, vals)))
        return series, write_block(self.dir, 0, 7_200_000, reversed(series), **kw)

    def open(self, ulid, **kw):
        r = BlockReader(os.path.join(self.dir, ulid), **kw)
        self.addCleanup(r.close)
        return r

    def test_layout_and_meta(self):
        """The block dir holds meta.json, index, tombstones and chunks/000001, and no tmp dir remains."""
        series, ulid = self.make()
        self.assertEqual(os.listdir(self.dir), [ulid])
        d = os.path.join(self.dir, ulid)
        self.assertEqual(sorted(os.listdir(d)), ["chunks", "index", "meta.json", "tombstones"])
        self.assertEqual(os.listdir(os.path.join(d, "chunks")), ["000001"])
        meta = json.load(open(os.path.join(d, "meta.json")))
        self.assertEqual(meta, {
            "ulid": ulid, "minTime": 0, "maxTime": 7_200_000,
            "stats": {"numSamples": 1500, "numFloatSamples": 1500, "numSeries": 5, "numChunks": 15},
            "compaction": {"level": 1, "sources": [ulid]}, "version": 1})
        self.assertIn(b'\n\t"ulid"', open(os.path.join(d, "meta.json"), "rb").read())

    def test_compaction_fields(self):
        """Given ulid, level, sources and parents are written as Prometheus' compaction section."""
        u = new_ulid()
        parents = [{"ulid": new_ulid(), "minTime": 0, "maxTime": 7_200_000}]
        _, ulid = self.make(ulid=u, level=2, sources=["A" * 26], parents=parents,
                            extra_meta={"thanos": {"labels": {"r": "1"}}})
        self.assertEqual(ulid, u)
        meta = self.open(ulid).meta
        self.assertEqual(meta["compaction"], {"level": 2, "sources": ["A" * 26], "parents": parents})
        self.assertEqual(meta["thanos"], {"labels": {"r": "1"}})

    def test_read_back_samples(self):
        """iter_series returns every written sample, series in label order, within [mint, maxt]."""
        series, ulid = self.make()
        r = self.open(ulid)
        got = list(r.iter_series())
        self.assertEqual([k for k, _, _ in got], [k for k, _ in series])
        for (key, ts, vals), i in zip(got, range(5)):
            self.assertEqual(list(ts), [1000 + 15000 * j for j in range(300)])
            self.assertEqual(list(vals), [float(i * j) for j in range(300)])
        part = list(r.iter_series(16000, 61000))
        self.assertEqual(list(part[0][1]), [16000, 31000, 46000, 61000])
        self.assertEqual(list(r.iter_series(10**9, 10**10)), [])

    def test_series_chunks_views(self):
        """series_chunks gives the chunk metas and zero-copy views that pin the block open."""
        series, ulid = self.make(n_series=1)
        r = self.open(ulid)
        sid = r.index.all_postings()[0]
        chunks = r.series_chunks(sid)
        self.assertEqual([(a, b, e, bytes(v)) for a, b, e, v in chunks], series[0][1])
        with self.assertRaises(BufferError):
            r.close()
        for *_, v in chunks:
            v.release()
        r.close()

    def test_special_floats_survive(self):
        """NaN, the stale marker, infinities and -0.0 come back with identical bits."""
        special = [math.nan, STALE, math.inf, -math.inf, -0.0, 1e-310, 0.1]
        ts = [1000 * j for j in range(len(special))]
        key = encode_labels([("__name__", "x")])
        ulid = write_block(self.dir, 0, 100_000, [(key, xor_chunks(ts, special))])
        (_, t, v), = self.open(ulid).iter_series()
        self.assertEqual([bits(x) for x in v], [bits(x) for x in special])

    def test_rejects_chunks_outside_range(self):
        """A chunk whose samples fall outside [minTime, maxTime) is refused and no block is left."""
        key = encode_labels([("a", "1")])
        with self.assertRaises(ValueError):
            write_block(self.dir, 0, 1000, [(key, xor_chunks([500, 1000], [1.0, 2.0]))])
        self.assertEqual(os.listdir(self.dir), [])

    def test_segment_cut(self):
        """With a small segment size the chunks spread over several files and still read back."""
        series, ulid = self.make(segment_bytes=1024)
        self.assertGreater(len(os.listdir(os.path.join(self.dir, ulid, "chunks"))), 1)
        self.assertEqual(sum(len(t) for _, t, _ in self.open(ulid).iter_series()), 1500)

    def test_unsupported_encoding(self):
        """A histogram chunk counts as histogram samples; junk in one is corruption; an encoding
        urdar does not know raises UnsupportedChunkEncoding."""
        key = encode_labels([("a", "1")])
        ulid = write_block(self.dir, 0, 1000, [(key, [(0, 10, 2, b"\x00\x03\x00junk")])])
        r = self.open(ulid)
        self.assertEqual(r.meta["stats"]["numHistogramSamples"], 3)
        with self.assertRaises(CorruptionError):
            list(r.iter_series())
        ulid = write_block(self.dir, 0, 1000, [(key, [(0, 10, 9, b"\x00\x03\x00junk")])])
        with self.assertRaises(UnsupportedChunkEncoding):
            list(self.open(ulid).iter_series())

    def test_bad_meta(self):
        """A meta.json with another version or broken JSON is reported as corruption."""
        _, ulid = self.make(n_series=1)
        path = os.path.join(self.dir, ulid, "meta.json")
        meta = json.load(open(path))
        meta["version"] = 2
        open(path, "w").write(json.dumps(meta))
        with self.assertRaises(CorruptionError):
            BlockReader(os.path.join(self.dir, ulid))
        open(path, "w").write("{")
        with self.assertRaises(CorruptionError):
            BlockReader(os.path.join(self.dir, ulid))

    def test_existing_block_not_overwritten(self):
        """Writing a block whose ULID already exists fails instead of replacing it."""
        _, ulid = self.make(n_series=1)
        with self.assertRaises(FileExistsError):
            self.make(n_series=1, ulid=ulid)
