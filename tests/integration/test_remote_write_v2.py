"""Remote write 2.0 over HTTP against `python -m urdar` on 127.0.0.1: the same data (floats,
native histograms, exemplars, metadata) sent by a 1.0 sender to one tenant and by a 2.0 sender
(bodies written with the protobuf runtime from urdar/proto/write_v2.proto) to another give the
same answers through the query API, exemplars, metadata and remote read; the 2.0 answer carries
the X-Prometheus-Remote-Write-*-Written headers; an unknown proto is a 415, bad symbol refs 400."""
import json
import signal
import tempfile
import time
import unittest
import urllib.error
import urllib.parse
import urllib.request

import cramjam

from tests.engine.test_rw2 import Symbols, v2
from tests.handlers.test_querier import _read_pb2
from tests.support.services import Urdar, http
from urdar.engine.prompbhist import decode_histogram

V1 = "application/x-protobuf;proto=prometheus.WriteRequest"
V2 = "application/x-protobuf;proto=io.prometheus.write.v2.Request"


def post(base, body, ctype, tenant):
    """(status, headers dict, body) of one push."""
    req = urllib.request.Request(base + "/api/v1/push", data=bytes(cramjam.snappy.compress_raw(body)),
                                 method="POST", headers={
                                     "Content-Type": ctype, "Content-Encoding": "snappy",
                                     "X-Scope-OrgID": tenant})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def data(now):
    """[(labels, [(t, v)], [v2.Histogram], [(exemplar labels, t, v)], metadata or None)]"""
    out = []
    for i in range(6):
        labels = [("__name__", "rw_total" if i < 3 else "rw_hist"), ("i", str(i)), ("job", "j")]
        floats = [(now + 15000 * k, float(i * 100 + k)) for k in range(10)] if i < 3 else []
        hists = []
        if i >= 3:
            for k in range(10):
                h = v2.Histogram(sum=1.5 * k, schema=i - 3, zero_threshold=1e-3, timestamp=now + 15000 * k)
                h.count_int = 3 * k + 1
                h.zero_count_int = 1
                h.positive_spans.add(offset=-1, length=2)
                h.positive_deltas.extend([k, k])
                if i == 5:      # a float histogram with custom buckets
                    h = v2.Histogram(sum=2.0 * k, schema=-53, timestamp=now + 15000 * k,
                                     custom_values=[0.5, 1.0], count_float=2.0 * k)
                    h.positive_spans.add(offset=0, length=2)
                    h.positive_counts.extend([float(k), float(k)])
                hists.append(h)
        ex = [([("trace_id", "t%d" % i)], now + 15000 * 2, 42.0 + i)]
        md = (1, "total of things", "") if i == 0 else (3, "a histogram", "seconds") if i == 3 else None
        out.append((labels, floats, hists, ex, md))
    return out


def v1_body(rows):
    from tests.engine.test_remotewrite import remote_pb2, types_pb2
    req = remote_pb2.WriteRequest()
    for labels, floats, hists, ex, md in rows:
        ts = req.timeseries.add()
        for n, v in labels:
            ts.labels.add(name=n, value=v)
        for t, v in floats:
            ts.samples.add(value=v, timestamp=t)
        for h in hists:
            ts.histograms.append(types_pb2.Histogram.FromString(h.SerializeToString()))
        for el, t, v in ex:
            e = ts.exemplars.add(value=v, timestamp=t)
            for n, val in el:
                e.labels.add(name=n, value=val)
        if md:
            req.metadata.add(type=md[0], metric_family_name=dict(labels)["__name__"], help=md[1],
                             unit=md[2])
    return req.SerializeToString()


def v2_body(rows):
    sym = Symbols()
    req = v2.Request()
    for labels, floats, hists, ex, md in rows:
        ts = req.timeseries.add(labels_refs=sym.refs(labels))
        for t, v in floats:
            ts.samples.add(value=v, timestamp=t)
        ts.histograms.extend(hists)
        for el, t, v in ex:
            ts.exemplars.add(labels_refs=sym.refs(el), value=v, timestamp=t)
        if md:
            ts.metadata.type = md[0]
            ts.metadata.help_ref = sym.ref(md[1])
            ts.metadata.unit_ref = sym.ref(md[2])
    req.symbols.extend(sym.table)
    return req.SerializeToString()


class RemoteWriteV2Test(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="urdar-rw2-")
        self.addCleanup(self.tmp.cleanup)
        self.svc = Urdar(self.tmp.name, "-ingester.max-global-exemplars-per-user=1000")
        self.addCleanup(lambda: self.svc.alive() and self.svc.stop(10, signal.SIGKILL))
        self.svc.wait_ready(120)

    def get(self, path, tenant, **params):
        status, body = http("GET", self.svc.base + path + "?" + urllib.parse.urlencode(params),
                            headers={"X-Scope-OrgID": tenant}, timeout=30)
        self.assertEqual(status, 200, body)
        return json.loads(body)["data"]

    def remote_read(self, tenant, maxt):
        pb = _read_pb2()
        req = pb.ReadRequest()
        q = req.queries.add(start_timestamp_ms=0, end_timestamp_ms=maxt)
        q.matchers.add(type=2, name="__name__", value="rw_.*")
        status, body = http("POST", self.svc.base + "/prometheus/api/v1/read",
                            bytes(cramjam.snappy.compress_raw(req.SerializeToString())),
                            {"X-Scope-OrgID": tenant, "Content-Encoding": "snappy",
                             "Content-Type": "application/x-protobuf"}, timeout=30)
        self.assertEqual(status, 200, body)
        msg = pb.ReadResponse.FromString(bytes(cramjam.snappy.decompress_raw(body)))
        return sorted((tuple((l.name, l.value) for l in s.labels),
                       [(x.timestamp, x.value) for x in s.samples],
                       [decode_histogram(h.SerializeToString()) for h in s.histograms])
                      for s in msg.results[0].timeseries)

    def test_v1_and_v2_senders_agree(self):
        now = (int(time.time()) - 600) * 1000
        rows = data(now)
        status, headers, body = post(self.svc.base, v1_body(rows), V1, "one")
        self.assertEqual(status, 200, body)
        status, headers, body = post(self.svc.base, v2_body(rows), V2, "two")
        self.assertEqual(status, 200, body)
        self.assertEqual(headers.get("X-Prometheus-Remote-Write-Samples-Written"), "30")
        self.assertEqual(headers.get("X-Prometheus-Remote-Write-Histograms-Written"), "30")
        self.assertEqual(headers.get("X-Prometheus-Remote-Write-Exemplars-Written"), "6")
        answers = {}
        for tenant in ("one", "two"):
            answers[tenant] = (
                self.get("/prometheus/api/v1/query_range", tenant, query="rw_total",
                         start=now / 1000, end=now / 1000 + 150, step=15),
                self.get("/prometheus/api/v1/query_exemplars", tenant, query="{job=\"j\"}",
                         start=now / 1000 - 1, end=now / 1000 + 200),
                self.get("/prometheus/api/v1/metadata", tenant),
                self.get("/prometheus/api/v1/series", tenant, **{"match[]": "{job=\"j\"}"}),
                self.remote_read(tenant, now + 10 ** 6))
        one, two = answers["one"], answers["two"]
        self.assertEqual(len(one[0]["result"]), 3)
        self.assertEqual(len(one[1]), 6)
        self.assertEqual(sorted(one[2]), ["rw_hist", "rw_total"])
        self.assertEqual(sum(len(hs) for _, _, hs in one[4]), 30)
        self.assertEqual(one, two)

    def test_content_negotiation_and_bad_requests(self):
        now = (int(time.time()) - 600) * 1000
        body = v2_body(data(now)[:1])
        status, _, text = post(self.svc.base, body, "application/x-protobuf;proto=io.prometheus.write.v9.Request", "t")
        self.assertEqual(status, 415, text)
        self.assertIn(b"io.prometheus.write.v9.request", text.lower())
        status, headers, text = post(self.svc.base, body, V2, "t")
        self.assertEqual((status, headers.get("X-Prometheus-Remote-Write-Samples-Written")),
                         (200, "10"), text)
        req = v2.Request(symbols=["", "__name__", "m"])
        req.timeseries.add(labels_refs=[1, 7]).samples.add(value=1, timestamp=now)
        status, _, text = post(self.svc.base, req.SerializeToString(), V2, "t")
        self.assertEqual(status, 400, text)
        self.assertIn(b"labels_refs 7 out of range", text)
        status, _, text = post(self.svc.base, b"\x2a\x05\x0a", V2, "t")
        self.assertEqual(status, 400, text)
        # a duplicate sample: 400 with Mimir's id, and the headers say what was written
        req = v2.Request(symbols=["", "__name__", "rw_total", "i", "0", "job", "j"])
        ts = req.timeseries.add(labels_refs=[1, 2, 3, 4, 5, 6])
        ts.samples.add(value=-1.0, timestamp=now + 15000 * 9)
        ts.samples.add(value=7.0, timestamp=now + 15000 * 20)
        status, headers, text = post(self.svc.base, req.SerializeToString(), V2, "t")
        self.assertEqual(status, 400, text)
        self.assertIn(b"err-mimir-sample-duplicate-timestamp", text)
        self.assertEqual(headers.get("X-Prometheus-Remote-Write-Samples-Written"), "1")


if __name__ == "__main__":
    unittest.main()
