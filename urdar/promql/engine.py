"""PromQL evaluator: a parsed query + a Queryable -> scalar, string, vector or matrix result.

It sits between the querier (which supplies `select(matchers, mint, maxt)` over ingesters and
store-gateways) and the HTTP handlers (which render `Result`). Every node is evaluated over
ALL steps of the query at once, as Prometheus' range evaluation does, so an instant query is
a range query with one step: a vector is a list of `Series`, each a float64 array over the
steps plus a presence mask; the per-sample loops (lookback, range functions, binary
operators, aggregations) run in `urdar.engine.kernels` without the GIL. Semantics follow
Prometheus 3.x: left-open windows, staleness markers, delayed `__name__` removal, Go float
arithmetic, Prometheus' error and annotation texts.
"""

from __future__ import annotations

import math
import re
from array import array
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from urdar.engine import kernels as K
from urdar.engine.labels import decode_labels
from urdar.engine.matchers import compile_regex
from urdar.promql import ast as A
from urdar.promql.parser import Options, parse_expr

Labels = Tuple[Tuple[str, str], ...]

DEFAULT_LOOKBACK_MS = 5 * 60 * 1000
NAME = "__name__"
_METADATA = ("__name__", "__type__", "__unit__")


class QueryError(ValueError):
    """A query that failed during evaluation; str() is Prometheus' error text."""


class TooManySamples(QueryError):
    pass


@dataclass
class Result:
    """What a query returns.

    type: "scalar", "string", "vector" or "matrix".
    scalar: value is a float, t the evaluation time (ms); string: value is a str.
    vector: value is a list of (labels, float) — labels a tuple of sorted (name, value)
      pairs — in engine order (sorted only by sort*/topk/bottomk); every sample's time is t.
    matrix: value is a list of (labels, array('q') ts ms, array('d') values), sorted by
      labels for range queries.
    warnings / infos: annotation strings as the Prometheus API renders them."""
    type: str
    value: object
    t: int = 0
    warnings: List[str] = field(default_factory=list)
    infos: List[str] = field(default_factory=list)


class Series:
    """One output series over the evaluation steps: vals[k] is meaningful iff mask[k]."""
    __slots__ = ("labels", "vals", "mask", "drop_name", "ts")

    def __init__(self, labels, vals, mask, drop_name=False, ts=None):
        self.labels = labels
        self.vals = vals
        self.mask = mask
        self.drop_name = drop_name
        self.ts = ts  # sample timestamps (selectors only, for timestamp())

    def present(self):
        return any(self.mask)


class Scalar:
    __slots__ = ("vals",)

    def __init__(self, vals):
        self.vals = vals


class String:
    __slots__ = ("val",)

    def __init__(self, val):
        self.val = val


class MatrixValue:
    """A range vector at every step: raw samples per series plus each step's window end."""
    __slots__ = ("series", "ends", "range_ms", "node")

    def __init__(self, series, ends, range_ms, node):
        self.series = series  # [(labels, ts, vals, drop_name)] stale markers removed
        self.ends = ends
        self.range_ms = range_ms
        self.node = node


def _zeros(n):
    return array("d", bytes(8 * n))


def _full(n, v):
    return array("d", [v]) * n


def _drop_meta(labels):
    return tuple(p for p in labels if p[0] not in _METADATA)


def _labels_str(labels) -> str:
    parts = []
    for n, v in labels:
        nm = n if A.is_legacy_label_name(n) else A.go_quote(n)
        parts.append("%s=%s" % (nm, A.go_quote(v)))
    return "{" + ", ".join(parts) + "}"


def _get(labels, name):
    for n, v in labels:
        if n == name:
            return v
    return ""


def _set_label(labels, name, value):
    d = dict(labels)
    if value == "":
        d.pop(name, None)
    else:
        d[name] = value
    return tuple(sorted(d.items()))


_STALE_BITS = 0x7FF0000000000002

# Label key bytes -> label tuple, shared by all queries: series keys repeat across selects and
# decoding dominated instant queries over 10k series (benchmarks/query_bench.py). Bounded by
# clearing; dict operations are atomic under the GIL, so worker threads may share it.
_LABELS = {}
_LABELS_MAX = 1_000_000


def _decode_key(key):
    labels = tuple(decode_labels(key))
    if len(_LABELS) >= _LABELS_MAX:
        _LABELS.clear()
    _LABELS[key] = labels
    return labels


def _unwrap(node):
    while isinstance(node, A.ParenExpr):
        node = node.expr
    return node


# ---------------------------------------------------------------------------------------------
# Small Go-compatible helpers.

def _go_max(a, b):
    if math.isnan(a) or math.isnan(b):
        return math.nan
    return a if a > b else b


def _go_min(a, b):
    if math.isnan(a) or math.isnan(b):
        return math.nan
    return a if a < b else b


def _safe(fn):
    def f(x):
        try:
            return fn(x)
        except (ValueError, OverflowError):
            return math.nan
    return f


def _go_log(log):
    """`log` with Go's edge cases: NaN for negatives and NaN, -Inf at 0, +Inf stays +Inf."""
    def f(x):
        if x < 0 or math.isnan(x):
            return math.nan
        if x == 0:
            return -math.inf
        if math.isinf(x):
            return x
        return log(x)
    return f


_ln = _go_log(math.log)
_log2 = _go_log(math.log2)
_log10 = _go_log(math.log10)


def _exp(x):
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


def _sqrt(x):
    if x < 0:
        return math.nan
    return math.sqrt(x)


def _trig(fn, inf_nan=True):
    def f(x):
        if math.isnan(x):
            return x
        if math.isinf(x) and inf_nan:
            return math.nan
        try:
            return fn(x)
        except (ValueError, OverflowError):
            return math.nan
    return f


def _sinh(x):
    try:
        return math.sinh(x)
    except OverflowError:
        return math.copysign(math.inf, x)


def _cosh(x):
    try:
        return math.cosh(x)
    except OverflowError:
        return math.inf


def _atanh(x):
    if math.isnan(x) or abs(x) > 1:
        return math.nan
    if x == 1:
        return math.inf
    if x == -1:
        return -math.inf
    return math.atanh(x)


def _acosh(x):
    if math.isnan(x) or x < 1:
        return math.nan
    if math.isinf(x):
        return x
    return math.acosh(x)


def _asinh(x):
    if math.isinf(x) or math.isnan(x):
        return x
    return math.asinh(x)


def _sgn(x):
    if x < 0:
        return -1.0
    if x > 0:
        return 1.0
    return x


def _ceil(x):
    return x if math.isnan(x) or math.isinf(x) else float(math.ceil(x))


def _floor(x):
    return x if math.isnan(x) or math.isinf(x) else float(math.floor(x))


_SIMPLE = {
    "abs": abs, "ceil": _ceil, "floor": _floor, "exp": _exp, "sqrt": _sqrt, "ln": _ln,
    "log2": _log2, "log10": _log10, "sin": _trig(math.sin), "cos": _trig(math.cos),
    "tan": _trig(math.tan), "asin": _trig(math.asin), "acos": _trig(math.acos),
    "atan": _trig(math.atan, False), "sinh": _sinh, "cosh": _cosh, "tanh": _trig(math.tanh, False),
    "asinh": _asinh, "acosh": _acosh, "atanh": _atanh,
    "rad": lambda x: x * math.pi / 180, "deg": lambda x: x * 180 / math.pi, "sgn": _sgn,
}


def _civil(sec):
    """(year, month, day, hour, minute, weekday(0=Sunday), yday) of a Unix second (UTC)."""
    days, rem = divmod(sec, 86400)
    hour, rem = divmod(rem, 3600)
    minute = rem // 60
    wday = (days + 4) % 7
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    if m <= 2:
        y += 1
    leap = (y % 4 == 0 and y % 100 != 0) or y % 400 == 0
    cum = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334]
    yday = cum[m - 1] + d + (1 if leap and m > 2 else 0)
    return y, m, d, hour, minute, wday, yday, leap


def _days_in_month(c):
    m, leap = c[1], c[7]
    if m == 2:
        return 29 if leap else 28
    return 30 if m in (4, 6, 9, 11) else 31


_DATE = {
    "day_of_month": lambda c: c[2], "day_of_week": lambda c: c[5], "day_of_year": lambda c: c[6],
    "days_in_month": _days_in_month, "hour": lambda c: c[3], "minute": lambda c: c[4],
    "month": lambda c: c[1], "year": lambda c: c[0],
}


def _go_int64(v):
    if math.isnan(v) or math.isinf(v) or v >= 9.223372036854775807e18 or v < -9.223372036854775808e18:
        return -9223372036854775808
    return int(v)


def _natural_less(a: str, b: str) -> bool:
    """natsort.Compare: digit runs compare numerically, the rest bytewise."""
    ca = re.findall(r"\d+|\D+", a)
    cb = re.findall(r"\d+|\D+", b)
    for x, y in zip(ca, cb):
        if x == y:
            continue
        if x.isdigit() and y.isdigit():
            xi, yi = int(x), int(y)
            if xi != yi:
                return xi < yi
            return len(x) < len(y)
        return x < y
    return len(ca) < len(cb)


def _expand_template(m, repl: str) -> str:
    """Go's Regexp.ExpandString: $1, ${1}, $name, ${name}, $$; an unknown name expands to ""."""
    out = []
    i, n = 0, len(repl)
    while i < n:
        c = repl[i]
        if c != "$" or i + 1 >= n:
            out.append(c)
            i += 1
            continue
        nxt = repl[i + 1]
        if nxt == "$":
            out.append("$")
            i += 2
            continue
        if nxt == "{":
            j = repl.find("}", i + 2)
            name = repl[i + 2:j] if j > 0 else ""
            if j < 0 or not re.fullmatch(r"[A-Za-z0-9_]+", name):
                out.append(c)
                i += 1
                continue
            i = j + 1
        else:
            mm = re.match(r"[A-Za-z0-9_]+", repl[i + 1:])
            if not mm:
                out.append(c)
                i += 1
                continue
            name = mm.group(0)
            i += 1 + len(name)
        if name.isdigit():
            k = int(name)
            if k <= (m.re.groups):
                out.append(m.group(k) or "")
        else:
            try:
                out.append(m.group(name) or "")
            except (IndexError, error_types):
                pass
    return "".join(out)


error_types = (IndexError, KeyError)


def _valid_label_name(s: str) -> bool:
    return s != "" and A.is_valid_utf8(s)


# ---------------------------------------------------------------------------------------------


class Engine:
    """Evaluates PromQL over one Queryable (`select(matchers, mint, maxt)`)."""

    def __init__(self, queryable, lookback_ms: int = DEFAULT_LOOKBACK_MS,
                 max_samples: int = 50_000_000, subquery_step_ms: int = 60_000,
                 options: Optional[Options] = None):
        self.queryable = queryable
        self.lookback_ms = lookback_ms
        self.max_samples = max_samples
        self.subquery_step_ms = subquery_step_ms
        self.options = options or Options()

    def instant(self, query: str, t: int, lookback_ms: Optional[int] = None) -> Result:
        """Evaluate `query` at time t (ms)."""
        return self._run(query, t, t, 0, lookback_ms)

    def range(self, query: str, start: int, end: int, step: int,
              lookback_ms: Optional[int] = None) -> Result:
        """Evaluate `query` at start, start+step, ... <= end (ms)."""
        if step <= 0:
            raise QueryError("zero or negative query resolution step widths are not accepted")
        return self._run(query, start, end, step, lookback_ms)

    def _run(self, query, start, end, step, lookback_ms):
        expr = parse_expr(query, self.options)
        ev = _Evaluator(self, query, start, end, step,
                        self.lookback_ms if lookback_ms is None else lookback_ms)
        return ev.run(expr)


class _Evaluator:
    def __init__(self, engine, query, start, end, step, lookback_ms):
        self.q = engine.queryable
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
        if self.instant:
            self.times = array("q", [start])
        else:
            n = (end - start) // step + 1
            self.times = array("q", range(start, start + n * step, step))

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
            for labels, ts, vs, drop in val.series:
                sel_t = array("q")
                sel_v = array("d")
                for i in range(len(ts)):
                    if e - val.range_ms < ts[i] <= e:
                        sel_t.append(ts[i])
                        sel_v.append(vs[i])
                if sel_t:
                    out.append((_drop_meta(labels) if drop else labels, sel_t, sel_v))
            out = self._merge_matrix(out)
            out.sort(key=lambda s: s[0])
            return Result("matrix", out, t, self.warnings, self.infos)
        # Vector: delayed __name__ removal, then merge or refuse equal label sets.
        series = []
        for s in val:
            if s.drop_name:
                s = Series(_drop_meta(s.labels), s.vals, s.mask, False)
            series.append(s)
        if self.instant:
            out = []
            seen = set()
            for s in series:
                if s.mask[0]:
                    if s.labels in seen:
                        raise QueryError("vector cannot contain metrics with the same labelset")
                    seen.add(s.labels)
                    out.append((s.labels, s.vals[0]))
            return Result("vector", out, t, self.warnings, self.infos)
        series = self._merge(series, True)
        out = []
        for s in series:
            ts, vs = K.compress(self.times, s.vals, s.mask)
            if len(ts):
                out.append((s.labels, ts, vs))
        out.sort(key=lambda s: s[0])
        return Result("matrix", out, t, self.warnings, self.infos)

    def _merge_matrix(self, out):
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

    def _merge(self, series, check=True):
        """Combine series with equal labels; overlapping presence is an error."""
        by = {}
        res = []
        for s in series:
            prev = by.get(s.labels)
            if prev is None:
                by[s.labels] = s
                res.append(s)
                continue
            n = len(prev.mask)
            if prev.ts is not None or s.ts is not None:
                pass
            vals = array("d", prev.vals)
            mask = bytearray(prev.mask)
            for k in range(n):
                if s.mask[k]:
                    if mask[k]:
                        if check:
                            raise QueryError("vector cannot contain metrics with the same labelset")
                        continue
                    mask[k] = 1
                    vals[k] = s.vals[k]
            merged = Series(prev.labels, vals, mask, prev.drop_name or s.drop_name)
            by[s.labels] = merged
            res[res.index(prev)] = merged
        return res

    def _dedupe(self, series):
        """Prometheus' range evaluation merges equal label sets per node (error on overlap);
        single-step evaluation keeps duplicates."""
        if len(self.times_cur) <= 1:
            return series
        return self._merge(series, True)

    def _count_samples(self, n):
        if n > self.max_samples:
            raise TooManySamples("query processing would load too many samples into memory in "
                                 "query execution")

    # -- dispatcher ----------------------------------------------------------------------------

    def eval(self, node, times):
        prev = getattr(self, "times_cur", None)
        self.times_cur = times
        try:
            return self._eval(node, times)
        finally:
            self.times_cur = prev if prev is not None else times

    def _eval(self, node, times):
        if isinstance(node, A.NumberLiteral):
            return Scalar(_full(len(times), node.val))
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
            return [Series(s.labels, array("d", [-x for x in s.vals]), s.mask, True)
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
            return Scalar(_full(len(times), self.duration_value(node) / 1000.0))
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
            a, b = self.duration_value(d.lhs), self.duration_value(d.rhs)
            return min(a, b) if op == "min_of" else max(a, b)
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

    def _select(self, matchers, mint, maxt):
        out = []
        total = 0
        cache = _LABELS
        for key, ts, vs in self.q.select(matchers, mint, maxt):
            if type(key) is bytes:
                labels = cache.get(key)
                if labels is None:
                    labels = _decode_key(key)
            elif isinstance(key, (bytearray, memoryview)):
                labels = _decode_key(bytes(key))
            else:
                labels = tuple(key)
            out.append((labels, ts, vs))
            total += len(ts)
        return out, total

    def eval_vector_selector(self, node, times):
        refs = self._ref_times(node, times)
        mint = min(refs) - self.lookback + 1
        maxt = max(refs)
        data, _ = self._select(node.matchers, mint, maxt)
        out = []
        total = 0
        for i, vals, sts, mask, c in K.instant_values_many(
                [d[1] for d in data], [d[2] for d in data], refs, self.lookback):
            total += c
            out.append(Series(data[i][0], vals, mask, False, sts))
        self._count_samples(total)
        return out

    def eval_matrix(self, node, times) -> MatrixValue:
        node = _unwrap(node)
        if isinstance(node, A.MatrixSelector):
            vs = node.vector_selector
            rng = node.range_ms if node.range_expr is None else self.duration_value(node.range_expr)
            ends = self._ref_times(vs, times)
            data, total = self._select(vs.matchers, min(ends) - rng + 1, max(ends))
            series = []
            for labels, ts, vals in data:
                f = K.filter_stale(ts, vals)
                if f is not None:
                    ts, vals = f
                if len(ts):
                    series.append((labels, ts, vals, False))
            self._count_samples(total)
            return MatrixValue(series, ends, rng, node)
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
        if first > last:
            inner_times = array("q")
        else:
            inner_times = array("q", range(first, last + 1, step))
        series = []
        if len(inner_times):
            saved = self.times_cur
            val = self.eval(node.expr, inner_times)
            self.times_cur = saved
            if isinstance(val, Scalar):
                series.append(((), array("q", inner_times), array("d", val.vals), False))
            else:
                for s in val:
                    ts, vv = K.compress(inner_times, s.vals, s.mask)
                    if len(ts):
                        series.append((s.labels, ts, vv, s.drop_name))
        return MatrixValue(series, ends, rng, node)

    # -- functions -----------------------------------------------------------------------------

    def _scalar_arg(self, node, times):
        v = self.eval(node, times)
        return v.vals

    def eval_call(self, node, times):
        name = node.func.name
        args = node.args
        n = len(times)
        if name in K.RANGE_FUNCS:
            return self.eval_range_func(node, times)
        if name == "absent_over_time":
            m = self.eval_matrix(args[0], times)
            present = bytearray(n)
            counts = array("q", bytes(8 * n))
            for labels, ts, vs, drop in m.series:
                K.window_counts(ts, m.ends, m.range_ms, counts)
                for k in range(n):
                    if counts[k]:
                        present[k] = 1
            mask = bytearray(0 if present[k] else 1 for k in range(n))
            if not any(mask):
                return []
            return [Series(self._absent_labels(args[0]), _full(n, 1.0), mask)]
        if name == "absent":
            v = self.eval(args[0], times)
            present = bytearray(n)
            for s in v:
                for k in range(n):
                    if s.mask[k]:
                        present[k] = 1
            mask = bytearray(0 if present[k] else 1 for k in range(n))
            if not any(mask):
                return []
            return [Series(self._absent_labels(args[0]), _full(n, 1.0), mask)]
        if name == "time":
            return Scalar(array("d", [t / 1000.0 for t in times]))
        if name == "pi":
            return Scalar(_full(n, math.pi))
        if name == "start":
            return Scalar(_full(n, self.start / 1000.0))
        if name == "end":
            return Scalar(_full(n, self.end / 1000.0))
        if name == "step":
            return Scalar(_full(n, self.step / 1000.0))
        if name == "range":
            return Scalar(_full(n, (self.end - self.start) / 1000.0))
        if name in ("min_of", "max_of"):
            a = self._scalar_arg(args[0], times)
            b = self._scalar_arg(args[1], times)
            f = _go_min if name == "min_of" else _go_max
            return Scalar(array("d", [f(x, y) for x, y in zip(a, b)]))
        if name == "scalar":
            v = self.eval(args[0], times)
            out = _full(n, math.nan)
            cnt = [0] * n
            for s in v:
                for k in range(n):
                    if s.mask[k]:
                        cnt[k] += 1
                        out[k] = s.vals[k]
            for k in range(n):
                if cnt[k] != 1:
                    out[k] = math.nan
            return Scalar(out)
        if name == "vector":
            a = self._scalar_arg(args[0], times)
            return [Series((), array("d", a), bytearray(b"\x01") * n)]
        if name in _SIMPLE:
            f = _SIMPLE[name]
            v = self.eval(args[0], times)
            out = []
            for s in v:
                vals = array("d", s.vals)
                for k in range(n):
                    if s.mask[k]:
                        vals[k] = f(vals[k])
                out.append(Series(s.labels, vals, s.mask, True))
            return out
        if name == "round":
            v = self.eval(args[0], times)
            to = self._scalar_arg(args[1], times) if len(args) > 1 else _full(n, 1.0)
            out = []
            for s in v:
                vals = array("d", s.vals)
                for k in range(n):
                    if s.mask[k]:
                        inv = 1.0 / to[k] if to[k] != 0 else math.copysign(math.inf, to[k])
                        x = vals[k] * inv + 0.5
                        vals[k] = _floor(x) / inv
                out.append(Series(s.labels, vals, s.mask, True))
            return out
        if name in ("clamp", "clamp_min", "clamp_max"):
            v = self.eval(args[0], times)
            lo = hi = None
            if name == "clamp":
                lo = self._scalar_arg(args[1], times)
                hi = self._scalar_arg(args[2], times)
            elif name == "clamp_min":
                lo = self._scalar_arg(args[1], times)
            else:
                hi = self._scalar_arg(args[1], times)
            out = []
            for s in v:
                vals = array("d", s.vals)
                mask = bytearray(s.mask)
                for k in range(n):
                    if not mask[k]:
                        continue
                    a = lo[k] if lo is not None else -math.inf
                    b = hi[k] if hi is not None else math.inf
                    if name == "clamp" and b < a:
                        mask[k] = 0
                        continue
                    if name == "clamp_min":
                        vals[k] = _go_max(vals[k], a)
                    elif name == "clamp_max":
                        vals[k] = _go_min(vals[k], b)
                    else:
                        vals[k] = _go_max(a, _go_min(b, vals[k]))
                out.append(Series(s.labels, vals, mask, True))
            return out
        if name == "timestamp":
            arg = _unwrap(args[0])
            v = self.eval(args[0], times)
            out = []
            for s in v:
                vals = _zeros(n)
                for k in range(n):
                    if s.mask[k]:
                        if isinstance(arg, A.VectorSelector) and s.ts is not None:
                            vals[k] = s.ts[k] / 1000.0
                        else:
                            vals[k] = times[k] / 1000.0
                out.append(Series(s.labels, vals, s.mask, True))
            return out
        if name in _DATE:
            f = _DATE[name]
            if not args:
                return [Series((), array("d", [float(f(_civil(t // 1000))) for t in times]),
                               bytearray(b"\x01") * n, False)]
            v = self.eval(args[0], times)
            out = []
            for s in v:
                vals = array("d", s.vals)
                for k in range(n):
                    if s.mask[k]:
                        vals[k] = float(f(_civil(_go_int64(vals[k]))))
                out.append(Series(s.labels, vals, s.mask, True))
            return out
        if name == "label_replace":
            return self.eval_label_replace(node, times)
        if name == "label_join":
            return self.eval_label_join(node, times)
        if name in ("sort", "sort_desc", "sort_by_label", "sort_by_label_desc"):
            if not self.instant:
                self.warn("sort is ineffective for range queries since results are always "
                          "ordered by labels", node)
            v = self.eval(args[0], times)
            if len(times) != 1:
                return v
            v = [s for s in v if s.mask[0]]
            if name == "sort":
                return self._go_sort(v, lambda a, b: _sort_less(a.vals[0], b.vals[0], False))
            if name == "sort_desc":
                return self._go_sort(v, lambda a, b: _sort_less(a.vals[0], b.vals[0], True))
            names = [_unwrap(a).val for a in args[1:]]
            desc = name == "sort_by_label_desc"

            def cmp(a, b):
                for ln in names:
                    x, y = _get(a.labels, ln), _get(b.labels, ln)
                    if x == y:
                        continue
                    return -1 if _natural_less(x, y) else 1
                return -1 if a.labels < b.labels else (1 if a.labels > b.labels else 0)
            import functools
            key = functools.cmp_to_key((lambda a, b: -cmp(a, b)) if desc else cmp)
            return sorted(v, key=key)
        if name == "histogram_quantile":
            return self.eval_histogram_quantile(node, times)
        if name == "histogram_quantiles":
            return self.eval_histogram_quantiles(node, times)
        if name == "histogram_fraction":
            return self.eval_histogram_quantile(node, times, fraction=True)
        if name in ("histogram_count", "histogram_sum", "histogram_avg", "histogram_stddev",
                    "histogram_stdvar"):
            # Native histograms are not stored yet: these ignore float samples.
            for a in args:
                if a.type() == A.VECTOR:
                    self.eval(a, times)
            return []
        raise QueryError("function %s is not supported" % name)

    def _go_sort(self, v, less):
        # Go's sort.Sort on small inputs is an insertion sort (stable); use a stable sort.
        import functools
        return sorted(v, key=functools.cmp_to_key(
            lambda a, b: -1 if less(a, b) else (1 if less(b, a) else 0)))

    def _absent_labels(self, arg):
        arg = _unwrap(arg)
        if isinstance(arg, A.MatrixSelector):
            arg = arg.vector_selector
        if not isinstance(arg, A.VectorSelector):
            return ()
        d = {}
        has = set()
        for m in arg.matchers:
            if m.name == NAME:
                continue
            if m.kind == "=" and m.name not in has:
                if m.value == "":
                    d.pop(m.name, None)
                else:
                    d[m.name] = m.value
                has.add(m.name)
            else:
                d.pop(m.name, None)
        return tuple(sorted(d.items()))

    def eval_range_func(self, node, times):
        name = node.func.name
        args = node.args
        fid = K.RANGE_FUNCS[name]
        p1 = p2 = array("d")
        margs = args
        if name == "quantile_over_time":
            p1 = self._scalar_arg(args[0], times)
            margs = args[1:]
            q = p1[0] if len(p1) else 0.0
            for q in p1:
                if math.isnan(q) or q < 0 or q > 1:
                    self.warn("quantile value should be between 0 and 1, got %s"
                              % _fmt_g(q), args[0])
                    break
        elif name == "predict_linear":
            p1 = self._scalar_arg(args[1], times)
        elif name == "double_exponential_smoothing":
            p1 = self._scalar_arg(args[1], times)
            p2 = self._scalar_arg(args[2], times)
            for sf in p1:
                if sf <= 0 or sf >= 1:
                    raise QueryError("invalid smoothing factor. Expected: 0 < sf < 1, got: %s"
                                     % _fmt_f(sf))
            for tf in p2:
                if tf <= 0 or tf >= 1:
                    raise QueryError("invalid trend factor. Expected: 0 < tf < 1, got: %s"
                                     % _fmt_f(tf))
        m = self.eval_matrix(margs[0], times)
        mnode = _unwrap(margs[0])
        vsel = mnode.vector_selector if isinstance(mnode, A.MatrixSelector) else None
        if vsel is not None and (vsel.anchored or vsel.smoothed):
            raise QueryError("anchored/smoothed range selectors are not supported yet")
        keep_name = name in ("last_over_time", "first_over_time")
        out = []
        series = m.series
        checked = set()
        for i, ov, mask in K.range_values_many(fid, [s[1] for s in series], [s[2] for s in series],
                                               m.ends, m.range_ms, p1, p2, times):
            labels, _, _, drop = series[i]
            out.append(Series(labels, ov, mask, drop or not keep_name))
            if name in ("rate", "increase") and vsel is not None:
                mn = _get(labels, NAME)
                if mn in checked:
                    continue
                checked.add(mn)
                if not (mn.endswith("_total") or mn.endswith("_sum") or mn.endswith("_count")
                        or mn.endswith("_bucket")):
                    self.info("metric might not be a counter, name does not end in "
                              "_total/_sum/_count/_bucket: %s" % A.go_quote(mn), margs[0])
        return out

    def eval_label_replace(self, node, times):
        args = node.args
        dst, repl, src, regex = (_unwrap(a).val for a in args[1:5])
        try:
            rx = compile_regex(regex).compiled
        except Exception:
            raise QueryError("invalid regular expression in label_replace(): %s" % regex)
        if not _valid_label_name(dst):
            raise QueryError("invalid destination label name in label_replace(): %s" % dst)
        v = self.eval(args[0], times)
        out = []
        for s in v:
            m = rx.fullmatch(_get(s.labels, src))
            if m is None:
                out.append(s)
                continue
            res = _expand_template(m, repl)
            labels = _set_label(s.labels, dst, res)
            out.append(Series(labels, s.vals, s.mask, False if dst == NAME else s.drop_name))
        return self._merge(out, True)

    def eval_label_join(self, node, times):
        args = node.args
        dst, sep = _unwrap(args[1]).val, _unwrap(args[2]).val
        srcs = [_unwrap(a).val for a in args[3:]]
        for sl in srcs:
            if not _valid_label_name(sl):
                raise QueryError("invalid source label name in label_join(): %s" % sl)
        if not _valid_label_name(dst):
            raise QueryError("invalid destination label name in label_join(): %s" % dst)
        v = self.eval(args[0], times)
        out = []
        for s in v:
            val = sep.join(_get(s.labels, sl) for sl in srcs)
            labels = _set_label(s.labels, dst, val)
            out.append(Series(labels, s.vals, s.mask, False if dst == NAME else s.drop_name))
        return self._merge(out, True)

    def eval_histogram_quantiles(self, node, times):
        args = node.args
        label = _unwrap(args[1]).val
        out = []
        for qn in args[2:]:
            qs = self._scalar_arg(qn, times)
            for s in self.eval_histogram_quantile(node, times, qnode=qn, vnode=args[0]):
                q = qs[0]
                out.append(Series(_set_label(s.labels, label, _openmetrics_float(q)), s.vals,
                                  s.mask, True))
        return out

    def eval_histogram_quantile(self, node, times, fraction=False, qnode=None, vnode=None):
        n = len(times)
        if qnode is not None:
            qs = self._scalar_arg(qnode, times)
            node_args = [qnode, vnode]
        elif fraction:
            lows = self._scalar_arg(node.args[0], times)
            highs = self._scalar_arg(node.args[1], times)
            qs = lows
            node_args = [node.args[0], node.args[2]]
        else:
            qs = self._scalar_arg(node.args[0], times)
            node_args = node.args
        v = self.eval(node_args[1], times)
        groups = {}
        order = []
        for s in v:
            le = None
            for nm, val in s.labels:
                if nm == "le":
                    le = val
            if le is None:
                le = ""
            try:
                ub = _parse_go_float(le)
            except ValueError:
                self.warn("bucket label \"le\" is missing or has a malformed value of %s for "
                          "metric name %s" % (A.go_quote(le), A.go_quote(_get(s.labels, NAME))),
                          node_args[1])
                continue
            key = tuple(p for p in s.labels if p[0] != "le")
            if key not in groups:
                groups[key] = []
                order.append(key)
            groups[key].append((ub, s))
        for q in ([] if fraction else set(qs)):
            if math.isnan(q) or q < 0 or q > 1:
                self.warn("quantile value should be between 0 and 1, got %s" % _fmt_g(q),
                          node_args[0])
                break
        out = []
        for key in order:
            members = groups[key]
            vals = _zeros(n)
            mask = bytearray(n)
            for k in range(n):
                buckets = [(ub, s.vals[k]) for ub, s in members if s.mask[k]]
                if not buckets:
                    continue
                if fraction:
                    r, forced = _bucket_fraction(lows[k], highs[k], buckets), False
                else:
                    r, forced, _ = _bucket_quantile(qs[k], buckets)
                if forced:
                    self.info("input to histogram_quantile needed to be fixed for monotonicity "
                              "(see https://prometheus.io/docs/prometheus/latest/querying/"
                              "functions/#histogram_quantile) for metric name %s"
                              % A.go_quote(_get(members[0][1].labels, NAME)), node_args[1])
                vals[k] = r
                mask[k] = 1
            if any(mask):
                out.append(Series(key, vals, mask, True))
        return out

    # -- aggregation ---------------------------------------------------------------------------

    def eval_aggregate(self, node, times):
        n = len(times)
        op = node.op
        param = None
        if node.param is not None:
            if op == "count_values":
                param = self.eval(node.param, times).val
            else:
                param = self._scalar_arg(node.param, times)
        v = self.eval(node.expr, times)
        grouping = sorted(node.grouping)
        gset = set(grouping)
        keys = []
        index = {}
        sgroups = []
        for s in v:
            if node.without:
                key = tuple(p for p in s.labels if p[0] not in gset and p[0] != NAME)
            else:
                key = tuple(p for p in s.labels if p[0] in gset)
            gi = index.get(key)
            if gi is None:
                gi = index[key] = len(keys)
                keys.append(key)
            sgroups.append(gi)
        if op in K.AGGREGATIONS:
            agg = K.Aggregator(K.AGGREGATIONS[op], len(keys), n)
            drop = [False] * len(keys)
            K.aggregate_many(agg, [s.vals for s in v], [s.mask for s in v], array("q", sgroups))
            for s, gi in zip(v, sgroups):
                if s.drop_name:
                    drop[gi] = True
            out = []
            for gi, key in enumerate(keys):
                vals = _zeros(n)
                mask = bytearray(n)
                if agg.result(gi, vals, mask):
                    out.append(Series(key, vals, mask, drop[gi]))
            return out
        if op == "quantile":
            if any(math.isnan(q) for q in param):
                self.warn("quantile value should be between 0 and 1, got NaN", node.param)
            mx, mn = max(param), min(param)
            if mx > 1:
                self.warn("quantile value should be between 0 and 1, got %s" % _fmt_g(mx),
                          node.param)
            if mn < 0:
                self.warn("quantile value should be between 0 and 1, got %s" % _fmt_g(mn),
                          node.param)
            out = []
            for gi, key in enumerate(keys):
                vals = _zeros(n)
                mask = bytearray(n)
                drop = False
                for k in range(n):
                    xs = [s.vals[k] for s, g in zip(v, sgroups) if g == gi and s.mask[k]]
                    if xs:
                        vals[k] = K.quantile(param[k], xs)
                        mask[k] = 1
                for s, g in zip(v, sgroups):
                    if g == gi and s.drop_name:
                        drop = True
                if any(mask):
                    out.append(Series(key, vals, mask, drop))
            return out
        if op == "count_values":
            if not _valid_label_name(param):
                raise QueryError("invalid label name %s" % A.go_quote(param))
            res = {}
            order = []
            for s, gi in zip(v, sgroups):
                base = keys[gi]
                for k in range(n):
                    if not s.mask[k]:
                        continue
                    lbl = _set_label(base, param, _fmt_value(s.vals[k]))
                    ent = res.get(lbl)
                    if ent is None:
                        ent = res[lbl] = [_zeros(n), bytearray(n)]
                        order.append(lbl)
                    ent[0][k] += 1
                    ent[1][k] = 1
            return [Series(l, res[l][0], res[l][1]) for l in order]
        if op in ("topk", "bottomk", "limitk", "limit_ratio"):
            return self.eval_k(node, v, sgroups, len(keys), param, times)
        raise QueryError("aggregation %s is not supported" % op)

    def eval_k(self, node, v, sgroups, ngroups, param, times):
        op = node.op
        n = len(times)
        if op in ("topk", "bottomk", "limitk"):
            if max(param) < 1:
                return []
            if any(math.isnan(p) for p in param):
                raise QueryError("Parameter value is NaN")
            if min(param) <= -9.223372036854775808e18:
                raise QueryError("Scalar value %s underflows int64" % _fmt_g(min(param)))
            if max(param) >= 9.223372036854775807e18:
                raise QueryError("Scalar value %s overflows int64" % _fmt_g(max(param)))
        else:
            if max(param) == 0 and min(param) == 0:
                return []
            if any(math.isnan(p) for p in param):
                raise QueryError("Ratio value is NaN")
            if max(param) > 1:
                self.warn("ratio value should be between -1 and 1, got %s, capping to 1"
                          % _fmt_g(max(param)), node.param)
            if min(param) < -1:
                self.warn("ratio value should be between -1 and 1, got %s, capping to -1"
                          % _fmt_g(min(param)), node.param)
        masks = [bytearray(n) for _ in v]
        if op in K.KOPS:
            ordered = K.select_k(K.KOPS[op], [s.vals for s in v], [s.mask for s in v],
                                 array("q", sgroups), ngroups, param, masks, n == 1)
            if n == 1:
                return [Series(v[si].labels, v[si].vals, masks[si], v[si].drop_name)
                        for si in ordered]
            return [Series(s.labels, s.vals, masks[i], s.drop_name)
                    for i, s in enumerate(v) if any(masks[i])]
        ordered = []  # instant: output order
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
                    if _ratio_sample(r, s.labels):
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
            return [Series(v[si].labels, v[si].vals, masks[si], v[si].drop_name)
                    for si in ordered]
        return [Series(s.labels, s.vals, masks[i], s.drop_name)
                for i, s in enumerate(v) if any(masks[i])]

    # -- binary operators ----------------------------------------------------------------------

    def eval_binary(self, node, times):
        n = len(times)
        op = node.op
        if op not in K.BINOPS and op not in A.SET_OPS:  # </ and >/ trim native histograms only
            raise QueryError("operator %s not allowed for float samples" % A.go_quote(op))
        lhs = self.eval(node.lhs, times)
        rhs = self.eval(node.rhs, times)
        if isinstance(lhs, Scalar) and isinstance(rhs, Scalar):
            out = _zeros(n)
            mask = bytearray(n)
            K.binop(K.BINOPS[op], lhs.vals, b"", rhs.vals, b"", out, mask, node.return_bool
                    or op not in A.COMPARISON_OPS, 0)
            return Scalar(out)
        if isinstance(lhs, Scalar) or isinstance(rhs, Scalar):
            swap = isinstance(lhs, Scalar)
            vec, sc = (rhs, lhs) if swap else (lhs, rhs)
            cmp = op in A.COMPARISON_OPS
            drop = (not cmp) or node.return_bool
            out = []
            for s in vec:
                ov = _zeros(n)
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

    def _sig_fn(self, vm):
        names = set(vm.matching_labels)
        if vm.on:
            return lambda labels: tuple(p for p in labels if p[0] in names)
        return lambda labels: tuple(p for p in labels if p[0] not in names and p[0] != NAME)

    def eval_set_op(self, op, lhs, rhs, vm, n):
        sig = self._sig_fn(vm)
        if op == "and" or op == "unless":
            rmask = {}
            for s in rhs:
                m = rmask.get(sig(s.labels))
                if m is None:
                    rmask[sig(s.labels)] = bytearray(s.mask)
                else:
                    for k in range(n):
                        if s.mask[k]:
                            m[k] = 1
            out = []
            for s in lhs:
                m = rmask.get(sig(s.labels))
                if op == "and":
                    if m is None:
                        continue
                    mask = bytearray(a & b for a, b in zip(s.mask, m))
                else:
                    mask = s.mask if m is None else bytearray(
                        a & (1 - b) for a, b in zip(s.mask, m))
                if any(mask):
                    out.append(Series(s.labels, s.vals, mask, s.drop_name, s.ts))
            return out
        # or
        lmask = {}
        for s in lhs:
            m = lmask.get(sig(s.labels))
            if m is None:
                lmask[sig(s.labels)] = bytearray(s.mask)
            else:
                for k in range(n):
                    if s.mask[k]:
                        m[k] = 1
        out = [s for s in lhs if any(s.mask)]
        for s in rhs:
            m = lmask.get(sig(s.labels))
            mask = s.mask if m is None else bytearray(a & (1 - b) for a, b in zip(s.mask, m))
            if any(mask):
                out.append(Series(s.labels, s.vals, mask, s.drop_name, s.ts))
        return self._dedupe(out)

    def eval_vector_binop(self, node, lhs, rhs, vm, n):
        op = node.op
        card = vm.card
        sig = self._sig_fn(vm)
        if card == A.CARD_ONE_TO_MANY:
            lhs, rhs = rhs, lhs
        # The "one" side: per signature, its series; duplicates present at one step fail.
        right = {}
        for s in rhs:
            right.setdefault(sig(s.labels), []).append(s)
        for key, ss in right.items():
            if len(ss) > 1:
                for k in range(n):
                    present = [s for s in ss if s.mask[k]]
                    if len(present) > 1:
                        side = "left" if card == A.CARD_ONE_TO_MANY else "right"
                        a, b = present[1], present[0]
                        d1, d2 = _labels_str(a.labels), _labels_str(b.labels)
                        if d1 > d2:
                            d1, d2 = d2, d1
                        ml = self._match_labels(a.labels, vm)
                        raise QueryError(
                            "found duplicate series for the match group %s on the %s hand-side "
                            "of the operation: [%s, %s];many-to-many matching not allowed: "
                            "matching labels must be unique on one side"
                            % (_labels_str(ml), side, d1, d2))
        bop = K.BINOPS[op]
        cmp = op in A.COMPARISON_OPS
        changes_schema = not cmp
        out = []
        matched = {}  # one-to-one: sig -> presence mask of matches so far
        inserted = {}  # many-to-one: (sig, out labels) -> presence mask
        for s in lhs:
            key = sig(s.labels)
            rs_list = right.get(key)
            if not rs_list:
                continue
            for r in rs_list:
                ov = _zeros(n)
                mask = bytearray(n)
                # Value computation uses the original operand order.
                a, b = (r, s) if card == A.CARD_ONE_TO_MANY else (s, r)
                c = K.binop(bop, a.vals, a.mask, b.vals, b.mask, ov, mask, True, 0)
                if not c:
                    continue
                if cmp:
                    keep = _zeros(n)
                    kmask = bytearray(n)
                    K.binop(bop, a.vals, a.mask, b.vals, b.mask, keep, kmask, node.return_bool, 0)
                labels = self._result_labels(s.labels, r.labels, vm, changes_schema)
                both = mask  # steps where both sides are present
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
                if cmp and not node.return_bool:
                    # Filter: binop already kept the LHS value (original operand order).
                    if any(kmask):
                        out.append(Series(labels, keep, kmask, False))
                elif cmp:
                    out.append(Series(labels, keep, kmask, node.return_bool))
                else:
                    out.append(Series(labels, ov, mask, node.return_bool))
        return self._dedupe(out)

    def _match_labels(self, labels, vm):
        names = set(vm.matching_labels)
        if vm.on:
            return tuple(p for p in labels if p[0] in names)
        return tuple(p for p in labels if p[0] not in names and p[0] != NAME)

    def _result_labels(self, lhs, rhs, vm, changes_schema):
        d = dict(lhs)
        if changes_schema:
            for m in _METADATA:
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


# ---------------------------------------------------------------------------------------------
# Helpers outside the evaluator.

def _sort_less(a, b, desc):
    # funcSort / funcSortDesc: NaNs always last.
    if math.isnan(a):
        return False
    if math.isnan(b):
        return True
    return a > b if desc else a < b


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


def _ratio_sample(r, labels):
    """Prometheus' ratiosampler: a series is in the sample when its label hash, mapped to
    [0, 1), is below r (r > 0) or at/above 1 + r (r < 0)."""
    raise QueryError("limit_ratio is not supported yet")


def _fmt_value(v: float) -> str:
    """strconv.FormatFloat(v, 'f', -1, 64) as count_values prints values."""
    return A.format_go_float(v)


def _fmt_g(v: float) -> str:
    """Go's %g for annotation texts."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    r = repr(float(v))
    if "e" in r or "E" in r:
        mant, exp = r.split("e")
        e = int(exp)
        if e < -4 or e >= 21:
            if mant.endswith(".0"):
                mant = mant[:-2]
            return "%se%s%02d" % (mant, "-" if e < 0 else "+", abs(e))
        return A.format_go_float(v)
    if r.endswith(".0"):
        r = r[:-2]
    return r


def _fmt_f(v: float) -> str:
    """Go's %f."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return "%f" % v


def _parse_go_float(s: str) -> float:
    t = s.strip()
    if t != s:
        raise ValueError(s)
    low = t.lower().lstrip("+-")
    if low in ("inf", "infinity"):
        return -math.inf if t.startswith("-") else math.inf
    if low == "nan":
        return math.nan
    if "_" in t:
        raise ValueError(s)
    if low.startswith("0x"):
        return float.fromhex(t)
    return float(t)


def _bucket_quantile(q, buckets):
    """Prometheus' bucketQuantile over (upper bound, cumulative count) pairs.
    Returns (value, forced_monotonic, fixed_precision)."""
    if math.isnan(q):
        return math.nan, False, False
    if q < 0:
        return -math.inf, False, False
    if q > 1:
        return math.inf, False, False
    buckets = sorted(buckets, key=lambda b: b[0])
    if not math.isinf(buckets[-1][0]) or buckets[-1][0] < 0:
        return math.nan, False, False
    # Coalesce equal upper bounds.
    merged = []
    for ub, c in buckets:
        if merged and merged[-1][0] == ub:
            merged[-1] = (ub, merged[-1][1] + c)
        else:
            merged.append((ub, c))
    buckets = merged
    forced, fixed = _ensure_monotonic_and_ignore_small_deltas(buckets, 1e-12)
    if len(buckets) < 2:
        return math.nan, forced, fixed
    observations = buckets[-1][1]
    if observations == 0:
        return math.nan, forced, fixed
    rank = q * observations
    b = 0
    while b < len(buckets) - 1 and buckets[b][1] < rank:
        b += 1
    # sort.Search for the first bucket with count >= rank.
    b = len(buckets) - 1
    for i, (_, c) in enumerate(buckets):
        if c >= rank:
            b = i
            break
    if b == len(buckets) - 1:
        return buckets[-2][0], forced, fixed
    if b == 0 and buckets[0][0] <= 0:
        return buckets[0][0], forced, fixed
    bucket_start = 0.0
    bucket_end = buckets[b][0]
    count = buckets[b][1]
    if b > 0:
        bucket_start = buckets[b - 1][0]
        count -= buckets[b - 1][1]
        rank -= buckets[b - 1][1]
    return bucket_start + (bucket_end - bucket_start) * (rank / count), forced, fixed


def _ensure_monotonic_and_ignore_small_deltas(buckets, tolerance):
    forced = False
    fixed = False
    prev = buckets[0][1]
    for i in range(1, len(buckets)):
        cur = buckets[i][1]
        if cur == prev:
            continue
        if abs(cur - prev) <= tolerance * max(abs(cur), abs(prev)):
            buckets[i] = (buckets[i][0], prev)
            fixed = True
            continue
        if cur < prev:
            buckets[i] = (buckets[i][0], prev)
            forced = True
            continue
        prev = cur
    return forced, fixed


def _bucket_fraction(lower, upper, buckets):
    """Prometheus' BucketFraction over classic (upper bound, cumulative count) buckets."""
    buckets = sorted(buckets, key=lambda b: b[0])
    if not (math.isinf(buckets[-1][0]) and buckets[-1][0] > 0):
        return math.nan
    merged = []
    for ub, c in buckets:
        if merged and merged[-1][0] == ub:
            merged[-1] = (ub, merged[-1][1] + c)
        else:
            merged.append((ub, c))
    buckets = merged
    count = buckets[-1][1]
    if count == 0 or math.isnan(lower) or math.isnan(upper):
        return math.nan
    if lower >= upper:
        return 0.0
    rank = lower_rank = upper_rank = 0.0
    lower_set = upper_set = False
    lb = 0.0 if buckets[0][0] > 0 else -math.inf
    for i, (ub, c) in enumerate(buckets):
        if i > 0:
            lb = buckets[i - 1][0]

        def interp(x):
            if lb == -math.inf:
                return c
            return rank + (c - rank) * (x - lb) / (ub - lb)
        if not lower_set and lb >= lower:
            lower_rank, lower_set = rank, True
        if not upper_set and lb >= upper:
            upper_rank, upper_set = rank, True
        if lower_set and upper_set:
            break
        if not lower_set and lb < lower < ub:
            lower_rank, lower_set = interp(lower), True
        if not upper_set and lb < upper < ub:
            upper_rank, upper_set = interp(upper), True
        if lower_set and upper_set:
            break
        rank = c
    if not lower_set or lower_rank > count:
        lower_rank = count
    if not upper_set or upper_rank > count:
        upper_rank = count
    return (upper_rank - lower_rank) / count


def _openmetrics_float(v):
    """labels.FormatOpenMetricsFloat: Go %g shortest, with ".0" added to integers."""
    s = _fmt_g(v)
    if s in ("NaN", "+Inf", "-Inf"):
        return s
    if "e" not in s and "." not in s:
        s += ".0"
    return s
