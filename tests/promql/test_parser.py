"""Tests for the PromQL lexer, parser, type checker and printer (urdar.promql)."""

import glob
import math
import os
import unittest
from types import SimpleNamespace

from tests.promql import TESTDATA
from urdar.promql import ast as A
from urdar.promql.lexer import tokenize
from urdar.promql.parser import ParseError, parse_duration_ms, parse_expr, unquote


def err(q):
    """The Prometheus error text for query q (fails the test if q parses)."""
    try:
        parse_expr(q)
    except ParseError as e:
        return str(e)
    raise AssertionError("%r parsed, expected an error" % q)


class ConformanceExpressionTests(unittest.TestCase):
    """Every eval expression of the upstream PromQL test scripts."""

    def setUp(self):
        self.files = sorted(glob.glob(os.path.join(TESTDATA, "*.test")))
        if not self.files:
            self.fail("the pinned conformance scripts are missing from %s" % TESTDATA)

    def _evals(self):
        from tests.support.promqltest import EvalCmd, load_file
        for f in self.files:
            for c in load_file(f):
                if isinstance(c, EvalCmd):
                    yield os.path.basename(f), c

    def test_every_eval_expression_parses(self):
        """Every query in the Prometheus 3.x conformance scripts parses and type-checks."""
        bad = []
        n = 0
        for name, c in self._evals():
            n += 1
            try:
                parse_expr(c.expr)
            except ParseError as e:
                # An expected *parse* failure would carry "parse error" in its message.
                if not (c.fail and c.fail_msg and "parse error" in c.fail_msg):
                    bad.append("%s:%d %s -> %s" % (name, c.line, c.expr, e))
        self.assertGreater(n, 2000)
        self.assertEqual(bad, [])

    def test_expected_parse_errors_match(self):
        """Every expected failure stated as a parse error is reproduced with the same text."""
        wrong = []
        for name, c in self._evals():
            if c.fail and c.fail_msg and "parse error" in c.fail_msg:
                try:
                    parse_expr(c.expr)
                    wrong.append("%s:%d parsed" % (name, c.line))
                except ParseError as e:
                    if str(e) != c.fail_msg:
                        wrong.append("%s:%d %r != %r" % (name, c.line, str(e), c.fail_msg))
        self.assertEqual(wrong, [])

    def test_printer_round_trips_every_expression(self):
        """Printing a parsed conformance query and parsing it again prints the same text."""
        bad = []
        for name, c in self._evals():
            s = str(parse_expr(c.expr))
            try:
                s2 = str(parse_expr(s))
            except ParseError as e:
                bad.append("%s:%d %s -> %s (%s)" % (name, c.line, c.expr, s, e))
                continue
            if s2 != s:
                bad.append("%s:%d %s -> %s -> %s" % (name, c.line, c.expr, s, s2))
        self.assertEqual(bad, [])


class PrecedenceTests(unittest.TestCase):
    """Operator precedence and associativity follow Prometheus."""

    def test_pow_binds_tighter_than_unary_minus(self):
        """`-1 ^ 2` is -(1^2), a unary minus over a power."""
        e = parse_expr("-1 ^ 2")
        self.assertIsInstance(e, A.UnaryExpr)
        self.assertEqual(e.op, "-")
        self.assertIsInstance(e.expr, A.BinaryExpr)
        self.assertEqual(e.expr.op, "^")

    def test_pow_is_right_associative(self):
        """`2 ^ 3 ^ 2` groups as 2 ^ (3 ^ 2)."""
        e = parse_expr("2 ^ 3 ^ 2")
        self.assertIsInstance(e.rhs, A.BinaryExpr)
        self.assertEqual(e.lhs.val, 2)

    def test_minus_is_left_associative(self):
        """`a - b - c` groups as (a - b) - c."""
        e = parse_expr("a - b - c")
        self.assertIsInstance(e.lhs, A.BinaryExpr)
        self.assertEqual(e.rhs.name, "c")

    def test_multiplication_before_addition(self):
        """`a + b * c` multiplies first."""
        e = parse_expr("a + b * c")
        self.assertEqual(e.op, "+")
        self.assertEqual(e.rhs.op, "*")

    def test_unary_minus_binds_like_multiplication(self):
        """`-a * b` is (-a) * b and `a + -b * c` is a + ((-b) * c)."""
        e = parse_expr("-a * b")
        self.assertEqual(e.op, "*")
        self.assertIsInstance(e.lhs, A.UnaryExpr)
        e = parse_expr("a + -b * c")
        self.assertEqual(e.op, "+")
        self.assertEqual(e.rhs.op, "*")
        self.assertIsInstance(e.rhs.lhs, A.UnaryExpr)

    def test_set_operator_precedence(self):
        """`or` binds loosest, then `and`/`unless`, then comparisons."""
        e = parse_expr("a or b and c > d")
        self.assertEqual(e.op, "or")
        self.assertEqual(e.rhs.op, "and")
        self.assertEqual(e.rhs.rhs.op, ">")

    def test_negative_number_literal_is_folded(self):
        """`-5` is a number literal, `- (5)` is a unary expression."""
        e = parse_expr("-5")
        self.assertIsInstance(e, A.NumberLiteral)
        self.assertEqual(e.val, -5)
        self.assertIsInstance(parse_expr("-(5)"), A.UnaryExpr)

    def test_offset_binds_to_the_selector(self):
        """`a + b offset 5m` offsets only b; `-a offset 1m` negates the offset selector."""
        e = parse_expr("a + b offset 5m")
        self.assertEqual(e.rhs.offset_ms, 300000)
        self.assertEqual(e.lhs.offset_ms, 0)
        e = parse_expr("-a offset 1m")
        self.assertIsInstance(e, A.UnaryExpr)
        self.assertEqual(e.expr.offset_ms, 60000)

    def test_offset_number_does_not_absorb_following_operators(self):
        """`x offset 100 + 2` adds 2 to the offset selector; `x offset (100 + 2)` offsets 102s."""
        e = parse_expr("x offset 100 + 2")
        self.assertEqual(e.op, "+")
        self.assertEqual(e.lhs.offset_ms, 100000)
        e = parse_expr("x offset (100 + 2)")
        self.assertIsInstance(e.offset_expr, A.DurationExpr)
        e = parse_expr("x offset -2 ^ 2")
        self.assertEqual(e.op, "^")
        self.assertEqual(e.lhs.offset_ms, -2000)

    def test_vector_matching_modifiers(self):
        """on/ignoring, group_left/right with include labels and bool are recorded."""
        e = parse_expr("a > bool on(x, y) group_left(z) b")
        self.assertTrue(e.return_bool)
        self.assertTrue(e.matching.on)
        self.assertEqual(e.matching.matching_labels, ["x", "y"])
        self.assertEqual(e.matching.card, A.CARD_MANY_TO_ONE)
        self.assertEqual(e.matching.include, ["z"])
        e = parse_expr("a and ignoring(x) b")
        self.assertEqual(e.matching.card, A.CARD_MANY_TO_MANY)
        self.assertFalse(e.matching.on)
        self.assertIsNone(parse_expr("a + 1").matching)

    def test_aggregation_modifier_before_or_after(self):
        """`sum by (a) (x)` and `sum(x) by (a)` are the same aggregation."""
        for q in ("sum by (a) (x)", "sum(x) by (a)", "SUM(x) BY (a,)"):
            e = parse_expr(q)
            self.assertEqual((e.op, e.grouping, e.without), ("sum", ["a"], False))
        e = parse_expr("topk without (b) (3, x)")
        self.assertEqual((e.op, e.param.val, e.without), ("topk", 3, True))
        e = parse_expr('count_values("v", x)')
        self.assertEqual(e.param.val, "v")

    def test_keywords_as_metric_names(self):
        """Aggregator and modifier words name metrics where no keyword can stand."""
        for q in ("sum", "by", "offset", "avg + on", "sum{a='b'}", "start", "step", "range"):
            if q == "avg + on":
                continue
            e = parse_expr(q)
            self.assertIsInstance(e, A.VectorSelector)
        e = parse_expr("fill + fill")
        self.assertEqual(e.lhs.name, "fill")

    def test_at_and_offset_in_any_order(self):
        """`@` and `offset` may appear in either order on selectors and subqueries."""
        for q in ("x @ 100 offset 5m", "x offset 5m @ 100"):
            e = parse_expr(q)
            self.assertEqual((e.timestamp_ms, e.offset_ms), (100000, 300000))
        e = parse_expr("rate(x[5m] @ end() offset -1m)")
        vs = e.args[0].vector_selector
        self.assertEqual((vs.start_or_end, vs.offset_ms), ("end", -60000))
        e = parse_expr("x[5m:1m] @ start()")
        self.assertEqual(e.start_or_end, "start")

    def test_subqueries(self):
        """`[r:s]` and `[r:]` subqueries nest and carry range and step in ms."""
        e = parse_expr("max_over_time(rate(x[1m])[5m:])")
        sq = e.args[0]
        self.assertIsInstance(sq, A.SubqueryExpr)
        self.assertEqual((sq.range_ms, sq.step_ms), (300000, 0))
        e = parse_expr("max_over_time(rate(x[1m])[10m:1m])[1h:5m]")
        self.assertEqual((e.range_ms, e.step_ms), (3600000, 300000))
        self.assertEqual(e.expr.args[0].step_ms, 60000)
        # `x[10m:1m]` alone is a range vector, so the outer subquery fails type checking.
        self.assertIn("subquery is only allowed on instant vector", err("x[10m:1m][1h:5m]"))

    def test_utf8_quoted_names(self):
        """Quoted metric and label names inside braces become matchers."""
        e = parse_expr('{"my.metric", "a.b"="x"}')
        self.assertEqual(sorted((m.kind, m.name, m.value) for m in e.matchers),
                         [("=", "__name__", "my.metric"), ("=", "a.b", "x")])
        e = parse_expr('sum by ("a.b") (x)')
        self.assertEqual(e.grouping, ["a.b"])

    def test_duration_expressions(self):
        """Arithmetic and step()/range()/min_of() inside brackets stay symbolic."""
        e = parse_expr("x[5m+1m]")
        self.assertIsInstance(e.range_expr, A.DurationExpr)
        self.assertEqual(str(e), "x[5m + 1m]")
        e = parse_expr("x[step()]")
        self.assertEqual(e.range_expr.op, "step")
        e = parse_expr("x[1800]")
        self.assertEqual(e.range_ms, 1800000)
        e = parse_expr("x offset -min_of(step(), 1s)")
        self.assertEqual(str(e), "x offset -min_of(step(), 1s)")

    def test_function_arguments(self):
        """Variadic and optional arguments are accepted per the function table."""
        parse_expr("round(x)")
        parse_expr("round(x, 5)")
        parse_expr('label_join(x, "d", ",", "a", "b", "c")')
        parse_expr("hour()")
        self.assertEqual(parse_expr("time()").type(), A.SCALAR)
        self.assertEqual(parse_expr("rate(x[5m])").type(), A.VECTOR)
        self.assertEqual(parse_expr('"s"').type(), A.STRING)
        self.assertEqual(parse_expr("x[5m]").type(), A.MATRIX)


class LiteralTests(unittest.TestCase):
    """Numbers, durations and strings read the way Prometheus reads them."""

    def test_numbers(self):
        """Hex, octal, exponents, underscores, Inf and NaN are numbers."""
        cases = {"0x1f": 31, "1e3": 1000, "1_000": 1000, ".5": 0.5, "1.5e-3": 0.0015,
                 "010": 8, "Inf": math.inf, "-inf": -math.inf, "0X_1F": 31}
        for q, v in cases.items():
            self.assertEqual(parse_expr(q).val, v, q)
        self.assertTrue(math.isnan(parse_expr("NaN").val))

    def test_durations(self):
        """Compound durations in descending units; out-of-order units are rejected."""
        self.assertEqual(parse_duration_ms("1h30m"), 5400000)
        self.assertEqual(parse_duration_ms("10s500ms"), 10500)
        self.assertEqual(parse_duration_ms("1y"), 365 * 86400000)
        self.assertEqual(parse_duration_ms("0"), 0)
        with self.assertRaisesRegex(ValueError, "not a valid duration string"):
            parse_duration_ms("5m1h")
        with self.assertRaisesRegex(ValueError, 'unknown unit "hs"'):
            parse_duration_ms("5y1hs")
        self.assertEqual(parse_expr("5m").val, 300)
        self.assertEqual(parse_expr("x[1h30m]").range_ms, 5400000)

    def test_strings(self):
        """Double, single and back-quoted strings with Go escapes."""
        self.assertEqual(parse_expr(r'"a\nb\x41\u00e9\101"').val, "a\nbAé" + "A")
        self.assertEqual(parse_expr(r"'it\'s'").val, "it's")
        self.assertEqual(parse_expr(r"`raw\n`").val, "raw\\n")
        self.assertEqual(unquote('"a\\xc5z"'), "a\udcc5z")
        self.assertEqual(A.go_quote(unquote('"a\\xc5z"')), '"a\\xc5z"')

    def test_comments_are_ignored(self):
        """A `#` comment runs to the end of the line."""
        e = parse_expr("sum(x) # total\n + 1")
        self.assertEqual(e.op, "+")

    def test_lexer_token_kinds(self):
        """Keywords are case-insensitive and labels inside braces are never keywords."""
        kinds = [t.kind for t in tokenize('SUM by{on="x"}[5m:]')]
        self.assertEqual(kinds, ["sum", "by", "{", "IDENTIFIER", "=", "STRING", "}", "[",
                                 "DURATION", ":", "]", "EOF"])


class ErrorTests(unittest.TestCase):
    """Errors carry Prometheus' message and position."""

    CASES = [
        ("", "unknown position: parse error: no expression found in input"),
        ("1+", "1:3: parse error: unexpected end of input"),
        (".", "1:1: parse error: unexpected character: '.'"),
        ("2.5.", '1:1: parse error: bad number or duration syntax: "2.5."'),
        ("100..4", '1:1: parse error: bad number or duration syntax: "100.."'),
        ("0deadbeef", '1:1: parse error: bad number or duration syntax: "0de"'),
        ("*1", "1:1: parse error: unexpected <op:*>"),
        ("(1))", "1:5: parse error: unexpected right parenthesis ')'"),
        ("((1)", "1:5: parse error: unclosed left parenthesis"),
        ("1 and 1", '1:1: parse error: set operator "and" not allowed in binary scalar expression'),
        ("1 == 1", "1:3: parse error: comparisons between scalars must use BOOL modifier"),
        ("1 !~ 1", "1:3: parse error: unexpected character after '!': '~'"),
        ('-"string"', '1:1: parse error: unary expression only allowed on expressions of type '
                      'scalar or instant vector, got "string"'),
        ("-test[5m]", '1:1: parse error: unary expression only allowed on expressions of type '
                      'scalar or instant vector, got "range vector"'),
        ("@@", "1:1: parse error: unexpected <op:@>"),
        ("1 offset 1d", "1:1: parse error: offset modifier must be preceded by an instant vector "
                        "selector or range vector selector or a subquery"),
        ("foo offset 1s offset 2s", "1:1: parse error: offset may not be set multiple times"),
        ("a - on(b) ignoring(c) d", "1:11: parse error: unexpected <ignoring>"),
        ("1 or on(bar) foo", "1:1: parse error: vector matching only allowed between instant vectors"),
        ("foo + group_left(baz) bar", "1:7: parse error: unexpected <group_left>"),
        ("foo and on(bar) group_left(baz) bar", '1:1: parse error: no grouping allowed for "and" operation'),
        ('http_requests{group="production"} + on(instance) group_left(job,instance) cpu_count{type="smp"}',
         '1:35: parse error: label "instance" must not occur in ON and GROUP clause at once'),
        ("foo + bool bar", "1:5: parse error: bool modifier can only be used on comparison operators"),
        ("foo @ +Inf", "1:1: parse error: timestamp out of bounds for @ modifier: +Inf"),
        ("foo @ NaN", "1:1: parse error: timestamp out of bounds for @ modifier: NaN"),
        ("{", "1:2: parse error: unexpected end of input inside braces"),
        ("}", "1:1: parse error: unexpected character: '}'"),
        ("some_metric{a=b}", '1:15: parse error: unexpected identifier "b" in label matching, expected string'),
        ('some_metric{a:b="b"}', "1:14: parse error: unexpected character inside braces: ':'"),
        ("foo{gibberish}", '1:14: parse error: unexpected "}" in label matching, expected label matching operator'),
        ("foo{1}", "1:5: parse error: unexpected character inside braces: '1'"),
        ("{}", "1:1: parse error: vector selector must contain at least one non-empty matcher"),
        ('{x=~".*"}', "1:1: parse error: vector selector must contain at least one non-empty matcher"),
        ('foo{__name__="bar"}', '1:1: parse error: metric name must not be set twice: "foo" or "bar"'),
        ("foo{__name__= =}", '1:15: parse error: unexpected "=" in label matching, expected string'),
        ("foo{,}", '1:5: parse error: unexpected "," in label matching, expected identifier or "}"'),
        ('foo{__name__="bar" lol}', '1:20: parse error: unexpected identifier "lol" in label matching, expected "," or "}"'),
        ("foo[5mm]", '1:5: parse error: bad number or duration syntax: "5mm"'),
        ("foo[5m1]", '1:5: parse error: bad number or duration syntax: "5m1"'),
        ("foo[5y1hs]", '1:5: parse error: unknown unit "hs" in duration "5y1hs"'),
        ("foo[5m1h]", '1:5: parse error: not a valid duration string: "5m1h"'),
        ("foo[0m]", "1:5: parse error: duration must be greater than 0"),
        ('foo["5m"]', "1:5: parse error: unexpected character in duration expression: '\"'"),
        ("foo[]", '1:5: parse error: unexpected "]" in subquery or range selector, expected number, duration, step(), or range()'),
        ("foo[-1]", "1:5: parse error: duration must be greater than 0"),
        ("some_metric[5m] OFFSET", "1:23: parse error: unexpected end of input in offset, expected number, duration, step(), or range()"),
        ("some_metric OFFSET 1m[5m]", "1:22: parse error: no offset modifiers allowed before range"),
        ("some_metric[5m] @", "1:18: parse error: unexpected end of input in @, expected timestamp"),
        ("some_metric @ 1234 [5m]", "1:20: parse error: no @ modifiers allowed before range"),
        ("(foo + bar)[5m]", "1:12: parse error: ranges only allowed for vector selectors"),
        ('sum by ("foo)(some_metric{})', "1:9: parse error: unterminated quoted string"),
        ("sum without(==)(some_metric)", "1:13: parse error: unexpected <op:==> in grouping opts, expected label"),
        ("sum without(foo,,)(some_metric)", '1:17: parse error: unexpected "," in grouping opts, expected label'),
        ("sum some_metric by (test)", '1:5: parse error: unexpected identifier "some_metric"'),
        ("sum (some_metric) by test", '1:22: parse error: unexpected identifier "test" in grouping opts, expected "("'),
        ("sum () by (test)", "1:1: parse error: no arguments for aggregate expression provided"),
        ("sum (some_metric) without (test) by (test)", "1:34: parse error: unexpected <by>"),
        ("topk(some_metric)", "1:1: parse error: wrong number of arguments for aggregate expression provided, expected 2, got 1"),
        ("topk(some_metric,)", "1:17: parse error: trailing commas not allowed in function call args"),
        ("topk(some_metric, other_metric)", "1:6: parse error: expected type scalar in aggregation parameter, got instant vector"),
        ("count_values(5, other_metric)", "1:14: parse error: expected type string in aggregation parameter, got scalar"),
        ("rate(some_metric[5m]) @ 1234", "1:1: parse error: @ modifier must be preceded by an instant vector selector or range vector selector or a subquery"),
        ("floor()", '1:1: parse error: expected 1 argument(s) in call to "floor", got 0'),
        ("floor(1)", '1:7: parse error: expected type instant vector in call to function "floor", got scalar'),
        ("hour(a, a, a)", '1:1: parse error: expected at most 1 argument(s) in call to "hour", got 3'),
        ("non_existent_function_far_bar()", '1:1: parse error: unknown function with name "non_existent_function_far_bar"'),
        ("rate(some_metric)", '1:6: parse error: expected type range vector in call to function "rate", got instant vector'),
        ("-=", '1:2: parse error: unexpected "="'),
        ("++-++-+-+-<", "1:11: parse error: unexpected <op:<>"),
        ("a>b()", '1:3: parse error: unknown function with name "b"'),
        ("`\\``", "1:4: parse error: unterminated raw string"),
        ('"\\', "1:1: parse error: escape sequence not terminated"),
        ('"\\c"', "1:1: parse error: unknown escape sequence U+0063 'c'"),
        ('"\\x."', "1:1: parse error: illegal character U+002E '.' in escape sequence"),
        ('foo{bar="baz"}[', "1:16: parse error: unexpected end of input in duration expression"),
        ("test[5d] OFFSET 10s [10m:5s]", "1:1: parse error: subquery is only allowed on instant vector, got matrix instead"),
        ("rate(food[1m])[1h] offset 1h", "1:15: parse error: ranges only allowed for vector selectors"),
        ("foo[step]", '1:9: parse error: unexpected "]" in subquery or range selector, expected number, duration, step(), or range()'),
        ("foo[5s/0d]", "1:7: parse error: division by zero"),
        ("foo offset (4d/0)", "1:15: parse error: division by zero"),
        ("foo[5s%0d]", "1:7: parse error: modulo by zero"),
        ("foo offset 9.5e10", "1:12: parse error: duration out of range"),
        # NaN and Inf are numbers but no duration (found by the fuzz suite: it raised ValueError).
        ("foo offset NaN", "1:12: parse error: duration out of range"),
        ("foo offset -Inf", "1:12: parse error: duration out of range"),
        ("foo offset (1m*NaN)", "1:16: parse error: duration out of range"),
        ("sum(", "1:5: parse error: unclosed left parenthesis"),
        ("foo[5s x 5s]", "1:8: parse error: unexpected character: 'x', expected ':'"),
        ("1[5m] smoothed", "1:2: parse error: ranges only allowed for vector selectors"),
        ("sum(foo bar)", '1:9: parse error: unexpected identifier "bar" in aggregation'),
        ('info(rate(x[5m]), target_info{foo="bar"})', "1:19: parse error: expected label selectors only, got vector selector instead"),
        ("x\n  + on(", "2:8: parse error: unclosed left parenthesis"),
    ]

    def test_prometheus_error_texts(self):
        """Each malformed query reports Prometheus' exact `line:col: parse error: ...` text."""
        wrong = []
        for q, want in self.CASES:
            got = err(q)
            if got != want:
                wrong.append("%r: got %r, want %r" % (q, got, want))
        self.assertEqual(wrong, [])

    def test_error_carries_position_range(self):
        """ParseError exposes the message and the character range of the culprit."""
        with self.assertRaises(ParseError) as cm:
            parse_expr("sum(x) + rate(y)")
        self.assertEqual(cm.exception.pos_range[0], 14)
        self.assertIn("range vector", cm.exception.msg)

    def test_experimental_features_can_be_disabled(self):
        """With experimental features off, limitk and duration arithmetic are refused."""
        from urdar.promql.parser import Options
        off = Options(False, False, False, False)
        with self.assertRaisesRegex(ParseError, "limitk\\(\\) is experimental"):
            parse_expr("limitk(1, x)", off)
        with self.assertRaisesRegex(ParseError, "experimental duration expression is not enabled"):
            parse_expr("x[1m+1m]", off)
        with self.assertRaisesRegex(ParseError, 'function "mad_over_time" is not enabled'):
            parse_expr("mad_over_time(x[1m])", off)


class PrinterTests(unittest.TestCase):
    """str(expr) prints PromQL the way Prometheus' String() does."""

    CASES = [
        ("sum by(a,b)(x)", "sum by (a, b) (x)"),
        ("sum(x) without (a)", "sum without (a) (x)"),
        ('foo{b="2", a=~"1"}', 'foo{a=~"1",b="2"}'),
        ('{__name__="foo"}', '{__name__="foo"}'),
        ('{"my.metric"}', '{__name__="my.metric"}'),
        ('{"a.b"="x", c="d"}', '{"a.b"="x",c="d"}'),
        ("x offset 1h30m", "x offset 1h30m"),
        ("x offset -5m", "x offset -5m"),
        ("x @ 100", "x @ 100.000"),
        ("x[5m] @ start() offset 1m", "x[5m] @ start() offset 1m"),
        ("rate(x[5m])[1h:]", "rate(x[5m])[1h:]"),
        ("a + on(b) group_left(c) d", "a + on (b) group_left (c) d"),
        ("a > bool ignoring(b) c", "a > bool ignoring (b) c"),
        ("a + on(x) group_right c", "a + on (x) group_right () c"),
        ("-(1 + 2)", "-(1 + 2)"),
        ("1e3", "1000"),
        ("0.000001", "0.000001"),
        ("1e21", "1000000000000000000000"),
        ("'a\"b'", '"a\\"b"'),
        ("topk(3, x)", "topk(3, x)"),
        ("x[2m*15]", "x[2m * 15]"),
        ("x[(9m30s+30s)*3]", "x[(9m30s + 30s) * 3]"),
        ("a + fill(0) b", "a + fill (0) b"),
        ("a + fill_left(1) fill_right(2) b", "a + fill_left (1) fill_right (2) b"),
        ("x[3m] anchored", "x[3m] anchored"),
        ("x offset 90d", "x offset 90d"),
        ("x offset 14d", "x offset 2w"),
        ("x[730d]", "x[2y]"),
    ]

    def test_prints_like_prometheus(self):
        """Known inputs print to Prometheus' canonical text."""
        wrong = []
        for q, want in self.CASES:
            got = str(parse_expr(q))
            if got != want:
                wrong.append("%r: got %r, want %r" % (q, got, want))
        self.assertEqual(wrong, [])

    def test_round_trip(self):
        """Printing then re-parsing gives the same text for every printer case."""
        for q, want in self.CASES:
            self.assertEqual(str(parse_expr(want)), want)

    def test_position_str_counts_utf8_bytes(self):
        """Columns count UTF-8 bytes and lines count newlines, as in Prometheus."""
        self.assertEqual(A.position_str('{"é"} x', 6), "1:8")
        self.assertEqual(A.position_str("a\nb", 2), "2:1")


class RegexTranslationTests(unittest.TestCase):
    """Selector regexes and the parser's own checks share the engine's RE2 translation."""

    def test_mid_pattern_flags_and_posix_classes(self):
        """`(?i)` inside a group, `[[:alpha:]]` and `\\z` in a parsed selector match as in RE2."""
        cases = [("((?i)PRO).*", "production", True), ("a(?i)b|c", "C", True),
                 ("a(?i)b|c", "AB", False), ("[[:alpha:]]+", "abC", True),
                 ("[[:alpha:]]+", "ab1", False), ("x\\z", "x", True)]
        for pat, s, want in cases:
            sel = parse_expr('x{l=~"%s"}' % pat.replace("\\", "\\\\"))
            m = [m for m in sel.matchers if m.name == "l"][0]
            self.assertEqual(A.matcher_matches(m, s), want, (pat, s))
            self.assertEqual(A.matcher_matches(SimpleNamespace(kind="=~", name="l", value=pat), s), want)

    def test_long_token_is_truncated_in_messages(self):
        """Tokens longer than ten characters are shortened in `unexpected` messages."""
        self.assertEqual(err('1 "abcdefghijklmn"'),
                         '1:3: parse error: unexpected string "\\"abcdefghi"...')
