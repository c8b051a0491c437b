"""The store-gateway's index and chunks caches in Debian's memcached (/usr/bin/memcached on 127.0.0.1),
on the real reactor with decoding in real threads: a repeated select is answered from memcached
(its get_hits rise, the bucket sees no ranged reads) with identical results; memcached killed during
a query, stopped (SIGSTOP: connections hang) or restarted never fails or hangs a query, and the
caches come back once memcached does. Skipped only when memcached is not installed."""
import os
import signal
import socket
import subprocess
import time
import unittest

from twisted.internet import defer, task
from twisted.trial.unittest import TestCase

import tests.components.test_storegateway as base
import tests.integration.test_long_term_storage as lts
from tests.support.services import free_port
from tests.support.tmp import mktemp
from urdar.components.querier import merge_series
from urdar.components.storecache import CHUNKS_TTL_S, INDEX_TTL_S, MemcachedStoreCache
from urdar.components.storegateway import StoreGateway, StoreGatewayConfig
from urdar.engine.block import BlockReader, new_ulid, write_block
from urdar.engine.blockquery import block_select
from urdar.storage.faulty import FaultyBucket
from urdar.storage.filesystem import FilesystemBucket
from urdar.storage.prefixed import for_tenant
from urdar.storage.shipper import Shipper

MEMCACHED = "/usr/bin/memcached"
H = base.H
MATCHER_SETS = base.MATCHER_SETS


def _reactor():
    from twisted.internet import reactor
    return reactor


class MemcachedProcess:
    """memcached on 127.0.0.1:port (TCP only), its output in a log under workdir."""

    def __init__(self, workdir, port=None):
        self.port = port or free_port()
        self.log = open(os.path.join(workdir, "memcached-%d.log" % self.port), "ab")
        args = [MEMCACHED, "-l", "127.0.0.1", "-p", str(self.port), "-U", "0", "-m", "64"]
        if os.geteuid() == 0:
            args += ["-u", "root"]       # memcached refuses to run as root without -u
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise AssertionError("memcached did not start on port %d" % self.port)
                time.sleep(0.05)

    @property
    def address(self):
        return "127.0.0.1:%d" % self.port

    def stats(self):
        """{name: value} from the text protocol's `stats`, over a fresh blocking socket (test side)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(b"stats\r\n")
            data = b""
            while not data.endswith(b"END\r\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        return {p[1]: p[2] for p in (line.split(" ") for line in data.decode().splitlines())
                if len(p) == 3 and p[0] == "STAT"}

    def signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@unittest.skipUnless(os.path.exists(MEMCACHED), "memcached is not installed (apt-get install memcached)")
class MemcachedCacheTests(TestCase):
    timeout = 120

    def setUp(self):
        self.reactor = _reactor()
        self.tmp = mktemp(self)
        os.makedirs(self.tmp)
        self.local = os.path.join(self.tmp, "local", "t1")
        os.makedirs(self.local)
        self.bucket = FaultyBucket(FilesystemBucket(os.path.join(self.tmp, "bucket")))
        for k, (mint, maxt) in enumerate([(0, 2 * H), (2 * H, 4 * H), (H, 3 * H)]):
            write_block(self.local, mint, maxt, base.series_data(mint, maxt, 5 + k),
                        ulid=new_ulid(mint + 1 + k))
        d = Shipper(self.local, for_tenant(self.bucket, "t1"), self.reactor).sync()
        self.assertTrue(d.called)
        self.memcached = []

    def start_memcached(self, port=None):
        m = MemcachedProcess(self.tmp, port)
        self.memcached.append(m)
        self.addCleanup(m.stop)
        return m

    def gateway(self, address, timeout_s=1.0, name="sync"):
        def cache(ttl_s, what):
            return MemcachedStoreCache.from_config(
                [address], self.reactor, self.reactor, ttl_s, what, timeout_s=timeout_s,
                connect_timeout_s=timeout_s, max_item_size=1 << 20, max_get_multi_batch_size=100,
                max_async_buffer_size=25000)
        sg = StoreGateway(self.bucket, os.path.join(self.tmp, name), self.reactor,
                          StoreGatewayConfig(sync_interval_ms=0), reactor=self.reactor,
                          index_cache=cache(INDEX_TTL_S, "index-cache"),
                          chunks_cache=cache(CHUNKS_TTL_S, "chunks-cache"))
        self.addCleanup(sg.stop)
        return sg

    def expected(self, matchers, mint, maxt):
        parts = []
        for name in sorted(os.listdir(self.local)):
            path = os.path.join(self.local, name)
            if not os.path.isdir(path):
                continue
            with BlockReader(path) as b:
                if b.maxt <= mint or b.mint > maxt:
                    continue
                parts.append(block_select(b, matchers, mint, maxt, True))
        return plain(merge_series(parts, True) if parts else [])

    @defer.inlineCallbacks
    def writes_done(self, sg):
        """Wait until every cache write sent so far is answered."""
        for _ in range(500):
            if sg.index_cache.client.pending_sets == 0 and sg.chunks_cache.client.pending_sets == 0:
                return
            yield task.deferLater(self.reactor, 0.01, lambda: None)
        self.fail("memcached writes still pending")

    @defer.inlineCallbacks
    def test_second_select_is_served_from_memcached(self):
        """The same selects run twice: the second run reads nothing from the bucket, memcached's
        get_hits rise, and every result equals the first run's and the local blocks'."""
        m = self.start_memcached()
        sg = self.gateway(m.address)
        yield sg.start()
        first = []
        for matchers in MATCHER_SETS:
            first.append(plain((yield sg.select("t1", matchers, 0, 4 * H))))
            self.assertEqual(first[-1], self.expected(matchers, 0, 4 * H))
        yield self.writes_done(sg)
        self.assertGreater(int(m.stats()["curr_items"]), 0)
        hits_before = int(m.stats()["get_hits"])
        reads_before, calls_before = sg.range_requests, len(self.bucket.calls)
        # A fresh gateway over the same memcached: nothing in process memory helps it.
        sg2 = self.gateway(m.address, name="sync2")
        yield sg2.start()
        calls_before = len(self.bucket.calls)
        for matchers, want in zip(MATCHER_SETS, first):
            self.assertEqual(plain((yield sg.select("t1", matchers, 0, 4 * H))), want)
            self.assertEqual(plain((yield sg2.select("t1", matchers, 0, 4 * H))), want)
        self.assertEqual(sg.range_requests, reads_before)
        self.assertEqual(sg2.range_requests, 0)
        self.assertEqual([c for c in self.bucket.calls[calls_before:] if c[0] == "get_range"], [])
        self.assertGreater(int(m.stats()["get_hits"]), hits_before)
        self.assertEqual(sg.index_cache.corrupt + sg.chunks_cache.corrupt, 0)

    @defer.inlineCallbacks
    def test_memcached_killed_mid_query_and_restarted(self):
        """Killing memcached while a select waits on it still gives the right answer; later selects
        answer from the bucket, and once memcached is back the caches fill and hit again."""
        m = self.start_memcached()
        sg = self.gateway(m.address)
        yield sg.start()
        matchers = MATCHER_SETS[2]
        want = self.expected(matchers, 0, 4 * H)
        self.assertEqual(plain((yield sg.select("t1", matchers, 0, 4 * H))), want)
        yield self.writes_done(sg)
        d = sg.select("t1", MATCHER_SETS[6], 0, 4 * H)    # its memcached gets are in flight
        m.stop()
        self.assertEqual(plain((yield d)), self.expected(MATCHER_SETS[6], 0, 4 * H))
        for ms in MATCHER_SETS:
            self.assertEqual(plain((yield sg.select("t1", ms, 0, 4 * H))), self.expected(ms, 0, 4 * H))
        m2 = self.start_memcached(port=m.port)
        for _ in range(100):                 # back-off (at most 10 s) then reconnect and refill
            self.assertEqual(plain((yield sg.select("t1", matchers, 0, 4 * H))), want)
            yield self.writes_done(sg)
            if int(m2.stats()["get_hits"]) > 0:
                break
            yield task.deferLater(self.reactor, 0.2, lambda: None)
        self.assertGreater(int(m2.stats()["get_hits"]), 0)

    @defer.inlineCallbacks
    def test_hung_memcached_only_costs_timeouts(self):
        """With memcached stopped (SIGSTOP: connections open, nothing answers) selects still answer
        right after the cache timeouts, and hit the cache again after SIGCONT."""
        m = self.start_memcached()
        sg = self.gateway(m.address, timeout_s=0.25)
        yield sg.start()
        self.assertEqual(plain((yield sg.select("t1", MATCHER_SETS[0], 0, 4 * H))),
                         self.expected(MATCHER_SETS[0], 0, 4 * H))
        yield self.writes_done(sg)
        m.signal(signal.SIGSTOP)
        try:
            for ms in MATCHER_SETS[:4]:
                self.assertEqual(plain((yield sg.select("t1", ms, 0, 4 * H))),
                                 self.expected(ms, 0, 4 * H))
            self.assertGreater(sg.index_cache.client.timeouts + sg.chunks_cache.client.timeouts, 0)
        finally:
            m.signal(signal.SIGCONT)
        hits = int(m.stats()["get_hits"])
        for _ in range(100):
            yield task.deferLater(self.reactor, 0.2, lambda: None)
            self.assertEqual(plain((yield sg.select("t1", MATCHER_SETS[0], 0, 4 * H))),
                             self.expected(MATCHER_SETS[0], 0, 4 * H))
            if int(m.stats()["get_hits"]) > hits:
                break
        self.assertGreater(int(m.stats()["get_hits"]), hits)


def plain(result):
    return [(k, list(t), list(v)) for k, t, v in result]


@unittest.skipUnless(os.path.exists(MEMCACHED), "memcached is not installed (apt-get install memcached)")
class MemcachedLongTermStorageTests(lts.FilesystemLongTermStorageTests):
    """The long-term storage round trip through `python -m urdar` with both store-gateway caches
    in memcached, configured by Mimir's flags: same answers, and memcached is written and read."""

    def setUp(self):
        super().setUp()
        self.memcached = MemcachedProcess(self.tmp)
        self.addCleanup(self.memcached.stop)

    def backend_flags(self):
        flags = []
        for which in ("index", "chunks"):
            prefix = "-blocks-storage.bucket-store.%s-cache." % which
            flags += [prefix + "backend=memcached",
                      prefix + "memcached.addresses=" + self.memcached.address]
        return super().backend_flags() + flags

    def test_restarted_urdar_serves_the_same_data_from_object_storage(self):
        """After flush-and-ship and a restart every query answers as before, using memcached."""
        super().test_restarted_urdar_serves_the_same_data_from_object_storage()
        stats = self.memcached.stats()
        self.assertGreater(int(stats["cmd_set"]), 0, stats)
        self.assertGreater(int(stats["get_hits"]), 0, stats)
