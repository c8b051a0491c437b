"""prompb.Histogram decoding/encoding (engine/prompbhist.py) against protobuf's own
implementation of urdar/proto/types.proto, histogram WAL records, and resolution reduction."""
import struct

from hypothesis import given, settings, strategies as st

from tests.engine.test_remotewrite import remote_pb2, types_pb2
from urdar.engine import histrecords, prompbhist as PH
from urdar.engine.histogram import FloatHistogram, Histogram


def _spans(draw):
    n = draw(st.integers(0, 3))
    return [(draw(st.integers(-5, 5)) if k == 0 else draw(st.integers(0, 4)), draw(st.integers(0, 4)))
            for k in range(n)]


@st.composite
def histograms(draw):
    float_h = draw(st.booleans())
    pspans, nspans = _spans(draw), _spans(draw)
    np_, nn = sum(l for _, l in pspans), sum(l for _, l in nspans)
    custom = draw(st.booleans())
    schema = -53 if custom else draw(st.integers(-4, 8))
    fl = st.floats(allow_nan=False, allow_infinity=False, width=64)
    common = dict(schema=schema, zero_threshold=draw(st.sampled_from([0.0, 2.0 ** -128, 0.001])),
                  sum=draw(fl), positive_spans=pspans, negative_spans=nspans,
                  custom_values=sorted(set(draw(st.lists(fl, max_size=4)))) if custom else [],
                  counter_reset_hint=draw(st.integers(0, 3)))
    if float_h:
        return FloatHistogram(count=draw(fl), zero_count=draw(fl),
                              positive_buckets=[draw(fl) for _ in range(np_)],
                              negative_buckets=[draw(fl) for _ in range(nn)], **common)
    i64 = st.integers(-(2 ** 40), 2 ** 40)
    return Histogram(count=draw(st.integers(0, 2 ** 63)), zero_count=draw(st.integers(0, 2 ** 50)),
                     positive_buckets=[draw(i64) for _ in range(np_)],
                     negative_buckets=[draw(i64) for _ in range(nn)], **common)


def _to_pb(t, h):
    m = types_pb2.Histogram(sum=h.sum, schema=h.schema, zero_threshold=h.zero_threshold,
                            reset_hint=h.counter_reset_hint, timestamp=t)
    if isinstance(h, FloatHistogram):
        m.count_float = h.count
        m.zero_count_float = h.zero_count
        m.positive_counts.extend(h.positive_buckets)
        m.negative_counts.extend(h.negative_buckets)
    else:
        m.count_int = h.count
        m.zero_count_int = h.zero_count
        m.positive_deltas.extend(h.positive_buckets)
        m.negative_deltas.extend(h.negative_buckets)
    for off, length in h.positive_spans:
        m.positive_spans.add(offset=off, length=length)
    for off, length in h.negative_spans:
        m.negative_spans.add(offset=off, length=length)
    m.custom_values.extend(h.custom_values)
    return m


@settings(max_examples=100, deadline=None)
@given(histograms(), st.integers(-(2 ** 62), 2 ** 62))
def test_decode_matches_protobuf_and_encode_round_trips(h, t):
    wire = _to_pb(t, h).SerializeToString()
    assert PH.decode_histogram(wire) == (t, h)
    ours = PH.encode_histogram(t, h)
    parsed = types_pb2.Histogram.FromString(ours)
    assert parsed == _to_pb(t, h)
    # a WriteRequest with two series, histograms in the second
    req = remote_pb2.WriteRequest()
    req.timeseries.add().labels.add(name="__name__", value="a")
    ts = req.timeseries.add()
    ts.labels.add(name="__name__", value="b")
    ts.histograms.append(_to_pb(t, h))
    ts.histograms.append(_to_pb(t + 1, h))
    assert PH.request_histograms(req.SerializeToString()) == [[], [(t, h), (t + 1, h)]]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 2 ** 40), st.integers(-(2 ** 50), 2 ** 50), histograms()),
                min_size=1, max_size=5))
def test_wal_records_round_trip(items):
    recs = histrecords.encode_histogram_records(items)
    assert {r[0] for r in recs} == {histrecords.record_type_of(h) for _, _, h in items}
    got = [x for r in recs for x in histrecords.decode_histogram_record(r)]
    # one record per type, in type order, each keeping the call's order (sorted() is stable)
    assert got == sorted(items, key=lambda x: histrecords.record_type_of(x[2]))


def test_wal_record_layout_by_hand():
    h = Histogram(schema=1, zero_threshold=0.5, zero_count=2, count=9, sum=1.0,
                  positive_spans=[(-1, 2)], positive_buckets=[3, -1], counter_reset_hint=2)
    [rec] = histrecords.encode_histogram_records([(7, 1000, h), (9, 990, h)])
    body = (bytes([2]) + bytes([2]) + struct.pack(">d", 0.5) + bytes([2, 9]) + struct.pack(">d", 1.0)
            + bytes([1, 1, 2]) + bytes([0]) + bytes([2, 6, 1]) + bytes([0]))
    # hint · varint schema · zt · uvarint zc · uvarint count · sum · 1 span (varint -1, 2)
    # · 0 negative spans · 2 buckets (varint 3, -1) · 0 negative buckets
    assert rec == (bytes([7]) + struct.pack(">QQ", 7, 1000) + bytes([0, 0]) + body
                   + bytes([4, 0x13]) + body)


def test_reduce_resolution_merges_neighbours():
    h = FloatHistogram(schema=2, count=10, positive_spans=[(-1, 4), (2, 1)],
                       positive_buckets=[1, 2, 3, 4, 5], negative_spans=[(1, 1)], negative_buckets=[7])
    r = PH.reduce_resolution(h)
    # indexes -1,0,1,2,5 -> ((i-1)>>1)+1: 0,0,1,1,3
    assert (r.schema, r.positive_spans, r.positive_buckets) == (1, [(0, 2), (1, 1)], [3, 7, 5])
    assert (r.negative_spans, r.negative_buckets) == ([(1, 1)], [7])
    i = Histogram(schema=0, count=6, positive_spans=[(1, 3)], positive_buckets=[1, 1, 1])
    r = PH.reduce_resolution(i)        # absolute 1,2,3 at indexes 1,2,3 -> {1: 3, 2: 3}
    assert (r.positive_spans, r.positive_buckets) == ([(1, 2)], [3, 0])
    try:
        PH.reduce_resolution(Histogram(schema=-4))
    except ValueError:
        pass
    else:
        raise AssertionError("schema -4 reduced")
