"""Test doubles for the write path: a pure-Python TSDB with the engine's append semantics and an
ingester client over per-tenant FakeTSDBs. Test-only; never importable from urdar.

FakeTSDB.append_batch follows urdar.engine.head: per series, a sample older than the newest one is
OUT_OF_ORDER (OUT_OF_BOUNDS when it is before the head's min valid time), the same timestamp with another
value DUPLICATE, with the same value DUPLICATE_SAME; a new series over max_series SERIES_LIMIT;
skip[i] != 0 marks SKIPPED."""
from twisted.internet import defer

from urdar.components import ingester_client as IC
from urdar.engine import outcomes as O
from urdar.engine.labels import decode_labels


class _Head:
    def __init__(self, db):
        self._db = db
        self.exemplars = []
        self.metadata = {}

    @property
    def num_series(self):
        return len(self._db.series)

    def append_exemplars(self, items):
        items = [e for e in items if e[0] in self._db.series]
        self.exemplars.extend(items)
        return len(items)

    def set_metadata(self, items):
        for name, mtype, help_, unit in items:
            self.metadata[name] = (mtype, help_, unit)
        return len(items)


class FakeTSDB:
    """In-memory TSDB stand-in. `series` maps label key -> [(t, v)] in append order."""
    instances = []

    def __init__(self, dir, block_range_ms=7200000, ooo_window_ms=0, retention_ms=0,
                 compaction_ranges_ms=(), max_series=0, max_exemplars=1, fail=None):
        self.dir = dir
        self.options = dict(block_range_ms=block_range_ms, ooo_window_ms=ooo_window_ms,
                            retention_ms=retention_ms, max_series=max_series)
        self.max_series = max_series
        self.series = {}
        self.head = _Head(self)
        self.closed = False
        self.cuts = []
        self.min_valid_time = -(2**63)
        FakeTSDB.instances.append(self)

    def append_batch(self, keys, key_offsets, key_hashes, sample_offsets, ts, vals, outcomes, skip=None):
        if self.closed:
            raise RuntimeError("head is closed")
        ok = new = 0
        for i in range(len(key_offsets) - 1):
            key = bytes(keys[key_offsets[i]:key_offsets[i + 1]])
            rng = range(sample_offsets[i], sample_offsets[i + 1])
            if skip is not None and skip[i]:
                for j in rng:
                    outcomes[j] = O.SKIPPED
                continue
            s = self.series.get(key)
            if s is None:
                if self.max_series and len(self.series) >= self.max_series:
                    for j in rng:
                        outcomes[j] = O.SERIES_LIMIT
                    continue
                s = self.series[key] = []
                new += 1
            for j in rng:
                t, v = ts[j], vals[j]
                if t < self.min_valid_time:
                    outcomes[j] = O.OUT_OF_BOUNDS
                elif s and t < s[-1][0]:
                    outcomes[j] = O.OUT_OF_ORDER
                elif s and t == s[-1][0]:
                    outcomes[j] = O.DUPLICATE_SAME if v == s[-1][1] else O.DUPLICATE
                else:
                    s.append((t, v))
                    outcomes[j] = O.OK
                    ok += 1
        return ok, new

    def samples(self, labels):
        """[(t, v)] of the series with these labels (dict), for assertions."""
        for key, s in self.series.items():
            if dict(decode_labels(key)) == labels:
                return list(s)
        return []

    def cut_blocks(self, force=False):
        self.cuts.append(force)
        return ["BLOCK%d" % len(self.cuts)] if force and self.series else []

    def apply_retention(self):
        return []

    def close(self):
        self.closed = True


class FakeIngesterClient:
    """The ingester client interface over in-memory FakeTSDBs (one per tenant).

    With `manual=True`, push Deferreds wait in `pending` until the test fires them."""

    def __init__(self, max_series=0, manual=False):
        self.tsdbs = {}
        self.max_series = max_series
        self.manual = manual
        self.pending = []
        self.pushes = []

    def db(self, tenant):
        if tenant not in self.tsdbs:
            self.tsdbs[tenant] = FakeTSDB("/fake/" + tenant, max_series=self.max_series)
        return self.tsdbs[tenant]

    def _do_push(self, tenant, batch):
        db = self.db(tenant)
        out = bytearray(len(batch.ts))
        ok, new = db.append_batch(batch.keys, batch.key_offsets, batch.key_hashes, batch.sample_offsets,
                                  batch.ts, batch.vals, out, batch.skip)
        kept = db.head.append_exemplars(batch.exemplars) if batch.exemplars else 0
        if batch.metadata:
            db.head.set_metadata(batch.metadata)
        return IC.PushResult(ok, new, out, kept)

    def push(self, tenant, batch):
        self.pushes.append((tenant, batch))
        if self.manual:
            d = defer.Deferred()
            self.pending.append((d, tenant, batch))
            return d
        return defer.succeed(self._do_push(tenant, batch))

    def fire_pending(self):
        while self.pending:
            d, tenant, batch = self.pending.pop(0)
            d.callback(self._do_push(tenant, batch))

    def user_stats(self, tenant):
        return defer.succeed({"numSeries": len(self.tsdbs[tenant].series) if tenant in self.tsdbs else 0})

    def ready(self):
        return True
