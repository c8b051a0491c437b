"""Hostile queries stay bounded: deadlines and cancellation stop evaluation inside its loops."""

import unittest
from array import array

from twisted.internet.task import Clock

from urdar.promql.engine import Engine, QueryCanceled, QueryTimeout


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
