"""Tenants shared by compactors through the compactor ring (components/compactorshard.py): each
tenant has exactly one owner among the ACTIVE, healthy compactors; a compactor leaving or dying
hands its tenants to the others; nobody owns anything before it is ACTIVE; and a Compactor with
a ring compacts only the tenants it owns."""
import random

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.net.test_ring import member, ring_of
from urdar.components.compactorshard import TenantOwnership, hash_tenant
from urdar.net.ring import JOINING, LEAVING, generate_tokens

TENANTS = ["tenant-%d" % k for k in range(200)]


class TenantOwnershipTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)
        rng = random.Random(7)
        taken = set()
        self.members = {}
        for name in ("c-a", "c-b", "c-c"):
            toks = generate_tokens(512, taken, rng)
            taken.update(toks)
            self.members[name] = member(name + ":1", tokens=toks)

    def owners(self, members):
        ring = ring_of(members, clock=self.clock, rf=1)
        views = {name: TenantOwnership(ring, name) for name in members}
        return {t: [n for n, v in views.items() if v.owns(t)] for t in TENANTS}

    def test_hash_is_fnv1a(self):
        self.assertEqual(hash_tenant(""), 0x811C9DC5)
        self.assertEqual(hash_tenant("a"), 0xE40C292C)      # FNV-1a test vector

    def test_every_tenant_has_exactly_one_owner(self):
        owners = self.owners(self.members)
        self.assertEqual({len(o) for o in owners.values()}, {1})
        counts = {n: sum(1 for o in owners.values() if o == [n]) for n in self.members}
        self.assertTrue(all(c > 30 for c in counts.values()), counts)

    def test_leaving_or_dead_compactor_hands_over_only_its_tenants(self):
        before = self.owners(self.members)
        for change in ({"state": LEAVING}, {"timestamp": 0}):
            members = {n: dict(m) for n, m in self.members.items()}
            members["c-b"].update(change)
            after = self.owners(members)
            self.assertEqual({len(o) for o in after.values()}, {1})
            for t in TENANTS:
                if before[t] != ["c-b"]:
                    self.assertEqual(after[t], before[t], "only c-b's tenants move")
                else:
                    self.assertIn(after[t][0], ("c-a", "c-c"))

    def test_a_joining_compactor_owns_nothing(self):
        members = {n: dict(m) for n, m in self.members.items()}
        members["c-a"]["state"] = JOINING
        ring = ring_of(members, clock=self.clock, rf=1)
        view = TenantOwnership(ring, "c-a")
        self.assertFalse(view.ready())
        self.assertFalse(any(view.owns(t) for t in TENANTS))
        self.assertIsNone(TenantOwnership(ring_of({}, clock=self.clock), "x").owner("t"))
