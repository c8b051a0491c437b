# The head: the in-memory block of one tenant's TSDB (Prometheus' tsdb/head.go).
#
# Series live in C structs reached through two hash tables (ref -> series, key hash -> series).
# Each series holds its label key, its open XOR chunk (xor_app_t) and the refs of its full
# chunks, which live m-mapped in chunks_head/ files. Out-of-order samples wait in a small
# sorted buffer per series. Label sets, symbols and postings live in a HeadIndex
# (headindex.pxd): a series keeps only its compact key (symbol ids) at the end of its struct.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from urdar.engine.hashmap cimport hm_t
from urdar.engine.xorchunk cimport xor_app_t
from urdar.engine.headchunks cimport HeadChunkFiles
from urdar.engine.headindex cimport HeadIndex
from urdar.engine.encoding cimport wbuf_t
from urdar.engine.outcomes cimport (
    APPEND_OK, APPEND_OUT_OF_ORDER, APPEND_DUPLICATE, APPEND_TOO_OLD, APPEND_SERIES_LIMIT,
    APPEND_SKIPPED, APPEND_DUPLICATE_SAME, APPEND_OUT_OF_BOUNDS, APPEND_SERIES_PER_METRIC_LIMIT)

ctypedef struct mchunk_t:
    uint64_t ref        # chunks_head ref
    int64_t mint
    int64_t maxt

ctypedef struct ooo_t:
    int64_t *ts
    double *vs
    uint32_t n
    uint32_t cap

# One allocation per series (a slab slot, head.pyx): this struct with its compact key (ck) at
# the end. The key hash is the by-hash table's key only; the canonical key is rebuilt from ck
# when needed. 138 bytes before ck (the open chunk's first time is read from its bytes, mm's
# capacity follows from n_mm), so a key of up to 22 bytes fits a 160-byte slot.
ctypedef struct series_t:
    uint64_t ref
    mchunk_t *mm         # full chunks, oldest first; room for mm_cap(n_mm)
    int64_t last_t       # newest in-order sample, INT64_MIN when none
    uint64_t last_vbits
    int64_t next_at      # the open chunk is cut when a sample reaches this time
    ooo_t *ooo           # NULL unless out-of-order samples are waiting
    xor_app_t app        # the open chunk; count 0 = none
    # What the batch being checked (Head._gen) has accepted so far, before it touches memory
    # (b_gen, b_last_*: the newest batch that reserved samples of the series, and the series'
    # in-order tip including them; a_gen: the newest batch whose samples reached memory)
    uint64_t b_gen
    int64_t b_last_t
    uint64_t b_last_vbits
    uint64_t a_gen
    uint32_t n_mm
    uint32_t keylen      # bytes of the canonical label key
    uint16_t cklen       # bytes of ck (at most CK_MAX)
    uint8_t ck[1]        # compact key (HeadIndex.intern_key), cklen bytes allocated

ctypedef struct sbuf_t:    # growable sample scratch of one read
    int64_t *ts
    double *vs
    Py_ssize_t n
    Py_ssize_t cap

cdef extern from *:
    """
    #include <pthread.h>
    #include <sched.h>
    /* One series stripe lock: a spin lock (one atomic exchange to take, one store to release:
       appends take one per series), yielding the CPU while it waits, since a holder may be
       descheduled or (a reader) copying a long series. Not padded to a cache line: the whole
       array (4 KiB) stays in L1, and two threads rarely want neighbouring stripes at once. */
    typedef struct { int v; } urdar_stripe_t;
    #if defined(__x86_64__) || defined(__i386__)
    #define URDAR_CPU_RELAX() __builtin_ia32_pause()
    #else
    #define URDAR_CPU_RELAX() ((void)0)
    #endif
    static inline void urdar_stripe_lock(urdar_stripe_t *l) {
        int spins = 0;
        while (__atomic_exchange_n(&l->v, 1, __ATOMIC_ACQUIRE)) {
            while (__atomic_load_n(&l->v, __ATOMIC_RELAXED)) {
                if (++spins < 64) URDAR_CPU_RELAX(); else sched_yield();
            }
        }
    }
    static inline void urdar_stripe_unlock(urdar_stripe_t *l) {
        __atomic_store_n(&l->v, 0, __ATOMIC_RELEASE);
    }
    """
    ctypedef struct pthread_mutex_t:
        pass
    ctypedef struct pthread_rwlock_t:
        pass
    ctypedef struct urdar_stripe_t:
        int v
    void urdar_stripe_lock(urdar_stripe_t *l) noexcept nogil
    void urdar_stripe_unlock(urdar_stripe_t *l) noexcept nogil


cdef class Head:
    cdef hm_t _by_ref
    cdef hm_t _by_hash
    cdef uint64_t _next_ref
    cdef readonly int64_t mint               # oldest sample in the head (INT64_MAX when empty)
    cdef readonly int64_t maxt               # newest sample in the head (INT64_MIN when empty)
    cdef readonly int64_t min_valid_time     # nothing older is accepted (last block's maxt)
    cdef readonly int64_t chunk_range
    cdef readonly int64_t ooo_window
    cdef readonly int samples_per_chunk
    cdef public uint64_t max_series          # 0 = unlimited
    cdef public uint64_t max_series_per_metric   # series of one metric name; 0 = unlimited
    cdef HeadChunkFiles _hc
    cdef object _wal                         # urdar.engine.wal.WAL or None
    cdef object _commit                      # profiling.contention.Lock: reservation + WAL
    cdef urdar_stripe_t *_stripes            # series state (memory), by series ref
    cdef pthread_rwlock_t _maps              # _by_ref, _by_hash and _ix (symbols, postings)
    cdef pthread_rwlock_t _gc                # series structs: shared by readers, excl. to free
    cdef pthread_rwlock_t _applying          # shared by batches writing memory, excl. to drain
    cdef pthread_mutex_t _hc_mu              # _hc and _hc_pending
    cdef size_t _hc_pending                  # chunks_head/ bytes reserved by batches in flight
    cdef uint64_t _forgets                   # series removals so far (lookups made before recheck)
    cdef object _hist_lock                   # _hist's HistogramSeries objects
    cdef HeadIndex _ix                       # symbols, compact keys, postings
    cdef dict _metadata                      # metric family -> (type, help, unit)
    cdef object _exemplars
    cdef readonly object dir
    cdef bint _replaying
    cdef uint64_t _gen                       # append_batch calls so far (series_t.b_gen)
    cdef bint _closed
    cdef dict _hist                          # ref -> histchunk.HistogramSeries (histogram samples)
    cdef public dict replay_stats            # what the last start-up loaded, m-mapped and replayed

    cdef series_t *_lookup(self, const uint8_t *key, size_t n, uint64_t h) noexcept nogil
    cdef Py_ssize_t _lookup_batch(self, const uint8_t *kp, const uint64_t *koff, const uint64_t *kh,
                                  const uint8_t *skip, series_t **sp, Py_ssize_t nser) noexcept nogil
    cdef series_t *_create(self, const uint8_t *key, size_t n, uint64_t h, uint64_t ref) except NULL
    cdef series_t *_create_interned(self, size_t n, uint64_t h, uint64_t ref, long cklen, const uint8_t *ck) except NULL
    cdef series_t *_new_series(self, size_t n, uint64_t h, uint64_t ref, long cklen, const uint8_t *ck, int *err) noexcept nogil
    cdef int _create_found(self, const uint8_t *kp, const uint64_t *koff, const uint64_t *kh,
                           const uint8_t *skip, series_t **sp, Py_ssize_t nser, Py_ssize_t *new_idx,
                           Py_ssize_t *n_new, const uint64_t *psids, const Py_ssize_t *psoff) noexcept nogil
    cdef int _find_missing(self, const uint8_t *kp, const uint64_t *koff, const uint8_t *skip, series_t **sp,
                           Py_ssize_t nser, Py_ssize_t n_missing, uint64_t **psids, Py_ssize_t **psoff) noexcept nogil
    cdef bytes _key(self, series_t *s)
    cdef uint64_t _hash_of(self, series_t *s) noexcept nogil
    cdef _remove_series(self, list refs)
    cdef void _unhash(self, series_t *s) noexcept nogil
    cdef bint _metric_full(self, const uint8_t *key, size_t n) except -1
    cdef _attach_mmapped(self, series_t *s, list chunks)
    cdef int _check(self, series_t *s, int64_t t, double v, int64_t min_valid, int64_t maxt) noexcept nogil
    cdef int _append(self, series_t *s, int64_t t, double v, int64_t min_valid, bint replay) noexcept nogil
    cdef int _cut(self, series_t *s) noexcept nogil
    cdef Py_ssize_t _count_in(self, series_t *s, int64_t mint, int64_t maxt) noexcept nogil
    cdef Py_ssize_t _read(self, series_t *s, int64_t mint, int64_t maxt, int64_t *ts, double *vs, Py_ssize_t cap) noexcept nogil
    cdef void _note_time(self, int64_t t) noexcept nogil
    cdef int64_t _min_valid(self, int64_t maxt) noexcept nogil
    cdef int _too_old(self) noexcept nogil
    cdef int _hist_apply(self, series_t *s, int64_t t, object h) except -1
    cdef _hist_samples(self, series_t *s, int64_t mint, int64_t maxt)
    cdef list _hist_block_chunks(self, series_t *s, int64_t mint, int64_t maxt)
    cdef int64_t _oldest(self, series_t *s) noexcept nogil
    cdef bint _in_range(self, series_t *s, int64_t mint, int64_t maxt) noexcept nogil
    cdef uint64_t _ref_of_c(self, const uint8_t *key, size_t n) noexcept nogil
    cdef tuple _series_samples(self, series_t *s, int64_t mint, int64_t maxt, sbuf_t *b)
    cdef Py_ssize_t _read_into(self, series_t *s, int64_t mint, int64_t maxt, sbuf_t *b) noexcept nogil
    cdef const uint8_t *_hc_get(self, uint64_t ref, size_t *n, uint8_t *enc) noexcept nogil
    cdef int _create_missing(self, const uint8_t *kp, const uint64_t[::1] key_offsets,
                             const uint64_t[::1] key_hashes, const uint8_t[::1] skip, series_t **sp,
                             Py_ssize_t nser, Py_ssize_t *new_idx, Py_ssize_t *n_new,
                             list per_metric_refused, const uint64_t *psids, const Py_ssize_t *psoff,
                             uint64_t sym_frees) except -1
    cdef Py_ssize_t _forget_locked(self, Py_ssize_t *new_idx, Py_ssize_t n_new, series_t **sp, Py_ssize_t nser, bint all) except -1
    cdef void _drain(self) noexcept nogil
    cdef Py_ssize_t _forget_new(self, Py_ssize_t *new_idx, Py_ssize_t n_new, series_t **sp, Py_ssize_t nser, bint all) except -1
    cdef _log_append(self, const uint8_t *kp, const uint64_t[::1] key_offsets, Py_ssize_t *new_idx, Py_ssize_t n_new,
                     series_t **sp, uint64_t *wrefs, int64_t *wts, double *wvs, Py_ssize_t n_ok)
    cdef _in_shard(self, refs, uint64_t shard_index, uint64_t shard_count)
