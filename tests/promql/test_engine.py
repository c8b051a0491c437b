"""Tests for the PromQL evaluator (urdar/promql/engine.py and evaluator.py) and its kernels."""

import math
import struct
import unittest
from array import array

from urdar.promql import kernels as K
from urdar.promql.engine import Engine, QueryError
from tests.support.headstore import HeadStore

STALE = struct.unpack("<d", struct.pack("<Q", 0x7FF0000000000002))[0]


def store(series):
    st = HeadStore()
    for labels, samples in series:
        st.append(labels, samples)
    return st


class EngineTests(unittest.TestCase):
    """Queries evaluate with Prometheus 3.x semantics."""

    def setUp(self):
        self.st = store([
            ({"__name__": "c_total", "job": "a"}, [(i * 15000, i * 10.0) for i in range(41)]),
            ({"__name__": "c_total", "job": "b"}, [(i * 15000, i * 1.0) for i in range(41)]),
            ({"__name__": "g", "job": "a"}, [(0, 1.0), (60000, 2.0), (120000, STALE)]),
        ])
        self.addCleanup(self.st.close)
        self.e = Engine(self.st)

    def test_instant_selector_lookback_is_left_open(self):
        """A sample exactly lookback old is no longer visible; a stale marker hides the series."""
        r = self.e.instant("g", 60000 + 300000)
        self.assertEqual(r.value, [])
        r = self.e.instant("g", 60000 + 299999)
        self.assertEqual(r.value, [])  # the stale marker at 120s is newer
        r = self.e.instant("g", 119999)
        self.assertEqual(r.value, [((("__name__", "g"), ("job", "a")), 2.0)])

    def test_rate_drops_name_and_extrapolates(self):
        """rate() over a perfect counter gives its slope and drops __name__."""
        r = self.e.instant('rate(c_total{job="a"}[5m])', 600000)
        self.assertEqual(len(r.value), 1)
        labels, v = r.value[0]
        self.assertEqual(labels, (("job", "a"),))
        self.assertAlmostEqual(v, 10 / 15)

    def test_range_query_matrix_sorted(self):
        """Range queries return a matrix sorted by labels with one point per step."""
        r = self.e.range("sum by (job) (c_total)", 0, 600000, 60000)
        self.assertEqual(r.type, "matrix")
        self.assertEqual([s[0] for s in r.value], [(("job", "a"),), (("job", "b"),)])
        self.assertEqual(list(r.value[0][1]), list(range(0, 600001, 60000)))

    def test_go_float_arithmetic(self):
        """% is fmod, division by zero gives Inf/NaN, ^ binds tighter than unary minus."""
        self.assertEqual(self.e.instant("-7 % 3", 0).value, -1.0)
        self.assertEqual(self.e.instant("1 / 0", 0).value, math.inf)
        self.assertTrue(math.isnan(self.e.instant("0 / 0", 0).value))
        self.assertEqual(self.e.instant("-1 ^ 2", 0).value, -1.0)

    def test_duplicate_labelset_error(self):
        """Dropping names that makes two series identical is an error."""
        with self.assertRaises(QueryError) as cm:
            self.e.instant('-{__name__=~"c_total|g", job="a"}', 60000)
        self.assertEqual(str(cm.exception), "vector cannot contain metrics with the same labelset")

    def test_many_to_many_error(self):
        """Duplicate series on the 'one' side of a match fail with Prometheus' message."""
        with self.assertRaises(QueryError) as cm:
            self.e.instant("g + on() c_total", 60000)
        self.assertIn("many-to-many matching not allowed", str(cm.exception))


class KernelTests(unittest.TestCase):
    """The vectorized kernels handle window edges and NaN ordering."""

    def test_range_window_left_open(self):
        """(end - range, end] excludes the sample at end - range."""
        ts = array("q", [0, 10, 20])
        vs = array("d", [1, 2, 3])
        out = array("d", [0.0])
        mask = bytearray(1)
        K.range_values(K.RANGE_FUNCS["count_over_time"], ts, vs, array("q", [20]), 20,
                       array("d"), array("d"), array("q", [20]), out, mask)
        self.assertEqual((mask[0], out[0]), (1, 2.0))

    def test_quantile_nan_first(self):
        """NaN sorts first, as in Prometheus' quantile."""
        self.assertTrue(math.isnan(K.quantile(0, [1.0, math.nan, 2.0])))
        self.assertEqual(K.quantile(1, [1.0, math.nan, 2.0]), 2.0)

    def test_empty_window_at_end(self):
        """A window past the last sample yields no value rather than an error."""
        out = array("d", [0.0, 0.0])
        mask = bytearray(2)
        K.range_values(K.RANGE_FUNCS["sum_over_time"], array("q", [0]), array("d", [1]),
                       array("q", [0, 1000]), 10, array("d"), array("d"), array("q", [0, 1000]),
                       out, mask)
        self.assertEqual(list(mask), [1, 0])
