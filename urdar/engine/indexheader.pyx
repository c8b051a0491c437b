# cython: language_level=3
"""Index-headers (byte diagram in indexheader.pxd) and decoders for index and chunk bytes that
arrive by ranged reads, for the store-gateway (components/storegateway.py).

`parse_toc` checks the 52-byte TOC at the end of an index, `section_length` the length/CRC frame
of its symbol table and postings offset table, `write_index_header` stores both tables with the
TOC, and `IndexHeader` mmaps the result: symbols, label names/values, the file range of each
postings list, and `decode_series` which turns one series entry from a ranged read into
(label key, mints, maxts, refs) with the header's symbols. `decode_postings` and `decode_chunk`
check the CRC of a postings list and of a chunk-segment entry. Decoding loops run without the GIL."""
cimport cython
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t
from libc.stdlib cimport malloc, free
from urdar.engine.index cimport parse_postings_entries
from urdar.engine.encoding cimport (
    urdar_crc32c, get_be32, get_be64, put_be32, put_be64, get_uvarint,
    wbuf_t, wbuf_init, wbuf_free, wbuf_put, wbuf_put_uvarint, wbuf_put_uvarint_bytes,
    rbuf_t, rbuf_init, rbuf_uvarint, rbuf_varint, rbuf_uvarint_bytes)

import mmap
import os
from array import array

from urdar.engine.errors import CorruptionError, ShortRead

INDEX_TOC_SIZE = 52
_INDEX_MAGIC = 0xBAAAD700

cdef enum:
    DS_OK = 0
    DS_SHORT = 1
    DS_BAD_CRC = 2
    DS_BAD_ENTRY = 3
    DS_BAD_SYMBOL = 4
    DS_NO_MEMORY = 5

ctypedef struct cmeta_t:
    int64_t mint
    int64_t maxt
    uint64_t ref


def parse_toc(const uint8_t[::1] tail not None, uint64_t index_size, where="index"):
    """The six TOC offsets of an index of `index_size` bytes from its last 52 bytes; CorruptionError
    when the CRC or an offset is wrong."""
    cdef int i
    if tail.shape[0] != INDEX_TOC_SIZE or index_size < INDEX_TOC_SIZE + 5:
        raise CorruptionError(where, None, "index too short for a TOC (%d bytes)" % index_size)
    if urdar_crc32c(0, &tail[0], 48) != get_be32(&tail[48]):
        raise CorruptionError(where, index_size - INDEX_TOC_SIZE, "TOC CRC32C mismatch")
    out = []
    for i in range(6):
        v = get_be64(&tail[8 * i])
        if v > index_size - INDEX_TOC_SIZE:
            raise CorruptionError(where, index_size - INDEX_TOC_SIZE + 8 * i,
                                  "TOC offset %d past the end" % v)
        out.append(v)
    return tuple(out)


def check_index_start(const uint8_t[::1] head not None, where="index"):
    """The index version (1 or 2) from the first 5 bytes of an index; CorruptionError otherwise."""
    if head.shape[0] < 5 or get_be32(&head[0]) != _INDEX_MAGIC:
        raise CorruptionError(where, 0, "bad index magic")
    if head[4] not in (1, 2):
        raise CorruptionError(where, 4, "unsupported index version %d" % head[4])
    return head[4]


def section_length(const uint8_t[::1] buf not None, uint64_t offset=0, where="index"):
    """Bytes taken by the section starting at buf[0] (len <4b> · body · CRC <4b>): ShortRead when
    `buf` is shorter than that, CorruptionError on a bad CRC. `offset` is for messages."""
    cdef uint64_t ln
    if buf.shape[0] < 4:
        raise ShortRead(0)
    ln = get_be32(&buf[0])
    if ln < 4:
        raise CorruptionError(where, offset, "section length %d too small" % ln)
    if <uint64_t>buf.shape[0] < 8 + ln:
        raise ShortRead(8 + ln)
    if urdar_crc32c(0, &buf[4], ln) != get_be32(&buf[4 + ln]):
        raise CorruptionError(where, offset, "section CRC32C mismatch")
    return 8 + ln


def write_index_header(path, int index_version, uint64_t index_size, toc, symbols, postings_table):
    """Write an index-header file at `path` atomically (tmp file, fsync, rename). `symbols` and
    `postings_table` are the index's sections verbatim (empty bytes when the TOC offset is 0)."""
    cdef uint8_t head[IH_HEAD_SIZE]
    cdef uint8_t trailer[IH_TRAILER_SIZE]
    cdef int i
    cdef uint32_t crc
    if len(toc) != 6:
        raise ValueError("a TOC has six offsets")
    for i in range(IH_HEAD_SIZE):
        head[i] = 0
    put_be32(head, IH_MAGIC)
    head[4] = IH_VERSION
    head[5] = index_version
    put_be64(head + 8, index_size)
    for i in range(6):
        put_be64(head + 16 + 8 * i, toc[i])
    sym = bytes(symbols)
    pot = bytes(postings_table)
    put_be64(trailer, IH_HEAD_SIZE)
    put_be64(trailer + 8, IH_HEAD_SIZE + len(sym))
    crc = urdar_crc32c(0, head, IH_HEAD_SIZE)
    crc = urdar_crc32c(crc, trailer, 16)
    put_be32(trailer + 16, crc)
    path = os.fspath(path)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write((<char *>head)[:IH_HEAD_SIZE])
        f.write(sym)
        f.write(pot)
        f.write((<char *>trailer)[:IH_TRAILER_SIZE])
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return IH_HEAD_SIZE + len(sym) + len(pot) + IH_TRAILER_SIZE


cdef inline str _str(const uint8_t *p, size_t n):
    return (<const char *>p)[:n].decode("utf-8", "surrogateescape")


@cython.final
cdef class IndexHeader:
    """A block's index-header file, mmap'd until close(); CorruptionError when it is damaged."""

    def __cinit__(self):
        self._sym_pos = NULL
        self._b = NULL
        self._closed = True

    def __init__(self, path):
        cdef const uint8_t *tr
        cdef uint32_t crc
        cdef uint64_t pot, nxt
        cdef int i
        self.path = os.fspath(path)
        with open(self.path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < IH_HEAD_SIZE + IH_TRAILER_SIZE:
                raise CorruptionError(self.path, None, "index-header too short (%d bytes)" % size)
            self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self._view = self._mm
        self._b = &self._view[0]
        self._n = self._view.shape[0]
        self._closed = False
        try:
            if get_be32(self._b) != IH_MAGIC or self._b[4] != IH_VERSION:
                raise CorruptionError(self.path, 0, "not an index-header (magic or version)")
            tr = self._b + self._n - IH_TRAILER_SIZE
            crc = urdar_crc32c(urdar_crc32c(0, self._b, IH_HEAD_SIZE), tr, 16)
            if crc != get_be32(tr + 16):
                raise CorruptionError(self.path, self._n - IH_TRAILER_SIZE, "trailer CRC32C mismatch")
            self.version = self._b[5]
            self.index_size = get_be64(self._b + 8)
            for i in range(6):
                self._toc[i] = get_be64(self._b + 16 + 8 * i)
            self._series_end = self.index_size - INDEX_TOC_SIZE
            for i in range(2, 6):
                nxt = self._toc[i]
                if nxt > self._toc[1] and nxt < self._series_end:
                    self._series_end = nxt
            self._sym_start = get_be64(tr)
            pot = get_be64(tr + 8)
            if self._sym_start != IH_HEAD_SIZE or pot < self._sym_start or pot > self._n - IH_TRAILER_SIZE:
                raise CorruptionError(self.path, self._n - IH_TRAILER_SIZE, "bad section offsets")
            self._load_symbols(self._sym_start, pot)
            self._load_postings(pot, self._n - IH_TRAILER_SIZE)
        except BaseException:
            self.close()
            raise

    def __dealloc__(self):
        free(self._sym_pos)

    cdef _section(self, uint64_t off, uint64_t end, what):
        cdef uint64_t ln
        if off + 8 > end:
            raise CorruptionError(self.path, off, "%s header past its end" % what)
        ln = get_be32(self._b + off)
        if ln < 4 or off + 8 + ln > end:
            raise CorruptionError(self.path, off, "%s length %d runs past its end" % (what, ln))
        if urdar_crc32c(0, self._b + off + 4, ln) != get_be32(self._b + off + 4 + ln):
            raise CorruptionError(self.path, off, "%s CRC32C mismatch" % what)
        return ln

    cdef _load_symbols(self, uint64_t off, uint64_t end):
        cdef uint64_t ln, cnt, i
        cdef rbuf_t r
        cdef size_t sl
        self._nsym = 0
        if off == end:
            return
        ln = self._section(off, end, "symbol table")
        cnt = get_be32(self._b + off + 4)
        if cnt > ln:
            raise CorruptionError(self.path, off, "symbol count %d too large" % cnt)
        self._sym_pos = <uint64_t *>malloc((cnt + 1) * sizeof(uint64_t))
        if self._sym_pos == NULL:
            raise MemoryError()
        rbuf_init(&r, self._b + off + 8, ln - 4)
        for i in range(cnt):
            self._sym_pos[i] = <uint64_t>(r.p - self._b)
            rbuf_uvarint_bytes(&r, &sl)
            if r.err:
                raise CorruptionError(self.path, self._sym_pos[i], "truncated symbol %d" % i)
        self._nsym = cnt

    cdef _load_postings(self, uint64_t off, uint64_t end):
        cdef uint64_t ln, cnt
        self._postings = {}
        offs = array("Q")
        if off != end:
            ln = self._section(off, end, "postings offset table")
            cnt = get_be32(self._b + off + 4)
            self._postings = parse_postings_entries(self.path, self._b, off + 8, ln - 4, cnt,
                                                    self.version == 1)
            for _, offsets in self._postings.values():
                offs.extend(offsets)
        # Postings lists lie back to back: a list ends at most where the next one starts, the
        # last one where the postings offset table starts.
        self._ends = array("Q", sorted(set(offs)))

    cdef int _symbol(self, uint64_t ref, const uint8_t **p, size_t *n) noexcept nogil:
        cdef uint64_t pos, ln = 0, orig
        cdef size_t lo, hi, mid
        cdef int k
        if self.version == 1:
            # v1 refs are index file offsets: map back through the copied table's position.
            if ref < self._toc[0]:
                return DS_BAD_SYMBOL
            orig = ref - self._toc[0] + self._sym_start
            lo = 0
            hi = self._nsym
            while lo < hi:
                mid = (lo + hi) // 2
                if self._sym_pos[mid] < orig:
                    lo = mid + 1
                else:
                    hi = mid
            if lo >= self._nsym or self._sym_pos[lo] != orig:
                return DS_BAD_SYMBOL
            pos = orig
        else:
            if ref >= self._nsym:
                return DS_BAD_SYMBOL
            pos = self._sym_pos[ref]
        k = get_uvarint(self._b + pos, self._b + self._n, &ln)
        if k < 0:
            return DS_BAD_SYMBOL
        p[0] = self._b + pos + k
        n[0] = ln
        return DS_OK

    cdef _check_open(self):
        if self._closed:
            raise ValueError("IndexHeader is closed")

    @property
    def toc(self):
        """The index's six TOC offsets."""
        return tuple(self._toc[i] for i in range(6))

    @property
    def series_end(self):
        """First index byte after the series section."""
        return self._series_end

    @property
    def size(self):
        """Bytes of the header file."""
        return self._n

    def symbols(self):
        cdef uint32_t i
        cdef uint64_t ln = 0
        cdef int k
        self._check_open()
        out = []
        for i in range(self._nsym):
            k = get_uvarint(self._b + self._sym_pos[i], self._b + self._n, &ln)
            out.append(_str(self._b + self._sym_pos[i] + k, ln))
        return out

    def label_names(self):
        self._check_open()
        return sorted(n for n in self._postings if n != "")

    def label_values(self, name):
        self._check_open()
        e = self._postings.get(name)
        return list(e[0]) if e is not None else []

    def postings_table(self):
        """dict name -> list of (value, index offset), sorted."""
        self._check_open()
        return {n: list(zip(v, o)) for n, (v, o) in self._postings.items()}

    def postings_range(self, name, value):
        """(start, end) index byte range holding the postings list of name=value (end is an upper
        bound), or None when the index has no such list."""
        self._check_open()
        e = self._postings.get(name)
        if e is None:
            return None
        values, offsets = e
        lo, hi = 0, len(values)
        while lo < hi:
            mid = (lo + hi) // 2
            if values[mid] < value:
                lo = mid + 1
            else:
                hi = mid
        if lo >= len(values) or values[lo] != value:
            return None
        start = offsets[lo]
        ends = self._ends
        a, b = 0, len(ends)
        while a < b:
            mid = (a + b) // 2
            if ends[mid] <= start:
                a = mid + 1
            else:
                b = mid
        end = ends[a] if a < len(ends) else self._toc[5]
        if end <= start:
            end = self.index_size - INDEX_TOC_SIZE
        return start, end

    def series_offset(self, uint64_t id):
        """Index byte offset of series `id`."""
        return id * 16 if self.version != 1 else id

    def decode_series(self, const uint8_t[::1] buf not None, Py_ssize_t pos=0, uint64_t offset=0):
        """(label key, mints array('q'), maxts array('q'), refs array('Q')) of the series entry at
        buf[pos:]; `offset` is its index offset (for messages). ShortRead(needed) when the entry
        does not fit in buf; CorruptionError when it is damaged."""
        cdef wbuf_t key, metas
        cdef int rc
        cdef uint64_t need = 0
        cdef size_t n, i
        cdef cmeta_t *m
        cdef const uint8_t *p
        cdef size_t avail
        self._check_open()
        if pos < 0 or pos > buf.shape[0]:
            raise ValueError("position outside the buffer")
        avail = buf.shape[0] - pos
        p = &buf[0] + pos if buf.shape[0] else NULL
        wbuf_init(&key, 128)
        wbuf_init(&metas, 16 * sizeof(cmeta_t))
        try:
            with nogil:
                rc = self._decode_series(p, avail, &key, &metas, &need)
            if rc == DS_SHORT:
                raise ShortRead(need)
            if rc == DS_NO_MEMORY:
                raise MemoryError()
            if rc:
                raise CorruptionError(self.path.replace("index-header", "index"), offset,
                                      "series entry: %s" % _DS_TEXT.get(rc, "bad bytes"))
            n = metas.len // sizeof(cmeta_t)
            m = <cmeta_t *>metas.data
            mints = array("q", [m[i].mint for i in range(n)])
            maxts = array("q", [m[i].maxt for i in range(n)])
            refs = array("Q", [m[i].ref for i in range(n)])
            return PyBytes_FromStringAndSize(<char *>key.data, key.len), mints, maxts, refs
        finally:
            wbuf_free(&key)
            wbuf_free(&metas)

    cdef int _decode_series(self, const uint8_t *b, size_t avail, wbuf_t *key, wbuf_t *metas,
                            uint64_t *need) noexcept nogil:
        cdef uint64_t ln = 0, nlab, nch, i, ref
        cdef int k, rc
        cdef rbuf_t r
        cdef const uint8_t *sp
        cdef size_t sn
        cdef cmeta_t m
        k = get_uvarint(b, b + avail, &ln) if avail else -1
        if k < 0:
            need[0] = 0 if avail < 10 else 10
            return DS_SHORT if avail < 10 else DS_BAD_ENTRY
        if k + ln + 4 > avail:
            need[0] = k + ln + 4
            return DS_SHORT
        if urdar_crc32c(0, b + k, ln) != get_be32(b + k + ln):
            return DS_BAD_CRC
        rbuf_init(&r, b + k, ln)
        nlab = rbuf_uvarint(&r)
        if r.err or nlab > ln:
            return DS_BAD_ENTRY
        wbuf_put_uvarint(key, nlab)
        for i in range(2 * nlab):
            ref = rbuf_uvarint(&r)
            if r.err:
                return DS_BAD_ENTRY
            rc = self._symbol(ref, &sp, &sn)
            if rc:
                return rc
            wbuf_put_uvarint_bytes(key, sp, sn)
        nch = rbuf_uvarint(&r)
        if r.err or nch > ln:
            return DS_BAD_ENTRY
        m.mint = m.maxt = 0
        m.ref = 0
        for i in range(nch):
            if i == 0:
                m.mint = rbuf_varint(&r)
                m.maxt = m.mint + <int64_t>rbuf_uvarint(&r)
                m.ref = rbuf_uvarint(&r)
            else:
                m.mint = m.maxt + <int64_t>rbuf_uvarint(&r)
                m.maxt = m.mint + <int64_t>rbuf_uvarint(&r)
                m.ref = m.ref + <uint64_t>rbuf_varint(&r)
            if r.err:
                return DS_BAD_ENTRY
            wbuf_put(metas, &m, sizeof(m))
        if key.oom or metas.oom:
            return DS_NO_MEMORY
        return DS_OK

    def close(self):
        """Unmap the file. Idempotent."""
        self._closed = True
        self._b = NULL
        self._view = None
        if self._mm is not None:
            self._mm.close()
            self._mm = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


_DS_TEXT = {DS_BAD_CRC: "CRC32C mismatch", DS_BAD_ENTRY: "malformed entry",
            DS_BAD_SYMBOL: "symbol reference out of range"}


def decode_postings(const uint8_t[::1] buf not None, Py_ssize_t pos=0, where="index",
                    uint64_t offset=0):
    """Series ids (array('I'), ascending) of the postings list at buf[pos:] (len <4b> · #ids <4b>
    · ids <4b each> · CRC <4b>); ShortRead / CorruptionError as decode_series."""
    cdef uint64_t ln, cnt, i, avail
    cdef const uint8_t *p
    cdef uint32_t[::1] dst
    if pos < 0 or pos > buf.shape[0]:
        raise ValueError("position outside the buffer")
    avail = buf.shape[0] - pos
    if avail < 8:
        raise ShortRead(8 if avail >= 4 and get_be32(&buf[pos]) < 4 else
                        (8 + get_be32(&buf[pos]) if avail >= 4 else 0))
    p = &buf[pos]
    ln = get_be32(p)
    cnt = get_be32(p + 4)
    if ln < 4 or 4 + 4 * cnt != ln:
        raise CorruptionError(where, offset, "postings list: malformed entry")
    if avail < 8 + ln:
        raise ShortRead(8 + ln)
    if urdar_crc32c(0, p + 4, ln) != get_be32(p + 4 + ln):
        raise CorruptionError(where, offset, "postings list: CRC32C mismatch")
    out = array("I", bytes(4 * cnt)) if cnt else array("I")
    if cnt:
        dst = out
        with nogil:
            for i in range(cnt):
                dst[i] = get_be32(p + 8 + 4 * i)
    return out


def decode_chunk(const uint8_t[::1] buf not None, Py_ssize_t pos=0, where="chunks",
                 uint64_t offset=0):
    """(encoding, data bytes) of the chunk-segment entry at buf[pos:] (uvarint len · encoding
    <1b> · data · CRC32C over encoding and data); ShortRead / CorruptionError as decode_series."""
    cdef uint64_t ln = 0, avail
    cdef int k
    cdef const uint8_t *p
    if pos < 0 or pos > buf.shape[0]:
        raise ValueError("position outside the buffer")
    avail = buf.shape[0] - pos
    p = &buf[0] + pos if buf.shape[0] else NULL
    k = get_uvarint(p, p + avail, &ln) if avail else -1
    if k < 0:
        if avail < 10:
            raise ShortRead(0)
        raise CorruptionError(where, offset, "chunk: bad length")
    if k + 1 + ln + 4 > avail:
        raise ShortRead(k + 1 + ln + 4)
    if urdar_crc32c(0, p + k, 1 + ln) != get_be32(p + k + 1 + ln):
        raise CorruptionError(where, offset, "chunk: CRC32C mismatch")
    return p[k], PyBytes_FromStringAndSize(<const char *>(p + k + 1), ln)
