# cython: language_level=3
# XOR (Gorilla) float chunks, byte-compatible with Prometheus chunk encoding 1.
# Layout (FORMAT.md / reference §2): 2-byte BE sample count, then an MSB-first bitstream:
# varint t0 · 64-bit v0 · uvarint (t1-t0) · value block · then per sample a timestamp
# delta-of-delta bucket (0 / 10+14 / 110+17 / 1110+20 / 1111+64 bits) and a value block
# (0 = same bits; 10 = reuse window; 11 + 5-bit leading + 6-bit sigbits + sigbits bits).
# The last byte is zero-padded, so data[0:len) is a complete chunk after every append.
# Everything here is callable without the GIL; the head keeps one xor_app_t per series.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from urdar.engine.encoding cimport get_be16

cdef enum:
    XOR_ENCODING = 1          # chunk encoding byte in chunk files / head chunk files
    XOR_MAX_SAMPLES = 65535   # the header is a uint16
    XOR_NO_WINDOW = 0xff      # `leading` before the first value block of a chunk

# The appender's buffer: narrower than wbuf_t, since the head keeps one per series (a chunk
# holds at most 65535 samples, far below 4 GiB).
ctypedef struct xbuf_t:
    uint8_t *data
    uint32_t len
    uint32_t cap

# Appender. Owns `buf` (malloc'd, or the head's slab slot): buf.data[0:2] = BE sample count,
# then the bitstream. sizeof == 48 on x86-64 (16 for xbuf_t + 32 of encoder state).
ctypedef struct xor_app_t:
    xbuf_t buf
    int64_t t           # last timestamp
    uint64_t vbits      # last value's bits
    uint64_t tdelta     # last timestamp delta (two's complement, wraps like Go's)
    uint8_t leading     # current XOR window; XOR_NO_WINDOW before the first block
    uint8_t trailing
    uint8_t free        # unused low bits of the last byte (0..7)

cdef int xor_app_init(xor_app_t *a, size_t initial_cap) noexcept nogil
cdef void xor_app_free(xor_app_t *a) noexcept nogil
cdef void xor_app_reset(xor_app_t *a) noexcept nogil
# Empty the chunk, keeping its buffer as it is (for owners that size buffers themselves).
cdef void xor_app_clear(xor_app_t *a) noexcept nogil
# 0 ok; -1 out of memory (or never initialised); -2 chunk full (65535 samples).
# On failure the chunk is unchanged.
cdef int xor_app_append(xor_app_t *a, int64_t t, double v) noexcept nogil
# Exactly the bytes xor_app_append would add to the chunk's length for (t, v) now, and the
# append for a caller that made that room itself (it never reallocates: the head keeps its
# open chunks in slab slots). Same results as xor_app_append otherwise.
cdef size_t xor_app_need(const xor_app_t *a, int64_t t, double v) noexcept nogil
cdef int xor_app_append_fitted(xor_app_t *a, int64_t t, double v) noexcept nogil

cdef inline uint16_t xor_app_count(const xor_app_t *a) noexcept nogil:
    return get_be16(a.buf.data) if a.buf.data != NULL and a.buf.len >= 2 else 0

cdef inline size_t xor_app_len(const xor_app_t *a) noexcept nogil:
    return a.buf.len

cdef inline const uint8_t *xor_app_data(const xor_app_t *a) noexcept nogil:
    return a.buf.data

# Iterator over chunk bytes it does not own (they must outlive it). After xor_it_next
# returns 1, `t` and `v` hold the sample. -1 (corrupt) is sticky.
ctypedef struct xor_it_t:
    const uint8_t *data
    size_t n            # bytes in data
    size_t pos          # bit position from data[0]
    uint16_t total      # samples announced by the header
    uint16_t nread
    int err
    int64_t t
    double v
    uint64_t vbits
    uint64_t tdelta
    uint8_t leading
    uint8_t trailing

cdef void xor_it_init(xor_it_t *it, const uint8_t *data, size_t n) noexcept nogil
cdef int xor_it_next(xor_it_t *it) noexcept nogil
# Like Prometheus' Seek: stays on the current sample if its t >= the target.
cdef int xor_it_seek(xor_it_t *it, int64_t t) noexcept nogil

# Decode into caller arrays: sample count, -1 corrupt, -2 cap too small.
cdef Py_ssize_t xor_decode(const uint8_t *data, size_t n, int64_t *ts, double *vs,
                           Py_ssize_t cap) noexcept nogil
cdef Py_ssize_t xor_decode_range(const uint8_t *data, size_t n, int64_t mint, int64_t maxt,
                                 int64_t *ts, double *vs, Py_ssize_t cap) noexcept nogil
# Sample count from the header; -1 when shorter than the header.
cdef int xor_num_samples(const uint8_t *data, size_t n) noexcept nogil
