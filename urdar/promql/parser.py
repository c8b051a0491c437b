"""PromQL parser: query text -> type-checked syntax tree (`urdar.promql.ast`).

A precedence-climbing parser over `urdar.promql.lexer` tokens that accepts the Prometheus 3.x
grammar (promql/parser/generated_parser.y), including the experimental parts promqltest turns
on (duration expressions, `anchored`/`smoothed`, binop `fill*` modifiers, experimental
functions). Errors carry Prometheus' texts and positions: `ParseError` prints as
`1:5: parse error: unexpected <op:+>`; only the first error is shown, as in Prometheus.
Syntax errors stop parsing; semantic ones are collected and type checking runs only when
there was none, mirroring Prometheus' order of reporting.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import List, Optional, Tuple

from urdar.engine.matchers import Matcher
from urdar.promql import lexer as L
from urdar.promql.ast import (
    AGGREGATORS_WITH_PARAM, CARD_MANY_TO_MANY, CARD_MANY_TO_ONE, CARD_ONE_TO_MANY,
    CARD_ONE_TO_ONE, COMPARISON_OPS, EXPERIMENTAL_AGGREGATORS, NONE, SCALAR, SET_OPS,
    STRING, VECTOR, AggregateExpr, BinaryExpr, Call, DurationExpr, MatrixSelector,
    NumberLiteral, ParenExpr, StringLiteral, SubqueryExpr, UnaryExpr, VectorMatching,
    VectorSelector, documented_type, go_quote, is_valid_utf8, matcher_matches, position_str,
    round_half_away, walk,
)
from urdar.promql.functions import get_function


@dataclass
class Options:
    """Parser feature switches; the defaults match what promqltest enables."""
    enable_experimental_functions: bool = True
    experimental_duration_expr: bool = True
    enable_extended_range_selectors: bool = True
    enable_binop_fill_modifiers: bool = True


def _function_not_enabled(name):
    return "function %s is not enabled" % go_quote(name)


def _aggregator_not_enabled(op):
    return ("%s() is experimental and must be enabled with "
            "--enable-feature=promql-experimental-functions" % op)


def check_experimental(expr, query: str) -> None:
    """Raise the ParseError a parser without experimental functions would raise for `expr`
    (parsed with them): for callers that parse before they know the setting, such as the
    querier behind a handler (Mimir's -querier.promql-experimental-functions-enabled)."""
    for n in walk(expr):
        if isinstance(n, Call) and n.func.experimental:
            raise ParseError(query, [ParseErrorItem(n.pos_range(),
                                                    _function_not_enabled(n.func.name))])
        if isinstance(n, AggregateExpr) and n.op in EXPERIMENTAL_AGGREGATORS:
            raise ParseError(query, [ParseErrorItem(n.pos_range(),
                                                    _aggregator_not_enabled(n.op))])


@dataclass
class ParseErrorItem:
    pos_range: Tuple[int, int]
    msg: str


class ParseError(ValueError):
    """A query that does not parse or type-check; str() is Prometheus' error text."""

    def __init__(self, query: str, errors: List[ParseErrorItem]):
        self.query = query
        self.errors = errors
        first = errors[0]
        self.pos_range = first.pos_range
        self.msg = first.msg
        super().__init__("%s: parse error: %s" % (position_str(query, first.pos_range[0]),
                                                    first.msg))


class _Abort(Exception):
    """A syntax error was recorded; stop parsing."""


# Binary operator precedence (higher binds tighter); ^ is right-associative.
_PREC = {"or": 1, "and": 2, "unless": 2,
         "==": 3, "!=": 3, "<": 3, "<=": 3, ">": 3, ">=": 3, "</": 3, ">/": 3,
         "+": 4, "-": 4, "*": 5, "/": 5, "%": 5, "atan2": 5, "^": 6}
_POW_PREC = 6

# Tokens that may name a metric when they start an expression (metric_identifier).
_METRIC_NAME_KINDS = frozenset((
    L.IDENTIFIER, L.METRIC_IDENTIFIER, "avg", "bottomk", "by", "count", "count_values",
    "fill", "fill_left", "fill_right", "group", "and", "or", "unless", "max", "min", "offset",
    "quantile", "stddev", "stdvar", "sum", "topk", "without", "start", "end", "limitk",
    "limit_ratio", "step", "range", "anchored", "smoothed", "max_of", "min_of"))
# Tokens accepted as a label name in by/without/on/ignoring/group_x lists (maybe_label).
_LABEL_KINDS = _METRIC_NAME_KINDS | frozenset(("bool", "group_left", "group_right", "ignoring",
                                               "on", "atan2"))
_AGG_KINDS = frozenset(L.AGGREGATOR_WORDS)
_MATCH_OPS = {"=": "=", "!=": "!=", "=~": "=~", "!~": "!~"}

_DUR_UNITS = {"y": (1, 31536000000), "w": (2, 604800000), "d": (3, 86400000),
              "h": (4, 3600000), "m": (5, 60000), "s": (6, 1000), "ms": (7, 1)}
_MAX_INT64 = (1 << 63) - 1


def parse_duration_ms(s: str) -> int:
    """Prometheus duration (`1h30m`, `0`, units y w d h m s ms in order) -> milliseconds.
    Raises ValueError with Prometheus' message."""
    if s == "0":
        return 0
    if s == "":
        raise ValueError("empty duration string")
    orig, total_ns, last = s, 0, 0
    i, n = 0, len(s)
    while i < n:
        j = i
        while j < n and "0" <= s[j] <= "9":
            j += 1
        if j == i:
            raise ValueError("not a valid duration string: %s" % go_quote(orig))
        v = int(s[i:j])
        k = j
        while k < n and not ("0" <= s[k] <= "9"):
            k += 1
        if k == j:
            raise ValueError("not a valid duration string: %s" % go_quote(orig))
        unit = s[j:k]
        if unit not in _DUR_UNITS:
            raise ValueError("unknown unit %s in duration %s" % (go_quote(unit), go_quote(orig)))
        pos, mult = _DUR_UNITS[unit]
        if pos <= last:
            raise ValueError("not a valid duration string: %s" % go_quote(orig))
        last = pos
        mult_ns = mult * 1_000_000
        if v > (1 << 63) // mult_ns:
            raise ValueError("duration out of range")
        total_ns += v * mult_ns
        if total_ns > _MAX_INT64:
            raise ValueError("duration out of range")
        i = k
    return total_ns // 1_000_000


def _seconds_to_ms(sec: float) -> int:
    ns = int(round_half_away(sec * 1e9))
    return ns // 1_000_000 if ns >= 0 else -((-ns) // 1_000_000)


def _duration_out_of_range(sec: float) -> bool:
    # Written as "not inside" so NaN, which has no duration, is out of range too.
    return not (-(1 << 63) / 1e9 <= sec <= (1 << 63) / 1e9)


_INT_RE = re.compile(r"[0-9][0-9_]*\Z|0[xX]_?[0-9a-fA-F][0-9a-fA-F_]*\Z|0[oO]_?[0-7_]+\Z"
                     r"|0[bB]_?[01_]+\Z")


def parse_number(s: str) -> float:
    """A PromQL number literal -> float (Go ParseInt base 0, then ParseFloat).
    Raises ValueError with Prometheus' message."""
    v: float  # an int from ParseInt, else a float
    if _INT_RE.match(s) and "__" not in s and not s.endswith("_"):
        try:
            if len(s) > 1 and s[0] == "0" and s[1] in "0123456789_":
                v = int(s.replace("_", ""), 8)  # Go: a leading 0 means octal
            else:
                v = int(s, 0)
            if -(1 << 63) <= v <= _MAX_INT64:
                return float(v)
        except ValueError:
            pass
    low = s.lower()
    try:
        if low.startswith(("0x", "-0x", "+0x")):
            v = float.fromhex(s.replace("_", ""))
        else:
            v = float(s)
    except (ValueError, OverflowError):
        raise ValueError("error parsing number: strconv.ParseFloat: parsing %s: invalid syntax"
                         % go_quote(s))
    if math.isinf(v) and "inf" not in low:
        raise ValueError("error parsing number: strconv.ParseFloat: parsing %s: value out of range"
                         % go_quote(s))
    return v


_SIMPLE_ESC = {"a": 7, "b": 8, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11, "\\": 92,
               "'": 39, '"': 34}


def unquote(s: str) -> str:
    """Unquote a PromQL string token ("..", '..' or `..`). \\x and octal escapes give raw
    bytes; bytes that are not UTF-8 come back surrogate-escaped."""
    if len(s) < 2 or s[0] != s[-1] or s[0] not in "\"'`":
        raise ValueError("invalid syntax")
    q, body = s[0], s[1:-1]
    if q == "`":
        if "`" in body:
            raise ValueError("invalid syntax")
        return body
    if "\n" in body:
        raise ValueError("invalid syntax")
    if "\\" not in body:
        return body
    out = bytearray()
    i, n = 0, len(body)
    while i < n:
        c = body[i]
        if c != "\\":
            out += c.encode("utf-8", "surrogateescape")
            i += 1
            continue
        if i + 1 >= n:
            raise ValueError("invalid syntax")
        e = body[i + 1]
        i += 2
        if e in _SIMPLE_ESC:
            if e in "'\"" and e != q:
                raise ValueError("invalid syntax")
            out.append(_SIMPLE_ESC[e])
        elif e in "xuU":
            cnt = {"x": 2, "u": 4, "U": 8}[e]
            hx = body[i:i + cnt]
            if len(hx) < cnt or not all(ch in "0123456789abcdefABCDEF" for ch in hx):
                raise ValueError("invalid syntax")
            v = int(hx, 16)
            i += cnt
            if e == "x":
                out.append(v)
            else:
                if v > 0x10FFFF or 0xD800 <= v < 0xE000:
                    raise ValueError("invalid syntax")
                out += chr(v).encode("utf-8")
        elif e in "01234567":
            oc = body[i - 1:i + 2]
            if len(oc) < 3 or not all(ch in "01234567" for ch in oc):
                raise ValueError("invalid syntax")
            v = int(oc, 8)
            if v > 255:
                raise ValueError("invalid syntax")
            out.append(v)
            i += 2
        else:
            raise ValueError("invalid syntax")
    return out.decode("utf-8", "surrogateescape")


def _go_f(v: float) -> str:
    """Go's %f for the @ out-of-bounds message."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return "%f" % v


class Parser:
    def __init__(self, text: str, options: Optional[Options] = None):
        self.text = text
        self.opts = options or Options()
        self.lex = L.Lexer(text)
        self.errors: List[ParseErrorItem] = []
        self.tok: L.Token = L.Token(L.EOF, 0, "")
        self.prev: Optional[L.Token] = None
        self.agg_depth = 0  # > 0 while inside an aggregation's argument list

    # -- token plumbing ------------------------------------------------------------------------
    def _read(self) -> L.Token:
        t = self.lex.next_token()
        if t.kind == L.ERROR:
            self.errors.append(ParseErrorItem((t.pos, len(self.text)), t.val))
            raise _Abort()
        return t

    def _advance(self) -> L.Token:
        t = self.tok
        self.prev = t
        if t.kind != L.EOF:
            self.tok = self._read()
        return t

    def _peek_kind(self) -> str:
        """Kind of the token after the current one (lexes it now; errors surface later)."""
        saved = self.lex.__dict__.copy()  # all lexer state is plain scalars
        t = self.lex.next_token()
        self.lex.__dict__.update(saved)
        return t.kind

    def err(self, pos_range, msg):
        self.errors.append(ParseErrorItem(tuple(pos_range), msg))

    def unexpected(self, context: str = "", expected: str = ""):
        t = self.tok
        msg = "unexpected " + t.desc()
        if context:
            msg += " in " + context
        if expected:
            msg += ", expected " + expected
        self.errors.append(ParseErrorItem((t.pos, t.end), msg))
        raise _Abort()

    def generic_unexpected(self):
        if self.agg_depth > 0:
            self.unexpected("aggregation")
        self.unexpected()

    def expect(self, kind: str) -> L.Token:
        if self.tok.kind != kind:
            self.generic_unexpected()
        return self._advance()

    # -- entry ---------------------------------------------------------------------------------
    def parse(self):
        self.tok = self._read()
        if self.tok.kind == L.EOF:
            self.err((0, 0), "no expression found in input")
            raise _Abort()
        e = self.parse_expr(0)
        if self.tok.kind != L.EOF:
            self.generic_unexpected()
        return e

    # -- expressions ---------------------------------------------------------------------------
    def parse_expr(self, min_prec: int):
        lhs = self.parse_unary()
        while True:
            k = self.tok.kind
            prec = _PREC.get(k)
            if prec is None or prec < min_prec:
                return lhs
            op_tok = self._advance()
            vm, return_bool = self.parse_bin_modifiers()
            rhs = self.parse_expr(prec if k == "^" else prec + 1)
            lhs = self.new_binary(lhs, op_tok, vm, return_bool, rhs)

    def new_binary(self, lhs, op_tok, vm, return_bool, rhs):
        b = BinaryExpr(op=op_tok.kind, lhs=lhs, rhs=rhs, matching=vm, return_bool=return_bool)
        if not self.opts.enable_binop_fill_modifiers and (vm.fill_lhs is not None
                                                          or vm.fill_rhs is not None):
            self.err(b.pos_range(), "binop fill modifiers are experimental and not enabled")
        return b

    def parse_unary(self):
        if self.tok.kind in ("+", "-"):
            op_tok = self._advance()
            operand = self.parse_expr(_POW_PREC)
            if isinstance(operand, NumberLiteral):
                if op_tok.kind == "-":
                    operand.val = -operand.val
                operand.pos = (op_tok.pos, operand.pos[1])
                return operand
            return UnaryExpr(op=op_tok.kind, expr=operand, start_pos=op_tok.pos)
        return self.parse_postfix(self.parse_primary())

    def parse_primary(self):
        t = self.tok
        k = t.kind
        if k in (L.NUMBER, L.DURATION):
            return self.number_literal(self._advance())
        if k == L.STRING:
            self._advance()
            return StringLiteral(self.unquote_tok(t), (t.pos, t.end))
        if k == L.LEFT_PAREN:
            self._advance()
            inner = self.parse_expr(0)
            close = self.expect(L.RIGHT_PAREN)
            return ParenExpr(inner, (t.pos, close.end))
        if k == L.LEFT_BRACE:
            return self.parse_selector(None)
        if k in _AGG_KINDS:
            nk = self._peek_kind()
            if nk in (L.LEFT_PAREN, "by", "without"):
                return self.parse_aggregate()
            return self.parse_selector(self._advance())
        if k in (L.IDENTIFIER, "start", "end", "step", "range", "max_of", "min_of"):
            if self._peek_kind() == L.LEFT_PAREN:
                return self.parse_call()
            return self.parse_selector(self._advance())
        if k in _METRIC_NAME_KINDS:
            return self.parse_selector(self._advance())
        self.generic_unexpected()

    def number_literal(self, t):
        if t.kind == L.DURATION:
            try:
                ms = parse_duration_ms(t.val)
            except ValueError as e:
                self.err((t.pos, t.end), str(e))
                ms = 0
            return NumberLiteral(ms / 1000.0, (t.pos, t.end), duration=True)
        try:
            v = parse_number(t.val)
        except ValueError as e:
            self.err((t.pos, t.end), str(e))
            v = 0.0
        return NumberLiteral(v, (t.pos, t.end))

    def unquote_tok(self, t) -> str:
        try:
            return unquote(t.val)
        except ValueError as e:
            self.err((t.pos, t.end), "error unquoting string %s: %s" % (go_quote(t.val), e))
            return ""

    # -- calls and aggregations ------------------------------------------------------------------
    def parse_call_body(self):
        """`( args )` -> (args, closing token)."""
        self.expect(L.LEFT_PAREN)
        args = []
        if self.tok.kind == L.RIGHT_PAREN:
            return args, self._advance()
        while True:
            args.append(self.parse_expr(0))
            if self.tok.kind == L.COMMA:
                comma = self._advance()
                if self.tok.kind == L.RIGHT_PAREN:
                    self.err((comma.pos, comma.end),
                             "trailing commas not allowed in function call args")
                    return args, self._advance()
                continue
            if self.tok.kind == L.RIGHT_PAREN:
                return args, self._advance()
            self.generic_unexpected()

    def parse_call(self):
        name = self._advance()
        args, close = self.parse_call_body()
        fn = get_function(name.val)
        if fn is None:
            self.err((name.pos, name.end), "unknown function with name %s" % go_quote(name.val))
        elif fn.experimental and not self.opts.enable_experimental_functions:
            self.err((name.pos, name.end), _function_not_enabled(name.val))
        return Call(fn, args, (name.pos, close.end))

    def parse_aggregate(self):
        op_tok = self._advance()
        op = op_tok.kind
        grouping, without = [], False
        self.agg_depth += 1
        try:
            if self.tok.kind in ("by", "without"):
                without = self._advance().kind == "without"
                grouping = self.parse_grouping_labels()
                args, close = self.parse_call_body()
            else:
                if self.tok.kind != L.LEFT_PAREN:
                    self.unexpected("aggregation")
                args, close = self.parse_call_body()
                if self.tok.kind in ("by", "without"):
                    without = self._advance().kind == "without"
                    grouping = self.parse_grouping_labels()
                    close = self.prev
        finally:
            self.agg_depth -= 1
        agg = AggregateExpr(op=op, expr=None, grouping=grouping, without=without,
                            pos=(op_tok.pos, close.end))
        if not args:
            self.err(agg.pos, "no arguments for aggregate expression provided")
            return agg
        want = 1
        if op in AGGREGATORS_WITH_PARAM:
            if op in EXPERIMENTAL_AGGREGATORS and not self.opts.enable_experimental_functions:
                self.err(agg.pos, _aggregator_not_enabled(op))
                return agg
            want = 2
            agg.param = args[0]
        if len(args) != want:
            self.err(agg.pos, "wrong number of arguments for aggregate expression provided, "
                              "expected %d, got %d" % (want, len(args)))
            return agg
        agg.expr = args[want - 1]
        return agg

    def parse_grouping_labels(self) -> List[str]:
        if self.tok.kind != L.LEFT_PAREN:
            self.unexpected("grouping opts", '"("')
        self._advance()
        labels: List[str] = []
        if self.tok.kind == L.RIGHT_PAREN:
            self._advance()
            return labels
        while True:
            t = self.tok
            if t.kind in _LABEL_KINDS:
                self._advance()
                name = t.val
                if name == "" or not is_valid_utf8(name):
                    self.err((t.pos, t.end), "invalid label name for grouping: %s" % go_quote(name))
            elif t.kind == L.STRING:
                self._advance()
                name = self.unquote_tok(t)
                if name == "" or not is_valid_utf8(name):
                    self.err((t.pos, t.end), "invalid label name for grouping: %s" % go_quote(name))
            else:
                self.unexpected("grouping opts", "label")
            labels.append(name)
            if self.tok.kind == L.COMMA:
                self._advance()
                if self.tok.kind == L.RIGHT_PAREN:
                    self._advance()
                    return labels
                continue
            if self.tok.kind == L.RIGHT_PAREN:
                self._advance()
                return labels
            self.unexpected("grouping opts", '"," or ")"')

    # -- binary operator modifiers --------------------------------------------------------------
    def parse_bin_modifiers(self):
        vm = VectorMatching(card=CARD_ONE_TO_ONE)
        return_bool = False
        if self.tok.kind == "bool":
            self._advance()
            return_bool = True
        if self.tok.kind in ("on", "ignoring"):
            vm.on = self._advance().kind == "on"
            vm.matching_labels = self.parse_grouping_labels()
            if self.tok.kind in ("group_left", "group_right"):
                vm.card = (CARD_MANY_TO_ONE if self._advance().kind == "group_left"
                           else CARD_ONE_TO_MANY)
                if self.tok.kind == L.LEFT_PAREN:
                    vm.include = self.parse_grouping_labels()
        k = self.tok.kind
        if k == "fill":
            self._advance()
            v = self.parse_fill_value()
            vm.fill_lhs = vm.fill_rhs = v
        elif k in ("fill_left", "fill_right"):
            self._advance()
            v = self.parse_fill_value()
            if k == "fill_left":
                vm.fill_lhs = v
            else:
                vm.fill_rhs = v
            other = "fill_right" if k == "fill_left" else "fill_left"
            if self.tok.kind == other:
                self._advance()
                v2 = self.parse_fill_value()
                if other == "fill_left":
                    vm.fill_lhs = v2
                else:
                    vm.fill_rhs = v2
        return vm, return_bool

    def parse_fill_value(self) -> float:
        self.expect(L.LEFT_PAREN)
        sign = 1.0
        if self.tok.kind in ("+", "-"):
            sign = -1.0 if self._advance().kind == "-" else 1.0
        if self.tok.kind not in (L.NUMBER, L.DURATION):
            self.generic_unexpected()
        nl = self.number_literal(self._advance())
        self.expect(L.RIGHT_PAREN)
        return sign * nl.val

    # -- selectors -----------------------------------------------------------------------------
    def parse_selector(self, name_tok):
        name = name_tok.val if name_tok is not None else ""
        start = name_tok.pos if name_tok is not None else self.tok.pos
        end = name_tok.end if name_tok is not None else start
        matchers = []
        if self.tok.kind == L.LEFT_BRACE:
            matchers, end = self.parse_label_matchers()
        vs = VectorSelector(name=name, matchers=matchers, pos=(start, end))
        if name:
            vs.matchers.append(Matcher("=", "__name__", name))
        return vs

    def parse_label_matchers(self):
        self._advance()  # {
        matchers = []
        if self.tok.kind == L.RIGHT_BRACE:
            return matchers, self._advance().end
        while True:
            t = self.tok
            if t.kind == L.IDENTIFIER:
                self._advance()
                if self.tok.kind not in _MATCH_OPS:
                    self.unexpected("label matching", "label matching operator")
                op = self._advance().kind
                if self.tok.kind != L.STRING:
                    self.unexpected("label matching", "string")
                vt = self._advance()
                m = self.new_matcher(t, t.val, op, vt)
            elif t.kind == L.STRING:
                self._advance()
                lname = self.unquote_tok(t)
                if self.tok.kind in _MATCH_OPS:
                    op = self._advance().kind
                    if self.tok.kind != L.STRING:
                        self.unexpected("label matching", "string")
                    vt = self._advance()
                    m = self.new_matcher(t, lname, op, vt)
                else:
                    m = Matcher("=", "__name__", lname)
            else:
                self.unexpected("label matching", 'identifier or "}"')
            if m is not None:
                matchers.append(m)
            if self.tok.kind == L.COMMA:
                self._advance()
                if self.tok.kind == L.RIGHT_BRACE:
                    return matchers, self._advance().end
                continue
            if self.tok.kind == L.RIGHT_BRACE:
                return matchers, self._advance().end
            self.unexpected("label matching", '"," or "}"')

    def new_matcher(self, name_tok, name, op, value_tok):
        val = self.unquote_tok(value_tok)
        try:
            return Matcher(op, name, val)
        except Exception as e:  # a bad regular expression
            self.err((name_tok.pos, value_tok.end), _regex_error_text(val, e))
            return None

    # -- postfix modifiers ---------------------------------------------------------------------
    def parse_postfix(self, e):
        while True:
            k = self.tok.kind
            if k == L.LEFT_BRACKET:
                e = self.parse_range_or_subquery(e)
            elif k == "offset":
                e = self.parse_offset(e)
            elif k == L.AT:
                e = self.parse_at(e)
            elif k in ("anchored", "smoothed"):
                self._advance()
                self.set_extended(e, k)
            else:
                return e

    def parse_range_or_subquery(self, e):
        lb = self._advance()
        ctx = ("subquery or range selector", "number, duration, step(), or range()")
        if not self._starts_duration():
            self.unexpected(*ctx)
        rng = self.positive_duration(self.parse_duration_expr(0, ctx))
        if self.tok.kind == L.RIGHT_BRACKET:
            rb = self._advance()
            msg = None
            if not isinstance(e, VectorSelector):
                msg = "ranges only allowed for vector selectors"
            elif e.offset_ms != 0 or e.offset_expr is not None:
                msg = "no offset modifiers allowed before range"
            elif e.timestamp_ms is not None or e.start_or_end is not None:
                msg = "no @ modifiers allowed before range"
            if msg:
                self.err((lb.pos, rb.end), msg)
            ms = MatrixSelector(e, end_pos=rb.end)
            self._set_duration(ms, "range", rng)
            return ms
        if self.tok.kind != L.COLON:
            self.unexpected("subquery or range", '":" or "]"')
        self._advance()
        sq = SubqueryExpr(e)
        self._set_duration(sq, "range", rng)
        if self.tok.kind == L.RIGHT_BRACKET:
            sq.end_pos = self._advance().end
            return sq
        ctx2 = ("subquery selector", 'number, duration, step(), range(), or "]"')
        if not self._starts_duration():
            self.unexpected(*ctx2)
        step = self.positive_duration(self.parse_duration_expr(0, ctx2))
        if self.tok.kind != L.RIGHT_BRACKET:
            self.unexpected("subquery selector", '"]"')
        sq.end_pos = self._advance().end
        self._set_duration(sq, "step", step)
        return sq

    @staticmethod
    def _set_duration(node, attr, d):
        if isinstance(d, NumberLiteral):
            setattr(node, attr + "_ms", _seconds_to_ms(d.val))
        else:
            setattr(node, attr + "_expr", d)

    def positive_duration(self, d):
        if isinstance(d, NumberLiteral) and d.val <= 0:
            self.err(d.pos, "duration must be greater than 0")
            return NumberLiteral(0.0)
        return d

    def _starts_duration(self) -> bool:
        return self.tok.kind in (L.NUMBER, L.DURATION, "+", "-", L.LEFT_PAREN, "step", "range",
                                 "min_of", "max_of")

    # Duration expressions: numbers/durations in seconds, + - * / % ^, step(), range(),
    # min_of(a, b), max_of(a, b), parentheses. `ctx` names the enclosing error context.
    def parse_duration_expr(self, min_prec, ctx):
        lhs = self.parse_duration_unary(ctx)
        while True:
            k = self.tok.kind
            if k not in ("+", "-", "*", "/", "%", "^"):
                return lhs
            prec = _PREC[k]
            if prec < min_prec:
                return lhs
            op = self._advance()
            rhs = self.parse_duration_expr(prec if k == "^" else prec + 1, ctx)
            lhs = self.duration_binary(lhs, op, rhs)

    def duration_binary(self, lhs, op, rhs):
        self.experimental_duration(lhs)
        if op.kind in ("/", "%") and isinstance(rhs, NumberLiteral) and rhs.val == 0:
            self.err((op.pos, op.end), "division by zero" if op.kind == "/" else "modulo by zero")
            return NumberLiteral(0.0)
        return DurationExpr(op.kind, lhs, rhs)

    def experimental_duration(self, e):
        if not self.opts.experimental_duration_expr:
            self.err(e.pos_range(), "experimental duration expression is not enabled")

    def parse_duration_unary(self, ctx):
        if self.tok.kind in ("+", "-"):
            op = self._advance()
            operand = self.parse_duration_expr(_POW_PREC, ctx)
            return self.apply_unary_duration(op, operand)
        return self.parse_duration_primary(ctx)

    def apply_unary_duration(self, op, e, wrapped=False):
        if wrapped:
            e = self.wrap_paren_duration(e, *e.pos_range())
        if isinstance(e, DurationExpr):
            if op.kind == "-":
                return DurationExpr("-", None, e, start_pos=op.pos)
            return e
        if op.kind == "-":
            e.val = -e.val
        if _duration_out_of_range(e.val):
            self.err((op.pos, op.end), "duration out of range")
            return NumberLiteral(0.0)
        e.pos = (op.pos, e.pos[1])
        return e

    def wrap_paren_duration(self, e, start, end):
        if isinstance(e, DurationExpr):
            e.wrapped = True
            return e
        return DurationExpr("+", None, e, wrapped=True, start_pos=start, end_pos=end)

    def parse_duration_primary(self, ctx):
        t = self.tok
        k = t.kind
        if k in (L.NUMBER, L.DURATION):
            return self.checked_duration_literal(self._advance())
        if k in ("step", "range"):
            return self.parse_step_range(ctx)
        if k in ("min_of", "max_of"):
            return self.parse_min_max_of(ctx)
        if k == L.LEFT_PAREN:
            self._advance()
            inner = self.parse_duration_expr(0, ctx)
            if self.tok.kind != L.RIGHT_PAREN:
                self.unexpected(*ctx)
            close = self._advance()
            self.experimental_duration(inner)
            return self.wrap_paren_duration(inner, t.pos, close.end)
        self.unexpected(*ctx)

    def checked_duration_literal(self, t):
        nl = self.number_literal(t)
        if _duration_out_of_range(nl.val):
            self.err(nl.pos, "duration out of range")
            return NumberLiteral(0.0)
        return nl

    def parse_step_range(self, ctx):
        t = self._advance()
        if self.tok.kind != L.LEFT_PAREN:
            self.unexpected(*ctx)
        self._advance()
        if self.tok.kind != L.RIGHT_PAREN:
            self.unexpected(*ctx)
        close = self._advance()
        de = DurationExpr(t.kind, start_pos=t.pos, end_pos=close.end)
        self.experimental_duration(de)
        return de

    def parse_min_max_of(self, ctx):
        t = self._advance()
        if self.tok.kind != L.LEFT_PAREN:
            self.unexpected(*ctx)
        self._advance()
        a = self.parse_duration_expr(0, ctx)
        if self.tok.kind != L.COMMA:
            self.unexpected(*ctx)
        self._advance()
        b = self.parse_duration_expr(0, ctx)
        if self.tok.kind != L.RIGHT_PAREN:
            self.unexpected(*ctx)
        close = self._advance()
        de = DurationExpr(t.kind, a, b, start_pos=t.pos, end_pos=close.end)
        self.experimental_duration(de)
        return de

    def parse_offset(self, e):
        self._advance()
        ctx = ("offset", "number, duration, step(), or range()")
        k = self.tok.kind
        if k in (L.NUMBER, L.DURATION):
            d = self.checked_duration_literal(self._advance())
        elif k in ("+", "-"):
            op = self._advance()
            k2 = self.tok.kind
            if k2 in (L.NUMBER, L.DURATION):
                nl = self.number_literal(self._advance())
                if op.kind == "-":
                    nl.val = -nl.val
                if _duration_out_of_range(nl.val):
                    self.err((op.pos, op.end), "duration out of range")
                    d = NumberLiteral(0.0)
                else:
                    nl.pos = (op.pos, nl.pos[1])
                    d = nl
            elif k2 in ("step", "range"):
                inner = self.parse_step_range(ctx)
                d = DurationExpr(op.kind, None, inner, start_pos=op.pos)
                self.experimental_duration(d)
            elif k2 in ("min_of", "max_of"):
                inner = self.parse_min_max_of(ctx)
                d = DurationExpr(op.kind, None, inner, start_pos=op.pos,
                                 end_pos=inner.end_pos)
                self.experimental_duration(d)
            elif k2 == L.LEFT_PAREN:
                self._advance()
                inner = self.parse_duration_expr(0, ctx)
                if self.tok.kind != L.RIGHT_PAREN:
                    self.unexpected(*ctx)
                self._advance()
                d = self.apply_unary_duration(op, inner, wrapped=True)
            else:
                self.unexpected(*ctx)
        elif k in ("step", "range"):
            d = self.parse_step_range(ctx)
        elif k in ("min_of", "max_of"):
            d = self.parse_min_max_of(ctx)
        elif k == L.LEFT_PAREN:
            # A parenthesised duration keeps going: `offset (1m) * 2` is all duration.
            d = self.parse_duration_expr(0, ctx)
        else:
            self.unexpected(*ctx)
        self.add_offset(e, d)
        return e

    def add_offset(self, e, d):
        if isinstance(e, VectorSelector):
            target = e
        elif isinstance(e, MatrixSelector):
            target = e.vector_selector
            if not isinstance(target, VectorSelector):
                self.err(e.pos_range(), "ranges only allowed for vector selectors")
                return
        elif isinstance(e, SubqueryExpr):
            target = e
        else:
            self.err(e.pos_range(), "offset modifier must be preceded by an instant vector "
                                    "selector or range vector selector or a subquery")
            return
        if target.offset_ms != 0 or target.offset_expr is not None:
            self.err(e.pos_range(), "offset may not be set multiple times")
        elif isinstance(d, NumberLiteral):
            target.offset_ms = _seconds_to_ms(d.val)
        else:
            target.offset_expr = d
        self._extend_end(e)

    def _extend_end(self, e):
        end = self.prev.end if self.prev is not None else 0
        if isinstance(e, VectorSelector):
            e.pos = (e.pos[0], end)
        elif isinstance(e, (MatrixSelector, SubqueryExpr)):
            e.end_pos = end

    def parse_at(self, e):
        self._advance()
        k = self.tok.kind
        if k in (L.NUMBER, L.DURATION) or (k in ("+", "-") and self._peek_kind() in
                                            (L.NUMBER, L.DURATION)):
            sign = 1.0
            if k in ("+", "-"):
                sign = -1.0 if self._advance().kind == "-" else 1.0
            ts = sign * self.number_literal(self._advance()).val
            if (math.isinf(ts) or math.isnan(ts) or ts >= 9.223372036854775807e18
                    or ts <= -9.223372036854775808e18):
                self.err(e.pos_range(), "timestamp out of bounds for @ modifier: %s" % _go_f(ts))
            target = self._at_target(e)
            if target is not None:
                try:
                    target.timestamp_ms = int(round_half_away(ts * 1000.0))
                except (OverflowError, ValueError):
                    target.timestamp_ms = 0
                self._extend_end(e)
            return e
        if k in ("start", "end"):
            which = self._advance().kind
            if self.tok.kind != L.LEFT_PAREN:
                self.unexpected("@", "timestamp")
            self._advance()
            if self.tok.kind != L.RIGHT_PAREN:
                self.unexpected("@", "timestamp")
            self._advance()
            target = self._at_target(e)
            if target is not None:
                target.start_or_end = which
                self._extend_end(e)
            return e
        self.unexpected("@", "timestamp")

    def _at_target(self, e):
        if isinstance(e, VectorSelector):
            target = e
        elif isinstance(e, MatrixSelector):
            target = e.vector_selector
            if not isinstance(target, VectorSelector):
                self.err(e.pos_range(), "ranges only allowed for vector selectors")
                return None
        elif isinstance(e, SubqueryExpr):
            target = e
        else:
            self.err(e.pos_range(), "@ modifier must be preceded by an instant vector selector "
                                    "or range vector selector or a subquery")
            return None
        if target.timestamp_ms is not None or target.start_or_end is not None:
            self.err(e.pos_range(), "@ <timestamp> may not be set multiple times")
            return None
        return target

    def set_extended(self, e, which):
        if not self.opts.enable_extended_range_selectors:
            self.err(e.pos_range(), "%s modifier is experimental and not enabled" % which)
            return
        other = "smoothed" if which == "anchored" else "anchored"
        if isinstance(e, (VectorSelector, MatrixSelector)):
            vs = e if isinstance(e, VectorSelector) else e.vector_selector
            if not isinstance(vs, VectorSelector):
                return
            setattr(vs, which, True)
            if getattr(vs, other):
                self.err(e.pos_range(), "anchored and smoothed modifiers cannot be used together")
        elif isinstance(e, SubqueryExpr):
            self.err(e.pos_range(), "%s modifier is not supported for subqueries" % which)
        else:
            self.err(e.pos_range(), "%s modifier not implemented" % which)

    # -- type checking -------------------------------------------------------------------------
    def op_range(self, n: BinaryExpr):
        s = n.lhs.pos_range()[1]
        while s < len(self.text) and self.text[s] in " \t\n\r":
            s += 1
        e = n.rhs.pos_range()[0] - 1
        while e > 0 and self.text[e] in " \t\n\r":
            e -= 1
        return (s, e)

    def expect_type(self, node, want, context):
        t = self.check(node)
        if t != want:
            self.err(node.pos_range(), "expected type %s in %s, got %s"
                     % (documented_type(want), context, documented_type(t)))

    def check(self, n) -> str:
        typ = n.type() if n is not None else NONE
        if isinstance(n, AggregateExpr):
            self.expect_type(n.expr, VECTOR, "aggregation expression")
            if n.op in ("topk", "bottomk", "quantile", "limitk", "limit_ratio"):
                self.expect_type(n.param, SCALAR, "aggregation parameter")
            if n.op == "count_values":
                self.expect_type(n.param, STRING, "aggregation parameter")
        elif isinstance(n, BinaryExpr):
            # Left-deep chains (1+1+...+1) are checked in a loop, innermost first, as the
            # recursion would have: the left operand, the right operand, then the operator.
            spine = n.left_spine()
            lt = self.check(spine[-1].lhs)
            for b in reversed(spine):
                rt = self.check(b.rhs)
                self.check_binary(b, lt, rt)
                lt = SCALAR if lt == SCALAR and rt == SCALAR else VECTOR
        elif isinstance(n, Call):
            self.check_call(n)
        elif isinstance(n, ParenExpr):
            self.check(n.expr)
        elif isinstance(n, UnaryExpr):
            t = self.check(n.expr)
            if t not in (SCALAR, VECTOR):
                self.err(n.pos_range(), "unary expression only allowed on expressions of type "
                                        "scalar or instant vector, got %s"
                         % go_quote(documented_type(t)))
        elif isinstance(n, SubqueryExpr):
            t = self.check(n.expr)
            if t != VECTOR:
                self.err(n.pos_range(), "subquery is only allowed on instant vector, got %s "
                                        "instead" % t)
        elif isinstance(n, MatrixSelector):
            self.check(n.vector_selector)
        elif isinstance(n, VectorSelector):
            self.check_selector(n)
        return typ

    def check_binary(self, n: BinaryExpr, lt: str, rt: str):
        """The operator rules of one BinaryExpr whose operands have types lt and rt."""
        vm = n.matching
        if n.return_bool and n.op not in COMPARISON_OPS:
            self.err(self.op_range(n), "bool modifier can only be used on comparison operators")
        if n.op in COMPARISON_OPS and not n.return_bool and lt == SCALAR and rt == SCALAR:
            self.err(self.op_range(n), "comparisons between scalars must use BOOL modifier")
        if n.op in SET_OPS and vm is not None and vm.card == CARD_ONE_TO_ONE:
            vm.card = CARD_MANY_TO_MANY
        if vm is not None and vm.on:
            for l1 in vm.matching_labels:
                if l1 in vm.include:
                    self.err(self.op_range(n), "label %s must not occur in ON and GROUP "
                                               "clause at once" % go_quote(l1))
        if lt not in (SCALAR, VECTOR):
            self.err(n.lhs.pos_range(), "binary expression must contain only scalar and "
                                        "instant vector types")
        if rt not in (SCALAR, VECTOR):
            self.err(n.rhs.pos_range(), "binary expression must contain only scalar and "
                                        "instant vector types")
        if (lt != VECTOR or rt != VECTOR) and vm is not None:
            if vm.matching_labels:
                self.err(n.pos_range(), "vector matching only allowed between instant vectors")
            if vm.fill_lhs is not None or vm.fill_rhs is not None:
                self.err(n.pos_range(), "filling in missing series only allowed between "
                                        "instant vectors")
            n.matching = None
        elif n.op in SET_OPS and vm is not None:
            if vm.card in (CARD_ONE_TO_MANY, CARD_MANY_TO_ONE):
                self.err(n.pos_range(), "no grouping allowed for %s operation" % go_quote(n.op))
            if vm.card != CARD_MANY_TO_MANY:
                self.err(n.pos_range(), "set operations must always be many-to-many")
            if vm.fill_lhs is not None or vm.fill_rhs is not None:
                self.err(n.pos_range(), "filling in missing series not allowed for set "
                                        "operators")
        if (lt == SCALAR or rt == SCALAR) and n.op in SET_OPS:
            self.err(n.pos_range(), "set operator %s not allowed in binary scalar expression"
                     % go_quote(n.op))

    def check_call(self, n: Call):
        fn = n.func
        nargs = len(fn.arg_types)
        if fn.variadic == 0:
            if nargs != len(n.args):
                self.err(n.pos, "expected %d argument(s) in call to %s, got %d"
                         % (nargs, go_quote(fn.name), len(n.args)))
        else:
            na = nargs - 1
            if na > len(n.args):
                self.err(n.pos, "expected at least %d argument(s) in call to %s, got %d"
                         % (na, go_quote(fn.name), len(n.args)))
            elif fn.variadic > 0 and na + fn.variadic < len(n.args):
                self.err(n.pos, "expected at most %d argument(s) in call to %s, got %d"
                         % (na + fn.variadic, go_quote(fn.name), len(n.args)))
        if fn.name == "info" and len(n.args) > 1:
            a1 = n.args[1]
            if a1.type() != VECTOR:
                self.err(n.pos, "expected type %s in call to function %s, got %s"
                         % (documented_type(VECTOR), go_quote(fn.name), documented_type(a1.type())))
            if isinstance(a1, VectorSelector) and a1.name != "":
                self.err(a1.pos_range(), "expected label selectors only, got vector selector "
                                         "instead")
            elif isinstance(a1, VectorSelector):
                a1.bypass_empty_matcher_check = True
            else:
                self.err(a1.pos_range(), "expected label selectors only")
        for i, arg in enumerate(n.args):
            if i >= nargs:
                if fn.variadic == 0:
                    break
                i = nargs - 1
            t = self.check(arg)
            if t != fn.arg_types[i]:
                self.err(arg.pos_range(), "expected type %s in call to function %s, got %s"
                         % (documented_type(fn.arg_types[i]), go_quote(fn.name),
                            documented_type(t)))

    def check_selector(self, n: VectorSelector):
        if n.name:
            for m in n.matchers[:-1]:
                if m is not None and m.name == "__name__":
                    self.err(n.pos, "metric name must not be set twice: %s or %s"
                             % (go_quote(n.name), go_quote(m.value)))
            return
        if not n.bypass_empty_matcher_check:
            if not any(m is not None and not matcher_matches(m, "") for m in n.matchers):
                self.err(n.pos, "vector selector must contain at least one non-empty matcher")


def _regex_error_text(val, e) -> str:
    msg = str(e)
    if msg.startswith("error parsing regexp: "):
        return msg  # the engine's RegexError already speaks Go's regexp text
    return "error parsing regexp: %s: `%s`" % (msg, val)


# Deepest nesting a query may have (a binary operator's left operand counts as its own level,
# so chains of any length are flat). The checker and the evaluator recurse per level, a few
# Python frames each, and must stay well inside the interpreter's recursion limit on any thread.
MAX_NESTING = 100


def nesting_depth(expr) -> int:
    """How deeply expr nests, counting 1+1+...+1 or `a or b or c` as depth 2 whatever its length."""
    deepest = 0
    stack = [(expr, 1)]
    while stack:
        n, depth = stack.pop()
        if n is None:
            continue
        deepest = max(deepest, depth)
        if isinstance(n, BinaryExpr):
            stack.append((n.lhs, depth))
            stack.append((n.rhs, depth + 1))
        else:
            stack.extend((c, depth + 1) for c in n.children())
    return deepest


def parse_expr(text: str, options: Optional[Options] = None):
    """Parse and type-check a PromQL expression. Raises ParseError."""
    p = Parser(text, options)
    expr = None
    try:
        expr = p.parse()
    except _Abort:
        pass
    except RecursionError:
        p.err((0, len(text)), "expression nested too deeply")
    if not p.errors and nesting_depth(expr) > MAX_NESTING:
        p.err((0, len(text)), "expression nested too deeply")
    if not p.errors:
        p.check(expr)
    if p.errors:
        raise ParseError(text, p.errors)
    return expr


def parse_metric_selector(text: str) -> list:
    """Parse a series selector (`name{l="v"}` or `{...}`) as used by the HTTP API's match[]
    and return its matchers. Raises ParseError."""
    expr = parse_expr(text)
    if not isinstance(expr, VectorSelector) or expr.offset_ms or expr.offset_expr is not None \
            or expr.timestamp_ms is not None or expr.start_or_end is not None:
        raise ParseError(text, [ParseErrorItem((0, len(text)),
                                               "unexpected expression in metric selector")])
    return expr.matchers
