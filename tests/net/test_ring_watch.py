"""The ruler's and the alertmanager's ring watchers (net/ring.RingWatcher) re-shard on the KV
store's watch, not on their poll: over a real etcd, and over the in-memory KV on a fake clock,
an instance joining or leaving reaches `on_change` before any poll could have run (the poll
period is an hour, and the fake clock never moves)."""
from twisted.internet import defer, reactor, task
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.net.test_etcd import start_etcd
from urdar.components.amshard import AlertmanagerSharding
from urdar.components.rulershard import RulerSharding
from urdar.net.etcd import EtcdKV
from urdar.net.kv import MemoryKV
from urdar.net.ring import ACTIVE, Ring, RingLifecycler

HOUR = 3600.0
GROUPS = [("t", "ns", "g%d" % i) for i in range(40)]
TENANTS = ["tenant-%d" % i for i in range(40)]


def member(kv, clock, key, name):
    return RingLifecycler(kv, clock, key, name, "%s:80" % name, heartbeat_s=HOUR, num_tokens=64)


class Changes:
    """on_change calls, each recorded with what the watcher owns at that moment; next() is a
    Deferred of the next call."""

    def __init__(self, owned):
        self.owned = owned
        self.seen = []
        self.waiting = []

    def __call__(self):
        self.seen.append(self.owned())
        waiting, self.waiting = self.waiting, []
        for d in waiting:
            d.callback(self.seen[-1])

    def next(self):
        d = defer.Deferred()
        self.waiting.append(d)
        return d


class EtcdRingWatchTests(TestCase):
    timeout = 120

    def setUp(self):
        self.etcd = start_etcd(self)
        self.addCleanup(self.etcd.stop)
        self.kv = EtcdKV([self.etcd.endpoint], reactor, dial_timeout_s=5)
        self.addCleanup(self.kv.close)

    def watcher(self, kind, key):
        ring = Ring(self.kv, key, reactor, replication_factor=1, heartbeat_timeout_s=HOUR)
        ring.start()
        self.addCleanup(ring.stop)
        if kind == "ruler":
            w = RulerSharding(ring, "a", reactor, check_period_s=HOUR)
            owned = lambda: sorted(g for g in GROUPS if w.owns(*g))
        else:
            w = AlertmanagerSharding(ring, "a", reactor, check_period_s=HOUR)
            owned = lambda: sorted(t for t in TENANTS if w.owns(t))
        w.on_change = Changes(owned)
        w.start()
        self.addCleanup(w.stop)
        return w

    @defer.inlineCallbacks
    def check(self, kind, key, everything):
        w = self.watcher(kind, key)
        a, b = member(self.kv, reactor, key, "a"), member(self.kv, reactor, key, "b")
        self.addCleanup(lambda: a._loop.stop() if a._loop and a._loop.running else None)
        self.addCleanup(lambda: b._loop.stop() if b._loop and b._loop.running else None)

        change = w.on_change.next()
        yield a.join()
        yield a.set_state(ACTIVE)
        self.assertEqual((yield change), everything)          # "a" alone owns everything
        change = w.on_change.next()
        yield b.join()
        yield b.set_state(ACTIVE)
        shared = yield change
        self.assertTrue(0 < len(shared) < len(everything), shared)   # "b" took its share
        change = w.on_change.next()
        yield b.leave()
        self.assertEqual((yield change), everything)          # and gave it back on leaving
        self.assertEqual(w.on_change.seen[-3:], [everything, shared, everything])

    def test_ruler_reshards_on_the_etcd_watch(self):
        return self.check("ruler", "ruler/ring", sorted(GROUPS))

    def test_alertmanager_reshards_on_the_etcd_watch(self):
        return self.check("alertmanager", "alertmanager/ring", sorted(TENANTS))


class MemoryRingWatchTests(SynchronousTestCase):
    def test_reshards_without_the_clock_moving(self):
        clock = task.Clock()
        kv = MemoryKV(clock)
        ring = Ring(kv, "r", clock, replication_factor=1, heartbeat_timeout_s=HOUR)
        ring.start()
        w = RulerSharding(ring, "a", clock, check_period_s=HOUR)
        w.on_change = Changes(lambda: sorted(g for g in GROUPS if w.owns(*g)))
        w.start()
        a, b = member(kv, clock, "r", "a"), member(kv, clock, "r", "b")
        a.join()
        a.set_state(ACTIVE)
        b.join()
        b.set_state(ACTIVE)
        self.assertEqual(len(w.on_change.seen), 2)
        self.assertEqual(w.on_change.seen[0], sorted(GROUPS))
        self.assertTrue(0 < len(w.on_change.seen[1]) < len(GROUPS))
        # Stopped: no more calls, whatever the ring does.
        w.stop()
        b.leave()
        self.assertEqual(len(w.on_change.seen), 2)
