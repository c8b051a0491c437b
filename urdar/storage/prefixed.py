"""Prefixed bucket: a view of another bucket where every name lives under "<prefix>/".

Used per tenant (`for_tenant(bucket, "team-a")` sees only "team-a/...") and for
-blocks-storage.storage-prefix. Names are validated before the prefix is added, so no name ('..',
absolute, empty segment) can reach outside the prefix; listings strip the prefix again."""
from twisted.internet import defer

from urdar.storage.bucket import InvalidName, NotFound, validate_name, validate_prefix


class PrefixedBucket:
    """Bucket view of `inner` below `prefix` (one or more '/'-separated segments, no trailing '/')."""

    def __init__(self, inner, prefix):
        validate_name(prefix)
        self.inner = inner
        self.prefix = prefix
        self._p = prefix + "/"

    def __repr__(self):
        return "PrefixedBucket(%r, %r)" % (self.inner, self.prefix)

    def _full(self, name):
        return self._p + validate_name(name)

    def _strip_not_found(self, failure, name):
        # Report the name the caller used, not the inner one.
        failure.trap(NotFound)
        raise NotFound(name)

    def get(self, name):
        d = defer.maybeDeferred(lambda: self.inner.get(self._full(name)))
        return d.addErrback(self._strip_not_found, name)

    def get_range(self, name, offset, length):
        d = defer.maybeDeferred(lambda: self.inner.get_range(self._full(name), offset, length))
        return d.addErrback(self._strip_not_found, name)

    def put(self, name, data):
        return defer.maybeDeferred(lambda: self.inner.put(self._full(name), data))

    def delete(self, name):
        return defer.maybeDeferred(lambda: self.inner.delete(self._full(name)))

    def exists(self, name):
        return defer.maybeDeferred(lambda: self.inner.exists(self._full(name)))

    def attributes(self, name):
        d = defer.maybeDeferred(lambda: self.inner.attributes(self._full(name)))
        return d.addErrback(self._strip_not_found, name)

    def list(self, prefix="", delimiter="/"):
        def strip(names):
            n = len(self._p)
            return [name[n:] for name in names if name.startswith(self._p) and len(name) > n]
        d = defer.maybeDeferred(lambda: self.inner.list(self._p + validate_prefix(prefix), delimiter))
        return d.addCallback(strip)


def for_tenant(bucket, tenant):
    """The tenant's view of a blocks bucket: everything under "<tenant>/". The tenant must be one
    segment (Mimir's tenant IDs have no '/'), and neither '.' nor '..'."""
    if not isinstance(tenant, str) or "/" in tenant:
        raise InvalidName(tenant, "a tenant ID is one name segment (no '/')")
    return PrefixedBucket(bucket, tenant)
