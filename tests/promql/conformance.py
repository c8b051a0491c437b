"""promqltest runner: runs Prometheus' PromQL acceptance scripts against urdar's evaluator.

For every eval it does what Prometheus' promqltest does: the query as written, for instant
evals also @-pinned variants (unless time-dependent) and each of those again as a range query
t-1m..t+1m step 1m judged at t. Outcomes are "pass", "fail" (with the first difference) or
"skip" (with a reason: the native histogram cases in HISTOGRAM_PENDING). Used by tests/promql/test_conformance.py and
runnable directly: `python -m tests.promql.conformance [file.test ...]`.
"""

from __future__ import annotations

import glob
import math
import os
import re
import struct
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

from tests.promql import TESTDATA
from tests.support import promqltest as P
from urdar.engine.histogram import FloatHistogram
from urdar.promql import ast as A
from urdar.promql import histograms as H
from urdar.promql.engine import Engine, QueryError, Result
from tests.support.headstore import HeadStore
from urdar.promql.parser import Options, ParseError, parse_expr

# Experimental features that come later: failures there are reported as skips. (None today:
# every file passes in full, the cases in HISTOGRAM_PENDING aside.)
EXPERIMENTAL_FILES: frozenset = frozenset()

AT_UNSAFE = {"time", "timestamp", "predict_linear", "start", "end", "range", "step",
             "day_of_month", "day_of_week", "day_of_year", "days_in_month", "hour", "minute",
             "month", "year"}
_CONTEXT_FUNCS = re.compile(r"(start|end|range|step)\(\)")
MIN_NORMAL = 2.2250738585072014e-308
MAX_FLOAT = 1.7976931348623157e308


# Native histogram cases that cannot pass yet, with why; reported as skips. Any other failing
# case is a failure, and a listed case that passes fails too, so the list only shrinks.
HISTOGRAM_PENDING: Dict[tuple, str] = {}


@dataclass
class Outcome:
    file: str
    line: int
    expr: str
    status: str  # pass / fail / skip
    reason: str = ""


def _bits(v):
    return struct.unpack("<Q", struct.pack("<d", v))[0]


def almost_equal(a: float, b: float, eps: float = 1e-6) -> bool:
    sa, sb = P.is_stale(a), P.is_stale(b)
    if sa or sb:
        return sa and sb
    if math.isnan(a) and math.isnan(b):
        return True
    if a == b:
        return True
    absd = abs(a - b)
    if a == 0 or b == 0 or abs(a) + abs(b) < MIN_NORMAL:
        return absd < eps * MIN_NORMAL
    return absd / min(abs(a) + abs(b), MAX_FLOAT) < eps


def _labels_key(d: Dict[str, str]):
    return tuple(sorted((k, v) for k, v in d.items() if v != ""))


class Mismatch(Exception):
    pass


def _with_at(expr_text: str, t: int) -> Optional[str]:
    """The query with `@ t` on every selector/subquery lacking one; None if time-dependent."""
    expr = parse_expr(expr_text, Options())
    unsafe = False

    # Prometheus sets @ on the subquery first and then stops descending below it, because
    # the path then contains a subquery with @.
    def visit2(node, path_has_at):
        nonlocal unsafe
        if node is None:
            return
        if isinstance(node, A.Call) and node.func.name in AT_UNSAFE:
            unsafe = True
        if not path_has_at:
            if isinstance(node, A.VectorSelector):
                if node.timestamp_ms is None and node.start_or_end is None:
                    node.timestamp_ms = t
            elif isinstance(node, A.MatrixSelector):
                vs = node.vector_selector
                if vs.timestamp_ms is None and vs.start_or_end is None:
                    vs.timestamp_ms = t
                return
            elif isinstance(node, A.SubqueryExpr):
                if node.timestamp_ms is None and node.start_or_end is None:
                    node.timestamp_ms = t
        child_at = path_has_at or (isinstance(node, A.SubqueryExpr) and
                                   (node.timestamp_ms is not None or node.start_or_end))
        for c in node.children():
            visit2(c, child_at)

    visit2(expr, False)
    if unsafe:
        return None
    return str(expr)


class Runner:
    def __init__(self):
        self.store = HeadStore()
        # As promqltest: experimental functions, duration expressions, anchored/smoothed and
        # fill modifiers on (production gates the first with
        # -querier.promql-experimental-functions-enabled).
        self.engine = Engine(self.store, max_samples=50_000_000, options=Options(
            enable_experimental_functions=True, experimental_duration_expr=True,
            enable_extended_range_selectors=True, enable_binop_fill_modifiers=True))
        self.strict_histograms = False  # -H: pending histogram cases count as failures

    # -- loading -------------------------------------------------------------------------------

    def load(self, cmd: P.LoadCmd):
        for sd in cmd.series:
            samples = []
            hists = []
            for i, v in enumerate(sd.values):
                if v is None:
                    continue
                if isinstance(v, P.HistogramItem):
                    hists.append((i * cmd.interval_ms, v.value()))
                    continue
                samples.append((i * cmd.interval_ms, v))
            sts = None
            if sd.start_offsets_ms is not None:
                # `@st` offsets: a sample's start time is its time plus the offset
                sts = {i * cmd.interval_ms: i * cmd.interval_ms + off
                       for i, off in enumerate(sd.start_offsets_ms)
                       if off is not None and i < len(sd.values) and sd.values[i] is not None}
            if samples:
                self.store.append(sd.labels, samples, sts)
            if hists:
                self.store.append_histograms(sd.labels, hists, sts)
        if cmd.with_nhcb:
            for labels, points in P.nhcb_series(cmd):
                self.store.append_histograms(labels, points)

    # -- judging -------------------------------------------------------------------------------

    def check_fail(self, cmd, err: Exception):
        msg = str(err)
        if cmd.fail_msg is not None and msg.strip() != cmd.fail_msg.strip():
            raise Mismatch("expected error %r, got %r" % (cmd.fail_msg, msg))
        if cmd.fail_regex is not None and not re.search(cmd.fail_regex, msg):
            raise Mismatch("expected error matching %r, got %r" % (cmd.fail_regex, msg))

    def check_annotations(self, cmd, res: Result):
        for kind, got in (("warn", res.warnings), ("info", res.infos)):
            exps = getattr(cmd, kind)
            if getattr(cmd, "no_" + kind) and got:
                raise Mismatch("unexpected %s annotations: %r" % (kind, got))
            if getattr(cmd, "expect_" + kind):
                if not got:
                    raise Mismatch("expected %s annotations, got none" % kind)
                if exps:
                    for g in got:
                        if not any(_ann_match(e, g) for e in exps):
                            raise Mismatch("unexpected %s annotation %r" % (kind, g))
                    for e in exps:
                        if not any(_ann_match(e, g) for g in got):
                            raise Mismatch("expected %s annotation %r not produced: %r"
                                           % (kind, e.msg or e.regex, got))

    def compare(self, cmd, res: Result, instant: bool, ordered: bool, times=None):
        if cmd.expected_string is not None:
            if res.type != "string" or res.value != cmd.expected_string:
                raise Mismatch("expected string %r, got %s %r" % (cmd.expected_string, res.type,
                                                                    res.value))
            return
        if cmd.expected_scalar is not None:
            if res.type != "scalar":
                raise Mismatch("expected scalar, got %s" % res.type)
            if not almost_equal(cmd.expected_scalar, res.value):
                raise Mismatch("expected scalar %r, got %r" % (cmd.expected_scalar, res.value))
            return
        if instant and cmd.range_vector is None:
            if res.type != "vector":
                raise Mismatch("expected vector, got %s" % res.type)
            exp = {}
            order = []
            for sd in cmd.expected_series:
                k = _labels_key(sd.labels)
                exp[k] = sd.values[0]
                order.append(k)
            got = {}
            for labels, v in res.value:
                if labels not in exp:
                    raise Mismatch("unexpected series %s = %r" % (dict(labels), v))
                got[labels] = v
            for k, v in exp.items():
                if k not in got:
                    raise Mismatch("expected series %s not in result" % (dict(k),))
                if not values_equal(v, got[k]):
                    raise Mismatch("series %s: expected %s, got %s" % (dict(k), _show(v),
                                                                        _show(got[k])))
            if ordered:
                seq = [labels for labels, _ in res.value]
                if seq != order:
                    raise Mismatch("order differs: got %r" % (seq,))
            return
        # Matrix.
        if res.type != "matrix":
            raise Mismatch("expected matrix, got %s" % res.type)
        if times is None:
            a, b, s = cmd.range_vector
            times = list(range(a, b + 1, s))
        exp = {}
        for sd in cmd.expected_series:
            if len(sd.values) > len(times):
                raise Mismatch("more expected values than steps")
            pts = [(times[i], v) for i, v in enumerate(sd.values) if v is not None]
            exp[_labels_key(sd.labels)] = pts
        prev = None
        for item in res.value:
            labels = item[0]
            pts = matrix_points(item)
            if prev is not None and not (prev < labels):
                raise Mismatch("matrix result not sorted by labels")
            prev = labels
            if labels not in exp:
                raise Mismatch("unexpected series %s" % (dict(labels),))
            want = exp[labels]
            if len(want) != len(pts):
                raise Mismatch("series %s: expected %d points, got %d: %s"
                               % (dict(labels), len(want), len(pts),
                                  [(t, _show(v)) for t, v in pts]))
            for (wt, wv), (t, v) in zip(want, pts):
                if wt != t or not values_equal(wv, v):
                    raise Mismatch("series %s: expected (%d, %s), got (%d, %s)"
                                   % (dict(labels), wt, _show(wv), t, _show(v)))
        got = {item[0] for item in res.value}
        for k in exp:
            if k not in got:
                raise Mismatch("expected series %s not in result" % (dict(k),))

    # -- running -------------------------------------------------------------------------------

    def run_instant(self, cmd, expr, t):
        try:
            res = self.engine.instant(expr, t)
        except (QueryError, ParseError) as e:
            if cmd.fail:
                self.check_fail(cmd, e)
                return
            raise Mismatch("error: %s" % e)
        if cmd.fail:
            raise Mismatch("expected an error, got none")
        self.check_annotations(cmd, res)
        self.compare(cmd, res, True, cmd.ordered)
        if cmd.exclude_from_range_query or _CONTEXT_FUNCS.search(expr):
            return
        try:
            rres = self.engine.range(expr, t - 60000, t + 60000, 60000)
        except (QueryError, ParseError) as e:
            raise Mismatch("range mode error: %s" % e)
        if cmd.ordered:
            return
        prev = None
        vec = []
        for item in rres.value:
            labels = item[0]
            if prev is not None and not prev < labels:
                raise Mismatch("range mode result not sorted")
            prev = labels
            for tt, v in matrix_points(item):
                if tt == t:
                    vec.append((labels, v))
        if cmd.expected_scalar is not None:
            res2 = Result("scalar", vec[0][1] if vec else math.nan, t)
        else:
            res2 = Result("vector", vec, t)
        try:
            self.compare(cmd, res2, True, False)
        except Mismatch as e:
            raise Mismatch("range mode: %s" % e)

    def run_eval(self, cmd: P.EvalCmd):
        if cmd.instant:
            self.run_instant(cmd, cmd.expr, cmd.at_ms)
            try:
                variant = _with_at(cmd.expr, cmd.at_ms)
            except ParseError:
                variant = None
            if variant is None:
                return
            ts = cmd.at_ms
            others = [-10 * ts, 0, ts // 5 if ts >= 0 else -((-ts) // 5), ts, 10 * ts]
            if ts == 0:
                others = [-1000, 0, 1000]
            for et in others:
                try:
                    self.run_instant(cmd, variant, et)
                except Mismatch as e:
                    raise Mismatch("@-variant %r at %d: %s" % (variant, et, e))
            return
        try:
            res = self.engine.range(cmd.expr, cmd.start_ms, cmd.end_ms, cmd.step_ms)
        except (QueryError, ParseError) as e:
            if cmd.fail:
                self.check_fail(cmd, e)
                return
            raise Mismatch("error: %s" % e)
        if cmd.fail:
            raise Mismatch("expected an error, got none")
        self.check_annotations(cmd, res)
        times = list(range(cmd.start_ms, cmd.end_ms + 1, cmd.step_ms))
        if res.type == "matrix" and cmd.expected_scalar is None:
            self.compare(cmd, res, False, False, times)
        else:
            self.compare(cmd, res, False, False, times)

    def run_file(self, path) -> List[Outcome]:
        name = os.path.basename(path)
        out = []
        for cmd in P.load_file(path):
            if isinstance(cmd, P.ClearCmd):
                self.store.clear()
            elif isinstance(cmd, P.LoadCmd):
                self.load(cmd)
            else:
                try:
                    self.run_eval(cmd)
                    out.append(Outcome(name, cmd.line, cmd.expr, "pass"))
                    continue
                except Mismatch as e:
                    out.append(Outcome(name, cmd.line, cmd.expr, "fail", str(e)))
                except Exception as e:  # an engine bug: report, keep going
                    out.append(Outcome(name, cmd.line, cmd.expr, "fail",
                                       "crash: %s: %s" % (type(e).__name__, e)))
                reason = HISTOGRAM_PENDING.get((name, cmd.line))
                if reason is not None and not self.strict_histograms:
                    o = out[-1]
                    if o.status == "pass":
                        o.status, o.reason = "fail", ("listed in HISTOGRAM_PENDING but passes: "
                                                      "remove it")
                    else:
                        o.status, o.reason = "skip", "native histograms: %s (%s)" % (
                            reason, o.reason[:160])
        return out


def matrix_points(item):
    """A matrix result series' (t, value) points in time order, histograms included."""
    pts = list(zip(item[1], item[2]))
    if len(item) > 3:
        pts.extend(zip(item[3], item[4]))
        pts.sort(key=lambda p: p[0])
    return pts


def values_equal(exp, got) -> bool:
    if isinstance(exp, P.HistogramItem):
        # promqltest compacts both sides first
        return isinstance(got, FloatHistogram) and histograms_equal(
            H.compact(exp.value()), H.compact(got), exp.hint_set)
    if isinstance(got, FloatHistogram):
        return False
    return almost_equal(exp, got)


def histograms_equal(exp: FloatHistogram, cur: FloatHistogram, hint_set: bool) -> bool:
    """promqltest's compareNativeHistogram: counts and sums almost equal, the same layout
    (zero-length spans aside), the reset hint only when the expectation names one."""
    if exp.schema != cur.schema or not almost_equal(exp.count, cur.count) or \
            not almost_equal(exp.sum, cur.sum):
        return False
    if exp.schema == -53 and list(exp.custom_values) != list(cur.custom_values):
        return False
    if exp.zero_threshold != cur.zero_threshold or not almost_equal(exp.zero_count,
                                                                    cur.zero_count):
        return False
    for es, eb, cs, cb in ((exp.negative_spans, exp.negative_buckets, cur.negative_spans,
                            cur.negative_buckets),
                           (exp.positive_spans, exp.positive_buckets, cur.positive_spans,
                            cur.positive_buckets)):
        if _norm_spans(es) != _norm_spans(cs) or len(eb) != len(cb) or \
                not all(almost_equal(a, b) for a, b in zip(eb, cb)):
            return False
    return not hint_set or exp.counter_reset_hint == cur.counter_reset_hint


def _norm_spans(spans):
    """Spans with zero-length ones folded into the next span's offset."""
    out = []
    carry = 0
    for off, ln in spans:
        if ln == 0:
            carry += off
            continue
        out.append((off + carry, ln))
        carry = 0
    return out


def _show(v):
    if isinstance(v, P.HistogramItem):
        return v.raw
    return repr(v)


def _ann_match(exp, got: str) -> bool:
    if exp.msg is not None:
        return got == exp.msg
    return re.search(exp.regex, got) is not None


def test_files() -> List[str]:
    """The top-level scripts of the in-repo pinned copy (tests/promql/testdata/), sorted."""
    return sorted(glob.glob(os.path.join(TESTDATA, "*.test")))


def run_all(paths=None, strict_histograms=False):
    results = {}
    for p in paths or test_files():
        r = Runner()
        r.strict_histograms = strict_histograms
        t0 = time.time()
        results[os.path.basename(p)] = (r.run_file(p), time.time() - t0)
    return results


def main(argv):
    paths = [a for a in argv if a.endswith(".test")] or test_files()
    verbose = "-v" in argv
    results = run_all(paths, "-H" in argv)
    tp = tf = ts = 0
    for name, (outs, dt) in results.items():
        p = sum(o.status == "pass" for o in outs)
        f = sum(o.status == "fail" for o in outs)
        s = sum(o.status == "skip" for o in outs)
        tp, tf, ts = tp + p, tf + f, ts + s
        print("%-28s pass %4d  fail %4d  skip %4d  (%.1fs)" % (name, p, f, s, dt))
        if verbose:
            for o in outs:
                if o.status == "fail":
                    print("   FAIL %s:%d %s\n        %s" % (o.file, o.line, o.expr, o.reason[:400]))
    print("TOTAL pass %d fail %d skip %d" % (tp, tf, ts))


if __name__ == "__main__":
    main(sys.argv[1:])
