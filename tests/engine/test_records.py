"""Logical WAL records: Prometheus byte layouts, bit-exact values, malformed input refused."""
import struct
import unittest
from array import array

from hypothesis import given, settings, strategies as st

from urdar.engine import records
from urdar.engine.errors import CorruptionError, MalformedRecordError
from urdar.engine.labels import encode_labels

U64 = st.integers(min_value=0, max_value=2**64 - 1)
I64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
STALE_NAN_BITS = 0x7FF0000000000002


def floats_from_bits(bits):
    return array("d", array("Q", bits).tobytes())


def bits_of(vals):
    return list(array("Q", array("d", vals).tobytes()))


label_keys = st.lists(
    st.tuples(st.text(min_size=1, max_size=8), st.text(min_size=1, max_size=8)),
    max_size=5, unique_by=lambda p: p[0]).map(encode_labels)


class SamplesRecordTests(unittest.TestCase):
    def test_known_bytes(self):
        """A samples record matches record.go's layout byte for byte (signed varint deltas)."""
        rec = records.encode_samples(array("Q", [5, 3]), array("q", [1000, 999]), array("d", [1.0, 2.0]))
        expect = (b"\x02" + struct.pack(">QQ", 5, 1000)
                  + b"\x00\x00" + struct.pack(">d", 1.0)
                  + b"\x03\x01" + struct.pack(">d", 2.0))
        self.assertEqual(rec, expect)
        self.assertEqual(records.record_type(rec), records.SAMPLES)

    def test_empty_batch(self):
        """An empty sample batch is the type byte alone and decodes to no samples."""
        rec = records.encode_samples(array("Q"), array("q"), array("d"))
        self.assertEqual(rec, b"\x02")
        self.assertEqual([list(a) for a in records.decode_samples(rec)], [[], [], []])

    @settings(max_examples=200)
    @given(st.lists(st.tuples(U64, I64, U64), max_size=60))
    def test_round_trip_bit_exact(self, rows):
        """Any refs, timestamps and float bit patterns (NaN payloads included) round-trip exactly."""
        refs = array("Q", [r[0] for r in rows])
        ts = array("q", [r[1] for r in rows])
        vals = floats_from_bits([r[2] for r in rows])
        got_refs, got_ts, got_vals = records.decode_samples(records.encode_samples(refs, ts, vals))
        self.assertEqual(got_refs, refs)
        self.assertEqual(got_ts, ts)
        self.assertEqual(got_vals.tobytes(), vals.tobytes())

    def test_stale_marker_survives(self):
        """The stale-marker NaN keeps its exact bits through a record."""
        vals = floats_from_bits([STALE_NAN_BITS, 0x8000000000000000, 0x7FF8000000000001])
        rec = records.encode_samples(array("Q", [1, 2, 3]), array("q", [0, 0, 0]), vals)
        self.assertEqual(bits_of(records.decode_samples(rec)[2]),
                         [STALE_NAN_BITS, 0x8000000000000000, 0x7FF8000000000001])

    def test_buffer_types(self):
        """Decoders take bytes, bytearray and memoryview alike."""
        rec = records.encode_samples(array("Q", [7]), array("q", [8]), array("d", [9.5]))
        for buf in (rec, bytearray(rec), memoryview(rec)):
            self.assertEqual(list(records.decode_samples(buf)[2]), [9.5])

    def test_length_mismatch_refused(self):
        """Parallel arrays of different lengths are a ValueError, not a short record."""
        with self.assertRaises(ValueError):
            records.encode_samples(array("Q", [1, 2]), array("q", [1]), array("d", [1.0, 2.0]))

    def test_every_truncation_refused(self):
        """Cutting a samples record inside any field raises MalformedRecordError."""
        rec = records.encode_samples(array("Q", [1, 300]), array("q", [10, -5000]), array("d", [1, 2]))
        # bases without samples is a valid empty record, as in record.go
        self.assertEqual(len(records.decode_samples(rec[:17])[0]), 0)
        for cut in set(range(2, len(rec))) - {17, 17 + 10}:
            with self.assertRaises(MalformedRecordError):
                records.decode_samples(rec[:cut])

    def test_wrong_type_refused(self):
        """Decoding a record of another type is a CorruptionError (a ValueError)."""
        rec = records.encode_series([(1, encode_labels([("a", "b")]))])
        with self.assertRaises(CorruptionError):
            records.decode_samples(rec)
        with self.assertRaises(ValueError):
            records.decode_samples(b"")


class SeriesRecordTests(unittest.TestCase):
    def test_known_bytes(self):
        """A series entry is the 8-byte big-endian ref followed by the canonical label key."""
        key = encode_labels([("__name__", "up"), ("job", "x")])
        rec = records.encode_series([(258, key)])
        self.assertEqual(rec, b"\x01" + struct.pack(">Q", 258) + key)
        self.assertEqual(rec[9:], b"\x02\x08__name__\x02up\x03job\x01x")

    @given(st.lists(st.tuples(U64, label_keys), max_size=20))
    def test_round_trip(self, items):
        """Any list of (ref, label key) pairs round-trips."""
        self.assertEqual(records.decode_series(records.encode_series(items)), items)

    @given(st.binary(max_size=80))
    def test_garbage_never_crashes(self, body):
        """Random bytes after a series type byte decode or raise MalformedRecordError, never crash."""
        try:
            out = records.decode_series(b"\x01" + body)
        except MalformedRecordError:
            return
        self.assertIsInstance(out, list)

    def test_huge_label_count_refused(self):
        """A label count larger than the record can hold is refused quickly."""
        rec = b"\x01" + struct.pack(">Q", 1) + b"\xff\xff\xff\xff\x0f"
        with self.assertRaises(MalformedRecordError):
            records.decode_series(rec)


class OtherRecordTests(unittest.TestCase):
    @given(st.lists(st.tuples(U64, I64, I64), max_size=20))
    def test_tombstones_round_trip(self, items):
        """Tombstone (ref, mint, maxt) triples round-trip."""
        rec = records.encode_tombstones(items)
        self.assertEqual(rec[0], records.TOMBSTONES)
        self.assertEqual(records.decode_tombstones(rec), items)

    @given(st.lists(st.tuples(U64, I64, U64, label_keys), max_size=20))
    def test_exemplars_round_trip(self, items):
        """Exemplars (ref, t, value bits, label key) round-trip bit-exactly."""
        src = [(r, t, floats_from_bits([b])[0], k) for r, t, b, k in items]
        got = records.decode_exemplars(records.encode_exemplars(src))
        self.assertEqual([(r, t, k) for r, t, _, k in got], [(r, t, k) for r, t, _, k in src])
        self.assertEqual(bits_of([g[2] for g in got]), [b for _, _, b, _ in items])

    def test_exemplars_layout(self):
        """An exemplars record uses the first exemplar as base, like samples, plus a key each."""
        key = encode_labels([("trace_id", "ab")])
        rec = records.encode_exemplars([(4, 100, 1.5, key)])
        self.assertEqual(rec, b"\x04" + struct.pack(">QQ", 4, 100) + b"\x00\x00"
                         + struct.pack(">d", 1.5) + key)
        self.assertEqual(records.encode_exemplars([]), b"\x04")

    @given(st.lists(st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 7),
                              st.text(max_size=10), st.text(max_size=30)), max_size=10))
    def test_metadata_round_trip(self, items):
        """Metadata (ref, type, unit, help) round-trips."""
        self.assertEqual(records.decode_metadata(records.encode_metadata(items)), items)

    def test_metadata_layout_and_unknown_fields(self):
        """Metadata writes UNIT then HELP fields; unknown fields from newer writers are skipped."""
        rec = records.encode_metadata([(3, 2, "bytes", "h")])
        self.assertEqual(rec, b"\x06\x03\x02\x02\x04UNIT\x05bytes\x04HELP\x01h")
        extra = b"\x06\x03\x02\x03\x03FOO\x03bar\x04UNIT\x05bytes\x04HELP\x01h"
        self.assertEqual(records.decode_metadata(extra), [(3, 2, "bytes", "h")])
        for cut in range(2, len(rec)):
            with self.assertRaises(MalformedRecordError):
                records.decode_metadata(rec[:cut])

    def test_record_type(self):
        """record_type names known types and answers 255 for empty or unknown records."""
        self.assertEqual(records.record_type(b""), 255)
        self.assertEqual(records.record_type(b"\x00"), 255)
        self.assertEqual(records.record_type(b"\x63"), 255)
        self.assertEqual(records.record_type(b"\x06"), records.METADATA)


if __name__ == "__main__":
    unittest.main()
