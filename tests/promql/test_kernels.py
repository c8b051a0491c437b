"""Tests for the batch kernels of urdar/promql/kernels.pyx: whole-node range/instant evaluation,
aggregation feeding, topk/bottomk/limitk selection and the JSON number text of query results."""
import math
import random
import struct
import unittest
from array import array

from hypothesis import given, settings, strategies as st

from urdar.promql import kernels as K
from urdar.handlers import render as R
from urdar.promql import evaluator as E

floats = st.floats(allow_nan=True, allow_infinity=True, width=64)
small_vals = st.sampled_from([0.0, 1.0, 1.0, 2.0, 3.5, -1.0, math.nan, math.inf, -math.inf])


class FormatTests(unittest.TestCase):
    """Sample values and timestamps render exactly as the Python renderer writes them."""

    @given(floats)
    @settings(max_examples=2000)
    def test_format_value_matches_renderer(self, v):
        """Every float, including -0, NaN, infinities and subnormals, gets Prometheus' text."""
        self.assertEqual(K.format_value(v), R.format_value(v))

    @given(st.integers(min_value=0, max_value=2 ** 64 - 1))
    @settings(max_examples=2000)
    def test_format_value_any_bit_pattern(self, bits):
        """Arbitrary bit patterns (any exponent) format like the renderer."""
        v = struct.unpack("<d", struct.pack("<Q", bits))[0]
        self.assertEqual(K.format_value(v), R.format_value(v))

    @given(st.lists(st.tuples(st.integers(min_value=-2 ** 62, max_value=2 ** 62), floats), max_size=50))
    def test_format_points_matches_renderer(self, pts):
        """A matrix series' points render as `[t,"v"],...` with the renderer's text."""
        ts = array("q", [t for t, _ in pts])
        vs = array("d", [v for _, v in pts])
        want = ",".join('[%s,"%s"]' % (R.format_timestamp(t), R.format_value(v)) for t, v in pts)
        self.assertEqual(K.format_points(ts, vs), want)

    def test_format_value_bulk_against_repr(self):
        """The C shortest-digits code agrees with the renderer (Python's repr digits) on a few
        hundred thousand values: random bit patterns, subnormals, powers of two and ten and
        their neighbours, integers, short decimals and counter-like rates."""
        rnd = random.Random(12)
        vals = [struct.unpack("<d", struct.pack("<Q", rnd.getrandbits(64)))[0]
                for _ in range(60000)]
        vals += [struct.unpack("<d", struct.pack("<Q", rnd.getrandbits(52)))[0]
                 for _ in range(10000)]                                     # subnormals
        for e in range(-1074, 1024):
            x = math.ldexp(1.0, e)
            vals += [x, math.nextafter(x, 0.0), math.nextafter(x, math.inf)]
        for e in range(-323, 309):
            x = float("1e%d" % e)
            vals += [x, math.nextafter(x, 0.0), math.nextafter(x, math.inf)]
        vals += [float(rnd.randrange(-2 ** 60, 2 ** 60)) for _ in range(20000)]
        vals += [rnd.randrange(10 ** 6) / 10 ** rnd.randrange(8) for _ in range(30000)]
        vals += [rnd.uniform(0, 40) / rnd.choice((3.0, 7.0, 300.0, 299.985)) for _ in range(30000)]
        vals += [5e-324, 2.2250738585072014e-308, 2.2250738585072009e-308, 1.7976931348623157e308,
                 9007199254740993.0, 0.1, 0.2, 0.3, 1 / 3, 2 / 3, 123456789012345678.0]
        vals = [v for v in vals if math.isfinite(v)]
        ts = array("q", range(len(vals)))
        got = K.format_points(ts, array("d", vals)).split(",")
        for i, v in enumerate(vals):
            want = '"%s"]' % R.format_value(v)
            if got[2 * i + 1] != want:
                self.fail("%r: got %s, want %s" % (v, got[2 * i + 1], want))

    @given(st.lists(st.tuples(st.integers(min_value=-2 ** 62, max_value=2 ** 62), floats), max_size=50))
    def test_format_points_offsets(self, pts):
        """The bytes form carries format_points' text and where each point's `[t,"v"]` starts."""
        ts = array("q", [t for t, _ in pts])
        vs = array("d", [v for _, v in pts])
        text, offs = K.format_points_offsets(ts, vs)
        self.assertEqual(text.decode("ascii"), K.format_points(ts, vs))
        self.assertEqual(len(offs), len(pts) + 1)
        self.assertEqual(offs[-1], len(text) + 1)
        for i, (t, v) in enumerate(pts):
            self.assertEqual(text[offs[i]:offs[i + 1] - 1].decode("ascii"),
                             '[%s,"%s"]' % (R.format_timestamp(t), R.format_value(v)))

    def test_format_points_length_mismatch(self):
        """Timestamp and value arrays of different lengths are refused."""
        with self.assertRaises(ValueError):
            K.format_points(array("q", [1, 2]), array("d", [1.0]))


def _reference_k(op, vals, masks, groups, ngroups, param, n):
    """The evaluator's former per-step Python selection (Go heap mechanics)."""
    out = [bytearray(n) for _ in vals]
    ordered = []
    for k in range(n):
        kk = min(int(param[k]), len(vals))
        if kk < 1:
            continue
        heaps = [None] * ngroups
        for si in range(len(vals)):
            if not masks[si][k]:
                continue
            h = heaps[groups[si]]
            if h is None:
                h = heaps[groups[si]] = []
            x = vals[si][k]
            less = E._less_top if op == "topk" else E._less_bottom
            if op == "limitk":
                if len(h) < kk:
                    h.append((x, si))
            elif len(h) < kk:
                E._heap_push(h, (x, si), less)
            elif ((op == "topk" and h[0][0] < x) or (op == "bottomk" and h[0][0] > x)
                  or (math.isnan(h[0][0]) and not math.isnan(x))):
                h[0] = (x, si)
                if kk > 1:
                    E._heap_fix(h, 0, less)
        for h in heaps:
            if not h:
                continue
            if op != "limitk":
                less = E._less_top if op == "topk" else E._less_bottom
                h = E._insertion_sort(h, lambda a, b, less=less: less(b, a))
            for _, si in h:
                out[si][k] = 1
                ordered.append(si)
    return out, ordered


class SelectKTests(unittest.TestCase):
    """topk/bottomk/limitk pick the same series as Prometheus' heap, ties and NaN included."""

    @given(st.data())
    @settings(max_examples=300)
    def test_matches_reference(self, data):
        """Random series, groups, k and presence select the same series in the same order."""
        op = data.draw(st.sampled_from(["topk", "bottomk", "limitk"]))
        n = data.draw(st.integers(1, 4))
        ns = data.draw(st.integers(0, 12))
        ngroups = data.draw(st.integers(1, 3))
        vals = [array("d", data.draw(st.lists(small_vals, min_size=n, max_size=n))) for _ in range(ns)]
        masks = [bytearray(data.draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)))
                 for _ in range(ns)]
        groups = [data.draw(st.integers(0, ngroups - 1)) for _ in range(ns)]
        param = array("d", data.draw(st.lists(st.sampled_from([0.0, 1.0, 2.0, 2.7, 5.0, 100.0]),
                                              min_size=n, max_size=n)))
        want, want_order = _reference_k(op, vals, masks, groups, ngroups, param, n)
        got = [bytearray(n) for _ in range(ns)]
        order = K.select_k(K.KOPS[op], vals, masks, array("q", groups), ngroups, param, got, True)
        self.assertEqual(got, want)
        self.assertEqual(order, want_order)

    def test_group_index_checked(self):
        """A group index outside [0, ngroups) is refused rather than written out of bounds."""
        with self.assertRaises(IndexError):
            K.select_k(K.KOPS["topk"], [array("d", [1.0])], [bytearray(b"\x01")], array("q", [3]),
                       1, array("d", [1.0]), [bytearray(1)], False)


class BatchTests(unittest.TestCase):
    """The many-series kernels give exactly what one call per series gives."""

    @given(st.lists(st.lists(st.tuples(st.integers(0, 300), floats), max_size=20), max_size=6),
           st.sampled_from(sorted(K.RANGE_FUNCS)), st.integers(1, 120))
    @settings(max_examples=300)
    def test_range_values_many(self, raw, fname, range_ms):
        """Every range function over several series equals per-series range_values."""
        fid = K.RANGE_FUNCS[fname]
        ends = array("q", range(0, 320, 20))
        n = len(ends)
        p1 = array("d", [0.5] * n)
        p2 = array("d", [0.5] * n)
        tss, vss = [], []
        for pts in raw:
            d = dict(pts)
            tss.append(array("q", sorted(d)))
            vss.append(array("d", [d[t] for t in sorted(d)]))
        got = K.range_values_many(fid, tss, vss, ends, range_ms, p1, p2, ends)
        want = []
        for i, (ts, vs) in enumerate(zip(tss, vss)):
            out = array("d", bytes(8 * n))
            mask = bytearray(n)
            if K.range_values(fid, ts, vs, ends, range_ms, p1, p2, ends, out, mask):
                want.append((i, out, mask))
        self.assertEqual([(i, struct.pack("%dd" % n, *o), m) for i, o, m in got],
                         [(i, struct.pack("%dd" % n, *o), m) for i, o, m in want])

    def test_instant_values_many(self):
        """Lookback picks the newest sample per step; stale markers and gaps leave steps empty."""
        stale = struct.unpack("<d", struct.pack("<Q", 0x7FF0000000000002))[0]
        tss = [array("q", [0, 10, 20]), array("q", [100]), array("q", [0, 5])]
        vss = [array("d", [1, 2, stale]), array("d", [7]), array("d", [3, 4])]
        got = K.instant_values_many(tss, vss, array("q", [5, 15, 25]), 10)
        self.assertEqual([(i, list(v), list(t), list(m), c) for i, v, t, m, c in got],
                         [(0, [1.0, 2.0, 0.0], [0, 10, 0], [1, 1, 0], 2),
                          (2, [4.0, 0.0, 0.0], [5, 0, 0], [1, 0, 0], 1)])

    def test_compress(self):
        """Only present steps are kept, with their times."""
        ts, vs = K.compress(array("q", [1, 2, 3]), array("d", [1.0, 2.0, 3.0]), bytearray(b"\x01\x00\x01"))
        self.assertEqual((list(ts), list(vs)), ([1, 3], [1.0, 3.0]))

    def test_claim_steps(self):
        """Claiming steps twice reports the duplicate; disjoint claims accumulate."""
        taken = bytearray(b"\x01\x00\x00")
        self.assertFalse(K.claim_steps(taken, b"\x00\x01\x00"))
        self.assertEqual(taken, bytearray(b"\x01\x01\x00"))
        self.assertTrue(K.claim_steps(taken, b"\x00\x01\x01"))

    def test_aggregate_many(self):
        """Feeding a whole list equals adding series one at a time."""
        a = K.Aggregator(K.AGGREGATIONS["sum"], 2, 2)
        K.aggregate_many(a, [array("d", [1, 2]), array("d", [3, 4]), array("d", [5, 6])],
                         [bytearray(b"\x01\x01"), bytearray(b"\x01\x00"), bytearray(b"\x01\x01")],
                         array("q", [0, 0, 1]))
        out = array("d", [0, 0])
        mask = bytearray(2)
        a.result(0, out, mask)
        self.assertEqual((list(out), list(mask)), ([4.0, 2.0], [1, 1]))


if __name__ == "__main__":
    unittest.main()


class LimitRatioTests(unittest.TestCase):
    """limit_ratio's sampler hashes labels as Prometheus' labels.Hash does (xxHash64)."""

    def test_xxh64_reference_vectors(self):
        """Short, tail and 32-byte stripe paths give the published XXH64 (seed 0) values."""
        for data, want in [(b"", 0xEF46DB3751D8E999), (b"abc", 0x44BC2CF5AD770999),
                           (b"Nobody inspects the spammish repetition", 0xFBCEA83C8A378BF1),
                           (b"The quick brown fox jumps over the lazy dog", 0x0B242D361FDA71BC),
                           (bytes(range(100)), 0x6AC1E58032166597)]:
            self.assertEqual(K.xxh64(data), want)

    def test_label_bytes_layout(self):
        """Each name and value is length-prefixed; lengths of 255 and more take four bytes."""
        self.assertEqual(E._label_bytes((("a", "xy"),)), b"\x01a\x02xy")
        long = "v" * 300
        self.assertEqual(E._label_bytes((("a", long),)),
                         b"\x01a\xff\x2c\x01\x00" + long.encode())

    def test_ratio_and_its_complement_split_the_series(self):
        """limit_ratio(r) and limit_ratio(r - 1) select disjoint sets covering every series."""
        offsets = [E._sample_offset((("__name__", "m"), ("i", str(i)))) for i in range(200)]
        self.assertTrue(all(0.0 <= o <= 1.0 for o in offsets))
        for r in (0.0, 0.2, 0.5, 0.9):
            a = {i for i, o in enumerate(offsets) if E._ratio_sample(r, o)}
            b = {i for i, o in enumerate(offsets) if E._ratio_sample(r - 1.0, o)}
            self.assertEqual(a & b, set())
            self.assertEqual(a | b, set(range(200)))
        picked = sum(E._ratio_sample(0.5, o) for o in offsets)
        self.assertTrue(60 < picked < 140, picked)


class StartTimestampTests(unittest.TestCase):
    """Start timestamps reveal counter resets the values hide and anchor increase's left edge."""

    def run_st(self, fn, ts, vs, sts, end, rng):
        res = K.st_range_many(K.RANGE_FUNCS[fn], [array("q", ts)], [array("d", vs)],
                              [array("q", sts)], array("q", [end]), rng)
        return [(list(ov), list(m), ovl) for _, ov, m, ovl in res]

    def test_reset_seen_through_start_time(self):
        """A start time after the previous sample is a reset although the value grew."""
        self.assertEqual(self.run_st("resets", [60_000, 120_000], [5, 7], [1, 90_000], 120_000,
                                     300_000), [([1.0], [1], False)])
        # ST equal to the previous sample's time: a delta sample only if that one's ST is known.
        self.assertEqual(self.run_st("resets", [60_000, 120_000], [1, 1], [0, 60_000], 120_000,
                                     300_000), [([0.0], [1], False)])
        self.assertEqual(self.run_st("resets", [60_000, 120_000], [1, 1], [1, 60_000], 120_000,
                                     300_000), [([1.0], [1], False)])

    def test_increase_from_zero_at_start_time_and_overlap(self):
        """One sample whose start time lies in the window increases from zero there; a start
        time before the previous sample (and not equal to its start) is an overlap."""
        self.assertEqual(self.run_st("increase", [180_000], [3], [150_000], 360_000, 300_000),
                         [([3.0], [1], False)])
        self.assertEqual(self.run_st("increase", [60_000, 120_000], [1, 2], [1, 30_000], 120_000,
                                     300_000)[0][2], True)


class SlidingExtremeTests(unittest.TestCase):
    """max/min_over_time use a sliding deque: the values equal a scan of every window (NaN only
    when the window holds nothing else, ties keep the earlier sample, so -0 and 0 come out as
    the scan picks them), also when the step ends jump back."""

    @staticmethod
    def scan(fn, ts, vs, ends, rng):
        out = []
        for e in ends:
            w = [v for t, v in zip(ts, vs) if e - rng < t <= e]
            if not w:
                out.append(None)
                continue
            best = w[0]
            for v in w:
                if (fn == "max_over_time" and v > best) or (fn == "min_over_time" and v < best) \
                        or math.isnan(best):
                    best = v
            out.append(best)
        return out

    @given(st.lists(st.sampled_from([0.0, -0.0, 1.0, 1.0, 2.5, -3.0, math.nan, math.inf,
                                     -math.inf]), max_size=40),
           st.lists(st.integers(min_value=-5, max_value=60), min_size=1, max_size=30),
           st.integers(min_value=1, max_value=25), st.sampled_from(["max_over_time",
                                                                    "min_over_time"]))
    @settings(max_examples=1500)
    def test_matches_window_scan(self, vs, ends, rng, fn):
        ts = list(range(0, 2 * len(vs), 2))
        got = K.range_values_many(K.RANGE_FUNCS[fn], [array("q", ts)], [array("d", vs)],
                                  array("q", ends), rng, array("d"), array("d"),
                                  array("q", ends))
        want = self.scan(fn, ts, vs, ends, rng)
        if not got:
            self.assertTrue(all(w is None for w in want))
            return
        _, ov, mask = got[0]
        for k, w in enumerate(want):
            self.assertEqual(bool(mask[k]), w is not None)
            if w is not None:
                # Bit for bit: -0.0 and 0.0 differ, NaN is NaN.
                self.assertEqual(struct.pack("<d", ov[k]) if not math.isnan(w) else "nan",
                                 struct.pack("<d", w) if not math.isnan(w) else "nan")
