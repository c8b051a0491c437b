# cython: language_level=3
# Head chunk files, chunks_head/000001 ... (Prometheus tsdb/chunks/head_chunks.go,
# docs/format/head_chunks.md): closed head chunks live here, m-mapped, instead of on the heap.
#
#   ┌──────────────────────────────┬───────────────┬──────────────┐
#   │ magic 0x0130BC91 <4b BE>     │ version 1 <1b>│ zero pad <3b>│   header, 8 bytes
#   ├──────────────────────────────┴───────────────┴──────────────┤
#   │ seriesRef <8b> · mint <8b> · maxt <8b> · encoding <1b>       │  one entry per chunk
#   │ · len <uvarint> · data <len> · CRC32C <4b>                   │  (CRC over seriesRef..data)
#   └──────────────────────────────────────────────────────────────┘
#
# Ref = (file_seq << 32) | offset of the entry's seriesRef; file 000001 has seq 1.
# The file being written is ftruncate'd to the max size (sparse) and mapped MAP_SHARED
# read/write, so a write is a memcpy; disk blocks are reserved with posix_fallocate in
# HC_RESERVE_STEP steps so a full disk gives -ENOSPC instead of SIGBUS. A finished file
# is truncated to its used size. The WAL stays the source of truth.
cimport cython
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t

cdef enum:
    HC_MAGIC = 0x0130BC91
    HC_VERSION = 1
    HC_HEADER_SIZE = 8
    HC_ENTRY_FIXED = 25           # seriesRef + mint + maxt + encoding
    HC_MAX_ENTRY_OVERHEAD = 39    # + 10-byte uvarint + CRC
    HC_RESERVE_STEP = 4 << 20
    HC_OOO_FLAG = 0x80            # high bit of the encoding byte: out-of-order chunk

ctypedef struct hc_file_t:
    uint32_t seq
    int fd                # open only for the file being written; -1 otherwise
    uint8_t *map          # NULL for an empty file
    size_t map_len
    size_t used           # end of the last good entry: hc_get reads below this
    size_t end            # where iteration stops (file size for files found on disk)
    size_t reserved       # bytes reserved with posix_fallocate (file being written)
    int64_t maxt          # largest maxt of its chunks; INT64_MIN when none
    int header_ok

# One chunk of the index hc_index builds at start-up (no data: the head keeps only refs).
ctypedef struct hc_index_t:
    uint64_t series_ref
    uint64_t ref
    int64_t mint
    int64_t maxt
    uint8_t encoding

@cython.final
cdef class HeadChunkFiles:
    cdef bytes _dir
    cdef char *_cdir
    cdef size_t _max_file_bytes
    cdef hc_file_t *_files      # sorted by seq
    cdef Py_ssize_t _nfiles
    cdef Py_ssize_t _cap
    cdef Py_ssize_t _cur        # index of the file being written, or -1
    cdef uint32_t _next_seq
    cdef bint _closed
    cdef public object corrupt  # CorruptionError from the last scan (open or iter_chunks), or None

    # 0, or -errno (-EBADF when closed). Caller holds the head lock.
    cdef int hc_write(self, uint64_t series_ref, int64_t mint, int64_t maxt, uint8_t encoding,
                      const uint8_t *data, size_t n, uint64_t *ref_out) noexcept nogil
    # Make room for `need` more bytes of entries (file created, disk blocks reserved), so the
    # hc_write calls that follow cannot fail for lack of space: 0 or -errno.
    cdef int hc_prepare(self, size_t need) noexcept nogil
    # Pointer into the map (valid until that file is removed, reset or closed); NULL if bad ref.
    cdef const uint8_t *hc_get(self, uint64_t ref, size_t *n, uint8_t *encoding) noexcept nogil
    cdef hc_file_t *_find(self, uint32_t seq) noexcept nogil
    # The chunks of files with seq <= last_seq (each up to the end of its last good entry, as
    # verified when opened), in file order, leaving out those ending before floor_t, into a
    # malloc'd *out the caller frees; *max_sref gets the largest series ref read (all chunks).
    # Returns the count, or -1 when out of memory.
    cdef Py_ssize_t hc_index(self, uint32_t last_seq, int64_t floor_t, hc_index_t **out,
                             uint64_t *max_sref) noexcept nogil
    cdef int _cut(self, size_t need) noexcept nogil
    cdef void _finish_current(self) noexcept nogil
    cdef void _release_all(self) noexcept nogil
    cdef hc_file_t *_add(self, uint32_t seq) noexcept nogil
    cdef _open_existing(self, uint32_t seq)
    cdef bytes _path(self, uint32_t seq)
    cdef _check_open(self)
