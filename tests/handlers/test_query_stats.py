"""Mimir's query statistics (-query-frontend.query-stats-enabled, on by default): the
Server-Timing header, the "query stats" log line and the per-tenant counters."""
import logging
import re

from twisted.trial.unittest import SynchronousTestCase

from tests.handlers.test_querier import (NOW_MS, NOW_S, P, QueryAPIFixture, QueryAPITestCase,
                                         manual_query_offload)
from urdar.app.main import _LogfmtFormatter

TIMING = re.compile(r"querier_wall_time;dur=[0-9.]+, response_time;dur=[0-9.]+\Z")


def fields(line):
    """logfmt pairs of a formatted line -> dict (quoted values unquoted)."""
    out = {}
    for k, v in re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)', line):
        out[k] = v[1:-1].replace('\\"', '"') if v.startswith('"') else v
    return out


class QueryStatsTests(QueryAPITestCase):
    def setUp(self):
        super().setUp()
        # Two series of 41 samples (one chunk each) for t1; one for t2.
        samples = [(NOW_MS - 600_000 + 15_000 * i, float(i)) for i in range(41)]
        self.push([([("__name__", "up"), ("job", j)], samples) for j in ("a", "b")])
        self.push([([("__name__", "up"), ("job", "c")], samples)], tenant="t2")

    def logged(self, path, tenant="t1"):
        with self.assertLogs("urdar.querystats", logging.INFO) as cm:
            code, body, resp = self.request(path, tenant, headers={"User-Agent": "grafana/10"})
        self.assertEqual(len(cm.records), 1)
        line = _LogfmtFormatter().format(cm.records[0])
        return code, body, resp, line

    def test_range_query_header_and_log_line(self):
        code, body, resp, line = self.logged(
            "query_range?query=sum(up)&start=%d&end=%d&step=60" % (NOW_S - 600, NOW_S))
        self.assertEqual(code, 200)
        self.assertRegex(resp.headers.getRawHeaders("Server-Timing")[0], TIMING)
        self.assertIn('msg="query stats" component=query-frontend', line)
        f = fields(line)
        self.assertEqual({k: f[k] for k in (
            "user", "method", "path", "user_agent", "fetched_series_count", "fetched_chunks_count",
            "fetched_chunk_bytes", "sharded_queries", "split_queries", "estimated_series_count",
            "response_size_bytes", "param_query", "param_step", "status")}, {
            "user": "t1", "method": "GET", "path": "/prometheus/api/v1/query_range",
            "user_agent": "grafana/10", "fetched_series_count": "2", "fetched_chunks_count": "2",
            "fetched_chunk_bytes": str(2 * 41 * 16), "sharded_queries": "0",
            "split_queries": "1", "estimated_series_count": "0",
            "response_size_bytes": str(len(body)), "param_query": "sum(up)", "param_step": "60",
            "status": "success"})
        self.assertGreater(float(f["query_wall_time_seconds"]), 0)

    def test_failed_query_is_logged_with_its_error(self):
        code, _, resp, line = self.logged("query?query=up[5m]%2B1")
        self.assertEqual(code, 400)
        self.assertIsNone(resp.headers.getRawHeaders("Server-Timing"))
        f = fields(line)
        self.assertEqual(f["status"], "failed")
        self.assertIn("binary expression must contain only scalar and instant vector types",
                      f["err"])

    def test_counters_per_tenant(self):
        def value(name, **labels):
            return self.modules.registry.get_sample_value(name, labels) or 0.0
        self.ok("query?query=up&time=%d" % NOW_S)
        self.ok("query?query=up&time=%d" % NOW_S, tenant="t2")
        self.assertEqual(value("cortex_query_fetched_series_total", user="t1"), 2)
        self.assertEqual(value("cortex_query_fetched_series_total", user="t2"), 1)
        self.assertEqual(value("cortex_query_fetched_chunks_total", user="t1"), 2)
        self.assertGreater(value("cortex_query_seconds_total", user="t1", sharded="false"), 0)


class QueryStatsDisabledTests(QueryAPITestCase):
    config = {"frontend.query_stats_enabled": False}

    def test_no_header_no_line_no_counters(self):
        with self.assertNoLogs("urdar.querystats", logging.INFO):
            code, _, resp = self.request("query?query=1")
        self.assertEqual(code, 200)
        self.assertIsNone(resp.headers.getRawHeaders("Server-Timing"))
        self.assertIsNone(self.modules.registry.get_sample_value(
            "cortex_query_seconds_total", {"user": "t1", "sharded": "false"}))


class QueryStatsTimeoutTests(SynchronousTestCase):
    def test_timeout_is_logged_as_timeout(self):
        off, pool = manual_query_offload()
        QueryAPIFixture().setup(self, offload=off, **{"querier.timeout": 5000})
        with self.assertLogs("urdar.querystats", logging.INFO) as cm:
            d = self.treq.get(P + "query?query=1", headers={"X-Scope-OrgID": "t1"})
            self.clock.advance(6)
            self.treq.flush()
            self.assertEqual(self.successResultOf(d).code, 503)
        f = fields(_LogfmtFormatter().format(cm.records[0]))
        self.assertEqual((f["status"], f["err"], f["user"]),
                         ("timeout", "query timed out in expression evaluation", "t1"))
        pool.run_all()
