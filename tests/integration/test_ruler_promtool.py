"""urdar's rule group validation agrees with Debian's `promtool check rules` on which groups are
valid: each case below is checked by both, and both must accept or both refuse it."""
import os
import shutil
import subprocess
import tempfile
import unittest

from urdar.components.rulefmt import DecodeError, decode_group, validate_group

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"

# One rule group each (indented as an item of `groups:`); True when valid.
CASES = [
    ("valid", True, "name: g\n  rules:\n  - record: job:up:sum\n    expr: sum by (job) (up)\n"
     "  - alert: Down\n    expr: up == 0\n    for: 5m\n    keep_firing_for: 1m\n    labels:\n"
     "      severity: page\n    annotations:\n      summary: '{{ $labels.job }} is {{ $value | humanize }}'\n"),
    ("bad promql", False, "name: g\n  rules:\n  - record: r\n    expr: sum(up\n"),
    ("bad function", False, "name: g\n  rules:\n  - record: r\n    expr: nope(up)\n"),
    ("record and alert", False, "name: g\n  rules:\n  - record: r\n    alert: a\n    expr: up\n"),
    ("neither", False, "name: g\n  rules:\n  - expr: up\n"),
    ("no expr", False, "name: g\n  rules:\n  - record: r\n"),
    ("bad record name", False, "name: g\n  rules:\n  - record: 1r\n    expr: up\n"),
    ("record with braces", False, "name: g\n  rules:\n  - record: r{a=\"b\"}\n    expr: up\n"),
    ("record with for", False, "name: g\n  rules:\n  - record: r\n    expr: up\n    for: 1m\n"),
    ("record with annotations", False, "name: g\n  rules:\n  - record: r\n    expr: up\n"
     "    annotations:\n      a: b\n"),
    ("bad label name", False, "name: g\n  rules:\n  - alert: a\n    expr: up\n    labels:\n      a-b: c\n"),
    ("__name__ label", False, "name: g\n  rules:\n  - record: r\n    expr: up\n    labels:\n"
     "      __name__: x\n"),
    ("bad annotation name", False, "name: g\n  rules:\n  - alert: a\n    expr: up\n    annotations:\n"
     "      1x: y\n"),
    ("unclosed action", False, "name: g\n  rules:\n  - alert: a\n    expr: up\n    annotations:\n"
     "      s: '{{ $value'\n"),
    ("unended if", False, "name: g\n  rules:\n  - alert: a\n    expr: up\n    labels:\n"
     "      s: '{{ if $value }}x'\n"),
    ("stray end", False, "name: g\n  rules:\n  - alert: a\n    expr: up\n    labels:\n      s: '{{ end }}'\n"),
    ("undefined variable", False, "name: g\n  rules:\n  - alert: a\n    expr: up\n    annotations:\n"
     "      s: '{{ $nope }}'\n"),
    ("template in a recording rule label", True, "name: g\n  rules:\n  - record: r\n    expr: up\n"
     "    labels:\n      s: '{{ $value'\n"),
    ("good template functions", True, "name: g\n  rules:\n  - alert: a\n    expr: up\n    annotations:\n"
     "      s: '{{ with query \"up\" }}{{ . | first | value | humanizeDuration }}{{ end }}'\n"
     "      t: '{{ range $k, $v := $labels }}{{ $k }}={{ $v }} {{ end }}'\n"),
    ("unknown function", False, "name: g\n  rules:\n  - alert: a\n    expr: up\n    labels:\n"
     "      s: '{{ nofunc $value }}'\n"),
    ("if without a value", False, "name: g\n  rules:\n  - alert: a\n    expr: up\n    labels:\n"
     "      s: '{{ if }}x{{ end }}'\n"),
    ("functions, fields and numbers", True, "name: g\n  rules:\n  - alert: a\n    expr: up\n"
     "    annotations:\n      s: '{{ printf \"%.2f\" $value }} {{ .Labels.job }} {{ 1e3 }} {{ index $labels \"a_b\" }}"
     " {{ if and (gt $value 0.5) (lt $value 1.5) }}{{ $value | humanizePercentage }}{{ else }}no{{ end }}'\n"),
    ("bad for", False, "name: g\n  rules:\n  - alert: a\n    expr: up\n    for: 5x\n"),
    ("bad interval", False, "name: g\n  interval: 1.5m\n  rules:\n  - record: r\n    expr: up\n"),
    ("empty name", False, "name: ''\n  rules:\n  - record: r\n    expr: up\n"),
]


@unittest.skipUnless(os.path.exists(PROMTOOL), "promtool is not installed")
class PromtoolParityTests(unittest.TestCase):
    def test_same_verdicts_as_promtool(self):
        """Every case is accepted by urdar exactly when promtool check rules accepts it."""
        with tempfile.TemporaryDirectory(prefix="urdar-rules-") as tmp:
            for name, valid, group in CASES:
                path = os.path.join(tmp, "rules.yml")
                with open(path, "w") as f:
                    f.write("groups:\n- " + group)
                res = subprocess.run([PROMTOOL, "check", "rules", path], capture_output=True,
                                     text=True, timeout=60)
                self.assertEqual(res.returncode == 0, valid, "%s: promtool said %s%s" % (
                    name, res.stdout, res.stderr))
                body = group.replace("\n  ", "\n").encode()
                try:
                    errs = validate_group(decode_group(body))
                except DecodeError as exc:
                    errs = ["undecodable: %s" % exc]
                self.assertEqual(not errs, valid, "%s: urdar said %s" % (name, errs))
