# cython: language_level=3
"""Block index files (format v2, see index.pxd for the byte diagram): write_index builds one
from canonical label keys and chunk metas, IndexReader mmaps one (v1 or v2, ours or
Prometheus') and serves symbols, label names/values, postings and series.

The writer is called by block writing after the chunks are on disk; the reader backs
store-gateway queries over blocks. Sorting, symbol building, postings grouping and the byte
encoding all run without the GIL over C arrays; only input gathering and result building hold it."""
cimport cython
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.errno cimport errno, EINTR
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t
from libc.stdlib cimport malloc, free, calloc
from libc.string cimport memcmp, memcpy, memset
from posix.unistd cimport write as c_write
from urdar.engine.encoding cimport (
    urdar_crc32c, get_be32, get_be64, put_be32, put_be64, get_uvarint, uvarint_size,
    wbuf_t, wbuf_init, wbuf_free, wbuf_reserve, wbuf_put, wbuf_put_u8, wbuf_put_be32,
    wbuf_put_be64, wbuf_put_uvarint, wbuf_put_varint, wbuf_put_uvarint_bytes,
    rbuf_t, rbuf_init, rbuf_u8, rbuf_be32, rbuf_uvarint, rbuf_varint, rbuf_bytes,
    rbuf_uvarint_bytes, rbuf_left)
from urdar.engine.labels cimport key_hash

import mmap
import os
from array import array

from urdar.engine.errors import CorruptionError


# ---------------------------------------------------------------------------------------
# Label order and sorting helpers (all nogil)

cdef inline int _bcmp(const uint8_t *a, size_t na, const uint8_t *b, size_t nb) noexcept nogil:
    """Bytewise compare, shorter prefix first (Go's strings.Compare)."""
    cdef int c = memcmp(a, b, na if na < nb else nb) if (na and nb) else 0
    if c:
        return c
    return -1 if na < nb else (1 if na > nb else 0)


cdef int label_key_cmp(const uint8_t *a, size_t na, const uint8_t *b, size_t nb) noexcept nogil:
    cdef uint64_t ca = 0, cb = 0, la = 0, lb = 0, i, m
    cdef const uint8_t *ea = a + na
    cdef const uint8_t *eb = b + nb
    cdef int k, c, part
    k = get_uvarint(a, ea, &ca)
    if k < 0:
        return _bcmp(a, na, b, nb)
    a += k
    k = get_uvarint(b, eb, &cb)
    if k < 0:
        return _bcmp(a, na, b, nb)
    b += k
    m = ca if ca < cb else cb
    for i in range(m):
        for part in range(2):           # name, then value
            k = get_uvarint(a, ea, &la)
            if k < 0 or la > <uint64_t>(ea - a - k):
                return -1
            a += k
            k = get_uvarint(b, eb, &lb)
            if k < 0 or lb > <uint64_t>(eb - b - k):
                return 1
            b += k
            c = _bcmp(a, la, b, lb)
            if c:
                return c
            a += la
            b += lb
    return -1 if ca < cb else (1 if ca > cb else 0)


ctypedef int (*cmp_fn)(void *ctx, uint32_t x, uint32_t y) noexcept nogil


cdef void _msort(uint32_t *a, uint32_t *tmp, size_t n, cmp_fn cmp, void *ctx) noexcept nogil:
    """Stable bottom-up merge sort of the index array `a` (tmp: scratch of n)."""
    cdef size_t width = 1, lo, mid, hi, i, j, k
    cdef uint32_t *src = a
    cdef uint32_t *dst = tmp
    cdef uint32_t *t
    while width < n:
        lo = 0
        while lo < n:
            mid = lo + width if lo + width < n else n
            hi = lo + 2 * width if lo + 2 * width < n else n
            i = lo; j = mid; k = lo
            while i < mid and j < hi:
                if cmp(ctx, src[j], src[i]) < 0:
                    dst[k] = src[j]; j += 1
                else:
                    dst[k] = src[i]; i += 1
                k += 1
            while i < mid:
                dst[k] = src[i]; i += 1; k += 1
            while j < hi:
                dst[k] = src[j]; j += 1; k += 1
            lo = hi
        t = src; src = dst; dst = t
        width *= 2
    if src != a:
        memcpy(a, src, n * sizeof(uint32_t))


# Parsed input of the writer: every label of every series as (name, value) pointers into
# the Python-owned key bytes, which the caller keeps alive for the whole write.
ctypedef struct strref_t:
    const uint8_t *p
    uint32_t n

ctypedef struct wctx_t:
    strref_t *strs        # 2 * nlab entries: names at 2j, values at 2j+1
    uint64_t *lstart      # series i's labels are lstart[i] .. lstart[i+1]
    uint64_t *pkey        # postings grouping key per label: nameOrd << 32 | valueOrd
    uint32_t *ords        # symbol ordinal of each string in strs


cdef int _series_cmp(void *vctx, uint32_t x, uint32_t y) noexcept nogil:
    cdef wctx_t *c = <wctx_t *>vctx
    cdef uint64_t i = c.lstart[x], j = c.lstart[y]
    cdef uint64_t ei = c.lstart[x + 1], ej = c.lstart[y + 1]
    cdef int r
    while i < ei and j < ej:
        r = _bcmp(c.strs[2 * i].p, c.strs[2 * i].n, c.strs[2 * j].p, c.strs[2 * j].n)
        if r:
            return r
        r = _bcmp(c.strs[2 * i + 1].p, c.strs[2 * i + 1].n, c.strs[2 * j + 1].p, c.strs[2 * j + 1].n)
        if r:
            return r
        i += 1
        j += 1
    # all shared labels equal: the shorter label set sorts first
    return <int>(ei - c.lstart[x] > ej - c.lstart[y]) - <int>(ei - c.lstart[x] < ej - c.lstart[y])


cdef int _series_ord_cmp(void *vctx, uint32_t x, uint32_t y) noexcept nogil:
    """_series_cmp over symbol ordinals: integer compares instead of memcmp."""
    cdef wctx_t *c = <wctx_t *>vctx
    cdef uint64_t i = c.lstart[x], j = c.lstart[y]
    cdef uint64_t ei = c.lstart[x + 1], ej = c.lstart[y + 1]
    cdef uint32_t a, b
    while i < ei and j < ej:
        a = c.ords[2 * i]; b = c.ords[2 * j]
        if a != b:
            return -1 if a < b else 1
        a = c.ords[2 * i + 1]; b = c.ords[2 * j + 1]
        if a != b:
            return -1 if a < b else 1
        i += 1
        j += 1
    return <int>(ei - c.lstart[x] > ej - c.lstart[y]) - <int>(ei - c.lstart[x] < ej - c.lstart[y])


cdef int _build_symbols(wctx_t *c, uint64_t nstr, uint32_t *ords, uint32_t *uniq,
                        uint32_t *rep, uint32_t *tmp, uint64_t *nsym_out) noexcept nogil:
    """Dedupe the nstr strings with an open-addressing hash table, sort the distinct ones
    bytewise into uniq[0..nsym), and set ords[j] to string j's ordinal. rep is scratch."""
    cdef uint64_t cap = 16, mask, j, h, nu = 0
    cdef uint32_t *table
    cdef uint32_t e
    while cap < 2 * nstr:
        cap <<= 1
    table = <uint32_t *>calloc(cap, sizeof(uint32_t))   # 0 = empty, else string index + 1
    if table == NULL:
        return W_NO_MEMORY
    mask = cap - 1
    for j in range(nstr):
        h = key_hash(c.strs[j].p, c.strs[j].n) & mask
        while True:
            e = table[h]
            if e == 0:
                table[h] = <uint32_t>(j + 1)
                uniq[nu] = <uint32_t>j
                nu += 1
                rep[j] = <uint32_t>j
                break
            if (c.strs[e - 1].n == c.strs[j].n and
                    (c.strs[j].n == 0 or memcmp(c.strs[e - 1].p, c.strs[j].p, c.strs[j].n) == 0)):
                rep[j] = e - 1
                break
            h = (h + 1) & mask
    free(table)
    _msort(uniq, tmp, nu, _str_cmp, c)
    for j in range(nu):
        ords[uniq[j]] = <uint32_t>j
    for j in range(nstr):
        ords[j] = ords[rep[j]]
    nsym_out[0] = nu
    return W_OK


cdef int _str_cmp(void *vctx, uint32_t x, uint32_t y) noexcept nogil:
    cdef wctx_t *c = <wctx_t *>vctx
    return _bcmp(c.strs[x].p, c.strs[x].n, c.strs[y].p, c.strs[y].n)


cdef int _pkey_cmp(void *vctx, uint32_t x, uint32_t y) noexcept nogil:
    cdef wctx_t *c = <wctx_t *>vctx
    return (c.pkey[x] > c.pkey[y]) - (c.pkey[x] < c.pkey[y])


def compare_label_keys(const uint8_t[::1] a not None, const uint8_t[::1] b not None):
    """-1, 0 or 1: Prometheus' label-set order of two canonical keys (labels.Compare)."""
    cdef int c = label_key_cmp(&a[0] if a.shape[0] else NULL, a.shape[0],
                               &b[0] if b.shape[0] else NULL, b.shape[0])
    return (c > 0) - (c < 0)


def sort_label_keys(keys):
    """Indices that put the canonical label keys `keys` in Prometheus label-set order (stable)."""
    cdef Py_ssize_t n = len(keys), i
    cdef list held = [bytes(k) for k in keys]
    cdef strref_t *refs = <strref_t *>malloc((n + 1) * sizeof(strref_t))
    cdef uint32_t *idx = <uint32_t *>malloc((n + 1) * sizeof(uint32_t))
    cdef uint32_t *tmp = <uint32_t *>malloc((n + 1) * sizeof(uint32_t))
    cdef bytes k
    try:
        if refs == NULL or idx == NULL or tmp == NULL:
            raise MemoryError()
        for i in range(n):
            k = held[i]
            refs[i].p = <const uint8_t *><char *>k
            refs[i].n = len(k)
            idx[i] = i
        with nogil:
            _msort(idx, tmp, n, _key_cmp, refs)
        return [idx[i] for i in range(n)]
    finally:
        free(refs); free(idx); free(tmp)


cdef int _key_cmp(void *vctx, uint32_t x, uint32_t y) noexcept nogil:
    cdef strref_t *r = <strref_t *>vctx
    return label_key_cmp(r[x].p, r[x].n, r[y].p, r[y].n)


# ---------------------------------------------------------------------------------------
# Writer

cdef enum:
    W_OK = 0
    W_NO_MEMORY = 1
    W_IO = 2
    W_BAD_KEY = 3
    W_DUP_SERIES = 4
    W_BAD_CHUNKS = 5
    W_TOO_LARGE = 6
    W_UNSORTED_NAMES = 7

DEF FLUSH_AT = 4 << 20


cdef int _flush(int fd, wbuf_t *b, uint64_t *flushed) noexcept nogil:
    cdef size_t off = 0
    cdef ssize_t r
    if b.oom:
        return W_NO_MEMORY
    while off < b.len:
        r = c_write(fd, b.data + off, b.len - off)
        if r < 0:
            if errno == EINTR:
                continue
            return W_IO
        off += r
    flushed[0] += b.len
    b.len = 0
    return W_OK


cdef inline void _pad(wbuf_t *b, uint64_t pos, uint64_t align) noexcept nogil:
    """Zero bytes until the absolute file position pos + (bytes added) is aligned."""
    cdef uint64_t rem = pos % align
    if rem:
        rem = align - rem
        while rem:
            wbuf_put_u8(b, 0)
            rem -= 1


cdef int _parse_keys(const uint8_t **kp, size_t *kn, size_t ns, wctx_t *c,
                     uint64_t *bad) noexcept nogil:
    """Fill c.strs/c.lstart from the keys; labels within a key must be sorted and unique."""
    cdef size_t i
    cdef uint64_t cnt, j, nl = 0, ln
    cdef rbuf_t r
    cdef size_t sl
    cdef const uint8_t *p
    for i in range(ns):
        c.lstart[i] = nl
        rbuf_init(&r, kp[i], kn[i])
        cnt = rbuf_uvarint(&r)
        if r.err or cnt > kn[i]:
            bad[0] = i
            return W_BAD_KEY
        for j in range(cnt):
            p = rbuf_uvarint_bytes(&r, &sl)
            if r.err or sl > 0xFFFFFFFFULL:
                bad[0] = i
                return W_BAD_KEY
            c.strs[2 * nl].p = p
            c.strs[2 * nl].n = <uint32_t>sl
            p = rbuf_uvarint_bytes(&r, &sl)
            if r.err or sl > 0xFFFFFFFFULL:
                bad[0] = i
                return W_BAD_KEY
            c.strs[2 * nl + 1].p = p
            c.strs[2 * nl + 1].n = <uint32_t>sl
            if j and _bcmp(c.strs[2 * nl - 2].p, c.strs[2 * nl - 2].n,
                           c.strs[2 * nl].p, c.strs[2 * nl].n) >= 0:
                bad[0] = i
                return W_UNSORTED_NAMES
            nl += 1
        if rbuf_left(&r):
            bad[0] = i
            return W_BAD_KEY
    c.lstart[ns] = nl
    return W_OK


cdef int _count_labels(const uint8_t **kp, size_t *kn, size_t ns, uint64_t *total,
                       uint64_t *bad) noexcept nogil:
    cdef size_t i
    cdef uint64_t cnt = 0
    total[0] = 0
    for i in range(ns):
        if get_uvarint(kp[i], kp[i] + kn[i], &cnt) < 0 or cnt > kn[i]:
            bad[0] = i
            return W_BAD_KEY
        total[0] += cnt
    return W_OK


ctypedef struct wstate_t:
    wctx_t c
    uint32_t *order
    uint32_t *tmp
    uint32_t *sorder
    uint32_t *ords        # string (2 per label) -> symbol ordinal
    uint32_t *uniq        # symbol ordinal -> index into c.strs
    uint32_t *ids         # series rank -> series id
    uint32_t *lab_rank    # postings entry -> series rank
    uint32_t *pidx
    wbuf_t out
    wbuf_t ent
    wbuf_t tbl


cdef int _write_all(int fd, const uint8_t **kp, size_t *kn, size_t ns,
                    const int64_t *mints, const int64_t *maxts, const uint64_t *refs,
                    const uint64_t *mstart, uint64_t *bad, uint64_t *out_size) noexcept nogil:
    """Write the whole index to fd; returns a W_* code (bad = offending series index)."""
    cdef wstate_t w
    cdef uint64_t nlab = 0
    cdef int rc
    memset(&w, 0, sizeof(w))
    wbuf_init(&w.out, FLUSH_AT + (1 << 16))
    wbuf_init(&w.ent, 256)
    wbuf_init(&w.tbl, 4096)
    rc = _count_labels(kp, kn, ns, &nlab, bad)
    if rc == W_OK and (ns > 0xFFFFFFFFULL or 2 * nlab > 0xFFFFFFFFULL):
        rc = W_TOO_LARGE
    if rc == W_OK:
        w.c.strs = <strref_t *>malloc((2 * nlab + 1) * sizeof(strref_t))
        w.c.lstart = <uint64_t *>malloc((ns + 1) * sizeof(uint64_t))
        w.c.pkey = <uint64_t *>malloc((nlab + 1) * sizeof(uint64_t))
        w.order = <uint32_t *>malloc((ns + 1) * sizeof(uint32_t))
        w.tmp = <uint32_t *>malloc((2 * nlab + ns + 1) * sizeof(uint32_t))
        w.sorder = <uint32_t *>malloc((2 * nlab + 1) * sizeof(uint32_t))
        w.ords = <uint32_t *>malloc((2 * nlab + 1) * sizeof(uint32_t))
        w.uniq = <uint32_t *>malloc((2 * nlab + 1) * sizeof(uint32_t))
        w.ids = <uint32_t *>malloc((ns + 1) * sizeof(uint32_t))
        w.lab_rank = <uint32_t *>malloc((nlab + 1) * sizeof(uint32_t))
        w.pidx = <uint32_t *>malloc((nlab + 1) * sizeof(uint32_t))
        if (w.c.strs == NULL or w.c.lstart == NULL or w.c.pkey == NULL or w.order == NULL
                or w.tmp == NULL or w.sorder == NULL or w.ords == NULL or w.uniq == NULL
                or w.ids == NULL or w.lab_rank == NULL or w.pidx == NULL
                or w.out.oom or w.ent.oom or w.tbl.oom):
            rc = W_NO_MEMORY
    if rc == W_OK:
        rc = _write_body(&w, fd, kp, kn, ns, nlab, mints, maxts, refs, mstart, bad, out_size)
    wbuf_free(&w.out); wbuf_free(&w.ent); wbuf_free(&w.tbl)
    free(w.c.strs); free(w.c.lstart); free(w.c.pkey); free(w.order); free(w.tmp)
    free(w.sorder); free(w.ords); free(w.uniq); free(w.ids); free(w.lab_rank); free(w.pidx)
    return rc


cdef int _write_body(wstate_t *w, int fd, const uint8_t **kp, size_t *kn, size_t ns, uint64_t nlab,
                     const int64_t *mints, const int64_t *maxts, const uint64_t *refs,
                     const uint64_t *mstart, uint64_t *bad, uint64_t *out_size) noexcept nogil:
    """The index sections in order: symbols, series, postings, offset table, TOC."""
    cdef wctx_t *c = &w.c
    cdef wbuf_t *out = &w.out
    cdef wbuf_t *ent = &w.ent
    cdef wbuf_t *tbl = &w.tbl
    cdef uint32_t *order = w.order
    cdef uint32_t *tmp = w.tmp
    cdef uint32_t *sorder = w.sorder
    cdef uint32_t *ords = w.ords
    cdef uint32_t *uniq = w.uniq
    cdef uint32_t *ids = w.ids
    cdef uint32_t *lab_rank = w.lab_rank
    cdef uint32_t *pidx = w.pidx
    cdef uint64_t i, j, k, r, s, nsym = 0, pos, secstart
    cdef uint64_t flushed = 0, npost, cur, nent
    cdef uint64_t toc[6]
    cdef int rc = W_OK
    cdef uint32_t crc
    cdef uint8_t tmp4[4]

    rc = _parse_keys(kp, kn, ns, c, bad)
    if rc:
        return rc

    # Symbols: distinct strings (hash dedupe), sorted, numbered; ords[j] = ordinal of string j.
    # Measured: merge-sorting all 2*nlab strings was much slower than dedupe-then-sort on a
    # 200k-series x 8-label index (index_write_200k_series, see the block helper's report).
    rc = _build_symbols(c, 2 * nlab, ords, uniq, sorder, tmp, &nsym)
    if rc:
        return rc

    # Series in label-set order, compared through symbol ordinals (same order as bytes);
    # equal neighbours are duplicate series.
    c.ords = ords
    for i in range(ns):
        order[i] = <uint32_t>i
    _msort(order, tmp, ns, _series_ord_cmp, c)
    for i in range(1, ns):
        if _series_ord_cmp(c, order[i - 1], order[i]) == 0:
            bad[0] = order[i]
            return W_DUP_SERIES

    # Header and symbol table.
    wbuf_put_be32(out, INDEX_MAGIC)
    wbuf_put_u8(out, INDEX_V2)
    toc[0] = out.len
    secstart = out.len
    wbuf_put_be32(out, 0)                 # len, patched below (no flush inside the section)
    wbuf_put_be32(out, <uint32_t>nsym)
    for i in range(nsym):
        wbuf_put_uvarint_bytes(out, c.strs[uniq[i]].p, c.strs[uniq[i]].n)
    if out.oom:
        return W_NO_MEMORY
    if out.len - secstart - 4 > 0xFFFFFFFFULL:
        return W_TOO_LARGE
    put_be32(out.data + secstart, <uint32_t>(out.len - secstart - 4))
    wbuf_put_be32(out, urdar_crc32c(0, out.data + secstart + 4, out.len - secstart - 4))

    # Series, 16-byte aligned; remember each one's id for the postings.
    toc[1] = flushed + out.len
    _pad(out, flushed + out.len, SERIES_ALIGN)
    toc[1] = flushed + out.len
    for r in range(ns):
        s = order[r]
        _pad(out, flushed + out.len, SERIES_ALIGN)
        pos = flushed + out.len
        if pos // SERIES_ALIGN > 0xFFFFFFFFULL:
            return W_TOO_LARGE
        ids[r] = <uint32_t>(pos // SERIES_ALIGN)
        ent.len = 0
        wbuf_put_uvarint(ent, c.lstart[s + 1] - c.lstart[s])
        for j in range(c.lstart[s], c.lstart[s + 1]):
            wbuf_put_uvarint(ent, ords[2 * j])
            wbuf_put_uvarint(ent, ords[2 * j + 1])
        wbuf_put_uvarint(ent, mstart[s + 1] - mstart[s])
        for k in range(mstart[s], mstart[s + 1]):
            if maxts[k] < mints[k] or (k > mstart[s] and mints[k] <= maxts[k - 1]):
                bad[0] = s
                return W_BAD_CHUNKS
            if k == mstart[s]:
                wbuf_put_varint(ent, mints[k])
                wbuf_put_uvarint(ent, <uint64_t>(maxts[k] - mints[k]))
                wbuf_put_uvarint(ent, refs[k])
            else:
                wbuf_put_uvarint(ent, <uint64_t>(mints[k] - maxts[k - 1]))
                wbuf_put_uvarint(ent, <uint64_t>(maxts[k] - mints[k]))
                wbuf_put_varint(ent, <int64_t>(refs[k] - refs[k - 1]))
        if ent.oom:
            return W_NO_MEMORY
        wbuf_put_uvarint(out, ent.len)
        wbuf_put(out, ent.data, ent.len)
        wbuf_put_be32(out, urdar_crc32c(0, ent.data, ent.len))
        if out.len >= FLUSH_AT:
            rc = _flush(fd, out, &flushed)
            if rc:
                return rc

    # No label indices. Postings: all-postings first, then one list per (name, value)
    # in symbol order, which is bytewise order of name then value.
    _pad(out, flushed + out.len, POSTINGS_ALIGN)
    toc[2] = flushed + out.len
    toc[4] = toc[2]
    npost = 0
    for r in range(ns):
        s = order[r]
        for j in range(c.lstart[s], c.lstart[s + 1]):
            c.pkey[npost] = (<uint64_t>ords[2 * j] << 32) | ords[2 * j + 1]
            lab_rank[npost] = <uint32_t>r
            pidx[npost] = <uint32_t>npost
            npost += 1
    _msort(pidx, tmp, npost, _pkey_cmp, c)   # stable: ranks stay ascending per key

    # all-postings list
    wbuf_put_u8(tbl, 2)
    wbuf_put_uvarint(tbl, 0)
    wbuf_put_uvarint(tbl, 0)
    wbuf_put_uvarint(tbl, flushed + out.len)
    nent = 1
    secstart = out.len
    wbuf_put_be32(out, <uint32_t>(4 + 4 * ns))
    wbuf_put_be32(out, <uint32_t>ns)
    for r in range(ns):
        wbuf_put_be32(out, ids[r])
    if out.oom:
        return W_NO_MEMORY
    wbuf_put_be32(out, urdar_crc32c(0, out.data + secstart + 4, out.len - secstart - 4))
    i = 0
    while i < npost:
        cur = c.pkey[pidx[i]]
        if out.len >= FLUSH_AT:
            rc = _flush(fd, out, &flushed)
            if rc:
                return rc
        _pad(out, flushed + out.len, POSTINGS_ALIGN)
        # offset table entry: names/values are symbols, found through any label with them
        k = pidx[i]
        wbuf_put_u8(tbl, 2)
        wbuf_put_uvarint_bytes(tbl, c.strs[uniq[cur >> 32]].p, c.strs[uniq[cur >> 32]].n)
        wbuf_put_uvarint_bytes(tbl, c.strs[uniq[cur & 0xFFFFFFFFULL]].p, c.strs[uniq[cur & 0xFFFFFFFFULL]].n)
        wbuf_put_uvarint(tbl, flushed + out.len)
        nent += 1
        secstart = out.len
        wbuf_put_be32(out, 0)
        wbuf_put_be32(out, 0)
        j = i
        while j < npost and c.pkey[pidx[j]] == cur:
            wbuf_put_be32(out, ids[lab_rank[pidx[j]]])
            j += 1
        if out.oom:
            return W_NO_MEMORY
        put_be32(out.data + secstart, <uint32_t>(4 + 4 * (j - i)))
        put_be32(out.data + secstart + 4, <uint32_t>(j - i))
        wbuf_put_be32(out, urdar_crc32c(0, out.data + secstart + 4, out.len - secstart - 4))
        i = j
    if tbl.oom:
        return W_NO_MEMORY

    # Postings offset table (the empty label offset table shares its offset).
    toc[3] = flushed + out.len
    toc[5] = toc[3]
    if tbl.len + 4 > 0xFFFFFFFFULL:
        return W_TOO_LARGE
    wbuf_put_be32(out, <uint32_t>(tbl.len + 4))
    put_be32(tmp4, <uint32_t>nent)
    wbuf_put(out, tmp4, 4)
    wbuf_put(out, tbl.data, tbl.len)
    crc = urdar_crc32c(urdar_crc32c(0, tmp4, 4), tbl.data, tbl.len)
    wbuf_put_be32(out, crc)

    # TOC
    secstart = out.len
    for i in range(6):
        wbuf_put_be64(out, toc[i])
    if out.oom:
        return W_NO_MEMORY
    wbuf_put_be32(out, urdar_crc32c(0, out.data + secstart, 48))
    out_size[0] = flushed + out.len
    return _flush(fd, out, &flushed)


_W_TEXT = {
    W_NO_MEMORY: "out of memory",
    W_BAD_KEY: "malformed label key",
    W_DUP_SERIES: "duplicate series (equal label sets)",
    W_BAD_CHUNKS: "chunk metas must have mint <= maxt and each mint above the previous maxt",
    W_TOO_LARGE: "index would exceed the format's limits (4 GiB tables, 2^32 series ids)",
    W_UNSORTED_NAMES: "label names in a key must be sorted and unique",
}


def _gather(series):
    """Keys (bytes) and flat chunk meta arrays from (key, metas) pairs; metas is a sequence of
    (mint, maxt, ref) or a tuple of three arrays (mints, maxts, refs)."""
    keys = []
    mints = array("q")
    maxts = array("q")
    refs = array("Q")
    mstart = array("Q", [0])
    for key, metas in series:
        keys.append(bytes(key))
        if len(metas) == 3 and not isinstance(metas[0], (tuple, list)):
            a, b, c = metas
            if not (len(a) == len(b) == len(c)):
                raise ValueError("mints, maxts and refs differ in length")
            mints.extend(array("q", a) if not isinstance(a, array) else a)
            maxts.extend(array("q", b) if not isinstance(b, array) else b)
            refs.extend(array("Q", c) if not isinstance(c, array) or c.typecode != "Q" else c)
        else:
            for m in metas:
                mints.append(m[0])
                maxts.append(m[1])
                refs.append(m[2])
        mstart.append(len(mints))
    return keys, mints, maxts, refs, mstart


def write_index(path, series):
    """Write an index file at `path` for `series`: an iterable of (label key bytes, chunk metas).

    Chunk metas are (mint, maxt, ref) triples or a tuple of three arrays; the chunks of a
    series must be time-ordered and non-overlapping. Series may come in any order: they are
    sorted by Prometheus' label-set order. The file is fsync'd; returns its size in bytes.
    Raises ValueError for bad input (duplicate series, malformed keys, unordered chunks)."""
    keys, mints, maxts, refs, mstart = _gather(series)
    cdef size_t ns = len(keys), i
    cdef const uint8_t **kp = <const uint8_t **>malloc((ns + 1) * sizeof(uint8_t *))
    cdef size_t *kn = <size_t *>malloc((ns + 1) * sizeof(size_t))
    cdef const int64_t[::1] mn = mints
    cdef const int64_t[::1] mx = maxts
    cdef const uint64_t[::1] rf = refs
    cdef const uint64_t[::1] ms = mstart
    cdef uint64_t bad = 0, size = 0
    cdef int rc, fd
    cdef bytes k
    cdef int64_t dummy_i = 0
    cdef uint64_t dummy_u = 0
    cdef const int64_t *pmn = &mn[0] if mn.shape[0] else &dummy_i
    cdef const int64_t *pmx = &mx[0] if mx.shape[0] else &dummy_i
    cdef const uint64_t *prf = &rf[0] if rf.shape[0] else &dummy_u
    try:
        if kp == NULL or kn == NULL:
            raise MemoryError()
        for i in range(ns):
            k = keys[i]
            kp[i] = <const uint8_t *><char *>k
            kn[i] = len(k)
        fd = os.open(os.fspath(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            with nogil:
                rc = _write_all(fd, kp, kn, ns, pmn, pmx, prf, &ms[0], &bad, &size)
            if rc == W_IO:
                raise OSError(errno, os.strerror(errno), os.fspath(path))
            if rc != W_OK:
                if rc == W_NO_MEMORY:
                    raise MemoryError()
                what = _W_TEXT.get(rc, "index write failed")
                if rc in (W_BAD_KEY, W_DUP_SERIES, W_BAD_CHUNKS, W_UNSORTED_NAMES):
                    what += " (series %r)" % (keys[bad],)
                raise ValueError(what)
            os.fsync(fd)
        finally:
            os.close(fd)
        return size
    finally:
        free(kp)
        free(kn)


@cython.final
cdef class IndexWriter:
    """Collects series with add() and writes them with finish() (see write_index)."""
    cdef str _path
    cdef list _series

    def __init__(self, path):
        self._path = os.fspath(path)
        self._series = []

    def add(self, key, metas):
        """Queue one series: its label key bytes and its chunk metas."""
        self._series.append((key, metas))

    def finish(self):
        """Write the index file; returns its size in bytes."""
        n = write_index(self._path, self._series)
        self._series = []
        return n


# ---------------------------------------------------------------------------------------
# Reader

_IR_TEXT = {
    IR_BAD_REF: "reference outside its section",
    IR_BAD_LENGTH: "entry length runs past its section",
    IR_BAD_CRC: "CRC32C mismatch",
    IR_BAD_ENTRY: "malformed entry",
    IR_BAD_SYMBOL: "symbol reference out of range",
    IR_NO_MEMORY: "out of memory",
}


cdef inline str _str(const uint8_t *p, size_t n):
    return (<const char *>p)[:n].decode("utf-8", "surrogateescape")


cdef dict parse_postings_entries(object path, const uint8_t *base, uint64_t start, uint64_t ln,
                                 uint64_t cnt, bint sort_values):
    cdef rbuf_t r
    cdef const uint8_t *np
    cdef const uint8_t *vp
    cdef size_t nl, vl
    cdef uint64_t i, poff, keycount
    cdef dict d = {}
    rbuf_init(&r, base + start, ln)
    last_name = None
    values = offsets = None
    for i in range(cnt):
        keycount = rbuf_uvarint(&r)
        np = rbuf_uvarint_bytes(&r, &nl)
        vp = rbuf_uvarint_bytes(&r, &vl)
        poff = rbuf_uvarint(&r)
        if r.err or keycount != 2:
            raise CorruptionError(path, <uint64_t>(r.p - base), "malformed postings offset table entry %d" % i)
        name = _str(np, nl)
        if name != last_name:
            entry = d.get(name)
            if entry is None:
                entry = d[name] = ([], [])
            values, offsets = entry
            last_name = name
        values.append(_str(vp, vl))
        offsets.append(poff)
    if sort_values:
        # v1 tables are not guaranteed sorted; sort each name's values.
        for name, (values, offsets) in list(d.items()):
            pairs = sorted(zip(values, offsets))
            d[name] = ([v for v, o in pairs], [o for v, o in pairs])
    return d


@cython.final
cdef class IndexReader:
    """Read-only view of an index file (v1 or v2), mmap'd for the reader's lifetime.

    Symbols and the postings offset table are checked (CRC) and loaded at open; series and
    postings lists are checked on each read when verify=True (the default, as Prometheus
    does). Malformed files raise CorruptionError."""

    def __cinit__(self):
        self._sym_pos = NULL
        self._b = NULL
        self._n = 0
        self._closed = True

    def __init__(self, path, bint verify=True):
        cdef int i
        cdef uint64_t nxt
        self.path = os.fspath(path)
        self._verify = verify
        with open(self.path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < INDEX_HEADER_SIZE + INDEX_TOC_SIZE:
                raise CorruptionError(self.path, None, "file too short for an index (%d bytes)" % size)
            self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self._view = self._mm
        self._b = &self._view[0]
        self._n = self._view.shape[0]
        self._closed = False
        try:
            if get_be32(self._b) != INDEX_MAGIC:
                raise CorruptionError(self.path, 0, "bad index magic 0x%08X" % get_be32(self._b))
            self.version = self._b[4]
            if self.version not in (INDEX_V1, INDEX_V2):
                raise CorruptionError(self.path, 4, "unsupported index version %d" % self.version)
            tp = self._b + self._n - INDEX_TOC_SIZE
            if urdar_crc32c(0, tp, 48) != get_be32(tp + 48):
                raise CorruptionError(self.path, self._n - INDEX_TOC_SIZE, "TOC CRC32C mismatch")
            for i in range(6):
                self._toc[i] = get_be64(tp + 8 * i)
                if self._toc[i] > self._n - INDEX_TOC_SIZE:
                    raise CorruptionError(self.path, self._n - INDEX_TOC_SIZE + 8 * i,
                                          "TOC offset %d past the end" % self._toc[i])
            # The series section ends where the next section (any later TOC offset) starts.
            self._series_end = self._n - INDEX_TOC_SIZE
            for i in range(2, 6):
                nxt = self._toc[i]
                if nxt > self._toc[1] and nxt < self._series_end:
                    self._series_end = nxt
            self._load_symbols()
            self._load_postings_table()
        except BaseException:
            self.close()
            raise

    def __dealloc__(self):
        free(self._sym_pos)

    cdef _raise(self, int rc, uint64_t offset, what):
        if rc == IR_NO_MEMORY:
            raise MemoryError()
        raise CorruptionError(self.path, offset, "%s: %s" % (what, _IR_TEXT.get(rc, "bad bytes")))

    cdef _load_symbols(self):
        cdef uint64_t off = self._toc[0], ln, i
        cdef rbuf_t r
        cdef const uint8_t *start
        cdef size_t sl
        self._nsym = 0
        if off == 0:
            return
        if off + 8 > self._n:
            raise CorruptionError(self.path, off, "symbol table header past the end")
        ln = get_be32(self._b + off)
        if off + 4 + ln + 4 > self._n or ln < 4:
            raise CorruptionError(self.path, off, "symbol table length %d runs past the end" % ln)
        if urdar_crc32c(0, self._b + off + 4, ln) != get_be32(self._b + off + 4 + ln):
            raise CorruptionError(self.path, off, "symbol table CRC32C mismatch")
        cnt = get_be32(self._b + off + 4)
        if cnt > ln:
            raise CorruptionError(self.path, off, "symbol count %d too large" % cnt)
        self._sym_pos = <uint64_t *>malloc((cnt + 1) * sizeof(uint64_t))
        if self._sym_pos == NULL:
            raise MemoryError()
        rbuf_init(&r, self._b + off + 8, ln - 4)
        for i in range(cnt):
            self._sym_pos[i] = <uint64_t>(r.p - self._b)
            rbuf_uvarint_bytes(&r, &sl)
            if r.err:
                raise CorruptionError(self.path, self._sym_pos[i], "truncated symbol %d" % i)
        self._nsym = cnt

    cdef int _symbol(self, uint64_t ref, const uint8_t **p, size_t *n) noexcept nogil:
        """Symbol bytes for a series' label ref (ordinal in v2, file offset in v1)."""
        cdef uint64_t pos, ln = 0
        cdef size_t lo, hi, mid
        cdef int k
        if self.version == INDEX_V1:
            lo = 0
            hi = self._nsym
            while lo < hi:
                mid = (lo + hi) // 2
                if self._sym_pos[mid] < ref:
                    lo = mid + 1
                else:
                    hi = mid
            if lo >= self._nsym or self._sym_pos[lo] != ref:
                return IR_BAD_SYMBOL
            pos = ref
        else:
            if ref >= self._nsym:
                return IR_BAD_SYMBOL
            pos = self._sym_pos[ref]
        k = get_uvarint(self._b + pos, self._b + self._n, &ln)
        p[0] = self._b + pos + k
        n[0] = ln
        return IR_OK

    cdef _load_postings_table(self):
        cdef uint64_t off = self._toc[5], ln, cnt
        self._postings = {}
        if off == 0:
            return
        if off + 8 > self._n:
            raise CorruptionError(self.path, off, "postings offset table header past the end")
        ln = get_be32(self._b + off)
        if ln < 4 or off + 4 + ln + 4 > self._n:
            raise CorruptionError(self.path, off, "postings offset table length %d runs past the end" % ln)
        if urdar_crc32c(0, self._b + off + 4, ln) != get_be32(self._b + off + 4 + ln):
            raise CorruptionError(self.path, off, "postings offset table CRC32C mismatch")
        cnt = get_be32(self._b + off + 4)
        self._postings = parse_postings_entries(self.path, self._b, off + 8, ln - 4, cnt,
                                                self.version == INDEX_V1)

    cdef int ir_postings_at(self, uint64_t off, const uint8_t **ids, uint32_t *n,
                            bint verify) noexcept nogil:
        cdef uint64_t ln, cnt
        if self._closed or off + 8 > self._n:
            return IR_BAD_REF
        ln = get_be32(self._b + off)
        if off + 4 + ln + 4 > self._n or ln < 4:
            return IR_BAD_LENGTH
        cnt = get_be32(self._b + off + 4)
        if 4 + 4 * cnt != ln:
            return IR_BAD_ENTRY
        if verify and urdar_crc32c(0, self._b + off + 4, ln) != get_be32(self._b + off + 4 + ln):
            return IR_BAD_CRC
        ids[0] = self._b + off + 8
        n[0] = <uint32_t>cnt
        return IR_OK

    cdef int ir_series(self, uint64_t id, wbuf_t *key, wbuf_t *metas, bint verify) noexcept nogil:
        cdef uint64_t off = id * SERIES_ALIGN if self.version != INDEX_V1 else id
        cdef uint64_t ln = 0, nlab, nch, i, ref
        cdef int k, rc
        cdef rbuf_t r
        cdef const uint8_t *sp
        cdef size_t sn
        cdef chunk_meta_t m
        cdef int64_t maxt = 0
        if self._closed or self._toc[1] == 0 or off < self._toc[1] or off >= self._series_end:
            return IR_BAD_REF
        k = get_uvarint(self._b + off, self._b + self._series_end, &ln)
        if k < 0 or ln > self._series_end - off - k or off + k + ln + 4 > self._series_end:
            return IR_BAD_LENGTH
        if verify and urdar_crc32c(0, self._b + off + k, ln) != get_be32(self._b + off + k + ln):
            return IR_BAD_CRC
        rbuf_init(&r, self._b + off + k, ln)
        nlab = rbuf_uvarint(&r)
        if r.err or nlab > ln:
            return IR_BAD_ENTRY
        wbuf_put_uvarint(key, nlab)
        for i in range(nlab):
            ref = rbuf_uvarint(&r)
            if r.err:
                return IR_BAD_ENTRY
            rc = self._symbol(ref, &sp, &sn)
            if rc:
                return rc
            wbuf_put_uvarint_bytes(key, sp, sn)
            ref = rbuf_uvarint(&r)
            if r.err:
                return IR_BAD_ENTRY
            rc = self._symbol(ref, &sp, &sn)
            if rc:
                return rc
            wbuf_put_uvarint_bytes(key, sp, sn)
        nch = rbuf_uvarint(&r)
        if r.err or nch > ln:
            return IR_BAD_ENTRY
        for i in range(nch):
            if i == 0:
                m.mint = rbuf_varint(&r)
                m.maxt = m.mint + <int64_t>rbuf_uvarint(&r)
                m.ref = rbuf_uvarint(&r)
            else:
                m.mint = m.maxt + <int64_t>rbuf_uvarint(&r)
                m.maxt = m.mint + <int64_t>rbuf_uvarint(&r)
                m.ref = m.ref + <uint64_t>rbuf_varint(&r)
            if r.err:
                return IR_BAD_ENTRY
            wbuf_put(metas, &m, sizeof(m))
        if key.oom or metas.oom:
            return IR_NO_MEMORY
        return IR_OK

    # ---- Python API -----------------------------------------------------------------

    cdef _check_open(self):
        if self._closed:
            raise ValueError("IndexReader is closed")

    @property
    def toc(self):
        """The six TOC offsets: symbols, series, label indices, label offset table,
        postings, postings offset table."""
        return tuple(self._toc[i] for i in range(6))

    def symbols(self):
        """Every symbol string, in table order."""
        cdef const uint8_t *p
        cdef size_t n
        cdef uint32_t i
        cdef uint64_t ln = 0
        cdef int k
        self._check_open()
        out = []
        for i in range(self._nsym):
            k = get_uvarint(self._b + self._sym_pos[i], self._b + self._n, &ln)
            out.append(_str(self._b + self._sym_pos[i] + k, ln))
        return out

    def label_names(self):
        """Sorted label names present in the index."""
        self._check_open()
        return sorted(n for n in self._postings if n != "")

    def label_values(self, name):
        """Sorted values of label `name` (empty list when absent)."""
        self._check_open()
        e = self._postings.get(name)
        return list(e[0]) if e is not None else []

    def postings_offset(self, name, value):
        """File offset of the postings list of name=value, or -1 when there is none."""
        self._check_open()
        e = self._postings.get(name)
        if e is None:
            return -1
        values, offsets = e
        lo, hi = 0, len(values)
        while lo < hi:
            mid = (lo + hi) // 2
            if values[mid] < value:
                lo = mid + 1
            else:
                hi = mid
        if lo < len(values) and values[lo] == value:
            return offsets[lo]
        return -1

    def postings_table(self):
        """The whole postings offset table: dict name -> list of (value, offset), sorted."""
        self._check_open()
        return {n: list(zip(v, o)) for n, (v, o) in self._postings.items()}

    def postings_at(self, uint64_t off):
        """The series ids of the postings list at file offset `off`, as array('I')."""
        cdef const uint8_t *p
        cdef uint32_t n = 0, i
        cdef int rc
        cdef uint32_t[::1] dst
        self._check_open()
        rc = self.ir_postings_at(off, &p, &n, self._verify)
        if rc:
            self._raise(rc, off, "postings list")
        out = array("I", bytes(4 * n)) if n else array("I")
        if n:
            dst = out
            with nogil:
                for i in range(n):
                    dst[i] = get_be32(p + 4 * i)
        return out

    def postings(self, name, value):
        """Series ids having label name=value, ascending, as array('I') (empty when absent)."""
        off = self.postings_offset(name, value)
        if off < 0:
            return array("I")
        return self.postings_at(off)

    def all_postings(self):
        """Every series id, ascending."""
        return self.postings("", "")

    def series(self, uint64_t id):
        """(label key bytes, mints array('q'), maxts array('q'), refs array('Q')) of series `id`."""
        cdef wbuf_t key, metas
        cdef int rc
        cdef size_t n, i
        cdef chunk_meta_t *m
        cdef int64_t[::1] a
        cdef int64_t[::1] b
        cdef uint64_t[::1] c
        self._check_open()
        wbuf_init(&key, 128)
        wbuf_init(&metas, 16 * sizeof(chunk_meta_t))
        try:
            with nogil:
                rc = self.ir_series(id, &key, &metas, self._verify)
            if rc:
                self._raise(rc, id * SERIES_ALIGN if self.version != INDEX_V1 else id,
                            "series %d" % id)
            n = metas.len // sizeof(chunk_meta_t)
            m = <chunk_meta_t *>metas.data
            mints = array("q", bytes(8 * n))
            maxts = array("q", bytes(8 * n))
            refs = array("Q", bytes(8 * n))
            if n:
                a = mints; b = maxts; c = refs
                for i in range(n):
                    a[i] = m[i].mint
                    b[i] = m[i].maxt
                    c[i] = m[i].ref
            return PyBytes_FromStringAndSize(<char *>key.data, key.len), mints, maxts, refs
        finally:
            wbuf_free(&key)
            wbuf_free(&metas)

    def __len__(self):
        """Number of series (size of the all-postings list)."""
        return len(self.all_postings())

    def close(self):
        """Unmap the file. Idempotent."""
        self._closed = True
        self._b = NULL
        self._view = None
        if self._mm is not None:
            self._mm.close()
            self._mm = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
