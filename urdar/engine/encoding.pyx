# cython: language_level=3
"""Python view of the shared byte primitives, for tests and for Python-side format code.

The inline C lives in encoding.pxd; this module only exposes crc32c and the varint
codecs so tests can check them against known vectors."""
from libc.stdint cimport uint8_t, uint64_t, int64_t
from urdar.engine.encoding cimport urdar_crc32c, put_uvarint, put_varint, get_uvarint, get_varint


def crc32c(const uint8_t[::1] data not None, unsigned int crc=0):
    """CRC-32C (Castagnoli) of data, continuing from crc."""
    cdef size_t n = data.shape[0]
    cdef const uint8_t *p = &data[0] if n else NULL
    with nogil:
        crc = urdar_crc32c(crc, p, n)
    return crc


def encode_uvarint(uint64_t v):
    cdef uint8_t buf[10]
    cdef int n = put_uvarint(buf, v)
    return bytes(buf[:n])


def encode_varint(int64_t v):
    cdef uint8_t buf[10]
    cdef int n = put_varint(buf, v)
    return bytes(buf[:n])


def decode_uvarint(const uint8_t[::1] data not None):
    """Return (value, bytes consumed); ValueError when truncated or overlong."""
    cdef uint64_t v = 0
    cdef int n = get_uvarint(&data[0], &data[0] + data.shape[0], &v) if data.shape[0] else -1
    if n < 0:
        raise ValueError("invalid uvarint")
    return v, n


def decode_varint(const uint8_t[::1] data not None):
    cdef int64_t v = 0
    cdef int n = get_varint(&data[0], &data[0] + data.shape[0], &v) if data.shape[0] else -1
    if n < 0:
        raise ValueError("invalid varint")
    return v, n
