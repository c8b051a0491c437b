"""Replicated writes and fanned-out reads over the ingester ring (components/replication.py) on
fake ingester clients: which ingesters each series goes to, when a push answers (quorum), how
ingester failures map to the pusher's error, and how replicated reads are merged."""
from array import array

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.components.test_sources import write_batch
from tests.net.test_ring import member, random_ring, ring_of
from tests.support.threads import inline_offload
from urdar.components import errors as E
from urdar.components import ingester_client as IC
from urdar.components import ingester_remote as R
from urdar.components.replication import (RingIngesterClient, key_hash, tenant_seed, write_plan)
from urdar.engine import outcomes as O
from urdar.engine.labels import decode_labels, encode_labels
from urdar.engine.matchers import Matcher
from urdar.net.ring import LEAVING, WRITE, RingError, generate_tokens
from urdar.promql.selectors import SelectHints

POOLS = (("decode", 1, 100), ("query", 1, 100))


class FakeIngester:
    """Records decoded pushes; answers at once (`mode` "ok", a ComponentError) or, with
    mode "hold", when the test fires the Deferreds in `held`."""

    def __init__(self, addr):
        self.addr = addr
        self.mode = "ok"
        self.pushed = []
        self.held = []
        self.series = []        # select answer
        self.num_series = 0

    def push_encoded(self, body, tenant):
        batch = R.decode_push(body, 1 << 30)
        self.pushed.append((tenant, batch))
        # histograms: OK, but OUT_OF_ORDER at odd timestamps (the same on every replica)
        hout = bytearray(O.OUT_OF_ORDER if t % 2 else O.OK for _, t, _ in batch.histograms)
        res = IC.PushResult(len(batch.ts) + hout.count(O.OK), 0, bytearray(len(batch.ts)), 0, hout)
        if self.mode == "hold":
            d = defer.Deferred()
            self.held.append((d, res))
            return d
        if isinstance(self.mode, Exception):
            return defer.fail(self.mode)
        return defer.succeed(res)

    def keys(self):
        return {bytes(b.key(i)) for _, b in self.pushed for i in range(b.n_series)}

    def select(self, tenant, matchers, hints):
        if isinstance(self.mode, Exception):
            return defer.fail(self.mode)
        return defer.succeed(self.series)

    def user_stats(self, tenant):
        return defer.succeed({"numSeries": self.num_series})


def series_batch(n, tenant_prefix="s"):
    return write_batch({(("__name__", "m"), ("i", "%s%d" % (tenant_prefix, i))): [(1000 + i, float(i))]
                        for i in range(n)})


class ReplicationTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)
        self.offload = inline_offload(POOLS)

    def client(self, ring, shard_size=0):
        self.fakes = {}

        def client_for(addr):
            return self.fakes.setdefault(addr, FakeIngester(addr))
        from prometheus_client import CollectorRegistry
        self.registry = CollectorRegistry()
        c = RingIngesterClient(ring, client_for, self.offload, self.clock, lambda t: shard_size,
                               registry=self.registry)
        for inst in ring.instances():
            c.client(inst)
        return c

    def test_write_plan_is_ring_get(self):
        """The per-token-position plan gives every hash the set Ring.get gives it."""
        ring, _ = random_ring(7, 5, tokens_each=16, clock=self.clock)
        plan = write_plan(ring)
        for k in range(2000):
            h = key_hash(tenant_seed("t"), b"key-%d" % k)
            self.assertEqual(set(plan.groups[plan.group(h)].instances),
                             set(ring.get(h, WRITE).instances))
        for h in (0, ring.tokens[0], ring.tokens[-1], 2 ** 32 - 1):
            self.assertEqual(set(plan.groups[plan.group(h)].instances),
                             set(ring.get(h, WRITE).instances))
        self.assertEqual(len(write_plan(random_ring(7, 3, tokens_each=16, clock=self.clock)[0]).groups),
                         1, "RF 3 over 3 ingesters: one replication set for every key")

    def test_each_series_lands_on_its_three_replicas_only(self):
        """With 5 ingesters and RF 3 every series is sent to exactly the 3 instances of its key's
        replication set, with its samples."""
        ring, members = random_ring(3, 5, tokens_each=32, clock=self.clock)
        c = self.client(ring)
        b = series_batch(200)
        res = self.successResultOf(c.push("t", b))
        self.assertEqual((res.accepted, list(res.outcomes)), (200, [O.OK] * 200))
        seed = tenant_seed("t")
        by_addr = {addr: f.keys() for addr, f in self.fakes.items()}
        for i in range(b.n_series):
            want = {inst.addr for inst in ring.get(key_hash(seed, b.key(i)), WRITE).instances}
            got = {addr for addr, keys in by_addr.items() if b.key(i) in keys}
            self.assertEqual(got, want)
        self.assertGreater(min(len(k) for k in by_addr.values()), 50)   # spread over all five

    def test_histograms_travel_with_their_series(self):
        """Native histograms reach exactly the replicas of their series, decoded equal to what
        was sent; each histogram's outcome comes back at its row of the batch."""
        from urdar.engine.histogram import FloatHistogram, Histogram
        ring, members = random_ring(3, 5, tokens_each=32, clock=self.clock)
        c = self.client(ring)
        b = series_batch(60)
        hists = {}
        for i in range(0, 60, 3):
            hists[i] = [(2000 + 7 * k + i, Histogram(
                schema=1, count=4 + k, sum=2.5 * k, zero_threshold=0.001, zero_count=1,
                positive_spans=[(-1, 2)], positive_buckets=[1 + k, -1], negative_spans=[(2, 1)],
                negative_buckets=[2])) for k in range(3)]
            if i % 2:
                hists[i].append((3000 + i, FloatHistogram(
                    schema=-53, custom_values=[1.0, 2.0], count=3.0, sum=0.5,
                    positive_spans=[(0, 2)], positive_buckets=[1.0, 2.0])))
        b.histograms = [(i, t, h) for i in sorted(hists) for t, h in hists[i]]
        res = self.successResultOf(c.push("t", b))
        want_out = [O.OUT_OF_ORDER if t % 2 else O.OK for _, t, _ in b.histograms]
        self.assertEqual(list(res.histogram_outcomes), want_out)
        self.assertEqual(res.accepted, 60 + want_out.count(O.OK))
        self.assertEqual(list(res.outcomes), [O.OK] * 60)
        seed = tenant_seed("t")
        for addr, fake in self.fakes.items():
            got = {bytes(pb.key(i)): [(t, h) for j, t, h in pb.histograms if j == i]
                   for _, pb in fake.pushed for i in range(pb.n_series)}
            for i in range(b.n_series):
                owners = {inst.addr for inst in ring.get(key_hash(seed, b.key(i)), WRITE).instances}
                self.assertEqual(bytes(b.key(i)) in got, addr in owners)
                if addr in owners:
                    self.assertEqual(got[bytes(b.key(i))], hists.get(i, []))

    def test_leaving_instance_extends_the_set(self):
        """A LEAVING ingester gets no writes; its keys still reach three ACTIVE ingesters."""
        ring, members = random_ring(5, 4, tokens_each=32, clock=self.clock)
        members["ing-0"]["state"] = LEAVING
        ring.set_desc({"ingesters": members})
        c = self.client(ring)
        b = series_batch(100)
        self.successResultOf(c.push("t", b))
        self.assertEqual(self.fakes[members["ing-0"]["addr"]].pushed, [])
        for i in range(b.n_series):
            self.assertEqual(sum(b.key(i) in f.keys() for f in self.fakes.values()), 3)

    def test_plan_follows_health(self):
        """An ingester whose heartbeat gets too old stops receiving writes at once (the cached
        plan is keyed by health), and gets them again once it heartbeats."""
        ring, members = random_ring(9, 4, tokens_each=16, clock=self.clock, timeout_s=60)
        c = self.client(ring)
        self.successResultOf(c.push("t", series_batch(50)))
        self.assertTrue(all(f.pushed for f in self.fakes.values()))
        self.clock.advance(30)
        for iid in ("ing-1", "ing-2", "ing-3"):
            members[iid]["timestamp"] = int(self.clock.seconds())
        ring.set_desc({"ingesters": members})
        self.clock.advance(40)      # ing-0's heartbeat is 70 s old now
        dead = self.fakes[members["ing-0"]["addr"]]
        dead.pushed.clear()
        self.successResultOf(c.push("t", series_batch(50)))
        self.assertEqual(dead.pushed, [])
        members["ing-0"]["timestamp"] = int(self.clock.seconds())
        ring.set_desc({"ingesters": members})
        self.successResultOf(c.push("t", series_batch(50)))
        self.assertEqual(len(dead.pushed), 1)

    def three(self):
        rng_tokens = [generate_tokens(8, (), __import__("random").Random(k)) for k in range(3)]
        ring = ring_of({"a": member("a:1", tokens=rng_tokens[0]), "b": member("b:1", tokens=rng_tokens[1]),
                        "c": member("c:1", tokens=rng_tokens[2])}, clock=self.clock)
        return ring, self.client(ring)

    def test_answers_at_quorum_without_waiting_for_the_third(self):
        """The push fires once two of three ingesters acked; the third still gets the data."""
        ring, c = self.three()
        for f in self.fakes.values():
            f.mode = "hold"
        d = c.push("t", series_batch(10))
        self.assertNoResult(d)
        self.fakes["a:1"].held[0][0].callback(self.fakes["a:1"].held[0][1])
        self.assertNoResult(d)
        self.fakes["c:1"].held[0][0].callback(self.fakes["c:1"].held[0][1])
        self.assertEqual(self.successResultOf(d).accepted, 10)
        self.assertEqual(len(self.fakes["b:1"].pushed), 1)

    def test_outcomes_come_from_the_first_ack(self):
        """Per-sample refusals reported by the acking ingester reach the distributor."""
        ring, c = self.three()
        for f in self.fakes.values():
            f.mode = "hold"
        d = c.push("t", series_batch(3))
        d_a, res = self.fakes["a:1"].held[0]
        res.outcomes[:] = bytes([O.OUT_OF_ORDER, O.OK, O.OK])
        d_a.callback(IC.PushResult(2, 0, res.outcomes))
        d_b, res_b = self.fakes["b:1"].held[0]
        d_b.callback(res_b)
        # Which sample is which depends on each ingester's sub-batch order: all three go to each.
        got = self.successResultOf(d)
        self.assertEqual(sorted(got.outcomes), sorted([O.OUT_OF_ORDER, O.OK, O.OK]))
        self.assertEqual(got.accepted, 2)

    def test_one_failure_is_tolerated(self):
        """One ingester of three down: the push succeeds."""
        ring, c = self.three()
        self.fakes["b:1"].mode = E.ComponentError(E.UNAVAILABLE, "connection refused")
        self.assertEqual(self.successResultOf(c.push("t", series_batch(5))).accepted, 5)

    def test_two_server_errors_are_a_5xx(self):
        """Two of three fail with 5xx: the push fails with the ingester's 5xx cause."""
        ring, c = self.three()
        for addr in ("a:1", "b:1"):
            self.fakes[addr].mode = E.ComponentError(E.UNAVAILABLE, "ingester is stopping")
        f = self.failureResultOf(c.push("t", series_batch(5)), E.ComponentError)
        self.assertEqual(f.value.cause, E.UNAVAILABLE)
        self.assertRegex(f.value.message, r"failed pushing to ingester [ab]:1: ingester is stopping")

    def test_two_client_errors_are_a_4xx(self):
        """Two of three refuse with 4xx: the pusher gets that 4xx (no retry)."""
        ring, c = self.three()
        for addr in ("a:1", "c:1"):
            self.fakes[addr].mode = E.ComponentError(E.BAD_DATA, "bad tenant")
        f = self.failureResultOf(c.push("t", series_batch(5)), E.ComponentError)
        self.assertEqual(f.value.cause, E.BAD_DATA)
        value = self.registry.get_sample_value
        self.assertEqual(value("cortex_distributor_ingester_append_failures_total",
                               {"ingester": "a:1", "type": "samples", "status": "4xx"}), 1)
        self.assertEqual(value("cortex_distributor_ingester_appends_total",
                               {"ingester": "b:1", "type": "samples"}), 1)

    def test_mixed_errors_are_a_5xx(self):
        """One 4xx and one 5xx out of three, no quorum: a 5xx (the data may be retried)."""
        ring, c = self.three()
        self.fakes["a:1"].mode = E.ComponentError(E.BAD_DATA, "bad")
        self.fakes["b:1"].mode = E.ComponentError(E.UNAVAILABLE, "down")
        self.fakes["c:1"].mode = "hold"
        d = c.push("t", series_batch(5))
        self.assertNoResult(d)
        d_c, res = self.fakes["c:1"].held[0]
        d_c.errback(E.ComponentError(E.UNAVAILABLE, "down too"))
        self.assertEqual(self.failureResultOf(d, E.ComponentError).value.cause, E.UNAVAILABLE)

    def test_single_ingester_ring_refuses_writes(self):
        """RF 3 over one ingester has no quorum (as dskit): 503 naming the live replicas."""
        ring = ring_of({"a": member("a:1", tokens=[1, 2 ** 31])}, clock=self.clock)
        c = self.client(ring)
        f = self.failureResultOf(c.push("t", series_batch(1)), E.ComponentError)
        self.assertEqual(f.value.cause, E.UNAVAILABLE)
        self.assertIn("at least 2 live replicas required", f.value.message)

    def test_replication_factor_one(self):
        """-ingester.ring.replication-factor=1 over one ingester: each series once, one ack
        answers, a failure fails the push."""
        ring = ring_of({"a": member("a:1", tokens=[1, 2 ** 31])}, clock=self.clock, rf=1)
        c = self.client(ring)
        self.assertEqual(self.successResultOf(c.push("t", series_batch(4))).accepted, 4)
        self.fakes["a:1"].mode = E.ComponentError(E.UNAVAILABLE, "down")
        self.failureResultOf(c.push("t", series_batch(4)), E.ComponentError)

    def test_shuffle_shard_confines_a_tenant(self):
        """With -distributor.ingestion-tenant-shard-size=3 of 6 ingesters a tenant's series go to
        its 3 only, and reads ask only those."""
        ring, _ = random_ring(11, 6, tokens_each=16, clock=self.clock)
        c = self.client(ring, shard_size=3)
        self.successResultOf(c.push("t", series_batch(100)))
        shard = {i.addr for i in ring.shuffle_shard("t", 3).instances()}
        self.assertEqual({a for a, f in self.fakes.items() if f.pushed}, shard)
        self.assertEqual(len(shard), 3)
        asked, answers = [], []

        def select(t, m, h, addr):
            asked.append(addr)
            answers.append(defer.Deferred())
            return answers[-1]
        for addr, f in self.fakes.items():
            f.select = lambda t, m, h, addr=addr: select(t, m, h, addr)
        d = c.select("t", (Matcher("=", "__name__", "m"),), SelectHints())
        for a in answers:
            a.callback([])
        self.successResultOf(d)
        self.assertEqual(set(asked), shard)

    def test_reads_merge_replicas_and_tolerate_one_failure(self):
        """Replicas of one series become one series with samples deduplicated by timestamp;
        one failing ingester of three is tolerated, two fail the read."""
        ring, c = self.three()
        k1 = encode_labels([("__name__", "m"), ("i", "1")])
        k2 = encode_labels([("__name__", "m"), ("i", "2")])
        self.fakes["a:1"].series = [(k1, array("q", [1, 2]), array("d", [1.0, 2.0]))]
        self.fakes["b:1"].series = [(k1, array("q", [2, 3]), array("d", [2.0, 3.0])),
                                    (k2, array("q", [5]), array("d", [5.0]))]
        self.fakes["c:1"].mode = E.ComponentError(E.UNAVAILABLE, "down")
        got = self.successResultOf(c.select("t", (), SelectHints()))
        self.assertEqual([(decode_labels(k)[1][1], list(ts), list(vs)) for k, ts, vs in got],
                         [("1", [1, 2, 3], [1.0, 2.0, 3.0]), ("2", [5], [5.0])])
        self.fakes["b:1"].mode = E.ComponentError(E.UNAVAILABLE, "down as well")
        f = self.failureResultOf(c.select("t", (), SelectHints()), E.ComponentError)
        self.assertIn("failed querying ingester", f.value.message)

    def test_a_hung_ingester_delays_no_read(self):
        """With two of three answered every replication set is covered: the read answers without
        the third, whose call is cancelled; the user stats scale the sum to the answers."""
        ring, c = self.three()
        k1 = encode_labels([("__name__", "m"), ("i", "1")])
        self.fakes["a:1"].series = [(k1, array("q", [1]), array("d", [1.0]))]
        self.fakes["b:1"].series = [(k1, array("q", [1]), array("d", [1.0]))]
        hung, cancelled = [], []

        def hang(*args):
            hung.append(defer.Deferred(cancelled.append))
            return hung[-1]
        self.fakes["c:1"].select = self.fakes["c:1"].user_stats = hang
        late = defer.Deferred()         # a answers after all three were asked
        real_select = self.fakes["a:1"].select
        self.fakes["a:1"].select = lambda t, m, h: late.addCallback(lambda _: real_select(t, m, h))
        d = c.select("t", (), SelectHints())
        self.assertEqual(len(hung), 1)
        self.assertNoResult(d)
        late.callback(None)
        got = self.successResultOf(d)
        self.assertEqual([(k, list(ts)) for k, ts, _ in got], [(k1, [1])])
        self.assertEqual(cancelled, hung)
        self.fakes["a:1"].num_series = self.fakes["b:1"].num_series = 7
        self.assertEqual(self.successResultOf(c.user_stats("t")), {"numSeries": 7})

    def test_large_reads_merge_in_the_pool(self):
        """Past INLINE_MERGE_ITEMS the merge runs in the read pool, with the same answer."""
        ring, c = self.three()
        keys = [encode_labels([("__name__", "m"), ("i", "%03d" % i)]) for i in range(300)]
        self.fakes["a:1"].series = [(k, array("q", [1]), array("d", [1.0])) for k in keys]
        self.fakes["b:1"].series = [(k, array("q", [2]), array("d", [2.0])) for k in keys[::-1]]
        ran = []
        real = self.offload.run
        self.patch(self.offload, "run", lambda pool, fn, *a: ran.append(pool) or real(pool, fn, *a))
        got = self.successResultOf(c.select("t", (), SelectHints()))
        self.assertEqual(ran, ["query"])
        self.assertEqual([k for k, _, _ in got], sorted(keys))
        self.assertEqual({tuple(ts) for _, ts, _ in got}, {(1, 2)})

    def test_user_stats_divide_by_replication(self):
        """numSeries is the sum over ingesters divided by the replication factor."""
        ring, c = self.three()
        for f, n in zip(self.fakes.values(), (10, 11, 9)):
            f.num_series = n
        self.assertEqual(self.successResultOf(c.user_stats("t")), {"numSeries": 10})


class ReadSetTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)

    def test_reads_tolerate_rf_over_two_out(self):
        """RF 3: every live ingester is asked and one may fail; one out already leaves no room
        for failures; two out is an error."""
        ring, members = random_ring(1, 4, tokens_each=4, clock=self.clock)
        rs = ring.read_set()
        self.assertEqual((len(rs.instances), rs.max_errors), (4, 1))
        members["ing-0"]["timestamp"] = 0           # heartbeat too old
        ring.set_desc({"ingesters": members})
        rs = ring.read_set()
        self.assertEqual((sorted(i.id for i in rs.instances), rs.max_errors),
                         (["ing-1", "ing-2", "ing-3"], 0))
        members["ing-1"]["timestamp"] = 0
        ring.set_desc({"ingesters": members})
        with self.assertRaises(RingError):
            ring.read_set()

    def test_zone_aware_reads_drop_a_zone_with_an_instance_out(self):
        """With zones, a zone with an instance out is not asked at all; two zones out of three
        is an error."""
        ring, members = random_ring(2, 6, tokens_each=4, zones=3, zone_awareness=True,
                                    clock=self.clock)
        self.assertEqual(len(ring.read_set().instances), 6)
        members["ing-0"]["timestamp"] = 0           # zone-0
        ring.set_desc({"ingesters": members})
        rs = ring.read_set()
        self.assertEqual(({i.zone for i in rs.instances}, rs.max_errors), ({"zone-1", "zone-2"}, 0))
        members["ing-1"]["timestamp"] = 0           # zone-1
        ring.set_desc({"ingesters": members})
        with self.assertRaises(RingError):
            ring.read_set()

    def test_zone_aware_reads_answer_once_all_but_one_zone_answered(self):
        """Zones: once every ingester of two zones of three answered, the read is complete; the
        hung zone's calls are cancelled. Two zones failing fail the read."""
        ring, members = random_ring(2, 6, tokens_each=4, zones=3, zone_awareness=True,
                                    clock=self.clock)
        zone_of = {m["addr"]: m["zone"] for m in members.values()}
        fakes = {}
        c = RingIngesterClient(ring, lambda a: fakes.setdefault(a, FakeIngester(a)),
                               inline_offload(POOLS), self.clock)
        for inst in ring.instances():
            c.client(inst)
        hung, cancelled = [], []

        def hang(*args):
            hung.append(defer.Deferred(cancelled.append))
            return hung[-1]
        for addr, f in fakes.items():
            if zone_of[addr] == "zone-0":
                f.select = hang
        # zone-0 sorts first: both its calls are out before the other zones answer
        self.assertEqual(self.successResultOf(c.select("t", (), SelectHints())), [])
        self.assertEqual(len(hung), 2)
        self.assertEqual(cancelled, hung)
        bad = [a for a in fakes if zone_of[a] in ("zone-1", "zone-2")]
        fakes[bad[0]].mode = E.ComponentError(E.UNAVAILABLE, "down")
        fakes[[a for a in bad if zone_of[a] != zone_of[bad[0]]][0]].mode = \
            E.ComponentError(E.UNAVAILABLE, "down")
        self.failureResultOf(c.select("t", (), SelectHints()), E.ComponentError)

    def test_zone_aware_writes_put_one_replica_per_zone(self):
        """Every series of a push lands in each of the three zones once."""
        ring, members = random_ring(4, 6, tokens_each=8, zones=3, zone_awareness=True,
                                    clock=self.clock)
        fakes = {}
        c = RingIngesterClient(ring, lambda a: fakes.setdefault(a, FakeIngester(a)),
                               inline_offload(POOLS), self.clock)
        b = series_batch(60)
        self.successResultOf(c.push("t", b))
        zone_of = {m["addr"]: m["zone"] for m in members.values()}
        for i in range(b.n_series):
            zones = [zone_of[a] for a, f in fakes.items() if b.key(i) in f.keys()]
            self.assertEqual(sorted(zones), ["zone-0", "zone-1", "zone-2"])


class LookbackTests(SynchronousTestCase):
    def test_readers_keep_the_shard_from_before_a_new_ingester(self):
        """An ingester that joined within the lookback joins the tenant's read shard without
        pushing out the ones that hold the tenant's recent data; past the lookback the shard is
        the plain one again."""
        clock = Clock()
        clock.advance(100000)
        ring, members = random_ring(21, 6, tokens_each=16, clock=clock)
        before = {i.id for i in ring.shuffle_shard("t", 3).instances()}
        toks = generate_tokens(16, {t for m in members.values() for t in m["tokens"]},
                               __import__("random").Random(5))
        members["new"] = member("10.0.1.1:80", tokens=toks, ts=int(clock.seconds()))
        ring.set_desc({"ingesters": members})
        for tenant in ["t"] + ["tenant-%d" % k for k in range(40)]:
            plain_before = {i.id for i in ring_of({k: v for k, v in members.items() if k != "new"},
                                                  clock=clock).shuffle_shard(tenant, 3).instances()}
            with_lookback = {i.id for i in ring.shuffle_shard(tenant, 3, 3600).instances()}
            self.assertLessEqual(plain_before, with_lookback, tenant)
            self.assertLessEqual(len(with_lookback), 4)
        self.assertEqual({i.id for i in ring_of(members, clock=clock).shuffle_shard("t", 3).instances()},
                         {i.id for i in ring.shuffle_shard("t", 3).instances()})
        clock.advance(7200)
        ring.set_desc({"ingesters": members})
        self.assertEqual(len(ring.shuffle_shard("t", 3, 3600).instances()), 3)
        self.assertTrue(before)
