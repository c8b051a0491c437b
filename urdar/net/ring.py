"""Ring membership of this process's components: one entry per component ring in the KV store,
kept alive by heartbeats on the injected clock (dskit's BasicLifecycler, without tokens yet).

`RingLifecycler(kv, clock, key, instance_id, addr)` writes {"ingesters": {instance_id: {"addr",
"state", "timestamp", "registered_timestamp", "tokens", "zone"}}} under `key` (Mimir's ring.Desc
layout, which names its members "ingesters" in every ring). `join()` registers it JOINING and
starts heartbeats every `heartbeat_s` (Mimir's -<ring>.heartbeat-period, 15 s); `set_state("ACTIVE")`
once the component serves; `leave()` marks it LEAVING, stops heartbeats and removes the entry.
Replica sets and tokens come when urdar runs as a cluster; until then every ring has one member.
The KV store may answer with Deferreds (net/etcd.py): a failed heartbeat is logged and the next
one tries again, so an unreachable etcd never stops the component or its heartbeats."""
import logging

from twisted.internet import defer, task

log = logging.getLogger(__name__)

JOINING, ACTIVE, LEAVING = "JOINING", "ACTIVE", "LEAVING"

# Mimir's ring keys (-<component>.ring.prefix "collectors/" + the ring's key) per component.
RING_KEYS = (("ingester", "collectors/ring"), ("distributor", "collectors/distributor"),
             ("compactor", "collectors/compactor"), ("store-gateway", "collectors/store-gateway"))


class RingLifecycler:
    def __init__(self, kv, clock, key, instance_id, addr, heartbeat_s=15.0, zone=""):
        self.kv = kv
        self.clock = clock
        self.key = key
        self.instance_id = instance_id
        self.addr = addr
        self.heartbeat_s = heartbeat_s
        self.zone = zone
        self.state = None
        self.last_heartbeat_s = None
        self._loop = None

    def _update(self, **fields):
        now = self.clock.seconds()

        def change(desc):
            if self.state is None:
                return None          # left already: a late heartbeat must not re-register
            desc = desc or {}
            members = desc.setdefault("ingesters", {})
            me = members.get(self.instance_id)
            if me is None:
                me = members[self.instance_id] = {
                    "addr": self.addr, "timestamp": int(now), "state": self.state, "tokens": [],
                    "zone": self.zone, "registered_timestamp": int(now)}
            me.update(fields)
            me["timestamp"] = int(now)
            return desc

        def written(_):
            self.last_heartbeat_s = now

        def failed(f):
            log.warning("ring %s: updating %s failed (will retry on the next heartbeat): %s",
                        self.key, self.instance_id, f.getErrorMessage())
        return defer.maybeDeferred(self.kv.cas, self.key, change).addCallbacks(written, failed)

    def join(self) -> None:
        """Register as JOINING and start heartbeating."""
        self.state = JOINING
        self._update(state=JOINING)
        self._loop = task.LoopingCall(self.heartbeat)
        self._loop.clock = self.clock
        self._loop.start(self.heartbeat_s, now=False)

    def heartbeat(self):
        return self._update()

    def set_state(self, state: str) -> "defer.Deferred[object]":
        self.state = state
        return self._update(state=state)

    def leave(self) -> "defer.Deferred[object]":
        """LEAVING, no more heartbeats, then the entry is removed (unregister on shutdown).
        Returns a Deferred firing once the removal was written (or failed and was logged)."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self.state is None:
            return defer.succeed(None)

        def remove(desc):
            if not desc or self.instance_id not in desc.get("ingesters", {}):
                return None
            del desc["ingesters"][self.instance_id]
            return desc

        def unregister(_):
            # After LEAVING is written: two racing writes could re-add the entry.
            self.state = None
            return defer.maybeDeferred(self.kv.cas, self.key, remove).addErrback(
                lambda f: log.warning("ring %s: removing %s failed: %s", self.key,
                                      self.instance_id, f.getErrorMessage()))
        return self.set_state(LEAVING).addCallback(unregister)


def default_instance_addr(listen_address: str = "") -> str:
    """The address other members would reach this process at: the listen address when one is set,
    else the local address of the default route (a UDP connect sends nothing), else 127.0.0.1."""
    import socket
    if listen_address and listen_address not in ("0.0.0.0", "::"):
        return listen_address
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))
            return s.getsockname()[0]
    except OSError:
        return "127.0.0.1"
