"""The querier component: sources merged and de-duplicated, the PromQL Queryable seam, limits."""
from array import array

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.support.threads import InlineReactor, InlineThreadPool, inline_offload
from urdar.app.config import Config
from urdar.components import errors as E
from urdar.components.limits import Overrides
from urdar.components.querier import Querier, QuerierConfig, QueryLimitError, QueryTimeout, merge_series
from urdar.engine.labels import decode_labels, encode_labels
from urdar.engine.matchers import Matcher
from urdar.net.offload import Offload


def key(**labels):
    return encode_labels(sorted(labels.items()))


class FakeSource:
    """A replica holding fixed series; records calls; can fail."""

    def __init__(self, series, metadata=None, fail=None):
        self.series = series            # {key: [(t, v)]}
        self.md = metadata or {}
        self.fail = fail
        self.calls = []

    def _select(self, tenant, matchers, mint, maxt):
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

    def select(self, tenant, matchers, hints):
        return defer.maybeDeferred(self._select, tenant, matchers, hints.mint, hints.maxt)

    def label_names(self, tenant, matchers, hints):
        return defer.succeed(sorted({n for k in self.series for n, _ in decode_labels(k)}))

    def label_values(self, tenant, name, matchers, hints):
        return defer.succeed(sorted({v for k in self.series for n, v in decode_labels(k) if n == name}))

    def metadata(self, tenant):
        return defer.succeed(self.md)

    def exemplars(self, tenant, matchers, mint, maxt):
        return defer.succeed([])

    def head_series(self, tenant, matchers):
        return defer.succeed(([k for k, _, _ in self._select(tenant, matchers, -2**63, 2**63 - 1)],
                              len(self.series)))


class SlowSource(FakeSource):
    """A FakeSource whose reads answer `delay_s` later on `clock` (never when None)."""

    def __init__(self, clock, delay_s, series):
        super().__init__(series)
        self.clock = clock
        self.delay_s = delay_s
        self.started = 0
        self.cancelled = 0

    def select(self, tenant, matchers, hints):
        self.started += 1
        call = []

        def cancel(d):
            self.cancelled += 1
            if call:
                call[0].cancel()
        d = defer.Deferred(cancel)
        if self.delay_s is not None:
            call.append(self.clock.callLater(self.delay_s, lambda: d.callback(
                self._select(tenant, matchers, hints.mint, hints.maxt))))
        return d


class LocalSource(FakeSource):
    """A FakeSource in this process, read in the query pool of `offload` (when given), that
    also offers select_local (components/sources.py)."""
    offload = None

    def select(self, tenant, matchers, hints):
        if self.offload is None:
            return super().select(tenant, matchers, hints)
        return self.offload.run("query", self._select, tenant, matchers, hints.mint, hints.maxt)

    def select_local(self, tenant, matchers, hints):
        return lambda: self._select(tenant, matchers, hints.mint, hints.maxt)


class CountingPool(InlineThreadPool):
    """An inline pool that counts the jobs it is given."""
    jobs = 0

    def callInThreadWithCallback(self, on_result, f, *args, **kwargs):
        CountingPool.jobs += 1
        super().callInThreadWithCallback(on_result, f, *args, **kwargs)


class QuerierTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.overrides = Overrides(Config().limits_defaults())

    def make(self, *sources, **kw):
        config = QuerierConfig(**{k: kw.pop(k) for k in ("timeout_s", "max_samples", "lookback_ms",
                                                         "experimental_functions") if k in kw})
        return Querier(sources, inline_offload((("query", 2, 10),)), self.clock, self.overrides,
                       config, **kw)

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

    def test_query_reads_each_selector_once_over_its_range(self):
        """A query reads every selector once, up front, over the range evaluation needs."""
        src = FakeSource({key(__name__="x"): [(500_000, 1.0)]})
        q = self.make(src)
        res = self.successResultOf(q.instant_query("team", "x + x offset 1m", 600_000))
        self.assertEqual(res.value[0][1], 2.0)
        self.assertEqual(src.calls, [("select", "team", 240_001, 600_000)])

    def test_query_waits_for_the_slower_source_not_the_sum(self):
        """Sources are read concurrently: a 5 s store and a 3 s ingester answer in 5 s."""
        ingester = SlowSource(self.clock, 3, {key(__name__="x", src="ing"): [(590_000, 1.0)]})
        store = SlowSource(self.clock, 5, {key(__name__="x", src="store"): [(590_000, 2.0)]})
        q = self.make(ingester, store)
        d = q.instant_query("t", "sum(x)", 600_000)
        self.assertEqual((ingester.started, store.started), (1, 1))
        self.clock.advance(4.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.assertEqual(self.successResultOf(d).value[0][1], 3.0)

    def test_selectors_are_read_concurrently(self):
        """Every selector of a query is requested before any answer arrives."""
        src = SlowSource(self.clock, 2, {key(__name__="a"): [(590_000, 1.0)],
                                         key(__name__="b"): [(590_000, 2.0)]})
        d = self.make(src).instant_query("t", "a + on() b", 600_000)
        self.assertEqual(src.started, 2)
        self.clock.advance(2)
        self.assertEqual(self.successResultOf(d).value[0][1], 3.0)

    def test_deadline_covers_the_fetch_and_cancels_reads(self):
        """A source that never answers times the query out at -querier.timeout and is cancelled."""
        src = SlowSource(self.clock, None, {})
        d = self.make(src, timeout_s=10).instant_query("t", "up", 600_000)
        self.clock.advance(10)
        f = self.failureResultOf(d, QueryTimeout)
        self.assertEqual(f.value.cause, E.TIMEOUT)
        self.assertEqual(src.cancelled, 1)

    def test_client_going_away_cancels_reads(self):
        """Cancelling a query (the client hung up) cancels its pending source reads."""
        src = SlowSource(self.clock, None, {})
        d = self.make(src).instant_query("t", "up", 600_000)
        d.cancel()
        self.failureResultOf(d)
        self.assertEqual(src.cancelled, 1)

    def test_local_sources_are_read_in_the_evaluation_job(self):
        """A query over in-process sources reads them in its one pool job (no job per read)
        and gets the same answer: replicas merged, the first source winning on equal times."""
        a = LocalSource({key(__name__="x", i="1"): [(590_000, 1.0)]})
        b = LocalSource({key(__name__="x", i="1"): [(590_000, 5.0), (595_000, 2.0)],
                         key(__name__="y"): [(590_000, 4.0)]})
        off = Offload(InlineReactor(), CountingPool)
        off.add_pool("query", 2, 10)
        off.start()
        a.offload = b.offload = off
        q = Querier([a, b], off, self.clock, self.overrides)
        CountingPool.jobs = 0
        res = self.successResultOf(q.instant_query("t", "sum(x) + on() sum(y)", 600_000))
        self.assertEqual(res.value[0][1], 6.0)
        self.assertEqual(CountingPool.jobs, 1)
        self.assertEqual([c[0] for c in a.calls + b.calls], ["select"] * 4)
        res = self.successResultOf(q.instant_query("t", "x @ 590", 600_000))
        self.assertEqual(res.value[0][1], 1.0)

    def test_local_and_remote_sources_together(self):
        """A remote source is read on the reactor (concurrently with the others, under the
        deadline) and merged with a local one in the evaluation job, in source order."""
        remote = SlowSource(self.clock, 3, {key(__name__="x"): [(590_000, 7.0)],
                                            key(__name__="x", r="1"): [(590_000, 1.0)]})
        local = LocalSource({key(__name__="x"): [(590_000, 9.0), (591_000, 8.0)]})
        q = self.make(remote, local)
        d = q.instant_query("t", "x", 600_000)
        self.assertEqual((remote.started, local.calls), (1, []))
        self.clock.advance(3)
        res = self.successResultOf(d)
        self.assertEqual([(dict(lb).get("r"), v) for lb, v in res.value], [(None, 8.0), ("1", 1.0)])
        d = self.make(local, remote).instant_query("t", "x @ 590", 600_000)
        self.clock.advance(3)
        self.assertEqual(self.successResultOf(d).value[0][1], 9.0)
        slow = SlowSource(self.clock, None, {})
        d = self.make(local, slow, timeout_s=5).instant_query("t", "x", 600_000)
        self.clock.advance(5)
        self.failureResultOf(d, QueryTimeout)
        self.assertEqual(slow.cancelled, 1)

    def test_fetched_series_limit(self):
        """More series than -querier.max-fetched-series-per-query fail with Mimir's message."""
        self.overrides.set_overrides({"t": {"max_fetched_series_per_query": 2}})
        src = FakeSource({key(__name__="x", i=str(i)): [(590_000, 1.0)] for i in range(3)})
        q = self.make(src)
        f = self.failureResultOf(q.instant_query("t", "x", 600_000), QueryLimitError)
        self.assertIn("(limit: 2 series) (err-mimir-max-series-per-query)", f.value.message)
        self.assertIn("-querier.max-fetched-series-per-query", f.value.message)
        self.assertEqual(f.value.cause, E.EXECUTION)
        self.assertEqual(len(self.successResultOf(q.instant_query("u", "x", 600_000)).value), 3)

    def test_fetched_chunks_and_bytes_limits(self):
        """Chunks (120 samples) and bytes (16 per sample) fetched are bounded per query."""
        src = FakeSource({key(__name__="x"): [(t * 1000, 1.0) for t in range(241)]})
        self.overrides.set_overrides({"t": {"max_fetched_chunks_per_query": 2},
                                      "u": {"max_fetched_chunk_bytes_per_query": 241 * 16 - 1}})
        q = self.make(src)
        f = self.failureResultOf(q.remote_read("t", [(0, 241_000, [Matcher("=", "__name__", "x")])]),
                                 QueryLimitError)
        self.assertIn("(limit: 2 chunks) (err-mimir-max-chunks-per-query)", f.value.message)
        f = self.failureResultOf(q.instant_query("u", "count_over_time(x[5m])", 241_000),
                                 QueryLimitError)
        self.assertIn("(err-mimir-max-chunks-bytes-per-query)", f.value.message)

    def test_remote_read_sample_limit_and_timeout(self):
        """Remote read obeys -querier.max-samples and -querier.timeout."""
        src = FakeSource({key(__name__="x"): [(t, 1.0) for t in range(10)]})
        q = self.make(src, max_samples=5)
        f = self.failureResultOf(q.remote_read("t", [(0, 100, [Matcher("=", "__name__", "x")])]),
                                 QueryLimitError)
        self.assertIn("too many samples", f.value.message)
        slow = SlowSource(self.clock, None, {})
        d = self.make(slow, timeout_s=3).remote_read("t", [(0, 100, [Matcher("=", "__name__", "x")])])
        self.clock.advance(3)
        self.assertEqual(self.failureResultOf(d, QueryTimeout).value.message,
                         "query timed out in remote read")

    def test_instant_and_range_query(self):
        """PromQL runs over the merged sources."""
        q = self.make(FakeSource({key(__name__="x", i="1"): [(0, 1.0), (60_000, 2.0)]}),
                      FakeSource({key(__name__="x", i="2"): [(0, 10.0)]}))
        res = self.successResultOf(q.instant_query("t", "sum(x)", 60_000))
        self.assertEqual(res.value[0][1], 12.0)
        res = self.successResultOf(q.range_query("t", "x", 0, 60_000, 30_000))
        self.assertEqual(res.type, "matrix")
        self.assertEqual(len(res.value), 2)

    def test_experimental_functions_need_the_flag(self):
        """Experimental functions and aggregators fail with Prometheus' parse errors unless
        -querier.promql-experimental-functions-enabled is set, also when a handler parsed."""
        from urdar.promql.parser import ParseError, parse_expr
        src = FakeSource({key(__name__="x", i="2"): [(0, 2.0)], key(__name__="x", i="1"): [(0, 1.0)]})
        q = self.make(src)
        f = self.failureResultOf(q.instant_query("t", 'sort_by_label(x, "i")', 0), ParseError)
        self.assertEqual(str(f.value), '1:1: parse error: function "sort_by_label" is not enabled')
        f = self.failureResultOf(q.instant_query("t", "sum(limitk(1, x))", 0, parse=parse_expr),
                                 ParseError)
        self.assertEqual(str(f.value), "1:5: parse error: limitk() is experimental and must be "
                                       "enabled with --enable-feature=promql-experimental-functions")
        q = self.make(src, experimental_functions=True)
        res = self.successResultOf(q.instant_query("t", 'sort_by_label(x, "i")', 0))
        self.assertEqual([dict(lb)["i"] for lb, _ in res.value], ["1", "2"])
        self.assertFalse(QuerierConfig.from_config(Config()).experimental_functions)

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

    def test_label_requests_time_out(self):
        """A label request whose source never answers fails at -querier.timeout."""
        class Stuck(FakeSource):
            def label_names(self, tenant, matchers, hints):
                return defer.Deferred()
        d = self.make(Stuck({}), timeout_s=7).label_names("t", [], 0, 1)
        self.clock.advance(7)
        self.assertEqual(self.failureResultOf(d, QueryTimeout).value.message,
                         "query timed out in label request")

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

        class Empty:
            def select(self, matchers, mint, maxt):
                return []
        eng = q.engine(Empty(), deadline_s=5, cancelled=lambda: False)
        self.clock.advance(6)
        self.assertRaises(promql.QueryTimeout, eng.instant, "x", 0)
        q = self.make(FakeSource({key(__name__="x"): [(0, 1.0)]}),
                      engine_factory=lambda qa, _: promql.Engine(qa, clock=self.clock, deadline_s=-1))
        f = self.failureResultOf(q.instant_query("t", "x", 0))
        self.assertIsInstance(f.value, QueryTimeout)
        self.assertEqual(f.value.cause, E.TIMEOUT)
