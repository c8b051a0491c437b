# Open-addressing hash table of (uint64 key -> void*) with linear probing and backward-shift
# deletion (no tombstones), used by the head for ref -> series and key-hash -> series.
# A NULL value marks an empty slot. Several entries may share a key (64-bit hash collisions);
# callers that need that walk the probe sequence with hm_slot/hm_next and compare themselves.
# Pure C, nogil; the owner serialises access (the head's lock).
from libc.stdint cimport uint64_t
from libc.stdlib cimport calloc, free

ctypedef struct hm_entry_t:
    uint64_t k
    void *v

ctypedef struct hm_t:
    hm_entry_t *e
    size_t mask       # capacity - 1 (capacity is a power of two)
    size_t n

cdef inline size_t hm_mix(uint64_t k) noexcept nogil:
    # refs are small consecutive integers: spread them before masking
    k ^= k >> 33
    k *= 0xFF51AFD7ED558CCDULL
    k ^= k >> 33
    return <size_t>k

cdef inline int hm_init(hm_t *m, size_t cap) noexcept nogil:
    cdef size_t c = 16
    while c < cap:
        c <<= 1
    m.e = <hm_entry_t *>calloc(c, sizeof(hm_entry_t))
    m.mask = c - 1
    m.n = 0
    return 0 if m.e != NULL else -1

cdef inline void hm_free(hm_t *m) noexcept nogil:
    free(m.e)
    m.e = NULL
    m.n = 0

cdef inline size_t hm_slot(hm_t *m, uint64_t k) noexcept nogil:
    """First slot of k's probe sequence; walk with (i + 1) & mask while e[i].v != NULL."""
    return hm_mix(k) & m.mask

cdef inline void *hm_get(hm_t *m, uint64_t k) noexcept nogil:
    cdef size_t i = hm_mix(k) & m.mask
    while m.e[i].v != NULL:
        if m.e[i].k == k:
            return m.e[i].v
        i = (i + 1) & m.mask
    return NULL

cdef inline int hm_grow(hm_t *m) noexcept nogil:
    cdef hm_entry_t *old = m.e
    cdef size_t oldcap = m.mask + 1
    cdef size_t i, j
    cdef hm_entry_t *e = <hm_entry_t *>calloc(oldcap * 2, sizeof(hm_entry_t))
    if e == NULL:
        return -1
    m.e = e
    m.mask = oldcap * 2 - 1
    for i in range(oldcap):
        if old[i].v != NULL:
            j = hm_mix(old[i].k) & m.mask
            while e[j].v != NULL:
                j = (j + 1) & m.mask
            e[j] = old[i]
    free(old)
    return 0

cdef inline int hm_put(hm_t *m, uint64_t k, void *v) noexcept nogil:
    """Insert (k, v) as a new entry (no replace); keeps load under 7/8. 0 or -1 (oom).

    7/8 rather than 3/4: a 16-byte entry per series in two tables is a large part of the
    head's bytes per series; hits stay a few probes (mostly within one cache line pair)."""
    cdef size_t i
    if (m.n + 1) * 8 > (m.mask + 1) * 7:
        if hm_grow(m) != 0:
            return -1
    i = hm_mix(k) & m.mask
    while m.e[i].v != NULL:
        i = (i + 1) & m.mask
    m.e[i].k = k
    m.e[i].v = v
    m.n += 1
    return 0

cdef inline int hm_del(hm_t *m, uint64_t k, void *v) noexcept nogil:
    """Remove the entry (k, v); return 1 if found. Backward shift keeps probe chains intact."""
    cdef size_t i = hm_mix(k) & m.mask
    cdef size_t j, home
    while m.e[i].v != NULL:
        if m.e[i].k == k and m.e[i].v == v:
            break
        i = (i + 1) & m.mask
    else:
        return 0
    j = i
    while True:
        j = (j + 1) & m.mask
        if m.e[j].v == NULL:
            break
        home = hm_mix(m.e[j].k) & m.mask
        # move e[j] into the hole at i unless its home lies cyclically in (i, j]
        if (j > i and (home <= i or home > j)) or (j < i and (home <= i and home > j)):
            m.e[i] = m.e[j]
            i = j
    m.e[i].v = NULL
    m.e[i].k = 0
    m.n -= 1
    return 1
