"""The only way the distributor reaches ingesters: a client whose calls return Deferreds.

WriteBatch is what one push hands to one ingester: label keys and sample columns as the engine's
append_batch takes them (see engine/remotewrite.pyx), a per-series `skip` map for series the
distributor refused, exemplars and metadata. PushResult comes back with one outcome code per
sample (urdar.engine.outcomes codes). `LocalIngesterClient` serves -target=all in-process; a remote
client over HTTP/ring will implement the same three methods."""
from dataclasses import dataclass, field


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
    skip: bytes = None           # n_series bytes or None
    exemplars: list = field(default_factory=list)   # [(series key, t ms, value, exemplar key)]
    metadata: list = field(default_factory=list)    # [(metric family, type int, help, unit)]

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


class LocalIngesterClient:
    """In-process client for -target=all: forwards to an Ingester component's Deferred API."""

    def __init__(self, ingester):
        self._ingester = ingester

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


# ---- read path -------------------------------------------------------------------------------------

class LocalIngesterReader:
    """The read half of the ingester client interface for -target=all, over an in-process Ingester.

    Every method takes the tenant first. The Deferred-returning methods run the TSDB work in the
    offload pool `pool` ("query"); the `*_now` methods are for code already on a worker thread (the
    PromQL evaluator's Queryable) and run inline. A tenant without a TSDB yet reads as empty.
    Series come back as (label key bytes, array('q') ts, array('d') vals), in label order."""

    def __init__(self, ingester, offload, pool="query"):
        self._ingester = ingester
        self._offload = offload
        self._pool = pool

    def _run(self, fn, *args):
        return self._offload.run(self._pool, fn, *args)

    def _db(self, tenant):
        return self._ingester.get_tsdb(tenant)

    # Inline (worker-thread) calls.
    def select_now(self, tenant, matchers, mint, maxt, samples=True):
        db = self._db(tenant)
        out = db.select(matchers, mint, maxt, samples) if db is not None else []
        observe = getattr(self._ingester, "observe_query", None)
        if observe is not None:
            observe(out)
        return out

    def label_names_now(self, tenant, matchers, mint, maxt):
        db = self._db(tenant)
        return db.label_names(matchers, mint, maxt) if db is not None else []

    def label_values_now(self, tenant, name, matchers, mint, maxt):
        db = self._db(tenant)
        return db.label_values(name, matchers, mint, maxt) if db is not None else []

    def exemplars_now(self, tenant, matchers, mint, maxt):
        db = self._db(tenant)
        return db.head.exemplars(matchers, mint, maxt) if db is not None else []

    def metadata_now(self, tenant):
        """{metric family: [(type int, help, unit)]}."""
        db = self._db(tenant)
        if db is None:
            return {}
        return {name: [md] for name, md in db.head.metadata().items()}

    def head_series_now(self, tenant, matchers):
        """Label keys of the in-memory (head) series matching matchers, and the head's series count."""
        db = self._db(tenant)
        if db is None:
            return [], 0
        keys = [k for k, _, _ in db.head.select(matchers, -(2 ** 63), 2 ** 63 - 1, False)]
        return keys, db.head.num_series

    # Deferred calls (reactor thread).
    def select(self, tenant, matchers, mint, maxt, samples=True):
        return self._run(self.select_now, tenant, matchers, mint, maxt, samples)

    def label_names(self, tenant, matchers, mint, maxt):
        return self._run(self.label_names_now, tenant, matchers, mint, maxt)

    def label_values(self, tenant, name, matchers, mint, maxt):
        return self._run(self.label_values_now, tenant, name, matchers, mint, maxt)

    def exemplars(self, tenant, matchers, mint, maxt):
        return self._run(self.exemplars_now, tenant, matchers, mint, maxt)

    def metadata(self, tenant):
        return self._run(self.metadata_now, tenant)

    def head_series(self, tenant, matchers):
        return self._run(self.head_series_now, tenant, matchers)
