# cython: language_level=3
"""Native histogram chunks, byte-compatible with Prometheus chunk encodings 2 and 3.

Layout (FORMAT.md): 2-byte BE sample count · 1 flag byte whose top two bits are the counter
reset header (00 unknown, 10 reset, 01 not a reset, 11 gauge) · MSB-first bitstream:

  layout   zero threshold (1 byte: 0, 243+exp of a power of two 2^-243..2^10, or 255 + 64 bits)
           · varbit schema · positive spans · negative spans (varbit-uint count, then per span
           varbit-uint length, varbit-int offset) · for schema -53 the custom bounds (varbit-uint
           count, each a varbit-uint 1+bound*1000 or a 0 bit + 64 raw bits)
  sample 0 varbit t · int: varbit-uint count, varbit-uint zero count, 64-bit sum, varbit-int
           bucket deltas | float: 64-bit count, zero count, sum, buckets
  sample n varbit dod(t) · int: varbit dod of count, zero count, XOR'd sum, dod of each bucket
           delta | float: XOR'd count, zero count, sum, each bucket (each with its own window)

The bucket layout belongs to the chunk. A sample whose buckets the chunk lacks re-encodes the
chunk with the wider layout (missing buckets as zeros); one missing a bucket the chunk holds
gets it as zero when that bucket is empty; a counter reset, schema or zero threshold change,
or a stale marker ends the chunk. These rules and the resulting bytes are Prometheus'
(chunkenc.HistogramAppender.AppendHistogram); the head keeps the open chunk's samples in
memory so a re-encode is a plain encode of the whole chunk.

Python-level Cython: the bit writer and varbit coders are typed, the histogram structure
handling works on Python lists (per-bucket dods cannot be batched across samples anyway).
"""
from libc.stdint cimport uint64_t, int64_t, uint8_t, INT64_MIN, INT64_MAX
from libc.math cimport frexp, floor
from libc.string cimport memcpy
import math
import struct

from urdar.engine.histogram import (
    Histogram, FloatHistogram, UNKNOWN_COUNTER_RESET, COUNTER_RESET, NOT_COUNTER_RESET,
    GAUGE_TYPE, CUSTOM_BUCKETS_SCHEMA, EXPONENTIAL_SCHEMA_MIN, EXPONENTIAL_SCHEMA_MAX)

ENC_HISTOGRAM = 2
ENC_FLOAT_HISTOGRAM = 3
TARGET_BYTES = 1024             # chunkenc.TargetBytesPerHistogramChunk
MIN_SAMPLES = 10                # chunkenc.MinSamplesPerHistogramChunk
STALE_NAN_BITS = 0x7FF0000000000002
MAX_SAMPLES = 65535

# counter reset hint (histogram.py numbering) -> header bits, and back
_HEADER_OF_HINT = {UNKNOWN_COUNTER_RESET: 0x00, COUNTER_RESET: 0x80, NOT_COUNTER_RESET: 0x40,
                   GAUGE_TYPE: 0xC0}

cdef inline uint64_t _f64_bits(double v) noexcept:
    cdef uint64_t u
    memcpy(&u, &v, 8)
    return u

cdef inline double _bits_f64(uint64_t u) noexcept:
    cdef double v
    memcpy(&v, &u, 8)
    return v


def is_stale(double v):
    return _f64_bits(v) == STALE_NAN_BITS


class HistogramChunkError(ValueError):
    """Chunk bytes that do not decode."""


# ---- bit streams ---------------------------------------------------------------------------

cdef class _Writer:
    cdef bytearray buf
    cdef int free          # unused low bits of the last byte

    def __init__(self, bytes head=b"\x00\x00\x00"):
        self.buf = bytearray(head)
        self.free = 0

    cdef void bits(self, uint64_t u, int nbits):
        cdef int take
        cdef uint64_t chunk
        while nbits > 0:
            if self.free == 0:
                self.buf.append(0)
                self.free = 8
            take = nbits if nbits < self.free else self.free
            chunk = (u >> (nbits - take)) & ((1 << take) - 1)
            self.buf[len(self.buf) - 1] |= <uint8_t>(chunk << (self.free - take))
            self.free -= take
            nbits -= take

    cdef void varbit_int(self, int64_t v):
        cdef uint64_t u = <uint64_t>v
        if v == 0:
            self.bits(0, 1)
        elif -3 <= v <= 4:
            self.bits(0b10, 2); self.bits(u, 3)
        elif -31 <= v <= 32:
            self.bits(0b110, 3); self.bits(u, 6)
        elif -255 <= v <= 256:
            self.bits(0b1110, 4); self.bits(u, 9)
        elif -2047 <= v <= 2048:
            self.bits(0b11110, 5); self.bits(u, 12)
        elif -131071 <= v <= 131072:
            self.bits(0b111110, 6); self.bits(u, 18)
        elif -16777215 <= v <= 16777216:
            self.bits(0b1111110, 7); self.bits(u, 25)
        elif -36028797018963967 <= v <= 36028797018963968:
            self.bits(0b11111110, 8); self.bits(u, 56)
        else:
            self.bits(0b11111111, 8); self.bits(u, 64)

    cdef void varbit_uint(self, uint64_t u):
        if u == 0:
            self.bits(0, 1)
        elif u < (1 << 3):
            self.bits(0b10, 2); self.bits(u, 3)
        elif u < (1 << 6):
            self.bits(0b110, 3); self.bits(u, 6)
        elif u < (1 << 9):
            self.bits(0b1110, 4); self.bits(u, 9)
        elif u < (1 << 12):
            self.bits(0b11110, 5); self.bits(u, 12)
        elif u < (1 << 18):
            self.bits(0b111110, 6); self.bits(u, 18)
        elif u < (1 << 25):
            self.bits(0b1111110, 7); self.bits(u, 25)
        elif u < (1 << 56):
            self.bits(0b11111110, 8); self.bits(u, 56)
        else:
            self.bits(0b11111111, 8); self.bits(u, 64)

    cdef void xor(self, double new, double cur, list window):
        """Prometheus' xorWrite; window = [leading, trailing], leading 0xff = none yet."""
        cdef uint64_t d = _f64_bits(new) ^ _f64_bits(cur)
        cdef int lead, trail, sig
        if d == 0:
            self.bits(0, 1)
            return
        self.bits(1, 1)
        lead = _clz(d)
        trail = _ctz(d)
        if lead >= 32:
            lead = 31
        if window[0] != 0xff and lead >= window[0] and trail >= window[1]:
            self.bits(0, 1)
            self.bits(d >> <int>window[1], 64 - <int>window[0] - <int>window[1])
            return
        window[0] = lead
        window[1] = trail
        self.bits(1, 1)
        self.bits(lead, 5)
        sig = 64 - lead - trail
        self.bits(sig, 6)        # 64 wraps to 0 in 6 bits, as in Go
        self.bits(d >> trail, sig)


cdef inline int _clz(uint64_t d) noexcept:
    cdef int n = 0
    while n < 64 and not (d >> (63 - n)) & 1:
        n += 1
    return n

cdef inline int _ctz(uint64_t d) noexcept:
    cdef int n = 0
    while n < 64 and not (d >> n) & 1:
        n += 1
    return n


cdef class _Reader:
    cdef bytes data
    cdef Py_ssize_t pos     # bit position
    cdef Py_ssize_t nbits

    def __init__(self, bytes data, Py_ssize_t start_byte):
        self.data = data
        self.pos = start_byte * 8
        self.nbits = len(data) * 8

    cdef uint64_t bits(self, int n) except? 0xFFFFFFFFFFFFFFFF:
        cdef uint64_t v = 0
        cdef const unsigned char *p = self.data
        cdef int i
        if self.pos + n > self.nbits:
            raise HistogramChunkError("histogram chunk ends early")
        for i in range(n):
            v = (v << 1) | ((p[self.pos >> 3] >> (7 - (self.pos & 7))) & 1)
            self.pos += 1
        return v

    cdef int _prefix(self) except -1:
        cdef int d = 0, i
        for i in range(8):
            if self.bits(1) == 0:
                return i
        return 8

    cdef int64_t varbit_int(self) except? -1:
        cdef int k = self._prefix()
        cdef int sz
        cdef uint64_t b
        if k == 0:
            return 0
        if k == 8:
            return <int64_t>self.bits(64)
        sz = (3, 6, 9, 12, 18, 25, 56)[k - 1]
        b = self.bits(sz)
        if b > (<uint64_t>1 << (sz - 1)):
            return <int64_t>b - (<int64_t>1 << sz)
        return <int64_t>b

    cdef uint64_t varbit_uint(self) except? 0xFFFFFFFFFFFFFFFF:
        cdef int k = self._prefix()
        if k == 0:
            return 0
        if k == 8:
            return self.bits(64)
        return self.bits((3, 6, 9, 12, 18, 25, 56)[k - 1])

    cdef double xor(self, double cur, list window) except? -1.0:
        cdef int lead, sig
        if self.bits(1) == 0:
            return cur
        if self.bits(1) == 1:
            lead = <int>self.bits(5)
            sig = <int>self.bits(6)
            if sig == 0:
                sig = 64
            window[0] = lead
            window[1] = 64 - lead - sig
        elif window[0] == 0xff:
            raise HistogramChunkError("histogram chunk reuses an XOR window it never set")
        sig = 64 - <int>window[0] - <int>window[1]
        return _bits_f64(_f64_bits(cur) ^ (self.bits(sig) << <int>window[1]))


# ---- layout ----------------------------------------------------------------------------------

cdef void _put_zero_threshold(_Writer w, double zt):
    cdef int exp
    cdef double frac
    if zt == 0:
        w.bits(0, 8)
        return
    frac = frexp(zt, &exp)
    if frac != 0.5 or exp < -242 or exp > 11:
        w.bits(255, 8)
        w.bits(_f64_bits(zt), 64)
        return
    w.bits(exp + 243, 8)


cdef void _put_custom_bound(_Writer w, double f):
    cdef double tf = f * 1000
    if tf < 0 or tf > 33554430 or not _whole_when_multiplied(f):
        w.bits(0, 1)
        w.bits(_f64_bits(f), 64)
        return
    w.varbit_uint(<uint64_t>_go_round(tf) + 1)


cdef double _go_round(double x):
    # Go's math.Round: half away from zero
    return math.floor(x + 0.5) if x >= 0 else -math.floor(-x + 0.5)


cdef bint _whole_when_multiplied(double f):
    cdef double r = _go_round(f * 1000)
    if r < 0:
        return False     # Go's uint() conversion of a negative float; tf < 0 is caught first
    return f == <double>(<uint64_t>r) / 1000


cdef void _put_layout(_Writer w, h):
    _put_zero_threshold(w, h.zero_threshold)
    w.varbit_int(h.schema)
    for spans in (h.positive_spans, h.negative_spans):
        w.varbit_uint(len(spans))
        for off, length in spans:
            w.varbit_uint(length)
            w.varbit_int(off)
    if h.schema == CUSTOM_BUCKETS_SCHEMA:
        w.varbit_uint(len(h.custom_values))
        for b in h.custom_values:
            _put_custom_bound(w, b)


cdef tuple _read_layout(_Reader r):
    cdef int b = <int>r.bits(8)
    cdef double zt
    if b == 0:
        zt = 0.0
    elif b == 255:
        zt = _bits_f64(r.bits(64))
    else:
        zt = math.ldexp(0.5, b - 243)
    schema = r.varbit_int()
    span_lists = []
    for _ in range(2):
        n = r.varbit_uint()
        if n > 1 << 20:
            raise HistogramChunkError("histogram chunk announces %d spans" % n)
        spans = []
        for _ in range(n):
            length = r.varbit_uint()
            off = r.varbit_int()
            spans.append((off, length))
        span_lists.append(spans)
    custom = []
    if schema == CUSTOM_BUCKETS_SCHEMA:
        n = r.varbit_uint()
        if n > 1 << 20:
            raise HistogramChunkError("histogram chunk announces %d custom bounds" % n)
        for _ in range(n):
            u = r.varbit_uint()
            custom.append(_bits_f64(r.bits(64)) if u == 0 else (u - 1) / 1000.0)
    elif not (EXPONENTIAL_SCHEMA_MIN <= schema <= EXPONENTIAL_SCHEMA_MAX):
        raise HistogramChunkError("histogram chunk has unknown schema %d" % schema)
    return zt, schema, span_lists[0], span_lists[1], custom


def count_spans(spans):
    return sum(length for _, length in spans)


# ---- span algebra (chunkenc's bucketIterator / expand*SpansAndBuckets / insert) ---------------

def _bucket_indexes(spans):
    """Absolute bucket indexes covered by spans, in order."""
    out = []
    idx = 0
    first = True
    for off, length in spans:
        if first:
            idx = off
            first = False
        else:
            idx += off
        for _ in range(length):
            out.append(idx)
            idx += 1
    return out


def _absolute_counts(buckets, bint deltas):
    if not deltas:
        return list(buckets)
    out = []
    cur = 0
    for d in buckets:
        cur += d
        out.append(cur)
    return out


def _expand(a_spans, b_spans, a_counts, b_counts):
    """(forward, backward, ok): inserts [pos, num, bucket_idx] putting b's extra buckets into
    a's layout and a's extra (empty) buckets into b's; ok False when a bucket shrank or a
    non-empty bucket of a is missing from b (a counter reset). Counts are absolute."""
    ai = _bucket_indexes(a_spans)
    bi = _bucket_indexes(b_spans)
    fwd = []
    bwd = []
    a_ins = None     # [pos, num, bucket_idx]
    b_ins = None
    i = j = 0
    a_pos = b_pos = 0

    def add(inserts, cur, pos, idx):
        if cur is not None and cur[2] + cur[1] == idx and cur[0] == pos:
            cur[1] += 1
            return cur
        if cur is not None:
            inserts.append(cur)
        return [pos, 1, idx]

    while i < len(ai) or j < len(bi):
        if i < len(ai) and j < len(bi) and ai[i] == bi[j]:
            if a_counts[i] > b_counts[j]:
                return None, None, False
            if a_ins is not None:
                fwd.append(a_ins); a_ins = None
            if b_ins is not None:
                bwd.append(b_ins); b_ins = None
            i += 1; j += 1
            a_pos += 1; b_pos += 1
        elif j >= len(bi) or (i < len(ai) and ai[i] < bi[j]):
            if a_counts[i] != 0:
                return None, None, False
            b_ins = add(bwd, b_ins, b_pos, ai[i])
            if a_ins is not None:
                fwd.append(a_ins); a_ins = None
            i += 1; a_pos += 1
        else:
            a_ins = add(fwd, a_ins, a_pos, bi[j])
            if b_ins is not None:
                bwd.append(b_ins); b_ins = None
            j += 1; b_pos += 1
    if a_ins is not None:
        fwd.append(a_ins)
    if b_ins is not None:
        bwd.append(b_ins)
    return fwd, bwd, True


def _merged_spans(indexes):
    """Spans for sorted absolute bucket indexes (chunkenc's addBucket)."""
    spans = []
    last = 0
    for b in indexes:
        off = b - last - 1
        if off == 0 and spans:
            spans[-1][1] += 1
        else:
            if not spans:
                off += 1
            spans.append([off, 1])
        last = b
    return [(o, l) for o, l in spans]


def _adjust_for_inserts(spans, inserts):
    if not inserts:
        return list(spans)
    idx = sorted(set(_bucket_indexes(spans)) | {ins[2] + k for ins in inserts for k in range(ins[1])})
    return _merged_spans(idx)


def _insert(values, inserts, bint deltas):
    """values with the inserted buckets as zeros (delta-coded values stay consistent)."""
    out = []
    v = 0
    ii = 0
    for i, d in enumerate(values):
        if ii < len(inserts) and inserts[ii][0] == i:
            first = True
            while ii < len(inserts) and inserts[ii][0] == i:
                out.append(-v if deltas and first else 0)
                first = False
                out.extend([0] * (inserts[ii][1] - 1))
                ii += 1
            out.append(d + v if deltas else d)
        else:
            out.append(d)
        v += d
    while ii < len(inserts):
        out.append(-v if deltas else 0)
        out.extend([0] * (inserts[ii][1] - 1))
        ii += 1
        v = 0
    return out


# ---- the chunk builder ----------------------------------------------------------------------

cdef class HistogramChunkBuilder:
    """The open histogram chunk of one series (encoding 2 for Histogram, 3 for FloatHistogram).

    `add(t, h)` applies Prometheus' appendable rules: it returns None when h went into this
    chunk (possibly after re-encoding it with a wider layout) or the header hint of a new chunk
    the caller must start (`HistogramChunkBuilder(kind, hint)`) with h as its first sample."""
    cdef readonly int encoding
    cdef readonly int header        # header bits (0x00/0x80/0x40/0xC0)
    cdef readonly list samples      # [(t, h in the chunk's layout)]
    cdef _Writer _w
    cdef object _layout             # first sample's (schema, zt, pspans, nspans, custom)
    # encoder state
    cdef int64_t _t, _tdelta
    cdef object _cnt, _zcnt, _cnt_delta, _zcnt_delta
    cdef list _pb, _nb, _pbd, _nbd    # int: last bucket values (deltas) and their deltas
    cdef double _sum
    cdef list _win, _cwin, _zwin      # XOR windows (sum; float: count, zero count)
    cdef list _pwin, _nwin            # float: per-bucket windows

    def __init__(self, int encoding, int header=0):
        if encoding not in (ENC_HISTOGRAM, ENC_FLOAT_HISTOGRAM):
            raise ValueError("not a histogram encoding: %d" % encoding)
        self.encoding = encoding
        self.header = header
        self.samples = []
        self._reset()

    cpdef _reset(self):
        self._w = _Writer()
        self._w.buf[2] = self.header

    @property
    def num_samples(self):
        return len(self.samples)

    @property
    def mint(self):
        return self.samples[0][0]

    @property
    def maxt(self):
        return self.samples[-1][0]

    def bytes(self):
        cdef bytearray b = self._w.buf
        n = len(self.samples)
        b[0] = (n >> 8) & 0xff
        b[1] = n & 0xff
        return bytes(b)

    def nbytes(self):
        return len(self._w.buf)

    @property
    def last(self):
        return self.samples[-1][1] if self.samples else None

    # -- encoding one sample

    cdef _encode(self, int64_t t, h):
        cdef _Writer w = self._w
        cdef bint first = not self.samples
        cdef bint stale = _f64_bits(h.sum) == STALE_NAN_BITS
        cdef int64_t tdelta
        if stale:
            h = (Histogram if self.encoding == ENC_HISTOGRAM else FloatHistogram)(sum=h.sum)
        if first:
            _put_layout(w, h)
            self._layout = _layout_of(h)
            w.varbit_int(t)
            self._tdelta = 0
            self._win = [0xff, 0]
            if self.encoding == ENC_HISTOGRAM:
                w.varbit_uint(h.count)
                w.varbit_uint(h.zero_count)
                w.bits(_f64_bits(h.sum), 64)
                for b in h.positive_buckets:
                    w.varbit_int(b)
                for b in h.negative_buckets:
                    w.varbit_int(b)
                self._cnt_delta = 0
                self._zcnt_delta = 0
                self._pb = list(h.positive_buckets)
                self._nb = list(h.negative_buckets)
                self._pbd = [0] * len(self._pb)
                self._nbd = [0] * len(self._nb)
            else:
                w.bits(_f64_bits(h.count), 64)
                w.bits(_f64_bits(h.zero_count), 64)
                w.bits(_f64_bits(h.sum), 64)
                for b in h.positive_buckets:
                    w.bits(_f64_bits(b), 64)
                for b in h.negative_buckets:
                    w.bits(_f64_bits(b), 64)
                self._pb = list(h.positive_buckets)
                self._nb = list(h.negative_buckets)
                self._cwin = [0xff, 0]
                self._zwin = [0xff, 0]
                self._pwin = [[0xff, 0] for _ in self._pb]
                self._nwin = [[0xff, 0] for _ in self._nb]
            self._cnt = h.count
            self._zcnt = h.zero_count
            self._sum = h.sum
            self._t = t
            return
        tdelta = t - self._t
        w.varbit_int(tdelta - self._tdelta)
        if self.encoding == ENC_HISTOGRAM:
            cnt_delta = h.count - self._cnt
            zcnt_delta = h.zero_count - self._zcnt
            if stale:
                w.varbit_int(0)
                w.varbit_int(0)
            else:
                w.varbit_int(cnt_delta - self._cnt_delta)
                w.varbit_int(zcnt_delta - self._zcnt_delta)
            w.xor(h.sum, self._sum, self._win)
            for i, b in enumerate(h.positive_buckets):
                d = b - self._pb[i]
                w.varbit_int(d - self._pbd[i])
                self._pbd[i] = d
                self._pb[i] = b
            for i, b in enumerate(h.negative_buckets):
                d = b - self._nb[i]
                w.varbit_int(d - self._nbd[i])
                self._nbd[i] = d
                self._nb[i] = b
            self._cnt_delta = cnt_delta
            self._zcnt_delta = zcnt_delta
        else:
            w.xor(h.count, self._cnt, self._cwin)
            w.xor(h.zero_count, self._zcnt, self._zwin)
            w.xor(h.sum, self._sum, self._win)
            for i, b in enumerate(h.positive_buckets):
                w.xor(b, self._pb[i], self._pwin[i])
                self._pb[i] = b
            for i, b in enumerate(h.negative_buckets):
                w.xor(b, self._nb[i], self._nwin[i])
                self._nb[i] = b
        self._cnt = h.count
        self._zcnt = h.zero_count
        self._sum = h.sum
        self._t = t
        self._tdelta = tdelta

    cdef _push(self, int64_t t, h):
        if len(self.samples) >= MAX_SAMPLES:
            raise OverflowError("histogram chunk full")
        self._encode(t, h)
        self.samples.append((t, h))

    # -- Prometheus' appendable rules

    def appendable(self, h):
        """(forward, backward, ok, hint) as Prometheus' appendable(): hint is the header a
        new chunk starting with h would carry (NOT_COUNTER_RESET when h fits this one)."""
        if not self.samples:
            return [], [], [], [], False, UNKNOWN_COUNTER_RESET
        if self.header == 0xC0:
            return None, None, None, None, False, NOT_COUNTER_RESET
        last = self.samples[-1][1]
        if h.counter_reset_hint == COUNTER_RESET:
            return None, None, None, None, False, COUNTER_RESET
        if _f64_bits(h.sum) == STALE_NAN_BITS:
            return [], [], [], [], True, NOT_COUNTER_RESET
        if _f64_bits(last.sum) == STALE_NAN_BITS:
            return None, None, None, None, False, UNKNOWN_COUNTER_RESET
        if h.count < self._cnt:
            return None, None, None, None, False, COUNTER_RESET
        schema, zt, pspans, nspans, custom = self._layout
        if h.schema != schema or h.zero_threshold != zt:
            return None, None, None, None, False, UNKNOWN_COUNTER_RESET
        if h.schema == CUSTOM_BUCKETS_SCHEMA and list(h.custom_values) != list(custom):
            return None, None, None, None, False, COUNTER_RESET
        if h.zero_count < self._zcnt:
            return None, None, None, None, False, COUNTER_RESET
        deltas = self.encoding == ENC_HISTOGRAM
        pf, pb, ok = _expand(pspans, h.positive_spans, _absolute_counts(self._pb, deltas),
                             _absolute_counts(h.positive_buckets, deltas))
        if not ok:
            return None, None, None, None, False, COUNTER_RESET
        nf, nb, ok = _expand(nspans, h.negative_spans, _absolute_counts(self._nb, deltas),
                             _absolute_counts(h.negative_buckets, deltas))
        if not ok:
            return None, None, None, None, False, COUNTER_RESET
        return pf, nf, pb, nb, True, NOT_COUNTER_RESET

    def add(self, int64_t t, h):
        """Append h at t, or return the header hint of the chunk h must start (see class)."""
        if not self.samples:
            self._push(t, h)
            return None
        if self.header == 0xC0 or h.counter_reset_hint == GAUGE_TYPE:
            return self._add_gauge(t, h)
        pf, nf, pb, nb, ok, hint = self.appendable(h)
        if not ok or hint != NOT_COUNTER_RESET:
            return hint
        h = _copy(h)
        deltas = self.encoding == ENC_HISTOGRAM
        if pb or nb:
            if not pf and not nf:
                h.positive_spans = list(self._layout[2])
                h.negative_spans = list(self._layout[3])
            else:
                h.positive_spans = _adjust_for_inserts(h.positive_spans, pb)
                h.negative_spans = _adjust_for_inserts(h.negative_spans, nb)
            if pb:
                h.positive_buckets = _insert(h.positive_buckets, pb, deltas)
            if nb:
                h.negative_buckets = _insert(h.negative_buckets, nb, deltas)
        if pf or nf:
            self._recode(pf, nf, h.positive_spans, h.negative_spans)
        self._push(t, h)
        return None

    def _add_gauge(self, int64_t t, h):
        # A gauge chunk only takes gauge samples and the other way round.
        if self.header != 0xC0 or h.counter_reset_hint != GAUGE_TYPE:
            if h.counter_reset_hint == GAUGE_TYPE:
                return GAUGE_TYPE
            # a counter sample after a gauge chunk: Prometheus' appendable says "not a reset"
            # for integer chunks and nothing for float ones
            return NOT_COUNTER_RESET if self.encoding == ENC_HISTOGRAM else UNKNOWN_COUNTER_RESET
        last = self.samples[-1][1]
        if _f64_bits(h.sum) != STALE_NAN_BITS:
            if _f64_bits(last.sum) == STALE_NAN_BITS:
                return GAUGE_TYPE
            schema, zt, pspans, nspans, custom = self._layout
            if h.schema != schema or h.zero_threshold != zt:
                return GAUGE_TYPE
            if h.schema == CUSTOM_BUCKETS_SCHEMA and list(h.custom_values) != list(custom):
                return GAUGE_TYPE
            h = _copy(h)
            deltas = self.encoding == ENC_HISTOGRAM
            pidx = _bucket_indexes(pspans)
            nidx = _bucket_indexes(nspans)
            hp = _bucket_indexes(h.positive_spans)
            hn = _bucket_indexes(h.negative_spans)
            zp = [0] * len(pidx)
            zn = [0] * len(nidx)
            pf, pb, _ = _expand(pspans, h.positive_spans, zp, [0] * len(hp))
            nf, nb, _ = _expand(nspans, h.negative_spans, zn, [0] * len(hn))
            if pb or nb:
                h.positive_spans = _merged_spans(sorted(set(pidx) | set(hp)))
                h.negative_spans = _merged_spans(sorted(set(nidx) | set(hn)))
                if pb:
                    h.positive_buckets = _insert(h.positive_buckets, pb, deltas)
                if nb:
                    h.negative_buckets = _insert(h.negative_buckets, nb, deltas)
            if pf or nf:
                self._recode(pf, nf, h.positive_spans, h.negative_spans)
        self._push(t, h)
        return None

    cdef _recode(self, pf, nf, pspans, nspans):
        deltas = self.encoding == ENC_HISTOGRAM
        old = self.samples
        self.samples = []
        self._reset()
        for t, o in old:
            o = _copy(o)
            if _f64_bits(o.sum) != STALE_NAN_BITS:
                o.positive_spans = list(pspans)
                o.negative_spans = list(nspans)
                if pf:
                    o.positive_buckets = _insert(o.positive_buckets, pf, deltas)
                if nf:
                    o.negative_buckets = _insert(o.negative_buckets, nf, deltas)
            self._push(t, o)


def _layout_of(h):
    return (h.schema, h.zero_threshold, list(h.positive_spans), list(h.negative_spans),
            list(h.custom_values))


def _copy(h):
    return type(h)(schema=h.schema, zero_threshold=h.zero_threshold, zero_count=h.zero_count,
                   count=h.count, sum=h.sum, positive_spans=h.positive_spans,
                   negative_spans=h.negative_spans, positive_buckets=h.positive_buckets,
                   negative_buckets=h.negative_buckets, custom_values=h.custom_values,
                   counter_reset_hint=h.counter_reset_hint)


def header_of_hint(int hint):
    return _HEADER_OF_HINT[hint]


# ---- decoding ---------------------------------------------------------------------------------

def num_samples(data):
    if len(data) < 3:
        raise HistogramChunkError("histogram chunk shorter than its header")
    return (data[0] << 8) | data[1]


def decode_histogram_chunk(data, int encoding, int64_t mint=INT64_MIN, int64_t maxt=INT64_MAX):
    """(timestamps, histograms) of the samples in [mint, maxt]: Histogram for encoding 2,
    FloatHistogram for 3. Hints as Prometheus' iterator reports them: gauge in a gauge chunk,
    NotCounterReset after the first sample, unknown for the first (the header's reset is
    PromQL's to detect again)."""
    cdef _Reader r
    cdef int64_t t = 0, tdelta = 0
    cdef double s = 0.0
    cdef object cnt = 0, zcnt = 0, cnt_delta = 0, zcnt_delta = 0
    data = bytes(data)
    n = num_samples(data)
    header = data[2] & 0xC0
    r = _Reader(data, 3)
    ts = []
    hs = []
    if n == 0:
        return ts, hs
    zt, schema, pspans, nspans, custom = _read_layout(r)
    npb = count_spans(pspans)
    nnb = count_spans(nspans)
    win = [0xff, 0]
    is_int = encoding == ENC_HISTOGRAM
    if encoding not in (ENC_HISTOGRAM, ENC_FLOAT_HISTOGRAM):
        raise HistogramChunkError("not a histogram encoding: %d" % encoding)
    for k in range(n):
        if k == 0:
            t = r.varbit_int()
            if is_int:
                cnt = r.varbit_uint()
                zcnt = r.varbit_uint()
                s = _bits_f64(r.bits(64))
                pb = [r.varbit_int() for _ in range(npb)]
                nb = [r.varbit_int() for _ in range(nnb)]
                cnt_delta = zcnt_delta = 0
                pbd = [0] * npb
                nbd = [0] * nnb
            else:
                cnt = _bits_f64(r.bits(64))
                zcnt = _bits_f64(r.bits(64))
                s = _bits_f64(r.bits(64))
                pb = [_bits_f64(r.bits(64)) for _ in range(npb)]
                nb = [_bits_f64(r.bits(64)) for _ in range(nnb)]
                cwin = [0xff, 0]
                zwin = [0xff, 0]
                pwin = [[0xff, 0] for _ in range(npb)]
                nwin = [[0xff, 0] for _ in range(nnb)]
        else:
            tdelta += r.varbit_int()
            t += tdelta
            if is_int:
                cnt_delta += r.varbit_int()
                cnt += cnt_delta
                zcnt_delta += r.varbit_int()
                zcnt += zcnt_delta
                s = r.xor(s, win)
                if _f64_bits(s) != STALE_NAN_BITS:
                    for i in range(npb):
                        pbd[i] += r.varbit_int()
                        pb[i] += pbd[i]
                    for i in range(nnb):
                        nbd[i] += r.varbit_int()
                        nb[i] += nbd[i]
            else:
                cnt = r.xor(cnt, cwin)
                zcnt = r.xor(zcnt, zwin)
                s = r.xor(s, win)
                if _f64_bits(s) != STALE_NAN_BITS:
                    for i in range(npb):
                        pb[i] = r.xor(pb[i], pwin[i])
                    for i in range(nnb):
                        nb[i] = r.xor(nb[i], nwin[i])
        if t < mint or t > maxt:
            continue
        if header == 0xC0:
            hint = GAUGE_TYPE
        elif k >= 1:
            hint = NOT_COUNTER_RESET
        else:
            hint = UNKNOWN_COUNTER_RESET
        if _f64_bits(s) == STALE_NAN_BITS:
            h = (Histogram if is_int else FloatHistogram)(sum=s)
        else:
            h = (Histogram if is_int else FloatHistogram)(
                schema=schema, zero_threshold=zt, zero_count=zcnt, count=cnt, sum=s,
                positive_spans=pspans, negative_spans=nspans, positive_buckets=pb,
                negative_buckets=nb, custom_values=custom, counter_reset_hint=hint)
        ts.append(t)
        hs.append(h)
    return ts, hs


def encode_histogram_chunk(samples, int header=0):
    """Chunk bytes of [(t, h)] written as they are (all in one layout, no appendable rules);
    for tools and re-encoding out-of-order data. Encoding follows h's type."""
    kind = ENC_HISTOGRAM if isinstance(samples[0][1], Histogram) else ENC_FLOAT_HISTOGRAM
    b = HistogramChunkBuilder(kind, header)
    for t, h in samples:
        b._push(t, h)
    return b.bytes()


def chunk_end_time(int64_t start, int64_t cur, int64_t max_t, double ratio_to_full):
    """Prometheus' computeChunkEndTime."""
    cdef double n = <double>(max_t - start) / (<double>(cur - start + 1) * ratio_to_full)
    if n <= 1.0:
        return max_t
    return <int64_t>(<double>start + <double>(max_t - start) / floor(n))


cdef inline int64_t _range_for(int64_t t, int64_t width) noexcept:
    # Go's truncating division, as Prometheus' rangeForTimestamp
    cdef int64_t q = t // width
    if t % width != 0 and (t < 0) != (width < 0):
        q += 1
    return q * width + width


cdef class HistogramSeries:
    """The histogram side of one head series: the open chunk and the refs of the full ones.

    Chunk cutting follows Prometheus' memSeries.histogramsAppendPreprocessor (about 1 KiB and
    at least 10 samples per chunk, never across a chunk-range boundary) and appendHistogram
    (a new chunk's header from the previous chunk's appendable verdict)."""
    cdef public list chunks          # [(chunks_head ref, mint, maxt, encoding)], oldest first
    cdef public HistogramChunkBuilder open
    cdef public int64_t open_mint
    cdef int64_t _next_at
    cdef bint _computed_end
    cdef public int64_t last_t
    cdef public object last_h        # the last appended value as given (duplicate check)
    cdef public list ooo             # out-of-order samples [(t, h)], sorted, not in chunks

    def __init__(self):
        self.chunks = []
        self.open = None
        self.last_t = INT64_MIN
        self.last_h = None
        self.ooo = []

    def ooo_find(self, int64_t t, h):
        """0 when t is free among the out-of-order samples, 1 when it holds an equal
        histogram (duplicate, same value), 2 when another one."""
        import bisect
        i = bisect.bisect_left(self.ooo, t, key=lambda x: x[0])
        if i < len(self.ooo) and self.ooo[i][0] == t:
            return 1 if self.ooo[i][1] == h else 2
        return 0

    def add_ooo(self, int64_t t, h):
        """Keep an out-of-order sample (after ooo_find said 0); False when t is taken."""
        import bisect
        i = bisect.bisect_left(self.ooo, t, key=lambda x: x[0])
        if i < len(self.ooo) and self.ooo[i][0] == t:
            return False
        self.ooo.insert(i, (t, h))
        return True

    def ooo_in(self, int64_t mint, int64_t maxt):
        return [(t, h) for t, h in self.ooo if mint <= t <= maxt]

    def append(self, int64_t t, h, int64_t chunk_range, bint type_switch):
        """Add h at t (after the caller's order checks); returns the builders of chunks this
        closed, oldest first, for the caller to persist. type_switch: float samples came
        after the open chunk (Prometheus has cut to an XOR chunk in between)."""
        cdef int enc = ENC_HISTOGRAM if isinstance(h, Histogram) else ENC_FLOAT_HISTOGRAM
        cdef HistogramChunkBuilder c = self.open
        cdef HistogramChunkBuilder prev = None
        cdef bint created = False
        cdef Py_ssize_t n, nbytes
        cdef int64_t next_range_start
        closed = []
        if c is not None and (type_switch or c.encoding != enc):
            closed.append(c)
            c = None
        if c is None:
            c = HistogramChunkBuilder(enc, 0)
            created = True
        n = len(c.samples)
        nbytes = c.nbytes()
        if n == 0:
            self.open_mint = t
            self._next_at = _range_for(t, chunk_range)
        next_range_start = _range_for(self.open_mint, chunk_range) if self._computed_end else self._next_at
        if not self._computed_end and nbytes >= TARGET_BYTES // 4:
            self._next_at = chunk_end_time(self.open_mint, c.maxt, self._next_at,
                                           <double>TARGET_BYTES / nbytes)
            self._computed_end = True
        if (t >= self._next_at or nbytes >= TARGET_BYTES * 2) and (n >= MIN_SAMPLES or t >= next_range_start):
            prev = c
            closed.append(c)
            c = HistogramChunkBuilder(enc, 0)
            created = True
            self.open_mint = t
            self._next_at = _range_for(t, chunk_range)
        if created:
            self._computed_end = False
            if h.counter_reset_hint == GAUGE_TYPE:
                c.header = 0xC0
            elif h.counter_reset_hint == COUNTER_RESET:
                c.header = 0x80
            elif prev is not None and prev.encoding == enc:
                hint = prev.appendable(h)[5]
                if enc == ENC_HISTOGRAM:
                    c.header = _HEADER_OF_HINT[hint]
                else:
                    c.header = 0x80 if hint == COUNTER_RESET else 0x40
            c._reset()
        hint = c.add(t, h)
        if hint is not None:
            closed.append(c)
            if enc == ENC_HISTOGRAM or hint == GAUGE_TYPE:
                header = _HEADER_OF_HINT[hint]
            else:
                header = 0x80 if hint == COUNTER_RESET else 0x00
            c = HistogramChunkBuilder(enc, header)
            c.add(t, h)
            self.open_mint = t
            self._next_at = _range_for(t, chunk_range)
        self.open = c
        self.last_t = t
        self.last_h = h
        return [b for b in closed if b.samples]

    def truncate(self, int64_t mint):
        """Drop chunks that end before mint; True when nothing is left."""
        self.chunks = [c for c in self.chunks if c[2] >= mint]
        if self.open is not None and self.open.samples and self.open.maxt < mint:
            self.open = None
        self.ooo = [x for x in self.ooo if x[0] >= mint]
        return not self.chunks and (self.open is None or not self.open.samples) and not self.ooo

    def overlaps(self, int64_t mint, int64_t maxt):
        if self.last_t < mint:
            return False
        return self.oldest() <= maxt

    def oldest(self):
        cdef int64_t t = INT64_MAX
        if self.chunks:
            t = self.chunks[0][1]
        elif self.open is not None and self.open.samples:
            t = self.open.mint
        if self.ooo and self.ooo[0][0] < t:
            t = self.ooo[0][0]
        return t


def encode_histogram_samples(samples, int max_samples=120):
    """Chunks [(mint, maxt, encoding, bytes)] for time-ordered [(t, h)] (re-encoding merged
    or out-of-order data): Prometheus' appendable rules decide the cuts, plus a new chunk
    every max_samples samples or when the sample type changes."""
    out = []
    cdef HistogramChunkBuilder b = None
    for t, h in samples:
        enc = ENC_HISTOGRAM if isinstance(h, Histogram) else ENC_FLOAT_HISTOGRAM
        if b is not None and (b.encoding != enc or len(b.samples) >= max_samples):
            out.append((b.mint, b.maxt, b.encoding, b.bytes()))
            b = None
        if b is None:
            b = HistogramChunkBuilder(enc, 0xC0 if h.counter_reset_hint == GAUGE_TYPE else
                                      0x80 if h.counter_reset_hint == COUNTER_RESET else 0)
        hint = b.add(t, h)
        if hint is not None:
            out.append((b.mint, b.maxt, b.encoding, b.bytes()))
            b = HistogramChunkBuilder(enc, _HEADER_OF_HINT[hint] if enc == ENC_HISTOGRAM or hint == GAUGE_TYPE
                                      else (0x80 if hint == COUNTER_RESET else 0))
            b.add(t, h)
    if b is not None and b.samples:
        out.append((b.mint, b.maxt, b.encoding, b.bytes()))
    return out


def merge_histogram_parts(parts):
    """Merge [(ts, hs)] (each time-ordered) into one; at equal timestamps the earlier part wins."""
    parts = [p for p in parts if len(p[0])]
    if len(parts) == 1:
        return parts[0]
    seen = {}
    for ts, hs in parts:
        for t, h in zip(ts, hs):
            if t not in seen:
                seen[t] = h
    keys = sorted(seen)
    from array import array
    return array("q", keys), [seen[t] for t in keys]
