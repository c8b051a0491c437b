"""Query sharding's rewrite: a PromQL tree -> an outer tree over embedded per-shard queries.

Following Mimir's astmapper (querymiddleware/astmapper/sharding.go, parallel.go): an
aggregation `sum`, `min`, `max`, `count`, `avg` or `group` (with `by`/`without`) whose argument
holds no other aggregation and only functions and operators that act series by series becomes
one "leg": `n` queries, the same aggregation over the argument with `{__query_shard__="i_of_n"}`
added to every selector, merged by an outer aggregation (`sum` of per-shard sums and counts,
`min` of mins, ...; `avg` is `sum / count`). Binary operations are sharded only when every
selector on both sides ends up in a leg, and non-shardable aggregations and function calls are
looked into, so `histogram_quantile(0.9, sum by (le) (rate(x[5m])))` shards the inner sum. A
leg appears in the outer tree as the selector `__embedded_queries__{__queries__="[json list of
the shard queries]"}`, which components/querysharding.py answers with the union of the shard
queries' results; the outer tree selects nothing else (checked), so the query-frontend can
evaluate it from those results alone. Not sharded (as Mimir, or stricter): topk/bottomk,
quantile, stddev/stdvar, count_values, limitk (their partial results do not merge exactly),
subqueries and calls over subqueries at the top, and anything using absent, vector, time,
scalar, sort*, histogram_quantile, info or limit* inside a leg."""
import json
from dataclasses import dataclass
from typing import Any, Optional

from urdar.engine.matchers import MATCH_NOT_REGEXP, MATCH_REGEXP, Matcher
from urdar.engine.sharding import SHARD_LABEL, ShardSelector
from urdar.promql import ast as A

EMBEDDED_NAME = "__embedded_queries__"
QUERIES_LABEL = "__queries__"

# Aggregations whose per-shard results merge exactly (floats: up to summation order).
SHARDABLE_AGGREGATIONS = frozenset(("sum", "min", "max", "count", "avg", "group"))
# Per-shard partial results -> the outer aggregation that merges them.
_OUTER_OP = {"sum": "sum", "min": "min", "max": "max", "count": "sum", "group": "group"}
# Functions that must not run per shard: they make series out of nothing (absent, vector,
# time, scalar of a part), or need every series at once (sort*, histogram_quantile, info,
# limitk). Mimir's NonParallelFuncs plus `scalar`, which is per-shard wrong as well.
NON_PARALLEL_FUNCS = frozenset((
    "absent", "absent_over_time", "info", "histogram_quantile", "limitk", "limit_ratio", "sort",
    "sort_desc", "sort_by_label", "sort_by_label_desc", "time", "vector", "histogram_avg",
    "scalar"))
# Functions whose missing argument is vector(time()): a series out of nothing again.
_DEFAULT_TIME_ARG = frozenset(("day_of_month", "day_of_week", "day_of_year", "days_in_month",
                               "hour", "minute", "month", "year"))


@dataclass
class ShardedQuery:
    """The rewrite of one query: `expr`, the outer tree, and `legs`, its embedded selectors'
    shard queries keyed by the `__queries__` value that names them."""
    expr: Any
    legs: dict

    @property
    def sharded_queries(self) -> int:
        """How many queries the frontend sends to queriers for one evaluation of `expr`."""
        return sum(len(qs) for qs in self.legs.values())


def _aggregates(node: Any) -> bool:
    return any(isinstance(n, A.AggregateExpr) for n in A.walk(node))


def _constant_scalar(node: Any) -> bool:
    """Numbers, and operators over numbers and time(): the same in every shard."""
    for n in A.walk(node):
        if isinstance(n, (A.NumberLiteral, A.UnaryExpr, A.ParenExpr)):
            continue
        if isinstance(n, A.BinaryExpr) and not n.return_bool:
            continue
        if isinstance(n, A.Call) and n.func.name == "time":
            continue
        return False
    return True


def _subquery_call(node: Any) -> bool:
    for arg in node.args:
        while isinstance(arg, A.ParenExpr):
            arg = arg.expr
        if isinstance(arg, A.SubqueryExpr):
            return True
    return False


def can_parallelize(node: Any) -> bool:
    """Whether `node` gives the same answer evaluated per shard and merged (Mimir's
    CanParallelize): every part acts on series one by one."""
    if node is None:
        return True
    if isinstance(node, A.AggregateExpr):
        return (node.op in SHARDABLE_AGGREGATIONS and node.expr is not None
                and not _aggregates(node.expr) and can_parallelize(node.expr))
    if isinstance(node, A.BinaryExpr):
        # Only vector-op-constant: two vector sides match series across shards.
        def one_side(a: Any, b: Any) -> bool:
            return (can_parallelize(a) and not _aggregates(a) and not _constant_scalar(a)
                    and _constant_scalar(b))
        return (node.matching is None and not node.return_bool
                and (one_side(node.lhs, node.rhs) or one_side(node.rhs, node.lhs)))
    if isinstance(node, A.Call):
        name = node.func.name
        if name in NON_PARALLEL_FUNCS or (name in _DEFAULT_TIME_ARG and not node.args):
            return False
        return all(can_parallelize(a) for a in node.args)
    if isinstance(node, A.SubqueryExpr):
        return not _aggregates(node.expr) and can_parallelize(node.expr)
    if isinstance(node, (A.ParenExpr, A.UnaryExpr)):
        return can_parallelize(node.expr)
    return isinstance(node, (A.VectorSelector, A.MatrixSelector, A.NumberLiteral,
                             A.StringLiteral))


def longest_regexp_bytes(expr: Any) -> int:
    """Bytes of the longest =~ / !~ matcher value in `expr` (Mimir's sharding regexp limit)."""
    longest = 0
    for n in A.walk(expr):
        if isinstance(n, A.VectorSelector):
            for m in n.matchers:
                if m.kind in (MATCH_REGEXP, MATCH_NOT_REGEXP):
                    longest = max(longest, len(m.value.encode("utf-8", "surrogateescape")))
    return longest


class _Mapper:
    def __init__(self, shards: int) -> None:
        self.shards = shards
        self.legs: dict = {}
        self._all: dict = {}      # id(node) -> whether every selector under it gets sharded

    def shards_all(self, node: Any) -> bool:
        """Whether mapping `node` leaves no selector outside a leg (Mimir's Analyze)."""
        key = id(node)
        got = self._all.get(key)
        if got is None:
            got = self._all[key] = self._shards_all(node)
        return got

    def _shards_all(self, node: Any) -> bool:
        if isinstance(node, (A.NumberLiteral, A.StringLiteral)):
            return True
        if isinstance(node, (A.ParenExpr, A.UnaryExpr)):
            return self.shards_all(node.expr)
        if isinstance(node, A.AggregateExpr):
            if node.op in SHARDABLE_AGGREGATIONS and can_parallelize(node):
                return True
            return (node.expr is not None and self.shards_all(node.expr)
                    and (node.param is None or self.shards_all(node.param)))
        if isinstance(node, A.BinaryExpr):
            return self.shards_all(node.lhs) and self.shards_all(node.rhs)
        if isinstance(node, A.Call):
            if _subquery_call(node):
                return False
            return all(self.shards_all(a) for a in node.args)
        return False      # selectors and subqueries outside a leg

    def map(self, node: Any) -> Any:
        """`node`, rewritten in place where it can be; the replacement node."""
        if isinstance(node, A.AggregateExpr):
            if node.op in SHARDABLE_AGGREGATIONS and can_parallelize(node):
                return self.shard_aggregate(node)
            if node.expr is not None:
                node.expr = self.map(node.expr)
            if node.param is not None:
                node.param = self.map(node.param)
            return node
        if isinstance(node, A.BinaryExpr):
            # One sharded side with an unsharded one would leave a raw selector for the
            # frontend to fetch: shard both sides or neither (Mimir does the same).
            if self.shards_all(node):
                node.lhs = self.map(node.lhs)
                node.rhs = self.map(node.rhs)
            return node
        if isinstance(node, A.Call):
            if not _subquery_call(node):
                node.args = [self.map(a) for a in node.args]
            return node
        if isinstance(node, (A.ParenExpr, A.UnaryExpr)):
            node.expr = self.map(node.expr)
            return node
        return node

    def shard_aggregate(self, node: Any) -> Any:
        if node.op == "avg":
            total = self._outer("sum", node, self._leg("sum", node))
            count = self._outer("sum", node, self._leg("count", node))
            return A.ParenExpr(A.BinaryExpr("/", total, count,
                                            A.VectorMatching(card=A.CARD_ONE_TO_ONE)))
        return self._outer(_OUTER_OP[node.op], node, self._leg(node.op, node))

    @staticmethod
    def _outer(op: str, node: Any, embedded: Any) -> Any:
        return A.AggregateExpr(op, embedded, None, list(node.grouping), node.without)

    def _leg(self, op: str, node: Any) -> Any:
        """The embedded selector for `op` over node's argument, one query per shard."""
        inner = A.AggregateExpr(op, node.expr, None, list(node.grouping), node.without)
        selectors = [n for n in A.walk(node.expr) if isinstance(n, A.VectorSelector)]
        queries = []
        for i in range(self.shards):
            value = ShardSelector(i, self.shards).label_value
            for vs in selectors:
                vs.matchers.insert(0, Matcher("=", SHARD_LABEL, value))
            try:
                queries.append(str(inner))
            finally:
                for vs in selectors:
                    vs.matchers.pop(0)
        name = json.dumps(queries, separators=(",", ":"))
        self.legs[name] = queries     # the same leg twice (sum(x) / sum(x)) runs once
        return A.VectorSelector(EMBEDDED_NAME, [Matcher("=", "__name__", EMBEDDED_NAME),
                                                Matcher("=", QUERIES_LABEL, name)])


def shard_query(expr: Any, shards: int) -> Optional[ShardedQuery]:
    """The sharded rewrite of `expr` (rewritten in place: pass a tree of your own) into
    `shards` shards, or None when no part of it shards, a selector would stay outside every
    leg, or a selector has a `__query_shard__` matcher of its own."""
    if shards < 1:
        return None
    for n in A.walk(expr):
        if isinstance(n, A.VectorSelector) and any(m.name == SHARD_LABEL for m in n.matchers):
            return None   # the user picked a shard already: the query runs as written
    mapper = _Mapper(shards)
    try:
        out = mapper.map(expr)
    except RecursionError:
        return None       # a chain of thousands of operators: run it as it is
    if not mapper.legs:
        return None
    for n in A.walk(out):
        if isinstance(n, A.VectorSelector) and n.name != EMBEDDED_NAME:
            return None
        if isinstance(n, A.SubqueryExpr):
            return None   # never reached today; the outer grid must be the query's own
    return ShardedQuery(out, mapper.legs)


def shardable_legs(expr: Any) -> int:
    """How many legs `expr` shards into (Mimir counts them by sharding into one shard)."""
    got = shard_query(expr, 1)
    return len(got.legs) if got is not None else 0
