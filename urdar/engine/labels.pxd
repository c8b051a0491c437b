# Label sets as the engine stores them: one canonical byte string per series, the "key".
#   key = uvarint(#labels) · repeated( uvarint(len name) · name · uvarint(len value) · value )
# with labels sorted bytewise by name, names unique, no empty values. The same bytes
# follow the 8-byte ref in a WAL series record, so logging a new series copies the key.
from libc.stdint cimport uint8_t, uint64_t
from libc.string cimport memcpy

cdef inline uint64_t key_hash(const uint8_t *p, size_t n) noexcept nogil:
    """64-bit hash of a key, 8 bytes per step (head series map; not persisted)."""
    cdef uint64_t h = 0x9E3779B97F4A7C15ULL ^ (n * 0xC2B2AE3D27D4EB4FULL)
    cdef uint64_t w
    while n >= 8:
        memcpy(&w, p, 8)
        h = (h ^ (w * 0x87C37B91114253D5ULL)) * 0x9E3779B97F4A7C15ULL
        h ^= h >> 29
        p += 8
        n -= 8
    w = 0
    if n:
        memcpy(&w, p, n)
    h = (h ^ (w * 0x87C37B91114253D5ULL)) * 0x9E3779B97F4A7C15ULL
    h ^= h >> 32
    h *= 0xD6E8FEB86659FD93ULL
    h ^= h >> 32
    return h
