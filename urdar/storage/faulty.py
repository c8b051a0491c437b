"""Faulty bucket: error injection around another bucket, for tests of retries, shipping and repair.

Rules decide which calls fail instead of reaching the inner bucket: the Nth call (of one method or
of all), the next K calls, or calls whose name matches a regex (e.g. puts of ".*/meta.json"), each
with an optional limit on how often it fires. The default error is a retryable HTTP 500
(BucketHTTPError 'InternalError'); pass any exception instance, class or `f(method, name)`
instead. `pause(method)` holds calls until `resume(method)`, so a test can order events. `calls`
records (method, name) for every call, failed or not."""
import re

from twisted.internet import defer

from urdar.storage.bucket import BucketHTTPError

_METHODS = ("get", "get_range", "put", "list", "delete", "exists", "attributes")


class _Rule:
    __slots__ = ("methods", "match", "error", "remaining")

    def __init__(self, methods, match, error, remaining):
        self.methods = methods
        self.match = match          # (call number within the counted methods, name) -> bool
        self.error = error
        self.remaining = remaining  # None = unlimited


def injected_error(method, name):
    """The default fault: what an overloaded S3 answers (HTTP 500 InternalError, retryable)."""
    return BucketHTTPError(500, "InternalError", "injected fault in %s" % (method,), name)


class FaultyBucket:
    """Bucket that forwards to `inner` unless a rule says the call fails."""

    def __init__(self, inner):
        self.inner = inner
        self.calls = []
        self._rules = []
        self._counts = {}      # method -> calls so far; '*' -> all calls
        self._paused = {}      # method -> [Deferred] waiting for resume()

    def __repr__(self):
        return "FaultyBucket(%r)" % (self.inner,)

    # -- rules -------------------------------------------------------------------------------

    def fail_call(self, n, method=None, error=None):
        """Fail call number `n` (1-based, counted from now) of `method`, or of all methods."""
        base = self._count(method)
        self._add(method, lambda i, name: i == base + n, error, 1)

    def fail_next(self, count=1, method=None, error=None):
        """Fail the next `count` calls of `method` (or of all methods)."""
        self._add(method, lambda i, name: True, error, count)

    def fail_matching(self, pattern, methods=("put",), error=None, times=None):
        """Fail calls of `methods` whose name matches regex `pattern` (re.search), `times` times
        (None = always)."""
        rx = re.compile(pattern)
        self._add(tuple(methods), lambda i, name: rx.search(name) is not None, error, times)

    def clear(self):
        """Drop every rule (calls already failed stay failed)."""
        self._rules = []

    def pause(self, method):
        """Hold calls of `method` (not yet forwarded) until resume(method)."""
        self._paused.setdefault(method, [])

    def resume(self, method):
        """Forward the held calls of `method` in order and stop holding new ones."""
        for d in self._paused.pop(method, []):
            d.callback(None)

    def _add(self, methods, match, error, remaining):
        if isinstance(methods, str):
            methods = (methods,)
        for m in methods or ():
            if m not in _METHODS:
                raise ValueError("unknown bucket method %r" % (m,))
        self._rules.append(_Rule(methods, match, error, remaining))

    def _count(self, method):
        return self._counts.get(method or "*", 0)

    # -- the calls ---------------------------------------------------------------------------

    def _call(self, method, name, *args):
        self.calls.append((method, name))
        self._counts["*"] = self._counts.get("*", 0) + 1
        self._counts[method] = self._counts.get(method, 0) + 1
        for rule in list(self._rules):
            if rule.methods and method not in rule.methods:
                continue
            i = self._counts[rule.methods[0] if rule.methods and len(rule.methods) == 1 else "*"]
            if not rule.match(i, name):
                continue
            if rule.remaining is not None:
                rule.remaining -= 1
                if rule.remaining <= 0:
                    self._rules.remove(rule)
            return defer.fail(self._make_error(rule.error, method, name))
        if method in self._paused:
            waiter = defer.Deferred()
            self._paused[method].append(waiter)
            return waiter.addCallback(lambda _: getattr(self.inner, method)(name, *args))
        return defer.maybeDeferred(getattr(self.inner, method), name, *args)

    @staticmethod
    def _make_error(error, method, name):
        if error is None:
            return injected_error(method, name)
        if isinstance(error, BaseException):
            return error
        if isinstance(error, type) and issubclass(error, BaseException):
            return error("injected fault in %s of %r" % (method, name))
        return error(method, name)

    def get(self, name):
        return self._call("get", name)

    def get_range(self, name, offset, length):
        return self._call("get_range", name, offset, length)

    def put(self, name, data):
        return self._call("put", name, data)

    def list(self, prefix="", delimiter="/"):
        return self._call("list", prefix, delimiter)

    def delete(self, name):
        return self._call("delete", name)

    def exists(self, name):
        return self._call("exists", name)

    def attributes(self, name):
        return self._call("attributes", name)
