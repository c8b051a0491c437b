"""The querier: reads a tenant's series from every source (ingesters now, store-gateways later),
merges and de-duplicates them, and runs PromQL over the result; no HTTP here.

Sources implement the read half of the ingester client interface (ingester_client.LocalIngesterReader):
Deferred methods for the reactor (select, label_names, label_values, exemplars, metadata,
head_series) and `*_now` twins for code already on a worker thread. Replicas of one series (the
same label key from several sources) are merged sample by sample, the first source winning on
equal timestamps. PromQL runs in the "query" offload pool over a `TenantQueryable` whose
select(matchers, mint, maxt) calls the sources' `select_now` inline, checks the query deadline
(-querier.timeout) and cancellation between selects, and returns [(label key, ts, vals)].
Errors carry a cause (components/errors.py) plus, for queries, Prometheus' errorType."""
import logging

from twisted.internet import defer

from urdar.components import errors as E
from urdar.engine.index import sort_label_keys
from urdar.engine.labels import decode_labels
from urdar.engine.matchers import Matcher
from urdar.engine.querier import merge_samples

log = logging.getLogger("urdar.querier")

INT64_MIN = -(2 ** 63)
INT64_MAX = 2 ** 63 - 1
# Prometheus' metadata type names, by remote-write MetricMetadata.MetricType number.
METRIC_TYPES = ("unknown", "counter", "gauge", "histogram", "gaugehistogram", "summary", "info",
                "stateset")
_ALL_SERIES = (Matcher("=~", "__name__", ".+"),)


class QueryError(E.ComponentError):
    """A failed query; `error_type` is the Prometheus API errorType (execution, timeout, ...)."""

    def __init__(self, cause, error_type, message):
        super().__init__(cause, message)
        self.error_type = error_type


class QueryTimeout(QueryError):
    def __init__(self, where="expression evaluation"):
        super().__init__(E.UNAVAILABLE, "timeout", "query timed out in %s" % where)


class QueryCanceled(QueryError):
    def __init__(self, where="expression evaluation"):
        super().__init__(E.UNAVAILABLE, "canceled", "query was canceled in %s" % where)


def merge_series(results, samples=True):
    """Merge per-source [(key, ts, vals)] lists into one, sorted by labels, replicas merged."""
    results = [r for r in results if r]
    if len(results) == 1:
        return results[0]
    parts = {}
    for res in results:
        for key, ts, vs in res:
            parts.setdefault(bytes(key), []).append((ts, vs))
    keys = list(parts)
    out = []
    for key in (keys[i] for i in sort_label_keys(keys)):
        if samples:
            ts, vs = merge_samples(parts[key])
            out.append((key, ts, vs))
        else:
            out.append((key, None, None))
    return out


def sorted_union(keys):
    """Distinct label keys in label order."""
    keys = list(dict.fromkeys(bytes(k) for k in keys))
    return [keys[i] for i in sort_label_keys(keys)]


class TenantQueryable:
    """The seam the PromQL evaluator reads through, bound to one tenant and one query.

    Runs on a worker thread. Raises QueryTimeout past `deadline_s` (clock seconds) and
    QueryCanceled once `job.cancelled` turns true (the client went away)."""

    def __init__(self, querier, tenant, job=None, deadline_s=None):
        self.querier = querier
        self.tenant = tenant
        self.job = job
        self.deadline_s = deadline_s
        self.selects = 0
        self.series = 0             # series returned by select(), for cortex_query_fetched_series_total

    def check(self):
        if self.job is not None and self.job.cancelled:
            raise QueryCanceled()
        if self.deadline_s is not None and self.querier.clock.seconds() > self.deadline_s:
            raise QueryTimeout()

    def select(self, matchers, mint, maxt):
        self.check()
        self.selects += 1
        out = merge_series([s.select_now(self.tenant, matchers, mint, maxt)
                            for s in self.querier.sources])
        self.check()
        self.series += len(out)
        return out


class Querier:
    """Reads from `sources` for one tenant at a time; every method returns a Deferred."""

    def __init__(self, sources, offload, clock, overrides, timeout_s=120.0, max_samples=50_000_000,
                 lookback_ms=300_000, engine_factory=None, pool="query", registry=None):
        self.sources = list(sources)
        self.offload = offload
        self.clock = clock
        self.overrides = overrides
        self.timeout_s = timeout_s
        self.max_samples = max_samples
        self.lookback_ms = lookback_ms
        self.pool = pool
        self._engine_factory = engine_factory
        # Mimir's query-stats metrics (-query-frontend.query-stats-enabled), kept by the querier
        # here since urdar has no query-frontend yet. PromQL queries only.
        from prometheus_client import Counter
        self.m_query_seconds = Counter("cortex_query_seconds", "Wall-clock seconds spent running "
                                       "PromQL queries, per tenant.", ["user"], registry=registry)
        self.m_fetched_series = Counter("cortex_query_fetched_series", "Series read from storage "
                                        "by PromQL queries, per tenant.", ["user"], registry=registry)

    # ---- fan-out helpers ---------------------------------------------------------------------

    def _gather(self, call):
        """Call `call(source)` on every source; Deferred[list of results] (first failure wins)."""
        ds = [defer.maybeDeferred(call, s) for s in self.sources]
        d = defer.gatherResults(ds, consumeErrors=True)
        d.addErrback(lambda f: f.value.subFailure if isinstance(f.value, defer.FirstError) else f)
        return d

    # ---- the seam ----------------------------------------------------------------------------

    def queryable(self, tenant, job=None, deadline_s=None):
        return TenantQueryable(self, tenant, job, deadline_s)

    def select(self, tenant, matchers, mint, maxt, samples=True):
        """Deferred[[(key, ts, vals)]] merged over sources, in label order."""
        d = self._gather(lambda s: s.select(tenant, matchers, mint, maxt, samples))
        return d.addCallback(merge_series, samples)

    # ---- metadata endpoints ------------------------------------------------------------------

    def series(self, tenant, matcher_sets, mint, maxt):
        """Deferred[[label key]]: series matching any matcher set with data in [mint, maxt]."""
        d = defer.gatherResults([self.select(tenant, ms, mint, maxt, False) for ms in matcher_sets],
                                consumeErrors=True)
        d.addErrback(lambda f: f.value.subFailure if isinstance(f.value, defer.FirstError) else f)
        return d.addCallback(lambda rs: sorted_union(k for r in rs for k, _, _ in r))

    def label_names(self, tenant, matcher_sets, mint, maxt):
        """Deferred[sorted label names] of series matching any matcher set (all series if none)."""
        sets = list(matcher_sets) or [()]
        d = self._gather(lambda s: defer.gatherResults(
            [s.label_names(tenant, ms, mint, maxt) for ms in sets], consumeErrors=True))
        return d.addCallback(lambda rs: sorted({n for r in rs for names in r for n in names}))

    def label_values(self, tenant, name, matcher_sets, mint, maxt):
        sets = list(matcher_sets) or [()]
        d = self._gather(lambda s: defer.gatherResults(
            [s.label_values(tenant, name, ms, mint, maxt) for ms in sets], consumeErrors=True))
        return d.addCallback(lambda rs: sorted({v for r in rs for vals in r for v in vals}))

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
        return self._gather(lambda s: s.metadata(tenant)).addCallback(merge)

    def exemplars(self, tenant, matcher_sets, mint, maxt):
        """Deferred[[(series key, [(t, v, exemplar labels key)])]] in label order."""
        sets = list(matcher_sets)

        def merge(results):
            by_key = {}
            for per_source in results:
                for res in per_source:
                    for key, exs in res:
                        seen = by_key.setdefault(bytes(key), {})
                        for t, v, lkey in exs:
                            seen.setdefault((t, bytes(lkey)), (t, v, lkey))
            keys = list(by_key)
            return [(keys[i], sorted(by_key[keys[i]].values(), key=lambda e: e[0]))
                    for i in sort_label_keys(keys) if by_key[keys[i]]]
        d = self._gather(lambda s: defer.gatherResults(
            [s.exemplars(tenant, ms, mint, maxt) for ms in sets], consumeErrors=True))
        return d.addCallback(merge)

    # ---- cardinality (ingesters' heads only, as Mimir) ------------------------------------------

    def cardinality_enabled(self, tenant):
        return bool(getattr(self.overrides.for_tenant(tenant), "cardinality_analysis_enabled", False))

    def _head_series(self, tenant, matchers):
        """Deferred[(distinct head keys matching, total head series)] over sources."""
        ms = tuple(matchers) or _ALL_SERIES

        def merge(results):
            keys = set()
            total = 0
            for ks, n in results:
                keys.update(bytes(k) for k in ks)
                total = max(total, n)
            return keys, total
        return self._gather(lambda s: s.head_series(tenant, ms)).addCallback(merge)

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
        return self._head_series(tenant, matchers).addCallback(build)

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
        return self._head_series(tenant, matchers).addCallback(build)

    # ---- remote read -------------------------------------------------------------------------

    def remote_read(self, tenant, queries):
        """queries = [(mint, maxt, matchers)]; Deferred[[[(key, ts, vals)]]] one list per query."""
        d = defer.gatherResults([self.select(tenant, ms, mint, maxt) for mint, maxt, ms in queries],
                                consumeErrors=True)
        d.addErrback(lambda f: f.value.subFailure if isinstance(f.value, defer.FirstError) else f)
        return d

    # ---- PromQL ------------------------------------------------------------------------------

    def engine(self, queryable):
        if self._engine_factory is not None:
            return self._engine_factory(queryable, self)
        from urdar.promql.engine import Engine
        # The evaluator checks the same deadline and cancellation flag inside its loops, so a
        # timed-out query frees its worker thread instead of computing an unwanted answer.
        job = getattr(queryable, "job", None)
        return Engine(queryable, lookback_ms=self.lookback_ms, max_samples=self.max_samples,
                      clock=self.clock, deadline_s=getattr(queryable, "deadline_s", None),
                      cancelled=(lambda: job.cancelled) if job is not None else None)

    def instant_query(self, tenant, query, t, lookback_ms=None, render=None, timeout_s=None):
        """Deferred[Result] (or render(Result), computed on the worker thread) for `query` at t
        ms. timeout_s (the request's `timeout`) can only shorten -querier.timeout."""
        return self._query(tenant, lambda eng: eng.instant(query, t, lookback_ms), render, timeout_s)

    def range_query(self, tenant, query, start, end, step, lookback_ms=None, render=None,
                    timeout_s=None):
        return self._query(tenant, lambda eng: eng.range(query, start, end, step, lookback_ms),
                           render, timeout_s)

    def _query(self, tenant, run, render, timeout_s):
        timeout = self.timeout_s
        if timeout_s is not None and timeout_s > 0 and (not timeout or timeout_s < timeout):
            timeout = timeout_s
        deadline = self.clock.seconds() + timeout if timeout else None

        def work(job):
            q = self.queryable(tenant, job, deadline)
            started = self.clock.seconds()
            from urdar.promql import engine as promql
            try:
                result = run(self.engine(q))
                q.check()
                return render(result) if render is not None else result
            except promql.QueryTimeout:
                raise QueryTimeout()
            except promql.QueryCanceled:
                raise QueryCanceled()
            finally:
                self.m_query_seconds.labels(tenant).inc(max(0.0, self.clock.seconds() - started))
                if q.series:
                    self.m_fetched_series.labels(tenant).inc(q.series)
        d = self.offload.run_cancellable(self.pool, work)
        if timeout:
            def timed_out(result, _timeout):
                raise QueryTimeout()
            d.addTimeout(timeout, self.clock, onTimeoutCancel=timed_out)
        return d


class TimeBoundedSource:
    """A source asked only about part of the time axis, relative to now on `clock`:
    `within_ms` (ingesters, -querier.query-ingesters-within) keeps mint >= now - within_ms;
    `after_ms` (store-gateways, -querier.query-store-after) keeps maxt <= now - after_ms.
    0 leaves that side open. A range clamped to nothing reads as empty without asking."""

    def __init__(self, source, clock, within_ms=0, after_ms=0):
        self.source = source
        self.clock = clock
        self.within_ms = within_ms
        self.after_ms = after_ms

    def _clamp(self, mint, maxt):
        now_ms = int(self.clock.seconds() * 1000)
        if self.within_ms:
            mint = max(mint, now_ms - self.within_ms)
        if self.after_ms:
            maxt = min(maxt, now_ms - self.after_ms)
        return mint, maxt

    def select(self, tenant, matchers, mint, maxt, samples=True):
        mint, maxt = self._clamp(mint, maxt)
        if mint > maxt:
            return defer.succeed([])
        return self.source.select(tenant, matchers, mint, maxt, samples)

    def select_now(self, tenant, matchers, mint, maxt, samples=True):
        mint, maxt = self._clamp(mint, maxt)
        if mint > maxt:
            return []
        return self.source.select_now(tenant, matchers, mint, maxt, samples)

    def label_names(self, tenant, matchers, mint, maxt):
        mint, maxt = self._clamp(mint, maxt)
        if mint > maxt:
            return defer.succeed([])
        return self.source.label_names(tenant, matchers, mint, maxt)

    def label_names_now(self, tenant, matchers, mint, maxt):
        mint, maxt = self._clamp(mint, maxt)
        return self.source.label_names_now(tenant, matchers, mint, maxt) if mint <= maxt else []

    def label_values(self, tenant, name, matchers, mint, maxt):
        mint, maxt = self._clamp(mint, maxt)
        if mint > maxt:
            return defer.succeed([])
        return self.source.label_values(tenant, name, matchers, mint, maxt)

    def label_values_now(self, tenant, name, matchers, mint, maxt):
        mint, maxt = self._clamp(mint, maxt)
        return self.source.label_values_now(tenant, name, matchers, mint, maxt) if mint <= maxt else []

    def __getattr__(self, name):
        # exemplars, metadata, head_series and their *_now twins are not time-bounded here.
        return getattr(self.source, name)
