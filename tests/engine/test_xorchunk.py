"""XOR float chunks: byte compatibility with Prometheus' encoding 1, round trips, corruption."""
import ctypes
import math
import mmap
import random
import struct
import tempfile
import unittest
from array import array

from hypothesis import given, settings, strategies as st

from tests.support import xor_oracle
from urdar.engine import xorchunk
from urdar.engine.errors import CorruptionError

STALE = xor_oracle.bits_float(xor_oracle.STALE_NAN_BITS)
INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)


def bits(values):
    return [xor_oracle.float_bits(v) for v in values]


def special_floats():
    return st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from([0.0, -0.0, math.inf, -math.inf, math.nan, STALE, 1.0, 1e-310]),
        st.integers(min_value=0, max_value=2**64 - 1).map(xor_oracle.bits_float),
    )


def timestamps(n_min=1, n_max=240):
    """Realistic scrapes with jitter, constant steps, and wild int64 walks."""
    scrape = st.builds(
        lambda start, step, jitter: [start + i * step + j for i, j in enumerate(jitter)],
        st.integers(min_value=-(2**40), max_value=2**41),
        st.sampled_from([1, 15000, 60000, 30]),
        st.lists(st.integers(min_value=-600000, max_value=600000), min_size=n_min, max_size=n_max),
    )
    wild = st.lists(INT64, min_size=n_min, max_size=n_max)
    equal = st.builds(lambda t, n: [t] * n, INT64, st.integers(min_value=n_min, max_value=n_max))
    return st.one_of(scrape, wild, equal)


@st.composite
def series(draw):
    ts = draw(timestamps())
    vals = draw(st.one_of(
        st.lists(special_floats(), min_size=len(ts), max_size=len(ts)),
        st.builds(lambda base, incs: [base + sum(incs[:i + 1]) for i in range(len(ts))],
                  st.floats(min_value=-1e6, max_value=1e6),
                  st.lists(st.sampled_from([0.0, 1.0, 0.5, 3.25, 100.0]), min_size=len(ts), max_size=len(ts))),
    ))
    return ts, vals


class XORChunkEncodingTests(unittest.TestCase):
    def test_two_sample_chunk_exact_bytes(self):
        """A 2-sample chunk is laid out as header, varint t0, raw v0, uvarint delta, XOR block."""
        data = xorchunk.encode_xor([1000, 2000], [1.0, 2.0])
        # 0002 | zigzag(1000)=d00f | 3ff0... | uvarint 1000 = e807 | 11 00001 001011 11111111111
        self.assertEqual(data.hex(), "0002" "d00f" "3ff0000000000000" "e807" "c25fff")

    def test_single_sample_and_empty_chunk(self):
        """An empty chunk is just a zero header; one sample adds varint t and 8 raw value bytes."""
        self.assertEqual(xorchunk.encode_xor([], []), b"\x00\x00")
        self.assertEqual(xorchunk.encode_xor([-1], [STALE]).hex(), "0001" "01" "7ff0000000000002")

    def test_dod_bucket_boundaries_match_oracle(self):
        """Delta-of-delta values at each bucket edge pick the same bucket as Prometheus."""
        for dod in [0, 1, -1, 8192, 8193, -8191, -8192, 65536, 65537, -65535, -65536,
                    524288, 524289, -524287, -524288, 2**40, -(2**40)]:
            ts = [0, 1000, 2000 + dod, 3000 + dod]
            with self.subTest(dod=dod):
                self.assertEqual(xorchunk.encode_xor(ts, [1.0] * 4), xor_oracle.encode(ts, [1.0] * 4))
                data = xorchunk.encode_xor(ts, [1.0] * 4)
                self.assertEqual(list(xorchunk.decode_xor(data)[0]), ts)
                self.assertEqual(xor_oracle.decode(data)[0], ts)

    def test_dod_zero_is_one_bit(self):
        """Regular 15 s scrapes with a constant value cost 2 bits per sample after the first two."""
        ts = [i * 15000 for i in range(120)]
        data = xorchunk.encode_xor(ts, [5.0] * 120)
        # header, varint(0), raw v0, uvarint(15000), then 1 value bit + 118 * (1 dod bit + 1 value bit).
        self.assertEqual(len(data), 2 + 1 + 8 + 2 + math.ceil((1 + 118 * 2) / 8))

    def test_leading_zero_clamp_and_64_sigbits(self):
        """XOR deltas with >31 leading zeros or all 64 bits significant encode like the oracle."""
        vals = [xor_oracle.bits_float(b) for b in (0, 1, 3, 2**63 | 1, 0, 2**40, 2**40 + 2**39)]
        ts = list(range(len(vals)))
        data = xorchunk.encode_xor(ts, vals)
        self.assertEqual(data, xor_oracle.encode(ts, vals))
        self.assertEqual(bits(xorchunk.decode_xor(data)[1]), bits(vals))

    @settings(max_examples=300, deadline=None)
    @given(series())
    def test_matches_oracle_bytes_and_round_trips(self, s):
        """Any samples encode byte-identically to the reference and decode bit-exactly."""
        ts, vals = s
        data = xorchunk.encode_xor(ts, vals)
        self.assertEqual(data, xor_oracle.encode(ts, vals))
        got_ts, got_vs = xorchunk.decode_xor(data)
        self.assertEqual(list(got_ts), ts)
        self.assertEqual(bits(got_vs), bits(vals))
        oracle_ts, oracle_bits = xor_oracle.decode(data)
        self.assertEqual((oracle_ts, oracle_bits), (ts, bits(vals)))

    @settings(max_examples=100, deadline=None)
    @given(series())
    def test_appender_prefix_is_always_a_complete_chunk(self, s):
        """After every append, the chunk bytes decode to exactly the samples appended so far."""
        ts, vals = s
        chunk = xorchunk.XORChunk()
        for i, (t, v) in enumerate(zip(ts[:40], vals[:40])):
            chunk.append(t, v)
            self.assertEqual(chunk.num_samples, i + 1)
            self.assertEqual(len(chunk), len(chunk.bytes()))
            got_ts, got_vs = xorchunk.decode_xor(chunk.bytes())
            self.assertEqual(list(got_ts), ts[:i + 1])
            self.assertEqual(bits(got_vs), bits(vals[:i + 1]))

    @settings(max_examples=200, deadline=None)
    @given(series())
    def test_exact_room_is_what_the_append_writes(self, s):
        """The head sizes open chunks by xor_app_need: XORChunk.append reserves exactly that and
        raises if the append wrote a different number of bytes; the bytes equal encode_xor's."""
        ts, vals = s
        chunk = xorchunk.XORChunk()
        for t, v in zip(ts, vals):
            chunk.append(t, v)
        self.assertEqual(chunk.bytes(), xorchunk.encode_xor(ts, vals))

    def test_stale_marker_and_nan_payloads_survive(self):
        """Stale markers and arbitrary NaN payloads come back with identical bits."""
        payloads = [STALE, math.nan, xor_oracle.bits_float(0xFFF8000000000001),
                    xor_oracle.bits_float(0x7FF0000000000001), -0.0, math.inf, -math.inf, STALE]
        ts = [i * 15000 for i in range(len(payloads))]
        got_ts, got_vs = xorchunk.decode_xor(xorchunk.encode_xor(ts, payloads))
        self.assertEqual(bits(got_vs), bits(payloads))

    def test_append_many_equals_single_appends(self):
        """Bulk appends from array buffers give the same bytes as one-by-one appends."""
        rnd = random.Random(7)
        ts = array("q", [1_700_000_000_000 + i * 15000 + rnd.randint(-50, 50) for i in range(240)])
        vs = array("d", [rnd.random() * 100 for _ in range(240)])
        one = xorchunk.XORChunk()
        for t, v in zip(ts, vs):
            one.append(t, v)
        many = xorchunk.XORChunk()
        many.append_many(ts, vs)
        self.assertEqual(one.bytes(), many.bytes())
        self.assertEqual(many.data, xorchunk.encode_xor(ts, vs))
        self.assertEqual(bytes(many), many.bytes())

    def test_reset_empties_the_chunk(self):
        """reset() leaves an empty chunk that encodes the next samples from scratch."""
        chunk = xorchunk.XORChunk()
        chunk.append_many(array("q", range(0, 200000, 100)), array("d", [float(i) for i in range(2000)]))
        chunk.reset()
        self.assertEqual(chunk.bytes(), b"\x00\x00")
        chunk.append(1000, 1.0)
        chunk.append(2000, 2.0)
        self.assertEqual(chunk.bytes(), xorchunk.encode_xor([1000, 2000], [1.0, 2.0]))

    def test_full_chunk_refuses_more(self):
        """A chunk stops at 65535 samples (the header's limit) with OverflowError."""
        chunk = xorchunk.XORChunk()
        chunk.append_many(array("q", range(65535)), array("d", [0.0]) * 65535)
        with self.assertRaises(OverflowError):
            chunk.append(70000, 1.0)
        self.assertEqual(chunk.num_samples, 65535)
        self.assertEqual(len(xorchunk.decode_xor(chunk.bytes())[0]), 65535)

    def test_length_mismatch_refused(self):
        """Timestamps and values of different lengths are refused."""
        with self.assertRaises(ValueError):
            xorchunk.encode_xor([1, 2], [1.0])

    def test_appender_state_is_compact(self):
        """The per-series appender state is 48 bytes."""
        self.assertEqual(xorchunk.sizeof_appender(), 48)


class XORChunkDecodingTests(unittest.TestCase):
    def setUp(self):
        self.ts = [1_700_000_000_000 + i * 15000 for i in range(120)]
        self.vals = [float(i * i) for i in range(120)]
        self.data = xorchunk.encode_xor(self.ts, self.vals)

    def test_every_buffer_type(self):
        """bytes, bytearray, memoryview and mmap decode to the same samples."""
        with tempfile.TemporaryFile() as f:
            f.write(self.data)
            f.flush()
            mm = mmap.mmap(f.fileno(), len(self.data), access=mmap.ACCESS_READ)
            try:
                for buf in (self.data, bytearray(self.data), memoryview(self.data), mm):
                    with self.subTest(type=type(buf).__name__):
                        ts, vs = xorchunk.decode_xor(buf)
                        self.assertEqual(list(ts), self.ts)
                        self.assertEqual(list(vs), self.vals)
                        self.assertEqual(xorchunk.num_samples(buf), 120)
                        self.assertEqual(len(list(xorchunk.XORIterator(buf))), 120)
            finally:
                del buf
                mm.close()

    def test_decode_range_is_inclusive(self):
        """decode_xor_range returns exactly the samples with mint <= t <= maxt."""
        mint, maxt = self.ts[10], self.ts[20]
        ts, vs = xorchunk.decode_xor_range(self.data, mint, maxt)
        self.assertEqual(list(ts), self.ts[10:21])
        self.assertEqual(list(vs), self.vals[10:21])
        self.assertEqual(len(xorchunk.decode_xor_range(self.data, 0, 5)[0]), 0)
        self.assertEqual(list(xorchunk.decode_xor_range(self.data, -(2**63), 2**63 - 1)[0]), self.ts)

    def test_iterator_next_and_python_iteration(self):
        """next() walks the samples and returns False at the end; iteration yields (t, v)."""
        it = xorchunk.XORIterator(self.data)
        self.assertTrue(it.next())
        self.assertEqual((it.t, it.v), (self.ts[0], self.vals[0]))
        self.assertEqual(list(it), list(zip(self.ts[1:], self.vals[1:])))
        self.assertFalse(it.next())

    def test_seek(self):
        """seek(t) lands on the first sample at or after t, stays put if already there, and ends."""
        it = xorchunk.XORIterator(self.data)
        self.assertTrue(it.seek(self.ts[5] - 1))
        self.assertEqual(it.t, self.ts[5])
        self.assertTrue(it.seek(self.ts[5]))
        self.assertEqual(it.t, self.ts[5])
        self.assertTrue(it.seek(0))
        self.assertEqual(it.t, self.ts[5])
        self.assertTrue(it.seek(self.ts[119]))
        self.assertEqual(it.v, self.vals[119])
        self.assertFalse(xorchunk.XORIterator(self.data).seek(self.ts[119] + 1))
        first = xorchunk.XORIterator(self.data)
        self.assertTrue(first.seek(-(2**63)))
        self.assertEqual(first.t, self.ts[0])

    def test_empty_chunk_iterates_nothing(self):
        """A header announcing zero samples decodes to nothing."""
        self.assertEqual(list(xorchunk.XORIterator(b"\x00\x00")), [])
        self.assertEqual(len(xorchunk.decode_xor(b"\x00\x00")[0]), 0)

    def test_truncation_is_corruption(self):
        """Every truncated prefix of a chunk raises CorruptionError (a ValueError), never crashes."""
        for cut in range(len(self.data)):
            with self.subTest(cut=cut):
                with self.assertRaises(ValueError):
                    xorchunk.decode_xor(self.data[:cut])
                with self.assertRaises(CorruptionError):
                    list(xorchunk.XORIterator(self.data[:cut]))

    def test_inflated_header_is_corruption(self):
        """A header claiming more samples than the bitstream holds is reported as corrupt."""
        bad = struct.pack(">H", 1000) + self.data[2:]
        with self.assertRaises(CorruptionError) as cm:
            xorchunk.decode_xor(bad)
        self.assertGreater(cm.exception.offset, 0)
        with self.assertRaises(CorruptionError):
            xorchunk.decode_xor_range(bad, 0, 1)

    def test_bad_window_is_corruption(self):
        """A value window with leading + sigbits > 64 is corrupt rather than misread."""
        # t0=0, v0=0, delta 1, then '11' leading=31 sigbits=63 -> 94 > 64.
        stream = "11" + format(31, "05b") + format(63, "06b") + "0" * 70
        stream += "0" * (-len(stream) % 8)
        body = bytes(int(stream[i:i + 8], 2) for i in range(0, len(stream), 8))
        bad = b"\x00\x02" + b"\x00" + b"\x00" * 8 + b"\x01" + body
        with self.assertRaises(CorruptionError):
            xorchunk.decode_xor(bad)
        with self.assertRaises(ValueError):
            xor_oracle.decode(bad)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(min_size=0, max_size=64))
    def test_random_bytes_never_crash(self, junk):
        """Arbitrary bytes either decode like the oracle or raise ValueError."""
        try:
            ts, vs = xorchunk.decode_xor(junk)
        except ValueError:
            with self.assertRaises(ValueError):
                xor_oracle.decode(junk)
            return
        self.assertEqual((list(ts), bits(vs)), xor_oracle.decode(junk))

    @settings(max_examples=100, deadline=None)
    @given(st.integers(min_value=0, max_value=10**6), st.integers(min_value=0, max_value=255))
    def test_bit_flips_never_crash(self, where, byte):
        """Corrupting one byte of a real chunk decodes to something or raises ValueError."""
        bad = bytearray(self.data)
        bad[2 + where % (len(bad) - 2)] = byte
        try:
            ts, vs = xorchunk.decode_xor(bytes(bad))
        except ValueError:
            return
        self.assertEqual(len(ts), len(vs))

    @settings(max_examples=300, deadline=None)
    @given(series(), st.lists(st.tuples(st.integers(min_value=0, max_value=10**6),
                                        st.integers(min_value=0, max_value=255)), max_size=3),
           st.integers(min_value=0, max_value=10**6))
    def test_damaged_long_chunks_decode_like_the_oracle(self, s, flips, cut):
        """Chunks long enough for the bulk decoder's unchecked region, with bytes changed and
        the end cut off: decode_xor and decode_xor_range give exactly what the oracle's
        bit-by-bit reader gives, or raise where it raises."""
        c = xorchunk.XORChunk()
        c.append_many(*s)
        bad = bytearray(c.bytes())
        for where, byte in flips:
            bad[2 + where % max(1, len(bad) - 2)] = byte
        if cut % 3 == 0:
            del bad[len(bad) - cut % 40:]
        bad = bytes(bad)
        try:
            want = xor_oracle.decode(bad)
        except ValueError:
            with self.assertRaises(ValueError):
                xorchunk.decode_xor(bad)
            with self.assertRaises(ValueError):
                xorchunk.decode_xor_range(bad, -(2**63), 2**63 - 1)
            return
        ts, vs = xorchunk.decode_xor(bad)
        self.assertEqual((list(ts), bits(vs)), want)
        lo = want[0][len(want[0]) // 3] if want[0] else 0
        ts, vs = xorchunk.decode_xor_range(bad, lo, 2**63 - 1)
        self.assertEqual((list(ts), bits(vs)), ([t for t in want[0] if t >= lo],
                                               [b for t, b in zip(*want) if t >= lo]))

    def test_reading_stays_inside_the_buffer(self):
        """Truncated chunks ending right before a PROT_NONE guard page raise instead of crashing."""
        size = mmap.PAGESIZE
        mm = mmap.mmap(-1, size * 2)
        holder = ctypes.c_char.from_buffer(mm)
        addr = ctypes.addressof(holder)
        del holder
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        self.assertEqual(libc.mprotect(addr + size, size, 0), 0)
        try:
            for cut in range(0, len(self.data)):
                chunk = self.data[:cut]
                mm[size - cut:size] = chunk
                view = memoryview(mm)[size - cut:size]
                with self.assertRaises(ValueError):
                    xorchunk.decode_xor(view)
                with self.assertRaises(ValueError):
                    list(xorchunk.XORIterator(view))
                view.release()
        finally:
            libc.mprotect(addr + size, size, 3)
            mm.close()

if __name__ == "__main__":
    unittest.main()
