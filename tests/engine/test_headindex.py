"""The head's C label index (engine/headindex.pyx) stays exact through creation, refused
batches, garbage collection, symbol reuse, arena compaction and replay: every index call the
matchers use is compared with a model kept beside it."""
import random
import unittest

from urdar.engine import outcomes as O
from urdar.engine.labels import encode_labels, labels_dict, names_of_keys, values_of_keys
from urdar.engine.matchers import Matcher

from tests.engine.test_head import HOUR, HeadTestCase, batch


def model_of(series):
    """name -> value -> sorted refs, from {labels tuple: ref}."""
    out = {}
    for labels, ref in series.items():
        for n, v in labels:
            out.setdefault(n, {}).setdefault(v, []).append(ref)
    for values in out.values():
        for refs in values.values():
            refs.sort()
    return out


class HeadIndexTests(HeadTestCase):
    def assert_index(self, h, series):
        """Every index-protocol answer equals the model's; keys come back byte for byte."""
        m = model_of(series)
        self.assertEqual(h.label_names(), sorted(m))
        for name, values in m.items():
            self.assertEqual(h.label_values(name), sorted(values), name)
            for value, refs in values.items():
                self.assertEqual(list(h.postings(name, value)), refs, (name, value))
        self.assertEqual(list(h.all_postings()), sorted(series.values()))
        self.assertEqual(list(h.postings("instance", "nowhere")), [])
        self.assertEqual(h.label_values("nolabel"), [])
        self.assertEqual(h.num_series, len(series))
        keys = sorted(k for k, _, _ in h.select([Matcher("=~", "__name__", ".+")], samples=False))
        self.assertEqual(keys, sorted(encode_labels(labels) for labels in series))

    def push(self, h, label_sets, t):
        """Append one sample at t to each label set; returns {labels tuple: ref}."""
        cols = batch([(dict(l), [(t, 1.0)]) for l in label_sets])
        ok, _ = h.append_batch(*cols)
        self.assertEqual(ok, len(label_sets))
        return {tuple(sorted(l)): h._ref_of(encode_labels(l)) for l in label_sets}

    def test_index_exact_through_churn_gc_and_replay(self):
        """Series created, garbage-collected and created again (reusing freed names and values,
        with the symbol arena compacted in between) leave label names, values, postings and keys
        exactly as a model says, before and after a restart; an empty head holds no symbol."""
        rnd = random.Random(5)
        h = self.open()

        def labels(i, gen):
            out = [("__name__", "metric_%d" % (i % 7)), ("job", "job-%d" % (i % 11)),
                   # long unique values, so dropping them leaves the arena mostly dead
                   ("instance", "host-%06d.%s.example.internal:9100" % (i, gen))]
            if i % 3:
                out.append(("pod", "pod-%d" % (i // 3)))
            if i % 5 == 0:
                out.append(("le", ("0.1", "1", "+Inf")[i % 3]))
            return sorted(out)

        # generation a: most series only have old data and are collected by the truncation
        old = [labels(i, "a") for i in range(3000) if rnd.random() < 0.9]
        live = [labels(i, "a") for i in range(3000, 3300)]
        series = self.push(h, old, 1000)
        series.update(self.push(h, live, 3 * HOUR))
        self.assert_index(h, series)
        before = h.memory_stats()
        self.assertEqual(h.truncate(2 * HOUR), len(old))
        for l in old:
            del series[tuple(l)]
        self.assert_index(h, series)
        after = h.memory_stats()
        self.assertLess(after["index_symbols"], before["index_symbols"] - len(old))
        self.assertLess(after["index_symbol_arena"], before["index_symbol_arena"] // 2)  # compacted
        # generation b reuses freed values (same instance strings as old ones) and new ones
        again = [l for l in old[:500]] + [labels(i, "b") for i in range(4000, 5000)]
        series.update(self.push(h, again, 3 * HOUR + 1000))
        self.assert_index(h, series)
        # the same series pushed again creates nothing
        cols = batch([(dict(l), [(3 * HOUR + 2000, 2.0)]) for l in again[:50]])
        self.assertEqual(h.append_batch(*cols), (50, 0))
        self.assert_index(h, series)
        h = self.reopen(h, min_valid_time=2 * HOUR)
        self.assert_index(h, series)
        # everything collected: nothing of the index is left
        h.truncate(10 * HOUR)
        self.assert_index(h, {})
        self.assertEqual(h.memory_stats()["index_symbols"], 0)
        self.assertEqual(h.label_names(), [])

    def test_refused_batch_leaves_no_symbol_or_posting(self):
        """New series whose every sample is refused are forgotten: no posting, label value or
        symbol remains, and they never reach the WAL."""
        h = self.open()
        series = self.push(h, [[("__name__", "kept"), ("job", "a")]], 3 * HOUR)
        h.truncate(2 * HOUR)     # min valid time 2h: older samples are out of bounds
        stats = h.memory_stats()
        cols = batch([({"__name__": "late", "job": "job-%d" % i, "uniq": "u%d" % i}, [(1000, 1.0)])
                      for i in range(50)] + [({"__name__": "kept", "job": "a"}, [(1000, 1.0)])])
        self.assertEqual(h.append_batch(*cols), (0, 0))
        self.assertEqual(set(cols[-1]), {O.OUT_OF_BOUNDS})
        self.assert_index(h, series)
        after = h.memory_stats()
        self.assertEqual(after["index_symbols"], stats["index_symbols"])
        self.assertEqual(after["index_postings_singletons"], stats["index_postings_singletons"])
        h = self.reopen(h, min_valid_time=2 * HOUR)
        self.assert_index(h, series)

    def test_label_values_order_and_value_unions(self):
        """Values come back in Python's string order (non-ASCII included), and the union of
        many values' postings (regex matchers) equals the union of each value's list."""
        h = self.open()
        values = ["z", "a", "é", "e", "ä", "日本", "a0", "", "Z", "ÿ", "\u0800x", "\U0001F600"]
        label_sets = [[("__name__", "m"), ("i", str(i)), ("v", v)] for i, v in enumerate(values * 30) if v]
        label_sets = [sorted(l) for l in {tuple(l): None for l in label_sets}]
        series = self.push(h, [list(l) for l in label_sets], 1000)
        self.assertEqual(h.label_values("v"), sorted(v for v in values if v))
        for chosen in (["a", "é"], [v for v in values if v], ["日本", "missing", "日本"]):
            want = sorted({ref for labels, ref in series.items() if dict(labels)["v"] in chosen})
            self.assertEqual(list(h.postings_for_values("v", chosen)), want)
        many = [str(i) for i in range(0, 360, 2)] + ["none"]
        want = sorted(ref for labels, ref in series.items() if dict(labels)["i"] in many)
        self.assertEqual(list(h.postings_for_values("i", many)), want)
        self.assertEqual(list(h.postings_for_values("nolabel", ["a"])), [])
        rx = [k for k, _, _ in h.select([Matcher("=~", "v", "a|é|日本")], samples=False)]
        self.assertEqual(sorted(dict(labels_dict(k))["v"] for k in rx).count("a"), 30)

    def test_label_values_sorted_like_python_at_scale(self):
        """Thousands of values sharing long prefixes, differing only past 8-byte boundaries, in
        length alone or by NUL bytes, non-ASCII among them: the C string sort (radix rounds of
        8 bytes, insertion sort for small groups) gives Python's order, through churn too."""
        rng = random.Random(5)
        stems = ["", "a", "prefix-longer-than-eight-", "x" * 15, "x" * 16, "x" * 17, "é日", "\x00"]
        values = set()
        while len(values) < 6000:
            v = rng.choice(stems) + "".join(rng.choice("ab\x00z9é") for _ in range(rng.randrange(0, 12)))
            if v:
                values.add(v)
        values = list(values) + ["x" * k for k in range(1, 40)] + ["\x00" * k for k in range(1, 20)]
        values = list(dict.fromkeys(values))
        rng.shuffle(values)
        h = self.open()
        sets = [[("__name__", "m"), ("v", v)] for v in values]
        for i in range(0, len(sets), 1000):
            self.push(h, sets[i:i + 1000], 1000)
        self.assertEqual(h.label_values("v"), sorted(values))
        self.assertEqual(h.label_values_for("v"), sorted(values))
        for pre in ("x", "x" * 16, "\x00", "\x00\x00", "é", "é日", "prefix-longer", "nomatch", ""):
            self.assertEqual(h.label_values_with_prefix("v", pre),
                             [v for v in sorted(values) if v.startswith(pre)], pre)
        self.assertEqual(h.label_values_with_prefix("nolabel", "x"), [])
        # a range holding all the head's samples answers from the index, as the full scan does
        self.assertEqual(h.label_values_for("v", (), 0, 2000), sorted(values))
        self.assertEqual(h.label_names_for((), 0, 2000), ["__name__", "v"])
        self.assertEqual(h.label_values_for("v", (), 1001, 2000), [])
        self.assertEqual(h.label_names_for((), 1001, 2000), [])
        # with matchers: read from the matched series' keys
        xs = [Matcher("=~", "v", "x.*")]
        self.assertEqual(h.label_values_for("v", xs, 0, 2000), [v for v in sorted(values) if v.startswith("x")])
        self.assertEqual(h.label_values_for("__name__", xs, 0, 2000), ["m"])
        self.assertEqual(h.label_values_for("nolabel", xs, 0, 2000), [])
        self.assertEqual(h.label_names_for(xs, 0, 2000), ["__name__", "v"])
        self.assertEqual(h.label_names_for([Matcher("=", "v", "nomatch")], 0, 2000), [])

    def test_names_and_values_of_keys(self):
        """The label APIs' per-series reading (engine/labels.pyx): distinct, in Python's order,
        empty values absent, malformed keys refused."""
        keys = [encode_labels(l) for l in (
            [("__name__", "up"), ("é", "1"), ("job", "b")], [("job", "a"), ("z", "日本")],
            [("job", "a")], [("a", "x"), ("job", "")], [])]
        self.assertEqual(names_of_keys(keys), ["__name__", "a", "job", "z", "é"])
        self.assertEqual(values_of_keys(keys, "job"), ["a", "b"])
        self.assertEqual(values_of_keys(keys, "z"), ["日本"])
        self.assertEqual(values_of_keys(keys, "nolabel"), [])
        self.assertEqual(names_of_keys([]), [])
        for bad in (b"\x05", b"\x01\x04ab"):
            with self.assertRaises(ValueError):
                names_of_keys([bad])
            with self.assertRaises(ValueError):
                values_of_keys([bad], "a")

    def test_per_metric_limit_counts_from_the_index(self):
        """max_series_per_metric counts a metric's series in the C postings, also after some
        were collected."""
        h = self.open()
        h.max_series_per_metric = 3
        ok, new = h.append_batch(*batch([({"__name__": "m", "i": str(i)}, [(1000, 1.0)]) for i in range(5)]))
        self.assertEqual((ok, new), (3, 3))
        h.append_batch(*batch([({"__name__": "m", "i": "0"}, [(3 * HOUR, 1.0)])]))
        h.truncate(2 * HOUR)            # i=1 and i=2 are collected
        self.assertEqual(h.label_values("i"), ["0"])
        cols = batch([({"__name__": "m", "i": str(i)}, [(3 * HOUR, 1.0)]) for i in range(5, 9)])
        h.append_batch(*cols)
        self.assertEqual(list(cols[-1]), [O.OK, O.OK, O.SERIES_PER_METRIC_LIMIT, O.SERIES_PER_METRIC_LIMIT])
        self.assertEqual(sorted(labels_dict(k)["i"] for k, _, _ in h.select([Matcher("=", "__name__", "m")])),
                         ["0", "5", "6"])


if __name__ == "__main__":
    unittest.main()
