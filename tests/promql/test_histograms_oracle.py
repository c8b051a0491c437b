"""Native histogram queries against a real Prometheus (Debian's 2.42 with
--enable-feature=native-histograms) as the oracle.

The same integer native histograms are remote-written to Prometheus (a WriteRequest with
histograms, encoded here from the published prompb fields) and loaded into urdar's evaluator
(the test head store); histogram_count, histogram_sum, histogram_quantile, rate, increase and
sum then agree, histograms compared bucket by bucket as the API writes them. Where 2.42's
semantics differ from 3.x the data avoids the difference: sample times are off the evaluation
grid (2.x windows are left-closed, 3.x left-open), no rate window reaches back to a series'
first sample (2.x extrapolates towards the zero point differently), and the quantiles asked
land on bucket boundaries (2.42 interpolates linearly inside exponential buckets, 3.x on a
log scale). Not compared: `histogram * scalar` (2.42 hands the histogram back unscaled; 3.x
scales it, as urdar does)."""
import json
import math
import struct
import tempfile
import time
import unittest
import urllib.parse

import cramjam

from tests.support.headstore import HeadStore
from tests.support.services import PROMETHEUS, Prometheus, http
from urdar.engine.histogram import Histogram
from urdar.handlers import render as R
from urdar.promql.engine import Engine


def _varint(n):
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _zigzag(n):
    return (n << 1) ^ (n >> 63)


def _key(field, wire):
    return _varint(field << 3 | wire)


def _bytes(field, data):
    return _key(field, 2) + _varint(len(data)) + data


def _span(offset, length):
    return _key(1, 0) + _varint(_zigzag(offset)) + _key(2, 0) + _varint(length)


def _histogram_pb(t_ms, h):
    """prompb.Histogram of an integer histogram (count_int, sum, schema, zero bucket,
    positive spans and deltas, reset hint, timestamp)."""
    out = _key(1, 0) + _varint(h.count)
    out += _key(3, 1) + struct.pack("<d", h.sum)
    out += _key(4, 0) + _varint(_zigzag(h.schema))
    out += _key(5, 1) + struct.pack("<d", h.zero_threshold)
    out += _key(6, 0) + _varint(h.zero_count)
    for off, ln in h.positive_spans:
        out += _bytes(11, _span(off, ln))
    if h.positive_buckets:
        out += _bytes(12, b"".join(_varint(_zigzag(d)) for d in h.positive_buckets))
    out += _key(14, 0) + _varint(h.counter_reset_hint)
    out += _key(15, 0) + _varint(t_ms)
    return out


def write_request(series):
    """A remote-write 1.0 WriteRequest: series = [(labels dict, [(t ms, Histogram)])]."""
    body = b""
    for labels, points in series:
        ts = b"".join(_bytes(1, _bytes(1, n.encode()) + _bytes(2, v.encode()))
                      for n, v in sorted(labels.items()))
        ts += b"".join(_bytes(4, _histogram_pb(t, h)) for t, h in points)
        body += _bytes(1, ts)
    return body


def make_data(now_ms):
    """Two counter histograms, one sample every 30 s for 40 min, 13 s off the minute grid; the
    second resets half way."""
    start = now_ms - 40 * 60_000 + 13_000
    a, b = [], []
    for i in range(80):
        t = start + i * 30_000
        # deltas: buckets 1..3 of schema 0 grow by 1, 2 and 1 per sample
        a.append((t, Histogram(schema=0, count=4 * (i + 1), sum=10.5 * (i + 1),
                               zero_threshold=0.001, zero_count=0,
                               positive_spans=[(1, 3)],
                               positive_buckets=[i + 1, i + 1, -(i + 1)])))
        k = i if i < 40 else i - 40
        b.append((t, Histogram(schema=1, count=6 * (k + 1), sum=3.0 * (k + 1),
                               zero_threshold=0.001, zero_count=2 * (k + 1),
                               positive_spans=[(0, 2)],
                               positive_buckets=[2 * (k + 1), 0])))
    return [({"__name__": "req_seconds", "job": "a"}, a),
            ({"__name__": "req_seconds", "job": "b"}, b)]


def _close(x, y):
    x, y = float(x), float(y)
    if math.isnan(x) or math.isnan(y):
        return math.isnan(x) and math.isnan(y)
    return x == y or abs(x - y) <= 1e-9 * max(abs(x), abs(y))


@unittest.skipUnless(PROMETHEUS and __import__("os").path.exists(PROMETHEUS),
                     "needs Debian's prometheus")
class PrometheusOracleTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="urdar-nh-oracle-")
        cls.prom = Prometheus(cls.tmp.name, "global:\n  scrape_interval: 1h\n",
                              "--web.enable-remote-write-receiver",
                              "--enable-feature=native-histograms").wait_ready()
        cls.now_ms = (int(time.time()) // 60) * 60_000
        cls.data = make_data(cls.now_ms)
        body = cramjam.snappy.compress_raw(write_request(cls.data))
        status, resp = http("POST", cls.prom.base + "/api/v1/write", bytes(body), {
            "Content-Encoding": "snappy", "Content-Type": "application/x-protobuf",
            "X-Prometheus-Remote-Write-Version": "0.1.0"})
        if status // 100 != 2:
            raise AssertionError("prometheus refused the write: %s %s" % (status, resp))
        cls.store = HeadStore()
        for labels, points in cls.data:
            cls.store.append_histograms(labels, points)
        cls.engine = Engine(cls.store)

    @classmethod
    def tearDownClass(cls):
        cls.store.close()
        cls.prom.stop()
        cls.tmp.cleanup()

    def ours(self, query, t_ms):
        return json.loads(R.render_result(self.engine.instant(query, t_ms)))

    def theirs(self, query, t_ms):
        params = urllib.parse.urlencode({"query": query, "time": "%.3f" % (t_ms / 1000)})
        status, body = http("GET", self.prom.base + "/api/v1/query?" + params)
        doc = json.loads(body)
        self.assertEqual(status, 200, body)
        return doc["data"]

    def assert_same(self, query, t_ms):
        ours, theirs = self.ours(query, t_ms), self.theirs(query, t_ms)
        self.assertEqual(ours["resultType"], theirs["resultType"], query)
        key = lambda s: json.dumps(s["metric"], sort_keys=True)  # noqa: E731
        a = sorted(ours["result"], key=key)
        b = sorted(theirs["result"], key=key)
        self.assertEqual([x["metric"] for x in a], [x["metric"] for x in b], query)
        self.assertTrue(b, "%s: prometheus has no result" % query)
        for x, y in zip(a, b):
            if "value" in y:
                self.assertIn("value", x, query)
                self.assertTrue(_close(x["value"][1], y["value"][1]),
                                "%s %s: urdar %s, prometheus %s" % (query, y["metric"],
                                                                     x["value"], y["value"]))
                continue
            hx, hy = x["histogram"][1], y["histogram"][1]
            self.assertTrue(_close(hx["count"], hy["count"]) and _close(hx["sum"], hy["sum"]),
                            "%s: urdar %s, prometheus %s" % (query, hx, hy))
            bx, by = hx.get("buckets", []), hy.get("buckets", [])
            self.assertEqual([(r, lo, up) for r, lo, up, _ in bx],
                             [(r, lo, up) for r, lo, up, _ in by], query)
            for p, q in zip(bx, by):
                self.assertTrue(_close(p[3], q[3]), "%s: urdar %s, prometheus %s"
                                % (query, bx, by))

    def test_selector_and_statistics(self):
        t = self.now_ms - 5 * 60_000
        for q in ("req_seconds", "histogram_count(req_seconds)", "histogram_sum(req_seconds)",
                  "sum(req_seconds)", "sum by (job) (req_seconds)",
                  "histogram_count(sum(req_seconds))"):
            self.assert_same(q, t)

    def test_quantile_on_bucket_boundaries(self):
        # job a: buckets (1,2]:n (2,4]:2n (4,8]:n -> rank 0.25 and 0.75 end buckets exactly
        t = self.now_ms - 5 * 60_000
        for q in ("histogram_quantile(0.25, req_seconds{job=\"a\"})",
                  "histogram_quantile(0.75, req_seconds{job=\"a\"})",
                  "histogram_quantile(1, req_seconds)"):
            self.assert_same(q, t)

    def test_rate_and_increase_across_a_reset(self):
        t = self.now_ms - 2 * 60_000
        for q in ("rate(req_seconds[5m])", "increase(req_seconds[10m])",
                  "histogram_count(rate(req_seconds[5m]))", "sum(rate(req_seconds[5m]))"):
            self.assert_same(q, t)
        # job b resets 20 minutes after the start: a window holding the reset
        t_reset = self.now_ms - 40 * 60_000 + 13_000 + 40 * 30_000 + 60_000
        self.assert_same("increase(req_seconds{job=\"b\"}[4m])", t_reset)


if __name__ == "__main__":
    unittest.main()
