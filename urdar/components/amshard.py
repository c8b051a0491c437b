"""Tenants sharded over the alertmanagers of the alertmanager ring (Mimir's alertmanager sharding),
no HTTP.

A tenant belongs to the first -alertmanager.sharding-ring.replication-factor alertmanagers
clockwise from its token, FNV-1a 32 of the tenant ID as Mimir's shardByUser hashes it. Of those
only the healthy ones (JOINING or ACTIVE, heartbeat within the ring's heartbeat timeout) run the
tenant's Alertmanager: as in Mimir, an owner that stopped heartbeating is not replaced by the next
instance, its co-owners carry on. `AlertmanagerSharding` checks the ring every few seconds and
calls `on_change` when the healthy members changed, so the multi-tenant alertmanager re-syncs.

A tenant's owners are its replicas; `position(tenant)` is this instance's index among them in ring
order. Alertmanager's clustering has the replica at position p wait p x -alertmanager.peer-timeout
before it notifies and skip when the (replicated) notification log shows the notification as sent
meanwhile: `peer_wait` gives that delay. `merge_silences` and `merge_nflog` are Alertmanager's
rules for folding a peer's state into ours: the silence with the later updatedAt wins, and of two
entries for one (group, receiver) the later timestamp wins."""
import json
import logging
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet import defer, task

from urdar.net.ring import (ACTIVE, JOINING, Instance, Operation, Ring, RingError, RingWatcher,
                            fnv1a_32)

log = logging.getLogger("urdar.amshard")

# Owners that run a tenant: JOINING too, so a starting alertmanager loads its tenants (and pulls
# their state) before it turns ACTIVE; LEAVING and PENDING members are passed over.
AM_OP = Operation("alertmanager", frozenset({JOINING, ACTIVE}),
                  frozenset({"LEAVING", "PENDING"}))
RING_CHECK_PERIOD_S = 5.0


def tenant_token(tenant: str) -> int:
    """Mimir's shardByUser: FNV-1a 32 of the tenant ID."""
    return fnv1a_32(tenant.encode("utf-8"))


class AlertmanagerSharding(RingWatcher):
    """Which tenants this alertmanager runs, from the alertmanager ring; re-syncs on a change."""

    def __init__(self, ring: Ring, instance_id: str, clock: Any, peer_timeout_s: float = 15.0,
                 check_period_s: float = RING_CHECK_PERIOD_S) -> None:
        super().__init__(ring, AM_OP, instance_id, clock, check_period_s, "alertmanager")
        self.peer_timeout_s = peer_timeout_s

    def owners(self, tenant: str) -> list[Instance]:
        """The tenant's healthy replicas in ring order ([] on an empty ring)."""
        try:
            chosen = self.ring.replicas(tenant_token(tenant), AM_OP)
        except RingError:
            return []
        now = self.clock.seconds()
        return [i for i in chosen if i.healthy(AM_OP, self.ring.heartbeat_timeout_s, now)]

    def owns(self, tenant: str) -> bool:
        return any(i.id == self.instance_id for i in self.owners(tenant))

    def position(self, tenant: str) -> int:
        """This instance's index among the tenant's replicas (0 when it is not one)."""
        for p, inst in enumerate(self.owners(tenant)):
            if inst.id == self.instance_id:
                return p
        return 0

    def peer_wait(self, tenant: str) -> float:
        """Seconds to wait before notifying for the tenant: position x peer timeout."""
        return self.position(tenant) * self.peer_timeout_s

    def peers(self, tenant: str) -> list[str]:
        """Addresses of the tenant's other healthy replicas, in ring order."""
        return [i.addr for i in self.owners(tenant) if i.id != self.instance_id]

    def wait_joined(self, timeout_s: float = 30.0, every_s: float = 0.1) -> "defer.Deferred[bool]":
        """Fires True once this instance is in the ring as read back from the store (Mimir's
        alertmanager waits for that before its first sync), False after timeout_s."""
        deadline = self.clock.seconds() + timeout_s

        def check() -> Any:
            if any(i.id == self.instance_id for i in self.ring.instances()):
                return True
            if self.clock.seconds() >= deadline:
                log.warning("not in the alertmanager ring after %gs: syncing anyway", timeout_s)
                return False
            return task.deferLater(self.clock, every_s, check)
        return defer.maybeDeferred(check)


def merge_silences(ours: dict[str, Any], theirs: Iterable[dict[str, Any]], decode: Callable[[dict[str, Any]], Any],
                   horizon: float) -> list[str]:
    """Fold a peer's silences (their JSON form) into `ours` (id -> Silence): a silence we lack, or
    one the peer updated later, replaces ours; silences that ended before `horizon` are dropped.
    Returns the ids that changed."""
    changed = []
    for d in theirs:
        s = decode(d)
        if s.ends_at < horizon:
            continue
        mine = ours.get(s.id)
        if mine is None or s.updated_at > mine.updated_at:
            ours[s.id] = s
            changed.append(s.id)
    return changed


def merge_nflog(ours: dict[tuple[str, str], Any], theirs: Iterable[Any], now: float) -> int:
    """Fold a peer's notification-log entries (LogEntry) into `ours` ((group key, receiver) ->
    LogEntry): the later timestamp wins, expired entries are dropped. Returns how many changed."""
    n = 0
    for e in theirs:
        if e.expires_at < now:
            continue
        key = (e.group_key, e.receiver)
        mine = ours.get(key)
        if mine is None or e.timestamp > mine.timestamp:
            ours[key] = e
            n += 1
    return n


INTERNAL_STATE_PATH = "/multitenant_alertmanager/internal/state"
STATE_TIMEOUT_S = 10.0
MAX_STATE_BYTES = 64 << 20


class StateReplicator:
    """A tenant's silences and notification-log entries between its replicas, over HTTP (Mimir
    does it over gRPC): new state is POSTed to every other replica as {"silences": [...],
    "nflog": [...]} (best effort, each within a timeout: a replica that missed an update gets it
    again in the full state it pulls when it starts), and a replica that starts for a tenant pulls
    the whole state from the first other replica that answers before it serves."""

    def __init__(self, sharding: AlertmanagerSharding, http: Any, clock: Any,
                 timeout_s: float = STATE_TIMEOUT_S) -> None:
        self.sharding = sharding
        self.http = http
        self.clock = clock
        self.timeout_s = timeout_s

    def push(self, tenant: str, kind: str, items: list[dict[str, Any]]) -> "defer.Deferred[int]":
        """Send new state to the tenant's other replicas; fires with how many took it."""
        body = json.dumps({kind: items}).encode()
        ds = [self._call("POST", addr, tenant, body) for addr in self.sharding.peers(tenant)]

        def count(results: list[tuple[bool, Any]]) -> int:
            for ok, r in results:
                if not ok:
                    log.warning("tenant %s: replicating %s: %s", tenant, kind, r.getErrorMessage())
            return sum(1 for ok, _ in results if ok)
        return defer.DeferredList(ds, consumeErrors=True).addCallback(count)

    def pull(self, tenant: str) -> "defer.Deferred[dict[str, Any] | None]":
        """The full state of the tenant from the first other replica that answers (None when
        none does, e.g. the first replica of a new tenant)."""
        peers = self.sharding.peers(tenant)

        def attempt(i: int) -> Any:
            if i >= len(peers):
                return None
            d = self._call("GET", peers[i], tenant, None)

            def failed(f: Any) -> Any:
                log.warning("tenant %s: state from %s: %s", tenant, peers[i], f.getErrorMessage())
                return attempt(i + 1)
            return d.addCallbacks(_decode_state, failed)
        return defer.maybeDeferred(attempt, 0)

    def _call(self, method: str, addr: str, tenant: str, body: bytes | None) -> "defer.Deferred[bytes]":
        import treq
        headers = {b"X-Scope-OrgID": [tenant.encode()]}
        if body is not None:
            headers[b"Content-Type"] = [b"application/json"]
        d = defer.maybeDeferred(self.http.request, method, "http://%s%s" % (addr, INTERNAL_STATE_PATH),
                                headers=headers, data=body)

        def got(resp: Any) -> Any:
            chunks: list[bytes] = []
            size = [0]

            def collect(data: bytes) -> None:
                size[0] += len(data)
                if size[0] > MAX_STATE_BYTES:
                    raise ValueError("state larger than %d bytes" % MAX_STATE_BYTES)
                chunks.append(data)

            def done(_: Any) -> bytes:
                if resp.code != 200:
                    raise ValueError("status %d" % resp.code)
                return b"".join(chunks)
            return treq.collect(resp, collect).addCallback(done)
        d.addCallback(got)
        d.addTimeout(self.timeout_s, self.clock)
        return d


def _decode_state(body: bytes) -> dict[str, Any]:
    doc = json.loads(body)
    if not isinstance(doc, dict) or not all(
            isinstance(doc.get(k, []), list) for k in ("silences", "nflog")):
        raise ValueError("not an alertmanager state")
    return doc


FORWARDED_HEADER = b"X-Urdar-Alertmanager-Forwarded"
FORWARD_TIMEOUT_S = 2.0             # Mimir's -alertmanager.alertmanager-client.remote-timeout


class Forwarded:
    """One replica's answer: status, content type and body."""

    def __init__(self, code: int, ctype: bytes, body: bytes) -> None:
        self.code = code
        self.ctype = ctype
        self.body = body


class AlertmanagerDistributor:
    """API requests for a tenant sent to its replicas over HTTP, as Mimir's alertmanager
    distributor: alerts POSTs go to every replica (the answer is a replica's success once a quorum,
    floor(n/2)+1, succeeded, else the first failure); silence writes to one replica (their state
    replication carries them to the others, and one silence must keep one ID); reads to the first
    replica that answers. Forwarded requests carry FORWARDED_HEADER so a replica serves them
    itself."""

    def __init__(self, sharding: AlertmanagerSharding, http: Any, clock: Any,
                 timeout_s: float = FORWARD_TIMEOUT_S) -> None:
        self.sharding = sharding
        self.http = http
        self.clock = clock
        self.timeout_s = timeout_s

    def forward(self, tenant: str, method: str, path_qs: str, body: bytes | None,
                ctype: bytes, to_all: bool) -> "defer.Deferred[Forwarded]":
        owners = [i.addr for i in self.sharding.owners(tenant)]
        if not owners:
            return defer.fail(RingError("no healthy alertmanager owns this tenant"))
        if to_all:
            ds = [self._one(addr, tenant, method, path_qs, body, ctype) for addr in owners]
            need = len(owners) // 2 + 1

            def decide(results: list[tuple[bool, Any]]) -> Forwarded:
                good = [r for ok, r in results if ok and r.code < 300]
                if len(good) >= need:
                    return good[0]
                for ok, r in results:
                    if ok and r.code >= 300:
                        return r          # a replica's own error answer (4xx/5xx)
                for ok, r in results:
                    if not ok:
                        raise r.value
                raise RingError("too few replicas answered")     # unreachable: need <= len
            return defer.DeferredList(ds, consumeErrors=True).addCallback(decide)

        def attempt(i: int, last: Any) -> Any:
            if i >= len(owners):
                return last
            d = self._one(owners[i], tenant, method, path_qs, body, ctype)

            def got(r: Forwarded) -> Any:
                return attempt(i + 1, r) if r.code >= 500 else r

            def failed(f: Any) -> Any:
                if i + 1 >= len(owners):
                    return f
                log.warning("tenant %s: alertmanager %s: %s", tenant, owners[i], f.getErrorMessage())
                return attempt(i + 1, f)
            return d.addCallbacks(got, failed)
        return defer.maybeDeferred(attempt, 0, None)

    def _one(self, addr: str, tenant: str, method: str, path_qs: str, body: bytes | None,
             ctype: bytes) -> "defer.Deferred[Forwarded]":
        import treq
        headers = {b"X-Scope-OrgID": [tenant.encode()], FORWARDED_HEADER: [b"1"]}
        if ctype:
            headers[b"Content-Type"] = [ctype]
        d = defer.maybeDeferred(self.http.request, method, "http://%s%s" % (addr, path_qs),
                                headers=headers, data=body)

        def got(resp: Any) -> Any:
            chunks: list[bytes] = []
            size = [0]

            def collect(data: bytes) -> None:
                size[0] += len(data)
                if size[0] > MAX_STATE_BYTES:
                    raise ValueError("answer larger than %d bytes" % MAX_STATE_BYTES)
                chunks.append(data)
            rtype = resp.headers.getRawHeaders(b"Content-Type", [b""])[0]
            return treq.collect(resp, collect).addCallback(
                lambda _: Forwarded(resp.code, rtype, b"".join(chunks)))

        def timed_out(result: Any, timeout: float) -> Any:
            raise defer.TimeoutError("alertmanager %s: no answer within %gs" % (addr, timeout))
        d.addCallback(got)
        d.addTimeout(self.timeout_s, self.clock, onTimeoutCancel=timed_out)
        return d
