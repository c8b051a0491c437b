# cython: language_level=3
"""Block chunk segment files (chunks/000001 ...): ChunkWriter appends CRC'd chunk records and
hands out chunk refs for the index; ChunkReader mmaps the segments and serves chunks by ref,
from Python as zero-copy memoryviews and from Cython without the GIL (cr_chunk).

Sits between compaction/block writing (engine/block) and querying (store-gateway reads)."""
cimport cython
from cpython.buffer cimport PyBUF_WRITABLE
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdlib cimport malloc, free
from urdar.engine.encoding cimport (
    urdar_crc32c, get_be32, put_be32, get_uvarint, put_uvarint, uvarint_size)

import mmap
import os

from urdar.engine.errors import CorruptionError

DEFAULT_SEGMENT_BYTES = 512 * 1024 * 1024

_ERR_TEXT = {
    CR_BAD_SEGMENT: "chunk ref names a segment that does not exist",
    CR_BAD_OFFSET: "chunk ref offset outside the segment",
    CR_BAD_LENGTH: "chunk record runs past the end of its segment",
    CR_BAD_CRC: "chunk CRC32C mismatch",
}


def segment_name(uint32_t seq):
    """File name of the 1-based segment number `seq` (6 digits, like Prometheus)."""
    return "%06d" % seq


def _segment_files(directory):
    """Sorted (number, path) pairs of the numeric segment files in `directory`."""
    out = []
    for name in os.listdir(directory):
        if name.isdigit():
            out.append((int(name), os.path.join(directory, name)))
    out.sort()
    return out


@cython.final
cdef class ChunkWriter:
    """Writes chunk records into `dir`/000001, 000002, ...; a record never spans two files.

    A new file is started when the next record would push the current one past
    `segment_bytes` (default 512 MiB). write() returns the chunk's ref. close() flushes and
    fsyncs every file (and the directory); the writer owns its files until then."""

    def __init__(self, directory, uint64_t segment_bytes=DEFAULT_SEGMENT_BYTES):
        if segment_bytes <= CHUNK_HEADER_SIZE + CHUNK_MAX_OVERHEAD:
            raise ValueError("segment_bytes too small: %d" % segment_bytes)
        self._dir = os.fspath(directory)
        self._segment_bytes = segment_bytes
        self._file = None
        self._seq = 0
        self._pos = 0
        self._chunks = 0
        self._paths = []
        os.makedirs(self._dir, exist_ok=True)

    cdef _cut(self):
        """Close the open segment (fsync'd) and start the next one with its header."""
        cdef uint8_t hdr[8]
        self._finish_file()
        self._seq += 1
        path = os.path.join(self._dir, segment_name(self._seq))
        self._file = open(path, "wb", buffering=1 << 20)
        self._paths.append(path)
        put_be32(hdr, CHUNK_MAGIC)
        hdr[4] = CHUNK_FORMAT_V1
        hdr[5] = hdr[6] = hdr[7] = 0
        self._file.write((<char *>hdr)[:8])
        self._pos = CHUNK_HEADER_SIZE

    cdef _finish_file(self):
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None

    cpdef uint64_t write(self, uint8_t encoding, const uint8_t[::1] data) except? 0xFFFFFFFFFFFFFFFF:
        """Append one chunk (its encoding byte and data); return its ref."""
        cdef size_t n = data.shape[0]
        cdef uint8_t head[11]
        cdef uint8_t tail[4]
        cdef int hl
        cdef uint32_t crc
        cdef uint64_t rec, ref
        if self._closed:
            raise ValueError("ChunkWriter is closed")
        if n > 0xFFFFFFFF:
            raise ValueError("chunk of %d bytes is too large" % n)
        rec = uvarint_size(n) + 1 + n + 4
        if self._file is None or (self._pos > CHUNK_HEADER_SIZE and
                                  self._pos + rec > self._segment_bytes):
            self._cut()
        ref = (<uint64_t>(self._seq - 1) << 32) | self._pos
        hl = put_uvarint(head, n)
        head[hl] = encoding
        crc = urdar_crc32c(0, &head[hl], 1)
        if n:
            crc = urdar_crc32c(crc, &data[0], n)
        put_be32(tail, crc)
        self._file.write((<char *>head)[:hl + 1])
        self._file.write(data)
        self._file.write((<char *>tail)[:4])
        self._pos += rec
        self._chunks += 1
        return ref

    def close(self):
        """Flush and fsync every segment and the directory. Idempotent."""
        if self._closed:
            return
        self._finish_file()
        fd = os.open(self._dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self._closed = True

    @property
    def paths(self):
        """Paths of the segment files written so far."""
        return list(self._paths)

    @property
    def num_chunks(self):
        return self._chunks

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@cython.final
cdef class _Segment:
    """One read-only mmap'd segment; chunk memoryviews are slices of a view of this object,
    and the number of live exports is counted so the map is never unmapped under them."""

    def __cinit__(self, path):
        self.path = path
        self._exports = 0
        self.base = NULL
        self.size = 0
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                self._mm = None
                return
            self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self._view = self._mm
        self.base = &self._view[0]
        self.size = self._view.shape[0]

    def __getbuffer__(self, Py_buffer *buf, int flags):
        if flags & PyBUF_WRITABLE:
            raise BufferError("chunk segments are read-only")
        if self._mm is None or self.base == NULL:
            raise BufferError("segment is closed")
        buf.buf = <void *>self.base
        buf.len = self.size
        buf.readonly = 1
        buf.itemsize = 1
        buf.format = "B"
        buf.ndim = 1
        buf.shape = NULL
        buf.strides = NULL
        buf.suboffsets = NULL
        buf.internal = NULL
        buf.obj = self
        self._exports += 1

    def __releasebuffer__(self, Py_buffer *buf):
        self._exports -= 1

    cdef int close(self) except -1:
        if self._exports:
            raise BufferError("%d chunk views of %s are still alive" % (self._exports, self.path))
        self.base = NULL
        self._view = None
        if self._mm is not None:
            self._mm.close()
            self._mm = None
        return 0


@cython.final
cdef class ChunkReader:
    """Reads the chunk segments of one block directory (`dir` is the chunks/ folder).

    Every numeric file is mmap'd read-only; segment index i is the i-th file in sorted order.
    chunk(ref) returns (encoding, memoryview) without copying; the views keep their segment
    mapped, and close() refuses (BufferError) while any is alive. With verify=True every chunk
    read checks its CRC32C. Bad refs and bad bytes raise CorruptionError."""

    def __cinit__(self):
        self._bases = NULL
        self._sizes = NULL
        self._nseg = 0
        self._closed = True

    def __init__(self, directory, bint verify=False):
        cdef uint32_t i
        cdef _Segment seg
        self._dir = os.fspath(directory)
        self._verify = verify
        self._segments = []
        files = _segment_files(self._dir)
        for k, (num, path) in enumerate(files):
            if num != k + 1:
                raise CorruptionError(path, None, "chunk segments are not numbered 1..N without gaps")
        try:
            for num, path in files:
                seg = _Segment(path)
                self._segments.append(seg)
                if seg.size < CHUNK_HEADER_SIZE:
                    raise CorruptionError(path, 0, "segment shorter than its 8-byte header")
                if get_be32(seg.base) != CHUNK_MAGIC:
                    raise CorruptionError(path, 0, "bad chunk segment magic 0x%08X" % get_be32(seg.base))
                if seg.base[4] != CHUNK_FORMAT_V1:
                    raise CorruptionError(path, 4, "unsupported chunk segment version %d" % seg.base[4])
        except BaseException:
            for seg in self._segments:
                seg.close()
            self._segments = []
            raise
        self._nseg = len(self._segments)
        self._bases = <const uint8_t **>malloc(max(1, self._nseg) * sizeof(uint8_t *))
        self._sizes = <size_t *>malloc(max(1, self._nseg) * sizeof(size_t))
        if self._bases == NULL or self._sizes == NULL:
            raise MemoryError()
        for i in range(self._nseg):
            seg = self._segments[i]
            self._bases[i] = seg.base
            self._sizes[i] = seg.size
        self._closed = False

    def __dealloc__(self):
        free(self._bases)
        free(self._sizes)

    cdef const uint8_t *cr_chunk_checked(self, uint64_t ref, size_t *n, uint8_t *enc,
                                         bint verify) noexcept nogil:
        """Pointer to the data of chunk `ref` (n = its length, enc = its encoding byte).

        On failure return NULL with *enc set to a CR_* code. Valid until close()."""
        cdef uint64_t seg = ref >> 32
        cdef uint64_t off = ref & 0xFFFFFFFFULL
        cdef const uint8_t *base
        cdef size_t size
        cdef uint64_t ln = 0
        cdef int k
        cdef uint32_t crc
        if self._closed or seg >= self._nseg:
            enc[0] = CR_BAD_SEGMENT
            return NULL
        base = self._bases[seg]
        size = self._sizes[seg]
        if off < CHUNK_HEADER_SIZE or off >= size:
            enc[0] = CR_BAD_OFFSET
            return NULL
        k = get_uvarint(base + off, base + size, &ln)
        # record = len · encoding · data · crc must fit in the file
        if k < 0 or ln > size or off + k + 1 + ln + 4 > size:
            enc[0] = CR_BAD_LENGTH
            return NULL
        if verify:
            crc = urdar_crc32c(0, base + off + k, 1 + ln)
            if crc != get_be32(base + off + k + 1 + ln):
                enc[0] = CR_BAD_CRC
                return NULL
        enc[0] = base[off + k]
        n[0] = ln
        return base + off + k + 1

    cdef const uint8_t *cr_chunk(self, uint64_t ref, size_t *n, uint8_t *enc) noexcept nogil:
        """cr_chunk_checked with the reader's own verify setting."""
        return self.cr_chunk_checked(ref, n, enc, self._verify)

    cdef _raise(self, uint64_t ref, uint8_t code):
        seg = ref >> 32
        path = (<_Segment>self._segments[seg]).path if seg < self._nseg else os.path.join(self._dir, segment_name(seg + 1))
        raise CorruptionError(path, ref & 0xFFFFFFFF, "%s (ref 0x%x)" % (_ERR_TEXT.get(code, "bad chunk"), ref))

    def chunk(self, uint64_t ref, verify=None):
        """(encoding, memoryview of the chunk data) for `ref`; the view is zero-copy and read-only."""
        cdef size_t n = 0
        cdef uint8_t enc = 0
        cdef const uint8_t *p
        cdef bint v = self._verify if verify is None else bool(verify)
        if self._closed:
            raise ValueError("ChunkReader is closed")
        p = self.cr_chunk_checked(ref, &n, &enc, v)
        if p == NULL:
            self._raise(ref, enc)
        seg = <_Segment>self._segments[ref >> 32]
        start = p - seg.base
        return enc, memoryview(seg)[start:start + n]

    def chunk_bytes(self, uint64_t ref, verify=None):
        """(encoding, bytes) for `ref`: like chunk() but copied, so nothing pins the mapping."""
        enc, view = self.chunk(ref, verify)
        try:
            return enc, bytes(view)
        finally:
            view.release()

    def iter_refs(self):
        """Every chunk ref in file order, walking record by record (checks each CRC)."""
        cdef uint32_t s
        cdef uint64_t off, ln
        cdef int k
        cdef _Segment seg
        out = []
        for s in range(self._nseg):
            seg = self._segments[s]
            off = CHUNK_HEADER_SIZE
            while off < seg.size:
                if seg.base[off] == 0 and off + 1 == seg.size:
                    break
                k = get_uvarint(seg.base + off, seg.base + seg.size, &ln)
                if k < 0 or off + k + 1 + ln + 4 > seg.size:
                    raise CorruptionError(seg.path, off, "truncated chunk record")
                if urdar_crc32c(0, seg.base + off + k, 1 + ln) != get_be32(seg.base + off + k + 1 + ln):
                    raise CorruptionError(seg.path, off, "chunk CRC32C mismatch")
                out.append((<uint64_t>s << 32) | off)
                off += k + 1 + ln + 4
        return out

    @property
    def num_segments(self):
        return self._nseg

    @property
    def exported_views(self):
        """Chunk memoryviews (or their bases) still alive across all segments."""
        cdef _Segment seg
        cdef Py_ssize_t total = 0
        for seg in self._segments:
            total += seg._exports
        return total

    def close(self):
        """Unmap every segment; BufferError if a chunk view is still alive. Idempotent."""
        cdef _Segment seg
        if self._closed:
            return
        for seg in self._segments:
            if seg._exports:
                raise BufferError("%d chunk views of %s are still alive" % (seg._exports, seg.path))
        self._closed = True
        self._nseg = 0
        for seg in self._segments:
            seg.close()
        self._segments = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
