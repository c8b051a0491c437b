"""The ingesters of a cluster as one IngesterClient: writes replicated over the ingester ring,
reads fanned out to the tenant's ingesters and merged (Mimir's distributor and querier do this
over dskit's ring; urdar's ring is net/ring.py).

Writes: every series goes to the replication set of the uint32 hash of tenant and label key
(crc32 of the two, Mimir's "shard by all labels"; metadata by tenant and metric family name,
exemplars with their series) in the tenant's shuffle shard (-distributor.ingestion-tenant-shard-
size; 0 = every ingester). The ring answers per token position, so the sets are computed once per
position (a "write plan", cached while the members' states and health stay) and the per-series work, hashing and building one
sub-batch per ingester, is one job in the "decode" pool. The sub-batches go out concurrently; the
push answers as soon as every replication set used has a quorum of acks (len - max_errors, 2 of
3), and the others finish in the background so the replicas still get the data. A set fails when
more than max_errors of its ingesters failed with client errors (the push then fails with that
4xx) or with server errors (5xx), or when every ingester answered and neither count got there
(5xx), as dskit's DoBatch. Per-sample outcomes come from the first ingester that acked each set.

Reads go to every ingester of the tenant's shard the ring lets reads use (Ring.read_set: ACTIVE,
LEAVING, PENDING and live), concurrently, and are done as soon as the answers cover every
replication set (ReadQuorum: all but max_errors instances, or all but the zones the set may lose),
the calls still out cancelled, so a hung ingester delays no read; the answers are merged: replicated series become one, samples deduplicated by timestamp (the first
answer wins), label names and values, metadata and exemplars are unions, series counts are the
sum over ingesters divided by the replication factor (as Mimir's user stats)."""
import bisect
import logging
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from twisted.internet import defer
from twisted.python.failure import Failure

from urdar.components import errors as E
from urdar.components import ingester_client as IC
from urdar.components.ingester_remote import encode_push, histogram_order, is_client_error
from urdar.components.sources import _union, apply_limit, merge_exemplars, merge_series
from urdar.engine import outcomes as O
from urdar.net.ring import WRITE, Instance, ReplicationSet, Ring, RingError

log = logging.getLogger("urdar.replication")


def key_hash(seed: int, key: bytes) -> int:
    """The ring position of a label key for the tenant whose crc32 is `seed`."""
    return zlib.crc32(key, seed)


def tenant_seed(tenant: str) -> int:
    return zlib.crc32(tenant.encode("utf-8"))


@dataclass
class WritePlan:
    """Replication sets by token position: keys hashing to h use groups[group_of[p]] with p the
    first token above h (wrapping); a RingError there means those keys cannot be written."""
    tokens: list[int]
    group_of: list[int]
    groups: list["ReplicationSet | RingError"]

    def group(self, h: int) -> int:
        if not self.tokens:
            return 0
        return self.group_of[bisect.bisect_right(self.tokens, h) % len(self.tokens)]


def write_plan(ring: Ring) -> WritePlan:
    """The WritePlan of `ring` now (reactor thread: it reads the ring)."""
    tokens = list(ring.tokens)
    if not tokens:
        return WritePlan([], [0], [RingError("empty ring")])
    index: dict[Any, int] = {}
    groups: list[ReplicationSet | RingError] = []
    group_of = []
    for p in range(len(tokens)):
        # Ring.get starts at the first token above its hash: tokens[p-1] starts at p.
        rs: ReplicationSet | RingError
        try:
            rs = ring.get(tokens[p - 1], WRITE)
            # Sets of the same instances are one group, whatever their clockwise order.
            ident: Any = (frozenset(i.id for i in rs.instances), rs.max_errors)
        except RingError as exc:
            rs, ident = exc, ("error", str(exc))
        g = index.get(ident)
        if g is None:
            g = index[ident] = len(groups)
            groups.append(rs)
        group_of.append(g)
    return WritePlan(tokens, group_of, groups)


@dataclass
class Split:
    """What one push sends: per instance id its encoded body and the batch's series in it (in
    the body's order); the group of each series (-1: skipped) and the groups used."""
    bodies: dict[str, tuple[bytes, list[int]]]
    series_group: list[int]
    used: set[int]


def split_batch(batch: IC.WriteBatch, tenant: str, plan: WritePlan,
                members: list[tuple[str, ...]]) -> Split:
    """Pool thread: hash every series onto the plan, encode one sub-batch per ingester.
    `members[g]` lists the instance ids of group g (plain data: no ring access here)."""
    seed = tenant_seed(tenant)
    skip = batch.skip
    n = batch.n_series
    used: set[int] = set()
    if len(plan.groups) == 1:
        # One replication set for every key (RF >= ring size): nothing to hash.
        series_group = [-1 if skip and skip[i] else 0 for i in range(n)] if skip else [0] * n
        if n and max(series_group) == 0:
            used.add(0)
    else:
        series_group = [-1] * n
        for i in range(n):
            if skip and skip[i]:
                continue
            g = series_group[i] = plan.group(key_hash(seed, batch.key(i)))
            used.add(g)
    ex_group: list[int] = []
    if batch.exemplars:
        by_key = {bytes(batch.key(i)): series_group[i] for i in range(n)}
        ex_group = [by_key.get(bytes(e[0]), -1) for e in batch.exemplars]
    md_group = [plan.group(key_hash(seed, m[0].encode("utf-8"))) for m in batch.metadata]
    used.update(md_group)
    bad = [g for g in used if isinstance(plan.groups[g], RingError)]
    if bad:
        raise E.ComponentError(E.UNAVAILABLE, str(plan.groups[bad[0]]))
    per_instance: dict[str, set[int]] = {}
    for g in used:
        for iid in members[g]:
            per_instance.setdefault(iid, set()).add(g)
    bodies: dict[str, tuple[bytes, list[int]]] = {}
    encoded: dict[frozenset[int], tuple[bytes, list[int]]] = {}
    for iid, gs in per_instance.items():
        key = frozenset(gs)
        got = encoded.get(key)
        if got is None:     # ingesters holding the same groups share one body (RF = ring size)
            series = ([i for i in range(n) if series_group[i] >= 0] if len(gs) == len(used)
                      else [i for i in range(n) if series_group[i] in gs])
            exemplars = [e for e, g in zip(batch.exemplars, ex_group) if g in gs]
            metadata = [m for m, g in zip(batch.metadata, md_group) if g in gs]
            got = encoded[key] = encode_push(batch, series, exemplars, metadata)
        bodies[iid] = got
    return Split(bodies, series_group, used)


def merge_outcomes(batch: IC.WriteBatch, split: Split, first: dict[int, str],
                   results: dict[str, IC.PushResult]) -> IC.PushResult:
    """Pool thread: the batch's outcomes, each series' from the ingester that acked its group
    first; skipped series' samples are SKIPPED."""
    offs: Any = batch.sample_offsets
    ts: Any = batch.ts
    acker = set(first.values())
    if len(acker) == 1:
        # One ingester acked every group first (RF = ring size): its outcomes are the batch's.
        from urdar.components.ingester_remote import spread_outcomes
        iid = acker.pop()
        res = spread_outcomes(results[iid], batch, split.bodies[iid][1])
        return IC.PushResult(res.outcomes.count(O.OK) + res.histogram_outcomes.count(O.OK),
                             res.new_series, res.outcomes, res.exemplars_kept,
                             res.histogram_outcomes)
    out = bytearray([O.SKIPPED]) * len(ts)
    hout = bytearray([O.SKIPPED]) * len(batch.histograms)
    for iid, res in results.items():
        _, series = split.bodies[iid]
        src = res.outcomes
        pos = 0
        for i in series:
            a, b = offs[i], offs[i + 1]
            if first.get(split.series_group[i]) == iid:
                out[a:b] = src[pos:pos + b - a]
            pos += b - a
        if batch.histograms:
            hsrc = res.histogram_outcomes
            for k, row in enumerate(histogram_order(batch, series)):
                if k < len(hsrc) and first.get(split.series_group[batch.histograms[row][0]]) == iid:
                    hout[row] = hsrc[k]
    return IC.PushResult(out.count(O.OK) + hout.count(O.OK),
                         max((r.new_series for r in results.values()), default=0), out,
                         max((r.exemplars_kept for r in results.values()), default=0), hout)


class PushQuorum:
    """Quorum bookkeeping of one replicated push, on the reactor: `done` fires None once every
    group has a quorum of acks, or fails with the error that made one group fail."""

    def __init__(self, groups: dict[int, ReplicationSet], done: "defer.Deferred[Any]") -> None:
        self.pending = dict(groups)
        self.acks = dict.fromkeys(groups, 0)
        self.fail4 = dict.fromkeys(groups, 0)
        self.fail5 = dict.fromkeys(groups, 0)
        self.first: dict[int, str] = {}
        self.results: dict[str, IC.PushResult] = {}
        self.done = done
        self.finished = False

    def ack(self, iid: str, gs: set[int], res: IC.PushResult) -> None:
        if self.finished:
            return
        self.results[iid] = res
        for g in gs:
            self.first.setdefault(g, iid)
            self.acks[g] += 1
            rs = self.pending.get(g)
            if rs is not None and self.acks[g] >= rs.quorum:
                del self.pending[g]
        if not self.pending:
            self.finished = True
            self.done.callback(None)

    def fail(self, addr: str, gs: set[int], f: Failure) -> None:
        if self.finished:
            log.debug("push to ingester %s failed after quorum: %s", addr, f.getErrorMessage())
            return
        client = is_client_error(f.value)
        counter = self.fail4 if client else self.fail5
        for g in gs:
            rs = self.pending.get(g)
            if rs is None:
                continue
            counter[g] += 1
            answered = self.acks[g] + self.fail4[g] + self.fail5[g]
            if counter[g] > rs.max_errors or answered >= len(rs.instances):
                self.finished = True
                exc = f.value
                if isinstance(exc, E.ComponentError) and counter[g] > rs.max_errors:
                    err = E.ComponentError(exc.cause, "failed pushing to ingester %s: %s"
                                           % (addr, exc.message))
                else:
                    err = E.ComponentError(E.INTERNAL, "failed pushing to ingester %s: %s"
                                           % (addr, f.getErrorMessage()))
                self.done.errback(Failure(err))
                return


class ReadQuorum:
    """When the answers of a read set cover every replication set (dskit's DoUntilQuorum for a
    read set): without zones, once all but max_errors instances answered; with zone awareness,
    once every instance of all but max_unavailable_zones zones answered. It fails as soon as
    that can no longer happen (more instances, or zones, failed than the set may lose)."""
    DONE, FAILED = "done", "failed"

    def __init__(self, rs: ReplicationSet, zone_aware: bool) -> None:
        self.n = len(rs.instances)
        self.max_errors = rs.max_errors
        self.ok = self.bad = 0
        self.zones: list[str] | None = None
        if zone_aware and any(i.zone for i in rs.instances):
            self.zones = [i.zone for i in rs.instances]
            self.left = {z: self.zones.count(z) for z in set(self.zones)}  # answers still due
            self.failed_zones: set[str] = set()
            self.max_zones_out = rs.max_unavailable_zones

    def answered(self, k: int, success: bool) -> str | None:
        """Record instance k's answer; DONE, FAILED or None (keep waiting)."""
        if self.zones is None:
            if success:
                self.ok += 1
            else:
                self.bad += 1
            if self.bad > self.max_errors:
                return self.FAILED
            return self.DONE if self.ok >= self.n - self.max_errors else None
        zone = self.zones[k]
        if not success:
            self.failed_zones.add(zone)
            if len(self.failed_zones) > self.max_zones_out:
                return self.FAILED
        else:
            self.left[zone] -= 1
        complete = sum(1 for z, n in self.left.items() if n == 0 and z not in self.failed_zones)
        return self.DONE if complete >= len(self.left) - self.max_zones_out else None


class RingIngesterClient:
    """IngesterClient over the ingesters of `ring` (net/ring.Ring of the ingester ring), each
    reached through `client_for(addr)` (a RemoteIngesterClient, one per address, kept).
    `shard_size(tenant)` is the tenant's -distributor.ingestion-tenant-shard-size (0: all);
    reads use the shard with `read_lookback_s` (-querier.query-ingesters-within) of lookback."""

    MAX_PLANS = 256
    carries_histograms = True   # WriteBatch.histograms travel in the push bodies

    def __init__(self, ring: Ring, client_for: Callable[[str], Any], offload: Any, clock: Any,
                 shard_size: Callable[[str], int] | None = None, pool: str = "decode",
                 read_pool: str = "query", read_lookback_s: float = 0,
                 registry: Any = None) -> None:
        from prometheus_client import Counter
        self.ring = ring
        self._client_for = client_for
        self._clients: dict[str, Any] = {}
        self.offload = offload
        self.clock = clock
        self.shard_size = shard_size or (lambda tenant: 0)
        self.pool = pool
        self.read_pool = read_pool
        self.read_lookback_s = read_lookback_s
        kw = {"registry": registry}
        self.m_appends = Counter("cortex_distributor_ingester_appends",
                                 "The total number of batch appends sent to ingesters.",
                                 ["ingester", "type"], **kw)
        self.m_append_failures = Counter("cortex_distributor_ingester_append_failures",
                                         "The total number of failed batch appends sent to "
                                         "ingesters.", ["ingester", "type", "status"], **kw)
        self._plans: dict[tuple, WritePlan] = {}

    def client(self, inst: Instance) -> Any:
        c = self._clients.get(inst.addr)
        if c is None:
            if len(self._clients) > 1000:
                self._clients.clear()
            c = self._clients[inst.addr] = self._client_for(inst.addr)
        return c

    def _shard(self, tenant: str, lookback_s: float = 0) -> Ring:
        return self.ring.shuffle_shard(tenant, self.shard_size(tenant), lookback_s)

    def _plan(self, ring: Ring) -> WritePlan:
        """The ring's WritePlan, cached by what it depends on: each member's identity, zone,
        state, health now and tokens (count and first), so heartbeats and tenants sharing one
        shard reuse it and a member turning unhealthy makes a new one. O(members) per push."""
        now = self.clock.seconds()
        timeout = ring.heartbeat_timeout_s
        sig = tuple((i.id, i.zone, i.state, i.heartbeat_healthy(timeout, now), len(i.tokens),
                     i.tokens[0] if i.tokens else -1) for i in ring.instances())
        plan = self._plans.get(sig)
        if plan is None:
            plan = write_plan(ring)
            if len(self._plans) >= self.MAX_PLANS:
                self._plans.clear()
            self._plans[sig] = plan
        return plan

    # ---- write half ----------------------------------------------------------------------------

    def push(self, tenant: str, batch: IC.WriteBatch) -> "defer.Deferred[IC.PushResult]":
        plan = self._plan(self._shard(tenant))
        members = [tuple(i.id for i in g.instances) if isinstance(g, ReplicationSet) else ()
                   for g in plan.groups]
        d = self.offload.run(self.pool, split_batch, batch, tenant, plan, members)
        return d.addCallback(self._send, tenant, batch, plan)

    def _send(self, split: Split, tenant: str, batch: IC.WriteBatch,
              plan: WritePlan) -> "defer.Deferred[IC.PushResult]":
        if not split.used:
            n: Any = batch.ts
            return defer.succeed(IC.PushResult(0, 0, bytearray([O.SKIPPED]) * len(n)))
        groups: dict[int, ReplicationSet] = {}
        for g in split.used:
            rs = plan.groups[g]
            assert isinstance(rs, ReplicationSet)       # split_batch refused RingError groups
            groups[g] = rs
        instances = {i.id: i for rs in groups.values() for i in rs.instances}
        done: defer.Deferred[Any] = defer.Deferred()
        state = PushQuorum(groups, done)
        kind = "samples" if batch.n_series else "metadata"

        def failed(f: Failure, addr: str, gs: set[int]) -> None:
            status = "4xx" if is_client_error(f.value) else "5xx"
            self.m_append_failures.labels(addr, kind, status).inc()
            state.fail(addr, gs, f)
        for iid, (body, _) in split.bodies.items():
            inst = instances[iid]
            gs = {g for g, rs in groups.items() if any(i.id == iid for i in rs.instances)}
            self.m_appends.labels(inst.addr, kind).inc()
            d = defer.maybeDeferred(self.client(inst).push_encoded, body, tenant)
            d.addCallbacks(lambda res, iid=iid, gs=gs: state.ack(iid, gs, res), failed,
                           errbackArgs=(inst.addr, gs))
        return done.addCallback(lambda _: self.offload.run(
            self.pool, merge_outcomes, batch, split, dict(state.first), dict(state.results)))

    def user_stats(self, tenant: str) -> "defer.Deferred[dict[str, Any]]":
        def total(results: list[tuple[Instance, Any]], rf: float) -> dict[str, Any]:
            return {"numSeries": round(sum(r.get("numSeries", 0) for _, r in results) / rf)}
        return self._fanout(tenant, lambda c: c.user_stats(tenant), total)

    def ready(self) -> bool:
        return True

    # ---- read half ------------------------------------------------------------------------------

    def _fanout(self, tenant: str, call: Callable[[Any], Any],
                merge: Callable[..., Any]) -> "defer.Deferred[Any]":
        """call(client) on every ingester of the tenant's read set at once; merge(results, rf)
        with results [(instance, answer)] as soon as the answers cover every replication set
        (ReadQuorum), the calls still out then cancelled: a hung ingester costs a read nothing
        while a quorum of the others answers (dskit's DoUntilQuorum). `rf` is the replication
        factor scaled to the share of the read set that answered, for merges that sum counts."""
        ring = self._shard(tenant, self.read_lookback_s)
        try:
            rs = ring.read_set()
        except RingError as exc:
            return defer.fail(E.ComponentError(E.UNAVAILABLE, str(exc)))
        insts = list(rs.instances)
        rf = max(1, min(ring.replication_factor, len(ring.instances())))
        quorum = ReadQuorum(rs, ring.zone_awareness)
        calls: list[defer.Deferred[Any]] = []

        def cancel_all(_: Any) -> None:
            for c in calls:
                c.cancel()
        result: defer.Deferred[Any] = defer.Deferred(cancel_all)
        answers: dict[int, Any] = {}

        def settle(outcome: str | None, k: int, f: Failure | None = None) -> None:
            if result.called or outcome is None:
                return
            if outcome == ReadQuorum.FAILED:
                assert f is not None
                exc = f.value
                cause = exc.cause if isinstance(exc, E.ComponentError) else E.INTERNAL
                result.errback(Failure(E.ComponentError(cause, "failed querying ingester %s: %s"
                                                        % (insts[k].addr, f.getErrorMessage()))))
            else:
                ok = [(insts[j], answers[j]) for j in sorted(answers)]
                result.callback((ok, rf * len(ok) / len(insts) if ok else rf))
            for c in calls:
                if not c.called:
                    c.cancel()      # the hung or slow rest: no longer needed

        def succeeded(answer: Any, k: int) -> None:
            if not result.called:
                answers[k] = answer
                settle(quorum.answered(k, True), k)

        def failed(f: Failure, k: int) -> None:
            if result.called:
                return
            log.debug("ingester %s failed a read: %s", insts[k].addr, f.getErrorMessage())
            settle(quorum.answered(k, False), k, f)
        for k, inst in enumerate(insts):
            if result.called:
                break       # answered synchronously already (in-process fakes)
            d = defer.maybeDeferred(call, self.client(inst))
            calls.append(d)
            d.addCallbacks(succeeded, failed, callbackArgs=(k,), errbackArgs=(k,))
        if not insts:
            settle(ReadQuorum.DONE, -1)
        return result.addCallback(lambda got: merge(*got))

    INLINE_MERGE_ITEMS = 256

    def _pooled(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """A merge running `fn(answers, rf)`: in the read pool, unless the answers hold so few
        items (series, names, keys) that the reactor merges them faster than a pool hop."""
        def merge(results: list[tuple[Instance, Any]], rf: float) -> Any:
            answers = [r for _, r in results]
            if sum(_size(a) for a in answers) <= self.INLINE_MERGE_ITEMS:
                return fn(answers, rf)
            return self.offload.run(self.read_pool, fn, answers, rf)
        return merge

    def select(self, tenant: str, matchers: Sequence[Any], hints: Any) -> Any:
        def merged(answers: list[Any], rf: float) -> Any:
            return apply_limit(merge_series(answers, hints.samples), hints)
        return self._fanout(tenant, lambda c: c.select(tenant, matchers, hints),
                            self._pooled(merged))

    def label_names(self, tenant: str, matchers: Sequence[Any], hints: Any) -> Any:
        return self._fanout(tenant, lambda c: c.label_names(tenant, matchers, hints),
                            self._pooled(lambda answers, rf: _union(answers or [[]], hints)))

    def label_values(self, tenant: str, name: str, matchers: Sequence[Any], hints: Any) -> Any:
        return self._fanout(tenant, lambda c: c.label_values(tenant, name, matchers, hints),
                            self._pooled(lambda answers, rf: _union(answers or [[]], hints)))

    def exemplars(self, tenant: str, matchers: Sequence[Any], mint: int, maxt: int) -> Any:
        return self._fanout(tenant, lambda c: c.exemplars(tenant, matchers, mint, maxt),
                            self._pooled(merge_exemplars))

    def metadata(self, tenant: str) -> Any:
        return self._fanout(tenant, lambda c: c.metadata(tenant), self._pooled(merge_metadata))

    def head_series(self, tenant: str, matchers: Sequence[Any]) -> Any:
        def merged(answers: list[tuple[list[bytes], int]], rf: float) -> tuple[list[bytes], int]:
            keys = {bytes(k) for ks, _ in answers for k in ks}
            return list(keys), round(sum(n for _, n in answers) / rf)
        return self._fanout(tenant, lambda c: c.head_series(tenant, matchers), self._pooled(merged))


def _size(answer: Any) -> int:
    if isinstance(answer, tuple):       # head_series: (keys, total)
        return len(answer[0])
    return len(answer) if hasattr(answer, "__len__") else 1


def merge_metadata(answers: list[dict[str, list[tuple]]], rf: float = 1) -> dict[str, list[tuple]]:
    """Entries of every answer per metric family, each once."""
    out: dict[str, list[tuple]] = {}
    for answer in answers:
        for name, entries in answer.items():
            lst = out.setdefault(name, [])
            for e in entries:
                if tuple(e) not in lst:
                    lst.append(tuple(e))
    return out
