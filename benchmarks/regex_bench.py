"""Regex matcher cost: urdar's RE2 general path against Python's backtracking `re` (the engine
it replaced) on label values that take no fast path, plus one pathological pattern where only
RE2 stays linear. Fixed seed; prints `name: value unit` lines and `ratio: R` (RE2 / re)."""
import os
import random
import re
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from urdar.engine.matchers import Regex  # noqa: E402

PATTERNS = ["job-[0-9]+x", "(?i:api-(eu|us))-[a-z]+[0-9]{2}", "[a-z]+\\.[a-z]+:[0-9]+"]


def values(n, seed=7):
    rnd = random.Random(seed)
    hosts = ["api-eu-web12", "api-us-db03", "job-%d", "node%d.prod:9100", "Api-EU-cache07"]
    return [rnd.choice(hosts).replace("%d", str(rnd.randrange(10000))) for _ in range(n)]


def per_value_us(fn, vals):
    t0 = time.perf_counter()
    for v in vals:
        fn(v)
    return (time.perf_counter() - t0) / len(vals) * 1e6


def main():
    vals = values(100_000)
    ratios = []
    for p in PATTERNS:
        r = Regex(p)
        assert r.kind == "regex", (p, r.kind)
        py = re.compile("(?s:%s)\\Z" % p)
        assert [r.matches(v) for v in vals[:2000]] == [py.match(v) is not None for v in vals[:2000]]
        ours = per_value_us(r.matches, vals)
        ref = per_value_us(py.match, vals)
        print("match %s re2: %.2f us/value" % (p, ours))
        print("match %s python_re: %.2f us/value" % (p, ref))
        ratios.append(ours / ref)
    evil = Regex("(a+)+b")
    for n in (40, 1_000_000):
        t0 = time.perf_counter()
        evil.matches("a" * n)
        print("pathological (a+)+b over %d a's re2: %.4f s" % (n, time.perf_counter() - t0))
    t0 = time.perf_counter()
    re.match("(?s:(a+)+b)\\Z", "a" * 22)
    print("pathological (a+)+b over 22 a's python_re: %.4f s" % (time.perf_counter() - t0))
    print("ratio: %.2f" % (sum(ratios) / len(ratios)))


if __name__ == "__main__":
    main()
