"""POST /api/v1/push end to end through Klein (StubTreq), the distributor and a fake ingester."""
import math

import cramjam
from prometheus_client import CollectorRegistry
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.support.fake_ingester import FakeIngesterClient
from tests.support.threads import ManualThreadPool, inline_offload
from urdar.app.config import Config
from urdar.components.distributor import Distributor, DistributorConfig, format_series, format_timestamp
from urdar.components.limits import Overrides
from urdar.engine.remotewrite import encode_write_request
from urdar.handlers.distributor import DistributorHandlers
from urdar.handlers.routes import RouteTable
from urdar.net.offload import Offload
from urdar.net.server import Instrument
from urdar.net.tenant import Tenancy

NOW_S = 1_700_000_000.0
NOW_MS = int(NOW_S * 1000)
URL = "http://urdar/api/v1/push"


def snappy(b):
    return bytes(cramjam.snappy.compress_raw(b))


def body(series, metadata=()):
    return snappy(encode_write_request(series, metadata=metadata))


def up(job="a", *samples, extra=()):
    return ([("__name__", "up"), ("job", job)] + list(extra), list(samples))


class PushFixture:
    def setup(self, test, multitenancy=True, max_series=0, offload=None, **limit_overrides):
        test.clock = Clock()
        test.clock.advance(NOW_S)
        cfg = Config()
        cfg.set("multitenancy_enabled", multitenancy)
        defaults = cfg.limits_defaults()
        defaults.update(limit_overrides)
        test.overrides = Overrides(defaults)
        test.ingesters = FakeIngesterClient(max_series=max_series)
        test.registry = CollectorRegistry()
        test.offload = offload or inline_offload()
        test.distributor = Distributor(test.overrides, test.ingesters, test.offload, test.clock,
                                       DistributorConfig(max_recv_msg_size=1 << 20), registry=test.registry)
        test.distributor.start()
        test.addCleanup(test.distributor.stop)
        handlers = DistributorHandlers(test.distributor)
        test.instrument = Instrument(test.clock, test.registry)
        test.treq = StubTreq(RouteTable(Tenancy.from_config(cfg), test.instrument).mount(handlers).resource())


class PushTests(SynchronousTestCase):
    def setUp(self):
        PushFixture().setup(self)

    def push(self, data, tenant="t1", headers=None):
        h = {"Content-Encoding": "snappy", "Content-Type": "application/x-protobuf",
             "X-Prometheus-Remote-Write-Version": "0.1.0"}
        if tenant is not None:
            h["X-Scope-OrgID"] = tenant
        h.update(headers or {})
        resp = self.successResultOf(self.treq.post(URL, data=data, headers=h))
        text = self.successResultOf(resp.text())
        return resp.code, text

    def stored(self, tenant, labels):
        db = self.ingesters.tsdbs.get(tenant)
        return db.samples(labels) if db else []

    def discarded(self, reason, tenant="t1"):
        return self.registry.get_sample_value("cortex_discarded_samples_total",
                                              {"reason": reason, "user": tenant}) or 0

    def test_good_push_is_stored(self):
        """A valid push answers 200 with an empty body and its samples are stored."""
        code, text = self.push(body([up("a", (NOW_MS - 1000, 1.0), (NOW_MS, 2.0))]))
        self.assertEqual((code, text), (200, ""))
        self.assertEqual(self.stored("t1", {"__name__": "up", "job": "a"}),
                         [(NOW_MS - 1000, 1.0), (NOW_MS, 2.0)])
        self.assertEqual(self.registry.get_sample_value(
            "cortex_distributor_received_samples_total", {"user": "t1"}), 2)

    def test_missing_tenant(self):
        """Without X-Scope-OrgID the push is 401 'no org id' and nothing is stored."""
        code, text = self.push(body([up("a", (NOW_MS, 1.0))]), tenant=None)
        self.assertEqual((code, text.strip()), (401, "no org id"))
        self.assertEqual(self.ingesters.pushes, [])

    def test_hostile_tenants(self):
        """Tenant IDs that could escape the data directory are 400 with Mimir's message."""
        for org, msg in (("../x", "unsupported character '/'"), ("a/b", "unsupported character '/'"),
                         ("x" * 151, "tenant ID is too long: max 150 characters"),
                         ("..", "tenant ID is '.' or '..'")):
            code, text = self.push(body([up("a", (NOW_MS, 1.0))]), tenant=org)
            self.assertEqual(code, 400, org)
            self.assertIn(msg, text)
        self.assertEqual(self.ingesters.pushes, [])

    def test_tenant_isolation(self):
        """Two tenants pushing the same series get separate storage."""
        self.push(body([up("a", (NOW_MS, 1.0))]), tenant="t1")
        self.push(body([up("a", (NOW_MS, 7.0))]), tenant="t2")
        self.assertEqual(self.stored("t1", {"__name__": "up", "job": "a"}), [(NOW_MS, 1.0)])
        self.assertEqual(self.stored("t2", {"__name__": "up", "job": "a"}), [(NOW_MS, 7.0)])

    def test_broken_snappy(self):
        """A body that is not snappy raw-block data is 400 naming snappy."""
        code, text = self.push(b"this is not snappy at all")
        self.assertEqual(code, 400)
        self.assertIn("snappy", text)

    def test_framed_snappy_refused(self):
        """The snappy framing format (not the raw block format) is refused with 400."""
        framed = bytes(cramjam.snappy.compress(encode_write_request([up("a", (NOW_MS, 1.0))])))
        code, text = self.push(framed)
        self.assertEqual(code, 400)

    def test_broken_protobuf(self):
        """Valid snappy around malformed protobuf is 400 naming the WriteRequest."""
        code, text = self.push(snappy(b"\x0a\xff\xff\xff\x0f garbage"))
        self.assertEqual(code, 400)
        self.assertIn("WriteRequest", text)

    def test_empty_body(self):
        """An empty body is 400."""
        code, text = self.push(b"")
        self.assertEqual(code, 400)
        self.assertIn("empty", text)

    def test_oversized_compressed_body(self):
        """A body over -distributor.max-recv-msg-size is 413 with Mimir's error id and flag."""
        code, text = self.push(b"x" * ((1 << 20) + 1))
        self.assertEqual(code, 413)
        self.assertIn("err-mimir-distributor-max-write-message-size", text)
        self.assertIn("-distributor.max-recv-msg-size", text)

    def test_oversized_decompressed_body(self):
        """A small body that would decompress past the limit is 413 before decompressing."""
        big = snappy(b"\0" * ((1 << 20) + 10))
        self.assertLess(len(big), 1 << 20)
        code, text = self.push(big)
        self.assertEqual(code, 413)
        self.assertIn("%d bytes" % ((1 << 20) + 10), text)

    def test_content_negotiation(self):
        """The proto parameter picks the message: 1.0 by default and for prometheus.WriteRequest,
        2.0 for io.prometheus.write.v2.Request (a 1.0 body read as 2.0 has none of 2.0's fields:
        nothing is written, and the headers say so), 415 for any other."""
        data = body([up("a", (NOW_MS, 1.0))])
        code, _ = self.push(data, headers={
            "Content-Type": "application/x-protobuf;proto=io.prometheus.write.v2.Request"})
        self.assertEqual(code, 200)
        self.assertEqual(self.stored("t1", {"__name__": "up", "job": "a"}), [])
        code, text = self.push(data, headers={"Content-Type": "application/x-protobuf;proto=foo.Bar"})
        self.assertEqual(code, 415)
        self.assertIn("foo.bar", text)
        code, _ = self.push(data, headers={
            "Content-Type": "application/x-protobuf;proto=prometheus.WriteRequest"})
        self.assertEqual(code, 200)

    def test_invalid_labels_keep_good_series(self):
        """Invalid series are refused with Mimir's ids while valid series of the batch are stored."""
        data = body([
            up("good", (NOW_MS, 1.0)),
            ([("job", "x")], [(NOW_MS, 1.0)]),
            ([("__name__", "bad-name"), ("job", "x")], [(NOW_MS, 1.0)]),
            ([("__name__", "m"), ("bad-label", "x")], [(NOW_MS, 1.0), (NOW_MS + 1, 2.0)]),
            ([("__name__", "m"), ("job", "x"), ("job", "y")], [(NOW_MS, 1.0)]),
        ])
        code, text = self.push(data)
        self.assertEqual(code, 400)
        self.assertEqual(self.stored("t1", {"__name__": "up", "job": "good"}), [(NOW_MS, 1.0)])
        self.assertEqual(len(self.ingesters.tsdbs["t1"].series), 1)
        self.assertIn("received series has no metric name (err-mimir-missing-metric-name)", text)
        self.assertIn("received a series with invalid metric name: 'bad-name' (err-mimir-metric-name-invalid)",
                      text)
        self.assertIn("received a series with an invalid label: 'bad-label' series: "
                      "'{__name__=\"m\", bad-label=\"x\"}' (err-mimir-label-invalid)", text)
        self.assertIn("received a series with duplicate label name, label: 'job'", text)
        self.assertIn("err-mimir-duplicate-label-names", text)
        self.assertEqual(self.discarded("label_invalid"), 2)
        self.assertEqual(self.discarded("missing_metric_name"), 1)

    def test_label_limits(self):
        """Too many labels, too long names and values are refused naming the limit's flag."""
        PushFixture().setup(self, max_label_names_per_series=3, max_label_name_length=10,
                            max_label_value_length=10)
        data = body([
            ([("__name__", "m"), ("a", "1"), ("b", "2"), ("c", "3")], [(NOW_MS, 1.0)]),
            ([("__name__", "m"), ("n" * 11, "1")], [(NOW_MS, 1.0)]),
            ([("__name__", "m"), ("a", "v" * 11)], [(NOW_MS, 1.0)]),
            up("ok", (NOW_MS, 1.0)),
        ])
        code, text = self.push(data)
        self.assertEqual(code, 400)
        self.assertIn("(actual: 4, limit: 3)", text)
        self.assertIn("err-mimir-max-label-names-per-series). To adjust the related per-tenant limit, "
                      "configure -validation.max-label-names-per-series", text)
        self.assertIn("err-mimir-label-name-too-long", text)
        self.assertIn("-validation.max-length-label-name", text)
        self.assertIn("err-mimir-label-value-too-long", text)
        self.assertIn("-validation.max-length-label-value", text)
        self.assertEqual(self.stored("t1", {"__name__": "up", "job": "ok"}), [(NOW_MS, 1.0)])

    def test_future_samples(self):
        """Samples beyond the creation grace period are refused, the series' other samples kept."""
        future = NOW_MS + 11 * 60 * 1000
        code, text = self.push(body([up("a", (NOW_MS, 1.0), (future, 2.0))]))
        self.assertEqual(code, 400)
        self.assertIn("received a sample whose timestamp is too far in the future, timestamp: %d "
                      "series: 'up' (err-mimir-too-far-in-future)" % future, text)
        self.assertIn("-validation.create-grace-period", text)
        self.assertEqual(self.stored("t1", {"__name__": "up", "job": "a"}), [(NOW_MS, 1.0)])
        self.assertEqual(self.discarded("too_far_in_future"), 1)
        # Inside the grace period is fine.
        code, _ = self.push(body([up("a", (NOW_MS + 9 * 60 * 1000, 3.0))]))
        self.assertEqual(code, 200)

    def test_out_of_order_and_duplicates(self):
        """Out-of-order and conflicting duplicate samples are 400 with Mimir's ids; new ones stored."""
        self.assertEqual(self.push(body([up("a", (NOW_MS, 1.0))]))[0], 200)
        code, text = self.push(body([up("a", (NOW_MS - 5000, 0.5), (NOW_MS, 9.0), (NOW_MS + 1, 2.0))]))
        self.assertEqual(code, 400)
        self.assertIn("out-of-order samples are not allowed (err-mimir-sample-out-of-order). The affected "
                      "sample has timestamp %s and is from series {__name__=\"up\", job=\"a\"}"
                      % format_timestamp(NOW_MS - 5000), text)
        self.assertIn("err-mimir-sample-duplicate-timestamp", text)
        self.assertEqual(self.stored("t1", {"__name__": "up", "job": "a"}), [(NOW_MS, 1.0), (NOW_MS + 1, 2.0)])
        self.assertEqual(self.discarded("sample-out-of-order"), 1)
        self.assertEqual(self.discarded("new-value-for-timestamp"), 1)

    def test_same_duplicate_is_fine(self):
        """Re-sending the same sample (same value) is accepted silently."""
        self.push(body([up("a", (NOW_MS, 1.0))]))
        self.assertEqual(self.push(body([up("a", (NOW_MS, 1.0))])), (200, ""))

    def test_series_limit(self):
        """Series over -ingester.max-global-series-per-user are refused with 400 and the flag."""
        PushFixture().setup(self, max_series=1, max_global_series_per_user=1)
        code, text = self.push(body([up("a", (NOW_MS, 1.0)), up("b", (NOW_MS, 1.0))]))
        self.assertEqual(code, 400)
        self.assertIn("per-user series limit of 1 exceeded (err-mimir-max-series-per-user)", text)
        self.assertIn("-ingester.max-global-series-per-user", text)
        self.assertEqual(self.discarded("per_user_series_limit"), 1)

    def test_rate_limit(self):
        """Past the ingestion burst the tenant gets 429 with Mimir's message; tokens refill over time."""
        PushFixture().setup(self, ingestion_rate=10.0, ingestion_burst_size=20)
        samples = [(NOW_MS + i, float(i)) for i in range(15)]
        self.assertEqual(self.push(body([up("a", *samples)]))[0], 200)
        code, text = self.push(body([up("b", *samples)]))
        self.assertEqual(code, 429)
        self.assertIn("set to 10 items/s with a maximum allowed burst of 20", text)
        self.assertIn("(err-mimir-tenant-max-ingestion-rate)", text)
        self.assertIn("-distributor.ingestion-rate-limit and -distributor.ingestion-burst-size", text)
        self.assertEqual(self.stored("t1", {"__name__": "up", "job": "b"}), [])
        self.assertEqual(self.discarded("rate_limited"), 15)
        # Another tenant has its own bucket.
        self.assertEqual(self.push(body([up("b", *samples)]), tenant="t2")[0], 200)
        self.clock.advance(2)
        self.assertEqual(self.push(body([up("b", *samples)]))[0], 200)

    def test_native_histograms_refused_floats_kept(self):
        """Native histogram samples are refused per series with a clear error; floats are kept."""
        data = body([([("__name__", "h"), ("job", "a")], [(NOW_MS, 1.0)], (), [b"\x08\x01"])])
        code, text = self.push(data)
        self.assertEqual(code, 400)
        self.assertIn("native histogram", text)
        self.assertEqual(self.stored("t1", {"__name__": "h", "job": "a"}), [(NOW_MS, 1.0)])

    def test_special_float_values_stored_bit_exact(self):
        """NaN, infinities and the stale marker are stored as sent."""
        stale = 0x7FF0000000000002
        import struct
        stale_f = struct.unpack("<d", struct.pack("<Q", stale))[0]
        self.push(body([up("a", (NOW_MS, math.inf), (NOW_MS + 1, -math.inf), (NOW_MS + 2, stale_f))]))
        got = self.stored("t1", {"__name__": "up", "job": "a"})
        self.assertEqual(got[:2], [(NOW_MS, math.inf), (NOW_MS + 1, -math.inf)])
        self.assertEqual(struct.pack("<d", got[2][1]), struct.pack("<Q", stale))

    def test_metadata_passed_on(self):
        """Metric metadata reaches the ingester; metadata without a name is dropped."""
        self.push(body([up("a", (NOW_MS, 1.0))], metadata=[(1, "up", "Up or not.", ""), (1, "", "x", "")]))
        self.assertEqual(self.ingesters.tsdbs["t1"].head.metadata, {"up": (1, "Up or not.", "")})

    def test_request_metrics(self):
        """Each request is observed in cortex_request_duration_seconds by route and status."""
        self.push(body([up("a", (NOW_MS, 1.0))]))
        self.push(b"", tenant=None)
        get = self.registry.get_sample_value
        self.assertEqual(get("cortex_request_duration_seconds_count",
                             {"method": "POST", "route": "api_v1_push", "status_code": "200", "ws": "false"}), 1)
        self.assertEqual(get("cortex_request_duration_seconds_count",
                             {"method": "POST", "route": "api_v1_push", "status_code": "401", "ws": "false"}), 1)
        self.assertEqual(self.instrument.inflight, 0)

    def test_user_stats(self):
        """/api/v1/user_stats reports the tenant's series and ingestion rate."""
        self.push(body([up("a", (NOW_MS, 1.0)), up("b", (NOW_MS, 1.0))]))
        self.clock.advance(15)
        resp = self.successResultOf(self.treq.get("http://urdar/api/v1/user_stats",
                                                  headers={"X-Scope-OrgID": "t1"}))
        stats = self.successResultOf(resp.json())
        self.assertEqual(stats["numSeries"], 2)
        self.assertGreater(stats["ingestionRate"], 0)

    def test_all_user_stats_page(self):
        """/distributor/all_user_stats lists each tenant with its active series and ingestion rate."""
        self.push(body([up("a", (NOW_MS, 1.0)), up("b", (NOW_MS, 1.0))]))
        self.push(body([up("c", (NOW_MS, 1.0))]), tenant="t2")
        self.clock.advance(15)
        resp = self.successResultOf(self.treq.get("http://urdar/distributor/all_user_stats"))
        page = self.successResultOf(resp.text())
        self.assertIn("<th>Active series</th>", page)
        self.assertRegex(page, r"<tr><td>t1</td><td>2</td><td>[0-9.]+</td></tr>")
        self.assertRegex(page, r"<tr><td>t2</td><td>1</td><td>[0-9.]+</td></tr>")


class PoolFullTests(SynchronousTestCase):
    def test_full_decode_pool_is_503(self):
        """When the decode pool is full a push gets 503 at once instead of queueing."""
        pools = {}

        def factory(workers, name):
            pools[name] = ManualThreadPool(workers, name)
            return pools[name]
        from tests.support.threads import InlineReactor
        off = Offload(InlineReactor(), factory)
        off.add_pool("decode", 1, 0)
        off.start()
        PushFixture().setup(self, offload=off)
        h = {"X-Scope-OrgID": "t1"}
        first = self.treq.post(URL, data=body([up("a", (NOW_MS, 1.0))]), headers=h)
        self.assertNoResult(first)
        resp = self.successResultOf(self.treq.post(URL, data=body([up("a", (NOW_MS + 1, 1.0))]), headers=h))
        self.assertEqual(resp.code, 503)
        self.assertIn("too many requests in flight", self.successResultOf(resp.text()))
        pools["decode"].run_all()
        self.treq.flush()
        self.assertEqual(self.successResultOf(first).code, 200)


class FormatTests(SynchronousTestCase):
    def test_series_and_time_format(self):
        """Series print like Prometheus' labels.String and times as RFC 3339 UTC."""
        self.assertEqual(format_series([("__name__", "up"), ("a", 'x"y')]), '{__name__="up", a="x\\"y"}')
        self.assertEqual(format_timestamp(0), "1970-01-01T00:00:00Z")
        self.assertEqual(format_timestamp(1500), "1970-01-01T00:00:01.5Z")

    def test_times_outside_python_datetime_format_as_go_does(self):
        """Timestamps before year 1 or after 9999 format as Go's RFC 3339 (no 500 from datetime)."""
        self.assertEqual(format_timestamp(-62135596800000), "0001-01-01T00:00:00Z")
        self.assertEqual(format_timestamp(-62135596800001), "0000-12-31T23:59:59.999Z")
        self.assertEqual(format_timestamp(-62198755200000), "-0001-01-01T00:00:00Z")
        self.assertEqual(format_timestamp(253402300800000), "10000-01-01T00:00:00Z")
        self.assertEqual(format_timestamp(-(1 << 63)), "-292275055-05-16T16:47:04.192Z")
        self.assertEqual(format_timestamp((1 << 63) - 1), "292278994-08-17T07:12:55.807Z")
        self.assertEqual(format_timestamp(951782400000), "2000-02-29T00:00:00Z")


class EarlyPushRefusalTests(SynchronousTestCase):
    """Push and OTLP answered from their headers (net/server.Admission) and the instance limits."""

    def setUp(self):
        from twisted.internet.testing import MemoryReactorClock
        from urdar.components.distributor import InstanceLimits
        from urdar.net.server import HTTPServer
        self.clock = MemoryReactorClock()
        self.clock.advance(NOW_S)
        cfg = Config()
        self.ingesters = FakeIngesterClient()
        self.limits = InstanceLimits(2, 1000, 0)
        self.registry = CollectorRegistry()
        self.distributor = Distributor(Overrides(cfg.limits_defaults()), self.ingesters, inline_offload(),
                                       self.clock, DistributorConfig(max_recv_msg_size=2000),
                                       registry=self.registry, instance_limits=self.limits)
        self.distributor.start()
        self.addCleanup(self.distributor.stop)
        handlers = DistributorHandlers(self.distributor, rng=__import__("random").Random(1))
        app = RouteTable(Tenancy.from_config(cfg)).mount(handlers).app
        self.resource = app.resource()
        self.site = HTTPServer(self.clock, self.resource, "127.0.0.1", 0, Instrument(self.clock),
                               max_body_bytes=2000, admission=app.admission).site

    def open(self, head):
        from twisted.internet.address import IPv4Address
        from twisted.internet.testing import StringTransport
        proto = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        tr = StringTransport()
        proto.makeConnection(tr)
        proto.dataReceived(head)
        return proto, tr

    def head(self, length, tenant=b"t1", path=b"/api/v1/push", ctype=b"application/x-protobuf"):
        return (b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: %s\r\n%sContent-Length: %d\r\n\r\n"
                % (path, ctype, b"X-Scope-OrgID: %s\r\n" % tenant if tenant else b"", length))

    def test_missing_tenant_answered_before_body(self):
        """A push without X-Scope-OrgID declaring a huge body gets 401 without sending any of it."""
        _, tr = self.open(self.head(10 ** 12, tenant=None))
        self.assertTrue(tr.value().startswith(b"HTTP/1.1 401 "), tr.value())
        self.assertTrue(tr.value().endswith(b"no org id\n"))
        self.assertEqual(self.limits.inflight, 0)

    def test_declared_size_over_limit(self):
        """A Content-Length over -distributor.max-recv-msg-size is 413 with Mimir's message, body unread."""
        _, tr = self.open(self.head(10 ** 12))
        self.assertTrue(tr.value().startswith(b"HTTP/1.1 413 "), tr.value())
        self.assertIn(b"message size of 1000000000000 bytes is larger than the allowed limit of 2000 "
                      b"bytes (err-mimir-distributor-max-write-message-size)", tr.value())

    def test_otlp_refusal_in_request_encoding(self):
        """An OTLP JSON push without a tenant gets a JSON google.rpc.Status 401 before its body is read."""
        _, tr = self.open(self.head(10 ** 9, tenant=None, path=b"/otlp/v1/metrics", ctype=b"application/json"))
        self.assertTrue(tr.value().startswith(b"HTTP/1.1 401 "), tr.value())
        self.assertIn(b"Content-Type: application/json", tr.value())
        self.assertTrue(tr.value().endswith(b'{"code":16,"message":"no org id"}'))

    def test_inflight_bytes_cap(self):
        """Past -distributor.instance-limits.max-inflight-push-requests-bytes pushes get 503 until bytes are released."""
        first, tr1 = self.open(self.head(600))
        self.assertEqual(tr1.value(), b"")                     # admitted, body still coming
        self.assertEqual(self.limits.inflight_bytes, 600)
        _, tr2 = self.open(self.head(600))
        self.assertTrue(tr2.value().startswith(b"HTTP/1.1 503 "), tr2.value())
        self.assertIn(b"Retry-After: ", tr2.value())
        self.assertIn(b"the write request has been rejected because the distributor exceeded the allowed "
                      b"total size in bytes of inflight push requests "
                      b"(err-mimir-distributor-max-inflight-push-requests-bytes). To adjust the related "
                      b"limit, configure -distributor.instance-limits.max-inflight-push-requests-bytes, "
                      b"or contact your service administrator.", tr2.value())
        metric = self.registry.get_sample_value
        self.assertEqual(metric("cortex_distributor_inflight_push_requests_bytes"), 600)
        self.assertEqual(metric("cortex_distributor_instance_limits", {"limit": "max_inflight_push_requests_bytes"}), 1000)
        self.assertEqual(metric("cortex_distributor_instance_rejected_requests_total",
                                {"reason": "distributor_max_inflight_push_requests_bytes"}), 1)
        first.connectionLost(None)                             # the first client goes away
        self.assertEqual((self.limits.inflight, self.limits.inflight_bytes), (0, 0))
        _, tr3 = self.open(self.head(600))
        self.assertEqual(tr3.value(), b"")

    def test_chunked_bytes_charged_as_they_arrive(self):
        """A chunked push is charged to the in-flight bytes as it arrives and refused 503 past the cap."""
        proto, tr = self.open(b"POST /api/v1/push HTTP/1.1\r\nHost: x\r\nX-Scope-OrgID: t1\r\n"
                              b"Transfer-Encoding: chunked\r\n\r\n")
        proto.dataReceived(b"200\r\n" + b"a" * 0x200 + b"\r\n")
        self.assertEqual((tr.value(), self.limits.inflight_bytes), (b"", 0x200))
        proto.dataReceived(b"200\r\n" + b"b" * 0x200 + b"\r\n")
        self.assertTrue(tr.value().startswith(b"HTTP/1.1 503 "), tr.value())
        self.assertIn(b"err-mimir-distributor-max-inflight-push-requests-bytes", tr.value())
        self.assertEqual((self.limits.inflight, self.limits.inflight_bytes), (0, 0))

    def test_inflight_requests_cap(self):
        """Past -distributor.instance-limits.max-inflight-push-requests further pushes get 503."""
        self.open(self.head(10))
        self.open(self.head(10))
        _, tr = self.open(self.head(10))
        self.assertTrue(tr.value().startswith(b"HTTP/1.1 503 "), tr.value())
        self.assertIn(b"the write request has been rejected because the distributor exceeded the allowed "
                      b"number of inflight push requests (err-mimir-distributor-max-inflight-push-requests)",
                      tr.value())

    def test_ingestion_rate_cap(self):
        """Once the instance's samples/s average reaches -distributor.instance-limits.max-ingestion-rate pushes get 503."""
        self.limits.max_ingestion_rate = 2.0
        treq = StubTreq(self.resource)
        h = {"X-Scope-OrgID": "t1", "Content-Encoding": "snappy"}
        ok = self.successResultOf(treq.post(URL, data=body([up("a", (NOW_MS, 1.0), (NOW_MS + 1, 2.0))]), headers=h))
        self.assertEqual(ok.code, 200)
        self.clock.advance(1)       # the one-second tick: 2 samples/s
        refused = self.successResultOf(treq.post(URL, data=body([up("a", (NOW_MS + 2, 3.0))]), headers=h))
        self.assertEqual(refused.code, 503)
        self.assertIn("(err-mimir-distributor-max-ingestion-rate). To adjust the related limit, configure "
                      "-distributor.instance-limits.max-ingestion-rate",
                      self.successResultOf(refused.text()))
        self.assertEqual(self.limits.inflight, 0)
        self.assertEqual(self.registry.get_sample_value("cortex_distributor_ingestion_rate_samples_per_second"), 2.0)
