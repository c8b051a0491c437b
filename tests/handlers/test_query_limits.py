"""Mimir's query time-range limits through the HTTP API of a -target=all process: the
query-frontend's total length and lookback clamp (400), the querier's partial length (422) and
lookback clamp, each set by a flag and overridden per tenant by the runtime config file."""
import os

from tests.handlers.test_querier import NOW_MS, NOW_S, QueryAPIFixture, QueryAPITestCase
from tests.support.tmp import mktemp

H = 3600
ADVICE = (". To adjust the related per-tenant limit, configure -%s, or contact your service "
          "administrator.")


def total_length_error(length, limit):
    return ("the total query time range exceeds the limit (query length: %s, limit: %s) "
            "(err-mimir-max-total-query-length)" % (length, limit)
            + ADVICE % "query-frontend.max-total-query-length")


def partial_length_error(length, limit):
    return ("the query time range exceeds the limit (query length: %s, limit: %s) "
            "(err-mimir-max-query-length)" % (length, limit)
            + ADVICE % "querier.max-partial-query-length")


class LimitTestCase(QueryAPITestCase):
    limits: dict = {}
    runtime = ""

    def setUp(self):
        d = mktemp(self)
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, "runtime.yaml")
        with open(path, "w") as f:
            f.write(self.runtime)
        cfg = {"runtime_config.file": (path,)}
        cfg.update(("limits." + k, v) for k, v in self.limits.items())
        QueryAPIFixture().setup(self, **cfg)
        # The same ten minutes of up{job=a} for three tenants (every 15 s, values 0..40; a [10m]
        # range at NOW is left-open, so it holds 40 of them).
        samples = [(NOW_MS - 600_000 + 15_000 * i, float(i)) for i in range(41)]
        for tenant in ("t1", "t2", "t3"):
            self.push([([("__name__", "up"), ("job", "a")], samples)], tenant=tenant)

    def range_path(self, query, seconds, step=60):
        return "query_range?query=%s&start=%d&end=%d&step=%d" % (query, NOW_S - seconds, NOW_S, step)


class TotalQueryLengthTests(LimitTestCase):
    limits = {"max_total_query_length": H * 1000}
    runtime = "overrides:\n  t2:\n    max_total_query_length: 3h\n"

    def test_range_query_longer_than_limit_is_400(self):
        """A range query spanning more than -query-frontend.max-total-query-length is refused by
        the query-frontend with 400 bad_data and Mimir's message; one spanning exactly it runs."""
        self.bad(self.range_path("up", 2 * H), total_length_error("2h0m0s", "1h0m0s"))
        self.bad(self.range_path("up", H + 1), total_length_error("1h0m1s", "1h0m0s"), tenant="t1")
        self.assertEqual(len(self.ok(self.range_path("up", H))["result"]), 1)

    def test_runtime_override_per_tenant(self):
        """t2's runtime override (3h) lets its 2h query run while t1 and t3 keep the 1h flag."""
        self.assertEqual(self.ok(self.range_path("up", 2 * H), tenant="t2")["result"][0]["metric"],
                         {"__name__": "up", "job": "a"})
        self.bad(self.range_path("up", 2 * H), total_length_error("2h0m0s", "1h0m0s"), tenant="t3")
        self.bad(self.range_path("up", 4 * H), total_length_error("4h0m0s", "3h0m0s"), tenant="t2")


class PartialQueryLengthTests(LimitTestCase):
    limits = {"max_partial_query_length": H * 1000}
    runtime = "overrides:\n  t2:\n    max_partial_query_length: 0s\n"

    def test_selector_range_longer_than_limit_is_422(self):
        """A selector reading more than -querier.max-partial-query-length (its range plus the
        lookback delta less 1 ms, as Prometheus 3 sets the select hints and Mimir's querier
        measures them) is 422 execution."""
        self.bad("query?query=count_over_time(up[2h])&time=%d" % NOW_S,
                 partial_length_error("1h59m59.999s", "1h0m0s"), code=422, error_type="execution")
        self.bad(self.range_path("up", H), partial_length_error("1h4m59.999s", "1h0m0s"),
                 code=422, error_type="execution")
        data = self.ok("query?query=count_over_time(up[1h])&time=%d" % NOW_S)
        self.assertEqual(data["result"][0]["value"], [NOW_S, "41"])

    def test_runtime_override_per_tenant(self):
        """t2's override 0 means no limit; t3 keeps the flag."""
        data = self.ok("query?query=count_over_time(up[2h])&time=%d" % NOW_S, tenant="t2")
        self.assertEqual(data["result"][0]["value"], [NOW_S, "41"])
        self.bad("query?query=count_over_time(up[2h])&time=%d" % NOW_S,
                 partial_length_error("1h59m59.999s", "1h0m0s"), code=422, error_type="execution",
                 tenant="t3")


class LegacyMaxQueryLengthTests(LimitTestCase):
    limits = {"max_query_length": H * 1000}
    runtime = "overrides:\n  t2:\n    max_total_query_length: 5h\n"

    def test_store_max_query_length_sets_both(self):
        """-store.max-query-length (deprecated) stands in for both unset limits: the frontend
        refuses a 2h range (400), the querier a 2h selector (422)."""
        self.bad(self.range_path("up", 2 * H), total_length_error("2h0m0s", "1h0m0s"))
        self.bad("query?query=count_over_time(up[2h])&time=%d" % NOW_S,
                 partial_length_error("1h59m59.999s", "1h0m0s"), code=422, error_type="execution")

    def test_override_of_the_new_limit_wins(self):
        """t2 sets max_total_query_length: its 2h range passes the frontend and meets the
        partial limit (still the legacy 1h) in the querier."""
        self.bad(self.range_path("up", 2 * H), partial_length_error("2h4m59.999s", "1h0m0s"),
                 code=422, error_type="execution", tenant="t2")


class MaxQueryLookbackTests(LimitTestCase):
    runtime = "overrides:\n  t1:\n    max_query_lookback: 5m\n"

    def test_instant_query_reads_no_further_back(self):
        """The querier reads t1's selectors from now - 5m only; t2 (no override) sees all."""
        q = "query?query=count_over_time(up[10m])&time=%d" % NOW_S
        self.assertEqual(self.ok(q)["result"][0]["value"], [NOW_S, "21"])
        self.assertEqual(self.ok(q, tenant="t2")["result"][0]["value"], [NOW_S, "40"])

    def test_query_wholly_before_lookback_is_empty(self):
        """An instant query whose selector ends before now - 5m reads nothing."""
        q = "query?query=up&time=%d" % (NOW_S - 420)
        self.assertEqual(self.ok(q)["result"], [])
        self.assertEqual(self.ok(q, tenant="t2")["result"][0]["value"], [NOW_S - 420, "12"])

    def test_range_query_start_is_clamped(self):
        """The query-frontend moves a range query's start up to now - 5m (the matrix starts
        there) and answers an empty matrix when the query ends before it."""
        data = self.ok(self.range_path("up", 600))
        self.assertEqual([p[0] for p in data["result"][0]["values"]],
                         [NOW_S - 300 + 60 * i for i in range(6)])
        other = self.ok(self.range_path("up", 600), tenant="t2")
        self.assertEqual(len(other["result"][0]["values"]), 11)
        old = "query_range?query=up&start=%d&end=%d&step=60" % (NOW_S - 900, NOW_S - 400)
        self.assertEqual(self.ok(old), {"resultType": "matrix", "result": []})
        self.assertEqual(len(self.ok(old, tenant="t2")["result"][0]["values"]), 4)


def fetch_error(what, limit, unit, err_id, flag):
    return ("the query exceeded the %s (limit: %d %s) (err-mimir-%s). Consider reducing the time "
            "range and/or number of series selected by the query. One way to reduce the number of "
            "selected series is to add more label matchers to the query. Otherwise, to adjust the "
            "related per-tenant limit, configure -%s, or contact your service administrator."
            % (what, limit, unit, err_id, flag))


class _FetchedLimit:
    """One fetched-data limit set by its flag (t3 keeps it) and raised for t2 by the runtime
    config; t2 and t3 have two series; the queries read 40 samples of each (one chunk, 640
    bytes)."""
    error = ""

    def setUp(self):
        super().setUp()
        samples = [(NOW_MS - 600_000 + 15_000 * i, float(i)) for i in range(41)]
        for tenant in ("t2", "t3"):
            self.push([([("__name__", "up"), ("job", "b")], samples)], tenant=tenant)

    def test_limit_and_override(self):
        q = "query?query=count(count_over_time(up[10m]))&time=%d" % NOW_S
        self.bad(q, self.error, code=422, error_type="execution", tenant="t3")
        self.assertEqual(self.ok(q, tenant="t2")["result"][0]["value"], [NOW_S, "2"])
        q1 = "query?query=count(count_over_time(up{job='a'}[10m]))&time=%d" % NOW_S  # within
        self.assertEqual(self.ok(q1, tenant="t3")["result"][0]["value"], [NOW_S, "1"])


class FetchedSeriesLimitTests(_FetchedLimit, LimitTestCase):
    limits = {"max_fetched_series_per_query": 1}
    runtime = "overrides:\n  t2:\n    max_fetched_series_per_query: 10\n"
    error = fetch_error("maximum number of series", 1, "series", "max-series-per-query",
                        "querier.max-fetched-series-per-query")


class FetchedChunksLimitTests(_FetchedLimit, LimitTestCase):
    limits = {"max_fetched_chunks_per_query": 1}
    runtime = "overrides:\n  t2:\n    max_fetched_chunks_per_query: 10\n"
    error = fetch_error("maximum number of chunks", 1, "chunks", "max-chunks-per-query",
                        "querier.max-fetched-chunks-per-query")


class FetchedChunkBytesLimitTests(_FetchedLimit, LimitTestCase):
    limits = {"max_fetched_chunk_bytes_per_query": 41 * 16}
    runtime = "overrides:\n  t2:\n    max_fetched_chunk_bytes_per_query: 100000\n"
    error = ("the query exceeded the aggregated chunks size limit (limit: 656 bytes) "
             "(err-mimir-max-chunks-bytes-per-query). Consider reducing the time range and/or "
             "number of series selected by the query. One way to reduce the number of selected "
             "series is to add more label matchers to the query. Otherwise, to adjust the related "
             "per-tenant limit, configure -querier.max-fetched-chunk-bytes-per-query, or contact "
             "your service administrator.")


class MaxQueryLookbackMetadataTests(LimitTestCase):
    runtime = "overrides:\n  t1:\n    max_query_lookback: 5m\n"

    def setUp(self):
        super().setUp()
        old = [(NOW_MS - 3_600_000, 1.0)]       # a series last written an hour ago
        for tenant in ("t1", "t2"):
            self.push([([("__name__", "old"), ("job", "x")], old)], tenant=tenant)

    def test_series_and_labels_read_no_further_back(self):
        """series, labels and label values are clamped the same way for t1 only."""
        rng = "start=%d&end=%d" % (NOW_S - 7200, NOW_S - 1800)
        self.assertEqual(self.ok("series?match[]=old&" + rng), [])
        self.assertEqual(self.ok("series?match[]=old&" + rng, tenant="t2"),
                         [{"__name__": "old", "job": "x"}])
        self.assertEqual(self.ok("labels?" + rng), [])
        self.assertEqual(self.ok("label/job/values?" + rng), [])
        self.assertEqual(self.ok("label/job/values?" + rng, tenant="t2"), ["x"])
        # Ranges reaching into the last five minutes still answer for series written there.
        self.assertEqual(self.ok("series?match[]=up&start=%d&end=%d" % (NOW_S - 7200, NOW_S)),
                         [{"__name__": "up", "job": "a"}])


class MaxQueryExpressionSizeTests(LimitTestCase):
    limits = {"max_query_expression_size_bytes": 10}
    runtime = "overrides:\n  t2:\n    max_query_expression_size_bytes: 0\n"

    def test_long_query_text_is_400(self):
        """The query-frontend refuses a query text over the limit (instant and range queries)."""
        err = ("the raw query size in bytes exceeds the limit (query size: 11, limit: 10) "
               "(err-mimir-max-query-expression-size-bytes)"
               + ADVICE % "query-frontend.max-query-expression-size-bytes")
        self.bad("query?query=count(up%20%20)", err)
        self.bad(self.range_path("count(up%20%20)", 600), err)
        self.assertEqual(self.ok("query?query=count(up)&time=%d" % NOW_S)["result"][0]["value"],
                         [NOW_S, "1"])
        self.assertEqual(len(self.ok(self.range_path("count(up%20%20)", 600), tenant="t2")["result"]),
                         1)


class BlocksRetentionClampTests(LimitTestCase):
    runtime = "overrides:\n  t1:\n    compactor_blocks_retention_period: 5m\n"

    def test_range_query_start_is_clamped_to_retention(self):
        """The query-frontend clamps with the smaller of max query lookback and the blocks
        retention period, as Mimir's limits middleware."""
        data = self.ok(self.range_path("up", 600))
        self.assertEqual(data["result"][0]["values"][0][0], NOW_S - 300)
        self.assertEqual(self.ok(self.range_path("up", 600), tenant="t2")["result"][0]
                         ["values"][0][0], NOW_S - 600)
