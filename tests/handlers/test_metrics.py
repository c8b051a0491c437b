"""/metrics of the whole process (Modules, real engine TSDBs, StubTreq): every counter urdar keeps
under a Mimir name moves when the action behind it happens, read back with prometheus_client's
text parser; gauges show the current state; every family has HELP text."""
import shutil
import tempfile

import cramjam
from prometheus_client.parser import text_string_to_metric_families
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.support.threads import inline_offload
from urdar.app import config as C
from urdar.app.modules import Modules
from urdar.engine.remotewrite import encode_write_request

NOW_S = 1_700_000_000.0
NOW_MS = int(NOW_S * 1000)
HOUR_MS = 3600_000
PUSH_HEADERS = {"Content-Encoding": ["snappy"], "Content-Type": ["application/x-protobuf"],
                "X-Prometheus-Remote-Write-Version": ["0.1.0"], "X-Scope-OrgID": ["team-a"]}


def series(name="up", job="a", samples=((NOW_MS, 1.0),), exemplars=()):
    return ([("__name__", name), ("job", job)], list(samples), list(exemplars))


class MetricsTests(SynchronousTestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="urdar-metrics-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        cfg, _ = C.load(["-blocks-storage.tsdb.dir=" + self.dir, "-target=distributor,ingester,querier,query-frontend",
                         "-ingester.max-global-exemplars-per-user=100"])
        self.clock = Clock()
        self.clock.advance(NOW_S)
        self.m = Modules(cfg, None, self.clock, offload=inline_offload(
            (("decode", 1, 10), ("append", 1, 10), ("compact", 1, 10), ("admin", 1, 10), ("query", 1, 10))))
        self.successResultOf(self.m.start())
        self.addCleanup(lambda: self.successResultOf(self.m.stop()))
        self.treq = StubTreq(self.m.resource())

    # ---- helpers ------------------------------------------------------------------------------

    def push(self, items, metadata=(), expect=200):
        body = bytes(cramjam.snappy.compress_raw(encode_write_request(items, metadata=metadata)))
        resp = self.successResultOf(self.treq.post("http://urdar/api/v1/push", data=body,
                                                   headers=PUSH_HEADERS))
        self.successResultOf(resp.content())
        self.assertEqual(resp.code, expect)

    def scrape(self):
        """{(sample name, sorted labels): value} and {family name: (type, help)} of /metrics."""
        resp = self.successResultOf(self.treq.get("http://urdar/metrics"))
        text = self.successResultOf(resp.text())
        values, families = {}, {}
        for fam in text_string_to_metric_families(text):
            families[fam.name] = (fam.type, fam.documentation)
            for s in fam.samples:
                values[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return values, families

    def value(self, name, **labels):
        return self.scrape()[0].get((name, tuple(sorted(labels.items()))), 0.0)

    def assertMoves(self, action, name, by=None, **labels):
        before = self.value(name, **labels)
        action()
        after = self.value(name, **labels)
        if by is None:
            self.assertGreater(after, before, "%s%r did not move" % (name, labels))
        else:
            self.assertEqual(after - before, by, "%s%r moved by %s" % (name, labels, after - before))

    # ---- distributor --------------------------------------------------------------------------

    def test_distributor_request_and_sample_counters(self):
        """A push moves requests in/received, samples in/received for its tenant."""
        self.push([series(samples=((NOW_MS - 1000, 0.0),))])      # the tenant's TSDB exists now
        for name, by in (("cortex_distributor_requests_in_total", 1),
                         ("cortex_distributor_received_requests_total", 1),
                         ("cortex_distributor_samples_in_total", 2),
                         ("cortex_distributor_received_samples_total", 2)):
            t = self.clock.seconds()
            self.clock.advance(10)
            self.assertMoves(lambda: self.push([series(samples=((int(t * 1000) + 5000, 1.0),
                                                                 (int(t * 1000) + 6000, 2.0)))]),
                             name, by=by, user="team-a")

    def test_distributor_exemplar_and_metadata_counters(self):
        """Exemplars and metadata entries are counted in and received per tenant."""
        for name in ("cortex_distributor_exemplars_in_total", "cortex_distributor_received_exemplars_total"):
            self.clock.advance(1)
            t = int(self.clock.seconds() * 1000)
            self.assertMoves(lambda: self.push([series(samples=((t, 1.0),),
                                                       exemplars=[([("trace_id", "x%d" % t)], t, 1.0)])]),
                             name, by=1, user="team-a")
        meta = [(1, "up", "whether the target is up", "")]
        for name in ("cortex_distributor_metadata_in_total", "cortex_distributor_received_metadata_total"):
            self.assertMoves(lambda: self.push([], metadata=meta), name, by=1, user="team-a")

    def test_discarded_samples_by_reason(self):
        """A sample older than the series' newest is counted as discarded with Mimir's reason."""
        self.push([series(samples=((NOW_MS, 1.0),))])
        self.assertMoves(lambda: self.push([series(samples=((NOW_MS - 60_000, 1.0),))], expect=400),
                         "cortex_discarded_samples_total", by=1, reason="sample-out-of-order", user="team-a")
        self.assertMoves(lambda: self.push([([("job", "x")], [(NOW_MS, 1.0)])], expect=400),
                         "cortex_discarded_samples_total", by=1, reason="missing_metric_name", user="team-a")

    # ---- ingester -----------------------------------------------------------------------------

    def test_ingester_counters_and_gauges(self):
        """Ingested samples, created series, exemplars and metadata move; memory gauges follow."""
        self.push([series(job="warm")])
        values, _ = self.scrape()
        users = values[("cortex_ingester_memory_users", ())]
        self.assertEqual(users, 1)
        self.clock.advance(1)
        t = int(self.clock.seconds() * 1000)
        self.assertMoves(lambda: self.push([series(job="b", samples=((t, 1.0), (t + 1, 2.0)))]),
                         "cortex_ingester_ingested_samples_total", by=2, user="team-a")
        self.assertMoves(lambda: self.push([series(job="c", samples=((t, 1.0),))]),
                         "cortex_ingester_memory_series_created_total", by=1, user="team-a")
        self.assertMoves(lambda: self.push([series(job="d", samples=((t, 1.0),))]),
                         "cortex_ingester_memory_series", by=1)
        self.assertMoves(lambda: self.push([series(job="e", samples=((t, 1.0),),
                                                   exemplars=[([("trace_id", "t1")], t, 1.0)])]),
                         "cortex_ingester_ingested_exemplars_total", by=1)
        self.assertMoves(lambda: self.push([], metadata=[(1, "up", "up or not", "")]),
                         "cortex_ingester_ingested_metadata_total", by=1)
        self.assertMoves(lambda: self.push([series(job="e", samples=((t - 60_000, 1.0),))], expect=400),
                         "cortex_ingester_ingested_samples_failures_total", by=1, user="team-a")

    def test_head_compaction_counter(self):
        """Cutting a block out of a tenant's head counts one TSDB compaction."""
        for i in range(0, 4 * HOUR_MS, 15 * 60_000):
            self.push([series(samples=((NOW_MS - 4 * HOUR_MS + i, 1.0),))])
        self.assertMoves(lambda: self.successResultOf(self.m.ingester.compact_heads()),
                         "cortex_ingester_tsdb_compactions_total")

    # ---- querier ------------------------------------------------------------------------------

    def test_query_stats(self):
        """A PromQL query (through the query-frontend, query stats on by default) adds its
        wall-clock time and the series, chunks and chunk bytes it read to the tenant's counters."""
        self.push([series(job="a"), series(job="b")])

        def query():
            resp = self.successResultOf(self.treq.get(
                "http://urdar/prometheus/api/v1/query?query=up&time=%d" % NOW_S,
                headers={"X-Scope-OrgID": ["team-a"]}))
            self.assertEqual(resp.code, 200)
            self.successResultOf(resp.content())
        self.assertMoves(query, "cortex_query_fetched_series_total", by=2, user="team-a")
        before = self.scrape()[0]
        query()
        key = ("cortex_query_seconds_total", (("sharded", "false"), ("user", "team-a")))
        self.assertIn(key, self.scrape()[0])
        self.assertIn(key, before)
        self.assertMoves(query, "cortex_query_fetched_chunks_total", by=2, user="team-a")
        self.assertMoves(query, "cortex_query_fetched_chunk_bytes_total", by=32, user="team-a")

    def test_ingester_query_counters(self):
        """Each select the querier sends to the ingester is counted, with the series it returned."""
        self.push([series(job="a"), series(job="b"), series(name="other")])

        def query():
            resp = self.successResultOf(self.treq.get(
                "http://urdar/prometheus/api/v1/query?query=up&time=%d" % NOW_S,
                headers={"X-Scope-OrgID": ["team-a"]}))
            self.successResultOf(resp.content())
        self.assertMoves(query, "cortex_ingester_queries_total", by=1)
        self.assertMoves(query, "cortex_ingester_queried_series_sum", by=2)
        self.assertMoves(query, "cortex_ingester_queried_samples_count", by=1)

    # ---- HTTP server --------------------------------------------------------------------------

    def test_request_duration_and_inflight(self):
        """Each request is observed by route and status; the scrape itself is in flight while rendered."""
        self.assertMoves(lambda: self.push([series()]), "cortex_request_duration_seconds_count",
                         by=1, method="POST", route="api_v1_push", status_code="200", ws="false")
        values, _ = self.scrape()
        self.assertEqual(values[("cortex_inflight_requests", (("method", "GET"), ("route", "metrics")))], 1)
        self.assertEqual(values[("cortex_inflight_requests", (("method", "POST"), ("route", "api_v1_push")))], 0)

    def test_every_family_has_help(self):
        """Every metric family on /metrics has HELP text, and the Mimir families named in issue 6 exist."""
        self.push([series()])
        _, families = self.scrape()
        for name, (_type, doc) in families.items():
            self.assertTrue(doc, "no HELP for %s" % name)
        for name in ("cortex_distributor_received_samples", "cortex_distributor_samples_in",
                     "cortex_distributor_requests_in", "cortex_discarded_samples",
                     "cortex_distributor_received_exemplars", "cortex_distributor_received_metadata",
                     "cortex_ingester_memory_series", "cortex_ingester_memory_users",
                     "cortex_ingester_ingested_samples", "cortex_ingester_ingested_samples_failures",
                     "cortex_ingester_tsdb_compactions", "cortex_ingester_queries",
                     "cortex_ingester_queried_series", "cortex_request_duration_seconds",
                     "cortex_inflight_requests", "cortex_query_seconds"):
            self.assertIn(name, families)
