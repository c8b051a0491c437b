"""The in-process key-value store that stands in for memberlist/consul/etcd while urdar runs as
one process (-target=all): ring descriptions live here under Mimir's keys ("collectors/ring" for
the ingesters, "collectors/distributor", "collectors/compactor", "collectors/store-gateway").

`MemoryKV(clock)` keeps each key's JSON-like value with a version (bumped on every change) and the
clock time of the last change; `cas(key, fn)` is the one way to change a value (fn gets a private
copy of the current value, or None, and returns the new one, or None for "no change"), as in
dskit's kv.Client. Values are copied in and out, so callers never share mutable state with the
store. Everything runs on the reactor thread; GET /memberlist (handlers/memberlist.py) renders it."""
import copy
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime


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

    def keys(self):
        return sorted(self._items)

    def cas(self, key, fn):
        """Set key to fn(copy of the current value or None); None from fn leaves it unchanged.
        Returns the new version (or the old one when unchanged, 0 for a missing key)."""
        e = self._items.get(key)
        new = fn(copy.deepcopy(e.value) if e is not None else None)
        if new is None:
            return e.version if e is not None else 0
        version = (e.version if e is not None else 0) + 1
        self._items[key] = KVEntry(copy.deepcopy(new), version, self.clock.seconds())
        for cb in list(self._watchers.get(key, ())):
            cb(key, copy.deepcopy(new))
        return version

    def delete(self, key):
        """Forget key; True if it existed."""
        return self._items.pop(key, None) is not None

    def watch(self, key, callback):
        """Call callback(key, value copy) after every change of key."""
        self._watchers.setdefault(key, []).append(callback)
