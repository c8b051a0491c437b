"""Native histograms in PromQL: the arithmetic (promql/histograms.py) on hand-computed cases,
and queries over histograms rendered as the Prometheus API writes them, through the querier's
rendering and through the scheduler/frontend round trip."""

import json
import math
import unittest
from array import array

from tests.support.headstore import HeadStore
from urdar.components import frontend as F
from urdar.components.scheduler import result_from_json
from urdar.engine.histogram import (
    COUNTER_RESET, GAUGE_TYPE, NOT_COUNTER_RESET, FloatHistogram, Histogram)
from urdar.handlers import render as R
from urdar.handlers.querier import _render_text_matrix
from urdar.promql import histograms as H
from urdar.promql.engine import Engine


def fh(**kw):
    return FloatHistogram(**kw)


class ArithmeticTests(unittest.TestCase):
    def test_add_reduces_to_the_lower_schema(self):
        """Schema 1 buckets merge pairwise into schema 0 before adding; empty buckets go."""
        a = fh(schema=1, count=6, sum=10, positive_spans=[(1, 4)], positive_buckets=[1, 2, 0, 3])
        b = fh(schema=0, count=2, sum=3, positive_spans=[(0, 2)], positive_buckets=[1, 1])
        r, collision, reconciled = H.add(a, b)
        # schema 1 index i -> schema 0 index ((i-1)>>1)+1: 1->1, 2->1, 3->2, 4->2
        self.assertEqual((r.schema, r.count, r.sum), (0, 8, 13))
        self.assertEqual(r.positive_spans, [(0, 3)])
        self.assertEqual(r.positive_buckets, [1, 4, 3])
        self.assertFalse(collision or reconciled)

    def test_sub_widens_the_narrower_zero_bucket(self):
        """The other histogram's buckets inside the wider zero bucket count as zero bucket."""
        a = fh(zero_threshold=1.0, zero_count=5, count=9, sum=0, positive_spans=[(1, 1)],
               positive_buckets=[4])
        b = fh(zero_threshold=0.0, zero_count=1, count=4, sum=0, positive_spans=[(-1, 3)],
               positive_buckets=[1, 1, 1])
        r, _, _ = H.sub(a, b)
        # b's buckets (0.25,0.5] and (0.5,1] fall into a's zero bucket [-1,1]: 1 + 1 + 1 = 3
        self.assertEqual((r.zero_threshold, r.zero_count, r.count), (1.0, 2, 5))
        self.assertEqual((r.positive_spans, r.positive_buckets), ([(1, 1)], [3]))

    def test_mixing_custom_and_exponential_is_refused(self):
        with self.assertRaises(H.IncompatibleSchema):
            H.add(fh(schema=-53, custom_values=[1]), fh(schema=0))

    def test_reset_detection(self):
        prev = fh(count=5, positive_spans=[(0, 2)], positive_buckets=[2, 3])
        self.assertFalse(H.detect_reset(fh(count=6, positive_spans=[(0, 2)],
                                           positive_buckets=[2, 4]), prev))
        # a bucket went down although the count went up
        self.assertTrue(H.detect_reset(fh(count=7, positive_spans=[(0, 3)],
                                          positive_buckets=[1, 3, 3]), prev))
        # a populated bucket disappeared
        self.assertTrue(H.detect_reset(fh(count=9, positive_spans=[(1, 1)],
                                          positive_buckets=[9]), prev))
        # the hints decide without looking
        self.assertTrue(H.detect_reset(fh(count=9, counter_reset_hint=COUNTER_RESET), prev))
        self.assertFalse(H.detect_reset(fh(count=0, counter_reset_hint=NOT_COUNTER_RESET), prev))

    def test_quantile_fraction_and_stddev(self):
        # schema 0: bucket 1 is (1,2], bucket 2 is (2,4]
        h = fh(count=4, sum=10, positive_spans=[(1, 2)], positive_buckets=[2, 2])
        self.assertEqual(H.quantile(0.5, h), (2.0, None))
        # rank 1 of 2 in (1,2], interpolated on the log scale: 2**0.5
        self.assertAlmostEqual(H.quantile(0.25, h)[0], math.sqrt(2))
        self.assertEqual(H.quantile(1.5, h)[0], math.inf)
        self.assertAlmostEqual(H.fraction(0, 2, h)[0], 0.5)
        self.assertAlmostEqual(H.fraction(2, 4, h)[0], 0.5)
        # geometric bucket means sqrt(2) and sqrt(8) around the mean 2.5
        want = (2 * (math.sqrt(2) - 2.5) ** 2 + 2 * (math.sqrt(8) - 2.5) ** 2) / 4
        self.assertAlmostEqual(H.stdvar(h), want)

    def test_scaling_and_trim(self):
        h = fh(count=4, sum=10, positive_spans=[(1, 2)], positive_buckets=[2, 2],
               counter_reset_hint=NOT_COUNTER_RESET)
        d = H.scale(h, -0.5)
        self.assertEqual((d.count, d.sum, d.positive_buckets), (-2, -5, [-1, -1]))
        self.assertEqual(d.counter_reset_hint, GAUGE_TYPE)
        z = H.divide(h, 0)
        self.assertEqual((z.count, z.positive_buckets), (math.inf, []))
        # keep observations below 2: all of (1,2], none of (2,4]
        t = H.trim(h, 2.0, True)
        self.assertEqual((t.count, t.positive_buckets), (2, [2]))
        self.assertAlmostEqual(t.sum, 2 * math.sqrt(2))

    def test_integer_histograms_convert(self):
        h = Histogram(count=6, sum=1, positive_spans=[(0, 3)], positive_buckets=[1, 1, 1])
        self.assertEqual(H.as_float(h).positive_buckets, [1.0, 2.0, 3.0])


def _store():
    st = HeadStore()
    first = fh(count=4, sum=10, positive_spans=[(1, 2)], positive_buckets=[2, 2])
    second = fh(count=8, sum=21, zero_threshold=0.001, zero_count=1,
                positive_spans=[(1, 2)], positive_buckets=[3, 4])
    st.append_histograms({"__name__": "lat", "job": "a"}, [(0, first), (60_000, second)])
    st.append({"__name__": "up", "job": "a"}, [(0, 1.0), (60_000, 1.0)])
    return st


class RenderTests(unittest.TestCase):
    """Queries over native histograms, written as the Prometheus HTTP API writes them."""

    def setUp(self):
        self.store = _store()
        self.engine = Engine(self.store)

    def tearDown(self):
        self.store.close()

    def test_instant_vector_histogram_field(self):
        res = self.engine.instant("lat", 60_000)
        self.assertEqual(
            R.render_result(res),
            '{"resultType":"vector","result":[{"metric":{"__name__":"lat","job":"a"},'
            '"histogram":[60,{"count":"8","sum":"21","buckets":[[3,"-0.001","0.001","1"],'
            '[0,"1","2","3"],[0,"2","4","4"]]}]}]}')

    def test_functions_and_mixed_vectors(self):
        res = self.engine.instant('label_replace(histogram_count(lat), "k", "x", "", "") or up',
                                  60_000)
        self.assertEqual(sorted((dict(l)["__name__"] if "__name__" in dict(l) else "", v)
                                for l, v in res.value), [("", 8.0), ("up", 1.0)])
        rate = self.engine.instant("rate(lat[2m])", 60_000).value[0][1]
        # increase 4 over 60s, extrapolated to the window start (60s before the first sample,
        # within 1.1 sample intervals; the zero point is as far): 8 per 120s
        self.assertAlmostEqual(rate.count, 8 / 120)
        self.assertEqual(rate.counter_reset_hint, GAUGE_TYPE)

    def test_range_matrix_histograms_field(self):
        res = self.engine.range("lat", 0, 60_000, 60_000)
        want = ('{"resultType":"matrix","result":[{"metric":{"__name__":"lat","job":"a"},'
                '"histograms":[[0,{"count":"4","sum":"10","buckets":[[0,"1","2","2"],'
                '[0,"2","4","2"]]}],[60,{"count":"8","sum":"21","buckets":'
                '[[3,"-0.001","0.001","1"],[0,"1","2","3"],[0,"2","4","4"]]}]]}]}')
        self.assertEqual(R.render_result(res), want)
        # A querier's answer read back by the scheduler renders to the same bytes, and so does
        # the frontend's rendered form (split and cached answers).
        body = R.envelope(R.render_result(res), (), ())
        back = result_from_json(body.encode() if isinstance(body, str) else body)
        self.assertEqual(R.render_result(back), want)
        text = _render_text_matrix(F.from_matrix(back.value), (), ())
        self.assertEqual(json.loads(text)["data"], json.loads(want))
        parts = F.merge_pieces([F.from_matrix(back.value)])
        self.assertEqual(F.decode_extents(F.encode_extents([F.Extent(0, 60_000, parts)]))[0]
                         .matrix, parts)

    def test_mixed_float_and_histogram_series(self):
        self.store.append({"__name__": "lat", "job": "a"}, [(120_000, 5.0)])
        res = self.engine.range("lat", 60_000, 120_000, 60_000)
        (item,) = res.value
        self.assertEqual((list(item[1]), list(item[2]), list(item[3])),
                         ([120_000], [5.0], [60_000]))
        doc = json.loads(R.render_result(res))
        self.assertEqual(doc["result"][0]["values"], [[120, "5"]])
        self.assertEqual(doc["result"][0]["histograms"][0][0], 60)

    def test_interleaved_floats_and_histograms_load_in_time_order(self):
        # One load with a series going histogram -> float -> histogram -> float (promqltest
        # appends each series in time order): every sample reaches the head and reads back.
        st = HeadStore()
        self.addCleanup(st.close)
        a, b = fh(count=2, sum=1), fh(count=5, sum=3)
        st.append_histograms({"__name__": "mix"}, [(0, a), (120_000, b)])
        st.append({"__name__": "mix"}, [(60_000, 7.0), (180_000, 9.0), (120_000, 1.0)])
        # a histogram loaded later at a float's time replaces it, as a later load line does
        st.append_histograms({"__name__": "mix"}, [(180_000, b)])
        doc = json.loads(R.render_result(Engine(st).range("mix", 0, 180_000, 60_000)))
        (series,) = doc["result"]
        self.assertEqual(series["values"], [[60, "7"], [120, "1"]])
        self.assertEqual([p[0] for p in series["histograms"]], [0, 180])
        self.assertEqual(Engine(st).instant("count_over_time(mix[4m])", 180_000).value[0][1],
                         4.0)

    def test_matrix_of_a_range_selector(self):
        res = self.engine.instant("lat[2m]", 60_000)
        self.assertEqual([list(x[3]) for x in res.value], [[0, 60_000]])
        self.assertEqual(array("q", res.value[0][1]), array("q"))


class ShardingTests(unittest.TestCase):
    """The frontend's outer evaluation of a sharded query sees shard answers' histograms."""

    def test_shard_histograms_reach_the_outer_sum(self):
        from urdar.components.querysharding import EmbeddedQueryable
        from urdar.engine.matchers import Matcher
        h = fh(count=4, sum=10, positive_spans=[(1, 2)], positive_buckets=[2, 2])
        q = EmbeddedQueryable({"x": [((("job", "a"),), array("q"), array("d"),
                                      array("q", [60_000]), [h]),
                                     ((("job", "b"),), array("q"), array("d"),
                                      array("q", [60_000]), [h])]})
        res = Engine(q).instant('sum({__queries__="x"})', 60_000)
        self.assertEqual(res.value[0][1].count, 8)
        # answers read back from the API's JSON cannot be computed on: a clear 422 error
        from urdar.promql.value import JsonHistogram, QueryError
        q = EmbeddedQueryable({"x": [((("job", "a"),), array("q"), array("d"),
                                      array("q", [60_000]), [JsonHistogram("{}")])]})
        with self.assertRaises(QueryError):
            q.select([Matcher("=", "__queries__", "x")], 0, 60_000)


if __name__ == "__main__":
    unittest.main()
