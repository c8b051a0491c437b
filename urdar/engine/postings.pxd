# Postings: sorted, duplicate-free lists of series references (Prometheus' tsdb/index
# postings.go). The head indexes uint64 refs, blocks uint32 series ids; every operation
# exists for both widths. All functions take raw pointers, run without the GIL and never
# allocate except pst_union_many_* (scratch; returns -1 when malloc fails).
#
# Output capacity the caller provides (out may alias `a` where noted, never `b`):
#   pst_intersect_*  min(na, nb)   out may be a   (a ∩ b)
#   pst_subtract_*   na            out may be a   (a \ b)
#   pst_merge_*      na + nb       no aliasing    (a ∪ b)
#   pst_union_many_* sum(lens)     no aliasing    (∪ lists)
# Inputs must be ascending without duplicates; that is not checked (pst_is_set_* does).
from libc.stdint cimport uint32_t, uint64_t

cdef Py_ssize_t pst_lower_bound_u64(const uint64_t *a, Py_ssize_t n, uint64_t x) noexcept nogil
cdef Py_ssize_t pst_lower_bound_u32(const uint32_t *a, Py_ssize_t n, uint32_t x) noexcept nogil
cdef bint pst_contains_u64(const uint64_t *a, Py_ssize_t n, uint64_t x) noexcept nogil
cdef bint pst_contains_u32(const uint32_t *a, Py_ssize_t n, uint32_t x) noexcept nogil
cdef bint pst_is_set_u64(const uint64_t *a, Py_ssize_t n) noexcept nogil
cdef bint pst_is_set_u32(const uint32_t *a, Py_ssize_t n) noexcept nogil

cdef Py_ssize_t pst_intersect_u64(const uint64_t *a, Py_ssize_t na, const uint64_t *b, Py_ssize_t nb,
                                  uint64_t *out) noexcept nogil
cdef Py_ssize_t pst_intersect_u32(const uint32_t *a, Py_ssize_t na, const uint32_t *b, Py_ssize_t nb,
                                  uint32_t *out) noexcept nogil
cdef bint pst_intersects_u64(const uint64_t *a, Py_ssize_t na, const uint64_t *b, Py_ssize_t nb) noexcept nogil
cdef bint pst_intersects_u32(const uint32_t *a, Py_ssize_t na, const uint32_t *b, Py_ssize_t nb) noexcept nogil

cdef Py_ssize_t pst_subtract_u64(const uint64_t *a, Py_ssize_t na, const uint64_t *b, Py_ssize_t nb,
                                 uint64_t *out) noexcept nogil
cdef Py_ssize_t pst_subtract_u32(const uint32_t *a, Py_ssize_t na, const uint32_t *b, Py_ssize_t nb,
                                 uint32_t *out) noexcept nogil

cdef Py_ssize_t pst_merge_u64(const uint64_t *a, Py_ssize_t na, const uint64_t *b, Py_ssize_t nb,
                              uint64_t *out) noexcept nogil
cdef Py_ssize_t pst_merge_u32(const uint32_t *a, Py_ssize_t na, const uint32_t *b, Py_ssize_t nb,
                              uint32_t *out) noexcept nogil

cdef Py_ssize_t pst_union_many_u64(const uint64_t **lists, const Py_ssize_t *lens, Py_ssize_t k,
                                   uint64_t *out) noexcept nogil
cdef Py_ssize_t pst_union_many_u32(const uint32_t **lists, const Py_ssize_t *lens, Py_ssize_t k,
                                   uint32_t *out) noexcept nogil
