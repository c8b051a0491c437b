"""Error injection for tests: which calls fail, with what, and holding calls back."""
from twisted.trial.unittest import SynchronousTestCase

from urdar.storage.bucket import BucketHTTPError, NotFound
from urdar.storage.faulty import FaultyBucket
from urdar.storage.memory import MemoryBucket


class FaultyBucketTests(SynchronousTestCase):
    def setUp(self):
        self.mem = MemoryBucket()
        self.bucket = FaultyBucket(self.mem)

    def ok(self, d):
        return self.successResultOf(d)

    def test_passes_through_without_rules(self):
        """With no rules every call reaches the inner bucket, and calls are recorded."""
        self.ok(self.bucket.put("a", b"1"))
        self.assertEqual(self.ok(self.bucket.get("a")), b"1")
        self.assertEqual(self.ok(self.bucket.list("")), ["a"])
        self.assertEqual(self.bucket.calls, [("put", "a"), ("get", "a"), ("list", "")])

    def test_fail_the_nth_call(self):
        """fail_call(2, 'put') fails only the second put from now with a retryable 500."""
        self.ok(self.bucket.put("before", b"0"))
        self.bucket.fail_call(2, "put")
        self.ok(self.bucket.put("a", b"1"))
        self.ok(self.bucket.get("a"))
        f = self.failureResultOf(self.bucket.put("b", b"2"), BucketHTTPError)
        self.assertTrue(f.value.retryable)
        self.ok(self.bucket.put("c", b"3"))
        self.assertEqual(sorted(self.mem.objects), ["a", "before", "c"])

    def test_fail_the_nth_call_of_any_method(self):
        """Without a method, fail_call counts every call."""
        self.bucket.fail_call(3)
        self.ok(self.bucket.put("a", b"1"))
        self.ok(self.bucket.exists("a"))
        self.failureResultOf(self.bucket.get("a"), BucketHTTPError)
        self.ok(self.bucket.get("a"))

    def test_fail_matching_names(self):
        """fail_matching fails puts of matching names only, and `times` limits it."""
        self.bucket.fail_matching(r"/meta\.json$", times=1)
        self.ok(self.bucket.put("t/01A/index", b"i"))
        self.failureResultOf(self.bucket.put("t/01A/meta.json", b"m"), BucketHTTPError)
        self.ok(self.bucket.put("t/01A/meta.json", b"m"))
        self.assertEqual(sorted(self.mem.objects), ["t/01A/index", "t/01A/meta.json"])

    def test_custom_errors(self):
        """The injected error may be an instance, a class or a factory of (method, name)."""
        self.bucket.fail_next(1, "get", error=NotFound("zz"))
        self.failureResultOf(self.bucket.get("a"), NotFound)
        self.bucket.fail_next(1, "get", error=OSError)
        self.failureResultOf(self.bucket.get("a"), OSError)
        self.bucket.fail_next(1, "get", error=lambda m, n: BucketHTTPError(403, "X", name=n))
        f = self.failureResultOf(self.bucket.get("a"), BucketHTTPError)
        self.assertEqual((f.value.status, f.value.name), (403, "a"))
        self.bucket.fail_next(1)
        self.bucket.clear()
        self.failureResultOf(self.bucket.get("a"), NotFound)  # real answer: nothing stored

    def test_pause_holds_calls_until_resume(self):
        """Paused calls wait, then run in order on resume."""
        self.bucket.pause("put")
        d1 = self.bucket.put("a", b"1")
        d2 = self.bucket.put("a", b"2")
        self.assertNoResult(d1)
        self.assertEqual(self.mem.objects, {})
        self.bucket.resume("put")
        self.ok(d1)
        self.ok(d2)
        self.assertEqual(self.mem.objects, {"a": b"2"})

    def test_unknown_method_is_refused(self):
        """A rule naming a method buckets do not have is a test bug, reported at once."""
        with self.assertRaises(ValueError):
            self.bucket.fail_next(1, "gett")
