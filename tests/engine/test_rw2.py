"""Remote write 2.0 (engine/rw2.pyx): Requests written with the protobuf runtime from
urdar/proto/write_v2.proto become the remote write 1.0 WriteRequest of the same data, compared
message for message with one written independently from remote.proto; malformed requests and bad
symbol refs raise."""
import importlib
import math
import os
import random
import sys
import tempfile
import unittest

import urdar
from tests.engine.test_remotewrite import remote_pb2, types_pb2
from urdar.engine import remotewrite as rw
from urdar.engine.rw2 import RW2DecodeError, RW2TooLarge, to_v1

PROTO_DIR = os.path.join(os.path.dirname(urdar.__file__), "proto")


def _compile_v2():
    from grpc_tools import protoc
    out = tempfile.mkdtemp(prefix="urdar-rw2proto-")
    rc = protoc.main(["protoc", "-I" + PROTO_DIR, "--python_out=" + out,
                      os.path.join(PROTO_DIR, "write_v2.proto")])
    if rc != 0:
        raise RuntimeError("protoc failed on write_v2.proto (%d)" % rc)
    sys.path.insert(0, out)
    try:
        return importlib.import_module("write_v2_pb2")
    finally:
        sys.path.remove(out)


v2 = _compile_v2()


class Symbols:
    def __init__(self):
        self.table = [""]
        self.index = {"": 0}

    def ref(self, s):
        if s not in self.index:
            self.index[s] = len(self.table)
            self.table.append(s)
        return self.index[s]

    def refs(self, labels):
        return [r for n, v in labels for r in (self.ref(n), self.ref(v))]


def v2_histogram(rng, t):
    h = v2.Histogram(sum=rng.random() * 10, schema=rng.randint(-4, 8), zero_threshold=1e-128,
                     timestamp=t, reset_hint=rng.randint(0, 3))
    if rng.random() < 0.5:
        h.count_int = rng.randint(0, 1000)
        h.zero_count_int = rng.randint(0, 5)
        h.positive_deltas.extend([rng.randint(-5, 5) for _ in range(3)])
    else:
        h.count_float = rng.random() * 100
        h.zero_count_float = rng.random()
        h.positive_counts.extend([rng.random() for _ in range(3)])
    h.positive_spans.add(offset=rng.randint(-3, 3), length=3)
    return h


def pair(seed, n_series=20):
    """(v2 Request, the v1 WriteRequest of the same data) with floats, histograms, exemplars,
    metadata and created timestamps."""
    rng = random.Random(seed)
    sym = Symbols()
    req2 = v2.Request()
    req1 = remote_pb2.WriteRequest()
    for i in range(n_series):
        labels = [("__name__", "m%d" % (i % 4)), ("i", str(i)), ("job", "j%d" % rng.randint(0, 2))]
        ts2 = req2.timeseries.add(labels_refs=sym.refs(labels))
        ts1 = req1.timeseries.add()
        for n, v in labels:
            ts1.labels.add(name=n, value=v)
        for k in range(rng.randint(0, 5)):
            v = rng.choice([rng.random(), -0.0, math.inf, float(k)])
            ts2.samples.add(value=v, timestamp=1000 * k - 5)
            ts1.samples.add(value=v, timestamp=1000 * k - 5)
        for k in range(rng.randint(0, 3)):
            h = v2_histogram(rng, 7000 + k)
            ts2.histograms.append(h)
            ts1.histograms.append(types_pb2.Histogram.FromString(h.SerializeToString()))
        for k in range(rng.randint(0, 2)):
            el = [("trace_id", "%x" % rng.getrandbits(64))] if rng.random() < 0.8 else []
            ts2.exemplars.add(labels_refs=sym.refs(el), value=k + 0.5, timestamp=-1 if k else 99)
            e1 = ts1.exemplars.add(value=k + 0.5, timestamp=-1 if k else 99)
            for n, v in el:
                e1.labels.add(name=n, value=v)
        if rng.random() < 0.6:
            help_, unit = rng.choice(["", "some help"]), rng.choice(["", "seconds"])
            mtype = rng.randint(1, 7)
            ts2.metadata.type = mtype
            ts2.metadata.help_ref = sym.ref(help_)
            ts2.metadata.unit_ref = sym.ref(unit)
            req1.metadata.add(type=mtype, metric_family_name=labels[0][1], help=help_, unit=unit)
        if rng.random() < 0.3:
            ts2.created_timestamp = 500
    req2.symbols.extend(sym.table)
    return req2, req1


class RW2Tests(unittest.TestCase):
    def test_same_data_as_v1(self):
        for seed in range(30):
            req2, req1 = pair(seed)
            body, n_s, n_h, n_e, n_ct = to_v1(req2.SerializeToString())
            got = remote_pb2.WriteRequest.FromString(body)
            self.assertEqual(got, req1, seed)
            self.assertEqual((n_s, n_h, n_e),
                             (sum(len(t.samples) for t in req1.timeseries),
                              sum(len(t.histograms) for t in req1.timeseries),
                              sum(len(t.exemplars) for t in req1.timeseries)))
            self.assertEqual(n_ct, sum(1 for t in req2.timeseries if t.created_timestamp))
            # and the 1.0 decoder reads both the same
            a, b = rw.decode(body), rw.decode(req1.SerializeToString())
            self.assertEqual((a.keys, list(a.ts), [repr(v) for v in a.vals], a.metadata,
                              a.exemplar_keys, list(a.histogram_counts)),
                             (b.keys, list(b.ts), [repr(v) for v in b.vals], b.metadata,
                              b.exemplar_keys, list(b.histogram_counts)))

    def test_empty_request(self):
        self.assertEqual(to_v1(b"")[0], b"")

    def test_bad_refs_and_bytes(self):
        req = v2.Request(symbols=["", "__name__", "m"])
        req.timeseries.add(labels_refs=[1, 7]).samples.add(value=1, timestamp=1)
        with self.assertRaisesRegex(RW2DecodeError, "labels_refs 7 out of range"):
            to_v1(req.SerializeToString())
        req = v2.Request(symbols=["", "__name__", "m"])
        req.timeseries.add(labels_refs=[1, 2, 1])
        with self.assertRaisesRegex(RW2DecodeError, "odd number"):
            to_v1(req.SerializeToString())
        req = v2.Request(symbols=["", "__name__", "m"])
        ts = req.timeseries.add(labels_refs=[1, 2])
        ts.exemplars.add(labels_refs=[1, 9], value=1)
        with self.assertRaisesRegex(RW2DecodeError, "exemplar labels_refs 9"):
            to_v1(req.SerializeToString())
        req = v2.Request(symbols=["", "__name__", "m"])
        ts = req.timeseries.add(labels_refs=[1, 2])
        ts.metadata.help_ref = 5
        with self.assertRaisesRegex(RW2DecodeError, "metadata symbol ref 5"):
            to_v1(req.SerializeToString())
        good = pair(3)[0].SerializeToString()
        for cut in (1, 5, len(good) // 2, len(good) - 1):
            with self.assertRaises(RW2DecodeError):
                to_v1(good[:cut])

    def test_expansion_bounded(self):
        sym = Symbols()
        req = v2.Request()
        for i in range(200):
            req.timeseries.add(labels_refs=sym.refs([("__name__", "x" * 1000), ("i", str(i))]))
        req.symbols.extend(sym.table)
        body = req.SerializeToString()
        self.assertLess(len(body), 5000)
        self.assertGreater(len(to_v1(body)[0]), 200000)
        with self.assertRaises(RW2TooLarge):
            to_v1(body, 100000)


if __name__ == "__main__":
    unittest.main()
