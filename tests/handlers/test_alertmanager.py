"""The alertmanager's configuration API through Klein (StubTreq) over a MemoryBucket: every route's
statuses and bodies, a round trip, validation failures with Mimir's reasons, the per-tenant limits,
tenant isolation, -alertmanager.enable-api and the bucket encoding (alertspb.AlertConfigDesc)."""
import yaml

from treq.testing import StubTreq
from twisted.trial.unittest import SynchronousTestCase

from urdar.app.config import Config
from urdar.components.alertmanager import (
    MAX_CONFIG_BODY_BYTES, AlertConfig, AlertmanagerConfigs, AlertStore, decode_config,
    encode_config)
from urdar.components.limits import Overrides
from urdar.handlers.alertmanager import AlertmanagerHandlers
from urdar.handlers.routes import RouteTable
from urdar.net.tenant import Tenancy
from urdar.storage.memory import MemoryBucket

URL = "http://urdar/api/v1/alerts"
AM = ("route:\n  receiver: default\n  routes:\n    - receiver: pager\n      matchers: [sev=page]\n"
      "receivers:\n  - name: default\n  - name: pager\n")
CONFIG = yaml.safe_dump({"template_files": {"a.tmpl": '{{ define "x" }}{{ .Status }}{{ end }}'},
                         "alertmanager_config": AM}).encode()
PREFIX = b"error validating Alertmanager config: "


class AlertmanagerAPITests(SynchronousTestCase):
    def setUp(self):
        self.bucket = MemoryBucket()
        self.overrides = Overrides(Config().limits_defaults())
        self.build()

    def build(self, enable_api=True):
        self.configs = AlertmanagerConfigs(AlertStore(self.bucket), self.overrides,
                                           enable_api=enable_api)
        self.treq = StubTreq(RouteTable(Tenancy()).mount(AlertmanagerHandlers(self.configs)).resource())

    def call(self, method, url=URL, body=None, tenant="team-a"):
        hdrs = {"X-Scope-OrgID": tenant} if tenant is not None else {}
        resp = self.successResultOf(self.treq.request(method, url, data=body, headers=hdrs))
        return resp.code, self.successResultOf(self.treq.content(resp))

    def limit(self, **limits):
        defaults = dict(Config().limits_defaults())
        defaults.update(limits)
        self.overrides = Overrides(defaults)
        self.build()

    def test_missing_is_404(self):
        self.assertEqual(self.call("GET"), (404, b"alertmanager storage object not found\n"))

    def test_round_trip(self):
        """POST stores (201), GET gives back the same templates and alertmanager YAML."""
        self.assertEqual(self.call("POST", body=CONFIG), (201, b""))
        code, body = self.call("GET")
        self.assertEqual(code, 200)
        self.assertEqual(body, b"template_files:\n  a.tmpl: '{{ define \"x\" }}{{ .Status }}{{ end }}'\n"
                         b"alertmanager_config: |\n" + b"".join(b"  " + line + b"\n"
                                                                for line in AM.encode().splitlines()))
        doc = yaml.safe_load(body)
        self.assertEqual(doc["alertmanager_config"], AM)
        # Stored with Mimir's layout and encoding.
        self.assertEqual(self.successResultOf(self.bucket.list("alerts/", "/")), ["alerts/team-a"])
        stored = decode_config(self.successResultOf(self.bucket.get("alerts/team-a")))
        self.assertEqual(stored, AlertConfig("team-a", AM, {"a.tmpl": doc["template_files"]["a.tmpl"]}))

    def test_delete(self):
        self.call("POST", body=CONFIG)
        self.assertEqual(self.call("DELETE"), (200, b""))
        self.assertEqual(self.call("GET")[0], 404)
        self.assertEqual(self.call("DELETE"), (200, b""))     # nothing to delete is fine

    def test_delete_tenant_config(self):
        self.call("POST", body=CONFIG)
        self.call("POST", body=CONFIG, tenant="team-b")
        url = "http://urdar/multitenant_alertmanager/delete_tenant_config"
        self.assertEqual(self.call("POST", url), (200, b""))
        self.assertEqual(self.call("GET")[0], 404)
        self.assertEqual(self.call("GET", tenant="team-b")[0], 200)
        self.assertEqual(self.call("POST", url, tenant=None)[0], 401)

    def test_isolation(self):
        self.call("POST", body=CONFIG, tenant="team-a")
        self.assertEqual(self.call("GET", tenant="team-b")[0], 404)
        self.call("DELETE", tenant="team-b")
        self.assertEqual(self.call("GET", tenant="team-a")[0], 200)
        self.assertEqual(self.call("GET", tenant=None)[0], 401)

    def test_tenant_cannot_escape_key(self):
        """A tenant id is one object name: '..' or '/' never reach another key."""
        self.call("POST", body=CONFIG, tenant="team-a")
        for bad in ("..", "a/../team-a", "."):
            code, _ = self.call("GET", tenant=bad)
            self.assertIn(code, (400, 401))
            code, _ = self.call("POST", body=CONFIG, tenant=bad)
            self.assertIn(code, (400, 401))
        self.assertEqual(self.successResultOf(self.bucket.list("", "")), ["alerts/team-a"])

    def test_all_configs(self):
        url = "http://urdar/multitenant_alertmanager/configs"
        self.assertEqual(self.call("GET", url, tenant=None), (200, b""))
        self.call("POST", body=CONFIG, tenant="b")
        self.call("POST", body=CONFIG, tenant="a")
        code, body = self.call("GET", url, tenant=None)
        self.assertEqual(code, 200)
        doc = yaml.safe_load(body)
        self.assertEqual(list(doc), ["a", "b"])
        self.assertEqual(doc["a"]["alertmanager_config"], AM)

    def test_status_page(self):
        """Mimir's status page: the module's service state, for operators (no tenant needed)."""
        url = "http://urdar/multitenant_alertmanager/status"
        resp = self.successResultOf(self.treq.get(url))
        self.assertEqual(resp.code, 200)
        self.assertEqual(resp.headers.getRawHeaders("Content-Type"), ["text/html; charset=utf-8"])
        self.assertIn(b"<h1>Alertmanager Status: Running</h1>", self.successResultOf(self.treq.content(resp)))
        treq = StubTreq(RouteTable(Tenancy()).mount(AlertmanagerHandlers(
            self.configs, state=lambda: "Stopping")).resource())
        body = self.successResultOf(treq.content(self.successResultOf(treq.get(url))))
        self.assertIn(b"<h1>Alertmanager Status: Stopping</h1>", body)

    def invalid(self, body):
        code, text = self.call("POST", body=body)
        self.assertEqual(code, 400, text)
        self.assertEqual(self.call("GET")[0], 404)
        return text

    def test_validation(self):
        def doc(am, files=None):
            return yaml.safe_dump({"template_files": files or {}, "alertmanager_config": am}).encode()
        self.assertEqual(self.invalid(b""), PREFIX + b"configuration provided is empty, if you'd "
                         b"like to remove your configuration please use the delete configuration "
                         b"endpoint\n")
        self.assertEqual(self.invalid(doc("receivers: [{name: x}]\n")),
                         PREFIX + b"no routes provided\n")
        self.assertEqual(self.invalid(doc("route: {group_by: [a]}\nreceivers: [{name: x}]\n")),
                         PREFIX + b"root route must specify a default receiver\n")
        self.assertEqual(self.invalid(doc("route: {receiver: y}\nreceivers: [{name: x}]\n")),
                         PREFIX + b'undefined receiver "y" used in route\n')
        self.assertEqual(self.invalid(doc(AM.replace("- name: pager", "- name: other"))),
                         PREFIX + b'undefined receiver "pager" used in route\n')
        self.assertTrue(self.invalid(doc("route: [\n")).startswith(PREFIX))
        self.assertEqual(self.invalid(doc(AM + "bogus: 1\n")), PREFIX + b"yaml: unmarshal errors:\n"
                         b"  field bogus not found in type config.plain\n")
        self.assertTrue(self.invalid(b"alertmanager_config: [1\n").startswith(
            b"error marshalling YAML Alertmanager config: "))
        # Unknown keys are ignored (Go's yaml.Unmarshal): this body has no configuration.
        self.assertTrue(self.invalid(b"bogus: 1\n").startswith(PREFIX + b"configuration provided "
                                                                b"is empty"))
        self.assertEqual(self.invalid(doc(AM + "templates: [../x]\n")), PREFIX + b'invalid template '
                         b'name "../x": the template name cannot contain any path\n')
        self.assertEqual(self.invalid(doc(AM, {"../x": "y"})), PREFIX + b'invalid template name '
                         b'"../x": the template name cannot contain any path\n')
        # Templates the config's `templates:` globs select must parse (Go's parse error).
        self.assertEqual(self.invalid(doc(AM + "templates: ['*.tmpl']\n", {"bad.tmpl": "{{ if }}"})),
                         PREFIX + b"template: bad.tmpl:1: missing value for if\n")
        # Mimir parses only the selected ones: an unreferenced file is stored as is.
        self.assertEqual(self.call("POST", body=doc(AM, {"bad.tmpl": "{{ if }}"})), (201, b""))

    def test_alias_bomb_is_bounded(self):
        """Aliases that multiply sub-routes (10^12 routes from a few hundred bytes) are refused
        by the route budget instead of walked."""
        node = "&r0 {receiver: x}"
        for i in range(1, 13):
            node = "&r%d {receiver: x, routes: [%s%s]}" % (i, node, ", *r%d" % (i - 1) * 9)
        am = "route: " + node + "\nreceivers: [{name: x}]\n"
        body = yaml.safe_dump({"alertmanager_config": am}).encode()
        self.assertEqual(self.invalid(body), PREFIX + b"too many routes (limit: 100000)\n")

    def test_limits(self):
        self.limit(alertmanager_max_templates_count=1, alertmanager_max_template_size_bytes=10)
        body = yaml.safe_dump({"template_files": {"a": "x", "b": "y"}, "alertmanager_config": AM})
        self.assertEqual(self.invalid(body.encode()),
                         PREFIX + b"too many templates in the configuration: 2 (limit: 1)\n")
        body = yaml.safe_dump({"template_files": {"a": "x" * 11}, "alertmanager_config": AM})
        self.assertEqual(self.invalid(body.encode()),
                         PREFIX + b"template a is too big: 11 bytes (limit: 10 bytes)\n")
        self.limit(alertmanager_max_config_size_bytes=len(CONFIG) - 1)
        self.assertEqual(self.invalid(CONFIG), b"Alertmanager configuration is too big, "
                         b"limit: %d bytes\n" % (len(CONFIG) - 1))
        self.limit(alertmanager_max_config_size_bytes=len(CONFIG))
        self.assertEqual(self.call("POST", body=CONFIG), (201, b""))

    def test_hard_body_limit(self):
        code, _ = self.call("POST", body=b"#" * (MAX_CONFIG_BODY_BYTES + 1))
        self.assertEqual(code, 413)

    def test_enable_api_false(self):
        """-alertmanager.enable-api=false removes the tenant routes, not the operator ones."""
        self.build(enable_api=False)
        self.assertEqual(self.call("GET")[0], 404)
        self.assertEqual(self.call("POST", body=CONFIG)[0], 404)
        self.assertEqual(self.call("GET", "http://urdar/multitenant_alertmanager/configs",
                                   tenant=None)[0], 200)


SPEC_EXAMPLE = b"""template_files:
  default_template: |
    {{ define "__alertmanager" }}AlertManager{{ end }}
    {{ define "__alertmanagerURL" }}{{ .ExternalURL }}/#/alerts?receiver={{ .Receiver | urlquery }}{{ end }}
alertmanager_config: |
  global:
    smtp_smarthost: 'localhost:25'
    smtp_from: 'youraddress@example.org'
  templates:
    - 'default_template'
  route:
    receiver: example-email
  receivers:
    - name: example-email
      email_configs:
      - to: 'youraddress@example.org'
"""


class SpecExampleTests(AlertmanagerAPITests.__bases__[0]):
    def test_spec_example_round_trips(self):
        """The request body of Mimir's documentation is accepted and read back unchanged."""
        treq = StubTreq(RouteTable(Tenancy()).mount(AlertmanagerHandlers(AlertmanagerConfigs(
            AlertStore(MemoryBucket()), Overrides(Config().limits_defaults())))).resource())
        hdrs = {"X-Scope-OrgID": "t"}
        resp = self.successResultOf(treq.post(URL, data=SPEC_EXAMPLE, headers=hdrs))
        self.assertEqual(resp.code, 201)
        resp = self.successResultOf(treq.get(URL, headers=hdrs))
        self.assertEqual(yaml.safe_load(self.successResultOf(resp.content())),
                         yaml.safe_load(SPEC_EXAMPLE))


class EncodingTests(SynchronousTestCase):
    def test_round_trip(self):
        c = AlertConfig("t\u00e9", "route: {receiver: x}\n", {"b": "B", "a": "{{ .X }}"})
        data = encode_config(c)
        # alertspb.AlertConfigDesc: user=1, raw_config=2, templates=3 {filename=1, body=2}.
        self.assertTrue(data.startswith(b"\x0a\x03t\xc3\xa9\x12\x15route: {receiver: x}\n"))
        self.assertIn(b"\x1a\x0d\x0a\x01a\x12\x08{{ .X }}", data)
        self.assertEqual(decode_config(data), c)

    def test_malformed(self):
        with self.assertRaises(ValueError):
            decode_config(b"\x0a\x05ab")
