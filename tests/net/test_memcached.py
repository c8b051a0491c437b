"""The memcached client: hits come back, and a missing, slow, refusing or crashed server only ever
turns into cache misses (never a failed or hung caller)."""
from hypothesis import given, settings, strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.support.fakememcached import FakeMemcached, FakeMemcachedCluster
from urdar.net.memcached import MemcachedClient, jump_hash, parse_address, safe_key


class SafeKeyTests(SynchronousTestCase):

    def test_plain_keys_are_kept(self):
        """A short printable key is used as it is."""
        self.assertEqual(safe_key(b"S:tenant:01ABC:17"), b"S:tenant:01ABC:17")

    def test_long_or_odd_keys_are_hashed(self):
        """Keys over 250 bytes, or with spaces, control or non-ASCII bytes, become a short hash."""
        for raw in (b"x" * 251, b"a b", b"a\r\nb", "é".encode(), b"", b"a\x00"):
            k = safe_key(raw)
            self.assertNotEqual(k, raw)
            self.assertLessEqual(len(k), 250)
            self.assertTrue(all(0x21 <= c <= 0x7E for c in k), k)
        self.assertEqual(safe_key(b"x" * 250), b"x" * 250)
        self.assertNotEqual(safe_key(b"a b"), safe_key(b"a  b"))

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=400))
    def test_every_key_is_acceptable(self, raw):
        """Whatever the input, the key sent to memcached is 1..250 printable non-space bytes."""
        k = safe_key(raw)
        self.assertTrue(0 < len(k) <= 250)
        self.assertTrue(all(0x21 <= c <= 0x7E for c in k))


class HashAndAddressTests(SynchronousTestCase):

    def test_jump_hash_is_stable_and_moves_few_keys(self):
        """Adding a fifth server moves about a fifth of the keys and no key moves between old ones."""
        moved = 0
        for key in range(2000):
            a, b = jump_hash(key * 0x9E3779B97F4A7C15 & (2 ** 64 - 1), 4), \
                jump_hash(key * 0x9E3779B97F4A7C15 & (2 ** 64 - 1), 5)
            self.assertTrue(0 <= a < 4 and 0 <= b < 5)
            if a != b:
                self.assertEqual(b, 4)
                moved += 1
        self.assertTrue(250 < moved < 550, moved)

    def test_addresses_parse(self):
        """host:port, bare host (port 11211) and [v6]:port are understood; bad ports are refused."""
        self.assertEqual(parse_address("127.0.0.1:11311"), ("127.0.0.1", 11311))
        self.assertEqual(parse_address("memcached"), ("memcached", 11211))
        self.assertEqual(parse_address("[::1]:1234"), ("::1", 1234))
        for bad in ("host:x", "host:0", ":11211", "host:70000"):
            self.assertRaises(ValueError, parse_address, bad)


class MemcachedClientTests(SynchronousTestCase):

    def setUp(self):
        self.clock = Clock()
        self.server = FakeMemcached()

    def client(self, **kw):
        kw.setdefault("connect", self.server.connect)
        c = MemcachedClient(kw.pop("addresses", ["fake:11211"]), self.clock, **kw)
        self.addCleanup(c.stop)
        return c

    def test_set_then_get(self):
        """A stored value is returned by a later get; unknown keys are absent."""
        c = self.client()
        d = c.set(b"k1", b"v1")
        self.server.flush()
        self.assertIs(self.successResultOf(d), True)
        d = c.get_multi([b"k1", b"k2"])
        self.server.flush()
        self.assertEqual(self.successResultOf(d), {b"k1": b"v1"})
        self.assertEqual((c.hits, c.misses), (1, 1))

    def test_many_keys_and_binary_values(self):
        """Hundreds of keys with binary values (CR LF, NUL, high bytes) come back intact in batches."""
        c = self.client(max_get_multi_batch_size=100)
        want = {b"k%d" % i: bytes(range(256)) * (i % 5) + b"\r\nEND\r\n" for i in range(450)}
        for k, v in want.items():
            c.set(k, v)
        self.server.flush()
        self.assertEqual(len(self.server.items), 450)
        d = c.get_multi(list(want))
        self.server.flush()
        self.assertEqual(self.successResultOf(d), want)

    def test_values_over_max_item_size_are_not_stored(self):
        """A value larger than max_item_size is skipped without asking the server."""
        c = self.client(max_item_size=10)
        d = c.set(b"big", b"x" * 11)
        self.assertIs(self.successResultOf(d), False)
        self.server.flush()
        self.assertEqual(self.server.cmd_set, 0)
        self.assertEqual(c.skipped_too_large, 1)

    def test_server_refusing_large_item_is_a_failed_set_only(self):
        """A server error on set yields False, and later gets still work."""
        self.server.max_item_size = 5
        c = self.client()
        d = c.set(b"k", b"123456")
        self.server.flush()
        self.assertIs(self.successResultOf(d), False)
        c.set(b"s", b"1")
        d = c.get_multi([b"s"])
        self.server.flush()
        self.assertEqual(self.successResultOf(d), {b"s": b"1"})

    def test_stalled_server_times_out_as_misses(self):
        """A server that never answers gives misses after the timeout, and the connection is dropped."""
        c = self.client(timeout_s=0.2)
        self.server.stalled = True
        d = c.get_multi([b"a", b"b"])
        self.server.flush()
        self.assertNoResult(d)
        self.clock.advance(0.2)
        self.assertEqual(self.successResultOf(d), {})
        self.assertEqual(c.timeouts, 1)
        self.server.flush()
        self.assertIsNone(c.servers[0].proto)

    def test_reconnects_after_back_off(self):
        """After a timeout the next request within the back-off misses at once; later ones reconnect."""
        c = self.client(timeout_s=0.2)
        self.server.stalled = True
        d = c.get_multi([b"a"])
        self.clock.advance(0.2)
        self.server.flush()
        self.successResultOf(d)
        self.server.stalled = False
        self.server.items[b"a"] = b"1"
        self.assertEqual(self.successResultOf(c.get_multi([b"a"])), {})   # backing off
        self.clock.advance(1)
        d = c.get_multi([b"a"])
        self.server.flush()
        self.assertEqual(self.successResultOf(d), {b"a": b"1"})
        self.assertEqual(self.server.connections, 2)

    def test_refused_connection_is_a_miss(self):
        """No server listening: gets are empty and sets are False, without waiting."""
        self.server.refuse = True
        c = self.client()
        self.assertEqual(self.successResultOf(c.get_multi([b"a"])), {})
        self.assertIs(self.successResultOf(c.set(b"a", b"1")), False)
        self.assertGreaterEqual(c.connect_failures, 1)

    def test_server_restart_drops_connection_then_recovers(self):
        """A closed connection fails in-flight requests as misses; the client reconnects later."""
        c = self.client()
        c.set(b"a", b"1")
        self.server.flush()
        d = c.get_multi([b"a"])
        self.server.drop_connections()
        self.assertEqual(self.successResultOf(d), {})
        self.clock.advance(MAX_WAIT)
        d = c.get_multi([b"a"])
        self.server.flush()
        self.assertEqual(self.successResultOf(d), {b"a": b"1"})

    def test_slow_connect_is_bounded_by_the_timeout(self):
        """A connect that never completes turns requests into misses after the timeout."""
        from twisted.internet import defer
        pending = []

        def connect(host, port, factory):
            pending.append(defer.Deferred())
            return pending[-1]
        c = self.client(connect=connect, timeout_s=0.5)
        d = c.get_multi([b"a"])
        self.assertNoResult(d)
        self.clock.advance(0.5)
        self.assertEqual(self.successResultOf(d), {})

    def test_keys_spread_over_servers(self):
        """With three servers each key lives on exactly one, and all are found again."""
        cluster = FakeMemcachedCluster(3)
        c = self.client(addresses=cluster.addresses, connect=cluster.connect)
        keys = [b"key-%d" % i for i in range(300)]
        for k in keys:
            c.set(k, k)
        cluster.flush()
        counts = [len(s.items) for s in cluster.servers]
        self.assertEqual(sum(counts), 300)
        self.assertTrue(all(n > 50 for n in counts), counts)
        d = c.get_multi(keys)
        cluster.flush()
        self.assertEqual(len(self.successResultOf(d)), 300)

    def test_one_server_down_only_misses_its_keys(self):
        """Keys on a healthy server still hit while another server is down."""
        cluster = FakeMemcachedCluster(2)
        c = self.client(addresses=cluster.addresses, connect=cluster.connect)
        keys = [b"key-%d" % i for i in range(100)]
        for k in keys:
            c.set(k, k)
        cluster.flush()
        cluster.servers[1].stalled = True
        d = c.get_multi(keys)
        cluster.flush()
        self.assertNoResult(d)
        self.clock.advance(c.timeout_s)
        self.assertEqual(set(self.successResultOf(d)), set(cluster.servers[0].items))

    def test_too_many_pending_sets_are_dropped(self):
        """Writes beyond max_async_buffer_size in flight are dropped instead of queued."""
        c = self.client(max_async_buffer_size=3)
        self.server.stalled = True
        ds = [c.set(b"k%d" % i, b"v") for i in range(5)]
        self.assertEqual(c.dropped_sets, 2)
        self.assertIs(self.successResultOf(ds[4]), False)
        self.clock.advance(c.timeout_s)
        self.assertEqual([self.successResultOf(d) for d in ds[:3]], [False] * 3)
        self.assertEqual(c.dropped_sets, 2)

    def test_stats(self):
        """stats() reports each reachable server's counters."""
        c = self.client()
        c.set(b"a", b"1")
        c.get_multi([b"a", b"b"])
        d = c.stats()
        self.server.flush()
        st = self.successResultOf(d)["fake:11211"]
        self.assertEqual((st["get_hits"], st["get_misses"]), ("1", "1"))


MAX_WAIT = 11.0


class MemcachedMetricsTests(SynchronousTestCase):

    def test_operations_failures_skips_and_hits_are_counted(self):
        """Mimir's thanos_memcached_* and thanos_cache_* counters follow gets, sets, timeouts and skips."""
        from prometheus_client import CollectorRegistry
        from urdar.net.memcached import MemcachedMetrics
        registry = CollectorRegistry()
        clock, server = Clock(), FakeMemcached()
        c = MemcachedClient(["fake:11211"], clock, connect=server.connect, name="index-cache",
                            max_item_size=4, metrics=MemcachedMetrics(registry))
        c.set(b"a", b"1")
        c.set(b"big", b"12345")
        c.get_multi([b"a", b"b"])
        server.flush()
        server.stalled = True
        c.get_multi([b"a"])
        clock.advance(c.timeout_s)

        def value(name, **labels):
            return registry.get_sample_value(name, dict(name="index-cache", **labels)) or 0
        self.assertEqual(value("thanos_memcached_operations_total", operation="getmulti"), 2)
        self.assertEqual(value("thanos_memcached_operations_total", operation="set"), 1)
        self.assertEqual(value("thanos_memcached_operation_skipped_total", operation="set",
                               reason="max-item-size"), 1)
        self.assertEqual(value("thanos_memcached_operation_failures_total", operation="getmulti",
                               reason="timeout"), 1)
        self.assertEqual((value("thanos_cache_requests_total"), value("thanos_cache_hits_total")), (3, 1))


class MemcachedStopTests(SynchronousTestCase):

    def test_connect_finishing_after_stop_is_closed(self):
        """A connection completing after stop() is closed at once and its waiting requests miss."""
        from twisted.internet import defer
        clock, server, pending = Clock(), FakeMemcached(), []

        def connect(host, port, factory):
            pending.append((defer.Deferred(), factory))
            return pending[-1][0]
        c = MemcachedClient(["fake:11211"], clock, connect=connect)
        d = c.get_multi([b"a"])
        c.stop()
        waiting, factory = pending[0]
        waiting.callback(server.connect("fake", 11211, factory).result)
        self.assertEqual(self.successResultOf(d), {})
        self.assertIsNone(c.servers[0].proto)
        self.assertTrue(server.pumps[0].clientIO.disconnecting)
