"""Deadline checks inside range functions over long windows: the step-sliced kernel calls give
the same answers as one call, and a query past its deadline stops within its slices."""
import time
import unittest
from unittest import mock

from urdar.promql import calls
from urdar.promql.engine import Engine, QueryTimeout

T = 1_700_000_000_000


class _Empty:
    def select(self, matchers, mint, maxt):
        return []

    def has_series(self, matchers):
        return False


class _Clock:
    def seconds(self):
        return time.monotonic()


def run(query, **kw):
    r = Engine(_Empty(), **kw).range(query, T - 3_600_000, T, 30_000)
    return [(lbl, list(ts), list(vs)) for lbl, ts, vs in r.value]


class StepSlicedRangeFunctionTests(unittest.TestCase):
    QUERIES = ["%s((vector(time()) %% 7)[10m:1s])" % f for f in (
        "sum_over_time", "avg_over_time", "count_over_time", "stddev_over_time",
        "max_over_time", "last_over_time", "rate", "deriv", "changes", "resets",
        "mad_over_time")] + [
        "quantile_over_time(0.3, (vector(time()) % 7)[10m:1s])",
        "predict_linear((vector(time()) % 11)[10m:1s], 60)",
        "double_exponential_smoothing((vector(time()) % 5)[5m:1s], 0.5, 0.5)",
        "quantile_over_time(0.9, (vector(time()) > 1699998000)[10m:1s])",   # windows empty at first
    ]

    def test_same_answers_as_one_kernel_call(self):
        for q in self.QUERIES:
            whole = run(q)
            with mock.patch.object(calls, "WINDOW_BATCH_POINTS", 1000):
                sliced = run(q)
            self.assertEqual(sliced, whole, q)
            self.assertTrue(whole and len(whole[0][1]) > 50, q)

    def test_same_answers_over_stored_series(self):
        """Matrix selectors over fetched arrays (several series, one of them sparse)."""
        from tests.promql.test_evaluator import MemoryQueryable
        series = [((("__name__", "m"), ("i", str(i))),
                   [(T - 3_600_000 + k * (1000 * (i + 1)), float((k * 7) % 13))
                    for k in range(0, 3600 // (i + 1))]) for i in range(3)]
        for f in ("rate", "sum_over_time", "quantile_over_time(0.5,", "changes", "deriv"):
            q = ("%s m[10m])" % f) if f.endswith(",") else ("%s(m[10m])" % f)
            eng = Engine(MemoryQueryable(series))
            whole = eng.range(q, T - 1_800_000, T, 15_000).value
            with mock.patch.object(calls, "WINDOW_BATCH_POINTS", 500):
                sliced = Engine(MemoryQueryable(series)).range(q, T - 1_800_000, T, 15_000).value
            self.assertEqual([(lbl, list(ts), list(vs)) for lbl, ts, vs in sliced],
                             [(lbl, list(ts), list(vs)) for lbl, ts, vs in whole], q)
            self.assertEqual(len(whole), 3, q)

    def test_deadline_stops_one_series_with_long_windows(self):
        """One series, 1441 steps of 86,400-sample windows (seconds of sorting): a 0.2 s
        deadline stops it within a few slices, not after the whole kernel call."""
        clock = _Clock()
        q = "quantile_over_time(0.5, (vector(time()) % 77)[1d:1s])"
        cpu = time.thread_time()
        with self.assertRaises(QueryTimeout):
            Engine(_Empty(), clock=clock, deadline_s=clock.seconds() + 0.2).range(
                q, T - 86_400_000, T, 60_000)
        self.assertLess(time.thread_time() - cpu, 1.5)
