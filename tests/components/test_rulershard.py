"""Rule groups sharded over the ruler ring (components/rulershard.py) on a fake clock: Mimir's
group token, each group evaluated by exactly one of two rulers sharing a ring and a rule store,
the groups of a ruler that stops heartbeating taken over once its heartbeat is too old (their
`for` state restored), a ruler that joins taking its share, and the read API answering for the
groups of every ruler (the fan-out over the internal endpoint, and its failure)."""
import json

from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.support.rules import make_manager
from urdar.components.rulefmt import decode_group
from urdar.components.ruler import RuleStore
from urdar.components.rulershard import RulerPeers, RulerSharding, group_token
from urdar.handlers.routes import RouteTable
from urdar.handlers.rulemanager import RulesHandlers
from urdar.net.kv import MemoryKV
from urdar.net.ring import ACTIVE, Ring, RingLifecycler
from urdar.net.tenant import Tenancy
from urdar.storage.memory import MemoryBucket

M = 60_000
KEY = "rulers/ring"
GROUPS = 12


def advance_to(clock, t_s):
    """Move the fake clock to t_s one due timer at a time."""
    while True:
        due = [c.getTime() for c in clock.getDelayedCalls() if c.getTime() <= t_s]
        if not due:
            break
        clock.advance(max(0.0, min(due) - clock.seconds()))
    clock.advance(max(0.0, t_s - clock.seconds()))


class GroupTokenTests(SynchronousTestCase):
    def test_mimir_token(self):
        """FNV-1a 32 of tenant/namespace/group, as Mimir's tokenForGroup (values from Go's
        hash/fnv)."""
        self.assertEqual(group_token("team-a", "ns", "g1"), 229192345)
        self.assertEqual(group_token("", "", ""), 2731697891)
        self.assertEqual(group_token("ü", "a/b", "grp"), 1300030967)


class Ruler:
    """One ruler of the test: its ring entry, ring reader, manager and sharding."""

    def __init__(self, test, name, kv, clock, store, tsdb):
        self.name = name
        self.lc = RingLifecycler(kv, clock, KEY, name, "%s:80" % name, heartbeat_s=2.0,
                                 num_tokens=128)
        self.ring = Ring(kv, KEY, clock, replication_factor=1, heartbeat_timeout_s=10.0)
        self.ring.start()
        self.mgr, _, _, _ = make_manager(clock=clock, tsdb=tsdb, store=store)
        self.sharding = RulerSharding(self.ring, name, clock, check_period_s=1.0)
        self.mgr.owns = self.sharding.owns
        self.sharding.on_change = lambda: self.mgr.sync(restore_new=True)
        test.addCleanup(self.stop)

    def start(self):
        self.lc.join()
        self.lc.set_state(ACTIVE)
        self.sharding.start()
        self.mgr.start()

    def stop(self):
        self.sharding.stop()
        self.mgr.stop()
        if self.lc._loop is not None and self.lc._loop.running:
            self.lc._loop.stop()
        self.ring.stop()

    def kill(self):
        """As kill -9: no more heartbeats, no evaluations, the ring entry stays."""
        self.sharding.stop()
        self.mgr.stop()
        self.lc._loop.stop()

    def owned(self, tenant="t"):
        return sorted(name for _, name in self.mgr.groups.get(tenant, {}))


class ShardingTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)
        self.kv = MemoryKV(self.clock)
        self.store = RuleStore(MemoryBucket())
        for i in range(GROUPS):
            self.successResultOf(self.store.set_group("t", "ns", decode_group((
                "name: g%02d\ninterval: 1m\nrules:\n  - record: r%02d\n    expr: vector(%d)\n"
                % (i, i, i)).encode())))
        self.a = Ruler(self, "ruler-a", self.kv, self.clock, self.store, None)
        self.tsdb = self.a.mgr.pusher
        self.b = Ruler(self, "ruler-b", self.kv, self.clock, self.store, self.tsdb)

    def recorded(self, name):
        return sorted(t for pts in self.tsdb.samples("t", name).values() for t, _ in pts)

    def test_each_group_on_exactly_one_ruler(self):
        """Both rulers ACTIVE: the groups are split between them, each on exactly one, both
        having some; every group's series is written once per interval."""
        self.a.start()
        self.b.start()
        advance_to(self.clock, 1003)    # a ring check after b joined: a gives up b's groups
        a, b = self.a.owned(), self.b.owned()
        self.assertEqual(sorted(a + b), ["g%02d" % i for i in range(GROUPS)])
        self.assertFalse(set(a) & set(b))
        self.assertTrue(a and b, (a, b))
        start = self.clock.seconds()
        advance_to(self.clock, start + 180)
        for i in range(GROUPS):
            ts = self.recorded("r%02d" % i)
            self.assertEqual(len(ts), len(set(ts)), "r%02d written twice at one time" % i)
            self.assertIn(len(ts), (2, 3, 4), i)

    def test_dead_ruler_groups_taken_over_after_heartbeat_timeout(self):
        """b stops heartbeating (kill -9): within the heartbeat timeout its groups are not
        evaluated by a; after it, a owns every group and evaluates b's (restoring their `for`
        state)."""
        self.a.start()
        self.b.start()
        advance_to(self.clock, 1003)
        b_groups = self.b.owned()
        self.assertTrue(b_groups)
        killed_at = self.clock.seconds()
        self.b.kill()
        advance_to(self.clock, killed_at + 8)       # heartbeat 2s old at most... until 10s
        self.assertEqual(set(self.a.owned()) & set(b_groups), set())
        advance_to(self.clock, killed_at + 14)      # last heartbeat > 10s old, a ring check
        self.assertEqual(self.a.owned(), ["g%02d" % i for i in range(GROUPS)])
        taken = self.a.mgr.groups["t"][("ns", b_groups[0])]
        self.assertTrue(taken.should_restore)
        before = len(self.recorded("r" + b_groups[0][1:]))
        advance_to(self.clock, killed_at + 14 + 120)
        self.assertEqual(len(self.recorded("r" + b_groups[0][1:])), before + 2)

    def test_joining_ruler_takes_its_share(self):
        """a alone owns everything; once b joins, a's ring check hands b's share over."""
        self.a.start()
        advance_to(self.clock, 1001)
        self.assertEqual(len(self.a.owned()), GROUPS)
        self.b.start()
        advance_to(self.clock, 1003)
        self.assertEqual(len(self.a.owned()) + len(self.b.owned()), GROUPS)
        self.assertTrue(self.b.owned())

    def test_rules_api_answers_for_every_ruler(self):
        """/api/v1/rules and /alerts on either ruler list the groups of both (the other's
        through its internal endpoint), by namespace and name, filters applied after the
        merge; a ruler that cannot answer fails the request with 503 naming it."""
        self.a.start()
        self.b.start()
        advance_to(self.clock, 1003)
        advance_to(self.clock, self.clock.seconds() + 61)
        handlers = {}
        for me, other in ((self.a, self.b), (self.b, self.a)):
            table = RouteTable(Tenancy()).mount(RulesHandlers(other.mgr))
            me.mgr.peers = RulerPeers(me.sharding, StubTreq(table.resource()), self.clock)
            handlers[me.name] = StubTreq(RouteTable(Tenancy()).mount(RulesHandlers(me.mgr)).resource())

        def get(r, path, tenant="t"):
            resp = self.successResultOf(handlers[r.name].get(
                "http://x/prometheus" + path, headers={"X-Scope-OrgID": tenant}))
            return resp.code, json.loads(self.successResultOf(resp.content()))

        for r in (self.a, self.b):
            code, doc = get(r, "/api/v1/rules")
            self.assertEqual(code, 200)
            self.assertEqual([g["name"] for g in doc["data"]["groups"]],
                             ["g%02d" % i for i in range(GROUPS)])
            self.assertTrue(all(g["rules"][0]["health"] == "ok" for g in doc["data"]["groups"]))
            code, doc = get(r, "/api/v1/rules?rule_name[]=r03&rule_name[]=r07")
            self.assertEqual([g["name"] for g in doc["data"]["groups"]], ["g03", "g07"])
            self.assertEqual(get(r, "/api/v1/rules", "other")[1]["data"], {"groups": []})
            self.assertEqual(get(r, "/api/v1/alerts")[1]["data"], {"alerts": []})
        # The internal endpoint answers for this ruler's groups only.
        resp = self.successResultOf(StubTreq(RouteTable(Tenancy()).mount(
            RulesHandlers(self.b.mgr)).resource()).get(
            "http://x/ruler/internal/rules", headers={"X-Scope-OrgID": "t"}))
        names = [g["name"] for g in json.loads(self.successResultOf(resp.content()))["groups"]]
        self.assertEqual(names, self.b.owned())

        # b's answers fail: a's API fails with 503.
        from twisted.web.resource import Resource

        class Broken(Resource):
            isLeaf = True

            def render_GET(self, request):
                request.setResponseCode(500)
                return b"boom"
        self.a.mgr.peers = RulerPeers(self.a.sharding, StubTreq(Broken()), self.clock)
        code, doc = get(self.a, "/api/v1/rules")
        self.assertEqual(code, 503)
        self.assertEqual(doc["errorType"], "unavailable")
        self.assertIn("unable to retrieve rules from ruler ruler-b:80", doc["error"])
