"""Blocks sharded over the store-gateway ring: every block has RF distinct owners, joining and
leaving instances follow Mimir's rules, and store-gateways sharing a bucket split its blocks."""
import os
import random

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.components import test_storegateway as sgt
from urdar.components.querier import merge_series
from urdar.components.storegateway import StoreGateway, StoreGatewayConfig
from tests.net.test_ring import member, ring_of
from urdar.components.blockshard import (BLOCKS_OWNER_SYNC, BlockOwnership, hash_block_id,
                                         live_owners)
from urdar.engine.block import new_ulid
from urdar.net.ring import ACTIVE, JOINING, LEAVING, generate_tokens


def members(n, states=None, ts=1000, seed=7):
    rng = random.Random(seed)
    taken = set()
    out = {}
    for k in range(n):
        toks = generate_tokens(512, taken, rng)
        taken.update(toks)
        out["sg-%d" % k] = member("10.0.0.%d:8080" % k, state=(states or {}).get(k, ACTIVE),
                                  tokens=toks, ts=ts)
    return out


def ulids(n, seed=3):
    rng = random.Random(seed)
    return [new_ulid(1_700_000_000_000 + k * 7200_000, rng.getrandbits(80)) for k in range(n)]


class OwnershipTests(SynchronousTestCase):
    def test_hash_is_fnv1a_of_the_ulid_bytes(self):
        """The key depends on all 16 bytes: ULIDs differing in the last bit hash differently,
        and the all-zero ULID gives FNV-1a-32 of 16 zero bytes."""
        h = 0x811C9DC5
        for _ in range(16):
            h = (h * 0x01000193) & 0xFFFFFFFF
        self.assertEqual(hash_block_id("0" * 26), h)
        self.assertNotEqual(hash_block_id("0" * 25 + "1"), hash_block_id("0" * 26))

    def test_every_block_owned_by_rf_distinct_instances(self):
        ring = ring_of(members(5), rf=3)
        owners = [BlockOwnership(ring, "sg-%d" % k) for k in range(5)]
        counts = dict.fromkeys(range(5), 0)
        for u in ulids(300):
            who = [k for k, o in enumerate(owners) if o.owns(u)]
            self.assertEqual(len(who), 3, u)
            self.assertEqual(sorted(i.id for i in live_owners(ring, u, BLOCKS_OWNER_SYNC)),
                             ["sg-%d" % k for k in who])
            for k in who:
                counts[k] += 1
        # 900 replicas over 5 instances with 512 tokens each: none is starved or hoarding.
        self.assertTrue(all(100 < c < 260 for c in counts.values()), counts)

    def test_shuffle_shard_keeps_a_tenants_blocks_on_its_store_gateways(self):
        """Shard size 2 of 5, RF 1: each block of tenant t has exactly one owner, always one of
        the two of t's shard; another tenant without a shard size spreads over all five."""
        ring = ring_of(members(5), rf=1)
        size = {"t": 2}.get
        owners = [BlockOwnership(ring, "sg-%d" % k, lambda tenant: size(tenant, 0))
                  for k in range(5)]
        shard = {i.id for i in ring.shuffle_shard("t", 2).instances()}
        for tenant, allowed in (("t", shard), ("u", {"sg-%d" % k for k in range(5)})):
            used = set()
            for u in ulids(200):
                who = ["sg-%d" % k for k, o in enumerate(owners) if o.owns(u, False, tenant)]
                self.assertEqual(len(who), 1, u)
                used.update(who)
            self.assertEqual(used, allowed, tenant)

    def test_one_instance_owns_everything(self):
        """-target=all: one store-gateway in the ring with RF 3 keeps every block."""
        ring = ring_of(members(1), rf=3)
        self.assertTrue(all(BlockOwnership(ring, "sg-0").owns(u) for u in ulids(50)))

    def test_not_yet_in_ring_owns_everything(self):
        ring = ring_of(members(3), rf=1)
        self.assertTrue(all(BlockOwnership(ring, "sg-new").owns(u) for u in ulids(50)))

    def test_joining_instance_loads_its_blocks(self):
        """A JOINING (or LEAVING) owner loads its blocks; with RF=1 the blocks of a JOINING
        instance are owned by it alone."""
        for state in (JOINING, LEAVING):
            ring = ring_of(members(3, states={1: state}), rf=1)
            o = [BlockOwnership(ring, "sg-%d" % k) for k in range(3)]
            mine = [u for u in ulids(100) if o[1].owns(u)]
            self.assertTrue(mine)
            self.assertFalse(any(o[0].owns(u) or o[2].owns(u) for u in mine))

    def test_loaded_block_kept_until_an_active_owner_serves_it(self):
        """sg-0 has loaded a block now owned by a JOINING instance only: it keeps it; once that
        owner is ACTIVE, sg-0 unloads it."""
        ms = members(2, states={1: JOINING})
        ring = ring_of(ms, rf=1)
        o0 = BlockOwnership(ring, "sg-0")
        theirs = [u for u in ulids(100) if not o0.owns(u)]
        self.assertTrue(theirs)
        self.assertTrue(all(o0.owns(u, loaded=True) for u in theirs))
        ms["sg-1"]["state"] = ACTIVE
        ring.set_desc({"ingesters": ms})
        self.assertFalse(any(o0.owns(u, loaded=True) for u in theirs))

    def test_unhealthy_owner_is_skipped(self):
        """An owner whose heartbeat is past the timeout does not count: the block is loaded by
        no one else with RF=1, but a loaded copy stays where it is."""
        clock = Clock()
        clock.advance(2000)
        ms = members(2, ts=2000)
        ms["sg-1"]["timestamp"] = 100          # stale
        ring = ring_of(ms, clock=clock, rf=1, timeout_s=60)
        o0 = BlockOwnership(ring, "sg-0")
        theirs = [u for u in ulids(100) if ring.replicas(hash_block_id(u))[0].id == "sg-1"]
        self.assertTrue(theirs)
        self.assertFalse(any(o0.owns(u) for u in theirs))
        self.assertTrue(all(o0.owns(u, loaded=True) for u in theirs))


class ShardedStoreGatewayTests(SynchronousTestCase):
    """Two store-gateways over one bucket, RF=1: each loads only its blocks, together all; with
    RF=2 each loads every block. Queries of each answer from its own blocks."""

    make_bucket = None
    setUp = sgt.StoreGatewayTests.setUp
    add_blocks = sgt.StoreGatewayTests.add_blocks
    expected = sgt.StoreGatewayTests.expected
    plain = staticmethod(sgt.StoreGatewayTests.plain)

    def sharded(self, rf):
        ring = ring_of(members(2), clock=self.clock, rf=rf, timeout_s=0)
        out = []
        for k in range(2):
            sg = StoreGateway(self.bucket, os.path.join(self.tmp, "sync-%d" % k), self.clock,
                              StoreGatewayConfig(sync_interval_ms=0),
                              owns=BlockOwnership(ring, "sg-%d" % k).owns)
            self.successResultOf(sg.start())
            self.addCleanup(sg.stop)
            out.append(sg)
        return out

    def test_rf1_splits_blocks(self):
        made = set(self.add_blocks("t1", [(k * 2 * sgt.H, (k + 1) * 2 * sgt.H) for k in range(12)]))
        a, b = self.sharded(1)
        ga, gb = {x.ulid for x in a.blocks("t1")}, {x.ulid for x in b.blocks("t1")}
        self.assertEqual(ga | gb, made)
        self.assertFalse(ga & gb)
        self.assertTrue(ga and gb)
        # Each answers from its own blocks; together they answer what the bucket holds.
        m = sgt.MATCHER_SETS[0]
        parts = [self.successResultOf(g.select("t1", m, 0, 24 * sgt.H)) for g in (a, b)]
        self.assertTrue(parts[0] and parts[1])
        self.assertEqual(self.plain(merge_series(parts, True)),
                         self.plain(self.expected("t1", m, 0, 24 * sgt.H)))

    def test_rf2_replicates_blocks(self):
        made = set(self.add_blocks("t1", [(k * 2 * sgt.H, (k + 1) * 2 * sgt.H) for k in range(6)]))
        a, b = self.sharded(2)
        self.assertEqual({x.ulid for x in a.blocks("t1")}, made)
        self.assertEqual({x.ulid for x in b.blocks("t1")}, made)
