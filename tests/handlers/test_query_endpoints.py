"""Current Mimir's newer read endpoints through a -target=all process: cardinality/active_series
(per-tenant gate, isolation, Mimir's errors) and query_exemplars with the query-frontend
running."""
import os
from unittest import mock

import cramjam

from tests.handlers.test_querier import NOW_MS, NOW_S, QueryAPIFixture, QueryAPITestCase
from tests.support.tmp import mktemp
from urdar.engine.remotewrite import encode_write_request


class ActiveSeriesTests(QueryAPITestCase):
    def setUp(self):
        d = mktemp(self)
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, "runtime.yaml")
        with open(path, "w") as f:     # the gate is per tenant: t1 and t2 on, t3 off
            f.write("overrides:\n  t1:\n    cardinality_analysis_enabled: true\n"
                    "  t2:\n    cardinality_analysis_enabled: true\n")
        QueryAPIFixture().setup(self, **{"runtime_config.file": (path,)})
        self.load()
        self.push([([("__name__", "up"), ("job", "c")], [(NOW_MS - 1000, 1.0)])], tenant="t3")

    def test_series_of_the_tenant_matching_the_selector(self):
        for method in ("GET", "POST"):
            kw = {"method": method, "data": {"selector": "{__name__=~'up|http.*'}"}}
            path = "cardinality/active_series" + ("?selector={__name__=~'up|http.*'}"
                                                  if method == "GET" else "")
            self.assertEqual(self.get(path, **kw), (200, {"data": [
                {"__name__": "http_requests_total", "code": "200"},
                {"__name__": "up", "instance": "i1", "job": "a"},
                {"__name__": "up", "instance": "i1", "job": "b"}]}), method)
        self.assertEqual(self.get("cardinality/active_series?selector=up{job='b'}"),
                         (200, {"data": [{"__name__": "up", "instance": "i1", "job": "b"}]}))
        self.assertEqual(self.get("cardinality/active_series?selector=nothing"), (200, {"data": []}))

    def test_tenants_are_isolated(self):
        self.assertEqual(self.get("cardinality/active_series?selector=up", tenant="t2"),
                         (200, {"data": [{"__name__": "up", "job": "other"}]}))

    def test_gate_and_parameter_errors(self):
        self.assertEqual(self.get("cardinality/active_series?selector=up", tenant="t3"),
                         (400, "cardinality analysis is disabled for the tenant: t3\n"))
        self.assertEqual(self.get("cardinality/active_series"),
                         (400, "missing 'selector' parameter\n"))
        self.assertEqual(self.get("cardinality/active_series?selector=a&selector=b"),
                         (400, "multiple 'selector' params are not allowed\n"))
        code, text = self.get("cardinality/active_series?selector={")
        self.assertEqual(code, 400)
        self.assertTrue(text.startswith("failed to parse selector: 1:"), text)
        code, _ = self.get("cardinality/active_series?selector=up", tenant=None)
        self.assertEqual(code, 401)

    def test_response_size_limit_is_413(self):
        from urdar.components import querier
        with mock.patch.object(querier, "ACTIVE_SERIES_MAX_BYTES", 60):
            self.assertEqual(self.get("cardinality/active_series?selector=up"), (
                413, "response too large: try increasing the requested shard count\n"))


class ExemplarsThroughFrontendTests(QueryAPITestCase):
    def test_query_exemplars_with_target_all(self):
        """-target=all runs the query-frontend; query_exemplars answers with the tenant's
        exemplars (and only its own)."""
        self.assertIsNotNone(self.modules.frontend)
        for tenant, trace in (("t1", "abc"), ("t2", "xyz")):
            body = encode_write_request([([("__name__", "req_total"), ("job", "a")],
                                          [(NOW_MS - 1000, 5.0)],
                                          [([("trace_id", trace)], NOW_MS - 1000, 5.0)])])
            r = self.successResultOf(self.treq.post(
                "http://urdar/api/v1/push", data=bytes(cramjam.snappy.compress_raw(body)),
                headers={"X-Scope-OrgID": tenant, "Content-Encoding": "snappy"}))
            self.assertEqual(r.code, 200)
        data = self.ok("query_exemplars?query=req_total&start=%d&end=%d" % (NOW_S - 60, NOW_S))
        self.assertEqual(data, [{"seriesLabels": {"__name__": "req_total", "job": "a"},
                                 "exemplars": [{"labels": {"trace_id": "abc"}, "value": "5",
                                                "timestamp": NOW_S - 1}]}])
        data = self.ok("query_exemplars?query=req_total&start=%d&end=%d" % (NOW_S - 60, NOW_S),
                       tenant="t2")
        self.assertEqual([e["labels"] for e in data[0]["exemplars"]], [{"trace_id": "xyz"}])
        self.assertEqual(self.ok("query_exemplars?query=req_total&start=%d&end=%d"
                                 % (NOW_S - 60, NOW_S), tenant="t3"), [])


class FormatQueryTests(QueryAPITestCase):
    LONG = ("sum by (job) (rate(http_requests_total{code=~\"5..\",job=\"apiserver\"}[5m])) / "
            "sum by (job) (rate(http_requests_total{job=\"apiserver\"}[5m]))")

    def test_get_and_post(self):
        want = ('  sum by (job) (rate(http_requests_total{code=~"5..",job="apiserver"}[5m]))\n'
                "/\n"
                '  sum by (job) (rate(http_requests_total{job="apiserver"}[5m]))')
        self.assertEqual(self.get("format_query?query=sum(foo)%20by(job)"),
                         (200, {"status": "success", "data": "sum by (job) (foo)"}))
        self.assertEqual(self.get("format_query", method="POST", data={"query": self.LONG}),
                         (200, {"status": "success", "data": want}))

    def test_bad_query_and_no_tenant(self):
        code, obj = self.get("format_query?query=sum(")
        self.assertEqual((code, obj["errorType"]), (400, "bad_data"))
        self.assertTrue(obj["error"].startswith('invalid parameter "query": 1:5: parse error'),
                        obj["error"])
        self.assertEqual(self.get("format_query?query=up", tenant=None)[0], 401)
