"""Remote-write 1.0 decoding (urdar/engine/remotewrite.pyx) against the protobuf runtime.

Reference messages are built with the protobuf runtime (upb) from urdar/proto/*.proto, compiled
by grpc_tools.protoc into a temporary directory when this module loads; a small Python model
of key building and label validation in this file is the oracle for the columns."""
import array
import importlib
import mmap
import os
import re
import struct
import sys
import tempfile
import unittest

from hypothesis import HealthCheck, assume, given, settings, strategies as st

import urdar
from urdar.engine import remotewrite as rw
from urdar.engine.errors import RemoteWriteDecodeError
from urdar.engine.labels import decode_labels, hash_key

PROTO_DIR = os.path.join(os.path.dirname(urdar.__file__), "proto")
STALE_NAN_BITS = 0x7FF0000000000002


def _compile_protos():
    """Compile remote.proto/types.proto into a temp dir and import the generated modules."""
    from grpc_tools import protoc
    out = tempfile.mkdtemp(prefix="urdar-rwproto-")
    rc = protoc.main(["protoc", "-I" + PROTO_DIR, "--python_out=" + out,
                      os.path.join(PROTO_DIR, "types.proto"), os.path.join(PROTO_DIR, "remote.proto")])
    if rc != 0:
        raise RuntimeError("protoc failed on urdar/proto (%d)" % rc)
    sys.path.insert(0, out)
    try:
        return importlib.import_module("remote_pb2"), importlib.import_module("types_pb2")
    finally:
        sys.path.remove(out)


remote_pb2, types_pb2 = _compile_protos()


# ---- hand encoding ----------------------------------------------------------------------

def uvarint(v):
    v &= (1 << 64) - 1
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def tag(num, wt):
    return uvarint((num << 3) | wt)


def f_varint(num, v):
    return tag(num, 0) + uvarint(v)


def f_bytes(num, b):
    return tag(num, 2) + uvarint(len(b)) + b


def f_double(num, v):
    return tag(num, 1) + struct.pack("<d", v)


def f_fixed32(num, b4):
    return tag(num, 5) + b4


def f_group(num, inner):
    return tag(num, 3) + inner + tag(num, 4)


def label_msg(name, value):
    return f_bytes(1, name) + f_bytes(2, value)


def sample_msg(t, v):
    return f_double(1, v) + f_varint(2, t)


# ---- oracle -----------------------------------------------------------------------------

LABEL_RE = re.compile(rb"[a-zA-Z_][a-zA-Z0-9_]*")
METRIC_RE = re.compile(rb"[a-zA-Z_:][a-zA-Z0-9_:]*")


def utf8_ok(b):
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def canon(pairs):
    """(labels in key order, first duplicate index or None, input-was-unsorted)."""
    kept = [(n, v) for n, v in pairs if v]
    unsorted = any(kept[i - 1][0] > kept[i][0] for i in range(1, len(kept)))
    ordered = [p for _, p in sorted(enumerate(kept), key=lambda x: (x[1][0], x[0]))]
    out, first_dup = [], None
    for n, v in ordered:
        if out and out[-1][0] == n:
            if first_dup is None:
                first_dup = len(out) - 1
            continue
        out.append((n, v))
    return out, first_dup, unsorted


def ref_key(pairs):
    labels = canon(pairs)[0]
    return uvarint(len(labels)) + b"".join(
        uvarint(len(n)) + n + uvarint(len(v)) + v for n, v in labels)


def ref_flags(pairs, max_name=1024, max_value=2048, max_names=30):
    labels, first_dup, unsorted = canon(pairs)
    flags, bad = 0, -1
    if any(not v for _, v in pairs):
        flags |= rw.EMPTY_LABEL_VALUE
    if unsorted:
        flags |= rw.LABELS_NOT_SORTED
    if first_dup is not None:
        flags |= rw.DUPLICATE_LABEL_NAME
    for i, (n, v) in enumerate(labels):
        f = 0
        if max_name and len(n) > max_name:
            f |= rw.LABEL_NAME_TOO_LONG
        if max_value and len(v) > max_value:
            f |= rw.LABEL_VALUE_TOO_LONG
        if not LABEL_RE.fullmatch(n):
            f |= rw.INVALID_LABEL_NAME
            if not utf8_ok(n):
                f |= rw.INVALID_UTF8
        if n == b"__name__" and not METRIC_RE.fullmatch(v):
            f |= rw.INVALID_METRIC_NAME
        if not utf8_ok(v):
            f |= rw.INVALID_UTF8
        flags |= f
        if (f or i == first_dup) and bad < 0:
            bad = i
    if not any(n == b"__name__" for n, _ in labels):
        flags |= rw.NO_METRIC_NAME
    if max_names and len(labels) > max_names:
        flags |= rw.TOO_MANY_LABELS
    return flags, bad


def bits(v):
    return struct.unpack("<Q", struct.pack("<d", v))[0]


def expected_from_pb(msg):
    """The columns decode() must produce for a runtime-parsed WriteRequest."""
    series = []
    for ts in msg.timeseries:
        pairs = [(l.name.encode(), l.value.encode()) for l in ts.labels]
        series.append(dict(
            key=ref_key(pairs), flags=ref_flags(pairs),
            samples=[(s.timestamp, bits(s.value)) for s in ts.samples],
            exemplars=[(ref_key([(l.name.encode(), l.value.encode()) for l in e.labels]),
                        e.timestamp, bits(e.value)) for e in ts.exemplars],
            histograms=len(ts.histograms)))
    metadata = [(m.type, m.metric_family_name, m.help, m.unit) for m in msg.metadata]
    return series, metadata


def actual(d):
    """decode()'s result in the same shape as expected_from_pb, checking offsets on the way."""
    series = []
    assert len(d.key_offsets) == len(d.sample_offsets) == len(d.exemplar_offsets) == d.n_series + 1
    assert d.sample_offsets[-1] == len(d.ts) == len(d.vals) == d.n_samples
    assert d.exemplar_offsets[-1] == len(d.exemplar_ts) == d.n_exemplars
    assert d.key_offsets[-1] == len(d.keys)
    assert d.exemplar_key_offsets[-1] == len(d.exemplar_keys)
    for i in range(d.n_series):
        a, b = d.sample_offsets[i], d.sample_offsets[i + 1]
        ea, eb = d.exemplar_offsets[i], d.exemplar_offsets[i + 1]
        assert d.key_hashes[i] == hash_key(d.key(i))
        series.append(dict(
            key=d.key(i), flags=(d.series_flags[i], d.series_bad_label[i]),
            samples=[(d.ts[j], bits(d.vals[j])) for j in range(a, b)],
            exemplars=[(d.exemplar_key(j), d.exemplar_ts[j], bits(d.exemplar_vals[j]))
                       for j in range(ea, eb)],
            histograms=d.histogram_counts[i]))
    assert sum(s["histograms"] for s in series) == d.n_histograms
    return series, d.metadata


# ---- strategies -------------------------------------------------------------------------

REALISTIC_NAMES = ["__name__", "job", "instance", "le", "quantile", "cluster", "namespace", "pod",
                   "container", "__meta_x__", "_", "a1", "status_code", "method", "path"]
names = st.one_of(st.sampled_from(REALISTIC_NAMES), st.text(max_size=12),
                  st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,15}", fullmatch=True))
metric_values = st.one_of(st.sampled_from(["up", "http_requests_total", "a:b_c", "1bad", "x-y", ""]),
                          st.from_regex(r"[a-zA-Z_:][a-zA-Z0-9_:]{0,20}", fullmatch=True))
values = st.one_of(st.just(""), st.text(max_size=24), st.sampled_from(["200", "GET", "10.0.0.1:9100"]))
label_pairs = st.lists(st.one_of(st.tuples(names, values), st.tuples(st.just("__name__"), metric_values)),
                       max_size=10)
int64s = st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1)
floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                   st.sampled_from([struct.unpack("<d", struct.pack("<Q", STALE_NAN_BITS))[0], -0.0, 0.0]),
                   st.integers(min_value=0, max_value=(1 << 64) - 1).map(
                       lambda b: struct.unpack("<d", struct.pack("<Q", b))[0]))
samples = st.lists(st.tuples(int64s, floats), max_size=5)
exemplars = st.lists(st.tuples(st.lists(st.tuples(names, values), max_size=3), int64s, floats), max_size=3)
metadata_items = st.lists(st.tuples(st.integers(min_value=-3, max_value=9), st.text(max_size=10),
                                    st.text(max_size=20), st.text(max_size=5)), max_size=3)


def unknown_field(numbers):
    leaf = st.one_of(
        st.tuples(numbers, int64s).map(lambda x: f_varint(x[0], x[1])),
        st.tuples(numbers, st.binary(min_size=8, max_size=8)).map(lambda x: tag(x[0], 1) + x[1]),
        st.tuples(numbers, st.binary(max_size=10)).map(lambda x: f_bytes(x[0], x[1])),
        st.tuples(numbers, st.binary(min_size=4, max_size=4)).map(lambda x: f_fixed32(x[0], x[1])))
    return st.recursive(leaf, lambda inner: st.tuples(numbers, st.lists(inner, max_size=3)).map(
        lambda x: f_group(x[0], b"".join(x[1]))), max_leaves=4)


def unknowns(numbers):
    return st.lists(unknown_field(numbers), max_size=2).map(b"".join)


series_unknown_numbers = st.one_of(st.integers(7, 40), st.just(5), st.integers(1 << 20, (1 << 29) - 1))
top_unknown_numbers = st.one_of(st.integers(4, 999), st.integers(1002, 5000))


@st.composite
def write_requests(draw, with_unknown=True):
    """(body bytes, runtime message) where the body may carry unknown fields at every level."""
    msg = remote_pb2.WriteRequest()
    body = b""
    for _ in range(draw(st.integers(0, 4))):
        ts = types_pb2.TimeSeries()
        for n, v in draw(label_pairs):
            ts.labels.add(name=n, value=v)
        for t, v in draw(samples):
            ts.samples.add(timestamp=t, value=v)
        for labs, t, v in draw(exemplars):
            e = ts.exemplars.add(timestamp=t, value=v)
            for n, lv in labs:
                e.labels.add(name=n, value=lv)
        for _ in range(draw(st.integers(0, 2))):
            h = ts.histograms.add(count_int=draw(st.integers(0, 100)), schema=draw(st.integers(-4, 8)))
            h.positive_deltas.extend(draw(st.lists(st.integers(-100, 100), max_size=4)))
        if draw(st.booleans()):
            ts.created_timestamp = draw(int64s)
        extra = draw(unknowns(series_unknown_numbers)) if with_unknown else b""
        body += f_bytes(1, ts.SerializeToString() + extra)
        if with_unknown:
            body += draw(unknowns(top_unknown_numbers))
    for mtype, name, help_, unit in draw(metadata_items):
        m = types_pb2.MetricMetadata(type=mtype, metric_family_name=name, help=help_, unit=unit)
        body += f_bytes(3, m.SerializeToString())
    msg.ParseFromString(body)          # the runtime agrees the body is a WriteRequest
    return body, msg


# ---- tests ------------------------------------------------------------------------------

class DecodeTests(unittest.TestCase):

    @settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
    @given(write_requests())
    def test_columns_match_protobuf_runtime(self, case):
        """Every column decode() returns matches what the protobuf runtime parses from the same body."""
        body, msg = case
        self.assertEqual(actual(rw.decode(body)), expected_from_pb(msg))

    def test_empty_body_is_an_empty_request(self):
        """An empty body decodes to a request with no series, samples or metadata."""
        d = rw.decode(b"")
        self.assertEqual((d.n_series, d.n_samples, len(d.metadata), list(d.key_offsets)), (0, 0, 0, [0]))
        self.assertEqual(d.keys, b"")

    def test_every_buffer_type_is_accepted(self):
        """bytes, bytearray, memoryview slices, array('B') and mmap bodies decode identically."""
        body = rw.encode_write_request([([("__name__", "up"), ("job", "j")], [(1, 2.0)])])
        want = actual(rw.decode(body))
        with mmap.mmap(-1, len(body)) as mm:
            mm[:] = body
            bodies = [bytearray(body), memoryview(b"xx" + body)[2:], array.array("B", body), mm]
            for b in bodies:
                self.assertEqual(actual(rw.decode(b)), want)
            del b, bodies

    def test_samples_keep_wire_order_and_bits(self):
        """Samples come back in wire order with NaN payloads, the stale marker and -0.0 bit-exact."""
        stale = struct.unpack("<d", struct.pack("<Q", STALE_NAN_BITS))[0]
        pts = [(30, 1.5), (10, stale), (20, -0.0), (-5, float("inf")), (0, 0.0), ((1 << 63) - 1, 1e-310)]
        d = rw.decode(rw.encode_write_request([([("__name__", "x")], pts)]))
        self.assertEqual([(t, bits(v)) for t, v in zip(d.ts, d.vals)], [(t, bits(v)) for t, v in pts])

    def test_interleaved_and_repeated_fields(self):
        """Labels, samples and exemplars interleaved in any order decode as if grouped; a repeated scalar keeps its last value."""
        series = (f_bytes(1, label_msg(b"job", b"a"))
                  + f_bytes(2, sample_msg(1, 1.0))
                  + f_bytes(3, f_double(2, 9.0) + f_bytes(1, label_msg(b"trace_id", b"t")) + f_varint(3, 7))
                  + f_bytes(1, label_msg(b"__name__", b"m"))
                  + f_bytes(2, f_varint(2, 5) + f_double(1, 2.0) + f_varint(2, 6))
                  + f_varint(6, 123))
        body = f_varint(1000, 1) + f_bytes(1, series) + f_varint(2, 1)
        d = rw.decode(body)
        self.assertEqual(d.labels(0), [("__name__", "m"), ("job", "a")])
        self.assertEqual(list(d.ts), [1, 6])
        self.assertEqual(list(d.vals), [1.0, 2.0])
        self.assertEqual((list(d.exemplar_ts), list(d.exemplar_vals)), ([7], [9.0]))
        self.assertEqual(decode_labels(d.exemplar_key(0)), [("trace_id", "t")])
        self.assertEqual((d.source, d.skip_label_validation), (1, True))
        self.assertEqual(d.series_flags[0], rw.LABELS_NOT_SORTED)

    def test_missing_fields_default_to_zero(self):
        """A sample or label with absent fields decodes as zero / empty, as proto3 defines."""
        body = f_bytes(1, f_bytes(1, label_msg(b"__name__", b"m")) + f_bytes(2, b"") + f_bytes(1, b""))
        d = rw.decode(body)
        self.assertEqual((list(d.ts), list(d.vals)), ([0], [0.0]))
        self.assertEqual(d.labels(0), [("__name__", "m")])
        self.assertTrue(d.series_flags[0] & rw.EMPTY_LABEL_VALUE)

    def test_histograms_are_counted_per_series(self):
        """Native histograms are not decoded but counted per series so they can be refused by name."""
        ts = types_pb2.TimeSeries()
        ts.labels.add(name="__name__", value="h")
        for _ in range(3):
            ts.histograms.add(count_int=1, schema=3).positive_deltas.extend([1, -1, 2])
        body = f_bytes(1, ts.SerializeToString()) + f_bytes(1, f_bytes(1, label_msg(b"__name__", b"s")))
        d = rw.decode(body)
        self.assertEqual(list(d.histogram_counts), [3, 0])
        self.assertEqual(d.n_histograms, 3)

    def test_metadata(self):
        """Metadata entries come back as (type, family name, help, unit), including unknown enum values."""
        body = rw.encode_write_request([], metadata=[(1, "up", "Whether up", ""), (7, "s", "", "bytes"),
                                                     (-1, "neg", "h", "u"), (9, "", "", "")])
        d = rw.decode(body)
        self.assertEqual(d.metadata, [(1, "up", "Whether up", ""), (7, "s", "", "bytes"),
                                      (-1, "neg", "h", "u"), (9, "", "", "")])
        self.assertEqual(rw.METRIC_TYPES[7], "stateset")

    def test_limits_must_not_be_negative(self):
        """Negative limits are refused with ValueError."""
        with self.assertRaises(ValueError):
            rw.decode(b"", max_label_names_per_series=-1)


class EncoderTests(unittest.TestCase):

    @settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(st.tuples(label_pairs, samples, exemplars), max_size=4), metadata_items,
           st.integers(0, 2), st.booleans())
    def test_bytes_equal_protobuf_runtime(self, series, metadata, source, skip):
        """encode_write_request emits exactly the bytes the protobuf runtime serializes for the same request."""
        msg = remote_pb2.WriteRequest(source=source, skip_label_validation=skip)
        for labels, pts, exs in series:
            ts = msg.timeseries.add()
            for n, v in labels:
                ts.labels.add(name=n, value=v)
            for t, v in pts:
                ts.samples.add(timestamp=t, value=v)
            for labs, t, v in exs:
                e = ts.exemplars.add(timestamp=t, value=v)
                for n, lv in labs:
                    e.labels.add(name=n, value=lv)
        for mtype, name, help_, unit in metadata:
            msg.metadata.add(type=mtype, metric_family_name=name, help=help_, unit=unit)
        got = rw.encode_write_request(series, metadata=metadata, source=source, skip_label_validation=skip)
        self.assertEqual(got, msg.SerializeToString())

    def test_histogram_bodies_are_embedded(self):
        """Pre-encoded histogram bodies are emitted as TimeSeries.histograms, empty ones included."""
        h = types_pb2.Histogram(count_int=5, schema=2)
        body = rw.encode_write_request([([("__name__", "h")], [], [], [h.SerializeToString(), b""])])
        msg = remote_pb2.WriteRequest.FromString(body)
        self.assertEqual(list(msg.timeseries[0].histograms), [h, types_pb2.Histogram()])


class ValidationTests(unittest.TestCase):

    def flags(self, labels, **limits):
        d = rw.decode(rw.encode_write_request([(labels, [(1, 1.0)])]), **limits)
        return d.series_flags[0], d.series_bad_label[0], d

    def test_valid_series_has_no_flags(self):
        """A sorted, valid label set gets no flags and no offending label."""
        self.assertEqual(self.flags([("__name__", "up"), ("__x__", "1"), ("job", "a:b")])[:2], (0, -1))

    def test_metric_name_missing_or_empty(self):
        """A series without __name__, or with an empty one, is flagged as having no metric name."""
        self.assertEqual(self.flags([("job", "a")])[:2], (rw.NO_METRIC_NAME, -1))
        self.assertEqual(self.flags([("__name__", ""), ("job", "a")])[:2],
                         (rw.NO_METRIC_NAME | rw.EMPTY_LABEL_VALUE, -1))

    def test_invalid_metric_name_points_at_name_label(self):
        """An invalid metric name is flagged and its label index in the key is reported."""
        f, bad, d = self.flags([("a", "1"), ("__name__", "1abc")])
        self.assertEqual((f, bad), (rw.INVALID_METRIC_NAME | rw.LABELS_NOT_SORTED, 0))
        self.assertEqual(d.labels(0)[bad], ("__name__", "1abc"))
        self.assertEqual(self.flags([("__name__", "a:b_c")])[:2], (0, -1))

    def test_invalid_label_names(self):
        """Label names outside [a-zA-Z_][a-zA-Z0-9_]* are flagged with the first offender's index."""
        for name in ["a-b", "0a", "é", "a:b", "a b"]:
            f, bad, d = self.flags([("__name__", "m"), ("zz", "1"), (name, "v")])
            self.assertTrue(f & rw.INVALID_LABEL_NAME, name)
            self.assertEqual(d.labels(0)[bad][0], name)
        f, bad, d = self.flags([("", "v"), ("__name__", "m")])
        self.assertEqual((f & rw.INVALID_LABEL_NAME, bad), (rw.INVALID_LABEL_NAME, 0))

    def test_duplicate_names_keep_first(self):
        """A repeated label name is flagged; the key keeps the first value and names the duplicate."""
        f, bad, d = self.flags([("__name__", "m"), ("a", "1"), ("a", "2")])
        self.assertEqual((f, bad), (rw.DUPLICATE_LABEL_NAME, 1))
        self.assertEqual(d.labels(0), [("__name__", "m"), ("a", "1")])
        f, bad, d = self.flags([("a", "2"), ("__name__", "m"), ("a", "1")])
        self.assertEqual(d.labels(0), [("__name__", "m"), ("a", "2")])
        self.assertTrue(f & rw.DUPLICATE_LABEL_NAME and f & rw.LABELS_NOT_SORTED)

    def test_empty_value_duplicate_is_not_a_duplicate(self):
        """An empty-valued label is dropped before duplicate detection, as Prometheus drops it."""
        f, _, d = self.flags([("__name__", "m"), ("a", ""), ("a", "1")])
        self.assertEqual(f, rw.EMPTY_LABEL_VALUE)
        self.assertEqual(d.labels(0), [("__name__", "m"), ("a", "1")])

    def test_unsorted_labels_are_sorted_in_key(self):
        """Unsorted input is flagged and the key is sorted bytewise by name."""
        labels = [("z", "1"), ("__name__", "m"), ("B", "2"), ("a", "3")] + [("l%02d" % i, "v") for i in range(60, 0, -1)]
        f, bad, d = self.flags(labels, max_label_names_per_series=0)
        self.assertEqual((f, bad), (rw.LABELS_NOT_SORTED, -1))
        self.assertEqual(d.labels(0), sorted(labels))

    def test_length_limits(self):
        """Names and values longer than their byte limits are flagged; 0 disables a limit."""
        self.assertEqual(self.flags([("__name__", "m"), ("n" * 1024, "v" * 2048)])[0], 0)
        f, bad, _ = self.flags([("__name__", "m"), ("n" * 1025, "v")])
        self.assertEqual((f, bad), (rw.LABEL_NAME_TOO_LONG, 1))
        f, bad, _ = self.flags([("__name__", "m"), ("n", "v" * 2049)])
        self.assertEqual((f, bad), (rw.LABEL_VALUE_TOO_LONG, 1))
        self.assertEqual(self.flags([("__name__", "m"), ("n", "v" * 5)], max_label_value_length=4)[0],
                         rw.LABEL_VALUE_TOO_LONG)
        self.assertEqual(self.flags([("__name__", "m" * 9999)], max_label_value_length=0)[0], 0)

    def test_label_count_limit(self):
        """More labels than max_label_names_per_series (counting __name__) is flagged."""
        labels = [("__name__", "m")] + [("l%02d" % i, "v") for i in range(29)]
        self.assertEqual(self.flags(labels)[0], 0)
        self.assertEqual(self.flags(labels + [("zz", "v")])[:2], (rw.TOO_MANY_LABELS, -1))
        self.assertEqual(self.flags(labels + [("zz", "")])[0], rw.EMPTY_LABEL_VALUE)
        self.assertEqual(self.flags(labels + [("zz", "v")], max_label_names_per_series=0)[0], 0)

    def test_invalid_utf8(self):
        """Names or values that are not valid UTF-8 (overlong, surrogate, truncated, > U+10FFFF) are flagged."""
        for bad_bytes in [b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"ab\xe2\x82", b"\xf4\x90\x80\x80", b"\x80abcdefgh"]:
            f, bad, _ = self.flags([("__name__", "m"), ("v", bad_bytes)])
            self.assertEqual((f, bad), (rw.INVALID_UTF8, 1), bad_bytes)
            f, bad, _ = self.flags([("__name__", "m"), (b"n" + bad_bytes, "v")])
            self.assertEqual((f, bad), (rw.INVALID_UTF8 | rw.INVALID_LABEL_NAME, 1), bad_bytes)
        self.assertEqual(self.flags([("__name__", "m"), ("v", "ä€𝄞 long enough text ✓")])[0], 0)

    @settings(max_examples=500)
    @given(st.lists(st.tuples(st.one_of(st.binary(max_size=20), st.sampled_from([b"__name__", b"a", b"_b1"])),
                              st.one_of(st.binary(max_size=20), st.sampled_from([b"", b"up", b"a:b"]))),
                    max_size=12),
           st.integers(0, 12), st.integers(0, 12), st.integers(0, 6))
    def test_flags_match_model(self, labels, max_name, max_value, max_names):
        """Flags, offending label index and key agree with a direct model of the rules for arbitrary bytes."""
        d = rw.decode(rw.encode_write_request([(labels, [])]), max_label_name_length=max_name,
                      max_label_value_length=max_value, max_label_names_per_series=max_names)
        self.assertEqual((d.series_flags[0], d.series_bad_label[0]),
                         ref_flags(labels, max_name, max_value, max_names))
        self.assertEqual(d.key(0), ref_key(labels))

    @settings(max_examples=300)
    @given(st.lists(st.lists(st.tuples(st.sampled_from([b"__name__", b"a", b"b-", b"", b"_c", b"d" * 9, b"\xff"]),
                                       st.sampled_from([b"x", b"", b"1m", b"\xc0\x80"])), max_size=6),
                    max_size=8))
    def test_flags_match_model_across_series(self, series):
        """Each series of a multi-series request is validated on its own, whatever its neighbours hold."""
        d = rw.decode(rw.encode_write_request([(labels, []) for labels in series]))
        self.assertEqual([(d.series_flags[i], d.series_bad_label[i], d.key(i)) for i in range(d.n_series)],
                         [ref_flags(labels) + (ref_key(labels),) for labels in series])

    def test_flag_names(self):
        """flag_names lists readable names of a series' bits."""
        d = rw.decode(rw.encode_write_request([([("job", "a"), ("a", "1"), ("b", "")], [])]))
        self.assertEqual(sorted(d.flag_names(0)), ["empty label value dropped", "labels not sorted",
                                                   "no metric name"])


class MalformedTests(unittest.TestCase):

    def assertMalformed(self, body, fragment=None):
        with self.assertRaises(RemoteWriteDecodeError) as cm:
            rw.decode(body)
        if fragment:
            self.assertIn(fragment, str(cm.exception))
        self.assertIsInstance(cm.exception, ValueError)
        self.assertTrue(0 <= cm.exception.offset <= len(body))
        return cm.exception

    def test_truncated_at_every_offset(self):
        """Cutting a request anywhere but between top-level fields is an error, never a crash."""
        body = rw.encode_write_request(
            [([("__name__", "up"), ("job", "j")], [(1000, 1.0), (2000, 2.0)], [([("t", "x")], 1500, 3.0)], [b"\x08\x01"])],
            metadata=[(1, "up", "help", "unit")], source=2, skip_label_validation=True)
        boundaries, p = {0}, 0
        msg = remote_pb2.WriteRequest.FromString(body)
        for field in [f_bytes(1, ts.SerializeToString()) for ts in msg.timeseries] + [f_varint(2, 2)] + \
                [f_bytes(3, m.SerializeToString()) for m in msg.metadata] + [f_varint(1000, 1)]:
            p += len(field)
            boundaries.add(p)
        self.assertEqual(p, len(body))
        for k in range(len(body) + 1):
            if k in boundaries:
                rw.decode(body[:k])
            else:
                self.assertMalformed(body[:k])

    def test_bad_varints(self):
        """Varints longer than 10 bytes or cut short are refused."""
        self.assertMalformed(tag(2, 0) + b"\xff" * 10 + b"\x01", "varint longer than 10 bytes")
        self.assertMalformed(tag(2, 0) + b"\xff\xff", "varint runs past")
        self.assertMalformed(b"\x80", "varint runs past")
        rw.decode(tag(2, 0) + b"\xff" * 9 + b"\x7f")     # 10 bytes, high bits dropped: accepted

    def test_length_overflow(self):
        """A length prefix beyond the enclosing message (including 2^64-1) is refused."""
        self.assertMalformed(tag(1, 2) + uvarint((1 << 64) - 1) + b"abc", "length-delimited")
        self.assertMalformed(tag(1, 2) + uvarint(4) + b"abc", "length-delimited")
        # A label name longer than its Label message, though the buffer has bytes to spare.
        series = f_bytes(1, tag(1, 2) + uvarint(50) + b"x")
        self.assertMalformed(f_bytes(1, series) + f_bytes(3, b"x" * 60), "in Label")

    def test_wrong_wire_types(self):
        """A known field sent with a wire type its type never uses is refused, naming the message."""
        self.assertMalformed(f_varint(1, 5), "wrong wire type for a known field in WriteRequest")
        self.assertMalformed(f_bytes(1, f_varint(1, 5)), "in TimeSeries")
        self.assertMalformed(f_bytes(1, f_bytes(1, f_varint(1, 5))), "in Label")
        self.assertMalformed(f_bytes(1, f_bytes(2, f_varint(1, 5))), "in Sample")
        self.assertMalformed(f_bytes(1, f_bytes(2, f_bytes(2, b"x"))), "in Sample")
        self.assertMalformed(f_bytes(1, f_bytes(3, f_varint(2, 1))), "in Exemplar")
        self.assertMalformed(f_bytes(3, f_bytes(1, b"")), "in MetricMetadata")
        self.assertMalformed(f_bytes(1000, b""), "WriteRequest")

    def test_invalid_wire_types_and_field_numbers(self):
        """Wire types 6 and 7 and field number 0 are refused at every level."""
        for wt in (6, 7):
            self.assertMalformed(tag(9, wt) + b"\x00" * 8, "invalid wire type")
            self.assertMalformed(f_bytes(1, tag(9, wt)), "invalid wire type in TimeSeries")
        self.assertMalformed(b"\x02\x00", "invalid field number")
        self.assertMalformed(uvarint(1 << 35), "invalid field number")

    def test_unknown_fields_of_every_wire_type_are_skipped(self):
        """Unknown varint, fixed64, bytes, fixed32 and (nested) group fields are skipped at every level."""
        unk = (f_varint(77, 1 << 62) + tag(78, 1) + b"\x00" * 8 + f_bytes(79, b"zz") + f_fixed32(80, b"abcd")
               + f_group(81, f_varint(1, 1) + f_group(2, f_bytes(3, b"q"))))
        label = f_bytes(1, unk + label_msg(b"__name__", b"m") + unk)
        sample = f_bytes(2, unk + sample_msg(5, 1.0) + unk)
        ex = f_bytes(3, unk + f_bytes(1, unk + label_msg(b"a", b"b")) + f_double(2, 2.0) + unk)
        meta = f_bytes(3, unk + f_varint(1, 2) + f_bytes(2, b"m") + unk)
        body = unk + f_bytes(1, unk + label + sample + ex + unk) + unk + meta + unk
        d = rw.decode(body)
        self.assertEqual((d.labels(0), list(d.ts), list(d.exemplar_vals), d.metadata),
                         ([("__name__", "m")], [5], [2.0], [(2, "m", "", "")]))
        self.assertEqual(len(remote_pb2.WriteRequest.FromString(body).timeseries), 1)

    def test_bad_groups(self):
        """Unterminated, mismatched, stray and too deeply nested groups are refused."""
        self.assertMalformed(tag(9, 3) + f_varint(1, 1), "group")
        self.assertMalformed(tag(9, 3) + tag(8, 4), "group")
        self.assertMalformed(tag(9, 4), "group")
        self.assertMalformed(f_bytes(1, tag(9, 4)), "group")
        deep = b""
        for i in range(100):
            deep = f_group(9, deep)
        self.assertMalformed(deep, "nested too deeply")
        shallow = b""
        for i in range(50):
            shallow = f_group(9, shallow)
        rw.decode(shallow)

    @settings(max_examples=1000)
    @given(st.binary(max_size=300))
    def test_random_bytes_never_crash(self, body):
        """Arbitrary bytes either decode to self-consistent columns or raise RemoteWriteDecodeError."""
        try:
            d = rw.decode(body)
        except RemoteWriteDecodeError:
            return
        actual(d)
        for i in range(d.n_series):
            decode_labels(d.key(i))

    @settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
    @given(write_requests(with_unknown=False), st.lists(
        st.tuples(st.sampled_from(["flip", "insert", "delete", "set"]), st.integers(0, 1 << 16),
                  st.integers(0, 255)), min_size=1, max_size=4))
    def test_mutated_requests_never_crash(self, case, mutations):
        """Mutated valid requests decode consistently or raise; when upb also accepts them the columns still agree."""
        body = bytearray(case[0])
        assume(body)
        for op, pos, byte in mutations:
            pos %= len(body) + (op == "insert")
            if op == "flip" and pos < len(body):
                body[pos] ^= 1 << (byte % 8)
            elif op == "insert":
                body.insert(pos, byte)
            elif op == "delete" and pos < len(body):
                del body[pos]
            elif pos < len(body):
                body[pos] = byte
        body = bytes(body)
        try:
            d = rw.decode(body)
        except RemoteWriteDecodeError:
            return
        got = actual(d)
        try:
            msg = remote_pb2.WriteRequest.FromString(body)
        except Exception:     # e.g. invalid UTF-8, which upb refuses and urdar flags per series
            return
        self.assertEqual(got, expected_from_pb(msg))


if __name__ == "__main__":
    unittest.main()


class DropLabelTests(unittest.TestCase):
    def test_drop_label_removed_before_key_hash_and_validation(self):
        """drop_label (the HA tracker's replica label) leaves every key, hash and label count
        as if the series had been sent without it, and reports series 0's value."""
        data = rw.encode_write_request([
            ([("__name__", "up"), ("cluster", "c"), ("__replica__", "r1"), ("a", "b")], [(1, 1.0)]),
            ([("__replica__", "r2"), ("__name__", "x")], [(2, 2.0)]),
            ([("__name__", "y")], [(3, 3.0)])])
        plain = rw.encode_write_request([
            ([("__name__", "up"), ("cluster", "c"), ("a", "b")], [(1, 1.0)]),
            ([("__name__", "x")], [(2, 2.0)]), ([("__name__", "y")], [(3, 3.0)])])
        got = rw.decode(data, max_label_names_per_series=3, drop_label=b"__replica__")
        want = rw.decode(plain, max_label_names_per_series=3)
        self.assertEqual(got.keys, want.keys)
        self.assertEqual(list(got.key_hashes), list(want.key_hashes))
        self.assertEqual([f & rw.SERIES_ERRORS for f in got.series_flags],
                         [f & rw.SERIES_ERRORS for f in want.series_flags])
        self.assertEqual((got.dropped_labels, got.first_dropped_value), (2, b"r1"))
        kept = rw.decode(data)
        self.assertEqual((kept.dropped_labels, kept.first_dropped_value), (0, None))
        self.assertIn(("__replica__", "r1"), kept.labels(0))

    def test_drop_label_absent_from_first_series(self):
        """first_dropped_value is None when only later series carry the label."""
        data = rw.encode_write_request([([("__name__", "up")], [(1, 1.0)]),
                                        ([("__name__", "x"), ("__replica__", "r")], [(2, 2.0)])])
        got = rw.decode(data, drop_label=b"__replica__")
        self.assertEqual((got.dropped_labels, got.first_dropped_value), (1, None))
        self.assertEqual(got.labels(1), [("__name__", "x")])
