# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Series of rendered points, the query-frontend's cached form (components/frontend.py): a
series' points as the API's JSON text `[t,"v"],[t,"v"]` (bytes), their times (array('q'), ms)
and where each point starts (array('q') of n + 1 offsets, offs[n] == len(text) + 1). Cutting a
cached extent at a time and joining it to the fresh part is a binary search and a few memcpy
here, never Python work per point (a dashboard's window slides by a step every refresh, so every
cut needs its offsets rebased)."""
from cpython.array cimport array as carray, clone
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport int64_t
from libc.string cimport memcpy

from array import array

cdef carray _Q = array("q")


cdef inline const int64_t *_q(object a, Py_ssize_t *n) except NULL:
    if type(a) is not carray or (<carray>a).ob_descr.typecode != c"q":
        raise TypeError("expected array('q'), got %s" % type(a).__name__)
    n[0] = len(a)
    return <const int64_t *>(<carray>a).data.as_longlongs if n[0] else <const int64_t *>&n[0]


def bounds(ts, int64_t mint, int64_t maxt):
    """(i, j): the points ts[i:j] (ascending times) are those with mint <= t <= maxt."""
    cdef Py_ssize_t n, lo, hi, mid, i
    cdef const int64_t *t = _q(ts, &n)
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi) >> 1
        if t[mid] < mint:
            lo = mid + 1
        else:
            hi = mid
    i = lo
    hi = n
    while lo < hi:
        mid = (lo + hi) >> 1
        if t[mid] <= maxt:
            lo = mid + 1
        else:
            hi = mid
    return i, lo


def join_parts(list parts):
    """(ts, text, offs) of the points ts[i:j] of each part (ts, text, offs, i, j), in the
    parts' order (the caller keeps times ascending); ValueError on offsets that do not fit
    their text (a damaged cache entry never reads out of bounds)."""
    cdef Py_ssize_t k, p, n, no, i, j, total_n = 0, total_b = 0, nb, pos_n = 0, pos_b = 0
    cdef int64_t lo, hi, base
    cdef const int64_t *t
    cdef const int64_t *o
    cdef const char *src
    cdef int64_t *ot
    cdef int64_t *oo
    cdef char *dst
    cdef Py_ssize_t nparts = len(parts)
    for k in range(nparts):
        part = parts[k]
        ts, text, offs, i, j = part
        t = _q(ts, &n)
        o = _q(offs, &no)
        if type(text) is not bytes:
            raise TypeError("expected bytes, got %s" % type(text).__name__)
        if no != n + 1 or i < 0 or j > n or i > j:
            raise ValueError("point slice out of range")
        if i == j:
            continue
        lo, hi = o[i], o[j] - 1
        if lo < 0 or hi < lo or hi > PyBytes_GET_SIZE(text):
            raise ValueError("point offsets do not fit their text")
        total_n += j - i
        total_b += hi - lo + 1
    if total_n:
        total_b -= 1        # no comma after the last point
    ts_out = clone(_Q, total_n, False)
    offs_out = clone(_Q, total_n + 1, False)
    text_out = PyBytes_FromStringAndSize(NULL, total_b)
    ot = <int64_t *>(<carray>ts_out).data.as_longlongs
    oo = <int64_t *>(<carray>offs_out).data.as_longlongs
    dst = PyBytes_AS_STRING(text_out)
    for k in range(nparts):
        ts, text, offs, i, j = parts[k]
        if i == j:
            continue
        t = _q(ts, &n)
        o = _q(offs, &no)
        lo, hi = o[i], o[j] - 1
        nb = hi - lo
        if pos_n:
            dst[pos_b] = 44     # ','
            pos_b += 1
        src = PyBytes_AS_STRING(text)
        memcpy(dst + pos_b, src + lo, nb)
        memcpy(ot + pos_n, t + i, (j - i) * sizeof(int64_t))
        base = pos_b - lo
        for p in range(i, j):
            oo[pos_n + p - i] = o[p] + base
        pos_n += j - i
        pos_b += nb
    oo[total_n] = total_b + 1
    return ts_out, text_out, offs_out


def check(ts, text, offs):
    """ValueError unless (ts, text, offs) is a well-formed series of rendered points: times
    ascending, offsets increasing from 0 to len(text) + 1 (what a cache entry read back from a
    shared cache must be before its points are cut)."""
    cdef Py_ssize_t n, no, p
    cdef const int64_t *t = _q(ts, &n)
    cdef const int64_t *o = _q(offs, &no)
    if type(text) is not bytes:
        raise TypeError("expected bytes, got %s" % type(text).__name__)
    if no != n + 1 or o[0] != 0 or o[n] != PyBytes_GET_SIZE(text) + 1:
        raise ValueError("point offsets do not fit their text")
    for p in range(n):
        if o[p + 1] <= o[p] or (p and t[p] <= t[p - 1]):
            raise ValueError("point offsets or times out of order")
