# Byte-level primitives shared by every on-disk format (Prometheus' tsdb/encoding):
# big-endian integers, Go LEB128 varints, CRC-32C, a growable write buffer (wbuf_*)
# and a bounds-checked read cursor with a sticky error (rbuf_*, like Prometheus' Decbuf).
# Everything here is inline C, callable without the GIL.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from libc.string cimport memcpy
from libc.stdlib cimport malloc, realloc, free

cdef extern from "crc32c.h" nogil:
    uint32_t urdar_crc32c(uint32_t crc, const uint8_t *p, size_t n)

cdef extern from "debug.h":
    int URDAR_DEBUG


# ---- fixed width, big-endian ------------------------------------------------------

cdef inline void put_be16(uint8_t *p, uint16_t v) noexcept nogil:
    p[0] = <uint8_t>(v >> 8); p[1] = <uint8_t>v

cdef inline void put_be32(uint8_t *p, uint32_t v) noexcept nogil:
    p[0] = <uint8_t>(v >> 24); p[1] = <uint8_t>(v >> 16); p[2] = <uint8_t>(v >> 8); p[3] = <uint8_t>v

cdef inline void put_be64(uint8_t *p, uint64_t v) noexcept nogil:
    put_be32(p, <uint32_t>(v >> 32)); put_be32(p + 4, <uint32_t>v)

cdef inline uint16_t get_be16(const uint8_t *p) noexcept nogil:
    return (<uint16_t>p[0] << 8) | p[1]

cdef inline uint32_t get_be32(const uint8_t *p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]

cdef inline uint64_t get_be64(const uint8_t *p) noexcept nogil:
    return (<uint64_t>get_be32(p) << 32) | get_be32(p + 4)

cdef inline uint64_t f64_bits(double v) noexcept nogil:
    cdef uint64_t b
    memcpy(&b, &v, 8)
    return b

cdef inline double bits_f64(uint64_t b) noexcept nogil:
    cdef double v
    memcpy(&v, &b, 8)
    return v


# ---- varints (Go encoding/binary) ---------------------------------------------------

cdef inline int put_uvarint(uint8_t *p, uint64_t v) noexcept nogil:
    """Write v as LEB128 at p (room for 10 bytes needed); return bytes written."""
    cdef int n = 0
    while v >= 0x80:
        p[n] = <uint8_t>(v | 0x80)
        v >>= 7
        n += 1
    p[n] = <uint8_t>v
    return n + 1

cdef inline int put_varint(uint8_t *p, int64_t v) noexcept nogil:
    """Zig-zag signed varint."""
    return put_uvarint(p, (<uint64_t>v << 1) ^ <uint64_t>(v >> 63))

cdef inline int uvarint_size(uint64_t v) noexcept nogil:
    cdef int n = 1
    while v >= 0x80:
        v >>= 7
        n += 1
    return n

cdef inline int get_uvarint(const uint8_t *p, const uint8_t *end, uint64_t *out) noexcept nogil:
    """Read a uvarint; return bytes consumed, or -1 when truncated or over 10 bytes."""
    cdef uint64_t x = 0
    cdef unsigned int shift = 0
    cdef int n = 0
    cdef uint8_t b
    while p + n < end:
        b = p[n]
        n += 1
        if b < 0x80:
            if n > 10 or (n == 10 and b > 1):
                return -1
            out[0] = x | (<uint64_t>b << shift)
            return n
        x |= <uint64_t>(b & 0x7f) << shift
        shift += 7
        if n >= 10:
            return -1
    return -1

cdef inline int get_varint(const uint8_t *p, const uint8_t *end, int64_t *out) noexcept nogil:
    cdef uint64_t u
    cdef int n = get_uvarint(p, end, &u)
    if n > 0:
        out[0] = <int64_t>(u >> 1) ^ -(<int64_t>(u & 1))
    return n


# ---- growable write buffer -----------------------------------------------------------
# Owned by whoever called wbuf_init; wbuf_free releases it. A failed allocation sets
# `oom` and turns later writes into no-ops, so callers check once at the end.

ctypedef struct wbuf_t:
    uint8_t *data
    size_t len
    size_t cap
    int oom

cdef inline void wbuf_init(wbuf_t *b, size_t cap) noexcept nogil:
    b.len = 0
    b.oom = 0
    b.cap = cap if cap > 0 else 64
    b.data = <uint8_t *>malloc(b.cap)
    if b.data == NULL:
        b.cap = 0
        b.oom = 1

cdef inline void wbuf_free(wbuf_t *b) noexcept nogil:
    free(b.data)
    b.data = NULL
    b.len = b.cap = 0

cdef inline int wbuf_reserve(wbuf_t *b, size_t extra) noexcept nogil:
    """Make room for `extra` more bytes; return 0, or -1 when out of memory."""
    cdef size_t need = b.len + extra
    cdef size_t cap
    cdef uint8_t *d
    if b.oom:
        return -1
    if need <= b.cap:
        return 0
    cap = b.cap * 2 if b.cap else 64
    while cap < need:
        cap *= 2
    d = <uint8_t *>realloc(b.data, cap)
    if d == NULL:
        b.oom = 1
        return -1
    b.data = d
    b.cap = cap
    return 0

cdef inline void wbuf_put(wbuf_t *b, const void *src, size_t n) noexcept nogil:
    if wbuf_reserve(b, n) == 0:
        memcpy(b.data + b.len, src, n)
        b.len += n

cdef inline void wbuf_put_u8(wbuf_t *b, uint8_t v) noexcept nogil:
    if wbuf_reserve(b, 1) == 0:
        b.data[b.len] = v
        b.len += 1

cdef inline void wbuf_put_be32(wbuf_t *b, uint32_t v) noexcept nogil:
    if wbuf_reserve(b, 4) == 0:
        put_be32(b.data + b.len, v)
        b.len += 4

cdef inline void wbuf_put_be64(wbuf_t *b, uint64_t v) noexcept nogil:
    if wbuf_reserve(b, 8) == 0:
        put_be64(b.data + b.len, v)
        b.len += 8

cdef inline void wbuf_put_uvarint(wbuf_t *b, uint64_t v) noexcept nogil:
    if wbuf_reserve(b, 10) == 0:
        b.len += put_uvarint(b.data + b.len, v)

cdef inline void wbuf_put_varint(wbuf_t *b, int64_t v) noexcept nogil:
    if wbuf_reserve(b, 10) == 0:
        b.len += put_varint(b.data + b.len, v)

cdef inline void wbuf_put_uvarint_bytes(wbuf_t *b, const void *src, size_t n) noexcept nogil:
    """A length-prefixed string: uvarint(n) then n bytes."""
    wbuf_put_uvarint(b, n)
    wbuf_put(b, src, n)

cdef inline void wbuf_pad_to(wbuf_t *b, size_t align) noexcept nogil:
    """Zero-pad so that len is a multiple of align."""
    cdef size_t rem = b.len % align
    cdef size_t k
    if rem and wbuf_reserve(b, align - rem) == 0:
        for k in range(align - rem):
            b.data[b.len + k] = 0
        b.len += align - rem


# ---- read cursor with sticky error -------------------------------------------------
# Reads past `end` set err=1 and return zeros; check `err` once after a record.

ctypedef struct rbuf_t:
    const uint8_t *p
    const uint8_t *end
    int err

cdef inline void rbuf_init(rbuf_t *r, const uint8_t *p, size_t n) noexcept nogil:
    r.p = p
    r.end = p + n
    r.err = 0

cdef inline size_t rbuf_left(rbuf_t *r) noexcept nogil:
    return <size_t>(r.end - r.p) if r.end > r.p else 0

cdef inline uint8_t rbuf_u8(rbuf_t *r) noexcept nogil:
    if r.err or r.p >= r.end:
        r.err = 1
        return 0
    r.p += 1
    return r.p[-1]

cdef inline uint32_t rbuf_be32(rbuf_t *r) noexcept nogil:
    if r.err or r.end - r.p < 4:
        r.err = 1
        return 0
    r.p += 4
    return get_be32(r.p - 4)

cdef inline uint64_t rbuf_be64(rbuf_t *r) noexcept nogil:
    if r.err or r.end - r.p < 8:
        r.err = 1
        return 0
    r.p += 8
    return get_be64(r.p - 8)

cdef inline uint64_t rbuf_uvarint(rbuf_t *r) noexcept nogil:
    cdef uint64_t v = 0
    cdef int n
    if r.err:
        return 0
    n = get_uvarint(r.p, r.end, &v)
    if n < 0:
        r.err = 1
        return 0
    r.p += n
    return v

cdef inline int64_t rbuf_varint(rbuf_t *r) noexcept nogil:
    cdef int64_t v = 0
    cdef int n
    if r.err:
        return 0
    n = get_varint(r.p, r.end, &v)
    if n < 0:
        r.err = 1
        return 0
    r.p += n
    return v

cdef inline const uint8_t *rbuf_bytes(rbuf_t *r, size_t n) noexcept nogil:
    """Return a pointer to the next n bytes and skip them (NULL and err=1 if short)."""
    if r.err or <size_t>(r.end - r.p) < n:
        r.err = 1
        return NULL
    r.p += n
    return r.p - n

cdef inline const uint8_t *rbuf_uvarint_bytes(rbuf_t *r, size_t *n) noexcept nogil:
    """A length-prefixed string; its length goes to n."""
    n[0] = <size_t>rbuf_uvarint(r)
    return rbuf_bytes(r, n[0])
