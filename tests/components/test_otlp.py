"""OTLP -> Prometheus translation (components/otlp.py), checked against Prometheus' translator rules."""
import math
import struct
import unittest

from hypothesis import given, strategies as st

from tests.support import otlp as B
from urdar.components import otlp

T0_MS = B.T0_NS // 1_000_000
SVC = {"service.name": "api", "service.namespace": "shop", "service.instance.id": "i-1"}


def bits(x):
    return struct.unpack("<Q", struct.pack("<d", x))[0]


def series(tr):
    """{metric name + sorted other labels: [(t, v)]} for readable assertions."""
    return {labels: samples for labels, (samples, _ex) in tr.series.items()}


def L(name, **labels):
    return tuple(sorted([("__name__", name)] + list(labels.items())))


class MetricNameTests(unittest.TestCase):
    def test_invalid_characters_become_underscores_without_suffixes(self):
        """Dots, dashes and other invalid characters turn into single underscores; units are not appended."""
        self.assertEqual(otlp.metric_name("http.server.request-duration", "s", "histogram"),
                         "http_server_request_duration")
        self.assertEqual(otlp.metric_name("a..b//c", "", "gauge"), "a_b_c")
        self.assertEqual(otlp.metric_name("ok:name__x", "", "gauge"), "ok:name__x")
        self.assertEqual(otlp.metric_name("2xx.count", "", "gauge"), "_2xx_count")

    def test_counters_keep_their_name_without_suffixes(self):
        """With suffixes off (Mimir's default) a monotonic sum gets no _total."""
        self.assertEqual(otlp.metric_name("requests", "1", "sum", monotonic=True), "requests")

    def test_unit_and_type_suffixes_when_enabled(self):
        """With suffixes on, units map to Prometheus words and counters end in _total, unit-1 gauges in _ratio."""
        name = lambda *a, **k: otlp.metric_name(*a, add_suffixes=True, **k)   # noqa: E731
        self.assertEqual(name("http.server.duration", "s", "histogram"), "http_server_duration_seconds")
        self.assertEqual(name("system.memory.usage", "By", "gauge"), "system_memory_usage_bytes")
        self.assertEqual(name("requests", "1", "sum", monotonic=True), "requests_total")
        self.assertEqual(name("requests_total", "", "sum", monotonic=True), "requests_total")
        self.assertEqual(name("cpu.utilization", "1", "gauge"), "cpu_utilization_ratio")
        self.assertEqual(name("throughput", "By/s", "gauge"), "throughput_bytes_per_second")
        self.assertEqual(name("latency_seconds", "s", "gauge"), "latency_seconds")
        self.assertEqual(name("queue.items", "{items}", "gauge"), "queue_items")
        self.assertEqual(name("up.down", "1", "sum", monotonic=False), "up_down")

    def test_label_names_are_sanitised(self):
        """Attribute keys become label names: invalid characters -> _, a leading digit or single _ gets 'key'."""
        self.assertEqual(otlp.normalize_label("http.method"), "http_method")
        self.assertEqual(otlp.normalize_label("1st"), "key_1st")
        self.assertEqual(otlp.normalize_label("_private"), "key_private")
        self.assertEqual(otlp.normalize_label("__reserved"), "__reserved")

    def test_float_formatting_matches_go(self):
        """le and quantile values print like Go's FormatFloat(x, 'f', -1): shortest digits, no exponent."""
        self.assertEqual(otlp.format_float(0.005), "0.005")
        self.assertEqual(otlp.format_float(10.0), "10")
        self.assertEqual(otlp.format_float(1e-9), "0.000000001")
        self.assertEqual(otlp.format_float(1e21), "1000000000000000000000")
        self.assertEqual(otlp.format_float(math.inf), "+Inf")

    @given(st.floats(allow_nan=False, allow_infinity=False))
    def test_float_formatting_round_trips(self, x):
        """Every finite bound prints as a plain decimal that parses back to the same float."""
        s = otlp.format_float(x)
        self.assertNotIn("e", s)
        self.assertEqual(float(s), x)


class TranslateTests(unittest.TestCase):
    def test_gauge_with_resource_labels_and_target_info(self):
        """A gauge point becomes one series with job=namespace/name, instance, its attributes, and target_info holds the rest."""
        req = B.request([B.gauge("queue.depth", [{"value": 3.5, "attrs": {"queue": "q1"}}])],
                        resource=dict(SVC, **{"host.name": "h1", "k8s.pod.name": "p"}))
        got = series(otlp.translate(req))
        self.assertEqual(got, {
            L("queue_depth", job="shop/api", instance="i-1", queue="q1"): [(T0_MS, 3.5)],
            L("target_info", job="shop/api", instance="i-1", host_name="h1", k8s_pod_name="p"): [(T0_MS, 1.0)],
        })

    def test_job_is_service_name_without_namespace(self):
        """Without service.namespace the job label is service.name alone."""
        req = B.request([B.gauge("g", [{"value": 1}])], resource={"service.name": "api"})
        self.assertEqual(list(series(otlp.translate(req))), [L("g", job="api")])

    def test_no_target_info_with_only_identifying_attributes(self):
        """A resource with only service name/namespace/instance id produces no target_info."""
        req = B.request([B.gauge("g", [{"value": 1}])], resource=SVC)
        self.assertEqual(len(otlp.translate(req).series), 1)

    def test_counter_and_non_monotonic_sum(self):
        """Monotonic cumulative sums are counters (metadata COUNTER), non-monotonic ones gauges."""
        req = B.request([B.counter("reqs", [{"value": 7}]),
                         B.sum_("inflight", [{"value": 2}], monotonic=False)], resource=SVC)
        tr = otlp.translate(req, add_suffixes=True)
        self.assertIn(L("reqs_total", job="shop/api", instance="i-1"), tr.series)
        self.assertIn(L("inflight", job="shop/api", instance="i-1"), tr.series)
        self.assertEqual([(t, n) for t, n, _, _ in tr.metadata], [(otlp.COUNTER, "reqs_total"),
                                                                  (otlp.GAUGE, "inflight")])

    def test_histogram_becomes_cumulative_buckets_sum_and_count(self):
        """Explicit-bucket histograms turn into _bucket{le} with cumulative counts up to +Inf, _sum and _count."""
        req = B.request([B.histogram("lat", [{"count": 5, "sum": 12.5, "bounds": [0.5, 1, 10],
                                              "buckets": [1, 2, 1, 1]}], unit="s")],
                        resource={"service.name": "api"})
        got = series(otlp.translate(req))
        want = {L("lat_sum", job="api"): [(T0_MS, 12.5)], L("lat_count", job="api"): [(T0_MS, 5.0)]}
        for le, v in (("0.5", 1.0), ("1", 3.0), ("10", 4.0), ("+Inf", 5.0)):
            want[L("lat_bucket", job="api", le=le)] = [(T0_MS, v)]
        self.assertEqual(got, want)

    def test_histogram_without_sum_has_no_sum_series(self):
        """A histogram point whose sum is unset produces no _sum series."""
        req = B.request([B.histogram("lat", [{"count": 1, "bounds": [1], "buckets": [1, 0]}])])
        names = {dict(k)["__name__"] for k in otlp.translate(req).series}
        self.assertEqual(names, {"lat_count", "lat_bucket"})

    def test_histogram_exemplars_go_to_their_bucket(self):
        """An exemplar is attached to the first bucket whose bound holds its value, with trace and span ids."""
        ex = {"value": 0.7, "trace_id": bytes(range(16)), "span_id": bytes(range(8)),
              "attrs": {"user": "u1"}}
        big = {"value": 99.0}
        req = B.request([B.histogram("lat", [{"count": 2, "bounds": [0.5, 1], "buckets": [0, 1, 1],
                                              "exemplars": [ex, big]}])])
        tr = otlp.translate(req)
        ex1 = tr.series[L("lat_bucket", le="1")][1]
        self.assertEqual(ex1, [([("trace_id", bytes(range(16)).hex()), ("span_id", bytes(range(8)).hex()),
                                 ("user", "u1")], T0_MS, 0.7)])
        self.assertEqual(tr.series[L("lat_bucket", le="+Inf")][1], [([], T0_MS, 99.0)])
        self.assertEqual(tr.series[L("lat_bucket", le="0.5")][1], [])

    def test_summary_quantiles_sum_and_count(self):
        """Summaries give one series per quantile plus _sum and _count."""
        req = B.request([B.summary("rpc", [{"count": 10, "sum": 4.0, "quantiles": [(0.5, 0.3), (0.99, 1.2)]}])])
        got = series(otlp.translate(req))
        self.assertEqual(got, {L("rpc_sum"): [(T0_MS, 4.0)], L("rpc_count"): [(T0_MS, 10.0)],
                               L("rpc", quantile="0.5"): [(T0_MS, 0.3)],
                               L("rpc", quantile="0.99"): [(T0_MS, 1.2)]})

    def test_no_recorded_value_becomes_stale_marker(self):
        """A point flagged no-recorded-value stores Prometheus' stale NaN on every series it produces."""
        req = B.request([B.gauge("g", [{"value": 1.0, "flags": 1}]),
                         B.histogram("h", [{"count": 1, "sum": 1, "bounds": [1], "buckets": [1, 0], "flags": 1}])])
        for labels, samples in series(otlp.translate(req)).items():
            self.assertEqual(bits(samples[0][1]), 0x7FF0000000000002, labels)

    def test_delta_temporality_is_dropped_with_message(self):
        """Delta sums and histograms are not stored: their points count as dropped and the message says why."""
        req = B.request([B.counter("d", [{"value": 1}, {"value": 2}], temporality=B.DELTA),
                         B.gauge("g", [{"value": 1}])])
        tr = otlp.translate(req)
        self.assertEqual(list(series(tr)), [L("g")])
        self.assertEqual(tr.dropped_points, 2)
        self.assertIn("delta temporality is not supported", tr.error_message())
        self.assertIn("'d'", tr.error_message())

    def test_exponential_histograms_become_native(self):
        """A cumulative exponential histogram point is one native histogram sample of the metric's
        own name: schema = scale, count, sum, zero count, Prometheus' zero threshold, exemplars."""
        metric = B.exp_histogram("lat", 1)
        pt = metric.exponential_histogram.data_points[0]
        pt.scale, pt.count, pt.sum, pt.zero_count = 3, 9, 4.5, 2
        pt.positive.offset = -2
        pt.positive.bucket_counts.extend([1, 0, 3])
        pt.negative.offset = 5
        pt.negative.bucket_counts.extend([2, 0, 0, 0, 1])
        ex = pt.exemplars.add(time_unix_nano=B.T0_NS, as_double=1.5)
        ex.trace_id = b"\x01" * 16
        tr = otlp.translate(B.request([metric]))
        self.assertEqual((tr.dropped_points, tr.errors), (0, []))
        [(t, h)] = tr.histograms[L("lat")]
        self.assertEqual(t, T0_MS)
        self.assertEqual((h.schema, h.count, h.sum, h.zero_count, h.zero_threshold),
                         (3, 9, 4.5, 2, 1e-128))
        # OTel index i is Prometheus index i + 1; a gap of 1 is a zero bucket, of 3 a new span
        self.assertEqual((h.positive_spans, h.positive_buckets), ([(-1, 3)], [1, -1, 3]))
        self.assertEqual((h.negative_spans, h.negative_buckets), ([(6, 1), (3, 1)], [2, -1]))
        self.assertEqual(tr.series[L("lat")][1], [([("trace_id", "01" * 16)], T0_MS, 1.5)])
        self.assertIn((otlp.HISTOGRAM, "lat", "", ""), tr.metadata)

    @given(st.integers(-4, 20), st.integers(-300, 300),
           st.lists(st.integers(0, 5), max_size=60), st.integers(-100, 100),
           st.lists(st.integers(0, 5), max_size=60))
    def test_exponential_buckets_land_in_the_native_bucket_of_their_values(
            self, scale, poff, pcounts, noff, ncounts):
        """Every OTel bucket's observations end in the native bucket holding its values (scales
        over 8 merged down to schema 8): checked by bucket boundaries computed in floats."""
        metric = B.exp_histogram("e", 1)
        pt = metric.exponential_histogram.data_points[0]
        pt.scale = scale
        pt.positive.offset, pt.negative.offset = poff, noff
        pt.positive.bucket_counts.extend(pcounts)
        pt.negative.bucket_counts.extend(ncounts)
        pt.count = sum(pcounts) + sum(ncounts)
        tr = otlp.translate(B.request([metric]))
        [(_, h)] = tr.histograms[L("e")]
        schema = min(scale, 8)
        self.assertEqual(h.schema, schema)
        for offset, counts, spans, deltas in ((poff, pcounts, h.positive_spans, h.positive_buckets),
                                              (noff, ncounts, h.negative_spans, h.negative_buckets)):
            want = {}
            for j, c in enumerate(counts):
                if c:
                    # the geometric middle of OTel bucket offset+j, and the native bucket holding it:
                    # upper bound 2**(i * 2**-schema) is the first at or above it
                    mid = (offset + j + 0.5) * 2.0 ** -scale
                    i = math.ceil(mid * 2.0 ** schema)
                    want[i] = want.get(i, 0) + c
            got, idx, cur, n = {}, None, 0, 0
            for k, (off, length) in enumerate(spans):
                idx = off if k == 0 else idx + off
                for _ in range(length):
                    cur += deltas[n]
                    n += 1
                    if cur:
                        got[idx] = cur
                    self.assertGreaterEqual(cur, 0)
                    idx += 1
            self.assertEqual(n, len(deltas))
            self.assertEqual(got, want)

    def test_exponential_histogram_scale_and_temporality(self):
        """Scales under -4 and delta temporality are refused per metric, as Prometheus does."""
        metric = B.exp_histogram("coarse", 2)
        for pt in metric.exponential_histogram.data_points:
            pt.scale = -5
        tr = otlp.translate(B.request([metric, B.exp_histogram("d", 1, temporality=B.DELTA),
                                       B.gauge("g", [{"value": 1}])]))
        self.assertEqual(tr.dropped_points, 3)
        self.assertIn("Scale must be >= -4, was -5", tr.error_message())
        self.assertIn("delta temporality is not supported", tr.error_message())
        self.assertEqual(tr.histograms, {})

    def test_colliding_attribute_names_join_values(self):
        """Two attributes that sanitise to one label name join their values with ';' in key order."""
        req = B.request([B.gauge("g", [{"value": 1, "attrs": {"a.b": "x", "a-b": "y"}}])])
        self.assertEqual(list(series(otlp.translate(req))), [L("g", a_b="y;x")])

    def test_attribute_value_types(self):
        """Int, double, bool and array attributes print as OTel's AsString does."""
        req = B.request([B.gauge("g", [{"value": 1, "attrs": {"i": 3, "d": 0.5, "b": True, "arr": ["x", "y"]}}])])
        self.assertEqual(list(series(otlp.translate(req))),
                         [L("g", i="3", d="0.5", b="true", arr='["x","y"]')])

    def test_points_of_one_series_merge(self):
        """Several points of the same label set become one series with samples in order."""
        req = B.request([B.gauge("g", [{"value": 1, "t": B.T0_NS}, {"value": 2, "t": B.T0_NS + 10**9}])])
        self.assertEqual(series(otlp.translate(req)), {L("g"): [(T0_MS, 1.0), (T0_MS + 1000, 2.0)]})

    def test_request_round_trips_through_json(self):
        """The OTLP/JSON encoding (hex trace ids) parses to the same request as protobuf."""
        from google.protobuf import json_format
        req = B.request([B.counter("c", [{"value": 1, "exemplars": [{"value": 1.0, "trace_id": b"\x01" * 16}]}])],
                        resource=SVC)
        doc = json_format.MessageToJson(req)
        # OTLP/JSON uses hex for ids where protobuf's JSON mapping uses base64.
        doc = doc.replace(json_format.MessageToDict(req)["resourceMetrics"][0]["scopeMetrics"][0]["metrics"][0]
                          ["sum"]["dataPoints"][0]["exemplars"][0]["traceId"], "01" * 16)
        self.assertEqual(otlp.parse_request(doc.encode(), json_body=True), req)

    def test_malformed_protobuf_is_an_error(self):
        """Bytes that are not an ExportMetricsServiceRequest raise OTLPError."""
        with self.assertRaises(otlp.OTLPError):
            otlp.parse_request(b"\x0a\xff\xff\xff\x0f")
