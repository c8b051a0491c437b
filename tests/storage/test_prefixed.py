"""Per-tenant views: a tenant sees and changes only names under "<tenant>/"."""
from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from tests.storage.contract import HOSTILE_NAMES, BucketContract
from urdar.storage.bucket import MAX_NAME_BYTES, InvalidName, NotFound
from urdar.storage.memory import MemoryBucket
from urdar.storage.prefixed import PrefixedBucket, for_tenant


class PrefixedBucketContractTests(BucketContract, SynchronousTestCase):
    max_name_bytes = MAX_NAME_BYTES - len("pre/fix/")

    def make_bucket(self, page_size):
        self.inner = MemoryBucket()
        return PrefixedBucket(self.inner, "pre/fix")

    def finish(self, d):
        return self.successResultOf(d)

    def check_last_modified(self, t):
        self.assertEqual(t, 0.0)


class PrefixedBucketTests(SynchronousTestCase):
    def setUp(self):
        self.inner = MemoryBucket()
        self.a = for_tenant(self.inner, "team-a")
        self.b = for_tenant(self.inner, "team-b")

    def ok(self, d):
        return self.successResultOf(d)

    def test_names_land_under_the_tenant(self):
        """A tenant's put of '01A/meta.json' is stored as 'team-a/01A/meta.json'."""
        self.ok(self.a.put("01A/meta.json", b"{}"))
        self.assertEqual(self.inner.objects, {"team-a/01A/meta.json": b"{}"})

    def test_tenants_are_isolated(self):
        """Tenants with the same object names neither see nor overwrite each other's objects."""
        self.ok(self.a.put("01A/index", b"a"))
        self.ok(self.b.put("01A/index", b"b"))
        self.ok(self.inner.put("team-ab/x", b"other"))
        self.assertEqual(self.ok(self.a.get("01A/index")), b"a")
        self.assertEqual(self.ok(self.b.get("01A/index")), b"b")
        self.assertEqual(self.ok(self.a.list("")), ["01A/"])
        self.assertEqual(self.ok(self.a.list("", "")), ["01A/index"])
        self.ok(self.b.delete("01A/index"))
        self.assertEqual(self.ok(self.a.get("01A/index")), b"a")
        self.assertFalse(self.ok(self.b.exists("01A/index")))
        err = self.failureResultOf(self.b.get("01A/index"), NotFound)
        self.assertEqual(err.value.name, "01A/index")

    def test_hostile_names_cannot_escape(self):
        """'..' and absolute names are refused before the prefix is added, so nothing leaks out."""
        self.ok(self.inner.put("secret", b"s"))
        self.ok(self.inner.put("team-b/x", b"b"))
        for name in HOSTILE_NAMES + ("../team-b/x", "../secret"):
            self.failureResultOf(self.a.get(name), InvalidName)
            self.failureResultOf(self.a.put(name, b"x"), InvalidName)
            self.failureResultOf(self.a.delete(name), InvalidName)
        self.failureResultOf(self.a.list("../"), InvalidName)
        self.assertEqual(self.inner.objects, {"secret": b"s", "team-b/x": b"b"})

    def test_names_are_checked_by_the_view_itself(self):
        """Even over a store that trusts every name, a hostile name never reaches it."""
        seen = []

        class Trusting:
            def get(self, name):
                seen.append(name)
                return defer.succeed(b"")
        view = for_tenant(Trusting(), "team-a")
        for name in ("../team-b/x", "/etc/passwd", "a//b", ""):
            self.failureResultOf(view.get(name), InvalidName)
        self.assertEqual(seen, [])

    def test_tenant_must_be_one_segment(self):
        """Tenant IDs with '/', '..', '.' or nothing are refused."""
        for tenant in ("a/b", "..", ".", "", "/a"):
            with self.assertRaises(InvalidName):
                for_tenant(self.inner, tenant)
