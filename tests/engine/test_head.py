"""The head: appends with Prometheus' outcomes, chunk cutting, WAL replay, truncation."""
import errno
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import textwrap
import unittest
from array import array

from urdar.engine import faults
from urdar.engine import outcomes as O
from urdar.engine.head import Head
from urdar.engine.labels import encode_labels, hash_key, labels_dict
from urdar.engine.matchers import Matcher
from urdar.engine.xorchunk import decode_xor

STALE_BITS = 0x7FF0000000000002
HOUR = 3600 * 1000


def stale():
    return struct.unpack("<d", struct.pack("<Q", STALE_BITS))[0]


def bits(v):
    return struct.unpack("<Q", struct.pack("<d", v))[0]


def batch(series):
    """Columns for Head.append_batch from [(labels dict, [(t, v), ...]), ...]."""
    keys = bytearray()
    koff = array("Q", [0])
    hashes = array("Q")
    soff = array("Q", [0])
    ts = array("q")
    vs = array("d")
    for labels, samples in series:
        k = encode_labels(labels.items())
        keys += k
        koff.append(len(keys))
        hashes.append(hash_key(k))
        for t, v in samples:
            ts.append(t)
            vs.append(v)
        soff.append(len(ts))
    return bytes(keys), koff, hashes, soff, ts, vs, bytearray(len(ts))


def eq(name, value):
    return Matcher("=", name, value)


class HeadTestCase(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="urdar-head-")
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

    def series_dict(self, h, matchers, mint=-(2**63), maxt=2**63 - 1):
        return {tuple(sorted(labels_dict(k).items())): (list(t), list(v))
                for k, t, v in h.select(matchers, mint, maxt)}


class AppendTests(HeadTestCase):
    def test_batch_round_trip(self):
        """Samples appended in one batch come back from select, per series, in time order."""
        h = self.open()
        cols = batch([({"__name__": "up", "job": "a"}, [(1000, 1.0), (2000, 2.0)]),
                      ({"__name__": "up", "job": "b"}, [(1000, 3.0)])])
        ok, new = h.append_batch(*cols)
        self.assertEqual((ok, new), (3, 2))
        self.assertEqual(list(cols[-1]), [O.OK] * 3)
        got = self.series_dict(h, [eq("__name__", "up")])
        self.assertEqual(got[(("__name__", "up"), ("job", "a"))], ([1000, 2000], [1.0, 2.0]))
        self.assertEqual(got[(("__name__", "up"), ("job", "b"))], ([1000], [3.0]))
        self.assertEqual(h.num_series, 2)

    def test_outcomes(self):
        """Out-of-order, duplicate-with-other-value and too-old samples are refused with distinct outcomes."""
        h = self.open()
        s = {"__name__": "m"}
        self.assertEqual(h.append(s, [(10 * HOUR, 1.0)]), [O.OK])
        self.assertEqual(h.append(s, [(10 * HOUR - 1000, 1.0)]), [O.OUT_OF_ORDER])
        self.assertEqual(h.append(s, [(10 * HOUR, 2.0)]), [O.DUPLICATE])
        self.assertEqual(h.append(s, [(10 * HOUR, 1.0)]), [O.DUPLICATE_SAME])
        # older than maxt - chunk_range/2 is outside the appendable window
        self.assertEqual(h.append({"__name__": "other"}, [(10 * HOUR - HOUR - 1, 1.0)]), [O.OUT_OF_BOUNDS])
        self.assertEqual(h.append({"__name__": "other"}, [(10 * HOUR - HOUR, 1.0)]), [O.OK])
        self.assertEqual(self.series_dict(h, [eq("__name__", "m")])[(("__name__", "m"),)], ([10 * HOUR], [1.0]))

    def test_empty_head_starts_at_its_first_sample(self):
        """In a new tenant's first batch, a sample far older than the first one is out of bounds, as in Prometheus."""
        h = self.open()
        cols = batch([({"__name__": "m"}, [(100 * HOUR, 1.0)]), ({"__name__": "n"}, [(1, 1.0)]),
                      ({"__name__": "o"}, [(100 * HOUR - HOUR, 1.0)])])
        self.assertEqual(h.append_batch(*cols), (2, 2))
        self.assertEqual(list(cols[-1]), [O.OK, O.OUT_OF_BOUNDS, O.OK])
        self.assertEqual(h.label_values_for("__name__"), ["m", "o"])

    def test_out_of_order_repeat_within_a_batch(self):
        """An out-of-order timestamp sent twice in one batch is stored once, before and after a restart."""
        h = self.open(ooo_window=HOUR)
        h.append({"__name__": "m"}, [(10 * HOUR, 1.0)])
        cols = batch([({"__name__": "m"}, [(10 * HOUR - 60000, 2.0), (10 * HOUR - 60000, 3.0),
                                           (10 * HOUR - 30000, 4.0), (10 * HOUR - 30000, 4.0)])])
        self.assertEqual(h.append_batch(*cols)[0], 2)
        self.assertEqual(list(cols[-1]), [O.OK, O.DUPLICATE, O.OK, O.DUPLICATE_SAME])
        want = ([10 * HOUR - 60000, 10 * HOUR - 30000, 10 * HOUR], [2.0, 4.0, 1.0])
        self.assertEqual(self.series_dict(h, [eq("__name__", "m")])[(("__name__", "m"),)], want)
        h = self.reopen(h, ooo_window=HOUR)
        self.assertEqual(self.series_dict(h, [eq("__name__", "m")])[(("__name__", "m"),)], want)

    def test_mixed_batch_keeps_good_samples(self):
        """In a batch with refused samples, the good ones are stored and only they are counted."""
        h = self.open()
        h.append({"__name__": "m"}, [(5000, 1.0)])
        cols = batch([({"__name__": "m"}, [(4000, 9.0), (6000, 2.0)]), ({"__name__": "n"}, [(6000, 3.0)])])
        ok, _ = h.append_batch(*cols)
        self.assertEqual(ok, 2)
        self.assertEqual(list(cols[-1]), [O.OUT_OF_ORDER, O.OK, O.OK])
        self.assertEqual(self.series_dict(h, [eq("__name__", "m")])[(("__name__", "m"),)], ([5000, 6000], [1.0, 2.0]))

    def test_skip_and_series_limit(self):
        """Skipped series and series beyond max_series are refused per sample; existing series still append."""
        h = self.open(max_series=2)
        cols = batch([({"__name__": "a"}, [(1, 1.0)]), ({"__name__": "b"}, [(1, 1.0)]),
                      ({"__name__": "c"}, [(1, 1.0)]), ({"__name__": "d"}, [(1, 1.0)])])
        ok, new = h.append_batch(*cols[:-1], cols[-1], b"\x01\x00\x00\x00")
        self.assertEqual(list(cols[-1]), [O.SKIPPED, O.OK, O.OK, O.SERIES_LIMIT])
        self.assertEqual((ok, new), (2, 2))
        self.assertEqual(h.append({"__name__": "b"}, [(2, 2.0)]), [O.OK])

    def test_series_per_metric_limit(self):
        """A new series of a metric that has max_series_per_metric series already is refused
        with its own outcome; other metrics and existing series are unaffected; 0 turns it off."""
        h = self.open()
        h.max_series_per_metric = 2
        cols = batch([({"__name__": "a", "i": "1"}, [(1, 1.0)]), ({"__name__": "a", "i": "2"}, [(1, 1.0)]),
                      ({"__name__": "a", "i": "3"}, [(1, 1.0), (2, 1.0)]), ({"__name__": "b"}, [(1, 1.0)])])
        self.assertEqual(h.append_batch(*cols), (3, 3))
        self.assertEqual(list(cols[-1]), [O.OK, O.OK, O.SERIES_PER_METRIC_LIMIT,
                                          O.SERIES_PER_METRIC_LIMIT, O.OK])
        self.assertEqual(h.append({"__name__": "a", "i": "1"}, [(2, 2.0)]), [O.OK])
        h.max_series_per_metric = 0
        self.assertEqual(h.append({"__name__": "a", "i": "3"}, [(3, 3.0)]), [O.OK])

    def test_same_series_twice_in_batch(self):
        """A series repeated within one batch is created once and gets both sample runs."""
        h = self.open()
        cols = batch([({"__name__": "a"}, [(1, 1.0)]), ({"__name__": "a"}, [(2, 2.0)])])
        self.assertEqual(h.append_batch(*cols), (2, 1))
        self.assertEqual(self.series_dict(h, [eq("__name__", "a")])[(("__name__", "a"),)], ([1, 2], [1.0, 2.0]))

    def test_stale_marker_and_special_floats_bit_exact(self):
        """The stale marker, NaN, infinities and -0.0 are stored bit for bit."""
        h = self.open()
        vals = [stale(), float("nan"), float("inf"), float("-inf"), -0.0, 1.5]
        h.append({"__name__": "m"}, [(i * 1000, v) for i, v in enumerate(vals)])
        (_, (ts, got)), = self.series_dict(h, [eq("__name__", "m")]).items()
        self.assertEqual([bits(v) for v in got], [bits(v) for v in vals])

    def test_bad_offsets_refused(self):
        """Offsets that point outside the arrays raise instead of reading out of bounds."""
        h = self.open()
        keys, koff, hashes, soff, ts, vs, out = batch([({"__name__": "a"}, [(1, 1.0)])])
        with self.assertRaises(ValueError):
            h.append_batch(keys, array("Q", [0, len(keys) + 5]), hashes, soff, ts, vs, out)
        with self.assertRaises(ValueError):
            h.append_batch(keys, koff, hashes, array("Q", [0, 5]), ts, vs, out)


class ChunkTests(HeadTestCase):
    def chunk_sizes(self, h, labels, mint, maxt):
        key = encode_labels(labels.items())
        for k, chunks in h.chunks_for_block(mint, maxt):
            if k == key:
                return [len(decode_xor(c[3])[0]) for c in chunks], chunks
        return [], []

    def test_chunks_cut_at_120_samples_and_range_boundaries(self):
        """A 15s series fills chunks of 120 samples and never crosses a 2h boundary."""
        h = self.open()
        s = {"__name__": "m"}
        samples = [(t, float(t)) for t in range(0, 2 * HOUR, 15000)]  # 480 samples in [0, 2h)
        h.append(s, samples)
        h.append(s, [(2 * HOUR, 0.0)])
        sizes, chunks = self.chunk_sizes(h, s, 0, 2 * HOUR)
        self.assertEqual(sizes, [120, 120, 120, 120])
        self.assertTrue(all(c[1] < 2 * HOUR for c in chunks))
        self.assertEqual(chunks[0][0], 0)
        self.assertEqual(chunks[-1][1], 2 * HOUR - 15000)

    def test_sparse_series_chunk_spans_whole_range(self):
        """A series with few samples per range keeps them in one chunk per range."""
        h = self.open()
        s = {"__name__": "m"}
        h.append(s, [(t, 1.0) for t in range(0, 4 * HOUR, 10 * 60000)])
        sizes, _ = self.chunk_sizes(h, s, 0, 2 * HOUR)
        self.assertEqual(sizes, [12])

    def test_select_reads_mmapped_and_open_chunks(self):
        """Select decodes full (m-mapped) chunks and the open chunk in one time-ordered run."""
        h = self.open(head_chunk_file_bytes=64 * 1024)
        s = {"__name__": "m"}
        samples = [(t, t / 7.0) for t in range(0, 3 * HOUR, 15000)]
        h.append(s, samples)
        (_, (ts, vs)), = self.series_dict(h, [eq("__name__", "m")]).items()
        self.assertEqual(list(zip(ts, vs)), samples)
        (_, (ts, vs)), = self.series_dict(h, [eq("__name__", "m")], 3600000, 3600000 + 60000).items()
        self.assertEqual(ts, [3600000, 3615000, 3630000, 3645000, 3660000])


class OutOfOrderTests(HeadTestCase):
    def test_window_accepts_late_samples(self):
        """With out_of_order_time_window, late samples within the window are stored and merged in order."""
        h = self.open(ooo_window=HOUR)
        s = {"__name__": "m"}
        h.append(s, [(10 * HOUR, 1.0), (10 * HOUR + 60000, 2.0)])
        self.assertEqual(h.append(s, [(10 * HOUR - 30 * 60000, 0.5)]), [O.OK])
        self.assertEqual(h.append(s, [(10 * HOUR + 30000, 1.5)]), [O.OK])
        self.assertEqual(h.append(s, [(10 * HOUR + 30000, 1.7)]), [O.DUPLICATE])
        self.assertEqual(h.append(s, [(8 * HOUR, 0.1)]), [O.TOO_OLD])
        (_, (ts, vs)), = self.series_dict(h, [eq("__name__", "m")]).items()
        self.assertEqual(ts, [10 * HOUR - 30 * 60000, 10 * HOUR, 10 * HOUR + 30000, 10 * HOUR + 60000])
        self.assertEqual(vs, [0.5, 1.0, 1.5, 2.0])

    def test_late_samples_survive_replay_and_go_into_blocks(self):
        """Out-of-order samples are in the WAL and in the chunks handed to the block writer."""
        h = self.open(ooo_window=HOUR)
        s = {"__name__": "m"}
        h.append(s, [(HOUR, 1.0), (HOUR + 60000, 2.0)])
        h.append(s, [(HOUR - 60000, 0.5)])
        h = self.reopen(h, ooo_window=HOUR)
        (_, (ts, vs)), = self.series_dict(h, [eq("__name__", "m")]).items()
        self.assertEqual(ts, [HOUR - 60000, HOUR, HOUR + 60000])
        (key, chunks), = h.chunks_for_block(0, 2 * HOUR)
        self.assertEqual([t for c in chunks for t in decode_xor(c[3])[0]], ts)


class ReplayTests(HeadTestCase):
    def test_reopen_replays_everything(self):
        """After close and reopen, every series, sample, exemplar and metadata entry is back."""
        h = self.open()
        for i in range(50):
            h.append({"__name__": "m", "i": str(i)}, [(t, float(i * t)) for t in range(0, 600000, 15000)])
        h.append_exemplars([(encode_labels({"__name__": "m", "i": "3"}.items()), 15000, 9.5,
                             encode_labels({"trace_id": "abc"}.items()))])
        h.set_metadata([("m", 1, "a counter", "seconds")])
        before = self.series_dict(h, [eq("__name__", "m")])
        h = self.reopen(h)
        self.assertEqual(self.series_dict(h, [eq("__name__", "m")]), before)
        self.assertEqual(h.metadata(), {"m": (1, "a counter", "seconds")})
        (key, items), = h.exemplars([eq("i", "3")], 0, 10**9)
        self.assertEqual(items[0][:2], (15000, 9.5))
        # refs stay stable: a new series gets a fresh ref and old series keep appending
        self.assertEqual(h.append({"__name__": "m", "i": "0"}, [(600000, 1.0)]), [O.OK])
        self.assertEqual(h.append({"__name__": "new"}, [(600000, 1.0)]), [O.OK])
        self.assertEqual(h.num_series, 51)

    def test_torn_wal_tail_is_cut(self):
        """A WAL whose last segment ends mid-record opens, keeps earlier records and accepts appends."""
        h = self.open()
        for i in range(20):
            h.append({"__name__": "m"}, [(i * 1000, float(i))])
        h.close()
        self.heads.remove(h)
        wal = os.path.join(self.dir, "wal")
        seg = sorted(f for f in os.listdir(wal) if f.isdigit())[-1]
        path = os.path.join(wal, seg)
        with open(path, "r+b") as f:
            data = f.read()
            # drop the zero padding so the cut lands inside the last record
            end = len(data.rstrip(b"\x00"))
            f.truncate(end - 5)
        h = self.open()
        (_, (ts, vs)), = self.series_dict(h, [eq("__name__", "m")]).items()
        self.assertEqual(ts, [i * 1000 for i in range(19)])
        self.assertEqual(h.append({"__name__": "m"}, [(19000, 19.0)]), [O.OK])
        h = self.reopen(h)
        (_, (ts, vs)), = self.series_dict(h, [eq("__name__", "m")]).items()
        self.assertEqual(ts[-1], 19000)

    def test_kill_9_loses_nothing_acknowledged(self):
        """A child killed with SIGKILL mid-append keeps every batch it had acknowledged."""
        code = textwrap.dedent("""
            import sys
            from array import array
            from urdar.engine.head import Head
            from urdar.engine.labels import encode_labels, hash_key
            h = Head(sys.argv[1])
            keys = bytearray(); koff = array('Q', [0]); hashes = array('Q')
            for i in range(100):
                k = encode_labels([('__name__', 'm'), ('i', str(i))])
                keys += k; koff.append(len(keys)); hashes.append(hash_key(k))
            keys = bytes(keys)
            soff = array('Q', range(101))
            for n in range(100000):
                ts = array('q', [n * 1000] * 100)
                vs = array('d', [float(n)] * 100)
                out = bytearray(100)
                h.append_batch(keys, koff, hashes, soff, ts, vs, out)
                print(n, flush=True)
        """)
        env = dict(os.environ, PYTHONPATH=os.getcwd())
        p = subprocess.Popen([sys.executable, "-c", code, self.dir], stdout=subprocess.PIPE, env=env, text=True)
        acked = -1
        for line in p.stdout:
            acked = int(line)
            if acked >= 300:
                break
        p.send_signal(signal.SIGKILL)
        for line in p.stdout:  # whatever it printed before dying was acknowledged too
            acked = int(line)
        p.wait()
        self.assertGreaterEqual(acked, 300)
        h = self.open()
        got = self.series_dict(h, [eq("__name__", "m")])
        self.assertEqual(len(got), 100)
        for labels, (ts, vs) in got.items():
            self.assertGreaterEqual(len(ts), acked + 1)
            self.assertEqual(ts[:acked + 1], [n * 1000 for n in range(acked + 1)])


class TruncateTests(HeadTestCase):
    def test_truncate_drops_old_data_and_gc_series(self):
        """Truncation removes samples before the cut, forgets series left empty and refuses older appends."""
        h = self.open()
        h.append({"__name__": "old"}, [(t, 1.0) for t in range(0, HOUR, 60000)])
        h.append({"__name__": "live"}, [(t, 1.0) for t in range(0, 4 * HOUR, 60000)])
        self.assertEqual(h.compactable_range(), (0, 2 * HOUR))
        self.assertEqual(h.truncate(2 * HOUR), 1)
        self.assertEqual(h.num_series, 1)
        self.assertEqual(self.series_dict(h, [eq("__name__", "old")]), {})
        (_, (ts, _)), = self.series_dict(h, [eq("__name__", "live")]).items()
        self.assertEqual(ts[0], 2 * HOUR)
        self.assertEqual(h.append({"__name__": "old"}, [(2 * HOUR - 1, 1.0)]), [O.OUT_OF_BOUNDS])
        self.assertEqual(h.label_values_for("__name__"), ["live"])

    def test_head_starts_at_oldest_sample_after_truncation(self):
        """After cutting away one ancient sample the head starts at its real oldest sample, so no empty range is cut next."""
        h = self.open()
        h.append({"__name__": "ancient"}, [(1, 1.0)])
        h.append({"__name__": "live"}, [(200 * HOUR, 1.0), (200 * HOUR + 60000, 2.0)])
        self.assertEqual(h.compactable_range(), (0, 2 * HOUR))
        h.truncate(2 * HOUR)
        self.assertEqual(h.mint, 200 * HOUR)
        self.assertIsNone(h.compactable_range())

    def test_checkpoint_then_replay(self):
        """After truncation and WAL checkpoint, a restart restores exactly the data kept in the head."""
        h = self.open(wal_segment_bytes=64 * 1024)
        for i in range(20):
            h.append({"__name__": "live", "i": str(i)}, [(t, float(t)) for t in range(0, 4 * HOUR, 60000)])
        h.append({"__name__": "old"}, [(0, 1.0)])
        h.truncate(2 * HOUR)
        h.append({"__name__": "live", "i": "0"}, [(4 * HOUR, 5.0)])
        before = self.series_dict(h, [eq("__name__", "live")])
        h = self.reopen(h, min_valid_time=2 * HOUR, wal_segment_bytes=64 * 1024)
        self.assertEqual(self.series_dict(h, [eq("__name__", "live")]), before)
        self.assertEqual(self.series_dict(h, [eq("__name__", "old")]), {})
        self.assertTrue(any(n.startswith("checkpoint.") for n in os.listdir(os.path.join(self.dir, "wal"))))


class IndexTests(HeadTestCase):
    def test_matchers_and_label_lookups(self):
        """Selectors use all four matcher kinds; label names and values can be restricted by matchers and time."""
        h = self.open()
        h.append({"__name__": "up", "job": "api", "env": "prod"}, [(1000, 1.0)])
        h.append({"__name__": "up", "job": "db"}, [(1000, 1.0)])
        h.append({"__name__": "up", "job": "web", "env": "dev"}, [(500000, 1.0)])
        def jobs(ms, mint=-(2**63), maxt=2**63 - 1):
            return sorted(dict(k)["job"] for k in self.series_dict(h, ms, mint, maxt))
        self.assertEqual(jobs([eq("__name__", "up"), Matcher("!=", "job", "db")]), ["api", "web"])
        self.assertEqual(jobs([Matcher("=~", "job", "a.*|d.")]), ["api", "db"])
        self.assertEqual(jobs([eq("__name__", "up"), Matcher("!~", "env", "p.*")]), ["db", "web"])
        self.assertEqual(jobs([eq("__name__", "up"), eq("env", "")]), ["db"])
        self.assertEqual(jobs([eq("__name__", "up")], 400000, 600000), ["web"])
        self.assertEqual(h.label_names_for(), ["__name__", "env", "job"])
        self.assertEqual(h.label_names_for([eq("job", "db")]), ["__name__", "job"])
        self.assertEqual(h.label_values_for("env"), ["dev", "prod"])
        self.assertEqual(h.label_values_for("job", [], 0, 2000), ["api", "db"])


class SealTests(HeadTestCase):
    def test_sealed_range_refuses_late_samples(self):
        """After seal(t) even the out-of-order window cannot put samples before t."""
        h = self.open(ooo_window=10 * HOUR)
        h.append({"__name__": "m"}, [(5 * HOUR, 1.0)])
        self.assertEqual(h.append({"__name__": "m"}, [(3 * HOUR, 1.0)]), [O.OK])
        h.seal(4 * HOUR)
        self.assertEqual(h.append({"__name__": "m"}, [(4 * HOUR - 1, 1.0)]), [O.TOO_OLD])
        self.assertEqual(h.append({"__name__": "m"}, [(4 * HOUR, 1.0)]), [O.OK])

    def test_ancient_timestamps_do_not_underflow(self):
        """Samples near the smallest int64 time are handled without wrap-around."""
        h = self.open()
        t0 = -(2**63) + 10
        self.assertEqual(h.append({"__name__": "m"}, [(t0, 1.0), (t0 + 1, 2.0)]), [O.OK, O.OK])


class FaultTests(HeadTestCase):
    """Disk faults injected into the engine's write paths (urdar.engine.faults)."""

    def tearDown(self):
        faults.clear()
        super().tearDown()

    def test_failed_wal_write_changes_nothing_and_retry_is_logged(self):
        """A batch whose WAL write fails is not in memory; once the disk works its retry is stored and survives a restart."""
        h = self.open()
        h.append({"__name__": "m"}, [(1000, 1.0)])
        for err in (errno.ENOSPC, errno.EIO, errno.EFBIG):
            faults.inject("wal_write", err, under=self.dir)
            cols = batch([({"__name__": "m"}, [(2000, 2.0)]), ({"__name__": "new"}, [(2000, 5.0)])])
            with self.assertRaises(OSError) as cm:
                h.append_batch(*cols)
            self.assertEqual(cm.exception.errno, err)
            self.assertEqual(h.num_series, 1)
            self.assertEqual(h.label_values_for("__name__"), ["m"])
            self.assertEqual(self.series_dict(h, [eq("__name__", "m")])[(("__name__", "m"),)], ([1000], [1.0]))
        faults.clear()
        cols = batch([({"__name__": "m"}, [(2000, 2.0)]), ({"__name__": "new"}, [(2000, 5.0)])])
        self.assertEqual(h.append_batch(*cols), (2, 1))
        self.assertEqual(list(cols[-1]), [O.OK, O.OK])
        h = self.reopen(h)
        self.assertEqual(self.series_dict(h, [eq("__name__", "m")])[(("__name__", "m"),)], ([1000, 2000], [1.0, 2.0]))
        self.assertEqual(self.series_dict(h, [eq("__name__", "new")])[(("__name__", "new"),)], ([2000], [5.0]))

    def test_torn_wal_write_is_cut_before_the_next_record(self):
        """A WAL write that fails half-way leaves no partial record: later batches replay after a restart."""
        h = self.open()
        faults.inject("wal_write", errno.ENOSPC, times=3, under=self.dir)
        for t in (1000, 2000, 3000):
            with self.assertRaises(OSError):
                h.append({"__name__": "m"}, [(t, float(t))])
        self.assertEqual(faults.hits("wal_write"), 3)
        for t in (1000, 2000, 3000):
            self.assertEqual(h.append({"__name__": "m"}, [(t, float(t))]), [O.OK])
        h = self.reopen(h)
        self.assertEqual(self.series_dict(h, [eq("__name__", "m")])[(("__name__", "m"),)],
                         ([1000, 2000, 3000], [1000.0, 2000.0, 3000.0]))

    def test_wal_segment_creation_failure_recovers(self):
        """When a new WAL segment cannot be created, pushes fail until it can, and nothing acknowledged is lost."""
        h = self.open(wal_segment_bytes=32 * 1024)
        acked = []
        faults.inject("wal_create", errno.ENOSPC, under=self.dir)
        failed = 0
        for i in range(400):
            labels = {"__name__": "m", "pad": "x" * 200, "i": str(i)}
            try:
                h.append(labels, [(1000, 1.0)])
            except OSError as e:
                self.assertEqual(e.errno, errno.ENOSPC)
                failed += 1
                if failed == 3:
                    faults.clear()
                continue
            acked.append(str(i))
        self.assertEqual(failed, 3)
        h = self.reopen(h, wal_segment_bytes=32 * 1024)
        self.assertEqual(sorted(h.label_values_for("i")), sorted(acked))

    def test_head_chunk_fault_fails_the_push_and_the_retry_completes_it(self):
        """When chunks_head/ has no room the push fails whole; its retry stores every sample, before and after a restart."""
        h = self.open()
        samples = [(t * 1000, float(t)) for t in range(300)]
        faults.inject("head_chunks", errno.EIO, under=self.dir)
        with self.assertRaises(OSError) as cm:
            h.append({"__name__": "m"}, samples)
        self.assertEqual(cm.exception.errno, errno.EIO)
        self.assertEqual(h.num_series, 0)
        faults.clear()
        self.assertEqual(h.append({"__name__": "m"}, samples), [O.OK] * len(samples))
        want = ([t for t, _ in samples], [v for _, v in samples])
        self.assertEqual(self.series_dict(h, [eq("__name__", "m")])[(("__name__", "m"),)], want)
        h = self.reopen(h)
        self.assertEqual(self.series_dict(h, [eq("__name__", "m")])[(("__name__", "m"),)], want)

    def test_exemplars_and_metadata_are_logged_before_they_are_kept(self):
        """Exemplars and metadata refused by a failing WAL are not kept; their retry is stored and survives a restart."""
        h = self.open()
        labels = {"__name__": "m"}
        key = encode_labels(labels.items())
        ekey = encode_labels([("trace_id", "abc")])
        h.append(labels, [(1000, 1.0)])
        faults.inject("wal_write", errno.ENOSPC, under=self.dir)
        with self.assertRaises(OSError):
            h.append_exemplars([(key, 1000, 1.0, ekey)])
        with self.assertRaises(OSError):
            h.set_metadata([("m", 1, "help text", "")])
        self.assertEqual(h.exemplars([eq("__name__", "m")], 0, 2000), [])
        self.assertEqual(h.metadata(), {})
        faults.clear()
        self.assertEqual(h.append_exemplars([(key, 1000, 1.0, ekey)]), 1)
        h.set_metadata([("m", 1, "help text", "")])
        h = self.reopen(h)
        self.assertEqual(h.exemplars([eq("__name__", "m")], 0, 2000), [(key, [(1000, 1.0, ekey)])])
        self.assertEqual(h.metadata(), {"m": (1, "help text", "")})


class ExemplarStorageTests(unittest.TestCase):
    def test_grows_then_wraps_keeping_the_newest(self):
        """The buffer fills as exemplars arrive and then overwrites the oldest: a select sees
        the newest max_exemplars, oldest first; per series, older or equal times are refused."""
        from urdar.engine.head import ExemplarStorage
        ex = ExemplarStorage(3)
        self.assertEqual(len(ex), 0)
        self.assertTrue(ex.add(1, 10, 1.0, b"a"))
        self.assertFalse(ex.add(1, 10, 2.0, b"a"))
        self.assertTrue(ex.add(2, 11, 2.0, b"b"))
        self.assertEqual(ex.select([1, 2], 0, 100), {1: [(10, 1.0, b"a")], 2: [(11, 2.0, b"b")]})
        for t in (12, 13, 14):
            self.assertTrue(ex.add(1, t, float(t), b"c"))
        self.assertEqual(len(ex), 3)
        self.assertEqual(ex.select([1, 2], 0, 100), {1: [(12, 12.0, b"c"), (13, 13.0, b"c"), (14, 14.0, b"c")]})
        self.assertEqual(ex.select([1], 13, 13), {1: [(13, 13.0, b"c")]})
        self.assertFalse(ExemplarStorage(0).add(1, 1, 1.0, b""))
