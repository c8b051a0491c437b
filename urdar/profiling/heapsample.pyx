# cython: language_level=3
"""Sampled heap profiling by an allocator hook, as Go's runtime does (MemProfileRate).

`start(rate)` wraps the interpreter's allocators of the PYMEM_DOMAIN_MEM and PYMEM_DOMAIN_OBJ
domains (PyMem_Malloc and PyObject_Malloc: every Python object and buffer) with hooks that call
the previous allocator and, about once per `rate` allocated bytes, record the allocation:
a countdown of bytes drawn from an exponential distribution with mean `rate` is decreased by
each allocation's size, and the allocation that takes it to zero or below is sampled, so an
allocation of s bytes is sampled with probability 1 - exp(-s/rate) (a Poisson process over
bytes, Go's scheme). A sample records the Python stack (heapframes.h, allocation-free) into a
bucket keyed by (stack, size) with Go's four counters (allocs, frees, alloc bytes, free bytes),
and its pointer into a small open-addressing table, so that freeing a sampled pointer moves it
from in-use to freed. `snapshot()` copies the buckets out; heap.py unscales and encodes them.

Why this is safe without locks: these two domains may only be called with the GIL held (the C
API's rule), and nothing on the hook's path releases it or runs Python code: the tables live in
libc memory (malloc/calloc are not hooked) and the stack walk allocates nothing. So the GIL
orders every hook call, one global countdown serves all threads (a per-thread one would draw the
same Poisson process), and fork() (which runs with the GIL held) copies consistent tables.
A `_busy` flag makes a hook reached from inside the sampling path pass through.
The RAW domain is not hooked: it may run without the GIL, and pymalloc already sends objects
above 512 bytes there, which would count them twice. Cost for an allocation that is not sampled:
one indirect call, a subtraction and a compare; for a free, one probe of the pointer table
(empty in the common case: it holds about heap size / rate entries); benchmarks/profiling_bench.py.

`stop()` restores the previous allocators when ours are still on top; when another hook (such as
tracemalloc's) wrapped ours later, ours stays in its chain and only passes calls through. It runs
at interpreter exit (atexit), so finalization never reaches a half-torn-down sampler."""
import atexit

from libc.stdint cimport INT64_MAX, int32_t, int64_t, uint64_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcmp, memcpy
from libc.math cimport log
from cpython.object cimport PyObject

cdef extern from "Python.h":
    ctypedef enum PyMemAllocatorDomain:
        PYMEM_DOMAIN_RAW
        PYMEM_DOMAIN_MEM
        PYMEM_DOMAIN_OBJ

    ctypedef struct PyMemAllocatorEx:
        void *ctx
        void *(*malloc)(void *ctx, size_t size) noexcept nogil
        void *(*calloc)(void *ctx, size_t nelem, size_t elsize) noexcept nogil
        void *(*realloc)(void *ctx, void *ptr, size_t new_size) noexcept nogil
        void (*free)(void *ctx, void *ptr) noexcept nogil

    void PyMem_GetAllocator(PyMemAllocatorDomain domain, PyMemAllocatorEx *allocator)
    void PyMem_SetAllocator(PyMemAllocatorDomain domain, PyMemAllocatorEx *allocator)
    ctypedef struct PyCodeObject
    int PyCode_Addr2Line(PyCodeObject *code, int byte_offset)

cdef extern from "heapframes.h":
    int hf_stack(PyObject **codes, int *lastis, int max) noexcept nogil
    void hf_incref(PyObject *o) noexcept nogil
    void hf_decref(PyObject *o) noexcept nogil

cdef enum:
    MAX_DEPTH = 64          # frames kept per sample (Go keeps 32 by default; Python stacks are deeper)
    MAX_BUCKETS = 1 << 16   # distinct (stack, size) pairs; later new ones are counted as dropped
    N_DOMAINS = 2

DEFAULT_RATE = 512 * 1024   # Go's runtime.MemProfileRate default

ctypedef struct Bucket:
    uint64_t hash
    size_t size
    int32_t nframes
    int32_t next            # next bucket in the same hash chain, -1 ends it
    PyObject **codes        # strong references, nframes of them, leaf first
    int *lastis
    int64_t allocs
    int64_t frees
    int64_t alloc_bytes
    int64_t free_bytes

ctypedef struct Domain:
    PyMemAllocatorDomain id
    PyMemAllocatorEx prev   # the allocator we wrap
    PyMemAllocatorEx ours
    bint hooked             # our hook is in this domain's chain (on top or wrapped by another)

# All state below is read and written with the GIL held (see the module docstring).
cdef Domain _domains[N_DOMAINS]
cdef int64_t _rate = 0              # mean bytes between samples; 0: hooks pass everything through
cdef int64_t _countdown = 0x7FFFFFFFFFFFFFFFULL
cdef uint64_t _rng = 0x9E3779B97F4A7C15ULL
cdef bint _busy = False
cdef int64_t _dropped = 0           # samples lost to a full bucket table or failed libc malloc
cdef int64_t _sampled = 0           # samples recorded since start()

cdef Bucket *_buckets = NULL
cdef int32_t _nbuckets = 0
cdef int32_t _cap_buckets = 0
cdef int32_t *_heads = NULL         # hash -> first bucket, -1 if none
cdef uint64_t _heads_mask = 0

cdef void **_live_ptr = NULL        # sampled pointers not freed yet (NULL: empty slot)
cdef int32_t *_live_bucket = NULL
cdef size_t _live_mask = 0
cdef size_t _live_n = 0


# ---- random countdown ------------------------------------------------------------------------

cdef inline uint64_t _next_random() noexcept nogil:
    # xorshift64*: plenty for choosing sample points, and no state outside this module.
    global _rng
    _rng ^= _rng >> 12
    _rng ^= _rng << 25
    _rng ^= _rng >> 27
    return _rng * 0x2545F4914F6CDD1DULL


cdef inline int64_t _next_countdown() noexcept nogil:
    """Bytes until the next sample: exponential with mean _rate (1: every allocation)."""
    if _rate <= 0:
        return 0x7FFFFFFFFFFFFFFFULL
    if _rate == 1:
        return 0
    cdef double u = (<double>((_next_random() >> 11) + 1)) * (1.0 / 9007199254740992.0)  # (0, 1]
    return <int64_t>(-log(u) * <double>_rate) + 1


# ---- sampled pointers ------------------------------------------------------------------------

cdef inline size_t _ptr_slot(void *p) noexcept nogil:
    # Allocations are 16-byte aligned: drop those bits, then Fibonacci hashing.
    return <size_t>(((<uint64_t>p >> 4) * <uint64_t>0x9E3779B97F4A7C15ULL) >> 20) & _live_mask


cdef int _live_grow() noexcept nogil:
    """Double the pointer table (keeps it at most half full); 0 on libc malloc failure."""
    global _live_ptr, _live_bucket, _live_mask
    cdef size_t cap = 2 * (_live_mask + 1) if _live_ptr != NULL else 1024
    cdef void **ptrs = <void **>calloc(cap, sizeof(void *))
    cdef int32_t *bks = <int32_t *>malloc(cap * sizeof(int32_t))
    cdef size_t i, j, old_cap = _live_mask + 1 if _live_ptr != NULL else 0
    cdef void **old_ptrs = _live_ptr
    cdef int32_t *old_bks = _live_bucket
    if ptrs == NULL or bks == NULL:
        free(ptrs)
        free(bks)
        return 0
    _live_ptr, _live_bucket, _live_mask = ptrs, bks, cap - 1
    for i in range(old_cap):
        if old_ptrs[i] != NULL:
            j = _ptr_slot(old_ptrs[i])
            while ptrs[j] != NULL:
                j = (j + 1) & _live_mask
            ptrs[j] = old_ptrs[i]
            bks[j] = old_bks[i]
    free(old_ptrs)
    free(old_bks)
    return 1


cdef inline void _bucket_free(int32_t b) noexcept nogil:
    _buckets[b].frees += 1
    _buckets[b].free_bytes += <int64_t>_buckets[b].size


cdef int _live_insert(void *p, int32_t b) noexcept nogil:
    global _live_n
    cdef size_t i
    if _live_ptr == NULL or 2 * (_live_n + 1) > _live_mask + 1:
        if not _live_grow():
            return 0
    i = _ptr_slot(p)
    while _live_ptr[i] != NULL:
        if _live_ptr[i] == p:       # a pointer we never saw freed (freed in another domain): replace
            _bucket_free(_live_bucket[i])
            _live_bucket[i] = b
            return 1
        i = (i + 1) & _live_mask
    _live_ptr[i] = p
    _live_bucket[i] = b
    _live_n += 1
    return 1


cdef inline void _live_forget(void *p) noexcept nogil:
    """If p was sampled, count it freed and drop it (backward-shift deletion, no tombstones)."""
    global _live_n
    cdef size_t i = _ptr_slot(p), j, k
    while _live_ptr[i] != p:
        if _live_ptr[i] == NULL:
            return                  # the common case: not sampled, usually on the first probe
        i = (i + 1) & _live_mask
    _bucket_free(_live_bucket[i])
    _live_n -= 1
    # Move later entries of the probe run into the hole when their home slot allows it.
    j = i
    while True:
        j = (j + 1) & _live_mask
        if _live_ptr[j] == NULL:
            break
        k = _ptr_slot(_live_ptr[j])
        if (j > i and (k <= i or k > j)) or (j < i and (k <= i and k > j)):
            _live_ptr[i] = _live_ptr[j]
            _live_bucket[i] = _live_bucket[j]
            i = j
    _live_ptr[i] = NULL


# ---- buckets ---------------------------------------------------------------------------------

cdef uint64_t _stack_hash(PyObject **codes, int *lastis, int n, size_t size) noexcept nogil:
    cdef uint64_t h = <uint64_t>size * 0x9E3779B97F4A7C15ULL + <uint64_t>n
    cdef int i
    for i in range(n):
        h = (h ^ <uint64_t>codes[i]) * 0x100000001B3ULL
        h = (h ^ <uint64_t>lastis[i]) * 0x100000001B3ULL
    return h ^ (h >> 29)


cdef int _heads_grow() noexcept nogil:
    global _heads, _heads_mask
    cdef uint64_t cap = 2 * (_heads_mask + 1) if _heads != NULL else 256
    cdef int32_t *heads = <int32_t *>malloc(cap * sizeof(int32_t))
    cdef int32_t b
    cdef uint64_t i
    if heads == NULL:
        return 0
    for i in range(cap):
        heads[i] = -1
    free(_heads)
    _heads, _heads_mask = heads, cap - 1
    for b in range(_nbuckets):
        i = _buckets[b].hash & _heads_mask
        _buckets[b].next = heads[i]
        heads[i] = b
    return 1


cdef int32_t _bucket_for(PyObject **codes, int *lastis, int n, size_t size) noexcept nogil:
    """The bucket of (stack, size), created on first use; -1 when the table is full or libc
    malloc failed. A new bucket holds references to its code objects (for their names and lines)."""
    global _buckets, _nbuckets, _cap_buckets
    cdef uint64_t h = _stack_hash(codes, lastis, n, size)
    cdef int32_t b
    cdef Bucket *nb
    cdef int i
    if _heads != NULL:
        b = _heads[h & _heads_mask]
        while b >= 0:
            nb = &_buckets[b]
            if (nb.hash == h and nb.size == size and nb.nframes == n
                    and memcmp(nb.codes, codes, n * sizeof(PyObject *)) == 0
                    and memcmp(nb.lastis, lastis, n * sizeof(int)) == 0):
                return b
            b = nb.next
    if _nbuckets >= MAX_BUCKETS:
        return -1
    if _nbuckets == _cap_buckets:
        nb = <Bucket *>realloc(_buckets, (2 * _cap_buckets + 64) * sizeof(Bucket))
        if nb == NULL:
            return -1
        _buckets, _cap_buckets = nb, 2 * _cap_buckets + 64
    if _heads == NULL or _nbuckets + 1 > <int32_t>(_heads_mask + 1):
        if not _heads_grow():
            return -1
    nb = &_buckets[_nbuckets]
    nb.codes = <PyObject **>malloc((n + 1) * sizeof(PyObject *))
    nb.lastis = <int *>malloc((n + 1) * sizeof(int))
    if nb.codes == NULL or nb.lastis == NULL:
        free(nb.codes)
        free(nb.lastis)
        return -1
    memcpy(nb.codes, codes, n * sizeof(PyObject *))
    memcpy(nb.lastis, lastis, n * sizeof(int))
    for i in range(n):
        hf_incref(codes[i])
    nb.hash, nb.size, nb.nframes = h, size, n
    nb.allocs = nb.frees = nb.alloc_bytes = nb.free_bytes = 0
    b = _nbuckets
    nb.next = _heads[h & _heads_mask]
    _heads[h & _heads_mask] = b
    _nbuckets += 1
    return b


cdef void _sample(void *p, size_t size) noexcept nogil:
    """Record the allocation p of size bytes (the countdown reached zero)."""
    global _busy, _countdown, _dropped, _sampled
    cdef PyObject *codes[MAX_DEPTH]
    cdef int lastis[MAX_DEPTH]
    cdef int n
    cdef int32_t b
    _countdown = _next_countdown()
    if _busy or _rate <= 0:
        return
    _busy = True
    n = hf_stack(codes, lastis, MAX_DEPTH)
    b = _bucket_for(codes, lastis, n, size)
    if b >= 0 and _live_insert(p, b):
        _buckets[b].allocs += 1
        _buckets[b].alloc_bytes += <int64_t>size
        _sampled += 1
    else:
        _dropped += 1
    _busy = False


# ---- the hooks -------------------------------------------------------------------------------

cdef void *_hook_malloc(void *ctx, size_t size) noexcept nogil:
    global _countdown
    cdef Domain *d = <Domain *>ctx
    cdef void *p = d.prev.malloc(d.prev.ctx, size)
    _countdown -= <int64_t>size
    if _countdown <= 0 and p != NULL:
        _sample(p, size)
    return p


cdef void *_hook_calloc(void *ctx, size_t nelem, size_t elsize) noexcept nogil:
    global _countdown
    cdef Domain *d = <Domain *>ctx
    cdef void *p = d.prev.calloc(d.prev.ctx, nelem, elsize)
    _countdown -= <int64_t>(nelem * elsize)
    if _countdown <= 0 and p != NULL:
        _sample(p, nelem * elsize)
    return p


cdef void *_hook_realloc(void *ctx, void *ptr, size_t size) noexcept nogil:
    # Counted as a free of the old block and an allocation of the new one (tracemalloc's view).
    global _countdown
    cdef Domain *d = <Domain *>ctx
    if _live_n and ptr != NULL:
        _live_forget(ptr)
    cdef void *p = d.prev.realloc(d.prev.ctx, ptr, size)
    _countdown -= <int64_t>size
    if _countdown <= 0 and p != NULL:
        _sample(p, size)
    return p


cdef void _hook_free(void *ctx, void *ptr) noexcept nogil:
    cdef Domain *d = <Domain *>ctx
    if _live_n and ptr != NULL:
        _live_forget(ptr)
    d.prev.free(d.prev.ctx, ptr)


# ---- Python API ------------------------------------------------------------------------------

cdef void _clear_tables():
    """Forget every sample. The tables are detached before code objects are released: a release
    can free memory, which runs our free hook against the (by then empty) tables."""
    global _buckets, _nbuckets, _cap_buckets, _heads, _heads_mask
    global _live_ptr, _live_bucket, _live_mask, _live_n, _dropped, _sampled
    cdef Bucket *old = _buckets
    cdef int32_t n = _nbuckets, b, i
    free(_live_ptr)
    free(_live_bucket)
    _live_ptr, _live_bucket, _live_mask, _live_n = NULL, NULL, 0, 0
    free(_heads)
    _heads, _heads_mask = NULL, 0
    _buckets, _nbuckets, _cap_buckets = NULL, 0, 0
    _dropped = _sampled = 0
    for b in range(n):
        for i in range(old[b].nframes):
            hf_decref(old[b].codes[i])
        free(old[b].codes)
        free(old[b].lastis)
    free(old)


_atexit_registered = False


def start(int64_t rate=DEFAULT_RATE, seed=None):
    """Sample about one allocation per `rate` bytes from now on (1: every allocation; 0: none,
    which is `stop()`). Starting again only changes the rate; samples are kept. `seed` fixes the
    sample points (tests)."""
    global _rate, _countdown, _rng, _atexit_registered
    cdef int i
    cdef PyMemAllocatorDomain ids[N_DOMAINS]
    ids[0], ids[1] = PYMEM_DOMAIN_MEM, PYMEM_DOMAIN_OBJ
    if rate < 0:
        raise ValueError("rate must be >= 0 bytes, got %d" % rate)
    if rate == 0:
        stop()
        return
    if seed is not None:
        _rng = (<uint64_t>seed) * 0x9E3779B97F4A7C15ULL + 1
    elif not hooked():
        import os
        import time
        _rng ^= (<uint64_t>time.perf_counter_ns()) * 0x9E3779B97F4A7C15ULL ^ <uint64_t>os.getpid()
    _rate = rate
    _countdown = _next_countdown()
    for i in range(N_DOMAINS):
        if _domains[i].hooked:
            continue                # still in the chain under a later hook: it resumes sampling
        _domains[i].id = ids[i]
        PyMem_GetAllocator(ids[i], &_domains[i].prev)
        _domains[i].ours.ctx = &_domains[i]
        _domains[i].ours.malloc = _hook_malloc
        _domains[i].ours.calloc = _hook_calloc
        _domains[i].ours.realloc = _hook_realloc
        _domains[i].ours.free = _hook_free
        PyMem_SetAllocator(ids[i], &_domains[i].ours)
        _domains[i].hooked = True
    if not _atexit_registered:
        atexit.register(stop)
        _atexit_registered = True


def stop():
    """Stop sampling and forget every sample; unhook where ours is still the outermost hook."""
    global _rate, _countdown
    cdef int i
    cdef PyMemAllocatorEx cur
    _rate = 0
    _countdown = 0x7FFFFFFFFFFFFFFFULL
    for i in range(N_DOMAINS):
        if not _domains[i].hooked:
            continue
        PyMem_GetAllocator(_domains[i].id, &cur)
        if cur.malloc == _hook_malloc and cur.ctx == <void *>&_domains[i]:
            PyMem_SetAllocator(_domains[i].id, &_domains[i].prev)
            _domains[i].hooked = False
        # else: another hook wraps ours and will call it until it goes; ours passes through.
    _clear_tables()


def hooked():
    """True while our hook is in an allocator chain (sampling or passing through)."""
    return bool(_domains[0].hooked or _domains[1].hooked)


def rate():
    """Mean bytes between samples (0 when not sampling)."""
    return _rate


def stats():
    """{"sampled": samples recorded, "dropped": samples lost (table full), "buckets": distinct
    (stack, size) pairs, "live": sampled pointers not freed yet}."""
    return {"sampled": _sampled, "dropped": _dropped, "buckets": _nbuckets, "live": _live_n}


def snapshot():
    """[(stack, size, allocs, frees, alloc_bytes, free_bytes)] of every bucket: raw sampled
    counts (heap.py unscales them). A stack is a tuple of (code object, line), leaf first."""
    cdef int32_t n, b, i, total = 0
    cdef Bucket *copy
    cdef PyObject **codes
    cdef int *lastis
    cdef int pos = 0
    # First a copy in libc memory, with a reference on each code object, before creating any
    # Python object: those allocations may sample and grow (realloc) the live tables.
    n = _nbuckets
    for b in range(n):
        total += _buckets[b].nframes
    copy = <Bucket *>malloc((n + 1) * sizeof(Bucket))
    codes = <PyObject **>malloc((total + 1) * sizeof(PyObject *))
    lastis = <int *>malloc((total + 1) * sizeof(int))
    if copy == NULL or codes == NULL or lastis == NULL:
        free(copy)
        free(codes)
        free(lastis)
        raise MemoryError()
    for b in range(n):
        copy[b] = _buckets[b]
        memcpy(&codes[pos], _buckets[b].codes, _buckets[b].nframes * sizeof(PyObject *))
        memcpy(&lastis[pos], _buckets[b].lastis, _buckets[b].nframes * sizeof(int))
        pos += _buckets[b].nframes
    for i in range(total):
        hf_incref(codes[i])
    out = []
    pos = 0
    try:
        for b in range(n):
            stack = []
            for i in range(pos, pos + copy[b].nframes):
                code = <object>codes[i]
                stack.append((code, PyCode_Addr2Line(<PyCodeObject *>codes[i], lastis[i] * 2)))   # 2-byte code units
            pos += copy[b].nframes
            out.append((tuple(stack), copy[b].size, copy[b].allocs, copy[b].frees,
                        copy[b].alloc_bytes, copy[b].free_bytes))
    finally:
        for i in range(total):
            hf_decref(codes[i])
        free(copy)
        free(codes)
        free(lastis)
    return out
