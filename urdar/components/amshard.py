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
import logging
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet import task

from urdar.net.ring import ACTIVE, JOINING, Instance, Operation, Ring, RingError

log = logging.getLogger("urdar.amshard")

# Owners that run a tenant: JOINING too, so a starting alertmanager loads its tenants (and pulls
# their state) before it turns ACTIVE; LEAVING and PENDING members are passed over.
AM_OP = Operation("alertmanager", frozenset({JOINING, ACTIVE}),
                  frozenset({"LEAVING", "PENDING"}))
RING_CHECK_PERIOD_S = 5.0


def tenant_token(tenant: str) -> int:
    """Mimir's shardByUser: FNV-1a 32 of the tenant ID."""
    h = 0x811c9dc5
    for b in tenant.encode("utf-8"):
        h ^= b
        h = (h * 0x01000193) & 0xFFFFFFFF
    return h


class AlertmanagerSharding:
    """Which tenants this alertmanager runs, from the alertmanager ring; re-syncs on a change."""

    def __init__(self, ring: Ring, instance_id: str, clock: Any, peer_timeout_s: float = 15.0,
                 check_period_s: float = RING_CHECK_PERIOD_S) -> None:
        self.ring = ring
        self.instance_id = instance_id
        self.clock = clock
        self.peer_timeout_s = peer_timeout_s
        self.check_period_s = check_period_s
        self.on_change: Callable[[], Any] | None = None
        self._last: frozenset[tuple[str, str]] | None = None
        self._loop: task.LoopingCall | None = None

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

    def healthy(self) -> frozenset[tuple[str, str]]:
        return frozenset((i.id, i.addr) for i in self.ring.healthy_instances(AM_OP))

    def start(self) -> None:
        self._last = self.healthy()
        self._loop = task.LoopingCall(self.check)
        self._loop.clock = self.clock
        self._loop.start(self.check_period_s, now=False)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def check(self) -> None:
        """Tell on_change when the healthy alertmanagers differ from the last check."""
        now = self.healthy()
        if now == self._last:
            return
        log.info("alertmanager ring changed (%d healthy): re-syncing tenants", len(now))
        self._last = now
        if self.on_change is not None:
            try:
                self.on_change()
            except Exception:
                log.exception("re-syncing tenants after an alertmanager ring change")


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
