"""Which store-gateways own a block: Mimir's sharding of blocks by the store-gateway ring.

A block's key is the 32-bit FNV-1a hash of its ULID's 16 bytes (Mimir hashes the block ID only; the
tenant plays no part, ULIDs being unique). Its owners are the -store-gateway.sharding-ring.
replication-factor instances that key falls to. A store-gateway loads a block when it is one of
the owners for syncing (JOINING, ACTIVE or LEAVING, so a joining instance loads its blocks before
it serves them); a block it no longer owns but has loaded is kept until some owner is ACTIVE to
serve it, and a ring lookup that fails keeps what is loaded and loads nothing new. Queriers read a
block from its ACTIVE owners (extending past instances in other states). Unhealthy instances
(heartbeat older than -store-gateway.sharding-ring.heartbeat-timeout) are skipped, and no quorum
is needed: one live owner serves a block.

With shuffle sharding (-store-gateway.tenant-shard-size, the per-tenant
store_gateway_tenant_shard_size; 0 = off) a tenant's blocks are owned only within the tenant's
sub-ring of that many store-gateways (Ring.shuffle_shard, as for the ingesters), on both sides:
store-gateways outside it load none of the tenant's blocks, queriers ask only its members."""
from typing import Callable

from urdar.engine.block import parse_ulid
from urdar.net.ring import (ACTIVE, JOINING, LEAVING, PENDING, Instance, Operation, Ring, RingError,
                            fnv1a_32)

# Mimir's three ring operations of the store-gateway ring (pkg/storegateway/gateway_ring.go).
BLOCKS_OWNER_SYNC = Operation("blocks-owner-sync", frozenset({JOINING, ACTIVE, LEAVING}), frozenset())
BLOCKS_OWNER_READ = Operation("blocks-owner-read", frozenset({ACTIVE}), frozenset())
BLOCKS_READ = Operation("blocks-read", frozenset({ACTIVE}),
                        frozenset({PENDING, JOINING, LEAVING}))


def hash_block_id(ulid: str) -> int:
    """FNV-1a (32 bit) of the ULID's 16 big-endian bytes: the block's key in the ring."""
    t_ms, rand = parse_ulid(ulid)
    return fnv1a_32(((t_ms << 80) | rand).to_bytes(16, "big"))


def live_owners(ring: Ring, ulid: str, op: Operation) -> list[Instance]:
    """The block's owners for `op` that are healthy now, in ring order; RingError when the ring
    is empty or none is live."""
    now = ring.clock.seconds()
    live = [i for i in ring.replicas(hash_block_id(ulid), op)
            if i.healthy(op, ring.heartbeat_timeout_s, now)]
    if not live:
        raise RingError("no healthy store-gateway owns block %s" % (ulid,))
    return live


def tenant_ring(ring: Ring, tenant: str, shard_size: Callable[[str], int]) -> Ring:
    """The store-gateways that own `tenant`'s blocks: its shuffle shard (the whole ring when the
    tenant's shard size is 0 or no tenant is named)."""
    size = shard_size(tenant) if tenant else 0
    return ring.shuffle_shard(tenant, size) if size > 0 else ring


class BlockOwnership:
    """The store-gateway's filter: `owns(ulid, loaded)` says whether instance `instance_id` should
    have the block loaded. Until this instance shows in the ring (its join not yet seen by the
    reader) it owns every block: a lone -target=all process serves all blocks from its first sync."""

    def __init__(self, ring: Ring, instance_id: str,
                 shard_size: Callable[[str], int] | None = None) -> None:
        self.ring = ring
        self.instance_id = instance_id
        self.shard_size = shard_size or (lambda tenant: 0)

    def _in_ring(self) -> bool:
        return any(i.id == self.instance_id for i in self.ring.instances())

    def owns(self, ulid: str, loaded: bool = False, tenant: str = "") -> bool:
        if not self._in_ring():
            return True
        ring = tenant_ring(self.ring, tenant, self.shard_size)
        try:
            owners = live_owners(ring, ulid, BLOCKS_OWNER_SYNC)
        except RingError:
            return loaded       # cannot tell: keep what is loaded, load nothing new
        if any(i.id == self.instance_id for i in owners):
            return True
        if loaded:
            # Unload only once another owner can serve it.
            try:
                live_owners(ring, ulid, BLOCKS_OWNER_READ)
            except RingError:
                return True
        return False


OwnsFn = Callable[[str, bool, str], bool]


def owns_all(ulid: str, loaded: bool = False, tenant: str = "") -> bool:
    """The filter of an unsharded store-gateway."""
    return True
