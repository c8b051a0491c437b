"""The module table (app/modules.py): -target resolution, start/stop order, /services, pools."""
import os

from treq.testing import StubTreq
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.support.fake_ingester import FakeTSDB
from tests.support.threads import InlineReactor, ManualThreadPool, inline_offload
from tests.support.tmp import mktemp
from urdar.app import config as C
from urdar.app.modules import MODULES, Module, Modules, resolve
from urdar.components.options import ConfigError
from urdar.net.offload import Offload


def modules(test, argv=(), offload=None):
    d = mktemp(test)
    cfg, _ = C.load(list(argv) + ["-blocks-storage.tsdb.dir=%s/tsdb" % d,
                                  "-blocks-storage.filesystem.dir=%s/blocks" % d,
                                  "-blocks-storage.bucket-store.sync-dir=%s/sync" % d,
                                  "-compactor.data-dir=%s/compactor" % d,
                                  "-ruler-storage.filesystem.dir=%s/ruler" % d,
                                  "-alertmanager-storage.filesystem.dir=%s/alertmanager" % d,
                                  "-alertmanager.storage.path=%s/alertmanager-state" % d])
    return Modules(cfg, InlineReactor(), Clock(), offload=offload or inline_offload(), tsdb_factory=FakeTSDB)


class ResolveTests(SynchronousTestCase):
    def test_dependencies_come_first(self):
        """-target=ingester also runs what the ingester needs, each before its dependents."""
        self.assertEqual(resolve(("ingester",)), ["server", "runtime-config", "memberlist-kv", "ring",
                                                  "ingester"])

    def test_optional_order_only_when_both_run(self):
        """The querier starts after an in-process ingester and store-gateway but does not pull them in."""
        self.assertEqual(resolve(("querier",)),
                         ["server", "runtime-config", "memberlist-kv", "ring", "querier"])
        order = resolve(("querier", "store-gateway", "ingester"))
        self.assertLess(order.index("ingester"), order.index("querier"))
        self.assertLess(order.index("store-gateway"), order.index("querier"))

    def test_unknown_module_and_cycles_refused(self):
        """An unknown module or a dependency cycle fails start-up naming it."""
        with self.assertRaises(ConfigError) as e:
            resolve(("nope",))
        self.assertIn("nope", str(e.exception))
        table = {"a": Module(None, ("b",)), "b": Module(None, ("a",))}
        with self.assertRaises(ConfigError) as e:
            resolve(("a",), table)
        self.assertIn("a -> b -> a", str(e.exception))

    def test_every_target_is_a_module(self):
        """Every -target value the option table accepts has a row in the module table."""
        for t in C.KNOWN_TARGETS:
            if t != "all":
                self.assertIn(t, MODULES)


class LifecycleTests(SynchronousTestCase):
    def record(self, m, calls):
        """Wrap each module's start/stop so the test sees the order they are called in."""
        for name, obj in m.objects.items():
            for verb in ("start", "stop"):
                fn = getattr(obj, verb, None)
                if fn is not None:
                    def wrapped(_fn=fn, _name=name, _verb=verb):
                        calls.append((_verb, _name))
                        return _fn()
                    setattr(obj, verb, wrapped)

    def test_start_in_dependency_order_stop_in_reverse(self):
        """Modules start in dependency order and stop in the reverse order."""
        m = modules(self)
        calls = []
        self.record(m, calls)
        self.successResultOf(m.start())
        started = [n for v, n in calls if v == "start"]
        self.assertEqual(started, ["server", "runtime-config", "ring", "ingester", "store-gateway",
                                   "distributor", "compactor", "query-frontend", "ruler",
                                   "alertmanager"])
        del calls[:]
        self.successResultOf(m.stop())
        self.assertEqual([n for v, n in calls if v == "stop"], list(reversed(started)))
        self.assertEqual(set(m.states.values()), {"Terminated"})

    def test_dependents_wait_for_wal_replay(self):
        """The distributor starts only after the ingester has replayed its WAL (ready)."""
        pools = {}

        def factory(workers, name):
            pools[name] = ManualThreadPool(workers, name)
            return pools[name]
        off = Offload(InlineReactor(), factory)
        m = modules(self, ["-target=distributor,ingester"], offload=off)
        d = m.start()
        self.assertNoResult(d)
        self.assertEqual((m.states["ingester"], m.states["distributor"]), ("Starting", "New"))
        pools["compact"].run_all()
        self.successResultOf(d)
        self.assertEqual((m.states["ingester"], m.states["distributor"]), ("Running", "Running"))

    def test_failed_start_is_shown(self):
        """A module whose start fails is Failed on /services and start() fails."""
        m = modules(self, ["-target=compactor"])
        m.compactor.start = lambda: defer.fail(RuntimeError("bucket is gone"))
        self.failureResultOf(m.start(), RuntimeError)
        self.assertIn(("compactor", "Failed"), m.services())

    def test_services_lists_every_module(self):
        """/services shows each module of -target with its state, unimplemented ones as such."""
        m = modules(self)
        self.successResultOf(m.start())
        resp = self.successResultOf(StubTreq(m.resource()).get("http://urdar/services"))
        page = self.successResultOf(resp.text())
        for name in ("server", "memberlist-kv", "ring", "ingester", "distributor", "querier",
                     "store-gateway", "compactor", "ruler", "query-frontend"):
            self.assertIn("<td>%s</td><td>Running</td>" % name, page)
        self.assertNotIn("query-scheduler", page)        # not part of -target=all, as in Mimir
        m = modules(self, ["-target=all,overrides-exporter"])
        resp = self.successResultOf(StubTreq(m.resource()).get("http://urdar/services"))
        self.assertIn("<td>overrides-exporter</td><td>Not implemented yet</td>",
                      self.successResultOf(resp.text()))

    def test_alertmanager_module_serves_configs(self):
        """-target=alertmanager mounts the configuration API over its filesystem bucket (Mimir's
        alerts/<tenant> key); -alertmanager.enable-api=false keeps only the operator routes."""
        m = modules(self, ["-target=alertmanager"])
        self.successResultOf(m.start())
        treq = StubTreq(m.resource())
        body = (b"alertmanager_config: |\n  route: {receiver: r}\n  receivers: [{name: r}]\n")
        hdrs = {"X-Scope-OrgID": "t1"}
        resp = self.successResultOf(treq.post("http://urdar/api/v1/alerts", data=body, headers=hdrs))
        self.assertEqual(resp.code, 201)
        resp = self.successResultOf(treq.get("http://urdar/api/v1/alerts", headers=hdrs))
        self.assertEqual((resp.code, self.successResultOf(resp.content())),
                         (200, b"template_files: {}\nalertmanager_config: |\n  route: {receiver: r}\n"
                          b"  receivers: [{name: r}]\n"))
        am_dir = m.config["alertmanager_storage.filesystem.dir"]
        self.assertTrue(os.path.isfile(os.path.join(am_dir, "alerts", "t1")))
        off = modules(self, ["-target=alertmanager", "-alertmanager.enable-api=false"])
        treq = StubTreq(off.resource())
        resp = self.successResultOf(treq.get("http://urdar/api/v1/alerts", headers=hdrs))
        self.assertEqual(resp.code, 404)
        resp = self.successResultOf(treq.get("http://urdar/multitenant_alertmanager/configs"))
        self.assertEqual(resp.code, 200)


class FrontendModuleTests(SynchronousTestCase):
    def test_query_frontend_fronts_the_in_process_querier(self):
        """-target=query-frontend,querier,ingester runs the frontend in front of the querier's
        query_range; the frontend alone serves the queue that remote queriers pull from."""
        m = modules(self, ["-target=query-frontend,querier,ingester",
                           "-query-frontend.cache-results=true"])
        self.successResultOf(m.start())
        self.assertIsNotNone(m.frontend)
        self.assertIs(m.querier_handlers.frontend, m.frontend)
        self.assertIn(("query-frontend", "Running"), m.services())
        # Alone, it queues queries for queriers in other processes (-querier.frontend-address).
        alone = modules(self, ["-target=query-frontend"])
        self.assertIsNotNone(alone.frontend)
        self.assertIn("/scheduler/v1/next", [r.path for r in alone.routes()])


class ComponentConfigTests(SynchronousTestCase):
    def test_flags_reach_each_component_through_its_config(self):
        """Flags end up in each component's own config object (IngesterConfig, DistributorConfig,
        CompactorConfig, StoreGatewayConfig) built from the Config."""
        m = modules(self, ["-blocks-storage.tsdb.retention-period=5h", "-blocks-storage.tsdb.ship-interval=0",
                           "-distributor.max-recv-msg-size=1000", "-compactor.block-ranges=2h,6h",
                           "-compactor.max-block-upload-validation-concurrency=3",
                           "-blocks-storage.bucket-store.sync-interval=7m"])
        self.assertEqual(m.storegateway.config.sync_interval_ms, 7 * 60000)
        self.assertEqual((m.ingester.config.retention_ms, m.ingester.config.ship_interval_ms), (5 * 3600000, 0))
        self.assertIsNone(m.ingester.bucket)
        self.assertEqual(m.distributor.config.max_recv_msg_size, 1000)
        self.assertEqual(m.compactor.config.block_ranges_ms, (2 * 3600000, 6 * 3600000))
        self.assertEqual(m.compactor.uploads.max_validations, 3)


class PoolTests(SynchronousTestCase):
    def test_only_the_pools_the_modules_use(self):
        """The offload pools are created in one place, for the modules that run and no others."""
        manual = Offload(InlineReactor(), lambda workers, name: ManualThreadPool(workers, name))
        m = modules(self, ["-target=compactor"], offload=manual)
        self.assertEqual(sorted(m.offload.stats()), ["admin", "bucket", "compactor"])
        manual = Offload(InlineReactor(), lambda workers, name: ManualThreadPool(workers, name))
        m = modules(self, offload=manual)
        self.assertEqual(sorted(m.offload.stats()), ["admin", "alertmanager", "amrender", "append", "bucket",
                                                     "compact", "compactor",
                                                     "decode", "query", "ruler", "storegateway"])


class RulerModuleTests(SynchronousTestCase):
    def test_ruler_alone_serves_the_rules_api(self):
        """-target=ruler runs the rule configuration API over its filesystem rule store."""
        m = modules(self, ["-target=ruler"],
                    offload=inline_offload((("admin", 1, 10), ("ruler", 1, 10))))
        self.assertEqual(m.order, ["server", "runtime-config", "memberlist-kv", "ring", "ruler"])
        self.successResultOf(m.start())
        treq = StubTreq(m.resource())
        url = "http://urdar/prometheus/config/v1/rules/ns"
        resp = self.successResultOf(treq.post(url, data=b"name: g\nrules:\n- record: r\n  expr: up\n",
                                              headers={"X-Scope-OrgID": "t"}))
        self.assertEqual(resp.code, 202)
        resp = self.successResultOf(treq.get(url + "/g", headers={"X-Scope-OrgID": "t"}))
        self.assertEqual(self.successResultOf(treq.content(resp)),
                         b"name: g\nrules:\n    - record: r\n      expr: up\n")
        self.assertTrue(m.config["ruler_storage.filesystem.dir"].endswith("/ruler"))

    def test_ruler_notifier_and_rule_groups(self):
        """The ruler module builds its notifier from -ruler.alertmanager-url (started and stopped
        with it) and serves every tenant's groups on /ruler/rule_groups without a tenant header."""
        m = modules(self, ["-target=ruler", "-ruler.alertmanager-url=http://u:p@127.0.0.1:9/am",
                           "-ruler.notification-queue-capacity=5"],
                    offload=inline_offload((("admin", 1, 10), ("ruler", 1, 10))))
        self.assertEqual(list(m.notifier.endpoints), ["http://127.0.0.1:9/am/api/v2/alerts"])
        self.assertEqual(m.notifier.config.queue_capacity, 5)
        self.assertEqual(m.notifier.config.timeout_s, 10.0)
        self.successResultOf(m.start())
        treq = StubTreq(m.resource())
        for tenant in ("b", "a"):
            resp = self.successResultOf(treq.post(
                "http://urdar/prometheus/config/v1/rules/ns-" + tenant,
                data=b"name: g\nrules:\n- record: r\n  expr: up\n", headers={"X-Scope-OrgID": tenant}))
            self.assertEqual(resp.code, 202)
        resp = self.successResultOf(treq.get("http://urdar/ruler/rule_groups"))
        self.assertEqual(resp.code, 200)
        self.assertEqual(self.successResultOf(treq.content(resp)),
                         b"a:\n    ns-a:\n        - name: g\n          rules:\n"
                         b"            - record: r\n              expr: up\n"
                         b"b:\n    ns-b:\n        - name: g\n          rules:\n"
                         b"            - record: r\n              expr: up\n")
        self.successResultOf(m.stop())
        self.assertEqual(m.states["ruler"], "Terminated")
        self.assertIsNotNone(m.notifier._stopping)

    def test_ruler_alone_queries_and_writes_through_the_rings(self):
        """-target=ruler evaluates with a querier over the ingester and store-gateway rings and a
        distributor replicating to the ingester ring, built in its own process (no query or
        push routes of their own); -target=all evaluates with the in-process ones."""
        from urdar.components.replication import RingIngesterClient
        from urdar.components.rulemanager import RemoteQuery
        m = modules(self, ["-target=ruler"])
        pusher = m.rule_manager.pusher
        self.assertIsInstance(pusher.distributor.ingesters, RingIngesterClient)
        self.assertIsNone(m.distributor)
        self.assertIsNone(m.querier)
        self.assertEqual(set(m.rings.rings), {"ingester", "store-gateway", "distributor", "ruler"})
        paths = {r.path for r in m.routes()}
        self.assertNotIn("/api/v1/push", paths)
        self.assertNotIn("/prometheus/api/v1/query", paths)
        self.assertIn("/prometheus/api/v1/rules", paths)
        remote = modules(self, ["-target=ruler", "-ruler.query-frontend.address=127.0.0.1:9"])
        self.assertIsInstance(remote.rule_manager.query, RemoteQuery)
        self.assertEqual(remote.rule_manager.query.url, "http://127.0.0.1:9/prometheus/api/v1/query")
        mono = modules(self, ["-target=all"])
        self.assertIs(mono.rule_manager.pusher.distributor, mono.distributor)

    def test_bad_alertmanager_url_fails_startup(self):
        """An -ruler.alertmanager-url urdar cannot use is a configuration error naming the flag."""
        with self.assertRaises(ConfigError) as caught:
            modules(self, ["-target=ruler", "-ruler.alertmanager-url=dnssrv+http://_am._tcp.svc"])
        self.assertIn("-ruler.alertmanager-url", str(caught.exception))

class MicroserviceTargetTests(SynchronousTestCase):
    def test_each_target_alone(self):
        """-target=ingester serves the internal endpoints; -target=distributor and
        -target=querier reach the ingesters through the ring (one client for both in one
        process); -target=all keeps the in-process ingester (no ring, no HTTP hop)."""
        from urdar.components.ingester_client import LocalIngesterClient
        from urdar.components.replication import RingIngesterClient
        ing = modules(self, ["-target=ingester"])
        paths = {r.path for r in ing.routes()}
        self.assertLessEqual({"/ingester/client/push", "/ingester/client/select",
                              "/ingester/client/user_stats"}, paths)
        self.assertNotIn("/api/v1/push", paths)
        both = modules(self, ["-target=distributor,querier"])
        self.assertIsInstance(both.distributor.ingesters, RingIngesterClient)
        self.assertIs(both.querier.sources[0].source, both.distributor.ingesters)
        self.assertEqual(both.distributor.ingesters.ring.replication_factor, 3)
        mono = modules(self, ["-target=all"])
        self.assertIsInstance(mono.distributor.ingesters, LocalIngesterClient)
        self.assertIsInstance(mono.querier.sources[0].source, LocalIngesterClient)


class AlertmanagerFallbackTests(SynchronousTestCase):
    def test_a_broken_fallback_config_stops_startup(self):
        """-alertmanager.fallback-config-file is loaded at startup: unreadable or invalid is an error."""
        path = mktemp(self)
        with open(path, "w") as f:
            f.write("route: {receiver: nope}\nreceivers: [{name: r}]\n")
        with self.assertRaisesRegex(ConfigError, 'undefined receiver "nope"'):
            modules(self, ["-target=alertmanager", "-alertmanager.fallback-config-file=" + path])
        with self.assertRaisesRegex(ConfigError, "unable to read fallback config"):
            modules(self, ["-target=alertmanager", "-alertmanager.fallback-config-file=" + path + "x"])
