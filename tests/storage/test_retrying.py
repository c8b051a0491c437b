"""Retries with backoff on the injected clock: 5xx and connection failures retried, 4xx not."""
import io
import random

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.storage.contract import BucketContract
from urdar.storage.bucket import AccessDenied, BucketHTTPError, BucketUnavailable, NotFound
from urdar.storage.faulty import FaultyBucket
from urdar.storage.memory import MemoryBucket
from urdar.storage.retrying import RetryingBucket, is_retryable


class _MidRng:
    """random() always 0.5: jitter factor 1.0, so delays are exactly base * 2**n."""

    def random(self):
        return 0.5


class RetryingBucketContractTests(BucketContract, SynchronousTestCase):
    def make_bucket(self, page_size):
        return RetryingBucket(MemoryBucket(), Clock())

    def finish(self, d):
        return self.successResultOf(d)

    def check_last_modified(self, t):
        self.assertEqual(t, 0.0)


class RetryingBucketTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.mem = MemoryBucket()
        self.faulty = FaultyBucket(self.mem)
        self.bucket = RetryingBucket(self.faulty, self.clock, max_attempts=4, base_delay_s=1.0,
                                     max_delay_s=3.0, rng=_MidRng())
        self.successResultOf(self.mem.put("x", b"data"))

    def test_server_error_then_success(self):
        """A 500 is retried after the backoff delay and the call then succeeds."""
        self.faulty.fail_next(1, "get")
        d = self.bucket.get("x")
        self.assertNoResult(d)
        self.clock.advance(0.999)
        self.assertNoResult(d)
        self.clock.advance(0.001)
        self.assertEqual(self.successResultOf(d), b"data")
        self.assertEqual(self.bucket.retries_total, 1)

    def test_backoff_doubles_and_is_capped(self):
        """Waits grow 1s, 2s, then stop at max_delay_s (3s), and the last error is reported."""
        self.faulty.fail_next(10, "get")
        d = self.bucket.get("x")
        for wait in (1.0, 2.0, 3.0):
            self.assertNoResult(d)
            self.clock.advance(wait - 0.01)
            self.assertNoResult(d)
            self.clock.advance(0.01)
        f = self.failureResultOf(d, BucketHTTPError)
        self.assertEqual(f.value.status, 500)
        self.assertEqual([c for c in self.faulty.calls if c[0] == "get"], [("get", "x")] * 4)

    def test_jitter_spreads_delays(self):
        """Delays are drawn from [0.5, 1.5) times the exponential step."""
        b = RetryingBucket(self.mem, self.clock, base_delay_s=1.0, max_delay_s=100.0,
                           rng=random.Random(7))
        delays = [b.delay_s(3) for _ in range(200)]
        self.assertTrue(all(2.0 <= x < 6.0 for x in delays))
        self.assertGreater(len(set(delays)), 100)

    def test_not_found_and_client_errors_are_not_retried(self):
        """NotFound, AccessDenied and 4xx fail at once, with no waiting."""
        self.failureResultOf(self.bucket.get("missing"), NotFound)
        for err in (AccessDenied("no"), BucketHTTPError(400, "InvalidArgument")):
            self.faulty.fail_next(1, "get", error=err)
            self.failureResultOf(self.bucket.get("x"), type(err))
        self.assertEqual(self.bucket.retries_total, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_connection_failures_and_throttling_are_retried(self):
        """BucketUnavailable, 503 SlowDown and 429 are retried like a 500."""
        for err in (BucketUnavailable("refused"), BucketHTTPError(503, "SlowDown"),
                    BucketHTTPError(429), ConnectionResetError()):
            self.assertTrue(is_retryable(err))
            self.faulty.fail_next(1, "attributes", error=err)
            d = self.bucket.attributes("x")
            self.clock.advance(1.0)
            self.assertEqual(self.successResultOf(d).size, 4)
        self.assertFalse(is_retryable(ValueError()))

    def test_stream_put_is_rewound_before_retrying(self):
        """A put from a stream that failed is retried from the stream's original position."""
        self.faulty.fail_next(2, "put")
        stream = io.BytesIO(b"head:payload")
        stream.seek(5)
        d = self.bucket.put("s", stream)
        self.clock.advance(1.0)
        self.clock.advance(2.0)
        self.successResultOf(d)
        self.assertEqual(self.mem.objects["s"], b"payload")

    def test_unseekable_stream_is_not_retried(self):
        """A stream that cannot seek back is sent once; its failure is reported."""
        class OneShot(io.RawIOBase):
            def readable(self):
                return True

            def readinto(self, b):
                return 0
        self.faulty.fail_next(1, "put")
        self.failureResultOf(self.bucket.put("s", OneShot()), BucketHTTPError)

    def test_cancel_during_backoff_stops_retrying(self):
        """Cancelling while waiting to retry drops the pending retry."""
        self.faulty.fail_next(1, "get")
        d = self.bucket.get("x")
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.faulty.calls), 1)
