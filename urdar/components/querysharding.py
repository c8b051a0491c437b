"""The query-frontend's sharding step (-query-frontend.parallelize-shardable-queries): one
range query (a split part) or instant query rewritten by promql/astmapper.py into per-shard
queries that run through the querier at once, merged by evaluating the outer tree over their
results; no HTTP. An instant query's shard queries are instant queries at its time, whose
vectors the outer evaluation reads as one sample each.

`plan_sharding` (pool) decides a query's shard count from the tenant's limits as Mimir's
querysharding.go does: `query_sharding_total_shards` (<= 1: off), no sharding when a regexp
matcher is longer than `query_sharding_max_regexp_size_bytes`, and at most
`query_sharding_max_sharded_queries` shard queries per query over all its split parts and legs.
`QuerySharding.range_query` runs one part: every shard query of every leg goes to the querier
(at most `concurrency` at a time), then, in the pool, the outer tree is evaluated by the PromQL
engine over an `EmbeddedQueryable` that answers each `__embedded_queries__` selector with the
union of its shard queries' matrices. Those matrices hold a value exactly at each step of the
part's grid, so the outer evaluation reads them with a 1 ms lookback: a step a shard has no
value for stays empty instead of borrowing the previous step's value."""
import logging
from bisect import bisect_left, bisect_right
from typing import Any, Callable, Optional

from twisted.internet import defer

from urdar.components.querier import QueryCanceled, QueryTimeout, shorter_timeout
from urdar.promql import astmapper
from urdar.promql.value import QueryCanceled as EvalCanceled, QueryError
from urdar.promql.value import QueryTimeout as EvalTimeout, Result

log = logging.getLogger("urdar.frontend")

# The outer evaluation only reads the samples at its own steps (see the module docstring).
OUTER_LOOKBACK_MS = 1


class EmbeddedQueryable:
    """The outer evaluation's Queryable: `results` maps an embedded selector's `__queries__`
    value to the concatenated [(labels, ts, vals)] of its shard queries. Series of different
    shards may share labels (`sum by (job)` per shard); the outer aggregation merges them."""

    def __init__(self, results: dict, check: Optional[Callable[[], None]] = None) -> None:
        self._results = results
        self._check = check

    def select(self, matchers: Any, mint: int, maxt: int) -> list:
        if self._check is not None:
            self._check()
        name = next((m.value for m in matchers if m.name == astmapper.QUERIES_LABEL), None)
        if name is None or name not in self._results:
            raise LookupError("the sharded query selects %r, which is no embedded query"
                              % ([str(m) for m in matchers],))
        out: list = []
        for item in self._results[name]:
            labels, ts, vs = item[0], item[1], item[2]
            lo, hi = bisect_left(ts, mint), bisect_right(ts, maxt)
            if len(item) > 3:
                # Native histograms go on as the storage contract's 6-tuple. A shard answer
                # read back from the API's JSON lacks their schema and spans: such a
                # histogram cannot be computed on again.
                hts, hvs = item[3], item[4]
                if any(getattr(h, "json", None) is not None for h in hvs):
                    raise QueryError("native histograms cannot be aggregated across query "
                                     "shards yet (-query-frontend.parallelize-shardable-queries"
                                     "=false evaluates them unsharded)")
                hlo, hhi = bisect_left(hts, mint), bisect_right(hts, maxt)
                if hi > lo or hhi > hlo:
                    out.append((labels, ts[lo:hi], vs[lo:hi], None, hts[hlo:hhi], hvs[hlo:hhi]))
                continue
            if hi > lo:
                out.append((labels, ts[lo:hi], vs[lo:hi]) if (lo, hi) != (0, len(ts))
                           else (labels, ts, vs))
        return out


class ShardingPlan:
    """What plan_sharding decided for one query: `attempted` (the tenant's limits allow more
    than one shard) and `query` (the rewrite, None when nothing in the query shards)."""

    def __init__(self, attempted: bool, query: Optional[astmapper.ShardedQuery]) -> None:
        self.attempted = attempted
        self.query = query

    @property
    def shards(self) -> int:
        """Shards per leg (0: not sharded); it is part of the results cache key."""
        if self.query is None:
            return 0
        return max(len(qs) for qs in self.query.legs.values())


NOT_SHARDED = ShardingPlan(False, None)


def plan_sharding(text: str, parse: Callable[[str], Any], total_shards: int,
                  max_sharded_queries: int, max_regexp_bytes: int,
                  total_queries: int) -> ShardingPlan:
    """Pool: the ShardingPlan of `text` run as `total_queries` split parts."""
    if total_shards <= 1:
        return NOT_SHARDED
    expr = parse(text)
    if max_regexp_bytes > 0 and astmapper.longest_regexp_bytes(expr) > max_regexp_bytes:
        return NOT_SHARDED
    shards = total_shards
    if max_sharded_queries > 0:
        legs = astmapper.shardable_legs(expr) or 1
        shards = max(1, min(shards, max_sharded_queries // max(1, total_queries) // legs))
        expr = parse(text)          # shardable_legs rewrote the first tree
    if shards <= 1:
        return NOT_SHARDED
    return ShardingPlan(True, astmapper.shard_query(expr, shards))


def _shard_part(result: Any) -> tuple:
    """Pool (the querier's render hook): a shard query's (matrix, warnings, infos)."""
    return result.value, list(result.warnings), list(result.infos)


def _shard_instant(result: Any) -> tuple:
    """Pool (the querier's render hook): an instant shard query's vector as a matrix with one
    sample at the evaluation time, what the outer evaluation's selectors read."""
    from array import array
    if result.type != "vector":
        raise ValueError("a shard query answered a %s, not a vector" % result.type)
    t = result.t
    return ([(labels, array("q", (t,)), array("d", (v,))) for labels, v in result.value],
            list(result.warnings), list(result.infos))


def _first_error(f: Any) -> Any:
    if f.check(defer.FirstError):
        return f.value.subFailure
    return f


class QuerySharding:
    """Runs sharded parts through `querier` (a frontend.RangeQuerier); owns Mimir's
    query-sharding metrics."""

    def __init__(self, querier: Any, offload: Any, clock: Any, pool: str = "query",
                 registry: Any = None) -> None:
        self.querier = querier
        self.offload = offload
        self.clock = clock
        self.pool = pool
        from prometheus_client import Counter, Histogram
        self.m_attempts = Counter("cortex_frontend_query_sharding_rewrites_attempted",
                                  "Total number of queries the query-frontend attempted to "
                                  "shard.", registry=registry)
        self.m_successes = Counter("cortex_frontend_query_sharding_rewrites_succeeded",
                                   "Total number of queries the query-frontend successfully "
                                   "rewritten in a shardable way.", registry=registry)
        self.m_sharded = Counter("cortex_frontend_sharded_queries", "Total number of sharded "
                                 "queries.", registry=registry)
        self.m_per_query = Histogram("cortex_frontend_sharded_queries_per_query", "Number of "
                                     "sharded queries a single query has been rewritten to.",
                                     buckets=[2.0 ** k for k in range(1, 11)], registry=registry)

    def count(self, plan: ShardingPlan) -> None:
        """Account one part that reached the sharding step (Mimir counts per request)."""
        if not plan.attempted:
            return
        self.m_attempts.inc()
        if plan.query is not None:
            n = plan.query.sharded_queries
            self.m_successes.inc()
            self.m_sharded.inc(n)
            self.m_per_query.observe(n)

    def range_query(self, tenant: str, sharded: astmapper.ShardedQuery, text: str, start: int,
                    end: int, step: int, lookback_ms: Optional[int], render: Any,
                    timeout_s: Optional[float], concurrency: int,
                    stats: Any = None) -> "defer.Deferred[Any]":
        """Deferred[render(Result)] of `text` over [start, end] evaluated through its shards;
        `stats` (components/querystats.QueryStats) gets every shard query's fetch counts."""
        return self._run(tenant, sharded, text, start, end, step, lookback_ms, render,
                         timeout_s, concurrency, stats)

    def instant_query(self, tenant: str, sharded: astmapper.ShardedQuery, text: str, t: int,
                      lookback_ms: Optional[int], render: Any, timeout_s: Optional[float],
                      concurrency: int, stats: Any = None) -> "defer.Deferred[Any]":
        """Deferred[render(Result)] of `text` at t evaluated through its shards: each shard
        query is an instant query at t, the outer tree is evaluated at t over their vectors."""
        return self._run(tenant, sharded, text, t, t, 0, lookback_ms, render, timeout_s,
                         concurrency, stats)

    def _run(self, tenant: str, sharded: astmapper.ShardedQuery, text: str, start: int,
             end: int, step: int, lookback_ms: Optional[int], render: Any,
             timeout_s: Optional[float], concurrency: int,
             stats: Any = None) -> "defer.Deferred[Any]":
        """Both: step 0 is an instant query at start."""
        sem = defer.DeferredSemaphore(max(1, concurrency))
        calls = [(name, q) for name, qs in sharded.legs.items() for q in qs]
        cancelled: list = []

        def begin(q: str) -> Any:
            if cancelled:        # still waiting for a slot when the query went away
                raise defer.CancelledError()
            if not step:
                return self.querier.instant_query(tenant, q, start, lookback_ms,
                                                  render=_shard_instant, timeout_s=timeout_s,
                                                  stats=stats)
            return self.querier.range_query(tenant, q, start, end, step, lookback_ms,
                                            render=_shard_part, timeout_s=timeout_s, stats=stats)
        shards = defer.gatherResults([sem.run(begin, q) for _, q in calls], consumeErrors=True)

        def cancel(_: Any) -> None:
            cancelled.append(True)
            shards.cancel()
        out: "defer.Deferred[Any]" = defer.Deferred(canceller=cancel)
        shards.addErrback(_first_error).chainDeferred(out)
        timeout = shorter_timeout(getattr(self.querier, "timeout_s", 0), timeout_s)
        deadline = self.clock.seconds() + timeout if timeout else None
        max_samples = getattr(self.querier, "max_samples", 50_000_000)

        def evaluate(job: Any, results: list) -> Any:
            by_name: dict = {}
            warnings: list = []
            infos: list = []
            for (name, _), (matrix, w, i) in zip(calls, results):
                by_name.setdefault(name, []).extend(matrix)
                warnings.extend(w)
                infos.extend(i)

            def check() -> None:
                if job.cancelled:
                    raise QueryCanceled()
                if deadline is not None and self.clock.seconds() > deadline:
                    raise QueryTimeout()
            from urdar.promql.engine import Engine
            eng = Engine(EmbeddedQueryable(by_name, check), lookback_ms=OUTER_LOOKBACK_MS,
                         max_samples=max_samples, clock=self.clock, deadline_s=deadline,
                         cancelled=lambda: job.cancelled)
            try:
                if step:
                    res = eng.range(text, start, end, step, OUTER_LOOKBACK_MS, expr=sharded.expr)
                else:
                    res = eng.instant(text, start, OUTER_LOOKBACK_MS, expr=sharded.expr)
            except EvalTimeout:
                raise QueryTimeout()
            except EvalCanceled:
                raise QueryCanceled()
            # Shards repeat each other's annotations; each is kept once, in order.
            res = Result(res.type, res.value, res.t,
                         list(dict.fromkeys(warnings + list(res.warnings))),
                         list(dict.fromkeys(infos + list(res.infos))))
            return render(res) if render is not None else res
        return out.addCallback(
            lambda results: self.offload.run_cancellable(self.pool, evaluate, results))
