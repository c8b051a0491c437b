"""The selector walk: every series a query reads is known, with its time range, before it runs."""
import unittest
from array import array

from tests.promql import conformance as C
from urdar.engine.histogram import FloatHistogram
from urdar.promql.engine import DEFAULT_LOOKBACK_MS, Engine
from urdar.promql.parser import Options, parse_expr
from urdar.promql.selectors import (NotPrefetched, PrefetchedQueryable, matchers_key,
                                    merge_selections, selections)

M = 60_000


def ranges(query, start, end, step, lookback=DEFAULT_LOOKBACK_MS):
    return [(str(s.matchers[0].value), s.hints.mint, s.hints.maxt, s.hints.step, s.hints.func,
             s.hints.range_ms)
            for s in selections(parse_expr(query), start, end, step, lookback)]


class SelectionsTests(unittest.TestCase):
    def test_instant_vector_uses_lookback(self):
        """An instant selector reads the lookback window before each step, as Prometheus does."""
        self.assertEqual(ranges("up", 10 * M, 20 * M, M), [("up", 5 * M + 1, 20 * M, M, "", 0)])

    def test_offset_at_range_and_function(self):
        """Offset, @ and a matrix range move the window; the enclosing function is a hint."""
        self.assertEqual(ranges("rate(x[5m] offset 1m)", 10 * M, 10 * M, 0),
                         [("x", 4 * M + 1, 9 * M, 0, "rate", 5 * M)])
        self.assertEqual(ranges("x @ 100", 10 * M, 20 * M, M, lookback=M),
                         [("x", 100_000 - M + 1, 100_000, M, "", 0)])
        self.assertEqual(ranges("x @ end() offset 2m", 10 * M, 20 * M, M, lookback=M),
                         [("x", 17 * M + 1, 18 * M, M, "", 0)])

    def test_anchored_and_smoothed_read_around_the_window(self):
        """anchored reads a lookback delta before the range; smoothed also one after it, and
        a smoothed instant selector reads a lookback delta past each step."""
        self.assertEqual(ranges("increase(x[5m] anchored)", 10 * M, 10 * M, 0, lookback=M),
                         [("x", 4 * M + 1, 10 * M, 0, "increase", 5 * M)])
        self.assertEqual(ranges("rate(x[5m] smoothed)", 10 * M, 10 * M, 0, lookback=M),
                         [("x", 4 * M + 1, 11 * M, 0, "rate", 5 * M)])
        self.assertEqual(ranges("x smoothed", 10 * M, 20 * M, M, lookback=M),
                         [("x", 9 * M + 1, 21 * M, M, "", 0)])

    def test_info_reads_its_info_series_not_its_label_filter(self):
        """info() reads the info series it may join (as of its first argument's @ and offset)
        and never selects with its second argument's matchers alone."""
        got = [(str(s.matchers[0]) if len(s.matchers) == 1 else
                ",".join(str(m) for m in s.matchers), s.hints.mint, s.hints.maxt, s.hints.func)
               for s in selections(parse_expr('info(m offset 1m, {data=~".*"})'),
                                   10 * M, 20 * M, M, M)]
        self.assertEqual(sorted(got), sorted([
            ('__name__="m"', 8 * M + 1, 19 * M, "info"),
            ('data=~".*",__name__="target_info"', 8 * M + 1, 19 * M, "info")]))
        got = [(s.hints.mint, s.hints.maxt) for s in selections(
            parse_expr('info(last_over_time(m[5m:1m] @ 600 offset 1m))'), 0, 0, 0, M)]
        self.assertIn((8 * M + 1, 9 * M), got)

    def test_subquery_widens_inner_window(self):
        """A subquery's range and offset widen what its inner selectors read."""
        self.assertEqual(ranges("max_over_time(rate(x[1m])[10m:30s] offset 5m)", 60 * M, 60 * M, 0),
                         [("x", 44 * M + 2, 55 * M, 30_000, "rate", M)])

    def test_merge_takes_union_per_matcher_set(self):
        """The same selector twice is fetched once over the union of both windows."""
        sels = selections(parse_expr("x offset 1h + x"), 100 * M, 100 * M, 0, M)
        merged = merge_selections(sels)
        self.assertEqual(len(merged), 1)
        self.assertEqual((merged[0].hints.mint, merged[0].hints.maxt), (39 * M + 1, 100 * M))

    def test_unplanned_select_is_refused(self):
        """The prefetched queryable slices what was fetched and refuses anything else."""
        m = parse_expr("x").matchers
        q = PrefetchedQueryable({matchers_key(m): (0, 100, [(b"k", array("q", [0, 50, 100]),
                                                             array("d", [1, 2, 3]))])})
        (_, ts, vs), = q.select(m, 10, 100)
        self.assertEqual((list(ts), list(vs)), ([50, 100], [2.0, 3.0]))
        self.assertRaises(NotPrefetched, q.select, m, -1, 100)
        self.assertRaises(NotPrefetched, q.select, parse_expr("y").matchers, 0, 1)

    def test_histogram_series_are_cut_by_their_own_times(self):
        """A series with floats and histograms (the 6- and 7-item forms): floats and their
        start times are cut by the float times, histograms and theirs by the histogram times."""
        m = parse_expr("x").matchers
        h = [FloatHistogram(count=float(c)) for c in (1, 2, 3)]
        six = (b"k", array("q", [0, 70]), array("d", [1, 2]), None, array("q", [20, 50, 100]), h)
        seven = (b"k", array("q", [0, 70]), array("d", [1, 2]), array("q", [-5, 65]),
                 array("q", [20, 50, 100]), h, array("q", [15, 45, 95]))
        for item in (six, seven):
            q = PrefetchedQueryable({matchers_key(m): (0, 100, [item])})
            (got,) = q.select(m, 30, 90)
            self.assertEqual((list(got[1]), list(got[2]), list(got[4]), got[5]),
                             ([70], [2.0], [50], [h[1]]))
            if item is seven:
                self.assertEqual((list(got[3]), list(got[6])), ([65], [45]))
            else:
                self.assertIsNone(got[3])
                self.assertEqual(len(got), 6)
            # histograms only in the range: the series is still there
            (got,) = q.select(m, 90, 100)
            self.assertEqual((list(got[1]), list(got[4])), ([], [100]))


class _PrefetchingEngine:
    """An Engine that fetches every planned selection first, then evaluates from memory."""

    def __init__(self, store):
        self.store = store

    def _engine(self, expr, start, end, step):
        fetched = {}
        for s in merge_selections(selections(expr, start, end, step, DEFAULT_LOOKBACK_MS)):
            fetched[matchers_key(s.matchers)] = (s.hints.mint, s.hints.maxt, self.store.select(
                s.matchers, s.hints.mint, s.hints.maxt))
        return Engine(PrefetchedQueryable(fetched), max_samples=50_000_000)

    def instant(self, query, t, lookback_ms=None):
        expr = parse_expr(query, Options())
        return self._engine(expr, t, t, 0).instant(query, t, lookback_ms, expr=expr)

    def range(self, query, start, end, step, lookback_ms=None):
        expr = parse_expr(query, Options())
        return self._engine(expr, start, end, step).range(query, start, end, step, lookback_ms,
                                                          expr=expr)


class ConformanceCoverageTests(unittest.TestCase):
    """Every conformance case evaluates identically over prefetched series: the walk never misses."""

    def test_prefetched_evaluation_matches_direct(self):
        """Each promqltest eval gives the same outcome with the selector walk and prefetch."""
        files = C.test_files()
        if not files:
            self.skipTest("no promqltest data at %s" % C.TESTDATA)
        diffs = []
        for path in files:
            direct = C.Runner().run_file(path)
            runner = C.Runner()
            runner.engine = _PrefetchingEngine(runner.store)
            prefetched = runner.run_file(path)
            for a, b in zip(direct, prefetched):
                if (a.status, a.reason) != (b.status, b.reason):
                    diffs.append("%s:%d %s\n  direct: %s %s\n  prefetched: %s %s" % (
                        a.file, a.line, a.expr, a.status, a.reason[:200], b.status, b.reason[:200]))
        self.assertEqual(diffs, [])
