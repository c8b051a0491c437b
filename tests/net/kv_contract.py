"""The KV contract for the ring stores: one suite run against MemoryKV (net/kv.py) and EtcdKV
(net/etcd.py on a real etcd).

A store's test class mixes `KVContract` into a trial TestCase and provides `make_kv()` (a client;
two calls give two clients of one store), `interfere(key, value)` (writes key from outside,
synchronously, so a cas's fn can lose a race on purpose) and `eventually(check)` (a Deferred
firing once check() is true: at once for MemoryKV, polled on the reactor for etcd). Every call
goes through maybeDeferred, so MemoryKV's plain values and EtcdKV's Deferreds share one body.
Keys live under a per-test prefix, so tests can share one etcd."""
import functools
import itertools

from twisted.internet import defer

_ids = itertools.count()


def contract(gen):
    """Turn a generator test into a trial test returning its Deferred."""
    run = defer.inlineCallbacks(gen)

    @functools.wraps(gen)
    def test(self):
        return run(self)
    return test


def call(method, *args):
    return defer.maybeDeferred(method, *args)


class KVContract:
    def setUp(self):
        super().setUp()
        self.p = "contract-%d/" % next(_ids)
        self.kv = self.make_kv()

    @contract
    def test_missing_key(self):
        """A key never written reads as None, has no entry, deletes as False and has version 0."""
        k = self.p + "missing"
        self.assertIsNone((yield call(self.kv.get, k)))
        self.assertIsNone((yield call(self.kv.entry, k)))
        self.assertIs((yield call(self.kv.delete, k)), False)
        self.assertEqual((yield call(self.kv.cas, k, lambda v: None)), 0)
        self.assertIsNone((yield call(self.kv.get, k)))

    @contract
    def test_cas_creates_updates_and_counts_versions(self):
        """cas creates a key at version 1, each change adds one, and fn sees the current value."""
        k = self.p + "ring"
        seen = []

        def bump(v):
            seen.append(v)
            return {"n": (v or {"n": 0})["n"] + 1, "name": "ingester-\u00e9"}
        self.assertEqual((yield call(self.kv.cas, k, bump)), 1)
        self.assertEqual((yield call(self.kv.cas, k, bump)), 2)
        self.assertEqual(seen, [None, {"n": 1, "name": "ingester-\u00e9"}])
        self.assertEqual((yield call(self.kv.get, k)), {"n": 2, "name": "ingester-\u00e9"})
        value, version, _ = yield call(self.kv.entry, k)
        self.assertEqual((value, version), ({"n": 2, "name": "ingester-\u00e9"}, 2))
        self.assertEqual((yield call(self.kv.cas, k, lambda v: None)), 2, "None from fn: no change")
        other = self.make_kv()
        self.assertEqual((yield call(other.get, k)), {"n": 2, "name": "ingester-\u00e9"},
                         "a second client reads what the first wrote")

    @contract
    def test_values_are_copies(self):
        """Changing a value handed out, or the one fn got, never changes the stored value."""
        k = self.p + "copies"

        def grab(v):
            self.given = v
            return {"a": [1]} if v is None else None
        yield call(self.kv.cas, k, grab)
        got = yield call(self.kv.get, k)
        got["a"].append(2)
        yield call(self.kv.cas, k, grab)
        self.given["a"].append(3)
        self.assertEqual((yield call(self.kv.get, k)), {"a": [1]})

    @contract
    def test_delete_then_recreate(self):
        """A deleted key reads as None and starts again at version 1 when written."""
        k = self.p + "gone"
        yield call(self.kv.cas, k, lambda v: {"x": 1})
        yield call(self.kv.cas, k, lambda v: {"x": 2})
        self.assertIs((yield call(self.kv.delete, k)), True)
        self.assertIsNone((yield call(self.kv.get, k)))
        self.assertNotIn(k, (yield call(self.kv.keys, self.p)))
        self.assertEqual((yield call(self.kv.cas, k, lambda v: {"x": 3} if v is None else None)), 1)

    @contract
    def test_keys_by_prefix(self):
        """keys(prefix) lists exactly the keys under the prefix, sorted."""
        for name in ("b/2", "a/1", "b/1", "bb"):
            yield call(self.kv.cas, self.p + name, lambda v: {})
        self.assertEqual((yield call(self.kv.keys, self.p + "b/")), [self.p + "b/1", self.p + "b/2"])
        self.assertEqual((yield call(self.kv.keys, self.p)),
                         [self.p + n for n in ("a/1", "b/1", "b/2", "bb")])
        self.assertEqual((yield call(self.kv.keys, self.p + "none/")), [])
        everything = yield call(self.kv.keys)
        self.assertTrue(set(self.p + n for n in ("a/1", "bb")) <= set(everything))

    @contract
    def test_cas_retries_on_conflict(self):
        """When the key changes between cas's read and write, fn runs again on the newer value
        and no update is lost."""
        k = self.p + "race"
        yield call(self.kv.cas, k, lambda v: {"n": 1})
        calls = []

        def add_ten(v):
            calls.append(v)
            if len(calls) == 1:
                self.interfere(k, {"n": 100})      # another writer wins the race
            return {"n": v["n"] + 10}
        version = yield call(self.kv.cas, k, add_ten)
        self.assertEqual(calls, [{"n": 1}, {"n": 100}])
        self.assertEqual((yield call(self.kv.get, k)), {"n": 110})
        self.assertEqual(version, 3)

    @contract
    def test_watch_delivers_every_change_in_order(self):
        """A watch reports each change of its key, deletes as None, in order, and nothing else."""
        k = self.p + "watched"
        seen = []
        w = self.kv.watch(k, lambda key, v: seen.append((key, v)))
        yield w.started
        for i in range(5):
            yield call(self.kv.cas, k, lambda v, i=i: {"i": i})
        yield call(self.kv.cas, self.p + "other", lambda v: {"i": -1})
        yield call(self.kv.delete, k)
        yield call(self.kv.cas, k, lambda v: {"i": 9})
        expected = [(k, {"i": i}) for i in range(5)] + [(k, None), (k, {"i": 9})]
        yield self.eventually(lambda: len(seen) >= len(expected))
        self.assertEqual(seen, expected)
        w.stop()
        yield call(self.kv.cas, k, lambda v: {"i": 10})
        yield call(self.kv.get, k)
        self.assertEqual(seen, expected, "no calls after stop()")

    @contract
    def test_watch_prefix(self):
        """A prefix watch reports changes of every key under the prefix, and of no other key."""
        seen = []
        w = self.kv.watch_prefix(self.p + "rings/", lambda key, v: seen.append((key, v)))
        self.addCleanup(w.stop)
        yield w.started
        other = self.make_kv()
        yield call(other.cas, self.p + "rings/a", lambda v: {"a": 1})
        yield call(other.cas, self.p + "ringsX", lambda v: {"no": 1})
        yield call(other.cas, self.p + "rings/b", lambda v: {"b": 1})
        yield call(other.delete, self.p + "rings/a")
        expected = [(self.p + "rings/a", {"a": 1}), (self.p + "rings/b", {"b": 1}),
                    (self.p + "rings/a", None)]
        yield self.eventually(lambda: len(seen) >= len(expected))
        self.assertEqual(seen, expected)
