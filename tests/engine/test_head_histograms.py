"""Native histograms in the head: append outcomes, select's 6-tuples, chunks_head, WAL replay,
checkpoints and block chunks."""
import os
import shutil
import tempfile
import unittest

from urdar.engine import outcomes as O
from urdar.engine.head import Head
from urdar.engine.histchunk import decode_histogram_chunk
from urdar.engine.histogram import FIELDS as HIST_FIELDS
from urdar.engine.histogram import (
    FloatHistogram, GAUGE_TYPE, Histogram, NOT_COUNTER_RESET)
from urdar.engine.labels import encode_labels
from urdar.engine.matchers import Matcher

LABELS = {"__name__": "lat", "job": "a"}


def ih(k, **kw):
    d = dict(schema=1, count=6 * k, zero_count=k, sum=2.5 * k, zero_threshold=2.0 ** -128,
             positive_spans=[(0, 2), (2, 1)], positive_buckets=[k, 0, -k],
             negative_spans=[(1, 1)], negative_buckets=[3 * k])
    d.update(kw)
    return Histogram(**d)


def fh(k):
    return FloatHistogram(schema=-53, count=2.5 * k, sum=k * 0.1, custom_values=[0.5, 1.0],
                          positive_spans=[(0, 3)], positive_buckets=[k, 0.5 * k, k])


def nohint(h):
    f = h.to_float()
    return FloatHistogram(**{k: getattr(f, k) for k in HIST_FIELDS
                             if k != "counter_reset_hint"})


class HeadHistogramTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp()
        self.heads = []

    def tearDown(self):
        for h in self.heads:
            h.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def open(self, **kw):
        h = Head(self.dir, **kw)
        self.heads.append(h)
        return h

    def reopen(self, h, **kw):
        h.close()
        self.heads.remove(h)
        return self.open(**kw)

    def select(self, h, mint=-(2 ** 63), maxt=2 ** 63 - 1):
        out = {}
        for item in h.select([Matcher("=", "__name__", "lat")], mint, maxt):
            out[item[0]] = item
        return out

    def test_append_select_and_outcomes(self):
        h = self.open()
        samples = [(1000 * k, ih(k)) for k in range(1, 400)]
        self.assertEqual(h.append_histograms(LABELS, samples), [O.OK] * 399)
        self.assertEqual(h.append_histograms(LABELS, [(399000, ih(399)), (399000, ih(6)), (4000, ih(4))]),
                         [O.DUPLICATE_SAME, O.DUPLICATE, O.OUT_OF_ORDER])
        # a float at a histogram's timestamp is a duplicate; later floats are fine
        self.assertEqual(h.append(LABELS, [(399000, 1.0), (400000, 2.0)]),
                         [O.DUPLICATE, O.OK])
        self.assertEqual(h.append_histograms(LABELS, [(400000, ih(500)), (401000, fh(1))]),
                         [O.DUPLICATE, O.OK])
        got = self.select(h)
        key = encode_labels(LABELS.items())
        k, ts, vs, sts, hts, hvs = got[key]
        self.assertEqual((list(ts), list(vs), sts), ([400000], [2.0], None))
        self.assertEqual(list(hts), [t for t, _ in samples] + [401000])
        self.assertTrue(all(isinstance(x, FloatHistogram) for x in hvs))
        self.assertEqual([nohint(x) for x in hvs[:399]], [nohint(v) for _, v in samples])
        self.assertEqual(nohint(hvs[-1]), nohint(fh(1)))
        self.assertEqual(hvs[1].counter_reset_hint, NOT_COUNTER_RESET)
        # range restriction
        k, ts, vs, sts, hts, hvs = self.select(h, 10000, 12000)[key]
        self.assertEqual(list(hts), [10000, 11000, 12000])
        self.assertEqual(len(ts), 0)
        # chunks went to chunks_head
        self.assertTrue(os.path.getsize(os.path.join(self.dir, "chunks_head", "000001")) > 1024)

    def test_wal_replay_gives_back_the_same_samples(self):
        h = self.open()
        a = [(1000 * k, ih(k)) for k in range(1, 200)]
        a.append((200000, ih(1)))                          # counter reset: new chunk
        b = [(1000 * k, fh(k)) for k in range(1, 50)]
        g = [(1000 * k, ih(k % 4, counter_reset_hint=GAUGE_TYPE)) for k in range(1, 20)]
        h.append_histograms(LABELS, a)
        h.append_histograms({"__name__": "lat", "job": "nhcb"}, b)
        h.append_histograms({"__name__": "lat", "job": "g"}, g)
        before = self.select(h)
        h = self.reopen(h)
        after = self.select(h)
        self.assertEqual(before.keys(), after.keys())
        for key in before:
            self.assertEqual(list(before[key][4]), list(after[key][4]))
            self.assertEqual(before[key][5], after[key][5])
        k, _, _, _, hts, hvs = after[encode_labels(LABELS.items())]
        self.assertEqual(hvs[-1].count, 6.0)
        self.assertEqual({x.counter_reset_hint for x in after[encode_labels(
            {"__name__": "lat", "job": "g"}.items())][5]}, {GAUGE_TYPE})

    def test_block_chunks_and_truncate_with_checkpoint(self):
        h = self.open(chunk_range=100000)
        h.append_histograms(LABELS, [(1000 * k, ih(k)) for k in range(1, 300)])
        h.append(LABELS, [(300000 + k, float(k)) for k in range(3)])
        [(key, chunks)] = h.chunks_for_block(0, 100000)
        encs = {c[2] for c in chunks}
        self.assertEqual(encs, {2})
        got = []
        for cmint, cmaxt, enc, data in chunks:
            ts, hs = decode_histogram_chunk(data, enc)
            self.assertEqual((ts[0], ts[-1]), (cmint, cmaxt))
            got.extend(ts)
        self.assertEqual(got, [1000 * k for k in range(1, 100)])
        h.truncate(100000)
        self.assertEqual(list(self.select(h)[key][4])[0], 100000)
        h = self.reopen(h, chunk_range=100000)
        k, ts, vs, sts, hts, hvs = self.select(h)[key]
        self.assertEqual(list(hts), [1000 * k for k in range(100, 300)])
        self.assertEqual(list(ts), [300000, 300001, 300002])
        self.assertEqual(nohint(hvs[0]), nohint(ih(100)))


if __name__ == "__main__":
    unittest.main()


class TSDBHistogramTest(unittest.TestCase):
    """Blocks cut from the head carry histogram chunks; selects merge head and blocks;
    compaction of overlapping blocks merges histogram samples."""

    def setUp(self):
        self.dir = tempfile.mkdtemp()

    def tearDown(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def test_blocks_select_and_vertical_compaction(self):
        from urdar.engine import block as _block
        from urdar.engine.compact import compact_blocks
        from urdar.engine.tsdb import TSDB
        hour = 3600 * 1000
        db = TSDB(self.dir, compaction_ranges_ms=())
        try:
            samples = [(15000 * k, ih(k)) for k in range(1, 1500)]
            for t, h in samples:
                self.assertEqual(db.append_histograms(LABELS, [(t, h)]), [O.OK])
                self.assertEqual(db.head.append({"__name__": "lat", "job": "f"}, [(t, 1.0)]), [O.OK])
            made = db.cut_blocks()
            self.assertEqual(len(made), 2)
            key = encode_labels(LABELS.items())
            got = {item[0]: item for item in db.select([Matcher("=", "__name__", "lat")])}
            self.assertEqual(len(got[key]), 6)
            self.assertEqual(list(got[key][4]), [t for t, _ in samples])
            self.assertEqual([nohint(x) for x in got[key][5]], [nohint(v) for _, v in samples])
            self.assertEqual(len(got[encode_labels({"__name__": "lat", "job": "f"}.items())]), 3)
            meta = _block.read_meta(os.path.join(self.dir, made[0]))
            self.assertEqual(meta["stats"]["numHistogramSamples"], 2 * hour // 15000 - 1)
        finally:
            db.close()
        # two overlapping blocks of the same series (two ingesters, one shifted sample)
        other = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, other, True)
        db2 = TSDB(other, compaction_ranges_ms=())
        db2.append_histograms(LABELS, [(15000 * k + 7, ih(k)) for k in range(1, 400)])
        [b2] = db2.cut_blocks(force=True)
        db2.close()
        b1 = _block.BlockReader(os.path.join(self.dir, made[0]))
        b2r = _block.BlockReader(os.path.join(other, b2))
        ulid = compact_blocks(self.dir, [b1, b2r])
        with _block.BlockReader(os.path.join(self.dir, ulid)) as merged:
            items = {it[0]: it for it in merged.iter_series()}
            hts = list(items[key][4])
            want = sorted({15000 * k for k in range(1, 480)} | {15000 * k + 7 for k in range(1, 400)})
            self.assertEqual(hts, want)
        b1.close()
        b2r.close()


class HeadHistogramOOOTest(HeadHistogramTest):
    def test_out_of_order_window(self):
        h = self.open(ooo_window=150000, chunk_range=3600000)
        key = encode_labels(LABELS.items())
        self.assertEqual(h.append_histograms(LABELS, [(100000, ih(10)), (200000, ih(20))]), [O.OK, O.OK])
        out = h.append_histograms(LABELS, [(150000, ih(15)), (150000, ih(15)), (150000, ih(16)),
                                           (100000, ih(99)), (120000, ih(12)), (1000, ih(1))])
        self.assertEqual(out, [O.OK, O.DUPLICATE_SAME, O.DUPLICATE, O.OK, O.OK, O.TOO_OLD])
        want = [(100000, ih(10)), (120000, ih(12)), (150000, ih(15)), (200000, ih(20))]

        def check(head):
            k, ts, vs, sts, hts, hvs = self.select(head)[key]
            self.assertEqual(list(hts), [t for t, _ in want])
            self.assertEqual([nohint(x) for x in hvs], [nohint(v) for _, v in want])
        check(h)
        h = self.reopen(h, ooo_window=150000, chunk_range=3600000)
        check(h)
        [(bkey, chunks)] = h.chunks_for_block(0, 3600000)
        got = []
        for cmint, cmaxt, enc, data in chunks:
            got.extend(decode_histogram_chunk(data, enc)[0])
        self.assertEqual(got, [t for t, _ in want])
        h.truncate(130000)
        k, ts, vs, sts, hts, hvs = self.select(h)[key]
        # out-of-order samples go one by one; in-order chunks whole (100000 shares one with 200000)
        self.assertEqual(list(hts), [100000, 150000, 200000])
