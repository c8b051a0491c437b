"""The only way the distributor reaches ingesters: a client whose calls return Deferreds.

WriteBatch is what one push hands to one ingester: label keys and sample columns as the engine's
append_batch takes them (see engine/remotewrite.pyx), a per-series `skip` map for series the
distributor refused, exemplars and metadata. PushResult comes back with one outcome code per
sample (urdar.engine.outcomes codes). `IngesterClient` is the protocol: the write half (push,
user_stats, ready) the distributor uses and the read half (a components/sources.Source plus
exemplars, metadata, head_series) the querier uses, every call a Deferred fired on the reactor.
`LocalIngesterClient` serves -target=all in-process; a remote client over HTTP/ring will implement
the same protocol and pass the same suite (tests/components/test_ingester_client.py)."""
from functools import partial
from dataclasses import dataclass, field
from typing import Protocol


@dataclass
class WriteBatch:
    """Columns of one push for one tenant. Series i: key keys[key_offsets[i]:key_offsets[i+1]],
    samples ts/vals[sample_offsets[i]:sample_offsets[i+1]]; skip[i] != 0 means do not store."""
    keys: bytes
    key_offsets: object          # array('Q'), n_series + 1
    key_hashes: object           # array('Q'), n_series
    sample_offsets: object       # array('Q'), n_series + 1
    ts: object                   # array('q') ms
    vals: object                 # array('d')
    skip: bytes | None = None    # n_series bytes or None
    exemplars: list = field(default_factory=list)   # [(series key, t ms, value, exemplar key)]
    metadata: list = field(default_factory=list)    # [(metric family, type int, help, unit)]
    # native histogram samples [(series index, t ms, Histogram | FloatHistogram)], series order
    histograms: list = field(default_factory=list)

    @property
    def n_series(self):
        return len(self.key_offsets) - 1 if len(self.key_offsets) else 0

    def key(self, i):
        return self.keys[self.key_offsets[i]:self.key_offsets[i + 1]]

    def series_of_sample(self, j):
        """Index of the series owning sample j (binary search over sample_offsets)."""
        lo, hi = 0, self.n_series - 1
        offs = self.sample_offsets
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if offs[mid] <= j:
                lo = mid
            else:
                hi = mid - 1
        return lo


@dataclass
class PushResult:
    """What an ingester did with a WriteBatch: outcomes[j] is sample j's code."""
    accepted: int
    new_series: int
    outcomes: bytearray
    exemplars_kept: int = 0
    histogram_outcomes: bytearray = field(default_factory=bytearray)  # per WriteBatch.histograms row


class IngesterClient(Protocol):
    """One ingester as the distributor and the querier see it; tenant first, Deferreds back."""

    def push(self, tenant, batch):
        """Deferred[PushResult] for a WriteBatch."""

    def user_stats(self, tenant):
        """Deferred[{"numSeries": int}]."""

    def ready(self):
        """True once the ingester accepts pushes (WAL replayed)."""

    def select(self, tenant, matchers, hints):
        """Deferred[[(label key, ts, vals)]]: see components/sources.Source."""

    def label_names(self, tenant, matchers, hints):
        """Deferred[sorted label names]."""

    def label_values(self, tenant, name, matchers, hints):
        """Deferred[sorted label values]."""

    def exemplars(self, tenant, matchers, mint, maxt):
        """Deferred[[(series key, [(t ms, value, exemplar labels key)])]]."""

    def metadata(self, tenant):
        """Deferred[{metric family: [(type int, help, unit)]}]."""

    def head_series(self, tenant, matchers):
        """Deferred[(label keys of in-memory series matching, the head's series count)]."""


class LocalIngesterClient:
    """IngesterClient for -target=all over an in-process Ingester. Reads run the TSDB work in
    offload pool `pool` ("query"; the ingester's own Offload unless `offload` is given); a tenant
    without a TSDB yet reads as empty."""

    carries_histograms = True     # WriteBatch.histograms reach the TSDB

    def __init__(self, ingester, offload=None, pool="query"):
        self._ingester = ingester
        self._offload = offload if offload is not None else getattr(ingester, "offload", None)
        self._pool = pool

    # ---- write half ----------------------------------------------------------------------------

    def push(self, tenant, batch):
        """Deferred[PushResult]."""
        return self._ingester.push(tenant, batch)

    def local_push(self, tenant):
        """(append, done) to append from a pool thread, or None; see Ingester.local_push.
        Only in-process clients have it: remote clients always go through push()."""
        return self._ingester.local_push(tenant)

    def user_stats(self, tenant):
        """Deferred[dict] with numSeries for the tenant."""
        return self._ingester.user_stats(tenant)

    def ready(self):
        return self._ingester.ready()

    # ---- read half (each call is one job in the pool) -------------------------------------------

    def _run(self, fn, tenant, *args):
        db = self._ingester.get_tsdb(tenant)
        return self._offload.run(self._pool, fn, db, *args)

    def select(self, tenant, matchers, hints):
        return self._run(self._select, tenant, tuple(matchers), hints)

    def select_local(self, tenant, matchers, hints):
        """The select as a call for a pool thread (components/sources.py): the tenant's TSDB
        is looked up now, on the reactor."""
        return partial(self._select, self._ingester.get_tsdb(tenant), tuple(matchers), hints)

    def _select(self, db, matchers, hints):
        out = db.select(matchers, hints.mint, hints.maxt, hints.samples) if db is not None else []
        if hints.limit > 0:
            out = out[:hints.limit]
        observe = getattr(self._ingester, "observe_query", None)
        if observe is not None:
            observe(out)
        return out

    def label_names(self, tenant, matchers, hints):
        return self._run(_label_names, tenant, tuple(matchers), hints)

    def label_values(self, tenant, name, matchers, hints):
        return self._run(_label_values, tenant, name, tuple(matchers), hints)

    def exemplars(self, tenant, matchers, mint, maxt):
        return self._run(_exemplars, tenant, tuple(matchers), mint, maxt)

    def metadata(self, tenant):
        return self._run(_metadata, tenant)

    def head_series(self, tenant, matchers):
        return self._run(_head_series, tenant, tuple(matchers))


# Pool-thread bodies of the read half; `db` is the tenant's TSDB or None.

def _label_names(db, matchers, hints):
    out = db.label_names(matchers, hints.mint, hints.maxt) if db is not None else []
    return out[:hints.limit] if hints.limit > 0 else out


def _label_values(db, name, matchers, hints):
    out = db.label_values(name, matchers, hints.mint, hints.maxt) if db is not None else []
    return out[:hints.limit] if hints.limit > 0 else out


def _exemplars(db, matchers, mint, maxt):
    return db.head.exemplars(matchers, mint, maxt) if db is not None else []


def _metadata(db):
    return {name: [md] for name, md in db.head.metadata().items()} if db is not None else {}


def _head_series(db, matchers):
    if db is None:
        return [], 0
    keys = [k for k, _, _ in db.head.select(matchers, -(2 ** 63), 2 ** 63 - 1, False)]
    return keys, db.head.num_series
