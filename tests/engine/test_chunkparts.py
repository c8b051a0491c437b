"""engine/querier's store-gateway helpers: a series' chunks over several blocks decoded in one
pass (decode_chunk_parts) and the slice of chunks a time range needs (chunk_slice)."""
import unittest
from array import array

from urdar.engine.errors import CorruptionError
from urdar.engine.querier import chunk_slice, decode_chunk_parts
from urdar.engine.xorchunk import XORChunk

ALL = (-(1 << 63), (1 << 63) - 1)


def chunk(samples):
    c = XORChunk()
    for t, v in samples:
        c.append(t, v)
    return 1, bytes(c.bytes())


def run(t0, n, step=1000):
    return [(t0 + i * step, float(t0 + i)) for i in range(n)]


class DecodeChunkPartsTests(unittest.TestCase):

    def test_blocks_in_time_order_are_laid_end_to_end(self):
        a, b, c = run(0, 120), run(120_000, 120), run(240_000, 30)
        got = decode_chunk_parts([[chunk(a), chunk(b)], [chunk(c)]], *ALL)
        self.assertEqual((list(got[0]), list(got[1])),
                         ([t for t, _ in a + b + c], [v for _, v in a + b + c]))
        self.assertEqual((got[0].typecode, got[1].typecode), ("q", "d"))

    def test_only_samples_in_range(self):
        a, b = run(0, 120), run(120_000, 120)
        ts, vs = decode_chunk_parts([[chunk(a)], [chunk(b)]], 100_000, 130_000)
        self.assertEqual(list(ts), list(range(100_000, 130_001, 1000)))
        want = dict(a + b)
        self.assertEqual(list(vs), [want[t] for t in ts])
        self.assertEqual([list(x) for x in decode_chunk_parts([[chunk(a)]], 500_000, 600_000)],
                         [[], []])

    def test_overlapping_or_unordered_chunks_are_left_to_the_caller(self):
        a = run(0, 120)
        self.assertIsNone(decode_chunk_parts([[chunk(a)], [chunk(run(60_000, 120))]], *ALL))
        self.assertIsNone(decode_chunk_parts([[chunk(run(200_000, 10)), chunk(a)]], *ALL))
        # a repeated timestamp at a block boundary is an overlap too
        self.assertIsNone(decode_chunk_parts([[chunk(a)], [chunk(run(119_000, 5))]], *ALL))

    def test_histogram_chunks_are_left_to_the_caller(self):
        self.assertIsNone(decode_chunk_parts([[chunk(run(0, 5)), (2, b"\x00\x01")]], *ALL))

    def test_damaged_chunk_raises(self):
        enc, data = chunk(run(0, 120))
        with self.assertRaises(CorruptionError):
            decode_chunk_parts([[(enc, data[:len(data) // 2])]], *ALL)
        with self.assertRaises(CorruptionError):
            decode_chunk_parts([[(enc, b"\x00")]], *ALL)


class ChunkSliceTests(unittest.TestCase):

    def test_ordered_chunks(self):
        mints = array("q", [0, 100, 200, 300])
        maxts = array("q", [90, 190, 290, 390])
        self.assertEqual(chunk_slice(mints, maxts, *ALL), (0, 4))
        self.assertEqual(chunk_slice(mints, maxts, 95, 199), (1, 2))
        self.assertEqual(chunk_slice(mints, maxts, 90, 200), (0, 3))
        self.assertEqual(chunk_slice(mints, maxts, 400, 500), (4, 4))
        self.assertEqual(chunk_slice(mints, maxts, -10, -1), (0, 0))
        self.assertEqual(chunk_slice(array("q"), array("q"), *ALL), (0, 0))

    def test_unordered_chunks_give_none(self):
        self.assertIsNone(chunk_slice(array("q", [100, 0]), array("q", [190, 90]), *ALL))
        self.assertIsNone(chunk_slice(array("q", [0, 10]), array("q", [500, 90]), *ALL))
        with self.assertRaises(ValueError):
            chunk_slice(array("q", [0]), array("q", [1, 2]), *ALL)


if __name__ == "__main__":
    unittest.main()
