"""The Prometheus API's JSON text: Go float formatting of values, millisecond timestamps, escaping."""
import json
import math
import struct
import unittest

from hypothesis import given, strategies as st

from urdar.handlers import render as R


class FormatValueTests(unittest.TestCase):
    def test_go_formatting_table(self):
        """Values read exactly as Prometheus writes them, including its exponent switch points."""
        cases = [
            (0.0, "0"), (-0.0, "-0"), (1.0, "1"), (-2.5, "-2.5"), (0.1 + 0.2, "0.30000000000000004"),
            (1e21, "1e+21"), (1e20, "100000000000000000000"), (123456789012345680000.0, "123456789012345680000"),
            (1e-6, "0.000001"), (1e-7, "1e-07"), (9.999e-7, "9.999e-07"), (1.5e-5, "0.000015"),
            (1e16, "10000000000000000"), (1e100, "1e+100"), (-1.25e22, "-1.25e+22"),
            (5e-324, "5e-324"), (1.7976931348623157e308, "1.7976931348623157e+308"),
            (math.inf, "+Inf"), (-math.inf, "-Inf"), (math.nan, "NaN"), (100.0, "100"),
            (0.001, "0.001"), (12345.678, "12345.678"), (2 ** 53, "9007199254740992"),
        ]
        for v, want in cases:
            self.assertEqual(R.format_value(v), want, v)

    def test_stale_marker_is_nan(self):
        """A staleness marker (a NaN with special bits) renders as NaN."""
        stale = struct.unpack("<d", struct.pack("<Q", 0x7ff0000000000002))[0]
        self.assertEqual(R.format_value(stale), "NaN")

    @given(st.floats(allow_nan=False, allow_infinity=False))
    def test_round_trips(self, v):
        """Every finite value parses back to the same float (shortest round-trip digits)."""
        text = R.format_value(v)
        self.assertEqual(float(text), v)
        self.assertEqual(math.copysign(1, float(text)), math.copysign(1, v))
        a = abs(v)
        self.assertEqual("e" in text, a != 0 and (a < 1e-6 or a >= 1e21), text)


class TimestampTests(unittest.TestCase):
    def test_seconds_with_three_decimals(self):
        """Whole seconds are bare integers; others have exactly three decimals."""
        self.assertEqual(R.format_timestamp(1500), "1.500")
        self.assertEqual(R.format_timestamp(1_700_000_000_000), "1700000000")
        self.assertEqual(R.format_timestamp(1_700_000_000_005), "1700000000.005")
        self.assertEqual(R.format_timestamp(50), "0.050")
        self.assertEqual(R.format_timestamp(-1500), "-1.500")
        self.assertEqual(R.format_timestamp(0), "0")


class EnvelopeTests(unittest.TestCase):
    def test_vector_and_matrix_json(self):
        """Vectors and matrices are valid JSON in Prometheus' shape with string values."""
        body = R.envelope(R.render_vector([((("__name__", "up"), ("job", "a<b>")), 1.0)], 1500))
        self.assertIn(b'"job":"a\\u003cb\\u003e"', body)
        self.assertEqual(json.loads(body), {"status": "success", "data": {"resultType": "vector", "result": [
            {"metric": {"__name__": "up", "job": "a<b>"}, "value": [1.5, "1"]}]}})
        body = R.envelope(R.render_matrix([((("a", "é"),), [1000, 2001], [0.5, math.inf])]),
                          warnings=["w1"], infos=["i1"])
        self.assertEqual(body.decode(), '{"status":"success","data":{"resultType":"matrix","result":'
                         '[{"metric":{"a":"é"},"values":[[1,"0.5"],[2.001,"+Inf"]]}]},'
                         '"warnings":["w1"],"infos":["i1"]}')

    def test_scalar_string_and_errors(self):
        """Scalars, strings and errors have the Prometheus layout."""
        self.assertEqual(R.render_scalar(1000, -0.0), '{"resultType":"scalar","result":[1,"-0"]}')
        self.assertEqual(R.render_string(1000, 'a"b'), '{"resultType":"string","result":[1,"a\\"b"]}')
        self.assertEqual(R.error_body("bad_data", "x & y"),
                         b'{"status":"error","errorType":"bad_data","error":"x \\u0026 y"}')
        self.assertEqual(R.envelope(None), b'{"status":"success","data":null}')


class LabelsMemoTests(unittest.TestCase):
    """The one label-JSON memo (bytes) stays bounded, and a high-cardinality result neither
    flushes other label sets out of it nor changes a byte of any answer."""

    def setUp(self):
        self._saved = (R._memo_young, R._memo_old, R._MEMO_GEN_MAX, R._MEMO_ADMIT_MAX)
        R._memo_young, R._memo_old = {}, {}
        R._MEMO_GEN_MAX, R._MEMO_ADMIT_MAX = 100, 20
        self.addCleanup(self._restore)

    def _restore(self):
        R._memo_young, R._memo_old, R._MEMO_GEN_MAX, R._MEMO_ADMIT_MAX = self._saved

    def test_big_results_do_not_flush_and_answers_stay_exact(self):
        hot = (("__name__", "up"), ("job", "api"))
        want = '{"__name__":"up","job":"api"}'
        self.assertEqual(R.labels_json(hot), want)
        first = R.labels_json_bytes(hot)
        self.assertEqual(first, want.encode())
        # another tenant's series listing with 10x the memo's size, rendered again and again
        big = [(("__name__", "m"), ("id", "v%d" % i), ("q", '"<%d>' % i)) for i in range(1000)]
        for _ in range(3):
            text = R.render_series(big)
            self.assertEqual(json.loads(text), [dict(lbl) for lbl in big])
            self.assertIn('"\\u003c7\\u003e', text)
            body = R.render_matrix([(lbl, [1000], [1.0]) for lbl in big])
            self.assertEqual(len(json.loads(body)["result"]), 1000)
        self.assertLessEqual(len(R._memo_young) + len(R._memo_old), 2 * R._MEMO_GEN_MAX)
        self.assertIs(R.labels_json_bytes(hot), first, "the hot label set was flushed")

    def test_small_results_rotate_generations_within_the_bound(self):
        hot = (("a", "1"),)
        first = R.labels_json_bytes(hot)
        for k in range(30):
            # results under the admission size: they enter the memo and rotate it...
            R.render_vector([((("i", "%d.%d" % (k, j)),), 1.0) for j in range(10)], 0)
            # ...while a label set in use each generation stays
            self.assertIs(R.labels_json_bytes(hot), first)
            self.assertLessEqual(len(R._memo_young) + len(R._memo_old), 2 * R._MEMO_GEN_MAX)
        self.assertEqual(len(R._memo_young) + len(R._memo_old) > R._MEMO_GEN_MAX, True)
        # a label set not seen for two generations is gone (bounded, not kept forever)
        self.assertNotIn((("i", "0.0"),), R._memo_young)
        self.assertNotIn((("i", "0.0"),), R._memo_old)
        self.assertEqual(R.labels_json((("i", "0.0"),)), '{"i":"0.0"}')
