"""The in-process key-value store that stands in for memberlist/consul/etcd while urdar runs as
one process (-target=all): ring descriptions live here under Mimir's keys ("collectors/ring" for
the ingesters, "collectors/distributor", "collectors/compactor", "collectors/store-gateway").

`MemoryKV(clock)` keeps each key's JSON-like value with a version (bumped on every change) and the
clock time of the last change; `cas(key, fn)` is the one way to change a value (fn gets a private
copy of the current value, or None, and returns the new one, or None for "no change"), as in
dskit's kv.Client. Values are copied in and out, so callers never share mutable state with the
store. Everything runs on the reactor thread; GET /memberlist (handlers/memberlist.py) renders it.
net/etcd.py's EtcdKV has the same methods returning Deferreds (tests/net/kv_contract.py holds
both to one contract); watches call back with None when a key is deleted."""
import copy
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime

from twisted.internet import defer


class KVEntry:
    __slots__ = ("value", "version", "updated_s")

    def __init__(self, value, version, updated_s):
        self.value = value
        self.version = version
        self.updated_s = updated_s


class MemoryKV:
    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self._items: dict[str, KVEntry] = {}
        self._watchers: dict[str, list[Callable[[str, Any], object]]] = {}  # callback(key, value)

    def get(self, key):
        """A copy of key's value, or None."""
        e = self._items.get(key)
        return copy.deepcopy(e.value) if e is not None else None

    def entry(self, key):
        """(value copy, version, seconds of the last change) of key, or None."""
        e = self._items.get(key)
        return (copy.deepcopy(e.value), e.version, e.updated_s) if e is not None else None

    def keys(self, prefix=""):
        return sorted(k for k in self._items if k.startswith(prefix))

    def cas(self, key, fn):
        """Set key to fn(copy of the current value or None); None from fn leaves it unchanged.
        Returns the new version (or the old one when unchanged, 0 for a missing key)."""
        e = self._items.get(key)
        new = fn(copy.deepcopy(e.value) if e is not None else None)
        while self._items.get(key) is not e:
            # fn itself changed the key (a watcher or nested cas): run it again on the new
            # value rather than overwrite that change, as etcd's txn compare would.
            e = self._items.get(key)
            new = fn(copy.deepcopy(e.value) if e is not None else None)
        if new is None:
            return e.version if e is not None else 0
        version = (e.version if e is not None else 0) + 1
        self._items[key] = KVEntry(copy.deepcopy(new), version, self.clock.seconds())
        self._notify(key, new)
        return version

    def delete(self, key):
        """Forget key; True if it existed."""
        if self._items.pop(key, None) is None:
            return False
        self._notify(key, None)
        return True

    def _notify(self, key, value):
        for w in list(self._watchers.values()):
            if w.matches(key):
                w.callback(key, copy.deepcopy(value))

    def watch(self, key, callback):
        """Call callback(key, value copy, or None once deleted) after every change of key.
        Returns a MemoryWatch whose stop() ends the calls."""
        return self._watch(key, False, callback)

    def watch_prefix(self, prefix, callback):
        """watch() for every key starting with prefix."""
        return self._watch(prefix, True, callback)

    def _watch(self, key, prefix, callback):
        w = MemoryWatch(self, key, prefix, callback)
        self._watchers[id(w)] = w
        return w


class MemoryWatch:
    """A watch on a MemoryKV: active at once (`started` has fired), `stop()` ends it."""

    def __init__(self, kv, key, prefix, callback):
        self._kv, self.key, self.prefix, self.callback = kv, key, prefix, callback
        self.started = defer.succeed(self)

    def matches(self, key):
        return key.startswith(self.key) if self.prefix else key == self.key

    def stop(self):
        self._kv._watchers.pop(id(self), None)
