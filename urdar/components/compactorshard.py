"""Which compactor owns a tenant: Mimir's sharding of tenants by the compactor ring.

A tenant's key is the 32-bit FNV-1a hash of its ID (as Mimir's compactor hashes it); its owner is
the first instance clockwise from that key that is ACTIVE with a heartbeat within
-compactor.ring.heartbeat-timeout, so every tenant has exactly one owner while the compactors see
the same ring. Instances in other states are passed over as Mimir's compactor ring operation
extends past them; Mimir also passes over a dead compactor once it auto-forgets it (after ten
heartbeat timeouts), urdar as soon as its heartbeat is too old. Ownership is asked again before
every tenant's compaction and cleanup, so a ring change re-shards the tenants at the next one.

A compactor compacts nothing until the ring shows it ACTIVE (`ready`): before that it cannot know
which tenants are its own, and guessing would let two compactors work on one tenant."""
from urdar.net.ring import ACTIVE, Ring, fnv1a_32


def hash_tenant(tenant: str) -> int:
    """FNV-1a (32 bit) of the tenant ID's UTF-8 bytes: the tenant's key in the compactor ring."""
    return fnv1a_32(tenant.encode("utf-8"))


class TenantOwnership:
    """The compactor's filter over the compactor ring `ring` for instance `instance_id`."""

    def __init__(self, ring: Ring, instance_id: str) -> None:
        self.ring = ring
        self.instance_id = instance_id

    def ready(self) -> bool:
        """This instance is ACTIVE and healthy in the ring as the reader last saw it."""
        now = self.ring.clock.seconds()
        return any(i.id == self.instance_id and i.state == ACTIVE
                   and i.heartbeat_healthy(self.ring.heartbeat_timeout_s, now)
                   for i in self.ring.instances())

    def owner(self, tenant: str) -> str | None:
        """The instance ID owning `tenant`, None when no compactor is ACTIVE and healthy."""
        now = self.ring.clock.seconds()
        for inst in self.ring.walk(hash_tenant(tenant)):
            if inst.state == ACTIVE and inst.heartbeat_healthy(self.ring.heartbeat_timeout_s, now):
                return inst.id
        return None

    def owns(self, tenant: str) -> bool:
        return self.ready() and self.owner(tenant) == self.instance_id
