"""PromQL evaluator: a parsed expression + a Queryable -> a value over every step of the query.

Engine (promql/engine.py) builds one Evaluator per query. It sits between the querier, which
supplies `select(matchers, mint, maxt)` over ingesters and store-gateways, and the handlers,
which render the `Result`. Every node is evaluated over ALL steps of the query at once, as
Prometheus' range evaluation does, so an instant query is a range query with one step: a
vector is a list of `Series` (promql/value.py), each a float64 array over the steps plus a
presence mask; the per-sample loops run in promql/kernels.pyx without the GIL, functions are
looked up in promql/calls.py. Semantics follow Prometheus 3.x: left-open windows, staleness
markers, delayed `__name__` removal, Go float arithmetic, Prometheus' error and annotation
texts. The evaluator checks the query's deadline and cancellation flag between batches of
work, so a timed-out query frees its worker thread promptly.
"""

from __future__ import annotations

import math
from array import array
from operator import attrgetter, itemgetter
from typing import Dict

from urdar.engine.labels import decode_labels
from urdar.promql import ast as A
from urdar.promql import histcalls as HC
from urdar.promql import histograms as H
from urdar.promql import kernels as K
from urdar.promql import vecops as V
from urdar.promql.calls import FUNCTION_CALLS
from urdar.promql.value import (
    METADATA, NAME, MatrixValue, QueryCanceled, QueryError, QueryTimeout, Result, Scalar,
    Series, String, TooManySamples, drop_meta, fmt_g, fmt_value, full, get_label, labels_str,
    set_label, unwrap, valid_label_name, zeros)

# Label key bytes -> label tuple, shared by all queries: series keys repeat across selects and
# decoding dominated instant queries over 10k series (benchmarks/query_bench.py). Bounded by
# clearing; dict operations are atomic under the GIL, so worker threads may share it.
_LABELS: Dict[bytes, tuple] = {}
_LABELS_MAX = 1_000_000


_SECOND = itemgetter(1)
_VALS = attrgetter("vals")
_MASK = attrgetter("mask")
_DROP_NAME = attrgetter("drop_name")
_THIRD = itemgetter(2)
_FIFTH = itemgetter(4)


def _decode_key(key):
    labels = tuple(decode_labels(key))
    if len(_LABELS) >= _LABELS_MAX:
        _LABELS.clear()
    _LABELS[key] = labels
    return labels



# Deadline checks: in Python loops every PY_POINTS step values of work, between kernel calls
# every BATCH_POINTS (both at most CHECK_EVERY series apart; a few ms of work either way), so a
# timed-out or cancelled query stops within milliseconds while the checks (one clock read
# each) stay negligible next to the work they guard.
CHECK_EVERY = 256
BATCH_POINTS = 1 << 18
PY_POINTS = 1 << 14  # per-step work in Python loops is ~50x slower than in the kernels


# Subquery grids are built this many step times at a time, with a deadline check between.
GRID_CHUNK = 1 << 16
_MIN_T, _MAX_T = -(1 << 63), (1 << 63) - 1
# The functions whose windows may hold the extra samples of `anchored` / `smoothed`.
ANCHORED_SAFE = frozenset(("resets", "changes", "rate", "increase", "delta"))
SMOOTHED_SAFE = frozenset(("rate", "increase", "delta"))
_TOO_MANY_SAMPLES = "query processing would load too many samples into memory in query execution"


def _empty_without_series(node):
    """Whether node's value is surely empty when none of its selectors matches a series: False
    for anything that can make samples from nothing (literals, time(), vector(), absent(), a
    date function without argument), so that only such queries may skip their step grid."""
    try:
        return _empty_without(node)
    except RecursionError:
        return False  # too deep to tell: the caller then refuses the grid


def _empty_without(node):
    while isinstance(node, (A.ParenExpr, A.UnaryExpr, A.SubqueryExpr)):
        node = node.expr
    if isinstance(node, (A.VectorSelector, A.MatrixSelector)):
        return True
    if isinstance(node, A.AggregateExpr):
        return _empty_without(node.expr)
    if isinstance(node, A.Call):
        if node.func.name in ("absent", "absent_over_time", "vector") or not node.args:
            return False
        inputs = [a for a in node.args if a.type() in (A.VECTOR, A.MATRIX)]
        return bool(inputs) and all(_empty_without(a) for a in inputs)
    if isinstance(node, A.BinaryExpr):
        if node.type() == A.SCALAR:
            return False
        if node.lhs.type() == A.SCALAR:
            return _empty_without(node.rhs)
        if node.rhs.type() == A.SCALAR:
            return _empty_without(node.lhs)
        vm = node.matching
        filled = vm is not None and (vm.fill_lhs is not None or vm.fill_rhs is not None)
        if node.op == "or" or filled:
            return _empty_without(node.lhs) and _empty_without(node.rhs)
        if node.op == "unless":
            return _empty_without(node.lhs)
        return _empty_without(node.lhs) or _empty_without(node.rhs)
    return False


def _overlap(series, n):
    """Whether two of the series are present at one step (one C pass per series)."""
    taken = bytearray(n)
    return any(K.claim_steps(taken, s.mask) for s in series)


class Evaluator:
    """One query's evaluation over the step times of [start, end] (step 0: instant)."""

    def __init__(self, engine, query, start, end, step, lookback_ms):
        self.q = engine.queryable
        self.clock = engine.clock
        self.deadline_s = engine.deadline_s
        self.cancelled = engine.cancelled
        self.query = query
        self.start = start
        self.end = end
        self.step = step
        self.instant = step == 0
        self.lookback = lookback_ms
        self.max_samples = engine.max_samples
        self.sub_step = engine.subquery_step_ms
        self.warnings = []
        self.infos = []
        self.stats_selectors: frozenset = frozenset()
        self.float_only = set()  # ids of argument nodes whose histograms are dropped
        if self.instant:
            self.times = array("q", [start])
        else:
            n = (end - start) // step + 1
            if n > self.max_samples:  # the API allows 11,000 steps; other callers are bounded here
                raise TooManySamples(_TOO_MANY_SAMPLES)
            self.times = array("q", range(start, start + n * step, step))

    def each(self, items):
        """Iterate series, checking the deadline before every few of them: about PY_POINTS
        step values of Python work apart, at most CHECK_EVERY series."""
        nsteps = len(getattr(self, "times_cur", self.times))
        every = max(1, min(CHECK_EVERY, PY_POINTS // max(1, nsteps)))
        for i, x in enumerate(items):
            if i % every == 0:
                self.check()
            yield x

    def batches(self, n, nsteps):
        """[lo, hi) slices of n series for one kernel call each, with a deadline check before
        each: about BATCH_POINTS step values per call, at most CHECK_EVERY series."""
        size = max(1, min(CHECK_EVERY, BATCH_POINTS // max(1, nsteps)))
        for lo in range(0, n, size):
            self.check()
            yield lo, min(n, lo + size)

    def check(self):
        """Raise QueryCanceled or QueryTimeout once the query should stop; the loops call this
        between batches so an abandoned query frees its worker thread promptly."""
        if self.cancelled is not None and self.cancelled():
            raise QueryCanceled()
        if self.deadline_s is not None and self.clock.seconds() > self.deadline_s:
            raise QueryTimeout()

    # -- annotations ---------------------------------------------------------------------------

    def _pos(self, node):
        return A.position_str(self.query, node.pos_range()[0])

    def warn(self, msg, node):
        s = "PromQL warning: %s (%s)" % (msg, self._pos(node))
        if s not in self.warnings:
            self.warnings.append(s)

    def info(self, msg, node):
        s = "PromQL info: %s (%s)" % (msg, self._pos(node))
        if s not in self.infos:
            self.infos.append(s)

    # -- entry ---------------------------------------------------------------------------------

    def run(self, expr):
        self.stats_selectors = _stats_only_selectors(expr)
        typ = expr.type()
        if not self.instant and typ not in (A.SCALAR, A.VECTOR):
            raise QueryError("invalid expression type %s for range query, must be Scalar or "
                             "instant Vector" % A.go_quote(A.documented_type(typ)))
        val = self.eval(expr, self.times)
        t = self.start
        if isinstance(val, String):
            return Result("string", val.val, t, self.warnings, self.infos)
        if isinstance(val, Scalar):
            if self.instant:
                return Result("scalar", val.vals[0], t, self.warnings, self.infos)
            return Result("matrix", [((), array("q", self.times), array("d", val.vals))], t,
                          self.warnings, self.infos)
        if isinstance(val, MatrixValue):
            out = []
            e = val.ends[0]
            vsel = val.node.vector_selector if isinstance(val.node, A.MatrixSelector) else None
            extended = vsel is not None and (vsel.anchored or vsel.smoothed)
            for si, (labels, ts, vs, drop) in enumerate(val.series):
                hp = val.hists[si] if val.hists is not None else None
                if hp is not None:
                    if extended:
                        raise QueryError("%s modifier is not supported with histograms"
                                         % ("anchored" if vsel.anchored else "smoothed"))
                    lo_t = e - val.range_ms
                    sel_t = array("q")
                    sel_v = array("d")
                    for i in range(len(ts)):
                        if lo_t < ts[i] <= e:
                            sel_t.append(ts[i])
                            sel_v.append(vs[i])
                    hts = array("q")
                    hvs = []
                    for t_, h in zip(hp[0], hp[1]):
                        if lo_t < t_ <= e:
                            hts.append(t_)
                            hvs.append(h)
                    if sel_t or hvs:
                        lb = drop_meta(labels) if drop else labels
                        out.append((lb, sel_t, sel_v, hts, hvs) if hvs else (lb, sel_t, sel_v))
                    continue
                if extended:
                    sel_t, sel_v = _extend_floats(ts, vs, e - val.range_ms, e, vsel.smoothed)
                    if sel_t:
                        out.append((labels, sel_t, sel_v))
                    continue
                sel_t = array("q")
                sel_v = array("d")
                for i in range(len(ts)):
                    if e - val.range_ms < ts[i] <= e:
                        sel_t.append(ts[i])
                        sel_v.append(vs[i])
                if sel_t:
                    out.append((drop_meta(labels) if drop else labels, sel_t, sel_v))
            out = self._merge_matrix(out)
            out.sort(key=lambda s: s[0])
            return Result("matrix", out, t, self.warnings, self.infos)
        # Vector: delayed __name__ removal, then merge or refuse equal label sets.
        if self.instant:
            samples = V.instant_samples(val)
            if samples is not None:
                return Result("vector", samples, t, self.warnings, self.infos)
        series = []
        for s in self.each(val):
            if s.drop_name:
                s = Series(drop_meta(s.labels), s.vals, s.mask, False, None, s.hists)
            series.append(s)
        if self.instant:
            out = []
            seen = set()
            for s in series:
                if s.mask[0]:
                    if s.labels in seen:
                        raise QueryError("vector cannot contain metrics with the same labelset")
                    seen.add(s.labels)
                    h = s.hists[0] if s.hists is not None else None
                    out.append((s.labels, s.vals[0] if h is None else h))
            return Result("vector", out, t, self.warnings, self.infos)
        series = self.merge(series, True)
        out = []
        for s in self.each(series):
            if s.hists is not None:
                fl = s.floats_only()
                ts, vs = K.compress(self.times, fl.vals, fl.mask)
                hts = array("q", [self.times[k] for k, h in enumerate(s.hists)
                                  if h is not None and s.mask[k]])
                hvs = [h for k, h in enumerate(s.hists) if h is not None and s.mask[k]]
                if hvs:
                    out.append((s.labels, ts, vs, hts, hvs))
                elif len(ts):
                    out.append((s.labels, ts, vs))
                continue
            ts, vs = K.compress(self.times, s.vals, s.mask)
            if len(ts):
                out.append((s.labels, ts, vs))
        out.sort(key=lambda s: s[0])
        return Result("matrix", out, t, self.warnings, self.infos)

    def _merge_matrix(self, out):
        if any(len(x) > 3 for x in out):
            seen = set()
            for x in out:
                if x[0] in seen:
                    raise QueryError("vector cannot contain metrics with the same labelset")
                seen.add(x[0])
            return out
        by = {}
        res = []
        for labels, ts, vs in out:
            if labels in by:
                prev = by[labels]
                pts = sorted(list(zip(prev[1], prev[2])) + list(zip(ts, vs)), key=lambda p: p[0])
                for i in range(1, len(pts)):
                    if pts[i][0] == pts[i - 1][0]:
                        raise QueryError("vector cannot contain metrics with the same labelset")
                prev[1] = array("q", [p[0] for p in pts])
                prev[2] = array("d", [p[1] for p in pts])
            else:
                item = [labels, ts, vs]
                by[labels] = item
                res.append(item)
        return [tuple(x) for x in res]

    def merge(self, series, check=True):
        """Combine series with equal labels; overlapping presence is an error."""
        at = {}         # labels -> index in res
        owned = set()   # indices whose arrays are our own copies, merged into in place
        res = []
        for s in self.each(series):
            i = at.get(s.labels)
            if i is None:
                at[s.labels] = len(res)
                res.append(s)
                continue
            prev = res[i]
            if i not in owned:
                # The inputs' arrays may be shared with other nodes: copy once, then merge
                # every later duplicate into the copy (linear in the duplicates).
                prev = res[i] = Series(prev.labels, array("d", prev.vals), bytearray(prev.mask),
                                       prev.drop_name, None,
                                       None if prev.hists is None else list(prev.hists))
                owned.add(i)
            vals, mask = prev.vals, prev.mask
            if s.hists is not None and prev.hists is None:
                prev.hists = [None] * len(mask)
            for k in range(len(mask)):
                if s.mask[k]:
                    if mask[k]:
                        if check:
                            raise QueryError("vector cannot contain metrics with the same labelset")
                        continue
                    mask[k] = 1
                    vals[k] = s.vals[k]
                    if prev.hists is not None:
                        prev.hists[k] = s.hists[k] if s.hists is not None else None
            prev.drop_name = prev.drop_name or s.drop_name
        return res

    def _dedupe(self, series):
        """Prometheus' range evaluation merges equal label sets per node (error on overlap);
        single-step evaluation keeps duplicates."""
        if len(self.times_cur) <= 1:
            return series
        return self.merge(series, True)

    def _count_samples(self, n):
        if n > self.max_samples:
            raise TooManySamples(_TOO_MANY_SAMPLES)

    # -- dispatcher ----------------------------------------------------------------------------

    def eval(self, node, times):
        self.check()
        prev = getattr(self, "times_cur", None)
        self.times_cur = times
        try:
            v = self._eval(node, times)
            if self.float_only and id(node) in self.float_only:
                v = _floats_only(v)
            return v
        finally:
            self.times_cur = prev if prev is not None else times

    def _eval(self, node, times):
        if isinstance(node, A.NumberLiteral):
            return Scalar(full(len(times), node.val))
        if isinstance(node, A.StringLiteral):
            return String(node.val)
        if isinstance(node, A.ParenExpr):
            return self.eval(node.expr, times)
        if isinstance(node, A.UnaryExpr):
            v = self.eval(node.expr, times)
            if node.op != "-":
                return v
            if isinstance(v, Scalar):
                return Scalar(array("d", [-x for x in v.vals]))
            return [Series(s.labels, array("d", [-x for x in s.vals]), s.mask, True, None,
                           None if s.hists is None else
                           [None if h is None else H.negate(h) for h in s.hists])
                    for s in v]
        if isinstance(node, A.VectorSelector):
            return self.eval_vector_selector(node, times)
        if isinstance(node, (A.MatrixSelector, A.SubqueryExpr)):
            return self.eval_matrix(node, times)
        if isinstance(node, A.Call):
            return self.eval_call(node, times)
        if isinstance(node, A.AggregateExpr):
            return self.eval_aggregate(node, times)
        if isinstance(node, A.BinaryExpr):
            return self.eval_binary(node, times)
        if isinstance(node, A.DurationExpr):
            return Scalar(full(len(times), self.duration_value(node) / 1000.0))
        raise QueryError("unsupported expression %s" % type(node).__name__)

    # -- durations -----------------------------------------------------------------------------

    def duration_value(self, d) -> int:
        """A DurationExpr or NumberLiteral in ms."""
        if isinstance(d, A.NumberLiteral):
            return int(round(d.val * 1000))
        if isinstance(d, A.ParenExpr):
            return self.duration_value(d.expr)
        op = d.op
        if op == "step":
            return self.step
        if op == "range":
            return self.end - self.start
        if op in ("min_of", "max_of"):
            x, y = self.duration_value(d.lhs), self.duration_value(d.rhs)
            return min(x, y) if op == "min_of" else max(x, y)
        if d.lhs is None:
            v = self.duration_value(d.rhs)
            return -v if op == "-" else v
        a = self.duration_value(d.lhs) / 1000.0
        b = self.duration_value(d.rhs) / 1000.0
        if op == "+":
            r = a + b
        elif op == "-":
            r = a - b
        elif op == "*":
            r = a * b
        elif op == "/":
            if b == 0:
                raise QueryError("division by zero")
            r = a / b
        elif op == "%":
            if b == 0:
                raise QueryError("modulo by zero")
            r = math.fmod(a, b)
        elif op == "^":
            r = math.pow(a, b)
        else:
            raise QueryError("unknown duration operator %s" % op)
        return int(round(r * 1000))

    def _offset(self, node):
        if getattr(node, "offset_expr", None) is not None:
            return self.duration_value(node.offset_expr)
        return node.offset_ms

    def _ref_times(self, node, times):
        """Per-step reference time of a selector/subquery: @ (or the step) minus offset."""
        off = self._offset(node)
        at = node.timestamp_ms
        if node.start_or_end == "start":
            at = self.start
        elif node.start_or_end == "end":
            at = self.end
        if at is not None:
            return array("q", [at - off]) * len(times)
        if off == 0:
            return times
        return array("q", [t - off for t in times])

    # -- selectors -----------------------------------------------------------------------------

    def _select(self, matchers, mint, maxt, sts=None, hists=None, stats=False, hsts=None):
        """[(labels, ts, vals)] and the sample count. A Queryable may add each series' start
        timestamps as a fourth item (0 = unknown); with `sts` a list, they are appended to it
        aligned with the result (None for a series without), else dropped. A series with
        native histograms comes as (key, ts, vals, sts or None, hist times, [FloatHistogram]);
        with `hists` a list, (hist times, hists) or None is appended to it per series, else
        its histograms are dropped. With `stats`, histograms keep only count and sum and get
        reset hints from comparing each with the one before (Prometheus' HistogramStatsIterator,
        used where only histogram_count/sum/avg look at them). A seventh item, when present,
        holds the histogram samples' start timestamps (0 = unknown); with `hsts` a list, they
        are appended to it per series (None for a series without)."""
        out, total = V.split_selected(self.q.select(matchers, mint, maxt), _LABELS, _decode_key,
                                      sts, hists, hsts)
        if stats and hists:
            for i, hp in enumerate(hists):
                if hp is not None:
                    hists[i] = (hp[0], HC.stats_only(hp[1]))
        return out, total

    def eval_vector_selector(self, node, times):
        refs = self._ref_times(node, times)
        if node.smoothed:
            return self._smoothed_selector(node, refs)
        mint = min(refs) - self.lookback + 1
        maxt = max(refs)
        hparts = []
        data, _ = self._select(node.matchers, mint, maxt, None, hparts,
                               id(node) in self.stats_selectors)
        out = []
        total = 0
        tss = list(map(_SECOND, data))
        valss = list(map(_THIRD, data))
        with_h = ([i for i, hp in enumerate(hparts) if hp is not None]
                  if hparts.count(None) != len(hparts) else None)
        if with_h:
            # Series with histogram samples take the Python path; the rest the kernel's.
            for i in self.each(with_h):
                hp = hparts[i]
                vals, sts, mask, hists, c = HC.instant_with_hists(
                    tss[i], valss[i], hp[0], hp[1], refs, self.lookback)
                total += c
                if c:
                    out.append(Series(data[i][0], vals, mask, False, sts, hists))
            hset = set(with_h)
            keep = [i for i in range(len(data)) if i not in hset]
            data = [data[i] for i in keep]
            tss = [tss[i] for i in keep]
            valss = [valss[i] for i in keep]
        for lo, hi in self.batches(len(data), len(refs)):
            got = K.instant_values_many(tss[lo:hi], valss[lo:hi], refs, self.lookback)
            total += sum(map(_FIFTH, got))
            out.extend([Series(data[lo + i][0], vals, mask, False, sts)
                        for i, vals, sts, mask, _ in got])
            self._count_samples(total)  # per batch: stop growing as soon as the limit is passed
        return out

    def _smoothed_selector(self, node, refs):
        """`metric smoothed`: per step the value at the reference time, interpolated between
        the samples around it (Prometheus' smoothSeries); stale markers are skipped."""
        hparts = []
        data, _ = self._select(node.matchers, min(refs) - self.lookback + 1,
                               max(refs) + self.lookback, None, hparts,
                               id(node) in self.stats_selectors)
        tss, valss = [], []
        for _, ts, vals in data:
            f = K.filter_stale(ts, vals)
            if f is not None:
                ts, vals = f
            tss.append(ts)
            valss.append(vals)
        out = []
        total = 0
        with_h = [i for i, hp in enumerate(hparts) if hp is not None]
        if with_h:
            for i in self.each(with_h):
                hp = HC.drop_stale_hists(tss[i], valss[i], hparts[i])
                if hp is None:
                    continue
                vals, mask, hists = HC.smoothed_with_hists(self, node, data[i][0], tss[i],
                                                           valss[i], hp[0], hp[1], refs)
                if any(mask):
                    total += mask.count(1)
                    out.append(Series(data[i][0], vals, mask, False, None, hists))
            hset = set(with_h)
            keep = [i for i in range(len(data)) if i not in hset]
            data = [data[i] for i in keep]
            tss = [tss[i] for i in keep]
            valss = [valss[i] for i in keep]
        for lo, hi in self.batches(len(data), len(refs)):
            for i, vals, mask in K.smoothed_values_many(tss[lo:hi], valss[lo:hi], refs,
                                                        self.lookback):
                total += mask.count(1)
                out.append(Series(data[lo + i][0], vals, mask, False))
            self._count_samples(total)
        return out

    def eval_matrix(self, node, times) -> MatrixValue:
        node = unwrap(node)
        if isinstance(node, A.MatrixSelector):
            vs = node.vector_selector
            rng = node.range_ms if node.range_expr is None else self.duration_value(node.range_expr)
            ends = self._ref_times(vs, times)
            # anchored/smoothed windows also see a lookback delta before (smoothed: and after)
            before = self.lookback if (vs.anchored or vs.smoothed) else 0
            after = self.lookback if vs.smoothed else 0
            raw_sts: list = []
            raw_h: list = []
            raw_hsts: list = []
            data, total = self._select(vs.matchers, min(ends) - rng - before + 1,
                                       max(ends) + after, raw_sts, raw_h,
                                       id(vs) in self.stats_selectors, raw_hsts)
            if raw_sts.count(None) == len(raw_sts) and raw_h.count(None) == len(raw_h):
                # Floats without start timestamps (the common case): one C pass.
                self.check()
                self._count_samples(total)
                return MatrixValue(V.drop_stale(data), ends, rng, node)
            series = []
            sts = []
            hists = []
            hsts = []
            for (labels, ts, vals), st, hp, hst in zip(self.each(data), raw_sts, raw_h,
                                                      raw_hsts):
                if st is None:
                    f = K.filter_stale(ts, vals)
                    if f is not None:
                        ts, vals = f
                else:
                    g = K.filter_stale_st(ts, vals, st)
                    if g is not None:
                        ts, vals, st = g
                if hp is not None:
                    if hst is not None:
                        hp, hst = HC.drop_stale_hists_st(hp, hst)
                    else:
                        hp = HC.drop_stale_hists(ts, vals, hp)
                if len(ts) or hp is not None:
                    series.append((labels, ts, vals, False))
                    sts.append(st)
                    hists.append(hp)
                    hsts.append(hst if hp is not None else None)
            self._count_samples(total)
            return MatrixValue(series, ends, rng, node,
                               sts if any(st is not None for st in sts) else None,
                               hists if any(h is not None for h in hists) else None,
                               hsts if any(st is not None for st in hsts) else None)
        # Subquery: evaluate the inner expression on its own epoch-aligned grid.
        rng = node.range_ms if node.range_expr is None else self.duration_value(node.range_expr)
        step = node.step_ms
        if node.step_expr is not None:
            step = self.duration_value(node.step_expr)
        if step == 0:
            step = self.sub_step
        ends = self._ref_times(node, times)
        lo = min(ends) - rng
        first = (lo // step + 1) * step
        last = max(ends)
        npoints = (last - first) // step + 1 if first <= last else 0
        if npoints > self.max_samples:
            # Every inner series would hold up to npoints values: refuse before allocating,
            # unless nothing matches, as then Prometheus answers at once with no series.
            if _empty_without_series(node.expr) and self._selects_nothing(node.expr):
                return MatrixValue([], ends, rng, node)
            raise TooManySamples(_TOO_MANY_SAMPLES)
        inner_times = self._grid(first, step, npoints)
        series = []
        hists = []
        if len(inner_times):
            saved = self.times_cur
            val = self.eval(node.expr, inner_times)
            self.times_cur = saved
            if isinstance(val, Scalar):
                series.append(((), array("q", inner_times), array("d", val.vals), False))
                hists.append(None)
            else:
                for s in self.each(val):
                    if s.hists is not None:
                        fl = s.floats_only()
                        ts, vv = K.compress(inner_times, fl.vals, fl.mask)
                        hts = array("q", [inner_times[k] for k, h in enumerate(s.hists)
                                          if h is not None and s.mask[k]])
                        hvs = [_unknown_hint(h) for k, h in enumerate(s.hists)
                               if h is not None and s.mask[k]]
                        if len(ts) or hvs:
                            series.append((s.labels, ts, vv, s.drop_name))
                            hists.append((hts, hvs) if hvs else None)
                        continue
                    ts, vv = K.compress(inner_times, s.vals, s.mask)
                    if len(ts):
                        series.append((s.labels, ts, vv, s.drop_name))
                        hists.append(None)
        return MatrixValue(series, ends, rng, node, None,
                           hists if any(h is not None for h in hists) else None)

    def _grid(self, first, step, n):
        """The n step times first, first+step, ... built in chunks with a deadline check
        before each, so a large subquery grid never delays a timeout."""
        grid = array("q")
        for lo in range(0, n, GRID_CHUNK):
            self.check()
            hi = min(n, lo + GRID_CHUNK)
            grid.extend(range(first + lo * step, first + hi * step, step))
        return grid

    def _selects_nothing(self, expr):
        """Whether every selector under expr matches no series at any time (one select each)."""
        probe = getattr(self.q, "has_series", None)   # prefetched data: ask what was fetched
        for n in A.walk(expr):
            if isinstance(n, A.VectorSelector):
                if probe is not None:
                    if probe(n.matchers):
                        return False
                    continue
                data, _ = self._select(n.matchers, _MIN_T, _MAX_T)
                if data:
                    return False
        return True

    # -- functions -----------------------------------------------------------------------------

    def scalar_arg(self, node, times):
        v = self.eval(node, times)
        return v.vals

    def eval_call(self, node, times):
        name = node.func.name
        call = FUNCTION_CALLS.get(name)
        if call is None:
            raise QueryError("function %s is not supported" % name)
        for a in node.args:
            a = unwrap(a)
            if isinstance(a, A.MatrixSelector):
                vs = a.vector_selector
                if vs.anchored and name not in ANCHORED_SAFE:
                    raise QueryError("anchored modifier can only be used with: %s - not with %s"
                                     % (", ".join(sorted(ANCHORED_SAFE)), name))
                if vs.smoothed and name not in SMOOTHED_SAFE:
                    raise QueryError("smoothed modifier can only be used with: %s - not with %s"
                                     % (", ".join(sorted(SMOOTHED_SAFE)), name))
        if name not in HIST_AWARE:
            # Functions of floats only never see histogram samples.
            self.float_only.update(id(a) for a in node.args)
        return call(self, node, times)

    def eval_aggregate(self, node, times):
        n = len(times)
        op = node.op
        param = None
        if node.param is not None:
            if op == "count_values":
                param = self.eval(node.param, times).val
            else:
                param = self.scalar_arg(node.param, times)
        v = self.eval(node.expr, times)
        self.check()
        keys, sgroups = V.group_index(v, frozenset(node.grouping), not node.without)
        hist_in = V.any_hists(v)
        if hist_in:
            hsum = None
            if op in ("count", "group", "count_values"):
                pass  # a histogram sample counts like a float (count_values: its String())
            else:
                if op in ("sum", "avg"):
                    hsum = self._sum_histograms(node, v, sgroups, len(keys), n)
                elif op not in ("limitk", "limit_ratio"):
                    for s in v:
                        if s.hists is not None and any(
                                h is not None and s.mask[k] for k, h in enumerate(s.hists)):
                            self.info("ignored histogram in %s aggregation" % op, node.expr)
                            break
                if op not in ("limitk", "limit_ratio", "count_values"):
                    v = [s.floats_only() for s in v]
        if op in K.AGGREGATIONS:
            agg = K.Aggregator(K.AGGREGATIONS[op], len(keys), n)
            drop = [False] * len(keys)
            groups = sgroups
            for lo, hi in self.batches(len(v), n):
                part = v[lo:hi]
                K.aggregate_many(agg, list(map(_VALS, part)), list(map(_MASK, part)),
                                 groups[lo:hi])
            if any(map(_DROP_NAME, v)):
                for s, gi in zip(v, sgroups):
                    if s.drop_name:
                        drop[gi] = True
            out = []
            for gi, key in enumerate(keys):
                vals = zeros(n)
                mask = bytearray(n)
                got = agg.result(gi, vals, mask)
                if hist_in and hsum is not None:
                    hists = hsum[gi]
                    if hists is not None:
                        for k in range(n):
                            h = hists[k]
                            if h is None:
                                continue
                            if mask[k] or h is _MIXED:
                                # floats and histograms in one group: no value
                                self.warn("encountered a mix of histograms and floats for "
                                          "%s aggregation" % op, node.expr)
                                mask[k] = 0
                                hists[k] = None
                                continue
                            mask[k] = 1
                            vals[k] = 0.0
                        if any(mask):
                            out.append(Series(key, vals, mask, drop[gi], None, hists))
                        continue
                if got:
                    out.append(Series(key, vals, mask, drop[gi]))
            return out
        if op == "quantile":
            if any(math.isnan(q) for q in param):
                self.warn("quantile value should be between 0 and 1, got NaN", node.param)
            mx, mn = max(param), min(param)
            if mx > 1:
                self.warn("quantile value should be between 0 and 1, got %s" % fmt_g(mx),
                          node.param)
            if mn < 0:
                self.warn("quantile value should be between 0 and 1, got %s" % fmt_g(mn),
                          node.param)
            # Members per group first: scanning every series for every group was quadratic
            # (`quantile by (instance)` over 10k series did 10^8 comparisons per step).
            members = [[] for _ in keys]
            for s, gi in zip(v, sgroups):
                members[gi].append(s)
            out = []
            for gi, key in self.each(enumerate(keys)):
                group = members[gi]
                vals = zeros(n)
                mask = bytearray(n)
                for k in range(n):
                    xs = [s.vals[k] for s in group if s.mask[k]]
                    if xs:
                        vals[k] = K.quantile(param[k], xs)
                        mask[k] = 1
                if any(mask):
                    out.append(Series(key, vals, mask, any(s.drop_name for s in group)))
            return out
        if op == "count_values":
            if not valid_label_name(param):
                raise QueryError("invalid label name %s" % A.go_quote(param))
            res = {}
            order = []
            for s, gi in self.each(zip(v, sgroups)):
                base = keys[gi]
                for k in range(n):
                    if not s.mask[k]:
                        continue
                    h = s.hists[k] if s.hists is not None else None
                    lbl = set_label(base, param,
                                    fmt_value(s.vals[k]) if h is None else H.go_string(h))
                    ent = res.get(lbl)
                    if ent is None:
                        # Every distinct value is a series of n steps here: a value per step
                        # (count_values over time() in a [1d:1s] subquery) would need n * n
                        # cells, so the cells are charged to max-samples before allocating.
                        self._count_samples((len(order) + 1) * n)
                        ent = res[lbl] = [zeros(n), bytearray(n)]
                        order.append(lbl)
                    ent[0][k] += 1
                    ent[1][k] = 1
            return [Series(l, res[l][0], res[l][1]) for l in order]
        if op in ("topk", "bottomk", "limitk", "limit_ratio"):
            return self.eval_k(node, v, sgroups, len(keys), param, times)
        raise QueryError("aggregation %s is not supported" % op)

    def _sum_histograms(self, node, v, sgroups, ngroups, n):
        """Per group, per step the sum (avg: mean) of its histogram samples, or None; _MIXED
        where the group's samples cannot be added."""
        sums = [None] * ngroups
        counts = [None] * ngroups
        fl = [None] * ngroups
        for s, gi in zip(v, sgroups):
            for k in range(n):
                if not s.mask[k]:
                    continue
                h = s.hists[k] if s.hists is not None else None
                if h is None:
                    continue
                if sums[gi] is None:
                    sums[gi] = [None] * n
                    counts[gi] = [0] * n
                row = sums[gi]
                acc = row[k]
                counts[gi][k] += 1
                if acc is _MIXED:
                    continue
                if acc is None:
                    row[k] = H.Summer(h)
                    continue
                try:
                    if acc.add(h, node.op == "avg"):
                        self.info("mismatched custom buckets were reconciled during "
                                  "aggregation", node.expr)
                except H.IncompatibleSchema:
                    self.warn("vector contains a mix of histograms with exponential and custom "
                              "buckets schemas for metric name %s"
                              % A.go_quote(get_label(s.labels, NAME)), node.expr)
                    row[k] = _MIXED
        del fl
        out = [None] * ngroups
        for gi in range(ngroups):
            row = sums[gi]
            if row is None:
                continue
            res = [None] * n
            for k in range(n):
                acc = row[k]
                if acc is None:
                    continue
                if acc is _MIXED:
                    res[k] = None
                    continue
                if acc.reset_seen and acc.not_reset_seen:
                    self.warn("conflicting counter resets during histogram aggregation",
                              node.expr)
                h = acc.mean_result() if node.op == "avg" else acc.sum_result()
                if acc.reset_seen and acc.not_reset_seen:
                    h.counter_reset_hint = 0
                res[k] = h
            out[gi] = res
        return out

    def eval_k(self, node, v, sgroups, ngroups, param, times):
        op = node.op
        n = len(times)
        if op in ("topk", "bottomk", "limitk"):
            if max(param) < 1:
                return []
            if any(math.isnan(p) for p in param):
                raise QueryError("Parameter value is NaN")
            if min(param) <= -9.223372036854775808e18:
                raise QueryError("Scalar value %s underflows int64" % fmt_g(min(param)))
            if max(param) >= 9.223372036854775807e18:
                raise QueryError("Scalar value %s overflows int64" % fmt_g(max(param)))
        else:
            if max(param) == 0 and min(param) == 0:
                return []
            if any(math.isnan(p) for p in param):
                raise QueryError("Ratio value is NaN")
            if max(param) > 1:
                self.warn("ratio value should be between -1 and 1, got %s, capping to 1"
                          % fmt_g(max(param)), node.param)
            if min(param) < -1:
                self.warn("ratio value should be between -1 and 1, got %s, capping to -1"
                          % fmt_g(min(param)), node.param)
        masks = [bytearray(n) for _ in v]
        if op in K.KOPS:
            ordered = K.select_k(K.KOPS[op], [s.vals for s in v], [s.mask for s in v],
                                 array("q", sgroups), ngroups, param, masks, n == 1)
            if n == 1:
                return [Series(v[si].labels, v[si].vals, masks[si], v[si].drop_name, None,
                               v[si].hists) for si in ordered]
            return [Series(s.labels, s.vals, masks[i], s.drop_name, None, s.hists)
                    for i, s in enumerate(v) if any(masks[i])]
        ordered = []  # instant: output order
        offsets = [_sample_offset(s.labels) for s in v] if op == "limit_ratio" else []
        for k in range(n):
            p = param[k]
            if op == "limit_ratio":
                if p == 0:
                    continue
                r = max(-1.0, min(1.0, p))
            else:
                kk = min(int(p), len(v))
                if kk < 1:
                    continue
            heaps = [None] * ngroups
            for si, s in enumerate(v):
                if not s.mask[k]:
                    continue
                gi = sgroups[si]
                h = heaps[gi]
                if h is None:
                    h = heaps[gi] = []
                x = s.vals[k]
                if op == "topk":
                    if len(h) < kk:
                        _heap_push(h, (x, si), _less_top)
                    elif h[0][0] < x or (math.isnan(h[0][0]) and not math.isnan(x)):
                        h[0] = (x, si)
                        if kk > 1:
                            _heap_fix(h, 0, _less_top)
                elif op == "bottomk":
                    if len(h) < kk:
                        _heap_push(h, (x, si), _less_bottom)
                    elif h[0][0] > x or (math.isnan(h[0][0]) and not math.isnan(x)):
                        h[0] = (x, si)
                        if kk > 1:
                            _heap_fix(h, 0, _less_bottom)
                elif op == "limitk":
                    if len(h) < kk:
                        h.append((x, si))
                else:
                    if _ratio_sample(r, offsets[si]):
                        h.append((x, si))
            for h in heaps:
                if not h:
                    continue
                if op == "topk":
                    h = _insertion_sort(h, lambda a, b: _less_top(b, a))
                elif op == "bottomk":
                    h = _insertion_sort(h, lambda a, b: _less_bottom(b, a))
                for x, si in h:
                    masks[si][k] = 1
                    if n == 1:
                        ordered.append(si)
        if n == 1:
            return [Series(v[si].labels, v[si].vals, masks[si], v[si].drop_name, None,
                           v[si].hists) for si in ordered]
        return [Series(s.labels, s.vals, masks[i], s.drop_name, None, s.hists)
                for i, s in enumerate(v) if any(masks[i])]

    # -- binary operators ----------------------------------------------------------------------

    def eval_binary(self, node, times):
        # A left-deep chain (1+1+...+1, a or b or c ...) is evaluated in a loop, innermost
        # operator first, so its length costs no recursion depth.
        spine = node.left_spine()
        lhs = self.eval(spine[-1].lhs, times)
        for b in reversed(spine):
            rhs = self.eval(b.rhs, times)
            self.times_cur = times
            lhs = self.eval_operator(b, lhs, rhs, times)
        return lhs

    def eval_operator(self, node, lhs, rhs, times):
        """One binary operator applied to its evaluated operands."""
        n = len(times)
        op = node.op
        if isinstance(lhs, Scalar) and isinstance(rhs, Scalar):
            if op not in K.BINOPS:  # the trims take native histograms only
                raise QueryError("operator %s not allowed for Scalar operations"
                                 % A.go_quote(op))
            out = zeros(n)
            mask = bytearray(n)
            K.binop(K.BINOPS[op], lhs.vals, b"", rhs.vals, b"", out, mask, node.return_bool
                    or op not in A.COMPARISON_OPS, 0)
            return Scalar(out)
        if isinstance(lhs, Scalar) or isinstance(rhs, Scalar):
            swap = isinstance(lhs, Scalar)
            vec, sc = (rhs, lhs) if swap else (lhs, rhs)
            cmp = op in A.COMPARISON_OPS
            drop = (not cmp) or node.return_bool
            trim = op in TRIM_OPS
            if not trim and not V.any_hists(vec):
                # Float samples only: the series in slices, one kernel call per slice.
                out = []
                for lo, hi in self.batches(len(vec), n):
                    out.extend(V.scalar_floats(K.BINOPS[op], vec[lo:hi], sc.vals, swap,
                                               node.return_bool, drop, n))
                return self._dedupe(out)
            out = []
            for s in self.each(vec):
                if s.hists is not None or trim:
                    r = self._scalar_binop_hists(node, s, sc, swap, n)
                    if r is not None:
                        out.append(r)
                    continue
                ov = zeros(n)
                mask = bytearray(n)
                if swap:
                    c = K.binop(K.BINOPS[op], sc.vals, b"", s.vals, s.mask, ov, mask,
                                node.return_bool, 1)
                else:
                    c = K.binop(K.BINOPS[op], s.vals, s.mask, sc.vals, b"", ov, mask,
                                node.return_bool, 0)
                if c:
                    out.append(Series(s.labels, ov, mask, True if drop else s.drop_name))
            return self._dedupe(out)
        vm = node.matching
        if op in A.SET_OPS:
            return self.eval_set_op(op, lhs, rhs, vm, n)
        return self.eval_vector_binop(node, lhs, rhs, vm, n)

    def _sigs(self, series, vm):
        """Per series its match signature: on(...) the named labels, ignoring(...) all but
        those and __name__ (one C loop)."""
        self.check()
        return V.signatures(series, frozenset(vm.matching_labels), vm.on)

    def _mask_union(self, series, sigs):
        """Per match signature, the union of its series' presence masks."""
        masks = {}
        for s, key in zip(self.each(series), sigs):
            m = masks.get(key)
            if m is None:
                masks[key] = bytearray(s.mask)
            else:
                for k, p in enumerate(s.mask):
                    if p:
                        m[k] = 1
        return masks

    def eval_set_op(self, op, lhs, rhs, vm, n):
        if op == "and" or op == "unless":
            rmask = self._mask_union(rhs, self._sigs(rhs, vm))
            out = []
            for s, key in zip(self.each(lhs), self._sigs(lhs, vm)):
                m = rmask.get(key)
                if op == "and":
                    if m is None:
                        continue
                    mask = bytearray(a & b for a, b in zip(s.mask, m))
                else:
                    mask = s.mask if m is None else bytearray(
                        a & (1 - b) for a, b in zip(s.mask, m))
                if any(mask):
                    out.append(Series(s.labels, s.vals, mask, s.drop_name, s.ts, s.hists))
            return out
        # or
        lmask = self._mask_union(lhs, self._sigs(lhs, vm))
        out = [s for s in lhs if any(s.mask)]
        for s, key in zip(self.each(rhs), self._sigs(rhs, vm)):
            m = lmask.get(key)
            mask = s.mask if m is None else bytearray(a & (1 - b) for a, b in zip(s.mask, m))
            if any(mask):
                out.append(Series(s.labels, s.vals, mask, s.drop_name, s.ts, s.hists))
        return self._dedupe(out)

    def eval_vector_binop(self, node, lhs, rhs, vm, n):
        op = node.op
        card = vm.card
        if card == A.CARD_ONE_TO_MANY:
            lhs, rhs = rhs, lhs
        # The "one" side: per signature, its series; duplicates present at one step fail.
        rsigs = self._sigs(rhs, vm)
        right = V.by_signature(rhs, rsigs)
        for key, ss in self.each(right.items()):
            if len(ss) > 1 and _overlap(ss, n):
                for k in range(n):
                    present = [s for s in ss if s.mask[k]]
                    if len(present) > 1:
                        side = "left" if card == A.CARD_ONE_TO_MANY else "right"
                        a, b = present[1], present[0]
                        d1, d2 = labels_str(a.labels), labels_str(b.labels)
                        if d1 > d2:
                            d1, d2 = d2, d1
                        ml = self._match_labels(a.labels, vm)
                        raise QueryError(
                            "found duplicate series for the match group %s on the %s hand-side "
                            "of the operation: [%s, %s];many-to-many matching not allowed: "
                            "matching labels must be unique on one side"
                            % (labels_str(ml), side, d1, d2))
        bop = K.BINOPS.get(op)  # None: trim operators (native histograms only)
        cmp = op in A.COMPARISON_OPS
        changes_schema = op in A.SCHEMA_CHANGING_OPS
        swapped = card == A.CARD_ONE_TO_MANY
        lsigs = self._sigs(lhs, vm)
        if (bop is not None and vm.fill_lhs is None and vm.fill_rhs is None
                and not V.any_hists(lhs) and not V.any_hists(rhs)):
            # Floats only, no fill: matched in C, the arithmetic one kernel call per slice.
            out = []
            claimed = {}
            names = frozenset(vm.matching_labels)
            incl = tuple(vm.include)
            for lo, hi in self.batches(len(lhs), n):
                out.extend(V.match_floats(bop, cmp, node.return_bool, card == A.CARD_ONE_TO_ONE,
                                          swapped, n, lhs[lo:hi], lsigs[lo:hi], right, claimed,
                                          changes_schema, vm.on, names, incl))
            return self._dedupe(out)
        out = []
        matched = {}  # one-to-one: sig -> presence mask of matches so far
        inserted = {}  # many-to-one: (sig, out labels) -> presence mask
        used = {}  # sig -> steps at which some pair of that signature was computed

        def pair(a_vals, a_mask, b_vals, b_mask, labels, key, a_h=None, b_h=None):
            """a op b (original operand order) where both are present, as one output series;
            the steps computed count as matched for `key`, filtered or not."""
            ov = zeros(n)
            mask = bytearray(n)
            hists = None
            if a_h is not None or b_h is not None or bop is None:
                both = bytearray(a_mask[k] & b_mask[k] for k in range(n))
                if not any(both):
                    return
                keep, kmask, hists = self._pair_hists(node, a_vals, a_h, b_vals, b_h, both, n)
                mask = both
                if not cmp:
                    ov, mask = keep, kmask
            else:
                if not K.binop(bop, a_vals, a_mask, b_vals, b_mask, ov, mask, True, 0):
                    return
                if cmp:
                    keep = zeros(n)
                    kmask = bytearray(n)
                    K.binop(bop, a_vals, a_mask, b_vals, b_mask, keep, kmask, node.return_bool,
                            0)
            both = mask if hists is None or cmp else both  # steps where both sides are present
            if card == A.CARD_ONE_TO_ONE:
                pm = matched.get(key)
                if pm is None:
                    matched[key] = bytearray(both)
                elif K.claim_steps(pm, both):
                    raise QueryError(
                        "multiple matches for labels: many-to-one matching must "
                        "be explicit (group_left/group_right)")
            else:
                ik = (key, labels)
                pm = inserted.get(ik)
                if pm is None:
                    inserted[ik] = bytearray(both)
                elif K.claim_steps(pm, both):
                    raise QueryError(
                        "multiple matches for labels: grouping labels must "
                        "ensure unique matches")
            if fill_lhs is not None:
                u = used.get(key)
                used[key] = bytearray(both) if u is None else bytearray(
                    x | y for x, y in zip(u, both))
            if cmp and not node.return_bool:
                # Filter: binop already kept the LHS value (original operand order).
                if any(kmask):
                    out.append(Series(labels, keep, kmask, False, None, hists))
            elif cmp:
                out.append(Series(labels, keep, kmask, node.return_bool))
            elif any(mask):
                out.append(Series(labels, ov, mask, node.return_bool, None, hists))

        # fill_left / fill_right stand in for a missing sample of that side. As in Prometheus,
        # the "one" side (rhs after the group_right swap) misses -> fill_rhs, an unmatched
        # "one" side sample -> fill_lhs, without swapping the two for group_right.
        fill_lhs, fill_rhs = vm.fill_lhs, vm.fill_rhs
        for s, key in zip(self.each(lhs), lsigs):
            rs_list = right.get(key) or []
            for r in rs_list:
                a, b = (r, s) if swapped else (s, r)
                labels = self._result_labels(s.labels, r.labels, vm, changes_schema)
                pair(a.vals, a.mask, b.vals, b.mask, labels, key, a.hists, b.hists)
            if fill_rhs is not None:
                # Steps where s has no partner: the partner is the fill value.
                fmask = bytearray(s.mask)
                for r in rs_list:
                    fmask = bytearray(x & (1 - y) for x, y in zip(fmask, r.mask))
                if any(fmask):
                    fv = full(n, fill_rhs)
                    labels = self._result_labels(s.labels, key, vm, changes_schema)
                    if swapped:
                        pair(fv, fmask, s.vals, fmask, labels, key, None, s.hists)
                    else:
                        pair(s.vals, fmask, fv, fmask, labels, key, s.hists, None)
        if fill_lhs is not None:
            for r, key in zip(self.each(rhs), rsigs):
                u = used.get(key)
                fmask = bytearray(r.mask) if u is None else bytearray(
                    x & (1 - y) for x, y in zip(r.mask, u))
                if not any(fmask):
                    continue
                fv = full(n, fill_lhs)
                labels = self._result_labels(key, r.labels, vm, changes_schema)
                if swapped:
                    pair(r.vals, fmask, fv, fmask, labels, key, r.hists, None)
                else:
                    pair(fv, fmask, r.vals, fmask, labels, key, None, r.hists)
        return self._dedupe(out)

    def _float_pair(self, op):
        bop = K.BINOPS.get(op)
        if bop is None:
            return None

        def f(a, b):
            out = zeros(1)
            mask = bytearray(1)
            K.binop(bop, array("d", [a]), b"\x01", array("d", [b]), b"\x01", out, mask, False,
                    0)
            if op in A.COMPARISON_OPS:
                return a, bool(mask[0])
            return out[0], True
        return f

    def _elem(self, node, lf, lh, rf, rh, fop):
        f, h, keep, ann, kind = HC.elem_binop(node.op, lf, lh, rf, rh, fop)
        if ann is not None:
            (self.info if kind == "info" else self.warn)(ann, node)
            if h is None:
                return None
        return f, h, keep

    def _pair_hists(self, node, a_vals, a_h, b_vals, b_h, both, n):
        """a op b at the steps in `both` where either side may be a histogram: (values,
        mask, hists) — a comparison without bool keeps the left value where it holds."""
        fop = self._float_pair(node.op)
        vals = zeros(n)
        mask = bytearray(n)
        hists = [None] * n
        rb = node.return_bool
        for k in range(n):
            if not both[k]:
                continue
            r = self._elem(node, a_vals[k], a_h[k] if a_h else None, b_vals[k],
                           b_h[k] if b_h else None, fop)
            if r is None:
                continue
            f, h, keep = r
            if rb:
                vals[k] = 1.0 if keep else 0.0
                mask[k] = 1
                continue
            if not keep:
                continue
            vals[k] = f
            hists[k] = h
            mask[k] = 1
        return vals, mask, (hists if any(h is not None for h in hists) else None)

    def _scalar_binop_hists(self, node, s, sc, swap, n):
        """vector op scalar (scalar op vector if swap) for a series with histogram steps."""
        op = node.op
        fop = self._float_pair(op)
        cmp = op in A.COMPARISON_OPS
        vals = zeros(n)
        mask = bytearray(n)
        hists = [None] * n
        for k in range(n):
            if not s.mask[k]:
                continue
            h = s.hists[k] if s.hists is not None else None
            if swap:
                r = self._elem(node, sc.vals[k], None, s.vals[k], h, fop)
            else:
                r = self._elem(node, s.vals[k], h, sc.vals[k], None, fop)
            if r is None:
                continue
            f, hv, keep = r
            if cmp and swap:
                f, hv = s.vals[k], h
            if node.return_bool:
                vals[k] = 1.0 if keep else 0.0
                mask[k] = 1
                continue
            if keep:
                vals[k] = f
                hists[k] = hv
                mask[k] = 1
        if not any(mask):
            return None
        drop = op in A.SCHEMA_CHANGING_OPS or node.return_bool
        return Series(s.labels, vals, mask, True if drop else s.drop_name, None,
                      hists if any(h is not None for h in hists) else None)

    def _match_labels(self, labels, vm):
        names = set(vm.matching_labels)
        if vm.on:
            return tuple(p for p in labels if p[0] in names)
        return tuple(p for p in labels if p[0] not in names and p[0] != NAME)

    def _result_labels(self, lhs, rhs, vm, changes_schema):
        d = dict(lhs)
        if changes_schema:
            for m in METADATA:
                d.pop(m, None)
        if vm.card == A.CARD_ONE_TO_ONE:
            names = set(vm.matching_labels)
            if vm.on:
                d = {k: v for k, v in d.items() if k in names}
            else:
                for nm in names:
                    d.pop(nm, None)
        rd = dict(rhs)
        for ln in vm.include:
            v = rd.get(ln, "")
            if v:
                d[ln] = v
            else:
                d.pop(ln, None)
        return tuple(sorted(d.items()))

TRIM_OPS = frozenset(("</", ">/"))
_MIXED = object()  # a group whose histograms could not be added

# Functions that take histogram samples (the others see their arguments' floats only).
HIST_AWARE = frozenset(HC.HIST_RANGE | set(K.RANGE_FUNCS) | set(HC.HISTOGRAM_ONLY) | {
    "histogram_quantile", "histogram_fraction", "histogram_quantiles", "timestamp",
    "label_replace", "label_join", "sort_by_label", "sort_by_label_desc",
    "absent", "absent_over_time", "info"})


def _floats_only(v):
    if isinstance(v, list):
        if not V.any_hists(v):
            return v
        out = []
        for s in v:
            f = s.floats_only()
            if any(f.mask):
                out.append(f)
        return out
    if isinstance(v, MatrixValue) and v.hists is not None:
        keep = [i for i, s in enumerate(v.series) if len(s[1])]
        return MatrixValue([v.series[i] for i in keep], v.ends, v.range_ms, v.node,
                           None if v.sts is None else [v.sts[i] for i in keep])
    return v


def _stats_only_selectors(expr):
    """ids of the vector selectors whose histograms only histogram_count/sum/avg read
    (Prometheus' detectHistogramStatsDecoding): under such a call with no subquery, trim
    operator or bucket-reading function on the way up."""
    out = set()

    def visit(node, path):
        if isinstance(node, A.VectorSelector):
            skip = False
            for p in reversed(path):
                if isinstance(p, A.SubqueryExpr):
                    skip = False
                    break
                if isinstance(p, A.Call):
                    name = p.func.name
                    if name in ("histogram_count", "histogram_sum", "histogram_avg"):
                        skip = True
                    elif name in ("histogram_quantile", "histogram_quantiles",
                                  "histogram_fraction"):
                        skip = False
                        break
                if isinstance(p, A.BinaryExpr) and p.op in TRIM_OPS:
                    skip = False
                    break
            if skip:
                out.add(id(node))
        path.append(node)
        for c in node.children():
            visit(c, path)
        path.pop()
    try:
        visit(expr, [])
    except RecursionError:
        return frozenset()
    return frozenset(out)


def _unknown_hint(h):
    """A subquery's histogram: a reset or not-reset hint becomes unknown, as the subquery may
    skip or repeat the samples the hint relates to (Prometheus does the same)."""
    if h.counter_reset_hint in (1, 2):
        h = H.copy(h)
        h.counter_reset_hint = 0
    return h


def _extend_floats(ts, vs, mint, maxt, smoothed):
    """An instant query's anchored/smoothed range vector (Prometheus' extendFloats): the
    samples inside (mint, maxt) plus a point at each end holding the boundary value (the last
    sample at or before it, or for smoothed the value interpolated there)."""
    n = len(ts)
    if n == 0:
        return array("q"), array("d")
    last = n - 1
    i = 0
    while i < last and ts[i] <= mint:
        i += 1
    first = max(0, i - 1)
    if smoothed:
        i = 0
        while i < last and ts[i] < maxt:
            i += 1
        last = i
    if ts[last] <= mint:
        return array("q"), array("d")

    def interp(a, b, t):
        return vs[a] + (vs[b] - vs[a]) * (t - ts[a]) / (ts[b] - ts[a])
    left = interp(first, first + 1, mint) if smoothed and ts[first] < mint else vs[first]
    right = interp(last - 1, last, maxt) if smoothed and last > 0 and ts[last] > maxt else vs[last]
    if ts[first] <= mint:
        first += 1
    if ts[last] >= maxt:
        last -= 1
    out_t = array("q", [mint])
    out_v = array("d", [left])
    out_t.extend(ts[first:last + 1])
    out_v.extend(vs[first:last + 1])
    out_t.append(maxt)
    out_v.append(right)
    return out_t, out_v


# ---------------------------------------------------------------------------------------------
# topk/bottomk: Go's container/heap over (value, series index) with Prometheus' orderings.

def _less_top(a, b):
    # vectorByValueHeap.Less: NaN is "smallest".
    if math.isnan(a[0]):
        return True
    return a[0] < b[0]


def _less_bottom(a, b):
    if math.isnan(a[0]):
        return True
    return a[0] > b[0]


def _heap_up(h, j, less):
    while True:
        i = (j - 1) // 2
        if j <= 0 or i == j or not less(h[j], h[i]):
            break
        h[i], h[j] = h[j], h[i]
        j = i


def _heap_down(h, i0, n, less):
    i = i0
    while True:
        j1 = 2 * i + 1
        if j1 >= n or j1 < 0:
            break
        j = j1
        j2 = j1 + 1
        if j2 < n and less(h[j2], h[j1]):
            j = j2
        if not less(h[j], h[i]):
            break
        h[i], h[j] = h[j], h[i]
        i = j
    return i > i0


def _heap_push(h, x, less):
    h.append(x)
    _heap_up(h, len(h) - 1, less)


def _heap_fix(h, i, less):
    if not _heap_down(h, i, len(h), less):
        _heap_up(h, i, less)


def _insertion_sort(h, less):
    h = list(h)
    for i in range(1, len(h)):
        j = i
        while j > 0 and less(h[j], h[j - 1]):
            h[j], h[j - 1] = h[j - 1], h[j]
            j -= 1
    return h


def _label_bytes(labels) -> bytes:
    """A label set as Prometheus' (stringlabels) Labels holds it: each name and value behind
    its length, one byte below 255, else 0xff and three little-endian bytes."""
    out = bytearray()
    for name, value in labels:
        for s in (name.encode("utf-8", "surrogateescape"), value.encode("utf-8", "surrogateescape")):
            n = len(s)
            if n < 255:
                out.append(n)
            else:
                out += bytes((255, n & 0xff, (n >> 8) & 0xff, (n >> 16) & 0xff))
            out += s
    return bytes(out)


def _sample_offset(labels) -> float:
    """Where a series falls in [0, 1] for limit_ratio: its labels' hash (xxHash64 of the
    Labels bytes, as labels.Hash) over the largest uint64, both as float64."""
    return float(K.xxh64(_label_bytes(labels))) / 18446744073709551615.0


def _ratio_sample(r, offset):
    """Prometheus' ratio sampler: a series is in the sample when its offset is below r (r >= 0)
    or at/above 1 + r (r < 0), so limit_ratio(r) and limit_ratio(r - 1) split the series."""
    return (r >= 0 and offset < r) or (r < 0 and offset >= 1.0 + r)

