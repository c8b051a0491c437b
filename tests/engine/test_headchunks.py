"""Head chunk files (chunks_head/): m-mapped storage for the head's closed chunks."""
import os
import shutil
import struct
import tempfile
import unittest

from hypothesis import given, settings, strategies as st

from urdar.engine import encoding, headchunks, xorchunk
from urdar.engine.errors import CorruptionError


def entry_bytes(series_ref, mint, maxt, enc, data):
    """The on-disk entry, built independently from the format description."""
    body = struct.pack(">QqqB", series_ref, mint, maxt, enc) + encoding.encode_uvarint(len(data)) + data
    return body + struct.pack(">I", encoding.crc32c(body))


class HeadChunkFilesTests(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="urdar-hc-")
        # Cleanups run last-in first-out: this check runs after every close() below.
        self.addCleanup(self.assert_no_open_maps)
        self.addCleanup(shutil.rmtree, self.dir, True)

    def assert_no_open_maps(self):
        self.assertEqual(headchunks.open_maps(), 0, "a test leaked a mapping")

    def open(self, **kw):
        hc = headchunks.HeadChunkFiles(self.dir, **kw)
        self.addCleanup(hc.close)
        return hc

    def test_write_get_round_trip_and_file_layout(self):
        """A written chunk reads back by ref, and the file on disk is the Prometheus layout."""
        hc = self.open()
        chunk = xorchunk.encode_xor([1000, 2000, 3000], [1.0, 2.0, 2.5])
        ref = hc.write(42, 1000, 3000, 1, chunk)
        self.assertEqual(ref, (1 << 32) | 8)
        self.assertEqual(hc.get(ref), (1, chunk))
        hc.close()
        with open(os.path.join(self.dir, "000001"), "rb") as f:
            raw = f.read()
        self.assertEqual(raw[:8], bytes.fromhex("0130BC91") + b"\x01\x00\x00\x00")
        self.assertEqual(raw[8:], entry_bytes(42, 1000, 3000, 1, chunk))

    def test_refs_encode_file_and_offset_across_rotation(self):
        """With a small max size, chunks spill into new files and refs name (file, offset)."""
        hc = self.open(max_file_bytes=300)
        refs = []
        for i in range(20):
            data = bytes([i]) * (10 + i)
            refs.append((hc.write(i, i * 10, i * 10 + 9, 1, data), data))
        self.assertGreater(len(hc.files), 3)
        for ref, data in refs:
            self.assertEqual(hc.get(ref), (1, data))
        seq, offset = refs[-1][0] >> 32, refs[-1][0] & 0xFFFFFFFF
        with open(os.path.join(self.dir, "%06d" % seq), "rb") as f:
            f.seek(offset)
            self.assertEqual(f.read(8), struct.pack(">Q", 19))
        for name in os.listdir(self.dir):
            size = os.path.getsize(os.path.join(self.dir, name))
            self.assertLessEqual(size, 300)
        self.assertEqual(refs[0][0] >> 32, 1)

    def test_oversized_chunk_gets_its_own_file(self):
        """A chunk bigger than the max file size is still stored, alone in a larger file."""
        hc = self.open(max_file_bytes=100)
        big = os.urandom(500)
        ref = hc.write(1, 0, 1, 1, big)
        self.assertEqual(hc.get(ref), (1, big))
        small = hc.write(2, 0, 1, 1, b"x")
        self.assertNotEqual(ref >> 32, small >> 32)

    def test_bad_refs_are_key_errors(self):
        """Refs to missing files, offsets inside the header, or past the end raise KeyError."""
        hc = self.open()
        ref = hc.write(1, 0, 1, 1, b"abc")
        for bad in (0, (2 << 32) | 8, (1 << 32) | 3, (1 << 32) | 10_000, ref + 1_000_000):
            with self.subTest(ref=bad), self.assertRaises(KeyError):
                hc.get(bad)

    def test_iter_chunks_yields_everything_in_order(self):
        """iter_chunks yields every entry with its ref, series, times, encoding and bytes."""
        hc = self.open(max_file_bytes=200)
        written = []
        for i in range(15):
            data = os.urandom(i * 3)
            ref = hc.write(1000 + i, -i, i, 1 | (0x80 if i % 2 else 0), data)
            written.append((ref, 1000 + i, -i, i, 1 | (0x80 if i % 2 else 0), data))
        self.assertEqual(list(hc.iter_chunks()), written)
        self.assertIsNone(hc.corrupt)

    def test_reopen_after_close(self):
        """Closed files reopen read-only with all entries, and new writes start a new file."""
        hc = self.open(max_file_bytes=250)
        written = [(hc.write(i, i, i + 5, 1, bytes(i)), i) for i in range(12)]
        files_before = [seq for seq, _, _ in hc.files]
        hc.close()
        self.assertTrue(hc.closed)
        with self.assertRaises(ValueError):
            hc.write(1, 1, 1, 1, b"")
        again = self.open(max_file_bytes=250)
        self.assertEqual([seq for seq, _, _ in again.files], files_before)
        self.assertEqual([(r, s) for r, s, *_ in again.iter_chunks()], written)
        for ref, i in written:
            self.assertEqual(again.get(ref), (1, bytes(i)))
        ref = again.write(99, 0, 0, 1, b"new")
        self.assertEqual(ref >> 32, files_before[-1] + 1)
        self.assertIsNone(again.corrupt)

    def test_crc_corruption_stops_iteration(self):
        """A flipped byte is reported as corrupt at that entry; earlier entries still come out."""
        hc = self.open()
        refs = [hc.write(i, 0, 10, 1, b"chunk-%d" % i) for i in range(5)]
        hc.close()
        path = os.path.join(self.dir, "000001")
        with open(path, "r+b") as f:
            f.seek((refs[3] & 0xFFFFFFFF) + 30)
            b = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([b[0] ^ 0xFF]))
        again = self.open()
        self.assertIsInstance(again.corrupt, CorruptionError)
        self.assertEqual(again.corrupt.offset, refs[3] & 0xFFFFFFFF)
        got = [r for r, *_ in again.iter_chunks()]
        self.assertEqual(got, refs[:3])
        self.assertIsInstance(again.corrupt, CorruptionError)
        self.assertIn("CRC", again.corrupt.reason)
        with self.assertRaises(KeyError):
            again.get(refs[4])

    def test_corruption_in_live_file_detected(self):
        """iter_chunks re-verifies CRCs, so bytes changed after writing are caught."""
        hc = self.open()
        refs = [hc.write(i, 0, 10, 1, b"abcdef") for i in range(3)]
        hc.cut_file()
        with open(os.path.join(self.dir, "000001"), "r+b") as f:
            f.seek((refs[1] & 0xFFFFFFFF) + 2)
            f.write(b"\xEE")
        self.assertEqual([r for r, *_ in hc.iter_chunks()], refs[:1])
        self.assertIsNotNone(hc.corrupt)

    def test_torn_tail_and_zero_tail(self):
        """A half-written last entry is corruption; a zero-filled preallocated tail is a clean end."""
        hc = self.open()
        refs = [hc.write(i, 0, 10, 1, b"0123456789") for i in range(3)]
        hc.close()
        path = os.path.join(self.dir, "000001")
        size = os.path.getsize(path)
        with open(path, "r+b") as f:
            f.truncate(size + 4096)             # what a crash leaves: zeros after the data
        again = self.open()
        self.assertIsNone(again.corrupt)
        self.assertEqual([r for r, *_ in again.iter_chunks()], refs)
        again.close()
        with open(path, "r+b") as f:
            f.truncate(size - 3)                # torn last entry
        third = self.open()
        self.assertEqual([r for r, *_ in third.iter_chunks()], refs[:2])
        self.assertIn("torn", third.corrupt.reason)

    def test_bad_header_reported(self):
        """A file with the wrong magic is reported corrupt instead of being read."""
        with open(os.path.join(self.dir, "000001"), "wb") as f:
            f.write(b"\x85\xbd\x40\xdd\x01\x00\x00\x00" + b"\x00" * 40)
        hc = self.open()
        self.assertIsNotNone(hc.corrupt)
        self.assertEqual(list(hc.iter_chunks()), [])
        self.assertIn("header", hc.corrupt.reason)

    def test_remove_files_before(self):
        """Files whose chunks all end before mint are deleted; the current file is kept."""
        hc = self.open(max_file_bytes=150)
        refs = [hc.write(i, i * 100, i * 100 + 99, 1, b"z" * 40) for i in range(10)]
        seqs = {r >> 32 for r in refs}
        self.assertGreater(len(seqs), 3)
        cutoff = 500
        expect_gone = {seq for seq in seqs
                       if seq != hc.current_seq and
                       max(i * 100 + 99 for i, r in enumerate(refs) if r >> 32 == seq) < cutoff}
        self.assertTrue(expect_gone)
        self.assertEqual(hc.remove_files_before(cutoff), len(expect_gone))
        for i, ref in enumerate(refs):
            if ref >> 32 in expect_gone:
                with self.assertRaises(KeyError):
                    hc.get(ref)
                self.assertFalse(os.path.exists(os.path.join(self.dir, "%06d" % (ref >> 32))))
            else:
                self.assertEqual(hc.get(ref), (1, b"z" * 40))
        self.assertEqual(hc.remove_files_before(2**63 - 1), len(seqs) - len(expect_gone) - 1)
        self.assertEqual([seq for seq, _, _ in hc.files], [hc.current_seq])
        newer = hc.write(77, 5000, 5001, 1, b"after")
        self.assertEqual(hc.get(newer), (1, b"after"))

    def test_reset_deletes_everything(self):
        """reset() removes every file and restarts numbering at 000001."""
        hc = self.open(max_file_bytes=120)
        for i in range(6):
            hc.write(i, 0, 0, 1, b"q" * 30)
        hc.reset()
        self.assertEqual(os.listdir(self.dir), [])
        self.assertEqual(hc.files, [])
        self.assertEqual(hc.write(1, 0, 0, 1, b"w"), (1 << 32) | 8)

    def test_close_truncates_to_used_size(self):
        """The preallocated file shrinks to its contents on close, and maps are released."""
        hc = self.open()
        hc.write(1, 0, 0, 1, b"abc")
        self.assertEqual(headchunks.open_maps(), 1)
        path = os.path.join(self.dir, "000001")
        self.assertEqual(os.path.getsize(path), 128 << 20)   # sparse preallocation
        hc.close()
        self.assertEqual(os.path.getsize(path), 8 + 25 + 1 + 3 + 4)
        self.assertEqual(headchunks.open_maps(), 0)

    def test_every_buffer_type_written(self):
        """write() accepts bytes, bytearray and memoryview chunk data."""
        hc = self.open()
        for data in (b"abc", bytearray(b"def"), memoryview(b"xghi")[1:], b""):
            self.assertEqual(hc.get(hc.write(1, 0, 0, 1, data)), (1, bytes(data)))

    @settings(max_examples=30, deadline=None)
    @given(st.lists(st.tuples(st.integers(0, 2**64 - 1), st.integers(-(2**63), 2**63 - 1),
                              st.integers(0, 255), st.binary(max_size=300)), max_size=30),
           st.integers(400, 2000))
    def test_round_trip_property(self, entries, max_file_bytes):
        """Any entries round-trip through write/get, iter_chunks, and a reopen."""
        sub = tempfile.mkdtemp(dir=self.dir)
        hc = headchunks.HeadChunkFiles(sub, max_file_bytes=max_file_bytes)
        try:
            refs = [hc.write(s, t, t, e, d) for s, t, e, d in entries]
            for ref, (s, t, e, d) in zip(refs, entries):
                self.assertEqual(hc.get(ref), (e, d))
        finally:
            hc.close()
        again = headchunks.HeadChunkFiles(sub, max_file_bytes=max_file_bytes)
        try:
            self.assertEqual(list(again.iter_chunks()),
                             [(r, s, t, t, e, d) for r, (s, t, e, d) in zip(refs, entries)])
        finally:
            again.close()


if __name__ == "__main__":
    unittest.main()
