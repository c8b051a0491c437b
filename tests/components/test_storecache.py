"""The store-gateway with its index and chunks caches in memcached: same answers as without, repeated
queries served from memcached instead of the bucket, and a slow, down or lying memcached costing at
most a timeout, never an error or a wrong result."""
import unittest

import tests.components.test_storegateway as base
from tests.support.fakememcached import FakeMemcached
from urdar.components.storecache import (
    CHUNKS_TTL_S, INDEX_TTL_S, MemcachedStoreCache, cache_key)
from urdar.engine.matchers import Matcher
from urdar.net.memcached import MemcachedClient

H = base.H
MATCHER_SETS = base.MATCHER_SETS


def memcached_caches(clock, server, **kw):
    kw.setdefault("timeout_s", 0.2)

    def make(ttl_s, name):
        return MemcachedStoreCache(MemcachedClient(["fake:11211"], clock, connect=server.connect,
                                                   name=name, **kw), ttl_s, name)
    return {"index_cache": make(INDEX_TTL_S, "index-cache"),
            "chunks_cache": make(CHUNKS_TTL_S, "chunks-cache")}


class MemcachedStoreGatewayTests(base.StoreGatewayTests):
    """Every store-gateway behaviour again, with both caches in (fake) memcached."""

    def setUp(self):
        super().setUp()
        self.memcached = FakeMemcached(autoflush=True)

    def gateway(self, **kw):
        for k in ("index_cache_bytes", "chunks_cache_bytes"):
            kw.pop(k, None)
        kw.update(memcached_caches(self.clock, self.memcached,
                                   **kw.pop("memcached_options", {})))
        return super().gateway(**kw)

    def test_caches_stay_within_their_size(self):
        """(In-memory sizes do not apply to memcached; see the max-item-size test instead.)"""
        raise unittest.SkipTest("memcached bounds its own memory")

    def test_second_query_is_served_from_memcached(self):
        """A repeated select reads nothing from the bucket and hits memcached, with the same result."""
        self.add_blocks("t1", [(0, 2 * H), (2 * H, 4 * H)])
        sg = self.gateway()
        first = self.successResultOf(sg.select("t1", MATCHER_SETS[2], 0, 4 * H))
        reads, hits = sg.range_requests, self.memcached.get_hits
        self.assertGreater(len(self.memcached.items), 0)
        second = self.successResultOf(sg.select("t1", MATCHER_SETS[2], 0, 4 * H))
        self.assertEqual(sg.range_requests, reads)
        self.assertGreater(self.memcached.get_hits, hits)
        self.assertEqual(self.plain(first), self.plain(second))
        self.assertEqual(self.plain(second), self.plain(self.expected("t1", MATCHER_SETS[2], 0, 4 * H)))

    def test_memcached_is_shared_by_gateways(self):
        """A second store-gateway (another replica, or after a restart) gets the entries from memcached."""
        self.add_blocks("t1", [(0, 2 * H)])
        one = self.gateway()
        want = self.plain(self.successResultOf(one.select("t1", MATCHER_SETS[1], 0, 2 * H)))
        two = self.gateway()
        got = self.plain(self.successResultOf(two.select("t1", MATCHER_SETS[1], 0, 2 * H)))
        self.assertEqual(got, want)
        self.assertEqual(two.range_requests, 0)
        self.assertGreater(two.index_cache.hits, 0)
        self.assertGreater(two.chunks_cache.hits, 0)

    def test_stalled_memcached_costs_a_timeout_not_the_query(self):
        """With memcached answering nothing, the query waits one timeout per cache, then reads the bucket."""
        self.add_blocks("t1", [(0, 2 * H)])
        sg = self.gateway()
        self.memcached.stalled = True
        d = sg.select("t1", MATCHER_SETS[3], 0, 2 * H)
        self.assertNoResult(d)
        self.clock.advance(0.2)      # index cache: postings lookup times out, series skip it
        self.assertNoResult(d)
        self.clock.advance(0.2)      # chunks cache
        got = self.successResultOf(d)
        self.assertEqual(self.plain(got), self.plain(self.expected("t1", MATCHER_SETS[3], 0, 2 * H)))
        # Later queries too: each waits at most one timeout per cache (less while backing off).
        for _ in range(5):
            d = sg.select("t1", MATCHER_SETS[3], 0, 2 * H)
            self.clock.advance(0.2)
            self.clock.advance(0.2)
            got = self.successResultOf(d)
            self.assertEqual(self.plain(got),
                             self.plain(self.expected("t1", MATCHER_SETS[3], 0, 2 * H)))

    def test_memcached_down_queries_still_answer(self):
        """With no memcached listening every query answers at once from the bucket."""
        self.add_blocks("t1", [(0, 2 * H)])
        self.memcached.refuse = True
        sg = self.gateway()
        for matchers in MATCHER_SETS:
            got = self.successResultOf(sg.select("t1", matchers, 0, 2 * H))
            self.assertEqual(self.plain(got), self.plain(self.expected("t1", matchers, 0, 2 * H)))

    def test_memcached_restart_mid_use(self):
        """Memcached losing its connections and data between queries changes nothing in the answers."""
        self.add_blocks("t1", [(0, 2 * H)])
        sg = self.gateway()
        want = self.plain(self.expected("t1", MATCHER_SETS[0], 0, 2 * H))
        self.assertEqual(self.plain(self.successResultOf(sg.select("t1", MATCHER_SETS[0], 0, 2 * H))), want)
        self.memcached.drop_connections()
        self.memcached.items.clear()
        self.assertEqual(self.plain(self.successResultOf(sg.select("t1", MATCHER_SETS[0], 0, 2 * H))), want)
        self.clock.advance(11)
        self.assertEqual(self.plain(self.successResultOf(sg.select("t1", MATCHER_SETS[0], 0, 2 * H))), want)
        self.assertGreater(len(self.memcached.items), 0)   # reconnected and filled again

    def test_damaged_cached_entries_are_misses(self):
        """Bytes in memcached that fail their CRC (or are garbage) are ignored and re-read from the bucket."""
        self.add_blocks("t1", [(0, 2 * H)])
        sg = self.gateway()
        want = self.plain(self.successResultOf(sg.select("t1", MATCHER_SETS[6], 0, 2 * H)))
        for i, k in enumerate(sorted(self.memcached.items)):
            v = self.memcached.items[k]
            self.memcached.items[k] = (v[:-1] + bytes([v[-1] ^ 1])) if i % 2 else b"junk"
        reads = sg.range_requests
        got = self.plain(self.successResultOf(sg.select("t1", MATCHER_SETS[6], 0, 2 * H)))
        self.assertEqual(got, want)
        self.assertGreater(sg.range_requests, reads)
        self.assertGreater(sg.index_cache.corrupt + sg.chunks_cache.corrupt, 0)

    def test_items_over_max_item_size_are_not_cached(self):
        """Entries above max-item-size are not stored; queries still answer right."""
        self.add_blocks("t1", [(0, 2 * H)])
        sg = self.gateway(memcached_options={"max_item_size": 40})
        want = self.plain(self.expected("t1", MATCHER_SETS[6], 0, 2 * H))
        self.assertEqual(self.plain(self.successResultOf(sg.select("t1", MATCHER_SETS[6], 0, 2 * H))), want)
        self.assertTrue(all(len(v) <= 40 for v in self.memcached.items.values()))
        self.assertGreater(sg.chunks_cache.client.skipped_too_large, 0)
        self.assertEqual(self.plain(self.successResultOf(sg.select("t1", MATCHER_SETS[6], 0, 2 * H))), want)

    def test_odd_label_values_make_safe_keys(self):
        """Label values with spaces, newlines or non-ASCII text are cached under safe keys."""
        self.add_blocks("t1", [(0, 2 * H)], jobs=("a b", "x\ny", "ü" * 300))
        sg = self.gateway()
        for job in ("a b", "x\ny", "ü" * 300):
            m = [Matcher("=", "job", job)]
            want = self.plain(self.expected("t1", m, 0, 2 * H))
            self.assertTrue(want)
            self.assertEqual(self.plain(self.successResultOf(sg.select("t1", m, 0, 2 * H))), want)
            reads = sg.range_requests
            self.assertEqual(self.plain(self.successResultOf(sg.select("t1", m, 0, 2 * H))), want)
            self.assertEqual(sg.range_requests, reads)
        for k in self.memcached.items:
            self.assertTrue(len(k) <= 250 and all(0x21 <= c <= 0x7E for c in k), k)


class CacheKeyTests(unittest.TestCase):

    def test_keys_name_tenant_block_and_entry(self):
        """Different tenants, blocks, kinds or entries never share a key."""
        keys = {cache_key(k) for k in [
            ("t1", "01B", "s", 1), ("t2", "01B", "s", 1), ("t1", "01C", "s", 1),
            ("t1", "01B", "c", (1, 1)), ("t1", "01B", "c", (1, 2)),
            ("t1", "01B", "s", 2), ("t1", "01B", "p", ("a", "b")),
            ("t1", "01B", "p", ("a", "c")), ("t1", "01B", "p", ("ab", "")), ("t1", "01B", "p", ("", "ab"))]}
        self.assertEqual(len(keys), 10)
        self.assertEqual(cache_key(("t1", "01B", "s", 7)), b"S:t1:01B:7")


class CachesFromConfigTests(unittest.TestCase):

    def caches(self, *argv, yaml_text=None):
        from twisted.internet.task import Clock
        from urdar.components.storecache import caches_from_config
        from urdar.components.storegateway import StoreGatewayConfig
        from urdar.app import config as C
        files = {"c.yaml": yaml_text} if yaml_text else {}
        args = list(argv) + (["-config.file=c.yaml"] if yaml_text else [])
        cfg = C.load(args, read_file=lambda p: files[p])[0]
        self.config = StoreGatewayConfig.from_config(cfg)
        return caches_from_config(cfg, Clock(), None)

    def test_defaults_keep_in_memory_caches(self):
        """Without flags both caches stay in memory with their configured sizes."""
        kw = self.caches("-blocks-storage.bucket-store.index-cache.inmemory.max-size-bytes=123")
        self.assertEqual(kw, {})
        self.assertEqual((self.config.index_cache_bytes, self.config.chunks_cache_bytes), (123, 1 << 30))

    def test_empty_chunks_backend_disables_the_chunks_cache(self):
        """-blocks-storage.bucket-store.chunks-cache.backend= (empty, Mimir's default) means no chunks cache."""
        self.caches("-blocks-storage.bucket-store.chunks-cache.backend=")
        self.assertEqual(self.config.chunks_cache_bytes, 0)

    def test_memcached_flags(self):
        """Mimir's memcached flags pick the backend, servers, timeout and item size of each cache."""
        kw = self.caches(
            "-blocks-storage.bucket-store.index-cache.backend=memcached",
            "-blocks-storage.bucket-store.index-cache.memcached.addresses=a:1,dns+b:2",
            "-blocks-storage.bucket-store.index-cache.memcached.timeout=450ms",
            "-blocks-storage.bucket-store.index-cache.memcached.max-item-size=2048",
            "-blocks-storage.bucket-store.chunks-cache.backend=memcached",
            "-blocks-storage.bucket-store.chunks-cache.memcached.addresses=c:3")
        idx, ch = kw["index_cache"].client, kw["chunks_cache"].client
        self.assertEqual([(s.host, s.port) for s in idx.servers], [("a", 1), ("b", 2)])
        self.assertEqual((idx.timeout_s, idx.max_item_size), (0.45, 2048))
        self.assertEqual([(s.host, s.port) for s in ch.servers], [("c", 3)])
        self.assertEqual((ch.timeout_s, ch.max_item_size), (0.2, 1 << 20))

    def test_memcached_yaml(self):
        """The YAML blocks index_cache/chunks_cache.memcached work like the flags."""
        kw = self.caches(yaml_text="blocks_storage:\n  bucket_store:\n    chunks_cache:\n"
                                   "      backend: memcached\n      memcached:\n"
                                   "        addresses: m1:11211,m2:11211\n        timeout: 1s\n")
        self.assertEqual(len(kw["chunks_cache"].client.servers), 2)
        self.assertEqual(kw["chunks_cache"].client.timeout_s, 1.0)
        self.assertNotIn("index_cache", kw)

    def test_bad_memcached_settings_stop_start_up(self):
        """No addresses, SRV discovery or a bad port are start-up errors naming the flag."""
        from urdar.app.config import ConfigError
        for extra in ((), ("-blocks-storage.bucket-store.index-cache.memcached.addresses=dnssrv+_m._tcp.x",),
                      ("-blocks-storage.bucket-store.index-cache.memcached.addresses=h:port",)):
            with self.assertRaises(ConfigError) as cm:
                self.caches("-blocks-storage.bucket-store.index-cache.backend=memcached", *extra)
            self.assertIn("index-cache.memcached.addresses", str(cm.exception))
        with self.assertRaises(ConfigError):
            self.caches("-blocks-storage.bucket-store.index-cache.backend=redis")
