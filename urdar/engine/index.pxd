# Block index file, format v2 (Prometheus tsdb/index, docs/format/index.md). Byte layout:
#
#   magic 0xBAAAD700 <4b> · version 2 <1b>
#   symbols   @toc[0]: len <4b> · #symbols <4b> · (uvarint len · bytes)… · CRC <4b>
#                      sorted, unique; a symbol ref is its ordinal (v1: its file offset)
#   series    @toc[1]: per series, zero-padded to a 16-byte boundary, id = offset / 16:
#                      uvarint len · uvarint #labels · (uvarint nameRef · uvarint valueRef)…
#                      · uvarint #chunks · varint mint0 · uvarint maxt0-mint0 · uvarint ref0
#                      · (uvarint mint-prevMaxt · uvarint maxt-mint · varint ref-prevRef)… · CRC
#   label indices      none written: toc[2] = start of postings (v1 files may have them)
#   postings  @toc[4]: per (name, value), 4-byte aligned, all-postings ("", "") first:
#                      len <4b> · #ids <4b> · id <4b BE>… · CRC
#   label offset table none written: toc[3] = toc[5]
#   postings offset table @toc[5]: len <4b> · #entries <4b> ·
#                      (0x02 · uvarint len · name · uvarint len · value · uvarint64 offset)… · CRC
#                      sorted by name then value
#   TOC: the last 52 bytes: six 8-byte offsets · CRC over them
#
# Every `len` counts the bytes between itself and the CRC; the CRC (CRC-32C) covers them.
cimport cython
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t
from urdar.engine.encoding cimport wbuf_t

cdef enum:
    INDEX_MAGIC = 0xBAAAD700
    INDEX_HEADER_SIZE = 5
    INDEX_V1 = 1
    INDEX_V2 = 2
    INDEX_TOC_SIZE = 52
    SERIES_ALIGN = 16
    POSTINGS_ALIGN = 4

cdef enum:
    # status codes of ir_series / ir_postings_at
    IR_OK = 0
    IR_BAD_REF = 1
    IR_BAD_LENGTH = 2
    IR_BAD_CRC = 3
    IR_BAD_ENTRY = 4
    IR_BAD_SYMBOL = 5
    IR_NO_MEMORY = 6

ctypedef struct chunk_meta_t:
    int64_t mint          # first sample time, ms
    int64_t maxt          # last sample time, ms (inclusive)
    uint64_t ref          # chunk ref into chunks/ (segment << 32 | offset)

# Prometheus labels.Compare on two canonical label keys (see labels.pxd): pairwise by name,
# then value, bytewise; a label set that is a prefix of the other sorts first.
# Malformed keys compare by their raw bytes.
cdef int label_key_cmp(const uint8_t *a, size_t na, const uint8_t *b, size_t nb) noexcept nogil

# name -> ([values], [offsets]) from the `cnt` entries of a postings offset table lying at
# base[start:start+ln] (CRC already checked); shared by IndexReader and the store-gateway's
# index-header. Errors name `path` and offsets relative to base.
cdef dict parse_postings_entries(object path, const uint8_t *base, uint64_t start, uint64_t ln,
                                 uint64_t cnt, bint sort_values)


@cython.final
cdef class IndexReader:
    cdef readonly str path
    cdef object _mm
    cdef const uint8_t[::1] _view
    cdef const uint8_t *_b
    cdef size_t _n
    cdef readonly int version
    cdef uint64_t _toc[6]
    cdef uint64_t _series_end         # first byte after the series section
    cdef uint32_t _nsym
    cdef uint64_t *_sym_pos           # file offset of each symbol's uvarint length, ascending
    cdef dict _postings               # name str -> (values list[str], offsets list[int])
    cdef bint _verify
    cdef bint _closed

    # Decode series `id` (v2: offset/16; v1: offset): its canonical label key is appended
    # to `key`, its chunk metas (chunk_meta_t) to `metas`. Returns an IR_* code. No GIL.
    cdef int ir_series(self, uint64_t id, wbuf_t *key, wbuf_t *metas, bint verify) noexcept nogil
    # Postings list at file offset `off`: *ids points at n big-endian uint32 series ids.
    cdef int ir_postings_at(self, uint64_t off, const uint8_t **ids, uint32_t *n, bint verify) noexcept nogil
    cdef int _symbol(self, uint64_t ref, const uint8_t **p, size_t *n) noexcept nogil
    cdef _load_symbols(self)
    cdef _load_postings_table(self)
    cdef _raise(self, int rc, uint64_t offset, what)
    cdef _check_open(self)
