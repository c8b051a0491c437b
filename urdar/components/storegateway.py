"""The store-gateway: serves series older than the ingesters hold from the blocks in the bucket.

`sync()` discovers each tenant's blocks (the bucket index when the compactor wrote one, plus a
listing of "<tenant>/" for blocks shipped since; only blocks with a meta.json count) and keeps, per block, an index-header on local disk under
`<sync dir>/<tenant>/<ULID>/index-header` (engine/indexheader: symbols, postings offset table and
TOC, made from four ranged reads of the index), reused across restarts. A query
(`select(tenant, matchers, mint, maxt)`) then works per block from ranged reads only: the postings
lists its matchers need, the series entries they select, and the chunks overlapping [mint, maxt];
nearby ranges are fetched in one get_range. Decoded postings and series entries, and chunk bytes,
are kept in bounded in-memory LRUs, or in memcached (components/storecache.py: entry bytes as in
the bucket, looked up on the reactor between the offloaded steps, decoded in the pool; a slow or
down memcached only turns into misses). Decoding runs in the offload pool `pool` (never on the
reactor); I/O is the bucket's Deferreds. Results have TSDB.select's shape, [(label key,
array('q') ts, array('d') vals)] in label order, replicas across overlapping blocks merged. A
block that cannot be served (missing object, corrupt bytes) fails the whole query with an error
naming tenant and block: never a silent partial result. `StoreGatewayReader` is the querier's view
of it (a components/sources.Source); the HTML pages are handlers/storegateway.py."""
import json
import logging
import os
import shutil
import threading
from dataclasses import dataclass
from array import array
from collections import OrderedDict

from twisted.internet import defer, task
from twisted.python.failure import Failure

from urdar.components import errors as E
from urdar.components.querier import QueryError
from urdar.components.sources import BlocksOnly, apply_limit, merge_series
from urdar.engine import matchers as _matchers
from urdar.engine.sharding import split_shard_matchers
from urdar.engine.block import ENC_XOR, is_ulid
from urdar.engine.errors import CorruptionError, ShortRead, UnsupportedChunkEncoding
from urdar.engine.indexheader import (
    IndexHeader, check_index_start, decode_chunk, decode_postings, parse_toc, section_length,
    write_index_header)
from urdar.engine.index import sort_label_keys
from urdar.engine.labels import decode_labels, labels_dict
from urdar.engine.querier import chunk_slice, decode_chunk_parts
from urdar.engine.histchunk import (
    ENC_FLOAT_HISTOGRAM, ENC_HISTOGRAM, decode_histogram_chunk, merge_histogram_parts)
from urdar.engine.xorchunk import decode_xor_range
from urdar.net.tenant import TenantError, validate_tenant
from urdar.storage.bucket import NotFound, run_off_reactor
from urdar.storage import bucketindex
from urdar.storage.bucketindex import IndexCorrupted, IndexNotFound, read_index
from urdar.storage.markers import DELETION_MARK, list_global_marks, read_deletion_mark
from urdar.storage.prefixed import for_tenant

log = logging.getLogger("urdar.storegateway")

INT64_MIN = -(2 ** 63)
INT64_MAX = 2 ** 63 - 1
HEADER_FILE = "index-header"
# Ranges closer than this are fetched with one get_range (Thanos' partitioner uses 512 KiB for
# postings and series; object stores charge per request, bytes in between are cheap).
MAX_GAP_BYTES = 64 * 1024
# Read estimates for entries whose length is unknown until read: a series entry, a chunk (Thanos'
# maxChunkSize); a short read is re-fetched with the exact length.
SERIES_ESTIMATE_BYTES = 4096
CHUNK_ESTIMATE_BYTES = 16000
# A select's series are decoded in this many pool steps at once (their decoding runs without
# the GIL, so the store-gateway pool's threads share it).
DECODE_SLICES = max(1, min(4, os.cpu_count() or 1))
# Up to this many chunks (~0.5 ms of decoding) a select served from the in-memory caches is
# decoded in the same pool step: fewer hops, where parallel decoding would not pay.
DECODE_AT_ONCE_CHUNKS = 512
# Bytes of select plans kept (StoreGateway._plans: references to cached series entries plus
# their chunk runs; about 64k series of 24 chunks).
PLAN_CACHE_BYTES = 64 << 20


class StoreGatewayError(QueryError):
    """A block could not be served; the query fails (HTTP 500, errorType internal)."""

    def __init__(self, tenant, ulid, reason):
        self.tenant = tenant
        self.ulid = ulid
        super().__init__(E.INTERNAL, "store-gateway cannot serve block %s of tenant %s: %s"
                         % (ulid, tenant, reason))


class LRUCache:
    """A byte-bounded LRU map (thread-safe). `max_bytes` 0 disables it."""

    def __init__(self, max_bytes):
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._d = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self):
        return len(self._d)

    def get(self, key):
        with self._lock:
            item = self._d.get(key)
            if item is None:
                self.misses += 1
                return None
            self._d.move_to_end(key)
            self.hits += 1
            return item[0]

    def get_many(self, keys, item, count=True):
        """{item(key): value} for the `keys` held, under one lock (counted as hits and misses
        unless `count` is false: see count())."""
        out = {}
        d = self._d
        with self._lock:
            for key in keys:
                v = d.get(key)
                if v is not None:
                    d.move_to_end(key)
                    out[item(key)] = v[0]
            if count:
                self.hits += len(out)
                self.misses += len(keys) - len(out)
        return out

    def count(self, hits):
        """Count `hits` lookups made with get_many(count=False) that all hit."""
        with self._lock:
            self.hits += hits

    def put(self, key, value, size):
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._d.pop(key, None)
            if old is not None:
                self.bytes -= old[1]
            self._d[key] = (value, size)
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, (_, sz) = self._d.popitem(last=False)
                self.bytes -= sz

    def drop_prefix(self, prefix):
        """Forget every key whose first elements equal `prefix` (a tuple)."""
        n = len(prefix)
        with self._lock:
            for key in [k for k in self._d if k[:n] == prefix]:
                self.bytes -= self._d.pop(key)[1]


class BucketBlock:
    """One block of one tenant: meta.json, its index-header (None while `error` says why the
    block cannot be served) and the tenant's bucket view."""

    def __init__(self, tenant, ulid, meta, bucket, header=None, error=None):
        self.tenant = tenant
        self.ulid = ulid
        self.meta = meta
        self.bucket = bucket
        self.header = header
        self.error = error

    @property
    def mint(self):
        return self.meta["minTime"]

    @property
    def maxt(self):
        return self.meta["maxTime"]

    def overlaps(self, mint, maxt):
        """Whether the block [minTime, maxTime) may hold samples in [mint, maxt] (inclusive)."""
        return self.mint <= maxt and mint < self.maxt

    @property
    def level(self):
        return int((self.meta.get("compaction") or {}).get("level", 1) or 1)

    @property
    def sources(self):
        return list((self.meta.get("compaction") or {}).get("sources") or [self.ulid])

    @property
    def size_bytes(self):
        """Sum of the block's file sizes from meta.json's thanos.files (0 when unknown)."""
        files = (self.meta.get("thanos") or {}).get("files") or ()
        return sum(int(f.get("size_bytes") or 0) for f in files)

    def index_size(self):
        for f in (self.meta.get("thanos") or {}).get("files") or ():
            if f.get("rel_path") == "index" and f.get("size_bytes"):
                return int(f["size_bytes"])
        return None

    def close(self):
        if self.header is not None:
            self.header.close()
            self.header = None


class _Postings:
    """The postings_for_matchers seam over a header and the lists fetched for one query."""

    def __init__(self, header, lists):
        self.header = header
        self.lists = lists
        self.postings_typecode = "I"

    def label_values(self, name):
        return self.header.label_values(name)

    def postings(self, name, value):
        p = self.lists.get((name, value))
        return p if p is not None else _EMPTY

    def all_postings(self):
        return self.postings("", "")


_EMPTY = array("I")


def needed_postings(header, matchers):
    """Every (name, value) whose postings list postings_for_matchers may read for `matchers`
    (a superset: values accepted by positive matchers, rejected by negative ones)."""
    keys = set()
    positive = False
    for m in matchers:
        if m.name == "":
            continue
        if m.matches_empty():
            for v in header.label_values(m.name):
                if not m.matches(v):
                    keys.add((m.name, v))
        else:
            positive = True
            if m.kind == _matchers.MATCH_EQUAL:
                keys.add((m.name, m.value))
            else:
                for v in header.label_values(m.name):
                    if m.matches(v):
                        keys.add((m.name, v))
    if not positive:
        keys.add(("", ""))
    return sorted(keys)


def _groups(spans, gap=MAX_GAP_BYTES):
    """Merge sorted (start, end, item) spans closer than `gap` into [(start, end, [items])]."""
    out = []
    for start, end, item in sorted(spans, key=lambda s: s[0]):
        if out and start - out[-1][1] <= gap:
            g = out[-1]
            g[1] = max(g[1], end)
            g[2].append((start, item))
        else:
            out.append([start, end, [(start, item)]])
    return out


_BS = "blocks_storage.bucket_store."


@dataclass(frozen=True)
class StoreGatewayConfig:
    """The store-gateway's settings (-blocks-storage.bucket-store.*)."""
    sync_interval_ms: int = 15 * 60 * 1000      # 0: sync only at start and on a tenant's first query
    index_cache_bytes: int = 1 << 30            # in-memory caches (0 = off), unless a cache object
    chunks_cache_bytes: int = 1 << 30           # (memcached) is given to the StoreGateway
    ignore_deletion_marks_delay_s: int = 3600

    @classmethod
    def from_config(cls, cfg):
        # An empty chunks-cache backend (Mimir's default) means no chunks cache at all.
        chunks = cfg[_BS + "chunks_cache.inmemory.max_size_bytes"] if cfg[_BS + "chunks_cache.backend"] else 0
        return cls(sync_interval_ms=cfg[_BS + "sync_interval"],
                   index_cache_bytes=cfg[_BS + "index_cache.inmemory.max_size_bytes"],
                   chunks_cache_bytes=chunks)


class StoreGateway:
    """Blocks of every tenant in `bucket`, served by ranged reads. Methods run on the reactor."""

    def __init__(self, bucket, sync_dir, clock, config=StoreGatewayConfig(), offload=None,
                 pool="storegateway", reactor=None, index_cache=None, chunks_cache=None,
                 owns=None):
        self.bucket = bucket
        # owns(ulid, loaded, tenant) -> bool: the blocks this instance keeps (components/blockshard.py:
        # the store-gateway ring); None keeps every block.
        self.owns = owns
        self.sync_dir = os.path.abspath(os.fspath(sync_dir))
        self.clock = clock
        self.config = config
        self.sync_interval_ms = config.sync_interval_ms
        self.ignore_deletion_marks_delay_s = config.ignore_deletion_marks_delay_s
        # A cache object given (storecache.MemcachedStoreCache) replaces the in-memory LRU.
        self.index_cache = index_cache if index_cache is not None else LRUCache(config.index_cache_bytes)
        self.chunks_cache = chunks_cache if chunks_cache is not None else LRUCache(config.chunks_cache_bytes)
        # per (tenant, block, matchers, shard): the _SelectPlan of a select served from the caches
        self._plans = LRUCache(PLAN_CACHE_BYTES)
        self._offload = offload
        self._pool = pool
        self._reactor = reactor
        self._tenants = {}        # tenant -> {ulid: BucketBlock}
        self._ordered = {}        # tenant -> [(mint, maxt, BucketBlock)] by min time, ULID (cache)
        self._synced = {}         # tenant -> Deferred of its running sync, or None once done
        self._loop = None
        self.state = "New"
        self.range_requests = 0   # get_range calls made for queries (tests, metrics)

    def _run(self, fn, *args):
        return run_off_reactor(self._offload, self._pool, self._reactor, fn, *args)

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self):
        """Sync every tenant found in the bucket, then keep syncing every sync interval."""
        self.state = "Starting"
        for cache in (self.index_cache, self.chunks_cache):
            if hasattr(cache, "start"):
                cache.start()

        def running(_):
            self.state = "Running"
            if self.sync_interval_ms:
                self._loop = task.LoopingCall(self._sync_round)
                self._loop.clock = self.clock
                self._loop.start(self.sync_interval_ms / 1000.0, now=False).addErrback(
                    lambda f: log.error("store-gateway sync loop stopped: %s", f.getErrorMessage()))
        return self.sync().addCallback(running)

    def _sync_round(self):
        return self.sync().addErrback(
            lambda f: log.error("store-gateway sync failed: %s", f.getErrorMessage()))

    def stop(self):
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        for blocks in self._tenants.values():
            for b in blocks.values():
                b.close()
        self._tenants = {}
        self._ordered = {}
        for cache in (self.index_cache, self.chunks_cache):
            if hasattr(cache, "stop"):
                cache.stop()
        self.state = "Terminated"
        return defer.succeed(None)

    def ready(self):
        return self.state == "Running"

    # ---- discovery -----------------------------------------------------------------------------

    def list_tenants(self):
        """Deferred[sorted tenant IDs having a directory in the bucket]."""
        return bucketindex.list_tenants(self.bucket)

    @defer.inlineCallbacks
    def sync(self):
        """Deferred: bring every tenant's block set in line with the bucket."""
        tenants = yield self.list_tenants()
        for tenant in tenants:
            try:
                yield self.sync_tenant(tenant)
            except Exception as e:
                log.error("syncing blocks of tenant %s failed: %s", tenant, e)
        for gone in set(self._tenants) - set(tenants):
            self._ordered.pop(gone, None)
            for b in self._tenants.pop(gone).values():
                self._drop_block(b)

    def sync_tenant(self, tenant):
        """Deferred: load new blocks of `tenant`, drop deleted ones. Concurrent calls share one."""
        running = self._synced.get(tenant)
        if running is not None:
            d = defer.Deferred()
            running.append(d)
            return d
        waiters = self._synced[tenant] = []
        d = self._sync_tenant(tenant)

        def done(result):
            self._synced[tenant] = None
            for w in waiters:
                w.errback(result) if isinstance(result, Failure) else w.callback(result)
            return result
        return d.addBoth(done)

    @defer.inlineCallbacks
    def _sync_tenant(self, tenant):
        validate_tenant(tenant)
        bucket = for_tenant(self.bucket, tenant)
        metas = {}
        marks = {}
        # The bucket index (written by the compactor) gives blocks and deletion marks; one listing
        # of the tenant adds blocks shipped since it was written (the index may be up to
        # -compactor.cleanup-interval old, and -querier.query-store-after may be below that).
        listed = [n[:-1] for n in (yield bucket.list("")) if n.endswith("/") and is_ulid(n[:-1])]
        try:
            index = yield read_index(bucket, self._offload, self._pool, self._reactor)
            ulids = sorted(set(b.block_id for b in index.blocks) | set(listed))
            marks = index.deletion_marks()
        except (IndexNotFound, IndexCorrupted):
            ulids = listed
            for ulid in (yield list_global_marks(bucket))[DELETION_MARK]:
                mark = yield read_deletion_mark(bucket, ulid)
                if mark is not None:
                    marks[ulid] = mark.deletion_time
        now = self.clock.seconds()
        wanted = [u for u in ulids if is_ulid(u)
                  and not (u in marks and now - marks[u] > self.ignore_deletion_marks_delay_s)]
        blocks = self._tenants.setdefault(tenant, {})
        if self.owns is not None:
            wanted = [u for u in wanted if self.owns(u, u in blocks, tenant)]
        for ulid in wanted:
            old = blocks.get(ulid)
            if old is not None and old.error is None:
                continue
            try:
                meta = json.loads((yield bucket.get(ulid + "/meta.json")))
            except NotFound:
                continue                     # a partial upload (or just deleted): not a block yet
            except ValueError as e:
                meta = {"ulid": ulid, "minTime": INT64_MIN, "maxTime": INT64_MAX}
                self._ordered.pop(tenant, None)
                blocks[ulid] = BucketBlock(tenant, ulid, meta, bucket,
                                           error="meta.json is not JSON: %s" % (e,))
                continue
            metas[ulid] = meta
            block = yield self._load_block(tenant, ulid, meta, bucket)
            self._ordered.pop(tenant, None)
            blocks[ulid] = block
        for ulid in set(blocks) - set(wanted):
            self._ordered.pop(tenant, None)
            self._drop_block(blocks.pop(ulid))

    def _drop_block(self, b):
        b.close()
        self.index_cache.drop_prefix((b.tenant, b.ulid))
        self.chunks_cache.drop_prefix((b.tenant, b.ulid))
        self._plans.drop_prefix((b.tenant, b.ulid))
        shutil.rmtree(os.path.join(self.sync_dir, b.tenant, b.ulid), ignore_errors=True)

    @defer.inlineCallbacks
    def _load_block(self, tenant, ulid, meta, bucket):
        """Deferred[BucketBlock]: open the local index-header, building it from ranged reads of the
        index when absent or damaged. A failure gives a block with `error` set (queries over it
        fail; the next sync tries again)."""
        block_dir = os.path.join(self.sync_dir, tenant, ulid)
        path = os.path.join(block_dir, HEADER_FILE)
        block = BucketBlock(tenant, ulid, meta, bucket)
        try:
            block.header = yield self._run(_open_header, path)
            if block.header is None:
                yield self._build_header(block, path)
                block.header = yield self._run(IndexHeader, path)
            log.info("store-gateway loaded block %s of tenant %s", ulid, tenant)
        except Exception as e:
            block.error = str(e)
            log.error("store-gateway cannot load block %s of tenant %s: %s", ulid, tenant, e)
        return block

    @defer.inlineCallbacks
    def _build_header(self, block, path):
        name = block.ulid + "/index"
        size = block.index_size()
        if size is None:
            size = (yield block.bucket.attributes(name)).size
        where = "%s/%s" % (block.tenant, name)
        version = check_index_start((yield block.bucket.get_range(name, 0, 5)), where)
        toc = parse_toc((yield block.bucket.get_range(name, size - 52, 52)), size, where)
        sections = []
        for off in (toc[0], toc[5]):
            if not off:
                sections.append(b"")
                continue
            head = yield block.bucket.get_range(name, off, 4)
            if len(head) < 4:
                raise CorruptionError(where, off, "section header past the end")
            ln = int.from_bytes(head, "big")
            data = yield block.bucket.get_range(name, off, 8 + ln)
            try:
                n = section_length(data, off, where)
            except ShortRead:
                raise CorruptionError(where, off, "section runs past the end") from None
            sections.append(data[:n])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        yield self._run(write_index_header, path, version, size, toc, sections[0], sections[1])

    # ---- reading -------------------------------------------------------------------------------

    def tenants(self):
        """Tenants with synced blocks, sorted."""
        return sorted(t for t, blocks in self._tenants.items() if blocks)

    def blocks(self, tenant):
        """The tenant's BucketBlocks, by min time then ULID."""
        return [b for _, _, b in self._by_time(tenant)]

    def _by_time(self, tenant):
        """[(mint, maxt, block)] of the tenant by min time then ULID, sorted once per change of
        its block set (every select asks; a year of blocks is a thousand)."""
        got = self._ordered.get(tenant)
        if got is None:
            got = [(b.mint, b.maxt, b) for b in sorted(self._tenants.get(tenant, {}).values(),
                                                       key=lambda b: (b.mint, b.ulid))]
            self._ordered[tenant] = got
        return got

    def _overlapping(self, tenant, mint, maxt):
        """The tenant's blocks that may hold samples in [mint, maxt] (BucketBlock.overlaps)."""
        return [b for lo, hi, b in self._by_time(tenant) if lo <= maxt and mint < hi]

    @defer.inlineCallbacks
    def _blocks_for(self, tenant, mint, maxt, only=None):
        try:
            validate_tenant(tenant)
            for_tenant(self.bucket, tenant)
        except (TenantError, ValueError) as e:
            raise E.ComponentError(E.BAD_DATA, "invalid tenant ID %r: %s" % (tenant, e)) from None
        if tenant not in self._tenants or self._synced.get(tenant) is not None:
            yield self.sync_tenant(tenant)
        out = self._overlapping(tenant, mint, maxt)
        if only is not None:
            # The querier names the blocks it wants from this instance (those the ring gives it);
            # one not loaded here fails the call so the querier asks another replica.
            have = {b.ulid for b in self.blocks(tenant)}
            if set(only) - have:
                # Shipped since the last sync? One sync (shared with concurrent queries) first.
                yield self.sync_tenant(tenant)
                out = self._overlapping(tenant, mint, maxt)
                have = {b.ulid for b in self.blocks(tenant)}
            missing = sorted(set(only) - have)
            if missing:
                raise E.ComponentError(E.UNAVAILABLE, "store-gateway has not loaded block(s) %s "
                                       "of tenant %s" % (", ".join(missing[:10]), tenant))
            out = [b for b in out if b.ulid in only]
        for b in out:
            if b.error is not None:
                raise StoreGatewayError(tenant, b.ulid, b.error)
        return out

    def select(self, tenant, matchers, mint=INT64_MIN, maxt=INT64_MAX, samples=True, blocks=None):
        """Deferred[[(label key, ts, vals)]] over every block of tenant overlapping [mint, maxt]
        (only those of the ULIDs `blocks`, when given)."""
        return self._select(tenant, tuple(matchers), mint, maxt, samples, blocks)

    @defer.inlineCallbacks
    def _select(self, tenant, matchers, mint, maxt, samples, only=None):
        blocks = yield self._blocks_for(tenant, mint, maxt, only)
        cached = [None] * len(blocks)
        if samples and blocks and not (getattr(self.index_cache, "remote", False) or
                                       getattr(self.chunks_cache, "remote", False)):
            # Everything a block needs already in the in-memory caches (a dashboard's repeated
            # query): every block in one pool step, no I/O to wait for between the steps.
            done, cached = yield self._run(self._cached_selects, blocks, matchers, mint, maxt)
            if done:
                return cached
        results = yield defer.gatherResults(
            [self._block_select(b, matchers, mint, maxt, samples) if c is None else defer.succeed(c)
             for b, c in zip(blocks, cached)],
            consumeErrors=True).addErrback(_first_error)
        if samples:
            # each series' chunks of every block decoded into one pair of arrays; the series
            # split over a few pool steps that decode without the GIL, side by side
            named = [(b, r) for b, r in zip(blocks, results) if r[0]]
            if not named:
                return []
            results = [r for _, r in named]
            keys, parts = yield self._run(_gather_parts, results)
            n = -(-len(keys) // DECODE_SLICES)
            slices = [keys[i:i + n] for i in range(0, len(keys), n)] if len(keys) > 1 else [keys]
            try:
                done = yield defer.gatherResults(
                    [self._run(_decode_series, ks, parts, mint, maxt) for ks in slices],
                    consumeErrors=True).addErrback(_first_error)
            except ValueError as e:          # CorruptionError...: which block holds it?
                raise (yield self._run(_blame, named, mint, maxt, e)) from None
            return done[0] if len(done) == 1 else [s for d in done for s in d]
        return (yield self._run(merge_series, results, samples)) if len(results) > 1 else \
            (results[0] if results else [])

    def _cached_selects(self, blocks, matchers, mint, maxt):
        """Pool thread: (False, per block _block_select's answer when the in-memory caches hold
        every postings list, series entry and chunk run it needs, else None (the block then
        takes the path with I/O, which also reports any error with the block's name)); or
        (True, the decoded series) when every block was there and the chunks are few enough
        to decode here at once."""
        shard, matchers = split_shard_matchers(matchers)
        out = []
        for b in blocks:
            try:
                out.append(self._cached_select(b, shard, matchers, mint, maxt))
            except Exception:
                out.append(None)
        if all(r is not None for r in out):
            results = [r for r in out if r[0]]
            if _few_chunks(results, DECODE_AT_ONCE_CHUNKS):
                keys, parts = _gather_parts(results)
                try:
                    return True, _decode_series(keys, parts, mint, maxt)
                except ValueError:           # CorruptionError...: _select names the block
                    pass
        return False, out

    def _cached_select(self, b, shard, matchers, mint, maxt):
        h, ic, cc = b.header, self.index_cache, self.chunks_cache
        if h is None or b.error is not None:
            return None
        plan_key = (b.tenant, b.ulid, "q", _matchers_key(matchers), shard)
        plan = self._plans.get(plan_key)
        if plan is None:
            plan = self._plan(b, shard, matchers)
            if plan is None:
                return None
            self._plans.put(plan_key, plan, plan.size())
        if not plan.series:
            return [], [], {}
        if mint <= plan.lo and maxt >= plan.hi:
            # the range covers every chunk of the block's series (a long query's inner blocks)
            if plan.full is None:
                series, runs, run_refs = _chunk_runs(plan.series, plan.lo, plan.hi)
                plan.full = (series, runs, [(b.tenant, b.ulid, "c", run) for run in run_refs])
            series, runs, run_keys = plan.full
        else:
            series, runs, run_refs = _chunk_runs(plan.series, mint, maxt)
            run_keys = [(b.tenant, b.ulid, "c", run) for run in run_refs]
        chunks = cc.get_many(run_keys, _item_of, count=False)
        if len(chunks) != len(run_keys):
            return None
        ic.count(plan.lookups)
        cc.count(len(run_keys))
        return series, runs, chunks

    def _plan(self, b, shard, matchers):
        """Pool thread: the _SelectPlan of `matchers` (and `shard`) in block `b` when the index
        cache holds every postings list and series entry it needs, else None."""
        h, ic = b.header, self.index_cache
        keys = needed_postings(h, matchers)
        lists = ic.get_many([(b.tenant, b.ulid, "p", k) for k in keys], _item_of, count=False)
        if len(lists) != len(keys) and any(
                k not in lists and h.postings_range(*k) is not None for k in keys):
            return None
        ids = _matchers.postings_for_matchers(_Postings(h, lists), matchers)
        if not len(ids):
            return _SelectPlan([], len(keys))
        found = ic.get_many([(b.tenant, b.ulid, "s", sid) for sid in ids], _item_of, count=False)
        if len(found) != len(ids):
            return None
        series = [found[sid] for sid in ids]
        if shard is not None:
            series = [s for s in series if shard.matches(s[0])]
        return _SelectPlan(series, len(keys) + len(ids))

    def _block_select(self, b, matchers, mint, maxt, samples):
        """Deferred: with `samples`, block `b`'s (series entries with chunks in [mint, maxt], each
        one's chunk runs, {run: chunks}) (_chunk_runs), decoded by _decode_series; else
        [(key, None, None)]."""
        d = self._block_select_inner(b, matchers, mint, maxt, samples)

        def wrap(f):
            if f.check(StoreGatewayError, defer.CancelledError):
                return f
            raise StoreGatewayError(b.tenant, b.ulid, f.getErrorMessage())
        return d.addErrback(wrap)

    @defer.inlineCallbacks
    def _block_select_inner(self, b, matchers, mint, maxt, samples):
        h = b.header
        shard, matchers = split_shard_matchers(matchers)
        keys = yield self._run(needed_postings, h, matchers)
        lists = yield self._fetch_postings(b, keys)
        ids = yield self._run(lambda: _matchers.postings_for_matchers(_Postings(h, lists), matchers))
        if not len(ids):
            return ([], [], {}) if samples else []
        series = yield self._fetch_series(b, ids)
        if shard is not None:
            # Series of other query shards are dropped on their index entries: their chunks
            # are never fetched (engine/sharding.py, the same hash as the head's).
            series = yield self._run(lambda: [s for s in series if shard.matches(s[0])])
        if not samples:
            return (yield self._run(_label_only, series, mint, maxt))
        series, runs, run_refs = yield self._run(_chunk_runs, series, mint, maxt)
        chunks = yield self._fetch_chunks(b, run_refs)
        return series, runs, chunks

    # ---- ranged fetches with caching -------------------------------------------------------------

    @defer.inlineCallbacks
    def _fetch(self, b, name, spans, parse, limit):
        """{item: parsed} for spans [(start, estimated end, item)] of object `name`: nearby spans
        share a get_range; an entry cut short is fetched again whole. `parse(buf, pos, offset)`
        runs in the pool; `limit` bounds every read (end of its section)."""
        out = {}
        retry = []

        def parse_group(buf, gstart, items):
            got, short = {}, []
            for start, item in items:
                try:
                    got[item] = parse(buf, start - gstart, start)
                except ShortRead as e:
                    short.append((start, item, e.needed))
            return got, short

        groups = _groups(spans)
        bufs = yield defer.gatherResults(
            [self._get_range(b, name, g[0], min(g[1], limit) - g[0]) for g in groups],
            consumeErrors=True).addErrback(_first_error)
        for g, buf in zip(groups, bufs):
            got, short = yield self._run(parse_group, buf, g[0], g[2])
            out.update(got)
            retry.extend(short)
        for start, item, needed in retry:
            length = needed or 64
            while True:
                length = min(length, max(limit - start, 0))
                buf = yield self._get_range(b, name, start, length)
                try:
                    out[item] = yield self._run(parse, buf, 0, start)
                    break
                except ShortRead as e:
                    if len(buf) < length or length >= limit - start:
                        raise CorruptionError("%s/%s" % (b.tenant, name), start,
                                              "entry runs past the end") from None
                    length = max(e.needed, 2 * length)
        return out

    def _get_range(self, b, name, offset, length):
        self.range_requests += 1
        return b.bucket.get_range(name, offset, length)

    @defer.inlineCallbacks
    def _cache_lookup(self, cache, b, kind, items, decode):
        """{item: value} of the `items` of block `b` found in `cache`. A remote cache gives entry
        bytes: `decode(raw, item)` runs in the pool, and bytes that do not decode are misses."""
        if not getattr(cache, "remote", False):
            head = (b.tenant, b.ulid, kind)
            return cache.get_many([head + (item,) for item in items], _item_of)
        if not items:
            return {}
        raws = yield cache.get_many([(b.tenant, b.ulid, kind, item) for item in items])
        if not raws:
            return {}
        out, bad = yield self._run(_decode_cached, raws, decode)
        cache.hits += len(out)
        cache.corrupt += bad
        return out

    @staticmethod
    def _parser(cache, parse, entry_size):
        """`parse` for _fetch; for a remote cache it also returns the entry's bytes."""
        if not getattr(cache, "remote", False):
            return parse

        def parse_keep(buf, pos, off):
            value = parse(buf, pos, off)
            return value, bytes(buf[pos:pos + entry_size(buf, pos)])
        return parse_keep

    @staticmethod
    def _cache_store(cache, key, got, size):
        """Put what _fetch parsed (via _parser) into `cache`; the decoded value."""
        if getattr(cache, "remote", False):
            value, raw = got
            cache.put(key, raw)
            return value
        cache.put(key, got, size(got))
        return got

    @defer.inlineCallbacks
    def _fetch_postings(self, b, keys):
        where = "%s/%s/index" % (b.tenant, b.ulid)
        cache = self.index_cache
        lists = yield self._cache_lookup(cache, b, "p", keys,
                                         lambda raw, key: decode_postings(raw, 0, where, 0))
        spans = []
        for key in keys:
            if key in lists:
                continue
            r = b.header.postings_range(*key)
            if r is not None:
                spans.append((r[0], r[1], key))
        if spans:
            got = yield self._fetch(b, b.ulid + "/index", spans, self._parser(
                cache, lambda buf, pos, off: decode_postings(buf, pos, where, off), _postings_size),
                b.header.toc[5] or b.header.index_size - 52)
            for key, p in got.items():
                lists[key] = self._cache_store(cache, (b.tenant, b.ulid, "p", key), p,
                                               lambda p: 64 + 4 * len(p))
        return lists

    @defer.inlineCallbacks
    def _fetch_series(self, b, ids):
        h = b.header
        cache = self.index_cache
        found = yield self._cache_lookup(cache, b, "s", ids,
                                         lambda raw, sid: h.decode_series(raw, 0, h.series_offset(sid)))
        spans = []
        for sid in ids:
            if sid in found:
                continue
            off = h.series_offset(sid)
            spans.append((off, off + SERIES_ESTIMATE_BYTES, sid))
        if spans:
            got = yield self._fetch(b, b.ulid + "/index", spans, self._parser(
                cache, lambda buf, pos, off: h.decode_series(buf, pos, off), _varint_entry_size(4)),
                h.series_end)
            for sid, s in got.items():
                found[sid] = self._cache_store(cache, (b.tenant, b.ulid, "s", sid), s,
                                               lambda s: 96 + len(s[0]) + 24 * len(s[3]))
        return [found[sid] for sid in ids]

    @defer.inlineCallbacks
    def _fetch_chunks(self, b, run_refs):
        """{run: ((encoding, data), ...)} for the chunk runs {(first ref, last ref): refs} of
        block `b`. A run (one series' chunks in range, in one segment) is one cache entry and
        one span of the segment: the entries the writer put one after the other."""
        cache = self.chunks_cache

        def where(ref):
            return "%s/%s/chunks/%06d" % (b.tenant, b.ulid, (ref >> 32) + 1)

        found = yield self._cache_lookup(
            cache, b, "c", list(run_refs), lambda raw, run: _parse_run(
                raw, 0, where(run[0]), run[0] & 0xFFFFFFFF, run_refs[run])[0])
        by_seg = {}
        for run, refs in run_refs.items():
            if run in found:
                continue
            off = run[0] & 0xFFFFFFFF
            by_seg.setdefault(run[0] >> 32, []).append(
                (off, (run[1] & 0xFFFFFFFF) + CHUNK_ESTIMATE_BYTES, run))
        ds = []
        remote = getattr(cache, "remote", False)
        for seg, spans in sorted(by_seg.items()):
            name = "%s/chunks/%06d" % (b.ulid, seg + 1)
            by_off = {off: run_refs[run] for off, _, run in spans}

            def parse(buf, pos, off, w=where(seg << 32), by_off=by_off):
                chunks, size = _parse_run(buf, pos, w, off, by_off[off])
                return (chunks, bytes(buf[pos:pos + size])) if remote else chunks
            ds.append(self._fetch(b, name, spans, parse, 1 << 62))
        for got in (yield defer.gatherResults(ds, consumeErrors=True).addErrback(_first_error)):
            for run, c in got.items():
                found[run] = self._cache_store(cache, (b.tenant, b.ulid, "c", run), c,
                                               lambda c: 64 + sum(40 + len(d) for _, d in c))
        return found

    # ---- labels ----------------------------------------------------------------------------------

    @defer.inlineCallbacks
    def label_names(self, tenant, matchers=(), mint=INT64_MIN, maxt=INT64_MAX, blocks=None):
        """Deferred[sorted label names] of the tenant's series (matching `matchers`) in range."""
        only = blocks
        if not matchers:
            blocks = yield self._blocks_for(tenant, mint, maxt, only)
            return sorted({n for b in blocks for n in b.header.label_names()})
        series = yield self.select(tenant, matchers, mint, maxt, samples=False, blocks=only)
        return (yield self._run(_names_of, series))

    @defer.inlineCallbacks
    def label_values(self, tenant, name, matchers=(), mint=INT64_MIN, maxt=INT64_MAX, blocks=None):
        """Deferred[sorted values of label `name`] in range."""
        only = blocks
        if not matchers:
            blocks = yield self._blocks_for(tenant, mint, maxt, only)
            return sorted({v for b in blocks for v in b.header.label_values(name) if v})
        series = yield self.select(tenant, matchers, mint, maxt, samples=False, blocks=only)
        return (yield self._run(_values_of, series, name))


def _names_of(series):
    """Pool thread: sorted label names over [(key, _, _)]."""
    return sorted({n for key, _, _ in series for n, _ in decode_labels(key)})


def _values_of(series, name):
    """Pool thread: sorted non-empty values of label `name` over [(key, _, _)]."""
    return sorted({v for v in (labels_dict(key).get(name) for key, _, _ in series) if v})


def _item_of(key):
    return key[3]


def _open_header(path):
    """The IndexHeader at path, or None when absent or damaged (damaged ones are removed)."""
    if not os.path.exists(path):
        return None
    try:
        return IndexHeader(path)
    except (CorruptionError, OSError) as e:
        log.warning("rebuilding index-header %s: %s", path, e)
        os.unlink(path)
        return None


def _decode_cached(raws, decode):
    """Pool thread: ({item: decode(raw, item)}, count of entries that did not decode) for the
    {(tenant, ulid, kind, item): raw} a remote cache returned."""
    out, bad = {}, 0
    for key, raw in raws.items():
        try:
            out[key[3]] = decode(raw, key[3])
        except (ValueError, TypeError, IndexError):    # CorruptionError, ShortRead, ...
            bad += 1
    return out, bad


def _postings_size(buf, pos):
    """Bytes of the postings list at buf[pos:] (len <4b> · body · CRC <4b>)."""
    return 8 + int.from_bytes(bytes(buf[pos:pos + 4]), "big")


def _varint_entry_size(extra):
    """Size function of an entry "uvarint len · body(len) · `extra` more bytes" (series entries:
    CRC, 4; chunks: encoding byte and CRC, 5)."""
    def size(buf, pos):
        n, shift, k = 0, 0, pos
        while True:
            c = buf[k]
            n |= (c & 0x7F) << shift
            k += 1
            if c < 0x80:
                return k - pos + n + extra
            shift += 7
    return size


def _chunk_runs(series, mint, maxt):
    """Pool thread: (the series entries with a chunk overlapping [mint, maxt], per entry its
    runs, {run: refs}). A run (first ref, last ref) is the chunks of one series from the first
    to the last overlapping the range, within one segment."""
    keep, runs, run_refs = [], [], {}
    for s in series:
        _, mints, maxts, refs = s
        n = len(refs)
        sl = chunk_slice(mints, maxts, mint, maxt) if n else None
        if sl is not None:
            # chunks in time order (as every writer leaves them): the range's are one slice,
            # in one segment but where a series straddles two
            k0, k1 = sl
            if k0 >= k1:
                continue
            if refs[k0] >> 32 == refs[k1 - 1] >> 32:
                keep.append(s)
                runs.append([_run_of(refs, k0, k1 - 1, run_refs)])
                continue
            ks = range(k0, k1)
        else:
            ks = [k for k in range(n) if maxts[k] >= mint and mints[k] <= maxt]
        if not ks:
            continue
        mine = []
        start = prev = ks[0]
        for k in ks[1:]:
            if k != prev + 1 or refs[k] >> 32 != refs[start] >> 32:
                mine.append(_run_of(refs, start, prev, run_refs))
                start = k
            prev = k
        mine.append(_run_of(refs, start, prev, run_refs))
        keep.append(s)
        runs.append(mine)
    return keep, runs, run_refs


class _SelectPlan:
    """What a select of one matcher set (and query shard) needs of one block, whatever its time
    range: the series entries it selects, their chunks' time extent [lo, hi], and, once asked,
    the chunk runs of a range covering that extent. Blocks never change, so a repeated query
    (a dashboard's, or its next refresh) skips the postings and series lookups and, in the
    blocks it covers whole, the chunk-run split too (StoreGateway._plans, dropped with the
    block)."""
    __slots__ = ("series", "lookups", "lo", "hi", "full")

    def __init__(self, series, lookups):
        self.series = series
        self.lookups = lookups          # index cache lookups it stands for (hit counts)
        self.full = None
        # every chunk's mint and maxt lie in [lo, hi] (so a range covering it selects them all)
        lo, hi = INT64_MAX, INT64_MIN
        for _, mints, maxts, _ in series:
            if len(mints):
                lo = min(lo, min(mints), min(maxts))
                hi = max(hi, max(mints), max(maxts))
        self.lo, self.hi = lo, hi

    def size(self):
        """Bytes it may keep alive (an estimate, for the LRU): the series entries, which the
        index cache may evict meanwhile, and the chunk runs."""
        return 256 + sum(200 + len(s[0]) + 32 * len(s[3]) for s in self.series)


def _matchers_key(matchers):
    return tuple((m.kind, m.name, m.value) for m in matchers)


def _label_only(series, mint, maxt):
    """Pool thread: [(key, None, None)] of the series entries with a chunk overlapping
    [mint, maxt] (a label-only read: no chunk is fetched)."""
    out = []
    for key, mints, maxts, _ in series:
        if not len(mints):
            continue
        sl = chunk_slice(mints, maxts, mint, maxt)
        if sl is not None:
            if sl[0] < sl[1]:
                out.append((key, None, None))
        elif any(maxts[k] >= mint and mints[k] <= maxt for k in range(len(mints))):
            out.append((key, None, None))
    return out


def _run_of(refs, k0, k1, run_refs):
    run = (refs[k0], refs[k1])
    run_refs[run] = refs[k0:k1 + 1]
    return run


def _parse_run(buf, pos, where, first_off, refs):
    """(((encoding, data), ...) of the chunk-segment entries at the refs (one segment, ascending)
    of a span starting at buf[pos:] with offset `first_off`, bytes from the first entry's start
    to the last's end). ShortRead(bytes needed from pos) when the span is cut short."""
    out = []
    end = 0
    for ref in refs:
        rel = (ref & 0xFFFFFFFF) - first_off
        try:
            enc, data = decode_chunk(buf, pos + rel, where, ref & 0xFFFFFFFF)
        except ShortRead as e:
            raise ShortRead(rel + (e.needed or 16)) from None
        except ValueError:
            if pos + rel > len(buf):        # "position outside the buffer"
                raise ShortRead(rel + 16) from None
            raise
        out.append((enc, data))
        end = rel + _varint_len(len(data)) + 1 + len(data) + 4
    return tuple(out), end


def _varint_len(n):
    k = 1
    while n >= 0x80:
        n >>= 7
        k += 1
    return k


def _few_chunks(results, limit):
    """Whether the blocks' select answers hold at most `limit` chunks."""
    n = 0
    for r in results:
        for c in r[2].values():
            n += len(c)
            if n > limit:
                return False
    return True


def _gather_parts(results):
    """Pool thread: (keys in label order, {key: [chunks of each block]}) over the blocks'
    (series entries, runs, chunks) (blocks by min time)."""
    parts = {}
    for series, runs, chunks in results:
        for s, rs in zip(series, runs):
            part = chunks[rs[0]] if len(rs) == 1 else [c for run in rs for c in chunks[run]]
            p = parts.get(s[0])
            if p is None:
                parts[s[0]] = [part]
            else:
                p.append(part)
    keys = list(parts)
    if len(results) > 1:
        keys = [keys[i] for i in sort_label_keys(keys)]
    return keys, parts


def _decode_series(keys, parts, mint, maxt):
    """Pool thread: [(key, ts, vals)] of `keys` with samples in [mint, maxt]: a series' chunks
    of every block decoded into one pair of arrays, or, where blocks overlap or chunks hold
    histograms, block by block and merged (the earlier block wins on equal timestamps)."""
    out = []
    for key in keys:
        got = decode_chunk_parts(parts[key], mint, maxt)
        if got is None:
            out.extend(merge_series([_decode_part(key, p, mint, maxt) for p in parts[key]]))
        elif len(got[0]):
            out.append((key, got[0], got[1]))
    return out


def _blame(named, mint, maxt, err):
    """Pool thread: the StoreGatewayError naming the first of the [(block, its select answer)]
    whose chunks do not decode alone (`err` was raised decoding them all together)."""
    for b, (series, runs, chunks) in named:
        try:
            keys, parts = _gather_parts([(series, runs, chunks)])
            for key in keys:
                _decode_part(key, parts[key][0], mint, maxt)
        except ValueError as e:
            return StoreGatewayError(b.tenant, b.ulid, str(e))
    b = named[0][0]
    return StoreGatewayError(b.tenant, b.ulid, str(err))


def _decode_part(key, part, mint, maxt):
    """[(key, ...)] or []: one block's chunks of a series [(encoding, data)], decoded alone."""
    n = len(part)
    return _decode_series_samples([(key, array("q", [INT64_MIN]) * n, array("q", [INT64_MAX]) * n,
                                    range(n))], dict(enumerate(part)), mint, maxt)


def _decode_series_samples(series, chunks, mint, maxt):
    """Pool thread: [(key, ts, vals)] of series with samples in [mint, maxt]; a series with
    native histograms there is (key, ts, vals, None, hts, [FloatHistogram]) (engine/head's
    select contract)."""
    out = []
    for key, mints, maxts, refs in series:
        ts = array("q")
        vals = array("d")
        hts = None
        for k, ref in enumerate(refs):
            if maxts[k] < mint or mints[k] > maxt:
                continue
            enc, data = chunks[ref]
            if enc in (ENC_HISTOGRAM, ENC_FLOAT_HISTOGRAM):
                t, hs = decode_histogram_chunk(data, enc, mint, maxt)
                if hts is None:
                    hts, hvs = array("q"), []
                hts.extend(t)
                hvs.extend(h.to_float() for h in hs)
                continue
            if enc != ENC_XOR:
                raise UnsupportedChunkEncoding(enc, ref)
            t, v = decode_xor_range(data, mint, maxt)
            ts.extend(t)
            vals.extend(v)
        if hts is not None and len(hts):
            if any(hts[i] >= hts[i + 1] for i in range(len(hts) - 1)):
                hts, hvs = merge_histogram_parts([(hts[i:i + 1], hvs[i:i + 1]) for i in range(len(hts))])
            out.append((key, ts, vals, None, hts, hvs))
        elif len(ts):
            out.append((key, ts, vals))
    return out


def _first_error(f):
    """gatherResults' FirstError -> the failure inside it."""
    if isinstance(f.value, defer.FirstError):
        return f.value.subFailure
    return f


class StoreGatewayReader(BlocksOnly):
    """The querier's view of a store-gateway: a components/sources.Source (and the ingester
    client's exemplars/metadata/head_series, which a store-gateway answers as empty)."""

    def __init__(self, storegateway):
        self._sg = storegateway

    def select(self, tenant, matchers, hints, blocks=None):
        d = self._sg.select(tenant, matchers, hints.mint, hints.maxt, hints.samples, blocks)
        return d.addCallback(apply_limit, hints) if hints.limit > 0 else d

    def label_names(self, tenant, matchers, hints, blocks=None):
        d = self._sg.label_names(tenant, matchers, hints.mint, hints.maxt, blocks)
        return d.addCallback(apply_limit, hints) if hints.limit > 0 else d

    def label_values(self, tenant, name, matchers, hints, blocks=None):
        d = self._sg.label_values(tenant, name, matchers, hints.mint, hints.maxt, blocks)
        return d.addCallback(apply_limit, hints) if hints.limit > 0 else d
