"""Postings set operations against Python set arithmetic, for both ref widths."""
import random
import threading
import unittest
from array import array

from hypothesis import given, strategies as st

from urdar.engine import postings

WIDTHS = {"I": 2**32 - 1, "Q": 2**64 - 1}


def plist(typecode, values):
    return array(typecode, sorted(set(values)))


def id_sets(typecode, max_size=200):
    # Small universes make overlaps likely; a few huge ids exercise the full width.
    top = WIDTHS[typecode]
    elems = st.one_of(st.integers(0, 300), st.integers(top - 5, top), st.integers(0, top))
    return st.sets(elems, max_size=max_size)


def long_and_short(typecode):
    # Length ratios that select the merge, skip-scan and galloping paths.
    return st.tuples(st.sets(st.integers(0, 5000), min_size=0, max_size=2000),
                     st.sets(st.integers(0, 5000), max_size=40))


class PostingsSetOpsTests(unittest.TestCase):
    @given(st.sampled_from("IQ").flatmap(lambda tc: st.tuples(st.just(tc), id_sets(tc), id_sets(tc))))
    def test_binary_ops_match_sets(self, args):
        """intersect, union, subtract and intersects give the same refs as set arithmetic."""
        tc, x, y = args
        a, b = plist(tc, x), plist(tc, y)
        for got, want in ((postings.intersect(a, b), x & y), (postings.union(a, b), x | y),
                          (postings.subtract(a, b), x - y), (postings.subtract(b, a), y - x)):
            self.assertEqual(got.typecode, tc)
            self.assertEqual(list(got), sorted(want))
        self.assertEqual(postings.intersects(a, b), bool(x & y))

    @given(st.sampled_from("IQ"), long_and_short("I"))
    def test_lopsided_lengths(self, tc, sets):
        """Very different list lengths (galloping, skip-scan) give exact results both ways round."""
        big, small = sets
        a, b = plist(tc, big), plist(tc, small)
        self.assertEqual(list(postings.intersect(a, b)), sorted(big & small))
        self.assertEqual(list(postings.intersect(b, a)), sorted(big & small))
        self.assertEqual(list(postings.subtract(a, b)), sorted(big - small))
        self.assertEqual(list(postings.subtract(b, a)), sorted(small - big))
        self.assertEqual(postings.intersects(a, b), bool(big & small))

    @given(st.sampled_from("IQ").flatmap(lambda tc: st.tuples(st.just(tc), st.lists(id_sets(tc, 60), max_size=12))))
    def test_many_way_ops_match_sets(self, args):
        """union_many and intersect_many equal the set union/intersection of every list."""
        tc, sets = args
        lists = [plist(tc, s) for s in sets]
        self.assertEqual(list(postings.union_many(lists, typecode=tc)), sorted(set().union(*sets)))
        if sets:
            got = postings.intersect_many(lists)
            self.assertEqual(got.typecode, tc)
            self.assertEqual(list(got), sorted(set.intersection(*sets)))

    @given(st.sampled_from("IQ"), st.lists(st.sets(st.integers(0, 3000), max_size=50), min_size=3, max_size=40))
    def test_dense_union_uses_exact_bitmap(self, tc, sets):
        """Many lists over a dense id range (bitmap path) still union exactly."""
        lists = [plist(tc, s) for s in sets]
        self.assertEqual(list(postings.union_many(lists)), sorted(set().union(*sets)))

    @given(st.sampled_from("IQ").flatmap(lambda tc: st.tuples(st.just(tc), id_sets(tc), st.integers(0, WIDTHS[tc]))))
    def test_contains(self, args):
        """contains finds exactly the members of the list."""
        tc, x, probe = args
        a = plist(tc, x)
        for v in list(x)[:20] + [probe]:
            self.assertEqual(postings.contains(a, v), v in x)

    def test_empty_inputs(self):
        """Empty lists give empty results of the same width, never an error."""
        for tc in "IQ":
            e, a = array(tc), array(tc, [1, 2, 3])
            self.assertEqual(postings.intersect(e, a), array(tc))
            self.assertEqual(postings.intersect(a, e), array(tc))
            self.assertEqual(postings.subtract(a, e), a)
            self.assertEqual(postings.subtract(e, a), array(tc))
            self.assertEqual(postings.union(e, e), array(tc))
            self.assertEqual(postings.union_many([], typecode=tc), array(tc))
            self.assertEqual(postings.union_many([e, e, e]), array(tc))
            self.assertEqual(postings.intersect_many([a, e, a]), array(tc))
            self.assertFalse(postings.contains(e, 1))
            self.assertFalse(postings.intersects(e, a))

    def test_results_are_new_arrays(self):
        """Results never alias the inputs: mutating them leaves the inputs intact."""
        a = array("Q", [1, 2, 3])
        for out in (postings.intersect_many([a]), postings.subtract(a, array("Q")), postings.union_many([a])):
            out.append(99)
            self.assertEqual(a, array("Q", [1, 2, 3]))

    def test_refuses_wrong_types(self):
        """Mixed widths, signed or float arrays and non-buffers raise TypeError."""
        with self.assertRaises(TypeError):
            postings.intersect(array("I", [1]), array("Q", [1]))
        with self.assertRaises(TypeError):
            postings.union_many([array("Q", [1]), array("I", [1]), array("Q", [2])])
        for bad in (array("i", [1]), array("d", [1.0]), b"\x01\x00\x00\x00", [1, 2]):
            with self.assertRaises(TypeError):
                postings.subtract(bad, bad)
        with self.assertRaises(ValueError):
            postings.union_many([])
        with self.assertRaises(ValueError):
            postings.intersect_many([])

    def test_accepts_memoryviews(self):
        """A memoryview over a uint64 array works like the array itself."""
        a = array("Q", [1, 5, 9])
        self.assertEqual(postings.intersect(memoryview(a), array("Q", [5])), array("Q", [5]))

    def test_is_set(self):
        """is_set accepts strictly ascending lists and rejects unsorted or duplicated ones."""
        self.assertTrue(postings.is_set(array("I", [])))
        self.assertTrue(postings.is_set(array("I", [1, 2, 2**32 - 1])))
        self.assertFalse(postings.is_set(array("Q", [1, 1])))
        self.assertFalse(postings.is_set(array("Q", [2, 1])))

    def test_inputs_pinned_while_in_use(self):
        """An input array cannot be resized while another thread runs an operation on it."""
        big = array("Q", range(0, 6_000_000, 2))
        other = array("Q", range(0, 6_000_000, 3))
        errors = []

        def grow():
            for _ in range(200):
                try:
                    big.append(10**10)
                    big.pop()
                except BufferError:
                    errors.append(1)
        t = threading.Thread(target=grow)
        t.start()
        for _ in range(5):
            self.assertEqual(len(postings.union(big, other)), 4_000_000)
        t.join()
        # no assertion on errors: BufferError is the expected, safe outcome of a race


class PostingsLargeTests(unittest.TestCase):
    def test_large_random_lists(self):
        """Lists of hundreds of thousands of ids give the same answers as sets."""
        for seed in range(3):
            rnd = random.Random(seed)
            x = set(rnd.sample(range(2_000_000), 200_000))
            y = set(rnd.sample(range(2_000_000), 20_000))
            z = set(rnd.sample(range(2_000_000), 3_000))
            a, b, c = plist("I", x), plist("I", y), plist("I", z)
            self.assertEqual(list(postings.intersect(a, b)), sorted(x & y))
            self.assertEqual(list(postings.intersect_many([a, b, c])), sorted(x & y & z))
            self.assertEqual(list(postings.union_many([a, b, c])), sorted(x | y | z))
            self.assertEqual(list(postings.subtract(a, c)), sorted(x - z))


if __name__ == "__main__":
    unittest.main()
