"""Byte primitives shared by every on-disk format."""
import os
import unittest
import zlib

from hypothesis import given, strategies as st

from urdar.engine import encoding


class CRC32CTests(unittest.TestCase):
    def test_check_value(self):
        """CRC-32C of the standard check string is the published value 0xE3069283."""
        self.assertEqual(encoding.crc32c(b"123456789"), 0xE3069283)

    def test_differs_from_ieee_crc(self):
        """The Castagnoli polynomial is used, not zlib's IEEE CRC-32."""
        self.assertNotEqual(encoding.crc32c(b"hello"), zlib.crc32(b"hello"))

    @given(st.binary(max_size=300), st.binary(max_size=300))
    def test_continuation(self, a, b):
        """Checksumming in pieces equals checksumming the whole, at any split and length."""
        self.assertEqual(encoding.crc32c(b, encoding.crc32c(a)), encoding.crc32c(a + b))

    def test_empty_and_buffer_types(self):
        """Empty input gives 0; bytes, bytearray and memoryview give the same answer."""
        data = os.urandom(1000)
        self.assertEqual(encoding.crc32c(b""), 0)
        self.assertEqual(encoding.crc32c(bytearray(data)), encoding.crc32c(memoryview(data)))


class VarintTests(unittest.TestCase):
    def test_known_vectors(self):
        """Varints match Go's encoding/binary byte for byte."""
        self.assertEqual(encoding.encode_uvarint(0), b"\x00")
        self.assertEqual(encoding.encode_uvarint(300), b"\xac\x02")
        self.assertEqual(encoding.encode_uvarint(2**64 - 1), b"\xff" * 9 + b"\x01")
        self.assertEqual(encoding.encode_varint(-1), b"\x01")
        self.assertEqual(encoding.encode_varint(1), b"\x02")
        self.assertEqual(encoding.encode_varint(-(2**63)), b"\xff" * 9 + b"\x01")

    @given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
    def test_varint_round_trip(self, v):
        """Every int64 survives a signed varint round trip."""
        data = encoding.encode_varint(v)
        self.assertEqual(encoding.decode_varint(data), (v, len(data)))

    def test_truncated_and_overlong_refused(self):
        """A truncated or 11-byte uvarint is an error, not a wrong number."""
        with self.assertRaises(ValueError):
            encoding.decode_uvarint(b"\x80\x80")
        with self.assertRaises(ValueError):
            encoding.decode_uvarint(b"\xff" * 10 + b"\x01")
