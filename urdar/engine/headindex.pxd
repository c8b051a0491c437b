# The head's label index in C: a symbol table (each distinct label name or value stored once),
# compact series keys made of symbol ids, and postings (name -> value -> sorted series refs).
#
# Symbols live back to back in one arena in their key form, uvarint(len) . bytes, so the
# canonical key (labels.pxd) of a series is uvarint(#labels) followed by the arena spans of its
# names and values: comparing a request's key with a stored series is a few memcmp() calls,
# and materialising it is a few memcpy() calls. A compact key is uvarint(#labels) followed by
# uvarint(name id) uvarint(value id) per label; each use of a symbol by a series key is
# counted, and a symbol whose count drops to 0 is freed (its id reused, its bytes reclaimed
# by the next arena compaction).
#
# Postings: per label name a hash table value id -> either a tagged ref ((ref << 1) | 1, the
# one series that has the pair: most values of per-target labels) or a delta-encoded plist_t.
# Nothing here takes a lock: the owner (the head) serialises every call that interns, adds or
# removes against every other call (the arena and tables move when they grow).
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from urdar.engine.hashmap cimport hm_t

# A list of 2+ sorted refs, delta-encoded: uvarint(first ref), then uvarint(ref - previous)
# per ref. Refs are handed out in increasing order, so adding one is an append; the gaps in a
# shared value's list are small, so most refs take one byte instead of eight.
ctypedef struct plist_t:
    uint64_t last           # the largest ref (appends need no decoding)
    uint32_t n              # refs
    uint32_t len            # bytes used in data
    uint32_t cap            # bytes allocated for data
    uint32_t dirty          # listed in HeadIndex._dirty during a removal
    uint8_t data[1]

ctypedef struct name_t:
    hm_t values             # value id -> tagged ref or plist_t*
    uint32_t nid

ctypedef struct dirty_t:
    uint32_t nid
    uint32_t vid

cdef enum:
    IX_EMALFORMED = -1      # the key is not a canonical label key
    IX_ENOMEM = -2

cdef class HeadIndex:
    cdef uint8_t *_arena
    cdef size_t _alen, _acap, _adead
    cdef uint32_t *_soff            # symbol id -> arena offset
    cdef uint32_t *_suse            # symbol id -> uses by series keys (0 = free id)
    cdef uint32_t *_shash           # symbol id -> its hash's low 32 bits (probes skip the arena)
    cdef uint32_t _nsym, _capsym, _live_syms
    cdef uint32_t *_freeids
    cdef uint32_t _nfree, _capfree
    cdef uint32_t *_stab            # open addressing over symbols: id + 1, 0 = empty
    cdef uint32_t _stab_mask, _stab_n
    cdef hm_t _names                # name id -> name_t*
    cdef uint64_t *_all             # every ref, sorted
    cdef size_t _nall, _capall
    cdef dirty_t *_dirty
    cdef size_t _ndirty, _capdirty
    cdef uint64_t _sym_frees        # symbol ids freed so far (find_syms' ids checked against it)
    cdef uint8_t *_scratch          # a compact key being built
    cdef size_t _scap

    # symbols
    cdef long _sym_find(self, const uint8_t *s, size_t n) noexcept nogil
    cdef long _sym_find_h(self, const uint8_t *s, size_t n, uint32_t h) noexcept nogil
    cdef long _sym_intern(self, const uint8_t *span, size_t spanlen, const uint8_t *s, size_t n) noexcept nogil
    cdef long _sym_intern_h(self, const uint8_t *span, size_t spanlen, const uint8_t *s, size_t n, uint32_t h) noexcept nogil
    cdef void _sym_release(self, uint32_t sid) noexcept nogil
    cdef uint64_t _sym_hash(self, uint32_t sid) noexcept nogil
    cdef int _stab_grow(self) noexcept nogil
    cdef void _compact_arena(self) noexcept nogil
    cdef void *_pair(self, const uint8_t *name, size_t nlen, const uint8_t *value, size_t vlen) noexcept nogil
    cdef str _sym_str(self, uint32_t sid)
    cdef inline const uint8_t *sym_span(self, uint32_t sid, size_t *spanlen) noexcept nogil

    # series keys
    cdef int _scratch_room(self, size_t need) noexcept nogil
    cdef long intern_key(self, const uint8_t *key, size_t n, const uint8_t **ck) noexcept nogil
    cdef long key_strings(self, const uint8_t *key, size_t n) noexcept nogil
    cdef long find_syms(self, const uint8_t *key, size_t n, uint64_t *sids, int stage) noexcept nogil
    cdef long intern_found(self, const uint8_t *key, size_t n, const uint64_t *sids, const uint8_t **ck) noexcept nogil
    cdef uint64_t sym_frees(self) noexcept nogil
    cdef void prefetch_sym(self, uint32_t h) noexcept nogil
    cdef uint32_t _probe_hash(self, uint32_t h) noexcept nogil
    cdef bint key_eq(self, const uint8_t *ck, size_t cklen, const uint8_t *key, size_t n) noexcept nogil
    cdef void key_write(self, const uint8_t *ck, size_t cklen, uint8_t *out) noexcept nogil
    cdef bytes key_bytes(self, const uint8_t *ck, size_t cklen, size_t keylen)
    cdef void release_key(self, const uint8_t *ck, size_t cklen) noexcept nogil

    # postings
    cdef int add(self, const uint8_t *ck, size_t cklen, uint64_t ref) noexcept nogil
    cdef void prefetch_add(self, const uint8_t *ck, size_t cklen) noexcept nogil
    cdef void remove_begin(self) noexcept nogil
    cdef int remove_series(self, const uint8_t *ck, size_t cklen, uint64_t ref) noexcept nogil
    cdef int remove_end(self, const uint64_t *removed, size_t nremoved) noexcept nogil
    cdef size_t count(self, const uint8_t *name, size_t nlen, const uint8_t *value, size_t vlen) noexcept nogil
    cdef size_t metric_count(self, const uint8_t *key, size_t n) noexcept nogil
    cdef uint64_t first_ref(self, const uint8_t *name, size_t nlen, const uint8_t *value, size_t vlen) noexcept nogil
