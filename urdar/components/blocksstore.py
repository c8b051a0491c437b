"""The querier's view of sharded store-gateways: a components/sources.Source that, per call, lists
the tenant's blocks in the time range, asks each block's owner in the store-gateway ring (Mimir's
BlocksRead: ACTIVE owners) for it, all owners concurrently and each once for all its blocks, and
retries the blocks of a failed instance on another owner not tried yet, up to MAX_ATTEMPTS rounds.
A block that no instance answered for fails the call as Mimir does ("failed to fetch some blocks
(err-mimir-store-consistency-check-failed). The failed blocks are: ..."): never a partial answer.
Answers from different instances cover different blocks and are merged (series sample by sample,
label names and values as unions) in the offload pool."""
import logging
import random
from typing import Any, Callable, Sequence

from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.internet.defer import Deferred

from urdar.components import errors as E
from urdar.components.blockshard import BLOCKS_READ, live_owners, tenant_ring
from urdar.components.sources import BlocksOnly, SeriesList, _union, apply_limit, merge_series
from urdar.net.ring import Ring, RingError
from urdar.promql.selectors import SelectHints

log = logging.getLogger("urdar.blocksstore")

MAX_ATTEMPTS = 3            # Mimir's rounds of store-gateway requests per query
CONSISTENCY_ID = "store-consistency-check-failed"

# list_blocks(tenant, mint, maxt) -> Deferred[ULIDs of the tenant's blocks overlapping the range]
ListBlocks = Callable[[str, int, int], "Deferred[list[str]]"]


class BlocksStoreSource(BlocksOnly):
    """`client_for(addr)` gives the (remote) store-gateway client at a ring address; `rng` picks
    among a block's untried owners so load spreads over the replicas."""

    def __init__(self, ring: Ring, list_blocks: ListBlocks, client_for: Callable[[str], Any],
                 offload: Any, pool: str = "query", rng: random.Random | None = None,
                 max_attempts: int = MAX_ATTEMPTS,
                 shard_size: Callable[[str], int] | None = None) -> None:
        self.ring = ring
        self.shard_size = shard_size or (lambda tenant: 0)    # the tenant's store-gateway shard
        self.list_blocks = list_blocks
        self.client_for = client_for
        self.offload = offload
        self.pool = pool
        self.rng = rng or random.Random()
        self.max_attempts = max_attempts

    def _plan(self, remaining: set[str], tried: dict[str, set[str]],
              tenant: str = "") -> dict[str, set[str]]:
        """addr -> blocks to ask it for: one untried live owner per remaining block."""
        plan: dict[str, set[str]] = {}
        ring = tenant_ring(self.ring, tenant, self.shard_size)
        for ulid in sorted(remaining):
            try:
                owners = live_owners(ring, ulid, BLOCKS_READ)
            except RingError:
                continue
            fresh = [i.addr for i in owners if i.addr not in tried.setdefault(ulid, set())]
            if fresh:
                plan.setdefault(self.rng.choice(fresh), set()).add(ulid)
        return plan

    @defer.inlineCallbacks
    def _fetch(self, tenant: str, mint: int, maxt: int, call: Callable[[Any, set[str]], Any]) -> Any:
        """Deferred[list of answers] covering every block of the tenant in [mint, maxt]."""
        remaining = set((yield self.list_blocks(tenant, mint, maxt)))
        tried: dict[str, set[str]] = {}
        answers: list[Any] = []
        errors: list[str] = []
        for _ in range(self.max_attempts):
            if not remaining:
                break
            plan = self._plan(remaining, tried, tenant)
            if not plan:
                break
            addrs = sorted(plan)
            results = yield defer.DeferredList(
                [defer.maybeDeferred(call, self.client_for(a), plan[a]) for a in addrs],
                consumeErrors=True)
            for addr, (ok, value) in zip(addrs, results):
                for ulid in plan[addr]:
                    tried[ulid].add(addr)
                if ok:
                    answers.append(value)
                    remaining -= plan[addr]
                else:
                    if value.check(E.ComponentError) and value.value.cause == E.BAD_DATA:
                        return value     # the request itself is wrong: no replica will do better
                    errors.append("%s: %s" % (addr, value.getErrorMessage()))
                    log.warning("store-gateway %s failed for %d block(s) of tenant %s: %s", addr,
                                len(plan[addr]), tenant, value.getErrorMessage())
        if remaining:
            raise E.ComponentError(E.INTERNAL, "%s. The failed blocks are: %s" % (
                E.mimir_message("failed to fetch some blocks", CONSISTENCY_ID),
                " ".join(sorted(remaining))))
        return answers

    def select(self, tenant: str, matchers: Sequence[Any], hints: SelectHints) -> "Deferred[SeriesList]":
        def merged(results: list[SeriesList]) -> Any:
            results = [r for r in results if r]
            if len(results) <= 1:
                return apply_limit(results[0], hints) if results else []
            d = self.offload.run(self.pool, merge_series, results, hints.samples)
            return d.addCallback(apply_limit, hints)
        return self._fetch(tenant, hints.mint, hints.maxt,
                           lambda c, blocks: c.select(tenant, matchers, hints, blocks)).addCallback(merged)

    def _union(self, results: list[list[str]], hints: SelectHints) -> Any:
        results = [r for r in results if r]
        if len(results) <= 1:
            return _union(results, hints) if results else []
        return self.offload.run(self.pool, _union, results, hints)

    def label_names(self, tenant: str, matchers: Sequence[Any], hints: SelectHints) -> "Deferred[list[str]]":
        return self._fetch(tenant, hints.mint, hints.maxt,
                           lambda c, blocks: c.label_names(tenant, matchers, hints, blocks)
                           ).addCallback(self._union, hints)

    def label_values(self, tenant: str, name: str, matchers: Sequence[Any],
                     hints: SelectHints) -> "Deferred[list[str]]":
        return self._fetch(tenant, hints.mint, hints.maxt,
                           lambda c, blocks: c.label_values(tenant, name, matchers, hints, blocks)
                           ).addCallback(self._union, hints)


class BucketBlockLister:
    """list_blocks over the blocks bucket, as the store-gateways discover blocks: the tenant's
    bucket index plus a listing of "<tenant>/" (blocks shipped since the index was written),
    without blocks whose deletion mark is older than -blocks-storage.bucket-store.
    ignore-deletion-marks-delay (the store-gateways have dropped them). Block time ranges come
    from the index or the block's meta.json, kept per block (blocks are immutable) up to
    `max_cached` entries. A tenant's list is read once per `refresh_s` (every selector of every
    query asks for it; concurrent asks share one read) rather than listing the bucket each time:
    blocks reach the bucket far older than -querier.query-store-after, so a list some seconds old
    misses nothing the ingesters do not still hold."""

    def __init__(self, bucket: Any, clock: Any, offload: Any = None, pool: str = "bucket",
                 reactor: Any = None, ignore_deletion_marks_delay_s: float = 3600,
                 max_cached: int = 200_000, refresh_s: float = 30.0,
                 max_tenants: int = 10_000) -> None:
        self.bucket = bucket
        self.clock = clock
        self.offload = offload
        self.pool = pool
        self.reactor = reactor
        self.ignore_deletion_marks_delay_s = ignore_deletion_marks_delay_s
        self.max_cached = max_cached
        self.refresh_s = refresh_s
        self.max_tenants = max_tenants
        self._ranges: dict[tuple[str, str], tuple[int, int]] = {}
        # tenant -> (read at, [(ulid, (mint, maxt) or None when unreadable)])
        self._listed: dict[str, tuple[float, list]] = {}
        self._loading: dict[str, list] = {}

    def __call__(self, tenant: str, mint: int, maxt: int) -> Any:
        """Deferred[ULIDs of the tenant's blocks overlapping [mint, maxt]], in ULID order."""
        return self._tenant_blocks(tenant).addCallback(lambda blocks: [
            ulid for ulid, rng in blocks if rng is None or (rng[0] <= maxt and rng[1] > mint)])

    def _tenant_blocks(self, tenant: str) -> Any:
        hit = self._listed.get(tenant)
        if hit is not None and self.clock.seconds() - hit[0] < self.refresh_s:
            return defer.succeed(hit[1])
        d: "defer.Deferred[Any]" = defer.Deferred()
        waiting = self._loading.get(tenant)
        if waiting is not None:
            waiting.append(d)
            return d
        waiting = self._loading[tenant] = [d]

        def settle(result: Any) -> None:
            del self._loading[tenant]
            if not isinstance(result, Failure):
                if len(self._listed) >= self.max_tenants:
                    self._listed.clear()
                self._listed[tenant] = (self.clock.seconds(), result)
            for w in waiting:
                if isinstance(result, Failure):
                    w.errback(result)
                else:
                    w.callback(result)
        self._read(tenant).addBoth(settle)
        return d

    @defer.inlineCallbacks
    def _read(self, tenant: str) -> Any:
        import json
        from urdar.engine.block import is_ulid
        from urdar.net.tenant import TenantError, validate_tenant
        from urdar.storage.bucket import NotFound
        from urdar.storage.bucketindex import IndexCorrupted, IndexNotFound, read_index
        from urdar.storage.markers import DELETION_MARK, list_global_marks, read_deletion_mark
        from urdar.storage.prefixed import for_tenant
        try:
            validate_tenant(tenant)
            bucket = for_tenant(self.bucket, tenant)
        except (TenantError, ValueError) as e:
            raise E.ComponentError(E.BAD_DATA, "invalid tenant ID %r: %s" % (tenant, e)) from None
        listed = [n[:-1] for n in (yield bucket.list("")) if n.endswith("/") and is_ulid(n[:-1])]
        marks: dict[str, int] = {}
        known = set(listed)
        try:
            index = yield read_index(bucket, self.offload, self.pool, self.reactor)
            for b in index.blocks:
                known.add(b.block_id)
                self._remember(tenant, b.block_id, (b.min_time, b.max_time))
            marks = index.deletion_marks()
        except (IndexNotFound, IndexCorrupted):
            for ulid in (yield list_global_marks(bucket))[DELETION_MARK]:
                mark = yield read_deletion_mark(bucket, ulid)
                if mark is not None:
                    marks[ulid] = mark.deletion_time
        now = self.clock.seconds()
        out: list[tuple[str, "tuple[int, int] | None"]] = []
        for ulid in sorted(known):
            if ulid in marks and now - marks[ulid] > self.ignore_deletion_marks_delay_s:
                continue
            rng = self._ranges.get((tenant, ulid))
            if rng is None:
                try:
                    meta = json.loads((yield bucket.get(ulid + "/meta.json")))
                    rng = (int(meta["minTime"]), int(meta["maxTime"]))
                except NotFound:
                    continue            # a partial upload: not a block yet
                except (ValueError, KeyError, TypeError):
                    out.append((ulid, None))    # unreadable meta: the store-gateway reports it
                    continue
                self._remember(tenant, ulid, rng)
            out.append((ulid, rng))
        return out

    def _remember(self, tenant: str, ulid: str, rng: tuple[int, int]) -> None:
        if len(self._ranges) >= self.max_cached:
            self._ranges.clear()
        self._ranges[(tenant, ulid)] = rng
