# cython: language_level=3
"""Remote-write 1.0 request decoding: the distributor's first step after snappy.

`decode(body)` walks a protobuf WriteRequest with a hand-written wire decoder, GIL released,
and returns a `DecodedWrite` of columns: one canonical label key per series (labels.pxd) with
its hash, samples and exemplars as int64/float64 arrays with per-series offsets, histogram
counts, metadata, and per-series validation flags, so the distributor and the head never make
a Python object per sample. `encode_write_request` builds request bodies for tests and
benchmarks. Wire format: urdar/proto/{remote,types}.proto."""
cimport cython
from cpython cimport array
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING
from cpython.object cimport PyObject
from cpython.ref cimport Py_XDECREF
from libc.stdint cimport uint8_t, uint32_t, int32_t, uint64_t, int64_t
from libc.string cimport memcpy, memcmp, memmove, memset
from libc.stdlib cimport malloc, realloc, free, qsort

from urdar.engine.encoding cimport (
    wbuf_t, wbuf_init, wbuf_free, wbuf_reserve, wbuf_put, wbuf_put_u8, wbuf_put_uvarint,
    put_uvarint, uvarint_size, f64_bits, bits_f64, get_uvarint)
from urdar.engine.labels cimport key_hash

import array as _pyarray
from urdar.engine.errors import RemoteWriteDecodeError
from urdar.engine.labels import decode_labels

# Python names for the series flag bits (see remotewrite.pxd for their meaning).
NO_METRIC_NAME = RW_SF_NO_METRIC_NAME
INVALID_METRIC_NAME = RW_SF_INVALID_METRIC_NAME
INVALID_LABEL_NAME = RW_SF_INVALID_LABEL_NAME
DUPLICATE_LABEL_NAME = RW_SF_DUPLICATE_LABEL_NAME
LABELS_NOT_SORTED = RW_SF_LABELS_NOT_SORTED
EMPTY_LABEL_VALUE = RW_SF_EMPTY_LABEL_VALUE
LABEL_NAME_TOO_LONG = RW_SF_LABEL_NAME_TOO_LONG
LABEL_VALUE_TOO_LONG = RW_SF_LABEL_VALUE_TOO_LONG
TOO_MANY_LABELS = RW_SF_TOO_MANY_LABELS
INVALID_UTF8 = RW_SF_INVALID_UTF8
SERIES_ERRORS = RW_SF_ERRORS

FLAG_NAMES = {
    RW_SF_NO_METRIC_NAME: "no metric name",
    RW_SF_INVALID_METRIC_NAME: "invalid metric name",
    RW_SF_INVALID_LABEL_NAME: "invalid label name",
    RW_SF_DUPLICATE_LABEL_NAME: "duplicate label name",
    RW_SF_LABELS_NOT_SORTED: "labels not sorted",
    RW_SF_EMPTY_LABEL_VALUE: "empty label value dropped",
    RW_SF_LABEL_NAME_TOO_LONG: "label name too long",
    RW_SF_LABEL_VALUE_TOO_LONG: "label value too long",
    RW_SF_TOO_MANY_LABELS: "too many labels",
    RW_SF_INVALID_UTF8: "invalid UTF-8",
}

METRIC_TYPES = ("unknown", "counter", "gauge", "histogram", "gaugehistogram", "summary",
                "info", "stateset")

_STATUS_TEXT = {
    RW_E_VARINT_TRUNCATED: "varint runs past the end of its message",
    RW_E_VARINT_TOO_LONG: "varint longer than 10 bytes",
    RW_E_LENGTH: "length-delimited field runs past the end of its message",
    RW_E_FIXED_TRUNCATED: "fixed-width field runs past the end of its message",
    RW_E_BAD_WIRE_TYPE: "invalid wire type",
    RW_E_WRONG_WIRE_TYPE: "wrong wire type for a known field",
    RW_E_BAD_FIELD_NUMBER: "invalid field number",
    RW_E_GROUP: "unterminated or mismatched group",
    RW_E_GROUP_DEPTH: "groups nested too deeply",
}
_CONTEXT_TEXT = ("WriteRequest", "TimeSeries", "Label", "Sample", "Exemplar", "MetricMetadata")

# Label-name character classes, indexed by byte: 1 = may start a label name, 2 = may follow,
# 4 = may start a metric name, 8 = may follow in a metric name (':' is metric-only).
cdef uint8_t _cc[256]

cdef void _init_classes() noexcept:
    cdef int c
    memset(_cc, 0, sizeof(_cc))
    for c in range(256):
        if (c >= ord('a') and c <= ord('z')) or (c >= ord('A') and c <= ord('Z')) or c == ord('_'):
            _cc[c] = 1 | 2 | 4 | 8
        elif c >= ord('0') and c <= ord('9'):
            _cc[c] = 2 | 8
        elif c == ord(':'):
            _cc[c] = 4 | 8

_init_classes()


# ---- protobuf wire primitives ------------------------------------------------------
# Each takes a cursor by pointer, never reads at or past `end`, and returns a status.

cdef inline int pb_uvarint(const uint8_t **pp, const uint8_t *end, uint64_t *out) noexcept nogil:
    """A base-128 varint of up to 10 bytes; bits past 64 are dropped, as Go's protobuf does."""
    cdef const uint8_t *p = pp[0]
    cdef uint64_t x = 0, b
    cdef unsigned int shift = 0
    if p < end and p[0] < 0x80:     # one-byte fast path: tags, small lengths, small ints
        out[0] = p[0]
        pp[0] = p + 1
        return RW_OK
    while p < end:
        b = p[0]
        p += 1
        x |= (b & 0x7f) << shift
        if b < 0x80:
            out[0] = x
            pp[0] = p
            return RW_OK
        shift += 7
        if shift >= 70:
            return RW_E_VARINT_TOO_LONG
    return RW_E_VARINT_TRUNCATED

cdef inline int pb_tag(const uint8_t **pp, const uint8_t *end, uint64_t *field, uint32_t *wt) noexcept nogil:
    cdef uint64_t tag
    cdef int rc = pb_uvarint(pp, end, &tag)
    if rc:
        return rc
    field[0] = tag >> 3
    wt[0] = <uint32_t>(tag & 7)
    if field[0] == 0 or field[0] > 0x1FFFFFFFULL:
        return RW_E_BAD_FIELD_NUMBER
    return RW_OK

cdef inline int pb_len(const uint8_t **pp, const uint8_t *end, size_t *n) noexcept nogil:
    """A length prefix that must fit in what is left of the enclosing message."""
    cdef uint64_t v
    cdef int rc = pb_uvarint(pp, end, &v)
    if rc:
        return rc
    if v > <uint64_t>(end - pp[0]):
        return RW_E_LENGTH
    n[0] = <size_t>v
    return RW_OK

cdef inline int pb_fixed64(const uint8_t **pp, const uint8_t *end, uint64_t *out) noexcept nogil:
    """Little-endian 8 bytes (assembled bytewise so it is right on any host)."""
    cdef const uint8_t *p = pp[0]
    if end - p < 8:
        return RW_E_FIXED_TRUNCATED
    out[0] = (<uint64_t>p[0] | (<uint64_t>p[1] << 8) | (<uint64_t>p[2] << 16) | (<uint64_t>p[3] << 24)
              | (<uint64_t>p[4] << 32) | (<uint64_t>p[5] << 40) | (<uint64_t>p[6] << 48)
              | (<uint64_t>p[7] << 56))
    pp[0] = p + 8
    return RW_OK

cdef int pb_skip(const uint8_t **pp, const uint8_t *end, uint64_t field, uint32_t wt,
                 int depth) noexcept nogil:
    """Skip one field's payload whose tag was just read (unknown fields, all wire types)."""
    cdef uint64_t v, f2
    cdef uint32_t wt2
    cdef size_t n
    cdef int rc
    if wt == 0:
        return pb_uvarint(pp, end, &v)
    if wt == 1:
        if end - pp[0] < 8:
            return RW_E_FIXED_TRUNCATED
        pp[0] += 8
        return RW_OK
    if wt == 2:
        rc = pb_len(pp, end, &n)
        if rc == RW_OK:
            pp[0] += n
        return rc
    if wt == 5:
        if end - pp[0] < 4:
            return RW_E_FIXED_TRUNCATED
        pp[0] += 4
        return RW_OK
    if wt == 3:
        # A (deprecated) group: fields up to the END_GROUP with the same number.
        if depth >= RW_MAX_DEPTH:
            return RW_E_GROUP_DEPTH
        while pp[0] < end:
            rc = pb_tag(pp, end, &f2, &wt2)
            if rc:
                return rc
            if wt2 == 4:
                return RW_OK if f2 == field else RW_E_GROUP
            rc = pb_skip(pp, end, f2, wt2, depth + 1)
            if rc:
                return rc
        return RW_E_GROUP
    if wt == 4:
        return RW_E_GROUP    # END_GROUP with no open group
    return RW_E_BAD_WIRE_TYPE


# ---- scratch label lists -----------------------------------------------------------

cdef inline int labs_push(rw_labels_t *l, const uint8_t *name, size_t nlen,
                          const uint8_t *value, size_t vlen) noexcept nogil:
    cdef size_t cap
    cdef rw_label_t *items
    cdef rw_label_t *it
    if l.n == l.cap:
        cap = l.cap * 2 if l.cap else 32
        items = <rw_label_t *>realloc(l.items, cap * sizeof(rw_label_t))
        if items == NULL:
            return RW_E_OOM
        l.items = items
        l.cap = cap
    it = &l.items[l.n]
    it.name = name
    it.nlen = nlen
    it.value = value
    it.vlen = vlen
    it.idx = l.n
    l.n += 1
    return RW_OK

cdef extern from "Python.h":
    # Raw-reference forms, so the key blob can be allocated before its size is known and
    # shrunk in place afterwards.
    PyObject *_PyBytes_New "PyBytes_FromStringAndSize"(const char *s, Py_ssize_t n)
    int _PyBytes_Resize(PyObject **b, Py_ssize_t n) except -1

cdef extern from *:
    """
    #include <string.h>
    /* 8 bytes as a big-endian integer, so integer order is bytewise order. */
    static inline uint64_t urdar_rw_load_be64(const uint8_t *p) {
        uint64_t v;
        memcpy(&v, p, 8);
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        v = __builtin_bswap64(v);
    #endif
        return v;
    }
    """
    uint64_t urdar_rw_load_be64(const uint8_t *p) noexcept nogil

cdef inline int bytes_cmp(const uint8_t *a, size_t an, const uint8_t *b, size_t bn) noexcept nogil:
    """Bytewise order (Prometheus' labels.Compare on names), 8 bytes per step instead of a
    libc memcmp call: label names are short and compared once or twice each
    (rw_decode benchmark: memcmp calls were 10% of the profile)."""
    cdef size_t m = an if an < bn else bn
    cdef size_t i = 0
    cdef uint64_t x, y
    while i + 8 <= m:
        x = urdar_rw_load_be64(a + i)
        y = urdar_rw_load_be64(b + i)
        if x != y:
            return -1 if x < y else 1
        i += 8
    while i < m:
        if a[i] != b[i]:
            return -1 if a[i] < b[i] else 1
        i += 1
    return (an > bn) - (an < bn)

cdef inline int name_cmp(const rw_label_t *a, const rw_label_t *b) noexcept nogil:
    return bytes_cmp(a.name, a.nlen, b.name, b.nlen)

cdef int _label_qsort_cmp(const void *x, const void *y) noexcept nogil:
    cdef const rw_label_t *a = <const rw_label_t *>x
    cdef const rw_label_t *b = <const rw_label_t *>y
    cdef int c = name_cmp(a, b)
    if c:
        return c
    return (a.idx > b.idx) - (a.idx < b.idx)

cdef void labels_sort(rw_label_t *it, size_t n) noexcept nogil:
    """Stable sort by name; insertion sort for the usual handful, qsort (index tie-break) beyond."""
    cdef size_t i, j
    cdef rw_label_t tmp
    if n > 48:
        qsort(it, n, sizeof(rw_label_t), _label_qsort_cmp)
        return
    for i in range(1, n):
        tmp = it[i]
        j = i
        while j > 0 and name_cmp(&it[j - 1], &tmp) > 0:
            it[j] = it[j - 1]
            j -= 1
        it[j] = tmp

cdef uint32_t labels_canon(rw_labels_t *l, size_t *first_dup) noexcept nogil:
    """Turn l into canonical key order in place: drop empty values, sort, keep the first of
    each name. Returns EMPTY/NOT_SORTED/DUPLICATE flags; first_dup gets the key index of the
    first duplicated name (or stays unchanged)."""
    cdef rw_label_t *it = l.items
    cdef size_t i, k = 0, u
    cdef uint32_t flags = 0
    cdef int c
    cdef bint is_sorted = True, has_equal = False
    # One compare per adjacent pair finds both disorder and (in sorted input) duplicates.
    for i in range(l.n):
        if it[i].vlen == 0:
            flags |= RW_SF_EMPTY_LABEL_VALUE
            continue
        if k and is_sorted:
            c = name_cmp(&it[k - 1], &it[i])
            if c > 0:
                is_sorted = False
            elif c == 0:
                has_equal = True
        it[k] = it[i]
        k += 1
    l.n = k
    if is_sorted and not has_equal:
        return flags
    if not is_sorted:
        flags |= RW_SF_LABELS_NOT_SORTED
        labels_sort(it, k)
    u = 0
    for i in range(k):
        if u and name_cmp(&it[u - 1], &it[i]) == 0:
            if not (flags & RW_SF_DUPLICATE_LABEL_NAME):
                first_dup[0] = u - 1
            flags |= RW_SF_DUPLICATE_LABEL_NAME
            continue
        it[u] = it[i]
        u += 1
    l.n = u
    return flags

cdef inline void copy_small(uint8_t *dst, const uint8_t *src, size_t n) noexcept nogil:
    """memcpy for label-sized strings without the libc call: overlapping 8/4-byte moves that
    stay inside [src, src+n) and [dst, dst+n) (rw_decode benchmark: memcpy calls were 10%)."""
    cdef uint64_t a, b
    cdef uint32_t c, d
    if n > 16:
        memcpy(dst, src, n)
    elif n >= 8:
        memcpy(&a, src, 8)
        memcpy(&b, src + n - 8, 8)
        memcpy(dst, &a, 8)
        memcpy(dst + n - 8, &b, 8)
    elif n >= 4:
        memcpy(&c, src, 4)
        memcpy(&d, src + n - 4, 4)
        memcpy(dst, &c, 4)
        memcpy(dst + n - 4, &d, 4)
    else:
        while n:
            n -= 1
            dst[n] = src[n]

cdef inline int put_uvarint1(uint8_t *p, uint64_t v) noexcept nogil:
    """put_uvarint with the one-byte case (almost every label length) outside the loop."""
    if v < 0x80:
        p[0] = <uint8_t>v
        return 1
    return put_uvarint(p, v)

cdef int labels_put_key(rw_labels_t *l, uint8_t *out, uint64_t *out_len, uint64_t cap) noexcept nogil:
    """Append the canonical key of (already canonical) l at out + out_len (room: cap)."""
    cdef size_t i, size = uvarint_size(l.n)
    cdef rw_label_t *it
    cdef uint8_t *p
    for i in range(l.n):
        it = &l.items[i]
        size += it.nlen + it.vlen + 2
        if it.nlen >= 0x80 or it.vlen >= 0x80:
            size += uvarint_size(it.nlen) + uvarint_size(it.vlen) - 2
    if size > cap - out_len[0]:
        return RW_E_INTERNAL
    p = out + out_len[0]
    p += put_uvarint(p, l.n)
    for i in range(l.n):
        it = &l.items[i]
        p += put_uvarint1(p, it.nlen)
        copy_small(p, it.name, it.nlen)
        p += it.nlen
        p += put_uvarint1(p, it.vlen)
        copy_small(p, it.value, it.vlen)
        p += it.vlen
    out_len[0] += size
    return RW_OK


# ---- validation ----------------------------------------------------------------------

cdef inline bint is_ascii(const uint8_t *p, size_t n) noexcept nogil:
    """No byte has its high bit set; branch-free over 8-byte words (overlapping tail loads)."""
    cdef uint64_t acc = 0, w
    cdef uint32_t w4
    cdef size_t i = 0
    if n >= 8:
        while i + 8 <= n:
            memcpy(&w, p + i, 8)
            acc |= w
            i += 8
        memcpy(&w, p + n - 8, 8)
        acc |= w
    elif n >= 4:
        memcpy(&w4, p, 4)
        acc = w4
        memcpy(&w4, p + n - 4, 4)
        acc |= w4
    else:
        while i < n:
            acc |= p[i]
            i += 1
    return (acc & 0x8080808080808080ULL) == 0

cdef inline bint utf8_valid(const uint8_t *p, size_t n) noexcept nogil:
    # Label names and most values are ASCII (rw_decode benchmark: utf8 checks were 11%).
    return is_ascii(p, n) or utf8_valid_slow(p, n)

cdef bint utf8_valid_slow(const uint8_t *p, size_t n) noexcept nogil:
    """Go's utf8.Valid: no overlongs, no surrogates, nothing above U+10FFFF."""
    cdef size_t i = 0
    cdef uint8_t c, c1
    while i < n:
        c = p[i]
        if c < 0x80:
            i += 1
            continue
        if c < 0xC2 or c > 0xF4:
            return False
        if c < 0xE0:
            if i + 1 >= n or (p[i + 1] & 0xC0) != 0x80:
                return False
            i += 2
            continue
        if i + 2 >= n:
            return False
        c1 = p[i + 1]
        if (c1 & 0xC0) != 0x80 or (p[i + 2] & 0xC0) != 0x80:
            return False
        if c < 0xF0:
            if (c == 0xE0 and c1 < 0xA0) or (c == 0xED and c1 > 0x9F):
                return False
            i += 3
            continue
        if i + 3 >= n or (p[i + 3] & 0xC0) != 0x80:
            return False
        if (c == 0xF0 and c1 < 0x90) or (c == 0xF4 and c1 > 0x8F):
            return False
        i += 4
    return True

cdef inline bint bytes_eq(const uint8_t *a, const uint8_t *b, size_t n) noexcept nogil:
    """a[:n] == b[:n] in 8-byte words (overlapping tail); no libc call."""
    cdef size_t i = 0
    cdef uint64_t x, y
    cdef uint32_t u, v
    if n >= 8:
        while i + 8 <= n:
            memcpy(&x, a + i, 8)
            memcpy(&y, b + i, 8)
            if x != y:
                return False
            i += 8
        memcpy(&x, a + n - 8, 8)
        memcpy(&y, b + n - 8, 8)
        return x == y
    if n >= 4:
        memcpy(&u, a, 4)
        memcpy(&v, b, 4)
        if u != v:
            return False
        memcpy(&u, a + n - 4, 4)
        memcpy(&v, b + n - 4, 4)
        return u == v
    while i < n:
        if a[i] != b[i]:
            return False
        i += 1
    return True

cdef inline bint name_valid(const uint8_t *p, size_t n, uint8_t first, uint8_t rest) noexcept nogil:
    """Charset check without an early exit: valid names (the common case) pay no
    mispredicted loop exit per byte."""
    cdef size_t i
    cdef uint8_t acc
    if n == 0:
        return False
    acc = _cc[p[0]] & first
    if acc:
        acc = rest
    for i in range(1, n):
        acc &= _cc[p[i]]
    return acc != 0

cdef inline bint is_metric_name_label(const rw_label_t *it) noexcept nogil:
    return it.nlen == 8 and urdar_rw_load_be64(it.name) == 0x5f5f6e616d655f5fULL  # "__name__"

cdef void drop_label(rw_state_t *st, rw_labels_t *l, size_t *first_dup) noexcept nogil:
    """Remove st.drop_name from the canonical labels (at most once: names are unique now),
    noting its value when this is the request's first series."""
    cdef size_t i
    for i in range(l.n):
        if l.items[i].nlen == st.drop_len and bytes_eq(l.items[i].name, st.drop_name, st.drop_len):
            if st.n_series == 0:
                st.first_drop = l.items[i].value
                st.first_drop_len = l.items[i].vlen
                st.first_dropped = True
            st.n_dropped += 1
            if first_dup[0] != <size_t>-1 and first_dup[0] > i:
                first_dup[0] -= 1       # the duplicate's key index moves down with the rest
            elif first_dup[0] == i:
                first_dup[0] = <size_t>-1
            memmove(&l.items[i], &l.items[i + 1], (l.n - i - 1) * sizeof(rw_label_t))
            l.n -= 1
            return

cdef int finish_series(rw_state_t *st) noexcept nogil:
    """Canonicalise and validate the scratch labels, then append the series' columns."""
    cdef rw_labels_t *l = &st.lab
    cdef size_t first_dup = <size_t>-1, i
    cdef uint32_t flags, f
    cdef int32_t bad = -1
    cdef bint has_name = False
    cdef rw_label_t *it
    cdef uint64_t start
    flags = labels_canon(l, &first_dup)
    if st.drop_len:
        drop_label(st, l, &first_dup)
    for i in range(l.n):
        it = &l.items[i]
        f = 0
        if st.max_name_len and it.nlen > st.max_name_len:
            f |= RW_SF_LABEL_NAME_TOO_LONG
        if st.max_value_len and it.vlen > st.max_value_len:
            f |= RW_SF_LABEL_VALUE_TOO_LONG
        if i < RW_NAME_CACHE and it.nlen and st.name_cache[i].nlen == it.nlen and bytes_eq(
                st.name_cache[i].name, it.name, it.nlen):
            pass    # same name at this position in the previous series: known valid
        elif name_valid(it.name, it.nlen, 1, 2):
            if i < RW_NAME_CACHE:
                st.name_cache[i].name = it.name
                st.name_cache[i].nlen = it.nlen
        else:
            f |= RW_SF_INVALID_LABEL_NAME
            if not utf8_valid(it.name, it.nlen):
                f |= RW_SF_INVALID_UTF8
        if is_metric_name_label(it):
            has_name = True
            if not name_valid(it.value, it.vlen, 4, 8):
                f |= RW_SF_INVALID_METRIC_NAME
        if not utf8_valid(it.value, it.vlen):
            f |= RW_SF_INVALID_UTF8
        if f:
            flags |= f
            if bad < 0:
                bad = <int32_t>i
        if i == first_dup and bad < 0:
            bad = <int32_t>i
    if not has_name:
        flags |= RW_SF_NO_METRIC_NAME
    if st.max_names and l.n > st.max_names:
        flags |= RW_SF_TOO_MANY_LABELS

    if st.n_series >= st.cap.series:
        return RW_E_INTERNAL
    start = st.keys_len
    if labels_put_key(l, st.keys, &st.keys_len, st.cap.key_bytes):
        return RW_E_INTERNAL
    i = st.n_series
    st.hashes[i] = key_hash(st.keys + start, st.keys_len - start)
    st.key_off[i + 1] = st.keys_len
    st.s_off[i + 1] = st.n_samples
    st.ex_off[i + 1] = st.n_exemplars
    st.hist[i] = st.cur_hist
    st.flags[i] = flags
    st.bad[i] = bad
    st.n_series = i + 1
    return RW_OK


# ---- messages --------------------------------------------------------------------------
# Each parser owns [p, end) of one message; fields may come in any order and repeat (last
# scalar wins), unknown fields are skipped, known fields with a foreign wire type are errors
# (as in the Go decoders Prometheus and Mimir use).

cdef inline int fail(rw_state_t *st, int rc, int ctx, const uint8_t *at) noexcept nogil:
    st.err_ctx = ctx
    st.err_at = at
    return rc

cdef inline int parse_label(rw_state_t *st, const uint8_t *p, const uint8_t *end,
                            rw_labels_t *out) noexcept nogil:
    cdef size_t nl, vl
    cdef size_t avail = <size_t>(end - p)
    # Fast path for what every sender emits: name then value, each under 128 bytes, nothing
    # else (rw_decode benchmark: the generic field loop was 18% of the profile).
    if avail >= 4 and p[0] == 0x0A and p[1] < 0x80:
        nl = p[1]
        if avail >= 4 + nl and p[2 + nl] == 0x12 and p[3 + nl] < 0x80:
            vl = p[3 + nl]
            if avail == 4 + nl + vl:
                return labs_push_or_fail(st, out, p + 2, nl, p + 4 + nl, vl, end)
    return parse_label_slow(st, p, end, out)

cdef int labs_push_or_fail(rw_state_t *st, rw_labels_t *out, const uint8_t *name, size_t nlen,
                           const uint8_t *value, size_t vlen, const uint8_t *at) noexcept nogil:
    cdef int rc = labs_push(out, name, nlen, value, vlen)
    return fail(st, rc, RW_CTX_LABEL, at) if rc else RW_OK

cdef int parse_label_slow(rw_state_t *st, const uint8_t *p, const uint8_t *end, rw_labels_t *out) noexcept nogil:
    cdef const uint8_t *name = p
    cdef const uint8_t *value = p
    cdef size_t nlen = 0, vlen = 0, n
    cdef uint64_t field
    cdef uint32_t wt
    cdef int rc
    while p < end:
        rc = pb_tag(&p, end, &field, &wt)
        if rc:
            return fail(st, rc, RW_CTX_LABEL, p)
        if field == 1 or field == 2:
            if wt != 2:
                return fail(st, RW_E_WRONG_WIRE_TYPE, RW_CTX_LABEL, p)
            rc = pb_len(&p, end, &n)
            if rc:
                return fail(st, rc, RW_CTX_LABEL, p)
            if field == 1:
                name = p
                nlen = n
            else:
                value = p
                vlen = n
            p += n
        else:
            rc = pb_skip(&p, end, field, wt, 0)
            if rc:
                return fail(st, rc, RW_CTX_LABEL, p)
    rc = labs_push(out, name, nlen, value, vlen)
    return fail(st, rc, RW_CTX_LABEL, p) if rc else RW_OK

cdef inline int parse_sample(rw_state_t *st, const uint8_t *p, const uint8_t *end) noexcept nogil:
    """A Sample: value=1 (double), timestamp=2 (int64, milliseconds); missing fields are 0."""
    cdef uint64_t field, v = 0, t = 0
    cdef uint32_t wt
    cdef int rc
    cdef const uint8_t *q
    # Fast path for the usual layout: value then timestamp, nothing else.
    if end - p >= 11 and p[0] == 0x09 and p[9] == 0x10:
        q = p + 10
        if pb_uvarint(&q, end, &t) == RW_OK and q == end:
            p += 1                      # past the value's tag; its 8 bytes were checked above
            pb_fixed64(&p, end, &v)
            p = end
        else:
            t = 0
    while p < end:
        rc = pb_tag(&p, end, &field, &wt)
        if rc:
            return fail(st, rc, RW_CTX_SAMPLE, p)
        if field == 1:
            if wt != 1:
                return fail(st, RW_E_WRONG_WIRE_TYPE, RW_CTX_SAMPLE, p)
            rc = pb_fixed64(&p, end, &v)
        elif field == 2:
            if wt != 0:
                return fail(st, RW_E_WRONG_WIRE_TYPE, RW_CTX_SAMPLE, p)
            rc = pb_uvarint(&p, end, &t)
        else:
            rc = pb_skip(&p, end, field, wt, 0)
        if rc:
            return fail(st, rc, RW_CTX_SAMPLE, p)
    if st.n_samples >= st.cap.samples:
        return fail(st, RW_E_INTERNAL, RW_CTX_SAMPLE, p)
    st.ts[st.n_samples] = <int64_t>t
    st.vals[st.n_samples] = bits_f64(v)
    st.n_samples += 1
    return RW_OK

cdef int parse_exemplar(rw_state_t *st, const uint8_t *p, const uint8_t *end) noexcept nogil:
    cdef uint64_t field, v = 0, t = 0
    cdef uint32_t wt
    cdef size_t n, dummy = 0
    cdef int rc
    st.exlab.n = 0
    while p < end:
        rc = pb_tag(&p, end, &field, &wt)
        if rc:
            return fail(st, rc, RW_CTX_EXEMPLAR, p)
        if field == 1:
            if wt != 2:
                return fail(st, RW_E_WRONG_WIRE_TYPE, RW_CTX_EXEMPLAR, p)
            rc = pb_len(&p, end, &n)
            if rc:
                return fail(st, rc, RW_CTX_EXEMPLAR, p)
            rc = parse_label(st, p, p + n, &st.exlab)
            if rc:
                return rc
            p += n
            continue
        if field == 2:
            if wt != 1:
                return fail(st, RW_E_WRONG_WIRE_TYPE, RW_CTX_EXEMPLAR, p)
            rc = pb_fixed64(&p, end, &v)
        elif field == 3:
            if wt != 0:
                return fail(st, RW_E_WRONG_WIRE_TYPE, RW_CTX_EXEMPLAR, p)
            rc = pb_uvarint(&p, end, &t)
        else:
            rc = pb_skip(&p, end, field, wt, 0)
        if rc:
            return fail(st, rc, RW_CTX_EXEMPLAR, p)
    labels_canon(&st.exlab, &dummy)
    if (st.n_exemplars >= st.cap.exemplars
            or labels_put_key(&st.exlab, st.ex_keys, &st.ex_keys_len, st.cap.ex_key_bytes)):
        return fail(st, RW_E_INTERNAL, RW_CTX_EXEMPLAR, p)
    st.ex_key_off[st.n_exemplars + 1] = st.ex_keys_len
    st.ex_ts[st.n_exemplars] = <int64_t>t
    st.ex_vals[st.n_exemplars] = bits_f64(v)
    st.n_exemplars += 1
    return RW_OK

cdef int parse_series(rw_state_t *st, const uint8_t *p, const uint8_t *end) noexcept nogil:
    cdef uint64_t field, v
    cdef uint32_t wt
    cdef size_t n
    cdef int rc
    st.lab.n = 0
    st.cur_hist = 0
    while p < end:
        rc = pb_tag(&p, end, &field, &wt)
        if rc:
            return fail(st, rc, RW_CTX_TIMESERIES, p)
        if 1 <= field <= 4:
            if wt != 2:
                return fail(st, RW_E_WRONG_WIRE_TYPE, RW_CTX_TIMESERIES, p)
            rc = pb_len(&p, end, &n)
            if rc:
                return fail(st, rc, RW_CTX_TIMESERIES, p)
            if field == 1:
                rc = parse_label(st, p, p + n, &st.lab)
            elif field == 2:
                rc = parse_sample(st, p, p + n)
            elif field == 3:
                rc = parse_exemplar(st, p, p + n)
            else:
                # Native histograms are counted, not decoded: the distributor refuses them.
                st.cur_hist += 1
                st.n_histograms += 1
            if rc:
                return rc
            p += n
        elif field == 6:
            if wt != 0:
                return fail(st, RW_E_WRONG_WIRE_TYPE, RW_CTX_TIMESERIES, p)
            rc = pb_uvarint(&p, end, &v)     # created_timestamp: read and ignored
            if rc:
                return fail(st, rc, RW_CTX_TIMESERIES, p)
        else:
            rc = pb_skip(&p, end, field, wt, 0)
            if rc:
                return fail(st, rc, RW_CTX_TIMESERIES, p)
    return finish_series(st)

cdef int parse_metadata(rw_state_t *st, const uint8_t *p, const uint8_t *end) noexcept nogil:
    cdef rw_meta_t m
    cdef uint64_t field, v
    cdef uint32_t wt
    cdef size_t n
    cdef int rc
    memset(&m, 0, sizeof(m))
    while p < end:
        rc = pb_tag(&p, end, &field, &wt)
        if rc:
            return fail(st, rc, RW_CTX_METADATA, p)
        if field == 1:
            if wt != 0:
                return fail(st, RW_E_WRONG_WIRE_TYPE, RW_CTX_METADATA, p)
            rc = pb_uvarint(&p, end, &v)
            if rc:
                return fail(st, rc, RW_CTX_METADATA, p)
            m.type = <int32_t>v      # enums are int32 on the wire (negatives sign-extended)
        elif field == 2 or field == 4 or field == 5:
            if wt != 2:
                return fail(st, RW_E_WRONG_WIRE_TYPE, RW_CTX_METADATA, p)
            rc = pb_len(&p, end, &n)
            if rc:
                return fail(st, rc, RW_CTX_METADATA, p)
            if field == 2:
                m.name_off = p - st.base
                m.name_len = n
            elif field == 4:
                m.help_off = p - st.base
                m.help_len = n
            else:
                m.unit_off = p - st.base
                m.unit_len = n
            p += n
        else:
            rc = pb_skip(&p, end, field, wt, 0)
            if rc:
                return fail(st, rc, RW_CTX_METADATA, p)
    if st.n_metadata >= st.cap.metadata:
        return fail(st, RW_E_INTERNAL, RW_CTX_METADATA, p)
    st.meta[st.n_metadata] = m
    st.n_metadata += 1
    return RW_OK

cdef int rw_decode(rw_state_t *st, const uint8_t *p, size_t size) noexcept nogil:
    """Decode a WriteRequest body into st's columns; 0 or an RW_E_* status (see st.err_*)."""
    cdef const uint8_t *end = p + size
    cdef uint64_t field, v
    cdef uint32_t wt
    cdef size_t n
    cdef int rc
    while p < end:
        rc = pb_tag(&p, end, &field, &wt)
        if rc:
            return fail(st, rc, RW_CTX_WRITE_REQUEST, p)
        if field == 1 or field == 3:
            if wt != 2:
                return fail(st, RW_E_WRONG_WIRE_TYPE, RW_CTX_WRITE_REQUEST, p)
            rc = pb_len(&p, end, &n)
            if rc:
                return fail(st, rc, RW_CTX_WRITE_REQUEST, p)
            if field == 1:
                rc = parse_series(st, p, p + n)
            else:
                rc = parse_metadata(st, p, p + n)
            if rc:
                return rc
            p += n
        elif field == 2 or field == 1000 or field == 1001:
            if wt != 0:
                return fail(st, RW_E_WRONG_WIRE_TYPE, RW_CTX_WRITE_REQUEST, p)
            rc = pb_uvarint(&p, end, &v)
            if rc:
                return fail(st, rc, RW_CTX_WRITE_REQUEST, p)
            if field == 2:
                st.source = <int32_t>v
            elif field == 1000:
                st.skip_label_validation = v != 0
            else:
                st.skip_label_count_validation = v != 0
        else:
            rc = pb_skip(&p, end, field, wt, 0)
            if rc:
                return fail(st, rc, RW_CTX_WRITE_REQUEST, p)
    if (st.n_series != st.cap.series or st.n_samples != st.cap.samples
            or st.n_exemplars != st.cap.exemplars or st.n_metadata != st.cap.metadata):
        return fail(st, RW_E_INTERNAL, RW_CTX_WRITE_REQUEST, p)
    return RW_OK


cdef int count_series(rw_state_t *st, const uint8_t *p, const uint8_t *end) noexcept nogil:
    """Counting pass over one TimeSeries: samples, exemplars and the key size bounds. Only
    this level's framing is checked here; the filling pass checks everything."""
    cdef uint64_t field, v
    cdef uint32_t wt
    cdef size_t n
    cdef int rc
    st.cap.key_bytes += <uint64_t>(end - p) + 1     # +1: a series with no fields has key b"\0"
    while p < end:
        # Labels under 128 bytes (nearly all): one compare and a jump.
        if p[0] == 0x0A and end - p >= 2 and p[1] < 0x80 and p[1] <= end - p - 2:
            p += 2 + p[1]
            continue
        rc = pb_tag(&p, end, &field, &wt)
        if rc:
            return fail(st, rc, RW_CTX_TIMESERIES, p)
        if wt == 2:
            # Every known field here is length-delimited: skip inline, no pb_skip call
            # (rw_decode benchmark: 5% of the profile went to calling pb_skip for labels).
            rc = pb_len(&p, end, &n)
            if rc:
                return fail(st, rc, RW_CTX_TIMESERIES, p)
            if field == 2:
                st.cap.samples += 1
            elif field == 3:
                st.cap.exemplars += 1
                st.cap.ex_key_bytes += n + 1
            p += n
        else:
            rc = pb_skip(&p, end, field, wt, 0)
            if rc:
                return fail(st, rc, RW_CTX_TIMESERIES, p)
    return RW_OK

cdef int rw_count(rw_state_t *st, const uint8_t *p, size_t size) noexcept nogil:
    """First pass: size every column (st.cap) so the caller can allocate them exactly once."""
    cdef const uint8_t *end = p + size
    cdef uint64_t field
    cdef uint32_t wt
    cdef size_t n
    cdef int rc
    memset(&st.cap, 0, sizeof(rw_counts_t))
    while p < end:
        rc = pb_tag(&p, end, &field, &wt)
        if rc:
            return fail(st, rc, RW_CTX_WRITE_REQUEST, p)
        if wt == 2 and (field == 1 or field == 3):
            rc = pb_len(&p, end, &n)
            if rc:
                return fail(st, rc, RW_CTX_WRITE_REQUEST, p)
            if field == 1:
                st.cap.series += 1
                rc = count_series(st, p, p + n)
                if rc:
                    return rc
            else:
                st.cap.metadata += 1
            p += n
        else:
            rc = pb_skip(&p, end, field, wt, 0)
            if rc:
                return fail(st, rc, RW_CTX_WRITE_REQUEST, p)
    return RW_OK

cdef void rw_state_init(rw_state_t *st, const uint8_t *base) noexcept nogil:
    memset(st, 0, sizeof(rw_state_t))
    st.base = base
    st.err_at = base

cdef void rw_state_free(rw_state_t *st) noexcept nogil:
    """Free the scratch label lists (the columns belong to the caller)."""
    free(st.lab.items)
    free(st.exlab.items)
    st.lab.items = NULL
    st.exlab.items = NULL


# ---- Python surface ----------------------------------------------------------------------

# The columns are filled through C pointers of these widths.
if (_pyarray.array('Q').itemsize, _pyarray.array('q').itemsize, _pyarray.array('d').itemsize,
        _pyarray.array('I').itemsize, _pyarray.array('i').itemsize) != (8, 8, 8, 4, 4):
    raise ImportError("urdar.engine.remotewrite needs 8-byte 'Q'/'q'/'d' and 4-byte 'I'/'i' arrays")

cdef array.array _T_Q = _pyarray.array('Q')
cdef array.array _T_q = _pyarray.array('q')
cdef array.array _T_d = _pyarray.array('d')
cdef array.array _T_I = _pyarray.array('I')
cdef array.array _T_i = _pyarray.array('i')

cdef inline array.array _new_column(array.array template, uint64_t n):
    """An uninitialised array of n items; the decoder fills every slot."""
    return array.clone(template, <Py_ssize_t>n, False)

cdef str _text(const uint8_t *base, size_t off, size_t n):
    return (<const char *>base + off)[:n].decode("utf-8", "replace")


@cython.final
cdef class DecodedWrite:
    """One WriteRequest as columns. Series i has key keys[key_offsets[i]:key_offsets[i+1]],
    samples ts/vals[sample_offsets[i]:sample_offsets[i+1]] (wire order), exemplars
    exemplar_*[exemplar_offsets[i]:exemplar_offsets[i+1]], and validation bits series_flags[i]."""

    def __len__(self):
        return self.n_series

    def key(self, Py_ssize_t i):
        """Canonical label key bytes of series i."""
        if not 0 <= i < self.n_series:
            raise IndexError(i)
        return self.keys[self.key_offsets[i]:self.key_offsets[i + 1]]

    def labels(self, Py_ssize_t i):
        """Series i's labels as sorted (name, value) str pairs (what its key holds)."""
        return decode_labels(self.key(i))

    def exemplar_key(self, Py_ssize_t j):
        """Canonical label key bytes of exemplar j (global exemplar index)."""
        if not 0 <= j < self.n_exemplars:
            raise IndexError(j)
        return self.exemplar_keys[self.exemplar_key_offsets[j]:self.exemplar_key_offsets[j + 1]]

    def flag_names(self, Py_ssize_t i):
        """Readable names of the validation bits set on series i."""
        if not 0 <= i < self.n_series:
            raise IndexError(i)
        f = self.series_flags[i]
        return [name for bit, name in FLAG_NAMES.items() if f & bit]

    def __repr__(self):
        return "<DecodedWrite series=%d samples=%d exemplars=%d histograms=%d metadata=%d>" % (
            self.n_series, self.n_samples, self.n_exemplars, self.n_histograms, len(self.metadata))


def decode(const uint8_t[::1] data not None, Py_ssize_t max_label_name_length=1024,
           Py_ssize_t max_label_value_length=2048, Py_ssize_t max_label_names_per_series=30,
           bytes drop_label=b""):
    """Decode a snappy-decompressed remote-write 1.0 WriteRequest into a DecodedWrite.

    Limits are in bytes / labels; 0 disables one. Limit violations and label problems are
    reported per series in series_flags (the request still decodes); malformed protobuf
    raises RemoteWriteDecodeError. Two passes run without the GIL: one sizes the columns,
    which are then allocated once as the result's own arrays, and one fills them. `data`
    must not be resized while this runs. `drop_label` (a label name, b"" = none) is removed
    from every series before validation and hashing (the HA tracker's replica label);
    dropped_labels counts the series that had it, first_dropped_value is series 0's value
    (None if it had none)."""
    cdef rw_state_t st
    cdef const uint8_t *p = &data[0] if data.shape[0] else NULL
    cdef size_t n = data.shape[0]
    cdef int rc
    cdef size_t i
    cdef rw_meta_t *m
    cdef PyObject *keys_raw = NULL
    cdef PyObject *ex_keys_raw = NULL
    cdef DecodedWrite out
    if max_label_name_length < 0 or max_label_value_length < 0 or max_label_names_per_series < 0:
        raise ValueError("label limits must be >= 0 (0 = unlimited)")
    rw_state_init(&st, p)
    st.max_name_len = max_label_name_length
    st.max_value_len = max_label_value_length
    st.max_names = max_label_names_per_series
    st.drop_name = <const uint8_t *>PyBytes_AS_STRING(drop_label)
    st.drop_len = len(drop_label)
    try:
        with nogil:
            rc = rw_count(&st, p, n)
        if rc:
            _raise_status(&st, rc, p, n)

        # Allocate every column at its final size (keys at an upper bound, shrunk below).
        out = DecodedWrite.__new__(DecodedWrite)
        keys_raw = _bytes_alloc(st.cap.key_bytes)
        ex_keys_raw = _bytes_alloc(st.cap.ex_key_bytes)
        out.key_offsets = _new_column(_T_Q, st.cap.series + 1)
        out.key_hashes = _new_column(_T_Q, st.cap.series)
        out.sample_offsets = _new_column(_T_Q, st.cap.series + 1)
        out.ts = _new_column(_T_q, st.cap.samples)
        out.vals = _new_column(_T_d, st.cap.samples)
        out.exemplar_offsets = _new_column(_T_Q, st.cap.series + 1)
        out.exemplar_ts = _new_column(_T_q, st.cap.exemplars)
        out.exemplar_vals = _new_column(_T_d, st.cap.exemplars)
        out.exemplar_key_offsets = _new_column(_T_Q, st.cap.exemplars + 1)
        out.histogram_counts = _new_column(_T_I, st.cap.series)
        out.series_flags = _new_column(_T_I, st.cap.series)
        out.series_bad_label = _new_column(_T_i, st.cap.series)
        st.meta = <rw_meta_t *>malloc(sizeof(rw_meta_t) * st.cap.metadata + 1)
        if st.meta == NULL:
            raise MemoryError()
        st.keys = <uint8_t *>PyBytes_AS_STRING(<object>keys_raw)
        st.ex_keys = <uint8_t *>PyBytes_AS_STRING(<object>ex_keys_raw)
        st.key_off = <uint64_t *>out.key_offsets.data.as_voidptr
        st.hashes = <uint64_t *>out.key_hashes.data.as_voidptr
        st.s_off = <uint64_t *>out.sample_offsets.data.as_voidptr
        st.ts = <int64_t *>out.ts.data.as_voidptr
        st.vals = <double *>out.vals.data.as_voidptr
        st.ex_off = <uint64_t *>out.exemplar_offsets.data.as_voidptr
        st.ex_ts = <int64_t *>out.exemplar_ts.data.as_voidptr
        st.ex_vals = <double *>out.exemplar_vals.data.as_voidptr
        st.ex_key_off = <uint64_t *>out.exemplar_key_offsets.data.as_voidptr
        st.hist = <uint32_t *>out.histogram_counts.data.as_voidptr
        st.flags = <uint32_t *>out.series_flags.data.as_voidptr
        st.bad = <int32_t *>out.series_bad_label.data.as_voidptr
        st.key_off[0] = st.s_off[0] = st.ex_off[0] = st.ex_key_off[0] = 0

        with nogil:
            rc = rw_decode(&st, p, n)
        if rc:
            _raise_status(&st, rc, p, n)

        # Shrink the key blobs to what was written (realloc in place; no copy).
        _bytes_shrink(&keys_raw, st.keys_len)
        _bytes_shrink(&ex_keys_raw, st.ex_keys_len)
        out.keys = <bytes>keys_raw
        out.exemplar_keys = <bytes>ex_keys_raw
        out.metadata = []
        m = st.meta
        for i in range(st.n_metadata):
            out.metadata.append((m[i].type, _text(p, m[i].name_off, m[i].name_len),
                                 _text(p, m[i].help_off, m[i].help_len),
                                 _text(p, m[i].unit_off, m[i].unit_len)))
        out.n_series = st.n_series
        out.n_samples = st.n_samples
        out.n_exemplars = st.n_exemplars
        out.n_histograms = st.n_histograms
        out.source = <int>st.source
        out.skip_label_validation = st.skip_label_validation
        out.skip_label_count_validation = st.skip_label_count_validation
        out.dropped_labels = st.n_dropped
        out.first_dropped_value = (PyBytes_FromStringAndSize(<const char *>st.first_drop,
                                                             <Py_ssize_t>st.first_drop_len)
                                   if st.first_dropped else None)
        return out
    finally:
        Py_XDECREF(keys_raw)
        Py_XDECREF(ex_keys_raw)
        free(st.meta)
        rw_state_free(&st)


cdef PyObject *_bytes_alloc(uint64_t n) except NULL:
    """A new, uninitialised bytes object of n bytes, as an owned reference."""
    cdef PyObject *b = _PyBytes_New(NULL, <Py_ssize_t>n)
    if b == NULL:
        raise MemoryError()
    return b

cdef int _bytes_shrink(PyObject **b, uint64_t n) except -1:
    # _PyBytes_Resize frees the object and sets *b to NULL if it fails.
    return _PyBytes_Resize(b, <Py_ssize_t>n)

cdef int _raise_status(rw_state_t *st, int rc, const uint8_t *p, size_t n) except -1:
    if rc == RW_E_OOM:
        raise MemoryError("decoding a remote-write request of %d bytes" % n)
    if rc == RW_E_INTERNAL:
        raise AssertionError("remote-write decoder passes disagree (a bug)")
    raise RemoteWriteDecodeError(
        "%s in %s" % (_STATUS_TEXT.get(rc, "error %d" % rc), _CONTEXT_TEXT[st.err_ctx]),
        st.err_at - p if st.err_at != NULL else 0)


# ---- encoder (tests and benchmarks) ---------------------------------------------------------
# Emits what a proto3 serializer emits: fields in number order, zero scalars and empty strings
# omitted (a -0.0 value is kept: its bits are not zero), so the bytes match upb's.

cdef inline bytes _b(s):
    return s.encode("utf-8") if isinstance(s, str) else bytes(s)

cdef void _put_tag(wbuf_t *b, uint64_t field, uint32_t wt) noexcept:
    wbuf_put_uvarint(b, (field << 3) | wt)

cdef void _put_str_field(wbuf_t *b, uint64_t field, bytes s) noexcept:
    cdef size_t n = len(s)
    if n:
        _put_tag(b, field, 2)
        wbuf_put_uvarint(b, n)
        wbuf_put(b, <const char *>s, n)

cdef void _put_sub(wbuf_t *b, uint64_t field, wbuf_t *sub) noexcept:
    _put_tag(b, field, 2)
    wbuf_put_uvarint(b, sub.len)
    wbuf_put(b, sub.data, sub.len)

cdef void _put_label(wbuf_t *b, uint64_t field, bytes name, bytes value) noexcept:
    cdef size_t nl = len(name), vl = len(value)
    cdef size_t size = (1 + uvarint_size(nl) + nl if nl else 0) + (1 + uvarint_size(vl) + vl if vl else 0)
    _put_tag(b, field, 2)
    wbuf_put_uvarint(b, size)
    _put_str_field(b, 1, name)
    _put_str_field(b, 2, value)

cdef void _put_point(wbuf_t *b, uint64_t field, uint64_t vfield, uint64_t tfield,
                     int64_t t, double v) noexcept:
    """A Sample (value=1, timestamp=2) or the scalar tail of an Exemplar (2, 3)."""
    cdef uint64_t bits = f64_bits(v)
    cdef size_t size = (9 if bits else 0) + (1 + uvarint_size(<uint64_t>t) if t else 0)
    if field:
        _put_tag(b, field, 2)
        wbuf_put_uvarint(b, size)
    if bits:
        _put_tag(b, vfield, 1)
        if wbuf_reserve(b, 8) == 0:
            memcpy(b.data + b.len, &bits, 8)     # little-endian host (x86-64, aarch64)
            b.len += 8
    if t:
        _put_tag(b, tfield, 0)
        wbuf_put_uvarint(b, <uint64_t>t)


def encode_columns(const uint8_t[::1] keys not None, const uint64_t[::1] key_offsets not None,
                   const uint64_t[::1] sample_offsets not None, const int64_t[::1] ts not None,
                   const double[::1] vals not None, const uint64_t[::1] series not None):
    """WriteRequest bytes (not compressed) holding the TimeSeries of batch columns' series
    `series` (indexes, in that order): labels straight from the canonical keys (sorted, as keys
    are), samples ts/vals[sample_offsets[i]:sample_offsets[i+1]]. What the distributor sends an
    ingester: no Python object per label or sample. ValueError for a malformed key."""
    cdef wbuf_t out, sb
    cdef size_t k, n_series = series.shape[0], n_keys = key_offsets.shape[0]
    cdef uint64_t i, j, a, b, count, nl, vl, lab
    cdef const uint8_t *p
    cdef const uint8_t *end
    cdef const uint8_t *name
    cdef int r
    wbuf_init(&out, 4096)
    wbuf_init(&sb, 1024)
    try:
        for k in range(n_series):
            i = series[k]
            if i + 1 >= n_keys or i + 1 >= <uint64_t>sample_offsets.shape[0]:
                raise ValueError("series index %d out of range" % i)
            a, b = key_offsets[i], key_offsets[i + 1]
            if a > b or b > <uint64_t>keys.shape[0]:
                raise ValueError("bad key offsets of series %d" % i)
            sb.len = 0
            if b > a:
                p = &keys[a]
                end = p + (b - a)
                r = get_uvarint(p, end, &count)
                if r < 0:
                    raise ValueError("malformed label key of series %d" % i)
                p += r
                for lab in range(count):
                    r = get_uvarint(p, end, &nl)
                    if r < 0 or <uint64_t>(end - p - r) < nl:
                        raise ValueError("malformed label key of series %d" % i)
                    name = p + r
                    p = name + nl
                    r = get_uvarint(p, end, &vl)
                    if r < 0 or <uint64_t>(end - p - r) < vl:
                        raise ValueError("malformed label key of series %d" % i)
                    _put_tag(&sb, 1, 2)
                    wbuf_put_uvarint(&sb, (1 + uvarint_size(nl) + nl if nl else 0)
                                     + (1 + uvarint_size(vl) + vl if vl else 0))
                    if nl:
                        _put_tag(&sb, 1, 2)
                        wbuf_put_uvarint(&sb, nl)
                        wbuf_put(&sb, name, nl)
                    if vl:
                        _put_tag(&sb, 2, 2)
                        wbuf_put_uvarint(&sb, vl)
                        wbuf_put(&sb, p + r, vl)
                    p += r + vl
            a, b = sample_offsets[i], sample_offsets[i + 1]
            if a > b or b > <uint64_t>ts.shape[0] or b > <uint64_t>vals.shape[0]:
                raise ValueError("bad sample offsets of series %d" % i)
            for j in range(a, b):
                _put_point(&sb, 2, 1, 2, ts[j], vals[j])
            _put_sub(&out, 1, &sb)
        if out.oom or sb.oom:
            raise MemoryError("encoding a remote-write request")
        return PyBytes_FromStringAndSize(<const char *>out.data, out.len)
    finally:
        wbuf_free(&out)
        wbuf_free(&sb)


def encode_write_request(series, metadata=(), int source=0, bint skip_label_validation=False):
    """Protobuf WriteRequest bytes (not snappy-compressed) for tests and benchmarks.

    `series`: iterable of (labels, samples[, exemplars[, histograms]]) where labels are
    (name, value) pairs in the order to emit (str or bytes; not sorted or checked), samples
    are (t, v) pairs, exemplars are (labels, t, v) and histograms are already-encoded
    Histogram message bodies (bytes). `metadata`: (type, metric family name, help, unit)."""
    cdef wbuf_t out, sb, eb
    cdef bytes hb
    wbuf_init(&out, 4096)
    wbuf_init(&sb, 1024)
    wbuf_init(&eb, 256)
    try:
        for item in series:
            labels = item[0]
            samples = item[1]
            exemplars = item[2] if len(item) > 2 else ()
            histograms = item[3] if len(item) > 3 else ()
            sb.len = 0
            for name, value in labels:
                _put_label(&sb, 1, _b(name), _b(value))
            for t, v in samples:
                _put_point(&sb, 2, 1, 2, t, v)
            for ex_labels, t, v in exemplars:
                eb.len = 0
                for name, value in ex_labels:
                    _put_label(&eb, 1, _b(name), _b(value))
                _put_point(&eb, 0, 2, 3, t, v)
                _put_sub(&sb, 3, &eb)
            for h in histograms:
                hb = _b(h)
                _put_tag(&sb, 4, 2)     # a repeated message is emitted even when empty
                wbuf_put_uvarint(&sb, len(hb))
                wbuf_put(&sb, <const char *>hb, len(hb))
            _put_sub(&out, 1, &sb)
        if source:
            _put_tag(&out, 2, 0)
            wbuf_put_uvarint(&out, <uint64_t><int64_t>source)
        for mtype, name, help_, unit in metadata:
            eb.len = 0
            if mtype:
                _put_tag(&eb, 1, 0)
                wbuf_put_uvarint(&eb, <uint64_t><int64_t>mtype)
            _put_str_field(&eb, 2, _b(name))
            _put_str_field(&eb, 4, _b(help_))
            _put_str_field(&eb, 5, _b(unit))
            _put_sub(&out, 3, &eb)
        if skip_label_validation:
            _put_tag(&out, 1000, 0)
            wbuf_put_u8(&out, 1)
        if out.oom or sb.oom or eb.oom:
            raise MemoryError("encoding a remote-write request")
        return PyBytes_FromStringAndSize(<const char *>out.data, out.len)
    finally:
        wbuf_free(&out)
        wbuf_free(&sb)
        wbuf_free(&eb)
