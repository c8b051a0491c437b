"""prompb.Histogram (remote write 1.0, Prometheus' prompb/types.proto) to and from the engine's
Histogram / FloatHistogram, and the histograms of a WriteRequest per time series.

    Histogram: count_int 1 (uint64) | count_float 2 (double) · sum 3 (double) · schema 4 (sint32)
               · zero_threshold 5 (double) · zero_count_int 6 | zero_count_float 7
               · negative_spans 8 · negative_deltas 9 (sint64, packed) · negative_counts 10
               (double, packed) · positive_spans 11 · positive_deltas 12 · positive_counts 13
               · reset_hint 14 (enum: 0 unknown, 1 yes, 2 no, 3 gauge) · timestamp 15 (int64)
               · custom_values 16 (double, packed)
    BucketSpan: offset 1 (sint32) · length 2 (uint32)

A histogram is a float histogram when it carries count_float (as Prometheus decides it), an
integer one otherwise. The float path of engine/remotewrite.pyx only counts histograms; requests
that carry some are walked a second time here (pure Python: the rare path)."""
from __future__ import annotations

import struct
from typing import Any, Dict, List, Sequence, Tuple

from urdar.engine.histogram import (
    CUSTOM_BUCKETS_SCHEMA, EXPONENTIAL_SCHEMA_MIN, FloatHistogram, Histogram, Span)

_D = struct.Struct("<d")
_MASK64 = (1 << 64) - 1


class HistogramDecodeError(ValueError):
    """A Histogram message that does not decode (or breaks the format's own rules)."""


def _uvarint(b: bytes, p: int, end: int) -> Tuple[int, int]:
    u = shift = 0
    while True:
        if p >= end or shift > 63:
            raise HistogramDecodeError("truncated varint")
        c = b[p]
        p += 1
        u |= (c & 0x7F) << shift
        if c < 0x80:
            return u & _MASK64, p
        shift += 7


def _zigzag(u: int) -> int:
    return (u >> 1) ^ -(u & 1)


def _int64(u: int) -> int:
    return u - (1 << 64) if u >> 63 else u


def _fields(b: bytes, p: int, end: int):
    """(field, wire type, value or (start, end) for length-delimited) of one message."""
    while p < end:
        key, p = _uvarint(b, p, end)
        field, wt = key >> 3, key & 7
        if wt == 0:
            v, p = _uvarint(b, p, end)
            yield field, wt, v
        elif wt == 1:
            if p + 8 > end:
                raise HistogramDecodeError("truncated fixed64")
            yield field, wt, b[p:p + 8]
            p += 8
        elif wt == 2:
            n, p = _uvarint(b, p, end)
            if p + n > end:
                raise HistogramDecodeError("truncated length-delimited field")
            yield field, wt, (p, p + n)
            p += n
        elif wt == 5:
            if p + 4 > end:
                raise HistogramDecodeError("truncated fixed32")
            p += 4
        else:
            raise HistogramDecodeError("unsupported wire type %d" % wt)


def _span(b: bytes, p: int, end: int) -> Span:
    off = length = 0
    for f, wt, v in _fields(b, p, end):
        if f == 1 and wt == 0:
            off = _zigzag(v)
        elif f == 2 and wt == 0:
            length = v & 0xFFFFFFFF
    if not -(1 << 31) <= off < 1 << 31:
        raise HistogramDecodeError("span offset out of range")
    return (off, length)


def _packed_doubles(b: bytes, wt: int, v) -> List[float]:
    if wt == 1:
        return [_D.unpack(v)[0]]
    if wt != 2:
        raise HistogramDecodeError("bad wire type for a double list")
    s, e = v
    if (e - s) % 8:
        raise HistogramDecodeError("packed doubles not a multiple of 8 bytes")
    return list(struct.unpack_from("<%dd" % ((e - s) // 8), b, s))


def _packed_sint64(b: bytes, wt: int, v) -> List[int]:
    if wt == 0:
        return [_zigzag(v)]
    if wt != 2:
        raise HistogramDecodeError("bad wire type for an sint64 list")
    s, e = v
    out = []
    while s < e:
        u, s = _uvarint(b, s, e)
        out.append(_zigzag(u))
    return out


def decode_histogram(b: bytes, start: int = 0, end: int = -1) -> Tuple[int, "Histogram | FloatHistogram"]:
    """(timestamp ms, Histogram | FloatHistogram) of one prompb.Histogram message."""
    if end < 0:
        end = len(b)
    count_int: Any = 0
    zc_int: Any = 0
    count_float: Any = None
    zc_float: Any = None
    is_float = False
    s = zt = 0.0
    schema = 0
    hint = 0
    t = 0
    spans: Dict[int, List[Span]] = {8: [], 11: []}
    deltas: Dict[int, List[int]] = {9: [], 12: []}
    counts: Dict[int, List[float]] = {10: [], 13: []}
    custom: List[float] = []
    for f, wt, v in _fields(b, start, end):
        if f == 1 and wt == 0:
            count_int, is_float = v, False
        elif f == 2 and wt == 1:
            count_float, is_float = _D.unpack(v)[0], True
        elif f == 3 and wt == 1:
            s = _D.unpack(v)[0]
        elif f == 4 and wt == 0:
            schema = _zigzag(v & 0xFFFFFFFF) if v < 1 << 32 else _zigzag(v)
        elif f == 5 and wt == 1:
            zt = _D.unpack(v)[0]
        elif f == 6 and wt == 0:
            zc_int = v
        elif f == 7 and wt == 1:
            zc_float = _D.unpack(v)[0]
        elif f in (8, 11) and wt == 2:
            spans[f].append(_span(b, v[0], v[1]))
        elif f in (9, 12):
            deltas[f].extend(_packed_sint64(b, wt, v))
        elif f in (10, 13):
            counts[f].extend(_packed_doubles(b, wt, v))
        elif f == 14 and wt == 0:
            hint = v if v <= 3 else 0
        elif f == 15 and wt == 0:
            t = _int64(v)
        elif f == 16:
            custom.extend(_packed_doubles(b, wt, v))
        elif f <= 16:
            raise HistogramDecodeError("field %d with wire type %d" % (f, wt))
    if is_float:
        return t, FloatHistogram(
            schema=schema, zero_threshold=zt, zero_count=zc_float if zc_float is not None else float(zc_int),
            count=count_float if count_float is not None else 0.0, sum=s,
            positive_spans=spans[11], negative_spans=spans[8], positive_buckets=counts[13],
            negative_buckets=counts[10], custom_values=custom, counter_reset_hint=hint)
    return t, Histogram(
        schema=schema, zero_threshold=zt, zero_count=zc_int, count=count_int, sum=s,
        positive_spans=spans[11], negative_spans=spans[8], positive_buckets=deltas[12],
        negative_buckets=deltas[9], custom_values=custom, counter_reset_hint=hint)


def _put_uvarint(out: bytearray, u: int) -> None:
    u &= _MASK64
    while u >= 0x80:
        out.append((u & 0x7F) | 0x80)
        u >>= 7
    out.append(u)


def _put_tag(out: bytearray, field: int, wt: int) -> None:
    _put_uvarint(out, (field << 3) | wt)


def _put_double(out: bytearray, field: int, v: float) -> None:
    _put_tag(out, field, 1)
    out += _D.pack(v)


def _zz(i: int) -> int:
    return ((i << 1) ^ (i >> 63)) & _MASK64


def encode_histogram(t: int, h: Any) -> bytes:
    """prompb.Histogram bytes (what a Prometheus sender emits; zero fields left out)."""
    out = bytearray()
    is_float = isinstance(h, FloatHistogram)
    if is_float:
        _put_double(out, 2, h.count)
    else:       # a oneof member: emitted even when 0, as Prometheus' senders do
        _put_tag(out, 1, 0)
        _put_uvarint(out, h.count)
    _put_double(out, 3, h.sum)
    if h.schema:
        _put_tag(out, 4, 0)
        _put_uvarint(out, _zz(h.schema) & 0xFFFFFFFF)
    _put_double(out, 5, h.zero_threshold)
    if is_float:
        _put_double(out, 7, h.zero_count)
    else:
        _put_tag(out, 6, 0)
        _put_uvarint(out, h.zero_count)
    for field, spans in ((8, h.negative_spans), (11, h.positive_spans)):
        for off, length in spans:
            sb = bytearray()
            if off:
                _put_tag(sb, 1, 0)
                _put_uvarint(sb, _zz(off) & 0xFFFFFFFF)
            if length:
                _put_tag(sb, 2, 0)
                _put_uvarint(sb, length)
            _put_tag(out, field, 2)
            _put_uvarint(out, len(sb))
            out += sb
        buckets = h.negative_buckets if field == 8 else h.positive_buckets
        if buckets:
            pb = bytearray()
            if is_float:
                pb += struct.pack("<%dd" % len(buckets), *buckets)
                _put_tag(out, field + 2, 2)
            else:
                for d in buckets:
                    _put_uvarint(pb, _zz(d))
                _put_tag(out, field + 1, 2)
            _put_uvarint(out, len(pb))
            out += pb
    if h.counter_reset_hint:
        _put_tag(out, 14, 0)
        _put_uvarint(out, h.counter_reset_hint)
    if t:
        _put_tag(out, 15, 0)
        _put_uvarint(out, t)
    if h.custom_values:
        pb = bytearray(struct.pack("<%dd" % len(h.custom_values), *h.custom_values))
        _put_tag(out, 16, 2)
        _put_uvarint(out, len(pb))
        out += pb
    return bytes(out)


def request_histograms(raw: bytes) -> List[List[Tuple[int, "Histogram | FloatHistogram"]]]:
    """The histograms of each time series of a WriteRequest, in request order (the order
    engine/remotewrite.decode gives series in)."""
    b = bytes(raw)
    out: List[List[Tuple[int, "Histogram | FloatHistogram"]]] = []
    for f, wt, v in _fields(b, 0, len(b)):
        if f != 1 or wt != 2:
            continue
        hs = []
        for f2, wt2, v2 in _fields(b, v[0], v[1]):
            if f2 == 4 and wt2 == 2:
                hs.append(decode_histogram(b, v2[0], v2[1]))
        out.append(hs)
    return out


# ---- checks and resolution reduction ----------------------------------------------------------

def bucket_indexes(spans: Sequence[Span]) -> List[int]:
    out = []
    idx = 0
    for k, (off, length) in enumerate(spans):
        idx = off if k == 0 else idx + off
        for _ in range(length):
            out.append(idx)
            idx += 1
    return out


def spans_of(indexes: Sequence[int]) -> List[Span]:
    """Compact spans for sorted bucket indexes."""
    spans: List[List[int]] = []
    last = 0
    for i in indexes:
        if spans and i == last + 1:
            spans[-1][1] += 1
        else:
            spans.append([i if not spans else i - last - 1, 1])
        last = i
    return [(o, n) for o, n in spans]


def structure_error(h: Any) -> str | None:
    """What breaks Prometheus' histogram.Validate (spans vs buckets, negative counts, count
    smaller than the buckets), or None."""
    for side, spans, buckets in (("negative", h.negative_spans, h.negative_buckets),
                                 ("positive", h.positive_spans, h.positive_buckets)):
        for k, (off, _) in enumerate(spans):
            if k > 0 and off < 0:
                return "%s side: span number %d with offset %d" % (side, k + 1, off)
        n = sum(length for _, length in spans)
        if n != len(buckets):
            return "%s side: spans need %d buckets, have %d buckets" % (side, n, len(buckets))
    if h.schema == CUSTOM_BUCKETS_SCHEMA:
        if h.negative_spans or h.negative_buckets:
            return "custom buckets: must not have negative buckets"
        if h.zero_threshold or h.zero_count:
            return "custom buckets: must have zero threshold and zero count of 0"
        if any(h.custom_values[i] >= h.custom_values[i + 1] for i in range(len(h.custom_values) - 1)):
            return "custom buckets: custom values must be in strictly increasing order"
        idx = bucket_indexes(h.positive_spans)
        if idx and (idx[0] < 0 or idx[-1] > len(h.custom_values)):
            return "custom buckets: span index out of range"
    total = 0.0
    for buckets in (h.negative_buckets, h.positive_buckets):
        cur = 0.0
        for v in buckets:
            cur = cur + v if isinstance(h, Histogram) else v
            if cur < 0:
                return "bucket count %g is negative" % cur
            total += cur
    total += h.zero_count
    if isinstance(h, Histogram):
        if h.count < total:
            return "%d observations found in buckets, but the Count field is %d" % (total, h.count)
    elif h.count == h.count and h.count < total and not _close(h.count, total):
        return "%g observations found in buckets, but the Count field is %g" % (total, h.count)
    return None


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-12 * max(abs(a), abs(b))


def bucket_count(h: Any) -> int:
    return len(h.positive_buckets) + len(h.negative_buckets)


def reduce_resolution(h: Any) -> "Histogram | FloatHistogram":
    """h with schema - 1 (each pair of neighbouring buckets merged); ValueError at schema -4
    or for custom buckets."""
    if h.schema <= EXPONENTIAL_SCHEMA_MIN or h.schema == CUSTOM_BUCKETS_SCHEMA:
        raise ValueError("cannot reduce resolution of histogram with schema %d" % h.schema)
    is_int = isinstance(h, Histogram)
    sides = []
    for spans, buckets in ((h.positive_spans, h.positive_buckets),
                           (h.negative_spans, h.negative_buckets)):
        merged: Dict[int, Any] = {}
        cur: Any = 0
        for i, v in zip(bucket_indexes(spans), buckets):
            cur = cur + v if is_int else v
            target = ((i - 1) >> 1) + 1
            merged[target] = merged.get(target, 0) + cur
        idx = sorted(merged)
        vals = [merged[i] for i in idx]
        if is_int:
            vals = [int(v) - int(p) for v, p in zip(vals, [0] + vals[:-1])]
        sides.append((spans_of(idx), vals))
    cls: Any = type(h)
    return cls(schema=h.schema - 1, zero_threshold=h.zero_threshold, zero_count=h.zero_count,
               count=h.count, sum=h.sum, positive_spans=sides[0][0], positive_buckets=sides[0][1],
               negative_spans=sides[1][0], negative_buckets=sides[1][1],
               custom_values=h.custom_values, counter_reset_hint=h.counter_reset_hint)
