"""`amtool check-config` parity for email, Slack and PagerDuty receivers: Debian's amtool (0.25)
and urdar's validate_config accept the same configs and reject the others with the same reason
(line numbers aside: urdar's YAML errors name no line)."""
import os
import re
import shutil
import subprocess
import tempfile
import unittest

from urdar.components.alertmanager import AlertConfig, AlertmanagerError, validate_config

AMTOOL = shutil.which("amtool") or "/usr/bin/amtool"
HEAD = "route: {receiver: r}\nreceivers:\n- name: r\n"

CASES = [
    # (name, alertmanager config) — each has at most one error
    ("email ok", HEAD + "  email_configs:\n  - {to: a@b.c, from: x@y.z, smarthost: 'h:25', require_tls: false}\n"),
    ("email globals ok", "global: {smtp_smarthost: 'h:587', smtp_from: a@b.c, smtp_auth_username: u}\n" + HEAD
     + "  email_configs:\n  - to: a@b.c\n    headers: {Subject: s, X-Team: t}\n    tls_config: {insecure_skip_verify: true}\n"),
    ("email no to", HEAD + "  email_configs:\n  - {from: x@y.z, smarthost: 'h:25'}\n"),
    ("email no smarthost", HEAD + "  email_configs:\n  - {to: a@b.c, from: x@y.z}\n"),
    ("email no from", HEAD + "  email_configs:\n  - {to: a@b.c, smarthost: 'h:25'}\n"),
    ("email smarthost no port", HEAD + "  email_configs:\n  - {to: a@b.c, from: x@y.z, smarthost: host}\n"),
    ("email smarthost empty port", HEAD + "  email_configs:\n  - {to: a@b.c, from: x@y.z, smarthost: 'host:'}\n"),
    ("email duplicate header", HEAD + "  email_configs:\n  - {to: a@b.c, from: x@y.z, smarthost: 'h:25', headers: {subject: a, SUBJECT: b}}\n"),
    ("email unknown field", HEAD + "  email_configs:\n  - {to: a@b.c, from: x@y.z, smarthost: 'h:25', smtp_host: x}\n"),
    ("email to is a list", HEAD + "  email_configs:\n  - {to: [a], from: x@y.z, smarthost: 'h:25'}\n"),
    ("email bad tls field", HEAD + "  email_configs:\n  - {to: a@b.c, from: x@y.z, smarthost: 'h:25', tls_config: {verify: false}}\n"),
    ("slack ok", HEAD + "  slack_configs:\n  - api_url: http://hooks/x\n    channel: '#c'\n    fields: [{title: a, value: b, short: true}]\n"
     "    actions: [{type: button, text: t, url: 'http://x'}, {type: button, text: t, name: n, confirm: {text: sure}}]\n"),
    ("slack global ok", "global: {slack_api_url: 'https://hooks/x'}\n" + HEAD + "  slack_configs:\n  - {channel: '#c'}\n"),
    ("slack no url", HEAD + "  slack_configs:\n  - {channel: x}\n"),
    ("slack ftp url", HEAD + "  slack_configs:\n  - {api_url: 'ftp://x/y'}\n"),
    ("slack url without host", HEAD + "  slack_configs:\n  - {api_url: 'http:///y'}\n"),
    ("slack field without value", HEAD + "  slack_configs:\n  - {api_url: 'http://x', fields: [{title: a}]}\n"),
    ("slack field without title", HEAD + "  slack_configs:\n  - {api_url: 'http://x', fields: [{value: a}]}\n"),
    ("slack action without name or url", HEAD + "  slack_configs:\n  - {api_url: 'http://x', actions: [{type: b, text: t}]}\n"),
    ("slack action without type", HEAD + "  slack_configs:\n  - {api_url: 'http://x', actions: [{text: t, url: 'http://y'}]}\n"),
    ("slack confirm without text", HEAD + "  slack_configs:\n  - {api_url: 'http://x', actions: [{type: b, text: t, name: n, confirm: {title: x}}]}\n"),
    ("slack unknown field", HEAD + "  slack_configs:\n  - {api_url: 'http://x', colour: red}\n"),
    ("slack link_names not bool", HEAD + "  slack_configs:\n  - {api_url: 'http://x', link_names: sometimes}\n"),
    ("pagerduty ok", HEAD + "  pagerduty_configs:\n  - routing_key: k\n    url: http://pd/v2\n    severity: critical\n"
     "    details: {a: b}\n    images: [{src: s, alt: a, href: h}]\n    links: [{href: h, text: t}]\n"),
    ("pagerduty v1 ok", HEAD + "  pagerduty_configs:\n  - {service_key: k}\n"),
    ("pagerduty no key", HEAD + "  pagerduty_configs:\n  - {severity: x}\n"),
    ("pagerduty bad url", HEAD + "  pagerduty_configs:\n  - {routing_key: x, url: 'ftp://a'}\n"),
    ("pagerduty bad global url", "global: {pagerduty_url: 'mailto:x'}\n" + HEAD + "  pagerduty_configs:\n  - {routing_key: x}\n"),
    ("pagerduty image field", HEAD + "  pagerduty_configs:\n  - {routing_key: x, images: [{src: a, foo: b}]}\n"),
    ("pagerduty link field", HEAD + "  pagerduty_configs:\n  - {routing_key: x, links: [{url: a}]}\n"),
    ("global unknown field", "global: {smtp_smarthost: 'h:25', smtp_from: 'a@b', smtp_bogus: 1}\n" + HEAD + "  email_configs:\n  - {to: a@b}\n"),
]


def amtool(config):
    with tempfile.TemporaryDirectory(prefix="urdar-amtool-") as d:
        path = os.path.join(d, "am.yml")
        with open(path, "w") as f:
            f.write(config)
        p = subprocess.run([AMTOOL, "check-config", path], capture_output=True, text=True, timeout=60)
    if p.returncode == 0:
        return None
    m = re.search(r"FAILED: (.*?)\n\n", p.stdout, re.S)
    assert m, p.stdout + p.stderr
    return re.sub(r"line \d+: ", "", m.group(1))


def urdar(config):
    try:
        validate_config(AlertConfig("t", config))
    except AlertmanagerError as exc:
        return str(exc.args[-1] if exc.args else exc).split("error validating Alertmanager config: ", 1)[-1]
    return None


@unittest.skipUnless(os.path.exists(AMTOOL), "amtool not installed (Debian's prometheus-alertmanager)")
class AmtoolParityTests(unittest.TestCase):
    def test_same_verdict_and_reason(self):
        for name, config in CASES:
            with self.subTest(name):
                want = amtool(config)
                got = urdar(config)
                self.assertEqual(got, want, "%s:\n%s" % (name, config))
                # Each case is meant to pass or fail as its name says.
                self.assertEqual(want is None, name.endswith(" ok"), name)


class TenantRefusalTests(unittest.TestCase):
    """Mimir's refusals of fields that would read the server's files (amtool accepts them)."""

    def test_file_fields_refused(self):
        for cfg, text in (
                ("  slack_configs:\n  - {api_url_file: /etc/passwd}\n",
                 "setting Slack api_url_file and global slack_api_url_file is not allowed"),
                ("  pagerduty_configs:\n  - {routing_key_file: /etc/passwd}\n",
                 "setting PagerDuty routing_key_file is not allowed"),
                ("  pagerduty_configs:\n  - {service_key_file: /etc/passwd}\n",
                 "setting PagerDuty service_key_file is not allowed"),
                ("  email_configs:\n  - {to: a@b, from: c@d, smarthost: 'h:25', auth_password_file: /x}\n",
                 "setting Email auth_password_file and global smtp_auth_password_file is not allowed"),
                ("  email_configs:\n  - {to: a@b, from: c@d, smarthost: 'h:25', tls_config: {ca_file: /x}}\n",
                 "setting TLS ca_file, cert_file and key_file is not allowed"),
                ("  slack_configs:\n  - {api_url: 'http://x', http_config: {bearer_token_file: /x}}\n",
                 "setting password_file, bearer_token_file and credentials_file is not allowed")):
            with self.subTest(text):
                self.assertEqual(urdar(HEAD + cfg), text)
