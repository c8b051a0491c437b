"""Vector matching and scalar operators over more series than one evaluation slice holds.

The evaluator matches float-only vectors in C a slice of left-hand series at a time
(promql/vecops.py), carrying the steps already matched per signature from slice to slice. The
conformance files use a handful of series; here hundreds of them make the matches, the errors
for duplicate matches and the comparison filters cross slice boundaries, and every answer is
checked against a plain-Python oracle written from Prometheus' documented semantics."""

import math
import unittest

from urdar.promql.engine import Engine, QueryError

from tests.promql.test_evaluator import MemoryQueryable

STEP = 15_000
N_HOSTS = 40
PER_HOST = 15          # 600 left-hand series: more than two slices of 256


def lhs_series():
    out = []
    for h in range(N_HOSTS):
        for k in range(PER_HOST):
            labels = (("__name__", "requests_total"), ("instance", "host-%02d" % h),
                      ("job", "job-%d" % (h % 4)), ("path", "/p%02d" % k))
            # Missing at some steps, so presence differs per step.
            pts = [(t * STEP, float(h * 100 + k + t)) for t in range(4) if (h + k + t) % 5]
            out.append((labels, pts))
    return out


def rhs_series():
    out = []
    for h in range(N_HOSTS):
        labels = [("__name__", "build_info"), ("instance", "host-%02d" % h)]
        if h % 3:
            labels.append(("version", "1.%d" % h))     # some hosts have no version label
        out.append((tuple(labels), [(t * STEP, float(h % 7)) for t in range(4)]))
    return out


def value_at(points, t):
    """The instant value of a series at t (5 min lookback, samples every step here)."""
    best = None
    for ts, v in points:
        if t - 300_000 < ts <= t:
            best = v
    return best


def rendered(result):
    """{labels: value} of an instant vector result."""
    return {labels: v for labels, v in result.value}


class VectorMatchingAtScaleTests(unittest.TestCase):

    def setUp(self):
        self.lhs = lhs_series()
        self.rhs = rhs_series()
        self.engine = Engine(MemoryQueryable(self.lhs + self.rhs))

    def test_group_left_copies_the_included_label_across_slices(self):
        q = "requests_total * on(instance) group_left(version) build_info"
        for t in range(4):
            got = rendered(self.engine.instant(q, t * STEP))
            want = {}
            by_instance = {dict(l)["instance"]: (l, p) for l, p in self.rhs}
            for labels, pts in self.lhs:
                a = value_at(pts, t * STEP)
                rl, rp = by_instance[dict(labels)["instance"]]
                b = value_at(rp, t * STEP)
                if a is None or b is None:
                    continue
                out = {k: v for k, v in labels if k != "__name__"}
                if dict(rl).get("version"):
                    out["version"] = dict(rl)["version"]
                want[tuple(sorted(out.items()))] = a * b
            self.assertEqual(len(got), len(want))
            self.assertEqual(got, want)

    def test_comparison_filter_and_bool_across_slices(self):
        for t in range(4):
            filt = rendered(self.engine.instant(
                "requests_total > on(instance) group_left build_info * 300", t * STEP))
            with_bool = rendered(self.engine.instant(
                "requests_total > bool on(instance) group_left build_info * 300", t * STEP))
            by_instance = {dict(l)["instance"]: p for l, p in self.rhs}
            want_filt, want_bool = {}, {}
            for labels, pts in self.lhs:
                a = value_at(pts, t * STEP)
                b = value_at(by_instance[dict(labels)["instance"]], t * STEP)
                if a is None or b is None:
                    continue
                if a > b * 300:
                    want_filt[labels] = a          # the filter keeps the name and lhs value
                want_bool[tuple(p for p in labels if p[0] != "__name__")] = float(a > b * 300)
            self.assertEqual(filt, want_filt)
            self.assertEqual(with_bool, want_bool)

    def test_range_query_matches_every_step(self):
        res = self.engine.range("requests_total - on(instance) group_left build_info",
                                0, 3 * STEP, STEP)
        got = {labels: dict(zip(ts, vs)) for labels, ts, vs in res.value}
        by_instance = {dict(l)["instance"]: p for l, p in self.rhs}
        want = {}
        for labels, pts in self.lhs:
            row = {}
            for t in range(4):
                a = value_at(pts, t * STEP)
                b = value_at(by_instance[dict(labels)["instance"]], t * STEP)
                if a is not None and b is not None:
                    row[t * STEP] = a - b
            if row:
                want[tuple(p for p in labels if p[0] != "__name__")] = row
        self.assertEqual(got, want)

    def test_duplicate_one_to_one_match_in_a_later_slice_fails(self):
        # Two left series (far apart: different slices) with the same instance match one
        # right series: without group_left that is an error, as in Prometheus.
        lhs = [((("__name__", "a"), ("instance", "host-%03d" % i), ("x", "1")), [(0, 1.0)])
               for i in range(500)]
        lhs.append(((("__name__", "a"), ("instance", "host-007"), ("x", "2")), [(0, 2.0)]))
        rhs = [((("__name__", "b"), ("instance", "host-%03d" % i)), [(0, 3.0)])
               for i in range(500)]
        eng = Engine(MemoryQueryable(lhs + rhs))
        with self.assertRaises(QueryError) as cm:
            eng.instant("a * on(instance) b", 0)
        self.assertEqual(str(cm.exception), "multiple matches for labels: many-to-one matching "
                                             "must be explicit (group_left/group_right)")

    def test_duplicate_output_labels_in_a_later_slice_fail(self):
        # group_left where two left series differ only in __name__: `*` drops it, so both give
        # the same output labels.
        lhs = [((("__name__", "a"), ("instance", "host-%03d" % i)), [(0, 1.0)])
               for i in range(400)]
        lhs.append(((("__name__", "c"), ("instance", "host-010")), [(0, 2.0)]))  # slice 2 vs 1
        rhs = [((("__name__", "b"), ("instance", "host-%03d" % i)), [(0, 3.0)])
               for i in range(400)]
        eng = Engine(MemoryQueryable(lhs + rhs))
        with self.assertRaises(QueryError) as cm:
            eng.instant("{__name__=~\"a|c\"} * on(instance) group_left b", 0)
        self.assertEqual(str(cm.exception),
                         "multiple matches for labels: grouping labels must ensure unique matches")

    def test_group_right_keeps_operand_order(self):
        got = rendered(self.engine.instant(
            "build_info - on(instance) group_right(version) requests_total", 2 * STEP))
        by_instance = {dict(l)["instance"]: p for l, p in self.rhs}
        for labels, v in got.items():
            d = dict(labels)
            lp = next(p for l, p in self.lhs if dict(l)["instance"] == d["instance"]
                      and dict(l)["path"] == d["path"])
            self.assertEqual(v, value_at(by_instance[d["instance"]], 2 * STEP)
                             - value_at(lp, 2 * STEP))
        self.assertTrue(got)


class ScalarOperatorsAtScaleTests(unittest.TestCase):

    def setUp(self):
        self.lhs = lhs_series()
        self.engine = Engine(MemoryQueryable(self.lhs))

    def test_scalar_comparisons_and_arithmetic(self):
        t = 3 * STEP
        vals = {labels: value_at(pts, t) for labels, pts in self.lhs}
        vals = {k: v for k, v in vals.items() if v is not None}
        unnamed = {tuple(p for p in k if p[0] != "__name__"): v for k, v in vals.items()}
        self.assertEqual(rendered(self.engine.instant("requests_total > 2000", t)),
                         {k: v for k, v in vals.items() if v > 2000})
        self.assertEqual(rendered(self.engine.instant("2000 < requests_total", t)),
                         {k: v for k, v in vals.items() if 2000 < v})
        self.assertEqual(rendered(self.engine.instant("requests_total >= bool 2000", t)),
                         {k: float(v >= 2000) for k, v in unnamed.items()})
        self.assertEqual(rendered(self.engine.instant("1 / (requests_total - 1000)", t)),
                         {k: (1 / (v - 1000) if v != 1000 else math.inf)
                          for k, v in unnamed.items()})
        self.assertEqual(rendered(self.engine.instant("requests_total % 7", t)),
                         {k: math.fmod(v, 7) for k, v in unnamed.items()})


if __name__ == "__main__":
    unittest.main()
