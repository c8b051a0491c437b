"""The ruler's rule store and rule format: Mimir's bucket layout and protobuf, yaml.v3-shaped YAML
(checked against output of gopkg.in/yaml.v3 itself, in testdata/), promtool-style validation,
limits and tenant isolation, over a MemoryBucket."""
import base64
import os

from twisted.trial.unittest import SynchronousTestCase

from urdar.app.config import Config
from urdar.components import errors as E
from urdar.components.limits import Overrides
from urdar.components.rulefmt import (
    Rule, RuleGroup, check_template, decode_group, decode_group_desc, encode_group,
    format_duration, format_group, format_namespaces, parse_duration, validate_group)
from urdar.components.ruler import Ruler, RulerError, RuleStore, group_key
from urdar.storage.memory import MemoryBucket

TESTDATA = os.path.join(os.path.dirname(__file__), "testdata")

GROUP = (b"name: g1\ninterval: 1m\nrules:\n- record: job:up:sum\n  expr: sum by (job) (up)\n"
         b"- alert: Down\n  expr: up == 0\n  for: 5m\n  labels:\n    severity: page\n"
         b"  annotations:\n    summary: '{{ $labels.job }} is down'\n")


def sample_groups():
    g = RuleGroup(name="g1", interval_ms=60000, source_tenants=["a", "b"], rules=[
        Rule(record="x:y", expr="sum(up)\n/ 2"),
        Rule(alert="A", expr="1", for_ms=300000,
             labels={"sev": "page", "a10": "x", "a9": "y", "on": "yes"},
             annotations={"summary": "{{ $value }} high", "d": "multi\nline\n"})])
    g2 = RuleGroup(name="true", rules=[Rule(
        alert="x: y", expr="up # c", keep_firing_for_ms=3600000,
        labels={"b": " lead", "c": "trail ", "d": "ünï", "e": "'q'", "f": "2001-01-02", "g": "0x1F",
                "h": "1e3", "i": "-", "j": "@at", "k": "a\tb", "l": "12:30", "m": "null"},
        annotations={"x": " indented\nsecond", "y": "end \nx", "z": "a\n\n\nb\n\n"})])
    return g, g2


class FormatTests(SynchronousTestCase):
    def test_yaml_matches_yaml_v3(self):
        """Rule groups are written byte for byte as Mimir's yaml.v3 writes them (indentation,
        key order, quoting of strings that would read back as numbers, booleans or dates)."""
        g, g2 = sample_groups()
        with open(os.path.join(TESTDATA, "ruler_yaml_v3.txt")) as f:
            want = f.read()
        self.assertEqual(format_namespaces({"ns2": [g], "ns1": [g]}) + "----\n{}\n", want)
        with open(os.path.join(TESTDATA, "ruler_yaml_v3_odd.txt"), encoding="utf-8") as f:
            want = f.read()
        got = format_namespaces({"ns/2": [g], "ns1": [g2], "über": [g2], "10": [g], "9": [g],
                                 "x9": [g2], "x10": [g2], "yes": [g2]})
        self.assertEqual(got, want)

    def test_namespaces_that_are_not_simple_keys(self):
        """Namespaces with line breaks or over 128 bytes, empty ones and ones starting with YAML
        indicators are written as yaml.v3 writes such keys."""
        with open(os.path.join(TESTDATA, "ruler_yaml_v3_keys.txt"), encoding="utf-8") as f:
            want = f.read()
        got = format_namespaces({"a\nb": [RuleGroup(name="x")], "k" * 130: [RuleGroup(name="y")],
                                 "": [RuleGroup(name="")], "- x": [RuleGroup(name="? q")]})
        self.assertEqual(got, want)

    def test_all_tenants_layout(self):
        """/ruler/rule_groups' YAML nests each tenant's namespaces as yaml.v3 writes them."""
        from urdar.components.rulefmt import format_tenants
        g = RuleGroup(name="g", rules=[Rule(record="r", expr="a\nb", labels={"x": "y\nz"})])
        with open(os.path.join(TESTDATA, "ruler_yaml_v3_tenants.txt"), encoding="utf-8") as f:
            want = f.read()
        self.assertEqual(format_tenants({"team-b": {"ns": [g], "a\nb": [g]},
                                         "team-a": {"ns": [g], "a\nb": [g]}, "empty": {}}), want)

    def test_single_group_layout(self):
        """GET of one group writes name, interval, rules with 4-space indented items, as Mimir."""
        g = RuleGroup(name="group1", interval_ms=60000,
                      rules=[Rule(record="UP_RULE", expr="up"), Rule(alert="UP_ALERT", expr="up < 1")])
        self.assertEqual(format_group(g), "name: group1\ninterval: 1m\nrules:\n    - record: UP_RULE\n"
                         "      expr: up\n    - alert: UP_ALERT\n      expr: up < 1\n")

    def test_yaml_round_trip(self):
        """What the API writes parses back to the same group."""
        g, g2 = sample_groups()
        for group in (g, g2):
            back = decode_group(format_group(group).encode())
            self.assertEqual(back, group)

    def test_protobuf_round_trip(self):
        """Groups are stored as Mimir's RuleGroupDesc and read back unchanged, with tenant and namespace."""
        g, g2 = sample_groups()
        g.query_offset_ms = 120000
        g.align_evaluation_time_on_interval = True
        for group in (g, g2):
            tenant, ns, back = decode_group_desc(encode_group("team-a", "a/b", group))
            self.assertEqual((tenant, ns, back), ("team-a", "a/b", group))

    def test_protobuf_bytes(self):
        """The protobuf encoding is the one gogo writes for Mimir (field numbers, embedded durations)."""
        g = RuleGroup(name="g", interval_ms=60000, rules=[Rule(record="r", expr="up")])
        self.assertEqual(encode_group("t", "n", g),
                         b"\n\x01g\x12\x01n\x1a\x02\x08<\"\x0b\n\x02up\x12\x01r\"\x00j\x00"
                         b"2\x01tZ\x00j\x00")

    def test_limit(self):
        """The group `limit` (Prometheus' rulefmt; Mimir's RuleGroupDesc has no field and drops
        it) is parsed as yaml.v3 decodes a Go int, written back after query_offset as
        Prometheus' rulefmt orders it, and stored in RuleGroupDesc.options (field 9) as a
        google.protobuf.Any that Mimir reads and ignores: the other fields keep their bytes."""
        body = b"name: g\nquery_offset: 1m\nlimit: 10\nrules:\n- record: r\n  expr: up\n"
        g = decode_group(body)
        self.assertEqual(g.limit, 10)
        self.assertEqual(format_group(g), "name: g\nquery_offset: 1m\nlimit: 10\nrules:\n"
                         "    - record: r\n      expr: up\n")
        for text, want in ((b"0x10", 16), (b"017", 15), (b"0o17", 15), (b"-3", -3), (b"~", 0)):
            self.assertEqual(decode_group(b"name: g\nlimit: " + text + b"\nrules: []\n").limit, want)
        from urdar.components.rulefmt import DecodeError
        for bad in (b"ten", b"[1]", b"1.5", b"99999999999999999999"):
            self.assertRaises(DecodeError, decode_group, b"name: g\nlimit: " + bad + b"\nrules: []\n")
        plain = RuleGroup(name="g", interval_ms=60000, rules=[Rule(record="r", expr="up")])
        limited = RuleGroup(name="g", interval_ms=60000, rules=[Rule(record="r", expr="up")], limit=5)
        data = encode_group("t", "n", limited)
        option = (b"J4\n.type.googleapis.com/urdar.rules.RuleGroupLimit\x12\x02\x08\x05")
        self.assertEqual(data, encode_group("t", "n", plain) + option)
        self.assertEqual(decode_group_desc(data), ("t", "n", limited))
        # An option of another type (a Mimir extension) is no limit.
        other = encode_group("t", "n", plain) + b"J\x0b\n\x05x/y.z\x12\x02\x08\x05"
        self.assertEqual(decode_group_desc(other)[2].limit, 0)

    def test_durations(self):
        """Durations use Prometheus' model.Duration syntax and spelling (1d, 1w, 1h30m)."""
        self.assertEqual(parse_duration("1h30m"), 5400000)
        self.assertEqual(parse_duration("0"), 0)
        self.assertEqual(format_duration(86400000), "1d")
        self.assertEqual(format_duration(7 * 86400000 + 1500), "1w1s500ms")
        for bad in ("", "5x", "1.5h", "-1m", "m"):
            self.assertRaises(ValueError, parse_duration, bad)


class ValidationTests(SynchronousTestCase):
    def errors(self, body, federation=False):
        return validate_group(decode_group(body), federation)

    def test_valid_group(self):
        """A well-formed group has no errors."""
        self.assertEqual(self.errors(GROUP), [])

    def test_group_name_and_rules_required(self):
        """An empty body, a nameless group and a group without rules are refused with Mimir's texts."""
        self.assertEqual(self.errors(b""),
                         ["invalid rules configuration: rule group name must not be empty"])
        self.assertEqual(self.errors(b"name: g\ninterval: 15s\n"),
                         ["invalid rules configuration: rule group 'g' has no rules"])

    def test_bad_promql(self):
        """A rule whose expression does not parse names the rule, its position and the parse error."""
        errs = self.errors(b"name: g\nrules:\n- record: r\n  expr: sum(up\n")
        self.assertEqual(errs, ['4:9: group "g", rule 0, "r": could not parse expression: 1:7: '
                                'parse error: unclosed left parenthesis'])

    def test_record_and_alert(self):
        """A rule needs exactly one of record and alert."""
        errs = self.errors(b"name: g\nrules:\n- record: r\n  alert: a\n  expr: up\n")
        self.assertEqual(errs, ['3:11: 4:10: group "g", rule 0, "a": only one of \'record\' and '
                                '\'alert\' must be set'])
        errs = self.errors(b"name: g\nrules:\n- expr: up\n")
        self.assertEqual(errs, ['0:0: 0:0: group "g", rule 0, "": one of \'record\' or \'alert\' '
                                'must be set'])

    def test_recording_rule_fields(self):
        """Recording rules refuse annotations, for, keep_firing_for and bad metric names."""
        errs = self.errors(b"name: g\nrules:\n- record: 1bad{x}\n  expr: up\n  for: 1m\n"
                           b"  keep_firing_for: 1m\n  annotations: {a: b}\n")
        self.assertEqual([e.split(": ", 2)[2] for e in errs], [
            "invalid field 'annotations' in recording rule",
            "invalid field 'for' in recording rule",
            "invalid field 'keep_firing_for' in recording rule",
            "invalid recording rule name: 1bad{x}",
            "braces present in the recording rule name; should it be in expr?: 1bad{x}"])

    def test_label_and_annotation_names(self):
        """Invalid label and annotation names (and __name__ as a label) are refused."""
        errs = self.errors(b"name: g\nrules:\n- alert: a\n  expr: up\n  labels: {__name__: x, "
                           b"'a-b': y}\n  annotations: {'1x': z}\n")
        self.assertEqual(errs, ['group "g", rule 0, "a": invalid label name: __name__',
                                'group "g", rule 0, "a": invalid label name: a-b',
                                'group "g", rule 0, "a": invalid annotation name: 1x'])

    def test_bad_templates(self):
        """Alert labels and annotations must be parseable Go templates (light check)."""
        errs = self.errors(b"name: g\nrules:\n- alert: a\n  expr: up\n  labels: {x: '{{ $value '}\n"
                           b"  annotations: {s: '{{ if $value }}x', t: '{{ $nope }}'}\n")
        self.assertEqual(errs, [
            'group "g", rule 0, "a": label "x": template: __alert_a:1: unclosed action',
            'group "g", rule 0, "a": annotation "s": template: __alert_a:1: unexpected EOF',
            'group "g", rule 0, "a": annotation "t": template: __alert_a:1: undefined variable "$nope"'])

    def test_template_check(self):
        """The template check accepts what rule files use and names the first syntax error."""
        for ok in ("{{ $labels.job }} at {{ $value | humanize }}", "{{- if gt $value 1.0 -}}hi{{ end }}",
                   '{{ with query "up" }}{{ . | first | value }}{{ end }}', "no action",
                   '{{ range $i, $x := $labels }}{{ $i }}{{ end }}', '{{ "}}" }}', "{{/* c */}}"):
            self.assertEqual(check_template(ok, "t"), "", ok)
        self.assertEqual(check_template("{{ end }}", "t"), "template: t:1: unexpected {{end}}")
        self.assertEqual(check_template("a\n{{ (x }}", "t"), "template: t:2: unclosed left paren")
        self.assertEqual(check_template('{{ "x }}', "t"), "template: t:1: unterminated quoted string")
        self.assertEqual(check_template("{{}}", "t"), "template: t:1: missing value for command")
        self.assertEqual(check_template("{{ nofunc 1 }}", "t"), 'template: t:1: function "nofunc" not defined')
        self.assertEqual(check_template("{{ if }}{{ end }}", "t"), "template: t:1: missing value for if")

    def test_federation(self):
        """source_tenants is refused unless tenant federation is enabled."""
        body = b"name: g\nsource_tenants: [a]\nrules:\n- record: r\n  expr: up\n"
        self.assertIn("is a federated rule group", self.errors(body)[0])
        self.assertEqual(self.errors(body, federation=True), [])

    def test_null_fields(self):
        """Null durations, labels and lists decode as empty, as yaml.v3 leaves them."""
        g = decode_group(b"name: g\ninterval:\nsource_tenants:\nrules:\n- alert: a\n  expr: up\n"
                         b"  for:\n  labels:\n  annotations: ~\n")
        self.assertEqual((g.interval_ms, g.source_tenants, g.rules[0].for_ms, g.rules[0].labels),
                         (0, [], 0, {}))

    def test_alias_bomb(self):
        """A small body whose aliases expand into a huge group is refused as undecodable."""
        from urdar.components.rulefmt import DecodeError
        labels = "{%s}" % ", ".join("l%d: %s" % (i, "v" * 50) for i in range(200))
        body = ("name: g\nrules:\n- &r {alert: a, expr: up, labels: %s}\n" % labels
                + "- *r\n" * 20000).encode()
        self.assertLess(len(body), 200000)
        self.assertRaises(DecodeError, decode_group, body)
        self.assertEqual(len(decode_group(b"name: g\nrules:\n- &r {record: r, expr: up}\n- *r\n").rules), 2)

    def test_undecodable(self):
        """Bad YAML, a mapping where a string belongs and a bad duration do not decode."""
        from urdar.components.rulefmt import DecodeError
        for body in (b"name: [\n", b"name: {a: b}\nrules: []\n", b"name: g\ninterval: 5x\nrules: []\n",
                     b"name: g\nrules:\n- record: r\n  expr: up\n  for: 1.5m\n", b"- a\n- b\n",
                     b"name: g\nname: h\nrules: []\n",
                     b"name: g\nrules:\n- alert: a\n  expr: up\n  labels: {x: 1, x: 2}\n",
                     b"name: g\nrules:\n- record: r\n  expr: up\n  for: 300\n"):
            self.assertRaises(DecodeError, decode_group, body)


class StoreTests(SynchronousTestCase):
    def setUp(self):
        self.bucket = MemoryBucket()
        self.store = RuleStore(self.bucket)
        defaults = Config().limits_defaults()
        self.overrides = Overrides(defaults)
        self.ruler = Ruler(self.store, self.overrides)

    def post(self, tenant, ns, body=GROUP):
        return self.successResultOf(self.ruler.create_rule_group(tenant, ns, body))

    def refused(self, d):
        return self.failureResultOf(d, RulerError).value

    def test_mimir_layout(self):
        """A group is stored at rules/<tenant>/<base64url(namespace)>/<base64url(group)>."""
        self.post("team-a", "ns/../x")
        key = "rules/team-a/%s/%s" % (base64.urlsafe_b64encode(b"ns/../x").decode(),
                                      base64.urlsafe_b64encode(b"g1").decode())
        self.assertEqual(list(self.bucket.objects), [key])
        self.assertEqual(key, group_key("team-a", "ns/../x", "g1"))
        tenant, ns, g = decode_group_desc(self.bucket.objects[key])
        self.assertEqual((tenant, ns, g.name, len(g.rules)), ("team-a", "ns/../x", "g1", 2))

    def test_list_get_delete(self):
        """Groups list per namespace, read back, and delete by group and by namespace."""
        self.post("t", "ns1")
        self.post("t", "ns2", GROUP.replace(b"g1", b"g2"))
        text = self.successResultOf(self.ruler.list_rules("t"))
        self.assertTrue(text.startswith("ns1:\n    - name: g1\n"), text)
        self.assertIn("ns2:\n    - name: g2\n", text)
        self.assertEqual(self.successResultOf(self.ruler.list_rules("t", "ns2")).count("name:"), 1)
        self.assertEqual(self.successResultOf(self.ruler.list_rules("t", "nope")), "{}\n")
        self.successResultOf(self.ruler.delete_rule_group("t", "ns1", "g1"))
        self.assertEqual(self.refused(self.ruler.get_rule_group("t", "ns1", "g1")).message,
                         "group does not exist")
        self.assertEqual(self.refused(self.ruler.delete_rule_group("t", "ns1", "g1")).cause, E.NOT_FOUND)
        self.successResultOf(self.ruler.delete_namespace("t", "ns2"))
        self.assertEqual(self.refused(self.ruler.delete_namespace("t", "ns2")).message,
                         "group namespace does not exist")
        self.assertEqual(self.bucket.objects, {})

    def test_tenant_isolation(self):
        """One tenant never sees, reads or deletes another tenant's groups."""
        self.post("a", "ns")
        self.assertEqual(self.successResultOf(self.ruler.list_rules("b")), "{}\n")
        self.refused(self.ruler.get_rule_group("b", "ns", "g1"))
        self.refused(self.ruler.delete_namespace("b", "ns"))
        self.successResultOf(self.ruler.delete_tenant_config("b"))
        self.assertEqual(len(self.bucket.objects), 1)
        self.successResultOf(self.ruler.delete_tenant_config("a"))
        self.assertEqual(self.bucket.objects, {})

    def test_tenant_listing(self):
        """The store lists the tenants that have rule groups."""
        self.post("a", "ns")
        self.post("b", "ns")
        self.assertEqual(self.successResultOf(self.store.list_tenants()), ["a", "b"])

    def test_spurious_objects_ignored(self):
        """Objects that are not base64url namespace/group pairs are skipped when listing."""
        self.post("t", "ns")
        self.successResultOf(self.bucket.put("rules/t/not-base64!/x", b""))
        self.successResultOf(self.bucket.put("rules/t/onlyone", b""))
        self.assertEqual(self.successResultOf(self.store.list_groups("t")), [("ns", "g1")])

    def test_rules_per_group_limit(self):
        """More rules than ruler_max_rules_per_rule_group is 400 with Mimir's text."""
        self.overrides.set_overrides({"t": {"ruler_max_rules_per_rule_group": 1}})
        err = self.refused(self.ruler.create_rule_group("t", "ns", GROUP))
        self.assertEqual((err.cause, err.message), (E.BAD_DATA, "per-user rules per rule group limit "
                                                    "(limit: 1 actual: 2) exceeded"))
        self.post("other", "ns")

    def test_rule_groups_per_tenant_limit(self):
        """More groups than ruler_max_rule_groups_per_tenant is 400; 0 means no limit."""
        self.overrides.set_overrides({"t": {"ruler_max_rule_groups_per_tenant": 2},
                                      "u": {"ruler_max_rule_groups_per_tenant": 0}})
        self.post("t", "ns1")
        self.post("t", "ns2")
        err = self.refused(self.ruler.create_rule_group("t", "ns3", GROUP))
        self.assertEqual(err.message, "per-user rule groups limit (limit: 2 actual: 3) exceeded")
        for i in range(80):
            self.post("u", "ns%d" % i)
        self.assertEqual(Config().limits_defaults()["ruler_max_rule_groups_per_tenant"], 70)
        self.assertEqual(Config().limits_defaults()["ruler_max_rules_per_rule_group"], 20)

    def test_invalid_group_not_stored(self):
        """A group that fails validation is refused with every reason and nothing is written."""
        err = self.refused(self.ruler.create_rule_group(
            "t", "ns", b"name: g\nrules:\n- record: a b\n  expr: up\n- alert: x\n  expr: (\n"))
        self.assertEqual(err.cause, E.BAD_DATA)
        self.assertIn("invalid recording rule name: a b, ", err.message)
        self.assertIn('rule 1, "x": could not parse expression', err.message)
        err = self.refused(self.ruler.create_rule_group("t", "ns", b"name: [\n"))
        self.assertEqual(err.message, "unable to decode rule group")
        self.assertEqual(self.bucket.objects, {})

    def test_long_names_refused(self):
        """A namespace too long for an object key is a 400, not a storage failure."""
        err = self.refused(self.ruler.create_rule_group("t", "n" * 800, GROUP))
        self.assertEqual(err.cause, E.BAD_DATA)


class VanishingBucket(MemoryBucket):
    """Lists every object but reads none: groups deleted between the listing and the reads."""

    def get(self, name):
        from twisted.internet import defer

        from urdar.storage.bucket import NotFound
        return defer.fail(NotFound(name))


class ConsistencyTests(SynchronousTestCase):
    def test_group_vanishing_while_listing_is_an_error(self):
        """A listed group that cannot be read makes the listing fail (500), never a partial answer."""
        bucket = VanishingBucket()
        ruler = Ruler(RuleStore(bucket), Overrides(Config().limits_defaults()))
        self.successResultOf(ruler.create_rule_group("t", "ns", GROUP))
        self.successResultOf(ruler.create_rule_group("t", "ns", GROUP.replace(b"g1", b"g2")))
        err = self.failureResultOf(ruler.list_rules("t"), RulerError).value
        self.assertEqual((err.cause, err.message),
                         (E.INTERNAL, "an error occurred while loading 2 rule groups"))


class StorageConfigTests(SynchronousTestCase):
    def test_ruler_storage_flags(self):
        """-ruler-storage.* picks the rule store's bucket: filesystem under ./ruler by default, or
        S3 with its own endpoint and bucket, sharing the blocks storage code."""
        from twisted.internet.testing import MemoryReactorClock

        from urdar.app import config as C
        from urdar.storage.factory import bucket_from_config
        cfg, _ = C.load([])
        self.assertTrue(bucket_from_config(cfg, section="ruler_storage").root.endswith("/ruler"))
        cfg, _ = C.load(["-ruler-storage.backend=s3", "-ruler-storage.s3.endpoint=minio:9000",
                         "-ruler-storage.s3.bucket-name=rules", "-ruler-storage.s3.insecure",
                         "-blocks-storage.s3.bucket-name=blocks"])
        b = bucket_from_config(cfg, section="ruler_storage", reactor=MemoryReactorClock())
        self.assertEqual(repr(b.inner), "S3Bucket('http://minio:9000/rules/')")


class ConfigFileTests(SynchronousTestCase):
    def test_yaml_keys(self):
        """The ruler options take Mimir's YAML keys (ruler, ruler_storage, tenant_federation, limits)."""
        from urdar.app import config as C
        text = ("ruler:\n  enable_api: false\nruler_storage:\n  backend: filesystem\n  filesystem:\n"
                "    dir: /r\ntenant_federation:\n  enabled: true\nlimits:\n"
                "  ruler_max_rules_per_rule_group: 5\n  ruler_max_rule_groups_per_tenant: 7\n")
        cfg, _ = C.load(["-config.file=x.yaml"], read_file=lambda path: text)
        self.assertEqual(cfg["ruler_storage.filesystem.dir"], "/r")
        from urdar.components.ruler import RulerConfig
        self.assertEqual(RulerConfig.from_config(cfg), RulerConfig(enable_api=False, tenant_federation=True))
        limits = cfg.limits_defaults()
        self.assertEqual((limits["ruler_max_rules_per_rule_group"],
                          limits["ruler_max_rule_groups_per_tenant"]), (5, 7))
