"""Retrying bucket: re-run failed calls that may succeed later, with exponential backoff and jitter.

Wraps any Bucket (normally S3). A failure is retried when the error says so (`retryable`: HTTP 5xx
or 429, connection failures, timeouts); NotFound, AccessDenied, other 4xx and local errors fail at
once. Before attempt n+1 it waits base_delay_s * 2**(n-1), capped at max_delay_s, times a jitter
factor drawn from [0.5, 1.5) (so replicas that failed together do not retry together), on the
injected clock. A put from a stream seeks the stream back before each retry (a stream that cannot
seek is sent once). Cancelling the returned Deferred cancels the pending wait or attempt."""
import random

from twisted.internet import defer, task

from urdar.storage.bucket import put_data_kind


def is_retryable(exc):
    """Whether a bucket call that raised `exc` may succeed if simply tried again."""
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    return bool(getattr(exc, "retryable", False))


class RetryingBucket:
    """Bucket that retries `inner`'s transient failures; at most `max_attempts` tries per call."""

    def __init__(self, inner, clock, max_attempts=5, base_delay_s=0.25, max_delay_s=10.0, rng=None):
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        self.inner = inner
        self._clock = clock
        self.max_attempts = max_attempts
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self._rng = rng if rng is not None else random.Random()
        self.retries_total = 0        # retries made (attempts after the first), for metrics

    def __repr__(self):
        return "RetryingBucket(%r)" % (self.inner,)

    def delay_s(self, attempt):
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        base = min(self.max_delay_s, self.base_delay_s * (2 ** (attempt - 1)))
        return min(self.max_delay_s, base * (0.5 + self._rng.random()))

    @defer.inlineCallbacks
    def _call(self, method, *args, rewind=None):
        attempt = 1
        while True:
            try:
                result = yield getattr(self.inner, method)(*args)
                return result
            except Exception as e:
                if attempt >= self.max_attempts or not is_retryable(e):
                    raise
                if rewind is not None and not rewind():
                    raise
            yield task.deferLater(self._clock, self.delay_s(attempt), lambda: None)
            attempt += 1
            self.retries_total += 1

    def get(self, name):
        return self._call("get", name)

    def get_range(self, name, offset, length):
        return self._call("get_range", name, offset, length)

    def put(self, name, data):
        rewind = _rewinder(data) if put_data_kind(data) == "stream" else None
        return self._call("put", name, data, rewind=rewind)

    def delete(self, name):
        return self._call("delete", name)

    def exists(self, name):
        return self._call("exists", name)

    def attributes(self, name):
        return self._call("attributes", name)

    def list(self, prefix="", delimiter="/"):
        return self._call("list", prefix, delimiter)


def _rewinder(stream):
    """A function putting `stream` back where it is now (False when it cannot seek), so a retried
    put sends the same bytes."""
    try:
        pos = stream.tell() if stream.seekable() else None
    except (AttributeError, OSError):
        pos = None

    def rewind():
        if pos is None:
            return False
        stream.seek(pos)
        return True
    return rewind
