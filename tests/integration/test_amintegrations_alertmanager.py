"""Slack, PagerDuty and email notifications, urdar's against Debian's Alertmanager 0.25: the same
alerts, config, user template and external URL. Both send to one capturing HTTP server and one
SMTP sink (Twisted's ESMTP server) on 127.0.0.1: the Slack and PagerDuty bodies must be the same
JSON bytes (default templates, user fields, dedup key); the emails the same headers (raw, so the
Q-encoding too) and the same text part."""
import http.server as httpserver
import email
import email.policy
import json
import os
import shutil
import tempfile
import threading

from twisted.internet import defer, task
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.client import Agent, HTTPConnectionPool

import treq
from tests.integration.test_notifier_alertmanager import ALERTMANAGER, Alertmanager, rfc3339
from tests.support.services import Process, free_port, http
from tests.support.smtpsink import SMTPSink
from urdar.components.amintegrations import FACTORIES
from urdar.components.amreceivers import NotificationData
from urdar.gotemplate.amdefault import notification_template


def _reactor():
    from twisted.internet import reactor
    return reactor


class _Capture(httpserver.BaseHTTPRequestHandler):
    posts: list = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.posts.append((self.path, body))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


USER_TEMPLATE = '{{ define "my.text" }}{{ range .Alerts }}*{{ .Labels.instance }}*: {{ .Annotations.summary }}\n{{ end }}{{ end }}'


def am_config(capture, smarthost):
    return """
global:
  resolve_timeout: 5m
  smtp_smarthost: '%(s)s'
  smtp_from: 'Alertmanager <am@example.org>'
  smtp_require_tls: false
route:
  receiver: r
  group_by: [alertname]
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 4h
  routes:
  - matchers: ['alertname="Solo"']
    receiver: solo
    group_by: ['...']
templates: ['/TEMPLATES/*.tmpl']
receivers:
- name: solo
  slack_configs:
  - api_url: %(c)s/solo
- name: r
  slack_configs:
  - api_url: %(c)s/slack
    channel: '#ops'
    send_resolved: true
    text: '{{ template "my.text" . }}'
    short_fields: true
    fields:
    - {title: Firing, value: '{{ .Alerts.Firing | len }}'}
    - {title: Job, value: '{{ .CommonLabels.job | toUpper }}', short: false}
    actions:
    - {type: button, text: 'Runbook {{ .GroupLabels.alertname }}', url: 'http://rb/{{ .GroupLabels.alertname }}'}
  pagerduty_configs:
  - routing_key: rk
    url: %(c)s/pd
    severity: '{{ if eq .CommonLabels.severity "page" }}critical{{ else }}warning{{ end }}'
    component: '{{ .CommonLabels.job }}'
    details: {summary: '{{ .CommonAnnotations.summary }}'}
    links: [{href: 'http://l/{{ .GroupLabels.alertname }}', text: graph}]
  email_configs:
  - to: 'oncall@example.org, Two <two@example.org>'
    headers: {X-Note: 'Störung {{ .GroupLabels.alertname }} – {{ .CommonAnnotations.summary }}', reply-to: 'noreply@example.org'}
    text: '{{ template "__text_alert_list" .Alerts }}{{ template "my.text" . }}'
    html: '<h1>{{ template "__subject" . }}</h1>{{ range .Alerts }}<p title="{{ .Annotations.summary }}">{{ .Labels.instance }}: {{ .Annotations.summary }} <a href="{{ .GeneratorURL }}">src</a></p>{{ end }}<div>{{ .CommonAnnotations.summary | safeHtml }}</div>'
""" % {"c": capture, "s": smarthost}


class AlertmanagerPayloadTests(TestCase):
    timeout = 120

    def setUp(self):
        if not os.path.exists(ALERTMANAGER):
            raise SkipTest("prometheus-alertmanager not installed")
        self.workdir = tempfile.mkdtemp(prefix="urdar-amint-")
        self.addCleanup(shutil.rmtree, self.workdir, True)
        _Capture.posts = []
        self.httpd = httpserver.ThreadingHTTPServer(("127.0.0.1", 0), _Capture)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.addCleanup(self.httpd.server_close)
        self.addCleanup(self.httpd.shutdown)
        self.capture = "http://127.0.0.1:%d" % self.httpd.server_address[1]
        tdir = os.path.join(self.workdir, "templates")
        os.mkdir(tdir)
        with open(os.path.join(tdir, "my.tmpl"), "w") as f:
            f.write(USER_TEMPLATE)
        self.sink = SMTPSink(tls=False)
        self.addCleanup(self.sink.close)
        self.config = am_config(self.capture, self.sink.smarthost).replace("/TEMPLATES", tdir)
        with open(os.path.join(self.workdir, "alertmanager.yml"), "w") as f:
            f.write(self.config)

    @defer.inlineCallbacks
    def test_same_slack_pagerduty_and_email(self):
        import yaml
        am = _ExternalAM(self.workdir)
        self.addCleanup(am.stop)
        am.wait_ready()
        starts = rfc3339(-60)
        alerts = [{"labels": {"alertname": "HighLatency", "job": "api", "instance": i, "severity": "page"},
                   "annotations": {"summary": "p99 > 1s & rising <fast> \"q\" it's +5"}, "startsAt": starts,
                   "generatorURL": "http://prom:9090/graph?g0.expr=up&g0.tab=1"} for i in ("a:1", "b:2")]
        solo = {"labels": {"alertname": "Solo", "job": "db"}, "annotations": {}, "startsAt": starts}
        status, body = http("POST", am.base + "/api/v2/alerts", json.dumps(alerts + [solo]).encode(),
                            {"Content-Type": "application/json"})
        self.assertEqual(status, 200, body)
        # The SMTP sink runs on this reactor: wait without blocking it.
        for _ in range(600):
            if {p for p, _ in _Capture.posts} >= {"/slack", "/pd", "/solo"} and len(self.sink.messages) == 2:
                break
            yield task.deferLater(_reactor(), 0.1, lambda: None)
        else:
            self.fail("Alertmanager's notifications did not arrive:\n%s" % am.output())
        theirs = dict(_Capture.posts)
        their_mail = sorted(self.sink.messages)
        _Capture.posts.clear()
        del self.sink.messages[:]

        cfg = yaml.safe_load(self.config)
        data = NotificationData(
            receiver="r", status="firing",
            alerts=[{"status": "firing", "labels": a["labels"], "annotations": a["annotations"],
                     "startsAt": starts, "endsAt": "0001-01-01T00:00:00Z",
                     "generatorURL": a["generatorURL"], "fingerprint": ""} for a in alerts],
            groupLabels={"alertname": "HighLatency"},
            commonLabels={"alertname": "HighLatency", "job": "api", "severity": "page"},
            commonAnnotations={"summary": alerts[0]["annotations"]["summary"]},
            externalURL="http://am.example:9093", groupKey='{}:{alertname="HighLatency"}')
        template = notification_template({"my.tmpl": USER_TEMPLATE})
        client = treq.client.HTTPClient(Agent(_reactor(), pool=HTTPConnectionPool(_reactor(), persistent=False)))
        rcv = cfg["receivers"][1]
        for key in ("slack_configs", "pagerduty_configs", "email_configs"):
            integration = FACTORIES[key](rcv[key][0], cfg.get("global") or {}, 0, client, _reactor())
            yield integration.notify(data, template)
        # Grouped by all labels: no common labels beyond the group's, the subject has no "(...)"
        # and ends in a space, as Alertmanager's.
        solo_data = NotificationData(
            receiver="solo", status="firing", alerts=[{
                "status": "firing", "labels": solo["labels"], "annotations": {}, "startsAt": starts,
                "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "", "fingerprint": ""}],
            groupLabels=solo["labels"], commonLabels=solo["labels"], commonAnnotations={},
            externalURL="http://am.example:9093", groupKey="")
        yield FACTORIES["slack_configs"](cfg["receivers"][0]["slack_configs"][0], cfg.get("global") or {}, 0,
                                         client, _reactor()).notify(solo_data, template)
        ours = dict(_Capture.posts)
        self.assertEqual(json.loads(theirs["/solo"])["attachments"][0]["title"], "[FIRING:1] Solo db ")
        self.assertEqual(ours["/solo"], theirs["/solo"])
        self.assertEqual(json.loads(ours["/slack"]), json.loads(theirs["/slack"]))
        self.assertEqual(ours["/slack"], theirs["/slack"])
        self.assertEqual(json.loads(ours["/pd"]), json.loads(theirs["/pd"]))
        self.assertEqual(ours["/pd"], theirs["/pd"])

        our_mail = sorted(self.sink.messages)
        self.assertEqual([r for r, _ in our_mail], ["oncall@example.org", "two@example.org"])
        self.assertEqual([r for r, _ in our_mail], [r for r, _ in their_mail])
        ours_msg, theirs_msg = (email.message_from_bytes(m[0][1].replace(b"\n", b"\r\n"), policy=email.policy.compat32)
                                for m in (our_mail, their_mail))
        for h in ("Subject", "To", "From", "X-Note", "Reply-To", "MIME-Version"):
            self.assertEqual(ours_msg[h], theirs_msg[h], h)
        self.assertTrue(theirs_msg["X-Note"].startswith("=?utf-8?q?St=C3=B6rung"))
        self.assertEqual(ours_msg.get_content_type(), theirs_msg.get_content_type())
        (our_text, our_html), (their_text, their_html) = ours_msg.get_payload(), theirs_msg.get_payload()
        self.assertEqual(our_text.get_payload(decode=True), their_text.get_payload(decode=True))
        self.assertIn(b"Labels:\r\n - alertname = HighLatency", our_text.get_payload(decode=True))
        # The html part: values escaped as Go's html/template does, safeHtml passes one through.
        self.assertEqual(our_html.get_payload(decode=True), their_html.get_payload(decode=True))
        self.assertIn(b"p99 &gt; 1s &amp; rising &lt;fast&gt; &#34;q&#34; it&#39;s &#43;5",
                      our_html.get_payload(decode=True))
        self.assertIn(b"<div>p99 > 1s & rising <fast> \"q\" it's +5</div>", our_html.get_payload(decode=True))
        for ours_part, theirs_part in ((our_text, their_text), (our_html, their_html)):
            self.assertEqual(ours_part["Content-Type"], theirs_part["Content-Type"])
            self.assertEqual(ours_part["Content-Transfer-Encoding"], theirs_part["Content-Transfer-Encoding"])

        # Resolved: Slack (send_resolved: true) and PagerDuty (a resolve event) again agree.
        _Capture.posts.clear()
        ends = rfc3339(-1)
        for a in alerts:
            a["endsAt"] = ends
        status, body = http("POST", am.base + "/api/v2/alerts", json.dumps(alerts).encode(),
                            {"Content-Type": "application/json"})
        self.assertEqual(status, 200, body)
        for _ in range(600):
            if {p for p, _ in _Capture.posts} >= {"/slack", "/pd"}:
                break
            yield task.deferLater(_reactor(), 0.1, lambda: None)
        else:
            self.fail("Alertmanager's resolved notifications did not arrive:\n%s" % am.output())
        theirs = dict(_Capture.posts)
        _Capture.posts.clear()
        data.status = "resolved"
        for a in data.alerts:
            a["status"], a["endsAt"] = "resolved", ends
        for key in ("slack_configs", "pagerduty_configs"):
            integration = FACTORIES[key](rcv[key][0], cfg.get("global") or {}, 0, client, _reactor())
            yield integration.notify(data, template)
        ours = dict(_Capture.posts)
        self.assertEqual(json.loads(theirs["/pd"])["event_action"], "resolve")
        self.assertEqual(json.loads(theirs["/slack"])["attachments"][0]["color"], "good")
        self.assertEqual(ours["/slack"], theirs["/slack"])
        self.assertEqual(ours["/pd"], theirs["/pd"])
        self.assertEqual(len(self.sink.messages), 2)        # email: send_resolved is false


class _ExternalAM(Alertmanager):
    """Alertmanager on the config already written, with an external URL."""

    def __init__(self, workdir):
        self.port = free_port()
        self.base = "http://127.0.0.1:%d" % self.port
        Process.__init__(self, workdir, [
            ALERTMANAGER, "--config.file=" + os.path.join(workdir, "alertmanager.yml"),
            "--storage.path=" + os.path.join(workdir, "am-data2"),
            "--web.listen-address=127.0.0.1:%d" % self.port, "--cluster.listen-address=",
            "--web.external-url=http://am.example:9093"])
