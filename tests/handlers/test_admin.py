"""Admin pages through the whole composition root (Modules) with StubTreq and a fake TSDB."""
import yaml
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.support.tmp import mktemp
from tests.support.fake_ingester import FakeTSDB
from tests.support.threads import ManualThreadPool, InlineReactor, inline_offload
from urdar.app import config as C
from urdar.app.modules import Modules
from urdar.net.offload import Offload

RUNTIME = """
overrides:
  t1:
    ingestion_rate: 5
    creation_grace_period: 1m
"""


def modules(argv=(), files=None, offload=None):
    files = files or {}
    cfg, _ = C.load(list(argv) + ["-blocks-storage.tsdb.dir=/nonexistent-urdar-test"],
                    read_file=lambda p: files[p])
    return Modules(cfg, None, Clock(), offload=offload or inline_offload(), tsdb_factory=FakeTSDB,
                   read_file=lambda p: files[p])


class AdminTests(SynchronousTestCase):
    def setUp(self):
        self.m = modules(["-runtime-config.file=rt.yaml"], {"rt.yaml": RUNTIME})
        self.m.ingester.data_dir = mktemp(self)
        self.treq = StubTreq(self.m.resource())

    def get(self, path, headers=None):
        resp = self.successResultOf(self.treq.get("http://urdar" + path, headers=headers))
        return resp.code, self.successResultOf(resp.text()), resp.headers

    def test_ready_only_after_start_and_until_stop(self):
        """/ready is 503 before start-up finished, 200 while running and 503 once stopping."""
        code, text, _ = self.get("/ready")
        self.assertEqual(code, 503)
        self.successResultOf(self.m.start())
        self.assertEqual(self.get("/ready")[:2], (200, "ready\n"))
        self.successResultOf(self.m.stop())
        self.assertEqual(self.get("/ready")[0], 503)

    def test_ready_waits_for_wal_replay(self):
        """While the ingester replays its WAL (compact pool busy) /ready stays 503."""
        pools = {}

        def factory(workers, name):
            pools[name] = ManualThreadPool(workers, name)
            return pools[name]
        off = Offload(InlineReactor(), factory)
        for name in ("decode", "append", "compact", "admin"):
            off.add_pool(name, 1, 10)
        m = modules(offload=off)
        m.ingester.data_dir = mktemp(self)
        treq = StubTreq(m.resource())
        d = m.start()
        self.assertEqual(self.successResultOf(treq.get("http://urdar/ready")).code, 503)
        pools["compact"].run_all()
        self.successResultOf(d)
        self.assertEqual(self.successResultOf(treq.get("http://urdar/ready")).code, 200)

    def test_index_links_every_page(self):
        """GET / links every GET page and lists the others."""
        code, page, _ = self.get("/")
        self.assertEqual(code, 200)
        for path in ("/ready", "/metrics", "/config", "/services", "/runtime_config",
                     "/api/v1/status/buildinfo", "/prometheus/api/v1/status/buildinfo",
                     "/ingester/flush", "/api/v1/user_stats"):
            self.assertIn('href="%s"' % path, page)
        self.assertIn("POST /api/v1/push", page)

    def test_config_modes(self):
        """/config renders YAML; mode=diff only changes; mode=defaults only defaults; others 400."""
        code, text, headers = self.get("/config")
        self.assertEqual(code, 200)
        self.assertEqual(yaml.safe_load(text)["server"]["http_listen_port"], 8080)
        diff = yaml.safe_load(self.get("/config?mode=diff")[1])
        self.assertEqual(diff["runtime_config"], {"file": ["rt.yaml"]})
        self.assertNotIn("server", diff)
        defaults = yaml.safe_load(self.get("/config?mode=defaults")[1])
        self.assertEqual(defaults["blocks_storage"]["tsdb"]["dir"], "./tsdb/")
        self.assertEqual(self.get("/config?mode=bogus")[0], 400)

    def test_runtime_config(self):
        """/runtime_config shows each overridden tenant's limits with the defaults filled in; it is
        404 without a runtime file."""
        code, text, _ = self.get("/runtime_config")
        self.assertEqual(code, 200)
        t1 = yaml.safe_load(text)["overrides"]["t1"]
        self.assertEqual((t1["ingestion_rate"], t1["creation_grace_period"]), (5.0, "1m"))
        self.assertEqual(t1["max_global_series_per_user"], 150000)       # a default, filled in
        self.assertEqual(t1["ingestion_burst_size"], 200000)
        self.assertEqual(self.m.overrides.for_tenant("t1").ingestion_rate, 5.0)
        self.assertEqual(self.m.overrides.for_tenant("t2").ingestion_rate, 10000.0)
        other = modules()
        code, _, _ = (lambda r: (r.code, None, None))(
            self.successResultOf(StubTreq(other.resource()).get("http://urdar/runtime_config")))
        self.assertEqual(code, 404)

    def test_runtime_config_diff(self):
        """/runtime_config?mode=diff shows only the values that differ from the defaults; a tenant
        overriding nothing but default values is left out; an unknown mode is 400."""
        m = modules(["-runtime-config.file=rt.yaml", "-distributor.ingestion-rate-limit=5"],
                    {"rt.yaml": RUNTIME + "  t2:\n    max_global_series_per_user: 150000\n"})
        treq = StubTreq(m.resource())
        resp = self.successResultOf(treq.get("http://urdar/runtime_config?mode=diff"))
        self.assertEqual(resp.code, 200)
        # t1's ingestion_rate 5 equals the (flag-set) default now, only its grace period differs.
        self.assertEqual(yaml.safe_load(self.successResultOf(resp.text())),
                         {"overrides": {"t1": {"creation_grace_period": "1m"}}})
        resp = self.successResultOf(treq.get("http://urdar/runtime_config?mode=bogus"))
        self.assertEqual(resp.code, 400)

    def test_metrics(self):
        """/metrics exposes process metrics and the cortex_* series in the text format."""
        self.successResultOf(self.m.start())
        self.get("/ready")
        code, text, headers = self.get("/metrics")
        self.assertEqual(code, 200)
        self.assertIn(b"text/plain", headers.getRawHeaders(b"Content-Type")[0].encode()
                      if isinstance(headers.getRawHeaders(b"Content-Type")[0], str)
                      else headers.getRawHeaders(b"Content-Type")[0])
        for name in ("process_cpu_seconds_total", "cortex_ingester_memory_series",
                     "cortex_request_duration_seconds_bucket", 'route="ready"',
                     "cortex_discarded_samples_total", "cortex_distributor_received_samples_total"):
            self.assertIn(name, text)

    def test_buildinfo_under_prefixes(self):
        """Build info is served at /api/v1/status/buildinfo and under both API prefixes."""
        import json
        for prefix in ("", "/prometheus", "/alertmanager"):
            code, text, _ = self.get(prefix + "/api/v1/status/buildinfo")
            self.assertEqual(code, 200)
            info = json.loads(text)
            self.assertEqual(info["status"], "success")
            self.assertIn("version", info["data"])

    def test_services(self):
        """/services lists running and not-yet-implemented components."""
        self.successResultOf(self.m.start())
        code, page, _ = self.get("/services")
        self.assertIn("<td>ingester</td><td>Running</td>", page)
        self.assertIn("<td>querier</td><td>Running</td>", page)
        self.assertIn("<td>store-gateway</td><td>", page)
        self.assertNotIn("<td>store-gateway</td><td>Not implemented yet</td>", page)

    def test_flush_and_shutdown(self):
        """/ingester/flush?tenant=..&wait=true cuts those heads; /ingester/shutdown makes /ready 503."""
        self.successResultOf(self.m.start())
        self.successResultOf(self.m.ingester.push("t1", _one_series()))
        self.successResultOf(self.m.ingester.push("t2", _one_series()))
        resp = self.successResultOf(self.treq.post("http://urdar/ingester/flush?tenant=t2&wait=true"))
        self.assertEqual(resp.code, 204)
        self.assertEqual({db.dir.rsplit("/", 1)[1]: db.cuts for db in FakeTSDB.instances[-2:]},
                         {"t1": [], "t2": [True]})
        resp = self.successResultOf(self.treq.get("http://urdar/ingester/shutdown"))
        self.assertEqual(resp.code, 204)
        self.assertEqual(self.get("/ready")[0], 503)
        self.assertTrue(all(db.closed for db in FakeTSDB.instances[-2:]))

    def test_distributor_alone_pushes_through_the_ring(self):
        """-target=distributor alone writes to the ingesters of the ingester ring: with none in
        it a push fails with 503 naming the empty ring."""
        import cramjam
        from urdar.components.replication import RingIngesterClient
        from urdar.engine.remotewrite import encode_write_request
        m = modules(["-target=distributor"])
        self.assertIsNone(m.ingester)
        self.assertIsInstance(m.distributor.ingesters, RingIngesterClient)
        self.successResultOf(m.start())
        body = cramjam.snappy.compress_raw(encode_write_request(
            [([("__name__", "up")], [(1, 1.0)])])).read()
        resp = self.successResultOf(StubTreq(m.resource()).post(
            "http://urdar/api/v1/push", data=body, headers={"X-Scope-OrgID": "t",
                                                            "Content-Type": "application/x-protobuf"}))
        self.assertEqual(resp.code, 503)
        self.assertIn(b"empty ring", self.successResultOf(resp.content()))

    def test_unknown_runtime_key_fails_start(self):
        """An unknown limit in the runtime config fails start-up naming it."""
        with self.assertRaises(C.ConfigError) as e:
            modules(["-runtime-config.file=rt.yaml"], {"rt.yaml": "overrides:\n  t1:\n    ingestion_rat: 1\n"})
        self.assertIn("overrides.t1.ingestion_rat", str(e.exception))


def _one_series():
    from tests.components.test_ingester import batch
    return batch(({"__name__": "up"}, [(1, 1.0)]))
