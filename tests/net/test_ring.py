"""Rings with tokens: the lifecycler's tokens, states and heartbeats, the tokens file, and the
reader's replication sets, health, shuffle shards and token distribution, on a fake clock."""
import json
import random

from hypothesis import given, settings, strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.support.tmp import mktemp
from urdar.net.kv import MemoryKV
from urdar.net.ring import (ACTIVE, JOINING, LEAVING, READ, REPORTING, TOKEN_SPACE, WRITE, Ring,
                            RingError, RingLifecycler, forget, generate_tokens, load_tokens,
                            ownership, quorum)

KEY = "collectors/ring"


def member(addr, state=ACTIVE, tokens=(), zone="", ts=1000):
    return {"addr": addr, "state": state, "tokens": sorted(tokens), "zone": zone, "timestamp": ts,
            "registered_timestamp": ts}


def ring_of(members, clock=None, rf=3, zone_awareness=False, timeout_s=60):
    clock = clock or Clock()
    if clock.seconds() == 0:
        clock.advance(1000)
    r = Ring(MemoryKV(clock), KEY, clock, replication_factor=rf, heartbeat_timeout_s=timeout_s,
             zone_awareness=zone_awareness)
    r.set_desc({"ingesters": members})
    return r


def random_ring(seed, n, tokens_each=128, zones=0, **kw):
    rng = random.Random(seed)
    taken = set()
    members = {}
    for k in range(n):
        toks = generate_tokens(tokens_each, taken, rng)
        taken.update(toks)
        members["ing-%d" % k] = member("10.0.0.%d:8080" % k, tokens=toks,
                                       zone=("zone-%d" % (k % zones)) if zones else "")
    return ring_of(members, **kw), members


def clockwise_oracle(members, key, rf):
    """The first rf distinct owners walking tokens clockwise from key (every member healthy)."""
    owners = sorted((t, iid) for iid, m in members.items() for t in m["tokens"])
    start = next((k for k, (t, _) in enumerate(owners) if t > key), 0)
    out = []
    for k in range(len(owners)):
        iid = owners[(start + k) % len(owners)][1]
        if iid not in out:
            out.append(iid)
        if len(out) == rf:
            break
    return out


class LifecyclerTokenTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)
        self.kv = MemoryKV(self.clock)

    def lc(self, iid, **kw):
        return RingLifecycler(self.kv, self.clock, KEY, iid, iid + ":8080", heartbeat_s=15,
                              rng=random.Random(iid), **kw)

    def test_joins_with_distinct_tokens_not_held_by_others(self):
        """Each instance registers with num-tokens tokens, none shared with another instance."""
        a, b = self.lc("a", num_tokens=128), self.lc("b", num_tokens=64)
        a.join()
        b.join()
        desc = self.kv.get(KEY)["ingesters"]
        self.assertEqual((len(desc["a"]["tokens"]), len(desc["b"]["tokens"])), (128, 64))
        self.assertEqual(desc["a"]["tokens"], sorted(set(desc["a"]["tokens"])))
        self.assertFalse(set(desc["a"]["tokens"]) & set(desc["b"]["tokens"]))
        self.assertEqual(desc["a"]["state"], JOINING)
        self.assertTrue(all(0 <= t < TOKEN_SPACE for t in desc["a"]["tokens"]))

    def test_generated_tokens_avoid_taken_ones(self):
        """Generated tokens never repeat a taken token, even when the generator keeps proposing them."""
        rng = random.Random(1)
        taken = {random.Random(1).getrandbits(32) for _ in range(2000)}   # its own next draws
        toks = generate_tokens(500, taken, rng)
        self.assertEqual(len(set(toks)), 500)
        self.assertFalse(set(toks) & taken)

    def test_tokens_file_keeps_tokens_across_restarts(self):
        """With -ingester.ring.tokens-file-path an instance that restarts (and unregistered on
        shutdown) comes back with the same tokens."""
        path = mktemp(self) + "-tokens"
        first = self.lc("a", tokens_file_path=path)
        first.join()
        tokens = self.kv.get(KEY)["ingesters"]["a"]["tokens"]
        self.assertEqual(json.load(open(path)), {"tokens": tokens})
        self.successResultOf(first.leave())
        self.assertNotIn("a", self.kv.get(KEY)["ingesters"])
        again = RingLifecycler(self.kv, self.clock, KEY, "a", "a:8080", tokens_file_path=path,
                               rng=random.Random(99))
        again.join()
        self.assertEqual(self.kv.get(KEY)["ingesters"]["a"]["tokens"], tokens)
        self.assertEqual(load_tokens(path), tokens)

    def test_bad_tokens_file_is_refused(self):
        """A tokens file that does not hold {"tokens": [...]} stops the join with its path named."""
        path = mktemp(self) + "-tokens"
        with open(path, "w") as f:
            f.write('{"tokens": ["x"]}')
        err = self.assertRaises(ValueError, self.lc("a", tokens_file_path=path).join)
        self.assertIn(path, str(err))

    def test_restart_without_unregistering_keeps_ring_tokens(self):
        """With -ingester.ring.unregister-on-shutdown=false the entry stays LEAVING and a restart
        with the same id takes its tokens back from the ring."""
        first = self.lc("a", unregister_on_shutdown=False)
        first.join()
        first.set_state(ACTIVE)
        tokens = self.kv.get(KEY)["ingesters"]["a"]["tokens"]
        self.successResultOf(first.leave())
        self.assertEqual(self.kv.get(KEY)["ingesters"]["a"]["state"], LEAVING)
        self.clock.advance(100)
        again = RingLifecycler(self.kv, self.clock, KEY, "a", "a:8080", rng=random.Random(5))
        again.join()
        me = self.kv.get(KEY)["ingesters"]["a"]
        self.assertEqual((me["tokens"], me["state"], me["timestamp"]), (tokens, JOINING, 1100))

    def test_forgotten_instance_registers_again_on_its_heartbeat(self):
        """Forgetting a live instance removes it until its next heartbeat re-adds it, same tokens."""
        a = self.lc("a")
        a.join()
        a.set_state(ACTIVE)
        tokens = list(a.tokens)
        self.assertTrue(self.successResultOf(forget(self.kv, KEY, "a")))
        self.assertFalse(self.successResultOf(forget(self.kv, KEY, "a")), "already gone")
        self.assertNotIn("a", self.kv.get(KEY)["ingesters"])
        self.clock.advance(15)
        me = self.kv.get(KEY)["ingesters"]["a"]
        self.assertEqual((me["tokens"], me["state"]), (tokens, ACTIVE))


    def test_racing_writes_keep_the_newest_state(self):
        """When the JOINING write lands after the ACTIVE one (etcd answers out of order), the
        entry still ends ACTIVE."""
        from twisted.internet import defer

        class LateKV(MemoryKV):
            queued = []

            def cas(self, key, fn):
                d = defer.Deferred()
                self.queued.append((d, key, fn))
                return d

            def land_newest_first(self):
                while self.queued:
                    d, key, fn = self.queued.pop()
                    d.callback(MemoryKV.cas(self, key, fn))
        kv = LateKV(self.clock)
        lc = RingLifecycler(kv, self.clock, KEY, "a", "a:1", rng=random.Random(1))
        lc.join()
        lc.set_state(ACTIVE)
        kv.land_newest_first()
        self.assertEqual(kv.get(KEY)["ingesters"]["a"]["state"], ACTIVE)

class ReplicationSetTests(SynchronousTestCase):
    def test_all_healthy_is_rf_distinct_clockwise(self):
        """With every instance healthy a key's set is the first RF distinct owners clockwise,
        and 1 of 3 may fail (quorum 2)."""
        r, members = random_ring(3, 6, tokens_each=16)
        for key in (0, 1, 12345, TOKEN_SPACE - 1, 2 ** 31):
            rs = r.get(key, WRITE)
            self.assertEqual([i.id for i in rs.instances], clockwise_oracle(members, key, 3))
            self.assertEqual((rs.max_errors, rs.quorum), (1, 2))
        self.assertEqual((quorum(3), quorum(5), quorum(1)), (2, 3, 1))

    def test_joining_and_leaving_instances_extend_writes(self):
        """A write skips a JOINING or LEAVING owner and extends the set to the next instance,
        so the key still has RF ACTIVE replicas; reads may use the LEAVING one."""
        members = {"a": member("a:1", tokens=[100]), "b": member("b:1", JOINING, [200]),
                   "c": member("c:1", LEAVING, [300]), "d": member("d:1", tokens=[400]),
                   "e": member("e:1", tokens=[500])}
        r = ring_of(members)
        rs = r.get(50, WRITE)
        self.assertEqual([i.id for i in rs.instances], ["a", "d", "e"])
        self.assertEqual(rs.max_errors, 0, "RF grows to 5 with the two skipped: quorum 3")
        rs = r.get(50, READ)
        self.assertEqual([i.id for i in rs.instances], ["a", "c", "d"])

    def test_unhealthy_instance_is_dropped_not_replaced(self):
        """An ACTIVE instance whose heartbeat is older than the timeout is left out of the set
        (no extension, as dskit); with too few live replicas the lookup fails."""
        clock = Clock()
        clock.advance(1000)
        members = {"a": member("a:1", tokens=[100]), "b": member("b:1", tokens=[200]),
                   "c": member("c:1", tokens=[300], ts=900), "d": member("d:1", tokens=[400])}
        r = ring_of(members, clock=clock, timeout_s=60)
        rs = r.get(150, WRITE)
        self.assertEqual(([i.id for i in rs.instances], rs.max_errors), (["b", "d"], 0))
        rs = r.get(250, WRITE)
        self.assertEqual([i.id for i in rs.instances], ["d", "a"])
        clock.advance(61)       # now b's and the others' heartbeats are stale too
        err = self.assertRaises(RingError, r.get, 150, WRITE)
        self.assertIn("at least 2 live replicas required, could only find 0", str(err))
        self.assertRaises(RingError, ring_of({}).get, 1)

    def test_first_healthy_owner(self):
        """first_healthy: the first instance clockwise from the key healthy for the operation;
        past an owner whose heartbeat is too old or whose state does not suit; None when none
        is healthy (the ruler ring's single owner per group)."""
        clock = Clock()
        clock.advance(1000)
        members = {"a": member("a:1", tokens=[100, 500]), "b": member("b:1", tokens=[200]),
                   "c": member("c:1", tokens=[300], ts=900),
                   "d": member("d:1", state=LEAVING, tokens=[400])}
        r = ring_of(members, clock=clock, timeout_s=60)
        self.assertEqual(r.first_healthy(150, WRITE).id, "b")
        self.assertEqual(r.first_healthy(250, WRITE).id, "a")      # c stale, d LEAVING
        self.assertEqual(r.first_healthy(250, READ).id, "d")       # reads take LEAVING
        self.assertEqual(r.first_healthy(600, WRITE).id, "a")      # wraps around
        clock.advance(200)
        self.assertIsNone(r.first_healthy(150, WRITE))
        self.assertIsNone(ring_of({}).first_healthy(1))

    def test_zone_awareness_one_replica_per_zone(self):
        """With zone awareness each key's replicas are in distinct zones."""
        r, members = random_ring(11, 9, tokens_each=32, zones=3, zone_awareness=True)
        for key in random.Random(2).sample(range(TOKEN_SPACE), 200):
            zones = [i.zone for i in r.get(key).instances]
            self.assertEqual(sorted(zones), ["zone-0", "zone-1", "zone-2"])

    def test_health_follows_heartbeats_on_the_clock(self):
        """A member stops being healthy once its heartbeat is older than the timeout and is
        healthy again after the next heartbeat arrives."""
        clock = Clock()
        clock.advance(1000)
        kv = MemoryKV(clock)
        r = Ring(kv, KEY, clock, heartbeat_timeout_s=60)
        r.start()
        lc = RingLifecycler(kv, clock, KEY, "a", "a:1", heartbeat_s=15, num_tokens=4)
        lc.join()
        self.assertEqual([i.id for i in r.healthy_instances()], ["a"])
        self.assertEqual(r.healthy_instances(WRITE), [], "JOINING takes no writes")
        lc.set_state(ACTIVE)
        self.assertEqual([i.id for i in r.healthy_instances(WRITE)], ["a"])
        lc._loop.stop()         # the process hangs: no more heartbeats
        clock.advance(60)
        self.assertEqual(len(r.healthy_instances()), 1, "exactly the timeout is still healthy")
        clock.advance(1)
        self.assertEqual(r.healthy_instances(REPORTING), [])
        lc.heartbeat()
        self.assertEqual([i.id for i in r.healthy_instances()], ["a"])
        r.stop()
        lc.set_state(LEAVING)
        self.assertEqual(r.instances()[0].state, ACTIVE, "a stopped ring no longer follows the KV")


class ShuffleShardTests(SynchronousTestCase):
    def test_shard_is_deterministic_and_sized(self):
        """A tenant's shard has `size` instances and is the same on every reader of the ring."""
        r1, members = random_ring(5, 10)
        r2 = ring_of(members)
        s1 = r1.shuffle_shard("tenant-a", 3)
        self.assertEqual(s1.instance_count(), 3)
        self.assertEqual([i.id for i in s1.instances()], [i.id for i in r2.shuffle_shard("tenant-a", 3).instances()])
        self.assertIs(r1.shuffle_shard("tenant-a", 3), s1, "cached until the ring changes")
        shards = {tuple(i.id for i in r1.shuffle_shard("t%d" % k, 3).instances()) for k in range(20)}
        self.assertGreater(len(shards), 5, "tenants are spread over different shards")
        self.assertIs(r1.shuffle_shard("tenant-a", 0), r1)
        self.assertIs(r1.shuffle_shard("tenant-a", 10), r1)
        rs = s1.get(12345)
        self.assertTrue({i.id for i in rs.instances} <= {i.id for i in s1.instances()})

    def test_zone_aware_shard_takes_equal_share_per_zone(self):
        """With zone awareness a shard of 6 over 3 zones has 2 instances in each zone."""
        r, _ = random_ring(7, 12, tokens_each=32, zones=3, zone_awareness=True)
        shard = r.shuffle_shard("tenant-a", 6)
        zones = sorted(i.zone for i in shard.instances())
        self.assertEqual(zones, ["zone-0"] * 2 + ["zone-1"] * 2 + ["zone-2"] * 2)


class RingPropertyTests(SynchronousTestCase):
    @settings(max_examples=30, deadline=None)
    @given(seed=st.integers(0, 2 ** 32), n=st.integers(3, 12))
    def test_random_tokens_spread_ownership_evenly(self, seed, n):
        """With 128 random tokens each, every instance owns close to 1/n of the token space."""
        r, _ = random_ring(seed, n)
        owned = r.ownership()
        self.assertAlmostEqual(sum(owned.values()), 1.0, places=9)
        p = 1.0 / n
        sigma = (p * (1 - p) / (128 * n + 1)) ** 0.5     # a share of n*128 random arcs: Beta
        for share in owned.values():
            self.assertLess(abs(share - p), 6 * sigma)

    @settings(max_examples=30, deadline=None)
    @given(seed=st.integers(0, 2 ** 32), n=st.integers(2, 8), keys=st.lists(
        st.integers(0, TOKEN_SPACE - 1), min_size=1, max_size=20))
    def test_get_is_deterministic_and_distinct(self, seed, n, keys):
        """Two readers of one descriptor give every key the same set of min(RF, n) distinct
        instances, which is the clockwise walk from the key (one instance is below RF=3's quorum)."""
        r1, members = random_ring(seed, n, tokens_each=8)
        r2 = ring_of(members)
        for key in keys:
            a = [i.id for i in r1.get(key).instances]
            self.assertEqual(a, [i.id for i in r2.get(key).instances])
            self.assertEqual(len(set(a)), min(3, n))
            self.assertEqual(a, clockwise_oracle(members, key, 3))

    @settings(max_examples=20, deadline=None)
    @given(seed=st.integers(0, 2 ** 32), tenant=st.text(max_size=20), size=st.integers(1, 9))
    def test_shuffle_shard_deterministic(self, seed, tenant, size):
        """Any tenant's shard of any size is the same from two readers and has min(size, n) members."""
        r1, members = random_ring(seed, 9, tokens_each=16)
        r2 = ring_of(members)
        a = [i.id for i in r1.shuffle_shard(tenant, size).instances()]
        self.assertEqual(a, [i.id for i in r2.shuffle_shard(tenant, size).instances()])
        self.assertEqual(len(a), min(size, 9))

    def test_ownership_of_explicit_tokens(self):
        """A token owns the range since the previous token, the first also the wrap-around."""
        from urdar.net.ring import parse_desc
        got = ownership(parse_desc({"ingesters": {"a": member("a", tokens=[TOKEN_SPACE // 4]),
                                                  "b": member("b", tokens=[TOKEN_SPACE // 2])}}).values())
        self.assertEqual(got, {"a": 0.75, "b": 0.25})
