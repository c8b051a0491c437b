"""PromQL value types and the label helpers every evaluation module shares.

The evaluator (promql/evaluator.py) works on whole step grids: a `Series` is one float64 array
over the query's steps plus a presence mask, a `Scalar` one float64 array, a `MatrixValue` the
raw samples of a range vector with each step's window end; `Result` is what Engine hands to the
handlers. Errors raised during evaluation are `QueryError`s whose str() is Prometheus' text.
"""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass, field
from typing import List, Tuple

from urdar.promql import ast as A

Labels = Tuple[Tuple[str, str], ...]

DEFAULT_LOOKBACK_MS = 5 * 60 * 1000
NAME = "__name__"
METADATA = ("__name__", "__type__", "__unit__")


class QueryError(ValueError):
    """A query that failed during evaluation; str() is Prometheus' error text."""


class TooManySamples(QueryError):
    """The query would hold more samples in memory than its max-samples limit allows."""


class QueryTimeout(QueryError):
    """Evaluation ran past the query's deadline; the querier answers 503 timeout."""

    def __init__(self):
        super().__init__("query timed out in expression evaluation")


class QueryCanceled(QueryError):
    """The query's cancellation flag turned on (the client went away)."""

    def __init__(self):
        super().__init__("query was canceled in expression evaluation")

@dataclass
class Result:
    """What a query returns.

    type: "scalar", "string", "vector" or "matrix".
    scalar: value is a float, t the evaluation time (ms); string: value is a str.
    vector: value is a list of (labels, float) — labels a tuple of sorted (name, value)
      pairs — in engine order (sorted only by sort*/topk/bottomk); every sample's time is t.
    matrix: value is a list of (labels, array('q') ts ms, array('d') values), sorted by
      labels for range queries; a series with native histograms has two more items, the
      histogram samples' times (array('q')) and values ([FloatHistogram]).
    A vector sample's value is a FloatHistogram where it is a native histogram.
    warnings / infos: annotation strings as the Prometheus API renders them."""
    type: str
    value: object
    t: int = 0
    warnings: List[str] = field(default_factory=list)
    infos: List[str] = field(default_factory=list)


class JsonHistogram:
    """A native histogram known only as the API's JSON object text (a querier's answer read
    back by the scheduler); rendering writes the text as it is."""
    __slots__ = ("json",)

    def __init__(self, json: str) -> None:
        self.json = json

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JsonHistogram) and other.json == self.json

    __hash__ = None  # type: ignore[assignment]


# A label pair no real series has (names are UTF-8 without U+FFFF): the frontend's rendered
# matrix form carries a series' histogram points as a second series with this pair appended.
HISTOGRAMS_LABEL = ("\uffff", "histograms")


class Series:
    """One output series over the evaluation steps: vals[k] is meaningful iff mask[k].

    hists is None for a float series (the common case, which the kernels handle); else one
    entry per step, a FloatHistogram where step k holds a native histogram (vals[k] then 0)
    and None where it holds a float or nothing."""
    __slots__ = ("labels", "vals", "mask", "drop_name", "ts", "hists")

    def __init__(self, labels, vals, mask, drop_name=False, ts=None, hists=None):
        self.labels = labels
        self.vals = vals
        self.mask = mask
        self.drop_name = drop_name
        self.ts = ts  # sample timestamps (selectors only, for timestamp())
        self.hists = hists

    def floats_only(self) -> "Series":
        """The series without its histogram steps (what float-only functions see)."""
        if self.hists is None:
            return self
        mask = bytearray(self.mask)
        for k, h in enumerate(self.hists):
            if h is not None:
                mask[k] = 0
        return Series(self.labels, self.vals, mask, self.drop_name, self.ts)

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
    __slots__ = ("series", "ends", "range_ms", "node", "sts", "hists", "hsts")

    def __init__(self, series, ends, range_ms, node, sts=None, hists=None, hsts=None):
        self.series = series  # [(labels, ts, vals, drop_name)] stale markers removed
        self.ends = ends
        self.range_ms = range_ms
        self.node = node
        # Per series its samples' start timestamps (array('q'), 0 = unknown) or None; None
        # when no series has them (subqueries never do).
        self.sts = sts
        # Per series its histogram samples (array('q') times, [FloatHistogram]) or None; None
        # when no series has any.
        self.hists = hists
        # Per series the start timestamps of its histogram samples (array('q') aligned with
        # its hists' times, 0 = unknown) or None; None when no series has them.
        self.hsts = hsts



def zeros(n):
    return array("d", bytes(8 * n))


def full(n, v):
    return array("d", [v]) * n


def drop_meta(labels):
    return tuple(p for p in labels if p[0] not in METADATA)


def labels_str(labels) -> str:
    parts = []
    for n, v in labels:
        nm = n if A.is_legacy_label_name(n) else A.go_quote(n)
        parts.append("%s=%s" % (nm, A.go_quote(v)))
    return "{" + ", ".join(parts) + "}"


def get_label(labels, name):
    for n, v in labels:
        if n == name:
            return v
    return ""


def set_label(labels, name, value):
    d = dict(labels)
    if value == "":
        d.pop(name, None)
    else:
        d[name] = value
    return tuple(sorted(d.items()))

def unwrap(node):
    while isinstance(node, A.ParenExpr):
        node = node.expr
    return node


def valid_label_name(s: str) -> bool:
    return s != "" and A.is_valid_utf8(s)




def fmt_value(v: float) -> str:
    """strconv.FormatFloat(v, 'f', -1, 64) as count_values prints values."""
    return A.format_go_float(v)


def fmt_g(v: float) -> str:
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


def fmt_f(v: float) -> str:
    """Go's %f."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return "%f" % v


def openmetrics_float(v):
    """labels.FormatOpenMetricsFloat: Go %g shortest, with ".0" added to integers."""
    s = fmt_g(v)
    if s in ("NaN", "+Inf", "-Inf"):
        return s
    if "e" not in s and "." not in s:
        s += ".0"
    return s
