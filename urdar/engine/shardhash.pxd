# cython: language_level=3
# The hash that assigns a series to a query shard (engine/sharding.py). Every reader of series
# (the head, blocks in the ingester and in the store-gateway, any process of any version) must
# agree on it, or a sharded query counts a series twice or not at all: it is FROZEN. Changing it
# is a wire-format change. FNV-1a 64 over the canonical label key (labels.pxd), then the
# SplitMix64 finalizer so that `hash % count` uses well-mixed low bits.
from libc.stdint cimport uint8_t, uint64_t


cdef inline uint64_t shard_hash(const uint8_t *p, size_t n) noexcept nogil:
    cdef uint64_t h = 0xCBF29CE484222325ULL
    cdef size_t i
    for i in range(n):
        h = (h ^ p[i]) * 0x100000001B3ULL
    h = (h ^ (h >> 30)) * 0xBF58476D1CE4E5B9ULL
    h = (h ^ (h >> 27)) * 0x94D049BB133111EBULL
    return h ^ (h >> 31)
