"""Postings set operations at index scale: urdar.engine.postings against Python sets.

Fixed seed; ids drawn from a 10M universe (a block with millions of series). Prints
`name: value unit` lines and `ratio: R` (set / urdar) per operation."""
import random
import time
from array import array

from urdar.engine import postings


def best_ms(fn, repeat=7):
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def sorted_sample(rng, universe, n, typecode):
    return array(typecode, sorted(rng.sample(range(universe), n)))


def main():
    rng = random.Random(42)
    for tc in ("Q", "I"):
        big = sorted_sample(rng, 10_000_000, 1_000_000, tc)
        for small_n in (100_000, 10_000, 1_000):
            small = sorted_sample(rng, 10_000_000, small_n, tc)
            ms = best_ms(lambda: postings.intersect(big, small))
            sb, ss = set(big), set(small)
            ref = best_ms(lambda: ss & sb, repeat=3)
            print("intersect_%s_1M_x_%d: %.3f ms" % (tc, small_n, ms))
            print("ratio: %.1f" % (ref / ms))
        sub = best_ms(lambda: postings.subtract(big, small))
        print("subtract_%s_1M_minus_1k: %.3f ms" % (tc, sub))
        lists = [sorted_sample(rng, 10_000_000, 10, tc) for _ in range(100_000)]
        ms = best_ms(lambda: postings.union_many(lists), repeat=3)
        print("union_many_%s_100k_lists_x_10: %.2f ms" % (tc, ms))
        lists = [sorted_sample(rng, 10_000_000, 100_000, tc) for _ in range(10)]
        ms = best_ms(lambda: postings.union_many(lists), repeat=3)
        print("union_many_%s_10_lists_x_100k: %.2f ms" % (tc, ms))


if __name__ == "__main__":
    main()
