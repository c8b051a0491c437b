"""Rule groups sharded over the rulers of the ruler ring (Mimir's pkg/ruler ring half), no HTTP.

Each group belongs to exactly one ruler: the first healthy (JOINING or ACTIVE, heartbeat within
-ruler.ring.heartbeat-timeout) ruler clockwise from the group's token, FNV-1a 32 of
"<tenant>/<namespace>/<group>" as Mimir hashes it. A ruler evaluates only the groups it owns
(RuleManager.owns); `RulerSharding` checks the ring every few seconds and, when the set of
healthy rulers changed (one joined, left, or missed its heartbeats), has the manager re-read the
store, so a ruler killed without leaving hands its groups over once its heartbeat is too old.
(Mimir only hands them over when the dead ruler is forgotten from the ring, 2 heartbeat
timeouts later; urdar does not wait for that.)

`RulerPeers` asks the other healthy rulers for their groups of one tenant (the internal
endpoint GET /ruler/internal/rules), concurrently, each within a timeout, so that
<prefix>/api/v1/rules and /alerts on any ruler answer for all of the tenant's groups (Mimir fans
out to every ruler over gRPC and, as here, fails the request when one of them does not answer)."""
import json
import logging
from typing import Any

from twisted.internet import defer

from urdar.components import errors as E
from urdar.net.ring import ACTIVE, JOINING, Operation, Ring, RingWatcher, fnv1a_32

log = logging.getLogger("urdar.rulershard")

# Rulers that own groups and answer for them: JOINING ones too, so a starting ruler (and the
# one ruler of -target=all) loads its groups before it turns ACTIVE, as Mimir's initial sync.
RULER_OP = Operation("ruler", frozenset({JOINING, ACTIVE}), frozenset())
RING_CHECK_PERIOD_S = 5.0           # Mimir's ruler ring check period
PEER_TIMEOUT_S = 10.0               # one ruler's answer to the rules fan-out
MAX_PEER_ANSWER_BYTES = 64 << 20
INTERNAL_RULES_PATH = "/ruler/internal/rules"


def group_token(tenant: str, namespace: str, group: str) -> int:
    """Mimir's tokenForGroup: FNV-1a 32 of tenant, namespace and group joined by '/'."""
    return fnv1a_32(("%s/%s/%s" % (tenant, namespace, group)).encode("utf-8"))


class RulerSharding(RingWatcher):
    """Which groups this ruler owns, from the ruler ring, and re-syncs when the ring changes."""

    def __init__(self, ring: Ring, instance_id: str, clock: Any,
                 check_period_s: float = RING_CHECK_PERIOD_S) -> None:
        super().__init__(ring, RULER_OP, instance_id, clock, check_period_s, "ruler")

    def owns(self, tenant: str, namespace: str, group: str) -> bool:
        owner = self.ring.first_healthy(group_token(tenant, namespace, group), RULER_OP)
        return owner is not None and owner.id == self.instance_id

    def peers(self) -> list[str]:
        """Addresses of the healthy rulers other than this one."""
        return sorted(addr for iid, addr in self.healthy() if iid != self.instance_id)


class RulerPeers:
    """The other rulers' groups of a tenant, over HTTP (treq-like `http`)."""

    def __init__(self, sharding: RulerSharding, http: Any, clock: Any,
                 timeout_s: float = PEER_TIMEOUT_S, offload: Any = None, pool: str = "ruler") -> None:
        self.sharding = sharding
        self.http = http
        self.clock = clock
        self.timeout_s = timeout_s
        self.offload = offload
        self.pool = pool

    def groups(self, tenant: str) -> "defer.Deferred[list[dict[str, Any]]]":
        """Every group of the tenant the other healthy rulers evaluate (rules_api's group
        dicts); a ruler that fails or does not answer in time fails the whole (503)."""
        ds = [self._one(addr, tenant) for addr in self.sharding.peers()]

        def merge(results: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
            return [g for r in results for g in r]

        def failed(f: Any) -> Any:
            return f.value.subFailure if isinstance(f.value, defer.FirstError) else f
        return defer.gatherResults(ds, consumeErrors=True).addCallbacks(merge, failed)

    def _one(self, addr: str, tenant: str) -> "defer.Deferred[list[dict[str, Any]]]":
        import treq
        url = "http://%s%s" % (addr, INTERNAL_RULES_PATH)
        d = defer.maybeDeferred(self.http.request, "GET", url,
                                headers={b"X-Scope-OrgID": [tenant.encode()]})

        def got(resp: Any) -> Any:
            chunks: list[bytes] = []
            size = [0]

            def collect(data: bytes) -> None:
                size[0] += len(data)
                if size[0] > MAX_PEER_ANSWER_BYTES:
                    raise ValueError("answer larger than %d bytes" % MAX_PEER_ANSWER_BYTES)
                chunks.append(data)
            return treq.collect(resp, collect).addCallback(
                lambda _: self._decode(resp.code, b"".join(chunks)))

        def failed(f: Any) -> Any:
            raise E.ComponentError(E.UNAVAILABLE, "unable to retrieve rules from ruler %s: %s"
                                   % (addr, f.getErrorMessage() or f.type.__name__))

        def timed_out(result: Any, timeout: float) -> Any:
            raise E.ComponentError(E.UNAVAILABLE, "unable to retrieve rules from ruler %s: no "
                                   "answer within %gs" % (addr, timeout))
        d.addCallback(got).addErrback(failed)
        d.addTimeout(self.timeout_s, self.clock, onTimeoutCancel=timed_out)
        return d

    def _decode(self, status: int, body: bytes) -> Any:
        def decode() -> list[dict[str, Any]]:
            if status != 200:
                raise ValueError("status %d: %s" % (status, body[:300].decode("utf-8", "replace")))
            doc = json.loads(body)
            groups = doc.get("groups") if isinstance(doc, dict) else None
            if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
                raise ValueError("not a rule group list")
            return groups
        if self.offload is None:
            return defer.maybeDeferred(decode)
        return self.offload.run(self.pool, decode)
