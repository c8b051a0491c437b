"""The only way the distributor reaches ingesters: a client whose calls return Deferreds.

WriteBatch is what one push hands to one ingester: label keys and sample columns as the engine's
append_batch takes them (see engine/remotewrite.pyx), a per-series `skip` map for series the
distributor refused, exemplars and metadata. PushResult comes back with one outcome code per
sample (urdar.engine.head codes). `LocalIngesterClient` serves -target=all in-process; a remote
client over HTTP/ring will implement the same three methods."""
from dataclasses import dataclass, field

# Per-sample outcome codes, mirroring urdar.engine.head (kept here so the distributor does not
# import the engine's head module; tests/components check they agree).
OK = 0
OUT_OF_ORDER = 1
DUPLICATE = 2
TOO_OLD = 3
SERIES_LIMIT = 4
SKIPPED = 5
DUPLICATE_SAME = 6


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

    def user_stats(self, tenant):
        """Deferred[dict] with numSeries for the tenant."""
        return self._ingester.user_stats(tenant)

    def ready(self):
        return self._ingester.ready()
