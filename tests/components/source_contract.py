"""One contract every components/sources.Source passes (as tests/storage/contract.py is for buckets).

A concrete test case mixes `SourceContract` into a SynchronousTestCase and implements
`make_source(series)`: a source serving tenant "t" with `series` ({labels tuple: [(t ms, v)]}),
everything fired by the time the test looks (inline pools, fake clock). With `local = True` the
selects go through the source's `select_local` instead (the call a pool thread makes), which must
answer exactly as `select` does."""
from twisted.internet import defer

from urdar.engine.labels import decode_labels
from urdar.engine.matchers import Matcher
from urdar.promql.selectors import SelectHints

DATA = {
    (("__name__", "up"), ("instance", "1"), ("job", "a")): [(t, t / 1000) for t in range(1000, 11000, 1000)],
    (("__name__", "up"), ("instance", "1"), ("job", "b")): [(t, -t / 1000) for t in range(1000, 11000, 1000)],
    (("__name__", "http_total"), ("code", "200"), ("job", "a")): [(2000, 5.0), (9000, 7.5)],
    (("__name__", "http_total"), ("code", "500"), ("job", "a")): [(9500, 1.0)],
}


def eq(name, value):
    return Matcher("=", name, value)


class SourceContract:
    local = False

    def make_source(self, series):
        raise NotImplementedError

    def setUp(self):
        super().setUp()
        self.source = self.make_source(DATA)

    def read(self, d):
        self.assertIsInstance(d, defer.Deferred)
        return self.successResultOf(d)

    def select(self, matchers, tenant="t", **hints):
        if self.local:
            call = self.source.select_local(tenant, tuple(matchers), SelectHints(**hints))
            self.assertTrue(callable(call))
            got = call()
        else:
            got = self.read(self.source.select(tenant, tuple(matchers), SelectHints(**hints)))
        return [(tuple(decode_labels(bytes(k))), None if ts is None else list(zip(ts, vs)))
                for k, ts, vs in got]

    def test_select_in_label_order_within_range(self):
        """A select returns the matching series in label order, samples inside [mint, maxt] only."""
        got = self.select([eq("__name__", "up")], mint=3000, maxt=5000)
        self.assertEqual([k for k, _ in got], sorted(k for k in DATA if k[0] == ("__name__", "up")))
        self.assertEqual(got[0][1], [(3000, 3.0), (4000, 4.0), (5000, 5.0)])
        self.assertEqual(got[1][1], [(3000, -3.0), (4000, -4.0), (5000, -5.0)])

    def test_series_without_samples_outside_range_are_left_out(self):
        """A series with no sample in the range is not returned."""
        got = self.select([eq("__name__", "http_total")], mint=9200, maxt=20000)
        self.assertEqual([dict(k)["code"] for k, _ in got], ["500"])

    def test_regex_and_negative_matchers(self):
        """Regex and negative matchers select as Prometheus' do."""
        got = self.select([Matcher("=~", "job", "a|c"), Matcher("!=", "code", "500")])
        self.assertEqual([k for k, _ in got], [
            (("__name__", "http_total"), ("code", "200"), ("job", "a")),
            (("__name__", "up"), ("instance", "1"), ("job", "a"))])

    def test_series_hint_returns_label_sets_only(self):
        """func="series" asks for label sets: no sample arrays come back."""
        got = self.select([eq("job", "a")], func="series", mint=0, maxt=20000)
        self.assertEqual(len(got), 3)
        self.assertTrue(all(s is None for _, s in got))

    def test_limit_hint_keeps_the_first_series(self):
        """A limit returns at most that many series, the first in label order."""
        got = self.select([eq("__name__", "up")], limit=1)
        self.assertEqual([dict(k)["job"] for k, _ in got], ["a"])

    def test_other_tenant_reads_empty(self):
        """A tenant with no data reads as empty, not as an error."""
        self.assertEqual(self.select([eq("__name__", "up")], tenant="nobody"), [])
        self.assertEqual(self.read(self.source.label_names("nobody", (), SelectHints())), [])

    def test_label_names(self):
        """Label names are sorted and limited to series matching the matchers."""
        self.assertEqual(self.read(self.source.label_names("t", (eq("__name__", "up"),), SelectHints())),
                         ["__name__", "instance", "job"])
        self.assertEqual(self.read(self.source.label_names("t", (), SelectHints())),
                         ["__name__", "code", "instance", "job"])

    def test_label_values(self):
        """Label values are sorted, follow the matchers and honour the limit hint."""
        self.assertEqual(self.read(self.source.label_values("t", "job", (), SelectHints())), ["a", "b"])
        self.assertEqual(self.read(self.source.label_values(
            "t", "code", (eq("__name__", "http_total"),), SelectHints())), ["200", "500"])
        self.assertEqual(self.read(self.source.label_values("t", "job", (), SelectHints(limit=1))),
                         ["a"])
