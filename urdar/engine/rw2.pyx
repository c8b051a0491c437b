# cython: language_level=3, boundscheck=False, wraparound=False
"""Remote write 2.0 (`io.prometheus.write.v2.Request`, urdar/proto/write_v2.proto) to the
remote write 1.0 WriteRequest the rest of the write path decodes (engine/remotewrite.pyx).

    Request:    symbols 4 (string) · timeseries 5
    TimeSeries: labels_refs 1 (uint32, packed) · samples 2 · histograms 3 · exemplars 4
                · metadata 5 · created_timestamp 6
    Sample {value 1, timestamp 2} and Histogram have 1.0's field numbers: copied as they are.
    Exemplar:   labels_refs 1 · value 2 · timestamp 3 -> 1.0's labels 1 · value 2 · timestamp 3
    Metadata:   type 1 · help_ref 3 · unit_ref 4 -> WriteRequest.metadata 3 (MetricMetadata
                type 1, metric_family_name 2 = the series' __name__, help 4, unit 5)

The walk is C over the bytes: no Python object per series, sample or label; symbol refs are
checked against the table (RW2DecodeError, a ValueError, for a bad one)."""
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdlib cimport malloc, free
from libc.string cimport memcmp
from cpython.bytes cimport PyBytes_FromStringAndSize

from urdar.engine.encoding cimport (
    wbuf_t, wbuf_init, wbuf_free, wbuf_put, wbuf_put_u8, wbuf_put_uvarint, uvarint_size,
    get_uvarint)


class RW2DecodeError(ValueError):
    """A body that is not a well-formed io.prometheus.write.v2.Request."""


ctypedef struct field_t:
    uint64_t num
    uint32_t wt
    uint64_t u          # varint value (wt 0)
    const uint8_t *p    # payload (wt 1, 2, 5)
    size_t n


cdef int _next(const uint8_t **pp, const uint8_t *end, field_t *f) noexcept:
    """Read one field at *pp; 1 read, 0 at end, -1 malformed."""
    cdef const uint8_t *p = pp[0]
    cdef uint64_t tag, ln
    cdef int r
    if p >= end:
        return 0
    r = get_uvarint(p, end, &tag)
    if r < 0:
        return -1
    p += r
    f.num = tag >> 3
    f.wt = tag & 7
    if f.wt == 0:
        r = get_uvarint(p, end, &f.u)
        if r < 0:
            return -1
        p += r
    elif f.wt == 1 or f.wt == 5:
        ln = 8 if f.wt == 1 else 4
        if <size_t>(end - p) < ln:
            return -1
        f.p = p
        f.n = ln
        p += ln
    elif f.wt == 2:
        r = get_uvarint(p, end, &ln)
        if r < 0:
            return -1
        p += r
        if ln > <uint64_t>(end - p):
            return -1
        f.p = p
        f.n = ln
        p += ln
    else:
        return -1
    pp[0] = p
    return 1


cdef inline void _put_tag(wbuf_t *b, uint64_t num, uint32_t wt) noexcept:
    wbuf_put_uvarint(b, (num << 3) | wt)


cdef inline void _put_bytes(wbuf_t *b, uint64_t num, const uint8_t *p, size_t n) noexcept:
    _put_tag(b, num, 2)
    wbuf_put_uvarint(b, n)
    wbuf_put(b, p, n)


cdef class _Symbols:
    cdef const uint8_t **p
    cdef size_t *n
    cdef size_t count

    def __dealloc__(self):
        free(self.p)
        free(self.n)


cdef int _refs(field_t *f, uint32_t *out, size_t cap, size_t *count) noexcept:
    """Append the uint32 refs of a labels_refs field (packed or one varint); -1 malformed,
    -2 more than cap."""
    cdef const uint8_t *p
    cdef const uint8_t *end
    cdef uint64_t v
    cdef int r
    if f.wt == 0:
        if count[0] >= cap:
            return -2
        if f.u > 0xFFFFFFFF:
            return -1
        out[count[0]] = <uint32_t>f.u
        count[0] += 1
        return 0
    if f.wt != 2:
        return -1
    p = f.p
    end = f.p + f.n
    while p < end:
        r = get_uvarint(p, end, &v)
        if r < 0 or v > 0xFFFFFFFF:
            return -1
        p += r
        if count[0] >= cap:
            return -2
        out[count[0]] = <uint32_t>v
        count[0] += 1
    return 0


cdef size_t _labels_len(_Symbols s, uint32_t *refs, size_t n) noexcept:
    """Bytes of the Label messages (with their tags) of n/2 (name, value) ref pairs."""
    cdef size_t k, total = 0, body
    for k in range(0, n, 2):
        body = 1 + uvarint_size(s.n[refs[k]]) + s.n[refs[k]] + \
            1 + uvarint_size(s.n[refs[k + 1]]) + s.n[refs[k + 1]]
        total += 1 + uvarint_size(body) + body
    return total


cdef void _put_labels(wbuf_t *b, _Symbols s, uint32_t *refs, size_t n) noexcept:
    cdef size_t k, body
    for k in range(0, n, 2):
        body = 1 + uvarint_size(s.n[refs[k]]) + s.n[refs[k]] + \
            1 + uvarint_size(s.n[refs[k + 1]]) + s.n[refs[k + 1]]
        _put_tag(b, 1, 2)
        wbuf_put_uvarint(b, body)
        _put_bytes(b, 1, s.p[refs[k]], s.n[refs[k]])
        _put_bytes(b, 2, s.p[refs[k + 1]], s.n[refs[k + 1]])


class RW2TooLarge(ValueError):
    """The 1.0 form of a Request would exceed the size given (labels expand from refs)."""


def to_v1(const uint8_t[::1] data not None, size_t max_out=1 << 62, size_t max_refs=1 << 14):
    """(WriteRequest 1.0 bytes, samples, histograms, exemplars, created timestamps) of a v2
    Request body. `max_refs` bounds the label refs of one series or exemplar; `max_out` the
    1.0 bytes (RW2TooLarge past it: a small symbol table can stand for many label bytes)."""
    cdef const uint8_t *start = &data[0] if data.shape[0] else NULL
    cdef const uint8_t *end = start + data.shape[0]
    cdef const uint8_t *p = start
    cdef const uint8_t *q
    cdef const uint8_t *qe
    cdef const uint8_t *r
    cdef const uint8_t *re
    cdef field_t f, g, h
    cdef int rc
    cdef size_t n_sym = 0, k, j, n_refs, n_erefs, name_ref
    cdef uint64_t n_samples = 0, n_hists = 0, n_ex = 0, n_ct = 0, mtype, help_ref, unit_ref
    cdef _Symbols s = _Symbols()
    cdef wbuf_t out, ts, ex, md
    cdef uint32_t *refs = NULL
    cdef uint32_t *erefs = NULL
    cdef size_t series_no = 0
    cdef bint has_md
    # pass 1: the symbol table
    while True:
        rc = _next(&p, end, &f)
        if rc == 0:
            break
        if rc < 0:
            raise RW2DecodeError("malformed Request at byte %d" % (p - start))
        if f.num == 4:
            if f.wt != 2:
                raise RW2DecodeError("symbols: wrong wire type %d" % f.wt)
            n_sym += 1
    s.p = <const uint8_t **>malloc((n_sym + 1) * sizeof(uint8_t *))
    s.n = <size_t *>malloc((n_sym + 1) * sizeof(size_t))
    refs = <uint32_t *>malloc(max_refs * sizeof(uint32_t))
    erefs = <uint32_t *>malloc(max_refs * sizeof(uint32_t))
    if s.p == NULL or s.n == NULL or refs == NULL or erefs == NULL:
        free(refs)
        free(erefs)
        raise MemoryError()
    p = start
    while _next(&p, end, &f) == 1:
        if f.num == 4:
            s.p[s.count] = f.p
            s.n[s.count] = f.n
            s.count += 1
    wbuf_init(&out, data.shape[0] + 1024)
    wbuf_init(&ts, 4096)
    wbuf_init(&ex, 256)
    wbuf_init(&md, 256)
    try:
        p = start
        while _next(&p, end, &f) == 1:
            if f.num != 5:
                continue
            if f.wt != 2:
                raise RW2DecodeError("timeseries: wrong wire type %d" % f.wt)
            # pass over one series: refs first (labels go first in 1.0), then the rest
            n_refs = 0
            has_md = False
            mtype = help_ref = unit_ref = 0
            q = f.p
            qe = f.p + f.n
            while True:
                rc = _next(&q, qe, &g)
                if rc == 0:
                    break
                if rc < 0:
                    raise RW2DecodeError("timeseries %d: malformed" % series_no)
                if g.num == 1:
                    rc = _refs(&g, refs, max_refs, &n_refs)
                    if rc == -2:
                        raise RW2DecodeError("timeseries %d: more than %d labels_refs"
                                             % (series_no, max_refs))
                    if rc < 0:
                        raise RW2DecodeError("timeseries %d: malformed labels_refs" % series_no)
                elif g.num == 5:
                    if g.wt != 2:
                        raise RW2DecodeError("timeseries %d: malformed metadata" % series_no)
                    has_md = True
                    r = g.p
                    re = g.p + g.n
                    while True:
                        rc = _next(&r, re, &h)
                        if rc == 0:
                            break
                        if rc < 0 or (h.num in (1, 3, 4) and h.wt != 0):
                            raise RW2DecodeError("timeseries %d: malformed metadata" % series_no)
                        if h.num == 1:
                            mtype = h.u
                        elif h.num == 3:
                            help_ref = h.u
                        elif h.num == 4:
                            unit_ref = h.u
                    if help_ref >= s.count or unit_ref >= s.count:
                        raise RW2DecodeError("timeseries %d: metadata symbol ref %d out of range "
                                             "(%d symbols)" % (series_no, max(help_ref, unit_ref),
                                                               s.count))
                elif g.num == 6:
                    if g.wt != 0:
                        raise RW2DecodeError("timeseries %d: malformed created_timestamp" % series_no)
                    if g.u:
                        n_ct += 1
            if n_refs % 2:
                raise RW2DecodeError("timeseries %d: odd number of labels_refs (%d)"
                                     % (series_no, n_refs))
            name_ref = 0
            for k in range(n_refs):
                if refs[k] >= s.count:
                    raise RW2DecodeError("timeseries %d: labels_refs %d out of range (%d symbols)"
                                         % (series_no, refs[k], s.count))
            for k in range(0, n_refs, 2):
                if s.n[refs[k]] == 8 and memcmp(s.p[refs[k]], b"__name__", 8) == 0:
                    name_ref = refs[k + 1]
            # the 1.0 TimeSeries
            ts.len = 0
            _put_labels(&ts, s, refs, n_refs)
            q = f.p
            while _next(&q, qe, &g) == 1:
                if g.num == 2 and g.wt == 2:
                    _put_bytes(&ts, 2, g.p, g.n)
                    n_samples += 1
                elif g.num == 3 and g.wt == 2:
                    _put_bytes(&ts, 4, g.p, g.n)
                    n_hists += 1
                elif g.num == 4 and g.wt == 2:
                    n_erefs = 0
                    ex.len = 0
                    r = g.p
                    re = g.p + g.n
                    while True:
                        rc = _next(&r, re, &h)
                        if rc == 0:
                            break
                        if rc < 0:
                            raise RW2DecodeError("timeseries %d: malformed exemplar" % series_no)
                        if h.num == 1:
                            rc = _refs(&h, erefs, max_refs, &n_erefs)
                            if rc < 0:
                                raise RW2DecodeError("timeseries %d: malformed exemplar labels_refs"
                                                     % series_no)
                        elif h.num == 2 and h.wt == 1:
                            _put_tag(&ex, 2, 1)
                            wbuf_put(&ex, h.p, 8)
                        elif h.num == 3 and h.wt == 0:
                            _put_tag(&ex, 3, 0)
                            wbuf_put_uvarint(&ex, h.u)
                    if n_erefs % 2:
                        raise RW2DecodeError("timeseries %d: odd number of exemplar labels_refs"
                                             % series_no)
                    for k in range(n_erefs):
                        if erefs[k] >= s.count:
                            raise RW2DecodeError("timeseries %d: exemplar labels_refs %d out of "
                                                 "range (%d symbols)" % (series_no, erefs[k], s.count))
                    _put_tag(&ts, 3, 2)
                    wbuf_put_uvarint(&ts, _labels_len(s, erefs, n_erefs) + ex.len)
                    _put_labels(&ts, s, erefs, n_erefs)
                    wbuf_put(&ts, ex.data, ex.len)
                    n_ex += 1
            _put_tag(&out, 1, 2)
            wbuf_put_uvarint(&out, ts.len)
            wbuf_put(&out, ts.data, ts.len)
            if has_md and (mtype or help_ref or unit_ref) and name_ref:
                md.len = 0
                if mtype:
                    _put_tag(&md, 1, 0)
                    wbuf_put_uvarint(&md, mtype)
                _put_bytes(&md, 2, s.p[name_ref], s.n[name_ref])
                if help_ref:
                    _put_bytes(&md, 4, s.p[help_ref], s.n[help_ref])
                if unit_ref:
                    _put_bytes(&md, 5, s.p[unit_ref], s.n[unit_ref])
                _put_tag(&out, 3, 2)
                wbuf_put_uvarint(&out, md.len)
                wbuf_put(&out, md.data, md.len)
            series_no += 1
            if out.len > max_out:
                raise RW2TooLarge("the request's remote write 1.0 form exceeds %d bytes" % max_out)
        if out.oom or ts.oom or ex.oom or md.oom:
            raise MemoryError()
        return (PyBytes_FromStringAndSize(<char *>out.data, out.len), n_samples, n_hists, n_ex,
                n_ct)
    finally:
        wbuf_free(&out)
        wbuf_free(&ts)
        wbuf_free(&ex)
        wbuf_free(&md)
        free(refs)
        free(erefs)
