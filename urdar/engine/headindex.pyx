# cython: language_level=3
"""The head's label index in C (see headindex.pxd): symbols, compact series keys, postings."""
cimport cython
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING
from libc.stdint cimport uint8_t, uint32_t, uint64_t, UINT32_MAX
from libc.stdlib cimport malloc, calloc, realloc, free
from libc.string cimport memcpy, memcmp, memmove, memset
from cpython.array cimport array as carray, clone, resize
from cpython.unicode cimport PyUnicode_DecodeUTF8

from array import array

from urdar.engine import postings as _pst

from urdar.engine.encoding cimport put_uvarint, get_uvarint, uvarint_size
from urdar.engine.hashmap cimport hm_t, hm_init, hm_free, hm_get, hm_put, hm_del, hm_slot
from urdar.engine.labels cimport key_hash

cdef carray _U64_TEMPLATE = array("Q")

cdef extern from *:
    """
    #define urdar_ix_prefetch(p) __builtin_prefetch((const void *)(p))
    """
    void urdar_ix_prefetch(const void *p) noexcept nogil


cdef extern from "stdlib.h" nogil:
    void qsort(void *base, size_t nmemb, size_t size, int (*compar)(const void *, const void *) noexcept nogil)


# ---- sorting distinct strings of the arena (label_values) ------------------------------------
# Bytewise order, shorter first on a tie: the order of the decoded strings for valid UTF-8.
# qsort() with memcmp() through pointers into the arena costs a cache miss or two per
# comparison (18 comparisons per value at 200k values); instead each round radix-sorts a
# group by the next 8 bytes of its strings, held big-endian in the entry itself, and only the
# strings that tie on them go on to the following 8 bytes.

ctypedef struct skey_t:
    uint64_t key            # bytes [depth, depth + 8) of the string, big-endian, 0-padded
    uint32_t off            # the string's first byte in the arena
    uint32_t n              # its length

ctypedef struct sgroup_t:
    size_t lo, hi, depth

cdef inline uint64_t skey_at(const uint8_t *p, size_t n, size_t depth) noexcept nogil:
    cdef uint64_t k = 0
    cdef size_t i, m
    if depth >= n:
        return 0
    m = n - depth
    if m > 8:
        m = 8
    for i in range(m):
        k |= (<uint64_t>p[depth + i]) << (56 - 8 * i)
    return k


cdef inline int scmp(const uint8_t *base, const skey_t *x, const skey_t *y, size_t depth) noexcept nogil:
    # x and y agree on their first `depth` bytes
    cdef size_t nx = x.n - depth if x.n > depth else 0
    cdef size_t ny = y.n - depth if y.n > depth else 0
    cdef int c = memcmp(base + x.off + depth, base + y.off + depth, nx if nx < ny else ny)
    if c:
        return c
    return (nx > ny) - (nx < ny)


cdef void sinsertion(const uint8_t *base, skey_t *a, size_t n, size_t depth) noexcept nogil:
    cdef size_t i, j
    cdef skey_t t
    for i in range(1, n):
        t = a[i]
        j = i
        while j > 0 and scmp(base, &t, &a[j - 1], depth) < 0:
            a[j] = a[j - 1]
            j -= 1
        a[j] = t


cdef int sort_strings(const uint8_t *base, skey_t *a, size_t n) noexcept nogil:
    """Sort a[:n] (distinct strings of `base`, each with its depth-0 key already set: the
    caller has the string's cache line at hand); 0 or IX_ENOMEM."""
    cdef skey_t *tmp
    cdef skey_t *src
    cdef skey_t *dst
    cdef skey_t *sw
    cdef sgroup_t *todo
    cdef size_t ntodo = 1, lo, hi, m, depth, i, j, f, b, x, pos
    cdef size_t (*counts)[256]
    cdef int moved
    if n < 2:
        return 0
    tmp = <skey_t *>malloc(n * sizeof(skey_t))
    todo = <sgroup_t *>malloc(n * sizeof(sgroup_t))     # pending groups are disjoint
    counts = <size_t (*)[256]>malloc(8 * 256 * sizeof(size_t))
    if tmp == NULL or todo == NULL or counts == NULL:
        free(tmp)
        free(todo)
        free(counts)
        return IX_ENOMEM
    todo[0].lo = 0
    todo[0].hi = n
    todo[0].depth = 0
    while ntodo:
        ntodo -= 1
        lo = todo[ntodo].lo
        hi = todo[ntodo].hi
        depth = todo[ntodo].depth
        m = hi - lo
        if m <= 16:
            sinsertion(base, a + lo, m, depth)
            continue
        memset(counts, 0, 8 * 256 * sizeof(size_t))
        for i in range(lo, hi):
            if depth:
                a[i].key = skey_at(base + a[i].off, a[i].n, depth)
            for b in range(8):
                counts[b][(a[i].key >> (8 * b)) & 0xff] += 1
        # LSD radix sort over the bytes that differ
        src = a + lo
        dst = tmp + lo
        moved = 0
        for b in range(8):
            if counts[b][(src[0].key >> (8 * b)) & 0xff] == m:
                continue
            pos = 0
            for x in range(256):
                f = counts[b][x]
                counts[b][x] = pos
                pos += f
            for i in range(m):
                x = (src[i].key >> (8 * b)) & 0xff
                dst[counts[b][x]] = src[i]
                counts[b][x] += 1
            sw = src
            src = dst
            dst = sw
            moved ^= 1
        if moved:
            memcpy(a + lo, src, m * sizeof(skey_t))
        # runs that tie on these 8 bytes: the strings ending within them first (by length:
        # they differ only in trailing NULs), then the rest on to the next 8 bytes
        i = lo
        while i < hi:
            j = i + 1
            while j < hi and a[j].key == a[i].key:
                j += 1
            if j - i > 1:
                f = i
                for x in range(i, j):
                    if a[x].n <= depth + 8:
                        if x != f:
                            tmp[0] = a[f]
                            a[f] = a[x]
                            a[x] = tmp[0]
                        f += 1
                if f - i > 1:
                    sinsertion(base, a + i, f - i, depth)
                if j - f > 1:
                    todo[ntodo].lo = f
                    todo[ntodo].hi = j
                    todo[ntodo].depth = depth + 8
                    ntodo += 1
            i = j
    free(tmp)
    free(todo)
    free(counts)
    return 0


cdef int cmp_u64(const void *a, const void *b) noexcept nogil:
    cdef uint64_t x = (<const uint64_t *>a)[0]
    cdef uint64_t y = (<const uint64_t *>b)[0]
    return (x > y) - (x < y)


cdef inline bint is_tagged(void *v) noexcept nogil:
    return (<size_t>v) & 1

cdef inline uint64_t untag(void *v) noexcept nogil:
    return (<uint64_t><size_t>v) >> 1

cdef inline void *tag(uint64_t ref) noexcept nogil:
    return <void *><size_t>((ref << 1) | 1)


cdef inline long hm_find(hm_t *m, uint64_t k) noexcept nogil:
    """Slot of key k in a table with unique keys, or -1."""
    cdef size_t i = hm_slot(m, k)
    while m.e[i].v != NULL:
        if m.e[i].k == k:
            return <long>i
        i = (i + 1) & m.mask
    return -1


cdef inline size_t lower_bound(const uint64_t *a, size_t n, uint64_t x) noexcept nogil:
    cdef size_t lo = 0, hi = n, mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if a[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    return lo


cdef inline bint sorted_has(const uint64_t *a, size_t n, uint64_t x) noexcept nogil:
    cdef size_t i = lower_bound(a, n, x)
    return i < n and a[i] == x


cdef plist_t *plist_build(const uint64_t *refs, size_t n) noexcept nogil:
    """A new list holding refs[:n] (sorted, n >= 2), with room to append a few more."""
    cdef size_t i, need = 0, w = 0
    cdef uint64_t prev = 0
    cdef plist_t *p
    for i in range(n):
        need += uvarint_size(refs[i] - prev)
        prev = refs[i]
    p = <plist_t *>malloc(sizeof(plist_t) + need + 7)
    if p == NULL:
        return NULL
    prev = 0
    for i in range(n):
        w += put_uvarint(p.data + w, refs[i] - prev)
        prev = refs[i]
    p.n = <uint32_t>n
    p.len = <uint32_t>w
    p.cap = <uint32_t>(need + 8)
    p.last = prev
    p.dirty = 0
    return p


cdef size_t plist_decode(const plist_t *p, uint64_t *out) noexcept nogil:
    """Write p's refs to out (room for p.n); returns p.n."""
    cdef const uint8_t *d = p.data
    cdef const uint8_t *end = p.data + p.len
    cdef uint64_t prev = 0, delta
    cdef size_t i = 0
    while d < end:
        d += get_uvarint(d, end, &delta)
        prev += delta
        out[i] = prev
        i += 1
    return i


cdef inline uint64_t plist_first(const plist_t *p) noexcept nogil:
    cdef uint64_t r
    get_uvarint(p.data, p.data + p.len, &r)
    return r


cdef int plist_insert(plist_t **pp, uint64_t ref) noexcept nogil:
    """Add ref to the list *pp (it may move). 0 or IX_ENOMEM."""
    cdef plist_t *p = pp[0]
    cdef plist_t *q
    cdef uint64_t *tmp
    cdef size_t n, i
    cdef uint32_t cap
    if ref > p.last:
        if p.len + 10 > p.cap:
            cap = p.cap + (p.cap >> 2) + 16
            p = <plist_t *>realloc(p, sizeof(plist_t) + cap)
            if p == NULL:
                return IX_ENOMEM
            p.cap = cap
            pp[0] = p
        p.len += put_uvarint(p.data + p.len, ref - p.last)
        p.last = ref
        p.n += 1
        return 0
    # an older ref (replay of a checkpoint can revisit them): rebuild the list
    tmp = <uint64_t *>malloc((p.n + 1) * sizeof(uint64_t))
    if tmp == NULL:
        return IX_ENOMEM
    n = plist_decode(p, tmp)
    i = lower_bound(tmp, n, ref)
    if i < n and tmp[i] == ref:
        free(tmp)
        return 0
    memmove(tmp + i + 1, tmp + i, (n - i) * sizeof(uint64_t))
    tmp[i] = ref
    q = plist_build(tmp, n + 1)
    free(tmp)
    if q == NULL:
        return IX_ENOMEM
    free(p)
    pp[0] = q
    return 0


cdef inline int span_at(const uint8_t *p, const uint8_t *end, size_t *spanlen) noexcept nogil:
    """Length of the string at p (uvarint length . bytes) as a whole span; -1 when malformed."""
    cdef uint64_t l
    cdef int k = get_uvarint(p, end, &l)
    if k < 0 or l > <uint64_t>(end - p - k):
        return -1
    spanlen[0] = k + <size_t>l
    return k


@cython.final
cdef class HeadIndex:
    """Symbols, compact keys and postings of one head (see headindex.pxd)."""

    def __cinit__(self):
        self._acap = 4096
        self._arena = <uint8_t *>malloc(self._acap)
        self._capsym = 256
        self._soff = <uint32_t *>malloc(self._capsym * sizeof(uint32_t))
        self._suse = <uint32_t *>calloc(self._capsym, sizeof(uint32_t))
        self._shash = <uint32_t *>malloc(self._capsym * sizeof(uint32_t))
        self._stab_mask = 255
        self._stab = <uint32_t *>calloc(self._stab_mask + 1, sizeof(uint32_t))
        self._capall = 256
        self._all = <uint64_t *>malloc(self._capall * sizeof(uint64_t))
        self._scap = 256
        self._scratch = <uint8_t *>malloc(self._scap)
        if (self._arena == NULL or self._soff == NULL or self._suse == NULL or self._shash == NULL or self._stab == NULL
                or self._all == NULL or self._scratch == NULL or hm_init(&self._names, 16) != 0):
            raise MemoryError()

    def __dealloc__(self):
        cdef size_t i, j
        cdef name_t *nt
        if self._names.e != NULL:
            for i in range(self._names.mask + 1):
                nt = <name_t *>self._names.e[i].v
                if nt == NULL:
                    continue
                for j in range(nt.values.mask + 1):
                    if nt.values.e[j].v != NULL and not is_tagged(nt.values.e[j].v):
                        free(nt.values.e[j].v)
                hm_free(&nt.values)
                free(nt)
        hm_free(&self._names)
        free(self._arena)
        free(self._soff)
        free(self._suse)
        free(self._shash)
        free(self._stab)
        free(self._freeids)
        free(self._all)
        free(self._dirty)
        free(self._scratch)

    # ---- symbols ---------------------------------------------------------------------

    cdef inline const uint8_t *sym_span(self, uint32_t sid, size_t *spanlen) noexcept nogil:
        cdef const uint8_t *p = self._arena + self._soff[sid]
        cdef uint64_t l
        cdef int k = get_uvarint(p, p + 10, &l)
        spanlen[0] = k + <size_t>l
        return p

    cdef uint64_t _sym_hash(self, uint32_t sid) noexcept nogil:
        return self._shash[sid]

    cdef long _sym_find(self, const uint8_t *s, size_t n) noexcept nogil:
        """Id of the string s[:n], or -1."""
        return self._sym_find_h(s, n, <uint32_t>key_hash(s, n))

    cdef long _sym_find_h(self, const uint8_t *s, size_t n, uint32_t h) noexcept nogil:
        """_sym_find with the string's hash (low 32 bits of key_hash) given."""
        cdef uint32_t i = h & self._stab_mask
        cdef uint32_t sid
        cdef const uint8_t *p
        cdef uint64_t l
        cdef int k
        while self._stab[i]:
            sid = self._stab[i] - 1
            if self._shash[sid] != h:
                i = (i + 1) & self._stab_mask
                continue
            p = self._arena + self._soff[sid]
            k = get_uvarint(p, p + 10, &l)
            if l == n and memcmp(p + k, s, n) == 0:
                return sid
            i = (i + 1) & self._stab_mask
        return -1

    cdef int _stab_grow(self) noexcept nogil:
        cdef uint32_t cap = (self._stab_mask + 1) * 2
        cdef uint32_t *t = <uint32_t *>calloc(cap, sizeof(uint32_t))
        cdef uint32_t sid, i
        if t == NULL:
            return IX_ENOMEM
        free(self._stab)
        self._stab = t
        self._stab_mask = cap - 1
        for sid in range(self._nsym):
            if self._suse[sid]:
                i = <uint32_t>self._sym_hash(sid) & self._stab_mask
                while t[i]:
                    i = (i + 1) & self._stab_mask
                t[i] = sid + 1
        return 0

    cdef long _sym_intern(self, const uint8_t *span, size_t spanlen, const uint8_t *s, size_t n) noexcept nogil:
        """Id of the string s[:n] (span = its key form), added when new; counts one use."""
        return self._sym_intern_h(span, spanlen, s, n, <uint32_t>key_hash(s, n))

    cdef long _sym_intern_h(self, const uint8_t *span, size_t spanlen, const uint8_t *s, size_t n,
                            uint32_t h) noexcept nogil:
        """_sym_intern with the string's hash (low 32 bits of key_hash) given."""
        cdef long found = self._sym_find_h(s, n, h)
        cdef uint32_t sid, cap, i
        cdef size_t acap
        cdef void *p
        if found >= 0:
            self._suse[found] += 1
            return found
        if (self._stab_n + 1) * 4 > (self._stab_mask + 1) * 3:
            if self._stab_grow() != 0:
                return IX_ENOMEM
        if self._alen + spanlen > self._acap:
            # a quarter more each time: large blocks grow by mremap, so copying is rare and
            # cheap, and a doubling arena would hold up to half its bytes unused
            acap = self._acap + (self._acap >> 2)
            while acap < self._alen + spanlen:
                acap += acap >> 2
            if acap > UINT32_MAX:
                return IX_ENOMEM
            p = realloc(self._arena, acap)
            if p == NULL:
                return IX_ENOMEM
            self._arena = <uint8_t *>p
            self._acap = acap
        if self._nfree:
            self._nfree -= 1
            sid = self._freeids[self._nfree]
        else:
            if self._nsym == self._capsym:
                cap = self._capsym + (self._capsym >> 1)
                p = realloc(self._soff, cap * sizeof(uint32_t))
                if p == NULL:
                    return IX_ENOMEM
                self._soff = <uint32_t *>p
                p = realloc(self._suse, cap * sizeof(uint32_t))
                if p == NULL:
                    return IX_ENOMEM
                self._suse = <uint32_t *>p
                p = realloc(self._shash, cap * sizeof(uint32_t))
                if p == NULL:
                    return IX_ENOMEM
                self._shash = <uint32_t *>p
                self._capsym = cap
            sid = self._nsym
            self._nsym += 1
        memcpy(self._arena + self._alen, span, spanlen)
        self._soff[sid] = <uint32_t>self._alen
        self._alen += spanlen
        self._suse[sid] = 1
        self._shash[sid] = h
        i = self._shash[sid] & self._stab_mask
        while self._stab[i]:
            i = (i + 1) & self._stab_mask
        self._stab[i] = sid + 1
        self._stab_n += 1
        self._live_syms += 1
        return sid

    cdef void _sym_release(self, uint32_t sid) noexcept nogil:
        cdef uint32_t i, j, home
        cdef size_t spanlen
        cdef void *p
        self._suse[sid] -= 1
        if self._suse[sid]:
            return
        # unlink from the open-addressing table (backward shift, as hashmap.pxd)
        i = <uint32_t>self._sym_hash(sid) & self._stab_mask
        while self._stab[i] != sid + 1:
            i = (i + 1) & self._stab_mask
        j = i
        while True:
            j = (j + 1) & self._stab_mask
            if self._stab[j] == 0:
                break
            home = <uint32_t>self._sym_hash(self._stab[j] - 1) & self._stab_mask
            if (j > i and (home <= i or home > j)) or (j < i and (home <= i and home > j)):
                self._stab[i] = self._stab[j]
                i = j
        self._stab[i] = 0
        self._stab_n -= 1
        self._live_syms -= 1
        self._sym_frees += 1
        self.sym_span(sid, &spanlen)
        self._adead += spanlen
        if self._nfree == self._capfree:
            p = realloc(self._freeids, (self._capfree * 2 + 64) * sizeof(uint32_t))
            if p == NULL:
                return      # the id is not reused: a leak of 4 bytes, not an error
            self._freeids = <uint32_t *>p
            self._capfree = self._capfree * 2 + 64
        self._freeids[self._nfree] = sid
        self._nfree += 1

    cdef void _compact_arena(self) noexcept nogil:
        """Copy the live symbols to a fresh arena once most of it is dead."""
        cdef uint8_t *a
        cdef size_t acap = 4096, alen = 0, spanlen
        cdef uint32_t sid
        cdef const uint8_t *p
        if self._adead < 65536 or self._adead * 2 < self._alen:
            return
        while acap < self._alen - self._adead:
            acap *= 2
        a = <uint8_t *>malloc(acap)
        if a == NULL:
            return
        for sid in range(self._nsym):
            if self._suse[sid]:
                p = self.sym_span(sid, &spanlen)
                memcpy(a + alen, p, spanlen)
                self._soff[sid] = <uint32_t>alen
                alen += spanlen
        free(self._arena)
        self._arena = a
        self._acap = acap
        self._alen = alen
        self._adead = 0

    # ---- series keys -------------------------------------------------------------------

    cdef int _scratch_room(self, size_t need) noexcept nogil:
        """Grow the compact-key scratch buffer to `need` bytes; -1 when out of memory."""
        cdef void *np
        if need > self._scap:
            np = realloc(self._scratch, need)
            if np == NULL:
                return -1
            self._scratch = <uint8_t *>np
            self._scap = need
        return 0

    cdef long intern_key(self, const uint8_t *key, size_t n, const uint8_t **ck) noexcept nogil:
        """Intern the names and values of a canonical key; *ck = its compact form (valid until
        the next call). Returns the compact length, IX_EMALFORMED or IX_ENOMEM."""
        cdef const uint8_t *end = key + n
        cdef const uint8_t *p = key
        cdef uint64_t cnt, i
        cdef size_t spanlen, w
        cdef int k
        cdef long sid
        k = get_uvarint(p, end, &cnt)
        if k < 0 or cnt > n:
            return IX_EMALFORMED
        p += k
        # validate first: interning then cannot fail half way for a bad key
        for i in range(cnt * 2):
            k = span_at(p, end, &spanlen)
            if k < 0:
                return IX_EMALFORMED
            p += spanlen
        if p != end:
            return IX_EMALFORMED
        if self._scratch_room(10 + cnt * 10) != 0:
            return IX_ENOMEM
        w = put_uvarint(self._scratch, cnt)
        p = key + get_uvarint(key, end, &cnt)
        for i in range(cnt * 2):
            k = span_at(p, end, &spanlen)
            sid = self._sym_intern(p, spanlen, p + k, spanlen - k)
            if sid < 0:
                self.release_key(self._scratch, w)   # what was interned so far
                return sid
            w += put_uvarint(self._scratch + w, <uint64_t>sid)
            p += spanlen
        ck[0] = self._scratch
        return <long>w

    cdef long key_strings(self, const uint8_t *key, size_t n) noexcept nogil:
        """Names and values in the canonical key key[:n] (2 per label), or IX_EMALFORMED."""
        cdef uint64_t cnt
        cdef int k = get_uvarint(key, key + n, &cnt)
        if k < 0 or cnt > n:
            return IX_EMALFORMED
        return <long>(cnt * 2)

    cdef long find_syms(self, const uint8_t *key, size_t n, uint64_t *sids, int stage) noexcept nogil:
        """The first half of interning key[:n], which only reads (any number of callers at
        once, while nobody interns or frees), in stages 0 to 3 over the same sids (room for
        key_strings()), each prefetching what the next reads, so that a caller can run each
        stage over several keys before the next (a new series' per-target values are cold):
        0 validates the key and hashes its strings (returns IX_EMALFORMED for a bad key),
        1 and 2 prefetch the table's candidates and their bytes, 3 writes for each name and
        value its symbol id, or (1 << 32) | its hash for one not interned yet. intern_found
        finishes it. Returns the number of strings."""
        cdef const uint8_t *end = key + n
        cdef const uint8_t *p
        cdef uint64_t cnt, i, m
        cdef size_t spanlen
        cdef int k
        cdef uint32_t h, e
        cdef long sid
        k = get_uvarint(key, end, &cnt)
        if k < 0 or cnt > n:
            return IX_EMALFORMED
        m = cnt * 2
        p = key + k
        if stage == 0:
            for i in range(m):
                k = span_at(p, end, &spanlen)
                if k < 0:
                    return IX_EMALFORMED
                h = <uint32_t>key_hash(p + k, spanlen - k)
                sids[i] = h
                urdar_ix_prefetch(&self._stab[h & self._stab_mask])
                p += spanlen
            if p != end:
                return IX_EMALFORMED
        elif stage == 1:
            for i in range(m):
                self.prefetch_sym(<uint32_t>sids[i])
        elif stage == 2:
            for i in range(m):
                e = self._probe_hash(<uint32_t>sids[i])
                if e:
                    urdar_ix_prefetch(self._arena + self._soff[e - 1])
        else:
            for i in range(m):
                k = span_at(p, end, &spanlen)
                sid = self._sym_find_h(p + k, spanlen - k, <uint32_t>sids[i])
                if sid >= 0:
                    sids[i] = <uint64_t>sid
                else:
                    sids[i] |= 1ULL << 32
                p += spanlen
        return <long>m

    cdef void prefetch_sym(self, uint32_t h) noexcept nogil:
        """Prefetch the hashes and offsets of the symbols on h's probe sequence (a lookup of h
        compares each one's hash; a string not interned yet walks the whole run)."""
        cdef uint32_t i = h & self._stab_mask
        cdef uint32_t e
        cdef int n = 0
        while n < 16:
            e = self._stab[i]
            if e == 0:
                break
            urdar_ix_prefetch(&self._shash[e - 1])
            urdar_ix_prefetch(&self._soff[e - 1])
            i = (i + 1) & self._stab_mask
            n += 1

    cdef uint32_t _probe_hash(self, uint32_t h) noexcept nogil:
        """The table entry (id + 1) of the first symbol on h's probe sequence with hash h, or 0."""
        cdef uint32_t i = h & self._stab_mask
        cdef uint32_t e
        while True:
            e = self._stab[i]
            if e == 0 or self._shash[e - 1] == h:
                return e
            i = (i + 1) & self._stab_mask

    cdef long intern_found(self, const uint8_t *key, size_t n, const uint64_t *sids,
                           const uint8_t **ck) noexcept nogil:
        """intern_key for a key find_syms read (sids, valid while sym_frees() is what it was
        then: the caller checks): the ids found count one more use, the others are interned
        now. Same results as intern_key."""
        cdef const uint8_t *end = key + n
        cdef const uint8_t *p = key
        cdef uint64_t cnt, i
        cdef size_t spanlen, w
        cdef int k
        cdef long sid
        p += get_uvarint(p, end, &cnt)
        if self._scratch_room(10 + cnt * 10) != 0:
            return IX_ENOMEM
        w = put_uvarint(self._scratch, cnt)
        for i in range(cnt * 2):
            k = span_at(p, end, &spanlen)
            if sids[i] >> 32 == 0:
                sid = <long>sids[i]
                self._suse[sid] += 1
            else:
                sid = self._sym_intern_h(p, spanlen, p + k, spanlen - k, <uint32_t>sids[i])
                if sid < 0:
                    self.release_key(self._scratch, w)   # what was interned so far
                    return sid
            w += put_uvarint(self._scratch + w, <uint64_t>sid)
            p += spanlen
        ck[0] = self._scratch
        return <long>w

    cdef uint64_t sym_frees(self) noexcept nogil:
        """Symbol ids freed so far (find_syms' ids stay valid while this does not change)."""
        return self._sym_frees

    cdef bint key_eq(self, const uint8_t *ck, size_t cklen, const uint8_t *key, size_t n) noexcept nogil:
        """Whether the compact key ck and the canonical key key[:n] name the same labels."""
        cdef const uint8_t *cend = ck + cklen
        cdef const uint8_t *sp
        cdef uint64_t cnt, sid
        cdef size_t pos, spanlen
        cdef int k = get_uvarint(ck, cend, &cnt)
        ck += k
        pos = uvarint_size(cnt)
        if pos > n or (pos == 1 and key[0] != cnt):
            return False
        if pos > 1:
            k = get_uvarint(key, key + n, &sid)
            if k != <int>pos or sid != cnt:
                return False
        while ck < cend:
            ck += get_uvarint(ck, cend, &sid)
            sp = self.sym_span(<uint32_t>sid, &spanlen)
            if pos + spanlen > n or memcmp(key + pos, sp, spanlen) != 0:
                return False
            pos += spanlen
        return pos == n

    cdef void key_write(self, const uint8_t *ck, size_t cklen, uint8_t *out) noexcept nogil:
        """Write the canonical key of ck at out (room for its length needed)."""
        cdef const uint8_t *cend = ck + cklen
        cdef const uint8_t *sp
        cdef uint64_t cnt, sid
        cdef size_t spanlen
        ck += get_uvarint(ck, cend, &cnt)
        out += put_uvarint(out, cnt)
        while ck < cend:
            ck += get_uvarint(ck, cend, &sid)
            sp = self.sym_span(<uint32_t>sid, &spanlen)
            memcpy(out, sp, spanlen)
            out += spanlen

    cdef bytes key_bytes(self, const uint8_t *ck, size_t cklen, size_t keylen):
        b = PyBytes_FromStringAndSize(NULL, keylen)
        self.key_write(ck, cklen, <uint8_t *>PyBytes_AS_STRING(b))
        return b

    cdef void release_key(self, const uint8_t *ck, size_t cklen) noexcept nogil:
        """Drop one use of every symbol of ck (the series is gone)."""
        cdef const uint8_t *cend = ck + cklen
        cdef uint64_t cnt, sid
        ck += get_uvarint(ck, cend, &cnt)
        while ck < cend:
            ck += get_uvarint(ck, cend, &sid)
            self._sym_release(<uint32_t>sid)

    # ---- postings ----------------------------------------------------------------------

    cdef int add(self, const uint8_t *ck, size_t cklen, uint64_t ref) noexcept nogil:
        """Add ref to the postings of every pair of ck, and to all refs. 0 or IX_ENOMEM."""
        cdef const uint8_t *cend = ck + cklen
        cdef uint64_t cnt, nid, vid, r0
        cdef name_t *nt
        cdef long slot
        cdef plist_t *p
        cdef size_t i
        cdef void *np
        cdef uint64_t two[2]
        ck += get_uvarint(ck, cend, &cnt)
        while ck < cend:
            ck += get_uvarint(ck, cend, &nid)
            ck += get_uvarint(ck, cend, &vid)
            nt = <name_t *>hm_get(&self._names, nid)
            if nt == NULL:
                nt = <name_t *>calloc(1, sizeof(name_t))
                if nt == NULL or hm_init(&nt.values, 16) != 0 or hm_put(&self._names, nid, nt) != 0:
                    free(nt)
                    return IX_ENOMEM
                nt.nid = <uint32_t>nid
            slot = hm_find(&nt.values, vid)
            if slot < 0:
                if hm_put(&nt.values, vid, tag(ref)) != 0:
                    return IX_ENOMEM
                continue
            np = nt.values.e[slot].v
            if is_tagged(np):
                r0 = untag(np)
                if r0 == ref:
                    continue
                two[0] = r0 if r0 < ref else ref
                two[1] = ref if r0 < ref else r0
                p = plist_build(two, 2)
                if p == NULL:
                    return IX_ENOMEM
                nt.values.e[slot].v = p
            else:
                p = <plist_t *>np
                if plist_insert(&p, ref) != 0:
                    return IX_ENOMEM
                nt.values.e[slot].v = p
        # all refs
        if self._nall and self._all[self._nall - 1] < ref:
            i = self._nall
        else:
            i = lower_bound(self._all, self._nall, ref)
            if i < self._nall and self._all[i] == ref:
                return 0
        if self._nall == self._capall:
            np = realloc(self._all, (self._capall + (self._capall >> 1)) * sizeof(uint64_t))
            if np == NULL:
                return IX_ENOMEM
            self._all = <uint64_t *>np
            self._capall += self._capall >> 1
        if i < self._nall:
            memmove(self._all + i + 1, self._all + i, (self._nall - i) * sizeof(uint64_t))
        self._all[i] = ref
        self._nall += 1
        return 0

    cdef void prefetch_add(self, const uint8_t *ck, size_t cklen) noexcept nogil:
        """Prefetch the postings slots add(ck, ...) will use (a new series' values are cold)."""
        cdef const uint8_t *cend = ck + cklen
        cdef uint64_t cnt, nid, vid
        cdef name_t *nt
        ck += get_uvarint(ck, cend, &cnt)
        while ck < cend:
            ck += get_uvarint(ck, cend, &nid)
            ck += get_uvarint(ck, cend, &vid)
            nt = <name_t *>hm_get(&self._names, nid)
            if nt != NULL:
                urdar_ix_prefetch(&nt.values.e[hm_slot(&nt.values, vid)])

    cdef void remove_begin(self) noexcept nogil:
        self._ndirty = 0

    cdef int remove_series(self, const uint8_t *ck, size_t cklen, uint64_t ref) noexcept nogil:
        """Take ref out of the postings of ck's pairs: singletons at once, shared lists at
        remove_end (one pass per list for a whole garbage collection). Releases ck's symbols."""
        cdef const uint8_t *c = ck
        cdef const uint8_t *cend = ck + cklen
        cdef uint64_t cnt, nid, vid
        cdef name_t *nt
        cdef long slot
        cdef void *v
        cdef plist_t *p
        cdef void *np
        c += get_uvarint(c, cend, &cnt)
        while c < cend:
            c += get_uvarint(c, cend, &nid)
            c += get_uvarint(c, cend, &vid)
            nt = <name_t *>hm_get(&self._names, nid)
            if nt == NULL:
                continue
            slot = hm_find(&nt.values, vid)
            if slot < 0:
                continue
            v = nt.values.e[slot].v
            if is_tagged(v):
                if untag(v) == ref:
                    hm_del(&nt.values, vid, v)
                    if nt.values.n == 0:
                        hm_del(&self._names, nid, nt)
                        hm_free(&nt.values)
                        free(nt)
                continue
            p = <plist_t *>v
            if p.dirty:
                continue
            if self._ndirty == self._capdirty:
                np = realloc(self._dirty, (self._capdirty * 2 + 64) * sizeof(dirty_t))
                if np == NULL:
                    return IX_ENOMEM
                self._dirty = <dirty_t *>np
                self._capdirty = self._capdirty * 2 + 64
            p.dirty = 1
            self._dirty[self._ndirty].nid = <uint32_t>nid
            self._dirty[self._ndirty].vid = <uint32_t>vid
            self._ndirty += 1
        self.release_key(ck, cklen)
        return 0

    cdef int remove_end(self, const uint64_t *removed, size_t nremoved) noexcept nogil:
        """Filter the lists remove_series touched against `removed` (sorted refs)."""
        cdef size_t d, i, w
        cdef name_t *nt
        cdef long slot
        cdef plist_t *p
        cdef uint64_t *tmp = NULL
        cdef size_t tcap = 0, n
        cdef plist_t *q
        cdef void *np
        for d in range(self._ndirty):
            nt = <name_t *>hm_get(&self._names, self._dirty[d].nid)
            slot = hm_find(&nt.values, self._dirty[d].vid)
            p = <plist_t *>nt.values.e[slot].v
            if p.n > tcap:
                np = realloc(tmp, p.n * sizeof(uint64_t))
                if np == NULL:
                    free(tmp)
                    return IX_ENOMEM
                tmp = <uint64_t *>np
                tcap = p.n
            n = plist_decode(p, tmp)
            w = 0
            for i in range(n):
                if not sorted_has(removed, nremoved, tmp[i]):
                    tmp[w] = tmp[i]
                    w += 1
            p.dirty = 0
            if w == n:
                continue
            if w == 0:
                hm_del(&nt.values, self._dirty[d].vid, p)
                free(p)
            elif w == 1:
                nt.values.e[slot].v = tag(tmp[0])
                free(p)
            else:
                q = plist_build(tmp, w)
                if q == NULL:
                    free(tmp)
                    return IX_ENOMEM
                nt.values.e[slot].v = q
                free(p)
        free(tmp)
        for d in range(self._ndirty):
            nt = <name_t *>hm_get(&self._names, self._dirty[d].nid)
            if nt != NULL and nt.values.n == 0:
                hm_del(&self._names, self._dirty[d].nid, nt)
                hm_free(&nt.values)
                free(nt)
        self._ndirty = 0
        w = 0
        for i in range(self._nall):
            if not sorted_has(removed, nremoved, self._all[i]):
                self._all[w] = self._all[i]
                w += 1
        self._nall = w
        self._compact_arena()
        return 0

    cdef void *_pair(self, const uint8_t *name, size_t nlen, const uint8_t *value, size_t vlen) noexcept nogil:
        """The postings entry (tagged ref or plist_t*) of name=value, or NULL."""
        cdef long nid = self._sym_find(name, nlen)
        cdef long vid
        cdef name_t *nt
        cdef long slot
        if nid < 0:
            return NULL
        vid = self._sym_find(value, vlen)
        if vid < 0:
            return NULL
        nt = <name_t *>hm_get(&self._names, <uint64_t>nid)
        if nt == NULL:
            return NULL
        slot = hm_find(&nt.values, <uint64_t>vid)
        return nt.values.e[slot].v if slot >= 0 else NULL

    cdef size_t count(self, const uint8_t *name, size_t nlen, const uint8_t *value, size_t vlen) noexcept nogil:
        cdef void *v = self._pair(name, nlen, value, vlen)
        if v == NULL:
            return 0
        return 1 if is_tagged(v) else (<plist_t *>v).n

    cdef uint64_t first_ref(self, const uint8_t *name, size_t nlen, const uint8_t *value, size_t vlen) noexcept nogil:
        cdef void *v = self._pair(name, nlen, value, vlen)
        if v == NULL:
            return 0
        return untag(v) if is_tagged(v) else plist_first(<plist_t *>v)

    cdef size_t metric_count(self, const uint8_t *key, size_t n) noexcept nogil:
        """Series with the metric name of the canonical key key[:n] (0 when it has none)."""
        cdef const uint8_t *end = key + n
        cdef const uint8_t *p = key
        cdef uint64_t cnt, i
        cdef size_t nspan, vspan
        cdef int nk, vk
        nk = get_uvarint(p, end, &cnt)
        if nk < 0:
            return 0
        p += nk
        for i in range(cnt):
            nk = span_at(p, end, &nspan)
            if nk < 0:
                return 0
            vk = span_at(p + nspan, end, &vspan)
            if vk < 0:
                return 0
            if nspan - nk == 8 and memcmp(p + nk, b"__name__", 8) == 0:
                return self.count(p + nk, 8, p + nspan + vk, vspan - vk)
            p += nspan + vspan
        return 0

    # ---- the index protocol of urdar.engine.matchers (owner's lock held) ---------------

    def postings(self, name, value):
        """Sorted refs of the series with name=value, array('Q') (a copy)."""
        cdef bytes nb = name.encode("utf-8", "surrogateescape")
        cdef bytes vb = value.encode("utf-8", "surrogateescape")
        cdef void *v = self._pair(nb, len(nb), vb, len(vb))
        cdef carray out
        cdef uint64_t r
        if v == NULL:
            return clone(_U64_TEMPLATE, 0, False)
        if is_tagged(v):
            out = clone(_U64_TEMPLATE, 1, False)
            r = untag(v)
            out.data.as_ulonglongs[0] = r
            return out
        out = clone(_U64_TEMPLATE, (<plist_t *>v).n, False)
        plist_decode(<plist_t *>v, out.data.as_ulonglongs)
        return out

    def all_postings(self):
        cdef carray out = clone(_U64_TEMPLATE, self._nall, False)
        if self._nall:
            memcpy(out.data.as_voidptr, self._all, self._nall * sizeof(uint64_t))
        return out

    cdef str _sym_str(self, uint32_t sid):
        cdef size_t spanlen
        cdef const uint8_t *p = self.sym_span(sid, &spanlen)
        cdef uint64_t l
        cdef int k = get_uvarint(p, p + 10, &l)
        return (<const char *>p)[k:k + <size_t>l].decode("utf-8", "surrogateescape")

    def label_values(self, name, prefix=None):
        """Sorted values of label `name` (sorted in C by their UTF-8 bytes, which is the
        order of the strings; a value that is not valid UTF-8 falls back to Python's sort);
        with `prefix`, only those starting with it (matchers' hook for a regex's literal
        prefix: the others are never decoded)."""
        cdef bytes nb = name.encode("utf-8", "surrogateescape")
        cdef long nid = self._sym_find(nb, len(nb))
        cdef bytes pb = prefix.encode("utf-8", "surrogateescape") if prefix else b""
        cdef const uint8_t *pp = pb
        cdef size_t plen = len(pb)
        cdef name_t *nt
        cdef size_t i, k = 0
        cdef skey_t *refs
        cdef const uint8_t *p
        cdef uint64_t l
        cdef int vk, rc
        cdef list out
        if nid < 0:
            return []
        nt = <name_t *>hm_get(&self._names, <uint64_t>nid)
        if nt == NULL:
            return []
        refs = <skey_t *>malloc((nt.values.n + 1) * sizeof(skey_t))
        if refs == NULL:
            raise MemoryError()
        try:
            with nogil:
                for i in range(nt.values.mask + 1):
                    if nt.values.e[i].v != NULL:
                        p = self._arena + self._soff[<uint32_t>nt.values.e[i].k]
                        vk = get_uvarint(p, p + 10, &l)
                        if plen and (l < plen or memcmp(p + vk, pp, plen) != 0):
                            continue
                        refs[k].off = <uint32_t>(p + vk - self._arena)
                        refs[k].n = <uint32_t>l
                        refs[k].key = skey_at(p + vk, <size_t>l, 0)
                        k += 1
                rc = sort_strings(self._arena, refs, k)
            if rc != 0:
                raise MemoryError()
            out = [None] * k
            try:
                for i in range(k):
                    out[i] = PyUnicode_DecodeUTF8(<const char *>self._arena + refs[i].off, refs[i].n, NULL)
            except UnicodeDecodeError:
                out = sorted(PyUnicode_DecodeUTF8(<const char *>self._arena + refs[i].off, refs[i].n,
                                                  "surrogateescape") for i in range(k))
            return out
        finally:
            free(refs)

    def postings_for_values(self, name, values):
        """Sorted refs of the series whose label `name` has any of `values` (matchers' hook
        for regex and set matchers: one call instead of one list per value)."""
        cdef bytes nb = name.encode("utf-8", "surrogateescape")
        cdef long nid = self._sym_find(nb, len(nb))
        cdef long vid, slot
        cdef name_t *nt
        cdef void *v
        cdef size_t n = 0, total = 0
        cdef bytes vb
        cdef carray out
        if nid < 0:
            return clone(_U64_TEMPLATE, 0, False)
        nt = <name_t *>hm_get(&self._names, <uint64_t>nid)
        if nt == NULL:
            return clone(_U64_TEMPLATE, 0, False)
        entries = []
        found = []
        for value in values:
            vb = value.encode("utf-8", "surrogateescape")
            vid = self._sym_find(vb, len(vb))
            if vid < 0:
                continue
            slot = hm_find(&nt.values, <uint64_t>vid)
            if slot < 0:
                continue
            found.append(slot)
            v = nt.values.e[slot].v
            total += 1 if is_tagged(v) else (<plist_t *>v).n
        if len(found) <= 64:
            # few lists: merging them beats sorting their concatenation
            lists = []
            for slot in found:
                v = nt.values.e[<long>slot].v
                if is_tagged(v):
                    out = clone(_U64_TEMPLATE, 1, False)
                    out.data.as_ulonglongs[0] = untag(v)
                else:
                    out = clone(_U64_TEMPLATE, (<plist_t *>v).n, False)
                    plist_decode(<plist_t *>v, out.data.as_ulonglongs)
                lists.append(out)
            return _pst.union_many(lists, typecode="Q")
        out = clone(_U64_TEMPLATE, total, False)
        for slot in found:
            v = nt.values.e[<long>slot].v
            if is_tagged(v):
                out.data.as_ulonglongs[n] = untag(v)
                n += 1
            else:
                n += plist_decode(<plist_t *>v, out.data.as_ulonglongs + n)
        # each series has one value per name, so the lists are disjoint: sorting is the union
        # (a value listed twice would repeat its refs: drop repeats)
        qsort(out.data.as_voidptr, n, sizeof(uint64_t), cmp_u64)
        total = 0
        for i in range(n):
            if total == 0 or out.data.as_ulonglongs[total - 1] != out.data.as_ulonglongs[i]:
                out.data.as_ulonglongs[total] = out.data.as_ulonglongs[i]
                total += 1
        resize(out, total)
        return out

    def label_names(self):
        """Sorted label names that some series has."""
        cdef size_t i
        out = []
        for i in range(self._names.mask + 1):
            if self._names.e[i].v != NULL:
                out.append(self._sym_str(<uint32_t>self._names.e[i].k))
        out.sort()
        return out

    def memory(self):
        """Bytes held by each part (malloc'd sizes, without allocator overhead)."""
        cdef size_t i, j, tables = 0, lists = 0, nlists = 0, singles = 0
        cdef name_t *nt
        cdef void *v
        tables = (self._names.mask + 1) * sizeof(self._names.e[0])
        for i in range(self._names.mask + 1):
            nt = <name_t *>self._names.e[i].v
            if nt == NULL:
                continue
            tables += sizeof(name_t) + (nt.values.mask + 1) * sizeof(self._names.e[0])
            for j in range(nt.values.mask + 1):
                v = nt.values.e[j].v
                if v == NULL:
                    continue
                if is_tagged(v):
                    singles += 1
                else:
                    nlists += 1
                    lists += sizeof(plist_t) + (<plist_t *>v).cap
        return {"symbols": self._live_syms, "symbol_arena": self._acap,
                "symbol_tables": (self._stab_mask + 1) * 4 + self._capsym * 12 + self._capfree * 4,
                "postings_tables": tables, "postings_lists": lists, "postings_lists_n": nlists,
                "postings_singletons": singles, "all_refs": self._capall * 8}
