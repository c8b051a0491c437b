"""The evaluator under hostile queries: deadlines, cancellation, subquery grids and nesting stay bounded."""

import tracemalloc
import unittest
from array import array

from twisted.internet.task import Clock

from urdar.engine.histogram import FloatHistogram
from urdar.promql.engine import Engine, QueryCanceled, QueryTimeout, TooManySamples
from urdar.promql.parser import ParseError, parse_expr


class MemoryQueryable:
    """Series held in memory; `on_select` runs after each select (to move time or cancel)."""

    def __init__(self, series, on_select=None):
        self.series = series        # [(labels tuple, [(t, v)])]
        self.on_select = on_select
        self.selects = 0

    def select(self, matchers, mint, maxt):
        self.selects += 1
        out = []
        for labels, points in self.series:
            d = dict(labels)
            if all(m.matches(d.get(m.name, "")) for m in matchers):
                pts = [(t, v) for t, v in points if mint <= t <= maxt]
                if pts:
                    out.append((labels, array("q", [t for t, _ in pts]),
                                array("d", [v for _, v in pts])))
        if self.on_select is not None:
            self.on_select()
        return out


def many(name, n, points=((0, 1.0),)):
    return [((("__name__", name), ("i", "%05d" % i)), list(points)) for i in range(n)]


def peak_bytes(fn, *args):
    """fn(*args)'s outcome (result or exception) and the peak of Python-allocated bytes during it."""
    tracemalloc.start()
    try:
        try:
            out = fn(*args)
        except Exception as exc:
            out = exc
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# A 2h subquery at 1ms resolution: 7.2 million step times, 58 MB as one int64 array.
HUGE = "[2h:1ms]"


class DeadlineTests(unittest.TestCase):
    """A query past its deadline stops at the next check instead of finishing its work."""

    def test_deadline_passing_during_select_stops_the_series_loop(self):
        """When the deadline passes while series are fetched, the per-series work is not done."""
        clock = Clock()
        q = MemoryQueryable(many("m", 5000), on_select=lambda: clock.advance(10))
        eng = Engine(q, clock=clock, deadline_s=5)
        # No node is evaluated after the selector's select: only a check inside its series
        # loop (or abs()'s) can stop this query before it computes its whole answer.
        with self.assertRaises(QueryTimeout) as cm:
            eng.range("abs(m)", 0, 600_000, 1000)
        self.assertEqual(str(cm.exception), "query timed out in expression evaluation")

    def test_later_selects_do_not_run_after_the_deadline(self):
        """A binary expression whose left side used up the time budget never reads its right side."""
        clock = Clock()
        q = MemoryQueryable(many("a", 3) + many("b", 3), on_select=lambda: clock.advance(10))
        eng = Engine(q, clock=clock, deadline_s=5)
        self.assertRaises(QueryTimeout, eng.instant, "sum(a) + sum(b)", 0)
        self.assertEqual(q.selects, 1)

    def test_cancellation_stops_evaluation(self):
        """Once the cancellation flag turns on (the client went away), evaluation raises QueryCanceled."""
        flag = []
        q = MemoryQueryable(many("a", 3) + many("b", 3), on_select=lambda: flag.append(1))
        eng = Engine(q, cancelled=lambda: bool(flag))
        with self.assertRaises(QueryCanceled):
            eng.instant("a or b", 0)
        self.assertEqual(q.selects, 1)

    def test_no_deadline_evaluates_normally(self):
        """Without a deadline or flag a query answers as before."""
        eng = Engine(MemoryQueryable(many("m", 600)))
        self.assertEqual(eng.instant("count(m)", 0).value, [((), 600.0)])

    def test_deadline_needs_a_clock(self):
        """A deadline without the clock it is measured on is a programming error caught early."""
        self.assertRaises(ValueError, Engine, MemoryQueryable([]), deadline_s=1.0)


class SubqueryGridTests(unittest.TestCase):
    """A subquery's step grid is bounded by the samples limit before it is allocated."""

    def test_empty_selector_costs_nothing(self):
        """count_over_time(missing[2h:1ms]) answers an empty result at once, allocating no grid."""
        eng = Engine(MemoryQueryable(many("m", 3)), max_samples=1_000_000)
        res, peak = peak_bytes(eng.instant, "count_over_time(nonexistent_metric%s)" % HUGE, 7_200_000)
        self.assertEqual((res.type, res.value), ("vector", []))
        self.assertLess(peak, 5_000_000)

    def test_grid_over_the_samples_limit_is_refused(self):
        """A subquery over existing series whose grid exceeds max-samples fails with the limit's error."""
        eng = Engine(MemoryQueryable(many("m", 3)), max_samples=1_000_000)
        for q in ("count_over_time(m%s)" % HUGE, "count_over_time(absent(nonexistent_metric)%s)" % HUGE,
                  "sum_over_time(vector(1)%s)" % HUGE):
            res, peak = peak_bytes(eng.instant, q, 7_200_000)
            self.assertIsInstance(res, TooManySamples, q)
            self.assertEqual(str(res), "query processing would load too many samples into memory "
                                       "in query execution")
            self.assertLess(peak, 5_000_000, q)

    def test_grid_within_the_limit_still_evaluates(self):
        """A subquery whose grid fits the limit answers as before."""
        eng = Engine(MemoryQueryable(many("m", 2, [(t, 1.0) for t in range(0, 600_000, 60_000)])))
        res = eng.instant("count_over_time(m[10m:1m])", 600_000)
        self.assertEqual(sorted(v for _, v in res.value), [10.0, 10.0])  # steps 1m..10m

    def test_selector_stops_at_the_samples_limit(self):
        """A selector over many series fails once its points pass max-samples, before materializing the rest."""
        q = MemoryQueryable(many("m", 2000, [(t, 1.0) for t in range(0, 3_600_000, 60_000)]))
        eng = Engine(q, max_samples=10_000)
        full, peak_full = peak_bytes(Engine(q).range, "m", 0, 3_600_000, 1000)
        self.assertEqual(len(full.value), 2000)
        res, peak = peak_bytes(eng.range, "m", 0, 3_600_000, 1000)
        self.assertIsInstance(res, TooManySamples)
        self.assertLess(peak, peak_full / 4)

    def test_range_query_steps_over_the_limit_are_refused(self):
        """A range query with more steps than max-samples fails before its step grid is built."""
        eng = Engine(MemoryQueryable([]), max_samples=1000)
        res, peak = peak_bytes(eng.range, "1", 0, 10_000_000_000, 1)
        self.assertIsInstance(res, TooManySamples)
        self.assertLess(peak, 1_000_000)

    def test_count_values_per_step_series_are_charged(self):
        """count_values over time() in a subquery makes one series per step, each as long as the
        grid: its cells count against max-samples before they are allocated (the [1d:1s] form
        would need 86,400^2 cells: tens of GB), and small ones still evaluate."""
        eng = Engine(MemoryQueryable([]), max_samples=1_000_000)
        res, peak = peak_bytes(eng.instant, 'count(count_over_time(count_values("x", vector(time()))'
                                            '[1d:1s]))', 86_400_000)
        self.assertIsInstance(res, TooManySamples)
        self.assertLess(peak, 50_000_000)
        res = eng.instant('count(count_over_time(count_values("x", vector(time()))[10m:1m]))', 600_000)
        self.assertEqual([v for _, v in res.value], [10.0])

    def test_grid_building_stops_at_cancellation(self):
        """A query cancelled while its subquery grid is built stops before the grid is complete."""
        checks = []

        def cancelled():
            checks.append(1)
            return len(checks) > 3
        eng = Engine(MemoryQueryable(many("m", 3)), max_samples=50_000_000, cancelled=cancelled)
        res, peak = peak_bytes(eng.instant, "count_over_time(m%s)" % HUGE, 7_200_000)
        self.assertIsInstance(res, QueryCanceled)
        self.assertLess(peak, 20_000_000)


class NestingTests(unittest.TestCase):
    """Long operator chains evaluate; only absurd nesting is refused, as a parse error."""

    def test_long_scalar_chain(self):
        """1+1+...+1 with 5,000 terms answers 5000 and prints back as written."""
        q = "+".join(["1"] * 5000)
        eng = Engine(MemoryQueryable([]))
        self.assertEqual(eng.instant(q, 0).value, 5000.0)
        self.assertEqual(str(parse_expr(q)), " + ".join(["1"] * 5000))

    def test_long_or_chain(self):
        """A 5,000-term `or` chain over selectors returns the union of its series."""
        q = " or ".join('m{i="%05d"}' % (k % 3) for k in range(5000))
        eng = Engine(MemoryQueryable(many("m", 3)))
        res = eng.instant(q, 0)
        self.assertEqual(sorted(dict(labels)["i"] for labels, _ in res.value),
                         ["00000", "00001", "00002"])

    def test_long_vector_arithmetic_chain(self):
        """A 2,000-term vector sum chain keeps its labels-matching semantics."""
        q = " + ".join(["m"] * 2000)
        res = Engine(MemoryQueryable(many("m", 2))).instant(q, 0)
        self.assertEqual(sorted(v for _, v in res.value), [2000.0, 2000.0])

    def test_deep_nesting_is_a_parse_error(self):
        """Nesting deeper than the parser's bound is refused as a parse error, never a RecursionError."""
        eng = Engine(MemoryQueryable([]))
        for q in ("(" * 150 + "1" + ")" * 150, "abs(" * 150 + "m" + ")" * 150,
                  "^".join(["1"] * 3000), "-" * 3000 + "1"):
            with self.assertRaises(ParseError) as cm:
                eng.instant(q, 0)
            self.assertIn("expression nested too deeply", str(cm.exception))
        self.assertEqual(eng.instant("(" * 90 + "1" + ")" * 90, 0).value, 1.0)


class StartTimestampQueryable(MemoryQueryable):
    """MemoryQueryable whose series carry per-sample start timestamps ({t: st})."""

    def __init__(self, series, sts):
        super().__init__(series)
        self.sts = sts              # labels tuple -> {t: st}

    def select(self, matchers, mint, maxt):
        out = []
        for labels, ts, vs in super().select(matchers, mint, maxt):
            st = self.sts.get(labels)
            out.append((labels, ts, vs) if st is None else
                       (labels, ts, vs, array("q", [st.get(t, 0) for t in ts])))
        return out


class StartTimestampTests(unittest.TestCase):
    """Start timestamps from storage reach rate/increase and start_timestamp()."""

    def setUp(self):
        a = (("__name__", "c"), ("s", "a"))
        b = (("__name__", "c"), ("s", "b"))
        # a: value grows 5 -> 7 but its second sample restarted at 90s: a reset.
        self.q = StartTimestampQueryable([(a, [(60_000, 5.0), (120_000, 7.0)]),
                                          (b, [(60_000, 5.0), (120_000, 7.0)])],
                                         {a: {60_000: 1_000, 120_000: 90_000}})

    def test_start_time_reset_counts_in_increase_and_resets(self):
        eng = Engine(self.q)
        res = eng.instant("resets(c[5m])", 120_000)
        self.assertEqual(sorted((dict(l)["s"], v) for l, v in res.value), [("a", 1.0), ("b", 0.0)])
        res = eng.instant("increase(c[2m])", 120_000)
        got = dict((dict(l)["s"], v) for l, v in res.value)
        # a: from zero at its start (1s) up to 5, then 7 after the reset; nothing extrapolated
        self.assertEqual(got["a"], 12.0)
        # b: 5 -> 7 extrapolated to the window start as usual
        self.assertEqual(got["b"], 4.0)

    def test_start_timestamp_function(self):
        res = Engine(self.q).range("start_timestamp(c)", 60_000, 120_000, 60_000)
        self.assertEqual([(dict(l)["s"], list(ts), list(vs)) for l, ts, vs in res.value],
                         [("a", [60_000, 120_000], [1.0, 90.0])])
        self.assertEqual(Engine(self.q).instant("start_timestamp(c * 1)", 120_000).value, [])


class HistogramStartTimestampQueryable:
    """Series of histogram samples only, as the storage contract hands them out: the 6-tuple
    (key, ts, vs, None, hts, hvs), or with `with_hsts` the 7-tuple adding the histogram
    samples' start timestamps."""

    def __init__(self, series, hsts, with_hsts):
        self.series = series        # [(labels tuple, [(t, FloatHistogram)])]
        self.hsts = hsts            # labels tuple -> {t: st}
        self.with_hsts = with_hsts

    def select(self, matchers, mint, maxt):
        out = []
        for labels, points in self.series:
            d = dict(labels)
            if not all(m.matches(d.get(m.name, "")) for m in matchers):
                continue
            pts = [(t, h) for t, h in points if mint <= t <= maxt]
            if not pts:
                continue
            item = (labels, array("q"), array("d"), None, array("q", [t for t, _ in pts]),
                    [h for _, h in pts])
            if self.with_hsts:
                st = self.hsts.get(labels, {})
                item += (array("q", [st.get(t, 0) for t, _ in pts]),)
            out.append(item)
        return out


class HistogramStartTimestampTests(unittest.TestCase):
    """Start timestamps of histogram samples (the contract's optional 7th item) reach
    rate/increase/irate/resets and start_timestamp(); producers of the 6-tuple still work."""

    a = (("__name__", "h"), ("s", "a"))

    def engine(self, with_hsts):
        # count grows 5 -> 7 but the second sample restarted at 90s: a reset
        pts = [(60_000, FloatHistogram(count=5.0, sum=5.0)),
               (120_000, FloatHistogram(count=7.0, sum=7.0))]
        return Engine(HistogramStartTimestampQueryable(
            [(self.a, pts)], {self.a: {60_000: 1_000, 120_000: 90_000}}, with_hsts))

    def test_start_time_reset_counts_for_histograms(self):
        eng = self.engine(True)
        self.assertEqual([v for _, v in eng.instant("resets(h[5m])", 120_000).value], [1.0])
        (_, inc), = eng.instant("increase(h[2m])", 120_000).value
        # from zero at the first start (1s) up to 5, then 7 after the reset; no extrapolation
        self.assertEqual((inc.count, inc.sum), (12.0, 12.0))
        (_, ir), = eng.instant("irate(h[2m])", 120_000).value
        self.assertEqual((ir.count, ir.sum), (7 / 60, 7 / 60))  # the reset: 7 over 60s
        res = eng.range("start_timestamp(h)", 60_000, 120_000, 60_000)
        self.assertEqual([(list(ts), list(vs)) for _, ts, vs in res.value],
                         [([60_000, 120_000], [1.0, 90.0])])

    def test_six_tuple_histograms_have_no_start_times(self):
        eng = self.engine(False)
        self.assertEqual([v for _, v in eng.instant("resets(h[5m])", 120_000).value], [0.0])
        (_, inc), = eng.instant("increase(h[2m])", 120_000).value
        # 5 -> 7 extrapolated to the window start as usual
        self.assertEqual((inc.count, inc.sum), (4.0, 4.0))
        self.assertEqual(eng.instant("start_timestamp(h)", 120_000).value, [])


class LabelReplaceTemplateTests(unittest.TestCase):
    """label_replace's replacement expands as Go's Regexp.ExpandString does, each distinct
    source value once per call, over every series."""

    def run_replace(self, repl, regex, srcs):
        q = MemoryQueryable([((("__name__", "m"), ("i", "%d" % k), ("src", s)), [(0, 1.0)])
                             for k, s in enumerate(srcs)])
        res = Engine(q).instant('label_replace(m, "dst", "%s", "src", "%s")' % (repl, regex), 0)
        return [d.get("dst") for d in sorted(map(dict, (lb for lb, _ in res.value)),
                                             key=lambda d: int(d["i"]))]

    def test_templates(self):
        cases = [
            ("${1}x", "(.*)-(.*)", "a-b", "ax"),
            ("$1x", "(.*)-(.*)", "a-b", None),          # the group named "1x": none, so ""
            ("$2$1", "(.*)-(.*)", "a-b", "ba"),
            ("$$1", "(.*)", "v", "$1"),
            ("a$", "(.*)", "v", "a$"),
            ("${bad-name}", "(.*)", "v", "${bad-name}"),
            ("$3-$1", "(.*)", "v", "-v"),              # no third group: nothing
            ("<$name>", "(?P<name>[a-z]+)[0-9]*", "abc12", "<abc>"),
            ("<${name}$other>", "(?P<name>[a-z]+)[0-9]*", "abc12", "<abc>"),
            ("$0!", "[a-z]+", "abc", "abc!"),
            ("$2/$1", "(.*)-(.*)", "h\u00e9llo-w\u00f6rld\u2603", "w\u00f6rld\u2603/h\u00e9llo"),
            ("<$1>", "a(x)?(.)", "ab", "<>"),                  # group 1 took no part
            ("$1", "a(.)b", "a\udcffb", "\ufffd"),           # invalid UTF-8 reads as U+FFFD
        ]
        for repl, regex, src, want in cases:
            self.assertEqual(self.run_replace(repl, regex, [src]), [want], (repl, regex, src))

    def test_each_series_gets_its_own_value(self):
        """Series sharing a source value, and values that do not match, mixed."""
        got = self.run_replace("h-$1", "host-(.*)", ["host-1", "x", "host-2", "host-1", "x"])
        self.assertEqual(got, ["h-1", None, "h-2", "h-1", None])
