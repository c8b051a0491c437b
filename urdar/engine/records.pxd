# Logical WAL records (Prometheus' tsdb/record): the bytes inside one WAL entry.
# The first byte is the type; all fixed-width fields are big-endian:
#   1 series     : repeated( ref 8B · key )            key = labels.pxd's canonical label bytes
#   2 samples    : base ref 8B · base t 8B · repeated( varint(ref-base) · varint(t-base) · f64 bits 8B )
#   3 tombstones : repeated( ref 8B · varint mint · varint maxt )
#   4 exemplars  : like samples, each entry followed by a label key
#   6 metadata   : repeated( uvarint ref · type 1B · uvarint #fields · (uvarint-len name, value)... )
# Encoders APPEND to a caller-owned wbuf_t (set b.len = 0 to start afresh) and report
# allocation failure through its sticky `oom`. Decoders walk a record without the GIL and
# return a count, or a negative REC_E* code; they never read past `n`.
from libc.stdint cimport uint8_t, uint64_t, int64_t
from urdar.engine.encoding cimport wbuf_t

cdef enum:
    REC_SERIES = 1
    REC_SAMPLES = 2
    REC_TOMBSTONES = 3
    REC_EXEMPLARS = 4
    REC_MMAP_MARKERS = 5
    REC_METADATA = 6
    REC_UNKNOWN = 255

cdef enum:
    # decoder results below zero
    REC_EMALFORMED = -1     # truncated field, bad varint, wrong type byte or trailing bytes
    REC_ECAP = -2           # the caller's arrays hold fewer than the record's entries

# ---- encoders (append to b) ---------------------------------------------------------
cdef void rec_series_begin(wbuf_t *b) noexcept nogil
cdef void rec_series_add(wbuf_t *b, uint64_t ref, const uint8_t *key, size_t keylen) noexcept nogil
cdef void rec_samples(wbuf_t *b, const uint64_t *refs, const int64_t *ts, const double *vs,
                      size_t n) noexcept nogil
cdef void rec_tombstones_begin(wbuf_t *b) noexcept nogil
cdef void rec_tombstone_add(wbuf_t *b, uint64_t ref, int64_t mint, int64_t maxt) noexcept nogil
# exemplars: begin with the first exemplar's ref and t as bases, then add each one (first included)
cdef void rec_exemplars_begin(wbuf_t *b, uint64_t base_ref, int64_t base_t) noexcept nogil
cdef void rec_exemplar_add(wbuf_t *b, uint64_t base_ref, int64_t base_t, uint64_t ref, int64_t t,
                           double v, const uint8_t *key, size_t keylen) noexcept nogil
cdef void rec_metadata_begin(wbuf_t *b) noexcept nogil
cdef void rec_metadata_add(wbuf_t *b, uint64_t ref, uint8_t mtype, const uint8_t *unit, size_t unitlen,
                           const uint8_t *help, size_t helplen) noexcept nogil

# ---- decoders -------------------------------------------------------------------------
cdef int rec_type(const uint8_t *p, size_t n) noexcept nogil
# *_count: number of entries, or REC_EMALFORMED (a full validating walk; use it to size arrays).
# *_decode: fill up to cap entries; return the count, REC_EMALFORMED or REC_ECAP.
# Series/exemplar label keys are returned as (offset, length) into p: no copy, valid while p is.
cdef Py_ssize_t rec_series_count(const uint8_t *p, size_t n) noexcept nogil
cdef Py_ssize_t rec_series_decode(const uint8_t *p, size_t n, uint64_t *refs, size_t *key_off,
                                  size_t *key_len, Py_ssize_t cap) noexcept nogil
cdef Py_ssize_t rec_samples_count(const uint8_t *p, size_t n) noexcept nogil
cdef Py_ssize_t rec_samples_decode(const uint8_t *p, size_t n, uint64_t *refs, int64_t *ts, double *vs,
                                   Py_ssize_t cap) noexcept nogil
cdef Py_ssize_t rec_tombstones_count(const uint8_t *p, size_t n) noexcept nogil
cdef Py_ssize_t rec_tombstones_decode(const uint8_t *p, size_t n, uint64_t *refs, int64_t *mints,
                                      int64_t *maxts, Py_ssize_t cap) noexcept nogil
cdef Py_ssize_t rec_exemplars_count(const uint8_t *p, size_t n) noexcept nogil
cdef Py_ssize_t rec_exemplars_decode(const uint8_t *p, size_t n, uint64_t *refs, int64_t *ts, double *vs,
                                     size_t *key_off, size_t *key_len, Py_ssize_t cap) noexcept nogil
