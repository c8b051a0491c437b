"""Tests for the promqltest script reader (tests/support/promqltest.py)."""

import glob
import math
import os
import unittest

from tests.promql import TESTDATA
from tests.support import promqltest as P


class SeriesNotationTests(unittest.TestCase):
    """Series notation expands exactly as Prometheus' test loader does."""

    def test_increments(self):
        """`a+bxN` gives N+1 values a, a+b, ..., including negative steps."""
        self.assertEqual(P.expand_values("1+2x3"), [1, 3, 5, 7])
        self.assertEqual(P.expand_values("0+10x3"), [0, 10, 20, 30])
        self.assertEqual(P.expand_values("1-2x4"), [1, -1, -3, -5, -7])
        self.assertEqual(P.expand_values("-3-3x1"), [-3, -6])
        self.assertEqual(P.expand_values("0.1+0.1x2"), [0.1, 0.1 + 0.1, 0.1 + 0.1 + 0.1])

    def test_repeats_and_gaps(self):
        """`axN` repeats N+1 times; `_` and `_xN` leave positions empty."""
        self.assertEqual(P.expand_values("5x2"), [5, 5, 5])
        self.assertEqual(P.expand_values("1 _ 2 _x3 3"), [1, None, 2, None, None, None, 3])

    def test_special_values(self):
        """stale writes the staleness marker; Inf, -Inf and NaN are numbers."""
        vals = P.expand_values("stale Inf -Inf +Inf NaN 1e3")
        self.assertTrue(P.is_stale(vals[0]))
        self.assertEqual(vals[1:4], [math.inf, -math.inf, math.inf])
        self.assertTrue(math.isnan(vals[4]) and not P.is_stale(vals[4]))
        self.assertEqual(vals[5], 1000)

    def test_histograms(self):
        """`{{...}}` literals parse into their keys; `+{{...}}xN` keeps base, delta and k."""
        vals = P.expand_values("{{schema:1 sum:3 count:22 buckets:[5 10 7]}} _ {{count:1}}x1")
        self.assertEqual(vals[0].desc, {"schema": 1, "sum": 3, "count": 22,
                                        "buckets": [5, 10, 7]})
        self.assertIsNone(vals[1])
        self.assertEqual(len(vals), 4)
        vals = P.expand_values("{{schema:0 count:1}}+{{count:2 counter_reset_hint:gauge}}x2")
        self.assertEqual([v.k for v in vals], [0, 1, 2])
        self.assertEqual(vals[2].delta, {"count": 2, "counter_reset_hint": "gauge"})
        self.assertEqual(vals[2].sign, 1)

    def test_bad_items_are_script_errors(self):
        """An unreadable value item raises ScriptError naming the line."""
        with self.assertRaises(P.ScriptError):
            P.expand_values("1+", 7)
        # No hex in series values: `0x10` is zero repeated eleven times.
        self.assertEqual(P.expand_values("0x10"), [0] * 11)


class ScriptTests(unittest.TestCase):
    """Scripts become load/clear/eval commands with their expectations."""

    SCRIPT = """
# comment
load 5m
  http_requests{job="api", "a.b"="x"} 0+10x2
  {__name__="up"} 1 _ stale

eval instant at 10m sum(http_requests)
  {} 20

eval range from 0 to 10m step 5m http_requests
  expect warn msg: something
  expect no_info
  http_requests{job="api", "a.b"="x"} 0 _ 20

eval_fail instant at 0 foo
  expected_fail_message boom

eval instant at 1m "a"
  expect string "a"

eval instant at 1m time()
  60

clear

load_with_nhcb 1m
  h_bucket{le="1"} 1x2
"""

    def test_commands(self):
        """Each command is read with its line number, times in ms and expectations."""
        cmds = P.parse_script(self.SCRIPT)
        kinds = [type(c).__name__ for c in cmds]
        self.assertEqual(kinds, ["LoadCmd", "EvalCmd", "EvalCmd", "EvalCmd", "EvalCmd",
                                 "EvalCmd", "ClearCmd", "LoadCmd"])
        load = cmds[0]
        self.assertEqual((load.line, load.interval_ms, load.with_nhcb), (3, 300000, False))
        self.assertEqual(load.series[0].labels,
                         {"__name__": "http_requests", "job": "api", "a.b": "x"})
        self.assertEqual(load.series[0].values, [0, 10, 20])
        self.assertEqual(load.series[1].labels, {"__name__": "up"})
        inst = cmds[1]
        self.assertEqual((inst.instant, inst.at_ms, inst.expr), (True, 600000, "sum(http_requests)"))
        self.assertEqual(inst.expected_series[0].labels, {})
        self.assertEqual(inst.expected_series[0].values, [20])
        rng = cmds[2]
        self.assertEqual((rng.start_ms, rng.end_ms, rng.step_ms), (0, 600000, 300000))
        self.assertEqual(rng.warn[0].msg, "something")
        self.assertTrue(rng.expect_warn and rng.no_info)
        self.assertEqual(rng.expected_series[0].values, [0, None, 20])
        self.assertEqual((cmds[3].fail, cmds[3].fail_msg), (True, "boom"))
        self.assertEqual(cmds[4].expected_string, "a")
        self.assertEqual(cmds[5].expected_scalar, 60)
        self.assertTrue(cmds[7].with_nhcb)

    def test_invalid_command(self):
        """An unknown command word is a script error."""
        with self.assertRaises(P.ScriptError):
            P.parse_script("bogus 1\n")

    def test_multiple_values_need_range_vector(self):
        """An instant eval with several values per series needs `expect range vector`."""
        with self.assertRaises(P.ScriptError):
            P.parse_script("eval instant at 0 x\n  x 1 2\n")
        cmds = P.parse_script("eval instant at 1m x[1m]\n  expect range vector from 0 to 1m step 30s\n"
                              "  x 1 2 3\n")
        self.assertEqual(cmds[0].range_vector, (0, 60000, 30000))

    def test_start_timestamp_lines(self):
        """An `@st` line attaches start-time offsets to the following series."""
        cmds = P.parse_script("load 1m\n  s{a=\"b\"}@st _ -1m+1sx1 +1m\n  s{a=\"b\"} _ 1 2 3\n")
        sd = cmds[0].series[0]
        self.assertEqual(sd.start_offsets_ms, [None, -60000, -59000, 60000])
        self.assertEqual(sd.values, [None, 1, 2, 3])


class ConformanceScriptTests(unittest.TestCase):
    """The upstream scripts read without script errors."""

    def test_all_scripts_read(self):
        """Every top-level conformance script parses into commands."""
        files = sorted(glob.glob(os.path.join(TESTDATA, "*.test")))
        if not files:
            self.fail("the pinned conformance scripts are missing from %s" % TESTDATA)
        evals = loads = 0
        for f in files:
            for c in P.load_file(f):
                evals += isinstance(c, P.EvalCmd)
                loads += isinstance(c, P.LoadCmd)
        self.assertGreaterEqual(evals, 2214)
        self.assertGreaterEqual(loads, 300)
