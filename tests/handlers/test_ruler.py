"""The ruler's configuration API through Klein (StubTreq) over a MemoryBucket: every route's
success and error answers (status and body), escaped namespaces, tenant isolation, limits and
the body size limit."""
import json

import yaml

from treq.testing import StubTreq
from twisted.trial.unittest import SynchronousTestCase

from tests.components.test_ruler_store import GROUP
from urdar.app.config import Config
from urdar.components.limits import Overrides
from urdar.components.ruler import MAX_RULE_GROUP_BYTES, Ruler, RulerConfig, RuleStore
from urdar.handlers.routes import RouteTable
from urdar.handlers.ruler import RulerHandlers
from urdar.net.tenant import Tenancy
from urdar.storage.memory import MemoryBucket

BASE = "http://urdar/prometheus/config/v1/rules"
ACCEPTED = b'{"status":"success","data":null,"errorType":"","error":""}'


class RulerAPITests(SynchronousTestCase):
    def setUp(self):
        self.bucket = MemoryBucket()
        self.overrides = Overrides(Config().limits_defaults())
        self.ruler = Ruler(RuleStore(self.bucket), self.overrides)
        self.treq = StubTreq(RouteTable(Tenancy()).mount(RulerHandlers(self.ruler)).resource())

    def call(self, method, url, body=None, tenant="team-a", headers=None):
        hdrs = dict(headers or {})
        if tenant is not None:
            hdrs["X-Scope-OrgID"] = tenant
        resp = self.successResultOf(self.treq.request(method, url, data=body, headers=hdrs))
        content = self.successResultOf(self.treq.content(resp))
        return resp.code, content, resp

    def test_empty_list(self):
        """A tenant without rule groups gets 200 and an empty YAML map, as Mimir answers."""
        code, body, resp = self.call("GET", BASE)
        self.assertEqual((code, body), (200, b"{}\n"))
        self.assertEqual(resp.headers.getRawHeaders(b"Content-Type"), [b"application/yaml"])

    def test_create_get_list(self):
        """POST stores a group (202 with Mimir's JSON); GET returns it by group, namespace and all."""
        code, body, resp = self.call("POST", BASE + "/ns1", GROUP)
        self.assertEqual((code, body), (202, ACCEPTED))
        self.assertEqual(resp.headers.getRawHeaders(b"Content-Type"), [b"application/json"])
        code, one, _ = self.call("GET", BASE + "/ns1/g1")
        self.assertEqual(code, 200)
        self.assertEqual(one, b"name: g1\ninterval: 1m\nrules:\n    - record: job:up:sum\n"
                         b"      expr: sum by (job) (up)\n    - alert: Down\n      expr: up == 0\n"
                         b"      for: 5m\n      labels:\n        severity: page\n      annotations:\n"
                         b"        summary: '{{ $labels.job }} is down'\n")
        code, ns, _ = self.call("GET", BASE + "/ns1")
        self.assertEqual(code, 200)
        self.assertEqual(ns, b"ns1:\n    - name: g1\n      interval: 1m\n      rules:\n"
                         b"        - record: job:up:sum\n          expr: sum by (job) (up)\n"
                         b"        - alert: Down\n          expr: up == 0\n          for: 5m\n"
                         b"          labels:\n            severity: page\n          annotations:\n"
                         b"            summary: '{{ $labels.job }} is down'\n")
        code, everything, _ = self.call("GET", BASE)
        self.assertEqual((code, everything), (200, ns))

    def test_replace_group(self):
        """POSTing a group with an existing name replaces it."""
        self.call("POST", BASE + "/ns", GROUP)
        self.call("POST", BASE + "/ns", GROUP.replace(b"interval: 1m", b"interval: 2m"))
        _, body, _ = self.call("GET", BASE + "/ns/g1")
        self.assertIn(b"interval: 2m\n", body)
        self.assertEqual(len(self.bucket.objects), 1)

    def test_missing_group_and_namespace(self):
        """Unknown groups are 404 "group does not exist"; unknown namespaces on delete 404
        "group namespace does not exist", and on GET an empty map."""
        self.assertEqual(self.call("GET", BASE + "/ns/nope")[:2], (404, b"group does not exist\n"))
        self.assertEqual(self.call("DELETE", BASE + "/ns/nope")[:2], (404, b"group does not exist\n"))
        self.assertEqual(self.call("DELETE", BASE + "/ns")[:2],
                         (404, b"group namespace does not exist\n"))
        self.assertEqual(self.call("GET", BASE + "/ns")[:2], (200, b"{}\n"))

    def test_delete_group_and_namespace(self):
        """DELETE of a group and of a namespace answer 202 and remove them."""
        self.call("POST", BASE + "/ns", GROUP)
        self.call("POST", BASE + "/ns", GROUP.replace(b"name: g1", b"name: g2"))
        self.assertEqual(self.call("DELETE", BASE + "/ns/g1")[:2], (202, ACCEPTED))
        self.assertEqual(self.call("GET", BASE + "/ns/g1")[0], 404)
        self.assertEqual(self.call("GET", BASE + "/ns/g2")[0], 200)
        self.assertEqual(self.call("DELETE", BASE + "/ns")[:2], (202, ACCEPTED))
        self.assertEqual(self.call("GET", BASE)[1], b"{}\n")

    def test_validation_errors(self):
        """Invalid groups are 400 with every reason joined by ", "; undecodable ones with Mimir's text."""
        code, body, _ = self.call("POST", BASE + "/ns", b"name: g\nrules:\n- record: r\n  expr: up[\n"
                                  b"  for: 1m\n")
        self.assertEqual(code, 400)
        self.assertTrue(body.startswith(b'4:9: group "g", rule 0, "r": could not parse expression: '), body)
        self.assertIn(b', 3:11: group "g", rule 0, "r": invalid field \'for\' in recording rule\n', body)
        self.assertEqual(self.call("POST", BASE + "/ns", b"name: g\nrules: x\n")[:2],
                         (400, b"unable to decode rule group\n"))
        self.assertEqual(self.call("POST", BASE + "/ns", b"")[:2],
                         (400, b"invalid rules configuration: rule group name must not be empty\n"))
        code, body, _ = self.call("POST", BASE + "/ns", b"name: g\nrules:\n- alert: A\n  expr: up\n"
                                  b"  annotations:\n    s: '{{ $value'\n")
        self.assertEqual((code, body), (400, b'group "g", rule 0, "A": annotation "s": template: '
                                             b'__alert_A:1: unclosed action\n'))
        self.assertEqual(self.bucket.objects, {})

    def test_limits(self):
        """The per-tenant rule and group limits answer 400 with Mimir's texts."""
        self.overrides.set_overrides({"team-a": {"ruler_max_rules_per_rule_group": 1,
                                                 "ruler_max_rule_groups_per_tenant": 1}})
        self.assertEqual(self.call("POST", BASE + "/ns", GROUP)[:2], (400, b"per-user rules per rule "
                                                                     b"group limit (limit: 1 actual: 2) exceeded\n"))
        one = b"name: a\nrules:\n- record: r\n  expr: up\n"
        self.assertEqual(self.call("POST", BASE + "/ns", one)[0], 202)
        self.assertEqual(self.call("POST", BASE + "/ns", one.replace(b"name: a", b"name: b"))[:2],
                         (400, b"per-user rule groups limit (limit: 1 actual: 2) exceeded\n"))

    def test_odd_namespace_names(self):
        """Namespaces and groups with slashes, '..', %2F, spaces and unicode round-trip and stay
        inside the tenant's prefix."""
        names = {"a/b": "a%2Fb", "..": "%2E%2E", "../../x": "..%2F..%2Fx", "100%": "100%25",
                 "über ns": "%C3%BCber%20ns", "%2F": "%252F"}
        for ns, escaped in names.items():
            code, body, _ = self.call("POST", BASE + "/" + escaped, GROUP.replace(b"name: g1", b"name: x/.."))
            self.assertEqual(code, 202, (ns, body))
            code, body, _ = self.call("GET", BASE + "/" + escaped + "/x%2F..")
            self.assertEqual(code, 200, (ns, body))
            self.assertTrue(body.startswith(b"name: x/..\n"))
        self.assertTrue(all(k.startswith("rules/team-a/") and k.count("/") == 3
                            for k in self.bucket.objects))
        listed = yaml.safe_load(self.call("GET", BASE)[1])
        self.assertEqual(sorted(listed), sorted(names))

    def test_head(self):
        """HEAD answers as GET does, without a body."""
        self.call("POST", BASE + "/ns", GROUP)
        self.assertEqual(self.call("HEAD", BASE + "/ns/g1")[:2], (200, b""))
        self.assertEqual(self.call("HEAD", BASE + "/ns/nope")[0], 404)

    def test_bad_paths(self):
        """A malformed escape is 400 with Go's text; extra or empty path segments are 404."""
        self.assertEqual(self.call("GET", BASE + "/%zz")[:2], (400, b'invalid URL escape "%zz"\n'))
        self.assertEqual(self.call("GET", BASE + "/a/b/c")[0], 404)
        self.assertEqual(self.call("DELETE", BASE + "/a//")[0], 404)
        self.assertEqual(self.call("POST", BASE + "/ns/g", GROUP)[0], 404)

    def test_tenant_isolation(self):
        """Tenant B sees none of tenant A's groups and cannot read or delete them."""
        self.call("POST", BASE + "/ns", GROUP, tenant="a")
        self.assertEqual(self.call("GET", BASE, tenant="b")[1], b"{}\n")
        self.assertEqual(self.call("GET", BASE + "/ns/g1", tenant="b")[0], 404)
        self.assertEqual(self.call("DELETE", BASE + "/ns", tenant="b")[0], 404)
        self.assertEqual(self.call("GET", BASE + "/ns/g1", tenant="a")[0], 200)

    def test_no_tenant(self):
        """Without X-Scope-OrgID every route is 401 "no org id"."""
        for method, url in (("GET", BASE), ("GET", BASE + "/ns"), ("POST", BASE + "/ns"),
                            ("DELETE", BASE + "/ns/g"), ("POST", "http://urdar/ruler/delete_tenant_config")):
            self.assertEqual(self.call(method, url, GROUP if method == "POST" else None,
                                       tenant=None)[:2], (401, b"no org id\n"))

    def test_delete_tenant_config(self):
        """POST /ruler/delete_tenant_config removes every group of the tenant (200, also when none)."""
        self.call("POST", BASE + "/ns1", GROUP)
        self.call("POST", BASE + "/ns2", GROUP)
        self.call("POST", BASE + "/ns1", GROUP, tenant="other")
        self.assertEqual(self.call("POST", "http://urdar/ruler/delete_tenant_config")[:2], (200, b""))
        self.assertEqual(self.call("GET", BASE)[1], b"{}\n")
        self.assertEqual(self.call("POST", "http://urdar/ruler/delete_tenant_config")[:2], (200, b""))
        self.assertEqual(self.call("GET", BASE + "/ns1/g1", tenant="other")[0], 200)

    def test_rule_groups_of_all_tenants(self):
        """/ruler/rule_groups lists every tenant's groups without a tenant header (200, empty when none)."""
        self.assertEqual(self.call("GET", "http://urdar/ruler/rule_groups", tenant=None)[:2], (200, b""))
        self.call("POST", BASE + "/ns", GROUP, tenant="b")
        self.call("POST", BASE + "/a%2Fb", GROUP, tenant="a")
        code, body, _ = self.call("GET", "http://urdar/ruler/rule_groups", tenant=None)
        self.assertEqual(code, 200)
        self.assertTrue(body.startswith(b"a:\n    a/b:\n        - name: g1\n          interval: 1m\n"
                                        b"          rules:\n            - record: job:up:sum\n"), body)
        self.assertEqual(sorted(yaml.safe_load(body)), ["a", "b"])
        self.assertEqual(list(yaml.safe_load(body)["b"]), ["ns"])

    def test_body_limit(self):
        """A rule group body over the limit is 413 and not stored."""
        body = GROUP + b"#" * MAX_RULE_GROUP_BYTES
        code, text, _ = self.call("POST", BASE + "/ns", body)
        self.assertEqual(code, 413, text)
        self.assertEqual(self.bucket.objects, {})

    def test_api_disabled(self):
        """With -ruler.enable-api=false the configuration routes are absent; tenant deletion stays."""
        ruler = Ruler(RuleStore(self.bucket), self.overrides, config=RulerConfig(enable_api=False))
        self.treq = StubTreq(RouteTable(Tenancy()).mount(RulerHandlers(ruler)).resource())
        self.assertEqual(self.call("GET", BASE)[0], 404)
        self.assertEqual(self.call("POST", "http://urdar/ruler/delete_tenant_config")[0], 200)

    def test_other_prefix(self):
        """The routes follow -http.prometheus-http-prefix."""
        treq = StubTreq(RouteTable(Tenancy()).mount(RulerHandlers(self.ruler, "/api/prom")).resource())
        resp = self.successResultOf(treq.request("POST", "http://urdar/api/prom/config/v1/rules/a%2Fb",
                                                 data=GROUP, headers={"X-Scope-OrgID": "t"}))
        self.assertEqual(resp.code, 202)
        resp = self.successResultOf(treq.get("http://urdar/api/prom/config/v1/rules/a%2Fb/g1",
                                             headers={"X-Scope-OrgID": "t"}))
        self.assertEqual(resp.code, 200)
        self.assertEqual(json.loads(ACCEPTED)["status"], "success")


class OffReactorTests(SynchronousTestCase):
    def test_parsing_and_formatting_run_in_the_ruler_pool(self):
        """Decoding, validating, encoding and formatting a group happen in the "ruler" offload
        pool; a full pool answers 503 at once."""
        from tests.support.threads import InlineReactor, ManualThreadPool
        from urdar.net.offload import Offload
        pool = ManualThreadPool()
        offload = Offload(InlineReactor(), lambda workers, name: pool)
        offload.add_pool("ruler", 1, 0)
        offload.start()
        bucket = MemoryBucket()
        ruler = Ruler(RuleStore(bucket, offload), Overrides(Config().limits_defaults()), offload)
        treq = StubTreq(RouteTable(Tenancy()).mount(RulerHandlers(ruler)).resource())
        d = treq.post(BASE + "/ns", data=GROUP, headers={"X-Scope-OrgID": "t"})
        self.assertNoResult(d)
        self.assertEqual(len(pool.pending), 1)
        busy = self.successResultOf(treq.post(BASE + "/ns", data=GROUP, headers={"X-Scope-OrgID": "t"}))
        self.assertEqual(busy.code, 503)
        pool.run_next()     # decode + validate
        self.assertNoResult(d)
        pool.run_next()     # protobuf encoding
        treq.flush()
        self.assertEqual(self.successResultOf(d).code, 202)
        self.assertEqual(len(bucket.objects), 1)
        d = treq.get(BASE + "/ns/g1", headers={"X-Scope-OrgID": "t"})
        self.assertNoResult(d)
        pool.run_all()
        self.assertNoResult(d)      # decoding done; formatting queued next
        pool.run_all()
        treq.flush()
        self.assertEqual(self.successResultOf(d).code, 200)
