"""The in-memory bucket passes the Bucket contract and stamps objects with its clock."""
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.storage.contract import BucketContract
from urdar.storage.memory import MemoryBucket


class MemoryBucketContractTests(BucketContract, SynchronousTestCase):
    def make_bucket(self, page_size):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        return MemoryBucket(self.clock)

    def finish(self, d):
        return self.successResultOf(d)

    def check_last_modified(self, t):
        self.assertEqual(t, 1_700_000_000.0)


class MemoryBucketTests(SynchronousTestCase):
    def test_last_modified_comes_from_the_clock(self):
        """An object's last_modified is the injected clock's time at its put."""
        clock = Clock()
        b = MemoryBucket(clock)
        clock.advance(42.5)
        self.successResultOf(b.put("x", b"1"))
        self.assertEqual(self.successResultOf(b.attributes("x")).last_modified, 42.5)

    def test_objects_view(self):
        """`objects` shows what is stored, for assertions in other components' tests."""
        b = MemoryBucket()
        self.successResultOf(b.put("t/a", b"1"))
        self.assertEqual(b.objects, {"t/a": b"1"})
