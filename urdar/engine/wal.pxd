# The write-ahead log (Prometheus' tsdb/wlog): a directory of segments 00000000, 00000001, ...
# each a sequence of 32 KiB pages holding fragments of logical records (records.pxd):
#
#   fragment = type 1B · len 2B BE · CRC-32C 4B BE (of the payload) · payload (len bytes)
#   type     = 0b000ZSTTT: TTT 0 padding, 1 full, 2 first, 3 middle, 4 last; S snappy, Z zstd
#
# A fragment never crosses a page; when fewer than 7 bytes are left the page is zero-padded.
# A record never crosses a segment: one that does not fit the rest of the segment starts a new
# one (an oversized record gets a segment of its own, larger than segment_bytes).
from libc.stdint cimport uint8_t, int64_t
from urdar.engine.encoding cimport wbuf_t

cdef enum:
    WAL_PAGE_SIZE = 32768
    WAL_HEADER_SIZE = 7
    WAL_FRAG_PAD = 0
    WAL_FRAG_FULL = 1
    WAL_FRAG_FIRST = 2
    WAL_FRAG_MIDDLE = 3
    WAL_FRAG_LAST = 4
    WAL_FLAG_SNAPPY = 0x08
    WAL_FLAG_ZSTD = 0x10


cdef class WAL:
    """Appender over a WAL directory; owns the fd of its newest segment."""
    cdef int _fd
    cdef bytes _dir_b            # fsencoded directory ...
    cdef const char *_dir_c      # ... and its bytes, read by nogil code to name segments
    cdef readonly object dir
    cdef readonly int64_t segment_bytes
    cdef readonly bint fsync
    cdef int64_t _segment        # number of the segment being written
    cdef int64_t _seg_off        # bytes of it on disk (write(2) done)
    cdef bint _closed
    cdef int _err                # -errno of a failure not yet undone (see _recover)
    cdef wbuf_t _stage           # framed bytes waiting for one write(2); also tracks page position

    # Frame `rec` and write(2) all of it before returning (survives kill -9 of the process;
    # fsync only when fsync=True). Returns 0 or -errno. The caller serialises calls.
    cdef int wal_log(self, const uint8_t *rec, size_t n) noexcept nogil
    # The same for k records written together: all of them reach the disk or none does.
    cdef int wal_log_many(self, const uint8_t **recs, const size_t *lens, Py_ssize_t k) noexcept nogil
    cdef int _recover(self) noexcept nogil
    cdef int64_t _room(self) noexcept nogil
    cdef int _frame(self, const uint8_t *rec, size_t n) noexcept nogil
    cdef int _flush(self) noexcept nogil
    cdef int _finish_segment(self) noexcept nogil
    cdef int _open_segment(self, int64_t k) noexcept nogil


cdef class SegmentReader:
    """Walks the fragments of one segment held in memory; yields logical records."""
    cdef const uint8_t[::1] _buf
    cdef const uint8_t *_p
    cdef size_t _n
    cdef size_t _pos             # next unread byte
    cdef size_t _rec_start       # offset of the current record's first fragment
    cdef wbuf_t _rec             # the record being assembled (owned)
    cdef int _flags              # compression bits of the current record
    cdef int _why                # why the walk stopped early (_WHY_* in wal.pyx), 0 = it did not
    cdef size_t _bad_at          # where the offending fragment starts
    cdef size_t _good_end        # end of the last complete record: where repair cuts

    # 1 = a record is in _rec (flags in _flags), 0 = clean end, -1 = corruption (see .reason)
    cdef int next_record(self) noexcept nogil
    cdef int _fail(self, int why, size_t at) noexcept nogil


cdef class WALReader:
    """Logical records of a checkpoint directory (optional) then WAL segments, in order."""
    cdef list _segs               # [(path, segment number)]
    cdef Py_ssize_t _i
    cdef object _mm
    cdef SegmentReader _sr
    cdef bytes _out               # a decompressed record (keeps it alive for read_next)
    cdef readonly object corruption
    cdef readonly object segment  # number of the segment the last record came from
    cdef readonly object path
    cdef readonly Py_ssize_t offset   # byte offset of the last record's first fragment

    # 1 = *rec/*n point at the next record (valid until the next call), 0 = end (check
    # .corruption); raises only on I/O errors. Holds the GIL (snappy runs in Python).
    cdef int read_next(self, const uint8_t **rec, size_t *n) except -1
    cdef _close_segment(self)
