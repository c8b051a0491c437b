"""Regression tests for what the fuzzers found, each fixed at its root."""
import unittest

from tests.fuzz import targets as T
from tests.support.headstore import HeadStore
from urdar.components.limits import parse_runtime_config
from urdar.components.options import ConfigError
from urdar.promql.engine import Engine, QueryError


class RuntimeConfigFindings(unittest.TestCase):
    def test_overrides_that_is_not_a_mapping(self):
        """`overrides:` holding a list or a string is a ConfigError naming it, not a crash."""
        for text in ("overrides:\n- a\n", "overrides: .\n", "overrides: 3\n"):
            with self.subTest(text=text):
                with self.assertRaises(ConfigError) as cm:
                    parse_runtime_config(text, "rc.yaml")
                self.assertEqual(str(cm.exception), "rc.yaml: overrides must be a mapping of tenants to limits")


class TrimOperatorFindings(unittest.TestCase):
    def test_trim_operators_on_floats_are_a_query_error(self):
        """`</` and `>/` (native-histogram trims) between scalars are a query error, not a 500;
        over float samples they drop the samples with Prometheus 3's info annotation."""
        st = HeadStore()
        self.addCleanup(st.close)
        st.append({"__name__": "up"}, [(0, 1.0)])
        e = Engine(st)
        with self.assertRaises(QueryError) as cm:
            e.instant("0</0", 1000)
        self.assertIn('operator "</" not allowed for Scalar operations', str(cm.exception))
        for q, sides in (("up >/ 1", 'float >/ float'), ("1 </ up", 'float </ float')):
            with self.subTest(q=q):
                res = e.instant(q, 1000)
                self.assertEqual(res.value, [])
                self.assertEqual(res.infos, [
                    'PromQL info: incompatible sample types encountered for binary operator '
                    '"%s": %s (1:1)' % (q.split()[1], sides)])

    def test_trim_operator_over_http_is_4xx(self):
        """GET /api/v1/query?query=0</0 answers 4xx through the whole process."""
        host = T._ProcessHost.get()
        code, _ = T._status(host, host.treq.get(
            "http://urdar/prometheus/api/v1/query?query=0%3C%2F0&time=1700000000",
            headers={"X-Scope-OrgID": "t1"}))
        self.assertEqual(code, 422)
