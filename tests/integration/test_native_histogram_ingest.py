"""Native histograms over remote write 1.0, end to end: `python -m urdar` started on
127.0.0.1, prompb.Histogram bodies pushed over HTTP (integer, float, custom buckets, gauge,
negative spans, reset hints), restarted (the head comes back from the WAL), then the tenant's
TSDB read back: every acknowledged histogram is there, exactly. Mimir's checks answer 400 with
its error ids, and the bucket limit reduces resolution by default."""
import json
import os
import signal
import tempfile
import time
import unittest
from urllib.parse import urlencode

import cramjam

from tests.support.services import Urdar, http
from urdar.engine.histogram import COUNTER_RESET, FloatHistogram, GAUGE_TYPE, Histogram
from urdar.engine.histogram import FIELDS as HIST_FIELDS
from urdar.engine.labels import labels_dict
from urdar.engine.matchers import Matcher
from urdar.engine.prompbhist import encode_histogram
from urdar.engine.remotewrite import encode_write_request
from urdar.engine.tsdb import TSDB

TENANT = "nh"


def push(svc, series, tenant=TENANT):
    """series: [(labels, [(t, v)], [(t, histogram)])]"""
    rows = [(labels, floats, (), [encode_histogram(t, h) for t, h in hs]) for labels, floats, hs in series]
    body = bytes(cramjam.snappy.compress_raw(encode_write_request(rows)))
    return http("POST", svc.base + "/api/v1/push", body,
                {"Content-Encoding": "snappy", "Content-Type": "application/x-protobuf",
                 "X-Prometheus-Remote-Write-Version": "0.1.0", "X-Scope-OrgID": tenant})


def ih(k, **kw):
    d = dict(schema=3, zero_threshold=2.0 ** -128, zero_count=k, count=8 * k, sum=0.5 * k,
             positive_spans=[(-2, 3), (4, 1)], positive_buckets=[k, 0, k, -k],
             negative_spans=[(1, 2)], negative_buckets=[k, 0])
    d.update(kw)
    return Histogram(**d)


def plain(h):
    f = h.to_float()
    return FloatHistogram(**{k: getattr(f, k) for k in HIST_FIELDS
                             if k != "counter_reset_hint"})


class NativeHistogramIngestTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="urdar-nh-")

    def start(self, *flags):
        svc = Urdar(self.tmp, *flags)
        self.addCleanup(lambda: svc.alive() and svc.stop(10, signal.SIGKILL))
        return svc.wait_ready(120)

    def test_push_restart_and_read_back(self):
        now = int(time.time() * 1000) - 20 * 60 * 1000
        int_samples = [(now + 15000 * k, ih(k)) for k in range(1, 40)]
        int_samples.append((now + 15000 * 40, ih(1, counter_reset_hint=COUNTER_RESET)))
        float_samples = [(now + 15000 * k, FloatHistogram(
            schema=-53, custom_values=[0.25, 1.0, 5.0], count=3.5 * k, sum=1.5 * k,
            positive_spans=[(0, 2), (1, 1)], positive_buckets=[k, 0.5 * k, 2.0 * k]))
            for k in range(1, 40)]
        gauge = [(now + 15000 * k, ih(k % 3, counter_reset_hint=GAUGE_TYPE)) for k in range(1, 40)]
        svc = self.start()
        for a in range(0, 40, 10):
            status, body = push(svc, [
                ([("__name__", "nh_int"), ("job", "x")], [], int_samples[a:a + 10]),
                ([("__name__", "nh_nhcb"), ("job", "x")], [], float_samples[a:a + 10]),
                # floats, then histograms in the same series (floats of a request go first)
                ([("__name__", "nh_gauge"), ("job", "x")],
                 [(now + j, 1.0) for j in range(5)] if a == 0 else [], gauge[a:a + 10]),
            ])
            self.assertEqual(status, 200, body)
        status, body = push(svc, [([("__name__", "nh_int"), ("job", "x")], [], int_samples[-1:])])
        self.assertEqual(status, 200, body)
        # the same timestamp with another histogram: Mimir's duplicate error
        status, body = push(svc, [([("__name__", "nh_int"), ("job", "x")], [],
                                   [(int_samples[-1][0], ih(9))])])
        self.assertEqual(status, 400, body)
        self.assertIn(b"err-mimir-sample-duplicate-timestamp", body)
        svc.proc.send_signal(signal.SIGKILL)   # no flush: the WAL is all there is
        svc.proc.wait()
        svc.stop()
        svc = self.start()
        status, body = push(svc, [([("__name__", "nh_int"), ("job", "x")], [],
                                   [(now + 15000 * 41, ih(2))])])
        self.assertEqual(status, 200, body)
        svc.stop()
        db = TSDB(os.path.join(self.tmp, "tsdb", TENANT))
        try:
            got = {labels_dict(item[0])["__name__"]: item
                   for item in db.select([Matcher("=~", "__name__", "nh_.*")])}
        finally:
            db.close()
        want_int = int_samples + [(now + 15000 * 41, ih(2))]
        self.assertEqual(list(got["nh_int"][4]), [t for t, _ in want_int])
        self.assertEqual([plain(h) for h in got["nh_int"][5]], [plain(h) for _, h in want_int])
        self.assertEqual([plain(h) for h in got["nh_nhcb"][5]], [plain(h) for _, h in float_samples])
        self.assertEqual(got["nh_nhcb"][5][0].custom_values, [0.25, 1.0, 5.0])
        self.assertEqual({h.counter_reset_hint for h in got["nh_gauge"][5]}, {GAUGE_TYPE})
        self.assertEqual(list(got["nh_gauge"][1]), [now + j for j in range(5)])

    def test_pushed_histograms_answer_promql_over_http(self):
        """What a Grafana user sees: histograms pushed over remote write, read back through the
        query API with histogram_count/sum, rate and the `histogram` JSON field, and an exemplar
        of the histogram series through query_exemplars."""
        now = (int(time.time()) - 20 * 60) * 1000
        samples = [(now + 15000 * k, ih(k)) for k in range(1, 21)]
        svc = self.start("-ingester.max-global-exemplars-per-user=100")
        status, body = push(svc, [([("__name__", "nh_q"), ("job", "x")], [], samples)])
        self.assertEqual(status, 200, body)
        # an exemplar of a histogram-only series (encode_write_request's exemplar slot)
        body = bytes(cramjam.snappy.compress_raw(encode_write_request([(
            [("__name__", "nh_q"), ("job", "x")], [], [([("trace_id", "abc")], now + 16000, 0.7)],
            [encode_histogram(now + 15000 * 21, ih(21))])])))
        status, text = http("POST", svc.base + "/api/v1/push", body,
                            {"Content-Encoding": "snappy", "Content-Type": "application/x-protobuf",
                             "X-Scope-OrgID": TENANT})
        self.assertEqual(status, 200, text)
        status, text = http("GET", svc.base + "/prometheus/api/v1/query_exemplars?" + urlencode(
            {"query": "nh_q", "start": now / 1000, "end": (now + 60000) / 1000}),
            headers={"X-Scope-OrgID": TENANT})
        self.assertEqual(json.loads(text)["data"], [{
            "seriesLabels": {"__name__": "nh_q", "job": "x"},
            "exemplars": [{"labels": {"trace_id": "abc"}, "value": "0.7",
                           "timestamp": (now + 16000) / 1000}]}])

        def query(expr, t_ms):
            status, body = http("GET", svc.base + "/prometheus/api/v1/query?" + urlencode(
                {"query": expr, "time": "%.3f" % (t_ms / 1000)}),
                headers={"X-Scope-OrgID": TENANT})
            self.assertEqual(status, 200, body)
            return json.loads(body)["data"]["result"]

        t10 = now + 15000 * 10
        self.assertEqual(float(query("histogram_count(nh_q)", t10)[0]["value"][1]), 80.0)
        self.assertEqual(float(query("histogram_sum(nh_q)", t10)[0]["value"][1]), 5.0)
        # count grows by 8 every 15 s: 8/15 per second over a window inside the samples
        rate = float(query("histogram_count(rate(nh_q[1m]))", t10)[0]["value"][1])
        self.assertAlmostEqual(rate, 8 / 15, places=9)
        [row] = query("nh_q", t10)
        self.assertNotIn("value", row)
        ts, h = row["histogram"]
        self.assertEqual((ts, h["count"], h["sum"]), (t10 / 1000, "80", "5"))
        self.assertEqual(sum(float(b[3]) for b in h["buckets"]) + 0, 80.0)
        # another tenant sees nothing of them
        status, body = http("GET", svc.base + "/prometheus/api/v1/query?" + urlencode(
            {"query": "nh_q", "time": "%.3f" % (t10 / 1000)}), headers={"X-Scope-OrgID": "other"})
        self.assertEqual(json.loads(body)["data"]["result"], [])

    def test_mimir_checks_and_bucket_limit(self):
        now = int(time.time() * 1000) - 60 * 1000
        svc = self.start("-validation.max-native-histogram-buckets=4")
        # 6 buckets over a limit of 4: resolution reduced (schema 3 -> 1) and stored
        status, body = push(svc, [([("__name__", "nh_big")], [], [(now, ih(2))])])
        self.assertEqual(status, 200, body)
        status, body = push(svc, [([("__name__", "nh_bad")], [], [(now, ih(1, schema=9))])])
        self.assertEqual(status, 400, body)
        self.assertIn(b"received a native histogram sample with an invalid schema: 9 "
                      b"(err-mimir-invalid-native-histogram-schema)", body)
        status, body = push(svc, [([("__name__", "nh_bad")], [], [(now, ih(1, positive_buckets=[1, 2]))])])
        self.assertEqual(status, 400, body)
        self.assertIn(b"err-mimir-native-histogram-spans-buckets-mismatch", body)
        status, body = push(svc, [([("__name__", "nh_bad")], [], [(now, ih(1, count=1))])])
        self.assertEqual(status, 400, body)
        self.assertIn(b"err-mimir-native-histogram-count-not-big-enough", body)
        # custom buckets cannot be reduced
        nhcb = Histogram(schema=-53, custom_values=[1, 2, 3, 4, 5], count=6, sum=1.0,
                         positive_spans=[(0, 6)], positive_buckets=[1, 0, 0, 0, 0, 0])
        status, body = push(svc, [([("__name__", "nh_bad")], [], [(now, nhcb)])])
        self.assertEqual(status, 400, body)
        self.assertIn(b"err-mimir-native-histogram-custom-buckets-not-reducible", body)
        svc.stop()
        db = TSDB(os.path.join(self.tmp, "tsdb", "nh"))
        try:
            items = db.select([Matcher("=~", "__name__", "nh_.*")])
        finally:
            db.close()
        self.assertEqual([labels_dict(i[0])["__name__"] for i in items], ["nh_big"])
        [h] = items[0][5]
        self.assertEqual(h.schema, 1)
        self.assertLess(len(h.positive_buckets) + len(h.negative_buckets), 4)
        self.assertEqual((h.count, h.zero_count, h.sum), (16.0, 2.0, 1.0))
        self.assertEqual(sum(h.positive_buckets) + sum(h.negative_buckets) + h.zero_count,
                         sum(ih(2).to_float().positive_buckets) + sum(ih(2).to_float().negative_buckets) + 2)

    def test_bucket_limit_without_reduction_refuses(self):
        now = int(time.time() * 1000) - 60 * 1000
        svc = self.start("-validation.max-native-histogram-buckets=4",
                         "-validation.reduce-native-histogram-over-max-buckets=false")
        status, body = push(svc, [([("__name__", "nh_big")], [(now, 1.0)], [(now + 1, ih(2))])])
        self.assertEqual(status, 400, body)
        self.assertIn(b"received a native histogram sample with too many buckets, timestamp: %d "
                      b"series: {__name__=\"nh_big\"}, buckets: 6, limit: 4 "
                      b"(err-mimir-max-native-histogram-buckets)" % (now + 1), body)

    def test_ingestion_disabled_ignores_histograms(self):
        """-ingester.native-histograms-ingestion-enabled=false (Mimir's default is true): the
        histograms are ignored without an error, the floats of the same request stored; the
        per-tenant override turns them back on for one tenant."""
        now = int(time.time() * 1000) - 60 * 1000
        rc = os.path.join(self.tmp, "runtime.yaml")
        with open(rc, "w") as f:
            f.write("overrides:\n  nh-on:\n    native_histograms_ingestion_enabled: true\n")
        svc = self.start("-ingester.native-histograms-ingestion-enabled=false",
                         "-runtime-config.file=" + rc)
        for tenant in ("nh-off", "nh-on"):
            status, body = push(svc, [([("__name__", "nh_mixed")], [(now, 1.0)], [(now + 1, ih(2))]),
                                      ([("__name__", "nh_only")], [], [(now, ih(3))])], tenant)
            self.assertEqual(status, 200, body)
        # the histogram-only series is not even created (empty) where histograms are off
        status, body = http("GET", svc.base + "/api/v1/user_stats", None, {"X-Scope-OrgID": "nh-off"})
        self.assertEqual((status, json.loads(body)["numSeries"]), (200, 1), body)
        svc.stop()
        got = {}
        for tenant in ("nh-off", "nh-on"):
            db = TSDB(os.path.join(self.tmp, "tsdb", tenant))
            try:
                got[tenant] = {labels_dict(i[0])["__name__"]: (list(i[1]), len(i[5]) if len(i) > 3 else 0)
                               for i in db.select([Matcher("=~", "__name__", "nh_.*")])}
            finally:
                db.close()
        self.assertEqual(got["nh-off"]["nh_mixed"], ([now], 0))
        self.assertNotIn("nh_only", got["nh-off"])
        self.assertEqual(got["nh-on"], {"nh_mixed": ([now], 1), "nh_only": ([], 1)})


if __name__ == "__main__":
    unittest.main()
