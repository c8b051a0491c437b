"""PromQL function implementations and FUNCTION_CALLS, the name -> implementation table.

The evaluator (promql/evaluator.py) looks a Call's name up in FUNCTION_CALLS and calls the entry
with itself, the Call node and the step times, as Prometheus' promql/functions.go does with its
FunctionCalls map; signatures and argument checking live in promql/functions.py. Range
functions share one entry that runs the kernels in promql/kernels.pyx; the rest follow Go's
float edge cases (NaN, ±Inf, int64 conversion) with the small helpers at the top.
"""

from __future__ import annotations

import functools
import math
import re
from array import array
from bisect import bisect_right
from operator import itemgetter

from urdar.engine.matchers import compile_regex
from urdar.promql import ast as A
from urdar.promql import histcalls as HC
from urdar.promql import kernels as K
from urdar.promql.info import call_info
from urdar.promql.quantile import bucket_fraction, bucket_quantile, parse_go_float
from urdar.promql.value import (
    NAME, MatrixValue, QueryError, Scalar, Series, fmt_f, fmt_g, full, get_label, openmetrics_float,
    set_label, unwrap, valid_label_name, zeros)

_SECOND = itemgetter(1)
_THIRD = itemgetter(2)

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


def _template_pieces(repl: str) -> list:
    """Go's Regexp.ExpandString template (`$1`, `${1}`, `$name`, `${name}`, `$$`) as pieces:
    a str is copied, an int is a group number, a tuple holds a group name."""
    out: list = []
    lit = []
    i, n = 0, len(repl)
    while i < n:
        c = repl[i]
        if c != "$" or i + 1 >= n:
            lit.append(c)
            i += 1
            continue
        nxt = repl[i + 1]
        if nxt == "$":
            lit.append("$")
            i += 2
            continue
        if nxt == "{":
            j = repl.find("}", i + 2)
            name = repl[i + 2:j] if j > 0 else ""
            if j < 0 or not re.fullmatch(r"[A-Za-z0-9_]+", name):
                lit.append(c)
                i += 1
                continue
            i = j + 1
        else:
            mm = re.match(r"[A-Za-z0-9_]+", repl[i + 1:])
            if not mm:
                lit.append(c)
                i += 1
                continue
            name = mm.group(0)
            i += 1 + len(name)
        if lit:
            out.append("".join(lit))
            lit = []
        out.append(int(name) if name.isdigit() else (name,))
    if lit:
        out.append("".join(lit))
    return out


def _expand_pieces(groups: tuple, names: dict, pieces: list) -> str:
    """The template's text for a match's `groups` (group 0 the whole match; None where a
    group took no part) with group `names` ({name: number}); a group number past the
    regex' groups and an unknown group name expand to nothing."""
    out = []
    for p in pieces:
        if type(p) is str:
            out.append(p)
        elif type(p) is int:
            if p < len(groups):
                out.append(groups[p] or "")
        else:
            k = names.get(p[0])
            if k is not None:
                out.append(groups[k] or "")
    return "".join(out)



def _sort_less(a, b, desc):
    # funcSort / funcSortDesc: NaNs always last.
    if math.isnan(a):
        return False
    if math.isnan(b):
        return True
    return a > b if desc else a < b


# ---------------------------------------------------------------------------------------------
# Function implementations: each takes (evaluator, Call node, step times) and returns a list of
# Series or a Scalar. FUNCTION_CALLS at the bottom maps every supported name to one of them.

def _absent_series(ev, arg, present, n):
    mask = bytearray(0 if present[k] else 1 for k in range(n))
    if not any(mask):
        return []
    return [Series(absent_labels(arg), full(n, 1.0), mask)]


def call_absent_over_time(ev, node, times):
    n = len(times)
    m = ev.eval_matrix(node.args[0], times)
    present = bytearray(n)
    counts = array("q", bytes(8 * n))
    for si, (labels, ts, vs, drop) in enumerate(m.series):
        ev.check()
        K.window_counts(ts, m.ends, m.range_ms, counts)
        if m.hists is not None and m.hists[si] is not None:
            K.window_counts(m.hists[si][0], m.ends, m.range_ms, counts)
        for k in range(n):
            if counts[k]:
                present[k] = 1
    return _absent_series(ev, node.args[0], present, n)


def call_absent(ev, node, times):
    n = len(times)
    present = bytearray(n)
    for s in ev.each(ev.eval(node.args[0], times)):
        for k in range(n):
            if s.mask[k]:
                present[k] = 1
    return _absent_series(ev, node.args[0], present, n)


def call_time(ev, node, times):
    return Scalar(array("d", [t / 1000.0 for t in times]))


def _constant(value_of):
    """A function of no arguments whose value is the same at every step."""
    def call(ev, node, times):
        return Scalar(full(len(times), value_of(ev)))
    return call


def _min_max_of(f):
    def call(ev, node, times):
        a = ev.scalar_arg(node.args[0], times)
        b = ev.scalar_arg(node.args[1], times)
        return Scalar(array("d", [f(x, y) for x, y in zip(a, b)]))
    return call


def call_scalar(ev, node, times):
    n = len(times)
    out = full(n, math.nan)
    cnt = [0] * n
    for s in ev.each(ev.eval(node.args[0], times)):
        for k in range(n):
            if s.mask[k]:
                cnt[k] += 1
                out[k] = s.vals[k]
    for k in range(n):
        if cnt[k] != 1:
            out[k] = math.nan
    return Scalar(out)


def call_vector(ev, node, times):
    a = ev.scalar_arg(node.args[0], times)
    return [Series((), array("d", a), bytearray(b"\x01") * len(times))]


def _elementwise(f):
    """A function applying f to every present sample; the result drops the metric name."""
    def call(ev, node, times):
        n = len(times)
        out = []
        for s in ev.each(ev.eval(node.args[0], times)):
            vals = array("d", s.vals)
            for k in range(n):
                if s.mask[k]:
                    vals[k] = f(vals[k])
            out.append(Series(s.labels, vals, s.mask, True))
        return out
    return call


def call_round(ev, node, times):
    n = len(times)
    args = node.args
    v = ev.eval(args[0], times)
    to = ev.scalar_arg(args[1], times) if len(args) > 1 else full(n, 1.0)
    out = []
    for s in ev.each(v):
        vals = array("d", s.vals)
        for k in range(n):
            if s.mask[k]:
                inv = 1.0 / to[k] if to[k] != 0 else math.copysign(math.inf, to[k])
                x = vals[k] * inv + 0.5
                vals[k] = _floor(x) / inv
        out.append(Series(s.labels, vals, s.mask, True))
    return out


def call_clamp(ev, node, times):
    name = node.func.name
    args = node.args
    n = len(times)
    v = ev.eval(args[0], times)
    lo = hi = None
    if name == "clamp":
        lo = ev.scalar_arg(args[1], times)
        hi = ev.scalar_arg(args[2], times)
    elif name == "clamp_min":
        lo = ev.scalar_arg(args[1], times)
    else:
        hi = ev.scalar_arg(args[1], times)
    out = []
    for s in ev.each(v):
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


def call_timestamp(ev, node, times):
    n = len(times)
    arg = unwrap(node.args[0])
    out = []
    for s in ev.each(ev.eval(node.args[0], times)):
        vals = zeros(n)
        for k in range(n):
            if s.mask[k]:
                if isinstance(arg, A.VectorSelector) and s.ts is not None:
                    vals[k] = s.ts[k] / 1000.0
                else:
                    vals[k] = times[k] / 1000.0
        out.append(Series(s.labels, vals, s.mask, True))
    return out


def call_start_timestamp(ev, node, times):
    """start_timestamp(v): the start time (s) of each selected sample, 0 where unknown; only
    for a vector selector argument over series whose storage keeps start times (else empty,
    as in Prometheus without start timestamps or over an expression)."""
    arg = node.args[0]
    if not isinstance(arg, A.VectorSelector) or arg.smoothed:
        ev.eval(arg, times)
        return []
    refs = ev._ref_times(arg, times)
    sts = []
    hparts = []
    hsts = []
    data, _ = ev._select(arg.matchers, min(refs) - ev.lookback + 1, max(refs), sts, hparts,
                         False, hsts)
    keep = [i for i, st in enumerate(sts) if st is not None and hparts[i] is None]
    res = [(keep[r[0]],) + tuple(r[1:]) for r in K.instant_values_many(
        [data[i][1] for i in keep], [data[i][2] for i in keep], refs, ev.lookback)]
    for i, hp in enumerate(hparts):
        # series with histogram samples: the latest float or histogram sample per step
        if hp is not None and (sts[i] is not None or hsts[i] is not None):
            _v, sample_ts, mask, _h, cnt = HC.instant_with_hists(
                data[i][1], data[i][2], hp[0], hp[1], refs, ev.lookback)
            if cnt:
                res.append((i, None, sample_ts, mask, cnt))
    res.sort(key=lambda r: r[0])
    out = []
    for i, _vals, sample_ts, mask, _cnt in res:
        at = {}
        if sts[i] is not None:
            at.update(zip(data[i][1], sts[i]))
        if hparts[i] is not None and hsts[i] is not None:
            at.update(zip(hparts[i][0], hsts[i]))
        vals = zeros(len(times))
        for k in range(len(times)):
            if mask[k]:
                vals[k] = at.get(sample_ts[k], 0) / 1000.0
        out.append(Series(data[i][0], vals, mask, True))
    return out


def _date_part(f):
    """A date function: f of the civil date of each sample value (or of each step without one)."""
    def call(ev, node, times):
        n = len(times)
        if not node.args:
            return [Series((), array("d", [float(f(_civil(t // 1000))) for t in times]),
                           bytearray(b"\x01") * n, False)]
        out = []
        for s in ev.each(ev.eval(node.args[0], times)):
            vals = array("d", s.vals)
            for k in range(n):
                if s.mask[k]:
                    vals[k] = float(f(_civil(_go_int64(vals[k]))))
            out.append(Series(s.labels, vals, s.mask, True))
        return out
    return call


def call_sort(ev, node, times):
    name = node.func.name
    args = node.args
    if not ev.instant:
        ev.warn("sort is ineffective for range queries since results are always "
                "ordered by labels", node)
    v = ev.eval(args[0], times)
    if len(times) != 1:
        return v
    v = [s for s in v if s.mask[0]]
    if name == "sort":
        return go_sort(v, lambda a, b: _sort_less(a.vals[0], b.vals[0], False))
    if name == "sort_desc":
        return go_sort(v, lambda a, b: _sort_less(a.vals[0], b.vals[0], True))
    names = [unwrap(a).val for a in args[1:]]
    desc = name == "sort_by_label_desc"

    def cmp(a, b):
        for ln in names:
            x, y = get_label(a.labels, ln), get_label(b.labels, ln)
            if x == y:
                continue
            return -1 if _natural_less(x, y) else 1
        return -1 if a.labels < b.labels else (1 if a.labels > b.labels else 0)
    key = functools.cmp_to_key((lambda a, b: -cmp(a, b)) if desc else cmp)
    return sorted(v, key=key)


def go_sort(v, less):
    # Go's sort.Sort on small inputs is an insertion sort (stable); use a stable sort.
    return sorted(v, key=functools.cmp_to_key(
        lambda a, b: -1 if less(a, b) else (1 if less(b, a) else 0)))



def absent_labels(arg):
    arg = unwrap(arg)
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



# Window samples one range-function kernel call may visit before the deadline is checked again
# (a few ms of work; quantile_over_time sorts each window, so it is the slowest per sample).
WINDOW_BATCH_POINTS = 1 << 19


def call_range_func(ev, node, times):
    name = node.func.name
    args = node.args
    fid = K.RANGE_FUNCS[name]
    p1 = p2 = array("d")
    margs = args
    if name == "quantile_over_time":
        p1 = ev.scalar_arg(args[0], times)
        margs = args[1:]
        for q in p1:
            if math.isnan(q) or q < 0 or q > 1:
                ev.warn("quantile value should be between 0 and 1, got %s"
                        % fmt_g(q), args[0])
                break
    elif name == "predict_linear":
        p1 = ev.scalar_arg(args[1], times)
    elif name == "double_exponential_smoothing":
        p1 = ev.scalar_arg(args[1], times)
        p2 = ev.scalar_arg(args[2], times)
        for sf in p1:
            if sf <= 0 or sf >= 1:
                raise QueryError("invalid smoothing factor. Expected: 0 < sf < 1, got: %s"
                                 % fmt_f(sf))
        for tf in p2:
            if tf <= 0 or tf >= 1:
                raise QueryError("invalid trend factor. Expected: 0 < tf < 1, got: %s"
                                 % fmt_f(tf))
    m = ev.eval_matrix(margs[0], times)
    if m.hists is None:
        return _range_floats(ev, node, times, name, fid, m, p1, p2, margs)
    floats = MatrixValue(m.series, m.ends, m.range_ms, m.node, m.sts)
    out = _range_floats(ev, node, times, name, fid, floats, p1, p2, margs)
    return HC.range_with_hists(ev, node, times, m, out, margs)


def _range_floats(ev, node, times, name, fid, m, p1, p2, margs):
    """A range function over the float samples of m."""
    mnode = unwrap(margs[0])
    vsel = mnode.vector_selector if isinstance(mnode, A.MatrixSelector) else None
    extended = vsel is not None and (vsel.anchored or vsel.smoothed)
    keep_name = name in ("last_over_time", "first_over_time")
    out = []
    series = m.series
    checked = set()
    tss = list(map(_SECOND, series))
    valss = list(map(_THIRD, series))
    if m.sts is not None and name in ST_FUNCS and not extended:
        _st_range(ev, m, fid, name, keep_name, vsel, margs, checked, out)
        return out
    if extended:
        # eval_call admitted only rate/increase/delta/changes/resets here
        for lo, hi in ev.batches(len(series), len(times)):
            res = K.extended_range_many(fid, tss[lo:hi], valss[lo:hi], m.ends, m.range_ms,
                                        ev.lookback, vsel.smoothed)
            for i, ov, mask in res:
                _range_result(ev, series[lo + i], ov, mask, name, keep_name, vsel, margs, checked,
                              out)
        return out
    nsteps = len(times)
    # Series whose windows are long (a [1d:1s] subquery has 86,400 points in each) are done
    # alone, a slice of steps per kernel call, so the deadline is checked between calls.
    # (A window never holds more than all of a series' samples: when even the longest series
    # is light, the per-series estimate is skipped; it is a Python call per series.)
    if max(map(len, tss), default=0) * nsteps <= WINDOW_BATCH_POINTS:
        heavy = [False] * len(tss)
    else:
        heavy = [_window_points(ts, m.range_ms) * nsteps > WINDOW_BATCH_POINTS for ts in tss]
    any_heavy = any(heavy)
    for lo, hi in ev.batches(len(series), nsteps):
        light = [i for i in range(lo, hi) if not heavy[i]] if any_heavy else None
        if light is None or len(light) == hi - lo:
            got = K.range_values_many(fid, tss[lo:hi], valss[lo:hi], m.ends, m.range_ms, p1, p2,
                                      times)
            results = [(lo + i, ov, mask) for i, ov, mask in got]
        else:
            got = K.range_values_many(fid, [tss[i] for i in light], [valss[i] for i in light],
                                      m.ends, m.range_ms, p1, p2, times)
            results = [(light[i], ov, mask) for i, ov, mask in got]
            for i in range(lo, hi):
                if heavy[i]:
                    one = _range_values_stepwise(ev, fid, tss[i], valss[i], m.ends, m.range_ms,
                                                 p1, p2, times)
                    if one is not None:
                        results.append((i,) + one)
            results.sort(key=lambda r: r[0])
        # _range_result inlined: a Python call per series was a good part of an instant
        # rate() over 10k series.
        out.extend([Series(series[i][0], ov, mask, series[i][3] or not keep_name)
                    for i, ov, mask in results])
        if name in ("rate", "increase") and vsel is not None:
            # Each metric name once, in series order: when every label set starts with its
            # name (the rule), the distinct first pairs come from one pass.
            firsts = dict.fromkeys([series[i][0][:1] for i, _, _ in results])
            if all(f and f[0][0] == NAME for f in firsts):
                for f in firsts:
                    if f[0][1] not in checked:
                        _note_not_counter(ev, f[0][1], checked, margs)
            else:
                for i, _, _ in results:
                    mn = get_label(series[i][0], NAME)
                    if mn not in checked:
                        _note_not_counter(ev, mn, checked, margs)
    return out


# The range functions that use the samples' start timestamps, when storage has them.
ST_FUNCS = frozenset(("rate", "increase", "irate", "resets"))


def _st_range(ev, m, fid, name, keep_name, vsel, margs, checked, out):
    """rate/increase/irate/resets over a matrix some of whose series carry start timestamps:
    those go through the start-timestamp kernel, the rest through the usual one."""
    with_st = [i for i, st in enumerate(m.sts) if st is not None]
    without = [i for i, st in enumerate(m.sts) if st is None]
    series = m.series
    empty = array("d")
    for idx, use_st in ((with_st, True), (without, False)):
        for lo, hi in ev.batches(len(idx), len(m.ends)):
            part = idx[lo:hi]
            tss = [series[i][1] for i in part]
            valss = [series[i][2] for i in part]
            if use_st:
                res = K.st_range_many(fid, tss, valss, [m.sts[i] for i in part], m.ends,
                                      m.range_ms)
            else:
                res = [r + (False,) for r in K.range_values_many(
                    fid, tss, valss, m.ends, m.range_ms, empty, empty, m.ends)]
            for j, ov, mask, overlap in res:
                s = series[part[j]]
                if overlap:
                    ev.warn("sample has start time that overlaps with previous sample timestamp "
                            "for metric %s" % A.go_quote(get_label(s[0], NAME)), margs[0])
                if any(mask):
                    _range_result(ev, s, ov, mask, name, keep_name, vsel, margs, checked, out)


def _window_points(ts, range_ms):
    """About how many of a series' samples one range window holds."""
    n = len(ts)
    if n < 2:
        return n
    span = ts[-1] - ts[0] + 1
    return n if range_ms >= span else n * range_ms // span + 1


def _range_values_stepwise(ev, fid, ts, vals, ends, range_ms, p1, p2, times):
    """range_values over one series in slices of steps of about WINDOW_BATCH_POINTS window samples
    each (a deadline check before each); (vals, mask) or None when no step has a value."""
    nsteps = len(ends)
    per = max(1, WINDOW_BATCH_POINTS // max(1, _window_points(ts, range_ms)))
    ov = array("d", bytes(8 * nsteps))
    om = bytearray(nsteps)
    found = False
    for k0 in range(0, nsteps, per):
        ev.check()
        k1 = min(nsteps, k0 + per)
        e = ends[k0:k1]
        # The samples of this slice's windows only: (min end - range, max end].
        i0 = bisect_right(ts, min(e) - range_ms)
        i1 = bisect_right(ts, max(e))
        got = K.range_values_many(fid, [ts[i0:i1]], [vals[i0:i1]], e, range_ms,
                                  p1[k0:k1] if len(p1) else p1, p2[k0:k1] if len(p2) else p2,
                                  times[k0:k1])
        if got:
            _, cv, cm = got[0]
            ov[k0:k1] = cv
            om[k0:k1] = cm
            found = True
    return (ov, om) if found else None


def _range_result(ev, series, ov, mask, name, keep_name, vsel, margs, checked, out):
    """Append one range function output series; rate/increase note non-counter names once."""
    labels, _, _, drop = series
    out.append(Series(labels, ov, mask, drop or not keep_name))
    if name not in ("rate", "increase") or vsel is None:
        return
    # Per series: the name is nearly always the first label (sorted labels, "__" first), so
    # look there before scanning.
    mn = labels[0][1] if labels and labels[0][0] == NAME else get_label(labels, NAME)
    if mn not in checked:
        _note_not_counter(ev, mn, checked, margs)


def _note_not_counter(ev, mn, checked, margs):
    """rate/increase of metric mn, seen for the first time: the info when its name is not a
    counter's."""
    checked.add(mn)
    if not (mn.endswith("_total") or mn.endswith("_sum") or mn.endswith("_count")
            or mn.endswith("_bucket")):
        ev.info("metric might not be a counter, name does not end in "
                "_total/_sum/_count/_bucket: %s" % A.go_quote(mn), margs[0])


def call_label_replace(ev, node, times):
    args = node.args
    dst, repl, src, regex = (unwrap(a).val for a in args[1:5])
    try:
        rx = compile_regex(regex).compiled
    except Exception:
        raise QueryError("invalid regular expression in label_replace(): %s" % regex)
    if not valid_label_name(dst):
        raise QueryError("invalid destination label name in label_replace(): %s" % dst)
    v = ev.eval(args[0], times)
    pieces = _template_pieces(repl)
    names = rx.groupindex
    # The source value's outcome (None: no match), once per distinct value.
    done: dict = {}
    out = []
    for s in ev.each(v):
        value = get_label(s.labels, src)
        res = done.get(value, done)
        if res is done:
            groups = rx.match_groups(value)
            res = done[value] = None if groups is None else _expand_pieces(groups, names, pieces)
        if res is None:
            out.append(s)
            continue
        labels = set_label(s.labels, dst, res)
        out.append(Series(labels, s.vals, s.mask, False if dst == NAME else s.drop_name))
    return ev.merge(out, True)



def call_label_join(ev, node, times):
    args = node.args
    dst, sep = unwrap(args[1]).val, unwrap(args[2]).val
    srcs = [unwrap(a).val for a in args[3:]]
    for sl in srcs:
        if not valid_label_name(sl):
            raise QueryError("invalid source label name in label_join(): %s" % sl)
    if not valid_label_name(dst):
        raise QueryError("invalid destination label name in label_join(): %s" % dst)
    v = ev.eval(args[0], times)
    out = []
    for s in ev.each(v):
        val = sep.join(get_label(s.labels, sl) for sl in srcs)
        labels = set_label(s.labels, dst, val)
        out.append(Series(labels, s.vals, s.mask, False if dst == NAME else s.drop_name))
    return ev.merge(out, True)



def call_histogram_quantiles(ev, node, times):
    args = node.args
    label = unwrap(args[1]).val
    out = []
    for qn in args[2:]:
        qs = ev.scalar_arg(qn, times)
        for s in _histogram_quantile(ev, node, times, qnode=qn, vnode=args[0]):
            q = qs[0]
            out.append(Series(set_label(s.labels, label, openmetrics_float(q)), s.vals,
                              s.mask, True))
    return out



def _histogram_quantile(ev, node, times, fraction=False, qnode=None, vnode=None):
    n = len(times)
    if qnode is not None:
        qs = ev.scalar_arg(qnode, times)
        node_args = [qnode, vnode]
    elif fraction:
        lows = ev.scalar_arg(node.args[0], times)
        highs = ev.scalar_arg(node.args[1], times)
        qs = lows
        node_args = [node.args[0], node.args[2]]
    else:
        qs = ev.scalar_arg(node.args[0], times)
        node_args = node.args
    v = ev.eval(node_args[1], times)
    hv = [s for s in v if s.hists is not None]
    if hv:
        v = [f for f in (s.floats_only() for s in v) if any(f.mask)]
    groups = {}
    order = []
    for s in ev.each(v):
        le = None
        for nm, val in s.labels:
            if nm == "le":
                le = val
        if le is None:
            le = ""
        try:
            ub = parse_go_float(le)
        except ValueError:
            ev.warn("bucket label \"le\" is missing or has a malformed value of %s for "
                    "metric name %s" % (A.go_quote(le), A.go_quote(get_label(s.labels, NAME))),
                    node_args[1])
            continue
        key = tuple(p for p in s.labels if p[0] != "le")
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append((ub, s))
    for q in ([] if fraction else set(qs)):
        if math.isnan(q) or q < 0 or q > 1:
            ev.warn("quantile value should be between 0 and 1, got %s" % fmt_g(q),
                    node_args[0])
            break
    out = []
    # A native histogram and classic buckets of the same labels at one step: neither counts.
    conflict = {}
    for s in hv:
        members = groups.get(s.labels)
        if members is None:
            continue
        for k in range(n):
            if s.mask[k] and s.hists[k] is not None and any(m.mask[k] for _, m in members):
                ev.warn("vector contains a mix of classic and native histograms for metric "
                        "name %s" % A.go_quote(get_label(s.labels, NAME)), node_args[1])
                conflict.setdefault(s.labels, bytearray(n))[k] = 1
    if conflict:
        hv = [s if s.labels not in conflict else Series(
            s.labels, s.vals, bytearray(a & (1 - b) for a, b in zip(s.mask, conflict[s.labels])),
            s.drop_name, None, s.hists) for s in hv]
    native = HC.native_quantiles(ev, hv, None if fraction else qs, lows if fraction else None,
                                 highs if fraction else None, node_args[1], fraction)
    for key in order:
        members = groups[key]
        vals = zeros(n)
        mask = bytearray(n)
        cmask = conflict.get(key)
        for k in range(n):
            buckets = [(ub, s.vals[k]) for ub, s in members if s.mask[k]]
            if not buckets or (cmask is not None and cmask[k]):
                continue
            if fraction:
                r, forced = bucket_fraction(lows[k], highs[k], buckets), False
            else:
                r, forced, _ = bucket_quantile(qs[k], buckets)
            if forced:
                ev.info("input to histogram_quantile needed to be fixed for monotonicity "
                        "(see https://prometheus.io/docs/prometheus/latest/querying/"
                        "functions/#histogram_quantile) for metric name %s"
                        % A.go_quote(get_label(members[0][1].labels, NAME)), node_args[1])
            vals[k] = r
            mask[k] = 1
        if any(mask):
            out.append(Series(key, vals, mask, True))
    return native + out

# -- aggregation ---------------------------------------------------------------------------



def call_histogram_quantile(ev, node, times):
    return _histogram_quantile(ev, node, times)


def call_histogram_fraction(ev, node, times):
    return _histogram_quantile(ev, node, times, fraction=True)


FUNCTION_CALLS = {
    "absent": call_absent,
    "absent_over_time": call_absent_over_time,
    "clamp": call_clamp,
    "clamp_max": call_clamp,
    "clamp_min": call_clamp,
    "end": _constant(lambda ev: ev.end / 1000.0),
    "histogram_avg": HC.HISTOGRAM_ONLY["histogram_avg"],
    "histogram_count": HC.HISTOGRAM_ONLY["histogram_count"],
    "histogram_fraction": call_histogram_fraction,
    "histogram_quantile": call_histogram_quantile,
    "histogram_quantiles": call_histogram_quantiles,
    "histogram_stddev": HC.HISTOGRAM_ONLY["histogram_stddev"],
    "histogram_stdvar": HC.HISTOGRAM_ONLY["histogram_stdvar"],
    "histogram_sum": HC.HISTOGRAM_ONLY["histogram_sum"],
    "info": call_info,
    "label_join": call_label_join,
    "label_replace": call_label_replace,
    "max_of": _min_max_of(_go_max),
    "min_of": _min_max_of(_go_min),
    "pi": _constant(lambda ev: math.pi),
    "range": _constant(lambda ev: (ev.end - ev.start) / 1000.0),
    "round": call_round,
    "scalar": call_scalar,
    "sort": call_sort,
    "sort_by_label": call_sort,
    "sort_by_label_desc": call_sort,
    "sort_desc": call_sort,
    "start": _constant(lambda ev: ev.start / 1000.0),
    "start_timestamp": call_start_timestamp,
    "step": _constant(lambda ev: ev.step / 1000.0),
    "time": call_time,
    "timestamp": call_timestamp,
    "vector": call_vector,
}
FUNCTION_CALLS.update((name, _elementwise(f)) for name, f in _SIMPLE.items())
FUNCTION_CALLS.update((name, _date_part(f)) for name, f in _DATE.items())
FUNCTION_CALLS.update((name, call_range_func) for name in K.RANGE_FUNCS)
