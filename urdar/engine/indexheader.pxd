# Index-header: the part of a block's index a store-gateway keeps on local disk, so that it can
# plan postings/series/chunk reads without holding (or downloading) the whole index. Written by
# write_index_header from ranged reads of the index in the bucket:
#
#   ┌──────────────────────────────┬──────────────┬────────────────────┬───────────┐
#   │ magic 0xBAAAD792 <4b>        │ version 1 <1b>│ index version <1b> │ pad <2b>  │
#   ├──────────────────────────────┴──────────────┴────────────────────┴───────────┤
#   │ index size <8b> · the index's six TOC offsets <8b each>                       │  = 64 bytes
#   ├──────────────────────────────────────────────────────────────────────────────┤
#   │ symbol table, copied from index[toc[0]:] (len · #symbols · symbols · CRC)     │ @ 64
#   │ postings offset table, copied from index[toc[5]:] (len · #entries · … · CRC)  │
#   ├──────────────────────────────────────────────────────────────────────────────┤
#   │ symbols at <8b> · postings table at <8b> · CRC32C of the first 64 bytes and    │  trailer, 20 bytes
#   │ these 16 <4b>                                                                │
#   └──────────────────────────────────────────────────────────────────────────────┘
#
# The copied sections keep their own CRCs (checked at open). Series entries, postings lists and
# chunks are then decoded from buffers returned by ranged reads (decode_series, decode_postings,
# decode_chunk), which raise ShortRead(needed) when the buffer stops inside an entry.
cimport cython
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from urdar.engine.encoding cimport wbuf_t

cdef enum:
    IH_MAGIC = 0xBAAAD792
    IH_VERSION = 1
    IH_HEAD_SIZE = 64
    IH_TRAILER_SIZE = 20


@cython.final
cdef class IndexHeader:
    cdef readonly str path
    cdef object _mm
    cdef const uint8_t[::1] _view
    cdef const uint8_t *_b
    cdef size_t _n
    cdef readonly int version          # version of the index this header describes (1 or 2)
    cdef readonly uint64_t index_size
    cdef uint64_t _toc[6]
    cdef uint64_t _series_end          # first index byte after the series section
    cdef uint64_t _sym_start           # header offset of the symbol table
    cdef uint32_t _nsym
    cdef uint64_t *_sym_pos            # header offset of each symbol's uvarint length
    cdef dict _postings                # name -> (values list[str], offsets list[int])
    cdef object _ends                  # sorted postings offsets (array 'Q') for list ends
    cdef bint _closed
    cdef int _symbol(self, uint64_t ref, const uint8_t **p, size_t *n) noexcept nogil
    cdef int _decode_series(self, const uint8_t *b, size_t avail, wbuf_t *key, wbuf_t *metas,
                            uint64_t *need) noexcept nogil
    cdef _section(self, uint64_t off, uint64_t end, what)
    cdef _load_symbols(self, uint64_t off, uint64_t end)
    cdef _load_postings(self, uint64_t off, uint64_t end)
    cdef _check_open(self)
