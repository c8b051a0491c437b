"""The querier's sharded store-gateway source on fake store-gateway clients: each block asked of
one owner, failed blocks retried on another replica, and "failed to fetch some blocks" only when
some block could be read nowhere."""
from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from tests.components.test_blockshard import members, ulids
from tests.net.test_ring import ring_of
from tests.support.threads import inline_offload
from tests.components.test_sources import POOLS
from urdar.components import errors as E
from urdar.components.blocksstore import BlocksStoreSource
from urdar.components.blockshard import BLOCKS_READ, live_owners
from urdar.engine.block import new_ulid
from urdar.engine.labels import encode_labels
from urdar.promql.selectors import SelectHints

BLOCKS = ulids(40)


def key_of(ulid):
    return encode_labels((("block", ulid),))


class FakeGateway:
    """Answers one series per block it is asked for (the series named after the block), or fails."""

    def __init__(self, addr, fail=None):
        self.addr = addr
        self.fail = fail
        self.asked: list[set] = []

    def select(self, tenant, matchers, hints, blocks):
        self.asked.append(set(blocks))
        if self.fail is not None:
            return defer.fail(E.ComponentError(self.fail, "%s is down" % self.addr))
        return defer.succeed([(key_of(u), None, None) for u in sorted(blocks, key=key_of)])

    def label_names(self, tenant, matchers, hints, blocks):
        self.asked.append(set(blocks))
        if self.fail is not None:
            return defer.fail(E.ComponentError(self.fail, "%s is down" % self.addr))
        return defer.succeed(sorted(blocks))


class BlocksStoreSourceTests(SynchronousTestCase):
    def setUp(self):
        self.ring = ring_of(members(3), rf=2)
        self.gws = {m.addr: FakeGateway(m.addr) for m in self.ring.instances()}

    def source(self, blocks=BLOCKS):
        return BlocksStoreSource(self.ring, lambda t, mint, maxt: defer.succeed(list(blocks)),
                                 self.gws.__getitem__, inline_offload(POOLS))

    def select(self, src):
        return src.select("t", (), SelectHints(0, 100, func="series"))

    def test_each_block_asked_once_of_an_owner(self):
        got = self.successResultOf(self.select(self.source()))
        self.assertEqual([k for k, _, _ in got], sorted(key_of(u) for u in BLOCKS))
        asked = [u for g in self.gws.values() for s in g.asked for u in s]
        self.assertEqual(sorted(asked), sorted(BLOCKS))
        for g in self.gws.values():
            self.assertLessEqual(len(g.asked), 1)     # one request per instance
            for u in (g.asked[0] if g.asked else ()):
                self.assertIn(g.addr, [i.addr for i in live_owners(self.ring, u, BLOCKS_READ)])

    def test_failed_instance_retried_on_another_replica(self):
        down = sorted(self.gws)[0]
        self.gws[down].fail = E.UNAVAILABLE
        got = self.successResultOf(self.select(self.source()))
        self.assertEqual([k for k, _, _ in got], sorted(key_of(u) for u in BLOCKS))
        self.assertTrue(self.gws[down].asked)          # it was asked, failed, and its blocks
        retried = [u for g in self.gws.values() if g.addr != down for s in g.asked[1:] for u in s]
        self.assertEqual(sorted(retried), sorted(self.gws[down].asked[0]))   # went elsewhere
        names = self.successResultOf(self.source().label_names("t", (), SelectHints(0, 100)))
        self.assertEqual(names, sorted(BLOCKS))

    def test_block_read_nowhere_fails_the_query(self):
        """RF=2 and both owners of some blocks down: Mimir's consistency error naming exactly
        the blocks owned by those two only."""
        a, b = sorted(self.gws)[:2]
        self.gws[a].fail = self.gws[b].fail = E.UNAVAILABLE
        lost = sorted(u for u in BLOCKS if {i.addr for i in live_owners(self.ring, u, BLOCKS_READ)} == {a, b})
        self.assertTrue(lost)
        f = self.failureResultOf(self.select(self.source()), E.ComponentError)
        self.assertEqual(f.value.cause, E.INTERNAL)
        self.assertEqual(f.value.message, "failed to fetch some blocks "
                         "(err-mimir-store-consistency-check-failed). The failed blocks are: "
                         + " ".join(lost))

    def test_no_blocks_no_requests(self):
        self.assertEqual(self.successResultOf(self.select(self.source(blocks=[]))), [])
        self.assertEqual([g.asked for g in self.gws.values()], [[], [], []])

    def test_shuffle_shard_asks_only_the_tenants_store_gateways(self):
        """-store-gateway.tenant-shard-size 2 of 5 (RF 1): every block of the tenant is asked
        of one of the two store-gateways of its shard, the other three are never asked."""
        self.ring = ring_of(members(5), rf=1)
        self.gws = {m.addr: FakeGateway(m.addr) for m in self.ring.instances()}
        src = BlocksStoreSource(self.ring, lambda t, mint, maxt: defer.succeed(list(BLOCKS)),
                                self.gws.__getitem__, inline_offload(POOLS),
                                shard_size=lambda tenant: 2 if tenant == "t" else 0)
        got = self.successResultOf(self.select(src))
        self.assertEqual([k for k, _, _ in got], sorted(key_of(u) for u in BLOCKS))
        shard = {i.addr for i in self.ring.shuffle_shard("t", 2).instances()}
        self.assertEqual(len(shard), 2)
        asked = {g.addr for g in self.gws.values() if g.asked}
        self.assertTrue(asked <= shard and asked, (asked, shard))

    def test_bad_request_is_not_retried(self):
        for g in self.gws.values():
            g.fail = E.BAD_DATA
        f = self.failureResultOf(self.select(self.source()), E.ComponentError)
        self.assertEqual(f.value.cause, E.BAD_DATA)
        self.assertTrue(all(len(g.asked) <= 1 for g in self.gws.values()))


class BucketBlockListerTests(SynchronousTestCase):
    """The querier's list of a tenant's blocks in a time range, from the bucket listing and the
    bucket index, without blocks long marked for deletion or half uploaded."""

    def setUp(self):
        from twisted.internet.task import Clock
        from tests.components import test_storegateway as sgt
        self.t = sgt.StoreGatewayTests("test_select_matches_local_blocks")
        self.t.setUp()
        self.addCleanup(self.t.doCleanups)
        self.clock = self.t.clock
        assert isinstance(self.clock, Clock)
        self.H = sgt.H

    def lister(self):
        from urdar.components.blocksstore import BucketBlockLister
        return BucketBlockLister(self.t.bucket, self.clock)

    def test_time_range_deletion_marks_and_partial_uploads(self):
        from urdar.storage.bucketindex import build_index, write_index
        from urdar.storage.markers import mark_for_deletion
        from urdar.storage.prefixed import for_tenant
        H = self.H
        a, b, c = self.t.add_blocks("t1", [(0, 2 * H), (2 * H, 4 * H), (4 * H, 6 * H)])
        lister = self.lister()
        self.assertEqual(self.successResultOf(lister("t1", 0, 6 * H)), [a, b, c])
        self.assertEqual(self.successResultOf(lister("t1", 2 * H, 3 * H)), [b])
        self.assertEqual(self.successResultOf(lister("t1", 2 * H - 1, 2 * H)), [a, b])
        self.assertEqual(self.successResultOf(lister("t2", 0, 6 * H)), [])
        tb = for_tenant(self.t.bucket, "t1")
        self.successResultOf(mark_for_deletion(tb, b, self.clock))
        self.assertEqual(self.successResultOf(lister("t1", 0, 6 * H)), [a, b, c])   # still served
        self.clock.advance(3601)
        self.assertEqual(self.successResultOf(lister("t1", 0, 6 * H)), [a, c])
        # A block without meta.json is a partial upload: not listed.
        self.successResultOf(tb.put(new_ulid(7) + "/index", b"x"))
        self.assertEqual(self.successResultOf(lister("t1", 0, 6 * H)), [a, c])
        # With a bucket index the marks come from it, and the listing adds newer blocks.
        idx = self.successResultOf(build_index(tb, self.clock))
        self.successResultOf(write_index(tb, idx))
        (d,) = self.t.add_blocks("t1", [(6 * H, 8 * H)], seed=9)
        self.assertEqual(self.successResultOf(self.lister()("t1", 0, 8 * H)), [a, c, d])

    def test_one_read_per_refresh_interval(self):
        """Every selector of every query asks for the tenant's blocks: the bucket is listed once
        per refresh interval, concurrent asks included, and blocks shipped since show up after it."""
        from urdar.components.blocksstore import BucketBlockLister
        H = self.H
        (a,) = self.t.add_blocks("t1", [(0, 2 * H)])
        lists = []
        bucket = self.t.bucket
        real = bucket.list

        def counting(prefix, *args, **kw):
            lists.append(prefix)
            return real(prefix, *args, **kw)
        bucket.list = counting
        lister = BucketBlockLister(bucket, self.clock, refresh_s=30)
        first = [lister("t1", 0, 2 * H) for _ in range(3)]
        self.assertEqual([self.successResultOf(d) for d in first], [[a]] * 3)
        n = len(lists)
        (b,) = self.t.add_blocks("t1", [(2 * H, 4 * H)], seed=5)
        self.assertEqual(self.successResultOf(lister("t1", 0, 4 * H)), [a])
        self.assertEqual(len(lists), n)
        self.clock.advance(31)
        self.assertEqual(self.successResultOf(lister("t1", 0, 4 * H)), [a, b])
        self.assertGreater(len(lists), n)
