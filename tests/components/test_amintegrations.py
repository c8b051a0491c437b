"""The email, Slack and PagerDuty integrations, each built alone from a config dict and driven
with one NotificationData: Slack and PagerDuty against a capturing twisted.web server on
127.0.0.1 (bytes of the payload, retry on the answers Alertmanager retries), email against
Twisted's own ESMTP server (STARTTLS with a certificate made here, AUTH PLAIN/LOGIN/CRAM-MD5),
the message parsed back with Python's email package."""
import email
import email.policy
import hashlib
import json
import os
import shutil
import tempfile

from twisted.internet import defer, protocol, task
from twisted.trial.unittest import TestCase
from twisted.web import resource, server
from twisted.web.client import Agent, HTTPConnectionPool

import treq
from tests.support.smtpsink import SMTPSink
from urdar.components import amintegrations
from urdar.components.amintegrations import FACTORIES, group_key_hash, q_encode
from urdar.components.amreceivers import ConfigError, NotificationData, NotifyError
from urdar.gotemplate.amdefault import notification_template


def _reactor():
    from twisted.internet import reactor
    return reactor


def notification(status="firing"):
    alerts = [{"status": "firing", "labels": {"alertname": "HighLatency", "job": "api", "instance": "a:1"},
               "annotations": {"summary": "p99 > 1s <now>"}, "startsAt": "2026-12-01T10:00:00.5Z",
               "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "http://prom/graph?g0.expr=x",
               "fingerprint": "aa"},
              {"status": "resolved" if status == "resolved" else "firing",
               "labels": {"alertname": "HighLatency", "job": "api", "instance": "b:1"},
               "annotations": {}, "startsAt": "2026-12-01T10:00:00Z", "endsAt": "2026-12-01T10:05:00Z",
               "generatorURL": "http://prom/graph", "fingerprint": "bb"}]
    if status == "resolved":
        alerts[0]["status"] = "resolved"
    return NotificationData(receiver="team x", status=status, alerts=alerts,
                            groupLabels={"alertname": "HighLatency"},
                            commonLabels={"alertname": "HighLatency", "job": "api"},
                            commonAnnotations={}, externalURL="http://am.example",
                            groupKey='{}:{alertname="HighLatency"}')


class Capture(resource.Resource):
    isLeaf = True

    def __init__(self):
        super().__init__()
        self.posts = []
        self.answers = []

    def render_POST(self, request):
        if self.answers and self.answers[0] == "stall":
            # Headers and a first chunk, then nothing: a body that never ends.
            self.answers.pop(0)
            request.setResponseCode(500)
            request.write(b"partial")
            self.stalled = request.notifyFinish()
            return server.NOT_DONE_YET
        self.posts.append((request.path, {k.decode().lower(): v[0] for k, v in
                                          request.requestHeaders.getAllRawHeaders()},
                           request.content.read()))
        code, body = self.answers.pop(0) if self.answers else (200, b"ok")
        request.setResponseCode(code)
        return body


class HTTPIntegrationTests(TestCase):
    def setUp(self):
        self.capture = Capture()
        port = _reactor().listenTCP(0, server.Site(self.capture), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.url = "http://127.0.0.1:%d" % port.getHost().port
        pool = HTTPConnectionPool(_reactor(), persistent=False)
        self.http = treq.client.HTTPClient(Agent(_reactor(), pool=pool))
        self.template = notification_template()

    def build(self, key, cfg, global_cfg=None):
        return FACTORIES[key](cfg, global_cfg or {}, 0, self.http, _reactor())

    @defer.inlineCallbacks
    def test_slack_default_payload(self):
        """Defaults give Alertmanager's attachment: subject title, receiver-scoped link, danger color."""
        s = self.build("slack_configs", {"api_url": self.url + "/hook", "channel": "#ops"})
        self.assertFalse(s.send_resolved)
        yield s.notify(notification(), self.template)
        path, headers, body = self.capture.posts[0]
        self.assertEqual(path, b"/hook")
        self.assertEqual(headers["content-type"], b"application/json")
        self.assertTrue(body.endswith(b"}\n"))
        title = "[FIRING:2] HighLatency (api)"
        link = "http://am.example/#/alerts?receiver=team+x"
        self.assertEqual(json.loads(body), {
            "channel": "#ops", "username": "Alertmanager", "attachments": [{
                "title": title, "title_link": link, "text": "", "fallback": title + " | " + link,
                "callback_id": "", "footer": "", "color": "danger",
                "mrkdwn_in": ["fallback", "pretext", "text"]}]})

    @defer.inlineCallbacks
    def test_slack_fields_actions_and_options(self):
        """Templated fields (short from short_fields unless set), URL actions, icons, link_names."""
        s = self.build("slack_configs", {
            "api_url": self.url, "title": "{{ .CommonLabels.job | toUpper }}", "text": "{{ range .Alerts }}{{ .Labels.instance }} {{ end }}",
            "pretext": "pre", "footer": "foot", "icon_emoji": ":fire:", "link_names": True,
            "short_fields": True, "mrkdwn_in": ["text"], "color": "#123456", "callback_id": "cb",
            "fields": [{"title": "n", "value": "{{ len .Alerts }}"}, {"title": "t", "value": "v", "short": False}],
            "actions": [{"type": "button", "text": "Runbook", "url": "http://rb/{{ .GroupLabels.alertname }}",
                         "name": "dropped"}]})
        yield s.notify(notification(), self.template)
        att = json.loads(self.capture.posts[0][2])
        self.assertEqual(att["icon_emoji"], ":fire:")
        self.assertIs(att["link_names"], True)
        a = att["attachments"][0]
        self.assertEqual((a["title"], a["text"], a["pretext"], a["footer"], a["color"], a["callback_id"], a["mrkdwn_in"]),
                         ("API", "a:1 b:1 ", "pre", "foot", "#123456", "cb", ["text"]))
        self.assertEqual(a["fields"], [{"title": "n", "value": "2", "short": True},
                                       {"title": "t", "value": "v", "short": False}])
        self.assertEqual(a["actions"], [{"type": "button", "text": "Runbook", "url": "http://rb/HighLatency"}])

    @defer.inlineCallbacks
    def test_slack_retries_5xx_only(self):
        """500 is retried; 404 and 429 are not (Alertmanager 0.25's Slack retrier); the error
        names the channel, never the webhook URL."""
        s = self.build("slack_configs", {"channel": "#c"}, {"slack_api_url": self.url + "/secret"})
        for code, retry in ((500, True), (404, False), (429, False)):
            self.capture.answers.append((code, b"no"))
            f = yield self.assertFailure(s.notify(notification(), self.template), NotifyError)
            self.assertEqual(f.retry, retry)
            self.assertIn('channel "#c": unexpected status code %d: no' % code, f.reason)
            self.assertNotIn("secret", f.reason)

    @defer.inlineCallbacks
    def test_slack_template_error_is_final(self):
        s = self.build("slack_configs", {"api_url": self.url, "title": "{{ template \"nope\" . }}"})
        f = yield self.assertFailure(s.notify(notification(), self.template), NotifyError)
        self.assertFalse(f.retry)
        self.assertEqual(self.capture.posts, [])

    @defer.inlineCallbacks
    def test_pagerduty_v2_trigger_and_resolve(self):
        """Events API v2: dedup_key is the SHA-256 of the group key, default details, client,
        severity "error"; an all-resolved group sends event_action resolve."""
        p = self.build("pagerduty_configs", {
            "routing_key": "rk", "url": self.url + "/v2/enqueue", "class": "latency",
            "component": "{{ .CommonLabels.job }}", "group": "g", "details": {"extra": "{{ .Status }}"},
            "images": [{"src": "http://img", "alt": "a"}, {"src": ""}], "links": [{"href": "http://l", "text": "t"}]})
        self.assertTrue(p.send_resolved)
        yield p.notify(notification(), self.template)
        msg = json.loads(self.capture.posts[0][2])
        key = hashlib.sha256(b'{}:{alertname="HighLatency"}').hexdigest()
        self.assertEqual(key, group_key_hash('{}:{alertname="HighLatency"}'))
        self.assertEqual(list(msg), ["routing_key", "dedup_key", "event_action", "payload", "client",
                                     "client_url", "images", "links"])
        self.assertEqual((msg["routing_key"], msg["dedup_key"], msg["event_action"]), ("rk", key, "trigger"))
        self.assertEqual(msg["client"], "Alertmanager")
        self.assertEqual(msg["client_url"], "http://am.example/#/alerts?receiver=team+x")
        self.assertEqual(msg["images"], [{"src": "http://img", "alt": "a", "href": ""}])
        self.assertEqual(msg["links"], [{"href": "http://l", "text": "t"}])
        pl = msg["payload"]
        self.assertEqual((pl["summary"], pl["source"], pl["severity"], pl["class"], pl["component"], pl["group"]),
                         ("[FIRING:2] HighLatency (api)", "Alertmanager", "error", "latency", "api", "g"))
        self.assertEqual(pl["custom_details"]["num_firing"], "2")
        self.assertEqual(pl["custom_details"]["extra"], "firing")
        self.assertTrue(pl["custom_details"]["firing"].startswith(
            "Labels:\n - alertname = HighLatency\n - instance = a:1\n - job = api\nAnnotations:\n"
            " - summary = p99 > 1s <now>\nSource: http://prom/graph?g0.expr=x\n"))
        self.assertIn(b"\\u003cnow\\u003e", self.capture.posts[0][2])     # Go's JSON escaping
        yield p.notify(notification("resolved"), self.template)
        msg = json.loads(self.capture.posts[1][2])
        self.assertEqual((msg["event_action"], msg["dedup_key"]), ("resolve", key))
        self.assertTrue(msg["payload"]["summary"].startswith("[RESOLVED] HighLatency"))

    @defer.inlineCallbacks
    def test_pagerduty_v1_and_retries(self):
        """v1: service_key, incident_key, event_type, client only on trigger; 403 retried, 400
        explained from PagerDuty's JSON and final."""
        p = self.build("pagerduty_configs", {"service_key": "sk"}, {"pagerduty_url": self.url + "/v1"})
        yield p.notify(notification(), self.template)
        msg = json.loads(self.capture.posts[0][2])
        self.assertEqual(list(msg), ["service_key", "incident_key", "event_type", "description",
                                     "event_action", "payload", "client", "client_url", "details"])
        self.assertEqual((msg["service_key"], msg["event_type"], msg["payload"]), ("sk", "trigger", None))
        yield p.notify(notification("resolved"), self.template)
        self.assertNotIn("client", json.loads(self.capture.posts[1][2]))
        self.capture.answers.append((403, b"slow down"))
        f = yield self.assertFailure(p.notify(notification(), self.template), NotifyError)
        self.assertTrue(f.retry)
        self.capture.answers.append((400, b'{"status":"invalid","message":"Event object is invalid","errors":["a","b"]}'))
        f = yield self.assertFailure(p.notify(notification(), self.template), NotifyError)
        self.assertFalse(f.retry)
        self.assertEqual(f.reason, "unexpected status code 400: Event object is invalid: a,b")
        v2 = self.build("pagerduty_configs", {"routing_key": "k", "url": self.url})
        self.capture.answers.append((429, b""))
        f = yield self.assertFailure(v2.notify(notification(), self.template), NotifyError)
        self.assertTrue(f.retry)

    @defer.inlineCallbacks
    def test_files_read_at_send_time(self):
        """api_url_file and routing_key_file (allowed in an operator's fallback config; refused in
        tenants' configs) are read at send time and trimmed; a missing file is a final error."""
        d = tempfile.mkdtemp(prefix="urdar-amint-")
        self.addCleanup(shutil.rmtree, d, True)
        with open(os.path.join(d, "url"), "w") as f:
            f.write(self.url + "/from-file\n")
        with open(os.path.join(d, "key"), "w") as f:
            f.write(" filekey \n")
        yield self.build("slack_configs", {"api_url_file": os.path.join(d, "url")}).notify(notification(), self.template)
        yield self.build("pagerduty_configs", {"routing_key_file": os.path.join(d, "key"), "url": self.url}).notify(
            notification(), self.template)
        self.assertEqual(self.capture.posts[0][0], b"/from-file")
        self.assertEqual(json.loads(self.capture.posts[1][2])["routing_key"], "filekey")
        missing = self.build("slack_configs", {"api_url_file": os.path.join(d, "nope")})
        f = yield self.assertFailure(missing.notify(notification(), self.template), NotifyError)
        self.assertFalse(f.retry)

    @defer.inlineCallbacks
    def test_seam_template_gives_the_same_payload(self):
        """Importing amintegrations registers the factories and default templates with the seam; a
        template set built as the pipeline builds it (missingkey unset, defaults parsed first)
        renders the same payload as notification_template()."""
        from urdar.components import amreceivers
        from urdar.gotemplate import Template
        from urdar.gotemplate.alertmanager import alertmanager_funcs
        self.assertIs(amreceivers.INTEGRATIONS["slack_configs"], FACTORIES["slack_configs"])
        seam = Template("__alertmanager", alertmanager_funcs())
        seam.parse(amintegrations.DEFAULT_TEMPLATES, "__default")
        cfg = {"api_url": self.url, "text": "{{ .CommonLabels.missing }}|{{ .CommonAnnotations.none }}"}
        yield self.build("slack_configs", cfg).notify(notification(), seam)
        yield self.build("slack_configs", cfg).notify(notification(), self.template)
        self.assertEqual(self.capture.posts[0][2], self.capture.posts[1][2])
        self.assertEqual(json.loads(self.capture.posts[0][2])["attachments"][0]["text"], "|")

    @defer.inlineCallbacks
    def test_endless_body_hits_the_deadline(self):
        """The send deadline covers reading the answer: a body that never ends is a retryable
        timeout and the connection is closed."""
        self.patch(amintegrations, "SEND_TIMEOUT_S", 0.3)
        self.capture.answers.append("stall")
        s = self.build("slack_configs", {"api_url": self.url})
        f = yield self.assertFailure(s.notify(notification(), self.template), NotifyError)
        self.assertTrue(f.retry)
        self.assertIn("timeout after 0.3s", f.reason)
        # The server sees the client go away.
        yield self.assertFailure(self.capture.stalled, Exception)

    def test_config_errors(self):
        for key, cfg, text in (
                ("pagerduty_configs", {"severity": "x"}, "missing service or routing key in PagerDuty config"),
                ("slack_configs", {"channel": "x"}, "no global Slack API URL set either inline or in a file"),
                ("email_configs", {"to": "a@b", "from": "c@d"}, "no global SMTP smarthost set"),
                ("email_configs", {"to": "a@b", "smarthost": "h:25"}, "no global SMTP from set"),
                ("email_configs", {"to": "a@b", "from": "c@d", "smarthost": "h"}, "address h: missing port in address")):
            with self.assertRaisesRegex(ConfigError, text):
                self.build(key, cfg)


# ---- email ---------------------------------------------------------------------------------

class EmailTests(TestCase):
    def sink(self, **kw):
        s = SMTPSink(**kw)
        self.addCleanup(s.close)
        return s

    def email(self, sink, **cfg):
        base = {"to": "oncall@example.org, Second <two@example.org>", "from": "am@example.org",
                "smarthost": sink.smarthost, "tls_config": {"insecure_skip_verify": True}}
        base.update(cfg)
        return FACTORIES["email_configs"](base, {}, 0, None, _reactor())

    def parsed(self, sink):
        self.assertEqual(sorted(r for r, _ in sink.messages), ["oncall@example.org", "two@example.org"])
        return email.message_from_bytes(sink.messages[0][1].replace(b"\n", b"\r\n"), policy=email.policy.default)

    @defer.inlineCallbacks
    def test_starttls_plain_auth_and_message(self):
        """STARTTLS then AUTH PLAIN; headers (default Subject/To/From, a custom one, UTF-8 in
        Q-encoding); multipart/alternative with the text part first and the HTML part last."""
        sink = self.sink(users={"am": b"pw"}, mechs=(b"PLAIN",))
        e = self.email(sink, auth_username="am", auth_password="pw", hello="urdar.test",
                       text="{{ len .Alerts }} alerts: {{ range .Alerts }}{{ .Labels.instance }} {{ end }}",
                       headers={"x-team": "Ops ✓", "Reply-To": "noreply@example.org"})
        yield e.notify(notification(), notification_template())
        msg = self.parsed(sink)
        self.assertEqual(sink.messages.helo, b"urdar.test")
        self.assertEqual(sink.messages.mail_from, "am@example.org")
        self.assertEqual(msg["X-Authenticated-As"], "am")
        self.assertEqual(msg["Subject"], "[FIRING:2] HighLatency (api)")
        self.assertEqual(msg["To"], "oncall@example.org, Second <two@example.org>")
        self.assertEqual(msg["From"], "am@example.org")
        self.assertEqual(msg["X-Team"], "Ops ✓")
        self.assertIsNotNone(msg["Message-Id"])
        self.assertEqual(msg.get_content_type(), "multipart/alternative")
        text, html = msg.get_payload()
        self.assertEqual(text.get_content_type(), "text/plain")
        self.assertEqual(text.get_content(), "2 alerts: a:1 b:1 ")
        self.assertEqual(html.get_content_type(), "text/html")
        self.assertIn("p99 &gt; 1s &lt;now&gt;", html.get_content())
        self.assertIn('<a href="http://am.example/#/alerts?receiver=team+x">', html.get_content())

    @defer.inlineCallbacks
    def test_login_and_cram_md5(self):
        """The first of the server's mechanisms the config can do: CRAM-MD5 needs auth_secret,
        LOGIN and PLAIN auth_password."""
        for mechs, cfg in (((b"LOGIN",), {"auth_password": "pw"}),
                           ((b"CRAM-MD5", b"LOGIN"), {"auth_secret": "pw"}),
                           ((b"CRAM-MD5", b"LOGIN"), {"auth_password": "pw"})):
            sink = self.sink(users={"am": b"pw"}, mechs=mechs)
            yield self.email(sink, auth_username="am", **cfg).notify(notification(), notification_template())
            self.assertEqual(self.parsed(sink)["X-Authenticated-As"], "am")

    @defer.inlineCallbacks
    def test_wrong_password_and_missing_secret(self):
        sink = self.sink(users={"am": b"pw"}, mechs=(b"PLAIN",))
        f = yield self.assertFailure(self.email(sink, auth_username="am", auth_password="bad").notify(
            notification(), notification_template()), NotifyError)
        self.assertTrue(f.retry)
        self.assertIn("*smtp.plainAuth auth: 535", f.reason)
        sink = self.sink(users={"am": b"pw"}, mechs=(b"CRAM-MD5",))
        f = yield self.assertFailure(self.email(sink, auth_username="am", auth_password="pw").notify(
            notification(), notification_template()), NotifyError)
        self.assertIn("missing secret for CRAM-MD5 auth mechanism", f.reason)
        self.assertEqual(sink.messages, [])

    @defer.inlineCallbacks
    def test_plain_auth_needs_tls_except_to_localhost(self):
        """As Go's smtp.PlainAuth: no password in clear text to a host other than localhost
        (127.0.0.2 is loopback but not "localhost" by name); to localhost it goes."""
        sink = self.sink(tls=False, users={"am": b"pw"}, mechs=(b"PLAIN",), interface="127.0.0.2",
                         host="127.0.0.2")
        e = self.email(sink, auth_username="am", auth_password="pw", require_tls=False)
        f = yield self.assertFailure(e.notify(notification(), notification_template()), NotifyError)
        self.assertIn("*smtp.plainAuth auth: unencrypted connection", f.reason)
        self.assertEqual(sink.messages, [])
        sink = self.sink(tls=False, users={"am": b"pw"}, mechs=(b"PLAIN",))
        yield self.email(sink, auth_username="am", auth_password="pw", require_tls=False).notify(
            notification(), notification_template())
        self.assertEqual(self.parsed(sink)["X-Authenticated-As"], "am")

    @defer.inlineCallbacks
    def test_no_auth_offered_sends_without(self):
        """A username with a server that offers no AUTH: sent unauthenticated, as Alertmanager."""
        sink = self.sink(mechs=())
        yield self.email(sink, auth_username="am", auth_password="pw").notify(notification(), notification_template())
        self.assertEqual(self.parsed(sink)["X-Authenticated-As"], "anonymous")

    @defer.inlineCallbacks
    def test_require_tls(self):
        """require_tls (default true) refuses a server without STARTTLS; false sends in clear."""
        sink = self.sink(tls=False)
        f = yield self.assertFailure(self.email(sink).notify(notification(), notification_template()), NotifyError)
        self.assertIn("does not advertise the STARTTLS extension", f.reason)
        yield self.email(sink, require_tls=False).notify(notification(), notification_template())
        self.assertEqual(self.parsed(sink)["Subject"], "[FIRING:2] HighLatency (api)")

    @defer.inlineCallbacks
    def test_untrusted_certificate_fails(self):
        """Without insecure_skip_verify the sink's self-signed certificate is refused."""
        sink = self.sink()
        e = self.email(sink, tls_config={})
        f = yield self.assertFailure(e.notify(notification(), notification_template()), NotifyError)
        self.assertTrue(f.retry)
        self.assertEqual(sink.messages, [])

    @defer.inlineCallbacks
    def test_globals_and_dot_stuffing(self):
        """smtp_* globals fill the config; a body line starting with "." arrives intact."""
        sink = self.sink(tls=False)
        e = FACTORIES["email_configs"](
            {"to": "oncall@example.org", "html": "", "text": "line\n.starts with a dot\n."},
            {"smtp_smarthost": sink.smarthost, "smtp_from": "g@example.org", "smtp_require_tls": False,
             "smtp_hello": "global.hello"}, 0, None, _reactor())
        yield e.notify(notification(), notification_template())
        self.assertEqual(sink.messages.helo, b"global.hello")
        msg = email.message_from_bytes(sink.messages[0][1].replace(b"\n", b"\r\n"), policy=email.policy.default)
        self.assertEqual(msg["From"], "g@example.org")
        (text,) = msg.get_payload()
        self.assertEqual(text.get_content().replace("\r\n", "\n"), "line\n.starts with a dot\n.")

    @defer.inlineCallbacks
    def test_connection_refused_is_retried(self):
        sink = self.sink()
        smarthost = sink.smarthost
        yield sink.port.stopListening()
        e = FACTORIES["email_configs"]({"to": "a@b.c", "from": "d@e.f", "smarthost": smarthost}, {}, 0, None, _reactor())
        f = yield self.assertFailure(e.notify(notification(), notification_template()), NotifyError)
        self.assertTrue(f.retry)
        self.assertIn("establish connection to server", f.reason)

    def test_q_encoding(self):
        self.assertEqual(q_encode("plain ascii"), "plain ascii")
        self.assertEqual(q_encode("Ops ✓"), "=?utf-8?q?Ops_=E2=9C=93?=")
        long = q_encode("é" * 40)
        self.assertTrue(all(len(w) <= 75 for w in long.split(" ")))


class _Silent(protocol.Protocol):
    """Accepts and never answers (an SMTP server that hangs before its greeting)."""


class DeadlineTests(TestCase):
    def setUp(self):
        f = protocol.Factory.forProtocol(_Silent)
        self.conns = []
        orig = f.buildProtocol

        def build(addr):
            p = orig(addr)
            self.conns.append(p)
            return p
        f.buildProtocol = build
        self.port = _reactor().listenTCP(0, f, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.email = FACTORIES["email_configs"](
            {"to": "a@b.c", "from": "d@e.f", "smarthost": "127.0.0.1:%d" % self.port.getHost().port},
            {}, 0, None, _reactor())

    def tearDown(self):
        for p in self.conns:
            if p.transport.connected:
                p.transport.abortConnection()
        return task.deferLater(_reactor(), 0.01, lambda: None)

    @defer.inlineCallbacks
    def test_send_timeout(self):
        """A server that never answers costs SEND_TIMEOUT_S, then a retryable NotifyError."""
        self.patch(amintegrations, "SEND_TIMEOUT_S", 0.2)
        f = yield self.assertFailure(self.email.notify(notification(), notification_template()), NotifyError)
        self.assertTrue(f.retry)
        self.assertIn("timeout", f.reason)

    @defer.inlineCallbacks
    def test_cancel_closes_the_connection(self):
        d = self.email.notify(notification(), notification_template())
        yield task.deferLater(_reactor(), 0.05, lambda: None)
        d.cancel()
        yield self.assertFailure(d, defer.CancelledError)
