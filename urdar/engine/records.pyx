# cython: language_level=3
"""Logical WAL records (series, samples, tombstones, exemplars, metadata) in Prometheus'
tsdb/record byte layouts (see records.pxd for the diagrams).

The head builds one record per append batch with the C encoders, without the GIL, and
hands it to wal.WAL.wal_log; replay decodes with the C decoders into caller arrays. The
Python functions below wrap both for tests, checkpoints and tools. Float values travel
as raw bits, so NaN payloads (the stale marker 0x7ff0000000000002) survive untouched."""
from array import array

from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdint cimport uint8_t, uint64_t, int64_t
from libc.stdlib cimport malloc, free

from urdar.engine.encoding cimport (
    wbuf_t, wbuf_init, wbuf_free, wbuf_put, wbuf_put_u8, wbuf_put_be64, wbuf_put_uvarint,
    wbuf_put_varint, wbuf_put_uvarint_bytes, rbuf_t, rbuf_init, rbuf_u8, rbuf_be64, rbuf_uvarint,
    rbuf_varint, rbuf_bytes, rbuf_uvarint_bytes, rbuf_left, f64_bits, bits_f64,
)
from urdar.engine.errors import MalformedRecordError

cdef const uint8_t _EMPTY[1]


# ---- encoders ---------------------------------------------------------------------------

cdef void rec_series_begin(wbuf_t *b) noexcept nogil:
    wbuf_put_u8(b, REC_SERIES)

cdef void rec_series_add(wbuf_t *b, uint64_t ref, const uint8_t *key, size_t keylen) noexcept nogil:
    # the canonical key already is `uvarint #labels · pairs`, exactly record.go's EncodeLabels
    wbuf_put_be64(b, ref)
    wbuf_put(b, key, keylen)

cdef void rec_samples(wbuf_t *b, const uint64_t *refs, const int64_t *ts, const double *vs,
                      size_t n) noexcept nogil:
    cdef size_t i
    cdef uint64_t base_ref
    cdef int64_t base_t
    wbuf_put_u8(b, REC_SAMPLES)
    if n == 0:
        return   # a bare type byte, as Prometheus writes an empty batch
    base_ref = refs[0]
    base_t = ts[0]
    wbuf_put_be64(b, base_ref)
    wbuf_put_be64(b, <uint64_t>base_t)
    for i in range(n):
        # deltas are signed: refs and times need not be ascending within a batch;
        # unsigned subtraction wraps exactly like Go's int64 conversion does
        wbuf_put_varint(b, <int64_t>(refs[i] - base_ref))
        wbuf_put_varint(b, <int64_t>(<uint64_t>ts[i] - <uint64_t>base_t))
        wbuf_put_be64(b, f64_bits(vs[i]))

cdef void rec_tombstones_begin(wbuf_t *b) noexcept nogil:
    wbuf_put_u8(b, REC_TOMBSTONES)

cdef void rec_tombstone_add(wbuf_t *b, uint64_t ref, int64_t mint, int64_t maxt) noexcept nogil:
    wbuf_put_be64(b, ref)
    wbuf_put_varint(b, mint)
    wbuf_put_varint(b, maxt)

cdef void rec_exemplars_begin(wbuf_t *b, uint64_t base_ref, int64_t base_t) noexcept nogil:
    wbuf_put_u8(b, REC_EXEMPLARS)
    wbuf_put_be64(b, base_ref)
    wbuf_put_be64(b, <uint64_t>base_t)

cdef void rec_exemplar_add(wbuf_t *b, uint64_t base_ref, int64_t base_t, uint64_t ref, int64_t t,
                           double v, const uint8_t *key, size_t keylen) noexcept nogil:
    wbuf_put_varint(b, <int64_t>(ref - base_ref))
    wbuf_put_varint(b, <int64_t>(<uint64_t>t - <uint64_t>base_t))
    wbuf_put_be64(b, f64_bits(v))
    wbuf_put(b, key, keylen)

cdef void rec_metadata_begin(wbuf_t *b) noexcept nogil:
    wbuf_put_u8(b, REC_METADATA)

cdef void rec_metadata_add(wbuf_t *b, uint64_t ref, uint8_t mtype, const uint8_t *unit, size_t unitlen,
                           const uint8_t *help, size_t helplen) noexcept nogil:
    wbuf_put_uvarint(b, ref)
    wbuf_put_u8(b, mtype)
    wbuf_put_uvarint(b, 2)   # two fields, UNIT then HELP, as record.go writes them
    wbuf_put_uvarint_bytes(b, b"UNIT", 4)
    wbuf_put_uvarint_bytes(b, unit, unitlen)
    wbuf_put_uvarint_bytes(b, b"HELP", 4)
    wbuf_put_uvarint_bytes(b, help, helplen)


# ---- decoders ---------------------------------------------------------------------------

cdef int rec_type(const uint8_t *p, size_t n) noexcept nogil:
    if n < 1:
        return REC_UNKNOWN
    if 1 <= p[0] <= 14:   # every type record.go knows, including ones urdar does not write
        return p[0]
    return REC_UNKNOWN

cdef inline int _skip_key(rbuf_t *r) noexcept nogil:
    """Step over one label key; 0, or -1 when it is truncated."""
    cdef uint64_t count = rbuf_uvarint(r)
    cdef uint64_t i
    cdef size_t ln
    # each pair needs at least two length bytes: refuse absurd counts before looping
    if r.err or count > rbuf_left(r) / 2:
        r.err = 1
        return -1
    for i in range(count):
        rbuf_uvarint_bytes(r, &ln)
        rbuf_uvarint_bytes(r, &ln)
        if r.err:
            return -1
    return 0

cdef inline int _open(rbuf_t *r, const uint8_t *p, size_t n, uint8_t typ) noexcept nogil:
    rbuf_init(r, p, n)
    if rbuf_u8(r) != typ:
        return -1
    return 0

cdef Py_ssize_t rec_series_count(const uint8_t *p, size_t n) noexcept nogil:
    return rec_series_decode(p, n, NULL, NULL, NULL, -1)

cdef Py_ssize_t rec_series_decode(const uint8_t *p, size_t n, uint64_t *refs, size_t *key_off,
                                  size_t *key_len, Py_ssize_t cap) noexcept nogil:
    # cap < 0 means count only (no output arrays)
    cdef rbuf_t r
    cdef Py_ssize_t k = 0
    cdef uint64_t ref
    cdef const uint8_t *start
    if _open(&r, p, n, REC_SERIES):
        return REC_EMALFORMED
    while rbuf_left(&r) and not r.err:
        ref = rbuf_be64(&r)
        start = r.p
        if _skip_key(&r):
            return REC_EMALFORMED
        if cap >= 0:
            if k >= cap:
                return REC_ECAP
            refs[k] = ref
            key_off[k] = <size_t>(start - p)
            key_len[k] = <size_t>(r.p - start)
        k += 1
    return REC_EMALFORMED if r.err else k

cdef Py_ssize_t rec_samples_count(const uint8_t *p, size_t n) noexcept nogil:
    return rec_samples_decode(p, n, NULL, NULL, NULL, -1)

cdef Py_ssize_t rec_samples_decode(const uint8_t *p, size_t n, uint64_t *refs, int64_t *ts, double *vs,
                                   Py_ssize_t cap) noexcept nogil:
    cdef rbuf_t r
    cdef Py_ssize_t k = 0
    cdef uint64_t base_ref, bits
    cdef int64_t base_t, dref, dt
    if _open(&r, p, n, REC_SAMPLES):
        return REC_EMALFORMED
    if rbuf_left(&r) == 0:
        return 0
    base_ref = rbuf_be64(&r)
    base_t = <int64_t>rbuf_be64(&r)
    while rbuf_left(&r) and not r.err:
        dref = rbuf_varint(&r)
        dt = rbuf_varint(&r)
        bits = rbuf_be64(&r)
        if r.err:
            break
        if cap >= 0:
            if k >= cap:
                return REC_ECAP
            refs[k] = base_ref + <uint64_t>dref
            ts[k] = <int64_t>(<uint64_t>base_t + <uint64_t>dt)
            vs[k] = bits_f64(bits)
        k += 1
    return REC_EMALFORMED if r.err else k

cdef Py_ssize_t rec_tombstones_count(const uint8_t *p, size_t n) noexcept nogil:
    return rec_tombstones_decode(p, n, NULL, NULL, NULL, -1)

cdef Py_ssize_t rec_tombstones_decode(const uint8_t *p, size_t n, uint64_t *refs, int64_t *mints,
                                      int64_t *maxts, Py_ssize_t cap) noexcept nogil:
    cdef rbuf_t r
    cdef Py_ssize_t k = 0
    cdef uint64_t ref
    cdef int64_t mint, maxt
    if _open(&r, p, n, REC_TOMBSTONES):
        return REC_EMALFORMED
    while rbuf_left(&r) and not r.err:
        ref = rbuf_be64(&r)
        mint = rbuf_varint(&r)
        maxt = rbuf_varint(&r)
        if r.err:
            break
        if cap >= 0:
            if k >= cap:
                return REC_ECAP
            refs[k] = ref
            mints[k] = mint
            maxts[k] = maxt
        k += 1
    return REC_EMALFORMED if r.err else k

cdef Py_ssize_t rec_exemplars_count(const uint8_t *p, size_t n) noexcept nogil:
    return rec_exemplars_decode(p, n, NULL, NULL, NULL, NULL, NULL, -1)

cdef Py_ssize_t rec_exemplars_decode(const uint8_t *p, size_t n, uint64_t *refs, int64_t *ts, double *vs,
                                     size_t *key_off, size_t *key_len, Py_ssize_t cap) noexcept nogil:
    cdef rbuf_t r
    cdef Py_ssize_t k = 0
    cdef uint64_t base_ref, bits
    cdef int64_t base_t, dref, dt
    cdef const uint8_t *start
    if _open(&r, p, n, REC_EXEMPLARS):
        return REC_EMALFORMED
    if rbuf_left(&r) == 0:
        return 0
    base_ref = rbuf_be64(&r)
    base_t = <int64_t>rbuf_be64(&r)
    while rbuf_left(&r) and not r.err:
        dref = rbuf_varint(&r)
        dt = rbuf_varint(&r)
        bits = rbuf_be64(&r)
        start = r.p
        if _skip_key(&r):
            return REC_EMALFORMED
        if cap >= 0:
            if k >= cap:
                return REC_ECAP
            refs[k] = base_ref + <uint64_t>dref
            ts[k] = <int64_t>(<uint64_t>base_t + <uint64_t>dt)
            vs[k] = bits_f64(bits)
            key_off[k] = <size_t>(start - p)
            key_len[k] = <size_t>(r.p - start)
        k += 1
    return REC_EMALFORMED if r.err else k


# ---- Python API -----------------------------------------------------------------------

cdef inline const uint8_t *_ptr(const uint8_t[::1] mv) noexcept:
    return &mv[0] if mv.shape[0] else _EMPTY

cdef bytes _take(wbuf_t *b):
    """The buffer's bytes as a Python object; frees the buffer."""
    try:
        if b.oom:
            raise MemoryError("WAL record buffer")
        return PyBytes_FromStringAndSize(<const char *>b.data, b.len)
    finally:
        wbuf_free(b)

cdef _malformed(const uint8_t[::1] rec, Py_ssize_t rc, str what):
    typ = rec[0] if rec.shape[0] else 255
    if rc == REC_EMALFORMED:
        raise MalformedRecordError(typ, None, "malformed %s record" % what)
    raise MalformedRecordError(typ, None, "unexpected result %d decoding %s record" % (rc, what))

cdef bytes _as_bytes(s):
    if isinstance(s, str):
        return (<str>s).encode("utf-8")
    return bytes(s)


def record_type(const uint8_t[::1] rec not None):
    """The record's type byte (1 series, 2 samples, ...), or 255 when empty or unknown."""
    return rec_type(_ptr(rec), rec.shape[0])


def encode_series(items):
    """A series record from (ref, label key bytes) pairs."""
    cdef wbuf_t b
    cdef const uint8_t[::1] key
    wbuf_init(&b, 256)
    rec_series_begin(&b)
    try:
        for ref, k in items:
            key = k
            rec_series_add(&b, ref, _ptr(key), key.shape[0])
    except BaseException:
        wbuf_free(&b)
        raise
    return _take(&b)


def decode_series(const uint8_t[::1] rec not None):
    """List of (ref, label key bytes) of a series record; MalformedRecordError if broken."""
    cdef const uint8_t *p = _ptr(rec)
    cdef size_t n = rec.shape[0]
    cdef Py_ssize_t k = rec_series_count(p, n), i
    if k < 0:
        _malformed(rec, k, "series")
    refs = array("Q", bytes(8 * k))
    offs = array("Q", bytes(8 * k))
    lens = array("Q", bytes(8 * k))
    cdef uint64_t[::1] r = refs
    cdef uint64_t[::1] o = offs
    cdef uint64_t[::1] ln = lens
    if k:
        k = rec_series_decode(p, n, &r[0], <size_t *>&o[0], <size_t *>&ln[0], k)
        if k < 0:
            _malformed(rec, k, "series")
    return [(r[i], PyBytes_FromStringAndSize(<const char *>p + o[i], ln[i])) for i in range(k)]


def encode_samples(const uint64_t[::1] refs not None, const int64_t[::1] ts not None,
                   const double[::1] vals not None):
    """A samples record from parallel arrays: refs array('Q'), t array('q') in ms, values array('d')."""
    cdef wbuf_t b
    cdef size_t n = refs.shape[0]
    if ts.shape[0] != <Py_ssize_t>n or vals.shape[0] != <Py_ssize_t>n:
        raise ValueError("refs, ts and vals differ in length: %d, %d, %d"
                         % (n, ts.shape[0], vals.shape[0]))
    wbuf_init(&b, 17 + 14 * n)
    with nogil:
        if n:
            rec_samples(&b, &refs[0], &ts[0], &vals[0], n)
        else:
            rec_samples(&b, NULL, NULL, NULL, 0)
    return _take(&b)


def decode_samples(const uint8_t[::1] rec not None):
    """(refs array('Q'), t array('q'), values array('d')) of a samples record."""
    cdef const uint8_t *p = _ptr(rec)
    cdef size_t n = rec.shape[0]
    cdef Py_ssize_t k
    with nogil:
        k = rec_samples_count(p, n)
    if k < 0:
        _malformed(rec, k, "samples")
    refs = array("Q", bytes(8 * k))
    ts = array("q", bytes(8 * k))
    vs = array("d", bytes(8 * k))
    cdef uint64_t[::1] r = refs
    cdef int64_t[::1] t = ts
    cdef double[::1] v = vs
    if k:
        with nogil:
            k = rec_samples_decode(p, n, &r[0], &t[0], &v[0], k)
        if k < 0:
            _malformed(rec, k, "samples")
    return refs, ts, vs


def encode_tombstones(items):
    """A tombstones record from (ref, mint, maxt) triples, one per deleted interval."""
    cdef wbuf_t b
    wbuf_init(&b, 64)
    rec_tombstones_begin(&b)
    try:
        for ref, mint, maxt in items:
            rec_tombstone_add(&b, ref, mint, maxt)
    except BaseException:
        wbuf_free(&b)
        raise
    return _take(&b)


def decode_tombstones(const uint8_t[::1] rec not None):
    """List of (ref, mint, maxt) of a tombstones record."""
    cdef const uint8_t *p = _ptr(rec)
    cdef size_t n = rec.shape[0]
    cdef Py_ssize_t k = rec_tombstones_count(p, n), i
    if k < 0:
        _malformed(rec, k, "tombstones")
    refs = array("Q", bytes(8 * k))
    mints = array("q", bytes(8 * k))
    maxts = array("q", bytes(8 * k))
    cdef uint64_t[::1] r = refs
    cdef int64_t[::1] lo = mints
    cdef int64_t[::1] hi = maxts
    if k:
        k = rec_tombstones_decode(p, n, &r[0], &lo[0], &hi[0], k)
        if k < 0:
            _malformed(rec, k, "tombstones")
    return [(r[i], lo[i], hi[i]) for i in range(k)]


def encode_exemplars(items):
    """An exemplars record from (ref, t, value, label key bytes) items."""
    cdef wbuf_t b
    cdef const uint8_t[::1] key
    cdef uint64_t base_ref = 0
    cdef int64_t base_t = 0
    cdef bint first = True
    wbuf_init(&b, 256)
    try:
        for ref, t, v, k in items:
            if first:
                base_ref, base_t, first = ref, t, False
                rec_exemplars_begin(&b, base_ref, base_t)
            key = k
            rec_exemplar_add(&b, base_ref, base_t, ref, t, v, _ptr(key), key.shape[0])
    except BaseException:
        wbuf_free(&b)
        raise
    if first:
        wbuf_put_u8(&b, REC_EXEMPLARS)   # empty: the type byte alone
    return _take(&b)


def decode_exemplars(const uint8_t[::1] rec not None):
    """List of (ref, t, value, label key bytes) of an exemplars record."""
    cdef const uint8_t *p = _ptr(rec)
    cdef size_t n = rec.shape[0]
    cdef Py_ssize_t k = rec_exemplars_count(p, n), i
    if k < 0:
        _malformed(rec, k, "exemplars")
    refs = array("Q", bytes(8 * k))
    ts = array("q", bytes(8 * k))
    vs = array("d", bytes(8 * k))
    offs = array("Q", bytes(8 * k))
    lens = array("Q", bytes(8 * k))
    cdef uint64_t[::1] r = refs
    cdef int64_t[::1] t = ts
    cdef double[::1] v = vs
    cdef uint64_t[::1] o = offs
    cdef uint64_t[::1] ln = lens
    if k:
        k = rec_exemplars_decode(p, n, &r[0], &t[0], &v[0], <size_t *>&o[0], <size_t *>&ln[0], k)
        if k < 0:
            _malformed(rec, k, "exemplars")
    return [(r[i], t[i], v[i], PyBytes_FromStringAndSize(<const char *>p + o[i], ln[i]))
            for i in range(k)]


def encode_metadata(items):
    """A metadata record from (ref, metric type 0-7, unit, help) items (str or bytes)."""
    cdef wbuf_t b
    cdef bytes unit, help_
    wbuf_init(&b, 256)
    rec_metadata_begin(&b)
    try:
        for ref, mtype, u, h in items:
            unit, help_ = _as_bytes(u), _as_bytes(h)
            rec_metadata_add(&b, ref, mtype, unit, len(unit), help_, len(help_))
    except BaseException:
        wbuf_free(&b)
        raise
    return _take(&b)


def decode_metadata(const uint8_t[::1] rec not None):
    """List of (ref, metric type, unit str, help str); unknown fields are skipped as Prometheus does."""
    cdef rbuf_t r
    cdef const uint8_t *p = _ptr(rec)
    cdef const uint8_t *name
    cdef const uint8_t *val
    cdef size_t nlen, vlen
    cdef uint64_t ref, nfields, i
    cdef uint8_t mtype
    if _open(&r, p, rec.shape[0], REC_METADATA):
        _malformed(rec, REC_EMALFORMED, "metadata")
    out = []
    while rbuf_left(&r) and not r.err:
        ref = rbuf_uvarint(&r)
        mtype = rbuf_u8(&r)
        nfields = rbuf_uvarint(&r)
        if r.err or nfields > rbuf_left(&r) / 2:
            r.err = 1
            break
        unit = help_ = ""
        for i in range(nfields):
            name = rbuf_uvarint_bytes(&r, &nlen)
            val = rbuf_uvarint_bytes(&r, &vlen)
            if r.err:
                break
            if nlen == 4 and name[0] == b'U' and name[1] == b'N' and name[2] == b'I' and name[3] == b'T':
                unit = (<const char *>val)[:vlen].decode("utf-8", "surrogateescape")
            elif nlen == 4 and name[0] == b'H' and name[1] == b'E' and name[2] == b'L' and name[3] == b'P':
                help_ = (<const char *>val)[:vlen].decode("utf-8", "surrogateescape")
        out.append((ref, mtype, unit, help_))
    if r.err:
        _malformed(rec, REC_EMALFORMED, "metadata")
    return out


# type bytes for Python callers
SERIES = REC_SERIES
SAMPLES = REC_SAMPLES
TOMBSTONES = REC_TOMBSTONES
EXEMPLARS = REC_EXEMPLARS
METADATA = REC_METADATA
UNKNOWN = REC_UNKNOWN
