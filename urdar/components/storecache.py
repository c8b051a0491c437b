"""Remote (memcached) caches for the store-gateway: postings lists and series entries
(`-blocks-storage.bucket-store.index-cache.backend=memcached`) and chunks
(`-blocks-storage.bucket-store.chunks-cache.backend=memcached`). They hold each entry's bytes
exactly as they are in the block's index or chunk segment (length, body, CRC32C), so a cached
value is decoded and CRC-checked by the same code as a bucket read (in the store-gateway's pool)
and a damaged or foreign value is a miss, never a wrong answer. Lookups run on the reactor and
return Deferreds; components/storegateway.py calls them between its offloaded decode steps. Keys
name tenant, block and entry, like Mimir's ("P:", "S:", "C:" + tenant + ULID + item; label pairs
hashed), made memcached-safe by net/memcached.safe_key."""
import base64
import hashlib

from urdar.net.memcached import MemcachedClient, MemcachedMetrics, safe_key

# Entries never change (blocks are immutable, ULIDs never reused): the TTL only frees space held by
# deleted blocks. Mimir keeps index entries 7 days and chunk subranges 24 hours.
INDEX_TTL_S = 7 * 86400
CHUNKS_TTL_S = 86400

_KIND_PREFIX = {"p": b"P", "s": b"S", "c": b"C"}


def cache_key(key):
    """memcached key of a store-gateway cache key (tenant, ulid, kind, item): kind "p" (item a
    (label name, value) pair), "s" (series id) or "c" (a run of one series' chunks:
    (first chunk ref, last chunk ref))."""
    tenant, ulid, kind, item = key
    head = b"%s:%s:%s:" % (_KIND_PREFIX[kind], tenant.encode("utf-8", "surrogateescape"),
                          ulid.encode("ascii"))
    if kind == "p":
        name, value = item
        pair = (name.encode("utf-8", "surrogateescape") + b"\xff" +
                value.encode("utf-8", "surrogateescape"))
        return safe_key(head + base64.urlsafe_b64encode(
            hashlib.blake2b(pair, digest_size=24).digest()))
    if kind == "c":
        return safe_key(head + b"%d-%d" % item)     # a run of chunks: first and last ref
    return safe_key(head + b"%d" % item)


class MemcachedStoreCache:
    """A store-gateway cache in memcached: `get_many(keys)` -> Deferred[{key: entry bytes}] (never
    fails), `put(key, entry bytes)` (fire and forget). `remote` tells the store-gateway to keep
    and decode entry bytes instead of decoded values."""

    remote = True

    def __init__(self, client, ttl_s, name):
        self.client = client
        self.ttl_s = ttl_s
        self.name = name
        self.requests = 0     # keys looked up
        self.hits = 0         # keys found and decoded
        self.corrupt = 0      # keys found whose bytes did not decode (counted as misses)

    @classmethod
    def from_config(cls, addresses, clock, reactor, ttl_s, name, timeout_s, connect_timeout_s,
                    max_item_size, max_get_multi_batch_size, max_async_buffer_size, metrics=None):
        client = MemcachedClient(addresses, clock, reactor, timeout_s=timeout_s,
                                 connect_timeout_s=connect_timeout_s, max_item_size=max_item_size,
                                 max_get_multi_batch_size=max_get_multi_batch_size,
                                 max_async_buffer_size=max_async_buffer_size, name=name,
                                 metrics=metrics)
        return cls(client, ttl_s, name)

    @property
    def misses(self):
        return self.requests - self.hits

    def start(self):
        self.client.start()

    def stop(self):
        self.client.stop()

    def get_many(self, keys):
        """Deferred[{key: bytes}] for the store-gateway keys memcached holds."""
        self.requests += len(keys)
        by_mkey = {cache_key(k): k for k in keys}
        return self.client.get_multi(list(by_mkey)).addCallback(
            lambda found: {by_mkey[mk]: v for mk, v in found.items() if mk in by_mkey})

    def put(self, key, raw):
        """Store entry bytes `raw` under `key` in the background (too large or failing: dropped)."""
        self.client.set(cache_key(key), raw, self.ttl_s)

    def drop_prefix(self, prefix):
        """Entries of dropped blocks are left to expire (a ULID is never reused)."""


_BS = "blocks_storage.bucket_store."


def memcached_addresses(addresses, flag):
    """Addresses for MemcachedClient from the flag's list: "dns+host:port" is taken as one server
    (its name resolved at connect time); Mimir's SRV forms are refused, naming the flag."""
    from urdar.components.options import ConfigError
    from urdar.net.memcached import parse_address
    out = []
    for a in addresses:
        if a.startswith(("dnssrv+", "dnssrvnoa+")):
            raise ConfigError("invalid value for -%s: DNS SRV discovery (%s) is not supported; "
                              "list host:port addresses" % (flag, a))
        if a.startswith("dns+"):
            a = a[len("dns+"):]
        try:
            parse_address(a)
        except ValueError as e:
            raise ConfigError("invalid value for -%s: %s" % (flag, e)) from None
        out.append(a)
    if not out:
        raise ConfigError("-%s must list at least one memcached server when the backend is "
                          "memcached" % (flag,))
    return out


def caches_from_config(cfg, clock, reactor, registry=None, metrics=None):
    """StoreGateway keyword arguments (index_cache, chunks_cache) for the caches configured with
    the memcached backend (app/config.py options blocks_storage.bucket_store.{index,chunks}_cache.*;
    in-memory sizes are StoreGatewayConfig's); memcached metrics go to `metrics` (or a new
    MemcachedMetrics on `registry`)."""
    kw = {}
    for which, ttl_s in (("index", INDEX_TTL_S), ("chunks", CHUNKS_TTL_S)):
        backend = cfg[_BS + which + "_cache.backend"]
        if backend == "memcached":
            if metrics is None:
                metrics = MemcachedMetrics(registry)
            y = _BS + which + "_cache.memcached."
            flag = "blocks-storage.bucket-store.%s-cache.memcached.addresses" % which
            kw[which + "_cache"] = MemcachedStoreCache.from_config(
                memcached_addresses(cfg[y + "addresses"], flag), clock, reactor, ttl_s,
                which + "-cache", timeout_s=cfg[y + "timeout"] / 1000.0,
                connect_timeout_s=cfg[y + "connect_timeout"] / 1000.0,
                max_item_size=cfg[y + "max_item_size"],
                max_get_multi_batch_size=cfg[y + "max_get_multi_batch_size"],
                max_async_buffer_size=cfg[y + "max_async_buffer_size"], metrics=metrics)
    return kw
