"""Per-ingester series limits derived from the per-tenant global ones (Mimir's ingester limiter).

A tenant's global limit (-ingester.max-global-series-per-user) counts each series once, but
every series lives on RF ingesters, and the tenant's series spread over the ingesters of its
shard. So each ingester enforces

    local = ((global * RF) / zones) / ingesters in this zone     (integer divisions)

where, without zone awareness, zones is 1 and the ingesters are all of the ring's; with
-distributor.ingestion-tenant-shard-size the ingesters per zone are at most ceil(shard / zones)
(a tenant's series go to no more). Ingesters count when healthy for writes (ACTIVE, heartbeat
within the timeout), zones whatever their members' health, as Mimir's lifecycler counts them.
With no healthy ingester in view (this one still joining, or the ring not read yet) the limit
is off, as in Mimir. One deviation: RF is capped at the copies a series can have (the number of
zones, or of ingesters), so a lone ingester with the default RF 3 keeps the global limit as is
instead of three times it. The counts are recounted at most every `max_age_s` (at once while none is healthy)."""
import math
from typing import Any, Callable

from urdar.net.ring import WRITE, Ring


class SeriesLimiter:
    """`local(tenant, global_limit)`: the limit this ingester (zone `zone`) enforces."""

    def __init__(self, ring: Ring, zone: str, clock: Any,
                 shard_size: Callable[[str], int] | None = None, max_age_s: float = 1.0) -> None:
        self.ring = ring
        self.zone = zone
        self.clock = clock
        self.shard_size = shard_size or (lambda tenant: 0)
        self.max_age_s = max_age_s
        self._counts = (0, 0, 1)
        self._at: float | None = None

    def counts(self) -> tuple[int, int, int]:
        """(healthy ingesters, healthy ingesters in this zone, zones)."""
        now = self.clock.seconds()
        # No healthy ingester is not kept: it is the joining moment, soon over.
        if self._at is None or now - self._at >= self.max_age_s or not self._counts[0]:
            healthy = self.ring.healthy_instances(WRITE)
            zones = len({i.zone for i in self.ring.instances()})
            self._counts = (len(healthy), sum(1 for i in healthy if i.zone == self.zone),
                            max(1, zones))
            self._at = now
        return self._counts

    def local(self, tenant: str, global_limit: int) -> int:
        """0 means unlimited (as the global limit 0 does)."""
        if global_limit <= 0:
            return 0
        total, in_zone, zones = self.counts()
        if not (self.ring.zone_awareness and zones > 1):
            zones, in_zone = 1, total
        shard = self.shard_size(tenant)
        if shard > 0:
            in_zone = min(in_zone, math.ceil(shard / zones))
        if in_zone == 0:
            return 0
        rf = max(1, min(self.ring.replication_factor, zones if zones > 1 else total))
        return max(1, global_limit * rf // zones // in_zone)
