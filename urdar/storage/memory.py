"""In-memory bucket for unit tests: a dict of name -> (bytes, last_modified), S3 listing semantics.

Every Deferred it returns has already fired, so SynchronousTestCase can read results with
successResultOf. Times come from the injected clock (`clock.seconds()`)."""
from twisted.internet import defer
from twisted.internet.task import Clock

from urdar.storage.bucket import (
    Attributes, NotFound, check_range, list_names, read_put_data, validate_name, validate_prefix)


class MemoryBucket:
    """A Bucket held in a dict; `objects` maps name -> bytes for tests that peek."""

    def __init__(self, clock=None):
        self._clock = clock if clock is not None else Clock()
        self._objects = {}   # name -> (bytes, last_modified seconds)

    @property
    def objects(self):
        return {k: v[0] for k, v in self._objects.items()}

    def get(self, name):
        return defer.maybeDeferred(self._get, name)

    def _get(self, name):
        validate_name(name)
        try:
            return self._objects[name][0]
        except KeyError:
            raise NotFound(name) from None

    def get_range(self, name, offset, length):
        return defer.maybeDeferred(self._get_range, name, offset, length)

    def _get_range(self, name, offset, length):
        check_range(offset, length)
        data = self._get(name)
        return data[offset:offset + length]

    def put(self, name, data):
        return defer.maybeDeferred(self._put, name, data)

    def _put(self, name, data):
        validate_name(name)
        self._objects[name] = (read_put_data(data), self._clock.seconds())

    def list(self, prefix="", delimiter="/"):
        return defer.maybeDeferred(self._list, prefix, delimiter)

    def _list(self, prefix, delimiter):
        validate_prefix(prefix)
        return list_names(self._objects, prefix, delimiter)

    def delete(self, name):
        return defer.maybeDeferred(self._delete, name)

    def _delete(self, name):
        validate_name(name)
        self._objects.pop(name, None)

    def exists(self, name):
        return defer.maybeDeferred(lambda: validate_name(name) in self._objects)

    def attributes(self, name):
        return defer.maybeDeferred(self._attributes, name)

    def _attributes(self, name):
        validate_name(name)
        try:
            data, mtime = self._objects[name]
        except KeyError:
            raise NotFound(name) from None
        return Attributes(len(data), float(mtime))

