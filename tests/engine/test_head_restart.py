"""Head start-up re-maps chunks_head/ and replays only the WAL samples the m-mapped chunks do not
hold (Prometheus' loadMmappedChunks + WAL replay): select after a restart gives exactly what was
there, corrupt chunk files fall back to the WAL, and nothing m-mapped is appended twice."""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import unittest

from urdar.engine import outcomes as O
from urdar.engine.head import Head
from urdar.engine.headchunks import HeadChunkFiles
from urdar.engine.histogram import Histogram
from urdar.engine.labels import labels_dict
from urdar.engine.matchers import Matcher
from urdar.engine.xorchunk import decode_xor

HOUR = 3600 * 1000
ALL = [Matcher("=~", "__name__", ".+")]


def ih(k):
    return Histogram(schema=1, count=6 * k, zero_count=k, sum=2.5 * k, zero_threshold=2.0 ** -128,
                     positive_spans=[(0, 2), (2, 1)], positive_buckets=[k, 0, -k],
                     negative_spans=[(1, 1)], negative_buckets=[3 * k])


def snapshot(h):
    """Every series' float and histogram samples as plain lists, by labels."""
    out = {}
    for item in h.select(ALL):
        key = tuple(sorted(labels_dict(item[0]).items()))
        v = [list(item[1]), [repr(x) for x in item[2]]]
        if len(item) > 3:
            v += [list(item[4]), [repr(x) for x in item[5]]]
        out[key] = v
    return out


def mmapped_samples(dir):
    """(float samples, histogram chunks) held in dir/chunks_head."""
    n = nh = 0
    with HeadChunkFiles(os.path.join(dir, "chunks_head")) as hc:
        for _ref, _sref, _mint, _maxt, enc, data in hc.iter_chunks():
            if enc == 1:
                n += len(decode_xor(data)[0])
            else:
                nh += 1
    return n, nh


class RestartTests(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="urdar-restart-")
        self.heads = []

    def tearDown(self):
        for h in self.heads:
            h.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def open(self, **kw):
        h = Head(self.dir, **kw)
        self.heads.append(h)
        return h

    def close(self, h):
        h.close()
        self.heads.remove(h)

    def fill(self, h, nseries=30, until=2 * HOUR, step=15000):
        total = 0
        for t0 in range(0, until, 10 * 60000):      # ten-minute batches, as scrapes arrive
            for i in range(nseries):
                samples = [(t, float(i * 1000 + t // step)) for t in range(t0, min(t0 + 10 * 60000, until), step)]
                self.assertEqual(set(h.append({"__name__": "m", "i": str(i)}, samples)), {O.OK})
                total += len(samples)
        return total

    def test_floats_come_back_and_mmapped_samples_are_not_replayed(self):
        h = self.open()
        total = self.fill(h)
        before = snapshot(h)
        self.close(h)
        in_chunks, _ = mmapped_samples(self.dir)
        self.assertGreater(in_chunks, total // 2)
        h = self.open()
        self.assertEqual(snapshot(h), before)
        st = h.replay_stats
        self.assertEqual(st["samples_skipped_mmapped"], in_chunks)
        self.assertEqual(st["samples_replayed"], total - in_chunks)
        self.assertEqual(st["chunk_files_corrupt"], 0)
        # appends go on where they stopped, and a second restart still gives it all back
        self.assertEqual(h.append({"__name__": "m", "i": "0"}, [(2 * HOUR, 5.0)]), [O.OK])
        self.assertEqual(h.append({"__name__": "m", "i": "0"}, [(2 * HOUR - 15000, 5.0)]), [O.OUT_OF_ORDER])
        before = snapshot(h)
        self.close(h)
        h = self.open()
        self.assertEqual(snapshot(h), before)

    def test_histograms_floats_and_out_of_order(self):
        h = self.open(ooo_window=HOUR)
        lab = {"__name__": "lat", "job": "a"}
        mix = {"__name__": "mix"}          # a float series that turns into a histogram one and back
        step, win = 15000, 10 * 60000
        for t0 in range(0, 2 * HOUR, win):
            ts = range(t0, t0 + win, step)
            for i in range(5):
                self.assertEqual(set(h.append({"__name__": "m", "i": str(i)}, [(t, float(t)) for t in ts])), {O.OK})
            hs = [(t, ih((t // step) % 100 + 1)) for t in ts]   # counter resets cut chunks
            self.assertEqual(set(h.append_histograms(lab, hs)), {O.OK})
            if HOUR <= t0 < HOUR + win:
                self.assertEqual(set(h.append_histograms(mix, [(t, ih(2)) for t in ts])), {O.OK})
            else:
                self.assertEqual(set(h.append(mix, [(t, 1.0) for t in ts])), {O.OK})
        # late samples inside the window: kept in memory, in the WAL only
        self.assertEqual(h.append({"__name__": "m", "i": "1"}, [(2 * HOUR - 15000 * 40 + 7, 9.5)]), [O.OK])
        self.assertEqual(h.append_histograms(lab, [(2 * HOUR - 15000 * 30 + 3, ih(1))]), [O.OK])
        before = snapshot(h)
        self.close(h)
        _, hist_chunks = mmapped_samples(self.dir)
        self.assertGreater(hist_chunks, 0)
        h = self.open(ooo_window=HOUR)
        self.assertEqual(snapshot(h), before)
        self.assertGreater(h.replay_stats["samples_skipped_mmapped"], 0)
        self.assertEqual(h.append_histograms(lab, [(hs[-1][0], hs[-1][1])]), [O.DUPLICATE_SAME])

    def test_corrupt_chunk_file_tail_falls_back_to_the_wal(self):
        h = self.open(head_chunk_file_bytes=4096)
        total = self.fill(h, nseries=40)
        before = snapshot(h)
        self.close(h)
        files = sorted(n for n in os.listdir(os.path.join(self.dir, "chunks_head")) if n.isdigit())
        self.assertGreater(len(files), 2)
        path = os.path.join(self.dir, "chunks_head", files[1])
        size = os.path.getsize(path)
        with open(path, "r+b") as f:              # flip a byte in the middle of the second file
            f.seek(size // 2)
            b = f.read(1)
            f.seek(size // 2)
            f.write(bytes([b[0] ^ 0xFF]))
        in_chunks, _ = mmapped_samples(self.dir)   # what is left before the corruption
        h = self.open(head_chunk_file_bytes=4096)
        self.assertEqual(snapshot(h), before)
        st = h.replay_stats
        self.assertEqual(st["chunk_files_corrupt"], 1)
        self.assertEqual(st["samples_skipped_mmapped"], in_chunks)
        self.assertEqual(st["samples_replayed"], total - in_chunks)
        left = sorted(n for n in os.listdir(os.path.join(self.dir, "chunks_head")) if n.isdigit())
        self.assertEqual(left[:2], files[:2])
        self.assertLess(os.path.getsize(path), size)
        # the repaired directory opens clean, and new chunks go after it
        self.assertEqual(set(h.append({"__name__": "m", "i": "3"}, [(t, 1.0) for t in range(2 * HOUR, 3 * HOUR, 15000)])), {O.OK})
        before = snapshot(h)
        self.close(h)
        h = self.open(head_chunk_file_bytes=4096)
        self.assertEqual(snapshot(h), before)
        self.assertEqual(h.replay_stats["chunk_files_corrupt"], 0)

    def test_checkpointed_wal_with_mmapped_chunks(self):
        h = self.open(wal_segment_bytes=64 * 1024)
        self.fill(h, nseries=20, until=4 * HOUR, step=60000)
        h.append({"__name__": "old"}, [(0, 1.0)])
        h.truncate(2 * HOUR)
        self.assertEqual(set(h.append({"__name__": "m", "i": "0"}, [(4 * HOUR, 5.0)])), {O.OK})
        before = snapshot(h)
        self.close(h)
        self.assertTrue(any(n.startswith("checkpoint.") for n in os.listdir(os.path.join(self.dir, "wal"))))
        h = self.open(min_valid_time=2 * HOUR, wal_segment_bytes=64 * 1024)
        self.assertEqual(snapshot(h), before)
        self.assertNotIn((("__name__", "old"),), snapshot(h))
        self.assertGreater(h.replay_stats["samples_skipped_mmapped"], 0)
        self.assertEqual(h.mint, min(t for v in before.values() for t in v[0]))

    def test_sparse_and_repeated_series_refs_in_a_foreign_wal(self):
        """Refs far beyond the series count (left by a long churn) and one label set under two
        refs (a series record written twice) replay like dense ones: every sample comes back."""
        from array import array
        from urdar.engine import records
        from urdar.engine.labels import encode_labels
        from urdar.engine.wal import WAL
        a = encode_labels([("__name__", "m"), ("i", "a")])
        b = encode_labels([("__name__", "m"), ("i", "b")])
        with WAL(os.path.join(self.dir, "wal")) as w:
            w.log(records.encode_series([(5, a), (50_000_000, b)]))
            w.log(records.encode_samples(array("Q", [5, 50_000_000]), array("q", [1000, 1000]),
                                         array("d", [1.0, 2.0])))
            w.log(records.encode_series([(9, a)]))     # the same series again, another ref
            w.log(records.encode_samples(array("Q", [9, 50_000_000, 5]), array("q", [2000, 2000, 3000]),
                                         array("d", [1.5, 2.5, 1.75])))
        h = self.open()
        got = snapshot(h)
        self.assertEqual(got[(("__name__", "m"), ("i", "a"))], [[1000, 2000, 3000], ["1.0", "1.5", "1.75"]])
        self.assertEqual(got[(("__name__", "m"), ("i", "b"))], [[1000, 2000], ["2.0", "2.5"]])
        self.assertEqual(h.num_series, 2)
        # new series take refs above the sparse one; appends go on after the replayed samples
        self.assertEqual(h.append({"__name__": "m", "i": "b"}, [(2000, 9.0), (4000, 3.0)]),
                         [O.DUPLICATE, O.OK])
        self.assertEqual(h.append({"__name__": "m", "i": "c"}, [(1000, 1.0)]), [O.OK])
        self.assertGreater(h._ref_of(encode_labels([("__name__", "m"), ("i", "c")])), 50_000_000)
        before = snapshot(h)
        self.close(h)
        self.assertEqual(snapshot(self.open()), before)

    def test_kill_9_with_chunks_head_partly_written(self):
        """A child killed with SIGKILL while it cuts chunks keeps every acknowledged batch."""
        code = textwrap.dedent("""
            import sys
            from array import array
            from urdar.engine.head import Head
            from urdar.engine.labels import encode_labels, hash_key
            h = Head(sys.argv[1], samples_per_chunk=8, head_chunk_file_bytes=64 * 1024)
            keys = bytearray(); koff = array('Q', [0]); hashes = array('Q')
            for i in range(200):
                k = encode_labels([('__name__', 'm'), ('i', str(i))])
                keys += k; koff.append(len(keys)); hashes.append(hash_key(k))
            keys = bytes(keys)
            soff = array('Q', range(201))
            for n in range(100000):
                ts = array('q', [n * 15000] * 200)
                vs = array('d', [float(n)] * 200)
                out = bytearray(200)
                h.append_batch(keys, koff, hashes, soff, ts, vs, out)
                print(n, flush=True)
        """)
        env = dict(os.environ, PYTHONPATH=os.getcwd())
        p = subprocess.Popen([sys.executable, "-c", code, self.dir], stdout=subprocess.PIPE, env=env, text=True)
        acked = -1
        for line in p.stdout:
            acked = int(line)
            if acked >= 400:
                break
        p.send_signal(signal.SIGKILL)
        p.wait()
        p.stdout.close()
        self.assertGreater(len(os.listdir(os.path.join(self.dir, "chunks_head"))), 1)
        h = self.open(samples_per_chunk=8, head_chunk_file_bytes=64 * 1024)
        got = snapshot(h)
        self.assertEqual(len(got), 200)
        for ts, vs in got.values():
            n = len(ts)
            self.assertGreaterEqual(n, acked + 1)
            self.assertEqual(ts, [k * 15000 for k in range(n)])
            self.assertEqual(vs, [repr(float(k)) for k in range(n)])
        self.assertGreater(h.replay_stats["samples_skipped_mmapped"], 0)
        # appending goes on from the newest replayed sample
        n = len(next(iter(got.values()))[0])
        self.assertEqual(h.append({"__name__": "m", "i": "0"}, [(n * 15000, 1.0)]), [O.OK])


if __name__ == "__main__":
    unittest.main()
