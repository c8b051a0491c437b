"""POST /otlp/v1/metrics and GET /api/v1/user_limits through Klein (StubTreq), the distributor and a fake ingester."""
import gzip
import json
import struct

import cramjam
import lz4.frame
from google.protobuf import json_format
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as ms
from prometheus_client import CollectorRegistry
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.support import otlp as B
from tests.support.fake_ingester import FakeIngesterClient
from tests.support.threads import inline_offload
from urdar.app.config import Config
from urdar.components.distributor import Distributor, DistributorConfig
from urdar.components.limits import Overrides
from urdar.handlers.distributor import DistributorHandlers
from urdar.handlers.routes import RouteTable
from urdar.net.server import Instrument
from urdar.net.tenant import Tenancy

NOW_S = B.T0_NS / 1e9 + 5
T0_MS = B.T0_NS // 1_000_000
URL = "http://urdar/otlp/v1/metrics"
SVC = {"service.name": "api", "service.instance.id": "i-1"}


def decode_status(body):
    """(code, message) of a google.rpc.Status protobuf body."""
    i, code, msg = 0, None, None
    while i < len(body):
        tag = body[i]
        i += 1
        n = shift = 0
        while True:
            b = body[i]
            i += 1
            n |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                break
        if tag == 0x08:
            code = n
        elif tag == 0x12:
            msg = body[i:i + n].decode()
            i += n
    return code, msg


class OTLPFixture:
    def setup(self, test, max_otlp=1 << 20, **limit_overrides):
        test.clock = Clock()
        test.clock.advance(NOW_S)
        cfg = Config()
        defaults = cfg.limits_defaults()
        defaults.update(limit_overrides)
        test.overrides = Overrides(defaults)
        test.ingesters = FakeIngesterClient()
        test.registry = CollectorRegistry()
        test.distributor = Distributor(test.overrides, test.ingesters, inline_offload(), test.clock,
                                       DistributorConfig(max_otlp_request_size=max_otlp),
                                       registry=test.registry)
        handlers = DistributorHandlers(test.distributor)
        test.treq = StubTreq(RouteTable(Tenancy.from_config(cfg), Instrument(test.clock, test.registry))
                             .mount(handlers).resource())


class OTLPTests(SynchronousTestCase):
    def setUp(self):
        OTLPFixture().setup(self)

    def post(self, data, ctype="application/x-protobuf", encoding=None, tenant="t1"):
        h = {"Content-Type": ctype}
        if encoding:
            h["Content-Encoding"] = encoding
        if tenant:
            h["X-Scope-OrgID"] = tenant
        resp = self.successResultOf(self.treq.post(URL, data=data, headers=h))
        return resp.code, resp.headers.getRawHeaders("Content-Type", [""])[0], \
            self.successResultOf(resp.content())

    def stored(self, labels, tenant="t1"):
        db = self.ingesters.tsdbs.get(tenant)
        return db.samples(labels) if db else []

    def simple(self):
        return B.request([B.gauge("temp", [{"value": 21.5, "attrs": {"room": "a"}}]),
                          B.counter("hits", [{"value": 3}])], resource=SVC)

    def test_protobuf_push_is_stored(self):
        """An OTLP protobuf push answers 200 with an empty ExportMetricsServiceResponse and is stored."""
        code, ctype, body = self.post(self.simple().SerializeToString())
        self.assertEqual((code, ctype), (200, "application/x-protobuf"))
        resp = ms.ExportMetricsServiceResponse.FromString(body)
        self.assertFalse(resp.HasField("partial_success"))
        self.assertEqual(self.stored({"__name__": "temp", "job": "api", "instance": "i-1", "room": "a"}),
                         [(T0_MS, 21.5)])
        self.assertEqual(self.stored({"__name__": "hits", "job": "api", "instance": "i-1"}), [(T0_MS, 3.0)])

    def test_metadata_is_stored(self):
        """The metric type, description and unit reach the ingester as metadata."""
        req = B.request([B.counter("hits", [{"value": 3}], description="Hits.", unit="1")], resource=SVC)
        self.post(req.SerializeToString())
        self.assertEqual(self.ingesters.tsdbs["t1"].head.metadata["hits"], (1, "Hits.", "1"))

    def test_compressed_bodies(self):
        """gzip, lz4 and zstd bodies are accepted."""
        raw = self.simple().SerializeToString()
        for enc, data in (("gzip", gzip.compress(raw)), ("lz4", lz4.frame.compress(raw)),
                          ("zstd", bytes(cramjam.zstd.compress(raw)))):
            code, _, body = self.post(data, encoding=enc, tenant="t-" + enc)
            self.assertEqual(code, 200, (enc, body))
            self.assertEqual(len(self.ingesters.tsdbs["t-" + enc].series), 2, enc)

    def test_unknown_encoding_is_415(self):
        """A Content-Encoding other than gzip, lz4, zstd or none is 415."""
        code, _, body = self.post(self.simple().SerializeToString(), encoding="br")
        self.assertEqual(code, 415)
        self.assertIn("unsupported compression", decode_status(body)[1])

    def test_unknown_content_type_is_415(self):
        """A Content-Type other than protobuf or JSON is 415."""
        code, _, body = self.post(b"x", ctype="text/plain")
        self.assertEqual(code, 415)
        self.assertIn("unsupported content type", decode_status(body)[1])

    def test_json_push(self):
        """An OTLP/JSON body is accepted and answered in JSON."""
        data = json_format.MessageToJson(self.simple()).encode()
        code, ctype, body = self.post(data, ctype="application/json")
        self.assertEqual((code, ctype), (200, "application/json"))
        self.assertEqual(json.loads(body), {})
        self.assertEqual(len(self.ingesters.tsdbs["t1"].series), 2)

    def test_oversized_body_is_413(self):
        """A body over -distributor.max-otlp-request-size is 413 naming the flag."""
        code, _, body = self.post(b"\0" * ((1 << 20) + 1))
        self.assertEqual(code, 413)
        self.assertIn("distributor.max-otlp-request-size", decode_status(body)[1])

    def test_decompression_bomb_is_413(self):
        """A gzip body that inflates past the limit is 413 without inflating it all."""
        code, _, body = self.post(gzip.compress(b"\0" * (3 << 20)), encoding="gzip")
        self.assertEqual(code, 413)
        code, _, body = self.post(bytes(cramjam.zstd.compress(b"\0" * (3 << 20))), encoding="zstd")
        self.assertEqual(code, 413)

    def test_garbage_is_400(self):
        """A body that is not an OTLP request is 400 with a google.rpc.Status body."""
        code, _, body = self.post(b"\x0a\xff\xff\xff\x0f")
        self.assertEqual(code, 400)
        grpc, msg = decode_status(body)
        self.assertEqual(grpc, 3)
        self.assertIn("unmarshal", msg)

    def test_missing_tenant_is_401(self):
        """Without X-Scope-OrgID the push is 401."""
        code, _, _ = self.post(self.simple().SerializeToString(), tenant=None)
        self.assertEqual(code, 401)

    def test_only_delta_is_400(self):
        """A request whose only metric is delta temporality is 400 explaining the temporality."""
        req = B.request([B.counter("d", [{"value": 1}], temporality=B.DELTA)], resource=SVC)
        code, _, body = self.post(req.SerializeToString())
        self.assertEqual(code, 400)
        self.assertIn("delta temporality", decode_status(body)[1])

    def test_some_delta_is_partial_success(self):
        """Delta metrics next to cumulative ones: 200, the rest stored, partial_success counts the drops."""
        req = B.request([B.counter("d", [{"value": 1}, {"value": 2}], temporality=B.DELTA),
                         B.gauge("g", [{"value": 1}])], resource=SVC)
        code, _, body = self.post(req.SerializeToString())
        self.assertEqual(code, 200)
        resp = ms.ExportMetricsServiceResponse.FromString(body)
        self.assertEqual(resp.partial_success.rejected_data_points, 2)
        self.assertIn("delta", resp.partial_success.error_message)
        self.assertEqual(self.stored({"__name__": "g", "job": "api", "instance": "i-1"}), [(T0_MS, 1.0)])

    def test_validation_refusals_are_partial_success(self):
        """Series the distributor refuses (too many labels) are reported in partial_success, the rest stored."""
        OTLPFixture().setup(self, max_label_names_per_series=4)
        attrs = {"a%d" % i: "v" for i in range(6)}
        req = B.request([B.gauge("wide", [{"value": 1, "attrs": attrs}]), B.gauge("ok", [{"value": 2}])],
                        resource=SVC)
        code, _, body = self.post(req.SerializeToString())
        self.assertEqual(code, 200)
        resp = ms.ExportMetricsServiceResponse.FromString(body)
        self.assertEqual(resp.partial_success.rejected_data_points, 1)
        self.assertIn("max-label-names-per-series", resp.partial_success.error_message)
        self.assertEqual(self.stored({"__name__": "ok", "job": "api", "instance": "i-1"}), [(T0_MS, 2.0)])

    def test_rate_limited_is_429(self):
        """Over the tenant's ingestion rate the OTLP push is 429."""
        OTLPFixture().setup(self, ingestion_rate=1.0, ingestion_burst_size=1)
        code, _, body = self.post(self.simple().SerializeToString())
        self.assertEqual(code, 429)
        self.assertEqual(decode_status(body)[0], 8)

    def test_stale_marker_is_stored(self):
        """A no-recorded-value point is stored as Prometheus' stale NaN."""
        req = B.request([B.gauge("g", [{"value": 1.0, "t": B.T0_NS - 10**9}, {"value": 0.0, "flags": 1}])],
                        resource=SVC)
        self.assertEqual(self.post(req.SerializeToString())[0], 200)
        s = self.stored({"__name__": "g", "job": "api", "instance": "i-1"})
        self.assertEqual(s[0], (T0_MS - 1000, 1.0))
        self.assertEqual(struct.pack("<d", s[1][1]), struct.pack("<Q", 0x7FF0000000000002))

    def test_exemplars_kept_when_enabled(self):
        """Counter exemplars reach the ingester when the tenant allows exemplars."""
        OTLPFixture().setup(self, max_global_exemplars_per_user=100)
        req = B.request([B.counter("c", [{"value": 5, "exemplars": [{"value": 1.0, "trace_id": b"\x01" * 16}]}])],
                        resource=SVC)
        self.assertEqual(self.post(req.SerializeToString())[0], 200)
        ex = self.ingesters.tsdbs["t1"].head.exemplars
        self.assertEqual(len(ex), 1)
        self.assertEqual(ex[0][1:3], (T0_MS, 1.0))

    def test_suffixes_flag_per_tenant(self):
        """With otel_metric_suffixes_enabled the counter is stored as <name>_total."""
        OTLPFixture().setup(self, otel_metric_suffixes_enabled=True)
        self.post(self.simple().SerializeToString())
        self.assertEqual(self.stored({"__name__": "hits_total", "job": "api", "instance": "i-1"}),
                         [(T0_MS, 3.0)])


class UserLimitsTests(SynchronousTestCase):
    def setUp(self):
        OTLPFixture().setup(self)

    def get(self, tenant):
        h = {"X-Scope-OrgID": tenant} if tenant else {}
        resp = self.successResultOf(self.treq.get("http://urdar/api/v1/user_limits", headers=h))
        return resp.code, self.successResultOf(resp.content())

    def test_limits_of_the_calling_tenant(self):
        """user_limits returns the tenant's effective limits under Mimir's JSON names, overrides applied."""
        self.overrides.set_overrides({"t2": {"ingestion_rate": 5.0, "max_global_series_per_user": 7}})
        code, body = self.get("t2")
        self.assertEqual(code, 200)
        doc = json.loads(body)
        self.assertEqual(doc["ingestion_rate"], 5.0)
        self.assertEqual(doc["max_global_series_per_user"], 7)
        self.assertEqual(doc["ingestion_burst_size"], 200000)
        self.assertIn("compactor_blocks_retention_period_seconds", doc)
        self.assertEqual(json.loads(self.get("t1")[1])["ingestion_rate"], 10000.0)

    def test_needs_a_tenant(self):
        """Without X-Scope-OrgID user_limits is 401."""
        self.assertEqual(self.get(None)[0], 401)


class RetryAfterTests(SynchronousTestCase):
    def setUp(self):
        OTLPFixture().setup(self, ingestion_rate=1.0, ingestion_burst_size=1)

    def push(self, headers):
        from urdar.engine.remotewrite import encode_write_request
        data = bytes(cramjam.snappy.compress_raw(encode_write_request(
            [([("__name__", "up")], [(T0_MS, 1.0), (T0_MS + 1, 1.0)])])))
        h = {"X-Scope-OrgID": "t1", "Content-Encoding": "snappy"}
        h.update(headers)
        resp = self.successResultOf(self.treq.post("http://urdar/api/v1/push", data=data, headers=h))
        return resp.code, resp.headers.getRawHeaders("Retry-After", [None])[0]

    def test_rate_limited_push_has_retry_after(self):
        """A 429 carries Retry-After growing with the client's Retry-Attempt: 6 s doubled per attempt, +-50%, at most 96 s."""
        for attempt, lo, hi in (("1", 3, 9), ("3", 12, 36), ("10", 48, 144), ("junk", 3, 9)):
            code, after = self.push({"Retry-Attempt": attempt})
            self.assertEqual(code, 429)
            self.assertTrue(lo <= int(after) < hi, (attempt, after))

    def test_client_errors_have_no_retry_after(self):
        """A client error (here 415, unknown encoding) has no Retry-After: retrying cannot help."""
        code, after = self.push({"Content-Encoding": "gzip"})
        self.assertEqual((code, after), (415, None))

    def test_formula_with_fixed_jitter(self):
        """retry_after_seconds doubles from the minimum and caps at the maximum."""
        import random
        from urdar.handlers.distributor import retry_after_seconds

        class NoJitter(random.Random):
            def randrange(self, n):
                return n // 2
        self.assertEqual([retry_after_seconds(str(a), 6, 96, NoJitter()) for a in (1, 2, 3, 5, 9)],
                         ["6", "12", "24", "96", "96"])
