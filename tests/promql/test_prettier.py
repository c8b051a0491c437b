"""Prometheus' prettifier rules (parser.Prettify), expected outputs written from its semantics:
one line while String() fits 100 bytes, else split per node kind, two spaces per level."""
import unittest

from urdar.promql.parser import parse_expr
from urdar.promql.prettier import PrettyTooLarge, prettify

A60 = "a" * 60
B60 = "b" * 60
C60 = "c" * 60


def pp(q):
    return prettify(parse_expr(q))


class PrettifyTests(unittest.TestCase):
    def check(self, query, *lines):
        self.assertEqual(pp(query), "\n".join(lines))

    def test_short_queries_are_their_normalised_string(self):
        self.check("sum(foo) by (job)", "sum by (job) (foo)")
        self.check("rate( x [5m] )  *2", "rate(x[5m]) * 2")
        self.check('foo{b="1",a="2"} offset 5m', 'foo{a="2",b="1"} offset 5m')

    def test_exactly_100_bytes_stays_on_one_line(self):
        q = "f" * 49 + " + " + "g" * 48           # 100 bytes
        self.check(q, q)
        self.check(q + "g", "  " + "f" * 49, "+", "  " + "g" * 49)

    def test_aggregation_with_parameter(self):
        self.check('topk(5, sum by (namespace, pod) (rate(container_cpu_usage_seconds_total'
                   '{container!="",namespace="production"}[5m])))',
                   "topk(",
                   "  5,",
                   "  sum by (namespace, pod) (",
                   '    rate(container_cpu_usage_seconds_total{container!="",namespace="production"}[5m])',
                   "  )",
                   ")")

    def test_binary_with_bool_and_matching(self):
        self.check("rate(some_extremely_long_metric_name_number_one_total[5m]) > bool "
                   "on(instance, job) group_left(version) some_other_rather_long_metric_name_info",
                   "  rate(some_extremely_long_metric_name_number_one_total[5m])",
                   "> bool on (instance, job) group_left (version)",
                   "  some_other_rather_long_metric_name_info")

    def test_call_arguments_one_per_line(self):
        self.check('label_replace(up{job="api-server",instance="some-host-name.example.com:9090"}, '
                   '"host", "$1", "instance", "(.*):.*")',
                   "label_replace(",
                   '  up{instance="some-host-name.example.com:9090",job="api-server"},',
                   '  "host",',
                   '  "$1",',
                   '  "instance",',
                   '  "(.*):.*"',
                   ")")

    def test_unary_minus_on_a_split_parenthesis(self):
        self.check("-(%s + %s)" % (A60, B60),
                   "-(", "    " + A60, "  +", "    " + B60, ")")

    def test_chains_deepen_one_level_per_split_term(self):
        self.check("%s + %s - %s" % (A60, B60, C60),
                   "    " + A60, "  +", "    " + B60, "-", "  " + C60)
        self.check("%s + %s - c" % (A60[:30], B60[:30]),
                   "%s + %s - c" % (A60[:30], B60[:30]))

    def test_subqueries(self):
        # Short enough for one line: printed without indentation (Prometheus does so too).
        self.check("max_over_time(rate(%s_total[5m])[1h:5m])" % ("x" * 70),
                   "max_over_time(", "rate(%s_total[5m])[1h:5m]" % ("x" * 70), ")")
        # Too long: the inner expression splits and the suffix follows its last line.
        self.check("sum(%s + %s)[1h:]" % (A60, B60),
                   "sum(", "    " + A60, "  +", "    " + B60, ")[1h:]")

    def test_nested_parentheses(self):
        self.check("((%s * %s))" % (A60, B60),
                   "(", "  (", "      " + A60, "    *", "      " + B60, "  )", ")")

    def test_long_chain_does_not_recurse_and_output_is_bounded(self):
        q = " + ".join("m%d" % i for i in range(5000))
        out = prettify(parse_expr(q), max_chars=1 << 30)
        lines = out.split("\n")
        self.assertEqual(lines[-1], "  m4999")
        self.assertEqual(lines[-2], "+")
        with self.assertRaises(PrettyTooLarge):
            prettify(parse_expr(q), max_chars=1 << 20)
