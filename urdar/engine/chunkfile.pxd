# Block chunk segment files, chunks/000001 ... (Prometheus tsdb/chunks, format/chunks.md):
#
#   ┌──────────────────────────────┬───────────────┬──────────────┐
#   │ magic 0x85BD40DD <4b BE>     │ version 1 <1b>│ zero pad <3b>│   header, 8 bytes
#   ├──────────────────────────────┴───────────────┴──────────────┤
#   │ len(data) <uvarint> · encoding <1b> · data <len> · CRC32C <4b>│  one record per chunk
#   │ ...                                          (CRC over encoding + data)
#   └──────────────────────────────────────────────────────────────┘
#
# A chunk ref is (segment_index << 32) | offset: file 000001 is segment 0 and the offset
# points at the record's len field (so the first chunk of a file is at 8).
cimport cython
from libc.stdint cimport uint8_t, uint32_t, uint64_t

cdef enum:
    CHUNK_MAGIC = 0x85BD40DD
    CHUNK_FORMAT_V1 = 1
    CHUNK_HEADER_SIZE = 8
    # Largest record overhead: 5-byte uvarint length, encoding byte, CRC.
    CHUNK_MAX_OVERHEAD = 10

cdef enum:
    # cr_chunk status codes (in *enc when NULL is returned)
    CR_BAD_SEGMENT = 1
    CR_BAD_OFFSET = 2
    CR_BAD_LENGTH = 3
    CR_BAD_CRC = 4

@cython.final
cdef class ChunkWriter:
    cdef str _dir
    cdef uint64_t _segment_bytes
    cdef object _file          # the open segment (a buffered file object) or None
    cdef uint32_t _seq         # 1-based number of the open segment file
    cdef uint64_t _pos         # bytes written to the open segment
    cdef uint64_t _chunks
    cdef list _paths
    cdef bint _closed

    cdef _cut(self)
    cdef _finish_file(self)
    cpdef uint64_t write(self, uint8_t encoding, const uint8_t[::1] data) except? 0xFFFFFFFFFFFFFFFF


@cython.final
cdef class _Segment:
    """One mmap'd segment file. Exports buffers (counted) for zero-copy chunk views."""
    cdef object _mm
    cdef const uint8_t[::1] _view
    cdef const uint8_t *base
    cdef size_t size
    cdef Py_ssize_t _exports
    cdef str path

    cdef int close(self) except -1


@cython.final
cdef class ChunkReader:
    cdef str _dir
    cdef list _segments        # list of _Segment
    cdef const uint8_t **_bases
    cdef size_t *_sizes
    cdef uint32_t _nseg
    cdef bint _verify
    cdef bint _closed

    cdef const uint8_t *cr_chunk(self, uint64_t ref, size_t *n, uint8_t *enc) noexcept nogil
    cdef const uint8_t *cr_chunk_checked(self, uint64_t ref, size_t *n, uint8_t *enc, bint verify) noexcept nogil
    cdef _raise(self, uint64_t ref, uint8_t code)
