# cython: language_level=3
"""The write-ahead log in Prometheus' wlog format (layout in wal.pxd): the appender the head
calls before acknowledging a batch, the reader that replays a checkpoint and segments at
start-up, the repair that cuts a torn or corrupt tail, and the checkpoint that compacts old
segments after head truncation. Records inside are built by records.pyx."""
import errno as _errno
import logging
import mmap
import os
import shutil
from collections import namedtuple

import cramjam

cimport cython
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.errno cimport errno, EINTR, EBADF, ENOMEM, EEXIST
from libc.stdint cimport uint8_t, uint16_t, uint32_t, int64_t, uint64_t
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy, memset
from libc.stdio cimport snprintf
from posix.fcntl cimport open as c_open, O_WRONLY, O_CREAT, O_EXCL, O_CLOEXEC, O_RDONLY
from posix.unistd cimport close as c_close, fsync as c_fsync, ftruncate, pwrite

from urdar.engine.encoding cimport (
    wbuf_t, wbuf_init, wbuf_free, wbuf_reserve, put_be16, put_be32, get_be16, get_be32,
    urdar_crc32c,
)
from urdar.engine.faults cimport fault_hit, FAULT_WAL_WRITE, FAULT_WAL_SYNC, FAULT_WAL_CREATE
from urdar.engine.records cimport (
    REC_SERIES, REC_SAMPLES, REC_TOMBSTONES, REC_EXEMPLARS, REC_METADATA, rec_samples_count,
)
from urdar.engine import histrecords as _histrecords
from urdar.engine import records as _records
from urdar.engine.errors import WALCorruptionError, UnsupportedWALCompression

log = logging.getLogger("urdar.engine.wal")

DEFAULT_SEGMENT_BYTES = 128 * 1024 * 1024
PAGE_SIZE = WAL_PAGE_SIZE
cdef const uint8_t _EMPTY[1]

Repair = namedtuple("Repair", "segment offset bytes_cut deleted_segments")
Repair.__doc__ = """What repair() removed: the segment cut at `offset`, how many bytes of it, and
the later segments deleted."""


cdef inline void _stage_zeros(wbuf_t *b, size_t k) noexcept nogil:
    if wbuf_reserve(b, k) == 0:
        memset(b.data + b.len, 0, k)
        b.len += k


def list_segments(dir):
    """Sorted segment numbers in `dir` (file names made of digits only)."""
    out = []
    try:
        names = os.listdir(dir)
    except FileNotFoundError:
        return out
    for name in names:
        if name.isdigit() and name.isascii():
            out.append(int(name))
    out.sort()
    return out


def segment_path(dir, k):
    return os.path.join(dir, "%08d" % k)


def _fsync_dir(dir):
    fd = os.open(dir, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_rc(int rc, what):
    if rc != 0:
        raise OSError(-rc, "%s: %s" % (what, os.strerror(-rc)))


# ---- writer -----------------------------------------------------------------------------

@cython.final
cdef class WAL:
    """Appends records to the segmented WAL in `dir`; starts a new segment after the last one.

    `segment_bytes` (a multiple of 32 KiB) bounds a segment; `fsync=True` fsyncs after every
    write, otherwise a record is durable against a process kill once log() returns and against
    power loss after sync()/close() (completed segments are always fsynced). Not thread-safe:
    the head serialises calls under its own lock."""

    def __cinit__(self):
        self._fd = -1
        self._err = 0
        wbuf_init(&self._stage, 65536)

    def __init__(self, dir, segment_bytes=DEFAULT_SEGMENT_BYTES, fsync=False):
        cdef int rc
        cdef int64_t k
        if segment_bytes < WAL_PAGE_SIZE or segment_bytes % WAL_PAGE_SIZE:
            raise ValueError("segment_bytes must be a positive multiple of %d, got %d"
                             % (WAL_PAGE_SIZE, segment_bytes))
        self.dir = os.fspath(dir)
        self._dir_b = os.fsencode(os.path.abspath(self.dir))   # absolute: a chdir cannot move it
        self._dir_c = self._dir_b
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        os.makedirs(self.dir, exist_ok=True)
        segs = list_segments(self.dir)
        # as Prometheus: never append to an old segment, whose tail may be torn
        k = segs[-1] + 1 if segs else 0
        with nogil:
            rc = self._open_segment(k)
        _check_rc(rc, "create WAL segment %s" % segment_path(self.dir, k))
        if fsync:
            _fsync_dir(self.dir)

    def __dealloc__(self):
        if self._fd >= 0:
            c_close(self._fd)
        wbuf_free(&self._stage)

    cdef int _open_segment(self, int64_t k) noexcept nogil:
        cdef char path[4096]
        cdef int rc
        if snprintf(path, sizeof(path), "%s/%08lld", self._dir_c, <long long>k) >= <int>sizeof(path):
            return -ENOMEM
        rc = fault_hit(FAULT_WAL_CREATE, self._dir_c)
        if rc:
            return rc
        self._fd = c_open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        if self._fd < 0:
            return -errno
        self._segment = k
        self._seg_off = 0
        return 0

    cdef int _flush(self) noexcept nogil:
        """write(2) the staged bytes at the segment's end; on failure cut them off again."""
        cdef size_t done = 0
        cdef ssize_t r
        cdef int rc = fault_hit(FAULT_WAL_WRITE, self._dir_c) if self._stage.len else 0
        if rc:
            # an injected fault behaves like a disk filling up mid-write: half the bytes land
            r = pwrite(self._fd, self._stage.data, self._stage.len // 2, self._seg_off)
            done = r if r > 0 else 0
        while done < self._stage.len and rc == 0:
            r = pwrite(self._fd, self._stage.data + done, self._stage.len - done, self._seg_off + done)
            if r < 0:
                if errno == EINTR:
                    continue
                rc = -errno
                break
            done += r
        if rc:
            self._stage.len = 0
            # a partial record must not stay on disk behind an error the caller saw; when
            # even the cut fails, later writes retry it first (_recover)
            if done and ftruncate(self._fd, self._seg_off) != 0:
                self._err = rc
            return rc
        self._seg_off += done
        self._stage.len = 0
        if self.fsync and done and c_fsync(self._fd) != 0:
            return -errno
        return 0

    cdef int _finish_segment(self) noexcept nogil:
        """Pad the last page, fsync and close the segment, open the next one."""
        cdef int rc
        cdef size_t room = WAL_PAGE_SIZE - (self._seg_off + self._stage.len) % WAL_PAGE_SIZE
        if room != WAL_PAGE_SIZE:
            _stage_zeros(&self._stage, room)
        if self._stage.oom:
            self._err = -ENOMEM
            return -ENOMEM
        rc = self._flush()
        if rc:
            return rc
        rc = fault_hit(FAULT_WAL_SYNC, self._dir_c)
        if rc == 0 and c_fsync(self._fd) != 0:
            rc = -errno
        if rc:
            return rc
        c_close(self._fd)
        self._fd = -1
        rc = self._open_segment(self._segment + 1)
        if rc:
            self._err = rc   # no segment to write to: later logs try to open it again
        return rc

    cdef int64_t _room(self) noexcept nogil:
        """Payload bytes the rest of this segment can take after the staged bytes (7 bytes of
        header per page)."""
        cdef int64_t end = self._seg_off + self._stage.len
        cdef int64_t pps = self.segment_bytes // WAL_PAGE_SIZE
        cdef int64_t room = WAL_PAGE_SIZE - end % WAL_PAGE_SIZE
        cdef int64_t done = end // WAL_PAGE_SIZE
        if room == WAL_PAGE_SIZE:
            return (pps - done) * (WAL_PAGE_SIZE - WAL_HEADER_SIZE)
        return (room - WAL_HEADER_SIZE if room > WAL_HEADER_SIZE else 0) + \
            (pps - done - 1) * (WAL_PAGE_SIZE - WAL_HEADER_SIZE)

    cdef int _frame(self, const uint8_t *rec, size_t n) noexcept nogil:
        """Append rec's fragments to the stage, starting a new segment first if it does not fit."""
        cdef int64_t end = self._seg_off + self._stage.len
        cdef int64_t room
        cdef size_t off = 0, ln
        cdef int rc, i = 0
        cdef uint8_t typ
        cdef uint8_t *h
        if <int64_t>n > self._room() and end > 0:
            rc = self._flush()
            if rc == 0:
                rc = self._finish_segment()
            if rc:
                return rc
        while True:
            end = self._seg_off + self._stage.len
            room = WAL_PAGE_SIZE - end % WAL_PAGE_SIZE
            if room <= WAL_HEADER_SIZE:
                _stage_zeros(&self._stage, room)   # no room for a header and payload
                continue
            ln = n - off
            if ln > <size_t>(room - WAL_HEADER_SIZE):
                ln = room - WAL_HEADER_SIZE
            if i == 0:
                typ = WAL_FRAG_FULL if ln == n else WAL_FRAG_FIRST
            else:
                typ = WAL_FRAG_LAST if off + ln == n else WAL_FRAG_MIDDLE
            if wbuf_reserve(&self._stage, WAL_HEADER_SIZE + ln):
                break
            h = self._stage.data + self._stage.len
            h[0] = typ
            put_be16(h + 1, <uint16_t>ln)
            put_be32(h + 3, urdar_crc32c(0, rec + off, ln))
            if ln:
                memcpy(h + WAL_HEADER_SIZE, rec + off, ln)
            self._stage.len += WAL_HEADER_SIZE + ln
            off += ln
            i += 1
            if off == n:
                break
        if self._stage.oom:
            self._stage.len = 0
            self._err = -ENOMEM
            return -ENOMEM
        # close a page that cannot take another fragment now, as wlog does
        room = WAL_PAGE_SIZE - (self._seg_off + self._stage.len) % WAL_PAGE_SIZE
        if room <= WAL_HEADER_SIZE:
            _stage_zeros(&self._stage, room)
        return 0

    cdef int _recover(self) noexcept nogil:
        """Finish what a failure left undone, so the WAL works again once the disk does:
        cut a partial record off the segment, or open the segment that could not be created."""
        cdef int rc
        if self._fd < 0:
            rc = self._open_segment(self._segment + 1)
            if rc:
                return rc
        elif ftruncate(self._fd, self._seg_off) != 0:
            return -errno
        self._stage.len = 0
        self._stage.oom = 0
        self._err = 0
        return 0

    cdef int wal_log(self, const uint8_t *rec, size_t n) noexcept nogil:
        return self.wal_log_many(&rec, &n, 1)

    cdef int wal_log_many(self, const uint8_t **recs, const size_t *lens, Py_ssize_t k) noexcept nogil:
        cdef int rc = 0
        cdef Py_ssize_t i
        if self._closed:
            return -EBADF
        if self._err:
            rc = self._recover()
            if rc:
                return rc
        for i in range(k):
            if i > 0 and <int64_t>lens[i] > self._room():
                # A later record needs the next segment: start it before the first record, so a
                # failure there cannot leave the first records on disk without the rest.
                self._stage.len = 0
                rc = self._finish_segment()
                if rc:
                    return rc
                break
            rc = self._frame(recs[i], lens[i])
            if rc:
                self._stage.len = 0
                return rc
        else:
            return self._flush()
        for i in range(k):
            rc = self._frame(recs[i], lens[i])
            if rc:
                self._stage.len = 0
                return rc
        return self._flush()

    def log(self, const uint8_t[::1] rec not None):
        """Append one record and write(2) it before returning; OSError on failure."""
        cdef int rc
        cdef const uint8_t *p = &rec[0] if rec.shape[0] else _EMPTY
        with nogil:
            rc = self.wal_log(p, rec.shape[0])
        _check_rc(rc, "WAL write to %s" % self.dir)

    def log_many(self, recs):
        """Append several records with one write(2) (more when a segment fills up)."""
        cdef Py_ssize_t k = len(recs), i
        cdef const uint8_t **ptrs
        cdef size_t *lens
        cdef const uint8_t[::1] mv
        cdef int rc = 0
        views = []
        ptrs = <const uint8_t **>malloc(sizeof(uint8_t *) * (k + 1))
        lens = <size_t *>malloc(sizeof(size_t) * (k + 1))
        try:
            if ptrs == NULL or lens == NULL:
                raise MemoryError()
            for i in range(k):
                mv = recs[i]
                views.append(mv)
                ptrs[i] = &mv[0] if mv.shape[0] else _EMPTY
                lens[i] = mv.shape[0]
            with nogil:
                rc = self.wal_log_many(ptrs, lens, k)
            _check_rc(rc, "WAL write to %s" % self.dir)
        finally:
            free(ptrs)
            free(lens)

    def sync(self):
        """fsync the current segment."""
        if self._fd >= 0 and c_fsync(self._fd) != 0:
            raise OSError(errno, "fsync WAL segment: %s" % os.strerror(errno))

    def close(self):
        """Pad the last page, fsync and close; later log() calls fail with EBADF. Idempotent."""
        cdef int rc = 0
        cdef size_t room
        if self._closed:
            return
        self._closed = True
        if self._fd < 0:
            return
        if self._err:
            ftruncate(self._fd, self._seg_off)   # best effort: no partial record at the end
        room = WAL_PAGE_SIZE - self._seg_off % WAL_PAGE_SIZE
        if room != WAL_PAGE_SIZE and not self._err:
            _stage_zeros(&self._stage, room)
            rc = self._flush()
        if rc == 0 and c_fsync(self._fd) != 0:
            rc = -errno
        c_close(self._fd)
        self._fd = -1
        _check_rc(rc, "close WAL segment")
        _fsync_dir(self.dir)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def current_segment(self):
        """Number of the segment being written."""
        return self._segment

    def segments(self):
        """(first, last) segment numbers on disk, or (None, None) when there are none."""
        segs = list_segments(self.dir)
        if not segs:
            return None, None
        return segs[0], segs[-1]

    def next_segment(self):
        """Close the current segment (padded, fsynced) and start the next; returns its number."""
        cdef int rc = 0
        if self._closed:
            raise OSError(EBADF, "WAL is closed")
        with nogil:
            if self._err:
                rc = self._recover()
            if rc == 0:
                rc = self._finish_segment()
        _check_rc(rc, "start WAL segment")
        if self.fsync:
            _fsync_dir(self.dir)
        return self._segment

    def truncate(self, before_segment):
        """Delete segments numbered below `before_segment` (never the one being written)."""
        for k in list_segments(self.dir):
            if k < before_segment and k != self._segment:
                os.unlink(segment_path(self.dir, k))


# ---- reader -----------------------------------------------------------------------------

cdef enum:
    _WHY_NONE = 0
    _WHY_NONZERO_PAD
    _WHY_SHORT_HEADER
    _WHY_SIZE
    _WHY_CROSSES_PAGE
    _WHY_SHORT_PAYLOAD
    _WHY_CRC
    _WHY_TYPE
    _WHY_ORDER
    _WHY_MIXED
    _WHY_TORN
    _WHY_OOM

_REASONS = {
    _WHY_NONZERO_PAD: "non-zero byte in page padding",
    _WHY_SHORT_HEADER: "truncated fragment header",
    _WHY_SIZE: "fragment length over a page",
    _WHY_CROSSES_PAGE: "fragment crosses a page boundary",
    _WHY_SHORT_PAYLOAD: "truncated fragment payload",
    _WHY_CRC: "fragment checksum mismatch",
    _WHY_TYPE: "invalid fragment type",
    _WHY_ORDER: "unexpected fragment type sequence",
    _WHY_MIXED: "fragments of one record disagree on compression",
    _WHY_TORN: "last record is torn",
    _WHY_OOM: "out of memory assembling a record",
}


@cython.final
cdef class SegmentReader:
    """Fragments of one segment's bytes (any buffer; an mmap in WALReader) to records."""

    def __cinit__(self, const uint8_t[::1] buf not None):
        self._buf = buf
        self._p = &buf[0] if buf.shape[0] else _EMPTY
        self._n = buf.shape[0]
        self._pos = 0
        self._good_end = 0
        wbuf_init(&self._rec, 65536)

    def __dealloc__(self):
        wbuf_free(&self._rec)

    cdef int _fail(self, int why, size_t at) noexcept nogil:
        self._why = why
        self._bad_at = at
        return -1

    cdef int next_record(self) noexcept nogil:
        cdef const uint8_t *p = self._p
        cdef size_t n = self._n
        cdef size_t pos = self._pos, stop, k
        cdef int i = 0, low, flags = 0
        cdef uint8_t typ
        cdef size_t ln
        self._rec.len = 0
        while True:
            if pos >= n:
                if i:
                    return self._fail(_WHY_TORN, self._rec_start)
                self._pos = pos
                return 0
            typ = p[pos]
            if typ == WAL_FRAG_PAD:
                # zeros to the end of the page; a file may end early (a torn last page)
                stop = (pos // WAL_PAGE_SIZE + 1) * WAL_PAGE_SIZE
                if stop > n:
                    stop = n
                for k in range(pos, stop):
                    if p[k]:
                        return self._fail(_WHY_NONZERO_PAD, k)
                pos = stop
                continue
            if i == 0:
                self._rec_start = pos
            if n - pos < WAL_HEADER_SIZE:
                return self._fail(_WHY_SHORT_HEADER, pos)
            ln = get_be16(p + pos + 1)
            if ln > WAL_PAGE_SIZE - WAL_HEADER_SIZE:
                return self._fail(_WHY_SIZE, pos)
            if pos % WAL_PAGE_SIZE + WAL_HEADER_SIZE + ln > WAL_PAGE_SIZE:
                return self._fail(_WHY_CROSSES_PAGE, pos)
            if n - pos - WAL_HEADER_SIZE < ln:
                return self._fail(_WHY_SHORT_PAYLOAD, pos)
            if urdar_crc32c(0, p + pos + WAL_HEADER_SIZE, ln) != get_be32(p + pos + 3):
                return self._fail(_WHY_CRC, pos)
            low = typ & 7
            if low < WAL_FRAG_FULL or low > WAL_FRAG_LAST:
                return self._fail(_WHY_TYPE, pos)
            if (i == 0) != (low == WAL_FRAG_FULL or low == WAL_FRAG_FIRST):
                return self._fail(_WHY_ORDER, pos)
            if i == 0:
                flags = typ & (WAL_FLAG_SNAPPY | WAL_FLAG_ZSTD)
            elif flags != typ & (WAL_FLAG_SNAPPY | WAL_FLAG_ZSTD):
                return self._fail(_WHY_MIXED, pos)
            if wbuf_reserve(&self._rec, ln):
                return self._fail(_WHY_OOM, pos)
            memcpy(self._rec.data + self._rec.len, p + pos + WAL_HEADER_SIZE, ln)
            self._rec.len += ln
            pos += WAL_HEADER_SIZE + ln
            i += 1
            if low == WAL_FRAG_FULL or low == WAL_FRAG_LAST:
                self._pos = pos
                self._good_end = pos
                self._flags = flags
                return 1

    @property
    def reason(self):
        """Why the walk stopped early, or None."""
        if self._why == _WHY_NONE:
            return None
        return "%s (fragment at offset %d)" % (_REASONS[self._why], self._bad_at)

    @property
    def good_end(self):
        """Byte offset just past the last complete record."""
        return self._good_end

    def __iter__(self):
        cdef int rc
        while True:
            with nogil:
                rc = self.next_record()
            if rc != 1:
                return
            if self._flags:
                raise ValueError("compressed record; use WALReader")
            yield PyBytes_FromStringAndSize(<const char *>self._rec.data, self._rec.len)


@cython.final
cdef class WALReader:
    """Iterates the logical records (bytes) of `checkpoint` (a checkpoint directory, read
    first) and then of the segments of `dir` numbered first..last (inclusive; None = all).

    Iteration stops at the first unreadable record; `.corruption` then holds the
    WALCorruptionError (path, segment, offset = end of the last good record, reason)."""

    def __init__(self, dir=None, first=None, last=None, checkpoint=None):
        self._segs = []
        self._i = 0
        self.corruption = None
        self.segment = None
        self.path = None
        self.offset = 0
        if checkpoint is not None:
            ks = list_segments(checkpoint)
            _check_contiguous(checkpoint, ks)
            self._segs += [(segment_path(checkpoint, k), k) for k in ks]
        if dir is not None:
            ks = [k for k in list_segments(dir)
                  if (first is None or k >= first) and (last is None or k <= last)]
            _check_contiguous(dir, ks)
            self._segs += [(segment_path(dir, k), k) for k in ks]

    cdef _close_segment(self):
        self._sr = None          # drops the memoryview before the mmap closes
        if self._mm is not None:
            self._mm.close()
            self._mm = None

    cdef int read_next(self, const uint8_t **rec, size_t *n) except -1:
        cdef int rc
        cdef SegmentReader sr
        cdef const uint8_t[::1] out
        while True:
            if self._sr is None:
                if self._i >= len(self._segs) or self.corruption is not None:
                    return 0
                path, k = self._segs[self._i]
                self.path, self.segment = path, k
                with open(path, "rb") as f:
                    size = os.fstat(f.fileno()).st_size
                    self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else None
                self._sr = SegmentReader(self._mm if self._mm is not None else b"")
            sr = self._sr
            with nogil:
                rc = sr.next_record()
            if rc == 0:
                sr = None   # the segment's views must be gone before its mmap closes
                self._close_segment()
                self._i += 1
                continue
            if rc < 0:
                self.corruption = WALCorruptionError(self.path, sr._good_end, sr.reason, self.segment)
                sr = None
                self._close_segment()
                return 0
            self.offset = sr._rec_start
            if sr._flags == 0:
                rec[0] = sr._rec.data
                n[0] = sr._rec.len
                return 1
            if sr._flags & WAL_FLAG_ZSTD:
                self.corruption = UnsupportedWALCompression(
                    self.path, sr._rec_start, "zstd-compressed WAL record (not supported; "
                    "restart Prometheus-written WALs with --storage.tsdb.wal-compression-type=snappy)",
                    self.segment)
                sr = None
                self._close_segment()
                return 0
            try:
                self._out = bytes(cramjam.snappy.decompress_raw(
                    PyBytes_FromStringAndSize(<const char *>sr._rec.data, sr._rec.len)))
            except Exception as exc:
                self.corruption = WALCorruptionError(
                    self.path, sr._rec_start, "snappy record does not decompress: %s" % exc, self.segment)
                sr = None
                self._close_segment()
                return 0
            out = self._out
            rec[0] = &out[0] if out.shape[0] else _EMPTY
            n[0] = out.shape[0]
            return 1

    def __iter__(self):
        return self

    def __next__(self):
        cdef const uint8_t *p
        cdef size_t n
        if self.read_next(&p, &n) == 0:
            raise StopIteration
        return PyBytes_FromStringAndSize(<const char *>p, n)

    def close(self):
        self._close_segment()
        self._i = len(self._segs)


def _check_contiguous(dir, ks):
    for a, b in zip(ks, ks[1:]):
        if b != a + 1:
            raise WALCorruptionError(dir, None, "missing WAL segment %08d" % (a + 1), a + 1)


# ---- repair, replay ---------------------------------------------------------------------

def repair(dir, corruption):
    """Cut the WAL in `dir` at `corruption` (from WALReader.corruption): truncate its segment
    at the end of the last good record, zero the rest of that page, delete later segments.
    Logs a warning and returns a Repair. Refuses unsupported compression (data is not bad)."""
    if isinstance(corruption, UnsupportedWALCompression) or not isinstance(corruption, WALCorruptionError):
        raise corruption
    k = corruption.segment
    path = segment_path(dir, k)
    if os.path.abspath(corruption.path) != os.path.abspath(path):
        raise ValueError("corruption %s is not in WAL directory %s" % (corruption.path, dir))
    deleted = []
    for j in list_segments(dir):
        if j > k:
            os.unlink(segment_path(dir, j))
            deleted.append(j)
    off = corruption.offset or 0
    with open(path, "r+b") as f:
        size = os.fstat(f.fileno()).st_size
        f.truncate(off)
        if off % WAL_PAGE_SIZE:
            f.seek(off)
            f.write(bytes(WAL_PAGE_SIZE - off % WAL_PAGE_SIZE))
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(dir)
    log.warning("repaired WAL %s: %s; cut segment %08d at offset %d (%d bytes), deleted %d later "
                "segment(s) %s", dir, corruption.reason, k, off, max(size - off, 0), len(deleted), deleted)
    return Repair(k, off, max(size - off, 0), deleted)


def last_checkpoint(dir):
    """(path, index) of the newest finished checkpoint.NNNNNNNN in `dir`, or (None, -1)."""
    best = -1
    try:
        names = os.listdir(dir)
    except FileNotFoundError:
        return None, -1
    for name in names:
        if name.startswith("checkpoint.") and name[11:].isdigit() and name[11:].isascii():
            best = max(best, int(name[11:]))
    if best < 0:
        return None, -1
    return os.path.join(dir, "checkpoint.%08d" % best), best


class replay_records:
    """Records to replay from WAL `dir`: the newest checkpoint, then the segments after it.

    Iterate it once. A corrupt or torn tail in the segments is cut with repair() (when
    `auto_repair`), logged, and described by `.repaired`; corruption inside the checkpoint,
    or a record in an unsupported codec, raises."""

    def __init__(self, dir, auto_repair=True):
        self.dir = dir
        self.auto_repair = auto_repair
        self.repaired = None
        self.corruption = None
        self.checkpoint, self.checkpoint_index = last_checkpoint(dir)

    def __iter__(self):
        reader = self.open()
        try:
            yield from reader
        finally:
            reader.close()
        self.finish(reader)

    def open(self):
        """The WALReader over the checkpoint and segments (callers that read records in C
        without a bytes object each: WALReader.read_next); pass it to finish() at its end."""
        first = self.checkpoint_index + 1 if self.checkpoint is not None else None
        return WALReader(self.dir, first=first, checkpoint=self.checkpoint)

    def finish(self, WALReader reader not None):
        """After `reader` (from open()) ended: cut a corrupt tail, or raise as __iter__ does."""
        reader.close()
        c = self.corruption = reader.corruption
        if c is None:
            return
        in_checkpoint = self.checkpoint is not None and \
            os.path.dirname(os.path.abspath(c.path)) == os.path.abspath(self.checkpoint)
        if in_checkpoint or not self.auto_repair or isinstance(c, UnsupportedWALCompression):
            raise c
        self.repaired = repair(self.dir, c)


# ---- checkpoint -------------------------------------------------------------------------

def _filter_samples(const uint8_t[::1] rec, int64_t mint, keep):
    """A samples record reduced to samples with t >= mint of kept series, or None if empty."""
    cdef const uint8_t *p = &rec[0] if rec.shape[0] else _EMPTY
    cdef Py_ssize_t k = rec_samples_count(p, rec.shape[0]), i, j = 0
    if k < 0:
        _records.decode_samples(rec)   # raises MalformedRecordError
    if k == 0:
        return None
    refs, ts, vs = _records.decode_samples(rec)
    cdef uint64_t[::1] r = refs
    cdef int64_t[::1] t = ts
    cdef double[::1] v = vs
    for i in range(k):
        if t[i] >= mint and keep(r[i]):
            r[j] = r[i]; t[j] = t[i]; v[j] = v[i]
            j += 1
    if j == 0:
        return None
    if j == k:
        return bytes(rec)
    return _records.encode_samples(r[:j], t[:j], v[:j])


def checkpoint(dir, first, last, keep_series, int64_t mint, segment_bytes=DEFAULT_SEGMENT_BYTES):
    """Compact the previous checkpoint and segments first..last of WAL `dir` into
    checkpoint.<last> and delete what it replaces; returns the new checkpoint's path.

    Kept: series records of refs where keep_series(ref) is true; their samples, histograms and exemplars
    with t >= mint; their tombstones that reach mint; the latest metadata per kept series.
    Other record types are dropped. The caller's writer must already be past `last`."""
    prev, prev_idx = last_checkpoint(dir)
    if prev is not None:
        if first > prev_idx + 1:
            raise ValueError("gap between checkpoint.%08d and segment %08d" % (prev_idx, first))
        if last < prev_idx:
            raise ValueError("segments up to %08d are already in checkpoint.%08d" % (last, prev_idx))
        first = prev_idx + 1   # segments below the checkpoint are already in it
    have = set(list_segments(dir))
    missing = [k for k in range(first, last + 1) if k not in have]
    if missing:
        raise WALCorruptionError(dir, None, "checkpoint needs missing segment(s) %s" % missing[:5],
                                 missing[0])
    cache = {}

    def keep(ref):
        r = cache.get(ref)
        if r is None:
            r = cache[ref] = bool(keep_series(ref))
        return r

    final = os.path.join(dir, "checkpoint.%08d" % last)
    tmp = final + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    reader = WALReader(dir, first=first, last=last, checkpoint=prev)
    w = WAL(tmp, segment_bytes)
    metadata = {}
    try:
        for rec in reader:
            typ = rec[0] if rec else 0
            if typ == REC_SERIES:
                items = [it for it in _records.decode_series(rec) if keep(it[0])]
                if items:
                    w.log(_records.encode_series(items))
            elif typ == REC_SAMPLES:
                out = _filter_samples(rec, mint, keep)
                if out is not None:
                    w.log(out)
            elif typ == REC_TOMBSTONES:
                items = [s for s in _records.decode_tombstones(rec) if s[2] >= mint and keep(s[0])]
                if items:
                    w.log(_records.encode_tombstones(items))
            elif typ == REC_EXEMPLARS:
                items = [e for e in _records.decode_exemplars(rec) if e[1] >= mint and keep(e[0])]
                if items:
                    w.log(_records.encode_exemplars(items))
            elif typ in _histrecords.HISTOGRAM_RECORD_TYPES:
                items = [x for x in _histrecords.decode_histogram_record(rec)
                         if x[1] >= mint and keep(x[0])]
                for out in _histrecords.encode_histogram_records(items):
                    w.log(out)
            elif typ == REC_METADATA:
                for m in _records.decode_metadata(rec):
                    if keep(m[0]):
                        metadata[m[0]] = m
        if reader.corruption is not None:
            raise reader.corruption
        if metadata:
            w.log(_records.encode_metadata([metadata[r] for r in sorted(metadata)]))
        w.close()
    except BaseException:
        reader.close()
        w.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.exists(final):
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(dir)
    # what the new checkpoint replaces
    for name in os.listdir(dir):
        if name.startswith("checkpoint.") and name != os.path.basename(final):
            idx = name[11:].split(".")[0]
            if idx.isdigit() and int(idx) < last or name.endswith(".tmp"):
                shutil.rmtree(os.path.join(dir, name), ignore_errors=True)
    for k in list_segments(dir):
        if k <= last:
            os.unlink(segment_path(dir, k))
    log.info("WAL checkpoint %s: segments %d..%d, mint %d", final, first, last, mint)
    return final
