"""Native histogram series (the engine's 6-tuple select contract) through the component
plumbing: source merging, the remote select answer, the store-gateway's chunk decoding and
remote read (samples and streamed chunks), read back with the protobuf runtime."""
import importlib
import os
import struct
import sys
import tempfile
from array import array

from urdar.components import remoteread as RR
from urdar.components.ingester_remote import decode_series, encode_series
from urdar.components.sources import merge_series
from urdar.components.storegateway import _decode_series_samples
from urdar.engine.histchunk import decode_histogram_chunk, encode_histogram_samples
from urdar.engine.histogram import FloatHistogram, GAUGE_TYPE, Histogram
from urdar.engine.labels import encode_labels
from urdar.engine.prompbhist import decode_histogram
from urdar.engine.xorchunk import encode_xor

KEY = encode_labels([("__name__", "lat"), ("job", "a")])


def fh(k, hint=0):
    return FloatHistogram(schema=2, count=4.0 + k, zero_count=1.0, sum=0.5 * k, zero_threshold=0.001,
                          positive_spans=[(-1, 2)], positive_buckets=[1.0, 2.0 + k],
                          negative_spans=[(3, 1)], negative_buckets=[0.0], counter_reset_hint=hint)


def _read_pb2():
    from grpc_tools import protoc
    proto_dir = os.path.join(os.path.dirname(__file__), "..", "..", "urdar", "proto")
    out = tempfile.mkdtemp(prefix="urdar-pb2-")
    rc = protoc.main(["protoc", "-I" + os.path.abspath(proto_dir), "--python_out=" + out,
                      "types.proto", "read.proto"])
    assert rc == 0
    sys.path.insert(0, out)
    try:
        return importlib.import_module("read_pb2")
    finally:
        sys.path.remove(out)


def test_merge_series_keeps_and_merges_histograms():
    a = [(KEY, array("q", [1]), array("d", [1.0]), None, array("q", [10, 30]), [fh(1), fh(3)])]
    b = [(KEY, array("q", [2]), array("d", [2.0]), None, array("q", [20, 30]), [fh(2), fh(9)])]
    other = [(encode_labels([("__name__", "x")]), array("q", [5]), array("d", [5.0]))]
    out = merge_series([a, b, other])
    [m] = [x for x in out if x[0] == KEY]
    assert list(m[1]) == [1, 2] and list(m[4]) == [10, 20, 30]
    assert m[5] == [fh(1), fh(2), fh(3)]            # the first source wins at t=30
    assert [len(x) for x in out if x[0] != KEY] == [3]


def test_remote_select_answer_carries_histograms():
    series = [(encode_labels([("__name__", "f")]), array("q", [1, 2]), array("d", [1.0, 2.0])),
              (KEY, array("q", []), array("d", []), None, array("q", [5, 6]), [fh(1), fh(2, GAUGE_TYPE)])]
    got = decode_series(encode_series(series))
    assert got[0] == (series[0][0], array("q", [1, 2]), array("d", [1.0, 2.0]))
    assert got[1][0] == KEY and list(got[1][4]) == [5, 6] and got[1][5] == [fh(1), fh(2, GAUGE_TYPE)]
    # without histograms the answer is byte for byte the old one
    assert encode_series(series[:1]) == struct.pack("<I", 1) + encode_series(series[:1])[4:]


def test_store_gateway_decodes_histogram_chunks():
    ih = [(t, Histogram(schema=0, count=t, sum=1.0, positive_spans=[(0, 1)], positive_buckets=[t]))
          for t in range(100, 110)]
    chunks = {}
    refs = []
    mints, maxts = [], []
    for k, (cmint, cmaxt, enc, data) in enumerate(encode_histogram_samples(ih, 4)):
        chunks[k] = (enc, data)
        refs.append(k)
        mints.append(cmint)
        maxts.append(cmaxt)
    chunks[99] = (1, encode_xor(array("q", [50, 60]), array("d", [1.0, 2.0])))
    series = [(KEY, [50] + mints, [60] + maxts, [99] + refs)]
    [(key, ts, vs, sts, hts, hvs)] = _decode_series_samples(series, chunks, 55, 105)
    assert list(ts) == [60] and list(hts) == list(range(100, 106))
    assert [h.count for h in hvs] == [float(t) for t in range(100, 106)]
    assert all(isinstance(h, FloatHistogram) for h in hvs)


def test_remote_read_samples_and_chunks_carry_histograms():
    pb = _read_pb2()
    series = [(KEY, array("q", [1]), array("d", [7.0]), None, array("q", [10, 20]), [fh(1), fh(2)])]
    resp = pb.ReadResponse.FromString(RR.encode_read_response([series]))
    ts = resp.results[0].timeseries[0]
    assert [(s.timestamp, s.value) for s in ts.samples] == [(1, 7.0)]
    assert [decode_histogram(h.SerializeToString()) for h in ts.histograms] == [(10, fh(1)), (20, fh(2))]
    frames = b"".join(RR.chunked_frames(0, series))
    # one frame: uvarint length · CRC · ChunkedReadResponse
    n = pos = shift = 0
    while True:
        n |= (frames[pos] & 0x7F) << shift
        pos += 1
        shift += 7
        if frames[pos - 1] < 0x80:
            break
    assert pos + 4 + n == len(frames)
    msg = pb.ChunkedReadResponse.FromString(frames[pos + 4:pos + 4 + n])
    chunks = msg.chunked_series[0].chunks
    assert [c.type for c in chunks] == [1, 3]
    hts, hvs = decode_histogram_chunk(chunks[1].data, 3)
    assert (chunks[1].min_time_ms, chunks[1].max_time_ms, hts) == (10, 20, [10, 20])
    assert [h.count for h in hvs] == [5.0, 6.0] and hvs[1].positive_buckets == [1.0, 4.0]
