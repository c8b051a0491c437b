"""Where the querier reads series from: the `Source` protocol and the sources built from others.

A Source answers three questions for one tenant, each as a Deferred fired on the reactor thread:
`select(tenant, matchers, hints)` -> [(label key, ts, vals)] in label order (ts/vals None when
`hints.func == "series"`), `label_names(tenant, matchers, hints)` and
`label_values(tenant, name, matchers, hints)` -> sorted strings; `hints` is a
promql.selectors.SelectHints (time range in ms, step, function, limit). Ingesters
(ingester_client.LocalIngesterClient) and store-gateways (storegateway.StoreGatewayReader) are
sources; `TimeBoundedSource` clamps one to part of the time axis and `MergedSource` reads several
concurrently and merges them. tests/components/source_contract.py is the one suite every source
passes. Code on a worker thread never waits on a source's I/O.

A source in this process whose select is pure CPU work (no I/O, no reactor state: the ingester's
TSDB) may also offer `select_local(tenant, matchers, hints)`, called on the reactor: a function
of no arguments that a pool thread calls for the same answer as `select`, NOTHING when the read
is empty without asking (a TimeBoundedSource clamped to nothing), or None when this read must go
through `select`. The querier runs local reads in the same pool job as the evaluation instead of
one pool job each and a reactor turn in between (`local_read`)."""
from typing import Any, Callable, Iterable, Protocol, Sequence

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from urdar.engine.histchunk import merge_histogram_parts
from urdar.engine.index import sort_label_keys
from urdar.engine.querier import merge_samples
from urdar.promql.selectors import SelectHints

# One series as sources return it: canonical label key, timestamps (int64 ms), values (float64);
# ts/vals are None for label-only ("series") reads.
SeriesList = list[tuple[bytes, Any, Any]]


class Source(Protocol):
    def select(self, tenant: str, matchers: Sequence[Any], hints: SelectHints) -> "Deferred[SeriesList]":
        """Deferred[[(label key, ts, vals)]] of series matching every matcher with samples in
        [hints.mint, hints.maxt], in label order, at most hints.limit series when it is > 0."""

    def label_names(self, tenant: str, matchers: Sequence[Any], hints: SelectHints) -> "Deferred[list[str]]":
        """Deferred[sorted label names] of series matching `matchers` (all series if empty)."""

    def label_values(self, tenant: str, name: str, matchers: Sequence[Any],
                     hints: SelectHints) -> "Deferred[list[str]]":
        """Deferred[sorted values of label `name`] over series matching `matchers`."""


def NOTHING() -> SeriesList:
    """select_local's answer for a read that is empty without asking any source."""
    return []


def local_read(source: Any, tenant: str, matchers: Sequence[Any],
               hints: SelectHints) -> "Callable[[], SeriesList] | None":
    """`source`'s select_local for this read, or None when it has none (or declines)."""
    fn = getattr(source, "select_local", None)
    return fn(tenant, matchers, hints) if fn is not None else None


def merge_series(results: Sequence[SeriesList], samples: bool = True) -> SeriesList:
    """Merge per-source [(key, ts, vals)] lists into one, sorted by labels, replicas merged
    sample by sample (the first source wins on equal timestamps). Grows with the series: call it
    in a pool when there is more than one non-empty list."""
    results = [r for r in results if r]
    if len(results) == 1:
        return results[0]
    parts: dict[bytes, list[tuple[Any, Any]]] = {}
    hparts: dict[bytes, list[tuple[Any, Any]]] = {}
    for res in results:
        for item in res:
            key = bytes(item[0])
            parts.setdefault(key, []).append((item[1], item[2]))
            if len(item) > 4:
                # (key, ts, vals, start timestamps, histogram ts, FloatHistograms): the engine's
                # select contract for series with native histograms
                hparts.setdefault(key, []).append((item[4], item[5]))
    keys = list(parts)
    out: SeriesList = []
    for key in (keys[i] for i in sort_label_keys(keys)):
        if samples:
            ts, vs = merge_samples(parts[key])
            hp = hparts.get(key)
            if hp:
                hts, hvs = merge_histogram_parts(hp)
                out.append((key, ts, vs, None, hts, hvs))  # type: ignore[arg-type]
            else:
                out.append((key, ts, vs))
        else:
            out.append((key, None, None))
    return out


def apply_limit(series: SeriesList, hints: SelectHints) -> SeriesList:
    return series[:hints.limit] if hints.limit > 0 and len(series) > hints.limit else series


def first_error(f: Failure) -> Failure:
    """gatherResults' FirstError -> the failure inside it."""
    if isinstance(f.value, defer.FirstError):
        sub: Failure = f.value.subFailure
        return sub
    return f


def gather(ds: Iterable["Deferred[Any]"]) -> "Deferred[list[Any]]":
    return defer.gatherResults(list(ds), consumeErrors=True).addErrback(first_error)


class TimeBoundedSource:
    """A source asked only about part of the time axis, relative to now on `clock`:
    `within_ms` (ingesters, -querier.query-ingesters-within) keeps mint >= now - within_ms;
    `after_ms` (store-gateways, -querier.query-store-after) keeps maxt <= now - after_ms.
    0 leaves that side open. A range clamped to nothing reads as empty without asking.
    Other methods (exemplars, metadata, head_series) pass through unbounded."""

    def __init__(self, source: Source, clock: Any, within_ms: int = 0, after_ms: int = 0) -> None:
        self.source = source
        self.clock = clock
        self.within_ms = within_ms
        self.after_ms = after_ms

    def _clamp(self, hints: SelectHints) -> SelectHints:
        now_ms = int(self.clock.seconds() * 1000)
        mint, maxt = hints.mint, hints.maxt
        if self.within_ms:
            mint = max(mint, now_ms - self.within_ms)
        if self.after_ms:
            maxt = min(maxt, now_ms - self.after_ms)
        if (mint, maxt) == (hints.mint, hints.maxt):
            return hints
        return SelectHints(mint, maxt, hints.step, hints.func, hints.range_ms, hints.limit)

    def select(self, tenant: str, matchers: Sequence[Any], hints: SelectHints) -> "Deferred[SeriesList]":
        h = self._clamp(hints)
        return defer.succeed([]) if h.mint > h.maxt else self.source.select(tenant, matchers, h)

    def select_local(self, tenant: str, matchers: Sequence[Any],
                     hints: SelectHints) -> "Callable[[], SeriesList] | None":
        h = self._clamp(hints)
        return NOTHING if h.mint > h.maxt else local_read(self.source, tenant, matchers, h)

    def label_names(self, tenant: str, matchers: Sequence[Any], hints: SelectHints) -> "Deferred[list[str]]":
        h = self._clamp(hints)
        return defer.succeed([]) if h.mint > h.maxt else self.source.label_names(tenant, matchers, h)

    def label_values(self, tenant: str, name: str, matchers: Sequence[Any],
                     hints: SelectHints) -> "Deferred[list[str]]":
        h = self._clamp(hints)
        if h.mint > h.maxt:
            return defer.succeed([])
        return self.source.label_values(tenant, name, matchers, h)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.source, name)


class MergedSource:
    """Several sources read concurrently (each call starts every source's read before waiting on
    any, so a query waits for the slowest, not their sum) and merged: replicas of one series
    become one, label names and values are unions. The merge of more than one non-empty answer
    runs in offload pool `pool`. The first failing source fails the read: never a silent
    partial result."""

    def __init__(self, sources: Iterable[Any], offload: Any, pool: str = "query") -> None:
        self.sources = list(sources)
        self._offload = offload
        self._pool = pool

    def _all(self, call: Callable[[Any], Any]) -> "Deferred[list[Any]]":
        return gather(defer.maybeDeferred(call, s) for s in self.sources)

    def select(self, tenant: str, matchers: Sequence[Any], hints: SelectHints) -> "Deferred[SeriesList]":
        def merged(results: list[SeriesList]) -> Any:
            results = [r for r in results if r]
            if len(results) <= 1:
                return apply_limit(results[0], hints) if results else []
            d = self._offload.run(self._pool, merge_series, results, hints.samples)
            return d.addCallback(apply_limit, hints)
        return self._all(lambda s: s.select(tenant, matchers, hints)).addCallback(merged)

    def _union(self, results: list[list[str]], hints: SelectHints) -> Any:
        results = [r for r in results if r]
        if len(results) <= 1:
            return _union(results, hints)
        return self._offload.run(self._pool, _union, results, hints)

    def label_names(self, tenant: str, matchers: Sequence[Any], hints: SelectHints) -> "Deferred[list[str]]":
        return self._all(lambda s: s.label_names(tenant, matchers, hints)).addCallback(
            self._union, hints)

    def label_values(self, tenant: str, name: str, matchers: Sequence[Any],
                     hints: SelectHints) -> "Deferred[list[str]]":
        return self._all(lambda s: s.label_values(tenant, name, matchers, hints)).addCallback(
            self._union, hints)


def _union(results: list[list[str]], hints: SelectHints) -> list[str]:
    """Sorted distinct strings of several sorted lists, at most hints.limit when > 0."""
    values = list(results[0]) if len(results) == 1 else sorted({v for r in results for v in r})
    return values[:hints.limit] if hints.limit > 0 else values


# One exemplar: (t ms, value, exemplar labels key).
Exemplar = tuple[int, float, bytes]


def merge_exemplars(answers: list[list[tuple[bytes, list[Exemplar]]]],
                    rf: int = 1) -> list[tuple[bytes, list[Exemplar]]]:
    """Exemplars of every answer, per series in label order, each (t, labels) once, by time.
    (`rf`, the replication factor, is unused: replicas' copies collapse by (t, labels).)"""
    by_key: dict[bytes, dict[tuple[int, bytes], Exemplar]] = {}
    for answer in answers:
        for key, exs in answer:
            seen = by_key.setdefault(bytes(key), {})
            for t, v, lkey in exs:
                seen.setdefault((t, bytes(lkey)), (t, v, lkey))
    keys = list(by_key)
    return [(keys[i], sorted(by_key[keys[i]].values(), key=lambda e: e[0]))
            for i in sort_label_keys(keys) if by_key[keys[i]]]


class BlocksOnly:
    """The Source calls a store of blocks answers empty: blocks hold no exemplars, metadata or
    head series (mixed into every store-gateway source: in-process, remote, ring-sharded)."""

    def exemplars(self, tenant: str, matchers: Sequence[Any], mint: int, maxt: int) -> Any:
        return defer.succeed([])

    def metadata(self, tenant: str) -> Any:
        return defer.succeed({})

    def head_series(self, tenant: str, matchers: Sequence[Any]) -> Any:
        return defer.succeed(([], 0))
