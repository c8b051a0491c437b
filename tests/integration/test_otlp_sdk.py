"""End to end with the real OpenTelemetry SDK: its OTLP/HTTP exporter pushes to a running urdar.

A MeterProvider with a counter, an up-down counter, a histogram and an observable gauge exports
once (protobuf, gzip) to /otlp/v1/metrics with X-Scope-OrgID; after urdar stops, its TSDB holds
the translated series with job/instance from the resource and a target_info series. A second
exporter with delta temporality is refused with a message naming it."""
import os
import tempfile
import unittest

from tests.support.services import Urdar

TENANT = "otel-e2e"


def export(endpoint, temporality=None, compression=None):
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.sdk.metrics import Counter, Histogram, MeterProvider, UpDownCounter
    from opentelemetry.sdk.metrics.export import (AggregationTemporality, MetricExportResult,
                                                  PeriodicExportingMetricReader)
    from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.metrics import Observation

    kw = {}
    if temporality is not None:
        kw["preferred_temporality"] = {Counter: temporality, Histogram: temporality,
                                       UpDownCounter: AggregationTemporality.CUMULATIVE}
    exporter = OTLPMetricExporter(endpoint=endpoint, headers={"X-Scope-OrgID": TENANT},
                                  compression=compression or Compression.Gzip, timeout=10, **kw)
    results = []
    original = exporter.export

    def recording(*a, **k):
        r = original(*a, **k)
        results.append(r)
        return r
    exporter.export = recording
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    resource = Resource.create({"service.name": "checkout", "service.namespace": "shop",
                                "service.instance.id": "pod-7", "deployment.environment": "test"})
    provider = MeterProvider(resource=resource, metric_readers=[reader], views=[
        View(instrument_name="http.server.duration",
             aggregation=ExplicitBucketHistogramAggregation([0.1, 1.0, 10.0]))])
    meter = provider.get_meter("urdar.tests")
    requests = meter.create_counter("http.server.requests", unit="1", description="Requests served.")
    inflight = meter.create_up_down_counter("http.server.active_requests")
    duration = meter.create_histogram("http.server.duration", unit="s")
    meter.create_observable_gauge("process.temperature",
                                  callbacks=[lambda options: [Observation(36.6, {"sensor": "a"})]])
    requests.add(5, {"http.method": "GET"})
    requests.add(2, {"http.method": "POST"})
    inflight.add(3)
    inflight.add(-1)
    for v in (0.05, 0.5, 0.7, 20.0):
        duration.record(v, {"http.method": "GET"})
    provider.shutdown()     # one final collection and export
    return results[0] if results else None, MetricExportResult


class OTLPSDKTests(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="urdar-otel-")
        self.addCleanup(self.tmp.cleanup)

    def test_sdk_exporter_push_is_stored(self):
        """Metrics exported by the OpenTelemetry SDK are stored with Prometheus names, job/instance and target_info."""
        urdar = Urdar(self.tmp.name).wait_ready()
        self.addCleanup(lambda: urdar.alive() and urdar.stop(5))
        result, R = export(urdar.base + "/otlp/v1/metrics")
        self.assertEqual(result, R.SUCCESS, urdar.output())
        # Delta temporality for the counter and histogram: the up-down counter and gauge are
        # still stored (partial success, which the exporter reports as success), the rest refused.
        from opentelemetry.sdk.metrics.export import AggregationTemporality
        result, R = export(urdar.base + "/otlp/v1/metrics", temporality=AggregationTemporality.DELTA)
        self.assertEqual(result, R.SUCCESS, urdar.output())
        self.assertEqual(urdar.stop(30), (0, False), urdar.output())
        self.assertIn("delta temporality is not supported", urdar.output())

        from urdar.engine.labels import decode_labels
        from urdar.engine.matchers import Matcher
        from urdar.engine.tsdb import TSDB
        db = TSDB(os.path.join(urdar.tsdb_dir, TENANT))
        try:
            def get(name):
                return {tuple(sorted((k, v) for k, v in decode_labels(key) if k not in ("__name__",))):
                        list(vs) for key, ts, vs in db.select([Matcher("=", "__name__", name)])}
            base = (("instance", "pod-7"), ("job", "shop/checkout"))
            self.assertEqual(get("http_server_requests"), {
                tuple(sorted(base + (("http_method", "GET"),))): [5.0],
                tuple(sorted(base + (("http_method", "POST"),))): [7.0 - 5.0]})
            # The up-down counter and the gauge come from both exports (cumulative both times).
            self.assertEqual(get("http_server_active_requests"), {base: [2.0, 2.0]})
            self.assertEqual(get("process_temperature"), {tuple(sorted(base + (("sensor", "a"),))): [36.6, 36.6]})
            buckets = get("http_server_duration_bucket")
            got = {dict(k)["le"]: v for k, v in buckets.items()}
            self.assertEqual(got, {"0.1": [1.0], "1": [3.0], "10": [3.0], "+Inf": [4.0]})
            self.assertEqual(list(get("http_server_duration_count").values()), [[4.0]])
            self.assertEqual(list(get("http_server_duration_sum").values()), [[21.25]])
            info = get("target_info")
            self.assertEqual(len(info), 1, info)
            labels = dict(next(iter(info)))
            self.assertEqual(labels["deployment_environment"], "test")
            self.assertEqual(labels["telemetry_sdk_language"], "python")
            self.assertEqual((labels["job"], labels["instance"]), ("shop/checkout", "pod-7"))
        finally:
            db.close()

    def test_sdk_exponential_histogram_is_a_native_histogram(self):
        """An SDK histogram with the exponential aggregation is stored as one native histogram
        series (the metric's own name): count, sum, and each observation in the native bucket
        holding its value at the stored schema (the SDK's scale, at most 8)."""
        import math
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation, View
        from opentelemetry.sdk.resources import Resource
        urdar = Urdar(self.tmp.name).wait_ready()
        self.addCleanup(lambda: urdar.alive() and urdar.stop(5))
        exporter = OTLPMetricExporter(endpoint=urdar.base + "/otlp/v1/metrics",
                                      headers={"X-Scope-OrgID": TENANT}, timeout=10)
        reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
        provider = MeterProvider(resource=Resource.create({"service.name": "svc"}),
                                 metric_readers=[reader], views=[
            View(instrument_name="rpc.latency", aggregation=ExponentialBucketHistogramAggregation())])
        latency = provider.get_meter("urdar.tests").create_histogram("rpc.latency", unit="s")
        values = [0.05, 0.3, 0.7, 0.7, 20.0, 1e-3]
        for v in values:
            latency.record(v)
        provider.shutdown()
        self.assertEqual(urdar.stop(30), (0, False), urdar.output())

        from urdar.engine.labels import labels_dict
        from urdar.engine.matchers import Matcher
        from urdar.engine.tsdb import TSDB
        db = TSDB(os.path.join(urdar.tsdb_dir, TENANT))
        try:
            [item] = db.select([Matcher("=", "__name__", "rpc_latency")])
        finally:
            db.close()
        self.assertEqual(labels_dict(item[0])["job"], "svc")
        [h] = item[5]
        self.assertLessEqual(h.schema, 8)
        self.assertEqual((h.count, h.zero_count), (len(values), 0))
        self.assertAlmostEqual(h.sum, sum(values))
        want = {}
        for v in values:
            i = math.ceil(math.log2(v) * 2 ** h.schema)
            want[i] = want.get(i, 0) + 1
        # read back as stored: integer deltas, or absolute counts of a float histogram
        from urdar.engine.histogram import FloatHistogram
        absolute = isinstance(h, FloatHistogram)
        got, idx, cur, n = {}, None, 0, 0
        for k, (off, length) in enumerate(h.positive_spans):
            idx = off if k == 0 else idx + off
            for _ in range(length):
                cur = h.positive_buckets[n] if absolute else cur + h.positive_buckets[n]
                n += 1
                if cur:
                    got[idx] = cur
                idx += 1
        self.assertEqual(got, want)


if __name__ == "__main__":
    unittest.main()
