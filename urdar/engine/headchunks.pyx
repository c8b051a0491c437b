# cython: language_level=3
"""Head chunk files (chunks_head/NNNNNN): where the head parks its closed chunks.

When engine/head*.pyx cuts a series' chunk it calls hc_write, which memcpys the entry into
the m-mapped file being written; the head keeps only the returned ref and reads the bytes
back through hc_get. Files are Prometheus' head chunk format (see headchunks.pxd), but urdar
rebuilds the head from the WAL on start, so reopened files are only read (iter_chunks) or
dropped (reset). remove_files_before follows head truncation. No locking here: the head
serialises calls.
"""
cimport cython
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.errno cimport errno, EBADF, EFBIG, EINVAL, ENOMEM, EOPNOTSUPP
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t, INT64_MIN
from libc.stdio cimport snprintf
from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memcpy, strlen
from posix.fcntl cimport open as c_open, O_RDWR, O_CREAT, O_TRUNC, O_CLOEXEC
from posix.mman cimport mmap, munmap, PROT_READ, PROT_WRITE, MAP_SHARED, MAP_FAILED
from posix.unistd cimport close as c_close, ftruncate, unlink

from urdar.engine.faults cimport fault_hit, FAULT_HEAD_CHUNKS
from urdar.engine.encoding cimport (
    urdar_crc32c, put_be32, put_be64, get_be32, get_be64, put_uvarint, get_uvarint, uvarint_size,
)

import os

from urdar.engine.errors import CorruptionError

cdef extern from "<fcntl.h>" nogil:
    int posix_fallocate(int fd, long offset, long length)

DEFAULT_MAX_FILE_BYTES = 128 << 20

# Live mappings made by this module (all instances). Heads of different tenants write
# concurrently without a shared lock, so the counter is atomic. Tests assert it returns
# to zero after close().
cdef extern from *:
    """
    static long urdar_hc_open_maps = 0;
    #define urdar_hc_maps_add(d) ((void)__atomic_add_fetch(&urdar_hc_open_maps, (d), __ATOMIC_RELAXED))
    #define urdar_hc_maps_get() __atomic_load_n(&urdar_hc_open_maps, __ATOMIC_RELAXED)
    """
    void urdar_hc_maps_add(long d) nogil
    long urdar_hc_maps_get() nogil


def open_maps():
    """Number of head chunk file mappings currently held by all HeadChunkFiles."""
    return urdar_hc_maps_get()


ctypedef struct _entry_t:
    uint64_t series_ref
    int64_t mint
    int64_t maxt
    uint8_t encoding
    size_t data_off
    size_t data_len


cdef Py_ssize_t _scan_entry(const uint8_t *m, size_t end, size_t off, _entry_t *e) noexcept nogil:
    """Parse and CRC-check the entry at off. Return the next offset; 0 at a clean end
    (end of data or an all-zero tail of a preallocated file); -1 torn/invalid; -2 bad CRC."""
    cdef size_t k, data_end
    cdef uint64_t n = 0
    cdef int w
    if off >= end:
        return 0
    for k in range(off, end):
        if m[k] != 0:
            break
    else:
        return 0
    if end - off < HC_ENTRY_FIXED + 1 + 4:
        return -1
    w = get_uvarint(m + off + HC_ENTRY_FIXED, m + end, &n)
    if w < 0:
        return -1
    data_end = off + HC_ENTRY_FIXED + w
    if n > end - data_end or end - data_end - n < 4:
        return -1
    data_end += n
    if urdar_crc32c(0, m + off, data_end - off) != get_be32(m + data_end):
        return -2
    e.series_ref = get_be64(m + off)
    e.mint = <int64_t>get_be64(m + off + 8)
    e.maxt = <int64_t>get_be64(m + off + 16)
    e.encoding = m[off + 24]
    e.data_off = off + HC_ENTRY_FIXED + w
    e.data_len = n
    return <Py_ssize_t>(data_end + 4)


cdef int _reserve(hc_file_t *f, size_t upto) noexcept nogil:
    """Reserve disk blocks below `upto` (rounded up a step) so page faults cannot hit ENOSPC."""
    cdef size_t target
    cdef int rc
    if upto <= f.reserved:
        return 0
    target = (upto + HC_RESERVE_STEP - 1) // HC_RESERVE_STEP * HC_RESERVE_STEP
    if target > f.map_len:
        target = f.map_len
    rc = posix_fallocate(f.fd, <long>f.reserved, <long>(target - f.reserved))
    if rc != 0 and rc != EOPNOTSUPP and rc != EINVAL:
        return -rc
    f.reserved = target
    return 0


cdef void _unmap(hc_file_t *f) noexcept nogil:
    if f.map != NULL:
        munmap(f.map, f.map_len)
        f.map = NULL
        urdar_hc_maps_add(-1)
    if f.fd >= 0:
        c_close(f.fd)
        f.fd = -1


@cython.final
cdef class HeadChunkFiles:
    """The chunks_head/ directory of one head. Opens existing files read-only (their
    entries are verified at once; see `corrupt`); new chunks go to new files."""

    def __cinit__(self, dir, size_t max_file_bytes=DEFAULT_MAX_FILE_BYTES):
        self._files = NULL
        self._cdir = NULL
        self._nfiles = self._cap = 0
        self._cur = -1
        self._next_seq = 1
        self._closed = False
        self.corrupt = None
        if max_file_bytes < HC_HEADER_SIZE + HC_MAX_ENTRY_OVERHEAD or max_file_bytes > 0xFFFFFFFFULL:
            raise ValueError("max_file_bytes must be between %d and 2**32-1"
                             % (HC_HEADER_SIZE + HC_MAX_ENTRY_OVERHEAD))
        self._max_file_bytes = max_file_bytes
        self._dir = os.fsencode(os.path.abspath(dir))   # absolute: a chdir cannot move it
        os.makedirs(self._dir, exist_ok=True)
        self._cdir = <char *>malloc(len(self._dir) + 1)
        if self._cdir == NULL:
            raise MemoryError()
        memcpy(self._cdir, <const char *>self._dir, len(self._dir) + 1)
        for seq in _list_seqs(self._dir):
            self._open_existing(seq)
            self._next_seq = seq + 1

    def __dealloc__(self):
        self._release_all()
        free(self._files)
        free(self._cdir)

    # ---- file table -----------------------------------------------------------------

    cdef hc_file_t *_find(self, uint32_t seq) noexcept nogil:
        cdef Py_ssize_t lo = 0, hi = self._nfiles, mid
        while lo < hi:
            mid = (lo + hi) // 2
            if self._files[mid].seq < seq:
                lo = mid + 1
            else:
                hi = mid
        if lo < self._nfiles and self._files[lo].seq == seq:
            return &self._files[lo]
        return NULL

    cdef hc_file_t *_add(self, uint32_t seq) noexcept nogil:
        """Append a slot (seqs only grow, so the table stays sorted); NULL when out of memory."""
        cdef hc_file_t *nf
        cdef Py_ssize_t cap
        if self._nfiles == self._cap:
            cap = self._cap * 2 if self._cap else 8
            nf = <hc_file_t *>realloc(self._files, cap * sizeof(hc_file_t))
            if nf == NULL:
                return NULL
            self._files = nf
            self._cap = cap
        nf = &self._files[self._nfiles]
        self._nfiles += 1
        nf.seq = seq
        nf.fd = -1
        nf.map = NULL
        nf.map_len = nf.used = nf.end = nf.reserved = 0
        nf.maxt = INT64_MIN
        nf.header_ok = 1
        return nf

    cdef _open_existing(self, uint32_t seq):
        cdef hc_file_t *f
        cdef int fd
        cdef size_t size
        cdef void *m
        cdef Py_ssize_t rc
        cdef _entry_t e
        path = self._path(seq)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            f = self._add(seq)
            if f == NULL:
                raise MemoryError()
            if size > 0:
                m = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0)
                if m == MAP_FAILED:
                    self._nfiles -= 1
                    raise OSError(errno, os.strerror(errno), path)
                f.map = <uint8_t *>m
                f.map_len = size
                urdar_hc_maps_add(1)
        finally:
            os.close(fd)
        f.end = size
        f.used = HC_HEADER_SIZE
        if size == 0:
            f.used = 0                 # torn at creation: nothing to read
            return
        if size < HC_HEADER_SIZE or get_be32(f.map) != HC_MAGIC or f.map[4] != HC_VERSION:
            f.header_ok = 0
            f.used = 0
            if self.corrupt is None:
                self.corrupt = CorruptionError(os.fsdecode(path), 0, "bad head chunk file header")
            return
        # Verify every entry once: maxt drives remove_files_before, used bounds hc_get.
        with nogil:
            while True:
                rc = _scan_entry(f.map, f.end, f.used, &e)
                if rc <= 0:
                    break
                if e.maxt > f.maxt:
                    f.maxt = e.maxt
                f.used = <size_t>rc
        if rc < 0 and self.corrupt is None:
            self.corrupt = CorruptionError(os.fsdecode(path), f.used, _reason(rc))

    cdef void _finish_current(self) noexcept nogil:
        """Stop writing the current file: shrink it to its used size and close its fd.
        The mapping stays (readers may hold pointers); only bytes below `used` are read."""
        cdef hc_file_t *f
        if self._cur < 0:
            return
        f = &self._files[self._cur]
        ftruncate(f.fd, f.used)
        c_close(f.fd)
        f.fd = -1
        f.end = f.used
        self._cur = -1

    cdef int _cut(self, size_t need) noexcept nogil:
        """Start file _next_seq, sized for at least one entry of `need` bytes."""
        cdef char path[4096]
        cdef size_t size = self._max_file_bytes
        cdef hc_file_t *f
        cdef int fd, rc
        cdef void *m
        if need > 0xFFFFFFFFULL - HC_HEADER_SIZE:
            return -EFBIG
        if size < HC_HEADER_SIZE + need:
            size = HC_HEADER_SIZE + need      # an oversized chunk gets a file of its own
        self._finish_current()
        snprintf(path, sizeof(path), "%s/%06u", self._cdir, self._next_seq)
        fd = c_open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        if fd < 0:
            return -errno
        if ftruncate(fd, size) != 0:
            rc = -errno
            c_close(fd)
            unlink(path)
            return rc
        m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        if m == MAP_FAILED:
            rc = -errno
            c_close(fd)
            unlink(path)
            return rc
        f = self._add(self._next_seq)
        if f == NULL:
            munmap(m, size)
            c_close(fd)
            unlink(path)
            return -ENOMEM
        urdar_hc_maps_add(1)
        f.fd = fd
        f.map = <uint8_t *>m
        f.map_len = size
        rc = _reserve(f, HC_HEADER_SIZE)
        if rc != 0:
            _unmap(f)
            self._nfiles -= 1
            unlink(path)
            return rc
        put_be32(f.map, HC_MAGIC)
        f.map[4] = HC_VERSION
        f.map[5] = f.map[6] = f.map[7] = 0
        f.used = f.end = HC_HEADER_SIZE
        self._cur = self._nfiles - 1
        self._next_seq += 1
        return 0

    cdef void _release_all(self) noexcept nogil:
        cdef Py_ssize_t i
        self._finish_current()
        for i in range(self._nfiles):
            _unmap(&self._files[i])
        self._nfiles = 0

    # ---- C API ------------------------------------------------------------------------

    cdef int hc_write(self, uint64_t series_ref, int64_t mint, int64_t maxt, uint8_t encoding,
                      const uint8_t *data, size_t n, uint64_t *ref_out) noexcept nogil:
        cdef size_t need = HC_ENTRY_FIXED + uvarint_size(n) + n + 4
        cdef hc_file_t *f
        cdef uint8_t *p
        cdef int rc, k
        if self._closed:
            return -EBADF
        if self._cur < 0 or self._files[self._cur].used + need > self._files[self._cur].map_len:
            rc = self._cut(need)
            if rc != 0:
                return rc
        f = &self._files[self._cur]
        rc = _reserve(f, f.used + need)
        if rc != 0:
            return rc
        p = f.map + f.used
        put_be64(p, series_ref)
        put_be64(p + 8, <uint64_t>mint)
        put_be64(p + 16, <uint64_t>maxt)
        p[24] = encoding
        k = put_uvarint(p + HC_ENTRY_FIXED, n)
        if n:
            memcpy(p + HC_ENTRY_FIXED + k, data, n)
        put_be32(p + HC_ENTRY_FIXED + k + n, urdar_crc32c(0, p, HC_ENTRY_FIXED + k + n))
        ref_out[0] = (<uint64_t>f.seq << 32) | f.used
        f.used += need
        f.end = f.used
        if maxt > f.maxt:
            f.maxt = maxt
        return 0

    cdef int hc_prepare(self, size_t need) noexcept nogil:
        # Files and disk blocks are what can run out; once reserved, hc_write only memcpys.
        cdef hc_file_t *f
        cdef int rc
        if self._closed:
            return -EBADF
        if need == 0:
            return 0
        rc = fault_hit(FAULT_HEAD_CHUNKS, self._cdir)   # as a failed file creation or fallocate
        if rc != 0:
            return rc
        if self._cur < 0 or self._files[self._cur].used + need > self._files[self._cur].map_len:
            rc = self._cut(need)
            if rc != 0:
                return rc
        f = &self._files[self._cur]
        return _reserve(f, f.used + need)

    cdef const uint8_t *hc_get(self, uint64_t ref, size_t *n, uint8_t *encoding) noexcept nogil:
        # No CRC check here: entries were verified when found on disk or written by us.
        cdef hc_file_t *f = self._find(<uint32_t>(ref >> 32))
        cdef size_t off = <size_t>(ref & 0xFFFFFFFFULL)
        cdef uint64_t length = 0
        cdef int w
        if f == NULL or f.map == NULL or off < HC_HEADER_SIZE or off + HC_ENTRY_FIXED + 1 > f.used:
            return NULL
        w = get_uvarint(f.map + off + HC_ENTRY_FIXED, f.map + f.used, &length)
        if w < 0:
            return NULL
        off += HC_ENTRY_FIXED + w
        if length > f.used - off or f.used - off - length < 4:
            return NULL
        n[0] = <size_t>length
        encoding[0] = f.map[off - w - 1]
        return f.map + off

    # ---- Python API ---------------------------------------------------------------------

    cdef bytes _path(self, uint32_t seq):
        return os.path.join(self._dir, b"%06d" % seq)

    cdef _check_open(self):
        if self._closed:
            raise ValueError("HeadChunkFiles %r is closed" % os.fsdecode(self._dir))

    def write(self, uint64_t series_ref, int64_t mint, int64_t maxt, uint8_t encoding, data):
        """Store one chunk's bytes; return its ref ((file_seq << 32) | offset)."""
        self._check_open()
        cdef const uint8_t[::1] buf = data
        cdef size_t n = buf.shape[0]
        cdef const uint8_t *p = &buf[0] if n else NULL
        cdef uint64_t ref = 0
        cdef int rc
        with nogil:
            rc = self.hc_write(series_ref, mint, maxt, encoding, p, n, &ref)
        if rc != 0:
            raise OSError(-rc, os.strerror(-rc), os.fsdecode(self._dir))
        return ref

    def get(self, uint64_t ref):
        """Return (encoding, chunk bytes) for a ref; KeyError if no such chunk."""
        self._check_open()
        cdef size_t n = 0
        cdef uint8_t enc = 0
        cdef const uint8_t *p = self.hc_get(ref, &n, &enc)
        if p == NULL:
            raise KeyError(ref)
        return enc, PyBytes_FromStringAndSize(<const char *>p, n)

    def iter_chunks(self):
        """Yield (ref, series_ref, mint, maxt, encoding, bytes) for every entry, verifying CRCs.

        A bad header, torn entry or CRC mismatch ends the iteration there and sets `corrupt`
        to a CorruptionError (path, offset, reason); a clean run leaves `corrupt` None."""
        cdef hc_file_t *f
        cdef _entry_t e
        cdef Py_ssize_t rc
        cdef size_t off
        cdef uint32_t seq
        self._check_open()
        self.corrupt = None
        seqs = [self._files[i].seq for i in range(self._nfiles)]
        for seq in seqs:
            f = self._find(seq)
            if f == NULL:
                continue
            if not f.header_ok:
                self.corrupt = CorruptionError(os.fsdecode(self._path(seq)), 0, "bad head chunk file header")
                return
            off = HC_HEADER_SIZE
            while True:
                f = self._find(seq)       # re-look-up: the table may change between yields
                if f == NULL or self._closed:
                    break
                rc = _scan_entry(f.map, f.end, off, &e)
                if rc == 0:
                    break
                if rc < 0:
                    self.corrupt = CorruptionError(os.fsdecode(self._path(seq)), off, _reason(rc))
                    return
                chunk = PyBytes_FromStringAndSize(<const char *>f.map + e.data_off, e.data_len)
                yield ((<uint64_t>seq << 32) | off, e.series_ref, e.mint, e.maxt, e.encoding, chunk)
                off = <size_t>rc

    cdef Py_ssize_t hc_index(self, uint32_t last_seq, int64_t floor_t, hc_index_t **out,
                             uint64_t *max_sref) noexcept nogil:
        # Entries below `used` passed their CRC when the file was opened: parsed, not re-checked.
        cdef Py_ssize_t i, n = 0, cap = 0
        cdef hc_file_t *f
        cdef size_t off
        cdef uint64_t ln, sref
        cdef int w
        cdef hc_index_t *buf = NULL
        cdef hc_index_t *nb
        cdef int64_t maxt
        max_sref[0] = 0
        for i in range(self._nfiles):
            f = &self._files[i]
            if f.seq > last_seq:
                break
            if not f.header_ok or f.map == NULL:
                continue
            off = HC_HEADER_SIZE
            while off + HC_ENTRY_FIXED < f.used:
                w = get_uvarint(f.map + off + HC_ENTRY_FIXED, f.map + f.used, &ln)
                if w < 0:
                    break
                sref = get_be64(f.map + off)
                if sref > max_sref[0]:
                    max_sref[0] = sref
                maxt = <int64_t>get_be64(f.map + off + 16)
                if maxt >= floor_t:
                    if n == cap:
                        cap = cap * 2 if cap else 4096
                        nb = <hc_index_t *>realloc(buf, cap * sizeof(hc_index_t))
                        if nb == NULL:
                            free(buf)
                            return -1
                        buf = nb
                    buf[n].series_ref = sref
                    buf[n].ref = (<uint64_t>f.seq << 32) | off
                    buf[n].mint = <int64_t>get_be64(f.map + off + 8)
                    buf[n].maxt = maxt
                    buf[n].encoding = f.map[off + 24]
                    n += 1
                off += HC_ENTRY_FIXED + w + ln + 4
        out[0] = buf
        return n

    def cut_file(self):
        """Finish the current file; the next write starts a new one."""
        self._check_open()
        self._finish_current()

    def remove_files_before(self, int64_t mint):
        """Delete every file, except the one being written, whose chunks all end before mint.
        Refs into them become invalid. Return the number of files deleted."""
        self._check_open()
        cdef Py_ssize_t i, j = 0, removed = 0
        cdef hc_file_t *f
        cur_seq = self._files[self._cur].seq if self._cur >= 0 else None
        for i in range(self._nfiles):
            f = &self._files[i]
            if i != self._cur and f.maxt < mint:
                _unmap(f)
                try:
                    os.unlink(self._path(f.seq))
                except FileNotFoundError:
                    pass
                removed += 1
            else:
                self._files[j] = self._files[i]
                j += 1
        self._nfiles = j
        if cur_seq is not None:
            self._cur = self._find(cur_seq) - self._files
        return removed

    def reset(self):
        """Unmap and delete every head chunk file; numbering restarts at 000001."""
        self._check_open()
        self._release_all()
        for seq in _list_seqs(self._dir):
            os.unlink(self._path(seq))
        self._next_seq = 1
        self.corrupt = None

    def close(self):
        """Finish the current file (truncated to its used size) and unmap everything."""
        if not self._closed:
            self._release_all()
            self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def files(self):
        """[(seq, used_bytes, max_maxt)] for each file, oldest first (max_maxt None if empty)."""
        return [(self._files[i].seq, self._files[i].used,
                 None if self._files[i].maxt == INT64_MIN else self._files[i].maxt)
                for i in range(self._nfiles)]

    @property
    def current_seq(self):
        """Sequence number of the file being written, or None."""
        return self._files[self._cur].seq if self._cur >= 0 else None

    @property
    def dir(self):
        return os.fsdecode(self._dir)

    @property
    def max_file_bytes(self):
        return self._max_file_bytes

    @property
    def closed(self):
        return self._closed


cdef str _reason(Py_ssize_t rc):
    return "CRC mismatch" if rc == -2 else "torn or invalid entry"


def _list_seqs(bytes d):
    """Sequence numbers of the head chunk files in d (numeric names), ascending."""
    seqs = []
    for name in os.listdir(d):
        if name.isdigit() and len(name) <= 10 and int(name) <= 0xFFFFFFFF and \
                os.path.isfile(os.path.join(d, name)):
            seqs.append(int(name))
    return sorted(seqs)
