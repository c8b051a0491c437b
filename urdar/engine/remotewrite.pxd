# cython: language_level=3
# Remote-write 1.0 decoding (the hot path behind POST /api/v1/push): a hand-written protobuf
# wire decoder turning a snappy-decompressed WriteRequest into columns (see remotewrite.pyx).
# Other engine modules cimport DecodedWrite to take pointers into its arrays.
cimport cython
from cpython cimport array
from libc.stdint cimport uint8_t, uint32_t, int32_t, uint64_t, int64_t
from urdar.engine.encoding cimport wbuf_t


# Per-series validation facts (DecodedWrite.series_flags). The distributor maps each bit to
# its Mimir error id; RW_SF_ERRORS are the bits that make a series invalid on their own.
cdef enum:
    RW_SF_NO_METRIC_NAME = 1 << 0         # __name__ absent or empty
    RW_SF_INVALID_METRIC_NAME = 1 << 1    # __name__ value not [a-zA-Z_:][a-zA-Z0-9_:]*
    RW_SF_INVALID_LABEL_NAME = 1 << 2     # a name not [a-zA-Z_][a-zA-Z0-9_]*
    RW_SF_DUPLICATE_LABEL_NAME = 1 << 3   # a name twice (with non-empty values); first kept
    RW_SF_LABELS_NOT_SORTED = 1 << 4      # input order was not by name (the key is sorted)
    RW_SF_EMPTY_LABEL_VALUE = 1 << 5      # a label with "" value was dropped from the key
    RW_SF_LABEL_NAME_TOO_LONG = 1 << 6    # len(name) > max_label_name_length (bytes)
    RW_SF_LABEL_VALUE_TOO_LONG = 1 << 7   # len(value) > max_label_value_length (bytes)
    RW_SF_TOO_MANY_LABELS = 1 << 8        # more than max_label_names_per_series labels in the key
    RW_SF_INVALID_UTF8 = 1 << 9           # a name or value is not valid UTF-8
    RW_SF_ERRORS = (RW_SF_NO_METRIC_NAME | RW_SF_INVALID_METRIC_NAME | RW_SF_INVALID_LABEL_NAME
                    | RW_SF_DUPLICATE_LABEL_NAME | RW_SF_LABEL_NAME_TOO_LONG
                    | RW_SF_LABEL_VALUE_TOO_LONG | RW_SF_TOO_MANY_LABELS | RW_SF_INVALID_UTF8)


# Decoder status codes (rw_decode's return value; 0 is success).
cdef enum rw_status:
    RW_OK = 0
    RW_E_VARINT_TRUNCATED = 1   # a varint runs past the end of its message
    RW_E_VARINT_TOO_LONG = 2    # a varint longer than 10 bytes
    RW_E_LENGTH = 3             # a length-delimited field runs past the end of its message
    RW_E_FIXED_TRUNCATED = 4    # a fixed32/fixed64 runs past the end of its message
    RW_E_BAD_WIRE_TYPE = 5      # wire type 6 or 7
    RW_E_WRONG_WIRE_TYPE = 6    # a known field with a wire type its declared type never uses
    RW_E_BAD_FIELD_NUMBER = 7   # field number 0 or above 2^29-1
    RW_E_GROUP = 8              # unterminated, mismatched or stray group delimiter
    RW_E_GROUP_DEPTH = 9        # groups nested deeper than RW_MAX_DEPTH
    RW_E_OOM = 10
    RW_E_INTERNAL = 11          # the filling pass disagreed with the counting pass (a bug)

# Which message was being decoded when an error happened (for the error text).
cdef enum rw_context:
    RW_CTX_WRITE_REQUEST = 0
    RW_CTX_TIMESERIES = 1
    RW_CTX_LABEL = 2
    RW_CTX_SAMPLE = 3
    RW_CTX_EXEMPLAR = 4
    RW_CTX_METADATA = 5

cdef enum:
    RW_MAX_DEPTH = 64
    RW_NAME_CACHE = 32     # label positions whose last valid name is remembered


# One label as found on the wire: pointers into the request body (never copied).
ctypedef struct rw_label_t:
    const uint8_t *name
    const uint8_t *value
    size_t nlen
    size_t vlen
    size_t idx            # position in the input, the tie-break that keeps sorting stable

# A label name already found valid: consecutive series nearly always repeat their names, and
# comparing with the previous series' name at the same position beats re-checking the charset.
ctypedef struct rw_name_t:
    const uint8_t *name
    size_t nlen

ctypedef struct rw_labels_t:
    rw_label_t *items
    size_t n
    size_t cap

# One MetricMetadata: string fields as (offset, length) into the request body.
ctypedef struct rw_meta_t:
    int64_t type
    size_t name_off, name_len
    size_t help_off, help_len
    size_t unit_off, unit_len

# Sizes found by the counting pass (rw_count); the filling pass never writes beyond them.
ctypedef struct rw_counts_t:
    uint64_t series
    uint64_t samples
    uint64_t exemplars
    uint64_t metadata
    uint64_t key_bytes      # upper bound: a key is never longer than its TimeSeries message
    uint64_t ex_key_bytes   # upper bound, likewise per Exemplar message

# Decoder state. Column pointers are set by the caller to memory sized from rw_counts_t
# (the Python arrays of the DecodedWrite being built), so nothing is copied afterwards.
ctypedef struct rw_state_t:
    const uint8_t *base
    # limits (0 = no limit)
    uint64_t max_name_len
    uint64_t max_value_len
    uint64_t max_names
    rw_counts_t cap
    # columns (owned by the caller)
    uint8_t *keys           # concatenated series keys
    uint64_t *key_off       # per series + 1
    uint64_t *hashes        # per series
    uint64_t *s_off         # per series + 1, into ts/vals
    int64_t *ts             # per sample
    double *vals            # per sample
    uint64_t *ex_off        # per series + 1, into ex_ts/ex_vals/ex_key_off
    int64_t *ex_ts          # per exemplar
    double *ex_vals         # per exemplar
    uint8_t *ex_keys        # concatenated exemplar label keys
    uint64_t *ex_key_off    # per exemplar + 1
    uint32_t *hist          # per series: native histograms seen (not decoded)
    uint32_t *flags         # per series: RW_SF_* bits
    int32_t *bad            # per series: key index of the first offending label, or -1
    rw_meta_t *meta         # per metadata entry
    # fill levels
    uint64_t n_series
    uint64_t n_samples
    uint64_t n_exemplars
    uint64_t n_histograms
    uint64_t n_metadata
    uint64_t keys_len
    uint64_t ex_keys_len
    int64_t source
    bint skip_label_validation
    bint skip_label_count_validation
    # label removed from every series before validation (the HA tracker's replica label);
    # drop_len 0 = none. first_drop: its value in series 0 (pointer into the body), if there.
    const uint8_t *drop_name
    size_t drop_len
    uint64_t n_dropped
    const uint8_t *first_drop
    size_t first_drop_len
    bint first_dropped
    # scratch for the series being decoded (owned here; rw_state_free releases it)
    rw_labels_t lab
    rw_labels_t exlab
    uint32_t cur_hist
    rw_name_t name_cache[RW_NAME_CACHE]    # nlen 0 = empty slot (an empty name is invalid)
    # error report
    int err_ctx
    const uint8_t *err_at


cdef int rw_count(rw_state_t *st, const uint8_t *p, size_t n) noexcept nogil
cdef void rw_state_init(rw_state_t *st, const uint8_t *base) noexcept nogil
cdef void rw_state_free(rw_state_t *st) noexcept nogil
cdef int rw_decode(rw_state_t *st, const uint8_t *p, size_t n) noexcept nogil


@cython.final
cdef class DecodedWrite:
    """Columns of one decoded WriteRequest (see remotewrite.pyi for the field meanings)."""
    cdef readonly bytes keys
    cdef readonly array.array key_offsets
    cdef readonly array.array key_hashes
    cdef readonly array.array sample_offsets
    cdef readonly array.array ts
    cdef readonly array.array vals
    cdef readonly array.array exemplar_offsets
    cdef readonly array.array exemplar_ts
    cdef readonly array.array exemplar_vals
    cdef readonly bytes exemplar_keys
    cdef readonly array.array exemplar_key_offsets
    cdef readonly array.array histogram_counts
    cdef readonly array.array series_flags
    cdef readonly array.array series_bad_label
    cdef readonly list metadata
    cdef readonly Py_ssize_t n_series
    cdef readonly Py_ssize_t n_samples
    cdef readonly Py_ssize_t n_exemplars
    cdef readonly Py_ssize_t n_histograms
    cdef readonly int source
    cdef readonly bint skip_label_validation
    cdef readonly bint skip_label_count_validation
    cdef readonly Py_ssize_t dropped_labels
    cdef readonly bytes first_dropped_value
