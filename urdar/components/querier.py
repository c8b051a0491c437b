"""The querier: reads a tenant's series from every source (ingesters, store-gateways), merged and
de-duplicated, and runs PromQL over them; no HTTP here.

One query path, in three steps, none of which blocks or does work that grows with the request on
the reactor: (1) in the "query" pool, parse (when the handler has not) and walk the tree
(promql/selectors.py) for every selector's matchers and time range; (2) on the reactor, start
every selector's read from every remote source at once and wait for all of them, so the query
waits for the slowest source, not their sum; (3) in the pool, read the in-process sources
(`select_local`: the ingester of this process, no I/O), merge, check the
fetched-series/chunks/bytes limits and evaluate over the fetched series (PrefetchedQueryable: no
I/O), rendering there too. A query over in-process sources only goes to the pool once. The deadline (-querier.timeout, or the request's shorter `timeout`)
and cancellation (the client went away) cover all three. /series, label and remote read requests
take the same road: fetch concurrently, then limits, merging and encoding in the pool. Errors carry
a cause (components/errors.py) plus, for queries, Prometheus' errorType."""
import logging
import time
from collections import OrderedDict
from operator import itemgetter
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer

from urdar.components import errors as E
from urdar.components.sources import (NOTHING, MergedSource, TimeBoundedSource, apply_limit,
                                      gather, local_read, merge_exemplars, merge_series)
from urdar.engine.index import sort_label_keys
from urdar.engine.labels import decode_labels
from urdar.engine.matchers import Matcher
from urdar.engine.sharding import ShardError, split_shard_matchers
from urdar.promql import engine as promql
from urdar.promql.selectors import (PrefetchedQueryable, SelectHints, matchers_key,
                                    merge_selections, selections)

__all__ = ["Querier", "QueryError", "query_length_error", "QueryTimeout", "QueryCanceled", "QueryLimitError",
           "TimeBoundedSource", "merge_series", "sorted_union"]

log = logging.getLogger("urdar.querier")

INT64_MIN = -(2 ** 63)
INT64_MAX = 2 ** 63 - 1
# Prometheus' metadata type names, by remote-write MetricMetadata.MetricType number.
METRIC_TYPES = ("unknown", "counter", "gauge", "histogram", "gaugehistogram", "summary", "info",
                "stateset")
_ALL_SERIES = (Matcher("=~", "__name__", ".+"),)
SAMPLES_PER_CHUNK = 120      # how the head and compaction cut chunks
BYTES_PER_SAMPLE = 16        # a decoded sample as the querier holds it: int64 t + float64 v
# Reads one request keeps in flight at once: enough that slow sources overlap, few enough that a
# query with thousands of selectors does not fill the query pool's queue by itself (PoolFull).
MAX_CONCURRENT_SELECTS = 8
# -querier.active-series-results-max-size-bytes' default: larger active_series answers are 413.
ACTIVE_SERIES_MAX_BYTES = 419430400
# Queries up to this many characters are parsed and planned on the reactor (see _query).
SMALL_QUERY_CHARS = 2048
PARSED_CACHE_SIZE = 512       # short queries' parsed trees kept (Querier._parsed)
_LIMIT_ADVICE = ("Consider reducing the time range and/or number of series selected by the query. "
                 "One way to reduce the number of selected series is to add more label matchers to "
                 "the query. Otherwise, to adjust the related per-tenant limit, configure %s, or "
                 "contact your service administrator.")


class QueryError(E.ComponentError):
    """A failed query; its cause (execution, timeout, canceled) is also the Prometheus errorType."""


class QueryTimeout(QueryError):
    def __init__(self, where="expression evaluation"):
        super().__init__(E.TIMEOUT, "query timed out in %s" % where)


class QueryCanceled(QueryError):
    def __init__(self, where="expression evaluation"):
        super().__init__(E.CANCELED, "query was canceled in %s" % where)


class QueryLimitError(QueryError):
    """A per-query fetch limit was passed: 422 execution for queries, with Mimir's err-mimir id."""

    def __init__(self, message):
        super().__init__(E.EXECUTION, message)


def query_length_error(length_ms, limit_ms):
    """-querier.max-partial-query-length passed by one selector's time range (422, as Mimir's
    querier: a limit error is an execution error)."""
    return QueryLimitError(E.mimir_message(
        "the query time range exceeds the limit (query length: %s, limit: %s)"
        % (E.go_duration(length_ms), E.go_duration(limit_ms)), "max-query-length",
        ("querier.max-partial-query-length",)))


def check_shard_matchers(matcher_sets):
    """Raise QueryError (bad_data) if a matcher set has a malformed `__query_shard__` matcher:
    refused before any source reads with it (sources apply it per series)."""
    for ms in matcher_sets:
        try:
            split_shard_matchers(ms)
        except ShardError as exc:
            raise QueryError(E.BAD_DATA, str(exc)) from None


def shorter_timeout(configured_s, requested_s):
    """-querier.timeout (`configured_s`, 0: none), shortened (never lengthened) by a request's
    own `timeout` (`requested_s`, None or <= 0: none); 0 when neither sets one."""
    if requested_s is not None and requested_s > 0 and (not configured_s or requested_s < configured_s):
        return requested_s
    return configured_s or 0


def sorted_union(keys):
    """Distinct label keys in label order."""
    keys = list(dict.fromkeys(bytes(k) for k in keys))
    return [keys[i] for i in sort_label_keys(keys)]


class FetchLimits:
    """One request's fetch limits (0 = none): unique series (-querier.max-fetched-series-per-query),
    chunks of 120 samples (-querier.max-fetched-chunks-per-query), bytes of decoded samples
    (-querier.max-fetched-chunk-bytes-per-query), and samples (-querier.max-samples; remote read
    only, PromQL counts its own)."""

    def __init__(self, max_series=0, max_chunks=0, max_bytes=0, max_samples=0):
        self.max_series = max_series
        self.max_chunks = max_chunks
        self.max_bytes = max_bytes
        self.max_samples = max_samples

    @property
    def series_hint(self):
        """The per-select series limit that still lets check() see an excess (0 = none)."""
        return self.max_series + 1 if self.max_series else 0

    def check(self, results, stats=None):
        """Pool thread: raise QueryLimitError when `results` (lists of [(key, ts, vals)]) pass a
        limit; returns the number of unique series and adds what was fetched to `stats`
        (components/querystats.QueryStats), if given. Costs one pass over the series' lengths:
        one list's series are distinct already, and the exact chunk count is only computed when
        its upper bound (samples / 120 + series) passes the limit."""
        lists = [r for r in results if r]
        total = sum(map(len, lists))
        if len(lists) <= 1:
            n_series = total
        else:
            n_series = len({bytes(item[0]) for series in lists for item in series})
        if self.max_series and n_series > self.max_series:
            raise QueryLimitError(
                "the query exceeded the maximum number of series (limit: %d series) "
                "(err-mimir-max-series-per-query). " % self.max_series
                + _LIMIT_ADVICE % "-querier.max-fetched-series-per-query")
        counts = [_sample_counts(series) for series in lists]
        samples = sum(map(sum, counts))
        chunks = samples // SAMPLES_PER_CHUNK + total
        if self.max_chunks and chunks > self.max_chunks:
            chunks = sum(map(_chunks, counts))
        if self.max_chunks and chunks > self.max_chunks:
            raise QueryLimitError(
                "the query exceeded the maximum number of chunks (limit: %d chunks) "
                "(err-mimir-max-chunks-per-query). " % self.max_chunks
                + _LIMIT_ADVICE % "-querier.max-fetched-chunks-per-query")
        if self.max_bytes and samples * BYTES_PER_SAMPLE > self.max_bytes:
            raise QueryLimitError(
                "the query exceeded the aggregated chunks size limit (limit: %d bytes) "
                "(err-mimir-max-chunks-bytes-per-query). " % self.max_bytes
                + _LIMIT_ADVICE % "-querier.max-fetched-chunk-bytes-per-query")
        if self.max_samples and samples > self.max_samples:
            raise QueryLimitError("query processing would load too many samples into memory in "
                                  "query execution")
        if stats is not None:
            stats.add(fetched_series=n_series, fetched_chunk_bytes=samples * BYTES_PER_SAMPLE,
                      fetched_samples=samples,
                      fetched_chunks=sum(map(_chunks, counts)))
        return n_series


_CHUNK_CEIL = SAMPLES_PER_CHUNK - 1


def _sample_counts(series):
    """Per select item its samples (_samples), without a Python call per item when none has
    histograms (at most 4 items: key, ts, vals, sts) and every one has its timestamps."""
    if max(map(len, series), default=0) <= 4:
        try:
            return list(map(len, map(itemgetter(1), series)))
        except TypeError:
            pass    # a label-only read: ts None
    return [_samples(item) for item in series]


def _chunks(counts):
    """The chunks the sample counts fill: ceil(count / SAMPLES_PER_CHUNK) each, summed (map
    over C callables instead of a Python expression per series)."""
    return sum(map(SAMPLES_PER_CHUNK.__rfloordiv__, map(_CHUNK_CEIL.__add__, counts)))


def _samples(item):
    """Samples of one select item: (key, ts, vals) or, with native histograms, the 6-tuple
    (key, ts, vals, None, hts, hvs); ts None for a label-only read."""
    n = len(item[1]) if item[1] is not None else 0
    return n + len(item[4]) if len(item) > 4 and item[4] is not None else n


@dataclass(frozen=True)
class QuerierConfig:
    """The querier's settings (-querier.*): per-query deadline, sample budget, lookback."""
    timeout_s: float = 120.0            # -querier.timeout
    max_samples: int = 50_000_000       # -querier.max-samples
    lookback_ms: int = 300_000          # -querier.lookback-delta
    experimental_functions: bool = False  # -querier.promql-experimental-functions-enabled

    @classmethod
    def from_config(cls, cfg: Any) -> "QuerierConfig":
        return cls(timeout_s=cfg["querier.timeout"] / 1000.0, max_samples=cfg["querier.max_samples"],
                   lookback_ms=cfg["querier.lookback_delta"],
                   experimental_functions=cfg["querier.promql_experimental_functions_enabled"])


class Querier:
    """Reads from `sources` (components/sources.Source) for one tenant at a time; every method
    returns a Deferred and keeps the reactor free of work that grows with the request."""

    def __init__(self, sources, offload, clock, overrides, config=None, engine_factory=None,
                 pool="query", registry=None):
        config = config if config is not None else QuerierConfig()
        self.config = config
        self.sources = list(sources)
        self.source = MergedSource(self.sources, offload, pool)
        self.offload = offload
        self.clock = clock
        self.overrides = overrides
        self.timeout_s = config.timeout_s
        self.max_samples = config.max_samples
        self.lookback_ms = config.lookback_ms
        self.pool = pool
        self._engine_factory = engine_factory
        # Parsed trees of recent short queries (the ruler and dashboards send the same texts
        # again and again): parsing is a good part of a small query's fixed cost. Evaluation
        # only reads a tree, so concurrent queries share one; used on the reactor only.
        self._parsed: "OrderedDict[tuple, object]" = OrderedDict()

    # ---- helpers -------------------------------------------------------------------------------

    def _pool(self, fn, *args):
        return self.offload.run(self.pool, fn, *args)

    def _gather(self, call):
        """Call `call(source)` on every source at once; Deferred[list of results]."""
        return gather(defer.maybeDeferred(call, s) for s in self.sources)

    def limits(self, tenant, samples=False):
        lim = self.overrides.for_tenant(tenant)
        return FetchLimits(getattr(lim, "max_fetched_series_per_query", 0) or 0,
                           getattr(lim, "max_fetched_chunks_per_query", 0) or 0,
                           getattr(lim, "max_fetched_chunk_bytes_per_query", 0) or 0,
                           self.max_samples if samples else 0)

    def time_limits(self, tenant):
        """(max partial query length, max query lookback) in ms for the tenant (0 = none); the
        deprecated -store.max-query-length stands in for an unset partial length, as in Mimir."""
        lim = self.overrides.for_tenant(tenant)
        legacy = getattr(lim, "max_query_length", 0) or 0
        return (getattr(lim, "max_partial_query_length", 0) or legacy,
                getattr(lim, "max_query_lookback", 0) or 0)

    def clamp_to_lookback(self, tenant, mint, maxt):
        """mint moved up to now - -querier.max-query-lookback (as Mimir's querier does for
        series and label requests), or None when [mint, maxt] lies wholly before it."""
        lookback = self.time_limits(tenant)[1]
        if not lookback:
            return mint
        min_start = int(self.clock.seconds() * 1000) - lookback
        return None if maxt < min_start else max(mint, min_start)

    def _timeout(self, timeout_s):
        return shorter_timeout(self.timeout_s, timeout_s)

    def _deadline(self, d, timeout, where):
        if timeout:
            def timed_out(result, _timeout):
                raise QueryTimeout(where)
            d.addTimeout(timeout, self.clock, onTimeoutCancel=timed_out)
        return d

    def select(self, tenant, matchers, mint, maxt, samples=True, limit=0):
        """Deferred[[(key, ts, vals)]] merged over sources, in label order."""
        return self.source.select(tenant, tuple(matchers), SelectHints(
            mint, maxt, func="" if samples else "series", limit=limit))

    def select_all(self, tenant, reads):
        """Deferred[[result per (matchers, hints)]]: every read started as soon as one of
        MAX_CONCURRENT_SELECTS slots is free (each read asks all sources at once)."""
        sem = defer.DeferredSemaphore(MAX_CONCURRENT_SELECTS)
        return gather(sem.run(self.source.select, tenant, tuple(ms), hints) for ms, hints in reads)

    def _start_reads(self, tenant, reads):
        """(plans, waits) for reads [(matchers, hints)]: per read, in source order, each
        source's local read (a call for a pool thread) or the index in `waits` of its remote
        read, started now (at most MAX_CONCURRENT_SELECTS of them at once); sources empty for
        the read's range are left out."""
        plans, waits = [], []
        sem = None
        for ms, hints in reads:
            ms = tuple(ms)
            plan = []
            for source in self.sources:
                call = local_read(source, tenant, ms, hints)
                if call is NOTHING:
                    continue
                if call is None:
                    if sem is None:
                        sem = defer.DeferredSemaphore(MAX_CONCURRENT_SELECTS)
                    plan.append(len(waits))
                    waits.append(sem.run(source.select, tenant, ms, hints))
                else:
                    plan.append(call)
            plans.append(plan)
        return plans, waits

    @staticmethod
    def _reader(reads, plans, remote):
        """reader(job) for a pool thread: per read its answer, the local reads done there and
        merged with the remote ones as MergedSource merges (in source order: the first source
        wins on equal timestamps), at most the read's limit."""
        def reader(job):
            results = []
            for (_, hints), plan in zip(reads, plans):
                parts = []
                for p in plan:
                    if job.cancelled:
                        raise QueryCanceled()
                    r = remote[p] if isinstance(p, int) else p()
                    if r:
                        parts.append(r)
                if len(parts) > 1:
                    parts = [merge_series(parts, hints.samples)]
                results.append(apply_limit(parts[0], hints) if parts else [])
            return results
        return reader

    # ---- metadata endpoints --------------------------------------------------------------------

    def series(self, tenant, matcher_sets, mint, maxt, limit=0, render=None, timeout_s=None):
        """Deferred[render(keys, truncated)] (or (keys, truncated)): label keys of series matching
        any matcher set with data in [mint, maxt], at most `limit` (0: all) in label order; the
        fetch limits and the deadline apply. Merging and rendering run in the pool."""
        try:
            check_shard_matchers(matcher_sets)
        except QueryError:
            return defer.fail()
        mint = self.clamp_to_lookback(tenant, mint, maxt)
        if mint is None:
            return defer.maybeDeferred(render, [], False) if render is not None \
                else defer.succeed(([], False))
        lim = self.limits(tenant)
        # Read one series past either limit so that passing it can be told from meeting it.
        caps = [c for c in (limit + 1 if limit else 0, lim.series_hint) if c]
        hint = min(caps) if caps else 0
        d = self.select_all(tenant, [(ms, SelectHints(mint, maxt, func="series", limit=hint))
                                     for ms in matcher_sets])

        def finish(results):
            lim.check(results)
            keys = sorted_union(k for r in results for k, _, _ in r)
            truncated = bool(limit) and len(keys) > limit
            if truncated:
                keys = keys[:limit]
            return render(keys, truncated) if render is not None else (keys, truncated)
        d.addCallback(lambda results: self._pool(finish, results))
        return self._deadline(d, self._timeout(timeout_s), "series request")

    def _strings(self, fetch, matcher_sets, mint, maxt, limit):
        sets = list(matcher_sets) or [()]
        try:
            check_shard_matchers(sets)
        except QueryError:
            return defer.fail()
        hints = SelectHints(mint, maxt, limit=limit + 1 if limit else 0)
        d = gather(fetch(ms, hints) for ms in sets)

        def union(results):
            if len(results) == 1:
                return results[0]
            return self._pool(lambda: sorted({v for r in results for v in r}))
        return self._deadline(d.addCallback(union), self.timeout_s, "label request")

    def label_names(self, tenant, matcher_sets, mint, maxt, limit=0):
        """Deferred[sorted label names] of series matching any matcher set (all series if none);
        `limit` > 0 returns at most limit + 1, so callers can tell a truncation."""
        mint = self.clamp_to_lookback(tenant, mint, maxt)
        if mint is None:
            return defer.succeed([])
        return self._strings(lambda ms, h: self.source.label_names(tenant, ms, h),
                             matcher_sets, mint, maxt, limit)

    def label_values(self, tenant, name, matcher_sets, mint, maxt, limit=0):
        mint = self.clamp_to_lookback(tenant, mint, maxt)
        if mint is None:
            return defer.succeed([])
        return self._strings(lambda ms, h: self.source.label_values(tenant, name, ms, h),
                             matcher_sets, mint, maxt, limit)

    def metadata(self, tenant, limit=-1, limit_per_metric=-1, metric=""):
        """Deferred[{metric: [{"type","help","unit"}]}] with Prometheus' limit semantics
        (limit: metrics, limit_per_metric: entries per metric; negative = no limit)."""
        def merge(results):
            out = {}
            for res in results:
                for name, entries in res.items():
                    if metric and name != metric:
                        continue
                    lst = out.setdefault(name, [])
                    for typ, help_, unit in entries:
                        md = {"type": METRIC_TYPES[typ] if 0 <= typ < len(METRIC_TYPES) else "unknown",
                              "help": help_, "unit": unit}
                        if md not in lst:
                            lst.append(md)
            res = {}
            for name in sorted(out):
                if limit >= 0 and len(res) >= limit:
                    break
                entries = out[name]
                if limit_per_metric > 0:
                    entries = entries[:limit_per_metric]
                res[name] = entries
            return res
        return self._gather(lambda s: s.metadata(tenant)).addCallback(
            lambda results: self._pool(merge, results))

    def exemplars(self, tenant, matcher_sets, mint, maxt):
        """Deferred[[(series key, [(t, v, exemplar labels key)])]] in label order."""
        sets = list(matcher_sets)

        def merge(results):
            return merge_exemplars([res for per_source in results for res in per_source])
        d = self._gather(lambda s: gather(s.exemplars(tenant, ms, mint, maxt) for ms in sets))
        return d.addCallback(lambda results: self._pool(merge, results))

    # ---- cardinality (ingesters' heads only, as Mimir) -------------------------------------------

    def cardinality_enabled(self, tenant):
        return bool(getattr(self.overrides.for_tenant(tenant), "cardinality_analysis_enabled", False))

    def _head_series(self, tenant, matchers, build):
        """Deferred[build((distinct head keys matching, total head series))], built in the pool."""
        ms = tuple(matchers) or _ALL_SERIES

        def merge(results):
            keys = set()
            total = 0
            for ks, n in results:
                keys.update(bytes(k) for k in ks)
                total = max(total, n)
            return build((keys, total))
        return self._gather(lambda s: s.head_series(tenant, ms)).addCallback(
            lambda results: self._pool(merge, results))

    def label_names_cardinality(self, tenant, matchers, limit):
        """Deferred[Mimir's label_names cardinality response dict]."""
        def build(res):
            keys, _ = res
            values = {}
            for key in keys:
                for n, v in decode_labels(key):
                    values.setdefault(n, set()).add(v)
            items = sorted(values.items(), key=lambda kv: (-len(kv[1]), kv[0]))
            return {"label_values_count_total": sum(len(v) for v in values.values()),
                    "label_names_count": len(values),
                    "cardinality": [{"label_name": n, "label_values_count": len(v)}
                                    for n, v in items[:limit]]}
        return self._head_series(tenant, matchers, build)

    def label_values_cardinality(self, tenant, names, matchers, limit):
        """Deferred[Mimir's label_values cardinality response dict]."""
        wanted = set(names)

        def build(res):
            keys, total = res
            counts = {n: {} for n in names}
            for key in keys:
                for n, v in decode_labels(key):
                    if n in wanted:
                        c = counts[n]
                        c[v] = c.get(v, 0) + 1
            labels = []
            for n in counts:
                vals = sorted(counts[n].items(), key=lambda kv: (-kv[1], kv[0]))
                labels.append({"label_name": n, "label_values_count": len(vals),
                               "series_count": sum(c for _, c in vals),
                               "cardinality": [{"label_value": v, "series_count": c}
                                               for v, c in vals[:limit]]})
            labels.sort(key=lambda x: (-x["series_count"], x["label_name"]))
            return {"series_count_total": total, "labels": labels}
        return self._head_series(tenant, matchers, build)

    def active_series(self, tenant, matchers, render, max_bytes=None):
        """Deferred[render(label sets, max_bytes)]: the tenant's head series matching
        `matchers`, de-duplicated over the ingesters, in label order (Mimir's
        /api/v1/cardinality/active_series); render runs in the pool and may refuse a response
        over max_bytes."""
        if max_bytes is None:
            max_bytes = ACTIVE_SERIES_MAX_BYTES

        def build(res):
            keys, _ = res
            keys = list(keys)
            return render([decode_labels(keys[i]) for i in sort_label_keys(keys)], max_bytes)
        return self._head_series(tenant, matchers, build)

    # ---- remote read ---------------------------------------------------------------------------

    def remote_read(self, tenant, queries, encode=None):
        """queries = [(mint, maxt, matchers)]; Deferred[encode(results)] (or the results, one
        [(key, ts, vals)] per query). All queries are read concurrently; the fetch limits, the
        sample limit (-querier.max-samples) and the deadline (-querier.timeout) apply; encoding
        runs in the pool."""
        try:
            check_shard_matchers(ms for _, _, ms in queries)
        except QueryError:
            return defer.fail()
        lim = self.limits(tenant, samples=True)
        d = self.select_all(tenant, [(ms, SelectHints(mint, maxt, limit=lim.series_hint))
                                     for mint, maxt, ms in queries])

        def finish(results):
            lim.check(results)
            return encode(results) if encode is not None else results
        d.addCallback(lambda results: self._pool(finish, results))
        return self._deadline(d, self.timeout_s, "remote read")

    # ---- PromQL --------------------------------------------------------------------------------

    def engine(self, queryable, deadline_s=None, cancelled=None):
        if self._engine_factory is not None:
            return self._engine_factory(queryable, self)
        from urdar.promql.engine import Engine
        # The evaluator checks the same deadline and cancellation flag inside its loops, so a
        # timed-out query frees its worker thread instead of computing an unwanted answer.
        from urdar.promql.parser import Options
        return Engine(queryable, lookback_ms=self.lookback_ms, max_samples=self.max_samples,
                      options=Options(enable_experimental_functions=self.config.experimental_functions),
                      clock=self.clock, deadline_s=deadline_s, cancelled=cancelled)

    def instant_query(self, tenant, query, t, lookback_ms=None, render=None, timeout_s=None,
                      parse=None, stats=None):
        """Deferred[Result] (or render(Result), computed in the pool) for `query` at t ms.
        `parse(text) -> tree` (the handler's, raising its parameter errors; PromQL's parser by
        default) runs once, in the pool, under the deadline. timeout_s (the request's `timeout`)
        can only shorten -querier.timeout. `stats` (components/querystats.QueryStats) gets the
        series, chunks and bytes fetched and the wall time spent."""
        return self._query(tenant, query, parse, t, t, 0, lookback_ms, render, timeout_s, stats)

    def range_query(self, tenant, query, start, end, step, lookback_ms=None, render=None,
                    timeout_s=None, parse=None, stats=None):
        return self._query(tenant, query, parse, start, end, step, lookback_ms, render, timeout_s,
                           stats)

    def _query(self, tenant, text, parse, start, end, step, lookback_ms, render, timeout_s,
               stats=None):
        timeout = self._timeout(timeout_s)
        deadline = self.clock.seconds() + timeout if timeout else None
        lookback = self.lookback_ms if lookback_ms is None else lookback_ms
        lim = self.limits(tenant)
        started = time.monotonic()

        def plan(cache=None):
            key = (parse, text)
            expr = cache.get(key) if cache is not None else None
            if expr is not None:
                cache.move_to_end(key)
            else:
                if parse is None:
                    from urdar.promql.parser import parse_expr
                    expr = parse_expr(text)
                else:
                    expr = parse(text)
                if not self.config.experimental_functions:
                    from urdar.promql.parser import check_experimental
                    check_experimental(expr, text)
                if cache is not None:
                    cache[key] = expr
                    if len(cache) > PARSED_CACHE_SIZE:
                        cache.popitem(last=False)
            sels = merge_selections(selections(expr, start, end, step, lookback))
            check_shard_matchers(s.matchers for s in sels)
            return expr, sels

        max_length, max_lookback = self.time_limits(tenant)

        def fetch(planned):
            expr, sels = planned
            # As Mimir's querier: a selector is read from no earlier than now - max lookback
            # (nothing at all when it ends before), and its remaining range must fit the
            # partial query length. The evaluator still sees the selector's full range.
            min_start = int(self.clock.seconds() * 1000) - max_lookback if max_lookback else None
            reads, read_idx = [], []
            for i, s in enumerate(sels):
                h = s.hints
                mint = h.mint
                if min_start is not None:
                    if h.maxt < min_start:
                        continue
                    mint = max(mint, min_start)
                if max_length and h.maxt - mint > max_length:
                    raise query_length_error(h.maxt - mint, max_length)
                if lim.series_hint or mint != h.mint:
                    h = SelectHints(mint, h.maxt, h.step, h.func, h.range_ms,
                                    lim.series_hint or h.limit)
                reads.append((s.matchers, h))
                read_idx.append(i)
            # Remote sources' reads start now and are waited for here, on the reactor; local
            # ones (select_local) run in the evaluation's pool job: a query over in-process
            # sources makes one thread hop.
            plans, waits = self._start_reads(tenant, reads)
            d = gather(waits) if waits else defer.succeed(())
            return d.addCallback(lambda remote: self.offload.run_cancellable(
                self.pool, evaluate, expr, sels, read_idx, self._reader(reads, plans, remote)))

        def evaluate(job, expr, sels, read_idx, reader):
            got = reader(job)
            if len(got) == len(sels):
                results = got
            else:
                results = [[] for _ in sels]
                for i, r in zip(read_idx, got):
                    results[i] = r
            lim.check(results, stats)

            def check():
                if job.cancelled:
                    raise QueryCanceled()
                if deadline is not None and self.clock.seconds() > deadline:
                    raise QueryTimeout()
            q = PrefetchedQueryable({matchers_key(s.matchers): (s.hints.mint, s.hints.maxt, r)
                                     for s, r in zip(sels, results)}, check)
            try:
                eng = self.engine(q, deadline, lambda: job.cancelled)
                if step:
                    result = eng.range(text, start, end, step, lookback_ms, expr=expr)
                else:
                    result = eng.instant(text, start, lookback_ms, expr=expr)
                check()
                return render(result) if render is not None else result
            except promql.QueryTimeout:
                raise QueryTimeout()
            except promql.QueryCanceled:
                raise QueryCanceled()

        def account(result):
            if stats is not None:
                stats.add(wall_time_s=time.monotonic() - started)
            return result
        # A short query is planned right here (lexing and planning it takes well under a
        # millisecond), saving a thread hop; a long one (it may be megabytes) in the pool.
        d = (defer.execute(plan, self._parsed) if len(text) <= SMALL_QUERY_CHARS
             else self._pool(plan))
        d.addCallback(fetch)
        d.addBoth(account)
        return self._deadline(d, timeout, "expression evaluation")
