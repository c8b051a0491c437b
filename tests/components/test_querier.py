"""The querier component: sources merged and de-duplicated, the PromQL Queryable seam, limits."""
from array import array

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.support.threads import inline_offload
from urdar.components import errors as E
from urdar.components.limits import Overrides
from urdar.components.querier import Querier, QueryCanceled, QueryTimeout, merge_series
from urdar.engine.labels import decode_labels, encode_labels
from urdar.engine.matchers import Matcher
from urdar.net.config import Config
from urdar.net.offload import Job


def key(**labels):
    return encode_labels(sorted(labels.items()))


class FakeSource:
    """A replica holding fixed series; records calls; can fail."""

    def __init__(self, series, metadata=None, fail=None):
        self.series = series            # {key: [(t, v)]}
        self.md = metadata or {}
        self.fail = fail
        self.calls = []

    def select_now(self, tenant, matchers, mint, maxt, samples=True):
        self.calls.append(("select", tenant, mint, maxt))
        if self.fail:
            raise self.fail
        out = []
        for k in sorted(self.series):
            d = dict(decode_labels(k))
            if all(m.matches(d.get(m.name, "")) for m in matchers):
                pts = [(t, v) for t, v in self.series[k] if mint <= t <= maxt]
                if pts:
                    out.append((k, array("q", [t for t, _ in pts]), array("d", [v for _, v in pts])))
        return out

    def select(self, tenant, matchers, mint, maxt, samples=True):
        return defer.maybeDeferred(self.select_now, tenant, matchers, mint, maxt, samples)

    def label_names(self, tenant, matchers, mint, maxt):
        return defer.succeed(sorted({n for k in self.series for n, _ in decode_labels(k)}))

    def label_values(self, tenant, name, matchers, mint, maxt):
        return defer.succeed(sorted({v for k in self.series for n, v in decode_labels(k) if n == name}))

    def metadata(self, tenant):
        return defer.succeed(self.md)

    def exemplars(self, tenant, matchers, mint, maxt):
        return defer.succeed([])

    def head_series(self, tenant, matchers):
        return defer.succeed(([k for k, _, _ in self.select_now(tenant, matchers, -2**63, 2**63 - 1)],
                              len(self.series)))


class QuerierTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.overrides = Overrides(Config().limits_defaults())

    def make(self, *sources, **kw):
        return Querier(sources, inline_offload((("query", 2, 10),)), self.clock, self.overrides, **kw)

    def test_replicas_merge_and_dedupe(self):
        """Series held by several sources come back once, samples merged, in label order."""
        a = FakeSource({key(__name__="up", job="b"): [(1, 1.0), (3, 3.0)], key(__name__="up", job="a"): [(1, 9.0)]})
        b = FakeSource({key(__name__="up", job="b"): [(2, 2.0), (3, 30.0)]})
        q = self.make(a, b)
        out = self.successResultOf(q.select("t", [Matcher("=", "__name__", "up")], 0, 10))
        self.assertEqual([(decode_labels(k), list(ts), list(vs)) for k, ts, vs in out], [
            ([("__name__", "up"), ("job", "a")], [1], [9.0]),
            ([("__name__", "up"), ("job", "b")], [1, 2, 3], [1.0, 2.0, 3.0])])
        self.assertEqual(merge_series([[]]), [])

    def test_source_failure_fails_query(self):
        """A failing source fails the read (never a silent partial result)."""
        q = self.make(FakeSource({}), FakeSource({}, fail=E.ComponentError(E.UNAVAILABLE, "down")))
        f = self.failureResultOf(q.select("t", [Matcher("=", "__name__", "up")], 0, 10))
        self.assertEqual(f.value.message, "down")

    def test_queryable_seam(self):
        """The Queryable passes the tenant and time range to every source and checks the deadline."""
        src = FakeSource({key(__name__="x"): [(5, 1.0)]})
        q = self.make(src)
        qa = q.queryable("team", Job(), deadline_s=10)
        self.assertEqual(len(qa.select([Matcher("=", "__name__", "x")], 0, 10)), 1)
        self.assertEqual(src.calls, [("select", "team", 0, 10)])
        self.clock.advance(11)
        self.assertRaises(QueryTimeout, qa.select, [], 0, 1)
        job = Job()
        job.cancel()
        self.assertRaises(QueryCanceled, q.queryable("team", job).select, [], 0, 1)

    def test_instant_and_range_query(self):
        """PromQL runs over the merged sources."""
        q = self.make(FakeSource({key(__name__="x", i="1"): [(0, 1.0), (60_000, 2.0)]}),
                      FakeSource({key(__name__="x", i="2"): [(0, 10.0)]}))
        res = self.successResultOf(q.instant_query("t", "sum(x)", 60_000))
        self.assertEqual(res.value[0][1], 12.0)
        res = self.successResultOf(q.range_query("t", "x", 0, 60_000, 30_000))
        self.assertEqual(res.type, "matrix")
        self.assertEqual(len(res.value), 2)

    def test_metadata_limits(self):
        """Metadata merges sources, dedupes entries and honours limit, limit_per_metric and metric."""
        a = FakeSource({}, {"b": [(1, "B", "")], "a": [(2, "A", "bytes")]})
        b = FakeSource({}, {"b": [(1, "B", ""), (1, "B2", "")]})
        q = self.make(a, b)
        self.assertEqual(self.successResultOf(q.metadata("t")), {
            "a": [{"type": "gauge", "help": "A", "unit": "bytes"}],
            "b": [{"type": "counter", "help": "B", "unit": ""}, {"type": "counter", "help": "B2", "unit": ""}]})
        self.assertEqual(list(self.successResultOf(q.metadata("t", limit=1))), ["a"])
        self.assertEqual(self.successResultOf(q.metadata("t", limit_per_metric=1, metric="b")),
                         {"b": [{"type": "counter", "help": "B", "unit": ""}]})
        self.assertEqual(self.successResultOf(q.metadata("t", limit=0)), {})

    def test_labels_union(self):
        """Label names and values are the sorted union over sources."""
        q = self.make(FakeSource({key(__name__="x", a="1"): [(0, 1.0)]}),
                      FakeSource({key(__name__="y", b="2", a="3"): [(0, 1.0)]}))
        self.assertEqual(self.successResultOf(q.label_names("t", [], 0, 1)), ["__name__", "a", "b"])
        self.assertEqual(self.successResultOf(q.label_values("t", "a", [], 0, 1)), ["1", "3"])

    def test_cardinality_counts_replicas_once(self):
        """Cardinality counts distinct series even when replicas report the same one."""
        s = {key(__name__="x", a="1"): [(0, 1.0)], key(__name__="x", a="2"): [(0, 1.0)]}
        q = self.make(FakeSource(s), FakeSource(s))
        got = self.successResultOf(q.label_values_cardinality("t", ["a"], [], 20))
        self.assertEqual(got["labels"][0]["series_count"], 2)
        self.assertEqual(got["series_count_total"], 2)

    def test_engine_checks_the_query_deadline(self):
        """The querier hands its deadline to the evaluator, which answers a timeout (503) once it passes."""
        from urdar.promql import engine as promql
        q = self.make(FakeSource({key(__name__="x"): [(0, 1.0)]}), timeout_s=5)
        eng = q.engine(q.queryable("t", Job(), deadline_s=5))
        self.clock.advance(6)
        self.assertRaises(promql.QueryTimeout, eng.instant, "x", 0)
        q = self.make(FakeSource({key(__name__="x"): [(0, 1.0)]}),
                      engine_factory=lambda qa, _: promql.Engine(qa, clock=self.clock, deadline_s=-1))
        f = self.failureResultOf(q.instant_query("t", "x", 0))
        self.assertIsInstance(f.value, QueryTimeout)
        self.assertEqual(f.value.error_type, "timeout")
