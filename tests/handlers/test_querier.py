"""The Prometheus query API under /prometheus through Klein (StubTreq): a whole -target=all process
(distributor, ingester with real TSDBs, querier) with inline pools; data arrives by remote write."""
import json
import math
import os
import tempfile

import cramjam
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.support.threads import InlineReactor, InlineThreadPool, ManualThreadPool, inline_offload
from tests.support.tmp import mktemp
from urdar.app.config import Config
from urdar.app.modules import Modules
from urdar.components import remoteread as RR
from urdar.engine.remotewrite import encode_write_request
from urdar.net.offload import Offload

NOW_S = 1_700_000_000
NOW_MS = NOW_S * 1000
P = "http://urdar/prometheus/api/v1/"
POOLS = (("decode", 2, 10), ("append", 2, 10), ("compact", 1, 10), ("admin", 1, 10), ("query", 2, 10))


def _read_pb2():
    """read_pb2 compiled from urdar/proto by the protobuf runtime's protoc (cached per process)."""
    import importlib
    import sys
    from grpc_tools import protoc
    proto_dir = os.path.join(os.path.dirname(__file__), "..", "..", "urdar", "proto")
    out = tempfile.mkdtemp(prefix="urdar-pb2-")
    rc = protoc.main(["protoc", "-I" + os.path.abspath(proto_dir), "--python_out=" + out,
                      "types.proto", "read.proto"])
    if rc:
        raise RuntimeError("protoc failed (%d)" % rc)
    sys.path.insert(0, out)
    try:
        return importlib.import_module("read_pb2")
    finally:
        sys.path.remove(out)


class QueryAPIFixture:
    def setup(self, test, offload=None, **config):
        test.clock = Clock()
        test.clock.advance(NOW_S)
        cfg = Config()
        cfg.set("blocks_storage.tsdb.dir", mktemp(test))
        cfg.set("limits.max_global_exemplars_per_user", 100)
        for k, v in config.items():
            cfg.set(k, v)
        test.offload = offload or inline_offload(POOLS)
        test.modules = Modules(cfg, None, test.clock, test.offload)
        test.successResultOf(test.modules.start())
        test.treq = StubTreq(test.modules.resource())


class QueryAPITestCase(SynchronousTestCase):
    config = {}

    def setUp(self):
        QueryAPIFixture().setup(self, **self.config)

    def push(self, series, tenant="t1", metadata=()):
        body = bytes(cramjam.snappy.compress_raw(encode_write_request(series, metadata=metadata)))
        r = self.successResultOf(self.treq.post("http://urdar/api/v1/push", data=body, headers={
            "X-Scope-OrgID": tenant, "Content-Encoding": "snappy"}))
        self.assertEqual(r.code, 200, self.successResultOf(r.text()))

    def request(self, path, tenant="t1", method="GET", data=None, headers=None):
        h = {"X-Scope-OrgID": tenant} if tenant else {}
        h.update(headers or {})
        if method == "GET":
            d = self.treq.get(P + path, headers=h)
        else:
            d = self.treq.post(P + path, data=data, headers=h)
        r = self.successResultOf(d)
        return r.code, self.successResultOf(r.content()), r

    def get(self, path, tenant="t1", **kw):
        code, body, _ = self.request(path, tenant, **kw)
        try:
            return code, json.loads(body)
        except ValueError:
            return code, body.decode()

    def ok(self, path, tenant="t1", **kw):
        code, obj = self.get(path, tenant, **kw)
        self.assertEqual(code, 200, obj)
        self.assertEqual(obj["status"], "success")
        return obj["data"]

    def bad(self, path, message, code=400, error_type="bad_data", **kw):
        got, obj = self.get(path, **kw)
        self.assertEqual((got, obj), (code, {"status": "error", "errorType": error_type, "error": message}))

    def load(self):
        """Two tenants: t1 has up{job=a,b} every 15 s for 10 min, t2 a single series."""
        series = []
        for job, base in (("a", 0.0), ("b", 100.0)):
            samples = [(NOW_MS - 600_000 + 15_000 * i + 7, base + i) for i in range(41)]
            series.append(([("__name__", "up"), ("instance", "i1"), ("job", job)], samples))
        series.append(([("__name__", "http_requests_total"), ("code", "200")],
                       [(NOW_MS - 60_000 + 3, 10.0), (NOW_MS - 30_000 + 3, 20.0)]))
        self.push(series, metadata=[(1, "http_requests_total", "Requests.", "")])
        self.push([([("__name__", "up"), ("job", "other")], [(NOW_MS - 5000, 7.0)])], tenant="t2")


class InstantQueryTests(QueryAPITestCase):
    def setUp(self):
        super().setUp()
        self.load()

    def test_vector_at_time(self):
        """An instant query returns the newest sample per series with string values and the eval time."""
        data = self.ok("query?query=up&time=%d" % NOW_S)
        self.assertEqual(data["resultType"], "vector")
        self.assertEqual([(r["metric"]["job"], r["value"]) for r in data["result"]],
                         [("a", [NOW_S, "39"]), ("b", [NOW_S, "139"])])

    def test_default_time_is_now(self):
        """Without time= the query is evaluated at the current (clock) time."""
        data = self.ok("query?query=sum(up)")
        self.assertEqual(data["result"], [{"metric": {}, "value": [NOW_S, "178"]}])

    def test_scalar_string_and_fractional_time(self):
        """Scalars and strings render as [ts, "v"], fractional times with three decimals."""
        self.assertEqual(self.ok("query?query=1%2F3&time=1.5"),
                         {"resultType": "scalar", "result": [1.5, "0.3333333333333333"]})
        self.assertEqual(self.ok('query?query="x"&time=2'), {"resultType": "string", "result": [2, "x"]})
        self.assertEqual(self.ok("query?query=1e21&time=0")["result"], [0, "1e+21"])
        self.assertEqual(self.ok("query?query=-1%2F0&time=0")["result"], [0, "-Inf"])

    def test_post_form(self):
        """POST with a form body works like GET."""
        data = self.ok("query", method="POST", data={"query": "up{job='a'}", "time": str(NOW_S)})
        self.assertEqual(len(data["result"]), 1)

    def test_rfc3339_time(self):
        """time= also accepts RFC3339."""
        data = self.ok("query?query=up&time=2023-11-14T22:13:20Z")
        self.assertEqual(data["result"][0]["value"][0], NOW_S)

    def test_range_vector_result(self):
        """A range selector returns a matrix of raw samples."""
        data = self.ok("query?query=up{job='a'}[1m]&time=%d" % NOW_S)
        self.assertEqual(data["resultType"], "matrix")
        self.assertEqual(len(data["result"][0]["values"]), 4)
        self.assertEqual(data["result"][0]["values"][0][0], NOW_S - 60 + 0.007)

    def test_lookback_delta(self):
        """lookback_delta= narrows how far back instant selectors look."""
        data = self.ok("query?query=http_requests_total&time=%d&lookback_delta=10s" % NOW_S)
        self.assertEqual(data["result"], [])
        data = self.ok("query?query=http_requests_total&time=%d&lookback_delta=1m" % NOW_S)
        self.assertEqual(len(data["result"]), 1)

    def test_parse_errors(self):
        """A query that does not parse is 400 bad_data naming the query parameter and position."""
        code, obj = self.get("query?query=sum(up")
        self.assertEqual(code, 400)
        self.assertEqual(obj["errorType"], "bad_data")
        self.assertTrue(obj["error"].startswith('invalid parameter "query": 1:'), obj)
        self.assertIn("parse error", obj["error"])

    def test_experimental_functions_are_off_by_default(self):
        """Without -querier.promql-experimental-functions-enabled an experimental function is
        400 bad_data with Prometheus' parse error, on both query endpoints."""
        msg = 'invalid parameter "query": 1:1: parse error: function "sort_by_label" is not enabled'
        self.bad('query?query=sort_by_label(up,"job")&time=%d' % NOW_S, msg)
        self.bad('query_range?query=sort_by_label(up,"job")&start=%d&end=%d&step=10'
                 % (NOW_S - 60, NOW_S), msg)

    def test_huge_subquery_grid(self):
        """count_over_time(missing[30d:1ms]) answers an empty vector at once; over an existing series it is 422."""
        data = self.ok("query?query=count_over_time(nonexistent_metric[30d:1ms])&time=%d" % NOW_S)
        self.assertEqual(data, {"resultType": "vector", "result": []})
        code, obj = self.get("query?query=count_over_time(up[30d:1ms])&time=%d" % NOW_S)
        self.assertEqual((code, obj["errorType"]), (422, "execution"), obj)
        self.assertIn("too many samples", obj["error"])

    def test_long_chains_and_deep_nesting(self):
        """A 1,000-term operator chain answers 200; nesting past the parser's bound is 400 bad_data, never 500."""
        q = "%2B".join(["up"] * 1000)
        data = self.ok("query?query=sum(%s)&time=%d" % (q, NOW_S))
        self.assertEqual(data["result"][0]["value"], [NOW_S, str((39 + 139) * 1000)])
        code, obj = self.get("query?query=%s1%s&time=%d" % ("(" * 150, ")" * 150, NOW_S))
        self.assertEqual((code, obj["errorType"]), (400, "bad_data"), obj)
        self.assertIn("expression nested too deeply", obj["error"])

    def test_time_errors(self):
        """A bad time is rejected with Prometheus' text."""
        self.bad("query?query=up&time=x",
                 'invalid parameter "time": Invalid time value for \'time\': cannot parse "x" to a valid timestamp')
        self.bad("query?query=up&timeout=zz", 'invalid parameter "timeout": cannot parse "zz" to a valid duration')

    def test_execution_error_is_422(self):
        """Errors during evaluation are 422 execution."""
        code, obj = self.get("query?query=up%20%2B%20on()%20up&time=" + str(NOW_S))
        self.assertEqual(code, 422, obj)
        self.assertEqual(obj["errorType"], "execution")
        self.assertIn("many-to-many matching not allowed", obj["error"])

    def test_tenant_isolation(self):
        """Each tenant sees only its own series; a missing tenant is 401."""
        data = self.ok("query?query=up&time=%d" % NOW_S, tenant="t2")
        self.assertEqual([r["metric"]["job"] for r in data["result"]], ["other"])
        self.assertEqual(self.ok("query?query=up&time=%d" % NOW_S, tenant="nobody")["result"], [])
        code, text = self.get("query?query=up", tenant=None)
        self.assertEqual((code, text), (401, "no org id\n"))

    def test_content_type(self):
        """Responses are application/json."""
        _, _, resp = self.request("query?query=1")
        self.assertEqual(resp.headers.getRawHeaders("Content-Type"), ["application/json"])


class ExperimentalFunctionsTests(QueryAPITestCase):
    config = {"querier.promql_experimental_functions_enabled": True}

    def setUp(self):
        super().setUp()
        self.load()

    def test_enabled_by_the_flag(self):
        """-querier.promql-experimental-functions-enabled lets sort_by_label_desc and limitk run."""
        data = self.ok('query?query=sort_by_label_desc(up,"job")&time=%d' % NOW_S)
        self.assertEqual([r["metric"]["job"] for r in data["result"]], ["b", "a"])
        data = self.ok("query?query=count(limitk(1,up))&time=%d" % NOW_S)
        self.assertEqual(data["result"], [{"metric": {}, "value": [NOW_S, "1"]}])


class RangeQueryTests(QueryAPITestCase):
    def setUp(self):
        super().setUp()
        self.load()

    def test_matrix(self):
        """A range query returns one series per label set with points on start + k*step."""
        data = self.ok("query_range?query=up&start=%d&end=%d&step=60" % (NOW_S - 300, NOW_S))
        self.assertEqual(data["resultType"], "matrix")
        self.assertEqual([r["metric"]["job"] for r in data["result"]], ["a", "b"])
        self.assertEqual([p[0] for p in data["result"][0]["values"]], list(range(NOW_S - 300, NOW_S + 1, 60)))
        self.assertEqual(data["result"][0]["values"][-1][1], "39")

    def test_step_as_duration_and_rfc3339(self):
        """step= accepts durations and start/end RFC3339."""
        data = self.ok("query_range?query=up{job='a'}&start=2023-11-14T22:08:20Z&end=2023-11-14T22:13:20Z&step=1m")
        self.assertEqual(len(data["result"][0]["values"]), 6)

    def test_parameter_errors(self):
        """Bad start, end, step and too many points answer with Prometheus' texts."""
        self.bad("query_range?query=up&start=x&end=1&step=1",
                 'invalid parameter "start": cannot parse "x" to a valid timestamp')
        self.bad("query_range?query=up&start=1&end=&step=1",
                 'invalid parameter "end": cannot parse "" to a valid timestamp')
        self.bad("query_range?query=up&start=10&end=1&step=1",
                 'invalid parameter "end": end timestamp must not be before start time')
        self.bad("query_range?query=up&start=1&end=10&step=0",
                 'invalid parameter "step": zero or negative query resolution step widths are not '
                 'accepted. Try a positive integer')
        self.bad("query_range?query=up&start=1&end=10&step=-1m",
                 'invalid parameter "step": cannot parse "-1m" to a valid duration')
        self.bad("query_range?query=up&start=0&end=11001&step=1",
                 "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the "
                 "query resolution (?step=XX)")
        self.ok("query_range?query=up&start=0&end=11000&step=1")
        self.bad("query_range?query=up[5m]&start=0&end=1&step=1",
                 'invalid parameter "query": invalid expression type "range vector" for range query, '
                 'must be Scalar or instant Vector')


def manual_query_offload(pools=POOLS):
    """(offload, pool): every pool runs inline except "query", whose jobs wait for pool.run_all()."""
    pool = ManualThreadPool()
    off = Offload(InlineReactor(), lambda w, name: pool if name == "query" else InlineThreadPool())
    for name, w, q in pools:
        off.add_pool(name, w, q)
    off.start()
    return off, pool


class TimeoutAndLimitTests(SynchronousTestCase):
    def test_timeout_is_503(self):
        """A query still running after -querier.timeout answers 503 errorType timeout."""
        off, pool = manual_query_offload()
        QueryAPIFixture().setup(self, offload=off, **{"querier.timeout": 5000})
        d = self.treq.get(P + "query?query=1", headers={"X-Scope-OrgID": "t1"})
        self.assertNoResult(d)
        self.clock.advance(6)
        self.treq.flush()
        r = self.successResultOf(d)
        self.assertEqual(r.code, 503)
        self.assertEqual(json.loads(self.successResultOf(r.content())),
                         {"status": "error", "errorType": "timeout",
                          "error": "query timed out in expression evaluation"})
        pool.run_all()      # the abandoned evaluation finishes (or sees the cancel) harmlessly

    def test_max_samples_is_422(self):
        """A query loading more than -querier.max-samples is 422 with Prometheus' message."""
        QueryAPIFixture().setup(self, **{"querier.max_samples": 5})
        QueryAPITestCase.push(self, [([("__name__", "m"), ("i", str(i))], [(NOW_MS - 1000, 1.0)])
                                     for i in range(10)])
        r = self.successResultOf(self.treq.get(P + "query?query=m", headers={"X-Scope-OrgID": "t1"}))
        self.assertEqual(r.code, 422)
        self.assertEqual(json.loads(self.successResultOf(r.content())), {
            "status": "error", "errorType": "execution",
            "error": "query processing would load too many samples into memory in query execution"})

    def test_full_pool_is_503(self):
        """When the query pool is full the query is refused at once with 503 unavailable."""
        off, pool = manual_query_offload(POOLS[:-1] + (("query", 1, 0),))
        QueryAPIFixture().setup(self, offload=off)
        first = self.treq.get(P + "query?query=1", headers={"X-Scope-OrgID": "t1"})
        r = self.successResultOf(self.treq.get(P + "query?query=1", headers={"X-Scope-OrgID": "t1"}))
        self.assertEqual(r.code, 503)
        self.assertEqual(json.loads(self.successResultOf(r.content()))["errorType"], "unavailable")
        pool.run_all()
        self.treq.flush()
        self.assertEqual(self.successResultOf(first).code, 200)


class ManySelectsTests(SynchronousTestCase):
    def test_remote_read_with_many_queries_fits_the_pool(self):
        """A remote read of 60 queries does not overflow a query pool bounded at 12 jobs."""
        off, pool = manual_query_offload()
        QueryAPIFixture().setup(self, offload=off)
        QueryAPITestCase.push(self, [([("__name__", "m"), ("i", str(i))], [(NOW_MS - 1000, 1.0)])
                                     for i in range(60)])
        body = RR.encode_read_request([(NOW_MS - 60_000, NOW_MS, [(0, "i", str(i))]) for i in range(60)])
        d = self.treq.post(P + "read", data=bytes(cramjam.snappy.compress_raw(body)),
                           headers={"X-Scope-OrgID": "t1", "Content-Encoding": "snappy"})
        while pool.pending:
            pool.run_all()
            self.treq.flush()
        r = self.successResultOf(d)
        self.assertEqual(r.code, 200, self.successResultOf(r.content()))
        raw = bytes(cramjam.snappy.decompress_raw(self.successResultOf(r.content())))
        self.assertEqual(raw.count(b"\x0a\x08__name__\x12\x01m"), 60)


class OffReactorTests(SynchronousTestCase):
    """Work that grows with the request waits for the query pool instead of running in the handler."""

    def setUp(self):
        off, self.pool = manual_query_offload()
        QueryAPIFixture().setup(self, offload=off)
        QueryAPITestCase.push(self, [([("__name__", "m"), ("i", str(i))], [(NOW_MS - 1000, 1.0)])
                                     for i in range(3)])
        self.calls = []

    def spy(self, module, name):
        real = getattr(module, name)

        def wrapper(*args, **kwargs):
            self.calls.append(name)
            return real(*args, **kwargs)
        self.patch(module, name, wrapper)

    def finish(self, d):
        self.assertEqual(self.calls, [])        # nothing ran before the pool did
        while self.pool.pending:
            self.pool.run_all()
            self.treq.flush()
        r = self.successResultOf(d)
        self.assertEqual(r.code, 200, self.successResultOf(r.content()))
        self.assertNotEqual(self.calls, [])

    def test_query_parsing(self):
        """A long PromQL text is parsed in the pool, not on the reactor."""
        from urdar.components.querier import SMALL_QUERY_CHARS
        from urdar.handlers import querier as HQ
        self.spy(HQ, "parse_expr")
        query = "sum(m)" + " " * SMALL_QUERY_CHARS
        self.finish(self.treq.post(P + "query", data={"query": query},
                                   headers={"X-Scope-OrgID": "t1"}))

    def test_remote_read_decoding(self):
        """A remote read request body is decoded in the pool, not on the reactor."""
        self.spy(RR, "decode_read_request")
        body = RR.encode_read_request([(NOW_MS - 60_000, NOW_MS, [(0, "__name__", "m")])])
        self.finish(self.treq.post(P + "read", data=bytes(cramjam.snappy.compress_raw(body)),
                                   headers={"X-Scope-OrgID": "t1", "Content-Encoding": "snappy"}))

    def test_series_rendering(self):
        """/series matchers are parsed and the answer rendered in the pool, not on the reactor."""
        from urdar.handlers import querier as HQ
        from urdar.handlers import render as R
        self.spy(HQ, "parse_metric_selector")
        self.spy(R, "render_series")
        self.finish(self.treq.get(P + "series?match[]=m", headers={"X-Scope-OrgID": "t1"}))
        self.assertEqual(sorted(set(self.calls)), ["parse_metric_selector", "render_series"])


class SeriesLabelsTests(QueryAPITestCase):
    def setUp(self):
        super().setUp()
        self.load()

    def test_series(self):
        """series returns the label sets matching any match[], sorted, per tenant."""
        data = self.ok("series?match[]=up&match[]=http_requests_total")
        self.assertEqual(data, [{"__name__": "http_requests_total", "code": "200"},
                                {"__name__": "up", "instance": "i1", "job": "a"},
                                {"__name__": "up", "instance": "i1", "job": "b"}])
        self.assertEqual(self.ok("series?match[]=up", tenant="t2"), [{"__name__": "up", "job": "other"}])
        self.assertEqual(self.ok("series", method="POST", data={"match[]": "up{job='b'}"}),
                         [{"__name__": "up", "instance": "i1", "job": "b"}])

    def test_series_time_range_and_limit(self):
        """start/end restrict series to those with data; limit truncates with a warning."""
        self.assertEqual(self.ok("series?match[]=http_requests_total&end=%d" % (NOW_S - 120)), [])
        code, obj = self.get("series?match[]=up&limit=1")
        self.assertEqual(obj, {"status": "success", "data": [{"__name__": "up", "instance": "i1", "job": "a"}],
                               "warnings": ["results truncated due to limit"]})

    def test_series_errors(self):
        """Missing or empty-matching match[] and bad limits are 400 with Prometheus' texts."""
        self.bad("series", "no match[] parameter provided")
        self.bad("series?match[]={job=~'.*'}",
                 'invalid parameter "match[]": 1:1: parse error: vector selector must contain at least '
                 'one non-empty matcher')
        code, obj = self.get("series?match[]=up{")
        self.assertEqual(code, 400)
        self.assertTrue(obj["error"].startswith('invalid parameter "match[]": 1:'), obj)
        self.bad("series?match[]=up&limit=x",
                 'invalid parameter "limit": strconv.Atoi: parsing "x": invalid syntax')
        self.bad("series?match[]=up&start=yesterday",
                 'invalid parameter "start": Invalid time value for \'start\': cannot parse "yesterday" '
                 'to a valid timestamp')

    def test_labels(self):
        """labels lists names, optionally restricted by match[], with limit."""
        self.assertEqual(self.ok("labels"), ["__name__", "code", "instance", "job"])
        self.assertEqual(self.ok("labels?match[]=up"), ["__name__", "instance", "job"])
        self.assertEqual(self.ok("labels", tenant="t2"), ["__name__", "job"])
        code, obj = self.get("labels?limit=2")
        self.assertEqual(obj["data"], ["__name__", "code"])
        self.assertEqual(obj["warnings"], ["results truncated due to limit"])

    def test_label_values(self):
        """label/<name>/values lists values, restricted by match[] and tenant."""
        self.assertEqual(self.ok("label/job/values"), ["a", "b"])
        self.assertEqual(self.ok("label/__name__/values"), ["http_requests_total", "up"])
        self.assertEqual(self.ok("label/job/values?match[]=up{job!='a'}"), ["b"])
        self.assertEqual(self.ok("label/job/values", tenant="t2"), ["other"])
        self.assertEqual(self.ok("label/nope/values"), [])
        self.bad("label/a-b/values", 'invalid label name: "a-b"')
        self.assertEqual(self.ok("label/U__job/values"), ["a", "b"])

    def test_min_max_time_texts(self):
        """Prometheus' own MinTime/MaxTime texts (sent by clients for 'unbounded') are accepted."""
        self.assertEqual(len(self.ok("labels?start=-292273086-05-16T16:47:06Z"
                                     "&end=292277025-08-18T07:12:54.999999999Z")), 4)


class MetadataExemplarTests(QueryAPITestCase):
    def test_metadata(self):
        """metadata returns type/help/unit per metric family, with limit and metric filters."""
        self.load()
        self.push([([("__name__", "g")], [(NOW_MS, 1.0)])], metadata=[(2, "g", "A gauge.", "bytes")])
        self.assertEqual(self.ok("metadata"), {
            "g": [{"type": "gauge", "help": "A gauge.", "unit": "bytes"}],
            "http_requests_total": [{"type": "counter", "help": "Requests.", "unit": ""}]})
        self.assertEqual(list(self.ok("metadata?limit=1")), ["g"])
        self.assertEqual(list(self.ok("metadata?metric=g")), ["g"])
        self.assertEqual(self.ok("metadata", tenant="t2"), {})
        self.bad("metadata?limit=x", "limit must be a number")
        self.bad("metadata?limit_per_metric=x", "limit_per_metric must be a number")

    def test_exemplars(self):
        """query_exemplars returns exemplars of the query's selectors within [start, end]."""
        self.push([([("__name__", "req_bucket"), ("le", "1")], [(NOW_MS - 1000, 3.0)],
                    [([("trace_id", "abc")], NOW_MS - 1500, 0.25)])])
        data = self.ok("query_exemplars?query=sum(rate(req_bucket[5m]))&start=%d&end=%d" % (NOW_S - 10, NOW_S))
        self.assertEqual(data, [{"seriesLabels": {"__name__": "req_bucket", "le": "1"},
                                 "exemplars": [{"labels": {"trace_id": "abc"}, "value": "0.25",
                                                "timestamp": NOW_S - 1.5}]}])
        self.assertEqual(self.ok("query_exemplars?query=req_bucket&start=%d&end=%d" % (NOW_S - 1, NOW_S)), [])
        self.assertEqual(self.ok("query_exemplars?query=req_bucket", tenant="t2"), [])
        self.assertIsNone(self.ok("query_exemplars?query=1"))
        self.bad("query_exemplars?query=up&start=10&end=1",
                 'invalid parameter "end": end timestamp must not be before start timestamp')


class CardinalityDisabledTests(QueryAPITestCase):
    def test_disabled_by_default(self):
        """Cardinality endpoints are 400 with Mimir's text unless enabled for the tenant."""
        for ep in ("cardinality/label_names", "cardinality/label_values?label_names[]=job"):
            code, text = self.get(ep)
            self.assertEqual((code, text), (400, "cardinality analysis is disabled for the tenant: t1\n"))


class CardinalityTests(QueryAPITestCase):
    config = {"limits.cardinality_analysis_enabled": True}

    def setUp(self):
        super().setUp()
        self.load()

    def test_label_names(self):
        """label_names counts distinct values per name, sorted by count desc then name."""
        self.assertEqual(self.ok_plain("cardinality/label_names"), {
            "label_values_count_total": 6, "label_names_count": 4,
            "cardinality": [{"label_name": "__name__", "label_values_count": 2},
                            {"label_name": "job", "label_values_count": 2},
                            {"label_name": "code", "label_values_count": 1},
                            {"label_name": "instance", "label_values_count": 1}]})
        got = self.ok_plain("cardinality/label_names?selector=up&limit=1")
        self.assertEqual(got, {"label_values_count_total": 4, "label_names_count": 3,
                               "cardinality": [{"label_name": "job", "label_values_count": 2}]})
        self.assertEqual(self.ok_plain("cardinality/label_names", tenant="t2")["label_names_count"], 2)

    def test_label_values(self):
        """label_values counts series per value of each requested name."""
        got = self.ok_plain("cardinality/label_values?label_names[]=job&label_names[]=code", method="POST",
                            data={"label_names[]": ["job", "code"]})
        self.assertEqual(got, {"series_count_total": 3, "labels": [
            {"label_name": "job", "label_values_count": 2, "series_count": 2,
             "cardinality": [{"label_value": "a", "series_count": 1}, {"label_value": "b", "series_count": 1}]},
            {"label_name": "code", "label_values_count": 1, "series_count": 1,
             "cardinality": [{"label_value": "200", "series_count": 1}]}]})
        got = self.ok_plain("cardinality/label_values?label_names[]=job&selector={job='b'}&limit=0")
        self.assertEqual(got["labels"], [{"label_name": "job", "label_values_count": 1, "series_count": 1,
                                          "cardinality": []}])

    def test_parameter_errors(self):
        """Bad parameters are plain-text 400s with Mimir's texts."""
        for path, text in [
                ("cardinality/label_values", "'label_names[]' param is required"),
                ("cardinality/label_values?label_names[]=a-b", "invalid 'label_names' param 'a-b'"),
                ("cardinality/label_names?limit=501", "'limit' param cannot be greater than '500'"),
                ("cardinality/label_names?limit=-1", "'limit' param cannot be less than '0'"),
                ("cardinality/label_names?limit=1&limit=2", "multiple 'limit' params are not allowed"),
                ("cardinality/label_names?selector=a&selector=b", "multiple 'selector' params are not allowed"),
                ("cardinality/label_names?count_method=x",
                 "invalid 'count_method' param 'x'. valid options are: [active,inmemory]")]:
            self.assertEqual(self.get(path), (400, text + "\n"), path)
        code, text = self.get("cardinality/label_names?selector={")
        self.assertEqual(code, 400)
        self.assertTrue(text.startswith("failed to parse selector: 1:"), text)

    def ok_plain(self, path, tenant="t1", **kw):
        code, obj = self.get(path, tenant, **kw)
        self.assertEqual(code, 200, obj)
        return obj


class RemoteReadTests(QueryAPITestCase):
    pb = None

    def setUp(self):
        super().setUp()
        self.load()
        if RemoteReadTests.pb is None:
            RemoteReadTests.pb = _read_pb2()

    def read(self, queries, accepted=(), tenant="t1"):
        req = self.pb.ReadRequest()
        for start, end, matchers in queries:
            q = req.queries.add(start_timestamp_ms=start, end_timestamp_ms=end)
            for kind, name, value in matchers:
                q.matchers.add(type=kind, name=name, value=value)
        req.accepted_response_types.extend(accepted)
        body = bytes(cramjam.snappy.compress_raw(req.SerializeToString()))
        return self.request("read", tenant, method="POST", data=body, headers={
            "Content-Encoding": "snappy", "Content-Type": "application/x-protobuf",
            "X-Prometheus-Remote-Read-Version": "0.1.0"})

    def test_samples_response(self):
        """A SAMPLES read returns a snappy ReadResponse, one result per query, series sorted."""
        code, body, resp = self.read([(NOW_MS - 60_000, NOW_MS, [(0, "__name__", "up")]),
                                      (0, NOW_MS, [(2, "__name__", "http.*"), (1, "code", "500")])])
        self.assertEqual(code, 200, body)
        self.assertEqual(resp.headers.getRawHeaders("Content-Type"), ["application/x-protobuf"])
        self.assertEqual(resp.headers.getRawHeaders("Content-Encoding"), ["snappy"])
        msg = self.pb.ReadResponse.FromString(bytes(cramjam.snappy.decompress_raw(body)))
        self.assertEqual(len(msg.results), 2)
        ts = msg.results[0].timeseries
        self.assertEqual([[(l.name, l.value) for l in s.labels] for s in ts],
                         [[("__name__", "up"), ("instance", "i1"), ("job", "a")],
                          [("__name__", "up"), ("instance", "i1"), ("job", "b")]])
        self.assertEqual([(s.timestamp, s.value) for s in ts[1].samples],
                         [(NOW_MS - 600_000 + 15_000 * i + 7, 100.0 + i) for i in range(36, 40)])
        self.assertEqual([(s.timestamp, s.value) for s in msg.results[1].timeseries[0].samples],
                         [(NOW_MS - 60_000 + 3, 10.0), (NOW_MS - 30_000 + 3, 20.0)])

    def test_streamed_chunks(self):
        """STREAMED_XOR_CHUNKS returns CRC-checked, length-prefixed ChunkedReadResponse frames."""
        from urdar.engine.encoding import crc32c, decode_uvarint
        from urdar.engine.xorchunk import decode_xor
        code, body, resp = self.read([(0, NOW_MS, [(0, "__name__", "up")]),
                                      (0, NOW_MS, [(0, "code", "200")])], accepted=[1, 0])
        self.assertEqual(code, 200, body)
        self.assertEqual(resp.headers.getRawHeaders("Content-Type"),
                         ["application/x-streamed-protobuf; proto=prometheus.ChunkedReadResponse"])
        frames, pos = [], 0
        while pos < len(body):
            n, used = decode_uvarint(body[pos:pos + 10])
            pos += used
            crc = int.from_bytes(body[pos:pos + 4], "big")
            msg = body[pos + 4:pos + 4 + n]
            self.assertEqual(crc, crc32c(msg))
            frames.append(self.pb.ChunkedReadResponse.FromString(msg))
            pos += 4 + n
        self.assertEqual([f.query_index for f in frames], [0, 0, 1])
        series = frames[1].chunked_series[0]
        self.assertEqual([(l.name, l.value) for l in series.labels],
                         [("__name__", "up"), ("instance", "i1"), ("job", "b")])
        chunk = series.chunks[0]
        self.assertEqual(chunk.type, 1)
        ts, vs = decode_xor(chunk.data)
        self.assertEqual((chunk.min_time_ms, chunk.max_time_ms), (ts[0], ts[-1]))
        self.assertEqual(list(vs), [100.0 + i for i in range(40)])

    def test_errors_and_isolation(self):
        """Unsupported response types and garbage are 400; tenants only read their own data."""
        code, body, _ = self.read([(0, NOW_MS, [(0, "__name__", "up")])], accepted=[7])
        self.assertEqual(code, 400)
        self.assertIn(b"server does not support any of the requested response types", body)
        code, body, _ = self.request("read", method="POST", data=b"\xff\xff\xff")
        self.assertEqual(code, 400)
        code, body, _ = self.read([(0, NOW_MS, [(0, "__name__", "up")])], tenant="t2")
        msg = self.pb.ReadResponse.FromString(bytes(cramjam.snappy.decompress_raw(body)))
        self.assertEqual([[l.value for l in s.labels] for s in msg.results[0].timeseries], [["up", "other"]])
        self.assertEqual(self.request("read", tenant=None, method="POST", data=b"")[0], 401)


class FetchLimitTests(QueryAPITestCase):
    """-querier.max-fetched-series-per-query applies to queries, /series and remote read."""
    config = {"limits.max_fetched_series_per_query": 1}
    read = RemoteReadTests.read

    def setUp(self):
        super().setUp()
        self.load()
        if RemoteReadTests.pb is None:
            RemoteReadTests.pb = _read_pb2()
        self.pb = RemoteReadTests.pb

    def test_query_over_limit_is_422(self):
        """A query touching more series than the limit is 422 execution with Mimir's error id."""
        code, obj = self.get("query?query=up&time=%d" % NOW_S)
        self.assertEqual((code, obj["errorType"]), (422, "execution"))
        self.assertTrue(obj["error"].startswith(
            "the query exceeded the maximum number of series (limit: 1 series) "
            "(err-mimir-max-series-per-query)"), obj["error"])
        self.ok("query?query=http_requests_total&time=%d" % NOW_S)

    def test_series_and_remote_read_over_limit(self):
        """/series and remote read are refused the same way (422; remote read in plain text)."""
        code, obj = self.get("series?match[]=up")
        self.assertEqual((code, obj["errorType"]), (422, "execution"))
        self.assertIn("err-mimir-max-series-per-query", obj["error"])
        code, body, _ = self.read([(0, NOW_MS, [(0, "__name__", "up")])])
        self.assertEqual(code, 422)
        self.assertIn(b"-querier.max-fetched-series-per-query", body)


class RemoteReadCodecTests(SynchronousTestCase):
    def test_request_round_trip_with_runtime(self):
        """Our ReadRequest encoder and decoder agree with the protobuf runtime."""
        pb = RemoteReadTests.pb or _read_pb2()
        RemoteReadTests.pb = pb
        raw = RR.encode_read_request([(-5, 2 ** 40, [(0, "a", "b"), (3, "c", "d.*")])], accepted=[1, 0])
        msg = pb.ReadRequest.FromString(raw)
        self.assertEqual((msg.queries[0].start_timestamp_ms, msg.queries[0].end_timestamp_ms), (-5, 2 ** 40))
        self.assertEqual(list(msg.accepted_response_types), [1, 0])
        queries, accepted = RR.decode_read_request(msg.SerializeToString())
        self.assertEqual(accepted, [1, 0])
        start, end, ms = queries[0]
        self.assertEqual((start, end), (-5, 2 ** 40))
        self.assertEqual([(m.kind, m.name, m.value) for m in ms], [("=", "a", "b"), ("!~", "c", "d.*")])

    def test_frames_split_chunks(self):
        """A series of 250 samples streams as 3 XOR chunks (120, 120, 10), in one frame."""
        pb = RemoteReadTests.pb or _read_pb2()
        RemoteReadTests.pb = pb
        from urdar.engine.labels import encode_labels
        frames = list(RR.chunked_frames(2, [(encode_labels([("__name__", "x")]), list(range(250)),
                                             [math.pi] * 250)]))
        self.assertEqual(len(frames), 1)
        from urdar.engine.encoding import decode_uvarint
        n, used = decode_uvarint(frames[0][:10])
        msg = pb.ChunkedReadResponse.FromString(frames[0][used + 4:])
        self.assertEqual(msg.query_index, 2)
        self.assertEqual([(c.min_time_ms, c.max_time_ms) for c in msg.chunked_series[0].chunks],
                         [(0, 119), (120, 239), (240, 249)])
        small = list(RR.chunked_frames(0, [(encode_labels([("a", "b")]), list(range(250)), [0.5] * 250)],
                                       max_frame_bytes=10))
        self.assertEqual(len(small), 3)
