"""Histogram chunks (encodings 2 and 3) against the independent oracle (tests/support/
hist_oracle.py), round trips, and Prometheus' appendable rules."""
import struct

from hypothesis import given, settings, strategies as st

from tests.support import hist_oracle
from urdar.engine import histchunk
from urdar.engine.histchunk import (
    ENC_FLOAT_HISTOGRAM, ENC_HISTOGRAM, HistogramChunkBuilder, decode_histogram_chunk)
from urdar.engine.histogram import (
    COUNTER_RESET, FloatHistogram, GAUGE_TYPE, Histogram, NOT_COUNTER_RESET,
    UNKNOWN_COUNTER_RESET)

STALE = struct.unpack(">d", struct.pack(">Q", 0x7FF0000000000002))[0]


def _ih(k, **kw):
    base = dict(schema=1, zero_threshold=2.0 ** -128, zero_count=k, count=6 * k + 3,
                sum=1.5 * k + 0.25, positive_spans=[(0, 2), (1, 2)],
                positive_buckets=[k, 1, -1, k], negative_spans=[(-2, 1)],
                negative_buckets=[k + 1])
    base.update(kw)
    return Histogram(**base)


def _semantic(h):
    """index -> absolute count per side, zero buckets dropped (layout widening adds those)."""
    f = h.to_float()
    out = []
    for spans, buckets in ((f.positive_spans, f.positive_buckets),
                           (f.negative_spans, f.negative_buckets)):
        idx = histchunk._bucket_indexes(spans)
        out.append({i: c for i, c in zip(idx, buckets) if c != 0})
    return (f.schema, f.zero_threshold, f.zero_count, f.count, struct.pack(">d", f.sum),
            out[0], out[1], f.custom_values)


def _build(samples, encoding):
    """Chunks the builder makes: [(header, chunk bytes, [(t, h)] as stored)]."""
    chunks = []
    b = None
    for t, h in samples:
        if b is None:
            b = HistogramChunkBuilder(encoding, 0xC0 if h.counter_reset_hint == GAUGE_TYPE else 0)
        hint = b.add(t, h)
        if hint is not None:
            chunks.append(b)
            b = HistogramChunkBuilder(encoding, histchunk.header_of_hint(hint))
            assert b.add(t, h) is None
    chunks.append(b)
    return chunks


def _oracle(b, float_hist):
    hint = {0x00: 0, 0x80: 1, 0x40: 2, 0xC0: 3}[b.header]
    return hist_oracle.encode(b.samples, hint, float_hist)


def test_integer_chunk_bytes_match_the_oracle_and_decode():
    samples = [(1000 + 15000 * k + (k % 3), _ih(k)) for k in range(30)]
    [b] = _build(samples, ENC_HISTOGRAM)
    data = b.bytes()
    assert data == _oracle(b, False)
    assert data[:3] == b"\x00\x1e\x00"
    ts, hs = decode_histogram_chunk(data, ENC_HISTOGRAM)
    assert ts == [t for t, _ in samples]
    assert [_semantic(h) for h in hs] == [_semantic(h) for _, h in samples]
    assert hs[0].counter_reset_hint == UNKNOWN_COUNTER_RESET
    assert {h.counter_reset_hint for h in hs[1:]} == {NOT_COUNTER_RESET}
    assert all(isinstance(h.count, int) for h in hs)


def test_float_chunk_bytes_match_the_oracle_and_decode():
    samples = [(k * 10000, _ih(k).to_float()) for k in range(25)]
    for _, h in samples:
        h.sum = h.sum * 1.1
        h.positive_buckets[0] += 0.5
        h.count += 0.5
    [b] = _build(samples, ENC_FLOAT_HISTOGRAM)
    assert b.bytes() == _oracle(b, True)
    ts, hs = decode_histogram_chunk(b.bytes(), ENC_FLOAT_HISTOGRAM)
    assert [_semantic(h) for h in hs] == [_semantic(h) for _, h in samples]


def test_zero_threshold_custom_bounds_and_stale_marker():
    cases = [
        _ih(1, zero_threshold=0.0),
        _ih(1, zero_threshold=0.001),              # not a power of two: 255 + 8 bytes
        _ih(1, zero_threshold=2.0 ** 10),
        _ih(1, schema=-53, custom_values=[0.1, 0.5, 1, 2.5, 33554.43, 40000.0, -1.0, 0.0001],
            zero_threshold=0.0, negative_spans=[], negative_buckets=[]),
        _ih(1, schema=8),
        _ih(1, schema=-4),
    ]
    for h in cases:
        for float_hist in (False, True):
            enc = ENC_FLOAT_HISTOGRAM if float_hist else ENC_HISTOGRAM
            v = h.to_float() if float_hist else h
            stale = (FloatHistogram if float_hist else Histogram)(sum=STALE)
            [b] = _build([(1, v), (2, v), (3, stale)], enc)
            assert b.bytes() == _oracle(b, float_hist)
            ts, hs = decode_histogram_chunk(b.bytes(), enc)
            assert ts == [1, 2, 3]
            assert _semantic(hs[0]) == _semantic(v)
            assert hs[0].custom_values == [float(x) for x in v.custom_values]
            assert struct.pack(">d", hs[2].sum) == struct.pack(">d", STALE)


def test_new_bucket_recodes_the_chunk_missing_empty_bucket_is_filled():
    h1 = Histogram(count=3, sum=1.0, positive_spans=[(0, 2)], positive_buckets=[1, 1])
    # bucket 3 appears: forward insert, the chunk is re-encoded with spans [(0,2),(1,1)]
    h2 = Histogram(count=6, sum=2.0, positive_spans=[(0, 2), (1, 1)], positive_buckets=[1, 1, -1])
    [b] = _build([(10, h1), (20, h2)], ENC_HISTOGRAM)
    assert b.samples[0][1].positive_spans == [(0, 2), (1, 1)]
    assert b.samples[0][1].positive_buckets == [1, 1, -2]
    assert b.bytes() == _oracle(b, False)
    # an empty bucket of the chunk missing from the next sample: backward insert
    h3 = Histogram(count=7, sum=3.0, positive_spans=[(1, 1), (1, 1)], positive_buckets=[2, -1])
    h2b = Histogram(count=6, sum=2.0, positive_spans=[(0, 2), (1, 1)], positive_buckets=[0, 2, -1])
    [b] = _build([(10, h2b), (20, h3)], ENC_HISTOGRAM)
    assert b.samples[1][1].positive_spans == [(0, 2), (1, 1)]
    assert b.samples[1][1].positive_buckets == [0, 2, -1]
    ts, hs = decode_histogram_chunk(b.bytes(), ENC_HISTOGRAM)
    assert [_semantic(h) for h in hs] == [_semantic(h2b), _semantic(h3)]


def test_counter_reset_schema_change_and_gauge_cut_chunks():
    h = _ih(5)
    lower = _ih(1)
    b = HistogramChunkBuilder(ENC_HISTOGRAM)
    assert b.add(1, h) is None
    assert b.add(2, lower) == COUNTER_RESET
    assert b.add(2, _ih(6, schema=2)) == UNKNOWN_COUNTER_RESET
    assert b.add(2, _ih(6, counter_reset_hint=COUNTER_RESET)) == COUNTER_RESET
    fewer = _ih(6, positive_spans=[(0, 2)], positive_buckets=[6, 1])   # non-empty buckets gone
    assert b.add(2, fewer) == COUNTER_RESET
    chunks = _build([(1, h), (2, lower), (3, _ih(2))], ENC_HISTOGRAM)
    assert [c.header for c in chunks] == [0x00, 0x80]
    assert chunks[1].bytes()[2] == 0x80
    g = [(k, _ih(k % 3, counter_reset_hint=GAUGE_TYPE)) for k in range(5)]
    [gb] = _build(g, ENC_HISTOGRAM)
    assert gb.bytes()[2] == 0xC0 and gb.bytes() == _oracle(gb, False)
    _, hs = decode_histogram_chunk(gb.bytes(), ENC_HISTOGRAM)
    assert {x.counter_reset_hint for x in hs} == {GAUGE_TYPE}


def test_truncated_or_garbage_chunk_raises():
    [b] = _build([(k, _ih(k)) for k in range(5)], ENC_HISTOGRAM)
    data = b.bytes()
    for cut in (1, 4, len(data) - 3):
        try:
            decode_histogram_chunk(data[:cut], ENC_HISTOGRAM)
        except histchunk.HistogramChunkError:
            continue
        raise AssertionError("truncated chunk at %d decoded" % cut)


@st.composite
def _series(draw):
    """A counter histogram series: buckets appear over time, counts grow, sometimes reset."""
    n = draw(st.integers(1, 40))
    float_hist = draw(st.booleans())
    schema = draw(st.sampled_from([-4, 0, 3, 8]))
    counts = {}
    out = []
    t = draw(st.integers(-10 ** 6, 10 ** 12))
    for _ in range(n):
        t += draw(st.integers(1, 10 ** 6))
        if draw(st.integers(0, 9)) == 0:
            counts = {}
        for _ in range(draw(st.integers(0, 2))):
            counts.setdefault(draw(st.integers(-20, 20)), 0)
        for i in list(counts):
            counts[i] += draw(st.integers(0, 1000))
        idx = sorted(counts)
        spans = histchunk._merged_spans(idx)
        vals = [counts[i] for i in idx]
        total = sum(vals)
        if float_hist:
            h = FloatHistogram(schema=schema, count=float(total) + 0.5, sum=total * 0.3,
                               positive_spans=spans, positive_buckets=[v + 0.5 for v in vals])
        else:
            deltas = [v - p for v, p in zip(vals, [0] + vals[:-1])]
            h = Histogram(schema=schema, count=total, sum=total * 0.3, positive_spans=spans,
                          positive_buckets=deltas)
        out.append((t, h))
    return float_hist, out


@settings(max_examples=150, deadline=None)
@given(_series())
def test_property_chunks_match_oracle_and_round_trip(case):
    float_hist, samples = case
    enc = ENC_FLOAT_HISTOGRAM if float_hist else ENC_HISTOGRAM
    got = []
    for b in _build(samples, enc):
        data = b.bytes()
        assert data == _oracle(b, float_hist)
        ts, hs = decode_histogram_chunk(data, enc)
        got.extend(zip(ts, hs))
    assert [t for t, _ in got] == [t for t, _ in samples]
    assert [_semantic(h) for _, h in got] == [_semantic(h) for _, h in samples]
