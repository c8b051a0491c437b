"""PromQL syntax tree: node classes, value types and the printer.

The parser (`urdar.promql.parser`) builds these nodes; the evaluator walks them. Every node
knows its result type (`type()`), its byte-free character range in the query (`pos_range()`,
start inclusive, end exclusive, in characters of the query string) and prints itself back as
PromQL the way Prometheus' `String()` does (`str(node)`), which the promqltest runner needs to
re-print @-pinned variants. Times are int64 milliseconds; durations that stay symbolic
(`step()`, `range()`, arithmetic in brackets) are `DurationExpr` trees evaluated at query time.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import List, Optional, Tuple, Union

from urdar.gostrconv import quote

from urdar.engine.matchers import compile_regex

# Value types, spelled as Prometheus' parser.ValueType.
NONE = "none"
SCALAR = "scalar"
VECTOR = "vector"
MATRIX = "matrix"
STRING = "string"


def documented_type(t: str) -> str:
    """The user-facing name of a value type, as used in error messages."""
    if t == VECTOR:
        return "instant vector"
    if t == MATRIX:
        return "range vector"
    return t


# Vector matching cardinalities.
CARD_ONE_TO_ONE = "one-to-one"
CARD_MANY_TO_ONE = "many-to-one"
CARD_ONE_TO_MANY = "one-to-many"
CARD_MANY_TO_MANY = "many-to-many"

COMPARISON_OPS = frozenset(("==", "!=", "<", "<=", ">", ">="))
# The operators whose result drops the metric name (Prometheus' changesMetricSchema).
SCHEMA_CHANGING_OPS = frozenset(("+", "-", "*", "/", "^", "%", "atan2"))
SET_OPS = frozenset(("and", "or", "unless"))
BINARY_OPS = frozenset(("+", "-", "*", "/", "%", "^", "atan2", "==", "!=", "<", "<=",
                        ">", ">=", "and", "or", "unless"))

AGGREGATORS = ("sum", "avg", "count", "min", "max", "group", "stddev", "stdvar", "topk",
               "bottomk", "count_values", "quantile", "limitk", "limit_ratio")
AGGREGATORS_WITH_PARAM = frozenset(("topk", "bottomk", "count_values", "quantile", "limitk",
                                    "limit_ratio"))
EXPERIMENTAL_AGGREGATORS = frozenset(("limitk", "limit_ratio"))

def matcher_matches(m, s: str) -> bool:
    """`m.matches(s)` for our Matcher or any (kind, name, value)-shaped object; regexes go
    through the engine's one RE2 translation."""
    fn = getattr(m, "matches", None)
    if fn is not None:
        return fn(s)
    kind, value = m.kind, m.value
    if kind == "=":
        return s == value
    if kind == "!=":
        return s != value
    hit = compile_regex(value).matches(s)
    return hit if kind == "=~" else not hit


# ---------------------------------------------------------------------------------------------
# Go-compatible text helpers (strconv.Quote, model.Duration.String, label-name validity).

_LEGACY_LABEL_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
_LEGACY_METRIC_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")


def is_legacy_label_name(s: str) -> bool:
    return _LEGACY_LABEL_RE.match(s) is not None


def is_legacy_metric_name(s: str) -> bool:
    return _LEGACY_METRIC_RE.match(s) is not None


def is_valid_utf8(s: str) -> bool:
    """False when `s` carries undecodable bytes (surrogate-escaped by the string unquoter)."""
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


# strconv.Quote, under the name promql's modules use.
go_quote = quote


def format_duration(ms: int) -> str:
    """model.Duration.String(): 1h30m, 90d, 0s; y and w only when they divide exactly."""
    if ms == 0:
        return "0s"
    r = []
    for unit, mult, exact in (("y", 31536000000, True), ("w", 604800000, True),
                              ("d", 86400000, False), ("h", 3600000, False),
                              ("m", 60000, False), ("s", 1000, False), ("ms", 1, False)):
        if exact and ms % mult != 0:
            continue
        v = ms // mult if ms > 0 else 0
        if v > 0:
            r.append("%d%s" % (v, unit))
            ms -= v * mult
    return "".join(r)


def format_go_float(v: float) -> str:
    """strconv.FormatFloat(v, 'f', -1, 64): shortest digits, never an exponent."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    r = repr(float(v))
    if "e" not in r and "E" not in r:
        if r.endswith(".0"):
            r = r[:-2]
        return r
    # Expand the exponent form produced by repr into plain decimal digits.
    mant, exp_s = r.split("e")
    exp = int(exp_s)
    neg = mant.startswith("-")
    if neg:
        mant = mant[1:]
    if "." in mant:
        ip, fp = mant.split(".")
    else:
        ip, fp = mant, ""
    digits = ip + fp
    point = len(ip) + exp
    if point <= 0:
        s = "0." + "0" * (-point) + digits
    elif point >= len(digits):
        s = digits + "0" * (point - len(digits))
    else:
        s = digits[:point] + "." + digits[point:]
    s = s.rstrip("0").rstrip(".") if "." in s else s
    return ("-" if neg else "") + s


def format_go_v(v: float) -> str:
    """fmt's %v for a float64 (used by fill() printing): %g with shortest digits."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if v == int(v) and abs(v) < 1e21:
        return "%d" % int(v)
    r = repr(float(v))
    if "e" in r:
        mant, exp = r.split("e")
        e = int(exp)
        if -4 <= e < 21:
            return format_go_float(v)
        return "%se%s%02d" % (mant, "-" if e < 0 else "+", abs(e))
    return r


def _matcher_str(m) -> str:
    name = m.name if is_legacy_label_name(m.name) else go_quote(m.name)
    return "%s%s%s" % (name, m.kind, go_quote(m.value))


# ---------------------------------------------------------------------------------------------
# Nodes.

class Node:
    """Base of every expression node."""

    def type(self) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def pos_range(self) -> Tuple[int, int]:  # pragma: no cover - overridden
        raise NotImplementedError

    def children(self) -> list:
        return []

    def __str__(self) -> str:  # pragma: no cover - overridden
        raise NotImplementedError


@dataclass(eq=False)
class NumberLiteral(Node):
    val: float
    pos: Tuple[int, int] = (0, 0)
    duration: bool = False  # written as a duration literal (prints as one)

    def type(self):
        return SCALAR

    def pos_range(self):
        return self.pos

    def __str__(self):
        if self.duration:
            if self.val < 0:
                return "-" + format_duration(_seconds_to_ms(-self.val))
            return format_duration(_seconds_to_ms(self.val))
        return format_go_float(self.val)


@dataclass(eq=False)
class StringLiteral(Node):
    val: str
    pos: Tuple[int, int] = (0, 0)

    def type(self):
        return STRING

    def pos_range(self):
        return self.pos

    def __str__(self):
        return go_quote(self.val)


@dataclass(eq=False)
class DurationExpr(Node):
    """Arithmetic on durations inside [..] or after offset. Operands are NumberLiteral
    (seconds) or DurationExpr. op: + - * / % ^, "step", "range", "min_of", "max_of";
    lhs None with op +/- is unary."""
    op: str
    lhs: Optional[Node] = None
    rhs: Optional[Node] = None
    wrapped: bool = False
    start_pos: int = 0
    end_pos: int = 0

    def type(self):
        return SCALAR

    def pos_range(self):
        if self.lhs is None and self.rhs is None:
            return (self.start_pos, self.end_pos)
        if self.rhs is None:
            return (self.start_pos, self.lhs.pos_range()[1])
        if self.lhs is None:
            return (self.start_pos, self.rhs.pos_range()[1])
        return (self.lhs.pos_range()[0], self.rhs.pos_range()[1])

    def children(self):
        return [c for c in (self.lhs, self.rhs) if c is not None]

    def __str__(self):
        if self.op == "step":
            s = "step()"
        elif self.op == "range":
            s = "range()"
        elif self.op in ("min_of", "max_of"):
            s = "%s(%s, %s)" % (self.op, self.lhs, self.rhs)
        elif self.lhs is None:
            s = ("-" if self.op == "-" else "") + str(self.rhs)
        else:
            s = "%s %s %s" % (self.lhs, self.op, self.rhs)
        return "(" + s + ")" if self.wrapped else s


def _seconds_to_ms(sec: float) -> int:
    """Seconds (float) -> ms, via Go's round-to-nanoseconds then truncation to ms."""
    ns = int(round_half_away(sec * 1e9))
    return int(ns / 1_000_000) if ns >= 0 else -int(-ns // 1_000_000)


def round_half_away(x: float) -> float:
    """Go's math.Round (half away from zero)."""
    if math.isnan(x) or math.isinf(x):
        return x
    return math.floor(x + 0.5) if x >= 0 else -math.floor(-x + 0.5)


def _at_str(timestamp_ms, start_or_end) -> str:
    if timestamp_ms is not None:
        return " @ %.3f" % (timestamp_ms / 1000.0)
    if start_or_end == "start":
        return " @ start()"
    if start_or_end == "end":
        return " @ end()"
    return ""


def _offset_str(offset_ms, offset_expr) -> str:
    if offset_expr is not None:
        return " offset %s" % (offset_expr,)
    if offset_ms > 0:
        return " offset " + format_duration(offset_ms)
    if offset_ms < 0:
        return " offset -" + format_duration(-offset_ms)
    return ""


@dataclass(eq=False)
class VectorSelector(Node):
    name: str
    matchers: list
    offset_ms: int = 0
    offset_expr: Optional[DurationExpr] = None
    timestamp_ms: Optional[int] = None
    start_or_end: Optional[str] = None  # "start" / "end" for @ start() / @ end()
    anchored: bool = False
    smoothed: bool = False
    bypass_empty_matcher_check: bool = False
    pos: Tuple[int, int] = (0, 0)

    def type(self):
        return VECTOR

    def pos_range(self):
        return self.pos

    def _base_str(self):
        parts = []
        for m in self.matchers:
            if (m.name == "__name__" and m.kind == "=" and m.value == self.name
                    and m.value != ""):
                continue
            parts.append(_matcher_str(m))
        name = self.name
        if name and not is_legacy_metric_name(name):
            # A quoted UTF-8 name has to move inside the braces to print back validly.
            parts.append(go_quote(name))
            name = ""
        s = name
        if parts or not name:
            s += "{" + ",".join(sorted(parts)) + "}"
        return s

    def __str__(self):
        s = self._base_str() + _at_str(self.timestamp_ms, self.start_or_end)
        if self.anchored:
            s += " anchored"
        elif self.smoothed:
            s += " smoothed"
        return s + _offset_str(self.offset_ms, self.offset_expr)


@dataclass(eq=False)
class MatrixSelector(Node):
    vector_selector: "VectorSelector"
    range_ms: int = 0
    range_expr: Optional[DurationExpr] = None
    end_pos: int = 0

    def type(self):
        return MATRIX

    def pos_range(self):
        return (self.vector_selector.pos_range()[0], self.end_pos)

    def children(self):
        return [self.vector_selector]

    def __str__(self):
        vs = self.vector_selector
        rng = str(self.range_expr) if self.range_expr is not None else format_duration(self.range_ms)
        if not isinstance(vs, VectorSelector):
            return "%s[%s]" % (vs, rng)
        ext = " anchored" if vs.anchored else (" smoothed" if vs.smoothed else "")
        return "%s[%s]%s%s%s" % (vs._base_str(), rng, ext,
                                 _at_str(vs.timestamp_ms, vs.start_or_end),
                                 _offset_str(vs.offset_ms, vs.offset_expr))


@dataclass(eq=False)
class SubqueryExpr(Node):
    expr: Node
    range_ms: int = 0
    range_expr: Optional[DurationExpr] = None
    step_ms: int = 0  # 0: the default evaluation interval
    step_expr: Optional[DurationExpr] = None
    offset_ms: int = 0
    offset_expr: Optional[DurationExpr] = None
    timestamp_ms: Optional[int] = None
    start_or_end: Optional[str] = None
    end_pos: int = 0

    def type(self):
        return MATRIX

    def pos_range(self):
        return (self.expr.pos_range()[0], self.end_pos)

    def children(self):
        return [self.expr]

    def suffix(self):
        step = ""
        if self.step_ms != 0:
            step = format_duration(self.step_ms)
        elif self.step_expr is not None:
            step = str(self.step_expr)
        rng = str(self.range_expr) if self.range_expr is not None else format_duration(self.range_ms)
        return "[%s:%s]%s%s" % (rng, step, _at_str(self.timestamp_ms, self.start_or_end),
                                _offset_str(self.offset_ms, self.offset_expr))

    def __str__(self):
        return "%s%s" % (self.expr, self.suffix())


@dataclass(frozen=True)
class Function:
    """A PromQL function signature. variadic: 0 fixed, >0 up to that many extra args of the
    last type, -1 unlimited."""
    name: str
    arg_types: Tuple[str, ...]
    return_type: str
    variadic: int = 0
    experimental: bool = False


@dataclass(eq=False)
class Call(Node):
    func: Function
    args: List[Node]
    pos: Tuple[int, int] = (0, 0)

    def type(self):
        return self.func.return_type

    def pos_range(self):
        return self.pos

    def children(self):
        return list(self.args)

    def __str__(self):
        return "%s(%s)" % (self.func.name, ", ".join(str(a) for a in self.args))


def _labels_str(names) -> str:
    return ", ".join(n if is_legacy_label_name(n) else go_quote(n) for n in names)


@dataclass(eq=False)
class AggregateExpr(Node):
    op: str
    expr: Optional[Node]
    param: Optional[Node] = None
    grouping: List[str] = field(default_factory=list)
    without: bool = False
    pos: Tuple[int, int] = (0, 0)

    def type(self):
        return VECTOR

    def pos_range(self):
        return self.pos

    def children(self):
        return [c for c in (self.param, self.expr) if c is not None]

    def op_str(self):
        s = self.op
        if self.without:
            s += " without (%s) " % _labels_str(self.grouping)
        elif self.grouping:
            s += " by (%s) " % _labels_str(self.grouping)
        return s

    def __str__(self):
        s = self.op_str() + "("
        if self.op in AGGREGATORS_WITH_PARAM:
            s += str(self.param) + ", "
        return s + str(self.expr) + ")"


@dataclass(eq=False)
class VectorMatching:
    card: str = CARD_ONE_TO_ONE
    matching_labels: List[str] = field(default_factory=list)
    on: bool = False
    include: List[str] = field(default_factory=list)
    fill_lhs: Optional[float] = None  # fill_left / fill value for missing LHS series
    fill_rhs: Optional[float] = None


@dataclass(eq=False)
class BinaryExpr(Node):
    op: str
    lhs: Node
    rhs: Node
    matching: Optional[VectorMatching] = None  # None unless both sides are vectors
    return_bool: bool = False

    # Chains such as 1+1+...+1 or a or b or ... nest to the left one level per term: type(),
    # pos_range() and str() walk that left spine in a loop so 5,000 terms do not recurse.

    def left_spine(self):
        """[self, self.lhs, self.lhs.lhs, ...] while they are BinaryExprs, outermost first."""
        spine = [self]
        while isinstance(spine[-1].lhs, BinaryExpr):
            spine.append(spine[-1].lhs)
        return spine

    def type(self):
        spine = self.left_spine()
        if spine[-1].lhs.type() != SCALAR:
            return VECTOR
        return SCALAR if all(b.rhs.type() == SCALAR for b in spine) else VECTOR

    def pos_range(self):
        return (self.left_spine()[-1].lhs.pos_range()[0], self.rhs.pos_range()[1])

    def children(self):
        return [self.lhs, self.rhs]

    def matching_str(self):
        vm = self.matching
        if vm is None:
            return ""
        s = ""
        if vm.matching_labels or vm.on or vm.card in (CARD_MANY_TO_ONE, CARD_ONE_TO_MANY):
            s += " %s (%s)" % ("on" if vm.on else "ignoring", _labels_str(vm.matching_labels))
        if vm.card in (CARD_MANY_TO_ONE, CARD_ONE_TO_MANY):
            s += " group_%s (%s)" % ("left" if vm.card == CARD_MANY_TO_ONE else "right",
                                     _labels_str(vm.include))
        if vm.fill_lhs is not None or vm.fill_rhs is not None:
            if (vm.fill_lhs is not None and vm.fill_rhs is not None
                    and vm.fill_lhs == vm.fill_rhs):
                s += " fill (%s)" % format_go_v(vm.fill_lhs)
            else:
                if vm.fill_lhs is not None:
                    s += " fill_left (%s)" % format_go_v(vm.fill_lhs)
                if vm.fill_rhs is not None:
                    s += " fill_right (%s)" % format_go_v(vm.fill_rhs)
        return s

    def __str__(self):
        spine = self.left_spine()
        parts = [str(spine[-1].lhs)]
        for b in reversed(spine):
            parts.append(" %s%s%s %s" % (b.op, " bool" if b.return_bool else "",
                                         b.matching_str(), b.rhs))
        return "".join(parts)


@dataclass(eq=False)
class UnaryExpr(Node):
    op: str  # "+" or "-"
    expr: Node
    start_pos: int = 0

    def type(self):
        return self.expr.type()

    def pos_range(self):
        return (self.start_pos, self.expr.pos_range()[1])

    def children(self):
        return [self.expr]

    def __str__(self):
        return "%s%s" % (self.op, self.expr)


@dataclass(eq=False)
class ParenExpr(Node):
    expr: Node
    pos: Tuple[int, int] = (0, 0)

    def type(self):
        return self.expr.type()

    def pos_range(self):
        return self.pos

    def children(self):
        return [self.expr]

    def __str__(self):
        return "(%s)" % (self.expr,)


Expr = Union[NumberLiteral, StringLiteral, VectorSelector, MatrixSelector, SubqueryExpr, Call,
             AggregateExpr, BinaryExpr, UnaryExpr, ParenExpr, DurationExpr]


def walk(node):
    """Yield `node` and every descendant, parents before children."""
    stack = [node]
    while stack:
        n = stack.pop()
        if n is None:
            continue
        yield n
        stack.extend(reversed(n.children()))


def position_str(query: str, pos: int) -> str:
    """line:col of a character offset, columns counted in UTF-8 bytes as Prometheus does."""
    if query == "":
        return "unknown position"
    if pos < 0 or pos > len(query):
        return "invalid position"
    head = query[:pos]
    line = head.count("\n") + 1
    last = head.rfind("\n")
    col = len(head[last + 1:].encode("utf-8", "surrogateescape")) + 1
    return "%d:%d" % (line, col)
