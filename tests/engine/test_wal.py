"""The write-ahead log: Prometheus wlog framing, reading back, torn tails, repair, checkpoints."""
import errno
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import textwrap
import unittest
from array import array

import cramjam
from hypothesis import given, settings, HealthCheck, strategies as st

from urdar.engine import faults, records, wal
from urdar.engine.encoding import crc32c
from urdar.engine.errors import CorruptionError, UnsupportedWALCompression, WALCorruptionError
from urdar.engine.labels import encode_labels

PAGE = 32 * 1024
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def fragments(data):
    """Test oracle: (offset, type byte, payload) of every fragment in a segment's bytes."""
    out, pos = [], 0
    while pos < len(data):
        if data[pos] == 0:
            pos = (pos // PAGE + 1) * PAGE
            continue
        typ, ln, crc = data[pos], *struct.unpack(">HI", data[pos + 1:pos + 7])
        payload = data[pos + 7:pos + 7 + ln]
        assert crc32c(payload) == crc, "bad crc at %d" % pos
        assert pos % PAGE + 7 + ln <= PAGE, "fragment crosses page at %d" % pos
        out.append((pos, typ, payload))
        pos += 7 + ln
    return out


def frame(typ, payload):
    return bytes([typ]) + struct.pack(">HI", len(payload), crc32c(payload)) + payload


def rec_of(i, size):
    """A deterministic record of `size` bytes for sequence number i."""
    head = struct.pack(">I", i)
    return (head * (size // 4 + 1))[:size] if size >= 4 else head[:size]


class WALTestCase(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="urdar-wal-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def seg(self, k, d=None):
        with open(os.path.join(d or self.dir, "%08d" % k), "rb") as f:
            return f.read()

    def read_all(self, d=None, **kw):
        rd = wal.WALReader(d or self.dir, **kw)
        return list(rd), rd.corruption


class FramingTests(WALTestCase):
    def test_small_record_is_one_full_fragment(self):
        """A small record is written as one full fragment: type 1, BE length, CRC-32C, payload."""
        w = wal.WAL(self.dir, segment_bytes=PAGE * 4)
        w.log(b"hello")
        self.assertEqual(self.seg(0), b"\x01\x00\x05" + struct.pack(">I", crc32c(b"hello")) + b"hello")
        w.close()
        # close pads the last page with zeros, as wlog does
        self.assertEqual(len(self.seg(0)), PAGE)

    def test_record_larger_than_page_is_split(self):
        """A record larger than a page becomes first, middle and last fragments that reassemble."""
        rec = os.urandom(PAGE * 2 + 100)
        w = wal.WAL(self.dir, segment_bytes=PAGE * 8)
        w.log(b"x" * 10)
        w.log(rec)
        frags = fragments(self.seg(0))
        self.assertEqual([f[1] for f in frags], [1, 2, 3, 4])
        self.assertEqual(b"".join(f[2] for f in frags[1:]), rec)
        self.assertEqual(frags[1][0], 17)
        self.assertEqual(frags[2][0], PAGE)
        self.assertEqual(frags[3][0], 2 * PAGE)
        self.assertEqual(self.read_all()[0], [b"x" * 10, rec])

    def test_page_padding_when_fewer_than_seven_bytes_remain(self):
        """When a page has fewer than 7 bytes left it is zero-padded and the next record starts a page."""
        w = wal.WAL(self.dir, segment_bytes=PAGE * 4)
        w.log(b"a" * (PAGE - 7 - 3))   # leaves 3 bytes in the page
        data = self.seg(0)
        self.assertEqual(len(data), PAGE)
        self.assertEqual(data[-3:], b"\0\0\0")
        w.log(b"b")
        frags = fragments(self.seg(0))
        self.assertEqual([f[0] for f in frags], [0, PAGE])
        self.assertEqual(self.read_all()[0], [b"a" * (PAGE - 10), b"b"])

    def test_exact_page_remainder_of_seven(self):
        """A page with exactly 7 bytes left is padded rather than given an empty fragment."""
        w = wal.WAL(self.dir, segment_bytes=PAGE * 4)
        w.log(b"a" * (PAGE - 14))
        w.log(b"bc")
        frags = fragments(self.seg(0))
        self.assertEqual([(f[0], f[1]) for f in frags], [(0, 1), (PAGE, 1)])

    def test_record_not_fitting_segment_starts_new_one(self):
        """A record larger than the rest of the segment goes to a new segment, never spanning two."""
        w = wal.WAL(self.dir, segment_bytes=PAGE * 2)
        w.log(b"a" * PAGE)             # fills page 0 and spills into page 1
        w.log(b"b" * (PAGE - 20))      # cannot fit the rest of page 1 (PAGE - 21 payload bytes)
        self.assertEqual(wal.list_segments(self.dir), [0, 1])
        self.assertEqual(len(self.seg(0)), 2 * PAGE)     # closed segment: whole pages
        self.assertEqual(fragments(self.seg(1))[0][:2], (0, 1))
        self.assertEqual(self.read_all()[0], [b"a" * PAGE, b"b" * (PAGE - 20)])

    def test_oversized_record_gets_its_own_segment(self):
        """A record larger than a whole segment is written alone into a larger segment."""
        w = wal.WAL(self.dir, segment_bytes=PAGE)
        big = os.urandom(3 * PAGE)
        w.log(b"small")
        w.log(big)
        w.log(b"after")
        self.assertEqual(wal.list_segments(self.dir), [0, 1, 2])
        self.assertEqual(b"".join(f[2] for f in fragments(self.seg(1))), big)
        self.assertEqual(self.read_all()[0], [b"small", big, b"after"])

    def test_empty_record(self):
        """An empty record is a zero-length full fragment and reads back as empty bytes."""
        w = wal.WAL(self.dir, segment_bytes=PAGE)
        w.log(b"")
        w.log(b"z")
        self.assertEqual(self.read_all()[0], [b"", b"z"])

    def test_buffer_types(self):
        """log accepts bytes, bytearray and memoryview."""
        w = wal.WAL(self.dir, segment_bytes=PAGE)
        w.log(b"a")
        w.log(bytearray(b"b"))
        w.log(memoryview(b"xcx")[1:2])
        self.assertEqual(self.read_all()[0], [b"a", b"b", b"c"])

    def test_segment_size_validated(self):
        """A segment size that is not a multiple of 32 KiB is refused."""
        with self.assertRaises(ValueError):
            wal.WAL(self.dir, segment_bytes=1000)


class WriterTests(WALTestCase):
    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.lists(st.integers(0, 3 * PAGE), min_size=1, max_size=40), st.integers(1, 3),
           st.booleans())
    def test_many_records_across_segments(self, sizes, pages, batched):
        """Any sequence of record sizes reads back identically across segment boundaries."""
        d = tempfile.mkdtemp(dir=self.dir)
        w = wal.WAL(d, segment_bytes=PAGE * pages)
        recs = [rec_of(i, n) for i, n in enumerate(sizes)]
        if batched:
            w.log_many(recs[: len(recs) // 2])
            w.log_many(recs[len(recs) // 2:])
        else:
            for r in recs:
                w.log(r)
        got, corruption = self.read_all(d)
        self.assertIsNone(corruption)
        self.assertEqual(got, recs)
        w.close()
        for k in wal.list_segments(d):
            data = self.seg(k, d)
            fragments(data)   # every fragment checks out and stays inside its page
            self.assertEqual(len(data) % PAGE, 0)

    def test_reopen_starts_new_segment_and_appends(self):
        """Reopening a WAL starts a new segment after the last one; old records stay readable."""
        w = wal.WAL(self.dir, segment_bytes=PAGE)
        w.log(b"one")
        w.close()
        w = wal.WAL(self.dir, segment_bytes=PAGE)
        self.assertEqual(w.current_segment, 1)
        w.log(b"two")
        self.assertEqual(w.segments(), (0, 1))
        self.assertEqual(self.read_all()[0], [b"one", b"two"])

    def test_next_segment_and_truncate(self):
        """next_segment starts a numbered segment; truncate deletes older ones but never the current."""
        w = wal.WAL(self.dir, segment_bytes=PAGE * 4)
        w.log(b"a")
        self.assertEqual(w.next_segment(), 1)
        w.log(b"b")
        self.assertEqual(w.next_segment(), 2)
        w.truncate(2)
        self.assertEqual(wal.list_segments(self.dir), [2])
        w.truncate(10)
        self.assertEqual(wal.list_segments(self.dir), [2])
        self.assertEqual(w.dir, self.dir)

    def test_log_after_close_fails(self):
        """Logging to a closed WAL raises OSError instead of losing the record silently."""
        w = wal.WAL(self.dir, segment_bytes=PAGE)
        w.close()
        w.close()
        with self.assertRaises(OSError):
            w.log(b"x")
        with self.assertRaises(OSError):
            w.log_many([b"x"])

    def test_segment_range(self):
        """WALReader reads only the requested segment range."""
        w = wal.WAL(self.dir, segment_bytes=PAGE)
        for i in range(5):
            w.log(b"r%d" % i)
            w.next_segment()
        self.assertEqual(self.read_all(first=1, last=3)[0], [b"r1", b"r2", b"r3"])

    def test_missing_segment_is_an_error(self):
        """A gap in the segment numbers is reported, not silently skipped."""
        w = wal.WAL(self.dir, segment_bytes=PAGE)
        for i in range(3):
            w.log(b"r%d" % i)
            w.next_segment()
        os.unlink(os.path.join(self.dir, "00000001"))
        with self.assertRaises(WALCorruptionError):
            wal.WALReader(self.dir)


class CorruptionTests(WALTestCase):
    def build(self, sizes, segment_bytes=PAGE * 8):
        w = wal.WAL(self.dir, segment_bytes=segment_bytes)
        recs = [rec_of(i, n) for i, n in enumerate(sizes)]
        for r in recs:
            w.log(r)
        del w   # no close: the file ends where the last record ends, as after a crash
        return recs

    def test_truncated_tail_at_every_sampled_offset(self):
        """Cutting the last record anywhere returns all earlier records and flags the tail."""
        recs = self.build([100, 5000, 40000, 700, PAGE + 3000])
        path = os.path.join(self.dir, "00000000")
        data = self.seg(0)
        last_start = fragments(data)[-2][0]   # last record = first + last fragments
        self.assertEqual(fragments(data)[-2][1], 2)
        cuts = sorted(set(list(range(last_start, last_start + 40)) +
                          list(range(PAGE * 2 - 10, PAGE * 2 + 20)) +
                          list(range(last_start, len(data), 97)) + [len(data) - 1]))
        for cut in cuts:
            with open(path, "wb") as f:
                f.write(data[:cut])
            got, corruption = self.read_all()
            self.assertEqual(got, recs[:-1], "cut at %d" % cut)
            if cut == last_start:
                self.assertIsNone(corruption)
                continue
            self.assertIsInstance(corruption, WALCorruptionError, "cut at %d" % cut)
            self.assertIsInstance(corruption, CorruptionError)
            self.assertEqual(corruption.segment, 0)
            self.assertEqual(corruption.offset, last_start)
            self.assertEqual(corruption.path, path)

    def test_repair_then_reopen_and_append(self):
        """After repair the WAL reads clean, reopens, and new records follow the survivors."""
        recs = self.build([100, 5000, 40000, PAGE + 3000])
        data = self.seg(0)
        last_start = fragments(data)[-2][0]
        rng = random.Random(7)
        for cut in [last_start + 1, last_start + 7, last_start + 8, PAGE * 2 + 3, len(data) - 1] + \
                rng.sample(range(last_start + 1, len(data)), 8):
            shutil.rmtree(self.dir)
            os.makedirs(self.dir)
            with open(os.path.join(self.dir, "00000000"), "wb") as f:
                f.write(data[:cut])
            with open(os.path.join(self.dir, "00000001"), "wb") as f:
                f.write(frame(1, b"later segment"))
            got, corruption = self.read_all()
            self.assertEqual(got, recs[:-1])
            with self.assertLogs("urdar.engine.wal", "WARNING"):
                rep = wal.repair(self.dir, corruption)
            self.assertEqual((rep.segment, rep.offset, rep.deleted_segments), (0, last_start, [1]))
            self.assertEqual(self.read_all(), (recs[:-1], None))
            w = wal.WAL(self.dir, segment_bytes=PAGE * 8)
            w.log(b"after repair")
            w.close()
            self.assertEqual(self.read_all(), (recs[:-1] + [b"after repair"], None))

    def test_flipped_byte_keeps_earlier_records(self):
        """A flipped byte in the middle loses that record and later ones, never earlier ones."""
        recs = self.build([3000] * 80, segment_bytes=PAGE * 2)
        segs = wal.list_segments(self.dir)
        self.assertGreater(len(segs), 2)
        path = os.path.join(self.dir, "%08d" % segs[1])
        data = bytearray(self.seg(segs[1]))
        frags = fragments(bytes(data))
        starts = [f for f in frags if f[1] in (1, 2)]   # fragments that begin a record
        victim = starts[3]
        data[victim[0] + 7 + 10] ^= 0x40
        with open(path, "wb") as f:
            f.write(data)
        got, corruption = self.read_all()
        n_before = len(list(wal.SegmentReader(self.seg(segs[0])))) + 3
        self.assertEqual(len(got), n_before)
        self.assertEqual(got, recs[:n_before])
        self.assertEqual((corruption.segment, corruption.offset), (segs[1], victim[0]))
        self.assertIn("checksum", corruption.reason)
        # replay cuts it and deletes every later segment
        with self.assertLogs("urdar.engine.wal", "WARNING"):
            replay = wal.replay_records(self.dir)
            self.assertEqual(list(replay), recs[:n_before])
        self.assertEqual(replay.repaired.deleted_segments, segs[2:])
        self.assertEqual(wal.list_segments(self.dir), segs[:2])

    def test_bad_fragment_sequences(self):
        """Middle/last without first, and full after first, are corruption."""
        cases = [frame(3, b"m"), frame(4, b"l"), frame(2, b"f") + frame(1, b"x"),
                 frame(7, b"t"), frame(2, b"f") + frame(3, b"m")]
        for body in cases:
            with open(os.path.join(self.dir, "00000000"), "wb") as f:
                f.write(frame(1, b"ok") + body)
            got, corruption = self.read_all()
            self.assertEqual(got, [b"ok"], body)
            self.assertIsNotNone(corruption, body)
            self.assertEqual(corruption.offset, 9)

    def test_nonzero_padding_is_corruption(self):
        """Bytes after the zero padding inside a page are corruption."""
        with open(os.path.join(self.dir, "00000000"), "wb") as f:
            f.write(frame(1, b"ok") + b"\0" * 100 + b"\x05" + b"\0" * 10)
        got, corruption = self.read_all()
        self.assertEqual(got, [b"ok"])
        self.assertIn("padding", corruption.reason)

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.binary(max_size=200), st.integers(0, 5))
    def test_garbage_never_crashes(self, junk, nfrag):
        """Random bytes after valid fragments yield the valid records, then stop or continue cleanly."""
        good = b"".join(frame(1, b"r%d" % i) for i in range(nfrag))
        rd = wal.SegmentReader(good + junk)
        got = list(rd)
        self.assertEqual(got[:nfrag], [b"r%d" % i for i in range(nfrag)])


class CompressionTests(WALTestCase):
    def test_snappy_fragments_are_read(self):
        """A segment with snappy-compressed records (as Prometheus writes by default) reads back."""
        recs = [rec_of(i, 2000 + i * 5000) for i in range(6)] + [os.urandom(50000)]
        out = bytearray()
        for r in recs:
            comp = bytes(cramjam.snappy.compress_raw(r))
            pieces = [comp[i:i + 20000] for i in range(0, len(comp), 20000)]
            for j, piece in enumerate(pieces):
                room = PAGE - len(out) % PAGE
                if room < 7 + len(piece):
                    out += bytes(room)
                typ = 1 if len(pieces) == 1 else 2 if j == 0 else 4 if j == len(pieces) - 1 else 3
                out += frame(typ | 0x08, piece)
        out += frame(1, b"plain")
        with open(os.path.join(self.dir, "00000000"), "wb") as f:
            f.write(out)
        self.assertEqual(self.read_all(), (recs + [b"plain"], None))

    def test_zstd_is_refused_not_repaired(self):
        """A zstd-compressed record stops reading with a clear error and replay does not cut the WAL."""
        with open(os.path.join(self.dir, "00000000"), "wb") as f:
            f.write(frame(1, b"ok") + frame(1 | 0x10, b"zstd bytes"))
        got, corruption = self.read_all()
        self.assertEqual(got, [b"ok"])
        self.assertIsInstance(corruption, UnsupportedWALCompression)
        self.assertIn("zstd", str(corruption))
        size = os.path.getsize(os.path.join(self.dir, "00000000"))
        with self.assertRaises(UnsupportedWALCompression):
            list(wal.replay_records(self.dir))
        self.assertEqual(os.path.getsize(os.path.join(self.dir, "00000000")), size)

    def test_bad_snappy_is_corruption(self):
        """A snappy-flagged record that does not decompress is corruption."""
        with open(os.path.join(self.dir, "00000000"), "wb") as f:
            f.write(frame(1, b"ok") + frame(1 | 0x08, b"\xff\xff\xff\xff\xff\x01garbage"))
        got, corruption = self.read_all()
        self.assertEqual(got, [b"ok"])
        self.assertIsInstance(corruption, WALCorruptionError)


def series_rec(*refs):
    return records.encode_series([(r, encode_labels([("__name__", "m"), ("i", str(r))])) for r in refs])


def samples_rec(rows):
    return records.encode_samples(array("Q", [r for r, _, _ in rows]), array("q", [t for _, t, _ in rows]),
                                  array("d", [v for _, _, v in rows]))


class CheckpointTests(WALTestCase):
    def test_checkpoint_keeps_and_drops(self):
        """A checkpoint keeps live series, recent samples, their tombstones and latest metadata."""
        w = wal.WAL(self.dir, segment_bytes=PAGE)
        w.log(series_rec(1, 2, 3))
        w.log(samples_rec([(1, 10, 1.0), (2, 10, 2.0), (3, 10, 3.0)]))
        w.next_segment()
        w.log(samples_rec([(1, 20, 1.5), (2, 20, 2.5), (3, 20, 3.5)]))
        w.log(records.encode_tombstones([(1, 0, 5), (1, 15, 30), (2, 0, 100)]))
        w.log(records.encode_metadata([(1, 1, "s", "old help"), (2, 2, "", "")]))
        w.log(records.encode_metadata([(1, 1, "s", "new help")]))
        key = encode_labels([("trace_id", "x")])
        w.log(records.encode_exemplars([(1, 12, 1.0, key), (1, 25, 2.0, key), (2, 25, 3.0, key)]))
        w.next_segment()
        w.log(samples_rec([(1, 30, 9.0)]))
        cp = wal.checkpoint(self.dir, 0, 1, lambda ref: ref in (1, 3), 15)
        self.assertEqual(os.path.basename(cp), "checkpoint.00000001")
        self.assertEqual(wal.list_segments(self.dir), [2])
        got = list(wal.WALReader(checkpoint=cp))
        by_type = {}
        for rec in got:
            by_type.setdefault(records.record_type(rec), []).append(rec)
        self.assertEqual(records.decode_series(by_type[records.SERIES][0]),
                         records.decode_series(series_rec(1, 3)))
        samples = [tuple(zip(*map(list, records.decode_samples(r)))) for r in by_type[records.SAMPLES]]
        self.assertEqual(samples, [((1, 20, 1.5), (3, 20, 3.5))])
        self.assertEqual(records.decode_tombstones(by_type[records.TOMBSTONES][0]), [(1, 15, 30)])
        self.assertEqual(records.decode_metadata(by_type[records.METADATA][0]), [(1, 1, "s", "new help")])
        self.assertEqual([e[:3] for e in records.decode_exemplars(by_type[records.EXEMPLARS][0])],
                         [(1, 25, 2.0)])
        # replay reads the checkpoint, then the segments after it
        replay = list(wal.replay_records(self.dir))
        self.assertEqual(replay[:len(got)], got)
        self.assertEqual(replay[len(got):], [samples_rec([(1, 30, 9.0)])])

    def test_second_checkpoint_folds_in_the_first(self):
        """A later checkpoint starts from the previous one and replaces it."""
        w = wal.WAL(self.dir, segment_bytes=PAGE)
        w.log(series_rec(1, 2))
        w.log(samples_rec([(1, 10, 1.0), (2, 10, 2.0)]))
        w.next_segment()
        wal.checkpoint(self.dir, 0, 0, lambda ref: True, 0)
        w.log(series_rec(3))
        w.log(samples_rec([(3, 20, 3.0)]))
        w.next_segment()
        cp = wal.checkpoint(self.dir, 1, 1, lambda ref: ref != 2, 0)
        self.assertEqual(sorted(n for n in os.listdir(self.dir) if n.startswith("checkpoint")),
                         ["checkpoint.00000001"])
        self.assertEqual(wal.list_segments(self.dir), [2])
        series = [r for rec in wal.WALReader(checkpoint=cp) if rec[0] == 1
                  for r, _ in records.decode_series(rec)]
        self.assertEqual(series, [1, 3])
        self.assertIsNotNone(cp)

    def test_checkpoint_refuses_missing_segments(self):
        """A checkpoint over a range with a missing segment fails and leaves no temp directory."""
        w = wal.WAL(self.dir, segment_bytes=PAGE)
        w.log(series_rec(1))
        w.next_segment()
        w.next_segment()
        os.unlink(os.path.join(self.dir, "00000001"))
        with self.assertRaises(WALCorruptionError):
            wal.checkpoint(self.dir, 0, 1, lambda ref: True, 0)
        self.assertEqual([n for n in os.listdir(self.dir) if n.startswith("checkpoint")], [])

    def test_checkpoint_refuses_going_backwards(self):
        """Checkpointing segments older than the newest checkpoint is refused."""
        w = wal.WAL(self.dir, segment_bytes=PAGE)
        for _ in range(3):
            w.log(series_rec(1))
            w.next_segment()
        wal.checkpoint(self.dir, 0, 2, lambda ref: True, 0)
        with self.assertRaises(ValueError):
            wal.checkpoint(self.dir, 0, 1, lambda ref: True, 0)

    def test_corrupt_checkpoint_raises_on_replay(self):
        """Corruption inside a checkpoint is raised by replay, never cut away."""
        w = wal.WAL(self.dir, segment_bytes=PAGE)
        w.log(series_rec(1, 2))
        w.log(samples_rec([(1, 10, 1.0)]))
        w.next_segment()
        cp = wal.checkpoint(self.dir, 0, 0, lambda ref: True, 0)
        path = os.path.join(cp, "00000000")
        data = bytearray(open(path, "rb").read())
        data[12] ^= 1
        with open(path, "wb") as f:
            f.write(data)
        with self.assertRaises(WALCorruptionError):
            list(wal.replay_records(self.dir))
        self.assertEqual(open(path, "rb").read(), bytes(data))

    def test_replay_without_wal_dir_is_empty(self):
        """Replaying a directory with no segments yields nothing."""
        self.assertEqual(list(wal.replay_records(os.path.join(self.dir, "nope"))), [])


CHILD = textwrap.dedent("""
    import struct, sys
    from urdar.engine import wal
    w = wal.WAL(sys.argv[1], segment_bytes=64 * 1024)
    i = 0
    while True:
        w.log(struct.pack(">I", i) * (1 + i % 3000))
        sys.stdout.write("%d\\n" % i)
        sys.stdout.flush()
        i += 1
""")


class KillTests(WALTestCase):
    def test_acknowledged_records_survive_sigkill(self):
        """Every record whose log() returned before a SIGKILL is read back after the crash."""
        proc = subprocess.Popen([sys.executable, "-c", CHILD, self.dir], stdout=subprocess.PIPE,
                                cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
        acked = -1
        try:
            for line in proc.stdout:
                acked = int(line)
                if acked >= 1500:
                    break
        finally:
            proc.send_signal(signal.SIGKILL)
            rest = proc.stdout.read()
            proc.wait()
        for line in rest.split():
            acked = int(line)
        self.assertGreaterEqual(acked, 1500)
        got = list(wal.replay_records(self.dir))
        self.assertGreaterEqual(len(got), acked + 1)
        for i, rec in enumerate(got):
            self.assertEqual(rec, struct.pack(">I", i) * (1 + i % 3000))


if __name__ == "__main__":
    unittest.main()


class DiskFaultTests(WALTestCase):
    """Faults injected into the writer (urdar.engine.faults): every record log() acknowledged
    reads back, in order, once the disk works again."""

    def tearDown(self):
        faults.clear()

    def log_through(self, w, site, err, n=60, size=3000, fail_from=10, fail_times=3):
        acked = []
        for i in range(n):
            if i == fail_from:
                faults.inject(site, err, times=fail_times, under=self.dir)
            try:
                w.log(rec_of(i, size))
            except OSError as e:
                self.assertEqual(e.errno, err)
                continue
            acked.append(rec_of(i, size))
        self.assertEqual(faults.hits(site), fail_times)
        return acked

    def test_failed_writes_leave_no_partial_record(self):
        """A write that fails half-way (disk full, EIO, file too large) is cut off; later records follow it cleanly."""
        w = wal.WAL(self.dir, segment_bytes=PAGE * 2)
        acked = []
        for err in (errno.ENOSPC, errno.EIO, errno.EFBIG):
            acked += self.log_through(w, "wal_write", err, n=20, fail_from=5)
        w.close()
        self.assertEqual(self.read_all(), (acked, None))

    def test_failed_segment_fsync_is_retried(self):
        """When the fsync that closes a full segment fails, writes fail until it succeeds, then go on in the next segment."""
        w = wal.WAL(self.dir, segment_bytes=PAGE)
        acked = self.log_through(w, "wal_sync", errno.EIO, fail_from=0)
        self.assertGreater(len(wal.list_segments(self.dir)), 2)
        w.close()
        self.assertEqual(self.read_all(), (acked, None))

    def test_failed_segment_creation_is_retried(self):
        """When the next segment cannot be created, writes fail until it can; nothing acknowledged is lost."""
        w = wal.WAL(self.dir, segment_bytes=PAGE)
        acked = self.log_through(w, "wal_create", errno.ENOSPC, fail_from=0)
        w.close()
        self.assertEqual(self.read_all(), (acked, None))

    def test_fault_scoped_to_a_directory_given_relative(self):
        """A fault armed for a directory hits a WAL opened through a relative path to it, and no other WAL."""
        other = tempfile.mkdtemp(prefix="urdar-wal-other-")
        self.addCleanup(shutil.rmtree, other, True)
        cwd = os.getcwd()
        os.chdir(os.path.dirname(self.dir))
        self.addCleanup(os.chdir, cwd)
        w = wal.WAL(os.path.basename(self.dir), segment_bytes=PAGE)
        w2 = wal.WAL(other, segment_bytes=PAGE)
        faults.inject("wal_write", errno.EIO, under=self.dir)
        with self.assertRaises(OSError):
            w.log(b"x")
        w2.log(b"y")
        w.close()
        w2.close()
