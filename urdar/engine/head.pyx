# cython: language_level=3
"""The head block of one tenant's TSDB: series, postings, open chunks, WAL logging, replay.

Flow: append_batch takes a whole remote-write request as columns (label keys, per-series
sample ranges, timestamp and value arrays), resolves series with the GIL released, creates
the missing ones (labels interned and postings updated in C, headindex.pyx), decides every
sample's outcome in C without touching the series, writes one series record and one samples record of the
accepted ones to the WAL, and only then appends them to memory (Prometheus' commit order):
a failed WAL write leaves the head as it was, so a retry is stored and logged, and whatever
the caller acknowledges survives kill -9. Full chunks go to m-mapped chunks_head/ files.

Locking (as Prometheus' head: series stripes, the WAL written in its own short section), so
appends of one tenant run in parallel across requests, without the GIL:
- lookups of a batch's series run first under `_maps` shared (hash tables and the label
  index, _ix: the index takes no lock of its own, and interning moves its symbol arena and
  tables, so every reader of it holds `_maps` shared or `_commit`, and every creation or
  removal holds both `_commit` and `_maps` exclusive), and so do the lookups of the missing
  series' label strings (HeadIndex.find_syms: the ids found stay valid while no series is
  removed, _forgets, and no symbol freed, HeadIndex.sym_frees);
- `_commit` (a profiling.contention.Lock) then covers creating the missing series (under
  `_maps` exclusive, without the GIL: counting the found symbols' uses, interning the new
  strings, the structs, maps and postings), deciding every outcome against each series' reserved tip (b_last_*,
  which includes samples of earlier batches not yet in memory), and the one WAL write. The
  batch gets a generation number; the WAL order is the reservation order;
- memory is written after `_commit` is released, under `_applying` shared, series by series
  under the series' stripe lock (`_stripes[ref & STRIPE_MASK]`). A series reserved by an
  earlier batch waits until that batch's samples are in memory (series_t.a_gen), so each
  series reaches memory in WAL order: outcomes and replay agree;
- readers hold `_gc` shared (no series is freed under them), resolve postings under `_maps`
  shared, and copy samples under the stripe locks; they never wait for the WAL;
- freeing series (forgetting a refused batch's new series, truncation) takes `_gc` and `_maps`
  exclusive; truncation, block copies, seal and close also drain `_applying` under `_commit`.
Order: _commit > _applying > _gc > _hist_lock > _maps > stripe > _hc_mu. The rwlocks and stripe
locks are taken with the GIL released (holders may need the GIL); `_hc_mu` holders never need
it."""
cimport cython
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t, INT64_MIN, INT64_MAX, UINT32_MAX
from libc.stdlib cimport malloc, calloc, realloc, free, qsort
from libc.string cimport memcpy, memcmp, memset
from libc.math cimport floor
from cpython.array cimport array as carray, clone, resize

from array import array
import gc
import logging
import os

from urdar.engine.encoding cimport (wbuf_t, wbuf_init, wbuf_free, f64_bits, bits_f64)
from urdar.engine.hashmap cimport hm_t, hm_init, hm_free, hm_get, hm_put, hm_del, hm_slot
from urdar.engine.labels cimport key_hash
from urdar.engine.shardhash cimport shard_hash
from urdar.engine.xorchunk cimport (xor_app_t, xor_app_clear, xor_app_need, xor_app_append_fitted,
                                    xor_app_count, xor_app_len, xor_app_data,
                                    xor_decode_range, xor_num_samples)
from urdar.engine.headchunks cimport HeadChunkFiles, HC_MAX_ENTRY_OVERHEAD, hc_index_t
from urdar.engine.records cimport (rec_series_begin, rec_samples, rec_series_decode,
                                   rec_samples_decode, REC_SERIES, REC_SAMPLES, REC_EXEMPLARS,
                                   REC_METADATA)
from urdar.engine.encoding cimport wbuf_put_be64, wbuf_reserve, get_uvarint, get_varint
from urdar.engine.headindex cimport HeadIndex, IX_EMALFORMED, IX_ENOMEM
from urdar.engine.wal cimport WAL, WALReader

from urdar.engine import labels as _labels
from urdar.engine import histrecords as _histrecords
from urdar.engine.histchunk import (
    HistogramSeries, decode_histogram_chunk, encode_histogram_samples, merge_histogram_parts)
from urdar.engine.histogram import Histogram as _Histogram, FloatHistogram as _FloatHistogram
from urdar.engine import records as _records
from urdar.engine import wal as _wal
from urdar.engine import matchers as _matchers
from urdar.engine import sharding as _sharding
from urdar.engine.errors import CorruptionError
from urdar.profiling.contention import Lock as _ContentionLock

cdef carray _I64_TEMPLATE = array("q")
cdef carray _F64_TEMPLATE = array("d")

log = logging.getLogger("urdar.engine.head")

# Chunk cutting, as Prometheus' head does (see FORMAT.md): a chunk never crosses a
# chunk-range boundary, is re-planned at a quarter of its target, and stays under 1 KiB.
DEF_SAMPLES_PER_CHUNK = 120
cdef int64_t MAX_XOR_BYTES_BEFORE_APPEND = 1024 - 19
cdef uint8_t ENC_XOR = 1
# series_t.last_vbits after a histogram sample: a float at the same timestamp is a duplicate
# with a different value (a NaN payload no float path produces)
cdef uint64_t HIST_VBITS = 0x7ff4a57d15700001
# Most bytes one sample can add to an XOR chunk (xorchunk.pyx's append reserve); with the
# entry overhead per possible cut, it bounds what a batch may write to chunks_head/.
cdef size_t MAX_SAMPLE_BYTES = 24

cdef extern from "<pthread.h>" nogil:
    int pthread_mutex_init(pthread_mutex_t *m, void *attr)
    int pthread_mutex_destroy(pthread_mutex_t *m)
    int pthread_mutex_lock(pthread_mutex_t *m)
    int pthread_mutex_unlock(pthread_mutex_t *m)
    int pthread_rwlock_init(pthread_rwlock_t *l, void *attr)
    int pthread_rwlock_destroy(pthread_rwlock_t *l)
    int pthread_rwlock_rdlock(pthread_rwlock_t *l)
    int pthread_rwlock_wrlock(pthread_rwlock_t *l)
    int pthread_rwlock_unlock(pthread_rwlock_t *l)

cdef extern from "<sched.h>" nogil:
    int sched_yield()

# Series structs and open chunks live in size-class slabs (slab.h: no per-block header, and
# the slots growing chunks leave behind are reused instead of staying holes in the heap)
cdef extern from "slab.h" nogil:
    size_t urdar_slab_size(size_t n)
    void *urdar_slab_alloc(size_t n)
    void urdar_slab_free(void *p, size_t n)
    void *urdar_slab_realloc(void *p, size_t old, size_t n)
    void urdar_slab_usage(size_t *mapped, size_t *used)

cdef extern from *:
    """
    static inline uint64_t urdar_load_acquire(uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    static inline void urdar_store_release(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
    """
    uint64_t urdar_load_acquire(uint64_t *p) noexcept nogil
    void urdar_store_release(uint64_t *p, uint64_t v) noexcept nogil

cdef extern from *:
    """
    #define urdar_prefetch(p) __builtin_prefetch((const void *)(p))
    """
    void urdar_prefetch(const void *p) noexcept nogil

# Keys a batch's lookup resolves per step, each stage prefetching what the next one reads
cdef enum:
    LOOKUP_WINDOW = 32
# New series whose label strings a batch looks up per step (~16 strings each)
cdef enum:
    FIND_WINDOW = 8

# Series stripes: a power of two (Prometheus' head has 16384 for its series maps; here they only
# guard series state, and appends take one per series for a few instructions).
cdef enum:
    N_STRIPES = 1024
cdef uint64_t STRIPE_MASK = N_STRIPES - 1
# Bound of an open chunk's bytes (cut before 1 KiB), for series whose chunk another batch in
# flight is still writing
cdef size_t MAX_OPEN_CHUNK_BYTES = 1100

cdef inline urdar_stripe_t *stripe_of(urdar_stripe_t *stripes, series_t *s) noexcept nogil:
    # by ref: series_t keeps no key hash (headindex), and consecutive refs spread evenly
    return &stripes[s.ref & STRIPE_MASK]

cdef inline void wait_applied(series_t *s, uint64_t gen) noexcept nogil:
    # the batch that reserved s before this one is between its WAL write and memory: it never
    # waits for a later batch, so this ends
    while urdar_load_acquire(&s.a_gen) != gen:
        sched_yield()

cdef inline bint pending(series_t *s) noexcept nogil:
    """Whether samples reserved for s (logged or being logged) have not all reached memory."""
    return urdar_load_acquire(&s.a_gen) != s.b_gen

cdef int grow_samples(int64_t **ts, double **vs, size_t cap) noexcept nogil:
    """Reallocate a pair of parallel sample arrays to `cap` entries; -1 when out of memory
    (each pointer stays valid, holding at least its old entries)."""
    cdef int64_t *nts = <int64_t *>realloc(ts[0], cap * sizeof(int64_t))
    cdef double *nvs
    if nts == NULL:
        return -1
    ts[0] = nts
    nvs = <double *>realloc(vs[0], cap * sizeof(double))
    if nvs == NULL:
        return -1
    vs[0] = nvs
    return 0


cdef int sbuf_reserve(sbuf_t *b, Py_ssize_t more) noexcept nogil:
    cdef Py_ssize_t cap
    if b.n + more <= b.cap:
        return 0
    cap = b.cap * 2 if b.cap else 1024
    while cap < b.n + more:
        cap *= 2
    if grow_samples(&b.ts, &b.vs, <size_t>cap) != 0:
        return -1
    b.cap = cap
    return 0

cdef extern from *:
    """
    /* Go's integer division truncates toward zero like C's, so this matches
       Prometheus' rangeForTimestamp bit for bit, negative times included. */
    static inline int64_t urdar_range_for(int64_t t, int64_t width) {
        return (t / width) * width + width;
    }
    """
    int64_t urdar_range_for(int64_t t, int64_t width) noexcept nogil


cdef inline int64_t chunk_end_time(int64_t start, int64_t cur, int64_t max_t) noexcept nogil:
    # Spread what is left of the chunk range evenly over chunks the size this one is
    # heading for (Prometheus' computeChunkEndTime with ratioToFull = 4).
    cdef double n = <double>(max_t - start) / (<double>(cur - start + 1) * 4.0)
    if n <= 1.0:
        return max_t
    return <int64_t>(<double>start + <double>(max_t - start) / floor(n))


cdef series_t _S0
# bytes of series_t before its compact key: a series is allocated as CK_OFFSET + cklen
cdef size_t CK_OFFSET = <size_t>(<char *>&_S0.ck[0] - <char *>&_S0)
# series_t.cklen is 16 bits: ~6,000 labels at least (two symbol-id varints per label)
cdef long CK_MAX = 65535
# an empty open chunk's slot: the 2-byte header and a first sample (varint time + 8 bytes)
cdef size_t OPEN_CHUNK_MIN = 16
# series_t.b_gen of a series _forget_new is dropping (no batch generation reaches it)
cdef uint64_t FORGOTTEN = 0xFFFFFFFFFFFFFFFFULL


cdef int chunk_grow(xor_app_t *a, size_t need) noexcept nogil:
    """Move the open chunk to the slab slot holding `need` bytes (the next 16-byte class:
    chunks end at ~120 samples of a few bytes each, so the slot is never more than 15 bytes
    larger than the data). 0, or -1 when out of memory (the chunk unchanged)."""
    cdef uint8_t *d = <uint8_t *>urdar_slab_realloc(a.buf.data, a.buf.cap, need)
    if d == NULL:
        return -1
    a.buf.data = d
    a.buf.cap = <uint32_t>urdar_slab_size(need)
    return 0


cdef void chunk_clear(xor_app_t *a) noexcept nogil:
    """Empty the open chunk and give back its slot beyond what a first sample needs."""
    cdef uint8_t *d
    xor_app_clear(a)
    if a.buf.cap > OPEN_CHUNK_MIN:
        d = <uint8_t *>urdar_slab_realloc(a.buf.data, a.buf.cap, OPEN_CHUNK_MIN)
        if d != NULL:
            a.buf.data = d
            a.buf.cap = <uint32_t>urdar_slab_size(OPEN_CHUNK_MIN)


cdef inline size_t mm_cap(size_t n) noexcept nogil:
    """Chunk refs series_t.mm has room for when it holds n (0, then powers of two from 2): the
    capacity is not stored. Shrinking n_mm (truncation) leaves more room than this, never less."""
    cdef size_t c = 2
    if n == 0:
        return 0
    while c < n:
        c <<= 1
    return c


cdef inline int64_t open_mint(series_t *s) noexcept nogil:
    """Time of the open chunk's first sample (the chunk must hold one): the varint after the
    2-byte header, rather than 8 more bytes in every series."""
    cdef int64_t t = 0
    get_varint(s.app.buf.data + 2, s.app.buf.data + s.app.buf.len, &t)
    return t


cdef series_t *series_alloc(size_t cklen) noexcept nogil:
    """A zeroed series struct with room for a cklen-byte key and an empty open chunk, or NULL."""
    cdef series_t *s = <series_t *>urdar_slab_alloc(CK_OFFSET + cklen)
    if s == NULL:
        return NULL
    memset(s, 0, CK_OFFSET + cklen)
    s.cklen = <uint16_t>cklen
    s.app.buf.data = <uint8_t *>urdar_slab_alloc(OPEN_CHUNK_MIN)
    if s.app.buf.data == NULL:
        urdar_slab_free(s, CK_OFFSET + cklen)
        return NULL
    s.app.buf.cap = <uint32_t>urdar_slab_size(OPEN_CHUNK_MIN)
    xor_app_clear(&s.app)
    return s


cdef void series_free(series_t *s) noexcept nogil:
    if s == NULL:
        return
    free(s.mm)
    if s.ooo != NULL:
        free(s.ooo.ts)
        free(s.ooo.vs)
        free(s.ooo)
    urdar_slab_free(s.app.buf.data, s.app.buf.cap)
    urdar_slab_free(s, CK_OFFSET + s.cklen)


cdef inline uint32_t ooo_lower_bound(ooo_t *o, int64_t t) noexcept nogil:
    """Index of the first buffered timestamp >= t (o.n when there is none)."""
    cdef uint32_t lo = 0, hi = o.n, mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if o.ts[mid] < t:
            lo = mid + 1
        else:
            hi = mid
    return lo


cdef int ooo_find(ooo_t *o, int64_t t, uint64_t vbits) noexcept nogil:
    """0 when t is not in the out-of-order buffer, 1 when it is with these value bits, 2 otherwise."""
    cdef uint32_t lo
    if o == NULL:
        return 0
    lo = ooo_lower_bound(o, t)
    if lo < o.n and o.ts[lo] == t:
        return 1 if f64_bits(o.vs[lo]) == vbits else 2
    return 0


cdef int ooo_insert(series_t *s, int64_t t, double v) noexcept nogil:
    """Insert into the sorted out-of-order buffer. 0 stored, 1 identical duplicate, 2 conflict, -1 oom."""
    cdef ooo_t *o = s.ooo
    cdef uint32_t lo, cap
    if o == NULL:
        o = <ooo_t *>calloc(1, sizeof(ooo_t))
        if o == NULL:
            return -1
        s.ooo = o
    lo = ooo_lower_bound(o, t)
    if lo < o.n and o.ts[lo] == t:
        return 1 if f64_bits(o.vs[lo]) == f64_bits(v) else 2
    if o.n == o.cap:
        cap = o.cap * 2 if o.cap else 8
        if grow_samples(&o.ts, &o.vs, cap) != 0:
            return -1
        o.cap = cap
    if lo < o.n:
        memmove_i64(o.ts + lo + 1, o.ts + lo, o.n - lo)
        memmove_f64(o.vs + lo + 1, o.vs + lo, o.n - lo)
    o.ts[lo] = t
    o.vs[lo] = v
    o.n += 1
    return 0


cdef extern from "malloc.h" nogil:
    size_t malloc_usable_size(void *p)

cdef extern from "string.h" nogil:
    void *memmove(void *dst, const void *src, size_t n)

cdef inline void memmove_i64(int64_t *dst, int64_t *src, size_t n) noexcept nogil:
    memmove(dst, src, n * sizeof(int64_t))

cdef inline void memmove_f64(double *dst, double *src, size_t n) noexcept nogil:
    memmove(dst, src, n * sizeof(double))


cdef Py_ssize_t merge_ooo(int64_t *ts, double *vs, Py_ssize_t n, Py_ssize_t cap,
                          const int64_t *ots, const double *ovs, Py_ssize_t on) noexcept nogil:
    """Merge sorted out-of-order samples into sorted ts/vs (in place, from the back).

    In-order samples win over out-of-order ones at the same timestamp. Returns the new count."""
    cdef Py_ssize_t i = n - 1, j = on - 1, k, dups = 0, w
    # count timestamps present in both, so we know the merged length
    cdef Py_ssize_t a = 0, b = 0
    while a < n and b < on:
        if ts[a] < ots[b]:
            a += 1
        elif ts[a] > ots[b]:
            b += 1
        else:
            dups += 1
            a += 1
            b += 1
    k = n + on - dups
    if k > cap:
        return -1
    w = k - 1
    while j >= 0:
        if i >= 0 and ts[i] > ots[j]:
            ts[w] = ts[i]; vs[w] = vs[i]; i -= 1
        elif i >= 0 and ts[i] == ots[j]:
            ts[w] = ts[i]; vs[w] = vs[i]; i -= 1; j -= 1
        else:
            ts[w] = ots[j]; vs[w] = ovs[j]; j -= 1
        w -= 1
    return k


# ---- start-up replay state (used by Head._load_mmapped and Head._replay) -------------------

cdef int _cmp_index(const void *a, const void *b) noexcept nogil:
    cdef const hc_index_t *x = <const hc_index_t *>a
    cdef const hc_index_t *y = <const hc_index_t *>b
    if x.series_ref != y.series_ref:
        return -1 if x.series_ref < y.series_ref else 1
    if x.ref != y.ref:
        return -1 if x.ref < y.ref else 1
    return 0


@cython.final
cdef class _MmapIndex:
    """The chunks found in chunks_head/ at start-up, sorted by (series ref, chunk ref): a
    series' chunks are a run, in file (= time) order. Built in C, read as series are created."""
    cdef hc_index_t *e
    cdef Py_ssize_t n
    cdef Py_ssize_t cur          # where the next series' run is expected (series records come in ref order)
    cdef Py_ssize_t consumed     # chunks handed to series

    def __dealloc__(self):
        free(self.e)

    cdef Py_ssize_t find(self, uint64_t sref, Py_ssize_t *end) noexcept nogil:
        """Start of the run of sref's chunks (its end in *end), or -1 when it has none."""
        cdef Py_ssize_t lo = self.cur, hi, mid
        if lo >= self.n or self.e[lo].series_ref != sref:
            lo, hi = 0, self.n
            while lo < hi:
                mid = (lo + hi) // 2
                if self.e[mid].series_ref < sref:
                    lo = mid + 1
                else:
                    hi = mid
            if lo >= self.n or self.e[lo].series_ref != sref:
                return -1
        hi = lo
        while hi < self.n and self.e[hi].series_ref == sref:
            hi += 1
        end[0] = hi
        self.cur = hi
        return lo


# Per series ref, during replay: the series and what replay has seen of it, in one dense
# array indexed by ref (refs are small and mostly consecutive), so a sample costs one memory
# access; samples the m-mapped chunks already hold never touch the series.
ctypedef struct rp_slot_t:
    series_t *s
    int64_t lim          # maxt of the newest m-mapped float chunk (INT64_MIN: none)
    int64_t lt           # newest in-order sample replayed, when newer than s.last_t
    uint64_t lv          # its value bits

ctypedef struct rp_t:
    rp_slot_t *slots
    size_t n             # slots cover refs below n


cdef int rp_cover(rp_t *rp, uint64_t ref) noexcept nogil:
    """Grow rp to cover ref (new slots empty); -1 when out of memory."""
    cdef size_t n = rp.n if rp.n else 1024
    cdef rp_slot_t *ns
    while n <= ref:
        n *= 2
    if n == rp.n:
        return 0
    ns = <rp_slot_t *>realloc(rp.slots, n * sizeof(rp_slot_t))
    if ns == NULL:
        return -1
    memset(ns + rp.n, 0, (n - rp.n) * sizeof(rp_slot_t))
    rp.slots = ns
    rp.n = n
    return 0


cdef inline void rp_push(rp_t *rp, uint64_t ref) noexcept nogil:
    """Bring ref's series up to date with the slot (before anything else reads or moves it)."""
    cdef rp_slot_t *e
    if ref < rp.n:
        e = &rp.slots[ref]
        if e.s != NULL and e.lt > e.s.last_t:
            e.s.last_t = e.lt
            e.s.last_vbits = e.lv


cdef inline void rp_pull(rp_t *rp, uint64_t ref) noexcept nogil:
    """The slot follows its series after something else appended to it."""
    cdef rp_slot_t *e
    if ref < rp.n:
        e = &rp.slots[ref]
        if e.s != NULL:
            e.lt = e.s.last_t
            e.lv = e.s.last_vbits


cdef int _attach_index(Head h, series_t *s, _MmapIndex idx, Py_ssize_t a, Py_ssize_t b) except -1:
    """Give s its m-mapped chunks idx.e[a:b] (file order = time order); as _attach_mmapped,
    which takes over when a histogram chunk is among them. Chunks out of sequence drop all of
    them: the WAL then rebuilds that series."""
    cdef Py_ssize_t i, j, k = 0
    cdef int64_t fprev = INT64_MIN
    cdef int64_t min_valid = h.min_valid_time
    cdef hc_index_t *c
    cdef mchunk_t *mm
    idx.consumed += b - a
    for i in range(a, b):
        if idx.e[i].encoding != ENC_XOR:
            h._attach_mmapped(s, [(idx.e[j].ref, idx.e[j].mint, idx.e[j].maxt, idx.e[j].encoding)
                                  for j in range(a, b)])
            return 0
    for i in range(a, b):
        c = &idx.e[i]
        if c.maxt < min_valid:
            continue
        if c.mint > c.maxt or c.mint <= fprev:
            h.replay_stats["mmapped_chunks_dropped"] += b - a
            return 0
        fprev = c.maxt
        k += 1
    if k == 0:
        return 0
    mm = <mchunk_t *>realloc(s.mm, mm_cap(k) * sizeof(mchunk_t))
    if mm == NULL:
        raise MemoryError()
    s.mm = mm
    k = 0
    for i in range(a, b):
        c = &idx.e[i]
        if c.maxt < min_valid:
            continue
        mm[k].ref = c.ref
        mm[k].mint = c.mint
        mm[k].maxt = c.maxt
        k += 1
    s.n_mm = <uint32_t>k
    return 0


class ExemplarStorage(object):
    """Bounded circular exemplar buffer of one tenant (Prometheus' CircularExemplarStorage).

    Per series, exemplars must arrive in time order; older or duplicate ones are dropped.
    The buffer grows as exemplars arrive, up to max_exemplars (allocated up front, 100k
    exemplars held 3.2 MB per head whether or not any came), and then wraps."""

    def __init__(self, max_exemplars):
        self.max_exemplars = int(max_exemplars)
        self._refs = array("Q")
        self._ts = array("q")
        self._vals = array("d")
        self._keys = []
        self._next = 0
        self._full = False
        self._last = {}           # ref -> newest exemplar t

    def add(self, ref, t, v, key):
        """Store one exemplar; return False when it is out of order or a duplicate."""
        if self.max_exemplars == 0:
            return False
        last = self._last.get(ref)
        if last is not None and t <= last:
            return False
        i = self._next
        if i == len(self._keys):      # still growing (never wrapped)
            self._refs.append(ref)
            self._ts.append(t)
            self._vals.append(v)
            self._keys.append(key)
        else:
            self._refs[i] = ref
            self._ts[i] = t
            self._vals[i] = v
            self._keys[i] = key
        self._last[ref] = t
        self._next = (i + 1) % self.max_exemplars
        if self._next == 0:
            self._full = True
        return True

    def __len__(self):
        return self.max_exemplars if self._full else self._next

    def select(self, refs, mint, maxt):
        """ref -> list of (t, v, label key) with mint <= t <= maxt, oldest first."""
        wanted = set(refs)
        out = {}
        n = len(self)
        start = self._next if self._full else 0
        for k in range(n):
            i = (start + k) % self.max_exemplars
            ref = self._refs[i]
            if ref in wanted and mint <= self._ts[i] <= maxt:
                out.setdefault(ref, []).append((self._ts[i], self._vals[i], self._keys[i]))
        return out


TRUNCATED_FILE = "truncated"       # in chunks_head/: the time of the head's last truncation


def _read_truncated(cdir):
    try:
        with open(os.path.join(cdir, TRUNCATED_FILE), "rb") as f:
            return int(f.read().strip() or INT64_MIN)
    except (FileNotFoundError, ValueError):
        return INT64_MIN


def _write_truncated(cdir, int64_t mint):
    """Record the truncation time before any chunk file goes (crash-safe by rename)."""
    path = os.path.join(cdir, TRUNCATED_FILE)
    if _read_truncated(cdir) >= mint:
        return
    with open(path + ".tmp", "wb") as f:
        f.write(b"%d\n" % mint)
    os.replace(path + ".tmp", path)


@cython.final
cdef class Head:
    """One tenant's head block.

    `dir` holds wal/ and chunks_head/. `chunk_range` (ms) is the block range: chunks never
    cross its boundaries. `ooo_window` (ms, 0 = off) accepts late samples as Prometheus
    2.39+ does. `min_valid_time` is the max time of the newest block already cut."""

    def __cinit__(self):
        hm_init(&self._by_ref, 1024)
        hm_init(&self._by_hash, 1024)
        self._stripes = <urdar_stripe_t *>calloc(N_STRIPES, sizeof(urdar_stripe_t))
        if self._stripes == NULL:
            raise MemoryError()
        pthread_rwlock_init(&self._maps, NULL)
        pthread_rwlock_init(&self._gc, NULL)
        pthread_rwlock_init(&self._applying, NULL)
        pthread_mutex_init(&self._hc_mu, NULL)

    def __init__(self, dir, int64_t chunk_range=7200000, int64_t ooo_window=0,
                 int samples_per_chunk=DEF_SAMPLES_PER_CHUNK, uint64_t max_series=0,
                 int64_t min_valid_time=INT64_MIN, int max_exemplars=100000,
                 bint wal_enabled=True, size_t wal_segment_bytes=128 * 1024 * 1024,
                 size_t head_chunk_file_bytes=128 * 1024 * 1024):
        if chunk_range <= 0:
            raise ValueError("chunk_range must be positive")
        self.dir = os.fspath(dir)
        self.chunk_range = chunk_range
        self.ooo_window = ooo_window
        self.samples_per_chunk = samples_per_chunk
        self.max_series = max_series
        self.max_series_per_metric = 0
        self.min_valid_time = min_valid_time
        self.mint = INT64_MAX
        self.maxt = INT64_MIN
        self._next_ref = 1
        # Recorded by /debug/pprof/block and /mutex when switched on; uncontended it costs one
        # Python call per acquire, and append_batch takes it once per batch.
        self._commit = _ContentionLock()
        self._hist_lock = _ContentionLock()
        self._ix = HeadIndex()
        self._metadata = {}
        self._exemplars = ExemplarStorage(max_exemplars)
        self._hist = {}
        os.makedirs(self.dir, exist_ok=True)
        # Start-up as Prometheus' head: the closed chunks already in chunks_head/ are re-mapped
        # and indexed by series ref, then the WAL is replayed, appending only what those chunks
        # do not hold. Without a WAL the files mean nothing (no series records): dropped.
        self._hc = HeadChunkFiles(os.path.join(self.dir, "chunks_head"), head_chunk_file_bytes)
        self.replay_stats = {"mmapped_chunks": 0, "mmapped_chunks_dropped": 0,
                             "samples_replayed": 0, "samples_skipped_mmapped": 0,
                             "wal_records": 0, "chunk_files_corrupt": 0}
        self._wal = None
        wal_dir = os.path.join(self.dir, "wal")
        if wal_enabled and os.path.isdir(wal_dir):
            # Replay creates many long-lived objects (exemplars, histogram series) and no
            # cycles: the cyclic collector would re-scan them all on every generation-2 pass.
            # (Postings are C arrays in the label index since headindex.)
            gc_was = gc.isenabled()
            gc.disable()
            try:
                mmapped = self._load_mmapped()
                self._replay(wal_dir, mmapped)
            finally:
                if gc_was:
                    gc.enable()
        else:
            self._hc.reset()
        if wal_enabled:
            self._wal = WAL(wal_dir, wal_segment_bytes)

    def __dealloc__(self):
        cdef size_t i
        if self._by_ref.e != NULL:
            for i in range(self._by_ref.mask + 1):
                if self._by_ref.e[i].v != NULL:
                    series_free(<series_t *>self._by_ref.e[i].v)
        hm_free(&self._by_ref)
        hm_free(&self._by_hash)
        if self._stripes != NULL:
            free(self._stripes)
            pthread_rwlock_destroy(&self._maps)
            pthread_rwlock_destroy(&self._gc)
            pthread_rwlock_destroy(&self._applying)
            pthread_mutex_destroy(&self._hc_mu)

    cdef void _drain(self) noexcept nogil:
        """Wait until every batch past its WAL write has reached memory (_commit held, so no
        new one gets there)."""
        pthread_rwlock_wrlock(&self._applying)
        pthread_rwlock_unlock(&self._applying)

    def close(self):
        """Flush and close the WAL and head chunk files (after the appends in flight)."""
        with self._commit:
            if self._closed:
                return
            self._closed = True
            with nogil:
                self._drain()
                pthread_rwlock_wrlock(&self._gc)     # no reader inside a chunk file
            try:
                if self._wal is not None:
                    self._wal.close()
                    self._wal = None
                self._hc.close()
            finally:
                pthread_rwlock_unlock(&self._gc)

    # ---- series map ------------------------------------------------------------------

    cdef series_t *_lookup(self, const uint8_t *key, size_t n, uint64_t h) noexcept nogil:
        cdef size_t i = hm_slot(&self._by_hash, h)
        cdef series_t *s
        while self._by_hash.e[i].v != NULL:
            if self._by_hash.e[i].k == h:
                s = <series_t *>self._by_hash.e[i].v
                if s.keylen == n and self._ix.key_eq(s.ck, s.cklen, key, n):
                    return s
            i = (i + 1) & self._by_hash.mask
        return NULL

    cdef Py_ssize_t _lookup_batch(self, const uint8_t *kp, const uint64_t *koff, const uint64_t *kh,
                                  const uint8_t *skip, series_t **sp, Py_ssize_t nser) noexcept nogil:
        """sp[i] = the series of key i (NULL when missing, or skipped: skip may be NULL);
        returns how many are missing (_maps shared or _commit held). _lookup over a window of
        keys at a time, the memory each stage reads prefetched by the stage before: table
        slots, then the candidates' compact keys, then the symbols' offsets, then their arena
        bytes (a request's per-target label values are mostly cold in the cache)."""
        cdef Py_ssize_t base = 0, end, i, missing = 0
        cdef hm_t *m = &self._by_hash
        cdef series_t *cand[LOOKUP_WINDOW]
        cdef series_t *s
        cdef size_t j
        cdef const uint8_t *c
        cdef const uint8_t *cend
        cdef uint64_t sid
        cdef int stage
        while base < nser:
            end = base + LOOKUP_WINDOW if nser - base > LOOKUP_WINDOW else nser
            for i in range(base, end):
                urdar_prefetch(&m.e[hm_slot(m, kh[i])])
            for i in range(base, end):
                s = NULL
                if skip == NULL or not skip[i]:
                    j = hm_slot(m, kh[i])
                    while m.e[j].v != NULL:
                        if m.e[j].k == kh[i]:
                            s = <series_t *>m.e[j].v
                            urdar_prefetch(&s.keylen)
                            break
                        j = (j + 1) & m.mask
                cand[i - base] = s
            for stage in range(2):
                for i in range(base, end):
                    s = cand[i - base]
                    if s == NULL:
                        continue
                    c = s.ck
                    cend = c + s.cklen
                    c += get_uvarint(c, cend, &sid)
                    while c < cend:
                        c += get_uvarint(c, cend, &sid)
                        if stage == 0:
                            urdar_prefetch(&self._ix._soff[sid])
                        else:
                            urdar_prefetch(self._ix._arena + self._ix._soff[sid])
            for i in range(base, end):
                if skip != NULL and skip[i]:
                    sp[i] = NULL
                    continue
                sp[i] = self._lookup(kp + koff[i], koff[i + 1] - koff[i], kh[i])
                if sp[i] == NULL:
                    missing += 1
            base = end
        return missing

    cdef bint _metric_full(self, const uint8_t *key, size_t n) except -1:
        """Whether the metric of a new series (key) has max_series_per_metric series already."""
        return self._ix.metric_count(key, n) >= self.max_series_per_metric

    cdef series_t *_create(self, const uint8_t *key, size_t n, uint64_t h, uint64_t ref) except NULL:
        """New series in one step: labels interned, struct allocated, maps and postings updated
        (all C). ref 0 = allocate the next one."""
        cdef const uint8_t *ck
        cdef long cklen = self._ix.intern_key(key, n, &ck)
        return self._create_interned(n, h, ref, cklen, ck)

    cdef series_t *_create_interned(self, size_t n, uint64_t h, uint64_t ref, long cklen,
                                    const uint8_t *ck) except NULL:
        """_create after interning: cklen/ck as HeadIndex.intern_key returned them."""
        cdef int err = 0
        cdef series_t *s = self._new_series(n, h, ref, cklen, ck, &err)
        if err == 0:
            err = self._ix.add(s.ck, s.cklen, s.ref)
        if err == IX_EMALFORMED:
            raise ValueError("malformed label key")
        if err != 0:
            raise MemoryError()
        return s

    cdef series_t *_new_series(self, size_t n, uint64_t h, uint64_t ref, long cklen, const uint8_t *ck,
                               int *err) noexcept nogil:
        """The struct of a series whose key is interned (cklen/ck as HeadIndex.intern_key
        returned them), in both maps but not yet in the postings (HeadIndex.add). On failure
        *err = IX_EMALFORMED or IX_ENOMEM, and the result is NULL, or the series when only the
        by-hash table failed (in the by-ref table: the caller forgets it). A compact key over
        CK_MAX bytes (series_t.cklen is 16 bits) is refused as malformed."""
        cdef series_t *s
        if cklen < 0:
            err[0] = <int>cklen
            return NULL
        if cklen > CK_MAX:
            self._ix.release_key(ck, <size_t>cklen)
            err[0] = IX_EMALFORMED
            return NULL
        s = series_alloc(<size_t>cklen)
        if s == NULL:
            self._ix.release_key(ck, <size_t>cklen)
            err[0] = IX_ENOMEM
            return NULL
        memcpy(s.ck, ck, <size_t>cklen)
        s.keylen = <uint32_t>n
        s.last_t = INT64_MIN
        if ref == 0:
            ref = self._next_ref
        s.ref = ref
        if hm_put(&self._by_ref, ref, s) != 0:
            self._ix.release_key(s.ck, s.cklen)
            series_free(s)
            err[0] = IX_ENOMEM
            return NULL
        if ref >= self._next_ref:
            self._next_ref = ref + 1
        if hm_put(&self._by_hash, h, s) != 0:
            err[0] = IX_ENOMEM
        return s

    cdef int _create_found(self, const uint8_t *kp, const uint64_t *koff, const uint64_t *kh,
                           const uint8_t *skip, series_t **sp, Py_ssize_t nser, Py_ssize_t *new_idx,
                           Py_ssize_t *n_new, const uint64_t *psids, const Py_ssize_t *psoff) noexcept nogil:
        """_create_missing's work without the GIL, for a batch whose missing series'
        symbols _find_missing found (still valid) and with no per-metric limit. Windows of
        missing series: their table slots and symbol counts prefetched, then each created
        (looked up again, max_series, interned, maps), their postings slots prefetched, then
        their postings added. Returns 0 or an IX_ code (the series created so far are in
        new_idx, for the caller to forget)."""
        cdef Py_ssize_t i = 0, j, k = -1, c, nw, nc
        cdef Py_ssize_t pos[LOOKUP_WINDOW]
        cdef Py_ssize_t kk[LOOKUP_WINDOW]
        cdef series_t *win[LOOKUP_WINDOW]
        cdef series_t *s
        cdef const uint8_t *ck
        cdef const uint64_t *ids
        cdef long cklen, m
        cdef int err = 0
        cdef size_t n
        while i < nser:
            nw = 0
            while i < nser and nw < LOOKUP_WINDOW:
                if sp[i] == NULL and (skip == NULL or not skip[i]):
                    k += 1
                    pos[nw] = i
                    kk[nw] = k
                    urdar_prefetch(&self._by_hash.e[hm_slot(&self._by_hash, kh[i])])
                    urdar_prefetch(&self._by_ref.e[hm_slot(&self._by_ref, self._next_ref + <uint64_t>nw)])
                    if psoff[k] >= 0:
                        ids = psids + psoff[k]
                        m = self._ix.key_strings(kp + koff[i], koff[i + 1] - koff[i])
                        for j in range(m):
                            if ids[j] >> 32:    # new: looked up again, then where it goes
                                self._ix.prefetch_sym(<uint32_t>ids[j])
                            else:
                                urdar_prefetch(&self._ix._suse[ids[j]])
                    nw += 1
                i += 1
            nc = 0
            for c in range(nw):
                j = pos[c]
                n = koff[j + 1] - koff[j]
                s = self._lookup(kp + koff[j], n, kh[j])
                if s == NULL:
                    if self.max_series and self._by_ref.n >= self.max_series:
                        continue
                    if psoff[kk[c]] >= 0:
                        cklen = self._ix.intern_found(kp + koff[j], n, psids + psoff[kk[c]], &ck)
                    else:
                        cklen = self._ix.intern_key(kp + koff[j], n, &ck)
                    s = self._new_series(n, kh[j], 0, cklen, ck, &err)
                    if s != NULL:
                        new_idx[n_new[0]] = j
                        n_new[0] += 1
                    if err != 0:
                        return err
                    self._ix.prefetch_add(s.ck, s.cklen)
                    win[nc] = s
                    nc += 1
                sp[j] = s
            for c in range(nc):
                err = self._ix.add(win[c].ck, win[c].cklen, win[c].ref)
                if err != 0:
                    return err
        return 0

    cdef bytes _key(self, series_t *s):
        """The canonical label key of s."""
        return self._ix.key_bytes(s.ck, s.cklen, s.keylen)

    cdef uint64_t _hash_of(self, series_t *s) noexcept nogil:
        """key_hash of s's canonical key (the by-hash table's key), rebuilt from ck."""
        cdef uint8_t buf[512]
        cdef uint8_t *p = buf
        cdef uint64_t h
        if s.keylen > sizeof(buf):
            p = <uint8_t *>malloc(s.keylen)
            if p == NULL:
                return 0
        self._ix.key_write(s.ck, s.cklen, p)
        h = key_hash(p, s.keylen)
        if p != buf:
            free(p)
        return h

    cdef void _unhash(self, series_t *s) noexcept nogil:
        """Take s out of the by-hash table. Its key is normally under key_hash of its key; a
        caller that passed other hashes to append_batch costs a scan, never a stale entry."""
        cdef size_t i
        if hm_del(&self._by_hash, self._hash_of(s), s):
            return
        for i in range(self._by_hash.mask + 1):
            if self._by_hash.e[i].v == <void *>s:
                hm_del(&self._by_hash, self._by_hash.e[i].k, s)
                return

    cdef _remove_series(self, list refs):
        """Forget the series `refs` (lock held): maps, postings, symbols, exemplar state."""
        cdef series_t *s
        cdef uint64_t ref
        cdef carray done = clone(array("Q"), 0, False)
        self._ix.remove_begin()
        for r in refs:
            ref = r
            s = <series_t *>hm_get(&self._by_ref, ref)
            if s == NULL:
                continue
            self._unhash(s)
            hm_del(&self._by_ref, ref, s)
            if self._ix.remove_series(s.ck, s.cklen, ref) != 0:
                raise MemoryError()
            series_free(s)
            done.append(ref)
            self._exemplars._last.pop(ref, None)
        if len(done):
            done = array("Q", sorted(done))
            self._ix.remove_end(done.data.as_ulonglongs, len(done))

    # ---- appending -------------------------------------------------------------------

    cdef int _cut(self, series_t *s) noexcept nogil:
        """Move the open chunk to the chunks_head files; 0 or -errno."""
        cdef uint64_t ref
        cdef int rc
        cdef mchunk_t *mm
        pthread_mutex_lock(&self._hc_mu)
        rc = self._hc.hc_write(s.ref, open_mint(s), s.last_t, ENC_XOR,
                               xor_app_data(&s.app), xor_app_len(&s.app), &ref)
        pthread_mutex_unlock(&self._hc_mu)
        if rc != 0:
            return rc
        if s.n_mm == 0 or (s.n_mm >= 2 and (s.n_mm & (s.n_mm - 1)) == 0):
            # full (mm holds mm_cap(n_mm)): double
            mm = <mchunk_t *>realloc(s.mm, mm_cap(s.n_mm + 1) * sizeof(mchunk_t))
            if mm == NULL:
                return -12
            s.mm = mm
        s.mm[s.n_mm].ref = ref
        s.mm[s.n_mm].mint = open_mint(s)
        s.mm[s.n_mm].maxt = s.last_t
        s.n_mm += 1
        chunk_clear(&s.app)
        return 0

    cdef int _append(self, series_t *s, int64_t t, double v, int64_t min_valid, bint replay) noexcept nogil:
        """Append one sample: an APPEND_* outcome, or a negative errno."""
        cdef uint64_t vbits = f64_bits(v)
        cdef int cnt, rc
        cdef size_t need
        if t < min_valid:
            return self._too_old()
        if s.last_t != INT64_MIN and t <= s.last_t:
            if t == s.last_t:
                return APPEND_DUPLICATE_SAME if vbits == s.last_vbits else APPEND_DUPLICATE
            if not replay and (self.ooo_window <= 0 or self.maxt == INT64_MIN or
                               t < self.maxt - self.ooo_window):
                return APPEND_OUT_OF_ORDER
            rc = ooo_insert(s, t, v)
            if rc < 0:
                return -12
            if rc == 1:
                return APPEND_DUPLICATE_SAME
            if rc == 2:
                return APPEND_DUPLICATE
            self._note_time(t)
            return APPEND_OK
        cnt = xor_app_count(&s.app)
        if cnt == 0:
            s.next_at = urdar_range_for(t, self.chunk_range)
        else:
            if cnt == self.samples_per_chunk // 4:
                s.next_at = chunk_end_time(open_mint(s), s.last_t, s.next_at)
            if (<int64_t>xor_app_len(&s.app) > MAX_XOR_BYTES_BEFORE_APPEND or t >= s.next_at
                    or cnt >= self.samples_per_chunk * 2):
                rc = self._cut(s)
                if rc != 0:
                    return rc
                s.next_at = urdar_range_for(t, self.chunk_range)
        need = s.app.buf.len + xor_app_need(&s.app, t, v)
        if need > s.app.buf.cap and chunk_grow(&s.app, need) != 0:
            return -12
        if xor_app_append_fitted(&s.app, t, v) != 0:
            return -12
        s.last_t = t
        s.last_vbits = vbits
        self._note_time(t)
        return APPEND_OK

    cdef void _note_time(self, int64_t t) noexcept nogil:
        if t < self.mint:
            self.mint = t
        if t > self.maxt:
            self.maxt = t

    cdef int64_t _min_valid(self, int64_t maxt) noexcept nogil:
        """Oldest time an append may carry when the head's newest sample is at maxt
        (Prometheus' appendableMinValidTime; with the out-of-order window on, the window)."""
        cdef int64_t lim = INT64_MIN
        cdef int64_t back = self.ooo_window if self.ooo_window > 0 else self.chunk_range // 2
        # unsigned distance from INT64_MIN, so a very old maxt cannot underflow
        if <uint64_t>maxt - <uint64_t>INT64_MIN > <uint64_t>back:
            lim = maxt - back
        return lim if lim > self.min_valid_time else self.min_valid_time

    cdef int _too_old(self) noexcept nogil:
        # Prometheus: ErrTooOldSample beyond the out-of-order window, else ErrOutOfBounds
        return APPEND_TOO_OLD if self.ooo_window > 0 else APPEND_OUT_OF_BOUNDS

    cdef int _check(self, series_t *s, int64_t t, double v, int64_t min_valid, int64_t maxt) noexcept nogil:
        """The outcome _append(replay=True) will agree with once the samples reserved before
        this one (this batch's and earlier batches') are in memory, decided without changing
        memory: only the reserved tip b_last_* moves. maxt is the head's newest time including
        those samples. An out-of-order sample repeated within one batch, or in two batches
        in flight, passes here and is refused by _append, the same way at replay."""
        cdef uint64_t vbits = f64_bits(v)
        cdef int found
        if t < min_valid:
            return self._too_old()
        if s.b_last_t != INT64_MIN and t <= s.b_last_t:
            if t == s.b_last_t:
                return APPEND_DUPLICATE_SAME if vbits == s.b_last_vbits else APPEND_DUPLICATE
            if self.ooo_window <= 0 or maxt == INT64_MIN or t < maxt - self.ooo_window:
                return APPEND_OUT_OF_ORDER
            urdar_stripe_lock(stripe_of(self._stripes, s))    # an earlier batch may be writing it
            found = ooo_find(s.ooo, t, vbits)
            urdar_stripe_unlock(stripe_of(self._stripes, s))
            if found:
                return APPEND_DUPLICATE_SAME if found == 1 else APPEND_DUPLICATE
            return APPEND_OK
        s.b_last_t = t
        s.b_last_vbits = vbits
        return APPEND_OK

    def append_batch(self, const uint8_t[::1] keys not None, const uint64_t[::1] key_offsets not None,
                     const uint64_t[::1] key_hashes not None, const uint64_t[::1] sample_offsets not None,
                     const int64_t[::1] ts not None, const double[::1] vals not None,
                     uint8_t[::1] outcomes not None, const uint8_t[::1] skip=None):
        """Append a whole batch: series i has key keys[key_offsets[i]:key_offsets[i+1]] and
        samples ts/vals[sample_offsets[i]:sample_offsets[i+1]].

        outcomes[j] receives sample j's code (urdar.engine.outcomes); skip[i] != 0 refuses
        series i (SKIPPED). The WAL holds every accepted sample when this returns. When the WAL
        write fails, or chunks_head/ has no room for the chunks the batch may cut, OSError is
        raised and memory is left as it was (series created for the batch are forgotten
        again). Should a chunk file still fail after that room was reserved, OSError is raised
        with the batch logged but only partly in memory; a retry completes it.
        Safe to call from several threads at once (see the module's Locking notes).
        Returns (accepted samples, new series)."""
        cdef Py_ssize_t nser = key_offsets.shape[0] - 1
        cdef Py_ssize_t nsamp = ts.shape[0]
        cdef Py_ssize_t i, j, n_new = 0, n_ok = 0, n_missing = 0
        cdef Py_ssize_t *new_idx = NULL    # batch positions of the series this batch created
        cdef series_t **sp
        cdef series_t *s
        cdef int rc = 0, out
        cdef int64_t min_valid, maxt, mint
        cdef uint64_t gen = 0, forgets
        cdef bint fresh, hc_held = False, applying = False
        cdef size_t hc_need = 0
        cdef uint64_t *wrefs = NULL
        cdef int64_t *wts = NULL
        cdef double *wvs = NULL
        # per series slot, for the batch's first sight of a series: the reservation it follows
        cdef uint64_t *prev = NULL
        cdef int64_t *saved_t = NULL
        cdef uint64_t *saved_vb = NULL
        cdef uint8_t *first = NULL
        cdef const uint8_t *kp = &keys[0] if keys.shape[0] else NULL
        cdef bint has_skip = skip is not None
        cdef const uint8_t *skipp = NULL
        cdef const uint64_t *koffp = NULL
        cdef const uint64_t *khp = NULL
        cdef uint64_t *psids = NULL       # the missing series' symbols (_find_missing)
        cdef Py_ssize_t *psoff = NULL
        cdef uint64_t sym_frees = 0
        if nser < 0 or key_hashes.shape[0] < nser or sample_offsets.shape[0] != nser + 1:
            raise ValueError("offset arrays do not describe the same number of series")
        if vals.shape[0] != nsamp or outcomes.shape[0] < nsamp:
            raise ValueError("ts, vals and outcomes lengths differ")
        if nser > 0 and (key_offsets[nser] > <uint64_t>keys.shape[0] or sample_offsets[nser] > <uint64_t>nsamp):
            raise ValueError("offsets point past the end of their arrays")
        if skip is not None and skip.shape[0] < nser:
            raise ValueError("skip is shorter than the series list")
        if nser > 0:
            koffp = &key_offsets[0]
            khp = &key_hashes[0]
            if skip is not None:
                skipp = &skip[0]
        for i in range(nser):
            if key_offsets[i] > key_offsets[i + 1] or sample_offsets[i] > sample_offsets[i + 1]:
                raise ValueError("offsets must not decrease")
        sp = <series_t **>calloc(nser + 1, sizeof(series_t *))
        new_idx = <Py_ssize_t *>malloc((nser + 1) * sizeof(Py_ssize_t))
        wrefs = <uint64_t *>malloc((nsamp + 1) * sizeof(uint64_t))
        wts = <int64_t *>malloc((nsamp + 1) * sizeof(int64_t))
        wvs = <double *>malloc((nsamp + 1) * sizeof(double))
        prev = <uint64_t *>malloc((nser + 1) * sizeof(uint64_t))
        saved_t = <int64_t *>malloc((nser + 1) * sizeof(int64_t))
        saved_vb = <uint64_t *>malloc((nser + 1) * sizeof(uint64_t))
        first = <uint8_t *>calloc(nser + 1, 1)
        per_metric_refused = []     # series refused by max_series_per_metric
        try:
            if (sp == NULL or new_idx == NULL or wrefs == NULL or wts == NULL or wvs == NULL
                    or prev == NULL or saved_t == NULL or saved_vb == NULL or first == NULL):
                raise MemoryError()
            # 0. Find the series, in parallel with other batches (and readers).
            with nogil:
                pthread_rwlock_rdlock(&self._maps)
                forgets = self._forgets
                n_missing = self._lookup_batch(kp, koffp, khp, skipp, sp, nser)
                # ... and the symbols of the missing ones, so that only what changes the index
                # is left for the creation under _commit (not with a per-metric limit: that
                # creation goes one series at a time, counting each metric as it goes)
                if n_missing and not self.max_series_per_metric:
                    self._find_missing(kp, koffp, skipp, sp, nser, n_missing, &psids, &psoff)
                    sym_frees = self._ix.sym_frees()
                pthread_rwlock_unlock(&self._maps)
            with self._commit:
                if self._closed:
                    raise RuntimeError("head is closed")
                if self._forgets != forgets:
                    # series were freed since: look up again (the maps change only under _commit)
                    with nogil:
                        n_missing = self._lookup_batch(kp, koffp, khp, skipp, sp, nser)
                    free(psoff)     # found for other missing series
                    psoff = NULL
                # 1. Create the missing series, then decide every outcome against the reserved
                # tips; memory is not touched.
                self._gen += 1
                gen = self._gen
                maxt = self.maxt
                mint = INT64_MAX
                fresh = maxt == INT64_MIN
                min_valid = self._min_valid(maxt)
                try:
                    if n_missing:
                        self._create_missing(kp, key_offsets, key_hashes, skip, sp, nser,
                                             new_idx, &n_new, per_metric_refused, psids, psoff,
                                             sym_frees)
                    with nogil:
                        for i in range(nser):
                            s = sp[i]
                            for j in range(<Py_ssize_t>sample_offsets[i], <Py_ssize_t>sample_offsets[i + 1]):
                                if s == NULL:
                                    outcomes[j] = APPEND_SKIPPED if (has_skip and skip[i]) else APPEND_SERIES_LIMIT
                                    continue
                                if s.b_gen != gen:
                                    # first sample of s in this batch: reserve after the batch before
                                    first[i] = 1
                                    prev[i] = s.b_gen
                                    saved_t[i] = s.b_last_t
                                    saved_vb[i] = s.b_last_vbits
                                    if pending(s):
                                        hc_need += MAX_OPEN_CHUNK_BYTES + HC_MAX_ENTRY_OVERHEAD
                                    else:
                                        s.b_last_t = s.last_t
                                        s.b_last_vbits = s.last_vbits
                                        hc_need += xor_app_len(&s.app) + HC_MAX_ENTRY_OVERHEAD
                                    s.b_gen = gen
                                out = self._check(s, ts[j], vals[j], min_valid, maxt)
                                outcomes[j] = <uint8_t>out
                                if out != APPEND_OK:
                                    continue
                                hc_need += MAX_SAMPLE_BYTES + HC_MAX_ENTRY_OVERHEAD
                                if ts[j] > maxt:
                                    maxt = ts[j]
                                if ts[j] < mint:
                                    mint = ts[j]
                                if fresh:
                                    # an empty head starts at its first sample (Prometheus' initTime)
                                    fresh = False
                                    min_valid = self._min_valid(maxt)
                                wrefs[n_ok] = s.ref
                                wts[n_ok] = ts[j]
                                wvs[n_ok] = vals[j]
                                n_ok += 1
                    for i in per_metric_refused:
                        for j in range(<Py_ssize_t>sample_offsets[i], <Py_ssize_t>sample_offsets[i + 1]):
                            outcomes[j] = APPEND_SERIES_PER_METRIC_LIMIT
                    if n_new:
                        n_new = self._forget_locked(new_idx, n_new, sp, nser, False)
                    # Room in chunks_head/ for every chunk this batch may cut (on top of what the
                    # batches in flight reserved), before anything is logged: a full disk refuses
                    # the batch whole instead of half-applying it.
                    if n_ok:
                        with nogil:
                            pthread_mutex_lock(&self._hc_mu)
                            rc = self._hc.hc_prepare(hc_need + self._hc_pending)
                            if rc == 0:
                                self._hc_pending += hc_need
                                hc_held = True
                            pthread_mutex_unlock(&self._hc_mu)
                        if rc != 0:
                            raise OSError(-rc, "head chunks: %s" % os.strerror(-rc))
                    # 2. WAL: series first so replay can resolve the samples' refs, in one write.
                    if self._wal is not None and (n_new or n_ok):
                        self._log_append(kp, key_offsets, new_idx, n_new, sp, wrefs, wts, wvs, n_ok)
                except BaseException:
                    # Nothing of the batch is logged: its reservations and new series go again,
                    # so the head is as it was and a retry logs them anew. No later batch has
                    # reserved (_commit is held).
                    if hc_held:
                        with nogil:
                            pthread_mutex_lock(&self._hc_mu)
                            self._hc_pending -= hc_need
                            pthread_mutex_unlock(&self._hc_mu)
                        hc_held = False
                    for i in range(nser):
                        if first[i] and sp[i] != NULL:
                            s = sp[i]
                            s.b_gen = prev[i]
                            s.b_last_t = saved_t[i]
                            s.b_last_vbits = saved_vb[i]
                    if n_new:
                        self._forget_locked(new_idx, n_new, sp, nser, True)
                    raise
                if n_ok:
                    if maxt > self.maxt:
                        self.maxt = maxt
                    if mint < self.mint:
                        self.mint = mint
                # entered before _commit is released: a drain under _commit waits for this batch
                with nogil:
                    pthread_rwlock_rdlock(&self._applying)
                applying = True
            # 3. Memory, in parallel with other batches: each series after the batch that
            # reserved it before (WAL order). The outcome only changes for an out-of-order
            # timestamp repeated within the batch or across batches in flight (refused there
            # too on replay).
            n_ok = 0
            with nogil:
                for i in range(nser):
                    s = sp[i]
                    if s == NULL:
                        continue
                    if first[i]:
                        wait_applied(s, prev[i])
                    urdar_stripe_lock(stripe_of(self._stripes, s))
                    for j in range(<Py_ssize_t>sample_offsets[i], <Py_ssize_t>sample_offsets[i + 1]):
                        if outcomes[j] != APPEND_OK:
                            continue
                        out = self._append(s, ts[j], vals[j], INT64_MIN, True)
                        if out < 0:
                            # head chunk file full or broken: the sample is in the WAL but not
                            # in memory; the caller answers 5xx and its retry appends it
                            if rc == 0:
                                rc = out
                            out = APPEND_SKIPPED
                        outcomes[j] = <uint8_t>out
                        if out == APPEND_OK:
                            n_ok += 1
                    urdar_stripe_unlock(stripe_of(self._stripes, s))
            if rc != 0:
                raise OSError(-rc, "head append failed: %s" % os.strerror(-rc))
            return n_ok, n_new
        finally:
            if applying:
                with nogil:
                    # the series' memory is this batch's now: the next reserver may write
                    for i in range(nser):
                        if first[i] and sp[i] != NULL:
                            urdar_store_release(&sp[i].a_gen, gen)
                    if hc_held:
                        pthread_mutex_lock(&self._hc_mu)
                        self._hc_pending -= hc_need
                        pthread_mutex_unlock(&self._hc_mu)
                    pthread_rwlock_unlock(&self._applying)
            free(sp)
            free(new_idx)
            free(wrefs)
            free(wts)
            free(wvs)
            free(prev)
            free(saved_t)
            free(saved_vb)
            free(first)
            free(psids)
            free(psoff)

    cdef int _create_missing(self, const uint8_t *kp, const uint64_t[::1] key_offsets,
                             const uint64_t[::1] key_hashes, const uint8_t[::1] skip, series_t **sp,
                             Py_ssize_t nser, Py_ssize_t *new_idx, Py_ssize_t *n_new,
                             list per_metric_refused, const uint64_t *psids, const Py_ssize_t *psoff,
                             uint64_t sym_frees) except -1:
        """Create the batch's series not found (_commit held; _maps taken exclusive here: the
        index moves its arena and tables while interning, so no lookup may run meanwhile).
        The batch position of each new one goes to new_idx (n_new counts them, also when a
        creation fails half way, so the caller can forget them), the positions refused by
        max_series_per_metric to per_metric_refused; those over max_series stay NULL.
        psids/psoff: _find_missing's symbols (psoff NULL: none, or the lookup was redone),
        found when the index had freed sym_frees symbols."""
        cdef Py_ssize_t i, k = -1
        cdef series_t *s
        cdef const uint8_t *ck
        cdef long cklen
        cdef int err
        with nogil:
            pthread_rwlock_wrlock(&self._maps)
        try:
            if self._ix.sym_frees() != sym_frees:
                psoff = NULL        # an id _find_missing found may name another string now
            if psoff != NULL and not self.max_series_per_metric:
                with nogil:
                    err = self._create_found(kp, &key_offsets[0], &key_hashes[0],
                                             &skip[0] if skip is not None else NULL, sp, nser,
                                             new_idx, n_new, psids, psoff)
                if err == IX_EMALFORMED:
                    raise ValueError("malformed label key")
                if err != 0:
                    raise MemoryError()
                return 0
            for i in range(nser):
                if sp[i] != NULL or (skip is not None and skip[i]):
                    continue
                k += 1      # the missing series' order in _find_missing
                s = self._lookup(kp + key_offsets[i], key_offsets[i + 1] - key_offsets[i], key_hashes[i])
                if s == NULL:
                    if self.max_series and self._by_ref.n >= self.max_series:
                        continue
                    if self.max_series_per_metric and self._metric_full(
                            kp + key_offsets[i], key_offsets[i + 1] - key_offsets[i]):
                        per_metric_refused.append(i)
                        continue
                    if psoff != NULL and psoff[k] >= 0:
                        cklen = self._ix.intern_found(kp + key_offsets[i], key_offsets[i + 1] - key_offsets[i],
                                                      psids + psoff[k], &ck)
                        s = self._create_interned(key_offsets[i + 1] - key_offsets[i], key_hashes[i], 0,
                                                  cklen, ck)
                    else:
                        s = self._create(kp + key_offsets[i], key_offsets[i + 1] - key_offsets[i],
                                         key_hashes[i], 0)
                    new_idx[n_new[0]] = i
                    n_new[0] += 1
                sp[i] = s
        finally:
            pthread_rwlock_unlock(&self._maps)
        return 0

    cdef int _find_missing(self, const uint8_t *kp, const uint64_t *koff, const uint8_t *skip, series_t **sp,
                           Py_ssize_t nser, Py_ssize_t n_missing, uint64_t **psids, Py_ssize_t **psoff) noexcept nogil:
        """HeadIndex.find_syms of the n_missing series not found by _lookup_batch (_maps shared):
        *psoff[k] = where the ids of the k-th missing one start in *psids (-1 = malformed key:
        its creation reports it). Both stay NULL when memory is short (then creation interns
        from scratch). Returns 0 or -1."""
        cdef Py_ssize_t i, j, k = 0, total = 0, nw, c
        cdef Py_ssize_t pos[FIND_WINDOW]
        cdef Py_ssize_t kk[FIND_WINDOW]
        cdef int stage
        cdef long m
        cdef Py_ssize_t *off = <Py_ssize_t *>malloc(n_missing * sizeof(Py_ssize_t))
        cdef uint64_t *ids
        if off == NULL:
            return -1
        for i in range(nser):
            if sp[i] != NULL or (skip != NULL and skip[i]):
                continue
            m = self._ix.key_strings(kp + koff[i], koff[i + 1] - koff[i])
            off[k] = total if m >= 0 else -1
            if m > 0:
                total += m
            k += 1
        ids = <uint64_t *>malloc((total + 1) * sizeof(uint64_t))
        if ids == NULL:
            free(off)
            return -1
        # find_syms' stages over windows of keys
        k = 0
        i = 0
        while i < nser:
            nw = 0
            while i < nser and nw < FIND_WINDOW:
                if sp[i] == NULL and (skip == NULL or not skip[i]):
                    pos[nw] = i
                    kk[nw] = k
                    nw += 1
                    k += 1
                i += 1
            for stage in range(4):
                for c in range(nw):
                    j = pos[c]
                    if off[kk[c]] >= 0 and self._ix.find_syms(kp + koff[j], koff[j + 1] - koff[j],
                                                              ids + off[kk[c]], stage) < 0:
                        off[kk[c]] = -1
        psids[0] = ids
        psoff[0] = off
        return 0

    cdef Py_ssize_t _forget_locked(self, Py_ssize_t *new_idx, Py_ssize_t n_new, series_t **sp,
                                   Py_ssize_t nser, bint all) except -1:
        """_forget_new with the locks that freeing series takes (_commit held): only when
        there is something to forget, so a batch of new series does not wait for readers."""
        cdef series_t *s
        cdef bint any = all
        cdef Py_ssize_t k
        if not all:
            for k in range(n_new):
                s = sp[new_idx[k]]
                if s != NULL and not (s.b_gen == self._gen and s.b_last_t != INT64_MIN):
                    any = True
                    break
        if not any:
            return n_new
        with nogil:
            pthread_rwlock_wrlock(&self._gc)
            pthread_rwlock_wrlock(&self._maps)
        try:
            self._forgets += 1
            return self._forget_new(new_idx, n_new, sp, nser, all)
        finally:
            pthread_rwlock_unlock(&self._maps)
            pthread_rwlock_unlock(&self._gc)

    cdef Py_ssize_t _forget_new(self, Py_ssize_t *new_idx, Py_ssize_t n_new, series_t **sp,
                                Py_ssize_t nser, bint all) except -1:
        """Remove series created by this batch again: those whose every sample was refused,
        so a refused write leaves no trace in the index, or (all) every one, when the batch
        could not be logged. Only called before the batch reaches memory. new_idx keeps the
        batch positions of the series kept; returns their count."""
        cdef series_t *s
        cdef Py_ssize_t k, j, kept = 0
        gone = []
        for k in range(n_new):
            s = sp[new_idx[k]]
            if s == NULL or s.b_gen == FORGOTTEN:
                continue
            # a new series' first accepted sample is in order, so b_last_t tells
            if not all and s.b_gen == self._gen and s.b_last_t != INT64_MIN:
                new_idx[kept] = new_idx[k]
                kept += 1
                continue
            s.b_gen = FORGOTTEN
            gone.append(s.ref)
        if gone:
            # the series' slot pointers are shared by their repeats in the batch: clear them all
            for j in range(nser):
                if sp[j] != NULL and sp[j].b_gen == FORGOTTEN:
                    sp[j] = NULL
            self._remove_series(gone)
        return kept

    cdef _log_append(self, const uint8_t *kp, const uint64_t[::1] key_offsets, Py_ssize_t *new_idx,
                     Py_ssize_t n_new, series_t **sp, uint64_t *wrefs, int64_t *wts, double *wvs,
                     Py_ssize_t n_ok):
        # Both records go out in one write(2): the batch's series are never logged without
        # its samples, nor the other way round.
        cdef wbuf_t srec, rec
        cdef series_t *s
        cdef int rc = 0
        cdef WAL w = self._wal
        cdef const uint8_t *recs[2]
        cdef size_t lens[2]
        cdef Py_ssize_t k = 0
        cdef Py_ssize_t i
        cdef const uint64_t *koff = &key_offsets[0]
        wbuf_init(&srec, 4096 if n_new else 16)
        wbuf_init(&rec, 4096)
        try:
            with nogil:
                if n_new:
                    rec_series_begin(&srec)
                    for i in range(n_new):
                        s = sp[new_idx[i]]
                        # Prometheus' series record entry: ref, then the canonical key (the
                        # request's own bytes: the series was created from them)
                        wbuf_put_be64(&srec, s.ref)
                        if wbuf_reserve(&srec, s.keylen) == 0:
                            memcpy(srec.data + srec.len, kp + koff[new_idx[i]], s.keylen)
                            srec.len += s.keylen
            if srec.oom:
                raise MemoryError()
            if n_new:
                recs[k] = srec.data
                lens[k] = srec.len
                k += 1
            with nogil:
                if n_ok:
                    rec_samples(&rec, wrefs, wts, wvs, n_ok)
                    recs[k] = rec.data
                    lens[k] = rec.len
                    k += 1
                if not rec.oom:
                    rc = w.wal_log_many(recs, lens, k)
            if rec.oom:
                raise MemoryError()
            if rc != 0:
                raise OSError(-rc, "WAL write failed: %s" % os.strerror(-rc))
        finally:
            wbuf_free(&srec)
            wbuf_free(&rec)

    def append(self, labels, samples):
        """Convenience for tests and tools: one series' [(t, v), ...]; returns the outcomes list."""
        key = _labels.encode_labels(labels.items() if isinstance(labels, dict) else labels)
        tsa = array("q", [int(t) for t, _ in samples])
        va = array("d", [float(v) for _, v in samples])
        out = bytearray(len(tsa))
        self.append_batch(key, array("Q", [0, len(key)]), array("Q", [_labels.hash_key(key)]),
                          array("Q", [0, len(tsa)]), tsa, va, out)
        return list(out)

    def append_histograms(self, labels_key, samples):
        """Append native histogram samples [(t, Histogram | FloatHistogram)] to the series with
        label key `labels_key` (or labels as dict/pairs); returns the outcome codes.

        As Prometheus: in order per series (floats and histograms share one timeline), the same
        timestamp with an equal histogram is DUPLICATE_SAME, with anything else DUPLICATE.
        Logged to the WAL (records 7-10) before memory changes; OSError when that fails."""
        cdef series_t *s
        cdef int64_t t, last_t, min_valid, maxt
        cdef bint created = False
        if isinstance(labels_key, (bytes, bytearray)):
            key = bytes(labels_key)
        else:
            key = _labels.encode_labels(labels_key.items() if isinstance(labels_key, dict) else labels_key)
        outcomes = [APPEND_OK] * len(samples)
        with self._commit:
            if self._closed:
                raise RuntimeError("head is closed")
            # under _commit nobody creates or frees series: no _maps lock for the lookup
            s = self._lookup(key, len(key), _labels.hash_key(key))
            if s != NULL:
                # float samples of s still on their way to memory land first
                with nogil:
                    wait_applied(s, s.b_gen)
            maxt = self.maxt
            min_valid = self._min_valid(maxt)
            last_t = s.last_t if s != NULL else INT64_MIN
            st = self._hist.get(s.ref) if s != NULL else None
            last_h = st.last_h if st is not None and st.last_t == last_t else None
            accepted = []
            for i, (t, h) in enumerate(samples):
                if not isinstance(h, (_Histogram, _FloatHistogram)):
                    raise TypeError("not a histogram: %r" % (h,))
                if t < min_valid:
                    outcomes[i] = self._too_old()
                elif last_t != INT64_MIN and t <= last_t:
                    if t == last_t:
                        outcomes[i] = APPEND_DUPLICATE_SAME if (last_h is not None and h == last_h) else APPEND_DUPLICATE
                    elif self.ooo_window <= 0 or maxt == INT64_MIN or t < maxt - self.ooo_window:
                        outcomes[i] = APPEND_OUT_OF_ORDER
                    else:
                        # out-of-order window: kept aside, merged on reads and block cuts
                        found = st.ooo_find(t, h) if st is not None else 0
                        if not found:
                            found = next((1 if x == h else 2 for u, x in accepted if u == t), 0)
                        if found:
                            outcomes[i] = APPEND_DUPLICATE_SAME if found == 1 else APPEND_DUPLICATE
                        else:
                            accepted.append((t, h))
                else:
                    if s == NULL and self.max_series and self._by_ref.n >= self.max_series:
                        outcomes[i] = APPEND_SERIES_LIMIT
                        continue
                    last_t, last_h = t, h
                    accepted.append((t, h))
                    if t > maxt:
                        maxt = t
                        if min_valid == INT64_MIN or self.maxt == INT64_MIN:
                            min_valid = self._min_valid(maxt)
            if not accepted:
                return outcomes
            if s == NULL:
                with nogil:
                    pthread_rwlock_wrlock(&self._maps)
                try:
                    s = self._create(key, len(key), _labels.hash_key(key), 0)
                finally:
                    pthread_rwlock_unlock(&self._maps)
                created = True
            if self._wal is not None:
                recs = _histrecords.encode_histogram_records([(s.ref, t, h) for t, h in accepted])
                if created:
                    recs.insert(0, _records.encode_series([(s.ref, key)]))
                try:
                    self._wal.log_many(recs)
                except BaseException:
                    if created:
                        self._drop_series(s.ref)
                    raise
            with self._hist_lock:
                for t, h in accepted:
                    self._hist_apply(s, t, h)
        return outcomes

    cdef int _hist_apply(self, series_t *s, int64_t t, object h) except -1:
        """Put one histogram sample into memory (_hist_lock held, and _commit or replaying).
        s's float state changes under its stripe lock (readers), where no batch writes it:
        appends of s are done (append_histograms waited) and no new one is reserved."""
        cdef int rc = 0
        cdef uint64_t ref
        cdef const uint8_t *p
        cdef size_t plen
        cdef int64_t cmint, cmaxt
        cdef uint8_t cenc
        if s.last_t != INT64_MIN and t <= s.last_t:
            # out of order (accepted by the caller's window check, or replayed as accepted)
            st = self._hist.get(s.ref)
            if st is None:
                st = self._hist[s.ref] = HistogramSeries()
            if t != s.last_t:
                st.add_ooo(t, h)
                self._note_time(t)
            return 0
        if xor_app_count(&s.app):
            # the sample type changes: the float chunk ends here, as Prometheus cuts it
            with nogil:
                urdar_stripe_lock(stripe_of(self._stripes, s))
                rc = self._cut(s)
                urdar_stripe_unlock(stripe_of(self._stripes, s))
            if rc != 0:
                raise OSError(-rc, "head chunks: %s" % os.strerror(-rc))
        st = self._hist.get(s.ref)
        if st is None:
            st = self._hist[s.ref] = HistogramSeries()
        type_switch = st.open is not None and st.open.num_samples and s.last_t > st.open.maxt
        for b in st.append(t, h, self.chunk_range, type_switch):
            data = b.bytes()
            p = data
            plen = len(data)
            cmint, cmaxt, cenc = b.mint, b.maxt, b.encoding
            with nogil:
                pthread_mutex_lock(&self._hc_mu)
                rc = self._hc.hc_write(s.ref, cmint, cmaxt, cenc, p, plen, &ref)
                pthread_mutex_unlock(&self._hc_mu)
            if rc != 0:
                raise OSError(-rc, "head chunks: %s" % os.strerror(-rc))
            st.chunks.append((ref, b.mint, b.maxt, b.encoding))
        with nogil:
            urdar_stripe_lock(stripe_of(self._stripes, s))
            s.last_t = t
            s.last_vbits = HIST_VBITS
            urdar_stripe_unlock(stripe_of(self._stripes, s))
        self._note_time(t)
        return 0

    def _drop_series(self, uint64_t ref):
        """Forget one series (_commit held)."""
        cdef series_t *s = <series_t *>hm_get(&self._by_ref, ref)
        if s == NULL:
            return
        with nogil:
            pthread_rwlock_wrlock(&self._gc)
            pthread_rwlock_wrlock(&self._maps)
        try:
            self._forgets += 1
            self._remove_series([ref])
        finally:
            pthread_rwlock_unlock(&self._maps)
            pthread_rwlock_unlock(&self._gc)

    cdef _hist_samples(self, series_t *s, int64_t mint, int64_t maxt):
        """(array('q') timestamps, [FloatHistogram]) of s's histogram samples in [mint, maxt]."""
        cdef size_t plen
        cdef uint8_t enc
        cdef const uint8_t *p
        hts = array("q")
        hvs = []
        st = self._hist.get(s.ref)
        if st is None:
            return hts, hvs
        for ref, cmint, cmaxt, cenc in st.chunks:
            if cmaxt < mint or cmint > maxt:
                continue
            p = self._hc_get(ref, &plen, &enc)
            if p == NULL:
                raise CorruptionError(self.dir, ref, "head histogram chunk missing")
            ts, hs = decode_histogram_chunk(PyBytes_FromStringAndSize(<const char *>p, plen), enc, mint, maxt)
            hts.extend(ts)
            hvs.extend(h.to_float() for h in hs)
        o = st.open
        if o is not None and o.num_samples and o.maxt >= mint and o.mint <= maxt:
            ts, hs = decode_histogram_chunk(o.bytes(), o.encoding, mint, maxt)
            hts.extend(ts)
            hvs.extend(h.to_float() for h in hs)
        late = st.ooo_in(mint, maxt) if st.ooo else None
        if late:
            hts, hvs = merge_histogram_parts([(hts, hvs), (array("q", [t for t, _ in late]),
                                                          [h.to_float() for _, h in late])])
        return hts, hvs

    cdef list _hist_block_chunks(self, series_t *s, int64_t mint, int64_t maxt):
        """s's histogram chunks inside [mint, maxt) as (mint, maxt, encoding, bytes)."""
        cdef size_t plen
        cdef uint8_t enc
        cdef const uint8_t *p
        out = []
        st = self._hist[s.ref]
        late = st.ooo_in(mint, maxt - 1) if st.ooo else None
        if late:
            # out-of-order samples in range: the range's histograms merged and re-encoded
            parts = []
            for ref, cmint, cmaxt, cenc in st.chunks:
                if cmaxt >= mint and cmint < maxt:
                    p = self._hc_get(ref, &plen, &enc)
                    if p == NULL:
                        raise CorruptionError(self.dir, ref, "head chunk missing")
                    parts.append(decode_histogram_chunk(PyBytes_FromStringAndSize(<const char *>p, plen),
                                                        enc, mint, maxt - 1))
            o = st.open
            if o is not None and o.num_samples:
                parts.append(decode_histogram_chunk(o.bytes(), o.encoding, mint, maxt - 1))
            parts.append(([t for t, _ in late], [h for _, h in late]))
            hts, hvs = merge_histogram_parts(parts)
            return encode_histogram_samples(list(zip(hts, hvs)), self.samples_per_chunk)
        for ref, cmint, cmaxt, cenc in st.chunks:
            if cmint >= mint and cmaxt < maxt:
                p = self._hc_get(ref, &plen, &enc)
                if p == NULL:
                    raise CorruptionError(self.dir, ref, "head chunk missing")
                out.append((cmint, cmaxt, enc, PyBytes_FromStringAndSize(<const char *>p, plen)))
        o = st.open
        if o is not None and o.num_samples and o.mint >= mint and o.maxt < maxt:
            out.append((o.mint, o.maxt, o.encoding, o.bytes()))
        return out

    def append_exemplars(self, exemplars):
        """Store exemplars [(series key, t, v, exemplar label key)]; returns how many were kept.

        Exemplars of unknown series are dropped, as Prometheus does. Logged before they are
        stored: when the WAL write fails (OSError) none is kept."""
        kept = []
        with self._commit:
            store = self._exemplars
            newest = {}           # ref -> newest exemplar t in this call (ExemplarStorage.add's rule)
            for key, t, v, ekey in exemplars:
                ref = self._ref_of(key)
                if not ref or store.max_exemplars == 0:
                    continue
                last = newest.get(ref, store._last.get(ref))
                if last is not None and t <= last:
                    continue
                newest[ref] = t
                kept.append((ref, t, v, ekey))
            if kept and self._wal is not None:
                self._wal.log(_records.encode_exemplars(kept))
            for ref, t, v, ekey in kept:
                store.add(ref, t, v, ekey)
        return len(kept)

    def set_metadata(self, items):
        """Record metric metadata [(metric family, type int, help, unit)] (latest wins).

        Persisted as WAL metadata records on a series of that metric family when one exists,
        before memory changes: when the WAL write fails (OSError) nothing changes."""
        logged = []
        changed = {}
        with self._commit:
            for name, mtype, help_, unit in items:
                if changed.get(name, self._metadata.get(name)) == (mtype, help_, unit):
                    continue
                changed[name] = (mtype, help_, unit)
                nb = name.encode("utf-8", "surrogateescape")
                first = self._ix.first_ref(b"__name__", 8, nb, len(nb))
                if first:
                    logged.append((first, mtype, unit, help_))
            if logged and self._wal is not None:
                self._wal.log(_records.encode_metadata(logged))
            self._metadata.update(changed)
        return len(items)

    def metadata(self):
        """metric family -> (type int, help, unit)."""
        with self._commit:
            return dict(self._metadata)

    cdef uint64_t _ref_of_c(self, const uint8_t *key, size_t n) noexcept nogil:
        cdef series_t *s = self._lookup(key, n, key_hash(key, n))
        return s.ref if s != NULL else 0

    def _ref_of(self, key):
        cdef const uint8_t[::1] k = key
        return self._ref_of_c(&k[0] if k.shape[0] else NULL, k.shape[0])

    # ---- replay ----------------------------------------------------------------------

    def _load_mmapped(self):
        """Index the chunks in chunks_head/ by series ref (an _MmapIndex, built in C).

        As Prometheus (loadMmappedChunks, DeleteCorrupted): a corrupt or torn entry ends the
        good data there; the file is cut at that point and every later file deleted, so the
        series whose chunks were lost get them back from the WAL replay."""
        cdef _MmapIndex idx = _MmapIndex()
        cdef HeadChunkFiles hc = self._hc
        cdef uint64_t max_sref = 0
        cdef uint32_t last_seq = 0xFFFFFFFF
        cdef Py_ssize_t n
        # chunks ending before the last truncation left memory then (their samples left the
        # WAL with the checkpoint); they stay in files that also hold newer chunks
        cdef int64_t floor_t = max(self.min_valid_time, _read_truncated(hc.dir))
        # opening the files verified every entry; the first bad one (in file order) is here
        bad = hc.corrupt
        if bad is not None:
            last_seq = int(os.path.basename(bad.path))
        with nogil:
            n = hc.hc_index(last_seq, floor_t, &idx.e, &max_sref)
            if n > 1:
                qsort(idx.e, n, sizeof(hc_index_t), _cmp_index)
        if n < 0:
            raise MemoryError()
        idx.n = n
        if bad is not None:
            log.warning("head chunks: %s; dropping it and every later chunk (replayed from the WAL)", bad)
            self.replay_stats["chunk_files_corrupt"] = 1
            cdir = hc.dir
            max_file_bytes = hc.max_file_bytes
            hc.close()
            bad_seq = int(os.path.basename(bad.path))
            for name in os.listdir(cdir):
                if name.isdigit() and int(name) > bad_seq:
                    os.unlink(os.path.join(cdir, name))
            if bad.offset:
                os.truncate(bad.path, bad.offset)
            else:
                os.unlink(bad.path)
            self._hc = HeadChunkFiles(cdir, max_file_bytes)
        # A series ref is never handed out again while chunks of it may sit in these files.
        if max_sref >= self._next_ref:
            self._next_ref = max_sref + 1
        self.replay_stats["mmapped_chunks"] = n
        return idx

    cdef _attach_mmapped(self, series_t *s, list chunks):
        """Give s its m-mapped chunks (file order = time order). Chunks out of sequence or of
        an unknown encoding drop all of them: the WAL then rebuilds that series."""
        cdef uint32_t k = 0
        cdef int64_t prev = INT64_MIN
        cdef int64_t fprev = INT64_MIN
        min_valid = self.min_valid_time
        keep = []
        for c in chunks:
            if c[2] < min_valid:
                continue
            if c[3] not in (1, 2, 3) or c[1] > c[2] or (c[1] <= fprev and c[3] == 1) or (
                    c[3] != 1 and c[1] <= prev):
                self.replay_stats["mmapped_chunks_dropped"] += len(chunks)
                return
            if c[3] == 1:
                fprev = c[2]
            else:
                prev = c[2]
            keep.append(c)
        if not keep:
            return
        nf = sum(1 for c in keep if c[3] == 1)
        if nf:
            s.mm = <mchunk_t *>realloc(s.mm, mm_cap(nf) * sizeof(mchunk_t))
            if s.mm == NULL:
                raise MemoryError()
        st = None
        for ref, mint, maxt, enc in keep:
            if enc == 1:
                s.mm[k].ref = ref
                s.mm[k].mint = mint
                s.mm[k].maxt = maxt
                k += 1
            else:
                if st is None:
                    st = self._hist.get(s.ref)
                    if st is None:
                        st = self._hist[s.ref] = HistogramSeries()
                st.chunks.append((ref, mint, maxt, enc))
        s.n_mm = k

    def _replay(self, wal_dir, _MmapIndex mmapped=None):
        """Rebuild the head from the WAL (checkpoint, then segments); a corrupt tail is cut.

        `mmapped` (from _load_mmapped) chunks are attached as their series are created; an
        in-order sample at or before its series' last m-mapped chunk of the same type is
        already in that chunk and only moves the series' clock (Prometheus' replay skips
        samples up to the m-mapped maxt). Out-of-order samples are kept in memory only, so
        they are always replayed. Records are read and decoded in C (no object per record or
        sample); a samples record is applied without the GIL."""
        cdef series_t *s
        cdef int64_t t, tmin, tmax
        cdef Py_ssize_t n_skip = 0, n_app = 0, n_recs = 0, n_samples = 0
        cdef Py_ssize_t k, n, a, b
        cdef uint64_t ref, h
        cdef dict remap = {}
        cdef int64_t min_valid = self.min_valid_time, lim
        cdef int out, rc = 0
        cdef const uint8_t *p
        cdef size_t plen
        cdef Py_ssize_t cap = 0, kcap = 0
        cdef uint64_t *refs = NULL
        cdef int64_t *ts = NULL
        cdef double *vs = NULL
        cdef uint64_t *srefs = NULL
        cdef size_t *koff = NULL
        cdef size_t *klen = NULL
        cdef rp_t rp
        cdef rp_slot_t *e
        cdef WALReader reader
        cdef uint8_t rtype
        if not os.path.isdir(wal_dir):
            return
        rp.slots = NULL
        rp.n = 0
        records = _wal.replay_records(wal_dir)
        reader = records.open()
        self._replaying = True
        try:
            while reader.read_next(&p, &plen):
                n_recs += 1
                rtype = p[0] if plen else 0
                if rtype == REC_SAMPLES:
                    # a sample takes at least 10 bytes (two varints and the value)
                    if <Py_ssize_t>(plen // 10 + 1) > cap:
                        cap = plen // 10 + 1
                        free(refs); free(ts); free(vs)
                        refs = <uint64_t *>malloc(cap * 8)
                        ts = <int64_t *>malloc(cap * 8)
                        vs = <double *>malloc(cap * 8)
                        if refs == NULL or ts == NULL or vs == NULL:
                            raise MemoryError()
                    with nogil:
                        n = rec_samples_decode(p, plen, refs, ts, vs, cap)
                    if n < 0:
                        _records.decode_samples(PyBytes_FromStringAndSize(<const char *>p, plen))
                        raise AssertionError("samples record decoded twice differently")
                    if n == 0:
                        continue
                    if remap:
                        for k in range(n):
                            refs[k] = remap.get(refs[k], refs[k])
                    tmin = INT64_MAX
                    tmax = INT64_MIN
                    with nogil:
                        for k in range(n):
                            ref = refs[k]
                            t = ts[k]
                            if ref < rp.n and rp.slots[ref].s != NULL:
                                e = &rp.slots[ref]
                                if t > e.lt and t <= e.lim and t >= min_valid:
                                    # in order then, so in the m-mapped chunk now
                                    e.lt = t
                                    e.lv = f64_bits(vs[k])
                                    if t < tmin:
                                        tmin = t
                                    if t > tmax:
                                        tmax = t
                                    n_skip += 1
                                    continue
                                s = e.s
                                if e.lt > s.last_t:
                                    s.last_t = e.lt
                                    s.last_vbits = e.lv
                                out = self._append(s, t, vs[k], min_valid, True)
                                if out < 0:
                                    rc = out
                                    break
                                e.lt = s.last_t
                                e.lv = s.last_vbits
                                n_app += 1
                                continue
                            # a series outside the dense table (a very sparse ref)
                            s = <series_t *>hm_get(&self._by_ref, ref)
                            if s == NULL:
                                continue
                            if (t > s.last_t and s.n_mm and t <= s.mm[s.n_mm - 1].maxt
                                    and t >= min_valid):
                                s.last_t = t
                                s.last_vbits = f64_bits(vs[k])
                                self._note_time(t)
                                n_skip += 1
                                continue
                            out = self._append(s, t, vs[k], min_valid, True)
                            if out < 0:
                                rc = out
                                break
                            n_app += 1
                        if tmin <= tmax:
                            self._note_time(tmin)
                            self._note_time(tmax)
                    n_samples += n
                    if rc != 0:
                        raise OSError(-rc, "replay failed: %s" % os.strerror(-rc))
                elif rtype == REC_SERIES:
                    # a series takes at least 9 bytes (ref and label count)
                    if <Py_ssize_t>(plen // 9 + 1) > kcap:
                        kcap = plen // 9 + 1
                        free(srefs); free(koff); free(klen)
                        srefs = <uint64_t *>malloc(kcap * 8)
                        koff = <size_t *>malloc(kcap * sizeof(size_t))
                        klen = <size_t *>malloc(kcap * sizeof(size_t))
                        if srefs == NULL or koff == NULL or klen == NULL:
                            raise MemoryError()
                    n = rec_series_decode(p, plen, srefs, koff, klen, kcap)
                    if n < 0:
                        _records.decode_series(PyBytes_FromStringAndSize(<const char *>p, plen))
                        raise AssertionError("series record decoded twice differently")
                    for k in range(n):
                        ref = srefs[k]
                        h = key_hash(p + koff[k], klen[k])
                        s = self._lookup(p + koff[k], klen[k], h)
                        if s != NULL:
                            if s.ref != ref:
                                remap[ref] = s.ref
                            continue
                        s = self._create(p + koff[k], klen[k], h, ref)
                        lim = INT64_MIN
                        if mmapped is not None and mmapped.n:
                            a = mmapped.find(ref, &b)
                            if a >= 0:
                                _attach_index(self, s, mmapped, a, b)
                                if s.n_mm:
                                    lim = s.mm[s.n_mm - 1].maxt
                        # dense while refs stay within a few times the series count
                        if ref < 4 * <uint64_t>self._by_ref.n + (1 << 20):
                            if rp_cover(&rp, ref) != 0:
                                raise MemoryError()
                            e = &rp.slots[ref]
                            e.s = s
                            e.lim = lim
                            e.lt = INT64_MIN
                            e.lv = 0
                elif rtype in _histrecords.HISTOGRAM_RECORD_TYPES:
                    rec = PyBytes_FromStringAndSize(<const char *>p, plen)
                    for ref_, t, hist in _histrecords.decode_histogram_record(rec):
                        ref = remap.get(ref_, ref_)
                        s = <series_t *>hm_get(&self._by_ref, ref)
                        if s == NULL or t < min_valid:
                            continue
                        rp_push(&rp, ref)
                        if t == s.last_t:
                            continue
                        skipped = False
                        if t > s.last_t:
                            st = self._hist.get(s.ref)
                            if st is not None and st.chunks and t <= st.chunks[-1][2]:
                                s.last_t = t
                                s.last_vbits = HIST_VBITS
                                st.last_t = t
                                st.last_h = hist
                                self._note_time(t)
                                n_skip += 1
                                skipped = True
                        if not skipped:
                            self._hist_apply(s, t, hist)
                            n_samples += 1
                            n_app += 1
                        rp_pull(&rp, ref)
                elif rtype == REC_EXEMPLARS:
                    rec = PyBytes_FromStringAndSize(<const char *>p, plen)
                    for ref_, t, v, ekey in _records.decode_exemplars(rec):
                        ref_ = remap.get(ref_, ref_)
                        if hm_get(&self._by_ref, <uint64_t>ref_) != NULL:
                            self._exemplars.add(ref_, t, v, ekey)
                elif rtype == REC_METADATA:
                    rec = PyBytes_FromStringAndSize(<const char *>p, plen)
                    for ref_, mtype, unit, help_ in _records.decode_metadata(rec):
                        ref_ = remap.get(ref_, ref_)
                        s = <series_t *>hm_get(&self._by_ref, <uint64_t>ref_)
                        if s != NULL:
                            name = _labels.labels_dict(self._key(s)).get("__name__")
                            if name:
                                self._metadata[name] = (mtype, help_, unit)
            records.finish(reader)
        finally:
            self._replaying = False
            # the series take what replay saw last (skipped samples only moved the slots)
            for k in range(<Py_ssize_t>rp.n):
                rp_push(&rp, k)
            free(rp.slots)
            free(refs); free(ts); free(vs)
            free(srefs); free(koff); free(klen)
        st_ = self.replay_stats
        st_["samples_replayed"] += n_app
        st_["samples_skipped_mmapped"] += n_skip
        st_["wal_records"] += n_recs
        if mmapped is not None:
            # chunks of series the WAL no longer has (garbage-collected): never read
            st_["mmapped_chunks_dropped"] += mmapped.n - mmapped.consumed
        log.info("replayed WAL %s: %d series, %d samples (%d already m-mapped)", wal_dir,
                 self._by_ref.n, n_samples, n_skip)

    # ---- reading ---------------------------------------------------------------------

    cdef Py_ssize_t _count_in(self, series_t *s, int64_t mint, int64_t maxt) noexcept nogil:
        """Upper bound of the samples of s in [mint, maxt] (whole chunks counted)."""
        cdef Py_ssize_t n = 0
        cdef uint32_t k
        cdef const uint8_t *p
        cdef size_t plen
        cdef uint8_t enc
        for k in range(s.n_mm):
            if s.mm[k].maxt >= mint and s.mm[k].mint <= maxt:
                p = self._hc_get(s.mm[k].ref, &plen, &enc)
                if p != NULL:
                    n += xor_num_samples(p, plen)
        if xor_app_count(&s.app) and s.last_t >= mint and open_mint(s) <= maxt:
            n += xor_app_count(&s.app)
        if s.ooo != NULL:
            n += s.ooo.n
        return n

    cdef Py_ssize_t _read(self, series_t *s, int64_t mint, int64_t maxt, int64_t *ts, double *vs,
                          Py_ssize_t cap) noexcept nogil:
        """Decode the samples of s in [mint, maxt] in time order; count, or -1 if corrupt."""
        cdef Py_ssize_t n = 0, got, lo, hi
        cdef uint32_t k
        cdef const uint8_t *p
        cdef size_t plen
        cdef uint8_t enc
        for k in range(s.n_mm):
            if s.mm[k].maxt >= mint and s.mm[k].mint <= maxt:
                p = self._hc_get(s.mm[k].ref, &plen, &enc)
                if p == NULL:
                    return -1
                got = xor_decode_range(p, plen, mint, maxt, ts + n, vs + n, cap - n)
                if got < 0:
                    return -1
                n += got
        if xor_app_count(&s.app) and s.last_t >= mint and open_mint(s) <= maxt:
            got = xor_decode_range(xor_app_data(&s.app), xor_app_len(&s.app), mint, maxt,
                                   ts + n, vs + n, cap - n)
            if got < 0:
                return -1
            n += got
        if s.ooo != NULL and s.ooo.n:
            lo = 0
            while lo < s.ooo.n and s.ooo.ts[lo] < mint:
                lo += 1
            hi = lo
            while hi < s.ooo.n and s.ooo.ts[hi] <= maxt:
                hi += 1
            if hi > lo:
                n = merge_ooo(ts, vs, n, cap, s.ooo.ts + lo, s.ooo.vs + lo, hi - lo)
        return n

    cdef const uint8_t *_hc_get(self, uint64_t ref, size_t *n, uint8_t *enc) noexcept nogil:
        # the file list may grow under a concurrent cut; the chunk bytes themselves stay put
        # until truncation, which readers keep out (_gc)
        cdef const uint8_t *p
        pthread_mutex_lock(&self._hc_mu)
        p = self._hc.hc_get(ref, n, enc)
        pthread_mutex_unlock(&self._hc_mu)
        return p

    cdef Py_ssize_t _read_into(self, series_t *s, int64_t mint, int64_t maxt, sbuf_t *b) noexcept nogil:
        """Append s's samples in [mint, maxt] to b under s's stripe lock: the count, -1 if a
        chunk does not decode, -2 out of memory."""
        cdef Py_ssize_t cap, n = 0
        urdar_stripe_lock(stripe_of(self._stripes, s))
        cap = self._count_in(s, mint, maxt)
        if cap:
            if sbuf_reserve(b, cap) != 0:
                n = -2
            else:
                n = self._read(s, mint, maxt, b.ts + b.n, b.vs + b.n, cap)
                if n > 0:
                    b.n += n
        urdar_stripe_unlock(stripe_of(self._stripes, s))
        return n

    cdef tuple _series_samples(self, series_t *s, int64_t mint, int64_t maxt, sbuf_t *b):
        # b is the caller's scratch (emptied here): one copy out of the series under its
        # stripe lock without the GIL, then into arrays
        cdef Py_ssize_t n
        cdef carray tsa, vsa
        b.n = 0
        with nogil:
            n = self._read_into(s, mint, maxt, b)
        if n == -2:
            raise MemoryError()
        if n < 0:
            raise CorruptionError(self.dir, 0, "head chunk of series %d does not decode" % s.ref)
        tsa = clone(_I64_TEMPLATE, n, False)
        vsa = clone(_F64_TEMPLATE, n, False)
        if n:
            memcpy(tsa.data.as_longlongs, b.ts, n * sizeof(int64_t))
            memcpy(vsa.data.as_doubles, b.vs, n * sizeof(double))
        return tsa, vsa

    def postings_for(self, matchers):
        """Sorted array('Q') of refs of series matching all matchers."""
        shard, matchers = _sharding.split_shard_matchers(matchers)
        with nogil:
            pthread_rwlock_rdlock(&self._maps)
        try:
            refs = array("Q", _matchers.postings_for_matchers(self, matchers))
            return refs if shard is None else self._in_shard(refs, shard.index, shard.count)
        finally:
            pthread_rwlock_unlock(&self._maps)

    cdef _in_shard(self, refs, uint64_t shard_index, uint64_t shard_count):
        """The refs of `refs` whose series are in the shard (_maps held)."""
        cdef series_t *s
        cdef uint64_t ref
        out = array("Q")
        for ref in refs:
            s = <series_t *>hm_get(&self._by_ref, ref)
            if s == NULL:
                continue
            key = self._key(s)
            if shard_hash(key, len(key)) % shard_count == shard_index:
                out.append(ref)
        return out

    # index protocol used by urdar.engine.matchers (called with _maps held, or _commit)
    postings_typecode = "Q"

    def label_values(self, name):
        return self._ix.label_values(name)

    def label_values_with_prefix(self, name, prefix):
        return self._ix.label_values(name, prefix)

    def label_names(self):
        return self._ix.label_names()

    def postings(self, name, value):
        return self._ix.postings(name, value)

    def postings_for_values(self, name, values):
        return self._ix.postings_for_values(name, values)

    def all_postings(self):
        return self._ix.all_postings()

    cdef bint _in_range(self, series_t *s, int64_t mint, int64_t maxt) noexcept nogil:
        cdef int64_t smin, smax
        if s.n_mm:
            smin = s.mm[0].mint
        elif xor_app_count(&s.app):
            smin = open_mint(s)
        else:
            smin = INT64_MAX
        smax = s.last_t
        if s.ooo != NULL and s.ooo.n:
            if s.ooo.ts[0] < smin:
                smin = s.ooo.ts[0]
        return smin <= maxt and smax >= mint and smin != INT64_MAX

    def select(self, matchers, int64_t mint=INT64_MIN, int64_t maxt=INT64_MAX, bint samples=True):
        """Series matching `matchers` with data in [mint, maxt] (ms, inclusive).

        Returns a list of (label key, array('q') timestamps, array('d') values) in ref order;
        with samples=False the arrays are None (series and label APIs). Appends go on
        meanwhile: each series is read as it is at one moment."""
        cdef series_t *s
        cdef series_t **sp = NULL
        cdef Py_ssize_t k, n = 0, got
        cdef Py_ssize_t *offs = NULL
        cdef uint8_t *flags = NULL      # 1: float samples in range (or, samples=False, data in range)
        cdef sbuf_t b
        cdef uint64_t ref
        cdef uint64_t shard_index = 0, shard_count = 0
        cdef int err = 0
        cdef bint want = samples
        cdef carray tsa, vsa
        # A __query_shard__ matcher is no label: taken out here, applied per series before any
        # sample is read (engine/sharding.py; the same hash as blocks and store-gateways).
        shard, matchers = _sharding.split_shard_matchers(matchers)
        if shard is not None:
            shard_index, shard_count = shard.index, shard.count
        b.ts = NULL
        b.vs = NULL
        b.n = 0
        b.cap = 0
        out = []
        with nogil:
            pthread_rwlock_rdlock(&self._gc)
        try:
            # the series and their label keys, under _maps shortly (the keys are rebuilt from
            # the index's symbols, which move while a series is created); the structs stay
            # while _gc is held
            keys = []
            with nogil:
                pthread_rwlock_rdlock(&self._maps)
            try:
                refs = _matchers.postings_for_matchers(self, matchers)
                sp = <series_t **>malloc((len(refs) + 1) * sizeof(series_t *))
                if sp == NULL:
                    raise MemoryError()
                for ref in refs:
                    s = <series_t *>hm_get(&self._by_ref, ref)
                    if s == NULL:
                        continue
                    key = self._key(s)
                    if shard_count and shard_hash(key, len(key)) % shard_count != shard_index:
                        continue
                    keys.append(key)
                    sp[n] = s
                    n += 1
            finally:
                pthread_rwlock_unlock(&self._maps)
            offs = <Py_ssize_t *>malloc((n + 1) * sizeof(Py_ssize_t))
            flags = <uint8_t *>calloc(n + 1, 1)
            if offs == NULL or flags == NULL:
                raise MemoryError()
            # every series' samples copied out under its stripe lock, in one pass without the GIL
            with nogil:
                for k in range(n):
                    s = sp[k]
                    offs[k] = b.n
                    urdar_stripe_lock(stripe_of(self._stripes, s))
                    flags[k] = self._in_range(s, mint, maxt)
                    urdar_stripe_unlock(stripe_of(self._stripes, s))
                    if flags[k] and want:
                        got = self._read_into(s, mint, maxt, &b)
                        if got < 0:
                            err = <int>got
                            break
                offs[n] = b.n
            if err == -2:
                raise MemoryError()
            if err:
                raise CorruptionError(self.dir, 0, "head chunk of series %d does not decode" % s.ref)
            hist = self._hist
            for k in range(n):
                s = sp[k]
                st = None
                if hist:
                    with self._hist_lock:
                        st = hist.get(s.ref)
                        if st is not None and not st.overlaps(mint, maxt):
                            st = None
                        elif st is not None and samples:
                            hts, hvs = self._hist_samples(s, mint, maxt)
                if not flags[k] and st is None:
                    continue
                key = keys[k]
                if not samples:
                    out.append((key, None, None))
                    continue
                got = offs[k + 1] - offs[k]
                tsa = clone(_I64_TEMPLATE, got, False)
                vsa = clone(_F64_TEMPLATE, got, False)
                if got:
                    memcpy(tsa.data.as_longlongs, b.ts + offs[k], got * sizeof(int64_t))
                    memcpy(vsa.data.as_doubles, b.vs + offs[k], got * sizeof(double))
                if st is not None and len(hts):
                    out.append((key, tsa, vsa, None, hts, hvs))
                    continue
                if got == 0:
                    continue
                out.append((key, tsa, vsa))
        finally:
            pthread_rwlock_unlock(&self._gc)
            free(sp)
            free(offs)
            free(flags)
            free(b.ts)
            free(b.vs)
        return out

    def exemplars(self, matchers, int64_t mint, int64_t maxt):
        """[(series key, [(t, v, exemplar label key), ...])] for matching series."""
        cdef series_t *s
        shard, matchers = _sharding.split_shard_matchers(matchers)
        # _commit: the exemplar store changes under it, and no series is freed meanwhile
        with self._commit:
            refs = _matchers.postings_for_matchers(self, matchers)
            if shard is not None:
                refs = self._in_shard(refs, shard.index, shard.count)
            found = self._exemplars.select(refs, mint, maxt)
            out = []
            for ref, items in found.items():
                s = <series_t *>hm_get(&self._by_ref, <uint64_t>ref)
                if s != NULL:
                    out.append((self._key(s), items))
            return out

    def label_names_for(self, matchers=(), int64_t mint=INT64_MIN, int64_t maxt=INT64_MAX):
        """Sorted label names of series matching matchers with data in [mint, maxt]."""
        if not matchers:
            # Without matchers, a range holding every sample of the head is answered from the
            # index (as Prometheus' head does), not by reading every series: an API request's
            # default range is not INT64_MIN..MAX, and the querier clamps it to the ingesters'
            # window. Checked under _maps: truncation resets mint while holding it for writing.
            with nogil:
                pthread_rwlock_rdlock(&self._maps)
            try:
                if mint <= self.mint and maxt >= self.maxt:
                    return self.label_names()
            finally:
                pthread_rwlock_unlock(&self._maps)
        return _labels.names_of_keys([k for k, _, _ in self.select(matchers, mint, maxt, samples=False)])

    def label_values_for(self, name, matchers=(), int64_t mint=INT64_MIN, int64_t maxt=INT64_MAX):
        """Sorted values of label `name` among series matching matchers with data in [mint, maxt]."""
        if not matchers:
            with nogil:
                pthread_rwlock_rdlock(&self._maps)
            try:
                if mint <= self.mint and maxt >= self.maxt:
                    return self.label_values(name)
            finally:
                pthread_rwlock_unlock(&self._maps)
        return _labels.values_of_keys([k for k, _, _ in self.select(matchers, mint, maxt, samples=False)],
                                      name)

    @property
    def num_series(self):
        return self._by_ref.n

    def memory_stats(self):
        """Where the head's bytes go (slab slot sizes of series structs and open chunks, malloc'd
        sizes including the allocator's 8-byte header elsewhere; the label index as
        HeadIndex.memory() counts it). For the memory benchmark's table."""
        cdef size_t i, structs = 0, chunks = 0, mm = 0, ooo = 0, ck = 0, mapped, used
        cdef series_t *s
        # _commit and drained: no series is created, freed or written meanwhile
        with self._commit:
            with nogil:
                self._drain()
            for i in range(self._by_ref.mask + 1):
                s = <series_t *>self._by_ref.e[i].v
                if s == NULL:
                    continue
                structs += urdar_slab_size(CK_OFFSET + s.cklen)
                ck += s.cklen
                chunks += s.app.buf.cap
                if s.mm != NULL:
                    mm += malloc_usable_size(s.mm) + 8
                if s.ooo != NULL:
                    ooo += malloc_usable_size(s.ooo) + malloc_usable_size(s.ooo.ts) + malloc_usable_size(s.ooo.vs) + 24
            out = {"series": self._by_ref.n, "series_structs": structs, "compact_keys": ck,
                   "open_chunks": chunks, "mmapped_chunk_refs": mm, "ooo_buffers": ooo,
                   "series_maps": (self._by_ref.mask + 1 + self._by_hash.mask + 1) * 16}
            # the free room of the slabs (process-wide: the heads of all tenants share them)
            urdar_slab_usage(&mapped, &used)
            out["slab_free_room_all_heads"] = mapped - used
            out.update({"index_" + k: v for k, v in self._ix.memory().items()})
            return out

    def stats(self):
        """Numbers for /metrics and the status pages."""
        with self._commit:
            return {"series": self._by_ref.n, "mint": self.mint, "maxt": self.maxt,
                    "min_valid_time": self.min_valid_time, "exemplars": len(self._exemplars),
                    "metadata": len(self._metadata)}

    # ---- blocks and truncation -----------------------------------------------------

    def compactable_range(self):
        """(mint, maxt) of the next block to cut, or None (Prometheus: when the head spans
        more than 1.5 block ranges, the oldest aligned range is cut)."""
        with self._commit:
            if self.maxt == INT64_MIN or self.maxt - self.mint <= self.chunk_range * 3 // 2:
                return None
            lo = (self.mint // self.chunk_range) * self.chunk_range
            return lo, lo + self.chunk_range

    def seal(self, int64_t t):
        """Refuse appends older than t from now on (before a block up to t is written, so
        no sample can slip into its range between the copy and the truncation)."""
        with self._commit:
            if t > self.min_valid_time:
                self.min_valid_time = t
            # batches that passed their checks before this reach memory before it returns
            with nogil:
                self._drain()

    def chunks_for_block(self, int64_t mint, int64_t maxt):
        """Series with samples in [mint, maxt) as (key, [(cmint, cmaxt, encoding, bytes)]).

        In-order chunks are copied as they are; series with out-of-order samples in the
        range get their samples merged and re-encoded."""
        cdef series_t *s
        cdef size_t i, plen
        cdef uint32_t k
        cdef const uint8_t *p
        cdef uint8_t enc
        cdef bint has_ooo
        cdef sbuf_t sb
        from urdar.engine.xorchunk import encode_xor
        out = []
        sb.ts = NULL
        sb.vs = NULL
        sb.cap = 0
        # Appends stopped and drained (seal ran before for this range): series change only
        # under _commit now, and readers only read.
        with self._commit:
          with nogil:
              self._drain()
          try:
            for i in range(self._by_ref.mask + 1):
                s = <series_t *>self._by_ref.e[i].v
                if s == NULL:
                    continue
                has_ooo = False
                if s.ooo != NULL:
                    for k in range(s.ooo.n):
                        if mint <= s.ooo.ts[k] < maxt:
                            has_ooo = True
                            break
                key = self._key(s)
                if has_ooo:
                    tsa, vsa = self._series_samples(s, mint, maxt - 1, &sb)
                    chunks = []
                    for a in range(0, len(tsa), self.samples_per_chunk):
                        b = min(a + self.samples_per_chunk, len(tsa))
                        chunks.append((tsa[a], tsa[b - 1], 1, encode_xor(tsa[a:b], vsa[a:b])))
                    if self._hist and s.ref in self._hist:
                        chunks.extend(self._hist_block_chunks(s, mint, maxt))
                        chunks.sort(key=lambda c: (c[0], c[1]))
                    if chunks:
                        out.append((key, chunks))
                    continue
                chunks = []
                for k in range(s.n_mm):
                    if s.mm[k].mint >= mint and s.mm[k].maxt < maxt:
                        p = self._hc_get(s.mm[k].ref, &plen, &enc)
                        if p == NULL:
                            raise CorruptionError(self.dir, s.mm[k].ref, "head chunk missing")
                        chunks.append((s.mm[k].mint, s.mm[k].maxt, enc,
                                       PyBytes_FromStringAndSize(<const char *>p, plen)))
                if xor_app_count(&s.app) and open_mint(s) >= mint and s.last_t < maxt:
                    chunks.append((open_mint(s), s.last_t, 1,
                                   PyBytes_FromStringAndSize(<const char *>xor_app_data(&s.app),
                                                             xor_app_len(&s.app))))
                if self._hist and s.ref in self._hist:
                    chunks.extend(self._hist_block_chunks(s, mint, maxt))
                    chunks.sort(key=lambda c: (c[0], c[1]))
                if chunks:
                    out.append((key, chunks))
          finally:
            free(sb.ts)
            free(sb.vs)
        return out

    def truncate(self, int64_t mint):
        """Drop everything older than mint (after a block up to mint was written), garbage-
        collect empty series, then checkpoint the WAL. Returns the number of series removed."""
        cdef series_t *s
        cdef size_t i
        cdef uint32_t k, keep
        cdef uint32_t lo
        cdef int64_t oldest
        removed = []
        # appends stopped and drained, readers out: series and chunk files may go
        with self._commit:
          with nogil:
              self._drain()
              pthread_rwlock_wrlock(&self._gc)
              pthread_rwlock_wrlock(&self._maps)
          try:
            self._forgets += 1
            if mint > self.min_valid_time:
                self.min_valid_time = mint
            for i in range(self._by_ref.mask + 1):
                s = <series_t *>self._by_ref.e[i].v
                if s == NULL:
                    continue
                keep = 0
                for k in range(s.n_mm):
                    if s.mm[k].maxt >= mint:
                        s.mm[keep] = s.mm[k]
                        keep += 1
                s.n_mm = keep
                if xor_app_count(&s.app) and s.last_t < mint:
                    chunk_clear(&s.app)
                if s.ooo != NULL:
                    lo = 0
                    while lo < s.ooo.n and s.ooo.ts[lo] < mint:
                        lo += 1
                    if lo:
                        memmove_i64(s.ooo.ts, s.ooo.ts + lo, s.ooo.n - lo)
                        memmove_f64(s.ooo.vs, s.ooo.vs + lo, s.ooo.n - lo)
                        s.ooo.n -= lo
                st = self._hist.get(s.ref) if self._hist else None
                if st is not None and st.truncate(mint):
                    del self._hist[s.ref]
                    st = None
                if (s.n_mm == 0 and xor_app_count(&s.app) == 0 and (s.ooo == NULL or s.ooo.n == 0)
                        and st is None):
                    removed.append(<uint64_t>s.ref)
            if removed:
                self._remove_series(removed)
            # The head starts at its oldest remaining sample, not at the cut (Prometheus sets
            # minTime from gc's actual mint): after one ancient sample is cut away, the next
            # compaction jumps to the range holding data instead of cutting every empty range
            # in between, each with a checkpoint.
            self.mint = INT64_MAX
            for i in range(self._by_ref.mask + 1):
                s = <series_t *>self._by_ref.e[i].v
                if s != NULL:
                    oldest = self._oldest(s)
                    st = self._hist.get(s.ref) if self._hist else None
                    if st is not None and st.oldest() < oldest:
                        oldest = st.oldest()
                    if oldest < self.mint:
                        self.mint = oldest
            if self._wal is not None:
                _write_truncated(self._hc.dir, mint)
            self._hc.remove_files_before(mint)
          finally:
            pthread_rwlock_unlock(&self._maps)
            pthread_rwlock_unlock(&self._gc)
          # readers and lookups may go on; the series map changes only under _commit
          if self._wal is not None:
              self._checkpoint(mint)
        return len(removed)

    cdef int64_t _oldest(self, series_t *s) noexcept nogil:
        """Time of the oldest sample of s in memory (INT64_MAX when it has none)."""
        cdef int64_t t = INT64_MAX
        if s.n_mm:
            t = s.mm[0].mint
        elif xor_app_count(&s.app):
            t = open_mint(s)
        if s.ooo != NULL and s.ooo.n and s.ooo.ts[0] < t:
            t = s.ooo.ts[0]
        return t

    def _checkpoint(self, int64_t mint):
        first, last = self._wal.segments()
        self._wal.next_segment()
        if last is None or first is None:
            return
        by_ref = self
        _wal.checkpoint(self._wal.dir, first, last, lambda ref: by_ref._has_ref(ref), mint)

    def _has_ref(self, uint64_t ref):
        return hm_get(&self._by_ref, ref) != NULL

