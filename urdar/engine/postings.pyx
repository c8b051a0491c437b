# cython: language_level=3
"""Set operations on postings lists (see postings.pxd): the head's uint64 refs and a
block's uint32 series ids, shared by the head index, the block reader and matchers.py.

Python callers pass any C-contiguous buffer of native unsigned 4- or 8-byte integers
(normally array('I') / array('Q')) and get a new array('I') or array('Q') back. Buffers are
held (so an array cannot be resized) while the loop runs without the GIL."""
cimport cython
from cpython cimport array
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_FORMAT, PyBUF_C_CONTIGUOUS
from libc.stdint cimport uint32_t, uint64_t
from libc.stdlib cimport malloc, calloc, free
from libc.string cimport memcpy, memmove
import array as _array

ctypedef fused ref_t:
    uint32_t
    uint64_t

# Intersection strategy by length ratio (benchmarks/postings_bench.py, random ids):
# >= GALLOP_RATIO: exponential search from the short side (1M x 10k: ~0.4 ms);
# >= SKIP_RATIO: skip-scan the long side 8 at a time (1M x 100k: 2.7 ms merge -> 1.3 ms);
# otherwise a branchless merge.
cdef enum:
    GALLOP_RATIO = 32
    SKIP_RATIO = 4

cdef array.array _U32 = _array.array('I')
cdef array.array _U64 = _array.array('Q')


# ---- search ------------------------------------------------------------------------

cdef inline Py_ssize_t _lower_bound(const ref_t *a, Py_ssize_t lo, Py_ssize_t hi, ref_t x) noexcept nogil:
    """First index in [lo, hi) whose value is >= x, or hi."""
    cdef Py_ssize_t mid
    while lo < hi:
        mid = lo + ((hi - lo) >> 1)
        if a[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    return lo

cdef inline Py_ssize_t _gallop(const ref_t *a, Py_ssize_t lo, Py_ssize_t n, ref_t x) noexcept nogil:
    """Like _lower_bound(a, lo, n, x) but probes lo+1, lo+2, lo+4, ... first: cost is
    logarithmic in the distance moved, not in n (Prometheus' Seek on a sorted list)."""
    cdef Py_ssize_t step = 1, hi
    if lo >= n or a[lo] >= x:
        return lo
    while True:                  # invariant: a[lo] < x
        hi = lo + step
        if hi >= n:
            hi = n
            break
        if a[hi] >= x:
            break
        lo = hi
        step <<= 1
    return _lower_bound(a, lo + 1, hi, x)

cdef inline bint _is_set(const ref_t *a, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(1, n):
        if a[i - 1] >= a[i]:
            return False
    return True


# ---- intersection ------------------------------------------------------------------


cdef inline Py_ssize_t _skip_intersect(const ref_t *s, Py_ssize_t ns, const ref_t *l, Py_ssize_t nl,
                                       ref_t *out, bint out_is_l) noexcept nogil:
    """Intersection when l is several times longer than s: for each element of s, skip
    through l four at a time, then one at a time. The skip loops are predictable branches;
    only one misprediction per element of s (postings_bench intersect 1M x 100k)."""
    cdef Py_ssize_t i = 0, j = 0, k = 0
    cdef ref_t x
    while i < ns:
        x = s[i]
        while j + 8 <= nl and l[j + 7] < x:
            j += 8
        # fewer than 8 left below x: count them without branches
        if j + 8 <= nl:
            j += ((l[j] < x) + (l[j + 1] < x) + (l[j + 2] < x) + (l[j + 3] < x)
                  + (l[j + 4] < x) + (l[j + 5] < x) + (l[j + 6] < x))
        else:
            while j < nl and l[j] < x:
                j += 1
        if j == nl:
            break
        if l[j] == x:
            out[k] = x
            k += 1
            j += 1
        i += 1
    return k

cdef inline Py_ssize_t _intersect(const ref_t *a, Py_ssize_t na, const ref_t *b, Py_ssize_t nb,
                                  ref_t *out) noexcept nogil:
    cdef Py_ssize_t i = 0, j = 0, k = 0
    cdef ref_t x, y
    if na == 0 or nb == 0:
        return 0
    if nb > na * <Py_ssize_t>GALLOP_RATIO:
        # few candidates in a, seek each in the long list b
        while i < na:
            x = a[i]
            j = _gallop(b, j, nb, x)
            if j == nb:
                break
            if b[j] == x:
                out[k] = x
                k += 1
                j += 1
            i += 1
        return k
    if na > nb * <Py_ssize_t>GALLOP_RATIO:
        # mirror image; out may alias a: k <= i always holds, so writes trail reads
        while j < nb:
            y = b[j]
            i = _gallop(a, i, na, y)
            if i == na:
                break
            if a[i] == y:
                out[k] = y
                k += 1
                i += 1
            j += 1
        return k
    if nb > na * <Py_ssize_t>SKIP_RATIO:
        return _skip_intersect(a, na, b, nb, out, False)
    if na > nb * <Py_ssize_t>SKIP_RATIO:
        return _skip_intersect(b, nb, a, na, out, True)
    # Branchless merge: always store, advance k only on equality. k <= min(i, j), so the
    # store is in bounds and never overtakes the read position when out is a.
    while i < na and j < nb:
        x = a[i]
        y = b[j]
        out[k] = x
        k += x == y
        i += x <= y
        j += y <= x
    return k

cdef inline bint _intersects(const ref_t *a, Py_ssize_t na, const ref_t *b, Py_ssize_t nb) noexcept nogil:
    """True as soon as one common element is found (gallops from the shorter side)."""
    cdef Py_ssize_t i = 0, j = 0
    if na > nb:
        a, b = b, a
        na, nb = nb, na
    while i < na:
        j = _gallop(b, j, nb, a[i])
        if j == nb:
            return False
        if b[j] == a[i]:
            return True
        i = _gallop(a, i + 1, na, b[j])
    return False


# ---- difference --------------------------------------------------------------------

cdef inline Py_ssize_t _subtract(const ref_t *a, Py_ssize_t na, const ref_t *b, Py_ssize_t nb,
                                 ref_t *out) noexcept nogil:
    cdef Py_ssize_t i = 0, j = 0, k = 0, p
    cdef ref_t x, y
    if nb == 0 or na == 0:
        if na and out != a:
            memcpy(out, a, na * sizeof(ref_t))
        return na
    if nb > na * <Py_ssize_t>GALLOP_RATIO:
        # few candidates: seek each in the long exclusion list
        while i < na:
            x = a[i]
            j = _gallop(b, j, nb, x)
            if j == nb:
                break
            if b[j] != x:
                out[k] = x
                k += 1
            i += 1
    elif na > nb * <Py_ssize_t>GALLOP_RATIO:
        # few exclusions: copy the runs between them
        while j < nb and i < na:
            p = _gallop(a, i, na, b[j])
            if p > i:
                memmove(out + k, a + i, (p - i) * sizeof(ref_t))
                k += p - i
            i = p
            if i < na and a[i] == b[j]:
                i += 1
            j += 1
    else:
        # branchless merge; k <= i so out may alias a
        while i < na and j < nb:
            x = a[i]
            y = b[j]
            out[k] = x
            k += x < y
            i += x <= y
            j += y <= x
    if i < na:
        memmove(out + k, a + i, (na - i) * sizeof(ref_t))
        k += na - i
    return k


# ---- union -------------------------------------------------------------------------

cdef inline Py_ssize_t _merge(const ref_t *a, Py_ssize_t na, const ref_t *b, Py_ssize_t nb,
                              ref_t *out) noexcept nogil:
    cdef Py_ssize_t i = 0, j = 0, k = 0
    cdef ref_t x, y
    while i < na and j < nb:
        x = a[i]
        y = b[j]
        out[k] = x if x < y else y
        k += 1
        i += x <= y
        j += y <= x
    if i < na:
        memcpy(out + k, a + i, (na - i) * sizeof(ref_t))
        k += na - i
    if j < nb:
        memcpy(out + k, b + j, (nb - j) * sizeof(ref_t))
        k += nb - j
    return k

cdef extern from *:
    int __builtin_ctzll(unsigned long long) nogil

cdef inline Py_ssize_t _union_bitmap(const ref_t **lists, const Py_ssize_t *lens, Py_ssize_t k,
                                     ref_t lo, ref_t hi, ref_t *out) noexcept nogil:
    """Union through a bitmap over [lo, hi]; -1 if it cannot be allocated."""
    cdef uint64_t nwords = ((<uint64_t>(hi - lo)) >> 6) + 1, w, word, off
    cdef uint64_t *bm = <uint64_t *>calloc(nwords, sizeof(uint64_t))
    cdef Py_ssize_t i, j, n = 0
    cdef const ref_t *p
    if bm == NULL:
        return -1
    for i in range(k):
        p = lists[i]
        for j in range(lens[i]):
            off = p[j] - lo
            bm[off >> 6] |= 1ULL << (off & 63)
    for w in range(nwords):
        word = bm[w]
        while word:
            out[n] = <ref_t>(lo + (w << 6) + <uint64_t>__builtin_ctzll(word))
            n += 1
            word &= word - 1
    free(bm)
    return n

cdef inline Py_ssize_t _union_many(const ref_t **lists, const Py_ssize_t *lens, Py_ssize_t k,
                                   ref_t *out) noexcept nogil:
    """Pairwise merge tree: concatenate into out, then merge neighbouring segments into a
    scratch buffer and back, log2(k) passes of branchless merging. Chosen over a binary
    heap because its inner loop has no unpredictable branches (postings_bench union_many)."""
    cdef Py_ssize_t total = 0, i, m, nseg, pos, n
    cdef Py_ssize_t *seg
    cdef ref_t *src
    cdef ref_t *dst
    cdef ref_t *tmp
    cdef ref_t lo, hi
    for i in range(k):
        total += lens[i]
    if k == 0 or total == 0:
        return 0
    if k == 1:
        memcpy(out, lists[0], lens[0] * sizeof(ref_t))
        return lens[0]
    if k == 2:
        return _merge(lists[0], lens[0], lists[1], lens[1], out)
    # Dense inputs (ids span at most 64x the item count, so the bitmap is no larger than
    # out): set bits and read them back in order, O(total + span/64) instead of
    # O(total log k). postings_bench union_many 100k lists x 10 ids: 55 ms -> 15 ms.
    lo = lists[0][0] if lens[0] else <ref_t>-1
    hi = 0
    for i in range(k):
        if lens[i]:
            if lists[i][0] < lo:
                lo = lists[i][0]
            if lists[i][lens[i] - 1] > hi:
                hi = lists[i][lens[i] - 1]
    if <uint64_t>(hi - lo) / 64 <= <uint64_t>total:
        return _union_bitmap(lists, lens, k, lo, hi, out)
    seg = <Py_ssize_t *>malloc((k + 1) * sizeof(Py_ssize_t))
    tmp = <ref_t *>malloc(total * sizeof(ref_t))
    if seg == NULL or tmp == NULL:
        free(seg)
        free(tmp)
        return -1
    # seg[m]..seg[m+1] is segment m of src
    pos = 0
    nseg = 0
    for i in range(k):
        if lens[i]:
            memcpy(out + pos, lists[i], lens[i] * sizeof(ref_t))
            seg[nseg] = pos
            nseg += 1
            pos += lens[i]
    seg[nseg] = pos
    src = out
    dst = tmp
    while nseg > 1:
        pos = 0
        m = 0
        i = 0
        while i < nseg:
            if i + 1 < nseg:
                n = _merge(src + seg[i], seg[i + 1] - seg[i], src + seg[i + 1], seg[i + 2] - seg[i + 1], dst + pos)
            else:
                n = seg[i + 1] - seg[i]
                memcpy(dst + pos, src + seg[i], n * sizeof(ref_t))
            # segment m starts at pos; seg[m] <= seg[i] is already consumed, safe to overwrite
            seg[m] = pos
            pos += n
            m += 1
            i += 2
        seg[m] = pos
        nseg = m
        src, dst = dst, src
    if src != out:
        memcpy(out, src, pos * sizeof(ref_t))
    free(seg)
    free(tmp)
    return pos


# ---- cimport-level entry points (declared in postings.pxd) ---------------------------

cdef Py_ssize_t pst_lower_bound_u64(const uint64_t *a, Py_ssize_t n, uint64_t x) noexcept nogil:
    return _lower_bound(a, 0, n, x)

cdef Py_ssize_t pst_lower_bound_u32(const uint32_t *a, Py_ssize_t n, uint32_t x) noexcept nogil:
    return _lower_bound(a, 0, n, x)

cdef bint pst_contains_u64(const uint64_t *a, Py_ssize_t n, uint64_t x) noexcept nogil:
    cdef Py_ssize_t i = _lower_bound(a, 0, n, x)
    return i < n and a[i] == x

cdef bint pst_contains_u32(const uint32_t *a, Py_ssize_t n, uint32_t x) noexcept nogil:
    cdef Py_ssize_t i = _lower_bound(a, 0, n, x)
    return i < n and a[i] == x

cdef bint pst_is_set_u64(const uint64_t *a, Py_ssize_t n) noexcept nogil:
    return _is_set(a, n)

cdef bint pst_is_set_u32(const uint32_t *a, Py_ssize_t n) noexcept nogil:
    return _is_set(a, n)

cdef Py_ssize_t pst_intersect_u64(const uint64_t *a, Py_ssize_t na, const uint64_t *b, Py_ssize_t nb,
                                  uint64_t *out) noexcept nogil:
    return _intersect(a, na, b, nb, out)

cdef Py_ssize_t pst_intersect_u32(const uint32_t *a, Py_ssize_t na, const uint32_t *b, Py_ssize_t nb,
                                  uint32_t *out) noexcept nogil:
    return _intersect(a, na, b, nb, out)

cdef bint pst_intersects_u64(const uint64_t *a, Py_ssize_t na, const uint64_t *b, Py_ssize_t nb) noexcept nogil:
    return _intersects(a, na, b, nb)

cdef bint pst_intersects_u32(const uint32_t *a, Py_ssize_t na, const uint32_t *b, Py_ssize_t nb) noexcept nogil:
    return _intersects(a, na, b, nb)

cdef Py_ssize_t pst_subtract_u64(const uint64_t *a, Py_ssize_t na, const uint64_t *b, Py_ssize_t nb,
                                 uint64_t *out) noexcept nogil:
    return _subtract(a, na, b, nb, out)

cdef Py_ssize_t pst_subtract_u32(const uint32_t *a, Py_ssize_t na, const uint32_t *b, Py_ssize_t nb,
                                 uint32_t *out) noexcept nogil:
    return _subtract(a, na, b, nb, out)

cdef Py_ssize_t pst_merge_u64(const uint64_t *a, Py_ssize_t na, const uint64_t *b, Py_ssize_t nb,
                              uint64_t *out) noexcept nogil:
    return _merge(a, na, b, nb, out)

cdef Py_ssize_t pst_merge_u32(const uint32_t *a, Py_ssize_t na, const uint32_t *b, Py_ssize_t nb,
                              uint32_t *out) noexcept nogil:
    return _merge(a, na, b, nb, out)

cdef Py_ssize_t pst_union_many_u64(const uint64_t **lists, const Py_ssize_t *lens, Py_ssize_t k,
                                   uint64_t *out) noexcept nogil:
    return _union_many(lists, lens, k, out)

cdef Py_ssize_t pst_union_many_u32(const uint32_t **lists, const Py_ssize_t *lens, Py_ssize_t k,
                                   uint32_t *out) noexcept nogil:
    return _union_many(lists, lens, k, out)


# ---- Python API --------------------------------------------------------------------

cdef Py_ssize_t _acquire(object obj, Py_buffer *view) except -1:
    """Hold obj's buffer; return its item size (4 or 8) or raise TypeError."""
    PyObject_GetBuffer(obj, view, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS)
    fmt = view.format.decode("ascii") if view.format != NULL else "B"
    if fmt[:1] in ("@", "="):
        fmt = fmt[1:]
    if (fmt == "I" and view.itemsize == 4) or (fmt in ("L", "Q") and view.itemsize == 8):
        return view.itemsize
    PyBuffer_Release(view)
    raise TypeError("postings must be a buffer of unsigned 32- or 64-bit integers "
                    "(array('I') or array('Q')), got format %r" % fmt)

cdef inline array.array _new(Py_ssize_t width, Py_ssize_t n):
    return array.clone(_U64 if width == 8 else _U32, n, False)

cdef inline Py_ssize_t _len(Py_buffer *view) noexcept:
    return view.len // view.itemsize

cdef object _mismatch(Py_ssize_t wa, Py_ssize_t wb):
    return TypeError("postings of different widths: %d-byte and %d-byte refs" % (wa, wb))


def intersect(a, b):
    """Sorted refs present in both a and b, as a new array of their width."""
    cdef Py_buffer va, vb
    cdef Py_ssize_t wa, wb, na, nb, k
    cdef array.array out
    wa = _acquire(a, &va)
    try:
        wb = _acquire(b, &vb)
        try:
            if wa != wb:
                raise _mismatch(wa, wb)
            na = _len(&va)
            nb = _len(&vb)
            out = _new(wa, min(na, nb))
            with nogil:
                if wa == 8:
                    k = _intersect(<const uint64_t *>va.buf, na, <const uint64_t *>vb.buf, nb, <uint64_t *>out.data.as_voidptr)
                else:
                    k = _intersect(<const uint32_t *>va.buf, na, <const uint32_t *>vb.buf, nb, <uint32_t *>out.data.as_voidptr)
        finally:
            PyBuffer_Release(&vb)
    finally:
        PyBuffer_Release(&va)
    array.resize(out, k)
    return out


def intersects(a, b):
    """True if a and b share at least one ref (stops at the first)."""
    cdef Py_buffer va, vb
    cdef Py_ssize_t wa, wb, na, nb
    cdef bint r
    wa = _acquire(a, &va)
    try:
        wb = _acquire(b, &vb)
        try:
            if wa != wb:
                raise _mismatch(wa, wb)
            na = _len(&va)
            nb = _len(&vb)
            with nogil:
                if wa == 8:
                    r = _intersects(<const uint64_t *>va.buf, na, <const uint64_t *>vb.buf, nb)
                else:
                    r = _intersects(<const uint32_t *>va.buf, na, <const uint32_t *>vb.buf, nb)
        finally:
            PyBuffer_Release(&vb)
    finally:
        PyBuffer_Release(&va)
    return r


def subtract(a, b):
    """Sorted refs of a that are not in b, as a new array of their width."""
    cdef Py_buffer va, vb
    cdef Py_ssize_t wa, wb, na, nb, k
    cdef array.array out
    wa = _acquire(a, &va)
    try:
        wb = _acquire(b, &vb)
        try:
            if wa != wb:
                raise _mismatch(wa, wb)
            na = _len(&va)
            nb = _len(&vb)
            out = _new(wa, na)
            with nogil:
                if wa == 8:
                    k = _subtract(<const uint64_t *>va.buf, na, <const uint64_t *>vb.buf, nb, <uint64_t *>out.data.as_voidptr)
                else:
                    k = _subtract(<const uint32_t *>va.buf, na, <const uint32_t *>vb.buf, nb, <uint32_t *>out.data.as_voidptr)
        finally:
            PyBuffer_Release(&vb)
    finally:
        PyBuffer_Release(&va)
    array.resize(out, k)
    return out


def contains(a, x):
    """True if ref x is in the sorted list a (binary search)."""
    cdef Py_buffer va
    cdef Py_ssize_t wa, na
    cdef bint r
    cdef uint64_t v
    if x < 0:
        return False
    wa = _acquire(a, &va)
    try:
        if x > (0xFFFFFFFFFFFFFFFFULL if wa == 8 else 0xFFFFFFFFULL):
            return False
        v = x
        na = _len(&va)
        with nogil:
            if wa == 8:
                r = pst_contains_u64(<const uint64_t *>va.buf, na, v)
            else:
                r = pst_contains_u32(<const uint32_t *>va.buf, na, <uint32_t>v)
    finally:
        PyBuffer_Release(&va)
    return r


def is_set(a):
    """True if a is strictly ascending (sorted, no duplicates): a valid postings list."""
    cdef Py_buffer va
    cdef Py_ssize_t wa, na
    cdef bint r
    wa = _acquire(a, &va)
    try:
        na = _len(&va)
        with nogil:
            if wa == 8:
                r = _is_set(<const uint64_t *>va.buf, na)
            else:
                r = _is_set(<const uint32_t *>va.buf, na)
    finally:
        PyBuffer_Release(&va)
    return r


cdef class _Held:
    """Buffers of a list of postings held for one nogil section; releases them on close()."""
    cdef Py_buffer *views
    cdef const void **ptrs
    cdef Py_ssize_t *lens
    cdef Py_ssize_t n, held, width, total

    def __cinit__(self, list lists):
        self.n = len(lists)
        self.held = 0
        self.width = 0
        self.total = 0
        self.views = <Py_buffer *>malloc((self.n + 1) * sizeof(Py_buffer))
        self.ptrs = <const void **>malloc((self.n + 1) * sizeof(void *))
        self.lens = <Py_ssize_t *>malloc((self.n + 1) * sizeof(Py_ssize_t))
        if self.views == NULL or self.ptrs == NULL or self.lens == NULL:
            raise MemoryError()
        cdef Py_ssize_t i, w
        for i in range(self.n):
            w = _acquire(lists[i], &self.views[i])
            self.held += 1
            if self.width == 0:
                self.width = w
            elif w != self.width:
                raise _mismatch(self.width, w)
            self.ptrs[i] = self.views[i].buf
            self.lens[i] = _len(&self.views[i])
            self.total += self.lens[i]

    cdef void close(self) noexcept:
        cdef Py_ssize_t i
        for i in range(self.held):
            PyBuffer_Release(&self.views[i])
        self.held = 0

    def __dealloc__(self):
        self.close()
        free(self.views)
        free(<void *>self.ptrs)
        free(self.lens)


cdef Py_ssize_t _width_of(str typecode) except -1:
    if typecode == "Q" or typecode == "L":
        return 8
    if typecode == "I":
        return 4
    raise ValueError("typecode must be 'I' or 'Q', got %r" % (typecode,))


def union(a, b):
    """Sorted refs in a or b, as a new array of their width."""
    return union_many([a, b])


def union_many(lists, typecode=None):
    """Sorted refs present in any of the lists (k-way merge), a new array of their width.

    `typecode` ('I' or 'Q') gives the width when lists is empty."""
    cdef list ls = list(lists)
    cdef _Held h = _Held(ls)
    cdef array.array out
    cdef Py_ssize_t k
    try:
        if h.n == 0:
            if typecode is None:
                raise ValueError("union_many of no lists needs a typecode")
            return _new(_width_of(typecode), 0)
        out = _new(h.width, h.total)
        with nogil:
            if h.width == 8:
                k = _union_many(<const uint64_t **>h.ptrs, h.lens, h.n, <uint64_t *>out.data.as_voidptr)
            else:
                k = _union_many(<const uint32_t **>h.ptrs, h.lens, h.n, <uint32_t *>out.data.as_voidptr)
    finally:
        h.close()
    if k < 0:
        raise MemoryError()
    array.resize(out, k)
    return out


def intersect_many(lists):
    """Sorted refs present in every list: intersects shortest first, stops once empty."""
    cdef list ls = list(lists)
    cdef _Held h = _Held(ls)
    cdef array.array out
    cdef Py_ssize_t i, j, k, best
    cdef Py_ssize_t *order
    try:
        if h.n == 0:
            raise ValueError("intersect_many needs at least one list")
        order = <Py_ssize_t *>malloc(h.n * sizeof(Py_ssize_t))
        if order == NULL:
            raise MemoryError()
        try:
            # selection-sort indices by length (k is small: one list per matcher)
            for i in range(h.n):
                order[i] = i
            for i in range(h.n):
                best = i
                for j in range(i + 1, h.n):
                    if h.lens[order[j]] < h.lens[order[best]]:
                        best = j
                order[i], order[best] = order[best], order[i]
            k = h.lens[order[0]]
            out = _new(h.width, k)
            with nogil:
                if k:
                    memcpy(out.data.as_voidptr, h.ptrs[order[0]], k * h.width)
                # in place: out aliases the `a` side, which _intersect allows
                for i in range(1, h.n):
                    if k == 0:
                        break
                    if h.width == 8:
                        k = _intersect(<const uint64_t *><uint64_t *>out.data.as_voidptr, k,
                                       <const uint64_t *>h.ptrs[order[i]], h.lens[order[i]], <uint64_t *>out.data.as_voidptr)
                    else:
                        k = _intersect(<const uint32_t *><uint32_t *>out.data.as_voidptr, k,
                                       <const uint32_t *>h.ptrs[order[i]], h.lens[order[i]], <uint32_t *>out.data.as_voidptr)
        finally:
            free(order)
    finally:
        h.close()
    array.resize(out, k)
    return out
