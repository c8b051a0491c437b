"""Which KV store each ring uses: `-<ring>.store` (inmemory | etcd), `-<ring>.prefix` and
`-<ring>.etcd.*`, spelled as Mimir spells them per ring (the option table builds its entries from
RINGS), and `kv_from_config(cfg, ring_name, reactor, clock)` building MemoryKV (net/kv.py) or
EtcdKV (net/etcd.py) from them. Mimir's default store is memberlist; urdar has none, so its default
is inmemory: the single-process store that -target=all needs."""
from typing import Any

from urdar.net.etcd import EtcdKV
from urdar.net.kv import MemoryKV

# (ring name as in net/ring.py's RING_KEYS, flag prefix, YAML path of its kvstore block, the ring's
# key under the prefix)
RINGS = (("ingester", "ingester.ring", "ingester.ring.kvstore", "ring"),
         ("distributor", "distributor.ring", "distributor.ring.kvstore", "distributor"),
         ("store-gateway", "store-gateway.sharding-ring", "store_gateway.sharding_ring.kvstore",
          "store-gateway"),
         ("compactor", "compactor.ring", "compactor.sharding_ring.kvstore", "compactor"),
         ("query-scheduler", "query-scheduler.ring", "query_scheduler.ring.kvstore",
          "query-scheduler"),
         ("ruler", "ruler.ring", "ruler.ring.kvstore", "ring"),
         ("alertmanager", "alertmanager.sharding-ring", "alertmanager.sharding_ring.kvstore",
          "alertmanager"))
# -<ring>.prefix defaults other than "collectors/" (Mimir keeps the rulers under "rulers/" and the
# alertmanagers under "alertmanagers/").
DEFAULT_PREFIXES = {"ruler": "rulers/", "alertmanager": "alertmanagers/"}
# The HA tracker's store (components/hatracker.py): keys <prefix><tenant>/<cluster>, no ring key.
HA_TRACKER_KV = ("ha-tracker", "distributor.ha-tracker", "distributor.ha_tracker.kvstore", "")
_BY_NAME = {r[0]: r for r in RINGS + (HA_TRACKER_KV,)}
STORES = ("inmemory", "etcd")


def _ring(ring_name):
    try:
        return _BY_NAME[ring_name]
    except KeyError:
        raise ValueError("unknown KV store user %r (one of %s)" % (ring_name, ", ".join(_BY_NAME))) from None


def ring_leaf(ring_name: str) -> str:
    """The ring's key without the prefix ("ring" for the ingesters)."""
    return _ring(ring_name)[3]


def ring_key(cfg: Any, ring_name: str) -> str:
    """The ring's key in its store: -<ring>.prefix (default "collectors/") + Mimir's key."""
    _, _, yaml_path, key = _ring(ring_name)
    prefix: str = cfg[yaml_path + ".prefix"]
    return prefix + key


def kv_from_config(cfg: Any, ring_name: str, reactor: Any, clock: Any, memory: Any = None) -> Any:
    """The KV store for `ring_name`: `memory` (or a new MemoryKV) for inmemory, so rings in one
    process can share one store; an EtcdKV for etcd. ValueError names the flag when etcd has no
    endpoints."""
    _, flag, yaml_path, _ = _ring(ring_name)
    store = cfg[yaml_path + ".store"]
    if store == "inmemory":
        return memory if memory is not None else MemoryKV(clock)
    if store != "etcd":
        raise ValueError("-%s.store=%s is not supported (use one of %s)" % (flag, store, ", ".join(STORES)))
    etcd = yaml_path + ".etcd."
    if not cfg[etcd + "endpoints"]:
        raise ValueError("-%s.store=etcd needs -%s.etcd.endpoints (host:port, comma-separated)"
                         % (flag, flag))
    return EtcdKV(list(cfg[etcd + "endpoints"]), reactor, clock=clock,
                  dial_timeout_s=cfg[etcd + "dial_timeout"] / 1000.0,
                  max_retries=cfg[etcd + "max_retries"],
                  username=cfg[etcd + "username"], password=cfg[etcd + "password"])
