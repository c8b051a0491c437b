"""The in-memory KV store and ring membership: versions, copies, heartbeats on a Clock, leaving."""
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from urdar.net.kv import MemoryKV
from urdar.net.ring import RingLifecycler


class MemoryKVTests(SynchronousTestCase):
    def test_cas_versions_and_copies(self):
        """Each change bumps the version; values handed out are copies callers cannot corrupt."""
        clock = Clock()
        kv = MemoryKV(clock)
        self.assertEqual(kv.cas("k", lambda v: {"a": [1]}), 1)
        got = kv.get("k")
        got["a"].append(2)
        self.assertEqual(kv.get("k"), {"a": [1]})
        clock.advance(5)
        self.assertEqual(kv.cas("k", lambda v: dict(v, b=2)), 2)
        self.assertEqual(kv.entry("k"), ({"a": [1], "b": 2}, 2, 5))
        self.assertEqual(kv.cas("k", lambda v: None), 2, "None from fn means no change")
        seen = []
        kv.watch("k", lambda key, v: seen.append((key, v)))
        kv.cas("k", lambda v: {"c": 3})
        self.assertEqual(seen, [("k", {"c": 3})])
        self.assertEqual(kv.keys(), ["k"])
        self.assertTrue(kv.delete("k"))
        self.assertIsNone(kv.get("k"))


class RingLifecyclerTests(SynchronousTestCase):
    def test_join_heartbeat_activate_leave(self):
        """A member registers JOINING, heartbeats every period, turns ACTIVE, and is removed on leave."""
        clock = Clock()
        clock.advance(1000)
        kv = MemoryKV(clock)
        lc = RingLifecycler(kv, clock, "collectors/ring", "host-1", "10.0.0.1:8080", heartbeat_s=15)
        lc.join()
        me = kv.get("collectors/ring")["ingesters"]["host-1"]
        self.assertEqual((me["state"], me["addr"], me["timestamp"], me["registered_timestamp"]),
                         ("JOINING", "10.0.0.1:8080", 1000, 1000))
        lc.set_state("ACTIVE")
        clock.advance(15)
        me = kv.get("collectors/ring")["ingesters"]["host-1"]
        self.assertEqual((me["state"], me["timestamp"], me["registered_timestamp"]), ("ACTIVE", 1015, 1000))
        clock.advance(15)
        self.assertEqual(kv.get("collectors/ring")["ingesters"]["host-1"]["timestamp"], 1030)
        self.assertEqual(lc.last_heartbeat_s, 1030)
        lc.leave()
        self.assertEqual(kv.get("collectors/ring"), {"ingesters": {}})
        self.assertFalse(clock.getDelayedCalls(), "no heartbeats after leaving")


class FailingKV(MemoryKV):
    """A MemoryKV whose writes fail like an unreachable etcd while `down` is set."""
    down = False

    def cas(self, key, fn):
        if self.down:
            from twisted.internet import defer
            return defer.fail(ConnectionRefusedError("etcd is down"))
        return super().cas(key, fn)


class RingOverAsyncKVTests(SynchronousTestCase):
    def test_failed_heartbeats_do_not_stop_heartbeating(self):
        """While the KV store refuses writes, heartbeats fail quietly and keep coming; the first
        one after it recovers updates the entry."""
        clock = Clock()
        kv = FailingKV(clock)
        lc = RingLifecycler(kv, clock, "collectors/ring", "host-1", "10.0.0.1:8080", heartbeat_s=15)
        lc.join()
        kv.down = True
        clock.advance(15)
        clock.advance(15)
        self.assertEqual(lc.last_heartbeat_s, 0, "a failed write is not a heartbeat")
        self.assertEqual(len(self.flushLoggedErrors()), 0)
        kv.down = False
        clock.advance(15)
        self.assertEqual(lc.last_heartbeat_s, 45)
        self.assertEqual(kv.get("collectors/ring")["ingesters"]["host-1"]["timestamp"], 45)
        lc.leave()
        self.assertEqual(kv.get("collectors/ring"), {"ingesters": {}})
