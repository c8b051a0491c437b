"""WAL records of native histogram samples (Prometheus' tsdb/record, V1 layouts).

Types: 7 histograms, 8 float histograms, 9 / 10 the same with custom buckets (schema -53).

    record    = type 1B · base ref 8B BE · base t 8B BE · sample...
    sample    = varint (ref - base ref) · varint (t - base t) · histogram
    histogram = hint 1B · varint schema · zero threshold 8B (float bits)
                · int: uvarint zero count · uvarint count | float: zero count 8B · count 8B
                · sum 8B · uvarint #pos spans · (varint offset · uvarint length)...
                · the same for negative spans · uvarint #pos buckets · int: varint delta
                | float: 8B each · the same for negative buckets
                · schema -53 only: uvarint #custom values · 8B each
"""
from __future__ import annotations

import struct
from typing import Any, Iterable, List, Tuple

from urdar.engine.histogram import CUSTOM_BUCKETS_SCHEMA, FloatHistogram, Histogram

REC_HISTOGRAMS = 7
REC_FLOAT_HISTOGRAMS = 8
REC_CUSTOM_HISTOGRAMS = 9
REC_CUSTOM_FLOAT_HISTOGRAMS = 10
HISTOGRAM_RECORD_TYPES = (7, 8, 9, 10)

_MASK64 = (1 << 64) - 1
_D = struct.Struct(">d")
_Q = struct.Struct(">Q")
_QQ = struct.Struct(">QQ")

Sample = Tuple[int, int, "Histogram | FloatHistogram"]


class HistogramRecordError(ValueError):
    """A histogram record that does not decode."""


def _uvarint(out: bytearray, u: int) -> None:
    while u >= 0x80:
        out.append((u & 0x7F) | 0x80)
        u >>= 7
    out.append(u)


def _varint(out: bytearray, i: int) -> None:
    _uvarint(out, ((i << 1) ^ (i >> 63)) & _MASK64)


def _put_histogram(out: bytearray, h: Any) -> None:
    is_float = isinstance(h, FloatHistogram)
    out.append(h.counter_reset_hint & 0xFF)
    _varint(out, h.schema)
    out += _D.pack(h.zero_threshold)
    if is_float:
        out += _D.pack(h.zero_count)
        out += _D.pack(h.count)
    else:
        _uvarint(out, h.zero_count)
        _uvarint(out, h.count)
    out += _D.pack(h.sum)
    for spans in (h.positive_spans, h.negative_spans):
        _uvarint(out, len(spans))
        for off, length in spans:
            _varint(out, off)
            _uvarint(out, length)
    for buckets in (h.positive_buckets, h.negative_buckets):
        _uvarint(out, len(buckets))
        for b in buckets:
            if is_float:
                out += _D.pack(b)
            else:
                _varint(out, b)
    if h.schema == CUSTOM_BUCKETS_SCHEMA:
        _uvarint(out, len(h.custom_values))
        for v in h.custom_values:
            out += _D.pack(v)


def record_type_of(h: Any) -> int:
    custom = h.schema == CUSTOM_BUCKETS_SCHEMA
    if isinstance(h, FloatHistogram):
        return REC_CUSTOM_FLOAT_HISTOGRAMS if custom else REC_FLOAT_HISTOGRAMS
    return REC_CUSTOM_HISTOGRAMS if custom else REC_HISTOGRAMS


def encode_histogram_records(samples: Iterable[Sample]) -> List[bytes]:
    """One record per type present, in type order, for [(ref, t, histogram)]."""
    by_type: dict = {}
    for s in samples:
        by_type.setdefault(record_type_of(s[2]), []).append(s)
    out = []
    for typ in sorted(by_type):
        items = by_type[typ]
        base_ref, base_t = items[0][0], items[0][1]
        rec = bytearray([typ])
        rec += _QQ.pack(base_ref & _MASK64, base_t & _MASK64)
        for ref, t, h in items:
            _varint(rec, ref - base_ref)
            _varint(rec, t - base_t)
            _put_histogram(rec, h)
        out.append(bytes(rec))
    return out


class _Dec:
    __slots__ = ("b", "p")

    def __init__(self, b: bytes, p: int) -> None:
        self.b = b
        self.p = p

    def uvarint(self) -> int:
        u = shift = 0
        b = self.b
        while True:
            if self.p >= len(b) or shift > 63:
                raise HistogramRecordError("histogram record: bad varint")
            c = b[self.p]
            self.p += 1
            u |= (c & 0x7F) << shift
            if c < 0x80:
                return u & _MASK64
            shift += 7

    def varint(self) -> int:
        u = self.uvarint()
        return (u >> 1) ^ -(u & 1)

    def f64(self) -> float:
        if self.p + 8 > len(self.b):
            raise HistogramRecordError("histogram record ends early")
        v = _D.unpack_from(self.b, self.p)[0]
        self.p += 8
        return float(v)

    def byte(self) -> int:
        if self.p >= len(self.b):
            raise HistogramRecordError("histogram record ends early")
        self.p += 1
        return self.b[self.p - 1]

    def count(self) -> int:
        n = self.uvarint()
        if n > len(self.b):
            raise HistogramRecordError("histogram record announces %d items" % n)
        return n


def _get_histogram(d: _Dec, is_float: bool) -> "Histogram | FloatHistogram":
    hint = d.byte()
    schema = d.varint()
    zt = d.f64()
    if is_float:
        zc: float = d.f64()
        cnt: float = d.f64()
    else:
        zc = d.uvarint()
        cnt = d.uvarint()
    s = d.f64()
    spans = []
    for _ in range(2):
        side = []
        for _ in range(d.count()):
            off = d.varint()
            side.append((off, d.uvarint()))
        spans.append(side)
    buckets: List[Any] = []
    for _ in range(2):
        n = d.count()
        buckets.append([d.f64() for _ in range(n)] if is_float else [d.varint() for _ in range(n)])
    custom: List[float] = []
    if schema == CUSTOM_BUCKETS_SCHEMA:
        custom = [d.f64() for _ in range(d.count())]
    cls = FloatHistogram if is_float else Histogram
    return cls(schema=schema, zero_threshold=zt, zero_count=zc, count=cnt, sum=s,  # type: ignore[arg-type]
               positive_spans=spans[0], negative_spans=spans[1], positive_buckets=buckets[0],
               negative_buckets=buckets[1], custom_values=custom, counter_reset_hint=hint)


def decode_histogram_record(rec: bytes) -> List[Sample]:
    """[(ref, t, histogram)] of a record of type 7..10."""
    rec = bytes(rec)
    if not rec or rec[0] not in HISTOGRAM_RECORD_TYPES:
        raise HistogramRecordError("not a histogram record")
    if len(rec) == 1:
        return []
    if len(rec) < 17:
        raise HistogramRecordError("histogram record shorter than its header")
    is_float = rec[0] in (REC_FLOAT_HISTOGRAMS, REC_CUSTOM_FLOAT_HISTOGRAMS)
    base_ref, base_t = _QQ.unpack_from(rec, 1)
    if base_t >> 63:
        base_t -= 1 << 64
    d = _Dec(rec, 17)
    out: List[Sample] = []
    while d.p < len(rec):
        ref = (base_ref + d.varint()) & _MASK64
        t = base_t + d.varint()
        out.append((ref, t, _get_histogram(d, is_float)))
    return out
