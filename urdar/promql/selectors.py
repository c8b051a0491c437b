"""What a parsed PromQL query will read, before it runs: the selector walk.

`selections(expr, start, end, step, lookback_ms)` walks the tree once and returns one `Selection`
(matchers + `SelectHints`) per vector or matrix selector, with the time range the evaluator will ask
for (Prometheus' `getTimeRangesForSelector`: start/end, offset, @, range, subquery range and
lookback delta). The querier fetches all of them from every source concurrently, then evaluates
with no I/O over `PrefetchedQueryable`, which serves the evaluator's `select(matchers, mint, maxt)`
from memory. The ranges follow urdar's evaluator (promql/engine.py `_ref_times`, `eval_matrix`) and
may be wider than what it reads, never narrower: a subquery's inner steps are taken as every
instant of its window. Runs in the query pool (it grows with the query text)."""
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
import math

from urdar.promql import ast as A
from urdar.promql.info import info_anchor, info_select_matchers

INT64_MIN = -(2 ** 63)
INT64_MAX = 2 ** 63 - 1


@dataclass(frozen=True)
class SelectHints:
    """What a source may use to read less (Prometheus' storage.SelectHints): the time range
    [mint, maxt] in ms, the evaluation step in ms (0 for an instant read), the enclosing function
    ("series" asks for label sets only, no samples), a matrix selector's range in ms, and a
    maximum number of series (0: no limit)."""
    mint: int = INT64_MIN
    maxt: int = INT64_MAX
    step: int = 0
    func: str = ""
    range_ms: int = 0
    limit: int = 0

    @property
    def samples(self):
        return self.func != "series"


@dataclass(frozen=True)
class Selection:
    matchers: tuple
    hints: SelectHints


class NotPrefetched(LookupError):
    """The evaluator asked for data the selector walk did not plan (a bug, never I/O)."""


def matchers_key(matchers):
    return tuple((m.kind, m.name, m.value) for m in matchers)


class _Unknown(Exception):
    """A duration the walk cannot compute (the evaluator will fail on it before selecting)."""


def duration_ms(d, start, end, step):
    """A DurationExpr (or number) in ms, as the evaluator's `duration_value` computes it."""
    if isinstance(d, A.NumberLiteral):
        return int(round(d.val * 1000))
    if isinstance(d, A.ParenExpr):
        return duration_ms(d.expr, start, end, step)
    op = d.op
    if op == "step":
        return step
    if op == "range":
        return end - start
    if op in ("min_of", "max_of"):
        a, b = duration_ms(d.lhs, start, end, step), duration_ms(d.rhs, start, end, step)
        return min(a, b) if op == "min_of" else max(a, b)
    if d.lhs is None:
        v = duration_ms(d.rhs, start, end, step)
        return -v if op == "-" else v
    a = duration_ms(d.lhs, start, end, step) / 1000.0
    b = duration_ms(d.rhs, start, end, step) / 1000.0
    if op in ("/", "%") and b == 0:
        raise _Unknown(op)
    r = {"+": lambda: a + b, "-": lambda: a - b, "*": lambda: a * b, "/": lambda: a / b,
         "%": lambda: math.fmod(a, b), "^": lambda: math.pow(a, b)}.get(op)
    if r is None:
        raise _Unknown(op)
    v = r()
    if v != v or v in (math.inf, -math.inf):
        raise _Unknown(op)
    return int(round(v * 1000))


def selections(expr, start, end, step, lookback_ms):
    """[Selection] for every selector of `expr` evaluated at start..end every `step` ms (step 0:
    an instant query at start)."""
    out = []

    def dur(d):
        return duration_ms(d, start, end, step)

    def ref_range(node, lo, hi):
        """The reference times of a selector or subquery evaluated over [lo, hi]."""
        off = dur(node.offset_expr) if node.offset_expr is not None else node.offset_ms
        at = node.timestamp_ms
        if node.start_or_end == "start":
            at = start
        elif node.start_or_end == "end":
            at = end
        if at is not None:
            return at - off, at - off
        return lo - off, hi - off

    # Explicit stack: (node, evaluation window [lo, hi], step there, enclosing function name).
    # A range query is evaluated at start + k*step <= end: its window ends at the last step, so
    # the evaluator asks for exactly the range fetched (nothing to fetch, decode or slice off
    # after it).
    last = start + (end - start) // step * step if step > 0 and end >= start else end
    stack = [(expr, start, last, step, "")]
    while stack:
        node, lo, hi, st, func = stack.pop()
        try:
            if isinstance(node, A.VectorSelector):
                rlo, rhi = ref_range(node, lo, hi)
                # smoothed interpolates towards the next sample within the lookback delta
                after = lookback_ms if node.smoothed else 0
                out.append(Selection(tuple(node.matchers), SelectHints(
                    rlo - lookback_ms + 1, rhi + after, st, func)))
                continue
            if isinstance(node, A.MatrixSelector):
                vs = node.vector_selector
                while isinstance(vs, A.ParenExpr):
                    vs = vs.expr
                rng = node.range_ms if node.range_expr is None else dur(node.range_expr)
                rlo, rhi = ref_range(vs, lo, hi)
                # anchored/smoothed also read a lookback delta before the window (smoothed
                # after it too), as the evaluator's eval_matrix does.
                before = lookback_ms if (vs.anchored or vs.smoothed) else 0
                after = lookback_ms if vs.smoothed else 0
                out.append(Selection(tuple(vs.matchers), SelectHints(
                    rlo - rng - before + 1, rhi + after, st, func, rng)))
                continue
            if isinstance(node, A.SubqueryExpr):
                rng = node.range_ms if node.range_expr is None else dur(node.range_expr)
                sub_step = node.step_ms if node.step_expr is None else dur(node.step_expr)
                rlo, rhi = ref_range(node, lo, hi)
                stack.append((node.expr, rlo - rng + 1, rhi, sub_step or st, func))
                continue
        except _Unknown:
            continue
        if isinstance(node, A.Call):
            func = node.func.name
            if func == "info" and node.args:
                try:
                    out.append(_info_selection(node, lo, hi, st, lookback_ms, dur, ref_range))
                except _Unknown:
                    pass
        children = node.children()
        if isinstance(node, A.Call) and func == "info":
            children = children[:1]  # the second argument is a label filter, never read
        for child in reversed(children):
            stack.append((child, lo, hi, st, func))
    return out


def _info_selection(node, lo, hi, st, lookback_ms, dur, ref_range):
    """The select info() makes for its info series: as of the @ and offsets of the first
    selector in its first argument (promql/info.py `info_anchor`)."""
    at_node, off_nodes = info_anchor(node.args[0])
    off = sum(dur(n.offset_expr) if n.offset_expr is not None else n.offset_ms
              for n in off_nodes)
    if at_node is not None:
        at, _ = ref_range(at_node, lo, hi)
        # ref_range took at_node's own offset off; the sum has it too
        at += dur(at_node.offset_expr) if at_node.offset_expr is not None else at_node.offset_ms
        rlo = rhi = at - off
    else:
        rlo, rhi = lo - off, hi - off
    return Selection(tuple(info_select_matchers(node)), SelectHints(
        rlo - lookback_ms + 1, rhi, st, "info"))


def merge_selections(sels):
    """One Selection per distinct matcher set, its range the union of the ranges asked for."""
    by = {}
    for s in sels:
        k = matchers_key(s.matchers)
        prev = by.get(k)
        if prev is None:
            by[k] = s
            continue
        h, p = s.hints, prev.hints
        by[k] = Selection(prev.matchers, SelectHints(
            min(h.mint, p.mint), max(h.maxt, p.maxt), min(h.step, p.step) if h.step and p.step
            else (h.step or p.step), h.func if h.func == p.func else "", max(h.range_ms, p.range_ms)))
    return list(by.values())


class PrefetchedQueryable:
    """The evaluator's Queryable over series fetched before evaluation: `fetched` maps a
    matchers_key to (mint, maxt, [(label key, ts, vals)]). A select inside a fetched range is
    sliced from memory; anything else raises NotPrefetched (no I/O happens here)."""

    def __init__(self, fetched, check=None):
        self._fetched = fetched
        self._check = check          # called before each select (deadline, cancellation)
        self.selects = 0

    def has_series(self, matchers):
        """Whether the selector fetched any series at all (the evaluator's cheap test that a
        subquery over a missing metric can answer empty without building its step grid)."""
        got = self._fetched.get(matchers_key(matchers))
        return got is not None and any(len(s[1]) for s in got[2])

    def select(self, matchers, mint, maxt):
        if self._check is not None:
            self._check()
        self.selects += 1
        got = self._fetched.get(matchers_key(matchers))
        if got is None or mint < got[0] or maxt > got[1]:
            raise NotPrefetched("selector %s over [%d, %d] was not fetched before evaluation" % (
                ",".join("%s%s%r" % m for m in matchers_key(matchers)), mint, maxt))
        fmint, fmaxt, series = got
        if mint == fmint and maxt == fmaxt:
            return series
        out = []
        for item in series:
            # (key, ts, vals[, sts or None[, hts, hvs[, hsts]]]): the floats (and their start
            # times) are cut by ts, the histograms (and theirs) by hts
            ts = item[1]
            lo = bisect_left(ts, mint)
            hi = bisect_right(ts, maxt)
            hts = item[4] if len(item) > 5 else None
            if hts is None:
                if lo == 0 and hi == len(ts):
                    out.append(item)
                elif hi > lo:
                    out.append((item[0],) + tuple(a[lo:hi] for a in item[1:]))
                continue
            hlo = bisect_left(hts, mint)
            hhi = bisect_right(hts, maxt)
            if hi <= lo and hhi <= hlo:
                continue
            sts = item[3]
            cut = (item[0], ts[lo:hi], item[2][lo:hi], None if sts is None else sts[lo:hi],
                   hts[hlo:hhi], item[5][hlo:hhi])
            if len(item) > 6:
                cut += (None if item[6] is None else item[6][hlo:hhi],)
            out.append(cut)
        return out
