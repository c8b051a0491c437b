"""Query sharding's rewrite (promql/astmapper.py): which queries shard, into which outer
expression and which per-shard queries (Mimir's astmapper sharding semantics)."""
import json
import unittest

from urdar.promql import ast as A
from urdar.promql.astmapper import EMBEDDED_NAME, QUERIES_LABEL, shard_query, shardable_legs
from urdar.promql.parser import parse_expr

# query -> (outer expression with legs written <0>, <1>..., first shard query of each leg),
# for 3 shards; None: not sharded.
TABLE = {
    "sum(rate(x[5m]))":
        ("sum(<0>)", ['sum(rate(x{__query_shard__="1_of_3"}[5m]))']),
    "sum by (job) (x)":
        ("sum by (job) (<0>)", ['sum by (job) (x{__query_shard__="1_of_3"})']),
    "sum without (instance) (rate(x[1m]))":
        ("sum without (instance) (<0>)",
         ['sum without (instance) (rate(x{__query_shard__="1_of_3"}[1m]))']),
    "count by (job) (x)":
        ("sum by (job) (<0>)", ['count by (job) (x{__query_shard__="1_of_3"})']),
    "min(x)": ("min(<0>)", ['min(x{__query_shard__="1_of_3"})']),
    "max by (a) (x)": ("max by (a) (<0>)", ['max by (a) (x{__query_shard__="1_of_3"})']),
    "group by (a) (x)": ("group by (a) (<0>)", ['group by (a) (x{__query_shard__="1_of_3"})']),
    "avg by (a) (x)":
        ("(sum by (a) (<0>) / sum by (a) (<1>))",
         ['sum by (a) (x{__query_shard__="1_of_3"})', 'count by (a) (x{__query_shard__="1_of_3"})']),
    "sum(a) / sum(b)":
        ("sum(<0>) / sum(<1>)", ['sum(a{__query_shard__="1_of_3"})', 'sum(b{__query_shard__="1_of_3"})']),
    "sum(x) / sum(x)": ("sum(<0>) / sum(<0>)", ['sum(x{__query_shard__="1_of_3"})']),
    'sum(x{a="b"} offset 5m @ 100)':
        ("sum(<0>)", ['sum(x{__query_shard__="1_of_3",a="b"} @ 100.000 offset 5m)']),
    "histogram_quantile(0.9, sum by (le) (rate(x[5m])))":
        ("histogram_quantile(0.9, sum by (le) (<0>))",
         ['sum by (le) (rate(x{__query_shard__="1_of_3"}[5m]))']),
    "topk(3, sum by (a) (x))": ("topk(3, sum by (a) (<0>))", ['sum by (a) (x{__query_shard__="1_of_3"})']),
    "count(count by (a) (x))": ("count(sum by (a) (<0>))", ['count by (a) (x{__query_shard__="1_of_3"})']),
    "sum(sum(x))": ("sum(sum(<0>))", ['sum(x{__query_shard__="1_of_3"})']),
    "sum(x > 1)": ("sum(<0>)", ['sum(x{__query_shard__="1_of_3"} > 1)']),
    "sum(2 * -x)": ("sum(<0>)", ['sum(2 * -x{__query_shard__="1_of_3"})']),
    "sum(max_over_time(x[5m:1m]))": ("sum(<0>)", ['sum(max_over_time(x{__query_shard__="1_of_3"}[5m:1m]))']),
    'sum(label_replace(x, "a", "$1", "b", "(.*)"))':
        ("sum(<0>)", ['sum(label_replace(x{__query_shard__="1_of_3"}, "a", "$1", "b", "(.*)"))']),
    "abs(sum(a) - sum(b))": ("abs(sum(<0>) - sum(<1>))",
                             ['sum(a{__query_shard__="1_of_3"})', 'sum(b{__query_shard__="1_of_3"})']),
    # Not shardable: no aggregation, a raw selector beside a leg, merges that are not exact,
    # series made from nothing, two vector sides, subqueries over aggregations, user shards.
    "x": None,
    "rate(x[5m])": None,
    "sum(x) + y": None,
    "sum(x) * on() group_left y": None,
    "topk(3, x)": None,
    "quantile(0.9, x)": None,
    "stddev(x)": None,
    "count_values(\"v\", x)": None,
    "sum(a / b)": None,
    "sum(x > bool 1)": None,
    "sum(vector(1))": None,
    "sum(hour())": None,
    "sum(x * scalar(y))": None,
    "sum(absent(x))": None,
    "max_over_time(sum(x)[5m:1m])": None,
    "topk(scalar(y), sum(x))": None,
    'sum(x{__query_shard__="1_of_2"})': None,
    "1 + 2": None,
}


def describe(sq):
    """(outer text with each embedded selector as <k>, first shard query of each leg)."""
    text = str(sq.expr)
    names = list(sq.legs)
    for k, name in enumerate(names):
        text = text.replace(str(A.VectorSelector(EMBEDDED_NAME, parse_expr(
            '%s{%s=%s}' % (EMBEDDED_NAME, QUERIES_LABEL, json.dumps(name))).matchers)), "<%d>" % k)
    return text, [sq.legs[n][0] for n in names]


class RewriteTests(unittest.TestCase):

    def test_table(self):
        """Each query of the table shards into the expected outer expression and legs, or
        is left alone."""
        for query, want in TABLE.items():
            got = shard_query(parse_expr(query), 3)
            if want is None:
                self.assertIsNone(got, query)
                continue
            self.assertIsNotNone(got, query)
            self.assertEqual(describe(got), want, query)

    def test_shard_queries_cover_every_shard(self):
        """A leg holds one query per shard, 1_of_n .. n_of_n, each otherwise the same and each
        parseable PromQL; the rewritten outer expression prints back to a parseable query."""
        got = shard_query(parse_expr('avg by (a) (rate(x{b=~"c.*"}[5m]))'), 16)
        self.assertEqual(got.sharded_queries, 32)
        for queries in got.legs.values():
            self.assertEqual(len(queries), 16)
            for i, q in enumerate(queries):
                self.assertIn('__query_shard__="%d_of_16"' % (i + 1), q)
                self.assertEqual(q.replace('__query_shard__="%d_of_16",' % (i + 1), ""),
                                 queries[0].replace('__query_shard__="1_of_16",', ""))
                parse_expr(q)
        parse_expr(str(got.expr))

    def test_legs_counted(self):
        """Legs count as Mimir counts them: avg is two, a repeated leg runs once."""
        self.assertEqual(shardable_legs(parse_expr("sum(x)")), 1)
        self.assertEqual(shardable_legs(parse_expr("avg(x)")), 2)
        self.assertEqual(shardable_legs(parse_expr("sum(x) / count(y) + max(z)")), 3)
        self.assertEqual(shardable_legs(parse_expr("rate(x[1m])")), 0)

    def test_long_operator_chains_left_alone(self):
        """A chain of thousands of operators is not sharded (and does not crash)."""
        q = " or ".join("sum(x%d)" % i for i in range(3000))
        got = shard_query(parse_expr(q), 2)
        if got is not None:
            self.assertEqual(len(got.legs), 3000)
