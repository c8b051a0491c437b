"""The ingester: one TSDB per tenant under <-blocks-storage.tsdb.dir>/<tenant>/, as Mimir keeps them.

`start()` replays every existing tenant directory (WAL replay happens in the TSDB constructor) in the
"compact" pool before the ingester reports ready; new tenants' TSDBs open lazily on their first
push (concurrent pushes share one open). `push(tenant, batch)` appends in the "append" pool and
returns a PushResult with one engine outcome code per sample; the WAL has the samples before the
Deferred fires. Every -blocks-storage.tsdb.head-compaction-interval the head of each tenant is cut
into blocks when it spans enough time, and local retention applies, in the "compact" pool.
`flush()` forces a full cut (/ingester/flush); `stop()` waits for in-flight work and closes every
TSDB so the WAL is flushed. TSDBs come from `tsdb_factory(dir, **options)` (engine.tsdb.TSDB).
With a `bucket`, every -blocks-storage.tsdb.ship-interval each tenant's new blocks are uploaded
by a storage.shipper.Shipper to "<tenant>/<ULID>/..." (flush ships too, before it answers), and a
local block is deleted only once it is shipped and ended -blocks-storage.tsdb.retention-period
ago; without one, the TSDB's own retention applies."""
import logging
import os
from dataclasses import dataclass
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Gauge, Histogram
from twisted.internet import defer, task

from urdar.components import errors as E
from urdar.components import ingester_client as IC
from urdar.engine import outcomes as O
from urdar.engine.errors import public_message
from urdar.net.tenant import TenantError, validate_tenant

if TYPE_CHECKING:
    from _typeshed import SupportsGetItem

log = logging.getLogger("urdar.ingester")
_SECOND = itemgetter(1)

STARTING, RUNNING, STOPPING, STOPPED = "Starting", "Running", "Stopping", "Terminated"


def default_tsdb_factory(path, **options):
    from urdar.engine.tsdb import TSDB
    return TSDB(path, **options)


@dataclass(frozen=True)
class IngesterConfig:
    """The ingester's settings (-blocks-storage.tsdb.*), durations in ms."""
    block_range_ms: int = 2 * 3600 * 1000
    retention_ms: int = 13 * 3600 * 1000
    head_compaction_interval_ms: int = 60 * 1000
    flush_on_shutdown: bool = False
    ship_interval_ms: int = 60 * 1000       # 0: never ship (only with a bucket)

    @classmethod
    def from_config(cls, cfg: "SupportsGetItem[str, Any]") -> "IngesterConfig":
        return cls(block_range_ms=cfg["blocks_storage.tsdb.block_ranges_period"][0],
                   retention_ms=cfg["blocks_storage.tsdb.retention_period"],
                   head_compaction_interval_ms=cfg["blocks_storage.tsdb.head_compaction_interval"],
                   flush_on_shutdown=cfg["blocks_storage.tsdb.flush_blocks_on_shutdown"],
                   ship_interval_ms=cfg["blocks_storage.tsdb.ship_interval"])


class Ingester:
    """Per-tenant TSDBs and their lifecycle. All public methods are called on the reactor."""

    def __init__(self, data_dir, overrides, offload, clock, config=IngesterConfig(),
                 tsdb_factory=default_tsdb_factory, registry=None, bucket=None):
        self.data_dir = os.fspath(data_dir)
        self.overrides = overrides
        self.offload = offload
        self.clock = clock
        self.config = config
        self.tsdb_factory = tsdb_factory
        self.block_range_ms = config.block_range_ms
        self.retention_ms = config.retention_ms
        self.head_compaction_interval_ms = config.head_compaction_interval_ms
        self.flush_on_shutdown = config.flush_on_shutdown
        self.state = STARTING
        # (tenant, global limit) -> the series limit this ingester enforces (0: none); in a
        # ring components/ingesterlimits.SeriesLimiter.local, alone the global limit itself.
        self.series_limit = lambda tenant, global_limit: global_limit
        self._tsdbs = {}        # tenant -> TSDB
        self._opening = {}      # tenant -> Deferred[TSDB] (first push while opening)
        self._inflight = 0
        self._idle = []
        self._loop = None
        self._compacting = None
        self.bucket = bucket
        self.ship_interval_ms = config.ship_interval_ms
        self._shippers = {}     # tenant -> Shipper
        self._ship_loop = None
        self._shipping = None
        kw = {"registry": registry}
        self.m_memory_series = Gauge("cortex_ingester_memory_series",
                                     "The current number of series in memory.", **kw)
        self.m_memory_series.set_function(self.memory_series)
        self.m_memory_users = Gauge("cortex_ingester_memory_users",
                                    "The current number of users in memory.", **kw)
        self.m_memory_users.set_function(lambda: len(self._tsdbs))
        self.m_ingested = Counter("cortex_ingester_ingested_samples",
                                  "The total number of samples ingested per user.", ["user"], **kw)
        self.m_failures = Counter("cortex_ingester_ingested_samples_failures",
                                  "The total number of samples that errored on ingestion per user.",
                                  ["user"], **kw)
        self.m_shipped = Counter("cortex_ingester_shipper_uploads",
                                 "Blocks uploaded to object storage by the shipper.", **kw)
        self.m_ship_failures = Counter("cortex_ingester_shipper_upload_failures",
                                       "Shipper rounds stopped by a failed upload (retried).", **kw)
        self.m_blocks_cut = Counter("cortex_ingester_tsdb_blocks_cut",
                                    "Blocks cut from tenant heads (head compactions).", **kw)
        self.m_compactions = Counter("cortex_ingester_tsdb_compactions",
                                     "Head compactions that cut at least one block, over all tenants.", **kw)
        self.m_compactions_failed = Counter("cortex_ingester_tsdb_compactions_failed",
                                            "Head compactions of a tenant that failed.", **kw)
        self.m_series_created = Counter("cortex_ingester_memory_series_created",
                                        "Series created in tenant heads, per tenant.", ["user"], **kw)
        self.m_ingested_exemplars = Counter("cortex_ingester_ingested_exemplars",
                                            "Exemplars stored in tenant heads.", **kw)
        self.m_ingested_metadata = Counter("cortex_ingester_ingested_metadata",
                                           "Metadata entries stored in tenant heads.", **kw)
        self.m_queries = Counter("cortex_ingester_queries", "Series selects the ingester answered.", **kw)
        self.m_queried_series = Histogram("cortex_ingester_queried_series",
                                          "Series returned per select.",
                                          buckets=tuple(10 * 8 ** i for i in range(6)), **kw)
        self.m_queried_samples = Histogram("cortex_ingester_queried_samples",
                                           "Samples returned per select.",
                                           buckets=tuple(10 * 8 ** i for i in range(8)), **kw)

    # ---- lifecycle ---------------------------------------------------------------------------

    def _options(self, tenant):
        lim = self.overrides.for_tenant(tenant)
        return dict(block_range_ms=self.block_range_ms, ooo_window_ms=lim.out_of_order_time_window,
                    # With a bucket, only shipped blocks may go: retention is ours (_expire).
                    retention_ms=0 if self.bucket is not None else self.retention_ms,
                    compaction_ranges_ms=(),
                    max_series=self.series_limit(tenant, lim.max_global_series_per_user),
                    max_exemplars=max(1, lim.max_global_exemplars_per_user))

    def existing_tenants(self):
        """Tenant directories already on disk (names that are valid tenant IDs)."""
        if not os.path.isdir(self.data_dir):
            return []
        out = []
        for name in sorted(os.listdir(self.data_dir)):
            if not os.path.isdir(os.path.join(self.data_dir, name)):
                continue
            try:
                validate_tenant(name)
            except TenantError:
                log.warning("ignoring %s: not a tenant directory", os.path.join(self.data_dir, name))
                continue
            out.append(name)
        return out

    def start(self):
        """Open (replay) every existing tenant's TSDB, then start head compaction. Deferred."""
        os.makedirs(self.data_dir, exist_ok=True)
        tenants = self.existing_tenants()

        def replay_all():
            opened = {}
            for tenant in tenants:
                log.info("replaying WAL of tenant %s", tenant)
                opened[tenant] = self.tsdb_factory(os.path.join(self.data_dir, tenant),
                                                   **self._options(tenant))
            return opened

        def done(opened):
            self._tsdbs.update(opened)
            self.state = RUNNING
            log.info("ingester running with %d tenants from disk", len(opened))
            if self.head_compaction_interval_ms:
                self._loop = task.LoopingCall(self.compact_heads)
                self._loop.clock = self.clock
                self._loop.start(self.head_compaction_interval_ms / 1000.0, now=False).addErrback(
                    lambda f: log.error("head compaction loop stopped: %s", f.getErrorMessage()))
            if self.bucket is not None and self.ship_interval_ms:
                self._ship_loop = task.LoopingCall(self._ship_round)
                self._ship_loop.clock = self.clock
                self._ship_loop.start(self.ship_interval_ms / 1000.0, now=False).addErrback(
                    lambda f: log.error("shipper loop stopped: %s", f.getErrorMessage()))

        def failed(f):
            self.state = "Failed"
            return f
        return self.offload.run("compact", replay_all).addCallbacks(done, failed)

    def ready(self):
        return self.state == RUNNING

    def stop(self, flush=None):
        """Refuse pushes from now on, stop compaction, wait for in-flight pushes, flush and ship
        (when `flush`, default -blocks-storage.tsdb.flush-blocks-on-shutdown) and close all TSDBs."""
        if self.state in (STOPPING, STOPPED):
            return defer.succeed(None)
        self.state = STOPPING
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._ship_loop is not None and self._ship_loop.running:
            self._ship_loop.stop()
        d = self._wait_idle()
        if self._compacting is not None:
            running = self._compacting
            d.addCallback(lambda _: running)
        if self._shipping is not None:
            shipping = self._shipping
            d.addCallback(lambda _: shipping)
        if self.flush_on_shutdown if flush is None else flush:
            d.addCallback(lambda _: self._flush_now(None))
            if self.bucket is not None:
                d.addCallback(lambda _: self.ship(None))
                d.addErrback(lambda f: log.error("shipping on shutdown failed: %s",
                                                 f.getErrorMessage()))

        def close_all(_):
            tsdbs, self._tsdbs = dict(self._tsdbs), {}

            def close():
                for tenant, db in tsdbs.items():
                    try:
                        db.close()
                    except Exception:
                        log.exception("closing TSDB of tenant %s", tenant)
            return self.offload.run("compact", close)

        def stopped(_):
            self.state = STOPPED
            log.info("ingester stopped; TSDBs closed")
        return d.addCallback(close_all).addCallback(stopped)

    def _wait_idle(self):
        if not self._inflight:
            return defer.succeed(None)
        d = defer.Deferred()
        self._idle.append(d)
        return d

    def _done(self, result):
        self._inflight -= 1
        if not self._inflight:
            waiters, self._idle = self._idle, []
            for w in waiters:
                w.callback(None)
        return result

    # ---- write path ----------------------------------------------------------------------------

    def _tsdb(self, tenant):
        """Deferred[TSDB] for tenant, opening it (lazily, in the compact pool) on first use."""
        db = self._tsdbs.get(tenant)
        if db is not None:
            return defer.succeed(db)
        d = defer.Deferred()
        waiting = self._opening.get(tenant)
        if waiting is not None:
            waiting.append(d)
            return d
        waiting = self._opening[tenant] = [d]
        path = os.path.join(self.data_dir, tenant)

        def opened(db):
            del self._opening[tenant]
            self._tsdbs[tenant] = db
            for w in waiting:
                w.callback(db)

        def failed(f):
            del self._opening[tenant]
            for w in waiting:
                w.errback(f)
        # The waiter list exists before the open can fire (inline pools fire at once).
        self.offload.run("append", self.tsdb_factory, path, **self._options(tenant)).addCallbacks(opened, failed)
        return d

    def push(self, tenant, batch):
        """Append a WriteBatch for tenant; Deferred[PushResult]. 503 while not running."""
        if self.state != RUNNING:
            return defer.fail(E.ComponentError(
                E.UNAVAILABLE, "ingester is %s, not accepting writes" % self.state.lower()))
        try:
            validate_tenant(tenant)
        except TenantError as exc:
            return defer.fail(exc)
        self._inflight += 1
        d = self._tsdb(tenant)
        d.addCallback(lambda db: self.offload.run("append", self._append, self._limited(db, tenant),
                                                  batch, self._histograms_enabled(tenant)))

        d.addCallback(self._count, tenant, batch)
        return d.addBoth(self._done)

    def _count(self, res, tenant, batch=None):
        # prometheus_client metrics are thread-safe: called on the reactor or a pool thread.
        self.m_ingested.labels(tenant).inc(res.accepted)
        if res.new_series:
            self.m_series_created.labels(tenant).inc(res.new_series)
        if res.exemplars_kept:
            self.m_ingested_exemplars.inc(res.exemplars_kept)
        if batch is not None and batch.metadata:
            self.m_ingested_metadata.inc(len(batch.metadata))
        hist = res.histogram_outcomes
        failed = len(res.outcomes) + len(hist) - res.accepted - res.outcomes.count(O.SKIPPED) \
            - res.outcomes.count(O.DUPLICATE_SAME) - hist.count(O.SKIPPED) - hist.count(O.DUPLICATE_SAME)
        if failed > 0:
            self.m_failures.labels(tenant).inc(failed)
        return res

    def local_push(self, tenant):
        """Reactor thread: (append, done) for appending one batch from a pool thread, or None
        when the ingester is not running or tenant's TSDB is not open yet (use push() then).

        `append(batch)` runs on the caller's pool thread (appends of one head run in parallel)
        and returns a PushResult; `done()` must be called on the reactor afterwards, whatever
        happened, so stop() keeps waiting for this push. The distributor uses it to decode,
        validate and append in one offloaded call instead of two pool hops and a reactor turn."""
        if self.state != RUNNING:
            return None
        db = self._tsdbs.get(tenant)
        if db is None:
            return None
        self._limited(db, tenant)
        self._inflight += 1

        histograms = self._histograms_enabled(tenant)

        def append(batch):
            return self._count(self._append(db, batch, histograms), tenant, batch)

        def done(result=None):
            return self._done(result)
        return append, done

    def _limited(self, db, tenant):
        """Reactor thread: bring the head's series limits (per tenant, per metric) in line with
        the tenant's global limits and the ring as it is now (both change at run time)."""
        head = getattr(db, "head", None)
        if head is not None and hasattr(head, "max_series"):
            lim = self.overrides.for_tenant(tenant)
            n = self.series_limit(tenant, lim.max_global_series_per_user)
            if head.max_series != n:
                head.max_series = n
            n = self.series_limit(tenant, lim.max_global_series_per_metric)
            if head.max_series_per_metric != n:
                head.max_series_per_metric = n
        return db

    def _histograms_enabled(self, tenant):
        return self.overrides.for_tenant(tenant).native_histograms_ingestion_enabled

    @staticmethod
    def _append(db, batch, histograms=True):
        """Pool thread: the engine logs the batch to the WAL, then appends it (GIL released
        inside). A disk error (full, broken) fails the whole push with a 500, which senders
        retry; the engine has then stored nothing it would lose, so the retry is logged anew."""
        outcomes = bytearray(len(batch.ts))
        accepted, new_series, kept = 0, 0, 0
        hist_out = bytearray()
        try:
            if batch.n_series:
                accepted, new_series = db.append_batch(
                    batch.keys, batch.key_offsets, batch.key_hashes, batch.sample_offsets,
                    batch.ts, batch.vals, outcomes, batch.skip)
            if batch.histograms and not histograms:
                # -ingester.native-histograms-ingestion-enabled=false: Mimir's ingester ignores
                # them without an error (neither stored nor counted as failed)
                hist_out = bytearray([O.SKIPPED]) * len(batch.histograms)
            elif batch.histograms:
                hist_out = _append_histograms(db, batch)
                accepted += hist_out.count(O.OK)
            if batch.exemplars:
                kept = db.head.append_exemplars(batch.exemplars)
            if batch.metadata:
                db.head.set_metadata(batch.metadata)
        except OSError as e:
            log.error("append to TSDB %s failed: %s", getattr(db, "dir", "?"), e)
            raise E.ComponentError(E.INTERNAL, "write to TSDB failed: %s" % (e.strerror or e,)) from e
        return IC.PushResult(accepted, new_series, outcomes, kept, hist_out)

    # ---- head compaction, flush ------------------------------------------------------------------

    def compact_heads(self):
        """Cut complete block ranges of every tenant's head and apply retention (compact pool)."""
        if self._compacting is not None or self.state != RUNNING:
            return self._compacting
        tsdbs = dict(self._tsdbs)

        def work():
            made = 0
            for tenant, db in tsdbs.items():
                try:
                    cut = len(db.cut_blocks())
                    made += cut
                    if cut:
                        self.m_compactions.inc()
                    db.apply_retention()
                except Exception:
                    self.m_compactions_failed.inc()
                    log.exception("head compaction of tenant %s failed", tenant)
            return made
        d = self._compacting = self.offload.run("compact", work)

        def done(made):
            self._compacting = None
            if made:
                self.m_blocks_cut.inc(made)
            return made

        def failed(f):
            self._compacting = None
            log.error("head compaction not run: %s", f.getErrorMessage())
        # Callbacks attach after _compacting is set: an inline pool has fired already.
        return d.addCallbacks(done, failed)

    def flush(self, tenants=None):
        """Cut every head (of `tenants`, or all) into blocks now and, with a bucket, ship every
        unshipped block of those tenants. Deferred[list of block ULIDs cut]; fails when shipping
        failed (the blocks are kept and shipped again on the next round)."""
        d = self._flush_now(tenants)
        if self.bucket is None:
            return d

        def ship(made):
            return self.ship(tenants, raise_errors=True).addCallback(lambda _: made)
        return d.addCallback(ship)

    # ---- shipping ------------------------------------------------------------------------------

    def shipper(self, tenant):
        """The Shipper of tenant's TSDB directory (None without a bucket)."""
        if self.bucket is None:
            return None
        s = self._shippers.get(tenant)
        if s is None:
            from urdar.storage.prefixed import for_tenant
            from urdar.storage.shipper import Shipper
            s = self._shippers[tenant] = Shipper(
                os.path.join(self.data_dir, tenant), for_tenant(self.bucket, tenant), self.clock,
                offload=self.offload, pool="compact")
        return s

    def _ship_round(self):
        if self._shipping is not None or self.state != RUNNING:
            return None
        d = self._shipping = self.ship(None)

        def done(result):
            self._shipping = None
            return None
        return d.addBoth(done)

    def ship(self, tenants=None, raise_errors=False):
        """Upload every unshipped block of `tenants` (or all open tenants), then delete local
        blocks that are shipped and past retention. Deferred[list of ULIDs uploaded]; a tenant's
        failure is logged (and raised at the end when raise_errors) without stopping the others."""
        if self.bucket is None:
            return defer.succeed([])
        names = [t for t in sorted(self._tsdbs) if not tenants or t in tenants]
        uploaded, errors = [], []

        @defer.inlineCallbacks
        def run():
            for tenant in names:
                s = self.shipper(tenant)
                try:
                    made = yield s.sync()
                except Exception as e:
                    self.m_ship_failures.inc()
                    errors.append(e)
                    log.error("shipping blocks of tenant %s failed: %s", tenant, e)
                    continue
                self.m_shipped.inc(len(made))
                uploaded.extend(made)
                db = self._tsdbs.get(tenant)
                if db is not None and self.retention_ms:
                    gone = yield self.offload.run("compact", self._expire, db, s)
                    if gone:
                        yield s.forget(gone)
            if errors and raise_errors:
                raise E.ComponentError(E.INTERNAL, "shipping blocks failed: %s" % (public_message(errors[0]),))
            return uploaded
        return run()

    def _expire(self, db, shipper):
        """Compact pool: delete local blocks that are shipped and ended retention_ms ago."""
        now_ms = int(self.clock.seconds() * 1000)
        if not hasattr(db, "blocks"):
            return []          # a TSDB without local blocks (test doubles)
        old = [b for b in db.blocks() if shipper.is_shipped(b.meta["ulid"])
               and b.meta["maxTime"] <= now_ms - self.retention_ms]
        if not old:
            return []
        db.delete_blocks(old)
        log.info("deleted %d shipped local blocks past retention", len(old))
        return [b.meta["ulid"] for b in old]

    def _flush_now(self, tenants):
        tsdbs = {t: db for t, db in self._tsdbs.items() if not tenants or t in tenants}

        def work():
            made = []
            for tenant, db in tsdbs.items():
                made.extend(db.cut_blocks(force=True))
            return made
        return self.offload.run("compact", work)

    # ---- status -----------------------------------------------------------------------------------

    def observe_query(self, series):
        """Count one select that returned `series` [(key, ts, vals)] (any thread)."""
        self.m_queries.inc()
        self.m_queried_series.observe(len(series))
        # map over C callables: a Python expression per series was measurable on instant
        # queries over thousands of series (ts is None for label-only reads: no samples)
        self.m_queried_samples.observe(sum(map(len, filter(None, map(_SECOND, series)))))

    def memory_series(self):
        total = 0
        for db in list(self._tsdbs.values()):
            try:
                total += db.head.num_series
            except Exception:
                pass
        return total

    def tenants(self):
        return sorted(self._tsdbs)

    def user_stats(self, tenant):
        db = self._tsdbs.get(tenant)
        return defer.succeed({"numSeries": db.head.num_series if db is not None else 0})

    def get_tsdb(self, tenant):
        """The open TSDB of tenant or None (read path, tests)."""
        return self._tsdbs.get(tenant)


def _append_histograms(db, batch):
    """Outcome codes of batch.histograms, appended series by series (rows come grouped)."""
    out = bytearray()
    rows = batch.histograms
    k = 0
    while k < len(rows):
        i = rows[k][0]
        j = k
        while j < len(rows) and rows[j][0] == i:
            j += 1
        if batch.skip and batch.skip[i]:
            out += bytes([O.SKIPPED]) * (j - k)
        else:
            out += bytes(db.append_histograms(batch.key(i), [(t, h) for _, t, h in rows[k:j]]))
        k = j
    return out
