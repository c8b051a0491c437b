"""Hash rings over the KV stores (net/kv.py in one process, net/etcd.py in a cluster): the
lifecycler that keeps this instance's entry (tokens, state, heartbeats) and the reader that answers
"which instances own this key" (dskit's ring package, which Mimir uses for every ring).

A ring descriptor is urdar's JSON under the ring's key, laid out as Mimir's ring.Desc (which Mimir
stores as protobuf, so urdar and Mimir cannot share a ring): {"ingesters": {id: {"addr", "zone",
"state", "timestamp", "registered_timestamp", "tokens"}}}, timestamps in Unix seconds, tokens
sorted uint32. `RingLifecycler` registers JOINING with `num_tokens` random tokens not held by
anyone else (kept in `tokens_file_path` and reused from its old entry, so a restarted instance
with the same id keeps them), heartbeats every `heartbeat_s`, turns ACTIVE when its component
serves, LEAVING on shutdown and then removes its entry unless told not to. `Ring` watches the key
and keeps the last descriptor it saw (so it keeps answering while etcd is down); `get(key_hash,
op)` walks the tokens clockwise from the key and returns RF distinct instances (one per zone with
zone awareness), extending the set past instances the operation does not use and dropping
instances whose heartbeat is older than `heartbeat_timeout_s`, as dskit's Ring.Get and its
default replication strategy do; `shuffle_shard(tenant, size)` is the tenant's deterministic
sub-ring. Everything runs on the reactor on the injected clock; the work is per ring member and
token, never per request byte. The tokens file (a few KB, dskit's {"tokens": [...]}) is read and
written synchronously when the instance joins."""
import bisect
import hashlib
import json
import logging
import math
import os
import random
import socket
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

log = logging.getLogger(__name__)

PENDING, JOINING, ACTIVE, LEAVING = "PENDING", "JOINING", "ACTIVE", "LEAVING"
STATES = (PENDING, JOINING, ACTIVE, LEAVING)
TOKEN_SPACE = 1 << 32            # tokens and key hashes are uint32

# Mimir's ring keys (-<component>.ring.prefix "collectors/" + the ring's key) per component.
RING_KEYS = (("ingester", "collectors/ring"), ("distributor", "collectors/distributor"),
             ("compactor", "collectors/compactor"), ("store-gateway", "collectors/store-gateway"),
             ("query-scheduler", "collectors/query-scheduler"), ("ruler", "rulers/ring"),
             ("alertmanager", "alertmanagers/alertmanager"))


# ---- operations ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Operation:
    """What a lookup is for: the states whose instances it may use and the states that make the
    replica set one larger (the key's data should still land on RF usable instances)."""
    name: str
    healthy_states: frozenset[str]
    extend_states: frozenset[str]

    def healthy(self, state: str) -> bool:
        return state in self.healthy_states

    def extends(self, state: str) -> bool:
        return state in self.extend_states


_ALL = frozenset(STATES)
# dskit: writes go to ACTIVE instances only and extend the set past any other state; reads may
# also use LEAVING (and PENDING) instances and extend past the rest; Reporting takes every state.
WRITE = Operation("write", frozenset({ACTIVE}), _ALL - {ACTIVE})
WRITE_NO_EXTEND = Operation("write-no-extend", frozenset({ACTIVE}), frozenset())
READ = Operation("read", frozenset({ACTIVE, PENDING, LEAVING}), _ALL - {ACTIVE, LEAVING})
REPORTING = Operation("reporting", _ALL, frozenset())


class RingError(Exception):
    """The ring cannot answer: empty, or too few live instances for a quorum."""
    cause = "unavailable"


@dataclass(frozen=True)
class Instance:
    """One member of a ring as read from its descriptor (timestamps in Unix seconds)."""
    id: str
    addr: str
    zone: str
    state: str
    timestamp: int
    registered_timestamp: int
    tokens: tuple[int, ...]

    def heartbeat_healthy(self, timeout_s: float, now_s: float) -> bool:
        """Heartbeat no older than timeout_s (0 disables the check, as in dskit)."""
        return timeout_s <= 0 or now_s - self.timestamp <= timeout_s

    def healthy(self, op: Operation, timeout_s: float, now_s: float) -> bool:
        return op.healthy(self.state) and self.heartbeat_healthy(timeout_s, now_s)


@dataclass(frozen=True)
class ReplicationSet:
    """The instances to ask for one key and how many of them may fail: max_errors is the set's
    size minus the quorum floor(n/2)+1, n being the larger of RF and the (extended) set. A
    zone-aware read set instead may lose `max_unavailable_zones` whole zones (max_errors 0)."""
    instances: tuple[Instance, ...]
    max_errors: int
    max_unavailable_zones: int = 0

    @property
    def quorum(self) -> int:
        return len(self.instances) - self.max_errors


def quorum(replication_factor: int) -> int:
    """Acknowledgements a write needs: floor(RF/2)+1 (2 of 3)."""
    return replication_factor // 2 + 1


def parse_desc(desc: Any) -> dict[str, Instance]:
    """The members of a descriptor value (None or malformed entries give no members)."""
    out: dict[str, Instance] = {}
    members = desc.get("ingesters") if isinstance(desc, dict) else None
    if not isinstance(members, dict):
        return out
    for iid, m in members.items():
        if not isinstance(m, dict):
            continue
        tokens = m.get("tokens") or ()
        out[str(iid)] = Instance(
            str(iid), str(m.get("addr", "")), str(m.get("zone", "") or ""), str(m.get("state", "")),
            int(m.get("timestamp", 0) or 0), int(m.get("registered_timestamp", 0) or 0),
            tuple(sorted(int(t) for t in tokens if isinstance(t, int) and 0 <= t < TOKEN_SPACE)))
    return out


def ownership(instances: Iterable[Instance]) -> dict[str, float]:
    """Share of the token space each instance owns, 0..1: a token owns the range from the
    previous token (exclusive) up to itself, the first token also the wrap-around past the last."""
    owner: dict[int, str] = {}
    members = list(instances)
    for inst in members:
        for t in inst.tokens:
            owner[t] = inst.id
    out = dict.fromkeys((i.id for i in members), 0.0)
    tokens = sorted(owner)
    if not tokens:
        return out
    prev = tokens[-1] - TOKEN_SPACE
    for t in tokens:
        out[owner[t]] += (t - prev) / TOKEN_SPACE
        prev = t
    return out


# ---- tokens -------------------------------------------------------------------------------------

def generate_tokens(n: int, taken: Iterable[int], rng: random.Random) -> list[int]:
    """n random uint32 tokens, sorted, none in `taken` and no two alike."""
    avoid = set(taken)
    if n > TOKEN_SPACE - len(avoid):
        raise ValueError("cannot pick %d tokens: the token space is full" % n)
    out: set[int] = set()
    while len(out) < n:
        t = rng.getrandbits(32)
        if t not in avoid:
            out.add(t)
    return sorted(out)


def load_tokens(path: str) -> list[int]:
    """Tokens kept in `path` ({"tokens": [...]}, dskit's format); [] when the file is missing.
    ValueError names the file when it does not hold that."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise ValueError("tokens file %s: %s" % (path, exc)) from None
    tokens = doc.get("tokens") if isinstance(doc, dict) else None
    if not isinstance(tokens, list) or not all(
            isinstance(t, int) and 0 <= t < TOKEN_SPACE for t in tokens):
        raise ValueError('tokens file %s: expected {"tokens": [uint32, ...]}' % path)
    return sorted(set(tokens))


def store_tokens(path: str, tokens: Iterable[int]) -> None:
    """Write tokens to `path` atomically (a temporary file renamed over it)."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"tokens": sorted(tokens)}, f)
    os.replace(tmp, path)


# ---- configuration ------------------------------------------------------------------------------

# ring name -> (flag prefix, YAML path of its block, Mimir's token count, whether Mimir offers
# tokens/zones/RF/unregister flags for it). Distributors register one token and compactors 512.
RING_FLAGS: dict[str, tuple[str, str, int, bool]] = {
    "ingester": ("ingester.ring", "ingester.ring", 128, True),
    "distributor": ("distributor.ring", "distributor.ring", 1, False),
    "store-gateway": ("store-gateway.sharding-ring", "store_gateway.sharding_ring", 512, True),
    "compactor": ("compactor.ring", "compactor.sharding_ring", 512, False),
    "query-scheduler": ("query-scheduler.ring", "query_scheduler.ring", 1, False),
    "ruler": ("ruler.ring", "ruler.ring", 128, False),
    "alertmanager": ("alertmanager.sharding-ring", "alertmanager.sharding_ring", 128, False),
}


@dataclass(frozen=True)
class RingConfig:
    """One ring's settings: this instance's identity in it and how readers judge its members."""
    name: str
    key: str
    instance_id: str
    addr: str
    zone: str = ""
    num_tokens: int = 128
    tokens_file_path: str = ""
    heartbeat_s: float = 15.0
    heartbeat_timeout_s: float = 60.0
    replication_factor: int = 3
    zone_awareness: bool = False
    unregister_on_shutdown: bool = True

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | Any, name: str, key: str,
                    default_addr: str = "") -> "RingConfig":
        """Settings of ring `name` (a RING_FLAGS key) from the option table; the address is
        -<ring>.instance-addr (else default_addr) with -<ring>.instance-port (else the HTTP port)."""
        _, path, tokens, full = RING_FLAGS[name]

        def opt(leaf: str, default: Any) -> Any:
            v = cfg.get(path + "." + leaf) if hasattr(cfg, "get") else None
            return default if v is None else v
        host = opt("instance_addr", "") or default_addr or "127.0.0.1"
        port = opt("instance_port", 0) or cfg["server.http_listen_port"]
        return cls(
            name=name, key=key, instance_id=opt("instance_id", "") or socket.gethostname(),
            addr="%s:%d" % (host, port), zone=opt("instance_availability_zone", "") if full else "",
            num_tokens=opt("num_tokens", tokens), tokens_file_path=opt("tokens_file_path", ""),
            heartbeat_s=opt("heartbeat_period", 15000) / 1000.0,
            heartbeat_timeout_s=opt("heartbeat_timeout", 60000) / 1000.0,
            replication_factor=opt("replication_factor", 3 if full else 1),
            zone_awareness=bool(opt("zone_awareness_enabled", False)),
            unregister_on_shutdown=bool(opt("unregister_on_shutdown", True)))


# ---- the lifecycler -----------------------------------------------------------------------------

class RingLifecycler:
    """This instance's entry in one ring (dskit's BasicLifecycler): tokens, state, heartbeats.
    Writes go through kv.cas (sync MemoryKV or Deferred EtcdKV); a failed write is logged and the
    next heartbeat tries again, so an unreachable etcd never stops the component."""

    def __init__(self, kv: Any, clock: IReactorTime, key: str, instance_id: str, addr: str,
                 heartbeat_s: float = 15.0, zone: str = "", num_tokens: int = 128,
                 tokens_file_path: str = "", unregister_on_shutdown: bool = True,
                 rng: random.Random | None = None) -> None:
        self.kv = kv
        self.clock = clock
        self.key = key
        self.instance_id = instance_id
        self.addr = addr
        self.heartbeat_s = heartbeat_s
        self.zone = zone
        self.num_tokens = num_tokens
        self.tokens_file_path = tokens_file_path
        self.unregister_on_shutdown = unregister_on_shutdown
        self.rng = rng if rng is not None else random.Random()
        self.tokens: list[int] = []
        self.state: str | None = None
        self.registered_s: int | None = None
        self.last_heartbeat_s: float | None = None
        self._loop: task.LoopingCall | None = None

    @classmethod
    def from_ring_config(cls, kv: Any, clock: IReactorTime, rc: RingConfig,
                         rng: random.Random | None = None) -> "RingLifecycler":
        return cls(kv, clock, rc.key, rc.instance_id, rc.addr, heartbeat_s=rc.heartbeat_s,
                   zone=rc.zone, num_tokens=rc.num_tokens, tokens_file_path=rc.tokens_file_path,
                   unregister_on_shutdown=rc.unregister_on_shutdown, rng=rng)

    def _update(self) -> "defer.Deferred[None]":
        now = int(self.clock.seconds())
        chosen: list[list[int]] = [self.tokens]

        def change(desc: Any) -> Any:
            if self.state is None:
                return None          # left already: a late heartbeat must not re-register
            desc = desc if isinstance(desc, dict) else {}
            members = desc.setdefault("ingesters", {})
            me = members.get(self.instance_id)
            mine = list(self.tokens)
            if not mine and me and me.get("tokens"):
                mine = [t for t in me["tokens"] if isinstance(t, int)]   # a restart keeps its tokens
            taken = {t for iid, m in members.items() if iid != self.instance_id
                     for t in (m.get("tokens") or ())}
            mine = sorted(set(mine) - taken)       # a token someone else holds is given up
            if len(mine) < self.num_tokens:
                mine = sorted(mine + generate_tokens(self.num_tokens - len(mine), taken | set(mine),
                                                     self.rng))
            chosen[0] = mine
            if me is None:
                me = members[self.instance_id] = {"registered_timestamp": self.registered_s or now}
            # The state as it is when the write happens: of two writes racing in etcd, the one
            # re-run last carries the newest state, never an older one it was called with.
            me.update({"addr": self.addr, "zone": self.zone, "state": self.state, "tokens": mine})
            me["timestamp"] = now
            return desc

        def written(_: object) -> None:
            first = self.tokens != chosen[0]
            self.tokens = chosen[0]
            if self.registered_s is None:
                self.registered_s = now
            self.last_heartbeat_s = now
            if first and self.tokens_file_path and self.state is not None:
                try:
                    store_tokens(self.tokens_file_path, self.tokens)
                except OSError as exc:
                    log.warning("ring %s: cannot keep tokens in %s: %s", self.key,
                                self.tokens_file_path, exc)

        def failed(f: Failure) -> None:
            log.warning("ring %s: updating %s failed (will retry on the next heartbeat): %s",
                        self.key, self.instance_id, f.getErrorMessage())
        return defer.maybeDeferred(self.kv.cas, self.key, change).addCallbacks(written, failed)

    def join(self) -> "defer.Deferred[None]":
        """Register JOINING (with the tokens file's tokens, if any) and start heartbeating.
        ValueError if the tokens file is unreadable."""
        if self.tokens_file_path and not self.tokens:
            self.tokens = load_tokens(self.tokens_file_path)
        self.state = JOINING
        d = self._update()
        self._loop = task.LoopingCall(self.heartbeat)
        self._loop.clock = self.clock
        self._loop.start(self.heartbeat_s, now=False)
        return d

    def heartbeat(self) -> "defer.Deferred[None]":
        """Refresh the entry's timestamp (re-registering it if it was forgotten)."""
        return self._update()

    def set_state(self, state: str) -> "defer.Deferred[None]":
        """Write `state` into the entry; nothing once the instance has left (leave())."""
        if self.state is None:
            return defer.succeed(None)
        self.state = state
        return self._update()

    def leave(self, remove_entry: bool | None = None) -> "defer.Deferred[None]":
        """LEAVING, no more heartbeats, then the entry is removed if `remove_entry` (default
        unregister_on_shutdown; else it stays LEAVING, keeping its tokens for the restart).
        Fires once written (or logged)."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self.state is None:
            return defer.succeed(None)

        def remove(desc: Any) -> Any:
            if not isinstance(desc, dict) or self.instance_id not in desc.get("ingesters", {}):
                return None
            del desc["ingesters"][self.instance_id]
            return desc

        def unregister(_: object) -> "defer.Deferred[None] | None":
            # After LEAVING is written: two racing writes could re-add the entry.
            self.state = None
            if not (self.unregister_on_shutdown if remove_entry is None else remove_entry):
                return None
            return defer.maybeDeferred(self.kv.cas, self.key, remove).addCallbacks(
                lambda _: None, lambda f: log.warning("ring %s: removing %s failed: %s", self.key,
                                                      self.instance_id, f.getErrorMessage()))
        return self.set_state(LEAVING).addCallback(unregister)


def forget(kv: Any, key: str, instance_id: str) -> "defer.Deferred[bool]":
    """Remove `instance_id` from the ring under `key` (the ring page's Forget); fires True if it
    was there. An instance still heartbeating registers itself again at its next heartbeat."""
    found: list[bool] = [False]

    def remove(desc: Any) -> Any:
        found[0] = isinstance(desc, dict) and instance_id in desc.get("ingesters", {})
        if not found[0]:
            return None
        del desc["ingesters"][instance_id]
        return desc
    return defer.maybeDeferred(kv.cas, key, remove).addCallback(lambda _: found[0])


# ---- the reader ---------------------------------------------------------------------------------

def _seed(identifier: str, zone: str) -> int:
    h = hashlib.md5(identifier.encode("utf-8"))
    if zone:
        h.update(b"\0" + zone.encode("utf-8"))
    return int.from_bytes(h.digest()[:8], "big")


class Ring:
    """A read view of one ring: the last descriptor seen under `key` in `kv`, updated by a watch.
    `get`, `shuffle_shard`, `healthy_instances` and `instances` answer from it synchronously."""

    MAX_CACHED_SHARDS = 10000

    def __init__(self, kv: Any, key: str, clock: IReactorTime, replication_factor: int = 3,
                 heartbeat_timeout_s: float = 60.0, zone_awareness: bool = False,
                 name: str = "") -> None:
        self.kv = kv
        self.key = key
        self.clock = clock
        self.replication_factor = replication_factor
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.zone_awareness = zone_awareness
        self.name = name
        self.updated_s: float | None = None     # when the descriptor last arrived
        self._watch: Any = None
        self._shards: dict[tuple[str, int, float], Ring] = {}
        self._layout: dict[str, tuple[str, tuple[int, ...]]] | None = None   # id -> (zone, tokens)
        self._tokens: list[int] = []
        self._owner: list[Instance] = []        # the instance of each token in _tokens
        self._listeners: list[Callable[[], None]] = []
        self.set_desc(None)

    @classmethod
    def from_ring_config(cls, kv: Any, clock: IReactorTime, rc: RingConfig) -> "Ring":
        return cls(kv, rc.key, clock, rc.replication_factor, rc.heartbeat_timeout_s,
                   rc.zone_awareness, rc.name)

    # -- descriptor --
    def set_desc(self, desc: Any) -> None:
        """Take a new descriptor value (from the KV store, or None for an empty ring)."""
        self._set_members(parse_desc(desc))

    def _set_members(self, members: dict[str, Instance]) -> None:
        self._shards.clear()
        layout = {i.id: (i.zone, i.tokens) for i in members.values()}
        if layout == self._layout:
            # A heartbeat changes timestamps or states only: same token order, new instances.
            self._members = members
            self._owner = [members[i.id] for i in self._owner]
            return
        self._layout = layout
        self._members = members
        owner: dict[int, Instance] = {}
        for inst in sorted(members.values(), key=lambda i: i.id):
            for t in inst.tokens:
                owner[t] = inst
        self._tokens = sorted(owner)
        self._owner = [owner[t] for t in self._tokens]
        self._zones = sorted({i.zone for i in members.values()})

    def start(self) -> "defer.Deferred[None]":
        """Read the key and watch it. Fires at once: if the store is unreachable the ring stays
        as it was (empty at first) and the watch brings it up to date when the store is back.
        A reader already watching stays as it is (a module may start the reader it needs)."""
        if self._watch is not None:
            return defer.succeed(None)

        def got(value: Any) -> None:
            self._received(value)

        def failed(f: Failure) -> None:
            log.warning("ring %s: reading %s failed (the watch will catch up): %s", self.name,
                        self.key, f.getErrorMessage())
        defer.maybeDeferred(self.kv.get, self.key).addCallbacks(got, failed)
        self._watch = self.kv.watch(self.key, lambda key, value: self._received(value))
        return defer.succeed(None)

    def _received(self, value: Any) -> None:
        self.updated_s = self.clock.seconds()
        self.set_desc(value)
        for fn in list(self._listeners):
            try:
                fn()
            except Exception:
                log.exception("ring %s: a listener failed", self.name)

    def add_listener(self, fn: Callable[[], None]) -> Callable[[], None]:
        """Call fn() after every descriptor the KV watch (or the first read) delivers; returns
        the function that removes it."""
        self._listeners.append(fn)
        return lambda: self._listeners.remove(fn) if fn in self._listeners else None

    def stop(self) -> None:
        if self._watch is not None:
            self._watch.stop()
            self._watch = None

    # -- questions --
    def instances(self) -> list[Instance]:
        """Every member, by zone then id (the ring page's order)."""
        return sorted(self._members.values(), key=lambda i: (i.zone, i.id))

    def instance_count(self) -> int:
        return len(self._members)

    def healthy_instances(self, op: Operation = REPORTING) -> list[Instance]:
        """Members whose state suits `op` and whose heartbeat is within the timeout."""
        now = self.clock.seconds()
        return [i for i in self.instances() if i.healthy(op, self.heartbeat_timeout_s, now)]

    def ownership(self) -> dict[str, float]:
        return ownership(self._members.values())

    def get(self, key_hash: int, op: Operation = WRITE) -> ReplicationSet:
        """The replication set of a uint32 key hash for `op`. RingError when the ring has no
        tokens or fewer live instances than a quorum."""
        return self._filter(self.replicas(key_hash, op), op)

    def replicas(self, key_hash: int, op: Operation = WRITE) -> list[Instance]:
        """The instances a uint32 key hash falls to (RF of them, more past those whose state
        `op` extends on), whatever their health. RingError when the ring has no tokens."""
        if not self._tokens:
            raise RingError("empty ring")
        n = self.replication_factor
        max_instances = len(self._members)
        start = bisect.bisect_right(self._tokens, key_hash % TOKEN_SPACE)
        chosen: list[Instance] = []
        hosts: set[str] = set()
        zones: set[str] = set()
        i = start
        for _ in range(len(self._tokens)):
            if len(hosts) >= min(max_instances, n):
                break
            inst = self._owner[i % len(self._tokens)]
            i += 1
            if inst.id in hosts:
                continue
            if self.zone_awareness and inst.zone and inst.zone in zones:
                continue
            hosts.add(inst.id)
            if op.extends(inst.state):
                n += 1          # the key needs one more instance past this one
            elif self.zone_awareness and inst.zone:
                zones.add(inst.zone)    # only a used instance claims its zone
            chosen.append(inst)
        return chosen

    def walk(self, key_hash: int) -> Iterator[Instance]:
        """Every member once, in ring order clockwise from a uint32 key hash."""
        n = len(self._tokens)
        start = bisect.bisect_right(self._tokens, key_hash % TOKEN_SPACE)
        seen: set[str] = set()
        for k in range(n):
            inst = self._owner[(start + k) % n]
            if inst.id not in seen:
                seen.add(inst.id)
                yield inst
                if len(seen) == len(self._members):
                    return

    def _filter(self, chosen: list[Instance], op: Operation) -> ReplicationSet:
        rf = max(self.replication_factor, len(chosen))
        min_success = quorum(rf)
        now = self.clock.seconds()
        live = [i for i in chosen if i.healthy(op, self.heartbeat_timeout_s, now)]
        if len(live) < min_success:
            if self.zone_awareness:
                raise RingError("at least %d live replicas required across different availability "
                                "zones, could only find %d" % (min_success, len(live)))
            raise RingError("at least %d live replicas required, could only find %d - unhealthy "
                            "instances: %s" % (min_success, len(live), ",".join(
                                i.addr for i in chosen if i not in live)))
        return ReplicationSet(tuple(live), len(live) - min_success)

    def first_healthy(self, key_hash: int, op: Operation = WRITE) -> Instance | None:
        """The first instance clockwise from a uint32 key hash that is healthy for `op` (state
        and heartbeat), None when there is none: a key's single owner, handed on to the next
        instance once its owner's heartbeat is older than the timeout (the ruler's groups)."""
        if not self._tokens:
            return None
        now = self.clock.seconds()
        start = bisect.bisect_right(self._tokens, key_hash % TOKEN_SPACE)
        seen: set[str] = set()
        for k in range(len(self._tokens)):
            inst = self._owner[(start + k) % len(self._tokens)]
            if inst.id in seen:
                continue
            if inst.healthy(op, self.heartbeat_timeout_s, now):
                return inst
            seen.add(inst.id)
            if len(seen) == len(self._members):
                break
        return None

    @property
    def tokens(self) -> list[int]:
        """Every token of the ring, sorted (get(tokens[p-1]) is the set of keys ending at p)."""
        return self._tokens

    def read_set(self, op: Operation = READ) -> ReplicationSet:
        """Every live instance a read for `op` may ask, and how many of them may fail (dskit's
        GetReplicationSetForOperation): RF/2 minus the instances already out. With zone
        awareness a zone with an instance out is left out whole and at most RF/2 zones may be
        out; of the zones left, RF/2 minus those out may still fail (max_unavailable_zones). RingError when too many are out or the ring is empty."""
        if not self._members:
            raise RingError("empty ring")
        now = self.clock.seconds()
        members = self.instances()
        live = [i for i in members if i.healthy(op, self.heartbeat_timeout_s, now)]
        max_out = self.replication_factor // 2
        if self.zone_awareness and any(i.zone for i in members):
            out_zones = {i.zone for i in members if i not in live}
            if len(out_zones) > max_out:
                raise RingError("too many unhealthy availability zones: %s"
                                % ",".join(sorted(out_zones)))
            return ReplicationSet(tuple(i for i in live if i.zone not in out_zones), 0,
                                  max_out - len(out_zones))
        n_out = len(members) - len(live)
        if n_out > max_out:
            raise RingError("too many unhealthy instances in the ring")
        return ReplicationSet(tuple(live), max_out - n_out)

    def shuffle_shard(self, identifier: str, size: int, lookback_s: float = 0) -> "Ring":
        """The sub-ring of `size` instances picked for `identifier` (a tenant): the whole ring when
        size <= 0 or the ring is no larger. With zone awareness ceil(size/zones) per zone. The
        pick is deterministic in (identifier, zone, the ring's tokens): each pick draws a token
        position from a generator seeded by md5(identifier, zone) and takes the first instance
        clockwise not picked yet (Mimir's algorithm; Mimir draws with Go's math/rand, so the
        instances picked differ from Mimir's for the same tokens). With `lookback_s` (readers:
        -querier.query-ingesters-within) an instance registered within the last lookback_s is
        taken without counting and the walk goes on clockwise, so the shard also holds the
        instances it had before that one joined, which still hold the tenant's recent data
        (Mimir's ShuffleShardWithLookback)."""
        if size <= 0 or size >= len(self._members):
            return self
        since = self.clock.seconds() - lookback_s if lookback_s > 0 else None
        cache_key = (identifier, size, lookback_s)
        cached = self._shards.get(cache_key)
        if cached is not None:
            return cached
        zones = self._zones if self.zone_awareness else [""]
        per_zone = math.ceil(size / len(zones)) if self.zone_awareness else size
        picked: dict[str, Instance] = {}
        for zone in zones:
            idx = [k for k, inst in enumerate(self._owner) if not zone or inst.zone == zone]
            tokens = [self._tokens[k] for k in idx]
            rnd = random.Random(_seed(identifier, zone))
            counted = 0
            while counted < per_zone:
                p = bisect.bisect_right(tokens, rnd.getrandbits(32))
                for step in range(len(tokens)):
                    inst = self._owner[idx[(p + step) % len(tokens)]]
                    if inst.id in picked:
                        continue
                    picked[inst.id] = inst
                    if since is not None and inst.registered_timestamp >= since:
                        continue    # joined lately: taken, and the walk goes on clockwise
                    counted += 1
                    break
                else:
                    break       # every instance of the zone is in the shard already
        sub = Ring(self.kv, self.key, self.clock, self.replication_factor,
                   self.heartbeat_timeout_s, self.zone_awareness, self.name)
        sub._set_members(picked)
        sub.updated_s = self.updated_s
        if len(self._shards) >= self.MAX_CACHED_SHARDS:
            self._shards.clear()
        self._shards[cache_key] = sub
        return sub


def fnv1a_32(data: bytes) -> int:
    """FNV-1a, 32 bit: how Mimir turns a tenant, rule group or block ID into a ring key."""
    h = 0x811C9DC5
    for byte in data:
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h


class RingWatcher:
    """Calls `on_change` when the set of healthy instances for `op` differs from the last check
    (one joined, left or missed its heartbeats): how the ruler and the alertmanager know to
    re-shard their groups or tenants. Checked on every descriptor the ring's KV watch delivers,
    so a join or leave re-shards at once; and every `check_period_s`, because an instance that
    stops heartbeating becomes unhealthy with no write to the store (and as a fallback while
    the watch is down)."""

    def __init__(self, ring: "Ring", op: Operation, instance_id: str, clock: Any,
                 check_period_s: float, what: str) -> None:
        self.ring = ring
        self.op = op
        self.instance_id = instance_id
        self.clock = clock
        self.check_period_s = check_period_s
        self.what = what
        self.on_change: Any = None
        self._last: frozenset[tuple[str, str]] | None = None
        self._loop: task.LoopingCall | None = None
        self._unlisten: Callable[[], None] | None = None

    def healthy(self) -> frozenset[tuple[str, str]]:
        """(id, address) of every healthy instance."""
        return frozenset((i.id, i.addr) for i in self.ring.healthy_instances(self.op))

    def start(self) -> None:
        self._last = self.healthy()
        self._unlisten = self.ring.add_listener(self.check)
        self._loop = task.LoopingCall(self.check)
        self._loop.clock = self.clock
        self._loop.start(self.check_period_s, now=False)

    def stop(self) -> None:
        if self._unlisten is not None:
            self._unlisten()
            self._unlisten = None
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def check(self) -> None:
        now = self.healthy()
        if now == self._last:
            return
        log.info("%s ring changed (%d healthy): re-syncing", self.what, len(now))
        self._last = now
        if self.on_change is not None:
            try:
                self.on_change()
            except Exception:
                log.exception("re-syncing after a %s ring change", self.what)


class HealthyCount:
    """How many members of `ring` are healthy for `op` (ACTIVE, heartbeat in time, for WRITE),
    recounted at most every max_age_s: the global ingestion rate strategy asks on every push,
    from pool threads too (the reader replaces its member dict whole, never mutates it)."""

    def __init__(self, ring: Ring, clock: IReactorTime, op: Operation = WRITE,
                 max_age_s: float = 1.0) -> None:
        self.ring = ring
        self.clock = clock
        self.op = op
        self.max_age_s = max_age_s
        self._n = 0
        self._at: float | None = None

    def __call__(self) -> int:
        now = self.clock.seconds()
        if self._at is None or now - self._at >= self.max_age_s:
            self._n = len(self.ring.healthy_instances(self.op))
            self._at = now
        return self._n


def default_instance_addr(listen_address: str = "") -> str:
    """The address other members would reach this process at: the listen address when one is set,
    else the local address of the default route (a UDP connect sends nothing), else 127.0.0.1."""
    if listen_address and listen_address not in ("0.0.0.0", "::"):
        return listen_address
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))
            addr: str = s.getsockname()[0]
            return addr
    except OSError:
        return "127.0.0.1"


__all__ = ["ACTIVE", "JOINING", "LEAVING", "PENDING", "READ", "REPORTING", "WRITE",
           "WRITE_NO_EXTEND", "HealthyCount", "Instance", "Operation", "ReplicationSet", "Ring", "RingConfig",
           "RingError", "RingLifecycler", "RingSet", "forget", "generate_tokens", "load_tokens",
           "ownership", "quorum", "store_tokens"]


class RingSet:
    """The ring readers of one process and the KV stores they and the lifecyclers use: started
    together (watches open) and stopped together (watches end, etcd clients close)."""

    def __init__(self) -> None:
        self.rings: dict[str, Ring] = {}
        # (label, KV store, key prefix the rings use in it), one row per store and prefix
        self.stores: list[tuple[str, Any, str]] = []

    def add_store(self, label: str, kv: Any, prefix: str = "") -> None:
        if all(kv is not s or prefix != p for _, s, p in self.stores):
            self.stores.append((label, kv, prefix))

    def start(self) -> "defer.Deferred[None]":
        for ring in self.rings.values():
            ring.start()
        return defer.succeed(None)

    def stop(self) -> None:
        for ring in self.rings.values():
            ring.stop()
        closed: list[Any] = []
        for _, kv, _ in self.stores:
            close = getattr(kv, "close", None)
            if close is not None and all(kv is not c for c in closed):
                closed.append(kv)
                close()
