"""Block chunk segment files: layout, refs, segment cutting, zero-copy reads and corruption."""
import os
import shutil
import struct
import tempfile
import unittest

from hypothesis import given, settings, strategies as st

from urdar.engine import chunkfile, encoding
from urdar.engine.chunkfile import ChunkReader, ChunkWriter
from urdar.engine.errors import CorruptionError


class _TmpDir(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="urdar-chunks-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def write(self, chunks, **kw):
        with ChunkWriter(self.dir, **kw) as w:
            return [w.write(enc, data) for enc, data in chunks]


class ChunkWriterTests(_TmpDir):
    def test_layout_matches_format(self):
        """A segment is the 8-byte header then uvarint len, encoding, data and CRC32C(encoding+data)."""
        refs = self.write([(1, b"abc"), (2, b"")])
        raw = open(os.path.join(self.dir, "000001"), "rb").read()
        self.assertEqual(raw[:8], bytes.fromhex("85BD40DD01000000"))
        self.assertEqual(refs, [8, 8 + 1 + 1 + 3 + 4])
        self.assertEqual(raw[8:13], b"\x03\x01abc")
        self.assertEqual(struct.unpack(">I", raw[13:17])[0], encoding.crc32c(b"\x01abc"))
        self.assertEqual(raw[17:19], b"\x00\x02")
        self.assertEqual(struct.unpack(">I", raw[19:23])[0], encoding.crc32c(b"\x02"))
        self.assertEqual(len(raw), 23)

    def test_long_chunk_uses_multibyte_length(self):
        """A 300-byte chunk's length is a 2-byte uvarint and the next ref accounts for it."""
        refs = self.write([(1, b"x" * 300), (1, b"y")])
        self.assertEqual(refs[1], 8 + 2 + 1 + 300 + 4)

    def test_new_segment_before_limit(self):
        """Chunks never span files: a new numbered file starts when the next record would not fit."""
        refs = self.write([(1, b"a" * 20)] * 5, segment_bytes=64)
        self.assertEqual(sorted(os.listdir(self.dir)), ["000001", "000002", "000003"])
        self.assertEqual([(r >> 32, r & 0xFFFFFFFF) for r in refs],
                         [(0, 8), (0, 34), (1, 8), (1, 34), (2, 8)])
        for name in os.listdir(self.dir):
            self.assertLessEqual(os.path.getsize(os.path.join(self.dir, name)), 64)

    def test_oversized_chunk_gets_its_own_file(self):
        """A chunk larger than the segment limit is still written, alone in a fresh file."""
        refs = self.write([(1, b"a"), (1, b"b" * 200), (1, b"c")], segment_bytes=64)
        self.assertEqual([r >> 32 for r in refs], [0, 1, 2])

    def test_segment_name(self):
        """Segment files are named with six digits starting at 000001."""
        self.assertEqual(chunkfile.segment_name(1), "000001")
        self.assertEqual(chunkfile.segment_name(123456), "123456")

    def test_write_after_close_fails(self):
        """Writing to a closed writer raises instead of silently dropping the chunk."""
        w = ChunkWriter(self.dir)
        w.write(1, b"a")
        w.close()
        with self.assertRaises(ValueError):
            w.write(1, b"b")


class ChunkReaderTests(_TmpDir):
    @settings(max_examples=30, deadline=None)
    @given(st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=200)), max_size=40),
           st.integers(40, 600))
    def test_round_trip(self, chunks, seg):
        """Every chunk written comes back byte for byte with its encoding, across segment cuts."""
        shutil.rmtree(self.dir)
        refs = self.write(chunks, segment_bytes=seg)
        with ChunkReader(self.dir, verify=True) as r:
            for ref, (enc, data) in zip(refs, chunks):
                self.assertEqual(r.chunk_bytes(ref), (enc, data))
            self.assertEqual(r.iter_refs(), refs)

    def test_buffer_types_written(self):
        """bytes, bytearray and memoryview chunk data are all accepted by the writer."""
        refs = self.write([(1, b"ab"), (1, bytearray(b"cd")), (1, memoryview(b"ef"))])
        with ChunkReader(self.dir) as r:
            self.assertEqual([r.chunk_bytes(x)[1] for x in refs], [b"ab", b"cd", b"ef"])

    def test_views_pin_the_mapping(self):
        """close() refuses while a chunk memoryview is alive, and succeeds once it is released."""
        refs = self.write([(1, b"hello")])
        r = ChunkReader(self.dir)
        enc, view = r.chunk(refs[0])
        self.assertEqual(bytes(view), b"hello")
        self.assertTrue(view.readonly)
        self.assertEqual(r.exported_views, 1)
        with self.assertRaises(BufferError):
            r.close()
        view.release()
        self.assertEqual(r.exported_views, 0)
        r.close()
        with self.assertRaises(ValueError):
            r.chunk(refs[0])

    def test_bad_refs(self):
        """Refs naming a missing segment, the header or a position past the end raise CorruptionError."""
        refs = self.write([(1, b"abc")])
        with ChunkReader(self.dir) as r:
            for bad in (1 << 32, 0, 4, refs[0] + 1000, refs[0] + 5):
                with self.assertRaises(CorruptionError, msg=hex(bad)):
                    r.chunk(bad)

    def test_crc_mismatch_detected(self):
        """A flipped data byte is caught when verification is on and ignored when it is off."""
        refs = self.write([(1, b"abcdef")])
        path = os.path.join(self.dir, "000001")
        raw = bytearray(open(path, "rb").read())
        raw[12] ^= 0x40
        open(path, "wb").write(raw)
        with ChunkReader(self.dir) as r:
            self.assertEqual(r.chunk_bytes(refs[0])[0], 1)
            with self.assertRaises(CorruptionError):
                r.chunk(refs[0], verify=True)
        with ChunkReader(self.dir, verify=True) as r:
            with self.assertRaises(CorruptionError):
                r.chunk(refs[0])

    def test_bad_header(self):
        """A segment with the wrong magic, version or a truncated header is refused on open."""
        self.write([(1, b"abc")])
        path = os.path.join(self.dir, "000001")
        good = open(path, "rb").read()
        for bad in (b"\x00" + good[1:], good[:4] + b"\x02" + good[5:], good[:5]):
            open(path, "wb").write(bad)
            with self.assertRaises(CorruptionError):
                ChunkReader(self.dir)

    def test_gap_in_segment_numbers(self):
        """Segment files must be numbered 000001..N; a gap means the refs would be wrong."""
        self.write([(1, b"a" * 20)] * 3, segment_bytes=40)
        os.rename(os.path.join(self.dir, "000002"), os.path.join(self.dir, "000005"))
        with self.assertRaises(CorruptionError):
            ChunkReader(self.dir)

    def test_empty_directory(self):
        """A directory without segments opens, and any ref is reported as corrupt."""
        with ChunkReader(self.dir) as r:
            self.assertEqual(r.num_segments, 0)
            with self.assertRaises(CorruptionError):
                r.chunk(8)
