"""EtcdKV against a real etcd (Debian's etcd-server) on 127.0.0.1: the KV contract, racing
writers, watches, and etcd killed, restarted, compacted and frozen under a client."""
import base64
import json
import shutil
import tempfile
import time

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import SkipTest, TestCase

from tests.net.kv_contract import KVContract
from tests.support.etcd import Etcd, have_etcd
from tests.support.services import http
from tests.support.tmp import mktemp
from urdar.net.etcd import EtcdError, EtcdKV, EtcdUnavailable, encode_value


def put(etcd, key, value):
    """Write key from outside urdar's client, blocking (test-only)."""
    status, body = http("POST", etcd.base + "/v3/kv/put", data=json.dumps({
        "key": base64.b64encode(key.encode()).decode(),
        "value": base64.b64encode(encode_value(value)).decode()}).encode())
    assert status == 200, body


def eventually(check, timeout_s=20.0):
    """A Deferred firing once check() is true, polling on the reactor; fails after timeout_s."""
    deadline = time.monotonic() + timeout_s

    @defer.inlineCallbacks
    def poll():
        while not check():
            if time.monotonic() > deadline:
                raise AssertionError("condition not met within %ss" % timeout_s)
            yield task.deferLater(reactor, 0.02, lambda: None)
    return poll()


def start_etcd(case):
    if not have_etcd():
        raise SkipTest("etcd is not installed (Debian package etcd-server; `make debs`)")
    etcd = Etcd(mktemp(case).rsplit("/", 1)[0]).start()
    return etcd


class EtcdContractTests(KVContract, TestCase):
    timeout = 120

    def setUp(self):
        # One etcd for the class (keys are per test): its directory outlives each test.
        if not hasattr(EtcdContractTests, "etcd"):
            if not have_etcd():
                raise SkipTest("etcd is not installed (Debian package etcd-server; `make debs`)")
            EtcdContractTests.workdir = tempfile.mkdtemp(prefix="urdar-etcd-")
            EtcdContractTests.etcd = Etcd(self.workdir).start()
        super().setUp()

    @classmethod
    def tearDownClass(cls):
        if hasattr(cls, "etcd"):
            cls.etcd.stop()
            shutil.rmtree(cls.workdir, True)
            del cls.etcd

    def make_kv(self):
        kv = EtcdKV([self.etcd.endpoint], reactor, dial_timeout_s=5)
        self.addCleanup(kv.close)
        return kv

    def interfere(self, key, value):
        put(self.etcd, key, value)

    def eventually(self, check):
        return eventually(check)


class EtcdFaultTests(TestCase):
    """One etcd per test: these take it away."""
    timeout = 120

    def setUp(self):
        self.etcd = start_etcd(self)
        self.addCleanup(self.etcd.stop)

    def client(self, **kw):
        kw.setdefault("dial_timeout_s", 1.0)
        kw.setdefault("backoff_min_s", 0.05)
        kw.setdefault("backoff_max_s", 0.2)
        kv = EtcdKV([self.etcd.endpoint], reactor, **kw)
        self.addCleanup(kv.close)
        return kv

    @defer.inlineCallbacks
    def test_concurrent_writers_converge(self):
        """Two clients incrementing one counter at once lose no increment."""
        a, b = self.client(max_retries=100), self.client(max_retries=100)

        def incr(v):
            v = v or {"n": 0, "by": []}
            return {"n": v["n"] + 1}
        n = 15
        yield defer.gatherResults([c.cas("ring", incr) for c in (a, b) for _ in range(n)],
                                  consumeErrors=True)
        self.assertEqual((yield a.get("ring")), {"n": 2 * n})
        self.assertEqual((yield b.entry("ring"))[1], 2 * n)

    @defer.inlineCallbacks
    def test_watch_sees_other_clients_changes(self):
        """A watch on one client reports what another client writes."""
        a, b = self.client(), self.client()
        seen = []
        w = a.watch("collectors/ring", lambda k, v: seen.append(v))
        yield w.started
        yield b.cas("collectors/ring", lambda v: {"ingesters": {"i-1": {"state": "ACTIVE"}}})
        yield eventually(lambda: seen)
        self.assertEqual(seen, [{"ingesters": {"i-1": {"state": "ACTIVE"}}}])
        self.assertEqual((yield a.get("collectors/ring")), seen[0])

    @defer.inlineCallbacks
    def test_killed_etcd_reads_last_value_cas_fails_then_recovers(self):
        """With etcd SIGKILLed, reads answer the last value seen and cas fails with a clear error
        after its retries; once etcd is back, the same cas goes through."""
        kv = self.client(max_retries=3)
        yield kv.cas("k", lambda v: {"v": 1})
        self.etcd.kill()
        self.assertEqual((yield kv.get("k")), {"v": 1})
        self.assertEqual((yield kv.keys()), ["k"])
        err = yield self.assertFailure(kv.cas("k", lambda v: {"v": 2}), EtcdUnavailable)
        self.assertIn(self.etcd.endpoint, str(err))
        self.assertIn("3 attempts", str(err))
        yield self.assertFailure(kv.get("never-seen"), EtcdUnavailable)
        self.etcd.start()
        self.assertEqual((yield kv.cas("k", lambda v: {"v": v["v"] + 1})), 2)
        self.assertEqual((yield kv.get("k")), {"v": 2})

    @defer.inlineCallbacks
    def test_watch_catches_up_after_restart(self):
        """Changes made while a watch was cut off by an etcd restart are delivered, in order,
        once it reconnects."""
        kv = self.client(backoff_min_s=4.0, backoff_max_s=4.0)
        seen = []
        w = kv.watch("k", lambda k, v: seen.append(v))
        yield w.started
        put(self.etcd, "k", {"v": 1})
        yield eventually(lambda: seen == [{"v": 1}])
        self.etcd.kill()
        self.etcd.start()
        # Written before the watch's back-off lets it reconnect: only a resume from the
        # revision after {"v": 1} can deliver these.
        put(self.etcd, "k", {"v": 2})
        put(self.etcd, "k", {"v": 3})
        yield eventually(lambda: len(seen) >= 3)
        self.assertEqual(seen, [{"v": 1}, {"v": 2}, {"v": 3}])
        self.assertGreaterEqual(w.reconnects, 1)

    @defer.inlineCallbacks
    def test_watch_rereads_after_compaction(self):
        """When the revisions a watch missed were compacted away, it re-reads and reports each
        key's current value (and deleted keys as None) instead of stalling."""
        kv = self.client(backoff_min_s=4.0, backoff_max_s=4.0)
        seen = []
        w = kv.watch_prefix("r/", lambda k, v: seen.append((k, v)))
        yield w.started
        put(self.etcd, "r/a", {"a": 1})
        put(self.etcd, "r/b", {"b": 1})
        yield eventually(lambda: len(seen) == 2)
        self.etcd.kill()
        self.etcd.start()
        put(self.etcd, "r/a", {"a": 2})
        put(self.etcd, "r/a", {"a": 3})
        http("POST", self.etcd.base + "/v3/kv/deleterange",
             data=json.dumps({"key": base64.b64encode(b"r/b").decode()}).encode())
        self.etcd.compact()
        yield eventually(lambda: len(seen) >= 4)
        self.assertEqual(seen[2:], [("r/a", {"a": 3}), ("r/b", None)])
        put(self.etcd, "r/c", {"c": 1})
        yield eventually(lambda: len(seen) >= 5)
        self.assertEqual(seen[4:], [("r/c", {"c": 1})], "the watch goes on after the re-read")

    @defer.inlineCallbacks
    def test_frozen_etcd_times_out(self):
        """With etcd SIGSTOPped, requests give up after the dial timeout instead of hanging, and
        reads fall back to the last value seen."""
        kv = self.client(dial_timeout_s=0.5, max_retries=2)
        yield kv.cas("k", lambda v: {"v": 1})
        self.etcd.pause()
        try:
            t0 = time.monotonic()
            self.assertEqual((yield kv.get("k")), {"v": 1})
            err = yield self.assertFailure(kv.cas("k", lambda v: {"v": 2}), EtcdUnavailable)
            self.assertIn("no answer within 0.5s", str(err))
            self.assertLess(time.monotonic() - t0, 30, "bounded by dial timeout x attempts")
        finally:
            self.etcd.resume()
        self.assertEqual((yield kv.cas("k", lambda v: {"v": 2})), 2)

    @defer.inlineCallbacks
    def test_fails_over_past_a_dead_endpoint(self):
        """With the first endpoint refusing connections, reads, writes and watches go to the next."""
        from tests.support.services import free_port
        kv = EtcdKV(["127.0.0.1:%d" % free_port(), self.etcd.endpoint], reactor, dial_timeout_s=1.0)
        self.addCleanup(kv.close)
        seen = []
        w = kv.watch("k", lambda k, v: seen.append(v))
        yield w.started
        self.assertEqual((yield kv.cas("k", lambda v: {"v": 1})), 1)
        self.assertEqual((yield kv.get("k")), {"v": 1})
        yield eventually(lambda: seen == [{"v": 1}])

    @defer.inlineCallbacks
    def test_username_and_password(self):
        """With etcd's authentication on, the configured user reads, writes and watches; a wrong
        password fails at once with etcd's reason."""
        self.etcd.enable_auth("root", "pw")
        kv = self.client(username="root", password="pw")
        seen = []
        w = kv.watch("k", lambda k, v: seen.append(v))
        yield w.started
        self.assertEqual((yield kv.cas("k", lambda v: {"v": 1})), 1)
        self.assertEqual((yield kv.get("k")), {"v": 1})
        yield eventually(lambda: seen == [{"v": 1}])
        err = yield self.assertFailure(self.client(username="root", password="no").get("k"), EtcdError)
        self.assertIn("authentication failed", str(err))
        self.assertNotIsInstance(err, EtcdUnavailable)  # a refusal is not retried
        err = yield self.assertFailure(self.client().get("k"), EtcdError)
        self.assertNotIsInstance(err, EtcdUnavailable)

    @defer.inlineCallbacks
    def test_ring_member_survives_an_etcd_outage(self):
        """A ring member heartbeating into etcd keeps running while etcd is down and its entry is
        fresh again once etcd is back; leaving removes it."""
        from urdar.net.ring import RingLifecycler
        kv, reader = self.client(max_retries=2), self.client()
        lc = RingLifecycler(kv, reactor, "collectors/ring", "host-1", "127.0.0.1:8080",
                            heartbeat_s=0.5)
        lc.join()
        self.addCleanup(lambda: lc._loop.running and lc._loop.stop())
        yield lc.set_state("ACTIVE")
        me = (yield reader.get("collectors/ring"))["ingesters"]["host-1"]
        self.assertEqual((me["state"], me["addr"]), ("ACTIVE", "127.0.0.1:8080"))
        self.etcd.kill()
        before = lc.last_heartbeat_s
        yield task.deferLater(reactor, 1.5, lambda: None)
        self.assertEqual(lc.last_heartbeat_s, before, "heartbeats failed while etcd was down")
        self.assertTrue(lc._loop.running, "and kept coming")
        self.etcd.start()
        yield eventually(lambda: lc.last_heartbeat_s > before)
        me = (yield reader.get("collectors/ring"))["ingesters"]["host-1"]
        self.assertGreater(me["timestamp"], int(before), "a heartbeat after the outage landed")
        yield lc.leave()
        self.assertEqual((yield reader.get("collectors/ring")), {"ingesters": {}})


    @defer.inlineCallbacks
    def test_ring_reader_keeps_the_last_ring_while_etcd_is_down(self):
        """A ring reader watching etcd sees members join, keeps answering replica sets from the
        last ring it saw while etcd is down, and catches up once etcd is back."""
        from urdar.net.ring import Ring, RingLifecycler
        writer, watcher = self.client(max_retries=2), self.client()
        ring = Ring(watcher, "collectors/ring", reactor, replication_factor=1, heartbeat_timeout_s=0)
        yield ring.start()
        self.addCleanup(ring.stop)
        lc = RingLifecycler(writer, reactor, "collectors/ring", "host-1", "127.0.0.1:8080",
                            heartbeat_s=0.5, num_tokens=16)
        yield lc.join()
        self.addCleanup(lambda: lc._loop.running and lc._loop.stop())
        yield lc.set_state("ACTIVE")
        yield eventually(lambda: [i.state for i in ring.instances()] == ["ACTIVE"])
        self.assertEqual(len(ring.instances()[0].tokens), 16)
        self.etcd.kill()
        yield task.deferLater(reactor, 1.0, lambda: None)
        self.assertEqual([i.id for i in ring.get(12345).instances], ["host-1"])
        self.etcd.start()
        lc2 = RingLifecycler(self.client(), reactor, "collectors/ring", "host-2", "127.0.0.1:8081",
                             heartbeat_s=0.5, num_tokens=16)
        yield lc2.join()
        self.addCleanup(lambda: lc2._loop.running and lc2._loop.stop())
        yield eventually(lambda: [i.id for i in ring.instances()] == ["host-1", "host-2"])
        self.assertFalse(set(ring.instances()[0].tokens) & set(ring.instances()[1].tokens))

class EtcdClusterTests(TestCase):
    """Three etcd members; the client is given all of them."""
    timeout = 180

    @defer.inlineCallbacks
    def test_member_killed_under_a_client(self):
        """When the member a client talks to is SIGKILLed, reads, writes and its watch move to
        another member without losing a change."""
        if not have_etcd():
            raise SkipTest("etcd is not installed (Debian package etcd-server; `make debs`)")
        from tests.support.etcd import cluster
        members = cluster(mktemp(self).rsplit("/", 1)[0])
        for m in members:
            self.addCleanup(m.stop)
        kv = EtcdKV([m.endpoint for m in members], reactor, dial_timeout_s=1.0,
                    backoff_min_s=0.05, backoff_max_s=0.2)
        self.addCleanup(kv.close)
        seen = []
        w = kv.watch("ring", lambda k, v: seen.append(v["n"]))
        yield w.started
        yield kv.cas("ring", lambda v: {"n": 1})
        self.assertEqual(kv._current, 0, "the client talks to the first member")
        members[0].kill()
        for n in (2, 3):
            yield kv.cas("ring", lambda v, n=n: {"n": n})
        self.assertNotEqual(kv._current, 0)
        self.assertEqual((yield kv.get("ring")), {"n": 3})
        put(members[2], "ring", {"n": 4})
        yield eventually(lambda: len(seen) >= 4)
        self.assertEqual(seen, [1, 2, 3, 4])
        self.assertGreaterEqual(w.reconnects, 1)
