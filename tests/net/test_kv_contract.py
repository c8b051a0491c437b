"""MemoryKV, the single-process ring store, passes the KV contract that EtcdKV passes too."""
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from tests.net.kv_contract import KVContract
from urdar.net.kv import MemoryKV


class MemoryKVContractTests(KVContract, TestCase):
    def make_kv(self):
        if not hasattr(self, "_store"):
            self._store = MemoryKV(Clock())
        return self._store

    def interfere(self, key, value):
        self._store.cas(key, lambda v: value)

    def eventually(self, check):
        # MemoryKV calls watchers inside cas/delete: whatever will happen has happened.
        self.assertTrue(check())
        return defer.succeed(None)
